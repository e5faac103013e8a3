#include "trainrt/tensor.hpp"

#include <atomic>
#include <cstring>
#include <iterator>
#include <limits>
#include <mutex>
#include <shared_mutex>
#include <vector>

#include "internal.hpp"

namespace trainrt {
namespace detail {

namespace {

// CudaGraph captures in progress, and the frees that wait for their end (capture_started).
struct ActiveCapture {
  Device device;
  std::uint64_t serial;
};
std::atomic<int> g_captures_running{0};  // a free checks the lists below only when non-zero
std::mutex g_capture_mu;
std::uint64_t g_last_serial = 0;
// Leaked: storages may die at exit.
std::vector<ActiveCapture>& active_captures() {
  static auto* v = new std::vector<ActiveCapture>();
  return *v;
}
// The storages whose frees wait for the end of their device's capture, linked through
// Storage::next_deferred (guarded by g_capture_mu).
Storage* g_deferred = nullptr;

std::uint64_t active_capture_locked(Device device) {
  for (const ActiveCapture& a : active_captures())
    if (a.device == device) return a.serial;
  return 0;
}

std::uint64_t active_capture(Device device) {
  if (g_captures_running.load(std::memory_order_acquire) == 0) return 0;
  std::lock_guard<std::mutex> lock(g_capture_mu);
  return active_capture_locked(device);
}

}  // namespace

Storage::~Storage() {  // never throws
  if (ptr != nullptr && api != nullptr) api->free(device.index(), ptr);
}

namespace {

// The deleter of every Storage: a block from before the capture of its device waits for the
// capture's end (capture_stopped deletes it then); any other is freed now.
void release_storage(Storage* s) noexcept {
  if (s->ptr != nullptr && g_captures_running.load(std::memory_order_acquire) != 0) {
    std::lock_guard<std::mutex> lock(g_capture_mu);
    const std::uint64_t now = active_capture_locked(s->device);
    if (now != 0 && now != s->capture) {
      s->next_deferred = g_deferred;
      g_deferred = s;
      return;
    }
  }
  delete s;
}

}  // namespace

void capture_started(Device device) {
  std::lock_guard<std::mutex> lock(g_capture_mu);
  active_captures().push_back({device, ++g_last_serial});
  g_captures_running.fetch_add(1, std::memory_order_acq_rel);
}

void capture_stopped(Device device) noexcept {
  Storage* todo = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_capture_mu);
    // The newest capture of the device: the one that ends, or the one whose capture_begin
    // failed (because another capture of the device is running, which then keeps its frees).
    std::vector<ActiveCapture>& a = active_captures();
    for (auto it = a.rbegin(); it != a.rend(); ++it) {
      if (it->device == device) {
        a.erase(std::next(it).base());
        g_captures_running.fetch_sub(1, std::memory_order_acq_rel);
        break;
      }
    }
    if (active_capture_locked(device) != 0) return;
    for (Storage** link = &g_deferred; *link != nullptr;) {
      Storage* s = *link;
      if (s->device == device) {
        *link = s->next_deferred;
        s->next_deferred = todo;
        todo = s;
      } else {
        link = &s->next_deferred;
      }
    }
  }
  while (todo != nullptr) {
    Storage* next = todo->next_deferred;
    delete todo;
    todo = next;
  }
}

namespace {
std::shared_mutex& upload_gate() {
  static auto* m = new std::shared_mutex();  // leaked: loaders may run at exit
  return *m;
}
}  // namespace

bool upload_unless_capturing(Device device, const std::function<void()>& upload) {
  std::shared_lock<std::shared_mutex> lock(upload_gate());
  if (active_capture(device) != 0) return false;
  upload();
  return true;
}

std::unique_lock<std::shared_mutex> block_uploads() {
  return std::unique_lock<std::shared_mutex>(upload_gate());
}

namespace {

std::shared_ptr<Storage> allocate(std::size_t bytes, Device device) {
  const trainrt_backend_v1& api = backend_for(device);
  std::shared_ptr<Storage> s(new Storage(), &release_storage);
  s->device = device;
  s->bytes = bytes;
  s->api = &api;
  s->capture = active_capture(device);
  if (bytes > 0) {
    check_backend(api, api.alloc(device.index(), bytes, &s->ptr), "Tensor allocation");
  }
  return s;
}

}  // namespace
}  // namespace detail

std::int64_t shape_numel(const Shape& shape) {
  std::int64_t n = 1;
  for (std::int64_t d : shape) {
    if (d < 0) detail::fail("shape {}: dimensions must be >= 0", shape_str(shape));
    if (d != 0 && n > std::numeric_limits<std::int64_t>::max() / d) {
      detail::fail("shape {}: too many elements", shape_str(shape));
    }
    n *= d;
  }
  return n;
}

