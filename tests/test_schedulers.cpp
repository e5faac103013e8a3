// Learning-rate schedulers: PyTorch 1.13 trajectories (tests/fixtures/torch_schedulers.txt, made
// by gen_scheduler_fixtures.py) compared bit for bit — every group's lr, momentum / beta1 for
// OneCycleLR and CyclicLR, last_epoch — after construction and after every step; state_dict
// resume (k steps, save, fresh optimizer + scheduler, load, continue == uninterrupted, exactly,
// parameters included); the fused step reading the scheduled lr; bad inputs.
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "fixture_text.hpp"
#include "optim_util.hpp"
#include "test_util.hpp"
#include "trainrt/schedulers.hpp"

namespace {

using trainrt::Device;
using trainrt::Parameter;
using trainrt::StateDict;
using namespace trainrt::optim;
using namespace trainrt_test;

// ---- fixture ------------------------------------------------------------------------------

using Args = std::map<std::string, std::string>;

struct Point {
  int k = 0;
  std::int64_t last_epoch = 0;
  std::vector<double> lr, mom;
};

struct SchedCase {
  std::string name, optimizer, type;
  std::vector<double> lrs, moms;
  Args args;
  std::vector<std::pair<std::string, Args>> subs;
  int steps = 0;
  std::map<int, double> metrics;
  std::vector<Point> points;
};

double num(const std::string& s) { return trainrt_test::fixture_number(s); }

std::vector<std::string> split(const std::string& s, char c) {
  std::vector<std::string> out;
  std::string cur;
  std::istringstream is(s);
  while (std::getline(is, cur, c)) out.push_back(cur);
  return out;
}

std::vector<double> nums(const std::string& s) {
  std::vector<double> v;
  for (const auto& t : split(s, ',')) v.push_back(num(t));
  return v;
}

std::vector<std::int64_t> ints(const std::string& s) {
  std::vector<std::int64_t> v;
  for (const auto& t : split(s, ',')) v.push_back(std::stoll(t));
  return v;
}

Args parse_args(std::istringstream& ls) {
  Args a;
  std::string tok;
  while (ls >> tok) {
    const auto eq = tok.find('=');
    a[tok.substr(0, eq)] = tok.substr(eq + 1);
  }
  return a;
}

std::vector<SchedCase> load_cases() {
  std::vector<SchedCase> cases;
  SchedCase cur;
  trainrt_test::read_fixture("torch_schedulers.txt",
                             [&](const std::string& tag, std::istringstream& ls) {
                               if (tag == "case") {
                                 cur = SchedCase();
                                 ls >> cur.name;
                               } else if (tag == "optimizer") {
                                 std::string a, b, c, d;
                                 ls >> cur.optimizer >> a >> b >> c >> d;
                                 cur.lrs = {num(a), num(b)};
                                 cur.moms = {num(c), num(d)};
                               } else if (tag == "scheduler") {
                                 ls >> cur.type;
                                 cur.args = parse_args(ls);
                               } else if (tag == "sub") {
                                 std::string t;
                                 ls >> t;
                                 cur.subs.emplace_back(t, parse_args(ls));
                               } else if (tag == "steps") {
                                 ls >> cur.steps;
                               } else if (tag == "metric") {
                                 int k = 0;
                                 std::string v;
                                 ls >> k >> v;
                                 cur.metrics[k] = num(v);
                               } else if (tag == "at") {
                                 Point p;
                                 std::string t;
                                 ls >> p.k >> p.last_epoch >> t;
                                 std::vector<double>* dst = &p.lr;
                                 while (ls >> t) {
                                   if (t == "mom") {
                                     dst = &p.mom;
                                   } else {
                                     dst->push_back(num(t));
                                   }
                                 }
                                 cur.points.push_back(p);
                               } else if (tag == "end") {
                                 cases.push_back(cur);
                               } else {
                                 return false;
                               }
                               return true;
                             });
  return cases;
}

const std::vector<SchedCase>& sched_cases() {
  static const std::vector<SchedCase> c = load_cases();
  return c;
}

LambdaLR::Lambda named_lambda(const std::string& n) {
  if (n == "warmup10") {
    return [](std::int64_t e) { return std::min(1.0, static_cast<double>(e + 1) / 10); };
  }
  if (n == "pow95") return [](std::int64_t e) { return std::pow(0.95, static_cast<double>(e)); };
  if (n == "step_half") {
    return [](std::int64_t e) { return std::pow(0.5, static_cast<double>(e / 7)); };
  }
  throw std::runtime_error("unknown lambda " + n);
}

struct SchedRun {
  std::vector<Parameter> params;
  std::unique_ptr<Optimizer> opt;
  std::vector<std::shared_ptr<LRScheduler>> parts;
  std::unique_ptr<LRScheduler> sched;
};

std::unique_ptr<Optimizer> make_opt(const SchedCase& c, std::vector<Parameter>* params) {
  std::vector<ParamGroup> groups;
  for (int g = 0; g < 2; ++g) {
    params->push_back(formula_param({g + 2}, g, Device::cpu()));
    const std::string mk = c.optimizer == "SGD" ? "momentum" : "beta1";
    groups.push_back(ParamGroup({params->back()}, {{"lr", c.lrs[static_cast<std::size_t>(g)]},
                                                   {mk, c.moms[static_cast<std::size_t>(g)]}}));
  }
  return make_optimizer(c.optimizer, groups, {{"lr", c.lrs[0]}});
}

std::unique_ptr<LRScheduler> make_sched(Optimizer& opt, const std::string& type, const Args& a,
                                        std::vector<std::shared_ptr<LRScheduler>>* parts,
                                        const std::vector<std::pair<std::string, Args>>& subs) {
  auto has = [&](const char* k) { return a.count(k) != 0; };
  auto d = [&](const char* k, double def) { return has(k) ? num(a.at(k)) : def; };
  auto i = [&](const char* k, std::int64_t def) { return has(k) ? std::stoll(a.at(k)) : def; };
  if (type == "StepLR") return std::make_unique<StepLR>(opt, i("step_size", 0), d("gamma", 0.1));
  if (type == "MultiStepLR") {
    return std::make_unique<MultiStepLR>(opt, ints(a.at("milestones")), d("gamma", 0.1));
  }
  if (type == "ExponentialLR") return std::make_unique<ExponentialLR>(opt, d("gamma", 0));
  if (type == "CosineAnnealingLR") {
    return std::make_unique<CosineAnnealingLR>(opt, i("T_max", 0), d("eta_min", 0));
  }
  if (type == "LinearLR") {
    return std::make_unique<LinearLR>(opt, d("start_factor", 1.0 / 3), d("end_factor", 1.0),
                                      i("total_iters", 5));
  }
  if (type == "LambdaLR") {
    const auto names = split(a.at("lr_lambda"), ',');
    if (names.size() == 1) return std::make_unique<LambdaLR>(opt, named_lambda(names[0]));
    std::vector<LambdaLR::Lambda> fns;
    for (const auto& n : names) fns.push_back(named_lambda(n));
    return std::make_unique<LambdaLR>(opt, fns);
  }
  if (type == "SequentialLR") {
    for (const auto& s : subs) {
      parts->push_back(make_sched(opt, s.first, s.second, nullptr, {}));
    }
    return std::make_unique<SequentialLR>(opt, *parts, ints(a.at("milestones")));
  }
  if (type == "OneCycleLR") {
    OneCycleLROptions o(nums(a.at("max_lr")));
    o.total_steps(i("total_steps", 0)).epochs(i("epochs", 0));
    o.steps_per_epoch(i("steps_per_epoch", 0)).pct_start(d("pct_start", 0.3));
    if (has("anneal_strategy")) o.anneal_strategy(a.at("anneal_strategy"));
    o.cycle_momentum(i("cycle_momentum", 1) != 0).three_phase(i("three_phase", 0) != 0);
    if (has("base_momentum")) o.base_momentum(nums(a.at("base_momentum")));
    if (has("max_momentum")) o.max_momentum(nums(a.at("max_momentum")));
    o.div_factor(d("div_factor", 25)).final_div_factor(d("final_div_factor", 1e4));
    return std::make_unique<OneCycleLR>(opt, o);
  }
  if (type == "CyclicLR") {
    CyclicLROptions o(nums(a.at("base_lr")), nums(a.at("max_lr")));
    o.step_size_up(d("step_size_up", 2000));
    if (has("step_size_down")) o.step_size_down(d("step_size_down", 0));
    if (has("mode")) o.mode(a.at("mode"));
    o.gamma(d("gamma", 1.0)).cycle_momentum(i("cycle_momentum", 1) != 0);
    if (has("base_momentum")) o.base_momentum(nums(a.at("base_momentum")));
    if (has("max_momentum")) o.max_momentum(nums(a.at("max_momentum")));
    return std::make_unique<CyclicLR>(opt, o);
  }
  if (type == "ReduceLROnPlateau") {
    ReduceLROnPlateauOptions o;
    if (has("mode")) o.mode(a.at("mode"));
    if (has("threshold_mode")) o.threshold_mode(a.at("threshold_mode"));
    o.factor(d("factor", 0.1)).patience(i("patience", 10)).threshold(d("threshold", 1e-4));
    o.cooldown(i("cooldown", 0)).eps(d("eps", 1e-8));
    if (has("min_lr")) o.min_lr(nums(a.at("min_lr")));
    return std::make_unique<ReduceLROnPlateau>(opt, o);
  }
  throw std::runtime_error("unknown scheduler " + type);
}

SchedRun build(const SchedCase& c) {
  SchedRun r;
  r.opt = make_opt(c, &r.params);
  r.sched = make_sched(*r.opt, c.type, c.args, &r.parts, c.subs);
  return r;
}

std::vector<double> momenta(const Optimizer& opt) {
  const std::string k = opt.defaults().count("beta1") ? "beta1" : "momentum";
  return {opt.get(0, k), opt.get(1, k)};
}

void one_step(const SchedCase& c, SchedRun& r, int k) {
  for (std::size_t p = 0; p < r.params.size(); ++p) {
    set_formula_grad(r.params[p], static_cast<int>(p), k);
  }
  r.opt->step();
  if (r.sched->needs_metric()) {
    r.sched->step(c.metrics.at(k));
  } else {
    r.sched->step();
  }
}

void expect_point(const SchedCase& c, const SchedRun& r, const Point& p) {
  SCOPED_TRACE(c.name + " at k=" + std::to_string(p.k));
  EXPECT_EQ(r.sched->last_epoch(), p.last_epoch);
  ASSERT_EQ(p.lr.size(), 2u);
  for (std::size_t g = 0; g < 2; ++g) {
    // Bitwise: the same double operations in the same order as PyTorch's Python floats.
    // (OneCycleLR's linear extrapolation at step total_steps can go below 0: the optimizer,
    // which refuses negative lrs, gets 0; get_last_lr() keeps PyTorch's value.)
    EXPECT_EQ(r.opt->lr(g), p.lr[g] < 0 ? 0.0 : p.lr[g]) << "lr of group " << g;
    EXPECT_EQ(r.sched->get_last_lr()[g], p.lr[g]) << "get_last_lr of group " << g;
  }
  if (!p.mom.empty()) {
    const auto m = momenta(*r.opt);
    for (std::size_t g = 0; g < 2; ++g) EXPECT_EQ(m[g], p.mom[g]) << "momentum of group " << g;
  }
}

// ---- trajectories vs PyTorch -----------------------------------------------------------------

class SchedulerTrajectory : public ::testing::TestWithParam<std::string> {};

const SchedCase& find_case(const std::string& name) {
  for (const auto& c : sched_cases())
    if (c.name == name) return c;
  throw std::runtime_error("no case " + name);
}

std::vector<std::string> case_names() {
  std::vector<std::string> n;
  for (const auto& c : sched_cases()) n.push_back(c.name);
  return n;
}

TEST_P(SchedulerTrajectory, MatchesPyTorch) {
  const SchedCase& c = find_case(GetParam());
  ASSERT_GE(c.steps, 30);
  ASSERT_EQ(c.points.size(), static_cast<std::size_t>(c.steps) + 1);
  SchedRun r = build(c);
  expect_point(c, r, c.points[0]);
  for (int k = 1; k <= c.steps; ++k) {
    one_step(c, r, k);
    expect_point(c, r, c.points[static_cast<std::size_t>(k)]);
    if (HasFailure()) return;
  }
}

// k steps, save (optimizer + scheduler), fresh optimizer + scheduler, load, continue: the lrs,
// momenta and the parameters equal the uninterrupted run's exactly.
TEST_P(SchedulerTrajectory, ResumeContinuesExactly) {
  const SchedCase& c = find_case(GetParam());
  for (int k : {1, 7, c.steps / 2 + 1}) {
    SCOPED_TRACE("resume after " + std::to_string(k) + " steps");
    SchedRun full = build(c);
    SchedRun first = build(c);
    for (int s = 1; s <= k; ++s) {
      one_step(c, full, s);
      one_step(c, first, s);
    }
    const StateDict osd = first.opt->state_dict();
    const StateDict ssd = first.sched->state_dict();
    SchedRun resumed = build(c);
    for (std::size_t i = 0; i < first.params.size(); ++i) {
      resumed.params[i].value().copy_(first.params[i].value());  // the model's weights
    }
    first = SchedRun();  // the interrupted run is gone
    resumed.opt->load_state_dict(osd);
    resumed.sched->load_state_dict(ssd);
    EXPECT_EQ(resumed.sched->last_epoch(), full.sched->last_epoch());
    for (int s = k + 1; s <= c.steps; ++s) {
      one_step(c, full, s);
      one_step(c, resumed, s);
      for (std::size_t g = 0; g < 2; ++g) {
        ASSERT_EQ(resumed.opt->lr(g), full.opt->lr(g)) << "step " << s << " group " << g;
        ASSERT_EQ(resumed.sched->get_last_lr()[g], full.sched->get_last_lr()[g]);
      }
      ASSERT_EQ(momenta(*resumed.opt), momenta(*full.opt)) << "step " << s;
    }
    for (std::size_t p = 0; p < full.params.size(); ++p) {
      EXPECT_EQ(full.params[p].value().to_double_vector(),
                resumed.params[p].value().to_double_vector());
    }
  }
}

INSTANTIATE_TEST_SUITE_P(PyTorch, SchedulerTrajectory, ::testing::ValuesIn(case_names()),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

TEST(Schedulers, FixtureCoversEveryScheduler) {
  std::map<std::string, int> n;
  for (const auto& c : sched_cases()) n[c.type]++;
  for (const char* t :
       {"StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "LinearLR", "LambdaLR",
        "SequentialLR", "OneCycleLR", "CyclicLR", "ReduceLROnPlateau"}) {
    EXPECT_GE(n[t], 2) << t;
  }
}

// ---- the fused step uses the scheduled lr ------------------------------------------------------

TEST(Schedulers, FusedStepReadsScheduledLr) {
  std::vector<Parameter> pa = {formula_param({5}, 0, Device::cpu())};
  std::vector<Parameter> pb = {formula_param({5}, 0, Device::cpu())};
  SGD a(pa, SGDOptions(0.1).momentum(0.9));
  SGD b(pb, SGDOptions(0.1).momentum(0.9));
  OneCycleLR sched(a, OneCycleLROptions(0.5).total_steps(20));
  b.set(0, "lr", a.lr(0));
  b.set(0, "momentum", a.get(0, "momentum"));
  for (int k = 0; k < 20; ++k) {
    set_formula_grad(pa[0], 0, k);
    set_formula_grad(pb[0], 0, k);
    a.step();
    b.step();
    sched.step();
    b.set(0, "lr", sched.get_last_lr()[0]);
    b.set(0, "momentum", a.get(0, "momentum"));
  }
  EXPECT_EQ(pa[0].value().to_double_vector(), pb[0].value().to_double_vector());
  // And differs from a run at a constant lr.
  std::vector<Parameter> pc = {formula_param({5}, 0, Device::cpu())};
  SGD c(pc, SGDOptions(0.1).momentum(0.9));
  for (int k = 0; k < 20; ++k) {
    set_formula_grad(pc[0], 0, k);
    c.step();
  }
  EXPECT_NE(pa[0].value().to_double_vector(), pc[0].value().to_double_vector());
}

TEST(Schedulers, OneCycleRaisesPastTotalSteps) {
  std::vector<Parameter> p = {formula_param({3}, 0, Device::cpu())};
  Adam opt(p, AdamOptions(0.01));
  OneCycleLR s(opt, OneCycleLROptions(0.1).total_steps(5));
  for (int k = 0; k < 5; ++k) s.step();  // PyTorch allows last_epoch == total_steps
  const double lr = opt.lr(0), b1 = opt.get(0, "beta1");
  EXPECT_THROW(s.step(), trainrt::Error);
  EXPECT_EQ(s.last_epoch(), 5);  // nothing changed
  EXPECT_EQ(opt.lr(0), lr);
  EXPECT_EQ(opt.get(0, "beta1"), b1);
}

// A chainable form that reaches 0 does so through rounding (values from torch 1.13): the
// optimizer gets 0, get_last_lr() PyTorch's value. They used to be refused as negative lrs.
TEST(Schedulers, ChainableFormsReachingZeroThroughRounding) {
  std::vector<Parameter> p = {formula_param({3}, 0, Device::cpu())};
  SGD sgd(p, SGDOptions(0.1));
  LinearLR linear(sgd, 1.0 / 3, 0.0, 5);
  for (int k = 0; k < 5; ++k) linear.step();
  EXPECT_EQ(linear.get_last_lr()[0], -1.480297366166875e-18);
  EXPECT_EQ(sgd.lr(0), 0.0);
  linear.step();  // past total_iters: stays at 0
  EXPECT_EQ(sgd.lr(0), 0.0);

  SGD from_zero(p, SGDOptions(0.0));
  CosineAnnealingLR cos(from_zero, 3, 0.1);
  const double torch_lrs[] = {0.024999999999999994, 0.07499999999999998,  0.1,
                              0.07500000000000001,  0.024999999999999953, -5.551115123125783e-17,
                              0.02499999999999994,  0.07499999999999996,  0.1,
                              0.07500000000000001,  0.025000000000000105, 8.326672684688674e-17};
  for (double want : torch_lrs) {
    cos.step();
    EXPECT_EQ(cos.get_last_lr()[0], want);
    EXPECT_EQ(from_zero.lr(0), std::max(want, 0.0));
  }

  // Rounding grows with the period: two periods of T_max 63 end at -7.5e-15 (torch 1.13), past
  // a tolerance taken from the lrs alone (then 6e-5) but not from eta_min.
  SGD long_zero(p, SGDOptions(0.0));
  CosineAnnealingLR long_cos(long_zero, 63, 0.1);
  for (int k = 0; k < 126; ++k) long_cos.step();
  EXPECT_LT(long_cos.get_last_lr()[0], 0.0);
  EXPECT_GT(long_cos.get_last_lr()[0], -1e-13);
  EXPECT_EQ(long_zero.lr(0), 0.0);
  for (int k = 0; k < 10; ++k) long_cos.step();
  EXPECT_GT(long_zero.lr(0), 0.0);

  // A negative lr beyond rounding is still refused: the cosine after the lr was set below
  // eta_min by hand (PyTorch gives -0.0625 at the second step after it).
  SGD below(p, SGDOptions(0.1));
  CosineAnnealingLR c2(below, 3, 0.05);
  for (int k = 0; k < 3; ++k) c2.step();
  below.set_lr(0.0);
  c2.step();
  const double lr = below.lr(0);
  EXPECT_NEAR(lr, 0.0125, 1e-17);
  expect_error([&] { c2.step(); }, "invalid lr -0.0625");
  EXPECT_EQ(below.lr(0), lr);
}

// A step the optimizer would refuse in one group changes no group: an lr past the f32 range
// (PyTorch writes 1e39, and its step then fails) is refused by the scheduler first.
TEST(Schedulers, StepRefusedInOneGroupChangesNoGroup) {
  std::vector<Parameter> a = {formula_param({3}, 0, Device::cpu())};
  std::vector<Parameter> b = {formula_param({3}, 1, Device::cpu())};
  SGD opt({ParamGroup(a, {{"lr", 1.0}}), ParamGroup(b, {{"lr", 1e38}})}, SGDOptions(0.1));
  ExponentialLR s(opt, 10.0);
  expect_error([&] { s.step(); }, "ExponentialLR: the schedule gives param group 1 an invalid lr");
  EXPECT_EQ(opt.lr(0), 1.0);
  EXPECT_EQ(opt.lr(1), 1e38);
  EXPECT_EQ(s.get_last_lr(), (std::vector<double>{1.0, 1e38}));
  EXPECT_EQ(s.last_epoch(), 0);
}

// A value the optimizer itself refuses after the scheduler's own checks passed (here momentum 0
// with nesterov, which SGD refuses in any group): the lrs already written are put back, so a
// failed step changes no group.
TEST(Schedulers, StepRefusedByTheOptimizerChangesNoGroup) {
  std::vector<Parameter> a = {formula_param({3}, 0, Device::cpu())};
  std::vector<Parameter> b = {formula_param({3}, 1, Device::cpu())};
  SGD opt({ParamGroup(a), ParamGroup(b)}, SGDOptions(0.1).momentum(0.9).nesterov(true));
  // Linear warm-up over steps 0..2: the lr rises to 0.1 while the momentum falls to 0.
  OneCycleLR s(opt, OneCycleLROptions(0.1)
                        .total_steps(10)
                        .pct_start(0.3)
                        .anneal_strategy("linear")
                        .base_momentum(0.0)
                        .max_momentum(0.9));
  s.step();
  const double lr0 = opt.lr(0), lr1 = opt.lr(1), m0 = opt.get(0, "momentum");
  EXPECT_NEAR(lr0, 0.052, 1e-15);
  EXPECT_NEAR(m0, 0.45, 1e-15);
  const std::vector<double> last = s.get_last_lr();
  expect_error([&] { s.step(); }, "nesterov momentum requires a momentum > 0");
  EXPECT_EQ(opt.lr(0), lr0);
  EXPECT_EQ(opt.lr(1), lr1);
  EXPECT_EQ(opt.get(0, "momentum"), m0);
  EXPECT_EQ(opt.get(1, "momentum"), m0);
  EXPECT_EQ(s.get_last_lr(), last);
  EXPECT_EQ(s.last_epoch(), 1);
}

// OneCycleLR's last step (last_epoch == total_steps) extrapolates linear annealing past the
// bounds: PyTorch writes lr -1.43e-4 and beta1 1.0011 there; Adam gets lr 0 and beta1 at the
// bound it passed (it refuses a beta1 >= 1), so a loop with one step per batch finishes.
TEST(Schedulers, OneCycleLinearLastStepWithAdam) {
  std::vector<Parameter> p = {formula_param({3}, 0, Device::cpu())};
  Adam opt(p, AdamOptions(0.01));
  OneCycleLR s(opt, OneCycleLROptions(0.01)
                        .total_steps(100)
                        .anneal_strategy("linear")
                        .base_momentum(0.85)
                        .max_momentum(0.999));
  for (int k = 0; k < 100; ++k) s.step();
  EXPECT_NEAR(s.get_last_lr()[0], -0.0001428165714285716, 1e-18);
  EXPECT_EQ(opt.lr(0), 0.0);
  EXPECT_EQ(opt.get(0, "beta1"), 0.999);
  EXPECT_EQ(opt.get(0, "beta2"), 0.999);
}

TEST(Schedulers, PlateauAccessorsAndStepWithoutMetric) {
  std::vector<Parameter> p = {formula_param({3}, 0, Device::cpu())};
  SGD opt(p, SGDOptions(0.1));
  ReduceLROnPlateau s(opt, ReduceLROnPlateauOptions().patience(1));
  EXPECT_TRUE(s.needs_metric());
  EXPECT_EQ(s.get_last_lr(), std::vector<double>{0.1});
  EXPECT_THROW(s.step(), trainrt::Error);
  s.step(1.0);
  s.step(2.0);
  EXPECT_EQ(s.best(), 1.0);
  EXPECT_EQ(s.num_bad_epochs(), 1);
  s.step(3.0);
  EXPECT_DOUBLE_EQ(opt.lr(0), 0.1 * 0.1);
  StepLR st(opt, 3);
  EXPECT_THROW(st.step(1.0), trainrt::Error);
}

// ---- state dicts: PyTorch's contents, validation, all-or-nothing -------------------------------

// Found by a state_dict fuzz (2026-12-04). OneCycleLR's phases follow from total_steps,
// pct_start and three_phase: a load into a scheduler made with other settings recomputes them
// (PyTorch saves them), so the resumed schedule is the saved one.
TEST(Schedulers, OneCycleLoadFollowsTheLoadedSchedule) {
  Parameter p = formula_param({3}, 0, Device::cpu()), q = formula_param({3}, 0, Device::cpu());
  SGD o1({p}, SGDOptions(0.1).momentum(0.9)), o2({q}, SGDOptions(0.1).momentum(0.9));
  OneCycleLR s1(o1, OneCycleLROptions(1.0).total_steps(100).pct_start(0.5));
  for (int i = 0; i < 10; ++i) s1.step();
  OneCycleLR s2(o2, OneCycleLROptions(1.0).total_steps(20).pct_start(0.1).three_phase(true));
  o2.load_state_dict(o1.state_dict());
  s2.load_state_dict(s1.state_dict());
  for (int i = 0; i < 60; ++i) {
    s1.step();
    s2.step();
    if (i == 0) EXPECT_NEAR(o2.lr(0), 0.15450593998281548, 1e-15);  // PyTorch 1.13's
    ASSERT_EQ(o2.lr(0), o1.lr(0)) << i;
    ASSERT_EQ(o2.get(0, "momentum"), o1.get(0, "momentum")) << i;
  }
  EXPECT_EQ(s2.state_dict().scalars, s1.state_dict().scalars);
}

// A failed load puts every field back as it was, also where the scheduler's own state dict
// would not load: counts past 2^53, or a param group added since the scheduler was made (it
// used to restore by loading its own dict, which then failed half-way and left the bad dict's
// values, with an error about its own dict).
TEST(Schedulers, FailedLoadRestoresEvenWhereItsOwnDictWouldNotLoad) {
  {
    Parameter p = formula_param({3}, 0, Device::cpu());
    SGD o({p}, SGDOptions(0.1));
    StepLR s(o, 3, 0.5);
    StateDict big = s.state_dict();
    big.scalars["last_epoch"] = 9007199254740992.0;  // 2^53
    s.load_state_dict(big);
    s.step();
    s.step();
    const StateDict before = s.state_dict();
    expect_error([&] { s.load_state_dict(before); }, "'last_epoch' must be an integer");
    StateDict other = before;
    other.scalars["last_epoch"] = 1;
    other.scalars["gamma"] = 0.25;
    other.scalars["step_size"] = 0;
    expect_error([&] { s.load_state_dict(other); }, "step_size must be > 0");
    EXPECT_EQ(s.state_dict().scalars, before.scalars);
  }
  Parameter a = formula_param({3}, 0, Device::cpu()), b = formula_param({2}, 1, Device::cpu());
  SGD o({a}, SGDOptions(0.1));
  StepLR s(o, 3, 0.5);
  s.step();
  o.add_param_group(ParamGroup({b}));
  const StateDict before = s.state_dict();
  StateDict two = before;
  two.scalars["base_lrs"] = 2;
  two.scalars["base_lrs.1"] = 0.1;
  two.scalars["_last_lr"] = 2;
  two.scalars["_last_lr.1"] = 0.1;
  two.scalars["gamma"] = -1;
  expect_error([&] { s.load_state_dict(two); }, "gamma must be > 0");
  EXPECT_EQ(s.state_dict().scalars, before.scalars);
  EXPECT_EQ(s.base_lrs().size(), 1u);
  EXPECT_EQ(s.get_last_lr().size(), 1u);
}

// The momentum a loaded dict says to cycle must be one the optimizer has, as the constructor
// requires (the load used to pass and the next step failed).
TEST(Schedulers, LoadRefusesAMomentumTheOptimizerLacks) {
  Parameter p = formula_param({3}, 0, Device::cpu());
  Adam adam({p}, AdamOptions(0.1));
  {
    OneCycleLR s(adam, OneCycleLROptions(0.1).total_steps(10));
    StateDict sd = s.state_dict();
    sd.scalars["use_beta1"] = 0;
    expect_error([&] { s.load_state_dict(sd); }, "use_beta1 is false but optimizer Adam has betas");
    EXPECT_EQ(s.state_dict().scalars.at("use_beta1"), 1.0);
    s.step();
  }
  CyclicLR s(adam, CyclicLROptions(0.01, 0.1).cycle_momentum(false));
  StateDict sd = s.state_dict();
  sd.scalars["cycle_momentum"] = 1;
  sd.scalars["base_momentums"] = 1;
  sd.scalars["base_momentums.0"] = 0.8;
  sd.scalars["max_momentums"] = 1;
  sd.scalars["max_momentums.0"] = 0.9;
  expect_error([&] { s.load_state_dict(sd); }, "has no momentum hyperparameter");
  s.step();
}

TEST(Schedulers, StateDictContentsAndValidation) {
  std::vector<Parameter> p = {formula_param({3}, 0, Device::cpu())};
  SGD opt(p, SGDOptions(0.1));
  StepLR s(opt, 3, 0.5);
  for (int k = 0; k < 4; ++k) s.step();
  StateDict sd = s.state_dict();
  EXPECT_EQ(sd.strings.at("scheduler"), "StepLR");
  EXPECT_EQ(sd.scalars.at("last_epoch"), 4);
  EXPECT_EQ(sd.scalars.at("_step_count"), 5);
  EXPECT_EQ(sd.scalars.at("step_size"), 3);
  EXPECT_EQ(sd.scalars.at("gamma"), 0.5);
  EXPECT_EQ(sd.scalars.at("base_lrs.0"), 0.1);

  std::vector<Parameter> p2 = {formula_param({3}, 0, Device::cpu())};
  SGD opt2(p2, SGDOptions(0.1));
  StepLR s2(opt2, 7, 0.9);
  ExponentialLR e2(opt2, 0.9);
  EXPECT_THROW(e2.load_state_dict(sd), trainrt::Error);  // another scheduler's
  StateDict bad = sd;
  bad.scalars["gamma"] = -1;
  EXPECT_THROW(s2.load_state_dict(bad), trainrt::Error);
  EXPECT_EQ(s2.state_dict().scalars.at("gamma"), 0.9);  // unchanged
  EXPECT_EQ(s2.last_epoch(), 0);
  bad = sd;
  bad.scalars["last_epoch"] = 1.5;
  EXPECT_THROW(s2.load_state_dict(bad), trainrt::Error);
  bad = sd;
  bad.scalars["surprise"] = 1;
  EXPECT_THROW(s2.load_state_dict(bad), trainrt::Error);
  bad = sd;
  bad.scalars.erase("step_size");
  EXPECT_THROW(s2.load_state_dict(bad), trainrt::Error);
  bad = sd;
  bad.scalars["base_lrs"] = 2;
  bad.scalars["base_lrs.1"] = 0.1;
  EXPECT_THROW(s2.load_state_dict(bad), trainrt::Error);  // 2 groups vs 1
  EXPECT_EQ(s2.state_dict().scalars.at("step_size"), 7);
  s2.load_state_dict(sd);  // configuration restored too, as PyTorch's __dict__.update
  EXPECT_EQ(s2.state_dict().scalars.at("step_size"), 3);
  EXPECT_EQ(s2.last_epoch(), 4);
}

TEST(Schedulers, LambdaFunctionsAreNotSaved) {
  std::vector<Parameter> p = {formula_param({3}, 0, Device::cpu())};
  SGD opt(p, SGDOptions(0.1));
  LambdaLR s(opt, [](std::int64_t e) { return 1.0 / static_cast<double>(e + 1); });
  s.step();
  s.step();
  const StateDict sd = s.state_dict();
  for (const auto& kv : sd.scalars) EXPECT_EQ(kv.first.find("lambda"), std::string::npos);
  std::vector<Parameter> p2 = {formula_param({3}, 0, Device::cpu())};
  SGD opt2(p2, SGDOptions(0.1));
  LambdaLR s2(opt2, [](std::int64_t e) { return 2.0 * static_cast<double>(e); });
  s2.load_state_dict(sd);
  s2.step();  // the loaded scheduler keeps its own function
  EXPECT_EQ(opt2.lr(0), 0.1 * 6.0);
}

// ---- bad inputs ------------------------------------------------------------------------------

TEST(Schedulers, BadInputs) {
  std::vector<Parameter> p = {formula_param({3}, 0, Device::cpu()),
                              formula_param({2}, 1, Device::cpu())};
  SGD sgd({ParamGroup({p[0]}), ParamGroup({p[1]})}, SGDOptions(0.1).momentum(0.9));
  std::vector<Parameter> q = {formula_param({3}, 2, Device::cpu())};
  Adam adam(q, AdamOptions(0.01));
  std::vector<Parameter> r = {formula_param({3}, 3, Device::cpu())};
  Adagrad adagrad(r, AdagradOptions(0.01));

  expect_error([&] { StepLR(sgd, 0); }, "step_size must be > 0");
  expect_error([&] { StepLR(sgd, 3, 0.0); }, "gamma must be > 0");
  expect_error([&] { ExponentialLR(sgd, -0.5); }, "gamma must be > 0");
  expect_error([&] { MultiStepLR(sgd, {5, 3}, 0.1); }, "milestones must be increasing");
  expect_error([&] { MultiStepLR(sgd, {1, 2}, 0.0); }, "gamma must be > 0");
  expect_error([&] { CosineAnnealingLR(sgd, 0); }, "T_max must be > 0");
  expect_error([&] { CosineAnnealingLR(sgd, -3); }, "T_max must be > 0");
  expect_error([&] { LinearLR(sgd, 1.5); }, "start_factor must be in (0, 1]");
  expect_error([&] { LinearLR(sgd, 0.0); }, "start_factor must be in (0, 1]");
  expect_error([&] { LinearLR(sgd, 0.5, 1.2); }, "end_factor must be in [0, 1]");
  expect_error([&] { LinearLR(sgd, 0.5, 1.0, 0); }, "total_iters must be > 0");
  expect_error(
      [&] { LambdaLR(sgd, std::vector<LambdaLR::Lambda>{[](std::int64_t) { return 1.0; }}); },
      "expected 2 lr_lambdas");
  {
    std::vector<Parameter> p2 = {formula_param({3}, 0, Device::cpu())};
    SGD sgd2(p2, SGDOptions(0.1));
    std::vector<Parameter> q2 = {formula_param({3}, 2, Device::cpu())};
    Adam adam2(q2, AdamOptions(0.01));
    auto a = std::make_shared<LinearLR>(sgd2, 0.5, 1.0, 3);
    auto b = std::make_shared<ExponentialLR>(sgd2, 0.9);
    expect_error(
        [&] {
          SequentialLR(sgd2, {a, b}, {3, 5});
        },
        "one milestone fewer than schedulers, got 2 schedulers and 2 milestones");
    auto c = std::make_shared<ExponentialLR>(adam2, 0.9);
    expect_error([&] { SequentialLR(sgd2, {a, c}, {3}); }, "must belong to the optimizer");
    auto d = std::make_shared<ReduceLROnPlateau>(sgd2);
    expect_error([&] { SequentialLR(sgd2, {a, d}, {3}); }, "cannot be sequenced");
    auto e = std::make_shared<ExponentialLR>(sgd2, 0.8);
    expect_error([&] { SequentialLR(sgd2, {a, b, e}, {5, 3}); }, "milestones must be increasing");
  }
  expect_error([&] { OneCycleLR(sgd, OneCycleLROptions(0.1)); }, "define total_steps > 0");
  expect_error([&] { OneCycleLR(sgd, OneCycleLROptions(0.1).total_steps(-3)); },
               "positive total_steps");
  expect_error([&] { OneCycleLR(sgd, OneCycleLROptions(0.1).total_steps(10).pct_start(1.5)); },
               "pct_start must be in [0, 1]");
  expect_error(
      [&] { OneCycleLR(sgd, OneCycleLROptions(0.1).total_steps(10).anneal_strategy("exp")); },
      "anneal_strategy must be 'cos' or 'linear'");
  expect_error(
      [&] {
        OneCycleLR(sgd, OneCycleLROptions({0.1, 0.2, 0.3}).total_steps(10));
      },
      "expected 2 values for max_lr");
  expect_error([&] { OneCycleLR(adagrad, OneCycleLROptions(0.1).total_steps(10)); },
               "neither momentum nor betas");
  expect_error([&] { OneCycleLR(adam, OneCycleLROptions(0.1).total_steps(10).max_momentum(1.0)); },
               "[0, 1) (beta1)");
  expect_error([&] { OneCycleLR(sgd, OneCycleLROptions(0.1).total_steps(10).pct_start(0.1)); },
               "division by zero");  // PyTorch: ZeroDivisionError at construction
  expect_error([&] { CyclicLR(adam, CyclicLROptions(0.001, 0.01)); },
               "has no momentum hyperparameter");
  expect_error([&] { CyclicLR(sgd, CyclicLROptions(0.001, 0.01).mode("sawtooth")); },
               "mode must be");
  expect_error([&] { CyclicLR(sgd, CyclicLROptions(0.001, 0.01).step_size_up(0)); },
               "step_size_up must be > 0");
  expect_error([&] { ReduceLROnPlateau(sgd, ReduceLROnPlateauOptions().factor(1.0)); },
               "factor should be < 1.0");
  expect_error([&] { ReduceLROnPlateau(sgd, ReduceLROnPlateauOptions().mode("up")); },
               "mode must be 'min' or 'max'");
  expect_error([&] { ReduceLROnPlateau(sgd, ReduceLROnPlateauOptions().threshold_mode("x")); },
               "threshold_mode must be 'rel' or 'abs'");
  expect_error(
      [&] {
        ReduceLROnPlateau(sgd, ReduceLROnPlateauOptions().min_lr({0.1, 0.2, 0.3}));
      },
      "expected 2 values for min_lr");
  // The optimizer is untouched by the failed constructions.
  EXPECT_EQ(sgd.lr(0), 0.1);
  EXPECT_EQ(sgd.get(0, "momentum"), 0.9);
  EXPECT_EQ(adam.get(0, "beta1"), 0.9);
}

// initial_lr is shared between the schedulers of one optimizer, as PyTorch's param_groups
// entry: a second scheduler's base_lrs are the original lrs, not the first one's output.
// A group added after the scheduler was made has no per-group schedule state: every kind
// refuses to step then (PyTorch schedules some groups and not others, or raises KeyError),
// and changes nothing.
TEST(Schedulers, StepAfterAddParamGroupIsRefused) {
  using Make = std::function<std::unique_ptr<LRScheduler>(Optimizer&)>;
  const std::vector<std::pair<const char*, Make>> kinds = {
      {"StepLR", [](Optimizer& o) { return std::make_unique<StepLR>(o, 2); }},
      {"MultiStepLR",
       [](Optimizer& o) {
         return std::make_unique<MultiStepLR>(o, std::vector<std::int64_t>{2, 4});
       }},
      {"ExponentialLR", [](Optimizer& o) { return std::make_unique<ExponentialLR>(o, 0.9); }},
      {"CosineAnnealingLR",
       [](Optimizer& o) { return std::make_unique<CosineAnnealingLR>(o, 5, 0.001); }},
      {"LinearLR", [](Optimizer& o) { return std::make_unique<LinearLR>(o, 0.5); }},
      {"LambdaLR",
       [](Optimizer& o) {
         return std::make_unique<LambdaLR>(o, [](std::int64_t e) { return 1.0 / (1.0 + e); });
       }},
      {"OneCycleLR",
       [](Optimizer& o) {
         return std::make_unique<OneCycleLR>(o, OneCycleLROptions(1.0).total_steps(20));
       }},
      {"CyclicLR",
       [](Optimizer& o) { return std::make_unique<CyclicLR>(o, CyclicLROptions(0.01, 0.1)); }},
      {"ReduceLROnPlateau", [](Optimizer& o) { return std::make_unique<ReduceLROnPlateau>(o); }},
  };
  for (const auto& k : kinds) {
    SCOPED_TRACE(k.first);
    std::vector<Parameter> p = {formula_param({3}, 0, Device::cpu())};
    SGD sgd(p, SGDOptions(0.1).momentum(0.9));
    std::unique_ptr<LRScheduler> s = k.second(sgd);
    const std::int64_t epoch = s->last_epoch();
    const double lr0 = sgd.lr(0);
    sgd.add_param_group(ParamGroup({formula_param({2}, 1, Device::cpu())}, {{"lr", 0.2}}));
    if (s->needs_metric()) {
      expect_error([&] { s->step(1.0); }, "make the scheduler after add_param_group");
    } else {
      expect_error([&] { s->step(); }, "has 2 param groups but had 1");
    }
    EXPECT_EQ(s->last_epoch(), epoch);
    EXPECT_EQ(sgd.lr(0), lr0);
    EXPECT_EQ(sgd.lr(1), 0.2);
  }
}

TEST(Schedulers, InitialLrSharedAcrossSchedulers) {
  std::vector<Parameter> p = {formula_param({3}, 0, Device::cpu())};
  SGD opt(p, SGDOptions(0.1));
  LinearLR a(opt, 0.5, 1.0, 4);
  EXPECT_EQ(opt.lr(0), 0.05);
  ExponentialLR b(opt, 0.9);
  EXPECT_EQ(b.base_lrs(), std::vector<double>{0.1});
}

}  // namespace
