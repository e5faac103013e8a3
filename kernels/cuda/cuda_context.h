// Per-device state of the CUDA module, created lazily on the first slot call that names the
// device (never at load time: dlopen must work on a machine with no driver).
//
// Each device gets one non-blocking stream on which every copy, allocation and kernel of the
// module is ordered, a memory pool for stream-ordered allocation (release threshold at the
// maximum so freed memory is kept for reuse), and the deferred data-error record: a DataError
// in device memory that kernels fill instead of asserting, plus a pinned host mirror it is
// copied into when synchronize() or a device->host copy checks it.
//
// The states live until the process ends and are deliberately never destroyed: the CUDA
// runtime may already be torn down when static destructors run, and the module is never
// unloaded.
#pragma once

#include <cublasLt.h>
#include <cublas_api.h>
#include <cuda_runtime_api.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>

#include "../common/data_error.h"

namespace trainrt {
namespace gpu {

struct DeviceCtx {
  int device = 0;
  cudaStream_t stream = nullptr;
  cudaMemPool_t pool = nullptr;
  DataError* d_error = nullptr;  // device memory, zero = no error
  DataError* h_error = nullptr;  // pinned host mirror
  // Set by every launch that may write d_error (data_error_sink), cleared by the check that
  // reads it: a synchronisation after kernels that cannot report (optimizer steps, norms,
  // GradScaler ops) copies nothing but the data asked for.
  std::atomic<bool> error_may_be_set{false};
  int sm_count = 1;
  std::mutex error_mu;  // serialises check_data_error on this device

  std::mutex blas_mu;  // guards the handles: their creation and every cuBLAS call on them
  cublasHandle_t blas = nullptr;       // created on first use, bound to `stream`
  cublasLtHandle_t blas_lt = nullptr;  // created on first use
};

/// Number of CUDA devices; throws Failure with the reason (no driver, no device, ...).
int device_count();

/// Makes `device` current on this thread (cudaSetDevice), creates its state on first use and
/// clears any stale per-thread runtime error. Throws Failure for a bad index.
DeviceCtx& activate(int32_t device);

/// Waits for the device's stream, then, if a kernel that may report one ran since the last
/// check, reads the deferred data-error record; if it holds an error, resets it and throws
/// Failure with the formatted message.
void check_data_error(DeviceCtx& ctx);

/// The device's data-error record, for a kernel launch that may write it (marks the record as
/// possibly set, so that the next check reads it).
inline DataError* data_error_sink(DeviceCtx& ctx) {
  ctx.error_may_be_set.store(true);
  return ctx.d_error;
}

/// Stream-ordered allocation from the device's pool (nullptr for 0 bytes).
void* stream_alloc(DeviceCtx& ctx, size_t bytes);
/// Stream-ordered free; never throws (returns the error code).
cudaError_t stream_free(DeviceCtx& ctx, void* ptr) noexcept;

/// cuBLAS / cuBLASLt handles of the device, created on first use (for the GEMM and optimizer
/// ops); the cuBLAS handle runs on the device's stream.
cublasHandle_t blas_handle(DeviceCtx& ctx);
cublasLtHandle_t blas_lt_handle(DeviceCtx& ctx);

/// A temporary device buffer on the device's stream, freed (stream-ordered) on scope exit.
class Workspace {
 public:
  Workspace(DeviceCtx& ctx, size_t bytes) : ctx_(ctx), ptr_(stream_alloc(ctx, bytes)) {}
  ~Workspace() {
    if (ptr_ != nullptr) (void)stream_free(ctx_, ptr_);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  void* get() const { return ptr_; }

 private:
  DeviceCtx& ctx_;
  void* ptr_;
};

}  // namespace gpu
}  // namespace trainrt
