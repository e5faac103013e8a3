// Trainer: learning, EarlyStopping, ModelCheckpoint, the non-finite loss policy, bitwise resume
// on the CPU, JSON config parsing, mixed precision through the layers (amp), logging through
// the "trainrt" spdlog logger. A small synthetic problem keeps it fast.
#include <gtest/gtest.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "test_util.hpp"
#include "trainrt/trainrt.hpp"

namespace fs = std::filesystem;
using namespace trainrt;
using trainrt_test::expect_error;

namespace {

constexpr std::int64_t kFeatures = 8, kClasses = 3;

// Three Gaussian blobs; nan_row >= 0 puts `bad` (NaN by default) into that row's features.
std::shared_ptr<TensorDataset> blobs(std::int64_t n, std::uint32_t seed, std::int64_t nan_row = -1,
                                     float bad = std::nanf("")) {
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
  if (nan_row >= 0) x[static_cast<std::size_t>(nan_row * kFeatures)] = bad;
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
  // Nothing improves by 1e9: epoch 0 is the best, patience 3 stops after epoch 3, the third
  // epoch without improvement (Keras, Lightning and SEMANTICS.md: counter >= patience; it
  // stopped one epoch later).
  auto es = std::make_shared<EarlyStopping>(3, 1e9, "val_loss", true);
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

  // Patience p stops after the p-th epoch in a row without improvement; 0 after the first.
  for (std::int64_t p : {0, 1, 2}) {
    SCOPED_TRACE(p);
    cfg.epochs = 10;
    Trainer tp(mlp(4), cfg);
    auto esp = std::make_shared<EarlyStopping>(p, 1e9, "train_loss", false);
    tp.add_callback(esp);
    auto tlp = loader(blobs(64, 5), 32, true);
    EXPECT_EQ(tp.fit(tlp).size(), static_cast<std::size_t>(p + 1 + (p == 0 ? 1 : 0)));
    EXPECT_TRUE(esp->stopped());
  }
  // A monitor no epoch has was NaN at every epoch, so never improved: an Error now.
  expect_error([] { EarlyStopping(3, 0.0, "val_los"); },
               "EarlyStopping: unknown monitor 'val_los'; one of train_loss, loss");
  expect_error([] { ModelCheckpoint("d", "bogus"); }, "ModelCheckpoint: unknown monitor 'bogus'");
  for (const auto& name : EpochMetrics::names()) {
    EpochMetrics m;
    m.epoch = 3;
    m.global_step = 7;
    m.skipped_steps = 2;
    m.seconds = 1.5;
    EXPECT_EQ(EarlyStopping(1, 0.0, name).state_key(), "early_stopping_" + name);
    if (name == "epoch") EXPECT_EQ(m.get(name), 3.0);
    if (name == "global_step") EXPECT_EQ(m.get(name), 7.0);
    if (name == "skipped_steps") EXPECT_EQ(m.get(name), 2.0);
    if (name == "seconds") EXPECT_EQ(m.get(name), 1.5);
  }
}

// A run interrupted by max_steps and resumed stops, restores and reports as the uninterrupted
// one: EarlyStopping's state (best, epochs waited, best weights) is in the checkpoint, and an
// interrupted fit() leaves the weights of its last step (restoring the best ones there put
// them beside the optimizer state of the last step, and the resumed run went elsewhere).
TEST(Trainer, EarlyStoppingStateResumes) {
  const std::string dir = tmp_dir("early_stopping_resume");
  auto cfg = base_config();
  cfg.epochs = 12;
  cfg.lr = 0.2;             // large enough to bounce: some epochs do not improve
  auto ds = blobs(96, 12);  // 3 steps per epoch
  auto vds = blobs(48, 13);
  auto es_of = [] { return std::make_shared<EarlyStopping>(2, 0.01, "val_loss", true); };
  Trainer a(mlp(3), cfg);
  auto esa = es_of();
  a.add_callback(esa);
  auto mca = std::make_shared<ModelCheckpoint>(dir + "/mc_a", "val_loss");
  a.add_callback(mca);
  auto la = loader(ds, 32, true);
  auto va = loader(vds, 16, false);
  const auto ha = a.fit(la, &va);
  ASSERT_TRUE(esa->stopped()) << "the case must stop early to test the resume of a stop";
  ASSERT_LT(ha.size(), 12u);
  ASSERT_GE(ha.size(), 3u);

  for (bool add_after_load : {false, true}) {
    SCOPED_TRACE(add_after_load ? "added after load" : "added before load");
    const std::int64_t k = 3 * static_cast<std::int64_t>(ha.size() - 2) + 1;  // mid-epoch
    cfg.max_steps = k;
    Trainer b(mlp(3), cfg);
    auto esb = es_of();
    b.add_callback(esb);
    b.add_callback(std::make_shared<ModelCheckpoint>(dir + "/mc_b", "val_loss"));
    auto lb = loader(ds, 32, true);
    auto vb = loader(vds, 16, false);
    b.fit(lb, &vb);
    ASSERT_EQ(b.global_step(), k);
    EXPECT_FALSE(esb->stopped());
    Trainer r(mlp(3), cfg);  // the same k steps without EarlyStopping
    auto lr = loader(ds, 32, true);
    auto vr = loader(vds, 16, false);
    r.fit(lr, &vr);
    const auto w_last = weights(r.model());
    EXPECT_TRUE(bitwise_equal(weights(b.model()), w_last));
    b.save(dir + "/ck");

    cfg.max_steps = 0;
    Trainer c(mlp(30), cfg);
    auto esc = es_of();
    // ModelCheckpoint's best value resumes too: a worse epoch after the resume does not
    // overwrite best (its first epoch always did).
    auto mcc = std::make_shared<ModelCheckpoint>(dir + "/mc_c", "val_loss");
    if (!add_after_load) c.add_callback(esc);
    if (!add_after_load) c.add_callback(mcc);
    c.load(dir + "/ck");
    if (add_after_load) c.add_callback(esc);
    if (add_after_load) c.add_callback(mcc);
    EXPECT_EQ(esc->best_epoch(), esb->best_epoch());
    auto lc = loader(ds, 32, true);
    auto vc = loader(vds, 16, false);
    const auto hc = c.fit(lc, &vc);
    EXPECT_EQ(hc.size(), ha.size());
    EXPECT_TRUE(esc->stopped());
    EXPECT_EQ(esc->best_epoch(), esa->best_epoch());
    EXPECT_EQ(esc->best(), esa->best());
    EXPECT_EQ(mcc->best_epoch(), mca->best_epoch());
    EXPECT_TRUE(bitwise_equal(weights(a.model()), weights(c.model())));  // both restored
    // The interrupted run's checkpoint held the weights of its last step.
    Trainer d(mlp(31), cfg);
    d.load(dir + "/ck");
    EXPECT_TRUE(bitwise_equal(weights(d.model()), w_last));
  }
  // A state for another monitor or mode is refused, and the load changes nothing.
  Trainer e(mlp(3), cfg);
  auto other = std::make_shared<EarlyStopping>(2, 0.01, "val_loss", true, "max");
  e.add_callback(other);
  const auto w0 = weights(e.model());
  expect_error([&] { e.load(dir + "/ck"); }, "the state's mode (min/max) differs");
  EXPECT_TRUE(bitwise_equal(weights(e.model()), w0));
  EXPECT_EQ(e.global_step(), 0);
  expect_error([&] { e.add_callback(std::make_shared<EarlyStopping>(1, 0.0, "val_loss")); },
               "two callbacks with the state key 'early_stopping_val_loss'");
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
  trainrt_test::allow_warnings();  // one warning per skipped step, checked below
  // A NaN feature, and a finite f32 feature that the cast to f16 turns into inf: both give
  // inf/NaN grads in the f16 forward/backward, and the GradScaler skips the step.
  for (float bad : {std::nanf(""), 1e30f}) {
    auto cfg = base_config();
    cfg.amp = "fp16";
    cfg.epochs = 3;
    Trainer t(mlp(6), cfg);
    auto tl = loader(blobs(128, 9, 70, bad), 32, false);
    std::vector<std::vector<float>> before_step3;
    struct Snap : Callback {
      std::vector<std::vector<float>>* out;
      explicit Snap(std::vector<std::vector<float>>* o) : out(o) {}
      void on_batch_end(Trainer& tr, const BatchInfo& b) override {
        if (b.epoch == 0 && b.batch == 1) *out = weights(tr.model());
        if (b.epoch == 0 && b.batch == 2) {
          EXPECT_TRUE(b.step_end);
          EXPECT_TRUE(b.skipped);
          EXPECT_TRUE(bitwise_equal(weights(tr.model()), *out))
              << "the skipped step changed weights";
        }
      }
    };
    t.add_callback(std::make_shared<Snap>(&before_step3));
    trainrt_test::take_logged_warnings();
    const auto& h = t.fit(tl);
    ASSERT_EQ(h.size(), 3u);
    EXPECT_EQ(t.skipped_steps(), 3);
    EXPECT_EQ(h.back().skipped_steps, 3);
    EXPECT_EQ(t.global_step(), 12);
    EXPECT_TRUE(std::isfinite(h.back().train_loss));
    for (const auto& w : weights(t.model()))
      for (float v : w) ASSERT_TRUE(std::isfinite(v));
    EXPECT_DOUBLE_EQ(t.scaler()->get_scale(), 65536.0 / 8.0);
    const auto warnings = trainrt_test::take_logged_warnings();
    ASSERT_EQ(warnings.size(), 3u) << bad;
    EXPECT_NE(warnings[0].find("step 3 (epoch 0, batch 2) skipped: inf/NaN gradients"),
              std::string::npos)
        << warnings[0];
    EXPECT_NE(warnings[2].find("scale now 8192, 3 skipped steps"), std::string::npos)
        << warnings[2];
  }
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

// max_steps reached with the last batch of an epoch ends that epoch (its metrics, validation
// and callbacks), as the uninterrupted run does (the epoch was dropped and left to the next
// fit); a run stopped there and resumed equals the uninterrupted one, including the
// validation of a shuffled val loader, which each validation starts at (epoch, 0).
TEST(Trainer, MaxStepsAtAnEpochEndEndsTheEpoch) {
  const std::string dir = tmp_dir("max_steps_epoch_end");
  auto cfg = base_config();
  cfg.epochs = 3;
  auto ds = blobs(64, 3);   // 2 steps per epoch
  auto vds = blobs(40, 4);  // drop_last, shuffled: each epoch validates other samples
  auto val_loader = [&] {
    DataLoaderOptions o;
    o.batch_size = 16;
    o.shuffle = true;
    o.drop_last = true;
    o.seed = 5;
    return DataLoader(vds, o);
  };
  struct Count : Callback {
    int epochs = 0;
    void on_epoch_end(Trainer&, const EpochMetrics&) override { ++epochs; }
  };
  Trainer a(mlp(8), cfg);
  auto la = loader(ds, 32, true);
  auto va = val_loader();
  const auto ha = a.fit(la, &va);
  ASSERT_EQ(ha.size(), 3u);

  cfg.max_steps = 4;
  Trainer b(mlp(8), cfg);
  auto count = std::make_shared<Count>();
  b.add_callback(count);
  auto lb = loader(ds, 32, true);
  auto vb = val_loader();
  EXPECT_EQ(b.fit(lb, &vb).size(), 2u);  // was 1: the second epoch's end was dropped
  EXPECT_EQ(count->epochs, 2);
  EXPECT_EQ(b.epoch(), 2);
  EXPECT_EQ(b.global_step(), 4);
  EXPECT_EQ(lb.epoch(), 2u);
  EXPECT_EQ(lb.position(), 0);
  b.save(dir + "/ck");

  cfg.max_steps = 0;
  Trainer c(mlp(9), cfg);
  c.load(dir + "/ck");
  auto lc = loader(ds, 32, true);
  auto vc = val_loader();
  vc.set_epoch(7, 1);  // wherever the caller's loader stands, each validation is (epoch, 0)
  const auto hc = c.fit(lc, &vc);
  ASSERT_EQ(hc.size(), 3u);
  for (std::size_t e = 0; e < 3; ++e) {
    SCOPED_TRACE(e);
    EXPECT_EQ(hc[e].train_loss, ha[e].train_loss);
    EXPECT_EQ(hc[e].val_loss, ha[e].val_loss);
    EXPECT_EQ(hc[e].global_step, ha[e].global_step);
  }
  EXPECT_TRUE(bitwise_equal(weights(a.model()), weights(c.model())));
}

// A validation loader with no batches measures nothing: NaN, not a loss of 0 that
// EarlyStopping, ModelCheckpoint and the plateau scheduler took for a perfect one.
TEST(Trainer, AnEmptyValidationLoaderGivesNaN) {
  auto cfg = base_config();
  cfg.epochs = 1;
  Trainer t(mlp(2), cfg);
  DataLoaderOptions o;
  o.batch_size = 16;
  o.drop_last = true;
  DataLoader empty(blobs(8, 1), o);
  ASSERT_EQ(empty.num_batches(), 0);
  const EvalResult e = t.evaluate(empty);
  EXPECT_TRUE(std::isnan(e.loss)) << e.loss;
  EXPECT_EQ(e.samples, 0);
  auto tl = loader(blobs(64, 2), 32, false);
  const auto& h = t.fit(tl, &empty);
  ASSERT_EQ(h.size(), 1u);
  EXPECT_TRUE(std::isnan(h[0].val_loss)) << h[0].val_loss;
}

// An epoch whose every step the GradScaler skipped has no grad norm to average: NaN, not 0.
TEST(Trainer, AnEpochOfSkippedStepsHasANaNGradNorm) {
  trainrt_test::allow_warnings();
  auto cfg = base_config();
  cfg.amp = "fp16";
  cfg.epochs = 1;
  Trainer t(mlp(6), cfg);
  auto tl = loader(blobs(32, 9, 3), 32, false);  // one step, with a NaN feature
  const auto& h = t.fit(tl);
  ASSERT_EQ(h.size(), 1u);
  EXPECT_EQ(h[0].skipped_steps, 1);
  EXPECT_TRUE(std::isnan(h[0].grad_norm)) << h[0].grad_norm;
  EXPECT_TRUE(std::isnan(h[0].grad_norm_clipped)) << h[0].grad_norm_clipped;
}

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

// A checkpoint edited into nonsense (its CRCs recomputed by save_checkpoint) is refused with
// an Error before anything changes: a NaN or huge epoch used to make training endless, a
// missing optimizer state crashed, a bad history leaked nlohmann's exceptions.
/// An edit of a saved checkpoint that Trainer::load must refuse, and a word of its message.
struct CheckpointEdit {
  const char* what;
  std::function<void(trainrt::CheckpointContents&)> edit;
  const char* needle;
};

TEST(Trainer, LoadRejectsEditedTrainerState) {
  const std::string dir = tmp_dir("edited_state");
  auto cfg = base_config();
  cfg.max_steps = 2;
  Trainer a(mlp(3), cfg);
  auto l = loader(blobs(64, 4), 32, true);
  a.fit(l);
  a.save(dir + "/ck");
  const trainrt::CheckpointContents good = trainrt::load_checkpoint(dir + "/ck");
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const std::vector<CheckpointEdit> edits = {
      {"nan epoch", [&](auto& c) { c.states["trainer"].scalars["epoch"] = nan; },
       "epoch must be a whole number >= 0"},
      {"huge epoch", [](auto& c) { c.states["trainer"].scalars["epoch"] = 1e300; },
       "epoch must be a whole number"},
      {"negative step", [](auto& c) { c.states["trainer"].scalars["global_step"] = -1; },
       "global_step must be a whole number"},
      {"no optimizer", [](auto& c) { c.states.erase("optimizer"); }, "no optimizer state"},
      {"history not json", [](auto& c) { c.states["trainer"].strings["history"] = "xx"; },
       "the saved history is not valid"},
      {"history entries", [](auto& c) { c.states["trainer"].strings["history"] = "[{}]"; },
       "the saved history is not valid"},
      {"history not array", [](auto& c) { c.states["trainer"].strings["history"] = "{\"a\":1}"; },
       "the saved history is not valid"},
  };
  for (const CheckpointEdit& e : edits) {
    SCOPED_TRACE(e.what);
    trainrt::CheckpointContents c = good;
    e.edit(c);
    trainrt::save_checkpoint(dir + "/bad", c);
    Trainer t(mlp(3), cfg);
    const auto before = weights(t.model());
    try {
      t.load(dir + "/bad");
      ADD_FAILURE() << "load accepted it";
    } catch (const Error& err) {
      EXPECT_NE(std::string(err.what()).find(e.needle), std::string::npos) << err.what();
    }
    EXPECT_TRUE(bitwise_equal(before, weights(t.model())));
    EXPECT_EQ(t.global_step(), 0);
  }
}

// The optimizer, scheduler and GradScaler sections are checked as they load, after the weights
// are in: a failed load puts everything back (found by a fuzz: loading an SGD trainer's
// checkpoint into an AdamW trainer threw, with the weights already overwritten).
TEST(Trainer, FailedLoadOfAStateSectionChangesNothing) {
  const std::string dir = tmp_dir("failed_section");
  auto cfg = base_config();
  cfg.max_steps = 3;
  cfg.scheduler = "cosine";
  cfg.amp = "fp16";
  auto l = loader(blobs(64, 4), 32, true);
  Trainer a(mlp(3), cfg);
  a.fit(l);
  a.save(dir + "/ck");
  auto sgd = cfg;
  sgd.optimizer = "sgd";
  Trainer b(mlp(3), sgd);
  b.fit(l);
  b.save(dir + "/sgd");
  const trainrt::CheckpointContents good = trainrt::load_checkpoint(dir + "/ck");
  const std::vector<CheckpointEdit> edits = {
      {"optimizer buffer", [](auto& c) { c.states["optimizer"].tensors.erase("state.0.exp_avg"); },
       "exp_avg"},
      {"scheduler field", [](auto& c) { c.states["scheduler"].scalars["T_max"] = -1; }, "T_max"},
      {"scaler scale", [](auto& c) { c.states["scaler"].scalars["scale"] = -1; }, "scale"},
  };
  for (int k = 0; k <= static_cast<int>(edits.size()); ++k) {
    const bool other_optimizer = k == static_cast<int>(edits.size());
    SCOPED_TRACE(other_optimizer ? "an SGD checkpoint" : edits[static_cast<std::size_t>(k)].what);
    std::string path = dir + "/sgd";
    if (!other_optimizer) {
      trainrt::CheckpointContents c = good;
      edits[static_cast<std::size_t>(k)].edit(c);
      path = dir + "/bad";
      trainrt::save_checkpoint(path, c);
    }
    Trainer t(mlp(4), cfg);  // other weights than the checkpoint's, and so other moments
    t.fit(l);                // some state of its own: steps, moments, a scheduled lr
    const auto before = weights(t.model());
    const trainrt::StateDict opt_before = t.optimizer().state_dict();
    const trainrt::StateDict sched_before = t.scheduler()->state_dict();
    const trainrt::StateDict scaler_before = t.scaler()->state_dict();
    const double lr_before = t.current_lr();
    try {
      t.load(path);
      ADD_FAILURE() << "load accepted it";
    } catch (const Error& err) {
      const char* needle =
          other_optimizer ? "from a SGD optimizer" : edits[static_cast<std::size_t>(k)].needle;
      EXPECT_NE(std::string(err.what()).find(needle), std::string::npos) << err.what();
    }
    EXPECT_TRUE(bitwise_equal(before, weights(t.model())));
    const trainrt::StateDict opt_after = t.optimizer().state_dict();
    EXPECT_EQ(opt_after.scalars, opt_before.scalars);
    ASSERT_EQ(opt_after.tensors.size(), opt_before.tensors.size());
    for (const auto& kv : opt_before.tensors) {
      EXPECT_EQ(kv.second.to_vector<float>(), opt_after.tensors.at(kv.first).to_vector<float>())
          << kv.first;
    }
    EXPECT_EQ(t.scheduler()->state_dict().scalars, sched_before.scalars);
    EXPECT_EQ(t.scaler()->state_dict().scalars, scaler_before.scalars);
    EXPECT_EQ(t.current_lr(), lr_before);
    EXPECT_EQ(t.global_step(), 3);
  }
}

// An output_dir or checkpoint dir that cannot be made (a file is in the way) is an Error.
TEST(Trainer, DirectoriesThatCannotBeMadeAreErrors) {
  const std::string dir = tmp_dir("blocked_dirs");
  const std::string file = dir + "/a_file";
  std::ofstream(file) << "x";
  auto l = loader(blobs(64, 4), 32, true);
  auto cfg = base_config();
  cfg.epochs = 1;  // one whole epoch: metrics and checkpoints are written at its end
  cfg.output_dir = file + "/run";
  Trainer a(mlp(3), cfg);
  try {
    a.fit(l);
    ADD_FAILURE() << "fit wrote into a file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot create the output_dir"), std::string::npos)
        << e.what();
  }
  cfg.output_dir.clear();
  Trainer b(mlp(3), cfg);
  b.add_callback(std::make_shared<ModelCheckpoint>(file + "/ck", "val_acc"));
  try {
    b.fit(l);
    ADD_FAILURE() << "ModelCheckpoint wrote into a file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ModelCheckpoint: cannot create the directory"),
              std::string::npos)
        << e.what();
  }
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
  expect_error(R"({"lr": 0.1, "epochs": 2, "lr": 5})", "the key \"lr\" is given twice");
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
  // Integers: whole, at most 2^53 (no float-to-int cast out of range), counts at most 2^31-1
  // (products of two stay inside 64 bits); any 64-bit seed round-trips.
  expect_error(R"({"epochs": 1e300})", "\"epochs\" must be an integer of at most 2^53");
  expect_error(R"({"batch_size": 18446744073709551615})", "must be an integer of at most 2^53");
  expect_error(R"({"batch_size": 4294967296})", "batch_size must be at most 2147483647");
  expect_error(R"({"scheduler": "step", "step_size": 4294967296})", "step_size must be at most");
  expect_error(R"({"scheduler": "multistep", "milestones": [-5, 3]})",
               "milestones must be increasing epochs in [0, 2147483647], got -5");
  expect_error(R"({"scheduler": "multistep", "milestones": [3, 3]})",
               "milestones must be increasing");
  EXPECT_EQ(TrainerConfig::from_json(R"({"seed": 18446744073709551615})").seed,
            18446744073709551615ull);
  // 100 000 levels deep: refused before anything dumps or copies the value (stack overflow).
  expect_error(R"({"lr": )" + std::string(100000, '[') + std::string(100000, ']') + "}",
               "nests deeper than 64 levels");
  EXPECT_THROW(TrainerConfig::from_json_file("/nonexistent/cfg.json"), Error);
  // Only a regular file: a directory read as empty, a FIFO blocked, /dev/zero never ended.
  trainrt_test::expect_error([] { TrainerConfig::from_json_file("/tmp"); },
                             "/tmp is not a regular file");
  trainrt_test::expect_error([] { TrainerConfig::from_json_file("/dev/zero"); },
                             "is not a regular file");
  // INT64_MIN is out of range (its llabs overflowed, undefined behaviour under UBSan).
  expect_error(R"({"epochs": -9223372036854775808})",
               "\"epochs\" must be an integer of at most 2^53 in magnitude");
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

