// Front ends of the fused losses: every argument is checked here, on the host, before any
// kernel runs (shapes, dtypes, devices, hyperparameters). Data-dependent checks (class
// indices, BCE inputs in [0, 1]) happen inside the kernels without asserting.
#include "trainrt/losses.hpp"

#include "checks.hpp"

namespace trainrt {
namespace {

using detail::fail;

void check_reduction(Reduction r, const char* op, bool batchmean_ok) {
  if (r == Reduction::batchmean && !batchmean_ok) {
    fail("{}: reduction must be none, mean or sum, got batchmean (only kl_div has it)", op);
  }
}

/// Common bookkeeping of one loss call: output tensors and the upstream scale.
struct Outputs {
  Tensor loss;
  Tensor grad;
};

Outputs make_outputs(const Tensor& input, const Shape& none_shape, const LossOptions& o) {
  Outputs out;
  out.loss = Tensor::empty(o.reduction == Reduction::none ? none_shape : Shape{}, input.dtype(),
                           input.device());
  if (o.compute_grad) out.grad = Tensor::empty(input.shape(), input.dtype(), input.device());
  return out;
}

/// weight / pos_weight in the accumulation dtype on the input's device.
Tensor acc_tensor(const Tensor& t, const Tensor& input, const char* op, const char* arg) {
  detail::require_floating(t, op, arg);
  detail::require_same_device(t, input, op, arg, "input");
  const DType acc = detail::acc_dtype(input.dtype());
  return t.dtype() == acc ? t : t.to(acc);
}

Tensor class_weight(const Tensor& w, const Tensor& input, std::int64_t C, const char* op) {
  if (!w.defined()) return w;
  if (w.dim() != 1 || w.numel() != C) {
    fail("{}: weight must have shape [{}] (one per class), got {}", op, C, shape_str(w.shape()));
  }
  return acc_tensor(w, input, op, "weight");
}

LossResult row_loss(const char* op, const Tensor& input, const Tensor& target,
                    const Tensor& weight_in, std::int64_t ignore_index, double smoothing,
                    double z_loss, double softcap, bool input_is_logp, const LossOptions& o) {
  detail::require_floating(input, op, "input");
  detail::require_defined(target, op, "target");
  detail::require_same_device(target, input, op, "target", "input");
  check_reduction(o.reduction, op, false);
  if (input.dim() != 2) {
    fail("{}: input must be 2-D [N, C], got shape {}", op, shape_str(input.shape()));
  }
  const std::int64_t N = input.size(0), C = input.size(1);
  if (C < 1 && N > 0)
    fail("{}: input must have at least one class, got shape {}", op, shape_str(input.shape()));
  if (!(smoothing >= 0.0 && smoothing <= 1.0)) {
    fail("{}: label_smoothing must be in [0, 1], got {}", op, smoothing);
  }
  if (!(z_loss >= 0.0)) fail("{}: z_loss must be >= 0, got {}", op, z_loss);
  if (!(softcap >= 0.0)) fail("{}: softcap must be >= 0 (0 = off), got {}", op, softcap);

  const bool prob = is_floating(target.dtype());
  Tensor tgt = target;
  if (prob) {
    if (input_is_logp) {
      fail("{}: target must hold class indices (i64 or i32), got dtype {}", op,
           dtype_name(target.dtype()));
    }
    if (target.shape() != input.shape()) {
      fail("{}: probability target shape {} does not match input shape {}", op,
           shape_str(target.shape()), shape_str(input.shape()));
    }
    if (ignore_index != -100) {
      fail("{}: ignore_index is not supported with probability targets (got ignore_index={})", op,
           ignore_index);
    }
    if (tgt.dtype() != input.dtype()) tgt = tgt.to(input.dtype());
  } else {
    if (target.dtype() != DType::i64 && target.dtype() != DType::i32) {
      fail(
          "{}: target must hold class indices of dtype i64 or i32 (or probabilities of a "
          "floating dtype), got dtype {}",
          op, dtype_name(target.dtype()));
    }
    if (target.dim() != 1 || target.size(0) != N) {
      fail("{}: target shape {} does not match input batch size {} (expected [{}])", op,
           shape_str(target.shape()), N, N);
    }
  }
  const Tensor weight = class_weight(weight_in, input, C, op);

  const trainrt_backend_v1& api = detail::backend_for(input.device());
  detail::require_supported(api, TRAINRT_OP_CROSS_ENTROPY, input.dtype(), op);
  Outputs out = make_outputs(input, Shape{N}, o);

  trainrt_cross_entropy_args a{};
  a.dtype = detail::c_dtype(input.dtype());
  a.reduction = static_cast<std::int32_t>(o.reduction);
  a.rows = N;
  a.cols = C;
  a.logits = input.data();
  a.input_is_logp = input_is_logp ? 1 : 0;
  a.prob_targets = prob ? 1 : 0;
  a.target_dtype = detail::c_dtype(tgt.dtype());
  a.target = tgt.data();
  a.weight = weight.defined() ? weight.data() : nullptr;
  a.ignore_index = ignore_index;
  a.label_smoothing = smoothing;
  a.z_loss = z_loss;
  a.softcap = softcap;
  a.loss = out.loss.data();
  a.grad = out.grad.defined() ? out.grad.data() : nullptr;
  a.grad_scale = o.grad_scale;
  a.grad_scale_ptr = detail::grad_scale_ptr(o.grad_scale_tensor, input, op);
  detail::check_backend(api, api.cross_entropy(input.device().index(), &a), op);
  return LossResult{out.loss, out.grad};
}

struct PointwiseSpec {
  explicit PointwiseSpec(std::int32_t k) : kind(k) {}
  std::int32_t kind;
  double param = 0.0;
  double alpha = -1.0;
  bool log_target = false;
  Tensor weight;
  Tensor pos_weight;
};

LossResult pointwise(const char* op, const Tensor& input, const Tensor& target,
                     const PointwiseSpec& spec, const LossOptions& o) {
  detail::require_floating(input, op, "input");
  detail::require_defined(target, op, "target");
  detail::require_same_device(target, input, op, "target", "input");
  check_reduction(o.reduction, op, spec.kind == TRAINRT_LOSS_KL_DIV);
  if (!is_floating(target.dtype())) {
    fail("{}: target must have a floating dtype, got {}", op, dtype_name(target.dtype()));
  }
  if (target.shape() != input.shape()) {
    fail("{}: target shape {} does not match input shape {}", op, shape_str(target.shape()),
         shape_str(input.shape()));
  }
  const Tensor tgt = target.dtype() == input.dtype() ? target : target.to(input.dtype());
  const std::int64_t inner = input.dim() >= 1 ? input.size(-1) : 1;

  Tensor weight, pos_weight;
  if (spec.weight.defined()) {
    const Tensor& w = spec.weight;
    const bool full = w.shape() == input.shape();
    const bool last = w.dim() == 1 && w.numel() == inner;
    if (!full && !last) {
      fail(
          "{}: weight must have the input's shape {} or shape [{}] (broadcast along the last "
          "dimension), got {}",
          op, shape_str(input.shape()), inner, shape_str(w.shape()));
    }
    weight = acc_tensor(w, input, op, "weight");
  }
  if (spec.pos_weight.defined()) {
    const Tensor& pw = spec.pos_weight;
    if (pw.dim() != 1 || pw.numel() != inner) {
      fail("{}: pos_weight must have shape [{}] (the input's last dimension), got {}", op, inner,
           shape_str(pw.shape()));
    }
    pos_weight = acc_tensor(pw, input, op, "pos_weight");
  }

  double divisor = 1.0;
  if (o.reduction == Reduction::mean) divisor = static_cast<double>(input.numel());
  if (o.reduction == Reduction::batchmean) {
    if (input.dim() < 1) fail("{}: batchmean needs an input with a batch dimension", op);
    divisor = static_cast<double>(input.size(0));
  }

  const trainrt_backend_v1& api = detail::backend_for(input.device());
  detail::require_supported(api, TRAINRT_OP_POINTWISE_LOSS, input.dtype(), op);
  Outputs out = make_outputs(input, input.shape(), o);

  trainrt_pointwise_loss_args a{};
  a.kind = spec.kind;
  a.dtype = detail::c_dtype(input.dtype());
  a.reduction = o.reduction == Reduction::none  ? TRAINRT_RED_NONE
                : o.reduction == Reduction::sum ? TRAINRT_RED_SUM
                                                : TRAINRT_RED_MEAN;
  a.log_target = spec.log_target ? 1 : 0;
  a.numel = input.numel();
  a.inner = inner;
  a.input = input.data();
  a.target = tgt.data();
  a.weight = weight.defined() ? weight.data() : nullptr;
  a.weight_numel = weight.defined() ? weight.numel() : 0;
  a.pos_weight = pos_weight.defined() ? pos_weight.data() : nullptr;
  a.param = spec.param;
  a.alpha = spec.alpha;
  a.divisor = divisor;
  a.loss = out.loss.data();
  a.grad = out.grad.defined() ? out.grad.data() : nullptr;
  a.grad_scale = o.grad_scale;
  a.grad_scale_ptr = detail::grad_scale_ptr(o.grad_scale_tensor, input, op);
  detail::check_backend(api, api.pointwise_loss(input.device().index(), &a), op);
  return LossResult{out.loss, out.grad};
}

}  // namespace

const char* reduction_name(Reduction r) {
  switch (r) {
    case Reduction::none: return "none";
    case Reduction::mean: return "mean";
    case Reduction::sum: return "sum";
    case Reduction::batchmean: return "batchmean";
  }
  return "unknown";
}

Reduction parse_reduction(const std::string& name) {
  if (name == "none") return Reduction::none;
  if (name == "mean") return Reduction::mean;
  if (name == "sum") return Reduction::sum;
  if (name == "batchmean") return Reduction::batchmean;
  fail("parse_reduction: expected none, mean, sum or batchmean, got '{}'", name);
}

LossResult cross_entropy(const Tensor& logits, const Tensor& target, const CrossEntropyOptions& o) {
  return row_loss("cross_entropy", logits, target, o.weight, o.ignore_index, o.label_smoothing,
                  o.z_loss, o.softcap, false, o);
}

LossResult nll_loss(const Tensor& log_probs, const Tensor& target, const NllLossOptions& o) {
  return row_loss("nll_loss", log_probs, target, o.weight, o.ignore_index, 0.0, 0.0, 0.0, true, o);
}

LossResult mse_loss(const Tensor& input, const Tensor& target, const LossOptions& o) {
  return pointwise("mse_loss", input, target, PointwiseSpec(TRAINRT_LOSS_MSE), o);
}

LossResult l1_loss(const Tensor& input, const Tensor& target, const LossOptions& o) {
  return pointwise("l1_loss", input, target, PointwiseSpec(TRAINRT_LOSS_L1), o);
}

LossResult smooth_l1_loss(const Tensor& input, const Tensor& target, const SmoothL1Options& o) {
  if (!(o.beta >= 0.0)) fail("smooth_l1_loss: beta must be >= 0, got {}", o.beta);
  PointwiseSpec s(TRAINRT_LOSS_SMOOTH_L1);
  s.param = o.beta;
  return pointwise("smooth_l1_loss", input, target, s, o);
}

LossResult huber_loss(const Tensor& input, const Tensor& target, const HuberOptions& o) {
  if (!(o.delta > 0.0)) fail("huber_loss: delta must be > 0, got {}", o.delta);
  PointwiseSpec s(TRAINRT_LOSS_HUBER);
  s.param = o.delta;
  return pointwise("huber_loss", input, target, s, o);
}

LossResult binary_cross_entropy(const Tensor& probs, const Tensor& target, const BCEOptions& o) {
  PointwiseSpec s(TRAINRT_LOSS_BCE);
  s.weight = o.weight;
  return pointwise("binary_cross_entropy", probs, target, s, o);
}

LossResult binary_cross_entropy_with_logits(const Tensor& logits, const Tensor& target,
                                            const BCEWithLogitsOptions& o) {
  PointwiseSpec s(TRAINRT_LOSS_BCE_LOGITS);
  s.weight = o.weight;
  s.pos_weight = o.pos_weight;
  return pointwise("binary_cross_entropy_with_logits", logits, target, s, o);
}

LossResult sigmoid_focal_loss(const Tensor& logits, const Tensor& target, const FocalOptions& o) {
  if (!(o.gamma >= 0.0)) fail("sigmoid_focal_loss: gamma must be >= 0, got {}", o.gamma);
  if (!(o.alpha <= 1.0)) {
    fail("sigmoid_focal_loss: alpha must be in [0, 1] (or < 0 to disable), got {}", o.alpha);
  }
  PointwiseSpec s(TRAINRT_LOSS_FOCAL);
  s.param = o.gamma;
  s.alpha = o.alpha;
  return pointwise("sigmoid_focal_loss", logits, target, s, o);
}

LossResult kl_div(const Tensor& log_probs, const Tensor& target, const KLDivOptions& o) {
  PointwiseSpec s(TRAINRT_LOSS_KL_DIV);
  s.log_target = o.log_target;
  return pointwise("kl_div", log_probs, target, s, o);
}

}  // namespace trainrt
