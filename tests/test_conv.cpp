// conv and conv_transpose: hand-worked values, every algorithm against the
// reference loops, the triple, dot products, and bad geometry.
#include "support/checks.hpp"
#include "support/conv_reference.hpp"
#include "tapegrad/kernels/scratch.hpp"

#include <cstdlib>
#include <optional>
#include <random>

using namespace tgtest;
using T = tg::Tracked<double>;
using tg::ConvAlgorithm;
using tg::ConvParams;

namespace {

constexpr ConvAlgorithm kAlgorithms[] = {ConvAlgorithm::direct, ConvAlgorithm::im2col, ConvAlgorithm::implicit_gemm,
                                         ConvAlgorithm::fft, ConvAlgorithm::winograd};

bool fft_applies(const ConvParams& p) {
  auto ones = [](const std::vector<std::int64_t>& v) {
    for (auto e : v)
      if (e != 1) return false;
    return true;
  };
  return ones(p.stride) && ones(p.dilation);
}

// fft: unit stride and dilation; winograd also 1-D or 2-D with 1, 3 or 5 taps per dim.
bool applies(ConvAlgorithm a, const tg::Shape& w, const ConvParams& p) {
  if (a != ConvAlgorithm::fft && a != ConvAlgorithm::winograd) return true;
  if (!fft_applies(p)) return false;
  if (a == ConvAlgorithm::fft) return true;
  if (w.rank() > 4) return false;
  for (std::size_t d = 2; d < w.rank(); ++d)
    if (w[d] != 1 && w[d] != 3 && w[d] != 5) return false;
  return true;
}

ConvParams forced(ConvParams p, ConvAlgorithm a) {
  p.algorithm = a;
  return p;
}

struct Case {
  tg::Shape x, w;
  ConvParams p;
};

// Ranks 1-3, with and without stride, padding (symmetric and not), dilation, groups, flip.
std::vector<Case> cases() {
  std::vector<Case> c;
  c.push_back({{2, 3, 9}, {4, 3, 3}, {}});
  c.push_back({{2, 3, 10}, {4, 3, 4}, {.stride = {2}, .padding = {2}}});
  c.push_back({{1, 4, 11}, {4, 2, 3}, {.pad_lo = {0}, .pad_hi = {3}, .dilation = {2}, .groups = 2, .flip = true}});
  c.push_back({{2, 2, 6, 7}, {3, 2, 3, 3}, {.padding = {1}}});
  c.push_back({{2, 4, 7, 6}, {4, 1, 3, 2}, {.stride = {2, 1}, .pad_lo = {1, 0}, .pad_hi = {0, 1}, .groups = 4}});
  c.push_back({{1, 2, 8, 8}, {2, 2, 3, 3}, {.stride = {1}, .padding = {2}, .dilation = {2}, .flip = true}});
  c.push_back({{3, 6, 5, 5}, {6, 2, 1, 1}, {.groups = 3}});
  c.push_back({{1, 2, 4, 5, 6}, {3, 2, 2, 3, 2}, {.padding = {1, 0, 1}}});
  c.push_back({{2, 2, 5, 4, 6}, {2, 1, 3, 1, 3}, {.stride = {2, 1, 2}, .padding = {1}, .groups = 2, .flip = true}});
  return c;
}

}  // namespace

TEST_CASE("conv: hand-worked answers on iota inputs") {
  // 1-D: [0 1 2 3 4] with [1 2 3]: correlation 0+2+6, 1+4+9, 2+6+12; true convolution reverses the kernel.
  const A x1 = A::iota({1, 1, 5}), w1({1, 1, 3}, {1, 2, 3});
  CHECK(max_abs_diff(tg::conv(x1, w1), A({1, 1, 3}, {8, 14, 20})) == 0);
  CHECK(max_abs_diff(tg::conv(x1, w1, {.flip = true}), A({1, 1, 3}, {4, 10, 16})) == 0);
  // stride 2, padding 1: windows [pad 0 1], [1 2 3], [3 4 pad] -> 3, 14, 11
  CHECK(max_abs_diff(tg::conv(x1, w1, {.stride = {2}, .padding = {1}}), A({1, 1, 3}, {3, 14, 11})) == 0);
  // dilation 2: x[o] + 2 x[o+2] + 3 x[o+4]
  CHECK(max_abs_diff(tg::conv(x1, w1, {.dilation = {2}}), A({1, 1, 1}, {0 + 4 + 12})) == 0);
  // 2-D: 3x3 window sums of a 4x4 iota.
  const A x2 = A::iota({1, 1, 4, 4}), w2 = A::ones({1, 1, 3, 3});
  CHECK(max_abs_diff(tg::conv(x2, w2), A({1, 1, 2, 2}, {45, 54, 81, 90})) == 0);
  // bias and two filters
  const A w22 = A::ones({2, 1, 3, 3}), b({2}, {1, -1});
  CHECK(max_abs_diff(tg::conv(x2, w22, b), A({1, 2, 2, 2}, {46, 55, 82, 91, 44, 53, 80, 89})) == 0);
  // depthwise: each channel its own kernel
  const A xd = A::iota({1, 2, 1, 3}), wd({2, 1, 1, 2}, {1, 1, 1, -1});
  CHECK(max_abs_diff(tg::conv(xd, wd, {.groups = 2}), A({1, 2, 1, 2}, {1, 3, -1, -1})) == 0);
  // conv_transpose, stride 2: [1 2] scatters [1 1 1] at 0 and 2
  const A xt({1, 1, 2}, {1, 2}), wt = A::ones({1, 1, 3});
  CHECK(max_abs_diff(tg::conv_transpose(xt, wt, {.stride = {2}}), A({1, 1, 5}, {1, 1, 3, 2, 2})) == 0);
  CHECK(max_abs_diff(tg::conv_transpose(xt, wt, {.stride = {2}, .output_padding = {1}}), A({1, 1, 6}, {1, 1, 3, 2, 2, 0})) ==
        0);
  CHECK(max_abs_diff(tg::conv_transpose(xt, wt, {.stride = {2}, .padding = {1}}), A({1, 1, 3}, {1, 3, 2})) == 0);
}

TEST_CASE("conv: the reference loops match the hand-worked answers") {
  const A x2 = A::iota({1, 1, 4, 4}), w2 = A::ones({1, 1, 3, 3});
  CHECK(max_abs_diff(ref::conv(x2, w2, {}), A({1, 1, 2, 2}, {45, 54, 81, 90})) == 0);
  const A x1 = A::iota({1, 1, 5}), w1({1, 1, 3}, {1, 2, 3});
  CHECK(max_abs_diff(ref::conv(x1, w1, {.stride = {2}, .padding = {1}}), A({1, 1, 3}, {3, 14, 11})) == 0);
  CHECK(max_abs_diff(ref::conv(x1, w1, {.flip = true}), A({1, 1, 3}, {4, 10, 16})) == 0);
}

TEST_CASE("conv: every algorithm and pass equals the reference loops, ranks 1-3") {
  std::uint64_t seed = 1;
  for (const auto& c : cases()) {
    const A x = A::random_uniform(c.x, -1, 1, seed++), w = A::random_uniform(c.w, -1, 1, seed++);
    const A expected = ref::conv(x, w, c.p);
    const A gy = A::random_uniform(expected.shape(), -1, 1, seed++);
    const auto [gx_ref, gw_ref] = ref::conv_backward(x, w, gy, c.p);
    for (auto algorithm : kAlgorithms) {
      if (!applies(algorithm, c.w, c.p)) continue;
      CAPTURE(tg::to_string(c.x));
      CAPTURE(std::string(tg::kernels::to_string(algorithm)));
      const ConvParams p = forced(c.p, algorithm);
      CHECK(max_abs_diff(tg::conv(x, w, p), expected) < 1e-12);
      const auto [gx, gw] = tg::record([&](const T& a, const T& b) { return tg::conv(a, b, p); }, x, w).vjp(gy);
      CHECK(max_abs_diff(gx, gx_ref) < 1e-12);
      CHECK(max_abs_diff(gw, gw_ref) < 1e-12);
      // float too
      const auto xf = x.template cast<float>(), wf = w.template cast<float>();
      CHECK(max_abs_diff(tg::conv(xf, wf, p).template cast<double>(), expected) < 1e-4);
    }
  }
}

TEST_CASE("conv: im2col blocks that split samples, run on several threads, equal the reference") {
  // 40x40 outputs: each sample is cut into several column blocks whose input
  // windows overlap, the case where the input adjoint must not race.
  const A x = A::random_uniform({3, 3, 40, 40}, -1, 1, 1), w = A::random_uniform({4, 3, 3, 3}, -1, 1, 2);
  const ConvParams p{.padding = {1}, .algorithm = ConvAlgorithm::im2col};
  const A gy = A::random_uniform({3, 4, 40, 40}, -1, 1, 3);
  const auto [gx_ref, gw_ref] = ref::conv_backward(x, w, gy, p);
  const int before = tg::max_threads();
  for (int threads : {1, 2, 3}) {
    CAPTURE(threads);
    tg::set_num_threads(threads);
    CHECK(max_abs_diff(tg::conv(x, w, p), ref::conv(x, w, p)) < 1e-12);
    const auto [gx, gw] = tg::record([&](const T& a, const T& b) { return tg::conv(a, b, p); }, x, w).vjp(gy);
    CHECK(max_abs_diff(gx, gx_ref) < 1e-12);
    CHECK(max_abs_diff(gw, gw_ref) < 1e-11);
  }
  tg::set_num_threads(before);
}

