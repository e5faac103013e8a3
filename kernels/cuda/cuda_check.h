// The one checking path of the CUDA module. Every CUDA runtime and cuBLAS call and every
// kernel launch goes through a macro that, on failure, calls an out-of-line function with the
// expression, file and line; that function clears the runtime's per-thread error state and
// throws gpu::Failure. Every backend slot catches everything at the C boundary, stores the
// message in its thread-local last_error and returns non-zero (see cuda_backend.cpp).
//
// Host-only; included by the .cpp and .cu files alike.
#pragma once

#include <cublas_api.h>
#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace trainrt {
namespace gpu {

/// The only exception type thrown inside the module; never crosses the C boundary.
class Failure : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] void fail_cuda(cudaError_t err, const char* expr, const char* file, int line);
[[noreturn]] void fail_cublas(cublasStatus_t status, const char* expr, const char* file, int line);
[[noreturn]] void fail(const std::string& message);

}  // namespace gpu
}  // namespace trainrt

#define TRAINRT_CUDA_CHECK(expr)                                               \
  do {                                                                         \
    const cudaError_t trainrt_cuda_err_ = (expr);                              \
    if (trainrt_cuda_err_ != cudaSuccess)                                      \
      ::trainrt::gpu::fail_cuda(trainrt_cuda_err_, #expr, __FILE__, __LINE__); \
  } while (0)

#define TRAINRT_CUBLAS_CHECK(expr)                                                \
  do {                                                                            \
    const cublasStatus_t trainrt_cublas_st_ = (expr);                             \
    if (trainrt_cublas_st_ != CUBLAS_STATUS_SUCCESS)                              \
      ::trainrt::gpu::fail_cublas(trainrt_cublas_st_, #expr, __FILE__, __LINE__); \
  } while (0)

// Kernel launches are checked by TRAINRT_LAUNCH (device_utils.cuh), which calls fail_cuda
// with the file and line of the launch site.
