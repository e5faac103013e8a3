// trainrt::Error: the one exception type every API error throws. Messages name the argument
// and the expected and actual values, e.g.
//   "cross_entropy: target 12 is out of bounds for 10 classes (row 3)".
#pragma once

#include <stdexcept>
#include <string>

#include "trainrt/export.hpp"

namespace trainrt {

class TRAINRT_API Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message);
  ~Error() override;
};

}  // namespace trainrt
