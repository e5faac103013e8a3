// Fused optimizer step over the tensors of one optimizer_step call: SGD, Adam / AdamW, RMSprop,
// Adagrad, RAdam and LAMB, with the per-element math of kernels/common/optim.h.
//
// Contract. One multi-tensor pass (multi_tensor.cuh) per element: read p, g and the state
// lists once, write p and the states once, and the f16 / bf16 model copy (when the tensor has
// one) in the same pass. The step's scalars are read by the kernels from the optimizer
// scalars block and the grad scalars block in device memory, never by the host:
// g_eff = (g * inv_scale) * clip_coef, negated for maximize (folded into the sign of the clip
// coefficient, which is exact: the CPU backend does the same). When gs[FOUND_INF] != 0 every
// kernel returns before its first store, so params, states and model copies stay bitwise
// unchanged. Each tensor's scalars block is in its table entry: the call's block, or, in a
// capturable call, its own, filled first by a one-thread-per-tensor prepare kernel from its
// device step count (a second small kernel advances the counts afterwards unless found_inf).
// The flags that only change the arithmetic (L2 or decoupled decay, nesterov, RAdam's
// rectification, read from the scalars block) are resolved per chunk into a compile-time
// variant; the flags that change the set of state lists (momentum, amsgrad, centered) and
// the model-copy dtype select the kernel.
//
// LAMB needs the norms of p and of the update u per tensor before it can apply anything, so
// each launch's table goes through three kernels: stage 1 updates the moments and writes one
// {sum p^2, sum u^2} pair per chunk (double, block reduction in a fixed order); a per-tensor
// kernel sums each tensor's chunk pairs in a fixed order and stores lr * trust; stage 2
// recomputes u from the stored moments and applies p -= ratio * u. No float atomics, no host
// synchronisation; the chunk pairs and ratios live in a stream-ordered workspace.
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>

#include "../common/optim.h"
#include "cuda_ops.h"
#include "device_utils.cuh"
#include "multi_tensor.cuh"

namespace trainrt {
namespace gpu {
namespace {

/// Model-copy element type of a step without model copies (never loaded or stored).
struct NoCopy {
  uint16_t bits;
};

template <class C>
constexpr bool kHasCopy = !std::is_same<C, NoCopy>::value;

/// {sum p^2, sum u^2} of LAMB, reduced with SumOp.
struct Sum2 {
  double a, b;
};
__device__ __forceinline__ Sum2 operator+(Sum2 x, Sum2 y) { return Sum2{x.a + y.a, x.b + y.b}; }
__device__ __forceinline__ Sum2 shfl_xor(Sum2 v, int m) {
  return Sum2{__shfl_xor_sync(kFullMask, v.a, m), __shfl_xor_sync(kFullMask, v.b, m)};
}

/// The header of every optimizer kernel's parameters. (The optimizer scalars block of each
/// tensor is in its table entry: the call's block, or the tensor's own in a capturable step.)
struct OptimExtra {
  const float* grad_scalars;      // grad scalars block, or nullptr (g_eff = g)
  const float* global_grad_norm;  // LAMB: norm of all g_eff, or nullptr (no division)
  Sum2* lamb_partial;             // LAMB: one pair per chunk of this launch
  float* lamb_ratio;              // LAMB: lr * trust per tensor of this launch
  uint32_t flags;                 // trainrt_optim_flag_c
  int32_t reserved;
};

/// Lists of a table with NS state lists: 0 param, 1 grad, 2 .. 1 + NS the states in slot
/// order, 2 + NS the model copy (nullptr where a tensor has none), 3 + NS the tensor's
/// optimizer scalars block.
template <int NS>
using OptimArgs = MtArgs<4 + NS, OptimExtra>;

/// The optimizer scalars of tensor t of a table.
template <int NS, class List>
__device__ __forceinline__ OptimScalars tensor_scalars(const List& l, int t) {
  return load_optim_scalars(static_cast<const float*>(l.ptr[3 + NS][t]));
}

/// A chunk's pointers (offset to the chunk's first element).
template <int NS, class C>
struct OptimPtrs {
  float* p;
  const float* g;
  float* st[NS > 0 ? NS : 1];
  C* copy;  // nullptr: no model copy

