// Trainer: the training loop, metrics, checkpoint save/resume.
#include "trainrt/trainer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "../internal.hpp"
#include "../json_checks.hpp"
#include "trainrt/checkpoint.hpp"
#include "trainrt/clip.hpp"
#include "trainrt/error.hpp"
#include "trainrt/losses.hpp"

namespace trainrt {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

json num(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }
double from_num(const json& j) {
  return j.is_number() ? j.get<double>() : std::numeric_limits<double>::quiet_NaN();
}

json metrics_json(const EpochMetrics& m) {
  return json{{"epoch", m.epoch},
              {"global_step", m.global_step},
              {"train_loss", num(m.train_loss)},
              {"train_acc", num(m.train_acc)},
              {"val_loss", num(m.val_loss)},
              {"val_acc", num(m.val_acc)},
              {"lr", num(m.lr)},
              {"grad_norm", num(m.grad_norm)},
              {"grad_norm_clipped", num(m.grad_norm_clipped)},
              {"samples_per_sec", num(m.samples_per_sec)},
              {"seconds", num(m.seconds)},
              {"skipped_steps", m.skipped_steps}};
}

EpochMetrics metrics_from_json(const json& j) {
  EpochMetrics m;
  m.epoch = j.at("epoch").get<std::int64_t>();
  m.global_step = j.at("global_step").get<std::int64_t>();
  m.train_loss = from_num(j.at("train_loss"));
  m.train_acc = from_num(j.at("train_acc"));
  m.val_loss = from_num(j.at("val_loss"));
  m.val_acc = from_num(j.at("val_acc"));
  m.lr = from_num(j.at("lr"));
  m.grad_norm = from_num(j.at("grad_norm"));
  m.grad_norm_clipped = from_num(j.at("grad_norm_clipped"));
  m.samples_per_sec = from_num(j.at("samples_per_sec"));
  m.seconds = from_num(j.at("seconds"));
  m.skipped_steps = j.at("skipped_steps").get<std::int64_t>();
  return m;
}

std::unique_ptr<optim::Optimizer> make_opt(const TrainerConfig& c, std::vector<Parameter> params) {
  const std::string& n = c.optimizer;
  std::vector<optim::ParamGroup> groups{optim::ParamGroup(std::move(params))};
  auto wd = [&](auto& o) {
    if (c.weight_decay >= 0.0) o.weight_decay(c.weight_decay);
  };
  if (n == "sgd") {
    optim::SGDOptions o(c.lr);
    o.momentum(c.momentum);
    wd(o);
    return std::make_unique<optim::SGD>(groups, o);
  }
  if (n == "adam") {
    optim::AdamOptions o(c.lr);
    o.betas(c.beta1, c.beta2);
    wd(o);
    return std::make_unique<optim::Adam>(groups, o);
  }
  if (n == "adamw") {
    optim::AdamWOptions o(c.lr);
    o.betas(c.beta1, c.beta2);
    wd(o);
    return std::make_unique<optim::AdamW>(groups, o);
  }
  if (n == "rmsprop") {
    optim::RMSpropOptions o(c.lr);
    o.momentum(c.momentum);
    wd(o);
    return std::make_unique<optim::RMSprop>(groups, o);
  }
  if (n == "adagrad") {
    optim::AdagradOptions o(c.lr);
    wd(o);
    return std::make_unique<optim::Adagrad>(groups, o);
  }
  if (n == "radam") {
    optim::RAdamOptions o(c.lr);
    o.betas(c.beta1, c.beta2);
    wd(o);
    return std::make_unique<optim::RAdam>(groups, o);
  }
  if (n == "lamb") {
    optim::LAMBOptions o(c.lr);
    o.betas(c.beta1, c.beta2);
    wd(o);
    return std::make_unique<optim::LAMB>(groups, o);
  }
  throw Error("Trainer: unknown optimizer " + n);
}

}  // namespace

// Running sums of an epoch (kept in the checkpoint so a mid-epoch resume reports the same).
struct Trainer::Accum {
  double loss_sum = 0, correct = 0, samples = 0, norm_sum = 0, norm_clip_sum = 0, steps = 0;
  double seconds = 0;
  StateDict to_state() const {
    StateDict s;
    s.scalars = {{"loss_sum", loss_sum},
                 {"correct", correct},
                 {"samples", samples},
                 {"norm_sum", norm_sum},
                 {"norm_clip_sum", norm_clip_sum},
                 {"steps", steps},
                 {"seconds", seconds}};
    return s;
  }
  void from_state(const StateDict& s) {
    auto g = [&](const char* k) {
      auto it = s.scalars.find(k);
      return it == s.scalars.end() ? 0.0 : it->second;
    };
    loss_sum = g("loss_sum");
    correct = g("correct");
    samples = g("samples");
    norm_sum = g("norm_sum");
    norm_clip_sum = g("norm_clip_sum");
    steps = g("steps");
    seconds = g("seconds");
  }
};

