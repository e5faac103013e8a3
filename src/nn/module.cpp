// Module bookkeeping (parameters, children, mode, device), seeds, Flatten and Sequential.
#include <atomic>

#include "../checks.hpp"
#include "trainrt/nn.hpp"

namespace trainrt {
namespace nn {
namespace {

std::atomic<std::uint64_t> g_seed_base{0};
std::atomic<std::uint64_t> g_seed_count{0};

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

void manual_seed(std::uint64_t seed) {
  g_seed_base = seed;
  g_seed_count = 0;
}

std::uint64_t next_seed() {
  const std::uint64_t n = g_seed_count.fetch_add(1);
  return splitmix64(splitmix64(g_seed_base.load()) + n);
}

Module::Module() = default;
Module::~Module() = default;

Parameter Module::register_parameter(const std::string& name, const Tensor& value) {
  if (name.empty() || name.find('.') != std::string::npos) {
    detail::fail("register_parameter: name '{}' must be non-empty without '.'", name);
  }
  for (const auto& p : params_) {
    if (p.first == name) detail::fail("register_parameter: '{}' is already registered", name);
  }
  detail::require_defined(value, "register_parameter", "value");
  Parameter p(value.device() == device_ ? value : value.to(device_), name);
  params_.emplace_back(name, p);
  return p;
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> module) {
  if (!module) detail::fail("register_module: module '{}' is null", name);
  if (name.empty() || name.find('.') != std::string::npos) {
    detail::fail("register_module: name '{}' must be non-empty without '.'", name);
  }
  for (const auto& c : children_) {
    if (c.first == name) detail::fail("register_module: '{}' is already registered", name);
  }
  if (module->device_ != device_) module->to(device_);
  module->train(training_);
  children_.emplace_back(name, std::move(module));
}

Parameter Module::param(const std::string& name) const {
  for (const auto& p : params_) {
    if (p.first == name) return p.second;
  }
  detail::fail("Module: no parameter named '{}'", name);
}

void Module::collect(const std::string& prefix,
                     std::vector<std::pair<std::string, Parameter>>& out) const {
  for (const auto& p : params_) out.emplace_back(prefix + p.first, p.second);
  for (const auto& c : children_) c.second->collect(prefix + c.first + ".", out);
}

std::vector<std::pair<std::string, Parameter>> Module::named_parameters() const {
  std::vector<std::pair<std::string, Parameter>> out;
  collect("", out);
  return out;
}

void Module::collect_modules(const std::string& prefix,
                             std::vector<std::pair<std::string, Module*>>& out) const {
  out.emplace_back(prefix, const_cast<Module*>(this));
  for (const auto& c : children_) c.second->collect_modules(prefix + c.first + ".", out);
}

StateDict Module::extra_state() const { return StateDict(); }

void Module::load_extra_state(const StateDict& state) {
  if (!state.empty()) {
    detail::fail(
        "load_extra_state: this module keeps no extra state, got {} tensors, {} numbers "
        "and {} strings",
        state.tensors.size(), state.scalars.size(), state.strings.size());
  }
}

StateDict Module::extra_states() const {
  std::vector<std::pair<std::string, Module*>> mods;
  collect_modules("", mods);
  StateDict out;
  for (const auto& [prefix, m] : mods) {
    const StateDict s = m->extra_state();
    for (const auto& [k, v] : s.tensors) out.tensors[prefix + k] = v;
    for (const auto& [k, v] : s.scalars) out.scalars[prefix + k] = v;
    for (const auto& [k, v] : s.strings) out.strings[prefix + k] = v;
  }
  return out;
}

namespace {

/// The entries of `from` named prefix + key with key free of '.', moved into the result.
template <class V>
void take(std::map<std::string, V>& from, const std::string& prefix, std::map<std::string, V>& to) {
  for (auto it = from.begin(); it != from.end();) {
    const std::string& k = it->first;
    if (k.size() > prefix.size() && k.compare(0, prefix.size(), prefix) == 0 &&
        k.find('.', prefix.size()) == std::string::npos) {
      to.emplace(k.substr(prefix.size()), it->second);
      it = from.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace

void Module::load_extra_states(const StateDict& states) {
  std::vector<std::pair<std::string, Module*>> mods;
  collect_modules("", mods);
  StateDict rest = states;
  std::vector<StateDict> parts(mods.size());
  for (std::size_t i = 0; i < mods.size(); ++i) {
    take(rest.tensors, mods[i].first, parts[i].tensors);
    take(rest.scalars, mods[i].first, parts[i].scalars);
    take(rest.strings, mods[i].first, parts[i].strings);
  }
  if (!rest.empty()) {
    std::string names;
    for (const auto& kv : rest.tensors) names += " '" + kv.first + "'";
    for (const auto& kv : rest.scalars) names += " '" + kv.first + "'";
    for (const auto& kv : rest.strings) names += " '" + kv.first + "'";
    detail::fail("load_extra_states: no module owns{}", names);
  }
  std::vector<StateDict> before;
  before.reserve(mods.size());
  for (const auto& m : mods) before.push_back(m.second->extra_state());
  std::size_t i = 0;
  try {
    for (; i < mods.size(); ++i) mods[i].second->load_extra_state(parts[i]);
  } catch (const Error& e) {
    for (std::size_t j = 0; j < i; ++j) mods[j].second->load_extra_state(before[j]);
    const std::string name =
        mods[i].first.empty()
            ? std::string("the model")
            : "module '" + mods[i].first.substr(0, mods[i].first.size() - 1) + "'";
    detail::fail("load_extra_states: {}: {}", name, e.what());
  }
}

std::vector<Parameter> Module::parameters() const {
  std::vector<Parameter> out;
  for (auto& p : named_parameters()) out.push_back(p.second);
  return out;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& c : children_) c.second->train(on);
}

void Module::to(Device device) {
  for (auto& p : params_) {
    if (p.second.value().device() == device) continue;
    Parameter moved(p.second.value().to(device), p.first);
    const Tensor copy = p.second.model_copy();
    if (copy.defined()) moved.set_model_copy(Tensor::empty(copy.shape(), copy.dtype(), device));
    p.second = moved;
  }
  device_ = device;
  clear_state();
  for (auto& c : children_) c.second->to(device);
}

void Module::zero_grad(bool set_to_none) {
  for (auto& p : parameters()) {
    if (set_to_none) {
      p.clear_grad();
    } else if (p.has_grad()) {
      p.grad().zero_();
    }
  }
}

void Module::clear_state() {}

void Module::require_forward(const Tensor& saved, const char* what) {
  if (!saved.defined()) detail::fail("{}: backward called before forward", what);
}

// ---- Flatten ------------------------------------------------------------------------------

Flatten::Flatten(std::int64_t start_dim, std::int64_t end_dim) : start_(start_dim), end_(end_dim) {}

Tensor Flatten::forward(const Tensor& input) {
  detail::require_defined(input, "Flatten", "input");
  const std::int64_t d = input.dim();
  const std::int64_t s = start_ < 0 ? start_ + d : start_;
  const std::int64_t e = end_ < 0 ? end_ + d : end_;
  if (s < 0 || e >= d || s > e) {
    detail::fail("Flatten: dims {}..{} out of range for input {}", start_, end_, input.str());
  }
  Shape out;
  for (std::int64_t i = 0; i < s; ++i) out.push_back(input.shape()[i]);
  std::int64_t m = 1;
  for (std::int64_t i = s; i <= e; ++i) m *= input.shape()[i];
  out.push_back(m);
  for (std::int64_t i = e + 1; i < d; ++i) out.push_back(input.shape()[i]);
  in_shape_ = input.shape();
  out_shape_ = out;
  has_forward_ = true;
  return input.reshape(out);
}

Tensor Flatten::backward(const Tensor& grad_output) {
  if (!has_forward_) detail::fail("Flatten: backward called before forward");
  detail::require_defined(grad_output, "Flatten", "grad_output");
  if (grad_output.shape() != out_shape_) {
    detail::fail("Flatten: grad_output {} must have the output shape {}", grad_output.str(),
                 shape_str(out_shape_));
  }
  return grad_output.reshape(in_shape_);
}

void Flatten::clear_state() { has_forward_ = false; }

// ---- Sequential ---------------------------------------------------------------------------

Sequential::Sequential() = default;

Sequential::Sequential(std::initializer_list<std::shared_ptr<Module>> modules) {
  for (const auto& m : modules) add(m);
}

Sequential& Sequential::add(std::shared_ptr<Module> module) {
  register_module(std::to_string(children().size()), std::move(module));
  return *this;
}

std::shared_ptr<Module> Sequential::operator[](std::size_t i) const {
  if (i >= children().size()) {
    detail::fail("Sequential: index {} out of range for {} modules", i, children().size());
  }
  return children()[i].second;
}

Tensor Sequential::forward(const Tensor& input) {
  Tensor x = input;
  for (const auto& c : children()) x = c.second->forward(x);
  return x;
}

Tensor Sequential::backward(const Tensor& grad_output) {
  Tensor g = grad_output;
  const auto& ch = children();
  if (input_grad()) {
    for (auto it = ch.rbegin(); it != ch.rend(); ++it) g = it->second->backward(g);
    return g;
  }
  // No input gradient wanted: the children before the first one with parameters are not
  // run backward, and that one is asked for no input gradient either.
  std::size_t first = ch.size();
  for (std::size_t i = 0; i < ch.size(); ++i) {
    if (!ch[i].second->parameters().empty()) {
      first = i;
      break;
    }
  }
  for (std::size_t i = ch.size(); i > first; --i) {
    Module& m = *ch[i - 1].second;
    if (i - 1 == first) {
      const bool keep = m.input_grad();
      m.set_input_grad(false);
      try {
        m.backward(g);
      } catch (...) {
        m.set_input_grad(keep);
        throw;
      }
      m.set_input_grad(keep);
    } else {
      g = m.backward(g);
    }
  }
  return Tensor();
}

}  // namespace nn
}  // namespace trainrt
