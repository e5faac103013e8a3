// End-to-end training against PyTorch 1.13: the first 10 steps of a small MLP
// (Linear(20, 32) - ReLU - Linear(32, 16) - Tanh - Linear(16, 4), cross_entropy) from the same
// initial parameters on the same batches (tests/fixtures/torch_train.txt, made by
// gen_train_fixture.py) must give PyTorch's loss at every step, its grad norm, its lr, and its
// parameters after the last step. Cases: SGD with momentum and weight decay; AdamW; AdamW with
// clip_grad_norm_ and CosineAnnealingLR. Each case runs twice:
//   OptimizerLoop  the step written out with the public API (zero_grad, forward, fused
//                  cross_entropy, backward, clip_grad_norm_(params), step, scheduler step);
//   Trainer        Trainer::fit over a DataLoader holding exactly the fixture's batches (fused
//                  clip_grad_norm_(optimizer) and the scheduler the config builds).
// DetectsWrongLr checks that the comparison is tight enough to notice a 1 % lr change.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "fixture_text.hpp"
#include "test_util.hpp"
#include "trainrt/trainrt.hpp"

using namespace trainrt;

namespace {

// ---- fixture ------------------------------------------------------------------------------

struct StepRecord {
  double loss = 0, norm = 0, lr = 0;
};

struct GoldenCase {
  std::string name;
  std::string optimizer;  // sgd | adamw
  std::map<std::string, double> hp;
  double clip = 0;
  std::string scheduler = "none";  // none | cosine
  std::int64_t t_max = 0;
  double eta_min = 0;
  std::vector<StepRecord> steps;
  std::vector<std::pair<std::string, std::vector<float>>> final_params;
};

struct InitParam {
  std::string name;
  Shape shape;
  std::vector<float> values;
};

struct Golden {
  std::int64_t in = 0, h1 = 0, h2 = 0, out = 0;
  std::int64_t batches = 0, batch = 0;
  std::vector<std::vector<float>> x;
  std::vector<std::vector<std::int64_t>> y;
  std::vector<InitParam> init;
  std::vector<GoldenCase> cases;
};

Golden load_golden() {
  Golden g;
  GoldenCase* c = nullptr;
  trainrt_test::read_fixture("torch_train.txt", [&](const std::string& key, std::istringstream& s) {
    if (key != "case" && key != "layers" && key != "batches" && key != "x" && key != "y" &&
        key != "init" && c == nullptr)
      throw std::runtime_error("torch_train.txt: '" + key + "' outside a case");
    if (key == "layers") {
      s >> g.in >> g.h1 >> g.h2 >> g.out;
    } else if (key == "batches") {
      s >> g.batches >> g.batch;
      g.x.resize(static_cast<std::size_t>(g.batches));
      g.y.resize(static_cast<std::size_t>(g.batches));
    } else if (key == "x" || key == "y") {
      std::size_t b = 0;
      s >> b;
      if (key == "x")
        g.x.at(b) = trainrt_test::fixture_numbers<float>(s);
      else
        g.y.at(b) = trainrt_test::fixture_numbers<std::int64_t>(s);
    } else if (key == "init") {
      InitParam p;
      int ndim = 0;
      s >> p.name >> ndim;
      for (int d = 0; d < ndim; ++d) {
        std::int64_t n = 0;
        s >> n;
        p.shape.push_back(n);
      }
      p.values = trainrt_test::fixture_numbers<float>(s);
      g.init.push_back(std::move(p));
    } else if (key == "case") {
      g.cases.emplace_back();
      c = &g.cases.back();
      s >> c->name;
    } else if (key == "optimizer") {
      s >> c->optimizer;
    } else if (key == "hp") {
      std::string k;
      double v = 0;
      s >> k >> v;
      c->hp[k] = v;
    } else if (key == "clip") {
      s >> c->clip;
    } else if (key == "scheduler") {
      s >> c->scheduler;
      if (c->scheduler == "cosine") s >> c->t_max >> c->eta_min;
    } else if (key == "step") {
      std::size_t k = 0;
      StepRecord r;
      s >> k >> r.loss >> r.norm >> r.lr;
      if (k != c->steps.size()) throw std::runtime_error("torch_train.txt: steps out of order");
      c->steps.push_back(r);
    } else if (key == "final") {
      std::string name;
      s >> name;
      c->final_params.emplace_back(name, trainrt_test::fixture_numbers<float>(s));
    } else if (key == "end") {
      c = nullptr;
    } else {
      return false;
    }
    return true;
  });
  return g;
}

const Golden& golden() {
  static const Golden g = load_golden();
  return g;
}

const GoldenCase& golden_case(const std::string& name) {
  for (const auto& c : golden().cases)
    if (c.name == name) return c;
  throw std::runtime_error("torch_train.txt: no case " + name);
}

// ---- tolerances ---------------------------------------------------------------------------
// Losses and norms: float32 forward/backward with other GEMM and reduction orders than
// PyTorch's; the differences compound over 10 steps but stay near 1e-6.
constexpr double kLossRtol = 1e-5;
constexpr double kNormRtol = 1e-5;
constexpr double kLrRtol = 1e-12;
// Parameters after 10 steps: |ours - torch| <= kParamAtol + kParamRtol * |torch|.
constexpr double kParamAtol = 1e-5;
constexpr double kParamRtol = 1e-5;

double rel_err(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-30); }