  __device__ __forceinline__ OptimPtrs offset(int k) const {
    OptimPtrs r = *this;
    r.p += k;
    r.g += k;
#pragma unroll
    for (int i = 0; i < NS; ++i) r.st[i] += k;
    if (r.copy != nullptr) r.copy += k;
    return r;
  }
};

template <int NS, class C, class List>
__device__ __forceinline__ OptimPtrs<NS, C> chunk_ptrs(const List& l, int t, int64_t start) {
  OptimPtrs<NS, C> q;
  q.p = static_cast<float*>(l.ptr[0][t]) + start;
  q.g = static_cast<const float*>(l.ptr[1][t]) + start;
#pragma unroll
  for (int i = 0; i < NS; ++i) q.st[i] = static_cast<float*>(l.ptr[2 + i][t]) + start;
  q.copy = nullptr;
  if constexpr (kHasCopy<C>) {
    C* const c = static_cast<C*>(l.ptr[2 + NS][t]);
    if (c != nullptr) q.copy = c + start;
  }
  return q;
}

/// g_eff multipliers, with maximize folded into the sign of the clip coefficient:
/// (g * inv) * (-clip) == -((g * inv) * clip) exactly.
__device__ __forceinline__ GradMul step_grad_mul(const OptimExtra& x) {
  GradMul gm = load_grad_mul(x.grad_scalars);
  if (x.flags & TRAINRT_OPTIM_MAXIMIZE) gm.clip_coef = -gm.clip_coef;
  return gm;
}

/// Walks `packs` V-wide packs of a chunk's lists, packs_in_flight packs per thread loaded
/// before any is used: elem(p, g, st) updates one element in registers (g = 0 unless kReadG,
/// st the NS state values). Stores p (and the model copy) when kWriteP, the states when
/// kWriteStates.
template <int V, bool kReadG, bool kWriteP, bool kWriteStates, int NS, class C, class F>
__device__ __forceinline__ void optim_range(const OptimPtrs<NS, C>& q, int packs, F&& elem) {
  constexpr int U = packs_in_flight<float, V>();
  constexpr int NS1 = NS > 0 ? NS : 1;
  for (int j0 = static_cast<int>(threadIdx.x); j0 < packs; j0 += U * kMtThreads) {
    Pack<float, V> rp[U], rg[U], rs[NS1][U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int j = j0 + u * kMtThreads;
      if (j < packs) {
        rp[u] = load_pack<V>(q.p, j);
        if constexpr (kReadG) rg[u] = load_pack<V>(q.g, j);
#pragma unroll
        for (int k = 0; k < NS; ++k) rs[k][u] = load_pack<V>(q.st[k], j);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int j = j0 + u * kMtThreads;
      if (j < packs) {
        Pack<C, V> rc;
#pragma unroll
        for (int e = 0; e < V; ++e) {
          float st[NS1];
#pragma unroll
          for (int k = 0; k < NS; ++k) st[k] = rs[k][u].v[e];
          elem(rp[u].v[e], kReadG ? rg[u].v[e] : 0.0f, st);
#pragma unroll
          for (int k = 0; k < NS; ++k) rs[k][u].v[e] = st[k];
          if constexpr (kWriteP && kHasCopy<C>) store<float>(rc.v, e, rp[u].v[e]);
        }
        if constexpr (kWriteP) {
          store_pack<V>(q.p, j, rp[u]);
          if constexpr (kHasCopy<C>) {
            if (q.copy != nullptr) store_pack<V>(q.copy, j, rc);
          }
        }
        if constexpr (kWriteStates) {
#pragma unroll
          for (int k = 0; k < NS; ++k) store_pack<V>(q.st[k], j, rs[k][u]);
        }
      }
    }
  }
}

/// optim_range over a whole chunk: 16-byte packs where the tensor allows them, then the
/// scalar tail (the last numel % 4 elements of the tensor).
template <bool kReadG, bool kWriteP, bool kWriteStates, int NS, class C, class F>
__device__ __forceinline__ void optim_chunk(const OptimPtrs<NS, C>& q, int n, bool vec, F&& elem) {
  constexpr int V = 4;
  const int head = vec ? n / V * V : 0;
  if (head > 0) optim_range<V, kReadG, kWriteP, kWriteStates>(q, head / V, elem);
  if (head < n) optim_range<1, kReadG, kWriteP, kWriteStates>(q.offset(head), n - head, elem);
}

// ---- algorithms: variants (compile-time flags) and families (one kernel each) ------------

template <bool kL2, bool kMomentum, bool kNesterov>
struct Sgd {
  __device__ static void update(float& p, float g, float* st, const OptimScalars& s) {
    float unused = 0.0f;
    sgd_update<kL2, kMomentum, kNesterov>(p, g, kMomentum ? st[0] : unused, s);
  }
};

template <bool kMomentum>
struct SgdFamily {
  static constexpr int kStates = kMomentum ? 1 : 0;
  template <class F>
  __device__ static void dispatch(uint32_t f, const OptimScalars&, F&& fn) {
    const bool l2 = (f & TRAINRT_OPTIM_L2) != 0;
    const bool nes = kMomentum && (f & TRAINRT_OPTIM_NESTEROV) != 0;
    if (l2) {
      if (nes)
        fn(Sgd<true, kMomentum, true>{});
      else
        fn(Sgd<true, kMomentum, false>{});
    } else {
      if (nes)
        fn(Sgd<false, kMomentum, true>{});
      else
        fn(Sgd<false, kMomentum, false>{});
    }
  }
};

template <bool kL2, bool kDecoupled, bool kAmsgrad>
struct Adam {
  __device__ static void update(float& p, float g, float* st, const OptimScalars& s) {
    float unused = 0.0f;
    adam_update<kL2, kDecoupled, kAmsgrad>(p, g, st[0], st[1], kAmsgrad ? st[2] : unused, s);
  }
};

/// Adam and AdamW; decoupled decay wins over L2 when both flags are set (as the CPU).
template <bool kAmsgrad>
struct AdamFamily {
  static constexpr int kStates = kAmsgrad ? 3 : 2;
  template <class F>
  __device__ static void dispatch(uint32_t f, const OptimScalars&, F&& fn) {
    if (f & TRAINRT_OPTIM_DECOUPLED)
      fn(Adam<false, true, kAmsgrad>{});
    else if (f & TRAINRT_OPTIM_L2)
      fn(Adam<true, false, kAmsgrad>{});
    else
      fn(Adam<false, false, kAmsgrad>{});
  }
};

template <bool kL2, bool kCentered, bool kMomentum>
struct Rmsprop {
  __device__ static void update(float& p, float g, float* st, const OptimScalars& s) {
    float unused_buf = 0.0f, unused_ga = 0.0f;
    rmsprop_update<kL2, kCentered, kMomentum>(p, g, st[0], kMomentum ? st[1] : unused_buf,
                                              kCentered ? st[kMomentum ? 2 : 1] : unused_ga, s);
  }
};

/// State lists: square_avg, then momentum_buffer (MOMENTUM), then grad_avg (CENTERED).
template <bool kCentered, bool kMomentum>
struct RmspropFamily {
  static constexpr int kStates = 1 + (kMomentum ? 1 : 0) + (kCentered ? 1 : 0);
  template <class F>
  __device__ static void dispatch(uint32_t f, const OptimScalars&, F&& fn) {
    if (f & TRAINRT_OPTIM_L2)
      fn(Rmsprop<true, kCentered, kMomentum>{});
    else
      fn(Rmsprop<false, kCentered, kMomentum>{});
  }
};

template <bool kL2>
struct Adagrad {
  __device__ static void update(float& p, float g, float* st, const OptimScalars& s) {
    adagrad_update<kL2>(p, g, st[0], s);
  }
};

struct AdagradFamily {
  static constexpr int kStates = 1;
  template <class F>
  __device__ static void dispatch(uint32_t f, const OptimScalars&, F&& fn) {
    if (f & TRAINRT_OPTIM_L2)
      fn(Adagrad<true>{});
    else
      fn(Adagrad<false>{});
  }
};

template <bool kL2, bool kDecoupled, bool kRectified>
struct Radam {
  __device__ static void update(float& p, float g, float* st, const OptimScalars& s) {
    radam_update<kL2, kDecoupled, kRectified>(p, g, st[0], st[1], s);
  }
};

/// RAdam: the rectified / unadapted choice comes from the scalars block (RECT > 0).
struct RadamFamily {
  static constexpr int kStates = 2;
  template <bool kRect, class F>
  __device__ static void decay(uint32_t f, F&& fn) {
    if (f & TRAINRT_OPTIM_DECOUPLED)
      fn(Radam<false, true, kRect>{});
    else if (f & TRAINRT_OPTIM_L2)
      fn(Radam<true, false, kRect>{});
    else
      fn(Radam<false, false, kRect>{});
  }
  template <class F>
  __device__ static void dispatch(uint32_t f, const OptimScalars& s, F&& fn) {
    if (s.rect > 0.0f)
      decay<true>(f, fn);
    else
      decay<false>(f, fn);
  }
};

// ---- kernels -----------------------------------------------------------------------------

template <class Family, class C>
__global__ void __launch_bounds__(kMtThreads)
    optim_kernel(const __grid_constant__ OptimArgs<Family::kStates> a) {
  constexpr int NS = Family::kStates;
  if (step_skipped(a.x.grad_scalars)) return;
  const GradMul gm = step_grad_mul(a.x);
  mt_for_each_chunk(a.list, [&](int t, int32_t, int64_t start, int n) {
    const OptimScalars s = tensor_scalars<NS>(a.list, t);
    const OptimPtrs<NS, C> q = chunk_ptrs<NS, C>(a.list, t, start);
    Family::dispatch(a.x.flags, s, [&](auto variant) {
      using Algo = decltype(variant);
      optim_chunk<true, true, true>(q, n, a.list.vec[t] != 0, [&](float& p, float g, float* st) {
        Algo::update(p, effective_grad<false>(g, gm), st, s);
      });
    });
  });
}

/// LAMB stage 1: m, v updated; per chunk {sum p^2, sum u^2} (p before the update).
__global__ void __launch_bounds__(kMtThreads)
    lamb_stage1_kernel(const __grid_constant__ OptimArgs<2> a) {
  if (step_skipped(a.x.grad_scalars)) return;
  const GradMul gm = step_grad_mul(a.x);
  const float norm = a.x.global_grad_norm != nullptr ? *a.x.global_grad_norm : 0.0f;
  mt_for_each_chunk(a.list, [&](int t, int32_t c, int64_t start, int n) {
    const OptimScalars s = tensor_scalars<2>(a.list, t);
    const float divisor = lamb_grad_divisor(norm, s);
    const OptimPtrs<2, NoCopy> q = chunk_ptrs<2, NoCopy>(a.list, t, start);
    Sum2 acc{0.0, 0.0};
    optim_chunk<true, false, true>(q, n, a.list.vec[t] != 0, [&](float& p, float g, float* st) {
      const float u = lamb_stage1(p, effective_grad<false>(g, gm), st[0], st[1], divisor, s);
      acc.a += static_cast<double>(p) * static_cast<double>(p);
      acc.b += static_cast<double>(u) * static_cast<double>(u);
    });
    acc = block_allreduce<kMtThreads>(acc, SumOp{});
    if (threadIdx.x == 0) a.x.lamb_partial[c] = acc;
  });
}

/// LAMB trust ratio: one block per tensor of the launch sums its chunk pairs (fixed order)
/// and stores lamb_ratio(|p|, |u|) = lr * trust.
__global__ void __launch_bounds__(kMtThreads)
    lamb_ratio_kernel(const __grid_constant__ OptimArgs<2> a) {
  if (step_skipped(a.x.grad_scalars)) return;
  const bool nvlamb = (a.x.flags & TRAINRT_OPTIM_NVLAMB) != 0;
  for (int t = static_cast<int>(blockIdx.x); t < a.list.n_tensors;
       t += static_cast<int>(gridDim.x)) {
    const OptimScalars s = tensor_scalars<2>(a.list, t);
    const int32_t first = t == 0 ? 0 : a.list.chunk_end[t - 1];
    const int32_t end = a.list.chunk_end[t];
    Sum2 acc{0.0, 0.0};
    for (int32_t c = first + static_cast<int32_t>(threadIdx.x); c < end; c += kMtThreads) {
      acc = acc + a.x.lamb_partial[c];
    }
    acc = block_allreduce<kMtThreads>(acc, SumOp{});
    if (threadIdx.x == 0) {
      a.x.lamb_ratio[t] =
          lamb_ratio(static_cast<float>(sqrt(acc.a)), static_cast<float>(sqrt(acc.b)), nvlamb, s);
    }
  }
}

/// LAMB stage 2: u recomputed from the stored moments, p -= ratio * u, model copy.
template <class C>
__global__ void __launch_bounds__(kMtThreads)
    lamb_stage2_kernel(const __grid_constant__ OptimArgs<2> a) {
  if (step_skipped(a.x.grad_scalars)) return;
  mt_for_each_chunk(a.list, [&](int t, int32_t, int64_t start, int n) {
    const OptimScalars s = tensor_scalars<2>(a.list, t);
    const OptimPtrs<2, C> q = chunk_ptrs<2, C>(a.list, t, start);
    const float ratio = a.x.lamb_ratio[t];
    optim_chunk<false, true, false>(q, n, a.list.vec[t] != 0, [&](float& p, float, float* st) {
      p = p - ratio * lamb_update_of(p, st[0], st[1], s);
    });
  });
}

// ---- capturable steps: per-tensor scalars from device step counts ------------------------

/// Step count pointers of up to kCountsPerLaunch tensors of a capturable call (by value in the
/// kernel parameters, within the launch's parameter budget).
constexpr int kCountsPerLaunch = static_cast<int>((kMtParamBytes - 64) / sizeof(int64_t*));
struct CountsArgs {
  const float* scalars;       // the call's optimizer scalars block
  const double* hyper;        // TRAINRT_OH_COUNT doubles
  float* tensor_scalars;      // the blocks of this launch's tensors
  const float* grad_scalars;  // advance: nothing when found_inf
  int32_t n;
  int32_t algo;
  uint32_t flags;  // trainrt_optim_flag_c
  int32_t reserved;
  int64_t* counts[kCountsPerLaunch];
};

/// One thread per tensor: its block = the call's block with the t-dependent entries derived
/// for t = count + 1 (in double, as the host does for an ordinary step).
__global__ void optim_prepare_kernel(const __grid_constant__ CountsArgs a) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= a.n) return;
  const int64_t t = *a.counts[i] + 1;
  float* const b = a.tensor_scalars + static_cast<int64_t>(i) * TRAINRT_OS_COUNT;
  for (int k = 0; k < TRAINRT_OS_COUNT; ++k) b[k] = a.scalars[k];
  derive_step_scalars(a.algo, a.hyper, t, t == 1 || (a.flags & TRAINRT_OPTIM_FRESH_BUFFER) != 0, b);
}

/// After the step's kernels: every count advances, unless the step was skipped.
__global__ void optim_advance_kernel(const __grid_constant__ CountsArgs a) {
  if (step_skipped(a.grad_scalars)) return;
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < a.n) ++*a.counts[i];
}

/// Launches `kernel` over the step counts of a capturable call, kCountsPerLaunch at a time.
void counts_launches(DeviceCtx& ctx, const trainrt_optim_step_args& a, bool advance) {
  static_assert(sizeof(CountsArgs) <= kMtParamBytes, "counts table too large");
  auto c = std::make_unique<CountsArgs>();
  c->scalars = a.scalars;
  c->hyper = a.step_hyper;
  c->grad_scalars = a.grad_scalars;
  c->algo = a.algo;
  c->flags = a.flags;
  for (int64_t base = 0; base < a.n_tensors; base += kCountsPerLaunch) {
    const int n = static_cast<int>(min64(kCountsPerLaunch, a.n_tensors - base));
    c->n = n;
    c->tensor_scalars = a.tensor_scalars + base * TRAINRT_OS_COUNT;
    for (int i = 0; i < n; ++i) c->counts[i] = a.step_counts[base + i];
    const int64_t grid = ceil_div(n, 128);
    if (advance) {
      TRAINRT_LAUNCH("optimizer_step (advance step counts)", optim_advance_kernel, grid, 128,
                     ctx.stream, *c);
    } else {
      TRAINRT_LAUNCH("optimizer_step (per-tensor scalars)", optim_prepare_kernel, grid, 128,
                     ctx.stream, *c);
    }
  }
}

// ---- host --------------------------------------------------------------------------------

const char* algo_name(int32_t algo) {
  switch (algo) {
    case TRAINRT_OPTIM_SGD: return "SGD";
    case TRAINRT_OPTIM_ADAM: return "Adam";
    case TRAINRT_OPTIM_RMSPROP: return "RMSprop";
    case TRAINRT_OPTIM_ADAGRAD: return "Adagrad";
    case TRAINRT_OPTIM_RADAM: return "RAdam";
    case TRAINRT_OPTIM_LAMB: return "LAMB";
    default: return "?";
  }
}

/// The state slots (indices into args.states) an algorithm reads, in list order.
int state_slots(const trainrt_optim_step_args& a, int (&slots)[3]) {
  const uint32_t f = a.flags;
  int n = 0;
  switch (a.algo) {
    case TRAINRT_OPTIM_SGD:
      if (f & TRAINRT_OPTIM_MOMENTUM) slots[n++] = 0;
      break;
    case TRAINRT_OPTIM_ADAM:
      slots[n++] = 0;
      slots[n++] = 1;
      if (f & TRAINRT_OPTIM_AMSGRAD) slots[n++] = 2;
      break;
    case TRAINRT_OPTIM_RMSPROP:
      slots[n++] = 0;
      if (f & TRAINRT_OPTIM_MOMENTUM) slots[n++] = 1;
      if (f & TRAINRT_OPTIM_CENTERED) slots[n++] = 2;
      break;
    case TRAINRT_OPTIM_ADAGRAD: slots[n++] = 0; break;
    case TRAINRT_OPTIM_RADAM:
    case TRAINRT_OPTIM_LAMB:
      slots[n++] = 0;
      slots[n++] = 1;
      break;
    default: fail("optimizer_step: unknown algorithm " + std::to_string(a.algo));
  }
  return n;
}

/// Fills the table entry of tensor i (see OptimArgs); the arrays were checked before.
template <int NS>
struct StepFill {
  const trainrt_optim_step_args& a;
  int slots[3];

