/* trainrt backend ABI, version 1.
 *
 * The one contract between libtrainrt (the core) and a backend: the CPU backend built into
 * the core, or the CUDA backend module libtrainrt_cuda.so opened at run time with dlopen.
 * It is plain C on purpose: a table of function pointers taking small argument structs,
 * so the module boundary carries no C++ types, exceptions or allocators.
 *
 * Rules every slot follows:
 *  - returns 0 on success, non-zero on failure; the reason is then in last_error() (a
 *    thread-local string owned by the backend, valid until the next call on that thread);
 *  - never throws, never aborts, never lets a device assert fire;
 *  - pointers are device pointers of `device` unless the slot says host;
 *  - float hyperparameters travel as double; accumulation is f32 (f64 for f64 data).
 *
 * Deferred data errors: a backend that cannot check data on the host (CUDA: class indices
 * live on the GPU) records the first bad element in a device-side error record instead of
 * asserting. The record is checked, and turned into a failure with a full message, by
 * synchronize() and by every device->host copy. The CPU backend reports them at once.
 *
 * Versioning: a module exports
 *     const trainrt_backend_v1* trainrt_backend_entry(uint32_t requested_api_version);
 * returning NULL if it cannot serve that version. The core also checks api_version and
 * struct_size of the table it gets. Until the first release, new slots are appended at the
 * end of the table under version 1 (struct_size tells a stale module apart) and new fields at
 * the end of an argument struct bump TRAINRT_BACKEND_ARGS_REVISION (the table's
 * args_revision tells it apart); after it, any change to this file bumps the version.
 */
#ifndef TRAINRT_BACKEND_API_H
#define TRAINRT_BACKEND_API_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TRAINRT_BACKEND_API_VERSION 1u
/* Bumped whenever an argument struct gains a field (before the first release they grow at
 * their end under version 1): 2 = the f64 outputs of multi_tensor_norm / multi_tensor_scale. */
#define TRAINRT_BACKEND_ARGS_REVISION 2u
#define TRAINRT_BACKEND_ENTRY_SYMBOL "trainrt_backend_entry"

/* Same values as trainrt::DType. */
enum trainrt_dtype_c {
  TRAINRT_F32 = 0,
  TRAINRT_F16 = 1,
  TRAINRT_BF16 = 2,
  TRAINRT_F64 = 3,
  TRAINRT_I32 = 4,
  TRAINRT_I64 = 5,
  TRAINRT_U8 = 6
};

enum trainrt_copy_kind_c { TRAINRT_COPY_H2D = 0, TRAINRT_COPY_D2H = 1, TRAINRT_COPY_D2D = 2 };

enum trainrt_reduction_c { TRAINRT_RED_NONE = 0, TRAINRT_RED_MEAN = 1, TRAINRT_RED_SUM = 2 };

/* Ops a backend may support; supports(op, dtype) answers per input dtype. */
enum trainrt_op_c {
  TRAINRT_OP_CAST = 0,
  TRAINRT_OP_SOFTMAX = 1,
  TRAINRT_OP_CROSS_ENTROPY = 2,
  TRAINRT_OP_POINTWISE_LOSS = 3,
  TRAINRT_OP_OPTIMIZER_STEP = 4, /* dtype: of the params (f32 master params) */
  TRAINRT_OP_MULTI_TENSOR = 5,   /* multi_tensor_norm / multi_tensor_scale; dtype: of the tensors */
  TRAINRT_OP_GEMM = 6,           /* gemm; dtype: of A and B */
  TRAINRT_OP_NN_POINTWISE = 7    /* nn_pointwise and bias; dtype: of the activations */
};

/* softmax / log_softmax over the last dimension of a contiguous [rows, cols] array.
 * forward:  y = softmax(x) or log_softmax(x)
 * backward: dx from the forward output y and dy (softmax: y*(dy - sum(y*dy));
 *           log_softmax: dy - exp(y)*sum(dy)). x/y/dy/dx all of `dtype`. */
typedef struct trainrt_softmax_args {
  int32_t dtype;
  int32_t log; /* 0: softmax, 1: log_softmax */
  int64_t rows, cols;
  const void* x;  /* forward input */
  const void* y;  /* backward: the forward output */
  const void* dy; /* backward: upstream gradient */
  void* out;      /* forward: y; backward: dx */
} trainrt_softmax_args;

