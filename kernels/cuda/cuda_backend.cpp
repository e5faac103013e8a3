// The CUDA backend module libtrainrt_cuda.so: the trainrt_backend_v1 table (see
// src/backend/backend_api.h) and its one exported symbol, trainrt_backend_entry.
//
// Loading the module runs no CUDA call; the first call that needs the driver is
// device_count(), which fails cleanly (no driver, driver too old, no device) on machines
// without a usable GPU. Every slot runs inside guarded(): a gpu::Failure (or anything else)
// becomes the thread-local last_error message and a non-zero return, never an exception
// across the C boundary. All work of a device is ordered on that device's stream; the slots
// that must wait (device->host copy, synchronize) also read the deferred data-error record.
#include <cuda_runtime_api.h>

#include <cstdio>
#include <exception>
#include <new>
#include <string>

#include "../../src/backend/backend_api.h"
#include "cuda_check.h"
#include "cuda_context.h"
#include "cuda_ops.h"

#define TRAINRT_CUDA_MODULE_EXPORT __attribute__((visibility("default")))

namespace trainrt {
namespace gpu {
namespace {

thread_local std::string g_last_error;

void set_last_error(const char* message) noexcept {
  try {
    g_last_error = message;
  } catch (...) {
    g_last_error.clear();  // out of memory for the message itself
  }
}

/// Runs one slot body: 0 on success, 1 with last_error set on any failure.
template <class F>
int guarded(F&& body) noexcept {
  try {
    body();
    return 0;
  } catch (const std::bad_alloc&) {
    set_last_error("out of host memory in the CUDA backend");
  } catch (const std::exception& e) {
    set_last_error(e.what());
  } catch (...) {
    set_last_error("unknown error in the CUDA backend");
  }
  return 1;
}

void require(bool ok, const char* what) {
  if (!ok) fail(what);
}

const char* cuda_last_error() { return g_last_error.c_str(); }

int cuda_device_count(int32_t* count) {
  return guarded([&] {
    require(count != nullptr, "device_count: count is null");
    *count = 0;
    *count = device_count();
  });
}

int cuda_device_name(int32_t device, char* buf, size_t len) {
  return guarded([&] {
    require(buf != nullptr || len == 0, "device_name: buffer is null");
    const int n = device_count();
    if (device < 0 || device >= n) {
      fail("CUDA device index " + std::to_string(device) +
           " is out of range: " + std::to_string(n) + " device(s) present");
    }
    cudaDeviceProp prop;
    TRAINRT_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    if (len > 0) {
      std::snprintf(buf, len, "%s, compute capability %d.%d, %.1f GiB, %d SMs", prop.name,
                    prop.major, prop.minor,
                    static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0),
                    prop.multiProcessorCount);
    }
  });
}

int cuda_supports(int32_t op, int32_t dtype) {
  const bool flt =
      dtype == TRAINRT_F32 || dtype == TRAINRT_F16 || dtype == TRAINRT_BF16 || dtype == TRAINRT_F64;
  switch (op) {
    case TRAINRT_OP_CAST: return dtype >= TRAINRT_F32 && dtype <= TRAINRT_U8 ? 1 : 0;
    case TRAINRT_OP_SOFTMAX:
    case TRAINRT_OP_CROSS_ENTROPY:
    case TRAINRT_OP_POINTWISE_LOSS:
    case TRAINRT_OP_MULTI_TENSOR:
    case TRAINRT_OP_GEMM:
    case TRAINRT_OP_NN_POINTWISE: return flt ? 1 : 0;
    case TRAINRT_OP_OPTIMIZER_STEP: return dtype == TRAINRT_F32 ? 1 : 0;
    default: return 0;
  }
}

int cuda_alloc(int32_t device, size_t bytes, void** out) {
  return guarded([&] {
    require(out != nullptr, "alloc: out is null");
    *out = nullptr;
    DeviceCtx& ctx = activate(device);
    *out = stream_alloc(ctx, bytes);
  });
}

int cuda_free(int32_t device, void* ptr) {
  if (ptr == nullptr) return 0;
  return guarded([&] {
    DeviceCtx& ctx = activate(device);
    TRAINRT_CUDA_CHECK(stream_free(ctx, ptr));
  });
}

int cuda_copy(int32_t device, void* dst, const void* src, size_t bytes, int32_t kind) {
  return guarded([&] {
    cudaMemcpyKind k;
    switch (kind) {
      case TRAINRT_COPY_H2D: k = cudaMemcpyHostToDevice; break;
      case TRAINRT_COPY_D2H: k = cudaMemcpyDeviceToHost; break;
      case TRAINRT_COPY_D2D: k = cudaMemcpyDeviceToDevice; break;
      default: fail("copy: unknown copy kind " + std::to_string(kind));
    }
    require(bytes == 0 || (dst != nullptr && src != nullptr), "copy: null pointer");
    DeviceCtx& ctx = activate(device);
    // A host source in pageable memory is staged before cudaMemcpyAsync returns; a pinned
    // one must stay unchanged until the stream reaches the copy.
    if (bytes > 0) TRAINRT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, k, ctx.stream));
    if (kind == TRAINRT_COPY_D2H) check_data_error(ctx);  // waits for the copy too
  });
}

