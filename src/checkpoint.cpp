// safetensors reader/writer, atomic file writes and checkpoint directories (checkpoint.hpp).
#include "trainrt/checkpoint.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>
#include <vector>

#include "internal.hpp"
#include "json_checks.hpp"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; trainrt's checkpoint code assumes a little-endian host"
#endif

namespace trainrt {
namespace {

using detail::fail;
using json = nlohmann::json;

constexpr std::uint64_t kMaxHeader = 100u * 1000u * 1000u;  // as the reference implementation
constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kStateFile = "state.safetensors";
constexpr const char* kManifestFile = "manifest.json";
constexpr const char* kManifestFormat = "trainrt-checkpoint";
constexpr int kCheckpointVersion = 1;

std::atomic<unsigned> g_temp_counter{0};

// ---- dtypes --------------------------------------------------------------------------------

const char* st_dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::f16: return "F16";
    case DType::bf16: return "BF16";
    case DType::f64: return "F64";
    case DType::i32: return "I32";
    case DType::i64: return "I64";
    case DType::u8: return "U8";
  }
  return "?";
}

bool st_parse_dtype(const std::string& s, DType* out) {
  static const std::pair<const char*, DType> table[] = {
      {"F32", DType::f32}, {"F16", DType::f16}, {"BF16", DType::bf16}, {"F64", DType::f64},
      {"I32", DType::i32}, {"I64", DType::i64}, {"U8", DType::u8}};
  for (const auto& e : table) {
    if (s == e.first) {
      *out = e.second;
      return true;
    }
  }
  return false;
}

// ---- paths and files -----------------------------------------------------------------------

std::string strip_trailing_slashes(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

std::string dir_of(const std::string& path) {
  const auto pos = path.find_last_of('/');
  if (pos == std::string::npos) return ".";
  if (pos == 0) return "/";
  return path.substr(0, pos);
}

std::string base_of(const std::string& path) {
  const auto pos = path.find_last_of('/');
  return pos == std::string::npos ? path : path.substr(pos + 1);
}

std::string join(const std::string& dir, const std::string& name) {
  return dir == "/" ? "/" + name : dir + "/" + name;
}

std::string errno_str(int e) { return std::strerror(e); }

void fsync_dir(const std::string& dir, const char* op) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open directory '{}' to fsync it: {}", op, dir, errno_str(errno));
  const int rc = ::fsync(fd);
  const int e = errno;
  ::close(fd);
  // Some file systems cannot fsync a directory (EINVAL); their renames are as durable as
  // they get.
  if (rc != 0 && e != EINVAL) fail("{}: fsync of directory '{}' failed: {}", op, dir, errno_str(e));
}

/// The test hook: TRAINRT_CHECKPOINT_CRASH_AT=<point> makes the process _exit(86) there, as a
/// crash would (no destructors, no cleanup). Points: "before_rename" (a temporary file written
/// and fsynced, not yet renamed) and "before_install" (a checkpoint staged, not yet installed).
void crash_point(const char* point) {
  const char* v = std::getenv("TRAINRT_CHECKPOINT_CRASH_AT");
  if (v != nullptr && std::strcmp(v, point) == 0) ::_exit(86);
}

