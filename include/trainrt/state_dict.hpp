// StateDict: the in-memory snapshot of an optimizer or GradScaler (named tensors, numbers and
// strings). Keys are dotted paths, e.g. "state.3.exp_avg", "param_groups.0.lr". Numbers are
// doubles (step counts are exact up to 2^53). Tensors are deep copies on the owner's device.
#pragma once

#include <map>
#include <string>

#include "trainrt/tensor.hpp"

namespace trainrt {

struct StateDict {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, double> scalars;
  std::map<std::string, std::string> strings;

  bool empty() const { return tensors.empty() && scalars.empty() && strings.empty(); }
};

}  // namespace trainrt
