// Multi-tensor norm and non-finite check (global gradient norm, clip_grad_norm_, the found-inf
// check of GradScaler.unscale_), all on the device.
//
// Contract. One read pass over every tensor (multi_tensor.cuh, f32 / f16 / bf16 / f64, 16-byte
// packs), x = (v * gs[INV_SCALE]) * gs[CLIP_COEF] when a grad scalars block is given. Each
// chunk (4K to 64K elements, by the call's total size) leaves one partial: sum |x|^p accumulated in
// double (or max |x|, NaN propagating, for p = inf) and a flag for a non-finite raw v. The partial
// of a chunk depends only on its elements and the fixed block size (each thread folds its own packs
// in order, the block folds warps in order), never on the grid, so the result is the same on every
// GPU and run. A second kernel per launch, one warp per tensor, folds each tensor's partials in a
// fixed order into its norm, rounded to its type, and that norm's term of the total (PyTorch's
// total is the norm of the per-tensor norms; norm_tensor_term in ../common/optim.h). Then one
// single-block kernel folds the terms in a fixed order and writes, on the device: total_norm (f32,
// and f64 when asked), found_inf = 1 when some v is not finite, and the clip coefficient folded
// into gs[CLIP_COEF] (or, in f64, stored in clip_coef_f64). No float atomics, no host
// synchronisation. Tensors are grouped by dtype (one kernel per dtype); the partials and terms of
// each group follow the previous group's. Matches the CPU backend's result to rounding (the CPU
// sums 16K-element chunks, in another order).
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>

#include "../common/optim.h"
#include "cuda_ops.h"
#include "device_utils.cuh"
#include "multi_tensor.cuh"

