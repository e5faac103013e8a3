// Learning-rate schedulers with PyTorch 1.13's semantics (torch.optim.lr_scheduler): the same
// learning rates (and momentum / beta1) bit for bit, the same chainable-versus-closed forms, the
// initial step at construction, get_last_lr() and last_epoch().
//
//   trainrt::optim::SGD opt(params, trainrt::optim::SGDOptions(0.1).momentum(0.9));
//   trainrt::optim::StepLR sched(opt, /*step_size=*/30, /*gamma=*/0.1);
//   for (int epoch = 0; epoch < 100; ++epoch) {
//     train_one_epoch(opt);  // opt.step() per batch
//     sched.step();          // once per epoch (OneCycleLR, CyclicLR: once per batch)
//   }
//
// A scheduler writes the lr (and for OneCycleLR / CyclicLR the momentum, or beta1 of the
// Adam family) of every parameter group with Optimizer::set; the next fused step reads them.
//
// As in PyTorch, the first scheduler built on an optimizer records each group's lr as its
// "initial_lr", and later schedulers on the same optimizer (e.g. the parts of a SequentialLR)
// take their base_lrs from it. trainrt keeps initial_lr beside the optimizer while a scheduler
// of it lives (OneCycleLR overwrites it, as PyTorch does). A scheduler must not outlive its
// optimizer.
//
// state_dict() holds everything PyTorch's holds (configuration included; load_state_dict
// restores it); LambdaLR's functions and CyclicLR's custom scale_fn are not saved, as in
// PyTorch. Resuming: build a fresh optimizer and scheduler as before, then load both state
// dicts; the trajectory continues exactly. load_state_dict validates everything and changes
// nothing on failure.
//
// Errors (trainrt::Error): invalid configuration (T_max <= 0, gamma <= 0, milestones not
// increasing, factor >= 1, ...), OneCycleLR stepped past total_steps, a state dict of another
// scheduler or another number of groups, a step after the optimizer gained a param group
// (make the scheduler after add_param_group), and a step whose schedule gives a negative or
// non-finite lr, or one beyond the f32 range the optimizer keeps (PyTorch writes it; e.g. the
// chainable cosine after the lr was set below eta_min by hand). A negative lr within rounding of 0
// (a chainable form reaching 0, as LinearLR with end_factor 0 does) is written as 0, with
// get_last_lr() keeping PyTorch's value. A step that throws changes nothing.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "trainrt/export.hpp"
#include "trainrt/optim.hpp"
#include "trainrt/state_dict.hpp"

namespace trainrt {

namespace detail {
struct SchedulerImpl;
struct SchedulerAccess;
}  // namespace detail

namespace optim {

class TRAINRT_API LRScheduler {
 public:
  virtual ~LRScheduler();
  LRScheduler(const LRScheduler&) = delete;
  LRScheduler& operator=(const LRScheduler&) = delete;

  /// "StepLR", "MultiStepLR", ..., "ReduceLROnPlateau".
  const std::string& name() const;
  /// Advances one epoch (or batch) and writes the new lrs into the optimizer.
  /// ReduceLROnPlateau needs a metric: step(metric).
  void step();
  /// ReduceLROnPlateau: one epoch with the monitored value. Others throw.
  void step(double metric);
  /// True for ReduceLROnPlateau (step(metric)).
  bool needs_metric() const;

  /// The lrs written by the last step (or by construction), one per param group.
  std::vector<double> get_last_lr() const;
  /// PyTorch's last_epoch: 0 after construction, +1 per step().
  std::int64_t last_epoch() const;
  /// The lrs the schedule is relative to (PyTorch's base_lrs; empty for ReduceLROnPlateau and
  /// SequentialLR).
  std::vector<double> base_lrs() const;
  Optimizer& optimizer() const;

  StateDict state_dict() const;
  void load_state_dict(const StateDict& state);

 protected:
  explicit LRScheduler(std::unique_ptr<detail::SchedulerImpl> impl);

