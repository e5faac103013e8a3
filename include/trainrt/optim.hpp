// Fused optimizers with PyTorch's defaults and semantics (torch.optim 1.13; RAdam's
// decoupled_weight_decay and LAMB as described in README "Optimizers").
//
// Every step is one pass per element over param, grad and state, for all parameters of a group
// at once (a multi-tensor kernel; LAMB: two passes). Master parameters and state are f32; a
// parameter's f16/bf16 model copy (Parameter::set_model_copy) is rewritten in the same pass.
//
//   std::vector<trainrt::Parameter> params = ...;
//   trainrt::optim::AdamW opt(params, trainrt::optim::AdamWOptions().lr(1e-3));
//   // per iteration: set grads, then
//   opt.step();
//   opt.zero_grad();
//
// Parameter groups: each group may override any hyperparameter by name (the names are those
// of PyTorch, with betas split into beta1 and beta2; flags are 0 or 1):
//   trainrt::optim::SGD opt({{backbone}, {head, {{"lr", 0.1}, {"momentum", 0.9}}}},
//                           trainrt::optim::SGDOptions(0.01));
//
// Errors (trainrt::Error): invalid hyperparameters (negative lr / eps / weight_decay, betas
// outside [0, 1), nesterov without momentum or with dampening, an unknown name), a parameter
// in two groups, parameters on different devices, a non-f32 parameter, a state dict that does
// not match (load_state_dict then changes nothing).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "trainrt/device.hpp"
#include "trainrt/export.hpp"
#include "trainrt/parameter.hpp"
#include "trainrt/state_dict.hpp"
#include "trainrt/tensor.hpp"

namespace trainrt {

class GradScaler;

namespace detail {
struct OptimizerImpl;
struct OptimizerAccess;
}  // namespace detail

namespace optim {

/// Hyperparameters by name ("lr", "beta1", "nesterov", ...); flags are 0 or 1.
using HyperParams = std::map<std::string, double>;

struct ParamGroup {
  std::vector<Parameter> params;
  /// Overrides of the optimizer's defaults; after the group is added, every hyperparameter.
  HyperParams options;

  ParamGroup() = default;
  ParamGroup(std::vector<Parameter> p, HyperParams o = {})
      : params(std::move(p)), options(std::move(o)) {}
};

class TRAINRT_API Optimizer {
 public:
  virtual ~Optimizer();
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  /// "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "RAdam", "LAMB".
  const std::string& name() const;
  /// The hyperparameter names this optimizer accepts, with their defaults for new groups.
  const HyperParams& defaults() const;

  /// Adds a group; missing hyperparameters come from defaults(). Throws for an invalid
  /// hyperparameter, an unknown name, or a parameter already in a group.
  void add_param_group(const ParamGroup& group);
  const std::vector<ParamGroup>& param_groups() const;
  /// A hyperparameter of a group.
  double get(std::size_t group, const std::string& key) const;
  /// Sets a hyperparameter of a group (validated as at construction). Schedulers use this.
  void set(std::size_t group, const std::string& key, double value);
  double lr(std::size_t group = 0) const { return get(group, "lr"); }
  /// Sets the lr of every group.
  void set_lr(double lr);

  /// Clears (set_to_none) or zeroes every parameter's grad.
  void zero_grad(bool set_to_none = true);
  /// One fused step over every parameter that has a grad; parameters without one are skipped
  /// and their step counts do not advance.
  void step();
  /// True when the last step() changed nothing because a GradScaler found inf/NaN grads.
  /// (Capturable: one small read from the device.)
  bool last_step_skipped() const;

