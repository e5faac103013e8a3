// Learning-rate schedulers: torch.optim.lr_scheduler (PyTorch 1.13) transcribed expression by
// expression, in double, so that every lr comes out with the same bits as Python's floats
// (same operation order, same libm calls). See include/trainrt/schedulers.hpp.
#include "trainrt/schedulers.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "internal.hpp"

namespace trainrt {
namespace detail {

using optim::Optimizer;

namespace {

constexpr double kPi = 3.141592653589793;  // math.pi

/// Python's a % b for b > 0 (the result has the sign of b).
std::int64_t py_mod(std::int64_t a, std::int64_t b) {
  std::int64_t r = a % b;
  if (r != 0 && ((r < 0) != (b < 0))) r += b;
  return r;
}

/// Python's a // b for b > 0.
std::int64_t py_floordiv(std::int64_t a, std::int64_t b) {
  std::int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

// ---- initial_lr: PyTorch stores it in the optimizer's param groups; trainrt beside it -------

struct InitialLr {
  int refs = 0;
  std::vector<double> lrs;
};

// Both are made on first use and never destroyed: a scheduler held in a global or static
// object is destroyed after function-local statics made later, and its destructor still
// releases its entry.
std::mutex& registry_mutex() {
  static std::mutex* m = new std::mutex;
  return *m;
}

std::map<const Optimizer*, InitialLr>& registry() {
  static auto* r = new std::map<const Optimizer*, InitialLr>;
  return *r;
}

/// group.setdefault('initial_lr', group['lr']) for every group; returns the initial lrs.
std::vector<double> setdefault_initial_lr(const Optimizer& opt) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  InitialLr& e = registry()[&opt];
  const std::size_t n = opt.param_groups().size();
  for (std::size_t g = e.lrs.size(); g < n; ++g) e.lrs.push_back(opt.lr(g));
  return std::vector<double>(e.lrs.begin(), e.lrs.begin() + static_cast<std::ptrdiff_t>(n));
}

std::vector<double> initial_lr(const Optimizer& opt) { return setdefault_initial_lr(opt); }

void set_initial_lr(const Optimizer& opt, const std::vector<double>& lrs) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  registry()[&opt].lrs = lrs;
}

void acquire(const Optimizer& opt) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  ++registry()[&opt].refs;
}

void release(const Optimizer& opt) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  auto it = registry().find(&opt);
  if (it != registry().end() && --it->second.refs <= 0) registry().erase(it);
}

// ---- state dict fields ------------------------------------------------------------------------

/// The serialised members of a scheduler, by PyTorch's attribute names.
struct Fields {
  std::vector<std::pair<std::string, std::int64_t*>> ints;
  std::vector<std::pair<std::string, double*>> reals;
  std::vector<std::pair<std::string, bool*>> flags;
  std::vector<std::pair<std::string, std::string*>> strs;
  /// (name, values, one per param group?)
  std::vector<std::tuple<std::string, std::vector<double>*, bool>> vecs;
  std::vector<std::pair<std::string, std::vector<std::int64_t>*>> ivecs;
};

}  // namespace

struct SchedulerImpl {
  std::string name;
  Optimizer* opt = nullptr;
  std::int64_t last_epoch = -1;
  std::int64_t step_count = 0;
  std::vector<double> base_lrs, last_lr;

  std::size_t made_for = 0;  // the optimizer's param groups when the scheduler was made

  SchedulerImpl(std::string n, Optimizer& o)
      : name(std::move(n)), opt(&o), made_for(o.param_groups().size()) {
    acquire(o);
  }
  virtual ~SchedulerImpl() { release(*opt); }
  SchedulerImpl(const SchedulerImpl&) = delete;
  SchedulerImpl& operator=(const SchedulerImpl&) = delete;

  std::size_t groups() const { return opt->param_groups().size(); }
  /// The per-group state (base_lrs, bounds, lambdas) covers the groups there were when the
  /// scheduler was made; a group added since has none (PyTorch would schedule some groups and
  /// not others, or raise KeyError), so stepping then is refused.
  void check_groups() const {
    if (groups() != made_for) {
      fail(
          "{}: the optimizer has {} param groups but had {} when this scheduler was made; make "
          "the scheduler after add_param_group",
          name, groups(), made_for);
    }
  }
  /// The lrs a chainable form starts from: the optimizer's, except where this scheduler wrote a
  /// negative lr as 0 (apply) and the 0 is still there: the chain goes on from the negative
  /// value, as PyTorch's, which wrote it.
  std::vector<double> group_lrs() const {
    std::vector<double> v;
    for (std::size_t g = 0; g < groups(); ++g) {
      const double lr = opt->lr(g);
      v.push_back(lr == 0.0 && g < last_lr.size() && last_lr[g] < 0.0 ? last_lr[g] : lr);
    }
    return v;
  }

  /// _LRScheduler.__init__ with last_epoch=-1: base_lrs from initial_lr, then the initial step.
  void init_base() {
    base_lrs = setdefault_initial_lr(*opt);
    last_epoch = -1;
  }

  /// The chainable form (get_lr); may write momentum into the optimizer through `momentum`.
  virtual std::vector<double> get_lr() = 0;
  virtual bool has_closed_form() const { return false; }
  virtual std::vector<double> closed_form() { return get_lr(); }
  /// Momentum / beta1 values to write along with the lrs (empty: none).
  std::vector<double> pending_momentum;
  std::string momentum_key;

  virtual void fields(Fields& f) {
    f.vecs.emplace_back("base_lrs", &base_lrs, true);
    f.ints.emplace_back("last_epoch", &last_epoch);
    f.ints.emplace_back("_step_count", &step_count);
    f.vecs.emplace_back("_last_lr", &last_lr, true);
  }
  /// Validates the configuration (after construction and after a load).
  virtual void check() const {}

  /// True where a negative lr may be written as 0 (see OneCycleLR).
  virtual bool clamps_negative_lr() const { return false; }

  /// Writes lrs (and pending momentum) into the optimizer; all values validated first.
  /// A chainable form that reaches 0 does so through rounding: LinearLR with end_factor 0, or
  /// the cosine back to a base lr of 0, gives -1e-18 where the exact value is 0. That is written
  /// as 0 (get_last_lr() keeps PyTorch's value); a negative lr beyond the rounding of the lrs
  /// this step starts from is refused.
  bool rounding_zero(std::size_t g, double lr) const { return lr >= -1e-10 * lr_scale(g); }
  /// The magnitude of the lrs group g's schedule works with: its rounding errors scale with it.
  virtual double lr_scale(std::size_t g) const {
    double ref = std::fabs(opt->lr(g));
    if (g < base_lrs.size()) ref = std::max(ref, std::fabs(base_lrs[g]));
    return ref;
  }

