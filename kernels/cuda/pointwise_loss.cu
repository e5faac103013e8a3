// Element-wise losses (mse, l1, smooth_l1, huber, bce, bce_with_logits, sigmoid focal, kl_div)
// with the functors of kernels/common/losses.h.
//
// Contract. One grid-stride pass reads input, target and the optional weight / pos_weight
// once, writes the gradient (times the upstream scale, / divisor for mean) and, for reduction
// none, the per-element loss. For mean / sum each block writes one partial sum to a small
// workspace (at most 1024 blocks, a fixed grid independent of the device, so the result is
// the same on every GPU) and a one-block finalize sums the partials in block order in f64.
// No float atomics. BCE inputs outside [0, 1] are not trapped: each block records its first
// bad element and the finalize puts the smallest one in the deferred error record.
#include <climits>

#include "cuda_ops.h"
#include "device_utils.cuh"

namespace trainrt {
namespace gpu {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1024;
constexpr int kFinalizeThreads = 256;

template <class T>
struct PwParams {
  using A = typename acc_type<T>::type;
  const T* x;
  const T* y;
  const A* w;   // [n] (w_full) or [inner], or nullptr
  const A* pw;  // [inner] or nullptr
  int64_t n;
  int64_t inner;
  int w_full;
  int check_prob;  // BCE: input must be in [0, 1]
  int mean;        // the gradient is divided by `divisor`
  double divisor;
  double grad_scale;
  const float* grad_scale_ptr;
  PointwiseParams<A> pp;
  T* loss_none;          // reduction none: [n]; else nullptr
  T* grad;               // [n] or nullptr
  A* partial;            // mean / sum: [gridDim.x]; else nullptr
  long long* first_bad;  // check_prob: [gridDim.x]; else nullptr
};

template <class Op, class T>
__global__ void __launch_bounds__(kThreads) pointwise_kernel(PwParams<T> p) {
  using A = typename acc_type<T>::type;
  const double scale = static_cast<double>(upstream_scale<A>(p.grad_scale, p.grad_scale_ptr));
  // Op::kGradFactor (MSE's 2) in the coefficient, as PyTorch's 2 / numel (see MseOp).
  const A coef = static_cast<A>((p.mean ? scale / p.divisor : scale) * Op::kGradFactor);
  A acc = A(0);
  long long bad = LLONG_MAX;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < p.n;
       i += stride) {
    const A xi = load<A>(p.x, i);
    const A yi = load<A>(p.y, i);
    if (p.check_prob && !bce_input_ok(xi) && bad == LLONG_MAX) bad = i;
    const A pwi = p.pw != nullptr ? p.pw[i % p.inner] : A(1);
    A l, g;
    Op::template eval<A>(xi, yi, pwi, p.pp, l, g);
    if (p.w != nullptr) {
      const A wi = p.w_full ? p.w[i] : p.w[i % p.inner];
      l *= wi;
      g *= wi;
    }
    if (p.loss_none != nullptr) store<A>(p.loss_none, i, l);
    acc += l;
    if (p.grad != nullptr) store<A>(p.grad, i, g * coef);
  }
  if (p.partial != nullptr) {
    acc = block_allreduce<kThreads>(acc, SumOp{});
    if (threadIdx.x == 0) p.partial[blockIdx.x] = acc;
  }
  if (p.first_bad != nullptr) {
    bad = block_allreduce<kThreads>(bad, MinOp{});
    if (threadIdx.x == 0) p.first_bad[blockIdx.x] = bad;
  }
}

/// loss = sum(partial) (/ divisor unless sum), and the first bad BCE input to the error record.
template <class T>
__global__ void __launch_bounds__(kFinalizeThreads)
    pointwise_finalize_kernel(const typename acc_type<T>::type* partial, const long long* first_bad,
                              int64_t blocks, int sum, double divisor, T* loss, const T* x,
                              DataError* err) {
  using A = typename acc_type<T>::type;
  double s = 0.0;
  long long bad = LLONG_MAX;
  for (int64_t b = threadIdx.x; b < blocks; b += kFinalizeThreads) {
    if (partial != nullptr) s += static_cast<double>(partial[b]);
    if (first_bad != nullptr && first_bad[b] < bad) bad = first_bad[b];
  }
  s = block_allreduce<kFinalizeThreads>(s, SumOp{});
  bad = block_allreduce<kFinalizeThreads>(bad, MinOp{});
  if (threadIdx.x == 0) {
    if (loss != nullptr) {
      if (!sum) s /= divisor;
      store<double>(loss, 0, s);
    }
    if (bad != LLONG_MAX && err->code == kDataErrNone) {  // the first error is kept
      err->op = kOpBce;
      err->index = bad;
      err->limit = 0;
      err->value = static_cast<double>(load<A>(x, bad));
      err->code = kDataErrProbRange;
    }
  }
}

template <class Op, class T>
void pointwise_t(DeviceCtx& ctx, const trainrt_pointwise_loss_args& a) {
  using A = typename acc_type<T>::type;
  const bool none = a.reduction == TRAINRT_RED_NONE;
  const bool check_prob = a.kind == TRAINRT_LOSS_BCE;
  if (none && a.numel == 0) return;
  const int64_t blocks = min64(ceil_div(a.numel, kThreads), kMaxBlocks);

  const size_t partial_bytes = none ? 0 : static_cast<size_t>(blocks) * sizeof(A);
  const size_t bad_offset = (partial_bytes + 15) / 16 * 16;
  const size_t bad_bytes = check_prob ? static_cast<size_t>(blocks) * sizeof(long long) : 0;
  Workspace ws(ctx, bad_offset + bad_bytes);
  char* base = static_cast<char*>(ws.get());

  PwParams<T> p;
  p.x = static_cast<const T*>(a.input);
  p.y = static_cast<const T*>(a.target);
  p.w = static_cast<const A*>(a.weight);
  p.pw = static_cast<const A*>(a.pos_weight);
  p.n = a.numel;
  p.inner = a.inner > 0 ? a.inner : 1;
  p.w_full = a.weight != nullptr && a.weight_numel == a.numel ? 1 : 0;
  p.check_prob = check_prob ? 1 : 0;
  p.mean = !none && a.reduction != TRAINRT_RED_SUM ? 1 : 0;
  p.divisor = a.divisor;
  p.grad_scale = a.grad_scale;
  p.grad_scale_ptr = a.grad_scale_ptr;
  p.pp.param = static_cast<A>(a.param);
  p.pp.alpha = static_cast<A>(a.alpha);
  p.pp.log_target = a.log_target;
  p.loss_none = none ? static_cast<T*>(a.loss) : nullptr;
  p.grad = static_cast<T*>(a.grad);
  p.partial = partial_bytes > 0 ? reinterpret_cast<A*>(base) : nullptr;
  p.first_bad = bad_bytes > 0 ? reinterpret_cast<long long*>(base + bad_offset) : nullptr;

  TRAINRT_LAUNCH("pointwise_loss", pointwise_kernel<Op, T>, blocks, kThreads, ctx.stream, p);
  if (!none || check_prob) {
    TRAINRT_LAUNCH("pointwise_loss finalize", pointwise_finalize_kernel<T>, 1, kFinalizeThreads,
                   ctx.stream, p.partial, p.first_bad, blocks,
                   a.reduction == TRAINRT_RED_SUM ? 1 : 0, a.divisor,
                   none ? nullptr : static_cast<T*>(a.loss), p.x, data_error_sink(ctx));
  }
}

template <class T>
void pointwise_kind(DeviceCtx& ctx, const trainrt_pointwise_loss_args& a) {
  switch (a.kind) {
    case TRAINRT_LOSS_MSE: return pointwise_t<MseOp, T>(ctx, a);
    case TRAINRT_LOSS_L1: return pointwise_t<L1Op, T>(ctx, a);
    case TRAINRT_LOSS_SMOOTH_L1: return pointwise_t<SmoothL1Op, T>(ctx, a);
    case TRAINRT_LOSS_HUBER: return pointwise_t<HuberOp, T>(ctx, a);
    case TRAINRT_LOSS_BCE: return pointwise_t<BceOp, T>(ctx, a);
    case TRAINRT_LOSS_BCE_LOGITS: return pointwise_t<BceLogitsOp, T>(ctx, a);
    case TRAINRT_LOSS_FOCAL: return pointwise_t<FocalOp, T>(ctx, a);
    case TRAINRT_LOSS_KL_DIV: return pointwise_t<KlDivOp, T>(ctx, a);
    default: break;
  }
  fail("pointwise_loss: unknown loss kind " + std::to_string(a.kind));
}

}  // namespace

void launch_pointwise_loss(DeviceCtx& ctx, const trainrt_pointwise_loss_args& a) {
  if (a.numel < 0) fail("pointwise_loss: negative element count");
  dispatch_float(a.dtype, [&](auto tag) { pointwise_kind<typename decltype(tag)::type>(ctx, a); });
}

}  // namespace gpu
}  // namespace trainrt
