// Benchmarks of the fused row-wise ops: cross-entropy forward + backward (loss and input
// gradient, reduction mean) and softmax forward, at the logit shapes of docs/PERF.md, f32
// and bf16, on the CPU and (when trainrt::cuda_available()) on CUDA. Beside them, in the
// same run, a one-pass bandwidth ceiling over the same byte counts:
//   ceiling_copy     dst[i] = src[i] (read + write; CPU: an OpenMP loop, CUDA: a device copy)
//   ceiling_copy_nt  the same with non-temporal stores (CPU only, x86): no read-for-ownership
//   ceiling_read     a read-only sum (CPU only)
// so each result reads as a fraction of the ceiling. Bytes counted (PERF.md): cross-entropy
// fwd+bwd reads the logits once and writes the gradient once (8 bytes per f32 logit, 4 per
// bf16); softmax forward reads and writes each element once (likewise);
// cross_entropy_ls_fwd_bwd is cross-entropy with label smoothing 0.1 (the same bytes, one more
// pass over each row while it is in cache); mse_fwd_bwd is mse_loss (mean, with gradient) over
// the same buffers: reads input and target, writes the gradient (12 bytes per f32 element).
//
// Inputs are random (never zeros) and each benchmark rotates among several input buffers
// whose total exceeds the last-level cache (TRAINRT_BENCH_ROTATE_MIB overrides the total).
// CUDA benchmarks time a batch of calls with a host clock after trainrt::synchronize
// (UseManualTime): the device work is measured, and no loss value is read while timing.
//
//   build/bin/bench_losses                                 # everything
//   build/bin/bench_losses --benchmark_filter=cuda         # CUDA only
//   build/bin/bench_losses --benchmark_format=json --benchmark_repetitions=5
#include <benchmark/benchmark.h>
#include <omp.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "trainrt/trainrt.hpp"

namespace {

using trainrt::Device;
using trainrt::DType;
using trainrt::Tensor;

struct Shape2 {
  std::int64_t rows;
  std::int64_t cols;
};

// The logit shapes of docs/PERF.md: many rows of a small vocabulary, few rows of a large one.
const Shape2 kShapes[] = {{4096, 1000}, {512, 32000}};
const DType kDTypes[] = {DType::f32, DType::bf16};
// CUDA: calls per timed batch (one synchronize per batch amortises the host round trip).
constexpr int kCudaBatch = 32;

std::string shape_name(const Shape2& s) {
  return std::to_string(s.rows) + "x" + std::to_string(s.cols);
}

std::string device_name(const Device& d) { return d.is_cuda() ? "cuda" : "cpu"; }

/// Size in bytes of the largest CPU cache level, from sysfs; 32 MiB when unknown.
std::size_t last_level_cache_bytes() {
  std::size_t best = 0;
  int best_level = -1;
  for (int i = 0; i < 16; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    std::ifstream lf(dir + "level"), sf(dir + "size");
    int level = 0;
    std::string size;
    if (!(lf >> level) || !(sf >> size) || size.empty()) continue;
    std::size_t bytes = std::strtoull(size.c_str(), nullptr, 10);
    const char unit = size.back();
    if (unit == 'K') bytes <<= 10;
    if (unit == 'M') bytes <<= 20;
    if (unit == 'G') bytes <<= 30;
    if (level > best_level || (level == best_level && bytes > best)) {
      best_level = level;
      best = bytes;
    }
  }
  return best ? best : (std::size_t{32} << 20);
}

/// Total bytes of input buffers each benchmark rotates through on `device`.
std::size_t rotate_bytes(const Device& device) {
  if (const char* env = std::getenv("TRAINRT_BENCH_ROTATE_MIB")) {
    const long long mib = std::atoll(env);
    if (mib > 0) return static_cast<std::size_t>(mib) << 20;
  }
  // CUDA: well above any current L2 (H100 50 MB, H200 60 MB). CPU: 1.25x the LLC.
  if (device.is_cuda()) return std::size_t{256} << 20;
  return std::max<std::size_t>(last_level_cache_bytes() / 4 * 5, std::size_t{64} << 20);
}

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/// Roughly normal logits (mean 0, standard deviation 2), a counter-based hash of (seed, i).
std::vector<float> random_logits(std::int64_t n, std::uint64_t seed) {
  std::vector<float> v(static_cast<std::size_t>(n));
  float* p = v.data();
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    const std::uint64_t h = splitmix64(seed * 0x100000001B3ull + static_cast<std::uint64_t>(i));
    // Sum of four 16-bit uniforms: mean 2, variance 4/12; scaled to standard deviation 2.
    const float u =
        static_cast<float>((h & 0xFFFF) + ((h >> 16) & 0xFFFF) + ((h >> 32) & 0xFFFF) + (h >> 48)) *
        (1.0f / 65536.0f);
    p[i] = (u - 2.0f) * 3.4641016f;
  }
  return v;
}

