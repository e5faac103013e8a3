// Optimizers: PyTorch 1.13 trajectories (tests/fixtures/torch_optim.txt, made by
// gen_optim_fixtures.py), float64 references of the SEMANTICS.md formulas for LAMB and RAdam's
// decoupled weight decay, state_dict round trips (k steps + save + load + N-k steps == N steps
// bitwise), chunking invariance, model copies, parameter groups and every bad input. Each body
// runs on every backend (CUDA cases skip without a GPU).
//
// Tolerance against PyTorch: |got - want| <= 2e-6 + 2e-6 |want| at every step. The operation
// order matches PyTorch's single-tensor optimizers, so most elements agree bitwise; the rest
// differ by the rounding of PyTorch's vectorised fused multiply-adds.
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "fixture_text.hpp"
#include "optim_util.hpp"
#include "test_util.hpp"

namespace {

using trainrt::Device;
using trainrt::DType;
using trainrt::Parameter;
using trainrt::Shape;
using trainrt::StateDict;
using trainrt::Tensor;
using trainrt::optim::HyperParams;
using trainrt::optim::Optimizer;
using trainrt::optim::ParamGroup;
using namespace trainrt_test;

// ---- fixture ------------------------------------------------------------------------------

struct OptimCase {
  std::string name, optimizer;
  int steps = 0;
  HyperParams defaults;
  std::vector<std::pair<int, HyperParams>> groups;  // (number of params, overrides)
  std::vector<Shape> shapes;
  std::vector<std::pair<int, int>> absent;                   // (param, step)
  std::map<std::pair<int, int>, std::vector<double>> after;  // (step, param) -> values
  bool is_absent(int p, int k) const {
    for (const auto& a : absent)
      if (a.first == p && a.second == k) return true;
    return false;
  }
};

std::vector<OptimCase> load_optim_cases() {
  std::vector<OptimCase> cases;
  OptimCase cur;
  trainrt_test::read_fixture("torch_optim.txt",
                             [&](const std::string& tag, std::istringstream& ls) {
                               if (tag == "case") {
                                 cur = OptimCase();
                                 ls >> cur.name;
                               } else if (tag == "optimizer") {
                                 ls >> cur.optimizer;
                               } else if (tag == "steps") {
                                 ls >> cur.steps;
                               } else if (tag == "default") {
                                 std::string k;
                                 double v;
                                 ls >> k >> v;
                                 cur.defaults[k] = v;
                               } else if (tag == "group") {
                                 int g = 0, n = 0;
                                 ls >> g >> n;
                                 HyperParams o;
                                 std::string k;
                                 double v;
                                 while (ls >> k >> v) o[k] = v;
                                 cur.groups.emplace_back(n, o);
                               } else if (tag == "param") {
                                 int p = 0, nd = 0;
                                 ls >> p >> nd;
                                 Shape s(static_cast<std::size_t>(nd));
                                 for (auto& d : s) ls >> d;
                                 cur.shapes.push_back(s);
                               } else if (tag == "absent") {
                                 int p = 0, k = 0;
                                 ls >> p >> k;
                                 cur.absent.emplace_back(p, k);
                               } else if (tag == "after") {
                                 int k = 0, p = 0;
                                 ls >> k >> p;
                                 cur.after[{k, p}] = trainrt_test::fixture_numbers(ls);
                               } else if (tag == "end") {
                                 cases.push_back(cur);
                               } else {
                                 return false;
                               }
                               return true;
                             });
  return cases;
}

const std::vector<OptimCase>& optim_cases() {
  static const std::vector<OptimCase> c = load_optim_cases();
  return c;
}

using Built = ParamsAndOptimizer;

Built build(const OptimCase& c, Device dev) {
  Built b;
  std::vector<ParamGroup> groups;
  int p = 0;
  for (const auto& g : c.groups) {
    ParamGroup pg;
    pg.options = g.second;
    for (int i = 0; i < g.first; ++i, ++p) {
      b.params.push_back(formula_param(c.shapes[static_cast<std::size_t>(p)], p, dev));
      pg.params.push_back(b.params.back());
    }
    groups.push_back(pg);
  }
  b.opt = trainrt::optim::make_optimizer(c.optimizer, groups, c.defaults);
  return b;
}

void set_step_grads(const OptimCase& c, const std::vector<Parameter>& params, int k) {
  for (std::size_t p = 0; p < params.size(); ++p) {
    if (c.is_absent(static_cast<int>(p), k)) {
      params[p].clear_grad();
    } else {
      set_formula_grad(params[p], static_cast<int>(p), k);
    }
  }
}

class OptimGolden : public BackendTest {};
TRAINRT_INSTANTIATE_BACKENDS(OptimGolden);

TEST_P(OptimGolden, FixtureCoversEveryTorchOptimizer) {
  std::map<std::string, int> n;
  for (const auto& c : optim_cases()) ++n[c.optimizer];
  for (const char* o : {"SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "RAdam"}) {
    EXPECT_GE(n[o], 3) << o;
  }
}

TEST_P(OptimGolden, TrajectoriesMatchPyTorch) {
  for (const OptimCase& c : optim_cases()) {
    SCOPED_TRACE(c.name);
    Built b = build(c, dev);
    for (int k = 0; k < c.steps; ++k) {
      set_step_grads(c, b.params, k);
      b.opt->step();
      for (std::size_t p = 0; p < b.params.size(); ++p) {
        const std::vector<float> got = host_f32(b.params[p].value());
        const std::vector<double>& want = c.after.at({k, static_cast<int>(p)});
        const std::int64_t bad = first_mismatch(got, want, 2e-6, 2e-6);
        ASSERT_EQ(bad, -1) << c.name << " step " << k << " param " << p << " element " << bad
                           << ": got "
                           << (bad >= 0 && bad < (std::int64_t)got.size() ? got[bad] : 0)
                           << " want "
                           << (bad >= 0 && bad < (std::int64_t)want.size() ? want[bad] : 0);
      }
    }
    // Skipped steps do not count.
    for (std::size_t p = 0; p < b.params.size(); ++p) {
      int expected = c.steps;
      for (const auto& a : c.absent)
        if (a.first == static_cast<int>(p)) --expected;
      EXPECT_EQ(b.opt->step_count(b.params[p]), expected) << "param " << p;
    }
  }
}

// ---- float64 references: LAMB and RAdam ---------------------------------------------------------

struct RefState {
  std::vector<double> p, m, v;
  std::int64_t t = 0;
};

/// LAMB (Apex FusedLAMB, adam_w_mode) over all params of one group, float64.
void lamb_ref_step(std::vector<RefState>& st, const std::vector<std::vector<double>>& g,
                   const std::vector<bool>& has, const HyperParams& h) {
  const double lr = h.at("lr"), b1 = h.at("beta1"), b2 = h.at("beta2"), eps = h.at("eps");
  const double wd = h.at("weight_decay"), mgn = h.at("max_grad_norm");
  const bool nv = h.at("use_nvlamb") != 0.0;
  double gn2 = 0.0;
  for (std::size_t i = 0; i < st.size(); ++i)
    if (has[i])
      for (double x : g[i]) gn2 += x * x;
  const double gn = std::sqrt(gn2);
  const double div = gn > mgn ? gn / mgn : 1.0;
  for (std::size_t i = 0; i < st.size(); ++i) {
    if (!has[i]) continue;
    RefState& s = st[i];
    ++s.t;
    const double bc1 = 1.0 - std::pow(b1, (double)s.t), bc2 = 1.0 - std::pow(b2, (double)s.t);
    std::vector<double> u(s.p.size());
    double pn = 0.0, un = 0.0;
    for (std::size_t j = 0; j < s.p.size(); ++j) {
      const double sg = g[i][j] / div;
      s.m[j] = b1 * s.m[j] + (1.0 - b1) * sg;
      s.v[j] = b2 * s.v[j] + (1.0 - b2) * sg * sg;
      u[j] = (s.m[j] / bc1) / (std::sqrt(s.v[j] / bc2) + eps) + wd * s.p[j];
      pn += s.p[j] * s.p[j];
      un += u[j] * u[j];
    }
    pn = std::sqrt(pn);
    un = std::sqrt(un);
    const double ratio = ((nv || wd != 0.0) && pn > 0.0 && un > 0.0) ? lr * pn / un : lr;
    for (std::size_t j = 0; j < s.p.size(); ++j) s.p[j] -= ratio * u[j];
  }
}

/// RAdam as SEMANTICS.md, float64 (decoupled or L2 weight decay, maximize).
void radam_ref_step(RefState& s, std::vector<double> g, const HyperParams& h) {
  const double lr = h.at("lr"), b1 = h.at("beta1"), b2 = h.at("beta2"), eps = h.at("eps");
  const double wd = h.at("weight_decay");
  const bool dec = h.at("decoupled_weight_decay") != 0.0;
  if (h.at("maximize") != 0.0)
    for (double& x : g) x = -x;
  ++s.t;
  const double t = (double)s.t;
  const double bc1 = 1.0 - std::pow(b1, t), bc2 = 1.0 - std::pow(b2, t);
  const double rho_inf = 2.0 / (1.0 - b2) - 1.0;
  const double rho_t = rho_inf - 2.0 * t * std::pow(b2, t) / bc2;
  for (std::size_t j = 0; j < s.p.size(); ++j) {
    if (wd != 0.0) {
      if (dec) {
        s.p[j] *= 1.0 - lr * wd;
      } else {
        g[j] += wd * s.p[j];
      }
    }
    s.m[j] = b1 * s.m[j] + (1.0 - b1) * g[j];
    s.v[j] = b2 * s.v[j] + (1.0 - b2) * g[j] * g[j];
    const double mhat = s.m[j] / bc1;
    if (rho_t > 5.0) {
      const double r = std::sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf /
                                 ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t));
      s.p[j] -= lr * mhat * r * std::sqrt(bc2) / (std::sqrt(s.v[j]) + eps);
    } else {
      s.p[j] -= lr * mhat;
    }
  }
}

