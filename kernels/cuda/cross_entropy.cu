// The cross-entropy family over [rows, cols] class scores, loss and gradient in one pass over
// the data: cross_entropy with class-index targets (weight, ignore_index, label smoothing),
// cross_entropy with probability targets, nll_loss (input_is_logp), plus z-loss and logit
// soft-capping. The math per row comes from kernels/common/losses.h.
//
// Contract. Three launches on the device's stream, no host synchronisation:
//  1. ce_prep (one block): validates the class indices (the first out-of-range row, in row
//     order, goes to the deferred error record), sums the mean's denominator
//     (sum of w[y] over counted rows; rows for probability targets) and the class-weight sum,
//     and stores the gradient coefficient upstream_scale / denominator, all on the device.
//  2. ce_rows: per row, one pass computes the online max/sum of exponentials and the sums
//     the loss needs (kept relative to the running max); a second pass re-reads the row
//     (from L1/L2) and writes the gradient. Log-probabilities are (z - max) - log(sum) and
//     probabilities exp(z - max) / sum, as on the CPU.
//     Writes the per-row loss ([rows] of dtype for reduction none, else an f32/f64
//     workspace). Never materialises an N x C temporary (no softmax, no log-probabilities).
//     Ignored rows: loss 0, gradient row 0. Out-of-range targets: loss NaN, gradient row 0,
//     no out-of-bounds read.
//  3. ce_finalize (one block, mean / sum only): fixed-order sum of the row losses in f64,
//     divided by the denominator for mean (0/0 = NaN when every row is ignored), stored as
//     the input dtype.
// Warp per row up to 1024 classes, else a 512-thread block per row; 16-byte vector accesses
// where every row start is aligned.
#include <climits>

#include "cuda_ops.h"
#include "device_utils.cuh"

