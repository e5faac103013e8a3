// f16 / bf16 <-> f32 conversions by bit manipulation, round to nearest even, identical on
// the CPU and the GPU (both backends run this code). NaN stays NaN (quieted), infinities and
// signed zeros are kept, f16 subnormals are exact.
#pragma once

#include <stdint.h>
#include <string.h>

#include "hd.h"

namespace trainrt {
namespace TRAINRT_KNS {

struct f16_t {
  uint16_t bits;
};
struct bf16_t {
  uint16_t bits;
};

TRAINRT_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
#endif
}

TRAINRT_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  memcpy(&f, &u, 4);
  return f;
#endif
}

TRAINRT_HD float f16_bits_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu;
  const uint32_t m = h & 0x3ffu;
  if (e == 0) {
    // zero or subnormal: m * 2^-24, exact in f32
    const float v = (float)m * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  if (e == 31) return bits_float(sign | 0x7f800000u | (m << 13));
  return bits_float(sign | ((e + 112u) << 23) | (m << 13));
}

TRAINRT_HD uint16_t float_to_f16_bits(float f) {
  uint32_t x = float_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) {  // inf or NaN
    return (uint16_t)(sign | 0x7c00u | (x > 0x7f800000u ? (0x200u | ((x >> 13) & 0x3ffu)) : 0u));
  }
  if (x >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds to inf
  if (x < 0x38800000u) {                                    // f16 subnormal or zero
    if (x < 0x33000000u) return (uint16_t)sign;             // below half the smallest subnormal
    const uint32_t e = x >> 23;
    const uint32_t m = (x & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;  // 14..24
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return (uint16_t)(sign | r);
  }
  uint32_t base = (x - 0x38000000u) >> 13;
  const uint32_t rem = x & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (base & 1u))) ++base;
  return (uint16_t)(sign | base);
}

TRAINRT_HD float bf16_bits_to_float(uint16_t b) { return bits_float((uint32_t)b << 16); }

TRAINRT_HD uint16_t float_to_bf16_bits(float f) {
  const uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);  // quiet NaN
  return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// Loading and storing element types through their accumulation type.
template <class T>
struct acc_type {
  using type = float;
};
template <>
struct acc_type<double> {
  using type = double;
};

template <class A>
TRAINRT_HD A load(const float* p, int64_t i) {
  return (A)p[i];
}
template <class A>
TRAINRT_HD A load(const double* p, int64_t i) {
  return (A)p[i];
}
template <class A>
TRAINRT_HD A load(const f16_t* p, int64_t i) {
  return (A)f16_bits_to_float(p[i].bits);
}
template <class A>
TRAINRT_HD A load(const bf16_t* p, int64_t i) {
  return (A)bf16_bits_to_float(p[i].bits);
}

template <class A>
TRAINRT_HD void store(float* p, int64_t i, A v) {
  p[i] = (float)v;
}
template <class A>
TRAINRT_HD void store(double* p, int64_t i, A v) {
  p[i] = (double)v;
}
template <class A>
TRAINRT_HD void store(f16_t* p, int64_t i, A v) {
  p[i].bits = float_to_f16_bits((float)v);
}
template <class A>
TRAINRT_HD void store(bf16_t* p, int64_t i, A v) {
  p[i].bits = float_to_bf16_bits((float)v);
}

}  // namespace TRAINRT_KNS
}  // namespace trainrt
