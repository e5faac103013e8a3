// Core-internal state shared by the optimizer, clipping and GradScaler front ends
// (src/optim.cpp, src/clip.cpp, src/amp.cpp). Never installed.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "internal.hpp"
#include "trainrt/optim.hpp"
#include "trainrt/parameter.hpp"

namespace trainrt {
namespace detail {

struct ParameterImpl {
  Tensor value;
  Tensor grad;
  Tensor model_copy;
  std::string name;
  /// The optimizer whose pending GradScaler::unscale_ applies to this parameter's grad (its
  /// next step multiplies the grad by 1/scale, whichever grad is set by then), or null. The
  /// parameter-list clip functions refuse such grads. Cleared by that optimizer's step.
  const void* pending_unscale = nullptr;
};

struct ParameterAccess {
  static ParameterImpl& impl(const Parameter& p) { return *p.impl_; }
};

struct AlgoSpec;

/// Up to three state buffers per parameter, indexed as the kernel's state lists (their names
/// are AlgoSpec::states); undefined until a step needs them.
constexpr int kMaxStates = 3;

struct ParamSlot {
  Parameter param;
  std::size_t group = 0;
  std::int64_t step = 0;
  Tensor state[kMaxStates];
  bool has_state() const {
    for (const Tensor& t : state)
      if (t.defined()) return true;
    return false;
  }
};

struct OptimizerImpl {
  const AlgoSpec* spec = nullptr;
  optim::HyperParams defaults;
  std::vector<optim::ParamGroup> groups;
  std::vector<ParamSlot> slots;  // every parameter, in group order
  Device device;
  bool has_device = false;

  /// The grad scalars block (TRAINRT_GS_COUNT f32 on the device): 1/scale, clip coefficient,
  /// found_inf. Active between unscale_ / clip_grad_norm_(optimizer) and the next step().
  Tensor grad_scalars;
  bool gs_active = false;
  bool check_pending = false;  // GradScaler: the inf/NaN check has not run yet
  bool last_skipped = false;
  Tensor step_scalars;  // optimizer scalars blocks of the last step, one per call
  Tensor lamb_norm;     // LAMB's global grad norm (f32 scalar)
};

/// A host-side list of tensors in the form the multi-tensor slots take.
struct TensorList {
  std::vector<void*> ptrs;
  std::vector<std::int32_t> dtypes;
  std::vector<std::int64_t> numels;
  void add(const Tensor& t) {
    ptrs.push_back(const_cast<void*>(t.data()));
    dtypes.push_back(c_dtype(t.dtype()));
    numels.push_back(t.numel());
  }
  std::size_t size() const { return ptrs.size(); }
};

struct OptimizerAccess {
  static OptimizerImpl& impl(optim::Optimizer& o) { return *o.impl_; }
  static const OptimizerImpl& impl(const optim::Optimizer& o) { return *o.impl_; }
  /// Makes the grad scalars block active ({1, 1, 0, 0} unless it already is).
  static float* activate_grad_scalars(OptimizerImpl& o);
  /// The grads of every parameter that has one, in group order.
  static TensorList grads(const OptimizerImpl& o);
  /// The parameters of the optimizer (in group order).
  static std::vector<Parameter> params(const OptimizerImpl& o);
  /// Marks / unmarks the grads as having a pending unscale.
  static void mark_pending_unscale(OptimizerImpl& o, bool pending);
};

/// Reads one f32 from device memory (one small copy; waits for the device).
float read_device_float(Device device, const float* p);
/// Writes n f32 from host memory into device memory.
void write_device_floats(Device device, float* dst, const float* src, std::size_t n);

}  // namespace detail
}  // namespace trainrt
