// Seeded initialisers with PyTorch's formulas (torch.nn.init), as plain Arrays.
//
//   Net<tg::Array<float>> net{.conv_w = tg::init::kaiming_uniform<float>({32, 1, 5, 5}, 25, /*seed=*/1), ...};
//   tg::init::conv_weight<float>({32, 1, 5, 5}, 1)    // PyTorch's default for a conv or linear layer
//   tg::init::conv_bias<float>(32, /*fan_in=*/25, 2)
//
// fan_in is given explicitly: a conv weight (K, C, kh, kw) has C kh kw; a
// matmul weight (in, out), as tapegrad's linear layers hold it, has `in`
// (fan_in_fan_out reads the PyTorch layout (out, in, kernel...)).
#pragma once

#include <cmath>
#include <cstdint>
#include <utility>

#include <fmt/format.h>

#include "tapegrad/kernels/array.hpp"
#include "tapegrad/kernels/error.hpp"

namespace tg::init {

struct Fans {
  std::int64_t in = 0, out = 0;
};
// torch.nn.init's fans of a weight in PyTorch's layout (out, in, kernel...): in * kernel, out * kernel.
inline Fans fan_in_fan_out(const Shape& s) {
  if (s.rank() < 2) fail("init::fan_in_fan_out", fmt::format("shape {} expected rank 2 or more", to_string(s)));
  std::int64_t field = 1;
  for (std::size_t d = 2; d < s.rank(); ++d) field *= s[d];
  return {s[1] * field, s[0] * field};
}

namespace detail {
inline void check_fan(const char* op, std::int64_t fan) {
  if (fan <= 0) fail(op, fmt::format("fan {} expected a positive number of inputs", fan));
}
// torch.nn.init.calculate_gain("leaky_relu", a)
inline double leaky_relu_gain(double a) { return std::sqrt(2.0 / (1.0 + a * a)); }
}  // namespace detail

// U(-b, b) with b = gain sqrt(3 / fan_in), gain = sqrt(2 / (1 + a^2)); PyTorch's
// conv and linear layers use a = sqrt(5), which gives b = 1 / sqrt(fan_in).
template <class T>
Array<T> kaiming_uniform(Shape shape, std::int64_t fan_in, std::uint64_t seed, double a = 0) {
  detail::check_fan("init::kaiming_uniform", fan_in);
  const double bound = detail::leaky_relu_gain(a) * std::sqrt(3.0 / double(fan_in));
  return Array<T>::random_uniform(std::move(shape), T(-bound), T(bound), seed);
}
// N(0, gain / sqrt(fan_in)).
template <class T>
Array<T> kaiming_normal(Shape shape, std::int64_t fan_in, std::uint64_t seed, double a = 0) {
  detail::check_fan("init::kaiming_normal", fan_in);
  return Array<T>::random_normal(std::move(shape), T(0), T(detail::leaky_relu_gain(a) / std::sqrt(double(fan_in))), seed);
}
// U(-b, b) with b = gain sqrt(6 / (fan_in + fan_out)).
template <class T>
Array<T> xavier_uniform(Shape shape, std::int64_t fan_in, std::int64_t fan_out, std::uint64_t seed, double gain = 1) {
  detail::check_fan("init::xavier_uniform", fan_in + fan_out);
  const double bound = gain * std::sqrt(6.0 / double(fan_in + fan_out));
  return Array<T>::random_uniform(std::move(shape), T(-bound), T(bound), seed);
}
// N(0, gain sqrt(2 / (fan_in + fan_out))).
template <class T>
Array<T> xavier_normal(Shape shape, std::int64_t fan_in, std::int64_t fan_out, std::uint64_t seed, double gain = 1) {
  detail::check_fan("init::xavier_normal", fan_in + fan_out);
  return Array<T>::random_normal(std::move(shape), T(0), T(gain * std::sqrt(2.0 / double(fan_in + fan_out))), seed);
}

// PyTorch's default for nn.Conv*d and nn.Linear weights: kaiming_uniform with
// a = sqrt(5), fan_in from the (out, in, kernel...) layout.
template <class T>
Array<T> conv_weight(Shape shape, std::uint64_t seed) {
  const std::int64_t fan_in = fan_in_fan_out(shape).in;
  return kaiming_uniform<T>(std::move(shape), fan_in, seed, std::sqrt(5.0));
}
// A (in, out) matmul weight with nn.Linear's default: U(-1/sqrt(in), 1/sqrt(in)).
template <class T>
Array<T> linear_weight(std::int64_t in, std::int64_t out, std::uint64_t seed) {
  return kaiming_uniform<T>(Shape{in, out}, in, seed, std::sqrt(5.0));
}
// The bias rule of both: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
template <class T>
Array<T> bias(std::int64_t size, std::int64_t fan_in, std::uint64_t seed) {
  detail::check_fan("init::bias", fan_in);
  const double bound = 1.0 / std::sqrt(double(fan_in));
  return Array<T>::random_uniform(Shape{size}, T(-bound), T(bound), seed);
}

}  // namespace tg::init
