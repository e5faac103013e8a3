// Bad inputs raise trainrt::Error naming the op, the argument, and the expected and actual
// values, on every backend; afterwards nothing is corrupted: the inputs are unchanged and a
// following valid call gives the same result as before the error.
//
// Data errors that only the kernel can see (a class index out of range, a BCE input outside
// [0, 1]) are deferred on CUDA: they surface at the next synchronize() or when a result is
// read. error_of() therefore runs the call, reads its loss and synchronizes, and accepts the
// Error from any of the three.
#include <cmath>
#include <functional>
#include <limits>

#include "test_util.hpp"

namespace {

using trainrt::Device;
using trainrt::DType;
using trainrt::Half;
using trainrt::LossResult;
using trainrt::Reduction;
using trainrt::Shape;
using trainrt::Tensor;
using trainrt_test::BackendTest;
using trainrt_test::make_tensor;
using trainrt_test::uniform;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

/// The message of the trainrt::Error raised by `call`, by reading its result, or by the
/// synchronize after it; "" when nothing failed. Any other exception fails the test.
std::string error_of(const std::function<void()>& call, Device dev) {
  try {
    call();
    trainrt::synchronize(dev);
  } catch (const trainrt::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-trainrt exception: " << e.what();
    return e.what();
  }
  return "";
}

/// Runs a loss call and reads its result (what a training loop does).
std::function<void()> run(const std::function<LossResult()>& f) {
  return [f] {
    const LossResult r = f();
    if (r.loss.numel() == 1) {
      (void)r.loss.item();
    } else {
      (void)r.loss.to_double_vector();
    }
    if (r.grad.defined()) (void)r.grad.to_double_vector();
  };
}

#define EXPECT_ERROR(call, ...)                                                        \
  do {                                                                                 \
    const std::string msg_ = error_of(call, dev);                                      \
    EXPECT_FALSE(msg_.empty()) << "no trainrt::Error from " #call;                     \
    for (const std::string& part_ : std::initializer_list<std::string>{__VA_ARGS__}) { \
      EXPECT_NE(msg_.find(part_), std::string::npos)                                   \
          << "'" << part_ << "' missing from the message: " << msg_;                   \
    }                                                                                  \
  } while (0)

/// Values of tensors, to check that a failed call left them alone.
struct Snapshot {
  explicit Snapshot(std::vector<Tensor> ts) : tensors(std::move(ts)) {
    for (const Tensor& t : tensors) values.push_back(t.to_double_vector());
  }
  void expect_unchanged() const {
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      const std::vector<double> now = tensors[i].to_double_vector();
      ASSERT_EQ(now.size(), values[i].size());
      for (std::size_t j = 0; j < now.size(); ++j) {
        EXPECT_TRUE(now[j] == values[i][j] || (std::isnan(now[j]) && std::isnan(values[i][j])))
            << "tensor " << i << " element " << j << " changed";
      }
    }
  }
  std::vector<Tensor> tensors;
  std::vector<std::vector<double>> values;
};

/// A valid call's loss and gradient, to compare before and after errors.
std::vector<double> result_of(const LossResult& r) {
  std::vector<double> v = r.loss.to_double_vector();
  if (r.grad.defined()) {
    const std::vector<double> g = r.grad.to_double_vector();
    v.insert(v.end(), g.begin(), g.end());
  }
  return v;
}

class BadInputTest : public BackendTest {
 protected:
  // A valid cross-entropy problem: 4 rows, 10 classes.
  Tensor logits() const { return make_tensor(uniform(40, -2, 2, 1), {4, 10}, DType::f32, dev); }
  Tensor targets(std::vector<std::int64_t> v = {1, 0, 9, 3}) const {
    const auto n = static_cast<std::int64_t>(v.size());
    return Tensor::from_vector(v, {n}, dev);
  }
  Tensor f32(const std::vector<double>& v, const Shape& s) const {
    return make_tensor(v, s, DType::f32, dev);
  }
};

