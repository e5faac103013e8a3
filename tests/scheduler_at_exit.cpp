// A scheduler and its optimizer held in globals and destroyed at exit, after the function-local
// statics made during main (ctest scheduler_destroyed_at_exit). It used to die in free():
// the scheduler's destructor released its entry in a registry destroyed before it.
#include <cstdio>
#include <memory>
#include <vector>

#include "trainrt/trainrt.hpp"

std::unique_ptr<trainrt::optim::SGD> g_opt;
std::unique_ptr<trainrt::optim::StepLR> g_sched;

int main() {
  std::vector<trainrt::Parameter> params = {
      trainrt::Parameter(trainrt::Tensor::zeros({2}, trainrt::DType::f32))};
  g_opt = std::make_unique<trainrt::optim::SGD>(params, trainrt::optim::SGDOptions(0.1));
  g_sched = std::make_unique<trainrt::optim::StepLR>(*g_opt, 1, 0.5);
  g_sched->step();
  std::printf("lr after one step: %g\n", g_opt->lr());
  std::fflush(stdout);
  return g_opt->lr() == 0.05 ? 0 : 1;
}
