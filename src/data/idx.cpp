// IDX files (the MNIST format): magic 00 00 <type> <ndims>, ndims big-endian u32 dimensions,
// then the elements, big-endian, row-major.
#include <sys/stat.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "../internal.hpp"
#include "file_io.hpp"
#include "trainrt/data.hpp"

namespace trainrt {
namespace {

std::uint32_t be32(const unsigned char* p) {
  return static_cast<std::uint32_t>(p[0]) << 24 | static_cast<std::uint32_t>(p[1]) << 16 |
         static_cast<std::uint32_t>(p[2]) << 8 | static_cast<std::uint32_t>(p[3]);
}

struct IdxType {
  const char* name;
  std::size_t bytes;
};

bool idx_type(unsigned code, IdxType* t) {
  switch (code) {
    case 0x08: *t = {"u8", 1}; return true;
    case 0x09: *t = {"i8", 1}; return true;
    case 0x0B: *t = {"i16", 2}; return true;
    case 0x0C: *t = {"i32", 4}; return true;
    case 0x0D: *t = {"f32", 4}; return true;
    case 0x0E: *t = {"f64", 8}; return true;
    default: return false;
  }
}

struct IdxHeader {
  IdxType type;
  Shape shape;
  std::uint64_t count = 0;     // elements
  std::size_t header = 0;      // bytes of the header
  std::uint64_t expected = 0;  // bytes of the whole file
};

/// The header of an IDX file from its first bytes (all of them or at least the header's).
IdxHeader parse_idx_header(const std::vector<unsigned char>& b, const std::string& path) {
  if (b.size() < 4) {
    detail::fail("IDX file '{}': truncated header: expected at least 4 bytes, the file has {}",
                 path, b.size());
  }
  if (b[0] != 0 || b[1] != 0) {
    detail::fail(
        "IDX file '{}': wrong magic number 0x{:02x}{:02x}{:02x}{:02x}: expected 0x0000 followed "
        "by a type code and the number of dimensions (e.g. 0x00000803 for images)",
        path, b[0], b[1], b[2], b[3]);
  }
  IdxType type{};
  if (!idx_type(b[2], &type)) {
    detail::fail(
        "IDX file '{}': unknown element type code 0x{:02x} in the magic number (expected 0x08, "
        "0x09, 0x0B, 0x0C, 0x0D or 0x0E)",
        path, b[2]);
  }
  const unsigned ndims = b[3];
  if (ndims == 0) detail::fail("IDX file '{}': the header declares 0 dimensions", path);
  const std::size_t header = 4 + 4 * static_cast<std::size_t>(ndims);
  if (b.size() < header) {
    detail::fail(
        "IDX file '{}': truncated header: {} dimensions need {} header bytes, the file has {}",
        path, ndims, header, b.size());
  }
  Shape shape;
  std::uint64_t count = 1;
  for (unsigned d = 0; d < ndims; ++d) {
    const std::uint32_t n = be32(b.data() + 4 + 4 * d);
    shape.push_back(static_cast<std::int64_t>(n));
    if (n != 0 && count > (std::uint64_t{1} << 40) / n) {
      detail::fail("IDX file '{}': dimensions {} are too large", path, shape_str(shape));
    }
    count *= n;
  }
  return IdxHeader{type, shape, count, header, header + count * type.bytes};
}

Tensor parse_idx(const std::vector<unsigned char>& b, const std::string& path) {
  const IdxHeader h = parse_idx_header(b, path);
  const std::uint64_t expected = h.expected;
  const Shape& shape = h.shape;
  if (b.size() != expected) {
    detail::fail(
        "IDX file '{}': {} data: the header declares {} {} elements of shape {}, {} bytes in all, "
        "the file has {} bytes",
        path, b.size() < expected ? "truncated" : "wrong size of", h.count, h.type.name,
        shape_str(shape), expected, b.size());
  }
  const unsigned char* p = b.data() + h.header;
  const std::size_t n = static_cast<std::size_t>(h.count);
  switch (b[2]) {
    case 0x08: return Tensor::from_host(p, shape, DType::u8);
    case 0x09: {
      std::vector<std::int32_t> v(n);
      for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::int8_t>(p[i]);
      return Tensor::from_vector(v, shape);
    }
    case 0x0B: {
      std::vector<std::int32_t> v(n);
      for (std::size_t i = 0; i < n; ++i) {
        v[i] = static_cast<std::int16_t>(static_cast<std::uint16_t>(p[2 * i] << 8 | p[2 * i + 1]));
      }
      return Tensor::from_vector(v, shape);
    }
    case 0x0C: {
      std::vector<std::int32_t> v(n);
      for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::int32_t>(be32(p + 4 * i));
      return Tensor::from_vector(v, shape);
    }
    case 0x0D: {
      std::vector<float> v(n);
      for (std::size_t i = 0; i < n; ++i) {
        const std::uint32_t u = be32(p + 4 * i);
        std::memcpy(&v[i], &u, 4);
      }
      return Tensor::from_vector(v, shape);
    }
    default: {  // 0x0E
      std::vector<double> v(n);
      for (std::size_t i = 0; i < n; ++i) {
        const std::uint64_t u =
            static_cast<std::uint64_t>(be32(p + 8 * i)) << 32 | be32(p + 8 * i + 4);
        std::memcpy(&v[i], &u, 8);
      }
      return Tensor::from_vector(v, shape);
    }
  }
}

bool exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::string find_split_file(const std::string& dir, const std::string& stem) {
  const std::string base = dir.empty() || dir.back() == '/' ? dir + stem : dir + "/" + stem;
  if (exists(base)) return base;
  if (exists(base + ".gz")) return base + ".gz";
  detail::fail("Fashion-MNIST / MNIST: neither '{}' nor '{}.gz' exists", base, base);
}

/// The bytes of an IDX file, inflated if gzip-compressed: only as many as its header declares
/// (one more chunk tells that there are more), so a small file that inflates to gigabytes is
/// refused without them.
std::vector<unsigned char> read_idx_bytes(const std::string& path) {
  std::vector<unsigned char> bytes = data_detail::read_file(path);
  if (!data_detail::is_gzip(bytes)) return bytes;
  const IdxHeader h = parse_idx_header(data_detail::gunzip(bytes, path, 4 + 4 * 255), path);
  std::vector<unsigned char> all = data_detail::gunzip(bytes, path, h.expected);
  if (all.size() > h.expected) {
    detail::fail(
        "IDX file '{}': wrong size of data: the header declares {} {} elements of shape {}, {} "
        "bytes in all, the gzip data inflates to more",
        path, h.count, h.type.name, shape_str(h.shape), h.expected);
  }
  return all;
}

}  // namespace

Tensor read_idx(const std::string& path) { return parse_idx(read_idx_bytes(path), path); }

Tensor read_idx_images(const std::string& path, const ImageNormalization& norm, bool flatten) {
  if (!(norm.stddev > 0.0f) || !std::isfinite(norm.stddev) || !std::isfinite(norm.mean)) {
    detail::fail(
        "read_idx_images: normalisation stddev must be > 0 and mean finite, got mean {} "
        "stddev {}",
        norm.mean, norm.stddev);
  }
  const std::vector<unsigned char> bytes = read_idx_bytes(path);
  if (bytes.size() >= 4 && bytes[0] == 0 && bytes[1] == 0 && (bytes[2] != 0x08 || bytes[3] != 3)) {
    detail::fail(
        "IDX image file '{}': expected unsigned bytes in 3 dimensions (magic 0x00000803), got "
        "type code 0x{:02x} with {} dimensions",
        path, bytes[2], bytes[3]);
  }
  const Tensor raw = parse_idx(bytes, path);
  const std::int64_t n = raw.size(0), rows = raw.size(1), cols = raw.size(2);
  if (flatten && rows > 0 && cols > std::numeric_limits<std::int64_t>::max() / rows) {
    detail::fail("IDX image file '{}': images of {} x {} pixels are too large to flatten", path,
                 rows, cols);
  }
  const Shape shape = flatten ? Shape{n, rows * cols} : Shape{n, rows, cols};
  Tensor out = Tensor::empty(shape, DType::f32);
  const auto* src = static_cast<const std::uint8_t*>(raw.data());
  auto* dst = static_cast<float*>(out.data());
  // One table for the 256 byte values: every image gets the same bits for the same byte.
  float table[256];
  for (int v = 0; v < 256; ++v) {
    table[v] = (static_cast<float>(v) / 255.0f - norm.mean) / norm.stddev;
  }
  const std::int64_t total = raw.numel();
  for (std::int64_t i = 0; i < total; ++i) dst[i] = table[src[i]];
  return out;
}

Tensor read_idx_labels(const std::string& path) {
  const std::vector<unsigned char> bytes = read_idx_bytes(path);
  if (bytes.size() >= 4 && bytes[0] == 0 && bytes[1] == 0 && (bytes[2] != 0x08 || bytes[3] != 1)) {
    detail::fail(
        "IDX label file '{}': expected unsigned bytes in 1 dimension (magic 0x00000801), got type "
        "code 0x{:02x} with {} dimensions",
        path, bytes[2], bytes[3]);
  }
  const Tensor raw = parse_idx(bytes, path);
  const auto* src = static_cast<const std::uint8_t*>(raw.data());
  std::vector<std::int64_t> v(static_cast<std::size_t>(raw.numel()));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = src[i];
  return Tensor::from_vector(v, {raw.numel()});
}

std::string default_fashion_mnist_dir() { return "/usr/share/datasets/fashion-mnist"; }

TensorDataset load_fashion_mnist(const std::string& dir, bool train, const ImageNormalization& norm,
                                 bool flatten) {
  const std::string split = train ? "train" : "t10k";
  const std::string images_path = find_split_file(dir, split + "-images-idx3-ubyte");
  const std::string labels_path = find_split_file(dir, split + "-labels-idx1-ubyte");
  Tensor images = read_idx_images(images_path, norm, flatten);
  Tensor labels = read_idx_labels(labels_path);
  if (images.size(0) != labels.size(0)) {
    detail::fail("Fashion-MNIST / MNIST: '{}' holds {} images but '{}' holds {} labels",
                 images_path, images.size(0), labels_path, labels.size(0));
  }
  return TensorDataset(images, labels);
}

}  // namespace trainrt