/* The row-wise losses over [rows, cols] class scores, loss and gradient in one pass:
 *   cross_entropy with class-index targets (weight, ignore_index, label_smoothing),
 *   cross_entropy with probability targets (weight, label_smoothing),
 *   nll_loss (input_is_logp = 1: the input already holds log-probabilities),
 * plus the extras z_loss (+ z_loss * lse^2 per counted row) and soft-capping
 * (x -> softcap * tanh(x / softcap) before the softmax; 0 = off).
 * Outputs: loss (reduction none: [rows] of dtype; else a scalar of dtype), and if grad is
 * not NULL the input gradient [rows, cols] of dtype, multiplied by grad_scale and, when
 * grad_scale_ptr is not NULL, by *grad_scale_ptr (an f32 device scalar). */
typedef struct trainrt_cross_entropy_args {
  int32_t dtype; /* of logits, loss and grad */
  int32_t reduction;
  int64_t rows, cols;
  const void* logits;
  int32_t input_is_logp; /* 1: nll_loss */
  int32_t prob_targets;  /* 1: target is [rows, cols] of dtype */
  int32_t target_dtype;  /* class indices: TRAINRT_I64 or TRAINRT_I32 */
  const void* target;
  const void* weight; /* NULL or [cols] of the accumulation type (f32; f64 for f64) */
  int64_t ignore_index;
  double label_smoothing;
  double z_loss;
  double softcap;
  void* loss;
  void* grad;
  double grad_scale;
  const float* grad_scale_ptr;
} trainrt_cross_entropy_args;

enum trainrt_pointwise_kind_c {
  TRAINRT_LOSS_MSE = 0,
  TRAINRT_LOSS_L1 = 1,
  TRAINRT_LOSS_SMOOTH_L1 = 2, /* param = beta */
  TRAINRT_LOSS_HUBER = 3,     /* param = delta */
  TRAINRT_LOSS_BCE = 4,
  TRAINRT_LOSS_BCE_LOGITS = 5,
  TRAINRT_LOSS_FOCAL = 6, /* param = gamma, alpha (alpha < 0: no alpha weighting) */
  TRAINRT_LOSS_KL_DIV = 7 /* log_target */
};

/* Element-wise losses over `numel` elements of input/target (both of dtype). weight is NULL,
 * [numel] or [inner] (broadcast along the last dimension, inner = its size); pos_weight is
 * NULL or [inner]; both of the accumulation type. The reduced loss is sum / divisor (the
 * host passes numel for mean, N for kl_div batchmean, 1 for sum). grad as in cross_entropy. */
typedef struct trainrt_pointwise_loss_args {
  int32_t kind;
  int32_t dtype;
  int32_t reduction;
  int32_t log_target;
  int64_t numel;
  int64_t inner;
  const void* input;
  const void* target;
  const void* weight;
  int64_t weight_numel;
  const void* pos_weight;
  double param;
  double alpha;
  double divisor;
  void* loss;
  void* grad;
  double grad_scale;
  const float* grad_scale_ptr;
} trainrt_pointwise_loss_args;

/* ---- Optimizers, gradient clipping and loss scaling -------------------------------------
 *
 * Multi-tensor slots: each call takes host arrays of n_tensors device pointers and sizes
 * (a CUDA backend packs them into chunked kernel arguments; the CPU runs one OpenMP loop over
 * a flattened list of fixed-size chunks). Tensors are contiguous; numel may be 0.
 *
 * Scalars that change from step to step live in small f32 blocks in device memory, so that
 * a step needs no host round trip, changing the lr needs no new launch configuration, and the
 * step can be captured in a CUDA graph:
 *   - the optimizer scalars block (TRAINRT_OS_COUNT floats), one per optimizer_step call,
 *     written by the host (each value computed in double, rounded once to f32);
 *   - the grad scalars block (TRAINRT_GS_COUNT floats), one per optimizer, written by the
 *     multi_tensor_norm and amp slots (and reset by the host with a copy: from host memory,
 *     or, for a capturable optimizer, device to device from a constant block).
 * A grad as a step sees it is g_eff = (g * gs[INV_SCALE]) * gs[CLIP_COEF], negated when
 * maximizing; with no grad scalars block, g_eff = g. */

