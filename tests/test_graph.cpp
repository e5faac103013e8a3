// CUDA graphs (trainrt::CudaGraph) and capturable optimizer steps captured in them.
//
// On a CUDA device the tests check that a step captured once and replayed gives the eager
// steps' results bitwise (the same kernels run on the same data), with the step counts
// advancing on the device, an lr changed between replays through upload_hyperparameters(),
// and a GradScaler + fused-clip iteration (unscale_, clip_grad_norm_, step, update) captured
// whole, including a replay that skips its step on an inf grad; and that what cannot be
// captured is refused with an Error before anything changes. They have not run on a GPU yet.
// In CI they run on two fake "cuda" devices instead: CaptureRefusals on the host-memory one
// that computes nothing (ctest graph_capture_refusals), and all of them, with
// SimulatedDevice*, on the simulated device of tests/fake_recording_backend.cpp, which runs
// the CPU kernels and records and replays captures (ctest simulated_device_graphs); and all
// of them, with CudaDeferredErrors and CudaCaptureMemory, on the CUDA module itself run by the CUDA
// emulator (tests/cuda_emu, ctest cuda_emulator_graphs). The CPU cases check that graphs are
// refused on the CPU. (The capturable step itself is checked against the ordinary one on every
// backend in test_optim.cpp and test_clip_amp.cpp.)
#include <dlfcn.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "optim_util.hpp"

