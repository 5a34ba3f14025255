// Small training helpers for the CNN examples: shuffled mini-batches with a
// fixed seed, dataset statistics, accuracy.
// They live beside the examples: plain loops over tg::Arrays, nothing a
// library core needs.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include <tapegrad/tapegrad.hpp>

#include "fashion_mnist.hpp"

namespace cnn {

using A = tg::Array<float>;

// The sample order of one epoch: a permutation of [0, n) from (seed, epoch).
inline std::vector<std::int64_t> shuffled(std::int64_t n, std::uint64_t seed, int epoch) {
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed * 1000003u + static_cast<std::uint64_t>(epoch));
  std::shuffle(order.begin(), order.end(), rng);
  return order;
}

// Copies samples order[begin, end) into a batch: images (b, 1, 28, 28), standardised
// floats; labels (b) as floats.
inline void gather_batch(const Dataset& d, const std::vector<std::int64_t>& order, std::int64_t begin, std::int64_t end,
                  A& batch_images, A& batch_labels) {
  const float scale = 1.0f / (255.0f * d.stddev), shift = d.mean / d.stddev;
  for (std::int64_t i = begin; i < end; ++i) {
    const std::int64_t s = order[static_cast<std::size_t>(i)];
    const std::uint8_t* src = d.pixels.data() + s * kPixels;
    float* dst = batch_images.data() + (i - begin) * kPixels;
    for (std::int64_t k = 0; k < kPixels; ++k) dst[k] = float(src[k]) * scale - shift;
    batch_labels.data()[i - begin] = static_cast<float>(d.labels[static_cast<std::size_t>(s)]);
  }
}

// Mean and standard deviation of every pixel (byte / 255) of a data set.
inline std::pair<float, float> pixel_statistics(const Dataset& d) {
  double sum = 0, squares = 0;
  for (std::uint8_t b : d.pixels) {
    const double v = b / 255.0;
    sum += v, squares += v * v;
  }
  const double n = double(d.pixels.size()), mean = sum / n;
  return {float(mean), float(std::sqrt(std::max(1e-12, squares / n - mean * mean)))};
}

// Images per evaluation chunk: small, so that evaluation's arrays fit blocks a
// training step freed (Note [Cached large blocks]); chunks of 100 raised
// LeNet's peak memory by 19 MiB and ResNet's by 36 MiB, chunks of 500 LeNet's by 100 MiB.
inline constexpr std::int64_t kEvalChunk = 32;

// Number of rows of logits (n, classes) whose arg-max is the label.
inline std::int64_t correct(const A& logits, const A& labels) {
  const std::int64_t n = logits.shape()[0], c = logits.shape()[1];
  std::int64_t hits = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const float* row = logits.data() + i * c;
    const std::int64_t best = std::max_element(row, row + c) - row;
    hits += best == static_cast<std::int64_t>(labels.data()[i]);
  }
  return hits;
}

}  // namespace cnn
