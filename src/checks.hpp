// Argument checks shared by the op front ends. Each throws trainrt::Error naming the op,
// the argument, and the expected and actual values.
#pragma once

#include "internal.hpp"

namespace trainrt {
namespace detail {

inline void require_defined(const Tensor& t, const char* op, const char* arg) {
  if (!t.defined()) fail("{}: {} is undefined", op, arg);
}

inline void require_floating(const Tensor& t, const char* op, const char* arg) {
  require_defined(t, op, arg);
  if (!is_floating(t.dtype())) {
    fail("{}: {} must have a floating dtype (f32, f16, bf16, f64), got {}", op, arg,
         dtype_name(t.dtype()));
  }
}

inline void require_same_device(const Tensor& t, const Tensor& ref, const char* op, const char* arg,
                                const char* ref_arg) {
  if (t.device() != ref.device()) {
    fail("{}: {} is on {} but {} is on {}: all tensors must be on one device", op, arg,
         t.device().str(), ref_arg, ref.device().str());
  }
}

inline void require_supported(const trainrt_backend_v1& api, std::int32_t op_id, DType dtype,
                              const char* op) {
  if (!api.supports(op_id, c_dtype(dtype))) {
    fail("{}: dtype {} is not supported by the {} backend", op, dtype_name(dtype), api.name);
  }
}

/// The optional upstream-scale tensor: an f32 scalar on the input's device.
inline const float* grad_scale_ptr(const Tensor& scale, const Tensor& input, const char* op) {
  if (!scale.defined()) return nullptr;
  require_same_device(scale, input, op, "grad_scale_tensor", "input");
  if (scale.dtype() != DType::f32 || scale.numel() != 1) {
    fail("{}: grad_scale_tensor must be one f32 element, got {}", op, scale.str());
  }
  return static_cast<const float*>(scale.data());
}

/// Accumulation dtype of a floating input: f64 for f64, else f32.
inline DType acc_dtype(DType t) { return t == DType::f64 ? DType::f64 : DType::f32; }

}  // namespace detail
}  // namespace trainrt
