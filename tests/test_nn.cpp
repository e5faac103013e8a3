// Layers (nn): forward vs float64 references written here, gradients vs finite differences in
// f64, Linear init (range, determinism, the Random123 Philox stream), Dropout masks (the
// Random123 stream, determinism, scale, eval identity, p = 0 / 1), Flatten, Sequential,
// a few SGD steps reducing the loss, a user-defined Module, CUDA parity and bad inputs.
#include <Random123/philox.h>

#include <cmath>
#include <functional>
#include <memory>

#include "test_util.hpp"
#include "trainrt/nn.hpp"

namespace {

using trainrt::Device;
using trainrt::DType;
using trainrt::Error;
using trainrt::Shape;
using trainrt::StateDict;
using trainrt::Tensor;
namespace nn = trainrt::nn;
using trainrt_test::make_tensor;
using trainrt_test::uniform;

using Vec = std::vector<double>;

/// y = x W^T + b in double.
Vec linear_ref(const Vec& x, const Vec& w, const Vec& b, int64_t rows, int64_t in, int64_t out) {
  Vec y(static_cast<size_t>(rows * out));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double s = b.empty() ? 0.0 : b[o];
      for (int64_t i = 0; i < in; ++i) s += x[r * in + i] * w[o * in + i];
      y[r * out + o] = s;
    }
  }
  return y;
}

double act_ref(int kind, double x) {
  switch (kind) {
    case 0: return x > 0 ? x : 0.0;
    case 1: return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    case 2: return std::tanh(x);
    default: return 1.0 / (1.0 + std::exp(-x));
  }
}

std::shared_ptr<nn::Module> make_act(int kind) {
  switch (kind) {
    case 0: return std::make_shared<nn::ReLU>();
    case 1: return std::make_shared<nn::GELU>();
    case 2: return std::make_shared<nn::Tanh>();
    default: return std::make_shared<nn::Sigmoid>();
  }
}

void expect_close(const Vec& got, const Vec& want, double rtol, double atol, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], atol + rtol * std::abs(want[i])) << what << " at " << i;
  }
}

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

/// Central finite differences of L(v) = sum(f(v) * r) with respect to each element of v.
Vec finite_diff(Vec v, const std::function<Vec(const Vec&)>& f, const Vec& r, double h = 1e-6) {
  Vec g(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const double o = v[i];
    v[i] = o + h;
    const double lp = dot(f(v), r);
    v[i] = o - h;
    const double lm = dot(f(v), r);
    v[i] = o;
    g[i] = (lp - lm) / (2 * h);
  }
  return g;
}

/// The Random123 Philox4x32-10 word i of (key seed, counter (i/4, c2)), as uniform in [0, 1).
double philox_u(uint64_t seed, uint32_t c2, uint64_t c3, int64_t i) {
  r123::Philox4x32 gen;
  const r123::Philox4x32::key_type key = {{uint32_t(seed), uint32_t(seed >> 32)}};
  const uint64_t g = uint64_t(i) / 4;
  const r123::Philox4x32::ctr_type ctr = {{uint32_t(g), uint32_t(g >> 32), c2, uint32_t(c3)}};
  return double(gen(ctr, key)[size_t(i % 4)] >> 8) * 0x1p-24;
}

class NnTest : public trainrt_test::BackendTest {};
TRAINRT_INSTANTIATE_BACKENDS(NnTest);

// ---- Linear -------------------------------------------------------------------------------

TEST_P(NnTest, LinearForwardMatchesReference) {
  for (DType dt : {DType::f32, DType::f64}) {
    for (bool bias : {true, false}) {
      nn::Linear lin(7, 5, bias, 42, dt);
      lin.to(dev);
      const Vec w = lin.weight().value().to_double_vector();
      const Vec b = bias ? lin.bias().value().to_double_vector() : Vec{};
      const Vec x = uniform(3 * 2 * 7, -2, 2, 1);
      Tensor y = lin.forward(make_tensor(x, {3, 2, 7}, dt, dev));
      EXPECT_EQ(y.shape(), (Shape{3, 2, 5}));
      EXPECT_EQ(y.dtype(), dt);
      expect_close(y.to_double_vector(), linear_ref(trainrt_test::rounded(x, dt), w, b, 6, 7, 5),
                   dt == DType::f64 ? 1e-12 : 1e-5, dt == DType::f64 ? 1e-12 : 1e-5, "y");
    }
  }
}

