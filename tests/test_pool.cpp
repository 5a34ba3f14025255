// Pooling: hand-worked answers (PyTorch's rules for padding, ceil_mode and
// count_include_pad), reference loops, the triple, dot products, ties, errors.
#include <cstring>

#include <tapegrad/kernels/pool.hpp>

#include "support/checks.hpp"

using namespace tgtest;
using T = tg::Tracked<double>;
using tg::PoolParams;

namespace {

// Reference from PyTorch's definitions, 2-D (N, C, H, W), square parameters.
A ref_pool(const A& x, int k, int s, int pad, bool ceil, const char* kind, bool include_pad = true, double p = 2) {
  const std::int64_t N = x.shape()[0], C = x.shape()[1], H = x.shape()[2], W = x.shape()[3];
  auto out_size = [&](std::int64_t n) {
    std::int64_t o = (n + 2 * pad - k + (ceil ? s - 1 : 0)) / s + 1;
    if (ceil && (o - 1) * s >= n + pad) --o;
    return o;
  };
  const std::int64_t OH = out_size(H), OW = out_size(W);
  A y = A::zeros({N, C, OH, OW});
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t oh = 0; oh < OH; ++oh)
        for (std::int64_t ow = 0; ow < OW; ++ow) {
          const std::int64_t h0 = oh * s - pad, w0 = ow * s - pad;
          const std::int64_t h1 = std::min(h0 + k, H + pad), w1 = std::min(w0 + k, W + pad);
          double best = -INFINITY, sum = 0, lp = 0;
          std::int64_t count = 0;
          for (std::int64_t h = std::max<std::int64_t>(h0, 0); h < std::min(h1, H); ++h)
            for (std::int64_t w = std::max<std::int64_t>(w0, 0); w < std::min(w1, W); ++w) {
              best = std::max(best, x(n, c, h, w));
              sum += x(n, c, h, w);
              lp += std::pow(std::abs(x(n, c, h, w)), p);
              ++count;
            }
          const double divisor = include_pad ? double((h1 - h0) * (w1 - w0)) : double(count);
          y(n, c, oh, ow) = std::string_view(kind) == "max" ? best : std::string_view(kind) == "mean" ? sum / divisor : std::pow(lp, 1 / p);
        }
  return y;
}

}  // namespace

TEST_CASE("pooling: hand-worked answers on iota inputs") {
  const A x = A::iota({1, 1, 4, 4});
  CHECK(max_abs_diff(tg::maxpool(x, {.window = {2}}), A({1, 1, 2, 2}, {5, 7, 13, 15})) == 0);
  CHECK(max_abs_diff(tg::meanpool(x, {.window = {2}}), A({1, 1, 2, 2}, {2.5, 4.5, 10.5, 12.5})) == 0);
  CHECK(tg::meanpool(x, {.window = {3}, .stride = {1}, .padding = {1}})(0, 0, 0, 0) == doctest::Approx(10.0 / 9));
  CHECK(tg::meanpool(x, {.window = {3}, .stride = {1}, .padding = {1}, .count_include_pad = false})(0, 0, 0, 0) == 2.5);
  const A v = A::iota({1, 1, 5});
  CHECK(max_abs_diff(tg::maxpool(v, {.window = {2}}), A({1, 1, 2}, {1, 3})) == 0);
  CHECK(max_abs_diff(tg::maxpool(v, {.window = {2}, .ceil_mode = true}), A({1, 1, 3}, {1, 3, 4})) == 0);
  CHECK(max_abs_diff(tg::meanpool(v, {.window = {2}, .ceil_mode = true}), A({1, 1, 3}, {0.5, 2.5, 4})) == 0);
  CHECK(max_abs_diff(tg::maxpool(v, {.window = {2}, .stride = {1}, .dilation = {2}}), A({1, 1, 3}, {2, 3, 4})) == 0);
  CHECK(tg::lppool(A({1, 1, 2}, {3, -4}), {.window = {2}}).item() == doctest::Approx(5));
  CHECK(max_abs_diff(tg::global_meanpool(A::iota({1, 2, 2, 2})), A({1, 2, 1, 1}, {1.5, 5.5})) == 0);
  CHECK(max_abs_diff(tg::global_maxpool(A::iota({1, 2, 2, 2})), A({1, 2, 1, 1}, {3, 7})) == 0);
  {  // the whole-plane mean's pullback: gy / plane size over each plane, written or added
    namespace k = tg::kernels;
    const k::PoolGeometry g = k::pool_geometry({2, 3, 2, 2}, {.window = {2}}, "test");
    const A gy = A::iota({2, 3, 1, 1});
    A gx = A::ones({2, 3, 2, 2});
    k::meanpool_backward(g, true, gy.data(), gx.data(), /*write=*/false);
    for (std::int64_t i = 0; i < gx.size(); ++i) CHECK(gx.data()[i] == 1.0 + double(i / 4) / 4);
    k::meanpool_backward(g, true, gy.data(), gx.data(), /*write=*/true);
    for (std::int64_t i = 0; i < gx.size(); ++i) CHECK(gx.data()[i] == double(i / 4) / 4);
  }
  // 3-D
  CHECK(tg::maxpool(A::iota({1, 1, 2, 2, 2}), {.window = {2}}).item() == 7);
}

