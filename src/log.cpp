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

spdlog::logger& log() {
  static std::mutex mu;
  static std::shared_ptr<spdlog::logger> cached;
  std::lock_guard<std::mutex> lock(mu);
  // Re-fetch while the application may still register or replace it.
  if (auto existing = spdlog::get("trainrt")) {
    cached = existing;
    return *cached;
  }
  auto logger = std::make_shared<spdlog::logger>(
      "trainrt", std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
  logger->set_level(spdlog::level::info);
  if (const char* lvl = std::getenv("TRAINRT_LOG_LEVEL")) {
    logger->set_level(spdlog::level::from_str(lvl));
  }
  spdlog::register_logger(logger);
  cached = logger;
  return *cached;
}

}  // namespace detail

void set_log_level(const std::string& level) {
  static const char* const valid[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};
  for (const char* v : valid) {
    if (level == v) {
      detail::log().set_level(spdlog::level::from_str(level));
      return;
    }
  }
  detail::fail(
      "set_log_level: level must be one of trace, debug, info, warn, error, critical, "
      "off; got '{}'",
      level);
}

}  // namespace trainrt