TEST_P(NnTest, LinearGradientsMatchFiniteDifferences) {
  const int64_t rows = 4, in = 6, out = 3;
  nn::Linear lin(in, out, true, 7, DType::f64);
  lin.to(dev);
  const Vec w = lin.weight().value().to_double_vector();
  const Vec b = lin.bias().value().to_double_vector();
  const Vec x = uniform(rows * in, -1, 1, 2);
  const Vec r = uniform(rows * out, -1, 1, 3);  // L = sum(y * r): dy = r
  lin.forward(make_tensor(x, {rows, in}, DType::f64, dev));
  const Vec dx = lin.backward(make_tensor(r, {rows, out}, DType::f64, dev)).to_double_vector();
  const Vec dw = lin.weight().grad().to_double_vector();
  const Vec db = lin.bias().grad().to_double_vector();
  expect_close(dx,
               finite_diff(
                   x, [&](const Vec& v) { return linear_ref(v, w, b, rows, in, out); }, r),
               1e-7, 1e-8, "dx");
  expect_close(dw,
               finite_diff(
                   w, [&](const Vec& v) { return linear_ref(x, v, b, rows, in, out); }, r),
               1e-7, 1e-8, "dW");
  expect_close(db,
               finite_diff(
                   b, [&](const Vec& v) { return linear_ref(x, w, v, rows, in, out); }, r),
               1e-7, 1e-8, "db");

  // Gradients accumulate until zero_grad, as in PyTorch.
  lin.forward(make_tensor(x, {rows, in}, DType::f64, dev));
  lin.backward(make_tensor(r, {rows, out}, DType::f64, dev));
  const Vec dw2 = lin.weight().grad().to_double_vector();
  for (size_t i = 0; i < dw.size(); ++i) EXPECT_NEAR(dw2[i], 2 * dw[i], 1e-12);
  lin.zero_grad();
  EXPECT_FALSE(lin.weight().has_grad());
  EXPECT_FALSE(lin.bias().has_grad());
}

TEST_P(NnTest, LinearF32GradientsMatchDoubleReference) {
  const int64_t rows = 33, in = 20, out = 9;
  nn::Linear lin(in, out, true, 11);
  lin.to(dev);
  const Vec w = lin.weight().value().to_double_vector();
  const Vec x = trainrt_test::rounded(uniform(rows * in, -1, 1, 4), DType::f32);
  const Vec r = trainrt_test::rounded(uniform(rows * out, -1, 1, 5), DType::f32);
  lin.forward(make_tensor(x, {rows, in}, DType::f32, dev));
  const Vec dx = lin.backward(make_tensor(r, {rows, out}, DType::f32, dev)).to_double_vector();
  Vec dx_ref(rows * in, 0.0), dw_ref(out * in, 0.0), db_ref(out, 0.0);
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t o = 0; o < out; ++o) {
      db_ref[o] += r[i * out + o];
      for (int64_t k = 0; k < in; ++k) {
        dx_ref[i * in + k] += r[i * out + o] * w[o * in + k];
        dw_ref[o * in + k] += r[i * out + o] * x[i * in + k];
      }
    }
  }
  expect_close(dx, dx_ref, 1e-5, 1e-5, "dx");
  expect_close(lin.weight().grad().to_double_vector(), dw_ref, 1e-5, 1e-5, "dW");
  expect_close(lin.bias().grad().to_double_vector(), db_ref, 1e-5, 1e-5, "db");
  EXPECT_EQ(lin.weight().grad().dtype(), DType::f32);
}

// Large enough for the CPU GEMM to be split across the OpenMP team, by rows and by columns.
TEST_P(NnTest, LinearLargeGemmsMatchDoubleReference) {
  for (auto dims : {std::vector<int64_t>{64, 300, 200}, std::vector<int64_t>{3, 2000, 500}}) {
    const int64_t rows = dims[0], in = dims[1], out = dims[2];
    nn::Linear lin(in, out, true, 13);
    lin.to(dev);
    const Vec w = lin.weight().value().to_double_vector();
    const Vec b = lin.bias().value().to_double_vector();
    const Vec x = trainrt_test::rounded(uniform(rows * in, -1, 1, 20), DType::f32);
    const Vec r = trainrt_test::rounded(uniform(rows * out, -1, 1, 21), DType::f32);
    const Vec y = lin.forward(make_tensor(x, {rows, in}, DType::f32, dev)).to_double_vector();
    expect_close(y, linear_ref(x, w, b, rows, in, out), 1e-4, 1e-4, "y");
    const Vec dx = lin.backward(make_tensor(r, {rows, out}, DType::f32, dev)).to_double_vector();
    const Vec dw = lin.weight().grad().to_double_vector();
    for (int64_t i = 0; i < rows; i += 7) {
      for (int64_t k = 0; k < in; k += 13) {
        double s = 0;
        for (int64_t o = 0; o < out; ++o) s += r[i * out + o] * w[o * in + k];
        ASSERT_NEAR(dx[i * in + k], s, 1e-4) << i << "," << k;
      }
    }
    for (int64_t o = 0; o < out; o += 11) {
      for (int64_t k = 0; k < in; k += 17) {
        double s = 0;
        for (int64_t i = 0; i < rows; ++i) s += r[i * out + o] * x[i * in + k];
        ASSERT_NEAR(dw[o * in + k], s, 1e-4) << o << "," << k;
      }
    }
  }
}

