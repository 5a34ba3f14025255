// Note [Assigned adjoints]: the first pullback to reach an adjoint may write it
// instead of adding into zeros. Each case is checked against finite
// differences, then replayed (interpreted and compiled) on other inputs, so
// that every assigned adjoint starts from the previous pass's values: one left
// partly unwritten would show them.
#include "support/checks.hpp"

using namespace tgtest;
using T = tg::Tracked<double>;
using tg::kernels::ConvAlgorithm;

namespace {

// Gradients of a fresh recording on `second`, against a tape (and its compiled
// program) that ran `first` before.
template <class F, class... In>
void check_assigned(F f, const std::tuple<In...>& first, const std::tuple<In...>& second) {
  tg::GradcheckOptions opt;
  const auto report = std::apply([&](const auto&... x) { return tg::gradcheck(opt, f, x...); }, first);
  CHECK_MESSAGE(report.passed(), report.summary());
  auto reference = std::apply([&](const auto&... x) { return tg::record(f, x...); }, second);
  const auto expected = std::apply([&](const auto&... x) { return reference.gradient(x...); }, second);
  auto tape = std::apply([&](const auto&... x) { return tg::record(f, x...); }, first);
  auto compiled = tg::compile(tape);
  for (int round = 0; round < 2; ++round) {
    std::apply([&](const auto&... x) { tape.gradient(x...); }, first);
    std::apply([&](const auto&... x) { compiled.gradient(x...); }, first);
    const auto interpreted = std::apply([&](const auto&... x) { return tape.gradient(x...); }, second);
    const auto replayed = std::apply([&](const auto&... x) { return compiled.gradient(x...); }, second);
    if constexpr (sizeof...(In) == 1) {
      CHECK(max_abs_diff(interpreted, expected) <= 1e-12);
      CHECK(max_abs_diff(replayed, expected) <= 1e-12);
    } else {
      double worst = 0;  // g and e expand in step: input k's gradient against input k's
      for (const auto* got : {&interpreted, &replayed})
        std::apply([&](const auto&... g) {
          std::apply([&](const auto&... e) { ((worst = std::max(worst, max_abs_diff(g, e))), ...); }, expected);
        }, *got);
      CHECK(worst <= 1e-12);
    }
  }
}

A r(tg::Shape s, std::uint64_t seed) { return random_away_from(std::move(s), seed, -1, 1); }

}  // namespace

TEST_CASE("assigned adjoints: ops that assign, and a value two of them share") {
  // y's adjoint is reached by matmul (assigns), then maxpool and reshape (add).
  auto f = [](const T& x, const T& w, const T& v) {
    const T y = tg::conv(x, w, {.padding = {1}});  // (2, 3, 4, 4)
    return tg::sum(tg::maxpool(y, {.window = {2}})) + tg::sum(tg::reshape(y, {2, 48}) * 0.5) +
           tg::sum(tg::matmul(tg::reshape(y, {2, 48}), v));
  };
  check_assigned(f, std::tuple{r({2, 2, 4, 4}, 1), r({3, 2, 3, 3}, 2), r({48, 2}, 3)},
                 std::tuple{r({2, 2, 4, 4}, 4), r({3, 2, 3, 3}, 5), r({48, 2}, 6)});
}

TEST_CASE("assigned adjoints: a slot used twice by one instruction is added, not assigned") {
  auto f = [](const T& x) { return tg::sum(tg::matmul(x, x) * 1.5); };
  check_assigned(f, std::tuple{r({3, 3}, 1)}, std::tuple{r({3, 3}, 2)});
}

TEST_CASE("assigned adjoints: pools that do not write every element zero first") {
  auto f = [](const T& x) {
    return tg::sum(tg::maxpool(x, {.window = {2}})) + tg::sum(tg::meanpool(x, {.window = {3}})) +
           tg::sum(tg::maxpool(x * 2.0, {.window = {2}, .stride = {1}}));
  };
  check_assigned(f, std::tuple{r({2, 2, 5, 7}, 1)}, std::tuple{r({2, 2, 5, 7}, 2)});  // 5x7: a row and a column left over
  auto covered = [](const T& x) { return tg::sum(tg::maxpool(tg::tanh(x), {.window = {2}}) * 3.0); };
  check_assigned(covered, std::tuple{r({2, 2, 4, 6}, 3)}, std::tuple{r({2, 2, 4, 6}, 4)});
}