// ---- model --------------------------------------------------------------------------------

std::shared_ptr<nn::Sequential> make_model(const Golden& g) {
  return std::make_shared<nn::Sequential>(std::initializer_list<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(g.in, g.h1), std::make_shared<nn::ReLU>(),
      std::make_shared<nn::Linear>(g.h1, g.h2), std::make_shared<nn::Tanh>(),
      std::make_shared<nn::Linear>(g.h2, g.out)});
}

/// Writes the fixture's initial values into the model's parameters (same names, same
/// [out, in] weight layout as PyTorch).
void load_init(nn::Module& model, const Golden& g) {
  const auto named = model.named_parameters();
  ASSERT_EQ(named.size(), g.init.size());
  for (std::size_t i = 0; i < named.size(); ++i) {
    const InitParam& p = g.init[i];
    ASSERT_EQ(named[i].first, p.name);
    Tensor v = named[i].second.value();
    ASSERT_EQ(v.shape(), p.shape) << p.name;
    v.copy_(Tensor::from_vector(p.values, p.shape));
  }
}

/// Largest |ours - torch| / (atol + rtol |torch|) over all parameters (<= 1 passes).
double final_param_excess(nn::Module& model, const GoldenCase& c, std::string* where) {
  const auto named = model.named_parameters();
  EXPECT_EQ(named.size(), c.final_params.size());
  double worst = 0;
  for (std::size_t i = 0; i < std::min(named.size(), c.final_params.size()); ++i) {
    EXPECT_EQ(named[i].first, c.final_params[i].first);
    const std::vector<float> ours = named[i].second.value().to(Device::cpu()).to_vector<float>();
    const std::vector<float>& ref = c.final_params[i].second;
    EXPECT_EQ(ours.size(), ref.size()) << named[i].first;
    for (std::size_t j = 0; j < std::min(ours.size(), ref.size()); ++j) {
      const double e = std::abs(static_cast<double>(ours[j]) - ref[j]) /
                       (kParamAtol + kParamRtol * std::abs(static_cast<double>(ref[j])));
      if (e > worst) {
        worst = e;
        if (where)
          *where = named[i].first + "[" + std::to_string(j) + "]: " + std::to_string(ours[j]) +
                   " vs torch " + std::to_string(ref[j]);
      }
    }
  }
  return worst;
}

Tensor batch_x(const Golden& g, std::size_t b, Device dev) {
  return Tensor::from_vector(g.x[b], {g.batch, g.in}, dev);
}
Tensor batch_y(const Golden& g, std::size_t b, Device dev) {
  return Tensor::from_vector(g.y[b], {g.batch}, dev);
}

std::unique_ptr<optim::Optimizer> make_optimizer(const GoldenCase& c, std::vector<Parameter> params,
                                                 double lr_scale) {
  const double lr = c.hp.at("lr") * lr_scale;
  if (c.optimizer == "sgd")
    return std::make_unique<optim::SGD>(
        params,
        optim::SGDOptions(lr).momentum(c.hp.at("momentum")).weight_decay(c.hp.at("weight_decay")));
  if (c.optimizer == "adamw")
    return std::make_unique<optim::AdamW>(params, optim::AdamWOptions(lr)
                                                      .betas(c.hp.at("beta1"), c.hp.at("beta2"))
                                                      .eps(c.hp.at("eps"))
                                                      .weight_decay(c.hp.at("weight_decay")));
  throw std::runtime_error("unknown optimizer " + c.optimizer);
}

struct LoopResult {
  std::vector<StepRecord> steps;
  std::shared_ptr<nn::Sequential> model;
};