TEST_CASE("conv: implicit GEMM tile edges, groups and threads equal the reference") {
  // Filters per group 20 and 9 (a full 16-wide tile plus a partial one, and a
  // partial one alone), 6 x 7 = 42 and 3 x 5 positions and patch rows 3*3*3 = 27
  // and 5*2*2 (not multiples of the 6-row tile), float and double, 1-3 threads:
  // the weight gradient's per-thread tiles must neither race nor drop a sample
  // (5 and 3 samples: a full block of 4 and a partial one, and a partial one alone).
  const std::vector<Case> geometries = {
      {{5, 6, 6, 7}, {40, 3, 3, 3}, {.padding = {1}, .groups = 2, .algorithm = ConvAlgorithm::implicit_gemm}},
      {{3, 5, 7, 11}, {9, 5, 2, 2}, {.stride = {2, 2}, .pad_lo = {0, 1}, .pad_hi = {1, 0}, .dilation = {1, 2},
                                     .algorithm = ConvAlgorithm::implicit_gemm}},
      // Strided (the input gradient through im2col's col2im): ResNet's 3x3
      // stride 2 on odd sizes; stride 3 with 2 taps, where some input rows
      // receive from no tap, and groups; 1x1 stride 2; 1-D; 3-D.
      {{2, 5, 9, 10}, {7, 5, 3, 3}, {.stride = {2}, .padding = {1}, .algorithm = ConvAlgorithm::implicit_gemm}},
      {{2, 4, 10, 9}, {6, 2, 2, 3}, {.stride = {3, 2}, .pad_lo = {1, 0}, .pad_hi = {0, 2}, .groups = 2,
                                     .algorithm = ConvAlgorithm::implicit_gemm}},
      {{3, 4, 7, 8}, {20, 4, 1, 1}, {.stride = {2}, .algorithm = ConvAlgorithm::implicit_gemm}},
      {{2, 3, 17}, {5, 3, 5}, {.stride = {3}, .padding = {2}, .algorithm = ConvAlgorithm::implicit_gemm}},
      {{2, 3, 5, 6, 7}, {4, 3, 3, 2, 3}, {.stride = {2, 1, 3}, .padding = {1, 0, 1}, .algorithm = ConvAlgorithm::implicit_gemm}},
  };
  const int before = tg::max_threads();
  for (const auto& c : geometries) {
    const A x = A::random_uniform(c.x, -1, 1, 1), w = A::random_uniform(c.w, -1, 1, 2);
    const A y_ref = ref::conv(x, w, c.p);
    const A gy = A::random_uniform(y_ref.shape(), -1, 1, 3);
    const auto [gx_ref, gw_ref] = ref::conv_backward(x, w, gy, c.p);
    for (int threads : {1, 2, 3}) {
      CAPTURE(threads);
      tg::set_num_threads(threads);
      CHECK(max_abs_diff(tg::conv(x, w, c.p), y_ref) < 1e-12);
      const auto [gx, gw] = tg::record([&](const T& a, const T& b) { return tg::conv(a, b, c.p); }, x, w).vjp(gy);
      CHECK(max_abs_diff(gx, gx_ref) < 1e-12);
      CHECK(max_abs_diff(gw, gw_ref) < 1e-11);
      using F = tg::Array<float>;
      CHECK(max_abs_diff(tg::conv(x.cast<float>(), w.cast<float>(), c.p).cast<double>(), y_ref) < 1e-4);
      const auto [gxf, gwf] = tg::record([&](const tg::Tracked<float>& a, const tg::Tracked<float>& b) { return tg::conv(a, b, c.p); },
                                         x.cast<float>(), w.cast<float>())
                                  .vjp(gy.cast<float>());
      CHECK(max_abs_diff(F(gxf).cast<double>(), gx_ref) < 1e-4);
      CHECK(max_abs_diff(F(gwf).cast<double>(), gw_ref) < 1e-3);
    }
  }
  tg::set_num_threads(before);
}

// Note [Paired tiles]: two column blocks in one 6 x 2 tile give the sums of
// two 6 x 1 tiles bit for bit, in every pass that pairs them: implicit GEMM's
// forward, weight pass (shared and own copies: 1-3 threads) and strided input
// gradient, and Winograd's forward, input gradient and weight pass. Filters
// per group 40 and 48: pairs and a block alone. Below AVX-512 both runs take
// the single tiles.
TEST_CASE("conv: paired tiles equal single tiles bit for bit, every pass that pairs") {
  using F = tg::Array<float>;
  const std::vector<Case> geometries = {
      {{5, 6, 6, 7}, {80, 3, 3, 3}, {.padding = {1}, .groups = 2, .algorithm = ConvAlgorithm::implicit_gemm}},
      {{3, 8, 9, 10}, {40, 8, 3, 3}, {.stride = {2}, .padding = {1}, .algorithm = ConvAlgorithm::implicit_gemm}},
      {{4, 12, 8, 8}, {48, 12, 1, 1}, {.algorithm = ConvAlgorithm::implicit_gemm}},
      {{3, 8, 10, 9}, {48, 8, 3, 3}, {.padding = {1}, .algorithm = ConvAlgorithm::winograd}},
      {{2, 16, 12, 12}, {96, 8, 3, 3}, {.padding = {1}, .groups = 2, .algorithm = ConvAlgorithm::winograd}},
  };
  const int threads_before = tg::max_threads();
  const bool paired_before = tg::kernels::paired_tiles();
  for (const auto& c : geometries) {
    const F x = F::random_uniform(c.x, -1, 1, 1), w = F::random_uniform(c.w, -1, 1, 2);
    const F gy = F::random_uniform(tg::conv(x, w, c.p).shape(), -1, 1, 3);
    auto passes = [&] {
      const auto [gx, gw] = tg::record([&](const tg::Tracked<float>& a, const tg::Tracked<float>& b) { return tg::conv(a, b, c.p); },
                                       x, w)
                                .vjp(gy);
      return std::array<F, 3>{tg::conv(x, w, c.p), F(gx), F(gw)};
    };
    for (int threads : {1, 2, 3}) {
      CAPTURE(threads);
      tg::set_num_threads(threads);
      tg::kernels::set_paired_tiles(false);
      const auto single = passes();
      tg::kernels::set_paired_tiles(true);
      const auto paired = passes();
      for (int i = 0; i < 3; ++i) {
        CAPTURE(i);
        CHECK(max_abs_diff(paired[i].cast<double>(), single[i].cast<double>()) == 0);
      }
    }
  }
  tg::kernels::set_paired_tiles(paired_before);
  tg::set_num_threads(threads_before);
}

TEST_CASE("conv: an output epilogue (bias, activation) equals conv, then bias, then the activation, every algorithm") {
  // Note [Epilogues]: implicit GEMM applies it per task inside its output loop,
  // the other algorithms in one pass; 2 samples x 20 filters x 11 x 13 outputs
  // cross task boundaries (runs of 96 positions) and a partial filter tile.
  const tg::kernels::ConvGeometry g =
      tg::kernels::conv_geometry({2, 3, 11, 13}, {20, 3, 3, 3}, {.pad_lo = {1}, .pad_hi = {1}}, "test");
  const A x = A::random_uniform({2, 3, 11, 13}, -1, 1, 1), w = A::random_uniform({20, 3, 3, 3}, -1, 1, 2);
  const A bias = A::random_uniform({20}, -1, 1, 3);
  A expected = ref::conv(x, w, {.padding = {1}});
  const std::int64_t plane = 11 * 13;
  for (std::int64_t i = 0; i < expected.size(); ++i) {
    const double v = expected.data()[i] + bias.data()[(i / plane) % 20];
    expected.data()[i] = v > 0 ? v : 0.5 * v;  // a leaky activation: both branches matter
  }
  auto leaky = [](const void* context, double* values, std::int64_t n) {
    const double slope = *static_cast<const double*>(context);
    for (std::int64_t i = 0; i < n; ++i) values[i] = values[i] > 0 ? values[i] : slope * values[i];
  };
  const double slope = 0.5;
  const tg::kernels::OutputEpilogue<double> epilogue{bias.data(), +leaky, &slope};
  const int before = tg::max_threads();
  for (auto algorithm : kAlgorithms)
    for (int threads : {1, 3}) {
      CAPTURE(std::string(tg::kernels::to_string(algorithm)));
      CAPTURE(threads);
      tg::set_num_threads(threads);
      A y(expected.shape());
      tg::kernels::conv_forward(g, algorithm, x.data(), w.data(), y.data(), false, &epilogue);
      CHECK(max_abs_diff(y, expected) < 1e-12);
    }
  tg::set_num_threads(before);
  A y(expected.shape());
  CHECK_THROWS_WITH_AS(tg::kernels::conv_forward(g, ConvAlgorithm::direct, x.data(), w.data(), y.data(), true, &epilogue),
                       doctest::Contains("an output epilogue with accumulate"), tg::Error);
}

TEST_CASE("conv: the unit-stride input adjoint run as a conv (im2col, many channels) equals the reference") {
  // Cg >= 16: im2col computes the input gradient as the forward conv of the
  // adjoint geometry, whose padding can be negative (pad_lo 5 > dilation*(k-1) = 4).
  for (const ConvParams& p : {ConvParams{.padding = {1}}, ConvParams{.pad_lo = {5, 0}, .pad_hi = {0, 6}, .dilation = {2}},
                              ConvParams{.padding = {1}, .groups = 2, .flip = true}}) {
    const A x = A::random_uniform({2, 32, 11, 12}, -1, 1, 1);
    const A w = A::random_uniform({8, 32 / p.groups, 3, 3}, -1, 1, 2);
    const A y = ref::conv(x, w, p);
    const A gy = A::random_uniform(y.shape(), -1, 1, 3);
    const auto [gx_ref, gw_ref] = ref::conv_backward(x, w, gy, p);
    for (auto algorithm : kAlgorithms) {
      if (!applies(algorithm, w.shape(), p)) continue;
      CAPTURE(std::string(tg::kernels::to_string(algorithm)));
      const ConvParams q = forced(p, algorithm);
      CHECK(max_abs_diff(tg::conv(x, w, q), y) < 1e-11);
      const auto [gx, gw] = tg::record([&](const T& a, const T& b) { return tg::conv(a, b, q); }, x, w).vjp(gy);
      CHECK(max_abs_diff(gx, gx_ref) < 1e-11);
      CHECK(max_abs_diff(gw, gw_ref) < 1e-11);
      // the kernel itself: written over garbage, or added onto what gx holds
      namespace k = tg::kernels;
      const k::ConvSpec spec{.stride = q.stride, .dilation = q.dilation, .pad_lo = q.pad_lo.empty() ? q.padding : q.pad_lo,
                             .pad_hi = q.pad_hi.empty() ? q.padding : q.pad_hi, .groups = q.groups, .flip = q.flip};
      const k::ConvGeometry g = k::conv_geometry(x.shape(), w.shape(), spec, "test");
      A written = A::full(x.shape(), 7.0), added = A::full(x.shape(), 7.0);
      k::conv_backward_input(g, algorithm, gy.data(), w.data(), written.data(), false);
      k::conv_backward_input(g, algorithm, gy.data(), w.data(), added.data(), true);
      CHECK(max_abs_diff(written, gx_ref) < 1e-11);
      for (std::int64_t i = 0; i < added.size(); ++i) added.data()[i] -= 7.0;
      CHECK(max_abs_diff(added, gx_ref) < 1e-11);
    }
  }
}

