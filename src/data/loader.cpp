// DataLoader: batches of a Dataset in a seeded order, one batch prepared ahead on a thread.
#include <Random123/philox.h>

#include <cmath>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>

#include "../internal.hpp"
#include "trainrt/data.hpp"

namespace trainrt {

namespace {

/// 0, 1, ..., n - 1; an Error (not std::bad_alloc / std::length_error) when it does not fit.
std::vector<std::int64_t> identity_order(std::int64_t n, const char* op) {
  std::vector<std::int64_t> order;
  try {
    order.resize(static_cast<std::size_t>(n));
  } catch (const std::exception&) {  // std::bad_alloc, std::length_error
    detail::fail("{}: the order of {} examples ({} bytes) does not fit in memory", op, n,
                 static_cast<double>(n) * sizeof(std::int64_t));
  }
  for (std::int64_t i = 0; i < n; ++i) order[static_cast<std::size_t>(i)] = i;
  return order;
}

}  // namespace

std::vector<std::int64_t> shuffled_order(std::int64_t n, std::uint64_t seed, std::uint64_t epoch) {
  if (n < 0) detail::fail("shuffled_order: n must be >= 0, got {}", n);
  std::vector<std::int64_t> order = identity_order(n, "shuffled_order");
  // Fisher-Yates from the top: step i swaps position i with j uniform in [0, i]. Philox4x32-10,
  // key = seed, counter = (i, epoch): the draw of a step depends on nothing but (seed, epoch, i).
  // j = r mod (i + 1) over a 64-bit r; the bias is below (i + 1) / 2^64.
  using Philox = r123::Philox4x32;
  Philox rng;
  Philox::key_type key = {
      {static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)}};
  Philox::ctr_type ctr = {
      {0, 0, static_cast<std::uint32_t>(epoch), static_cast<std::uint32_t>(epoch >> 32)}};
  for (std::int64_t i = n - 1; i > 0; --i) {
    const auto u = static_cast<std::uint64_t>(i);
    ctr[0] = static_cast<std::uint32_t>(u);
    ctr[1] = static_cast<std::uint32_t>(u >> 32);
    const Philox::ctr_type r = rng(ctr, key);
    const std::uint64_t x = static_cast<std::uint64_t>(r[0]) | static_cast<std::uint64_t>(r[1])
                                                                   << 32;
    const auto j = static_cast<std::size_t>(x % (u + 1));
    std::swap(order[static_cast<std::size_t>(i)], order[j]);
  }
  return order;
}

struct DataLoader::Impl {
  std::shared_ptr<const Dataset> dataset;
  DataLoaderOptions opt;
  std::int64_t n = 0;
  std::int64_t batches = 0;
  Shape feature_shape, label_shape;
  DType feature_dtype = DType::f32, label_dtype = DType::f32;
  std::size_t feature_bytes = 0, label_bytes = 0;

  // Caller-side state.
  std::uint64_t epoch = 0;
  std::int64_t position = 0;

  // Producer-side state: touched only by the thread that makes batches (the worker with
  // prefetch, else the caller).
  std::uint64_t order_epoch = 0;
  bool order_valid = false;
  std::vector<std::int64_t> order;
  std::vector<unsigned char> stage_f, stage_l;  // host staging for a CUDA target, reused

  // The prefetch thread and its one-slot queue.
  struct Job {
    std::uint64_t epoch = 0;
    std::int64_t pos = 0;
    bool operator==(const Job& o) const { return epoch == o.epoch && pos == o.pos; }
  };
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  bool has_request = false;
  Job request;
  bool busy = false;
  Job busy_job;
  bool has_result = false;
  Job result_job;
  // The made batch. A batch for a CUDA target that the prefetch thread could not upload (a
  // capture of the device was running) holds its host staging instead, and next() uploads it.
  struct Made {
    Batch batch;
    bool staged = false;
    Shape fs, ls;
    std::vector<unsigned char> f, l;
  };
  Made result;
  std::exception_ptr result_error;
  std::thread worker;

  ~Impl() { shutdown(); }

  void shutdown() {
    {
      std::lock_guard<std::mutex> lock(mu);
      stop = true;
    }
    cv.notify_all();
    if (worker.joinable()) worker.join();
  }

  const std::vector<std::int64_t>& order_for(std::uint64_t e) {
    if (!order_valid || order_epoch != e) {
      order = opt.shuffle ? shuffled_order(n, opt.seed, e) : identity_order(n, "DataLoader");
      order_epoch = e;
      order_valid = true;
    }
    return order;
  }

  void upload(Made& m) const {
    m.batch.features = Tensor::from_host(m.f.data(), m.fs, feature_dtype, opt.device);
    m.batch.labels = Tensor::from_host(m.l.data(), m.ls, label_dtype, opt.device);
    m.staged = false;
  }

