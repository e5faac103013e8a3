// softmax / log_softmax over the last dimension of a contiguous [rows, cols] array.
//
// Contract. Forward reads each row twice (an online max/sum pass, then the output pass; the
// second read normally hits L1/L2) and writes y once. Backward reads y and dy twice (a dot or
// sum pass, then the output pass) and writes dx once. Nothing beyond a row's reduction state
// is stored: no temporaries, no workspace. Rows of up to 1024 elements go one warp per row,
// longer rows one 512-thread block per row; both with a grid-stride loop over rows. Rows are
// read with 16-byte vector accesses when every row start is 16-byte aligned, else element by
// element. Accumulation in f32 (f64 for f64). Same formulas as kernels/cpu/cpu_kernels.cpp.
#include "cuda_ops.h"
#include "device_utils.cuh"

namespace trainrt {
namespace gpu {
namespace {

template <class T, bool kWarpPerRow, int V>
__global__ void __launch_bounds__(RowGroup<kWarpPerRow>::kThreads)
    softmax_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int64_t cols,
                           int log) {
  using A = typename acc_type<T>::type;
  using G = RowGroup<kWarpPerRow>;
  const int64_t packs = cols / V;
  for (int64_t r = G::first_row(); r < rows; r += G::row_stride()) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    MaxSum<A> st = empty_max_sum<A>();
    for_each_pack<G, V>(xr, packs, [&](int64_t, const Pack<T, V>& p) {
#pragma unroll
      for (int k = 0; k < V; ++k) online_add(st, load<A>(p.v, k));
    });
    st = G::allreduce(st, MergeOp{});
    if (log) {
      // (z - max) - log(sum): an f32 lse = max + log(sum) would round at a large max
      const A m = st.m;
      const A ls = log_acc(st.s);
      for_each_pack<G, V>(xr, packs, [&](int64_t j, const Pack<T, V>& p) {
        Pack<T, V> o;
#pragma unroll
        for (int k = 0; k < V; ++k) store<A>(o.v, k, (load<A>(p.v, k) - m) - ls);
        store_pack<V>(yr, j, o);
      });
    } else {
      const A inv = A(1) / st.s;
      const A m = st.m;
      for_each_pack<G, V>(xr, packs, [&](int64_t j, const Pack<T, V>& p) {
        Pack<T, V> o;
#pragma unroll
        for (int k = 0; k < V; ++k) store<A>(o.v, k, exp_nonpos(load<A>(p.v, k) - m) * inv);
        store_pack<V>(yr, j, o);
      });
    }
  }
}

/// softmax:     dx = y * (dy - sum(y * dy))
/// log_softmax: dx = dy - exp(y) * sum(dy)
template <class T, bool kWarpPerRow, int V>
__global__ void __launch_bounds__(RowGroup<kWarpPerRow>::kThreads)
    softmax_backward_kernel(const T* __restrict__ y, const T* __restrict__ dy, T* __restrict__ dx,
                            int64_t rows, int64_t cols, int log) {
  using A = typename acc_type<T>::type;
  using G = RowGroup<kWarpPerRow>;
  const int64_t packs = cols / V;
  for (int64_t r = G::first_row(); r < rows; r += G::row_stride()) {
    const T* yr = y + r * cols;
    const T* dyr = dy + r * cols;
    T* dxr = dx + r * cols;
    A s = A(0);
    if (log) {
      for_each_pack<G, V>(dyr, packs, [&](int64_t, const Pack<T, V>& pd) {
#pragma unroll
        for (int k = 0; k < V; ++k) s += load<A>(pd.v, k);
      });
    } else {
      for_each_pack2<G, V>(yr, dyr, packs,
                           [&](int64_t, const Pack<T, V>& py, const Pack<T, V>& pd) {
#pragma unroll
                             for (int k = 0; k < V; ++k) s += load<A>(py.v, k) * load<A>(pd.v, k);
                           });
    }
    s = G::allreduce(s, SumOp{});
    for_each_pack2<G, V>(yr, dyr, packs,
                         [&](int64_t j, const Pack<T, V>& py, const Pack<T, V>& pd) {
                           Pack<T, V> o;
#pragma unroll
                           for (int k = 0; k < V; ++k) {
                             const A yv = load<A>(py.v, k);
                             const A dv = load<A>(pd.v, k);
                             store<A>(o.v, k, log ? dv - exp_nonpos(yv) * s : yv * (dv - s));
                           }
                           store_pack<V>(dxr, j, o);
                         });
  }
}

template <class T, int V>
void forward_t(DeviceCtx& ctx, const trainrt_softmax_args& a) {
  const T* x = static_cast<const T*>(a.x);
  T* y = static_cast<T*>(a.out);
  if (a.cols <= kWarpRowMaxCols) {
    TRAINRT_LAUNCH("softmax_forward (warp per row)", softmax_forward_kernel<T, true, V>,
                   row_grid<true>(a.rows), RowGroup<true>::kThreads, ctx.stream, x, y, a.rows,
                   a.cols, a.log);
  } else {
    TRAINRT_LAUNCH("softmax_forward (block per row)", softmax_forward_kernel<T, false, V>,
                   row_grid<false>(a.rows), RowGroup<false>::kThreads, ctx.stream, x, y, a.rows,
                   a.cols, a.log);
  }
}

template <class T, int V>
void backward_t(DeviceCtx& ctx, const trainrt_softmax_args& a) {
  const T* y = static_cast<const T*>(a.y);
  const T* dy = static_cast<const T*>(a.dy);
  T* dx = static_cast<T*>(a.out);
  if (a.cols <= kWarpRowMaxCols) {
    TRAINRT_LAUNCH("softmax_backward (warp per row)", softmax_backward_kernel<T, true, V>,
                   row_grid<true>(a.rows), RowGroup<true>::kThreads, ctx.stream, y, dy, dx, a.rows,
                   a.cols, a.log);
  } else {
    TRAINRT_LAUNCH("softmax_backward (block per row)", softmax_backward_kernel<T, false, V>,
                   row_grid<false>(a.rows), RowGroup<false>::kThreads, ctx.stream, y, dy, dx,
                   a.rows, a.cols, a.log);
  }
}

}  // namespace

void launch_softmax_forward(DeviceCtx& ctx, const trainrt_softmax_args& a) {
  if (a.rows <= 0 || a.cols <= 0) return;
  dispatch_float(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (rows_vectorizable<T>(a.cols, {a.x, a.out})) {
      forward_t<T, vec_width<T>()>(ctx, a);
    } else {
      forward_t<T, 1>(ctx, a);
    }
  });
}

void launch_softmax_backward(DeviceCtx& ctx, const trainrt_softmax_args& a) {
  if (a.rows <= 0 || a.cols <= 0) return;
  dispatch_float(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (rows_vectorizable<T>(a.cols, {a.y, a.dy, a.out})) {
      backward_t<T, vec_width<T>()>(ctx, a);
    } else {
      backward_t<T, 1>(ctx, a);
    }
  });
}

}  // namespace gpu
}  // namespace trainrt