  void apply(const std::vector<double>& lrs) {
    const bool clamp = clamps_negative_lr();
    // Everything the optimizer would refuse is refused here first, so that a failed step
    // changes no group: negative (beyond rounding) or non-finite, also as the f32 the
    // optimizer keeps (PyTorch writes an lr above 3.4e38; its step then fails).
    for (std::size_t g = 0; g < lrs.size(); ++g) {
      if (!std::isfinite(static_cast<float>(lrs[g])) ||
          (!(lrs[g] >= 0.0) && !clamp && !rounding_zero(g, lrs[g]))) {
        fail("{}: the schedule gives param group {} an invalid lr {}", name, g, lrs[g]);
      }
    }
    for (std::size_t g = 0; g < pending_momentum.size(); ++g) {
      const double m = pending_momentum[g];
      if (!std::isfinite(static_cast<float>(m)) || m < 0.0 ||
          (momentum_key == "beta1" && m >= 1.0)) {
        fail("{}: the schedule gives param group {} an invalid {} {}", name, g, momentum_key, m);
      }
    }
    std::vector<double> old_lrs, old_m;
    for (std::size_t g = 0; g < lrs.size(); ++g) old_lrs.push_back(opt->lr(g));
    for (std::size_t g = 0; g < pending_momentum.size(); ++g)
      old_m.push_back(opt->get(g, momentum_key));
    try {
      for (std::size_t g = 0; g < lrs.size(); ++g) opt->set(g, "lr", std::max(lrs[g], 0.0));
      for (std::size_t g = 0; g < pending_momentum.size(); ++g) {
        opt->set(g, momentum_key, pending_momentum[g]);
      }
    } catch (...) {  // whatever else the optimizer refuses: the groups as they were
      for (std::size_t g = 0; g < old_lrs.size(); ++g) opt->set(g, "lr", old_lrs[g]);
      for (std::size_t g = 0; g < old_m.size(); ++g) opt->set(g, momentum_key, old_m[g]);
      throw;
    }
    pending_momentum.clear();
    last_lr = lrs;
  }

  /// _LRScheduler.step(epoch): chainable form, or the closed form when an epoch is given.
  void step_epoch(bool with_epoch, std::int64_t epoch) {
    const std::int64_t saved_epoch = last_epoch, saved_count = step_count;
    try {
      ++step_count;
      std::vector<double> lrs;
      pending_momentum.clear();
      if (!with_epoch) {
        ++last_epoch;
        lrs = get_lr();
      } else {
        last_epoch = epoch;
        lrs = has_closed_form() ? closed_form() : get_lr();
      }
      apply(lrs);
    } catch (...) {
      last_epoch = saved_epoch;
      step_count = saved_count;
      pending_momentum.clear();
      throw;
    }
  }

  void initial_step() {
    step_count = 0;
    step_epoch(false, 0);
  }

  virtual void step() { step_epoch(false, 0); }
  virtual void step_metric(double) {
    fail("{}: step(metric) is for ReduceLROnPlateau; call step()", name);
  }
  virtual bool needs_metric() const { return false; }

  // -- state dict ----------------------------------------------------------------------------

  void save(StateDict& sd, const std::string& pre) {
    Fields f;
    fields(f);
    sd.strings[pre + "scheduler"] = name;
    for (auto& kv : f.ints) sd.scalars[pre + kv.first] = static_cast<double>(*kv.second);
    for (auto& kv : f.reals) sd.scalars[pre + kv.first] = *kv.second;
    for (auto& kv : f.flags) sd.scalars[pre + kv.first] = *kv.second ? 1.0 : 0.0;
    for (auto& kv : f.strs) sd.strings[pre + kv.first] = *kv.second;
    for (auto& v : f.vecs) {
      const std::string& k = std::get<0>(v);
      const std::vector<double>& x = *std::get<1>(v);
      sd.scalars[pre + k] = static_cast<double>(x.size());
      for (std::size_t i = 0; i < x.size(); ++i)
        sd.scalars[pre + k + "." + std::to_string(i)] = x[i];
    }
    for (auto& kv : f.ivecs) {
      const std::vector<std::int64_t>& x = *kv.second;
      sd.scalars[pre + kv.first] = static_cast<double>(x.size());
      for (std::size_t i = 0; i < x.size(); ++i) {
        sd.scalars[pre + kv.first + "." + std::to_string(i)] = static_cast<double>(x[i]);
      }
    }
    save_children(sd, pre);
  }
  virtual void save_children(StateDict&, const std::string&) {}

  /// Reads every field (marking the keys it used); throws on a missing or malformed entry.
  /// Fields are assigned as they are read: callers restore a snapshot on failure.
  void load(const StateDict& sd, const std::string& pre, std::set<std::string>& used) {
    const std::string op = name + ".load_state_dict";
    auto s = sd.strings.find(pre + "scheduler");
    if (s == sd.strings.end()) fail("{}: the state dict has no '{}scheduler' entry", op, pre);
    if (s->second != name) {
      fail("{}: the state dict is of a {}, not of a {}", op, s->second, name);
    }
    used.insert(pre + "scheduler");
    auto scalar = [&](const std::string& k) {
      auto it = sd.scalars.find(pre + k);
      if (it == sd.scalars.end()) fail("{}: the state dict has no '{}{}' entry", op, pre, k);
      used.insert(pre + k);
      return it->second;
    };
    auto integer = [&](const std::string& k) {
      const double v = scalar(k);
      if (!(std::fabs(v) <= 9007199254740992.0) || v != std::floor(v)) {
        fail("{}: '{}{}' must be an integer, got {}", op, pre, k, v);
      }
      return static_cast<std::int64_t>(v);
    };
    auto count = [&](const std::string& k) {
      const std::int64_t n = integer(k);
      if (n < 0 || n > (1 << 24)) fail("{}: '{}{}' must be a length, got {}", op, pre, k, n);
      return static_cast<std::size_t>(n);
    };
    Fields f;
    fields(f);
    for (auto& kv : f.ints) *kv.second = integer(kv.first);
    for (auto& kv : f.reals) *kv.second = scalar(kv.first);
    for (auto& kv : f.flags) {
      const double v = scalar(kv.first);
      if (v != 0.0 && v != 1.0) fail("{}: '{}{}' is a flag (0 or 1), got {}", op, pre, kv.first, v);
      *kv.second = v != 0.0;
    }
    for (auto& kv : f.strs) {
      auto it = sd.strings.find(pre + kv.first);
      if (it == sd.strings.end()) fail("{}: the state dict has no '{}{}' entry", op, pre, kv.first);
      used.insert(pre + kv.first);
      *kv.second = it->second;
    }
    for (auto& v : f.vecs) {
      const std::string& k = std::get<0>(v);
      const std::size_t n = count(k);
      if (std::get<2>(v) && n != groups()) {
        fail("{}: '{}{}' has {} values, the optimizer has {} param groups", op, pre, k, n,
             groups());
      }
      std::vector<double> x(n);
      for (std::size_t i = 0; i < n; ++i) x[i] = scalar(k + "." + std::to_string(i));
      *std::get<1>(v) = std::move(x);
    }
    for (auto& kv : f.ivecs) {
      const std::size_t n = count(kv.first);
      std::vector<std::int64_t> x(n);
      for (std::size_t i = 0; i < n; ++i) x[i] = integer(kv.first + "." + std::to_string(i));
      *kv.second = std::move(x);
    }
    load_children(sd, pre, used);
    check();
    loaded();
  }
  virtual void load_children(const StateDict&, const std::string&, std::set<std::string>&) {}
  /// Recomputes what the fields determine (OneCycleLR's phases) after a load or a restore.
  virtual void loaded() {}

