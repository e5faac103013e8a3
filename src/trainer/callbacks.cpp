// Trainer callbacks: EarlyStopping, ModelCheckpoint, ProgressBar, LoggingCallback.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "../internal.hpp"
#include "trainrt/error.hpp"
#include "trainrt/trainer.hpp"

namespace trainrt {
namespace {

bool resolve_max(const char* op, const std::string& monitor, const std::string& mode) {
  const auto& names = EpochMetrics::names();
  if (std::find(names.begin(), names.end(), monitor) == names.end()) {
    std::string list;
    for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
    // An unknown name was NaN at every epoch: never an improvement.
    throw Error(fmt::format("{}: unknown monitor '{}'; one of {}", op, monitor, list));
  }
  if (mode == "max") return true;
  if (mode == "min") return false;
  if (mode != "auto")
    throw Error(fmt::format("{}: mode must be auto, min or max, got {}", op, mode));
  return monitor.find("acc") != std::string::npos;
}

/// A fit() from the very start: the callbacks' state begins afresh (a resumed or continued
/// one keeps it).
bool fresh_run(const Trainer& t) { return t.epoch() == 0 && t.global_step() == 0; }

double scalar_of(const StateDict& s, const char* op, const char* key) {
  auto it = s.scalars.find(key);
  if (it == s.scalars.end()) throw Error(fmt::format("{}: the state has no '{}'", op, key));
  return it->second;
}

std::int64_t count_of(const StateDict& s, const char* op, const char* key, std::int64_t lo) {
  const double v = scalar_of(s, op, key);
  if (!(v >= static_cast<double>(lo) && v <= 9007199254740992.0) || v != std::floor(v))
    throw Error(fmt::format("{}: '{}' must be a whole number >= {}, got {}", op, key, lo, v));
  return static_cast<std::int64_t>(v);
}

void check_monitor(const StateDict& s, const char* op, const std::string& monitor, bool maximize) {
  auto it = s.strings.find("monitor");
  if (it == s.strings.end() || it->second != monitor) {
    throw Error(fmt::format("{}: the state is for monitor '{}', this callback monitors '{}'", op,
                            it == s.strings.end() ? std::string("(none)") : it->second, monitor));
  }
  if ((scalar_of(s, op, "maximize") != 0.0) != maximize)
    throw Error(fmt::format("{}: the state's mode (min/max) differs from this callback's", op));
}

// The monitored value; without validation, val_* falls back to the training metric.
double monitored(const EpochMetrics& m, const std::string& monitor) {
  double v = m.get(monitor);
  if (std::isnan(v) && monitor.rfind("val_", 0) == 0) v = m.get("train_" + monitor.substr(4));
  return v;
}

bool improved(double v, double best, bool maximize, double min_delta, bool first) {
  if (std::isnan(v)) return false;
  if (first) return true;
  return maximize ? v > best + min_delta : v < best - min_delta;
}

}  // namespace

EarlyStopping::EarlyStopping(std::int64_t patience, double min_delta, std::string monitor,
                             bool restore_best, std::string mode)
    : patience_(patience),
      min_delta_(min_delta),
      monitor_(std::move(monitor)),
      restore_(restore_best),
      maximize_(resolve_max("EarlyStopping", monitor_, mode)) {
  if (patience < 0) throw Error("EarlyStopping: patience must be >= 0");
  if (!(min_delta >= 0)) throw Error("EarlyStopping: min_delta must be >= 0");
}

void EarlyStopping::on_train_begin(Trainer& t) {
  if (fresh_run(t)) {
    best_epoch_ = -1;
    wait_ = 0;
    stopped_ = false;
    best_weights_.clear();
  } else if (stopped_) {
    t.request_stop();  // it stopped this run (before a save and load): it stays stopped
  }
}

void EarlyStopping::on_epoch_end(Trainer& t, const EpochMetrics& m) {
  const double v = monitored(m, monitor_);
  if (improved(v, best_, maximize_, min_delta_, best_epoch_ < 0)) {
    best_ = v;
    best_epoch_ = m.epoch;
    wait_ = 0;
    if (restore_) {
      best_weights_.clear();
      for (const auto& p : t.model().parameters()) best_weights_.push_back(p.value().clone());
    }
    return;
  }
  if (++wait_ >= patience_) {
    stopped_ = true;
    t.request_stop();
    detail::log()->info(
        "EarlyStopping: {} did not improve by more than {} for {} epochs (best {:.6g} at epoch "
        "{}); stopping after epoch {}",
        monitor_, min_delta_, wait_, best_, best_epoch_, m.epoch);
  }
}

void EarlyStopping::on_train_end(Trainer& t) {
  // The training is over when this callback stopped it or the last epoch is done; a fit()
  // that returned for max_steps or another caller's request_stop() may be resumed, and its
  // weights must stay those of its last step.
  if (!restore_ || !(stopped_ || t.epoch() >= t.config().epochs)) return;
  restore_best_weights(t);
}

bool EarlyStopping::restore_best_weights(Trainer& t) {
  if (best_weights_.empty()) return false;
  const auto params = t.model().parameters();
  if (params.size() != best_weights_.size()) {
    throw Error(fmt::format("EarlyStopping: {} best weights for a model of {} parameters",
                            best_weights_.size(), params.size()));
  }
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (best_weights_[i].shape() != params[i].value().shape() ||
        best_weights_[i].dtype() != params[i].value().dtype()) {
      throw Error(fmt::format("EarlyStopping: best weight {} is {}, the parameter {}", i,
                              best_weights_[i].str(), params[i].value().str()));
    }
  }
  for (std::size_t i = 0; i < params.size(); ++i) params[i].value().copy_(best_weights_[i]);
  t.sync_model_copies();  // amp: the f16/bf16 copies follow the restored masters
  detail::log()->info("EarlyStopping: restored the weights of epoch {} ({} {:.6g})", best_epoch_,
                      monitor_, best_);
  return true;
}

