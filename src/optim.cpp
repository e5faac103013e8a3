// Optimizer front end: hyperparameter checks, parameter groups, lazily created f32 state,
// state_dict round trips, and the step: parameters with a grad are bucketed per group by
// (step count, fresh momentum buffer, model-copy dtype), the per-step scalars of every bucket
// are computed in double on the host and uploaded in one copy, and each bucket is one
// optimizer_step call (one fused pass over all of its tensors).
//
// A pending GradScaler unscale / fused clip lives in the optimizer's grad scalars block. When
// it is active the step's kernel reads it (and skips itself on found_inf); the host then reads
// found_inf (one 4-byte copy) to know whether the step counts advance and whether the state
// created for this step must be dropped, so a skipped step leaves no trace.
//
// A capturable optimizer (set_capturable) keeps the step counts on the device instead: the
// buckets are (group, fresh momentum buffer, model-copy dtype), the kernels derive each tensor's
// t-dependent scalars from its device count and advance it (not on a skipped step), the blocks are
// uploaded only when they change, and once an iteration has run eagerly step() makes no host
// transfer, so the step can be captured in a CUDA graph (docs/DESIGN-NOTES.md, "Capturable
// steps and CUDA graphs").
#include "trainrt/optim.hpp"

#include <cmath>
#include <limits>
#include <set>
#include <tuple>

#include "../kernels/common/optim.h"
#include "checks.hpp"
#include "optim_internal.hpp"