/// The training step written out with the public API, as PyTorch's loop in the generator.
LoopResult run_loop(const GoldenCase& c, Device dev, double lr_scale = 1.0) {
  const Golden& g = golden();
  LoopResult r;
  r.model = make_model(g);
  r.model->to(dev);
  load_init(*r.model, g);
  const std::vector<Parameter> params = r.model->parameters();
  auto opt = make_optimizer(c, params, lr_scale);
  std::unique_ptr<optim::LRScheduler> sched;
  if (c.scheduler == "cosine")
    sched = std::make_unique<optim::CosineAnnealingLR>(*opt, c.t_max, c.eta_min * lr_scale);
  for (std::size_t k = 0; k < c.steps.size(); ++k) {
    StepRecord s;
    s.lr = opt->lr();
    opt->zero_grad(true);
    const Tensor out = r.model->forward(batch_x(g, k % g.x.size(), dev));
    const LossResult loss = cross_entropy(out, batch_y(g, k % g.y.size(), dev));
    s.loss = loss.loss.item();
    r.model->backward(loss.grad);
    s.norm = c.clip > 0 ? clip_grad_norm_(params, c.clip).item() : grad_norm(params).item();
    opt->step();
    if (sched) sched->step();
    r.steps.push_back(s);
  }
  return r;
}

/// Records every BatchInfo the Trainer reports.
class Recorder : public Callback {
 public:
  void on_batch_end(Trainer&, const BatchInfo& b) override { batches.push_back(b); }
  std::vector<BatchInfo> batches;
};

class TrainGolden : public trainrt_test::BackendTest {};

// ---- tests --------------------------------------------------------------------------------

TEST(TrainGoldenFixture, Loads) {
  const Golden& g = golden();
  EXPECT_EQ(g.in, 20);
  EXPECT_EQ(g.out, 4);
  ASSERT_EQ(g.x.size(), 10u);
  for (std::size_t b = 0; b < g.x.size(); ++b) {
    EXPECT_EQ(static_cast<std::int64_t>(g.x[b].size()), g.batch * g.in);
    EXPECT_EQ(static_cast<std::int64_t>(g.y[b].size()), g.batch);
  }
  ASSERT_EQ(g.init.size(), 6u);
  ASSERT_EQ(g.cases.size(), 3u);
  for (const auto& c : g.cases) {
    SCOPED_TRACE(c.name);
    EXPECT_EQ(c.steps.size(), 10u);
    EXPECT_EQ(c.final_params.size(), g.init.size());
    // The trajectories must actually move: the parameters change, and the losses differ
    // between optimizers after the first step.
    EXPECT_NE(c.final_params[0].second, g.init[0].values);
  }
  EXPECT_NE(golden_case("sgd_momentum").steps[5].loss, golden_case("adamw").steps[5].loss);
  // The clipping case clips: the norm is above max_norm at every step.
  const GoldenCase& cc = golden_case("adamw_clip_cosine");
  for (const auto& s : cc.steps) EXPECT_GT(s.norm, cc.clip);
}

TEST_P(TrainGolden, OptimizerLoop) {
  for (const auto& c : golden().cases) {
    SCOPED_TRACE(c.name);
    const LoopResult r = run_loop(c, dev);
    ASSERT_EQ(r.steps.size(), c.steps.size());
    double worst_loss = 0, worst_norm = 0;
    for (std::size_t k = 0; k < c.steps.size(); ++k) {
      SCOPED_TRACE("step " + std::to_string(k));
      worst_loss = std::max(worst_loss, rel_err(r.steps[k].loss, c.steps[k].loss));
      worst_norm = std::max(worst_norm, rel_err(r.steps[k].norm, c.steps[k].norm));
      EXPECT_LE(rel_err(r.steps[k].loss, c.steps[k].loss), kLossRtol)
          << r.steps[k].loss << " vs torch " << c.steps[k].loss;
      EXPECT_LE(rel_err(r.steps[k].norm, c.steps[k].norm), kNormRtol)
          << r.steps[k].norm << " vs torch " << c.steps[k].norm;
      EXPECT_LE(rel_err(r.steps[k].lr, c.steps[k].lr), kLrRtol)
          << r.steps[k].lr << " vs torch " << c.steps[k].lr;
    }
    std::string where;
    const double excess = final_param_excess(*r.model, c, &where);
    EXPECT_LE(excess, 1.0) << where;
    std::printf(
        "%s: worst relative error of the losses %.2e, of the grad norms %.2e; final "
        "parameters at %.2f of the tolerance (worst %s)\n",
        c.name.c_str(), worst_loss, worst_norm, excess, where.c_str());
  }
}