double EpochMetrics::get(const std::string& name) const {
  if (name == "train_loss" || name == "loss") return train_loss;
  if (name == "train_acc" || name == "acc" || name == "accuracy") return train_acc;
  if (name == "val_loss") return val_loss;
  if (name == "val_acc" || name == "val_accuracy") return val_acc;
  if (name == "lr") return lr;
  if (name == "grad_norm") return grad_norm;
  if (name == "grad_norm_clipped") return grad_norm_clipped;
  if (name == "samples_per_sec") return samples_per_sec;
  if (name == "seconds") return seconds;
  if (name == "skipped_steps") return static_cast<double>(skipped_steps);
  if (name == "epoch") return static_cast<double>(epoch);
  if (name == "global_step") return static_cast<double>(global_step);
  return std::numeric_limits<double>::quiet_NaN();
}

const std::vector<std::string>& EpochMetrics::names() {
  static const auto* n = new std::vector<std::string>{"train_loss",
                                                      "loss",
                                                      "train_acc",
                                                      "acc",
                                                      "accuracy",
                                                      "val_loss",
                                                      "val_acc",
                                                      "val_accuracy",
                                                      "lr",
                                                      "grad_norm",
                                                      "grad_norm_clipped",
                                                      "samples_per_sec",
                                                      "seconds",
                                                      "skipped_steps",
                                                      "epoch",
                                                      "global_step"};
  return *n;
}

Callback::~Callback() = default;

Trainer::Trainer(std::shared_ptr<nn::Module> model, TrainerConfig config)
    : model_(std::move(model)), config_(std::move(config)) {
  if (!model_) throw Error("Trainer: model is null");
  config_.validate();
  device_ = config_.resolved_device();
  model_->to(device_);
  model_->set_input_grad(false);  // the input is the data: no dx for the first layer
  auto params = model_->parameters();
  if (params.empty()) throw Error("Trainer: the model has no parameters");
  if (config_.amp != "none") {
    compute_dtype_ = config_.amp == "fp16" ? DType::f16 : DType::bf16;
    for (const auto& [name, p] : model_->named_parameters()) {
      if (p.value().dtype() != DType::f32)
        throw Error(fmt::format(
            "Trainer: amp {} needs f32 parameters (the masters of the {} model copies); {} is {}",
            config_.amp, dtype_name(compute_dtype_), name, dtype_name(p.value().dtype())));
    }
    // Linear adds its bias in f32 from the master: the bias gets no model copy. Every other
    // parameter (Linear weights, parameters of custom modules) gets one.
    std::vector<Parameter> f32_only;
    std::vector<const nn::Module*> stack{model_.get()};
    while (!stack.empty()) {
      const nn::Module* m = stack.back();
      stack.pop_back();
      if (const auto* lin = dynamic_cast<const nn::Linear*>(m)) {
        if (lin->bias().defined()) f32_only.push_back(lin->bias());
      }
      for (const auto& c : m->children()) stack.push_back(c.second.get());
    }
    for (const auto& p : params) {
      if (std::find(f32_only.begin(), f32_only.end(), p) != f32_only.end()) continue;
      p.set_model_copy(Tensor::empty(p.value().shape(), compute_dtype_, device_));
    }
  }
  optimizer_ = make_opt(config_, params);
  if (config_.amp == "fp16") scaler_ = std::make_unique<GradScaler>();
}

void Trainer::sync_model_copies() {
  for (const auto& p : model_->parameters()) {
    const Tensor copy = p.model_copy();
    if (copy.defined()) p.set_model_copy(copy);  // refills it from the master
  }
}

Tensor Trainer::prepare_input(const Tensor& features) const {
  Tensor x = features;
  const bool cast =
      compute_dtype_ != DType::f32 && is_floating(x.dtype()) && x.dtype() != compute_dtype_;
  // Cast before a host-to-device copy (half the bytes), after it when already there.
  if (cast && x.device() != device_) x = x.to(compute_dtype_);
  if (x.device() != device_) x = x.to(device_);
  if (cast && x.dtype() != compute_dtype_) x = x.to(compute_dtype_);
  return x;
}

Trainer::~Trainer() = default;

