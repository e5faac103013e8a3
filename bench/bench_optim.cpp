// Benchmarks of the fused optimizer steps and gradient clipping over 16M f32 parameters (docs/
// PERF.md), held in 1 tensor and in 200 tensors, on the CPU and (when trainrt::cuda_available())
// on CUDA, beside one-pass bandwidth ceilings measured in the same run over the same bytes:
//   adamw          AdamW step (lr 1e-3, wd 1e-2): read p, g, m, v; write p, m, v = 28 B/param
//   sgd_momentum   SGD momentum 0.9, wd 1e-4: read p, g, buf; write p, buf = 20 B/param
//   clip_adamw     clip_grad_norm_(optimizer, 1.0) + AdamW step: the norm reads g (4 B) and the
//                  coefficient is folded into the step: 32 B/param, no extra write pass
//   grad_norm      trainrt::grad_norm(params): the norm's read pass alone (4 B/param)
//   clip_params_adamw  PyTorch's way for comparison: clip_grad_norm_(params) writes the grads
//                  (4 + 8 B) before the step: 40 B/param; the grads are restored (untimed)
//                  before each clip + step
//   ceiling_adamw  a loop with the AdamW access pattern (4 arrays read, 3 written, trivial math)
//   ceiling_sgd    the same for SGD (3 read, 2 written)
//   ceiling_adamw_reads  the AdamW pattern's four reads without its three writes (16 B/param),
//                  paired with the AdamW pattern (run_paired: ratio = reads alone / step): what
//                  the step would cost if its writes were free. Near 1, the step is read-bound,
//                  and a separate read pass over g (4 B more reads) costs about a quarter of
//                  the step, not the 4/28 of the byte count
//   ceiling_read   a read-only sum of squares (the norm's pass), rotating among buffers that
//                  together exceed the last-level cache
//   ceiling_clip_adamw  the clip + step sequence: a read pass over g, then the AdamW pattern
//   ceiling_norm   the same read-only sum of squares over one buffer, again and again (as
//                  grad_norm reads the same grads at every iteration)
//   clip_overhead  adamw and clip_adamw timed in alternating pairs: alone_ms, with_ms and the
//                  median per-pair ratio (clip + step / step), robust against the load drift
//                  of a shared machine; ceiling_clip_overhead: the same for the ceiling loops
//   ceiling_copy/cuda  the GPU ceiling: a device-to-device copy of 14 B/param (28 B/param read +
//                  written, the AdamW step's traffic); bytes/s counts both directions
//   ceiling_*_hw   each ceiling loop without software prefetches (the hardware prefetcher
//                  alone); compare_optim.py takes the faster form as the ceiling
// Each result reports bytes/s; compare_optim.py divides them into ratios. Inputs are random;
// 16M params x 4 arrays are far larger than any cache, so every pass goes to memory.
// CUDA timings synchronise the device after each step (UseManualTime around the step).
//
//   build/bin/bench_optim
//   build/bin/bench_optim --benchmark_format=json --benchmark_repetitions=5
//   TRAINRT_BENCH_OPTIM_PARAMS=1000000000 build/bin/bench_optim --benchmark_filter=cuda
#include <benchmark/benchmark.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "trainrt/trainrt.hpp"

