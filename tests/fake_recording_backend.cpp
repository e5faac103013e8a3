// A simulated CUDA backend module for the CUDA graph tests without a GPU (ctest
// simulated_device_graphs and the other simulated_device_* ctests, tests/extra_tests.cmake). Built
// as libtrainrt_cuda.so in its own directory. It serves one "cuda" device whose memory is host
// memory and whose ops are the CPU backend's (src/backend/cpu_backend.cpp is compiled into this
// module), and it imitates what a CUDA stream capture does to the calls made between graph_begin
// and graph_end:
//   - every kernel slot, device-to-device copy and memset is recorded, not run. Its argument
//     struct and the host arrays it points to (pointer lists, sizes, dtypes) are copied at
//     that moment, as kernel parameters are baked into a captured launch; device memory is
//     read when the graph is launched;
//   - a copy to or from the host, a synchronize, an allocation and a free fail, and the
//     failure invalidates the capture: every later call recorded into it fails, and
//     graph_end fails and returns no graph, as cudaStreamEndCapture does after
//     cudaErrorStreamCaptureInvalidated. (CUDA would record an allocation into the graph
//     instead; the core refuses the ones it makes itself, so failing is the stricter check.
//     A freed block is leaked, as CUDA leaves it.)
//   - graph_launch runs the recorded calls in order; graph_destroy frees them.
// It also counts the host transfers and the recorded and replayed calls, for the tests that
// check how many copies a step makes: trainrt_fake_counters() (exported; the tests find it
// with dlopen(RTLD_NOLOAD) on this module).
//
// What it cannot tell: anything about the CUDA module itself (its kernels, its launch tables,
// a CUDA backend that reads host memory at launch time in a way this copy of the arguments
// does not, its first-use setup of a device or of cuBLAS inside a capture); that argument
// errors the CUDA launchers report at capture time show here only at replay; and what
// becomes of allocations a real capture records (graph-owned memory).
#include <stddef.h>
#include <stdint.h>

#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include <spdlog/logger.h>

#include "backend_api.h"
#include "fake_backend_table.hpp"

namespace trainrt {
namespace detail {
const trainrt_backend_v1& cpu_backend();  // src/backend/cpu_backend.cpp, compiled in

/// The core's logger, which cpu_gemm.cpp logs to: here a logger with no sinks.
std::shared_ptr<spdlog::logger> log() {
  // leaked, as the core's
  static auto* l =
      new std::shared_ptr<spdlog::logger>(std::make_shared<spdlog::logger>("trainrt-fake-device"));
  return *l;
}
}  // namespace detail
}  // namespace trainrt

extern "C" {
/// Counters since the module was loaded (or since the last reset): host-to-device and
/// device-to-host copies outside a capture, calls recorded into graphs, calls replayed, and
/// blocks freed.
struct trainrt_fake_counters_v1 {
  int64_t h2d, d2h, recorded, replayed, frees;
};
}

#define FAKE_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

using Call = std::function<int()>;

struct Graph {
  std::vector<Call> calls;
};

thread_local std::string g_error;
// Counted from any thread (a DataLoader's prefetch thread copies too): under g_counters_mu.
trainrt_fake_counters_v1 g_counters{};
std::mutex g_counters_mu;
void count(std::int64_t trainrt_fake_counters_v1::*field) {
  std::lock_guard<std::mutex> lock(g_counters_mu);
  ++(g_counters.*field);
}
// The capture in progress (one device, one stream): its calls, and why it was invalidated.
std::unique_ptr<Graph> g_capture;
std::string g_invalidated;

const trainrt_backend_v1& cpu() { return trainrt::detail::cpu_backend(); }

int fail(const std::string& m) {
  g_error = m;
  return 1;
}

/// A call the CPU backend failed: its message, marked as the fake device's.
int cpu_rc(int rc) {
  if (rc != 0) g_error = std::string("fake device: ") + cpu().last_error();
  return rc;
}

/// What a capture cannot contain: fails, and invalidates the capture.
int illegal_in_capture(const char* what) {
  if (g_invalidated.empty()) g_invalidated = what;
  return fail(std::string("fake device: ") + what +
              " during a graph capture (the capture is now invalidated)");
}

/// Runs `call` now, or records it into the capture in progress.
int run_or_record(Call call) {
  if (g_capture && !g_invalidated.empty()) {  // CUDA: cudaErrorStreamCaptureInvalidated
    return fail("fake device: the capture was invalidated earlier, by " + g_invalidated);
  }
  if (g_capture) {
    g_capture->calls.push_back(std::move(call));
    count(&trainrt_fake_counters_v1::recorded);
    return 0;
  }
  return call();
}

