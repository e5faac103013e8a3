// Gradient clipping front ends. The norm is one multi_tensor_norm pass (deterministic chunk
// partials) that also computes the clip coefficient on the device; the parameter-list form then
// scales the grads with multi_tensor_scale, the optimizer form leaves the coefficient in the
// optimizer's grad scalars block for its next step. No host synchronisation unless
// error_if_nonfinite asks for the total on the host.
#include "trainrt/clip.hpp"

#include <algorithm>
#include <cmath>

#include "checks.hpp"
#include "optim_internal.hpp"

namespace trainrt {
namespace {

using detail::fail;
using detail::ParameterAccess;
using detail::TensorList;

void check_norm_type(double norm_type, const char* op) {
  if (!(norm_type > 0.0)) {
    fail("{}: norm_type must be > 0 (1, 2, any p) or inf, got {}", op, norm_type);
  }
}

void check_max_norm(double max_norm, const char* op) {
  if (!(max_norm > 0.0)) fail("{}: max_norm must be > 0, got {}", op, max_norm);
}

struct Grads {
  TensorList list;
  Device device;
  /// Some grad is f64: PyTorch's total norm (torch.stack of the per-grad norms promotes) and
  /// clip coefficient are then f64, and each grad is multiplied by the coefficient rounded to
  /// its own compute type. Otherwise both are f32.
  bool any_f64 = false;
  DType total_dtype() const { return any_f64 ? DType::f64 : DType::f32; }
};

/// The grads of `params` (those that have one), on one device. A grad with an optimizer's
/// pending 1/scale or clip coefficient (GradScaler::unscale_, clip_grad_norm_(optimizer)) is
/// settled first: the multipliers go into the grads (one read-write pass, what PyTorch's
/// unscale_ and clip would already have written) after the pending inf/NaN check, so this
/// call sees, and its step later uses, what PyTorch's would. Validates everything before it
/// settles, so a call that fails changes nothing.
Grads collect(const std::vector<Parameter>& params, const char* op) {
  Grads g;
  bool has_device = false;
  std::vector<detail::OptimizerImpl*> pending;
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (!params[i].defined()) fail("{}: parameter {} is undefined", op, i);
    const detail::ParameterImpl& p = ParameterAccess::impl(params[i]);
    if (!p.grad.defined()) continue;
    if (!is_floating(p.grad.dtype())) {
      fail("{}: the grad of parameter {} must be floating, got {}", op, i,
           dtype_name(p.grad.dtype()));
    }
    if (!has_device) {
      g.device = p.grad.device();
      has_device = true;
    } else if (p.grad.device() != g.device) {
      fail(
          "{}: the grad of parameter {} is on {} but an earlier one is on {}: all grads must be "
          "on one device",
          op, i, p.grad.device().str(), g.device.str());
    }
    if (p.pending != nullptr &&
        std::find(pending.begin(), pending.end(), p.pending) == pending.end()) {
      pending.push_back(p.pending);
    }
    if (p.grad.dtype() == DType::f64) g.any_f64 = true;
    g.list.add(p.grad);
  }
  for (detail::OptimizerImpl* o : pending) detail::OptimizerAccess::settle(*o, true, op);
  return g;
}

Tensor zero_norm(const std::vector<Parameter>& params) {
  Device d = Device::cpu();
  for (const Parameter& p : params) {
    if (p.defined()) {
      d = p.value().device();
      break;
    }
  }
  return Tensor::zeros({}, DType::f32, d);
}

/// One norm pass into `total` (a 0-d f32 or f64 tensor). grad_scalars: read for the
/// multipliers and, with max_norm > 0, receives the f32 clip coefficient; coef_f64: optional,
/// with max_norm > 0 receives the f64 one; found_inf: optional.
void norm_pass(const Grads& g, double norm_type, float* grad_scalars, double max_norm,
               Tensor& total, double* coef_f64, float* found_inf, const char* op) {
  const trainrt_backend_v1& api = detail::backend_for(g.device);
  trainrt_multi_tensor_norm_args a{};
  a.n_tensors = static_cast<std::int64_t>(g.list.size());
  a.tensors = g.list.ptrs.data();
  a.dtypes = g.list.dtypes.data();
  a.numels = g.list.numels.data();
  a.norm_type = norm_type;
  a.max_norm = max_norm;
  a.grad_scalars = grad_scalars;
  if (total.dtype() == DType::f64) {
    a.total_norm_f64 = static_cast<double*>(total.data());
  } else {
    a.total_norm = static_cast<float*>(total.data());
  }
  a.clip_coef_f64 = coef_f64;
  a.found_inf = found_inf;
  detail::check_backend(api, api.multi_tensor_norm(g.device.index(), &a), op);
}

void check_finite_total(const Tensor& total, double norm_type, const char* op) {
  const double t = total.item();
  if (!std::isfinite(t)) {
    fail(
        "{}: the total norm of order {} of the gradients is non-finite ({}), so it cannot be "
        "clipped; the grads are unchanged (pass error_if_nonfinite = false to scale them anyway)",
        op, norm_type, t);
  }
}

}  // namespace