std::string shape_str(const Shape& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

Tensor::Tensor() = default;

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  Tensor t;
  t.shape_ = shape;
  t.numel_ = shape_numel(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  t.storage_ = detail::allocate(static_cast<std::size_t>(t.numel_) * dtype_size(dtype), device);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.zero_();
  return t;
}

Tensor Tensor::from_host(const void* data, const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  if (t.nbytes() > 0) {
    if (data == nullptr)
      detail::fail("Tensor::from_host: data is null for shape {}", shape_str(shape));
    const trainrt_backend_v1& api = *t.storage_->api;
    detail::check_backend(api,
                          api.copy(device.index(), t.data(), data, t.nbytes(), TRAINRT_COPY_H2D),
                          "Tensor::from_host");
  }
  return t;
}

void Tensor::check_host_size(std::size_t n, const Shape& shape) {
  const std::int64_t want = shape_numel(shape);
  if (static_cast<std::int64_t>(n) != want) {
    detail::fail("Tensor::from_vector: shape {} needs {} values, got {}", shape_str(shape), want,
                 n);
  }
}

void Tensor::check_dtype_for_read(DType t) const {
  if (!defined()) detail::fail("Tensor::to_vector: tensor is undefined");
  if (t != dtype_) {
    detail::fail("Tensor::to_vector: element type {} does not match the tensor's dtype {}",
                 dtype_name(t), dtype_name(dtype_));
  }
}

std::int64_t Tensor::size(std::int64_t d) const {
  const std::int64_t n = dim();
  const std::int64_t i = d < 0 ? d + n : d;
  if (i < 0 || i >= n)
    detail::fail("Tensor::size: dimension {} out of range for {}-d tensor", d, n);
  return shape_[static_cast<std::size_t>(i)];
}

std::size_t Tensor::nbytes() const { return static_cast<std::size_t>(numel_) * dtype_size(dtype_); }

void* Tensor::data() { return storage_ ? static_cast<char*>(storage_->ptr) + offset_ : nullptr; }

const void* Tensor::data() const {
  return storage_ ? static_cast<const char*>(storage_->ptr) + offset_ : nullptr;
}

void Tensor::copy_to_host(void* dst, std::size_t bytes) const {
  if (!defined()) detail::fail("Tensor::copy_to_host: tensor is undefined");
  if (bytes != nbytes()) {
    detail::fail("Tensor::copy_to_host: destination holds {} bytes, tensor {} has {}", bytes, str(),
                 nbytes());
  }
  if (bytes == 0) return;
  const trainrt_backend_v1& api = *storage_->api;
  detail::check_backend(api, api.copy(device_.index(), dst, data(), bytes, TRAINRT_COPY_D2H),
                        "Tensor::copy_to_host");
}

std::vector<double> Tensor::to_double_vector() const {
  if (!defined()) detail::fail("Tensor::to_double_vector: tensor is undefined");
  const Tensor host = dtype_ == DType::f64 ? to(Device::cpu()) : to(Device::cpu()).to(DType::f64);
  std::vector<double> out(static_cast<std::size_t>(numel_));
  if (!out.empty()) std::memcpy(out.data(), host.data(), out.size() * sizeof(double));
  return out;
}

double Tensor::item() const {
  if (numel_ != 1)
    detail::fail("Tensor::item: tensor {} has {} elements, expected 1", str(), numel_);
  return to_double_vector()[0];
}

Tensor Tensor::to(Device device) const {
  if (!defined()) detail::fail("Tensor::to: tensor is undefined");
  Tensor out = empty(shape_, dtype_, device);
  out.copy_(*this);
  return out;
}

Tensor Tensor::to(DType dtype) const {
  if (!defined()) detail::fail("Tensor::to: tensor is undefined");
  Tensor out = empty(shape_, dtype, device_);
  if (numel_ > 0) {
    const trainrt_backend_v1& api = *storage_->api;
    detail::check_backend(api,
                          api.cast(device_.index(), data(), detail::c_dtype(dtype_), out.data(),
                                   detail::c_dtype(dtype), numel_),
                          "Tensor::to(dtype)");
  }
  return out;
}

Tensor Tensor::clone() const { return to(device_); }

Tensor Tensor::reshape(const Shape& shape) const {
  if (!defined()) detail::fail("Tensor::reshape: tensor is undefined");
  if (shape_numel(shape) != numel_) {
    detail::fail("Tensor::reshape: cannot view {} ({} elements) as {}", str(), numel_,
                 shape_str(shape));
  }
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

void Tensor::copy_(const Tensor& src) {
  if (!defined() || !src.defined()) detail::fail("Tensor::copy_: tensor is undefined");
  if (src.shape_ != shape_ || src.dtype_ != dtype_) {
    detail::fail("Tensor::copy_: source {} does not match destination {}", src.str(), str());
  }
  const std::size_t bytes = nbytes();
  if (bytes == 0) return;
  if (src.device_ == device_) {
    const trainrt_backend_v1& api = *storage_->api;
    detail::check_backend(api,
                          api.copy(device_.index(), data(), src.data(), bytes,
                                   device_.is_cpu() ? TRAINRT_COPY_H2D : TRAINRT_COPY_D2D),
                          "Tensor::copy_");
  } else if (src.device_.is_cpu()) {
    const trainrt_backend_v1& api = *storage_->api;
    detail::check_backend(api,
                          api.copy(device_.index(), data(), src.data(), bytes, TRAINRT_COPY_H2D),
                          "Tensor::copy_");
  } else if (device_.is_cpu()) {
    src.copy_to_host(data(), bytes);
  } else {  // between two GPUs: through the host
    Tensor staging = src.to(Device::cpu());
    copy_(staging);
  }
}

void Tensor::zero_() {
  if (!defined()) detail::fail("Tensor::zero_: tensor is undefined");
  if (nbytes() == 0) return;
  const trainrt_backend_v1& api = *storage_->api;
  detail::check_backend(api, api.memset_zero(device_.index(), data(), nbytes()), "Tensor::zero_");
}

std::string Tensor::str() const {
  if (!defined()) return "Tensor(undefined)";
  return fmt::format("Tensor{} {} {}", shape_str(shape_), dtype_name(dtype_), device_.str());
}

}  // namespace trainrt
