// The ResNet example's training (examples/cnn/resnet_model.hpp) in tapegrad
// (compiled) against the same network in LibTorch, in one run: the same
// layers (conv without bias + BatchNorm2d, basic blocks, global mean pool,
// linear), the same initial weights, batches and order, SGD with momentum 0.9
// and weight decay 5e-4 under the same warm-up + cosine schedule. Prints
// seconds per epoch, images/s, test accuracy and peak memory side by side,
// each as a ratio to LibTorch's.
//
//   bench_resnet [--epochs 1] [--threads 2] [--steps N] [--width 32] [--batch 128] [--lr 0.05]
//                [--data DIR] [--no-compare] [--turn-steps 20] [--profile-steps 0]
//
// The trainings run in forked processes that take turns (interleaved.hpp,
// Note [Interleaved trainings]).
#include <cstring>
#include <string>

#include "../examples/cnn/lenet_model.hpp"  // standardise
#include "../examples/cnn/resnet_model.hpp"
#include "interleaved.hpp"
#include "timing.hpp"

#ifdef TAPEGRAD_HAVE_TORCH
#include "torch_training.hpp"
#endif

using cnn::A;

namespace {

using namespace tgbench;

struct Options {
  int epochs = 1, threads = 2, turn_steps = 20, profile_steps = 0;
  std::int64_t steps = 0, width = 32, batch = 128;  // steps per epoch; 0 = the whole training set
  double lr = 0.05, weight_decay = 5e-4;
  std::string data = cnn::kDefaultDataDir;
  bool compare = true;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) tg::fail("bench_resnet", fmt::format("{} needs a value", a));
      return argv[++i];
    };
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
void batch(const Data& d, const std::vector<std::int64_t>& order, std::int64_t s, A& x, A& y) {
  const std::int64_t begin = s * d.batch, end = std::min(begin + d.batch, d.train.size());
  if (x.size() != (end - begin) * 784) x = A::uninitialized({end - begin, 1, 28, 28}), y = A::uninitialized({end - begin});
  cnn::gather_batch(d.train, order, begin, end, x, y);
}

// The learning rate at each step: a linear warm-up over half an epoch, then cosine decay to 0.
tg::optim::WarmupCosine schedule(const Data& d, const Options& o) {
  return {o.lr, std::max<std::int64_t>(1, d.steps / 2), d.steps * o.epochs};
}

Result train_tapegrad(const Data& d, const Options& o, Turns& turns) {
  tg::set_num_threads(o.threads);
  cnn::ResnetParams net = cnn::resnet_init(o.width, 1);
  tg::optim::Sgd sgd(net, {.lr = o.lr, .momentum = 0.9, .weight_decay = o.weight_decay});
  const auto lr = schedule(d, o);
  auto jit = tg::jit(cnn::resnet_loss, {.capacity = 1});  // as the example: one arena resident
  cnn::ResnetParams grads;
  A x, y;
  auto step = [&] {
    const double loss = jit.value_and_gradient_into(grads, net, tg::data(x), tg::data(y));
    sgd.set_lr(lr(sgd.steps()));
    sgd.step(net, grads);
    return loss;
  };
  Result r = train_epochs(
      "tapegrad", o.epochs, d.steps, turns, [&](int e) { return cnn::shuffled(d.train.size(), 1, e); },
      [&](const std::vector<std::int64_t>& order, std::int64_t s) { return batch(d, order, s, x, y), step(); },
      [&] { return cnn::resnet_accuracy(d.test, net, d.test.size()); });
  const auto order = cnn::shuffled(d.train.size(), 1, 0);
  batch(d, order, 0, x, y);
  print_arena(jit, "compiled full-batch step", net, tg::data(x), tg::data(y));
  r.peak_rss_mib = status_mib("VmHWM");
  if (o.profile_steps > 0) {  // full batches: the first of epoch 0's order
    print_step_profile(jit, "tapegrad compiled", o.threads, o.profile_steps, [&](int s) { batch(d, order, s, x, y), step(); },
                       net, tg::data(x), tg::data(y));
  }
  return r;
}

#ifdef TAPEGRAD_HAVE_TORCH
torch::Tensor from(const A& a) {
  return torch::from_blob(const_cast<float*>(a.data()), std::vector<std::int64_t>(a.shape().dims().begin(), a.shape().dims().end()));
}

struct TorchConvBnImpl : torch::nn::Module {
  torch::nn::Conv2d conv{nullptr};
  torch::nn::BatchNorm2d bn{nullptr};
  std::int64_t stride;
  TorchConvBnImpl(const cnn::ConvBn<A>& p, std::int64_t stride_) : stride(stride_) {
    const auto& s = p.w.shape();
    conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(s[1], s[0], s[2]).stride(stride).padding(s[2] / 2).bias(false)));
    bn = register_module("bn", torch::nn::BatchNorm2d(torch::nn::BatchNormOptions(s[0]).momentum(0.1).eps(1e-5)));
    torch::NoGradGuard no_grad;
    conv->weight.copy_(from(p.w));
    bn->weight.copy_(from(p.gamma));
    bn->bias.copy_(from(p.beta));
  }
  torch::Tensor forward(const torch::Tensor& x) { return bn(conv(x)); }
};
TORCH_MODULE(TorchConvBn);