std::vector<double> to_doubles(const std::vector<float>& v) {
  return std::vector<double>(v.begin(), v.end());
}

class OptimReference : public BackendTest {};
TRAINRT_INSTANTIATE_BACKENDS(OptimReference);

TEST_P(OptimReference, LambMatchesFloat64Formulas) {
  const std::vector<Shape> shapes = {{2, 3}, {0}, {4}, {3}, {40000}};
  struct Config {
    const char* name;
    HyperParams over;
  };
  const std::vector<Config> configs = {
      {"defaults", {}},
      {"large max_grad_norm", {{"max_grad_norm", 1e6}, {"lr", 0.01}}},
      {"no weight decay", {{"weight_decay", 0.0}, {"lr", 0.02}}},
      {"nvlamb without decay", {{"weight_decay", 0.0}, {"use_nvlamb", 1.0}, {"lr", 0.02}}},
      {"betas eps", {{"beta1", 0.8}, {"beta2", 0.95}, {"eps", 1e-4}, {"weight_decay", 0.1}}},
  };
  for (const Config& cfg : configs) {
    SCOPED_TRACE(cfg.name);
    std::vector<Parameter> params;
    std::vector<RefState> ref;
    for (std::size_t p = 0; p < shapes.size(); ++p) {
      params.push_back(formula_param(shapes[p], static_cast<int>(p), dev));
      RefState r;
      r.p = to_doubles(host_f32(params.back().value()));
      r.m.assign(r.p.size(), 0.0);
      r.v.assign(r.p.size(), 0.0);
      ref.push_back(r);
    }
    trainrt::optim::LAMB opt({ParamGroup(params, cfg.over)}, trainrt::optim::LAMBOptions());
    const HyperParams h = opt.param_groups()[0].options;
    for (int k = 0; k < 12; ++k) {
      std::vector<std::vector<double>> g(params.size());
      std::vector<bool> has(params.size(), true);
      for (std::size_t p = 0; p < params.size(); ++p) {
        if (p == 2 && k == 4) {
          has[p] = false;
          params[p].clear_grad();
          continue;
        }
        set_formula_grad(params[p], static_cast<int>(p), k);
        g[p] = to_doubles(host_f32(params[p].grad()));
      }
      opt.step();
      lamb_ref_step(ref, g, has, h);
      for (std::size_t p = 0; p < params.size(); ++p) {
        const std::int64_t bad = first_mismatch(host_f32(params[p].value()), ref[p].p, 2e-5, 2e-6);
        ASSERT_EQ(bad, -1) << "step " << k << " param " << p << " element " << bad;
      }
    }
    EXPECT_EQ(opt.step_count(params[2]), 11);
    EXPECT_EQ(opt.step_count(params[1]), 12);
  }
}

TEST_P(OptimReference, RAdamDecoupledMatchesFloat64Formulas) {
  const std::vector<Shape> shapes = {{2, 3}, {0}, {5}, {30000}};
  const std::vector<HyperParams> configs = {
      {{"lr", 0.05}, {"weight_decay", 0.1}, {"decoupled_weight_decay", 1.0}},
      {{"lr", 0.05}, {"weight_decay", 0.1}, {"decoupled_weight_decay", 0.0}},
      {{"lr", 0.02}, {"weight_decay", 0.3}, {"decoupled_weight_decay", 1.0}, {"maximize", 1.0}},
      {{"lr", 0.02},
       {"beta1", 0.5},
       {"beta2", 0.9},
       {"decoupled_weight_decay", 1.0},
       {"weight_decay", 0.05}},
  };
  for (std::size_t ci = 0; ci < configs.size(); ++ci) {
    SCOPED_TRACE("config " + std::to_string(ci));
    std::vector<Parameter> params;
    std::vector<RefState> ref;
    for (std::size_t p = 0; p < shapes.size(); ++p) {
      params.push_back(formula_param(shapes[p], static_cast<int>(p), dev));
      RefState r;
      r.p = to_doubles(host_f32(params.back().value()));
      r.m.assign(r.p.size(), 0.0);
      r.v.assign(r.p.size(), 0.0);
      ref.push_back(r);
    }
    trainrt::optim::RAdam opt({ParamGroup(params, configs[ci])}, trainrt::optim::RAdamOptions());
    const HyperParams h = opt.param_groups()[0].options;
    for (int k = 0; k < 14; ++k) {  // rho_t > 5 from step 6 (beta2 0.999) or 3 (beta2 0.9) on
      for (std::size_t p = 0; p < params.size(); ++p) {
        set_formula_grad(params[p], static_cast<int>(p), k);
        radam_ref_step(ref[p], to_doubles(host_f32(params[p].grad())), h);
      }
      opt.step();
      for (std::size_t p = 0; p < params.size(); ++p) {
        const std::int64_t bad = first_mismatch(host_f32(params[p].value()), ref[p].p, 2e-5, 2e-6);
        ASSERT_EQ(bad, -1) << "step " << k << " param " << p << " element " << bad;
      }
    }
  }
}

// ---- every algorithm: invariance, state_dict round trips -------------------------------------

struct AlgoConfig {
  const char* name;
  const char* optimizer;
  HyperParams defaults;
};

const std::vector<AlgoConfig>& algo_configs() {
  static const std::vector<AlgoConfig> c = {
      {"sgd", "SGD", {{"lr", 0.1}}},
      {"sgd_momentum_wd", "SGD", {{"lr", 0.05}, {"momentum", 0.9}, {"weight_decay", 0.01}}},
      {"sgd_nesterov_max",
       "SGD",
       {{"lr", 0.05}, {"momentum", 0.9}, {"nesterov", 1}, {"maximize", 1}}},
      {"sgd_dampening", "SGD", {{"lr", 0.05}, {"momentum", 0.5}, {"dampening", 0.3}}},
      {"adam", "Adam", {{"lr", 0.01}}},
      {"adam_amsgrad_wd_max",
       "Adam",
       {{"lr", 0.01}, {"amsgrad", 1}, {"weight_decay", 0.1}, {"maximize", 1}}},
      {"adamw", "AdamW", {{"lr", 0.01}}},
      {"adamw_amsgrad", "AdamW", {{"lr", 0.01}, {"amsgrad", 1}}},
      {"rmsprop", "RMSprop", {{"lr", 0.01}}},
      {"rmsprop_centered_momentum",
       "RMSprop",
       {{"lr", 0.01}, {"centered", 1}, {"momentum", 0.9}, {"weight_decay", 0.1}}},
      {"adagrad", "Adagrad", {{"lr", 0.1}, {"lr_decay", 0.01}, {"initial_accumulator_value", 0.1}}},
      {"radam", "RAdam", {{"lr", 0.01}, {"weight_decay", 0.1}}},
      {"radam_decoupled",
       "RAdam",
       {{"lr", 0.01}, {"weight_decay", 0.1}, {"decoupled_weight_decay", 1}}},
      {"lamb", "LAMB", {{"lr", 0.01}}},
      {"lamb_nvlamb", "LAMB", {{"lr", 0.01}, {"weight_decay", 0.0}, {"use_nvlamb", 1}}},
  };
  return c;
}