TEST_P(BadInputTest, ShapeMismatchBetweenInputAndTarget) {
  const Tensor x = f32(uniform(12, 0.1, 0.9, 2), {4, 3});
  const Tensor y = f32(uniform(8, 0.1, 0.9, 3), {4, 2});
  const Tensor y_ok = f32(uniform(12, 0.1, 0.9, 3), {4, 3});
  const Snapshot snap({x, y, y_ok});
  const std::vector<double> before = result_of(trainrt::mse_loss(x, y_ok));
  using Fn = std::function<LossResult(const Tensor&, const Tensor&)>;
  const std::pair<const char*, Fn> losses[] = {
      {"mse_loss", [](auto& a, auto& b) { return trainrt::mse_loss(a, b); }},
      {"l1_loss", [](auto& a, auto& b) { return trainrt::l1_loss(a, b); }},
      {"smooth_l1_loss", [](auto& a, auto& b) { return trainrt::smooth_l1_loss(a, b); }},
      {"huber_loss", [](auto& a, auto& b) { return trainrt::huber_loss(a, b); }},
      {"binary_cross_entropy",
       [](auto& a, auto& b) { return trainrt::binary_cross_entropy(a, b); }},
      {"binary_cross_entropy_with_logits",
       [](auto& a, auto& b) { return trainrt::binary_cross_entropy_with_logits(a, b); }},
      {"sigmoid_focal_loss", [](auto& a, auto& b) { return trainrt::sigmoid_focal_loss(a, b); }},
      {"kl_div", [](auto& a, auto& b) { return trainrt::kl_div(a, b); }},
  };
  for (const auto& l : losses) {
    SCOPED_TRACE(l.first);
    EXPECT_ERROR(run([&] { return l.second(x, y); }), std::string(l.first) + ":", "target",
                 "[4, 2]", "[4, 3]");
    EXPECT_ERROR(run([&] { return l.second(x, x.reshape({12})); }), std::string(l.first) + ":",
                 "[12]", "[4, 3]");
  }
  // cross_entropy / nll_loss: class-index target of the wrong length or rank.
  const Tensor z = logits();
  EXPECT_ERROR(run([&] {
                 return trainrt::cross_entropy(z, targets({1, 2, 3, 4, 5}));
               }),
               "cross_entropy:", "target shape [5]", "batch size 4", "[4]");
  EXPECT_ERROR(run([&] {
                 return trainrt::nll_loss(z, targets({1, 2, 3}));
               }),
               "nll_loss:", "target shape [3]", "[4]");
  EXPECT_ERROR(run([&] {
                 return trainrt::cross_entropy(z, targets().reshape({4, 1}));
               }),
               "cross_entropy:", "target shape [4, 1]");
  // probability targets of the wrong shape
  EXPECT_ERROR(run([&] {
                 return trainrt::cross_entropy(z, f32(uniform(36, 0, 1, 4), {4, 9}));
               }),
               "cross_entropy:", "probability target shape [4, 9]", "[4, 10]");
  snap.expect_unchanged();
  EXPECT_EQ(result_of(trainrt::mse_loss(x, y_ok)), before);
}

