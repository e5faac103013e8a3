// Loss-scale bookkeeping of GradScaler on the device: BEGIN_UNSCALE (grad scalars block:
// INV_SCALE = 1 / scale, FOUND_INF = 0) and UPDATE_SCALE (torch._amp_update_scale_, the math of
// kernels/common/optim.h).
//
// Contract. One single-thread kernel per op (a handful of scalars: nothing to parallelise),
// reading and writing device memory only, so unscale, step and update need no host
// synchronisation and can be captured in a graph. UPDATE_SCALE takes its found-inf flags as
// pointers in the kernel parameters, kFoundPerLaunch at a time; longer lists are first folded
// into a flag in a stream-ordered workspace by as many extra single-thread launches as needed.
#include <cstdint>
#include <string>

#include "../common/optim.h"
#include "cuda_ops.h"
#include "device_utils.cuh"

namespace trainrt {
namespace gpu {
namespace {

constexpr int kFoundPerLaunch = 64;

struct FoundInfs {
  const float* p[kFoundPerLaunch];
  int32_t n;
};

__device__ __forceinline__ bool any_found(const FoundInfs& f) {
  bool found = false;
  for (int i = 0; i < f.n; ++i) found = found || *f.p[i] != 0.0f;
  return found;
}

__global__ void begin_unscale_kernel(const float* scale, float* gs) {
  // CLIP_COEF is left as it is: a clip already folded into the block still applies (ABI).
  gs[TRAINRT_GS_INV_SCALE] = static_cast<float>(1.0 / static_cast<double>(*scale));
  gs[TRAINRT_GS_FOUND_INF] = 0.0f;
}

/// *acc = 1 when some flag of f is non-zero (acc starts at 0; never cleared here).
__global__ void fold_found_kernel(FoundInfs f, float* acc) {
  if (any_found(f)) *acc = 1.0f;
}

__global__ void update_scale_kernel(FoundInfs f, const float* folded, float* scale,
                                    int32_t* tracker, double growth_factor, double backoff_factor,
                                    int64_t growth_interval) {
  const bool found = any_found(f) || (folded != nullptr && *folded != 0.0f);
  amp_update_scale(*scale, *tracker, found, growth_factor, backoff_factor, growth_interval);
}

FoundInfs found_list(const trainrt_amp_args& a, int32_t first, int32_t count) {
  FoundInfs f{};
  f.n = count;
  for (int32_t i = 0; i < count; ++i) f.p[i] = a.found_infs[first + i];
  return f;
}

}  // namespace

void launch_amp(DeviceCtx& ctx, const trainrt_amp_args& a) {
  if (a.scale == nullptr) fail("amp: scale is null");
  if (a.op == TRAINRT_AMP_BEGIN_UNSCALE) {
    if (a.grad_scalars == nullptr) fail("amp (BEGIN_UNSCALE): grad_scalars is null");
    TRAINRT_LAUNCH("amp begin_unscale", begin_unscale_kernel, 1, 1, ctx.stream,
                   static_cast<const float*>(a.scale), a.grad_scalars);
    return;
  }
  if (a.op != TRAINRT_AMP_UPDATE_SCALE) fail("amp: unknown op " + std::to_string(a.op));
  if (a.growth_tracker == nullptr) fail("amp (UPDATE_SCALE): growth_tracker is null");
  if (a.n_found_infs < 0) fail("amp (UPDATE_SCALE): negative n_found_infs");
  if (a.n_found_infs > 0 && a.found_infs == nullptr) fail("amp (UPDATE_SCALE): found_infs is null");
  for (int32_t i = 0; i < a.n_found_infs; ++i) {
    if (a.found_infs[i] == nullptr) {
      fail("amp (UPDATE_SCALE): found_infs[" + std::to_string(i) + "] is null");
    }
  }
  const int32_t n = a.n_found_infs;
  // All but the last kFoundPerLaunch flags are folded into one workspace flag first.
  const int32_t head = n > kFoundPerLaunch ? n - kFoundPerLaunch : 0;
  Workspace ws(ctx, head > 0 ? sizeof(float) : 0);
  float* const folded = static_cast<float*>(ws.get());
  if (head > 0) {
    TRAINRT_CUDA_CHECK(cudaMemsetAsync(folded, 0, sizeof(float), ctx.stream));
    for (int32_t first = 0; first < head; first += kFoundPerLaunch) {
      const int32_t count = head - first < kFoundPerLaunch ? head - first : kFoundPerLaunch;
      TRAINRT_LAUNCH("amp update_scale (fold found_inf)", fold_found_kernel, 1, 1, ctx.stream,
                     found_list(a, first, count), folded);
    }
  }
  TRAINRT_LAUNCH("amp update_scale", update_scale_kernel, 1, 1, ctx.stream,
                 found_list(a, head, n - head), static_cast<const float*>(folded), a.scale,
                 a.growth_tracker, a.growth_factor, a.backoff_factor, a.growth_interval);
}

}  // namespace gpu
}  // namespace trainrt