TEST_CASE("conv: the strided input gradient by phases equals the hand-worked answer and the reference loops") {
  // Note [Strided input adjoint by phases]. Hand-worked: a 1x1 stride-2 kernel of
  // weight 3 sends 3 * gy to the even positions and nothing to the odd ones (the
  // phases without taps), written over gx, or added to what gx holds.
  const tg::kernels::ConvGeometry one = tg::kernels::conv_geometry({1, 1, 4, 4}, {1, 1, 1, 1}, {.stride = {2}}, "test");
  const A w1 = A::full({1, 1, 1, 1}, 3.0), gy1 = A::iota({1, 1, 2, 2});
  for (bool accumulate : {false, true}) {
    CAPTURE(accumulate);
    A gx = A::full({1, 1, 4, 4}, 1.0);
    tg::kernels::conv_backward_input(one, ConvAlgorithm::implicit_gemm, gy1.data(), w1.data(), gx.data(), accumulate);
    const double b = accumulate ? 1 : 0;
    const A expected({1, 1, 4, 4}, {b + 0, b, b + 3, b, b, b, b, b, b + 6, b, b + 9, b, b, b, b, b});
    CHECK(max_abs_diff(gx, expected) == 0.0);
  }
  // Against the reference: ResNet's 3x3 stride 2 with 20 input channels (a full
  // 16-wide block and a partial one) and 5x5, 5x4, 4x4 phases whose positions run
  // across the 3 samples; dilation 2 with stride 2 (every tap in one phase, the
  // others empty); stride 3 with groups; 1-D and 3-D; float and double, 1-3 threads,
  // the gradient written and added (x used twice).
  const std::vector<Case> geometries = {
      {{3, 20, 9, 9}, {24, 20, 3, 3}, {.stride = {2}, .padding = {1}}},
      {{2, 18, 11, 10}, {5, 18, 3, 3}, {.stride = {2}, .padding = {2}, .dilation = {2}}},
      {{2, 34, 10, 11}, {6, 17, 4, 3}, {.stride = {3, 2}, .pad_lo = {2, 0}, .pad_hi = {0, 1}, .groups = 2}},
      {{4, 17, 23}, {9, 17, 5}, {.stride = {2}, .padding = {2}}},
      {{2, 16, 5, 6, 7}, {4, 16, 3, 2, 3}, {.stride = {2, 1, 2}, .padding = {1, 0, 1}}},
  };
  const int before = tg::max_threads();
  for (const auto& c : geometries) {
    CAPTURE(tg::to_string(c.x));
    const ConvParams p = forced(c.p, ConvAlgorithm::implicit_gemm);
    const A x = A::random_uniform(c.x, -1, 1, 1), w = A::random_uniform(c.w, -1, 1, 2);
    const A gy = A::random_uniform(ref::conv(x, w, p).shape(), -1, 1, 3);
    const A gx_ref = ref::conv_backward(x, w, gy, p).first;
    for (int threads : {1, 2, 3}) {
      CAPTURE(threads);
      tg::set_num_threads(threads);
      const A gx = tg::record([&](const T& a) { return tg::conv(a, tg::constant(w), p); }, x).vjp(gy);
      CHECK(max_abs_diff(gx, gx_ref) < 1e-12);
      const A gx_twice = tg::record([&](const T& a) { return tg::sum(tg::conv(a, tg::constant(w), p) * tg::constant(gy)) + tg::sum(a); }, x).gradient();
      CHECK(max_abs_diff(gx_twice - A::ones(c.x), gx_ref) < 1e-12);
      using TF = tg::Tracked<float>;
      const tg::Array<float> gxf = tg::record([&](const TF& a) { return tg::conv(a, tg::constant(w.cast<float>()), p); }, x.cast<float>())
                             .vjp(gy.cast<float>());
      CHECK(max_abs_diff(gxf.cast<double>(), gx_ref) < 1e-4);
    }
  }
  tg::set_num_threads(before);
}

namespace {

// Limits of a random conv geometry; each spatial dim draws its own kernel,
// dilation, stride, padding and size within them (the last dim from its own range).
struct GeometryLimits {
  int max_kernel = 5, max_kernel_3d = 3, max_stride = 4;
  int max_in = 13, max_in_3d = 7, min_last = 1, max_last = 13, max_last_kernel = 5;
  int max_rank = 3, max_cg = 19;
};

// A geometry drawn from rng that fits (padded input at least the dilated kernel), or nothing.
std::optional<Case> random_case(std::mt19937_64& rng, const GeometryLimits& l) {
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const int rank = pick(1, l.max_rank), groups = pick(1, 3);
  const std::int64_t Cg = pick(1, l.max_cg), Kg = pick(1, 18), N = pick(1, 3);
  Case c{{N, groups * Cg}, {groups * Kg, Cg}, {.groups = groups}};
  bool fits = true;
  for (int d = 0; d < rank; ++d) {
    const bool last = d + 1 == rank;
    const std::int64_t k = pick(1, last ? l.max_last_kernel : rank == 3 ? l.max_kernel_3d : l.max_kernel);
    const std::int64_t dil = pick(1, 3), stride = pick(1, l.max_stride), lo = pick(0, 4), hi = pick(0, 4);
    const std::int64_t in = last ? pick(l.min_last, l.max_last) : pick(1, rank == 3 ? l.max_in_3d : l.max_in);
    c.x.push_back(in);
    c.w.push_back(k);
    c.p.stride.push_back(stride), c.p.dilation.push_back(dil), c.p.pad_lo.push_back(lo), c.p.pad_hi.push_back(hi);
    fits = fits && in + lo + hi >= dil * (k - 1) + 1;
  }
  if (!fits) return std::nullopt;
  return c;
}

// Every pass of `algorithm` on case c (with seeds from `seed`) against the
// reference loops, in double; the forward also in float.
void check_case_against_reference(const Case& c, ConvAlgorithm algorithm, std::uint64_t seed) {
  const ConvParams p = forced(c.p, algorithm);
  const A x = A::random_uniform(c.x, -1, 1, seed), w = A::random_uniform(c.w, -1, 1, seed + 1);
  const A y = ref::conv(x, w, p);
  const A gy = A::random_uniform(y.shape(), -1, 1, 7);
  const auto [gx_ref, gw_ref] = ref::conv_backward(x, w, gy, p);
  CHECK(max_abs_diff(tg::conv(x, w, p), y) < 1e-12);
  const auto [gx, gw] = tg::record([&](const T& a, const T& b) { return tg::conv(a, b, p); }, x, w).vjp(gy);
  CHECK(max_abs_diff(gx, gx_ref) < 1e-12);
  CHECK(max_abs_diff(gw, gw_ref) < 1e-11);
  const auto xf = x.template cast<float>(), wf = w.template cast<float>();
  CHECK(max_abs_diff(tg::conv(xf, wf, p).template cast<double>(), y) < 1e-4);
}

// The float input and weight gradients of case c by `algorithm` against the double reference.
void check_float_gradients(const Case& c, ConvAlgorithm algorithm, std::uint64_t seed) {
  const ConvParams p = forced(c.p, algorithm);
  const A x = A::random_uniform(c.x, -1, 1, seed), w = A::random_uniform(c.w, -1, 1, seed + 1);
  const A gy = A::random_uniform(ref::conv(x, w, p).shape(), -1, 1, seed + 2);
  const auto [gx_ref, gw_ref] = ref::conv_backward(x, w, gy, p);
  const auto [gxf, gwf] =
      tg::record([&](const tg::Tracked<float>& a, const tg::Tracked<float>& b) { return tg::conv(a, b, p); },
                 x.cast<float>(), w.cast<float>())
          .vjp(gy.cast<float>());
  CHECK(max_abs_diff(gxf.cast<double>(), gx_ref) < 1e-4);
  CHECK(max_abs_diff(gwf.cast<double>(), gw_ref) < 1e-3);
}

// `trials` geometries drawn from `seed` within `limits`, each that fits checked
// with check_case_against_reference; returns how many fitted.
int check_random_cases(std::uint64_t seed, int trials, const GeometryLimits& limits, ConvAlgorithm algorithm) {
  std::mt19937_64 rng(seed);
  int runs = 0;
  for (int trial = 0; trial < trials; ++trial) {
    const auto c = random_case(rng, limits);
    if (!c) continue;
    ++runs;
    CAPTURE(tg::to_string(c->x));
    CAPTURE(tg::to_string(c->w));
    CAPTURE(trial);
    check_case_against_reference(*c, algorithm, 2 * trial + 1);
  }
  return runs;
}

}  // namespace

TEST_CASE("conv: implicit GEMM on random geometries (strides, dilations, paddings, groups, ranks) equals the reference") {
  // Every pass, the input gradient by phases included, on 60 geometries drawn
  // with a fixed seed: strides 1-4 (longer than the dilated kernel too),
  // dilations 1-3, padding up to 4 on either side, 1-3 groups, ranks 1-3.
  CHECK(check_random_cases(20261204, 60, {}, ConvAlgorithm::implicit_gemm) >= 40);
}

TEST_CASE("conv: the direct kernel on random geometries with wide rows equals the reference") {
  // Rows 1-90 wide and 1-9 taps along them: the fused pass over every tap row
  // (8-vector blocks, a block of the vectors left, the overlapping last vector,
  // rows narrower than a vector), the kernel gradient's fused sums, taps past the fused
  // limit of 7, dilations 1-3 (1 is compiled apart), strides 1-3, the edges,
  // and the unit-stride input gradient that runs the forward loops.
  const GeometryLimits wide{.max_stride = 3, .max_in = 6, .max_in_3d = 3, .min_last = 1, .max_last = 90, .max_last_kernel = 9};
  CHECK(check_random_cases(20261205, 50, wide, ConvAlgorithm::direct) >= 35);
}

TEST_CASE("conv: the direct kernel gradient with every kernel row in one pass equals the reference") {
  // Note [Fused kernel rows]: 3x3 and 2x2 kernels, unit stride, no padding
  // along the rows. Padding above and below leaves the first and last output
  // rows without some kernel rows (the pass per kernel row); rows of 43 and 69
  // outputs end past whole vectors at every level (2, 4 or 8 lanes). At avx512
  // the shifted copies take few channels (Note [Shifted copies]): the last two
  // cases have more taps per filter than they take.
  for (const Case& c : {Case{{2, 3, 9, 45}, {4, 3, 3, 3}, {.pad_lo = {1, 0}, .pad_hi = {1, 0}}},
                        Case{{1, 2, 6, 70}, {3, 2, 2, 2}, {}}, Case{{2, 4, 5, 45}, {4, 2, 3, 3}, {.groups = 2}},
                        Case{{1, 15, 7, 45}, {2, 15, 3, 3}, {.pad_lo = {1, 0}, .pad_hi = {1, 0}}},
                        Case{{1, 33, 4, 70}, {2, 33, 2, 2}, {}}}) {
    CAPTURE(tg::to_string(c.x));
    check_case_against_reference(c, ConvAlgorithm::direct, 51);
    check_float_gradients(c, ConvAlgorithm::direct, 52);
  }
}

TEST_CASE("conv: the shifted copies made flat equal the reference") {
  // Note [Flat copies]: rows as wide as the output's (padding adding up to the
  // kernel's reach along them), at avx512. Padding uneven at the row ends,
  // dilation, rows narrower than a vector and than the kernel (a tap column
  // that meets no input), a 1-D conv, groups; the last case's rows are wider
  // than the output's (the column copies).
  for (const Case& c : {Case{{2, 1, 28, 28}, {5, 1, 5, 5}, {.padding = {2}}},
                        Case{{2, 2, 9, 13}, {3, 2, 3, 5}, {.pad_lo = {1, 3}, .pad_hi = {1, 1}}},
                        Case{{1, 3, 7, 11}, {4, 3, 3, 3}, {.padding = {2}, .dilation = {2}}},
                        Case{{2, 1, 6, 2}, {3, 1, 3, 7}, {.pad_lo = {0, 3}, .pad_hi = {2, 3}}},
                        Case{{2, 2, 37}, {3, 2, 5}, {.pad_lo = {4}, .pad_hi = {0}}},
                        Case{{1, 4, 10, 17}, {6, 2, 3, 3}, {.padding = {1}, .groups = 2}},
                        Case{{2, 2, 9, 19}, {3, 2, 3, 3}, {.pad_lo = {1, 0}, .pad_hi = {1, 1}}}}) {
    CAPTURE(tg::to_string(c.x));
    check_case_against_reference(c, ConvAlgorithm::direct, 61);
    check_float_gradients(c, ConvAlgorithm::direct, 62);
  }
}