TEST_P(BadInputTest, ClassIndexOutOfRange) {
  const Tensor z = logits();
  const Tensor good = targets();
  const Snapshot snap({z, good});
  const std::vector<double> ce_before = result_of(trainrt::cross_entropy(z, good));
  const std::vector<double> nll_before = result_of(trainrt::nll_loss(z, good));
  for (bool i32 : {false, true}) {
    // The message shows the target exactly (it went through a double once: 2^53 + 1 came out
    // as 2^53 and INT64_MAX as INT64_MIN).
    for (std::int64_t bad :
         {std::int64_t{12}, std::int64_t{10}, std::int64_t{1000000}, (std::int64_t{1} << 53) + 1,
          std::numeric_limits<std::int64_t>::max(), std::numeric_limits<std::int64_t>::min()}) {
      if (i32 && bad != static_cast<std::int32_t>(bad)) continue;
      SCOPED_TRACE((i32 ? "i32 " : "i64 ") + std::to_string(bad));
      const std::vector<std::int64_t> v = {1, 0, 9, bad};
      const Tensor t =
          i32 ? Tensor::from_vector(std::vector<std::int32_t>(v.begin(), v.end()), {4}, dev)
              : targets(v);
      const std::string want =
          "target " + std::to_string(bad) + " is out of bounds for 10 classes (row 3)";
      EXPECT_ERROR(run([&] { return trainrt::cross_entropy(z, t); }), "cross_entropy: " + want);
      EXPECT_ERROR(run([&] { return trainrt::nll_loss(z, t); }), "nll_loss: " + want);
      // also without a gradient, with reduction none, with smoothing and weights
      trainrt::CrossEntropyOptions o;
      o.compute_grad = false;
      o.reduction = Reduction::none;
      EXPECT_ERROR(run([&] { return trainrt::cross_entropy(z, t, o); }), want);
      o.label_smoothing = 0.1;
      o.weight = f32(uniform(10, 0.5, 1.5, 5), {10});
      o.reduction = Reduction::sum;
      EXPECT_ERROR(run([&] { return trainrt::cross_entropy(z, t, o); }), want);
      snap.expect_unchanged();
      EXPECT_EQ(result_of(trainrt::cross_entropy(z, good)), ce_before);
      EXPECT_EQ(result_of(trainrt::nll_loss(z, good)), nll_before);
    }
  }
  // The first bad row is reported.
  EXPECT_ERROR(run([&] {
                 return trainrt::cross_entropy(z, targets({1, 11, 9, 12}));
               }),
               "target 11 is out of bounds for 10 classes (row 1)");
}

TEST_P(BadInputTest, NegativeTargetThatIsNotIgnoreIndex) {
  const Tensor z = logits();
  const Tensor t = targets({1, -1, 9, 3});
  const Snapshot snap({z, t});
  EXPECT_ERROR(run([&] { return trainrt::cross_entropy(z, t); }),
               "cross_entropy: target -1 is out of bounds for 10 classes (row 1)");
  EXPECT_ERROR(run([&] { return trainrt::nll_loss(z, t); }),
               "nll_loss: target -1 is out of bounds for 10 classes (row 1)");
  trainrt::CrossEntropyOptions o;
  o.ignore_index = -5;
  EXPECT_ERROR(run([&] { return trainrt::cross_entropy(z, t, o); }), "target -1");
  snap.expect_unchanged();
  // With ignore_index = -1 the same target is valid and ignored.
  o.ignore_index = -1;
  const LossResult r = trainrt::cross_entropy(z, t, o);
  EXPECT_TRUE(std::isfinite(r.loss.item()));
  const std::vector<double> g = r.grad.to_double_vector();
  for (int c = 10; c < 20; ++c) EXPECT_EQ(g[c], 0.0);
}

