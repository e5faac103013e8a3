#include "trainrt/error.hpp"

namespace trainrt {

Error::Error(const std::string& message) : std::runtime_error(message) {}
Error::~Error() = default;

}  // namespace trainrt
