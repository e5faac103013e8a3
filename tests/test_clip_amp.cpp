// Gradient clipping and GradScaler, on every backend (CUDA cases skip without a GPU).
//
// clip_grad_norm_: norm types 1, 2, inf, 0.5 and 3 against a float64 reference, f32/f16/bf16/
// f64 grads, zero-element and multi-chunk tensors; PyTorch's values for f32, f64 and mixed grads
// (f64 total and coefficient once a grad is f64; tests/fixtures/torch_clip.txt); PyTorch's
// error_if_nonfinite grid (inf, NaN and 2e22, which must never error; 2e200 in f64 that overflows
// only some norms; f32 values near the f32 maximum), grads unchanged on error; the fused optimizer
// form equals the parameter form bitwise. GradScaler: PyTorch's scale-update sequence, growth
// capped at the f32 maximum, inf/NaN injected anywhere skips the step with params, state and step
// counts bitwise unchanged, a scaled run equals an unscaled control bitwise, misuse errors,
// state_dict.
#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <omp.h>

#include "fixture_text.hpp"
#include "optim_util.hpp"
#include "test_util.hpp"

namespace {

using trainrt::Device;
using trainrt::DType;
using trainrt::GradScaler;
using trainrt::GradScalerOptions;
using trainrt::Parameter;
using trainrt::Shape;
using trainrt::StateDict;
using trainrt::Tensor;
using trainrt::optim::ParamGroup;
using namespace trainrt_test;

#define EXPECT_ERROR(stmt, needle)                                                  \
  do {                                                                              \
    try {                                                                           \
      stmt;                                                                         \
      ADD_FAILURE() << "no trainrt::Error from " #stmt;                             \
    } catch (const trainrt::Error& e) {                                             \
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what(); \
    }                                                                               \
  } while (0)

const double kInf = std::numeric_limits<double>::infinity();
const double kNaN = std::numeric_limits<double>::quiet_NaN();

/// A parameter whose value and grad have `dtype`, grad values `g`.
Parameter param_with_grad(const std::vector<double>& g, const Shape& shape, DType dtype,
                          Device dev) {
  Parameter p(make_tensor(std::vector<double>(g.size(), 0.5), shape, dtype, dev));
  p.set_grad(make_tensor(g, shape, dtype, dev));
  return p;
}

double ref_norm(const std::vector<std::vector<double>>& grads, double p) {
  if (std::isinf(p)) {
    double m = 0.0;
    for (const auto& g : grads)
      for (double x : g) {
        if (std::isnan(x)) return kNaN;
        m = std::max(m, std::fabs(x));
      }
    return m;
  }
  double s = 0.0;
  for (const auto& g : grads)
    for (double x : g) s += std::pow(std::fabs(x), p);
  return std::pow(s, 1.0 / p);
}

/// PyTorch's f32 clip coefficient.
float ref_coef(float total, double max_norm) {
  const float c = (1.0f / (total + 1e-6f)) * static_cast<float>(max_norm);
  return c > 1.0f ? 1.0f : c;
}

/// PyTorch's f64 clip coefficient (some grad is f64).
double ref_coef_f64(double total, double max_norm) {
  const double c = (1.0 / (total + 1e-6)) * max_norm;
  return c > 1.0 ? 1.0 : c;
}

class ClipNorm : public BackendTest {};
TRAINRT_INSTANTIATE_BACKENDS(ClipNorm);

TEST_P(ClipNorm, MatchesFloat64ReferenceForEveryNormAndDtype) {
  // 1000 = 31 * 32 + 8: a tail after the vector groups of the AVX-512 f32 sum loop.
  const std::vector<Shape> shapes = {{3, 4}, {0}, {40000}, {1}, {16385}, {1000}};
  for (DType dt : {DType::f32, DType::f16, DType::bf16, DType::f64}) {
    for (double p : {1.0, 2.0, kInf, 0.5, 3.0}) {
      for (double max_norm : {0.5, 1e9}) {
        SCOPED_TRACE(std::string(trainrt::dtype_name(dt)) + " p=" + std::to_string(p) +
                     " max_norm=" + std::to_string(max_norm));
        std::vector<Parameter> params;
        std::vector<std::vector<double>> grads;
        for (std::size_t i = 0; i < shapes.size(); ++i) {
          const std::int64_t n = trainrt::shape_numel(shapes[i]);
          const std::vector<double> g = rounded(uniform(n, -2e-3, 2e-3, 11 + i), dt);
          params.push_back(param_with_grad(g, shapes[i], dt, dev));
          grads.push_back(g);
        }
        params.push_back(Parameter(Tensor::zeros({5}, dt, dev)));  // no grad: ignored
        const Tensor total = trainrt::clip_grad_norm_(params, max_norm, p);
        ASSERT_EQ(total.dim(), 0);
        // f64 grads: an f64 total and coefficient, as PyTorch's.
        ASSERT_EQ(total.dtype(), dt == DType::f64 ? DType::f64 : DType::f32);
        ASSERT_EQ(total.device(), dev);
        const double want = ref_norm(grads, p);
        EXPECT_NEAR(total.item(), want, (dt == DType::f64 ? 1e-13 : 2e-6) * want);
        const float coef = ref_coef(static_cast<float>(total.item()), max_norm);
        const double coef64 = ref_coef_f64(total.item(), max_norm);
        for (std::size_t i = 0; i < shapes.size(); ++i) {
          std::vector<double> expect(grads[i].size());
          for (std::size_t j = 0; j < expect.size(); ++j) {
            expect[j] = dt == DType::f64
                            ? grads[i][j] * coef64
                            : static_cast<double>(static_cast<float>(grads[i][j]) * coef);
          }
          EXPECT_EQ(params[i].grad().to_double_vector(), rounded(expect, dt)) << "tensor " << i;
        }
        EXPECT_FALSE(params.back().has_grad());
      }
    }
  }
}

TEST_P(ClipNorm, GradNormAndNoGrads) {
  std::vector<Parameter> params = {param_with_grad({3, 4}, {2}, DType::f32, dev),
                                   param_with_grad({12}, {1}, DType::f32, dev)};
  EXPECT_FLOAT_EQ(trainrt::grad_norm(params).item(), 13.0f);
  EXPECT_FLOAT_EQ(trainrt::grad_norm(params, 1.0).item(), 19.0f);
  EXPECT_FLOAT_EQ(trainrt::grad_norm(params, kInf).item(), 12.0f);
  EXPECT_EQ(params[0].grad().to_vector<float>(), (std::vector<float>{3, 4}));  // unchanged
  std::vector<Parameter> none = {Parameter(Tensor::zeros({3}, DType::f32, dev))};
  const Tensor t = trainrt::clip_grad_norm_(none, 1.0);
  EXPECT_EQ(t.item(), 0.0);
  EXPECT_EQ(trainrt::clip_grad_norm_(std::vector<Parameter>{}, 1.0).item(), 0.0);
}

// The CPU norm is one deterministic reduction: per-chunk partials folded in a fixed order, so
// the bits do not depend on the number of OpenMP threads (set here for the calls this thread
// makes into the library: one libgomp for both).
TEST(ClipNormCpu, NormBitsDoNotDependOnTheThreadCount) {
  std::vector<Parameter> params;
  for (std::int64_t n : {100003, 7, 65536 * 3 + 5, 1, 250000}) {
    params.push_back(param_with_grad(uniform(static_cast<std::size_t>(n), -3, 3, 40 + n), {n},
                                     DType::f32, Device::cpu()));
  }
  const int saved = omp_get_max_threads();
  std::vector<std::vector<float>> at;  // per thread count: the norms of each type
  for (int threads : {1, 2, 3, 7}) {
    omp_set_num_threads(threads);
    std::vector<float> v;
    for (double p : {1.0, 2.0, kInf, 0.5, 3.0})
      v.push_back(static_cast<float>(trainrt::grad_norm(params, p).item()));
    at.push_back(v);
  }
  omp_set_num_threads(saved);
  for (std::size_t i = 1; i < at.size(); ++i) EXPECT_TRUE(same_bits(at[0], at[i])) << i;
  std::vector<std::vector<double>> grads;  // and they are the norms
  for (const Parameter& p : params) grads.push_back(p.grad().to_double_vector());
  const double ref = ref_norm(grads, 2.0);
  EXPECT_NEAR(at[0][1], ref, 1e-6 * ref);
}

// PyTorch's test_clip_grad_norm_error_if_nonfinite, for f32 grads.
TEST_P(ClipNorm, ErrorIfNonfiniteGrid) {
  const std::vector<double> norms_pos = {0.1, 1, 2, 3.5, kInf};
  struct Case {
    bool one_elem, prefix;
    std::vector<double> scalars;
    bool nonfinite;  // for every positive norm
  };
  const std::vector<Case> cases = {
      {false, false, {kInf, -kInf}, true},  {false, true, {kInf, -kInf}, true},
      {true, false, {kInf, -kInf}, true},   {true, true, {kInf, -kInf}, true},
      {false, false, {kNaN}, true},         {false, true, {kNaN}, true},
      {true, false, {kNaN}, true},          {true, true, {kNaN}, true},
      {false, false, {2e22, -2e22}, false}, {false, true, {2e22, -2e22}, false},
      {true, false, {2e22, -2e22}, false},  {true, true, {2e22, -2e22}, false},
  };
  for (const Case& c : cases) {
    for (double s : c.scalars) {
      for (double p : norms_pos) {
        for (bool err : {true, false}) {
          SCOPED_TRACE("scalar " + std::to_string(s) + " norm " + std::to_string(p) +
                       (c.one_elem ? " one element" : " all elements") +
                       (c.prefix ? " with prefix" : ""));
          std::vector<Parameter> params;
          if (c.prefix)
            params.push_back(param_with_grad(std::vector<double>(10, 1.0), {10}, DType::f32, dev));
          std::vector<double> g(10, c.one_elem ? 0.0 : s);
          if (c.one_elem) g[3] = s;
          params.push_back(param_with_grad(g, {10}, DType::f32, dev));
          std::vector<std::vector<float>> before;
          for (const Parameter& q : params) before.push_back(host_f32(q.grad()));
          if (c.nonfinite && err) {
            EXPECT_ERROR(trainrt::clip_grad_norm_(params, 1.0, p, true), "non-finite");
            for (std::size_t i = 0; i < params.size(); ++i) {
              EXPECT_TRUE(same_bits(before[i], host_f32(params[i].grad()))) << "grads changed";
            }
          } else {
            const double total = trainrt::clip_grad_norm_(params, 1.0, p, err).item();
            EXPECT_EQ(std::isfinite(total), !c.nonfinite) << total;
          }
        }
      }
    }
  }
}

TEST_P(ClipNorm, HugeValues) {
  // PyTorch's 2e200 grid, in f32: 10 grads of 3e38 overflow every norm but max |g| (the total
  // norm is an f32 value), while the grads themselves are finite. Grads unchanged on error.
  for (bool one_elem : {false, true}) {
    for (double p : {3.5, 2.0, 1.0, 0.1, kInf}) {
      std::vector<double> g(10, 3e38);
      if (one_elem) {
        g.assign(10, 0.0);
        g[4] = 3e38;
      }
      std::vector<Parameter> params = {param_with_grad(g, {10}, DType::f32, dev)};
      const bool overflow = !std::isinf(p) && !one_elem;
      if (overflow) {
        EXPECT_ERROR(trainrt::clip_grad_norm_(params, 1.0, p, true), "non-finite");
        EXPECT_EQ(params[0].grad().to_vector<float>(), std::vector<float>(10, 3e38f));
      } else {
        const double t = trainrt::clip_grad_norm_(params, 1.0, p, true).item();
        EXPECT_NEAR(t, static_cast<double>(3e38f), 3e32) << p;
      }
    }
  }
  // f64 grads: a norm beyond the f64 range is inf (an error), one within it is fine.
  {
    std::vector<Parameter> params = {
        param_with_grad(std::vector<double>(10, 2e200), {10}, DType::f64, dev)};
    EXPECT_ERROR(trainrt::clip_grad_norm_(params, 1.0, 2.0, true), "non-finite");
    EXPECT_EQ(params[0].grad().to_vector<double>()[0], 2e200);
    std::vector<Parameter> ok = {
        param_with_grad(std::vector<double>(10, 2e20), {10}, DType::f64, dev)};
    EXPECT_NEAR(trainrt::clip_grad_norm_(ok, 1.0, 2.0, true).item(), std::sqrt(10.0) * 2e20, 1e14);
  }
  // An f32 grad whose own norm overflows f32 makes an f64 total inf as well (PyTorch's per-grad
  // f32 norm is inf): an error, grads unchanged.
  {
    std::vector<Parameter> params = {param_with_grad({3e38, -3e38}, {2}, DType::f32, dev),
                                     param_with_grad({1.0}, {1}, DType::f64, dev)};
    EXPECT_ERROR(trainrt::clip_grad_norm_(params, 1.0, 2.0, true), "non-finite");
    EXPECT_EQ(params[0].grad().to_vector<float>(), (std::vector<float>{3e38f, -3e38f}));
    EXPECT_EQ(params[1].grad().to_vector<double>(), std::vector<double>{1.0});
    EXPECT_EQ(trainrt::grad_norm(params, 1.0).item(), kInf);
    EXPECT_EQ(trainrt::grad_norm(params, kInf).item(), static_cast<double>(3e38f));
  }
  // f32 grads near the f32 maximum: the 1- and 2-norms exceed it (inf), max |g| does not.
  const double big = 3e38;
  for (double p : {1.0, 2.0, kInf}) {
    std::vector<Parameter> params = {
        param_with_grad(std::vector<double>(8, big), {8}, DType::f32, dev)};
    const double t = trainrt::grad_norm(params, p).item();
    if (std::isinf(p)) {
      EXPECT_EQ(t, static_cast<double>(static_cast<float>(big)));
    } else {
      EXPECT_TRUE(std::isinf(t)) << p;
    }
  }
  // Small values next to a large one are not lost (accumulation in double, not f32).
  std::vector<double> g(100001, 1.0);
  g[0] = 1e10;
  std::vector<Parameter> mixed = {param_with_grad(g, {100001}, DType::f32, dev)};
  EXPECT_FLOAT_EQ(static_cast<float>(trainrt::grad_norm(mixed, 1.0).item()), 1.00001e10f);
}

// PyTorch's clip_grad_norm_ on f32, f64 and mixed grads (tests/fixtures/torch_clip.txt, from
// gen_clip_fixtures.py): the total is the norm of the per-grad norms, each rounded to its
// grad's type (an f32 grad whose norm overflows f32 makes an f64 total inf); some f64 grad makes
// the total and the coefficient f64, every grad is then multiplied by the coefficient rounded
// to its dtype; f64 norms beyond the f32 range stay finite and non-zero. The values are
// PyTorch's to rounding (sums in another order); the grads are bitwise what the returned total
// gives.
TEST_P(ClipNorm, TorchGoldenF32AndF64Grads) {
  struct Case {
    std::string name;
    double max_norm = 0.0, norm_type = 0.0;
    std::vector<std::pair<DType, std::vector<double>>> grads;
    DType total_dtype = DType::f32;
    double total = 0.0;
    std::vector<std::vector<double>> clipped;
  };
  std::vector<Case> cases;
  read_fixture("torch_clip.txt", [&](const std::string& tag, std::istringstream& rest) {
    std::string w;
    if (tag == "case") {
      cases.emplace_back();
      rest >> cases.back().name;
    } else if (tag == "param") {
      rest >> w;
      double& v = w == "max_norm" ? cases.back().max_norm : cases.back().norm_type;
      rest >> w;
      v = fixture_number(w);
    } else if (tag == "grad" || tag == "clipped") {
      DType dt = DType::f32;
      if (tag == "grad") {
        rest >> w;
        dt = w == "f64" ? DType::f64 : DType::f32;
      }
      std::size_t n = 0;
      rest >> n;
      std::vector<double> v = fixture_numbers(rest);
      if (v.size() != n) return false;
      if (tag == "grad") {
        cases.back().grads.emplace_back(dt, v);
      } else {
        cases.back().clipped.push_back(v);
      }
    } else if (tag == "total") {
      rest >> w;
      cases.back().total_dtype = w == "f64" ? DType::f64 : DType::f32;
      rest >> w;
      cases.back().total = fixture_number(w);
    } else if (tag != "end") {
      return false;
    }
    return true;
  });
  ASSERT_EQ(cases.size(), 37u);
  int mixed = 0, beyond_f32 = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    ASSERT_EQ(c.clipped.size(), c.grads.size());
    std::vector<Parameter> params;
    for (const auto& g : c.grads) {
      params.push_back(
          param_with_grad(g.second, {static_cast<std::int64_t>(g.second.size())}, g.first, dev));
    }
    const Tensor total = trainrt::clip_grad_norm_(params, c.max_norm, c.norm_type);
    ASSERT_EQ(total.dtype(), c.total_dtype);
    const bool f64 = c.total_dtype == DType::f64;
    // Totals of f64 grads alone to f64 rounding, the others to f32 rounding: PyTorch sums an f32
    // grad's norm in f32 arithmetic (a few f32 ulps from the correctly rounded norm trainrt's
    // double sums give), so an f64 total with f32 grads in it is PyTorch's to f32 rounding only.
    bool all_f64 = true;
    for (const auto& g : c.grads) all_f64 = all_f64 && g.first == DType::f64;
    const double tol = all_f64 ? 1e-14 : 4e-7;
    const double t = total.item();
    if (std::isinf(c.total)) {
      EXPECT_EQ(t, c.total);
    } else {
      EXPECT_NEAR(t, c.total, tol * c.total);
    }
    if (f64 && !(c.total < 3.4e38 && c.total > 1.2e-38)) ++beyond_f32;
    bool has_f32 = false;
    for (std::size_t i = 0; i < params.size(); ++i) {
      const bool g64 = c.grads[i].first == DType::f64;
      has_f32 = has_f32 || !g64;
      const std::vector<double> got = params[i].grad().to_double_vector();
      std::vector<double> self(got.size());
      for (std::size_t j = 0; j < got.size(); ++j) {
        const double g = c.grads[i].second[j];
        self[j] = !f64  ? static_cast<double>(static_cast<float>(g) *
                                             ref_coef(static_cast<float>(t), c.max_norm))
                  : g64 ? g * ref_coef_f64(t, c.max_norm)
                        : static_cast<double>(static_cast<float>(g) *
                                              static_cast<float>(ref_coef_f64(t, c.max_norm)));
        const double want = c.clipped[i][j];
        EXPECT_NEAR(got[j], want, (g64 ? tol : 4e-7) * std::fabs(want)) << i << " " << j;
      }
      EXPECT_EQ(got, self) << "grad " << i;
    }
    if (f64 && has_f32) ++mixed;
  }
  EXPECT_EQ(mixed, 13);
  EXPECT_EQ(beyond_f32, 5);
}