TEST_P(BadInputTest, WrongTargetDType) {
  const Tensor z = logits();
  const Snapshot snap({z});
  const Tensor u8 = Tensor::from_vector(std::vector<std::uint8_t>{1, 0, 9, 3}, {4}, dev);
  EXPECT_ERROR(run([&] { return trainrt::cross_entropy(z, u8); }), "cross_entropy:", "target",
               "i64 or i32", "got dtype u8");
  EXPECT_ERROR(run([&] { return trainrt::nll_loss(z, u8); }), "nll_loss:", "target",
               "got dtype u8");
  // f32 of shape [N] reads as probabilities, whose shape must be the input's.
  const Tensor f = f32({1, 0, 9, 3}, {4});
  EXPECT_ERROR(run([&] { return trainrt::cross_entropy(z, f); }),
               "cross_entropy:", "probability target shape [4]", "input shape [4, 10]");
  // nll_loss takes class indices only.
  EXPECT_ERROR(run([&] {
                 return trainrt::nll_loss(z, f32(uniform(40, 0, 1, 3), {4, 10}));
               }),
               "nll_loss:", "target", "i64 or i32", "f32");
  // element-wise losses need floating targets
  const Tensor x = f32(uniform(4, 0.1, 0.9, 3), {4});
  const Tensor i64 = Tensor::from_vector(std::vector<std::int64_t>{0, 1, 1, 0}, {4}, dev);
  EXPECT_ERROR(run([&] { return trainrt::mse_loss(x, i64); }), "mse_loss:", "target", "floating",
               "i64");
  EXPECT_ERROR(run([&] { return trainrt::binary_cross_entropy(x, i64); }),
               "binary_cross_entropy:", "target", "i64");
  snap.expect_unchanged();
}

TEST_P(BadInputTest, ProbabilityTargetsWithIgnoreIndex) {
  const Tensor z = logits();
  const Tensor p = f32(std::vector<double>(40, 0.1), {4, 10});
  const Snapshot snap({z, p});
  trainrt::CrossEntropyOptions o;
  o.ignore_index = 0;
  EXPECT_ERROR(run([&] { return trainrt::cross_entropy(z, p, o); }),
               "cross_entropy:", "ignore_index", "probability targets", "ignore_index=0");
  snap.expect_unchanged();
  EXPECT_TRUE(std::isfinite(trainrt::cross_entropy(z, p).loss.item()));
}

TEST_P(BadInputTest, BceInputOutsideZeroOne) {
  const Tensor y = f32({0, 1, 1, 0}, {4});
  const Tensor ok = f32({0.2, 0.9, 0.5, 0.1}, {4});
  const std::vector<double> before = result_of(trainrt::binary_cross_entropy(ok, y));
  struct Case {
    double v;
    const char* shown;
  };
  for (const Case& c : {Case{1.5, "got 1.5 at element 2"}, Case{-0.1, "got -0.1 at element 2"},
                        Case{kNaN, "got nan at element 2"},
                        Case{std::numeric_limits<double>::infinity(), "got inf at element 2"}}) {
    SCOPED_TRACE(c.shown);
    const Tensor p = f32({0.2, 0.9, c.v, 0.1}, {4});
    const Snapshot snap({p, y});
    EXPECT_ERROR(run([&] { return trainrt::binary_cross_entropy(p, y); }),
                 "binary_cross_entropy: input must be in [0, 1]", c.shown);
    trainrt::BCEOptions o;
    o.reduction = Reduction::none;
    o.compute_grad = false;
    o.weight = f32({1, 2, 3, 4}, {4});
    EXPECT_ERROR(run([&] { return trainrt::binary_cross_entropy(p, y, o); }), c.shown);
    snap.expect_unchanged();
    EXPECT_EQ(result_of(trainrt::binary_cross_entropy(ok, y)), before);
  }
  // The first bad element is reported; 0 and 1 themselves are fine.
  EXPECT_ERROR(run([&] {
                 return trainrt::binary_cross_entropy(f32({0, 2, 1, -1}, {4}), y);
               }),
               "got 2 at element 1");
  EXPECT_EQ(error_of(run([&] {
                       return trainrt::binary_cross_entropy(f32({0, 1, 1, 0}, {4}), y);
                     }),
                     dev),
            "");
}

