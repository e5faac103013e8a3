// The CPU backend's GEMM slot: OpenBLAS cblas_sgemm / cblas_dgemm on row-major arrays.
// f16 / bf16 inputs are widened to f32 first (the CPU has no half-precision GEMM), the
// product accumulates in f32 and is rounded once to the output dtype.
//
// Threads: Debian's default libopenblas is the pthread build. Its worker pool and the OpenMP
// team of the element-wise kernels would take turns on the same cores, each spinning while
// the other works (measured: 2-3x slower steps on 2 busy cores). So OpenBLAS is kept at one
// thread and a large GEMM is split by the OpenMP team into row (or column) blocks of C, one
// single-threaded OpenBLAS call per block: one pool, sized by OMP_NUM_THREADS.
//
// Loading. OpenBLAS is opened with dlopen at the first GEMM rather than linked: its
// DYNAMIC_ARCH build picks its kernels once, in its load-time constructor, from the CPU model,
// and 0.3.21 (Debian 12) does not know recent Intel models: on this machine's Sapphire Rapids
// it falls back to its Prescott (SSE3) kernels, 3.5x slower than its AVX-512 ones. The only
// way to choose is OPENBLAS_CORETYPE, read by that constructor, so it must be set before
// OpenBLAS is loaded. When the variable is unset and OpenBLAS is not loaded yet, trainrt sets
// it for Intel CPUs to the best kernel family the CPU supports (SkylakeX with AVX-512, Haswell
// with AVX2 + FMA; those are what OpenBLAS uses for every newer Intel core it knows) and
// leaves every other case to OpenBLAS. See docs/DESIGN-NOTES.md, "OpenBLAS kernels".
// TRAINRT_OPENBLAS names another library to open instead of libopenblas.so.0.
#include <cblas.h>
#include <dlfcn.h>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>

#include "../../kernels/cpu/cpu_dispatch.h"
#include "../internal.hpp"

