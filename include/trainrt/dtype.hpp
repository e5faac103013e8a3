// Element types and the two 16-bit float storage types. Conversions from float round to
// nearest even, with the same bits on every backend.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "trainrt/export.hpp"

namespace trainrt {

enum class DType : std::uint8_t { f32 = 0, f16 = 1, bf16 = 2, f64 = 3, i32 = 4, i64 = 5, u8 = 6 };

TRAINRT_API std::size_t dtype_size(DType t);
TRAINRT_API const char* dtype_name(DType t);
/// Parses "f32", "float32", "f16", "half", "bf16", "bfloat16", "f64", "i32", "i64", "u8".
TRAINRT_API DType parse_dtype(const std::string& name);
TRAINRT_API bool is_floating(DType t);

/// IEEE binary16, stored as its bits.
struct Half {
  std::uint16_t bits = 0;
};
/// bfloat16 (the top half of an f32), stored as its bits.
struct BFloat16 {
  std::uint16_t bits = 0;
};

TRAINRT_API Half to_half(float v);
TRAINRT_API float to_float(Half v);
TRAINRT_API BFloat16 to_bfloat16(float v);
TRAINRT_API float to_float(BFloat16 v);

/// dtype_of<T>::value maps a C++ element type to its DType.
template <class T>
struct dtype_of;
template <>
struct dtype_of<float> {
  static constexpr DType value = DType::f32;
};
template <>
struct dtype_of<double> {
  static constexpr DType value = DType::f64;
};
template <>
struct dtype_of<Half> {
  static constexpr DType value = DType::f16;
};
template <>
struct dtype_of<BFloat16> {
  static constexpr DType value = DType::bf16;
};
template <>
struct dtype_of<std::int32_t> {
  static constexpr DType value = DType::i32;
};
template <>
struct dtype_of<std::int64_t> {
  static constexpr DType value = DType::i64;
};
template <>
struct dtype_of<std::uint8_t> {
  static constexpr DType value = DType::u8;
};

}  // namespace trainrt
