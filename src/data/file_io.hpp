// Whole-file reads for the data readers: plain files, and gzip files through zlib.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace trainrt {
namespace data_detail {

/// The bytes of `path`; throws trainrt::Error naming the file when it cannot be read.
std::vector<unsigned char> read_file(const std::string& path);

/// True when the bytes start with the gzip magic (1f 8b).
bool is_gzip(const std::vector<unsigned char>& bytes);

/// The decompressed contents of a gzip file (concatenated members allowed). Throws
/// trainrt::Error naming the file for corrupt or truncated data. Inflating stops once more
/// than `limit` bytes came out: a result longer than `limit` (by at most 64 KiB) says that
/// the data holds more, without inflating all of it (a small file can inflate to gigabytes).
std::vector<unsigned char> gunzip(const std::vector<unsigned char>& bytes, const std::string& path,
                                  std::size_t limit = static_cast<std::size_t>(-1));

/// read_file, then gunzip when the file is gzip-compressed.
std::vector<unsigned char> read_maybe_gzip(const std::string& path);

}  // namespace data_detail
}  // namespace trainrt
