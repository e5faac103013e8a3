// Multi-tensor scale / clamp in place (GradScaler.unscale_ without a fused norm, clip
// coefficients applied separately, clip_grad_value_).
//
// Contract. One multi-tensor pass (multi_tensor.cuh, f32 / f16 / bf16 / f64, 16-byte packs)
// reading and writing every element once, computed in f32 (f64 for f64):
//   v = (v * gs[INV_SCALE]) * gs[CLIP_COEF]   when a grad scalars block is given,
//   v = v * *scale                            when a device scale is given,
//   v = v * *scale_f64                        when a device f64 scale is given (rounded to
//                                             the compute type),
//   v = min(max(v, lo), hi)                   unless lo = -inf and hi = inf (NaN stays NaN).
// As the CPU backend, a multiplier that is exactly 1 is not applied, and when nothing is left
// to do the kernel returns before its first store (multiplying by 1 changes no value; skipping
// also keeps NaN payloads). The multipliers are read on the device, so that decision costs no
// host synchronisation. Tensors are grouped by dtype, one kernel per dtype.
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

struct ScaleExtra {
  const float* grad_scalars;  // or nullptr
  const float* scale;         // or nullptr
  const double* scale_f64;    // or nullptr
  double lo, hi;
  int32_t clamp;  // 0: lo = -inf and hi = inf
  int32_t reserved;
};
using ScaleArgs = MtArgs<1, ScaleExtra>;

template <class T>
__global__ void __launch_bounds__(kMtThreads) scale_kernel(const __grid_constant__ ScaleArgs a) {
  using A = typename acc_type<T>::type;
  const GradMul gm = load_grad_mul(a.x.grad_scalars);
  const bool use_gs = a.x.grad_scalars != nullptr && (gm.inv_scale != 1.0f || gm.clip_coef != 1.0f);
  const float sc = a.x.scale != nullptr ? *a.x.scale : 1.0f;
  const bool use_s = a.x.scale != nullptr && sc != 1.0f;
  const double sd = a.x.scale_f64 != nullptr ? *a.x.scale_f64 : 1.0;
  const bool use_d = a.x.scale_f64 != nullptr && sd != 1.0;
  const bool clamp = a.x.clamp != 0;
  if (!use_gs && !use_s && !use_d && !clamp) return;
  const A ai = static_cast<A>(gm.inv_scale), ac = static_cast<A>(gm.clip_coef);
  const A as = static_cast<A>(sc), ad = static_cast<A>(sd);
  const A lo = static_cast<A>(a.x.lo), hi = static_cast<A>(a.x.hi);
  mt_for_each_chunk(a.list, [&](int t, int32_t, int64_t start, int n) {
    T* const v = static_cast<T*>(a.list.ptr[0][t]) + start;
    mt_chunk_packs<true>(v, n, a.list.vec[t] != 0, [&](auto& pk) {
#pragma unroll
      for (int e = 0; e < pack_width<decltype(pk)>; ++e) {
        A x = load<A>(pk.v, e);
        if (use_gs) x = (x * ai) * ac;
        if (use_s) x = x * as;
        if (use_d) x = x * ad;
        if (clamp) x = x < lo ? lo : (x > hi ? hi : x);
        store<A>(pk.v, e, x);
      }
    });
  });
}

bool float_dtype(int32_t d) {
  return d == TRAINRT_F32 || d == TRAINRT_F64 || d == TRAINRT_F16 || d == TRAINRT_BF16;
}

}  // namespace

void launch_multi_tensor_scale(DeviceCtx& ctx, const trainrt_multi_tensor_scale_args& a) {
  if (a.n_tensors < 0) fail("multi_tensor_scale: negative tensor count");
  if (a.n_tensors > 0 && (a.tensors == nullptr || a.dtypes == nullptr || a.numels == nullptr)) {
    fail("multi_tensor_scale: null tensors, dtypes or numels array");
  }
  for (int64_t i = 0; i < a.n_tensors; ++i) {
    if (!float_dtype(a.dtypes[i])) {
      fail("multi_tensor_scale: tensor " + std::to_string(i) + " has dtype " +
           std::to_string(a.dtypes[i]) + " (expected f32, f16, bf16 or f64)");
    }
    if (a.numels[i] < 0) fail("multi_tensor_scale: negative numel of tensor " + std::to_string(i));
    if (a.numels[i] > 0 && a.tensors[i] == nullptr) {
      fail("multi_tensor_scale: null pointer for tensor " + std::to_string(i));
    }
  }
  const bool clamp =
      !(std::isinf(a.clamp_lo) && a.clamp_lo < 0 && std::isinf(a.clamp_hi) && a.clamp_hi > 0);
  if (a.grad_scalars == nullptr && a.scale == nullptr && a.scale_f64 == nullptr && !clamp) {
    return;  // nothing to apply
  }

  auto args = std::make_unique<ScaleArgs>();  // value-initialised table (32 KB: on the heap)
  args->x.grad_scalars = a.grad_scalars;
  args->x.scale = a.scale;
  args->x.scale_f64 = a.scale_f64;
  args->x.lo = a.clamp_lo;
  args->x.hi = a.clamp_hi;
  args->x.clamp = clamp ? 1 : 0;
  const int shift = mt_chunk_shift(mt_total_elements(a.n_tensors, a.numels));
  for (const int32_t dt : {TRAINRT_F32, TRAINRT_F16, TRAINRT_BF16, TRAINRT_F64}) {
    dispatch_float(dt, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const auto fill = [&](int64_t i, void*(&ptrs)[1], bool& vec) {
        if (a.dtypes[i] != dt) return false;
        ptrs[0] = a.tensors[i];
        vec = aligned_to(ptrs[0], 16);
        return true;
      };
      mt_for_each_launch(*args, a.n_tensors, a.numels, shift, fill,
                         [&](const ScaleArgs& g, int64_t) {
                           TRAINRT_MT_LAUNCH("multi_tensor_scale", scale_kernel<T>, ctx, g);
                         });
    });
  }
}

}  // namespace gpu
}  // namespace trainrt
