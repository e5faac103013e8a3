// Checkpoints: safetensors round trips (every dtype, 0-d and zero-element shapes, bitwise, on
// every backend), the file layout, every kind of corrupt header, truncation at every cut
// point, StateDict and checkpoint round trips, and crashes (test hook and SIGKILL) during a
// save leaving the previous checkpoint loadable.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <dirent.h>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "test_util.hpp"
#include "trainrt/checkpoint.hpp"

extern char** environ;

namespace {

using trainrt::DType;
using trainrt::Shape;
using trainrt::Tensor;

/// A fresh directory under the test binary dir, removed (files and one level of
/// subdirectories) at the end of the test.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string(info->test_suite_name()) + "_" + info->name();
    for (char& c : name) {
      if (c == '/') c = '_';
    }
    path_ = std::string(TRAINRT_TEST_BINARY_DIR) + "/ckpt_tmp/" + name + "." +
            std::to_string(::getpid());
    ::mkdir((std::string(TRAINRT_TEST_BINARY_DIR) + "/ckpt_tmp").c_str(), 0777);
    remove_tree(path_);
    ::mkdir(path_.c_str(), 0777);
  }
  ~TempDir() { remove_tree(path_); }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

  static void remove_tree(const std::string& p) {
    struct stat st;
    if (::lstat(p.c_str(), &st) != 0) return;
    if (S_ISDIR(st.st_mode)) {
      for (const auto& e : list(p)) remove_tree(p + "/" + e);
      ::rmdir(p.c_str());
    } else {
      ::unlink(p.c_str());
    }
  }
  static std::vector<std::string> list(const std::string& p) {
    std::vector<std::string> out;
    DIR* d = ::opendir(p.c_str());
    if (d == nullptr) return out;
    while (const dirent* e = ::readdir(d)) {
      const std::string n = e->d_name;
      if (n != "." && n != "..") out.push_back(n);
    }
    ::closedir(d);
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  std::string path_;
};

std::vector<unsigned char> bytes_of(const Tensor& t) {
  std::vector<unsigned char> b(t.nbytes());
  if (!b.empty()) t.copy_to_host(b.data(), b.size());
  return b;
}

std::vector<unsigned char> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<unsigned char>((std::istreambuf_iterator<char>(f)),
                                    std::istreambuf_iterator<char>());
}

void write_file(const std::string& path, const void* data, std::size_t n) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
}

void write_file(const std::string& path, const std::vector<unsigned char>& b) {
  write_file(path, b.data(), b.size());
}

/// A tensor of random bytes (every bit pattern, NaNs and all).
Tensor random_tensor(const Shape& shape, DType dtype, unsigned seed) {
  std::mt19937 g(seed);
  std::vector<unsigned char> b(static_cast<std::size_t>(trainrt::shape_numel(shape)) *
                               trainrt::dtype_size(dtype));
  for (auto& x : b) x = static_cast<unsigned char>(g());
  return Tensor::from_host(b.data(), shape, dtype);
}

const DType kAllDtypes[] = {DType::f32, DType::f16, DType::bf16, DType::f64,
                            DType::i32, DType::i64, DType::u8};

/// A safetensors file with the given header text, the length field `n` (default: the text's
/// size) and `data_bytes` bytes of data.
std::vector<unsigned char> crafted(const std::string& header, std::size_t data_bytes,
                                   std::uint64_t n = std::numeric_limits<std::uint64_t>::max()) {
  if (n == std::numeric_limits<std::uint64_t>::max()) n = header.size();
  std::vector<unsigned char> out(8 + header.size() + data_bytes);
  for (int i = 0; i < 8; ++i) out[i] = static_cast<unsigned char>(n >> (8 * i));
  for (std::size_t i = 0; i < header.size(); ++i)
    out[8 + i] = static_cast<unsigned char>(header[i]);
  for (std::size_t i = 0; i < data_bytes; ++i) {
    out[8 + header.size() + i] = static_cast<unsigned char>(i);
  }
  return out;
}

std::string load_error(const std::string& path) {
  try {
    trainrt::load_safetensors(path);
  } catch (const trainrt::Error& e) {
    return e.what();
  }
  return "(no error)";
}

// ---- safetensors round trips -----------------------------------------------------------------

class SafetensorsRoundTrip : public trainrt_test::BackendTest {};

