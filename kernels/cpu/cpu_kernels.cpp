// OpenMP CPU kernels: cast, softmax / log_softmax, the cross-entropy family and the
// element-wise losses.
//
// Contract of the loss kernels: each reads its input once from memory and writes the loss and
// the gradient once; nothing of size N x C is allocated. Rows are split across threads
// (static schedule); within a row, max and sum of exponentials are computed online over
// L1-sized blocks, and the gradient pass re-reads the row from cache. Reductions over rows or
// element chunks go through per-row / per-chunk partials summed in a fixed order, so results
// do not depend on the thread count.
//
// This file is compiled once per ISA level (see cpu_dispatch.cpp) and must not use C++
// library types.
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "../common/cast.h"
#include "../common/losses.h"
#include "cpu_kernels.h"

namespace trainrt {
namespace TRAINRT_KNS {
namespace {

constexpr int64_t kBlock = 2048;     // online max/sum block (8 KiB of f32: stays in L1)
constexpr int64_t kChunk = 1 << 14;  // element-wise chunk
// Below this many elements a parallel region costs more than it saves (and spinning
// threads hurt when cores are shared): such calls run on the calling thread.
constexpr int64_t kParallelMin = 1 << 15;
constexpr double kNoScale = 1.0;

template <class T>
struct dtype_tag {
  using type = T;
};

template <class F>
void dispatch_float(int32_t dtype, F&& f) {
  switch (dtype) {
    case TRAINRT_F32: f(dtype_tag<float>{}); break;
    case TRAINRT_F64: f(dtype_tag<double>{}); break;
    case TRAINRT_F16: f(dtype_tag<f16_t>{}); break;
    case TRAINRT_BF16: f(dtype_tag<bf16_t>{}); break;
    default: break;
  }
}

template <class A>
A upstream_scale(double grad_scale, const float* grad_scale_ptr) {
  // On the CPU the device scalar is host memory.
  return (A)(grad_scale * (grad_scale_ptr ? (double)*grad_scale_ptr : kNoScale));
}

/// Converts n elements of a row to A (no-op view when T == A).
template <class T, class A>
const A* row_as_acc(const T* src, int64_t n, A* buf) {
  for (int64_t i = 0; i < n; ++i) buf[i] = load<A>(src, i);
  return buf;
}
template <>
const float* row_as_acc<float, float>(const float* src, int64_t, float*) {
  return src;
}
template <>
const double* row_as_acc<double, double>(const double* src, int64_t, double*) {
  return src;
}

/// Maximum of a block, ignoring NaN (-inf for an all-NaN or all -inf block).
template <class A>
A block_max(const A* z, int64_t n) {
  A m = neg_inf<A>();
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = z[i] > m ? z[i] : m;
  return m;
}

template <class A>
bool has_nan(const A* z, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (z[i] != z[i]) return true;
  return false;
}

/// Prefetches the n values after z[0, n) (the next block or row) while z's block computes;
/// see block_exp_sum. Prefetches never fault.
template <class A>
inline void prefetch_next(const A* z, int64_t n) {
  for (int64_t i = 0; i < n; i += 64 / (int64_t)sizeof(A)) __builtin_prefetch(z + n + i, 0, 3);
}

#if defined(__AVX512F__)
// The x86-64-v4 build spells the f32 block loops with AVX-512 intrinsics: GCC's vectorisation
// of exp_nonpos builds 2^n with integer converts, shifts and a blend; here one vscalefps does
// it, the tail is a masked load instead of a scalar loop, and two accumulators split the
// max / sum dependency chains. Same polynomial and constants as exp_nonpos (math.h).
// GCC 12's own intrinsics (_mm512_undefined_*, `__Y = __Y`) trip -Wuninitialized when inlined.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
inline __m512 exp_nonpos16(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.0f);
  const __m512 xc = _mm512_max_ps(lo, x);  // keeps a NaN x (max returns its second operand)
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  __m512 y = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r);
  y = _mm512_add_ps(y, _mm512_set1_ps(1.0f));
  const __m512 res = _mm512_scalef_ps(y, n);
  // x < -87 (and -inf) gives exactly 0, as exp_nonpos
  return _mm512_mask_mov_ps(res, _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ), _mm512_setzero_ps());
}

inline __mmask16 tail_mask(int64_t rem) {
  return rem >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << rem) - 1u);
}

template <>
float block_max<float>(const float* z, int64_t n) {
  __m512 m0 = _mm512_set1_ps(-INFINITY), m1 = m0;
  int64_t i = 0;
  // max_ps(z, m) returns m when z is NaN: NaN is ignored, as the generic block_max
  for (; i + 32 <= n; i += 32) {
    m0 = _mm512_max_ps(_mm512_loadu_ps(z + i), m0);
    m1 = _mm512_max_ps(_mm512_loadu_ps(z + i + 16), m1);
  }
  for (; i < n; i += 16) {
    const __mmask16 k = tail_mask(n - i);
    m0 = _mm512_mask_max_ps(m0, k, _mm512_maskz_loadu_ps(k, z + i), m0);
  }
  return _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
}

