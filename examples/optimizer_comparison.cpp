// Optimizer comparison: the same MLP (same seed, same initial weights, same batches) trained
// once per optimizer (SGD, SGD + momentum, Adam, AdamW, RMSprop) with the Trainer, on
// Fashion-MNIST (when its IDX files are found) or on a seeded synthetic classification set.
// Writes the per-epoch curves of all runs into ONE CSV
//   optimizer,epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds
// and prints a summary table. Plot it with
//   scripts/plot_metrics.py optimizer_comparison.csv --group-by optimizer --out plots/
//
//   optimizer_comparison [--data DIR | --synthetic] [--train-samples N] [--val-samples N]
//                        [--epochs E] [--batch B] [--hidden H] [--scheduler none|cosine]
//                        [--optimizers sgd,sgd_momentum,adam,adamw,rmsprop] [--lr NAME=LR]
//                        [--seed S] [--device auto|cpu|cuda] [--out optimizer_comparison.csv]
//
// Without --data or --synthetic it uses Fashion-MNIST from default_fashion_mnist_dir() if the
// files are there, else the synthetic set. The synthetic set: 10 classes, 64 features,
// x = centre[class] + N(0, 1), centres ~ N(0, 0.35^2) per feature (overlapping classes).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "trainrt/trainrt.hpp"

using namespace trainrt;

namespace {

struct Options {
  std::string data_dir;  // empty: the default directory if it holds the files
  bool synthetic = false;
  std::int64_t train_samples = 0, val_samples = 0;  // 0: all (Fashion-MNIST) / 4000, 1000
  std::int64_t epochs = 5, batch = 128, hidden = 128;
  std::string scheduler = "cosine";
  std::vector<std::string> optimizers = {"sgd", "sgd_momentum", "adam", "adamw", "rmsprop"};
  std::map<std::string, double> lrs = {{"sgd", 0.05},   {"sgd_momentum", 0.01}, {"adam", 1e-3},
                                       {"adamw", 1e-3}, {"rmsprop", 1e-3},      {"adagrad", 1e-2},
                                       {"radam", 1e-3}, {"lamb", 1e-2}};
  std::uint64_t seed = 0;
  std::string device = "auto";
  std::string out = "optimizer_comparison.csv";
};

// The first n rows of a host dataset (all of it when n <= 0 or n >= size).
std::shared_ptr<TensorDataset> head(const TensorDataset& ds, std::int64_t n) {
  if (n <= 0 || n >= ds.size()) return std::make_shared<TensorDataset>(ds);
  Shape fs = ds.features().shape(), ls = ds.labels().shape();
  fs[0] = n;
  ls[0] = n;
  return std::make_shared<TensorDataset>(
      Tensor::from_host(ds.features().data(), fs, ds.features().dtype()),
      Tensor::from_host(ds.labels().data(), ls, ds.labels().dtype()));
}

TensorDataset synthetic(std::int64_t n, std::uint64_t seed, const std::vector<double>& centres,
                        std::int64_t classes, std::int64_t d) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_int_distribution<std::int64_t> cls(0, classes - 1);
  std::vector<float> x(static_cast<std::size_t>(n * d));
  std::vector<std::int64_t> y(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t c = cls(rng);
    y[static_cast<std::size_t>(i)] = c;
    for (std::int64_t j = 0; j < d; ++j)
      x[static_cast<std::size_t>(i * d + j)] =
          static_cast<float>(centres[static_cast<std::size_t>(c * d + j)] + normal(rng));
  }
  return TensorDataset(Tensor::from_vector(x, {n, d}), Tensor::from_vector(y, {n}));
}

// An optimizer of this example by name: the Trainer's names plus sgd_momentum (SGD, 0.9).
TrainerConfig config_for(const Options& o, const std::string& name) {
  TrainerConfig cfg;
  cfg.optimizer = name == "sgd_momentum" ? "sgd" : name;
  if (name == "sgd_momentum") cfg.momentum = 0.9;
  const auto lr = o.lrs.find(name);
  if (lr == o.lrs.end()) throw Error("optimizer_comparison: no lr for \"" + name + "\" (--lr)");
  cfg.lr = lr->second;
  cfg.loss = "cross_entropy";
  cfg.scheduler = o.scheduler;
  cfg.epochs = o.epochs;
  cfg.batch_size = o.batch;
  cfg.seed = o.seed;
  cfg.device = o.device;
  cfg.validate();  // an unknown optimizer or scheduler name fails here, before any training
  return cfg;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string p;
  while (std::getline(ss, p, ','))
    if (!p.empty()) out.push_back(p);
  return out;
}

