#include "trainrt/version.hpp"

namespace trainrt {

const char* version() { return TRAINRT_VERSION_STRING; }

}  // namespace trainrt