/// sum_i exp(z_i - bm) over a block; stores each term to out when out != nullptr. While the
/// block computes, the next n values after it (the next block or row: rows are contiguous) are
/// prefetched, so that its memory reads overlap this block's arithmetic. Prefetches never
/// fault, so running past the end of the tensor is harmless.
inline float block_exp_sum(const float* z, int64_t n, float bm, float* out) {
  const __m512 vm = _mm512_set1_ps(bm);
  __m512 s0 = _mm512_setzero_ps(), s1 = s0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    _mm_prefetch((const char*)(z + n + i), _MM_HINT_T0);
    _mm_prefetch((const char*)(z + n + i + 16), _MM_HINT_T0);
    const __m512 e0 = exp_nonpos16(_mm512_sub_ps(_mm512_loadu_ps(z + i), vm));
    const __m512 e1 = exp_nonpos16(_mm512_sub_ps(_mm512_loadu_ps(z + i + 16), vm));
    if (out) {
      _mm512_storeu_ps(out + i, e0);
      _mm512_storeu_ps(out + i + 16, e1);
    }
    s0 = _mm512_add_ps(s0, e0);
    s1 = _mm512_add_ps(s1, e1);
  }
  for (; i < n; i += 16) {
    const __mmask16 k = tail_mask(n - i);
    const __m512 e =
        _mm512_maskz_mov_ps(k, exp_nonpos16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, z + i), vm)));
    if (out) _mm512_mask_storeu_ps(out + i, k, e);
    s0 = _mm512_add_ps(s0, e);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}
#pragma GCC diagnostic pop
#endif

/// Online max / sum of exp over a row of n values, L1-sized blocks.
template <class A>
MaxSum<A> row_max_sum(const A* z, int64_t n) {
  MaxSum<A> st{neg_inf<A>(), A(0)};
  for (int64_t c0 = 0; c0 < n; c0 += kBlock) {
    const int64_t len = n - c0 < kBlock ? n - c0 : kBlock;
    const A* zb = z + c0;
    // The max skips NaN; a NaN then shows up in the sum of exponentials.
    const A bm = block_max(zb, len);
    A bs = A(0);
    if (bm != neg_inf<A>()) {
#if defined(__AVX512F__)
      if (sizeof(A) == sizeof(float)) {
        bs = (A)block_exp_sum((const float*)(const void*)zb, len, (float)bm, nullptr);
      } else
#endif
      {
        prefetch_next(zb, len);
#pragma omp simd reduction(+ : bs)
        for (int64_t i = 0; i < len; ++i) bs += exp_nonpos(zb[i] - bm);
      }
    } else if (has_nan(zb, len)) {
      bs = (A)NAN;
    }
    if (bs != bs) return MaxSum<A>{(A)NAN, (A)NAN};
    st = merge(st, MaxSum<A>{bm, bs});
  }
  return st;
}

/// As row_max_sum, and also stores e_c = exp(z_c - m_b) into out, where m_b is the maximum
/// of the block holding c (kept in bmax[b]). A later pass turns e into exp(z - k) with one
/// multiply by exp(m_b - k) per block: one exponential per element instead of two.
inline MaxSum<float> row_max_sum_store(const float* z, int64_t n, float* out, float* bmax) {
  MaxSum<float> st{neg_inf<float>(), 0.0f};
  for (int64_t c0 = 0, b = 0; c0 < n; c0 += kBlock, ++b) {
    const int64_t len = n - c0 < kBlock ? n - c0 : kBlock;
    const float* zb = z + c0;
    float* ob = out + c0;
    const float bm = block_max(zb, len);
    bmax[b] = bm;
    float bs = 0.0f;
    if (bm != neg_inf<float>()) {
#if defined(__AVX512F__)
      bs = block_exp_sum(zb, len, bm, ob);
#else
      prefetch_next(zb, len);
#pragma omp simd reduction(+ : bs)
      for (int64_t i = 0; i < len; ++i) {
        const float e = exp_nonpos(zb[i] - bm);
        ob[i] = e;
        bs += e;
      }
#endif
    } else {
      for (int64_t i = 0; i < len; ++i) ob[i] = 0.0f;
      if (has_nan(zb, len)) bs = NAN;
    }
    if (bs != bs) return MaxSum<float>{NAN, NAN};
    st = merge(st, MaxSum<float>{bm, bs});
  }
  return st;
}

/// out_c = out_c * exp(m_b - k) * mul - off, per block b (see row_max_sum_store).
inline void row_rescale(float* out, int64_t n, const float* bmax, float k, float mul, float off) {
  for (int64_t c0 = 0, b = 0; c0 < n; c0 += kBlock, ++b) {
    const int64_t len = n - c0 < kBlock ? n - c0 : kBlock;
    const float f = bmax[b] == neg_inf<float>() ? 0.0f : exp_nonpos(bmax[b] - k) * mul;
    float* ob = out + c0;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) ob[i] = ob[i] * f - off;
  }
}

