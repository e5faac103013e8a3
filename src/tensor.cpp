#include "trainrt/tensor.hpp"

#include <cstring>
#include <limits>
#include <mutex>
#include <vector>

#include "internal.hpp"

namespace trainrt {
namespace detail {

namespace {

struct DeferredFree {
  const trainrt_backend_v1* api;
  std::int32_t device;
  void* ptr;
};

std::mutex g_deferred_mu;
std::vector<DeferredFree>& deferred_frees() {
  static auto* v = new std::vector<DeferredFree>();  // leaked: storages may die at exit
  return *v;
}

bool capturing(const trainrt_backend_v1& api, std::int32_t device) {
  std::int32_t c = 0;
  return api.graph_capturing != nullptr && api.graph_capturing(device, &c) == 0 && c != 0;
}

}  // namespace

Storage::~Storage() {  // never throws
  if (ptr == nullptr || api == nullptr) return;
  // A free while the device's stream is being captured would go into the capture (CUDA:
  // cudaFreeAsync of memory from outside the capture fails and invalidates it), so it waits
  // for the capture to end (release_deferred_frees, called by CudaGraph::capture_end). If
  // even the list cannot grow, the block is leaked rather than freed into the capture.
  if (capturing(*api, device.index())) {
    try {
      std::lock_guard<std::mutex> lock(g_deferred_mu);
      deferred_frees().push_back({api, device.index(), ptr});
    } catch (...) {
    }
    return;
  }
  api->free(device.index(), ptr);
}

void release_deferred_frees() noexcept {
  std::vector<DeferredFree> todo;
  {
    std::lock_guard<std::mutex> lock(g_deferred_mu);
    todo.swap(deferred_frees());
  }
  std::vector<DeferredFree> still;
  for (const DeferredFree& d : todo) {
    if (!capturing(*d.api, d.device)) {
      d.api->free(d.device, d.ptr);
      continue;
    }
    try {
      still.push_back(d);  // another capture is still running on that device
    } catch (...) {
    }
  }
  if (still.empty()) return;
  try {
    std::lock_guard<std::mutex> lock(g_deferred_mu);
    deferred_frees().insert(deferred_frees().end(), still.begin(), still.end());
  } catch (...) {
  }
}

namespace {

std::shared_ptr<Storage> allocate(std::size_t bytes, Device device) {
  const trainrt_backend_v1& api = backend_for(device);
  auto s = std::make_shared<Storage>();
  s->device = device;
  s->bytes = bytes;
  s->api = &api;
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