namespace {

using trainrt::Device;
using trainrt::DType;
using trainrt::Parameter;
using trainrt::Tensor;

std::int64_t total_params() {
  if (const char* e = std::getenv("TRAINRT_BENCH_OPTIM_PARAMS")) return std::atoll(e);
  return std::int64_t(16) << 20;  // 16M
}

/// Random f32 values in [lo, hi), filled in parallel blocks with their own seeds.
std::vector<float> random_values(std::int64_t n, float lo, float hi, unsigned seed) {
  std::vector<float> v(static_cast<std::size_t>(n));
  const std::int64_t block = 1 << 20;
#pragma omp parallel for schedule(static)
  for (std::int64_t b = 0; b < (n + block - 1) / block; ++b) {
    std::mt19937 g(seed * 7919u + static_cast<unsigned>(b));
    std::uniform_real_distribution<float> d(lo, hi);
    const std::int64_t end = std::min(n, (b + 1) * block);
    for (std::int64_t i = b * block; i < end; ++i) v[static_cast<std::size_t>(i)] = d(g);
  }
  return v;
}

/// `tensors` parameters of (nearly) equal size summing to total_params(), with grads.
///
/// Made once per (tensors, device) and handed out again: Google Benchmark calls a benchmark
/// function several times (to choose the iteration count, then once per repetition), and at
/// 1e9 params making them (2e9 random values, 8 GB uploaded) takes seconds each time. One set
/// is kept at a time, to bound memory. The steps move the values a little from one benchmark to
/// the next, which changes no timing; no benchmark leaves the grads changed.
std::vector<Parameter> make_params(int tensors, Device dev) {
  struct Cache {
    int tensors = 0;
    std::string device;
    std::vector<Parameter> params;
  };
  static Cache* cache = new Cache;  // never destroyed: no device frees after the module's exit
  if (cache->tensors == tensors && cache->device == dev.str()) return cache->params;
  cache->params.clear();  // free the old set first
  const std::int64_t total = total_params();
  std::vector<Parameter> ps;
  for (int t = 0; t < tensors; ++t) {
    const std::int64_t n = total / tensors + (t < total % tensors ? 1 : 0);
    Parameter p(Tensor::from_vector(random_values(n, -1, 1, 2 * t + 1), {n}, dev));
    p.set_grad(Tensor::from_vector(random_values(n, -1e-2f, 1e-2f, 2 * t + 2), {n}, dev));
    ps.push_back(p);
  }
  cache->tensors = tensors;
  cache->device = dev.str();
  cache->params = ps;
  return ps;
}

void sync(Device dev) {
  if (dev.is_cuda()) trainrt::synchronize(dev);
}

/// Times fn per iteration: wall time on the CPU (OpenMP threads), device-synchronised on CUDA.
template <class F>
void run(benchmark::State& state, Device dev, double bytes, F&& fn) {
  fn();  // warm-up: state allocated, pages touched
  sync(dev);
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    sync(dev);
    const auto t1 = std::chrono::steady_clock::now();
    state.SetIterationTime(std::chrono::duration<double>(t1 - t0).count());
  }
  state.SetBytesProcessed(
      static_cast<std::int64_t>(bytes * static_cast<double>(state.iterations())));
  state.counters["params"] = static_cast<double>(total_params());
  state.counters["bytes_per_step"] = bytes;
}

void bm_adamw(benchmark::State& state, Device dev, int tensors) {
  std::vector<Parameter> ps = make_params(tensors, dev);
  trainrt::optim::AdamW opt(ps, trainrt::optim::AdamWOptions(1e-3));
  run(state, dev, 28.0 * total_params(), [&] { opt.step(); });
}

