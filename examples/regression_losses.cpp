// Robust regression: the same model trained once per loss (MSE, L1, Huber, Smooth-L1) on a
// synthetic linear problem whose TRAINING targets contain large outliers, evaluated on a clean
// test set.
//
//   y = X w + b + noise,  X ~ N(0, 1) [n, features], noise ~ N(0, noise^2)
//   a fraction --outlier-frac of the training targets is replaced by values drawn uniformly
//   from [outlier-scale, 2 * outlier-scale] (one-sided, so they pull a mean-based fit);
//   the test set has no outliers.
//
// Every run starts from the same initial weights (nn::manual_seed) and sees the same batches
// (DataLoader seed). Prints, per loss, the final training loss (in that loss's own units) and
// the clean-test MSE and MAE; writes the per-epoch curves of all runs into one CSV
// (loss,epoch,train_loss,test_mse,test_mae,lr). With --check it exits with status 1 unless
// the L1 and Huber runs reach a clean-test MAE below 0.9 x the MSE run's.
//
//   regression_losses [--train N] [--test N] [--features D] [--hidden H] [--epochs E]
//                     [--batch B] [--lr LR] [--outlier-frac F] [--outlier-scale S]
//                     [--noise SIGMA] [--losses mse,l1,huber,smooth_l1] [--seed S]
//                     [--device auto|cpu|cuda] [--out regression_losses.csv] [--check]
//
// Huber (delta 1) and Smooth-L1 (beta 1) are the same function at these defaults (PyTorch:
// smooth_l1(beta) = huber(delta = beta) / beta), so their rows agree.
#include <algorithm>
#include <cmath>
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
  std::int64_t train = 2000, test = 1000, features = 8, hidden = 0, epochs = 30, batch = 64;
  double lr = 0.05, outlier_frac = 0.1, outlier_scale = 20.0, noise = 0.5;
  std::vector<std::string> losses = {"mse", "l1", "huber", "smooth_l1"};
  std::uint64_t seed = 0;
  std::string device = "auto";
  std::string out = "regression_losses.csv";
  bool check = false;
};

struct Data {
  Tensor x_train, y_train, x_test, y_test;  // host f32: [n, d] and [n]
  std::int64_t outliers = 0;
  double floor_mse = 0.0, floor_mae = 0.0;  // the true function's error on the test set
};

