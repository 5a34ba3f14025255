// Small models whose tapes the tape-file and tapedump tests save, load, print and
// compare. Golden dumps name this file without its line numbers, and every conv
// and filter forces its algorithms, so they do not change with the host's CPU.
#pragma once

#include <tapegrad/tapegrad.hpp>

namespace tgtest::models {

// conv, relu, maxpool, tanh, reshape, matmul, cross_entropy (labels: no gradient).
template <class T>
tg::Tracked<T> small_cnn(const tg::Tracked<T>& x, const tg::Tracked<T>& labels, const tg::Tracked<T>& w1,
                         const tg::Tracked<T>& b1, const tg::Tracked<T>& w2) {
  const std::int64_t n = x.shape()[0];
  auto h = tg::maxpool(tg::relu(tg::conv(x, w1, b1, {.padding = {1}, .algorithm = tg::ConvAlgorithm::implicit_gemm})), {.window = {2}});
  return tg::cross_entropy(tg::matmul(tg::reshape(tg::tanh(h), {n, 27}), w2), labels);
}

template <class T>
auto small_cnn_inputs() {
  using A = tg::Array<T>;
  return std::tuple{A::random_uniform({2, 2, 6, 6}, T(-1), T(1), 1), A({2}, {T(0), T(3)}),
                    A::random_uniform({3, 2, 3, 3}, T(-1), T(1), 2), A::random_uniform({3}, T(-1), T(1), 3),
                    A::random_uniform({27, 4}, T(-1), T(1), 4)};
}

// Every op with parameters at least once, with non-default parameters.
template <class T>
tg::Tracked<T> every_param(const tg::Tracked<T>& x, const tg::Tracked<T>& w) {
  using A = tg::Array<T>;
  auto c = tg::conv(x, w, {.stride = {1, 2}, .pad_lo = {1, 0}, .pad_hi = {0, 1}, .dilation = {1}, .flip = true,
                           .forward_algorithm = tg::ConvAlgorithm::implicit_gemm, .backward_input_algorithm = tg::ConvAlgorithm::direct,
                           .backward_weight_algorithm = tg::ConvAlgorithm::implicit_gemm});
  auto t = tg::conv_transpose(c, w, {.stride = {2}, .output_padding = {1}, .algorithm = tg::ConvAlgorithm::direct});
  auto f = tg::correlate(t, tg::constant(A::random_uniform({1, 1, 3, 2}, T(-1), T(1), 9)),
                         {.border = tg::Border::fill(0.5), .output = tg::Output::same, .origin = {0, 0, 0, -1},
                          .algorithm = tg::ConvAlgorithm::direct});
  const std::vector<tg::Tracked<T>> factors{tg::constant(A({1}, {T(1)})), tg::constant(A({1}, {T(1)})),
                                            tg::constant(A({3}, {T(0.25), T(0.5), T(0.25)})),
                                            tg::constant(A({2}, {T(1), T(-1)}))};
  auto s = tg::convolve(f, factors, {.border = tg::Border::symmetric(), .algorithm = tg::ConvAlgorithm::direct});
  auto m = tg::meanpool(tg::leaky_relu(s, T(0.1)), {.window = {2}, .padding = {1}, .count_include_pad = false});
  auto l = tg::lppool(tg::abs(m) + 0.1, {.window = {2, 1}, .stride = {1}, .ceil_mode = true, .p = 3});
  // One op per statement where two operands record: C++ leaves the order of
  // `a(x) + b(x)` to the compiler (GCC and clang differ), and the golden dumps list instructions in order.
  auto gmax = tg::global_maxpool(l);
  auto gmean = tg::global_meanpool(tg::pow(l, T(2)));
  auto g = gmax + gmean;
  auto p = tg::permute(tg::reshape(g, {-1, 2}), {1, 0});
  auto q = tg::concat(std::vector{tg::slice(p, 0, -2, 2), tg::broadcast_to(tg::sum(p, {1}, true), {2, 3})}, 1);
  auto ls = tg::log_softmax(q, 0);
  auto sm = tg::softmax(q, 1);
  auto lse = tg::logsumexp(q, 1, true);
  auto r = ls + sm + lse;
  auto rmax = tg::mean(tg::max(r, {0}));
  auto rmin = tg::mean(tg::min(r, {1}));
  auto z = rmax * rmin;
  if (tg::any(q > T(-100))) z = z * 2.0;  // a guard
  return z + tg::mse(q, tg::constant(A::zeros(q.shape())));
}

template <class T>
auto every_param_inputs() {
  using A = tg::Array<T>;
  return std::tuple{A::random_uniform({1, 2, 7, 8}, T(-1), T(1), 11), A::random_uniform({2, 2, 3, 3}, T(-1), T(1), 12)};
}

// The elementwise ops every_param has no reason to use (no attributes), for the
// tape-file round trip: sub, div, neg, pow, exp, log, sqrt, sigmoid, softplus, and the activations.
template <class T>
tg::Tracked<T> elementwise_mix(const tg::Tracked<T>& x, const tg::Tracked<T>& y) {
  auto a = tg::exp(x) - tg::sigmoid(y);
  auto b = tg::log(tg::sqrt(x * x + 1.0)) / (tg::softplus(y) + 1.0);
  auto c = tg::gelu(a) + tg::gelu_tanh(b) + tg::silu(a) + tg::hardswish(b * 4.0) + tg::elu(a, T(0.5)) +
           tg::clamp(b, T(-0.25), T(0.5));
  auto losses = tg::bce_with_logits(a, tg::sigmoid(b)) + tg::l1_loss(a, b) + tg::smooth_l1_loss(a, b, 0.5) +
                tg::sum(tg::pad(a, {.lo = {1}, .hi = {2}, .border = tg::Border::reflect()})) +
                tg::sum(tg::where(tg::constant(tg::Array<T>({4}, {T(1), T(0), T(0), T(1)})), a, b));
  const tg::BatchNormState<tg::Tracked<T>> bn{{tg::constant(tg::Array<T>::zeros({4}))}, {tg::constant(tg::Array<T>::ones({4}))}};
  auto norms = tg::batch_norm(a, y, tg::sigmoid(y), bn) + tg::layer_norm(b, y, y) +
               tg::reshape(tg::group_norm(tg::reshape(a, {3, 4, 1}), y, y, {.groups = 2}), {3, 4}) +
               tg::dropout(b, 0.25, tg::State<tg::Tracked<T>>{tg::constant(tg::dropout_key<T>(1).value)}) +
               tg::slice(tg::reshape(tg::upsample(tg::reshape(a, {1, 3, 4}), {.size = {5}, .mode = tg::UpsampleMode::linear}), {3, 5}), 1, 0, 4) +
               tg::reshape(tg::upsample(tg::adaptive_maxpool(tg::reshape(b, {1, 3, 4}), {.output = {2}}), {.scale = {2}}), {3, 4}) +
               tg::reshape(tg::adaptive_meanpool(tg::reshape(a, {3, 1, 2, 2}), {.output = {1, 1}}), {3, 1});
  return tg::sum(tg::pow(a * a + 1.0, -b)) + tg::sum(c) + losses + tg::sum(norms * b);
}

template <class T>
auto record_elementwise_mix() {
  using A = tg::Array<T>;
  return tg::record([](const auto& a, const auto& b) { return elementwise_mix<T>(a, b); },
                    A::random_uniform({3, 4}, T(-1), T(1), 21), A::random_uniform({4}, T(-1), T(1), 22));
}

// A NaN planted at the second instruction: log of a negative number.
template <class T>
tg::Tracked<T> planted_nan(const tg::Tracked<T>& x) {
  return tg::sum(tg::log(x - 1.0) * 2.0);
}

// The two models recorded as the tape-file tests and the fuzz corpus use them (labels need no gradient).
template <class T>
auto record_small_cnn() {
  auto [x, y, w1, b1, w2] = small_cnn_inputs<T>();
  auto tape = tg::record([](const auto&... a) { return small_cnn<T>(a...); }, x, y, w1, b1, w2);
  tape.set_needs_grad(1, false);
  return tape;
}

template <class T>
auto record_every_param() {
  auto [x, w] = every_param_inputs<T>();
  return tg::record([](const auto& a, const auto& b) { return every_param<T>(a, b); }, x, w);
}

// ---- hostile files: a few hundred bytes that describe huge work (issue 22) ----

// Replaces the one 8-byte little-endian occurrence of `from` in `bytes` by `to`
// (a dim of a saved shape); an ambiguous or missing pattern is an error.
inline void patch_dim(std::string& bytes, std::int64_t from, std::int64_t to) {
  const std::string a(reinterpret_cast<const char*>(&from), 8), b(reinterpret_cast<const char*>(&to), 8);
  const auto at = bytes.find(a);
  if (at == std::string::npos || bytes.find(a, at + 1) != std::string::npos)
    throw std::runtime_error("patch_dim: the dim " + std::to_string(from) + " must occur exactly once in the file");
  bytes.replace(at, 8, b);
}

// sum(conv(x (1,1,4096,4096), w (1,1,1024,1024), direct)), inputs without values:
// 2e13 FLOPs to replay, recorded small and patched.
inline std::string huge_conv_file() {
  using F = tg::Array<float>;
  auto f = [](const tg::Tracked<float>& x, const tg::Tracked<float>& w) {
    return tg::sum(tg::conv(x, w, {.algorithm = tg::ConvAlgorithm::direct}));
  };
  auto tape = tg::record(f, F::zeros({1, 1, 101, 107}), F::zeros({1, 1, 45, 49}));
  std::string bytes = tg::serialize_tape(tape.tape(), {.input_values = false});
  for (auto [from, to] : {std::pair<std::int64_t, std::int64_t>{101, 4096}, {107, 4096}, {45, 1024}, {49, 1024}, {57, 3073}, {59, 3073}})
    patch_dim(bytes, from, to);
  return bytes;
}

// sum(conv(x (1,1,5,5), w (1,1,3,3))) padded by 2^21 - 1 and 2^20 and read through
// stride 2^21: a (1,1,2,2) output, but a padded input of 9.9e12 elements, which
// implicit GEMM would copy (Note [Implicit GEMM's padded copy]). Found by the fuzzer.
inline std::string huge_padding_file(tg::ConvAlgorithm algorithm) {
  using F = tg::Array<float>;
  auto f = [algorithm](const tg::Tracked<float>& x, const tg::Tracked<float>& w) {
    return tg::sum(tg::conv(x, w, {.stride = {41}, .pad_lo = {39}, .pad_hi = {23}, .algorithm = algorithm}));
  };
  auto tape = tg::record(f, F::random_uniform({1, 1, 5, 5}, -1, 1, 1), F::random_uniform({1, 1, 3, 3}, -1, 1, 2));
  std::string bytes = tg::serialize_tape(tape.tape());
  const std::int64_t far = std::int64_t{1} << 20;
  for (auto [from, to] : {std::pair<std::int64_t, std::int64_t>{41, 2 * far}, {39, 2 * far - 1}, {23, far}}) patch_dim(bytes, from, to);
  return bytes;
}

// sum(x) for one input of 2^30 floats without values: 4 GiB to replay.
inline std::string huge_input_file() {
  auto tape = tg::record([](const tg::Tracked<float>& x) { return tg::sum(x); }, tg::Array<float>::zeros({97}));
  std::string bytes = tg::serialize_tape(tape.tape(), {.input_values = false});
  patch_dim(bytes, 97, std::int64_t{1} << 30);
  return bytes;
}

// A gradient penalty through a conv and a max-pool (Note [Recorded pullbacks]):
// its tape holds the recorded reverse pass, conv_weight_grad and maxpool_route
// among it, and a maxpool_gather; and one through a filter (filter_image_grad,
// filter_kernel_grad), and one through linear ops (linear_adjoint) and gelu (erf). x (2, 3, 5, 5),
// w (3, 2, 3, 3), k (3, 3).
template <class T>
tg::Tracked<T> conv_penalty(const tg::Tracked<T>& x, const tg::Tracked<T>& w, const tg::Tracked<T>& k) {
  auto inner = [](const tg::Tracked<T>& image, const tg::Tracked<T>& weights) {
    return tg::sum(tg::tanh(tg::maxpool(tg::conv(image, weights, {.padding = {1}}), {.window = {2}})));
  };
  const auto [gx, gw] = tg::gradient(inner, x, tg::permute(w, {1, 0, 2, 3}));
  const tg::Tracked<T> image_term = tg::sum(gx * gx);  // one op per statement: a fixed order
  const tg::Tracked<T> weight_term = tg::sum(gw * gw);
  const tg::Tracked<T> gathered = tg::sum(tg::ops::maxpool_route_tracked(x, x * x, {.window = {2}}, true));
  // A cross-entropy's gradient in its logits, squared: cross_entropy_grad.
  auto classify = [](const tg::Tracked<T>& logits) {
    return tg::cross_entropy(logits, tg::constant(tg::Array<T>({2}, {T(0), T(3)})), {.label_smoothing = 0.1});
  };
  const tg::Tracked<T> glogits = tg::gradient(classify, tg::reshape(x, {2, 75}));
  const tg::Tracked<T> logit_term = tg::sum(glogits * glogits);
  auto blur = [](const tg::Tracked<T>& image, const tg::Tracked<T>& kernel) {
    return tg::sum(tg::tanh(tg::correlate(image, kernel, {.border = tg::Border::reflect()})));
  };
  const auto [gimage, gkernel] = tg::gradient(blur, tg::reshape(x, {6, 25}), k);
  const tg::Tracked<T> blur_image_term = tg::sum(gimage * gimage);
  const tg::Tracked<T> blur_kernel_term = tg::sum(gkernel * gkernel);
  // Linear ops' recorded pullbacks are linear_adjoint instructions (Note [Linear adjoints]).
  auto smooth = [](const tg::Tracked<T>& image) {
    const tg::Tracked<T> up = tg::upsample(image, {.scale = {2}, .mode = tg::UpsampleMode::linear});
    return tg::sum(tg::gelu(tg::meanpool(tg::pad(up, {.widths = {1}, .border = tg::Border::reflect()}), {.window = {3}, .stride = {2}})));
  };
  const tg::Tracked<T> gsmooth = tg::gradient(smooth, x);
  const tg::Tracked<T> smooth_term = tg::sum(gsmooth * gsmooth);
  // An adaptive max-pool's recorded pullback (adaptive_maxpool_route) and its adjoint.
  const tg::Tracked<T> gpeak = tg::gradient([](const tg::Tracked<T>& image) { return tg::sum(tg::pow(tg::adaptive_maxpool(image, {.output = {2}}), T(3))); }, x);
  const tg::Tracked<T> peak_term = tg::sum(gpeak * gpeak) + tg::sum(tg::ops::adaptive_maxpool_route_tracked(x, x * x, {.output = {3, 2}}, true));
  // Dropout's recorded pullback (dropout_mask), on a key the model keeps as a constant.
  const tg::State<tg::Tracked<T>> key{tg::constant(tg::dropout_key<T>(5).value)};
  const tg::Tracked<T> gdrop = tg::gradient([&](const tg::Tracked<T>& image) { return tg::sum(tg::pow(tg::dropout(image, 0.5, key), T(3))); }, x);
  const tg::Tracked<T> drop_term = tg::sum(gdrop * gdrop);
  return image_term + weight_term + gathered + logit_term + blur_image_term + blur_kernel_term + smooth_term + peak_term + drop_term;
}

}  // namespace tgtest::models