void Trainer::add_callback(std::shared_ptr<Callback> callback) {
  if (!callback) throw Error("Trainer::add_callback: null callback");
  const std::string key = callback->state_key();
  if (!key.empty()) {
    for (const auto& cb : callbacks_) {
      if (cb->state_key() == key)
        throw Error("Trainer::add_callback: two callbacks with the state key '" + key + "'");
    }
    auto it = pending_callbacks_.find(key);  // its state from an earlier load()
    if (it != pending_callbacks_.end()) {
      callback->load_state_dict(it->second);
      pending_callbacks_.erase(it);
    }
  }
  callbacks_.push_back(std::move(callback));
}

double Trainer::current_lr() const { return optimizer_->lr(0); }

void Trainer::build_scheduler(std::int64_t spe) {
  const TrainerConfig& c = config_;
  const std::int64_t total = std::max<std::int64_t>(1, spe * c.epochs);
  const std::string& s = c.scheduler;
  if (s == "none") return;
  if (s == "step")
    scheduler_ = std::make_unique<optim::StepLR>(*optimizer_, c.step_size * spe, c.gamma);
  else if (s == "multistep") {
    std::vector<std::int64_t> ms;
    for (auto m : c.milestones) ms.push_back(m * spe);
    scheduler_ = std::make_unique<optim::MultiStepLR>(*optimizer_, ms, c.gamma);
  } else if (s == "exponential")
    scheduler_ = std::make_unique<optim::ExponentialLR>(*optimizer_, c.gamma);
  else if (s == "cosine")
    scheduler_ = std::make_unique<optim::CosineAnnealingLR>(*optimizer_, total, c.eta_min);
  else if (s == "linear")
    scheduler_ = std::make_unique<optim::LinearLR>(*optimizer_, 1.0, 0.0, total);
  else if (s == "onecycle") {
    optim::OneCycleLROptions o(c.max_lr > 0 ? c.max_lr : c.lr);
    o.total_steps(total);
    // Momentum cycling only where the optimizer has a momentum / beta1 to cycle.
    o.cycle_momentum(c.optimizer != "adagrad" && !(c.optimizer == "sgd" && c.momentum == 0.0) &&
                     !(c.optimizer == "rmsprop" && c.momentum == 0.0));
    scheduler_ = std::make_unique<optim::OneCycleLR>(*optimizer_, o);
  } else if (s == "plateau") {
    optim::ReduceLROnPlateauOptions o;
    o.factor(c.gamma).patience(c.patience);
    scheduler_ = std::make_unique<optim::ReduceLROnPlateau>(*optimizer_, o);
  }
  steps_per_epoch_ = spe;
}

double Trainer::compute_loss(const Tensor& out, const Tensor& target, bool grad, double grad_scale,
                             Tensor* grad_out, double* correct) {
  LossResult r;
  const std::string& l = config_.loss;
  Tensor scale_t;
  if (grad && scaler_) scale_t = scaler_->scale_tensor(device_);
  if (l == "cross_entropy") {
    CrossEntropyOptions o;
    o.compute_grad = grad;
    o.grad_scale = grad_scale;
    o.grad_scale_tensor = scale_t;
    o.label_smoothing = config_.label_smoothing;
    r = cross_entropy(out, target, o);  // f16/bf16 logits: f32 accumulation inside
    if (correct) {
      const Tensor o32 = out.dtype() == DType::f32 ? out : out.to(DType::f32);
      const Tensor lh = o32.device().is_cpu() ? o32 : o32.to(Device::cpu());
      const Tensor th = target.device().is_cpu() ? target : target.to(Device::cpu());
      const auto logits = lh.to_vector<float>();
      const auto labels = th.to_vector<std::int64_t>();
      const std::int64_t n = out.size(0), k = out.numel() / std::max<std::int64_t>(1, n);
      double c = 0;
      for (std::int64_t i = 0; i < n; ++i) {
        const float* row = logits.data() + i * k;
        const std::int64_t arg = std::max_element(row, row + k) - row;
        if (arg == labels[static_cast<std::size_t>(i)]) c += 1;
      }
      *correct = c;
    }
  } else {
    // Regression losses run in f32 on a reduced-precision output (torch.autocast's float32
    // list): the targets keep their precision; the gradient goes back in the output's dtype.
    const bool widen = out.dtype() == DType::f16 || out.dtype() == DType::bf16;
    const Tensor in = widen ? out.to(DType::f32) : out;
    Tensor t = target;
    if (t.dtype() != in.dtype()) t = t.to(in.dtype());
    if (t.shape() != in.shape() && t.numel() == in.numel()) t = t.reshape(in.shape());
    if (l == "mse" || l == "l1") {
      LossOptions o;
      o.compute_grad = grad;
      o.grad_scale = grad_scale;
      o.grad_scale_tensor = scale_t;
      r = l == "mse" ? mse_loss(in, t, o) : l1_loss(in, t, o);
    } else if (l == "huber") {
      HuberOptions o;
      o.compute_grad = grad;
      o.grad_scale = grad_scale;
      o.grad_scale_tensor = scale_t;
      o.delta = config_.huber_delta;
      r = huber_loss(in, t, o);
    } else {
      SmoothL1Options o;
      o.compute_grad = grad;
      o.grad_scale = grad_scale;
      o.grad_scale_tensor = scale_t;
      o.beta = config_.smooth_l1_beta;
      r = smooth_l1_loss(in, t, o);
    }
    if (widen && r.grad.defined()) r.grad = r.grad.to(out.dtype());
    if (correct) *correct = std::numeric_limits<double>::quiet_NaN();
  }
  if (grad_out) *grad_out = r.grad;
  return r.loss.item();
}