/// A file written under a temporary name in the target's directory and renamed over the
/// target on commit(); removed if never committed.
class AtomicFile {
 public:
  AtomicFile(std::string path, const char* op) : path_(std::move(path)), op_(op) {
    dir_ = dir_of(path_);
    tmp_ = join(dir_, "." + base_of(path_) + ".tmp." + std::to_string(::getpid()) + "." +
                          std::to_string(g_temp_counter.fetch_add(1)));
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd_ < 0) fail("{}: cannot create '{}': {}", op_, tmp_, errno_str(errno));
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }

  void write(const void* data, std::size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    std::size_t left = n;
    while (left > 0) {
      const std::size_t chunk = std::min<std::size_t>(left, std::size_t{1} << 30);
      crc_ = ::crc32(crc_, p, static_cast<uInt>(chunk));
      std::size_t done = 0;
      while (done < chunk) {
        const ssize_t w = ::write(fd_, p + done, chunk - done);
        if (w < 0) {
          if (errno == EINTR) continue;
          fail("{}: writing '{}' failed: {}", op_, tmp_, errno_str(errno));
        }
        done += static_cast<std::size_t>(w);
      }
      p += chunk;
      left -= chunk;
    }
    bytes_ += n;
  }

  void commit() {
    if (::fsync(fd_) != 0) fail("{}: fsync of '{}' failed: {}", op_, tmp_, errno_str(errno));
    const int rc = ::close(fd_);
    fd_ = -1;
    if (rc != 0) fail("{}: closing '{}' failed: {}", op_, tmp_, errno_str(errno));
    crash_point("before_rename");
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
      fail("{}: renaming '{}' to '{}' failed: {}", op_, tmp_, path_, errno_str(errno));
    }
    committed_ = true;
    fsync_dir(dir_, op_);
  }

  std::uint64_t bytes() const { return bytes_; }
  std::uint32_t crc() const { return static_cast<std::uint32_t>(crc_); }

 private:
  std::string path_, dir_, tmp_;
  const char* op_;
  int fd_ = -1;
  bool committed_ = false;
  std::uint64_t bytes_ = 0;
  uLong crc_ = ::crc32(0L, Z_NULL, 0);
};

std::vector<unsigned char> read_whole_file(const std::string& path, const char* op) {
  // O_NONBLOCK: a FIFO must not block the open before fstat can refuse it.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) fail("{}: cannot open '{}': {}", op, path, errno_str(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0) fail("{}: cannot stat '{}': {}", op, path, errno_str(errno));
  if (!S_ISREG(st.st_mode)) fail("{}: '{}' is not a regular file", op, path);
  std::vector<unsigned char> out(static_cast<std::size_t>(st.st_size));
  std::size_t done = 0;
  while (done < out.size()) {
    const ssize_t r = ::read(fd, out.data() + done, out.size() - done);
    if (r < 0) {
      if (errno == EINTR) continue;
      fail("{}: reading '{}' failed: {}", op, path, errno_str(errno));
    }
    if (r == 0) break;  // shrank while reading
    done += static_cast<std::size_t>(r);
  }
  out.resize(done);
  return out;
}

std::uint32_t crc_of(const std::vector<unsigned char>& bytes) {
  uLong crc = ::crc32(0L, Z_NULL, 0);
  std::size_t off = 0;
  while (off < bytes.size()) {
    const std::size_t chunk = std::min<std::size_t>(bytes.size() - off, std::size_t{1} << 30);
    crc = ::crc32(crc, bytes.data() + off, static_cast<uInt>(chunk));
    off += chunk;
  }
  return static_cast<std::uint32_t>(crc);
}

// ---- safetensors writer --------------------------------------------------------------------

struct WrittenFile {
  std::uint64_t bytes = 0;
  std::uint32_t crc = 0;
};

