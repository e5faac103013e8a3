// Core-side wrappers of the layer slots (gemm, nn_pointwise, bias) of the backend table.
#pragma once

#include "../internal.hpp"

namespace trainrt {
namespace detail {

/// c = alpha * op(a) op(b) + beta * c for contiguous 2-d row-major tensors on one device.
void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, double alpha,
          double beta, const char* op);
/// y[r, :] += bias for y [rows, cols] and bias [cols] of y's accumulation dtype.
void bias_add(Tensor& y, const Tensor& bias, const char* op);
/// grad (+)= column sums of dy [rows, cols].
void bias_grad(const Tensor& dy, Tensor& grad, bool accumulate, const char* op);
/// Runs the nn_pointwise slot (args.dtype and args.numel are filled from `like`).
void nn_pointwise(const Tensor& like, trainrt_nn_pointwise_args& args, const char* op);

}  // namespace detail
}  // namespace trainrt