// lr_find leaves nothing of its sweep behind: with Dropout (whose mask offsets it advanced)
// and the grads of its last step (left set), a fit() after it went elsewhere than a fit()
// without it. Found by a differential fuzz of the Trainer.
TEST(Trainer, FitAfterLrFindIsTheFitWithoutIt) {
  auto cfg = base_config();
  cfg.epochs = 2;
  auto ds = blobs(96, 14);
  Trainer a(mlp(5, 0.3), cfg);
  auto la = loader(ds, 32, true);
  a.fit(la);
  Trainer b(mlp(5, 0.3), cfg);
  auto lb = loader(ds, 32, true);
  const StateDict dropout0 = b.model().extra_states();
  b.lr_find(lb, 1e-4, 1.0, 10);
  for (const auto& p : b.model().parameters()) EXPECT_FALSE(p.has_grad());
  const StateDict dropout1 = b.model().extra_states();
  EXPECT_EQ(dropout1.scalars, dropout0.scalars);
  b.fit(lb);
  EXPECT_TRUE(bitwise_equal(weights(a.model()), weights(b.model())));
}

// With amp, lr_find's clip sees the unscaled grads, as fit()'s does (it clipped the scaled
// grads, scale times their norm, and so shrank every step; found by a review). A grad_clip above
// the true norms clips nothing: the sweep equals the one without a clip.
TEST(Trainer, LrFindWithAmpClipsTheUnscaledGrads) {
  auto cfg = base_config();
  cfg.amp = "fp16";
  auto tl = loader(blobs(256, 12), 32, true);
  auto clipped = cfg;
  clipped.grad_clip = 1000.0;  // well above these grads' norms, well below 65536 times them
  Trainer a(mlp(8), cfg), b(mlp(8), clipped);
  const LRFindResult ra = a.lr_find(tl, 1e-4, 1.0, 20);
  const LRFindResult rb = b.lr_find(tl, 1e-4, 1.0, 20);
  ASSERT_GE(ra.losses.size(), 10u);
  EXPECT_EQ(ra.losses, rb.losses);
}

