// correlate / convolve: SciPy's answers (fixtures), hand-worked values, every
// border and output mode through the triple and the dot-product test, separable
// factors, multi-channel images, errors.
#include "support/checks.hpp"

using namespace tgtest;
using T = tg::Tracked<double>;
using tg::Border;
using tg::BorderMode;
using tg::ConvAlgorithm;
using tg::FilterParams;
using tg::Output;

namespace {

struct ScipyCase {
  const char* what;
  bool convolve;
  int border;
  double cval;
  const char* output;
  std::vector<std::int64_t> image, kernel, origin;
  std::vector<double> expected;
};

const std::vector<ScipyCase> kScipyCases = {
#include "fixtures/scipy_filter.inc"
};

// The inputs make_scipy_filter.py uses.
A scipy_image(const std::vector<std::int64_t>& shape) {
  A a = A::zeros(tg::Shape(shape));
  for (std::int64_t i = 0; i < a.size(); ++i) a.data()[i] = double((i * 37) % 17) - 8;
  return a;
}
// Winograd runs 1-D and 2-D kernels of 1, 3 or 5 taps per dim.
bool winograd_runs(const std::vector<std::int64_t>& kernel) {
  if (kernel.size() > 2) return false;
  for (auto taps : kernel)
    if (taps != 1 && taps != 3 && taps != 5) return false;
  return true;
}

A scipy_kernel(const std::vector<std::int64_t>& shape) {
  A a = A::zeros(tg::Shape(shape));
  for (std::int64_t i = 0; i < a.size(); ++i) a.data()[i] = double((i * 5) % 7) - 3;
  return a;
}

Output output_of(std::string_view s) { return s == "same" ? Output::same : s == "valid" ? Output::valid : Output::full; }

constexpr BorderMode kBorders[] = {BorderMode::fill, BorderMode::replicate, BorderMode::reflect, BorderMode::symmetric,
                                   BorderMode::circular};
constexpr Output kOutputs[] = {Output::same, Output::valid, Output::full};

}  // namespace

TEST_CASE("correlate/convolve: equal SciPy (ndimage same, signal valid/full) with every algorithm, double and float") {
  REQUIRE(kScipyCases.size() > 100);
  for (const auto& c : kScipyCases) {
    const A x = scipy_image(c.image), k = scipy_kernel(c.kernel);
    FilterParams p{.border = {BorderMode(c.border), c.cval}, .output = output_of(c.output)};
    if (p.output == Output::same) p.origin = c.origin;
    for (auto algorithm : {ConvAlgorithm::direct, ConvAlgorithm::im2col, ConvAlgorithm::implicit_gemm, ConvAlgorithm::fft,
                         ConvAlgorithm::winograd}) {
      if (algorithm == ConvAlgorithm::winograd && !winograd_runs(c.kernel)) continue;
      p.algorithm = algorithm;
      CAPTURE(c.what);
      CAPTURE(tg::to_string(tg::Shape(c.image)));
      CAPTURE(tg::to_string(tg::Shape(c.kernel)));
      CAPTURE(std::string(tg::kernels::to_string(algorithm)));
      const A y = c.convolve ? tg::convolve(x, k, p) : tg::correlate(x, k, p);
      REQUIRE(y.size() == static_cast<std::int64_t>(c.expected.size()));
      double err = 0;
      for (std::int64_t i = 0; i < y.size(); ++i) err = std::max(err, std::abs(y.data()[i] - c.expected[static_cast<std::size_t>(i)]));
      CHECK(err < 1e-9);
      const auto yf = c.convolve ? tg::convolve(x.cast<float>(), k.cast<float>(), p) : tg::correlate(x.cast<float>(), k.cast<float>(), p);
      double errf = 0;
      for (std::int64_t i = 0; i < yf.size(); ++i)
        errf = std::max(errf, std::abs(double(yf.data()[i]) - c.expected[static_cast<std::size_t>(i)]));
      CHECK(errf < 1e-3);
    }
  }
}

