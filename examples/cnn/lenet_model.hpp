// LeNet for Fashion-MNIST, shared by the lenet example and tools/bench_lenet:
//
//   conv(1->32, 5x5, pad 2) + ReLU + maxpool 2 -> conv(32->64, 5x5, pad 2) + ReLU + maxpool 2
//   -> flatten -> linear(3136->128) + ReLU -> linear(128->10) -> cross-entropy
//
// The model is a plain function of its parameters; the same template runs on
// Tracked values (training, recorded once and replayed) and on plain Arrays
// (evaluation, nothing recorded).
#pragma once

#include <algorithm>
#include <numeric>
#include <vector>

#include "fashion_mnist.hpp"
#include "training.hpp"

namespace cnn {

// The weights and biases, in the order the model takes them (PyTorch's default initialisation).
struct LenetWeights {
  std::vector<A> p;
  explicit LenetWeights(std::uint64_t seed) {
    p.push_back(init_uniform({32, 1, 5, 5}, 25, seed + 1));
    p.push_back(init_uniform({32}, 25, seed + 2));
    p.push_back(init_uniform({64, 32, 5, 5}, 800, seed + 3));
    p.push_back(init_uniform({64}, 800, seed + 4));
    p.push_back(init_uniform({3136, 128}, 3136, seed + 5));
    p.push_back(init_uniform({128}, 3136, seed + 6));
    p.push_back(init_uniform({128, 10}, 128, seed + 7));
    p.push_back(init_uniform({10}, 128, seed + 8));
  }
  std::vector<A*> pointers() {
    std::vector<A*> out;
    for (auto& a : p) out.push_back(&a);
    return out;
  }
};

template <class X, class P>
auto lenet_logits(const X& x, const P& w1, const P& b1, const P& w2, const P& b2, const P& w3, const P& b3, const P& w4,
                  const P& b4) {
  const std::int64_t n = x.shape()[0];
  auto h = tg::maxpool(tg::relu(tg::conv(x, w1, b1, {.padding = {2}})), {.window = {2}});  // (n, 32, 14, 14)
  h = tg::maxpool(tg::relu(tg::conv(h, w2, b2, {.padding = {2}})), {.window = {2}});       // (n, 64, 7, 7)
  auto f = tg::relu(tg::matmul(tg::reshape(h, {n, 3136}), w3) + b3);                       // (n, 3136) @ (3136, 128)
  return tg::matmul(f, w4) + b4;                                                           // (n, 128) @ (128, 10)
}

using TrackedF = tg::Tracked<float>;

inline TrackedF lenet_loss(const TrackedF& x, const TrackedF& labels, const TrackedF& w1, const TrackedF& b1,
                           const TrackedF& w2, const TrackedF& b2, const TrackedF& w3, const TrackedF& b3,
                           const TrackedF& w4, const TrackedF& b4) {
  return tg::cross_entropy(lenet_logits(x, w1, b1, w2, b2, w3, b3, w4, b4), labels);
}

// The training step as a replayable program: images and labels are data (no gradient).
inline auto record_lenet_step(const A& x, const A& y, const LenetWeights& P) {
  auto tape = tg::record(lenet_loss, x, y, P.p[0], P.p[1], P.p[2], P.p[3], P.p[4], P.p[5], P.p[6], P.p[7]);
  tape.set_needs_grad(0, false);  // conv1 computes no input gradient
  tape.set_needs_grad(1, false);
  return tape;
}
using LenetTape = decltype(record_lenet_step(A(), A(), LenetWeights(0)));
using CompiledLenet = decltype(tg::compile(std::declval<const LenetTape&>()));

// Replays the step on a batch; grads[k] receives parameter k's gradient. Returns the loss.
// Program: the recorded tape (LenetTape) or its compiled form (tg::compile).
template <class Program>
float lenet_gradient(Program& tape, const A& x, const A& y, const LenetWeights& P, std::vector<A>& grads) {
  grads.resize(P.p.size());
  std::array<A*, 10> into{};  // nothing for the images and labels
  for (std::size_t k = 0; k < grads.size(); ++k) into[k + 2] = &grads[k];
  tape.gradient_into(into, x, y, P.p[0], P.p[1], P.p[2], P.p[3], P.p[4], P.p[5], P.p[6], P.p[7]);
  return tape.value();
}

// Images per evaluation chunk: the training batch's size, so that evaluation's
// arrays fit the blocks a training step freed (Note [Cached large blocks]);
// chunks of 100 raised the peak memory by 19 MiB, chunks of 500 by 100 MiB.
inline constexpr std::int64_t kEvalChunk = 32;

// Test accuracy over the first `limit` images, in chunks of kEvalChunk on plain Arrays.
inline double lenet_accuracy(const Dataset& test, const LenetWeights& P, std::int64_t limit) {
  const std::int64_t n = std::min(limit, test.size()), chunk = kEvalChunk;
  std::int64_t hits = 0;
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));  // the test set in its own order
  std::iota(order.begin(), order.end(), 0);
  for (std::int64_t i = 0; i < n; i += chunk) {
    const std::int64_t b = std::min(chunk, n - i);
    A x = A::uninitialized({b, 1, 28, 28}), y = A::uninitialized({b});
    gather_batch(test, order, i, i + b, x, y);
    hits += correct(lenet_logits(x, P.p[0], P.p[1], P.p[2], P.p[3], P.p[4], P.p[5], P.p[6], P.p[7]), y);
  }
  return double(hits) / double(n);
}

// Standardises every pixel of both sets with the training set's mean and
// standard deviation (0.286, 0.353): 2 epochs then reach 89.4% instead of
// 87.4% on raw [0, 1] pixels.
inline void standardise(Dataset& train, Dataset& test) {
  const auto [mean, stddev] = pixel_statistics(train);
  for (auto* d : {&train, &test}) d->mean = mean, d->stddev = stddev;
}

}  // namespace cnn
