// Layers (nn): modules with explicit forward and backward, PyTorch-style parameters.
//
// A Module computes forward(input), keeping what its backward needs, and backward(grad_output)
// returns the input gradient and accumulates the parameter gradients into its Parameters
// (the handles of optim.hpp, so an optimizer built from parameters() sees them):
//
//   auto model = std::make_shared<trainrt::nn::Sequential>();
//   model->add(std::make_shared<trainrt::nn::Linear>(784, 256));
//   model->add(std::make_shared<trainrt::nn::ReLU>());
//   model->add(std::make_shared<trainrt::nn::Linear>(256, 10));
//   model->to(trainrt::Device::cuda());      // before building the optimizer
//   trainrt::optim::SGD opt(model->parameters(), trainrt::optim::SGDOptions(0.1));
//   auto logits = model->forward(x);
//   auto loss = trainrt::cross_entropy(logits, y);
//   model->backward(loss.grad);
//   opt.step();
//
// Gradients accumulate (+=) as in PyTorch: zero_grad() between steps. Initial values come
// from Philox keyed by a seed (the same numbers on every device); nn::manual_seed fixes the
// seeds that modules built without an explicit one draw.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "trainrt/device.hpp"
#include "trainrt/dtype.hpp"
#include "trainrt/export.hpp"
#include "trainrt/parameter.hpp"
#include "trainrt/state_dict.hpp"
#include "trainrt/tensor.hpp"

namespace trainrt {
namespace nn {

/// Sets the base of the seeds next_seed() hands out and restarts its sequence.
TRAINRT_API void manual_seed(std::uint64_t seed);
/// A fresh seed for a module built without one: a fixed function of the manual_seed base
/// (default 0) and the number of seeds handed out so far.
TRAINRT_API std::uint64_t next_seed();

class TRAINRT_API Module {
 public:
  Module();
  virtual ~Module();
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  /// Computes the output and keeps what backward() needs.
  virtual Tensor forward(const Tensor& input) = 0;
  /// The gradient with respect to the last forward()'s input, given the gradient with respect
  /// to its output; accumulates parameter gradients. Throws if forward() has not run.
  virtual Tensor backward(const Tensor& grad_output) = 0;
  Tensor operator()(const Tensor& input) { return forward(input); }

  /// This module's and its children's parameters, depth first in registration order.
  std::vector<Parameter> parameters() const;
  /// The same with dotted names ("0.weight", "fc1.bias").
  std::vector<std::pair<std::string, Parameter>> named_parameters() const;
  /// Direct children in registration order.
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const {
    return children_;
  }

  /// Training mode (dropout active); applies to the children too.
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  /// Moves every parameter (value and model copy) to `device`, replacing the Parameter
  /// handles: take parameters() for an optimizer after this. Gradients and the state kept
  /// for backward are dropped.
  void to(Device device);
  Device device() const { return device_; }

  /// Removes the gradients (set_to_none = true) or zeroes them in place.
  void zero_grad(bool set_to_none = true);

  /// Whether backward() must return the input gradient (default true). Set it to false on a
  /// model whose input needs no gradient (the data), as PyTorch skips it: Linear then skips
  /// the dx GEMM and Sequential stops at its first child with parameters; both return an
  /// undefined Tensor.
  void set_input_grad(bool on) { input_grad_ = on; }
  bool input_grad() const { return input_grad_; }

  /// State that is not a parameter but that a resumed run needs (PyTorch's get_extra_state /
  /// set_extra_state): empty by default; Dropout's is its seed and offset. Override both in a
  /// module that keeps such state; load_extra_state must throw trainrt::Error, changing
  /// nothing, when `state` does not fit.
  virtual StateDict extra_state() const;
  virtual void load_extra_state(const StateDict& state);
  /// The extra states of this module and its children in one StateDict, each key prefixed
  /// with the module's dotted name ("2.offset"; the model's own keys unprefixed). The Trainer
  /// saves it in its checkpoints.
  StateDict extra_states() const;
  /// Restores extra_states(). Throws trainrt::Error, leaving every module as it was, when a
  /// module's state is missing or does not fit, or `states` holds keys no module owns.
  void load_extra_states(const StateDict& states);

 protected:
  /// Registers a parameter under `name`; returns its handle (valid until to()).
  Parameter register_parameter(const std::string& name, const Tensor& value);
  /// Registers a child module under `name`.
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
    add_child(name, module);
    return module;
  }
  /// The current handle of a parameter registered by this module (throws if unknown).
  Parameter param(const std::string& name) const;
  /// Drops whatever forward() kept (called by to()). Override when you keep tensors.
  virtual void clear_state();
  /// Throws trainrt::Error("<what>: backward called before forward") when !saved.defined().
  static void require_forward(const Tensor& saved, const char* what);

 private:
  void add_child(const std::string& name, std::shared_ptr<Module> module);
  void collect(const std::string& prefix,
               std::vector<std::pair<std::string, Parameter>>& out) const;
  void collect_modules(const std::string& prefix,
                       std::vector<std::pair<std::string, Module*>>& out) const;

