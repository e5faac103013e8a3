// Trainer callbacks: EarlyStopping, ModelCheckpoint, ProgressBar.
#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "trainrt/error.hpp"
#include "trainrt/trainer.hpp"

namespace trainrt {
namespace {

bool resolve_max(const std::string& monitor, const std::string& mode) {
  if (mode == "max") return true;
  if (mode == "min") return false;
  if (mode != "auto") throw Error("callback mode must be auto, min or max, got " + mode);
  return monitor.find("acc") != std::string::npos;
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
      maximize_(resolve_max(monitor_, mode)) {
  if (patience < 0) throw Error("EarlyStopping: patience must be >= 0");
  if (!(min_delta >= 0)) throw Error("EarlyStopping: min_delta must be >= 0");
}

void EarlyStopping::on_train_begin(Trainer&) {
  best_epoch_ = -1;
  wait_ = 0;
  stopped_ = false;
  best_weights_.clear();
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
  if (++wait_ > patience_) {
    stopped_ = true;
    t.request_stop();
  }
}

void EarlyStopping::on_train_end(Trainer& t) {
  if (!restore_ || best_weights_.empty()) return;
  const auto params = t.model().parameters();
  if (params.size() != best_weights_.size()) return;
  for (std::size_t i = 0; i < params.size(); ++i) params[i].value().copy_(best_weights_[i]);
}

ModelCheckpoint::ModelCheckpoint(std::string dir, std::string monitor, std::string mode)
    : dir_(std::move(dir)), monitor_(std::move(monitor)), maximize_(resolve_max(monitor_, mode)) {
  if (dir_.empty()) throw Error("ModelCheckpoint: empty directory");
}

std::string ModelCheckpoint::best_path() const {
  return (std::filesystem::path(dir_) / "best").string();
}
std::string ModelCheckpoint::last_path() const {
  return (std::filesystem::path(dir_) / "last").string();
}

void ModelCheckpoint::on_epoch_end(Trainer& t, const EpochMetrics& m) {
  std::filesystem::create_directories(dir_);
  t.save(last_path());
  const double v = monitored(m, monitor_);
  if (improved(v, best_, maximize_, 0.0, best_epoch_ < 0)) {
    best_ = v;
    best_epoch_ = m.epoch;
    t.save(best_path());
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

}  // namespace trainrt