WrittenFile write_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                              const std::map<std::string, std::string>& metadata, const char* op) {
  struct Entry {
    const std::string* name;
    const Tensor* t;
  };
  std::vector<Entry> entries;
  entries.reserve(tensors.size());
  for (const auto& kv : tensors) {
    if (kv.first.empty()) fail("{}: '{}': a tensor has an empty name", op, path);
    if (kv.first == "__metadata__") {
      fail("{}: '{}': '__metadata__' is reserved and cannot name a tensor", op, path);
    }
    if (!kv.second.defined()) fail("{}: '{}': tensor '{}' is undefined", op, path, kv.first);
    entries.push_back({&kv.first, &kv.second});
  }
  // Wider elements first, so every tensor starts aligned to its element size (the buffer
  // starts at a multiple of 8), as the reference writer orders them; then by name.
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return dtype_size(a.t->dtype()) > dtype_size(b.t->dtype());
  });

  json header = json::object();
  std::uint64_t offset = 0;
  for (const Entry& e : entries) {
    const std::uint64_t n = e.t->nbytes();
    json info = json::object();
    info["dtype"] = st_dtype_name(e.t->dtype());
    info["shape"] = json::array();
    for (std::int64_t d : e.t->shape()) info["shape"].push_back(d);
    info["data_offsets"] = json::array({offset, offset + n});
    header[*e.name] = std::move(info);
    offset += n;
  }
  if (!metadata.empty()) {
    json meta = json::object();
    for (const auto& kv : metadata) meta[kv.first] = kv.second;
    header["__metadata__"] = std::move(meta);
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& ex) {
    fail("{}: '{}': a tensor name or metadata string is not valid UTF-8 ({})", op, path, ex.what());
  }
  while (text.size() % 8 != 0) text.push_back(' ');

  AtomicFile f(path, op);
  unsigned char len[8];
  const std::uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
  f.write(len, sizeof len);
  f.write(text.data(), text.size());
  std::vector<unsigned char> staging;
  for (const Entry& e : entries) {
    const std::size_t nb = e.t->nbytes();
    if (nb == 0) continue;
    if (e.t->device().is_cpu()) {
      f.write(e.t->data(), nb);
    } else {
      staging.resize(nb);
      e.t->copy_to_host(staging.data(), nb);
      f.write(staging.data(), nb);
    }
  }
  f.commit();
  return {f.bytes(), f.crc()};
}

// ---- safetensors reader --------------------------------------------------------------------

std::uint64_t to_u64(const json& v, bool* ok) {
  *ok = v.is_number_unsigned() || (v.is_number_integer() && v.get<std::int64_t>() >= 0);
  return *ok ? v.get<std::uint64_t>() : 0;
}