// ---- mixed precision through the layers (amp) --------------------------------------------

namespace {

// Passes its input through, recording the dtype of every forward input (and whether the model
// was training) and of every backward gradient: what the neighbouring layers really computed.
class DTypeProbe : public nn::Module {
 public:
  struct Seen {
    DType dtype;
    bool training;
  };
  std::vector<Seen> forwards;
  std::vector<DType> backwards;
  Tensor forward(const Tensor& input) override {
    forwards.push_back({input.dtype(), is_training()});
    return input;
  }
  Tensor backward(const Tensor& grad_output) override {
    backwards.push_back(grad_output.dtype());
    return grad_output;
  }
};

struct ProbedMlp {
  std::shared_ptr<nn::Sequential> model;
  std::shared_ptr<DTypeProbe> hidden, logits;
};

// mlp(seed) with probes after the first Linear and after the last (the logits): the same
// parameters in the same order, so runs compare with the f32 run of the same seed.
ProbedMlp probed_mlp(std::uint64_t seed) {
  nn::manual_seed(seed);
  ProbedMlp p;
  p.hidden = std::make_shared<DTypeProbe>();
  p.logits = std::make_shared<DTypeProbe>();
  p.model = std::make_shared<nn::Sequential>(std::initializer_list<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(kFeatures, 16), p.hidden, std::make_shared<nn::ReLU>(),
      std::make_shared<nn::Linear>(16, kClasses), p.logits});
  return p;
}

