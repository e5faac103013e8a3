// Multi-tensor apply: the launch machinery shared by the optimizer step, the multi-tensor norm
// and the multi-tensor scale (optim.cu, multi_tensor_norm.cu, multi_tensor_scale.cu).
//
// Contract. A call's tensor list (host arrays of device pointers and sizes) is cut into as few
// launches as the kernel-parameter limit allows. Each launch carries, by value in its kernel
// parameters (a __grid_constant__ struct, never copied to local memory), up to kCap tensors: kDepth
// device pointers per tensor (param, grad, states, model copy, ...), its numel, the running total
// of its chunks (a power of two from 4K to 64K elements, fixed per call by its total size; a chunk
// never spans two tensors) and whether all its pointers allow 16-byte accesses. Zero-element
// tensors are left out. The blocks of a launch walk its chunks with a grid stride (chunk
// blockIdx.x, then + gridDim.x, ...), finding each chunk's tensor by a forward scan of the running
// totals (the chunks of one block only move forward). Inside a chunk the threads take 16-byte
// packs, a few in flight per thread, with a scalar tail for the last numel % width elements of a
// tensor; a tensor whose pointers are not all aligned takes the scalar path throughout. Nothing
// goes to the device besides the kernel parameters, and the host arrays are not needed once the
// call returns, so a step can be captured in a CUDA graph.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <type_traits>
#include <utility>

#include "../../src/backend/backend_api.h"
#include "cuda_context.h"
#include "device_utils.cuh"

namespace trainrt {
namespace gpu {

/// Chunk sizes: a power of two from 4K to 64K elements (64K is PyTorch's and Apex's size),
/// picked per call from the call's total element count alone (mt_chunk_shift), never from
/// the device, so that per-chunk partials and therefore every result are the same on every
/// GPU. Large calls get 64K chunks; smaller ones get smaller chunks, aiming at
/// kMtTargetChunks, so that a mid-size step still spreads over every SM without leaving a few
/// blocks to finish a long chunk alone. Every size is a multiple of every pack width (8 at
/// most), so each chunk of an aligned tensor starts 16-byte aligned.
constexpr int kMtMinChunkShift = 12;
constexpr int kMtMaxChunkShift = 16;
constexpr int64_t kMtTargetChunks = 4096;
/// Threads per block of every multi-tensor kernel.
constexpr int kMtThreads = 256;
/// Chunks per launch: chunk indices and the grid stride stay far from int32 overflow.
constexpr int64_t kMtMaxChunksPerLaunch = int64_t{1} << 30;

// Kernel-parameter budget of one launch. CUDA 12.1 raised the limit from 4096 to 32764 bytes
// on Volta and newer (every architecture this module is built for) with driver R530 or newer;
// a CUDA 13 runtime needs a newer driver than that, so it is always safe there. An older
// toolkit keeps the classic 4 KB (its runtime may meet a pre-R530 driver through minor-version
// compatibility). Either way every argument struct is checked against it with a static_assert.
#if CUDART_VERSION >= 13000
constexpr size_t kMtParamBytes = 32764;
#else
constexpr size_t kMtParamBytes = 4096;
#endif

/// Tensors per launch that fit beside an `extra_bytes` header: per tensor kDepth pointers, an
/// int64 numel, an int32 running chunk count and a byte flag, plus 32 bytes for the three
/// counts and padding.
constexpr int mt_capacity(int depth, size_t extra_bytes) {
  return static_cast<int>((kMtParamBytes - extra_bytes - 32) /
                          (8 * static_cast<size_t>(depth) + 13));
}

/// The tensor table of one launch (see the contract above).
template <int D, int N>
struct TensorList {
  void* ptr[D][N];       // device pointers; a list that a tensor does not use holds nullptr
  int64_t numel[N];      // > 0
  int32_t chunk_end[N];  // chunks of tensors 0..t of this launch together
  uint8_t vec[N];        // 1: every non-null pointer of tensor t allows full-width packs
  int32_t n_tensors;     // <= N
  int32_t n_chunks;      // chunk_end[n_tensors - 1], <= kMtMaxChunksPerLaunch
  int32_t chunk_shift;   // chunks of 1 << chunk_shift elements
};

/// The kernel parameter of a multi-tensor kernel: the kernel's own header `x`, then the table.
template <int D, class Extra>
struct MtArgs {
  static constexpr int kDepth = D;
  static constexpr int kCap = mt_capacity(D, sizeof(Extra));
  static_assert(kCap >= 1, "no room for a tensor in the kernel parameters");
  Extra x;
  TensorList<D, kCap> list;
};

/// The block as a row group of device_utils.cuh's for_each_pack: all kMtThreads threads walk
/// one chunk together.
struct MtBlock {
  static constexpr int kSize = kMtThreads;
  __device__ static int rank() { return static_cast<int>(threadIdx.x); }
};

// ---------------------------------------------------------------------------------------
// host
// ---------------------------------------------------------------------------------------
inline bool aligned_to(const void* p, size_t bytes) {
  return p == nullptr || (reinterpret_cast<uintptr_t>(p) % bytes) == 0;
}

/// log2 of the chunk size of a call over `total` elements (see kMtTargetChunks).
inline int mt_chunk_shift(int64_t total) {
  int s = kMtMinChunkShift;
  while (s < kMtMaxChunkShift && (total >> (s + 1)) >= kMtTargetChunks) ++s;
  return s;
}

inline int64_t mt_chunks_of(int64_t numel, int shift) {
  return numel > 0 ? ((numel - 1) >> shift) + 1 : 0;
}

/// Elements of a tensor list (negative numels count as 0; the slots reject them first).
inline int64_t mt_total_elements(int64_t n_tensors, const int64_t* numels) {
  int64_t total = 0;
  for (int64_t i = 0; i < n_tensors; ++i) total += numels[i] > 0 ? numels[i] : 0;
  return total;
}

/// Chunks of a whole tensor list (for sizing per-chunk workspaces).
inline int64_t mt_total_chunks(int64_t n_tensors, const int64_t* numels, int shift) {
  int64_t total = 0;
  for (int64_t i = 0; i < n_tensors; ++i) total += mt_chunks_of(numels[i], shift);
  return total;
}

/// Resident blocks per SM of `kernel` at kMtThreads threads, cached per kernel and device
/// (a host-side query; it never waits for the device).
inline int mt_blocks_per_sm(const DeviceCtx& ctx, const void* kernel) {
  static std::mutex mu;
  // Leaked on purpose, like the device states: usable during static destruction.
  static auto* cache = new std::map<std::pair<const void*, int>, int>;
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_pair(kernel, ctx.device);
  const auto it = cache->find(key);
  if (it != cache->end()) return it->second;
  int n = 0;
  TRAINRT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kMtThreads, 0));
  if (n < 1) n = 1;
  cache->emplace(key, n);
  return n;
}

