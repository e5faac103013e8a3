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
 * struct_size of the table it gets. Any change to this file bumps the version.
 */
#ifndef TRAINRT_BACKEND_API_H
#define TRAINRT_BACKEND_API_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TRAINRT_BACKEND_API_VERSION 1u
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
  TRAINRT_OP_POINTWISE_LOSS = 3
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
} trainrt_backend_v1;

typedef const trainrt_backend_v1* (*trainrt_backend_entry_fn)(uint32_t requested_api_version);

#ifdef __cplusplus
}
#endif

#endif /* TRAINRT_BACKEND_API_H */