template <class T>
std::vector<T> copy_of(const T* p, int64_t n) {
  return p == nullptr ? std::vector<T>() : std::vector<T>(p, p + n);
}

template <class T>
const T* data_or_null(const std::vector<T>& v, const void* original) {
  return original == nullptr ? nullptr : v.data();
}

const char* fake_last_error(void) { return g_error.c_str(); }

int fake_device_count(int32_t* count) {
  *count = 1;
  return 0;
}

int fake_device_name(int32_t, char* buf, size_t len) {
  const char name[] = "fake device (host memory, CPU kernels, recorded graphs)";
  if (len > 0) {
    std::strncpy(buf, name, len - 1);
    buf[len - 1] = '\0';
  }
  return 0;
}

int fake_supports(int32_t op, int32_t dtype) { return cpu().supports(op, dtype); }

int fake_alloc(int32_t d, size_t bytes, void** out) {
  *out = nullptr;
  if (g_capture) return illegal_in_capture("an allocation");
  return cpu_rc(cpu().alloc(d, bytes, out));
}

int fake_free(int32_t d, void* p) {
  // CUDA: cudaFreeAsync in a capture takes only memory allocated in that capture, and this
  // device allocates none there. The block is leaked, as on CUDA.
  if (g_capture && p != nullptr) return illegal_in_capture("a free");
  if (p != nullptr) count(&trainrt_fake_counters_v1::frees);
  return cpu_rc(cpu().free(d, p));
}

int fake_copy(int32_t d, void* dst, const void* src, size_t bytes, int32_t kind) {
  if (kind == TRAINRT_COPY_D2D) {
    return run_or_record([=] { return cpu_rc(cpu().copy(d, dst, src, bytes, kind)); });
  }
  if (g_capture) return illegal_in_capture("a copy to or from the host");
  count(kind == TRAINRT_COPY_H2D ? &trainrt_fake_counters_v1::h2d : &trainrt_fake_counters_v1::d2h);
  return cpu_rc(cpu().copy(d, dst, src, bytes, kind));
}

int fake_memset_zero(int32_t d, void* dst, size_t bytes) {
  return run_or_record([=] { return cpu_rc(cpu().memset_zero(d, dst, bytes)); });
}

int fake_synchronize(int32_t d) {
  if (g_capture) return illegal_in_capture("a synchronize");
  return cpu_rc(cpu().synchronize(d));
}

int fake_cast(int32_t d, const void* src, int32_t sdt, void* dst, int32_t ddt, int64_t n) {
  return run_or_record([=] { return cpu_rc(cpu().cast(d, src, sdt, dst, ddt, n)); });
}

// The slots whose argument structs hold device pointers and values only: a copy of the
// struct is the whole launch.
#define FAKE_PLAIN_SLOT(slot, args_t)                                \
  int fake_##slot(int32_t d, const args_t* a) {                      \
    const args_t c = *a;                                             \
    return run_or_record([=] { return cpu_rc(cpu().slot(d, &c)); }); \
  }
FAKE_PLAIN_SLOT(softmax_forward, trainrt_softmax_args)
FAKE_PLAIN_SLOT(softmax_backward, trainrt_softmax_args)
FAKE_PLAIN_SLOT(cross_entropy, trainrt_cross_entropy_args)
FAKE_PLAIN_SLOT(pointwise_loss, trainrt_pointwise_loss_args)
FAKE_PLAIN_SLOT(gemm, trainrt_gemm_args)
FAKE_PLAIN_SLOT(nn_pointwise, trainrt_nn_pointwise_args)
FAKE_PLAIN_SLOT(bias, trainrt_bias_args)
#undef FAKE_PLAIN_SLOT

// The multi-tensor slots take host arrays: they are copied with the struct.
struct OptimLaunch {
  trainrt_optim_step_args a;
  std::vector<void*> params, states[3], copies;
  std::vector<const void*> grads;
  std::vector<int64_t> numels;
  std::vector<int64_t*> counts;
};

int fake_optimizer_step(int32_t d, const trainrt_optim_step_args* a) {
  if (a->n_tensors < 0) return fail("fake device: negative tensor count");
  auto l = std::make_shared<OptimLaunch>();
  const int64_t n = a->n_tensors;
  l->a = *a;
  l->params = copy_of(a->params, n);
  l->grads = copy_of(a->grads, n);
  l->copies = copy_of(a->model_copies, n);
  l->numels = copy_of(a->numels, n);
  l->counts = copy_of(a->step_counts, n);
  l->a.params = data_or_null(l->params, a->params);
  l->a.grads = data_or_null(l->grads, a->grads);
  l->a.model_copies = data_or_null(l->copies, a->model_copies);
  l->a.numels = data_or_null(l->numels, a->numels);
  l->a.step_counts = data_or_null(l->counts, a->step_counts);
  for (int k = 0; k < 3; ++k) {
    l->states[k] = copy_of(a->states[k], n);
    l->a.states[k] = data_or_null(l->states[k], a->states[k]);
  }
  return run_or_record([=] { return cpu_rc(cpu().optimizer_step(d, &l->a)); });
}