TEST_CASE("pooling: equal the reference loops with padding, stride and ceil_mode") {
  const A x = A::random_uniform({2, 3, 7, 6}, -1, 1, 1);
  for (int k : {2, 3})
    for (int s : {1, 2})
      for (int pad = 0; pad <= k / 2; ++pad)
        for (bool ceil : {false, true}) {
          CAPTURE(k);
          CAPTURE(s);
          CAPTURE(pad);
          CAPTURE(ceil);
          const PoolParams p{.window = {k}, .stride = {s}, .padding = {pad}, .ceil_mode = ceil};
          CHECK(max_abs_diff(tg::maxpool(x, p), ref_pool(x, k, s, pad, ceil, "max")) == 0);
          CHECK(max_abs_diff(tg::meanpool(x, p), ref_pool(x, k, s, pad, ceil, "mean")) < 1e-15);
          PoolParams q = p;
          q.count_include_pad = false;
          CHECK(max_abs_diff(tg::meanpool(x, q), ref_pool(x, k, s, pad, ceil, "mean", false)) < 1e-15);
          q.p = 3;
          CHECK(max_abs_diff(tg::lppool(x, q), ref_pool(x, k, s, pad, ceil, "lp", true, 3)) < 1e-12);
        }
}

TEST_CASE("pooling: the triple, 1-3 spatial dims") {
  // Distinct values away from each other: no ties for max, no zero norms for lp.
  auto distinct = [](tg::Shape s, std::uint64_t seed) {
    A a = A::random_uniform(std::move(s), -1, 1, seed);
    for (std::int64_t i = 0; i < a.size(); ++i) a.data()[i] += 0.5 * double(i % 7) + (a.data()[i] >= 0 ? 0.1 : -0.1);
    return a;
  };
  const std::vector<std::pair<tg::Shape, PoolParams>> cases = {
      {{2, 2, 9}, {.window = {3}, .stride = {2}, .padding = {1}}},
      {{2, 2, 6, 5}, {.window = {2}, .ceil_mode = true}},
      {{1, 2, 5, 6}, {.window = {3, 2}, .stride = {1, 2}, .padding = {1, 0}, .count_include_pad = false, .p = 3}},
      {{1, 2, 4, 4, 4}, {.window = {2}, .stride = {2}}},
  };
  for (const auto& c : cases) {
    const auto& shape = c.first;  // not a structured binding: clang's OpenMP cannot capture one
    const auto& p = c.second;
    CAPTURE(tg::to_string(shape));
    const A x = distinct(shape, 1), x2 = distinct(shape, 2);
    check_op([&](const T& a) { return tg::maxpool(a, p); }, std::tuple{x}, std::tuple{x2});
    check_op([&](const T& a) { return tg::meanpool(a, p); }, std::tuple{x}, std::tuple{x2});
    check_op([&](const T& a) { return tg::lppool(a, p); }, std::tuple{x}, std::tuple{x2});
    check_op([&](const T& a) { return tg::global_maxpool(a); }, std::tuple{x}, std::tuple{x2});
    check_op([&](const T& a) { return tg::global_meanpool(a); }, std::tuple{x}, std::tuple{x2});
    // x read twice: the global mean-pool adds into an adjoint another pullback wrote.
    check_gradient([](const T& a) { return tg::sum(tg::global_meanpool(a) * tg::global_meanpool(a * a)); }, x);
  }
}

