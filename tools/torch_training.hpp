// What the training benchmarks do the same way in LibTorch: one SGD step of
// cross-entropy on a batch of tg::Arrays, and test accuracy in evaluation mode
// over the chunks tapegrad's examples evaluate in (cnn::kEvalChunk).
#pragma once

#include <numeric>
#include <vector>

#include <torch/torch.h>

#include "../examples/cnn/training.hpp"

namespace tgbench {

// One step on images x (b, 1, 28, 28) and labels y (b); returns the loss.
template <class Net>
double torch_step(Net& net, torch::optim::Optimizer& opt, cnn::A& x, cnn::A& y) {
  const std::int64_t b = x.shape()[0];
  opt.zero_grad();
  auto loss = torch::nn::functional::cross_entropy(net.forward(torch::from_blob(x.data(), {b, 1, 28, 28})),
                                                   torch::from_blob(y.data(), {b}).to(torch::kLong));
  loss.backward();
  opt.step();
  return loss.template item<double>();
}

// Test accuracy with net.eval() (batch norm's running statistics), then back to training mode.
template <class Net>
double torch_accuracy(Net& net, const cnn::Dataset& test) {
  torch::NoGradGuard no_grad;
  net.eval();
  std::int64_t hits = 0;
  std::vector<std::int64_t> order(static_cast<std::size_t>(test.size()));
  std::iota(order.begin(), order.end(), 0);
  for (std::int64_t i = 0; i < test.size(); i += cnn::kEvalChunk) {
    const std::int64_t b = std::min<std::int64_t>(cnn::kEvalChunk, test.size() - i);
    cnn::A x = cnn::A::uninitialized({b, 1, 28, 28}), y = cnn::A::uninitialized({b});
    cnn::gather_batch(test, order, i, i + b, x, y);
    const auto logits = net.forward(torch::from_blob(x.data(), {b, 1, 28, 28}));
    hits += logits.argmax(1).eq(torch::from_blob(y.data(), {b}).to(torch::kLong)).sum().template item<std::int64_t>();
  }
  net.train();
  return double(hits) / double(test.size());
}

}  // namespace tgbench