/// A capturable AdamW step (device step counts, per-tensor scalars derived by the kernels),
/// run eagerly: the cost of the capturable path next to bm_adamw.
void bm_adamw_capturable(benchmark::State& state, Device dev, int tensors) {
  std::vector<Parameter> ps = make_params(tensors, dev);
  trainrt::optim::AdamW opt(ps, trainrt::optim::AdamWOptions(1e-3));
  opt.set_capturable(true);
  try {
    run(state, dev, 28.0 * total_params(), [&] { opt.step(); });
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

/// clip_grad_norm_(opt) + a capturable AdamW step, captured once in a CUDA graph and replayed
/// (one graph launch per iteration instead of the calls' launches and host work).
void bm_clip_adamw_graph(benchmark::State& state, Device dev, int tensors) {
  std::vector<Parameter> ps = make_params(tensors, dev);
  trainrt::optim::AdamW opt(ps, trainrt::optim::AdamWOptions(1e-3));
  opt.set_capturable(true);
  auto iteration = [&] {
    trainrt::clip_grad_norm_(opt, 1.0);
    opt.step();
  };
  trainrt::CudaGraph graph;
  try {
    iteration();  // warm-up: state, counts, blocks
    graph.capture_begin(dev);
    iteration();
    graph.capture_end();
    run(state, dev, 32.0 * total_params(), [&] { graph.replay(); });
  } catch (const std::exception& e) {  // the other benchmarks still run
    state.SkipWithError(e.what());
  }
}

void bm_sgd(benchmark::State& state, Device dev, int tensors) {
  std::vector<Parameter> ps = make_params(tensors, dev);
  trainrt::optim::SGD opt(ps, trainrt::optim::SGDOptions(1e-3).momentum(0.9).weight_decay(1e-4));
  run(state, dev, 20.0 * total_params(), [&] { opt.step(); });
}

void bm_clip_adamw(benchmark::State& state, Device dev, int tensors) {
  std::vector<Parameter> ps = make_params(tensors, dev);
  trainrt::optim::AdamW opt(ps, trainrt::optim::AdamWOptions(1e-3));
  run(state, dev, 32.0 * total_params(), [&] {
    trainrt::clip_grad_norm_(opt, 1.0);  // the grads' norm is ~23: clipping is active
    opt.step();
  });
}

void bm_grad_norm(benchmark::State& state, Device dev, int tensors) {
  std::vector<Parameter> ps = make_params(tensors, dev);
  run(state, dev, 4.0 * total_params(), [&] { trainrt::grad_norm(ps); });
}

void bm_clip_params_adamw(benchmark::State& state, Device dev, int tensors) {
  std::vector<Parameter> ps = make_params(tensors, dev);
  trainrt::optim::AdamW opt(ps, trainrt::optim::AdamWOptions(1e-3));
  // After one clip the norm is ~1 and the next coefficient rounds to exactly 1, which skips the
  // write pass; so the grads are restored before every timed clip + step (not timed, like the
  // backward that writes them in training; they are then fresh in cache, as after backward).
  std::vector<Tensor> saved;
  for (const Parameter& p : ps) saved.push_back(p.grad().clone());
  const double bytes = 40.0 * total_params();
  auto restore = [&] {
    for (std::size_t i = 0; i < ps.size(); ++i) ps[i].grad().copy_(saved[i]);
    sync(dev);
  };
  restore();
  trainrt::clip_grad_norm_(ps, 1.0);
  opt.step();
  for (auto _ : state) {
    restore();
    const auto t0 = std::chrono::steady_clock::now();
    trainrt::clip_grad_norm_(ps, 1.0);
    opt.step();
    sync(dev);
    const auto t1 = std::chrono::steady_clock::now();
    state.SetIterationTime(std::chrono::duration<double>(t1 - t0).count());
  }
  restore();  // the cached params (make_params) keep their grads for the next benchmark
  state.SetBytesProcessed(
      static_cast<std::int64_t>(bytes * static_cast<double>(state.iterations())));
  state.counters["params"] = static_cast<double>(total_params());
  state.counters["bytes_per_step"] = bytes;
}

/// The device's copy bandwidth, the GPU ceiling (docs/PERF.md): a device-to-device
/// Tensor::copy_ of 14 B per param, i.e. 28 B/param read + written, the AdamW step's bytes.
/// bytes_per_second counts both the read and the written bytes.
void bm_ceiling_copy(benchmark::State& state, Device dev) {
  const std::int64_t n = total_params() / 2 * 7;  // f32 elements: 3.5 per param
  Tensor src = Tensor::zeros({n}, DType::f32, dev);
  Tensor dst = Tensor::zeros({n}, DType::f32, dev);
  run(state, dev, 8.0 * static_cast<double>(n), [&] { dst.copy_(src); });
}

double median_of(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const std::size_t h = v.size() / 2;
  return v.size() % 2 ? v[h] : 0.5 * (v[h - 1] + v[h]);
}

/// Times `alone` and `with` in pairs, alternating which runs first, and reports the medians and
/// the median of the per-pair ratios with / alone. The memory bandwidth of this machine is
/// shared with other tenants and their load drifts between benchmarks (medians of separate
/// benchmarks moved by 20 % from one round to the next); within a pair it hardly moves, so the
/// paired ratio is the figure to compare with a target ratio.
template <class A, class W>
void run_paired(benchmark::State& state, Device dev, A&& alone, W&& with) {
  auto timed = [&](auto&& fn) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    sync(dev);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  alone();  // warm-up: state allocated, pages touched
  with();
  sync(dev);
  std::vector<double> ta, tw, ratio;
  bool with_first = false;
  for (auto _ : state) {
    double a = 0.0, w = 0.0;
    if (with_first) {
      w = timed(with);
      a = timed(alone);
    } else {
      a = timed(alone);
      w = timed(with);
    }
    with_first = !with_first;
    ta.push_back(a);
    tw.push_back(w);
    ratio.push_back(w / a);
    state.SetIterationTime(a + w);
  }
  state.counters["alone_ms"] = median_of(ta) * 1e3;
  state.counters["with_ms"] = median_of(tw) * 1e3;
  state.counters["ratio"] = median_of(ratio);
  state.counters["params"] = static_cast<double>(total_params());
}

/// clip_overhead: an AdamW step alone and clip_grad_norm_(optimizer, 1.0) + the step, in pairs
/// (run_paired); ratio is what clipping costs on top of the step (target <= 1.15).
void bm_clip_overhead(benchmark::State& state, Device dev, int tensors) {
  std::vector<Parameter> ps = make_params(tensors, dev);
  trainrt::optim::AdamW opt(ps, trainrt::optim::AdamWOptions(1e-3));
  run_paired(
      state, dev, [&] { opt.step(); },
      [&] {
        trainrt::clip_grad_norm_(opt, 1.0);
        opt.step();
      });
}

// ---- CPU ceilings: the access pattern of the step with trivial arithmetic
// ------------------------

struct Arrays {
  std::vector<float> a, b, c, d;
};

Arrays& ceiling_arrays() {
  static Arrays* arr = [] {
    auto* x = new Arrays;
    const std::int64_t n = total_params();
    x->a = random_values(n, -1, 1, 101);
    x->b = random_values(n, -1, 1, 102);
    x->c = random_values(n, -1, 1, 103);
    x->d = random_values(n, 0, 1, 104);
    return x;
  }();
  return *arr;
}

// The ceiling loops are built for x86-64-v4 and the baseline (chosen at run time, like the CPU
// kernels), so the ceiling uses the same vector width as the kernels it is compared with.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TRAINRT_BENCH_CLONES __attribute__((target_clones("arch=x86-64-v4", "default")))
#else
#define TRAINRT_BENCH_CLONES
#endif

// Each loop comes in two forms: blocks of kPfBlock elements with software prefetches kPfBlock
// elements ahead (kPf, as the library's loops on Intel CPUs: kernels/cpu/cpu_optim.cpp,
// kPrefetch), and the same blocks with the hardware prefetcher alone (as on AMD CPUs). Which
// is faster depends on the machine (on an Intel Sapphire Rapids VM the hardware prefetcher
// alone left a multi-stream loop well short of the bandwidth; on an AMD Zen 4 VM the software
// prefetches slow it down), and a ceiling must be the best simple loop, not a handicapped one:
// compare_optim.py takes the faster of the two (ceiling_X/cpu and ceiling_X_hw/cpu).
constexpr std::int64_t kPfBlock = 256;

template <bool kPf>
inline void pf(const float* x, std::int64_t i0, std::int64_t n, int rw) {
  if (!kPf) return;
  const std::int64_t hi = std::min(i0 + 2 * kPfBlock, n);
  for (std::int64_t k = i0 + kPfBlock; k < hi; k += 16) {
    if (rw)
      __builtin_prefetch(x + k, 1, 3);
    else
      __builtin_prefetch(x + k, 0, 3);
  }
}

template <bool kPf>
TRAINRT_BENCH_CLONES void ceiling_adamw_pass(float* __restrict p, const float* __restrict g,
                                             float* __restrict m, float* __restrict v,
                                             std::int64_t n) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i0 = 0; i0 < n; i0 += kPfBlock) {
    const std::int64_t i1 = std::min(i0 + kPfBlock, n);
    pf<kPf>(g, i0, n, 0);
    pf<kPf>(p, i0, n, 1);
    pf<kPf>(m, i0, n, 1);
    pf<kPf>(v, i0, n, 1);
#pragma omp simd
    for (std::int64_t i = i0; i < i1; ++i) {
      const float gi = g[i], mi = m[i], vi = v[i];
      m[i] = mi * 0.5f + gi;
      v[i] = vi * 0.5f + gi;
      p[i] = p[i] * 0.5f + mi;
    }
  }
}