namespace trainrt {
namespace gpu {
namespace {

constexpr int kPrepThreads = 512;
constexpr int kFinalizeThreads = 512;
constexpr size_t kPrepBytes = 256;  // keeps the row-loss workspace after it aligned

/// Per-call scalars computed on the device by ce_prep.
template <class A>
struct CePrep {
  double denom;  // mean's denominator
  A coef;        // upstream scale (/ denom for mean)
  A W;           // sum of class weights (cols without weights)
};

template <class T>
struct CeParams {
  using A = typename acc_type<T>::type;
  const T* x;
  const void* target;  // i64 / i32 [rows], or T [rows, cols] for probability targets
  int target_i64;
  int prob;
  int input_is_logp;
  const A* w;  // [cols] or nullptr (all ones)
  int64_t rows;
  int64_t cols;
  int64_t ignore_index;
  A eps;
  A zl;
  A softcap;
  T* loss_none;  // reduction none: [rows] of T; else nullptr
  A* row_loss;   // mean / sum: [rows] workspace; else nullptr
  T* grad;       // [rows, cols] or nullptr
  const CePrep<A>* prep;
};

__device__ __forceinline__ int64_t target_at(const void* t, int is_i64, int64_t n) {
  return is_i64 ? static_cast<const int64_t*>(t)[n]
                : static_cast<int64_t>(static_cast<const int32_t*>(t)[n]);
}

template <class A>
__global__ void __launch_bounds__(kPrepThreads)
    ce_prep_kernel(const void* target, int target_i64, int prob, int op, const A* w, int64_t rows,
                   int64_t cols, int64_t ignore_index, int mean, double grad_scale,
                   const float* grad_scale_ptr, CePrep<A>* out, DataError* err) {
  const int t = threadIdx.x;
  A wsum = A(0);
  if (w != nullptr) {
    for (int64_t c = t; c < cols; c += kPrepThreads) wsum += w[c];
  }
  wsum = block_allreduce<kPrepThreads>(wsum, SumOp{});

  double d = 0.0;
  long long bad = LLONG_MAX;
  if (!prob) {
    for (int64_t n = t; n < rows; n += kPrepThreads) {
      const int64_t y = target_at(target, target_i64, n);
      if (y == ignore_index) continue;
      if (y < 0 || y >= cols) {
        if (bad == LLONG_MAX) bad = n;  // rows visit in increasing order: first is smallest
        continue;
      }
      d += w != nullptr ? static_cast<double>(w[y]) : 1.0;
    }
  }
  d = block_allreduce<kPrepThreads>(d, SumOp{});
  bad = block_allreduce<kPrepThreads>(bad, MinOp{});

  if (t == 0) {
    if (bad != LLONG_MAX && err->code == kDataErrNone) {  // the first error is kept
      err->op = op;
      err->index = bad;
      err->limit = cols;
      err->target = static_cast<int64_t>(target_at(target, target_i64, bad));
      err->code = kDataErrTargetRange;
    }
    const double denom = prob ? static_cast<double>(rows) : d;
    const double scale = static_cast<double>(upstream_scale<A>(grad_scale, grad_scale_ptr));
    out->denom = denom;
    // A zero denominator: every row ignored (loss 0/0 = NaN, their gradient rows zeroed), or
    // counted rows whose class weights are all 0: PyTorch's 0/0 makes the loss and those
    // rows' gradients NaN (as the CPU backend).
    out->coef = static_cast<A>(!mean          ? scale
                               : denom == 0.0 ? static_cast<double>(NAN)
                                              : scale / denom);
    out->W = w != nullptr ? wsum : static_cast<A>(cols);
  }
}

template <class G, int V, class T, class A = typename acc_type<T>::type>
__device__ __forceinline__ void zero_row(T* gr, int64_t packs) {
  Pack<T, V> o;
#pragma unroll
  for (int k = 0; k < V; ++k) store<A>(o.v, k, A(0));
  for (int64_t j = G::rank(); j < packs; j += G::kSize) store_pack<V>(gr, j, o);
}

/// Class-index target y in [0, C). As the CPU backend, log-probabilities are taken as
/// (z - max) - log(sum) and probabilities as exp(z - max) / sum, never through
/// lse = max + log(sum), which rounds at a large max; lse only enters the z-loss terms.
template <class G, int V, class T, class A = typename acc_type<T>::type>
__device__ __forceinline__ A index_row(const CeParams<T>& p, const T* xr, T* gr, int64_t y, A W,
                                       A coef) {
  const int64_t C = p.cols;
  const int64_t packs = C / V;
  const bool cap = p.softcap != A(0);
  const bool smooth = p.eps != A(0);
  // smoothing: a = sum w, b = sum w (z - max)
  RowStats<A> st{empty_max_sum<A>(), A(0), A(0)};
  for_each_pack<G, V>(xr, packs, [&](int64_t j, const Pack<T, V>& px) {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      A z = load<A>(px.v, k);
      if (cap) z = softcap_apply(z, p.softcap);
      if (smooth) {
        online_add_weighted(st, z, p.w != nullptr ? p.w[j * V + k] : A(1));
      } else {
        online_add(st.ms, z);
      }
    }
  });
  if (smooth) {
    st = G::allreduce(st, MergeOp{});
  } else {
    st.ms = G::allreduce(st.ms, MergeOp{});
  }
  const A m = st.ms.m;
  const A ls = log_acc(st.ms.s);
  A z_y = load<A>(xr, y);
  if (cap) z_y = softcap_apply(z_y, p.softcap);
  const A w_y = p.w != nullptr ? p.w[y] : A(1);
  const A Cf = static_cast<A>(C);
  A loss = ce_index_row_loss(ls, z_y - m, w_y, st.b, W, p.eps, Cf, A(0));
  const A lse = m + ls;
  if (p.zl != A(0)) loss += p.zl * lse * lse;
  if (gr != nullptr) {
    const CeIndexRow<A> rg = ce_index_row_grad(lse, w_y, W, p.eps, Cf, p.zl);
    const A inv_s = A(1) / st.ms.s;
    for_each_pack<G, V>(xr, packs, [&](int64_t j, const Pack<T, V>& px) {
      Pack<T, V> o;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const int64_t c = j * V + k;
        A z = load<A>(px.v, k);
        if (cap) z = softcap_apply(z, p.softcap);
        const A w_c = p.w != nullptr ? p.w[c] : A(1);
        A g = ce_index_grad(rg, exp_nonpos(z - m) * inv_s, w_c, c == y) * coef;
        if (cap) g *= softcap_dzdx(z, p.softcap);
        store<A>(o.v, k, g);
      }
      store_pack<V>(gr, j, o);
    });
  }
  return loss;
}

/// Probability targets t (same shape as the input), smoothed t' = (1-eps) t + eps/C;
/// log-probabilities and probabilities as in index_row.
template <class G, int V, class T, class A = typename acc_type<T>::type>
__device__ __forceinline__ A prob_row(const CeParams<T>& p, const T* xr, const T* tr, T* gr,
                                      A coef) {
  const int64_t C = p.cols;
  const int64_t packs = C / V;
  const bool cap = p.softcap != A(0);
  const A Cf = static_cast<A>(C);
  RowStats<A> st{empty_max_sum<A>(), A(0), A(0)};  // a = sum w t', b = sum w t' (z - max)
  for_each_pack2<G, V>(xr, tr, packs, [&](int64_t j, const Pack<T, V>& px, const Pack<T, V>& pt) {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      A z = load<A>(px.v, k);
      if (cap) z = softcap_apply(z, p.softcap);
      const A w_c = p.w != nullptr ? p.w[j * V + k] : A(1);
      const A wt = w_c * ce_smoothed_target(load<A>(pt.v, k), p.eps, Cf);
      online_add_weighted(st, z, wt);
    }
  });
  st = G::allreduce(st, MergeOp{});
  const A m = st.ms.m;
  const A ls = log_acc(st.ms.s);
  const A lse = m + ls;
  A loss = ce_prob_row_loss(ls, st.a, st.b, A(0));
  if (p.zl != A(0)) loss += p.zl * lse * lse;
  if (gr != nullptr) {
    const A inv_s = A(1) / st.ms.s;
    for_each_pack2<G, V>(xr, tr, packs, [&](int64_t j, const Pack<T, V>& px, const Pack<T, V>& pt) {
      Pack<T, V> o;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        A z = load<A>(px.v, k);
        if (cap) z = softcap_apply(z, p.softcap);
        const A w_c = p.w != nullptr ? p.w[j * V + k] : A(1);
        const A wt = w_c * ce_smoothed_target(load<A>(pt.v, k), p.eps, Cf);
        A g = ce_prob_grad(exp_nonpos(z - m) * inv_s, st.a, wt, p.zl, lse) * coef;
        if (cap) g *= softcap_dzdx(z, p.softcap);
        store<A>(o.v, k, g);
      }
      store_pack<V>(gr, j, o);
    });
  }
  return loss;
}

