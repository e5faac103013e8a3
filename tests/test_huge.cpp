// Tensors of more than 2^31 elements through the multi-tensor kernels: the norm reduction, the
// clip's scale pass and a fused AdamW step. An index or chunk count held in 32 bits would
// leave the elements past 2^31 untouched, or write elsewhere. Every element is checked.
//
// These need memory: 8.6 GB per f32 array. The norm tests use one array, the AdamW test four
// on the device (35 GB) and two more on the host to fill and read them. So they run only when
// TRAINRT_TEST_HUGE=1 (TRAINRT_TEST_HUGE_N changes the size). scripts/gpu_check.sh sets it in a
// step of its own after ctest (the GPU machine has 139 GB on the GPU and 128 GB of host memory).
// Elsewhere they skip and say why.
//
// The values are periodic in the index, so the expected value of element i is that of i mod
// the period, computed by the same call on a tensor of one period in the same optimizer (the
// same kernel, the same f32 operations per element: bitwise equal).
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace {

using trainrt::Device;
using trainrt::DType;
using trainrt::Parameter;
using trainrt::Tensor;

/// Past 2^31 and not a round size; TRAINRT_TEST_HUGE_N tries the tests at another size.
std::int64_t huge_n() {
  const char* e = std::getenv("TRAINRT_TEST_HUGE_N");
  return e != nullptr ? std::atoll(e) : (std::int64_t(1) << 31) + 4099;
}
constexpr std::int64_t kPP = 1009;  // period of the values
constexpr std::int64_t kPG = 13;    // period of the grads
constexpr std::int64_t kPeriod = kPP * kPG;

float value_at(std::int64_t i) { return static_cast<float>(i % kPP - kPP / 2) * 1e-3f; }
float grad_at(std::int64_t i) { return static_cast<float>(i % kPG - kPG / 2) * 1e-3f; }

bool huge_enabled() {
  const char* e = std::getenv("TRAINRT_TEST_HUGE");
  return e != nullptr && std::string(e) == "1";
}

#define SKIP_UNLESS_HUGE()                                                                   \
  do {                                                                                       \
    if (!huge_enabled())                                                                     \
      GTEST_SKIP() << "set TRAINRT_TEST_HUGE=1 to run (needs up to 35 GB on the device and " \
                      "as much host memory; scripts/gpu_check.sh runs it)";                  \
  } while (0)

/// n f32 elements f(i) on dev (on the CPU written in place, elsewhere staged on the host).
Tensor patterned(std::int64_t n, float (*f)(std::int64_t), Device dev) {
  if (dev.is_cpu()) {
    Tensor t = Tensor::empty({n}, DType::f32, dev);
    float* d = static_cast<float*>(t.data());
    for (std::int64_t i = 0; i < n; ++i) d[i] = f(i);
    return t;
  }
  std::vector<float> h(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) h[static_cast<std::size_t>(i)] = f(i);
  return Tensor::from_vector(h, {n}, dev);
}

/// Calls check(i, x_i) for every element of t (read in place on the CPU, else copied back).
template <class F>
void for_each_element(const Tensor& t, F&& check) {
  std::vector<float> copy;
  const float* d = nullptr;
  if (t.device().is_cpu()) {
    d = static_cast<const float*>(t.data());
  } else {
    copy = t.to_vector<float>();
    d = copy.data();
  }
  for (std::int64_t i = 0; i < t.numel(); ++i) check(i, d[i]);
}

/// sum of grad_at(i)^2 over i < n, in double, from the count of each residue.
double grad_sum_sq(std::int64_t n) {
  double s = 0.0;
  for (std::int64_t r = 0; r < kPG; ++r) {
    const std::int64_t count = n / kPG + (r < n % kPG ? 1 : 0);
    const double g = grad_at(r);
    s += static_cast<double>(count) * g * g;
  }
  return s;
}

class HugeTensors : public trainrt_test::BackendTest {};
TRAINRT_INSTANTIATE_BACKENDS(HugeTensors);

TEST_P(HugeTensors, GradNormAndClipReachEveryElement) {
  SKIP_UNLESS_HUGE();
  const std::int64_t n_huge = huge_n();
  // The norm and the clip read and write only grads, so the parameter's value shares the
  // grad's storage: one 8.6 GB array instead of two.
  Tensor g = patterned(n_huge, grad_at, dev);
  Parameter huge(g);
  huge.set_grad(g);
  const double want = std::sqrt(grad_sum_sq(n_huge));
  EXPECT_NEAR(trainrt::grad_norm({huge}).item(), want, 1e-6 * want);
  EXPECT_EQ(trainrt::grad_norm({huge}, INFINITY).item(), std::fabs(double(grad_at(0))));
  double want1 = 0.0;  // the L1 norm, from the residue counts
  for (std::int64_t r = 0; r < kPG; ++r)
    want1 += double(n_huge / kPG + (r < n_huge % kPG ? 1 : 0)) * std::fabs(double(grad_at(r)));
  EXPECT_NEAR(trainrt::grad_norm({huge}, 1.0).item(), want1, 1e-6 * want1);

  // The parameter form scales the grads in place by ~1/4: every element, past 2^31 too, must
  // then hold the scaled value of its residue.
  const double before = trainrt::clip_grad_norm_({huge}, want / 4).item();
  EXPECT_NEAR(before, want, 1e-6 * want);
  std::vector<float> first(kPG);
  std::int64_t bad = 0, first_bad = -1;
  for_each_element(g, [&](std::int64_t i, float x) {
    if (i < kPG) first[static_cast<std::size_t>(i)] = x;
    if (x != first[static_cast<std::size_t>(i % kPG)]) {
      if (first_bad < 0) first_bad = i;
      ++bad;
    }
  });
  EXPECT_EQ(bad, 0) << "first wrong element " << first_bad << " of " << n_huge;
  for (std::int64_t r = 0; r < kPG; ++r) {
    const double want_r = double(grad_at(r)) * 0.25;
    EXPECT_NEAR(first[static_cast<std::size_t>(r)], want_r, 1e-6 * std::fabs(want_r))
        << "residue " << r;
  }
}

TEST_P(HugeTensors, AdamWStepReachesEveryElement) {
  SKIP_UNLESS_HUGE();
  const std::int64_t n_huge = huge_n();
  Parameter huge(patterned(n_huge, value_at, dev));
  huge.set_grad(patterned(n_huge, grad_at, dev));
  Parameter period(patterned(kPeriod, value_at, dev));
  period.set_grad(patterned(kPeriod, grad_at, dev));
  // One optimizer over both: one launch (CUDA) / one chunk list (CPU) holds both tensors.
  trainrt::optim::AdamW opt({huge, period}, trainrt::optim::AdamWOptions(1e-2).weight_decay(0.1));
  opt.step();
  opt.step();  // the second step reads the moments the first wrote
  EXPECT_EQ(opt.step_count(huge), 2);
  const std::vector<float> want = period.value().to_vector<float>();
  std::int64_t bad = 0, first_bad = -1;
  float got_bad = 0.0f;
  for_each_element(huge.value(), [&](std::int64_t i, float x) {
    if (x != want[static_cast<std::size_t>(i % kPeriod)]) {
      if (first_bad < 0) {
        first_bad = i;
        got_bad = x;
      }
      ++bad;
    }
  });
  EXPECT_EQ(bad, 0) << "first wrong element " << first_bad << " of " << n_huge << ": " << got_bad
                    << " instead of " << (first_bad < 0 ? 0.0f : want[first_bad % kPeriod]);
  // The values moved (a step that did nothing would also be "periodic").
  EXPECT_NE(want[1], value_at(1));
}

}  // namespace
