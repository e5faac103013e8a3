// Training-step throughput of the Fashion-MNIST MLP 784-256-128-10 (ReLU) at batch 128 on the
// CPU, f32, on random data (no dataset needed): the model, optimizer and step of
// examples/fashion_mnist_mlp.cpp, timed as src/trainer/trainer.cpp runs a step. One iteration is
// one optimizer step; items_per_second is steps/s, samples_per_second = 128 x that.
//
//   train_step_adamw      zero_grad -> forward -> fused cross_entropy loss + grad -> read the
//                         loss (the Trainer's one host sync) -> backward -> AdamW step
//                         (lr 1e-3, weight_decay 1e-4, as the demo)
//   train_step_sgd        the same with SGD (lr 1e-2, momentum 0.9, weight_decay 1e-4)
//   trainer_step_adamw    everything Trainer::fit does per step on top of train_step_adamw:
//                         the accuracy count (argmax of the logits on the host), the grad-norm
//                         metric (clip_grad_norm_(optimizer, inf): one fused read pass, folded
//                         into the step) and the cosine scheduler step
//
// The model input needs no gradient (set_input_grad(false), as the Trainer sets it: no dx GEMM
// for the first layer, as in PyTorch). The batches rotate among 8 random ones, created up front.
// bench/compare_train.py runs this beside the same steps in PyTorch.
//
//   build/bin/bench_train
//   build/bin/bench_train --benchmark_format=json --benchmark_repetitions=5
#include <benchmark/benchmark.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "trainrt/trainrt.hpp"

namespace {

using trainrt::Device;
using trainrt::Tensor;
namespace nn = trainrt::nn;
namespace optim = trainrt::optim;

constexpr std::int64_t kBatch = 128, kIn = 784, kClasses = 10, kBatches = 8;

struct Data {
  std::vector<Tensor> x, y;
};

/// kBatches random batches: features U(-1, 1), labels uniform over the 10 classes.
Data make_data(Device dev) {
  Data d;
  std::mt19937 g(42);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::uniform_int_distribution<std::int64_t> c(0, kClasses - 1);
  for (std::int64_t b = 0; b < kBatches; ++b) {
    std::vector<float> x(static_cast<std::size_t>(kBatch * kIn));
    std::vector<std::int64_t> y(static_cast<std::size_t>(kBatch));
    for (auto& v : x) v = u(g);
    for (auto& v : y) v = c(g);
    d.x.push_back(Tensor::from_vector(x, {kBatch, kIn}, dev));
    d.y.push_back(Tensor::from_vector(y, {kBatch}, dev));
  }
  return d;
}

std::shared_ptr<nn::Sequential> make_model(Device dev) {
  nn::manual_seed(0);
  auto model = std::make_shared<nn::Sequential>(std::initializer_list<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(kIn, 256), std::make_shared<nn::ReLU>(),
      std::make_shared<nn::Linear>(256, 128), std::make_shared<nn::ReLU>(),
      std::make_shared<nn::Linear>(128, kClasses)});
  model->to(dev);
  model->set_input_grad(false);
  model->train();
  return model;
}

/// Correct predictions of a batch, computed as the Trainer does (argmax on the host).
double count_correct(const Tensor& logits, const Tensor& labels) {
  const auto l = logits.to(Device::cpu()).to_vector<float>();
  const auto t = labels.to(Device::cpu()).to_vector<std::int64_t>();
  double c = 0;
  for (std::int64_t i = 0; i < kBatch; ++i) {
    const float* row = l.data() + i * kClasses;
    if (std::max_element(row, row + kClasses) - row == t[static_cast<std::size_t>(i)]) c += 1;
  }
  return c;
}

enum class Kind { adamw, sgd, trainer_adamw };

void bm_train_step(benchmark::State& state, Kind kind) {
  const Device dev = Device::cpu();
  const Data data = make_data(dev);
  auto model = make_model(dev);
  std::unique_ptr<optim::Optimizer> opt;
  if (kind == Kind::sgd)
    opt = std::make_unique<optim::SGD>(model->parameters(),
                                       optim::SGDOptions(1e-2).momentum(0.9).weight_decay(1e-4));
  else
    opt = std::make_unique<optim::AdamW>(model->parameters(),
                                         optim::AdamWOptions(1e-3).weight_decay(1e-4));
  std::unique_ptr<optim::LRScheduler> sched;
  // The demo's cosine schedule over 10 epochs of 469 steps.
  if (kind == Kind::trainer_adamw)
    sched = std::make_unique<optim::CosineAnnealingLR>(*opt, 4690, 0.0);
  const double inf = std::numeric_limits<double>::infinity();

  std::int64_t b = 0;
  double sink = 0;
  auto step = [&] {
    const Tensor& x = data.x[static_cast<std::size_t>(b)];
    const Tensor& y = data.y[static_cast<std::size_t>(b)];
    b = (b + 1) % kBatches;
    opt->zero_grad(true);
    const Tensor out = model->forward(x);
    const trainrt::LossResult loss = trainrt::cross_entropy(out, y);
    sink += loss.loss.item();
    if (kind == Kind::trainer_adamw) sink += count_correct(out, y);
    model->backward(loss.grad);
    if (kind == Kind::trainer_adamw) sink += trainrt::clip_grad_norm_(*opt, inf).item();
    opt->step();
    if (sched) sched->step();
  };
  for (int i = 0; i < 3; ++i) step();  // warm-up: optimizer state allocated, pages touched
  for (auto _ : state) step();
  if (!std::isfinite(sink)) throw std::runtime_error("bench_train: the loss became NaN");
  benchmark::DoNotOptimize(sink);
  state.SetItemsProcessed(state.iterations());
  state.counters["samples_per_second"] = benchmark::Counter(
      static_cast<double>(state.iterations() * kBatch), benchmark::Counter::kIsRate);
  state.counters["batch"] = static_cast<double>(kBatch);
}

void register_all() {
  std::vector<benchmark::internal::Benchmark*> regs;
  regs.push_back(benchmark::RegisterBenchmark("train_step_adamw/cpu", bm_train_step, Kind::adamw));
  regs.push_back(benchmark::RegisterBenchmark("train_step_sgd/cpu", bm_train_step, Kind::sgd));
  regs.push_back(
      benchmark::RegisterBenchmark("trainer_step_adamw/cpu", bm_train_step, Kind::trainer_adamw));
  for (benchmark::internal::Benchmark* r : regs) r->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::AddCustomContext("trainrt_version", trainrt::version());
  benchmark::AddCustomContext("cpu_backend", trainrt::device_description(Device::cpu()));
  benchmark::AddCustomContext("omp_max_threads", std::to_string(omp_get_max_threads()));
  benchmark::AddCustomContext("cpu_gemm", trainrt::cpu_gemm_info());
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
