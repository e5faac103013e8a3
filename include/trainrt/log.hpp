// Logging goes through the spdlog logger named "trainrt" (created on first use with a
// stderr sink unless the application registered its own logger of that name first; the
// default logger is never touched). Level: TRAINRT_LOG_LEVEL (trace, debug, info, warn,
// error, critical, off) or set_log_level. Applications that use spdlog directly can
// reach it with spdlog::get("trainrt").
#pragma once

#include <string>

#include "trainrt/export.hpp"

namespace trainrt {

/// "trace", "debug", "info", "warn", "error", "critical", "off".
TRAINRT_API void set_log_level(const std::string& level);

}  // namespace trainrt