TEST_P(ClipNorm, ClipGradValue) {
  std::vector<Parameter> params = {
      param_with_grad({-3, -0.5, 0, 0.25, 2, kInf, -kInf, kNaN}, {8}, DType::f32, dev),
      param_with_grad({5, -5, 0.75}, {3}, DType::bf16, dev),
      param_with_grad({}, {0}, DType::f32, dev)};
  trainrt::clip_grad_value_(params, 1.0);
  const std::vector<float> g = host_f32(params[0].grad());
  EXPECT_EQ(std::vector<float>(g.begin(), g.begin() + 7),
            (std::vector<float>{-1, -0.5, 0, 0.25, 1, 1, -1}));
  EXPECT_TRUE(std::isnan(g[7]));
  EXPECT_EQ(params[1].grad().to_double_vector(), (std::vector<double>{1, -1, 0.75}));
  trainrt::clip_grad_value_(params, 0.0);
  EXPECT_EQ(params[1].grad().to_double_vector(), (std::vector<double>{0, 0, 0}));
}

/// formula_param for each shape (parameter i uses formula i).
std::vector<Parameter> formula_params(const std::vector<Shape>& shapes, Device dev) {
  std::vector<Parameter> ps;
  for (std::size_t i = 0; i < shapes.size(); ++i)
    ps.push_back(formula_param(shapes[i], static_cast<int>(i), dev));
  return ps;
}

TEST_P(ClipNorm, FusedOptimizerFormEqualsParameterForm) {
  const std::vector<Shape> shapes = {{3, 4}, {0}, {17}, {40000}, {16385}};
  for (double p : {2.0, 1.0, kInf, 0.5}) {
    for (double max_norm : {0.3, 1e9}) {
      SCOPED_TRACE("p " + std::to_string(p) + " max_norm " + std::to_string(max_norm));
      std::vector<Parameter> pa = formula_params(shapes, dev), pb = formula_params(shapes, dev);
      trainrt::optim::AdamW oa(pa, trainrt::optim::AdamWOptions(0.01));
      trainrt::optim::AdamW ob(pb, trainrt::optim::AdamWOptions(0.01));
      for (int k = 0; k < 3; ++k) {
        for (std::size_t i = 0; i < shapes.size(); ++i) {
          set_formula_grad(pa[i], static_cast<int>(i), k);
          set_formula_grad(pb[i], static_cast<int>(i), k);
        }
        const std::vector<float> gb0 = host_f32(pb[3].grad());
        const double ta = trainrt::clip_grad_norm_(pa, max_norm, p).item();
        const double tb = trainrt::clip_grad_norm_(ob, max_norm, p).item();
        EXPECT_EQ(ta, tb);
        EXPECT_TRUE(same_bits(gb0, host_f32(pb[3].grad())));  // the fused form writes no grad
        oa.step();
        ob.step();
        for (std::size_t i = 0; i < shapes.size(); ++i) {
          EXPECT_TRUE(same_bits(host_f32(pa[i].value()), host_f32(pb[i].value()))) << i;
        }
      }
    }
  }
}

TEST_P(ClipNorm, ParameterListCallsSeeAPendingFusedClip) {
  // After clip_grad_norm_(opt), the parameter-list functions see the clipped grads, as in
  // PyTorch where the first clip rewrote them: clipping again, clip_grad_value_ and grad_norm
  // then step as PyTorch's twice-clipped grads would (B: the parameter form both times).
  for (int second = 0; second < 3; ++second) {
    SCOPED_TRACE("second call " + std::to_string(second));
    std::vector<Parameter> pa = {param_with_grad({3, 4}, {2}, DType::f32, dev),
                                 param_with_grad({0.5, -2, 1}, {3}, DType::f32, dev)};
    std::vector<Parameter> pb = {param_with_grad({3, 4}, {2}, DType::f32, dev),
                                 param_with_grad({0.5, -2, 1}, {3}, DType::f32, dev)};
    trainrt::optim::SGD oa(pa, trainrt::optim::SGDOptions(1.0));
    trainrt::optim::SGD ob(pb, trainrt::optim::SGDOptions(1.0));
    EXPECT_EQ(trainrt::clip_grad_norm_(oa, 1.0).item(), trainrt::clip_grad_norm_(pb, 1.0).item());
    if (second == 0) {
      EXPECT_EQ(trainrt::clip_grad_norm_(pa, 0.5).item(), trainrt::clip_grad_norm_(pb, 0.5).item());
    } else if (second == 1) {
      trainrt::clip_grad_value_(pa, 0.15);
      trainrt::clip_grad_value_(pb, 0.15);
    } else {
      const double n = trainrt::grad_norm(pa).item();
      EXPECT_EQ(n, trainrt::grad_norm(pb).item());
      EXPECT_NEAR(n, 1.0, 1e-6);
    }
    for (std::size_t i = 0; i < pa.size(); ++i) {
      EXPECT_TRUE(same_bits(host_f32(pa[i].grad()), host_f32(pb[i].grad()))) << "grad " << i;
    }
    oa.step();
    ob.step();
    for (std::size_t i = 0; i < pa.size(); ++i) {
      EXPECT_TRUE(same_bits(host_f32(pa[i].value()), host_f32(pb[i].value()))) << "param " << i;
    }
  }
}