EvalResult Trainer::evaluate(DataLoader& loader) {
  const bool was_training = model_->is_training();
  model_->eval();
  EvalResult res;
  double loss_sum = 0, correct_sum = 0;
  Batch b;
  while (loader.next(b)) {
    Tensor x = prepare_input(b.features);
    Tensor y = b.labels.device() == device_ ? b.labels : b.labels.to(device_);
    const Tensor out = model_->forward(x);
    double correct = 0;
    const double loss = compute_loss(out, y, false, 1.0, nullptr, &correct);
    const auto n = b.size();
    loss_sum += loss * static_cast<double>(n);
    correct_sum += correct;
    res.samples += n;
  }
  model_->train(was_training);
  if (res.samples > 0) {
    res.loss = loss_sum / static_cast<double>(res.samples);
    res.acc = correct_sum / static_cast<double>(res.samples);
  }  // else NaN: an empty loader measured nothing (0 was taken for a perfect loss)
  return res;
}

LRFindResult Trainer::lr_find(DataLoader& train, double start_lr, double end_lr,
                              std::int64_t num_iter, const std::string& csv_path) {
  if (!(start_lr > 0.0) || !(end_lr > start_lr) || num_iter < 2)
    throw Error(
        fmt::format("Trainer::lr_find: need 0 < start_lr < end_lr and num_iter >= 2, got "
                    "{}, {}, {}",
                    start_lr, end_lr, num_iter));
  const auto params = model_->parameters();
  std::vector<Tensor> saved, saved_grads;
  for (const auto& p : params) {
    saved.push_back(p.value().clone());
    saved_grads.push_back(p.has_grad() ? p.grad().clone() : Tensor());
  }
  const StateDict modules_state = model_->extra_states();  // Dropout seeds and offsets
  const StateDict opt_state = optimizer_->state_dict();
  const StateDict scaler_state = scaler_ ? scaler_->state_dict() : StateDict();
  const StateDict loader_state = train.state_dict();
  LRFindResult r;
  const double ratio = std::pow(end_lr / start_lr, 1.0 / static_cast<double>(num_iter - 1));
  // end / start overflows for a subnormal start_lr (1e-320 to 10): then the sweep goes through
  // logs (start * ratio^i overflows too).
  const bool by_logs = !std::isfinite(ratio) || !std::isfinite(end_lr / start_lr);
  const double log_start = std::log(start_lr);
  const double log_step = (std::log(end_lr) - log_start) / static_cast<double>(num_iter - 1);
  double avg = 0.0, best = std::numeric_limits<double>::infinity();
  model_->train();
  Batch b;
  for (std::int64_t i = 0; i < num_iter; ++i) {
    if (!train.next(b) && !train.next(b)) break;
    const double lr = by_logs ? std::exp(log_start + log_step * static_cast<double>(i))
                              : start_lr * std::pow(ratio, static_cast<double>(i));
    optimizer_->set_lr(lr);
    optimizer_->zero_grad(true);
    Tensor x = prepare_input(b.features);
    Tensor y = b.labels.device() == device_ ? b.labels : b.labels.to(device_);
    const Tensor out = model_->forward(x);
    Tensor grad;
    const double loss = compute_loss(out, y, true, 1.0, &grad, nullptr);
    if (!std::isfinite(loss)) break;
    model_->backward(grad);
    // As in fit(): the clip sees the unscaled grads (it clipped scale times their norm).
    if (scaler_) scaler_->unscale_(*optimizer_);
    if (config_.grad_clip > 0) clip_grad_norm_(*optimizer_, config_.grad_clip);
    if (scaler_) {
      scaler_->step(*optimizer_);
      scaler_->update();
    } else {
      optimizer_->step();
    }
    avg = 0.98 * avg + 0.02 * loss;
    const double smooth = avg / (1.0 - std::pow(0.98, static_cast<double>(i + 1)));
    r.lrs.push_back(lr);
    r.losses.push_back(loss);
    r.smoothed_losses.push_back(smooth);
    best = std::min(best, smooth);
    if (i > 0 && smooth > 4.0 * best) break;
  }
  // Steepest descent of the smoothed loss against log(lr), ignoring the first and last points.
  double steepest = std::numeric_limits<double>::infinity();
  for (std::size_t i = 1; i + 1 < r.lrs.size(); ++i) {
    const double g = (r.smoothed_losses[i + 1] - r.smoothed_losses[i - 1]) /
                     (std::log(r.lrs[i + 1]) - std::log(r.lrs[i - 1]));
    if (g < steepest) {
      steepest = g;
      r.suggested_lr = r.lrs[i];
    }
  }
  if (r.suggested_lr == 0.0 && !r.lrs.empty()) r.suggested_lr = r.lrs.front();
  for (std::size_t i = 0; i < params.size(); ++i) params[i].value().copy_(saved[i]);
  sync_model_copies();
  optimizer_->load_state_dict(opt_state);
  for (std::size_t i = 0; i < params.size(); ++i) params[i].set_grad(saved_grads[i]);
  model_->load_extra_states(modules_state);
  if (scaler_) scaler_->load_state_dict(scaler_state);
  train.load_state_dict(loader_state);
  if (!csv_path.empty()) {
    std::string csv = "lr,loss,smoothed_loss\n";
    for (std::size_t i = 0; i < r.lrs.size(); ++i)
      csv += fmt::format("{:.9g},{:.9g},{:.9g}\n", r.lrs[i], r.losses[i], r.smoothed_losses[i]);
    write_file_atomic(csv_path, csv.data(), csv.size());
  }
  return r;
}

