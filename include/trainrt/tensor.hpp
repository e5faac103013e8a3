// Tensor: a contiguous n-d array on a device, sharing ownership of storage allocated by that
// device's backend (CUDA: the stream-ordered pool of cudaMallocAsync).
//
// trainrt is not a general tensor library: a Tensor carries data between fused ops, the
// host and devices. Reading a value on the host (to_vector, item) waits for the device.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "trainrt/device.hpp"
#include "trainrt/dtype.hpp"
#include "trainrt/export.hpp"

namespace trainrt {

using Shape = std::vector<std::int64_t>;

TRAINRT_API std::int64_t shape_numel(const Shape& shape);
TRAINRT_API std::string shape_str(const Shape& shape);

namespace detail {
struct Storage;
}

class TRAINRT_API Tensor {
 public:
  /// An undefined tensor (defined() is false).
  Tensor();

  /// Uninitialised storage.
  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::cpu());
  /// Copies numel * dtype_size bytes from host memory.
  static Tensor from_host(const void* data, const Shape& shape, DType dtype,
                          Device device = Device::cpu());
  template <class T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape,
                            Device device = Device::cpu()) {
    check_host_size(values.size(), shape);
    return from_host(values.data(), shape, dtype_of<T>::value, device);
  }

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  std::int64_t dim() const { return static_cast<std::int64_t>(shape_.size()); }
  /// Size of dimension d (negative counts from the end).
  std::int64_t size(std::int64_t d) const;
  std::int64_t numel() const { return numel_; }
  std::size_t nbytes() const;
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }

  void* data();
  const void* data() const;

  /// Copies the whole tensor into host memory of nbytes() bytes (waits for the device).
  void copy_to_host(void* dst, std::size_t bytes) const;
  /// The elements as T; T must match dtype().
  template <class T>
  std::vector<T> to_vector() const {
    check_dtype_for_read(dtype_of<T>::value);
    std::vector<T> out(static_cast<std::size_t>(numel_));
    copy_to_host(out.data(), out.size() * sizeof(T));
    return out;
  }
  /// The elements converted to double, whatever the dtype.
  std::vector<double> to_double_vector() const;
  /// The single element as double; numel() must be 1.
  double item() const;

  /// A copy on another device (same dtype).
  Tensor to(Device device) const;
  /// A copy converted to another dtype. Between floating types: round to nearest even. Float
  /// to integer: truncation toward zero, saturating at the type's range, NaN -> 0 (the same
  /// on every backend; PyTorch leaves these undefined). Integer to integer: modular, as
  /// PyTorch (i64 300 -> u8 44). Integer to float: one rounding.
  Tensor to(DType dtype) const;
  Tensor clone() const;
  /// Same storage, new shape with the same numel.
  Tensor reshape(const Shape& shape) const;
  /// Copies the values of src (same shape and dtype, any device) into this tensor.
  void copy_(const Tensor& src);
  void zero_();

  std::string str() const;  // "Tensor[4, 10] f32 cpu"

 private:
  static void check_host_size(std::size_t n, const Shape& shape);
  void check_dtype_for_read(DType t) const;

  std::shared_ptr<detail::Storage> storage_;
  std::size_t offset_ = 0;  // bytes
  Shape shape_;
  std::int64_t numel_ = 0;
  DType dtype_ = DType::f32;
  Device device_;
};

}  // namespace trainrt