int usage(const char* argv0, int rc) {
  std::fprintf(
      rc ? stderr : stdout,
      "usage: %s [--data DIR | --synthetic] [--train-samples N] [--val-samples N]\n"
      "          [--epochs E] [--batch B] [--hidden H] [--scheduler none|cosine|...]\n"
      "          [--optimizers sgd,sgd_momentum,adam,adamw,rmsprop] [--lr NAME=LR]...\n"
      "          [--seed S] [--device auto|cpu|cuda] [--out FILE.csv]\n"
      "  optimizers: sgd, sgd_momentum (SGD with momentum 0.9), adam, adamw, rmsprop,\n"
      "  adagrad, radam, lamb; default lrs: sgd 0.05, sgd_momentum 0.01, adam/adamw/rmsprop/\n"
      "  radam 1e-3, adagrad/lamb 1e-2\n"
      "  --train-samples / --val-samples: the first N examples (0: all of Fashion-MNIST;\n"
      "  synthetic: 4000 and 1000)\n",
      argv0);
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--help" || a == "-h") return usage(argv[0], 0);
      if (a == "--synthetic") {
        o.synthetic = true;
        continue;
      }
      if (i + 1 >= argc) return usage(argv[0], 2);
      const std::string v = argv[++i];
      if (a == "--data")
        o.data_dir = v;
      else if (a == "--train-samples")
        o.train_samples = std::stoll(v);
      else if (a == "--val-samples")
        o.val_samples = std::stoll(v);
      else if (a == "--epochs")
        o.epochs = std::stoll(v);
      else if (a == "--batch")
        o.batch = std::stoll(v);
      else if (a == "--hidden")
        o.hidden = std::stoll(v);
      else if (a == "--scheduler")
        o.scheduler = v;
      else if (a == "--optimizers")
        o.optimizers = split(v);
      else if (a == "--lr") {
        const auto eq = v.find('=');
        if (eq == std::string::npos || eq == 0) return usage(argv[0], 2);
        o.lrs[v.substr(0, eq)] = std::stod(v.substr(eq + 1));
      } else if (a == "--seed")
        o.seed = std::stoull(v);
      else if (a == "--device")
        o.device = v;
      else if (a == "--out")
        o.out = v;
      else
        return usage(argv[0], 2);
    }
  } catch (const std::exception&) {
    std::fprintf(stderr, "optimizer_comparison: bad option value\n");
    return usage(argv[0], 2);
  }
  if (o.synthetic && !o.data_dir.empty()) {
    std::fprintf(stderr, "optimizer_comparison: --data and --synthetic exclude each other\n");
    return 2;
  }
  if (o.epochs < 1 || o.batch < 1 || o.hidden < 1 || o.train_samples < 0 || o.val_samples < 0 ||
      o.optimizers.empty()) {
    std::fprintf(stderr,
                 "optimizer_comparison: epochs, batch and hidden must be positive, "
                 "sample counts >= 0, --optimizers not empty\n");
    return 2;
  }

  try {
    std::vector<TrainerConfig> configs;
    for (const auto& name : o.optimizers) configs.push_back(config_for(o, name));
    const Device device = configs.front().resolved_device();

    // Data: Fashion-MNIST (flattened, normalised as the demo) or the synthetic set.
    std::shared_ptr<TensorDataset> train, val;
    std::string source;
    if (!o.synthetic) {
      const std::string dir = o.data_dir.empty() ? default_fashion_mnist_dir() : o.data_dir;
      const bool found = std::filesystem::exists(dir + "/train-labels-idx1-ubyte.gz") ||
                         std::filesystem::exists(dir + "/train-labels-idx1-ubyte");
      if (found || !o.data_dir.empty()) {  // a --data that does not load is an error
        const ImageNormalization norm{0.2860f, 0.3530f};
        train = head(load_fashion_mnist(dir, true, norm, true), o.train_samples);
        val = head(load_fashion_mnist(dir, false, norm, true), o.val_samples);
        source = "Fashion-MNIST (" + dir + ")";
      } else {
        std::printf("no Fashion-MNIST in %s: using the synthetic set (--data DIR to point at it)\n",
                    dir.c_str());
      }
    }
    if (!train) {
      const std::int64_t classes = 10, d = 64;
      std::mt19937_64 rng(o.seed + 1000);
      std::normal_distribution<double> normal(0.0, 0.35);
      std::vector<double> centres(static_cast<std::size_t>(classes * d));
      for (auto& c : centres) c = normal(rng);
      train = std::make_shared<TensorDataset>(
          synthetic(o.train_samples > 0 ? o.train_samples : 4000, o.seed + 1, centres, classes, d));
      val = std::make_shared<TensorDataset>(
          synthetic(o.val_samples > 0 ? o.val_samples : 1000, o.seed + 2, centres, classes, d));
      source = "synthetic (10 classes, 64 features)";
    }
    const std::int64_t in_features = shape_numel(train->feature_shape());
    std::int64_t classes = 0;
    for (auto v : train->labels().to_vector<std::int64_t>()) classes = std::max(classes, v + 1);
    std::printf(
        "optimizer_comparison on %s: %s, %lld train / %lld val samples, MLP %lld-%lld-%lld "
        "(ReLU), batch %lld, %lld epochs, scheduler %s\n",
        device_description(device).c_str(), source.c_str(), static_cast<long long>(train->size()),
        static_cast<long long>(val->size()), static_cast<long long>(in_features),
        static_cast<long long>(o.hidden), static_cast<long long>(classes),
        static_cast<long long>(o.batch), static_cast<long long>(o.epochs), o.scheduler.c_str());

    std::ostringstream csv;
    csv.precision(9);
    csv << "optimizer,epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds\n";
    struct Summary {
      double lr = 0, train_loss = 0, val_loss = 0, val_acc = 0, best_acc = 0, seconds = 0;
    };
    std::vector<Summary> summary;
    for (std::size_t k = 0; k < o.optimizers.size(); ++k) {
      const std::string& name = o.optimizers[k];
      nn::manual_seed(o.seed);  // the same initial weights for every optimizer
      auto model =
          std::make_shared<nn::Sequential>(std::initializer_list<std::shared_ptr<nn::Module>>{
              std::make_shared<nn::Linear>(in_features, o.hidden), std::make_shared<nn::ReLU>(),
              std::make_shared<nn::Linear>(o.hidden, classes)});
      model->set_input_grad(false);
      DataLoaderOptions lo;
      lo.batch_size = o.batch;
      lo.shuffle = true;
      lo.seed = o.seed;  // the same batches for every optimizer
      lo.device = device;
      DataLoader train_loader(train, lo);
      lo.shuffle = false;
      lo.batch_size = 1000;
      DataLoader val_loader(val, lo);

      std::printf("== %s (lr %g)\n", name.c_str(), configs[k].lr);
      std::fflush(stdout);
      Trainer trainer(model, configs[k]);
      const auto& h = trainer.fit(train_loader, &val_loader);
      Summary s;
      s.lr = configs[k].lr;
      for (const auto& m : h) {
        csv << name << ',' << m.epoch << ',' << m.train_loss << ',' << m.train_acc << ','
            << m.val_loss << ',' << m.val_acc << ',' << m.lr << ',' << m.seconds << '\n';
        std::printf("   epoch %lld: train loss %.4f, val loss %.4f, val acc %.4f\n",
                    static_cast<long long>(m.epoch + 1), m.train_loss, m.val_loss, m.val_acc);
        s.best_acc = std::max(s.best_acc, m.val_acc);
        s.seconds += m.seconds;
      }
      if (!h.empty()) {
        s.train_loss = h.back().train_loss;
        s.val_loss = h.back().val_loss;
        s.val_acc = h.back().val_acc;
      }
      summary.push_back(s);
    }
    const std::filesystem::path parent = std::filesystem::path(o.out).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent);
    std::ofstream f(o.out, std::ios::binary | std::ios::trunc);
    f << csv.str();
    f.close();
    if (!f) throw Error("optimizer_comparison: cannot write " + o.out);

    std::printf("\n%-13s  %8s  %10s  %9s  %8s  %9s  %8s\n", "optimizer", "lr", "train loss",
                "val loss", "val acc", "best acc", "seconds");
    for (std::size_t k = 0; k < o.optimizers.size(); ++k) {
      const Summary& s = summary[k];
      std::printf("%-13s  %8g  %10.4f  %9.4f  %7.2f%%  %8.2f%%  %8.2f\n", o.optimizers[k].c_str(),
                  s.lr, s.train_loss, s.val_loss, 100.0 * s.val_acc, 100.0 * s.best_acc, s.seconds);
    }
    std::printf("curves: %s\n", o.out.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "optimizer_comparison: %s\n", e.what());
    return 1;
  }
}