// Every parameter's model copy against its master: Linear weights carry one of `dt`, equal
// to the master rounded to `dt`; biases carry none (Linear adds them in f32).
void expect_model_copies(nn::Module& m, DType dt, const std::string& what) {
  for (const auto& [name, p] : m.named_parameters()) {
    const bool is_bias = name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0;
    if (dt == DType::f32 || is_bias) {
      EXPECT_FALSE(p.model_copy().defined()) << what << " " << name;
      continue;
    }
    ASSERT_TRUE(p.model_copy().defined()) << what << " " << name;
    EXPECT_EQ(p.model_copy().dtype(), dt) << what << " " << name;
    EXPECT_EQ(p.model_copy().to_double_vector(), p.value().to(dt).to_double_vector())
        << what << " " << name << ": the model copy is not the master rounded";
  }
}

}  // namespace

TEST(TrainerAmp, Bf16AndFp16LearnLikeF32InReducedPrecision) {
  struct Run {
    std::string amp;
    DType dt;
    std::vector<EpochMetrics> h;
  };
  std::vector<Run> runs = {
      {"none", DType::f32, {}}, {"bf16", DType::bf16, {}}, {"fp16", DType::f16, {}}};
  for (Run& r : runs) {
    auto cfg = base_config();
    cfg.amp = r.amp;
    cfg.scheduler = "cosine";
    cfg.grad_clip = 1.0;
    ProbedMlp pm = probed_mlp(1);
    Trainer t(pm.model, cfg);
    EXPECT_EQ(t.compute_dtype(), r.dt);
    EXPECT_EQ(t.scaler() != nullptr, r.amp == "fp16");
    auto tl = loader(blobs(384, 1), 32, true);
    auto vl = loader(blobs(96, 2), 32, false);
    r.h = t.fit(tl, &vl);
    ASSERT_EQ(r.h.size(), 5u) << r.amp;
    EXPECT_LT(r.h.back().train_loss, 0.5 * r.h.front().train_loss) << r.amp;
    EXPECT_GT(r.h.back().val_acc, 0.9) << r.amp;
    EXPECT_EQ(r.h.back().skipped_steps, 0) << r.amp;
    // The layers computed in r.dt: the hidden activations and logits seen in training and in
    // validation, and the gradients flowing back through them.
    ASSERT_EQ(pm.hidden->forwards.size(), 5u * (12 + 3)) << r.amp;  // 12 train + 3 val batches
    std::size_t eval_forwards = 0;
    for (const auto* probe : {pm.hidden.get(), pm.logits.get()}) {
      for (const auto& f : probe->forwards) {
        EXPECT_EQ(f.dtype, r.dt) << r.amp;
        if (!f.training) ++eval_forwards;
      }
      ASSERT_EQ(probe->backwards.size(), 5u * 12) << r.amp;
      for (DType d : probe->backwards) EXPECT_EQ(d, r.dt) << r.amp;
    }
    EXPECT_EQ(eval_forwards, 2u * 5 * 3) << r.amp;
    // Grads stay f32; the model copies follow the masters the optimizer updated.
    for (const auto& p : t.model().parameters()) EXPECT_EQ(p.grad().dtype(), DType::f32);
    expect_model_copies(t.model(), r.dt, r.amp);
    // evaluate() runs the same reduced-precision forward and gives the last epoch's numbers.
    pm.logits->forwards.clear();
    const EvalResult e = t.evaluate(vl);
    EXPECT_NEAR(e.acc, r.h.back().val_acc, 1e-12) << r.amp;
    EXPECT_NEAR(e.loss, r.h.back().val_loss, 1e-12) << r.amp;
    ASSERT_EQ(pm.logits->forwards.size(), 3u);
    EXPECT_EQ(pm.logits->forwards[0].dtype, r.dt);
  }
  // Close to the f32 run: same data, init and order; only the rounding differs.
  const auto& f32 = runs[0].h.back();
  for (std::size_t i = 1; i < runs.size(); ++i) {
    const auto& m = runs[i].h.back();
    EXPECT_NEAR(m.val_acc, f32.val_acc, 0.03) << runs[i].amp;
    EXPECT_NEAR(m.train_loss, f32.train_loss, 0.05 + 0.1 * f32.train_loss) << runs[i].amp;
    EXPECT_NEAR(m.val_loss, f32.val_loss, 0.05 + 0.1 * f32.val_loss) << runs[i].amp;
    // ... but not the f32 run itself.
    EXPECT_NE(m.train_loss, f32.train_loss) << runs[i].amp;
  }
}