/// A multi_tensor_norm or multi_tensor_scale launch: the struct and its three host lists.
template <class Args>
struct ListLaunch {
  Args a;
  std::vector<
      typename std::remove_const<typename std::remove_pointer<decltype(Args::tensors)>::type>::type>
      tensors;
  std::vector<int32_t> dtypes;
  std::vector<int64_t> numels;
};

template <class Args>
int list_slot(int32_t d, const Args* a,
              int (*const trainrt_backend_v1::*slot)(int32_t, const Args*)) {
  if (a->n_tensors < 0) return fail("fake device: negative tensor count");
  auto l = std::make_shared<ListLaunch<Args>>();
  l->a = *a;
  l->tensors = copy_of(a->tensors, a->n_tensors);
  l->dtypes = copy_of(a->dtypes, a->n_tensors);
  l->numels = copy_of(a->numels, a->n_tensors);
  l->a.tensors = data_or_null(l->tensors, a->tensors);
  l->a.dtypes = data_or_null(l->dtypes, a->dtypes);
  l->a.numels = data_or_null(l->numels, a->numels);
  return run_or_record([=] { return cpu_rc((cpu().*slot)(d, &l->a)); });
}

int fake_multi_tensor_norm(int32_t d, const trainrt_multi_tensor_norm_args* a) {
  return list_slot(d, a, &trainrt_backend_v1::multi_tensor_norm);
}

int fake_multi_tensor_scale(int32_t d, const trainrt_multi_tensor_scale_args* a) {
  return list_slot(d, a, &trainrt_backend_v1::multi_tensor_scale);
}

int fake_amp(int32_t d, const trainrt_amp_args* a) {
  if (a->n_found_infs < 0) return fail("fake device: negative found_inf count");
  auto found = std::make_shared<std::vector<const float*>>(copy_of(a->found_infs, a->n_found_infs));
  auto args = std::make_shared<trainrt_amp_args>(*a);
  args->found_infs = a->found_infs == nullptr ? nullptr : found->data();
  return run_or_record([=] {
    (void)found;  // keeps the copied list alive with the call
    return cpu_rc(cpu().amp(d, args.get()));
  });
}

int fake_graph_begin(int32_t) {
  if (g_capture) return fail("fake device: the stream is capturing already");
  g_capture = std::make_unique<Graph>();
  g_invalidated.clear();
  return 0;
}

int fake_graph_end(int32_t, void** graph) {
  *graph = nullptr;
  if (!g_capture) return fail("fake device: the stream is not capturing");
  std::unique_ptr<Graph> g = std::move(g_capture);
  if (!g_invalidated.empty()) {
    const std::string why = g_invalidated;
    g_invalidated.clear();
    return fail("fake device: the capture was invalidated by " + why);
  }
  *graph = g.release();
  return 0;
}

int fake_graph_launch(int32_t, void* graph) {
  if (graph == nullptr) return fail("fake device: no graph");
  if (g_capture) return fail("fake device: a graph launch during a capture");
  for (const Call& c : static_cast<Graph*>(graph)->calls) {
    count(&trainrt_fake_counters_v1::replayed);
    const int rc = c();
    if (rc != 0) return rc;
  }
  return 0;
}

int fake_graph_destroy(int32_t, void* graph) {
  delete static_cast<Graph*>(graph);
  return 0;
}

int fake_graph_capturing(int32_t, int32_t* capturing) {
  *capturing = g_capture ? 1 : 0;
  return 0;
}

trainrt_backend_v1 make_table() {
  trainrt_backend_v1 t{};
  t.api_version = TRAINRT_BACKEND_API_VERSION;
  t.struct_size = sizeof(trainrt_backend_v1);
  t.args_revision = TRAINRT_BACKEND_ARGS_REVISION;
  t.name = "fake-cuda";
  TRAINRT_FAKE_BACKEND_SLOTS(t);
  return t;
}

}  // namespace

FAKE_EXPORT const trainrt_backend_v1* trainrt_backend_entry(uint32_t) {
  static const trainrt_backend_v1 table = make_table();
  return &table;
}

FAKE_EXPORT trainrt_fake_counters_v1 trainrt_fake_counters(int reset) {
  std::lock_guard<std::mutex> lock(g_counters_mu);
  const trainrt_fake_counters_v1 c = g_counters;
  if (reset) g_counters = trainrt_fake_counters_v1{};
  return c;
}
