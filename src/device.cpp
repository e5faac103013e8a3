// Device values, the backend registry and the CUDA module loader.
//
// Backends are registered explicitly in one function-local registry (no static
// self-registration). The CUDA backend is libtrainrt_cuda.so, opened with dlopen(RTLD_LOCAL)
// on first need, looked for in TRAINRT_BACKEND_PATH, then beside libtrainrt.so (dladdr).
// A loaded module is never unloaded. Every way the load can fail ends in a reason string
// that Device::best() logs once and Device::cuda() throws.
#include <dlfcn.h>
#include <sys/stat.h>

#include <cstdlib>
#include <mutex>
#include <sstream>
#include <vector>

#include "internal.hpp"
#include "trainrt/device.hpp"

namespace trainrt {
namespace detail {
namespace {

constexpr const char* kModuleName = "libtrainrt_cuda.so";

struct CudaState {
  bool probed = false;
  const trainrt_backend_v1* api = nullptr;  // set when usable
  int count = 0;
  std::string reason;  // why CUDA cannot be used
  std::string path;    // module loaded from
  bool warned = false;
};

struct Registry {
  std::mutex mu;
  CudaState cuda;
};

Registry& registry() {
  static Registry r;
  return r;
}

bool is_dir(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_file(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string own_directory() {
  Dl_info info{};
  if (::dladdr(reinterpret_cast<void*>(&registry), &info) == 0 || info.dli_fname == nullptr) {
    return {};
  }
  std::string f = info.dli_fname;
  const auto slash = f.rfind('/');
  return slash == std::string::npos ? std::string(".") : f.substr(0, slash);
}

std::vector<std::string> default_candidates() {
  std::vector<std::string> out;
  if (const char* env = std::getenv("TRAINRT_BACKEND_PATH")) {
    std::stringstream ss(env);
    std::string item;
    while (std::getline(ss, item, ':')) {
      if (!item.empty()) out.push_back(item);
    }
  }
  const std::string dir = own_directory();
  if (!dir.empty()) out.push_back(dir);
  return out;
}

/// Tries one module file; returns the usable table or fills `reason`.
const trainrt_backend_v1* try_module(const std::string& file, int* count, std::string* reason) {
  void* handle = ::dlopen(file.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* e = ::dlerror();
    *reason = fmt::format("cannot load CUDA module {}: {}", file, e ? e : "unknown error");
    return nullptr;
  }
  // Never dlclose: CUDA runtimes do not survive being unloaded.
  auto entry =
      reinterpret_cast<trainrt_backend_entry_fn>(::dlsym(handle, TRAINRT_BACKEND_ENTRY_SYMBOL));
  if (entry == nullptr) {
    *reason =
        fmt::format("CUDA module {} has no entry point '{}'", file, TRAINRT_BACKEND_ENTRY_SYMBOL);
    return nullptr;
  }
  const trainrt_backend_v1* api = entry(TRAINRT_BACKEND_API_VERSION);
  if (api == nullptr) {
    *reason = fmt::format("CUDA module {} does not implement backend API version {}", file,
                          TRAINRT_BACKEND_API_VERSION);
    return nullptr;
  }
  if (api->api_version != TRAINRT_BACKEND_API_VERSION ||
      api->struct_size < sizeof(trainrt_backend_v1)) {
    *reason = fmt::format(
        "CUDA module {} has backend API version {} (table size {}), expected version {} "
        "(table size {}): rebuild the module together with libtrainrt",
        file, api->api_version, api->struct_size, TRAINRT_BACKEND_API_VERSION,
        sizeof(trainrt_backend_v1));
    return nullptr;
  }
  if (api->args_revision != TRAINRT_BACKEND_ARGS_REVISION) {
    *reason = fmt::format(
        "CUDA module {} was built with backend argument revision {}, expected {}: rebuild the "
        "module together with libtrainrt",
        file, api->args_revision, TRAINRT_BACKEND_ARGS_REVISION);
    return nullptr;
  }
  std::int32_t n = 0;
  if (api->device_count(&n) != 0) {
    *reason =
        fmt::format("CUDA module {} loaded, but CUDA cannot run: {}", file, api->last_error());
    return nullptr;
  }
  if (n <= 0) {
    *reason = fmt::format("CUDA module {} loaded, but no CUDA device was found", file);
    return nullptr;
  }
  *count = n;
  return api;
}

void probe_locked(CudaState& st, const std::vector<std::string>& candidates) {
  st = CudaState{};
  st.probed = true;
  std::vector<std::string> looked;
  for (const std::string& c : candidates) {
    const std::string file = is_dir(c) ? c + "/" + kModuleName : c;
    if (!is_file(file)) {
      looked.push_back(file);
      continue;
    }
    int count = 0;
    std::string reason;
    if (const trainrt_backend_v1* api = try_module(file, &count, &reason)) {
      st.api = api;
      st.count = count;
      st.path = file;
      log()->debug("CUDA backend loaded from {} ({} device(s))", file, count);
      return;
    }
    st.reason = reason;  // a module was found but is unusable: report that one
    return;
  }
  std::string where;
  for (const auto& l : looked) where += (where.empty() ? "" : ", ") + l;
  st.reason = fmt::format("CUDA module {} not found (looked at: {})", kModuleName,
                          where.empty() ? std::string("nowhere") : where);
}

CudaState& cuda_state_locked() {
  Registry& r = registry();
  if (!r.cuda.probed) probe_locked(r.cuda, default_candidates());
  return r.cuda;
}

}  // namespace

const trainrt_backend_v1& backend_for(Device device) {
  if (device.is_cpu()) return cpu_backend();
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  CudaState& st = cuda_state_locked();
  if (st.api == nullptr) fail("{}: CUDA is not available: {}", device.str(), st.reason);
  if (device.index() < 0 || device.index() >= st.count) {
    fail("{}: device index out of range, {} CUDA device(s) present", device.str(), st.count);
  }
  return *st.api;
}

void check_backend(const trainrt_backend_v1& api, int rc, const char* what) {
  if (rc != 0) {
    const char* e = api.last_error();
    const std::string msg = e && *e ? e : "backend error";
    // Data errors already name the op ("cross_entropy: target 12 is out of bounds ...").
    if (msg.rfind(std::string(what) + ":", 0) == 0) throw Error(msg);
    throw Error(fmt::format("{}: {}", what, msg));
  }
}

}  // namespace detail

Device Device::cpu() { return Device(); }

Device Device::cuda(int index) {
  Device d(DeviceKind::cuda, index);
  (void)detail::backend_for(d);  // throws with the reason when CUDA cannot run
  return d;
}

Device Device::best() {
  auto& r = detail::registry();
  std::lock_guard<std::mutex> lock(r.mu);
  auto& st = detail::cuda_state_locked();
  if (st.api != nullptr) return Device(DeviceKind::cuda, 0);
  if (!st.warned) {
    st.warned = true;
    detail::log()->warn("using the CPU backend: {}", st.reason);
  }
  return Device();
}

Device Device::parse(const std::string& spec) {
  if (spec == "auto") return best();
  if (spec == "cpu") return cpu();
  if (spec == "cuda") return cuda(0);
  if (spec.rfind("cuda:", 0) == 0) {
    const std::string idx = spec.substr(5);
    char* end = nullptr;
    const long v = std::strtol(idx.c_str(), &end, 10);
    if (!idx.empty() && end && *end == '\0' && v >= 0 && v < 1 << 16) {
      return cuda(static_cast<int>(v));
    }
  }
  detail::fail("Device::parse: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got '{}'", spec);
}

std::string Device::str() const {
  return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index_);
}

bool cuda_available(std::string* why) {
  auto& r = detail::registry();
  std::lock_guard<std::mutex> lock(r.mu);
  auto& st = detail::cuda_state_locked();
  if (st.api == nullptr && why != nullptr) *why = st.reason;
  return st.api != nullptr;
}

int cuda_device_count() {
  auto& r = detail::registry();
  std::lock_guard<std::mutex> lock(r.mu);
  return detail::cuda_state_locked().count;
}

std::string load_cuda_backend_from(const std::vector<std::string>& paths) {
  auto& r = detail::registry();
  std::lock_guard<std::mutex> lock(r.mu);
  if (r.cuda.api != nullptr) return {};  // already loaded: modules are never unloaded
  detail::probe_locked(r.cuda, paths);
  return r.cuda.api ? std::string() : r.cuda.reason;
}

void synchronize(Device device) {
  const trainrt_backend_v1& api = detail::backend_for(device);
  detail::check_backend(api, api.synchronize(device.index()), "synchronize");
}

std::string device_description(Device device) {
  const trainrt_backend_v1& api = detail::backend_for(device);
  char buf[256] = {0};
  detail::check_backend(api, api.device_name(device.index(), buf, sizeof buf), "device_name");
  return fmt::format("{} ({})", device.str(), buf);
}

}  // namespace trainrt