const std::vector<Shape>& mixed_shapes() {
  static const std::vector<Shape> s = {{3, 4}, {0}, {17}, {40000}, {1}, {16384}, {16385}};
  return s;
}

std::vector<Parameter> make_params(const std::vector<Shape>& shapes, Device dev) {
  std::vector<Parameter> ps;
  for (std::size_t p = 0; p < shapes.size(); ++p)
    ps.push_back(formula_param(shapes[p], static_cast<int>(p), dev));
  return ps;
}

/// Two groups: the first half of the params with the defaults, the rest with half the lr.
std::unique_ptr<Optimizer> make_two_group(const AlgoConfig& c, const std::vector<Parameter>& ps) {
  std::vector<Parameter> a(ps.begin(), ps.begin() + ps.size() / 2);
  std::vector<Parameter> b(ps.begin() + ps.size() / 2, ps.end());
  HyperParams over{{"lr", c.defaults.at("lr") * 0.5}};
  return trainrt::optim::make_optimizer(c.optimizer, {ParamGroup(a), ParamGroup(b, over)},
                                        c.defaults);
}

/// Grads of step k; parameter 2 has none at step 3 (and parameter 4 none at step 6).
void set_grads_k(const std::vector<Parameter>& ps, int k) {
  for (std::size_t p = 0; p < ps.size(); ++p) {
    if ((p == 2 && k == 3) || (p == 4 && k == 6)) {
      ps[p].clear_grad();
    } else {
      set_formula_grad(ps[p], static_cast<int>(p), k);
    }
  }
}

/// Steps from .. to - 1 with the grads of set_grads_k.
void run_steps(Optimizer& o, const std::vector<Parameter>& ps, int from, int to) {
  for (int k = from; k < to; ++k) {
    set_grads_k(ps, k);
    o.step();
  }
}

/// `steps` steps of configuration c over fresh mixed-shape parameters (capturable or not).
struct ConfigRun {
  std::vector<Parameter> params;
  std::unique_ptr<Optimizer> opt;
};
ConfigRun run_config(const AlgoConfig& c, Device dev, int steps, bool capturable = false) {
  ConfigRun r;
  r.params = make_params(mixed_shapes(), dev);
  r.opt = make_two_group(c, r.params);
  r.opt->set_capturable(capturable);
  run_steps(*r.opt, r.params, 0, steps);
  return r;
}

/// Fresh mixed-shape parameters holding the values of `from`.
std::vector<Parameter> params_like(const std::vector<Parameter>& from, Device dev) {
  std::vector<Parameter> ps = make_params(mixed_shapes(), dev);
  for (std::size_t p = 0; p < ps.size(); ++p) {
    Tensor v = ps[p].value();
    v.copy_(from[p].value());
  }
  return ps;
}

class OptimAlgorithms : public BackendTest {};
TRAINRT_INSTANTIATE_BACKENDS(OptimAlgorithms);

TEST_P(OptimAlgorithms, StateDictRoundTripIsBitwise) {
  const int N = 10, K = 4;
  for (const AlgoConfig& c : algo_configs()) {
    SCOPED_TRACE(c.name);
    // Reference: N steps in one go.
    ConfigRun a = run_config(c, dev, N);
    std::vector<Parameter>& pa = a.params;
    auto& oa = a.opt;
    // K steps, save, load into a fresh optimizer over fresh parameters, N - K more steps.
    ConfigRun b = run_config(c, dev, K);
    std::vector<Parameter>& pb = b.params;
    auto& ob = b.opt;
    const StateDict sd = ob->state_dict();
    std::vector<Parameter> pc = params_like(pb, dev);
    auto oc = make_two_group(c, pc);
    oc->set_lr(123.0);  // overwritten by the load
    oc->load_state_dict(sd);
    for (int k = K; k < N; ++k) {
      set_grads_k(pc, k);
      oc->step();
      set_grads_k(pb, k);
      ob->step();  // the saved optimizer goes on too: the state dict must not alias it
    }
    for (std::size_t p = 0; p < pa.size(); ++p) {
      EXPECT_TRUE(same_bits(host_f32(pa[p].value()), host_f32(pc[p].value()))) << "param " << p;
      EXPECT_TRUE(same_bits(host_f32(pa[p].value()), host_f32(pb[p].value()))) << "param " << p;
      EXPECT_EQ(oa->step_count(pa[p]), oc->step_count(pc[p]));
    }
    const StateDict sa = oa->state_dict(), sc = oc->state_dict();
    EXPECT_EQ(sa.scalars, sc.scalars);
    ASSERT_EQ(sa.tensors.size(), sc.tensors.size());
    for (const auto& kv : sa.tensors) {
      ASSERT_TRUE(sc.tensors.count(kv.first)) << kv.first;
      EXPECT_TRUE(same_bits(host_f32(kv.second), host_f32(sc.tensors.at(kv.first)))) << kv.first;
    }
  }
}

/// Params, step counts and state dicts of two optimizers over two parameter sets agree
/// bitwise.
void expect_same_run(const Optimizer& oa, const std::vector<Parameter>& pa, const Optimizer& ob,
                     const std::vector<Parameter>& pb) {
  for (std::size_t p = 0; p < pa.size(); ++p) {
    EXPECT_TRUE(same_bits(host_f32(pa[p].value()), host_f32(pb[p].value()))) << "param " << p;
    EXPECT_EQ(oa.step_count(pa[p]), ob.step_count(pb[p])) << "param " << p;
  }
  const StateDict sa = oa.state_dict(), sb = ob.state_dict();
  EXPECT_EQ(sa.scalars, sb.scalars);
  ASSERT_EQ(sa.tensors.size(), sb.tensors.size());
  for (const auto& kv : sa.tensors) {
    ASSERT_TRUE(sb.tensors.count(kv.first)) << kv.first;
    EXPECT_TRUE(same_bits(host_f32(kv.second), host_f32(sb.tensors.at(kv.first)))) << kv.first;
  }
}

// A capturable step (step counts on the device, t-dependent scalars derived by the kernels)
// gives the ordinary step's results bitwise: with two groups, grads absent at some steps (so
// the tensors of one call have different counts), an lr changed between steps, and capturable
// switched on and off mid-run.
TEST_P(OptimAlgorithms, CapturableStepEqualsOrdinaryStep) {
  const int N = 12;
  for (const AlgoConfig& c : algo_configs()) {
    SCOPED_TRACE(c.name);
    std::vector<Parameter> pa = make_params(mixed_shapes(), dev);
    std::vector<Parameter> pb = make_params(mixed_shapes(), dev);
    std::vector<Parameter> pc = make_params(mixed_shapes(), dev);
    auto oa = make_two_group(c, pa);
    auto ob = make_two_group(c, pb);
    auto oc = make_two_group(c, pc);
    ob->set_capturable(true);
    EXPECT_TRUE(ob->capturable());
    EXPECT_FALSE(oa->capturable());
    for (int k = 0; k < N; ++k) {
      SCOPED_TRACE("step " + std::to_string(k));
      if (k == 3) oc->set_capturable(true);
      if (k == 9) oc->set_capturable(false);
      if (k == 6) {
        for (Optimizer* o : {oa.get(), ob.get(), oc.get()}) o->set(1, "lr", o->get(1, "lr") * 0.25);
      }
      set_grads_k(pa, k);
      set_grads_k(pb, k);
      set_grads_k(pc, k);
      oa->step();
      ob->step();
      oc->step();
      EXPECT_FALSE(ob->last_step_skipped());
      if (k == 2 || k == 7) expect_same_run(*oa, pa, *ob, pb);
    }
    expect_same_run(*oa, pa, *ob, pb);
    expect_same_run(*oa, pa, *oc, pc);
  }
}

