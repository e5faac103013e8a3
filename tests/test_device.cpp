// Backend selection: Device values and parsing, the CUDA module loader and its failure
// reasons, Device::best()'s one warning, and Device::cuda()'s error.
//
// The failure modes of a CUDA module are exercised with fake modules (fake_backend_module.cpp,
// built by extra_tests.cmake as <build>/fake_backends/<mode>/libtrainrt_cuda.so) loaded
// through load_cuda_backend_from(). The TRAINRT_BACKEND_PATH route is checked end to end by
// the ctest entries device_env_backend_path_* that run DeviceEnv.* with the variable set.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include "test_util.hpp"
#include "trainrt/log.hpp"

namespace {

using trainrt::Device;
using trainrt::DeviceKind;

std::string fake_dir(const std::string& mode) {
  return std::string(TRAINRT_FAKE_BACKEND_DIR) + "/" + mode;
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

template <class F>
std::string error_message(F&& f) {
  try {
    f();
  } catch (const trainrt::Error& e) {
    return e.what();
  }
  return "";
}

/// Probes only `paths`; skips the test when a working CUDA backend is already loaded (a
/// loaded module is never unloaded, so no fake can replace it).
#define PROBE_OR_SKIP(reason, ...)                                           \
  const std::string reason = trainrt::load_cuda_backend_from({__VA_ARGS__}); \
  if (reason.empty()) GTEST_SKIP() << "a working CUDA backend is loaded already"

/// Everything that must hold once CUDA is known to be unusable for `reason`.
void expect_cuda_unusable(const std::string& reason) {
  ASSERT_FALSE(reason.empty());
  std::string why = "unchanged";
  EXPECT_FALSE(trainrt::cuda_available(&why));
  EXPECT_EQ(why, reason);
  EXPECT_FALSE(trainrt::cuda_available());  // why may be null
  EXPECT_EQ(trainrt::cuda_device_count(), 0);

  // Auto selection: the CPU, and exactly one warning that says why, however often it is asked.
  trainrt_test::allow_warnings();
  trainrt_test::take_logged_warnings();
  EXPECT_EQ(Device::best(), Device::cpu());
  const std::vector<std::string> logged = trainrt_test::take_logged_warnings();
  ASSERT_EQ(logged.size(), 1u);
  EXPECT_TRUE(contains(logged[0], reason)) << logged[0];
  EXPECT_TRUE(Device::best().is_cpu());
  EXPECT_TRUE(Device::parse("auto").is_cpu());
  EXPECT_TRUE(trainrt_test::take_logged_warnings().empty());

  // Explicit requests throw trainrt::Error carrying the reason.
  for (const char* spec : {"cuda", "cuda:0", "cuda:1"}) {
    SCOPED_TRACE(spec);
    const std::string msg = error_message([&] { Device::parse(spec); });
    EXPECT_TRUE(contains(msg, reason)) << "message: " << msg;
  }
  for (int index : {0, 3}) {
    const std::string msg = error_message([&] { Device::cuda(index); });
    EXPECT_TRUE(contains(msg, reason)) << "message: " << msg;
  }
  EXPECT_TRUE(trainrt_test::take_logged_warnings().empty());

  // The CPU still works.
  EXPECT_NO_THROW(trainrt::synchronize(Device::cpu()));
  EXPECT_EQ(trainrt::Tensor::from_vector(std::vector<float>{1, 2}, {2}).to(Device::best()).numel(),
            2);
}

// ---- Device values -------------------------------------------------------------------------

TEST(Device, Values) {
  const Device d;
  EXPECT_TRUE(d.is_cpu());
  EXPECT_FALSE(d.is_cuda());
  EXPECT_EQ(d.kind(), DeviceKind::cpu);
  EXPECT_EQ(d.index(), 0);
  EXPECT_EQ(d, Device::cpu());
  EXPECT_EQ(d.str(), "cpu");
  EXPECT_EQ(Device::parse("cpu"), Device::cpu());
  EXPECT_NO_THROW(trainrt::synchronize(Device::cpu()));
  EXPECT_TRUE(contains(trainrt::device_description(Device::cpu()), "cpu"));
}

TEST(Device, ParseRejectsBadSpecs) {
  for (const char* spec : {"gpu", "cuda:x", "cuda:", "cuda:-1", "cuda:0x", "CPU", "", " cpu",
                           "cuda:99999999999", "cuda0"}) {
    SCOPED_TRACE(spec);
    const std::string msg = error_message([&] { Device::parse(spec); });
    EXPECT_TRUE(contains(msg, "Device::parse")) << msg;
    EXPECT_TRUE(contains(msg, "'auto', 'cpu', 'cuda' or 'cuda:N'")) << msg;
    EXPECT_TRUE(contains(msg, std::string("got '") + spec + "'")) << msg;
  }
}

// ---- the real module, if this build has one ---------------------------------------------

TEST(Device, RealModuleWithoutGpuFallsBackToCpu) {
#if defined(TRAINRT_TEST_CUDA_BUILT)
  // The module is built beside libtrainrt.so.
  const std::string reason =
      trainrt::load_cuda_backend_from({std::string(TRAINRT_TEST_BINARY_DIR) + "/lib"});
  if (reason.empty()) GTEST_SKIP() << "a CUDA device is present: nothing to fall back from";
  const std::string r = lower(reason);
  EXPECT_FALSE(contains(r, "not found")) << reason;
  EXPECT_TRUE(contains(r, "driver") || contains(r, "device")) << reason;
  expect_cuda_unusable(reason);
#else
  GTEST_SKIP() << "the CUDA module is not built in this configuration";
#endif
}

// ---- fake modules --------------------------------------------------------------------------

TEST(FakeModule, WrongApiVersion) {
  PROBE_OR_SKIP(reason, fake_dir("wrong_version"));
  EXPECT_TRUE(contains(reason, fake_dir("wrong_version") + "/libtrainrt_cuda.so")) << reason;
  EXPECT_TRUE(contains(reason, "backend API version 999")) << reason;
  EXPECT_TRUE(contains(reason, "expected version 1")) << reason;
  expect_cuda_unusable(reason);
}

TEST(FakeModule, WrongArgsRevision) {
  PROBE_OR_SKIP(reason, fake_dir("wrong_args"));
  EXPECT_TRUE(contains(reason, fake_dir("wrong_args") + "/libtrainrt_cuda.so")) << reason;
  EXPECT_TRUE(contains(reason, "backend argument revision 1, expected 2")) << reason;
  EXPECT_TRUE(contains(reason, "rebuild the module")) << reason;
  expect_cuda_unusable(reason);
}

TEST(FakeModule, EntryReturnsNull) {
  PROBE_OR_SKIP(reason, fake_dir("null_entry"));
  EXPECT_TRUE(contains(reason, fake_dir("null_entry"))) << reason;
  EXPECT_TRUE(contains(reason, "does not implement backend API version 1")) << reason;
  expect_cuda_unusable(reason);
}

TEST(FakeModule, NoEntrySymbol) {
  PROBE_OR_SKIP(reason, fake_dir("no_entry"));
  EXPECT_TRUE(contains(reason, fake_dir("no_entry"))) << reason;
  EXPECT_TRUE(contains(reason, "no entry point 'trainrt_backend_entry'")) << reason;
  expect_cuda_unusable(reason);
}

TEST(FakeModule, ZeroDevices) {
  PROBE_OR_SKIP(reason, fake_dir("zero_devices"));
  EXPECT_TRUE(contains(reason, fake_dir("zero_devices"))) << reason;
  EXPECT_TRUE(contains(reason, "no CUDA device was found")) << reason;
  expect_cuda_unusable(reason);
}

TEST(FakeModule, NoDriver) {
  PROBE_OR_SKIP(reason, fake_dir("no_driver"));
  EXPECT_TRUE(contains(reason, "no CUDA driver (fake)")) << reason;
  EXPECT_TRUE(contains(reason, fake_dir("no_driver"))) << reason;
  expect_cuda_unusable(reason);
}

TEST(FakeModule, ModuleFileNamedDirectly) {
  const std::string file = fake_dir("no_driver") + "/libtrainrt_cuda.so";
  PROBE_OR_SKIP(reason, file);
  EXPECT_TRUE(contains(reason, "no CUDA driver (fake)")) << reason;
  expect_cuda_unusable(reason);
}

TEST(FakeModule, ModuleMissing) {
  const std::string dir = std::string(TRAINRT_TEST_BINARY_DIR) + "/no/such/dir";
  PROBE_OR_SKIP(reason, dir);
  EXPECT_TRUE(contains(reason, "not found")) << reason;
  EXPECT_TRUE(contains(reason, dir)) << reason;  // says where it looked
  expect_cuda_unusable(reason);
}

TEST(FakeModule, NothingToLookAt) {
  PROBE_OR_SKIP(reason, );
  EXPECT_TRUE(contains(reason, "not found")) << reason;
  expect_cuda_unusable(reason);
}

TEST(FakeModule, NotALibrary) {
  char tmpl[] = "/tmp/trainrt_test_device_XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl, file = dir + "/libtrainrt_cuda.so";
  { std::ofstream(file) << "this is not an ELF file\n"; }
  const std::string reason = trainrt::load_cuda_backend_from({dir});
  std::remove(file.c_str());
  ::rmdir(dir.c_str());
  if (reason.empty()) GTEST_SKIP() << "a working CUDA backend is loaded already";
  EXPECT_TRUE(contains(reason, "cannot load CUDA module " + file)) << reason;
  expect_cuda_unusable(reason);
}

TEST(FakeModule, MissingEntriesAreSkippedAndTheFirstModuleFoundDecides) {
  PROBE_OR_SKIP(reason, fake_dir("no_such_mode"), fake_dir("zero_devices"), fake_dir("no_driver"));
  EXPECT_TRUE(contains(reason, "no CUDA device was found")) << reason;
  expect_cuda_unusable(reason);
}

TEST(FakeModule, ReprobingWarnsAgainWithTheNewReason) {
  PROBE_OR_SKIP(first, fake_dir("zero_devices"));
  trainrt_test::allow_warnings();
  trainrt_test::take_logged_warnings();
  EXPECT_TRUE(Device::best().is_cpu());
  ASSERT_EQ(trainrt_test::take_logged_warnings().size(), 1u);
  PROBE_OR_SKIP(second, fake_dir("no_driver"));
  EXPECT_NE(first, second);
  EXPECT_TRUE(Device::best().is_cpu());
  const auto logged = trainrt_test::take_logged_warnings();
  ASSERT_EQ(logged.size(), 1u);
  EXPECT_TRUE(contains(logged[0], "no CUDA driver (fake)")) << logged[0];
  EXPECT_TRUE(Device::best().is_cpu());
  EXPECT_TRUE(trainrt_test::take_logged_warnings().empty());
}

// ---- TRAINRT_BACKEND_PATH, end to end (see extra_tests.cmake) --------------------------

TEST(DeviceEnv, BackendPathFromEnvironment) {
  const char* path = std::getenv("TRAINRT_BACKEND_PATH");
  if (path == nullptr) GTEST_SKIP() << "TRAINRT_BACKEND_PATH is not set (run by ctest with it)";
  // The first probe of this process follows the variable: no load_cuda_backend_from here.
  std::string why;
  if (trainrt::cuda_available(&why)) {
    GTEST_FAIL() << "TRAINRT_BACKEND_PATH=" << path << " names a fake module, yet CUDA is usable";
  }
  EXPECT_TRUE(contains(why, "libtrainrt_cuda.so")) << why;
  if (const char* expect = std::getenv("TRAINRT_TEST_EXPECT_REASON")) {
    EXPECT_TRUE(contains(why, expect)) << why << "\nexpected to contain: " << expect;
  }
  expect_cuda_unusable(why);
}

}  // namespace

// TRAINRT_CPU_ISA caps the CPU kernel build (the ISA ctests in extra_tests.cmake run the op
// suites once per build); the chosen build is named in the CPU device description.
TEST(CpuIsa, OverrideIsHonoured) {
  const char* isa = std::getenv("TRAINRT_CPU_ISA");
  if (isa == nullptr) GTEST_SKIP() << "TRAINRT_CPU_ISA is not set";
  const std::string desc = trainrt::device_description(trainrt::Device::cpu());
  EXPECT_NE(desc.find(std::string(isa) + " kernels"), std::string::npos) << desc;
}

// TRAINRT_CPU_PREFETCH forces the software-prefetch choice of the CPU loops (the prefetch
// ctests in extra_tests.cmake run the op suites both ways); the CPU device description names
// the choice and its reason.
TEST(CpuPrefetch, OverrideIsHonoured) {
  const std::string desc = trainrt::device_description(trainrt::Device::cpu());
  const char* pf = std::getenv("TRAINRT_CPU_PREFETCH");
  if (pf == nullptr) {
    EXPECT_TRUE(contains(desc, "optimizer prefetch: software (") ||
                contains(desc, "optimizer prefetch: hardware only ("))
        << desc;
    GTEST_SKIP() << "TRAINRT_CPU_PREFETCH is not set; chosen: " << desc;
  }
  const std::string v = pf;
  const std::string want =
      v == "on" || v == "1" ? "optimizer prefetch: software (TRAINRT_CPU_PREFETCH=on)"
      : v == "off" || v == "0"
          ? "optimizer prefetch: hardware only (TRAINRT_CPU_PREFETCH=off)"
          : "; TRAINRT_CPU_PREFETCH=" + v + " ignored: expected on, off, 1 or 0)";
  EXPECT_TRUE(contains(desc, want)) << desc << "\nexpected to contain: " << want;
}

// The application may drop and register its own "trainrt" logger at any time, from any thread,
// while trainrt logs: trainrt uses whichever is registered (was: spdlog_ex "logger with name
// 'trainrt' already exists" escaped set_log_level and every log call when the application
// registered one between trainrt's lookup and its own registration, and the logger returned
// by reference could die in the caller's hands). Found by a threading review.
TEST(Logging, TheApplicationMayReplaceTheLoggerWhileTrainrtLogs) {
  const std::shared_ptr<spdlog::logger> original = spdlog::get("trainrt");  // test_main's
  std::atomic<bool> done{false};
  std::atomic<int> failures{0};
  std::vector<std::thread> users;
  for (int t = 0; t < 3; ++t) {
    users.emplace_back([&] {
      while (!done.load()) {
        try {
          trainrt::set_log_level("info");
        } catch (const std::exception&) {
          ++failures;
        }
      }
    });
  }
  for (int i = 0; i < 3000; ++i) {
    spdlog::drop("trainrt");
    auto mine = std::make_shared<spdlog::logger>("trainrt");
    try {
      spdlog::register_logger(mine);
    } catch (const spdlog::spdlog_ex&) {  // trainrt made its own in between: fine
    }
  }
  done = true;
  for (auto& u : users) u.join();
  spdlog::drop("trainrt");
  spdlog::register_logger(original);
  EXPECT_EQ(failures.load(), 0);
}