  /// Every field's value, copied, and restored as it was without validation: a failed load
  /// always undoes itself (reloading the scheduler's own state dict could fail too: counts past
  /// 2^53, a param group added since).
  struct Raw {
    std::vector<std::int64_t> ints;
    std::vector<double> reals;
    std::vector<bool> flags;
    std::vector<std::string> strs;
    std::vector<std::vector<double>> vecs;
    std::vector<std::vector<std::int64_t>> ivecs;
    std::vector<Raw> children;
  };
  Raw raw() {
    Fields f;
    fields(f);
    Raw r;
    for (auto& kv : f.ints) r.ints.push_back(*kv.second);
    for (auto& kv : f.reals) r.reals.push_back(*kv.second);
    for (auto& kv : f.flags) r.flags.push_back(*kv.second);
    for (auto& kv : f.strs) r.strs.push_back(*kv.second);
    for (auto& v : f.vecs) r.vecs.push_back(*std::get<1>(v));
    for (auto& kv : f.ivecs) r.ivecs.push_back(*kv.second);
    raw_children(r.children);
    return r;
  }
  void restore(const Raw& r) {
    Fields f;
    fields(f);
    for (std::size_t i = 0; i < f.ints.size(); ++i) *f.ints[i].second = r.ints[i];
    for (std::size_t i = 0; i < f.reals.size(); ++i) *f.reals[i].second = r.reals[i];
    for (std::size_t i = 0; i < f.flags.size(); ++i) *f.flags[i].second = r.flags[i];
    for (std::size_t i = 0; i < f.strs.size(); ++i) *f.strs[i].second = r.strs[i];
    for (std::size_t i = 0; i < f.vecs.size(); ++i) *std::get<1>(f.vecs[i]) = r.vecs[i];
    for (std::size_t i = 0; i < f.ivecs.size(); ++i) *f.ivecs[i].second = r.ivecs[i];
    restore_children(r.children);
    loaded();
  }
  virtual void raw_children(std::vector<Raw>&) {}
  virtual void restore_children(const std::vector<Raw>&) {}
};

struct SchedulerAccess {
  static SchedulerImpl& impl(const optim::LRScheduler& s) { return *s.impl_; }
};