struct TorchBlockImpl : torch::nn::Module {
  TorchConvBn a{nullptr}, b{nullptr}, shortcut{nullptr};
  explicit TorchBlockImpl(const cnn::Block<A>& p) {
    const std::int64_t stride = p.shortcut.empty() ? 1 : 2;
    a = register_module("a", TorchConvBn(p.a, stride));
    b = register_module("b", TorchConvBn(p.b, 1));
    if (!p.shortcut.empty()) shortcut = register_module("shortcut", TorchConvBn(p.shortcut[0], stride));
  }
  torch::Tensor forward(const torch::Tensor& x) {  // the shortcut first, as cnn::block_forward
    const auto skip = shortcut ? shortcut(x) : x;
    return torch::relu(b(torch::relu(a(x))) + skip);
  }
};
TORCH_MODULE(TorchBlock);

struct TorchResnet : torch::nn::Module {
  TorchConvBn stem{nullptr};
  std::vector<TorchBlock> blocks;
  torch::nn::Linear fc{nullptr};
  explicit TorchResnet(const cnn::ResnetParams& p) {
    stem = register_module("stem", TorchConvBn(p.stem, 1));
    for (std::size_t i = 0; i < p.blocks.size(); ++i) blocks.push_back(register_module(fmt::format("block{}", i), TorchBlock(p.blocks[i])));
    fc = register_module("fc", torch::nn::Linear(p.fc_w.shape()[0], 10));
    torch::NoGradGuard no_grad;
    fc->weight.copy_(from(p.fc_w).t());  // tapegrad's linear weights are (in, out)
    fc->bias.copy_(from(p.fc_b));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = torch::relu(stem(x));
    for (auto& b : blocks) x = b(x);
    return fc(torch::adaptive_avg_pool2d(x, {1, 1}).flatten(1));
  }
};

Result train_torch(const Data& d, const Options& o, Turns& turns) {
  torch::set_num_threads(o.threads);
  TorchResnet net(cnn::resnet_init(o.width, 1));
  net.train();
  torch::optim::SGD sgd(net.parameters(), torch::optim::SGDOptions(o.lr).momentum(0.9).weight_decay(o.weight_decay));
  const auto lr = schedule(d, o);
  std::int64_t done = 0;
  A x, y;
  return train_epochs(
      "LibTorch", o.epochs, d.steps, turns, [&](int e) { return cnn::shuffled(d.train.size(), 1, e); },
      [&](const std::vector<std::int64_t>& order, std::int64_t s) {
        batch(d, order, s, x, y);
        for (auto& group : sgd.param_groups()) static_cast<torch::optim::SGDOptions&>(group.options()).lr(lr(done));
        ++done;
        return torch_step(net, sgd, x, y);
      },
      [&] { return torch_accuracy(net, d.test); });
}
#endif

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  Data d{cnn::load_fashion_mnist(o.data, "train"), cnn::load_fashion_mnist(o.data, "t10k"), 0, o.batch};
  cnn::standardise(d.train, d.test);
  const std::int64_t full_steps = (d.train.size() + o.batch - 1) / o.batch;
  d.steps = o.steps > 0 ? std::min(o.steps, full_steps) : full_steps;
  const std::int64_t images = std::min(d.train.size(), d.steps * o.batch);
  fmt::print("{}\n", cpu_line());
  fmt::print("ResNet (width {}) on Fashion-MNIST, {} epoch(s) of {} steps ({} images), batch {}, SGD momentum 0.9 lr {} "
             "warm-up + cosine, weight decay {}, {} threads\n",
             o.width, o.epochs, d.steps, images, o.batch, o.lr, o.weight_decay, o.threads);
  std::vector<const char*> names{"tapegrad compiled"};
  std::vector<Training> trainings{[&](Turns& t) { return train_tapegrad(d, o, t); }};
#ifdef TAPEGRAD_HAVE_TORCH
  if (o.compare) {
    names.push_back("LibTorch");
    trainings.push_back([&](Turns& t) { return train_torch(d, o, t); });
  }
#endif
  if (o.turn_steps > 0) fmt::print("the trainings take turns of {} steps (Note [Interleaved trainings])\n", o.turn_steps);
  const std::vector<Result> results = run_trainings(trainings, o.turn_steps);
  std::vector<Run> runs;
  for (std::size_t i = 0; i < results.size(); ++i) runs.push_back({names[i], results[i]});
  print_table(runs, images);
  return 0;
} catch (const tg::Error& e) {
  fmt::print(stderr, "error: {}\n", e.what());
  return 2;
}
