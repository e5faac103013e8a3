// Fused softmax / log_softmax over the last dimension (one pass, online max and sum).
// Inputs: any shape with at least one dimension, f32/f16/bf16/f64; outputs share its dtype.
#pragma once

#include "trainrt/export.hpp"
#include "trainrt/tensor.hpp"

namespace trainrt {

TRAINRT_API Tensor softmax(const Tensor& x);
TRAINRT_API Tensor log_softmax(const Tensor& x);
/// dx = y * (dy - sum(y * dy)), y = softmax(x).
TRAINRT_API Tensor softmax_backward(const Tensor& y, const Tensor& dy);
/// dx = dy - exp(y) * sum(dy), y = log_softmax(x).
TRAINRT_API Tensor log_softmax_backward(const Tensor& y, const Tensor& dy);

}  // namespace trainrt