namespace {

std::vector<double> per_group(const std::string& op, const std::string& what,
                              const std::vector<double>& v, std::size_t groups) {
  if (v.size() == 1) return std::vector<double>(groups, v[0]);
  if (v.size() != groups) {
    fail("{}: expected {} values for {} (one per param group) or one, got {}", op, groups, what,
         v.size());
  }
  return v;
}

void check_nondecreasing(const std::string& op, const char* what,
                         const std::vector<std::int64_t>& m) {
  for (std::size_t i = 1; i < m.size(); ++i) {
    if (m[i] < m[i - 1]) {
      fail("{}: {} must be increasing, got {} after {} (position {})", op, what, m[i], m[i - 1], i);
    }
  }
}

// ---- the schedulers ---------------------------------------------------------------------------

struct StepLRImpl : SchedulerImpl {
  std::int64_t step_size;
  double gamma;
  StepLRImpl(Optimizer& o, std::int64_t s, double g)
      : SchedulerImpl("StepLR", o), step_size(s), gamma(g) {}
  void check() const override {
    if (step_size <= 0) fail("StepLR: step_size must be > 0, got {}", step_size);
    if (!(gamma > 0.0) || !std::isfinite(gamma)) fail("StepLR: gamma must be > 0, got {}", gamma);
  }
  std::vector<double> get_lr() override {
    std::vector<double> lrs = group_lrs();
    if (last_epoch == 0 || py_mod(last_epoch, step_size) != 0) return lrs;
    for (double& lr : lrs) lr = lr * gamma;
    return lrs;
  }
  bool has_closed_form() const override { return true; }
  std::vector<double> closed_form() override {
    std::vector<double> lrs;
    const double e = static_cast<double>(py_floordiv(last_epoch, step_size));
    for (double b : base_lrs) lrs.push_back(b * std::pow(gamma, e));
    return lrs;
  }
  void fields(Fields& f) override {
    SchedulerImpl::fields(f);
    f.ints.emplace_back("step_size", &step_size);
    f.reals.emplace_back("gamma", &gamma);
  }
};

struct MultiStepLRImpl : SchedulerImpl {
  std::vector<std::int64_t> milestones;
  double gamma;
  MultiStepLRImpl(Optimizer& o, std::vector<std::int64_t> m, double g)
      : SchedulerImpl("MultiStepLR", o), milestones(std::move(m)), gamma(g) {}
  void check() const override {
    check_nondecreasing("MultiStepLR", "milestones", milestones);
    if (!(gamma > 0.0) || !std::isfinite(gamma)) {
      fail("MultiStepLR: gamma must be > 0, got {}", gamma);
    }
  }
  std::vector<double> get_lr() override {
    std::vector<double> lrs = group_lrs();
    const auto n = std::count(milestones.begin(), milestones.end(), last_epoch);
    if (n == 0) return lrs;
    for (double& lr : lrs) lr = lr * std::pow(gamma, static_cast<double>(n));
    return lrs;
  }
  bool has_closed_form() const override { return true; }
  std::vector<double> closed_form() override {
    const auto k =
        std::upper_bound(milestones.begin(), milestones.end(), last_epoch) - milestones.begin();
    std::vector<double> lrs;
    for (double b : base_lrs) lrs.push_back(b * std::pow(gamma, static_cast<double>(k)));
    return lrs;
  }
  void fields(Fields& f) override {
    SchedulerImpl::fields(f);
    f.ivecs.emplace_back("milestones", &milestones);
    f.reals.emplace_back("gamma", &gamma);
  }
};

struct ExponentialLRImpl : SchedulerImpl {
  double gamma;
  ExponentialLRImpl(Optimizer& o, double g) : SchedulerImpl("ExponentialLR", o), gamma(g) {}
  void check() const override {
    if (!(gamma > 0.0) || !std::isfinite(gamma)) {
      fail("ExponentialLR: gamma must be > 0, got {}", gamma);
    }
  }
  std::vector<double> get_lr() override {
    std::vector<double> lrs = group_lrs();
    if (last_epoch == 0) return lrs;
    for (double& lr : lrs) lr = lr * gamma;
    return lrs;
  }
  bool has_closed_form() const override { return true; }
  std::vector<double> closed_form() override {
    std::vector<double> lrs;
    for (double b : base_lrs) lrs.push_back(b * std::pow(gamma, static_cast<double>(last_epoch)));
    return lrs;
  }
  void fields(Fields& f) override {
    SchedulerImpl::fields(f);
    f.reals.emplace_back("gamma", &gamma);
  }
};

struct CosineAnnealingLRImpl : SchedulerImpl {
  std::int64_t T_max;
  double eta_min;
  CosineAnnealingLRImpl(Optimizer& o, std::int64_t t, double e)
      : SchedulerImpl("CosineAnnealingLR", o), T_max(t), eta_min(e) {}
  double lr_scale(std::size_t g) const override {
    return std::max(SchedulerImpl::lr_scale(g), eta_min);
  }
  void check() const override {
    if (T_max <= 0) fail("CosineAnnealingLR: T_max must be > 0, got {}", T_max);
    if (!(eta_min >= 0.0) || !std::isfinite(eta_min)) {
      fail("CosineAnnealingLR: eta_min must be >= 0, got {}", eta_min);
    }
  }
  std::vector<double> get_lr() override {
    std::vector<double> lrs = group_lrs();
    const double le = static_cast<double>(last_epoch), T = static_cast<double>(T_max);
    if (last_epoch == 0) return lrs;
    if (step_count == 1 && last_epoch > 0) {
      for (std::size_t g = 0; g < lrs.size(); ++g) {
        lrs[g] = eta_min + (base_lrs[g] - eta_min) * (1 + std::cos(le * kPi / T)) / 2;
      }
    } else if (py_mod(last_epoch - 1 - T_max, 2 * T_max) == 0) {
      for (std::size_t g = 0; g < lrs.size(); ++g) {
        lrs[g] = lrs[g] + (base_lrs[g] - eta_min) * (1 - std::cos(kPi / T)) / 2;
      }
    } else {
      for (double& lr : lrs) {
        lr = (1 + std::cos(kPi * le / T)) / (1 + std::cos(kPi * (le - 1) / T)) * (lr - eta_min) +
             eta_min;
      }
    }
    return lrs;
  }
  bool has_closed_form() const override { return true; }
  std::vector<double> closed_form() override {
    const double le = static_cast<double>(last_epoch), T = static_cast<double>(T_max);
    std::vector<double> lrs;
    for (double b : base_lrs)
      lrs.push_back(eta_min + (b - eta_min) * (1 + std::cos(kPi * le / T)) / 2);
    return lrs;
  }
  void fields(Fields& f) override {
    SchedulerImpl::fields(f);
    f.ints.emplace_back("T_max", &T_max);
    f.reals.emplace_back("eta_min", &eta_min);
  }
};

struct LinearLRImpl : SchedulerImpl {
  double start_factor, end_factor;
  std::int64_t total_iters;
  LinearLRImpl(Optimizer& o, double s, double e, std::int64_t t)
      : SchedulerImpl("LinearLR", o), start_factor(s), end_factor(e), total_iters(t) {}
  void check() const override {
    if (!(start_factor > 0.0 && start_factor <= 1.0)) {
      fail("LinearLR: start_factor must be in (0, 1], got {}", start_factor);
    }
    if (!(end_factor >= 0.0 && end_factor <= 1.0)) {
      fail("LinearLR: end_factor must be in [0, 1], got {}", end_factor);
    }
    if (total_iters <= 0) fail("LinearLR: total_iters must be > 0, got {}", total_iters);
  }
  std::vector<double> get_lr() override {
    std::vector<double> lrs = group_lrs();
    if (last_epoch == 0) {
      for (double& lr : lrs) lr = lr * start_factor;
      return lrs;
    }
    if (last_epoch > total_iters) return lrs;
    const double d = end_factor - start_factor;
    for (double& lr : lrs) {
      lr = lr * (1. + d / (static_cast<double>(total_iters) * start_factor +
                           static_cast<double>(last_epoch - 1) * d));
    }
    return lrs;
  }
  bool has_closed_form() const override { return true; }
  std::vector<double> closed_form() override {
    std::vector<double> lrs;
    const double m = static_cast<double>(std::min(total_iters, last_epoch));
    for (double b : base_lrs) {
      lrs.push_back(
          b * (start_factor + (end_factor - start_factor) * m / static_cast<double>(total_iters)));
    }
    return lrs;
  }
  void fields(Fields& f) override {
    SchedulerImpl::fields(f);
    f.reals.emplace_back("start_factor", &start_factor);
    f.reals.emplace_back("end_factor", &end_factor);
    f.ints.emplace_back("total_iters", &total_iters);
  }
};

struct LambdaLRImpl : SchedulerImpl {
  std::vector<optim::LambdaLR::Lambda> fns;
  LambdaLRImpl(Optimizer& o, std::vector<optim::LambdaLR::Lambda> f)
      : SchedulerImpl("LambdaLR", o), fns(std::move(f)) {}
  std::vector<double> get_lr() override {
    std::vector<double> lrs;
    for (std::size_t g = 0; g < base_lrs.size(); ++g) {
      lrs.push_back(base_lrs[g] * fns[g](last_epoch));
    }
    return lrs;
  }
};

struct SequentialLRImpl : SchedulerImpl {
  std::vector<std::shared_ptr<optim::LRScheduler>> scheds;
  std::vector<std::int64_t> milestones;
  SequentialLRImpl(Optimizer& o, std::vector<std::shared_ptr<optim::LRScheduler>> s,
                   std::vector<std::int64_t> m)
      : SchedulerImpl("SequentialLR", o), scheds(std::move(s)), milestones(std::move(m)) {}
  SchedulerImpl& sub(std::size_t i) { return SchedulerAccess::impl(*scheds[i]); }
  std::vector<double> get_lr() override { return last_lr; }
  void check() const override { check_nondecreasing("SequentialLR", "milestones", milestones); }
  void step() override {
    const std::int64_t saved = last_epoch;
    ++last_epoch;
    const std::size_t idx = static_cast<std::size_t>(
        std::upper_bound(milestones.begin(), milestones.end(), last_epoch) - milestones.begin());
    try {
      SchedulerImpl& s = sub(idx);
      if (idx > 0 && milestones[idx - 1] == last_epoch) {
        s.step_epoch(true, 0);
      } else {
        s.step();
      }
      last_lr = s.last_lr;
    } catch (...) {
      last_epoch = saved;
      throw;
    }
  }
  void fields(Fields& f) override {
    f.ints.emplace_back("last_epoch", &last_epoch);
    f.ivecs.emplace_back("_milestones", &milestones);
    f.vecs.emplace_back("_last_lr", &last_lr, true);
  }
  void raw_children(std::vector<Raw>& r) override {
    for (std::size_t i = 0; i < scheds.size(); ++i) r.push_back(sub(i).raw());
  }
  void restore_children(const std::vector<Raw>& r) override {
    for (std::size_t i = 0; i < scheds.size(); ++i) sub(i).restore(r[i]);
  }
  void save_children(StateDict& sd, const std::string& pre) override {
    sd.scalars[pre + "_schedulers"] = static_cast<double>(scheds.size());
    for (std::size_t i = 0; i < scheds.size(); ++i) {
      sub(i).save(sd, pre + "_schedulers." + std::to_string(i) + ".");
    }
  }
  void load_children(const StateDict& sd, const std::string& pre,
                     std::set<std::string>& used) override {
    auto it = sd.scalars.find(pre + "_schedulers");
    if (it == sd.scalars.end() || it->second != static_cast<double>(scheds.size())) {
      fail("SequentialLR.load_state_dict: the state dict does not hold {} schedulers",
           scheds.size());
    }
    used.insert(pre + "_schedulers");
    for (std::size_t i = 0; i < scheds.size(); ++i) {
      sub(i).load(sd, pre + "_schedulers." + std::to_string(i) + ".", used);
    }
    if (milestones.size() + 1 != scheds.size()) {
      fail("SequentialLR.load_state_dict: {} milestones for {} schedulers", milestones.size(),
           scheds.size());
    }
  }
};

/// Momentum hyperparameter of an optimizer: "beta1" (PyTorch's betas[0]) or "momentum".
std::string momentum_key_of(const Optimizer& o, bool allow_beta1, const std::string& op) {
  if (allow_beta1 && o.defaults().count("beta1")) return "beta1";
  if (o.defaults().count("momentum")) return "momentum";
  if (allow_beta1) {
    fail(
        "{}: optimizer {} has neither momentum nor betas; cycle_momentum needs one (pass "
        "cycle_momentum(false))",
        op, o.name());
  }
  fail(
      "{}: optimizer {} has no momentum hyperparameter; cycle_momentum needs one (PyTorch 1.13 "
      "does not cycle betas here: pass cycle_momentum(false))",
      op, o.name());
}

struct OneCycleLRImpl : SchedulerImpl {
  std::int64_t total_steps = 0;
  double pct_start = 0.3;
  bool three_phase = false, cycle_momentum = true, use_beta1 = false;
  std::string anneal_strategy;
  std::vector<double> initial_lrs, max_lrs, min_lrs, max_momentums, base_momentums;
  struct Phase {
    double end_step;
    int start_lr, end_lr, start_m, end_m;  // 0 initial, 1 max, 2 min / 0 max_m, 1 base_m
  };
  std::vector<Phase> phases;

