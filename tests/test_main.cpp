// Test main: routes the "trainrt" logger into a capture sink; a warning or error the test did
// not declare with allow_warnings() fails that test (library warnings are bugs until shown
// otherwise).
#include <gtest/gtest.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include <mutex>

#include "test_util.hpp"

namespace trainrt_test {
namespace {

std::mutex g_mu;
std::vector<std::string> g_logged;
bool g_allowed = false;

class CaptureSink : public spdlog::sinks::base_sink<std::mutex> {
 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    if (msg.level < spdlog::level::warn) return;
    std::lock_guard<std::mutex> lock(g_mu);
    g_logged.emplace_back(msg.payload.data(), msg.payload.size());
  }
  void flush_() override {}
};

class WarningListener : public ::testing::EmptyTestEventListener {
  void OnTestStart(const ::testing::TestInfo&) override {
    std::lock_guard<std::mutex> lock(g_mu);
    g_logged.clear();
    g_allowed = false;
  }
  void OnTestEnd(const ::testing::TestInfo&) override {}
};

}  // namespace

std::vector<std::string> take_logged_warnings() {
  std::lock_guard<std::mutex> lock(g_mu);
  std::vector<std::string> out;
  out.swap(g_logged);
  return out;
}

void allow_warnings() {
  std::lock_guard<std::mutex> lock(g_mu);
  g_allowed = true;
}

/// Fails the current test on undeclared warnings (runs as a global test environment hook).
class UnexpectedWarningCheck : public ::testing::EmptyTestEventListener {
  void OnTestPartResult(const ::testing::TestPartResult&) override {}
  void OnTestEnd(const ::testing::TestInfo& info) override {
    std::lock_guard<std::mutex> lock(g_mu);
    if (!g_allowed && !g_logged.empty() && !info.result()->Skipped()) {
      std::string all;
      for (const auto& m : g_logged) all += "\n  " + m;
      // Test has ended: report through a printed failure and a non-zero exit.
      std::fprintf(stderr, "[  FAILED  ] %s.%s logged unexpected warnings:%s\n",
                   info.test_suite_name(), info.name(), all.c_str());
      failed = true;
    }
  }

 public:
  static inline bool failed = false;
};

}  // namespace trainrt_test

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto logger =
      std::make_shared<spdlog::logger>("trainrt", std::make_shared<trainrt_test::CaptureSink>());
  logger->set_level(spdlog::level::debug);
  spdlog::register_logger(logger);
  auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
  listeners.Append(new trainrt_test::WarningListener);
  listeners.Append(new trainrt_test::UnexpectedWarningCheck);
  const int rc = RUN_ALL_TESTS();
  return rc != 0 ? rc : (trainrt_test::UnexpectedWarningCheck::failed ? 1 : 0);
}