TEST(TrainerAmp, ModelCopiesFollowLoadLrFindAndEarlyStoppingRestore) {
  const std::string dir = tmp_dir("amp_copies");
  auto cfg = base_config();
  cfg.amp = "bf16";
  cfg.max_steps = 6;
  Trainer a(mlp(31), cfg);
  auto la = loader(blobs(128, 3), 32, true);
  a.fit(la);
  expect_model_copies(a.model(), DType::bf16, "after fit");
  a.save(dir + "/ck");

  // load(): the masters come from the file, the copies are derived from them.
  Trainer b(mlp(32), cfg);
  b.load(dir + "/ck");
  EXPECT_TRUE(bitwise_equal(weights(a.model()), weights(b.model())));
  expect_model_copies(b.model(), DType::bf16, "after load");

  // lr_find() restores the masters and the copies.
  auto lb = loader(blobs(128, 3), 32, true);
  const auto copies_before = b.model().parameters()[0].model_copy().to_double_vector();
  b.lr_find(lb, 1e-4, 1.0, 10);
  expect_model_copies(b.model(), DType::bf16, "after lr_find");
  EXPECT_EQ(b.model().parameters()[0].model_copy().to_double_vector(), copies_before);

  // EarlyStopping's restore of the best weights rewrites the copies too.
  cfg.max_steps = 0;
  cfg.epochs = 6;
  Trainer c(mlp(33), cfg);
  auto es = std::make_shared<EarlyStopping>(1, 1e9, "val_loss", true);
  c.add_callback(es);
  auto lc = loader(blobs(128, 5), 32, true);
  auto vc = loader(blobs(64, 6), 32, false);
  c.fit(lc, &vc);
  EXPECT_TRUE(es->stopped());
  expect_model_copies(c.model(), DType::bf16, "after the EarlyStopping restore");

  // amp needs f32 masters.
  auto f64 = std::make_shared<nn::Linear>(kFeatures, kClasses, true, 1, DType::f64);
  try {
    Trainer bad(f64, cfg);
    ADD_FAILURE() << "amp with f64 parameters accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("needs f32 parameters"), std::string::npos) << e.what();
  }
}

