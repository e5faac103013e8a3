// Shared by test_losses.cpp and test_cuda_parity.cpp: the loss cases (every loss and its
// options), their inputs, the calls into trainrt, and the float64 reference written out
// from the formulas of SEMANTICS.md.
//
// Each reference value carries the sum of the absolute values of the terms it is made of
// (`abs`): a correct float implementation is off by at most a few ulp of that, so the
// allowed error is tol(dtype) * abs (plus f16's subnormal spacing). Inputs stay in ranges
// where the formulas themselves do not cancel catastrophically (e.g. focal loss's 1 - p_t).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace loss_ref {

using trainrt::DType;
using trainrt::LossResult;
using trainrt::Reduction;
using trainrt::Shape;
using trainrt::Tensor;
using trainrt_test::make_tensor;
using trainrt_test::rounded;
using trainrt_test::tol;
using trainrt_test::uniform;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
const DType kFloatTypes[] = {DType::f32, DType::f16, DType::bf16, DType::f64};
const Reduction kReductions[] = {Reduction::none, Reduction::mean, Reduction::sum};

inline double subnormal_err(DType t) { return t == DType::f16 ? std::ldexp(1.0, -24) : 0.0; }
/// Weights and pos_weight travel in the accumulation dtype.
inline DType acc_of(DType t) { return t == DType::f64 ? DType::f64 : DType::f32; }

inline std::string label(const std::string& what, DType t, Reduction r) {
  return what + " " + trainrt::dtype_name(t) + " " + trainrt::reduction_name(r);
}

/// A reference result: values, and for each the sum of |terms| it was computed from.
struct Ref {
  std::vector<double> loss, loss_abs;  // one value (reduced) or one per sample/element (none)
  std::vector<double> grad, grad_abs;  // d(loss)/d(input) * scale (none: of scale * sum)
};