SafetensorsFile parse_safetensors(const std::vector<unsigned char>& bytes, const std::string& path,
                                  Device device, const char* op) {
  const std::size_t size = bytes.size();
  if (size < 8) {
    fail("{}: '{}': the file is {} bytes, shorter than the 8-byte header length (truncated?)", op,
         path, size);
  }
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(bytes[i]) << (8 * i);
  if (n == 0) fail("{}: '{}': the header size is 0", op, path);
  if (n > size - 8) {
    fail(
        "{}: '{}': the header size {} exceeds the {} bytes after the length field (truncated, or "
        "not a safetensors file?)",
        op, path, n, size - 8);
  }
  if (n > kMaxHeader) {
    fail("{}: '{}': the header size {} is over the {}-byte limit", op, path, n, kMaxHeader);
  }
  const char* hbegin = reinterpret_cast<const char*>(bytes.data() + 8);
  const char* hend = hbegin + n;
  // The JSON parser takes a NUL byte for the end of its input: reject it here.
  if (const void* nul = std::memchr(hbegin, 0, n)) {
    fail("{}: '{}': the header is not valid JSON: a NUL byte at header offset {}", op, path,
         static_cast<const char*>(nul) - hbegin);
  }

  // The nesting depth and the first duplicate key of any object (nlohmann keeps the last
  // silently), in one linear pass before the parse (json_checks.hpp).
  const detail::JsonShape shape =
      detail::check_json_shape(hbegin, hend, detail::kMaxJsonDepth, true);
  if (!shape.error.empty()) fail("{}: '{}': the header is not valid: {}", op, path, shape.error);
  json header;
  try {
    header = json::parse(hbegin, hend);
  } catch (const json::exception& ex) {
    fail("{}: '{}': the header is not valid JSON: {}", op, path, ex.what());
  }
  if (!shape.duplicate.empty()) {
    fail("{}: '{}': the header names '{}' twice", op, path, shape.duplicate);
  }
  if (!header.is_object()) fail("{}: '{}': the header is not a JSON object", op, path);

  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    std::uint64_t begin, end;
  };
  std::vector<Entry> entries;
  SafetensorsFile out;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail("{}: '{}': __metadata__ is not a JSON object", op, path);
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) {
          fail("{}: '{}': __metadata__ entry '{}' is not a string", op, path, m.key());
        }
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (name.empty()) fail("{}: '{}': a tensor has an empty name", op, path);
    if (!v.is_object())
      fail("{}: '{}': tensor '{}': the entry is not a JSON object", op, path, name);
    for (auto f = v.begin(); f != v.end(); ++f) {
      if (f.key() != "dtype" && f.key() != "shape" && f.key() != "data_offsets") {
        fail("{}: '{}': tensor '{}': unknown field '{}'", op, path, name, f.key());
      }
    }
    for (const char* k : {"dtype", "shape", "data_offsets"}) {
      if (!v.contains(k)) fail("{}: '{}': tensor '{}': no '{}' field", op, path, name, k);
    }
    Entry e;
    e.name = name;
    if (!v["dtype"].is_string())
      fail("{}: '{}': tensor '{}': dtype is not a string", op, path, name);
    const std::string dt = v["dtype"].get<std::string>();
    if (!st_parse_dtype(dt, &e.dtype)) {
      fail(
          "{}: '{}': tensor '{}': unknown or unsupported dtype '{}' (supported: F32, F16, BF16, "
          "F64, I32, I64, U8)",
          op, path, name, dt);
    }
    const json& shape = v["shape"];
    if (!shape.is_array()) fail("{}: '{}': tensor '{}': shape is not an array", op, path, name);
    std::uint64_t numel = 1;
    bool overflow = false, has_zero = false;
    for (const json& d : shape) {
      bool ok = false;
      const std::uint64_t x = to_u64(d, &ok);
      if (!ok || x > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
        fail("{}: '{}': tensor '{}': shape {} holds something other than a non-negative integer",
             op, path, name, shape.dump());
      }
      e.shape.push_back(static_cast<std::int64_t>(x));
      if (x == 0) has_zero = true;
      if (x != 0 && numel > std::numeric_limits<std::uint64_t>::max() / x) overflow = true;
      numel *= x;
    }
    const std::uint64_t esize = dtype_size(e.dtype);
    constexpr auto kMaxBytes = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
    if (has_zero) {
      numel = 0;
    } else if (overflow || numel > kMaxBytes / esize) {
      fail("{}: '{}': tensor '{}': shape {} is too large", op, path, name, shape.dump());
    }
    const json& offs = v["data_offsets"];
    bool ok0 = false, ok1 = false;
    if (offs.is_array() && offs.size() == 2) {
      e.begin = to_u64(offs[0], &ok0);
      e.end = to_u64(offs[1], &ok1);
    }
    if (!ok0 || !ok1) {
      fail("{}: '{}': tensor '{}': data_offsets {} is not a pair of non-negative integers", op,
           path, name, offs.dump());
    }
    if (e.end < e.begin) {
      fail("{}: '{}': tensor '{}': data_offsets [{}, {}] end before they begin", op, path, name,
           e.begin, e.end);
    }
    const std::uint64_t want = numel * esize;
    if (e.end - e.begin != want) {
      fail("{}: '{}': tensor '{}': shape {} of {} needs {} bytes but data_offsets [{}, {}] span {}",
           op, path, name, shape.dump(), dt, want, e.begin, e.end, e.end - e.begin);
    }
    entries.push_back(std::move(e));
  }

  // The tensors must tile the data buffer exactly: no overlap, no gap, nothing after them.
  const std::uint64_t buffer = size - 8 - n;
  std::vector<const Entry*> order;
  for (const Entry& e : entries) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  std::uint64_t expected = 0;
  const Entry* prev = nullptr;
  for (const Entry* e : order) {
    if (e->end > buffer) {
      fail(
          "{}: '{}': tensor '{}': data_offsets [{}, {}] run past the end of the {}-byte data "
          "buffer (truncated?)",
          op, path, e->name, e->begin, e->end, buffer);
    }
    if (e->begin < expected) {
      fail(
          "{}: '{}': tensor '{}' (data_offsets [{}, {}]) overlaps tensor '{}' (data_offsets [{}, "
          "{}])",
          op, path, e->name, e->begin, e->end, prev->name, prev->begin, prev->end);
    }
    if (e->begin > expected) {
      fail("{}: '{}': data buffer bytes [{}, {}) belong to no tensor (before tensor '{}')", op,
           path, expected, e->begin, e->name);
    }
    expected = e->end;
    prev = e;
  }
  if (expected != buffer) {
    fail(
        "{}: '{}': {} bytes of trailing garbage after the last tensor (data buffer of {} bytes, "
        "tensors end at {})",
        op, path, buffer - expected, buffer, expected);
  }

  const unsigned char* data = bytes.data() + 8 + n;
  for (const Entry& e : entries) {
    out.tensors[e.name] = Tensor::from_host(data + e.begin, e.shape, e.dtype, device);
  }
  return out;
}