namespace trainrt {
namespace detail {

// ---- algorithms ----------------------------------------------------------------------------

enum Algo : int { kSGD = 0, kAdam, kAdamW, kRMSprop, kAdagrad, kRAdam, kLAMB };

using optim::HyperParams;

/// Up to three names; trivially destructible, so that the table below outlives every
/// optimizer, also one in a global destroyed at exit (ctest scheduler_destroyed_at_exit).
struct NameList {
  const char* v[3] = {};
  std::size_t n = 0;
  NameList(std::initializer_list<const char*> l) {
    for (const char* x : l) v[n++] = x;
  }
  const char* const* begin() const { return v; }
  const char* const* end() const { return v + n; }
  std::size_t size() const { return n; }
  const char* operator[](std::size_t i) const { return v[i]; }
};

struct AlgoSpec {
  const char* name;
  std::int32_t kernel_algo;
  NameList flags;   // hyperparameters that are 0/1 flags
  NameList states;  // state buffer names, by kernel list index ("" = unused)
};

const AlgoSpec& spec_of(int algo) {
  static const AlgoSpec specs[] = {
      {"SGD", TRAINRT_OPTIM_SGD, {"nesterov", "maximize"}, {"momentum_buffer"}},
      {"Adam",
       TRAINRT_OPTIM_ADAM,
       {"amsgrad", "maximize"},
       {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}},
      {"AdamW",
       TRAINRT_OPTIM_ADAM,
       {"amsgrad", "maximize"},
       {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}},
      {"RMSprop",
       TRAINRT_OPTIM_RMSPROP,
       {"centered", "maximize"},
       {"square_avg", "momentum_buffer", "grad_avg"}},
      {"Adagrad", TRAINRT_OPTIM_ADAGRAD, {"maximize"}, {"sum"}},
      {"RAdam",
       TRAINRT_OPTIM_RADAM,
       {"decoupled_weight_decay", "maximize"},
       {"exp_avg", "exp_avg_sq"}},
      {"LAMB", TRAINRT_OPTIM_LAMB, {"use_nvlamb"}, {"exp_avg", "exp_avg_sq"}},
  };
  if (algo < 0 || algo > kLAMB) fail("Optimizer: unknown algorithm {}", algo);
  return specs[algo];
}

int algo_index(const AlgoSpec* s) {
  for (int a = kSGD; a <= kLAMB; ++a)
    if (&spec_of(a) == s) return a;
  return -1;
}

bool flag(const HyperParams& h, const char* k) { return h.at(k) != 0.0; }

/// Checks a complete set of hyperparameters; `where` names the group.
void validate(const AlgoSpec& spec, const HyperParams& defaults, const HyperParams& h,
              const std::string& where) {
  const char* n = spec.name;
  for (const auto& kv : h) {
    if (defaults.count(kv.first) == 0) {
      std::string known;
      for (const auto& d : defaults) known += (known.empty() ? "" : ", ") + d.first;
      fail("{}: unknown hyperparameter '{}' in {} (accepted: {})", n, kv.first, where, known);
    }
    if (!std::isfinite(kv.second)) {
      fail("{}: {} must be finite in {}, got {}", n, kv.first, where, kv.second);
    }
    // The kernels take every hyperparameter as an f32 scalar: one beyond its range would
    // become inf there (PyTorch refuses it at the step: "cannot be converted to type float
    // without overflow").
    if (!std::isfinite(static_cast<float>(kv.second))) {
      fail("{}: {} must be within the f32 range (|x| <= {}) in {}, got {}", n, kv.first,
           std::numeric_limits<float>::max(), where, kv.second);
    }
  }
  for (const auto& d : defaults) {
    if (h.count(d.first) == 0) fail("{}: hyperparameter '{}' is missing in {}", n, d.first, where);
  }
  for (const char* f : spec.flags) {
    const double v = h.at(f);
    if (v != 0.0 && v != 1.0) fail("{}: {} is a flag (0 or 1) in {}, got {}", n, f, where, v);
  }
  auto nonneg = [&](const char* k) {
    if (h.count(k) && !(h.at(k) >= 0.0))
      fail("{}: {} must be >= 0 in {}, got {}", n, k, where, h.at(k));
  };
  auto beta = [&](const char* k) {
    if (h.count(k) && !(h.at(k) >= 0.0 && h.at(k) < 1.0)) {
      fail("{}: {} must be in [0, 1) in {}, got {}", n, k, where, h.at(k));
    }
  };
  for (const char* k : {"lr", "eps", "weight_decay", "momentum", "alpha", "lr_decay",
                        "initial_accumulator_value"}) {
    nonneg(k);
  }
  beta("beta1");
  beta("beta2");
  if (h.count("max_grad_norm") && !(h.at("max_grad_norm") > 0.0)) {
    fail("{}: max_grad_norm must be > 0 in {}, got {}", n, where, h.at("max_grad_norm"));
  }
  if (h.count("nesterov") && flag(h, "nesterov") &&
      (h.at("momentum") <= 0.0 || h.at("dampening") != 0.0)) {
    fail(
        "{}: nesterov momentum requires a momentum > 0 and zero dampening in {} (momentum {}, "
        "dampening {})",
        n, where, h.at("momentum"), h.at("dampening"));
  }
}

/// Which state lists a step needs for these hyperparameters.
std::vector<bool> needed_states(int algo, const HyperParams& h) {
  switch (algo) {
    case kSGD: return {h.at("momentum") != 0.0};
    case kAdam:
    case kAdamW: return {true, true, flag(h, "amsgrad")};
    case kRMSprop: return {true, h.at("momentum") > 0.0, flag(h, "centered")};
    case kAdagrad: return {true};
    default: return {true, true};
  }
}

double state_initial_value(int algo, const HyperParams& h) {
  return algo == kAdagrad ? h.at("initial_accumulator_value") : 0.0;
}

std::uint32_t kernel_flags(int algo, const HyperParams& h) {
  std::uint32_t f = 0;
  if (h.count("maximize") && flag(h, "maximize")) f |= TRAINRT_OPTIM_MAXIMIZE;
  const double wd = h.count("weight_decay") ? h.at("weight_decay") : 0.0;
  switch (algo) {
    case kSGD:
      if (wd != 0.0) f |= TRAINRT_OPTIM_L2;
      if (h.at("momentum") != 0.0) f |= TRAINRT_OPTIM_MOMENTUM;
      if (flag(h, "nesterov")) f |= TRAINRT_OPTIM_NESTEROV;
      break;
    case kAdam:
      if (wd != 0.0) f |= TRAINRT_OPTIM_L2;
      if (flag(h, "amsgrad")) f |= TRAINRT_OPTIM_AMSGRAD;
      break;
    case kAdamW:
      f |= TRAINRT_OPTIM_DECOUPLED;
      if (flag(h, "amsgrad")) f |= TRAINRT_OPTIM_AMSGRAD;
      break;
    case kRMSprop:
      if (wd != 0.0) f |= TRAINRT_OPTIM_L2;
      if (h.at("momentum") > 0.0) f |= TRAINRT_OPTIM_MOMENTUM;
      if (flag(h, "centered")) f |= TRAINRT_OPTIM_CENTERED;
      break;
    case kAdagrad:
      if (wd != 0.0) f |= TRAINRT_OPTIM_L2;
      break;
    case kRAdam:
      if (wd != 0.0)
        f |= flag(h, "decoupled_weight_decay") ? TRAINRT_OPTIM_DECOUPLED : TRAINRT_OPTIM_L2;
      break;
    case kLAMB:
      if (flag(h, "use_nvlamb")) f |= TRAINRT_OPTIM_NVLAMB;
      break;
  }
  return f;
}

/// The hyperparameters a step's t-dependent scalars are computed from (TRAINRT_OH_*).
void fill_hyper(int algo, const HyperParams& h, double* o) {
  for (int i = 0; i < TRAINRT_OH_COUNT; ++i) o[i] = 0.0;
  auto get = [&](const char* k) { return h.count(k) ? h.at(k) : 0.0; };
  o[TRAINRT_OH_LR] = h.at("lr");
  o[TRAINRT_OH_BETA1] = get("beta1");
  o[TRAINRT_OH_BETA2] = get("beta2");
  o[TRAINRT_OH_LR_DECAY] = get("lr_decay");
  if (algo == kSGD) {
    o[TRAINRT_OH_MOMENTUM] = h.at("momentum");
    o[TRAINRT_OH_DAMPENING] = h.at("dampening");
  }
}

/// The optimizer scalars block for step count t (after this step), each value computed in
/// double and rounded once to f32, as PyTorch passes Python floats to its tensor ops. The
/// t-dependent entries come from derive_step_scalars (kernels/common/optim.h), which a
/// capturable step's kernels evaluate on the device instead.
void fill_scalars(int algo, const HyperParams& h, std::int64_t t, bool fresh, float* s) {
  for (int i = 0; i < TRAINRT_OS_COUNT; ++i) s[i] = 0.0f;
  const double lr = h.at("lr");
  const double wd = h.count("weight_decay") ? h.at("weight_decay") : 0.0;
  s[TRAINRT_OS_LR] = static_cast<float>(lr);
  s[TRAINRT_OS_WEIGHT_DECAY] = static_cast<float>(wd);
  s[TRAINRT_OS_DECAY] = static_cast<float>(1.0 - lr * wd);
  if (h.count("eps")) s[TRAINRT_OS_EPS] = static_cast<float>(h.at("eps"));
  if (h.count("beta1")) {
    const double b1 = h.at("beta1"), b2 = h.at("beta2");
    s[TRAINRT_OS_BETA1] = static_cast<float>(b1);
    s[TRAINRT_OS_OMB1] = static_cast<float>(1.0 - b1);
    s[TRAINRT_OS_BETA2] = static_cast<float>(b2);
    s[TRAINRT_OS_OMB2] = static_cast<float>(1.0 - b2);
  }
  switch (algo) {
    case kSGD: s[TRAINRT_OS_MOMENTUM] = static_cast<float>(h.at("momentum")); break;
    case kRMSprop: {
      const double a = h.at("alpha");
      s[TRAINRT_OS_MOMENTUM] = static_cast<float>(h.at("momentum"));
      s[TRAINRT_OS_BETA2] = static_cast<float>(a);
      s[TRAINRT_OS_OMB2] = static_cast<float>(1.0 - a);
      break;
    }
    case kLAMB: s[TRAINRT_OS_MAX_GRAD_NORM] = static_cast<float>(h.at("max_grad_norm")); break;
    default: break;
  }
  double hyper[TRAINRT_OH_COUNT];
  fill_hyper(algo, h, hyper);
  kern::derive_step_scalars(spec_of(algo).kernel_algo, hyper, t, fresh, s);
}

// ---- device helpers --------------------------------------------------------------------------

float read_device_float(Device device, const float* p) {
  const trainrt_backend_v1& api = backend_for(device);
  float v = 0.0f;
  check_backend(api, api.copy(device.index(), &v, p, sizeof v, TRAINRT_COPY_D2H),
                "reading a device scalar");
  return v;
}

void write_device_floats(Device device, float* dst, const float* src, std::size_t n) {
  const trainrt_backend_v1& api = backend_for(device);
  check_backend(api, api.copy(device.index(), dst, src, n * sizeof(float), TRAINRT_COPY_H2D),
                "writing device scalars");
}

void device_copy(Device device, void* dst, const void* src, std::size_t bytes, int kind,
                 const char* what) {
  const trainrt_backend_v1& api = backend_for(device);
  check_backend(api, api.copy(device.index(), dst, src, bytes, kind), what);
}

bool device_capturing(Device device) {
  const trainrt_backend_v1& api = backend_for(device);
  if (api.graph_capturing == nullptr) return false;
  std::int32_t c = 0;
  check_backend(api, api.graph_capturing(device.index(), &c), "querying graph capture");
  return c != 0;
}

void refuse_read_in_capture(const OptimizerImpl& o, const char* what) {
  if (device_capturing(o.device)) {
    fail(
        "{}: {} reads from the device, which a CUDA graph capture cannot; call it after "
        "capture_end()",
        o.spec->name, what);
  }
}

void retire(OptimizerImpl& o, const Tensor& t) {
  if (t.defined() && o.ever_captured) o.retired.push_back(t);
}

void resolve_skipped_states(OptimizerImpl& o) {
  if (o.pending_created.empty()) return;
  if (device_capturing(o.device)) {  // a graph uses them now: they stay
    o.pending_created.clear();
    return;
  }
  const bool skipped =
      read_device_float(o.device, static_cast<const float*>(o.skip_flag.data())) != 0.0f;
  if (skipped) {
    for (const auto& c : o.pending_created) {
      Tensor& t = o.slots[c.first].state[c.second];
      retire(o, t);
      t = Tensor();
    }
  }
  o.pending_created.clear();
}

/// A parameter's step count: on the device while it has one (capturable steps).
std::int64_t slot_step(const OptimizerImpl& o, const ParamSlot& s) {
  if (!s.device_step.defined()) return s.step;
  refuse_read_in_capture(o, "a step count (step_count, state_dict)");
  std::int64_t v = 0;
  device_copy(o.device, &v, s.device_step.data(), sizeof v, TRAINRT_COPY_D2H,
              "reading a step count");
  return v;
}

float* OptimizerAccess::activate_grad_scalars(OptimizerImpl& o) {
  // Checked before anything is made: memory allocated during a capture belongs to the graph.
  const bool swap = !o.gs_active && o.found_inf_held;
  const bool needs_host = !o.grad_scalars.defined() || (swap && !o.gs_spare.defined()) ||
                          (!o.gs_active && (!o.capturable || !o.gs_init.defined()));
  if (needs_host && device_capturing(o.device)) {
    fail("{}: {} during a CUDA graph capture; {}", o.spec->name,
         o.capturable ? "the first GradScaler unscale_ or fused clip of a capturable optimizer runs"
                      : "a GradScaler unscale_ or fused clip of an ordinary optimizer runs",
         o.capturable ? "run one iteration before capturing"
                      : "call set_capturable(true) and run one iteration before capturing");
  }
  if (!o.grad_scalars.defined())
    o.grad_scalars = Tensor::empty({TRAINRT_GS_COUNT}, DType::f32, o.device);
  if (swap) {
    // GradScaler.step recorded this block's found_inf and its update() has not read it yet
    // (a fused clip between step and update): the scaler keeps the block, the optimizer goes
    // on with its spare (two blocks in turn; the spare is made once).
    if (!o.gs_spare.defined()) o.gs_spare = Tensor::empty({TRAINRT_GS_COUNT}, DType::f32, o.device);
    std::swap(o.grad_scalars, o.gs_spare);
    o.found_inf_held = false;
  }
  float* gs = static_cast<float*>(o.grad_scalars.data());
  if (!o.gs_active) {
    const float init[TRAINRT_GS_COUNT] = {1.0f, 1.0f, 0.0f, 0.0f};
    if (o.capturable) {
      // A device-to-device copy from a block written once: capturable in a CUDA graph.
      if (!o.gs_init.defined()) {
        o.gs_init = Tensor::from_vector(std::vector<float>(init, init + TRAINRT_GS_COUNT),
                                        {TRAINRT_GS_COUNT}, o.device);
      }
      device_copy(o.device, gs, o.gs_init.data(), sizeof init, TRAINRT_COPY_D2D,
                  "resetting the grad scalars block");
    } else {
      write_device_floats(o.device, gs, init, TRAINRT_GS_COUNT);
    }
    o.gs_active = true;
  }
  return gs;
}

TensorList OptimizerAccess::grads(const OptimizerImpl& o) {
  TensorList l;
  for (const ParamSlot& s : o.slots) {
    const ParameterImpl& p = ParameterAccess::impl(s.param);
    if (p.grad.defined()) l.add(p.grad);
  }
  return l;
}

std::vector<Parameter> OptimizerAccess::params(const OptimizerImpl& o) {
  std::vector<Parameter> v;
  for (const ParamSlot& s : o.slots) v.push_back(s.param);
  return v;
}

void OptimizerAccess::mark_pending(OptimizerImpl& o, bool pending) {
  for (ParamSlot& s : o.slots) {
    ParameterImpl& p = ParameterAccess::impl(s.param);
    if (pending) {
      p.pending = &o;
    } else if (p.pending == &o) {
      p.pending = nullptr;
    }
  }
}

void OptimizerAccess::run_pending_check(OptimizerImpl& o, const char* op) {
  if (!o.gs_active || !o.check_pending) return;
  const TensorList g = grads(o);
  if (g.size() == 0) return;
  const trainrt_backend_v1& api = backend_for(o.device);
  float* gs = static_cast<float*>(o.grad_scalars.data());
  trainrt_multi_tensor_norm_args a{};
  a.n_tensors = static_cast<std::int64_t>(g.size());
  a.tensors = g.ptrs.data();
  a.dtypes = g.dtypes.data();
  a.numels = g.numels.data();
  a.norm_type = 0.0;  // the non-finite check only
  a.grad_scalars = gs;
  a.found_inf = gs + TRAINRT_GS_FOUND_INF;
  check_backend(api, api.multi_tensor_norm(o.device.index(), &a), op);
  o.check_pending = false;
  o.inf_recorded = true;
}

void OptimizerAccess::settle(OptimizerImpl& o, bool apply, const char* op) {
  if (!o.gs_active) return;
  run_pending_check(o, op);
  if (o.unscale_pending || o.clip_pending) {
    float* gs = static_cast<float*>(o.grad_scalars.data());
    const TensorList g = grads(o);
    if (apply && g.size() > 0) {
      const trainrt_backend_v1& api = backend_for(o.device);
      std::vector<void*> ptrs(g.ptrs.begin(), g.ptrs.end());
      trainrt_multi_tensor_scale_args a{};
      a.n_tensors = static_cast<std::int64_t>(g.size());
      a.tensors = ptrs.data();
      a.dtypes = g.dtypes.data();
      a.numels = g.numels.data();
      a.grad_scalars = gs;  // v = (v * 1/scale) * clip coefficient
      a.clamp_lo = -INFINITY;
      a.clamp_hi = INFINITY;
      check_backend(api, api.multi_tensor_scale(o.device.index(), &a), op);
    }
    static_assert(TRAINRT_GS_INV_SCALE == 0 && TRAINRT_GS_CLIP_COEF == 1, "block layout");
    if (o.gs_init.defined()) {  // capturable: {1, 1} device to device
      device_copy(o.device, gs, o.gs_init.data(), 2 * sizeof(float), TRAINRT_COPY_D2D, op);
    } else {
      const float ones[2] = {1.0f, 1.0f};
      write_device_floats(o.device, gs, ones, 2);
    }
    o.unscale_pending = false;
    o.clip_pending = false;
  }
  mark_pending(o, false);
}

}  // namespace detail

namespace optim {

using detail::fail;
using detail::OptimizerImpl;
using detail::ParameterAccess;
using detail::ParameterImpl;
using detail::ParamSlot;

namespace {

/// Capturable steps: one scalars block and one hyperparameter block per possible bucket,
/// at a fixed slot (capturable_slot), so a graph reads the right group's values whichever
/// buckets later eager steps use. Writes the whole table into the device buffers unless they
/// hold it already (a captured step must not copy from the host); the ordinary step has a
/// buffer of its own. Records each group's kernel flags (fixed in a captured launch).
constexpr std::size_t kSlotsPerGroup = 6;  // fresh momentum buffer x model copy (none, f16, bf16)

std::size_t capturable_slot(std::size_t group, bool fresh, int model_dtype) {
  const std::size_t copy = model_dtype < 0 ? 0 : static_cast<std::size_t>(model_dtype);  // 1, 2
  return group * kSlotsPerGroup + (fresh ? 3 : 0) + copy;
}

void upload_step_blocks(OptimizerImpl& I, int algo, const std::string& name, bool capturing) {
  const std::size_t n_slots = I.groups.size() * kSlotsPerGroup;
  std::vector<float> scalars(n_slots * TRAINRT_OS_COUNT);
  std::vector<double> hyper(n_slots * TRAINRT_OH_COUNT);
  std::vector<std::uint32_t> flags(I.groups.size());
  for (std::size_t g = 0; g < I.groups.size(); ++g) {
    const HyperParams& h = I.groups[g].options;
    flags[g] = detail::kernel_flags(algo, h);
    for (std::size_t k = 0; k < kSlotsPerGroup; ++k) {
      const std::size_t slot = g * kSlotsPerGroup + k;
      // (t-dependent entries are derived on the device; t = 1 here.)
      detail::fill_scalars(algo, h, 1, k >= 3, scalars.data() + slot * TRAINRT_OS_COUNT);
      detail::fill_hyper(algo, h, hyper.data() + slot * TRAINRT_OH_COUNT);
    }
  }
  const bool fits = I.cap_scalars.defined() &&
                    I.cap_scalars.numel() >= static_cast<std::int64_t>(scalars.size()) &&
                    I.step_hyper.defined() &&
                    I.step_hyper.numel() >= static_cast<std::int64_t>(hyper.size());
  if (fits && scalars == I.uploaded_scalars && hyper == I.uploaded_hyper) {
    I.group_flags = std::move(flags);
    return;
  }
  if (capturing) {
    fail(
        "{}.step: the hyperparameters changed during a CUDA graph capture; a captured step must "
        "not copy from the host: change them outside the capture, then call "
        "upload_hyperparameters()",
        name);
  }
  if (!fits) {
    detail::retire(I, I.cap_scalars);
    detail::retire(I, I.step_hyper);
    I.cap_scalars =
        Tensor::empty({static_cast<std::int64_t>(scalars.size())}, DType::f32, I.device);
    I.step_hyper = Tensor::empty({static_cast<std::int64_t>(hyper.size())}, DType::f64, I.device);
  }
  detail::device_copy(I.device, I.cap_scalars.data(), scalars.data(),
                      scalars.size() * sizeof(float), TRAINRT_COPY_H2D, "uploading step scalars");
  detail::device_copy(I.device, I.step_hyper.data(), hyper.data(), hyper.size() * sizeof(double),
                      TRAINRT_COPY_H2D, "uploading step hyperparameters");
  I.uploaded_scalars = std::move(scalars);
  I.uploaded_hyper = std::move(hyper);
  I.group_flags = std::move(flags);
}

int algo_of(const OptimizerImpl& I) { return detail::algo_index(I.spec); }

std::string group_where(std::size_t g) { return fmt::format("param group {}", g); }

}  // namespace

Optimizer::Optimizer(int algorithm, std::vector<ParamGroup> groups, HyperParams defaults)
    : impl_(std::make_unique<OptimizerImpl>()) {
  impl_->spec = &detail::spec_of(algorithm);
  // As torch.optim's "optimizer got an empty parameter list": most likely parameters() of the
  // wrong model. A group without parameters is accepted (PyTorch's [{'params': []}]).
  if (groups.empty()) fail("{}: got an empty parameter list", impl_->spec->name);
  detail::validate(*impl_->spec, defaults, defaults, "the defaults");
  impl_->defaults = std::move(defaults);
  for (const ParamGroup& g : groups) add_param_group(g);
}

Optimizer::~Optimizer() {
  try {
    detail::OptimizerAccess::mark_pending(*impl_, false);
  } catch (...) {
  }
}

const std::string& Optimizer::name() const {
  // Never destroyed: an optimizer in a global may be used by destructors at exit.
  static const std::string* const names =
      new std::string[7]{"SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "RAdam", "LAMB"};
  return names[algo_of(*impl_)];
}

const HyperParams& Optimizer::defaults() const { return impl_->defaults; }
const std::vector<ParamGroup>& Optimizer::param_groups() const { return impl_->groups; }
bool Optimizer::last_step_skipped() const {
  const OptimizerImpl& I = *impl_;
  if (!I.skip_on_device) return I.last_skipped;
  detail::refuse_read_in_capture(I, "last_step_skipped()");
  return detail::read_device_float(I.device, static_cast<const float*>(I.skip_flag.data())) != 0.0f;
}

bool Optimizer::capturable() const { return impl_->capturable; }

void Optimizer::set_capturable(bool on) {
  OptimizerImpl& I = *impl_;
  if (on == I.capturable) return;
  if (!on) {
    detail::refuse_read_in_capture(I, "set_capturable(false)");
    detail::resolve_skipped_states(I);
    // The counts come back to the host; the device ones are kept for graphs captured before.
    for (ParamSlot& s : I.slots) {
      if (!s.device_step.defined()) continue;
      s.step = detail::slot_step(I, s);
      detail::retire(I, s.device_step);
      s.device_step = Tensor();
      // State made for a skipped first step inside a capture is unchanged; the ordinary step
      // makes a parameter's state at its first step, so it goes.
      if (s.step == 0) {
        for (Tensor& t : s.state) {
          detail::retire(I, t);
          t = Tensor();
        }
      }
    }
    if (I.skip_on_device) I.last_skipped = last_step_skipped();
    I.skip_on_device = false;
  }
  I.capturable = on;
}

Device Optimizer::device() const { return impl_->has_device ? impl_->device : Device::cpu(); }

void Optimizer::add_param_group(const ParamGroup& group) {
  OptimizerImpl& I = *impl_;
  const std::size_t g = I.groups.size();
  const std::string where = group_where(g);
  HyperParams h = I.defaults;
  for (const auto& kv : group.options) h[kv.first] = kv.second;
  detail::validate(*I.spec, I.defaults, h, where);

  std::set<const ParameterImpl*> seen;
  for (const ParamSlot& s : I.slots) seen.insert(&ParameterAccess::impl(s.param));
  Device dev = I.device;
  bool has_dev = I.has_device;
  for (std::size_t i = 0; i < group.params.size(); ++i) {
    const Parameter& p = group.params[i];
    if (!p.defined()) fail("{}: parameter {} of {} is undefined", name(), i, where);
    const ParameterImpl& pi = ParameterAccess::impl(p);
    if (!seen.insert(&pi).second) {
      // find where it already is
      std::string other = "this group";
      for (const ParamSlot& s : I.slots) {
        if (&ParameterAccess::impl(s.param) == &pi) other = group_where(s.group);
      }
      fail("{}: parameter {} of {} already appears in {}: a parameter may be in one group only",
           name(), i, where, other);
    }
    if (pi.value.dtype() != DType::f32) {
      fail(
          "{}: parameter {} of {} must be f32 (master weights; keep an f16/bf16 copy with "
          "Parameter::set_model_copy), got {}",
          name(), i, where, dtype_name(pi.value.dtype()));
    }
    if (!has_dev) {
      dev = pi.value.device();
      has_dev = true;
    } else if (pi.value.device() != dev) {
      fail(
          "{}: parameter {} of {} is on {} but the other parameters are on {}: all parameters "
          "of one optimizer must be on one device",
          name(), i, where, pi.value.device().str(), dev.str());
    }
  }
  // Commit. A pending 1/scale or clip coefficient is for the grads of the parameters there
  // were (PyTorch's calls rewrote those), not for the new group's: it goes into them first.
  detail::OptimizerAccess::settle(I, true, "add_param_group");
  I.device = dev;
  I.has_device = has_dev;
  I.groups.push_back(ParamGroup(group.params, h));
  for (const Parameter& p : group.params) {
    ParamSlot s;
    s.param = p;
    s.group = g;
    I.slots.push_back(std::move(s));
  }
}

double Optimizer::get(std::size_t group, const std::string& key) const {
  if (group >= impl_->groups.size()) {
    fail("{}: param group {} does not exist ({} groups)", name(), group, impl_->groups.size());
  }
  const HyperParams& h = impl_->groups[group].options;
  auto it = h.find(key);
  if (it == h.end()) fail("{}: unknown hyperparameter '{}'", name(), key);
  return it->second;
}

void Optimizer::set(std::size_t group, const std::string& key, double value) {
  (void)get(group, key);
  HyperParams h = impl_->groups[group].options;
  h[key] = value;
  detail::validate(*impl_->spec, impl_->defaults, h, group_where(group));
  impl_->groups[group].options = std::move(h);
}

void Optimizer::set_lr(double lr) {
  for (std::size_t g = 0; g < impl_->groups.size(); ++g) {
    HyperParams h = impl_->groups[g].options;
    h["lr"] = lr;
    detail::validate(*impl_->spec, impl_->defaults, h, group_where(g));
  }
  for (ParamGroup& g : impl_->groups) g.options["lr"] = lr;
}

void Optimizer::zero_grad(bool set_to_none) {
  // A pending 1/scale or clip coefficient was for the grads dropped here: PyTorch's unscale_ and
  // clip_grad_norm_ rewrote those, and the grads of the next backward are not unscaled or
  // clipped by them. A pending inf/NaN check runs on the old grads, as PyTorch's unscale_ did.
  detail::OptimizerAccess::settle(*impl_, false, "zero_grad");
  for (ParamSlot& s : impl_->slots) {
    if (set_to_none) {
      s.param.clear_grad();
    } else if (s.param.has_grad()) {
      ParameterAccess::impl(s.param).grad.zero_();
    }
  }
}

namespace {

const ParamSlot& find_slot(const OptimizerImpl& I, const Parameter& p, const std::string& name) {
  if (p.defined()) {
    for (const ParamSlot& s : I.slots)
      if (s.param == p) return s;
  }
  fail("{}: the parameter is not one of this optimizer's parameters", name);
}

}  // namespace

std::int64_t Optimizer::step_count(const Parameter& p) const {
  return detail::slot_step(*impl_, find_slot(*impl_, p, name()));
}

Tensor Optimizer::state(const Parameter& p, const std::string& state_name) const {
  // (A capturable step that made state and was skipped drops it here, as the ordinary step.)
  detail::resolve_skipped_states(const_cast<OptimizerImpl&>(*impl_));
  const ParamSlot& s = find_slot(*impl_, p, name());
  const detail::NameList& names = impl_->spec->states;
  for (std::size_t j = 0; j < names.size(); ++j)
    if (state_name == names[j]) return s.state[j];
  return Tensor();
}

void Optimizer::step() {
  OptimizerImpl& I = *impl_;
  const int algo = algo_of(I);
  const std::string op = name() + ".step";
  // (last_step_skipped() changes only when the step runs: a refused step leaves it.)

  // Parameters with a grad, checked.
  std::vector<std::size_t> active;
  for (std::size_t k = 0; k < I.slots.size(); ++k) {
    const ParameterImpl& p = ParameterAccess::impl(I.slots[k].param);
    if (!p.grad.defined()) continue;
    if (p.value.device() != I.device || p.grad.device() != I.device) {
      fail(
          "{}: parameter {} is on {} with its grad on {}, but the step runs on {}: all "
          "parameters and grads of one step must be on one device",
          op, k, p.value.device().str(), p.grad.device().str(), I.device.str());
    }
    if (p.grad.shape() != p.value.shape() || p.grad.dtype() != p.value.dtype()) {
      fail("{}: grad {} of parameter {} does not match the parameter {}", op, p.grad.str(), k,
           p.value.str());
    }
    active.push_back(k);
  }
  // step() called directly after a GradScaler's unscale_ (not through GradScaler::step) is
  // PyTorch's optimizer.step() on the grads unscale_ (and a clip) rewrote: it never skips, and
  // the scaler's update() still reads the inf check unscale_ made. So the check runs, the
  // pending multipliers go into the grads (the write pass PyTorch's unscale_ made), the step
  // runs without the grad scalars block, and the block stays active, holding found_inf for
  // update() (or for a GradScaler::step that follows). A fused clip alone (no scaler) keeps
  // its folded coefficient: its step never skips either, the block's found_inf stays 0.
  const bool direct =
      I.gs_active && !I.in_scaler_step && (I.unscale_pending || I.check_pending || I.inf_recorded);
  const bool gs_on = I.gs_active && !direct;
  auto finish = [&]() {
    if (direct) return;  // settled below; the block keeps found_inf for the scaler
    detail::OptimizerAccess::mark_pending(I, false);
    I.gs_active = false;
    I.check_pending = false;
    I.inf_recorded = false;
    I.unscale_pending = false;
    I.clip_pending = false;
  };
  if (active.empty()) {
    // Nothing to step. A GradScaler's recorded inf/NaN check still makes it a skipped step,
    // as PyTorch's scaler.step() skips optimizer.step() on it: the grads may have gone since
    // unscale_ (zero_grad, clear_grad).
    I.last_skipped = false;
    I.skip_on_device = false;
    if (gs_on && I.inf_recorded) {
      const float* found = static_cast<const float*>(I.grad_scalars.data()) + TRAINRT_GS_FOUND_INF;
      if (I.capturable) {
        detail::resolve_skipped_states(I);  // what the last step made, against its own flag
        if (!I.skip_flag.defined()) {
          if (detail::device_capturing(I.device)) {
            fail(
                "{}: the first step with a GradScaler or fused clip runs during a CUDA graph "
                "capture; run one iteration before capturing",
                op);
          }
          I.skip_flag = Tensor::zeros({}, DType::f32, I.device);
        }
        detail::device_copy(I.device, I.skip_flag.data(), found, sizeof(float), TRAINRT_COPY_D2D,
                            op.c_str());
        I.skip_on_device = true;
      } else {
        I.last_skipped = detail::read_device_float(I.device, found) != 0.0f;
      }
    }
    finish();
    return;
  }

  const bool cap = I.capturable;
  const bool capturing = detail::device_capturing(I.device);
  if (capturing && !cap) {
    fail(
        "{}: an ordinary step copies its scalars from the host and cannot be captured in a CUDA "
        "graph; call set_capturable(true) and run one step before capturing",
        op);
  }
  auto refuse_in_capture = [&](const char* what) {
    if (capturing) {
      fail(
          "{}: {} during a CUDA graph capture; a captured step must not make host transfers: run "
          "one step of every parameter before capturing, and change hyperparameters outside the "
          "capture (then upload_hyperparameters())",
          op, what);
    }
  };
  // State made by the last (capturable) step goes if that step was skipped, as in an ordinary
  // step (one 4-byte read, only after a step that made state).
  if (cap) detail::resolve_skipped_states(I);
  if (capturing) {
    // Nothing may be made or uploaded in a captured step: check before anything changes.
    bool missing =
        (algo == detail::kLAMB && !I.lamb_norm.defined()) || (gs_on && !I.skip_flag.defined());
    for (std::size_t k : active) {
      const ParamSlot& s = I.slots[k];
      const std::vector<bool> nd = detail::needed_states(algo, I.groups[s.group].options);
      missing = missing || !s.device_step.defined();
      for (std::size_t j = 0; j < nd.size(); ++j)
        missing = missing || (nd[j] && !s.state[j].defined());
    }
    if (missing) refuse_in_capture("the first capturable step of a parameter (or of a scaler)");
  }

  const trainrt_backend_v1& api = detail::backend_for(I.device);
  detail::require_supported(api, TRAINRT_OP_OPTIMIZER_STEP, DType::f32, op.c_str());
  const float* gs = gs_on ? static_cast<const float*>(I.grad_scalars.data()) : nullptr;

  if (cap) {
    // The blocks of every group at fixed slots (upload_step_blocks), uploaded when changed,
    // and the per-tensor workspace; before any kernel, so that a refusal in a capture leaves
    // nothing recorded.
    upload_step_blocks(I, algo, name(), capturing);
    const auto need_ts = static_cast<std::int64_t>(active.size() * TRAINRT_OS_COUNT);
    if (!I.tensor_scalars.defined() || I.tensor_scalars.numel() < need_ts) {
      refuse_in_capture("a step with more grads than any before (a larger workspace)");
      detail::retire(I, I.tensor_scalars);
      I.tensor_scalars = Tensor::empty({need_ts}, DType::f32, I.device);
    }
  }

  if (direct) detail::OptimizerAccess::settle(I, true, op.c_str());

  // LAMB: the global norm of every grad as the step sees it.
  if (algo == detail::kLAMB) {
    if (!I.lamb_norm.defined()) I.lamb_norm = Tensor::empty({}, DType::f32, I.device);
    detail::TensorList gl;
    for (std::size_t k : active) gl.add(ParameterAccess::impl(I.slots[k].param).grad);
    trainrt_multi_tensor_norm_args na{};
    na.n_tensors = static_cast<std::int64_t>(gl.size());
    na.tensors = gl.ptrs.data();
    na.dtypes = gl.dtypes.data();
    na.numels = gl.numels.data();
    na.norm_type = 2.0;
    na.grad_scalars = const_cast<float*>(gs);
    na.total_norm = static_cast<float*>(I.lamb_norm.data());
    detail::check_backend(api, api.multi_tensor_norm(I.device.index(), &na), op.c_str());
  }

  // Per group: which state lists a step needs and how they start.
  std::vector<std::vector<bool>> need(I.groups.size());
  std::vector<double> init(I.groups.size());
  for (std::size_t g = 0; g < I.groups.size(); ++g) {
    need[g] = detail::needed_states(algo, I.groups[g].options);
    init[g] = detail::state_initial_value(algo, I.groups[g].options);
  }

  // Buckets: (group, step after this one, fresh momentum buffer, model copy dtype). A
  // capturable step leaves the step out: its kernels read each tensor's count on the device
  // and derive the t-dependent scalars there.
  using Key = std::tuple<std::size_t, std::int64_t, bool, int>;
  std::map<Key, std::vector<std::size_t>> buckets;
  std::vector<std::pair<std::size_t, std::size_t>> created;  // (slot, state index)
  for (std::size_t k : active) {
    ParamSlot& s = I.slots[k];
    const std::vector<bool>& nd = need[s.group];
    bool fresh = false;
    for (std::size_t j = 0; j < nd.size(); ++j) {
      if (!nd[j] || s.state[j].defined()) continue;
      const Tensor& v = ParameterAccess::impl(s.param).value;
      Tensor t;
      if (init[s.group] != 0.0 && v.numel() > 0) {
        std::vector<float> host(static_cast<std::size_t>(v.numel()),
                                static_cast<float>(init[s.group]));
        t = Tensor::from_vector(host, v.shape(), I.device);
      } else {
        t = Tensor::zeros(v.shape(), DType::f32, I.device);
      }
      s.state[j] = t;
      created.emplace_back(k, j);
      if (algo == detail::kSGD) fresh = true;
    }
    const Tensor& mc = ParameterAccess::impl(s.param).model_copy;
    const int mdt = mc.defined() ? static_cast<int>(mc.dtype()) : -1;
    if (cap) {
      if (!s.device_step.defined()) {
        s.device_step = Tensor::from_vector(std::vector<std::int64_t>{s.step}, {}, I.device);
      }
      buckets[Key(s.group, 0, fresh, mdt)].push_back(k);  // fresh: FRESH_BUFFER below
    } else {
      buckets[Key(s.group, s.step + 1, fresh, mdt)].push_back(k);
    }
  }

  if (!cap) {
    // The scalars of every bucket, one upload.
    std::vector<float> host(buckets.size() * TRAINRT_OS_COUNT);
    std::size_t b = 0;
    for (const auto& kv : buckets) {
      const HyperParams& h = I.groups[std::get<0>(kv.first)].options;
      detail::fill_scalars(algo, h, std::get<1>(kv.first), std::get<2>(kv.first),
                           host.data() + b * TRAINRT_OS_COUNT);
      ++b;
    }
    if (!I.step_scalars.defined() ||
        I.step_scalars.numel() < static_cast<std::int64_t>(host.size())) {
      I.step_scalars =
          Tensor::empty({static_cast<std::int64_t>(host.size())}, DType::f32, I.device);
    }
    detail::write_device_floats(I.device, static_cast<float*>(I.step_scalars.data()), host.data(),
                                host.size());
  }
  float* dev_scalars = static_cast<float*>(cap ? I.cap_scalars.data() : I.step_scalars.data());

  // One fused call per bucket.
  std::size_t b = 0, tensors_before = 0;
  for (const auto& kv : buckets) {
    const HyperParams& h = I.groups[std::get<0>(kv.first)].options;
    const std::vector<std::size_t>& ks = kv.second;
    std::vector<void*> params, copies;
    std::vector<const void*> grads;
    std::vector<void*> states[3];
    std::vector<std::int64_t> numels;
    std::vector<std::int64_t*> counts;
    const std::vector<bool>& nd = need[std::get<0>(kv.first)];
    for (std::size_t k : ks) {
      ParamSlot& s = I.slots[k];
      ParameterImpl& p = ParameterAccess::impl(s.param);
      if (cap) counts.push_back(static_cast<std::int64_t*>(s.device_step.data()));
      params.push_back(p.value.data());
      grads.push_back(p.grad.data());
      numels.push_back(p.value.numel());
      copies.push_back(p.model_copy.defined() ? p.model_copy.data() : nullptr);
      for (std::size_t j = 0; j < nd.size(); ++j) {
        if (nd[j]) states[j].push_back(s.state[j].data());
      }
    }
    trainrt_optim_step_args a{};
    a.algo = I.spec->kernel_algo;
    a.flags = detail::kernel_flags(algo, h);
    if (cap && std::get<2>(kv.first)) a.flags |= TRAINRT_OPTIM_FRESH_BUFFER;
    a.param_dtype = TRAINRT_F32;
    a.grad_dtype = TRAINRT_F32;
    a.model_dtype = std::get<3>(kv.first) >= 0 ? std::get<3>(kv.first) : -1;
    a.n_tensors = static_cast<std::int64_t>(ks.size());
    a.params = params.data();
    a.grads = grads.data();
    for (int j = 0; j < 3; ++j) a.states[j] = states[j].empty() ? nullptr : states[j].data();
    a.model_copies = std::get<3>(kv.first) >= 0 ? copies.data() : nullptr;
    a.numels = numels.data();
    const std::size_t block =
        cap ? capturable_slot(std::get<0>(kv.first), std::get<2>(kv.first), std::get<3>(kv.first))
            : b;
    a.scalars = dev_scalars + block * TRAINRT_OS_COUNT;
    a.grad_scalars = gs;
    a.global_grad_norm =
        algo == detail::kLAMB ? static_cast<const float*>(I.lamb_norm.data()) : nullptr;
    if (cap) {
      a.step_counts = counts.data();
      a.step_hyper = static_cast<const double*>(I.step_hyper.data()) + block * TRAINRT_OH_COUNT;
      a.tensor_scalars =
          static_cast<float*>(I.tensor_scalars.data()) + tensors_before * TRAINRT_OS_COUNT;
    }
    detail::check_backend(api, api.optimizer_step(I.device.index(), &a), op.c_str());
    ++b;
    tensors_before += ks.size();
  }

  if (cap) {
    // The counts advanced on the device (not on a skipped step); the host reads nothing. The
    // state made for a skipped first step stays: its values are unchanged, the count is still
    // 0, so the next step starts it afresh.
    I.last_skipped = false;
    I.skip_on_device = gs_on;
    if (capturing) {
      I.ever_captured = true;
      I.captured_flags = I.group_flags;
    }
    // With a grad scalars block the step may have been skipped: its new state is dropped at
    // the next look (resolve_skipped_states) if so.
    I.pending_created.clear();
    if (gs_on) I.pending_created = created;
    if (gs_on) {
      if (!I.skip_flag.defined()) {
        I.skip_flag = Tensor::zeros({}, DType::f32, I.device);
      }
      detail::device_copy(I.device, I.skip_flag.data(), gs + TRAINRT_GS_FOUND_INF, sizeof(float),
                          TRAINRT_COPY_D2D, op.c_str());
    }
    finish();
    return;
  }

  // Did the kernels skip themselves? One 4-byte copy, only when a grad scalars block is active.
  bool skipped = false;
  if (gs_on) skipped = detail::read_device_float(I.device, gs + TRAINRT_GS_FOUND_INF) != 0.0f;
  if (skipped) {
    for (const auto& c : created) I.slots[c.first].state[c.second] = Tensor();
  } else {
    for (std::size_t k : active) ++I.slots[k].step;
  }
  I.last_skipped = skipped;
  I.skip_on_device = false;
  finish();
}

void Optimizer::upload_hyperparameters() {
  OptimizerImpl& I = *impl_;
  if (!I.capturable || I.uploaded_hyper.empty()) return;
  // Flags pick the kernel and its state lists, fixed in a captured launch: new data cannot
  // change them.
  for (std::size_t g = 0; g < I.group_flags.size(); ++g) {
    const std::uint32_t f = detail::kernel_flags(algo_of(I), I.groups[g].options);
    if (f != I.group_flags[g] || (g < I.captured_flags.size() && f != I.captured_flags[g])) {
      fail(
          "{}.upload_hyperparameters: a hyperparameter of param group {} changed the kind of "
          "update (weight decay or momentum switched on or off, maximize, nesterov, amsgrad, "
          "...), which a captured graph cannot follow; capture the step again",
          name(), g);
    }
  }
  upload_step_blocks(I, algo_of(I), name(), detail::device_capturing(I.device));
}

// ---- state_dict --------------------------------------------------------------------------------

StateDict Optimizer::state_dict() const {
  detail::resolve_skipped_states(const_cast<OptimizerImpl&>(*impl_));
  const OptimizerImpl& I = *impl_;
  StateDict sd;
  sd.strings["optimizer"] = name();
  sd.scalars["param_groups"] = static_cast<double>(I.groups.size());
  std::vector<std::size_t> counts(I.groups.size(), 0);
  for (const ParamSlot& s : I.slots) ++counts[s.group];
  for (std::size_t g = 0; g < I.groups.size(); ++g) {
    const std::string pre = fmt::format("param_groups.{}.", g);
    sd.scalars[pre + "params"] = static_cast<double>(counts[g]);
    for (const auto& kv : I.groups[g].options) sd.scalars[pre + kv.first] = kv.second;
  }
  for (std::size_t k = 0; k < I.slots.size(); ++k) {
    const ParamSlot& s = I.slots[k];
    const std::int64_t step = detail::slot_step(I, s);
    // (A capturable optimizer keeps the unchanged state of a skipped first step; the dict
    // leaves it out, as an ordinary optimizer drops it.)
    if (step == 0 && (!s.has_state() || s.device_step.defined())) continue;
    const std::string pre = fmt::format("state.{}.", k);
    sd.scalars[pre + "step"] = static_cast<double>(step);
    for (std::size_t j = 0; j < I.spec->states.size(); ++j) {
      if (s.state[j].defined()) sd.tensors[pre + I.spec->states[j]] = s.state[j].clone();
    }
  }
  return sd;
}

void Optimizer::load_state_dict(const StateDict& sd) {
  OptimizerImpl& I = *impl_;
  const std::string op = name() + ".load_state_dict";
  if (detail::device_capturing(I.device)) {
    fail("{}: copies from the host, which a CUDA graph capture cannot; load outside it", op);
  }
  auto it = sd.strings.find("optimizer");
  if (it == sd.strings.end()) fail("{}: the state dict has no 'optimizer' entry", op);
  if (it->second != name()) {
    fail("{}: the state dict is from a {} optimizer, not {}", op, it->second, name());
  }
  for (const auto& kv : sd.strings) {
    if (kv.first != "optimizer") fail("{}: unexpected entry '{}'", op, kv.first);
  }
  auto scalar = [&](const std::string& k) {
    auto s = sd.scalars.find(k);
    if (s == sd.scalars.end()) fail("{}: the state dict has no '{}' entry", op, k);
    return s->second;
  };
  const double ng = scalar("param_groups");
  if (ng != static_cast<double>(I.groups.size())) {
    fail("{}: the state dict has {} param groups, the optimizer has {}", op, ng, I.groups.size());
  }
  std::vector<std::size_t> counts(I.groups.size(), 0);
  for (const ParamSlot& s : I.slots) ++counts[s.group];

  // New group hyperparameters, validated.
  std::vector<HyperParams> new_hyper(I.groups.size());
  std::set<std::string> used = {"param_groups"};
  for (std::size_t g = 0; g < I.groups.size(); ++g) {
    const std::string pre = fmt::format("param_groups.{}.", g);
    const double np = scalar(pre + "params");
    used.insert(pre + "params");
    if (np != static_cast<double>(counts[g])) {
      fail("{}: param group {} of the state dict has {} parameters, the optimizer's has {}", op, g,
           np, counts[g]);
    }
    for (const auto& d : I.defaults) {
      new_hyper[g][d.first] = scalar(pre + d.first);
      used.insert(pre + d.first);
    }
    detail::validate(*I.spec, I.defaults, new_hyper[g],
                     fmt::format("param group {} of the state dict", g));
  }

  // New per-parameter state, validated and copied to the device.
  std::vector<std::int64_t> new_steps(I.slots.size(), 0);
  std::vector<std::vector<Tensor>> new_state(I.slots.size(),
                                             std::vector<Tensor>(detail::kMaxStates));
  auto parse_state_key = [&](const std::string& key, std::size_t* idx, std::string* rest) {
    if (key.rfind("state.", 0) != 0) return false;
    const std::size_t dot = key.find('.', 6);
    if (dot == std::string::npos) return false;
    const std::string num = key.substr(6, dot - 6);
    // The index as state_dict() writes it: decimal digits, no leading zero (so that no two
    // keys name one buffer).
    if (num.empty() || num.find_first_not_of("0123456789") != std::string::npos) return false;
    if (num.size() > 1 && num[0] == '0') return false;
    // Too many digits for any parameter count: an index past the end (no overflow).
    *idx = num.size() > 18 ? std::numeric_limits<std::size_t>::max()
                           : static_cast<std::size_t>(std::stoull(num));
    *rest = key.substr(dot + 1);
    return true;
  };
  for (const auto& kv : sd.scalars) {
    if (used.count(kv.first)) continue;
    std::size_t k = 0;
    std::string rest;
    if (!parse_state_key(kv.first, &k, &rest) || rest != "step") {
      fail("{}: unexpected entry '{}'", op, kv.first);
    }
    if (k >= I.slots.size()) {
      fail("{}: '{}' refers to parameter {}, the optimizer has {}", op, kv.first, k,
           I.slots.size());
    }
    const double st = kv.second;
    if (!(st >= 0.0) || st != std::floor(st) || st > 9007199254740992.0) {
      fail("{}: '{}' must be a step count (an integer >= 0), got {}", op, kv.first, st);
    }
    new_steps[k] = static_cast<std::int64_t>(st);
  }
  for (const auto& kv : sd.tensors) {
    std::size_t k = 0;
    std::string rest;
    if (!parse_state_key(kv.first, &k, &rest)) fail("{}: unexpected tensor '{}'", op, kv.first);
    if (k >= I.slots.size()) {
      fail("{}: '{}' refers to parameter {}, the optimizer has {}", op, kv.first, k,
           I.slots.size());
    }
    bool known = false;
    for (const char* n : I.spec->states) known = known || rest == n;
    if (!known) fail("{}: '{}' is not a state buffer of {}", op, kv.first, name());
    if (sd.scalars.count(fmt::format("state.{}.step", k)) == 0) {
      fail("{}: '{}' has no step count state.{}.step", op, kv.first, k);
    }
    const Tensor& t = kv.second;
    const Tensor& v = ParameterAccess::impl(I.slots[k].param).value;
    if (!t.defined() || t.dtype() != DType::f32 || t.shape() != v.shape()) {
      fail("{}: '{}' is {} but parameter {} is {}: state buffers are f32 of the parameter's shape",
           op, kv.first, t.str(), k, v.str());
    }
  }
  // A parameter that has stepped has every buffer each step of its algorithm makes (the
  // optional ones, such as amsgrad's, may be missing: the option may have been switched on
  // since). Without them its next step would restart them from zero at the old step count.
  // (needed_states with every option off: only the switches decide the optional ones.)
  HyperParams off = I.defaults;
  for (auto& kv : off) kv.second = 0.0;
  const std::vector<bool> always = detail::needed_states(algo_of(I), off);
  for (std::size_t k = 0; k < I.slots.size(); ++k) {
    if (new_steps[k] == 0) continue;
    for (std::size_t j = 0; j < always.size(); ++j) {
      const std::string key = fmt::format("state.{}.{}", k, I.spec->states[j]);
      if (always[j] && sd.tensors.count(key) == 0) {
        fail(
            "{}: parameter {} has stepped {} times but the state dict has no '{}' ({} makes it "
            "at every step)",
            op, k, new_steps[k], key, name());
      }
    }
  }
  for (const auto& kv : sd.tensors) {
    std::size_t k = 0;
    std::string rest;
    parse_state_key(kv.first, &k, &rest);
    if (new_steps[k] == 0) {
      // An optimizer makes a parameter's state at its first step, so state with a count of 0
      // cannot be told from a step that never happened (a capturable step cannot).
      fail(
          "{}: '{}' belongs to parameter {}, whose step count is 0: a parameter that has not "
          "stepped has no state",
          op, kv.first, k);
    }
    for (std::size_t j = 0; j < I.spec->states.size(); ++j) {
      if (rest == I.spec->states[j]) new_state[k][j] = kv.second.to(I.device);  // a copy
    }
  }
  // Commit (nothing above changed the optimizer).
  I.pending_created.clear();  // replaced below
  for (std::size_t g = 0; g < I.groups.size(); ++g) I.groups[g].options = std::move(new_hyper[g]);
  for (std::size_t k = 0; k < I.slots.size(); ++k) {
    ParamSlot& s = I.slots[k];
    s.step = new_steps[k];
    if (s.device_step.defined()) {
      detail::device_copy(I.device, s.device_step.data(), &new_steps[k], sizeof new_steps[k],
                          TRAINRT_COPY_H2D, op.c_str());
    }
    for (int j = 0; j < detail::kMaxStates; ++j) {
      Tensor& old = s.state[j];
      if (I.capturable && old.defined() && new_state[k][j].defined()) {
        old.copy_(new_state[k][j]);  // in place: a captured graph keeps its pointers
        continue;
      }
      detail::retire(I, old);  // kept for a graph captured before
      old = new_state[k][j];
    }
  }
}

// ---- options and the algorithms -----------------------------------------------------------------

namespace {
double b(bool v) { return v ? 1.0 : 0.0; }
// No parameters make no group, which the Optimizer constructor refuses.
std::vector<ParamGroup> one_group(std::vector<Parameter> params) {
  std::vector<ParamGroup> g;
  if (!params.empty()) g.emplace_back(std::move(params));
  return g;
}
}  // namespace

HyperParams SGDOptions::hyper() const {
  return {{"lr", lr_},
          {"momentum", momentum_},
          {"dampening", dampening_},
          {"weight_decay", weight_decay_},
          {"nesterov", b(nesterov_)},
          {"maximize", b(maximize_)}};
}
HyperParams AdamOptions::hyper() const {
  return {{"lr", lr_},
          {"beta1", beta1_},
          {"beta2", beta2_},
          {"eps", eps_},
          {"weight_decay", weight_decay_},
          {"amsgrad", b(amsgrad_)},
          {"maximize", b(maximize_)}};
}
HyperParams AdamWOptions::hyper() const {
  return {{"lr", lr_},
          {"beta1", beta1_},
          {"beta2", beta2_},
          {"eps", eps_},
          {"weight_decay", weight_decay_},
          {"amsgrad", b(amsgrad_)},
          {"maximize", b(maximize_)}};
}
HyperParams RMSpropOptions::hyper() const {
  return {{"lr", lr_},
          {"alpha", alpha_},
          {"eps", eps_},
          {"weight_decay", weight_decay_},
          {"momentum", momentum_},
          {"centered", b(centered_)},
          {"maximize", b(maximize_)}};
}
HyperParams AdagradOptions::hyper() const {
  return {{"lr", lr_},
          {"lr_decay", lr_decay_},
          {"weight_decay", weight_decay_},
          {"initial_accumulator_value", initial_accumulator_value_},
          {"eps", eps_},
          {"maximize", b(maximize_)}};
}
HyperParams RAdamOptions::hyper() const {
  return {{"lr", lr_},
          {"beta1", beta1_},
          {"beta2", beta2_},
          {"eps", eps_},
          {"weight_decay", weight_decay_},
          {"decoupled_weight_decay", b(decoupled_weight_decay_)},
          {"maximize", b(maximize_)}};
}
HyperParams LAMBOptions::hyper() const {
  return {{"lr", lr_},
          {"beta1", beta1_},
          {"beta2", beta2_},
          {"eps", eps_},
          {"weight_decay", weight_decay_},
          {"max_grad_norm", max_grad_norm_},
          {"use_nvlamb", b(use_nvlamb_)}};
}

SGD::SGD(std::vector<Parameter> params, const SGDOptions& o)
    : Optimizer(detail::kSGD, one_group(std::move(params)), o.hyper()) {}
SGD::SGD(std::vector<ParamGroup> groups, const SGDOptions& o)
    : Optimizer(detail::kSGD, std::move(groups), o.hyper()) {}
Adam::Adam(std::vector<Parameter> params, const AdamOptions& o)
    : Optimizer(detail::kAdam, one_group(std::move(params)), o.hyper()) {}
Adam::Adam(std::vector<ParamGroup> groups, const AdamOptions& o)
    : Optimizer(detail::kAdam, std::move(groups), o.hyper()) {}
AdamW::AdamW(std::vector<Parameter> params, const AdamWOptions& o)
    : Optimizer(detail::kAdamW, one_group(std::move(params)), o.hyper()) {}
AdamW::AdamW(std::vector<ParamGroup> groups, const AdamWOptions& o)
    : Optimizer(detail::kAdamW, std::move(groups), o.hyper()) {}
RMSprop::RMSprop(std::vector<Parameter> params, const RMSpropOptions& o)
    : Optimizer(detail::kRMSprop, one_group(std::move(params)), o.hyper()) {}
RMSprop::RMSprop(std::vector<ParamGroup> groups, const RMSpropOptions& o)
    : Optimizer(detail::kRMSprop, std::move(groups), o.hyper()) {}
Adagrad::Adagrad(std::vector<Parameter> params, const AdagradOptions& o)
    : Optimizer(detail::kAdagrad, one_group(std::move(params)), o.hyper()) {}
Adagrad::Adagrad(std::vector<ParamGroup> groups, const AdagradOptions& o)
    : Optimizer(detail::kAdagrad, std::move(groups), o.hyper()) {}
RAdam::RAdam(std::vector<Parameter> params, const RAdamOptions& o)
    : Optimizer(detail::kRAdam, one_group(std::move(params)), o.hyper()) {}
RAdam::RAdam(std::vector<ParamGroup> groups, const RAdamOptions& o)
    : Optimizer(detail::kRAdam, std::move(groups), o.hyper()) {}
LAMB::LAMB(std::vector<Parameter> params, const LAMBOptions& o)
    : Optimizer(detail::kLAMB, one_group(std::move(params)), o.hyper()) {}
LAMB::LAMB(std::vector<ParamGroup> groups, const LAMBOptions& o)
    : Optimizer(detail::kLAMB, std::move(groups), o.hyper()) {}

namespace {

/// An optimizer built from names (make_optimizer).
class NamedOptimizer : public Optimizer {
 public:
  NamedOptimizer(int algo, std::vector<ParamGroup> groups, HyperParams defaults)
      : Optimizer(algo, std::move(groups), std::move(defaults)) {}
};

}  // namespace

std::unique_ptr<Optimizer> make_optimizer(const std::string& name, std::vector<ParamGroup> groups,
                                          const HyperParams& defaults) {
  HyperParams base;
  int algo = -1;
  if (name == "SGD") {
    if (defaults.count("lr") == 0) fail("make_optimizer: SGD needs an lr");
    algo = detail::kSGD;
    base = SGDOptions(defaults.at("lr")).hyper();
  } else if (name == "Adam") {
    algo = detail::kAdam;
    base = AdamOptions().hyper();
  } else if (name == "AdamW") {
    algo = detail::kAdamW;
    base = AdamWOptions().hyper();
  } else if (name == "RMSprop") {
    algo = detail::kRMSprop;
    base = RMSpropOptions().hyper();
  } else if (name == "Adagrad") {
    algo = detail::kAdagrad;
    base = AdagradOptions().hyper();
  } else if (name == "RAdam") {
    algo = detail::kRAdam;
    base = RAdamOptions().hyper();
  } else if (name == "LAMB") {
    algo = detail::kLAMB;
    base = LAMBOptions().hyper();
  } else {
    fail("make_optimizer: unknown optimizer '{}' (SGD, Adam, AdamW, RMSprop, Adagrad, RAdam, LAMB)",
         name);
  }
  for (const auto& kv : defaults) {
    if (base.count(kv.first) == 0) {
      fail("make_optimizer: {} has no hyperparameter '{}'", name, kv.first);
    }
    base[kv.first] = kv.second;
  }
  return std::make_unique<NamedOptimizer>(algo, std::move(groups), std::move(base));
}

}  // namespace optim
}  // namespace trainrt