/// Element-wise comparison; NaN must match NaN and infinities exactly.
inline void expect_close(const std::vector<double>& got, const std::vector<double>& ref,
                         const std::vector<double>& abs, DType t, const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  int bad = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    bool ok;
    double allow = 0;
    if (std::isnan(ref[i])) {
      ok = std::isnan(got[i]);
    } else if (std::isinf(ref[i])) {
      ok = got[i] == ref[i];
    } else {
      allow = tol(t) * (abs[i] + 1e-300) + subnormal_err(t);
      if (t == DType::f16 && std::fabs(ref[i]) - allow >= 65520.0) {
        ok = got[i] == std::copysign(kInf, ref[i]);  // beyond f16's range: overflows to inf
      } else {
        ok = std::fabs(got[i] - ref[i]) <= allow;
      }
    }
    if (!ok && ++bad <= 5) {
      ADD_FAILURE() << what << ": element " << i << " got " << got[i] << ", want " << ref[i]
                    << " (allowed error " << allow << ")";
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << ref.size() << " elements off";
}

inline void expect_matches(const LossResult& r, const Ref& ref, DType t, const Shape& input_shape,
                           const Shape& none_shape, Reduction red, const std::string& what) {
  ASSERT_TRUE(r.loss.defined()) << what;
  EXPECT_EQ(r.loss.dtype(), t) << what;
  EXPECT_EQ(r.loss.shape(), red == Reduction::none ? none_shape : Shape{}) << what;
  ASSERT_TRUE(r.grad.defined()) << what;
  EXPECT_EQ(r.grad.dtype(), t) << what;
  EXPECT_EQ(r.grad.shape(), input_shape) << what;
  EXPECT_EQ(r.grad.device(), r.loss.device()) << what;
  expect_close(r.loss.to_double_vector(), ref.loss, ref.loss_abs, t, what + " loss");
  expect_close(r.grad.to_double_vector(), ref.grad, ref.grad_abs, t, what + " grad");
}

inline void reduce(Ref& ref, const std::vector<double>& per, const std::vector<double>& per_abs,
                   Reduction red, double divisor) {
  if (red == Reduction::none) {
    ref.loss = per;
    ref.loss_abs = per_abs;
    return;
  }
  double s = 0, a = 0;
  for (std::size_t i = 0; i < per.size(); ++i) {
    s += per[i];
    a += per_abs[i];
  }
  const double d = red == Reduction::sum ? 1.0 : divisor;
  ref.loss = {s / d};
  ref.loss_abs = {a / d};
}

// =========================================================================================
// Cross-entropy family: reference
// =========================================================================================

struct CeCase {
  std::string name;
  bool prob = false;  // probability targets
  bool nll = false;   // nll_loss (input holds log-probabilities)
  bool i32 = false;   // class indices as i32
  bool weight = false;
  std::int64_t ignore_index = -100;
  bool mark_ignored = false;  // some rows get target == ignore_index
  double eps = 0, z_loss = 0, softcap = 0;
  double lo = -3, hi = 3;  // logits range
};

struct CeData {
  std::int64_t N, C;
  std::vector<double> x;          // [N, C]
  std::vector<std::int64_t> idx;  // [N]
  std::vector<double> prob;       // [N, C]
  std::vector<double> w;          // [C] or empty
};

inline CeData make_ce_data(const CeCase& c, std::int64_t N, std::int64_t C, unsigned seed) {
  CeData d;
  d.N = N;
  d.C = C;
  d.x = uniform(static_cast<std::size_t>(N * C), c.lo, c.hi, seed);
  std::mt19937 g(seed + 1);
  std::uniform_int_distribution<std::int64_t> cls(0, C - 1);
  d.idx.resize(static_cast<std::size_t>(N));
  for (auto& y : d.idx) y = cls(g);
  if (c.mark_ignored) {
    for (std::int64_t n = 1; n < N; n += 3) d.idx[n] = c.ignore_index;
  }
  if (c.prob) {
    d.prob = uniform(static_cast<std::size_t>(N * C), 0.0, 1.0, seed + 2);
    for (std::int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (std::int64_t k = 0; k < C; ++k) s += d.prob[n * C + k];
      for (std::int64_t k = 0; k < C; ++k) d.prob[n * C + k] /= s;
      if (n % 4 == 3) {  // some one-hot rows
        for (std::int64_t k = 0; k < C; ++k) d.prob[n * C + k] = k == d.idx[n] % C ? 1.0 : 0.0;
      }
    }
  }
  if (c.weight) d.w = uniform(static_cast<std::size_t>(C), 0.25, 2.0, seed + 3);
  return d;
}

/// The reference, from SEMANTICS.md: logp = z - lse, z = softcap ? c tanh(x / c) : x.
///  index: l_n = (1-eps)(-w_y logp_y) + (eps/C)(-sum_c w_c logp_c) + zl lse^2;
///         mean divides by sum of w_y over counted rows; ignored rows contribute 0.
///  prob:  t' = (1-eps) t + eps/C; l_n = -sum_c w_c t'_c logp_c + zl lse^2; mean / N.
///  nll:   l_n = -w_y x_y.
inline Ref ref_cross_entropy(const CeCase& c, const CeData& d, const std::vector<double>& x,
                             const std::vector<double>& prob, const std::vector<double>& w,
                             Reduction red, double scale) {
  const std::int64_t N = d.N, C = d.C;
  auto W = [&](std::int64_t k) { return w.empty() ? 1.0 : w[k]; };
  double Wsum = 0;
  for (std::int64_t k = 0; k < C; ++k) Wsum += W(k);
  std::vector<double> per(N, 0.0), per_abs(N, 0.0), g(N * C, 0.0), g_abs(N * C, 0.0);
  double denom = 0;
  for (std::int64_t n = 0; n < N; ++n) {
    const double* xr = &x[n * C];
    double* gr = &g[n * C];
    double* ga = &g_abs[n * C];
    if (!c.prob && d.idx[n] == c.ignore_index) continue;
    if (c.nll) {
      const std::int64_t y = d.idx[n];
      per[n] = -W(y) * xr[y];
      per_abs[n] = std::fabs(per[n]);
      gr[y] = -W(y);
      ga[y] = std::fabs(W(y));
      denom += W(y);
      continue;
    }
    std::vector<double> z(C), dz(C, 1.0), logp(C), p(C);
    for (std::int64_t k = 0; k < C; ++k) {
      if (c.softcap > 0) {
        const double t = std::tanh(xr[k] / c.softcap);
        z[k] = c.softcap * t;
        dz[k] = 1 - t * t;
      } else {
        z[k] = xr[k];
      }
    }
    double m = -kInf;
    for (double v : z) m = std::max(m, v);
    double s = 0;
    for (double v : z) s += std::exp(v - m);
    const double lse = m + std::log(s);
    for (std::int64_t k = 0; k < C; ++k) {
      logp[k] = z[k] - lse;
      p[k] = std::exp(logp[k]);
    }
    double l = c.z_loss * lse * lse, la = c.z_loss * lse * lse;
    std::vector<double> dl(C), dla(C);
    for (std::int64_t k = 0; k < C; ++k) {
      dl[k] = 2 * c.z_loss * lse * p[k];
      dla[k] = std::fabs(dl[k]);
    }
    if (!c.prob) {
      const std::int64_t y = d.idx[n];
      const double e = c.eps;
      l += (1 - e) * (-W(y) * logp[y]);
      la += (1 - e) * W(y) * (std::fabs(lse) + std::fabs(z[y]));
      double S = 0, Sa = std::fabs(Wsum * lse);
      for (std::int64_t k = 0; k < C; ++k) {
        S += -W(k) * logp[k];
        Sa += std::fabs(W(k) * z[k]);
      }
      l += e / C * S;
      la += e / C * Sa;
      for (std::int64_t k = 0; k < C; ++k) {
        // d/dz_k: (1-e) w_y (p_k - [k==y]) + (e/C)(W p_k - w_k) + 2 zl lse p_k
        const double onehot = k == y ? 1.0 : 0.0;
        dl[k] += (1 - e) * W(y) * (p[k] - onehot) + e / C * (Wsum * p[k] - W(k));
        dla[k] += (1 - e) * W(y) * (p[k] + onehot) + e / C * (Wsum * p[k] + W(k));
      }
      denom += W(y);
    } else {
      std::vector<double> wt(C);
      double T = 0;
      for (std::int64_t k = 0; k < C; ++k) {
        wt[k] = W(k) * ((1 - c.eps) * prob[n * C + k] + c.eps / C);
        T += wt[k];
      }
      for (std::int64_t k = 0; k < C; ++k) {
        l += -wt[k] * logp[k];
        la += std::fabs(wt[k]) * (std::fabs(z[k]) + std::fabs(lse));
        dl[k] += T * p[k] - wt[k];
        dla[k] += std::fabs(T) * p[k] + std::fabs(wt[k]);
      }
      denom += 1;
    }
    per[n] = l;
    per_abs[n] = la;
    for (std::int64_t k = 0; k < C; ++k) {
      gr[k] = dl[k] * dz[k];
      ga[k] = dla[k] * std::fabs(dz[k]);
    }
  }
  Ref ref;
  reduce(ref, per, per_abs, red, denom);
  const double coef = scale * (red == Reduction::mean ? 1.0 / denom : 1.0);
  for (std::size_t i = 0; i < g.size(); ++i) {
    g[i] *= coef;
    g_abs[i] *= std::fabs(coef);
  }
  ref.grad = g;
  ref.grad_abs = g_abs;
  return ref;
}

/// The library call for a case, with tensors on `dev` in dtype t.
struct CeTensors {
  Tensor x, target, weight;
};

inline CeTensors ce_tensors(const CeCase& c, const CeData& d, DType t, trainrt::Device dev) {
  CeTensors out;
  out.x = make_tensor(d.x, {d.N, d.C}, t, dev);
  if (c.prob) {
    out.target = make_tensor(d.prob, {d.N, d.C}, t, dev);
  } else if (c.i32) {
    std::vector<std::int32_t> v(d.idx.begin(), d.idx.end());
    out.target = Tensor::from_vector(v, {d.N}, dev);
  } else {
    out.target = Tensor::from_vector(d.idx, {d.N}, dev);
  }
  if (!d.w.empty()) out.weight = make_tensor(d.w, {d.C}, acc_of(t), dev);
  return out;
}

inline LossResult call_ce(const CeCase& c, const CeTensors& in, const trainrt::LossOptions& base) {
  if (c.nll) {
    trainrt::NllLossOptions o;
    static_cast<trainrt::LossOptions&>(o) = base;
    o.weight = in.weight;
    o.ignore_index = c.ignore_index;
    return trainrt::nll_loss(in.x, in.target, o);
  }
  trainrt::CrossEntropyOptions o;
  static_cast<trainrt::LossOptions&>(o) = base;
  o.weight = in.weight;
  o.ignore_index = c.ignore_index;
  o.label_smoothing = c.eps;
  o.z_loss = c.z_loss;
  o.softcap = c.softcap;
  return trainrt::cross_entropy(in.x, in.target, o);
}

inline Ref ce_reference(const CeCase& c, const CeData& d, DType t, Reduction red, double scale) {
  const std::vector<double> w = d.w.empty() ? d.w : rounded(d.w, acc_of(t));
  return ref_cross_entropy(c, d, rounded(d.x, t), c.prob ? rounded(d.prob, t) : d.prob, w, red,
                           scale);
}

inline trainrt::LossOptions opts(Reduction red, double grad_scale = 1.0) {
  trainrt::LossOptions o;
  o.reduction = red;
  o.grad_scale = grad_scale;
  return o;
}

inline std::vector<CeCase> ce_cases() {
  std::vector<CeCase> v;
  auto add = [&](CeCase c) { v.push_back(c); };
  CeCase c;
  c.name = "index i64";
  add(c);
  c = CeCase{};
  c.name = "index i32";
  c.i32 = true;
  add(c);
  c = CeCase{};
  c.name = "weight";
  c.weight = true;
  add(c);
  c = CeCase{};
  c.name = "ignore_index -100";
  c.mark_ignored = true;
  add(c);
  c = CeCase{};
  c.name = "ignore_index 3 (a valid class) + weight, i32";
  c.ignore_index = 3;
  c.mark_ignored = true;
  c.weight = true;
  c.i32 = true;
  add(c);
  c = CeCase{};
  c.name = "label_smoothing 0.1";
  c.eps = 0.1;
  add(c);
  c = CeCase{};
  c.name = "weight + label_smoothing 0.2 + ignore";
  c.weight = true;
  c.eps = 0.2;
  c.mark_ignored = true;
  add(c);
  c = CeCase{};
  c.name = "label_smoothing 1";
  c.eps = 1.0;
  add(c);
  c = CeCase{};
  c.name = "prob targets";
  c.prob = true;
  add(c);
  c = CeCase{};
  c.name = "prob targets + smoothing 0.2";
  c.prob = true;
  c.eps = 0.2;
  add(c);
  c = CeCase{};
  c.name = "prob targets + weight + smoothing 0.1";
  c.prob = true;
  c.weight = true;
  c.eps = 0.1;
  add(c);
  c = CeCase{};
  c.name = "z_loss 1e-2";
  c.z_loss = 1e-2;
  add(c);
  c = CeCase{};
  c.name = "z_loss + weight + smoothing + ignore";
  c.z_loss = 1e-3;
  c.weight = true;
  c.eps = 0.1;
  c.mark_ignored = true;
  add(c);
  c = CeCase{};
  c.name = "prob targets + z_loss";
  c.prob = true;
  c.z_loss = 1e-2;
  add(c);
  c = CeCase{};
  c.name = "softcap 2";
  c.softcap = 2.0;
  c.lo = -6;
  c.hi = 6;
  add(c);
  c = CeCase{};
  c.name = "softcap 3 + weight + smoothing";
  c.softcap = 3.0;
  c.weight = true;
  c.eps = 0.1;
  c.lo = -8;
  c.hi = 8;
  add(c);
  c = CeCase{};
  c.name = "prob targets + softcap";
  c.prob = true;
  c.softcap = 2.0;
  c.lo = -5;
  c.hi = 5;
  add(c);
  c = CeCase{};
  c.name = "nll_loss";
  c.nll = true;
  c.lo = -6;
  c.hi = 0;
  add(c);
  c = CeCase{};
  c.name = "nll_loss weight + ignore, i32";
  c.nll = true;
  c.weight = true;
  c.mark_ignored = true;
  c.i32 = true;
  c.lo = -6;
  c.hi = 0;
  add(c);
  return v;
}

// =========================================================================================
// Element-wise losses: reference
// =========================================================================================

enum class Pw { mse, l1, smooth_l1, huber, bce, bce_logits, focal, kl };

struct PwCase {
  std::string name;
  Pw kind;
  double param = 0;   // beta / delta / gamma
  double alpha = -1;  // focal
  bool log_target = false;
  int weight = 0;  // 0 none, 1 full shape, 2 last dimension
  bool pos_weight = false;
};

struct PwData {
  Shape shape;
  std::int64_t inner;
  std::vector<double> x, y, w, pw;  // w: full or [inner]; pw: [inner]
};

/// Inputs in the ranges each loss is meant for, with a few exact ties (d = 0, y = 0, y = 1).
inline PwData make_pw_data(const PwCase& c, const Shape& shape, unsigned seed) {
  PwData d;
  d.shape = shape;
  d.inner = shape.empty() ? 1 : shape.back();
  const auto n = static_cast<std::size_t>(trainrt::shape_numel(shape));
  switch (c.kind) {
    case Pw::mse:
    case Pw::l1:
    case Pw::smooth_l1:
    case Pw::huber:
      d.x = uniform(n, -3, 3, seed);
      d.y = uniform(n, -3, 3, seed + 1);
      for (std::size_t i = 0; i < n; i += 5) d.y[i] = d.x[i];  // d = 0 exactly
      break;
    case Pw::bce:
      d.x = uniform(n, 0.02, 0.98, seed);
      d.y = uniform(n, 0, 1, seed + 1);
      for (std::size_t i = 0; i < n; i += 3) d.y[i] = (i / 3) % 2 ? 1.0 : 0.0;
      break;
    case Pw::bce_logits:
      d.x = uniform(n, -5, 5, seed);
      d.y = uniform(n, 0, 1, seed + 1);
      for (std::size_t i = 0; i < n; i += 3) d.y[i] = (i / 3) % 2 ? 1.0 : 0.0;
      break;
    case Pw::focal:
      d.x = uniform(n, -3, 3, seed);
      d.y = uniform(n, 0, 1, seed + 1);
      for (std::size_t i = 0; i < n; ++i) {
        if (i % 4 != 3) d.y[i] = d.y[i] < 0.5 ? 0.0 : 1.0;
      }
      break;
    case Pw::kl:
      d.x = uniform(n, -5, 0, seed);  // log-probabilities
      if (c.log_target) {
        d.y = uniform(n, -5, 0.5, seed + 1);
      } else {
        d.y = uniform(n, 0, 1, seed + 1);
        for (std::size_t i = 0; i < n; i += 4) d.y[i] = 0.0;
      }
      break;
  }
  if (c.weight == 1) d.w = uniform(n, 0.0, 2.0, seed + 2);
  if (c.weight == 2) d.w = uniform(static_cast<std::size_t>(d.inner), 0.0, 2.0, seed + 2);
  if (c.pos_weight) d.pw = uniform(static_cast<std::size_t>(d.inner), 0.25, 4.0, seed + 3);
  return d;
}

inline double softplus(double a) { return std::max(a, 0.0) + std::log1p(std::exp(-std::fabs(a))); }
inline double sigmoid(double x) {
  return x >= 0 ? 1 / (1 + std::exp(-x)) : std::exp(x) / (1 + std::exp(x));
}
inline double sign(double d) { return d > 0 ? 1.0 : (d < 0 ? -1.0 : 0.0); }

/// One element: loss l and dl/dx, each with the sum of |terms|.
inline void ref_element(const PwCase& c, double x, double y, double pw, double& l, double& g,
                        double& la, double& ga) {
  const double d = x - y;
  switch (c.kind) {
    case Pw::mse:
      l = d * d;
      g = 2 * d;
      la = l;
      ga = std::fabs(g);
      return;
    case Pw::l1:
      l = std::fabs(d);
      g = sign(d);
      la = l;
      ga = std::fabs(g);
      return;
    case Pw::smooth_l1: {
      const double beta = c.param;
      if (std::fabs(d) < beta) {
        l = 0.5 * d * d / beta;
        g = d / beta;
        la = l;
      } else {
        l = std::fabs(d) - 0.5 * beta;
        g = sign(d);
        la = std::fabs(d) + 0.5 * beta;
      }
      ga = std::fabs(g);
      return;
    }
    case Pw::huber: {
      const double delta = c.param;
      if (std::fabs(d) < delta) {
        l = 0.5 * d * d;
        g = d;
        la = l;
      } else {
        l = delta * (std::fabs(d) - 0.5 * delta);
        g = delta * sign(d);
        la = delta * (std::fabs(d) + 0.5 * delta);
      }
      ga = std::fabs(g);
      return;
    }
    case Pw::bce: {
      const double lp = std::max(std::log(x), -100.0);
      const double l1p = std::max(std::log(1 - x), -100.0);
      l = -(y * lp + (1 - y) * l1p);
      la = std::fabs(y * lp) + std::fabs((1 - y) * l1p);
      // PyTorch clamps with its float EPSILON (1e-12f), for double inputs too.
      const double den = std::max(x * (1 - x), static_cast<double>(1e-12f));
      g = (x - y) / den;
      ga = (std::fabs(x) + std::fabs(y)) / den;
      return;
    }
    case Pw::bce_logits: {
      // -[pw y log s(x) + (1-y) log(1 - s(x))] with log s(x) = -softplus(-x).
      l = pw * y * softplus(-x) + (1 - y) * softplus(x);
      la = std::fabs((1 - y) * x) +
           std::fabs(1 + (pw - 1) * y) * (std::log1p(std::exp(-std::fabs(x))) + std::max(-x, 0.0));
      const double s = sigmoid(x);
      g = (pw * y + 1 - y) * s - pw * y;
      ga = std::fabs(pw * y + 1 - y) * s + std::fabs(pw * y);
      return;
    }
    case Pw::focal: {
      const double s = sigmoid(x);
      const double ce = softplus(-x) * y + softplus(x) * (1 - y);
      const double ce_abs =
          std::fabs((1 - y) * x) + std::log1p(std::exp(-std::fabs(x))) + std::max(-x, 0.0);
      const double q = 1 - (s * y + (1 - s) * (1 - y));  // 1 - p_t
      const double dq = -s * (1 - s) * (2 * y - 1);
      const double gamma = c.param;
      const double mod = gamma == 0 ? 1.0 : std::pow(q, gamma);
      const double dmod = gamma == 0 ? 0.0 : gamma * std::pow(q, gamma - 1) * dq;
      const double at = c.alpha >= 0 ? c.alpha * y + (1 - c.alpha) * (1 - y) : 1.0;
      l = at * ce * mod;
      la = std::fabs(at) * ce_abs * mod;
      g = at * ((s - y) * mod + ce * dmod);
      ga = std::fabs(at) * ((s + std::fabs(y)) * mod + ce_abs * std::fabs(dmod));
      return;
    }
    case Pw::kl:
      if (c.log_target) {
        l = std::exp(y) * (y - x);
        la = std::exp(y) * (std::fabs(y) + std::fabs(x));
        g = -std::exp(y);
      } else {
        l = y == 0 ? 0.0 : y * (std::log(y) - x);
        la = y == 0 ? 0.0 : std::fabs(y * std::log(y)) + std::fabs(y * x);
        g = -y;
      }
      ga = std::fabs(g);
      return;
  }
}

inline Ref ref_pointwise(const PwCase& c, const PwData& d, const std::vector<double>& x,
                         const std::vector<double>& y, const std::vector<double>& w,
                         const std::vector<double>& pw, Reduction red, double scale) {
  const std::size_t n = x.size();
  std::vector<double> per(n), per_abs(n), g(n), ga(n);
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t j = i % static_cast<std::size_t>(d.inner);
    double l, gi, la, gai;
    ref_element(c, x[i], y[i], pw.empty() ? 1.0 : pw[j], l, gi, la, gai);
    const double wi = w.empty() ? 1.0 : (w.size() == n ? w[i] : w[j]);
    per[i] = wi * l;
    per_abs[i] = std::fabs(wi) * la;
    g[i] = wi * gi;
    ga[i] = std::fabs(wi) * gai;
  }
  double divisor = 1;
  if (red == Reduction::mean) divisor = static_cast<double>(n);
  if (red == Reduction::batchmean) divisor = static_cast<double>(d.shape.at(0));
  Ref ref;
  reduce(ref, per, per_abs, red, divisor);
  const double coef = scale / divisor;
  for (std::size_t i = 0; i < n; ++i) {
    g[i] *= coef;
    ga[i] *= std::fabs(coef);
  }
  ref.grad = g;
  ref.grad_abs = ga;
  return ref;
}

