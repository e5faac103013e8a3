// Building blocks shared by the CUDA kernels: dtype dispatch, 16-byte packs, deterministic
// warp / block reductions, the warp-per-row / block-per-row row groups, the online max/sum
// update and the checked launch. The math itself comes from kernels/common.
//
// Reductions are deterministic: warps reduce with an xor butterfly (every lane ends with the
// same bits, the operators are commutative), blocks reduce the per-warp values in warp order.
// No float atomics anywhere.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>

#include "../common/losses.h"
#include "cuda_check.h"

namespace trainrt {
namespace gpu {

using namespace ::trainrt::TRAINRT_KNS;  // f16_t, bf16_t, load/store, MaxSum, the loss math

constexpr unsigned kFullMask = 0xffffffffu;

// ---------------------------------------------------------------------------------------
// host: dtype dispatch, alignment, checked launches
// ---------------------------------------------------------------------------------------
template <class T>
struct Tag {
  using type = T;
};

/// Calls f(Tag<T>{}) for the floating dtypes; fails for anything else.
template <class F>
void dispatch_float(int32_t dtype, F&& f) {
  switch (dtype) {
    case TRAINRT_F32: f(Tag<float>{}); return;
    case TRAINRT_F64: f(Tag<double>{}); return;
    case TRAINRT_F16: f(Tag<f16_t>{}); return;
    case TRAINRT_BF16: f(Tag<bf16_t>{}); return;
    default: break;
  }
  fail("unsupported dtype " + std::to_string(dtype) + " (expected f32, f16, bf16 or f64)");
}

/// Elements of T in one 16-byte vector access.
template <class T>
constexpr int vec_width() {
  return 16 / static_cast<int>(sizeof(T));
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

/// Rows of `cols` elements of T can be read with 16-byte accesses when every row start of
/// every array is 16-byte aligned: each base pointer (nullptr = unused) aligned and cols a
/// multiple of the vector width.
template <class T>
bool rows_vectorizable(int64_t cols, std::initializer_list<const void*> bases) {
  if (cols % vec_width<T>() != 0) return false;
  for (const void* p : bases) {
    if (p != nullptr && !aligned16(p)) return false;
  }
  return true;
}

/// The module's one kernel launch site (multi_tensor.cuh's launches come through here too).
template <class... P, class... Args>
void launch_checked(const char* file, int line, const char* name, void (*kernel)(P...),
                    int64_t grid, int block, cudaStream_t stream, Args&&... args) {
  if (grid <= 0) return;
#if defined(TRAINRT_CUDA_EMULATION)  // tests/cuda_emu: the same sources on the CPU
  ::trainrt_emu::launch(kernel, dim3(static_cast<unsigned>(grid)),
                        dim3(static_cast<unsigned>(block)), 0, stream, std::forward<Args>(args)...);
#else
  // clang-format off
  kernel<<<static_cast<unsigned>(grid), static_cast<unsigned>(block), 0, stream>>>(
      std::forward<Args>(args)...);
  // clang-format on
#endif
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) fail_cuda(e, name, file, line);
}

/// TRAINRT_LAUNCH("what", kernel<...>, grid, block, stream, kernel arguments...)
#define TRAINRT_LAUNCH(...) ::trainrt::gpu::launch_checked(__FILE__, __LINE__, __VA_ARGS__)

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// ---------------------------------------------------------------------------------------
// device: packs
// ---------------------------------------------------------------------------------------
/// V consecutive elements, aligned so that one access moves them all (V = 1: scalar).
template <class T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

/// Pack j of p, i.e. elements [j*V, j*V + V); p + j*V must be aligned to sizeof(Pack).
template <int V, class T>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p, int64_t j) {
  return reinterpret_cast<const Pack<T, V>*>(p)[j];
}
template <int V, class T>
__device__ __forceinline__ void store_pack(T* p, int64_t j, const Pack<T, V>& v) {
  reinterpret_cast<Pack<T, V>*>(p)[j] = v;
}

// ---------------------------------------------------------------------------------------
// device: reductions
// ---------------------------------------------------------------------------------------
__device__ __forceinline__ float shfl_xor(float v, int m) {
  return __shfl_xor_sync(kFullMask, v, m);
}
__device__ __forceinline__ double shfl_xor(double v, int m) {
  return __shfl_xor_sync(kFullMask, v, m);
}
__device__ __forceinline__ long long shfl_xor(long long v, int m) {
  return __shfl_xor_sync(kFullMask, v, m);
}
template <class A>
__device__ __forceinline__ MaxSum<A> shfl_xor(MaxSum<A> v, int m) {
  return MaxSum<A>{shfl_xor(v.m, m), shfl_xor(v.s, m)};
}

/// Per-row statistics of the cross-entropy family: the online max/sum of exponentials ms,
/// a weight sum a = sum q and a weighted sum b = sum q (z - ms.m) kept relative to the
/// running maximum (shifted whenever the maximum moves), so that it never carries the
/// rounding error of a large |max| (see online_add_weighted and MergeOp).
template <class A>
struct RowStats {
  MaxSum<A> ms;
  A a;
  A b;
};
template <class A>
__device__ __forceinline__ RowStats<A> shfl_xor(RowStats<A> v, int m) {
  return RowStats<A>{shfl_xor(v.ms, m), shfl_xor(v.a, m), shfl_xor(v.b, m)};
}

/// a * (m_old - m_new): moves a sum of q (z - m_old) to q (z - m_new); 0 when nothing moves
/// (no weight, or the same maximum), so -inf maxima never produce 0 * inf.
template <class A>
__device__ __forceinline__ A shift_term(A a, A m_old, A m_new) {
  return a == A(0) || m_old == m_new ? A(0) : a * (m_old - m_new);
}

struct SumOp {
  template <class S>
  __device__ __forceinline__ S operator()(S x, S y) const {
    return x + y;
  }
};
struct MinOp {
  __device__ __forceinline__ long long operator()(long long x, long long y) const {
    return x < y ? x : y;
  }
};
struct MergeOp {
  template <class A>
  __device__ __forceinline__ MaxSum<A> operator()(MaxSum<A> x, MaxSum<A> y) const {
    return merge(x, y);
  }
  template <class A>
  __device__ __forceinline__ RowStats<A> operator()(RowStats<A> x, RowStats<A> y) const {
    const MaxSum<A> ms = merge(x.ms, y.ms);
    const A bx = x.b + shift_term(x.a, x.ms.m, ms.m);
    const A by = y.b + shift_term(y.a, y.ms.m, ms.m);
    return RowStats<A>{ms, x.a + y.a, bx + by};
  }
};

/// All 32 lanes get the same result (commutative op, xor butterfly). Whole warp must call.
template <class S, class Op>
__device__ __forceinline__ S warp_allreduce(S v, Op op) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v = op(v, shfl_xor(v, m));
  return v;
}