TEST_P(NnTest, LinearMixedPrecision) {
  for (DType dt : {DType::f16, DType::bf16}) {
    const int64_t rows = 8, in = 16, out = 4;
    nn::Linear lin(in, out, true, 3);
    lin.to(dev);
    const Vec w = trainrt_test::rounded(lin.weight().value().to_double_vector(), dt);
    const Vec b = lin.bias().value().to_double_vector();
    const Vec x = trainrt_test::rounded(uniform(rows * in, -1, 1, 6), dt);
    Tensor y = lin.forward(make_tensor(x, {rows, in}, dt, dev));
    EXPECT_EQ(y.dtype(), dt);
    expect_close(y.to_double_vector(), linear_ref(x, w, b, rows, in, out),
                 4 * trainrt_test::tol(dt), 4 * trainrt_test::tol(dt), "y");
    Tensor dx = lin.backward(make_tensor(Vec(rows * out, 1.0), {rows, out}, dt, dev));
    EXPECT_EQ(dx.dtype(), dt);
    EXPECT_EQ(lin.weight().grad().dtype(), DType::f32);
    const Vec dw = lin.weight().grad().to_double_vector();
    for (int64_t o = 0; o < out; ++o) {
      for (int64_t k = 0; k < in; ++k) {
        double s = 0;
        for (int64_t i = 0; i < rows; ++i) s += x[i * in + k];
        EXPECT_NEAR(dw[o * in + k], s, 1e-5);
      }
    }
    const Vec db = lin.bias().grad().to_double_vector();
    for (double v : db) EXPECT_DOUBLE_EQ(v, double(rows));
  }
}

// A layer too large for memory is an Error, not std::bad_alloc: here 2^30 weights (8 GiB of
// double init values) with 256 MiB to spare, in a child process (test_util.hpp).
TEST(NnLinear, OutOfMemoryIsAnError) {
  const std::string got = trainrt_test::outcome_under_memory_limit([] { nn::Linear(32768, 32768); },
                                                                   std::size_t{256} << 20);
  if (got.empty()) GTEST_SKIP() << "no address-space limit under AddressSanitizer";
  EXPECT_EQ(got.rfind("error: Linear: out of memory for a parameter of shape [32768, 32768]", 0),
            0u)
      << got;
}

TEST(NnLinear, InitRangeDeterminismAndPhiloxStream) {
  const int64_t in = 50, out = 40;
  nn::Linear a(in, out, true, 1234), b(in, out, true, 1234), c(in, out, true, 1235);
  const Vec wa = a.weight().value().to_double_vector();
  const Vec ba = a.bias().value().to_double_vector();
  EXPECT_EQ(wa, b.weight().value().to_double_vector());
  EXPECT_EQ(ba, b.bias().value().to_double_vector());
  EXPECT_NE(wa, c.weight().value().to_double_vector());
  const double bound = 1.0 / std::sqrt(double(in));
  double mean = 0, lo = 1, hi = -1;
  for (double v : wa) {
    EXPECT_GE(v, -bound);
    EXPECT_LT(v, bound);
    mean += v;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  mean /= double(wa.size());
  EXPECT_NEAR(mean, 0.0, 0.02);
  EXPECT_LT(lo, -0.9 * bound);
  EXPECT_GT(hi, 0.9 * bound);
  for (double v : ba) EXPECT_LE(std::abs(v), bound);
  // The values are Random123's philox4x32 stream (weight: stream 0, bias: stream 1).
  for (int64_t i : {0, 1, 2, 3, 4, 7, 1999}) {
    EXPECT_EQ(wa[i], double(float(bound * (2 * philox_u(1234, 0, 0, i) - 1)))) << i;
  }
  for (int64_t i : {0, 5, 39}) {
    EXPECT_EQ(ba[i], double(float(bound * (2 * philox_u(1234, 1, 0, i) - 1)))) << i;
  }
  // manual_seed fixes the seeds of modules built without one.
  nn::manual_seed(9);
  nn::Linear d(3, 2);
  nn::manual_seed(9);
  nn::Linear e(3, 2);
  EXPECT_EQ(d.weight().value().to_double_vector(), e.weight().value().to_double_vector());
  nn::Linear f(3, 2);
  EXPECT_NE(e.weight().value().to_double_vector(), f.weight().value().to_double_vector());
  // f64 parameters hold the same draws unrounded.
  nn::Linear g64(in, out, true, 1234, DType::f64);
  EXPECT_EQ(g64.weight().value().to_double_vector()[5], bound * (2 * philox_u(1234, 0, 0, 5) - 1));
}

// ---- Activations --------------------------------------------------------------------------

TEST_P(NnTest, ActivationsForwardMatchReference) {
  Vec x = uniform(1000, -6, 6, 8);
  x[0] = 0.0;
  x[1] = -0.0;
  for (int kind = 0; kind < 4; ++kind) {
    for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16}) {
      auto m = make_act(kind);
      const Vec xr = trainrt_test::rounded(x, dt);
      Tensor y = m->forward(make_tensor(x, {10, 100}, dt, dev));
      EXPECT_EQ(y.shape(), (Shape{10, 100}));
      EXPECT_EQ(y.dtype(), dt);
      Vec want(x.size());
      for (size_t i = 0; i < x.size(); ++i) want[i] = act_ref(kind, xr[i]);
      want = trainrt_test::rounded(want, dt);
      const double t = dt == DType::f64 ? 1e-14 : dt == DType::f32 ? 1e-6 : trainrt_test::tol(dt);
      expect_close(y.to_double_vector(), want, t, t, "activation");
    }
  }
}

