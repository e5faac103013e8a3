// Fashion-MNIST MLP 784-256-128-10 (ReLU), AdamW, cross_entropy, batch 128, with the Trainer:
// progress bar, validation on the test split each epoch, metrics CSV / JSON lines, best and
// last checkpoints.
//
//   fashion_mnist_mlp [--epochs N] [--data DIR] [--out DIR] [--device auto|cpu|cuda]
//                     [--lr LR] [--seed S]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <memory>
#include <string>

#include "trainrt/trainrt.hpp"

int main(int argc, char** argv) {
  using namespace trainrt;
  std::string data_dir = default_fashion_mnist_dir();
  std::string out_dir = "fashion_mnist_run";
  TrainerConfig cfg;
  cfg.optimizer = "adamw";
  cfg.lr = 1e-3;
  cfg.weight_decay = 1e-4;
  cfg.loss = "cross_entropy";
  cfg.epochs = 10;
  cfg.batch_size = 128;
  cfg.device = "auto";
  cfg.scheduler = "cosine";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--epochs")
      cfg.epochs = std::stoll(value());
    else if (a == "--data")
      data_dir = value();
    else if (a == "--out")
      out_dir = value();
    else if (a == "--device")
      cfg.device = value();
    else if (a == "--lr")
      cfg.lr = std::stod(value());
    else if (a == "--seed")
      cfg.seed = std::stoull(value());
    else {
      std::fprintf(stderr,
                   "usage: %s [--epochs N] [--data DIR] [--out DIR] [--device auto|cpu|cuda] "
                   "[--lr LR] [--seed S]\n",
                   argv[0]);
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  try {
    cfg.output_dir = out_dir;
    const Device device = cfg.resolved_device();
    std::printf("trainrt %s on %s\n", "fashion_mnist_mlp", device_description(device).c_str());

    const ImageNormalization norm{0.2860f, 0.3530f};
    auto train = std::make_shared<TensorDataset>(load_fashion_mnist(data_dir, true, norm, true));
    auto test = std::make_shared<TensorDataset>(load_fashion_mnist(data_dir, false, norm, true));
    std::printf("data: %s (%lld train, %lld test)\n", data_dir.c_str(),
                static_cast<long long>(train->size()), static_cast<long long>(test->size()));

    DataLoaderOptions lo;
    lo.batch_size = cfg.batch_size;
    lo.shuffle = true;
    lo.seed = cfg.seed;
    lo.device = device;
    DataLoader train_loader(train, lo);
    lo.shuffle = false;
    lo.batch_size = 1000;
    DataLoader test_loader(test, lo);

    nn::manual_seed(cfg.seed);
    auto model =
        std::make_shared<nn::Sequential>(std::initializer_list<std::shared_ptr<nn::Module>>{
            std::make_shared<nn::Linear>(784, 256), std::make_shared<nn::ReLU>(),
            std::make_shared<nn::Linear>(256, 128), std::make_shared<nn::ReLU>(),
            std::make_shared<nn::Linear>(128, 10)});

    Trainer trainer(model, cfg);
    const std::string ckpt_dir = (std::filesystem::path(out_dir) / "checkpoints").string();
    auto checkpoint = std::make_shared<ModelCheckpoint>(ckpt_dir, "val_acc");
    trainer.add_callback(std::make_shared<ProgressBar>(100));
    trainer.add_callback(checkpoint);
    const auto t0 = std::chrono::steady_clock::now();
    const auto& history = trainer.fit(train_loader, &test_loader);
    const double total =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    const EvalResult final_eval = trainer.evaluate(test_loader);
    double best_acc = 0.0;
    for (const auto& m : history) best_acc = std::max(best_acc, m.val_acc);
    std::printf("\ntest accuracy: %.2f %% after %zu epochs (best epoch %.2f %%)\n",
                100.0 * final_eval.acc, history.size(), 100.0 * best_acc);
    std::printf("time: %.1f s in all, %.1f s per epoch (training and evaluation)\n", total,
                total / static_cast<double>(history.size()));
    std::printf("metrics: %s\n         %s\n",
                std::filesystem::absolute(trainer.metrics_csv_path()).string().c_str(),
                std::filesystem::absolute(trainer.metrics_jsonl_path()).string().c_str());
    std::printf("checkpoint: %s (best), %s (last)\n",
                std::filesystem::absolute(checkpoint->best_path()).string().c_str(),
                std::filesystem::absolute(checkpoint->last_path()).string().c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fashion_mnist_mlp: %s\n", e.what());
    return 1;
  }
}