/// All kThreads threads get the same result; per-warp values folded in warp order. Whole
/// block must call (it synchronises twice, so it may be called repeatedly).
template <int kThreads, class S, class Op>
__device__ __forceinline__ S block_allreduce(S v, Op op) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "block size");
  constexpr int kWarps = kThreads / 32;
  __shared__ S partial[kWarps];
  v = warp_allreduce(v, op);
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
  __syncthreads();
  S r = partial[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) r = op(r, partial[w]);
  __syncthreads();
  return r;
}

// ---------------------------------------------------------------------------------------
// device: row groups. Short rows: one warp per row, 8 rows per 256-thread block. Long rows:
// one 512-thread block per row. Both loop over rows with a grid stride, so any row count
// works with a capped 1-D grid.
// ---------------------------------------------------------------------------------------
constexpr int64_t kWarpRowMaxCols = 1024;  // rows up to this many elements: warp per row
constexpr int64_t kMaxRowBlocks = int64_t{1} << 20;

template <bool kWarpPerRow>
struct RowGroup;

template <>
struct RowGroup<true> {
  static constexpr int kThreads = 256;
  static constexpr int kRowsPerBlock = kThreads / 32;
  static constexpr int kSize = 32;
  __device__ static int rank() { return threadIdx.x & 31; }
  __device__ static int64_t first_row() {
    return static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  }
  __device__ static int64_t row_stride() { return static_cast<int64_t>(gridDim.x) * kRowsPerBlock; }
  template <class S, class Op>
  __device__ static S allreduce(S v, Op op) {
    return warp_allreduce(v, op);
  }
};

template <>
struct RowGroup<false> {
  static constexpr int kThreads = 512;
  static constexpr int kRowsPerBlock = 1;
  static constexpr int kSize = kThreads;
  __device__ static int rank() { return threadIdx.x; }
  __device__ static int64_t first_row() { return blockIdx.x; }
  __device__ static int64_t row_stride() { return gridDim.x; }
  template <class S, class Op>
  __device__ static S allreduce(S v, Op op) {
    return block_allreduce<kThreads>(v, op);
  }
};

template <bool kWarpPerRow>
int64_t row_grid(int64_t rows) {
  return min64(ceil_div(rows, RowGroup<kWarpPerRow>::kRowsPerBlock), kMaxRowBlocks);
}