namespace trainrt {
namespace gpu {
namespace {

constexpr int kFinalThreads = 1024;
constexpr int kTermThreads = 256;  // one warp per tensor

struct NormPartial {
  double acc;         // sum |x|^p, or max |x| (NaN if some x is NaN) for kNormInf
  int32_t nonfinite;  // some raw v is inf or NaN
  int32_t reserved;
};

struct NormExtra {
  const float* grad_scalars;  // or nullptr: x = v
  NormPartial* partial;       // one per chunk of this launch
  NormPartial* terms;         // one per tensor of this launch (norm_tensor_kernel)
  double p;                   // kNormP: the exponent
};
using NormArgs = MtArgs<1, NormExtra>;

/// max that propagates NaN from either side.
__device__ __forceinline__ double max_nan_d(double a, double b) {
  return (a > b || a != a) ? a : b;
}
struct MaxNanOp {
  __device__ __forceinline__ double operator()(double x, double y) const { return max_nan_d(x, y); }
};

template <int kKind>
__device__ __forceinline__ double fold(double acc, double part) {
  return kKind == kNormInf ? max_nan_d(acc, part) : acc + part;
}

template <int kKind>
__device__ __forceinline__ double block_fold(double acc) {
  if (kKind == kNormInf) return block_allreduce<kMtThreads>(acc, MaxNanOp{});
  return block_allreduce<kMtThreads>(acc, SumOp{});
}

template <int kKind, class T>
__global__ void __launch_bounds__(kMtThreads) norm_kernel(const __grid_constant__ NormArgs a) {
  using A = typename acc_type<T>::type;
  const bool scaled = a.x.grad_scalars != nullptr;
  const GradMul gm = load_grad_mul(a.x.grad_scalars);
  const A ai = static_cast<A>(gm.inv_scale), ac = static_cast<A>(gm.clip_coef);
  const double p = a.x.p;
  mt_for_each_chunk(a.list, [&](int t, int32_t c, int64_t start, int n) {
    const T* const v = static_cast<const T*>(a.list.ptr[0][t]) + start;
    double acc = 0.0;
    int nonfinite = 0;
    mt_chunk_packs<false>(v, n, a.list.vec[t] != 0, [&](auto& pk) {
#pragma unroll
      for (int e = 0; e < pack_width<decltype(pk)>; ++e) {
        const A raw = load<A>(pk.v, e);
        if (!isfinite(raw)) nonfinite = 1;
        const A x = scaled ? (raw * ai) * ac : raw;
        const double ax = fabs(static_cast<double>(x));
        if (kKind == kNormL1) acc += ax;
        if (kKind == kNormL2) acc += ax * ax;
        if (kKind == kNormP) acc += pow(ax, p);
        if (kKind == kNormInf) acc = max_nan_d(acc, ax);
      }
    });
    if (kKind != kNormNone) acc = block_fold<kKind>(acc);
    nonfinite = __syncthreads_or(nonfinite);
    if (threadIdx.x == 0) a.x.partial[c] = NormPartial{acc, nonfinite, 0};
  });
}

/// One warp per tensor of the launch: folds the tensor's chunk partials (lane l takes chunks
/// l, l + 32, ..., then a fixed butterfly), and writes the tensor's term of the total, its
/// norm rounded to its type first (norm_tensor_term).
template <int kKind, class T>
__global__ void __launch_bounds__(kTermThreads)
    norm_tensor_kernel(const __grid_constant__ NormArgs a) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int t =
      static_cast<int>(blockIdx.x) * (kTermThreads / 32) + static_cast<int>(threadIdx.x >> 5);
  if (t >= a.list.n_tensors) return;  // the whole warp
  const int32_t begin = t == 0 ? 0 : a.list.chunk_end[t - 1];
  const int32_t end = a.list.chunk_end[t];
  double acc = 0.0;
  int nonfinite = 0;
  for (int32_t c = begin + lane; c < end; c += 32) {
    const NormPartial q = a.x.partial[c];
    acc = fold<kKind>(acc, q.acc);
    nonfinite |= q.nonfinite;
  }
  if (kKind == kNormInf)
    acc = warp_allreduce(acc, MaxNanOp{});
  else
    acc = warp_allreduce(acc, SumOp{});
  nonfinite = warp_allreduce(static_cast<long long>(nonfinite), SumOp{}) != 0 ? 1 : 0;
  if (lane == 0) {
    const double term = norm_tensor_term(kKind, acc, a.x.p, sizeof(T) == sizeof(double));
    a.x.terms[t] = NormPartial{term, nonfinite, 0};
  }
}

/// One block: folds the n tensor terms in a fixed order, then writes the results.
template <int kKind>
__global__ void __launch_bounds__(kFinalThreads)
    norm_final_kernel(const NormPartial* partial, int64_t n, double p, double max_norm,
                      float* grad_scalars, float* total_norm, float* found_inf,
                      double* total_norm_f64, double* clip_coef_f64) {
  double acc = 0.0;
  int nonfinite = 0;
  for (int64_t i = threadIdx.x; i < n; i += kFinalThreads) {
    const NormPartial q = partial[i];
    acc = fold<kKind>(acc, q.acc);
    nonfinite |= q.nonfinite;
  }
  if (kKind == kNormInf)
    acc = block_allreduce<kFinalThreads>(acc, MaxNanOp{});
  else
    acc = block_allreduce<kFinalThreads>(acc, SumOp{});
  nonfinite = __syncthreads_or(nonfinite);
  if (threadIdx.x != 0) return;
  const double total = norm_root(kKind, acc, p);
  const float total_f32 = static_cast<float>(total);
  if (total_norm != nullptr) *total_norm = total_f32;
  if (total_norm_f64 != nullptr) *total_norm_f64 = total;
  if (found_inf != nullptr && nonfinite) *found_inf = 1.0f;
  if (max_norm > 0.0 && kKind != kNormNone) {
    if (grad_scalars != nullptr) {
      grad_scalars[TRAINRT_GS_CLIP_COEF] *=
          clip_coefficient(total_f32, static_cast<float>(max_norm));
    }
    if (clip_coef_f64 != nullptr) *clip_coef_f64 = clip_coefficient_f64(total, max_norm);
  }
}

bool float_dtype(int32_t d) {
  return d == TRAINRT_F32 || d == TRAINRT_F64 || d == TRAINRT_F16 || d == TRAINRT_BF16;
}

template <int kKind>
void norm_kind(DeviceCtx& ctx, const trainrt_multi_tensor_norm_args& a) {
  const int shift = mt_chunk_shift(mt_total_elements(a.n_tensors, a.numels));
  const int64_t chunks = mt_total_chunks(a.n_tensors, a.numels, shift);
  int64_t tensors = 0;  // those with elements: the others add nothing to any norm
  for (int64_t i = 0; i < a.n_tensors; ++i) tensors += a.numels[i] > 0 ? 1 : 0;
  Workspace ws(ctx, static_cast<size_t>(chunks + tensors) * sizeof(NormPartial));
  NormPartial* const partial = static_cast<NormPartial*>(ws.get());
  NormPartial* const terms = partial + chunks;
  auto args = std::make_unique<NormArgs>();  // value-initialised table (32 KB: on the heap)
  args->x.grad_scalars = a.grad_scalars;
  args->x.p = a.norm_type;
  int64_t base = 0;       // partials written by the previous launches
  int64_t term_base = 0;  // tensor terms written by the previous launches
  for (const int32_t dt : {TRAINRT_F32, TRAINRT_F16, TRAINRT_BF16, TRAINRT_F64}) {
    dispatch_float(dt, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const auto fill = [&](int64_t i, void*(&ptrs)[1], bool& vec) {
        if (a.dtypes[i] != dt) return false;
        ptrs[0] = const_cast<void*>(a.tensors[i]);
        vec = aligned_to(ptrs[0], 16);
        return true;
      };
      base += mt_for_each_launch(
          *args, a.n_tensors, a.numels, shift, fill, [&](NormArgs& g, int64_t chunk_base) {
            g.x.partial = partial + base + chunk_base;
            g.x.terms = terms + term_base;
            TRAINRT_MT_LAUNCH("multi_tensor_norm", norm_kernel<kKind, T>, ctx, g);
            TRAINRT_LAUNCH("multi_tensor_norm tensors", norm_tensor_kernel<kKind, T>,
                           ceil_div(g.list.n_tensors, kTermThreads / 32), kTermThreads, ctx.stream,
                           g);
            term_base += g.list.n_tensors;
          });
    });
  }
  TRAINRT_LAUNCH("multi_tensor_norm final", norm_final_kernel<kKind>, 1, kFinalThreads, ctx.stream,
                 static_cast<const NormPartial*>(terms), term_base, a.norm_type, a.max_norm,
                 a.grad_scalars, a.total_norm, a.found_inf, a.total_norm_f64, a.clip_coef_f64);
}

}  // namespace

