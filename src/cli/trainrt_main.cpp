// The trainrt command line: `trainrt train --config FILE.json` trains an MLP on IDX
// (MNIST / Fashion-MNIST layout) or CSV data with the Trainer.
//
// FILE.json holds the TrainerConfig keys plus:
//   "data":  {"format": "idx", "dir": "/usr/share/datasets/fashion-mnist", "mean": .., "std": ..}
//         or {"format": "csv", "train": "train.csv", "val": "val.csv", "label_column": "label"}
//   "model": {"hidden": [256, 128], "activation": "relu" | "gelu" | "tanh" | "sigmoid",
//             "classes": N}
//   "checkpoint_dir": "runs/ckpt"      (best and last; optional)
//   "early_stopping": {"patience": 3, "min_delta": 0, "monitor": "val_loss",
//                      "restore_best": true}   (optional)
//   "resume": "runs/ckpt/last"          (optional)
// Unknown keys, wrong types and bad values are errors naming the key (read_config).
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "../json_checks.hpp"
#include "trainrt/trainrt.hpp"

using json = nlohmann::json;
using namespace trainrt;

namespace {

int usage(int rc) {
  if (rc) std::fflush(stdout);
  std::fprintf(rc ? stderr : stdout,
               "usage: trainrt train --config FILE.json\n"
               "       trainrt --version | --help\n"
               "       trainrt lr-find --config FILE.json [--start 1e-7] [--end 10] [--iters 100]\n"
               "                       [--out lr_find.csv]\n"
               "       trainrt compare --config FILE.json [--optimizers sgd,adam,...]\n"
               "                       [--lrs 1e-3,1e-2] [--out compare.csv]\n"
               "  FILE.json: the Trainer keys (optimizer, lr, weight_decay, momentum, betas,\n"
               "  loss, label_smoothing, huber_delta, smooth_l1_beta, scheduler with\n"
               "  step_size, milestones, gamma, eta_min, max_lr, patience, grad_clip, epochs,\n"
               "  batch_size, amp, grad_accumulation, seed, device, output_dir, max_steps)\n"
               "  plus data, model, checkpoint_dir, early_stopping, resume (see the README)\n");
  return rc;
}

/// The whole of `text` as a finite number, or an Error naming the option. strtod, not std::stod:
/// stod throws out_of_range on a subnormal result (1e-320, a valid lr); a value that underflows
/// to 0 is refused (it is not the number written), as is one that overflows. No leading blanks
/// (strtod skips them).
double number_arg(const char* option, const std::string& text) {
  const char* begin = text.c_str();
  char* end = nullptr;
  errno = 0;
  const double v = text.empty() || std::isspace(static_cast<unsigned char>(text[0]))
                       ? 0.0
                       : std::strtod(begin, &end);
  const int err = errno;
  if (end == nullptr || end == begin || static_cast<std::size_t>(end - begin) != text.size() ||
      !std::isfinite(v)) {
    throw Error(std::string("trainrt: ") + option + " needs a finite number, got '" + text + "'");
  }
  if (err == ERANGE && v == 0.0) {
    throw Error(std::string("trainrt: ") + option + ": '" + text +
                "' underflows to 0 (the smallest positive double is about 4.9e-324)");
  }
  return v;  // ERANGE with v != 0: a subnormal, exact to its precision
}

/// The whole of `text` as a positive integer below 2^31, or an Error naming the option. No
/// leading blanks (stoll skips them).
long long integer_arg(const char* option, const std::string& text) {
  std::size_t used = 0;
  long long v = 0;
  try {
    if (!text.empty() && !std::isspace(static_cast<unsigned char>(text[0])))
      v = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || v <= 0 || v > 2147483647LL) {
    throw Error(std::string("trainrt: ") + option + " needs a positive integer, got '" + text +
                "'");
  }
  return v;
}

/// `v` with the fewest significant digits that read back as `v` (run names and base_lr: two lrs
/// that print alike with %.9g are two runs).
std::string exact_number(double v) {
  char buf[40];
  for (int digits = 1; digits <= 17; ++digits) {
    std::snprintf(buf, sizeof buf, "%.*g", digits, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

/// A layer width from the config: a whole number in [1, 2^24] (wider layers are surely a typo).
std::int64_t width(const json& j, const char* key) {
  if (!j.is_number_integer() || j.get<std::int64_t>() < 1 || j.get<std::int64_t>() > (1 << 24)) {
    throw Error(std::string("trainrt: ") + key + " must hold whole numbers in [1, 16777216], got " +
                j.dump());
  }
  return j.get<std::int64_t>();
}

std::shared_ptr<nn::Module> activation(const std::string& name) {
  if (name == "relu") return std::make_shared<nn::ReLU>();
  if (name == "gelu") return std::make_shared<nn::GELU>();
  if (name == "tanh") return std::make_shared<nn::Tanh>();
  if (name == "sigmoid") return std::make_shared<nn::Sigmoid>();
  throw Error("trainrt: unknown activation \"" + name + "\"");
}

/// The config file: the TrainerConfig keys and the command line's own (data, model,
/// checkpoint_dir, early_stopping, resume), all read and checked before any data is loaded.
struct CliConfig {
  TrainerConfig trainer;
  std::string format = "idx";  // data
  std::string dir;             // idx ("": default_fashion_mnist_dir())
  ImageNormalization norm{0.2860f, 0.3530f};
  std::string train, val, label_column;           // csv
  std::vector<std::int64_t> hidden = {256, 128};  // model
  std::string activation = "relu";
  std::int64_t classes = 0;  // 0: the largest training label + 1
  std::string checkpoint_dir, resume;
  bool early_stopping = false;
  std::int64_t patience = 3;
  double min_delta = 0.0;
  std::string monitor = "val_loss";
  bool restore_best = true;
};

std::string joined(const std::vector<std::string>& names) {
  std::string list;
  for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
  return list;
}

/// Reads `path`; `overrides` (compare's optimizer and lr) replace TrainerConfig keys. Unknown
/// keys, wrong types and bad values are Errors naming the key, as TrainerConfig's are (the
/// typed reads of json_checks.hpp).
CliConfig read_config(const std::string& path, const json& overrides) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw Error("trainrt: cannot read " + path + ": it is a directory");
  std::ifstream in(path);
  if (!in) throw Error("trainrt: cannot open " + path);
  std::string text;
  try {
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  } catch (const std::exception& e) {  // libstdc++'s filebuf throws on a read error
    throw Error("trainrt: cannot read " + path + ": " + e.what());
  }
  if (in.bad()) throw Error("trainrt: cannot read " + path);
  const detail::JsonShape shape = detail::check_json_shape(text, detail::kMaxJsonDepth, true);
  if (!shape.error.empty()) throw Error("trainrt: " + path + ": invalid JSON: " + shape.error);
  if (!shape.duplicate.empty()) {  // nlohmann keeps the last of two: a silent override
    throw Error("trainrt: " + path + ": the key \"" + shape.duplicate + "\" is given twice");
  }
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error("trainrt: " + path + ": invalid JSON: " + e.what());
  }
  const std::string what = "trainrt: " + path + ": ";
  if (!j.is_object()) throw Error(what + "the JSON must be an object");
  auto object = [&](const char* key) {
    const json& v = j[key];
    if (!v.is_object()) throw Error(what + "\"" + key + "\" must be an object, got " + v.dump());
    return v;
  };
  // Each key of `obj` must be one of `known`, named as "<parent>.<key>".
  auto known_keys = [&](const json& obj, const std::string& parent,
                        std::initializer_list<const char*> known, const std::string& note) {
    for (auto it = obj.begin(); it != obj.end(); ++it) {
      bool ok = false;
      for (const char* k : known) ok = ok || it.key() == k;
      if (!ok) {
        std::string list;
        for (const char* k : known) list += std::string(list.empty() ? "" : ", ") + k;
        throw Error(what + "unknown key \"" + parent + "." + it.key() + "\" (" + note + list + ")");
      }
    }
  };
  CliConfig c;
  const json data = j.contains("data") ? object("data") : json::object();
  const json model = j.contains("model") ? object("model") : json::object();
  const json es = j.contains("early_stopping") ? object("early_stopping") : json();
  if (j.contains("checkpoint_dir"))
    c.checkpoint_dir = detail::json_string(j["checkpoint_dir"], what, "checkpoint_dir");
  if (j.contains("resume")) c.resume = detail::json_string(j["resume"], what, "resume");
  for (const char* k : {"data", "model", "checkpoint_dir", "early_stopping", "resume"}) j.erase(k);
  if (overrides.is_object()) j.update(overrides);
  c.trainer = TrainerConfig::from_json(j.dump());

  if (data.contains("format")) c.format = detail::json_string(data["format"], what, "data.format");
  if (c.format == "idx") {
    known_keys(data, "data", {"format", "dir", "mean", "std"}, "format idx takes ");
    if (data.contains("dir")) c.dir = detail::json_string(data["dir"], what, "data.dir");
    auto finite = [&](const char* key, const char* name, bool positive) {
      const double v = detail::json_number(data[key], what, name);
      if (!std::isfinite(v) || (positive && !(v > 0)) || std::fabs(v) > 3.4e38) {
        throw Error(what + "\"" + name + "\" must be a finite number" + (positive ? " > 0" : "") +
                    ", got " + data[key].dump());
      }
      return static_cast<float>(v);
    };
    if (data.contains("mean")) c.norm.mean = finite("mean", "data.mean", false);
    if (data.contains("std")) c.norm.stddev = finite("std", "data.std", true);
  } else if (c.format == "csv") {
    known_keys(data, "data", {"format", "train", "val", "label_column"}, "format csv takes ");
    if (!data.contains("train")) throw Error(what + "data.train (a CSV path) is missing");
    c.train = detail::json_string(data["train"], what, "data.train");
    if (data.contains("val")) c.val = detail::json_string(data["val"], what, "data.val");
    if (data.contains("label_column"))
      c.label_column = detail::json_string(data["label_column"], what, "data.label_column");
  } else {
    throw Error(what + "data.format must be idx or csv, got \"" + c.format + "\"");
  }

  known_keys(model, "model", {"hidden", "activation", "classes"}, "one of ");
  if (model.contains("hidden")) {
    const json& hj = model["hidden"];
    if (!hj.is_array()) throw Error("trainrt: model.hidden must be an array of layer widths");
    c.hidden.clear();
    for (const json& w : hj) c.hidden.push_back(width(w, "model.hidden"));
  }
  if (model.contains("activation")) {
    c.activation = detail::json_string(model["activation"], what, "model.activation");
    if (c.activation != "relu" && c.activation != "gelu" && c.activation != "tanh" &&
        c.activation != "sigmoid") {
      throw Error(what + "\"model.activation\" must be one of relu, gelu, tanh, sigmoid, got " +
                  model["activation"].dump());
    }
  }
  if (model.contains("classes")) {
    if (c.trainer.loss != "cross_entropy")
      throw Error(what + "\"model.classes\" is for the loss cross_entropy, not " + c.trainer.loss);
    c.classes = width(model["classes"], "model.classes");
  }

  if (es.is_object()) {
    c.early_stopping = true;
    known_keys(es, "early_stopping", {"patience", "min_delta", "monitor", "restore_best"},
               "one of ");
    if (es.contains("patience")) {
      c.patience = detail::json_int(es["patience"], what, "early_stopping.patience");
      if (c.patience < 0)
        throw Error(what + "\"early_stopping.patience\" must be >= 0, got " +
                    es["patience"].dump());
    }
    if (es.contains("min_delta")) {
      c.min_delta = detail::json_number(es["min_delta"], what, "early_stopping.min_delta");
      if (!(c.min_delta >= 0) || !std::isfinite(c.min_delta))
        throw Error(what + "\"early_stopping.min_delta\" must be a finite number >= 0, got " +
                    es["min_delta"].dump());
    }
    if (es.contains("monitor")) {
      c.monitor = detail::json_string(es["monitor"], what, "early_stopping.monitor");
      const auto& names = EpochMetrics::names();
      if (std::find(names.begin(), names.end(), c.monitor) == names.end())
        throw Error(what + "\"early_stopping.monitor\" must be one of " + joined(names) + ", got " +
                    es["monitor"].dump());
    }
    if (es.contains("restore_best"))
      c.restore_best = detail::json_bool(es["restore_best"], what, "early_stopping.restore_best");
  }
  return c;
}

struct LrFindArgs {
  bool on = false;
  double start = 1e-7, end = 10.0;
  std::int64_t iters = 100;
  std::string out = "lr_find.csv";
};

// What compare reports of one run: the per-epoch metrics, the lr the run started from and its
// optimizer (the config's after the overrides).
struct CompareRun {
  std::vector<EpochMetrics> history;
  double base_lr = 0.0;
  std::string optimizer;
  // When max_steps ended the run inside an epoch: that epoch so far (running train loss and
  // accuracy, validation at the stop, lr, mean grad norm and samples/s of this run's steps).
  bool partial = false;
  EpochMetrics partial_epoch;
};

/// The last batch of the epoch in progress, and the grad norms of its steps: what there is of
/// an epoch that max_steps ended (fit() keeps no metrics for it).
struct LastBatch : Callback {
  bool seen = false;
  BatchInfo last;
  double norm_sum = 0.0;
  std::int64_t norm_steps = 0;
  void on_epoch_begin(Trainer&, std::int64_t) override {
    seen = false;
    norm_sum = 0.0;
    norm_steps = 0;
  }
  void on_batch_end(Trainer&, const BatchInfo& b) override {
    seen = true;
    last = b;
    if (b.step_end && std::isfinite(b.grad_norm)) {
      norm_sum += b.grad_norm;
      ++norm_steps;
    }
  }
};

// run: set by compare, which keeps no checkpoints and collects what ran there.
int train(const std::string& path, const LrFindArgs& lf = LrFindArgs(),
          const json& overrides = json(), CompareRun* run = nullptr) {
  const CliConfig c = read_config(path, overrides);
  const TrainerConfig& cfg = c.trainer;
  if (run) {
    run->base_lr = cfg.lr;
    run->optimizer = cfg.optimizer;
  }

  std::shared_ptr<TensorDataset> train_ds, val_ds;
  if (c.format == "idx") {
    const std::string dir = c.dir.empty() ? default_fashion_mnist_dir() : c.dir;
    train_ds = std::make_shared<TensorDataset>(load_fashion_mnist(dir, true, c.norm, true));
    val_ds = std::make_shared<TensorDataset>(load_fashion_mnist(dir, false, c.norm, true));
  } else {
    CsvOptions o;
    o.label_column = c.label_column;
    if (cfg.loss != "cross_entropy") o.label_dtype = DType::f32;
    train_ds = std::make_shared<TensorDataset>(read_csv(c.train, o).dataset());
    if (!c.val.empty()) val_ds = std::make_shared<TensorDataset>(read_csv(c.val, o).dataset());
  }
  const Shape fs = train_ds->feature_shape();
  const std::int64_t in_features = shape_numel(fs);
  std::int64_t out_features = 1;
  if (cfg.loss == "cross_entropy") {
    std::int64_t max_label = 0;
    for (auto v : train_ds->labels().to_vector<std::int64_t>()) max_label = std::max(max_label, v);
    if (c.classes == 0 && max_label >= (1 << 24)) {  // as model.classes: surely not a class count
      throw Error("trainrt: the largest training label is " + std::to_string(max_label) +
                  ": the output layer would have " + std::to_string(max_label + 1) +
                  " classes (at most 16777216); set model.classes or check the labels");
    }
    out_features = c.classes > 0 ? c.classes : max_label + 1;
  } else {
    out_features = std::max<std::int64_t>(1, shape_numel(train_ds->label_shape()));
  }

  nn::manual_seed(cfg.seed);
  auto model = std::make_shared<nn::Sequential>();
  std::int64_t prev = in_features;
  for (std::int64_t h : c.hidden) {
    model->add(std::make_shared<nn::Linear>(prev, h));
    model->add(activation(c.activation));
    prev = h;
  }
  model->add(std::make_shared<nn::Linear>(prev, out_features));

  const Device device = cfg.resolved_device();
  DataLoaderOptions lo;
  lo.batch_size = cfg.batch_size;
  lo.shuffle = true;
  lo.seed = cfg.seed;
  lo.device = device;
  DataLoader train_loader(train_ds, lo);
  lo.shuffle = false;
  std::unique_ptr<DataLoader> val_loader;
  if (val_ds) val_loader = std::make_unique<DataLoader>(val_ds, lo);

  Trainer trainer(model, cfg);
  trainer.add_callback(std::make_shared<ProgressBar>(100));
  auto last_batch = std::make_shared<LastBatch>();
  trainer.add_callback(last_batch);
  // EarlyStopping before ModelCheckpoint: the checkpoints then hold its state after the epoch,
  // so a run resumed from them goes on counting as the uninterrupted one.
  if (c.early_stopping) {
    trainer.add_callback(
        std::make_shared<EarlyStopping>(c.patience, c.min_delta, c.monitor, c.restore_best));
  }
  std::shared_ptr<ModelCheckpoint> mc;
  if (!c.checkpoint_dir.empty() && !run) {  // compare runs keep no checkpoints
    mc = std::make_shared<ModelCheckpoint>(c.checkpoint_dir, val_ds ? "val_loss" : "train_loss");
    trainer.add_callback(mc);
  }
  if (!c.resume.empty()) trainer.load(c.resume);
  if (lf.on) {
    const LRFindResult r = trainer.lr_find(train_loader, lf.start, lf.end, lf.iters, lf.out);
    std::printf("trainrt lr-find: %zu steps from %g to %g; suggested lr %.3g\nloss-vs-lr: %s\n",
                r.lrs.size(), lf.start, r.lrs.empty() ? lf.start : r.lrs.back(), r.suggested_lr,
                lf.out.c_str());
    return 0;
  }
  std::printf("trainrt train: %s, %lld train samples, model %lld -> %lld on %s\n", path.c_str(),
              static_cast<long long>(train_ds->size()), static_cast<long long>(in_features),
              static_cast<long long>(out_features), device_description(device).c_str());
  const std::size_t epochs_before = trainer.history().size();  // a resumed run's
  const auto& h = trainer.fit(train_loader, val_loader.get());
  const bool new_epochs = h.size() > epochs_before;  // metrics.csv and the checkpoints written
  // fit() returns inside an epoch only for max_steps (EarlyStopping stops at an epoch's end):
  // steps after the last epoch's end. That epoch has no metrics row and no checkpoint.
  const bool mid_epoch = trainer.global_step() > (h.empty() ? 0 : h.back().global_step);
  const LastBatch& lb = *last_batch;
  const bool classification = cfg.loss == "cross_entropy";
  bool saved_last = false;
  if (mid_epoch && mc) {
    // What ModelCheckpoint writes at epoch ends (Trainer::save), at the stop: "resume" from it
    // continues the run (with a larger max_steps) as the uninterrupted one.
    std::error_code ec;
    std::filesystem::create_directories(c.checkpoint_dir, ec);
    if (ec)
      throw Error("trainrt: cannot create the checkpoint_dir '" + c.checkpoint_dir +
                  "': " + ec.message());
    trainer.save(mc->last_path());
    saved_last = true;
  }
  if (run) {
    run->history = h;
    if (mid_epoch) {
      EpochMetrics& p = run->partial_epoch;
      const double nan = std::numeric_limits<double>::quiet_NaN();
      p.epoch = trainer.epoch();
      p.global_step = trainer.global_step();
      p.train_loss = lb.seen ? lb.last.loss : nan;
      p.train_acc = lb.seen && classification ? lb.last.acc : nan;
      if (val_loader) {  // as fit() validates: the loader from (epoch, 0)
        val_loader->set_epoch(static_cast<std::uint64_t>(trainer.epoch()), 0);
        const EvalResult e = trainer.evaluate(*val_loader);
        p.val_loss = e.loss;
        p.val_acc = e.acc;
      }
      p.lr = trainer.current_lr();
      p.grad_norm = lb.norm_steps > 0 ? lb.norm_sum / static_cast<double>(lb.norm_steps) : nan;
      p.samples_per_sec = lb.seen ? lb.last.samples_per_sec : nan;
      run->partial = true;
    }
  }
  if (mid_epoch) {
    // Epochs counted from 1 here, as ProgressBar does (metrics.csv and compare from 0).
    std::string where =
        "in epoch " + std::to_string(trainer.epoch() + 1) + "/" + std::to_string(cfg.epochs);
    if (lb.seen) {
      char buf[160];
      std::snprintf(buf, sizeof buf, " after batch %lld of %lld (running train_loss %.4f",
                    static_cast<long long>(lb.last.batch + 1),
                    static_cast<long long>(lb.last.num_batches), lb.last.loss);
      where += buf;
      if (classification) {
        std::snprintf(buf, sizeof buf, " train_acc %.4f", lb.last.acc);
        where += buf;
      }
      where += ")";
    }
    std::printf(
        "stopped: max_steps %lld reached %s; the epoch did not end (no validation, no "
        "metrics row)%s\n",
        static_cast<long long>(cfg.max_steps), where.c_str(),
        saved_last ? "; \"resume\" from the last checkpoint with a larger max_steps "
                     "continues it"
                   : "");
  } else if (!h.empty()) {
    const auto& m = h.back();
    std::printf("final: train_loss %.4f val_loss %.4f val_acc %.4f\n", m.train_loss, m.val_loss,
                m.val_acc);
    if (cfg.max_steps > 0 && trainer.global_step() >= cfg.max_steps && trainer.epoch() < cfg.epochs)
      std::printf("stopped: max_steps %lld reached at the end of epoch %lld/%lld\n",
                  static_cast<long long>(cfg.max_steps), static_cast<long long>(trainer.epoch()),
                  static_cast<long long>(cfg.epochs));
  }
  // Only what this run wrote.
  std::error_code ec;
  if (new_epochs && !trainer.metrics_csv_path().empty() &&
      std::filesystem::exists(trainer.metrics_csv_path(), ec))
    std::printf("metrics: %s\n", trainer.metrics_csv_path().c_str());
  if (mc) {
    std::string written;
    if (new_epochs && mc->best_epoch() >= 0 && std::filesystem::exists(mc->best_path(), ec))
      written = mc->best_path() + " (best)";
    if ((new_epochs || saved_last) && std::filesystem::exists(mc->last_path(), ec))
      written += (written.empty() ? "" : ", ") + mc->last_path() + " (last)";
    if (!written.empty()) std::printf("checkpoint: %s\n", written.c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage(2);
  const std::string cmd = argv[1];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") return usage(0);
  if (cmd == "--version") {
    std::printf("trainrt %s (headers %s); %s\n", trainrt::version(), TRAINRT_VERSION_STRING,
                device_description(Device::best()).c_str());
    return 0;
  }
  for (int i = 2; i < argc; ++i) {  // `trainrt train --help` and the like
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") return usage(0);
  }
  try {
    if (cmd == "train") {
      std::string config;
      for (int i = 2; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--config" && i + 1 < argc)
          config = argv[++i];
        else
          return usage(2);
      }
      if (config.empty()) return usage(2);
      return train(config);
    }
    if (cmd == "lr-find") {
      std::string config;
      LrFindArgs lf;
      lf.on = true;
      for (int i = 2; i < argc; ++i) {
        const std::string a = argv[i];
        if (i + 1 >= argc) return usage(2);
        const std::string v = argv[++i];
        if (a == "--config")
          config = v;
        else if (a == "--start")
          lf.start = number_arg("--start", v);
        else if (a == "--end")
          lf.end = number_arg("--end", v);
        else if (a == "--iters")
          lf.iters = static_cast<std::int64_t>(integer_arg("--iters", v));
        else if (a == "--out")
          lf.out = v;
        else
          return usage(2);
      }
      if (config.empty()) return usage(2);
      return train(config, lf);
    }
    if (cmd == "compare") {
      std::string config, out = "compare.csv";
      std::vector<std::string> optimizers;
      std::vector<double> lrs;
      auto split = [](const std::string& v) {
        std::vector<std::string> parts;
        std::stringstream ss(v);
        std::string p;
        while (std::getline(ss, p, ','))
          if (!p.empty()) parts.push_back(p);
        return parts;
      };
      for (int i = 2; i < argc; ++i) {
        const std::string a = argv[i];
        if (i + 1 >= argc) return usage(2);
        const std::string v = argv[++i];
        if (a == "--config") {
          config = v;
        } else if (a == "--optimizers") {
          optimizers = split(v);
          for (std::size_t k = 0; k < optimizers.size(); ++k)
            for (std::size_t m = 0; m < k; ++m)
              if (optimizers[m] == optimizers[k])
                throw Error("trainrt: --optimizers lists " + optimizers[k] + " twice");
        } else if (a == "--lrs") {
          lrs.clear();
          for (const auto& p : split(v)) {
            const double lr = number_arg("--lrs", p);
            if (!(lr > 0)) throw Error("trainrt: --lrs needs finite numbers > 0, got '" + p + "'");
            for (double seen : lrs)
              if (seen == lr) throw Error("trainrt: --lrs lists " + exact_number(lr) + " twice");
            lrs.push_back(lr);
          }
        } else if (a == "--out") {
          out = v;
        } else {
          return usage(2);
        }
      }
      if (config.empty() || (optimizers.empty() && lrs.empty())) return usage(2);
      // "": the config's optimizer; NaN: the config's lr.
      if (optimizers.empty()) optimizers.push_back("");
      if (lrs.empty()) lrs.push_back(std::numeric_limits<double>::quiet_NaN());
      // base_lr: the run's starting lr (the --lrs value, else the config's); lr: the lr at the
      // end of each epoch (after the scheduler), as in metrics.csv.
      std::string csv =
          "run,optimizer,base_lr,epoch,global_step,train_loss,train_acc,val_loss,val_acc,lr,"
          "grad_norm,samples_per_sec,partial\n";
      // %.9g as metrics.csv (std::to_string's 6 decimals would print an lr of 1e-7 as 0).
      auto f = [](double v) {
        if (!std::isfinite(v)) return std::string();
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.9g", v);
        return std::string(buf);
      };
      for (const auto& opt : optimizers) {
        for (double lr : lrs) {
          json o = {{"output_dir", ""}};
          if (!opt.empty()) o["optimizer"] = opt;
          if (!std::isnan(lr)) o["lr"] = lr;
          // Unique: the optimizers and the lrs are distinct (lrs to the last digit).
          const std::string name = (opt.empty() ? std::string("default") : opt) +
                                   (std::isnan(lr) ? std::string() : "@" + exact_number(lr));
          std::printf("== %s\n", name.c_str());
          CompareRun r;
          train(config, LrFindArgs(), o, &r);
          // partial 1: the epoch that max_steps ended (running train loss/accuracy, validation
          // at the stop).
          auto row = [&](const EpochMetrics& m, bool partial) {
            csv += name + "," + r.optimizer + "," + exact_number(r.base_lr) + "," +
                   std::to_string(m.epoch) + "," + std::to_string(m.global_step) + "," +
                   f(m.train_loss) + "," + f(m.train_acc) + "," + f(m.val_loss) + "," +
                   f(m.val_acc) + "," + f(m.lr) + "," + f(m.grad_norm) + "," +
                   f(m.samples_per_sec) + (partial ? ",1\n" : ",0\n");
          };
          for (const auto& m : r.history) row(m, false);
          if (r.partial) row(r.partial_epoch, true);
        }
      }
      write_file_atomic(out, csv.data(), csv.size());
      std::printf("curves: %s\n", out.c_str());
      return 0;
    }
    std::fflush(stdout);
    std::fprintf(stderr, "trainrt: unknown command \"%s\"\n", cmd.c_str());
    return usage(2);
  } catch (const json::exception& e) {  // a config value of the wrong type
    std::fflush(stdout);
    std::fprintf(stderr, "trainrt: a value in the config has the wrong type or is missing: %s\n",
                 e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fflush(stdout);  // what was printed before the error comes first
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
