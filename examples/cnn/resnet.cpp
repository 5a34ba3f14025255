// Trains a small residual network with batch norm on Fashion-MNIST
// (resnet_model.hpp): parameter trees with the running statistics beside
// the weights, tg::jit (batch norm's running statistics move once per
// replayed step), tg::optim's SGD with momentum and weight decay under a
// warm-up + cosine schedule, a checkpoint per epoch and --resume, the same
// progress line, CSV files and chart as LeNet (run.hpp).
// --input-penalty L trains on loss + L |d loss / d images|^2 (input-gradient
// regularisation): the gradient is taken inside the step, so each step
// differentiates a gradient (second order), recorded, compiled and replayed
// like any step.
//
//   resnet [--epochs 5] [--batch 128] [--lr 0.05] [--weight-decay 5e-4] [--width 32] [--input-penalty 0]
//          [--optimizer sgd|adam] [--schedule cosine|constant] [--threads N] [--seed 1]
//          [--data DIR] [--quick] [--interpret] [--resume] [--out DIR]
#include <cmath>
#include <cstring>

#include "lenet_model.hpp"  // standardise
#include "resnet_model.hpp"
#include "run.hpp"

int main(int argc, char** argv) try {
  // --width and --input-penalty are this example's own flags; the rest are run.hpp's.
  std::int64_t width = 32;
  float penalty = 0;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strcmp(argv[i], "--width") == 0 && i + 1 < argc) width = std::stoll(argv[++i]);
    else if (std::strcmp(argv[i], "--input-penalty") == 0 && i + 1 < argc) penalty = std::stof(argv[++i]);
    else args.push_back(argv[i]);
  }
  if (width < 1 || width > 512) tg::fail("resnet", fmt::format("--width {} expected 1 to 512", width));
  if (!(penalty >= 0 && std::isfinite(penalty))) tg::fail("resnet", fmt::format("--input-penalty {} expected a weight >= 0", penalty));
  const cnn::Options o = cnn::parse(int(args.size()), args.data(), "resnet",
                                    {.epochs = 5, .batch = 128, .lr = 0.05f, .weight_decay = 5e-4f, .schedule = "cosine"});
  if (o.threads > 0) tg::set_num_threads(o.threads);
  cnn::Dataset train = cnn::load_fashion_mnist(o.data, "train");
  cnn::Dataset test = cnn::load_fashion_mnist(o.data, "t10k");
  cnn::standardise(train, test);
  const std::int64_t n_train = o.quick ? std::min<std::int64_t>(3200, train.size()) : train.size();
  const std::int64_t n_test = o.quick ? std::min<std::int64_t>(1000, test.size()) : test.size();
  const int epochs = o.quick && !o.epochs_given ? 1 : o.epochs;
  fmt::print("ResNet (width {}) on Fashion-MNIST: {} training and {} test images, {} epoch(s), batch {}, {} lr {} ({}), "
             "weight decay {}, {} threads, {}{}\n",
             width, n_train, n_test, epochs, o.batch, o.optimizer, o.lr, o.schedule, o.weight_decay, tg::num_threads(),
             o.interpret ? "interpreted tapes" : "compiled tapes",
             penalty > 0 ? fmt::format(", loss + {} |d loss / d images|^2", penalty) : std::string());
  cnn::ResnetParams net = cnn::resnet_init(width, o.seed);
  // The penalised loss: one evaluation of the loss gives its value and its
  // gradient in the images (batch norm's running statistics move once a step).
  auto penalised = [penalty](const auto& n, const auto& images, const auto& labels) {
    const auto value_and_grad = tg::value_and_gradient([&](const auto& x) { return cnn::resnet_loss(n, x, labels); }, images);
    const auto& grad = std::get<1>(value_and_grad);
    return std::get<0>(value_and_grad) + tg::sum(grad * grad) * penalty;
  };
  const std::string stem = penalty > 0 ? "resnet_penalty" : "resnet";
  const std::string title = fmt::format("ResNet (width {}{}) on Fashion-MNIST (tapegrad)", width,
                                        penalty > 0 ? fmt::format(", input-gradient penalty {}", penalty) : std::string());
  const cnn::RunResult r = penalty > 0 ? cnn::train(o, title, stem, net, penalised, cnn::resnet_accuracy, train, test, n_train, n_test, epochs)
                                       : cnn::train(o, title, stem, net, cnn::resnet_loss, cnn::resnet_accuracy, train, test, n_train,
                                                    n_test, epochs);
  return o.quick ? cnn::quick_check(r, 0.3) : 0;  // 25 steps: batch norm's running statistics are young
} catch (const tg::Error& e) {
  fmt::print(stderr, "error: {}\n", e.what());
  return 2;
}
