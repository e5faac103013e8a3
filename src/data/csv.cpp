// Numeric CSV files: one example per line, one label column, every other column a feature.
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <string>
#include <string_view>

#include "../internal.hpp"
#include "file_io.hpp"
#include "trainrt/data.hpp"

namespace trainrt {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) {
    s.remove_suffix(1);
  }
  if (s.size() >= 2 && s.front() == '"' && s.back() == '"') s = s.substr(1, s.size() - 2);
  return s;
}

std::vector<std::string_view> split(std::string_view line, char delim) {
  std::vector<std::string_view> out;
  std::size_t start = 0;
  bool quoted = false;
  for (std::size_t i = 0; i < line.size(); ++i) {
    if (line[i] == '"') quoted = !quoted;
    if (line[i] == delim && !quoted) {
      out.push_back(trim(line.substr(start, i - start)));
      start = i + 1;
    }
  }
  out.push_back(trim(line.substr(start)));
  return out;
}

enum class Num { ok, not_a_number, overflow };

/// A decimal number, with an optional sign ('+' as well); one that underflows is its nearest
/// double (0 or subnormal, as strtod and Python's float() give), one that overflows f64 is
/// `overflow` (still a number for the header detection, so its row is not taken for a header).
Num parse_number(std::string_view s, double* v) {
  if (!s.empty() && s.front() == '+') {
    s.remove_prefix(1);
    if (!s.empty() && (s.front() == '-' || s.front() == '+')) return Num::not_a_number;  // "+-1"
  }
  if (s.empty()) return Num::not_a_number;
  const auto r = std::from_chars(s.data(), s.data() + s.size(), *v);
  if (r.ptr != s.data() + s.size()) return Num::not_a_number;
  if (r.ec == std::errc()) return Num::ok;
  if (r.ec != std::errc::result_out_of_range) return Num::not_a_number;
  const std::string z(s);
  const double x = std::strtod(z.c_str(), nullptr);
  if (std::isinf(x)) return Num::overflow;
  *v = x;
  return Num::ok;
}

/// A quoted field's doubled quotes ("a""b" is a"b, as RFC 4180 and Python's csv module).
std::string unescape_quotes(std::string_view f) {
  std::string out;
  for (std::size_t i = 0; i < f.size(); ++i) {
    out += f[i];
    if (f[i] == '"' && i + 1 < f.size() && f[i + 1] == '"') ++i;
  }
  return out;
}

/// A cell for an error message: at most 40 characters of it.
std::string shorten(std::string_view s) {
  if (s.size() <= 40) return std::string(s);
  return std::string(s.substr(0, 40)) + "... (" + std::to_string(s.size()) + " characters)";
}

bool is_blank(std::string_view s) {
  for (char c : s) {
    if (c != ' ' && c != '\t' && c != '\r') return false;
  }
  return true;
}

}  // namespace