const std::vector<EpochMetrics>& Trainer::fit(DataLoader& train, DataLoader* val) {
  const std::int64_t nb = train.num_batches();
  if (nb < 1) throw Error("Trainer::fit: the training loader has no batches");
  const std::int64_t accum = config_.grad_accumulation;
  const std::int64_t spe = (nb + accum - 1) / accum;
  if (!scheduler_ && config_.scheduler != "none") build_scheduler(spe);
  if (steps_per_epoch_ == 0) steps_per_epoch_ = spe;
  if (!pending_loader_.empty()) {
    train.load_state_dict(pending_loader_);
    pending_loader_ = StateDict();
  } else if (static_cast<std::int64_t>(train.epoch()) != epoch_) {
    train.set_epoch(static_cast<std::uint64_t>(epoch_), 0);
  }
  train_loader_ = &train;
  stop_ = false;
  const bool plateau = config_.scheduler == "plateau";
  const double inf = std::numeric_limits<double>::infinity();
  const double clip = config_.grad_clip > 0 ? config_.grad_clip : inf;

  struct Reset {
    Trainer* t;
    DataLoader* l;
    ~Reset() {
      t->last_loader_ = l->state_dict();
      t->train_loader_ = nullptr;
    }
  } reset{this, &train};

  for (auto& cb : callbacks_) cb->on_train_begin(*this);
  auto steps_done = [&] { return config_.max_steps > 0 && global_step_ >= config_.max_steps; };

  while (epoch_ < config_.epochs && !stop_ && !steps_done()) {
    Accum acc;
    acc.from_state(epoch_accum_);
    epoch_accum_ = StateDict();
    for (auto& cb : callbacks_) cb->on_epoch_begin(*this, epoch_);
    model_->train();
    const auto t0 = Clock::now();
    const double seconds_before = acc.seconds;
    double samples_this_run = 0;
    Batch b;
    std::int64_t micro = 0;
    bool interrupted = false;
    for (;;) {
      // max_steps or a stop request ends the run here; at the end of the epoch's batches the
      // epoch still ends (metrics, validation, callbacks), as an uninterrupted run's does.
      if (micro == 0 && (steps_done() || stop_) && train.position() < nb) {
        interrupted = true;
        break;
      }
      if (!train.next(b)) break;
      Tensor x = prepare_input(b.features);
      Tensor y = b.labels.device() == device_ ? b.labels : b.labels.to(device_);
      if (micro == 0) optimizer_->zero_grad(true);
      const Tensor out = model_->forward(x);
      Tensor grad;
      double correct = 0;
      const double loss =
          compute_loss(out, y, true, 1.0 / static_cast<double>(accum), &grad, &correct);
      if (!std::isfinite(loss) && !scaler_) {
        throw Error(fmt::format(
            "Trainer: non-finite loss {} at step {} (epoch {}, batch {}); training stopped, no "
            "checkpoint written for it",
            loss, global_step_ + 1, epoch_, b.index));
      }
      model_->backward(grad);
      const auto n = static_cast<double>(b.size());
      if (std::isfinite(loss)) {
        acc.loss_sum += loss * n;
        acc.correct += correct;
        acc.samples += n;
      }
      samples_this_run += n;
      ++micro;
      bool step_end = false, step_skipped = false;
      double step_norm = std::numeric_limits<double>::quiet_NaN();
      const bool last = train.position() >= nb;
      if (micro == accum || last) {
        micro = 0;
        if (scaler_) scaler_->unscale_(*optimizer_);
        const double norm = clip_grad_norm_(*optimizer_, clip).item();
        bool stepped = true;
        if (scaler_) {
          stepped = scaler_->step(*optimizer_);
          scaler_->update();
        } else {
          optimizer_->step();
        }
        if (!stepped) {
          ++skipped_;
          detail::log()->warn(
              "Trainer: step {} (epoch {}, batch {}) skipped: inf/NaN gradients (batch loss {}); "
              "GradScaler scale now {}, {} skipped steps in all",
              global_step_ + 1, epoch_, b.index, loss, scaler_->get_scale(), skipped_);
        }
        step_end = true;
        step_skipped = !stepped;
        step_norm = norm;
        if (std::isfinite(norm)) {
          acc.norm_sum += norm;
          acc.norm_clip_sum += std::min(norm, clip);
          acc.steps += 1;
        }
        if (scheduler_ && !plateau) scheduler_->step();
        ++global_step_;
      }
      if (!callbacks_.empty()) {
        BatchInfo info;
        info.epoch = epoch_;
        info.batch = b.index;
        info.num_batches = nb;
        info.global_step = global_step_;
        info.loss = acc.samples > 0 ? acc.loss_sum / acc.samples : 0.0;
        info.acc = acc.samples > 0 ? acc.correct / acc.samples : 0.0;
        info.lr = current_lr();
        info.elapsed = seconds_since(t0);
        info.samples_per_sec = info.elapsed > 0 ? samples_this_run / info.elapsed : 0.0;
        info.step_end = step_end;
        info.skipped = step_skipped;
        info.grad_norm = step_norm;
        for (auto& cb : callbacks_) cb->on_batch_end(*this, info);
      }
    }
    acc.seconds = seconds_before + seconds_since(t0);
    if (interrupted) {
      epoch_accum_ = acc.to_state();
      break;
    }
    EpochMetrics m;
    m.epoch = epoch_;
    m.global_step = global_step_;
    m.train_loss =
        acc.samples > 0 ? acc.loss_sum / acc.samples : std::numeric_limits<double>::quiet_NaN();
    m.train_acc = acc.samples > 0 && config_.loss == "cross_entropy"
                      ? acc.correct / acc.samples
                      : std::numeric_limits<double>::quiet_NaN();
    if (val) {
      // Each validation starts the loader at (epoch, 0): a shuffled one gives a resumed run
      // the same order as the uninterrupted one.
      val->set_epoch(static_cast<std::uint64_t>(epoch_), 0);
      const EvalResult e = evaluate(*val);
      m.val_loss = e.loss;
      m.val_acc = e.acc;
    }
    // NaN when no step of the epoch had a finite norm (all skipped by the GradScaler)
    m.grad_norm =
        acc.steps > 0 ? acc.norm_sum / acc.steps : std::numeric_limits<double>::quiet_NaN();
    m.grad_norm_clipped =
        acc.steps > 0 ? acc.norm_clip_sum / acc.steps : std::numeric_limits<double>::quiet_NaN();
    m.seconds = acc.seconds;
    m.samples_per_sec = m.seconds > 0 ? acc.samples / m.seconds : 0.0;
    m.skipped_steps = skipped_;
    if (plateau && scheduler_) scheduler_->step(val ? m.val_loss : m.train_loss);
    m.lr = current_lr();
    history_.push_back(m);
    ++epoch_;
    write_metrics();
    for (auto& cb : callbacks_) cb->on_epoch_end(*this, m);
  }
  for (auto& cb : callbacks_) cb->on_train_end(*this);
  return history_;
}

