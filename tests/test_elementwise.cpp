// Arithmetic and unary math: hand-worked values, the triple, dot products, errors.
#include <tapegrad/kernels/vector_math.hpp>

#include "support/checks.hpp"

using namespace tgtest;
using T = tg::Tracked<double>;

TEST_CASE("arithmetic: hand-worked values with broadcasting and scalars") {
  A a({2, 3}, {1, 2, 3, 4, 5, 6});
  A b({3}, {10, 20, 30});
  CHECK(max_abs_diff(a + b, A({2, 3}, {11, 22, 33, 14, 25, 36})) == 0);
  CHECK(max_abs_diff(a - 1.0, A({2, 3}, {0, 1, 2, 3, 4, 5})) == 0);
  CHECK(max_abs_diff(2.0 * a, A({2, 3}, {2, 4, 6, 8, 10, 12})) == 0);
  CHECK(max_abs_diff(b / A({1}, {10}), A({3}, {1, 2, 3})) == 0);
  CHECK(max_abs_diff(-b, A({3}, {-10, -20, -30})) == 0);
  CHECK(max_abs_diff(tg::pow(b, 2.0), A({3}, {100, 400, 900})) == 0);
  A col({2, 1}, {1, 2});
  CHECK((col * b).shape() == tg::Shape{2, 3});
  CHECK((col * b)(1, 2) == 60);
}

TEST_CASE("arithmetic: the triple for every binary op, over broadcasting shapes and seeds") {
  const std::vector<std::pair<tg::Shape, tg::Shape>> shapes = {
      {{3, 4}, {3, 4}}, {{3, 4}, {4}}, {{3, 1}, {1, 4}}, {{2, 3, 4}, {3, 1}}, {{}, {2, 3}}};
  for (std::uint64_t seed : {1u, 2u, 3u})
    for (const auto& pair : shapes) {
      const tg::Shape &sa = pair.first, &sb = pair.second;  // not a structured binding: clang's OpenMP cannot capture one
      CAPTURE(tg::to_string(sa));
      CAPTURE(tg::to_string(sb));
      const auto in = std::tuple{random_away_from(sa, seed), random_away_from(sb, seed + 10)};
      const auto in2 = std::tuple{random_away_from(sa, seed + 20), random_away_from(sb, seed + 30)};
      check_op([](const T& x, const T& y) { return x + y; }, in, in2);
      check_op([](const T& x, const T& y) { return x - y; }, in, in2);
      check_op([](const T& x, const T& y) { return x * y; }, in, in2);
      check_op([](const T& x, const T& y) { return x / y; }, in, in2);
    }
}

TEST_CASE("arithmetic: scalars and plain arrays are constants") {
  const A x = random_away_from({3, 4}, 5), c = random_away_from({4}, 6);
  check_op([](const T& v) { return v * 3.0; }, std::tuple{x}, std::tuple{random_away_from({3, 4}, 7)});
  check_op([](const T& v) { return 2.0 - v; }, std::tuple{x}, std::tuple{random_away_from({3, 4}, 7)});
  check_op([&](const T& v) { return v / tg::constant(c); }, std::tuple{x}, std::tuple{random_away_from({3, 4}, 7)});
  check_op([](const T& v) { return -v; }, std::tuple{x}, std::tuple{random_away_from({3, 4}, 7)});
  // A constant operand gets no adjoint slot work: it is marked as not needing a gradient.
  auto tape = tg::record([&](const T& v) { return tg::sum(v * tg::constant(c)); }, x);
  const auto& t = tape.tape();
  const auto& mul = t.instruction(0);
  CHECK_FALSE(t.needs_grad(t.args_of(mul)[1]));
  CHECK(t.kind(t.args_of(mul)[1]) == tg::SlotKind::constant);
}

TEST_CASE("arithmetic: a value used twice accumulates both adjoints") {
  A x({3}, {1, -2, 3});
  auto g = tg::gradient([](const T& v) { return tg::sum(v * v + v); }, x);
  CHECK(max_abs_diff(g, A({3}, {3, -3, 7})) == 0);  // 2x + 1
}