TEST_P(SafetensorsRoundTrip, EveryDtypeAndShapeBitwise) {
  TempDir dir;
  const std::vector<Shape> shapes = {{}, {0}, {1}, {7}, {3, 0, 2}, {2, 3, 5}, {1, 1, 1, 1}};
  std::map<std::string, Tensor> tensors;
  unsigned seed = 1;
  for (DType dt : kAllDtypes) {
    for (const Shape& s : shapes) {
      const std::string name = std::string(trainrt::dtype_name(dt)) + "." + trainrt::shape_str(s);
      tensors[name] = random_tensor(s, dt, seed++).to(dev);
    }
  }
  const std::map<std::string, std::string> meta = {
      {"epoch", "3"}, {"note", "caf\xc3\xa9 \"quoted\" \\ {}"}, {"empty", ""}};
  const std::string path = dir / "all.safetensors";
  trainrt::save_safetensors(path, tensors, meta);
  for (trainrt::Device to : {trainrt::Device::cpu(), dev}) {
    const trainrt::SafetensorsFile back = trainrt::load_safetensors(path, to);
    EXPECT_EQ(back.metadata, meta);
    ASSERT_EQ(back.tensors.size(), tensors.size());
    for (const auto& kv : tensors) {
      SCOPED_TRACE(kv.first);
      auto it = back.tensors.find(kv.first);
      ASSERT_NE(it, back.tensors.end());
      EXPECT_EQ(it->second.dtype(), kv.second.dtype());
      EXPECT_EQ(it->second.shape(), kv.second.shape());
      EXPECT_EQ(it->second.device(), to);
      EXPECT_EQ(bytes_of(it->second), bytes_of(kv.second));
    }
  }
  // No temporary files left beside it.
  EXPECT_EQ(TempDir::list(dir.path()), std::vector<std::string>{"all.safetensors"});
}

TRAINRT_INSTANTIATE_BACKENDS(SafetensorsRoundTrip);

TEST(Safetensors, EmptyFileAndOverwrite) {
  TempDir dir;
  const std::string path = dir / "e.safetensors";
  trainrt::save_safetensors(path, {});
  EXPECT_TRUE(trainrt::load_safetensors(path).tensors.empty());
  trainrt::save_safetensors(path, {{"x", Tensor::from_vector(std::vector<float>{1, 2}, {2})}});
  EXPECT_EQ(trainrt::load_safetensors(path).tensors.at("x").to_vector<float>(),
            (std::vector<float>{1, 2}));
}

TEST(Safetensors, FileLayout) {
  TempDir dir;
  const std::string path = dir / "l.safetensors";
  trainrt::save_safetensors(path,
                            {{"b", Tensor::from_vector(std::vector<std::uint8_t>{1, 2, 3}, {3})},
                             {"a", Tensor::from_vector(std::vector<double>{0.5, -1}, {1, 2})},
                             {"c", Tensor::from_vector(std::vector<float>{2.5f}, {})}},
                            {{"k", "v"}});
  const std::vector<unsigned char> f = read_file(path);
  ASSERT_GE(f.size(), 8u);
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(f[i]) << (8 * i);
  EXPECT_EQ(n % 8, 0u);
  ASSERT_LE(8 + n, f.size());
  const std::string header(f.begin() + 8, f.begin() + 8 + static_cast<std::ptrdiff_t>(n));
  EXPECT_EQ(header.front(), '{');
  const auto close = header.find_last_of('}');
  EXPECT_EQ(header.find_first_not_of(' ', close + 1), std::string::npos) << header;
  // Widest dtype first: a (F64, 16 bytes), c (F32, 4), b (U8, 3).
  EXPECT_NE(header.find(R"("a":{"data_offsets":[0,16],"dtype":"F64","shape":[1,2]})"),
            std::string::npos)
      << header;
  EXPECT_NE(header.find(R"("c":{"data_offsets":[16,20],"dtype":"F32","shape":[]})"),
            std::string::npos)
      << header;
  EXPECT_NE(header.find(R"("b":{"data_offsets":[20,23],"dtype":"U8","shape":[3]})"),
            std::string::npos)
      << header;
  EXPECT_NE(header.find(R"("__metadata__":{"k":"v"})"), std::string::npos) << header;
  EXPECT_EQ(f.size(), 8 + n + 23);
  double a0;
  std::memcpy(&a0, f.data() + 8 + n, sizeof a0);
  EXPECT_EQ(a0, 0.5);
}

TEST(Safetensors, WriterRejectsBadNames) {
  TempDir dir;
  const Tensor t = Tensor::zeros({1}, DType::f32);
  EXPECT_THROW(trainrt::save_safetensors(dir / "x", {{"", t}}), trainrt::Error);
  EXPECT_THROW(trainrt::save_safetensors(dir / "x", {{"__metadata__", t}}), trainrt::Error);
  EXPECT_THROW(trainrt::save_safetensors(dir / "x", {{"u", Tensor()}}), trainrt::Error);
  EXPECT_THROW(trainrt::save_safetensors(dir / "x", {{"bad\xff", t}}), trainrt::Error);
  EXPECT_THROW(trainrt::save_safetensors(dir / "no_such_dir/x", {{"t", t}}), trainrt::Error);
  EXPECT_TRUE(TempDir::list(dir.path()).empty());
}