TEST_P(BadInputTest, BadHyperparameters) {
  const Tensor x = f32(uniform(6, -1, 1, 7), {2, 3});
  const Tensor y = f32(uniform(6, -1, 1, 8), {2, 3});
  const Tensor z = logits();
  const Tensor t = targets();
  const Snapshot snap({x, y, z, t});
  const std::vector<double> before = result_of(trainrt::huber_loss(x, y));

  trainrt::SmoothL1Options s;
  for (double beta : {-0.5, kNaN}) {
    s.beta = beta;
    EXPECT_ERROR(run([&] { return trainrt::smooth_l1_loss(x, y, s); }), "smooth_l1_loss:", "beta",
                 ">= 0", beta < 0 ? "got -0.5" : "got nan");
  }
  trainrt::HuberOptions h;
  for (double delta : {0.0, -1.0}) {
    h.delta = delta;
    EXPECT_ERROR(run([&] { return trainrt::huber_loss(x, y, h); }), "huber_loss:", "delta", "> 0",
                 delta == 0 ? "got 0" : "got -1");
  }
  trainrt::FocalOptions f;
  f.gamma = -1;
  EXPECT_ERROR(run([&] { return trainrt::sigmoid_focal_loss(x, y, f); }),
               "sigmoid_focal_loss:", "gamma", ">= 0", "got -1");
  f.gamma = 2;
  f.alpha = 1.5;
  EXPECT_ERROR(run([&] { return trainrt::sigmoid_focal_loss(x, y, f); }),
               "sigmoid_focal_loss:", "alpha", "got 1.5");

  trainrt::CrossEntropyOptions o;
  for (double eps : {1.5, -0.1, kNaN}) {
    o.label_smoothing = eps;
    const std::string got = std::isnan(eps) ? "got nan" : (eps > 1 ? "got 1.5" : "got -0.1");
    EXPECT_ERROR(run([&] { return trainrt::cross_entropy(z, t, o); }),
                 "cross_entropy:", "label_smoothing", "[0, 1]", got);
  }
  o = trainrt::CrossEntropyOptions{};
  o.z_loss = -1e-4;
  EXPECT_ERROR(run([&] { return trainrt::cross_entropy(z, t, o); }), "z_loss", "got -0.0001");
  o = trainrt::CrossEntropyOptions{};
  o.softcap = -2;
  EXPECT_ERROR(run([&] { return trainrt::cross_entropy(z, t, o); }), "softcap", "got -2");
  snap.expect_unchanged();
  EXPECT_EQ(result_of(trainrt::huber_loss(x, y)), before);
}

TEST_P(BadInputTest, WeightOfWrongShape) {
  const Tensor z = logits();
  const Tensor t = targets();
  const Snapshot snap({z, t});
  const std::vector<double> before = result_of(trainrt::cross_entropy(z, t));
  trainrt::CrossEntropyOptions o;
  o.weight = f32(std::vector<double>(9, 1.0), {9});
  EXPECT_ERROR(run([&] { return trainrt::cross_entropy(z, t, o); }), "cross_entropy:", "weight",
               "[10]", "got [9]");
  o.weight = f32(std::vector<double>(10, 1.0), {1, 10});
  EXPECT_ERROR(run([&] { return trainrt::cross_entropy(z, t, o); }), "weight", "got [1, 10]");
  o.weight = Tensor::from_vector(std::vector<std::int64_t>(10, 1), {10}, dev);
  EXPECT_ERROR(run([&] { return trainrt::cross_entropy(z, t, o); }), "weight", "floating", "i64");
  trainrt::NllLossOptions n;
  n.weight = f32(std::vector<double>(11, 1.0), {11});
  EXPECT_ERROR(run([&] { return trainrt::nll_loss(z, t, n); }), "nll_loss:", "weight", "[10]",
               "got [11]");

  // element-wise: the input's shape or its last dimension
  const Tensor p = f32(uniform(12, 0.1, 0.9, 3), {4, 3});
  const Tensor y = f32(uniform(12, 0, 1, 4), {4, 3});
  trainrt::BCEOptions b;
  b.weight = f32(std::vector<double>(5, 1.0), {5});
  EXPECT_ERROR(run([&] { return trainrt::binary_cross_entropy(p, y, b); }),
               "binary_cross_entropy:", "weight", "[4, 3]", "[3]", "got [5]");
  b.weight = f32(std::vector<double>(4, 1.0), {4, 1});
  EXPECT_ERROR(run([&] { return trainrt::binary_cross_entropy(p, y, b); }), "weight", "got [4, 1]");
  trainrt::BCEWithLogitsOptions bl;
  bl.weight = f32(std::vector<double>(4, 1.0), {4});
  EXPECT_ERROR(run([&] { return trainrt::binary_cross_entropy_with_logits(p, y, bl); }),
               "binary_cross_entropy_with_logits:", "weight", "got [4]");
  snap.expect_unchanged();
  EXPECT_EQ(result_of(trainrt::cross_entropy(z, t)), before);
}

