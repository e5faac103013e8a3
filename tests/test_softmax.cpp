// softmax / log_softmax forward and backward on every backend, against a float64 reference
// written out here, for f32, f16, bf16 and f64; special values (-inf, all -inf rows, NaN,
// +inf, magnitudes of 1e4); finite-difference gradients in f64.
//
// Tolerances: the reference sees the inputs rounded to the dtype (what the kernel sees), so
// the only differences are f32 (or f64) arithmetic and the rounding of the output. Bounds
// are relative to the magnitude of the result, plus terms for the cancellations a correct
// float implementation cannot avoid (log_softmax: x - lse at large |x|; backward: dy - s).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "test_util.hpp"

namespace {

using trainrt::DType;
using trainrt::Shape;
using trainrt::Tensor;
using trainrt_test::BackendTest;
using trainrt_test::make_tensor;
using trainrt_test::rounded;
using trainrt_test::tol;
using trainrt_test::uniform;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
const DType kFloatTypes[] = {DType::f32, DType::f16, DType::bf16, DType::f64};

/// Machine epsilon of the accumulation type.
double acc_eps(DType t) { return t == DType::f64 ? std::ldexp(1.0, -52) : std::ldexp(1.0, -23); }
/// Absolute rounding error of the smallest (subnormal) values of a storage type.
double subnormal_err(DType t) { return t == DType::f16 ? std::ldexp(1.0, -24) : 0.0; }

// ---- float64 reference, written plainly ------------------------------------------------

std::vector<double> ref_forward(const std::vector<double>& x, std::int64_t cols, bool log) {
  std::vector<double> y(x.size());
  const std::int64_t rows = cols == 0 ? 0 : static_cast<std::int64_t>(x.size()) / cols;
  for (std::int64_t r = 0; r < rows; ++r) {
    const double* xr = &x[r * cols];
    double m = -kInf;
    for (std::int64_t c = 0; c < cols; ++c) m = std::max(m, xr[c]);
    double s = 0;
    for (std::int64_t c = 0; c < cols; ++c) s += std::exp(xr[c] - m);
    for (std::int64_t c = 0; c < cols; ++c) {
      y[r * cols + c] = log ? xr[c] - m - std::log(s) : std::exp(xr[c] - m) / s;
    }
  }
  return y;
}

/// Backward from the forward output y and upstream dy (the op's own definition).
std::vector<double> ref_backward(const std::vector<double>& y, const std::vector<double>& dy,
                                 std::int64_t cols, bool log) {
  std::vector<double> dx(y.size());
  const std::int64_t rows = cols == 0 ? 0 : static_cast<std::int64_t>(y.size()) / cols;
  for (std::int64_t r = 0; r < rows; ++r) {
    double s = 0;
    for (std::int64_t c = 0; c < cols; ++c) {
      s += log ? dy[r * cols + c] : y[r * cols + c] * dy[r * cols + c];
    }
    for (std::int64_t c = 0; c < cols; ++c) {
      const std::int64_t i = r * cols + c;
      dx[i] = log ? dy[i] - std::exp(y[i]) * s : y[i] * (dy[i] - s);
    }
  }
  return dx;
}

/// Compares element-wise with a per-element allowance; NaN must match NaN, inf exactly.
void expect_close(const std::vector<double>& got, const std::vector<double>& ref,
                  const std::vector<double>& allow, const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  int bad = 0;
  double worst = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    bool ok;
    if (std::isnan(ref[i])) {
      ok = std::isnan(got[i]);
    } else if (std::isinf(ref[i])) {
      ok = got[i] == ref[i];
    } else {
      const double err = std::fabs(got[i] - ref[i]);
      ok = err <= allow[i];
      if (allow[i] > 0) worst = std::max(worst, err / allow[i]);
    }
    if (!ok && ++bad <= 5) {
      ADD_FAILURE() << what << ": element " << i << " got " << got[i] << ", want " << ref[i]
                    << " (allowed error " << allow[i] << ")";
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << ref.size() << " elements off";
  EXPECT_LE(worst, 1.0) << what;
}

struct ShapeCase {
  Shape shape;
  double lo, hi;
};

const ShapeCase kShapes[] = {
    {{1, 1}, -3, 3},    {{3, 7}, -3, 3},       {{64, 1000}, -8, 8},
    {{5, 5000}, -4, 4}, {{2, 3, 17}, -20, 20}, {{4, 2049}, -6, 6},  // crosses a 2048 block
};

std::string label(const char* op, DType t, const Shape& s) {
  return std::string(op) + " " + trainrt::dtype_name(t) + " " + trainrt::shape_str(s);
}

/// Allowed error of forward outputs.
std::vector<double> forward_allowance(const std::vector<double>& xr, const std::vector<double>& ref,
                                      std::int64_t cols, bool log, DType t) {
  std::vector<double> allow(ref.size());
  for (std::size_t r = 0; r * cols < ref.size(); ++r) {
    double rowmax = 0;
    for (std::int64_t c = 0; c < cols; ++c) {
      const double v = xr[r * cols + c];
      if (std::isfinite(v)) rowmax = std::max(rowmax, std::fabs(v));
    }
    for (std::int64_t c = 0; c < cols; ++c) {
      const std::size_t i = r * cols + c;
      allow[i] = tol(t) * (std::fabs(ref[i]) + 1e-4) + subnormal_err(t);
      if (log) allow[i] += acc_eps(t) * (16 + 4 * rowmax);
    }
  }
  return allow;
}

class SoftmaxTest : public BackendTest {};

TEST_P(SoftmaxTest, ForwardMatchesFloat64Reference) {
  for (const ShapeCase& sc : kShapes) {
    const std::int64_t n = trainrt::shape_numel(sc.shape);
    const std::int64_t cols = sc.shape.back();
    const std::vector<double> x = uniform(static_cast<std::size_t>(n), sc.lo, sc.hi, 17 + n);
    for (DType t : kFloatTypes) {
      const std::vector<double> xr = rounded(x, t);
      const Tensor xt = make_tensor(x, sc.shape, t, dev);
      for (bool log : {false, true}) {
        const std::string what = label(log ? "log_softmax" : "softmax", t, sc.shape);
        SCOPED_TRACE(what);
        const Tensor y = log ? trainrt::log_softmax(xt) : trainrt::softmax(xt);
        ASSERT_EQ(y.shape(), sc.shape);
        ASSERT_EQ(y.dtype(), t);
        ASSERT_EQ(y.device(), dev);
        const std::vector<double> ref = ref_forward(xr, cols, log);
        expect_close(y.to_double_vector(), ref, forward_allowance(xr, ref, cols, log, t), what);
      }
      EXPECT_EQ(xt.to_double_vector(), xr);  // the input is not modified
    }
  }
}

TEST_P(SoftmaxTest, BackwardMatchesFloat64Reference) {
  for (const ShapeCase& sc : kShapes) {
    const std::int64_t n = trainrt::shape_numel(sc.shape);
    const std::int64_t cols = sc.shape.back();
    const std::vector<double> x = uniform(static_cast<std::size_t>(n), sc.lo, sc.hi, 5 + n);
    const std::vector<double> dy = uniform(static_cast<std::size_t>(n), -1, 1, 99 + n);
    for (DType t : kFloatTypes) {
      const std::vector<double> dyr = rounded(dy, t);
      const Tensor dyt = make_tensor(dy, sc.shape, t, dev);
      for (bool log : {false, true}) {
        const std::string what =
            label(log ? "log_softmax_backward" : "softmax_backward", t, sc.shape);
        SCOPED_TRACE(what);
        const Tensor xt = make_tensor(x, sc.shape, t, dev);
        const Tensor y = log ? trainrt::log_softmax(xt) : trainrt::softmax(xt);
        const Tensor dx =
            log ? trainrt::log_softmax_backward(y, dyt) : trainrt::softmax_backward(y, dyt);
        ASSERT_EQ(dx.shape(), sc.shape);
        ASSERT_EQ(dx.dtype(), t);
        // The reference takes the y the op was given (already rounded to the dtype).
        const std::vector<double> yv = y.to_double_vector();
        const std::vector<double> ref = ref_backward(yv, dyr, cols, log);
        std::vector<double> allow(ref.size());
        for (std::int64_t r = 0; r * cols < n; ++r) {
          double s_abs = 0;
          for (std::int64_t c = 0; c < cols; ++c) {
            const std::int64_t i = r * cols + c;
            s_abs += log ? std::fabs(dyr[i]) : std::fabs(yv[i] * dyr[i]);
          }
          for (std::int64_t c = 0; c < cols; ++c) {
            const std::int64_t i = r * cols + c;
            const double cancel = log ? std::fabs(dyr[i]) + std::exp(yv[i]) * s_abs
                                      : std::fabs(yv[i]) * (std::fabs(dyr[i]) + s_abs);
            allow[i] = tol(t) * (std::fabs(ref[i]) + cancel) + subnormal_err(t);
          }
        }
        expect_close(dx.to_double_vector(), ref, allow, what);
      }
    }
  }
}

TEST_P(SoftmaxTest, SpecialValues) {
  // Rows (of 6): some -inf; all -inf (NaN); a NaN (NaN row); +inf (NaN row: inf - inf);
  // magnitudes around +1e4 and -1e4 (no overflow); a single finite entry among -inf.
  const std::int64_t C = 6;
  const std::vector<double> x = {
      0.5,   -kInf, 2.0,    -kInf,  -1.0,  0.0,     // some -inf
      -kInf, -kInf, -kInf,  -kInf,  -kInf, -kInf,   // all -inf
      1.0,   kNaN,  2.0,    3.0,    4.0,   5.0,     // NaN
      1.0,   kInf,  2.0,    3.0,    4.0,   5.0,     // +inf
      1e4,   9998,  10001,  9999.5, 1e4,   9990,    // large positive
      -1e4,  -9998, -10001, -1e4,   -9999, -10020,  // large negative
      -kInf, -kInf, 7.0,    -kInf,  -kInf, -kInf,   // one finite entry
  };
  const Shape shape = {static_cast<std::int64_t>(x.size()) / C, C};
  for (DType t : kFloatTypes) {
    const std::vector<double> xr = rounded(x, t);
    const Tensor xt = make_tensor(x, shape, t, dev);
    for (bool log : {false, true}) {
      const std::string what = label(log ? "log_softmax" : "softmax", t, shape);
      SCOPED_TRACE(what);
      const std::vector<double> ref = ref_forward(xr, C, log);
      // The reference itself must show the documented behaviour.
      ASSERT_EQ(ref[1], log ? -kInf : 0.0);
      for (int c = 0; c < C; ++c) {
        ASSERT_TRUE(std::isnan(ref[C + c]));
        ASSERT_TRUE(std::isnan(ref[2 * C + c]));
        ASSERT_TRUE(std::isnan(ref[3 * C + c]));
        ASSERT_TRUE(std::isfinite(ref[4 * C + c]));
        ASSERT_TRUE(std::isfinite(ref[5 * C + c]));
      }
      ASSERT_EQ(ref[6 * C + 2], log ? 0.0 : 1.0);
      const std::vector<double> got = log ? trainrt::log_softmax(xt).to_double_vector()
                                          : trainrt::softmax(xt).to_double_vector();
      expect_close(got, ref, forward_allowance(xr, ref, C, log, t), what);
    }
  }
}

TEST_P(SoftmaxTest, F32ExponentialIsAccurateToAFewUlp) {
  // Rows [0, x]: y1 = e^x / (1 + e^x) involves one exponential, one sum and one division, so
  // a correct f32 kernel (exp within ~2 ulp) stays within ~6 ulp. Covers the whole range of
  // the exponential's argument, including the reduction boundaries at multiples of ln 2 / 2.
  const std::int64_t rows = 20000;
  std::vector<double> x(2 * rows);
  const std::vector<double> u = uniform(rows, -87, 0, 8);
  for (std::int64_t r = 0; r < rows; ++r) {
    x[2 * r] = 0;
    x[2 * r + 1] = r < 200 ? -std::log(2.0) * (r / 2) - (r % 2 ? 0.3465 : 0.3466) : u[r];
  }
  const std::vector<double> xr = rounded(x, DType::f32);
  const std::vector<double> ref = ref_forward(xr, 2, false);
  const std::vector<double> got =
      trainrt::softmax(make_tensor(x, {rows, 2}, DType::f32, dev)).to_double_vector();
  std::vector<double> allow(ref.size());
  for (std::size_t i = 0; i < ref.size(); ++i) {
    // 6 ulp, relative; values below f32's normal range (e^-87) may flush to 0
    allow[i] = 6 * std::ldexp(1.0, -23) * std::fabs(ref[i]) + 1.2e-38;
  }
  expect_close(got, ref, allow, "softmax f32 [0, x] rows");
}

TEST_P(SoftmaxTest, F32ExponentialIsAccurateAtEveryLanePosition) {
  // As above, with the x in column r % 67 of a 67-wide row whose other entries are 0 or
  // below the exponential's range: x passes through every lane of the vector body and the
  // masked tail of the SIMD kernels (whole vectors of 16 and 8 lanes, a 3-lane tail).
  const std::int64_t rows = 6000, C = 67;
  std::vector<double> x(rows * C, -200.0);
  const std::vector<double> u = uniform(rows, -87, 0, 9);
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t k = r % C, z = (k + 1 + (r / C) % (C - 1)) % C;  // z != k
    x[r * C + k] = u[r];
    x[r * C + z] = 0.0;
  }
  const std::vector<double> xr = rounded(x, DType::f32);
  const std::vector<double> ref = ref_forward(xr, C, false);
  const std::vector<double> got =
      trainrt::softmax(make_tensor(x, {rows, C}, DType::f32, dev)).to_double_vector();
  std::vector<double> allow(ref.size());
  for (std::size_t i = 0; i < ref.size(); ++i)
    allow[i] = 6 * std::ldexp(1.0, -23) * std::fabs(ref[i]) + 1.2e-38;
  expect_close(got, ref, allow, "softmax f32, x at every column of 67");
}

TEST_P(SoftmaxTest, SpecialValuesAtEveryLanePosition) {
  // A NaN, a +inf or a run of -inf anywhere in a long row (vector body or tail) behaves as
  // in the short rows of SpecialValues.
  const std::int64_t C = 71;
  std::vector<double> x;
  for (std::int64_t k = 0; k < C; ++k) {
    const std::vector<double> base = uniform(C, -3, 3, 100 + k);
    std::vector<double> row = base;
    row[k] = kNaN;  // NaN row
    x.insert(x.end(), row.begin(), row.end());
    row = base;
    row[k] = kInf;  // NaN row (inf - inf)
    x.insert(x.end(), row.begin(), row.end());
    row.assign(C, -kInf);
    row[k] = 1.5;  // a single finite entry: 1 there, 0 elsewhere
    x.insert(x.end(), row.begin(), row.end());
    row = base;
    for (std::int64_t c = 0; c <= k; ++c) row[c] = -kInf;  // -inf prefix of k + 1
    if (k == C - 1) row[0] = 0.25;
    x.insert(x.end(), row.begin(), row.end());
  }
  const Shape shape = {static_cast<std::int64_t>(x.size()) / C, C};
  for (DType t : kFloatTypes) {
    const std::vector<double> xr = rounded(x, t);
    const Tensor xt = make_tensor(x, shape, t, dev);
    for (bool log : {false, true}) {
      const std::string what = label(log ? "log_softmax" : "softmax", t, shape);
      SCOPED_TRACE(what);
      const std::vector<double> ref = ref_forward(xr, C, log);
      ASSERT_TRUE(std::isnan(ref[0]));
      ASSERT_EQ(ref[2 * C], log ? 0.0 : 1.0);  // k = 0: the finite entry is column 0
      const std::vector<double> got = log ? trainrt::log_softmax(xt).to_double_vector()
                                          : trainrt::softmax(xt).to_double_vector();
      expect_close(got, ref, forward_allowance(xr, ref, C, log, t), what);
    }
  }
}

TEST_P(SoftmaxTest, GradientMatchesFiniteDifferences) {
  // f(x) = sum(w * op(x)); df/dx from the op's backward with dy = w vs central differences.
  const Shape shapes[] = {{3, 7}, {2, 3, 5}, {1, 1}};
  for (const Shape& shape : shapes) {
    const std::int64_t n = trainrt::shape_numel(shape);
    const std::vector<double> x = uniform(static_cast<std::size_t>(n), -3, 3, 3 + n);
    const std::vector<double> w = uniform(static_cast<std::size_t>(n), -1, 1, 4 + n);
    const Tensor wt = make_tensor(w, shape, DType::f64, dev);
    for (bool log : {false, true}) {
      const std::string what = label(log ? "log_softmax" : "softmax", DType::f64, shape);
      SCOPED_TRACE(what);
      auto f = [&](const std::vector<double>& xv) {
        const Tensor xt = make_tensor(xv, shape, DType::f64, dev);
        const std::vector<double> y =
            (log ? trainrt::log_softmax(xt) : trainrt::softmax(xt)).to_double_vector();
        double s = 0;
        for (std::size_t i = 0; i < y.size(); ++i) s += w[i] * y[i];
        return s;
      };
      const Tensor xt = make_tensor(x, shape, DType::f64, dev);
      const Tensor y = log ? trainrt::log_softmax(xt) : trainrt::softmax(xt);
      const std::vector<double> g =
          (log ? trainrt::log_softmax_backward(y, wt) : trainrt::softmax_backward(y, wt))
              .to_double_vector();
      const double h = 1e-6;
      std::vector<double> fd(x.size()), allow(x.size());
      for (std::size_t i = 0; i < x.size(); ++i) {
        std::vector<double> xp = x, xm = x;
        xp[i] += h;
        xm[i] -= h;
        fd[i] = (f(xp) - f(xm)) / (2 * h);
        allow[i] = 1e-7 * (1 + std::fabs(fd[i]));
      }
      expect_close(g, fd, allow, what);
    }
  }
}

TEST_P(SoftmaxTest, EmptyAndDegenerateShapes) {
  for (const Shape& shape : {Shape{0, 5}, Shape{3, 0}, Shape{0}, Shape{2, 0, 4}}) {
    SCOPED_TRACE(trainrt::shape_str(shape));
    const Tensor x = Tensor::zeros(shape, DType::f32, dev);
    const Tensor y = trainrt::softmax(x);
    EXPECT_EQ(y.shape(), shape);
    EXPECT_EQ(trainrt::log_softmax(x).shape(), shape);
    EXPECT_EQ(trainrt::softmax_backward(y, x).shape(), shape);
    EXPECT_EQ(trainrt::log_softmax_backward(y, x).shape(), shape);
  }
  // A 1-D input is one row.
  const std::vector<double> x = {1, 2, 3};
  const std::vector<double> ref = ref_forward(x, 3, false);
  const std::vector<double> got =
      trainrt::softmax(make_tensor(x, {3}, DType::f64, dev)).to_double_vector();
  expect_close(got, ref, std::vector<double>(3, 1e-15), "1-D softmax");
}

TEST_P(SoftmaxTest, Deterministic) {
  const Shape shape = {33, 3001};
  const std::vector<double> x = uniform(33 * 3001, -5, 5, 42);
  const std::vector<double> dy = uniform(33 * 3001, -1, 1, 43);
  for (DType t : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(trainrt::dtype_name(t));
    const Tensor xt = make_tensor(x, shape, t, dev);
    const Tensor dyt = make_tensor(dy, shape, t, dev);
    for (bool log : {false, true}) {
      auto run = [&] {
        const Tensor y = log ? trainrt::log_softmax(xt) : trainrt::softmax(xt);
        const Tensor dx =
            log ? trainrt::log_softmax_backward(y, dyt) : trainrt::softmax_backward(y, dyt);
        std::vector<double> out = y.to_double_vector();
        const std::vector<double> d = dx.to_double_vector();
        out.insert(out.end(), d.begin(), d.end());
        return out;
      };
      const std::vector<double> a = run(), b = run();
      ASSERT_EQ(a.size(), b.size());
      EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(double)));
    }
  }
}

TRAINRT_INSTANTIATE_BACKENDS(SoftmaxTest);

}  // namespace
