// A linear pre-pass over JSON text read from files (checkpoint manifests, safetensors headers,
// configs): nesting depth and duplicate keys; and typed reads of config values that name the key.
// nlohmann parses any depth without recursion, but dump(), copies and comparisons recurse, so a
// value nested 100 000 deep overflows the stack later; and a parse with a callback (the usual way
// to see duplicate keys) is quadratic in the number of keys of an object in nlohmann 3.11. This
// pass uses the SAX interface: no tree, one set of keys per open object.
#pragma once

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "trainrt/error.hpp"

namespace trainrt {
namespace detail {

/// What the pre-pass found: `error` non-empty when the text nests deeper than allowed (the
/// syntax itself is left to json::parse, which reports it better); `duplicate` the first key
/// named twice in one object, when asked for.
struct JsonShape {
  std::string error;
  std::string duplicate;
};

inline JsonShape check_json_shape(const char* begin, const char* end, int max_depth,
                                  bool find_duplicates) {
  using json = nlohmann::json;
  struct Sax : nlohmann::json_sax<json> {
    int max_depth = 0;
    bool find_duplicates = false;
    int depth = 0;
    JsonShape out;
    std::vector<std::set<std::string>> keys;

    bool open() {
      if (++depth > max_depth) {
        out.error = "it nests deeper than " + std::to_string(max_depth) + " levels";
        return false;  // stops the pass
      }
      return true;
    }
    bool null() override { return true; }
    bool boolean(bool) override { return true; }
    bool number_integer(number_integer_t) override { return true; }
    bool number_unsigned(number_unsigned_t) override { return true; }
    bool number_float(number_float_t, const string_t&) override { return true; }
    bool string(string_t&) override { return true; }
    bool binary(binary_t&) override { return true; }
    bool start_object(std::size_t) override {
      if (find_duplicates) keys.emplace_back();
      return open();
    }
    bool key(string_t& k) override {
      if (find_duplicates && !keys.empty() && !keys.back().insert(k).second &&
          out.duplicate.empty()) {
        out.duplicate = k;
      }
      return true;
    }
    bool end_object() override {
      if (find_duplicates && !keys.empty()) keys.pop_back();
      --depth;
      return true;
    }
    bool start_array(std::size_t) override { return open(); }
    bool end_array() override {
      --depth;
      return true;
    }
    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
      return false;  // json::parse reports it
    }
  } sax;
  sax.max_depth = max_depth;
  sax.find_duplicates = find_duplicates;
  try {
    json::sax_parse(begin, end, &sax, json::input_format_t::json, /*strict=*/false);
  } catch (const json::exception&) {  // left to json::parse
  }
  return sax.out;
}

inline JsonShape check_json_shape(const std::string& text, int max_depth, bool find_duplicates) {
  return check_json_shape(text.data(), text.data() + text.size(), max_depth, find_duplicates);
}

/// Deep enough for every file trainrt reads (they nest 4 levels at most).
constexpr int kMaxJsonDepth = 64;

// Typed reads of one value of a JSON config, for the config parsers (TrainerConfig, the trainrt
// command line): a value of another type throws Error(what + "\"key\" must be ..., got VALUE"),
// `what` being the parser's prefix ("TrainerConfig: ") and `key` the key's full name
// ("data.train").

inline double json_number(const nlohmann::json& j, const std::string& what,
                          const std::string& key) {
  if (!j.is_number()) throw Error(what + "\"" + key + "\" must be a number, got " + j.dump());
  return j.get<double>();
}

/// Whole numbers up to 2^53 in magnitude (exact as doubles; no cast out of range).
inline std::int64_t json_int(const nlohmann::json& j, const std::string& what,
                             const std::string& key) {
  constexpr double kMax = 9007199254740992.0;
  const bool whole_float = j.is_number_float() && std::fabs(j.get<double>()) <= kMax &&
                           j.get<double>() == std::floor(j.get<double>());
  const bool small_int =
      (j.is_number_unsigned() && j.get<std::uint64_t>() <= 9007199254740992ull) ||
      (j.is_number_integer() && !j.is_number_unsigned() &&
       j.get<std::int64_t>() >= -9007199254740992ll &&  // no llabs: INT64_MIN overflowed
       j.get<std::int64_t>() <= 9007199254740992ll);
  if (!whole_float && !small_int) {
    throw Error(what + "\"" + key + "\" must be an integer of at most 2^53 in magnitude, got " +
                j.dump());
  }
  return whole_float ? static_cast<std::int64_t>(j.get<double>()) : j.get<std::int64_t>();
}

inline std::string json_string(const nlohmann::json& j, const std::string& what,
                               const std::string& key) {
  if (!j.is_string()) throw Error(what + "\"" + key + "\" must be a string, got " + j.dump());
  return j.get<std::string>();
}

inline bool json_bool(const nlohmann::json& j, const std::string& what, const std::string& key) {
  if (!j.is_boolean()) throw Error(what + "\"" + key + "\" must be true or false, got " + j.dump());
  return j.get<bool>();
}

}  // namespace detail
}  // namespace trainrt