TEST_CASE("conv: the direct kernel for few channels (shifted copies) and 1x1 convs equals the reference") {
  // Note [Shifted copies]: unit stride, ranks 1-2, 1-4 channels per group, up
  // to 7 taps along rows 1-40 wide: planes with and without a partial last
  // vector, filter counts past whole blocks, groups (copies of some channels
  // only), dilations and paddings. At avx512 the forward and the weight
  // gradient run the shifted copies, and so does the input gradient where the
  // adjoint conv has few channels a group (few filters: depthwise layers); at
  // avx2 the forward and that input gradient do (4 filters x 3 vectors of 8
  // floats or 4 doubles), the weight gradient the direct loops; portable, the
  // direct loops.
  const GeometryLimits few{.max_stride = 1, .max_in = 9, .max_last = 40, .max_last_kernel = 7, .max_rank = 2, .max_cg = 4};
  CHECK(check_random_cases(20261206, 60, few, ConvAlgorithm::direct) >= 40);
  // Depthwise 3x3 and 5x5 layers, padded, a plane of 28 x 28 and one of 14 x 13;
  // at 56 x 56 every channel's copies together pass the copies' limit, so the
  // weight pass takes the groups in chunks (26 of 32 groups, then 6; with two
  // channels and two filters a group, cut by filter blocks, 26 of 32 groups
  // then 6 on each of two threads, 26, 26 and 12 on one).
  for (const Case& c : {Case{{2, 8, 28, 28}, {8, 1, 3, 3}, {.padding = {1}, .groups = 8}},
                        Case{{3, 6, 14, 13}, {6, 1, 5, 5}, {.padding = {2}, .groups = 6}},
                        Case{{2, 4, 9, 20}, {8, 1, 3, 3}, {.pad_lo = {0, 2}, .pad_hi = {2, 0}, .groups = 4}},
                        Case{{2, 32, 56, 56}, {32, 1, 3, 3}, {.padding = {1}, .groups = 32}},
                        Case{{1, 128, 40, 40}, {128, 2, 3, 3}, {.padding = {1}, .groups = 64}}})
  {
    CAPTURE(tg::to_string(c.x));
    check_case_against_reference(c, ConvAlgorithm::direct, 33);
    check_float_gradients(c, ConvAlgorithm::direct, 34);
  }
  // The cost rule runs LeNet's conv1 forward with them (at avx2 and up), its
  // weight gradient at avx512, and its input gradient not.
  namespace k = tg::kernels;
  const k::ConvGeometry lenet = k::conv_geometry({64, 1, 28, 28}, {32, 1, 5, 5}, {.pad_lo = {2}, .pad_hi = {2}}, "test");
  const bool shifted_forward = k::kernel_isa() >= k::Isa::avx2, shifted_weight = k::kernel_isa() >= k::Isa::avx512;
  CHECK((k::choose_conv_algorithm(lenet, k::ConvPass::forward, ConvAlgorithm::automatic, "test") == ConvAlgorithm::direct) ==
        shifted_forward);
  CHECK((k::choose_conv_algorithm(lenet, k::ConvPass::backward_weight, ConvAlgorithm::automatic, "test") == ConvAlgorithm::direct) ==
        shifted_weight);
  CHECK(k::choose_conv_algorithm(lenet, k::ConvPass::backward_input, ConvAlgorithm::automatic, "test") != ConvAlgorithm::direct);
  // A depthwise 3x3 layer (8 x 128 x 14^2) all three at avx2 and up: below
  // AVX-512 the weight pass runs where a block is one filter with 3x3 or 2x2
  // taps (Note [One filter, every kernel row]).
  const k::ConvGeometry depthwise = k::conv_geometry({8, 128, 14, 14}, {128, 1, 3, 3}, {.pad_lo = {1}, .pad_hi = {1}, .groups = 128}, "test");
  for (const auto pass : {k::ConvPass::forward, k::ConvPass::backward_input, k::ConvPass::backward_weight})
    if (shifted_forward) CHECK(k::choose_conv_algorithm(depthwise, pass, ConvAlgorithm::automatic, "test") == ConvAlgorithm::direct);
  if (shifted_forward) CHECK(k::conv_estimated_seconds(depthwise, k::ConvPass::backward_weight)[k::index_of(ConvAlgorithm::direct)] < 1e-4);
  // Note [Pointwise runs]: 1x1 convs run by the same loops at avx512 (forced
  // direct: the forward and the input gradient): a partial last vector, groups,
  // a plane of 900 positions (a chunk of 768 and one of 132); the cost rule
  // takes them for the forward and input gradient of R4 and R5, not for their
  // weight gradients nor for 7x7 planes.
  // Planes of 63, 40, 77 and 81 positions end in blocks of 3, 2, 4 and 5
  // whole vectors of 16 (9, 5, 9, 10 of 8 in double) before the partial one;
  // 600 input channels make chunks of one register block (225 = 96 + 96 + 33).
  for (const Case& c : {Case{{2, 6, 7, 9}, {20, 3, 1, 1}, {.groups = 2}}, Case{{3, 40, 5, 8}, {8, 40, 1, 1}, {}},
                        Case{{2, 4, 30, 30}, {9, 4, 1, 1}, {}}, Case{{1, 3, 11, 7}, {6, 3, 1, 1}, {}},
                        Case{{2, 5, 9, 9}, {12, 5, 1, 1}, {}}, Case{{1, 600, 15, 15}, {5, 600, 1, 1}, {}}}) {
    check_case_against_reference(c, ConvAlgorithm::direct, 31);
    check_case_against_reference(c, ConvAlgorithm::implicit_gemm, 32);  // the weight gradient the cost rule takes
  }
  const k::ConvGeometry r5 = k::conv_geometry({8, 64, 56, 56}, {256, 64, 1, 1}, {}, "test");
  const k::ConvGeometry r4 = k::conv_geometry({8, 256, 56, 56}, {64, 256, 1, 1}, {}, "test");
  const bool pointwise = k::kernel_isa() >= k::Isa::avx512;
  CHECK((k::choose_conv_algorithm(r5, k::ConvPass::forward, ConvAlgorithm::automatic, "test") == ConvAlgorithm::direct) == pointwise);
  const k::ConvGeometry small_plane = k::conv_geometry({32, 512, 7, 7}, {128, 512, 1, 1}, {}, "test");
  for (const auto pass : {k::ConvPass::forward, k::ConvPass::backward_input}) {
    CHECK((k::choose_conv_algorithm(r4, pass, ConvAlgorithm::automatic, "test") == ConvAlgorithm::direct) == pointwise);
    CHECK((k::choose_conv_algorithm(r5, pass, ConvAlgorithm::automatic, "test") == ConvAlgorithm::direct) == pointwise);
    CHECK(k::choose_conv_algorithm(small_plane, pass, ConvAlgorithm::automatic, "test") != ConvAlgorithm::direct);
  }
  // Their weight gradients run implicit GEMM (with AVX2), one with 16 channels a side im2col.
  const bool vectorised = k::kernel_isa() >= k::Isa::avx2;
  const k::ConvGeometry narrow = k::conv_geometry({8, 16, 56, 56}, {16, 16, 1, 1}, {}, "test");
  for (const auto& g : {r4, r5})
    CHECK((k::choose_conv_algorithm(g, k::ConvPass::backward_weight, ConvAlgorithm::automatic, "test") ==
           ConvAlgorithm::implicit_gemm) == vectorised);
  CHECK(k::choose_conv_algorithm(narrow, k::ConvPass::backward_weight, ConvAlgorithm::automatic, "test") == ConvAlgorithm::im2col);
  {  // its epilogue, run per chunk of positions
    const k::ConvGeometry g = k::conv_geometry({2, 4, 30, 30}, {9, 4, 1, 1}, {}, "test");
    const A x = A::random_uniform({2, 4, 30, 30}, -1, 1, 41), w = A::random_uniform({9, 4, 1, 1}, -1, 1, 42);
    const A bias = A::random_uniform({9}, -1, 1, 43);
    A expected = ref::conv(x, w, {});
    for (std::int64_t i = 0; i < expected.size(); ++i) {
      const double v = expected.data()[i] + bias.data()[(i / 900) % 9];
      expected.data()[i] = v > 0 ? v : 0.25 * v;
    }
    auto leaky = [](const void*, double* values, std::int64_t n) {
      for (std::int64_t i = 0; i < n; ++i) values[i] = values[i] > 0 ? values[i] : 0.25 * values[i];
    };
    const k::OutputEpilogue<double> epilogue{bias.data(), +leaky, nullptr};
    A y(expected.shape());
    k::conv_forward(g, ConvAlgorithm::direct, x.data(), w.data(), y.data(), false, &epilogue);
    CHECK(max_abs_diff(y, expected) < 1e-12);
  }
  // The forward adding into y (a plane of 7 x 9, a partial last vector, and of 8 x 8).
  for (const std::int64_t width : {9, 8}) {
    const tg::Shape xs{2, 3, 8, width}, ws{5, 3, 2, 3};
    const k::ConvGeometry g = k::conv_geometry(xs, ws, {.pad_lo = {0, 1}, .pad_hi = {0, 1}}, "test");
    const A x = A::random_uniform(xs, -1, 1, 21), w = A::random_uniform(ws, -1, 1, 22);
    A y = A::random_uniform({2, 5, 7, width}, -1, 1, 23);
    A expected = ref::conv(x, w, {.pad_lo = {0, 1}, .pad_hi = {0, 1}});
    for (std::int64_t i = 0; i < y.size(); ++i) expected.data()[i] += y.data()[i];
    k::conv_forward(g, ConvAlgorithm::direct, x.data(), w.data(), y.data(), /*accumulate=*/true);
    CHECK(max_abs_diff(y, expected) < 1e-12);
  }
}