std::string EarlyStopping::state_key() const { return "early_stopping_" + monitor_; }

StateDict EarlyStopping::state_dict() const {
  StateDict s;
  s.scalars = {{"best", best_},
               {"best_epoch", static_cast<double>(best_epoch_)},
               {"wait", static_cast<double>(wait_)},
               {"stopped", stopped_ ? 1.0 : 0.0},
               {"maximize", maximize_ ? 1.0 : 0.0},
               {"best_weights", static_cast<double>(best_weights_.size())}};
  s.strings["monitor"] = monitor_;
  for (std::size_t i = 0; i < best_weights_.size(); ++i)
    s.tensors["best_weight." + std::to_string(i)] = best_weights_[i];
  return s;
}

void EarlyStopping::load_state_dict(const StateDict& s) {
  const char* op = "EarlyStopping::load_state_dict";
  check_monitor(s, op, monitor_, maximize_);
  const double best = scalar_of(s, op, "best");
  const std::int64_t best_epoch = count_of(s, op, "best_epoch", -1);
  const std::int64_t wait = count_of(s, op, "wait", 0);
  const double stopped = scalar_of(s, op, "stopped");
  if (stopped != 0.0 && stopped != 1.0)
    throw Error(fmt::format("{}: 'stopped' must be 0 or 1, got {}", op, stopped));
  const std::int64_t n = count_of(s, op, "best_weights", 0);
  std::vector<Tensor> w;
  for (std::int64_t i = 0; i < n; ++i) {
    auto it = s.tensors.find("best_weight." + std::to_string(i));
    if (it == s.tensors.end())
      throw Error(fmt::format("{}: the state has no 'best_weight.{}'", op, i));
    w.push_back(it->second.clone());
  }
  if (s.tensors.size() != w.size())
    throw Error(fmt::format("{}: the state has {} tensors, {} best weights", op, s.tensors.size(),
                            w.size()));
  best_ = best;
  best_epoch_ = best_epoch;
  wait_ = wait;
  stopped_ = stopped != 0.0;
  best_weights_ = std::move(w);
}