/// Packs a thread loads before it uses them: several loads in flight per thread keep a
/// memory-bound row loop near bandwidth, but every element of the batch is an unrolled copy of
/// the loop body, so the batch aims at 32 bytes and at most 8 elements (1 to 4 packs).
template <class T, int V>
constexpr int packs_in_flight() {
  constexpr int by_bytes = 32 / (V * static_cast<int>(sizeof(T)));
  constexpr int by_elems = 8 / V;
  constexpr int n = by_bytes < by_elems ? by_bytes : by_elems;
  return n < 1 ? 1 : (n > 4 ? 4 : n);
}

/// Calls f(j, pack j of a) for the packs of a row that belong to this thread of group G
/// (j = rank, rank + size, ...), loading packs_in_flight() packs before calling f on them.
template <class G, int V, class T, class F>
__device__ __forceinline__ void for_each_pack(const T* a, int64_t packs, F&& f) {
  constexpr int kPacksInFlight = packs_in_flight<T, V>();
  for (int64_t j0 = G::rank(); j0 < packs; j0 += kPacksInFlight * G::kSize) {
    Pack<T, V> pa[kPacksInFlight];
#pragma unroll
    for (int u = 0; u < kPacksInFlight; ++u) {
      const int64_t j = j0 + static_cast<int64_t>(u) * G::kSize;
      if (j < packs) pa[u] = load_pack<V>(a, j);
    }
#pragma unroll
    for (int u = 0; u < kPacksInFlight; ++u) {
      const int64_t j = j0 + static_cast<int64_t>(u) * G::kSize;
      if (j < packs) f(j, pa[u]);
    }
  }
}

/// As for_each_pack over two arrays of the same shape: f(j, pack j of a, pack j of b).
template <class G, int V, class T, class F>
__device__ __forceinline__ void for_each_pack2(const T* a, const T* b, int64_t packs, F&& f) {
  constexpr int kPacksInFlight = packs_in_flight<T, V>();
  for (int64_t j0 = G::rank(); j0 < packs; j0 += kPacksInFlight * G::kSize) {
    Pack<T, V> pa[kPacksInFlight];
    Pack<T, V> pb[kPacksInFlight];
#pragma unroll
    for (int u = 0; u < kPacksInFlight; ++u) {
      const int64_t j = j0 + static_cast<int64_t>(u) * G::kSize;
      if (j < packs) {
        pa[u] = load_pack<V>(a, j);
        pb[u] = load_pack<V>(b, j);
      }
    }
#pragma unroll
    for (int u = 0; u < kPacksInFlight; ++u) {
      const int64_t j = j0 + static_cast<int64_t>(u) * G::kSize;
      if (j < packs) f(j, pa[u], pb[u]);
    }
  }
}

// ---------------------------------------------------------------------------------------
// device: online max / sum of exponentials, one element at a time. Same results as the
// CPU's blocked scan (kernels/cpu): -inf elements add nothing, a NaN or a +inf anywhere in the
// row makes the sum NaN (PyTorch gives NaN there too), and NaN sums stay NaN through merge().
// ---------------------------------------------------------------------------------------
template <class A>
__device__ __forceinline__ void online_add(MaxSum<A>& st, A v) {
  if (v > st.m) {
    // new maximum: rescale; (v - v + 1) is 1, or NaN for v = +inf
    st.s = st.s * exp_nonpos(st.m - v) + (v - v + A(1));
    st.m = v;
  } else if (v != neg_inf<A>()) {
    st.s += exp_nonpos(v - st.m);  // NaN v, or +inf v == m, give NaN
  }
}

/// online_add for z, plus a += q and b += q (z - max) relative to the running maximum. A -inf
/// element adds q * -inf (NaN for q = 0), as q (z - max) does for any finite final maximum.
template <class A>
__device__ __forceinline__ void online_add_weighted(RowStats<A>& st, A z, A q) {
  if (z > st.ms.m) {
    st.b += shift_term(st.a, st.ms.m, z);  // the new element itself adds q (z - z) = 0
  } else {
    st.b += q * (z == neg_inf<A>() ? z : z - st.ms.m);
  }
  online_add(st.ms, z);
  st.a += q;
}

template <class A>
__device__ __forceinline__ MaxSum<A> empty_max_sum() {
  return MaxSum<A>{neg_inf<A>(), A(0)};
}

/// The upstream gradient scale as the CPU computes it: (A)(grad_scale * *grad_scale_ptr).
template <class A>
__device__ __forceinline__ A upstream_scale(double grad_scale, const float* grad_scale_ptr) {
  return static_cast<A>(grad_scale *
                        (grad_scale_ptr != nullptr ? static_cast<double>(*grad_scale_ptr) : 1.0));
}

}  // namespace gpu
}  // namespace trainrt