TEST_CASE("conv: the shifted-copy weight gradient in float, on LeNet's conv1, equals the reference") {
  // Float sums over 64 x 784 positions per tap, in vectors of 16 lanes, with the
  // bias gradient and a ReLU pullback folded in (conv_backward_weight_folded).
  namespace k = tg::kernels;
  const k::ConvGeometry g = k::conv_geometry({64, 1, 28, 28}, {30, 1, 5, 5}, {.pad_lo = {2}, .pad_hi = {2}}, "test");
  const A x = A::random_uniform({64, 1, 28, 28}, -1, 1, 11), w = A::random_uniform({30, 1, 5, 5}, -1, 1, 12);
  const A out = A::random_uniform({64, 30, 28, 28}, -1, 1, 13);  // the ReLU's output: its pullback keeps gy where out > 0
  A gy = A::random_uniform({64, 30, 28, 28}, -1, 1, 14);
  A masked = gy;
  for (std::int64_t i = 0; i < masked.size(); ++i) masked.data()[i] = out.data()[i] > 0 ? masked.data()[i] : 0.0;
  const auto [gx_ref, gw_ref] = ref::conv_backward(x, w, masked, {.padding = {2}});
  std::vector<double> gb_ref(30, 0.0);
  for (std::int64_t i = 0; i < masked.size(); ++i) gb_ref[static_cast<std::size_t>((i / 784) % 30)] += masked.data()[i];
  auto relu_pullback = [](const void*, const float* o, float* adjoint, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) adjoint[i] = o[i] > 0 ? adjoint[i] : 0.0f;
  };
  const auto xf = x.cast<float>(), outf = out.cast<float>();
  const int before = tg::max_threads();
  for (int threads : {1, 3}) {
    CAPTURE(threads);
    tg::set_num_threads(threads);
    auto gyf = gy.cast<float>();
    tg::Array<float> gw(tg::Shape{30, 1, 5, 5}), gb(tg::Shape{30});
    const k::AdjointPrologue<float> prologue{outf.data(), +relu_pullback, nullptr, gb.data()};
    k::conv_backward_weight_folded(g, ConvAlgorithm::direct, xf.data(), gyf.data(), gw.data(), prologue);
    CHECK(max_abs_diff(gw.cast<double>(), gw_ref) < 2e-3);  // sums of about 25,000 terms of size 0.25
    CHECK(max_abs_diff(gyf.cast<double>(), masked.cast<float>().cast<double>()) == 0);  // the pullback, in place
    double bias_error = 0;
    for (std::size_t j = 0; j < 30; ++j) bias_error = std::max(bias_error, std::abs(double(gb.data()[j]) - gb_ref[j]));
    CHECK(bias_error < 2e-3);
  }
  tg::set_num_threads(before);
}

TEST_CASE("conv: the shifted-copy weight gradient by sample parts and by filter blocks, the same at any thread count") {
  // Note [Shifted weight pass by sample parts]: 10 samples in 8 uneven parts
  // and 3 samples in 3 (an odd count: halves of 2 and 1 parts) (LeNet-like:
  // one channel, 8 filters), and 4 channels x 64 filters, whose sums are too
  // large for parts and run by filter blocks. Each against the reference, and
  // bit for bit the same at 1, 2 and 3 threads.
  namespace k = tg::kernels;
  struct Case {
    tg::Shape x, w;
  };
  for (const Case& c : {Case{{10, 1, 12, 12}, {8, 1, 5, 5}}, Case{{3, 1, 12, 12}, {8, 1, 5, 5}}, Case{{3, 4, 9, 9}, {64, 4, 5, 5}}}) {
    CAPTURE(c.w);
    const k::ConvGeometry g = k::conv_geometry(c.x, c.w, {.pad_lo = {2}, .pad_hi = {2}}, "test");
    const A x = A::random_uniform(c.x, -1, 1, 51), w = A::random_uniform(c.w, -1, 1, 52);
    const A gy = A::random_uniform({c.x[0], c.w[0], c.x[2], c.x[3]}, -1, 1, 53);
    const auto [gx_ref, gw_ref] = ref::conv_backward(x, w, gy, {.padding = {2}});
    const int before = tg::max_threads();
    std::vector<A> results;
    for (int threads : {1, 2, 3}) {
      CAPTURE(threads);
      tg::set_num_threads(threads);
      A gw(c.w);
      k::conv_backward_weight(g, ConvAlgorithm::direct, x.data(), gy.data(), gw.data());
      CHECK(max_abs_diff(gw, gw_ref) < 1e-11);
      results.push_back(gw);
    }
    tg::set_num_threads(before);
    CHECK(max_abs_diff(results[0], results[1]) == 0);
    CHECK(max_abs_diff(results[0], results[2]) == 0);
  }
}

TEST_CASE("conv: implicit GEMM's packed weights, a copy on each thread or one shared, equal the reference at 1-3 threads") {
  // Note [Packed weights on each thread]: 16 channels x 40 filters (46 KB in
  // double) are packed on every thread; 128 x 320 (2.9 MB, for the forward and
  // for the stride-2 input gradient's phases together) once on 1 thread and
  // on 3, on each of 2.
  namespace k = tg::kernels;
  struct Case {
    tg::Shape x, w;
  };
  for (const Case& c : {Case{{5, 16, 9, 9}, {40, 16, 3, 3}}, Case{{1, 128, 6, 6}, {320, 128, 3, 3}}}) {
    CAPTURE(c.w);
    const k::ConvGeometry g = k::conv_geometry(c.x, c.w, {.stride = {2, 2}, .pad_lo = {1, 1}, .pad_hi = {1, 1}}, "test");
    const A x = A::random_uniform(c.x, -1, 1, 61), w = A::random_uniform(c.w, -1, 1, 62);
    const A y_ref = ref::conv(x, w, {.stride = {2}, .padding = {1}});
    const A gy = A::random_uniform(y_ref.shape(), -1, 1, 63);
    const auto [gx_ref, gw_ref] = ref::conv_backward(x, w, gy, {.stride = {2}, .padding = {1}});
    const int before = tg::max_threads();
    for (int threads : {1, 2, 3}) {
      CAPTURE(threads);
      tg::set_num_threads(threads);
      A y(y_ref.shape()), gx(c.x);
      k::conv_forward(g, ConvAlgorithm::implicit_gemm, x.data(), w.data(), y.data(), false);
      CHECK(max_abs_diff(y, y_ref) < 1e-11);
      k::conv_backward_input(g, ConvAlgorithm::implicit_gemm, gy.data(), w.data(), gx.data(), false);
      CHECK(max_abs_diff(gx, gx_ref) < 1e-11);
    }
    tg::set_num_threads(before);
  }
}

TEST_CASE("conv: a 1x1 weight gradient with fewer channels than filters packs x, folded or not, equal to the reference") {
  // Note [Pointwise weight pass, packing the smaller side]: implicit GEMM on the
  // swapped roles, gw transposed back; a folded ReLU pullback and bias gradient
  // run as their own pass first. Groups of 3 channels and 10 filters; 1 and 3 threads.
  namespace k = tg::kernels;
  for (const std::int64_t groups : {1, 2}) {
    CAPTURE(groups);
    const tg::Shape xs{5, 6, 9, 9}, ws{20, 6 / groups, 1, 1}, ys{5, 20, 9, 9};
    const k::ConvGeometry g = k::conv_geometry(xs, ws, {.groups = groups}, "test");
    const A x = A::random_uniform(xs, -1, 1, 21), w = A::random_uniform(ws, -1, 1, 22);
    const A out = A::random_uniform(ys, -1, 1, 23), gy = A::random_uniform(ys, -1, 1, 24);
    A masked = gy;
    for (std::int64_t i = 0; i < masked.size(); ++i) masked.data()[i] = out.data()[i] > 0 ? masked.data()[i] : 0.0;
    const auto [gx_plain, gw_plain] = ref::conv_backward(x, w, gy, {.groups = groups});
    const auto [gx_ref, gw_ref] = ref::conv_backward(x, w, masked, {.groups = groups});
    std::vector<double> gb_ref(20, 0.0);
    for (std::int64_t i = 0; i < masked.size(); ++i) gb_ref[static_cast<std::size_t>((i / 81) % 20)] += masked.data()[i];
    auto relu_pullback = [](const void*, const double* o, double* adjoint, std::int64_t n) {
      for (std::int64_t i = 0; i < n; ++i) adjoint[i] = o[i] > 0 ? adjoint[i] : 0.0;
    };
    const int before = tg::max_threads();
    std::optional<A> gw_one_thread;
    for (int threads : {1, 3}) {
      CAPTURE(threads);
      tg::set_num_threads(threads);
      A gw(ws);
      k::conv_backward_weight(g, ConvAlgorithm::implicit_gemm, x.data(), gy.data(), gw.data());
      CHECK(max_abs_diff(gw, gw_plain) < 1e-12);
      if (!gw_one_thread) gw_one_thread = gw;
      CHECK(max_abs_diff(gw, *gw_one_thread) == 0);
      A gy_in_place = gy, gw_folded(ws), gb(tg::Shape{20});
      const k::AdjointPrologue<double> prologue{out.data(), +relu_pullback, nullptr, gb.data()};
      k::conv_backward_weight_folded(g, ConvAlgorithm::implicit_gemm, x.data(), gy_in_place.data(), gw_folded.data(), prologue);
      CHECK(max_abs_diff(gw_folded, gw_ref) < 1e-12);
      CHECK(max_abs_diff(gy_in_place, masked) == 0);
      double bias_error = 0;
      for (std::size_t j = 0; j < 20; ++j) bias_error = std::max(bias_error, std::abs(gb.data()[j] - gb_ref[j]));
      CHECK(bias_error < 1e-12);
    }
    tg::set_num_threads(before);
  }
}

TEST_CASE("conv: implicit GEMM over sample chunks and own copies equals the reference, the same at every thread count") {
  // Note [Sample chunks]: 20 samples of 32 x 46 x 46 inputs, stride 2, padded
  // by 1: each sample's padded copy is 590 KB in double, so every pass runs in
  // 3-4 chunks, and the scratch stack never holds the batch's copy.
  // Note [Weight pass on each thread's own copies]: 32 filters are four blocks
  // of 8 doubles: 2 and 4 threads own two blocks and one each and copy
  // samples a few at a time; 3 threads share the chunk's copies. The weight
  // gradient is the same bit for bit at 1-4 threads, and the folded ReLU
  // pullback and bias gradient read each chunk's own samples.
  namespace k = tg::kernels;
  const ConvParams p{.stride = {2}, .padding = {1}};
  const tg::Shape xs{20, 32, 46, 46}, ws{32, 32, 3, 3};
  const k::ConvGeometry g = k::conv_geometry(xs, ws, {.stride = {2, 2}, .pad_lo = {1, 1}, .pad_hi = {1, 1}}, "test");
  const A x = A::random_uniform(xs, -1, 1, 21), w = A::random_uniform(ws, -1, 1, 22);
  const A y_ref = ref::conv(x, w, p);
  const A out = A::random_uniform(y_ref.shape(), -1, 1, 23);  // a ReLU's output: its pullback keeps gy where out > 0
  const A gy = A::random_uniform(y_ref.shape(), -1, 1, 24);
  A masked = gy;
  for (std::int64_t i = 0; i < masked.size(); ++i) masked.data()[i] = out.data()[i] > 0 ? masked.data()[i] : 0.0;
  const auto [gx_ref, gw_ref] = ref::conv_backward(x, w, gy, p);
  const auto [unused, gw_masked_ref] = ref::conv_backward(x, w, masked, p);
  std::vector<double> gb_ref(32, 0.0);
  const std::int64_t plane = y_ref.shape()[2] * y_ref.shape()[3];
  for (std::int64_t i = 0; i < masked.size(); ++i) gb_ref[static_cast<std::size_t>((i / plane) % 32)] += masked.data()[i];
  auto relu_pullback = [](const void*, const double* o, double* adjoint, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) adjoint[i] = o[i] > 0 ? adjoint[i] : 0.0;
  };
  const double whole_copy = 20.0 * 32 * 48 * 48 * sizeof(double);
  std::optional<A> gw_first, gw_folded_first, gb_first;
  const int before = tg::max_threads();
  for (int threads : {1, 2, 3, 4}) {
    CAPTURE(threads);
    tg::set_num_threads(threads);
    A y(y_ref.shape()), gx(xs), gw = A::zeros(ws), gw_folded = A::zeros(ws), gb = A::zeros({32});
    k::release_scratch();
    k::conv_forward(g, ConvAlgorithm::implicit_gemm, x.data(), w.data(), y.data(), false);
    CHECK(double(k::scratch_bytes()) < whole_copy / 2);
    CHECK(max_abs_diff(y, y_ref) < 1e-12);
    k::conv_backward_input(g, ConvAlgorithm::implicit_gemm, gy.data(), w.data(), gx.data(), false);
    CHECK(max_abs_diff(gx, gx_ref) < 1e-12);
    k::release_scratch();
    k::conv_backward_weight(g, ConvAlgorithm::implicit_gemm, x.data(), gy.data(), gw.data());
    CHECK(double(k::scratch_bytes()) < whole_copy / 2);
    CHECK(max_abs_diff(gw, gw_ref) < 1e-10);
    A gy_in_place = gy;
    const k::AdjointPrologue<double> prologue{out.data(), +relu_pullback, nullptr, gb.data()};
    k::conv_backward_weight_folded(g, ConvAlgorithm::implicit_gemm, x.data(), gy_in_place.data(), gw_folded.data(), prologue);
    CHECK(max_abs_diff(gy_in_place, masked) == 0);  // the pullback, in place, on every chunk's own samples, once
    CHECK(max_abs_diff(gw_folded, gw_masked_ref) < 1e-10);
    double bias_error = 0;
    for (std::size_t j = 0; j < 32; ++j) bias_error = std::max(bias_error, std::abs(gb.data()[j] - gb_ref[j]));
    CHECK(bias_error < 1e-10);
    if (!gw_first) gw_first = gw, gw_folded_first = gw_folded, gb_first = gb;
    CHECK(max_abs_diff(gw, *gw_first) == 0);
    CHECK(max_abs_diff(gw_folded, *gw_folded_first) == 0);
    CHECK(max_abs_diff(gb, *gb_first) == 0);
  }
  tg::set_num_threads(before);
}

