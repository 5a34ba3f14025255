// Trains LeNet on Fashion-MNIST: the project's main job.
//
// The parameters are a struct (lenet_model.hpp). tg::jit records and compiles
// the loss once per batch shape (dead code removed, activations fused into
// conv and matmul, one planned arena) and replays it every step; the last,
// partial batch gets a program of its own. --interpret replays the recorded
// tapes with the interpreter instead (same numbers, more memory). tg::optim's
// SGD with momentum 0.9 (or Adam), lr 0.01, batch 64 by default; pixels
// standardised with the training set's mean and standard deviation. Each
// epoch ends with a checkpoint (DIR/lenet.safetensors: the weights and the
// optimizer's state); --resume continues from it.
//
//   lenet [--epochs 2] [--batch 64] [--lr 0.01] [--optimizer sgd|adam] [--threads N]
//         [--seed 1] [--data DIR] [--quick] [--interpret] [--resume] [--out DIR]
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <variant>

#include "lenet_model.hpp"
#include "plot.hpp"

using cnn::A;

namespace {

struct Options {
  int epochs = 2;
  bool epochs_given = false;  // --quick trains one epoch unless --epochs says otherwise
  std::int64_t batch = 64;
  float lr = 0.01f;
  std::string optimizer = "sgd";
  int threads = 0;
  std::uint64_t seed = 1;
  std::string data = cnn::kDefaultDataDir;
  bool quick = false;
  bool interpret = false;
  bool resume = false;
  std::string out = ".";
};

Options parse(int argc, char** argv) {
  Options o;
  auto value = [&](int& i) -> std::string {
    if (i + 1 >= argc) tg::fail("lenet", fmt::format("{} needs a value", argv[i]));
    return argv[++i];
  };
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--epochs") o.epochs = std::stoi(value(i)), o.epochs_given = true;
    else if (a == "--batch") o.batch = std::stoll(value(i));
    else if (a == "--lr") o.lr = std::stof(value(i));
    else if (a == "--optimizer") o.optimizer = value(i);
    else if (a == "--threads") o.threads = std::stoi(value(i));
    else if (a == "--seed") o.seed = std::stoull(value(i));
    else if (a == "--data") o.data = value(i);
    else if (a == "--out") o.out = value(i);
    else if (a == "--quick") o.quick = true;
    else if (a == "--interpret") o.interpret = true;
    else if (a == "--resume") o.resume = true;
    else tg::fail("lenet", fmt::format("unknown flag {} expected one of --epochs --batch --lr --optimizer --threads --seed "
                                       "--data --quick --interpret --resume --out", a));
  }
  if (o.epochs < 1 || o.batch < 1 || !(o.lr > 0) || (o.optimizer != "sgd" && o.optimizer != "adam"))
    tg::fail("lenet", fmt::format("epochs {} batch {} lr {} optimizer {} expected positive numbers and sgd or adam", o.epochs,
                                  o.batch, o.lr, o.optimizer));
  return o;
}