/* Grad scalars block: indices into an f32 array of TRAINRT_GS_COUNT in device memory. */
enum trainrt_grad_scalar_c {
  TRAINRT_GS_INV_SCALE = 0, /* 1 / loss scale (GradScaler.unscale_), else 1 */
  TRAINRT_GS_CLIP_COEF = 1, /* product of global-norm clip coefficients, else 1 */
  TRAINRT_GS_FOUND_INF = 2, /* non-zero: a grad held inf or NaN; optimizer_step does nothing */
  TRAINRT_GS_RESERVED = 3,
  TRAINRT_GS_COUNT = 4
};

/* optimizer_step algorithms; the per-element math is kernels/common/optim.h. State lists
 * (states[0..2] of the args):
 *   SGD:      [0] momentum_buffer (flag MOMENTUM)
 *   ADAM:     Adam and AdamW: [0] exp_avg, [1] exp_avg_sq, [2] max_exp_avg_sq (flag AMSGRAD)
 *   RMSPROP:  [0] square_avg, [1] momentum_buffer (MOMENTUM), [2] grad_avg (CENTERED)
 *   ADAGRAD:  [0] sum
 *   RADAM:    [0] exp_avg, [1] exp_avg_sq
 *   LAMB:     Apex FusedLAMB in adam_w_mode: [0] exp_avg, [1] exp_avg_sq */
enum trainrt_optim_algo_c {
  TRAINRT_OPTIM_SGD = 0,
  TRAINRT_OPTIM_ADAM = 1,
  TRAINRT_OPTIM_RMSPROP = 2,
  TRAINRT_OPTIM_ADAGRAD = 3,
  TRAINRT_OPTIM_RADAM = 4,
  TRAINRT_OPTIM_LAMB = 5
};

/* optimizer_step flags (bit set). */
enum trainrt_optim_flag_c {
  TRAINRT_OPTIM_MAXIMIZE = 1,  /* g = -g first */
  TRAINRT_OPTIM_L2 = 2,        /* g += WEIGHT_DECAY * p (coupled weight decay) */
  TRAINRT_OPTIM_DECOUPLED = 4, /* p *= DECAY before the update (AdamW, RAdam decoupled) */
  TRAINRT_OPTIM_MOMENTUM = 8,  /* SGD / RMSprop: a momentum buffer is present and used */
  TRAINRT_OPTIM_NESTEROV = 16, /* SGD */
  TRAINRT_OPTIM_AMSGRAD = 32,  /* Adam */
  TRAINRT_OPTIM_CENTERED = 64, /* RMSprop */
  TRAINRT_OPTIM_NVLAMB = 128,  /* LAMB: trust ratio even where WEIGHT_DECAY == 0 */
  /* SGD, capturable calls: every momentum buffer of the call starts at this step (buf = g)
   * whatever the count (the buffer was made now, e.g. momentum switched on mid-run). */
  TRAINRT_OPTIM_FRESH_BUFFER = 256
};

/* Optimizer scalars block: indices into an f32 array of TRAINRT_OS_COUNT in device memory.
 * t is the parameter's step count after this step (1 at the first step); every tensor of one
 * optimizer_step call has the same t, except in a capturable call (step_counts given), where
 * each tensor's t-dependent entries come from its own device count. Unused entries are
 * ignored.
 *   SGD:      LR, WEIGHT_DECAY, MOMENTUM, BUF_SCALE = momentum (0 at t = 1),
 *             BUF_GAIN = 1 - dampening (1 at t = 1): buf = buf * BUF_SCALE + BUF_GAIN * g
 *   Adam(W):  LR, WEIGHT_DECAY, DECAY = 1 - lr * wd, BETA1, OMB1 = 1 - beta1, BETA2,
 *             OMB2 = 1 - beta2, EPS, STEP_SIZE = lr / (1 - beta1^t), BC2_SQRT = sqrt(1 - beta2^t),
 *             INV_BC2_SQRT = 1 / sqrt(1 - beta2^t)
 *   RMSprop:  LR, WEIGHT_DECAY, MOMENTUM, BETA2 = alpha, OMB2 = 1 - alpha, EPS
 *   Adagrad:  LR = lr / (1 + (t - 1) * lr_decay), WEIGHT_DECAY, EPS
 *   RAdam:    LR, WEIGHT_DECAY, DECAY, BETA1, OMB1, BETA2, OMB2, EPS, BC1 = 1 - beta1^t,
 *             BC2_SQRT, RECT = rectification r when rho_t > 5, else 0 (unadapted step)
 *   LAMB:     LR, WEIGHT_DECAY, BETA1, OMB1, BETA2, OMB2, EPS, BC1, BC2 = 1 - beta2^t,
 *             MAX_GRAD_NORM; g = g_eff / (n > MAX_GRAD_NORM ? n / MAX_GRAD_NORM : 1) with
 *             n = *global_grad_norm; u = (m / BC1) / (sqrt(v / BC2) + EPS) + wd * p;
 *             p -= LR * trust * u with trust = |p| / |u| per tensor (1 if either is 0, or
 *             if wd == 0 without NVLAMB) */
