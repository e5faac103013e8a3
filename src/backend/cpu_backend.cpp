// The built-in CPU backend: host memory (64-byte aligned) and the OpenMP kernels, exposed
// through the same C table as the CUDA module. Data errors are reported at once.
#include <omp.h>
#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "../../kernels/common/optim.h"
#include "../../kernels/cpu/cpu_dispatch.h"
#include "../internal.hpp"

namespace trainrt {
namespace detail {

int cpu_gemm_impl(const trainrt_gemm_args* a, std::string& err);  // cpu_gemm.cpp

namespace {

thread_local std::string g_last_error;

int set_error(const std::string& m) {
  g_last_error = m;
  return 1;
}

const char* cpu_last_error() { return g_last_error.c_str(); }

int cpu_device_count(std::int32_t* count) {
  *count = 1;
  return 0;
}

int cpu_device_name(std::int32_t, char* buf, size_t len) {
  const std::string s =
      fmt::format("host, {} OpenMP threads, {} kernels, optimizer prefetch: {}",
                  omp_get_max_threads(), cpu::kernels().isa, cpu::software_prefetch_reason());
  std::snprintf(buf, len, "%s", s.c_str());
  return 0;
}

int cpu_supports(std::int32_t op, std::int32_t dtype) {
  const bool flt =
      dtype == TRAINRT_F32 || dtype == TRAINRT_F64 || dtype == TRAINRT_F16 || dtype == TRAINRT_BF16;
  if (op == TRAINRT_OP_CAST) return dtype >= TRAINRT_F32 && dtype <= TRAINRT_U8;
  if (op == TRAINRT_OP_OPTIMIZER_STEP) return dtype == TRAINRT_F32 ? 1 : 0;
  return flt ? 1 : 0;
}

// Host block cache. A fresh multi-megabyte block costs a page fault and a kernel-zeroed page
// per 4 KiB on first touch: for a 4096 x 1000 gradient that is more time than the fused
// loss kernel itself. Large blocks are therefore kept on free and handed out again for the
// same size class (4 classes per power of two), up to a byte cap (TRAINRT_CPU_CACHE_MB,
// default 2048; 0 disables). Blocks of 2 MiB and more are 2 MiB-aligned and advised as
// transparent huge pages. Small blocks go straight to malloc, which caches them already.
class HostCache {
 public:
  static HostCache& instance() {
    static HostCache* c = new HostCache();  // leaked: tensors may outlive static destructors
    return *c;
  }

  void* allocate(size_t bytes) {
    if (bytes < kMinCached) return std::aligned_alloc(64, round_up(bytes, 64));
    const size_t cls = size_class(bytes);
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(cls);
      if (it != free_.end()) {
        void* p = it->second;
        free_.erase(it);
        cached_ -= cls;
        sizes_[p] = cls;
        return p;
      }
    }
    const size_t align = cls >= kHuge ? kHuge : 4096;
    void* p = aligned_block(align, cls);
    if (p == nullptr) {
      release_all();
      p = aligned_block(align, cls);
      if (p == nullptr) return nullptr;
    }
#ifdef MADV_HUGEPAGE
    if (cls >= kHuge) ::madvise(p, cls, MADV_HUGEPAGE);
#endif
    std::lock_guard<std::mutex> lock(mu_);
    sizes_[p] = cls;
    return p;
  }

  void release(void* p) {
    if (p == nullptr) return;
    std::unique_lock<std::mutex> lock(mu_);
    auto it = sizes_.find(p);
    if (it == sizes_.end()) {  // a small block
      lock.unlock();
      std::free(p);
      return;
    }
    const size_t cls = it->second;
    sizes_.erase(it);
    if (cached_ + cls <= cap_) {
      free_.emplace(cls, p);
      cached_ += cls;
      return;
    }
    lock.unlock();
    std::free(p);
  }

  void release_all() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& kv : free_) std::free(kv.second);
    free_.clear();
    cached_ = 0;
  }

 private:
  static constexpr size_t kMinCached = size_t(1) << 20;
  static constexpr size_t kHuge = size_t(2) << 20;