template <bool kPf>
TRAINRT_BENCH_CLONES double ceiling_adamw_reads_pass(const float* __restrict p,
                                                     const float* __restrict g,
                                                     const float* __restrict m,
                                                     const float* __restrict v, std::int64_t n) {
  float s = 0.0f;
#pragma omp parallel for schedule(static) reduction(+ : s)
  for (std::int64_t i0 = 0; i0 < n; i0 += kPfBlock) {
    const std::int64_t i1 = std::min(i0 + kPfBlock, n);
    pf<kPf>(g, i0, n, 0);
    pf<kPf>(p, i0, n, 0);
    pf<kPf>(m, i0, n, 0);
    pf<kPf>(v, i0, n, 0);
    float b = 0.0f;
#pragma omp simd reduction(+ : b)
    for (std::int64_t i = i0; i < i1; ++i) b += p[i] * 0.5f + g[i] * m[i] + v[i];
    s += b;
  }
  return s;
}

template <bool kPf>
TRAINRT_BENCH_CLONES void ceiling_sgd_pass(float* __restrict p, const float* __restrict g,
                                           float* __restrict buf, std::int64_t n) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i0 = 0; i0 < n; i0 += kPfBlock) {
    const std::int64_t i1 = std::min(i0 + kPfBlock, n);
    pf<kPf>(g, i0, n, 0);
    pf<kPf>(p, i0, n, 1);
    pf<kPf>(buf, i0, n, 1);
#pragma omp simd
    for (std::int64_t i = i0; i < i1; ++i) {
      const float bi = buf[i] * 0.5f + g[i];
      buf[i] = bi;
      p[i] = p[i] * 0.5f + bi;
    }
  }
}

