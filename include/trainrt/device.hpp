// Devices and backend selection.
//
// A Device is a value {kind, index}. The CPU backend is built into libtrainrt; the CUDA
// backend is the module libtrainrt_cuda.so, opened on first use. Selection rules:
//   - Device::best() (and "auto") picks CUDA when the module loads and reports a device,
//     else the CPU, logging one warning (logger "trainrt") that says why;
//   - Device::cuda(i) / Device::parse("cuda") throw trainrt::Error with that reason when
//     CUDA cannot run.
// The module is looked for first in TRAINRT_BACKEND_PATH (a colon-separated list of
// directories or module files), then beside libtrainrt.so.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "trainrt/export.hpp"

namespace trainrt {

enum class DeviceKind : std::uint8_t { cpu = 0, cuda = 1 };

class TRAINRT_API Device {
 public:
  /// The CPU.
  Device() = default;

  static Device cpu();
  /// CUDA device `index`; throws trainrt::Error (with the reason) if it cannot be used.
  static Device cuda(int index = 0);
  /// CUDA if usable, else the CPU (with one logged warning saying why).
  static Device best();
  /// "auto", "cpu", "cuda", "cuda:N".
  static Device parse(const std::string& spec);

  DeviceKind kind() const { return kind_; }
  int index() const { return index_; }
  bool is_cpu() const { return kind_ == DeviceKind::cpu; }
  bool is_cuda() const { return kind_ == DeviceKind::cuda; }
  /// "cpu" or "cuda:N".
  std::string str() const;

  bool operator==(const Device& o) const { return kind_ == o.kind_ && index_ == o.index_; }
  bool operator!=(const Device& o) const { return !(*this == o); }

 private:
  Device(DeviceKind kind, int index) : kind_(kind), index_(index) {}
  DeviceKind kind_ = DeviceKind::cpu;
  int index_ = 0;
};

/// True if CUDA can be used; otherwise `why` (if given) receives the reason.
TRAINRT_API bool cuda_available(std::string* why = nullptr);
/// Number of CUDA devices (0 when CUDA cannot be used).
TRAINRT_API int cuda_device_count();
/// Waits for all work queued on `device`; throws trainrt::Error for a deferred data error
/// (e.g. an out-of-range class index found by a GPU kernel).
TRAINRT_API void synchronize(Device device);
/// Probes the CUDA module again, looking only at `paths` (module files or directories
/// holding libtrainrt_cuda.so), for applications that ship the module elsewhere and for
/// tests. Returns "" when CUDA is now usable, else the reason. A module that already loaded
/// stays (modules are never unloaded) and the call returns "".
TRAINRT_API std::string load_cuda_backend_from(const std::vector<std::string>& paths);
/// Name of the backend serving `device` plus a device description.
TRAINRT_API std::string device_description(Device device);

/// The CPU GEMM library and the kernels it runs, e.g. "OpenBLAS 0.3.21 ... DYNAMIC_ARCH ...;
/// kernels SkylakeX (OPENBLAS_CORETYPE=SkylakeX set by trainrt)", or why it cannot be loaded.
/// Opens OpenBLAS if no GEMM has yet (README, "CPU GEMM and OpenBLAS").
TRAINRT_API std::string cpu_gemm_info();

}  // namespace trainrt
