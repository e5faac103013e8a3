// Parameter: a trainable value (f32 master weights) with its gradient and an optional
// low-precision model copy, shared by handle like torch.nn.Parameter: copies of a Parameter
// refer to the same parameter, so an optimizer sees the grad the training loop assigns.
//
//   trainrt::Parameter w(trainrt::Tensor::zeros({256, 784}, trainrt::DType::f32), "fc1.weight");
//   w.set_grad(grad);            // after backward; same shape, dtype and device as the value
//   w.set_model_copy(w_bf16);    // optional f16/bf16 copy the optimizer rewrites in its pass
#pragma once

#include <memory>
#include <string>

#include "trainrt/export.hpp"
#include "trainrt/tensor.hpp"

namespace trainrt {

namespace detail {
struct ParameterImpl;
struct ParameterAccess;
}  // namespace detail

class TRAINRT_API Parameter {
 public:
  /// An undefined parameter (defined() is false).
  Parameter();
  /// Wraps `value` (shares its storage). Throws if it is undefined.
  explicit Parameter(Tensor value, std::string name = {});

  bool defined() const { return impl_ != nullptr; }
  const std::string& name() const;
  /// The value tensor (shares storage: in-place changes are the parameter's).
  Tensor value() const;

  bool has_grad() const;
  /// The gradient; undefined when there is none (e.g. after zero_grad()).
  Tensor grad() const;
  /// Sets the gradient. Throws trainrt::Error unless it has the value's shape, dtype and device;
  /// an undefined tensor removes the gradient, as clear_grad() (PyTorch's `p.grad = None`).
  void set_grad(const Tensor& grad) const;
  /// Removes the gradient (zero_grad(set_to_none = true) does this).
  void clear_grad() const;

  /// The low-precision model copy (f16 or bf16, the value's shape and device) that optimizer
  /// steps rewrite from the updated value in the same pass; undefined when none.
  Tensor model_copy() const;
  /// Sets the model copy and fills it from the current value. Throws unless f16/bf16 of the
  /// value's shape on its device. An undefined tensor removes the copy.
  void set_model_copy(const Tensor& copy) const;

  /// Same parameter (not just equal values).
  bool operator==(const Parameter& o) const { return impl_ == o.impl_; }
  bool operator!=(const Parameter& o) const { return impl_ != o.impl_; }

 private:
  friend struct detail::ParameterAccess;
  std::shared_ptr<detail::ParameterImpl> impl_;
};

}  // namespace trainrt