namespace {

using trainrt::CudaGraph;
using trainrt::Device;
using trainrt::Parameter;
using trainrt::Shape;
using trainrt::Tensor;
using trainrt::optim::HyperParams;
using trainrt::optim::Optimizer;
using trainrt::optim::ParamGroup;
using namespace trainrt_test;

#define CUDA_DEVICE_OR_SKIP(dev) TRAINRT_DEVICE_OR_SKIP("cuda", dev)

TEST(CudaGraphCpu, GraphsAreRefusedOnTheCpu) {
  CudaGraph g;
  EXPECT_FALSE(g.captured());
  try {
    g.capture_begin(Device::cpu());
    FAIL() << "capture_begin on the CPU did not throw";
  } catch (const trainrt::Error& e) {
    EXPECT_NE(std::string(e.what()).find("CUDA graphs need a CUDA device"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(g.capturing());
  EXPECT_THROW(g.capture_end(), trainrt::Error);
  EXPECT_THROW(g.replay(), trainrt::Error);
  g.reset();  // nothing to free
}

// On the CPU a capturable optimizer works without graphs (and upload_hyperparameters is
// harmless before the first step and on an ordinary optimizer).
TEST(CudaGraphCpu, CapturableOptimizerWithoutGraph) {
  Parameter p(f32_tensor({1.0f, 2.0f}, {2}, Device::cpu()));
  trainrt::optim::SGD opt({p}, trainrt::optim::SGDOptions(0.5));
  opt.upload_hyperparameters();  // ordinary: a no-op
  opt.set_capturable(true);
  opt.upload_hyperparameters();  // nothing uploaded yet: a no-op
  p.set_grad(f32_tensor({1.0f, 1.0f}, {2}, Device::cpu()));
  opt.step();
  opt.set_lr(0.25);
  opt.upload_hyperparameters();
  opt.step();
  EXPECT_EQ(host_f32(p.value()), (std::vector<float>{0.25f, 1.25f}));
  EXPECT_EQ(opt.step_count(p), 2);
}

struct Config {
  const char* name;
  const char* optimizer;
  HyperParams defaults;
};

std::vector<Config> configs() {
  return {
      {"adamw", "AdamW", {{"lr", 0.01}, {"weight_decay", 0.1}}},
      {"adam_amsgrad", "Adam", {{"lr", 0.01}, {"amsgrad", 1}}},
      {"sgd_dampening", "SGD", {{"lr", 0.05}, {"momentum", 0.5}, {"dampening", 0.3}}},
      {"rmsprop_centered", "RMSprop", {{"lr", 0.01}, {"centered", 1}, {"momentum", 0.9}}},
      {"adagrad", "Adagrad", {{"lr", 0.1}, {"lr_decay", 0.01}}},
      {"radam", "RAdam", {{"lr", 0.01}}},
      {"lamb", "LAMB", {{"lr", 0.01}}},
  };
}

const std::vector<Shape>& shapes() {
  static const std::vector<Shape> s = {{3, 4}, {0}, {40000}, {17}, {16385}, {5}};
  return s;
}

/// The parameters of a run; the last one never has a grad.
using OptRun = ParamsAndOptimizer;

OptRun make_run(const Config& c, Device dev) {
  OptRun r;
  for (std::size_t p = 0; p < shapes().size(); ++p)
    r.params.push_back(formula_param(shapes()[p], static_cast<int>(p), dev));
  std::vector<Parameter> a(r.params.begin(), r.params.begin() + 3);
  std::vector<Parameter> b(r.params.begin() + 3, r.params.end());
  r.opt = trainrt::optim::make_optimizer(
      c.optimizer, {ParamGroup(a), ParamGroup(b, {{"lr", c.defaults.at("lr") * 0.5}})}, c.defaults);
  return r;
}

/// Grads of iteration k times `scale`, written into the existing grad tensors (a graph
/// reads them where they were at capture), with an inf at element 7 of param 2 if `inf`.
void fill_grads(const OptRun& r, int k, double scale, bool inf) {
  for (std::size_t p = 0; p + 1 < r.params.size(); ++p) {
    const Tensor v = r.params[p].value();
    std::vector<float> g = formula_values(v.shape(), static_cast<int>(p), k, true);
    for (float& x : g) x = static_cast<float>(x * scale);
    if (inf && p == 2) g[7] = std::numeric_limits<float>::infinity();
    const Tensor t = f32_tensor(g, v.shape(), v.device());
    if (r.params[p].has_grad()) {
      Tensor dst = r.params[p].grad();
      dst.copy_(t);
    } else {
      r.params[p].set_grad(t);
    }
  }
}

void expect_same(const OptRun& a, const OptRun& b) {
  for (std::size_t p = 0; p < a.params.size(); ++p) {
    EXPECT_TRUE(same_bits(host_f32(a.params[p].value()), host_f32(b.params[p].value())))
        << "param " << p;
    EXPECT_EQ(a.opt->step_count(a.params[p]), b.opt->step_count(b.params[p])) << "param " << p;
  }
}

TEST(CudaGraphCuda, CapturedStepReplaysEqualEagerSteps) {
  Device dev;
  CUDA_DEVICE_OR_SKIP(dev);
  const int N = 10, kLr = 5;
  for (const Config& c : configs()) {
    SCOPED_TRACE(c.name);
    OptRun eager = make_run(c, dev);
    OptRun graphed = make_run(c, dev);
    graphed.opt->set_capturable(true);
    CudaGraph graph;
    for (int k = 0; k < N; ++k) {
      SCOPED_TRACE("iteration " + std::to_string(k));
      if (k == kLr) {
        eager.opt->set(1, "lr", eager.opt->get(1, "lr") * 0.25);
        graphed.opt->set(1, "lr", graphed.opt->get(1, "lr") * 0.25);
        graphed.opt->upload_hyperparameters();
      }
      fill_grads(eager, k, 1.0, false);
      eager.opt->step();
      fill_grads(graphed, k, 1.0, false);
      if (k == 0) {
        graphed.opt->step();  // warm-up: state, counts and blocks are made
      } else {
        if (k == 1) {
          graph.capture_begin(dev);
          graphed.opt->step();  // recorded, not run
          graph.capture_end();
          ASSERT_TRUE(graph.captured());
        }
        graph.replay();
      }
    }
    trainrt::synchronize(dev);
    expect_same(eager, graphed);
    EXPECT_EQ(graphed.opt->step_count(graphed.params[0]), N);
    EXPECT_EQ(graphed.opt->step_count(graphed.params.back()), 0);  // never had a grad
  }
}

TEST(CudaGraphCuda, CapturedScalerIterationEqualsEagerIteration) {
  Device dev;
  CUDA_DEVICE_OR_SKIP(dev);
  const int N = 9;
  for (const Config& c : configs()) {
    SCOPED_TRACE(c.name);
    OptRun eager = make_run(c, dev);
    OptRun graphed = make_run(c, dev);
    graphed.opt->set_capturable(true);
    trainrt::GradScalerOptions so;
    so.init_scale = 256.0;
    so.growth_interval = 2;
    trainrt::GradScaler s_eager(so), s_graph(so);
    Tensor norm_eager, norm_graph;
    auto iteration = [](OptRun& r, trainrt::GradScaler& s) {
      s.unscale_(*r.opt);
      Tensor n = trainrt::clip_grad_norm_(*r.opt, 0.5);
      s.step(*r.opt);
      s.update();
      return n;
    };
    CudaGraph graph;
    for (int k = 0; k < N; ++k) {
      SCOPED_TRACE("iteration " + std::to_string(k));
      const bool inf = k == 3 || k == 6;
      fill_grads(eager, k, s_eager.get_scale(), inf);
      norm_eager = iteration(eager, s_eager);
      fill_grads(graphed, k, s_graph.get_scale(), inf);
      if (k == 0) {
        norm_graph = iteration(graphed, s_graph);  // warm-up
      } else {
        if (k == 1) {
          graph.capture_begin(dev);
          norm_graph = iteration(graphed, s_graph);
          graph.capture_end();
        }
        graph.replay();
      }
      EXPECT_EQ(graphed.opt->last_step_skipped(), eager.opt->last_step_skipped());
      EXPECT_EQ(eager.opt->last_step_skipped(), inf);
      EXPECT_EQ(s_graph.get_scale(), s_eager.get_scale());
      const float ne = norm_eager.item(), ng = norm_graph.item();
      EXPECT_TRUE(ne == ng || (std::isnan(ne) && std::isnan(ng))) << ne << " vs " << ng;
    }
    expect_same(eager, graphed);
  }
}

// The same iteration with a fused clip between scaler.step and update (and, in the second
// form, zero_grad(false) at its end): the clip activates the spare block, which update() settles
// and releases, so every replay resets and uses the same blocks as the eager iterations (the
// coefficient compounded from replay to replay; found by a fuzz on the CUDA emulator).
TEST(CudaGraphCuda, CapturedIterationWithAClipAfterTheStepEqualsEager) {
  Device dev;
  CUDA_DEVICE_OR_SKIP(dev);
  const int N = 8;
  for (bool zero : {false, true}) {
    for (const Config& c : configs()) {
      SCOPED_TRACE(std::string(c.name) + (zero ? " zero_grad" : ""));
      OptRun eager = make_run(c, dev);
      OptRun graphed = make_run(c, dev);
      graphed.opt->set_capturable(true);
      eager.opt->set_capturable(true);
      trainrt::GradScalerOptions so;
      so.init_scale = 4.0;
      so.growth_interval = 2;
      trainrt::GradScaler s_eager(so), s_graph(so);
      auto iteration = [zero](OptRun& r, trainrt::GradScaler& s) {
        s.unscale_(*r.opt);
        trainrt::clip_grad_norm_(*r.opt, 1e-3);  // both clips clip (the grads' norms are larger)
        s.step(*r.opt);
        trainrt::clip_grad_norm_(*r.opt, 5e-4);
        s.update();
        if (zero) r.opt->zero_grad(false);
      };
      CudaGraph graph;
      for (int k = 0; k < N; ++k) {
        SCOPED_TRACE("iteration " + std::to_string(k));
        const bool inf = k == 4;
        fill_grads(eager, k, s_eager.get_scale(), inf);
        iteration(eager, s_eager);
        fill_grads(graphed, k, s_graph.get_scale(), inf);
        if (k == 0) {
          iteration(graphed, s_graph);  // warm-up
        } else {
          if (k == 1) {
            graph.capture_begin(dev);
            iteration(graphed, s_graph);
            graph.capture_end();
          }
          graph.replay();
        }
        EXPECT_EQ(graphed.opt->last_step_skipped(), inf);
        EXPECT_EQ(eager.opt->last_step_skipped(), inf);
        EXPECT_EQ(s_graph.get_scale(), s_eager.get_scale());
      }
      expect_same(eager, graphed);
    }
  }
}

// Steps that would need a host transfer are refused during a capture, before anything
// changes: an ordinary optimizer's step, and a capturable one's first step.
TEST(CudaGraphCuda, StepsThatCannotBeCapturedAreRefused) {
  Device dev;
  CUDA_DEVICE_OR_SKIP(dev);
  const Config c = configs()[0];
  for (bool capturable : {false, true}) {
    SCOPED_TRACE(capturable ? "capturable, no warm-up" : "ordinary");
    OptRun r = make_run(c, dev);
    r.opt->set_capturable(capturable);
    fill_grads(r, 0, 1.0, false);
    const std::vector<float> before = host_f32(r.params[0].value());
    CudaGraph graph;
    graph.capture_begin(dev);
    try {
      r.opt->step();
      ADD_FAILURE() << "the step was not refused";
    } catch (const trainrt::Error& e) {
      EXPECT_NE(std::string(e.what()).find("CUDA graph"), std::string::npos) << e.what();
    }
    try {
      graph.capture_end();  // an empty capture
    } catch (const trainrt::Error&) {
    }
    EXPECT_TRUE(same_bits(host_f32(r.params[0].value()), before));
    EXPECT_EQ(r.opt->step_count(r.params[0]), 0);
    r.opt->step();  // outside the capture it runs
    EXPECT_EQ(r.opt->step_count(r.params[0]), 1);
  }
}

// A step refused inside GradScaler::step (here: an lr changed during a capture) leaves the
// optimizer knowing it is not in a scaler step: after the capture's replay (its unscale_), a
// direct opt.step() is PyTorch's optimizer.step() on the unscaled grads, which it writes
// (with the scaler-step mark left set, the step would be a scaler step: grads left scaled,
// an inf skipping it).
TEST(CudaGraphCuda, AStepRefusedInsideScalerStepLeavesNoScalerStepBehind) {
  Device dev;
  CUDA_DEVICE_OR_SKIP(dev);
  Parameter p(f32_tensor({1.0f, 2.0f}, {2}, dev));
  trainrt::optim::SGD opt({p}, trainrt::optim::SGDOptions(0.5));
  opt.set_capturable(true);
  trainrt::GradScalerOptions so;
  so.init_scale = 4.0;
  trainrt::GradScaler scaler(so);
  p.set_grad(f32_tensor({4.0f, 8.0f}, {2}, dev));
  scaler.unscale_(opt);  // warm-up iteration: [1, 2] - 0.5 * [1, 2]
  ASSERT_TRUE(scaler.step(opt));
  scaler.update();
  ASSERT_EQ(host_f32(p.value()), (std::vector<float>{0.5f, 1.0f}));
  Tensor g = p.grad();
  g.copy_(f32_tensor({4.0f, std::numeric_limits<float>::infinity()}, {2}, dev));

  CudaGraph graph;
  graph.capture_begin(dev);
  scaler.unscale_(opt);
  opt.set_lr(0.25);
  expect_error([&] { scaler.step(opt); }, "the hyperparameters changed during a CUDA graph");
  opt.set_lr(0.5);
  graph.capture_end();
  graph.replay();  // the unscale_ and its inf check

  opt.step();  // direct: applies the unscaled grads, never skips
  EXPECT_FALSE(opt.last_step_skipped());
  const std::vector<float> v = host_f32(p.value()), gv = host_f32(p.grad());
  EXPECT_EQ(v[0], 0.0f);  // 0.5 - 0.5 * 1
  EXPECT_TRUE(std::isinf(v[1]) && v[1] < 0) << v[1];
  EXPECT_EQ(gv[0], 1.0f);  // unscaled in place, as PyTorch's unscale_ writes them
  EXPECT_EQ(opt.step_count(p), 2);
  scaler.update();  // reads the recorded inf: backs off
  EXPECT_EQ(scaler.get_scale(), 2.0);
}
// A data error that a kernel recorded before a capture (a class index out of range) is not
// lost when the read of the record inside the capture fails (a synchronisation cannot be
// captured): it surfaces at the next synchronize after the capture. For the CUDA module only
// (on a GPU and the emulator, ctest cuda_emulator_graphs): the simulated device runs the CPU
// kernels, which report such errors at once.
TEST(CudaDeferredErrors, ARecordFromBeforeACaptureSurfacesAfterIt) {
  Device dev;
  CUDA_DEVICE_OR_SKIP(dev);
  const Tensor logits = Tensor::from_vector(std::vector<float>(12, 0.25f), {4, 3}, dev);
  const Tensor bad = Tensor::from_vector(std::vector<std::int64_t>{0, 2, 7, 1}, {4}, dev);
  const std::string want = "cross_entropy: target 7 is out of bounds for 3 classes (row 2)";
  (void)trainrt::cross_entropy(logits, bad);  // deferred: the kernel records it
  CudaGraph graph;
  graph.capture_begin(dev);
  try {
    trainrt::synchronize(dev);
    ADD_FAILURE() << "a synchronize inside a capture did not fail";
  } catch (const trainrt::Error& e) {
    // the failed read, not the record
    EXPECT_EQ(std::string(e.what()).find("out of bounds"), std::string::npos) << e.what();
  }
  expect_error([&] { graph.capture_end(); }, "invalidated");
  expect_error([&] { trainrt::synchronize(dev); }, want);
  trainrt::synchronize(dev);  // read once: the record is clear again
  const Tensor good = Tensor::from_vector(std::vector<std::int64_t>{0, 2, 1, 1}, {4}, dev);
  EXPECT_NEAR(trainrt::cross_entropy(logits, good).loss.item(), std::log(3.0), 1e-6);
}

// What cannot be captured is refused with a clear Error before it changes anything (or
// allocates: what a real capture allocates becomes memory the graph owns). Runs on a GPU,
// and in CI on the fake host-memory device of ctest graph_capture_refusals, whose "capture"
// fails any host copy (as a real one does) and any allocation (which trainrt must refuse
// itself first).
TEST(CaptureRefusals, WhatCannotBeCapturedIsRefusedFirst) {
  Device dev;
  CUDA_DEVICE_OR_SKIP(dev);
  Parameter p(f32_tensor({1.0f, 2.0f, 3.0f}, {3}, dev));
  Parameter q(f32_tensor({1.0f, 2.0f, 3.0f}, {3}, dev));
  p.set_grad(f32_tensor({0.5f, 0.5f, 0.5f}, {3}, dev));
  q.set_grad(f32_tensor({0.5f, 0.5f, 0.5f}, {3}, dev));
  trainrt::optim::SGD ordinary({p}, trainrt::optim::SGDOptions(0.1).momentum(0.9));
  trainrt::optim::SGD capt({q}, trainrt::optim::SGDOptions(0.1).momentum(0.9));
  capt.set_capturable(true);
  trainrt::GradScaler scaler;
  const trainrt::StateDict sd = ordinary.state_dict();

  CudaGraph graph;
  graph.capture_begin(dev);
  EXPECT_TRUE(graph.capturing());
  expect_error([&] { graph.capture_begin(dev); }, "capturing already");
  expect_error([&] { ordinary.step(); }, "call set_capturable(true)");
  expect_error([&] { capt.step(); }, "the first capturable step");
  expect_error([&] { scaler.unscale_(capt); }, "the scaler's first use");
  expect_error([&] { trainrt::clip_grad_norm_(ordinary, 1.0); },
               "the first clip of an ordinary optimizer");
  expect_error([&] { trainrt::clip_grad_norm_(capt, 1.0); },
               "the first clip of a capturable optimizer");
  expect_error([&] { trainrt::clip_grad_norm_(capt, 1.0, 2.0, true); }, "error_if_nonfinite");
  expect_error([&] { ordinary.load_state_dict(sd); }, "load outside it");
  expect_error([&] { graph.replay(); }, "still being captured");
  graph.capture_end();
  EXPECT_FALSE(graph.capturing());
  ASSERT_TRUE(graph.captured());
  graph.replay();  // the graph recorded nothing

  // Nothing changed.
  EXPECT_EQ(host_f32(p.value()), (std::vector<float>{1.0f, 2.0f, 3.0f}));
  EXPECT_EQ(host_f32(q.value()), (std::vector<float>{1.0f, 2.0f, 3.0f}));
  for (auto* o : {&ordinary, &capt}) {
    const Parameter& x = o == &ordinary ? p : q;
    EXPECT_EQ(o->step_count(x), 0);
    EXPECT_FALSE(o->state(x, "momentum_buffer").defined());
    EXPECT_EQ(o->state_dict().tensors.size(), 0u);
  }
  EXPECT_EQ(scaler.get_scale(), 65536.0);
}

// ---- On the simulated device only (tests/fake_recording_backend.cpp) -----------------------
// Its counters of host transfers, and of calls recorded into and replayed from graphs.
struct SimCounters {
  std::int64_t h2d, d2h, recorded, replayed, frees;
};
using SimCountersFn = SimCounters (*)(int reset);

/// The simulated device's counter function, or null on any other device. The CUDA emulator
/// (tests/cuda_emu, the real CUDA module's code) counts the same things at the CUDA runtime
/// calls the module makes.
SimCountersFn simulated_counters() {
  for (const char* module : {
#ifdef TRAINRT_FAKE_RECORDING_MODULE
           TRAINRT_FAKE_RECORDING_MODULE,
#endif
#ifdef TRAINRT_CUDA_EMU_MODULE
           TRAINRT_CUDA_EMU_MODULE,
#endif
           static_cast<const char*>(nullptr)}) {
    if (module == nullptr) break;
    void* h = ::dlopen(module, RTLD_NOW | RTLD_NOLOAD);
    if (h != nullptr) return reinterpret_cast<SimCountersFn>(::dlsym(h, "trainrt_fake_counters"));
  }
  return nullptr;
}

#define SIMULATED_DEVICE_OR_SKIP(dev, counters)                               \
  do {                                                                        \
    CUDA_DEVICE_OR_SKIP(dev);                                                 \
    counters = simulated_counters();                                          \
    if (counters == nullptr) GTEST_SKIP() << "not the simulated CUDA device"; \
  } while (0)

// The host transfers of a warmed-up iteration, counted. An ordinary step uploads its scalars
// blocks (one copy for all its groups); with a GradScaler it also resets the grad scalars from
// the host and reads found_inf back: the one small copy by which the host learns of a
// skip. A capturable step makes no transfer; scaler.step(), run eagerly, still reads the
// skip flag once for its return value (inside a capture it returns true without reading),
// and with a scaler the step after one that made state reads once more, to learn whether
// that state stays (docs/DESIGN-NOTES.md, "Capturable steps and CUDA graphs").
TEST(SimulatedDevice, HostTransfersOfAWarmedUpIteration) {
  Device dev;
  SimCountersFn counters;
  SIMULATED_DEVICE_OR_SKIP(dev, counters);
  for (const Config& c : configs()) {
    for (bool capturable : {false, true}) {
      for (bool amp : {false, true}) {
        SCOPED_TRACE(std::string(c.name) + (capturable ? ", capturable" : ", ordinary") +
                     (amp ? ", scaler + clip" : ""));
        OptRun r = make_run(c, dev);
        r.opt->set_capturable(capturable);
        trainrt::GradScaler scaler;
        for (int k = 0; k < 6; ++k) {
          SCOPED_TRACE("iteration " + std::to_string(k));
          const bool inf = amp && k == 3;
          fill_grads(r, k, amp ? scaler.get_scale() : 1.0, inf);
          counters(1);
          bool stepped = true;
          if (amp) {
            scaler.unscale_(*r.opt);
            trainrt::clip_grad_norm_(*r.opt, 0.5);
            stepped = scaler.step(*r.opt);
            scaler.update();
          } else {
            r.opt->step();
          }
          const SimCounters n = counters(1);
          EXPECT_EQ(stepped, !inf);
          if (k == 0) continue;  // the first iteration makes and uploads everything
          if (capturable) {
            EXPECT_EQ(n.h2d, 0);
            EXPECT_EQ(n.d2h, amp ? (k == 1 ? 2 : 1) : 0);
          } else {
            EXPECT_EQ(n.h2d, amp ? 2 : 1);
            EXPECT_EQ(n.d2h, amp ? 1 : 0);
          }
        }
      }
    }
  }
}

// The refusals that need a warmed-up optimizer, which the fake host-memory device cannot
// reach: each is refused before it records or changes anything, and the capture still ends
// cleanly (a host copy would have invalidated it).
TEST(SimulatedDevice, RefusalsOfAWarmedUpOptimizer) {
  Device dev;
  SimCountersFn counters;
  SIMULATED_DEVICE_OR_SKIP(dev, counters);
  Parameter a(f32_tensor({1.0f, 2.0f, 3.0f}, {3}, dev));
  Parameter b(f32_tensor({4.0f, 5.0f}, {2}, dev));
  trainrt::optim::SGD opt({a, b}, trainrt::optim::SGDOptions(0.1).momentum(0.9));
  opt.set_capturable(true);
  trainrt::GradScaler scaler;
  // One step of each parameter, one grad at a time: the workspace holds one tensor.
  for (const Parameter& x : {a, b}) {
    x.set_grad(f32_tensor(std::vector<float>(x.value().numel(), 0.5f), x.value().shape(), dev));
    scaler.unscale_(opt);
    trainrt::clip_grad_norm_(opt, 1.0);
    scaler.step(opt);
    scaler.update();
    x.clear_grad();
  }
  a.set_grad(f32_tensor({0.5f, 0.5f, 0.5f}, {3}, dev));
  const std::vector<float> a0 = host_f32(a.value()), b0 = host_f32(b.value());
  const trainrt::StateDict sd0 = opt.state_dict();
  ASSERT_EQ(opt.step_count(a), 1);
  const Tensor gb = f32_tensor({0.5f, 0.5f}, {2}, dev);  // made outside the capture

  counters(1);
  CudaGraph graph;
  graph.capture_begin(dev);
  opt.set_lr(0.05);
  expect_error([&] { opt.step(); }, "the hyperparameters changed during a CUDA graph capture");
  opt.set_lr(0.1);
  b.set_grad(gb);
  expect_error([&] { opt.step(); }, "a step with more grads than any before (a larger workspace)");
  b.clear_grad();
  for (const char* read : {"step_count", "state_dict", "last_step_skipped", "set_capturable"}) {
    SCOPED_TRACE(read);
    expect_error(
        [&] {
          const std::string r = read;
          if (r == "step_count") (void)opt.step_count(a);
          if (r == "state_dict") (void)opt.state_dict();
          if (r == "last_step_skipped") (void)opt.last_step_skipped();
          if (r == "set_capturable") opt.set_capturable(false);
        },
        "reads from the device");
  }
  expect_error([&] { opt.load_state_dict(sd0); }, "load outside it");
  a.clear_grad();
  expect_error([&] { trainrt::clip_grad_norm_(opt, 1.0); }, "no parameter has a grad");
  graph.capture_end();  // throws if any refused call had tried a host copy
  EXPECT_TRUE(graph.captured());
  EXPECT_EQ(counters(1).recorded, 0);
  graph.replay();

  EXPECT_TRUE(opt.capturable());
  EXPECT_EQ(opt.step_count(a), 1);
  EXPECT_EQ(opt.step_count(b), 1);
  EXPECT_TRUE(same_bits(host_f32(a.value()), a0));
  EXPECT_TRUE(same_bits(host_f32(b.value()), b0));
  const trainrt::StateDict sd1 = opt.state_dict();
  ASSERT_EQ(sd1.tensors.size(), sd0.tensors.size());
  for (const auto& kv : sd0.tensors) {
    ASSERT_TRUE(sd1.tensors.count(kv.first)) << kv.first;
    EXPECT_TRUE(same_bits(host_f32(kv.second), host_f32(sd1.tensors.at(kv.first)))) << kv.first;
  }
  // Outside the capture the same calls run.
  a.set_grad(f32_tensor({0.5f, 0.5f, 0.5f}, {3}, dev));
  b.set_grad(f32_tensor({0.5f, 0.5f}, {2}, dev));
  opt.set_lr(0.05);
  opt.step();
  EXPECT_EQ(opt.step_count(a), 2);
  EXPECT_EQ(opt.step_count(b), 2);
}

// A refused step leaves last_step_skipped() as the last step that ran left it.
TEST(SimulatedDevice, ARefusedStepLeavesLastStepSkipped) {
  Device dev;
  SimCountersFn counters;
  SIMULATED_DEVICE_OR_SKIP(dev, counters);
  for (bool capturable : {false, true}) {
    SCOPED_TRACE(capturable ? "capturable" : "ordinary");
    Parameter p(f32_tensor({1.0f, 2.0f}, {2}, dev));
    trainrt::optim::Adam opt({p}, trainrt::optim::AdamOptions(0.1));
    opt.set_capturable(capturable);
    trainrt::GradScaler scaler;
    p.set_grad(f32_tensor({1.0f, std::numeric_limits<float>::infinity()}, {2}, dev));
    EXPECT_FALSE(scaler.step(opt));
    scaler.update();
    ASSERT_TRUE(opt.last_step_skipped());
    CudaGraph graph;
    graph.capture_begin(dev);
    // ordinary: no step can be captured; capturable: a changed lr would need an upload
    if (capturable) opt.set_lr(0.05);
    expect_error([&] { opt.step(); }, "CUDA graph");
    graph.capture_end();
    EXPECT_TRUE(opt.last_step_skipped());
    EXPECT_EQ(opt.step_count(p), 0);
  }
}

/// On the simulated device: p = [1, 2] with grad [1, 1], and a capturable SGD (lr 0.5) over
/// it that stepped once.
class SimulatedDeviceSgd : public ::testing::Test {
 protected:
  void SetUp() override {
    SIMULATED_DEVICE_OR_SKIP(dev, counters);
    p = Parameter(f32_tensor({1.0f, 2.0f}, {2}, dev));
    opt = std::make_unique<trainrt::optim::SGD>(std::vector<Parameter>{p},
                                                trainrt::optim::SGDOptions(0.5));
    opt->set_capturable(true);
    p.set_grad(f32_tensor({1.0f, 1.0f}, {2}, dev));
    opt->step();
  }
  Device dev;
  SimCountersFn counters = nullptr;
  Parameter p;
  std::unique_ptr<trainrt::optim::SGD> opt;
};

// A call that the core does not check (Tensor::to_vector(), a host copy) fails in the backend
// during a capture, which invalidates it, as on CUDA: capture_end then throws and leaves no
// graph, and the next capture works.
TEST_F(SimulatedDeviceSgd, AnInvalidatedCaptureEndsWithAnError) {
  trainrt::optim::SGD& opt = *this->opt;
  CudaGraph graph;
  graph.capture_begin(dev);
  opt.step();  // recorded
  EXPECT_THROW((void)p.value().to_vector<float>(), trainrt::Error);
  expect_error([&] { graph.capture_end(); }, "invalidated");
  EXPECT_FALSE(graph.capturing());
  EXPECT_FALSE(graph.captured());
  expect_error([&] { graph.replay(); }, "nothing was captured");
  EXPECT_EQ(host_f32(p.value()), (std::vector<float>{0.5f, 1.5f}));  // only the warm-up ran
  graph.capture_begin(dev);
  opt.step();
  graph.capture_end();
  graph.replay();
  graph.replay();
  EXPECT_EQ(host_f32(p.value()), (std::vector<float>{-0.5f, 0.5f}));
  EXPECT_EQ(opt.step_count(p), 3);
}

// A tensor that dies during a capture (here a grad replaced inside it) is freed when the
// capture ends, not into the capture: on CUDA that free fails and invalidates the capture, and
// so it does on the simulated device.
TEST_F(SimulatedDeviceSgd, TensorsThatDieDuringACaptureAreFreedAfterIt) {
  trainrt::optim::SGD& opt = *this->opt;
  Parameter unused(f32_tensor({3.0f}, {1}, dev));
  unused.set_grad(f32_tensor({1.0f}, {1}, dev));
  CudaGraph graph;
  counters(1);
  graph.capture_begin(dev);
  opt.step();
  unused.clear_grad();  // the grad's last handle: its block dies inside the capture
  { const Tensor another_handle = p.value(); }  // not the last handle: nothing dies
  EXPECT_EQ(counters(0).frees, 0);
  graph.capture_end();  // throws if the free had reached the capture
  EXPECT_EQ(counters(1).frees, 1);
  graph.replay();
  EXPECT_EQ(host_f32(p.value()), (std::vector<float>{0.0f, 1.0f}));
  EXPECT_FALSE(unused.has_grad());
}

// A block allocated during a capture that dies in it is freed at once, into the capture, as
// CUDA allows (the graph owns that memory); a block from before the capture that dies in it
// waits for the capture's end. For the CUDA module (a GPU, and the emulator, which also counts
// the frees: ctest cuda_emulator_graphs); the simulated device cannot allocate in a capture.
TEST(CudaCaptureMemory, OnlyBlocksFromBeforeACaptureWaitForItsEnd) {
  Device dev;
  CUDA_DEVICE_OR_SKIP(dev);
  const SimCountersFn counters = simulated_counters();  // null on a GPU
  auto frees = [&] { return counters != nullptr ? counters(0).frees : std::int64_t{-1}; };
  // 1 where the frees are counted (the emulator), 0 on a GPU (the count checks hold trivially)
  const std::int64_t counted = counters != nullptr ? 1 : 0;
  Tensor old_block = Tensor::zeros({64}, trainrt::DType::f32, dev);
  Tensor kept;
  trainrt::synchronize(dev);
  const std::int64_t at_start = frees();
  CudaGraph graph;
  graph.capture_begin(dev);
  {
    const Tensor scratch = Tensor::zeros({256}, trainrt::DType::f32, dev);  // dies here
  }
  EXPECT_EQ(counted * (frees() - at_start), counted * 1)
      << "the capture's own block is freed at once";
  kept = Tensor::zeros({8}, trainrt::DType::f32, dev);  // outlives the capture
  old_block = Tensor();                                 // from before the capture: waits
  EXPECT_EQ(counted * (frees() - at_start), counted * 1);
  graph.capture_end();  // throws if a free had reached the capture wrongly
  EXPECT_EQ(counted * (frees() - at_start), counted * 2) << "the old block is freed at the end";
  graph.replay();
  graph.replay();
  trainrt::synchronize(dev);
  EXPECT_EQ(kept.to_vector<float>(), std::vector<float>(8, 0.0f));
}

// The graph handle: moves, capture again, reset, a graph destroyed while capturing; and a
// second capture_begin on a capturing device, which fails without ending the first capture
// or releasing the frees it defers.
TEST_F(SimulatedDeviceSgd, GraphsMoveCaptureAgainAndReset) {
  trainrt::optim::SGD& opt = *this->opt;
  auto value = [&] { return host_f32(p.value()); };
  CudaGraph a;
  a.capture_begin(dev);
  opt.step();
  a.capture_end();
  a.replay();
  EXPECT_EQ(value(), (std::vector<float>{0.0f, 1.0f}));
  CudaGraph b(std::move(a));
  EXPECT_FALSE(a.captured());
  ASSERT_TRUE(b.captured());
  expect_error([&] { a.replay(); }, "nothing was captured");
  b.replay();
  EXPECT_EQ(value(), (std::vector<float>{-0.5f, 0.5f}));
  a = std::move(b);
  EXPECT_FALSE(b.captured());
  a.replay();
  EXPECT_EQ(value(), (std::vector<float>{-1.0f, 0.0f}));
  a.capture_begin(dev);  // captures again: the new graph replaces the old at capture_end
  opt.step();
  a.capture_end();
  a.replay();
  EXPECT_EQ(value(), (std::vector<float>{-1.5f, -0.5f}));
  a.reset();
  EXPECT_FALSE(a.captured());
  expect_error([&] { a.replay(); }, "nothing was captured");
  {
    CudaGraph c;
    c.capture_begin(dev);
    opt.step();  // recorded, never run: c dies capturing
  }
  EXPECT_EQ(value(), (std::vector<float>{-1.5f, -0.5f}));
  EXPECT_EQ(opt.step_count(p), 5);

  Tensor doomed = Tensor::zeros({4}, trainrt::DType::f32, dev);
  counters(1);
  CudaGraph d, e;
  d.capture_begin(dev);
  doomed = Tensor();  // from before the capture: its free waits
  EXPECT_THROW(e.capture_begin(dev), trainrt::Error);
  EXPECT_FALSE(e.capturing());
  EXPECT_TRUE(d.capturing());
  EXPECT_EQ(counters(0).frees, 0);
  opt.step();
  d.capture_end();
  EXPECT_EQ(counters(0).frees, 1);
  d.replay();
  EXPECT_EQ(value(), (std::vector<float>{-2.0f, -1.0f}));
}

}  // namespace