TEST_P(TrainGolden, Trainer) {
  const Golden& g = golden();
  for (const auto& c : g.cases) {
    SCOPED_TRACE(c.name);
    TrainerConfig cfg;
    cfg.optimizer = c.optimizer;
    cfg.lr = c.hp.at("lr");
    cfg.weight_decay = c.hp.at("weight_decay");
    if (c.optimizer == "sgd") cfg.momentum = c.hp.at("momentum");
    if (c.optimizer == "adamw") {
      cfg.beta1 = c.hp.at("beta1");
      cfg.beta2 = c.hp.at("beta2");
      // The Trainer has no eps setting: the fixture must use AdamW's default.
      ASSERT_EQ(c.hp.at("eps"), optim::AdamWOptions().eps());
    }
    cfg.grad_clip = c.clip;
    cfg.scheduler = c.scheduler;
    cfg.eta_min = c.eta_min;
    cfg.loss = "cross_entropy";
    cfg.epochs = 1;  // one epoch = the fixture's batches: cosine's T_max = steps_per_epoch
    cfg.batch_size = g.batch;
    cfg.device = dev.is_cuda() ? "cuda:0" : "cpu";
    if (c.scheduler == "cosine") ASSERT_EQ(c.t_max, g.batches);
    ASSERT_EQ(static_cast<std::int64_t>(c.steps.size()), g.batches);

    // All batches in order, one after the other: the DataLoader (no shuffle) hands them out
    // exactly as the fixture has them.
    std::vector<float> xs;
    std::vector<std::int64_t> ys;
    for (std::size_t b = 0; b < g.x.size(); ++b) {
      xs.insert(xs.end(), g.x[b].begin(), g.x[b].end());
      ys.insert(ys.end(), g.y[b].begin(), g.y[b].end());
    }
    const std::int64_t n = g.batches * g.batch;
    auto ds = std::make_shared<TensorDataset>(Tensor::from_vector(xs, {n, g.in}),
                                              Tensor::from_vector(ys, {n}));
    DataLoaderOptions lo;
    lo.batch_size = g.batch;
    lo.shuffle = false;
    DataLoader loader(ds, lo);

    auto model = make_model(g);
    Trainer trainer(model, cfg);
    load_init(trainer.model(), g);
    auto rec = std::make_shared<Recorder>();
    trainer.add_callback(rec);
    const auto& hist = trainer.fit(loader);

    ASSERT_EQ(hist.size(), 1u);
    ASSERT_EQ(rec->batches.size(), c.steps.size());
    EXPECT_EQ(trainer.global_step(), static_cast<std::int64_t>(c.steps.size()));
    // BatchInfo::loss is the running mean over the epoch; the batches are of equal size, so
    // loss_k = (k + 1) mean_k - k mean_(k-1).
    double prev_mean = 0, norm_sum = 0, clipped_sum = 0;
    for (std::size_t k = 0; k < c.steps.size(); ++k) {
      SCOPED_TRACE("step " + std::to_string(k));
      const BatchInfo& b = rec->batches[k];
      EXPECT_EQ(b.global_step, static_cast<std::int64_t>(k + 1));
      const double loss_k =
          static_cast<double>(k + 1) * b.loss - static_cast<double>(k) * prev_mean;
      prev_mean = b.loss;
      EXPECT_LE(rel_err(loss_k, c.steps[k].loss), kLossRtol)
          << loss_k << " vs torch " << c.steps[k].loss;
      // BatchInfo::lr is read after the step and the scheduler step: the lr of step k + 1.
      if (k + 1 < c.steps.size()) EXPECT_LE(rel_err(b.lr, c.steps[k + 1].lr), kLrRtol);
      norm_sum += c.steps[k].norm;
      clipped_sum += c.clip > 0 ? std::min(c.steps[k].norm, c.clip) : c.steps[k].norm;
    }
    const double steps = static_cast<double>(c.steps.size());
    EXPECT_LE(rel_err(hist[0].grad_norm, norm_sum / steps), kNormRtol);
    EXPECT_LE(rel_err(hist[0].grad_norm_clipped, clipped_sum / steps), kNormRtol);
    std::string where;
    EXPECT_LE(final_param_excess(trainer.model(), c, &where), 1.0) << where;
  }
}

// The comparison must notice a small error: with the lr 1 % off, some loss or parameter
// leaves the tolerance in every case.
TEST_P(TrainGolden, DetectsWrongLr) {
  for (const auto& c : golden().cases) {
    SCOPED_TRACE(c.name);
    const LoopResult r = run_loop(c, dev, 1.01);
    double worst_loss = 0;
    for (std::size_t k = 0; k < c.steps.size(); ++k)
      worst_loss = std::max(worst_loss, rel_err(r.steps[k].loss, c.steps[k].loss));
    EXPECT_GT(worst_loss, kLossRtol);
    EXPECT_GT(final_param_excess(*r.model, c, nullptr), 1.0);
  }
}

TRAINRT_INSTANTIATE_BACKENDS(TrainGolden);

}  // namespace