TEST_CASE("pooling: dot-product test on a layer-sized input") {
  const A x = A::random_uniform({8, 16, 28, 28}, -1, 1, 1);
  check_dot_product([](const T& a) { return tg::maxpool(a, {.window = {2}}); }, x);
  check_dot_product([](const T& a) { return tg::meanpool(a, {.window = {3}, .stride = {2}, .padding = {1}}); }, x);
  check_dot_product([](const T& a) { return tg::lppool(a, {.window = {2}, .p = 2}); }, x);
  check_dot_product([](const T& a) { return tg::global_meanpool(a); }, x);
  check_dot_product([](const T& a) { return tg::global_maxpool(a); }, x);
}

TEST_CASE("maxpool: ties route the adjoint to the first maximum in row-major order") {
  const A ones = A::ones({1, 1, 2, 2});
  const A g = tg::gradient([](const T& a) { return tg::sum(tg::maxpool(a, {.window = {2}})); }, ones);
  CHECK(max_abs_diff(g, A({1, 1, 2, 2}, {1, 0, 0, 0})) == 0);
  const A x({1, 1, 4}, {0, 5, 5, 1});  // overlapping windows [0 5] [5 5] [5 1]
  const A g2 = tg::gradient([](const T& a) { return tg::sum(tg::maxpool(a, {.window = {2}, .stride = {1}})); }, x);
  CHECK(max_abs_diff(g2, A({1, 1, 4}, {0, 2, 1, 0})) == 0);
}

TEST_CASE("maxpool: a NaN is the maximum and takes the adjoint, in the 2x2 fast path and the general one") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  // windows (2x2, stride 2): [1 3; 3 2] -> 3 at its first place; [nan 9; 4 nan] -> the last NaN (PyTorch's rule)
  const A x({1, 1, 2, 4}, {1, 3, nan, 9, 3, 2, 4, nan});
  const A y = tg::maxpool(x, {.window = {2}});
  CHECK(y.data()[0] == 3);
  CHECK(std::isnan(y.data()[1]));
  auto tape = tg::record([](const T& a) { return tg::maxpool(a, {.window = {2}}); }, x);
  const A g = tape.vjp(A({1, 1, 1, 2}, {10, 20}));
  CHECK(max_abs_diff(g, A({1, 1, 2, 4}, {0, 10, 0, 0, 0, 0, 0, 20})) == 0);
  // General path (stride 1, overlapping): windows [1 3; 3 2], [3 nan; 2 4], [nan 9; 4 nan]
  const A y1 = tg::maxpool(x, {.window = {2}, .stride = {1}});
  CHECK(y1.data()[0] == 3);
  CHECK(std::isnan(y1.data()[1]));
  CHECK(std::isnan(y1.data()[2]));
  auto tape1 = tg::record([](const T& a) { return tg::maxpool(a, {.window = {2}, .stride = {1}}); }, x);
  // [3 nan; 2 4]: its one NaN; [nan 9; 4 nan]: its last NaN
  CHECK(max_abs_diff(tape1.vjp(A({1, 1, 1, 3}, {1, 2, 4})), A({1, 1, 2, 4}, {0, 1, 2, 0, 0, 0, 0, 4})) == 0);
}