TEST_P(BadInputTest, PosWeightOfWrongShape) {
  const Tensor x = f32(uniform(12, -2, 2, 3), {4, 3});
  const Tensor y = f32(uniform(12, 0, 1, 4), {4, 3});
  const Snapshot snap({x, y});
  trainrt::BCEWithLogitsOptions o;
  for (const Shape& s : {Shape{4}, Shape{12}, Shape{1, 3}, Shape{1}}) {
    SCOPED_TRACE(trainrt::shape_str(s));
    o.pos_weight =
        f32(std::vector<double>(static_cast<std::size_t>(trainrt::shape_numel(s)), 2.0), s);
    EXPECT_ERROR(run([&] { return trainrt::binary_cross_entropy_with_logits(x, y, o); }),
                 "binary_cross_entropy_with_logits:", "pos_weight", "[3]",
                 "got " + trainrt::shape_str(s));
  }
  snap.expect_unchanged();
  o.pos_weight = f32({1, 2, 3}, {3});
  EXPECT_TRUE(std::isfinite(trainrt::binary_cross_entropy_with_logits(x, y, o).loss.item()));
}

TEST_P(BadInputTest, TensorsOnDifferentDevices) {
  std::string why;
  if (!trainrt::cuda_available(&why)) GTEST_SKIP() << "needs a second device (CUDA): " << why;
  const Device other = dev.is_cpu() ? Device::cuda(0) : Device::cpu();
  const Tensor z = logits();
  const Tensor t_other = targets().to(other);
  const std::string here = dev.str(), there = other.str();
  EXPECT_ERROR(run([&] { return trainrt::cross_entropy(z, t_other); }),
               "cross_entropy:", "target is on " + there, "input is on " + here);
  trainrt::CrossEntropyOptions o;
  o.weight = f32(std::vector<double>(10, 1.0), {10}).to(other);
  EXPECT_ERROR(run([&] { return trainrt::cross_entropy(z, targets(), o); }),
               "weight is on " + there);
  o = trainrt::CrossEntropyOptions{};
  o.grad_scale_tensor = Tensor::from_vector(std::vector<float>{1.0f}, {}, other);
  EXPECT_ERROR(run([&] { return trainrt::cross_entropy(z, targets(), o); }),
               "grad_scale_tensor is on " + there);
  const Tensor x = f32(uniform(6, -1, 1, 1), {2, 3});
  EXPECT_ERROR(run([&] { return trainrt::mse_loss(x, x.to(other)); }),
               "mse_loss:", "target is on " + there);
  trainrt::BCEWithLogitsOptions b;
  b.pos_weight = f32({1, 1, 1}, {3}).to(other);
  EXPECT_ERROR(run([&] { return trainrt::binary_cross_entropy_with_logits(x, x, b); }),
               "pos_weight is on " + there);
  const Tensor y = trainrt::softmax(x);
  EXPECT_ERROR([&] { (void)trainrt::softmax_backward(y, x.to(other)).to_double_vector(); },
               "softmax_backward:", "grad_output is on " + there);
  EXPECT_TRUE(std::isfinite(trainrt::cross_entropy(z, targets()).loss.item()));
}