int cuda_memset_zero(int32_t device, void* dst, size_t bytes) {
  return guarded([&] {
    if (bytes == 0) return;
    require(dst != nullptr, "memset_zero: dst is null");
    DeviceCtx& ctx = activate(device);
    TRAINRT_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, ctx.stream));
  });
}

int cuda_synchronize(int32_t device) {
  return guarded([&] { check_data_error(activate(device)); });
}

int cuda_cast(int32_t device, const void* src, int32_t src_dtype, void* dst, int32_t dst_dtype,
              int64_t n) {
  return guarded([&] {
    require(n == 0 || (src != nullptr && dst != nullptr), "cast: null pointer");
    launch_cast(activate(device), src, src_dtype, dst, dst_dtype, n);
  });
}

int cuda_softmax_forward(int32_t device, const trainrt_softmax_args* a) {
  return guarded([&] {
    require(a != nullptr, "softmax_forward: args is null");
    launch_softmax_forward(activate(device), *a);
  });
}

int cuda_softmax_backward(int32_t device, const trainrt_softmax_args* a) {
  return guarded([&] {
    require(a != nullptr, "softmax_backward: args is null");
    launch_softmax_backward(activate(device), *a);
  });
}

int cuda_cross_entropy(int32_t device, const trainrt_cross_entropy_args* a) {
  return guarded([&] {
    require(a != nullptr, "cross_entropy: args is null");
    launch_cross_entropy(activate(device), *a);
  });
}

int cuda_pointwise_loss(int32_t device, const trainrt_pointwise_loss_args* a) {
  return guarded([&] {
    require(a != nullptr, "pointwise_loss: args is null");
    launch_pointwise_loss(activate(device), *a);
  });
}

// Optimizer, clipping and loss-scaling slots: enqueue only, never wait (the per-step scalars
// stay on the device; see optim.cu, multi_tensor_norm.cu, multi_tensor_scale.cu, amp.cu).
int cuda_optimizer_step(int32_t device, const trainrt_optim_step_args* a) {
  return guarded([&] {
    require(a != nullptr, "optimizer_step: args is null");
    launch_optimizer_step(activate(device), *a);
  });
}

int cuda_multi_tensor_norm(int32_t device, const trainrt_multi_tensor_norm_args* a) {
  return guarded([&] {
    require(a != nullptr, "multi_tensor_norm: args is null");
    launch_multi_tensor_norm(activate(device), *a);
  });
}

int cuda_multi_tensor_scale(int32_t device, const trainrt_multi_tensor_scale_args* a) {
  return guarded([&] {
    require(a != nullptr, "multi_tensor_scale: args is null");
    launch_multi_tensor_scale(activate(device), *a);
  });
}

int cuda_amp(int32_t device, const trainrt_amp_args* a) {
  return guarded([&] {
    require(a != nullptr, "amp: args is null");
    launch_amp(activate(device), *a);
  });
}

// Layer slots: enqueue only (nn.cu).
int cuda_gemm(int32_t device, const trainrt_gemm_args* a) {
  return guarded([&] {
    require(a != nullptr, "gemm: args is null");
    launch_gemm(activate(device), *a);
  });
}

int cuda_nn_pointwise(int32_t device, const trainrt_nn_pointwise_args* a) {
  return guarded([&] {
    require(a != nullptr, "nn_pointwise: args is null");
    launch_nn_pointwise(activate(device), *a);
  });
}

int cuda_bias(int32_t device, const trainrt_bias_args* a) {
  return guarded([&] {
    require(a != nullptr, "bias: args is null");
    launch_bias(activate(device), *a);
  });
}