CsvTable read_csv(const std::string& path, const CsvOptions& opt) {
  const DType fd = opt.feature_dtype, ld = opt.label_dtype;
  if (fd != DType::f32 && fd != DType::f64) {
    detail::fail("read_csv: feature_dtype must be f32 or f64, got {}", dtype_name(fd));
  }
  if (ld != DType::f32 && ld != DType::f64 && ld != DType::i64 && ld != DType::i32) {
    detail::fail("read_csv: label_dtype must be i64, i32, f32 or f64, got {}", dtype_name(ld));
  }
  const std::vector<unsigned char> bytes = data_detail::read_maybe_gzip(path);
  std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  if (text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);  // a UTF-8 byte order mark

  std::vector<std::string> names;
  std::vector<double> features, labels;
  std::int64_t columns = -1, label_col = -1, rows = 0;
  bool first = true;
  std::size_t pos = 0, line_no = 0;
  while (pos < text.size()) {
    std::size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (is_blank(line)) continue;
    const std::vector<std::string_view> fields = split(line, opt.delimiter);
    const auto nf = static_cast<std::int64_t>(fields.size());
    if (first) {
      first = false;
      columns = nf;
      if (columns < 2) {
        detail::fail(
            "CSV file '{}', line {}: found {} column (delimiter '{}'); need a label column and "
            "at least one feature column",
            path, line_no, columns, opt.delimiter);
      }
      bool header = opt.header == CsvHeader::present;
      if (opt.header == CsvHeader::detect) {
        double v;
        for (std::string_view f : fields)
          header = header || parse_number(f, &v) == Num::not_a_number;
      }
      if (header) {
        for (std::string_view f : fields) names.push_back(unescape_quotes(f));
      } else {
        for (std::int64_t c = 0; c < columns; ++c) names.push_back("col" + std::to_string(c));
      }
      if (!opt.label_column.empty()) {
        if (!header) {
          detail::fail("CSV file '{}': label column '{}' given by name but the file has no header",
                       path, opt.label_column);
        }
        for (std::int64_t c = 0; c < columns; ++c) {
          if (names[static_cast<std::size_t>(c)] == opt.label_column) label_col = c;
        }
        if (label_col < 0) {
          std::string all;
          for (const std::string& n : names) all += (all.empty() ? "" : ", ") + n;
          detail::fail("CSV file '{}': no column named '{}' in the header ({})", path,
                       opt.label_column, all);
        }
      } else {
        label_col = opt.label_index < 0 ? opt.label_index + columns : opt.label_index;
        if (label_col < 0 || label_col >= columns) {
          detail::fail("CSV file '{}': label_index {} is out of range for {} columns", path,
                       opt.label_index, columns);
        }
      }
      if (header) continue;
    }
    if (nf != columns) {
      detail::fail("CSV file '{}', line {}: expected {} columns, got {}", path, line_no, columns,
                   nf);
    }
    for (std::int64_t c = 0; c < columns; ++c) {
      const std::string_view f = fields[static_cast<std::size_t>(c)];
      double v = 0;
      if (f.empty()) {
        detail::fail("CSV file '{}', line {}: column {} ('{}') is empty", path, line_no, c + 1,
                     names[static_cast<std::size_t>(c)]);
      }
      const Num parsed = parse_number(f, &v);
      if (parsed == Num::not_a_number) {
        detail::fail("CSV file '{}', line {}: column {} ('{}'): '{}' is not a number", path,
                     line_no, c + 1, names[static_cast<std::size_t>(c)], shorten(f));
      }
      if (parsed == Num::overflow) {
        detail::fail("CSV file '{}', line {}: column {} ('{}'): '{}' is out of the range of f64",
                     path, line_no, c + 1, names[static_cast<std::size_t>(c)], shorten(f));
      }
      if (!std::isfinite(v)) {
        detail::fail("CSV file '{}', line {}: column {} ('{}'): '{}' is not a finite number", path,
                     line_no, c + 1, names[static_cast<std::size_t>(c)], shorten(f));
      }
      // Stored as f32 (features, or regression labels): it must stay finite there too.
      const bool to_f32 = c == label_col ? ld == DType::f32 : fd == DType::f32;
      if (to_f32 && !std::isfinite(static_cast<float>(v))) {
        detail::fail(
            "CSV file '{}', line {}: column {} ('{}'): '{}' is out of the range of f32 (use "
            "f64)",
            path, line_no, c + 1, names[static_cast<std::size_t>(c)], shorten(f));
      }
      if (c == label_col) {
        if ((ld == DType::i64 || ld == DType::i32) &&
            (v != std::floor(v) || std::fabs(v) > (ld == DType::i32 ? 2147483647.0 : 9.0e15))) {
          detail::fail(
              "CSV file '{}', line {}: label column {} ('{}'): '{}' is not an integer class index "
              "(label_dtype {}; use f32 or f64 for regression targets)",
              path, line_no, c + 1, names[static_cast<std::size_t>(c)], f, dtype_name(ld));
        }
        labels.push_back(v);
      } else {
        features.push_back(v);
      }
    }
    ++rows;
  }
  if (rows == 0) detail::fail("CSV file '{}': no data rows", path);

  CsvTable t;
  for (std::int64_t c = 0; c < columns; ++c) {
    if (c == label_col) {
      t.label_name = names[static_cast<std::size_t>(c)];
    } else {
      t.feature_names.push_back(names[static_cast<std::size_t>(c)]);
    }
  }
  Tensor f = Tensor::from_vector(features, {rows, columns - 1});
  t.features = fd == DType::f64 ? f : f.to(fd);
  if (ld == DType::i64 || ld == DType::i32) {
    std::vector<std::int64_t> li(labels.begin(), labels.end());
    Tensor l = Tensor::from_vector(li, {rows});
    t.labels = ld == DType::i64 ? l : l.to(ld);
  } else {
    Tensor l = Tensor::from_vector(labels, {rows});
    t.labels = ld == DType::f64 ? l : l.to(ld);
  }
  return t;
}

}  // namespace trainrt
