// Front ends of the fused softmax family: checks, output allocation, backend dispatch.
#include "trainrt/softmax.hpp"

#include "checks.hpp"

namespace trainrt {
namespace {

trainrt_softmax_args rows_cols(const Tensor& t, const char* op) {
  detail::require_floating(t, op, "input");
  if (t.dim() < 1) detail::fail("{}: input must have at least 1 dimension, got a 0-d tensor", op);
  trainrt_softmax_args a{};
  a.dtype = detail::c_dtype(t.dtype());
  a.cols = t.size(-1);
  a.rows = a.cols == 0 ? 0 : t.numel() / a.cols;
  return a;
}

Tensor forward(const Tensor& x, bool log, const char* op) {
  trainrt_softmax_args a = rows_cols(x, op);
  const trainrt_backend_v1& api = detail::backend_for(x.device());
  detail::require_supported(api, TRAINRT_OP_SOFTMAX, x.dtype(), op);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  a.log = log ? 1 : 0;
  a.x = x.data();
  a.out = y.data();
  if (a.rows > 0) detail::check_backend(api, api.softmax_forward(x.device().index(), &a), op);
  return y;
}

Tensor backward(const Tensor& y, const Tensor& dy, bool log, const char* op) {
  trainrt_softmax_args a = rows_cols(y, op);
  detail::require_floating(dy, op, "grad_output");
  detail::require_same_device(dy, y, op, "grad_output", "output");
  if (dy.shape() != y.shape() || dy.dtype() != y.dtype()) {
    detail::fail("{}: grad_output {} must match output {}", op, dy.str(), y.str());
  }
  const trainrt_backend_v1& api = detail::backend_for(y.device());
  detail::require_supported(api, TRAINRT_OP_SOFTMAX, y.dtype(), op);
  Tensor dx = Tensor::empty(y.shape(), y.dtype(), y.device());
  a.log = log ? 1 : 0;
  a.y = y.data();
  a.dy = dy.data();
  a.out = dx.data();
  if (a.rows > 0) detail::check_backend(api, api.softmax_backward(y.device().index(), &a), op);
  return dx;
}

}  // namespace

Tensor softmax(const Tensor& x) { return forward(x, false, "softmax"); }
Tensor log_softmax(const Tensor& x) { return forward(x, true, "log_softmax"); }
Tensor softmax_backward(const Tensor& y, const Tensor& dy) {
  return backward(y, dy, false, "softmax_backward");
}
Tensor log_softmax_backward(const Tensor& y, const Tensor& dy) {
  return backward(y, dy, true, "log_softmax_backward");
}

}  // namespace trainrt
