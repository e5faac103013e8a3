// Gradient clipping (torch.nn.utils.clip_grad_norm_ / clip_grad_value_ semantics).
//
// The total norm is one deterministic multi-tensor read pass (per-chunk partials reduced in a
// fixed order; sums of |g|^p accumulate in double, so 2e22 does not overflow an f32 grad's
// norm), and it stays on the device: the result is a 0-d tensor (f32, or f64 as PyTorch's when
// some grad is f64), read only if you call
// item(). Two forms:
//   clip_grad_norm_(params, ...)     PyTorch's: the grads are multiplied by the coefficient
//                                    (a second, read-write pass; skipped when no clipping is
//                                    needed on the CPU).
//   clip_grad_norm_(optimizer, ...)  fused: the coefficient goes into the optimizer's device
//                                    scalars and its next step() applies it in its own pass;
//                                    the grad tensors are not rewritten. After
//                                    GradScaler::unscale_(optimizer) this is the fast form
//                                    (it also records the scaler's inf/NaN check in the same
//                                    pass).
// The parameter-list functions (clip_grad_norm_(params), clip_grad_value_, grad_norm) see the
// grads as PyTorch's would: a grad whose optimizer holds a pending 1/scale (unscale_) or clip
// coefficient (clip_grad_norm_(optimizer)) has them multiplied in first (after the scaler's
// pending inf/NaN check), one read-write pass over that optimizer's grads.
#pragma once

#include <vector>

#include "trainrt/export.hpp"
#include "trainrt/optim.hpp"
#include "trainrt/parameter.hpp"
#include "trainrt/tensor.hpp"

namespace trainrt {

/// Clips the grads of `params` (those that have one) so that their total norm is at most
/// max_norm: coef = min(1, max_norm / (total + 1e-6)), every grad *= coef. norm_type is p > 0
/// or INFINITY (max |g|). Returns the total norm before clipping, a 0-d tensor on the grads'
/// device: f64 when some grad is f64 (as PyTorch's), else f32 (also for f16 / bf16 grads,
/// where PyTorch's would be of their dtype; with no grad at all, an f32 zero). The total is
/// the norm of the per-grad norms, each rounded to f32 (f64 for an f64 grad); the coefficient
/// is computed in the total's dtype and each grad is multiplied by it rounded to the grad's
/// compute type (f32 for f32 / f16 / bf16, f64 for f64). Throws for
/// max_norm <= 0, a bad norm_type, grads on different devices, and, when error_if_nonfinite, a
/// non-finite total (the grads then hold what they would hold before this call in PyTorch: unscaled
/// and clipped by pending multipliers, not by this call).
TRAINRT_API Tensor clip_grad_norm_(const std::vector<Parameter>& params, double max_norm,
                                   double norm_type = 2.0, bool error_if_nonfinite = false);

/// The fused form over every parameter of `optimizer` with a grad, as its step will see them
/// (after a pending unscale). The coefficient is applied by the next step(). For a
/// capturable optimizer (Optimizer::set_capturable) the result is, when some parameter has
/// a grad, the optimizer's one norm tensor, overwritten by its next clip (and by a CUDA
/// graph's replays): item() it before.
TRAINRT_API Tensor clip_grad_norm_(optim::Optimizer& optimizer, double max_norm,
                                   double norm_type = 2.0, bool error_if_nonfinite = false);

/// The total norm of the grads of `params` without clipping (dtype as clip_grad_norm_'s).
TRAINRT_API Tensor grad_norm(const std::vector<Parameter>& params, double norm_type = 2.0);

/// Clamps every grad element to [-clip_value, clip_value] (NaN stays NaN). clip_value >= 0.
TRAINRT_API void clip_grad_value_(const std::vector<Parameter>& params, double clip_value);

}  // namespace trainrt
