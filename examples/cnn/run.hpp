// The training run both CNN examples share: flags, the epoch loop with its
// progress line (loss, rate, ETA), a checkpoint per epoch and --resume, the
// CSV files and the chart, and the quick mode's check. The model comes in as
// values: its parameter tree, the training loss (given to tg::jit) and an
// evaluation function.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "plot.hpp"
#include "training.hpp"

namespace cnn {

struct Options {
  int epochs = 2;
  bool epochs_given = false;  // --quick trains one epoch unless --epochs says otherwise
  std::int64_t batch = 64;
  float lr = 0.01f;
  float weight_decay = 0;
  std::string optimizer = "sgd";
  std::string schedule = "constant";  // or cosine: a linear warm-up over the first half epoch, then cosine decay to 0
  int threads = 0;
  std::uint64_t seed = 1;
  std::string data = kDefaultDataDir;
  bool quick = false;
  bool interpret = false;
  bool resume = false;
  std::string out = ".";
};

// The value after flag argv[i], i moved onto it; an error naming `program` where there is none.
inline std::string flag_value(int argc, char** argv, int& i, const char* program) {
  if (i + 1 >= argc) tg::fail(program, fmt::format("{} needs a value", argv[i]));
  return argv[++i];
}

inline Options parse(int argc, char** argv, const char* program, Options o) {
  auto value = [&](int& i) { return flag_value(argc, argv, i, program); };
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--epochs") o.epochs = std::stoi(value(i)), o.epochs_given = true;
    else if (a == "--batch") o.batch = std::stoll(value(i));
    else if (a == "--lr") o.lr = std::stof(value(i));
    else if (a == "--weight-decay") o.weight_decay = std::stof(value(i));
    else if (a == "--optimizer") o.optimizer = value(i);
    else if (a == "--schedule") o.schedule = value(i);
    else if (a == "--threads") o.threads = std::stoi(value(i));
    else if (a == "--seed") o.seed = std::stoull(value(i));
    else if (a == "--data") o.data = value(i);
    else if (a == "--out") o.out = value(i);
    else if (a == "--quick") o.quick = true;
    else if (a == "--interpret") o.interpret = true;
    else if (a == "--resume") o.resume = true;
    else
      tg::fail(program, fmt::format("unknown flag {} expected one of --epochs --batch --lr --weight-decay --optimizer "
                                    "--schedule --threads --seed --data --quick --interpret --resume --out",
                                    a));
  }
  if (o.epochs < 1 || o.batch < 1 || !(o.lr > 0) || !(o.weight_decay >= 0) || (o.optimizer != "sgd" && o.optimizer != "adam") ||
      (o.schedule != "constant" && o.schedule != "cosine"))
    tg::fail(program, fmt::format("epochs {} batch {} lr {} weight decay {} optimizer {} schedule {} expected positive "
                                  "numbers, sgd or adam, constant or cosine",
                                  o.epochs, o.batch, o.lr, o.weight_decay, o.optimizer, o.schedule));
  return o;
}

inline std::string format_seconds(double s) {
  return s >= 60 ? fmt::format("{}m{:02}s", int(s) / 60, int(s) % 60) : fmt::format("{:.0f}s", s);
}

// What a run reached.
struct RunResult {
  double accuracy = 0;       // after the last epoch
  double first_loss = 0, last_loss = 0;  // mean batch losses at the start and the end
  int first_epoch = 1;       // > 1 after --resume
};