  std::vector<std::pair<std::string, Parameter>> params_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
  bool input_grad_ = true;
  Device device_;
};

/// y = x W^T + b over the last dimension of x ([*, in] -> [*, out]). weight [out, in] and
/// bias [out] of `dtype` (f32 or f64), initialised as PyTorch: U(-1/sqrt(in), 1/sqrt(in)).
/// GEMMs: OpenBLAS on the CPU, cuBLAS on CUDA. Mixed precision: an f16/bf16 input with f32
/// parameters multiplies by the weight's model copy (or the weight rounded to the input's
/// dtype) with f32 accumulation; the output is of the input's dtype, the parameter
/// gradients are f32.
class TRAINRT_API Linear : public Module {
 public:
  Linear(std::int64_t in_features, std::int64_t out_features, bool bias = true,
         std::uint64_t seed = next_seed(), DType dtype = DType::f32);

  Tensor forward(const Tensor& input) override;
  Tensor backward(const Tensor& grad_output) override;

  Parameter weight() const;
  /// Undefined when built without bias.
  Parameter bias() const;
  std::int64_t in_features() const { return in_; }
  std::int64_t out_features() const { return out_; }

 protected:
  void clear_state() override;

 private:
  std::int64_t in_, out_;
  bool has_bias_;
  Tensor input_;      // [rows, in] as given to the last forward
  Tensor weight_op_;  // the weight as multiplied (the model copy / rounded copy, or the value)
  Shape out_shape_;
};

/// Element-wise activations with fused forward / backward kernels.
class TRAINRT_API Activation : public Module {
 public:
  Tensor forward(const Tensor& input) override;
  Tensor backward(const Tensor& grad_output) override;

 protected:
  explicit Activation(int kind, const char* name);
  void clear_state() override;

 private:
  int kind_;
  const char* name_;
  Tensor saved_;  // x (ReLU, GELU) or y (Tanh, Sigmoid)
};

class TRAINRT_API ReLU : public Activation {
 public:
  ReLU();
};
/// Exact (erf) form, PyTorch's default approximate='none'.
class TRAINRT_API GELU : public Activation {
 public:
  GELU();
};
class TRAINRT_API Tanh : public Activation {
 public:
  Tanh();
};
class TRAINRT_API Sigmoid : public Activation {
 public:
  Sigmoid();
};

/// In training mode zeroes each element with probability p and scales the rest by
/// 1/(1-p); the identity in eval mode. The mask comes from Philox keyed by `seed` and by the
/// number of training forwards so far (offset()), so a device gives the same mask as the
/// CPU for the same seed and offset; backward regenerates it.
class TRAINRT_API Dropout : public Module {
 public:
  explicit Dropout(double p = 0.5, std::uint64_t seed = next_seed());

  Tensor forward(const Tensor& input) override;
  Tensor backward(const Tensor& grad_output) override;

  double p() const { return p_; }
  std::uint64_t seed() const { return seed_; }
  /// Offset the next training forward will use (restore it to resume a run).
  std::uint64_t offset() const { return offset_; }
  void set_offset(std::uint64_t offset) { offset_ = offset; }

  /// "seed" and "offset" (decimal strings: 64-bit values do not fit a double).
  StateDict extra_state() const override;
  void load_extra_state(const StateDict& state) override;

 protected:
  void clear_state() override;

 private:
  double p_;
  std::uint64_t seed_;
  std::uint64_t offset_ = 0;
  std::uint64_t used_offset_ = 0;
  bool applied_ = false;  // the last forward dropped (training mode, p > 0)
  Shape shape_;
  DType dtype_ = DType::f32;
  bool has_forward_ = false;
};

/// Merges dimensions start_dim..end_dim into one ([N, C, H, W] -> [N, C*H*W] by default).
class TRAINRT_API Flatten : public Module {
 public:
  explicit Flatten(std::int64_t start_dim = 1, std::int64_t end_dim = -1);

  Tensor forward(const Tensor& input) override;
  Tensor backward(const Tensor& grad_output) override;

 protected:
  void clear_state() override;

 private:
  std::int64_t start_, end_;
  Shape in_shape_, out_shape_;
  bool has_forward_ = false;
};

/// Runs its modules in order (forward) and in reverse (backward); children are named
/// "0", "1", ...
class TRAINRT_API Sequential : public Module {
 public:
  Sequential();
  Sequential(std::initializer_list<std::shared_ptr<Module>> modules);

  /// Appends a module; returns *this.
  Sequential& add(std::shared_ptr<Module> module);
  std::size_t size() const { return children().size(); }
  std::shared_ptr<Module> operator[](std::size_t i) const;

  Tensor forward(const Tensor& input) override;
  Tensor backward(const Tensor& grad_output) override;
};

}  // namespace nn
}  // namespace trainrt