TEST_CASE("pow: constant exponent and tracked exponent") {
  const A x = A::random_uniform({3, 4}, 0.5, 2.0, 1), y = A::random_uniform({3, 4}, -1.0, 2.0, 2);
  const A x2 = A::random_uniform({3, 4}, 0.5, 2.0, 3), y2 = A::random_uniform({3, 4}, -1.0, 2.0, 4);
  check_op([](const T& v) { return tg::pow(v, 3.0); }, std::tuple{x}, std::tuple{x2});
  check_op([](const T& v) { return tg::pow(v, 0.5); }, std::tuple{x}, std::tuple{x2});
  check_op([](const T& v, const T& w) { return tg::pow(v, w); }, std::tuple{x, y}, std::tuple{x2, y2});
  // Note [pow at zero]: d/dy 0^y = 0 (not NaN).
  auto [gx, gy] = tg::gradient([](const T& v, const T& w) { return tg::sum(tg::pow(v, w)); }, A({1}, {0.0}), A({1}, {2.0}));
  CHECK(gy(0) == 0);
  CHECK(gx(0) == 0);
}

TEST_CASE("unary math: hand-worked values") {
  A x({4}, {-2, -0.5, 0.5, 2});
  CHECK(max_abs_diff(tg::relu(x), A({4}, {0, 0, 0.5, 2})) == 0);
  CHECK(max_abs_diff(tg::abs(x), A({4}, {2, 0.5, 0.5, 2})) == 0);
  CHECK(max_abs_diff(tg::leaky_relu(x, 0.1), A({4}, {-0.2, -0.05, 0.5, 2})) < 1e-15);
  CHECK(tg::sigmoid(A({1}, {0.0}))(0) == 0.5);
  CHECK(tg::softplus(A({1}, {0.0}))(0) == doctest::Approx(std::log(2.0)));
  CHECK(tg::softplus(A({1}, {1000.0}))(0) == 1000.0);  // no overflow
  CHECK(tg::sigmoid(A({1}, {-1000.0}))(0) == 0.0);
  CHECK(tg::exp(A({1}, {1.0}))(0) == doctest::Approx(std::exp(1.0)));
  CHECK(tg::log(A({1}, {std::exp(2.0)}))(0) == doctest::Approx(2.0));
  CHECK(tg::sqrt(A({1}, {9.0}))(0) == 3.0);
  CHECK(tg::tanh(A({1}, {0.5}))(0) == doctest::Approx(std::tanh(0.5)));
}