template <bool kPf>
TRAINRT_BENCH_CLONES double ceiling_read_pass(const float* __restrict g, std::int64_t n) {
  double s = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : s)
  for (std::int64_t i0 = 0; i0 < n; i0 += kPfBlock) {
    const std::int64_t i1 = std::min(i0 + kPfBlock, n);
    pf<kPf>(g, i0, n, 0);
    double b = 0.0;
#pragma omp simd reduction(+ : b)
    for (std::int64_t i = i0; i < i1; ++i) b += static_cast<double>(g[i]) * g[i];
    s += b;
  }
  return s;
}

template <bool kPf>
void bm_ceiling_adamw(benchmark::State& state) {
  Arrays& x = ceiling_arrays();
  const std::int64_t n = total_params();
  run(state, Device::cpu(), 28.0 * n,
      [&] { ceiling_adamw_pass<kPf>(x.a.data(), x.b.data(), x.c.data(), x.d.data(), n); });
}

template <bool kPf>
void bm_ceiling_adamw_reads(benchmark::State& state) {
  // The AdamW pattern (alone) and its four reads without the writes (with), in pairs: ratio is
  // the share of the step's time that its reads alone take.
  Arrays& x = ceiling_arrays();
  const std::int64_t n = total_params();
  double sink = 0.0;
  run_paired(
      state, Device::cpu(),
      [&] { ceiling_adamw_pass<kPf>(x.a.data(), x.b.data(), x.c.data(), x.d.data(), n); },
      [&] {
        sink += ceiling_adamw_reads_pass<kPf>(x.a.data(), x.b.data(), x.c.data(), x.d.data(), n);
      });
  benchmark::DoNotOptimize(sink);
}

