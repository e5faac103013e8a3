// Parameter: a shared handle on {value, grad, model copy}. Grad and model copy are checked
// against the value when they are set, as PyTorch checks an assigned .grad.
#include "trainrt/parameter.hpp"

#include "optim_internal.hpp"

namespace trainrt {

using detail::fail;

Parameter::Parameter() = default;

Parameter::Parameter(Tensor value, std::string name)
    : impl_(std::make_shared<detail::ParameterImpl>()) {
  if (!value.defined()) fail("Parameter: value is undefined");
  impl_->value = std::move(value);
  impl_->name = std::move(name);
}

namespace {
const detail::ParameterImpl& checked(const std::shared_ptr<detail::ParameterImpl>& p) {
  if (!p) fail("Parameter: the parameter is undefined");
  return *p;
}
std::string label(const detail::ParameterImpl& p) {
  return p.name.empty() ? std::string("Parameter") : fmt::format("Parameter '{}'", p.name);
}
}  // namespace

const std::string& Parameter::name() const { return checked(impl_).name; }
Tensor Parameter::value() const { return checked(impl_).value; }
bool Parameter::has_grad() const { return checked(impl_).grad.defined(); }
Tensor Parameter::grad() const { return checked(impl_).grad; }
Tensor Parameter::model_copy() const { return checked(impl_).model_copy; }

void Parameter::set_grad(const Tensor& grad) const {
  const detail::ParameterImpl& p = checked(impl_);
  if (!grad.defined()) {
    clear_grad();
    return;
  }
  if (grad.shape() != p.value.shape()) {
    fail("{}: grad has shape {} but the parameter has shape {}", label(p), shape_str(grad.shape()),
         shape_str(p.value.shape()));
  }
  if (grad.dtype() != p.value.dtype()) {
    fail("{}: grad has dtype {} but the parameter has dtype {}", label(p), dtype_name(grad.dtype()),
         dtype_name(p.value.dtype()));
  }
  if (grad.device() != p.value.device()) {
    fail("{}: grad is on {} but the parameter is on {}", label(p), grad.device().str(),
         p.value.device().str());
  }
  // An optimizer's pending 1/scale or clip coefficient (unscale_, clip_grad_norm_(optimizer))
  // is for the grads of now, which PyTorch's calls would have rewritten: it is multiplied into
  // them first, and the new grad is used as it is.
  if (impl_->pending != nullptr) {
    detail::OptimizerAccess::settle(*impl_->pending, true, "Parameter.set_grad");
  }
  impl_->grad = grad;
}

void Parameter::clear_grad() const {
  checked(impl_);
  // A pending inf/NaN check of the optimizer still covers this grad, as PyTorch's unscale_
  // checked it before it was dropped; the other grads keep their pending multipliers.
  if (impl_->pending != nullptr) {
    detail::OptimizerAccess::run_pending_check(*impl_->pending, "Parameter.clear_grad");
  }
  impl_->grad = Tensor();
}

void Parameter::set_model_copy(const Tensor& copy) const {
  const detail::ParameterImpl& p = checked(impl_);
  if (!copy.defined()) {
    impl_->model_copy = Tensor();
    return;
  }
  if (copy.dtype() != DType::f16 && copy.dtype() != DType::bf16) {
    fail("{}: the model copy must be f16 or bf16, got {}", label(p), dtype_name(copy.dtype()));
  }
  if (copy.shape() != p.value.shape() || copy.device() != p.value.device()) {
    fail("{}: the model copy ({}) must have the value's shape and device ({})", label(p),
         copy.str(), p.value.str());
  }
  Tensor c = copy;
  c.copy_(p.value.to(copy.dtype()));
  impl_->model_copy = c;
}

}  // namespace trainrt
