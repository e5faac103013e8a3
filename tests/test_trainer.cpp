// Trainer: learning, EarlyStopping, ModelCheckpoint, the non-finite loss policy, bitwise resume
// on the CPU, JSON config parsing. A small synthetic problem keeps it fast.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "trainrt/trainrt.hpp"

namespace fs = std::filesystem;
using namespace trainrt;

namespace {

constexpr std::int64_t kFeatures = 8, kClasses = 3;

// Three Gaussian blobs; nan_row >= 0 puts a NaN into that row's features.
std::shared_ptr<TensorDataset> blobs(std::int64_t n, std::uint32_t seed,
                                     std::int64_t nan_row = -1) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> noise(0.0f, 0.7f);
  std::vector<float> x(static_cast<std::size_t>(n * kFeatures));
  std::vector<std::int64_t> y(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t c = i % kClasses;
    y[static_cast<std::size_t>(i)] = c;
    for (std::int64_t f = 0; f < kFeatures; ++f)
      x[static_cast<std::size_t>(i * kFeatures + f)] =
          (f % kClasses == c ? 1.5f : -0.5f) + noise(rng);
  }
  if (nan_row >= 0) x[static_cast<std::size_t>(nan_row * kFeatures)] = std::nanf("");
  return std::make_shared<TensorDataset>(Tensor::from_vector(x, {n, kFeatures}),
                                         Tensor::from_vector(y, {n}));
}

std::shared_ptr<nn::Sequential> mlp(std::uint64_t seed, double dropout = 0.0) {
  nn::manual_seed(seed);
  if (dropout > 0.0) {
    return std::make_shared<nn::Sequential>(std::initializer_list<std::shared_ptr<nn::Module>>{
        std::make_shared<nn::Linear>(kFeatures, 16), std::make_shared<nn::ReLU>(),
        std::make_shared<nn::Dropout>(dropout), std::make_shared<nn::Linear>(16, kClasses)});
  }
  return std::make_shared<nn::Sequential>(std::initializer_list<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(kFeatures, 16), std::make_shared<nn::ReLU>(),
      std::make_shared<nn::Linear>(16, kClasses)});
}

DataLoader loader(std::shared_ptr<TensorDataset> ds, std::int64_t batch, bool shuffle,
                  std::uint64_t seed = 7) {
  DataLoaderOptions o;
  o.batch_size = batch;
  o.shuffle = shuffle;
  o.seed = seed;
  return DataLoader(ds, o);
}

TrainerConfig base_config() {
  TrainerConfig c;
  c.optimizer = "adamw";
  c.lr = 1e-2;
  c.epochs = 5;
  c.batch_size = 32;
  c.device = "cpu";
  return c;
}

std::string tmp_dir(const std::string& name) {
  const fs::path p = fs::path(TRAINRT_TEST_BINARY_DIR) / "trainer_tmp" / name;
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

std::vector<std::vector<float>> weights(nn::Module& m) {
  std::vector<std::vector<float>> out;
  for (const auto& p : m.parameters()) out.push_back(p.value().to_vector<float>());
  return out;
}

bool bitwise_equal(const std::vector<std::vector<float>>& a,
                   const std::vector<std::vector<float>>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i].size() != b[i].size()) return false;
    if (std::memcmp(a[i].data(), b[i].data(), a[i].size() * sizeof(float)) != 0) return false;
  }
  return true;
}

}  // namespace