ModelCheckpoint::ModelCheckpoint(std::string dir, std::string monitor, std::string mode)
    : dir_(std::move(dir)),
      monitor_(std::move(monitor)),
      maximize_(resolve_max("ModelCheckpoint", monitor_, mode)) {
  if (dir_.empty()) throw Error("ModelCheckpoint: empty directory");
}

void ModelCheckpoint::on_train_begin(Trainer& t) {
  if (fresh_run(t)) best_epoch_ = -1;
}

std::string ModelCheckpoint::state_key() const { return "model_checkpoint_" + monitor_; }

StateDict ModelCheckpoint::state_dict() const {
  StateDict s;
  s.scalars = {{"best", best_},
               {"best_epoch", static_cast<double>(best_epoch_)},
               {"maximize", maximize_ ? 1.0 : 0.0}};
  s.strings["monitor"] = monitor_;
  return s;
}

void ModelCheckpoint::load_state_dict(const StateDict& s) {
  const char* op = "ModelCheckpoint::load_state_dict";
  check_monitor(s, op, monitor_, maximize_);
  const double best = scalar_of(s, op, "best");
  best_epoch_ = count_of(s, op, "best_epoch", -1);
  best_ = best;
}

std::string ModelCheckpoint::best_path() const {
  return (std::filesystem::path(dir_) / "best").string();
}
std::string ModelCheckpoint::last_path() const {
  return (std::filesystem::path(dir_) / "last").string();
}

void ModelCheckpoint::on_epoch_end(Trainer& t, const EpochMetrics& m) {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec)
    throw Error("ModelCheckpoint: cannot create the directory '" + dir_ + "': " + ec.message());
  t.save(last_path());
  detail::log()->debug("ModelCheckpoint: epoch {} saved to {}", m.epoch, last_path());
  const double v = monitored(m, monitor_);
  if (improved(v, best_, maximize_, 0.0, best_epoch_ < 0)) {
    const bool first = best_epoch_ < 0;
    const double previous = best_;
    best_ = v;
    best_epoch_ = m.epoch;
    t.save(best_path());
    if (first)
      detail::log()->info("ModelCheckpoint: epoch {}: {} {:.6g}, saved to {}", m.epoch, monitor_, v,
                          best_path());
    else
      detail::log()->info("ModelCheckpoint: epoch {}: {} improved {:.6g} -> {:.6g}, saved to {}",
                          m.epoch, monitor_, previous, v, best_path());
  }
}

ProgressBar::ProgressBar(std::int64_t every) : every_(every < 1 ? 1 : every) {
  tty_ = isatty(fileno(stdout)) != 0;
}

void ProgressBar::on_epoch_begin(Trainer&, std::int64_t) { last_draw_ = -1.0; }

void ProgressBar::on_batch_end(Trainer& t, const BatchInfo& b) {
  const bool end = b.batch + 1 == b.num_batches;
  if (tty_) {
    if (!end && last_draw_ >= 0 && b.elapsed - last_draw_ < 0.1) return;
  } else if ((b.batch + 1) % every_ != 0 || end) {
    return;
  }
  last_draw_ = b.elapsed;
  const double per_batch = b.elapsed / static_cast<double>(b.batch + 1);
  const double eta = per_batch * static_cast<double>(b.num_batches - b.batch - 1);
  const std::string acc = std::isnan(b.acc) ? std::string() : fmt::format(" acc {:.4f}", b.acc);
  const std::string line = fmt::format(
      "epoch {}/{} batch {}/{} loss {:.4f}{} lr {:.3g} {:.0f} samples/s ETA {:.1f}s", b.epoch + 1,
      t.config().epochs, b.batch + 1, b.num_batches, b.loss, acc, b.lr, b.samples_per_sec, eta);
  if (tty_)
    std::fprintf(stdout, "\r%-100s", line.c_str());
  else
    std::fprintf(stdout, "%s\n", line.c_str());
  std::fflush(stdout);
}