Data make_data(const Options& o) {
  std::mt19937_64 rng(o.seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  const std::int64_t d = o.features;
  std::vector<double> w(static_cast<std::size_t>(d));
  for (auto& v : w) v = normal(rng);
  const double b = 0.5;
  auto sample = [&](std::int64_t n, std::vector<float>& x, std::vector<float>& y,
                    std::vector<double>& noise) {
    x.resize(static_cast<std::size_t>(n * d));
    y.resize(static_cast<std::size_t>(n));
    noise.resize(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) {
      double t = b;
      for (std::int64_t j = 0; j < d; ++j) {
        const double v = normal(rng);
        x[static_cast<std::size_t>(i * d + j)] = static_cast<float>(v);
        t += v * w[static_cast<std::size_t>(j)];
      }
      noise[static_cast<std::size_t>(i)] = o.noise * normal(rng);
      y[static_cast<std::size_t>(i)] = static_cast<float>(t + noise[static_cast<std::size_t>(i)]);
    }
  };
  std::vector<float> xtr, ytr, xte, yte;
  std::vector<double> ntr, nte;
  sample(o.train, xtr, ytr, ntr);
  sample(o.test, xte, yte, nte);

  // Replace a random subset of the training targets by large one-sided outliers.
  Data data;
  data.outliers = static_cast<std::int64_t>(std::llround(o.outlier_frac * o.train));
  std::vector<std::int64_t> idx(static_cast<std::size_t>(o.train));
  for (std::int64_t i = 0; i < o.train; ++i) idx[static_cast<std::size_t>(i)] = i;
  std::shuffle(idx.begin(), idx.end(), rng);
  for (std::int64_t k = 0; k < data.outliers; ++k)
    ytr[static_cast<std::size_t>(idx[static_cast<std::size_t>(k)])] =
        static_cast<float>(o.outlier_scale * (1.0 + uniform(rng)));

  for (double e : nte) {
    data.floor_mse += e * e;
    data.floor_mae += std::fabs(e);
  }
  data.floor_mse /= static_cast<double>(o.test);
  data.floor_mae /= static_cast<double>(o.test);
  data.x_train = Tensor::from_vector(xtr, {o.train, d});
  data.y_train = Tensor::from_vector(ytr, {o.train});
  data.x_test = Tensor::from_vector(xte, {o.test, d});
  data.y_test = Tensor::from_vector(yte, {o.test});
  return data;
}

struct Row {
  std::int64_t epoch = 0;
  double train_loss = 0.0, test_mse = 0.0, test_mae = 0.0, lr = 0.0;
};

// After every epoch: MSE and MAE of the model on the clean test set, in eval mode.
class CleanTestMetrics : public Callback {
 public:
  CleanTestMetrics(const Tensor& x, const Tensor& y) : x_(x), y_(y) {}
  void on_train_begin(Trainer& t) override {
    x_ = x_.to(t.device());
    y_ = y_.reshape({y_.numel(), 1}).to(t.device());
  }
  void on_epoch_end(Trainer& t, const EpochMetrics& m) override {
    nn::Module& model = t.model();
    const bool was_training = model.is_training();
    model.eval();
    const Tensor pred = model.forward(x_);
    if (was_training) model.train();
    LossOptions o;
    o.compute_grad = false;
    Row r;
    r.epoch = m.epoch;
    r.train_loss = m.train_loss;
    r.test_mse = mse_loss(pred, y_, o).loss.item();
    r.test_mae = l1_loss(pred, y_, o).loss.item();
    r.lr = m.lr;
    rows.push_back(r);
  }
  std::vector<Row> rows;

 private:
  Tensor x_, y_;
};

std::vector<Row> run(const Options& o, const Data& data, const std::string& loss) {
  TrainerConfig cfg;
  cfg.optimizer = "adam";
  cfg.lr = o.lr;
  cfg.loss = loss;
  cfg.scheduler = "cosine";
  cfg.epochs = o.epochs;
  cfg.batch_size = o.batch;
  cfg.seed = o.seed;
  cfg.device = o.device;
  const Device device = cfg.resolved_device();

  nn::manual_seed(o.seed);  // the same initial weights for every loss
  auto model = std::make_shared<nn::Sequential>();
  if (o.hidden > 0) {
    model->add(std::make_shared<nn::Linear>(o.features, o.hidden));
    model->add(std::make_shared<nn::ReLU>());
    model->add(std::make_shared<nn::Linear>(o.hidden, 1));
  } else {
    model->add(std::make_shared<nn::Linear>(o.features, 1));
  }
  model->set_input_grad(false);

  auto train = std::make_shared<TensorDataset>(data.x_train, data.y_train);
  DataLoaderOptions lo;
  lo.batch_size = o.batch;
  lo.shuffle = true;
  lo.seed = o.seed;  // the same batches for every loss
  lo.device = device;
  DataLoader loader(train, lo);

  Trainer trainer(model, cfg);
  auto metrics = std::make_shared<CleanTestMetrics>(data.x_test, data.y_test);
  trainer.add_callback(metrics);
  trainer.fit(loader);
  return metrics->rows;
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
  std::fprintf(rc ? stderr : stdout,
               "usage: %s [--train N] [--test N] [--features D] [--hidden H] [--epochs E]\n"
               "          [--batch B] [--lr LR] [--outlier-frac F] [--outlier-scale S]\n"
               "          [--noise SIGMA] [--losses mse,l1,huber,smooth_l1] [--seed S]\n"
               "          [--device auto|cpu|cuda] [--out FILE.csv] [--check]\n"
               "  --hidden 0 (default): a Linear model; H > 0: Linear-ReLU-Linear\n"
               "  --check: exit 1 unless the l1 and huber runs reach a clean-test MAE below\n"
               "           0.9 x the mse run's\n",
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
      if (a == "--check") {
        o.check = true;
        continue;
      }
      if (i + 1 >= argc) return usage(argv[0], 2);
      const std::string v = argv[++i];
      if (a == "--train")
        o.train = std::stoll(v);
      else if (a == "--test")
        o.test = std::stoll(v);
      else if (a == "--features")
        o.features = std::stoll(v);
      else if (a == "--hidden")
        o.hidden = std::stoll(v);
      else if (a == "--epochs")
        o.epochs = std::stoll(v);
      else if (a == "--batch")
        o.batch = std::stoll(v);
      else if (a == "--lr")
        o.lr = std::stod(v);
      else if (a == "--outlier-frac")
        o.outlier_frac = std::stod(v);
      else if (a == "--outlier-scale")
        o.outlier_scale = std::stod(v);
      else if (a == "--noise")
        o.noise = std::stod(v);
      else if (a == "--losses")
        o.losses = split(v);
      else if (a == "--seed")
        o.seed = std::stoull(v);
      else if (a == "--device")
        o.device = v;
      else if (a == "--out")
        o.out = v;
      else
        return usage(argv[0], 2);
    }
  } catch (const std::exception&) {
    std::fprintf(stderr, "regression_losses: bad option value\n");
    return usage(argv[0], 2);
  }
  if (o.train < 1 || o.test < 1 || o.features < 1 || o.hidden < 0 || o.epochs < 1 || o.batch < 1 ||
      !(o.outlier_frac >= 0.0 && o.outlier_frac <= 1.0) || o.losses.empty()) {
    std::fprintf(stderr,
                 "regression_losses: sizes, epochs and batch must be positive, "
                 "--outlier-frac in [0, 1], --losses not empty\n");
    return 2;
  }
  if (o.check) {
    for (const char* need : {"mse", "l1", "huber"})
      if (std::find(o.losses.begin(), o.losses.end(), need) == o.losses.end()) {
        std::fprintf(stderr, "regression_losses: --check needs mse, l1 and huber in --losses\n");
        return 2;
      }
  }

  try {
    const Data data = make_data(o);
    TrainerConfig probe;
    probe.device = o.device;
    std::printf(
        "regression_losses on %s: %lld train samples (%lld outliers in [%g, %g]), "
        "%lld clean test samples, %lld features, %s, Adam lr %g + cosine, %lld epochs, "
        "batch %lld\n",
        device_description(probe.resolved_device()).c_str(), static_cast<long long>(o.train),
        static_cast<long long>(data.outliers), o.outlier_scale, 2 * o.outlier_scale,
        static_cast<long long>(o.test), static_cast<long long>(o.features),
        o.hidden > 0 ? ("MLP hidden " + std::to_string(o.hidden)).c_str() : "Linear", o.lr,
        static_cast<long long>(o.epochs), static_cast<long long>(o.batch));

    std::map<std::string, Row> final_rows;
    std::ostringstream csv;
    csv.precision(9);
    csv << "loss,epoch,train_loss,test_mse,test_mae,lr\n";
    for (const auto& loss : o.losses) {
      const std::vector<Row> rows = run(o, data, loss);
      for (const auto& r : rows)
        csv << loss << ',' << r.epoch << ',' << r.train_loss << ',' << r.test_mse << ','
            << r.test_mae << ',' << r.lr << '\n';
      if (!rows.empty()) final_rows[loss] = rows.back();
    }
    const std::filesystem::path parent = std::filesystem::path(o.out).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent);
    std::ofstream f(o.out, std::ios::binary | std::ios::trunc);
    f << csv.str();
    f.close();
    if (!f) throw Error("regression_losses: cannot write " + o.out);

    std::printf("\n%-10s  %16s  %14s  %14s\n", "loss", "final train loss", "clean test MSE",
                "clean test MAE");
    for (const auto& loss : o.losses) {
      const Row& r = final_rows.at(loss);
      std::printf("%-10s  %16.4f  %14.4f  %14.4f\n", loss.c_str(), r.train_loss, r.test_mse,
                  r.test_mae);
    }
    std::printf("%-10s  %16s  %14.4f  %14.4f\n", "(noise)", "", data.floor_mse, data.floor_mae);
    std::printf(
        "(train loss in each loss's own units; \"(noise)\": the true function's error on "
        "the test set)\ncurves: %s\n",
        o.out.c_str());

    if (o.check) {
      const double mse_mae = final_rows.at("mse").test_mae;
      bool ok = true;
      for (const char* l : {"l1", "huber"}) {
        const double mae = final_rows.at(l).test_mae;
        const bool pass = std::isfinite(mae) && mae < 0.9 * mse_mae;
        std::printf("check: %s clean-test MAE %.4f %s 0.9 x mse's %.4f: %s\n", l, mae,
                    pass ? "<" : ">=", mse_mae, pass ? "ok" : "FAILED");
        ok = ok && pass;
      }
      if (!ok) {
        std::printf("check FAILED: the robust losses did not beat MSE on the clean test set\n");
        return 1;
      }
      std::printf("check passed: l1 and huber beat mse on the clean test set\n");
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "regression_losses: %s\n", e.what());
    return 1;
  }
}