std::string format_seconds(double s) {
  return s >= 60 ? fmt::format("{}m{:02}s", int(s) / 60, int(s) % 60) : fmt::format("{:.0f}s", s);
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  if (o.threads > 0) tg::set_num_threads(o.threads);
  cnn::Dataset train = cnn::load_fashion_mnist(o.data, "train");
  cnn::Dataset test = cnn::load_fashion_mnist(o.data, "t10k");
  cnn::standardise(train, test);
  const std::int64_t n_train = o.quick ? std::min<std::int64_t>(6400, train.size()) : train.size();
  const std::int64_t n_test = o.quick ? std::min<std::int64_t>(2000, test.size()) : test.size();
  const int epochs = o.quick && !o.epochs_given ? 1 : o.epochs;
  fmt::print("LeNet on Fashion-MNIST: {} training and {} test images, {} epoch(s), batch {}, {} lr {}, {} threads, {}\n",
             n_train, n_test, epochs, o.batch, o.optimizer, o.lr, tg::num_threads(),
             o.interpret ? "interpreted tapes" : "compiled tapes");

  cnn::LenetParams net = cnn::lenet_init(o.seed);
  using Optimizer = std::variant<tg::optim::Sgd<cnn::LenetParams>, tg::optim::Adam<cnn::LenetParams>>;
  Optimizer opt = o.optimizer == "sgd" ? Optimizer(tg::optim::Sgd(net, {.lr = o.lr, .momentum = 0.9}))
                                       : Optimizer(tg::optim::Adam(net, {.lr = o.lr}));
  auto step = tg::jit(cnn::lenet_loss, {.compiled = !o.interpret});
  const std::int64_t steps = (n_train + o.batch - 1) / o.batch;
  const std::string checkpoint = o.out + "/lenet.safetensors";
  int first_epoch = 1;
  if (o.resume) {
    std::visit([&](auto& optimizer) { tg::load_safetensors(checkpoint, net, optimizer); }, opt);
    const std::int64_t done = std::visit([](auto& optimizer) { return optimizer.steps(); }, opt);
    first_epoch = int(done / steps) + 1;
    fmt::print("resumed from {} after epoch {} ({} steps)\n", checkpoint, first_epoch - 1, done);
  }
  if (first_epoch > epochs) {
    fmt::print("the checkpoint holds {} epoch(s) already: nothing to train (ask for more with --epochs)\n", first_epoch - 1);
    return 0;
  }

  cnn::LenetParams grads;
  const bool terminal = isatty(fileno(stdout));
  std::vector<double> step_x, step_loss, epoch_x, epoch_acc, epoch_loss;
  const auto start = std::chrono::steady_clock::now();
  for (int epoch = first_epoch; epoch <= epochs; ++epoch) {
    const auto order = cnn::shuffled(n_train, o.seed, epoch);
    const auto epoch_start = std::chrono::steady_clock::now();
    double running = 0, epoch_sum = 0, last_print = -1;
    for (std::int64_t s = 0; s < steps; ++s) {
      const std::int64_t begin = s * o.batch, b = std::min(o.batch, n_train - begin);
      A x = A::uninitialized({b, 1, 28, 28}), y = A::uninitialized({b});
      cnn::gather_batch(train, order, begin, begin + b, x, y);
      const double l = step.value_and_gradient_into(grads, net, tg::data(x), tg::data(y));
      std::visit([&](auto& optimizer) { optimizer.step(net, grads); }, opt);
      running = s == 0 ? l : 0.98 * running + 0.02 * l;
      epoch_sum += l;
      step_x.push_back(epoch - 1 + double(s + 1) / double(steps));
      step_loss.push_back(l);
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - epoch_start).count();
      const double rate = double(begin + b) / elapsed;
      const double eta = double(n_train - begin - b) / rate;
      const bool last = s + 1 == steps;
      if (terminal ? (elapsed - last_print > 0.25 || last) : (s % std::max<std::int64_t>(1, steps / 10) == 0 || last)) {
        last_print = elapsed;
        fmt::print("{}epoch {}/{}  batch {}/{}  loss {:.4f}  {:.0f} images/s  ETA {}{}", terminal ? "\r" : "", epoch, epochs,
                   s + 1, steps, running, rate, format_seconds(eta), terminal ? "   " : "\n");
        std::fflush(stdout);
      }
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - epoch_start).count();
    const double acc = cnn::lenet_accuracy(test, net, n_test);
    epoch_x.push_back(epoch);
    epoch_acc.push_back(acc);
    epoch_loss.push_back(epoch_sum / double(steps));
    std::visit([&](auto& optimizer) { tg::save_safetensors(checkpoint, net, optimizer); }, opt);
    fmt::print("{}epoch {}: train loss {:.4f}, test accuracy {:.2f}%, {:.1f} s ({:.0f} images/s); saved {}\n",
               terminal ? "\n" : "", epoch, epoch_loss.back(), 100 * acc, seconds, double(n_train) / seconds, checkpoint);
  }
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  const std::string csv = o.out + "/lenet_curve.csv", svg = o.out + "/lenet_curve.svg";
  std::ofstream out(csv);
  out << "epoch_progress,batch_loss,test_accuracy\n";
  for (std::size_t i = 0; i < step_x.size(); ++i) {
    out << fmt::format("{:.5f},{:.6f},", step_x[i], step_loss[i]);
    for (std::size_t e = 0; e < epoch_x.size(); ++e)
      if (std::abs(step_x[i] - epoch_x[e]) < 1e-9) out << fmt::format("{:.4f}", epoch_acc[e]);
    out << "\n";
  }
  // the plotted loss: averages over 20 steps
  cnn::Series loss_series{"training loss", "#1f77b4", {}, {}}, acc_series{"test accuracy", "#d62728", {0}, {0.1}};
  for (std::size_t i = 0; i < step_x.size(); i += 20) {
    double sum = 0;
    const std::size_t end = std::min(step_x.size(), i + 20);
    for (std::size_t j = i; j < end; ++j) sum += step_loss[j];
    loss_series.x.push_back(step_x[end - 1]);
    loss_series.y.push_back(sum / double(end - i));
  }
  for (std::size_t e = 0; e < epoch_x.size(); ++e) {
    acc_series.x.push_back(epoch_x[e]);
    acc_series.y.push_back(epoch_acc[e]);
  }
  cnn::write_svg(svg, "LeNet on Fashion-MNIST (tapegrad)", "epoch", {loss_series, acc_series});
  fmt::print("final test accuracy {:.2f}% after {} epoch(s) in {}; curve: {} and {}\n", 100 * epoch_acc.back(), epochs,
             format_seconds(total), csv, svg);
  // The quick mode is a test (from scratch): the loss must fall and the accuracy beat chance (10%) clearly.
  if (o.quick && first_epoch == 1) {
    const double first = loss_series.y.front(), final_loss = loss_series.y.back();
    if (!(final_loss < 0.8 * first) || epoch_acc.back() < 0.5) {
      fmt::print("quick check FAILED: loss {:.3f} -> {:.3f}, accuracy {:.1f}%\n", first, final_loss, 100 * epoch_acc.back());
      return 1;
    }
    fmt::print("quick check passed: loss {:.3f} -> {:.3f}, accuracy {:.1f}%\n", first, final_loss, 100 * epoch_acc.back());
  }
  return 0;
} catch (const tg::Error& e) {
  fmt::print(stderr, "error: {}\n", e.what());
  return 2;
}
