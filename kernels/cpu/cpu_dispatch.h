// The CPU kernel table chosen for this processor (see cpu_dispatch.cpp).
#pragma once

#include "../../src/backend/backend_api.h"
#include "../common/data_error.h"

namespace trainrt {
namespace cpu {

struct CpuKernels {
  const char* isa;
  int (*cast)(const void*, int32_t, void*, int32_t, int64_t);
  int (*softmax_forward)(const trainrt_softmax_args*);
  int (*softmax_backward)(const trainrt_softmax_args*);
  int (*cross_entropy)(const trainrt_cross_entropy_args*, DataError*);
  int (*pointwise_loss)(const trainrt_pointwise_loss_args*, DataError*);
  int (*optimizer_step)(const trainrt_optim_step_args*);
  int (*multi_tensor_norm)(const trainrt_multi_tensor_norm_args*);
  int (*multi_tensor_scale)(const trainrt_multi_tensor_scale_args*);
  int (*amp)(const trainrt_amp_args*);
  int (*nn_pointwise)(const trainrt_nn_pointwise_args*);
  int (*bias)(const trainrt_bias_args*);
};

const CpuKernels& kernels();

}  // namespace cpu
}  // namespace trainrt