// Switching capturable off and on again between ordinary steps whose buckets differ (one
// group with two step counts), and SGD momentum switched on mid-run with dampening (a buffer
// made at step 3 starts at g, as in PyTorch): the capturable optimizer follows the ordinary one.
TEST_P(OptimAlgorithms, CapturableTogglesAndLateMomentum) {
  for (double damp : {0.0, 0.3}) {
    SCOPED_TRACE("dampening " + std::to_string(damp));
    const HyperParams d{{"lr", 0.01}, {"momentum", 0.0}, {"dampening", damp}};
    std::vector<Parameter> pa = make_params({{5}, {5}, {5}}, dev);
    std::vector<Parameter> pb = make_params({{5}, {5}, {5}}, dev);
    auto make = [&](const std::vector<Parameter>& p) {
      return trainrt::optim::make_optimizer(
          "SGD", {ParamGroup({p[0], p[1]}), ParamGroup({p[2]}, {{"lr", 0.08}})}, d);
    };
    auto oa = make(pa), ob = make(pb);
    ob->set_capturable(true);
    auto step = [&](int k, const std::vector<int>& with_grad) {
      for (auto* ps : {&pa, &pb}) {
        for (auto& p : *ps) p.clear_grad();
        for (int i : with_grad) set_formula_grad((*ps)[i], i, k);
      }
      oa->step();
      ob->step();
    };
    step(0, {0, 1, 2});
    ob->set_capturable(false);
    step(1, {0});
    step(2, {0, 1, 2});
    ob->set_capturable(true);
    oa->set(0, "momentum", 0.9);
    ob->set(0, "momentum", 0.9);
    step(3, {0, 1, 2});
    step(4, {0, 2});
    step(5, {0, 1, 2});
    for (std::size_t p = 0; p < pa.size(); ++p) {
      EXPECT_TRUE(same_bits(host_f32(pa[p].value()), host_f32(pb[p].value()))) << "param " << p;
      EXPECT_EQ(oa->step_count(pa[p]), ob->step_count(pb[p]));
    }
  }
}

// upload_hyperparameters() carries new values to the blocks a captured graph reads, but not a
// change of the kind of update (fixed in the captured launch): that is refused, and the next
// step() runs it.
TEST_P(OptimAlgorithms, UploadHyperparametersRefusesAChangedKindOfUpdate) {
  std::vector<Parameter> ps = make_params({{4}}, dev);
  trainrt::optim::Adam opt(ps, trainrt::optim::AdamOptions(0.01));
  opt.set_capturable(true);
  set_formula_grad(ps[0], 0, 0);
  opt.step();
  opt.set_lr(0.02);
  EXPECT_NO_THROW(opt.upload_hyperparameters());
  opt.set(0, "weight_decay", 0.1);  // switches L2 decay on: another kernel variant
  try {
    opt.upload_hyperparameters();
    ADD_FAILURE() << "not refused";
  } catch (const trainrt::Error& e) {
    EXPECT_NE(std::string(e.what()).find("capture the step again"), std::string::npos) << e.what();
  }
  // The same sequence on an ordinary optimizer: the capturable one's next step matches it.
  std::vector<Parameter> qs = make_params({{4}}, dev);
  trainrt::optim::Adam ref(qs, trainrt::optim::AdamOptions(0.01));
  set_formula_grad(qs[0], 0, 0);
  ref.step();
  ref.set_lr(0.02);
  ref.set(0, "weight_decay", 0.1);
  set_formula_grad(ps[0], 0, 1);
  set_formula_grad(qs[0], 0, 1);
  opt.step();
  ref.step();
  EXPECT_TRUE(same_bits(host_f32(ps[0].value()), host_f32(qs[0].value())));
}

// A state dict that gives a parameter state but a step count of 0 is refused (an optimizer
// makes state at a parameter's first step; a capturable one could not tell it from a skipped
// first step), and the load changes nothing.
TEST_P(OptimAlgorithms, LoadRefusesStateOfAParameterThatHasNotStepped) {
  for (bool cap : {false, true}) {
    SCOPED_TRACE(cap ? "capturable" : "ordinary");
    std::vector<Parameter> ps = make_params({{2}, {3}}, dev);
    trainrt::optim::SGD opt(ps, trainrt::optim::SGDOptions(0.5).momentum(0.5));
    opt.set_capturable(cap);
    set_formula_grad(ps[1], 1, 0);
    opt.step();  // param 1 steps, param 0 has no grad
    StateDict sd = opt.state_dict();
    EXPECT_EQ(sd.tensors.count("state.0.momentum_buffer"), 0u);
    sd.scalars["state.0.step"] = 0;
    sd.tensors["state.0.momentum_buffer"] = f32_tensor({8.0f, 8.0f}, {2}, Device::cpu());
    sd.scalars["param_groups.0.lr"] = 0.25;
    try {
      opt.load_state_dict(sd);
      ADD_FAILURE() << "not refused";
    } catch (const trainrt::Error& e) {
      EXPECT_NE(std::string(e.what()).find("has not stepped has no state"), std::string::npos)
          << e.what();
    }
    EXPECT_EQ(opt.lr(), 0.5);
    EXPECT_FALSE(opt.state(ps[0], "momentum_buffer").defined());
    EXPECT_EQ(opt.step_count(ps[1]), 1);
  }
}

// State dicts of a capturable optimizer round-trip into capturable and ordinary ones, and a
// load into a capturable optimizer writes its device counts and state in place.
TEST_P(OptimAlgorithms, CapturableStateDictRoundTrip) {
  const int N = 8, K = 3;
  for (const AlgoConfig& c : algo_configs()) {
    SCOPED_TRACE(c.name);
    const ConfigRun a = run_config(c, dev, N);
    const ConfigRun b = run_config(c, dev, K, true);
    const StateDict sd = b.opt->state_dict();
    for (bool cap_target : {true, false}) {
      SCOPED_TRACE(cap_target ? "into capturable" : "into ordinary");
      // A capturable target that has stepped already: the load overwrites its device state.
      ConfigRun t = run_config(c, dev, cap_target ? 1 : 0, cap_target);
      for (std::size_t p = 0; p < t.params.size(); ++p) {
        Tensor v = t.params[p].value();
        v.copy_(b.params[p].value());
      }
      t.opt->load_state_dict(sd);
      run_steps(*t.opt, t.params, K, N);
      expect_same_run(*a.opt, a.params, *t.opt, t.params);
    }
  }
}

TEST_P(OptimAlgorithms, SplittingTensorsDoesNotChangeResults) {
  // The update is element-wise: one 70000-element tensor and the same values in 7 tensors
  // (chunk boundaries elsewhere) must give the same bits. (LAMB's trust ratio is per tensor,
  // so it is compared with one group per layout only.)
  const std::int64_t n = 70000;
  const std::vector<std::int64_t> parts = {1, 16383, 16385, 7, 20000, 17224, 0};
  for (const AlgoConfig& c : algo_configs()) {
    if (std::string(c.optimizer) == "LAMB") continue;
    SCOPED_TRACE(c.name);
    const std::vector<float> init = uniform_f32(n, -1, 1, 7);
    Parameter whole(f32_tensor(init, {n}, dev));
    std::vector<Parameter> pieces;
    std::int64_t off = 0;
    for (std::int64_t len : parts) {
      pieces.emplace_back(
          f32_tensor(std::vector<float>(init.begin() + off, init.begin() + off + len), {len}, dev));
      off += len;
    }
    auto o1 = trainrt::optim::make_optimizer(c.optimizer, {ParamGroup({whole})}, c.defaults);
    auto o2 = trainrt::optim::make_optimizer(c.optimizer, {ParamGroup(pieces)}, c.defaults);
    for (int k = 0; k < 5; ++k) {
      const std::vector<float> g = uniform_f32(n, -2, 2, 100 + k);
      whole.set_grad(f32_tensor(g, {n}, dev));
      off = 0;
      for (std::size_t i = 0; i < parts.size(); ++i) {
        pieces[i].set_grad(f32_tensor(
            std::vector<float>(g.begin() + off, g.begin() + off + parts[i]), {parts[i]}, dev));
        off += parts[i];
      }
      o1->step();
      o2->step();
    }
    std::vector<float> joined;
    for (const Parameter& p : pieces) {
      const std::vector<float> v = host_f32(p.value());
      joined.insert(joined.end(), v.begin(), v.end());
    }
    EXPECT_TRUE(same_bits(host_f32(whole.value()), joined));
  }
}

