// Activations and Dropout (fused element-wise kernels of the nn_pointwise slot), and the
// core-side wrappers of the layer slots.
#include <cstdint>
#include <string>

#include "../checks.hpp"
#include "nn_internal.hpp"
#include "trainrt/nn.hpp"

namespace trainrt {
namespace detail {

void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, double alpha,
          double beta, const char* op) {
  const trainrt_backend_v1& api = backend_for(c.device());
  require_supported(api, TRAINRT_OP_GEMM, a.dtype(), op);
  trainrt_gemm_args g{};
  g.ab_dtype = c_dtype(a.dtype());
  g.c_dtype = c_dtype(c.dtype());
  g.trans_a = trans_a ? 1 : 0;
  g.trans_b = trans_b ? 1 : 0;
  g.m = c.size(0);
  g.n = c.size(1);
  g.k = trans_a ? a.size(0) : a.size(1);
  g.a = a.data();
  g.b = b.data();
  g.c = c.data();
  g.alpha = alpha;
  g.beta = beta;
  if (g.m > 0 && g.n > 0) check_backend(api, api.gemm(c.device().index(), &g), op);
}

void bias_add(Tensor& y, const Tensor& bias, const char* op) {
  const trainrt_backend_v1& api = backend_for(y.device());
  require_supported(api, TRAINRT_OP_NN_POINTWISE, y.dtype(), op);
  trainrt_bias_args b{};
  b.op = TRAINRT_BIAS_ADD;
  b.dtype = c_dtype(y.dtype());
  b.bias_dtype = c_dtype(bias.dtype());
  b.rows = y.size(0);
  b.cols = y.size(1);
  b.y = y.data();
  b.bias = bias.data();
  if (b.rows > 0 && b.cols > 0) check_backend(api, api.bias(y.device().index(), &b), op);
}

void bias_grad(const Tensor& dy, Tensor& grad, bool accumulate, const char* op) {
  const trainrt_backend_v1& api = backend_for(dy.device());
  require_supported(api, TRAINRT_OP_NN_POINTWISE, dy.dtype(), op);
  trainrt_bias_args b{};
  b.op = TRAINRT_BIAS_GRAD;
  b.dtype = c_dtype(dy.dtype());
  b.bias_dtype = c_dtype(grad.dtype());
  b.accumulate = accumulate ? 1 : 0;
  b.rows = dy.size(0);
  b.cols = dy.size(1);
  b.dy = dy.data();
  b.grad = grad.data();
  if (b.cols > 0) check_backend(api, api.bias(dy.device().index(), &b), op);
}

void nn_pointwise(const Tensor& like, trainrt_nn_pointwise_args& args, const char* op) {
  const trainrt_backend_v1& api = backend_for(like.device());
  require_supported(api, TRAINRT_OP_NN_POINTWISE, like.dtype(), op);
  args.dtype = c_dtype(like.dtype());
  args.numel = like.numel();
  if (args.numel > 0) check_backend(api, api.nn_pointwise(like.device().index(), &args), op);
}

}  // namespace detail

