// A program that uses an installed trainrt, the way an application would: built by its own
// CMake project (find_package(trainrt CONFIG REQUIRED)) or with pkg-config, from the same
// source, with -std=c++17 -Wall -Wextra -Werror -pedantic.
//
// It trains a softmax-regression classifier (logits = x W + b) on a linearly separable
// synthetic problem by full-batch gradient descent. trainrt's fused cross_entropy gives the
// loss and d(loss)/d(logits) in one pass on the best device; the matrix products (logits and
// dW = X^T dlogits) are done here on the host, since layers and optimizers are not in the
// library yet. Prints the loss going down and exits non-zero if the model did not learn.
//
//   trainrt_consumer [epochs]
#include <trainrt/trainrt.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

namespace {

constexpr int kFeatures = 8;
constexpr int kClasses = 4;
constexpr int kSamples = 512;

struct SyntheticData {
  std::vector<float> x;             // [kSamples, kFeatures]
  std::vector<std::int64_t> label;  // [kSamples]
};

// Labels come from a random linear "teacher"; points closer than a margin to its decision
// boundary are redrawn, so the classes are separable and a linear model can fit them all.
SyntheticData make_dataset(std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> teacher(kFeatures * kClasses);
  for (float& w : teacher) w = normal(rng);

  SyntheticData d;
  d.x.reserve(kSamples * kFeatures);
  while (static_cast<int>(d.label.size()) < kSamples) {
    float x[kFeatures];
    for (float& v : x) v = normal(rng);
    float score[kClasses] = {};
    for (int c = 0; c < kClasses; ++c) {
      for (int f = 0; f < kFeatures; ++f) score[c] += x[f] * teacher[f * kClasses + c];
    }
    int best = 0, second = -1;
    for (int c = 1; c < kClasses; ++c) {
      if (score[c] > score[best]) best = c;
    }
    for (int c = 0; c < kClasses; ++c) {
      if (c != best && (second < 0 || score[c] > score[second])) second = c;
    }
    if (score[best] - score[second] < 0.5f) continue;  // too close to the boundary
    d.x.insert(d.x.end(), x, x + kFeatures);
    d.label.push_back(best);
  }
  return d;
}

struct Model {
  std::vector<float> w = std::vector<float>(kFeatures * kClasses, 0.0f);  // [F, C]
  std::vector<float> b = std::vector<float>(kClasses, 0.0f);

  std::vector<float> logits(const std::vector<float>& x) const {
    std::vector<float> z(static_cast<std::size_t>(kSamples) * kClasses);
    for (int n = 0; n < kSamples; ++n) {
      for (int c = 0; c < kClasses; ++c) {
        float acc = b[c];
        for (int f = 0; f < kFeatures; ++f) acc += x[n * kFeatures + f] * w[f * kClasses + c];
        z[n * kClasses + c] = acc;
      }
    }
    return z;
  }
};

double accuracy(const std::vector<float>& logits, const std::vector<std::int64_t>& label) {
  int right = 0;
  for (int n = 0; n < kSamples; ++n) {
    int best = 0;
    for (int c = 1; c < kClasses; ++c) {
      if (logits[n * kClasses + c] > logits[n * kClasses + best]) best = c;
    }
    right += best == label[n] ? 1 : 0;
  }
  return static_cast<double>(right) / kSamples;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace trainrt;
  const int epochs = argc > 1 ? std::atoi(argv[1]) : 200;
  const float lr = 0.5f;
  try {
    std::printf("trainrt %s (headers %s)\n", version(), TRAINRT_VERSION_STRING);
    std::string why;
    if (!cuda_available(&why)) std::printf("CUDA backend: %s\n", why.c_str());
    const Device dev = Device::best();
    std::printf("device: %s\n", device_description(dev).c_str());

    const SyntheticData data = make_dataset(1234);
    const Tensor labels = Tensor::from_vector(data.label, {kSamples}).to(dev);
    Model model;
    double first_loss = 0.0, loss = 0.0, acc = 0.0;

    for (int epoch = 0; epoch <= epochs; ++epoch) {
      const std::vector<float> z = model.logits(data.x);
      const Tensor logits = Tensor::from_vector(z, {kSamples, kClasses}).to(dev);
      const LossResult r = cross_entropy(logits, labels);  // mean loss and its gradient
      loss = r.loss.item();
      acc = accuracy(z, data.label);
      if (epoch == 0) first_loss = loss;
      if (epoch % 25 == 0 || epoch == epochs) {
        std::printf("epoch %4d  loss %.5f  accuracy %.3f\n", epoch, loss, acc);
      }
      if (epoch == epochs) break;

      // dlogits [N, C] -> dW = X^T dlogits [F, C], db = column sums; plain gradient descent.
      const std::vector<float> g = r.grad.to(Device::cpu()).to_vector<float>();
      std::vector<float> dw(kFeatures * kClasses, 0.0f), db(kClasses, 0.0f);
      for (int n = 0; n < kSamples; ++n) {
        for (int c = 0; c < kClasses; ++c) {
          const float gnc = g[n * kClasses + c];
          db[c] += gnc;
          for (int f = 0; f < kFeatures; ++f)
            dw[f * kClasses + c] += data.x[n * kFeatures + f] * gnc;
        }
      }
      for (std::size_t i = 0; i < dw.size(); ++i) model.w[i] -= lr * dw[i];
      for (int c = 0; c < kClasses; ++c) model.b[c] -= lr * db[c];
    }

    // Starting from zero weights the loss is log(C); a model that learned is far below it
    // and classifies the (separable) training set almost perfectly.
    const bool learned = std::isfinite(loss) && loss < 0.25 * first_loss && acc >= 0.97;
    std::printf("%s: loss %.5f -> %.5f, accuracy %.3f\n", learned ? "learned" : "DID NOT LEARN",
                first_loss, loss, acc);
    return learned ? 0 : 1;
  } catch (const Error& e) {
    std::fprintf(stderr, "trainrt error: %s\n", e.what());
    return 1;
  }
}
