// A scheduler and its optimizer held in globals and destroyed at exit, after the function-local
// statics made during main (ctest scheduler_destroyed_at_exit). It used to die in free():
// the scheduler's destructor released its entry in a registry destroyed before it. A global's
// destructor that still steps the scheduler (Optimizer::set, name) used to read the destroyed
// table of algorithms.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "trainrt/trainrt.hpp"

std::unique_ptr<trainrt::optim::SGD> g_opt;
std::unique_ptr<trainrt::optim::StepLR> g_sched;

// Constructed before main, so destroyed after everything made during main, and before g_opt
// and g_sched (declared above it).
struct StepsAtExit {
  ~StepsAtExit() {
    if (!g_sched) return;
    g_sched->step();
    g_opt->set_lr(g_opt->lr() * 2);
    const bool ok = g_opt->lr() == 0.05 && g_opt->name() == "SGD";
    std::printf("at exit: lr %g, %s\n", g_opt->lr(), g_opt->name().c_str());
    std::fflush(stdout);
    if (!ok) std::_Exit(1);
  }
} g_steps_at_exit;

int main() {
  std::vector<trainrt::Parameter> params = {
      trainrt::Parameter(trainrt::Tensor::zeros({2}, trainrt::DType::f32))};
  g_opt = std::make_unique<trainrt::optim::SGD>(params, trainrt::optim::SGDOptions(0.1));
  g_sched = std::make_unique<trainrt::optim::StepLR>(*g_opt, 1, 0.5);
  g_sched->step();
  std::printf("lr after one step: %g (%s)\n", g_opt->lr(), g_opt->name().c_str());
  std::fflush(stdout);
  return g_opt->lr() == 0.05 ? 0 : 1;
}
