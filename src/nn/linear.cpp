// Linear: y = x W^T + b through the backend's GEMM and bias slots, PyTorch's default init
// drawn from Philox (Random123) on the host, so every device starts from the same numbers.
#include <Random123/philox.h>

#include <cmath>
#include <new>
#include <vector>

#include "../checks.hpp"
#include "nn_internal.hpp"
#include "trainrt/nn.hpp"

namespace trainrt {
namespace nn {
namespace {

/// n values of U(-bound, bound): Philox4x32-10 keyed by the seed, counter (i/4, stream),
/// word i % 4; u = (word >> 8) * 2^-24, value = bound * (2u - 1) in double.
std::vector<double> philox_uniform(std::uint64_t seed, std::uint32_t stream, std::int64_t n,
                                   double bound) {
  r123::Philox4x32 gen;
  const r123::Philox4x32::key_type key = {
      {static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)}};
  std::vector<double> out(static_cast<std::size_t>(n));
  for (std::int64_t g = 0; g * 4 < n; ++g) {
    const r123::Philox4x32::ctr_type ctr = {
        {static_cast<std::uint32_t>(g), static_cast<std::uint32_t>(g >> 32), stream, 0u}};
    const r123::Philox4x32::ctr_type r = gen(ctr, key);
    for (std::int64_t j = 0; j < 4 && g * 4 + j < n; ++j) {
      const double u = static_cast<double>(r[static_cast<std::size_t>(j)] >> 8) * 0x1p-24;
      out[static_cast<std::size_t>(g * 4 + j)] = bound * (2.0 * u - 1.0);
    }
  }
  return out;
}

Tensor init_tensor(std::uint64_t seed, std::uint32_t stream, const Shape& shape, double bound,
                   DType dtype) {
  const std::int64_t n = shape_numel(shape);  // throws on overflow
  try {
    const std::vector<double> v = philox_uniform(seed, stream, n, bound);
    if (dtype == DType::f64) return Tensor::from_vector(v, shape);
    return Tensor::from_vector(std::vector<float>(v.begin(), v.end()), shape);
  } catch (const std::bad_alloc&) {
    detail::fail("Linear: out of memory for a parameter of shape {} ({} elements)",
                 shape_str(shape), n);
  }
}

}  // namespace

Linear::Linear(std::int64_t in_features, std::int64_t out_features, bool bias, std::uint64_t seed,
               DType dtype)
    : in_(in_features), out_(out_features), has_bias_(bias) {
  if (in_features <= 0 || out_features <= 0) {
    detail::fail("Linear: in_features ({}) and out_features ({}) must be positive", in_features,
                 out_features);
  }
  if (dtype != DType::f32 && dtype != DType::f64) {
    detail::fail("Linear: parameter dtype must be f32 or f64, got {}", dtype_name(dtype));
  }
  const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
  register_parameter("weight", init_tensor(seed, 0, {out_, in_}, bound, dtype));
  if (bias) register_parameter("bias", init_tensor(seed, 1, {out_}, bound, dtype));
}

Parameter Linear::weight() const { return param("weight"); }
Parameter Linear::bias() const { return has_bias_ ? param("bias") : Parameter(); }

void Linear::clear_state() {
  input_ = Tensor();
  weight_op_ = Tensor();
}

Tensor Linear::forward(const Tensor& input) {
  const char* op = "Linear";
  detail::require_floating(input, op, "input");
  const Parameter w = weight();
  const Tensor wv = w.value();
  detail::require_same_device(input, wv, op, "input", "weight");
  const DType dt = input.dtype();
  const bool mixed = wv.dtype() == DType::f32 && (dt == DType::f16 || dt == DType::bf16);
  if (dt != wv.dtype() && !mixed) {
    detail::fail(
        "Linear: input dtype {} does not match the {} parameters (f16/bf16 inputs need f32 "
        "parameters)",
        dtype_name(dt), dtype_name(wv.dtype()));
  }
  if (input.dim() < 1 || input.size(-1) != in_) {
    detail::fail("Linear: input {} must have last dimension in_features = {}", input.str(), in_);
  }
  const std::int64_t rows = input.numel() / in_;
  Tensor x = input.reshape({rows, in_});
  Tensor wop = wv;
  if (mixed) {
    const Tensor copy = w.model_copy();
    wop = copy.defined() && copy.dtype() == dt ? copy : wv.to(dt);
  }
  Tensor y = Tensor::empty({rows, out_}, dt, input.device());
  detail::gemm(x, false, wop, true, y, 1.0, 0.0, op);
  if (has_bias_) detail::bias_add(y, bias().value(), op);
  input_ = x;
  weight_op_ = wop;
  out_shape_ = input.shape();
  out_shape_.back() = out_;
  return y.reshape(out_shape_);
}

Tensor Linear::backward(const Tensor& grad_output) {
  const char* op = "Linear.backward";
  require_forward(input_, op);
  detail::require_floating(grad_output, op, "grad_output");
  detail::require_same_device(grad_output, input_, op, "grad_output", "input");
  if (grad_output.shape() != out_shape_ || grad_output.dtype() != input_.dtype()) {
    detail::fail("{}: grad_output {} must be {} {} like the output", op, grad_output.str(),
                 shape_str(out_shape_), dtype_name(input_.dtype()));
  }
  const std::int64_t rows = input_.size(0);
  const Tensor dy = grad_output.reshape({rows, out_});
  Tensor dx;
  if (input_grad()) {
    dx = Tensor::empty({rows, in_}, input_.dtype(), input_.device());
    detail::gemm(dy, false, weight_op_, false, dx, 1.0, 0.0, op);
  }

  const Parameter w = weight();
  const bool acc_w = w.has_grad();
  Tensor dw = acc_w ? w.grad() : Tensor::empty({out_, in_}, w.value().dtype(), w.value().device());
  detail::gemm(dy, true, input_, false, dw, 1.0, acc_w ? 1.0 : 0.0, op);
  if (!acc_w) w.set_grad(dw);
  if (has_bias_) {
    const Parameter b = bias();
    const bool acc_b = b.has_grad();
    Tensor db = acc_b ? b.grad() : Tensor::empty({out_}, b.value().dtype(), b.value().device());
    detail::bias_grad(dy, db, acc_b, op);
    if (!acc_b) b.set_grad(db);
  }
  if (!dx.defined()) return dx;
  Shape in_shape = out_shape_;
  in_shape.back() = in_;
  return dx.reshape(in_shape);
}

}  // namespace nn
}  // namespace trainrt