// ---- checkpoint state file -----------------------------------------------------------------

bool valid_section(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-' || c == '.';
    if (!ok) return false;
  }
  return true;
}

std::string format_double(double v) { return fmt::format("{}", v); }

bool parse_double(const std::string& s, double* out) {
  const char* b = s.data();
  const char* e = b + s.size();
  const auto r = std::from_chars(b, e, *out);
  return r.ec == std::errc() && r.ptr == e;
}

// ---- checkpoint directory ------------------------------------------------------------------

/// A name a checkpoint directory holds: one of its three files, or the temporary file of one
/// ("." + name + ".tmp." + ..., see AtomicFile) that a crash left.
bool is_checkpoint_entry(const std::string& name) {
  for (const char* f : {kModelFile, kStateFile, kManifestFile}) {
    if (name == f || name.rfind("." + std::string(f) + ".tmp.", 0) == 0) return true;
  }
  return false;
}

std::vector<std::string> list_dir(const std::string& dir, const char* op) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) fail("{}: cannot list directory '{}': {}", op, dir, errno_str(errno));
  std::vector<std::string> names;
  while (const dirent* ent = ::readdir(d)) {
    const std::string name = ent->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  ::closedir(d);
  return names;
}

/// Removes a directory this code wrote (only checkpoint files inside). Best effort.
void remove_checkpoint_dir(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return;
  std::vector<std::string> names;
  while (const dirent* ent = ::readdir(d)) {
    const std::string name = ent->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  ::closedir(d);
  for (const auto& name : names) {
    if (is_checkpoint_entry(name)) ::unlink(join(dir, name).c_str());
  }
  if (::rmdir(dir.c_str()) != 0) {
    const std::string why = errno_str(errno);  // before the logger can change errno
    detail::log()->warn("save_checkpoint: could not remove '{}': {}", dir, why);
  }
}

/// Staging / old directories of this checkpoint left behind by processes that died.
void remove_stale_staging(const std::string& parent, const std::string& name) {
  DIR* d = ::opendir(parent.c_str());
  if (d == nullptr) return;
  std::vector<std::string> stale;
  const std::string p1 = "." + name + ".staging.", p2 = "." + name + ".old.";
  while (const dirent* ent = ::readdir(d)) {
    const std::string e = ent->d_name;
    const std::string* prefix = nullptr;
    if (e.compare(0, p1.size(), p1) == 0) prefix = &p1;
    if (e.compare(0, p2.size(), p2) == 0) prefix = &p2;
    if (prefix == nullptr) continue;
    const long pid = std::strtol(e.c_str() + prefix->size(), nullptr, 10);
    if (pid <= 0 || pid == ::getpid()) continue;
    if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;  // still alive
    stale.push_back(join(parent, e));
  }
  ::closedir(d);
  for (const auto& s : stale) remove_checkpoint_dir(s);
}

}  // namespace

// ---- public API ----------------------------------------------------------------------------

void write_file_atomic(const std::string& path, const void* data, std::size_t size) {
  if (size > 0 && data == nullptr) fail("write_file_atomic: '{}': data is null", path);
  AtomicFile f(path, "write_file_atomic");
  f.write(data, size);
  f.commit();
}

void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  write_safetensors(path, tensors, metadata, "save_safetensors");
}

SafetensorsFile load_safetensors(const std::string& path, Device device) {
  const char* op = "load_safetensors";
  return parse_safetensors(read_whole_file(path, op), path, device, op);
}