std::string Trainer::metrics_csv_path() const {
  return config_.output_dir.empty()
             ? std::string()
             : (std::filesystem::path(config_.output_dir) / "metrics.csv").string();
}
std::string Trainer::metrics_jsonl_path() const {
  return config_.output_dir.empty()
             ? std::string()
             : (std::filesystem::path(config_.output_dir) / "metrics.jsonl").string();
}

void Trainer::write_metrics() const {
  if (config_.output_dir.empty()) return;
  std::error_code ec;
  std::filesystem::create_directories(config_.output_dir, ec);
  if (ec) {
    throw Error("Trainer: cannot create the output_dir '" + config_.output_dir +
                "': " + ec.message());
  }
  std::string csv =
      "epoch,global_step,train_loss,train_acc,val_loss,val_acc,lr,grad_norm,grad_norm_clipped,"
      "samples_per_sec,seconds,skipped_steps\n";
  std::string jl;
  auto f = [](double v) { return std::isfinite(v) ? fmt::format("{:.9g}", v) : std::string(); };
  for (const auto& m : history_) {
    csv += fmt::format("{},{},{},{},{},{},{},{},{},{},{},{}\n", m.epoch, m.global_step,
                       f(m.train_loss), f(m.train_acc), f(m.val_loss), f(m.val_acc), f(m.lr),
                       f(m.grad_norm), f(m.grad_norm_clipped), f(m.samples_per_sec), f(m.seconds),
                       m.skipped_steps);
    jl += metrics_json(m).dump() + "\n";
  }
  write_file_atomic(metrics_csv_path(), csv.data(), csv.size());
  write_file_atomic(metrics_jsonl_path(), jl.data(), jl.size());
}