struct PwTensors {
  Tensor x, y, w, pw;
};

inline PwTensors pw_tensors(const PwData& d, DType t, trainrt::Device dev) {
  PwTensors out;
  out.x = make_tensor(d.x, d.shape, t, dev);
  out.y = make_tensor(d.y, d.shape, t, dev);
  if (!d.w.empty()) {
    const Shape ws = d.w.size() == d.x.size() ? d.shape : Shape{d.inner};
    out.w = make_tensor(d.w, ws, acc_of(t), dev);
  }
  if (!d.pw.empty()) out.pw = make_tensor(d.pw, {d.inner}, acc_of(t), dev);
  return out;
}

inline LossResult call_pw(const PwCase& c, const PwTensors& in, const trainrt::LossOptions& base) {
  switch (c.kind) {
    case Pw::mse: return trainrt::mse_loss(in.x, in.y, base);
    case Pw::l1: return trainrt::l1_loss(in.x, in.y, base);
    case Pw::smooth_l1: {
      trainrt::SmoothL1Options o;
      static_cast<trainrt::LossOptions&>(o) = base;
      o.beta = c.param;
      return trainrt::smooth_l1_loss(in.x, in.y, o);
    }
    case Pw::huber: {
      trainrt::HuberOptions o;
      static_cast<trainrt::LossOptions&>(o) = base;
      o.delta = c.param;
      return trainrt::huber_loss(in.x, in.y, o);
    }
    case Pw::bce: {
      trainrt::BCEOptions o;
      static_cast<trainrt::LossOptions&>(o) = base;
      o.weight = in.w;
      return trainrt::binary_cross_entropy(in.x, in.y, o);
    }
    case Pw::bce_logits: {
      trainrt::BCEWithLogitsOptions o;
      static_cast<trainrt::LossOptions&>(o) = base;
      o.weight = in.w;
      o.pos_weight = in.pw;
      return trainrt::binary_cross_entropy_with_logits(in.x, in.y, o);
    }
    case Pw::focal: {
      trainrt::FocalOptions o;
      static_cast<trainrt::LossOptions&>(o) = base;
      o.gamma = c.param;
      o.alpha = c.alpha;
      return trainrt::sigmoid_focal_loss(in.x, in.y, o);
    }
    case Pw::kl: {
      trainrt::KLDivOptions o;
      static_cast<trainrt::LossOptions&>(o) = base;
      o.log_target = c.log_target;
      return trainrt::kl_div(in.x, in.y, o);
    }
  }
  return {};
}