enum trainrt_optim_scalar_c {
  TRAINRT_OS_LR = 0,
  TRAINRT_OS_WEIGHT_DECAY = 1,
  TRAINRT_OS_DECAY = 2,
  TRAINRT_OS_MOMENTUM = 3,
  TRAINRT_OS_BUF_SCALE = 4,
  TRAINRT_OS_BUF_GAIN = 5,
  TRAINRT_OS_BETA1 = 6,
  TRAINRT_OS_OMB1 = 7,
  TRAINRT_OS_BETA2 = 8,
  TRAINRT_OS_OMB2 = 9,
  TRAINRT_OS_EPS = 10,
  TRAINRT_OS_STEP_SIZE = 11,
  TRAINRT_OS_BC1 = 12,
  TRAINRT_OS_BC2 = 13,
  TRAINRT_OS_BC2_SQRT = 14,
  TRAINRT_OS_RECT = 15,
  TRAINRT_OS_MAX_GRAD_NORM = 16,
  TRAINRT_OS_INV_BC2_SQRT = 17,
  TRAINRT_OS_COUNT = 24
};

/* One fused optimizer step over the tensors of one parameter group that share a step count:
 * one pass per element over param, grad and state (LAMB: two, with per-tensor norms of p and
 * u between them, reduced in a fixed order). Reads g_eff (see above); when grad_scalars is
 * given and gs[FOUND_INF] != 0 the call changes nothing. When model_copies is given, each
 * non-NULL entry receives the updated param rounded (nearest even) to model_dtype in the
 * same pass. */
typedef struct trainrt_optim_step_args {
  int32_t algo;        /* trainrt_optim_algo_c */
  uint32_t flags;      /* trainrt_optim_flag_c bits */
  int32_t param_dtype; /* TRAINRT_F32 */
  int32_t grad_dtype;  /* TRAINRT_F32 (the core requires grad dtype == param dtype) */
  int32_t model_dtype; /* TRAINRT_F16 or TRAINRT_BF16 when model_copies is given */
  int32_t reserved0;
  int64_t n_tensors;
  void* const* params;           /* host array of n_tensors device pointers (in/out) */
  const void* const* grads;      /* host array of n_tensors device pointers */
  void* const* states[3];        /* host arrays of device pointers per state list, or NULL */
  void* const* model_copies;     /* NULL, or host array (entries may be NULL) */
  const int64_t* numels;         /* host array of n_tensors element counts */
  const float* scalars;          /* device: optimizer scalars block (TRAINRT_OS_COUNT f32) */
  const float* grad_scalars;     /* device: grad scalars block, or NULL (g_eff = g) */
  const float* global_grad_norm; /* LAMB: device f32, norm of all g_eff of the optimizer */
  /* Capturable step (all three NULL otherwise): the step counts live on the device and the
   * host reads nothing, so the call can be captured in a CUDA graph and replayed.
   *   step_counts:    host array of n_tensors device pointers, each to the int64 step count
   *                   of that tensor before this step (tensors of one call may differ);
   *   step_hyper:     device, TRAINRT_OH_COUNT doubles (the hyperparameters the
   *                   t-dependent entries are computed from);
   *   tensor_scalars: device workspace of n_tensors * TRAINRT_OS_COUNT f32.
   * Tensor i is updated with a copy of `scalars` whose t-dependent entries (STEP_SIZE, BC1,
   * BC2, BC2_SQRT, INV_BC2_SQRT, RECT; Adagrad's LR; SGD's BUF_SCALE and BUF_GAIN, with a
   * fresh momentum buffer at t = 1 or with flag FRESH_BUFFER) are recomputed on the device by
   * kernels/common/optim.h's derive_step_scalars for t = *step_counts[i] + 1, the copy kept
   * in tensor_scalars. Then each count advances by one, unless grad_scalars says found_inf
   * (a skipped step changes nothing, counts included). */
  int64_t* const* step_counts;
  const double* step_hyper;
  float* tensor_scalars;
} trainrt_optim_step_args;

