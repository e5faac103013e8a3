// Core-internal state shared by the optimizer, clipping and GradScaler front ends
// (src/optim.cpp, src/clip.cpp, src/amp.cpp). Never installed.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "internal.hpp"
#include "trainrt/optim.hpp"
#include "trainrt/parameter.hpp"

namespace trainrt {
namespace detail {

struct OptimizerImpl;

struct ParameterImpl {
  Tensor value;
  Tensor grad;
  Tensor model_copy;
  std::string name;
  /// The optimizer whose pending 1/scale (GradScaler::unscale_) or clip coefficient
  /// (clip_grad_norm_(optimizer)) applies to this parameter's grad at its next step, or null.
  /// set_grad / clear_grad settle it first (OptimizerAccess::settle), so a grad set later is
  /// used as it is, as in PyTorch where those calls rewrote the old grads. The
  /// parameter-list clip functions settle it too, so they see what PyTorch's would. Cleared by that
  /// optimizer's step, zero_grad and GradScaler::update.
  OptimizerImpl* pending = nullptr;
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
  /// Capturable steps: the step count on the device (i64 scalar), authoritative over `step`
  /// while defined; made at the parameter's first capturable step.
  Tensor device_step;
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
  /// found_inf. Active between unscale_ / clip_grad_norm_(optimizer) and the next step() (or
  /// GradScaler::update()).
  Tensor grad_scalars;
  bool gs_active = false;
  bool check_pending = false;    // GradScaler: the inf/NaN check has not run yet
  bool inf_recorded = false;     // found_inf holds the check of this iteration's grads
  bool unscale_pending = false;  // INV_SCALE may differ from 1
  bool clip_pending = false;     // CLIP_COEF may differ from 1
  /// GradScaler.step recorded the block's found_inf for its update(): the next activation
  /// (a fused clip before that update) swaps in gs_spare instead of resetting the block.
  bool found_inf_held = false;
  Tensor gs_spare;
  /// GradScaler::step is running this optimizer's step (else step() was called directly).
  bool in_scaler_step = false;
  /// Expires with the optimizer: a GradScaler keeps a weak_ptr to it.
  std::shared_ptr<char> alive = std::make_shared<char>('\0');
  bool last_skipped = false;
  Tensor step_scalars;  // optimizer scalars blocks of the last step, one per call
  Tensor lamb_norm;     // LAMB's global grad norm (f32 scalar)

  /// Capturable steps (Optimizer::set_capturable).
  bool capturable = false;
  Tensor cap_scalars;                   // f32, the capturable steps' scalars blocks (one per call)
  Tensor step_hyper;                    // f64, TRAINRT_OH_COUNT per call
  Tensor tensor_scalars;                // f32 workspace, TRAINRT_OS_COUNT per tensor of the step
  std::vector<float> uploaded_scalars;  // what step_scalars holds (capturable)
  std::vector<double> uploaded_hyper;   // what step_hyper holds
  std::vector<std::uint32_t> group_flags;     // kernel flags of each group at the last step
  std::vector<std::uint32_t> captured_flags;  // ... at the last step captured in a graph
  bool ever_captured = false;  // a step ran in a capture: replaced buffers are retired
  /// (slot, state index) made by the last capturable step with a grad scalars block: dropped
  /// if that step was skipped (resolve_skipped_states), as an ordinary step drops them.
  std::vector<std::pair<std::size_t, std::size_t>> pending_created;
  Tensor clip_total;            // clip_grad_norm_(optimizer)'s result tensor (capturable)
  Tensor gs_init;               // f32 {1, 1, 0, 0}: the grad scalars block's start (capturable)
  Tensor skip_flag;             // f32: found_inf of the last capturable step with a scaler or clip
  bool skip_on_device = false;  // last_skipped is skip_flag's value
  /// Device buffers a captured graph may still point at: once a step was captured, replaced
  /// buffers are kept here, never freed before the optimizer, so a stale graph never reads
  /// freed memory.
  std::vector<Tensor> retired;
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
  /// Marks / unmarks every parameter as having the optimizer's pending multipliers.
  static void mark_pending(OptimizerImpl& o, bool pending);
  /// Runs a pending GradScaler inf/NaN check over the current grads, as the step will see
  /// them (times 1/scale and the clip coefficient), into found_inf. With no grads nothing is
  /// recorded and the check stays pending.
  static void run_pending_check(OptimizerImpl& o, const char* op);
  /// The current grads are about to be replaced or dropped (set_grad, zero_grad) or handed
  /// back (GradScaler::update): a pending check runs on them first; then, when `apply`, the
  /// pending 1/scale and clip coefficient are multiplied into them (one pass, PyTorch's two
  /// roundings), else dropped. Either way the next step uses the grads as they are then;
  /// found_inf stays for it.
  static void settle(OptimizerImpl& o, bool apply, const char* op);
};

/// Reads one f32 from device memory (one small copy; waits for the device).
float read_device_float(Device device, const float* p);
/// Copies bytes between host and device memory (kind TRAINRT_COPY_*).
void device_copy(Device device, void* dst, const void* src, std::size_t bytes, int kind,
                 const char* what);
/// True while the device's stream is being captured into a CUDA graph.
bool device_capturing(Device device);
/// Throws a clear Error when `what` (a device read) is called during a capture.
void refuse_read_in_capture(const OptimizerImpl& o, const char* what);
/// Keeps `t` alive with the optimizer when a graph may point at it (after a capture).
void retire(OptimizerImpl& o, const Tensor& t);
/// Drops the state pending_created lists when the step that made it was skipped (one read;
/// during a capture the state stays).
void resolve_skipped_states(OptimizerImpl& o);
/// Writes n f32 from host memory into device memory.
void write_device_floats(Device device, float* dst, const float* src, std::size_t n);

}  // namespace detail
}  // namespace trainrt
