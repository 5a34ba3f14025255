// LeNet training on Fashion-MNIST, tapegrad (interpreted and compiled) against LibTorch in one run: the
// same network, initial weights, batches (same shuffled order), SGD momentum
// 0.9, lr 0.01, batch 64, pixel standardisation. Prints seconds per epoch,
// images/s and test accuracy for both, their ratio, the peak memory of each,
// and per-step profiles of a tapegrad training step: the compiled program's
// steps (fused activations shown with their conv) and the interpreter's instructions.
//
//   bench_lenet [--epochs 2] [--threads 2] [--steps N] [--data DIR] [--no-compare] [--no-compiled]
//               [--profile-steps 20] [--turn-steps 50] [--busy]
//
// --busy runs the trainings beside a competing CPU-bound process (a loaded machine, issue 20).
// The trainings run in forked processes that take turns (interleaved.hpp,
// Note [Interleaved trainings]).
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <optional>
#include <string>

#include "../examples/cnn/lenet_model.hpp"
#include "interleaved.hpp"
#include "timing.hpp"

#ifdef TAPEGRAD_HAVE_TORCH
#include "torch_training.hpp"
#endif

using cnn::A;

namespace {

using namespace tgbench;

struct Options {
  int epochs = 2, threads = 2, profile_steps = 20;
  std::int64_t steps = 0;  // per epoch; 0 = the whole training set
  std::string data = cnn::kDefaultDataDir;
  bool compare = true;
  bool compiled = true;  // also train with compiled tapes (tg::compile)
  bool busy = false;     // a competing CPU-bound process for the whole run
  int turn_steps = 50;   // Note [Interleaved trainings]; 0: one training after another
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) tg::fail("bench_lenet", fmt::format("{} needs a value", a));
      return argv[++i];
    };
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
void batch(const Data& d, const std::vector<std::int64_t>& order, std::int64_t s, A& x, A& y) {
  const std::int64_t begin = s * 64, end = std::min(begin + 64, d.train.size());
  if (x.size() != (end - begin) * 784) x = A::uninitialized({end - begin, 1, 28, 28}), y = A::uninitialized({end - begin});
  cnn::gather_batch(d.train, order, begin, end, x, y);
}

// --- tapegrad --------------------------------------------------------------------

// Trains with the interpreter (replayed tapes) or with compiled tapes (the
// recorded tape is dropped once compiled, so only the compiled program's memory counts).
Result train_tapegrad(const Data& d, const Options& o, bool compiled, Turns& turns) {
  tg::set_num_threads(o.threads);
  cnn::LenetParams net = cnn::lenet_init(1);
  tg::optim::Sgd sgd(net, {.lr = 0.01, .momentum = 0.9});
  auto jit = tg::jit(cnn::lenet_loss, {.compiled = compiled});
  cnn::LenetParams grads;
  A x, y;
  auto step = [&]() -> float { return jit.value_and_gradient_into(grads, net, tg::data(x), tg::data(y)); };
  const char* name = compiled ? "tapegrad compiled" : "tapegrad";
  Result r = train_epochs(
      name, o.epochs, d.steps, turns, [&](int e) { return cnn::shuffled(d.train.size(), 1, e); },
      [&](const std::vector<std::int64_t>& order, std::int64_t s) {
        batch(d, order, s, x, y);
        const float loss = step();
        sgd.step(net, grads);
        return loss;
      },
      [&] { return cnn::lenet_accuracy(d.test, net, d.test.size()); });
  const auto order = cnn::shuffled(d.train.size(), 1, 0);
  batch(d, order, 0, x, y);
  print_arena(jit, "compiled batch-64 step", net, tg::data(x), tg::data(y));
  r.peak_rss_mib = status_mib("VmHWM");
  if (o.profile_steps > 0)  // batch-64 steps only: the first batches of epoch 0's order
    print_step_profile(jit, name, o.threads, o.profile_steps, [&](int s) { batch(d, order, s, x, y), step(); }, net, tg::data(x),
                       tg::data(y));
  return r;
}

// --- LibTorch ----------------------------------------------------------------------