/* Hyperparameters of a capturable step: indices into a device array of TRAINRT_OH_COUNT
 * doubles (unused entries 0). */
enum trainrt_optim_hyper_c {
  TRAINRT_OH_LR = 0,
  TRAINRT_OH_BETA1 = 1,     /* Adam(W), RAdam, LAMB */
  TRAINRT_OH_BETA2 = 2,     /* Adam(W), RAdam, LAMB */
  TRAINRT_OH_LR_DECAY = 3,  /* Adagrad */
  TRAINRT_OH_MOMENTUM = 4,  /* SGD */
  TRAINRT_OH_DAMPENING = 5, /* SGD */
  TRAINRT_OH_COUNT = 8
};

/* One deterministic read pass over a list of tensors (f32, f16 or bf16 each; f64 allowed):
 * x = (v * gs[INV_SCALE]) * gs[CLIP_COEF] when grad_scalars is given, else v. Computes, per
 * fixed-size chunk, sum |x|^p (accumulated in double) or max |x|, and whether any v is not
 * finite; then reduces the chunk partials in a fixed order (no float atomics), so the result
 * does not depend on the thread or block count.
 *   total_norm: NULL, or receives (sum |x|^p)^(1/p) (max |x| for p = inf; NaN if any x is
 *               NaN) as f32; 0 for no elements.
 *   found_inf:  NULL, or set to 1.0f when some v is inf or NaN (never cleared here).
 *   max_norm > 0 (needs grad_scalars): gs[CLIP_COEF] *= min(1, max_norm / (total + 1e-6))
 *               with the clip coefficient computed in f32 as PyTorch does.
 * The f64 results (what PyTorch computes when some grad is f64):
 *   total_norm_f64: NULL, or receives the same total as f64, before any rounding to f32.
 *   clip_coef_f64:  with max_norm > 0: NULL, or receives (is set to, not multiplied by)
 *                   min(1, max_norm / (total + 1e-6)) computed in f64 from the f64 total. */
typedef struct trainrt_multi_tensor_norm_args {
  int64_t n_tensors;
  const void* const* tensors; /* host array of device pointers */
  const int32_t* dtypes;      /* host array */
  const int64_t* numels;      /* host array */
  double norm_type;           /* p > 0 or INFINITY; 0: no norm (non-finite check only) */
  double max_norm;            /* > 0: also fold the clip coefficient into grad_scalars */
  float* grad_scalars;        /* device grad scalars block, or NULL */
  float* total_norm;          /* device f32 scalar, or NULL */
  float* found_inf;           /* device f32 scalar, or NULL */
  double* total_norm_f64;     /* device f64 scalar, or NULL */
  double* clip_coef_f64;      /* device f64 scalar, or NULL */
} trainrt_multi_tensor_norm_args;

/* In place over a list of tensors (f32, f16, bf16 or f64 each), computed in f32 (f64 for f64):
 *   v = (v * gs[INV_SCALE]) * gs[CLIP_COEF]   when grad_scalars is given,
 *   v = v * *scale                            when scale is given,
 *   v = v * *scale_f64                        when scale_f64 is given (the factor rounded to
 *                                             the compute type: f32, or f64 for f64 data),
 *   v = min(max(v, clamp_lo), clamp_hi)       unless clamp_lo = -inf and clamp_hi = inf
 *                                             (NaN stays NaN). */