void Trainer::save(const std::string& path) const {
  CheckpointContents c;
  for (const auto& [name, p] : model_->named_parameters()) c.model[name] = p.value();
  const StateDict modules = model_->extra_states();  // Dropout seeds and offsets
  if (!modules.empty()) c.states["modules"] = modules;
  c.states["optimizer"] = optimizer_->state_dict();
  if (scheduler_) c.states["scheduler"] = scheduler_->state_dict();
  if (scaler_) c.states["scaler"] = scaler_->state_dict();
  StateDict loader = train_loader_ ? train_loader_->state_dict()
                                   : (!pending_loader_.empty() ? pending_loader_ : last_loader_);
  if (!loader.empty()) c.states["loader"] = loader;
  StateDict t;
  t.scalars = {{"epoch", static_cast<double>(epoch_)},
               {"global_step", static_cast<double>(global_step_)},
               {"skipped_steps", static_cast<double>(skipped_)},
               {"steps_per_epoch", static_cast<double>(steps_per_epoch_)}};
  json h = json::array();
  for (const auto& m : history_) h.push_back(metrics_json(m));
  t.strings = {{"history", h.dump()}, {"config", config_.to_json()}};
  c.states["trainer"] = t;
  if (!epoch_accum_.empty()) c.states["epoch_accum"] = epoch_accum_;
  for (const auto& [key, state] : pending_callbacks_) c.states["callback." + key] = state;
  for (const auto& cb : callbacks_) {
    const std::string key = cb->state_key();
    if (!key.empty()) c.states["callback." + key] = cb->state_dict();
  }
  c.metadata = {{"trainrt_checkpoint", "trainer"}};
  save_checkpoint(path, c);
}

