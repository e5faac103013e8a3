// Data layer: IDX files (plain and gzip, round trips, the real Fashion-MNIST files when the
// dataset-fashion-mnist package is installed, corrupt and truncated files), CSV files (good
// and bad rows), TensorDataset, and the DataLoader (each index once per epoch, seeded
// deterministic order, drop_last, partial last batch, resume mid-epoch, prefetch thread
// errors and shutdown, batches on every backend).
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <set>
#include <thread>

#include "test_util.hpp"
#include "trainrt/data.hpp"
#include "trainrt/graph.hpp"

namespace {

using trainrt::Batch;
using trainrt::CsvHeader;
using trainrt::CsvOptions;
using trainrt::DataLoader;
using trainrt::DataLoaderOptions;
using trainrt::Device;
using trainrt::DType;
using trainrt::Shape;
using trainrt::Tensor;
using trainrt::TensorDataset;
using trainrt_test::BackendTest;

using Bytes = std::vector<unsigned char>;

/// A fresh, empty directory under the build tree (one per test).
std::string temp_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = std::string(info->test_suite_name()) + "_" + info->name();
  std::replace(name.begin(), name.end(), '/', '_');
  const std::filesystem::path dir =
      std::filesystem::path(TRAINRT_TEST_BINARY_DIR) / "test_data_tmp" / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

void write_bytes(const std::string& path, const Bytes& b) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  ASSERT_TRUE(f.good()) << path;
}

void write_text(const std::string& path, const std::string& s) {
  write_bytes(path, Bytes(s.begin(), s.end()));
}

Bytes gzip(const Bytes& in) {
  z_stream zs;
  std::memset(&zs, 0, sizeof zs);
  EXPECT_EQ(deflateInit2(&zs, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY), Z_OK);
  Bytes out(deflateBound(&zs, static_cast<uLong>(in.size())) + 64);
  zs.next_in = const_cast<Bytef*>(in.data());
  zs.avail_in = static_cast<uInt>(in.size());
  zs.next_out = out.data();
  zs.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

void put_be32(Bytes& b, std::uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<unsigned char>(v >> s));
}

/// An IDX file: header for `type` and `dims`, then `payload` as given.
Bytes idx_file(unsigned char type, const std::vector<std::uint32_t>& dims, const Bytes& payload) {
  Bytes b{0, 0, type, static_cast<unsigned char>(dims.size())};
  for (std::uint32_t d : dims) put_be32(b, d);
  b.insert(b.end(), payload.begin(), payload.end());
  return b;
}