inline int64_t num_blocks(int64_t n) { return (n + kBlock - 1) / kBlock; }

template <class A>
A row_sum(const A* v, int64_t n) {
  A s = A(0);
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += v[i];
  return s;
}

template <class A>
A row_dot(const A* a, const A* b, int64_t n) {
  A s = A(0);
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

/// sum_i w_i (v_i - m) (w = nullptr: all ones): the smoothing term's sum, taken after the max
/// is known. sum w v - m sum w cancels catastrophically at large logits (1e6: 1% off).
template <class A>
A row_sum_shifted(const A* v, const A* w, int64_t n, A m) {
  A s = A(0);
  if (w) {
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; ++i) s += w[i] * (v[i] - m);
  } else {
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; ++i) s += v[i] - m;
  }
  return s;
}

template <class T>
size_t acc_bytes() {
  return sizeof(typename acc_type<T>::type);
}

// ----------------------------------------------------------------------------------------
// cast
// ----------------------------------------------------------------------------------------
template <class S, class D>
void cast_loop(const S* s, D* d, int64_t n) {
#pragma omp parallel for schedule(static) if (n > kChunk)
  for (int64_t i = 0; i < n; ++i) d[i] = (D)s[i];
}

bool is_float_dt(int32_t dt) {
  return dt == TRAINRT_F32 || dt == TRAINRT_F64 || dt == TRAINRT_F16 || dt == TRAINRT_BF16;
}

// ----------------------------------------------------------------------------------------
// softmax
// ----------------------------------------------------------------------------------------
/// One f32 row of softmax / log_softmax into out (one exponential per element; see
/// row_max_sum_store). bmax: scratch for the block maxima.
void softmax_row_f32(const float* z, int64_t C, float* out, float* bmax, bool log) {
  if (log) {  // (z - max) - log(sum): an f32 lse = max + log(sum) would round at large max
    const MaxSum<float> st = row_max_sum(z, C);
    const float m = st.m, ls = log_acc(st.s);
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) out[c] = (z[c] - m) - ls;
    return;
  }
  const MaxSum<float> st = row_max_sum_store(z, C, out, bmax);
  if (!(st.s > 0.0f)) {  // a NaN in the row, or a row of all -inf
    for (int64_t c = 0; c < C; ++c) out[c] = NAN;
    return;
  }
  row_rescale(out, C, bmax, st.m, 1.0f / st.s, 0.0f);
}

template <class T>
void softmax_fwd(const trainrt_softmax_args* a) {
  using A = typename acc_type<T>::type;
  const T* x = (const T*)a->x;
  T* y = (T*)a->out;
  const int64_t R = a->rows, C = a->cols;
  const bool log = a->log != 0;
  if constexpr (sizeof(A) == sizeof(float)) {
    // f16 / bf16: the row widened to f32, the f32 row path into a scratch row, one rounding
    // pass out.
#pragma omp parallel if (R * C > kParallelMin)
    {
      float* buf = (float*)malloc((size_t)(C > 0 ? 2 * C : 1) * sizeof(float));
      float* bmax = (float*)malloc((size_t)(num_blocks(C) + 1) * sizeof(float));
#pragma omp for schedule(static)
      for (int64_t r = 0; r < R; ++r) {
        const T* xr = x + r * C;
        T* yr = y + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) buf[c] = load<float>(xr, c);
        prefetch_next(xr, C);  // the next row's reads overlap this row's arithmetic
        softmax_row_f32(buf, C, buf + C, bmax, log);
        const float* e = buf + C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) store<float>(yr, c, e[c]);
      }
      free(bmax);
      free(buf);
    }
    return;
  }
#pragma omp parallel if (R * C > kParallelMin)
  {
    A* buf = (A*)malloc((size_t)(C > 0 ? C : 1) * sizeof(A));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; ++r) {
      const A* z = row_as_acc<T, A>(x + r * C, C, buf);
      const MaxSum<A> st = row_max_sum(z, C);
      T* yr = y + r * C;
      if (log) {  // (z - max) - log(sum): an f32 lse = max + log(sum) would round at large max
        const A m = st.m, ls = log_acc(st.s);
        for (int64_t c = 0; c < C; ++c) store<A>(yr, c, (z[c] - m) - ls);
      } else {
        const A inv = A(1) / st.s;
        const A m = st.m;
        for (int64_t c = 0; c < C; ++c) store<A>(yr, c, exp_nonpos(z[c] - m) * inv);
      }
    }
    free(buf);
  }
}