TEST(Safetensors, WriteFileAtomic) {
  TempDir dir;
  const std::string p = dir / "f.txt";
  trainrt::write_file_atomic(p, "hello", 5);
  trainrt::write_file_atomic(p, "bye", 3);
  const auto b = read_file(p);
  EXPECT_EQ(std::string(b.begin(), b.end()), "bye");
  EXPECT_EQ(TempDir::list(dir.path()), std::vector<std::string>{"f.txt"});
}

// ---- corrupt files ---------------------------------------------------------------------------

struct BadCase {
  const char* label;
  std::vector<unsigned char> file;
  const char* expect;  // a substring of the message
};

TEST(SafetensorsCorrupt, EveryProblemNamedWithTheFile) {
  const std::string ok_a = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  std::vector<BadCase> cases = {
      {"short", {1, 0, 0}, "shorter than the 8-byte header length"},
      {"zero header", crafted("", 0, 0), "header size is 0"},
      {"header beyond file", crafted("{}", 0, 1000), "header size 1000 exceeds the 2 bytes"},
      {"huge header size", crafted("{}", 0, 0xffffffffffffull), "exceeds"},
      {"bad json", crafted("{\"a\":", 0), "not valid JSON"},
      {"not utf-8", crafted("{\"\xff\":{}}", 0), "not valid JSON"},
      {"nul padding", crafted(std::string("{}\0\0\0\0\0\0", 8), 0),
       "a NUL byte at header offset 2"},
      {"nul then garbage", crafted(std::string("{}\0xyz", 6), 0), "a NUL byte"},
      {"array root", crafted("[1,2]", 0), "not a JSON object"},
      {"unknown dtype", crafted(R"({"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", 8),
       "unknown or unsupported dtype 'Q4'"},
      {"dtype not string", crafted(R"({"a":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", 8),
       "dtype is not a string"},
      {"shape vs span", crafted(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
       "shape [3] of F32 needs 12 bytes but data_offsets [0, 8] span 8"},
      {"negative dim", crafted(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
       "non-negative integer"},
      {"float dim", crafted(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8),
       "non-negative integer"},
      {"shape overflow",
       crafted(R"({"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8),
       "too large"},
      {"shape not array", crafted(R"({"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", 8),
       "shape is not an array"},
      {"missing field", crafted(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", 8),
       "no 'shape' field"},
      {"unknown field",
       crafted(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", 8),
       "unknown field 'x'"},
      {"entry not object", crafted(R"({"a":[1]})", 0), "the entry is not a JSON object"},
      {"offsets not pair", crafted(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8),
       "not a pair of non-negative integers"},
      {"negative offset", crafted(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[-1,-1]}})", 0),
       "not a pair of non-negative integers"},
      {"offsets reversed", crafted(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[4,2]}})", 4),
       "end before they begin"},
      {"offsets out of range", crafted("{" + ok_a + "}", 6),
       "data_offsets [0, 8] run past the end of the 6-byte data buffer"},
      {"overlap",
       crafted("{" + ok_a + R"(,"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8),
       "overlaps tensor 'a'"},
      {"gap", crafted(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8),
       "bytes [0, 4) belong to no tensor"},
      {"trailing garbage", crafted("{" + ok_a + "}", 11), "3 bytes of trailing garbage"},
      {"data without tensors", crafted("{}", 1), "1 bytes of trailing garbage"},
      {"duplicate name", crafted("{" + ok_a + "," + ok_a + "}", 8), "names 'a' twice"},
      {"duplicate metadata key", crafted(R"({"__metadata__":{"k":"1","k":"2"}})", 0),
       "names 'k' twice"},
      {"metadata not object", crafted(R"({"__metadata__":"x"})", 0),
       "__metadata__ is not a JSON object"},
      {"metadata value not string", crafted(R"({"__metadata__":{"k":1}})", 0),
       "__metadata__ entry 'k' is not a string"},
      {"empty name", crafted(R"({"":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}})", 0),
       "empty name"},
      // 100 000 levels: a later dump() or copy of the value would overflow the stack.
      {"deep shape",
       crafted(R"({"a":{"dtype":"F32","shape":)" + std::string(100000, '[') +
                   std::string(100000, ']') + R"(,"data_offsets":[0,8]}})",
               8),
       "nests deeper than 64 levels"},
  };
  TempDir dir;
  int i = 0;
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.label);
    const std::string path = dir / ("bad" + std::to_string(i++) + ".safetensors");
    write_file(path, c.file);
    const std::string msg = load_error(path);
    EXPECT_NE(msg.find(c.expect), std::string::npos) << msg;
    EXPECT_NE(msg.find("load_safetensors: '" + path + "'"), std::string::npos) << msg;
  }
  // Sanity: the good pieces of these files do load.
  write_file(dir / "good.safetensors", crafted("{" + ok_a + "}   ", 8));
  EXPECT_EQ(trainrt::load_safetensors(dir / "good.safetensors").tensors.at("a").numel(), 2);
  write_file(
      dir / "zero.safetensors",
      crafted(R"({"z":{"dtype":"F32","shape":[0,4],"data_offsets":[0,0]},)" + ok_a + "}", 8));
  EXPECT_EQ(trainrt::load_safetensors(dir / "zero.safetensors").tensors.size(), 2u);
  EXPECT_NE(load_error(dir / "missing.safetensors").find("cannot open"), std::string::npos);
  // A FIFO is refused at once (its open must not block) and so is a directory.
  const std::string fifo = dir / "fifo.safetensors";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_NE(load_error(fifo).find("is not a regular file"), std::string::npos);
  EXPECT_NE(load_error(dir.path()).find("is not a regular file"), std::string::npos);
}