void launch_multi_tensor_norm(DeviceCtx& ctx, const trainrt_multi_tensor_norm_args& a) {
  if (a.n_tensors < 0) fail("multi_tensor_norm: negative tensor count");
  if (a.n_tensors > 0 && (a.tensors == nullptr || a.dtypes == nullptr || a.numels == nullptr)) {
    fail("multi_tensor_norm: null tensors, dtypes or numels array");
  }
  for (int64_t i = 0; i < a.n_tensors; ++i) {
    if (!float_dtype(a.dtypes[i])) {
      fail("multi_tensor_norm: tensor " + std::to_string(i) + " has dtype " +
           std::to_string(a.dtypes[i]) + " (expected f32, f16, bf16 or f64)");
    }
    if (a.numels[i] < 0) fail("multi_tensor_norm: negative numel of tensor " + std::to_string(i));
    if (a.numels[i] > 0 && a.tensors[i] == nullptr) {
      fail("multi_tensor_norm: null pointer for tensor " + std::to_string(i));
    }
  }
  const double p = a.norm_type;
  if (!(p == 0.0 || p > 0.0)) {
    fail("multi_tensor_norm: norm_type must be > 0, inf or 0 (got " + std::to_string(p) + ")");
  }
  if (p == 0.0) return norm_kind<kNormNone>(ctx, a);
  if (p == 1.0) return norm_kind<kNormL1>(ctx, a);
  if (p == 2.0) return norm_kind<kNormL2>(ctx, a);
  if (std::isinf(p)) return norm_kind<kNormInf>(ctx, a);
  return norm_kind<kNormP>(ctx, a);
}

}  // namespace gpu
}  // namespace trainrt