TEST(TrainerAmp, ResumeIsBitwiseOnCpu) {
  // The checkpoint holds the f32 masters; load re-derives the model copies, so the resumed
  // run multiplies by the same copies as the uninterrupted one.
  auto cfg = base_config();
  cfg.epochs = 4;
  cfg.amp = "bf16";
  cfg.scheduler = "onecycle";
  cfg.grad_clip = 0.5;
  check_resume(cfg, 25, 10, "resume_bf16_dropout", 0.3);
  cfg.amp = "fp16";
  cfg.grad_accumulation = 2;
  check_resume(cfg, 14, 5, "resume_fp16_adamw");
}

// ---- losses configured by TrainerConfig --------------------------------------------------

TEST(Trainer, HuberDeltaAndSmoothL1BetaReachTheLoss) {
  // A model that outputs 0 for every input; targets 3.01 (not a bf16 value: 3.0 when rounded).
  const std::int64_t n = 8;
  auto ds =
      std::make_shared<TensorDataset>(Tensor::from_vector(std::vector<float>(n, 1.0f), {n, 1}),
                                      Tensor::from_vector(std::vector<float>(n, 3.01f), {n, 1}));
  auto eval_loss = [&](const std::string& loss, double delta, double beta, const char* amp) {
    auto cfg = base_config();
    cfg.loss = loss;
    cfg.huber_delta = delta;
    cfg.smooth_l1_beta = beta;
    cfg.amp = amp;
    auto model = std::make_shared<nn::Linear>(1, 1);
    model->weight().value().zero_();
    model->bias().value().zero_();
    Trainer t(model, cfg);
    auto l = loader(ds, 4, false);
    return t.evaluate(l).loss;
  };
  const double d = 3.01f;  // the f32 target
  for (const char* amp : {"none", "bf16", "fp16"}) {
    // huber: delta * (|d| - delta / 2) above delta; smooth_l1: |d| - beta / 2 above beta.
    // The regression losses run in f32, so the target is not rounded to bf16/f16.
    EXPECT_NEAR(eval_loss("huber", 1.0, 1.0, amp), 1.0 * (d - 0.5), 1e-6) << amp;
    EXPECT_NEAR(eval_loss("huber", 2.0, 1.0, amp), 2.0 * (d - 1.0), 1e-6) << amp;
    EXPECT_NEAR(eval_loss("huber", 4.0, 1.0, amp), 0.5 * d * d, 1e-5) << amp;
    EXPECT_NEAR(eval_loss("smooth_l1", 1.0, 1.0, amp), d - 0.5, 1e-6) << amp;
    EXPECT_NEAR(eval_loss("smooth_l1", 1.0, 2.0, amp), d - 1.0, 1e-6) << amp;
    EXPECT_NEAR(eval_loss("smooth_l1", 1.0, 0.0, amp), d, 1e-6) << amp;  // beta 0: L1
    EXPECT_NEAR(eval_loss("smooth_l1", 1.0, 4.0, amp), 0.5 * d * d / 4.0, 1e-5) << amp;
  }

  const auto c = TrainerConfig::from_json(R"({"huber_delta": 0.25, "smooth_l1_beta": 0})");
  EXPECT_DOUBLE_EQ(c.huber_delta, 0.25);
  EXPECT_DOUBLE_EQ(c.smooth_l1_beta, 0.0);
  EXPECT_EQ(TrainerConfig::from_json(c.to_json()).to_json(), c.to_json());
  EXPECT_DOUBLE_EQ(TrainerConfig().huber_delta, 1.0);
  EXPECT_DOUBLE_EQ(TrainerConfig().smooth_l1_beta, 1.0);
  auto expect_error = [](const std::string& text, const std::string& needle) {
    try {
      TrainerConfig::from_json(text);
      ADD_FAILURE() << "no error for " << text;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error(R"({"loss": "huber", "huber_delta": 0})",
               "huber_delta must be a finite number > 0, got 0");
  expect_error(R"({"loss": "huber", "huber_delta": -1})",
               "huber_delta must be a finite number > 0, got -1");
  expect_error(R"({"smooth_l1_beta": -0.5})",
               "smooth_l1_beta must be a finite number >= 0, got -0.5");
  expect_error(R"({"huber_delta": "big"})", "\"huber_delta\" must be a number");
  TrainerConfig bad = base_config();
  bad.smooth_l1_beta = std::nan("");
  EXPECT_THROW(Trainer(mlp(1), bad), Error);
}

// ---- logging through the "trainrt" spdlog logger ----------------------------------------

namespace {

// Adds a ring-buffer sink to the "trainrt" logger (the test main registers it) at debug level
// for the lifetime of the object.
struct LogCapture {
  std::shared_ptr<spdlog::logger> logger = spdlog::get("trainrt");
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink =
      std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(4096);
  spdlog::level::level_enum level_before;
  LogCapture() {
    EXPECT_TRUE(logger != nullptr);
    level_before = logger->level();
    logger->set_level(spdlog::level::debug);
    logger->sinks().push_back(sink);
  }
  ~LogCapture() {
    auto& sinks = logger->sinks();
    sinks.erase(std::remove(sinks.begin(), sinks.end(), sink), sinks.end());
    logger->set_level(level_before);
  }
  // (level, message) of everything logged so far.
  std::vector<std::pair<spdlog::level::level_enum, std::string>> lines() const {
    std::vector<std::pair<spdlog::level::level_enum, std::string>> out;
    for (const auto& m : sink->last_raw())
      out.emplace_back(m.level, std::string(m.payload.data(), m.payload.size()));
    return out;
  }
};

std::size_t count_lines(const std::vector<std::pair<spdlog::level::level_enum, std::string>>& ls,
                        spdlog::level::level_enum level, const std::string& needle) {
  std::size_t n = 0;
  for (const auto& [l, m] : ls)
    if (l == level && m.find(needle) != std::string::npos) ++n;
  return n;
}

}  // namespace

TEST(TrainerLogging, LoggingCallbackEarlyStoppingCheckpointAndSkippedSteps) {
  trainrt_test::allow_warnings();  // the skipped-step warnings are part of what is checked
  const std::string dir = tmp_dir("logging");
  LogCapture cap;
  auto cfg = base_config();
  cfg.amp = "fp16";
  cfg.epochs = 8;
  Trainer t(mlp(6), cfg);
  t.add_callback(std::make_shared<LoggingCallback>(2));
  // Nothing improves by 1e9: epoch 0 stays the best, patience 2 stops after epoch 2.
  t.add_callback(std::make_shared<EarlyStopping>(2, 1e9, "val_loss", true));
  t.add_callback(std::make_shared<ModelCheckpoint>(dir, "val_acc", "max"));
  auto tl = loader(blobs(128, 9, 70), 32, false);  // row 70: batch 2 of every epoch is NaN
  auto vl = loader(blobs(64, 8), 32, false);
  const auto& h = t.fit(tl, &vl);
  ASSERT_EQ(h.size(), 3u);
  const auto ls = cap.lines();
  using L = spdlog::level::level_enum;

  EXPECT_EQ(count_lines(ls, L::info, "Trainer: 195 parameters in 4 tensors, AdamW lr 0.01"), 1u);
  EXPECT_EQ(count_lines(ls, L::info, "amp fp16 (compute f16)"), 1u);
  // One info line per epoch with every metric.
  for (std::int64_t e = 0; e < 3; ++e) {
    const std::string head = fmt::format("epoch {}/8 step {} train_loss ", e + 1, 4 * (e + 1));
    ASSERT_EQ(count_lines(ls, L::info, head), 1u) << head;
    for (const auto& [l, m] : ls) {
      if (m.find(head) != 0) continue;
      for (const char* key : {" train_acc 0.", " val_loss ", " val_acc ", " lr 0.01 ",
                              " grad_norm ", " clipped ", " samples/s ", "s skipped_steps "})
        EXPECT_NE(m.find(key), std::string::npos) << key << " in " << m;
      EXPECT_NE(m.find(fmt::format("skipped_steps {}", e + 1)), std::string::npos) << m;
    }
  }
  // Debug lines every 2 optimizer steps: steps 2, 4, ..., 12; step 6 is epoch 1's skipped one
  // (the third batch of each epoch holds the NaN: steps 3, 7, 11).
  EXPECT_EQ(count_lines(ls, L::debug, " grad_norm "), 6u);
  EXPECT_EQ(count_lines(ls, L::debug, "epoch 1/8 step 2 batch 2/4 loss "), 1u);
  EXPECT_EQ(count_lines(ls, L::debug, "(skipped)"), 0u);
  // A warning per skipped step.
  EXPECT_EQ(count_lines(ls, L::warn, "skipped: inf/NaN gradients"), 3u);
  EXPECT_EQ(count_lines(ls, L::warn, "Trainer: step 7 (epoch 1, batch 2) skipped"), 1u);
  // EarlyStopping: the stop and the restore; ModelCheckpoint: best saves (info), last (debug).
  EXPECT_EQ(count_lines(ls, L::info, "EarlyStopping: val_loss did not improve"), 1u);
  EXPECT_EQ(count_lines(ls, L::info, "stopping after epoch 2"), 1u);
  EXPECT_EQ(count_lines(ls, L::info, "EarlyStopping: restored the weights of epoch 0"), 1u);
  EXPECT_EQ(count_lines(ls, L::info, "ModelCheckpoint: epoch 0: val_acc "), 1u);
  EXPECT_EQ(count_lines(ls, L::debug, "ModelCheckpoint: epoch 2 saved to "), 1u);
  EXPECT_EQ(count_lines(ls, L::info, "Trainer: stopped early after 3 epochs, 12 steps (3 skipped)"),
            1u);
  EXPECT_THROW(LoggingCallback(-1), Error);
}

TEST(TrainerLogging, DebugLinesOnlyWhenTheLevelAllowsThem) {
  LogCapture cap;
  cap.logger->set_level(spdlog::level::info);
  auto cfg = base_config();
  cfg.epochs = 2;
  Trainer t(mlp(2), cfg);
  t.add_callback(std::make_shared<LoggingCallback>(1));
  auto tl = loader(blobs(128, 3), 32, true);
  t.fit(tl);
  const auto ls = cap.lines();
  EXPECT_EQ(count_lines(ls, spdlog::level::debug, ""), 0u);
  EXPECT_EQ(count_lines(ls, spdlog::level::info, "train_loss"), 2u);
  EXPECT_EQ(count_lines(ls, spdlog::level::info, "Trainer: done after 2 epochs, 8 steps"), 1u);
}
