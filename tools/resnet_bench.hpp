// What bench_resnet and its LibTorch program (bench_resnet_torch) share: the
// flags, the data, the batches and the learning-rate schedule.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "../examples/cnn/lenet_model.hpp"  // standardise
#include "../examples/cnn/resnet_model.hpp"
#include "../examples/cnn/run.hpp"  // flag_value
#include "interleaved.hpp"

namespace tgbench::resnet {

using cnn::A;

struct Options {
  int epochs = 1, threads = 2, turn_steps = 20, profile_steps = 0;
  std::int64_t steps = 0, width = 32, batch = 128;  // steps per epoch; 0 = the whole training set
  double lr = 0.05, weight_decay = 5e-4;
  std::string data = cnn::kDefaultDataDir;
  bool compare = true;
};

inline Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&] { return cnn::flag_value(argc, argv, i, "bench_resnet"); };
    if (a == "--epochs") o.epochs = std::stoi(next());
    else if (a == "--threads") o.threads = std::stoi(next());
    else if (a == "--steps") o.steps = std::stoll(next());
    else if (a == "--width") o.width = std::stoll(next());
    else if (a == "--batch") o.batch = std::stoll(next());
    else if (a == "--lr") o.lr = std::stod(next());
    else if (a == "--data") o.data = next();
    else if (a == "--no-compare") o.compare = false;
    else if (a == "--turn-steps") o.turn_steps = std::stoi(next());
    else if (a == "--profile-steps") o.profile_steps = std::stoi(next());
    else tg::fail("bench_resnet", fmt::format("unknown flag {} expected --epochs --threads --steps --width --batch --lr "
                                              "--data --no-compare --turn-steps --profile-steps", a));
  }
  if (o.epochs < 1 || o.epochs > kMaxEpochs || o.threads < 1 || o.steps < 0 || o.width < 1 || o.batch < 2 || o.turn_steps < 0 ||
      o.profile_steps < 0)
    tg::fail("bench_resnet", fmt::format("epochs ({}) threads ({}) steps ({}) width ({}) batch ({}) turn steps ({}) profile "
                                         "steps ({}) expected 1-{} epochs, batch >= 2, threads and width >= 1, the rest >= 0",
                                         o.epochs, o.threads, o.steps, o.width, o.batch, o.turn_steps, o.profile_steps,
                                         kMaxEpochs));
  return o;
}

struct Data {
  cnn::Dataset train, test;
  std::int64_t steps, batch;
};

// Batch s of an epoch (images, labels) in the epoch's shuffled order.
inline void batch(const Data& d, const std::vector<std::int64_t>& order, std::int64_t s, A& x, A& y) {
  const std::int64_t begin = s * d.batch, end = std::min(begin + d.batch, d.train.size());
  if (x.size() != (end - begin) * 784) x = A::uninitialized({end - begin, 1, 28, 28}), y = A::uninitialized({end - begin});
  cnn::gather_batch(d.train, order, begin, end, x, y);
}

// The learning rate at each step: a linear warm-up over half an epoch, then cosine decay to 0.
inline tg::optim::WarmupCosine schedule(const Data& d, const Options& o) {
  return {o.lr, std::max<std::int64_t>(1, d.steps / 2), d.steps * o.epochs};
}

// The training and test sets, standardised, and the steps per epoch.
inline Data load_data(const Options& o) {
  Data d{cnn::load_fashion_mnist(o.data, "train"), cnn::load_fashion_mnist(o.data, "t10k"), 0, o.batch};
  cnn::standardise(d.train, d.test);
  const std::int64_t full_steps = (d.train.size() + o.batch - 1) / o.batch;
  d.steps = o.steps > 0 ? std::min(o.steps, full_steps) : full_steps;
  return d;
}

}  // namespace tgbench::resnet