TEST_P(OptimAlgorithms, ModelCopiesAreTheRoundedParams) {
  for (const AlgoConfig& c : algo_configs()) {
    SCOPED_TRACE(c.name);
    std::vector<Parameter> ps = make_params(mixed_shapes(), dev);
    ps[0].set_model_copy(Tensor::empty(ps[0].value().shape(), DType::f16, dev));
    ps[3].set_model_copy(Tensor::empty(ps[3].value().shape(), DType::bf16, dev));
    ps[1].set_model_copy(Tensor::empty(ps[1].value().shape(), DType::bf16, dev));
    ps[6].set_model_copy(Tensor::empty(ps[6].value().shape(), DType::f16, dev));
    auto opt = make_two_group(c, ps);
    for (int k = 0; k < 4; ++k) {
      set_grads_k(ps, k);
      opt->step();
      for (std::size_t p : {0u, 1u, 3u, 6u}) {
        const Tensor mc = ps[p].model_copy();
        const Tensor want = ps[p].value().to(mc.dtype());
        EXPECT_EQ(mc.to(DType::f32).to_vector<float>(), want.to(DType::f32).to_vector<float>())
            << "param " << p << " step " << k;
      }
    }
  }
}

TEST_P(OptimAlgorithms, StateBuffersHavePyTorchNames) {
  std::vector<Parameter> ps = make_params({{4}}, dev);
  set_formula_grad(ps[0], 0, 0);
  trainrt::optim::Adam adam(ps, trainrt::optim::AdamOptions().amsgrad(true));
  EXPECT_FALSE(adam.state(ps[0], "exp_avg").defined());
  adam.step();
  for (const char* n : {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}) {
    EXPECT_TRUE(adam.state(ps[0], n).defined()) << n;
  }
  EXPECT_EQ(adam.step_count(ps[0]), 1);
  const StateDict sd = adam.state_dict();
  EXPECT_EQ(sd.strings.at("optimizer"), "Adam");
  EXPECT_EQ(sd.scalars.at("state.0.step"), 1.0);
  EXPECT_EQ(sd.scalars.at("param_groups.0.beta2"), 0.999);
  EXPECT_EQ(sd.scalars.at("param_groups.0.params"), 1.0);
  EXPECT_TRUE(sd.tensors.count("state.0.max_exp_avg_sq"));

  trainrt::optim::SGD sgd(ps, trainrt::optim::SGDOptions(0.1));
  sgd.step();
  EXPECT_FALSE(sgd.state(ps[0], "momentum_buffer").defined());  // no momentum, no buffer
  trainrt::optim::RMSprop rms(ps, trainrt::optim::RMSpropOptions().centered(true).momentum(0.5));
  rms.step();
  for (const char* n : {"square_avg", "grad_avg", "momentum_buffer"}) {
    EXPECT_TRUE(rms.state(ps[0], n).defined()) << n;
  }
  trainrt::optim::Adagrad ada(ps, trainrt::optim::AdagradOptions().initial_accumulator_value(0.5));
  ada.step();
  ASSERT_TRUE(ada.state(ps[0], "sum").defined());
}

TEST_P(OptimAlgorithms, DefaultsArePyTorchs) {
  using namespace trainrt::optim;
  EXPECT_EQ(SGDOptions(0.1).hyper(), (HyperParams{{"lr", 0.1},
                                                  {"momentum", 0},
                                                  {"dampening", 0},
                                                  {"weight_decay", 0},
                                                  {"nesterov", 0},
                                                  {"maximize", 0}}));
  const HyperParams adam = AdamOptions().hyper();
  EXPECT_EQ(adam.at("lr"), 1e-3);
  EXPECT_EQ(adam.at("beta1"), 0.9);
  EXPECT_EQ(adam.at("beta2"), 0.999);
  EXPECT_EQ(adam.at("eps"), 1e-8);
  EXPECT_EQ(adam.at("weight_decay"), 0.0);
  EXPECT_EQ(AdamWOptions().hyper().at("weight_decay"), 1e-2);
  EXPECT_EQ(RMSpropOptions().hyper().at("lr"), 1e-2);
  EXPECT_EQ(RMSpropOptions().hyper().at("alpha"), 0.99);
  EXPECT_EQ(AdagradOptions().hyper().at("eps"), 1e-10);
  EXPECT_EQ(AdagradOptions().hyper().at("lr"), 1e-2);
  EXPECT_EQ(RAdamOptions().hyper().at("lr"), 1e-3);
  const HyperParams lamb = LAMBOptions().hyper();
  EXPECT_EQ(lamb.at("eps"), 1e-6);
  EXPECT_EQ(lamb.at("weight_decay"), 0.01);
  EXPECT_EQ(lamb.at("max_grad_norm"), 1.0);
}

// ---- groups, zero_grad, hyperparameter access ---------------------------------------------------

class OptimApi : public BackendTest {};
TRAINRT_INSTANTIATE_BACKENDS(OptimApi);

TEST_P(OptimApi, GroupsOverrideAndAddParamGroup) {
  std::vector<Parameter> ps = make_params({{5}, {3}, {2}}, dev);
  trainrt::optim::SGD opt(
      {ParamGroup({ps[0]}), ParamGroup({ps[1]}, {{"lr", 0.5}, {"momentum", 0.9}})},
      trainrt::optim::SGDOptions(0.1).weight_decay(0.01));
  opt.add_param_group(ParamGroup({ps[2]}, {{"nesterov", 1}, {"momentum", 0.3}}));
  ASSERT_EQ(opt.param_groups().size(), 3u);
  EXPECT_EQ(opt.get(0, "lr"), 0.1);
  EXPECT_EQ(opt.get(1, "lr"), 0.5);
  EXPECT_EQ(opt.get(1, "momentum"), 0.9);
  EXPECT_EQ(opt.get(1, "weight_decay"), 0.01);  // from the defaults
  EXPECT_EQ(opt.get(2, "nesterov"), 1.0);
  opt.set(0, "lr", 0.2);
  EXPECT_EQ(opt.lr(0), 0.2);
  opt.set_lr(0.05);
  for (std::size_t g = 0; g < 3; ++g) EXPECT_EQ(opt.lr(g), 0.05);

  // Group 1 with lr 0.05, momentum 0.9, wd 0.01: p -= 0.05 (g + 0.01 p) at the first step.
  const std::vector<float> p1 = host_f32(ps[1].value());
  set_formula_grad(ps[1], 1, 0);
  const std::vector<float> g1 = host_f32(ps[1].grad());
  opt.step();
  const std::vector<float> got = host_f32(ps[1].value());
  for (std::size_t i = 0; i < got.size(); ++i) {
    const float d = g1[i] + 0.01f * p1[i];
    EXPECT_EQ(got[i], p1[i] - 0.05f * d);
  }
  EXPECT_EQ(opt.step_count(ps[0]), 0);  // no grad: skipped
  EXPECT_EQ(opt.step_count(ps[1]), 1);
}

TEST_P(OptimApi, AdagradGroupInitialAccumulator) {
  // Each group's initial_accumulator_value fills that group's "sum" (PyTorch 1.13 uses the
  // constructor's value for every group).
  std::vector<Parameter> ps = make_params({{3}, {2}}, dev);
  trainrt::optim::Adagrad opt(
      {ParamGroup({ps[0]}), ParamGroup({ps[1]}, {{"initial_accumulator_value", 2.0}})},
      trainrt::optim::AdagradOptions().initial_accumulator_value(0.5));
  set_formula_grad(ps[0], 0, 0);
  set_formula_grad(ps[1], 1, 0);
  const std::vector<float> g1 = host_f32(ps[1].grad());
  opt.step();
  EXPECT_EQ(host_f32(opt.state(ps[0], "sum"))[0],
            0.5f + host_f32(ps[0].grad())[0] * host_f32(ps[0].grad())[0]);
  EXPECT_EQ(host_f32(opt.state(ps[1], "sum"))[1], 2.0f + g1[1] * g1[1]);
}

