// A small residual network with batch norm for Fashion-MNIST (28 x 28, one channel):
//
//   stem: conv 3x3 (1 -> w) + BN + ReLU                                   28 x 28
//   block(w -> w), block(w -> 2w, stride 2), block(2w -> 4w, stride 2)    28, 14, 7
//   global mean pool -> linear(4w -> 10) -> cross-entropy
//
// A block is conv 3x3 + BN + ReLU, conv 3x3 + BN, plus its input (through a
// 1x1 conv + BN where the shape changes), then ReLU: He et al.'s basic block.
// The parameters are plain structs of arrays, templates over the array type;
// the running statistics are tg::BatchNormState fields beside the weights.
#pragma once

#include <algorithm>
#include <numeric>
#include <vector>

#include "fashion_mnist.hpp"
#include "training.hpp"

namespace cnn {

template <class Arr>
struct ConvBn {
  Arr w, gamma, beta;  // w (out, in, k, k); gamma, beta (out)
  tg::BatchNormState<Arr> bn;
};
template <class Arr>
struct Block {
  ConvBn<Arr> a, b;
  std::vector<ConvBn<Arr>> shortcut;  // empty: the identity; one 1x1 conv where channels or size change
};
template <class Arr>
struct Resnet {
  ConvBn<Arr> stem;
  std::vector<Block<Arr>> blocks;
  Arr fc_w, fc_b;  // (4w, 10), (10)
};
using ResnetParams = Resnet<A>;

// PyTorch's defaults: conv weights kaiming-uniform (a = sqrt(5)), gamma 1, beta 0, running mean 0 and variance 1.
inline ConvBn<A> conv_bn_init(std::int64_t out, std::int64_t in, std::int64_t k, std::uint64_t seed) {
  return {tg::init::conv_weight<float>({out, in, k, k}, seed), A::ones({out}), A::zeros({out}), tg::batch_norm_state<float>(out)};
}

inline ResnetParams resnet_init(std::int64_t width, std::uint64_t seed) {
  ResnetParams net{conv_bn_init(width, 1, 3, seed), {}, tg::init::linear_weight<float>(4 * width, 10, seed + 1),
                   tg::init::bias<float>(10, 4 * width, seed + 2)};
  std::int64_t in = width;
  for (const std::int64_t out : {width, 2 * width, 4 * width}) {
    seed += 10;
    Block<A> b{conv_bn_init(out, in, 3, seed), conv_bn_init(out, out, 3, seed + 1), {}};
    if (out != in) b.shortcut.push_back(conv_bn_init(out, in, 1, seed + 2));
    net.blocks.push_back(std::move(b));
    in = out;
  }
  return net;
}

// conv (k x k, "same" padding) then batch norm; Tracked or plain values.
template <class P, class X>
auto conv_bn(const P& c, const X& x, std::int64_t stride, bool training) {
  const std::int64_t k = c.w.shape()[2];
  return tg::batch_norm(tg::conv(x, c.w, {.stride = {stride}, .padding = {k / 2}}), c.gamma, c.beta, c.bn, {.training = training});
}

// A block downsamples by 2 where it has a shortcut conv (its channels change).
// The shortcut comes first: its conv and the block's first conv then read x
// one after the other, forward and backward, while x is still in cache.
template <class P, class X>
X block_forward(const P& b, const X& x, bool training) {
  const std::int64_t stride = b.shortcut.empty() ? 1 : 2;
  const X skip = b.shortcut.empty() ? x : conv_bn(b.shortcut[0], x, stride, training);
  const X h = conv_bn(b.b, tg::relu(conv_bn(b.a, x, stride, training)), 1, training);
  return tg::relu(h + skip);
}

// Logits (n, 10) of images x (n, 1, 28, 28).
template <class P, class X>
X resnet_logits(const P& net, const X& x, bool training) {
  const std::int64_t n = x.shape()[0];
  X h = tg::relu(conv_bn(net.stem, x, 1, training));
  for (const auto& b : net.blocks) h = block_forward(b, h, training);
  const std::int64_t channels = h.shape()[1];
  return tg::matmul(tg::reshape(tg::global_meanpool(h), {n, channels}), net.fc_w) + net.fc_b;  // (n, 4w) @ (4w, 10)
}

// The training loss (batch statistics, running statistics updated); images and labels as tg::data.
inline constexpr auto resnet_loss = [](const auto& net, const auto& x, const auto& labels) {
  return tg::cross_entropy(resnet_logits(net, x, true), labels);
};

// Test accuracy over the first `limit` images, evaluation mode (running statistics), on plain Arrays.
inline double resnet_accuracy(const Dataset& test, const ResnetParams& net, std::int64_t limit) {
  const std::int64_t n = std::min(limit, test.size()), chunk = kEvalChunk;
  std::int64_t hits = 0;
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  for (std::int64_t i = 0; i < n; i += chunk) {
    const std::int64_t b = std::min(chunk, n - i);
    A x = A::uninitialized({b, 1, 28, 28}), y = A::uninitialized({b});
    gather_batch(test, order, i, i + b, x, y);
    hits += correct(resnet_logits(net, x, false), y);
  }
  return double(hits) / double(n);
}

}  // namespace cnn