template <>
void softmax_fwd<float>(const trainrt_softmax_args* a) {
  const float* x = (const float*)a->x;
  float* y = (float*)a->out;
  const int64_t R = a->rows, C = a->cols;
  const bool log = a->log != 0;
#pragma omp parallel if (R * C > kParallelMin)
  {
    float* bmax = (float*)malloc((size_t)(num_blocks(C) + 1) * sizeof(float));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; ++r) softmax_row_f32(x + r * C, C, y + r * C, bmax, log);
    free(bmax);
  }
}

template <class T>
void softmax_bwd(const trainrt_softmax_args* a) {
  using A = typename acc_type<T>::type;
  const T* y = (const T*)a->y;
  const T* dy = (const T*)a->dy;
  T* dx = (T*)a->out;
  const int64_t R = a->rows, C = a->cols;
  const bool log = a->log != 0;
#pragma omp parallel if (R * C > kParallelMin)
  {
    A* buf = (A*)malloc((size_t)(C > 0 ? 2 * C : 1) * sizeof(A));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; ++r) {
      const A* yr = row_as_acc<T, A>(y + r * C, C, buf);
      const A* dyr = row_as_acc<T, A>(dy + r * C, C, buf + C);
      T* dxr = dx + r * C;
      if (log) {
        const A s = row_sum(dyr, C);
        for (int64_t c = 0; c < C; ++c) store<A>(dxr, c, dyr[c] - exp_nonpos(yr[c]) * s);
      } else {
        const A s = row_dot(yr, dyr, C);
        for (int64_t c = 0; c < C; ++c) store<A>(dxr, c, yr[c] * (dyr[c] - s));
      }
    }
    free(buf);
  }
}

// ----------------------------------------------------------------------------------------
// cross-entropy family
// ----------------------------------------------------------------------------------------
template <class A>
struct CeShared {
  int64_t C;
  const A* w;  // nullptr: all ones
  A W;         // sum of weights (C without weights)
  A eps, zl, softcap;
  A coef;  // upstream scale / denominator
  int64_t ignore_index;
  float* bmax;  // per-thread scratch: block maxima of one row
  float* ebuf;  // per-thread scratch: the f32 gradient row of f16/bf16 inputs (or nullptr)
};

template <class TI>
int64_t target_at(const void* t, int64_t n) {
  return (int64_t)((const TI*)t)[n];
}

/// Index targets: validates and sums the denominator (sum of w[y] over counted rows) in row
/// order; returns false with *err for the first out-of-range target.
template <class A>
bool ce_scan_targets(const trainrt_cross_entropy_args* a, const A* w, double* denom,
                     DataError* err) {
  double d = 0.0;
  for (int64_t n = 0; n < a->rows; ++n) {
    const int64_t y = a->target_dtype == TRAINRT_I64 ? target_at<int64_t>(a->target, n)
                                                     : target_at<int32_t>(a->target, n);
    if (y == a->ignore_index) continue;
    if (y < 0 || y >= a->cols) {
      err->code = kDataErrTargetRange;
      err->op = a->input_is_logp ? kOpNllLoss : kOpCrossEntropy;
      err->index = n;
      err->limit = a->cols;
      err->target = y;
      return false;
    }
    d += w ? (double)w[y] : 1.0;
  }
  *denom = d;
  return true;
}

/// Loss of a class-index row from the max / sum state rather than from lse = max + log(sum):
/// with large logits an f32 lse is off by up to half an ulp of |max| (2.4e-4 at 1e4), an
/// error every log-probability and the loss would inherit. SEMANTICS: logp = (z - max) -
/// log sum exp(z - max), as PyTorch. shifted_sum: sum_c w_c (z_c - max) (only used with
/// smoothing; row_sum_shifted).
template <class A>
A ce_index_loss_ms(MaxSum<A> st, A z_y, A w_y, A shifted_sum, A W, A eps, A C, A zl) {
  const A ls = log_acc(st.s);
  A l = ce_index_row_loss(ls, z_y - st.m, w_y, eps != A(0) ? shifted_sum : A(0), W, eps, C, A(0));
  if (zl != A(0)) {
    const A lse = st.m + ls;
    l += zl * lse * lse;
  }
  return l;
}

/// One row with a class-index target. z: the (soft-capped) scores as A; x_row: the raw
/// input (for the soft-cap derivative); g: gradient row or nullptr.
float ce_index_row_fast(const CeShared<float>& s, const float* z, int64_t y, float* e);