/// Grid of a launch over `n_chunks` chunks: one wave of resident blocks at most.
template <class K>
int64_t mt_grid(const DeviceCtx& ctx, K kernel, int64_t n_chunks) {
  const int64_t resident = static_cast<int64_t>(ctx.sm_count) *
                           mt_blocks_per_sm(ctx, reinterpret_cast<const void*>(kernel));
  return min64(n_chunks, resident);
}

/// Packs the tensors of a list into `args.list`, launch after launch, in chunks of
/// 1 << chunk_shift elements (the same for every launch of a call). For each tensor i with
/// numels[i] > 0, fill(i, ptrs, vec) stores its kDepth pointers and whether they all allow
/// full-width packs, and returns false to leave the tensor out. launch(args, chunk_base) is
/// called for every full table and for the last one; chunk_base counts the chunks of the
/// launches before it (for per-chunk workspaces). Returns the number of chunks launched.
template <class Args, class Fill, class Launch>
int64_t mt_for_each_launch(Args& args, int64_t n_tensors, const int64_t* numels, int chunk_shift,
                           Fill&& fill, Launch&& launch) {
  auto& l = args.list;
  l.chunk_shift = chunk_shift;
  l.n_tensors = 0;
  l.n_chunks = 0;
  int64_t done = 0;
  const auto flush = [&] {
    if (l.n_tensors == 0) return;
    launch(args, done);
    done += l.n_chunks;
    l.n_tensors = 0;
    l.n_chunks = 0;
  };
  for (int64_t i = 0; i < n_tensors; ++i) {
    if (numels[i] <= 0) continue;
    void* ptrs[Args::kDepth] = {};
    bool vec = false;
    if (!fill(i, ptrs, vec)) continue;
    const int64_t chunks = mt_chunks_of(numels[i], chunk_shift);
    if (chunks > kMtMaxChunksPerLaunch) {
      fail("multi-tensor apply: a tensor of " + std::to_string(numels[i]) +
           " elements is too large for one launch");
    }
    if (l.n_tensors == Args::kCap || l.n_chunks + chunks > kMtMaxChunksPerLaunch) flush();
    const int t = l.n_tensors++;
    for (int d = 0; d < Args::kDepth; ++d) l.ptr[d][t] = ptrs[d];
    l.numel[t] = numels[i];
    l.n_chunks += static_cast<int32_t>(chunks);
    l.chunk_end[t] = l.n_chunks;
    l.vec[t] = vec ? 1 : 0;
  }
  flush();
  return done;
}