TEST_CASE("activations: hand-worked values against PyTorch's definitions") {
  const A x({5}, {-4.0, -1.0, 0.0, 1.0, 4.0});
  // gelu: x Phi(x); Phi(1) = 0.8413447460685429.
  CHECK(tg::gelu(x)(3) == doctest::Approx(0.8413447460685429).epsilon(1e-15));
  CHECK(tg::gelu(x)(1) == doctest::Approx(-1 + 0.8413447460685429).epsilon(1e-14));
  CHECK(tg::gelu_tanh(x)(3) == doctest::Approx(0.8411919906082768).epsilon(1e-14));  // torch.nn.functional.gelu(1, approximate='tanh')
  CHECK(tg::erf(x)(3) == doctest::Approx(0.8427007929497149).epsilon(1e-15));  // erf(1)
  CHECK(tg::erf(x)(0) == doctest::Approx(-0.9999999845827421).epsilon(1e-15));  // erf(-4)
  CHECK(tg::silu(x)(3) == doctest::Approx(1 / (1 + std::exp(-1.0))).epsilon(1e-15));
  CHECK(max_abs_diff(tg::hardswish(x), A({5}, {0, -1.0 / 3, 0, 4.0 / 6, 4})) < 1e-15);
  CHECK(max_abs_diff(tg::elu(x, 2.0), A({5}, {2 * std::expm1(-4.0), 2 * std::expm1(-1.0), 0, 1, 4})) < 1e-15);
  CHECK(max_abs_diff(tg::clamp(x, -1.0, 2.0), A({5}, {-1, -1, 0, 1, 2})) == 0);
  CHECK(tg::silu(A({1}, {-1000.0}))(0) == 0.0);  // no overflow
  // Derivatives at the kinks (Note [Kinks]).
  auto d = [](auto f, double at) { return tg::gradient([&](const T& v) { return tg::sum(f(v)); }, A({1}, {at}))(0); };
  CHECK(d([](const T& v) { return tg::elu(v, 2.0); }, 0.0) == 2.0);
  CHECK(d([](const T& v) { return tg::hardswish(v); }, -3.0) == doctest::Approx(-0.5));
  CHECK(d([](const T& v) { return tg::hardswish(v); }, 3.0) == doctest::Approx(1.5));
  CHECK(d([](const T& v) { return tg::clamp(v, -1.0, 2.0); }, -1.0) == 1.0);
  CHECK(d([](const T& v) { return tg::clamp(v, -1.0, 2.0); }, 2.5) == 0.0);
  CHECK(d([](const T& v) { return tg::gelu(v); }, 0.0) == 0.5);
  CHECK_THROWS_WITH_AS(tg::clamp(x, 2.0, 1.0), doctest::Contains("clamp: bounds [2, 1] expected lo <= hi"), tg::Error);
}

TEST_CASE("unary math: the triple for every op (inputs away from kinks and domain edges)") {
  for (std::uint64_t seed : {1u, 2u, 3u}) {
    const A any = random_away_from({3, 5}, seed), any2 = random_away_from({3, 5}, seed + 9);
    const A pos = A::random_uniform({3, 5}, 0.2, 3.0, seed), pos2 = A::random_uniform({3, 5}, 0.2, 3.0, seed + 9);
    check_op([](const T& v) { return tg::exp(v); }, std::tuple{any}, std::tuple{any2});
    check_op([](const T& v) { return tg::log(v); }, std::tuple{pos}, std::tuple{pos2});
    check_op([](const T& v) { return tg::sqrt(v); }, std::tuple{pos}, std::tuple{pos2});
    check_op([](const T& v) { return tg::abs(v); }, std::tuple{any}, std::tuple{any2});
    check_op([](const T& v) { return tg::tanh(v); }, std::tuple{any}, std::tuple{any2});
    check_op([](const T& v) { return tg::sigmoid(v); }, std::tuple{any}, std::tuple{any2});
    check_op([](const T& v) { return tg::relu(v); }, std::tuple{any}, std::tuple{any2});
    check_op([](const T& v) { return tg::leaky_relu(v, 0.2); }, std::tuple{any}, std::tuple{any2});
    check_op([](const T& v) { return tg::softplus(v); }, std::tuple{any}, std::tuple{any2});
    check_op([](const T& v) { return tg::gelu(v); }, std::tuple{any}, std::tuple{any2});
    check_op([](const T& v) { return tg::gelu_tanh(v); }, std::tuple{any}, std::tuple{any2});
    check_op([](const T& v) { return tg::erf(v); }, std::tuple{any}, std::tuple{any2});
    check_op([](const T& v) { return tg::silu(v); }, std::tuple{any}, std::tuple{any2});
    check_op([](const T& v) { return tg::elu(v, 1.5); }, std::tuple{any}, std::tuple{any2});
    const A wide = any * 4.0, wide2 = any2 * 4.0;  // across hardswish's and clamp's pieces
    check_op([](const T& v) { return tg::hardswish(v); }, std::tuple{wide}, std::tuple{wide2});
    check_op([](const T& v) { return tg::clamp(v, -0.5, 0.7); }, std::tuple{any}, std::tuple{any2});
  }
}

