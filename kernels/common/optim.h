// Per-element optimizer, clipping and loss-scaling math, written once for both backends.
//
// Contract: every function here updates one element in registers; the callers (the CPU chunk
// loop in kernels/cpu/cpu_optim.cpp, the CUDA multi-tensor kernels) load param, grad and state
// once and store them once. The operation order follows PyTorch 1.13's single-tensor
// optimizers (torch/optim/*.py: mul_ then add_, addcmul as (value * a) * b, addcdiv as
// (value * a) / b, every hyperparameter rounded once from double to f32 on the host), so f32
// trajectories stay within a few ulp of PyTorch's. Scalars come from the optimizer scalars
// block (backend_api.h, TRAINRT_OS_*), read into OptimScalars once per chunk.
#pragma once

#include <math.h>
#include <stdint.h>

#include "../../src/backend/backend_api.h"
#include "hd.h"

namespace trainrt {
namespace TRAINRT_KNS {

/// The optimizer scalars block in registers (see TRAINRT_OS_* for which algorithm uses what).
struct OptimScalars {
  float lr, weight_decay, decay, momentum, buf_scale, buf_gain;
  float beta1, omb1, beta2, omb2, eps;
  float step_size, bc1, bc2, bc2_sqrt, rect, max_grad_norm, inv_bc2_sqrt;
};

TRAINRT_HD OptimScalars load_optim_scalars(const float* s) {
  OptimScalars o;
  o.lr = s[TRAINRT_OS_LR];
  o.weight_decay = s[TRAINRT_OS_WEIGHT_DECAY];
  o.decay = s[TRAINRT_OS_DECAY];
  o.momentum = s[TRAINRT_OS_MOMENTUM];
  o.buf_scale = s[TRAINRT_OS_BUF_SCALE];
  o.buf_gain = s[TRAINRT_OS_BUF_GAIN];
  o.beta1 = s[TRAINRT_OS_BETA1];
  o.omb1 = s[TRAINRT_OS_OMB1];
  o.beta2 = s[TRAINRT_OS_BETA2];
  o.omb2 = s[TRAINRT_OS_OMB2];
  o.eps = s[TRAINRT_OS_EPS];
  o.step_size = s[TRAINRT_OS_STEP_SIZE];
  o.bc1 = s[TRAINRT_OS_BC1];
  o.bc2 = s[TRAINRT_OS_BC2];
  o.bc2_sqrt = s[TRAINRT_OS_BC2_SQRT];
  o.rect = s[TRAINRT_OS_RECT];
  o.max_grad_norm = s[TRAINRT_OS_MAX_GRAD_NORM];
  o.inv_bc2_sqrt = s[TRAINRT_OS_INV_BC2_SQRT];
  return o;
}

/// The entries of an optimizer scalars block that depend on the step count t (after this
/// step, 1 at the first), from the hyperparameters `h` (TRAINRT_OH_*, double) of a kernel
/// algorithm (TRAINRT_OPTIM_*): each value is computed in double and rounded once to f32, as
/// PyTorch passes Python floats to its tensor ops. The host computes them this way for an
/// ordinary step, and a capturable step's kernels do on the device, from a device step count.
/// `fresh`: SGD's momentum buffer starts at this step (buf = g).
TRAINRT_HD void derive_step_scalars(int32_t algo, const double* h, int64_t t, bool fresh,
                                    float* s) {
  const double td = (double)t;
  switch (algo) {
    case TRAINRT_OPTIM_SGD: {
      const double mom = h[TRAINRT_OH_MOMENTUM];
      s[TRAINRT_OS_BUF_SCALE] = fresh ? 0.0f : (float)mom;
      s[TRAINRT_OS_BUF_GAIN] = fresh ? 1.0f : (float)(1.0 - h[TRAINRT_OH_DAMPENING]);
      break;
    }
    case TRAINRT_OPTIM_ADAGRAD:
      s[TRAINRT_OS_LR] = (float)(h[TRAINRT_OH_LR] / (1.0 + (td - 1.0) * h[TRAINRT_OH_LR_DECAY]));
      break;
    case TRAINRT_OPTIM_ADAM:
    case TRAINRT_OPTIM_RADAM:
    case TRAINRT_OPTIM_LAMB: {
      const double b1 = h[TRAINRT_OH_BETA1], b2 = h[TRAINRT_OH_BETA2];
      const double bc1 = 1.0 - pow(b1, td), bc2 = 1.0 - pow(b2, td);
      s[TRAINRT_OS_BC1] = (float)bc1;
      s[TRAINRT_OS_BC2] = (float)bc2;
      s[TRAINRT_OS_BC2_SQRT] = (float)sqrt(bc2);
      s[TRAINRT_OS_INV_BC2_SQRT] = (float)(1.0 / sqrt(bc2));
      s[TRAINRT_OS_STEP_SIZE] = (float)(h[TRAINRT_OH_LR] / bc1);
      if (algo == TRAINRT_OPTIM_RADAM) {
        const double rho_inf = 2.0 / (1.0 - b2) - 1.0;
        const double rho_t = rho_inf - 2.0 * td * pow(b2, td) / bc2;
        s[TRAINRT_OS_RECT] = rho_t > 5.0 ? (float)sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf /
                                                       ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                                         : 0.0f;
      }
      break;
    }
    default: break;
  }
}

/// The grad multipliers of a grad scalars block (1, 1 without one).
struct GradMul {
  float inv_scale, clip_coef;
};

TRAINRT_HD GradMul load_grad_mul(const float* gs) {
  GradMul m;
  m.inv_scale = gs ? gs[TRAINRT_GS_INV_SCALE] : 1.0f;
  m.clip_coef = gs ? gs[TRAINRT_GS_CLIP_COEF] : 1.0f;
  return m;
}

/// True when the block says a non-finite grad was found: the step must change nothing.
TRAINRT_HD bool step_skipped(const float* gs) {
  return gs != nullptr && gs[TRAINRT_GS_FOUND_INF] != 0.0f;
}

/// g as the step sees it: (g * inv_scale) * clip_coef (exact when both are 1), negated when
/// maximizing. Two roundings, as PyTorch's unscale_ followed by clip_grad_norm_'s mul_.
template <bool kMaximize>
TRAINRT_HD float effective_grad(float g, GradMul m) {
  const float x = (g * m.inv_scale) * m.clip_coef;
  return kMaximize ? -x : x;
}

/// max that propagates NaN from either side (torch.maximum).
TRAINRT_HD float max_nan(float a, float b) { return (a > b || a != a) ? a : b; }

// ---- SGD ----------------------------------------------------------------------------------
// g += wd p; buf = buf * BUF_SCALE + BUF_GAIN * g (buf starts at 0 and BUF_SCALE = 0,
// BUF_GAIN = 1 at t = 1, which gives PyTorch's buf = clone(g)); g = nesterov ? g + mom * buf
// : buf; p -= lr g.
template <bool kL2, bool kMomentum, bool kNesterov>
TRAINRT_HD void sgd_update(float& p, float g, float& buf, const OptimScalars& s) {
  if (kL2) g = g + s.weight_decay * p;
  if (kMomentum) {
    buf = buf * s.buf_scale + s.buf_gain * g;
    g = kNesterov ? g + s.momentum * buf : buf;
  }
  p = p - s.lr * g;
}

// ---- Adam / AdamW ----------------------------------------------------------------------------
// AdamW: p *= 1 - lr wd first; Adam: g += wd p. m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
// vhat = amsgrad ? (vmax = max(vmax, v)) : v; p += (-lr / bc1) m / (sqrt(vhat) / sqrt(bc2) + eps).
// One deliberate difference from PyTorch's order: sqrt(vhat) is multiplied by 1 / sqrt(bc2)
// (rounded once from double on the host) instead of divided by sqrt(bc2). Division throughput
// bounds this loop on AVX-512 CPUs once the data comes from cache; one division per element
// fewer costs at most an ulp in the denominator.
template <bool kL2, bool kDecoupled, bool kAmsgrad>
TRAINRT_HD void adam_update(float& p, float g, float& m, float& v, float& vmax,
                            const OptimScalars& s) {
  if (kDecoupled) p = p * s.decay;
  if (kL2) g = g + s.weight_decay * p;
  m = m * s.beta1 + s.omb1 * g;
  v = v * s.beta2 + (s.omb2 * g) * g;
  float vh = v;
  if (kAmsgrad) {
    vmax = max_nan(vmax, v);
    vh = vmax;
  }
  const float denom = sqrtf(vh) * s.inv_bc2_sqrt + s.eps;
  p = p + (-s.step_size * m) / denom;
}

// ---- RMSprop ----------------------------------------------------------------------------------
// g += wd p; sq = a sq + (1 - a) g^2; centered: ga = a ga + (1 - a) g, avg = sqrt(sq - ga^2) + eps,
// else avg = sqrt(sq) + eps; momentum: buf = mom buf + g / avg, p -= lr buf; else
// p += (-lr g) / avg. (BETA2 holds alpha.)
template <bool kL2, bool kCentered, bool kMomentum>
TRAINRT_HD void rmsprop_update(float& p, float g, float& sq, float& buf, float& ga,
                               const OptimScalars& s) {
  if (kL2) g = g + s.weight_decay * p;
  sq = sq * s.beta2 + (s.omb2 * g) * g;
  float avg;
  if (kCentered) {
    ga = ga * s.beta2 + s.omb2 * g;
    avg = sqrtf(sq + (-1.0f * ga) * ga) + s.eps;
  } else {
    avg = sqrtf(sq) + s.eps;
  }
  if (kMomentum) {
    buf = buf * s.momentum + g / avg;
    p = p - s.lr * buf;
  } else {
    p = p + (-s.lr * g) / avg;
  }
}

// ---- Adagrad ----------------------------------------------------------------------------------
// g += wd p; sum += g^2; p += (-clr g) / (sqrt(sum) + eps), clr = LR (lr_decay folded in).
template <bool kL2>
TRAINRT_HD void adagrad_update(float& p, float g, float& sum, const OptimScalars& s) {
  if (kL2) g = g + s.weight_decay * p;
  sum = sum + g * g;
  const float std_ = sqrtf(sum) + s.eps;
  p = p + (-s.lr * g) / std_;
}

// ---- RAdam ------------------------------------------------------------------------------------
// Decoupled: p *= 1 - lr wd, else g += wd p; moments as Adam; mhat = m / bc1; rect > 0:
// p -= ((mhat lr) (sqrt(bc2) / (sqrt(v) + eps))) rect; else p -= mhat lr.
template <bool kL2, bool kDecoupled, bool kRectified>
TRAINRT_HD void radam_update(float& p, float g, float& m, float& v, const OptimScalars& s) {
  if (kDecoupled) p = p * s.decay;
  if (kL2) g = g + s.weight_decay * p;
  m = m * s.beta1 + s.omb1 * g;
  v = v * s.beta2 + (s.omb2 * g) * g;
  const float mhat = m / s.bc1;
  if (kRectified) {
    // PyTorch: math.sqrt(bc2) / tensor, i.e. Tensor.__rtruediv__: reciprocal, then multiply.
    const float adaptive = (1.0f / (sqrtf(v) + s.eps)) * s.bc2_sqrt;
    p = p - ((mhat * s.lr) * adaptive) * s.rect;
  } else {
    p = p - mhat * s.lr;
  }
}

// ---- LAMB (Apex FusedLAMB, adam_w_mode, grad averaging, bias correction) -------------------
/// The divisor of every grad: n / max_grad_norm when the global norm n exceeds it, else 1.
TRAINRT_HD float lamb_grad_divisor(float global_norm, const OptimScalars& s) {
  return global_norm > s.max_grad_norm ? global_norm / s.max_grad_norm : 1.0f;
}

/// u from the updated moments (stage 2 recomputes it instead of storing it).
TRAINRT_HD float lamb_update_of(float p, float m, float v, const OptimScalars& s) {
  const float denom = sqrtf(v / s.bc2) + s.eps;
  return (m / s.bc1) / denom + s.weight_decay * p;
}

/// Stage 1: moments, and the update u = (m / bc1) / (sqrt(v / bc2) + eps) + wd p.
TRAINRT_HD float lamb_stage1(float p, float g, float& m, float& v, float divisor,
                             const OptimScalars& s) {
  const float sg = g / divisor;
  m = m * s.beta1 + s.omb1 * sg;
  v = v * s.beta2 + s.omb2 * sg * sg;
  return lamb_update_of(p, m, v, s);
}

/// Stage 2 ratio: lr * |p| / |u| when the trust ratio applies and both norms are non-zero.
TRAINRT_HD float lamb_ratio(float param_norm, float update_norm, bool nvlamb,
                            const OptimScalars& s) {
  if (!(nvlamb || s.weight_decay != 0.0f)) return s.lr;
  return (update_norm != 0.0f && param_norm != 0.0f) ? s.lr * (param_norm / update_norm) : s.lr;
}

// ---- clipping and loss scaling ---------------------------------------------------------------
/// PyTorch's clip coefficient in f32: min(1, max_norm / (total + 1e-6)), the division
/// evaluated as PyTorch's Tensor.__rtruediv__ does: reciprocal, then multiply.
TRAINRT_HD float clip_coefficient(float total_norm, float max_norm) {
  const float c = (1.0f / (total_norm + 1e-6f)) * max_norm;
  return c > 1.0f ? 1.0f : c;  // NaN stays NaN, as torch.clamp
}

// ---- multi-tensor norms (both backends) ---------------------------------------------------
/// What a multi-tensor norm computes: none (the non-finite check only), sum |x|, sum x^2,
/// max |x|, or sum |x|^p.
enum NormKind { kNormNone = 0, kNormL1 = 1, kNormL2 = 2, kNormInf = 3, kNormP = 4 };

/// (sum)^(1/p) from a sum of |x|^p (the value itself for L1 and for max |x|).
TRAINRT_HD double norm_root(int kind, double acc, double p) {
  return kind == kNormL2 ? sqrt(acc) : (kind == kNormP ? pow(acc, 1.0 / p) : acc);
}

/// The term one tensor adds to the total: PyTorch's clip_grad_norm_ is the norm of the
/// per-tensor norms, each an f32 value (f64 for f64 data; f16 / bf16 norms are kept in f32,
/// as SEMANTICS.md asks), so a tensor's norm is rounded to that type first (an f32 tensor
/// whose norm overflows f32 makes the total inf, as in PyTorch), then raised to p.
TRAINRT_HD double norm_tensor_term(int kind, double acc, double p, bool f64) {
  if (kind == kNormInf || kind == kNormNone) return acc;  // max |x|: exact in any type
  double n = norm_root(kind, acc, p);
  if (!f64) n = (double)(float)n;
  return kind == kNormL2 ? n * n : (kind == kNormP ? pow(n, p) : n);
}

/// The same in f64, as PyTorch computes it when the total norm is f64 (some grad is f64).
TRAINRT_HD double clip_coefficient_f64(double total_norm, double max_norm) {
  const double c = (1.0 / (total_norm + 1e-6)) * max_norm;
  return c > 1.0 ? 1.0 : c;
}

/// torch._amp_update_scale_ on one scale / growth tracker pair (products in double, rounded
/// to f32, as PyTorch's kernel).
TRAINRT_HD void amp_update_scale(float& scale, int32_t& tracker, bool found_inf,
                                 double growth_factor, double backoff_factor,
                                 int64_t growth_interval) {
  if (found_inf) {
    scale = (float)((double)scale * backoff_factor);
    tracker = 0;
    return;
  }
  const int32_t successful = tracker + 1;
  if (successful == growth_interval) {
    const float grown = (float)((double)scale * growth_factor);
    if (isfinite(grown)) scale = grown;
    tracker = 0;
  } else {
    tracker = successful;
  }
}

}  // namespace TRAINRT_KNS
}  // namespace trainrt