  OneCycleLRImpl(Optimizer& o) : SchedulerImpl("OneCycleLR", o) {}

  void loaded() override { make_phases(); }
  void make_phases() {
    const double T = static_cast<double>(total_steps);
    if (three_phase) {
      phases = {{static_cast<double>(pct_start * T) - 1, 0, 1, 0, 1},
                {static_cast<double>(2 * pct_start * T) - 2, 1, 0, 1, 0},
                {T - 1, 0, 2, 0, 0}};
    } else {
      phases = {{static_cast<double>(pct_start * T) - 1, 0, 1, 0, 1}, {T - 1, 1, 2, 1, 0}};
    }
  }
  void check() const override {
    if (total_steps <= 0) fail("OneCycleLR: total_steps must be > 0, got {}", total_steps);
    if (!(pct_start >= 0.0 && pct_start <= 1.0)) {
      fail("OneCycleLR: pct_start must be in [0, 1], got {}", pct_start);
    }
    if (anneal_strategy != "cos" && anneal_strategy != "linear") {
      fail("OneCycleLR: anneal_strategy must be 'cos' or 'linear', got '{}'", anneal_strategy);
    }
    for (std::size_t g = 0; g < groups(); ++g) {
      if (!(max_lrs[g] >= 0.0) || !std::isfinite(max_lrs[g]) || !(initial_lrs[g] >= 0.0) ||
          !(min_lrs[g] >= 0.0)) {
        fail("OneCycleLR: invalid lrs for param group {} (max_lr {}, initial {}, min {})", g,
             max_lrs[g], initial_lrs[g], min_lrs[g]);
      }
    }
    if (cycle_momentum) {
      // As the constructor chose (a loaded dict may say otherwise): beta1 where the optimizer
      // has betas, else momentum.
      if (use_beta1 != (momentum_key_of(*opt, true, "OneCycleLR") == "beta1")) {
        fail("OneCycleLR: use_beta1 is {} but optimizer {} {}", use_beta1, opt->name(),
             use_beta1 ? "has no betas" : "has betas (cycle beta1)");
      }
      if (max_momentums.size() != groups() || base_momentums.size() != groups()) {
        fail("OneCycleLR: momentum bounds for {} groups, the optimizer has {}",
             max_momentums.size(), groups());
      }
      for (std::size_t g = 0; g < groups(); ++g) {
        for (double m : {max_momentums[g], base_momentums[g]}) {
          if (!(m >= 0.0) || (use_beta1 && !(m < 1.0))) {
            fail("OneCycleLR: momentum bounds must be in {} for param group {}, got {}",
                 use_beta1 ? "[0, 1) (beta1)" : "[0, inf)", g, m);
          }
        }
      }
    }
  }
  // The last step PyTorch allows (last_epoch == total_steps) extrapolates the last phase; with
  // linear annealing the lr can go below 0 there. PyTorch writes it; trainrt's optimizers refuse
  // negative lrs, so the optimizer gets 0 and get_last_lr() keeps PyTorch's value.
  bool clamps_negative_lr() const override { return last_epoch == total_steps; }
  double anneal(double start, double end, double pct) const {
    if (anneal_strategy == "cos") {
      const double cos_out = std::cos(kPi * pct) + 1;
      return end + (start - end) / 2.0 * cos_out;
    }
    return (end - start) * pct + start;
  }
  std::vector<double> get_lr() override {
    const std::int64_t step_num = last_epoch;
    if (step_num > total_steps) {
      fail("OneCycleLR: tried to step {} times; the specified number of total steps is {}",
           step_num + 1, total_steps);
    }
    const double sn = static_cast<double>(step_num);
    std::vector<double> lrs, moms;
    for (std::size_t g = 0; g < groups(); ++g) {
      const double lr_v[3] = {initial_lrs[g], max_lrs[g], min_lrs[g]};
      const double m_v[2] = {cycle_momentum ? max_momentums[g] : 0.0,
                             cycle_momentum ? base_momentums[g] : 0.0};
      double start_step = 0;
      for (std::size_t i = 0; i < phases.size(); ++i) {
        const double end_step = phases[i].end_step;
        if (sn <= end_step || i == phases.size() - 1) {
          if (end_step - start_step == 0.0) {
            fail(
                "OneCycleLR: division by zero at step {}: phase {} is empty (total_steps {}, "
                "pct_start {}); PyTorch raises ZeroDivisionError",
                step_num, i, total_steps, pct_start);
          }
          const double pct = (sn - start_step) / (end_step - start_step);
          lrs.push_back(anneal(lr_v[phases[i].start_lr], lr_v[phases[i].end_lr], pct));
          if (cycle_momentum) {
            moms.push_back(anneal(m_v[phases[i].start_m], m_v[phases[i].end_m], pct));
          }
          break;
        }
        start_step = phases[i].end_step;
      }
    }
    if (cycle_momentum) {
      // The last step extrapolates momentum past its bound as it does the lr (below). PyTorch
      // writes a beta1 >= 1 there; Adam refuses one, so beta1 stops at the bound it passed.
      if (use_beta1 && step_num == total_steps) {
        for (std::size_t g = 0; g < moms.size(); ++g) {
          const double lo = std::min(max_momentums[g], base_momentums[g]);
          const double hi = std::max(max_momentums[g], base_momentums[g]);
          if (moms[g] >= 1.0) moms[g] = hi;
          if (moms[g] < 0.0) moms[g] = lo;
        }
      }
      pending_momentum = moms;
      momentum_key = use_beta1 ? "beta1" : "momentum";
    }
    return lrs;
  }
  void fields(Fields& f) override {
    SchedulerImpl::fields(f);
    f.ints.emplace_back("total_steps", &total_steps);
    f.reals.emplace_back("pct_start", &pct_start);
    f.flags.emplace_back("three_phase", &three_phase);
    f.strs.emplace_back("anneal_strategy", &anneal_strategy);
    f.flags.emplace_back("cycle_momentum", &cycle_momentum);
    f.flags.emplace_back("use_beta1", &use_beta1);
    f.vecs.emplace_back("initial_lr", &initial_lrs, true);
    f.vecs.emplace_back("max_lr", &max_lrs, true);
    f.vecs.emplace_back("min_lr", &min_lrs, true);
    f.vecs.emplace_back("max_momentum", &max_momentums, false);
    f.vecs.emplace_back("base_momentum", &base_momentums, false);
  }
};

struct CyclicLRImpl : SchedulerImpl {
  std::vector<double> max_lrs, base_momentums, max_momentums;
  double total_size = 0, step_ratio = 0, gamma = 1;
  std::string mode, scale_mode;
  bool cycle_momentum = true;
  std::function<double(double)> custom;
  CyclicLRImpl(Optimizer& o) : SchedulerImpl("CyclicLR", o) {}
  void check() const override {
    if (mode != "triangular" && mode != "triangular2" && mode != "exp_range" && !custom) {
      fail(
          "CyclicLR: mode must be 'triangular', 'triangular2' or 'exp_range' (or give a "
          "scale_fn), got '{}'",
          mode);
    }
    if (scale_mode != "cycle" && scale_mode != "iterations") {
      fail("CyclicLR: scale_mode must be 'cycle' or 'iterations', got '{}'", scale_mode);
    }
    if (!(total_size > 0.0) || !(step_ratio > 0.0 && step_ratio <= 1.0)) {
      fail("CyclicLR: step_size_up must be > 0 and step_size_down >= 0 (cycle {}, ratio {})",
           total_size, step_ratio);
    }
    if (!(gamma > 0.0)) fail("CyclicLR: gamma must be > 0, got {}", gamma);
    for (std::size_t g = 0; g < max_lrs.size(); ++g) {
      if (!(max_lrs[g] >= 0.0) || !(base_lrs[g] >= 0.0)) {
        fail("CyclicLR: lrs must be >= 0 (param group {}: base_lr {}, max_lr {})", g, base_lrs[g],
             max_lrs[g]);
      }
    }
    if (cycle_momentum) {
      (void)momentum_key_of(*opt, false, "CyclicLR");
      if (base_momentums.size() != groups() || max_momentums.size() != groups()) {
        fail("CyclicLR: momentum bounds for {} groups, the optimizer has {}", max_momentums.size(),
             groups());
      }
      for (std::size_t g = 0; g < groups(); ++g) {
        if (!(base_momentums[g] >= 0.0) || !(max_momentums[g] >= 0.0)) {
          fail("CyclicLR: momentum bounds must be >= 0 (param group {}: {}, {})", g,
               base_momentums[g], max_momentums[g]);
        }
      }
    }
  }
  double scale_fn(double x) const {
    if (custom) return custom(x);
    if (mode == "triangular") return 1.;
    if (mode == "triangular2") return 1 / std::pow(2., x - 1);
    return std::pow(gamma, x);
  }
  std::vector<double> get_lr() override {
    const double le = static_cast<double>(last_epoch);
    const double cycle = std::floor(1 + le / total_size);
    const double x = 1. + le / total_size - cycle;
    const double scale_factor = x <= step_ratio ? x / step_ratio : (x - 1) / (step_ratio - 1);
    const double s = scale_fn(scale_mode == "cycle" ? cycle : le);
    std::vector<double> lrs;
    for (std::size_t g = 0; g < max_lrs.size(); ++g) {
      const double base_height = (max_lrs[g] - base_lrs[g]) * scale_factor;
      lrs.push_back(base_lrs[g] + base_height * s);
    }
    if (cycle_momentum) {
      pending_momentum.clear();
      for (std::size_t g = 0; g < max_momentums.size(); ++g) {
        const double base_height = (max_momentums[g] - base_momentums[g]) * scale_factor;
        pending_momentum.push_back(max_momentums[g] - base_height * s);
      }
      momentum_key = "momentum";
    }
    return lrs;
  }
  void fields(Fields& f) override {
    SchedulerImpl::fields(f);
    f.vecs.emplace_back("max_lrs", &max_lrs, true);
    f.reals.emplace_back("total_size", &total_size);
    f.reals.emplace_back("step_ratio", &step_ratio);
    f.strs.emplace_back("mode", &mode);
    f.reals.emplace_back("gamma", &gamma);
    f.strs.emplace_back("scale_mode", &scale_mode);
    f.flags.emplace_back("cycle_momentum", &cycle_momentum);
    f.vecs.emplace_back("base_momentums", &base_momentums, false);
    f.vecs.emplace_back("max_momentums", &max_momentums, false);
  }
};

struct PlateauImpl : SchedulerImpl {
  double factor = 0.1, threshold = 1e-4, eps = 1e-8, best = 0, mode_worse = 0;
  std::int64_t patience = 10, cooldown = 0, cooldown_counter = 0, num_bad_epochs = 0;
  std::string mode, threshold_mode;
  std::vector<double> min_lrs;
  PlateauImpl(Optimizer& o) : SchedulerImpl("ReduceLROnPlateau", o) {}
  std::vector<double> get_lr() override { return group_lrs(); }
  bool needs_metric() const override { return true; }
  void step() override {
    fail("ReduceLROnPlateau: step() needs the monitored metric: call step(metric)");
  }
  void check() const override {
    if (!(factor < 1.0)) fail("ReduceLROnPlateau: factor should be < 1.0, got {}", factor);
    if (!(factor >= 0.0)) fail("ReduceLROnPlateau: factor must be >= 0, got {}", factor);
    if (mode != "min" && mode != "max") {
      fail("ReduceLROnPlateau: mode must be 'min' or 'max', got '{}'", mode);
    }
    if (threshold_mode != "rel" && threshold_mode != "abs") {
      fail("ReduceLROnPlateau: threshold_mode must be 'rel' or 'abs', got '{}'", threshold_mode);
    }
    if (patience < 0) fail("ReduceLROnPlateau: patience must be >= 0, got {}", patience);
    if (cooldown < 0) fail("ReduceLROnPlateau: cooldown must be >= 0, got {}", cooldown);
    if (!(threshold >= 0.0) || !std::isfinite(threshold)) {
      fail("ReduceLROnPlateau: threshold must be >= 0, got {}", threshold);
    }
    if (!(eps >= 0.0)) fail("ReduceLROnPlateau: eps must be >= 0, got {}", eps);
    for (std::size_t g = 0; g < min_lrs.size(); ++g) {
      if (!(min_lrs[g] >= 0.0) || !std::isfinite(min_lrs[g])) {
        fail("ReduceLROnPlateau: min_lr must be >= 0 (param group {}), got {}", g, min_lrs[g]);
      }
    }
  }
  bool is_better(double a, double b) const {
    if (mode == "min" && threshold_mode == "rel") return a < b * (1. - threshold);
    if (mode == "min") return a < b - threshold;
    if (threshold_mode == "rel") return a > b * (threshold + 1.);
    return a > b + threshold;
  }
  void step_metric(double current) override {
    // Compute the new lrs first so that a refused lr leaves everything unchanged.
    std::int64_t nb = num_bad_epochs, cc = cooldown_counter;
    double bst = best;
    if (is_better(current, bst)) {
      bst = current;
      nb = 0;
    } else {
      nb += 1;
    }
    if (cc > 0) {
      cc -= 1;
      nb = 0;
    }
    std::vector<double> lrs = group_lrs();
    if (nb > patience) {
      for (std::size_t g = 0; g < lrs.size(); ++g) {
        const double old_lr = lrs[g];
        const double new_lr = std::max(old_lr * factor, min_lrs[g]);
        if (old_lr - new_lr > eps) lrs[g] = new_lr;
      }
      cc = cooldown;
      nb = 0;
    }
    apply(lrs);
    last_epoch += 1;
    best = bst;
    num_bad_epochs = nb;
    cooldown_counter = cc;
  }
  void fields(Fields& f) override {
    f.reals.emplace_back("factor", &factor);
    f.vecs.emplace_back("min_lrs", &min_lrs, true);
    f.ints.emplace_back("patience", &patience);
    f.ints.emplace_back("cooldown", &cooldown);
    f.ints.emplace_back("cooldown_counter", &cooldown_counter);
    f.strs.emplace_back("mode", &mode);
    f.reals.emplace_back("threshold", &threshold);
    f.strs.emplace_back("threshold_mode", &threshold_mode);
    f.reals.emplace_back("best", &best);
    f.ints.emplace_back("num_bad_epochs", &num_bad_epochs);
    f.reals.emplace_back("mode_worse", &mode_worse);
    f.reals.emplace_back("eps", &eps);
    f.ints.emplace_back("last_epoch", &last_epoch);
    f.vecs.emplace_back("_last_lr", &last_lr, true);
  }
};

/// Validates, then runs the initial step (every _LRScheduler-derived scheduler).
template <class T>
std::unique_ptr<SchedulerImpl> started(std::unique_ptr<T> p) {
  p->check();
  p->init_base();
  p->initial_step();
  return p;
}

}  // namespace
}  // namespace detail