TEST(SafetensorsCorrupt, TruncatedAtEveryCutPoint) {
  TempDir dir;
  const std::string path = dir / "full.safetensors";
  trainrt::save_safetensors(path,
                            {{"w", random_tensor({3, 4}, DType::f32, 7)},
                             {"b", random_tensor({4}, DType::bf16, 8)},
                             {"s", random_tensor({}, DType::i64, 9)},
                             {"e", random_tensor({0}, DType::f16, 10)},
                             {"u", random_tensor({5}, DType::u8, 11)}},
                            {{"k", "v"}});
  const std::vector<unsigned char> full = read_file(path);
  const std::string cut = dir / "cut.safetensors";
  for (std::size_t n = 0; n < full.size(); ++n) {
    SCOPED_TRACE(n);
    write_file(cut, full.data(), n);
    const std::string msg = load_error(cut);
    EXPECT_NE(msg.find(cut), std::string::npos) << msg;
  }
  // One byte more is trailing garbage.
  std::vector<unsigned char> longer = full;
  longer.push_back(0);
  write_file(cut, longer);
  EXPECT_NE(load_error(cut).find("1 bytes of trailing garbage"), std::string::npos);
  write_file(cut, full);
  EXPECT_EQ(trainrt::load_safetensors(cut).tensors.size(), 5u);
}

// ---- checkpoints ---------------------------------------------------------------------------

trainrt::StateDict sample_state(double salt) {
  trainrt::StateDict sd;
  sd.tensors["state.0.exp_avg"] = random_tensor({4, 3}, DType::f32, 21);
  sd.tensors["state.0.step_t"] = random_tensor({}, DType::f64, 22);
  sd.tensors["empty"] = Tensor::zeros({0, 3}, DType::f32);
  sd.scalars["param_groups.0.lr"] = 0.1 + salt;
  sd.scalars["third"] = 1.0 / 3.0;
  sd.scalars["big"] = 9007199254740993.0;
  sd.scalars["tiny"] = 4.9406564584124654e-324;
  sd.scalars["neg_zero"] = -0.0;
  sd.scalars["inf"] = std::numeric_limits<double>::infinity();
  sd.scalars["minus_inf"] = -std::numeric_limits<double>::infinity();
  sd.scalars["nan"] = std::numeric_limits<double>::quiet_NaN();
  sd.strings["optimizer"] = "AdamW";
  sd.strings["empty"] = "";
  sd.strings["odd"] = "a/b:c,d \"e\"";
  return sd;
}

void expect_same_state(const trainrt::StateDict& a, const trainrt::StateDict& b) {
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (const auto& kv : a.tensors) {
    SCOPED_TRACE(kv.first);
    ASSERT_EQ(b.tensors.count(kv.first), 1u);
    const Tensor& t = b.tensors.at(kv.first);
    EXPECT_EQ(t.dtype(), kv.second.dtype());
    EXPECT_EQ(t.shape(), kv.second.shape());
    EXPECT_EQ(bytes_of(t), bytes_of(kv.second));
  }
  ASSERT_EQ(a.scalars.size(), b.scalars.size());
  for (const auto& kv : a.scalars) {
    SCOPED_TRACE(kv.first);
    ASSERT_EQ(b.scalars.count(kv.first), 1u);
    const double v = b.scalars.at(kv.first);
    if (std::isnan(kv.second)) {
      EXPECT_TRUE(std::isnan(v));
    } else {
      EXPECT_EQ(std::memcmp(&v, &kv.second, sizeof v), 0) << v << " vs " << kv.second;
    }
  }
  EXPECT_EQ(a.strings, b.strings);
}

