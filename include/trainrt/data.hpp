// Data: datasets, readers (IDX for MNIST / Fashion-MNIST, CSV) and the DataLoader.
//
//   auto train = std::make_shared<trainrt::TensorDataset>(
//       trainrt::load_fashion_mnist("/usr/share/datasets/fashion-mnist", /*train=*/true));
//   trainrt::DataLoaderOptions opt;
//   opt.batch_size = 128;
//   opt.shuffle = true;
//   opt.seed = 42;
//   opt.device = trainrt::Device::best();
//   trainrt::DataLoader loader(train, opt);
//   trainrt::Batch b;
//   for (int epoch = 0; epoch < 10; ++epoch)
//     while (loader.next(b)) { /* b.features [B, 28, 28] f32, b.labels [B] i64 */ }
//
// Shuffling is a Fisher-Yates permutation drawn from Philox4x32-10 keyed by the seed, with
// the epoch and the position in the counter: the same order on every machine and backend, and
// an epoch can be resumed at any batch from (epoch, position) alone.
// Every reader throws trainrt::Error for a corrupt, truncated or inconsistent file, naming the
// file and the expected and actual values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "trainrt/device.hpp"
#include "trainrt/dtype.hpp"
#include "trainrt/export.hpp"
#include "trainrt/state_dict.hpp"
#include "trainrt/tensor.hpp"

namespace trainrt {

/// A source of (features, label) examples held in host memory. Implementations must allow
/// concurrent calls to the const members: a DataLoader calls get_batch from its prefetch
/// thread.
class TRAINRT_API Dataset {
 public:
  virtual ~Dataset();

  /// Number of examples.
  virtual std::int64_t size() const = 0;
  /// Shape of one example's features (no batch dimension), e.g. {28, 28}.
  virtual Shape feature_shape() const = 0;
  virtual DType feature_dtype() const = 0;
  /// Shape of one example's label ({} for a class index or a scalar target).
  virtual Shape label_shape() const = 0;
  virtual DType label_dtype() const = 0;

  /// Copies example `index` into `features` (numel(feature_shape) elements of feature_dtype)
  /// and `labels` (numel(label_shape) elements of label_dtype). Throws for a bad index.
  virtual void get(std::int64_t index, void* features, void* labels) const = 0;
  /// Copies the examples indices[0..n) one after the other into preallocated host buffers of
  /// n examples each. The default calls get() n times.
  virtual void get_batch(const std::int64_t* indices, std::int64_t n, void* features,
                         void* labels) const;

  /// Bytes of one example's features / label.
  std::size_t feature_bytes() const;
  std::size_t label_bytes() const;
};

/// Features [N, ...] and labels [N, ...] held in memory: CPU tensors are shared, as PyTorch's
/// TensorDataset shares them (writing into them changes the dataset; while a DataLoader
/// prefetches from it, that is a data race), tensors on another device are copied to the host.
class TRAINRT_API TensorDataset : public Dataset {
 public:
  TensorDataset() = default;
  /// Both tensors need the same first dimension N; any dtypes, any devices.
  TensorDataset(const Tensor& features, const Tensor& labels);

  std::int64_t size() const override;
  Shape feature_shape() const override;
  DType feature_dtype() const override;
  Shape label_shape() const override;
  DType label_dtype() const override;
  void get(std::int64_t index, void* features, void* labels) const override;
  void get_batch(const std::int64_t* indices, std::int64_t n, void* features,
                 void* labels) const override;

  /// The whole data (host tensors).
  const Tensor& features() const { return features_; }
  const Tensor& labels() const { return labels_; }

