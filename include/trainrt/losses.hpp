// Fused losses: each call reads its input once and writes the loss and, when asked, the
// gradient with respect to the input, already multiplied by the upstream scale
// (grad_scale, times *grad_scale_tensor when given: e.g. 1/accumulation steps, loss scale).
//
// The loss stays on the device: LossResult::loss is a 0-d tensor (reduction mean/sum/
// batchmean) or per-sample losses (none), of the input's dtype. Reading it (item()) is the
// only host synchronisation. Accumulation is f32 for f16/bf16/f32 inputs, f64 for f64.
//
// With reduction none, the gradient is that of grad_scale * sum(loss).
// Formulas, defaults and edge cases follow PyTorch (docs/SEMANTICS.md in the shared docs;
// README "Losses").
#pragma once

#include <cstdint>

#include "trainrt/export.hpp"
#include "trainrt/tensor.hpp"

namespace trainrt {

enum class Reduction : std::uint8_t { none = 0, mean = 1, sum = 2, batchmean = 3 };
TRAINRT_API const char* reduction_name(Reduction r);
/// "none", "mean", "sum", "batchmean".
TRAINRT_API Reduction parse_reduction(const std::string& name);

struct LossResult {
  Tensor loss;  // 0-d (reduced) or per-sample (none), input dtype, on the input's device
  Tensor grad;  // d(loss)/d(input) * scale, input shape and dtype; undefined if not asked
};

/// Options every loss shares.
struct LossOptions {
  Reduction reduction = Reduction::mean;
  bool compute_grad = true;
  double grad_scale = 1.0;
  Tensor grad_scale_tensor;  // optional f32 scalar on the input's device, multiplied in
};

struct CrossEntropyOptions : LossOptions {
  Tensor weight;  // optional [C] class weights
  std::int64_t ignore_index = -100;
  double label_smoothing = 0.0;
  double z_loss = 0.0;   // extra: + z_loss * logsumexp^2 per counted row (PaLM); 0 = off
  double softcap = 0.0;  // extra: logits -> softcap * tanh(logits / softcap); 0 = off
};

struct NllLossOptions : LossOptions {
  Tensor weight;
  std::int64_t ignore_index = -100;
};

struct SmoothL1Options : LossOptions {
  double beta = 1.0;
};

struct HuberOptions : LossOptions {
  double delta = 1.0;
};

struct BCEOptions : LossOptions {
  Tensor weight;  // same shape as input, or [last dim] broadcast along the last dimension
};

struct BCEWithLogitsOptions : LossOptions {
  Tensor weight;      // as BCEOptions::weight
  Tensor pos_weight;  // [last dim]
};

/// torchvision.ops.sigmoid_focal_loss; note our default reduction is mean (torchvision: none).
struct FocalOptions : LossOptions {
  double alpha = 0.25;  // < 0: no alpha weighting
  double gamma = 2.0;
};

/// Input holds log-probabilities. Default reduction mean as PyTorch (divides by numel);
/// batchmean (sum / batch size) is the mathematically right KL divergence.
struct KLDivOptions : LossOptions {
  bool log_target = false;
};

/// logits [N, C]; target: class indices [N] (i64 or i32) or probabilities [N, C] (float).
TRAINRT_API LossResult cross_entropy(const Tensor& logits, const Tensor& target,
                                     const CrossEntropyOptions& options = {});
/// log_probs [N, C]; target: class indices [N] (i64 or i32).
TRAINRT_API LossResult nll_loss(const Tensor& log_probs, const Tensor& target,
                                const NllLossOptions& options = {});
TRAINRT_API LossResult mse_loss(const Tensor& input, const Tensor& target,
                                const LossOptions& options = {});
TRAINRT_API LossResult l1_loss(const Tensor& input, const Tensor& target,
                               const LossOptions& options = {});
TRAINRT_API LossResult smooth_l1_loss(const Tensor& input, const Tensor& target,
                                      const SmoothL1Options& options = {});
TRAINRT_API LossResult huber_loss(const Tensor& input, const Tensor& target,
                                  const HuberOptions& options = {});
TRAINRT_API LossResult binary_cross_entropy(const Tensor& probs, const Tensor& target,
                                            const BCEOptions& options = {});
TRAINRT_API LossResult binary_cross_entropy_with_logits(const Tensor& logits, const Tensor& target,
                                                        const BCEWithLogitsOptions& options = {});
TRAINRT_API LossResult sigmoid_focal_loss(const Tensor& logits, const Tensor& target,
                                          const FocalOptions& options = {});
TRAINRT_API LossResult kl_div(const Tensor& log_probs, const Tensor& target,
                              const KLDivOptions& options = {});

}  // namespace trainrt