Tensor grad_norm(const std::vector<Parameter>& params, double norm_type) {
  const char* op = "grad_norm";
  check_norm_type(norm_type, op);
  Grads g = collect(params, op);
  if (g.list.size() == 0) return zero_norm(params);
  Tensor total = Tensor::empty({}, g.total_dtype(), g.device);
  norm_pass(g, norm_type, nullptr, 0.0, total, nullptr, nullptr, op);
  return total;
}

Tensor clip_grad_norm_(const std::vector<Parameter>& params, double max_norm, double norm_type,
                       bool error_if_nonfinite) {
  const char* op = "clip_grad_norm_";
  check_max_norm(max_norm, op);
  check_norm_type(norm_type, op);
  Grads g = collect(params, op);
  if (g.list.size() == 0) return zero_norm(params);
  Tensor total = Tensor::empty({}, g.total_dtype(), g.device);
  // The coefficient: in a private grad scalars block {1, 1, 0, 0} (f32), or an f64 scalar.
  Tensor coef;
  if (g.any_f64) {
    coef = Tensor::empty({}, DType::f64, g.device);
    norm_pass(g, norm_type, nullptr, max_norm, total, static_cast<double*>(coef.data()), nullptr,
              op);
  } else {
    coef = Tensor::from_vector(std::vector<float>{1.0f, 1.0f, 0.0f, 0.0f}, {TRAINRT_GS_COUNT},
                               g.device);
    norm_pass(g, norm_type, static_cast<float*>(coef.data()), max_norm, total, nullptr, nullptr,
              op);
  }
  if (error_if_nonfinite) check_finite_total(total, norm_type, op);
  const trainrt_backend_v1& api = detail::backend_for(g.device);
  trainrt_multi_tensor_scale_args s{};
  s.n_tensors = static_cast<std::int64_t>(g.list.size());
  s.tensors = g.list.ptrs.data();
  s.dtypes = g.list.dtypes.data();
  s.numels = g.list.numels.data();
  if (g.any_f64) {
    s.scale_f64 = static_cast<const double*>(coef.data());
  } else {
    s.scale = static_cast<const float*>(coef.data()) + TRAINRT_GS_CLIP_COEF;
  }
  s.clamp_lo = -INFINITY;
  s.clamp_hi = INFINITY;
  detail::check_backend(api, api.multi_tensor_scale(g.device.index(), &s), op);
  return total;
}