// Note [Maxpool window codes]: the backward from codes gives exactly the re-scan's
// gradient, on ties, NaNs, odd sizes (an uncovered last row and column) and an
// adjoint that already holds values; written (not added) where the windows cover
// the input. Note [Short rows in chunks]: rows of 0 to 20 outputs (shorter than
// one chunk, one chunk, chunks that overlap) against a scalar reference.
template <class V>
void check_window_codes(std::int64_t H, std::int64_t W) {
  namespace k = tg::kernels;
  CAPTURE(H);
  CAPTURE(W);
  const V nan = std::numeric_limits<V>::quiet_NaN();
  const std::int64_t N = 3, C = 2;
  std::vector<V> x(static_cast<std::size_t>(N * C * H * W));
  std::uint64_t state = 12345;
  for (auto& v : x) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    const auto r = static_cast<int>(state >> 60);  // 0..15: many ties
    v = r == 15 ? nan : r == 14 ? V(-0.0) : V(r % 5) - V(2);
  }
  const k::PoolGeometry g = k::pool_geometry({N, C, H, W}, {.window = {2}}, "maxpool");
  REQUIRE(k::maxpool_keeps_codes(g));
  const std::int64_t outputs = N * C * g.out_vol();
  std::vector<V> y(static_cast<std::size_t>(outputs)), y_codes(y.size()), gy(y.size());
  std::vector<V> codes(y.size());
  for (std::size_t i = 0; i < gy.size(); ++i) gy[i] = V(1) + V(i);
  k::maxpool_forward(g, x.data(), y.data());
  k::maxpool_forward(g, x.data(), y_codes.data(), codes.data());
  CHECK(std::memcmp(y.data(), y_codes.data(), y.size() * sizeof(V)) == 0);  // the same maxima, bit for bit
  for (auto c : codes) CHECK((c == 0 || c == 1 || c == 2 || c == 3));
  std::vector<V> rescan(x.size(), V(0.5)), from_codes(x.size(), V(0.5));
  k::maxpool_backward(g, x.data(), y.data(), gy.data(), rescan.data());
  k::maxpool_backward(g, x.data(), y.data(), gy.data(), from_codes.data(), codes.data());
  CHECK(std::memcmp(rescan.data(), from_codes.data(), x.size() * sizeof(V)) == 0);
  // The gather (the backward's adjoint) from codes reads the same elements as its re-scan.
  std::vector<V> gathered(y.size(), V(0.25)), gathered_codes(y.size(), V(0.25));
  k::maxpool_gather(g, x.data(), y.data(), rescan.data(), gathered.data(), true);
  k::maxpool_gather(g, x.data(), y.data(), rescan.data(), gathered_codes.data(), true, codes.data());
  CHECK(std::memcmp(gathered.data(), gathered_codes.data(), y.size() * sizeof(V)) == 0);
  // The reference: each window's maximum by max_step's rule and its first place (its last NaN), element by element.
  const std::int64_t Ho = H / 2, Wo = W / 2;
  bool same = true;
  for (std::int64_t p = 0; p < N * C; ++p)
    for (std::int64_t i = 0; i < Ho; ++i)
      for (std::int64_t j = 0; j < Wo; ++j) {
        const V* w0 = x.data() + (p * H + 2 * i) * W + 2 * j;
        const std::array<V, 4> v{w0[0], w0[1], w0[W], w0[W + 1]};
        V best = v[0];
        for (int t = 1; t < 4; ++t) best = std::isnan(best) ? best : (best > v[t] ? best : v[t]);
        int first = 0;
        while (first < 3 && !(v[first] == best)) ++first;
        if (std::isnan(best))
          for (int t = 0; t < 4; ++t)
            if (std::isnan(v[t])) first = t;
        const std::size_t o = static_cast<std::size_t>((p * Ho + i) * Wo + j);
        same = same && std::memcmp(&y[o], &best, sizeof(V)) == 0 && codes[o] == V(first);
      }
  CHECK(same);
  if (!k::maxpool_codes_cover_input(g)) return;
  std::vector<V> rescan_zero(x.size(), V(0)), written(x.size(), V(7));  // stale values, all overwritten
  k::maxpool_backward(g, x.data(), y.data(), gy.data(), rescan_zero.data());
  k::maxpool_backward(g, x.data(), y.data(), gy.data(), written.data(), codes.data(), /*write=*/true);
  CHECK(std::memcmp(rescan_zero.data(), written.data(), x.size() * sizeof(V)) == 0);
}

