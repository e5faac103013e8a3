// A fake CUDA backend module for the backend-selection tests (test_device.cpp). Built several
// times as libtrainrt_cuda.so, each copy in its own directory and with one of these defined:
//   FAKE_WRONG_VERSION   the entry returns a table whose api_version is 999
//   FAKE_NULL_ENTRY      the entry returns NULL (cannot serve the requested version)
//   FAKE_NO_ENTRY        no trainrt_backend_entry symbol at all
//   FAKE_ZERO_DEVICES    a correct table whose device_count reports 0 devices
//   FAKE_NO_DRIVER       device_count fails with "no CUDA driver (fake)"
// Every other slot fails cleanly: the core must never call them for an unusable module.
#include <stddef.h>
#include <stdint.h>

#include "backend_api.h"

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
#else
  *count = 0;
  return 0;
#endif
}

int fake_device_name(int32_t, char* buf, size_t len) {
  if (len > 0) buf[0] = '\0';
  return 1;
}
int fake_supports(int32_t, int32_t) { return 0; }
int fake_alloc(int32_t, size_t, void** out) {
  *out = nullptr;
  return 1;
}
int fake_free(int32_t, void*) { return 0; }
int fake_copy(int32_t, void*, const void*, size_t, int32_t) { return 1; }
int fake_memset_zero(int32_t, void*, size_t) { return 1; }
int fake_synchronize(int32_t) { return 1; }
int fake_cast(int32_t, const void*, int32_t, void*, int32_t, int64_t) { return 1; }
int fake_softmax(int32_t, const trainrt_softmax_args*) { return 1; }
int fake_cross_entropy(int32_t, const trainrt_cross_entropy_args*) { return 1; }
int fake_pointwise_loss(int32_t, const trainrt_pointwise_loss_args*) { return 1; }

trainrt_backend_v1 make_table() {
  trainrt_backend_v1 t{};
#if defined(FAKE_WRONG_VERSION)
  t.api_version = 999;
#else
  t.api_version = TRAINRT_BACKEND_API_VERSION;
#endif
  t.struct_size = sizeof(trainrt_backend_v1);
  t.name = "fake-cuda";
  t.last_error = &fake_last_error;
  t.device_count = &fake_device_count;
  t.device_name = &fake_device_name;
  t.supports = &fake_supports;
  t.alloc = &fake_alloc;
  t.free = &fake_free;
  t.copy = &fake_copy;
  t.memset_zero = &fake_memset_zero;
  t.synchronize = &fake_synchronize;
  t.cast = &fake_cast;
  t.softmax_forward = &fake_softmax;
  t.softmax_backward = &fake_softmax;
  t.cross_entropy = &fake_cross_entropy;
  t.pointwise_loss = &fake_pointwise_loss;
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