  bool operator()(int64_t i, void* (&ptrs)[4 + NS], bool& vec) const {
    ptrs[0] = a.params[i];
    ptrs[1] = const_cast<void*>(a.grads[i]);
    for (int k = 0; k < NS; ++k) ptrs[2 + k] = a.states[slots[k]][i];
    ptrs[2 + NS] = a.model_copies != nullptr ? a.model_copies[i] : nullptr;
    ptrs[3 + NS] = a.tensor_scalars != nullptr ? a.tensor_scalars + i * TRAINRT_OS_COUNT
                                               : const_cast<float*>(a.scalars);
    vec = aligned_to(ptrs[2 + NS], 4 * 2);  // 4 f16 / bf16 per 16-byte f32 pack
    for (int d = 0; d < 2 + NS; ++d) vec = vec && aligned_to(ptrs[d], 16);
    return true;
  }
};

/// The parameters of a step's launches: value-initialised (unused table entries are zero, not
/// stale bytes) and on the heap (up to 32 KB).
template <int NS>
std::unique_ptr<OptimArgs<NS>> step_args(const trainrt_optim_step_args& a) {
  auto args = std::make_unique<OptimArgs<NS>>();
  args->x.grad_scalars = a.grad_scalars;
  args->x.global_grad_norm = a.global_grad_norm;
  args->x.flags = a.flags;
  return args;
}

template <class Family, class C>
void step_family(DeviceCtx& ctx, const trainrt_optim_step_args& a, const int (&slots)[3]) {
  constexpr int NS = Family::kStates;
  const auto args = step_args<NS>(a);
  const StepFill<NS> fill{a, {slots[0], slots[1], slots[2]}};
  const int shift = mt_chunk_shift(mt_total_elements(a.n_tensors, a.numels));
  mt_for_each_launch(*args, a.n_tensors, a.numels, shift, fill,
                     [&](const OptimArgs<NS>& g, int64_t) {
                       TRAINRT_MT_LAUNCH("optimizer_step", optim_kernel<Family, C>, ctx, g);
                     });
}

template <class C>
void lamb_step(DeviceCtx& ctx, const trainrt_optim_step_args& a, const int (&slots)[3]) {
  const int shift = mt_chunk_shift(mt_total_elements(a.n_tensors, a.numels));
  const int64_t chunks = mt_total_chunks(a.n_tensors, a.numels, shift);
  if (chunks == 0) return;
  const size_t partial_bytes = static_cast<size_t>(chunks) * sizeof(Sum2);
  Workspace ws(ctx, partial_bytes + static_cast<size_t>(a.n_tensors) * sizeof(float));
  Sum2* const partial = static_cast<Sum2*>(ws.get());
  float* const ratio = reinterpret_cast<float*>(static_cast<char*>(ws.get()) + partial_bytes);
  const auto args = step_args<2>(a);
  const StepFill<2> fill{a, {slots[0], slots[1], slots[2]}};
  int64_t tensors_done = 0;
  mt_for_each_launch(
      *args, a.n_tensors, a.numels, shift, fill, [&](OptimArgs<2>& g, int64_t chunk_base) {
        g.x.lamb_partial = partial + chunk_base;
        g.x.lamb_ratio = ratio + tensors_done;
        tensors_done += g.list.n_tensors;
        TRAINRT_MT_LAUNCH("optimizer_step (LAMB stage 1)", lamb_stage1_kernel, ctx, g);
        TRAINRT_LAUNCH("optimizer_step (LAMB trust ratio)", lamb_ratio_kernel, g.list.n_tensors,
                       kMtThreads, ctx.stream, g);
        TRAINRT_MT_LAUNCH("optimizer_step (LAMB stage 2)", lamb_stage2_kernel<C>, ctx, g);
      });
}

template <class C>
void step_typed(DeviceCtx& ctx, const trainrt_optim_step_args& a, const int (&slots)[3]) {
  const uint32_t f = a.flags;
  const bool mom = (f & TRAINRT_OPTIM_MOMENTUM) != 0;
  switch (a.algo) {
    case TRAINRT_OPTIM_SGD:
      return mom ? step_family<SgdFamily<true>, C>(ctx, a, slots)
                 : step_family<SgdFamily<false>, C>(ctx, a, slots);
    case TRAINRT_OPTIM_ADAM:
      return (f & TRAINRT_OPTIM_AMSGRAD) ? step_family<AdamFamily<true>, C>(ctx, a, slots)
                                         : step_family<AdamFamily<false>, C>(ctx, a, slots);
    case TRAINRT_OPTIM_RMSPROP:
      if (f & TRAINRT_OPTIM_CENTERED) {
        return mom ? step_family<RmspropFamily<true, true>, C>(ctx, a, slots)
                   : step_family<RmspropFamily<true, false>, C>(ctx, a, slots);
      }
      return mom ? step_family<RmspropFamily<false, true>, C>(ctx, a, slots)
                 : step_family<RmspropFamily<false, false>, C>(ctx, a, slots);
    case TRAINRT_OPTIM_ADAGRAD: return step_family<AdagradFamily, C>(ctx, a, slots);
    case TRAINRT_OPTIM_RADAM: return step_family<RadamFamily, C>(ctx, a, slots);
    case TRAINRT_OPTIM_LAMB: return lamb_step<C>(ctx, a, slots);
    default: break;
  }
  fail("optimizer_step: unknown algorithm " + std::to_string(a.algo));
}

}  // namespace

