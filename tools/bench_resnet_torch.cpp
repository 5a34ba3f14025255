// bench_resnet's LibTorch training: the ResNet example's network in LibTorch
// (the same layers, initial weights, batches, optimizer and schedule), a
// program of its own that bench_resnet starts in its child process
// (Note [Comparison programs]); it takes bench_resnet's flags.
#include <string>
#include <vector>

#include "resnet_bench.hpp"
#include "torch_training.hpp"

namespace {

using namespace tgbench;
using namespace tgbench::resnet;

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
}  // namespace

int main(int argc, char** argv) {
  return comparison_main("bench_resnet_torch", argc, argv, parse, load_data, train_torch);
}