TEST(Trainer, LossGoesDownAndMetricsAreWritten) {
  auto cfg = base_config();
  cfg.output_dir = tmp_dir("learn");
  cfg.scheduler = "cosine";
  cfg.grad_clip = 1.0;
  auto model = mlp(1);
  Trainer t(model, cfg);
  auto tl = loader(blobs(384, 1), 32, true);
  auto vl = loader(blobs(96, 2), 32, false);
  const auto& h = t.fit(tl, &vl);
  ASSERT_EQ(h.size(), 5u);
  EXPECT_LT(h.back().train_loss, 0.5 * h.front().train_loss);
  EXPECT_GT(h.back().val_acc, 0.9);
  EXPECT_EQ(t.global_step(), 5 * 12);
  for (const auto& m : h) {
    EXPECT_GT(m.grad_norm, 0.0);
    EXPECT_LE(m.grad_norm_clipped, 1.0 + 1e-9);
    EXPECT_LE(m.grad_norm_clipped, m.grad_norm + 1e-12);
    EXPECT_GT(m.samples_per_sec, 0.0);
    EXPECT_EQ(m.skipped_steps, 0);
  }
  EXPECT_LT(h.back().lr, 1e-3);  // cosine to 0
  std::ifstream csv(t.metrics_csv_path());
  std::string line;
  int lines = 0;
  while (std::getline(csv, line)) ++lines;
  EXPECT_EQ(lines, 6);
  std::ifstream jl(t.metrics_jsonl_path());
  lines = 0;
  while (std::getline(jl, line)) {
    ++lines;
    EXPECT_NE(line.find("\"val_acc\""), std::string::npos);
  }
  EXPECT_EQ(lines, 5);
  const EvalResult e = t.evaluate(vl);
  EXPECT_EQ(e.samples, 96);
  EXPECT_NEAR(e.acc, h.back().val_acc, 1e-12);
}

TEST(Trainer, GradAccumulationAndOtherOptimizers) {
  for (const char* opt : {"sgd", "adam", "rmsprop", "adagrad", "radam", "lamb"}) {
    auto cfg = base_config();
    cfg.optimizer = opt;
    cfg.lr = std::string(opt) == "sgd" ? 0.1 : 1e-2;
    cfg.momentum = std::string(opt) == "sgd" ? 0.9 : 0.0;
    cfg.grad_accumulation = 2;
    cfg.scheduler = "onecycle";
    cfg.epochs = 3;
    Trainer t(mlp(3), cfg);
    auto tl = loader(blobs(192, 3), 32, true);  // 6 batches -> 3 steps per epoch
    const auto& h = t.fit(tl);
    EXPECT_EQ(t.global_step(), 9) << opt;
    EXPECT_LT(h.back().train_loss, h.front().train_loss) << opt;
  }
}

TEST(Trainer, EarlyStoppingStopsAndRestoresBest) {
  auto cfg = base_config();
  cfg.epochs = 20;
  Trainer t(mlp(4), cfg);
  // Nothing improves by 1e9: epoch 0 is the best, patience 2 stops after epoch 3.
  auto es = std::make_shared<EarlyStopping>(2, 1e9, "val_loss", true);
  struct Snap : Callback {
    std::vector<std::vector<float>> w0;
    void on_epoch_end(Trainer& tr, const EpochMetrics& m) override {
      if (m.epoch == 0) w0 = weights(tr.model());
    }
  };
  auto snap = std::make_shared<Snap>();
  t.add_callback(snap);
  t.add_callback(es);
  auto tl = loader(blobs(128, 5), 32, true);
  auto vl = loader(blobs(64, 6), 32, false);
  const auto& h = t.fit(tl, &vl);
  EXPECT_EQ(h.size(), 4u);
  EXPECT_TRUE(es->stopped());
  EXPECT_EQ(es->best_epoch(), 0);
  EXPECT_TRUE(bitwise_equal(weights(t.model()), snap->w0));

  // min_delta 0 on a learnable problem: it keeps improving and does not stop.
  cfg.epochs = 4;
  auto tl2 = loader(blobs(128, 5), 32, true);
  Trainer t3(mlp(4), cfg);
  t3.add_callback(std::make_shared<EarlyStopping>(3, 0.0, "train_loss"));
  EXPECT_EQ(t3.fit(tl2).size(), 4u);
  EXPECT_THROW(EarlyStopping(-1), Error);
  EXPECT_THROW(EarlyStopping(1, 0.0, "val_loss", true, "sideways"), Error);
}