typedef struct trainrt_multi_tensor_scale_args {
  int64_t n_tensors;
  void* const* tensors;
  const int32_t* dtypes;
  const int64_t* numels;
  const float* grad_scalars; /* device, or NULL */
  const float* scale;        /* device f32 scalar, or NULL */
  double clamp_lo, clamp_hi;
  const double* scale_f64; /* device f64 scalar, or NULL */
} trainrt_multi_tensor_scale_args;

enum trainrt_amp_op_c {
  /* grad_scalars[INV_SCALE] = (float)(1.0 / (double)*scale), grad_scalars[FOUND_INF] = 0;
   * CLIP_COEF is left as it is */
  TRAINRT_AMP_BEGIN_UNSCALE = 0,
  /* torch._amp_update_scale_: found = any *found_infs[i] != 0; if found: *scale *= backoff,
   * *growth_tracker = 0; else if ++*growth_tracker == growth_interval: the scale grows by
   * growth_factor only if the result is finite, and *growth_tracker = 0. f32 arithmetic. */
  TRAINRT_AMP_UPDATE_SCALE = 1
};

typedef struct trainrt_amp_args {
  int32_t op;
  int32_t n_found_infs;
  float* scale;                   /* device f32 */
  int32_t* growth_tracker;        /* device i32 */
  float* grad_scalars;            /* BEGIN_UNSCALE: device grad scalars block */
  const float* const* found_infs; /* UPDATE_SCALE: host array of n_found_infs device pointers */
  double growth_factor;
  double backoff_factor;
  int64_t growth_interval;
} trainrt_amp_args;

/* ---- Layers (nn) ----------------------------------------------------------------------
 *
 * gemm: C = alpha * op(A) op(B) + beta * C over contiguous row-major arrays, accumulated in
 * f32 (f64 for f64): op(A) is [m, k] (A stored [k, m] when trans_a), op(B) is [k, n] (B stored
 * [n, k] when trans_b), C is [m, n]. A and B are of ab_dtype (f32, f16, bf16 or f64); C is of
 * c_dtype: ab_dtype, or f32 for f16/bf16 inputs (mixed precision). beta = 0: C is not read. */
typedef struct trainrt_gemm_args {
  int32_t ab_dtype;
  int32_t c_dtype;
  int32_t trans_a;
  int32_t trans_b;
  int64_t m, n, k;
  const void* a;
  const void* b;
  void* c;
  double alpha;
  double beta;
} trainrt_gemm_args;

enum trainrt_nn_pointwise_kind_c {
  TRAINRT_NN_RELU = 0,    /* backward reads x */
  TRAINRT_NN_GELU = 1,    /* erf form: x * Phi(x); backward reads x */
  TRAINRT_NN_TANH = 2,    /* backward reads y */
  TRAINRT_NN_SIGMOID = 3, /* backward reads y */
  /* keep element i unless u_i < p, u_i = (philox word >> 8) * 2^-24 from Philox4x32-10 with
   * key (seed lo, seed hi) and counter (i/4 lo, i/4 hi, offset lo, offset hi), word i % 4
   * (kernels/common/nn.h); kept elements are scaled by 1/(1-p) (p = 1: all zero). Backward
   * regenerates the mask from seed and offset and reads dy only. */
  TRAINRT_NN_DROPOUT = 4
};

/* Fused element-wise activation over numel elements of dtype (computed in f32, f64 for f64).
 * forward: out = f(x); backward: out = dy * f'(.) from x or y as the kind says. */
typedef struct trainrt_nn_pointwise_args {
  int32_t kind;
  int32_t dtype;
  int32_t backward; /* 0: forward, 1: backward */
  int32_t reserved0;
  int64_t numel;
  const void* x;  /* forward input */
  const void* y;  /* backward of tanh / sigmoid: the forward output */
  const void* dy; /* backward: upstream gradient */
  void* out;      /* forward: y; backward: dx */
  double p;       /* dropout probability */
  uint64_t seed;
  uint64_t offset;
} trainrt_nn_pointwise_args;

enum trainrt_bias_op_c {
  TRAINRT_BIAS_ADD = 0, /* y[r, c] += bias[c] (in place, rounded once to dtype) */
  TRAINRT_BIAS_GRAD = 1 /* grad[c] = (accumulate ? grad[c] : 0) + sum_r dy[r, c], rows in order */
};