TEST_P(NnTest, ActivationGradientsMatchFiniteDifferences) {
  Vec x = uniform(64, -4, 4, 9);
  for (double& v : x) {
    if (std::abs(v) < 1e-3) v = 0.5;  // keep ReLU's kink out of the differences
  }
  const Vec r = uniform(64, -1, 1, 10);
  for (int kind = 0; kind < 4; ++kind) {
    auto m = make_act(kind);
    m->forward(make_tensor(x, {8, 8}, DType::f64, dev));
    const Vec dx = m->backward(make_tensor(r, {8, 8}, DType::f64, dev)).to_double_vector();
    const Vec fd = finite_diff(
        x,
        [&](const Vec& v) {
          Vec y(v.size());
          for (size_t i = 0; i < v.size(); ++i) y[i] = act_ref(kind, v[i]);
          return y;
        },
        r);
    expect_close(dx, fd, 1e-6, 1e-8, "activation dx");
    // f32 backward agrees with the f64 one.
    auto m32 = make_act(kind);
    m32->forward(make_tensor(x, {8, 8}, DType::f32, dev));
    const Vec dx32 = m32->backward(make_tensor(r, {8, 8}, DType::f32, dev)).to_double_vector();
    expect_close(dx32, dx, 1e-5, 1e-6, "activation dx f32");
  }
}

// ---- Dropout ------------------------------------------------------------------------------

TEST_P(NnTest, DropoutMaskIsRandom123PhiloxScaledAndDeterministic) {
  const int64_t n = 10007;  // not a multiple of 4
  const double p = 0.3;
  nn::Dropout d(p, 77);
  d.to(dev);
  const Tensor ones = make_tensor(Vec(n, 1.0), {n}, DType::f32, dev);
  const Vec y0 = d.forward(ones).to_double_vector();
  const float scale = float(1.0 / (1.0 - p));
  int64_t dropped = 0;
  for (int64_t i = 0; i < n; ++i) {
    const bool keep = float(philox_u(77, 0, 0, i)) >= float(p);
    ASSERT_EQ(y0[i], keep ? double(scale) : 0.0) << i;
    dropped += keep ? 0 : 1;
  }
  EXPECT_NEAR(double(dropped) / n, p, 0.02);
  // Backward regenerates the same mask.
  const Vec r = uniform(n, -1, 1, 11);
  const Vec dx = d.backward(make_tensor(r, {n}, DType::f32, dev)).to_double_vector();
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(dx[i], y0[i] == 0 ? 0.0 : double(float(r[i]) * scale)) << i;
  }
  // The next call uses the next offset: a different mask; the same seed and offset repeat it.
  EXPECT_EQ(d.offset(), 1u);
  const Vec y1 = d.forward(ones).to_double_vector();
  EXPECT_NE(y0, y1);
  nn::Dropout d2(p, 77);
  d2.to(dev);
  EXPECT_EQ(d2.forward(ones).to_double_vector(), y0);
  d2.set_offset(1);
  EXPECT_EQ(d2.forward(ones).to_double_vector(), y1);
}

TEST_P(NnTest, DropoutEvalAndEdgeCases) {
  const Vec x = uniform(100, -1, 1, 12);
  const Tensor t = make_tensor(x, {4, 25}, DType::f32, dev);
  nn::Dropout d(0.5, 1);
  d.to(dev);
  d.eval();
  EXPECT_EQ(d.forward(t).to_double_vector(), trainrt_test::rounded(x, DType::f32));
  EXPECT_EQ(d.backward(t).to_double_vector(), trainrt_test::rounded(x, DType::f32));
  EXPECT_EQ(d.offset(), 0u);
  nn::Dropout zero(0.0, 1);
  EXPECT_EQ(zero.forward(t).to_double_vector(), trainrt_test::rounded(x, DType::f32));
  nn::Dropout one(1.0, 1);
  one.to(dev);
  for (double v : one.forward(t).to_double_vector()) EXPECT_EQ(v, 0.0);
  for (double v : one.backward(t).to_double_vector()) EXPECT_EQ(v, 0.0);
  // f16 / bf16 / f64 inputs use the same mask.
  nn::Dropout a(0.4, 5), b(0.4, 5);
  a.to(dev);
  b.to(dev);
  const Vec ya = a.forward(make_tensor(Vec(64, 1.0), {64}, DType::f64, dev)).to_double_vector();
  const Vec yb = b.forward(make_tensor(Vec(64, 1.0), {64}, DType::bf16, dev)).to_double_vector();
  for (size_t i = 0; i < ya.size(); ++i) EXPECT_EQ(ya[i] == 0, yb[i] == 0) << i;
  EXPECT_THROW(nn::Dropout(-0.1), Error);
  EXPECT_THROW(nn::Dropout(1.5), Error);
}

namespace {
/// The message of the trainrt::Error that f throws ("" when it throws none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return std::string();
}
}  // namespace

