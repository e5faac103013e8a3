// OpenMP CPU kernels of the layers: fused activation / dropout forward and backward, bias add
// and bias-gradient reduction (the GEMMs go to OpenBLAS in src/backend/cpu_gemm.cpp).
//
// Element-wise loops are split over fixed chunks of whole 4-element Philox groups, so the
// dropout mask and every result are independent of the thread count. The bias gradient sums
// each column over rows in row order (per-thread column blocks), deterministic as well.
//
// Compiled once per ISA level (see cpu_dispatch.cpp); uses no C++ library types.
#include <omp.h>

#include "../common/half.h"
#include "../common/nn.h"
#include "cpu_kernels.h"

namespace trainrt {
namespace TRAINRT_KNS {
namespace {

constexpr int64_t kParallelMin = 1 << 15;

template <class T>
struct tag {
  using type = T;
};

template <class F>
int dispatch(int32_t dtype, F&& f) {
  switch (dtype) {
    case TRAINRT_F32: f(tag<float>{}); return 0;
    case TRAINRT_F64: f(tag<double>{}); return 0;
    case TRAINRT_F16: f(tag<f16_t>{}); return 0;
    case TRAINRT_BF16: f(tag<bf16_t>{}); return 0;
    default: return 1;
  }
}

template <class T, class Op>
void elementwise(int64_t n, Op op) {
  const bool par = n >= kParallelMin && omp_get_max_threads() > 1;
#pragma omp parallel for schedule(static) if (par)
  for (int64_t i = 0; i < n; ++i) op(i);
}

template <class T>
void activation(const trainrt_nn_pointwise_args* a) {
  using A = typename acc_type<T>::type;
  const T* x = static_cast<const T*>(a->x);
  const T* y = static_cast<const T*>(a->y);
  const T* dy = static_cast<const T*>(a->dy);
  T* out = static_cast<T*>(a->out);
  const int64_t n = a->numel;
  if (!a->backward) {
    switch (a->kind) {
      case TRAINRT_NN_RELU:
        elementwise<T>(n, [&](int64_t i) { store(out, i, relu_fwd(load<A>(x, i))); });
        break;
      case TRAINRT_NN_GELU:
        elementwise<T>(n, [&](int64_t i) { store(out, i, gelu_fwd(load<A>(x, i))); });
        break;
      case TRAINRT_NN_TANH:
        elementwise<T>(n, [&](int64_t i) { store(out, i, tanh_fwd(load<A>(x, i))); });
        break;
      case TRAINRT_NN_SIGMOID:
        elementwise<T>(n, [&](int64_t i) { store(out, i, sigmoid_fwd(load<A>(x, i))); });
        break;
      default: break;
    }
    return;
  }
  switch (a->kind) {
    case TRAINRT_NN_RELU:
      elementwise<T>(n, [&](int64_t i) { store(out, i, relu_bwd(load<A>(x, i), load<A>(dy, i))); });
      break;
    case TRAINRT_NN_GELU:
      elementwise<T>(n, [&](int64_t i) { store(out, i, gelu_bwd(load<A>(x, i), load<A>(dy, i))); });
      break;
    case TRAINRT_NN_TANH:
      elementwise<T>(n, [&](int64_t i) { store(out, i, tanh_bwd(load<A>(y, i), load<A>(dy, i))); });
      break;
    case TRAINRT_NN_SIGMOID:
      elementwise<T>(n,
                     [&](int64_t i) { store(out, i, sigmoid_bwd(load<A>(y, i), load<A>(dy, i))); });
      break;
    default: break;
  }
}

template <class T>
void dropout(const trainrt_nn_pointwise_args* a) {
  using A = typename acc_type<T>::type;
  const T* in = static_cast<const T*>(a->backward ? a->dy : a->x);
  T* out = static_cast<T*>(a->out);
  const int64_t n = a->numel;
  const float p = (float)a->p;
  const A scale = a->p >= 1.0 ? A(0) : (A)(1.0 / (1.0 - a->p));
  const int64_t groups = (n + 3) / 4;
  const bool par = n >= kParallelMin && omp_get_max_threads() > 1;
#pragma omp parallel for schedule(static) if (par)
  for (int64_t g = 0; g < groups; ++g) {
    const philox4 w = dropout_words(a->seed, a->offset, (uint64_t)g);
    for (int j = 0; j < 4; ++j) {
      const int64_t i = g * 4 + j;
      if (i >= n) break;
      store(out, i, dropout_apply(load<A>(in, i), dropout_keep(w.v[j], p), scale));
    }
  }
}

template <class T, class B>
void bias_add(const trainrt_bias_args* a) {
  using A = typename acc_type<T>::type;
  T* y = static_cast<T*>(a->y);
  const B* b = static_cast<const B*>(a->bias);
  const int64_t rows = a->rows, cols = a->cols;
  const bool par = rows * cols >= kParallelMin && omp_get_max_threads() > 1;
#pragma omp parallel for schedule(static) if (par)
  for (int64_t r = 0; r < rows; ++r) {
    T* row = y + r * cols;
    for (int64_t c = 0; c < cols; ++c) store(row, c, load<A>(row, c) + (A)b[c]);
  }
}

template <class T, class B>
void bias_grad(const trainrt_bias_args* a) {
  using A = typename acc_type<T>::type;
  const T* dy = static_cast<const T*>(a->dy);
  B* g = static_cast<B*>(a->grad);
  const int64_t rows = a->rows, cols = a->cols;
  constexpr int64_t kCols = 256;
  const int64_t blocks = (cols + kCols - 1) / kCols;
  const bool par = rows * cols >= kParallelMin && omp_get_max_threads() > 1;
#pragma omp parallel for schedule(static) if (par)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t c0 = blk * kCols;
    const int64_t c1 = c0 + kCols < cols ? c0 + kCols : cols;
    A acc[kCols];
    for (int64_t c = c0; c < c1; ++c) acc[c - c0] = a->accumulate ? (A)g[c] : A(0);
    for (int64_t r = 0; r < rows; ++r) {
      const T* row = dy + r * cols;
      for (int64_t c = c0; c < c1; ++c) acc[c - c0] += load<A>(row, c);
    }
    for (int64_t c = c0; c < c1; ++c) g[c] = (B)acc[c - c0];
  }
}

}  // namespace

int cpu_nn_pointwise(const trainrt_nn_pointwise_args* a) {
  if (a->kind < TRAINRT_NN_RELU || a->kind > TRAINRT_NN_DROPOUT) return 1;
  return dispatch(a->dtype, [&](auto t) {
    using T = typename decltype(t)::type;
    if (a->kind == TRAINRT_NN_DROPOUT) {
      dropout<T>(a);
    } else {
      activation<T>(a);
    }
  });
}

int cpu_bias(const trainrt_bias_args* a) {
  const bool f64 = a->dtype == TRAINRT_F64;
  if (a->bias_dtype != (f64 ? TRAINRT_F64 : TRAINRT_F32)) return 1;
  if (a->op != TRAINRT_BIAS_ADD && a->op != TRAINRT_BIAS_GRAD) return 1;
  return dispatch(a->dtype, [&](auto t) {
    using T = typename decltype(t)::type;
    using B = typename acc_type<T>::type;
    if (a->op == TRAINRT_BIAS_ADD) {
      bias_add<T, B>(a);
    } else {
      bias_grad<T, B>(a);
    }
  });
}

}  // namespace TRAINRT_KNS
}  // namespace trainrt