TEST_CASE("correlate: hand-worked answers on iota inputs") {
  const A x({3}, {1, 2, 3}), box = A::ones({3});
  CHECK(max_abs_diff(tg::correlate(x, box, {.border = Border::replicate()}), A({3}, {4, 6, 8})) == 0);
  CHECK(max_abs_diff(tg::correlate(x, box), A({3}, {3, 6, 5})) == 0);
  CHECK(max_abs_diff(tg::correlate(x, box, {.border = Border::fill(10)}), A({3}, {13, 6, 15})) == 0);
  CHECK(max_abs_diff(tg::correlate(x, box, {.border = Border::reflect()}), A({3}, {5, 6, 7})) == 0);    // 2 1 2 3 2
  CHECK(max_abs_diff(tg::correlate(x, box, {.border = Border::symmetric()}), A({3}, {4, 6, 8})) == 0);  // 1 1 2 3 3
  CHECK(max_abs_diff(tg::correlate(x, box, {.border = Border::circular()}), A({3}, {6, 6, 6})) == 0);   // 3 1 2 3 1
  const A ramp({2}, {1, 10});
  CHECK(max_abs_diff(tg::correlate(x, ramp, {.output = Output::valid}), A({2}, {21, 32})) == 0);
  CHECK(max_abs_diff(tg::convolve(x, ramp, {.output = Output::valid}), A({2}, {12, 23})) == 0);
  CHECK(max_abs_diff(tg::correlate(x, ramp, {.output = Output::full}), A({4}, {10, 21, 32, 3})) == 0);
  CHECK(max_abs_diff(tg::convolve(x, ramp, {.output = Output::full}), A({4}, {1, 12, 23, 30})) == 0);
  // 2-D: a 3x3 box over a 3x3 iota with a replicate border, centre pixel = sum of everything
  const A img = A::iota({3, 3});
  CHECK(tg::correlate(img, A::ones({3, 3}), {.border = Border::replicate()})(1, 1) == 36);
  CHECK(tg::correlate(img, A::ones({3, 3}), {.border = Border::replicate()})(0, 0) == 0 + 0 + 1 + 0 + 0 + 1 + 3 + 3 + 4);
}

TEST_CASE("correlate/convolve: the triple for every border and output mode") {
  const A x = A::random_uniform({5, 6}, -1, 1, 1), x2 = A::random_uniform({5, 6}, -1, 1, 2);
  for (auto border : kBorders)
    for (auto output : kOutputs)
      for (bool convolve : {false, true})
        for (const tg::Shape& ks : {tg::Shape{3, 3}, tg::Shape{2, 4}}) {
          CAPTURE(std::string(tg::kernels::to_string(border)));
          CAPTURE(tg::to_string(output));
          CAPTURE(convolve);
          const FilterParams p{.border = {border, 0.5}, .output = output};
          const A k = A::random_uniform(ks, -1, 1, 3), k2 = A::random_uniform(ks, -1, 1, 4);
          auto f = [&](const T& a, const T& b) { return convolve ? tg::convolve(a, b, p) : tg::correlate(a, b, p); };
          check_op(f, std::tuple{x, k}, std::tuple{x2, k2});
        }
  // rank 1 and rank 4 (the loop over leading dims), and an explicit origin
  const A v = A::random_uniform({9}, -1, 1, 5), v2 = A::random_uniform({9}, -1, 1, 6);
  const A kv = A::random_uniform({4}, -1, 1, 7), kv2 = A::random_uniform({4}, -1, 1, 8);
  check_op([](const T& a, const T& b) { return tg::correlate(a, b, {.border = Border::symmetric(), .origin = {1}}); },
           std::tuple{v, kv}, std::tuple{v2, kv2});
  const A h = A::random_uniform({2, 3, 4, 3}, -1, 1, 9), h2 = A::random_uniform({2, 3, 4, 3}, -1, 1, 10);
  const A kh = A::random_uniform({2, 2, 3, 2}, -1, 1, 11), kh2 = A::random_uniform({2, 2, 3, 2}, -1, 1, 12);
  check_op([](const T& a, const T& b) { return tg::convolve(a, b, {.border = Border::reflect()}); }, std::tuple{h, kh},
           std::tuple{h2, kh2});
}