TEST_P(ClipNorm, FusedFormErrorLeavesTheNextStepUnclipped) {
  std::vector<Parameter> pa = {param_with_grad({1, 2, kInf}, {3}, DType::f32, dev)};
  pa[0].value().copy_(make_tensor({1, 1, 1}, {3}, DType::f32, dev));
  trainrt::optim::SGD opt(pa, trainrt::optim::SGDOptions(0.5));
  EXPECT_ERROR(trainrt::clip_grad_norm_(opt, 1.0, 2.0, true), "non-finite");
  pa[0].set_grad(make_tensor({1, 2, 4}, {3}, DType::f32, dev));
  opt.step();  // no clip coefficient applied
  EXPECT_EQ(host_f32(pa[0].value()), (std::vector<float>{0.5f, 0.0f, -1.0f}));
}

TEST_P(ClipNorm, BadInput) {
  std::vector<Parameter> params = {param_with_grad({1, 2}, {2}, DType::f32, dev)};
  EXPECT_ERROR(trainrt::clip_grad_norm_(params, 0.0), "max_norm must be > 0");
  EXPECT_ERROR(trainrt::clip_grad_norm_(params, -1.0), "max_norm must be > 0");
  EXPECT_ERROR(trainrt::clip_grad_norm_(params, kNaN), "max_norm must be > 0");
  EXPECT_ERROR(trainrt::clip_grad_norm_(params, 1.0, 0.0), "norm_type must be > 0");
  EXPECT_ERROR(trainrt::clip_grad_norm_(params, 1.0, -2.0), "norm_type must be > 0");
  EXPECT_ERROR(trainrt::grad_norm(params, kNaN), "norm_type");
  EXPECT_ERROR(trainrt::clip_grad_value_(params, -1.0), "clip_value must be >= 0");
  EXPECT_ERROR(trainrt::clip_grad_norm_({params[0], Parameter()}, 1.0), "undefined");
  trainrt::optim::SGD opt(params, trainrt::optim::SGDOptions(0.1));
  EXPECT_ERROR(trainrt::clip_grad_norm_(opt, 0.0), "max_norm must be > 0");
  EXPECT_EQ(params[0].grad().to_vector<float>(), (std::vector<float>{1, 2}));
}

TEST(ClipDevices, GradsOnDifferentDevices) {
  std::string why;
  if (!trainrt::cuda_available(&why)) GTEST_SKIP() << "no CUDA: " << why;
  std::vector<Parameter> params = {param_with_grad({1}, {1}, DType::f32, Device::cpu()),
                                   param_with_grad({1}, {1}, DType::f32, Device::cuda(0))};
  EXPECT_ERROR(trainrt::clip_grad_norm_(params, 1.0), "one device");
}

TEST(ScalerDevices, OneScalerServesOneDevice) {
  std::string why;
  if (!trainrt::cuda_available(&why)) GTEST_SKIP() << "no CUDA: " << why;
  GradScaler scaler;
  (void)scaler.scale_tensor(Device::cpu());
  Parameter p(Tensor::zeros({3}, DType::f32, Device::cuda(0)));
  p.set_grad(Tensor::zeros({3}, DType::f32, Device::cuda(0)));
  trainrt::optim::SGD opt({p}, trainrt::optim::SGDOptions(0.1));
  EXPECT_ERROR(scaler.unscale_(opt), "one GradScaler serves one device");
  EXPECT_ERROR(scaler.step(opt), "one GradScaler serves one device");
  EXPECT_ERROR(scaler.update(), "no inf checks were recorded");  // nothing was recorded
  EXPECT_EQ(scaler.get_scale(), 65536.0);
}

// ---- GradScaler --------------------------------------------------------------------------------

class Scaler : public BackendTest {};
TRAINRT_INSTANTIATE_BACKENDS(Scaler);

/// One parameter [n] with Adam; grads set by the caller.
using Model = ParamsAndOptimizer;

Model make_model(const std::vector<Shape>& shapes, Device dev, const char* name = "Adam") {
  Model m;
  for (std::size_t i = 0; i < shapes.size(); ++i)
    m.params.push_back(formula_param(shapes[i], static_cast<int>(i), dev));
  trainrt::optim::HyperParams h{{"lr", 0.01}};
  if (std::string(name) == "Adam") h["amsgrad"] = 1.0;
  m.opt = trainrt::optim::make_optimizer(name, {ParamGroup(m.params)}, h);
  return m;
}

/// Writes +inf into element `at` of p's grad (an f32 grad), in place.
void put_inf(const Parameter& p, std::size_t at) {
  Tensor g = p.grad();
  std::vector<float> v = host_f32(g);
  v.at(at) = std::numeric_limits<float>::infinity();
  g.copy_(f32_tensor(v, g.shape(), g.device()));
}

/// Grads of step k multiplied by `scale` (exact for a power of two).
void set_scaled_grads(const Model& m, int k, double scale) {
  for (std::size_t i = 0; i < m.params.size(); ++i) {
    const Tensor v = m.params[i].value();
    std::vector<float> g = formula_values(v.shape(), static_cast<int>(i), k, true);
    for (float& x : g) x = static_cast<float>(x * scale);
    m.params[i].set_grad(f32_tensor(g, v.shape(), v.device()));
  }
}

TEST_P(Scaler, DefaultsAreTorchs) {
  GradScalerOptions o;
  EXPECT_EQ(o.init_scale, 65536.0);
  EXPECT_EQ(o.growth_factor, 2.0);
  EXPECT_EQ(o.backoff_factor, 0.5);
  EXPECT_EQ(o.growth_interval, 2000);
  EXPECT_TRUE(o.enabled);
  GradScaler s;
  EXPECT_EQ(s.get_scale(), 65536.0);
  EXPECT_EQ(s.get_growth_tracker(), 0);
}

TEST_P(Scaler, PyTorchScaleUpdateSequence) {
  // PyTorch's own test: scale 4, growth 2, backoff 0.25, interval 2.
  GradScalerOptions o;
  o.init_scale = 4.0;
  o.growth_factor = 2.0;
  o.backoff_factor = 0.25;
  o.growth_interval = 2;
  GradScaler scaler(o);
  Model m = make_model({{3}}, dev);
  set_scaled_grads(m, 0, 4.0);
  EXPECT_TRUE(scaler.step(*m.opt));
  scaler.update();
  EXPECT_EQ(scaler.get_scale(), 4.0);
  EXPECT_EQ(scaler.get_growth_tracker(), 1);
  set_scaled_grads(m, 1, 4.0);
  EXPECT_TRUE(scaler.step(*m.opt));
  scaler.update();
  EXPECT_EQ(scaler.get_scale(), 8.0);
  EXPECT_EQ(scaler.get_growth_tracker(), 0);
  set_scaled_grads(m, 2, 8.0);
  Tensor g = m.params[0].grad();
  g.copy_(make_tensor({1, kInf, 2}, {3}, DType::f32, dev));
  EXPECT_FALSE(scaler.step(*m.opt));
  EXPECT_TRUE(m.opt->last_step_skipped());
  scaler.update();
  EXPECT_EQ(scaler.get_scale(), 2.0);
  EXPECT_EQ(scaler.get_growth_tracker(), 0);
}

TEST_P(Scaler, GrowthCappedWhenTheNewScaleWouldBeInf) {
  GradScalerOptions o;
  o.init_scale = std::ldexp(1.0, 127);
  o.growth_interval = 1;
  GradScaler scaler(o);
  Model m = make_model({{2}}, dev);
  set_scaled_grads(m, 0, 1.0);
  scaler.step(*m.opt);
  scaler.update();
  EXPECT_EQ(scaler.get_scale(), std::ldexp(1.0, 127));
  EXPECT_EQ(scaler.get_growth_tracker(), 0);
  scaler.update(1e30);
  EXPECT_FLOAT_EQ(static_cast<float>(scaler.get_scale()), 1e30f);
}

TEST_P(Scaler, NonFiniteAnywhereSkipsTheStepAndChangesNothing) {
  const std::vector<Shape> shapes = {{3, 4}, {0}, {40000}, {16385}, {1000}};
  for (bool with_clip : {false, true}) {
    for (std::size_t t : {0u, 2u, 3u, 4u}) {
      const std::int64_t n = trainrt::shape_numel(shapes[t]);
      for (std::int64_t pos : {std::int64_t(0), n / 2, n - 9, n - 1}) {
        for (double bad : {kInf, -kInf, kNaN}) {
          SCOPED_TRACE("tensor " + std::to_string(t) + " position " + std::to_string(pos) +
                       " value " + std::to_string(bad) + (with_clip ? " clip" : ""));
          GradScalerOptions o;
          o.init_scale = 1024.0;
          GradScaler scaler(o);
          Model m = make_model(shapes, dev);
          for (int k = 0; k < 2; ++k) {  // two clean steps: state exists
            set_scaled_grads(m, k, 1024.0);
            ASSERT_TRUE(scaler.step(*m.opt));
            scaler.update();
          }
          const StateDict before = m.opt->state_dict();
          std::vector<std::vector<float>> pb;
          for (const Parameter& p : m.params) pb.push_back(host_f32(p.value()));
          set_scaled_grads(m, 2, 1024.0);
          std::vector<float> g = host_f32(m.params[t].grad());
          g[static_cast<std::size_t>(pos)] = static_cast<float>(bad);
          m.params[t].set_grad(f32_tensor(g, shapes[t], dev));
          if (with_clip) {
            scaler.unscale_(*m.opt);
            trainrt::clip_grad_norm_(*m.opt, 1.0);
          }
          EXPECT_FALSE(scaler.step(*m.opt));
          scaler.update();
          EXPECT_EQ(scaler.get_scale(), 512.0);
          for (std::size_t i = 0; i < m.params.size(); ++i) {
            EXPECT_TRUE(same_bits(pb[i], host_f32(m.params[i].value()))) << "param " << i;
          }
          const StateDict after = m.opt->state_dict();
          EXPECT_EQ(before.scalars, after.scalars);  // step counts included
          for (const auto& kv : before.tensors) {
            EXPECT_TRUE(same_bits(host_f32(kv.second), host_f32(after.tensors.at(kv.first))))
                << kv.first;
          }
          // The next clean step goes on as usual.
          set_scaled_grads(m, 3, 512.0);
          EXPECT_TRUE(scaler.step(*m.opt));
          EXPECT_EQ(m.opt->step_count(m.params[0]), 3);
        }
      }
    }
  }
}

TEST_P(Scaler, SkippedFirstStepCreatesNoState) {
  GradScaler scaler;
  Model m = make_model({{4}}, dev, "SGD");
  m.opt->set(0, "momentum", 0.9);
  m.params[0].set_grad(make_tensor({1, kNaN, 0, 0}, {4}, DType::f32, dev));
  EXPECT_FALSE(scaler.step(*m.opt));
  EXPECT_TRUE(m.opt->state_dict().tensors.empty());
  EXPECT_EQ(m.opt->step_count(m.params[0]), 0);
  scaler.update();
  // The first real step still initialises the momentum buffer to the grad.
  m.params[0].set_grad(make_tensor({32768, 0, 0, 0}, {4}, DType::f32, dev));
  EXPECT_TRUE(scaler.step(*m.opt));
  EXPECT_EQ(host_f32(m.opt->state(m.params[0], "momentum_buffer"))[0], 1.0f);
}