template <class T, class A>
A ce_index_row(const CeShared<A>& s, const A* z, int64_t y, T* g) {
  const int64_t C = s.C;
  if constexpr (sizeof(A) == sizeof(float)) {
    // f16 / bf16 without weights or soft-capping: the f32 hot path into a scratch row, then
    // one rounding pass (one exponential per element, as f32).
    if (g && s.ebuf && s.w == nullptr && s.softcap == A(0)) {
      const float loss = ce_index_row_fast(s, z, y, s.ebuf);
      const float* e = s.ebuf;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) store<float>(g, c, e[c]);
      return loss;
    }
  }
  const MaxSum<A> st = row_max_sum(z, C);
  const A lse = lse_of(st);
  const A w_y = s.w ? s.w[y] : A(1);
  const A sum_wz = s.eps != A(0) ? row_sum_shifted(z, s.w, C, st.m) : A(0);
  const A loss = ce_index_loss_ms(st, z[y], w_y, sum_wz, s.W, s.eps, (A)C, s.zl);
  if (g) {
    const CeIndexRow<A> r = ce_index_row_grad(lse, w_y, s.W, s.eps, (A)C, s.zl);
    const A coef = s.coef;
    const A m = st.m, inv_s = A(1) / st.s;  // p_c = exp(z_c - max) / sum
    if (s.w == nullptr && s.softcap == A(0)) {
      const A cp = r.coef_p * coef * inv_s, off = r.eps_over_c * coef;
      for (int64_t c = 0; c < C; ++c) store<A>(g, c, exp_nonpos(z[c] - m) * cp - off);
    } else {
      for (int64_t c = 0; c < C; ++c) {
        A gc = ce_index_grad(r, exp_nonpos(z[c] - m) * inv_s, s.w ? s.w[c] : A(1), false) * coef;
        if (s.softcap != A(0)) gc *= softcap_dzdx(z[c], s.softcap);
        store<A>(g, c, gc);
      }
    }
    A gy = ce_index_grad(r, exp_nonpos(z[y] - m) * inv_s, w_y, true) * coef;
    if (s.softcap != A(0)) gy *= softcap_dzdx(z[y], s.softcap);
    store<A>(g, y, gy);
  }
  return loss;
}

/// f32 scores without soft-capping or weights, the hot path, fully vectorised: the loss, and
/// the f32 gradient written to e (the gradient row itself for f32, else a scratch row) when
/// e != nullptr.
float ce_index_row_fast(const CeShared<float>& s, const float* z, int64_t y, float* e) {
  const int64_t C = s.C;
  if (!e) {
    const MaxSum<float> st = row_max_sum(z, C);
    const float sum_z = s.eps != 0.0f ? row_sum_shifted(z, (const float*)nullptr, C, st.m) : 0.0f;
    return ce_index_loss_ms(st, z[y], 1.0f, sum_z, s.W, s.eps, (float)C, s.zl);
  }
  // e holds exp(z - block max) after the first pass; one rescale pass finishes it.
  const MaxSum<float> st = row_max_sum_store(z, C, e, s.bmax);
  const float sum_z = s.eps != 0.0f ? row_sum_shifted(z, (const float*)nullptr, C, st.m) : 0.0f;
  const float lse = lse_of(st);
  const float loss = ce_index_loss_ms(st, z[y], 1.0f, sum_z, s.W, s.eps, (float)C, s.zl);
  const CeIndexRow<float> r = ce_index_row_grad(lse, 1.0f, s.W, s.eps, (float)C, s.zl);
  if (!(st.s > 0.0f)) {  // a NaN in the row, or a row of all -inf
    for (int64_t c = 0; c < C; ++c) e[c] = NAN;
    return loss;
  }
  // p_c = exp(z_c - max) / sum (not exp(z_c - lse): see ce_index_loss_ms)
  row_rescale(e, C, s.bmax, st.m, r.coef_p * s.coef / st.s, r.eps_over_c * s.coef);
  e[y] -= r.target_w * s.coef;
  return loss;
}

/// f32 row without soft-capping or weights: the hot path, fully vectorised.
template <>
float ce_index_row<float, float>(const CeShared<float>& s, const float* z, int64_t y, float* g) {
  if (s.w != nullptr || s.softcap != 0.0f) {
    // general path
    const int64_t C = s.C;
    const MaxSum<float> st = row_max_sum(z, C);
    const float lse = lse_of(st);
    const float w_y = s.w ? s.w[y] : 1.0f;
    const float sum_wz = s.eps != 0.0f ? row_sum_shifted(z, s.w, C, st.m) : 0.0f;
    const float loss = ce_index_loss_ms(st, z[y], w_y, sum_wz, s.W, s.eps, (float)C, s.zl);
    if (g) {
      const CeIndexRow<float> r = ce_index_row_grad(lse, w_y, s.W, s.eps, (float)C, s.zl);
      const float m = st.m, inv_s = 1.0f / st.s;
      for (int64_t c = 0; c < C; ++c) {
        const float p = exp_nonpos(z[c] - m) * inv_s;
        float gc = ce_index_grad(r, p, s.w ? s.w[c] : 1.0f, c == y) * s.coef;
        if (s.softcap != 0.0f) gc *= softcap_dzdx(z[c], s.softcap);
        g[c] = gc;
      }
    }
    return loss;
  }
  return ce_index_row_fast(s, z, y, g);
}

