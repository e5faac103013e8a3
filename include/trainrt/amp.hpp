// GradScaler: dynamic loss scaling for mixed precision, with torch.cuda.amp.GradScaler's
// defaults, state machine and errors.
//
//   trainrt::GradScaler scaler;
//   // per iteration:
//   trainrt::CrossEntropyOptions o;
//   o.grad_scale_tensor = scaler.scale_tensor(logits.device());  // the loss grad comes out scaled
//   auto r = trainrt::cross_entropy(logits, target, o);
//   ... backward, set grads ...
//   scaler.unscale_(opt);                       // optional: only to clip
//   trainrt::clip_grad_norm_(opt, 1.0);         // fused: same read pass as the inf/NaN check
//   scaler.step(opt);                           // skipped (and reported) on inf/NaN grads
//   scaler.update();
//
// Unscaling is folded into the optimizer: unscale_(opt) stores 1/scale (computed in double,
// used as f32) in the optimizer's device scalars; the inf/NaN check runs once, in the clip
// pass when clip_grad_norm_(opt, ...) is called, else in step(); the optimizer's fused step
// multiplies every grad by 1/scale and the clip coefficient as it reads it, and skips itself
// on the device when an inf/NaN was found. The host learns that a step was skipped from one
// 4-byte copy per step. The grad tensors themselves keep their scaled values: clip with the
// optimizer form after unscale_ (the parameter-list clip_grad_norm_, clip_grad_value_ and
// grad_norm work too: they first multiply the pending 1/scale into the grads, one more
// read-write pass), and write into them in place only before unscale_. unscale_ of an
// optimizer without grads records nothing (step() and update() then fail for it, as in
// PyTorch), and a grad set afterwards is used as it is. Replacing or dropping grads in between
// behaves as in PyTorch: zero_grad() drops the pending 1/scale and clip coefficient with the
// grads (after their inf/NaN check), and Parameter::set_grad multiplies them into the old
// grads first, so a grad set afterwards is used as it is.
#pragma once

#include <cstdint>
#include <map>
#include <memory>

#include "trainrt/device.hpp"
#include "trainrt/export.hpp"
#include "trainrt/optim.hpp"
#include "trainrt/state_dict.hpp"
#include "trainrt/tensor.hpp"

namespace trainrt {

struct GradScalerOptions {
  double init_scale = 65536.0;  // 2^16
  double growth_factor = 2.0;   // > 1
  double backoff_factor = 0.5;  // in (0, 1)
  std::int64_t growth_interval = 2000;
  bool enabled = true;
};

class TRAINRT_API GradScaler {
 public:
  explicit GradScaler(GradScalerOptions options = GradScalerOptions());
  ~GradScaler();
  GradScaler(const GradScaler&) = delete;
  GradScaler& operator=(const GradScaler&) = delete;

  bool is_enabled() const { return options_.enabled; }

  /// loss * scale (f32; f64 for an f64 loss), on the loss's device. Disabled: the loss.
  Tensor scale(const Tensor& loss);
  /// The scale as an f32 device scalar on `device` (created there on first use), to pass as a
  /// loss's grad_scale_tensor so the loss gradient comes out scaled. Disabled: undefined.
  Tensor scale_tensor(Device device = Device::cpu());

  /// Folds 1/scale into the optimizer's next step and schedules the inf/NaN check. Throws if
  /// called twice for the optimizer before update(), or after step().
  void unscale_(optim::Optimizer& optimizer);
  /// Unscales if needed, runs the inf/NaN check if it has not run, and steps the optimizer
  /// unless a grad was inf/NaN. Returns true when the optimizer stepped. Throws when called
  /// twice for the optimizer before update().
  bool step(optim::Optimizer& optimizer);
  /// Backs off (any inf/NaN recorded since the last update) or counts towards growth, on the
  /// device. Throws when no inf/NaN check was recorded since the last update (no optimizer
  /// stepped, or unscaled while it had grads). An optimizer unscaled but not stepped (a step
  /// skipped by the training loop) has its check run now, and its pending 1/scale and clip
  /// coefficient are multiplied into its grads, which then hold what PyTorch's unscale_ and
  /// clip_grad_norm_ would have left in them; its next step starts afresh.
  void update();
  /// Sets the scale to new_scale (> 0) instead (ends the iteration in the same way).
  void update(double new_scale);

  /// The current scale (reads the device; init_scale before first use).
  double get_scale() const;
  double get_growth_factor() const { return options_.growth_factor; }
  double get_backoff_factor() const { return options_.backoff_factor; }
  std::int64_t get_growth_interval() const { return options_.growth_interval; }
  void set_growth_factor(double v);
  void set_backoff_factor(double v);
  void set_growth_interval(std::int64_t v);
  /// Consecutive unskipped steps counted towards the next growth (reads the device).
  std::int64_t get_growth_tracker() const;

  /// scalars "scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"
  /// (empty when disabled).
  StateDict state_dict() const;
  /// Throws for an empty or incomplete dict, or invalid values (nothing changed then).
  void load_state_dict(const StateDict& state);

 private:
  enum class Stage : std::uint8_t { ready, unscaled, stepped };
  struct PerOptimizer {
    Stage stage = Stage::ready;
    Tensor found_inf_block;     // the optimizer's grad scalars block (shared storage)
    bool recorded = false;      // found_inf_block holds this iteration's inf/NaN check
    std::weak_ptr<char> alive;  // expires with the optimizer
  };
  void lazy_init(Device device, const char* op);
  PerOptimizer& state_of(optim::Optimizer& optimizer);
  /// Ends the iteration for every optimizer unscaled but not stepped (see update()).
  void release_unstepped(const char* op);

  GradScalerOptions options_;
  Tensor scale_;           // f32 [1] on the device
  Tensor growth_tracker_;  // i32 [1] on the device
  std::int64_t init_growth_tracker_ = 0;
  std::map<optim::Optimizer*, PerOptimizer> per_optimizer_;
};

}  // namespace trainrt