TEST_CASE("conv_transpose: every algorithm equals the reference, and is the adjoint of conv") {
  std::uint64_t seed = 100;
  for (const auto& c : cases()) {
    // The transpose maps conv outputs back to conv inputs: its input has the conv's output shape.
    const A w = A::random_uniform(c.w, -1, 1, seed++);
    tg::Shape wt = c.w;  // (C, K/groups, ...) for the transpose: swap roles
    wt[0] = c.x[1];
    wt[1] = c.w[0] / c.p.groups;
    const A wT = A::random_uniform(wt, -1, 1, seed++);
    const A probe = ref::conv(A::zeros(c.x), A::zeros(c.w), c.p);  // conv output shape
    tg::Shape xt = probe.shape();
    xt[1] = c.x[1];
    const A x = A::random_uniform(xt, -1, 1, seed++);
    tg::Shape out = c.x;
    out[1] = wt[1] * c.p.groups;
    // Where the conv's stride dropped trailing inputs, output_padding brings them back.
    ConvParams p = c.p;
    const ref::Geo g = ref::geo(c.x, c.w, c.p);
    for (int d = 3 - static_cast<int>(c.x.rank() - 2); d < 3; ++d)
      p.output_padding.push_back((g.in[d] + g.lo[d] + g.hi[d] - g.d[d] * (g.ker[d] - 1) - 1) % g.s[d]);
    const A expected = ref::conv_transpose(x, wT, p, out);
    for (auto algorithm : kAlgorithms) {
      if (!applies(algorithm, c.w, c.p)) continue;
      CAPTURE(tg::to_string(c.x));
      CAPTURE(std::string(tg::kernels::to_string(algorithm)));
      const A y = tg::conv_transpose(x, wT, forced(p, algorithm));
      REQUIRE(y.shape() == expected.shape());
      CHECK(max_abs_diff(y, expected) < 1e-12);
    }
  }
}

TEST_CASE("conv: the triple (one instruction, replay, finite differences) with and without bias") {
  std::vector<Case> all = cases();
  // Winograd forced: 5x5 and 3x5 taps, groups.
  all.push_back({{2, 3, 7, 6}, {4, 3, 5, 5}, {.padding = {2}, .algorithm = ConvAlgorithm::winograd}});
  all.push_back({{2, 4, 6, 9}, {6, 2, 3, 5}, {.padding = {1, 2}, .groups = 2, .algorithm = ConvAlgorithm::winograd}});
  // Implicit GEMM strided: the input gradient by phases (Note [Strided input adjoint by phases]).
  all.push_back({{2, 17, 7, 6}, {3, 17, 3, 3}, {.stride = {2}, .padding = {1}, .algorithm = ConvAlgorithm::implicit_gemm}});
  // Depthwise, direct: at avx512 and avx2 all three passes on the shifted copies (the input gradient as the adjoint's forward).
  all.push_back({{2, 4, 6, 7}, {4, 1, 3, 3}, {.padding = {1}, .groups = 4, .algorithm = ConvAlgorithm::direct}});
  for (const auto& c : all) {
    CAPTURE(tg::to_string(c.x));
    const A x = A::random_uniform(c.x, -1, 1, 1), w = A::random_uniform(c.w, -1, 1, 2);
    const A x2 = A::random_uniform(c.x, -1, 1, 3), w2 = A::random_uniform(c.w, -1, 1, 4);
    check_op([&](const T& a, const T& b) { return tg::conv(a, b, c.p); }, std::tuple{x, w}, std::tuple{x2, w2});
    const A b = A::random_uniform({c.w[0]}, -1, 1, 5), b2 = A::random_uniform({c.w[0]}, -1, 1, 6);
    check_op([&](const T& a, const T& k, const T& bias) { return tg::conv(a, k, bias, c.p); }, std::tuple{x, w, b},
             std::tuple{x2, w2, b2});
  }
}

TEST_CASE("conv_transpose: the triple with bias and output padding") {
  const A x = A::random_uniform({2, 3, 4, 3}, -1, 1, 1), w = A::random_uniform({3, 2, 3, 2}, -1, 1, 2),
          b = A::random_uniform({2}, -1, 1, 3);
  const A x2 = A::random_uniform({2, 3, 4, 3}, -1, 1, 4), w2 = A::random_uniform({3, 2, 3, 2}, -1, 1, 5),
          b2 = A::random_uniform({2}, -1, 1, 6);
  const ConvParams p{.stride = {2, 2}, .padding = {1, 0}, .output_padding = {1, 0}};
  check_op([&](const T& a, const T& k, const T& bias) { return tg::conv_transpose(a, k, bias, p); }, std::tuple{x, w, b},
           std::tuple{x2, w2, b2});
  const ConvParams grouped{.dilation = {2}, .groups = 3};
  const A wg = A::random_uniform({3, 1, 2, 2}, -1, 1, 7), wg2 = A::random_uniform({3, 1, 2, 2}, -1, 1, 8);
  check_op([&](const T& a, const T& k) { return tg::conv_transpose(a, k, grouped); }, std::tuple{x, wg}, std::tuple{x2, wg2});
}

TEST_CASE("conv: dot-product test on layer-sized shapes, every algorithm") {
  const A x = A::random_uniform({4, 8, 16, 16}, -1, 1, 1), w = A::random_uniform({16, 8, 3, 3}, -1, 1, 2);
  for (auto algorithm : kAlgorithms) {
    CAPTURE(std::string(tg::kernels::to_string(algorithm)));
    const ConvParams p = forced({.padding = {1}}, algorithm);
    check_dot_product([&](const T& a, const T& b) { return tg::conv(a, b, p); }, x, w);
  }
  // Depthwise at 56 x 56: the weight pass takes its 32 groups in chunks (at avx512).
  check_dot_product([&](const T& a, const T& b) { return tg::conv(a, b, {.padding = {1}, .groups = 32}); },
                    A::random_uniform({2, 32, 56, 56}, -1, 1, 6), A::random_uniform({32, 1, 3, 3}, -1, 1, 7));
  const ConvParams strided{.stride = {2}, .padding = {1}, .groups = 2};
  check_dot_product([&](const T& a, const T& b) { return tg::conv(a, b, strided); }, x,
                    A::random_uniform({16, 4, 3, 3}, -1, 1, 3));
  check_dot_product([&](const T& a, const T& b) { return tg::conv_transpose(a, b, {.stride = {2}, .padding = {1}}); },
                    A::random_uniform({4, 8, 8, 8}, -1, 1, 4), A::random_uniform({8, 6, 4, 4}, -1, 1, 5));
  // A ResNet-like stride-2 layer whose input gradient runs by phases.
  const ConvParams phases{.stride = {2}, .padding = {1}, .algorithm = ConvAlgorithm::implicit_gemm};
  check_dot_product([&](const T& a, const T& b) { return tg::conv(a, b, phases); }, A::random_uniform({4, 32, 14, 14}, -1, 1, 6),
                    A::random_uniform({24, 32, 3, 3}, -1, 1, 7));
  // 1x1 layers under the cost rule (Note [Pointwise runs], Note [Pointwise weight
  // pass, packing the smaller side]): expanding 32 -> 96 and contracting 96 -> 32.
  const A narrow = A::random_uniform({4, 32, 14, 14}, -1, 1, 8), wide = A::random_uniform({4, 96, 14, 14}, -1, 1, 9);
  check_dot_product([](const T& a, const T& b) { return tg::conv(a, b); }, narrow, A::random_uniform({96, 32, 1, 1}, -1, 1, 10));
  check_dot_product([](const T& a, const T& b) { return tg::conv(a, b); }, wide, A::random_uniform({32, 96, 1, 1}, -1, 1, 11));
}