TEST(Trainer, ModelCheckpointWritesBestAndLast) {
  const std::string dir = tmp_dir("ckpt");
  auto cfg = base_config();
  cfg.epochs = 3;
  cfg.amp = "fp16";
  Trainer t(mlp(5), cfg);
  auto mc = std::make_shared<ModelCheckpoint>(dir, "val_acc");
  t.add_callback(mc);
  auto tl = loader(blobs(128, 7), 32, true);
  auto vl = loader(blobs(64, 8), 32, false);
  t.fit(tl, &vl);
  ASSERT_TRUE(fs::exists(mc->last_path()));
  ASSERT_TRUE(fs::exists(mc->best_path()));
  EXPECT_GE(mc->best_epoch(), 0);

  Trainer r(mlp(99), cfg);
  r.load(mc->last_path());
  EXPECT_EQ(r.epoch(), 3);
  EXPECT_EQ(r.global_step(), t.global_step());
  EXPECT_EQ(r.history().size(), 3u);
  EXPECT_TRUE(bitwise_equal(weights(r.model()), weights(t.model())));
  EXPECT_DOUBLE_EQ(r.scaler()->get_scale(), t.scaler()->get_scale());

  // Loading into a different model fails clearly.
  nn::manual_seed(1);
  auto other = std::make_shared<nn::Sequential>(std::initializer_list<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(kFeatures, 4), std::make_shared<nn::ReLU>(),
      std::make_shared<nn::Linear>(4, kClasses)});
  Trainer bad(other, cfg);
  EXPECT_THROW(bad.load(mc->last_path()), Error);
}

TEST(Trainer, NonFiniteLossWithoutScalerStopsNamingTheStep) {
  const std::string dir = tmp_dir("nan");
  auto cfg = base_config();
  Trainer t(mlp(6), cfg);
  auto mc = std::make_shared<ModelCheckpoint>(dir);
  t.add_callback(mc);
  // Row 70 is in batch 2 (no shuffle, batch 32): the third step.
  auto tl = loader(blobs(128, 9, 70), 32, false);
  try {
    t.fit(tl);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("non-finite loss"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("step 3 "), std::string::npos) << e.what();
  }
  EXPECT_EQ(t.global_step(), 2);
  EXPECT_FALSE(fs::exists(mc->last_path()));
  for (const auto& w : weights(t.model()))
    for (float v : w) ASSERT_TRUE(std::isfinite(v));
}

TEST(Trainer, NonFiniteLossWithScalerIsSkippedAndCounted) {
  auto cfg = base_config();
  cfg.amp = "fp16";
  cfg.epochs = 3;
  Trainer t(mlp(6), cfg);
  auto tl = loader(blobs(128, 9, 70), 32, false);
  const auto& h = t.fit(tl);
  ASSERT_EQ(h.size(), 3u);
  EXPECT_EQ(t.skipped_steps(), 3);
  EXPECT_EQ(h.back().skipped_steps, 3);
  EXPECT_EQ(t.global_step(), 12);
  EXPECT_TRUE(std::isfinite(h.back().train_loss));
  for (const auto& w : weights(t.model()))
    for (float v : w) ASSERT_TRUE(std::isfinite(v));
  EXPECT_DOUBLE_EQ(t.scaler()->get_scale(), 65536.0 / 8.0);
}

namespace {
void check_resume(TrainerConfig cfg, std::int64_t n, std::int64_t k, const std::string& name,
                  double dropout = 0.0) {
  const std::string dir = tmp_dir(name);
  auto ds = blobs(200, 11);  // 7 batches of 32 (the last one 8)
  cfg.max_steps = n;
  Trainer a(mlp(21, dropout), cfg);
  auto la = loader(ds, 32, true);
  a.fit(la);
  ASSERT_EQ(a.global_step(), n);

  cfg.max_steps = k;
  Trainer b(mlp(21, dropout), cfg);
  auto lb = loader(ds, 32, true);
  b.fit(lb);
  ASSERT_EQ(b.global_step(), k);
  b.save(dir + "/ck");

  cfg.max_steps = n;
  Trainer c(mlp(77, dropout), cfg);  // another init and dropout seed: the checkpoint's win
  c.load(dir + "/ck");
  auto lc = loader(ds, 32, true);
  c.fit(lc);
  EXPECT_EQ(c.global_step(), n);
  EXPECT_TRUE(bitwise_equal(weights(a.model()), weights(c.model()))) << name;
  EXPECT_EQ(a.current_lr(), c.current_lr());
  EXPECT_EQ(a.epoch(), c.epoch());
  EXPECT_EQ(la.epoch(), lc.epoch());
  EXPECT_EQ(la.position(), lc.position());
  ASSERT_EQ(a.history().size(), c.history().size());
  for (std::size_t i = 0; i < a.history().size(); ++i)
    EXPECT_EQ(a.history()[i].global_step, c.history()[i].global_step);
}
}  // namespace