  HostCache() {
    size_t mb = 2048;
    if (const char* e = std::getenv("TRAINRT_CPU_CACHE_MB")) mb = std::strtoull(e, nullptr, 10);
    cap_ = mb << 20;
  }
  static size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }
  // posix_memalign, not std::aligned_alloc: a size class (e.g. 3 MiB) need not be a multiple
  // of its alignment (2 MiB), which aligned_alloc requires (C11 7.22.3.1).
  static void* aligned_block(size_t align, size_t bytes) {
    void* p = nullptr;
    return ::posix_memalign(&p, align, bytes) == 0 ? p : nullptr;
  }
  static size_t size_class(size_t bytes) {
    size_t top = size_t(1) << (63 - __builtin_clzll(bytes));  // highest power of two <= bytes
    return round_up(bytes, top / 4);
  }

  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  std::map<void*, size_t> sizes_;  // live cached-class blocks
  size_t cached_ = 0;
  size_t cap_ = 0;
};

int cpu_alloc(std::int32_t, size_t bytes, void** out) {
  *out = bytes == 0 ? nullptr : HostCache::instance().allocate(bytes);
  if (bytes != 0 && *out == nullptr) {
    return set_error(fmt::format("out of host memory allocating {} bytes", bytes));
  }
  return 0;
}

int cpu_free(std::int32_t, void* p) {
  HostCache::instance().release(p);
  return 0;
}

int cpu_copy(std::int32_t, void* dst, const void* src, size_t bytes, std::int32_t) {
  if (bytes) std::memcpy(dst, src, bytes);
  return 0;
}

int cpu_memset_zero(std::int32_t, void* dst, size_t bytes) {
  if (bytes) std::memset(dst, 0, bytes);
  return 0;
}

int cpu_synchronize(std::int32_t) { return 0; }

int cpu_cast(std::int32_t, const void* src, std::int32_t sdt, void* dst, std::int32_t ddt,
             std::int64_t n) {
  return cpu::kernels().cast(src, sdt, dst, ddt, n);
}

int cpu_softmax_forward(std::int32_t, const trainrt_softmax_args* a) {
  return cpu::kernels().softmax_forward(a);
}

int cpu_softmax_backward(std::int32_t, const trainrt_softmax_args* a) {
  return cpu::kernels().softmax_backward(a);
}

int report(int rc, const DataError& e) {
  if (rc == 0) return 0;
  char buf[512];
  format_data_error(e, buf, sizeof buf);
  return set_error(buf);
}

int cpu_cross_entropy(std::int32_t, const trainrt_cross_entropy_args* a) {
  DataError e{};
  return report(cpu::kernels().cross_entropy(a, &e), e);
}

int cpu_pointwise_loss(std::int32_t, const trainrt_pointwise_loss_args* a) {
  DataError e{};
  return report(cpu::kernels().pointwise_loss(a, &e), e);
}

/// Status of the optimizer-family kernels: 1 = unsupported arguments, 2 = out of memory.
int optim_status(int rc, const char* slot) {
  if (rc == 0) return 0;
  if (rc == 2) return set_error(fmt::format("{}: out of host memory", slot));
  return set_error(fmt::format("{}: unsupported dtype or arguments", slot));
}

/// A capturable step (backend_api.h): each tensor's block is `scalars` with the t-dependent
/// entries derived for its own count (kept in tensor_scalars); the tensors that share a count
/// take one kernel call with that block, then every count advances (none on a skipped step).
int cpu_capturable_step(const trainrt_optim_step_args* a) {
  const char* slot = "optimizer_step";
  if (a->step_hyper == nullptr || a->tensor_scalars == nullptr || a->scalars == nullptr) {
    return set_error(
        fmt::format("{}: a capturable step needs step_hyper, tensor_scalars and "
                    "scalars",
                    slot));
  }
  if (a->n_tensors < 0) return set_error(fmt::format("{}: negative tensor count", slot));
  const auto n = static_cast<std::size_t>(a->n_tensors);
  for (std::size_t i = 0; i < n; ++i) {
    if (a->step_counts[i] == nullptr) {
      return set_error(fmt::format("{}: null step count pointer for tensor {}", slot, i));
    }
  }
  if (kern::step_skipped(a->grad_scalars)) return 0;
  std::map<std::int64_t, std::vector<std::size_t>> by_count;
  for (std::size_t i = 0; i < n; ++i) {
    const std::int64_t t = *a->step_counts[i] + 1;
    float* block = a->tensor_scalars + i * TRAINRT_OS_COUNT;
    std::memcpy(block, a->scalars, TRAINRT_OS_COUNT * sizeof(float));
    const bool fresh = t == 1 || (a->flags & TRAINRT_OPTIM_FRESH_BUFFER) != 0;
    kern::derive_step_scalars(a->algo, a->step_hyper, t, fresh, block);
    by_count[t].push_back(i);
  }
  for (const auto& kv : by_count) {
    const std::vector<std::size_t>& idx = kv.second;
    std::vector<void*> params, copies, states[3];
    std::vector<const void*> grads;
    std::vector<std::int64_t> numels;
    for (std::size_t i : idx) {
      params.push_back(a->params[i]);
      grads.push_back(a->grads[i]);
      numels.push_back(a->numels[i]);
      if (a->model_copies != nullptr) copies.push_back(a->model_copies[i]);
      for (int k = 0; k < 3; ++k)
        if (a->states[k] != nullptr) states[k].push_back(a->states[k][i]);
    }
    trainrt_optim_step_args sub = *a;
    sub.n_tensors = static_cast<std::int64_t>(idx.size());
    sub.params = params.data();
    sub.grads = grads.data();
    sub.numels = numels.data();
    sub.model_copies = a->model_copies != nullptr ? copies.data() : nullptr;
    for (int k = 0; k < 3; ++k)
      sub.states[k] = a->states[k] != nullptr ? states[k].data() : nullptr;
    sub.scalars = a->tensor_scalars + idx.front() * TRAINRT_OS_COUNT;
    sub.step_counts = nullptr;
    sub.step_hyper = nullptr;
    sub.tensor_scalars = nullptr;
    const int rc = optim_status(cpu::kernels().optimizer_step(&sub), slot);
    if (rc != 0) return rc;
  }
  for (std::size_t i = 0; i < n; ++i) ++*a->step_counts[i];
  return 0;
}