TEST_CASE("unary math: kink policy (Note [Kinks])") {
  A zero({1}, {0.0});
  CHECK(tg::gradient([](const T& v) { return tg::sum(tg::relu(v)); }, zero)(0) == 0);
  CHECK(tg::gradient([](const T& v) { return tg::sum(tg::abs(v)); }, zero)(0) == 0);
  CHECK(tg::gradient([](const T& v) { return tg::sum(tg::leaky_relu(v, 0.1)); }, zero)(0) == doctest::Approx(0.1));
}

TEST_CASE("elementwise: dot-product test on realistic shapes") {
  const A x = random_away_from({64, 128}, 1), y = random_away_from({128}, 2);
  check_dot_product([](const T& a, const T& b) { return a * b + a / b - b; }, x, y);
  check_dot_product([](const T& a) { return tg::tanh(a) * tg::sigmoid(a) + tg::softplus(a) + tg::relu(a) + tg::abs(a); }, x);
  const A p = A::random_uniform({64, 128}, 0.5, 2.0, 3);
  check_dot_product([](const T& a) { return tg::log(a) + tg::sqrt(a) + tg::exp(a) + tg::pow(a, 1.5) + tg::leaky_relu(a); }, p);
  check_dot_product([](const T& a, const T& b) { return -tg::pow(a, b); }, p, A::random_uniform({128}, -1.5, 1.5, 4));
  const A wide = x * 4.0;
  check_dot_product([](const T& a) { return tg::gelu(a) + tg::gelu_tanh(a) * tg::silu(a) + tg::elu(a, 0.5) + tg::erf(a); }, x);
  check_dot_product([](const T& a) { return tg::hardswish(a) + tg::clamp(a, -2.0, 1.0); }, wide);
}

TEST_CASE("where: selection with broadcasting; a and b get the adjoint where chosen, the mask none") {
  const A cond({3, 1}, {1, 0, 1}), a({1, 4}, {1, 2, 3, 4});
  const A y = tg::where(cond, a, A::scalar(-1.0));
  CHECK(y.shape() == tg::Shape{3, 4});
  CHECK(max_abs_diff(y, A({3, 4}, {1, 2, 3, 4, -1, -1, -1, -1, 1, 2, 3, 4})) == 0);
  const auto [gc, ga, gb] = tg::gradient([](const T& c, const T& x, const T& z) { return tg::sum(tg::where(c, x, z) * 2.0); }, cond,
                                         a, A::scalar(-1.0));
  CHECK(max_abs_diff(gc, A::zeros({3, 1})) == 0);
  CHECK(max_abs_diff(ga, A({1, 4}, {4, 4, 4, 4})) == 0);  // two rows chose a, times 2
  CHECK(gb.item() == 8);
  CHECK(tg::gradient([](const T& x) { return tg::sum(tg::where(x, x, 0.0)); }, A({3}, {0.0, 2.0, -1.0}))(1) == 1.0);
  auto mask_of = [](tg::Shape shape, std::uint64_t seed) {  // 0/1, about half each
    A m = A::random_uniform(std::move(shape), -1, 1, seed);
    for (double& v : m) v = v > 0 ? 1.0 : 0.0;
    return m;
  };
  for (std::uint64_t seed : {1u, 2u}) {
    const A p = A::random_uniform({4, 5}, -1, 1, seed), q = A::random_uniform({5}, -1, 1, seed + 3);
    const A p2 = A::random_uniform({4, 5}, -1, 1, seed + 6), q2 = A::random_uniform({5}, -1, 1, seed + 9);
    const A m = mask_of({4, 5}, seed + 12);
    check_op([m](const T& x, const T& z) { return tg::where(tg::constant(m), x, z); }, std::tuple{p, q}, std::tuple{p2, q2});
  }
  const A big = A::random_uniform({64, 128}, -1, 1, 5), other = A::random_uniform({128}, -1, 1, 6);
  const A big_mask = mask_of({64, 1}, 7);
  check_dot_product([&](const T& x, const T& z) { return tg::where(tg::constant(big_mask), x, z); }, big, other);
  CHECK_THROWS_WITH_AS(tg::where(A::ones({3}), A::ones({4}), A::ones({4})), doctest::Contains("where: shapes"), tg::Error);
}