namespace trainrt {
namespace detail {
namespace {

struct HostBuffer {
  void* p = nullptr;
  explicit HostBuffer(size_t bytes) : p(bytes ? std::malloc(bytes) : nullptr) {}
  ~HostBuffer() { std::free(p); }
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
};

struct Blas {
  decltype(&cblas_sgemm) sgemm = nullptr;
  decltype(&cblas_dgemm) dgemm = nullptr;
  std::string info;   // for cpu_gemm_info()
  std::string error;  // why OpenBLAS could not be used ("" when it can)
};

/// The OPENBLAS_CORETYPE trainrt chooses for this CPU ("" to leave it to OpenBLAS).
const char* preferred_coretype() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (!__builtin_cpu_is("intel")) return "";
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
  return "";
}

Blas load_blas() {
  Blas b;
  // TRAINRT_OPENBLAS: another OpenBLAS build to open (a file name or a path).
  const char* named = std::getenv("TRAINRT_OPENBLAS");
  const char* soname = named != nullptr && *named != '\0' ? named : "libopenblas.so.0";
  std::string how;
  const char* env = std::getenv("OPENBLAS_CORETYPE");
  void* loaded = dlopen(soname, RTLD_NOW | RTLD_NOLOAD);
  if (loaded != nullptr) {
    how = "already loaded by the process: its own choice";
    dlclose(loaded);
  } else if (env != nullptr) {
    how = fmt::format("OPENBLAS_CORETYPE={} from the environment", env);
  } else if (*preferred_coretype() != '\0') {
    // Before dlopen: OpenBLAS reads it in its constructor, once.
    ::setenv("OPENBLAS_CORETYPE", preferred_coretype(), 0);
    how = fmt::format("OPENBLAS_CORETYPE={} set by trainrt", preferred_coretype());
  } else {
    how = "OpenBLAS's own choice";
  }
  void* h = dlopen(soname, RTLD_NOW | RTLD_GLOBAL);
  if (h == nullptr) {
    const char* e = dlerror();
    b.error = fmt::format("the CPU GEMM needs OpenBLAS ({}; Debian: libopenblas0): {}", soname,
                          e ? e : "dlopen failed");
    return b;
  }
  b.sgemm = reinterpret_cast<decltype(&cblas_sgemm)>(dlsym(h, "cblas_sgemm"));
  b.dgemm = reinterpret_cast<decltype(&cblas_dgemm)>(dlsym(h, "cblas_dgemm"));
  auto set_threads = reinterpret_cast<void (*)(int)>(dlsym(h, "openblas_set_num_threads"));
  auto corename = reinterpret_cast<char* (*)()>(dlsym(h, "openblas_get_corename"));
  auto config = reinterpret_cast<char* (*)()>(dlsym(h, "openblas_get_config"));
  if (b.sgemm == nullptr || b.dgemm == nullptr || set_threads == nullptr) {
    b.error = fmt::format("{} lacks cblas_sgemm, cblas_dgemm or openblas_set_num_threads", soname);
    return b;
  }
  set_threads(1);  // see "Threads" above
  const char* core = corename ? corename() : nullptr;
  const char* cfg = config ? config() : nullptr;
  b.info = fmt::format("{}; kernels {} ({})", cfg ? cfg : soname, core ? core : "unknown", how);
  log()->debug("CPU GEMM: {}", b.info);
  return b;
}

const Blas& blas() {
  static const Blas b = load_blas();
  return b;
}

// Below this many multiply-adds one call on the calling thread is faster than a team.
constexpr double kParallelFlops = 1 << 20;

/// C = alpha op(A) op(B) + beta C, row-major, split into blocks of C rows (or columns when
/// C has fewer rows than threads) across the OpenMP team.
template <class T, class Gemm>
void blocked_gemm(Gemm gemm, bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                  int64_t lda, const T* b, int64_t ldb, T beta, T* c) {
  const CBLAS_TRANSPOSE ota = ta ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE otb = tb ? CblasTrans : CblasNoTrans;
  auto call = [&](int64_t mm, int64_t nn, const T* pa, const T* pb, T* pc) {
    gemm(CblasRowMajor, ota, otb, static_cast<blasint>(mm), static_cast<blasint>(nn),
         static_cast<blasint>(k), alpha, pa, static_cast<blasint>(lda), pb,
         static_cast<blasint>(ldb), beta, pc, static_cast<blasint>(n));
  };
  const int threads = omp_get_max_threads();
  if (threads <= 1 || static_cast<double>(m) * n * k < kParallelFlops || omp_in_parallel()) {
    call(m, n, a, b, c);
    return;
  }
  const bool by_rows = m >= 4 * threads || m >= n;
  const int64_t len = by_rows ? m : n;
  const int64_t nblk = std::min<int64_t>(threads, len);
  const int team = static_cast<int>(nblk);
#pragma omp parallel for schedule(static) num_threads(team)
  for (int64_t blk = 0; blk < nblk; ++blk) {
    const int64_t lo = len * blk / nblk, hi = len * (blk + 1) / nblk;
    if (hi <= lo) continue;
    if (by_rows) {  // rows lo..hi of op(A) and C
      call(hi - lo, n, ta ? a + lo : a + lo * lda, b, c + lo * n);
    } else {  // columns lo..hi of op(B) and C
      call(m, hi - lo, a, tb ? b + lo * ldb : b + lo, c + lo);
    }
  }
}

}  // namespace

int cpu_gemm_impl(const trainrt_gemm_args* a, std::string& err) {
  const Blas& lib = blas();
  if (!lib.error.empty()) {
    err = "gemm: " + lib.error;
    return 1;
  }
  const int32_t ab = a->ab_dtype, cd = a->c_dtype;
  const bool half = ab == TRAINRT_F16 || ab == TRAINRT_BF16;
  if (!(ab == TRAINRT_F32 || ab == TRAINRT_F64 || half) ||
      !(cd == ab || (half && cd == TRAINRT_F32))) {
    err = fmt::format("gemm: unsupported dtypes (A/B {}, C {})", ab, cd);
    return 1;
  }
  const int64_t m = a->m, n = a->n, k = a->k;
  if (m == 0 || n == 0) return 0;
  // Leading dimensions of at least 1, as BLAS requires even for k = 0 (C = beta * C then).
  const int64_t lda = std::max<int64_t>(1, a->trans_a ? m : k);
  const int64_t ldb = std::max<int64_t>(1, a->trans_b ? k : n);
  const bool ta = a->trans_a != 0, tb = a->trans_b != 0;
  if (ab == TRAINRT_F64) {
    blocked_gemm<double>(lib.dgemm, ta, tb, m, n, k, a->alpha, static_cast<const double*>(a->a),
                         lda, static_cast<const double*>(a->b), ldb, a->beta,
                         static_cast<double*>(a->c));
    return 0;
  }
  const float* pa = static_cast<const float*>(a->a);
  const float* pb = static_cast<const float*>(a->b);
  float* pc = static_cast<float*>(a->c);
  std::unique_ptr<HostBuffer> wa, wb, wc;
  if (half) {
    const auto& kern = cpu::kernels();
    wa = std::make_unique<HostBuffer>(static_cast<size_t>(m * k) * 4);
    wb = std::make_unique<HostBuffer>(static_cast<size_t>(k * n) * 4);
    if ((m * k != 0 && !wa->p) || (k * n != 0 && !wb->p)) {
      err = "gemm: out of host memory";
      return 1;
    }
    kern.cast(a->a, ab, wa->p, TRAINRT_F32, m * k);
    kern.cast(a->b, ab, wb->p, TRAINRT_F32, k * n);
    pa = static_cast<const float*>(wa->p);
    pb = static_cast<const float*>(wb->p);
    if (cd != TRAINRT_F32) {
      wc = std::make_unique<HostBuffer>(static_cast<size_t>(m * n) * 4);
      if (!wc->p) {
        err = "gemm: out of host memory";
        return 1;
      }
      if (a->beta != 0.0) kern.cast(a->c, cd, wc->p, TRAINRT_F32, m * n);
      pc = static_cast<float*>(wc->p);
    }
  }
  blocked_gemm<float>(lib.sgemm, ta, tb, m, n, k, static_cast<float>(a->alpha), pa, lda, pb, ldb,
                      static_cast<float>(a->beta), pc);
  if (wc) cpu::kernels().cast(wc->p, TRAINRT_F32, a->c, cd, m * n);
  return 0;
}

}  // namespace detail

std::string cpu_gemm_info() {
  const detail::Blas& b = detail::blas();
  return b.error.empty() ? b.info : b.error;
}

}  // namespace trainrt