TEST_CASE("correlate: a tracked fill value gets its gradient") {
  const A x = A::random_uniform({4, 5}, -1, 1, 1), k = A::random_uniform({3, 3}, -1, 1, 2), v = A::scalar(0.7);
  check_op([](const T& a, const T& b, const T& fill) { return tg::correlate(a, b, fill, {}); }, std::tuple{x, k, v},
           std::tuple{A::random_uniform({4, 5}, -1, 1, 3), A::random_uniform({3, 3}, -1, 1, 4), A::scalar(-0.2)});
  // d/dfill of sum(correlate(0-image, ones(3,3), fill)) on a 1x1 image = 8 padded pixels
  const auto g = tg::gradient([](const T& f) { return tg::sum(tg::correlate(A::zeros({1, 1}), A::ones({3, 3}), f, {})); },
                              A::scalar(1.0));
  CHECK(g.item() == 8);
}

TEST_CASE("correlate/convolve: dot-product test on a realistic image, every border") {
  const A x = A::random_uniform({64, 48}, -1, 1, 1), k = A::random_uniform({5, 5}, -1, 1, 2);
  for (auto border : kBorders)
    for (auto output : kOutputs)
      check_dot_product([&](const T& a, const T& b) { return tg::correlate(a, b, {.border = {border, 0.3}, .output = output}); },
                        x, k);
  check_dot_product([&](const T& a, const T& b) { return tg::convolve(a, b, {.algorithm = ConvAlgorithm::fft}); }, x,
                    A::random_uniform({15, 15}, -1, 1, 3));
  check_dot_product([&](const T& a, const T& b) { return tg::convolve(a, b, {.border = Border::circular()}); },
                    A::random_uniform({12, 10, 8}, -1, 1, 4), A::random_uniform({3, 3, 3}, -1, 1, 5));
}

TEST_CASE("correlate: separable factors, one pass per dim, gradients per factor") {
  const A x = A::random_uniform({6, 7}, -1, 1, 1), a = A::random_uniform({3}, -1, 1, 2), b = A::random_uniform({5}, -1, 1, 3);
  A outer = A::zeros({3, 5});
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 5; ++j) outer(i, j) = a(i) * b(j);
  for (auto border : {BorderMode::replicate, BorderMode::reflect, BorderMode::symmetric, BorderMode::circular}) {
    const FilterParams p{.border = {border, 0}};
    CHECK(max_abs_diff(tg::correlate(x, std::vector<A>{a, b}, p), tg::correlate(x, outer, p)) < 1e-12);
    CHECK(max_abs_diff(tg::convolve(x, std::vector<A>{a, b}, p), tg::convolve(x, outer, p)) < 1e-12);
  }
  // one instruction per dim; each factor's gradient equals finite differences
  auto f = [](const T& img, const T& fa, const T& fb) {
    return tg::sum(tg::correlate(img, std::vector<T>{fa, fb}, {.border = Border::replicate()}) * 1.0);
  };
  auto tape = tg::record(f, x, a, b);
  CHECK(tape.tape().num_instructions() == 4);  // two passes, the product, the sum
  const auto report = tg::gradcheck(f, x, a, b);
  CHECK_MESSAGE(report.passed(), report.summary());
  // the same through a constant factor
  check_op([&](const T& img, const T& fb) { return tg::correlate(img, std::vector<T>{fb}, {}); },
           std::tuple{A::random_uniform({9}, -1, 1, 4), b}, std::tuple{A::random_uniform({9}, -1, 1, 5), A::random_uniform({5}, -1, 1, 6)});
}