std::vector<std::int64_t> random_targets(std::int64_t rows, std::int64_t classes,
                                         std::uint64_t seed) {
  std::vector<std::int64_t> t(static_cast<std::size_t>(rows));
  for (std::int64_t i = 0; i < rows; ++i) {
    t[static_cast<std::size_t>(i)] = static_cast<std::int64_t>(
        splitmix64(seed ^ (0xABCDull << 40) ^ static_cast<std::uint64_t>(i)) %
        static_cast<std::uint64_t>(classes));
  }
  return t;
}

/// The rotating inputs of one (device, dtype, shape); kept while consecutive benchmarks use
/// the same key (they are registered grouped by key), freed when the key changes.
struct Pool {
  std::string key;
  std::vector<Tensor> x;       // logits [rows, cols]
  std::vector<Tensor> target;  // class indices [rows], i64
  std::vector<Tensor> dst;     // pre-touched destinations for the copy ceiling (lazily)
};

std::unique_ptr<Pool>& current_pool() {
  static std::unique_ptr<Pool> pool;
  return pool;
}

Pool& get_pool(const Device& device, DType dtype, const Shape2& s) {
  const std::string key = device.str() + "/" + trainrt::dtype_name(dtype) + "/" + shape_name(s);
  std::unique_ptr<Pool>& pool = current_pool();
  if (pool && pool->key == key) return *pool;
  pool.reset();  // free the previous inputs first
  pool = std::make_unique<Pool>();
  pool->key = key;
  const std::size_t bytes = static_cast<std::size_t>(s.rows * s.cols) * trainrt::dtype_size(dtype);
  const std::size_t count = std::max<std::size_t>(2, (rotate_bytes(device) + bytes - 1) / bytes);
  for (std::size_t b = 0; b < count; ++b) {
    const std::uint64_t seed = 1000 * static_cast<std::uint64_t>(s.cols) + b;
    const std::vector<float> host = random_logits(s.rows * s.cols, seed);
    Tensor x = Tensor::from_vector(host, {s.rows, s.cols}, device);
    if (dtype != DType::f32) x = x.to(dtype);
    pool->x.push_back(x);
    pool->target.push_back(
        Tensor::from_vector(random_targets(s.rows, s.cols, seed), {s.rows}, device));
  }
  trainrt::synchronize(device);
  return *pool;
}

void ensure_dst(Pool& pool) {
  if (!pool.dst.empty()) return;
  for (const Tensor& x : pool.x)
    pool.dst.push_back(Tensor::zeros(x.shape(), x.dtype(), x.device()));
  trainrt::synchronize(pool.x.front().device());
}

double now_s() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

/// Runs `op(i)` (i: the call number, for rotation) under the benchmark loop. CPU: wall clock
/// per call. CUDA: batches of kCudaBatch calls, each batch timed from before its first launch
/// to after trainrt::synchronize.
void run_loop(benchmark::State& state, const Device& device,
              const std::function<void(std::size_t)>& op) {
  std::size_t i = 0;
  op(i++);  // warm-up: first-touch, module load, kernel selection
  trainrt::synchronize(device);
  if (device.is_cpu()) {
    for (auto _ : state) op(i++);
  } else {
    while (state.KeepRunningBatch(kCudaBatch)) {
      const double t0 = now_s();
      for (int k = 0; k < kCudaBatch; ++k) op(i++);
      trainrt::synchronize(device);
      state.SetIterationTime(now_s() - t0);
    }
  }
}

void set_common(benchmark::State& state, const Pool& pool, double bytes_per_call) {
  state.SetBytesProcessed(
      static_cast<std::int64_t>(bytes_per_call * static_cast<double>(state.iterations())));
  state.counters["bytes_per_call"] = bytes_per_call;
  state.counters["buffers"] = static_cast<double>(pool.x.size());
}

