// GradScaler (torch.cuda.amp.GradScaler semantics). The scale and growth tracker live on the
// device; unscale_ only writes 1/scale into the optimizer's grad scalars block (the amp slot),
// the inf/NaN check is a read pass (shared with clip_grad_norm_(optimizer) when that runs), the
// optimizer's fused step skips itself on the device, and update() runs on the device. The only
// device-to-host traffic per iteration is the 4-byte found_inf read: by the optimizer's step,
// or, for a capturable optimizer run eagerly, by GradScaler::step for its bool; captured in a
// CUDA graph, the whole iteration reads nothing.
#include "trainrt/amp.hpp"

#include <cmath>
#include <limits>

#include "checks.hpp"
#include "optim_internal.hpp"

namespace trainrt {

using detail::fail;

namespace {

void check_growth_factor(double v) {
  if (!(v > 1.0) || !std::isfinite(v)) fail("GradScaler: growth_factor must be > 1, got {}", v);
}
void check_backoff_factor(double v) {
  if (!(v > 0.0 && v < 1.0)) fail("GradScaler: backoff_factor must be in (0, 1), got {}", v);
}
void check_growth_interval(std::int64_t v) {
  if (v <= 0 || v > 2147483647) {
    fail("GradScaler: growth_interval must be a positive 32-bit integer, got {}", v);
  }
}
void check_scale(double v, const char* what, bool zero_ok = false) {
  if (zero_ok && v == 0.0) return;
  if (!(v > 0.0) || !std::isfinite(v) || static_cast<float>(v) == 0.0f ||
      !std::isfinite(static_cast<float>(v))) {
    fail("GradScaler: {} must be a positive finite f32 value, got {}", what, v);
  }
}

}  // namespace

GradScaler::GradScaler(GradScalerOptions options) : options_(options) {
  if (options_.enabled) {
    check_scale(options_.init_scale, "init_scale");
    check_growth_factor(options_.growth_factor);
    check_backoff_factor(options_.backoff_factor);
    check_growth_interval(options_.growth_interval);
  }
}

GradScaler::~GradScaler() = default;

void GradScaler::lazy_init(Device device, const char* op) {
  if (scale_.defined()) {
    if (scale_.device() != device) {
      fail(
          "GradScaler.{}: the scale lives on {} but this call is on {}: one GradScaler serves "
          "one device",
          op, scale_.device().str(), device.str());
    }
    return;
  }
  if (detail::device_capturing(device)) {
    fail(
        "GradScaler.{}: the scaler's first use runs during a CUDA graph capture (its scale is "
        "made from host memory); run one iteration before capturing",
        op);
  }
  scale_ =
      Tensor::from_vector(std::vector<float>{static_cast<float>(options_.init_scale)}, {1}, device);
  growth_tracker_ = Tensor::from_vector(
      std::vector<std::int32_t>{static_cast<std::int32_t>(init_growth_tracker_)}, {1}, device);
}

GradScaler::PerOptimizer& GradScaler::state_of(optim::Optimizer& optimizer) {
  const std::shared_ptr<char>& alive = detail::OptimizerAccess::impl(optimizer).alive;
  PerOptimizer& st = per_optimizer_[&optimizer];
  if (st.alive.lock() != alive) {  // new, or another optimizer at a dead one's address
    st = PerOptimizer();
    st.alive = alive;
  }
  return st;
}

Tensor GradScaler::scale(const Tensor& loss) {
  if (!options_.enabled) return loss;
  detail::require_floating(loss, "GradScaler.scale", "loss");
  lazy_init(loss.device(), "scale");
  Tensor out = loss.dtype() == DType::f64 ? loss.clone() : loss.to(DType::f32);
  const trainrt_backend_v1& api = detail::backend_for(out.device());
  void* ptr = out.data();
  std::int32_t dt = detail::c_dtype(out.dtype());
  std::int64_t n = out.numel();
  trainrt_multi_tensor_scale_args a{};
  a.n_tensors = 1;
  a.tensors = &ptr;
  a.dtypes = &dt;
  a.numels = &n;
  a.scale = static_cast<const float*>(scale_.data());
  a.clamp_lo = -INFINITY;
  a.clamp_hi = INFINITY;
  detail::check_backend(api, api.multi_tensor_scale(out.device().index(), &a), "GradScaler.scale");
  return out;
}

Tensor GradScaler::scale_tensor(Device device) {
  if (!options_.enabled) return Tensor();
  lazy_init(device, "scale_tensor");
  return scale_;
}

void GradScaler::unscale_(optim::Optimizer& optimizer) {
  if (!options_.enabled) return;
  PerOptimizer& st = state_of(optimizer);
  if (st.stage == Stage::unscaled) {
    fail(
        "GradScaler.unscale_: unscale_() has already been called on this optimizer since the "
        "last update()");
  }
  if (st.stage == Stage::stepped)
    fail("GradScaler.unscale_: unscale_() is being called after step()");
  detail::OptimizerImpl& I = detail::OptimizerAccess::impl(optimizer);
  lazy_init(optimizer.device(), "unscale_");
  if (detail::OptimizerAccess::grads(I).size() == 0) {
    // PyTorch's unscale_ over no grads unscales and records nothing: grads set afterwards are
    // used as they are, and step() / update() then find no inf check for this optimizer.
    I.check_pending = false;
    I.inf_recorded = false;
    st.stage = Stage::unscaled;
    st.found_inf_block = Tensor();
    return;
  }
  // A fused clip before unscale_ (of the scaled grads) is PyTorch's clip_grad_norm_ rewriting
  // them: PyTorch then unscales (g * coef) * inv, where one folded step would compute
  // (g * inv) * coef, a different rounding (an overflow where 1/scale is large). The coefficient
  // goes into the grads first, as PyTorch's clip wrote it.
  if (I.gs_active && I.clip_pending && !I.unscale_pending) {
    detail::OptimizerAccess::settle(I, true, "GradScaler.unscale_");
  }
  float* gs = detail::OptimizerAccess::activate_grad_scalars(I);
  const trainrt_backend_v1& api = detail::backend_for(I.device);
  trainrt_amp_args a{};
  a.op = TRAINRT_AMP_BEGIN_UNSCALE;
  a.scale = static_cast<float*>(scale_.data());
  a.grad_scalars = gs;
  detail::check_backend(api, api.amp(I.device.index(), &a), "GradScaler.unscale_");
  I.check_pending = true;
  I.inf_recorded = false;
  I.unscale_pending = true;
  detail::OptimizerAccess::mark_pending(I, true);
  st.stage = Stage::unscaled;
  st.found_inf_block = I.grad_scalars;
}

bool GradScaler::step(optim::Optimizer& optimizer) {
  if (!options_.enabled) {
    optimizer.step();
    const detail::OptimizerImpl& I = detail::OptimizerAccess::impl(optimizer);
    if (I.capturable && detail::device_capturing(I.device)) return true;  // nothing read back
    return !optimizer.last_step_skipped();
  }
  PerOptimizer& st = state_of(optimizer);
  if (st.stage == Stage::stepped) {
    fail("GradScaler.step: step() has already been called since the last update()");
  }
  detail::OptimizerImpl& I = detail::OptimizerAccess::impl(optimizer);
  // Checked before anything changes, so that a failed step leaves nothing recorded.
  const bool needs_check = st.stage == Stage::ready || (I.check_pending && !I.inf_recorded);
  if (needs_check && detail::OptimizerAccess::grads(I).size() == 0) {
    fail(
        "GradScaler.step: no inf checks were recorded for this optimizer (none of its "
        "parameters has a grad)");
  }
  if (st.stage == Stage::unscaled && !I.check_pending && !I.inf_recorded) {
    fail(
        "GradScaler.step: no inf checks were recorded for this optimizer (none of its "
        "parameters had a grad when unscale_() was called)");
  }
  if (st.stage == Stage::ready) unscale_(optimizer);
  detail::OptimizerAccess::run_pending_check(I, "GradScaler.step");
  st.recorded = I.inf_recorded;
  {
    struct InScalerStep {  // reset also when the step throws
      bool& flag;
      explicit InScalerStep(bool& f) : flag(f) { flag = true; }
      ~InScalerStep() { flag = false; }
    } in_step(I.in_scaler_step);
    optimizer.step();
  }
  st.stage = Stage::stepped;
  // update() reads found_inf from this block: a fused clip before then must not reset it.
  I.found_inf_held = st.recorded;
  // During a CUDA graph capture nothing may be read back: whether a replay skipped its step
  // is last_step_skipped() after the replay.
  if (I.capturable && detail::device_capturing(I.device)) return true;
  return !optimizer.last_step_skipped();
}

void GradScaler::release_unstepped(const char* op) {
  for (auto& kv : per_optimizer_) {
    PerOptimizer& st = kv.second;
    if (st.alive.expired()) continue;
    detail::OptimizerImpl& I = detail::OptimizerAccess::impl(*kv.first);
    if (st.stage == Stage::stepped) {
      I.found_inf_held = false;  // read (or dropped) by now
      // A fused clip after the step (of grads already stepped) left its coefficient pending on
      // the spare block. PyTorch's clip rewrote those grads, and the iteration ends here: the
      // coefficient goes into them and the block is released. Left active, it carried into the
      // next iteration unreset: new grads copied in place were multiplied by the stale
      // coefficient (a stale found_inf skipped their step), and a captured iteration, which
      // reset only the blocks it activated, compounded the coefficient on every replay.
      if (I.gs_active) {
        detail::OptimizerAccess::settle(I, true, op);
        I.gs_active = false;
        I.check_pending = false;
        I.inf_recorded = false;
      }
      continue;
    }
    if (st.stage != Stage::unscaled) continue;
    detail::OptimizerAccess::settle(I, true, op);
    I.gs_active = false;
    I.check_pending = false;
    I.inf_recorded = false;
  }
  per_optimizer_.clear();
}

void GradScaler::update() {
  if (!options_.enabled) return;
  std::vector<const float*> found;
  for (auto& kv : per_optimizer_) {
    PerOptimizer& st = kv.second;
    if (st.stage == Stage::unscaled && !st.alive.expired()) {
      // Unscaled, not stepped: its check has to run before its flag is read.
      detail::OptimizerImpl& I = detail::OptimizerAccess::impl(*kv.first);
      detail::OptimizerAccess::run_pending_check(I, "GradScaler.update");
      st.recorded = I.inf_recorded;
    }
    if (st.recorded && st.found_inf_block.defined()) {
      found.push_back(static_cast<const float*>(st.found_inf_block.data()) + TRAINRT_GS_FOUND_INF);
    }
  }
  if (!scale_.defined() || found.empty()) {
    fail(
        "GradScaler.update: no inf checks were recorded prior to update() (call step() or "
        "unscale_() for an optimizer first)");
  }
  const trainrt_backend_v1& api = detail::backend_for(scale_.device());
  trainrt_amp_args a{};
  a.op = TRAINRT_AMP_UPDATE_SCALE;
  a.n_found_infs = static_cast<std::int32_t>(found.size());
  a.found_infs = found.data();
  a.scale = static_cast<float*>(scale_.data());
  a.growth_tracker = static_cast<std::int32_t*>(growth_tracker_.data());
  a.growth_factor = options_.growth_factor;
  a.backoff_factor = options_.backoff_factor;
  a.growth_interval = options_.growth_interval;
  detail::check_backend(api, api.amp(scale_.device().index(), &a), "GradScaler.update");
  release_unstepped("GradScaler.update");
}

void GradScaler::update(double new_scale) {
  if (!options_.enabled) return;
  check_scale(new_scale, "new_scale");
  if (!scale_.defined()) {
    fail("GradScaler.update: the scale is not initialised yet (call scale() or unscale_() first)");
  }
  const float v = static_cast<float>(new_scale);
  detail::write_device_floats(scale_.device(), static_cast<float*>(scale_.data()), &v, 1);
  release_unstepped("GradScaler.update");
}

double GradScaler::get_scale() const {
  if (!options_.enabled) return 1.0;
  if (!scale_.defined()) return options_.init_scale;
  return detail::read_device_float(scale_.device(), static_cast<const float*>(scale_.data()));
}

std::int64_t GradScaler::get_growth_tracker() const {
  if (!options_.enabled) return 0;
  if (!growth_tracker_.defined()) return init_growth_tracker_;
  return growth_tracker_.to_vector<std::int32_t>()[0];
}

void GradScaler::set_growth_factor(double v) {
  check_growth_factor(v);
  options_.growth_factor = v;
}
void GradScaler::set_backoff_factor(double v) {
  check_backoff_factor(v);
  options_.backoff_factor = v;
}
void GradScaler::set_growth_interval(std::int64_t v) {
  check_growth_interval(v);
  options_.growth_interval = v;
}

StateDict GradScaler::state_dict() const {
  StateDict sd;
  if (!options_.enabled) return sd;
  sd.scalars["scale"] = get_scale();
  sd.scalars["growth_factor"] = options_.growth_factor;
  sd.scalars["backoff_factor"] = options_.backoff_factor;
  sd.scalars["growth_interval"] = static_cast<double>(options_.growth_interval);
  sd.scalars["_growth_tracker"] = static_cast<double>(get_growth_tracker());
  return sd;
}

void GradScaler::load_state_dict(const StateDict& sd) {
  if (!options_.enabled) return;
  if (sd.empty()) {
    fail(
        "GradScaler.load_state_dict: the source state dict is empty, possibly because it was "
        "saved from a disabled GradScaler");
  }
  auto get = [&](const char* k) {
    auto it = sd.scalars.find(k);
    if (it == sd.scalars.end()) fail("GradScaler.load_state_dict: no '{}' entry", k);
    return it->second;
  };
  const double scale = get("scale"), gf = get("growth_factor"), bf = get("backoff_factor");
  const double gi = get("growth_interval"), tracker = get("_growth_tracker");
  // 0 too: a scale that backoff underflowed to 0 is what state_dict() saves then (PyTorch
  // loads any value).
  check_scale(scale, "scale", true);
  check_growth_factor(gf);
  check_backoff_factor(bf);
  if (gi != std::floor(gi))
    fail("GradScaler.load_state_dict: growth_interval {} is not an integer", gi);
  if (!(std::fabs(gi) <= 2147483647.0)) {  // before the conversion (undefined beyond int64)
    fail("GradScaler: growth_interval must be a positive 32-bit integer, got {}", gi);
  }
  check_growth_interval(static_cast<std::int64_t>(gi));
  // Any count a scaler can reach: set_growth_interval may have put the interval below it, and
  // then it keeps counting without growth, as torch's does (the device counter is an int32).
  if (!(tracker >= 0.0) || tracker != std::floor(tracker) ||
      tracker > static_cast<double>(std::numeric_limits<std::int32_t>::max())) {
    fail("GradScaler.load_state_dict: _growth_tracker must be an integer in [0, 2^31), got {}",
         tracker);
  }
  for (const auto& kv : sd.scalars) {
    const std::string& k = kv.first;
    if (k != "scale" && k != "growth_factor" && k != "backoff_factor" && k != "growth_interval" &&
        k != "_growth_tracker") {
      fail("GradScaler.load_state_dict: unexpected entry '{}'", k);
    }
  }
  if (!sd.strings.empty()) {
    fail("GradScaler.load_state_dict: unexpected entry '{}'", sd.strings.begin()->first);
  }
  if (!sd.tensors.empty()) {
    fail("GradScaler.load_state_dict: unexpected tensor '{}'", sd.tensors.begin()->first);
  }
  options_.init_scale = scale;
  options_.growth_factor = gf;
  options_.backoff_factor = bf;
  options_.growth_interval = static_cast<std::int64_t>(gi);
  init_growth_tracker_ = static_cast<std::int64_t>(tracker);
  if (scale_.defined()) {
    const float v = static_cast<float>(scale);
    detail::write_device_floats(scale_.device(), static_cast<float*>(scale_.data()), &v, 1);
    growth_tracker_.copy_(Tensor::from_vector(
        std::vector<std::int32_t>{static_cast<std::int32_t>(tracker)}, {1}, Device::cpu()));
  }
}

}  // namespace trainrt