void save_checkpoint(const std::string& path_in, const CheckpointContents& c) {
  const char* op = "save_checkpoint";
  const std::string path = strip_trailing_slashes(path_in);
  if (path.empty()) fail("{}: the path is empty", op);
  const std::string parent = dir_of(path);
  const std::string name = base_of(path);
  if (name == "." || name == "..") fail("{}: '{}' does not name a directory to create", op, path);

  // Check everything before touching the disk.
  if (c.metadata.count("format") != 0) {
    fail("{}: metadata key 'format' is reserved (it holds \"pt\" for PyTorch)", op);
  }
  std::map<std::string, Tensor> state_tensors;
  std::map<std::string, std::string> state_meta;
  std::string sections;
  for (const auto& s : c.states) {
    if (!valid_section(s.first)) {
      fail("{}: state section name '{}' must be non-empty letters, digits, '_', '-' or '.'", op,
           s.first);
    }
    if (!sections.empty()) sections += ",";
    sections += s.first;
    const std::string pre = s.first + "/";
    for (const auto& kv : s.second.tensors) state_tensors[pre + kv.first] = kv.second;
    for (const auto& kv : s.second.scalars)
      state_meta["scalar:" + pre + kv.first] = format_double(kv.second);
    for (const auto& kv : s.second.strings) state_meta["string:" + pre + kv.first] = kv.second;
  }
  state_meta["trainrt.state_version"] = std::to_string(kCheckpointVersion);
  state_meta["trainrt.sections"] = sections;
  std::map<std::string, std::string> model_meta = c.metadata;
  model_meta["format"] = "pt";

  struct stat st;
  bool exists = false;
  if (::lstat(path.c_str(), &st) == 0) {
    exists = true;
    if (!S_ISDIR(st.st_mode)) fail("{}: '{}' exists and is not a checkpoint directory", op, path);
    // Replaced only if empty, or a checkpoint: manifest.json and nothing but checkpoint files
    // (regular files; a directory or link of such a name is someone else's).
    const std::vector<std::string> entries = list_dir(path, op);
    bool manifest = false;
    for (const auto& e : entries) {
      struct stat es;
      const bool file = ::lstat(join(path, e).c_str(), &es) == 0 && S_ISREG(es.st_mode);
      if (!is_checkpoint_entry(e) || !file) {
        fail(
            "{}: '{}' exists and holds '{}'{}: not a trainrt checkpoint directory, refusing to "
            "replace it",
            op, path, e, file ? "" : " (not a regular file)");
      }
      manifest = manifest || e == kManifestFile;
    }
    if (!entries.empty() && !manifest) {
      fail(
          "{}: '{}' exists and holds no manifest.json: not a trainrt checkpoint directory, "
          "refusing to replace it",
          op, path);
    }
  } else if (errno != ENOENT) {
    fail("{}: cannot stat '{}': {}", op, path, errno_str(errno));
  }
  remove_stale_staging(parent, name);

  const std::string tag =
      std::to_string(::getpid()) + "." + std::to_string(g_temp_counter.fetch_add(1));
  const std::string staging = join(parent, "." + name + ".staging." + tag);
  if (::mkdir(staging.c_str(), 0777) != 0) {
    fail("{}: cannot create staging directory '{}': {}", op, staging, errno_str(errno));
  }
  bool installed = false;
  struct Cleanup {
    const std::string& dir;
    bool& installed;
    ~Cleanup() {
      if (!installed) remove_checkpoint_dir(dir);
    }
  } cleanup{staging, installed};

  const WrittenFile model = write_safetensors(join(staging, kModelFile), c.model, model_meta, op);
  const WrittenFile state =
      write_safetensors(join(staging, kStateFile), state_tensors, state_meta, op);
  json manifest = json::object();
  manifest["format"] = kManifestFormat;
  manifest["version"] = kCheckpointVersion;
  manifest["files"][kModelFile] = {{"bytes", model.bytes}, {"crc32", model.crc}};
  manifest["files"][kStateFile] = {{"bytes", state.bytes}, {"crc32", state.crc}};
  const std::string mtext = manifest.dump(2) + "\n";
  {
    AtomicFile f(join(staging, kManifestFile), op);
    f.write(mtext.data(), mtext.size());
    f.commit();  // fsyncs the staging directory too
  }
  crash_point("before_install");

  if (!exists) {
    if (::rename(staging.c_str(), path.c_str()) != 0) {
      fail("{}: renaming '{}' to '{}' failed: {}", op, staging, path, errno_str(errno));
    }
    installed = true;
    fsync_dir(parent, op);
    return;
  }
  // Swap the new directory in atomically; the old one ends up under the staging name.
  if (::renameat2(AT_FDCWD, staging.c_str(), AT_FDCWD, path.c_str(), RENAME_EXCHANGE) == 0) {
    installed = true;
    fsync_dir(parent, op);
    remove_checkpoint_dir(staging);
    return;
  }
  if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP) {
    fail("{}: exchanging '{}' and '{}' failed: {}", op, staging, path, errno_str(errno));
  }
  // No RENAME_EXCHANGE on this file system: move the old one aside, then the new one in (a
  // crash between the two renames leaves the previous checkpoint under the ".old." name).
  const std::string old = join(parent, "." + name + ".old." + tag);
  if (::rename(path.c_str(), old.c_str()) != 0) {
    fail("{}: renaming '{}' to '{}' failed: {}", op, path, old, errno_str(errno));
  }
  if (::rename(staging.c_str(), path.c_str()) != 0) {
    const int e = errno;
    ::rename(old.c_str(), path.c_str());
    fail("{}: renaming '{}' to '{}' failed: {}", op, staging, path, errno_str(e));
  }
  installed = true;
  fsync_dir(parent, op);
  remove_checkpoint_dir(old);
}

