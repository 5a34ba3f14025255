// bench_lenet's LibTorch training: LeNet in LibTorch with the same initial
// weights, batches and optimizer, a program of its own that bench_lenet starts
// in its child process (Note [Comparison programs]); it takes bench_lenet's flags.
#include <string>
#include <vector>

#include "lenet_bench.hpp"
#include "torch_training.hpp"

namespace {

using namespace tgbench;
using namespace tgbench::lenet;

// --- LibTorch ----------------------------------------------------------------------

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
}  // namespace

int main(int argc, char** argv) {
  return comparison_main("bench_lenet_torch", argc, argv, parse, load_data, train_torch);
}