// CUDA graphs: the device's stream is captured in thread-local mode (other threads' work is
// not disturbed; this thread may not make unsafe calls such as a synchronous copy).
int cuda_graph_begin(int32_t device) {
  return guarded([&] {
    DeviceCtx& ctx = activate(device);
    TRAINRT_CUDA_CHECK(cudaStreamBeginCapture(ctx.stream, cudaStreamCaptureModeThreadLocal));
  });
}

int cuda_graph_end(int32_t device, void** graph) {
  return guarded([&] {
    require(graph != nullptr, "graph_end: graph is null");
    *graph = nullptr;
    DeviceCtx& ctx = activate(device);
    cudaGraph_t g = nullptr;
    const cudaError_t end = cudaStreamEndCapture(ctx.stream, &g);
    if (end == cudaErrorStreamCaptureInvalidated) {
      (void)cudaGetLastError();
      fail(
          "the capture was invalidated by an earlier call that cannot be captured (a host "
          "copy, a synchronisation, an allocation or a free outside the capture's memory); "
          "nothing was captured");
    }
    TRAINRT_CUDA_CHECK(end);
    cudaGraphExec_t exec = nullptr;
    // Memory a replay allocates and does not free (none in the optimizer step) is freed
    // before the next replay.
    const cudaError_t e =
        cudaGraphInstantiateWithFlags(&exec, g, cudaGraphInstantiateFlagAutoFreeOnLaunch);
    cudaGraphDestroy(g);
    TRAINRT_CUDA_CHECK(e);
    *graph = exec;
  });
}

int cuda_graph_launch(int32_t device, void* graph) {
  return guarded([&] {
    require(graph != nullptr, "graph_launch: graph is null");
    DeviceCtx& ctx = activate(device);
    TRAINRT_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(graph), ctx.stream));
  });
}

int cuda_graph_destroy(int32_t device, void* graph) {
  return guarded([&] {
    if (graph == nullptr) return;
    activate(device);
    cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(graph));
  });
}

int cuda_graph_capturing(int32_t device, int32_t* capturing) {
  return guarded([&] {
    require(capturing != nullptr, "graph_capturing: capturing is null");
    DeviceCtx& ctx = activate(device);
    cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    TRAINRT_CUDA_CHECK(cudaStreamIsCapturing(ctx.stream, &st));
    *capturing = st == cudaStreamCaptureStatusNone ? 0 : 1;
  });
}

const trainrt_backend_v1& backend_table() {
  static const trainrt_backend_v1 table = [] {
    trainrt_backend_v1 t{};
    t.api_version = TRAINRT_BACKEND_API_VERSION;
    t.struct_size = sizeof(trainrt_backend_v1);
    t.args_revision = TRAINRT_BACKEND_ARGS_REVISION;
    t.name = "cuda";
    t.last_error = &cuda_last_error;
    t.device_count = &cuda_device_count;
    t.device_name = &cuda_device_name;
    t.supports = &cuda_supports;
    t.alloc = &cuda_alloc;
    t.free = &cuda_free;
    t.copy = &cuda_copy;
    t.memset_zero = &cuda_memset_zero;
    t.synchronize = &cuda_synchronize;
    t.cast = &cuda_cast;
    t.softmax_forward = &cuda_softmax_forward;
    t.softmax_backward = &cuda_softmax_backward;
    t.cross_entropy = &cuda_cross_entropy;
    t.pointwise_loss = &cuda_pointwise_loss;
    t.optimizer_step = &cuda_optimizer_step;
    t.multi_tensor_norm = &cuda_multi_tensor_norm;
    t.multi_tensor_scale = &cuda_multi_tensor_scale;
    t.amp = &cuda_amp;
    t.gemm = &cuda_gemm;
    t.nn_pointwise = &cuda_nn_pointwise;
    t.bias = &cuda_bias;
    t.graph_begin = &cuda_graph_begin;
    t.graph_end = &cuda_graph_end;
    t.graph_launch = &cuda_graph_launch;
    t.graph_destroy = &cuda_graph_destroy;
    t.graph_capturing = &cuda_graph_capturing;
    return t;
  }();
  return table;
}

}  // namespace
}  // namespace gpu
}  // namespace trainrt

/// The module's only exported symbol: the table for API version `requested`, or NULL.
extern "C" TRAINRT_CUDA_MODULE_EXPORT const trainrt_backend_v1* trainrt_backend_entry(
    uint32_t requested) {
  if (requested != TRAINRT_BACKEND_API_VERSION) return nullptr;
  return &trainrt::gpu::backend_table();
}