trainrt::CheckpointContents sample_contents(double salt) {
  trainrt::CheckpointContents c;
  c.model["fc1.weight"] = random_tensor({8, 5}, DType::f32, 31);
  c.model["fc1.bias"] = Tensor::from_vector(std::vector<float>(8, static_cast<float>(salt)), {8});
  c.model["fc1.weight_bf16"] = random_tensor({8, 5}, DType::bf16, 32);
  c.states["optimizer"] = sample_state(salt);
  c.states["scheduler"].scalars["last_epoch"] = 4;
  c.states["scheduler"].strings["scheduler"] = "CosineAnnealingLR";
  c.states["data_loader"].scalars["epoch"] = 2;
  c.states["empty_section"];
  c.metadata["trainrt.step"] = "1234";
  return c;
}

void expect_same_contents(const trainrt::CheckpointContents& a,
                          const trainrt::CheckpointContents& b) {
  ASSERT_EQ(a.model.size(), b.model.size());
  for (const auto& kv : a.model) {
    SCOPED_TRACE(kv.first);
    ASSERT_EQ(b.model.count(kv.first), 1u);
    EXPECT_EQ(b.model.at(kv.first).shape(), kv.second.shape());
    EXPECT_EQ(bytes_of(b.model.at(kv.first)), bytes_of(kv.second));
  }
  ASSERT_EQ(a.states.size(), b.states.size());
  for (const auto& kv : a.states) {
    SCOPED_TRACE(kv.first);
    ASSERT_EQ(b.states.count(kv.first), 1u);
    expect_same_state(kv.second, b.states.at(kv.first));
  }
  EXPECT_EQ(a.metadata, b.metadata);
}

const std::vector<std::string> kCheckpointFiles = {"manifest.json", "model.safetensors",
                                                   "state.safetensors"};

class CheckpointRoundTrip : public trainrt_test::BackendTest {};

TEST_P(CheckpointRoundTrip, ContentsBitwiseAndOverwrite) {
  TempDir dir;
  const std::string path = dir / "ckpt";
  trainrt::CheckpointContents c = sample_contents(0);
  for (auto& kv : c.model) kv.second = kv.second.to(dev);
  trainrt::save_checkpoint(path, c);
  EXPECT_EQ(TempDir::list(path), kCheckpointFiles);
  const trainrt::CheckpointContents back = trainrt::load_checkpoint(path, dev);
  expect_same_contents(c, back);
  for (const auto& kv : back.model) EXPECT_EQ(kv.second.device(), dev);

  // Overwriting replaces the whole directory; nothing is left beside it.
  const trainrt::CheckpointContents c2 = sample_contents(1);
  trainrt::save_checkpoint(path + "/", c2);
  expect_same_contents(c2, trainrt::load_checkpoint(path));
  EXPECT_EQ(TempDir::list(dir.path()), std::vector<std::string>{"ckpt"});
  EXPECT_EQ(TempDir::list(path), kCheckpointFiles);

  // PyTorch-style readers see the weights alone in model.safetensors, "format": "pt".
  const trainrt::SafetensorsFile m = trainrt::load_safetensors(path + "/model.safetensors");
  EXPECT_EQ(m.tensors.size(), 3u);
  EXPECT_EQ(m.metadata.at("format"), "pt");
}

TRAINRT_INSTANTIATE_BACKENDS(CheckpointRoundTrip);

TEST(Checkpoint, RealOptimizerStateRoundTrip) {
  using namespace trainrt;
  auto make = [] {
    std::vector<Parameter> ps = {
        Parameter(Tensor::from_vector(std::vector<float>{1, 2, 3, 4}, {2, 2}), "w"),
        Parameter(Tensor::from_vector(std::vector<float>{0.5f}, {1}), "b")};
    return ps;
  };
  std::vector<Parameter> ps = make();
  optim::AdamW opt(ps);
  for (int s = 0; s < 3; ++s) {
    for (auto& p : ps) {
      std::vector<float> g(static_cast<std::size_t>(p.value().numel()), 0.25f * (s + 1));
      p.set_grad(Tensor::from_vector(g, p.value().shape()));
    }
    opt.step();
  }
  TempDir dir;
  CheckpointContents c;
  c.model["w"] = ps[0].value();
  c.model["b"] = ps[1].value();
  c.states["optimizer"] = opt.state_dict();
  save_checkpoint(dir / "ck", c);
  const CheckpointContents back = load_checkpoint(dir / "ck");
  expect_same_state(c.states["optimizer"], back.states.at("optimizer"));
  std::vector<Parameter> ps2 = make();
  optim::AdamW opt2(ps2);
  opt2.load_state_dict(back.states.at("optimizer"));
  expect_same_state(opt.state_dict(), opt2.state_dict());
}

