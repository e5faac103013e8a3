// The "trainrt" logger: created on first use with a stderr sink, unless the application
// registered a logger of that name first (then its sinks and level are kept).
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <mutex>

#include "internal.hpp"
#include "trainrt/log.hpp"

namespace trainrt {
namespace detail {

std::shared_ptr<spdlog::logger> log() {
  // Fetched each time: the application may register, drop or replace it at any time (from
  // any thread), and the caller's copy keeps the one it got alive.
  if (auto existing = spdlog::get("trainrt")) return existing;
  static std::mutex mu;  // one creation at a time among trainrt's callers
  std::lock_guard<std::mutex> lock(mu);
  if (auto existing = spdlog::get("trainrt")) return existing;
  auto logger = std::make_shared<spdlog::logger>(
      "trainrt", std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
  logger->set_level(spdlog::level::info);
  if (const char* lvl = std::getenv("TRAINRT_LOG_LEVEL")) {
    logger->set_level(spdlog::level::from_str(lvl));
  }
  try {
    spdlog::register_logger(logger);
  } catch (const spdlog::spdlog_ex&) {
    // The application registered one between the get and here: that one is used.
    if (auto existing = spdlog::get("trainrt")) return existing;
    return logger;  // and dropped it again: this one serves this call
  }
  return logger;
}

}  // namespace detail

void set_log_level(const std::string& level) {
  static const char* const valid[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};
  for (const char* v : valid) {
    if (level == v) {
      detail::log()->set_level(spdlog::level::from_str(level));
      return;
    }
  }
  detail::fail(
      "set_log_level: level must be one of trace, debug, info, warn, error, critical, "
      "off; got '{}'",
      level);
}

}  // namespace trainrt
