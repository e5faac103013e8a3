// Trainer: the training loop over an nn::Module, configured by TrainerConfig (a struct, or JSON
// with the same keys), with validation, metrics history (CSV + JSON lines), callbacks
// (EarlyStopping, ModelCheckpoint, ProgressBar), the non-finite loss policy and bitwise resume.
//
//   auto model = std::make_shared<nn::Sequential>(...);
//   TrainerConfig cfg = TrainerConfig::from_json(R"({"optimizer": "adamw", "lr": 1e-3})");
//   Trainer trainer(model, cfg);
//   trainer.add_callback(std::make_shared<ProgressBar>());
//   trainer.fit(train_loader, &val_loader);
//
// One optimizer step: zero_grad -> forward -> fused loss+grad (grad_scale = 1/grad_accumulation,
// times the GradScaler's scale with amp) -> backward (accumulated over grad_accumulation
// micro-batches) -> unscale -> clip (fused norm, always measured) -> fused step (skipped on
// inf/NaN with the scaler) -> scheduler step.
//
// amp "fp16" / "bf16" (mixed precision through the layers): the parameters stay f32 masters
// and the Trainer gives each of them an f16/bf16 model copy (Parameter::set_model_copy; not
// Linear biases, which Linear adds in f32 from the master). Each input batch (floating
// features) is cast to that dtype before forward, so activations, Dropout and their backward
// run in f16/bf16; Linear multiplies by the weight's model copy with f32 accumulation and
// accumulates f32 parameter grads. Cross-entropy takes the reduced-precision logits (f32
// accumulation inside the fused kernel); the pointwise regression losses (mse, l1, huber,
// smooth_l1) run on the output widened to f32, as torch.autocast does, so the targets are not
// rounded. The fused step updates the f32 masters and rewrites the model copies in the same
// pass. fp16 adds dynamic loss scaling (GradScaler: unscale before clipping, the step skipped
// on inf/NaN grads); bf16 needs none. Checkpoints hold the f32 masters; load() re-derives the
// model copies (sync_model_copies()), so a resumed amp run is bitwise the uninterrupted one on
// the CPU. evaluate(), lr_find() and the metrics see the same reduced-precision forward.
//
// Logging (spdlog logger "trainrt", see log.hpp): the Trainer warns about every step the
// GradScaler skipped; EarlyStopping and ModelCheckpoint log their events at info level (the
// per-epoch "last" save at debug); per-epoch metric lines (info) and per-step lines (debug)
// come from LoggingCallback, added like ProgressBar.
#pragma once

#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "trainrt/amp.hpp"
#include "trainrt/data.hpp"
#include "trainrt/device.hpp"
#include "trainrt/export.hpp"
#include "trainrt/nn.hpp"
#include "trainrt/optim.hpp"
#include "trainrt/schedulers.hpp"
#include "trainrt/state_dict.hpp"

namespace trainrt {

struct TRAINRT_API TrainerConfig {
  std::string optimizer = "adamw";  // sgd | adam | adamw | rmsprop | adagrad | radam | lamb
  double lr = 1e-3;
  double weight_decay = -1.0;  // < 0: the optimizer's default
  double momentum = 0.0;       // sgd, rmsprop
  double beta1 = 0.9;          // "betas": [beta1, beta2] in JSON
  double beta2 = 0.999;
  std::string loss = "cross_entropy";  // cross_entropy | mse | l1 | huber | smooth_l1
  double label_smoothing = 0.0;
  double huber_delta = 1.0;     // "huber": quadratic below delta, linear above (> 0)
  double smooth_l1_beta = 1.0;  // "smooth_l1": quadratic below beta (>= 0; 0 is L1)
  // none | step | multistep | exponential | cosine | linear | onecycle | plateau. All but plateau
  // step once per optimizer step; step_size and milestones are in epochs; plateau steps once
  // per epoch on the validation loss (the training loss without validation).
  std::string scheduler = "none";
  std::int64_t step_size = 1;
  std::vector<std::int64_t> milestones;
  double gamma = 0.1;
  double eta_min = 0.0;        // cosine
  double max_lr = 0.0;         // onecycle (0: lr)
  std::int64_t patience = 10;  // plateau
  double grad_clip = 0.0;      // max total L2 norm; 0 = off
  std::int64_t epochs = 10;
  std::int64_t batch_size = 128;  // for loaders the caller builds from the config
  std::string amp = "none";       // none | fp16 | bf16 (see the header comment)
  std::int64_t grad_accumulation = 1;
  std::uint64_t seed = 0;
  std::string device = "auto";  // auto | cpu | cuda | cuda:N
  std::string output_dir;       // metrics.csv and metrics.jsonl go here when set
  std::int64_t max_steps = 0;   // stop after this many optimizer steps in all (0: no limit)