// Non-finite values go through as in PyTorch (found by a differential fuzz, 2026-12-04): ReLU's
// backward is threshold_backward (0 where relu(x) <= 0, else dy), so a NaN x passes dy; dropout
// multiplies by the mask value, so a dropped inf or NaN is NaN, not 0, forward and backward.
TEST_P(NnTest, NonFiniteValuesThroughReluAndDropoutAsPyTorch) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16}) {
    SCOPED_TRACE(trainrt::dtype_name(dt));
    nn::ReLU relu;
    relu.to(dev);
    const Vec y = relu.forward(make_tensor({nan, 1, 0, -1}, {4}, dt, dev)).to_double_vector();
    EXPECT_TRUE(std::isnan(y[0]));
    EXPECT_EQ(Vec(y.begin() + 1, y.end()), (Vec{1, 0, 0}));
    EXPECT_EQ(relu.backward(make_tensor(Vec(4, 0.5), {4}, dt, dev)).to_double_vector(),
              (Vec{0.5, 0.5, 0, 0}));

    Vec x(64);
    for (size_t i = 0; i < x.size(); ++i)
      x[i] = i % 4 == 0 ? inf : i % 4 == 1 ? nan : i % 4 == 2 ? -inf : 1.0;
    nn::Dropout ones(0.5, 1), d(0.5, 1), one(1.0, 1);
    for (nn::Dropout* m : {&ones, &d, &one}) m->to(dev);
    const Vec kept = ones.forward(make_tensor(Vec(64, 1.0), {64}, dt, dev)).to_double_vector();
    const Vec out = d.forward(make_tensor(x, {64}, dt, dev)).to_double_vector();
    const Vec back = d.backward(make_tensor(Vec(64, nan), {64}, dt, dev)).to_double_vector();
    const Vec all = one.forward(make_tensor(x, {64}, dt, dev)).to_double_vector();
    int dropped_nonfinite = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const bool keep = kept[i] != 0.0;
      if (keep) {
        EXPECT_TRUE(std::isnan(x[i]) ? std::isnan(out[i]) : out[i] == 2.0 * x[i]) << i;
      } else if (!std::isfinite(x[i])) {
        EXPECT_TRUE(std::isnan(out[i])) << i << " " << out[i];
        ++dropped_nonfinite;
      } else {
        EXPECT_EQ(out[i], 0.0) << i;
      }
      EXPECT_TRUE(std::isnan(back[i])) << i;
      EXPECT_TRUE(std::isfinite(x[i]) ? all[i] == 0.0 : std::isnan(all[i])) << i;
    }
    EXPECT_GT(dropped_nonfinite, 0);
  }
}

TEST_P(NnTest, DropoutSeedAndOffsetAreExtraStateForCheckpoints) {
  const Tensor ones = make_tensor(Vec(96, 1.0), {96}, DType::f32, dev);
  auto make = [&](std::uint64_t seed) {
    auto m = std::make_shared<nn::Sequential>(std::initializer_list<std::shared_ptr<nn::Module>>{
        std::make_shared<nn::Dropout>(0.3, seed), std::make_shared<nn::ReLU>(),
        std::make_shared<nn::Dropout>(0.6, seed + 1)});
    m->to(dev);
    return m;
  };
  auto a = make(0xFEDCBA9876543210ull);  // above 2^53: kept exactly
  for (int i = 0; i < 3; ++i) a->forward(ones);
  const StateDict s = a->extra_states();
  EXPECT_EQ(s.strings.at("0.seed"), "18364758544493064720");
  EXPECT_EQ(s.strings.at("0.offset"), "3");
  EXPECT_EQ(s.strings.at("2.seed"), "18364758544493064721");
  EXPECT_EQ(s.strings.size(), 4u);
  EXPECT_TRUE(s.tensors.empty() && s.scalars.empty());

  auto b = make(5);
  b->load_extra_states(s);
  EXPECT_EQ(b->forward(ones).to_double_vector(), a->forward(ones).to_double_vector());
  EXPECT_EQ(b->extra_states().strings, a->extra_states().strings);

  // Bad states throw and change nothing, in any module.
  auto c = make(9);
  const StateDict before = c->extra_states();
  StateDict missing = s;
  missing.strings.erase("2.offset");
  StateDict extra = s;
  extra.strings["1.seed"] = "4";  // ReLU keeps no state
  StateDict stray = s;
  stray.scalars["7.offset"] = 1;
  StateDict bad = s;
  bad.strings["2.offset"] = "-1";
  StateDict huge = s;
  huge.strings["2.seed"] = "18446744073709551616";  // 2^64
  for (const StateDict* x : {&missing, &extra, &stray, &bad, &huge}) {
    EXPECT_THROW(c->load_extra_states(*x), Error);
    EXPECT_EQ(c->extra_states().strings, before.strings);
  }
  EXPECT_NE(error_of([&] { c->load_extra_states(missing); }).find("module '2'"), std::string::npos);
  EXPECT_NE(error_of([&] { c->load_extra_states(stray); }).find("no module owns '7.offset'"),
            std::string::npos);
  EXPECT_NE(error_of([&] { c->load_extra_states(bad); }).find("unsigned 64-bit decimal"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              c->load_extra_states(StateDict());
            }).find("exactly the strings 'seed' and 'offset'"),
            std::string::npos);
}

// ---- Flatten, Sequential, training --------------------------------------------------------

TEST_P(NnTest, FlattenShapes) {
  nn::Flatten f;
  const Tensor x = make_tensor(uniform(2 * 3 * 4 * 5, -1, 1, 13), {2, 3, 4, 5}, DType::f32, dev);
  Tensor y = f.forward(x);
  EXPECT_EQ(y.shape(), (Shape{2, 60}));
  EXPECT_EQ(y.to_double_vector(), x.to_double_vector());
  EXPECT_EQ(f.backward(y).shape(), (Shape{2, 3, 4, 5}));
  nn::Flatten g(1, 2);
  EXPECT_EQ(g.forward(x).shape(), (Shape{2, 12, 5}));
  EXPECT_THROW(f.backward(x), Error);
}