TEST_P(Scaler, ScaledRunEqualsUnscaledControl) {
  const std::vector<Shape> shapes = {{3, 4}, {0}, {40000}, {17}};
  for (bool clip : {false, true}) {
    for (const char* name : {"Adam", "SGD", "LAMB"}) {
      SCOPED_TRACE(std::string(name) + (clip ? " with clip" : ""));
      Model control = make_model(shapes, dev, name);
      Model scaled = make_model(shapes, dev, name);
      if (std::string(name) == "SGD") {
        control.opt->set(0, "momentum", 0.9);
        scaled.opt->set(0, "momentum", 0.9);
      }
      GradScalerOptions o;
      o.init_scale = 256.0;
      o.growth_interval = 3;
      GradScaler scaler(o);
      for (int k = 0; k < 10; ++k) {
        const double s = scaler.get_scale();
        set_scaled_grads(scaled, k, s);
        const bool overflow = k == 5;  // one iteration overflows: both runs skip it
        if (overflow) {
          put_inf(scaled.params[2], 123);
        }
        if (clip) {
          scaler.unscale_(*scaled.opt);
          trainrt::clip_grad_norm_(*scaled.opt, 0.5);
        }
        EXPECT_EQ(scaler.step(*scaled.opt), !overflow);
        scaler.update();
        if (!overflow) {
          set_scaled_grads(control, k, 1.0);
          if (clip) trainrt::clip_grad_norm_(control.params, 0.5);
          control.opt->step();
        }
      }
      EXPECT_EQ(scaler.get_scale(),
                512.0);  // 256, 512 after k = 2, 256 after k = 5, 512 after k = 8
      for (std::size_t i = 0; i < shapes.size(); ++i) {
        EXPECT_TRUE(
            same_bits(host_f32(control.params[i].value()), host_f32(scaled.params[i].value())))
            << "param " << i;
      }
    }
  }
}

// A training loop that skips steps itself (a non-finite clipped norm; a choice of its own),
// with zero_grad() and update() in either order, reaches the params of an unscaled control
// run that skips the same iterations. Nothing of a skipped iteration (1/scale, the clip
// coefficient, found_inf) may leak into the next one.
TEST_P(Scaler, LoopSkippingStepsEqualsUnscaledControl) {
  const std::vector<Shape> shapes = {{3, 4}, {40000}, {17}};
  for (const char* name : {"Adam", "SGD"}) {
    SCOPED_TRACE(name);
    Model control = make_model(shapes, dev, name);
    Model scaled = make_model(shapes, dev, name);
    GradScalerOptions o;
    o.init_scale = 256.0;
    o.growth_interval = 2;
    GradScaler scaler(o);
    for (int k = 0; k < 9; ++k) {
      SCOPED_TRACE("iteration " + std::to_string(k));
      set_scaled_grads(scaled, k, scaler.get_scale());
      const bool overflow = k == 2 || k == 5;
      const bool own_skip = k == 3;  // finite grads, skipped by the loop without clipping
      if (overflow) {
        put_inf(scaled.params[1], 7);
      }
      scaler.unscale_(*scaled.opt);
      bool skip = own_skip;
      if (!own_skip) skip = !std::isfinite(trainrt::clip_grad_norm_(*scaled.opt, 0.5).item());
      EXPECT_EQ(skip, overflow || own_skip);
      if (skip) {
        if (k == 5) {  // update first: the pending multipliers go into the grads, then dropped
          scaler.update();
          scaled.opt->zero_grad();
        } else {
          scaled.opt->zero_grad();
          scaler.update();
        }
        continue;
      }
      EXPECT_TRUE(scaler.step(*scaled.opt));
      scaler.update();
      scaled.opt->zero_grad();
      set_scaled_grads(control, k, 1.0);
      trainrt::clip_grad_norm_(control.params, 0.5);
      control.opt->step();
      control.opt->zero_grad();
    }
    for (std::size_t i = 0; i < shapes.size(); ++i) {
      EXPECT_TRUE(
          same_bits(host_f32(control.params[i].value()), host_f32(scaled.params[i].value())))
          << "param " << i;
      EXPECT_EQ(scaled.opt->step_count(scaled.params[i]), 6);
    }
  }
}

// A capturable optimizer in a GradScaler + fused clip loop: the same params, step counts,
// skips and scales as an ordinary one, bitwise, including steps skipped on an inf grad (the
// counts stay on the device, the host reads nothing in step()).
TEST_P(Scaler, CapturableLoopEqualsOrdinaryLoop) {
  const std::vector<Shape> shapes = {{3, 4}, {40000}, {17}};
  for (const char* name : {"Adam", "SGD"}) {
    SCOPED_TRACE(name);
    Model ordinary = make_model(shapes, dev, name);
    Model capt = make_model(shapes, dev, name);
    capt.opt->set_capturable(true);
    GradScalerOptions o;
    o.init_scale = 256.0;
    o.growth_interval = 2;
    GradScaler s_ord(o), s_cap(o);
    for (int k = 0; k < 9; ++k) {
      SCOPED_TRACE("iteration " + std::to_string(k));
      const bool overflow = k == 0 || k == 2 || k == 5;
      for (Model* m : {&ordinary, &capt}) {
        GradScaler& sc = m == &ordinary ? s_ord : s_cap;
        set_scaled_grads(*m, k, sc.get_scale());
        if (overflow) {
          put_inf(m->params[1], 7);
        }
        sc.unscale_(*m->opt);
        trainrt::clip_grad_norm_(*m->opt, 0.5);
        EXPECT_EQ(sc.step(*m->opt), !overflow);
        EXPECT_EQ(m->opt->last_step_skipped(), overflow);
        sc.update();
        m->opt->zero_grad();
      }
      EXPECT_EQ(s_ord.get_scale(), s_cap.get_scale());
    }
    for (std::size_t i = 0; i < shapes.size(); ++i) {
      EXPECT_TRUE(same_bits(host_f32(ordinary.params[i].value()), host_f32(capt.params[i].value())))
          << "param " << i;
      EXPECT_EQ(capt.opt->step_count(capt.params[i]), 6);
      EXPECT_EQ(ordinary.opt->step_count(ordinary.params[i]), 6);
    }
  }
}

// SGD with dampening whose first step is skipped by the scaler: a capturable optimizer keeps
// the (unchanged) buffer with count 0; switched back to ordinary steps, or saved to a state
// dict, it drops it, so the next step starts the buffer at g, as the ordinary optimizer does.
TEST_P(Scaler, CapturableSkippedFirstStepThenOrdinary) {
  for (int route = 0; route < 3; ++route) {  // stay capturable, switch off, state dict
    SCOPED_TRACE("route " + std::to_string(route));
    const std::vector<Shape> shapes = {{5}, {7}};
    Model a = make_model(shapes, dev, "SGD");
    Model b = make_model(shapes, dev, "SGD");
    for (Model* m : {&a, &b}) {
      m->opt->set(0, "momentum", 0.5);
      m->opt->set(0, "dampening", 0.3);
    }
    b.opt->set_capturable(true);
    GradScalerOptions o;
    o.init_scale = 4.0;
    GradScaler sa(o), sb(o);
    for (int k = 0; k < 3; ++k) {
      if (k == 1 && route == 1) b.opt->set_capturable(false);
      if (k == 1 && route == 2) {
        const trainrt::StateDict sd = b.opt->state_dict();
        EXPECT_EQ(sd.tensors.size(), 0u);  // nothing stepped yet
        b.opt->set_capturable(false);
        b.opt->load_state_dict(sd);
      }
      for (Model* m : {&a, &b}) {
        GradScaler& s = m == &a ? sa : sb;
        set_scaled_grads(*m, k, s.get_scale());
        if (k == 0) {
          put_inf(m->params[0], 1);
        }
        s.unscale_(*m->opt);
        EXPECT_EQ(s.step(*m->opt), k != 0);
        s.update();
      }
    }
    for (std::size_t i = 0; i < shapes.size(); ++i) {
      EXPECT_TRUE(same_bits(host_f32(a.params[i].value()), host_f32(b.params[i].value())))
          << "param " << i;
      EXPECT_EQ(b.opt->step_count(b.params[i]), 2);
    }
  }
}

// State made by a capturable step that the scaler skipped goes, as in an ordinary step, at
// the next look (the next step, state(), state_dict()): amsgrad, SGD momentum (with
// dampening) or Adagrad's initial value switched on or changed just before a skipped step all
// give the ordinary optimizer's params, state dicts and states; and a step with no grads
// after a skipped one reports that it skipped nothing.
TEST_P(Scaler, CapturableSkippedStepsLeaveNoState) {
  struct Case {
    const char* name;
    trainrt::optim::HyperParams h;
    const char* key;  // changed before the skipped iteration
    double value;
    const char* state;  // made by the skipped step
  };
  const std::vector<Case> cases = {
      {"Adam", {{"lr", 0.01}}, "amsgrad", 1.0, "max_exp_avg_sq"},
      {"SGD", {{"lr", 0.1}, {"dampening", 0.3}}, "momentum", 0.5, "momentum_buffer"},
      {"Adagrad",
       {{"lr", 0.1}, {"initial_accumulator_value", 0.1}},
       "initial_accumulator_value",
       5.0,
       "sum"},
  };
  const std::vector<Shape> shapes = {{5}, {7}};
  for (const Case& c : cases) {
    for (int skip_at : {0, 2}) {
      SCOPED_TRACE(std::string(c.name) + ", skip at " + std::to_string(skip_at));
      std::vector<Model> m(2);
      for (int i = 0; i < 2; ++i) {
        for (std::size_t j = 0; j < shapes.size(); ++j)
          m[i].params.push_back(formula_param(shapes[j], static_cast<int>(j), dev));
        m[i].opt = trainrt::optim::make_optimizer(c.name, {ParamGroup(m[i].params)}, c.h);
      }
      m[1].opt->set_capturable(true);
      GradScalerOptions o;
      o.init_scale = 4.0;
      std::vector<std::unique_ptr<GradScaler>> sc;
      sc.push_back(std::make_unique<GradScaler>(o));
      sc.push_back(std::make_unique<GradScaler>(o));
      for (int k = 0; k < 5; ++k) {
        for (int i = 0; i < 2; ++i) {
          if (k == skip_at) m[i].opt->set(0, c.key, c.value);
          set_scaled_grads(m[i], k, sc[i]->get_scale());
          if (k == skip_at) {
            put_inf(m[i].params[0], 1);
          }
          sc[i]->unscale_(*m[i].opt);
          EXPECT_EQ(sc[i]->step(*m[i].opt), k != skip_at);
          sc[i]->update();
        }
        if (k == skip_at) {  // right after the skip: the same states and dicts
          for (std::size_t j = 0; j < shapes.size(); ++j) {
            EXPECT_EQ(m[0].opt->state(m[0].params[j], c.state).defined(),
                      m[1].opt->state(m[1].params[j], c.state).defined())
                << "param " << j;
          }
          EXPECT_EQ(m[0].opt->state_dict().tensors.size(), m[1].opt->state_dict().tensors.size());
        }
      }
      for (std::size_t j = 0; j < shapes.size(); ++j) {
        EXPECT_TRUE(same_bits(host_f32(m[0].params[j].value()), host_f32(m[1].params[j].value())))
            << "param " << j;
      }
      const trainrt::StateDict a = m[0].opt->state_dict(), b = m[1].opt->state_dict();
      EXPECT_EQ(a.scalars, b.scalars);
      ASSERT_EQ(a.tensors.size(), b.tensors.size());
      for (const auto& kv : a.tensors) {
        ASSERT_TRUE(b.tensors.count(kv.first)) << kv.first;
        EXPECT_TRUE(same_bits(host_f32(kv.second), host_f32(b.tensors.at(kv.first)))) << kv.first;
      }
      // A skipped step, then one with no grads: nothing was skipped by the second.
      for (int i = 0; i < 2; ++i) {
        set_scaled_grads(m[i], 9, sc[i]->get_scale());
        Tensor g = m[i].params[0].grad();
        std::vector<float> v = host_f32(g);
        v[0] = std::numeric_limits<float>::quiet_NaN();
        g.copy_(f32_tensor(v, g.shape(), dev));
        sc[i]->unscale_(*m[i].opt);
        EXPECT_FALSE(sc[i]->step(*m[i].opt));
        sc[i]->update();
        EXPECT_TRUE(m[i].opt->last_step_skipped());
        m[i].opt->zero_grad();
        m[i].opt->step();
        EXPECT_FALSE(m[i].opt->last_step_skipped()) << (i ? "capturable" : "ordinary");
      }
    }
  }
}