TEST_CASE("assigned adjoints: batched matmul writes per-batch blocks and zeroes a broadcast operand first") {
  auto f = [](const T& a, const T& b) { return tg::sum(tg::tanh(tg::matmul(a, b))); };
  check_assigned(f, std::tuple{r({2, 3, 4}, 1), r({4, 5}, 2)}, std::tuple{r({2, 3, 4}, 3), r({4, 5}, 4)});
}

TEST_CASE("assigned adjoints: every conv algorithm writes its input adjoint; transposed too") {
  for (auto algorithm : {ConvAlgorithm::direct, ConvAlgorithm::im2col, ConvAlgorithm::implicit_gemm, ConvAlgorithm::fft,
                         ConvAlgorithm::winograd}) {
    CAPTURE(std::string(tg::kernels::to_string(algorithm)));
    auto f = [algorithm](const T& x, const T& w, const T& b) {
      return tg::sum(tg::tanh(tg::conv(tg::sigmoid(x), w, b, {.padding = {1}, .algorithm = algorithm})));
    };
    check_assigned(f, std::tuple{r({2, 3, 5, 5}, 1), r({4, 3, 3, 3}, 2), r({4}, 3)},
                   std::tuple{r({2, 3, 5, 5}, 4), r({4, 3, 3, 3}, 5), r({4}, 6)});
    if (algorithm == ConvAlgorithm::winograd || algorithm == ConvAlgorithm::fft) continue;  // no strides
    auto strided = [algorithm](const T& x, const T& w) {  // implicit GEMM's input gradient falls back to im2col
      return tg::sum(tg::tanh(tg::conv(tg::sigmoid(x), w, {.stride = {2}, .padding = {1}, .algorithm = algorithm})));
    };
    check_assigned(strided, std::tuple{r({2, 3, 6, 6}, 7), r({4, 3, 3, 3}, 8)}, std::tuple{r({2, 3, 6, 6}, 9), r({4, 3, 3, 3}, 10)});
  }
  auto t = [](const T& x, const T& w) { return tg::sum(tg::tanh(tg::conv_transpose(tg::sigmoid(x), w, {.stride = {2}}))); };
  check_assigned(t, std::tuple{r({2, 3, 3, 3}, 1), r({3, 2, 3, 3}, 2)}, std::tuple{r({2, 3, 3, 3}, 3), r({3, 2, 3, 3}, 4)});
}

TEST_CASE("assigned adjoints: elementwise pullbacks write their first adjoint on every broadcast path") {
  // x (3, 4); row (4) and col (3, 1) broadcast in general (zeroed, then added);
  // s is one element (its adjoint folds to one sum); p * p reads one slot twice (added).
  auto f = [](const T& x, const T& row, const T& col, const T& s) {
    const T u = tg::exp(x * 0.5);      // array op constant, then a unary op: a chain the compiler fuses
    const T w = col * (u + row);       // both general broadcasts; u's adjoint from the full-shape side
    const T p = tg::tanh(s * w - s);   // one-element s on both sides
    return tg::sum(p * p) + tg::sum(tg::sigmoid(row) / s);
  };
  check_assigned(f, std::tuple{r({3, 4}, 1), r({4}, 2), r({3, 1}, 3), r({}, 4)},
                 std::tuple{r({3, 4}, 5), r({4}, 6), r({3, 1}, 7), r({}, 8)});
  // A longer chain on one shape: the fused pullback assigns every inner adjoint.
  auto chain = [](const T& x, const T& w) {
    const T a = tg::tanh(x * w + 0.25);
    return tg::sum(tg::exp(-(a * 2.0 - tg::sigmoid(x))) / (w * w + 1.0));
  };
  check_assigned(chain, std::tuple{r({5, 7}, 9), r({5, 7}, 10)}, std::tuple{r({5, 7}, 11), r({5, 7}, 12)});
  // A chain's external input read by one member is written by it, unless an
  // earlier pullback (x * x, recorded later) has written that adjoint already.
  auto once = [](const T& x, const T& y) { return tg::sum(tg::exp(x * 0.5 + 1.0) * 3.0) + tg::sum(tg::tanh(y * 2.0) * y); };
  check_assigned(once, std::tuple{r({5, 7}, 13), r({5, 7}, 14)}, std::tuple{r({5, 7}, 15), r({5, 7}, 16)});
  auto live = [](const T& x) { return tg::sum(tg::exp(x * 0.5 + 1.0) * 3.0) + tg::sum(x * x); };
  check_assigned(live, std::tuple{r({5, 7}, 17)}, std::tuple{r({5, 7}, 18)});
}