TEST_P(NnTest, SequentialTrainsWithSgd) {
  // Two Gaussian-ish blobs per class in 4-d, 3 classes.
  const int64_t n = 60, in = 4, classes = 3;
  Vec x(n * in);
  std::vector<int64_t> labels(n);
  const Vec noise = uniform(n * in, -0.5, 0.5, 14);
  for (int64_t i = 0; i < n; ++i) {
    labels[i] = i % classes;
    for (int64_t k = 0; k < in; ++k)
      x[i * in + k] = (k == labels[i] ? 2.0 : 0.0) + noise[i * in + k];
  }
  auto model = std::make_shared<nn::Sequential>(std::initializer_list<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(in, 16, true, 1), std::make_shared<nn::ReLU>(),
      std::make_shared<nn::Linear>(16, classes, true, 2)});
  model->to(dev);
  const auto named = model->named_parameters();
  ASSERT_EQ(named.size(), 4u);
  EXPECT_EQ(named[0].first, "0.weight");
  EXPECT_EQ(named[1].first, "0.bias");
  EXPECT_EQ(named[2].first, "2.weight");
  EXPECT_EQ(named[3].first, "2.bias");
  EXPECT_EQ(named[2].second.value().device(), dev);
  trainrt::optim::SGD opt(model->parameters(), trainrt::optim::SGDOptions(0.5));
  const Tensor xt = make_tensor(x, {n, in}, DType::f32, dev);
  const Tensor yt = Tensor::from_vector(labels, {n}).to(dev);
  double first = 0, last = 0;
  for (int step = 0; step < 30; ++step) {
    opt.zero_grad();
    Tensor logits = model->forward(xt);
    auto loss = trainrt::cross_entropy(logits, yt);
    model->backward(loss.grad);
    opt.step();
    const double l = loss.loss.item();
    if (step == 0) first = l;
    last = l;
  }
  EXPECT_LT(last, 0.5 * first);
  EXPECT_LT(last, 0.3);
}

TEST_P(NnTest, NoInputGradSkipsTheFirstLayersDx) {
  auto build = [&] {
    auto m = std::make_shared<nn::Sequential>(std::initializer_list<std::shared_ptr<nn::Module>>{
        std::make_shared<nn::Flatten>(), std::make_shared<nn::Linear>(12, 8, true, 1),
        std::make_shared<nn::Tanh>(), std::make_shared<nn::Linear>(8, 3, true, 2)});
    m->to(dev);
    return m;
  };
  auto a = build(), b = build();
  b->set_input_grad(false);
  const Tensor x = make_tensor(uniform(24, -1, 1, 18), {2, 3, 4}, DType::f32, dev);
  const Tensor dy = make_tensor(uniform(6, -1, 1, 19), {2, 3}, DType::f32, dev);
  a->forward(x);
  b->forward(x);
  EXPECT_TRUE(a->backward(dy).defined());
  EXPECT_FALSE(b->backward(dy).defined());
  const auto pa = a->parameters(), pb = b->parameters();
  for (size_t i = 0; i < pa.size(); ++i) {
    EXPECT_EQ(pa[i].grad().to_double_vector(), pb[i].grad().to_double_vector()) << i;
  }
  EXPECT_TRUE((*b)[1]->input_grad());  // restored after the backward
  nn::Linear lin(4, 2, true, 3);
  lin.to(dev);
  lin.set_input_grad(false);
  lin.forward(make_tensor(Vec(8, 1.0), {2, 4}, DType::f32, dev));
  EXPECT_FALSE(lin.backward(make_tensor(Vec(4, 1.0), {2, 2}, DType::f32, dev)).defined());
  EXPECT_TRUE(lin.weight().has_grad());
}

// A user-defined module with its own forward / backward (the README's example).
class Residual : public nn::Module {
 public:
  explicit Residual(int64_t dim)
      : fc_(register_module("fc", std::make_shared<nn::Linear>(dim, dim))) {}
  Tensor forward(const Tensor& x) override {
    x_ = x;
    const Vec a = x.to_double_vector(), b = fc_->forward(x).to_double_vector();
    Vec s(a.size());
    for (size_t i = 0; i < a.size(); ++i) s[i] = a[i] + b[i];
    return make_tensor(s, x.shape(), x.dtype(), x.device());
  }
  Tensor backward(const Tensor& dy) override {
    require_forward(x_, "Residual");
    const Vec a = dy.to_double_vector(), b = fc_->backward(dy).to_double_vector();
    Vec s(a.size());
    for (size_t i = 0; i < a.size(); ++i) s[i] = a[i] + b[i];
    return make_tensor(s, dy.shape(), dy.dtype(), dy.device());
  }

 private:
  std::shared_ptr<nn::Linear> fc_;
  Tensor x_;
};

// The README's Block, with host versions of its two own ops.
Tensor add_rows(const Tensor& y, const Tensor& b) {
  Vec v = y.to_double_vector();
  const Vec bv = b.to_double_vector();
  for (size_t i = 0; i < v.size(); ++i) v[i] += bv[i % bv.size()];
  return make_tensor(v, y.shape(), y.dtype(), y.device());
}
Tensor sum_rows(const Tensor& dy) {
  const Vec v = dy.to_double_vector();
  const int64_t cols = dy.size(-1);
  Vec s(static_cast<size_t>(cols), 0.0);
  for (size_t i = 0; i < v.size(); ++i) s[i % cols] += v[i];
  return make_tensor(s, {cols}, DType::f32, dy.device());
}