// update() after unscale_ without a step: the inf/NaN check runs (the scale backs off), and the
// grads are handed back unscaled, as PyTorch's unscale_ leaves them; a plain step then uses
// them as they are, and a grad set afterwards is not unscaled.
TEST_P(Scaler, UpdateAfterUnscaleWithoutStep) {
  GradScaler scaler;  // 65536
  Parameter p(f32_tensor({0.0f, 0.0f}, {2}, dev));
  trainrt::optim::SGD opt({p}, trainrt::optim::SGDOptions(1.0));
  p.set_grad(f32_tensor({std::numeric_limits<float>::infinity(), 65536.0f}, {2}, dev));
  scaler.unscale_(opt);
  scaler.update();
  EXPECT_EQ(scaler.get_scale(), 32768.0);  // backed off: the check found the inf
  EXPECT_EQ(host_f32(p.grad())[1], 1.0f);  // unscaled in place
  p.set_grad(f32_tensor({3.0f, 4.0f}, {2}, dev));
  opt.step();
  EXPECT_EQ(host_f32(p.value()), (std::vector<float>{-3.0f, -4.0f}));

  // Finite grads: no back-off, the tracker counts; the same hand-back.
  p.set_grad(f32_tensor({32768.0f, 65536.0f}, {2}, dev));
  scaler.unscale_(opt);
  scaler.update();
  EXPECT_EQ(scaler.get_scale(), 32768.0);
  EXPECT_EQ(scaler.get_growth_tracker(), 1);
  opt.step();
  EXPECT_EQ(host_f32(p.value()), (std::vector<float>{-4.0f, -6.0f}));
}

// zero_grad drops a pending clip coefficient and 1/scale with the grads they were for.
TEST_P(Scaler, ZeroGradDropsPendingMultipliers) {
  Parameter p(f32_tensor({0.0f, 0.0f}, {2}, dev));
  trainrt::optim::SGD opt({p}, trainrt::optim::SGDOptions(1.0));
  p.set_grad(f32_tensor({300.0f, 400.0f}, {2}, dev));
  EXPECT_EQ(trainrt::clip_grad_norm_(opt, 1.0).item(), 500.0);
  opt.zero_grad();
  p.set_grad(f32_tensor({1.0f, 1.0f}, {2}, dev));
  opt.step();
  EXPECT_EQ(host_f32(p.value()), (std::vector<float>{-1.0f, -1.0f}));

  // The same with a GradScaler: after zero_grad the new grads are used unscaled (PyTorch's
  // stage stays "unscaled"), and an inf found in the dropped grads still skips that step.
  GradScaler scaler;
  p.set_grad(f32_tensor({std::numeric_limits<float>::infinity(), 1.0f}, {2}, dev));
  scaler.unscale_(opt);
  opt.zero_grad(false);  // zeroed in place
  EXPECT_EQ(host_f32(p.grad()), (std::vector<float>{0.0f, 0.0f}));
  p.set_grad(f32_tensor({1.0f, 1.0f}, {2}, dev));
  EXPECT_FALSE(scaler.step(opt));  // found_inf from the dropped grads
  scaler.update();
  EXPECT_EQ(scaler.get_scale(), 32768.0);
  EXPECT_EQ(host_f32(p.value()), (std::vector<float>{-1.0f, -1.0f}));
  p.set_grad(f32_tensor({65536.0f, 32768.0f}, {2}, dev));
  scaler.unscale_(opt);
  opt.zero_grad();
  p.set_grad(f32_tensor({2.0f, 2.0f}, {2}, dev));
  EXPECT_TRUE(scaler.step(opt));  // 2, not 2 / 32768
  scaler.update();
  EXPECT_EQ(host_f32(p.value()), (std::vector<float>{-3.0f, -3.0f}));
}

// Replacing one grad after unscale_ / the fused clip: the others keep them, the new one is used
// as it is (PyTorch's calls rewrote the old grads); clearing one still counts it in the check.
TEST_P(Scaler, SetGradAndClearGradAfterUnscale) {
  GradScaler scaler;  // 65536
  Parameter a(f32_tensor({0.0f}, {1}, dev)), b(f32_tensor({0.0f}, {1}, dev));
  trainrt::optim::SGD opt({a, b}, trainrt::optim::SGDOptions(1.0));
  a.set_grad(f32_tensor({3.0f * 65536.0f}, {1}, dev));
  b.set_grad(f32_tensor({4.0f * 65536.0f}, {1}, dev));
  scaler.unscale_(opt);
  EXPECT_EQ(trainrt::clip_grad_norm_(opt, 2.5).item(), 5.0);  // coefficient 1/2
  b.set_grad(f32_tensor({7.0f}, {1}, dev));
  EXPECT_TRUE(scaler.step(opt));
  scaler.update();
  EXPECT_NEAR(host_f32(a.value())[0], -1.5f, 1e-6f);  // 3 unscaled and clipped
  EXPECT_EQ(host_f32(b.value())[0], -7.0f);           // the new grad as it is

  a.set_grad(f32_tensor({std::numeric_limits<float>::infinity()}, {1}, dev));
  b.set_grad(f32_tensor({65536.0f}, {1}, dev));
  scaler.unscale_(opt);
  a.clear_grad();                  // its inf was there at unscale_
  EXPECT_FALSE(scaler.step(opt));  // so the step is skipped, as in PyTorch
  scaler.update();
  EXPECT_EQ(host_f32(b.value())[0], -7.0f);
}

// A group added after unscale_ / the fused clip: its grads are used as they are (PyTorch's
// calls rewrote only the grads of the parameters there were).
TEST_P(Scaler, ParamGroupAddedAfterUnscale) {
  GradScaler scaler;  // 65536
  Parameter a(f32_tensor({0.0f}, {1}, dev)), b(f32_tensor({0.0f}, {1}, dev));
  trainrt::optim::SGD opt({a}, trainrt::optim::SGDOptions(1.0));
  a.set_grad(f32_tensor({4.0f * 65536.0f}, {1}, dev));
  scaler.unscale_(opt);
  EXPECT_EQ(trainrt::clip_grad_norm_(opt, 2.0).item(), 4.0);  // coefficient ~1/2
  b.set_grad(f32_tensor({3.0f}, {1}, dev));
  opt.add_param_group(ParamGroup({b}));
  EXPECT_TRUE(scaler.step(opt));
  scaler.update();
  EXPECT_NEAR(host_f32(a.value())[0], -2.0f, 1e-6f);
  EXPECT_EQ(host_f32(b.value())[0], -3.0f);
}

// A fused clip between scaler.step() and scaler.update() (clipping grads already stepped, as a
// loop may): update() still sees the inf the step found and backs off, as PyTorch's. The clip
// used to reset the block the scaler reads found_inf from, so the scale grew instead.
TEST_P(Scaler, FusedClipBetweenStepAndUpdateKeepsTheFoundInf) {
  GradScaler scaler;  // 65536
  Parameter p(f32_tensor({0.0f, 0.0f}, {2}, dev));
  trainrt::optim::SGD opt({p}, trainrt::optim::SGDOptions(1.0));
  for (int round = 0; round < 3; ++round) {  // the second and third use the spare block
    p.set_grad(f32_tensor({std::numeric_limits<float>::infinity(), 1.0f}, {2}, dev));
    EXPECT_FALSE(scaler.step(opt));
    trainrt::clip_grad_norm_(opt, 1.0);
    scaler.update();
    EXPECT_EQ(scaler.get_scale(), 65536.0 / std::ldexp(1.0, round + 1)) << round;
    EXPECT_EQ(scaler.get_growth_tracker(), 0);
    opt.zero_grad();
  }
  EXPECT_EQ(host_f32(p.value()), (std::vector<float>{0.0f, 0.0f}));
  // Finite grads after it: the step runs (nothing stale in either block) and the tracker counts.
  const float s = static_cast<float>(scaler.get_scale());
  p.set_grad(f32_tensor({3.0f * s, 4.0f * s}, {2}, dev));
  EXPECT_TRUE(scaler.step(opt));
  EXPECT_EQ(trainrt::clip_grad_norm_(opt, 1.0).item(), 5.0 * s);  // the grads stay scaled
  scaler.update();
  EXPECT_EQ(scaler.get_growth_tracker(), 1);
  opt.zero_grad();
  p.set_grad(f32_tensor({1.0f, 1.0f}, {2}, dev));
  opt.step();  // neither skipped nor clipped by the dropped coefficient
  EXPECT_FALSE(opt.last_step_skipped());
  EXPECT_EQ(host_f32(p.value()), (std::vector<float>{-4.0f, -5.0f}));
}

// Grads dropped after unscale_ found an inf in them: scaler.step() still skips (PyTorch skips
// optimizer.step() on the recorded check) and says so.
TEST_P(Scaler, StepWithoutGradsAfterAnInfWasFoundIsSkipped) {
  for (bool capturable : {false, true}) {
    GradScaler scaler;
    Parameter p(f32_tensor({0.0f, 0.0f}, {2}, dev));
    trainrt::optim::SGD opt({p}, trainrt::optim::SGDOptions(1.0));
    opt.set_capturable(capturable);
    p.set_grad(f32_tensor({std::numeric_limits<float>::infinity(), 1.0f}, {2}, dev));
    scaler.unscale_(opt);
    opt.zero_grad();  // set to none
    EXPECT_FALSE(scaler.step(opt)) << capturable;
    EXPECT_TRUE(opt.last_step_skipped());
    scaler.update();
    EXPECT_EQ(scaler.get_scale(), 32768.0);
    // Finite grads dropped the same way: not skipped.
    p.set_grad(f32_tensor({1.0f, 1.0f}, {2}, dev));
    scaler.unscale_(opt);
    p.clear_grad();
    EXPECT_TRUE(scaler.step(opt)) << capturable;
    EXPECT_FALSE(opt.last_step_skipped());
    scaler.update();
    EXPECT_EQ(scaler.get_growth_tracker(), 1);
  }
}

// A step that fails for want of grads records nothing: update() then fails too (PyTorch:
// "No inf checks were recorded prior to update"), as after unscale_ of an optimizer without
// grads.
TEST_P(Scaler, FailedStepRecordsNothing) {
  GradScaler scaler;
  Model empty = make_model({{3}}, dev);
  EXPECT_ERROR(scaler.step(*empty.opt), "no inf checks were recorded for this optimizer");
  EXPECT_ERROR(scaler.update(), "no inf checks were recorded prior to update");
  scaler.unscale_(*empty.opt);
  EXPECT_ERROR(scaler.update(), "no inf checks were recorded prior to update");
  EXPECT_EQ(scaler.get_scale(), 65536.0);
  EXPECT_EQ(scaler.get_growth_tracker(), 0);
}

TEST_P(Scaler, ScaleAndScaleTensor) {
  GradScaler scaler;
  const Tensor loss = make_tensor({1.5}, {}, DType::f32, dev);
  const Tensor s = scaler.scale(loss);
  EXPECT_EQ(s.item(), 1.5 * 65536.0);
  EXPECT_EQ(loss.item(), 1.5);  // not in place
  const Tensor lh = make_tensor({2.0}, {}, DType::f16, dev);
  const Tensor sh = scaler.scale(lh);
  EXPECT_EQ(sh.dtype(), DType::f32);  // 2 * 65536 does not fit f16
  EXPECT_EQ(sh.item(), 131072.0);
  // The device scale as a loss's upstream scale: the loss gradient comes out scaled.
  const Tensor x = make_tensor({0.1, -0.2, 0.3, 0.05}, {1, 4}, DType::f32, dev);
  const Tensor tgt = Tensor::from_vector(std::vector<std::int64_t>{2}, {1}, dev);
  trainrt::CrossEntropyOptions co;
  co.grad_scale_tensor = scaler.scale_tensor(dev);
  const auto scaled = trainrt::cross_entropy(x, tgt, co);
  const auto plain = trainrt::cross_entropy(x, tgt);
  const std::vector<float> a = host_f32(scaled.grad), b = host_f32(plain.grad);
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_FLOAT_EQ(a[i], b[i] * 65536.0f);
}

