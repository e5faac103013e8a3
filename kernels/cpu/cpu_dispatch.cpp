// Picks the CPU kernel build for the running processor: x86-64-v4 (AVX-512), x86-64-v3
// (AVX2 + FMA) or the baseline, chosen once. The default build thereby runs on any x86-64
// and still uses the widest vectors this machine has.
#include "cpu_dispatch.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include "cpu_kernels.h"

TRAINRT_DECLARE_CPU_KERNELS(kern)
#if defined(TRAINRT_CPU_MULTI_ISA)
TRAINRT_DECLARE_CPU_KERNELS(kern_v3)
TRAINRT_DECLARE_CPU_KERNELS(kern_v4)
#endif

namespace trainrt {
namespace cpu {
namespace {

CpuKernels make(const char* isa, decltype(CpuKernels::cast) c,
                decltype(CpuKernels::softmax_forward) sf, decltype(CpuKernels::softmax_backward) sb,
                decltype(CpuKernels::cross_entropy) ce, decltype(CpuKernels::pointwise_loss) pl) {
  CpuKernels k;
  k.isa = isa;
  k.cast = c;
  k.softmax_forward = sf;
  k.softmax_backward = sb;
  k.cross_entropy = ce;
  k.pointwise_loss = pl;
  return k;
}

CpuKernels with_optim(CpuKernels k, decltype(CpuKernels::optimizer_step) step,
                      decltype(CpuKernels::multi_tensor_norm) norm,
                      decltype(CpuKernels::multi_tensor_scale) scale,
                      decltype(CpuKernels::amp) amp) {
  k.optimizer_step = step;
  k.multi_tensor_norm = norm;
  k.multi_tensor_scale = scale;
  k.amp = amp;
  return k;
}

CpuKernels with_nn(CpuKernels k, decltype(CpuKernels::nn_pointwise) pw,
                   decltype(CpuKernels::bias) bias) {
  k.nn_pointwise = pw;
  k.bias = bias;
  return k;
}

#define TRAINRT_CPU_TABLE(isa, ns)                                                                 \
  with_nn(with_optim(make(isa, &ns::cpu_cast, &ns::cpu_softmax_forward, &ns::cpu_softmax_backward, \
                          &ns::cpu_cross_entropy, &ns::cpu_pointwise_loss),                        \
                     &ns::cpu_optimizer_step, &ns::cpu_multi_tensor_norm,                          \
                     &ns::cpu_multi_tensor_scale, &ns::cpu_amp),                                   \
          &ns::cpu_nn_pointwise, &ns::cpu_bias)

bool supports_v4() {
#if defined(TRAINRT_CPU_MULTI_ISA) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool supports_v3() {
#if defined(TRAINRT_CPU_MULTI_ISA) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("bmi2");
#else
  return false;
#endif
}

CpuKernels select() {
  // TRAINRT_CPU_ISA=baseline|x86-64-v3|x86-64-v4 caps the level (tests run every build this
  // way); a level the CPU or the build lacks falls back to the next lower one.
  int cap = 4;
  if (const char* e = std::getenv("TRAINRT_CPU_ISA")) {
    if (std::strcmp(e, "baseline") == 0) cap = 1;
    if (std::strcmp(e, "x86-64-v3") == 0) cap = 3;
  }
#if defined(TRAINRT_CPU_MULTI_ISA)
  if (cap >= 4 && supports_v4()) return TRAINRT_CPU_TABLE("x86-64-v4", trainrt::kern_v4);
  if (cap >= 3 && supports_v3()) return TRAINRT_CPU_TABLE("x86-64-v3", trainrt::kern_v3);
#endif
  (void)cap;
  return TRAINRT_CPU_TABLE("baseline", trainrt::kern);
}

}  // namespace

const CpuKernels& kernels() {
  static const CpuKernels k = select();
  return k;
}

namespace {

struct PrefetchChoice {
  bool on;
  std::string reason;
};

PrefetchChoice choose_prefetch() {
  std::string ignored;
  if (const char* e = std::getenv("TRAINRT_CPU_PREFETCH")) {
    if (std::strcmp(e, "on") == 0 || std::strcmp(e, "1") == 0)
      return {true, "software (TRAINRT_CPU_PREFETCH=on)"};
    if (std::strcmp(e, "off") == 0 || std::strcmp(e, "0") == 0)
      return {false, "hardware only (TRAINRT_CPU_PREFETCH=off)"};
    ignored = std::string("; TRAINRT_CPU_PREFETCH=") + e + " ignored: expected on, off, 1 or 0";
  }
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_is("intel")) return {true, "software (Intel CPU" + ignored + ")"};
  if (__builtin_cpu_is("amd")) return {false, "hardware only (AMD CPU" + ignored + ")"};
#endif
  return {false, "hardware only (not an Intel CPU" + ignored + ")"};
}

const PrefetchChoice& prefetch_choice() {
  static const PrefetchChoice c = choose_prefetch();
  return c;
}

}  // namespace

bool software_prefetch() { return prefetch_choice().on; }

const char* software_prefetch_reason() { return prefetch_choice().reason.c_str(); }

}  // namespace cpu
}  // namespace trainrt
