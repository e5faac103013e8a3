// The loss math, written once for both backends. Each function works on accumulation type A
// (float, or double for f64 data). The backends own the loops: which rows, which threads,
// which loads; everything they compute per row or per element comes from here.
#pragma once

#include "math.h"

namespace trainrt {
namespace TRAINRT_KNS {

// ---------------------------------------------------------------------------------------
// Cross-entropy family over one row of C class scores z (after optional soft-capping).
// With lse = logsumexp(z), logp_c = z_c - lse, p_c = exp(logp_c), eps = label smoothing,
// w = class weights (all 1 without weights), W = sum_c w_c:
//   index target y:  l = (1-eps) w_y (lse - z_y) + (eps/C) (W lse - sum_c w_c z_c) + zl lse^2
//   dl/dz_c         = p_c A - B_c,   A = (1-eps) w_y + (eps/C) W + 2 zl lse,
//                                    B_c = (eps/C) w_c + (1-eps) w_y [c == y]
//   prob target t:   t'_c = (1-eps) t_c + eps/C,  T = sum_c w_c t'_c
//                    l = T lse - sum_c w_c t'_c z_c + zl lse^2
//   dl/dz_c         = p_c (T + 2 zl lse) - w_c t'_c
// ---------------------------------------------------------------------------------------

template <class A>
struct CeIndexRow {
  A coef_p;      // A above
  A eps_over_c;  // eps / C
  A target_w;    // (1 - eps) w_y
};

template <class A>
TRAINRT_HD A ce_index_row_loss(A lse, A z_y, A w_y, A sum_wz, A W, A eps, A C, A zl) {
  A l = (A(1) - eps) * w_y * (lse - z_y);
  if (eps != A(0)) l += (eps / C) * (W * lse - sum_wz);
  if (zl != A(0)) l += zl * lse * lse;
  return l;
}

template <class A>
TRAINRT_HD CeIndexRow<A> ce_index_row_grad(A lse, A w_y, A W, A eps, A C, A zl) {
  CeIndexRow<A> r;
  r.coef_p = (A(1) - eps) * w_y + (eps / C) * W + A(2) * zl * lse;
  r.eps_over_c = eps / C;
  r.target_w = (A(1) - eps) * w_y;
  return r;
}

/// dl/dz_c for class c (w_c = 1 without weights).
template <class A>
TRAINRT_HD A ce_index_grad(const CeIndexRow<A>& r, A p, A w_c, bool is_target) {
  A g = p * r.coef_p - r.eps_over_c * w_c;
  if (is_target) g -= r.target_w;
  return g;
}

template <class A>
TRAINRT_HD A ce_smoothed_target(A t, A eps, A C) {
  return (A(1) - eps) * t + eps / C;
}

template <class A>
TRAINRT_HD A ce_prob_row_loss(A lse, A T, A sum_wtz, A zl) {
  A l = T * lse - sum_wtz;
  if (zl != A(0)) l += zl * lse * lse;
  return l;
}

template <class A>
TRAINRT_HD A ce_prob_grad(A p, A T, A wt_c, A zl, A lse) {
  return p * (T + A(2) * zl * lse) - wt_c;
}

// ---------------------------------------------------------------------------------------
// Element-wise losses: loss and d(loss)/d(input) for one element (before weights/scale).
// ---------------------------------------------------------------------------------------
template <class A>
struct PointwiseParams {
  A param;  // smooth_l1 beta, huber delta, focal gamma
  A alpha;  // focal alpha (< 0: off)
  int log_target;
};

// g is dl/dx up to the factor kGradFactor, which the kernels fold into the reduction's
// coefficient (MSE: 2 (x - y) computed as (x - y) * (2 / numel), as PyTorch, so it does not
// overflow where the result is finite).
struct MseOp {
  static constexpr double kGradFactor = 2.0;
  template <class A>
  TRAINRT_HD static void eval(A x, A y, A, const PointwiseParams<A>&, A& l, A& g) {
    const A d = x - y;
    l = d * d;
    g = d;
  }
};

struct L1Op {
  static constexpr double kGradFactor = 1.0;
  template <class A>
  TRAINRT_HD static void eval(A x, A y, A, const PointwiseParams<A>&, A& l, A& g) {
    const A d = x - y;
    l = abs_acc(d);
    g = sign_acc(d);
  }
};

struct SmoothL1Op {
  static constexpr double kGradFactor = 1.0;
  template <class A>
  TRAINRT_HD static void eval(A x, A y, A, const PointwiseParams<A>& p, A& l, A& g) {
    const A d = x - y;
    const A ad = abs_acc(d);
    const A beta = p.param;
    if (ad < beta) {  // never taken for beta == 0: exactly L1, gradient 0 at d == 0
      l = A(0.5) * d * d / beta;
      g = d / beta;
    } else {
      l = ad - A(0.5) * beta;
      g = sign_acc(d);
    }
  }
};

struct HuberOp {
  static constexpr double kGradFactor = 1.0;
  template <class A>
  TRAINRT_HD static void eval(A x, A y, A, const PointwiseParams<A>& p, A& l, A& g) {
    const A d = x - y;
    const A ad = abs_acc(d);
    const A delta = p.param;
    if (ad < delta) {
      l = A(0.5) * d * d;
      g = d;
    } else {
      l = delta * (ad - A(0.5) * delta);
      g = delta * sign_acc(d);
    }
  }
};

/// binary_cross_entropy's input check: a probability in [0, 1]. NaN fails it, as in
/// PyTorch (whose check is written the same way round); x < 0 || x > 1 would let a NaN
/// through, and the clamped logs would then turn it into a finite loss of 100.
template <class A>
TRAINRT_HD bool bce_input_ok(A x) {
  return x >= A(0) && x <= A(1);
}

/// Input is a probability in [0, 1] (the backends check with bce_input_ok); logs clamped at
/// -100 as PyTorch.
struct BceOp {
  static constexpr double kGradFactor = 1.0;
  template <class A>
  TRAINRT_HD static void eval(A x, A y, A, const PointwiseParams<A>&, A& l, A& g) {
    const A lp = max_acc(log_acc(x), A(-100));
    const A l1p = max_acc(log_acc(A(1) - x), A(-100));
    l = -(y * lp + (A(1) - y) * l1p);
    // PyTorch's clamp is a float constant (EPSILON = 1e-12f), for double inputs too.
    g = (x - y) / max_acc(x * (A(1) - x), A(1e-12f));
  }
};

struct BceLogitsOp {
  static constexpr double kGradFactor = 1.0;
  template <class A>
  TRAINRT_HD static void eval(A x, A y, A pw, const PointwiseParams<A>&, A& l, A& g) {
    const A e = exp_nonpos(-abs_acc(x));
    const A lw = A(1) + (pw - A(1)) * y;
    l = (A(1) - y) * x + lw * (log1p_acc(e) + max_acc(-x, A(0)));
    const A sig = x >= A(0) ? A(1) / (A(1) + e) : e / (A(1) + e);
    g = (pw * y + A(1) - y) * sig - pw * y;
  }
};

/// torchvision.ops.sigmoid_focal_loss.
struct FocalOp {
  static constexpr double kGradFactor = 1.0;
  template <class A>
  TRAINRT_HD static void eval(A x, A y, A, const PointwiseParams<A>& p, A& l, A& g) {
    const A e = exp_nonpos(-abs_acc(x));
    const A sig = x >= A(0) ? A(1) / (A(1) + e) : e / (A(1) + e);
    const A ce = (A(1) - y) * x + log1p_acc(e) + max_acc(-x, A(0));
    const A dce = sig - y;
    const A q = A(1) - (sig * y + (A(1) - sig) * (A(1) - y));  // 1 - p_t
    const A dq = -sig * (A(1) - sig) * (A(2) * y - A(1));      // d(1 - p_t)/dx
    const A gamma = p.param;
    A mod, dmod;
    if (gamma == A(0)) {  // plain BCE: no modulating term (its ce * 0 is NaN at ce = inf)
      l = ce;
      g = dce;
      if (p.alpha >= A(0)) {
        const A at = p.alpha * y + (A(1) - p.alpha) * (A(1) - y);
        l *= at;
        g *= at;
      }
      return;
    } else if (gamma == A(1)) {
      mod = q;
      dmod = dq;
    } else if (gamma == A(2)) {
      mod = q * q;
      dmod = A(2) * q * dq;
    } else {
      mod = pow_acc(q, gamma);
      dmod = gamma * pow_acc(q, gamma - A(1)) * dq;
    }
    l = ce * mod;
    g = dce * mod + ce * dmod;
    if (p.alpha >= A(0)) {
      const A at = p.alpha * y + (A(1) - p.alpha) * (A(1) - y);
      l *= at;
      g *= at;
    }
  }
};

/// Input holds log-probabilities x; target y (probabilities) or t = log y with log_target.
struct KlDivOp {
  static constexpr double kGradFactor = 1.0;
  template <class A>
  TRAINRT_HD static void eval(A x, A y, A, const PointwiseParams<A>& p, A& l, A& g) {
    if (p.log_target) {
      const A ey = exp_acc(y);
      l = ey * (y - x);
      g = -ey;
    } else {
      // 0 where y == 0 (even for x = -inf); a NaN input still propagates.
      l = y == A(0) ? (x == x ? A(0) : x) : y * (log_acc(y) - x);
      g = -y;
    }
  }
};

}  // namespace TRAINRT_KNS
}  // namespace trainrt