int cpu_optimizer_step(std::int32_t, const trainrt_optim_step_args* a) {
  if (a->step_counts != nullptr) return cpu_capturable_step(a);
  return optim_status(cpu::kernels().optimizer_step(a), "optimizer_step");
}

int cpu_multi_tensor_norm(std::int32_t, const trainrt_multi_tensor_norm_args* a) {
  return optim_status(cpu::kernels().multi_tensor_norm(a), "multi_tensor_norm");
}

int cpu_multi_tensor_scale(std::int32_t, const trainrt_multi_tensor_scale_args* a) {
  return optim_status(cpu::kernels().multi_tensor_scale(a), "multi_tensor_scale");
}

int cpu_amp(std::int32_t, const trainrt_amp_args* a) {
  return optim_status(cpu::kernels().amp(a), "amp");
}

int cpu_gemm(std::int32_t, const trainrt_gemm_args* a) {
  std::string err;
  return cpu_gemm_impl(a, err) == 0 ? 0 : set_error(err);
}

int cpu_nn_pointwise(std::int32_t, const trainrt_nn_pointwise_args* a) {
  return cpu::kernels().nn_pointwise(a) == 0 ? 0 : set_error("nn_pointwise: unsupported arguments");
}

int cpu_bias(std::int32_t, const trainrt_bias_args* a) {
  return cpu::kernels().bias(a) == 0 ? 0 : set_error("bias: unsupported arguments");
}

}  // namespace

const trainrt_backend_v1& cpu_backend() {
  static const trainrt_backend_v1 table = [] {
    trainrt_backend_v1 t{};
    t.api_version = TRAINRT_BACKEND_API_VERSION;
    t.struct_size = sizeof(trainrt_backend_v1);
    t.args_revision = TRAINRT_BACKEND_ARGS_REVISION;
    t.name = "cpu";
    t.last_error = &cpu_last_error;
    t.device_count = &cpu_device_count;
    t.device_name = &cpu_device_name;
    t.supports = &cpu_supports;
    t.alloc = &cpu_alloc;
    t.free = &cpu_free;
    t.copy = &cpu_copy;
    t.memset_zero = &cpu_memset_zero;
    t.synchronize = &cpu_synchronize;
    t.cast = &cpu_cast;
    t.softmax_forward = &cpu_softmax_forward;
    t.softmax_backward = &cpu_softmax_backward;
    t.cross_entropy = &cpu_cross_entropy;
    t.pointwise_loss = &cpu_pointwise_loss;
    t.optimizer_step = &cpu_optimizer_step;
    t.multi_tensor_norm = &cpu_multi_tensor_norm;
    t.multi_tensor_scale = &cpu_multi_tensor_scale;
    t.amp = &cpu_amp;
    t.gemm = &cpu_gemm;
    t.nn_pointwise = &cpu_nn_pointwise;
    t.bias = &cpu_bias;
    return t;
  }();
  return table;
}

}  // namespace detail
}  // namespace trainrt