  /// Parses JSON with the keys above (unknown keys, wrong types and bad values throw Error).
  static TrainerConfig from_json(const std::string& text);
  static TrainerConfig from_json_file(const std::string& path);
  std::string to_json() const;
  /// Throws Error naming the first bad field.
  void validate() const;
  Device resolved_device() const;
};

struct TRAINRT_API EpochMetrics {
  std::int64_t epoch = 0;        // 0-based
  std::int64_t global_step = 0;  // optimizer steps after this epoch
  double train_loss = 0.0;
  double train_acc = std::numeric_limits<double>::quiet_NaN();  // classification only
  double val_loss = std::numeric_limits<double>::quiet_NaN();
  double val_acc = std::numeric_limits<double>::quiet_NaN();
  double lr = 0.0;                 // at the end of the epoch
  double grad_norm = 0.0;          // mean total norm before clipping over the epoch's steps
  double grad_norm_clipped = 0.0;  // mean after clipping (both NaN if every step was skipped)
  double samples_per_sec = 0.0;
  double seconds = 0.0;
  std::int64_t skipped_steps = 0;  // steps skipped by the GradScaler in all
  /// The value named `name` (one of names()); NaN for any other name.
  double get(const std::string& name) const;
  /// The names get() knows: "train_loss" ("loss"), "train_acc" ("acc", "accuracy"),
  /// "val_loss", "val_acc" ("val_accuracy"), "lr", "grad_norm", "grad_norm_clipped",
  /// "samples_per_sec", "seconds", "skipped_steps", "epoch", "global_step".
  static const std::vector<std::string>& names();
};

struct BatchInfo {
  std::int64_t epoch = 0;
  std::int64_t batch = 0;  // within the epoch, 0-based
  std::int64_t num_batches = 0;
  std::int64_t global_step = 0;
  double loss = 0.0;  // running mean over the epoch
  double acc = 0.0;   // running accuracy (NaN if not classification)
  double lr = 0.0;
  double samples_per_sec = 0.0;
  double elapsed = 0.0;   // seconds since the epoch began
  bool step_end = false;  // this batch completed an optimizer step (the last micro-batch)
  bool skipped = false;   // ... and the GradScaler skipped that step (inf/NaN grads)
  double grad_norm = std::numeric_limits<double>::quiet_NaN();  // that step's norm, unclipped
};

struct EvalResult {
  double loss = std::numeric_limits<double>::quiet_NaN();  // NaN for a loader with no batches
  double acc = std::numeric_limits<double>::quiet_NaN();
  std::int64_t samples = 0;
};

struct LRFindResult {
  std::vector<double> lrs;
  std::vector<double> losses;           // raw batch losses
  std::vector<double> smoothed_losses;  // exponential moving average (0.98), bias-corrected
  double suggested_lr = 0.0;            // steepest descent of the smoothed loss
};

class Trainer;

class TRAINRT_API Callback {
 public:
  virtual ~Callback();
  virtual void on_train_begin(Trainer&) {}
  virtual void on_epoch_begin(Trainer&, std::int64_t /*epoch*/) {}
  virtual void on_batch_end(Trainer&, const BatchInfo&) {}
  virtual void on_epoch_end(Trainer&, const EpochMetrics&) {}
  virtual void on_train_end(Trainer&) {}