void Trainer::load(const std::string& path) {
  CheckpointContents c = load_checkpoint(path, device_);
  const auto named = model_->named_parameters();
  for (const auto& [name, p] : named) {
    auto it = c.model.find(name);
    if (it == c.model.end())
      throw Error(fmt::format("Trainer::load: {} has no tensor for parameter {}", path, name));
    if (it->second.shape() != p.value().shape() || it->second.dtype() != p.value().dtype())
      throw Error(fmt::format("Trainer::load: {}: parameter {} is {} in the file, {} in the model",
                              path, name, it->second.str(), p.value().str()));
  }
  if (c.model.size() != named.size())
    throw Error(fmt::format("Trainer::load: {} has {} model tensors, the model {} parameters", path,
                            c.model.size(), named.size()));
  auto st = [&](const char* k) -> const StateDict* {
    auto it = c.states.find(k);
    return it == c.states.end() ? nullptr : &it->second;
  };
  const StateDict* t = st("trainer");
  if (!t) throw Error("Trainer::load: " + path + " is not a trainer checkpoint (no trainer state)");
  auto scalar = [&](const char* k) {
    auto it = t->scalars.find(k);
    if (it == t->scalars.end()) throw Error(fmt::format("Trainer::load: {}: no {}", path, k));
    const double v = it->second;
    if (!(v >= 0.0 && v <= 9007199254740992.0) || v != std::floor(v)) {  // [0, 2^53], whole
      throw Error(
          fmt::format("Trainer::load: {}: {} must be a whole number >= 0, got {}", path, k, v));
    }
    return static_cast<std::int64_t>(v);
  };
  const std::int64_t spe = scalar("steps_per_epoch");
  const std::int64_t epoch = scalar("epoch"), global_step = scalar("global_step"),
                     skipped = scalar("skipped_steps");
  if (!st("optimizer")) throw Error("Trainer::load: " + path + ": no optimizer state");
  // The history, parsed and checked before anything changes.
  std::vector<EpochMetrics> history;
  auto hs = t->strings.find("history");
  if (hs != t->strings.end()) {
    const detail::JsonShape shape =
        detail::check_json_shape(hs->second, detail::kMaxJsonDepth, false);
    try {
      if (!shape.error.empty()) throw Error(shape.error);
      const json h = json::parse(hs->second);
      if (!h.is_array()) throw Error("not a JSON array");
      for (const auto& j : h) history.push_back(metrics_from_json(j));
    } catch (const std::exception& e) {  // json::exception or Error
      throw Error(
          fmt::format("Trainer::load: {}: the saved history is not valid: {}", path, e.what()));
    }
  }
  if ((st("scheduler") != nullptr) != (config_.scheduler != "none"))
    throw Error("Trainer::load: " + path + ": the scheduler in the file does not match the config");
  if ((st("scaler") != nullptr) != (scaler_ != nullptr))
    throw Error("Trainer::load: " + path + ": the GradScaler in the file does not match amp");
  // The optimizer, scheduler and GradScaler check their own sections as they load them (each
  // load is all or nothing), so they load before the weights, which cannot fail any more (their
  // names and shapes were checked above); when one fails, the states already loaded are put
  // back from snapshots taken here, and the trainer is as it was.
  const StateDict modules_before = model_->extra_states();
  const StateDict optimizer_before = optimizer_->state_dict();
  const bool had_scheduler = scheduler_ != nullptr;
  const StateDict scheduler_before = had_scheduler ? scheduler_->state_dict() : StateDict();
  const StateDict scaler_before = scaler_ ? scaler_->state_dict() : StateDict();
  const std::int64_t spe_before = steps_per_epoch_;
  // Callback states: to the callbacks added already, the others kept for add_callback.
  std::map<std::string, StateDict> pending;
  for (const auto& [name, state] : c.states)
    if (name.rfind("callback.", 0) == 0) pending[name.substr(9)] = state;
  std::vector<std::pair<Callback*, StateDict>> callbacks_before;
  try {
    for (const auto& cb : callbacks_) {
      auto it = pending.find(cb->state_key());
      if (cb->state_key().empty() || it == pending.end()) continue;
      callbacks_before.emplace_back(cb.get(), cb->state_dict());
      try {
        cb->load_state_dict(it->second);
      } catch (const Error& e) {
        throw Error(fmt::format("Trainer::load: {}: {}", path, e.what()));
      }
      pending.erase(it);
    }
    // Dropout seeds and offsets: it checks the structure and changes nothing on error.
    const StateDict* modules = st("modules");
    try {
      model_->load_extra_states(modules ? *modules : StateDict());
    } catch (const Error& e) {
      throw Error(fmt::format("Trainer::load: {}: {}", path, e.what()));
    }
    // The scheduler is built first (its constructor sets the lr), then the optimizer's state
    // (with the lr it had) and the scheduler's state are loaded over it.
    if (!scheduler_ && config_.scheduler != "none") build_scheduler(spe > 0 ? spe : 1);
    steps_per_epoch_ = spe;
    optimizer_->load_state_dict(*st("optimizer"));
    if (scheduler_) scheduler_->load_state_dict(*st("scheduler"));
    if (scaler_) scaler_->load_state_dict(*st("scaler"));
  } catch (...) {
    optimizer_->load_state_dict(optimizer_before);
    if (had_scheduler) {
      scheduler_->load_state_dict(scheduler_before);
    } else {
      scheduler_.reset();  // built here: it goes, with the initial lrs it recorded
    }
    if (scaler_) scaler_->load_state_dict(scaler_before);
    model_->load_extra_states(modules_before);
    for (auto& [cb, state] : callbacks_before) cb->load_state_dict(state);
    steps_per_epoch_ = spe_before;
    throw;
  }
  pending_callbacks_ = std::move(pending);
  for (const auto& [name, p] : named) p.value().copy_(c.model.at(name));
  sync_model_copies();  // the f16/bf16 copies are derived from the masters, not saved
  pending_loader_ = st("loader") ? *st("loader") : StateDict();
  epoch_accum_ = st("epoch_accum") ? *st("epoch_accum") : StateDict();
  epoch_ = epoch;
  global_step_ = global_step;
  skipped_ = skipped;
  history_ = std::move(history);
}

}  // namespace trainrt