namespace nn {

// ---- Activations --------------------------------------------------------------------------

Activation::Activation(int kind, const char* name) : kind_(kind), name_(name) {}

void Activation::clear_state() { saved_ = Tensor(); }

Tensor Activation::forward(const Tensor& input) {
  detail::require_floating(input, name_, "input");
  Tensor y = Tensor::empty(input.shape(), input.dtype(), input.device());
  trainrt_nn_pointwise_args a{};
  a.kind = kind_;
  a.x = input.data();
  a.out = y.data();
  detail::nn_pointwise(input, a, name_);
  const bool saves_output = kind_ == TRAINRT_NN_TANH || kind_ == TRAINRT_NN_SIGMOID;
  saved_ = saves_output ? y : input;
  return y;
}

Tensor Activation::backward(const Tensor& grad_output) {
  require_forward(saved_, name_);
  detail::require_floating(grad_output, name_, "grad_output");
  detail::require_same_device(grad_output, saved_, name_, "grad_output", "input");
  if (grad_output.shape() != saved_.shape() || grad_output.dtype() != saved_.dtype()) {
    detail::fail("{}: grad_output {} must match the output {}", name_, grad_output.str(),
                 saved_.str());
  }
  Tensor dx = Tensor::empty(saved_.shape(), saved_.dtype(), saved_.device());
  trainrt_nn_pointwise_args a{};
  a.kind = kind_;
  a.backward = 1;
  a.x = saved_.data();
  a.y = saved_.data();
  a.dy = grad_output.data();
  a.out = dx.data();
  detail::nn_pointwise(saved_, a, name_);
  return dx;
}

ReLU::ReLU() : Activation(TRAINRT_NN_RELU, "ReLU") {}
GELU::GELU() : Activation(TRAINRT_NN_GELU, "GELU") {}
Tanh::Tanh() : Activation(TRAINRT_NN_TANH, "Tanh") {}
Sigmoid::Sigmoid() : Activation(TRAINRT_NN_SIGMOID, "Sigmoid") {}

// ---- Dropout ------------------------------------------------------------------------------

Dropout::Dropout(double p, std::uint64_t seed) : p_(p), seed_(seed) {
  if (!(p >= 0.0 && p <= 1.0)) detail::fail("Dropout: p must be in [0, 1], got {}", p);
}

void Dropout::clear_state() { has_forward_ = false; }

StateDict Dropout::extra_state() const {
  StateDict s;
  s.strings["seed"] = std::to_string(seed_);
  s.strings["offset"] = std::to_string(offset_);
  return s;
}

namespace {
std::uint64_t parse_u64(const StateDict& s, const char* key) {
  auto it = s.strings.find(key);
  if (it == s.strings.end()) detail::fail("Dropout: the state has no '{}'", key);
  const std::string& v = it->second;
  std::uint64_t x = 0;
  bool ok = !v.empty() && v.size() <= 20;
  for (char c : v) {
    if (!ok) break;
    if (c < '0' || c > '9') {
      ok = false;
      break;
    }
    const std::uint64_t d = static_cast<std::uint64_t>(c - '0');
    if (x > (UINT64_MAX - d) / 10) ok = false;
    x = x * 10 + d;
  }
  if (!ok) detail::fail("Dropout: '{}' must be an unsigned 64-bit decimal, got '{}'", key, v);
  return x;
}
}  // namespace

void Dropout::load_extra_state(const StateDict& state) {
  if (!state.tensors.empty() || !state.scalars.empty() || state.strings.size() != 2) {
    detail::fail(
        "Dropout: the state must hold exactly the strings 'seed' and 'offset', got {} "
        "tensors, {} numbers and {} strings",
        state.tensors.size(), state.scalars.size(), state.strings.size());
  }
  const std::uint64_t seed = parse_u64(state, "seed");
  const std::uint64_t offset = parse_u64(state, "offset");
  seed_ = seed;
  offset_ = offset;
  has_forward_ = false;
}

Tensor Dropout::forward(const Tensor& input) {
  detail::require_floating(input, "Dropout", "input");
  shape_ = input.shape();
  dtype_ = input.dtype();
  has_forward_ = true;
  applied_ = is_training() && p_ > 0.0;
  if (!applied_) return input;
  used_offset_ = offset_++;
  Tensor y = Tensor::empty(input.shape(), input.dtype(), input.device());
  trainrt_nn_pointwise_args a{};
  a.kind = TRAINRT_NN_DROPOUT;
  a.x = input.data();
  a.out = y.data();
  a.p = p_;
  a.seed = seed_;
  a.offset = used_offset_;
  detail::nn_pointwise(input, a, "Dropout");
  return y;
}

Tensor Dropout::backward(const Tensor& grad_output) {
  if (!has_forward_) detail::fail("Dropout: backward called before forward");
  detail::require_floating(grad_output, "Dropout.backward", "grad_output");
  if (grad_output.shape() != shape_ || grad_output.dtype() != dtype_) {
    detail::fail("Dropout.backward: grad_output {} must be {} {} like the output",
                 grad_output.str(), shape_str(shape_), dtype_name(dtype_));
  }
  if (!applied_) return grad_output;
  Tensor dx = Tensor::empty(shape_, dtype_, grad_output.device());
  trainrt_nn_pointwise_args a{};
  a.kind = TRAINRT_NN_DROPOUT;
  a.backward = 1;
  a.dy = grad_output.data();
  a.out = dx.data();
  a.p = p_;
  a.seed = seed_;
  a.offset = used_offset_;
  detail::nn_pointwise(grad_output, a, "Dropout.backward");
  return dx;
}

}  // namespace nn
}  // namespace trainrt