 private:
  Tensor features_;
  Tensor labels_;
};

// ---- IDX (MNIST / Fashion-MNIST) -------------------------------------------------------------

/// Reads an IDX file, plain or gzip-compressed (recognised by its magic bytes, not its name).
/// Element types: u8 (0x08) as u8, i8 (0x09) and i16 (0x0B) widened to i32, i32 (0x0C) as i32,
/// f32 (0x0D) as f32, f64 (0x0E) as f64; the tensor has the header's dimensions. Validates the
/// magic number, type code, dimensions and the data size against the header.
TRAINRT_API Tensor read_idx(const std::string& path);

/// How image bytes become floats: x = (byte / 255 - mean) / stddev.
struct ImageNormalization {
  float mean = 0.0f;
  float stddev = 1.0f;
};

/// An IDX u8 image file [N, rows, cols] as f32 [N, rows, cols] (or [N, rows * cols] with
/// flatten) in [0, 1], then (x - mean) / stddev.
TRAINRT_API Tensor read_idx_images(const std::string& path, const ImageNormalization& norm = {},
                                   bool flatten = false);
/// An IDX u8 label file [N] as i64 [N].
TRAINRT_API Tensor read_idx_labels(const std::string& path);

/// Where Debian's dataset-fashion-mnist package installs the files.
TRAINRT_API std::string default_fashion_mnist_dir();

/// The train (60000) or test (10000) split of MNIST or Fashion-MNIST from `dir`, holding
/// {train,t10k}-{images-idx3,labels-idx1}-ubyte, each plain or with .gz. Features f32
/// [N, 28, 28] (or [N, 784] with flatten), labels i64 [N]; the counts must agree.
TRAINRT_API TensorDataset load_fashion_mnist(const std::string& dir, bool train,
                                             const ImageNormalization& norm = {},
                                             bool flatten = false);

// ---- CSV ---------------------------------------------------------------------------------------

enum class CsvHeader : std::uint8_t {
  detect,  // a header if any field of the first line is not a number
  present,
  absent
};

struct CsvOptions {
  char delimiter = ',';
  CsvHeader header = CsvHeader::detect;
  /// The label column by name (needs a header); when empty, label_index is used.
  std::string label_column;
  /// The label column by index (negative counts from the end: -1 is the last column).
  std::int64_t label_index = -1;
  /// f32 / f64 features.
  DType feature_dtype = DType::f32;
  /// i64 / i32 class indices (values must be integers) or f32 / f64 regression targets.
  DType label_dtype = DType::i64;
};

/// A numeric CSV file: features [rows, columns - 1] and labels [rows].
struct CsvTable {
  std::vector<std::string> feature_names;  // from the header, else "col<i>"
  std::string label_name;
  Tensor features;
  Tensor labels;
  TensorDataset dataset() const { return TensorDataset(features, labels); }
};

/// Reads a CSV file of numbers (blank lines skipped, CRLF accepted, fields may be quoted, a
/// doubled quote in a quoted header name is one quote; a quoted field cannot hold a line
/// break). Numbers are decimal (std::from_chars' grammar, plus an optional '+'); one that
/// underflows is its nearest double (0 or subnormal, as Python's float()), one past the f64
/// range, nan and inf are errors. Bad rows throw trainrt::Error naming the file, the line, and
/// the column and value.
TRAINRT_API CsvTable read_csv(const std::string& path, const CsvOptions& options = {});

// ---- DataLoader --------------------------------------------------------------------------------

struct DataLoaderOptions {
  std::int64_t batch_size = 64;
  bool shuffle = false;
  std::uint64_t seed = 0;
  /// Leave out the last batch when it has fewer than batch_size examples.
  bool drop_last = false;
  /// Where the batches are put.
  Device device = Device::cpu();
  /// Prepare the next batch on a background thread while the current one is used.
  bool prefetch = true;
};

struct Batch {
  Tensor features;  // [B, feature_shape...] on the loader's device
  Tensor labels;    // [B, label_shape...]
  std::uint64_t epoch = 0;
  std::int64_t index = 0;  // batch number within the epoch
  std::int64_t size() const { return features.defined() ? features.size(0) : 0; }
};

/// Batches of a Dataset, in order or shuffled, on a target device.
///
/// next() hands out the batches of the current epoch; at the end of an epoch it returns false
/// once and moves to the next epoch (position 0), so `while (loader.next(b))` is one epoch.
/// The state (epoch, position) is all a resume needs: state_dict() / load_state_dict().
///
/// With prefetch, one background thread gathers the next batch (and, on CUDA, copies it to the
/// device) while the caller uses the current one; an exception there is rethrown by the next()
/// that wanted the batch. The thread is joined by the destructor, even mid-epoch. On CUDA the
/// batch is staged in a reused host buffer and copied on the device's stream. While a CudaGraph
/// capture of the device runs, the thread does not touch the device (its copy would go into
/// the capture and invalidate it): the batch it prepared then is copied by the next() that
/// takes it, and a capture_begin waits for a copy in flight.
class TRAINRT_API DataLoader {
 public:
  DataLoader(std::shared_ptr<const Dataset> dataset, const DataLoaderOptions& options);
  ~DataLoader();
  DataLoader(DataLoader&&) noexcept;
  DataLoader& operator=(DataLoader&&) noexcept;
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  /// Next batch of the current epoch; false (and the epoch advances) when it is over.
  bool next(Batch& out);

  /// Batches per epoch.
  std::int64_t num_batches() const;
  std::int64_t dataset_size() const;
  const DataLoaderOptions& options() const;
  const Dataset& dataset() const;

  std::uint64_t epoch() const;
  /// Batches of the current epoch already handed out.
  std::int64_t position() const;
  /// Moves to batch `position` of `epoch` (0 <= position <= num_batches()).
  void set_epoch(std::uint64_t epoch, std::int64_t position = 0);

  /// The example order of an epoch (identity without shuffle).
  std::vector<std::int64_t> epoch_order(std::uint64_t epoch) const;

  /// scalars: epoch, position, seed, batch_size, dataset_size, shuffle, drop_last.
  StateDict state_dict() const;
  /// Restores epoch and position; the other values must match this loader's.
  void load_state_dict(const StateDict& state);

 private:
  struct Impl;
  Impl& live() const;  // throws for a moved-from loader
  std::unique_ptr<Impl> impl_;
};

/// The permutation of [0, n) that a DataLoader with this seed uses in `epoch`.
TRAINRT_API std::vector<std::int64_t> shuffled_order(std::int64_t n, std::uint64_t seed,
                                                     std::uint64_t epoch);

}  // namespace trainrt