TEST_CASE("assigned adjoints: sum and mean write their input adjoint; max and min zero it first") {
  // Each reduction is its input's first (only) reader in the reverse pass.
  auto f = [](const T& x, const T& y, const T& z) {
    return tg::sum(tg::tanh(tg::sum(x * 1.5, {1}))) + tg::mean(y * 0.5) * 2.0 +
           tg::sum(tg::sigmoid(tg::max(z * 2.0, {0}, true))) + tg::min(z * 3.0);
  };
  check_assigned(f, std::tuple{r({3, 4}, 1), r({2, 5}, 2), r({4, 3}, 3)}, std::tuple{r({3, 4}, 4), r({2, 5}, 5), r({4, 3}, 6)});
}

TEST_CASE("assigned adjoints: filters and pad write the image's adjoint through every border") {
  using tg::Border;
  using tg::Output;
  // The image's adjoint is first reached by the filter (or pad), which writes
  // its own pixels and then adds the border's copies onto them; with a tracked
  // fill value too. 3-D images run the filter over a leading dim (its passes add).
  for (const Border border : {Border::fill(0.5), Border::replicate(), Border::reflect(), Border::symmetric(), Border::circular()}) {
    for (const Output output : {Output::same, Output::full}) {
      CAPTURE(std::string(tg::kernels::to_string(border.mode)));
      CAPTURE(static_cast<int>(output));
      const tg::FilterParams p{.border = border, .output = output};
      auto filtered = [p](const T& x, const T& k) { return tg::sum(tg::tanh(tg::correlate(tg::sigmoid(x), k, p))); };
      check_assigned(filtered, std::tuple{r({7, 6}, 1), r({3, 2}, 2)}, std::tuple{r({7, 6}, 3), r({3, 2}, 4)});
      auto volume = [p](const T& x, const T& k) { return tg::sum(tg::tanh(tg::convolve(tg::sigmoid(x), k, p))); };
      check_assigned(volume, std::tuple{r({2, 3, 5, 4}, 5), r({1, 2, 3, 2}, 6)},
                     std::tuple{r({2, 3, 5, 4}, 7), r({1, 2, 3, 2}, 8)});
    }
    const tg::PadParams pp{.lo = {1, 2}, .hi = {2, 1}, .border = border};
    auto padded = [pp](const T& x) { return tg::sum(tg::tanh(tg::pad(tg::sigmoid(x), pp))); };
    check_assigned(padded, std::tuple{r({4, 3}, 9)}, std::tuple{r({4, 3}, 10)});
  }
  const tg::FilterParams fill{.border = Border::fill()};
  auto with_fill = [fill](const T& x, const T& k, const T& v) {
    return tg::sum(tg::tanh(tg::correlate(tg::sigmoid(x), k, tg::sigmoid(v), fill)));
  };
  check_assigned(with_fill, std::tuple{r({6, 5}, 11), r({3, 3}, 12), r({1}, 13)},
                 std::tuple{r({6, 5}, 14), r({3, 3}, 15), r({1}, 16)});
  const tg::PadParams fill_pad{.widths = {2}};
  auto pad_fill = [fill_pad](const T& x, const T& v) { return tg::sum(tg::tanh(tg::pad(tg::sigmoid(x), tg::sigmoid(v), fill_pad))); };
  check_assigned(pad_fill, std::tuple{r({3, 4}, 17), r({1}, 18)}, std::tuple{r({3, 4}, 19), r({1}, 20)});
}