/// nll_loss: the input holds log-probabilities; gradient -w_y * coef at y, 0 elsewhere.
template <class G, int V, class T, class A = typename acc_type<T>::type>
__device__ __forceinline__ A nll_row(const CeParams<T>& p, const T* xr, T* gr, int64_t y, A coef) {
  const A w_y = p.w != nullptr ? p.w[y] : A(1);
  if (gr != nullptr) {
    const A gy = -w_y * coef;
    const int64_t packs = p.cols / V;
    for (int64_t j = G::rank(); j < packs; j += G::kSize) {
      Pack<T, V> o;
#pragma unroll
      for (int k = 0; k < V; ++k) store<A>(o.v, k, j * V + k == y ? gy : A(0));
      store_pack<V>(gr, j, o);
    }
  }
  return -w_y * load<A>(xr, y);
}

template <class T, bool kWarpPerRow, int V>
__global__ void __launch_bounds__(RowGroup<kWarpPerRow>::kThreads) ce_rows_kernel(CeParams<T> p) {
  using A = typename acc_type<T>::type;
  using G = RowGroup<kWarpPerRow>;
  const int64_t C = p.cols;
  const A coef = p.prep->coef;
  const A W = p.prep->W;
  for (int64_t r = G::first_row(); r < p.rows; r += G::row_stride()) {
    const T* xr = p.x + r * C;
    T* gr = p.grad != nullptr ? p.grad + r * C : nullptr;
    A loss;
    if (p.prob) {
      loss = prob_row<G, V>(p, xr, static_cast<const T*>(p.target) + r * C, gr, coef);
    } else {
      const int64_t y = target_at(p.target, p.target_i64, r);
      if (y == p.ignore_index || y < 0 || y >= C) {
        // ignored: contributes nothing; out of range: NaN here, reported by ce_prep
        loss = y == p.ignore_index ? A(0) : static_cast<A>(NAN);
        if (gr != nullptr) zero_row<G, V>(gr, C / V);
      } else if (p.input_is_logp) {
        loss = nll_row<G, V>(p, xr, gr, y, coef);
      } else {
        loss = index_row<G, V>(p, xr, gr, y, W, coef);
      }
    }
    if (G::rank() == 0) {
      if (p.loss_none != nullptr) {
        store<A>(p.loss_none, r, loss);
      } else {
        p.row_loss[r] = loss;
      }
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kFinalizeThreads)
    ce_finalize_kernel(const typename acc_type<T>::type* row_loss, int64_t rows, int mean,
                       const CePrep<typename acc_type<T>::type>* prep, T* loss) {
  double s = 0.0;
  for (int64_t n = threadIdx.x; n < rows; n += kFinalizeThreads) {
    s += static_cast<double>(row_loss[n]);
  }
  s = block_allreduce<kFinalizeThreads>(s, SumOp{});
  if (threadIdx.x == 0) {
    if (mean) s = prep->denom == 0.0 ? static_cast<double>(NAN) : s / prep->denom;
    store<double>(loss, 0, s);
  }
}

template <class T, int V>
void launch_rows(DeviceCtx& ctx, const CeParams<T>& p) {
  if (p.cols <= kWarpRowMaxCols) {
    TRAINRT_LAUNCH("cross_entropy rows (warp per row)", ce_rows_kernel<T, true, V>,
                   row_grid<true>(p.rows), RowGroup<true>::kThreads, ctx.stream, p);
  } else {
    TRAINRT_LAUNCH("cross_entropy rows (block per row)", ce_rows_kernel<T, false, V>,
                   row_grid<false>(p.rows), RowGroup<false>::kThreads, ctx.stream, p);
  }
}

template <class T>
void cross_entropy_t(DeviceCtx& ctx, const trainrt_cross_entropy_args& a) {
  using A = typename acc_type<T>::type;
  const bool reduce = a.reduction != TRAINRT_RED_NONE;
  if (!reduce && a.rows == 0) return;
  if (!a.prob_targets && a.target_dtype != TRAINRT_I64 && a.target_dtype != TRAINRT_I32) {
    fail("cross_entropy: class-index targets must be i64 or i32, got dtype " +
         std::to_string(a.target_dtype));
  }
  const size_t rows = static_cast<size_t>(a.rows);
  Workspace ws(ctx, kPrepBytes + (reduce ? rows * sizeof(A) : 0));
  auto* prep = static_cast<CePrep<A>*>(ws.get());
  A* row_loss = reduce ? reinterpret_cast<A*>(static_cast<char*>(ws.get()) + kPrepBytes) : nullptr;
  const A* w = static_cast<const A*>(a.weight);
  const int op = a.input_is_logp ? kOpNllLoss : kOpCrossEntropy;
  const int mean = a.reduction == TRAINRT_RED_MEAN;

  TRAINRT_LAUNCH("cross_entropy prep", ce_prep_kernel<A>, 1, kPrepThreads, ctx.stream, a.target,
                 a.target_dtype == TRAINRT_I64 ? 1 : 0, a.prob_targets, op, w, a.rows, a.cols,
                 a.ignore_index, mean, a.grad_scale, a.grad_scale_ptr, prep, data_error_sink(ctx));

  if (a.rows > 0) {
    CeParams<T> p;
    p.x = static_cast<const T*>(a.logits);
    p.target = a.target;
    p.target_i64 = a.target_dtype == TRAINRT_I64 ? 1 : 0;
    p.prob = a.prob_targets;
    p.input_is_logp = a.input_is_logp;
    p.w = w;
    p.rows = a.rows;
    p.cols = a.cols;
    p.ignore_index = a.ignore_index;
    p.eps = static_cast<A>(a.label_smoothing);
    p.zl = static_cast<A>(a.z_loss);
    p.softcap = static_cast<A>(a.softcap);
    p.loss_none = reduce ? nullptr : static_cast<T*>(a.loss);
    p.row_loss = row_loss;
    p.grad = static_cast<T*>(a.grad);
    p.prep = prep;
    if (rows_vectorizable<T>(a.cols, {a.logits, a.grad, a.prob_targets ? a.target : nullptr})) {
      launch_rows<T, vec_width<T>()>(ctx, p);
    } else {
      launch_rows<T, 1>(ctx, p);
    }
  }

  if (reduce) {
    TRAINRT_LAUNCH("cross_entropy finalize", ce_finalize_kernel<T>, 1, kFinalizeThreads, ctx.stream,
                   row_loss, a.rows, mean, prep, static_cast<T*>(a.loss));
  }
}

}  // namespace

void launch_cross_entropy(DeviceCtx& ctx, const trainrt_cross_entropy_args& a) {
  if (a.rows < 0 || a.cols < 0 || (a.rows > 0 && a.cols == 0)) {
    fail("cross_entropy: bad shape [" + std::to_string(a.rows) + ", " + std::to_string(a.cols) +
         "]");
  }
  dispatch_float(a.dtype, [&](auto tag) { cross_entropy_t<typename decltype(tag)::type>(ctx, a); });
}

}  // namespace gpu
}  // namespace trainrt
