// Element conversions of Tensor::to(dtype) that involve an integer dtype, written once for
// both backends so the CPU and the GPU give the same bits for every input:
//   int -> int      modular (two's complement wrap), as PyTorch: i64 300 -> u8 44, i32 -1 ->
//                   u8 255; exact for every value (no detour through double)
//   int -> float    one rounding to f32 / f64 (i64 2^53 + 1 -> f64 2^53); f16 / bf16 via f32
//   float -> int    truncation toward zero for values in range; out of range saturates to the
//                   type's min / max and NaN gives 0. A plain C++ cast is undefined there, and
//                   the hardware differs (x86 gives INT_MIN for NaN and wraps -1.0 -> u8 to 255,
//                   CUDA's cvt saturates); PyTorch documents the result as undefined. Saturation
//                   is the choice that is defined, equal on both backends and closest in value.
//   float -> float  through double, 16-bit destinations via f32 (the backends have faster loops
//                   for most floating pairs; half.h holds the 16-bit roundings)
#pragma once

#include <stdint.h>

#include "../../src/backend/backend_api.h"
#include "half.h"

namespace trainrt {
namespace TRAINRT_KNS {

TRAINRT_HD bool dt_is_int(int32_t dt) {
  return dt == TRAINRT_I32 || dt == TRAINRT_I64 || dt == TRAINRT_U8;
}

TRAINRT_HD int64_t load_int(const void* p, int32_t dt, int64_t i) {
  switch (dt) {
    case TRAINRT_I32: return static_cast<const int32_t*>(p)[i];
    case TRAINRT_I64: return static_cast<const int64_t*>(p)[i];
    case TRAINRT_U8: return static_cast<const uint8_t*>(p)[i];
    default: return 0;
  }
}

/// Modular: the low bits of v's two's complement (unsigned conversion is modular in C++;
/// unsigned -> signed of the same width keeps the bits on GCC, Clang and nvcc).
TRAINRT_HD void store_int(void* p, int32_t dt, int64_t i, int64_t v) {
  const uint64_t u = static_cast<uint64_t>(v);
  switch (dt) {
    case TRAINRT_I32:
      static_cast<int32_t*>(p)[i] = static_cast<int32_t>(static_cast<uint32_t>(u));
      break;
    case TRAINRT_I64: static_cast<int64_t*>(p)[i] = v; break;
    case TRAINRT_U8: static_cast<uint8_t*>(p)[i] = static_cast<uint8_t>(u); break;
    default: break;
  }
}

/// v truncated toward zero, saturating: hi from `top` up, lo from `bottom` down; NaN (which
/// fails every comparison) -> 0.
template <class I>
TRAINRT_HD I saturate_to(double v, double top, I hi, double bottom, I lo) {
  if (v >= top) return hi;
  if (v <= bottom) return lo;
  return v == v ? static_cast<I>(v) : I(0);
}

/// A floating value to an integer dtype: truncation toward zero, saturating, NaN -> 0.
TRAINRT_HD void store_float_as_int(void* p, int32_t dt, int64_t i, double v) {
  switch (dt) {
    case TRAINRT_I32:
      static_cast<int32_t*>(p)[i] =
          saturate_to<int32_t>(v, 2147483647.0, 2147483647, -2147483648.0, -2147483647 - 1);
      break;
    case TRAINRT_I64:  // 2^63 is the first double above INT64_MAX
      static_cast<int64_t*>(p)[i] =
          saturate_to<int64_t>(v, 9223372036854775808.0, 9223372036854775807LL,
                               -9223372036854775808.0, -9223372036854775807LL - 1);
      break;
    case TRAINRT_U8:  // (-1, 0] truncates to 0 as well
      static_cast<uint8_t*>(p)[i] = saturate_to<uint8_t>(v, 255.0, 255, 0.0, 0);
      break;
    default: break;
  }
}

/// A floating element (f32, f64, f16, bf16) as double (exact).
TRAINRT_HD double load_float_any(const void* p, int32_t dt, int64_t i) {
  switch (dt) {
    case TRAINRT_F32: return static_cast<const float*>(p)[i];
    case TRAINRT_F64: return static_cast<const double*>(p)[i];
    case TRAINRT_F16: return f16_bits_to_float(static_cast<const f16_t*>(p)[i].bits);
    case TRAINRT_BF16: return bf16_bits_to_float(static_cast<const bf16_t*>(p)[i].bits);
    default: return 0.0;
  }
}

/// v (int64_t or double) to a floating dtype: one rounding to f32 or f64 (as (float) v in C++);
/// f16 and bf16 through f32, as PyTorch's c10::Half / BFloat16 conversions do (and as the CPU
/// always narrowed f64 to 16 bits).
template <class S>
TRAINRT_HD void store_as_float(void* p, int32_t dt, int64_t i, S v) {
  switch (dt) {
    case TRAINRT_F32: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case TRAINRT_F64: static_cast<double*>(p)[i] = static_cast<double>(v); break;
    case TRAINRT_F16:
      static_cast<f16_t*>(p)[i].bits = float_to_f16_bits(static_cast<float>(v));
      break;
    case TRAINRT_BF16:
      static_cast<bf16_t*>(p)[i].bits = float_to_bf16_bits(static_cast<float>(v));
      break;
    default: break;
  }
}

/// dst[i] = (ddt) src[i] for any pair of dtypes (the backends take faster loops for the
/// common floating pairs; this is the general element).
TRAINRT_HD void cast_element(const void* src, int32_t sdt, void* dst, int32_t ddt, int64_t i) {
  if (dt_is_int(sdt)) {
    const int64_t v = load_int(src, sdt, i);
    if (dt_is_int(ddt))
      store_int(dst, ddt, i, v);
    else
      store_as_float(dst, ddt, i, v);
  } else if (dt_is_int(ddt)) {
    store_float_as_int(dst, ddt, i, load_float_any(src, sdt, i));
  } else {
    store_as_float(dst, ddt, i, load_float_any(src, sdt, i));
  }
}

}  // namespace TRAINRT_KNS
}  // namespace trainrt