void launch_optimizer_step(DeviceCtx& ctx, const trainrt_optim_step_args& a) {
  if (a.param_dtype != TRAINRT_F32 || a.grad_dtype != TRAINRT_F32) {
    fail("optimizer_step: params and grads must be f32 (got dtypes " +
         std::to_string(a.param_dtype) + " and " + std::to_string(a.grad_dtype) + ")");
  }
  if (a.model_copies != nullptr && a.model_dtype != TRAINRT_F16 && a.model_dtype != TRAINRT_BF16) {
    fail("optimizer_step: model copies must be f16 or bf16 (got dtype " +
         std::to_string(a.model_dtype) + ")");
  }
  if (a.n_tensors < 0) fail("optimizer_step: negative tensor count");
  int slots[3] = {0, 0, 0};
  const int ns = state_slots(a, slots);
  if (a.n_tensors == 0) return;
  if (a.params == nullptr || a.grads == nullptr || a.numels == nullptr) {
    fail("optimizer_step: null params, grads or numels array");
  }
  if (a.scalars == nullptr) fail("optimizer_step: null optimizer scalars block");
  for (int k = 0; k < ns; ++k) {
    if (a.states[slots[k]] == nullptr) {
      fail(std::string("optimizer_step (") + algo_name(a.algo) + "): state list " +
           std::to_string(slots[k]) + " is missing");
    }
  }
  // Every tensor is checked before the first launch, so a bad entry changes nothing.
  for (int64_t i = 0; i < a.n_tensors; ++i) {
    if (a.numels[i] < 0) fail("optimizer_step: negative numel of tensor " + std::to_string(i));
    if (a.numels[i] == 0) continue;
    bool ok = a.params[i] != nullptr && a.grads[i] != nullptr;
    for (int k = 0; k < ns; ++k) ok = ok && a.states[slots[k]][i] != nullptr;
    if (!ok) {
      fail(std::string("optimizer_step (") + algo_name(a.algo) + "): null param, grad or state " +
           "pointer for tensor " + std::to_string(i));
    }
  }
  const bool capturable = a.step_counts != nullptr;
  if (capturable) {
    if (a.step_hyper == nullptr || a.tensor_scalars == nullptr) {
      fail("optimizer_step: a capturable step needs step_hyper and tensor_scalars");
    }
    for (int64_t i = 0; i < a.n_tensors; ++i) {
      if (a.step_counts[i] == nullptr) {
        fail("optimizer_step: null step count pointer for tensor " + std::to_string(i));
      }
    }
    counts_launches(ctx, a, false);
  }
  if (a.model_copies == nullptr) {
    step_typed<NoCopy>(ctx, a, slots);
  } else if (a.model_dtype == TRAINRT_F16) {
    step_typed<f16_t>(ctx, a, slots);
  } else {
    step_typed<bf16_t>(ctx, a, slots);
  }
  if (capturable) counts_launches(ctx, a, true);
}

}  // namespace gpu
}  // namespace trainrt