TEST_CASE("conv: a constant weight gets no gradient, and the dump shows the algorithms") {
  const A x = A::random_uniform({2, 3, 8, 8}, -1, 1, 1), w = A::random_uniform({4, 3, 3, 3}, -1, 1, 2);
  auto tape = tg::record([&](const T& a) { return tg::sum(tg::conv(a, tg::constant(w), {.padding = {1}, .algorithm = ConvAlgorithm::im2col})); }, x);
  const A g = tape.gradient();
  const auto [gx, gw] = tg::gradient([&](const T& a, const T& b) { return tg::sum(tg::conv(a, b, {.padding = {1}})); }, x, w);
  CHECK(max_abs_diff(g, gx) < 1e-12);
  const std::string text = tg::dump(tape);
  CHECK(text.find("conv") != std::string::npos);
  CHECK(text.find("padding=[1] algorithm=im2col/im2col/im2col") != std::string::npos);
  // The automatic rule: depthwise runs direct loops, a channel-heavy layer runs im2col.
  auto depthwise = tg::record([&](const T& a) { return tg::sum(tg::conv(a, tg::constant(A::ones({3, 1, 3, 3})), {.groups = 3})); }, x);
  CHECK(tg::dump(depthwise).find("algorithm=direct/direct/direct") != std::string::npos);
  // A channel-heavy 3x3 layer runs Winograd where AVX2+FMA is there (else
  // im2col); strided, implicit GEMM (its input gradient by phases); a 1x1
  // layer's forward and input gradient run the pointwise runs at avx512
  // (Note [Pointwise runs]), its weight gradient implicit GEMM.
  const bool vectorised = tg::kernels::isa() >= tg::kernels::Isa::avx2;
  const std::string heavy = vectorised ? "winograd" : "im2col", heavy_strided = vectorised ? "implicit_gemm" : "im2col";
  const A big = A::zeros({1, 64, 16, 16}), bigw = A::zeros({64, 64, 3, 3});
  auto layer = tg::record([&](const T& a) { return tg::sum(tg::conv(a, tg::constant(bigw), {.padding = {1}})); }, big);
  CHECK(tg::dump(layer).find(fmt::format("algorithm={0}/{0}/{0}", heavy)) != std::string::npos);
  auto strided = tg::record([&](const T& a) { return tg::sum(tg::conv(a, tg::constant(bigw), {.stride = {2}, .padding = {1}})); }, big);
  CHECK(tg::dump(strided).find(fmt::format("algorithm={0}/{0}/{0}", heavy_strided)) != std::string::npos);
  auto pointwise = tg::record([&](const T& a) { return tg::sum(tg::conv(a, tg::constant(A::zeros({64, 64, 1, 1})))); }, big);
  const bool runs = tg::kernels::kernel_isa() >= tg::kernels::Isa::avx512;
  const std::string pointwise_algorithms = runs ? "direct/direct/implicit_gemm" : vectorised ? "im2col/im2col/implicit_gemm" : "im2col/im2col/im2col";
  CHECK(tg::dump(pointwise).find("algorithm=" + pointwise_algorithms) != std::string::npos);
}

TEST_CASE("conv: tuning times only the plausible algorithms, answers one of them, and keeps its answer") {
  // Note [Tuning convolution algorithms]
  namespace k = tg::kernels;
  struct TuneCase {
    tg::Shape x, w;
    k::ConvSpec spec;
  };
  const TuneCase tune_cases[] = {
      {{4, 1, 16, 16}, {8, 1, 5, 5}, {.pad_lo = {2}, .pad_hi = {2}}},  // one input channel, like LeNet's conv1
      {{2, 16, 8, 8}, {16, 16, 3, 3}, {.pad_lo = {1}, .pad_hi = {1}}},  // channel-heavy 3x3
      {{2, 8, 9, 9}, {8, 8, 3, 3}, {.stride = {2}}},                    // strided: neither fft nor winograd runs
      {{3, 4, 20}, {6, 4, 5}, {}},                                      // 1-D
  };
  for (const TuneCase& c : tune_cases)
    for (auto pass : {k::ConvPass::forward, k::ConvPass::backward_input, k::ConvPass::backward_weight}) {
      CAPTURE(tg::to_string(c.x));
      CAPTURE(k::to_string(pass));
      const k::ConvGeometry g = k::conv_geometry(c.x, c.w, c.spec, "conv");
      const k::AlgorithmSeconds estimate = k::conv_estimated_seconds(g, pass);
      const double cheapest = *std::min_element(estimate.begin(), estimate.end());
      for (const ConvAlgorithm a : {k::tune_conv_algorithm<double>(g, pass), k::tune_conv_algorithm<float>(g, pass)}) {
        CAPTURE(k::to_string(a));
        CHECK(std::isfinite(estimate[k::index_of(a)]));
        CHECK(estimate[k::index_of(a)] <= k::kTuneSlack * cheapest);
        if (g.stride[2] != 1) CHECK((a != ConvAlgorithm::fft && a != ConvAlgorithm::winograd));
      }
      CHECK(k::tune_conv_algorithm<double>(g, pass) == k::tune_conv_algorithm<double>(g, pass));  // kept, not timed again
      // The rule's own pick is what the estimates say is cheapest.
      CHECK(estimate[k::index_of(k::choose_conv_algorithm(g, pass, ConvAlgorithm::automatic, "conv"))] == cheapest);
    }
}

TEST_CASE("conv: every algorithm gives the hand-worked 3x3 window sums") {
  // 3x3 window sums of a 4x4 iota, and with padding 1 the corner 0+1+4+5 = 10.
  const A x2 = A::iota({1, 1, 4, 4}), w2 = A::ones({1, 1, 3, 3});
  for (auto algorithm : kAlgorithms) {
    CAPTURE(std::string(tg::kernels::to_string(algorithm)));
    CHECK(max_abs_diff(tg::conv(x2, w2, {.algorithm = algorithm}), A({1, 1, 2, 2}, {45, 54, 81, 90})) < 1e-12);
    CHECK(std::abs(tg::conv(x2, w2, {.padding = {1}, .algorithm = algorithm}).data()[0] - 10) < 1e-12);
  }
}

// Note [Winograd convolution]: tiles of 2x2 (5 taps) or 4x4 (3 taps) outputs
// that overhang the output's edge, mixed tap counts, groups whose channel
// counts are not whole vectors, 1-D, negative adjoint padding, sample blocks of
// the weight gradient, and 1-3 threads.
TEST_CASE("conv: winograd tile edges, tap mixes, groups and threads equal the reference") {
  const std::vector<Case> geometries = {
      {{3, 5, 7, 9}, {6, 5, 5, 5}, {.padding = {2}}},                       // 7x9 outputs: 2x2 tiles overhang
      {{2, 6, 11, 10}, {10, 3, 3, 3}, {.padding = {1}, .groups = 2}},        // 4x4 tiles overhang, 3 channels a group
      {{2, 4, 9, 8}, {17, 4, 3, 5}, {.pad_lo = {0, 2}, .pad_hi = {1, 0}}},   // 3x5 taps, 17 filters: two blocks
      {{2, 3, 12, 7}, {4, 3, 1, 5}, {.padding = {0, 2}}},                    // 1x5: no transform along rows
      {{3, 4, 13}, {5, 4, 3}, {.padding = {1}, .flip = true}},               // 1-D, flipped
      {{2, 20, 6, 6}, {4, 20, 5, 5}, {.pad_lo = {4}, .pad_hi = {0}}},        // adjoint padding -> negative
      // the input gradient's column padding is -1: its padded rows crop the last column of gy
      {{2, 9, 7, 6}, {10, 9, 3, 5}, {.pad_lo = {1, 5}, .pad_hi = {1, 0}}},
      {{40, 2, 16, 16}, {3, 2, 3, 3}, {.padding = {1}}},  // 16 tiles a sample: weight blocks of 8 + 8, 8 + 8 and 4 + 4 samples of the two halves
      {{1, 3, 36, 36}, {4, 3, 3, 3}, {.padding = {1}}},   // one sample of 81 tiles: halves of 5 and 4 tile rows
      // channels, filters and rows past whole vectors of 8 floats: the layout's
      // in-register transposes take an overlapping last block
      {{2, 19, 10, 13}, {12, 19, 3, 3}, {.padding = {1}}},
      {{1, 9, 7, 17}, {9, 9, 5, 5}, {.padding = {2}, .groups = 1}},
      // Note [Transformed weights on each thread]: U is 2.9 MB in double, a
      // copy on each of 2 threads, one shared by 3 (8.8 MB of copies)
      {{1, 80, 6, 6}, {72, 80, 5, 5}, {.padding = {2}}},
  };
  const int before = tg::max_threads();
  std::uint64_t seed = 300;
  for (const auto& c : geometries) {
    const A x = A::random_uniform(c.x, -1, 1, seed++), w = A::random_uniform(c.w, -1, 1, seed++);
    const ConvParams p = forced(c.p, ConvAlgorithm::winograd);
    const A expected = ref::conv(x, w, c.p);
    const A gy = A::random_uniform(expected.shape(), -1, 1, seed++);
    const auto [gx_ref, gw_ref] = ref::conv_backward(x, w, gy, c.p);
    std::optional<A> gw_one_thread;
    for (int threads : {1, 2, 3}) {
      CAPTURE(tg::to_string(c.x));
      CAPTURE(tg::to_string(c.w));
      CAPTURE(threads);
      tg::set_num_threads(threads);
      CHECK(max_abs_diff(tg::conv(x, w, p), expected) < 1e-12);
      const auto [gx, gw] = tg::record([&](const T& a, const T& b) { return tg::conv(a, b, p); }, x, w).vjp(gy);
      CHECK(max_abs_diff(gx, gx_ref) < 1e-12);
      CHECK(max_abs_diff(gw, gw_ref) < 1e-11);
      // Note [Weight pass halves]: the same sums at every thread count
      if (!gw_one_thread) gw_one_thread = gw;
      CHECK(max_abs_diff(gw, *gw_one_thread) == 0);
      // float (the layout's vector blocks are 8 wide, not 4): the transforms'
      // rounding stays well inside single precision's (relative to the
      // outputs' size once sums of 2,000 terms reach 10 and more)
      const auto xf = x.template cast<float>(), wf = w.template cast<float>();
      CHECK(max_abs_diff(tg::conv(xf, wf, p).template cast<double>(), expected) < 1e-5 * std::max(10.0, max_abs(expected)));
      const auto [gxf, gwf] = tg::record([&](const auto& a, const auto& b) { return tg::conv(a, b, p); }, xf, wf)
                                  .vjp(gy.template cast<float>());
      CHECK(max_abs_diff(gxf.template cast<double>(), gx_ref) < 1e-5 * std::max(10.0, max_abs(gx_ref)));
      CHECK(max_abs_diff(gwf.template cast<double>(), gw_ref) < 1e-3 * max_abs(gw_ref));
    }
  }
  tg::set_num_threads(before);
}

TEST_CASE("conv: winograd's weight gradient with one gU (few tiles a sample, many channels) equals im2col's") {
  // Note [Weight pass halves]: 16 tiles a sample and 256 channels and filters
  // (R3's shape, 4 samples) make blocks of 3 samples; halves would sum one
  // sample each, under kMinHalfTiles, so one gU takes blocks of 3 + 1 samples.
  // The geometry is the cases' above scaled up, so it is checked in float
  // against im2col (OpenBLAS), and the same at 1 and 2 threads bit for bit.
  using F = tg::Array<float>;
  const F x = F::random_uniform({4, 256, 14, 14}, -1, 1, 71), w = F::random_uniform({256, 256, 3, 3}, -1, 1, 72);
  const F gy = F::random_uniform({4, 256, 14, 14}, -1, 1, 73);
  auto weight_grad = [&](ConvAlgorithm algorithm) {
    const ConvParams p = forced({.padding = {1}}, algorithm);
    return std::get<1>(
        tg::record([&](const tg::Tracked<float>& a, const tg::Tracked<float>& b) { return tg::conv(a, b, p); }, x, w).vjp(gy));
  };
  const int before = tg::max_threads();
  tg::set_num_threads(1);
  const F expected = weight_grad(ConvAlgorithm::im2col), one = weight_grad(ConvAlgorithm::winograd);
  tg::set_num_threads(2);
  const F two = weight_grad(ConvAlgorithm::winograd);
  tg::set_num_threads(before);
  CHECK(max_abs_diff(one.cast<double>(), expected.cast<double>()) < 1e-4 * max_abs(expected.cast<double>()));
  CHECK(max_abs_diff(one.cast<double>(), two.cast<double>()) == 0);
}