TEST_P(Scaler, Misuse) {
  GradScaler scaler;
  Model m = make_model({{3}}, dev);
  EXPECT_ERROR(scaler.update(), "no inf checks were recorded");
  set_scaled_grads(m, 0, 65536.0);
  scaler.unscale_(*m.opt);
  EXPECT_ERROR(scaler.unscale_(*m.opt), "already been called on this optimizer");
  scaler.step(*m.opt);
  EXPECT_ERROR(scaler.step(*m.opt), "step() has already been called");
  EXPECT_ERROR(scaler.unscale_(*m.opt), "after step()");
  scaler.update();
  EXPECT_ERROR(scaler.update(), "no inf checks were recorded");
  trainrt::clip_grad_norm_(m.params, 1.0);
  set_scaled_grads(m, 1, 65536.0);
  scaler.unscale_(*m.opt);
  scaler.step(*m.opt);
  scaler.update();
  // An optimizer without grads records no inf check.
  Model empty = make_model({{3}}, dev);
  EXPECT_ERROR(scaler.step(*empty.opt), "no inf checks were recorded for this optimizer");
  // Bad options.
  auto with = [](double init, double growth, double backoff, std::int64_t interval) {
    GradScalerOptions o;
    o.init_scale = init;
    o.growth_factor = growth;
    o.backoff_factor = backoff;
    o.growth_interval = interval;
    return o;
  };
  EXPECT_ERROR((void)GradScaler(with(65536, 1.0, 0.5, 10)), "growth_factor must be > 1");
  EXPECT_ERROR((void)GradScaler(with(65536, 2.0, 1.0, 10)), "backoff_factor must be in (0, 1)");
  EXPECT_ERROR((void)GradScaler(with(65536, 2.0, 0.5, 0)), "growth_interval must be");
  EXPECT_ERROR((void)GradScaler(with(0, 2.0, 0.5, 10)), "init_scale must be");
  EXPECT_ERROR((void)GradScaler(with(1e39, 2.0, 0.5, 10)), "init_scale must be");
  EXPECT_ERROR(scaler.set_growth_factor(0.5), "growth_factor must be > 1");
  EXPECT_ERROR(scaler.update(-1.0), "new_scale must be");
}

TEST_P(Scaler, DisabledPassesThrough) {
  GradScalerOptions o;
  o.enabled = false;
  GradScaler scaler(o);
  Model m = make_model({{3}}, dev);
  const Tensor loss = make_tensor({2.0}, {}, DType::f32, dev);
  EXPECT_EQ(scaler.scale(loss).item(), 2.0);
  EXPECT_FALSE(scaler.scale_tensor(dev).defined());
  set_scaled_grads(m, 0, 1.0);
  scaler.unscale_(*m.opt);
  EXPECT_TRUE(scaler.step(*m.opt));
  scaler.update();
  EXPECT_EQ(m.opt->step_count(m.params[0]), 1);
  EXPECT_TRUE(scaler.state_dict().empty());
  EXPECT_EQ(scaler.get_scale(), 1.0);
}

TEST_P(Scaler, StateDictRoundTrip) {
  GradScalerOptions o;
  o.init_scale = 64.0;
  o.growth_interval = 5;
  GradScaler a(o);
  Model m = make_model({{3}}, dev);
  for (int k = 0; k < 3; ++k) {
    set_scaled_grads(m, k, 64.0);
    a.step(*m.opt);
    a.update();
  }
  const StateDict sd = a.state_dict();
  EXPECT_EQ(sd.scalars.at("scale"), 64.0);
  EXPECT_EQ(sd.scalars.at("_growth_tracker"), 3.0);
  EXPECT_EQ(sd.scalars.at("growth_interval"), 5.0);
  EXPECT_EQ(sd.scalars.at("growth_factor"), 2.0);
  EXPECT_EQ(sd.scalars.at("backoff_factor"), 0.5);
  GradScaler b;
  b.load_state_dict(sd);
  EXPECT_EQ(b.state_dict().scalars, sd.scalars);
  // b continues a's trajectory: two more clean updates grow the scale.
  Model mb = make_model({{3}}, dev);
  for (int k = 0; k < 2; ++k) {
    set_scaled_grads(mb, k, b.get_scale());
    b.step(*mb.opt);
    b.update();
  }
  EXPECT_EQ(b.get_scale(), 128.0);
  EXPECT_EQ(b.get_growth_tracker(), 0);

  GradScaler c;
  EXPECT_ERROR(c.load_state_dict(StateDict()), "empty");
  StateDict missing = sd;
  missing.scalars.erase("backoff_factor");
  EXPECT_ERROR(c.load_state_dict(missing), "no 'backoff_factor'");
  for (double t : {-1.0, 2.5, 4294967296.0}) {
    StateDict bad = sd;
    bad.scalars["_growth_tracker"] = t;
    EXPECT_ERROR(c.load_state_dict(bad), "_growth_tracker");
  }
  for (double gi : {kInf, -kInf, 1e300, 0.0, 2147483648.0}) {
    StateDict bad = sd;
    bad.scalars["growth_interval"] = gi;
    EXPECT_ERROR(c.load_state_dict(bad), "growth_interval must be a positive 32-bit integer");
  }
  {
    StateDict bad = sd;
    bad.strings["optimizer"] = "AdamW";  // found by a fuzz: extra strings and tensors loaded
    EXPECT_ERROR(c.load_state_dict(bad), "unexpected entry 'optimizer'");
    bad = sd;
    bad.tensors["state.0.exp_avg"] = Tensor::zeros({1}, DType::f32, Device::cpu());
    EXPECT_ERROR(c.load_state_dict(bad), "unexpected tensor 'state.0.exp_avg'");
  }
  EXPECT_EQ(c.get_scale(), 65536.0);  // unchanged

  // A scale that backoff underflowed to 0 is saved as 0 and loads (PyTorch's loads anything).
  StateDict zero = sd;
  zero.scalars["scale"] = 0.0;
  c.load_state_dict(zero);
  EXPECT_EQ(c.get_scale(), 0.0);
  EXPECT_EQ(c.state_dict().scalars, zero.scalars);
  for (double v : {-1.0, 1e-46, 1e39}) {
    StateDict bad = sd;
    bad.scalars["scale"] = v;
    EXPECT_ERROR(c.load_state_dict(bad), "scale must be a positive finite f32 value");
  }
}

TEST_P(Scaler, StateDictLoadsATrackerAboveALoweredInterval) {
  // set_growth_interval below the current count: the scaler counts on without growing (as
  // torch's _amp_update_scale_ does), and its own state dict must load.
  GradScalerOptions o;
  o.growth_interval = 10;
  GradScaler a(o);
  Model m = make_model({{3}}, dev);
  for (int k = 0; k < 6; ++k) {
    set_scaled_grads(m, k, a.get_scale());
    a.step(*m.opt);
    a.update();
  }
  a.set_growth_interval(3);
  const StateDict sd = a.state_dict();
  EXPECT_EQ(sd.scalars.at("_growth_tracker"), 6.0);
  GradScaler b;
  b.load_state_dict(sd);
  EXPECT_EQ(b.state_dict().scalars, sd.scalars);
  a.load_state_dict(sd);
  for (int k = 6; k < 9; ++k) {
    set_scaled_grads(m, k, a.get_scale());
    a.step(*m.opt);
    a.update();
  }
  EXPECT_EQ(a.get_scale(), 65536.0);
  EXPECT_EQ(a.get_growth_tracker(), 9);
}

TEST_P(Scaler, UnscaleWithoutGradsRecordsNothing) {
  // torch: unscale_ over no grads records no inf check; a grad set afterwards is not unscaled,
  // and step() fails ("No inf checks were recorded for this optimizer"), as does update().
  GradScaler scaler;
  Parameter p(f32_tensor({1.0f, 2.0f}, {2}, dev));
  trainrt::optim::SGD opt({p}, trainrt::optim::SGDOptions(1.0));
  scaler.unscale_(opt);
  p.set_grad(f32_tensor({65536.0f, 131072.0f}, {2}, dev));
  EXPECT_ERROR(scaler.step(opt), "no inf checks were recorded for this optimizer");
  EXPECT_EQ(host_f32(p.value()), (std::vector<float>{1.0f, 2.0f}));
  EXPECT_EQ(host_f32(p.grad()), (std::vector<float>{65536.0f, 131072.0f}));
  EXPECT_EQ(opt.step_count(p), 0);
  EXPECT_ERROR(scaler.update(), "no inf checks were recorded");
  EXPECT_ERROR(scaler.unscale_(opt), "already been called");  // as torch: update never ran
}

TEST_P(Scaler, TorchRecipeParameterListClipAfterUnscale) {
  // PyTorch's recipe: unscale_(opt), clip_grad_norm_(params), step. The parameter-list clip
  // first multiplies the pending 1/scale into the grads, so it clips unscaled grads, and the
  // run equals the fused form (clip_grad_norm_(opt)) and an unscaled control, bitwise, through
  // an overflowing iteration.
  const std::vector<Shape> shapes = {{3, 4}, {40000}, {17}};
  for (const char* name : {"Adam", "SGD"}) {
    SCOPED_TRACE(name);
    Model control = make_model(shapes, dev, name);
    Model fused = make_model(shapes, dev, name);
    Model recipe = make_model(shapes, dev, name);
    GradScaler sf, sr;
    for (int k = 0; k < 5; ++k) {
      SCOPED_TRACE("iteration " + std::to_string(k));
      const bool overflow = k == 2;
      for (Model* m : {&fused, &recipe}) {
        set_scaled_grads(*m, k, sf.get_scale());
        if (overflow) {
          put_inf(m->params[1], 7);
        }
      }
      sf.unscale_(*fused.opt);
      const double nf = trainrt::clip_grad_norm_(*fused.opt, 0.5).item();
      sr.unscale_(*recipe.opt);
      const double nr = trainrt::clip_grad_norm_(recipe.params, 0.5).item();
      if (overflow) {
        EXPECT_FALSE(std::isfinite(nr));
      } else {
        EXPECT_EQ(nf, nr);
      }
      EXPECT_EQ(sf.step(*fused.opt), !overflow);
      EXPECT_EQ(sr.step(*recipe.opt), !overflow);
      sf.update();
      sr.update();
      EXPECT_EQ(sf.get_scale(), sr.get_scale());
      if (!overflow) {
        set_scaled_grads(control, k, 1.0);
        trainrt::clip_grad_norm_(control.params, 0.5);
        for (std::size_t i = 0; i < shapes.size(); ++i) {  // the grads PyTorch's would hold
          EXPECT_TRUE(
              same_bits(host_f32(control.params[i].grad()), host_f32(recipe.params[i].grad())))
              << "grad " << i;
        }
        control.opt->step();
      }
      for (Model* m : {&control, &fused, &recipe}) m->opt->zero_grad();
    }
    for (std::size_t i = 0; i < shapes.size(); ++i) {
      const std::vector<float> c = host_f32(control.params[i].value());
      EXPECT_TRUE(same_bits(c, host_f32(fused.params[i].value()))) << "param " << i;
      EXPECT_TRUE(same_bits(c, host_f32(recipe.params[i].value()))) << "param " << i;
      EXPECT_EQ(recipe.opt->step_count(recipe.params[i]), 4);
    }
  }
}

// ---- CUDA parity (skips without a GPU)
// -----------------------------------------------------------