  /// Capturable steps (off by default), as PyTorch's `capturable=True`: the step counts live
  /// on the device and advance there (not on a skipped step), the t-dependent scalars (bias
  /// corrections, ...) are computed by the kernels, and step() makes no host transfer once
  /// one full iteration (the same parameters with grads, the same unscale_ / clip calls) has
  /// run eagerly with the hyperparameters unchanged since; so on CUDA the step can be
  /// captured in a CUDA graph (trainrt::CudaGraph) and replayed. (Run eagerly, the step after
  /// one that made state with a scaler or clip active reads 4 bytes.) A hyperparameter
  /// changed later (set_lr, a scheduler) reaches a replayed graph through
  /// upload_hyperparameters(), outside the capture. Gives the ordinary step's results
  /// (bitwise on the CPU; docs/DESIGN-NOTES.md lists the differences). step_count(),
  /// state_dict() and last_step_skipped() read from the device. Turning it off brings the
  /// counts back to the host.
  void set_capturable(bool capturable);
  bool capturable() const;
  /// Capturable: writes the current hyperparameters of every group into the device blocks
  /// that the steps (and a graph captured from one) read. step() does this itself when they
  /// changed; call it before replaying a graph after changing an lr. Throws if a change
  /// alters the kind of update (the kernel flags: L2 weight decay, momentum, maximize,
  /// nesterov, amsgrad, ... switched on or off), which a captured graph cannot follow. A
  /// no-op on an ordinary optimizer and before the first capturable step.
  void upload_hyperparameters();

  /// Device of the parameters (the CPU when there are none).
  Device device() const;
  /// How many steps `p` took (0 if none). Throws if `p` is not a parameter of this optimizer.
  std::int64_t step_count(const Parameter& p) const;
  /// A state buffer of `p` ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer",
  /// "square_avg", "grad_avg", "sum"); undefined when it does not exist (yet).
  Tensor state(const Parameter& p, const std::string& name) const;

  /// Everything: group hyperparameters and sizes, per-parameter step counts and state
  /// (deep copies). Parameters are numbered in group order, as in PyTorch.
  StateDict state_dict() const;
  /// Restores state_dict() of an optimizer of the same kind over the same parameter structure
  /// (same number of groups and of parameters per group, same shapes). Validates everything
  /// first: on failure it throws and changes nothing.
  void load_state_dict(const StateDict& state);

 protected:
  Optimizer(int algorithm, std::vector<ParamGroup> groups, HyperParams defaults);