  // Makes the batch of `job`. On the prefetch thread (`worker`) the upload to a CUDA target is
  // left to next() while a capture of the device runs: a copy into the captured stream would
  // invalidate the capture.
  Made make(const Job& job, bool worker) {
    const std::vector<std::int64_t>& ord = order_for(job.epoch);
    const std::int64_t start = job.pos * opt.batch_size;
    const std::int64_t b = std::min(opt.batch_size, n - start);
    Shape fs{b}, ls{b};
    fs.insert(fs.end(), feature_shape.begin(), feature_shape.end());
    ls.insert(ls.end(), label_shape.begin(), label_shape.end());
    const std::int64_t* idx = ord.data() + start;
    Made out;
    out.batch.epoch = job.epoch;
    out.batch.index = job.pos;
    if (opt.device.is_cpu()) {
      out.batch.features = Tensor::empty(fs, feature_dtype);
      out.batch.labels = Tensor::empty(ls, label_dtype);
      dataset->get_batch(idx, b, out.batch.features.data(), out.batch.labels.data());
      return out;
    }
    // Regular (pageable) host staging: the copy reads it before returning, so the buffers
    // can be reused for the next batch at once.
    stage_f.resize(static_cast<std::size_t>(b) * feature_bytes);
    stage_l.resize(static_cast<std::size_t>(b) * label_bytes);
    dataset->get_batch(idx, b, stage_f.data(), stage_l.data());
    out.f.swap(stage_f);
    out.l.swap(stage_l);
    out.fs = std::move(fs);
    out.ls = std::move(ls);
    out.staged = true;
    auto up = [&] { upload(out); };
    if (worker) {
      if (!detail::upload_unless_capturing(opt.device, up)) return out;  // staged: next() uploads
    } else {
      up();
    }
    out.f.swap(stage_f);  // reused by the next batch
    out.l.swap(stage_l);
    return out;
  }

  void run() {
    std::unique_lock<std::mutex> lock(mu);
    for (;;) {
      cv.wait(lock, [&] { return stop || has_request; });
      if (stop) return;
      const Job job = request;
      has_request = false;
      busy = true;
      busy_job = job;
      lock.unlock();
      Made b;
      std::exception_ptr err;
      try {
        b = make(job, true);
      } catch (...) {
        err = std::current_exception();
      }
      lock.lock();
      busy = false;
      has_result = true;
      result_job = job;
      result = std::move(b);
      result_error = err;
      cv.notify_all();
    }
  }

  // Called with `mu` held: make sure `job` is being or will be made.
  void ensure_requested(const Job& job) {
    if (has_result && result_job == job) return;
    if (busy && busy_job == job) return;
    if (has_request && request == job) return;
    request = job;
    has_request = true;
    cv.notify_all();
  }

  Batch fetch(const Job& job) {
    if (!opt.prefetch) return std::move(make(job, false).batch);
    std::unique_lock<std::mutex> lock(mu);
    if (!worker.joinable()) worker = std::thread([this] { run(); });
    for (;;) {
      if (has_result && !(result_job == job)) {  // stale (after set_epoch / load_state_dict)
        has_result = false;
        result = Made();
        result_error = nullptr;
      }
      if (has_result) break;
      ensure_requested(job);
      cv.wait(lock);
    }
    has_result = false;
    Made made = std::move(result);
    result = Made();
    std::exception_ptr err = std::exchange(result_error, nullptr);
    if (err) std::rethrow_exception(err);
    if (made.staged) {
      lock.unlock();  // the upload of a batch staged during a capture (see make)
      upload(made);
      lock.lock();
    }
    Batch b = std::move(made.batch);
    // Prepare the next batch (the first of the next epoch after the last one).
    if (job.pos + 1 < batches) {
      ensure_requested(Job{job.epoch, job.pos + 1});
    } else {
      ensure_requested(Job{job.epoch + 1, 0});
    }
    return b;
  }
};

DataLoader::DataLoader(std::shared_ptr<const Dataset> dataset, const DataLoaderOptions& options)
    : impl_(std::make_unique<Impl>()) {
  if (!dataset) detail::fail("DataLoader: dataset is null");
  if (options.batch_size < 1) {
    detail::fail("DataLoader: batch_size must be >= 1, got {}", options.batch_size);
  }
  Impl& m = *impl_;
  m.opt = options;
  m.n = dataset->size();
  if (m.n < 0) detail::fail("DataLoader: dataset size {} is negative", m.n);
  // n / b, rounded up without drop_last (n + b - 1 overflowed for a b near INT64_MAX)
  m.batches = m.n / options.batch_size + (!options.drop_last && m.n % options.batch_size != 0);
  m.feature_shape = dataset->feature_shape();
  m.label_shape = dataset->label_shape();
  m.feature_dtype = dataset->feature_dtype();
  m.label_dtype = dataset->label_dtype();
  m.feature_bytes = dataset->feature_bytes();
  m.label_bytes = dataset->label_bytes();
  if (!options.device.is_cpu()) (void)Tensor::empty({0}, DType::u8, options.device);  // usable?
  m.dataset = std::move(dataset);
}

