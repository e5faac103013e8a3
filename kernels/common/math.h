// Scalar math shared by the backends. exp_nonpos is the hot exponential of the softmax
// family: its argument is x - max <= 0 (or NaN). On the host it is a branch-free Cephes-style
// polynomial (within 2 ulp of expf) so that `#pragma omp simd` loops vectorise it; libm's
// expf would be a scalar call. On the GPU it is expf.
#pragma once

#include <math.h>
#include <stdint.h>

#include "half.h"
#include "hd.h"

namespace trainrt {
namespace TRAINRT_KNS {

TRAINRT_HD float exp_nonpos(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  const float xc = x < -87.0f ? -87.0f : x;
  // n = round(x / ln2) by the 1.5 * 2^23 trick (vectorises without SSE4.1 round): t holds n
  // in its low mantissa bits (its ulp is 1), so float_bits(t) - 0x4B400000 is n as an integer.
  const float t = xc * 1.44269504088896341f + 12582912.0f;
  const float n = t - 12582912.0f;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  // 2^n from t's bits, in unsigned arithmetic: no float -> int conversion, which would be
  // undefined behaviour for NaN x (y is NaN then, and so is the result, whatever the scale).
  const float scale = bits_float((float_bits(t) - 0x4B400000u + 127u) << 23);
  const float res = y * scale;
  return x < -87.0f ? 0.0f : res;
#endif
}

TRAINRT_HD double exp_nonpos(double x) { return exp(x); }

TRAINRT_HD float log_acc(float x) { return logf(x); }
TRAINRT_HD double log_acc(double x) { return log(x); }
TRAINRT_HD float log1p_acc(float x) { return log1pf(x); }
TRAINRT_HD double log1p_acc(double x) { return log1p(x); }
TRAINRT_HD float exp_acc(float x) { return expf(x); }
TRAINRT_HD double exp_acc(double x) { return exp(x); }
TRAINRT_HD float tanh_acc(float x) { return tanhf(x); }
TRAINRT_HD double tanh_acc(double x) { return tanh(x); }
TRAINRT_HD float pow_acc(float x, float y) { return powf(x, y); }
TRAINRT_HD double pow_acc(double x, double y) { return pow(x, y); }
TRAINRT_HD float abs_acc(float x) { return fabsf(x); }
TRAINRT_HD double abs_acc(double x) { return fabs(x); }

template <class A>
TRAINRT_HD A max_acc(A a, A b) {
  return a > b ? a : b;
}
template <class A>
TRAINRT_HD A min_acc(A a, A b) {
  return a < b ? a : b;
}
/// +1, -1, 0 at 0; NaN propagates.
template <class A>
TRAINRT_HD A sign_acc(A d) {
  return d > A(0) ? A(1) : (d < A(0) ? A(-1) : d * A(0));
}
template <class A>
TRAINRT_HD A neg_inf() {
  return -(A)INFINITY;
}

/// Online softmax state: running max m and sum s of exp(x - m).
template <class A>
struct MaxSum {
  A m;
  A s;
};

/// Merges two partial states; exact for either side empty (m = -inf, s = 0).
template <class A>
TRAINRT_HD MaxSum<A> merge(MaxSum<A> a, MaxSum<A> b) {
  const A m = max_acc(a.m, b.m);
  if (m == neg_inf<A>()) return MaxSum<A>{m, a.s + b.s};
  const A sa = a.s == A(0) ? A(0) : a.s * exp_nonpos(a.m - m);
  const A sb = b.s == A(0) ? A(0) : b.s * exp_nonpos(b.m - m);
  return MaxSum<A>{m, sa + sb};
}

/// logsumexp from the state; -inf max (all -inf row) gives -inf, NaN max gives NaN.
template <class A>
TRAINRT_HD A lse_of(MaxSum<A> st) {
  return st.m + log_acc(st.s);
}

/// Logit soft-capping x -> c * tanh(x / c) and its derivative written in terms of z.
template <class A>
TRAINRT_HD A softcap_apply(A x, A c) {
  return c * tanh_acc(x / c);
}
template <class A>
TRAINRT_HD A softcap_dzdx(A z, A c) {
  const A t = z / c;
  return A(1) - t * t;
}

/// Numerically stable sigmoid.
template <class A>
TRAINRT_HD A sigmoid_acc(A x) {
  const A e = exp_nonpos(-abs_acc(x));
  return x >= A(0) ? A(1) / (A(1) + e) : e / (A(1) + e);
}

}  // namespace TRAINRT_KNS
}  // namespace trainrt