/* Bias ops over a contiguous [rows, cols] array of dtype; bias and grad are [cols] of
 * bias_dtype (f32, or f64 for f64 data). */
typedef struct trainrt_bias_args {
  int32_t op;
  int32_t dtype;
  int32_t bias_dtype;
  int32_t accumulate;
  int64_t rows, cols;
  void* y;          /* ADD */
  const void* bias; /* ADD */
  const void* dy;   /* GRAD */
  void* grad;       /* GRAD */
} trainrt_bias_args;

typedef struct trainrt_backend_v1 {
  uint32_t api_version; /* TRAINRT_BACKEND_API_VERSION */
  uint32_t struct_size; /* sizeof(trainrt_backend_v1) */
  const char* name;     /* "cpu", "cuda" */

  /* Thread-local message for the last failure on this thread. */
  const char* (*last_error)(void);
  /* Number of usable devices (>= 0); on failure the reason (no driver, ...) is in last_error. */
  int (*device_count)(int32_t* count);
  /* Human-readable device description into buf (host). */
  int (*device_name)(int32_t device, char* buf, size_t len);
  /* 1 if the op is implemented for this input dtype, else 0. */
  int (*supports)(int32_t op, int32_t dtype);

  /* Memory: allocation is stream-ordered where the device has streams. */
  int (*alloc)(int32_t device, size_t bytes, void** out);
  int (*free)(int32_t device, void* ptr); /* must not fail on a valid pointer */
  int (*copy)(int32_t device, void* dst, const void* src, size_t bytes, int32_t kind);
  int (*memset_zero)(int32_t device, void* dst, size_t bytes);
  /* Waits for all work on the device and reports any deferred data error. */
  int (*synchronize)(int32_t device);

  /* dst[i] = (dst_dtype) src[i]; float <-> float with round-to-nearest-even. */
  int (*cast)(int32_t device, const void* src, int32_t src_dtype, void* dst, int32_t dst_dtype,
              int64_t n);
  int (*softmax_forward)(int32_t device, const trainrt_softmax_args* args);
  int (*softmax_backward)(int32_t device, const trainrt_softmax_args* args);
  int (*cross_entropy)(int32_t device, const trainrt_cross_entropy_args* args);
  int (*pointwise_loss)(int32_t device, const trainrt_pointwise_loss_args* args);

  /* Optimizers, clipping, loss scaling (see the argument structs above). */
  int (*optimizer_step)(int32_t device, const trainrt_optim_step_args* args);
  int (*multi_tensor_norm)(int32_t device, const trainrt_multi_tensor_norm_args* args);
  int (*multi_tensor_scale)(int32_t device, const trainrt_multi_tensor_scale_args* args);
  int (*amp)(int32_t device, const trainrt_amp_args* args);

  /* Layers (nn): see the argument structs above. */
  int (*gemm)(int32_t device, const trainrt_gemm_args* args);
  int (*nn_pointwise)(int32_t device, const trainrt_nn_pointwise_args* args);
  int (*bias)(int32_t device, const trainrt_bias_args* args);

  /* CUDA graphs (NULL where the backend has none). The device's stream is captured from
   * graph_begin (thread-local capture mode: other threads may go on) to graph_end, which
   * returns an instantiated graph; graph_launch replays it on the device's stream;
   * graph_destroy frees it (must not fail on a valid handle). */
  int (*graph_begin)(int32_t device);
  int (*graph_end)(int32_t device, void** graph);
  int (*graph_launch)(int32_t device, void* graph);
  int (*graph_destroy)(int32_t device, void* graph);
  /* 1 (in *capturing) while the device's stream is being captured, else 0. */
  int (*graph_capturing)(int32_t device, int32_t* capturing);

  /* TRAINRT_BACKEND_ARGS_REVISION: the layout of the argument structs the module was built
   * with. A module of another revision (or an older one without this field, whose smaller
   * struct_size shows it) is refused. */
  uint32_t args_revision;
} trainrt_backend_v1;

typedef const trainrt_backend_v1* (*trainrt_backend_entry_fn)(uint32_t requested_api_version);

#ifdef __cplusplus
}
#endif

#endif /* TRAINRT_BACKEND_API_H */