TEST(Checkpoint, RejectsBadArgumentsAndForeignDirectories) {
  TempDir dir;
  trainrt::CheckpointContents c = sample_contents(0);
  c.metadata["format"] = "x";
  EXPECT_THROW(trainrt::save_checkpoint(dir / "a", c), trainrt::Error);
  c = sample_contents(0);
  c.states["bad/name"];
  EXPECT_THROW(trainrt::save_checkpoint(dir / "a", c), trainrt::Error);
  c.states.erase("bad/name");
  c.states[""];
  EXPECT_THROW(trainrt::save_checkpoint(dir / "a", c), trainrt::Error);
  c.states.erase("");

  // A directory holding anything else is never replaced.
  ::mkdir((dir / "foreign").c_str(), 0777);
  write_file(dir / "foreign/precious.txt", "x", 1);
  try {
    trainrt::save_checkpoint(dir / "foreign", c);
    ADD_FAILURE() << "no error";
  } catch (const trainrt::Error& e) {
    EXPECT_NE(std::string(e.what()).find("precious.txt"), std::string::npos) << e.what();
  }
  EXPECT_EQ(TempDir::list(dir / "foreign"), std::vector<std::string>{"precious.txt"});
  // Nor one holding only files with checkpoint names but no manifest.json (a user's own
  // model.safetensors), a hidden name with ".tmp." that no checkpoint write makes, or a
  // directory named like a checkpoint file (was replaced: the user's files gone).
  auto refused = [&](const std::string& d, const std::string& needle) {
    const std::vector<std::string> before = TempDir::list(d);
    try {
      trainrt::save_checkpoint(d, c);
      ADD_FAILURE() << "no error for " << d;
    } catch (const trainrt::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    EXPECT_EQ(TempDir::list(d), before);
  };
  ::mkdir((dir / "weights").c_str(), 0777);
  write_file(dir / "weights/model.safetensors", "x", 1);
  refused(dir / "weights", "holds no manifest.json");
  ::mkdir((dir / "notes").c_str(), 0777);
  write_file(dir / "notes/.notes.tmp.txt", "x", 1);
  refused(dir / "notes", "holds '.notes.tmp.txt'");
  ::mkdir((dir / "nested").c_str(), 0777);
  ::mkdir((dir / "nested/model.safetensors").c_str(), 0777);
  write_file(dir / "nested/manifest.json", "{}", 2);
  write_file(dir / "nested/model.safetensors/mine.txt", "x", 1);
  refused(dir / "nested", "holds 'model.safetensors' (not a regular file)");
  EXPECT_EQ(TempDir::list(dir / "nested/model.safetensors"), std::vector<std::string>{"mine.txt"});
  write_file(dir / "file", "x", 1);
  EXPECT_THROW(trainrt::save_checkpoint(dir / "file", c), trainrt::Error);
  // An empty directory is fine.
  ::mkdir((dir / "empty").c_str(), 0777);
  trainrt::save_checkpoint(dir / "empty", c);
  expect_same_contents(c, trainrt::load_checkpoint(dir / "empty"));
}

std::string checkpoint_error(const std::string& path) {
  try {
    trainrt::load_checkpoint(path);
  } catch (const trainrt::Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Checkpoint, DetectsDamagedOrMixedFiles) {
  TempDir dir;
  const std::string path = dir / "ck";
  trainrt::save_checkpoint(path, sample_contents(0));
  const auto model = read_file(path + "/model.safetensors");
  const auto state = read_file(path + "/state.safetensors");
  const auto manifest = read_file(path + "/manifest.json");

  // Truncated weights at many cut points: the manifest's size catches them.
  for (std::size_t n = 0; n < model.size(); n += 37) {
    write_file(path + "/model.safetensors", model.data(), n);
    const std::string msg = checkpoint_error(path);
    EXPECT_NE(msg.find("model.safetensors' is " + std::to_string(n) + " bytes but the manifest"),
              std::string::npos)
        << msg;
  }
  // A flipped bit: the CRC catches it.
  auto flipped = model;
  flipped[flipped.size() - 3] ^= 0x10;
  write_file(path + "/model.safetensors", flipped);
  EXPECT_NE(checkpoint_error(path).find("CRC-32"), std::string::npos);
  write_file(path + "/model.safetensors", model);

  // The state file of another save.
  trainrt::save_checkpoint(dir / "other", sample_contents(5));
  write_file(path + "/state.safetensors", read_file(dir / "other/state.safetensors"));
  EXPECT_NE(checkpoint_error(path).find("state.safetensors"), std::string::npos);
  write_file(path + "/state.safetensors", state);
  EXPECT_EQ(checkpoint_error(path), "(no error)");

  // No manifest: a save that did not finish.
  ::unlink((path + "/manifest.json").c_str());
  EXPECT_NE(checkpoint_error(path).find("no manifest.json"), std::string::npos);
  // A damaged manifest.
  write_file(path + "/manifest.json", manifest.data(), manifest.size() / 2);
  EXPECT_NE(checkpoint_error(path).find("not valid JSON"), std::string::npos);
  write_file(path + "/manifest.json", std::string("{\"format\":\"other\"}").c_str(), 18);
  EXPECT_NE(checkpoint_error(path).find("not a trainrt checkpoint manifest"), std::string::npos);
  const std::string deep =
      "{\"version\":" + std::string(100000, '[') + std::string(100000, ']') + "}";
  write_file(path + "/manifest.json", deep.c_str(), deep.size());
  EXPECT_NE(checkpoint_error(path).find("nests deeper than 64 levels"), std::string::npos);
  EXPECT_NE(checkpoint_error(dir / "nothing").find("cannot open"), std::string::npos);
  // A key given twice (nlohmann keeps the last one: a second "format" or file entry won).
  std::string twice(manifest.begin(), manifest.end());
  twice.insert(1, "\"format\":\"other\",");
  write_file(path + "/manifest.json", twice.c_str(), twice.size());
  EXPECT_NE(checkpoint_error(path).find("the key \"format\" is given twice"), std::string::npos)
      << checkpoint_error(path);
  write_file(path + "/manifest.json", manifest);
  EXPECT_EQ(checkpoint_error(path), "(no error)");
}

// ---- crashes during a save -------------------------------------------------------------------

const char* kChildPathVar = "TRAINRT_TEST_CKPT_CHILD_PATH";
const char* kChildLoopVar = "TRAINRT_TEST_CKPT_CHILD_LOOP";

/// The model of generation g: big enough that a save takes a while; every value is g.
trainrt::CheckpointContents generation(int g, std::int64_t numel) {
  trainrt::CheckpointContents c;
  c.model["big"] = Tensor::from_vector(
      std::vector<float>(static_cast<std::size_t>(numel), static_cast<float>(g)), {numel});
  c.model["small"] = Tensor::from_vector(std::vector<std::int32_t>{g, g}, {2});
  c.states["trainer"].scalars["generation"] = g;
  c.metadata["generation"] = std::to_string(g);
  return c;
}

/// Checks the checkpoint at `path` is a complete one of some generation; returns it.
int check_complete(const std::string& path, std::int64_t numel) {
  EXPECT_EQ(TempDir::list(path), kCheckpointFiles);
  const trainrt::CheckpointContents c = trainrt::load_checkpoint(path);
  const int g = std::stoi(c.metadata.at("generation"));
  EXPECT_EQ(c.states.at("trainer").scalars.at("generation"), g);
  EXPECT_EQ(c.model.at("small").to_vector<std::int32_t>(), (std::vector<std::int32_t>{g, g}));
  const std::vector<float> big = c.model.at("big").to_vector<float>();
  EXPECT_EQ(static_cast<std::int64_t>(big.size()), numel);
  for (float v : big) {
    if (v != static_cast<float>(g)) {
      ADD_FAILURE() << "mixed generations in 'big'";
      break;
    }
  }
  return g;
}

constexpr std::int64_t kBigNumel = 4 << 20;  // 16 MiB of f32

/// The child process body: saves generation 2 (or generations 2, 3, ... forever with the loop
/// variable set) at the path in the environment. Skips in a normal run.
TEST(CheckpointCrashChild, Save) {
  const char* path = std::getenv(kChildPathVar);
  if (path == nullptr) GTEST_SKIP() << "runs only as the child of CheckpointCrash tests";
  if (std::getenv(kChildLoopVar) != nullptr) {
    for (int g = 2;; ++g) trainrt::save_checkpoint(path, generation(g, kBigNumel));
  }
  trainrt::save_checkpoint(path, generation(2, kBigNumel));
}

/// Starts this test binary as the child above, with extra environment variables.
pid_t spawn_child(const std::string& path, const std::vector<std::string>& extra_env) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string s = *e;
    if (s.rfind("TRAINRT_CHECKPOINT_CRASH_AT=", 0) == 0 || s.rfind("GTEST_", 0) == 0) continue;
    env.push_back(s);
  }
  env.push_back(std::string(kChildPathVar) + "=" + path);
  env.push_back("OMP_NUM_THREADS=1");
  for (const auto& e : extra_env) env.push_back(e);
  std::vector<char*> envp;
  for (auto& s : env) envp.push_back(&s[0]);
  envp.push_back(nullptr);
  std::string exe = "/proc/self/exe";
  std::string filter = "--gtest_filter=CheckpointCrashChild.Save";
  std::string quiet = "--gtest_brief=1";
  char* argv[] = {&exe[0], &filter[0], &quiet[0], nullptr};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, exe.c_str(), &fa, nullptr, argv, envp.data());
  posix_spawn_file_actions_destroy(&fa);
  EXPECT_EQ(rc, 0) << std::strerror(rc);
  return rc == 0 ? pid : -1;
}