// Found by a differential fuzz against PyTorch (2026-12-04): the fused forms round as
// PyTorch's separate passes do, also where a step folds more than one multiplier.

GradScalerOptions with_init_scale(double s) {
  GradScalerOptions o;
  o.init_scale = s;
  return o;
}

/// Grads of step k times `mul`, for parameters made by formula_param.
void set_formula_grads_times(const std::vector<Parameter>& ps, int k, float mul) {
  for (std::size_t i = 0; i < ps.size(); ++i) {
    const Tensor v = ps[i].value();
    std::vector<float> g = formula_values(v.shape(), static_cast<int>(i), k, true);
    for (float& x : g) x *= mul;
    ps[i].set_grad(f32_tensor(g, v.shape(), v.device()));
  }
}

TEST_P(ClipNorm, TwoFusedClipsRoundAsTwoPasses) {
  // PyTorch's second clip multiplies the grads its first clip wrote: (g * c1) * c2, not
  // g * (c1 * c2). A: the fused form twice; B: the parameter form twice.
  const std::vector<Shape> shapes = {{1000}, {17}, {3, 4}};
  std::vector<Parameter> pa = formula_params(shapes, dev), pb = formula_params(shapes, dev);
  trainrt::optim::SGD oa(pa, trainrt::optim::SGDOptions(1.0));
  trainrt::optim::SGD ob(pb, trainrt::optim::SGDOptions(1.0));
  for (int k = 0; k < 3; ++k) {
    set_formula_grads_times(pa, k, 37.0f);
    set_formula_grads_times(pb, k, 37.0f);
    for (double max_norm : {3.0, 0.7}) {
      EXPECT_EQ(trainrt::clip_grad_norm_(oa, max_norm).item(),
                trainrt::clip_grad_norm_(pb, max_norm).item());
    }
    oa.step();
    ob.step();
    for (std::size_t i = 0; i < shapes.size(); ++i) {
      EXPECT_TRUE(same_bits(host_f32(pa[i].value()), host_f32(pb[i].value()))) << i;
    }
  }
}

TEST_P(Scaler, FusedClipBeforeUnscaleRoundsAsPyTorch) {
  // A clip of the still scaled grads, then scaler.step: PyTorch's clip writes g * coef and the
  // unscale multiplies that by 1/scale, (g * coef) * inv. Folding both into the step as
  // (g * inv) * coef rounds differently, and overflows where 1/scale is large.
  {
    GradScaler sa(with_init_scale(3.0)), sb(with_init_scale(3.0));
    const std::vector<Shape> shapes = {{1000}, {17}};
    std::vector<Parameter> pa = formula_params(shapes, dev), pb = formula_params(shapes, dev);
    trainrt::optim::SGD oa(pa, trainrt::optim::SGDOptions(1.0));
    trainrt::optim::SGD ob(pb, trainrt::optim::SGDOptions(1.0));
    set_formula_grads_times(pa, 1, 111.0f);
    set_formula_grads_times(pb, 1, 111.0f);
    EXPECT_EQ(trainrt::clip_grad_norm_(oa, 2.0).item(), trainrt::clip_grad_norm_(pb, 2.0).item());
    EXPECT_TRUE(sa.step(oa));
    EXPECT_TRUE(sb.step(ob));
    for (std::size_t i = 0; i < shapes.size(); ++i) {
      EXPECT_TRUE(same_bits(host_f32(pa[i].value()), host_f32(pb[i].value()))) << i;
    }
  }
  GradScaler scaler(with_init_scale(1e-20));
  Parameter p(f32_tensor({0.0f}, {1}, dev));
  trainrt::optim::SGD opt({p}, trainrt::optim::SGDOptions(1.0));
  p.set_grad(f32_tensor({1e19f}, {1}, dev));
  EXPECT_EQ(trainrt::clip_grad_norm_(opt, 1.0).item(), static_cast<double>(1e19f));
  EXPECT_TRUE(scaler.step(opt));
  const volatile float clipped = 1e19f * ref_coef(1e19f, 1.0);
  const volatile float unscaled =
      clipped * static_cast<float>(1.0 / static_cast<double>(static_cast<float>(1e-20)));
  EXPECT_EQ(host_f32(p.value()), (std::vector<float>{-unscaled}));
  EXPECT_TRUE(std::isfinite(unscaled));
}

TEST_P(Scaler, FusedInfNormSeesTheNaNsOfTheUnscale) {
  // 1/scale overflows f32 (a scale of 1e-40): unscaling [1, 0] gives [inf, NaN], whose inf norm
  // is NaN, as PyTorch's and the parameter form's; the max alone ignored the NaN (gave inf).
  for (bool fused : {true, false}) {
    SCOPED_TRACE(fused ? "fused" : "parameter list");
    GradScaler scaler(with_init_scale(1e-40));
    Parameter p(f32_tensor({0.0f, 0.0f}, {2}, dev));
    trainrt::optim::SGD opt({p}, trainrt::optim::SGDOptions(1.0));
    p.set_grad(f32_tensor({1.0f, 0.0f}, {2}, dev));
    scaler.unscale_(opt);
    const double n = fused ? trainrt::clip_grad_norm_(opt, 1.0, kInf).item()
                           : trainrt::clip_grad_norm_({p}, 1.0, kInf).item();
    EXPECT_TRUE(std::isnan(n)) << n;
  }
  // A NaN made by a clip coefficient of 0 (inf * 0), seen by a second clip.
  GradScaler scaler(with_init_scale(0.5));
  Parameter p(f32_tensor({0.0f, 0.0f}, {2}, dev));
  trainrt::optim::SGD opt({p}, trainrt::optim::SGDOptions(1.0));
  p.set_grad(f32_tensor({3e38f, 1.0f}, {2}, dev));
  scaler.unscale_(opt);
  EXPECT_EQ(trainrt::clip_grad_norm_(opt, 1.0).item(), kInf);
  EXPECT_TRUE(std::isnan(trainrt::clip_grad_norm_(opt, 1.0, kInf).item()));
  // PyTorch's inf check reads the raw grads, which are finite: the step runs, with the NaN
  // coefficient of the NaN norm.
  EXPECT_TRUE(scaler.step(opt));
  for (float x : host_f32(p.value())) EXPECT_TRUE(std::isnan(x)) << x;
}

TEST_P(Scaler, DirectStepAfterUnscaleIsPyTorchsOptimizerStep) {
  // optimizer.step() called directly after scaler.unscale_ (not scaler.step) applies the
  // unscaled (and clipped) grads whatever they hold, and update() still reads the inf check of
  // unscale_ (it threw "no inf checks were recorded", and unscale_ then stayed refused).
  for (int run = 0; run < 6; ++run) {
    const int clip = run % 3;  // none, the parameter form, the fused form
    const bool capturable = run >= 3;
    SCOPED_TRACE("clip " + std::to_string(clip) + (capturable ? " capturable" : ""));
    GradScaler scaler;  // 65536
    Parameter p(f32_tensor({1.0f, 2.0f}, {2}, dev));
    trainrt::optim::SGD opt({p}, trainrt::optim::SGDOptions(1.0));
    opt.set_capturable(capturable);
    p.set_grad(f32_tensor({std::numeric_limits<float>::infinity(), 65536.0f}, {2}, dev));
    scaler.unscale_(opt);
    if (clip == 1) EXPECT_EQ(trainrt::clip_grad_norm_({p}, 1e30).item(), kInf);
    if (clip == 2) EXPECT_EQ(trainrt::clip_grad_norm_(opt, 1e30).item(), kInf);
    opt.step();
    EXPECT_FALSE(opt.last_step_skipped());
    EXPECT_EQ(opt.step_count(p), 1);
    const std::vector<float> v = host_f32(p.value()), g = host_f32(p.grad());
    if (clip == 0) {  // grads [inf, 1]
      EXPECT_EQ(v, (std::vector<float>{-std::numeric_limits<float>::infinity(), 1.0f}));
      EXPECT_EQ(g, (std::vector<float>{std::numeric_limits<float>::infinity(), 1.0f}));
    } else {  // coefficient 0: grads [NaN, 0]
      EXPECT_TRUE(std::isnan(v[0]));
      EXPECT_EQ(v[1], 2.0f);
      EXPECT_TRUE(std::isnan(g[0]));
      EXPECT_EQ(g[1], 0.0f);
    }
    scaler.update();
    EXPECT_EQ(scaler.get_scale(), 32768.0);
    opt.zero_grad();
    // The next iteration, finite: unscale_ is allowed again and the tracker counts.
    p.set_grad(f32_tensor({32768.0f, -32768.0f}, {2}, dev));
    scaler.unscale_(opt);
    opt.step();
    scaler.update();
    EXPECT_EQ(scaler.get_growth_tracker(), 1);
    EXPECT_EQ(host_f32(p.value())[1], clip == 0 ? 2.0f : 3.0f);
  }
}

// More direct-step sequences (from a review of the change, 2026-12-04): PyTorch's
// optimizer.step() after unscale_, then scaler.step in the same iteration (steps again, or
// skips on the recorded inf); two optimizers under one scaler; a clip after the direct step;
// a non-power-of-two scale; LAMB, whose global norm reads the grad scalars block.
const float kFInf = std::numeric_limits<float>::infinity();

TEST_P(Scaler, DirectStepThenScalerStepInOneIteration) {
  for (int run = 0; run < 4; ++run) {
    const bool inf = run % 2 == 1, cap = run >= 2;
    SCOPED_TRACE(std::to_string(run));
    GradScaler scaler(with_init_scale(4.0));
    Parameter p(f32_tensor({1.0f, 2.0f}, {2}, dev));
    trainrt::optim::SGD opt({p}, trainrt::optim::SGDOptions(1.0));
    opt.set_capturable(cap);
    p.set_grad(f32_tensor({inf ? kFInf : 4.0f, 8.0f}, {2}, dev));
    scaler.unscale_(opt);
    opt.step();
    EXPECT_EQ(scaler.step(opt), !inf);
    EXPECT_EQ(opt.last_step_skipped(), inf);
    const std::vector<float> v = host_f32(p.value());
    if (!inf) {
      EXPECT_EQ(v, (std::vector<float>{-1.0f, -2.0f}));
      EXPECT_EQ(opt.step_count(p), 2);
    } else {
      EXPECT_EQ(v[1], 0.0f);
      EXPECT_EQ(opt.step_count(p), 1);
    }
    scaler.update();
    EXPECT_EQ(scaler.get_scale(), inf ? 2.0 : 4.0);
    EXPECT_EQ(scaler.get_growth_tracker(), inf ? 0 : 1);
    // next iteration through the scaler
    opt.zero_grad();
    const float s = static_cast<float>(scaler.get_scale());
    p.set_grad(f32_tensor({s, s}, {2}, dev));
    const std::vector<float> before = host_f32(p.value());
    EXPECT_TRUE(scaler.step(opt));
    const std::vector<float> after = host_f32(p.value());
    EXPECT_EQ(after[1], before[1] - 1.0f);
    scaler.update();
  }
}

// Two optimizers, one scaler: opt1 stepped directly, opt2 through scaler.step; update reads both.
TEST_P(Scaler, TwoOptimizersOneSteppedDirectly) {
  for (int which = 0; which < 3; ++which) {  // inf in: none, opt1, opt2
    SCOPED_TRACE(which);
    GradScaler scaler(with_init_scale(2.0));
    Parameter a(f32_tensor({0.0f}, {1}, dev)), b(f32_tensor({0.0f}, {1}, dev));
    trainrt::optim::SGD o1({a}, trainrt::optim::SGDOptions(1.0));
    trainrt::optim::SGD o2({b}, trainrt::optim::SGDOptions(1.0));
    a.set_grad(f32_tensor({which == 1 ? kFInf : 2.0f}, {1}, dev));
    b.set_grad(f32_tensor({which == 2 ? kFInf : 2.0f}, {1}, dev));
    scaler.unscale_(o1);
    o1.step();
    EXPECT_EQ(scaler.step(o2), which != 2);
    scaler.update();
    EXPECT_EQ(scaler.get_scale(), which == 0 ? 2.0 : 1.0);
    EXPECT_EQ(host_f32(b.value())[0], which == 2 ? 0.0f : -1.0f);
    // order reversed
    o1.zero_grad();
    o2.zero_grad();
    const float s = static_cast<float>(scaler.get_scale());
    a.set_grad(f32_tensor({s}, {1}, dev));
    b.set_grad(f32_tensor({which == 1 ? kFInf : s}, {1}, dev));
    EXPECT_TRUE(scaler.step(o1));
    scaler.unscale_(o2);
    o2.step();
    scaler.update();
    EXPECT_EQ(scaler.get_scale(), which == 1 ? s / 2.0 : s);
  }
}