DataLoader::~DataLoader() = default;
DataLoader::DataLoader(DataLoader&&) noexcept = default;
DataLoader& DataLoader::operator=(DataLoader&&) noexcept = default;

DataLoader::Impl& DataLoader::live() const {
  if (!impl_) detail::fail("DataLoader: this loader was moved from");
  return *impl_;
}

bool DataLoader::next(Batch& out) {
  Impl& m = live();
  if (m.position >= m.batches) {
    ++m.epoch;
    m.position = 0;
    return false;
  }
  out = m.fetch(Impl::Job{m.epoch, m.position});
  ++m.position;
  return true;
}

std::int64_t DataLoader::num_batches() const { return live().batches; }
std::int64_t DataLoader::dataset_size() const { return live().n; }
const DataLoaderOptions& DataLoader::options() const { return live().opt; }
const Dataset& DataLoader::dataset() const { return *live().dataset; }
std::uint64_t DataLoader::epoch() const { return live().epoch; }
std::int64_t DataLoader::position() const { return live().position; }

void DataLoader::set_epoch(std::uint64_t epoch, std::int64_t position) {
  Impl& m = live();
  if (position < 0 || position > m.batches) {
    detail::fail("DataLoader::set_epoch: position must be in [0, {}], got {}", m.batches, position);
  }
  m.epoch = epoch;
  m.position = position;
}

std::vector<std::int64_t> DataLoader::epoch_order(std::uint64_t epoch) const {
  const Impl& m = live();
  if (m.opt.shuffle) return shuffled_order(m.n, m.opt.seed, epoch);
  return identity_order(m.n, "DataLoader::epoch_order");
}

StateDict DataLoader::state_dict() const {
  const Impl& m = live();
  StateDict s;
  // Numbers are doubles: the seed is split into two exact 32-bit halves.
  s.scalars["epoch"] = static_cast<double>(m.epoch);
  s.scalars["position"] = static_cast<double>(m.position);
  s.scalars["seed_lo"] = static_cast<double>(m.opt.seed & 0xffffffffu);
  s.scalars["seed_hi"] = static_cast<double>(m.opt.seed >> 32);
  s.scalars["batch_size"] = static_cast<double>(m.opt.batch_size);
  s.scalars["dataset_size"] = static_cast<double>(m.n);
  s.scalars["shuffle"] = m.opt.shuffle ? 1.0 : 0.0;
  s.scalars["drop_last"] = m.opt.drop_last ? 1.0 : 0.0;
  return s;
}

void DataLoader::load_state_dict(const StateDict& s) {
  const Impl& m = live();
  auto get = [&](const char* key) {
    auto it = s.scalars.find(key);
    if (it == s.scalars.end()) {
      detail::fail("DataLoader::load_state_dict: the state has no '{}'", key);
    }
    const double v = it->second;
    // Range first: the conversion of a double at or past 2^64 (or NaN) is undefined.
    if (!(v >= 0 && v < 18446744073709551616.0) || v != std::floor(v)) {
      detail::fail("DataLoader::load_state_dict: '{}' must be a non-negative integer, got {}", key,
                   v);
    }
    return static_cast<std::uint64_t>(v);
  };
  auto expect = [&](const char* key, std::uint64_t mine) {
    const std::uint64_t v = get(key);
    if (v != mine) {
      detail::fail(
          "DataLoader::load_state_dict: '{}' is {} in the state but {} in this loader; the "
          "remaining batches would differ",
          key, v, mine);
    }
  };
  expect("batch_size", static_cast<std::uint64_t>(m.opt.batch_size));
  expect("dataset_size", static_cast<std::uint64_t>(m.n));
  expect("shuffle", m.opt.shuffle ? 1 : 0);
  expect("drop_last", m.opt.drop_last ? 1 : 0);
  if (m.opt.shuffle) {
    const std::uint64_t lo = get("seed_lo"), hi = get("seed_hi");
    if (lo > 0xffffffffu || hi > 0xffffffffu) {
      detail::fail(
          "DataLoader::load_state_dict: seed_lo and seed_hi must be 32-bit halves, got {} and {}",
          lo, hi);
    }
    const std::uint64_t seed = lo | hi << 32;
    if (seed != m.opt.seed) {
      detail::fail("DataLoader::load_state_dict: seed is {} in the state but {} in this loader",
                   seed, m.opt.seed);
    }
  }
  const std::uint64_t epoch = get("epoch");
  const std::uint64_t position = get("position");
  if (position > static_cast<std::uint64_t>(m.batches)) {
    detail::fail("DataLoader::load_state_dict: position {} is past the {} batches of an epoch",
                 position, m.batches);
  }
  set_epoch(epoch, static_cast<std::int64_t>(position));
}

}  // namespace trainrt