int wait_status(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

std::vector<std::string> staging_dirs(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : TempDir::list(dir)) {
    if (e != "ckpt") out.push_back(e);
  }
  return out;
}

TEST(CheckpointCrash, TestHookExitsMidSave) {
  TempDir dir;
  const std::string path = dir / "ckpt";
  trainrt::save_checkpoint(path, generation(1, kBigNumel));
  for (const char* point : {"before_rename", "before_install"}) {
    SCOPED_TRACE(point);
    const pid_t pid = spawn_child(path, {std::string("TRAINRT_CHECKPOINT_CRASH_AT=") + point});
    ASSERT_GT(pid, 0);
    const int status = wait_status(pid);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 86);  // the hook's exit code: it did stop mid-save
    EXPECT_EQ(check_complete(path, kBigNumel), 1);
    EXPECT_FALSE(staging_dirs(dir.path()).empty());  // the dead child's staging directory
  }
  // Without the hook the child finishes, and its save removes the dead children's leftovers.
  const pid_t pid = spawn_child(path, {});
  ASSERT_GT(pid, 0);
  const int status = wait_status(pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_EQ(check_complete(path, kBigNumel), 2);
  EXPECT_TRUE(staging_dirs(dir.path()).empty())
      << ::testing::PrintToString(staging_dirs(dir.path()));
}