Tensor clip_grad_norm_(optim::Optimizer& optimizer, double max_norm, double norm_type,
                       bool error_if_nonfinite) {
  const char* op = "clip_grad_norm_(optimizer)";
  check_max_norm(max_norm, op);
  check_norm_type(norm_type, op);
  detail::OptimizerImpl& I = detail::OptimizerAccess::impl(optimizer);
  Grads g;
  g.list = detail::OptimizerAccess::grads(I);
  g.device = I.device;
  if (detail::device_capturing(I.device)) {
    // Refused before anything is made: what a capture allocates belongs to the graph.
    if (g.list.size() == 0) {
      fail("{}: no parameter has a grad during a CUDA graph capture (nothing to capture)", op);
    }
    if (error_if_nonfinite) {
      fail("{}: error_if_nonfinite reads the norm back, which a CUDA graph capture cannot", op);
    }
    if (!I.capturable || !I.clip_total.defined()) {
      fail("{}: the first clip of {} runs during a CUDA graph capture; {}", op,
           I.capturable ? "a capturable optimizer" : "an ordinary optimizer",
           I.capturable ? "run one iteration before capturing"
                        : "call set_capturable(true) and run one iteration before capturing");
    }
  }
  if (g.list.size() == 0) return zero_norm(detail::OptimizerAccess::params(I));
  // A second clip before the step: PyTorch's first clip rewrote the grads, and the second
  // multiplies what it wrote ((g * c1) * c2, where one folded coefficient would round
  // g * (c1 * c2)). The pending multipliers go into the grads first, as PyTorch's passes did.
  if (I.gs_active && I.clip_pending) detail::OptimizerAccess::settle(I, true, op);
  const bool was_active = I.gs_active;
  float* gs = detail::OptimizerAccess::activate_grad_scalars(I);
  float saved[TRAINRT_GS_COUNT] = {1.0f, 1.0f, 0.0f, 0.0f};
  if (error_if_nonfinite) {
    Tensor host = I.grad_scalars.to(Device::cpu());
    for (int i = 0; i < TRAINRT_GS_COUNT; ++i) saved[i] = static_cast<const float*>(host.data())[i];
  }
  // A capturable optimizer keeps one norm tensor: nothing is allocated in a captured step,
  // and the tensor a graph's replays write is the one returned when it was captured.
  Tensor total;
  if (I.capturable) {
    if (!I.clip_total.defined()) I.clip_total = Tensor::empty({}, DType::f32, g.device);
    total = I.clip_total;
  } else {
    total = Tensor::empty({}, DType::f32, g.device);
  }
  // A pending GradScaler check runs in this same read pass.
  float* found_inf = I.check_pending ? gs + TRAINRT_GS_FOUND_INF : nullptr;
  norm_pass(g, norm_type, gs, max_norm, total, nullptr, found_inf, op);
  if (error_if_nonfinite) {
    try {
      check_finite_total(total, norm_type, op);
    } catch (...) {
      detail::write_device_floats(I.device, gs, saved, TRAINRT_GS_COUNT);  // undo the pass
      I.gs_active = was_active;
      throw;
    }
  }
  if (found_inf != nullptr) {
    I.check_pending = false;
    I.inf_recorded = true;
  }
  I.clip_pending = true;
  detail::OptimizerAccess::mark_pending(I, true);  // set_grad settles the coefficient first
  return total;
}

void clip_grad_value_(const std::vector<Parameter>& params, double clip_value) {
  const char* op = "clip_grad_value_";
  if (!(clip_value >= 0.0)) fail("{}: clip_value must be >= 0, got {}", op, clip_value);
  Grads g = collect(params, op);
  if (g.list.size() == 0) return;
  const trainrt_backend_v1& api = detail::backend_for(g.device);
  trainrt_multi_tensor_scale_args s{};
  s.n_tensors = static_cast<std::int64_t>(g.list.size());
  s.tensors = g.list.ptrs.data();
  s.dtypes = g.list.dtypes.data();
  s.numels = g.list.numels.data();
  s.clamp_lo = -clip_value;
  s.clamp_hi = clip_value;
  detail::check_backend(api, api.multi_tensor_scale(g.device.index(), &s), op);
}

}  // namespace trainrt
