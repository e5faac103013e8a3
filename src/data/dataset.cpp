#include <cstring>

#include "../internal.hpp"
#include "trainrt/data.hpp"

namespace trainrt {

Dataset::~Dataset() = default;

std::size_t Dataset::feature_bytes() const {
  return static_cast<std::size_t>(shape_numel(feature_shape())) * dtype_size(feature_dtype());
}

std::size_t Dataset::label_bytes() const {
  return static_cast<std::size_t>(shape_numel(label_shape())) * dtype_size(label_dtype());
}

void Dataset::get_batch(const std::int64_t* indices, std::int64_t n, void* features,
                        void* labels) const {
  const std::size_t fb = feature_bytes(), lb = label_bytes();
  auto* f = static_cast<unsigned char*>(features);
  auto* l = static_cast<unsigned char*>(labels);
  for (std::int64_t i = 0; i < n; ++i) {
    get(indices[i], f + static_cast<std::size_t>(i) * fb, l + static_cast<std::size_t>(i) * lb);
  }
}

TensorDataset::TensorDataset(const Tensor& features, const Tensor& labels) {
  if (!features.defined() || !labels.defined()) {
    detail::fail("TensorDataset: features and labels must be defined tensors");
  }
  if (features.dim() < 1 || labels.dim() < 1) {
    detail::fail("TensorDataset: features {} and labels {} need a first (example) dimension",
                 shape_str(features.shape()), shape_str(labels.shape()));
  }
  if (features.size(0) != labels.size(0)) {
    detail::fail("TensorDataset: features have {} examples ({}) but labels have {} ({})",
                 features.size(0), shape_str(features.shape()), labels.size(0),
                 shape_str(labels.shape()));
  }
  features_ = features.device().is_cpu() ? features : features.to(Device::cpu());
  labels_ = labels.device().is_cpu() ? labels : labels.to(Device::cpu());
}

std::int64_t TensorDataset::size() const { return features_.defined() ? features_.size(0) : 0; }

Shape TensorDataset::feature_shape() const {
  if (!features_.defined()) return {};
  return Shape(features_.shape().begin() + 1, features_.shape().end());
}

DType TensorDataset::feature_dtype() const { return features_.dtype(); }

Shape TensorDataset::label_shape() const {
  if (!labels_.defined()) return {};
  return Shape(labels_.shape().begin() + 1, labels_.shape().end());
}

DType TensorDataset::label_dtype() const { return labels_.dtype(); }

void TensorDataset::get(std::int64_t index, void* features, void* labels) const {
  get_batch(&index, 1, features, labels);
}

void TensorDataset::get_batch(const std::int64_t* indices, std::int64_t n, void* features,
                              void* labels) const {
  const std::int64_t size = this->size();
  const std::size_t fb = feature_bytes(), lb = label_bytes();
  const auto* fsrc = static_cast<const unsigned char*>(features_.data());
  const auto* lsrc = static_cast<const unsigned char*>(labels_.data());
  auto* f = static_cast<unsigned char*>(features);
  auto* l = static_cast<unsigned char*>(labels);
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t k = indices[i];
    if (k < 0 || k >= size) {
      detail::fail("TensorDataset: index {} is out of range for {} examples", k, size);
    }
    const auto ks = static_cast<std::size_t>(k), is = static_cast<std::size_t>(i);
    if (fb > 0) std::memcpy(f + is * fb, fsrc + ks * fb, fb);
    if (lb > 0) std::memcpy(l + is * lb, lsrc + ks * lb, lb);
  }
}

}  // namespace trainrt
