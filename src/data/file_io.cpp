#include "file_io.hpp"

#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <new>

#include "../internal.hpp"

namespace trainrt {
namespace data_detail {

std::vector<unsigned char> read_file(const std::string& path) {
  // Only regular files: a FIFO would block the open, a device such as /dev/zero never ends.
  struct stat st;
  if (::stat(path.c_str(), &st) != 0)
    detail::fail("cannot open '{}': {}", path, std::strerror(errno));
  if (!S_ISREG(st.st_mode)) detail::fail("'{}' is not a regular file", path);
  struct Closer {
    void operator()(std::FILE* f) const { std::fclose(f); }
  };
  std::unique_ptr<std::FILE, Closer> f(std::fopen(path.c_str(), "rb"));
  if (!f) detail::fail("cannot open '{}': {}", path, std::strerror(errno));
  std::vector<unsigned char> out;
  unsigned char buf[1 << 16];
  for (;;) {
    const std::size_t n = std::fread(buf, 1, sizeof buf, f.get());
    out.insert(out.end(), buf, buf + n);
    if (n < sizeof buf) {
      if (std::ferror(f.get())) detail::fail("cannot read '{}': {}", path, std::strerror(errno));
      break;
    }
  }
  return out;
}

bool is_gzip(const std::vector<unsigned char>& bytes) {
  return bytes.size() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b;
}

std::vector<unsigned char> gunzip(const std::vector<unsigned char>& in, const std::string& path,
                                  std::size_t limit) {
  std::vector<unsigned char> out;
  // The last four bytes hold the size of the last member modulo 2^32: a good first guess.
  if (in.size() >= 18) {
    const std::size_t n = in.size();
    const std::size_t isize =
        static_cast<std::size_t>(in[n - 4]) | static_cast<std::size_t>(in[n - 3]) << 8 |
        static_cast<std::size_t>(in[n - 2]) << 16 | static_cast<std::size_t>(in[n - 1]) << 24;
    // Only a hint (a corrupt trailer may lie): no more than the limit, nor than deflate's
    // largest ratio (1032:1) allows; if that much memory is not there, inflating finds out
    // whether the data really needs it, and says so.
    const std::size_t most = std::min(limit, in.size() * 1032);
    try {
      if (isize <= (std::size_t{1} << 31)) out.reserve(std::min(isize, most));
    } catch (const std::bad_alloc&) {
    }
  }
  z_stream zs;
  std::memset(&zs, 0, sizeof zs);
  if (inflateInit2(&zs, 15 + 16) != Z_OK) {
    detail::fail("'{}': cannot initialise zlib", path);
  }
  struct End {
    z_stream* z;
    ~End() { inflateEnd(z); }
  } end{&zs};

  if (in.size() > std::numeric_limits<uInt>::max()) {
    detail::fail("'{}': gzip files over 4 GiB are not supported ({} bytes)", path, in.size());
  }
  zs.next_in = const_cast<Bytef*>(in.data());
  zs.avail_in = static_cast<uInt>(in.size());
  unsigned char buf[1 << 16];
  for (;;) {
    zs.next_out = buf;
    zs.avail_out = sizeof buf;
    const int rc = inflate(&zs, Z_NO_FLUSH);
    try {
      out.insert(out.end(), buf, buf + (sizeof buf - zs.avail_out));
    } catch (const std::bad_alloc&) {  // e.g. a small file that inflates to more than memory
      detail::fail("'{}': out of memory inflating the gzip data ({} bytes decompressed so far)",
                   path, out.size());
    }
    if (out.size() > limit) break;  // more than the caller wants: it knows enough
    const std::size_t consumed = in.size() - zs.avail_in;
    if (rc == Z_NEED_DICT || rc == Z_DATA_ERROR || rc == Z_MEM_ERROR || rc == Z_STREAM_ERROR) {
      detail::fail("'{}': corrupt gzip data at compressed byte {} of {} ({})", path, consumed,
                   in.size(), zs.msg != nullptr ? zs.msg : "zlib error");
    }
    if (rc == Z_STREAM_END) {
      // Another member may follow (gzip allows concatenation); zero padding is ignored.
      std::size_t rest = consumed;
      while (rest < in.size() && in[rest] == 0) ++rest;
      if (rest == in.size()) break;
      if (in.size() - rest < 2 || in[rest] != 0x1f || in[rest + 1] != 0x8b) {
        detail::fail("'{}': corrupt gzip data: {} unexpected bytes after the compressed stream",
                     path, in.size() - consumed);
      }
      inflateReset(&zs);
      zs.next_in = const_cast<Bytef*>(in.data() + rest);
      zs.avail_in = static_cast<uInt>(in.size() - rest);
      continue;
    }
    if (rc == Z_BUF_ERROR || (zs.avail_in == 0 && zs.avail_out != 0)) {
      detail::fail(
          "'{}': truncated gzip file: the compressed stream ends early ({} compressed bytes, "
          "{} bytes decompressed so far)",
          path, in.size(), out.size());
    }
  }
  return out;
}

std::vector<unsigned char> read_maybe_gzip(const std::string& path) {
  std::vector<unsigned char> bytes = read_file(path);
  if (is_gzip(bytes)) return gunzip(bytes, path);
  return bytes;
}

}  // namespace data_detail
}  // namespace trainrt