TEST_CASE("elementwise: bad shapes are clear errors and leave the tape unchanged") {
  auto tape = tg::record([](const T& v) { return v * 2.0; }, A::ones({2, 3}));
  const std::size_t before = tape.tape().num_instructions(), slots = tape.tape().num_slots();
  T x(&tape.tape(), tape.tape().inputs()[0]);
  CHECK_THROWS_WITH_AS(x + A::ones({4}), doctest::Contains("add: shapes (2,3) and (4) are not broadcastable"), tg::Error);
  CHECK_THROWS_WITH_AS(x * A::ones({3, 2}), doctest::Contains("test_elementwise.cpp:"), tg::Error);
  CHECK(tape.tape().num_instructions() == before);
  CHECK(tape.tape().num_slots() == slots);
}

// Note [Vector math]: exp and tanh through libmvec agree with libm within a few
// ulp, at every length (whole vectors and padded tails), in place, and at the
// edges (infinities, NaN, signed zero, overflow, underflow, subnormals); a value
// does not depend on the array it sits in.
template <class V>
void check_vector_math() {
  const V inf = std::numeric_limits<V>::infinity(), nan = std::numeric_limits<V>::quiet_NaN();
  const V edges[] = {inf, -inf, nan, V(-0.0), V(0), std::numeric_limits<V>::denorm_min(), V(1e-30), V(88.5), V(-104),
                     V(710), V(-746), V(20), V(-20), V(0.5), V(-3.25)};
  const double tolerance = 8 * double(std::numeric_limits<V>::epsilon());
  auto close = [&](V got, V want) {
    if (std::isnan(want)) return std::isnan(got);
    if (std::isinf(want) || want == V(0)) return got == want && std::signbit(got) == std::signbit(want);
    return std::abs(double(got) - double(want)) <= tolerance * std::abs(double(want)) ||
           std::abs(double(got) - double(want)) <= double(std::numeric_limits<V>::min());  // subnormal results
  };
  for (std::int64_t n = 0; n <= 33; ++n) {
    std::vector<V> x(static_cast<std::size_t>(n)), e(x.size()), t(x.size());
    for (std::int64_t i = 0; i < n; ++i) x[i] = edges[i % 15] * (i < 15 ? V(1) : V(0.37) * V(i));
    tg::kernels::vector_exp(x.data(), e.data(), n);
    tg::kernels::vector_tanh(x.data(), t.data(), n);
    for (std::int64_t i = 0; i < n; ++i) {
      CAPTURE(x[i]);
      CHECK(close(e[i], std::exp(x[i])));
      CHECK(close(t[i], std::tanh(x[i])));
    }
    std::vector<V> in_place = x;
    tg::kernels::vector_tanh(in_place.data(), in_place.data(), n);
    CHECK(std::equal(in_place.begin(), in_place.end(), t.begin(), [](V a, V b) { return a == b || (a != a && b != b); }));
    if (n > 0) {  // the last element alone: the same value as inside the array
      V last;
      tg::kernels::vector_exp(&x[n - 1], &last, 1);
      CHECK((last == e[n - 1] || (last != last && e[n - 1] != e[n - 1])));
    }
  }
}

TEST_CASE("vector math: exp and tanh agree with libm at every length and at the edges") {
  check_vector_math<float>();
  check_vector_math<double>();
  // sigmoid (exp of -|x|) keeps its limits and symmetry
  const A x({5}, {-800, -0.0, 0, 3, 800});
  const A s = tg::sigmoid(x);
  CHECK(s.data()[0] == 0);
  CHECK(s.data()[1] == 0.5);
  CHECK(s.data()[2] == 0.5);
  CHECK(std::abs(s.data()[3] - 1 / (1 + std::exp(-3.0))) < 1e-15);
  CHECK(s.data()[4] == 1);
}