#ifdef TAPEGRAD_HAVE_TORCH
struct TorchLenet : torch::nn::Module {
  torch::nn::Conv2d conv1{torch::nn::Conv2dOptions(1, 32, 5).padding(2)};
  torch::nn::Conv2d conv2{torch::nn::Conv2dOptions(32, 64, 5).padding(2)};
  torch::nn::Linear fc1{3136, 128}, fc2{128, 10};
  TorchLenet() {
    register_module("conv1", conv1);
    register_module("conv2", conv2);
    register_module("fc1", fc1);
    register_module("fc2", fc2);
  }
  torch::Tensor forward(torch::Tensor x) {
    x = torch::max_pool2d(torch::relu(conv1(x)), 2);
    x = torch::max_pool2d(torch::relu(conv2(x)), 2);
    x = torch::relu(fc1(x.flatten(1)));
    return fc2(x);
  }
  // The same initial weights as tapegrad's (its linear weights are (in, out): transposed here).
  void copy_from(const cnn::LenetParams& P) {
    torch::NoGradGuard no_grad;
    auto from = [](const A& a) {
      return torch::from_blob(const_cast<float*>(a.data()), std::vector<std::int64_t>(a.shape().dims().begin(), a.shape().dims().end()));
    };
    conv1->weight.copy_(from(P.conv1_w));
    conv1->bias.copy_(from(P.conv1_b));
    conv2->weight.copy_(from(P.conv2_w));
    conv2->bias.copy_(from(P.conv2_b));
    fc1->weight.copy_(from(P.fc1_w).t());
    fc1->bias.copy_(from(P.fc1_b));
    fc2->weight.copy_(from(P.fc2_w).t());
    fc2->bias.copy_(from(P.fc2_b));
  }
};

Result train_torch(const Data& d, const Options& o, Turns& turns) {
  torch::set_num_threads(o.threads);
  TorchLenet net;
  net.copy_from(cnn::lenet_init(1));
  torch::optim::SGD sgd(net.parameters(), torch::optim::SGDOptions(0.01).momentum(0.9));
  A x, y;
  return train_epochs(
      "LibTorch", o.epochs, d.steps, turns, [&](int e) { return cnn::shuffled(d.train.size(), 1, e); },
      [&](const std::vector<std::int64_t>& order, std::int64_t s) {
        batch(d, order, s, x, y);
        return torch_step(net, sgd, x, y);
      },
      [&] { return torch_accuracy(net, d.test); });
}
#endif

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  Data d{cnn::load_fashion_mnist(o.data, "train"), cnn::load_fashion_mnist(o.data, "t10k"), 0};
  cnn::standardise(d.train, d.test);
  const std::int64_t full_steps = (d.train.size() + 63) / 64;
  d.steps = o.steps > 0 ? std::min(o.steps, full_steps) : full_steps;
  const std::int64_t images = std::min(d.train.size(), d.steps * 64);
  fmt::print("{}\n", cpu_line());
  fmt::print("LeNet on Fashion-MNIST, {} epoch(s) of {} steps ({} images), batch 64, SGD momentum 0.9 lr 0.01, {} threads\n",
             o.epochs, d.steps, images, o.threads);
  std::vector<const char*> names;
  std::vector<Training> trainings;
  if (o.compiled) {
    names.push_back("tapegrad compiled");
    trainings.push_back([&](Turns& t) { return train_tapegrad(d, o, true, t); });
  }
  names.push_back("tapegrad");
  trainings.push_back([&](Turns& t) { return train_tapegrad(d, o, false, t); });
#ifdef TAPEGRAD_HAVE_TORCH
  if (o.compare) {
    names.push_back("LibTorch");
    trainings.push_back([&](Turns& t) { return train_torch(d, o, t); });
  }
#endif
  if (o.turn_steps > 0)
    fmt::print("the trainings take turns of {} steps (Note [Interleaved trainings]; --turn-steps 0: one after another)\n",
               o.turn_steps);
  std::optional<CompetingLoad> load;
  if (o.busy) load.emplace();
  const std::vector<Result> results = run_trainings(trainings, o.turn_steps);
  load.reset();
  std::vector<Run> runs;
  for (std::size_t i = 0; i < results.size(); ++i) runs.push_back({names[i], results[i]});
  print_table(runs, images);
  return 0;
} catch (const tg::Error& e) {
  fmt::print(stderr, "error: {}\n", e.what());
  return 2;
}