  /// A callback with state that a resumed run needs names it by a key unique among the
  /// trainer's callbacks (letters, digits, '_', '-', '.'; "" = no state, the default).
  /// Trainer::save stores state_dict() as the checkpoint section "callback.<key>", and
  /// Trainer::load hands it to load_state_dict() of the callback with that key, whether it was
  /// added before the load or after it (add_callback).
  virtual std::string state_key() const { return std::string(); }
  virtual StateDict state_dict() const { return StateDict(); }
  virtual void load_state_dict(const StateDict& /*state*/) {}
};

/// Stops when `monitor` (one of EpochMetrics::names(); a val_* one falls back to its train_*
/// twin without validation) has not improved by more than min_delta for `patience` epochs in
/// a row (Keras' and Lightning's rule: patience 2 stops after the second epoch without
/// improvement; a NaN value is no improvement). mode "auto" maximizes a monitor whose name
/// holds "acc". With restore_best, the weights of the best epoch are copied back when the
/// training ends: when this callback stops it, or after the last of config.epochs; not when
/// fit() returns for max_steps or a request_stop() of another caller, since that run may be
/// resumed (restore_best_weights() does it on demand). Its state (best value and epoch, the
/// epochs waited, the best weights) is saved with Trainer::save (state_key
/// "early_stopping_<monitor>"), so a resumed run stops where the uninterrupted one does; it
/// starts afresh only in a fit() from epoch 0, step 0.
class TRAINRT_API EarlyStopping : public Callback {
 public:
  explicit EarlyStopping(std::int64_t patience = 3, double min_delta = 0.0,
                         std::string monitor = "val_loss", bool restore_best = true,
                         std::string mode = "auto");
  void on_train_begin(Trainer& t) override;
  void on_epoch_end(Trainer& t, const EpochMetrics& m) override;
  void on_train_end(Trainer& t) override;
  std::string state_key() const override;
  StateDict state_dict() const override;
  void load_state_dict(const StateDict& state) override;
  /// Copies the best epoch's weights into the model (false if there are none).
  bool restore_best_weights(Trainer& t);
  std::int64_t best_epoch() const { return best_epoch_; }
  double best() const { return best_; }
  bool stopped() const { return stopped_; }

 private:
  std::int64_t patience_;
  double min_delta_;
  std::string monitor_;
  bool restore_;
  bool maximize_;
  double best_ = 0.0;
  std::int64_t best_epoch_ = -1;
  std::int64_t wait_ = 0;
  bool stopped_ = false;
  std::vector<Tensor> best_weights_;
};

/// Writes <dir>/last after every epoch and <dir>/best when `monitor` (as EarlyStopping's)
/// improves, through save_checkpoint (atomic). A run that throws (non-finite loss) writes
/// nothing for that epoch. The best value so far is saved with Trainer::save (state_key
/// "model_checkpoint_<monitor>"), so a resumed run overwrites best only with a better epoch.
/// Its checkpoints hold the state other callbacks have when it runs: add it after
/// EarlyStopping, so that a run resumed from them continues EarlyStopping's count.
class TRAINRT_API ModelCheckpoint : public Callback {
 public:
  explicit ModelCheckpoint(std::string dir, std::string monitor = "val_loss",
                           std::string mode = "auto");
  void on_train_begin(Trainer& t) override;
  void on_epoch_end(Trainer& t, const EpochMetrics& m) override;
  std::string state_key() const override;
  StateDict state_dict() const override;
  void load_state_dict(const StateDict& state) override;
  std::string best_path() const;
  std::string last_path() const;
  std::int64_t best_epoch() const { return best_epoch_; }

 private:
  std::string dir_, monitor_;
  bool maximize_;
  double best_ = 0.0;
  std::int64_t best_epoch_ = -1;
};

/// One line per epoch, updated in place with '\r' when stdout is a terminal (batch, loss, acc,
/// lr, samples/s, ETA); plain lines every `every` batches otherwise.
class TRAINRT_API ProgressBar : public Callback {
 public:
  explicit ProgressBar(std::int64_t every = 100);
  void on_epoch_begin(Trainer& t, std::int64_t epoch) override;
  void on_batch_end(Trainer& t, const BatchInfo& b) override;
  void on_epoch_end(Trainer& t, const EpochMetrics& m) override;

 private:
  std::int64_t every_;
  bool tty_;
  double last_draw_ = -1.0;
};

/// Logs through the "trainrt" spdlog logger: at train begin (info) the model size, optimizer,
/// amp and device; one info line per epoch (epoch, step, train loss/acc, val loss/acc, lr,
/// grad norm before/after clipping, samples/s, seconds, skipped steps); a debug line every
/// `every_n_steps` optimizer steps (0: none) with the running loss/acc, lr, the step's grad
/// norm and samples/s; at train end (info) the totals and whether a callback stopped early.
class TRAINRT_API LoggingCallback : public Callback {
 public:
  explicit LoggingCallback(std::int64_t every_n_steps = 50);
  void on_train_begin(Trainer& t) override;
  void on_batch_end(Trainer& t, const BatchInfo& b) override;
  void on_epoch_end(Trainer& t, const EpochMetrics& m) override;
  void on_train_end(Trainer& t) override;