TEST_P(BadInputTest, CrossEntropyInputNotTwoD) {
  const Tensor t = targets({1, 0});
  for (const Shape& s : {Shape{2, 3, 4}, Shape{10}, Shape{}}) {
    SCOPED_TRACE(trainrt::shape_str(s));
    const Tensor x = f32(uniform(static_cast<std::size_t>(trainrt::shape_numel(s)), -1, 1, 2), s);
    EXPECT_ERROR(run([&] { return trainrt::cross_entropy(x, t); }), "cross_entropy:", "input",
                 "2-D [N, C]", "got shape " + trainrt::shape_str(s));
    EXPECT_ERROR(run([&] { return trainrt::nll_loss(x, t); }), "nll_loss:", "2-D",
                 trainrt::shape_str(s));
  }
  const Tensor ok = f32(uniform(6, -1, 1, 2), {2, 3});
  EXPECT_TRUE(std::isfinite(trainrt::cross_entropy(ok, t).loss.item()));
}

TEST_P(BadInputTest, BatchmeanOnlyForKlDiv) {
  const Tensor x = f32(uniform(6, 0.1, 0.9, 2), {2, 3});
  const Tensor z = logits();
  const Tensor t = targets();
  trainrt::LossOptions o;
  o.reduction = Reduction::batchmean;
  const std::string want = "reduction must be none, mean or sum, got batchmean";
  EXPECT_ERROR(run([&] { return trainrt::mse_loss(x, x, o); }), "mse_loss: " + want);
  EXPECT_ERROR(run([&] { return trainrt::l1_loss(x, x, o); }), "l1_loss: " + want);
  trainrt::BCEOptions b;
  b.reduction = Reduction::batchmean;
  EXPECT_ERROR(run([&] { return trainrt::binary_cross_entropy(x, x, b); }),
               "binary_cross_entropy: " + want);
  trainrt::CrossEntropyOptions c;
  c.reduction = Reduction::batchmean;
  EXPECT_ERROR(run([&] { return trainrt::cross_entropy(z, t, c); }), "cross_entropy: " + want);
  trainrt::NllLossOptions n;
  n.reduction = Reduction::batchmean;
  EXPECT_ERROR(run([&] { return trainrt::nll_loss(z, t, n); }), "nll_loss: " + want);
  // kl_div accepts it
  trainrt::KLDivOptions k;
  k.reduction = Reduction::batchmean;
  EXPECT_TRUE(std::isfinite(trainrt::kl_div(x, x, k).loss.item()));
}

TEST_P(BadInputTest, GradScaleTensorNotOneF32) {
  const Tensor z = logits();
  const Tensor t = targets();
  const Snapshot snap({z, t});
  trainrt::CrossEntropyOptions o;
  o.grad_scale_tensor = Tensor::from_vector(std::vector<double>{2.0}, {}, dev);
  EXPECT_ERROR(run([&] { return trainrt::cross_entropy(z, t, o); }),
               "cross_entropy:", "grad_scale_tensor", "one f32 element", "f64");
  o.grad_scale_tensor = Tensor::from_vector(std::vector<float>{2.0f, 3.0f}, {2}, dev);
  EXPECT_ERROR(run([&] { return trainrt::cross_entropy(z, t, o); }), "grad_scale_tensor",
               "one f32 element", "[2] f32");
  trainrt::LossOptions m;
  m.grad_scale_tensor = Tensor::zeros({0}, DType::f32, dev);
  EXPECT_ERROR(run([&] { return trainrt::mse_loss(z, z, m); }), "mse_loss:", "grad_scale_tensor",
               "[0] f32");
  m.grad_scale_tensor = Tensor::from_vector(std::vector<Half>{Half{0x3c00}}, {1}, dev);
  EXPECT_ERROR(run([&] { return trainrt::mse_loss(z, z, m); }), "grad_scale_tensor", "f16");
  snap.expect_unchanged();
  // a one-element f32 of shape [1] is fine
  m.grad_scale_tensor = Tensor::from_vector(std::vector<float>{2.0f}, {1}, dev);
  EXPECT_TRUE(std::isfinite(trainrt::mse_loss(z, z, m).loss.item()));
}

