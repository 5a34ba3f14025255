// What bench_lenet and its LibTorch program (bench_lenet_torch) share: the
// flags, the data and the batches.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "../examples/cnn/lenet_model.hpp"
#include "../examples/cnn/run.hpp"  // flag_value
#include "interleaved.hpp"

namespace tgbench::lenet {

using cnn::A;

struct Options {
  int epochs = 2, threads = 2, profile_steps = 20;
  std::int64_t steps = 0;  // per epoch; 0 = the whole training set
  std::string data = cnn::kDefaultDataDir;
  bool compare = true;
  bool compiled = true;  // also train with compiled tapes (tg::compile)
  bool busy = false;     // a competing CPU-bound process for the whole run
  int turn_steps = 50;   // Note [Interleaved trainings]; 0: one training after another
};

inline Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&] { return cnn::flag_value(argc, argv, i, "bench_lenet"); };
    if (a == "--epochs") o.epochs = std::stoi(next());
    else if (a == "--threads") o.threads = std::stoi(next());
    else if (a == "--steps") o.steps = std::stoll(next());
    else if (a == "--profile-steps") o.profile_steps = std::stoi(next());
    else if (a == "--data") o.data = next();
    else if (a == "--no-compare") o.compare = false;
    else if (a == "--no-compiled") o.compiled = false;
    else if (a == "--turn-steps") o.turn_steps = std::stoi(next());
    else if (a == "--busy") o.busy = true;
    else tg::fail("bench_lenet", fmt::format("unknown flag {} expected --epochs --threads --steps --profile-steps --data "
                                             "--no-compare --no-compiled --turn-steps --busy", a));
  }
  if (o.epochs < 1 || o.epochs > kMaxEpochs || o.threads < 1 || o.steps < 0 || o.turn_steps < 0)
    tg::fail("bench_lenet", fmt::format("epochs ({}) threads ({}) steps ({}) turn steps ({}) expected 1-{} epochs, "
                                        "threads >= 1, steps >= 0, turn steps >= 0",
                                        o.epochs, o.threads, o.steps, o.turn_steps, kMaxEpochs));
  return o;
}

struct Data {
  cnn::Dataset train, test;
  std::int64_t steps;
};

// Batch s of an epoch (images, labels) in the epoch's shuffled order.
inline void batch(const Data& d, const std::vector<std::int64_t>& order, std::int64_t s, A& x, A& y) {
  const std::int64_t begin = s * 64, end = std::min(begin + 64, d.train.size());
  if (x.size() != (end - begin) * 784) x = A::uninitialized({end - begin, 1, 28, 28}), y = A::uninitialized({end - begin});
  cnn::gather_batch(d.train, order, begin, end, x, y);
}

// The training and test sets, standardised, and the steps per epoch.
inline Data load_data(const Options& o) {
  Data d{cnn::load_fashion_mnist(o.data, "train"), cnn::load_fashion_mnist(o.data, "t10k"), 0};
  cnn::standardise(d.train, d.test);
  const std::int64_t full_steps = (d.train.size() + 63) / 64;
  d.steps = o.steps > 0 ? std::min(o.steps, full_steps) : full_steps;
  return d;
}

}  // namespace tgbench::lenet