class Block : public nn::Module {
 public:
  Block(std::int64_t in, std::int64_t hidden, std::int64_t out) {
    fc1_ = register_module("fc1", std::make_shared<nn::Linear>(in, hidden));
    act_ = register_module("act", std::make_shared<nn::GELU>());
    fc2_ = register_module("fc2", std::make_shared<nn::Linear>(hidden, out, /*bias=*/false));
    register_parameter("offset", Tensor::zeros({out}, DType::f32));
  }
  Tensor forward(const Tensor& x) override {
    Tensor y = fc2_->forward(act_->forward(fc1_->forward(x)));
    return add_rows(y, param("offset").value());
  }
  Tensor backward(const Tensor& dy) override {
    param("offset").set_grad(sum_rows(dy));
    return fc1_->backward(act_->backward(fc2_->backward(dy)));
  }

 private:
  std::shared_ptr<nn::Linear> fc1_, fc2_;
  std::shared_ptr<nn::GELU> act_;
};

TEST_P(NnTest, ReadmeBlockModule) {
  Block b(5, 8, 3);
  b.to(dev);
  const auto named = b.named_parameters();
  ASSERT_EQ(named.size(), 4u);
  EXPECT_EQ(named[0].first, "offset");
  EXPECT_EQ(named[1].first, "fc1.weight");
  EXPECT_EQ(named[2].first, "fc1.bias");
  EXPECT_EQ(named[3].first, "fc2.weight");
  for (const auto& p : named) EXPECT_EQ(p.second.value().device(), dev);
  Tensor y = b.forward(make_tensor(uniform(10, -1, 1, 17), {2, 5}, DType::f32, dev));
  EXPECT_EQ(y.shape(), (Shape{2, 3}));
  Tensor dx = b.backward(make_tensor(Vec(6, 1.0), {2, 3}, DType::f32, dev));
  EXPECT_EQ(dx.shape(), (Shape{2, 5}));
  for (const auto& p : b.parameters()) EXPECT_TRUE(p.has_grad());
  EXPECT_EQ(b.parameters()[0].grad().to_double_vector(), (Vec{2, 2, 2}));
}

TEST_P(NnTest, UserDefinedModule) {
  Residual m(3);
  EXPECT_THROW(m.backward(make_tensor(Vec(3, 1.0), {1, 3}, DType::f32, dev)), Error);
  m.to(dev);
  ASSERT_EQ(m.named_parameters().size(), 2u);
  EXPECT_EQ(m.named_parameters()[0].first, "fc.weight");
  m.forward(make_tensor(Vec{1, 2, 3}, {1, 3}, DType::f32, dev));
  m.backward(make_tensor(Vec{1, 1, 1}, {1, 3}, DType::f32, dev));
  EXPECT_TRUE(m.parameters()[0].has_grad());
  m.eval();
  EXPECT_FALSE(m.children()[0].second->is_training());
}

// ---- Bad inputs ---------------------------------------------------------------------------

TEST_P(NnTest, BadInputsThrow) {
  nn::Linear lin(4, 3);
  lin.to(dev);
  const Tensor x = make_tensor(Vec(8, 1.0), {2, 4}, DType::f32, dev);
  EXPECT_THROW(lin.backward(make_tensor(Vec(6, 1.0), {2, 3}, DType::f32, dev)), Error);
  EXPECT_THROW(lin.forward(make_tensor(Vec(10, 1.0), {2, 5}, DType::f32, dev)), Error);
  EXPECT_THROW(lin.forward(Tensor::zeros({2, 4}, DType::i64).to(dev)), Error);
  EXPECT_THROW(lin.forward(Tensor()), Error);
  nn::Linear lin64(4, 3, true, 1, DType::f64);
  lin64.to(dev);
  EXPECT_THROW(lin64.forward(x), Error);  // f32 input, f64 parameters
  lin.forward(x);
  EXPECT_THROW(lin.backward(make_tensor(Vec(8, 1.0), {2, 4}, DType::f32, dev)), Error);
  EXPECT_THROW(lin.backward(make_tensor(Vec(6, 1.0), {2, 3}, DType::f64, dev)), Error);
  EXPECT_THROW(nn::Linear(0, 3), Error);
  EXPECT_THROW(nn::Linear(3, 3, true, 1, DType::f16), Error);
  for (int kind = 0; kind < 4; ++kind) {
    auto m = make_act(kind);
    EXPECT_THROW(m->backward(x), Error);
    EXPECT_THROW(m->forward(Tensor::zeros({2}, DType::i32).to(dev)), Error);
    m->forward(x);
    EXPECT_THROW(m->backward(make_tensor(Vec(6, 1.0), {2, 3}, DType::f32, dev)), Error);
  }
  nn::Dropout d(0.5);
  EXPECT_THROW(d.backward(x), Error);
  nn::Flatten f;
  EXPECT_THROW(f.backward(x), Error);
  nn::Sequential s;
  EXPECT_THROW(s.add(nullptr), Error);
  EXPECT_THROW(s[0], Error);
}

