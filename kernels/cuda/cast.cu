// dst[i] = (dst_dtype) src[i], the same conversions as the CPU backend's cast.
//
// Contract. One grid-stride pass reading src once and writing dst once; no workspace. Same
// dtype: a device-to-device copy. Between f32, f16 and bf16: through f32 (exact widening,
// one round-to-nearest-even when narrowing, kernels/common/half.h). With f64 on either side of
// a floating pair: through f64, narrowing to 16 bits via f32 exactly as the CPU does. Anything
// with an integer dtype: kernels/common/cast.h, the code the CPU backend runs too (modular
// between integers, saturating float -> int with NaN -> 0).
#include <type_traits>

#include "../common/cast.h"
#include "cuda_ops.h"
#include "device_utils.cuh"

namespace trainrt {
namespace gpu {
namespace {

constexpr int kThreads = 256;

/// Between two floating types S and D: through double if either is f64, else through float.
template <class S, class D>
__global__ void __launch_bounds__(kThreads)
    cast_float_kernel(const S* __restrict__ src, D* __restrict__ dst, int64_t n) {
  using A =
      typename std::conditional<std::is_same<S, double>::value || std::is_same<D, double>::value,
                                double, float>::type;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    store<A>(dst, i, load<A>(src, i));
  }
}

/// Any pair involving an integer dtype (the dtype switch is uniform across the grid).
__global__ void __launch_bounds__(kThreads)
    cast_any_kernel(const void* src, int32_t sdt, void* dst, int32_t ddt, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    cast_element(src, sdt, dst, ddt, i);
  }
}

int64_t cast_grid(const DeviceCtx& ctx, int64_t n) {
  return min64(ceil_div(n, kThreads), static_cast<int64_t>(ctx.sm_count) * 32);
}

template <class S, class D>
void cast_float(DeviceCtx& ctx, const void* src, void* dst, int64_t n) {
  TRAINRT_LAUNCH("cast", cast_float_kernel<S, D>, cast_grid(ctx, n), kThreads, ctx.stream,
                 static_cast<const S*>(src), static_cast<D*>(dst), n);
}

size_t dtype_bytes(int32_t dt) {
  switch (dt) {
    case TRAINRT_F64:
    case TRAINRT_I64: return 8;
    case TRAINRT_F32:
    case TRAINRT_I32: return 4;
    case TRAINRT_F16:
    case TRAINRT_BF16: return 2;
    case TRAINRT_U8: return 1;
    default: break;
  }
  fail("cast: unknown dtype " + std::to_string(dt));
}

bool is_float_dt(int32_t dt) {
  return dt == TRAINRT_F32 || dt == TRAINRT_F64 || dt == TRAINRT_F16 || dt == TRAINRT_BF16;
}

}  // namespace

void launch_cast(DeviceCtx& ctx, const void* src, int32_t sdt, void* dst, int32_t ddt, int64_t n) {
  const size_t src_bytes = dtype_bytes(sdt);
  (void)dtype_bytes(ddt);
  if (n < 0) fail("cast: negative element count");
  if (n == 0) return;
  if (sdt == ddt) {
    TRAINRT_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<size_t>(n) * src_bytes,
                                       cudaMemcpyDeviceToDevice, ctx.stream));
    return;
  }
  if (is_float_dt(sdt) && is_float_dt(ddt)) {
    dispatch_float(sdt, [&](auto stag) {
      using S = typename decltype(stag)::type;
      dispatch_float(ddt, [&](auto dtag) {
        using D = typename decltype(dtag)::type;
        cast_float<S, D>(ctx, src, dst, n);
      });
    });
    return;
  }
  TRAINRT_LAUNCH("cast", cast_any_kernel, cast_grid(ctx, n), kThreads, ctx.stream, src, sdt, dst,
                 ddt, n);
}

}  // namespace gpu
}  // namespace trainrt
