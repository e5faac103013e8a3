#include "trainrt/dtype.hpp"

#include "../kernels/common/half.h"
#include "internal.hpp"

namespace trainrt {

std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f16: return 2;
    case DType::bf16: return 2;
    case DType::f64: return 8;
    case DType::i32: return 4;
    case DType::i64: return 8;
    case DType::u8: return 1;
  }
  detail::fail("dtype_size: unknown dtype {}", static_cast<int>(t));
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f16: return "f16";
    case DType::bf16: return "bf16";
    case DType::f64: return "f64";
    case DType::i32: return "i32";
    case DType::i64: return "i64";
    case DType::u8: return "u8";
  }
  return "unknown";
}

DType parse_dtype(const std::string& n) {
  if (n == "f32" || n == "float32" || n == "float") return DType::f32;
  if (n == "f16" || n == "float16" || n == "half" || n == "fp16") return DType::f16;
  if (n == "bf16" || n == "bfloat16") return DType::bf16;
  if (n == "f64" || n == "float64" || n == "double") return DType::f64;
  if (n == "i32" || n == "int32") return DType::i32;
  if (n == "i64" || n == "int64" || n == "long") return DType::i64;
  if (n == "u8" || n == "uint8") return DType::u8;
  detail::fail("parse_dtype: unknown dtype '{}' (expected f32, f16, bf16, f64, i32, i64 or u8)", n);
}

bool is_floating(DType t) {
  return t == DType::f32 || t == DType::f16 || t == DType::bf16 || t == DType::f64;
}

Half to_half(float v) { return Half{kern::float_to_f16_bits(v)}; }
float to_float(Half v) { return kern::f16_bits_to_float(v.bits); }
BFloat16 to_bfloat16(float v) { return BFloat16{kern::float_to_bf16_bits(v)}; }
float to_float(BFloat16 v) { return kern::bf16_bits_to_float(v.bits); }

}  // namespace trainrt
