// The CPU backend's GEMM slot: OpenBLAS cblas_sgemm / cblas_dgemm on row-major arrays.
// f16 / bf16 inputs are widened to f32 first (the CPU has no half-precision GEMM), the
// product accumulates in f32 and is rounded once to the output dtype.
//
// Threads: Debian's default libopenblas is the pthread build, whose workers would otherwise
// start as many threads as cores next to the OpenMP team of the element-wise kernels. The
// first call caps OpenBLAS at omp_get_max_threads() (the same budget the user gave OpenMP,
// e.g. OMP_NUM_THREADS); the two pools never run at the same time, as every op is synchronous.
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
  std::call_once(once, [] { openblas_set_num_threads(omp_get_max_threads()); });
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
  const CBLAS_TRANSPOSE ta = a->trans_a ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE tb = a->trans_b ? CblasTrans : CblasNoTrans;
  // Leading dimensions of at least 1, as BLAS requires even for k = 0 (C = beta * C then).
  const blasint lda = static_cast<blasint>(std::max<int64_t>(1, a->trans_a ? m : k));
  const blasint ldb = static_cast<blasint>(std::max<int64_t>(1, a->trans_b ? k : n));
  if (ab == TRAINRT_F64) {
    cblas_dgemm(CblasRowMajor, ta, tb, static_cast<blasint>(m), static_cast<blasint>(n),
                static_cast<blasint>(k), a->alpha, static_cast<const double*>(a->a), lda,
                static_cast<const double*>(a->b), ldb, a->beta, static_cast<double*>(a->c),
                static_cast<blasint>(n));
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
  cblas_sgemm(CblasRowMajor, ta, tb, static_cast<blasint>(m), static_cast<blasint>(n),
              static_cast<blasint>(k), static_cast<float>(a->alpha), pa, lda, pb, ldb,
              static_cast<float>(a->beta), pc, static_cast<blasint>(n));
  if (wc) cpu::kernels().cast(wc->p, TRAINRT_F32, a->c, cd, m * n);
  return 0;
}

}  // namespace detail
}  // namespace trainrt