TEST_P(OptimApi, ZeroGrad) {
  std::vector<Parameter> ps = make_params({{5}, {0}}, dev);
  trainrt::optim::Adam opt(ps);
  set_formula_grad(ps[0], 0, 1);
  set_formula_grad(ps[1], 1, 1);
  opt.zero_grad(false);
  ASSERT_TRUE(ps[0].has_grad());
  EXPECT_EQ(host_f32(ps[0].grad()), std::vector<float>(5, 0.0f));
  opt.zero_grad();
  EXPECT_FALSE(ps[0].has_grad());
  EXPECT_FALSE(ps[1].has_grad());
  opt.step();  // nothing to do
  EXPECT_EQ(opt.step_count(ps[0]), 0);
}

TEST_P(OptimApi, ZeroElementParamsAndNoParams) {
  std::vector<Parameter> ps = make_params({{0}, {0, 3}}, dev);
  trainrt::optim::AdamW opt(ps);
  for (int k = 0; k < 3; ++k) {
    set_formula_grad(ps[0], 0, k);
    set_formula_grad(ps[1], 1, k);
    opt.step();
  }
  EXPECT_EQ(opt.step_count(ps[0]), 3);
  EXPECT_EQ(opt.state(ps[1], "exp_avg").numel(), 0);
  // As torch.optim: no parameters at all is an error, a group without any is not.
  expect_error(
      [] { trainrt::optim::SGD(std::vector<Parameter>{}, trainrt::optim::SGDOptions(0.1)); },
      "SGD: got an empty parameter list");
  expect_error(
      [] { trainrt::optim::AdamW(std::vector<ParamGroup>{}, trainrt::optim::AdamWOptions()); },
      "AdamW: got an empty parameter list");
  trainrt::optim::SGD empty(std::vector<ParamGroup>{ParamGroup(std::vector<Parameter>{})},
                            trainrt::optim::SGDOptions(0.1));
  empty.step();
  EXPECT_EQ(empty.state_dict().scalars.at("param_groups.0.params"), 0.0);
}

TEST_P(OptimApi, StepReadsTheGradAssignedThroughAnyHandle) {
  std::vector<Parameter> ps = make_params({{4}}, dev);
  trainrt::optim::SGD opt(ps, trainrt::optim::SGDOptions(1.0));
  Parameter alias = ps[0];  // same parameter
  alias.set_grad(f32_tensor({1, 2, 3, 4}, {4}, dev));
  const std::vector<float> before = host_f32(ps[0].value());
  opt.step();
  const std::vector<float> after = host_f32(alias.value());
  for (std::size_t i = 0; i < 4; ++i) EXPECT_EQ(after[i], before[i] - float(i + 1));
}

// LAMB's defaults are Apex FusedLAMB's (lr 1e-3, betas (0.9, 0.999), eps 1e-6, weight_decay
// 0.01, max_grad_norm 1.0, use_nvlamb False); the other optimizers' defaults are checked
// against PyTorch by the fixture's *_default cases.
TEST(OptimDefaults, LambDefaultsAreApexFusedLamb) {
  const std::map<std::string, double> apex = {
      {"lr", 1e-3},           {"beta1", 0.9},         {"beta2", 0.999},   {"eps", 1e-6},
      {"weight_decay", 0.01}, {"max_grad_norm", 1.0}, {"use_nvlamb", 0.0}};
  std::vector<Parameter> ps = make_params({{3}}, Device::cpu());
  trainrt::optim::LAMB typed(ps, trainrt::optim::LAMBOptions());
  auto by_name = trainrt::optim::make_optimizer("LAMB", {ParamGroup(ps)}, {});
  const std::vector<const Optimizer*> both = {&typed, by_name.get()};
  for (const Optimizer* o : both) {
    const StateDict sd = o->state_dict();
    for (const auto& kv : apex) {
      const std::string key = "param_groups.0." + kv.first;
      ASSERT_EQ(sd.scalars.count(key), 1u) << key;
      EXPECT_EQ(sd.scalars.at(key), kv.second) << key;
    }
  }
}

// An inf or NaN grad makes the tensor's norms NaN, and NaN is not zero: its trust ratio is NaN
// and the whole tensor becomes NaN, as in Apex FusedLAMB (SEMANTICS.md's "both > 0, else 1"
// would spoil only the NaN elements; DESIGN-NOTES, LAMB). An inf grad makes the global norm
// inf, so the other tensors' grads divide to 0 and only the decoupled decay acts: u = wd·q,
// trust 1/wd, q -= lr·q.
TEST(OptimLamb, NonFiniteGradMakesItsTensorNaN) {
  Parameter p(Tensor::from_vector(std::vector<float>{1, 2, 3, 4}, {4}));
  Parameter q(Tensor::from_vector(std::vector<float>{1, 2}, {2}));
  trainrt::optim::LAMB opt(std::vector<Parameter>{p, q},
                           trainrt::optim::LAMBOptions().lr(0.1).weight_decay(0.01));
  p.set_grad(Tensor::from_vector(std::vector<float>{0.5f, INFINITY, -0.5f, 1.0f}, {4}));
  q.set_grad(Tensor::from_vector(std::vector<float>{0.25f, -0.5f}, {2}));
  opt.step();
  for (float x : p.value().to_vector<float>()) EXPECT_TRUE(std::isnan(x)) << x;
  const std::vector<float> qv = q.value().to_vector<float>();
  EXPECT_NEAR(qv[0], 0.9f, 1e-6f);
  EXPECT_NEAR(qv[1], 1.8f, 2e-6f);

  Parameter r(Tensor::from_vector(std::vector<float>{1, 2, 3}, {3}));
  trainrt::optim::LAMB one(std::vector<Parameter>{r},
                           trainrt::optim::LAMBOptions().lr(0.1).max_grad_norm(1e6));
  r.set_grad(Tensor::from_vector(std::vector<float>{0.5f, NAN, -0.5f}, {3}));
  one.step();
  for (float x : r.value().to_vector<float>()) EXPECT_TRUE(std::isnan(x)) << x;
}

// ---- CUDA parity (skips without a GPU) ------------------------------------------------------

TEST(OptimCudaParity, EveryAlgorithmMatchesTheCpu) {
  std::string why;
  if (!trainrt::cuda_available(&why)) GTEST_SKIP() << "no CUDA: " << why;
  const Device gpu = Device::cuda(0);
  const std::vector<Shape> shapes = {{3, 4}, {0}, {17}, {100000}, {1}, {65536}, {65537}};
  for (const AlgoConfig& c : algo_configs()) {
    SCOPED_TRACE(c.name);
    std::vector<Parameter> pc = make_params(shapes, Device::cpu());
    std::vector<Parameter> pg = make_params(shapes, gpu);
    pc[3].set_model_copy(Tensor::empty(pc[3].value().shape(), DType::bf16, Device::cpu()));
    pg[3].set_model_copy(Tensor::empty(pg[3].value().shape(), DType::bf16, gpu));
    auto oc = make_two_group(c, pc);
    auto og = make_two_group(c, pg);
    for (int k = 0; k < 6; ++k) {
      set_grads_k(pc, k);
      set_grads_k(pg, k);
      oc->step();
      og->step();
    }
    for (std::size_t p = 0; p < shapes.size(); ++p) {
      const std::vector<float> a = host_f32(pc[p].value());
      const std::int64_t bad = first_mismatch(host_f32(pg[p].value()),
                                              std::vector<double>(a.begin(), a.end()), 1e-5, 1e-6);
      EXPECT_EQ(bad, -1) << "param " << p;
      EXPECT_EQ(oc->step_count(pc[p]), og->step_count(pg[p]));
    }
    // The GPU's model copy is its own params rounded.
    EXPECT_EQ(pg[3].model_copy().to(DType::f32).to_vector<float>(),
              pg[3].value().to(DType::bf16).to(DType::f32).to_vector<float>());
  }
}

