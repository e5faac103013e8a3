// A linear pre-pass over JSON text read from files (checkpoint manifests, safetensors headers,
// configs): nesting depth and duplicate keys. nlohmann parses any depth without recursion,
// but dump(), copies and comparisons recurse, so a value nested 100 000 deep overflows the
// stack later; and a parse with a callback (the usual way to see duplicate keys) is
// quadratic in the number of keys of an object in nlohmann 3.11. This pass uses the SAX
// interface: no tree, one set of keys per open object.
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <set>
#include <string>
#include <vector>

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

}  // namespace detail
}  // namespace trainrt