namespace optim {

using detail::SchedulerImpl;

LRScheduler::LRScheduler(std::unique_ptr<detail::SchedulerImpl> impl) : impl_(std::move(impl)) {}
LRScheduler::~LRScheduler() = default;

const std::string& LRScheduler::name() const { return impl_->name; }
void LRScheduler::step() {
  impl_->check_groups();
  impl_->step();
}
void LRScheduler::step(double metric) {
  impl_->check_groups();
  impl_->step_metric(metric);
}
bool LRScheduler::needs_metric() const { return impl_->needs_metric(); }
std::vector<double> LRScheduler::get_last_lr() const { return impl_->last_lr; }
std::int64_t LRScheduler::last_epoch() const { return impl_->last_epoch; }
std::vector<double> LRScheduler::base_lrs() const { return impl_->base_lrs; }
Optimizer& LRScheduler::optimizer() const { return *impl_->opt; }

StateDict LRScheduler::state_dict() const {
  StateDict sd;
  impl_->save(sd, "");
  return sd;
}

void LRScheduler::load_state_dict(const StateDict& state) {
  const detail::SchedulerImpl::Raw snapshot = impl_->raw();
  std::set<std::string> used;
  try {
    impl_->load(state, "", used);
    for (const auto& kv : state.scalars) {
      if (!used.count(kv.first))
        detail::fail("{}.load_state_dict: unexpected entry '{}'", name(), kv.first);
    }
    for (const auto& kv : state.strings) {
      if (!used.count(kv.first))
        detail::fail("{}.load_state_dict: unexpected entry '{}'", name(), kv.first);
    }
    if (!state.tensors.empty()) {
      detail::fail("{}.load_state_dict: unexpected tensor '{}'", name(),
                   state.tensors.begin()->first);
    }
  } catch (...) {
    impl_->restore(snapshot);
    throw;
  }
}

StepLR::StepLR(Optimizer& o, std::int64_t step_size, double gamma)
    : LRScheduler(detail::started(std::make_unique<detail::StepLRImpl>(o, step_size, gamma))) {}

MultiStepLR::MultiStepLR(Optimizer& o, std::vector<std::int64_t> milestones, double gamma)
    : LRScheduler(detail::started(
          std::make_unique<detail::MultiStepLRImpl>(o, std::move(milestones), gamma))) {}

ExponentialLR::ExponentialLR(Optimizer& o, double gamma)
    : LRScheduler(detail::started(std::make_unique<detail::ExponentialLRImpl>(o, gamma))) {}

CosineAnnealingLR::CosineAnnealingLR(Optimizer& o, std::int64_t T_max, double eta_min)
    : LRScheduler(
          detail::started(std::make_unique<detail::CosineAnnealingLRImpl>(o, T_max, eta_min))) {}

LinearLR::LinearLR(Optimizer& o, double start_factor, double end_factor, std::int64_t total_iters)
    : LRScheduler(detail::started(
          std::make_unique<detail::LinearLRImpl>(o, start_factor, end_factor, total_iters))) {}

namespace {
std::unique_ptr<SchedulerImpl> make_lambda(Optimizer& o, std::vector<LambdaLR::Lambda> fns) {
  if (fns.size() != o.param_groups().size()) {
    detail::fail("LambdaLR: expected {} lr_lambdas (one per param group), got {}",
                 o.param_groups().size(), fns.size());
  }
  for (std::size_t g = 0; g < fns.size(); ++g) {
    if (!fns[g]) detail::fail("LambdaLR: lr_lambda {} is empty", g);
  }
  return detail::started(std::make_unique<detail::LambdaLRImpl>(o, std::move(fns)));
}

std::unique_ptr<SchedulerImpl> make_sequential(Optimizer& o,
                                               std::vector<std::shared_ptr<LRScheduler>> s,
                                               std::vector<std::int64_t> m) {
  if (s.empty()) detail::fail("SequentialLR: needs at least one scheduler");
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (!s[i]) detail::fail("SequentialLR: scheduler {} is null", i);
    if (&s[i]->optimizer() != &o) {
      detail::fail(
          "SequentialLR: all schedulers must belong to the optimizer passed in; "
          "scheduler {} ({}) has another",
          i, s[i]->name());
    }
    if (s[i]->needs_metric() || s[i]->name() == "SequentialLR") {
      detail::fail("SequentialLR: scheduler {} is a {}, which cannot be sequenced", i,
                   s[i]->name());
    }
  }
  if (m.size() + 1 != s.size()) {
    detail::fail(
        "SequentialLR: expects one milestone fewer than schedulers, got {} schedulers "
        "and {} milestones",
        s.size(), m.size());
  }
  auto p = std::make_unique<detail::SequentialLRImpl>(o, std::move(s), std::move(m));
  p->check();
  // Reset the lrs to initial_lr, undo the parts' initial steps, initial step of the first.
  const std::vector<double> init = detail::initial_lr(o);
  for (std::size_t g = 0; g < init.size(); ++g) o.set(g, "lr", init[g]);
  for (std::size_t i = 0; i < p->scheds.size(); ++i) p->sub(i).last_epoch -= 1;
  p->sub(0).initial_step();
  p->last_epoch = 0;
  p->last_lr = p->sub(0).last_lr;
  return p;
}

std::unique_ptr<SchedulerImpl> make_one_cycle(Optimizer& o, const OneCycleLROptions& op) {
  const std::string n = "OneCycleLR";
  auto p = std::make_unique<detail::OneCycleLRImpl>(o);
  if (op.total_steps() != 0) {
    if (op.total_steps() <= 0)
      detail::fail("OneCycleLR: expected a positive total_steps, got {}", op.total_steps());
    p->total_steps = op.total_steps();
  } else {
    if (op.epochs() <= 0 || op.steps_per_epoch() <= 0) {
      detail::fail(
          "OneCycleLR: define total_steps > 0 or epochs > 0 and steps_per_epoch > 0 "
          "(got epochs {}, steps_per_epoch {})",
          op.epochs(), op.steps_per_epoch());
    }
    p->total_steps = op.epochs() * op.steps_per_epoch();
  }
  p->pct_start = op.pct_start();
  p->three_phase = op.three_phase();
  p->anneal_strategy = op.anneal_strategy();
  if (!(op.div_factor() > 0.0) || !(op.final_div_factor() > 0.0)) {
    detail::fail("OneCycleLR: div_factor and final_div_factor must be > 0, got {} and {}",
                 op.div_factor(), op.final_div_factor());
  }
  const std::size_t G = o.param_groups().size();
  p->max_lrs = detail::per_group(n, "max_lr", op.max_lr(), G);
  for (std::size_t g = 0; g < G; ++g) {
    p->initial_lrs.push_back(p->max_lrs[g] / op.div_factor());
    p->min_lrs.push_back(p->initial_lrs[g] / op.final_div_factor());
  }
  p->cycle_momentum = op.cycle_momentum();
  if (p->cycle_momentum) {
    p->use_beta1 = detail::momentum_key_of(o, true, n) == "beta1";
    p->max_momentums = detail::per_group(n, "max_momentum", op.max_momentum(), G);
    p->base_momentums = detail::per_group(n, "base_momentum", op.base_momentum(), G);
  }
  p->check();
  p->make_phases();
  p->last_epoch = 0;
  (void)p->get_lr();  // PyTorch's initial step raises here (empty phase) before any change
  p->pending_momentum.clear();
  detail::set_initial_lr(o, p->initial_lrs);
  if (p->cycle_momentum) {
    const std::string key = p->use_beta1 ? "beta1" : "momentum";
    for (std::size_t g = 0; g < G; ++g) o.set(g, key, p->max_momentums[g]);
  }
  p->init_base();
  p->initial_step();
  return p;
}

std::unique_ptr<SchedulerImpl> make_cyclic(Optimizer& o, const CyclicLROptions& op) {
  const std::string n = "CyclicLR";
  const std::size_t G = o.param_groups().size();
  auto p = std::make_unique<detail::CyclicLRImpl>(o);
  const std::vector<double> base = detail::per_group(n, "base_lr", op.base_lr(), G);
  p->max_lrs = detail::per_group(n, "max_lr", op.max_lr(), G);
  const double up = op.step_size_up(), down = op.step_size_down();
  if (!(up > 0.0) || !(down >= 0.0)) {
    detail::fail("CyclicLR: step_size_up must be > 0 and step_size_down >= 0, got {} and {}", up,
                 down);
  }
  p->total_size = up + down;
  p->step_ratio = up / p->total_size;
  p->mode = op.mode();
  p->gamma = op.gamma();
  p->custom = op.scale_fn();
  if (p->custom) {
    p->scale_mode = op.scale_mode();
  } else {
    p->scale_mode = p->mode == "exp_range" ? "iterations" : "cycle";
  }
  p->cycle_momentum = op.cycle_momentum();
  if (p->cycle_momentum) {
    (void)detail::momentum_key_of(o, false, n);
    p->base_momentums = detail::per_group(n, "base_momentum", op.base_momentum(), G);
    p->max_momentums = detail::per_group(n, "max_momentum", op.max_momentum(), G);
  }
  p->base_lrs = base;
  p->check();
  for (std::size_t g = 0; g < G; ++g) o.set(g, "lr", base[g]);
  if (p->cycle_momentum) {
    for (std::size_t g = 0; g < G; ++g) o.set(g, "momentum", p->base_momentums[g]);
  }
  // The initial step uses base_lrs = initial_lr (which is base_lr unless an earlier scheduler
  // set it), then base_lrs becomes base_lr, exactly as PyTorch 1.13.
  p->init_base();
  p->initial_step();
  p->base_lrs = base;
  return p;
}

std::unique_ptr<SchedulerImpl> make_plateau(Optimizer& o, const ReduceLROnPlateauOptions& op) {
  const std::size_t G = o.param_groups().size();
  auto p = std::make_unique<detail::PlateauImpl>(o);
  p->factor = op.factor();
  p->min_lrs = detail::per_group("ReduceLROnPlateau", "min_lr", op.min_lr(), G);
  p->patience = op.patience();
  p->cooldown = op.cooldown();
  p->mode = op.mode();
  p->threshold = op.threshold();
  p->threshold_mode = op.threshold_mode();
  p->eps = op.eps();
  p->check();
  p->mode_worse = p->mode == "min" ? std::numeric_limits<double>::infinity()
                                   : -std::numeric_limits<double>::infinity();
  p->best = p->mode_worse;
  p->cooldown_counter = 0;
  p->num_bad_epochs = 0;
  p->last_epoch = 0;
  p->last_lr = p->group_lrs();
  return p;
}
}  // namespace

