// Element-wise math of the layers (activations, dropout mask), written once for the CPU and
// CUDA kernels. Philox4x32-10 here is Random123's philox4x32 (same rounds and constants;
// tests/test_nn.cpp checks it against <Random123/philox.h>), restated without C++ library
// types so the per-ISA CPU kernel builds can use it.
#pragma once

#include <math.h>
#include <stdint.h>

#include "hd.h"

namespace trainrt {
namespace TRAINRT_KNS {

struct philox4 {
  uint32_t v[4];
};

TRAINRT_HD philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                 uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    if (r > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const uint64_t p0 = (uint64_t)0xD2511F53u * c0;
    const uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
    const uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    const uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  philox4 out;
  out.v[0] = c0;
  out.v[1] = c1;
  out.v[2] = c2;
  out.v[3] = c3;
  return out;
}

/// The four dropout words of group g (elements 4g .. 4g+3) for (seed, offset).
TRAINRT_HD philox4 dropout_words(uint64_t seed, uint64_t offset, uint64_t g) {
  return philox4x32_10((uint32_t)g, (uint32_t)(g >> 32), (uint32_t)offset, (uint32_t)(offset >> 32),
                       (uint32_t)seed, (uint32_t)(seed >> 32));
}

/// Element kept when its uniform u = (w >> 8) * 2^-24 in [0, 1) is not below p.
TRAINRT_HD bool dropout_keep(uint32_t w, float p) {
  return (float)(w >> 8) * (1.0f / 16777216.0f) >= p;
}

/// v times the mask value, 0 or 1/(1-p), as PyTorch multiplies: a dropped inf or NaN is NaN
/// (inf * 0), not 0, so an overflow is not hidden by where the mask fell.
template <class A>
TRAINRT_HD A dropout_apply(A v, bool keep, A scale) {
  return v * (keep ? scale : A(0));
}

TRAINRT_HD float erf_acc(float x) { return erff(x); }
TRAINRT_HD double erf_acc(double x) { return erf(x); }
TRAINRT_HD float nn_exp(float x) { return expf(x); }
TRAINRT_HD double nn_exp(double x) { return exp(x); }
TRAINRT_HD float nn_tanh(float x) { return tanhf(x); }
TRAINRT_HD double nn_tanh(double x) { return tanh(x); }

template <class A>
TRAINRT_HD A relu_fwd(A x) {
  return x > A(0) ? x : (x != x ? x : A(0));  // NaN propagates, as torch.relu
}
/// PyTorch's threshold_backward: 0 where relu(x) <= 0, else dy; so a NaN x passes dy.
template <class A>
TRAINRT_HD A relu_bwd(A x, A dy) {
  return x <= A(0) ? A(0) : dy;
}

// GELU, erf form (PyTorch's default approximate='none'): x * 0.5 * (1 + erf(x / sqrt 2)).
template <class A>
TRAINRT_HD A gelu_fwd(A x) {
  return x * A(0.5) * (A(1) + erf_acc(x * A(0.70710678118654752440)));
}
template <class A>
TRAINRT_HD A gelu_bwd(A x, A dy) {
  const A cdf = A(0.5) * (A(1) + erf_acc(x * A(0.70710678118654752440)));
  const A pdf = nn_exp(A(-0.5) * x * x) * A(0.39894228040143267794);
  return dy * (cdf + x * pdf);
}

template <class A>
TRAINRT_HD A tanh_fwd(A x) {
  return nn_tanh(x);
}
template <class A>
TRAINRT_HD A tanh_bwd(A y, A dy) {
  return dy * (A(1) - y * y);
}

template <class A>
TRAINRT_HD A sigmoid_fwd(A x) {
  return A(1) / (A(1) + nn_exp(-x));
}
template <class A>
TRAINRT_HD A sigmoid_bwd(A y, A dy) {
  return dy * y * (A(1) - y);
}

}  // namespace TRAINRT_KNS
}  // namespace trainrt