TEST_CASE("correlate: a multi-channel image, kernel of size 1 along the channel axis") {
  const A img = A::random_uniform({6, 5, 3}, -1, 1, 1);  // H, W, channels (trailing)
  const A k = A::random_uniform({3, 3, 1}, -1, 1, 2);
  const A y = tg::correlate(img, k, {.border = Border::reflect()});
  CHECK(y.shape() == tg::Shape{6, 5, 3});
  for (std::int64_t ch = 0; ch < 3; ++ch) {
    A plane = A::zeros({6, 5});
    for (std::int64_t i = 0; i < 6; ++i)
      for (std::int64_t j = 0; j < 5; ++j) plane(i, j) = img(i, j, ch);
    const A yp = tg::correlate(plane, k.reshape({3, 3}), {.border = Border::reflect()});
    double err = 0;
    for (std::int64_t i = 0; i < 6; ++i)
      for (std::int64_t j = 0; j < 5; ++j) err = std::max(err, std::abs(yp(i, j) - y(i, j, ch)));
    CHECK(err < 1e-12);
  }
  // leading channel axis
  const A lead = A::random_uniform({2, 6, 5}, -1, 1, 3);
  check_dot_product([&](const T& a, const T& b) { return tg::correlate(a, b, {.border = Border::replicate()}); }, lead,
                    A::random_uniform({1, 3, 3}, -1, 1, 4));
}