/// Launches a multi-tensor kernel over the table in `args` with a resident-wave grid; checked
/// like TRAINRT_LAUNCH. The parameter struct must fit the launch's parameter budget.
template <class Args>
void mt_launch_checked(const char* file, int line, const char* what, void (*kernel)(Args),
                       const DeviceCtx& ctx, const Args& args) {
  static_assert(sizeof(Args) <= kMtParamBytes, "multi-tensor kernel parameters too large");
  launch_checked(file, line, what, kernel, mt_grid(ctx, kernel, args.list.n_chunks), kMtThreads,
                 ctx.stream, args);
}

/// TRAINRT_MT_LAUNCH("what", kernel<...>, ctx, args)
#define TRAINRT_MT_LAUNCH(...) ::trainrt::gpu::mt_launch_checked(__FILE__, __LINE__, __VA_ARGS__)

// ---------------------------------------------------------------------------------------
// device
// ---------------------------------------------------------------------------------------
/// Calls f(t, c, start, n) for the chunks of this block: t the tensor (index into the
/// table), c the chunk index in this launch, start its first element in the tensor, n its
/// length (1 .. 1 << chunk_shift). The block's threads all make the same calls (block-uniform),
/// so f may synchronise the block.
template <class List, class F>
__device__ __forceinline__ void mt_for_each_chunk(const List& l, F&& f) {
  const int shift = l.chunk_shift;
  const int chunk = 1 << shift;
  int t = 0;
  int32_t first = 0;  // first chunk of tensor t
  for (int32_t c = static_cast<int32_t>(blockIdx.x); c < l.n_chunks;
       c += static_cast<int32_t>(gridDim.x)) {
    while (c >= l.chunk_end[t]) {
      first = l.chunk_end[t];
      ++t;
    }
    const int64_t start = static_cast<int64_t>(c - first) << shift;
    const int64_t left = l.numel[t] - start;
    const int n = left < chunk ? static_cast<int>(left) : chunk;
    f(t, c, start, n);
  }
}

/// Width of a Pack type (for generic lambdas over packs of either width).
template <class P>
struct PackWidth;
template <class T, int V>
struct PackWidth<Pack<T, V>> {
  static constexpr int value = V;
};
template <class P>
constexpr int pack_width = PackWidth<std::remove_cv_t<std::remove_reference_t<P>>>::value;

/// One pass over a chunk of one list of T (n elements from base): f(pack) for every
/// full-width pack when `vec`, then for the remaining elements one at a time, so f must take
/// any Pack<T, W>& (a generic lambda). With kWrite the pack is stored back after f.
template <bool kWrite, class T, class F>
__device__ __forceinline__ void mt_chunk_packs(T* base, int n, bool vec, F&& f) {
  using E = std::remove_const_t<T>;
  constexpr int V = vec_width<E>();
  int head = 0;
  if (vec) {
    const int packs = n / V;
    for_each_pack<MtBlock, V>(base, packs, [&](int64_t j, Pack<E, V> pk) {
      f(pk);
      if constexpr (kWrite) store_pack<V>(base, j, pk);
    });
    head = packs * V;
  }
  T* const rest = base + head;
  for_each_pack<MtBlock, 1>(rest, n - head, [&](int64_t j, Pack<E, 1> pk) {
    f(pk);
    if constexpr (kWrite) store_pack<1>(rest, j, pk);
  });
}

}  // namespace gpu
}  // namespace trainrt