// Trains `net` with `loss` (net, tg::data(images), tg::data(labels)) and reports
// accuracy(test, net, limit) after every epoch. `stem` names the files: DIR/stem.safetensors,
// stem_curve.csv (per step), stem_epochs.csv, stem_curve.svg.
template <class Net, class Loss, class Accuracy>
RunResult train(const Options& o, const std::string& title, const std::string& stem, Net& net, Loss loss, Accuracy accuracy,
                const Dataset& train, const Dataset& test, std::int64_t n_train, std::int64_t n_test, int epochs) {
  using Optimizer = std::variant<tg::optim::Sgd<Net>, tg::optim::Adam<Net>>;
  Optimizer opt = o.optimizer == "sgd"
                      ? Optimizer(tg::optim::Sgd(net, {.lr = o.lr, .momentum = 0.9, .weight_decay = o.weight_decay}))
                      : Optimizer(tg::optim::Adam(net, {.lr = o.lr, .weight_decay = o.weight_decay}));
  // One program at a time: the last, short batch's program replaces the full
  // batch's (and back at the next epoch), so their arenas are never resident
  // together; recording and compiling again costs milliseconds twice an epoch.
  auto step = tg::jit(loss, {.capacity = 1, .compiled = !o.interpret});
  const std::int64_t steps = (n_train + o.batch - 1) / o.batch;
  const std::string checkpoint = o.out + "/" + stem + ".safetensors";
  RunResult result;
  if (o.resume) {
    std::visit([&](auto& optimizer) { tg::load_safetensors(checkpoint, net, optimizer); }, opt);
    const std::int64_t done = std::visit([](auto& optimizer) { return optimizer.steps(); }, opt);
    result.first_epoch = int(done / steps) + 1;
    fmt::print("resumed from {} after epoch {} ({} steps)\n", checkpoint, result.first_epoch - 1, done);
  }
  if (result.first_epoch > epochs) {
    fmt::print("the checkpoint holds {} epoch(s) already: nothing to train (ask for more with --epochs)\n", result.first_epoch - 1);
    return result;
  }
  const tg::optim::WarmupCosine schedule{o.lr, std::max<std::int64_t>(1, steps / 2), steps * epochs};

  Net grads;
  const bool terminal = isatty(fileno(stdout));
  std::vector<double> step_x, step_loss, epoch_x, epoch_acc, epoch_loss;
  const auto start = std::chrono::steady_clock::now();
  for (int epoch = result.first_epoch; epoch <= epochs; ++epoch) {
    const auto order = shuffled(n_train, o.seed, epoch);
    const auto epoch_start = std::chrono::steady_clock::now();
    double running = 0, epoch_sum = 0, last_print = -1;
    for (std::int64_t s = 0; s < steps; ++s) {
      const std::int64_t begin = s * o.batch, b = std::min(o.batch, n_train - begin);
      A x = A::uninitialized({b, 1, 28, 28}), y = A::uninitialized({b});
      gather_batch(train, order, begin, begin + b, x, y);
      const double l = step.value_and_gradient_into(grads, net, tg::data(x), tg::data(y));
      std::visit(
          [&](auto& optimizer) {
            if (o.schedule == "cosine") optimizer.set_lr(schedule(optimizer.steps()));
            optimizer.step(net, grads);
          },
          opt);
      running = s == 0 ? l : 0.98 * running + 0.02 * l;
      epoch_sum += l;
      step_x.push_back(epoch - 1 + double(s + 1) / double(steps));
      step_loss.push_back(l);
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - epoch_start).count();
      const double rate = double(begin + b) / elapsed;
      const double eta = double(n_train - begin - b) / rate + double(epochs - epoch) * double(n_train) / rate;
      const bool last = s + 1 == steps;
      if (terminal ? (elapsed - last_print > 0.25 || last) : (s % std::max<std::int64_t>(1, steps / 10) == 0 || last)) {
        last_print = elapsed;
        fmt::print("{}epoch {}/{}  batch {}/{}  loss {:.4f}  {:.0f} images/s  ETA {}{}", terminal ? "\r" : "", epoch, epochs,
                   s + 1, steps, running, rate, format_seconds(eta), terminal ? "   " : "\n");
        std::fflush(stdout);
      }
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - epoch_start).count();
    const double acc = accuracy(test, net, n_test);
    epoch_x.push_back(epoch);
    epoch_acc.push_back(acc);
    epoch_loss.push_back(epoch_sum / double(steps));
    std::visit([&](auto& optimizer) { tg::save_safetensors(checkpoint, net, optimizer); }, opt);
    fmt::print("{}epoch {}: train loss {:.4f}, test accuracy {:.2f}%, {:.1f} s ({:.0f} images/s); saved {}\n",
               terminal ? "\n" : "", epoch, epoch_loss.back(), 100 * acc, seconds, double(n_train) / seconds, checkpoint);
  }
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  // The files: every step with a 20-step moving average, every epoch, and the chart.
  const std::string steps_csv = o.out + "/" + stem + "_curve.csv", epochs_csv = o.out + "/" + stem + "_epochs.csv";
  const std::string svg = o.out + "/" + stem + "_curve.svg";
  std::ofstream out(steps_csv);
  out << "epoch_progress,batch_loss,smoothed_loss\n";
  std::vector<double> smoothed;
  for (std::size_t i = 0; i < step_x.size(); ++i) {
    const std::size_t from = i >= 19 ? i - 19 : 0;
    double sum = 0;
    for (std::size_t j = from; j <= i; ++j) sum += step_loss[j];
    smoothed.push_back(sum / double(i - from + 1));
    out << fmt::format("{:.5f},{:.6f},{:.6f}\n", step_x[i], step_loss[i], smoothed.back());
  }
  out.close();
  std::ofstream per_epoch(epochs_csv);
  per_epoch << "epoch,train_loss,test_accuracy\n";
  for (std::size_t e = 0; e < epoch_x.size(); ++e) per_epoch << fmt::format("{},{:.6f},{:.4f}\n", epoch_x[e], epoch_loss[e], epoch_acc[e]);
  per_epoch.close();
  const bool drawn = plot_curves(steps_csv, epochs_csv, svg, title);
  if (!epoch_acc.empty()) {
    result.accuracy = epoch_acc.back();
    // Means over the first and the last quarter of the steps (at most 20 each).
    const std::size_t span = std::clamp<std::size_t>(step_loss.size() / 4, 1, 20);
    for (std::size_t i = 0; i < span; ++i) {
      result.first_loss += step_loss[i] / double(span);
      result.last_loss += step_loss[step_loss.size() - 1 - i] / double(span);
    }
    fmt::print("final test accuracy {:.2f}% after {} epoch(s) in {}; curves: {}, {}{}\n", 100 * result.accuracy, epochs,
               format_seconds(total), steps_csv, epochs_csv, drawn ? " and " + svg : "");
  }
  return result;
}

// The quick mode is a test (from scratch): the loss must fall and the accuracy beat chance (10%) clearly.
inline int quick_check(const RunResult& r, double min_accuracy) {
  if (r.first_epoch != 1) return 0;
  const bool ok = r.last_loss < 0.8 * r.first_loss && r.accuracy >= min_accuracy;
  fmt::print("quick check {}: loss {:.3f} -> {:.3f}, accuracy {:.1f}%\n", ok ? "passed" : "FAILED", r.first_loss, r.last_loss,
             100 * r.accuracy);
  return ok ? 0 : 1;
}

}  // namespace cnn