// ---- CUDA parity --------------------------------------------------------------------------

TEST(NnCudaParity, LinearActivationsDropoutMatchCpu) {
  Device gpu;
  TRAINRT_DEVICE_OR_SKIP("cuda", gpu);
  const int64_t rows = 37, in = 129, out = 65;
  const Vec xv = uniform(rows * in, -2, 2, 15);
  const Vec rv = uniform(rows * out, -1, 1, 16);
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    auto cpu = std::make_shared<nn::Sequential>(std::initializer_list<std::shared_ptr<nn::Module>>{
        std::make_shared<nn::Linear>(in, out, true, 21), std::make_shared<nn::GELU>(),
        std::make_shared<nn::Dropout>(0.25, 22), std::make_shared<nn::Tanh>()});
    auto cuda = std::make_shared<nn::Sequential>(std::initializer_list<std::shared_ptr<nn::Module>>{
        std::make_shared<nn::Linear>(in, out, true, 21), std::make_shared<nn::GELU>(),
        std::make_shared<nn::Dropout>(0.25, 22), std::make_shared<nn::Tanh>()});
    cuda->to(gpu);
    const Vec yc = cpu->forward(make_tensor(xv, {rows, in}, dt, Device::cpu())).to_double_vector();
    const Vec yg = cuda->forward(make_tensor(xv, {rows, in}, dt, gpu)).to_double_vector();
    for (size_t i = 0; i < yc.size(); ++i) ASSERT_EQ(yc[i] == 0, yg[i] == 0) << "mask " << i;
    const double t = dt == DType::f32 ? 1e-4 : 4 * trainrt_test::tol(dt);
    expect_close(yg, yc, t, t, "forward");
    const Vec dc =
        cpu->backward(make_tensor(rv, {rows, out}, dt, Device::cpu())).to_double_vector();
    const Vec dg = cuda->backward(make_tensor(rv, {rows, out}, dt, gpu)).to_double_vector();
    expect_close(dg, dc, t, t, "dx");
    const auto pc = cpu->parameters(), pg = cuda->parameters();
    for (size_t i = 0; i < pc.size(); ++i) {
      expect_close(pg[i].grad().to_double_vector(), pc[i].grad().to_double_vector(), t, t * 10,
                   "param grad");
    }
  }
  // f64 through cuBLAS DGEMM.
  nn::Linear a(in, out, true, 5, DType::f64), b(in, out, true, 5, DType::f64);
  b.to(gpu);
  expect_close(b.forward(make_tensor(xv, {rows, in}, DType::f64, gpu)).to_double_vector(),
               a.forward(make_tensor(xv, {rows, in}, DType::f64, Device::cpu())).to_double_vector(),
               1e-12, 1e-12, "f64");
}

}  // namespace

// ---- the CPU GEMM library -----------------------------------------------------------------

TEST(CpuGemm, OpenBlasRunsTheBestKernelsItHasForThisCpu) {
  // OpenBLAS 0.3.21 falls back to its Prescott (SSE3) kernels on Intel models it does not
  // know (Sapphire Rapids here); trainrt sets OPENBLAS_CORETYPE before opening it.
  const std::string info = trainrt::cpu_gemm_info();
  SCOPED_TRACE(info);
  ASSERT_NE(info.find("OpenBLAS"), std::string::npos);
  ASSERT_NE(info.find("kernels "), std::string::npos);
  if (info.find("set by trainrt") == std::string::npos) {
    GTEST_SKIP() << "OPENBLAS_CORETYPE came from the environment or OpenBLAS was already loaded";
  }
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
    EXPECT_NE(info.find("kernels SkylakeX"), std::string::npos);
  } else {
    EXPECT_NE(info.find("kernels Haswell"), std::string::npos);
  }
#endif
  EXPECT_EQ(info.find("Prescott"), std::string::npos);
}

TEST(CpuGemmEnv, AnUnusableOpenBlasIsAClearError) {
  // Run by the ctests cpu_gemm_openblas_* with TRAINRT_OPENBLAS naming a library that is
  // missing or is not OpenBLAS: GEMMs fail with trainrt::Error naming the problem, the rest of
  // the CPU backend keeps working.
  const char* lib = std::getenv("TRAINRT_OPENBLAS");
  const char* expect = std::getenv("TRAINRT_TEST_EXPECT_REASON");
  if (lib == nullptr || expect == nullptr) {
    GTEST_SKIP() << "needs TRAINRT_OPENBLAS and TRAINRT_TEST_EXPECT_REASON (see extra_tests.cmake)";
  }
  const std::string info = trainrt::cpu_gemm_info();
  EXPECT_NE(info.find(lib), std::string::npos) << info;
  EXPECT_NE(info.find(expect), std::string::npos) << info;
  nn::Linear lin(3, 2);
  const Tensor x = make_tensor(Vec(6, 1.0), {2, 3}, DType::f32, Device::cpu());
  try {
    lin.forward(x);
    ADD_FAILURE() << "a GEMM ran without OpenBLAS";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(expect), std::string::npos) << e.what();
  }
  const Vec y = trainrt::softmax(x).to_double_vector();
  for (double v : y) EXPECT_NEAR(v, 1.0 / 3.0, 1e-7);
}