TEST_CASE("conv: forcing winograd where it cannot run is a clear tg::Error") {
  const A x = A::zeros({1, 4, 9, 9});
  const ConvParams wino{.algorithm = ConvAlgorithm::winograd};
  auto with = [&](ConvParams p) {
    p.algorithm = ConvAlgorithm::winograd;
    return p;
  };
  CHECK_THROWS_WITH_AS(tg::conv(x, A::zeros({2, 4, 3, 3}), with({.stride = {2}})), doctest::Contains("winograd runs only"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::conv(x, A::zeros({2, 4, 3, 3}), with({.dilation = {2}})), doctest::Contains("dilation [1,2,2]"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::conv(x, A::zeros({2, 4, 7, 7}), wino), doctest::Contains("kernel [1,7,7]"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::conv(x, A::zeros({2, 4, 4, 3}), wino), doctest::Contains("1, 3 or 5 taps"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::conv(A::zeros({1, 2, 5, 5, 5}), A::zeros({2, 2, 3, 3, 3}), wino), doctest::Contains("1-D and 2-D"),
                       tg::Error);
  // the tape is left as it was: the error comes when the instruction is planned
  auto tape = tg::record([&](const T& a) { return tg::sum(a); }, x);
  const auto before = tape.tape().num_instructions();
  CHECK_THROWS_AS(tg::record([&](const T& a) { return tg::sum(tg::conv(a, A::zeros({2, 4, 3, 3}), with({.stride = {2}}))); }, x),
                  tg::Error);
  CHECK(tape.tape().num_instructions() == before);
}

TEST_CASE("conv: padding far wider than the windows runs without a padded copy; forcing implicit_gemm is a clear tg::Error") {
  // Padded to 3 * 2^20 + 4 per dim and read through stride 2^21: two windows per
  // dim, the second over input rows and columns 1..3 (Note [Implicit GEMM's padded copy]).
  const std::int64_t far = std::int64_t{1} << 20;
  const ConvParams wide{.stride = {2 * far}, .pad_lo = {2 * far - 1}, .pad_hi = {far}};
  const A x = A::random_uniform({1, 2, 5, 5}, -1, 1, 7), w = A::random_uniform({3, 2, 3, 3}, -1, 1, 8);
  const A y = tg::conv(x, w, wide);
  REQUIRE(y.shape() == tg::Shape{1, 3, 2, 2});
  for (std::int64_t k = 0; k < 3; ++k) {
    double window = 0;
    for (std::int64_t c = 0; c < 2; ++c)
      for (std::int64_t t0 = 0; t0 < 3; ++t0)
        for (std::int64_t t1 = 0; t1 < 3; ++t1) window += x(0, c, 1 + t0, 1 + t1) * w(k, c, t0, t1);
    CHECK(y(0, k, 1, 1) == doctest::Approx(window).epsilon(1e-14));
    CHECK(y(0, k, 0, 0) == 0.0);
  }
  CHECK(max_abs_diff(y, ref::conv(x, w, wide)) < 1e-14);
  const A gy = A::random_uniform(y.shape(), -1, 1, 9);
  const auto [gx_ref, gw_ref] = ref::conv_backward(x, w, gy, wide);
  const auto [gx, gw] = tg::record([&](const T& a, const T& b) { return tg::conv(a, b, wide); }, x, w).vjp(gy);
  CHECK(max_abs_diff(gx, gx_ref) < 1e-14);
  CHECK(max_abs_diff(gw, gw_ref) < 1e-14);
  // Forced, implicit GEMM would copy 2 * (3 * 2^20 + 4)^2 elements: refused before any allocation.
  ConvParams forced_gemm = wide;
  forced_gemm.algorithm = ConvAlgorithm::implicit_gemm;
  CHECK_THROWS_WITH_AS(tg::conv(x, w, forced_gemm),
                       doctest::Contains("conv: algorithm implicit_gemm would copy the input zero-padded to 1.98e+13 elements "
                                         "for the forward pass"),
                       tg::Error);
  forced_gemm.algorithm = ConvAlgorithm::automatic;
  forced_gemm.backward_weight_algorithm = ConvAlgorithm::implicit_gemm;
  CHECK_THROWS_WITH_AS(tg::conv(x, w, forced_gemm), doctest::Contains("for the backward_weight pass"), tg::Error);
  // A padding of a few pixels is within the limit, forced or not.
  const ConvParams same{.padding = {1}, .algorithm = ConvAlgorithm::implicit_gemm};
  CHECK(max_abs_diff(tg::conv(x, w, same), ref::conv(x, w, same)) < 1e-14);
}

TEST_CASE("conv: bad geometry is a clear tg::Error and leaves the tape unchanged") {
  const A x = A::zeros({1, 4, 5, 5}), w = A::zeros({2, 4, 3, 3});
  CHECK_THROWS_WITH_AS(tg::conv(x, A::zeros({2, 4, 7, 7})), doctest::Contains("larger than the padded input"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::conv(x, A::zeros({2, 4, 8, 8}), {.padding = {1}}), doctest::Contains("(7 = 5 + 1 + 1)"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::conv(x, A::zeros({3, 2, 3, 3}), {.groups = 2}), doctest::Contains("divisible by groups (2)"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::conv(A::zeros({1, 3, 5, 5}), A::zeros({3, 1, 3, 3}), {.groups = 2}), doctest::Contains("divisible by groups"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::conv(x, w, {.stride = {0}}), doctest::Contains("stride is 0"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::conv(x, w, {.stride = {-1, 1}}), doctest::Contains("stride is -1"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::conv(x, w, {.padding = {-1}}), doctest::Contains("expected >= 0"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::conv(x, w, {.stride = {1, 1, 1}}), doctest::Contains("expected 1 or 2"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::conv(x, A::zeros({2, 4, 3})), doctest::Contains("expected rank 4"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::conv(A::zeros({4, 5, 5}), A::zeros({2, 4, 3})), doctest::Contains("C/groups = 5/1 = 5"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::conv(A::zeros({5, 5}), A::zeros({3, 3})), doctest::Contains("1-3 spatial dims"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::conv(x, A::zeros({2, 3, 3, 3})), doctest::Contains("expected C/groups"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::conv(x, w, A::zeros({3})), doctest::Contains("bias has shape (3)"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::conv(x, w, {.stride = {2}, .algorithm = ConvAlgorithm::fft}), doctest::Contains("fft runs only stride 1"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::conv_transpose(x, A::zeros({3, 2, 3, 3})), doctest::Contains("expected equal"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::conv_transpose(x, A::zeros({4, 2, 3, 3}), {.stride = {2}, .output_padding = {2}}), doctest::Contains("output_padding (2)"), tg::Error);
  // sizes that cannot be counted (found by the tape-file fuzzer: an output volume overflowed int64)
  const std::int64_t huge = std::int64_t(1) << 32;
  CHECK_THROWS_WITH_AS(tg::conv(x, w, {.padding = {huge}}), doctest::Contains("more than 2^59 elements"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::conv(x, w, {.dilation = {std::int64_t(1) << 61}}), doctest::Contains("larger than 2^62"), tg::Error);
  // padding near int64's end: the padded size is not computed by a wrapping sum
  CHECK_THROWS_WITH_AS(tg::conv(x, w, {.padding = {std::int64_t(1) << 62}}), doctest::Contains("more than 2^59 elements"), tg::Error);
  // recorded: the message names the user's line and the tape is untouched
  auto tape = tg::record([](const T& v) { return v * 2.0; }, x);
  const std::size_t before = tape.tape().num_instructions(), slots = tape.tape().num_slots();
  T xt(&tape.tape(), tape.tape().inputs()[0]);
  CHECK_THROWS_WITH_AS(tg::conv(xt, A::zeros({2, 4, 9, 9})), doctest::Contains("test_conv.cpp:"), tg::Error);
  CHECK(tape.tape().num_instructions() == before);
  CHECK(tape.tape().num_slots() == slots);
}

// Note [Instruction-set levels]: the level in use is the widest the CPU has, capped by TG_ISA.
TEST_CASE("conv: instruction-set levels, capped by TG_ISA") {
  using tg::kernels::Isa;
  using tg::kernels::capped_isa;
  CHECK(tg::kernels::isa() <= tg::kernels::detected_isa());
  CHECK(tg::kernels::kernel_isa() == tg::kernels::isa());
  CHECK(capped_isa(Isa::avx512, nullptr) == Isa::avx512);
  CHECK(capped_isa(Isa::avx512, "") == Isa::avx512);
  CHECK(capped_isa(Isa::avx512, "avx2") == Isa::avx2);
  CHECK(capped_isa(Isa::avx512, "portable") == Isa::portable);
  CHECK(capped_isa(Isa::avx2, "avx512") == Isa::avx2);  // a cap above the CPU's level is the CPU's level
  CHECK(std::string(tg::kernels::to_string(Isa::avx512)) == "avx512");
  CHECK_THROWS_WITH_AS(capped_isa(Isa::avx2, "sse4"),
                       doctest::Contains("TG_ISA: value 'sse4' is not a level expected portable, avx2 or avx512; hint: unset it "
                                         "to use the widest level this CPU has (avx2)"),
                       tg::Error);
}

// Note [Paired tiles]: 6 x 2 tiles where the CPU starts two 512-bit FMAs a
// cycle, unless TG_PAIRED_TILES says otherwise; never below avx512. (ctest's
// unit_paired_tiles runs the convolution family with them forced on.)
TEST_CASE("conv: paired tiles follow the FMA units, TG_PAIRED_TILES overrides") {
  using tg::kernels::Isa;
  using tg::kernels::paired_tiles_for;
  CHECK(paired_tiles_for(Isa::avx512, 2, nullptr));
  CHECK_FALSE(paired_tiles_for(Isa::avx512, 1, nullptr));
  CHECK_FALSE(paired_tiles_for(Isa::avx512, 2, "0"));
  CHECK(paired_tiles_for(Isa::avx512, 1, "1"));
  CHECK_FALSE(paired_tiles_for(Isa::avx2, 0, "1"));
  CHECK(paired_tiles_for(Isa::avx512, 2, "") == true);
  CHECK_THROWS_WITH_AS(paired_tiles_for(Isa::avx512, 1, "yes"),
                       doctest::Contains("TG_PAIRED_TILES: value 'yes' is not a choice expected 0 or 1"), tg::Error);
  const int units = tg::kernels::fma512_units();
  const std::string line = tg::kernels::kernels_line();
  if (tg::kernels::kernel_isa() >= Isa::avx512) {
    CHECK((units == 1 || units == 2));
    CHECK(line.find(tg::kernels::paired_tiles() ? "6x2 tiles" : "6x1 tiles") != std::string::npos);
  } else {
    CHECK(units == 0);
    CHECK_FALSE(tg::kernels::paired_tiles());
    CHECK(line.find("tiles") == std::string::npos);
  }
}
