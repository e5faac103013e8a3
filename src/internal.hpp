// Core-internal helpers shared by the library's translation units (never installed).
#pragma once

#include <fmt/format.h>
#include <spdlog/logger.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>

#include "backend/backend_api.h"
#include "trainrt/device.hpp"
#include "trainrt/dtype.hpp"
#include "trainrt/error.hpp"
#include "trainrt/tensor.hpp"

namespace trainrt {
namespace detail {

/// Device memory owned by a Tensor; freed by the backend that allocated it.
/// Made only by allocate() in src/tensor.cpp, whose shared_ptr deleter (release_storage)
/// defers the free during a capture; ~Storage frees at once.
struct Storage {
  void* ptr = nullptr;
  std::size_t bytes = 0;
  Device device;
  const trainrt_backend_v1* api = nullptr;
  std::uint64_t capture = 0;         // the CudaGraph capture it was allocated in (0: none)
  Storage* next_deferred = nullptr;  // in the list of frees that wait for a capture's end
  Storage() = default;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage();  // frees the block
};

/// CudaGraph captures, as the core tracks them (src/tensor.cpp): capture_started gives a
/// capture of `device` a new serial, which the blocks allocated during it carry;
/// capture_stopped ends the newest capture of `device` and, once none is left, frees the
/// blocks whose Storage died during it that were allocated before it (on CUDA, cudaFreeAsync
/// of such a block inside a capture fails and invalidates it, so their frees wait). Blocks
/// allocated during the capture are freed at once, into it, as CUDA allows. (A capture that
/// another thread starts between a free's check and the free itself still gets the free: the
/// device's one stream is shared.) A Storage is deleted by release_storage (allocate's
/// deleter), which keeps a deferred one in an intrusive list: deferring allocates nothing, so
/// it cannot fail.
void capture_started(Device device);
void capture_stopped(Device device) noexcept;

/// Uploads from a thread that does not capture (the DataLoader's prefetch thread): runs
/// `upload` (an allocation and host-to-device copy on `device`) and returns true, unless a
/// capture of `device` is running, when it returns false and runs nothing (the caller does the
/// upload later, on the thread that uses the data). On CUDA such work would go into the
/// captured stream and invalidate the capture. CudaGraph::capture_begin holds UploadGate's
/// lock (exclusive) while it starts the capture, so an upload in flight ends first.
bool upload_unless_capturing(Device device, const std::function<void()>& upload);
/// CudaGraph::capture_begin's hold on the uploads of other threads.
std::unique_lock<std::shared_mutex> block_uploads();

/// The named logger "trainrt" (created on first use unless the application registered it).
/// Shared: it stays alive while used even if the application drops or replaces it meanwhile.
std::shared_ptr<spdlog::logger> log();

template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

/// The backend serving `device`; throws if it cannot run.
const trainrt_backend_v1& backend_for(Device device);
/// The built-in CPU backend table.
const trainrt_backend_v1& cpu_backend();
/// Throws trainrt::Error("<what>: <backend's last error>") when rc != 0.
void check_backend(const trainrt_backend_v1& api, int rc, const char* what);

inline std::int32_t c_dtype(DType t) { return static_cast<std::int32_t>(t); }

}  // namespace detail
}  // namespace trainrt