inline Ref pw_reference(const PwCase& c, const PwData& d, DType t, Reduction red, double scale) {
  return ref_pointwise(c, d, rounded(d.x, t), rounded(d.y, t),
                       d.w.empty() ? d.w : rounded(d.w, acc_of(t)),
                       d.pw.empty() ? d.pw : rounded(d.pw, acc_of(t)), red, scale);
}

inline std::vector<PwCase> pw_cases() {
  std::vector<PwCase> v;
  auto add = [&](const std::string& name, Pw kind, double param = 0) {
    PwCase c;
    c.name = name;
    c.kind = kind;
    c.param = param;
    v.push_back(c);
    return &v.back();
  };
  add("mse_loss", Pw::mse);
  add("l1_loss", Pw::l1);
  add("smooth_l1_loss beta 1", Pw::smooth_l1, 1.0);
  add("smooth_l1_loss beta 0.5", Pw::smooth_l1, 0.5);
  add("smooth_l1_loss beta 0", Pw::smooth_l1, 0.0);
  add("huber_loss delta 1", Pw::huber, 1.0);
  add("huber_loss delta 2.5", Pw::huber, 2.5);
  add("binary_cross_entropy", Pw::bce);
  add("binary_cross_entropy weight full", Pw::bce)->weight = 1;
  add("binary_cross_entropy weight last dim", Pw::bce)->weight = 2;
  add("bce_with_logits", Pw::bce_logits);
  add("bce_with_logits weight", Pw::bce_logits)->weight = 1;
  add("bce_with_logits pos_weight", Pw::bce_logits)->pos_weight = true;
  {
    PwCase* c = add("bce_with_logits weight last dim + pos_weight", Pw::bce_logits);
    c->weight = 2;
    c->pos_weight = true;
  }
  add("sigmoid_focal_loss gamma 0 alpha 0.25", Pw::focal, 0.0)->alpha = 0.25;
  add("sigmoid_focal_loss gamma 2 alpha 0.25", Pw::focal, 2.0)->alpha = 0.25;
  add("sigmoid_focal_loss gamma 1.5 alpha 0.25", Pw::focal, 1.5)->alpha = 0.25;
  add("sigmoid_focal_loss gamma 2 alpha -1", Pw::focal, 2.0)->alpha = -1;
  add("sigmoid_focal_loss gamma 1 alpha -1", Pw::focal, 1.0)->alpha = -1;
  add("kl_div", Pw::kl);
  add("kl_div log_target", Pw::kl)->log_target = true;
  return v;
}

}  // namespace loss_ref