/// The message of the trainrt::Error that `call` throws ("" and a failure if none).
std::string error_of(const std::function<void()>& call) {
  try {
    call();
  } catch (const trainrt::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-trainrt exception: " << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error thrown";
  return "";
}

#define EXPECT_HAS(msg, part) \
  EXPECT_NE(std::string(msg).find(part), std::string::npos) << "message: " << (msg)

// ---- IDX ----------------------------------------------------------------------------------------

TEST(Idx, ImagesAndLabelsRoundTripPlainAndGzip) {
  const std::string dir = temp_dir();
  Bytes pixels;
  for (int i = 0; i < 5 * 4 * 3; ++i) pixels.push_back(static_cast<unsigned char>((i * 37) % 256));
  pixels[0] = 0;
  pixels[1] = 255;
  const Bytes images = idx_file(0x08, {5, 4, 3}, pixels);
  const Bytes labels = idx_file(0x08, {5}, {3, 0, 9, 1, 7});
  write_bytes(dir + "/img", images);
  write_bytes(dir + "/img.gz", gzip(images));
  write_bytes(dir + "/lab", labels);
  write_bytes(dir + "/lab.gz", gzip(labels));

  for (const std::string suffix : {"", ".gz"}) {
    SCOPED_TRACE(suffix);
    const Tensor raw = trainrt::read_idx(dir + "/img" + suffix);
    EXPECT_EQ(raw.shape(), (Shape{5, 4, 3}));
    EXPECT_EQ(raw.dtype(), DType::u8);
    EXPECT_EQ(raw.to_vector<std::uint8_t>(),
              std::vector<std::uint8_t>(pixels.begin(), pixels.end()));

    const Tensor img = trainrt::read_idx_images(dir + "/img" + suffix);
    EXPECT_EQ(img.shape(), (Shape{5, 4, 3}));
    EXPECT_EQ(img.dtype(), DType::f32);
    const std::vector<float> v = img.to_vector<float>();
    for (std::size_t i = 0; i < v.size(); ++i) {
      ASSERT_EQ(v[i], static_cast<float>(pixels[i]) / 255.0f) << i;
    }
    EXPECT_EQ(v[0], 0.0f);
    EXPECT_EQ(v[1], 1.0f);

    const Tensor flat = trainrt::read_idx_images(dir + "/img" + suffix, {}, /*flatten=*/true);
    EXPECT_EQ(flat.shape(), (Shape{5, 12}));
    EXPECT_EQ(flat.to_vector<float>(), v);

    trainrt::ImageNormalization norm;
    norm.mean = 0.5f;
    norm.stddev = 0.25f;
    const std::vector<float> n =
        trainrt::read_idx_images(dir + "/img" + suffix, norm).to_vector<float>();
    for (std::size_t i = 0; i < n.size(); ++i) {
      ASSERT_EQ(n[i], (static_cast<float>(pixels[i]) / 255.0f - 0.5f) / 0.25f) << i;
    }

    const Tensor lab = trainrt::read_idx_labels(dir + "/lab" + suffix);
    EXPECT_EQ(lab.shape(), (Shape{5}));
    EXPECT_EQ(lab.dtype(), DType::i64);
    EXPECT_EQ(lab.to_vector<std::int64_t>(), (std::vector<std::int64_t>{3, 0, 9, 1, 7}));
  }
}

TEST(Idx, OtherElementTypesBigEndian) {
  const std::string dir = temp_dir();
  {
    Bytes p;
    for (std::uint32_t v : {1u, 0xffffffffu, 0x12345678u, 0x80000000u}) put_be32(p, v);
    write_bytes(dir + "/i32", idx_file(0x0C, {2, 2}, p));
    const Tensor t = trainrt::read_idx(dir + "/i32");
    EXPECT_EQ(t.dtype(), DType::i32);
    EXPECT_EQ(
        t.to_vector<std::int32_t>(),
        (std::vector<std::int32_t>{1, -1, 0x12345678, std::numeric_limits<std::int32_t>::min()}));
  }
  {
    Bytes p;
    for (float f : {1.5f, -2.25f, 0.0f}) {
      std::uint32_t u;
      std::memcpy(&u, &f, 4);
      put_be32(p, u);
    }
    write_bytes(dir + "/f32", gzip(idx_file(0x0D, {3}, p)));
    const Tensor t = trainrt::read_idx(dir + "/f32");
    EXPECT_EQ(t.dtype(), DType::f32);
    EXPECT_EQ(t.to_vector<float>(), (std::vector<float>{1.5f, -2.25f, 0.0f}));
  }
  {
    Bytes p;
    const double d = -3.125;
    std::uint64_t u;
    std::memcpy(&u, &d, 8);
    put_be32(p, static_cast<std::uint32_t>(u >> 32));
    put_be32(p, static_cast<std::uint32_t>(u));
    write_bytes(dir + "/f64", idx_file(0x0E, {1, 1, 1, 1}, p));
    const Tensor t = trainrt::read_idx(dir + "/f64");
    EXPECT_EQ(t.shape(), (Shape{1, 1, 1, 1}));
    EXPECT_EQ(t.to_vector<double>(), (std::vector<double>{-3.125}));
  }
  {
    write_bytes(dir + "/i8", idx_file(0x09, {3}, {0x00, 0x7f, 0x80}));
    EXPECT_EQ(trainrt::read_idx(dir + "/i8").to_vector<std::int32_t>(),
              (std::vector<std::int32_t>{0, 127, -128}));
    write_bytes(dir + "/i16", idx_file(0x0B, {2}, {0x01, 0x02, 0xff, 0xfe}));
    EXPECT_EQ(trainrt::read_idx(dir + "/i16").to_vector<std::int32_t>(),
              (std::vector<std::int32_t>{0x0102, -2}));
  }
  {
    write_bytes(dir + "/empty", idx_file(0x08, {0, 28, 28}, {}));
    EXPECT_EQ(trainrt::read_idx_images(dir + "/empty").shape(), (Shape{0, 28, 28}));
  }
}

TEST(Idx, CorruptAndTruncatedFilesGiveClearErrors) {
  const std::string dir = temp_dir();
  const Bytes pixels(2 * 3 * 3, 7);
  const Bytes good = idx_file(0x08, {2, 3, 3}, pixels);  // 16 + 18 = 34 bytes
  auto path = [&](const char* name) { return dir + "/" + name; };

  write_bytes(path("short"), Bytes{0, 0, 8});
  std::string m = error_of([&] { trainrt::read_idx(path("short")); });
  EXPECT_HAS(m, path("short"));
  EXPECT_HAS(m, "truncated header");
  EXPECT_HAS(m, "3");

  write_bytes(path("short_dims"), Bytes(good.begin(), good.begin() + 10));
  m = error_of([&] { trainrt::read_idx(path("short_dims")); });
  EXPECT_HAS(m, path("short_dims"));
  EXPECT_HAS(m, "3 dimensions need 16 header bytes, the file has 10");

  Bytes magic = good;
  magic[0] = 0x1a;
  write_bytes(path("magic"), magic);
  m = error_of([&] { trainrt::read_idx(path("magic")); });
  EXPECT_HAS(m, path("magic"));
  EXPECT_HAS(m, "wrong magic number 0x1a000803");

  Bytes type = good;
  type[2] = 0x0A;
  write_bytes(path("type"), type);
  m = error_of([&] { trainrt::read_idx(path("type")); });
  EXPECT_HAS(m, "unknown element type code 0x0a");

  write_bytes(path("zero_dims"), Bytes{0, 0, 8, 0});
  EXPECT_HAS(error_of([&] { trainrt::read_idx(path("zero_dims")); }), "0 dimensions");

  write_bytes(path("truncated"), Bytes(good.begin(), good.end() - 5));
  m = error_of([&] { trainrt::read_idx_images(path("truncated")); });
  EXPECT_HAS(m, path("truncated"));
  EXPECT_HAS(m, "truncated data");
  EXPECT_HAS(m, "[2, 3, 3]");
  EXPECT_HAS(m, "34 bytes in all, the file has 29 bytes");

  Bytes longer = good;
  longer.push_back(1);
  write_bytes(path("long"), longer);
  m = error_of([&] { trainrt::read_idx(path("long")); });
  EXPECT_HAS(m, "wrong size of data");
  EXPECT_HAS(m, "the file has 35 bytes");

  // A header whose dimensions promise far more than the file holds.
  write_bytes(path("huge"), idx_file(0x08, {60000, 28, 28}, pixels));
  m = error_of([&] { trainrt::read_idx_images(path("huge")); });
  EXPECT_HAS(m, "47040000 u8 elements");
  EXPECT_HAS(m, "the file has 34 bytes");

  // Images and labels are checked for what they must be.
  write_bytes(path("labels"), idx_file(0x08, {3}, {1, 2, 3}));
  m = error_of([&] { trainrt::read_idx_images(path("labels")); });
  EXPECT_HAS(m, path("labels"));
  EXPECT_HAS(m, "expected unsigned bytes in 3 dimensions (magic 0x00000803)");
  EXPECT_HAS(m, "with 1 dimensions");
  m = error_of([&] { trainrt::read_idx_labels(path("short_dims")); });
  EXPECT_HAS(m, "expected unsigned bytes in 1 dimension (magic 0x00000801)");

  m = error_of([&] { trainrt::read_idx(path("no_such_file")); });
  EXPECT_HAS(m, path("no_such_file"));
  EXPECT_HAS(m, "No such file");

  trainrt::ImageNormalization bad;
  bad.stddev = 0.0f;
  EXPECT_HAS(error_of([&] { trainrt::read_idx_images(path("labels"), bad); }), "stddev");

  // No images of 2^32-1 x 2^32-1 pixels: rows * cols would overflow when flattened.
  write_bytes(path("huge_dims"), idx_file(0x08, {0, 0xffffffffu, 0xffffffffu}, {}));
  EXPECT_HAS(error_of([&] { trainrt::read_idx_images(path("huge_dims"), {}, true); }),
             "too large to flatten");
}

TEST(Idx, CorruptAndTruncatedGzipGiveClearErrors) {
  const std::string dir = temp_dir();
  Bytes pixels;
  for (int i = 0; i < 4000; ++i) pixels.push_back(static_cast<unsigned char>((i * i) % 251));
  const Bytes gz = gzip(idx_file(0x08, {10, 20, 20}, pixels));
  ASSERT_GT(gz.size(), 100u);

  write_bytes(dir + "/cut.gz", Bytes(gz.begin(), gz.begin() + static_cast<long>(gz.size() / 2)));
  std::string m = error_of([&] { trainrt::read_idx_images(dir + "/cut.gz"); });
  EXPECT_HAS(m, dir + "/cut.gz");
  EXPECT_HAS(m, "truncated gzip file");

  // Only the 8-byte trailer (CRC and size) missing.
  write_bytes(dir + "/notrailer.gz", Bytes(gz.begin(), gz.end() - 8));
  EXPECT_HAS(error_of([&] { trainrt::read_idx_images(dir + "/notrailer.gz"); }), "truncated gzip");

  Bytes bad = gz;
  for (std::size_t i = 20; i < 40; ++i) bad[i] ^= 0x5a;
  write_bytes(dir + "/bad.gz", bad);
  m = error_of([&] { trainrt::read_idx_images(dir + "/bad.gz"); });
  EXPECT_HAS(m, dir + "/bad.gz");
  EXPECT_HAS(m, "corrupt gzip data");

  Bytes crc = gz;
  crc[crc.size() - 6] ^= 0xff;  // CRC32 of the trailer
  write_bytes(dir + "/crc.gz", crc);
  EXPECT_HAS(error_of([&] { trainrt::read_idx_images(dir + "/crc.gz"); }), "corrupt gzip data");

  Bytes junk = gz;
  junk.push_back('x');
  junk.push_back('y');
  write_bytes(dir + "/junk.gz", junk);
  EXPECT_HAS(error_of([&] { trainrt::read_idx_images(dir + "/junk.gz"); }),
             "2 unexpected bytes after the compressed stream");

  // A gzip file that decompresses to a truncated IDX file: the IDX size check still applies.
  const Bytes idx = idx_file(0x08, {10, 20, 20}, pixels);
  write_bytes(dir + "/short_idx.gz", gzip(Bytes(idx.begin(), idx.end() - 100)));
  m = error_of([&] { trainrt::read_idx_images(dir + "/short_idx.gz"); });
  EXPECT_HAS(m, "truncated data");
  EXPECT_HAS(m, "4016 bytes in all, the file has 3916 bytes");

  // Two concatenated members are one file (as gzip -c a b).
  const Bytes part1(idx.begin(), idx.begin() + 1000), part2(idx.begin() + 1000, idx.end());
  Bytes two = gzip(part1);
  const Bytes g2 = gzip(part2);
  two.insert(two.end(), g2.begin(), g2.end());
  write_bytes(dir + "/two.gz", two);
  EXPECT_EQ(trainrt::read_idx(dir + "/two.gz").to_vector<std::uint8_t>(),
            std::vector<std::uint8_t>(pixels.begin(), pixels.end()));
}

// A small gzip file that inflates past memory is an Error, not std::bad_alloc, with 256 MiB
// to spare in a child process (test_util.hpp): 1024 concatenated members of 1 MiB of zeros
// (1 GiB inflated, from a file of about 1 MiB), read as CSV, whose size nothing declares. An
// IDX file inflates only as much as its header declares: the same gigabyte after a header of
// 10 elements is refused as the wrong size within the limit (it inflated everything first:
// gigabytes for a few MB of gzip). A trailer that declares 2 GiB for a small file (gunzip
// reserves what the trailer declares, as a hint) gives the error it gives with memory to
// spare: the size does not match.
TEST(Idx, GzipThatInflatesPastMemoryIsAnError) {
  const std::string dir = temp_dir();
  const Bytes member = gzip(Bytes(std::size_t{1} << 20, 0));
  Bytes bomb;
  for (int i = 0; i < 1024; ++i) bomb.insert(bomb.end(), member.begin(), member.end());
  write_bytes(dir + "/bomb.csv.gz", bomb);
  const std::string got = trainrt_test::outcome_under_memory_limit(
      [&] { trainrt::read_csv(dir + "/bomb.csv.gz"); }, std::size_t{256} << 20);
  if (got.empty()) GTEST_SKIP() << "no address-space limit under AddressSanitizer";
  EXPECT_EQ(got.rfind("error: '" + dir + "/bomb.csv.gz': out of memory inflating the gzip data", 0),
            0u)
      << got;
  Bytes idx_bomb = gzip(idx_file(0x08, {10}, Bytes(10, 7)));
  idx_bomb.insert(idx_bomb.end(), bomb.begin(), bomb.end());
  write_bytes(dir + "/bomb.gz", idx_bomb);
  EXPECT_HAS(trainrt_test::outcome_under_memory_limit([&] { trainrt::read_idx(dir + "/bomb.gz"); },
                                                      std::size_t{256} << 20),
             "wrong size of data: the header declares 10 u8 elements of shape [10], 18 bytes in "
             "all, the gzip data inflates to more");

  Bytes declared = gzip(idx_file(0x08, {3}, {1, 2, 3}));
  const std::uint32_t two_gib = 1u << 31;
  for (int b = 0; b < 4; ++b)
    declared[declared.size() - 4 + b] = static_cast<unsigned char>(two_gib >> (8 * b));
  write_bytes(dir + "/declared.gz", declared);
  const std::string path = dir + "/declared.gz";
  const std::string unlimited = "error: " + error_of([&] { trainrt::read_idx(path); });
  EXPECT_HAS(unlimited, "corrupt gzip data");
  EXPECT_EQ(trainrt_test::outcome_under_memory_limit([&] { trainrt::read_idx(path); },
                                                     std::size_t{256} << 20),
            unlimited);
}

TEST(Idx, LoadFashionMnistLayoutAndMismatch) {
  const std::string dir = temp_dir();
  Bytes pixels(3 * 28 * 28);
  for (std::size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<unsigned char>(i % 256);
  write_bytes(dir + "/t10k-images-idx3-ubyte", idx_file(0x08, {3, 28, 28}, pixels));
  write_bytes(dir + "/t10k-labels-idx1-ubyte.gz", gzip(idx_file(0x08, {3}, {4, 5, 6})));
  const TensorDataset ds = trainrt::load_fashion_mnist(dir, /*train=*/false, {}, /*flatten=*/true);
  EXPECT_EQ(ds.size(), 3);
  EXPECT_EQ(ds.feature_shape(), (Shape{784}));
  EXPECT_EQ(ds.label_shape(), (Shape{}));
  EXPECT_EQ(ds.labels().to_vector<std::int64_t>(), (std::vector<std::int64_t>{4, 5, 6}));

  std::string m = error_of([&] { trainrt::load_fashion_mnist(dir, /*train=*/true); });
  EXPECT_HAS(m, dir + "/train-images-idx3-ubyte.gz");

  write_bytes(dir + "/t10k-labels-idx1-ubyte", idx_file(0x08, {2}, {1, 2}));  // plain wins
  m = error_of([&] { trainrt::load_fashion_mnist(dir, /*train=*/false); });
  EXPECT_HAS(m, "holds 3 images but");
  EXPECT_HAS(m, "holds 2 labels");
}

TEST(Idx, RealFashionMnist) {
  const std::string dir = trainrt::default_fashion_mnist_dir();
  struct stat st;
  if (::stat((dir + "/train-images-idx3-ubyte.gz").c_str(), &st) != 0 &&
      ::stat((dir + "/train-images-idx3-ubyte").c_str(), &st) != 0) {
    GTEST_SKIP() << "Fashion-MNIST not found in " << dir
                 << " (Debian/Ubuntu package dataset-fashion-mnist)";
  }
  for (bool train : {true, false}) {
    SCOPED_TRACE(train ? "train" : "test");
    const TensorDataset ds = trainrt::load_fashion_mnist(dir, train);
    const std::int64_t n = train ? 60000 : 10000;
    EXPECT_EQ(ds.size(), n);
    EXPECT_EQ(ds.features().shape(), (Shape{n, 28, 28}));
    EXPECT_EQ(ds.feature_dtype(), DType::f32);
    EXPECT_EQ(ds.labels().shape(), (Shape{n}));
    EXPECT_EQ(ds.label_dtype(), DType::i64);
    const std::vector<std::int64_t> labels = ds.labels().to_vector<std::int64_t>();
    std::vector<std::int64_t> counts(10, 0);
    for (std::int64_t l : labels) {
      ASSERT_GE(l, 0);
      ASSERT_LE(l, 9);
      ++counts[static_cast<std::size_t>(l)];
    }
    for (std::int64_t c : counts) EXPECT_EQ(c, n / 10);  // the classes are balanced
    const std::vector<float> x = ds.features().to_vector<float>();
    const auto mm = std::minmax_element(x.begin(), x.end());
    EXPECT_EQ(*mm.first, 0.0f);
    EXPECT_EQ(*mm.second, 1.0f);
    double mean = 0;
    for (float v : x) mean += v;
    mean /= static_cast<double>(x.size());
    EXPECT_NEAR(mean, 0.286, 0.005);  // Fashion-MNIST's well-known pixel mean
  }
}

// ---- CSV ----------------------------------------------------------------------------------------

TEST(Csv, HeaderDetectedLabelByNameAndIndex) {
  const std::string dir = temp_dir();
  write_text(dir + "/a.csv",
             "x1, x2 ,\"label\",x3\r\n"
             "1.5,2,0,-3e2\r\n"
             "\r\n"
             "+4,5.25,2,6\r\n"
             "7,8,1,.5");  // no final newline
  CsvOptions opt;
  opt.label_column = "label";
  const trainrt::CsvTable t = trainrt::read_csv(dir + "/a.csv", opt);
  EXPECT_EQ(t.feature_names, (std::vector<std::string>{"x1", "x2", "x3"}));
  EXPECT_EQ(t.label_name, "label");
  EXPECT_EQ(t.features.shape(), (Shape{3, 3}));
  EXPECT_EQ(t.features.dtype(), DType::f32);
  EXPECT_EQ(t.features.to_vector<float>(),
            (std::vector<float>{1.5f, 2, -300, 4, 5.25f, 6, 7, 8, 0.5f}));
  EXPECT_EQ(t.labels.dtype(), DType::i64);
  EXPECT_EQ(t.labels.to_vector<std::int64_t>(), (std::vector<std::int64_t>{0, 2, 1}));

  opt.label_column.clear();
  opt.label_index = 2;
  EXPECT_EQ(trainrt::read_csv(dir + "/a.csv", opt).labels.to_vector<std::int64_t>(),
            (std::vector<std::int64_t>{0, 2, 1}));
  opt.label_index = -2;
  EXPECT_EQ(trainrt::read_csv(dir + "/a.csv", opt).label_name, "label");

  const TensorDataset ds = t.dataset();
  EXPECT_EQ(ds.size(), 3);
  EXPECT_EQ(ds.feature_shape(), (Shape{3}));
}

TEST(Csv, NoHeaderRegressionTargetsAndDelimiter) {
  const std::string dir = temp_dir();
  write_text(dir + "/b.csv", "1;2;0.5\n3;4;-1.25\n");
  CsvOptions opt;
  opt.delimiter = ';';
  opt.label_dtype = DType::f64;
  opt.feature_dtype = DType::f64;
  const trainrt::CsvTable t = trainrt::read_csv(dir + "/b.csv", opt);
  EXPECT_EQ(t.feature_names, (std::vector<std::string>{"col0", "col1"}));
  EXPECT_EQ(t.label_name, "col2");
  EXPECT_EQ(t.features.to_vector<double>(), (std::vector<double>{1, 2, 3, 4}));
  EXPECT_EQ(t.labels.to_vector<double>(), (std::vector<double>{0.5, -1.25}));

  // header = present treats a numeric first line as names.
  opt.header = CsvHeader::present;
  const trainrt::CsvTable h = trainrt::read_csv(dir + "/b.csv", opt);
  EXPECT_EQ(h.features.shape(), (Shape{1, 2}));
  EXPECT_EQ(h.label_name, "0.5");
  opt.header = CsvHeader::absent;
  opt.label_dtype = DType::i32;
  opt.label_index = 0;
  const trainrt::CsvTable i = trainrt::read_csv(dir + "/b.csv", opt);
  EXPECT_EQ(i.labels.dtype(), DType::i32);
  EXPECT_EQ(i.labels.to_vector<std::int32_t>(), (std::vector<std::int32_t>{1, 3}));
}

// Underflow is the nearest double (0 or subnormal), as strtod and Python's float(); a quoted
// header name's doubled quotes are one quote (RFC 4180, Python's csv module).
TEST(Csv, UnderflowAndEscapedQuotesAsPython) {
  const std::string path = temp_dir() + "/u.csv";
  write_text(path, "\"a\"\"b\",y\n1e-400,0\n-2.4e-320,1\n");
  CsvOptions opt;
  opt.label_column = "y";
  opt.feature_dtype = DType::f64;
  const trainrt::CsvTable t = trainrt::read_csv(path, opt);
  EXPECT_EQ(t.feature_names, std::vector<std::string>{"a\"b"});
  EXPECT_EQ(t.features.to_vector<double>(), (std::vector<double>{0.0, -2.4e-320}));
}

TEST(Csv, BadRowsNameTheLine) {
  const std::string dir = temp_dir();
  auto err = [&](const std::string& text, CsvOptions opt = {}) {
    write_text(dir + "/bad.csv", text);
    return error_of([&] { trainrt::read_csv(dir + "/bad.csv", opt); });
  };
  std::string m = err("a,b,y\n1,2,0\n\n3,4\n");
  EXPECT_HAS(m, dir + "/bad.csv");
  EXPECT_HAS(m, "line 4: expected 3 columns, got 2");
  m = err("a,b,y\n1,2,0\n1,oops,1\n");
  EXPECT_HAS(m, "line 3: column 2 ('b'): 'oops' is not a number");
  m = err("a,b,y\n1,,0\n");
  EXPECT_HAS(m, "line 2: column 2 ('b') is empty");
  m = err("a,b,y\n1,2,0.5\n");
  EXPECT_HAS(m, "line 2: label column 3 ('y'): '0.5' is not an integer class index");
  m = err("a,b,y\n1,nan,1\n");
  EXPECT_HAS(m, "line 2: column 2 ('b'): 'nan' is not a finite number");
  // A number past f64 is one (not a header, whose row was silently lost), out of range.
  m = err("1e400,2,0\n3,4,1\n");
  EXPECT_HAS(m, "line 1: column 1 ('col0'): '1e400' is out of the range of f64");
  m = err("a,b,y\n+-1,2,0\n");  // was -1
  EXPECT_HAS(m, "line 2: column 1 ('a'): '+-1' is not a number");
  m = err("a,b,y\n1,2,3,4\n");
  EXPECT_HAS(m, "line 2: expected 3 columns, got 4");
  m = err("a,b,y\n");
  EXPECT_HAS(m, "no data rows");
  m = err("");
  EXPECT_HAS(m, "no data rows");
  m = err("1\n2\n");
  EXPECT_HAS(m, "need a label column and at least one feature column");
  CsvOptions byname;
  byname.label_column = "target";
  m = err("a,b,y\n1,2,0\n", byname);
  EXPECT_HAS(m, "no column named 'target' in the header (a, b, y)");
  m = err("1,2,0\n", byname);
  EXPECT_HAS(m, "the file has no header");
  CsvOptions idx;
  idx.label_index = 5;
  m = err("1,2,0\n", idx);
  EXPECT_HAS(m, "label_index 5 is out of range for 3 columns");
  CsvOptions dt;
  dt.feature_dtype = DType::i64;
  EXPECT_HAS(err("1,2\n", dt), "feature_dtype must be f32 or f64");
  EXPECT_HAS(error_of([&] { trainrt::read_csv(dir + "/missing.csv"); }), "cannot open");
  // Finite as a double but not as the f32 it is stored in; f64 features keep it.
  EXPECT_HAS(err("a,b,y\n1,1e300,0\n"), "'1e300' is out of the range of f32 (use f64)");
  CsvOptions f64;
  f64.feature_dtype = DType::f64;
  write_text(dir + "/big.csv", "a,b,y\n1,1e300,0\n");
  EXPECT_EQ(trainrt::read_csv(dir + "/big.csv", f64).features.to_double_vector()[1], 1e300);
  // A long bad cell is shortened in the message.
  m = err("a,b,y\n1," + std::string(5000, '7') + "x,0\n");
  EXPECT_HAS(m, "(5001 characters)");
  EXPECT_LT(m.size(), 400u);
  // A UTF-8 byte order mark is not part of the first column's name.
  write_text(dir + "/bom.csv",
             "\xEF\xBB\xBF"
             "a,b,label\n1,2,0\n3,4,1\n");
  const trainrt::CsvTable bom = trainrt::read_csv(dir + "/bom.csv");
  EXPECT_EQ(bom.feature_names, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(bom.features.size(0), 2);
  // Only regular files: a FIFO must not block, a device must not be read forever.
  const std::string fifo = dir + "/fifo.csv";
  ::unlink(fifo.c_str());
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_HAS(error_of([&] { trainrt::read_csv(fifo); }), "is not a regular file");
  EXPECT_HAS(error_of([&] { trainrt::read_idx("/dev/zero"); }), "is not a regular file");
  ::unlink(fifo.c_str());
}

TEST(Csv, GzipCsv) {
  const std::string dir = temp_dir();
  const std::string text = "f,y\n0.25,1\n0.5,0\n";
  write_bytes(dir + "/c.csv.gz", gzip(Bytes(text.begin(), text.end())));
  const trainrt::CsvTable t = trainrt::read_csv(dir + "/c.csv.gz");
  EXPECT_EQ(t.features.to_vector<float>(), (std::vector<float>{0.25f, 0.5f}));
  EXPECT_EQ(t.labels.to_vector<std::int64_t>(), (std::vector<std::int64_t>{1, 0}));
}

// ---- TensorDataset ------------------------------------------------------------------------------

/// n examples: features [n, 2] = {i, -i} (f32), labels [n] = i (i64).
std::shared_ptr<TensorDataset> indexed_dataset(std::int64_t n) {
  std::vector<float> f;
  std::vector<std::int64_t> l;
  for (std::int64_t i = 0; i < n; ++i) {
    f.push_back(static_cast<float>(i));
    f.push_back(-static_cast<float>(i));
    l.push_back(i);
  }
  return std::make_shared<TensorDataset>(Tensor::from_vector(f, {n, 2}),
                                         Tensor::from_vector(l, {n}));
}

TEST(TensorDatasetTest, GetAndErrors) {
  const auto ds = indexed_dataset(5);
  float f[2];
  std::int64_t l;
  ds->get(3, f, &l);
  EXPECT_EQ(f[0], 3.0f);
  EXPECT_EQ(f[1], -3.0f);
  EXPECT_EQ(l, 3);
  EXPECT_EQ(ds->feature_bytes(), 8u);
  EXPECT_EQ(ds->label_bytes(), 8u);
  EXPECT_HAS(error_of([&] { ds->get(5, f, &l); }), "index 5 is out of range for 5 examples");
  EXPECT_HAS(error_of([&] {
               TensorDataset(Tensor::zeros({3, 2}, DType::f32), Tensor::zeros({4}, DType::i64));
             }),
             "features have 3 examples");
}

// ---- DataLoader ---------------------------------------------------------------------------------

/// The label of every example of every batch of one epoch, and the batch sizes.
std::vector<std::int64_t> run_epoch(DataLoader& loader,
                                    std::vector<std::int64_t>* sizes = nullptr) {
  std::vector<std::int64_t> seen;
  Batch b;
  while (loader.next(b)) {
    const std::vector<std::int64_t> l = b.labels.to(Device::cpu()).to_vector<std::int64_t>();
    const std::vector<float> f = b.features.to(Device::cpu()).to_vector<float>();
    EXPECT_EQ(b.features.shape(), (Shape{b.size(), 2}));
    for (std::size_t i = 0; i < l.size(); ++i) {  // features travel with their label
      EXPECT_EQ(f[2 * i], static_cast<float>(l[i]));
      EXPECT_EQ(f[2 * i + 1], -static_cast<float>(l[i]));
    }
    seen.insert(seen.end(), l.begin(), l.end());
    if (sizes) sizes->push_back(b.size());
  }
  return seen;
}

class DataLoaderTest : public BackendTest {};

TEST_P(DataLoaderTest, EveryIndexOncePerEpochWithPartialLastBatch) {
  for (bool prefetch : {false, true}) {
    SCOPED_TRACE(prefetch ? "prefetch" : "no prefetch");
    DataLoaderOptions opt;
    opt.batch_size = 10;
    opt.shuffle = true;
    opt.seed = 7;
    opt.device = dev;
    opt.prefetch = prefetch;
    DataLoader loader(indexed_dataset(103), opt);
    EXPECT_EQ(loader.num_batches(), 11);
    std::vector<std::vector<std::int64_t>> orders;
    for (int epoch = 0; epoch < 3; ++epoch) {
      EXPECT_EQ(loader.epoch(), static_cast<std::uint64_t>(epoch));
      std::vector<std::int64_t> sizes;
      Batch first;
      std::vector<std::int64_t> seen = run_epoch(loader, &sizes);
      EXPECT_EQ(seen, loader.epoch_order(static_cast<std::uint64_t>(epoch)));
      EXPECT_EQ(seen, trainrt::shuffled_order(103, 7, static_cast<std::uint64_t>(epoch)));
      std::vector<std::int64_t> expect_sizes(10, 10);
      expect_sizes.push_back(3);
      EXPECT_EQ(sizes, expect_sizes);
      std::vector<std::int64_t> sorted = seen;
      std::sort(sorted.begin(), sorted.end());
      for (std::int64_t i = 0; i < 103; ++i) ASSERT_EQ(sorted[static_cast<std::size_t>(i)], i);
      orders.push_back(seen);
    }
    EXPECT_NE(orders[0], orders[1]);
    EXPECT_NE(orders[1], orders[2]);
  }
}

TEST_P(DataLoaderTest, BatchesLiveOnTheTargetDevice) {
  DataLoaderOptions opt;
  opt.batch_size = 4;
  opt.device = dev;
  DataLoader loader(indexed_dataset(6), opt);
  Batch b;
  ASSERT_TRUE(loader.next(b));
  EXPECT_EQ(b.features.device(), dev);
  EXPECT_EQ(b.labels.device(), dev);
  EXPECT_EQ(b.features.dtype(), DType::f32);
  EXPECT_EQ(b.labels.dtype(), DType::i64);
  EXPECT_EQ(b.index, 0);
  EXPECT_EQ(b.labels.to(Device::cpu()).to_vector<std::int64_t>(),
            (std::vector<std::int64_t>{0, 1, 2, 3}));
  ASSERT_TRUE(loader.next(b));
  EXPECT_EQ(b.index, 1);
  EXPECT_EQ(b.labels.to(Device::cpu()).to_vector<std::int64_t>(),
            (std::vector<std::int64_t>{4, 5}));
  EXPECT_FALSE(loader.next(b));
  EXPECT_EQ(loader.epoch(), 1u);
  EXPECT_EQ(loader.position(), 0);
}

TEST_P(DataLoaderTest, ResumeMidEpochGivesTheSameRemainingBatches) {
  for (bool prefetch : {false, true}) {
    SCOPED_TRACE(prefetch ? "prefetch" : "no prefetch");
    DataLoaderOptions opt;
    opt.batch_size = 8;
    opt.shuffle = true;
    opt.seed = 0x123456789abcdefULL;
    opt.device = dev;
    opt.prefetch = prefetch;
    const auto ds = indexed_dataset(50);
    DataLoader a(ds, opt);
    run_epoch(a);  // epoch 0
    Batch b;
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(a.next(b));
    const trainrt::StateDict state = a.state_dict();
    EXPECT_EQ(state.scalars.at("epoch"), 1.0);
    EXPECT_EQ(state.scalars.at("position"), 3.0);
    const std::vector<std::int64_t> rest_a = run_epoch(a);
    const std::vector<std::int64_t> next_a = run_epoch(a);

    DataLoader c(ds, opt);
    ASSERT_TRUE(c.next(b));  // a prefetched batch of another epoch must not leak in
    c.load_state_dict(state);
    EXPECT_EQ(c.epoch(), 1u);
    EXPECT_EQ(c.position(), 3);
    EXPECT_EQ(run_epoch(c), rest_a);
    EXPECT_EQ(run_epoch(c), next_a);
    const std::vector<std::int64_t> order1 = a.epoch_order(1);
    EXPECT_EQ(rest_a, std::vector<std::int64_t>(order1.begin() + 24, order1.end()));
  }
}

TRAINRT_INSTANTIATE_BACKENDS(DataLoaderTest);

TEST(DataLoader, DeterministicForASeedAndDifferentAcrossSeeds) {
  // Pinned: the order is part of a resumable run, identical on every machine. Cross-checked
  // with an independent Python Philox4x32-10 (which reproduces Random123's known-answer
  // vector 6627e8d5 e169c58d bc57ac4c 9b00dbd8 for counter 0, key 0).
  EXPECT_EQ(trainrt::shuffled_order(10, 42, 0),
            (std::vector<std::int64_t>{4, 3, 0, 6, 2, 9, 7, 1, 5, 8}));
  EXPECT_NE(trainrt::shuffled_order(1000, 42, 0), trainrt::shuffled_order(1000, 43, 0));
  EXPECT_NE(trainrt::shuffled_order(1000, 42, 0), trainrt::shuffled_order(1000, 42, 1));
  EXPECT_NE(trainrt::shuffled_order(1000, 1ULL << 32, 0), trainrt::shuffled_order(1000, 0, 0));
  EXPECT_NE(trainrt::shuffled_order(1000, 0, 1ULL << 32), trainrt::shuffled_order(1000, 0, 0));
  EXPECT_TRUE(trainrt::shuffled_order(0, 1, 2).empty());
  EXPECT_EQ(trainrt::shuffled_order(1, 1, 2), (std::vector<std::int64_t>{0}));

  DataLoaderOptions opt;
  opt.batch_size = 16;
  opt.shuffle = true;
  opt.seed = 42;
  DataLoader a(indexed_dataset(100), opt), b(indexed_dataset(100), opt);
  EXPECT_EQ(run_epoch(a), run_epoch(b));
  EXPECT_EQ(run_epoch(a), run_epoch(b));
  opt.seed = 43;
  DataLoader c(indexed_dataset(100), opt);
  EXPECT_NE(run_epoch(c), trainrt::shuffled_order(100, 42, 0));

  // Roughly uniform: each example lands in the first half about half the time.
  std::vector<int> first_half(20, 0);
  for (std::uint64_t e = 0; e < 2000; ++e) {
    const std::vector<std::int64_t> o = trainrt::shuffled_order(20, 5, e);
    for (std::size_t i = 0; i < 10; ++i) ++first_half[static_cast<std::size_t>(o[i])];
  }
  for (int c2 : first_half) EXPECT_NEAR(c2, 1000, 150);
}

TEST(DataLoader, SequentialWithoutShuffleAndDropLast) {
  DataLoaderOptions opt;
  opt.batch_size = 10;
  opt.drop_last = true;
  DataLoader loader(indexed_dataset(103), opt);
  EXPECT_EQ(loader.num_batches(), 10);
  std::vector<std::int64_t> sizes;
  const std::vector<std::int64_t> seen = run_epoch(loader, &sizes);
  EXPECT_EQ(sizes, std::vector<std::int64_t>(10, 10));
  std::vector<std::int64_t> expect(100);
  for (std::int64_t i = 0; i < 100; ++i) expect[static_cast<std::size_t>(i)] = i;
  EXPECT_EQ(seen, expect);

  opt.shuffle = true;
  DataLoader shuffled(indexed_dataset(103), opt);
  const std::vector<std::int64_t> s = run_epoch(shuffled);
  EXPECT_EQ(s.size(), 100u);
  EXPECT_EQ(std::set<std::int64_t>(s.begin(), s.end()).size(), 100u);
  const std::vector<std::int64_t> order = shuffled.epoch_order(0);
  EXPECT_EQ(s, std::vector<std::int64_t>(order.begin(), order.begin() + 100));

  // drop_last with fewer examples than a batch: no batches at all; an empty dataset too.
  DataLoader none(indexed_dataset(5), opt);
  EXPECT_EQ(none.num_batches(), 0);
  Batch b;
  EXPECT_FALSE(none.next(b));
  opt.drop_last = false;
  DataLoader empty(std::make_shared<TensorDataset>(Tensor::zeros({0, 2}, DType::f32),
                                                   Tensor::zeros({0}, DType::i64)),
                   opt);
  EXPECT_EQ(empty.num_batches(), 0);
  EXPECT_FALSE(empty.next(b));
}

TEST(DataLoader, BadOptionsAndStates) {
  DataLoaderOptions opt;
  opt.batch_size = 0;
  EXPECT_HAS(error_of([&] { DataLoader(indexed_dataset(3), opt); }),
             "batch_size must be >= 1, got 0");
  opt.batch_size = 2;
  EXPECT_HAS(error_of([&] { DataLoader(nullptr, opt); }), "dataset is null");
  opt.shuffle = true;
  opt.seed = 1;
  DataLoader a(indexed_dataset(10), opt);
  EXPECT_HAS(error_of([&] { a.set_epoch(0, 6); }), "position must be in [0, 5], got 6");

  opt.batch_size = 3;
  DataLoader other_bs(indexed_dataset(10), opt);
  EXPECT_HAS(error_of([&] { other_bs.load_state_dict(a.state_dict()); }),
             "'batch_size' is 2 in the state but 3 in this loader");
  opt.batch_size = 2;
  opt.seed = 2;
  DataLoader other_seed(indexed_dataset(10), opt);
  EXPECT_HAS(error_of([&] { other_seed.load_state_dict(a.state_dict()); }),
             "seed is 1 in the state but 2");
  DataLoader other_n(indexed_dataset(11), opt);
  EXPECT_HAS(error_of([&] { other_n.load_state_dict(a.state_dict()); }), "'dataset_size' is 10");
  trainrt::StateDict s = a.state_dict();
  s.scalars.erase("position");
  EXPECT_HAS(error_of([&] { a.load_state_dict(s); }), "the state has no 'position'");
  s = a.state_dict();
  s.scalars["position"] = 2.5;
  EXPECT_HAS(error_of([&] { a.load_state_dict(s); }), "'position' must be a non-negative integer");
  // Past the uint64 range: refused before any conversion (that of 1e30 is undefined; UBSan's
  // float-cast-overflow in scripts/sanitize.sh catches it).
  for (double v : {1e30, 18446744073709551616.0, std::numeric_limits<double>::infinity(),
                   std::numeric_limits<double>::quiet_NaN()}) {
    s = a.state_dict();
    s.scalars["epoch"] = v;
    EXPECT_HAS(error_of([&] { a.load_state_dict(s); }), "'epoch' must be a non-negative integer");
  }
  // The seed halves are 32-bit: 2^32 in seed_hi was shifted away (and seed 1 matched).
  s = a.state_dict();
  s.scalars["seed_hi"] = 4294967296.0;
  EXPECT_HAS(error_of([&] { a.load_state_dict(s); }),
             "must be 32-bit halves, got 1 and 4294967296");
  s = a.state_dict();
  s.scalars["seed_lo"] = 4294967297.0;
  EXPECT_HAS(error_of([&] { a.load_state_dict(s); }), "must be 32-bit halves");
  EXPECT_EQ(a.epoch(), 0u);
  EXPECT_EQ(a.position(), 0);

  // A batch size near INT64_MAX is one batch (n + b - 1 overflowed: -1 or 0 batches).
  for (std::int64_t bs :
       {std::numeric_limits<std::int64_t>::max(), std::numeric_limits<std::int64_t>::max() - 1}) {
    DataLoaderOptions big;
    big.batch_size = bs;
    DataLoader l(indexed_dataset(5), big);
    EXPECT_EQ(l.num_batches(), 1);
    Batch b;
    ASSERT_TRUE(l.next(b));
    EXPECT_EQ(b.size(), 5);
    big.drop_last = true;
    EXPECT_EQ(DataLoader(indexed_dataset(5), big).num_batches(), 0);
  }
  // An order that cannot be held is an Error, not std::bad_alloc / std::length_error.
  EXPECT_HAS(error_of([&] { (void)trainrt::shuffled_order(std::int64_t{1} << 62, 1, 0); }),
             "does not fit in memory");

  // A moved-from loader refuses to be used (was a null dereference).
  DataLoader moved(std::move(a));
  Batch b;
  EXPECT_HAS(error_of([&] { a.next(b); }),
             "this loader was moved from");  // NOLINT(bugprone-use-after-move)
  EXPECT_HAS(error_of([&] { (void)a.num_batches(); }), "moved from");  // NOLINT
  EXPECT_TRUE(moved.next(b));
}

/// A dataset that counts calls, can sleep in get_batch, and throws for one index.
class SlowDataset : public trainrt::Dataset {
 public:
  SlowDataset(std::int64_t n, std::int64_t bad, int sleep_ms)
      : n_(n), bad_(bad), sleep_ms_(sleep_ms) {}
  std::int64_t size() const override { return n_; }
  Shape feature_shape() const override { return {3}; }
  DType feature_dtype() const override { return DType::f64; }
  Shape label_shape() const override { return {}; }
  DType label_dtype() const override { return DType::i32; }
  void get(std::int64_t index, void* features, void* labels) const override {
    if (sleep_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms_));
    if (index == bad_)
      throw trainrt::Error("SlowDataset: example " + std::to_string(index) + " is bad");
    auto* f = static_cast<double*>(features);
    f[0] = f[1] = f[2] = static_cast<double>(index);
    *static_cast<std::int32_t*>(labels) = static_cast<std::int32_t>(index);
    ++calls;
  }
  mutable std::atomic<int> calls{0};

 private:
  std::int64_t n_, bad_;
  int sleep_ms_;
};

TEST(DataLoader, CustomDatasetThroughDefaultGetBatch) {
  DataLoaderOptions opt;
  opt.batch_size = 4;
  DataLoader loader(std::make_shared<SlowDataset>(6, -1, 0), opt);
  Batch b;
  ASSERT_TRUE(loader.next(b));
  EXPECT_EQ(b.features.shape(), (Shape{4, 3}));
  EXPECT_EQ(b.features.dtype(), DType::f64);
  EXPECT_EQ(b.labels.shape(), (Shape{4}));
  EXPECT_EQ(b.labels.to_vector<std::int32_t>(), (std::vector<std::int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(b.features.to_vector<double>()[11], 3.0);
}

TEST(DataLoader, PrefetchErrorIsRethrownByNextAndRetried) {
  DataLoaderOptions opt;
  opt.batch_size = 2;
  auto ds = std::make_shared<SlowDataset>(8, 5, 0);
  DataLoader loader(ds, opt);
  Batch b;
  ASSERT_TRUE(loader.next(b));  // [0, 1]
  ASSERT_TRUE(loader.next(b));  // [2, 3]; [4, 5] is being prepared and fails
  EXPECT_HAS(error_of([&] { loader.next(b); }), "SlowDataset: example 5 is bad");
  EXPECT_EQ(loader.position(), 2);  // not consumed
  EXPECT_HAS(error_of([&] { loader.next(b); }), "example 5 is bad");
  loader.set_epoch(0, 3);  // skip the bad batch
  ASSERT_TRUE(loader.next(b));
  EXPECT_EQ(b.labels.to_vector<std::int32_t>(), (std::vector<std::int32_t>{6, 7}));
  EXPECT_FALSE(loader.next(b));
}

TEST(DataLoader, DestroyMidEpochJoinsThePrefetchThread) {
  // Destroyed while the thread waits, while it prepares a slow batch, and before it started.
  auto slow = std::make_shared<SlowDataset>(64, -1, 2);
  for (int i = 0; i < 20; ++i) {
    DataLoaderOptions opt;
    opt.batch_size = 4;
    opt.shuffle = true;
    opt.seed = static_cast<std::uint64_t>(i);
    DataLoader loader(i % 2 ? std::shared_ptr<const trainrt::Dataset>(slow) : indexed_dataset(64),
                      opt);
    Batch b;
    for (int k = 0; k < i % 4; ++k) ASSERT_TRUE(loader.next(b));
  }
  // The batch being prepared at destruction is finished (a bounded wait), never abandoned.
  const int before = slow->calls.load();
  {
    DataLoaderOptions opt;
    opt.batch_size = 8;
    DataLoader loader(slow, opt);
    Batch b;
    ASSERT_TRUE(loader.next(b));
  }
  const int after = slow->calls.load();
  EXPECT_GE(after - before, 8);
  EXPECT_LE(after - before, 16);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(slow->calls.load(), after);  // nothing runs after the destructor

  // A moved loader keeps working; the moved-to one owns the thread.
  DataLoaderOptions opt;
  opt.batch_size = 5;
  DataLoader a(indexed_dataset(20), opt);
  Batch b;
  ASSERT_TRUE(a.next(b));
  DataLoader moved(std::move(a));
  ASSERT_TRUE(moved.next(b));
  EXPECT_EQ(b.labels.to_vector<std::int64_t>(), (std::vector<std::int64_t>{5, 6, 7, 8, 9}));
}

// A capture of the device while the prefetch thread prepares the next batch: the thread
// leaves its copy to the device (an allocation and a copy into the captured stream, which
// would invalidate the capture) to the next() that takes the batch. On a GPU, the CUDA
// emulator and the simulated device; the CPU has no graphs.
TEST_P(DataLoaderTest, APrefetchDuringACaptureLeavesTheCaptureAlone) {
  if (dev.is_cpu()) GTEST_SKIP() << "CUDA graphs need a CUDA device";
  for (int sleep_ms : {0, 5}) {  // the prefetch done before the capture, and in it
    SCOPED_TRACE(sleep_ms);
    DataLoaderOptions opt;
    opt.batch_size = 4;
    opt.device = dev;
    DataLoader loader(std::make_shared<SlowDataset>(12, -1, sleep_ms), opt);
    Batch b;
    ASSERT_TRUE(loader.next(b));
    trainrt::CudaGraph graph;
    graph.capture_begin(dev);
    std::this_thread::sleep_for(std::chrono::milliseconds(60));  // the prefetch ends here
    graph.capture_end();  // nothing was recorded into the capture: it was not invalidated
    EXPECT_TRUE(graph.captured());
    for (std::int32_t first : {4, 8}) {
      ASSERT_TRUE(loader.next(b));
      EXPECT_EQ(b.features.device(), dev);
      EXPECT_EQ(b.labels.to(Device::cpu()).to_vector<std::int32_t>(),
                (std::vector<std::int32_t>{first, first + 1, first + 2, first + 3}));
      EXPECT_EQ(b.features.to(Device::cpu()).to_vector<double>()[3], first + 1.0);
    }
    EXPECT_FALSE(loader.next(b));
  }
}

}  // namespace