TEST_CASE("correlate: bad input is a clear tg::Error") {
  const A x = A::zeros({5, 5});
  CHECK_THROWS_WITH_AS(tg::correlate(x, A::zeros({3})), doctest::Contains("expected the same rank"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::correlate(x, A::zeros({6, 3}), {.output = Output::valid}),
                       doctest::Contains("larger than the image (5,5) along dim 0"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::correlate(x, A::zeros({3, 3}), {.origin = {2}}), doctest::Contains("origin 2 along dim 0"),
                       tg::Error);
  CHECK_THROWS_WITH_AS(tg::correlate(x, A::zeros({3, 3}), {.output = Output::full, .origin = {1}}),
                       doctest::Contains("only with output same"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::correlate(x, A::zeros({3, 3}), {.origin = {0, 0, 0}}), doctest::Contains("expected 1 or 2"),
                       tg::Error);
  CHECK_THROWS_WITH_AS(tg::correlate(x, A::zeros({0, 3})), doctest::Contains("kernel (0,3)"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::correlate(A::zeros({0, 3}), A::ones({3, 3}), {.border = Border::replicate()}),
                       doctest::Contains("image (0,3) is empty along dim 0"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::correlate(x, std::vector<A>{A::ones({3})}), doctest::Contains("1 factors for an image of shape (5,5)"),
                       tg::Error);
  auto tape = tg::record([](const T& v) { return v * 2.0; }, x);
  T xt(&tape.tape(), tape.tape().inputs()[0]);
  const std::size_t before = tape.tape().num_instructions();
  CHECK_THROWS_WITH_AS(tg::correlate(xt, A::zeros({3, 3}), A::scalar(1.0), {.border = Border::replicate()}),
                       doctest::Contains("border replicate expected border fill"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::correlate(xt, A::zeros({3, 3}), A::ones({2}), {}), doctest::Contains("test_filter.cpp:"), tg::Error);
  CHECK(tape.tape().num_instructions() == before);
}

// ---- pad ----------------------------------------------------------------------------------

TEST_CASE("pad: the five borders by hand, trailing dims, asymmetric widths") {
  const A x({4}, {1, 2, 3, 4});
  auto padded = [&](tg::Border b) { return tg::pad(x, {.widths = {2}, .border = b}); };
  CHECK(max_abs_diff(padded(Border::fill(9)), A({8}, {9, 9, 1, 2, 3, 4, 9, 9})) == 0);
  CHECK(max_abs_diff(padded(Border::replicate()), A({8}, {1, 1, 1, 2, 3, 4, 4, 4})) == 0);
  CHECK(max_abs_diff(padded(Border::reflect()), A({8}, {3, 2, 1, 2, 3, 4, 3, 2})) == 0);
  CHECK(max_abs_diff(padded(Border::symmetric()), A({8}, {2, 1, 1, 2, 3, 4, 4, 3})) == 0);
  CHECK(max_abs_diff(padded(Border::circular()), A({8}, {3, 4, 1, 2, 3, 4, 1, 2})) == 0);
  // A list pads the trailing dims; lo and hi replace widths on their side.
  const A m({2, 3}, {1, 2, 3, 4, 5, 6});
  const A y = tg::pad(m, {.lo = {1}, .hi = {0}, .border = Border::replicate()});
  CHECK(y.shape() == tg::Shape{2, 4});
  CHECK(max_abs_diff(y, A({2, 4}, {1, 1, 2, 3, 4, 4, 5, 6})) == 0);
  CHECK(tg::pad(m, {.widths = {1, 2}}).shape() == tg::Shape{4, 7});
  // The adjoint folds back onto the copied elements, and onto the fill value.
  const A g = tg::gradient([](const T& v) { return tg::sum(tg::pad(v, {.widths = {2}, .border = Border::reflect()})); }, x);
  CHECK(max_abs_diff(g, A({4}, {1, 3, 3, 1})) == 0);
  const auto [gx, gfill] =
      tg::gradient([](const T& v, const T& f) { return tg::sum(tg::pad(v, f, {.widths = {1, 2}})); }, m, A::scalar(0.5));
  CHECK(max_abs_diff(gx, A::ones({2, 3})) == 0);
  CHECK(gfill.item() == 4 * 7 - 6);
}

TEST_CASE("pad: the triple and the dot-product test for every border, and bad input") {
  const A x = A::random_uniform({2, 3, 4, 5}, -1, 1, 1), x2 = A::random_uniform({2, 3, 4, 5}, -1, 1, 2);
  for (const Border b : {Border::fill(0.5), Border::replicate(), Border::reflect(), Border::symmetric(), Border::circular()})
    check_op([b](const T& v) { return tg::pad(v, {.lo = {1, 2}, .hi = {3, 1}, .border = b}); }, std::tuple{x}, std::tuple{x2});
  check_op([](const T& v, const T& f) { return tg::pad(v, f, {.widths = {2}}); }, std::tuple{x, A::scalar(0.3)},
           std::tuple{x2, A::scalar(-1.0)});
  const A big = A::random_uniform({4, 8, 16, 16}, -1, 1, 3);
  for (const Border b : {Border::fill(0), Border::replicate(), Border::reflect(), Border::symmetric(), Border::circular()})
    check_dot_product([b](const T& v) { return tg::pad(v, {.widths = {3, 20}, .border = b}); }, big);  // wider than the array too
  check_dot_product([](const T& v, const T& f) { return tg::pad(v, f, {.widths = {1, 1}}); }, big, A::scalar(0.25));
  CHECK_THROWS_WITH_AS(tg::pad(x, {.widths = {1, 1, 1, 1, 1}}), doctest::Contains("pad: 5 padded dims for an array of shape (2,3,4,5)"),
                       tg::Error);
  CHECK_THROWS_WITH_AS(tg::pad(x, {.widths = {1, 1}, .lo = {1}}), doctest::Contains("have different lengths"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::pad(x, {.widths = {-1}}), doctest::Contains("widths (-1, -1) along dim 3 expected non-negative"),
                       tg::Error);
  CHECK_THROWS_WITH_AS(tg::pad(A::zeros({2, 0}), {.widths = {1}, .border = Border::reflect()}),
                       doctest::Contains("is empty along dim 1 expected at least one element to extend with border reflect"),
                       tg::Error);
  auto tape = tg::record([](const T& v) { return v * 2.0; }, x);
  T xt(&tape.tape(), tape.tape().inputs()[0]);
  CHECK_THROWS_WITH_AS(tg::pad(xt, A::scalar(1.0), {.widths = {1}, .border = Border::replicate()}),
                       doctest::Contains("a fill value was given with border replicate expected border fill"), tg::Error);
}