// ---- bad input ------------------------------------------------------------------------------

#define EXPECT_ERROR(stmt, needle)                                                  \
  do {                                                                              \
    try {                                                                           \
      stmt;                                                                         \
      ADD_FAILURE() << "no trainrt::Error from " #stmt;                             \
    } catch (const trainrt::Error& e) {                                             \
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what(); \
    }                                                                               \
  } while (0)

class OptimBadInput : public BackendTest {};
TRAINRT_INSTANTIATE_BACKENDS(OptimBadInput);

TEST_P(OptimBadInput, Hyperparameters) {
  using namespace trainrt::optim;
  std::vector<Parameter> ps = make_params({{3}}, dev);
  EXPECT_ERROR(SGD(ps, SGDOptions(-0.1)), "lr must be >= 0");
  EXPECT_ERROR(SGD(ps, SGDOptions(NAN)), "lr must be finite");
  // The kernels' scalars are f32: a finite double beyond its range would be inf there.
  EXPECT_ERROR(SGD(ps, SGDOptions(1e300)), "lr must be within the f32 range");
  EXPECT_ERROR(SGD(ps, SGDOptions(0.1).weight_decay(3.5e38)), "weight_decay must be within");
  EXPECT_ERROR(Adagrad(ps, AdagradOptions().initial_accumulator_value(1e39)),
               "initial_accumulator_value must be within the f32 range");
  SGD(ps, SGDOptions(std::numeric_limits<float>::max()));  // the largest f32 is accepted
  EXPECT_ERROR(SGD(ps, SGDOptions(0.1).momentum(-0.5)), "momentum must be >= 0");
  EXPECT_ERROR(SGD(ps, SGDOptions(0.1).weight_decay(-1e-4)), "weight_decay must be >= 0");
  EXPECT_ERROR(SGD(ps, SGDOptions(0.1).nesterov(true)), "nesterov momentum requires");
  EXPECT_ERROR(SGD(ps, SGDOptions(0.1).nesterov(true).momentum(0.9).dampening(0.1)),
               "zero dampening");
  EXPECT_ERROR(Adam(ps, AdamOptions().lr(-1e-3)), "lr must be >= 0");
  EXPECT_ERROR(Adam(ps, AdamOptions().eps(-1e-8)), "eps must be >= 0");
  EXPECT_ERROR(Adam(ps, AdamOptions().weight_decay(-0.1)), "weight_decay must be >= 0");
  EXPECT_ERROR(Adam(ps, AdamOptions().beta1(1.0)), "beta1 must be in [0, 1)");
  EXPECT_ERROR(Adam(ps, AdamOptions().beta2(-0.1)), "beta2 must be in [0, 1)");
  EXPECT_ERROR(AdamW(ps, AdamWOptions().betas(0.9, 1.5)), "beta2 must be in [0, 1)");
  EXPECT_ERROR(RMSprop(ps, RMSpropOptions().alpha(-0.5)), "alpha must be >= 0");
  EXPECT_ERROR(RMSprop(ps, RMSpropOptions().eps(-1)), "eps must be >= 0");
  EXPECT_ERROR(Adagrad(ps, AdagradOptions().lr_decay(-1)), "lr_decay must be >= 0");
  EXPECT_ERROR(Adagrad(ps, AdagradOptions().initial_accumulator_value(-1)),
               "initial_accumulator_value must be >= 0");
  EXPECT_ERROR(RAdam(ps, RAdamOptions().beta1(-0.1)), "beta1 must be in [0, 1)");
  EXPECT_ERROR(LAMB(ps, LAMBOptions().max_grad_norm(0)), "max_grad_norm must be > 0");
  EXPECT_ERROR(LAMB(ps, LAMBOptions().weight_decay(-1)), "weight_decay must be >= 0");
  // Per-group overrides are checked too, and by name.
  EXPECT_ERROR(Adam({ParamGroup(ps, {{"lr", -1.0}})}, AdamOptions()), "param group 0");
  EXPECT_ERROR(Adam({ParamGroup(ps, {{"momentum", 0.9}})}, AdamOptions()),
               "unknown hyperparameter 'momentum'");
  EXPECT_ERROR(Adam({ParamGroup(ps, {{"amsgrad", 2.0}})}, AdamOptions()), "is a flag");
  EXPECT_ERROR(make_optimizer("Adamax", {ParamGroup(ps)}), "unknown optimizer");
  EXPECT_ERROR(make_optimizer("SGD", {ParamGroup(ps)}), "SGD needs an lr");
  EXPECT_ERROR(make_optimizer("Adam", {ParamGroup(ps)}, {{"nesterov", 1}}), "no hyperparameter");

  // set() validates and leaves the value unchanged on error.
  Adam opt(ps, AdamOptions());
  EXPECT_ERROR(opt.set(0, "beta1", 1.0), "beta1 must be in [0, 1)");
  EXPECT_EQ(opt.get(0, "beta1"), 0.9);
  EXPECT_ERROR(opt.set_lr(-1), "lr must be >= 0");
  EXPECT_EQ(opt.lr(), 1e-3);
  EXPECT_ERROR(opt.set_lr(1e39), "lr must be within the f32 range");
  EXPECT_ERROR(opt.set(0, "eps", -1e300), "eps must be within the f32 range");
  EXPECT_EQ(opt.lr(), 1e-3);
  EXPECT_EQ(opt.get(0, "eps"), 1e-8);
  EXPECT_ERROR(opt.get(3, "lr"), "param group 3 does not exist");
  EXPECT_ERROR(opt.get(0, "momentum"), "unknown hyperparameter");
}

TEST_P(OptimBadInput, Parameters) {
  using namespace trainrt::optim;
  std::vector<Parameter> ps = make_params({{3}, {2}}, dev);
  EXPECT_ERROR(SGD({ParamGroup({ps[0], ps[1]}), ParamGroup({ps[1]})}, SGDOptions(0.1)),
               "already appears in param group 0");
  EXPECT_ERROR(SGD({ParamGroup({ps[0], ps[0]})}, SGDOptions(0.1)), "one group only");
  SGD opt(ps, SGDOptions(0.1));
  EXPECT_ERROR(opt.add_param_group(ParamGroup({ps[1]})), "already appears");
  EXPECT_EQ(opt.param_groups().size(), 1u);  // unchanged
  EXPECT_ERROR(SGD({ParamGroup({Parameter()})}, SGDOptions(0.1)), "undefined");
  Parameter half(Tensor::zeros({3}, DType::f16, dev));
  EXPECT_ERROR(SGD({ParamGroup({half})}, SGDOptions(0.1)), "must be f32");
  EXPECT_ERROR((void)Parameter(Tensor()), "undefined");

  // Grads must match their parameter.
  EXPECT_ERROR(ps[0].set_grad(Tensor::zeros({4}, DType::f32, dev)), "shape [4]");
  EXPECT_ERROR(ps[0].set_grad(Tensor::zeros({3, 1}, DType::f32, dev)), "shape [3, 1]");
  EXPECT_ERROR(ps[0].set_grad(Tensor::zeros({3}, DType::f16, dev)), "dtype f16");
  EXPECT_ERROR(ps[0].set_model_copy(Tensor::zeros({3}, DType::f32, dev)), "f16 or bf16");
  EXPECT_ERROR(ps[0].set_model_copy(Tensor::zeros({2}, DType::bf16, dev)), "shape and device");
  EXPECT_ERROR(opt.step_count(Parameter(Tensor::zeros({1}, DType::f32, dev))), "not one of");
}

TEST(OptimDevices, ParamsOnDifferentDevices) {
  std::string why;
  if (!trainrt::cuda_available(&why)) GTEST_SKIP() << "no CUDA: " << why;
  Parameter a(Tensor::zeros({3}, DType::f32, Device::cpu()));
  Parameter b(Tensor::zeros({3}, DType::f32, Device::cuda(0)));
  EXPECT_ERROR(trainrt::optim::SGD({a, b}, trainrt::optim::SGDOptions(0.1)), "one device");
  EXPECT_ERROR(a.set_grad(Tensor::zeros({3}, DType::f32, Device::cuda(0))), "grad is on cuda:0");
}