TEST_CASE("maxpool: the 2x2 backward from window codes equals the re-scan, bit for bit") {
  for (std::int64_t H : {2, 5})
    for (std::int64_t W = 2; W <= 41; ++W) {
      check_window_codes<float>(H, W);
      check_window_codes<double>(H, W);
    }
  // Hand-worked: windows [1 3; 3 2] -> code 1 (first 3), [nan 9; 4 nan] -> code 3 (last NaN).
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const A x({1, 1, 2, 4}, {1, 3, nan, 9, 3, 2, 4, nan});
  const auto g = tg::kernels::pool_geometry(x.shape(), {.window = {2}}, "maxpool");
  double y[2];
  double codes[2];
  tg::kernels::maxpool_forward(g, x.data(), y, codes);
  CHECK(codes[0] == 1);
  CHECK(codes[1] == 3);
}

TEST_CASE("pooling: bad geometry is a clear tg::Error") {
  const A x = A::zeros({1, 2, 5, 5});
  CHECK_THROWS_WITH_AS(tg::maxpool(x, {}), doctest::Contains("no window given"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::maxpool(x, {.window = {6}}), doctest::Contains("larger than the padded input"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::maxpool(x, {.window = {2}, .padding = {2}}), doctest::Contains("more than half the window"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::maxpool(x, {.window = {2}, .stride = {0}}), doctest::Contains("stride is 0"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::maxpool(x, {.window = {5}, .dilation = {std::int64_t(1) << 61}}), doctest::Contains("larger than 2^62"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::maxpool(x, {.window = {2, 2, 2}}), doctest::Contains("expected 1 or 2"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::maxpool(A::zeros({5, 5}), {.window = {2}}), doctest::Contains("(N, C, spatial...)"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::lppool(x, {.window = {2}, .p = 0}), doctest::Contains("p is 0 expected a finite p > 0"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::global_meanpool(A::zeros({3, 4})), doctest::Contains("global_meanpool"), tg::Error);
}

TEST_CASE("pooling and filtering: DESIGN.md's spellings mean the same as the PyTorch-style ones") {
  const A y = A::random_uniform({2, 3, 9, 9}, -1, 1, 1);
  CHECK(max_abs_diff(tg::meanpool(y, {.window = {3, 3}, .stride = {2, 2}, .padding = {1, 1}, .count_padding = false}),
                     tg::meanpool(y, {.window = {3, 3}, .stride = {2, 2}, .padding = {1, 1}, .count_include_pad = false})) == 0);
  CHECK(max_abs_diff(tg::meanpool(y, {.window = {3}, .padding = {1}, .count_include_pad = false, .count_padding = true}),
                     tg::meanpool(y, {.window = {3}, .padding = {1}})) == 0);  // count_padding, when set, decides
  CHECK(max_abs_diff(tg::lppool(y, 3.0, {.window = {2, 2}}), tg::lppool(y, {.window = {2, 2}, .p = 3})) == 0);
  auto tape = tg::record([](const T& v) { return tg::sum(tg::lppool(v, 3.0, {.window = {2}})); }, y);
  CHECK(tg::dump(tape).find("p=3") != std::string::npos);
  const A img = A::random_uniform({12, 10}, -1, 1, 2), k1({3}, {1, 2, 1}), k2({3}, {-1, 0, 1});
  const tg::FilterParams p{.border = tg::Border::symmetric()};
  CHECK(max_abs_diff(tg::correlate(img, tg::separable({k1, k2}), p), tg::correlate(img, std::vector{k1, k2}, p)) == 0);
}