template <class T, class A>
A ce_prob_row(const CeShared<A>& s, const A* z, const A* t, A* wt, T* g) {
  const int64_t C = s.C;
  const MaxSum<A> st = row_max_sum(z, C);
  const A lse = lse_of(st);
  // wt_c = w_c * smoothed t_c
  for (int64_t c = 0; c < C; ++c)
    wt[c] = (s.w ? s.w[c] : A(1)) * ce_smoothed_target(t[c], s.eps, (A)C);
  const A T_sum = row_sum(wt, C);
  // T (lse - ...) from max and log(sum), as ce_index_loss_ms: sum_c wt_c (z_c - max)
  const A m = st.m, ls = log_acc(st.s), inv_s = A(1) / st.s;
  A sum_wtz = A(0);
#pragma omp simd reduction(+ : sum_wtz)
  for (int64_t c = 0; c < C; ++c) sum_wtz += wt[c] * (z[c] - m);
  A loss = ce_prob_row_loss(ls, T_sum, sum_wtz, A(0));
  if (s.zl != A(0)) loss += s.zl * lse * lse;
  if (g) {
    for (int64_t c = 0; c < C; ++c) {
      A gc = ce_prob_grad(exp_nonpos(z[c] - m) * inv_s, T_sum, wt[c], s.zl, lse) * s.coef;
      if (s.softcap != A(0)) gc *= softcap_dzdx(z[c], s.softcap);
      store<A>(g, c, gc);
    }
  }
  return loss;
}

template <class T>
int cross_entropy_t(const trainrt_cross_entropy_args* a, DataError* err) {
  using A = typename acc_type<T>::type;
  const int64_t N = a->rows, C = a->cols;
  const A* w = (const A*)a->weight;
  const bool index = !a->prob_targets;
  double denom = (double)N;
  if (index && !ce_scan_targets<A>(a, w, &denom, err)) return 1;

  CeShared<A> s;
  s.bmax = nullptr;
  s.ebuf = nullptr;
  s.C = C;
  s.w = w;
  s.W = w ? row_sum(w, C) : (A)C;
  s.eps = (A)a->label_smoothing;
  s.zl = (A)a->z_loss;
  s.softcap = (A)a->softcap;
  s.ignore_index = a->ignore_index;
  const double scale = (double)upstream_scale<A>(a->grad_scale, a->grad_scale_ptr);
  // mean over a zero denominator: every row ignored (the loss 0/0 = NaN, the gradient 0: its
  // rows are all zeroed), or counted rows whose class weights are all 0, where PyTorch's 0/0
  // makes the loss and those rows' gradients NaN, with or without smoothing.
  const bool mean = a->reduction == TRAINRT_RED_MEAN;
  s.coef = (A)(!mean ? scale : denom == 0.0 ? NAN : scale / denom);

  const T* x = (const T*)a->logits;
  T* grad = (T*)a->grad;
  A* row_loss = (A*)malloc((size_t)(N > 0 ? N : 1) * sizeof(A));
  const bool need_z_buf = !(sizeof(T) == sizeof(A) && s.softcap == A(0));
  // For f32/f64 without soft-capping the row is used in place; otherwise converted.
#pragma omp parallel if (N * C > kParallelMin)
  {
    // Scratch rows only where needed (a converted row, probability targets).
    A* zbuf = (need_z_buf || !index) && !a->input_is_logp
                  ? (A*)malloc((size_t)(C > 0 ? 3 * C : 1) * sizeof(A))
                  : nullptr;
    float* bmax = (float*)malloc((size_t)(num_blocks(C) + 1) * sizeof(float));
    CeShared<A> ts = s;  // per-thread copy holding this thread's scratch
    ts.bmax = bmax;
    // f16 / bf16 index targets: the f32 gradient row, rounded into grad at the end.
    if (sizeof(T) < sizeof(float) && index && grad != nullptr && !a->input_is_logp)
      ts.ebuf = (float*)malloc((size_t)(C > 0 ? C : 1) * sizeof(float));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const T* xr = x + n * C;
      T* gr = grad ? grad + n * C : nullptr;
      if (a->input_is_logp) {  // nll_loss
        const int64_t y = a->target_dtype == TRAINRT_I64 ? target_at<int64_t>(a->target, n)
                                                         : target_at<int32_t>(a->target, n);
        if (gr) memset(gr, 0, (size_t)C * sizeof(T));
        if (y == s.ignore_index) {
          row_loss[n] = A(0);
          continue;
        }
        const A w_y = w ? w[y] : A(1);
        row_loss[n] = -w_y * load<A>(xr, y);
        if (gr) store<A>(gr, y, -w_y * s.coef);
        continue;
      }
      const A* z;
      if (need_z_buf) {
        for (int64_t c = 0; c < C; ++c) {
          const A v = load<A>(xr, c);
          zbuf[c] = s.softcap != A(0) ? softcap_apply(v, s.softcap) : v;
        }
        prefetch_next(xr, C);  // the next row's reads overlap this row's arithmetic
        z = zbuf;
      } else {
        z = (const A*)(const void*)xr;
      }
      if (index) {
        const int64_t y = a->target_dtype == TRAINRT_I64 ? target_at<int64_t>(a->target, n)
                                                         : target_at<int32_t>(a->target, n);
        if (y == s.ignore_index) {
          row_loss[n] = A(0);
          if (gr) memset(gr, 0, (size_t)C * sizeof(T));
          continue;
        }
        row_loss[n] = ce_index_row<T, A>(ts, z, y, gr);
      } else {
        const T* tr = (const T*)a->target + n * C;
        const A* t = row_as_acc<T, A>(tr, C, zbuf + C);
        row_loss[n] = ce_prob_row<T, A>(s, z, t, zbuf + 2 * C, gr);
      }
    }
    free(ts.ebuf);
    free(zbuf);
    free(bmax);
  }

  T* loss = (T*)a->loss;
  if (a->reduction == TRAINRT_RED_NONE) {
    for (int64_t n = 0; n < N; ++n) store<A>(loss, n, row_loss[n]);
  } else {
    double total = 0.0;
    for (int64_t n = 0; n < N; ++n) total += (double)row_loss[n];
    if (mean) total = denom == 0.0 ? NAN : total / denom;
    store<double>(loss, 0, total);
  }
  free(row_loss);
  return 0;
}