TEST_P(OptimBadInput, LoadStateDictMismatchChangesNothing) {
  using namespace trainrt::optim;
  std::vector<Parameter> ps = make_params({{3}, {2}, {4}}, dev);
  Adam opt({ParamGroup({ps[0], ps[1]}), ParamGroup({ps[2]}, {{"lr", 0.5}})}, AdamOptions());
  for (int k = 0; k < 2; ++k) {
    set_grads_k(ps, k);
    opt.step();
  }
  const StateDict good = opt.state_dict();
  auto check_unchanged = [&]() {
    const StateDict now = opt.state_dict();
    EXPECT_EQ(now.scalars, good.scalars);
    for (const auto& kv : good.tensors)
      EXPECT_TRUE(same_bits(host_f32(kv.second), host_f32(now.tensors.at(kv.first)))) << kv.first;
  };
  struct Bad {
    const char* what;
    std::function<void(StateDict&)> edit;
    const char* needle;
  };
  const std::vector<Bad> bad = {
      {"other optimizer", [](StateDict& s) { s.strings["optimizer"] = "SGD"; }, "from a SGD"},
      {"no name", [](StateDict& s) { s.strings.erase("optimizer"); }, "no 'optimizer'"},
      {"group count", [](StateDict& s) { s.scalars["param_groups"] = 3; }, "3 param groups"},
      {"group size", [](StateDict& s) { s.scalars["param_groups.0.params"] = 3; }, "3 parameters"},
      {"missing hyper", [](StateDict& s) { s.scalars.erase("param_groups.1.eps"); },
       "no 'param_groups.1.eps'"},
      {"bad hyper", [](StateDict& s) { s.scalars["param_groups.1.lr"] = -2; }, "lr must be >= 0"},
      {"hyper beyond f32", [](StateDict& s) { s.scalars["param_groups.0.eps"] = 1e300; },
       "eps must be within the f32 range"},
      {"unknown scalar", [](StateDict& s) { s.scalars["param_groups.0.momentum"] = 0.9; },
       "unexpected entry"},
      {"bad step", [](StateDict& s) { s.scalars["state.1.step"] = 1.5; }, "step count"},
      {"param index", [](StateDict& s) { s.scalars["state.9.step"] = 1; }, "parameter 9"},
      {"state shape",
       [&](StateDict& s) { s.tensors["state.0.exp_avg"] = Tensor::zeros({4}, DType::f32, dev); },
       "of the parameter's shape"},
      {"state dtype",
       [&](StateDict& s) { s.tensors["state.0.exp_avg"] = Tensor::zeros({3}, DType::f64, dev); },
       "of the parameter's shape"},
      {"unknown buffer",
       [&](StateDict& s) {
         s.tensors["state.0.momentum_buffer"] = Tensor::zeros({3}, DType::f32, dev);
       },
       "is not a state buffer of Adam"},
      {"orphan buffer", [&](StateDict& s) { s.scalars.erase("state.2.step"); },
       "has no step count"},
      {"extra string", [](StateDict& s) { s.strings["x"] = "y"; }, "unexpected entry 'x'"},
      // torch loads these and fails at the next step (KeyError); trainrt's step would restart
      // the buffer from zero at the old step count.
      {"missing buffer", [](StateDict& s) { s.tensors.erase("state.1.exp_avg_sq"); },
       "no 'state.1.exp_avg_sq' (Adam makes it at every step)"},
      {"huge index", [](StateDict& s) { s.scalars["state.99999999999999999999999.step"] = 1; },
       "refers to parameter"},
      {"huge tensor index",
       [&](StateDict& s) {
         s.tensors["state.18446744073709551616.exp_avg"] = Tensor::zeros({3}, DType::f32, dev);
       },
       "refers to parameter"},
      {"leading zero", [](StateDict& s) { s.scalars["state.01.step"] = 1; },
       "unexpected entry 'state.01.step'"},
      {"leading zero tensor",
       [&](StateDict& s) { s.tensors["state.00.exp_avg"] = Tensor::zeros({3}, DType::f32, dev); },
       "unexpected tensor 'state.00.exp_avg'"},
  };
  // Each bad dict is otherwise a valid dict of another state (more steps, other lrs), so an
  // entry applied before the failing check would show in check_unchanged.
  std::vector<Parameter> rs = make_params({{3}, {2}, {4}}, dev);
  Adam ahead({ParamGroup({rs[0], rs[1]}), ParamGroup({rs[2]}, {{"lr", 0.25}})},
             AdamOptions().lr(0.003));
  for (int k = 0; k < 4; ++k) {  // (k = 3 leaves param 2 without a grad: 3 steps for it)
    set_grads_k(rs, k + 1);
    ahead.step();
  }
  const StateDict other_state = ahead.state_dict();
  for (const auto& kv : good.scalars) {
    if (kv.first.find(".step") != std::string::npos || kv.first.find(".lr") != std::string::npos)
      ASSERT_NE(other_state.scalars.at(kv.first), kv.second) << kv.first;
  }
  for (const auto& kv : good.tensors) {
    ASSERT_FALSE(same_bits(host_f32(kv.second), host_f32(other_state.tensors.at(kv.first))))
        << kv.first;
  }
  {
    // The dict itself loads (so only the edit makes it bad); then back to the good state.
    Adam probe({ParamGroup({rs[0], rs[1]}), ParamGroup({rs[2]})}, AdamOptions());
    probe.load_state_dict(other_state);
  }
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.what);
    StateDict s = other_state;
    b.edit(s);
    EXPECT_ERROR(opt.load_state_dict(s), b.needle);
    check_unchanged();
  }
  // A state dict from an optimizer over other shapes.
  std::vector<Parameter> qs = make_params({{3}, {5}, {4}}, dev);
  Adam other({ParamGroup({qs[0], qs[1]}), ParamGroup({qs[2]})}, AdamOptions());
  set_grads_k(qs, 0);
  other.step();
  EXPECT_ERROR(opt.load_state_dict(other.state_dict()), "of the parameter's shape");
  check_unchanged();
}

TEST_P(OptimBadInput, LoadStateDictAcceptsOptionalBuffersNotMadeYet) {
  // A buffer that only an option makes (amsgrad's max_exp_avg_sq, RMSprop's momentum and
  // centered buffers) is missing after the option is switched on until the next step: such a
  // dict, from state_dict() itself, loads, and the run goes on as the original.
  using namespace trainrt::optim;
  struct Case {
    const char* name;
    HyperParams h;
    std::vector<std::pair<const char*, double>> switch_on;
  };
  const std::vector<Case> cases = {
      {"Adam", {{"lr", 0.01}}, {{"amsgrad", 1.0}}},
      {"AdamW", {{"lr", 0.01}}, {{"amsgrad", 1.0}}},
      {"RMSprop", {{"lr", 0.01}}, {{"momentum", 0.9}, {"centered", 1.0}}},
      {"SGD", {{"lr", 0.01}}, {{"momentum", 0.9}}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    std::vector<Parameter> pa = make_params({{3}, {0}, {5}}, dev);
    std::vector<Parameter> pb = make_params({{3}, {0}, {5}}, dev);
    auto a = make_optimizer(c.name, {ParamGroup(pa)}, c.h);
    auto b = make_optimizer(c.name, {ParamGroup(pb)}, c.h);
    for (int k = 0; k < 2; ++k) {
      set_grads_k(pa, k);
      a->step();
    }
    for (const auto& kv : c.switch_on) a->set(0, kv.first, kv.second);
    b->load_state_dict(a->state_dict());
    for (std::size_t i = 0; i < pa.size(); ++i) pb[i].value().copy_(pa[i].value());
    for (int k = 2; k < 5; ++k) {
      set_grads_k(pa, k);
      set_grads_k(pb, k);
      a->step();
      b->step();
    }
    for (std::size_t i = 0; i < pa.size(); ++i)
      EXPECT_TRUE(same_bits(host_f32(pa[i].value()), host_f32(pb[i].value()))) << i;
  }
}

}  // namespace
