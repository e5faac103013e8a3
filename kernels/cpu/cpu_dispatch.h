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

/// Whether the streaming loops of the optimizer family (the fused steps and the multi-tensor
/// norm, kernels/cpu/cpu_optim.cpp) issue software prefetches ahead of their arrays. Chosen
/// once per process: TRAINRT_CPU_PREFETCH=on|off (or 1|0), else on for Intel CPUs and off for
/// the others. On the Intel Sapphire Rapids VMs measured, the hardware prefetcher alone kept
/// too few lines in flight for 4-7 streams per core (AdamW 1.22x its ceiling without, 1.05x
/// with); on the AMD Zen 4 VM the same prefetches made AdamW about a third slower (12-13 ms
/// against about 9 ms over 16M params; bench/NOTES.md). The softmax / cross-entropy row loops
/// prefetch the next row on every CPU: there the prefetch overlaps a row's arithmetic and helps on
/// both.
bool software_prefetch();
/// "software" or "hardware only", and why ("TRAINRT_CPU_PREFETCH", "Intel CPU", ...; a value
/// of TRAINRT_CPU_PREFETCH other than on, off, 1 or 0 is named as ignored).
const char* software_prefetch_reason();

}  // namespace cpu
}  // namespace trainrt