// Direct step, then a fused clip before update, then update, then a normal iteration.
TEST_P(Scaler, DirectStepThenFusedClipThenUpdate) {
  GradScaler scaler(with_init_scale(2.0));
  Parameter p(f32_tensor({0.0f, 0.0f}, {2}, dev));
  trainrt::optim::SGD opt({p}, trainrt::optim::SGDOptions(1.0));
  p.set_grad(f32_tensor({6.0f, 8.0f}, {2}, dev));
  scaler.unscale_(opt);
  opt.step();
  EXPECT_EQ(host_f32(p.value()), (std::vector<float>{-3.0f, -4.0f}));
  EXPECT_EQ(trainrt::clip_grad_norm_(opt, 1.0).item(), 5.0);  // of the unscaled grads
  scaler.update();
  EXPECT_EQ(scaler.get_growth_tracker(), 1);
  // PyTorch: the clip rewrote the grads to [0.6, 0.8]
  std::vector<float> g = host_f32(p.grad());
  EXPECT_NEAR(g[0], 0.6f, 1e-6);
  EXPECT_NEAR(g[1], 0.8f, 1e-6);
  opt.zero_grad();
  p.set_grad(f32_tensor({2.0f, 2.0f}, {2}, dev));
  EXPECT_TRUE(scaler.step(opt));
  EXPECT_EQ(host_f32(p.value()), (std::vector<float>{-4.0f, -5.0f}));
  scaler.update();
  EXPECT_EQ(scaler.get_growth_tracker(), 2);
}

// A non-power-of-two scale: the direct step applies PyTorch's g * f32(1/scale), then the clip
// coefficient, each rounded in f32.
TEST_P(Scaler, DirectStepRoundsAsPyTorchWithAnyScale) {
  for (int clip = 0; clip < 2; ++clip) {
    GradScaler scaler(with_init_scale(3.0));
    const std::vector<float> g0 = uniform_f32(1000, -5, 5, 7);
    Parameter p(f32_tensor(std::vector<float>(1000, 0.0f), {1000}, dev));
    trainrt::optim::SGD opt({p}, trainrt::optim::SGDOptions(1.0));
    p.set_grad(f32_tensor(g0, {1000}, dev));
    scaler.unscale_(opt);
    double total = 0;
    if (clip) total = trainrt::clip_grad_norm_(opt, 1.0).item();
    opt.step();
    const float inv = static_cast<float>(1.0 / 3.0);
    const float c = clip ? ref_coef(static_cast<float>(total), 1.0) : 1.0f;
    std::vector<float> want(1000);
    for (int i = 0; i < 1000; ++i) {
      volatile float u = g0[i] * inv;
      volatile float w = clip ? u * c : u;
      want[i] = -w;
    }
    EXPECT_TRUE(same_bits(host_f32(p.value()), want)) << clip;
    scaler.update();
  }
}

TEST_P(Scaler, DirectStepLambEqualsUnscaledControl) {
  for (bool cap : {false, true}) {
    for (bool clip : {false, true}) {
      SCOPED_TRACE(std::string(cap ? "cap " : "") + (clip ? "clip" : ""));
      Model a = make_model({{300}, {7}}, dev, "LAMB");
      Model b = make_model({{300}, {7}}, dev, "LAMB");
      a.opt->set_capturable(cap);
      GradScaler scaler(with_init_scale(1024.0));
      for (int k = 0; k < 3; ++k) {
        set_scaled_grads(a, k, 1024.0);
        set_scaled_grads(b, k, 1.0);
        scaler.unscale_(*a.opt);
        if (clip) {
          trainrt::clip_grad_norm_(*a.opt, 0.5);
          trainrt::clip_grad_norm_(b.params, 0.5);
        }
        a.opt->step();
        b.opt->step();
        scaler.update();
        for (std::size_t i = 0; i < a.params.size(); ++i)
          EXPECT_TRUE(same_bits(host_f32(a.params[i].value()), host_f32(b.params[i].value())))
              << k << " " << i;
      }
    }
  }
}

// A fused clip between scaler.step and update (of grads already stepped) ends with the
// iteration: update() multiplies its coefficient into the grads, as PyTorch's clip rewrote them,
// and releases the block. Left active, it reached the next iteration's grads copied in place:
// a stale found_inf skipped their step (found by a fuzz of captured iterations, 2026-12-04).
TEST_P(Scaler, FusedClipAfterTheStepEndsWithTheIteration) {
  GradScaler scaler(with_init_scale(1.0));
  Parameter p(f32_tensor({1.0f, 2.0f}, {2}, dev));
  trainrt::optim::SGD opt({p}, trainrt::optim::SGDOptions(0.1));
  p.set_grad(f32_tensor({std::numeric_limits<float>::quiet_NaN(), 1.0f}, {2}, dev));
  EXPECT_FALSE(scaler.step(opt));
  EXPECT_TRUE(std::isnan(trainrt::clip_grad_norm_(opt, 1.0).item()));
  scaler.update();
  EXPECT_EQ(scaler.get_scale(), 0.5);
  Tensor g = p.grad();
  g.copy_(f32_tensor({0.5f, 0.5f}, {2}, dev));  // new grads in place, scaled by 0.5
  EXPECT_TRUE(scaler.step(opt));
  EXPECT_EQ(host_f32(p.value()), (std::vector<float>{0.9f, 1.9f}));
  const float total = static_cast<float>(std::sqrt(0.5));
  EXPECT_EQ(trainrt::clip_grad_norm_(opt, 0.1).item(), static_cast<double>(total));
  scaler.update();
  EXPECT_EQ(scaler.get_scale(), 0.5);
  EXPECT_EQ(scaler.get_growth_tracker(), 1);
  const float c = ref_coef(total, 0.1);
  EXPECT_EQ(host_f32(p.grad()), (std::vector<float>{0.5f * c, 0.5f * c}));  // clipped
  g.copy_(f32_tensor({1.0f, -1.0f}, {2}, dev));
  EXPECT_TRUE(scaler.step(opt));  // neither clipped nor skipped by what came before
  EXPECT_EQ(host_f32(p.value()), (std::vector<float>{0.9f - 0.2f, 1.9f + 0.2f}));
  scaler.update();
}

TEST(ClipAmpCudaParity, NormsScaleAndSkipMatchTheCpu) {
  std::string why;
  if (!trainrt::cuda_available(&why)) GTEST_SKIP() << "no CUDA: " << why;
  const Device gpu = Device::cuda(0);
  const std::vector<Shape> shapes = {{3, 4}, {0}, {100000}, {1}, {65537}};
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    for (double p : {1.0, 2.0, kInf, 0.5}) {
      std::vector<Parameter> pc, pg;
      for (std::size_t i = 0; i < shapes.size(); ++i) {
        const std::vector<double> g =
            rounded(uniform(trainrt::shape_numel(shapes[i]), -1, 1, 3 + i), dt);
        pc.push_back(param_with_grad(g, shapes[i], dt, Device::cpu()));
        pg.push_back(param_with_grad(g, shapes[i], dt, gpu));
      }
      const double tc = trainrt::clip_grad_norm_(pc, 0.5, p).item();
      const double tg = trainrt::clip_grad_norm_(pg, 0.5, p).item();
      EXPECT_NEAR(tg, tc, 1e-6 * tc) << trainrt::dtype_name(dt) << " p " << p;
      for (std::size_t i = 0; i < shapes.size(); ++i) {
        const std::vector<double> a = pc[i].grad().to_double_vector();
        const std::vector<double> b = pg[i].grad().to_double_vector();
        ASSERT_EQ(a.size(), b.size());
        for (std::size_t j = 0; j < a.size(); ++j)
          ASSERT_NEAR(b[j], a[j], 1e-5 * std::fabs(a[j]) + 1e-30);
      }
    }
  }
  // f64 grads, alone and next to f32 ones: an f64 total and coefficient on both devices.
  for (bool mixed : {false, true}) {
    for (double p : {1.0, 2.0, kInf, 0.5}) {
      SCOPED_TRACE(std::string(mixed ? "f64 + f32" : "f64") + " p " + std::to_string(p));
      std::vector<Parameter> pc, pg;
      for (std::size_t i = 0; i < shapes.size(); ++i) {
        const DType dt = mixed && i % 2 == 1 ? DType::f32 : DType::f64;
        const std::vector<double> g =
            rounded(uniform(trainrt::shape_numel(shapes[i]), -1, 1, 7 + i), dt);
        pc.push_back(param_with_grad(g, shapes[i], dt, Device::cpu()));
        pg.push_back(param_with_grad(g, shapes[i], dt, gpu));
      }
      const Tensor tc = trainrt::clip_grad_norm_(pc, 0.5, p);
      const Tensor tg = trainrt::clip_grad_norm_(pg, 0.5, p);
      ASSERT_EQ(tc.dtype(), DType::f64);
      ASSERT_EQ(tg.dtype(), DType::f64);
      EXPECT_NEAR(tg.item(), tc.item(), 1e-13 * tc.item());
      for (std::size_t i = 0; i < shapes.size(); ++i) {
        const double tol = pc[i].grad().dtype() == DType::f64 ? 1e-13 : 1e-6;
        const std::vector<double> a = pc[i].grad().to_double_vector();
        const std::vector<double> b = pg[i].grad().to_double_vector();
        ASSERT_EQ(a.size(), b.size());
        for (std::size_t j = 0; j < a.size(); ++j)
          ASSERT_NEAR(b[j], a[j], tol * std::fabs(a[j]) + 1e-300);
      }
    }
  }
  // The same scaled run on both devices: same skips, same scale, same params.
  GradScalerOptions o;
  o.init_scale = 256.0;
  o.growth_interval = 2;
  GradScaler sc(o), sg(o);
  Model mc = make_model({{1000}, {70000}}, Device::cpu());
  Model mg = make_model({{1000}, {70000}}, gpu);
  for (int k = 0; k < 8; ++k) {
    set_scaled_grads(mc, k, sc.get_scale());
    set_scaled_grads(mg, k, sg.get_scale());
    if (k == 3) {
      for (Model* m : {&mc, &mg}) {
        Tensor g = m->params[1].grad();
        std::vector<float> v = host_f32(g);
        v[4242] = std::numeric_limits<float>::quiet_NaN();
        g.copy_(f32_tensor(v, g.shape(), g.device()));
      }
    }
    sc.unscale_(*mc.opt);
    sg.unscale_(*mg.opt);
    trainrt::clip_grad_norm_(*mc.opt, 1.0);
    trainrt::clip_grad_norm_(*mg.opt, 1.0);
    EXPECT_EQ(sc.step(*mc.opt), sg.step(*mg.opt)) << k;
    sc.update();
    sg.update();
    EXPECT_EQ(sc.get_scale(), sg.get_scale()) << k;
  }
  for (std::size_t i = 0; i < mc.params.size(); ++i) {
    const std::vector<float> a = host_f32(mc.params[i].value()), b = host_f32(mg.params[i].value());
    for (std::size_t j = 0; j < a.size(); ++j)
      ASSERT_NEAR(b[j], a[j], 1e-5 * std::fabs(a[j]) + 1e-6);
  }
}

}  // namespace
