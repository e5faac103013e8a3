// The CPU backend's GEMM slot: OpenBLAS cblas_sgemm / cblas_dgemm on row-major arrays.
// f16 / bf16 inputs are widened to f32 first (the CPU has no half-precision GEMM), the
// product accumulates in f32 and is rounded once to the output dtype.
//
// Threads: Debian's default libopenblas is the pthread build. Its worker pool and the OpenMP
// team of the element-wise kernels would take turns on the same cores, each spinning while
// the other works (measured: 2-3x slower steps on 2 busy cores). So OpenBLAS is kept at one
// thread and a large GEMM is split by the OpenMP team into row (or column) blocks of C, one
// single-threaded OpenBLAS call per block: one pool, sized by OMP_NUM_THREADS.
#include <cblas.h>
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

void init_threads() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
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
  init_threads();
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
    blocked_gemm<double>(&cblas_dgemm, ta, tb, m, n, k, a->alpha, static_cast<const double*>(a->a),
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
  blocked_gemm<float>(&cblas_sgemm, ta, tb, m, n, k, static_cast<float>(a->alpha), pa, lda, pb, ldb,
                      static_cast<float>(a->beta), pc);
  if (wc) cpu::kernels().cast(wc->p, TRAINRT_F32, a->c, cd, m * n);
  return 0;
}

}  // namespace detail
}  // namespace trainrt