// ----------------------------------------------------------------------------------------
// element-wise losses
// ----------------------------------------------------------------------------------------
template <class Op, class T>
int pointwise_t(const trainrt_pointwise_loss_args* a, DataError* err) {
  using A = typename acc_type<T>::type;
  const int64_t n = a->numel;
  const int64_t inner = a->inner > 0 ? a->inner : 1;
  const T* x = (const T*)a->input;
  const T* y = (const T*)a->target;
  const A* w = (const A*)a->weight;
  const bool w_full = w && a->weight_numel == n;
  const A* pw = (const A*)a->pos_weight;
  T* grad = (T*)a->grad;
  T* loss = (T*)a->loss;
  const bool none = a->reduction == TRAINRT_RED_NONE;
  const bool check_prob = a->kind == TRAINRT_LOSS_BCE;
  PointwiseParams<A> p;
  p.param = (A)a->param;
  p.alpha = (A)a->alpha;
  p.log_target = a->log_target;
  const double scale = (double)upstream_scale<A>(a->grad_scale, a->grad_scale_ptr);
  // Op::kGradFactor (MSE's 2) goes into the coefficient, as PyTorch's 2 / numel: 2 (x - y)
  // first overflows f32 at |x - y| > 1.7e38.
  const A coef =
      (A)((none || a->reduction == TRAINRT_RED_SUM ? scale : scale / a->divisor) * Op::kGradFactor);

  const int64_t nchunks = (n + kChunk - 1) / kChunk;
  double* partial = (double*)malloc((size_t)(nchunks > 0 ? nchunks : 1) * sizeof(double));
  int64_t* bad = (int64_t*)malloc((size_t)(nchunks > 0 ? nchunks : 1) * sizeof(int64_t));
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t ch = 0; ch < nchunks; ++ch) {
    const int64_t b = ch * kChunk;
    const int64_t e = b + kChunk < n ? b + kChunk : n;
    // Blocks of kSub: the losses into a small buffer (a vectorisable loop), then summed in
    // double (an f32 running sum of 16K terms lost 1.5e-4 of 16384 x 0.1, where PyTorch sums
    // pairwise). The order is fixed per chunk: the bits do not depend on the thread count.
    constexpr int64_t kSub = 512;
    A lbuf[kSub];
    double acc = 0.0;
    int64_t first_bad = -1;
    for (int64_t b0 = b; b0 < e; b0 += kSub) {
      const int64_t len = e - b0 < kSub ? e - b0 : kSub;
      if (check_prob && first_bad < 0) {
        for (int64_t j = 0; j < len; ++j) {
          if (!bce_input_ok(load<A>(x, b0 + j))) {
            first_bad = b0 + j;
            break;
          }
        }
      }
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) {
        const int64_t i = b0 + j;
        const A xi = load<A>(x, i);
        const A yi = load<A>(y, i);
        const A pwi = pw ? pw[i % inner] : A(1);
        A l, g;
        Op::template eval<A>(xi, yi, pwi, p, l, g);
        if (w) {
          const A wi = w_full ? w[i] : w[i % inner];
          l *= wi;
          g *= wi;
        }
        lbuf[j] = l;
        if (grad) store<A>(grad, i, g * coef);
      }
      if (none) {
        for (int64_t j = 0; j < len; ++j) store<A>(loss, b0 + j, lbuf[j]);
      } else {
        double sb = 0.0;
#pragma omp simd reduction(+ : sb)
        for (int64_t j = 0; j < len; ++j) sb += (double)lbuf[j];
        acc += sb;
      }
    }
    partial[ch] = acc;
    bad[ch] = first_bad;
  }
  int rc = 0;
  for (int64_t ch = 0; ch < nchunks; ++ch) {
    if (bad[ch] >= 0) {
      err->code = kDataErrProbRange;
      err->op = kOpBce;
      err->index = bad[ch];
      err->limit = 0;
      err->value = (double)load<A>(x, bad[ch]);
      rc = 1;
      break;
    }
  }
  if (rc == 0 && !none) {
    double total = 0.0;
    for (int64_t ch = 0; ch < nchunks; ++ch) total += partial[ch];
    if (a->reduction != TRAINRT_RED_SUM) total /= a->divisor;
    store<double>(loss, 0, total);
  }
  free(partial);
  free(bad);
  return rc;
}