CheckpointContents load_checkpoint(const std::string& path_in, Device device) {
  const char* op = "load_checkpoint";
  const std::string path = strip_trailing_slashes(path_in);
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) fail("{}: cannot open '{}': {}", op, path, errno_str(errno));
  if (!S_ISDIR(st.st_mode)) fail("{}: '{}' is not a checkpoint directory", op, path);
  const std::string mpath = join(path, kManifestFile);
  if (::access(mpath.c_str(), F_OK) != 0) {
    fail("{}: '{}' has no {}: not a trainrt checkpoint, or its save did not finish", op, path,
         kManifestFile);
  }
  const std::vector<unsigned char> mbytes = read_whole_file(mpath, op);
  json manifest;
  const char* mb = reinterpret_cast<const char*>(mbytes.data());
  const detail::JsonShape mshape =
      detail::check_json_shape(mb, mb + mbytes.size(), detail::kMaxJsonDepth, true);
  if (!mshape.error.empty()) fail("{}: '{}' is not a valid manifest: {}", op, mpath, mshape.error);
  if (!mshape.duplicate.empty()) {
    fail("{}: '{}' is not a valid manifest: the key \"{}\" is given twice", op, mpath,
         mshape.duplicate);
  }
  try {
    manifest = json::parse(mbytes.begin(), mbytes.end());
  } catch (const json::exception& ex) {
    fail("{}: '{}' is not valid JSON: {}", op, mpath, ex.what());
  }
  if (!manifest.is_object() || !manifest.contains("format") ||
      manifest["format"] != kManifestFormat) {
    fail("{}: '{}' is not a trainrt checkpoint manifest (no \"format\": \"{}\")", op, mpath,
         kManifestFormat);
  }
  if (!manifest.contains("version") || manifest["version"] != kCheckpointVersion) {
    fail("{}: '{}': unsupported checkpoint version {} (this build reads {})", op, mpath,
         manifest.contains("version") ? manifest["version"].dump() : "none", kCheckpointVersion);
  }
  if (!manifest.contains("files") || !manifest["files"].is_object()) {
    fail("{}: '{}': no \"files\" object", op, mpath);
  }
  const json& files = manifest["files"];
  auto load_file = [&](const char* fname) {
    if (!files.contains(fname)) fail("{}: '{}' does not list {}", op, mpath, fname);
    const json& f = files[fname];
    bool ok_b = false, ok_c = false;
    std::uint64_t want_bytes = 0, want_crc = 0;
    if (f.is_object() && f.contains("bytes") && f.contains("crc32")) {
      want_bytes = to_u64(f["bytes"], &ok_b);
      want_crc = to_u64(f["crc32"], &ok_c);
    }
    if (!ok_b || !ok_c)
      fail("{}: '{}': the entry of {} needs \"bytes\" and \"crc32\"", op, mpath, fname);
    const std::string fpath = join(path, fname);
    const std::vector<unsigned char> bytes = read_whole_file(fpath, op);
    if (bytes.size() != want_bytes) {
      fail("{}: '{}' is {} bytes but the manifest says {} (truncated, or from another save)", op,
           fpath, bytes.size(), want_bytes);
    }
    const std::uint32_t crc = crc_of(bytes);
    if (crc != want_crc) {
      fail(
          "{}: '{}': CRC-32 {:#010x} does not match the manifest's {:#010x} (corrupted, or from "
          "another save)",
          op, fpath, crc, want_crc);
    }
    return parse_safetensors(bytes, fpath, device, op);
  };
  for (auto it = files.begin(); it != files.end(); ++it) {
    if (it.key() != kModelFile && it.key() != kStateFile) {
      fail("{}: '{}' lists an unknown file '{}'", op, mpath, it.key());
    }
  }

  CheckpointContents out;
  SafetensorsFile model = load_file(kModelFile);
  out.model = std::move(model.tensors);
  out.metadata = std::move(model.metadata);
  out.metadata.erase("format");

  SafetensorsFile state = load_file(kStateFile);
  const std::string spath = join(path, kStateFile);
  auto meta = [&](const char* key) -> const std::string& {
    auto it = state.metadata.find(key);
    if (it == state.metadata.end()) fail("{}: '{}': no '{}' in __metadata__", op, spath, key);
    return it->second;
  };
  if (meta("trainrt.state_version") != std::to_string(kCheckpointVersion)) {
    fail("{}: '{}': unsupported state version '{}'", op, spath, meta("trainrt.state_version"));
  }
  const std::string& sections = meta("trainrt.sections");
  std::size_t start = 0;
  while (start < sections.size()) {
    std::size_t comma = sections.find(',', start);
    if (comma == std::string::npos) comma = sections.size();
    const std::string s = sections.substr(start, comma - start);
    if (!valid_section(s)) fail("{}: '{}': bad section name '{}'", op, spath, s);
    out.states[s];
    start = comma + 1;
  }
  // "<section>/<key>" -> the section's StateDict (which must be listed) and the key.
  auto split = [&](const std::string& full, const char* what) {
    const auto slash = full.find('/');
    if (slash == std::string::npos || slash + 1 == full.size()) {
      fail("{}: '{}': {} '{}' is not of the form <section>/<key>", op, spath, what, full);
    }
    auto it = out.states.find(full.substr(0, slash));
    if (it == out.states.end()) {
      fail("{}: '{}': {} '{}' belongs to no listed section", op, spath, what, full);
    }
    return std::make_pair(&it->second, full.substr(slash + 1));
  };
  for (auto& kv : state.tensors) {
    auto sk = split(kv.first, "tensor");
    sk.first->tensors[sk.second] = std::move(kv.second);
  }
  for (const auto& kv : state.metadata) {
    const std::string& k = kv.first;
    if (k == "trainrt.state_version" || k == "trainrt.sections") continue;
    if (k.compare(0, 7, "scalar:") == 0) {
      auto sk = split(k.substr(7), "scalar");
      double v = 0;
      if (!parse_double(kv.second, &v)) {
        fail("{}: '{}': scalar '{}' = '{}' is not a number", op, spath, k.substr(7), kv.second);
      }
      sk.first->scalars[sk.second] = v;
    } else if (k.compare(0, 7, "string:") == 0) {
      auto sk = split(k.substr(7), "string");
      sk.first->strings[sk.second] = kv.second;
    } else {
      fail("{}: '{}': unknown __metadata__ entry '{}'", op, spath, k);
    }
  }
  return out;
}

}  // namespace trainrt