 private:
  std::int64_t every_;
};

class TRAINRT_API Trainer {
 public:
  Trainer(std::shared_ptr<nn::Module> model, TrainerConfig config);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  void add_callback(std::shared_ptr<Callback> callback);

  /// Trains until config.epochs epochs (or max_steps steps) are done, or a callback stops it.
  /// The loader's features must match the model's input; labels as the loss wants them.
  /// Continues from the epoch/step/loader position of a load()ed checkpoint. An epoch whose
  /// batches all ran ends (metrics, validation, callbacks) even when max_steps or a stop
  /// request comes with its last step; one stopped before that is continued by the next fit().
  /// Before each validation the `val` loader is set to (epoch, 0), so a shuffled one is
  /// resumable too.
  const std::vector<EpochMetrics>& fit(DataLoader& train, DataLoader* val = nullptr);
  /// LR range test: `num_iter` steps with the lr growing exponentially from start_lr to
  /// end_lr (stops early when the smoothed loss exceeds 4x its best); the model (weights,
  /// grads, Dropout states), optimizer, scaler and loader position are restored afterwards,
  /// so a fit() after it is the fit() without it. Writes lr,loss,smoothed_loss to csv_path
  /// when set.
  LRFindResult lr_find(DataLoader& train, double start_lr = 1e-7, double end_lr = 10.0,
                       std::int64_t num_iter = 100, const std::string& csv_path = std::string());
  /// Loss and accuracy over one pass of `loader` in eval mode (no grads).
  EvalResult evaluate(DataLoader& loader);

  /// Model, optimizer, scheduler, scaler, data loader position (during or after fit), epoch,
  /// step and history as one checkpoint directory (save_checkpoint).
  void save(const std::string& path) const;
  /// Restores everything save() wrote; the next fit() continues where it stopped.
  void load(const std::string& path);

  void request_stop() { stop_ = true; }
  bool stop_requested() const { return stop_; }

  /// The dtype the layers compute in: f32, or f16 / bf16 with amp.
  DType compute_dtype() const { return compute_dtype_; }
  /// Refills every f16/bf16 model copy of the model's parameters from its f32 master (with
  /// amp every parameter but the Linear biases has one). Call it after changing parameter
  /// values in place; load(), lr_find() and EarlyStopping's restore do.
  void sync_model_copies();

  nn::Module& model() { return *model_; }
  const TrainerConfig& config() const { return config_; }
  Device device() const { return device_; }
  optim::Optimizer& optimizer() { return *optimizer_; }
  optim::LRScheduler* scheduler() { return scheduler_.get(); }
  GradScaler* scaler() { return scaler_.get(); }
  const std::vector<EpochMetrics>& history() const { return history_; }
  std::int64_t epoch() const { return epoch_; }
  std::int64_t global_step() const { return global_step_; }
  std::int64_t skipped_steps() const { return skipped_; }
  double current_lr() const;
  std::string metrics_csv_path() const;
  std::string metrics_jsonl_path() const;

 private:
  struct Accum;
  void build_scheduler(std::int64_t steps_per_epoch);
  double compute_loss(const Tensor& out, const Tensor& target, bool grad, double grad_scale,
                      Tensor* grad_out, double* correct);
  /// The batch features on the device, floating ones cast to compute_dtype().
  Tensor prepare_input(const Tensor& features) const;
  void write_metrics() const;

  std::shared_ptr<nn::Module> model_;
  TrainerConfig config_;
  Device device_;
  DType compute_dtype_ = DType::f32;
  std::unique_ptr<optim::Optimizer> optimizer_;
  std::unique_ptr<optim::LRScheduler> scheduler_;
  std::unique_ptr<GradScaler> scaler_;
  std::vector<std::shared_ptr<Callback>> callbacks_;
  std::vector<EpochMetrics> history_;
  std::int64_t epoch_ = 0;
  std::int64_t global_step_ = 0;
  std::int64_t skipped_ = 0;
  bool stop_ = false;
  DataLoader* train_loader_ = nullptr;
  StateDict pending_loader_;  // from load(), applied by the next fit()
  StateDict last_loader_;     // the loader's state when the last fit() returned
  std::int64_t steps_per_epoch_ = 0;
  StateDict epoch_accum_;  // running sums of a partly trained epoch (resume)
  // Callback states from load() whose callback has not been added yet (add_callback).
  std::map<std::string, StateDict> pending_callbacks_;
};

}  // namespace trainrt
