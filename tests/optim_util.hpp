// Helpers shared by the optimizer, clipping and GradScaler tests: parameters and grads from the
// integer formulas of tests/fixtures/gen_optim_fixtures.py, bitwise snapshots, comparisons.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace trainrt_test {

/// init(p, i) of the fixture generator (exact in f32).
inline double init_value(int p, std::int64_t i) {
  return static_cast<double>((5 * i + 3 * p) % 11 - 5) / 10.0;
}
/// grad(p, k, i) of the fixture generator (exact in f32).
inline double grad_value(int p, int k, std::int64_t i) {
  return static_cast<double>((7 * i + 13 * k + 5 * p) % 17 - 8) / 8.0 * (1 + k % 3);
}

inline trainrt::Tensor f32_tensor(const std::vector<float>& v, const trainrt::Shape& shape,
                                  trainrt::Device dev) {
  return trainrt::Tensor::from_vector(v, shape, dev);
}

inline std::vector<float> formula_values(const trainrt::Shape& shape, int p, int k, bool grad) {
  const std::int64_t n = trainrt::shape_numel(shape);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    v[static_cast<std::size_t>(i)] =
        static_cast<float>(grad ? grad_value(p, k, i) : init_value(p, i));
  }
  return v;
}

inline trainrt::Parameter formula_param(const trainrt::Shape& shape, int p, trainrt::Device dev) {
  return trainrt::Parameter(f32_tensor(formula_values(shape, p, 0, false), shape, dev),
                            "p" + std::to_string(p));
}

inline void set_formula_grad(const trainrt::Parameter& param, int p, int k) {
  const trainrt::Tensor v = param.value();
  param.set_grad(f32_tensor(formula_values(v.shape(), p, k, true), v.shape(), v.device()));
}

/// Random-ish values in [lo, hi) as f32.
inline std::vector<float> uniform_f32(std::size_t n, double lo, double hi, unsigned seed) {
  const std::vector<double> d = uniform(n, lo, hi, seed);
  return std::vector<float>(d.begin(), d.end());
}

inline std::vector<float> host_f32(const trainrt::Tensor& t) { return t.to_vector<float>(); }

/// Parameters and an optimizer over them: what most optimizer, clip and scaler tests build.
struct ParamsAndOptimizer {
  std::vector<trainrt::Parameter> params;
  std::unique_ptr<trainrt::optim::Optimizer> opt;
};

/// Bitwise equality of two f32 vectors (NaN payloads included).
inline bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

/// |a - b| <= atol + rtol * |b| elementwise; returns the index of the first failure or -1.
inline std::int64_t first_mismatch(const std::vector<float>& got, const std::vector<double>& want,
                                   double rtol, double atol) {
  if (got.size() != want.size()) return 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], w = want[i];
    if (std::isnan(w) && std::isnan(g)) continue;
    if (!(std::fabs(g - w) <= atol + rtol * std::fabs(w))) return static_cast<std::int64_t>(i);
  }
  return -1;
}

}  // namespace trainrt_test
