// Host-side launchers of the CUDA kernels, one per backend slot that computes something.
// Each enqueues its work on the device's stream and returns without waiting; failures
// (bad launch, out of memory) throw gpu::Failure; data errors go to the device's deferred
// error record (see cuda_context.h).
#pragma once

#include <cstdint>

#include "../../src/backend/backend_api.h"
#include "cuda_context.h"

namespace trainrt {
namespace gpu {

void launch_cast(DeviceCtx& ctx, const void* src, int32_t src_dtype, void* dst, int32_t dst_dtype,
                 int64_t n);
void launch_softmax_forward(DeviceCtx& ctx, const trainrt_softmax_args& a);
void launch_softmax_backward(DeviceCtx& ctx, const trainrt_softmax_args& a);
void launch_cross_entropy(DeviceCtx& ctx, const trainrt_cross_entropy_args& a);
void launch_pointwise_loss(DeviceCtx& ctx, const trainrt_pointwise_loss_args& a);
void launch_optimizer_step(DeviceCtx& ctx, const trainrt_optim_step_args& a);
void launch_multi_tensor_norm(DeviceCtx& ctx, const trainrt_multi_tensor_norm_args& a);
void launch_multi_tensor_scale(DeviceCtx& ctx, const trainrt_multi_tensor_scale_args& a);
void launch_amp(DeviceCtx& ctx, const trainrt_amp_args& a);
void launch_gemm(DeviceCtx& ctx, const trainrt_gemm_args& a);
void launch_nn_pointwise(DeviceCtx& ctx, const trainrt_nn_pointwise_args& a);
void launch_bias(DeviceCtx& ctx, const trainrt_bias_args& a);

}  // namespace gpu
}  // namespace trainrt
