// Entry points of the OpenMP CPU kernels (kernels/cpu/*.cpp). The kernel translation units
// are compiled once per instruction-set level, each inside its own namespace (TRAINRT_KNS),
// and cpu_dispatch.cpp picks the best one the running CPU supports. They use no C++ library
// types, so nothing compiled for a wider ISA can leak into baseline code.
//
// Every function returns 0, or 1 with *err filled for a data error. The optimizer-family
// functions (cpu_optim.cpp) return 0, 1 for arguments they do not support, 2 when out of memory;
// the layer functions (cpu_nn.cpp) return 0, or 1 for arguments they do not support.
#pragma once

#include "../../src/backend/backend_api.h"
#include "../common/data_error.h"
#include "cpu_dispatch.h"  // software_prefetch()

#define TRAINRT_DECLARE_CPU_KERNELS(ns)                                                      \
  namespace trainrt {                                                                        \
  namespace ns {                                                                             \
  int cpu_cast(const void* src, int32_t src_dtype, void* dst, int32_t dst_dtype, int64_t n); \
  int cpu_softmax_forward(const trainrt_softmax_args* a);                                    \
  int cpu_softmax_backward(const trainrt_softmax_args* a);                                   \
  int cpu_cross_entropy(const trainrt_cross_entropy_args* a, DataError* err);                \
  int cpu_pointwise_loss(const trainrt_pointwise_loss_args* a, DataError* err);              \
  int cpu_optimizer_step(const trainrt_optim_step_args* a);                                  \
  int cpu_multi_tensor_norm(const trainrt_multi_tensor_norm_args* a);                        \
  int cpu_multi_tensor_scale(const trainrt_multi_tensor_scale_args* a);                      \
  int cpu_amp(const trainrt_amp_args* a);                                                    \
  int cpu_nn_pointwise(const trainrt_nn_pointwise_args* a);                                  \
  int cpu_bias(const trainrt_bias_args* a);                                                  \
  }                                                                                          \
  }
