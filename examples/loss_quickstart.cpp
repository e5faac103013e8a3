// The README's loss example: a fused cross-entropy forward+backward on the best device.
//   ./build/bin/loss_quickstart
#include <cstdio>
#include <vector>

#include "trainrt/trainrt.hpp"

int main() {
  using namespace trainrt;
  try {
    const Device dev = Device::best();  // CUDA if usable, else CPU (logs why)

    // 4 samples, 3 classes.
    const std::vector<float> logits = {2.0f,  0.5f, -1.0f, 0.1f, 0.2f, 0.3f,
                                       -2.0f, 4.0f, 0.0f,  1.0f, 1.0f, 1.0f};
    const std::vector<std::int64_t> labels = {0, 2, 1, -100};  // the last row is ignored
    const Tensor x = Tensor::from_vector(logits, {4, 3}).to(dev);
    const Tensor y = Tensor::from_vector(labels, {4}).to(dev);

    CrossEntropyOptions opt;
    opt.label_smoothing = 0.1;
    opt.grad_scale = 0.5;                           // e.g. 1 / gradient-accumulation steps
    const LossResult r = cross_entropy(x, y, opt);  // loss and gradient in one pass

    std::printf("device %s\nloss %.6f\n", device_description(dev).c_str(), r.loss.item());
    const std::vector<float> g = r.grad.to(Device::cpu()).to_vector<float>();
    for (int n = 0; n < 4; ++n) {
      std::printf("grad[%d] = % .6f % .6f % .6f\n", n, g[n * 3], g[n * 3 + 1], g[n * 3 + 2]);
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