template <bool kPf>
void bm_ceiling_sgd(benchmark::State& state) {
  Arrays& x = ceiling_arrays();
  const std::int64_t n = total_params();
  run(state, Device::cpu(), 20.0 * n,
      [&] { ceiling_sgd_pass<kPf>(x.a.data(), x.b.data(), x.c.data(), n); });
}

template <bool kPf>
void bm_ceiling_clip_adamw(benchmark::State& state) {
  // The clip + step access sequence with trivial arithmetic: a read pass over g, then the
  // AdamW pattern over p, g, m, v (g possibly still in cache from the first pass).
  Arrays& x = ceiling_arrays();
  const std::int64_t n = total_params();
  double sink = 0.0;
  run(state, Device::cpu(), 32.0 * n, [&] {
    sink += ceiling_read_pass<kPf>(x.b.data(), n);
    ceiling_adamw_pass<kPf>(x.a.data(), x.b.data(), x.c.data(), x.d.data(), n);
  });
  benchmark::DoNotOptimize(sink);
}

template <bool kPf>
void bm_ceiling_norm(benchmark::State& state) {
  Arrays& x = ceiling_arrays();
  const std::int64_t n = total_params();
  double sink = 0.0;
  run(state, Device::cpu(), 4.0 * n, [&] { sink += ceiling_read_pass<kPf>(x.b.data(), n); });
  benchmark::DoNotOptimize(sink);
}

template <bool kPf>
void bm_ceiling_clip_overhead(benchmark::State& state) {
  // The ceiling loops' clip_overhead: the AdamW pattern alone, and a read pass over g followed
  // by the AdamW pattern, in pairs: what a separate read pass costs on this machine.
  Arrays& x = ceiling_arrays();
  const std::int64_t n = total_params();
  double sink = 0.0;
  auto step = [&] { ceiling_adamw_pass<kPf>(x.a.data(), x.b.data(), x.c.data(), x.d.data(), n); };
  run_paired(state, Device::cpu(), step, [&] {
    sink += ceiling_read_pass<kPf>(x.b.data(), n);
    step();
  });
  benchmark::DoNotOptimize(sink);
}

/// The buffers bm_ceiling_read rotates among (both forms share them).
std::vector<std::vector<float>>* read_pool() {
  const std::int64_t n = total_params();
  static std::vector<std::vector<float>>* pool = [n] {
    auto* p = new std::vector<std::vector<float>>();
    for (unsigned i = 0; i < 6; ++i) p->push_back(random_values(n, -1, 1, 200 + i));
    return p;
  }();
  return pool;
}

template <bool kPf>
void bm_ceiling_read(benchmark::State& state) {
  // Rotates among buffers larger than the last-level cache together (6 x 64 MiB at 16M
  // params), so the read comes from memory, as the grads' read before a step does.
  const std::int64_t n = total_params();
  std::vector<std::vector<float>>* pool = read_pool();
  double sink = 0.0;
  std::size_t next = 0;
  run(state, Device::cpu(), 4.0 * n, [&] {
    sink += ceiling_read_pass<kPf>((*pool)[next].data(), n);
    next = (next + 1) % pool->size();
  });
  benchmark::DoNotOptimize(sink);
}

