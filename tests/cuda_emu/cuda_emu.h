// The CUDA emulator's kernel-side header: force-included (-include) before everything else
// when the CUDA module's sources (kernels/cuda/*.cu, *.cpp) are compiled as C++ for the CPU
// (ctest cuda_emulator_*; see cuda_emu.cpp for the runtime side and what it cannot check).
//
// A kernel launch runs the grid's blocks one after another on the calling host thread; the
// threads of a block are fibers, switched only at __syncthreads / __syncthreads_or (block
// barriers) and at warp shuffles (warp barriers), so __shared__ memory is a static per host
// thread and every result is deterministic. Barrier divergence (a thread that waits at a
// barrier the others never reach) and a full-mask shuffle with an exited lane are reported as
// launch failures instead of hanging or reading garbage.
#pragma once

#if defined(__CUDACC__)
#error "cuda_emu.h is for compiling the CUDA sources with a host compiler"
#endif

// Before the CUDA headers: host_defines.h keeps a definition it finds.
#define __shared__ static thread_local
#define __launch_bounds__(...)

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

#define TRAINRT_CUDA_EMULATION 1

namespace trainrt_emu {

/// The running fiber's coordinates (valid inside a kernel only).
const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();

void syncthreads();
int syncthreads_or(int predicate);
/// Lane exchange of up to 16 bytes: every lane of the warp stores `in`, then reads lane
/// `src`'s value into `out`. mask: the lanes that must take part.
void warp_exchange(unsigned mask, const void* in, void* out, std::size_t bytes, int src_lane);
int lane_id();

/// Runs `body` on every thread of a grid of `grid` blocks of `block` threads on `stream`
/// (recorded instead while the stream is captured). Returns the launch's error code, which
/// also becomes the thread's last error as a real launch's does.
cudaError_t launch_grid(dim3 grid, dim3 block, std::size_t shared_bytes, cudaStream_t stream,
                        std::shared_ptr<std::function<void()>> body);

/// kernel<<<grid, block, shared_bytes, stream>>>(args...): the arguments are converted to the
/// kernel's parameter types once, at the launch, and each thread gets its own copy.
template <class... P, class... A>
cudaError_t launch(void (*kernel)(P...), dim3 grid, dim3 block, std::size_t shared_bytes,
                   cudaStream_t stream, A&&... args) {
  auto params = std::make_shared<std::tuple<std::decay_t<P>...>>(std::forward<A>(args)...);
  auto body = std::make_shared<std::function<void()>>(
      [kernel, params] { std::apply([kernel](const auto&... p) { kernel(p...); }, *params); });
  return launch_grid(grid, block, shared_bytes, stream, std::move(body));
}

}  // namespace trainrt_emu

#define threadIdx (::trainrt_emu::thread_idx())
#define blockIdx (::trainrt_emu::block_idx())
#define blockDim (::trainrt_emu::block_dim())
#define gridDim (::trainrt_emu::grid_dim())

inline void __syncthreads() { ::trainrt_emu::syncthreads(); }
inline int __syncthreads_or(int predicate) { return ::trainrt_emu::syncthreads_or(predicate); }

template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 16, "shuffle type");
  const int lane = ::trainrt_emu::lane_id();
  const int src = ((lane ^ lane_mask) & (width - 1)) | (lane & ~(width - 1));
  T out;
  ::trainrt_emu::warp_exchange(mask, &var, &out, sizeof(T), src);
  return out;
}

inline unsigned __float_as_uint(float x) {
  unsigned u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}