TEST(CheckpointCrash, SigkillAtRandomPointsLeavesALoadableCheckpoint) {
  TempDir dir;
  const std::string path = dir / "ckpt";
  trainrt::save_checkpoint(path, generation(1, kBigNumel));
  std::mt19937 rng(12345);
  std::set<int> seen;
  for (int round = 0; round < 12; ++round) {
    SCOPED_TRACE(round);
    const pid_t pid = spawn_child(path, {std::string(kChildLoopVar) + "=1"});
    ASSERT_GT(pid, 0);
    const int ms = 20 + static_cast<int>(rng() % 400);
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    ::kill(pid, SIGKILL);
    const int status = wait_status(pid);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "child ended early";
    seen.insert(check_complete(path, kBigNumel));
  }
  // A save after the crashes works and cleans up what the killed children left.
  trainrt::save_checkpoint(path, generation(100, kBigNumel));
  EXPECT_EQ(check_complete(path, kBigNumel), 100);
  EXPECT_TRUE(staging_dirs(dir.path()).empty())
      << ::testing::PrintToString(staging_dirs(dir.path()));
  std::string gens;
  for (int g : seen) gens += std::to_string(g) + " ";
  std::cout << "[          ] generations found after SIGKILL: " << gens << "\n";
}

// ---- the file PyTorch reads (tests/fixtures/check_safetensors_torch.py) -------------------

/// Writes the file check_safetensors_torch.py checks, at $TRAINRT_TORCH_CHECK_FILE (or a
/// temporary path), with values the script recomputes: element i of each tensor is
/// (i - 3) * 0.25 for floats, (i - 3) * 1000 for signed ints and (i * 37) % 256 for u8.
TEST(CheckpointTorch, WriteFixture) {
  TempDir dir;
  const char* env = std::getenv("TRAINRT_TORCH_CHECK_FILE");
  const std::string path = env != nullptr ? std::string(env) : dir / "torch.safetensors";
  const std::vector<Shape> shapes = {{}, {0}, {5}, {2, 3}, {2, 0, 3}, {2, 3, 4}};
  std::map<std::string, Tensor> tensors;
  for (DType dt : kAllDtypes) {
    for (const Shape& s : shapes) {
      const auto n = static_cast<std::size_t>(trainrt::shape_numel(s));
      Tensor t;
      if (trainrt::is_floating(dt)) {
        std::vector<double> v(n);
        for (std::size_t i = 0; i < n; ++i) v[i] = (static_cast<double>(i) - 3) * 0.25;
        t = Tensor::from_vector(v, s).to(dt);
      } else if (dt == DType::u8) {
        std::vector<std::uint8_t> v(n);
        for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::uint8_t>((i * 37) % 256);
        t = Tensor::from_vector(v, s);
      } else if (dt == DType::i32) {
        std::vector<std::int32_t> v(n);
        for (std::size_t i = 0; i < n; ++i) v[i] = (static_cast<std::int32_t>(i) - 3) * 1000;
        t = Tensor::from_vector(v, s);
      } else {
        std::vector<std::int64_t> v(n);
        for (std::size_t i = 0; i < n; ++i) v[i] = (static_cast<std::int64_t>(i) - 3) * 1000;
        t = Tensor::from_vector(v, s);
      }
      tensors[std::string(trainrt::dtype_name(dt)) + "/" + trainrt::shape_str(s)] = t;
    }
  }
  trainrt::save_safetensors(path, tensors, {{"format", "pt"}, {"written_by", "trainrt"}});
  EXPECT_EQ(trainrt::load_safetensors(path).tensors.size(), tensors.size());
}

}  // namespace
