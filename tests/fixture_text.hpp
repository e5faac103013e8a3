// Reading the text fixtures that tests/fixtures/gen_*.py write: one record per line, a tag
// word first, '#' comments and blank lines ignored.
#pragma once

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace trainrt_test {

/// Calls on_line(tag, rest) for each record of the fixture `file` (a name in
/// TRAINRT_TEST_FIXTURES_DIR), `rest` holding the words after the tag. on_line returns false
/// for a tag it does not know; that, or a missing file, throws std::runtime_error naming the
/// file and the line.
template <class F>
void read_fixture(const std::string& file, F&& on_line) {
  const std::string path = std::string(TRAINRT_TEST_FIXTURES_DIR) + "/" + file;
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream rest(line);
    std::string tag;
    rest >> tag;
    if (!on_line(tag, rest)) {
      throw std::runtime_error(path + ":" + std::to_string(n) + ": unknown line '" + line + "'");
    }
  }
}

/// A number as the generators print it (strtod: also inf, nan and hex floats).
inline double fixture_number(const std::string& word) { return std::strtod(word.c_str(), nullptr); }

/// The remaining words of `rest` as numbers of type T.
template <class T = double>
std::vector<T> fixture_numbers(std::istringstream& rest) {
  std::vector<T> v;
  std::string word;
  while (rest >> word) v.push_back(static_cast<T>(fixture_number(word)));
  return v;
}

}  // namespace trainrt_test