TEST_P(BadInputTest, SoftmaxBadInputs) {
  const Tensor s = f32({1.0}, {});
  EXPECT_ERROR([&] { (void)trainrt::softmax(s).numel(); }, "softmax:", "at least 1 dimension",
               "0-d");
  EXPECT_ERROR([&] { (void)trainrt::log_softmax(s).numel(); }, "log_softmax:", "0-d");
  EXPECT_ERROR([&] { (void)trainrt::softmax_backward(s, s).numel(); }, "softmax_backward:", "0-d");
  const Tensor i = Tensor::from_vector(std::vector<std::int32_t>{1, 2, 3}, {3}, dev);
  EXPECT_ERROR([&] { (void)trainrt::softmax(i).numel(); }, "softmax:", "floating", "got i32");
  EXPECT_ERROR([&] { (void)trainrt::log_softmax(Tensor()).numel(); }, "log_softmax:", "undefined");
  const Tensor x = f32(uniform(6, -1, 1, 3), {2, 3});
  const Tensor y = trainrt::softmax(x);
  EXPECT_ERROR(
      [&] {
        (void)trainrt::softmax_backward(y, x.reshape({3, 2})).numel();
      },
      "softmax_backward:", "grad_output", "[3, 2]", "[2, 3]");
  EXPECT_ERROR([&] { (void)trainrt::log_softmax_backward(y, x.to(DType::f64)).numel(); },
               "log_softmax_backward:", "f64", "f32");
  EXPECT_ERROR([&] { (void)trainrt::softmax_backward(y, Tensor()).numel(); }, "grad_output",
               "undefined");
  EXPECT_EQ(trainrt::softmax(x).to_double_vector(), y.to_double_vector());
}

TEST_P(BadInputTest, IntegerOrUndefinedInputToALoss) {
  const Tensor i = Tensor::from_vector(std::vector<std::int32_t>{1, 2, 3, 4}, {2, 2}, dev);
  const Tensor f = f32({1, 2, 3, 4}, {2, 2});
  const std::string want = "input must have a floating dtype (f32, f16, bf16, f64), got i32";
  EXPECT_ERROR(run([&] { return trainrt::mse_loss(i, f); }), "mse_loss: " + want);
  EXPECT_ERROR(run([&] { return trainrt::kl_div(i, f); }), "kl_div: " + want);
  EXPECT_ERROR(run([&] {
                 return trainrt::cross_entropy(i, targets({0, 1}));
               }),
               "cross_entropy: " + want);
  const Tensor u8 = Tensor::from_vector(std::vector<std::uint8_t>{0, 1, 1, 0}, {2, 2}, dev);
  EXPECT_ERROR(run([&] { return trainrt::binary_cross_entropy(u8, f); }),
               "binary_cross_entropy:", "input", "got u8");
  EXPECT_ERROR(run([&] { return trainrt::mse_loss(Tensor(), f); }), "mse_loss:", "input",
               "undefined");
  EXPECT_ERROR(run([&] { return trainrt::mse_loss(f, Tensor()); }), "mse_loss:", "target",
               "undefined");
  EXPECT_ERROR(run([&] { return trainrt::cross_entropy(f, Tensor()); }), "cross_entropy:", "target",
               "undefined");
  EXPECT_EQ(i.to_vector<std::int32_t>(), (std::vector<std::int32_t>{1, 2, 3, 4}));
  EXPECT_EQ(trainrt::mse_loss(f, f).loss.item(), 0.0);
}

TRAINRT_INSTANTIATE_BACKENDS(BadInputTest);

}  // namespace