LambdaLR::LambdaLR(Optimizer& o, Lambda lr_lambda)
    : LRScheduler(make_lambda(o, std::vector<Lambda>(o.param_groups().size(), lr_lambda))) {}
LambdaLR::LambdaLR(Optimizer& o, std::vector<Lambda> lr_lambdas)
    : LRScheduler(make_lambda(o, std::move(lr_lambdas))) {}

SequentialLR::SequentialLR(Optimizer& o, std::vector<std::shared_ptr<LRScheduler>> schedulers,
                           std::vector<std::int64_t> milestones)
    : LRScheduler(make_sequential(o, std::move(schedulers), std::move(milestones))) {}

OneCycleLR::OneCycleLR(Optimizer& o, const OneCycleLROptions& options)
    : LRScheduler(make_one_cycle(o, options)) {}

CyclicLR::CyclicLR(Optimizer& o, const CyclicLROptions& options)
    : LRScheduler(make_cyclic(o, options)) {}

ReduceLROnPlateau::ReduceLROnPlateau(Optimizer& o, const ReduceLROnPlateauOptions& options)
    : LRScheduler(make_plateau(o, options)) {}

std::int64_t ReduceLROnPlateau::num_bad_epochs() const {
  return static_cast<const detail::PlateauImpl&>(detail::SchedulerAccess::impl(*this))
      .num_bad_epochs;
}
double ReduceLROnPlateau::best() const {
  return static_cast<const detail::PlateauImpl&>(detail::SchedulerAccess::impl(*this)).best;
}

}  // namespace optim
}  // namespace trainrt