 private:
  friend struct detail::SchedulerAccess;
  std::unique_ptr<detail::SchedulerImpl> impl_;
};

/// lr = base_lr * gamma^(epoch / step_size) (chainable form: lr *= gamma every step_size).
class TRAINRT_API StepLR : public LRScheduler {
 public:
  StepLR(Optimizer& optimizer, std::int64_t step_size, double gamma = 0.1);
};

/// lr *= gamma at each milestone (non-decreasing epochs; a repeated one applies gamma again).
class TRAINRT_API MultiStepLR : public LRScheduler {
 public:
  MultiStepLR(Optimizer& optimizer, std::vector<std::int64_t> milestones, double gamma = 0.1);
};

/// lr *= gamma every step.
class TRAINRT_API ExponentialLR : public LRScheduler {
 public:
  ExponentialLR(Optimizer& optimizer, double gamma);
};

/// eta_min + (base - eta_min)(1 + cos(pi t / T_max)) / 2, in PyTorch's recursive form.
class TRAINRT_API CosineAnnealingLR : public LRScheduler {
 public:
  CosineAnnealingLR(Optimizer& optimizer, std::int64_t T_max, double eta_min = 0.0);
};

/// Factor going linearly from start_factor to end_factor over total_iters steps.
class TRAINRT_API LinearLR : public LRScheduler {
 public:
  explicit LinearLR(Optimizer& optimizer, double start_factor = 1.0 / 3, double end_factor = 1.0,
                    std::int64_t total_iters = 5);
};

/// lr = base_lr * f(epoch); one function for all groups or one per group.
class TRAINRT_API LambdaLR : public LRScheduler {
 public:
  using Lambda = std::function<double(std::int64_t)>;
  LambdaLR(Optimizer& optimizer, Lambda lr_lambda);
  LambdaLR(Optimizer& optimizer, std::vector<Lambda> lr_lambdas);
};

/// Runs schedulers[i] from milestones[i-1] on (milestones.size() == schedulers.size() - 1), e.g.
///   auto warm = std::make_shared<LinearLR>(opt, 0.1, 1.0, 5);
///   auto cos = std::make_shared<CosineAnnealingLR>(opt, 95);
///   SequentialLR sched(opt, {warm, cos}, {5});
/// Build the parts, in order, just before the SequentialLR, as in PyTorch.
class TRAINRT_API SequentialLR : public LRScheduler {
 public:
  SequentialLR(Optimizer& optimizer, std::vector<std::shared_ptr<LRScheduler>> schedulers,
               std::vector<std::int64_t> milestones);
};

/// Declares a fluent option: `T name() const` and `Self& name(T v)`.
#define TRAINRT_SCHED_OPTION(Self, T, name, def) \
 public:                                         \
  Self& name(T v) {                              \
    name##_ = v;                                 \
    return *this;                                \
  }                                              \
  T name() const { return name##_; }             \
                                                 \
 private:                                        \
  T name##_ = def;

/// OneCycleLR(max_lr, total_steps | epochs * steps_per_epoch, pct_start=0.3, anneal "cos" |
/// "linear", cycle_momentum=true, base_momentum=0.85, max_momentum=0.95, div_factor=25,
/// final_div_factor=1e4, three_phase=false). Per-group values: the *_per_group setters.
/// Momentum cycling writes beta1 for optimizers with betas (Adam, AdamW, RAdam, LAMB), else
/// momentum (SGD, RMSprop); Adagrad needs cycle_momentum(false).
class TRAINRT_API OneCycleLROptions {
 public:
  explicit OneCycleLROptions(double max_lr) : max_lr_({max_lr}) {}
  explicit OneCycleLROptions(std::vector<double> max_lr_per_group)
      : max_lr_(std::move(max_lr_per_group)) {}
  TRAINRT_SCHED_OPTION(OneCycleLROptions, std::int64_t, total_steps, 0)
  TRAINRT_SCHED_OPTION(OneCycleLROptions, std::int64_t, epochs, 0)
  TRAINRT_SCHED_OPTION(OneCycleLROptions, std::int64_t, steps_per_epoch, 0)
  TRAINRT_SCHED_OPTION(OneCycleLROptions, double, pct_start, 0.3)
  TRAINRT_SCHED_OPTION(OneCycleLROptions, std::string, anneal_strategy, "cos")
  TRAINRT_SCHED_OPTION(OneCycleLROptions, bool, cycle_momentum, true)
  TRAINRT_SCHED_OPTION(OneCycleLROptions, std::vector<double>, base_momentum, {0.85})
  TRAINRT_SCHED_OPTION(OneCycleLROptions, std::vector<double>, max_momentum, {0.95})
  TRAINRT_SCHED_OPTION(OneCycleLROptions, double, div_factor, 25.0)
  TRAINRT_SCHED_OPTION(OneCycleLROptions, double, final_div_factor, 1e4)
  TRAINRT_SCHED_OPTION(OneCycleLROptions, bool, three_phase, false)
 public:
  const std::vector<double>& max_lr() const { return max_lr_; }
  OneCycleLROptions& base_momentum(double m) { return base_momentum(std::vector<double>{m}); }
  OneCycleLROptions& max_momentum(double m) { return max_momentum(std::vector<double>{m}); }

 private:
  std::vector<double> max_lr_;
};

/// CyclicLR(base_lr, max_lr, step_size_up=2000, step_size_down=step_size_up, mode
/// "triangular" | "triangular2" | "exp_range", gamma=1, scale_fn (overrides mode) with
/// scale_mode "cycle" | "iterations", cycle_momentum=true, base_momentum=0.8,
/// max_momentum=0.9). As in PyTorch 1.13, cycle_momentum needs an optimizer with a momentum
/// hyperparameter (SGD, RMSprop); pass cycle_momentum(false) for the Adam family.
class TRAINRT_API CyclicLROptions {
 public:
  CyclicLROptions(double base_lr, double max_lr) : base_lr_({base_lr}), max_lr_({max_lr}) {}
  CyclicLROptions(std::vector<double> base_lr, std::vector<double> max_lr)
      : base_lr_(std::move(base_lr)), max_lr_(std::move(max_lr)) {}
  TRAINRT_SCHED_OPTION(CyclicLROptions, double, step_size_up, 2000.0)
  TRAINRT_SCHED_OPTION(CyclicLROptions, std::string, mode, "triangular")
  TRAINRT_SCHED_OPTION(CyclicLROptions, double, gamma, 1.0)
  TRAINRT_SCHED_OPTION(CyclicLROptions, std::function<double(double)>, scale_fn, nullptr)
  TRAINRT_SCHED_OPTION(CyclicLROptions, std::string, scale_mode, "cycle")
  TRAINRT_SCHED_OPTION(CyclicLROptions, bool, cycle_momentum, true)
  TRAINRT_SCHED_OPTION(CyclicLROptions, std::vector<double>, base_momentum, {0.8})
  TRAINRT_SCHED_OPTION(CyclicLROptions, std::vector<double>, max_momentum, {0.9})
 public:
  CyclicLROptions& step_size_down(double s) {
    step_size_down_ = s;
    has_step_size_down_ = true;
    return *this;
  }
  /// step_size_up unless set.
  double step_size_down() const { return has_step_size_down_ ? step_size_down_ : step_size_up_; }
  const std::vector<double>& base_lr() const { return base_lr_; }
  const std::vector<double>& max_lr() const { return max_lr_; }
  CyclicLROptions& base_momentum(double m) { return base_momentum(std::vector<double>{m}); }
  CyclicLROptions& max_momentum(double m) { return max_momentum(std::vector<double>{m}); }

 private:
  std::vector<double> base_lr_, max_lr_;
  double step_size_down_ = 0.0;
  bool has_step_size_down_ = false;
};

/// ReduceLROnPlateau(mode "min" | "max", factor=0.1, patience=10, threshold=1e-4,
/// threshold_mode "rel" | "abs", cooldown=0, min_lr=0 (or one per group), eps=1e-8).
class TRAINRT_API ReduceLROnPlateauOptions {
 public:
  TRAINRT_SCHED_OPTION(ReduceLROnPlateauOptions, std::string, mode, "min")
  TRAINRT_SCHED_OPTION(ReduceLROnPlateauOptions, double, factor, 0.1)
  TRAINRT_SCHED_OPTION(ReduceLROnPlateauOptions, std::int64_t, patience, 10)
  TRAINRT_SCHED_OPTION(ReduceLROnPlateauOptions, double, threshold, 1e-4)
  TRAINRT_SCHED_OPTION(ReduceLROnPlateauOptions, std::string, threshold_mode, "rel")
  TRAINRT_SCHED_OPTION(ReduceLROnPlateauOptions, std::int64_t, cooldown, 0)
  TRAINRT_SCHED_OPTION(ReduceLROnPlateauOptions, std::vector<double>, min_lr, {0.0})
  TRAINRT_SCHED_OPTION(ReduceLROnPlateauOptions, double, eps, 1e-8)
 public:
  ReduceLROnPlateauOptions& min_lr(double m) { return min_lr(std::vector<double>{m}); }
};

#undef TRAINRT_SCHED_OPTION

class TRAINRT_API OneCycleLR : public LRScheduler {
 public:
  OneCycleLR(Optimizer& optimizer, const OneCycleLROptions& options);
};

class TRAINRT_API CyclicLR : public LRScheduler {
 public:
  CyclicLR(Optimizer& optimizer, const CyclicLROptions& options);
};

/// Reduces the lrs by `factor` when the metric has not improved for more than `patience`
/// epochs: new = max(old * factor, min_lr), applied only if old - new > eps. No step at
/// construction; get_last_lr() is the optimizer's lrs until the first step(metric).
class TRAINRT_API ReduceLROnPlateau : public LRScheduler {
 public:
  explicit ReduceLROnPlateau(Optimizer& optimizer,
                             const ReduceLROnPlateauOptions& options = ReduceLROnPlateauOptions());
  using LRScheduler::step;
  /// Number of epochs without improvement so far; the best value seen.
  std::int64_t num_bad_epochs() const;
  double best() const;
};

}  // namespace optim
}  // namespace trainrt
