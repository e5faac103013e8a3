// Per-device state, the deferred data-error record and the failure functions behind the
// checking macros. See cuda_context.h and cuda_check.h.
#include "cuda_context.h"

#include <cublas_v2.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cuda_check.h"

namespace trainrt {
namespace gpu {
namespace {

/// "kernels/cuda/x.cu" rather than the absolute path the build passes in __FILE__.
const char* short_path(const char* file) {
  const char* p = std::strstr(file, "kernels/");
  return p != nullptr ? p : file;
}

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

std::string cuda_version_str(int v) { return format("%d.%d", v / 1000, (v % 1000) / 10); }

std::atomic<int> g_count{-1};  // device count once known

struct CtxTable {
  std::mutex mu;
  std::vector<DeviceCtx*> ctx;  // index = device; never freed (see cuda_context.h)
};

CtxTable& ctx_table() {
  static CtxTable* t = new CtxTable;  // leaked on purpose: usable during static destruction
  return *t;
}

DeviceCtx* create_ctx(int device) {
  auto* c = new DeviceCtx;
  c->device = device;
  TRAINRT_CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));

  cudaMemPoolProps props;
  std::memset(&props, 0, sizeof props);
  props.allocType = cudaMemAllocationTypePinned;
  props.handleTypes = cudaMemHandleTypeNone;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = device;
  TRAINRT_CUDA_CHECK(cudaMemPoolCreate(&c->pool, &props));
  std::uint64_t threshold = UINT64_MAX;  // keep freed memory in the pool for reuse
  TRAINRT_CUDA_CHECK(cudaMemPoolSetAttribute(c->pool, cudaMemPoolAttrReleaseThreshold, &threshold));

  TRAINRT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&c->d_error), sizeof(DataError)));
  TRAINRT_CUDA_CHECK(cudaMemsetAsync(c->d_error, 0, sizeof(DataError), c->stream));
  TRAINRT_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&c->h_error), sizeof(DataError)));
  std::memset(c->h_error, 0, sizeof(DataError));
  TRAINRT_CUDA_CHECK(cudaDeviceGetAttribute(&c->sm_count, cudaDevAttrMultiProcessorCount, device));
  TRAINRT_CUDA_CHECK(cudaStreamSynchronize(c->stream));
  return c;
}

}  // namespace

void fail_cuda(cudaError_t err, const char* expr, const char* file, int line) {
  (void)cudaGetLastError();  // a non-sticky error must not resurface at the next launch check
  throw Failure(format("CUDA error %s (%s) in %s at %s:%d", cudaGetErrorName(err),
                       cudaGetErrorString(err), expr, short_path(file), line));
}

void fail_cublas(cublasStatus_t status, const char* expr, const char* file, int line) {
  throw Failure(format("cuBLAS error %s in %s at %s:%d", cublasGetStatusString(status), expr,
                       short_path(file), line));
}

void fail(const std::string& message) { throw Failure(message); }

int device_count() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e == cudaSuccess) {
    g_count.store(n);
    return n;
  }
  (void)cudaGetLastError();
  const std::string detail =
      format("cudaGetDeviceCount: %s, %s", cudaGetErrorName(e), cudaGetErrorString(e));
  if (e == cudaErrorNoDevice) fail("no CUDA device found (" + detail + ")");
  int driver = 0;
  if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = 0;
  if (driver == 0) fail("no CUDA driver found (" + detail + ")");
  if (e == cudaErrorInsufficientDriver) {
    fail("the CUDA driver supports CUDA " + cuda_version_str(driver) +
         ", older than the CUDA runtime " + cuda_version_str(CUDART_VERSION) +
         " this module was built with (" + detail + ")");
  }
  fail("CUDA cannot be initialised (" + detail + ")");
}

DeviceCtx& activate(int32_t device) {
  (void)cudaGetLastError();  // drop a stale error left on this thread by someone else
  int n = g_count.load();
  if (n < 0) n = device_count();
  if (device < 0 || device >= n) {
    fail(format("CUDA device index %d is out of range: %d device(s) present", (int)device, n));
  }
  TRAINRT_CUDA_CHECK(cudaSetDevice(device));
  CtxTable& t = ctx_table();
  std::lock_guard<std::mutex> lock(t.mu);
  if (t.ctx.size() < static_cast<size_t>(n)) t.ctx.resize(static_cast<size_t>(n), nullptr);
  if (t.ctx[static_cast<size_t>(device)] == nullptr) {
    t.ctx[static_cast<size_t>(device)] = create_ctx(device);
  }
  return *t.ctx[static_cast<size_t>(device)];
}

void check_data_error(DeviceCtx& ctx) {
  std::lock_guard<std::mutex> lock(ctx.error_mu);
  if (!ctx.error_may_be_set.exchange(false)) {
    TRAINRT_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
    return;
  }
  // A failed read (e.g. inside a capture) leaves the record to the next check.
  struct Rearm {
    DeviceCtx& c;
    bool armed = true;
    ~Rearm() {
      if (armed) c.error_may_be_set.store(true);
    }
  } rearm{ctx};
  TRAINRT_CUDA_CHECK(cudaMemcpyAsync(ctx.h_error, ctx.d_error, sizeof(DataError),
                                     cudaMemcpyDeviceToHost, ctx.stream));
  TRAINRT_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  rearm.armed = false;
  if (ctx.h_error->code == kDataErrNone) return;
  const DataError e = *ctx.h_error;
  std::memset(ctx.h_error, 0, sizeof(DataError));
  TRAINRT_CUDA_CHECK(cudaMemsetAsync(ctx.d_error, 0, sizeof(DataError), ctx.stream));
  char buf[512];
  format_data_error(e, buf, sizeof buf);
  fail(buf);
}

void* stream_alloc(DeviceCtx& ctx, size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  const cudaError_t e = cudaMallocFromPoolAsync(&p, bytes, ctx.pool, ctx.stream);
  if (e == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) (void)cudaGetLastError();
    fail(format("out of memory on cuda:%d allocating %zu bytes (%zu of %zu bytes free)", ctx.device,
                bytes, free_b, total_b));
  }
  TRAINRT_CUDA_CHECK(e);
  return p;
}

cudaError_t stream_free(DeviceCtx& ctx, void* ptr) noexcept {
  if (ptr == nullptr) return cudaSuccess;
  const cudaError_t e = cudaFreeAsync(ptr, ctx.stream);
  if (e != cudaSuccess) (void)cudaGetLastError();
  return e;
}

cublasHandle_t blas_handle(DeviceCtx& ctx) {
  std::lock_guard<std::mutex> lock(ctx.blas_mu);
  if (ctx.blas == nullptr) {
    cublasHandle_t h = nullptr;
    TRAINRT_CUBLAS_CHECK(cublasCreate(&h));
    const cublasStatus_t st = cublasSetStream(h, ctx.stream);
    if (st != CUBLAS_STATUS_SUCCESS) {
      (void)cublasDestroy(h);
      TRAINRT_CUBLAS_CHECK(st);
    }
    ctx.blas = h;
  }
  return ctx.blas;
}

cublasLtHandle_t blas_lt_handle(DeviceCtx& ctx) {
  std::lock_guard<std::mutex> lock(ctx.blas_mu);
  if (ctx.blas_lt == nullptr) TRAINRT_CUBLAS_CHECK(cublasLtCreate(&ctx.blas_lt));
  return ctx.blas_lt;
}

}  // namespace gpu
}  // namespace trainrt