template <class T>
int pointwise_dispatch(const trainrt_pointwise_loss_args* a, DataError* err) {
  switch (a->kind) {
    case TRAINRT_LOSS_MSE: return pointwise_t<MseOp, T>(a, err);
    case TRAINRT_LOSS_L1: return pointwise_t<L1Op, T>(a, err);
    case TRAINRT_LOSS_SMOOTH_L1: return pointwise_t<SmoothL1Op, T>(a, err);
    case TRAINRT_LOSS_HUBER: return pointwise_t<HuberOp, T>(a, err);
    case TRAINRT_LOSS_BCE: return pointwise_t<BceOp, T>(a, err);
    case TRAINRT_LOSS_BCE_LOGITS: return pointwise_t<BceLogitsOp, T>(a, err);
    case TRAINRT_LOSS_FOCAL: return pointwise_t<FocalOp, T>(a, err);
    case TRAINRT_LOSS_KL_DIV: return pointwise_t<KlDivOp, T>(a, err);
  }
  return 0;
}

}  // namespace

int cpu_cast(const void* src, int32_t sdt, void* dst, int32_t ddt, int64_t n) {
  if (sdt == ddt) {
    memcpy(dst, src,
           (size_t)n * (sdt == TRAINRT_F64 || sdt == TRAINRT_I64   ? 8
                        : sdt == TRAINRT_F32 || sdt == TRAINRT_I32 ? 4
                        : sdt == TRAINRT_U8                        ? 1
                                                                   : 2));
    return 0;
  }
  if (sdt == TRAINRT_F32 && ddt == TRAINRT_F64) {
    cast_loop((const float*)src, (double*)dst, n);
    return 0;
  }
  if (sdt == TRAINRT_F64 && ddt == TRAINRT_F32) {
    cast_loop((const double*)src, (float*)dst, n);
    return 0;
  }
  if (is_float_dt(sdt) && is_float_dt(ddt) && sdt != TRAINRT_F64 && ddt != TRAINRT_F64) {
    // 16-bit <-> f32 through float: exact widening, one rounding when narrowing
#pragma omp parallel for schedule(static) if (n > kChunk)
    for (int64_t i = 0; i < n; ++i) {
      float v;
      switch (sdt) {
        case TRAINRT_F16: v = f16_bits_to_float(((const f16_t*)src)[i].bits); break;
        case TRAINRT_BF16: v = bf16_bits_to_float(((const bf16_t*)src)[i].bits); break;
        default: v = ((const float*)src)[i]; break;
      }
      switch (ddt) {
        case TRAINRT_F16: ((f16_t*)dst)[i].bits = float_to_f16_bits(v); break;
        case TRAINRT_BF16: ((bf16_t*)dst)[i].bits = float_to_bf16_bits(v); break;
        default: ((float*)dst)[i] = v; break;
      }
    }
    return 0;
  }
  // f64 <-> 16-bit, or an integer dtype on either side: kernels/common/cast.h (modular
  // between integers, saturating float -> int), the same code as the CUDA backend's.
#pragma omp parallel for schedule(static) if (n > kChunk)
  for (int64_t i = 0; i < n; ++i) cast_element(src, sdt, dst, ddt, i);
  return 0;
}

int cpu_softmax_forward(const trainrt_softmax_args* a) {
  dispatch_float(a->dtype, [&](auto tag) { softmax_fwd<typename decltype(tag)::type>(a); });
  return 0;
}

int cpu_softmax_backward(const trainrt_softmax_args* a) {
  dispatch_float(a->dtype, [&](auto tag) { softmax_bwd<typename decltype(tag)::type>(a); });
  return 0;
}

int cpu_cross_entropy(const trainrt_cross_entropy_args* a, DataError* err) {
  int rc = 0;
  dispatch_float(a->dtype,
                 [&](auto tag) { rc = cross_entropy_t<typename decltype(tag)::type>(a, err); });
  return rc;
}

int cpu_pointwise_loss(const trainrt_pointwise_loss_args* a, DataError* err) {
  int rc = 0;
  dispatch_float(a->dtype,
                 [&](auto tag) { rc = pointwise_dispatch<typename decltype(tag)::type>(a, err); });
  return rc;
}

}  // namespace TRAINRT_KNS
}  // namespace trainrt
