// TrainerConfig: JSON parsing (nlohmann-json, private) and validation.
#include <sys/stat.h>

#include <fmt/format.h>
#include <cerrno>
#include <cstring>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "../json_checks.hpp"
#include "trainrt/error.hpp"
#include "trainrt/trainer.hpp"

namespace trainrt {
namespace {

using json = nlohmann::json;

[[noreturn]] void bad(const std::string& msg) { throw Error("TrainerConfig: " + msg); }

// The typed reads shared with the command line's config parser (json_checks.hpp).
double get_number(const json& j, const char* key) {
  return detail::json_number(j, "TrainerConfig: ", key);
}
std::int64_t get_int(const json& j, const char* key) {
  return detail::json_int(j, "TrainerConfig: ", key);
}
std::string get_string(const json& j, const char* key) {
  return detail::json_string(j, "TrainerConfig: ", key);
}

bool one_of(const std::string& v, std::initializer_list<const char*> options) {
  return std::any_of(options.begin(), options.end(), [&](const char* o) { return v == o; });
}

}  // namespace

TrainerConfig TrainerConfig::from_json(const std::string& text) {
  json j;
  const detail::JsonShape shape = detail::check_json_shape(text, detail::kMaxJsonDepth, true);
  if (!shape.error.empty()) bad("invalid JSON: " + shape.error);
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    bad(std::string("invalid JSON: ") + e.what());
  }
  // nlohmann keeps the last of two equal keys: {"lr": 0.1, "lr": 5} was lr 5, silently.
  if (!shape.duplicate.empty()) bad(fmt::format("the key \"{}\" is given twice", shape.duplicate));
  if (!j.is_object()) bad("the JSON must be an object");
  TrainerConfig c;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    const json& v = it.value();
    if (k == "optimizer")
      c.optimizer = get_string(v, "optimizer");
    else if (k == "lr")
      c.lr = get_number(v, "lr");
    else if (k == "weight_decay")
      c.weight_decay = get_number(v, "weight_decay");
    else if (k == "momentum")
      c.momentum = get_number(v, "momentum");
    else if (k == "beta1")
      c.beta1 = get_number(v, "beta1");
    else if (k == "beta2")
      c.beta2 = get_number(v, "beta2");
    else if (k == "betas") {
      if (!v.is_array() || v.size() != 2) bad("\"betas\" must be an array of two numbers");
      c.beta1 = get_number(v[0], "betas");
      c.beta2 = get_number(v[1], "betas");
    } else if (k == "loss")
      c.loss = get_string(v, "loss");
    else if (k == "label_smoothing")
      c.label_smoothing = get_number(v, "label_smoothing");
    else if (k == "huber_delta")
      c.huber_delta = get_number(v, "huber_delta");
    else if (k == "smooth_l1_beta")
      c.smooth_l1_beta = get_number(v, "smooth_l1_beta");
    else if (k == "scheduler")
      c.scheduler = get_string(v, "scheduler");
    else if (k == "step_size")
      c.step_size = get_int(v, "step_size");
    else if (k == "milestones") {
      if (!v.is_array()) bad("\"milestones\" must be an array of integers");
      c.milestones.clear();
      for (const auto& m : v) c.milestones.push_back(get_int(m, "milestones"));
    } else if (k == "gamma")
      c.gamma = get_number(v, "gamma");
    else if (k == "eta_min")
      c.eta_min = get_number(v, "eta_min");
    else if (k == "max_lr")
      c.max_lr = get_number(v, "max_lr");
    else if (k == "patience")
      c.patience = get_int(v, "patience");
    else if (k == "grad_clip")
      c.grad_clip = get_number(v, "grad_clip");
    else if (k == "epochs")
      c.epochs = get_int(v, "epochs");
    else if (k == "batch_size")
      c.batch_size = get_int(v, "batch_size");
    else if (k == "amp")
      c.amp = get_string(v, "amp");
    else if (k == "grad_accumulation")
      c.grad_accumulation = get_int(v, "grad_accumulation");
    else if (k == "seed") {
      if (v.is_number_unsigned()) {  // any 64-bit seed (to_json writes it so)
        c.seed = v.get<std::uint64_t>();
      } else {
        const std::int64_t s = get_int(v, "seed");
        if (s < 0) bad("\"seed\" must be >= 0");
        c.seed = static_cast<std::uint64_t>(s);
      }
    } else if (k == "device")
      c.device = get_string(v, "device");
    else if (k == "output_dir")
      c.output_dir = get_string(v, "output_dir");
    else if (k == "max_steps")
      c.max_steps = get_int(v, "max_steps");
    else
      bad(fmt::format("unknown key \"{}\"", k));
  }
  c.validate();
  return c;
}

TrainerConfig TrainerConfig::from_json_file(const std::string& path) {
  // A regular file only (a FIFO blocked, /dev/zero read until memory ran out, a directory
  // read as empty), at most 64 MiB.
  struct stat st;
  if (::stat(path.c_str(), &st) != 0)
    throw Error("TrainerConfig: cannot open " + path + ": " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) throw Error("TrainerConfig: " + path + " is not a regular file");
  if (st.st_size > (std::int64_t{64} << 20))
    throw Error(fmt::format("TrainerConfig: {} is {} bytes; a config is at most 64 MiB", path,
                            static_cast<std::int64_t>(st.st_size)));
  std::ifstream in(path);
  if (!in) throw Error("TrainerConfig: cannot open " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return from_json(ss.str());
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + " (in " + path + ")");
  }
}

