// A fake CUDA backend module for the backend-selection tests (test_device.cpp). Built several
// times as libtrainrt_cuda.so, each copy in its own directory and with one of these defined:
//   FAKE_WRONG_VERSION   the entry returns a table whose api_version is 999
//   FAKE_WRONG_ARGS      a table of the right version and size whose args_revision is 1 (a
//                        module built before the argument structs last grew)
//   FAKE_NULL_ENTRY      the entry returns NULL (cannot serve the requested version)
//   FAKE_NO_ENTRY        no trainrt_backend_entry symbol at all
//   FAKE_ZERO_DEVICES    a correct table whose device_count reports 0 devices
//   FAKE_NO_DRIVER       device_count fails with "no CUDA driver (fake)"
//   FAKE_HOST_MEMORY     one usable "cuda" device whose memory is host memory (alloc, free,
//                        copy, memset and synchronize work) and that computes nothing: for the
//                        checks that tensors on two devices are refused before any kernel
//                        runs (ctest multi_device_errors). Its graph slots pretend: between
//                        graph_begin and graph_end the device is "capturing", and a copy to
//                        or from the host then fails, as in a real capture, and so does an
//                        allocation (a real capture would record it into the graph, which
//                        trainrt refuses itself first) (ctest graph_capture_refusals)
// Every other slot fails cleanly (except graph_capturing, which reports 0, and graph_destroy,
// which succeeds): the core must never call them for an unusable module, and for
// FAKE_HOST_MEMORY an op that reaches one fails with "fake backend: not implemented".
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend_api.h"
#include "fake_backend_table.hpp"

#define FAKE_EXPORT extern "C" __attribute__((visibility("default")))

#if defined(FAKE_NO_ENTRY)

FAKE_EXPORT int trainrt_fake_backend_without_entry(void) { return 0; }

#else

namespace {

const char* g_error = "fake backend: not implemented";

const char* fake_last_error(void) { return g_error; }

int fake_device_count(int32_t* count) {
#if defined(FAKE_NO_DRIVER)
  g_error = "no CUDA driver (fake)";
  *count = 0;
  return 1;
#elif defined(FAKE_HOST_MEMORY)
  *count = 1;
  return 0;
#else
  *count = 0;
  return 0;
#endif
}

#if defined(FAKE_HOST_MEMORY)
int g_capturing = 0;
int refuse_in_capture() {
  g_error = "fake backend: a host copy or an allocation during a graph capture";
  return 1;
}
int fake_device_name(int32_t, char* buf, size_t len) {
  const char name[] = "fake device (host memory)";
  if (len > 0) {
    strncpy(buf, name, len - 1);
    buf[len - 1] = '\0';
  }
  return 0;
}
int fake_alloc(int32_t, size_t bytes, void** out) {
  *out = nullptr;
  if (g_capturing) return refuse_in_capture();
  *out = bytes == 0 ? nullptr : malloc(bytes);
  return bytes != 0 && *out == nullptr ? 1 : 0;
}
int fake_free(int32_t, void* p) {
  free(p);
  return 0;
}
int fake_copy(int32_t, void* dst, const void* src, size_t bytes, int32_t kind) {
  if (g_capturing && kind != TRAINRT_COPY_D2D) return refuse_in_capture();
  if (bytes > 0) memmove(dst, src, bytes);
  return 0;
}
int fake_memset_zero(int32_t, void* dst, size_t bytes) {
  if (bytes > 0) memset(dst, 0, bytes);
  return 0;
}
int fake_synchronize(int32_t) { return 0; }
#else
int fake_device_name(int32_t, char* buf, size_t len) {
  if (len > 0) buf[0] = '\0';
  return 1;
}
int fake_alloc(int32_t, size_t, void** out) {
  *out = nullptr;
  return 1;
}
int fake_free(int32_t, void*) { return 0; }
int fake_copy(int32_t, void*, const void*, size_t, int32_t) { return 1; }
int fake_memset_zero(int32_t, void*, size_t) { return 1; }
int fake_synchronize(int32_t) { return 1; }
#endif
int fake_supports(int32_t, int32_t) { return 0; }
int fake_cast(int32_t, const void*, int32_t, void*, int32_t, int64_t) { return 1; }
int fake_softmax_forward(int32_t, const trainrt_softmax_args*) { return 1; }
int fake_softmax_backward(int32_t, const trainrt_softmax_args*) { return 1; }
int fake_cross_entropy(int32_t, const trainrt_cross_entropy_args*) { return 1; }
int fake_pointwise_loss(int32_t, const trainrt_pointwise_loss_args*) { return 1; }
int fake_optimizer_step(int32_t, const trainrt_optim_step_args*) { return 1; }
int fake_multi_tensor_norm(int32_t, const trainrt_multi_tensor_norm_args*) { return 1; }
int fake_multi_tensor_scale(int32_t, const trainrt_multi_tensor_scale_args*) { return 1; }
int fake_amp(int32_t, const trainrt_amp_args*) { return 1; }
int fake_gemm(int32_t, const trainrt_gemm_args*) { return 1; }
int fake_nn_pointwise(int32_t, const trainrt_nn_pointwise_args*) { return 1; }
int fake_bias(int32_t, const trainrt_bias_args*) { return 1; }
#if defined(FAKE_HOST_MEMORY)
int g_graph_token = 0;  // the one "graph" handle
int fake_graph_begin(int32_t) {
  if (g_capturing) {
    g_error = "fake backend: already capturing";
    return 1;
  }
  g_capturing = 1;
  return 0;
}
int fake_graph_end(int32_t, void** graph) {
  g_capturing = 0;
  *graph = &g_graph_token;
  return 0;
}
int fake_graph_launch(int32_t, void* graph) { return graph == &g_graph_token ? 0 : 1; }
int fake_graph_capturing(int32_t, int32_t* capturing) {
  *capturing = g_capturing;
  return 0;
}
#else
int fake_graph_begin(int32_t) { return 1; }
int fake_graph_end(int32_t, void**) { return 1; }
int fake_graph_launch(int32_t, void*) { return 1; }
int fake_graph_capturing(int32_t, int32_t* capturing) {
  *capturing = 0;
  return 0;
}
#endif
int fake_graph_destroy(int32_t, void*) { return 0; }

trainrt_backend_v1 make_table() {
  trainrt_backend_v1 t{};
#if defined(FAKE_WRONG_VERSION)
  t.api_version = 999;
#else
  t.api_version = TRAINRT_BACKEND_API_VERSION;
#endif
  t.struct_size = sizeof(trainrt_backend_v1);
#if defined(FAKE_WRONG_ARGS)
  t.args_revision = 1;
#else
  t.args_revision = TRAINRT_BACKEND_ARGS_REVISION;
#endif
  t.name = "fake-cuda";
  TRAINRT_FAKE_BACKEND_SLOTS(t);
  return t;
}

}  // namespace

FAKE_EXPORT const trainrt_backend_v1* trainrt_backend_entry(uint32_t requested_api_version) {
  (void)requested_api_version;
#if defined(FAKE_NULL_ENTRY)
  return nullptr;
#else
  static const trainrt_backend_v1 table = make_table();
  return &table;
#endif
}

#endif
