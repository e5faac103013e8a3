// Shared test harness: backends as test parameters, host<->tensor helpers, the log capture.
#pragma once

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "trainrt/trainrt.hpp"

namespace trainrt_test {

/// Every backend a test body runs on. "cuda" is always listed; its cases skip with the
/// reason where CUDA cannot run.
inline std::vector<std::string> backend_names() { return {"cpu", "cuda"}; }

/// The Device for a backend name, or GTEST_SKIP with the reason. Use as
///   trainrt::Device dev; TRAINRT_DEVICE_OR_SKIP(GetParam(), dev);
#define TRAINRT_DEVICE_OR_SKIP(name, dev)                                       \
  do {                                                                          \
    if (std::string(name) == "cpu") {                                           \
      dev = trainrt::Device::cpu();                                             \
    } else {                                                                    \
      std::string why_;                                                         \
      if (!trainrt::cuda_available(&why_)) GTEST_SKIP() << "no CUDA: " << why_; \
      dev = trainrt::Device::cuda(0);                                           \
    }                                                                           \
  } while (0)

/// Fixture for tests parameterised by backend name.
class BackendTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { TRAINRT_DEVICE_OR_SKIP(GetParam(), dev); }
  trainrt::Device dev;
};

inline std::string backend_param_name(const ::testing::TestParamInfo<std::string>& info) {
  return info.param;
}

#define TRAINRT_INSTANTIATE_BACKENDS(suite)                                                     \
  INSTANTIATE_TEST_SUITE_P(Backends, suite, ::testing::ValuesIn(trainrt_test::backend_names()), \
                           trainrt_test::backend_param_name)

/// f() must throw a trainrt::Error whose message contains `needle`.
template <class F>
void expect_error(F f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
  } catch (const trainrt::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

/// Runs f() in a forked child whose address space may grow by at most `headroom` bytes
/// (RLIMIT_AS), so that a large allocation fails there as it would on a machine without the
/// memory, and returns what f did: "error: <message>" for a trainrt::Error, "exception:
/// <what>" for any other exception, "returned", or "child died (wait status N)" (also after
/// 60 s: a hung child is killed). f must stay on the calling thread: threads the child
/// starts count against the limit, and an OpenMP region after the parent used OpenMP can
/// hang a forked child. Returns "" in an AddressSanitizer build, whose operator new aborts
/// on out of memory instead of throwing std::bad_alloc.
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TRAINRT_TEST_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define TRAINRT_TEST_ASAN 1
#endif
inline std::string outcome_under_memory_limit(const std::function<void()>& f,
                                              std::size_t headroom) {
#if defined(TRAINRT_TEST_ASAN)
  (void)f;
  (void)headroom;
  return "";
#else
  int fd[2];
  if (::pipe(fd) != 0) return "pipe failed";
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) return "fork failed";
  if (pid == 0) {
    ::close(fd[0]);
    std::string out;
    long pages = 0;
    if (std::FILE* statm = std::fopen("/proc/self/statm", "r")) {
      if (std::fscanf(statm, "%ld", &pages) != 1) pages = 0;
      std::fclose(statm);
    }
    ::alarm(60);
    struct rlimit rl = {0, 0};
    const bool got = ::getrlimit(RLIMIT_AS, &rl) == 0;
    rlim_t limit = static_cast<rlim_t>(pages) * static_cast<rlim_t>(::sysconf(_SC_PAGESIZE)) +
                   static_cast<rlim_t>(headroom);
    if (got && rl.rlim_max != RLIM_INFINITY && rl.rlim_max < limit) limit = rl.rlim_max;
    rl.rlim_cur = limit;  // the soft limit, which may not exceed the hard one
    if (!got || pages <= 0 || ::setrlimit(RLIMIT_AS, &rl) != 0) {
      out = "cannot limit the address space";
    } else {
      try {
        f();
        out = "returned";
      } catch (const trainrt::Error& e) {
        out = std::string("error: ") + e.what();
      } catch (const std::exception& e) {
        out = std::string("exception: ") + e.what();
      }
    }
    const ssize_t n = ::write(fd[1], out.data(), out.size());
    ::_exit(n == static_cast<ssize_t>(out.size()) ? 0 : 1);
  }
  ::close(fd[1]);
  std::string got;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd[0], buf, sizeof buf)) > 0;)
    got.append(buf, static_cast<std::size_t>(n));
  ::close(fd[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return "child died (wait status " + std::to_string(status) + "): " + got;
  }
  return got;
#endif
}

/// Tensor from doubles in any floating dtype (values rounded to the dtype).
inline trainrt::Tensor make_tensor(const std::vector<double>& v, const trainrt::Shape& shape,
                                   trainrt::DType dtype, trainrt::Device dev) {
  trainrt::Tensor t = trainrt::Tensor::from_vector(v, shape);
  if (dtype != trainrt::DType::f64) t = t.to(dtype);
  return t.to(dev);
}

/// Values in [lo, hi), deterministic for a seed.
inline std::vector<double> uniform(std::size_t n, double lo, double hi, unsigned seed) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<double> d(lo, hi);
  std::vector<double> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

/// The doubles a tensor of any dtype holds, after rounding to that dtype (what a kernel sees).
inline std::vector<double> rounded(const std::vector<double>& v, trainrt::DType dtype) {
  if (dtype == trainrt::DType::f64) return v;
  return trainrt::Tensor::from_vector(v, {static_cast<std::int64_t>(v.size())})
      .to(dtype)
      .to_double_vector();
}

/// Relative/absolute tolerance for results of a dtype.
inline double tol(trainrt::DType dtype) {
  switch (dtype) {
    case trainrt::DType::f64: return 1e-10;
    case trainrt::DType::f32: return 2e-5;
    case trainrt::DType::f16: return 2e-3;
    case trainrt::DType::bf16: return 1.6e-2;
    default: return 0;
  }
}

/// Log capture: warnings and errors logged by "trainrt" fail the running test unless the
/// test expects them (see ExpectLogged). Installed by test_main.cpp.
std::vector<std::string> take_logged_warnings();
/// Declares that the current test may log warnings; returns what was logged so far.
void allow_warnings();

}  // namespace trainrt_test