void ProgressBar::on_epoch_end(Trainer& t, const EpochMetrics& m) {
  std::string line =
      fmt::format("epoch {}/{} loss {:.4f}", m.epoch + 1, t.config().epochs, m.train_loss);
  if (!std::isnan(m.train_acc)) line += fmt::format(" acc {:.4f}", m.train_acc);
  if (!std::isnan(m.val_loss)) line += fmt::format(" val_loss {:.4f}", m.val_loss);
  if (!std::isnan(m.val_acc)) line += fmt::format(" val_acc {:.4f}", m.val_acc);
  line += fmt::format(" lr {:.3g} grad_norm {:.3g} {:.0f} samples/s {:.1f}s", m.lr, m.grad_norm,
                      m.samples_per_sec, m.seconds);
  if (m.skipped_steps > 0) line += fmt::format(" skipped {}", m.skipped_steps);
  if (tty_)
    std::fprintf(stdout, "\r%-100s\n", line.c_str());
  else
    std::fprintf(stdout, "%s\n", line.c_str());
  std::fflush(stdout);
}

LoggingCallback::LoggingCallback(std::int64_t every_n_steps) : every_(every_n_steps) {
  if (every_n_steps < 0) throw Error("LoggingCallback: every_n_steps must be >= 0 (0: none)");
}

void LoggingCallback::on_train_begin(Trainer& t) {
  const auto params = t.model().parameters();
  std::int64_t numel = 0;
  for (const auto& p : params) numel += p.value().numel();
  const TrainerConfig& c = t.config();
  detail::log()->info(
      "Trainer: {} parameters in {} tensors, {} lr {:.3g}, loss {}, amp {} (compute {}), {} "
      "on {}, epochs {} from epoch {} (step {})",
      numel, params.size(), t.optimizer().name(), t.current_lr(), c.loss, c.amp,
      dtype_name(t.compute_dtype()), c.scheduler == "none" ? "no scheduler" : c.scheduler,
      t.device().str(), c.epochs, t.epoch(), t.global_step());
}

void LoggingCallback::on_batch_end(Trainer& t, const BatchInfo& b) {
  if (every_ == 0 || !b.step_end || b.global_step % every_ != 0) return;
  const std::shared_ptr<spdlog::logger> logger = detail::log();
  spdlog::logger& log = *logger;
  if (!log.should_log(spdlog::level::debug)) return;
  const std::string acc = std::isnan(b.acc) ? std::string() : fmt::format(" acc {:.4f}", b.acc);
  log.debug(
      "epoch {}/{} step {} batch {}/{} loss {:.4f}{} lr {:.3g} grad_norm {:.4g}{} {:.0f} "
      "samples/s",
      b.epoch + 1, t.config().epochs, b.global_step, b.batch + 1, b.num_batches, b.loss, acc, b.lr,
      b.grad_norm, b.skipped ? " (skipped)" : "", b.samples_per_sec);
}

void LoggingCallback::on_epoch_end(Trainer& t, const EpochMetrics& m) {
  auto f = [](double v) { return std::isnan(v) ? std::string("-") : fmt::format("{:.4f}", v); };
  detail::log()->info(
      "epoch {}/{} step {} train_loss {} train_acc {} val_loss {} val_acc {} lr {:.3g} "
      "grad_norm {:.4g} clipped {:.4g} {:.0f} samples/s {:.2f}s skipped_steps {}",
      m.epoch + 1, t.config().epochs, m.global_step, f(m.train_loss), f(m.train_acc), f(m.val_loss),
      f(m.val_acc), m.lr, m.grad_norm, m.grad_norm_clipped, m.samples_per_sec, m.seconds,
      m.skipped_steps);
}

void LoggingCallback::on_train_end(Trainer& t) {
  double seconds = 0;
  for (const auto& m : t.history()) seconds += m.seconds;
  detail::log()->info("Trainer: {} after {} epochs, {} steps ({} skipped), {:.2f}s of training",
                      t.stop_requested() ? "stopped early" : "done", t.epoch(), t.global_step(),
                      t.skipped_steps(), seconds);
}

}  // namespace trainrt