 private:
  friend struct detail::OptimizerAccess;
  std::unique_ptr<detail::OptimizerImpl> impl_;
};

/// Declares a fluent option: `T name() const` and `Self& name(T v)`.
#define TRAINRT_OPTIM_OPTION(Self, T, name, def) \
 public:                                         \
  Self& name(T v) {                              \
    name##_ = v;                                 \
    return *this;                                \
  }                                              \
  T name() const { return name##_; }             \
                                                 \
 private:                                        \
  T name##_ = def;

/// SGD(lr, momentum=0, dampening=0, weight_decay=0, nesterov=false, maximize=false).
class TRAINRT_API SGDOptions {
 public:
  explicit SGDOptions(double lr) : lr_(lr) {}
  TRAINRT_OPTIM_OPTION(SGDOptions, double, lr, 0.0)
  TRAINRT_OPTIM_OPTION(SGDOptions, double, momentum, 0.0)
  TRAINRT_OPTIM_OPTION(SGDOptions, double, dampening, 0.0)
  TRAINRT_OPTIM_OPTION(SGDOptions, double, weight_decay, 0.0)
  TRAINRT_OPTIM_OPTION(SGDOptions, bool, nesterov, false)
  TRAINRT_OPTIM_OPTION(SGDOptions, bool, maximize, false)
 public:
  HyperParams hyper() const;
};

/// Adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0 (L2), amsgrad, maximize).
class TRAINRT_API AdamOptions {
 public:
  AdamOptions() = default;
  explicit AdamOptions(double lr) : lr_(lr) {}
  TRAINRT_OPTIM_OPTION(AdamOptions, double, lr, 1e-3)
  TRAINRT_OPTIM_OPTION(AdamOptions, double, beta1, 0.9)
  TRAINRT_OPTIM_OPTION(AdamOptions, double, beta2, 0.999)
  TRAINRT_OPTIM_OPTION(AdamOptions, double, eps, 1e-8)
  TRAINRT_OPTIM_OPTION(AdamOptions, double, weight_decay, 0.0)
  TRAINRT_OPTIM_OPTION(AdamOptions, bool, amsgrad, false)
  TRAINRT_OPTIM_OPTION(AdamOptions, bool, maximize, false)
 public:
  AdamOptions& betas(double b1, double b2) { return beta1(b1).beta2(b2); }
  HyperParams hyper() const;
};

/// AdamW: as Adam with decoupled weight decay p *= 1 - lr * wd; weight_decay defaults to 1e-2.
class TRAINRT_API AdamWOptions {
 public:
  AdamWOptions() = default;
  explicit AdamWOptions(double lr) : lr_(lr) {}
  TRAINRT_OPTIM_OPTION(AdamWOptions, double, lr, 1e-3)
  TRAINRT_OPTIM_OPTION(AdamWOptions, double, beta1, 0.9)
  TRAINRT_OPTIM_OPTION(AdamWOptions, double, beta2, 0.999)
  TRAINRT_OPTIM_OPTION(AdamWOptions, double, eps, 1e-8)
  TRAINRT_OPTIM_OPTION(AdamWOptions, double, weight_decay, 1e-2)
  TRAINRT_OPTIM_OPTION(AdamWOptions, bool, amsgrad, false)
  TRAINRT_OPTIM_OPTION(AdamWOptions, bool, maximize, false)
 public:
  AdamWOptions& betas(double b1, double b2) { return beta1(b1).beta2(b2); }
  HyperParams hyper() const;
};

/// RMSprop(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered, maximize).
class TRAINRT_API RMSpropOptions {
 public:
  RMSpropOptions() = default;
  explicit RMSpropOptions(double lr) : lr_(lr) {}
  TRAINRT_OPTIM_OPTION(RMSpropOptions, double, lr, 1e-2)
  TRAINRT_OPTIM_OPTION(RMSpropOptions, double, alpha, 0.99)
  TRAINRT_OPTIM_OPTION(RMSpropOptions, double, eps, 1e-8)
  TRAINRT_OPTIM_OPTION(RMSpropOptions, double, weight_decay, 0.0)
  TRAINRT_OPTIM_OPTION(RMSpropOptions, double, momentum, 0.0)
  TRAINRT_OPTIM_OPTION(RMSpropOptions, bool, centered, false)
  TRAINRT_OPTIM_OPTION(RMSpropOptions, bool, maximize, false)
 public:
  HyperParams hyper() const;
};

/// Adagrad(lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10).
class TRAINRT_API AdagradOptions {
 public:
  AdagradOptions() = default;
  explicit AdagradOptions(double lr) : lr_(lr) {}
  TRAINRT_OPTIM_OPTION(AdagradOptions, double, lr, 1e-2)
  TRAINRT_OPTIM_OPTION(AdagradOptions, double, lr_decay, 0.0)
  TRAINRT_OPTIM_OPTION(AdagradOptions, double, weight_decay, 0.0)
  TRAINRT_OPTIM_OPTION(AdagradOptions, double, initial_accumulator_value, 0.0)
  TRAINRT_OPTIM_OPTION(AdagradOptions, double, eps, 1e-10)
  TRAINRT_OPTIM_OPTION(AdagradOptions, bool, maximize, false)
 public:
  HyperParams hyper() const;
};

/// RAdam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, decoupled_weight_decay).
class TRAINRT_API RAdamOptions {
 public:
  RAdamOptions() = default;
  explicit RAdamOptions(double lr) : lr_(lr) {}
  TRAINRT_OPTIM_OPTION(RAdamOptions, double, lr, 1e-3)
  TRAINRT_OPTIM_OPTION(RAdamOptions, double, beta1, 0.9)
  TRAINRT_OPTIM_OPTION(RAdamOptions, double, beta2, 0.999)
  TRAINRT_OPTIM_OPTION(RAdamOptions, double, eps, 1e-8)
  TRAINRT_OPTIM_OPTION(RAdamOptions, double, weight_decay, 0.0)
  TRAINRT_OPTIM_OPTION(RAdamOptions, bool, decoupled_weight_decay, false)
  TRAINRT_OPTIM_OPTION(RAdamOptions, bool, maximize, false)
 public:
  RAdamOptions& betas(double b1, double b2) { return beta1(b1).beta2(b2); }
  HyperParams hyper() const;
};

/// LAMB as NVIDIA Apex FusedLAMB (adam_w_mode, bias correction, grad averaging):
/// lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, max_grad_norm=1.0, use_nvlamb.
class TRAINRT_API LAMBOptions {
 public:
  LAMBOptions() = default;
  explicit LAMBOptions(double lr) : lr_(lr) {}
  TRAINRT_OPTIM_OPTION(LAMBOptions, double, lr, 1e-3)
  TRAINRT_OPTIM_OPTION(LAMBOptions, double, beta1, 0.9)
  TRAINRT_OPTIM_OPTION(LAMBOptions, double, beta2, 0.999)
  TRAINRT_OPTIM_OPTION(LAMBOptions, double, eps, 1e-6)
  TRAINRT_OPTIM_OPTION(LAMBOptions, double, weight_decay, 0.01)
  TRAINRT_OPTIM_OPTION(LAMBOptions, double, max_grad_norm, 1.0)
  TRAINRT_OPTIM_OPTION(LAMBOptions, bool, use_nvlamb, false)
 public:
  LAMBOptions& betas(double b1, double b2) { return beta1(b1).beta2(b2); }
  HyperParams hyper() const;
};

#undef TRAINRT_OPTIM_OPTION

class TRAINRT_API SGD : public Optimizer {
 public:
  SGD(std::vector<Parameter> params, const SGDOptions& options);
  SGD(std::vector<ParamGroup> groups, const SGDOptions& options);
};

class TRAINRT_API Adam : public Optimizer {
 public:
  explicit Adam(std::vector<Parameter> params, const AdamOptions& options = AdamOptions());
  Adam(std::vector<ParamGroup> groups, const AdamOptions& options);
};

class TRAINRT_API AdamW : public Optimizer {
 public:
  explicit AdamW(std::vector<Parameter> params, const AdamWOptions& options = AdamWOptions());
  AdamW(std::vector<ParamGroup> groups, const AdamWOptions& options);
};

class TRAINRT_API RMSprop : public Optimizer {
 public:
  explicit RMSprop(std::vector<Parameter> params, const RMSpropOptions& options = RMSpropOptions());
  RMSprop(std::vector<ParamGroup> groups, const RMSpropOptions& options);
};

class TRAINRT_API Adagrad : public Optimizer {
 public:
  explicit Adagrad(std::vector<Parameter> params, const AdagradOptions& options = AdagradOptions());
  Adagrad(std::vector<ParamGroup> groups, const AdagradOptions& options);
};

class TRAINRT_API RAdam : public Optimizer {
 public:
  explicit RAdam(std::vector<Parameter> params, const RAdamOptions& options = RAdamOptions());
  RAdam(std::vector<ParamGroup> groups, const RAdamOptions& options);
};

class TRAINRT_API LAMB : public Optimizer {
 public:
  explicit LAMB(std::vector<Parameter> params, const LAMBOptions& options = LAMBOptions());
  LAMB(std::vector<ParamGroup> groups, const LAMBOptions& options);
};

/// An optimizer by name ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "RAdam", "LAMB") with
/// defaults given by name (missing ones take the algorithm's defaults; SGD needs "lr").
TRAINRT_API std::unique_ptr<Optimizer> make_optimizer(const std::string& name,
                                                      std::vector<ParamGroup> groups,
                                                      const HyperParams& defaults = HyperParams());

}  // namespace optim
}  // namespace trainrt