std::string TrainerConfig::to_json() const {
  json j = {{"optimizer", optimizer},
            {"lr", lr},
            {"weight_decay", weight_decay},
            {"momentum", momentum},
            {"betas", {beta1, beta2}},
            {"loss", loss},
            {"label_smoothing", label_smoothing},
            {"huber_delta", huber_delta},
            {"smooth_l1_beta", smooth_l1_beta},
            {"scheduler", scheduler},
            {"step_size", step_size},
            {"milestones", milestones},
            {"gamma", gamma},
            {"eta_min", eta_min},
            {"max_lr", max_lr},
            {"patience", patience},
            {"grad_clip", grad_clip},
            {"epochs", epochs},
            {"batch_size", batch_size},
            {"amp", amp},
            {"grad_accumulation", grad_accumulation},
            {"seed", seed},
            {"device", device},
            {"output_dir", output_dir},
            {"max_steps", max_steps}};
  return j.dump(2);
}

void TrainerConfig::validate() const {
  if (!one_of(optimizer, {"sgd", "adam", "adamw", "rmsprop", "adagrad", "radam", "lamb"}))
    bad(fmt::format("unknown optimizer \"{}\" (sgd, adam, adamw, rmsprop, adagrad, radam, lamb)",
                    optimizer));
  if (!(lr > 0.0) || !std::isfinite(lr)) bad(fmt::format("lr must be > 0, got {}", lr));
  if (!std::isfinite(weight_decay)) bad("weight_decay must be finite");
  if (!(momentum >= 0.0 && momentum < 1.0))
    bad(fmt::format("momentum must be in [0, 1), got {}", momentum));
  if (!(beta1 >= 0.0 && beta1 < 1.0) || !(beta2 >= 0.0 && beta2 < 1.0))
    bad(fmt::format("betas must be in [0, 1), got [{}, {}]", beta1, beta2));
  if (!one_of(loss, {"cross_entropy", "mse", "l1", "huber", "smooth_l1"}))
    bad(fmt::format("unknown loss \"{}\" (cross_entropy, mse, l1, huber, smooth_l1)", loss));
  if (!(label_smoothing >= 0.0 && label_smoothing <= 1.0)) bad("label_smoothing must be in [0, 1]");
  // Checked whatever the loss, as the other keys are: a bad value is a mistake either way.
  if (!(huber_delta > 0.0) || !std::isfinite(huber_delta))
    bad(fmt::format("huber_delta must be a finite number > 0, got {}", huber_delta));
  if (!(smooth_l1_beta >= 0.0) || !std::isfinite(smooth_l1_beta))
    bad(fmt::format("smooth_l1_beta must be a finite number >= 0, got {}", smooth_l1_beta));
  if (!one_of(scheduler, {"none", "step", "multistep", "exponential", "cosine", "linear",
                          "onecycle", "plateau"}))
    bad(
        fmt::format("unknown scheduler \"{}\" (none, step, multistep, exponential, cosine, "
                    "linear, onecycle, plateau)",
                    scheduler));
  // Counts of epochs, steps and examples: at most 2^31 - 1, so that products of two of them
  // (step_size * steps per epoch, epochs * steps per epoch) stay far inside 64 bits.
  constexpr std::int64_t kMaxCount = 2147483647;
  auto at_most = [&](std::int64_t v, const char* what) {
    if (v > kMaxCount) bad(fmt::format("{} must be at most {}, got {}", what, kMaxCount, v));
  };
  at_most(step_size, "step_size");
  at_most(epochs, "epochs");
  at_most(batch_size, "batch_size");
  at_most(grad_accumulation, "grad_accumulation");
  at_most(patience, "patience");
  for (std::size_t i = 0; i < milestones.size(); ++i) {
    if (milestones[i] < 0 || milestones[i] > kMaxCount ||
        (i > 0 && milestones[i] <= milestones[i - 1])) {
      bad(fmt::format("milestones must be increasing epochs in [0, {}], got {}", kMaxCount,
                      milestones[i]));
    }
  }
  if (step_size < 1) bad("step_size must be >= 1");
  if (!(gamma > 0.0)) bad("gamma must be > 0");
  if (max_lr < 0.0) bad("max_lr must be >= 0");
  if (patience < 0) bad("patience must be >= 0");
  if (!(grad_clip >= 0.0)) bad(fmt::format("grad_clip must be >= 0, got {}", grad_clip));
  if (epochs < 1) bad(fmt::format("epochs must be >= 1, got {}", epochs));
  if (batch_size < 1) bad(fmt::format("batch_size must be >= 1, got {}", batch_size));
  if (!one_of(amp, {"none", "fp16", "bf16"}))
    bad(fmt::format("amp must be none, fp16 or bf16, got \"{}\"", amp));
  if (grad_accumulation < 1) bad("grad_accumulation must be >= 1");
  if (max_steps < 0) bad("max_steps must be >= 0");
  if (device != "auto") {
    try {
      (void)Device::parse(device);
    } catch (const std::exception& e) {
      bad(fmt::format("bad device \"{}\": {}", device, e.what()));
    }
  }
}

Device TrainerConfig::resolved_device() const {
  if (device == "auto") return Device::best();
  return Device::parse(device);
}

}  // namespace trainrt