/// Cross-entropy, mean with gradient. A label smoothing > 0 adds one more pass over each row
/// (sum w (z - max)); the bytes moved are the same.
void bm_cross_entropy(benchmark::State& state, Device device, DType dtype, Shape2 s,
                      double label_smoothing) {
  try {
    Pool& pool = get_pool(device, dtype, s);
    const std::size_t n = pool.x.size();
    trainrt::CrossEntropyOptions opts;  // reduction mean, gradient on
    opts.label_smoothing = label_smoothing;
    trainrt::LossResult last;
    run_loop(state, device, [&](std::size_t i) {
      trainrt::LossResult r = trainrt::cross_entropy(pool.x[i % n], pool.target[i % n], opts);
      benchmark::DoNotOptimize(r.grad.data());
      if (i % n == 0) last = std::move(r);  // keep one result to check after timing
    });
    // Outside the timed region: the loss must be finite (the work was really done).
    state.counters["loss"] = last.loss.item();
    set_common(state, pool, 2.0 * static_cast<double>(pool.x.front().nbytes()));
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

/// An element-wise loss, mean with gradient: reads input and target, writes the gradient.
void bm_mse(benchmark::State& state, Device device, DType dtype, Shape2 s) {
  try {
    Pool& pool = get_pool(device, dtype, s);
    const std::size_t n = pool.x.size();
    trainrt::LossResult last;
    run_loop(state, device, [&](std::size_t i) {
      trainrt::LossResult r = trainrt::mse_loss(pool.x[i % n], pool.x[(i + 1) % n]);
      benchmark::DoNotOptimize(r.grad.data());
      if (i % n == 0) last = std::move(r);
    });
    state.counters["loss"] = last.loss.item();
    set_common(state, pool, 3.0 * static_cast<double>(pool.x.front().nbytes()));
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

void bm_softmax(benchmark::State& state, Device device, DType dtype, Shape2 s) {
  try {
    Pool& pool = get_pool(device, dtype, s);
    const std::size_t n = pool.x.size();
    run_loop(state, device, [&](std::size_t i) {
      Tensor y = trainrt::softmax(pool.x[i % n]);
      benchmark::DoNotOptimize(y.data());
    });
    set_common(state, pool, 2.0 * static_cast<double>(pool.x.front().nbytes()));
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

// The CPU ceiling loops work on 32-bit words of the buffers (integers: bf16 pairs read as
// floats could be denormals or NaNs, which would slow a float loop for no reason).
void cpu_copy(const Tensor& src, Tensor& dst) {
  const auto* s = static_cast<const std::uint32_t*>(src.data());
  auto* d = static_cast<std::uint32_t*>(dst.data());
  const std::int64_t n = static_cast<std::int64_t>(src.nbytes() / 4);
#pragma omp parallel for simd schedule(static)
  for (std::int64_t i = 0; i < n; ++i) d[i] = s[i];
}

#if defined(__SSE2__)
/// The same copy with non-temporal (streaming) stores: no read-for-ownership of the
/// destination lines, so it can beat the plain copy; a kernel that streams its output can too.
void cpu_copy_nt(const Tensor& src, Tensor& dst) {
  const auto* s = static_cast<const __m128i*>(src.data());  // storage is 64-byte aligned
  auto* d = static_cast<__m128i*>(dst.data());
  const std::int64_t n = static_cast<std::int64_t>(src.nbytes() / 16);
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) _mm_stream_si128(d + i, _mm_load_si128(s + i));
    _mm_sfence();
  }
  const std::size_t tail = src.nbytes() % 16;  // the few bytes past the last full vector
  if (tail) {
    std::memcpy(reinterpret_cast<char*>(d + n), reinterpret_cast<const char*>(s + n), tail);
  }
}
#endif

std::uint32_t cpu_read(const Tensor& src) {
  const auto* s = static_cast<const std::uint32_t*>(src.data());
  const std::int64_t n = static_cast<std::int64_t>(src.nbytes() / 4);
  std::uint32_t acc = 0;
#pragma omp parallel for simd schedule(static) reduction(+ : acc)
  for (std::int64_t i = 0; i < n; ++i) acc += s[i];
  return acc;
}

void bm_ceiling_copy(benchmark::State& state, Device device, DType dtype, Shape2 s) {
  try {
    Pool& pool = get_pool(device, dtype, s);
    ensure_dst(pool);
    const std::size_t n = pool.x.size();
    run_loop(state, device, [&](std::size_t i) {
      if (device.is_cpu()) {
        cpu_copy(pool.x[i % n], pool.dst[i % n]);
      } else {
        pool.dst[i % n].copy_(pool.x[i % n]);
      }
      benchmark::ClobberMemory();
    });
    set_common(state, pool, 2.0 * static_cast<double>(pool.x.front().nbytes()));
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

#if defined(__SSE2__)
void bm_ceiling_copy_nt(benchmark::State& state, Device device, DType dtype, Shape2 s) {
  try {
    Pool& pool = get_pool(device, dtype, s);
    ensure_dst(pool);
    const std::size_t n = pool.x.size();
    run_loop(state, device, [&](std::size_t i) {
      cpu_copy_nt(pool.x[i % n], pool.dst[i % n]);
      benchmark::ClobberMemory();
    });
    set_common(state, pool, 2.0 * static_cast<double>(pool.x.front().nbytes()));
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}
#endif

void bm_ceiling_read(benchmark::State& state, Device device, DType dtype, Shape2 s) {
  try {
    Pool& pool = get_pool(device, dtype, s);
    const std::size_t n = pool.x.size();
    run_loop(state, device, [&](std::size_t i) {
      std::uint32_t v = cpu_read(pool.x[i % n]);
      benchmark::DoNotOptimize(v);
    });
    set_common(state, pool, static_cast<double>(pool.x.front().nbytes()));
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

void register_device(const Device& device) {
  const bool cuda = device.is_cuda();
  for (const Shape2& s : kShapes) {
    for (DType dt : kDTypes) {
      const std::string suffix =
          "/" + device_name(device) + "/" + trainrt::dtype_name(dt) + "/" + shape_name(s);
      std::vector<benchmark::internal::Benchmark*> regs;
      regs.push_back(benchmark::RegisterBenchmark(("ceiling_copy" + suffix).c_str(),
                                                  bm_ceiling_copy, device, dt, s));
      if (!cuda) {
#if defined(__SSE2__)
        regs.push_back(benchmark::RegisterBenchmark(("ceiling_copy_nt" + suffix).c_str(),
                                                    bm_ceiling_copy_nt, device, dt, s));
#endif
        regs.push_back(benchmark::RegisterBenchmark(("ceiling_read" + suffix).c_str(),
                                                    bm_ceiling_read, device, dt, s));
      }
      regs.push_back(benchmark::RegisterBenchmark(("cross_entropy_fwd_bwd" + suffix).c_str(),
                                                  bm_cross_entropy, device, dt, s, 0.0));
      regs.push_back(benchmark::RegisterBenchmark(("cross_entropy_ls_fwd_bwd" + suffix).c_str(),
                                                  bm_cross_entropy, device, dt, s, 0.1));
      regs.push_back(benchmark::RegisterBenchmark(("softmax_fwd" + suffix).c_str(), bm_softmax,
                                                  device, dt, s));
      regs.push_back(
          benchmark::RegisterBenchmark(("mse_fwd_bwd" + suffix).c_str(), bm_mse, device, dt, s));
      for (auto* b : regs) {
        b->Unit(benchmark::kMillisecond);
        if (cuda) {
          b->UseManualTime();
        } else {
          b->UseRealTime();  // OpenMP threads: wall time, not the main thread's CPU time
        }
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  benchmark::AddCustomContext("trainrt_version", trainrt::version());
  benchmark::AddCustomContext("cpu_backend", trainrt::device_description(Device::cpu()));
  benchmark::AddCustomContext("omp_max_threads", std::to_string(omp_get_max_threads()));
  benchmark::AddCustomContext("llc_bytes", std::to_string(last_level_cache_bytes()));
  benchmark::AddCustomContext("rotate_bytes_cpu", std::to_string(rotate_bytes(Device::cpu())));
  register_device(Device::cpu());

  std::string why;
  if (trainrt::cuda_available(&why)) {
    const Device gpu = Device::cuda(0);
    benchmark::AddCustomContext("cuda_backend", trainrt::device_description(gpu));
    benchmark::AddCustomContext("rotate_bytes_cuda", std::to_string(rotate_bytes(gpu)));
    register_device(gpu);
  } else {
    benchmark::AddCustomContext("cuda_backend", "unavailable: " + why);
  }

  benchmark::RunSpecifiedBenchmarks();
  current_pool().reset();
  benchmark::Shutdown();
  return 0;
}