void register_all() {
  std::vector<benchmark::internal::Benchmark*> regs;
  std::vector<Device> devices = {Device::cpu()};
  if (trainrt::cuda_available()) devices.push_back(Device::cuda(0));
  for (Device dev : devices) {
    const std::string d = dev.is_cpu() ? "cpu" : "cuda";
    for (int tensors : {1, 200}) {
      const std::string suffix = "/" + d + "/tensors:" + std::to_string(tensors);
      regs.push_back(
          benchmark::RegisterBenchmark(("adamw" + suffix).c_str(), bm_adamw, dev, tensors));
      regs.push_back(
          benchmark::RegisterBenchmark(("sgd_momentum" + suffix).c_str(), bm_sgd, dev, tensors));
      regs.push_back(benchmark::RegisterBenchmark(("clip_adamw" + suffix).c_str(), bm_clip_adamw,
                                                  dev, tensors));
      regs.push_back(
          benchmark::RegisterBenchmark(("grad_norm" + suffix).c_str(), bm_grad_norm, dev, tensors));
      regs.push_back(benchmark::RegisterBenchmark(("clip_params_adamw" + suffix).c_str(),
                                                  bm_clip_params_adamw, dev, tensors));
      regs.push_back(benchmark::RegisterBenchmark(("clip_overhead" + suffix).c_str(),
                                                  bm_clip_overhead, dev, tensors));
      regs.push_back(benchmark::RegisterBenchmark(("adamw_capturable" + suffix).c_str(),
                                                  bm_adamw_capturable, dev, tensors));
      if (dev.is_cuda()) {
        regs.push_back(benchmark::RegisterBenchmark(("clip_adamw_graph" + suffix).c_str(),
                                                    bm_clip_adamw_graph, dev, tensors));
      }
    }
  }
  if (trainrt::cuda_available()) {
    regs.push_back(
        benchmark::RegisterBenchmark("ceiling_copy/cuda", bm_ceiling_copy, Device::cuda(0)));
  }
  regs.push_back(benchmark::RegisterBenchmark("ceiling_adamw/cpu", bm_ceiling_adamw<true>));
  regs.push_back(
      benchmark::RegisterBenchmark("ceiling_adamw_reads/cpu", bm_ceiling_adamw_reads<true>));
  regs.push_back(benchmark::RegisterBenchmark("ceiling_sgd/cpu", bm_ceiling_sgd<true>));
  regs.push_back(benchmark::RegisterBenchmark("ceiling_read/cpu", bm_ceiling_read<true>));
  regs.push_back(
      benchmark::RegisterBenchmark("ceiling_clip_adamw/cpu", bm_ceiling_clip_adamw<true>));
  regs.push_back(benchmark::RegisterBenchmark("ceiling_norm/cpu", bm_ceiling_norm<true>));
  regs.push_back(benchmark::RegisterBenchmark("ceiling_adamw_hw/cpu", bm_ceiling_adamw<false>));
  regs.push_back(
      benchmark::RegisterBenchmark("ceiling_adamw_reads_hw/cpu", bm_ceiling_adamw_reads<false>));
  regs.push_back(benchmark::RegisterBenchmark("ceiling_sgd_hw/cpu", bm_ceiling_sgd<false>));
  regs.push_back(benchmark::RegisterBenchmark("ceiling_read_hw/cpu", bm_ceiling_read<false>));
  regs.push_back(
      benchmark::RegisterBenchmark("ceiling_clip_adamw_hw/cpu", bm_ceiling_clip_adamw<false>));
  regs.push_back(benchmark::RegisterBenchmark("ceiling_norm_hw/cpu", bm_ceiling_norm<false>));
  regs.push_back(
      benchmark::RegisterBenchmark("ceiling_clip_overhead/cpu", bm_ceiling_clip_overhead<true>));
  regs.push_back(benchmark::RegisterBenchmark("ceiling_clip_overhead_hw/cpu",
                                              bm_ceiling_clip_overhead<false>));
  for (benchmark::internal::Benchmark* b : regs) {
    b->UseManualTime()->Unit(benchmark::kMillisecond);
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  // The CPU kernel build and whether its loops prefetch in software (TRAINRT_CPU_PREFETCH).
  benchmark::AddCustomContext("cpu_backend", trainrt::device_description(Device::cpu()));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
