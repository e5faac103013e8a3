// Layer ops of the CUDA module: GEMM through cuBLAS (cublasGemmEx, f32 accumulation; f16 /
// bf16 inputs with f16 / bf16 / f32 output under mixed precision; f64 in f64), the fused
// element-wise activation / dropout kernels of kernels/common/nn.h, bias add and the bias
// gradient (one thread per column summing rows in order: deterministic, no atomics).
#include <cublas_v2.h>

#include <algorithm>
#include <limits>
#include <mutex>
#include <string>

#include "../common/nn.h"
#include "cuda_check.h"
#include "cuda_ops.h"
#include "device_utils.cuh"

namespace trainrt {
namespace gpu {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

int64_t blocks_for(int64_t n) {
  return std::max<int64_t>(1, std::min(kMaxBlocks, ceil_div(n, kThreads)));
}

cudaDataType_t cuda_type(int32_t dt) {
  switch (dt) {
    case TRAINRT_F32: return CUDA_R_32F;
    case TRAINRT_F16: return CUDA_R_16F;
    case TRAINRT_BF16: return CUDA_R_16BF;
    case TRAINRT_F64: return CUDA_R_64F;
    default: fail("gemm: unsupported dtype");
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads) activation_kernel(trainrt_nn_pointwise_args a) {
  using A = typename acc_type<T>::type;
  const T* x = static_cast<const T*>(a.x);
  const T* y = static_cast<const T*>(a.y);
  const T* dy = static_cast<const T*>(a.dy);
  T* out = static_cast<T*>(a.out);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < a.numel;
       i += stride) {
    A r;
    if (!a.backward) {
      const A xi = load<A>(x, i);
      switch (a.kind) {
        case TRAINRT_NN_RELU: r = relu_fwd(xi); break;
        case TRAINRT_NN_GELU: r = gelu_fwd(xi); break;
        case TRAINRT_NN_TANH: r = tanh_fwd(xi); break;
        default: r = sigmoid_fwd(xi); break;
      }
    } else {
      const A g = load<A>(dy, i);
      switch (a.kind) {
        case TRAINRT_NN_RELU: r = relu_bwd(load<A>(x, i), g); break;
        case TRAINRT_NN_GELU: r = gelu_bwd(load<A>(x, i), g); break;
        case TRAINRT_NN_TANH: r = tanh_bwd(load<A>(y, i), g); break;
        default: r = sigmoid_bwd(load<A>(y, i), g); break;
      }
    }
    store(out, i, r);
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads) dropout_kernel(trainrt_nn_pointwise_args a) {
  using A = typename acc_type<T>::type;
  const T* in = static_cast<const T*>(a.backward ? a.dy : a.x);
  T* out = static_cast<T*>(a.out);
  const float p = static_cast<float>(a.p);
  const A scale = a.p >= 1.0 ? A(0) : static_cast<A>(1.0 / (1.0 - a.p));
  const int64_t groups = (a.numel + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; g < groups;
       g += stride) {
    const philox4 w = dropout_words(a.seed, a.offset, static_cast<uint64_t>(g));
    for (int j = 0; j < 4; ++j) {
      const int64_t i = g * 4 + j;
      if (i >= a.numel) break;
      store(out, i, dropout_apply(load<A>(in, i), dropout_keep(w.v[j], p), scale));
    }
  }
}

template <class T, class B>
__global__ void __launch_bounds__(kThreads)
    bias_add_kernel(T* y, const B* bias, int64_t rows, int64_t cols) {
  using A = typename acc_type<T>::type;
  const int64_t n = rows * cols;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    store(y, i, load<A>(y, i) + static_cast<A>(bias[i % cols]));
  }
}

template <class T, class B>
__global__ void __launch_bounds__(kThreads)
    bias_grad_kernel(const T* dy, B* grad, int64_t rows, int64_t cols, int accumulate) {
  using A = typename acc_type<T>::type;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (c >= cols) return;
  A acc = accumulate ? static_cast<A>(grad[c]) : A(0);
  for (int64_t r = 0; r < rows; ++r) acc += load<A>(dy, r * cols + c);
  grad[c] = static_cast<B>(acc);
}

template <class F>
void dispatch(int32_t dtype, F&& f) {
  switch (dtype) {
    case TRAINRT_F32: f(float{}); break;
    case TRAINRT_F64: f(double{}); break;
    case TRAINRT_F16: f(f16_t{}); break;
    case TRAINRT_BF16: f(bf16_t{}); break;
    default: fail("unsupported dtype");
  }
}

}  // namespace

void launch_gemm(DeviceCtx& ctx, const trainrt_gemm_args& a) {
  const int32_t ab = a.ab_dtype, cd = a.c_dtype;
  const bool half = ab == TRAINRT_F16 || ab == TRAINRT_BF16;
  if (!(ab == TRAINRT_F32 || ab == TRAINRT_F64 || half) ||
      !(cd == ab || (half && cd == TRAINRT_F32))) {
    fail("gemm: unsupported dtypes");
  }
  if (a.m == 0 || a.n == 0) return;
  // cublasGemmEx takes int dimensions and leading dimensions (all of them <= max(m, n, k)): a
  // larger size would be truncated silently, so refuse it.
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  if (a.m < 0 || a.n < 0 || a.k < 0 || a.m > kIntMax || a.n > kIntMax || a.k > kIntMax) {
    fail("gemm: sizes m=" + std::to_string(a.m) + ", n=" + std::to_string(a.n) +
         ", k=" + std::to_string(a.k) + " are negative or exceed cuBLAS's int range");
  }
  cublasHandle_t h = blas_handle(ctx);
  // A cuBLAS handle must not be used by two host threads at once (cuBLAS docs, "Thread
  // Safety"); the context's one handle is shared by every thread that runs ops on this device.
  std::lock_guard<std::mutex> blas_lock(ctx.blas_mu);
  // Row-major C [m, n] = op(A) op(B) is column-major C^T = op(B)^T op(A)^T.
  const cublasOperation_t ob = a.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t oa = a.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int ldb = static_cast<int>(std::max<int64_t>(1, a.trans_b ? a.k : a.n));
  const int lda = static_cast<int>(std::max<int64_t>(1, a.trans_a ? a.m : a.k));
  const int ldc = static_cast<int>(a.n);
  if (ab == TRAINRT_F64) {
    const double alpha = a.alpha, beta = a.beta;
    TRAINRT_CUBLAS_CHECK(cublasGemmEx(h, ob, oa, static_cast<int>(a.n), static_cast<int>(a.m),
                                      static_cast<int>(a.k), &alpha, a.b, CUDA_R_64F, ldb, a.a,
                                      CUDA_R_64F, lda, &beta, a.c, CUDA_R_64F, ldc,
                                      CUBLAS_COMPUTE_64F, CUBLAS_GEMM_DEFAULT));
    return;
  }
  const float alpha = static_cast<float>(a.alpha), beta = static_cast<float>(a.beta);
  TRAINRT_CUBLAS_CHECK(cublasGemmEx(h, ob, oa, static_cast<int>(a.n), static_cast<int>(a.m),
                                    static_cast<int>(a.k), &alpha, a.b, cuda_type(ab), ldb, a.a,
                                    cuda_type(ab), lda, &beta, a.c, cuda_type(cd), ldc,
                                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

void launch_nn_pointwise(DeviceCtx& ctx, const trainrt_nn_pointwise_args& a) {
  if (a.kind < TRAINRT_NN_RELU || a.kind > TRAINRT_NN_DROPOUT) fail("nn_pointwise: bad kind");
  if (a.numel == 0) return;
  dispatch(a.dtype, [&](auto t) {
    using T = decltype(t);
    if (a.kind == TRAINRT_NN_DROPOUT) {
      TRAINRT_LAUNCH("dropout_kernel", dropout_kernel<T>, blocks_for((a.numel + 3) / 4), kThreads,
                     ctx.stream, a);
    } else {
      TRAINRT_LAUNCH("activation_kernel", activation_kernel<T>, blocks_for(a.numel), kThreads,
                     ctx.stream, a);
    }
  });
}

void launch_bias(DeviceCtx& ctx, const trainrt_bias_args& a) {
  const bool f64 = a.dtype == TRAINRT_F64;
  if (a.bias_dtype != (f64 ? TRAINRT_F64 : TRAINRT_F32))
    fail("bias: bias dtype must be f32 (f64 for f64)");
  if (a.rows * a.cols == 0 && a.op == TRAINRT_BIAS_ADD) return;
  dispatch(a.dtype, [&](auto t) {
    using T = decltype(t);
    using B = typename acc_type<T>::type;
    if (a.op == TRAINRT_BIAS_ADD) {
      TRAINRT_LAUNCH("bias_add_kernel", bias_add_kernel<T, B>, blocks_for(a.rows * a.cols),
                     kThreads, ctx.stream, static_cast<T*>(a.y), static_cast<const B*>(a.bias),
                     a.rows, a.cols);
    } else if (a.op == TRAINRT_BIAS_GRAD) {
      TRAINRT_LAUNCH("bias_grad_kernel", bias_grad_kernel<T, B>, ceil_div(a.cols, kThreads),
                     kThreads, ctx.stream, static_cast<const T*>(a.dy), static_cast<B*>(a.grad),
                     a.rows, a.cols, a.accumulate);
    } else {
      fail("bias: bad op");
    }
  });
}

}  // namespace gpu
}  // namespace trainrt
