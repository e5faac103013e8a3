// Core-internal helpers shared by the library's translation units (never installed).
#pragma once

#include <fmt/format.h>
#include <spdlog/logger.h>

#include <cstddef>
#include <memory>
#include <string>

#include "backend/backend_api.h"
#include "trainrt/device.hpp"
#include "trainrt/dtype.hpp"
#include "trainrt/error.hpp"
#include "trainrt/tensor.hpp"

namespace trainrt {
namespace detail {

/// Device memory owned by a Tensor; freed by the backend that allocated it.
struct Storage {
  void* ptr = nullptr;
  std::size_t bytes = 0;
  Device device;
  const trainrt_backend_v1* api = nullptr;
  Storage() = default;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage();
};

/// Frees the device blocks whose Storage died while their device's stream was being captured
/// (a CUDA graph capture), now that it no longer is; blocks of a device still capturing wait.
void release_deferred_frees() noexcept;

/// The named logger "trainrt" (created on first use unless the application registered it).
spdlog::logger& log();

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