TEST(Trainer, ResumeIsBitwiseOnCpu) {
  auto cfg = base_config();
  cfg.epochs = 4;
  cfg.scheduler = "onecycle";
  cfg.grad_clip = 0.5;
  check_resume(cfg, 25, 10, "resume_adamw");  // k mid-epoch 1
  cfg.optimizer = "sgd";
  cfg.momentum = 0.9;
  cfg.lr = 0.05;
  cfg.scheduler = "step";
  cfg.amp = "fp16";
  cfg.grad_accumulation = 2;  // 4 steps per epoch
  check_resume(cfg, 14, 5, "resume_sgd_amp");
}

TEST(Trainer, ResumeWithDropoutIsBitwiseOnCpu) {
  // The Dropout masks after resuming continue the seed and offset of the saved run.
  auto cfg = base_config();
  cfg.epochs = 3;
  check_resume(cfg, 17, 9, "resume_dropout", 0.3);
}

TEST(Trainer, LoadRejectsACheckpointWithoutTheModelsDropoutState) {
  const std::string dir = tmp_dir("dropout_mismatch");
  auto cfg = base_config();
  cfg.max_steps = 2;
  Trainer plain(mlp(3), cfg);
  auto l = loader(blobs(64, 4), 32, true);
  plain.fit(l);
  plain.save(dir + "/ck");
  // Same parameter names and shapes ("0.*", "3.*" vs "0.*", "2.*" differ), so build a model
  // with Dropout last: its parameters match the plain MLP's.
  nn::manual_seed(3);
  auto with_dropout =
      std::make_shared<nn::Sequential>(std::initializer_list<std::shared_ptr<nn::Module>>{
          std::make_shared<nn::Linear>(kFeatures, 16), std::make_shared<nn::ReLU>(),
          std::make_shared<nn::Linear>(16, kClasses), std::make_shared<nn::Dropout>(0.1, 8)});
  Trainer t(with_dropout, cfg);
  const auto before = weights(t.model());
  try {
    t.load(dir + "/ck");
    FAIL() << "load accepted a checkpoint without the Dropout state";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("module '3'"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(bitwise_equal(before, weights(t.model())));
  EXPECT_EQ(t.global_step(), 0);
}

TEST(TrainerConfig, JsonParsing) {
  const auto c = TrainerConfig::from_json(R"({
    "optimizer": "sgd", "lr": 0.05, "weight_decay": 1e-4, "momentum": 0.9,
    "betas": [0.8, 0.99], "loss": "cross_entropy", "scheduler": "cosine", "grad_clip": 1.0,
    "epochs": 3, "batch_size": 64, "amp": "bf16", "grad_accumulation": 2, "seed": 42,
    "device": "cpu", "milestones": [1, 2]})");
  EXPECT_EQ(c.optimizer, "sgd");
  EXPECT_DOUBLE_EQ(c.lr, 0.05);
  EXPECT_DOUBLE_EQ(c.weight_decay, 1e-4);
  EXPECT_DOUBLE_EQ(c.momentum, 0.9);
  EXPECT_DOUBLE_EQ(c.beta1, 0.8);
  EXPECT_DOUBLE_EQ(c.beta2, 0.99);
  EXPECT_EQ(c.scheduler, "cosine");
  EXPECT_EQ(c.epochs, 3);
  EXPECT_EQ(c.batch_size, 64);
  EXPECT_EQ(c.amp, "bf16");
  EXPECT_EQ(c.grad_accumulation, 2);
  EXPECT_EQ(c.seed, 42u);
  EXPECT_EQ(c.milestones, (std::vector<std::int64_t>{1, 2}));
  const auto round = TrainerConfig::from_json(c.to_json());
  EXPECT_EQ(round.to_json(), c.to_json());

  auto expect_error = [](const std::string& text, const std::string& needle) {
    try {
      TrainerConfig::from_json(text);
      ADD_FAILURE() << "no error for " << text;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error("{", "invalid JSON");
  expect_error("[1]", "object");
  expect_error(R"({"optimiser": "sgd"})", "unknown key \"optimiser\"");
  expect_error(R"({"optimizer": "adamax"})", "unknown optimizer");
  expect_error(R"({"lr": "fast"})", "\"lr\" must be a number");
  expect_error(R"({"lr": -1})", "lr must be > 0");
  expect_error(R"({"epochs": 1.5})", "\"epochs\" must be an integer");
  expect_error(R"({"epochs": 0})", "epochs must be >= 1");
  expect_error(R"({"betas": [0.9]})", "betas");
  expect_error(R"({"amp": "fp8"})", "amp");
  expect_error(R"({"loss": "hinge"})", "unknown loss");
  expect_error(R"({"scheduler": "warp"})", "unknown scheduler");
  expect_error(R"({"device": "tpu"})", "bad device");
  expect_error(R"({"grad_accumulation": 0})", "grad_accumulation");
  EXPECT_THROW(TrainerConfig::from_json_file("/nonexistent/cfg.json"), Error);
}

TEST(Trainer, RegressionLoss) {
  // y = sum(x) with MSE on a 1-output model.
  std::mt19937 rng(3);
  std::normal_distribution<float> d(0.0f, 1.0f);
  const std::int64_t n = 128;
  std::vector<float> x(static_cast<std::size_t>(n * 4)), y(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    float s = 0;
    for (int f = 0; f < 4; ++f) s += (x[static_cast<std::size_t>(i * 4 + f)] = d(rng));
    y[static_cast<std::size_t>(i)] = s;
  }
  auto ds = std::make_shared<TensorDataset>(Tensor::from_vector(x, {n, 4}),
                                            Tensor::from_vector(y, {n, 1}));
  auto cfg = base_config();
  cfg.loss = "mse";
  cfg.lr = 0.1;
  cfg.epochs = 10;
  nn::manual_seed(2);
  auto model = std::make_shared<nn::Linear>(4, 1);
  Trainer t(model, cfg);
  auto tl = loader(ds, 32, true);
  const auto& h = t.fit(tl);
  EXPECT_LT(h.back().train_loss, 0.2 * h.front().train_loss);
  EXPECT_TRUE(std::isnan(h.back().train_acc));
}

TEST(Trainer, LrFindSweepsAndRestores) {
  auto cfg = base_config();
  Trainer t(mlp(8), cfg);
  auto tl = loader(blobs(256, 12), 32, true);
  const auto before = weights(t.model());
  const double lr0 = t.current_lr();
  const std::string csv = tmp_dir("lrfind") + "/lr.csv";
  const LRFindResult r = t.lr_find(tl, 1e-5, 10.0, 60, csv);
  ASSERT_GE(r.lrs.size(), 10u);
  EXPECT_DOUBLE_EQ(r.lrs.front(), 1e-5);
  for (std::size_t i = 1; i < r.lrs.size(); ++i) EXPECT_GT(r.lrs[i], r.lrs[i - 1]);
  EXPECT_GT(r.suggested_lr, 1e-5);
  EXPECT_LT(r.suggested_lr, 10.0);
  EXPECT_TRUE(bitwise_equal(weights(t.model()), before));
  EXPECT_EQ(t.current_lr(), lr0);
  EXPECT_EQ(tl.position(), 0);
  EXPECT_TRUE(fs::exists(csv));
  EXPECT_THROW(t.lr_find(tl, 1.0, 0.1), Error);
}
