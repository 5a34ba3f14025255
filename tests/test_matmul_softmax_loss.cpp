// matmul, softmax family and losses: hand-worked values, the triple, dot products, errors.
#include "support/checks.hpp"

using namespace tgtest;
using T = tg::Tracked<double>;

TEST_CASE("matmul: hand-worked 2-D and broadcast batched values") {
  const A a({2, 3}, {1, 2, 3, 4, 5, 6}), b({3, 2}, {7, 8, 9, 10, 11, 12});
  CHECK(max_abs_diff(tg::matmul(a, b), A({2, 2}, {58, 64, 139, 154})) == 0);
  A batch = A::zeros({2, 2, 3});
  std::copy(a.begin(), a.end(), batch.data());
  std::copy(a.begin(), a.end(), batch.data() + 6);
  for (std::int64_t i = 6; i < 12; ++i) batch.data()[i] *= 2;
  const A c = tg::matmul(batch, b);  // b broadcast over the batch
  CHECK(c.shape() == tg::Shape{2, 2, 2});
  CHECK(c(1, 1, 1) == 308);
}

TEST_CASE("matmul: the triple, 2-D and batched with broadcasting") {
  for (std::uint64_t seed : {1u, 2u}) {
    auto r = [&](tg::Shape s, std::uint64_t k) { return A::random_uniform(std::move(s), -1, 1, seed * 100 + k); };
    check_op([](const T& x, const T& y) { return tg::matmul(x, y); }, std::tuple{r({3, 4}, 1), r({4, 5}, 2)},
             std::tuple{r({3, 4}, 3), r({4, 5}, 4)});
    check_op([](const T& x, const T& y) { return tg::matmul(x, y); }, std::tuple{r({2, 3, 4}, 1), r({4, 2}, 2)},
             std::tuple{r({2, 3, 4}, 3), r({4, 2}, 4)});
    check_op([](const T& x, const T& y) { return tg::matmul(x, y); }, std::tuple{r({2, 1, 3, 4}, 1), r({3, 4, 2}, 2)},
             std::tuple{r({2, 1, 3, 4}, 3), r({3, 4, 2}, 4)});
  }
  const A w = A::random_uniform({4, 5}, -1, 1, 9);  // a constant operand
  check_op([&](const T& x) { return tg::matmul(x, tg::constant(w)); }, std::tuple{A::random_uniform({3, 4}, -1, 1, 1)},
           std::tuple{A::random_uniform({3, 4}, -1, 1, 2)});
}

TEST_CASE("matmul: dot-product test on a layer-sized shape") {
  check_dot_product([](const T& x, const T& y) { return tg::matmul(x, y); }, A::random_uniform({64, 256}, -1, 1, 1),
                    A::random_uniform({256, 128}, -1, 1, 2));
  check_dot_product([](const T& x, const T& y) { return tg::matmul(x, y); }, A::random_uniform({8, 32, 64}, -1, 1, 1),
                    A::random_uniform({64, 16}, -1, 1, 2));
}

TEST_CASE("softmax family: hand-worked values and stability") {
  const A x({2, 2}, {0, std::log(3.0), 1000, 1000});
  const A s = tg::softmax(x, 1);
  CHECK(s(0, 0) == doctest::Approx(0.25));
  CHECK(s(0, 1) == doctest::Approx(0.75));
  CHECK(s(1, 0) == doctest::Approx(0.5));  // no overflow
  CHECK(tg::log_softmax(x, 1)(0, 0) == doctest::Approx(std::log(0.25)));
  const A l = tg::logsumexp(x, 1);
  CHECK(l(0) == doctest::Approx(std::log(4.0)));
  CHECK(l(1) == doctest::Approx(1000 + std::log(2.0)));
  CHECK(tg::logsumexp(x, 0, true).shape() == tg::Shape{1, 2});
}

TEST_CASE("softmax family: the triple along every axis") {
  for (std::int64_t axis : {0, 1, -1}) {
    const A x = A::random_uniform({3, 4, 5}, -2, 2, 1), x2 = A::random_uniform({3, 4, 5}, -2, 2, 2);
    check_op([&](const T& v) { return tg::softmax(v, axis); }, std::tuple{x}, std::tuple{x2});
    check_op([&](const T& v) { return tg::log_softmax(v, axis); }, std::tuple{x}, std::tuple{x2});
    check_op([&](const T& v) { return tg::logsumexp(v, axis); }, std::tuple{x}, std::tuple{x2});
    check_op([&](const T& v) { return tg::logsumexp(v, axis, true); }, std::tuple{x}, std::tuple{x2});
  }
}

TEST_CASE("losses: hand-worked values") {
  CHECK(tg::mse(A({2}, {1, 3}), A({2}, {0, 0})).item() == 5);
  const A logits({2, 3}, {0, 0, 0, 0, 0, std::log(2.0)});
  // row 0: -log(1/3); row 1, label 2: -log(2/4)
  CHECK(tg::cross_entropy(logits, std::vector<std::int64_t>{1, 2}).item() ==
        doctest::Approx((std::log(3.0) + std::log(2.0)) / 2));
  auto g = tg::gradient([](const T& z) { return tg::cross_entropy(z, std::vector<std::int64_t>{1, 2}); }, logits);
  CHECK(g(0, 1) == doctest::Approx((1.0 / 3 - 1) / 2));
  CHECK(g(1, 2) == doctest::Approx((0.5 - 1) / 2));
}

TEST_CASE("losses: the triple, labels as a replayable input") {
  const A p = A::random_uniform({4, 3}, -1, 1, 1), t = A::random_uniform({4, 3}, -1, 1, 2);
  const A p2 = A::random_uniform({4, 3}, -1, 1, 3), t2 = A::random_uniform({4, 3}, -1, 1, 4);
  check_op([](const T& a, const T& b) { return tg::mse(a, b); }, std::tuple{p, t}, std::tuple{p2, t2});
  const A labels({4}, {0, 2, 1, 2}), labels2({4}, {1, 1, 0, 2});
  // Finite differences cannot perturb class indices: the triple takes the labels as a constant...
  check_op([&](const T& z) { return tg::cross_entropy(z, tg::constant(labels)); }, std::tuple{p}, std::tuple{p2});
  // ...and replay with new labels is checked on its own: labels as a tape input, replaced per batch.
  auto tape = tg::record([](const T& z, const T& y) { return tg::cross_entropy(z, y); }, p, labels);
  CHECK(tape.tape().num_instructions() == 1);
  auto [gz2, gy2] = tape.gradient(p2, labels2);
  CHECK(tape.value() == doctest::Approx(tg::cross_entropy(p2, labels2).item()).epsilon(1e-14));
  CHECK(max_abs_diff(gz2, tg::gradient([&](const T& z) { return tg::cross_entropy(z, labels2); }, p2)) == 0);
  // Note [Labels are not differentiable]
  auto [gz, gy] = tg::gradient([](const T& z, const T& y) { return tg::cross_entropy(z, y); }, p, labels);
  CHECK(max_abs_diff(gy, A::zeros({4})) == 0);
}

// PyTorch's definition of weighted, smoothed cross-entropy, written out (Note [Cross-entropy as PyTorch]).
double reference_cross_entropy(const A& logits, const A& labels, const A* w, double e) {
  const std::int64_t n = logits.shape()[0], c = logits.shape()[1];
  double nll = 0, smooth = 0, total = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    double m = -1e300, s = 0;
    for (std::int64_t j = 0; j < c; ++j) m = std::max(m, logits(i, j));
    for (std::int64_t j = 0; j < c; ++j) s += std::exp(logits(i, j) - m);
    auto logp = [&](std::int64_t j) { return logits(i, j) - m - std::log(s); };
    const auto k = static_cast<std::int64_t>(labels.data()[i]);
    const double wk = w ? w->data()[k] : 1.0;
    total += wk;
    nll -= wk * logp(k);
    for (std::int64_t j = 0; j < c; ++j) smooth -= (w ? w->data()[j] : 1.0) * logp(j);
  }
  return ((1 - e) * nll + e / static_cast<double>(c) * smooth) / total;
}

TEST_CASE("cross_entropy: label smoothing and class weights, PyTorch's definitions") {
  // Hand-worked: logits (1, 0), label 0, smoothing 0.2: 0.8 * log(1 + e^-1) + 0.1 * (2 log(1 + e^-1) + 1).
  const double a = std::log(1 + std::exp(-1.0));
  const A one({1, 2}, {1, 0});
  CHECK(tg::cross_entropy(one, A({1}, {0}), {.label_smoothing = 0.2}).item() == doctest::Approx(0.8 * a + 0.1 * (2 * a + 1)).epsilon(1e-14));
  // Weights (2, 1), labels (0, 1) on equal rows: (2 a + (a + 1)) / 3.
  const A two({2, 2}, {1, 0, 1, 0});
  CHECK(tg::cross_entropy(two, A({2}, {0, 1}), A({2}, {2, 1})).item() == doctest::Approx((3 * a + 1) / 3).epsilon(1e-14));
  const A logits = A::random_uniform({6, 4}, -2, 2, 71), labels({6}, {0, 3, 1, 1, 2, 3}), w({4}, {0.5, 2, 1, 3});
  for (const double e : {0.0, 0.1, 1.0}) {
    CAPTURE(e);
    CHECK(tg::cross_entropy(logits, labels, {.label_smoothing = e}).item() ==
          doctest::Approx(reference_cross_entropy(logits, labels, nullptr, e)).epsilon(1e-13));
    CHECK(tg::cross_entropy(logits, labels, w, {.label_smoothing = e}).item() ==
          doctest::Approx(reference_cross_entropy(logits, labels, &w, e)).epsilon(1e-13));
    // The triple: logits and weights differentiable, labels constant.
    const A logits2 = A::random_uniform({6, 4}, -2, 2, 72), w2({4}, {1, 1, 2, 0.25});
    check_op([&labels, e](const T& z, const T& weights) { return tg::cross_entropy(z, tg::constant(labels), weights, {.label_smoothing = e}); },
             std::tuple{logits, w}, std::tuple{logits2, w2});
    check_op([&labels, e](const T& z) { return tg::cross_entropy(z, tg::constant(labels), {.label_smoothing = e}); }, std::tuple{logits},
             std::tuple{logits2});
    const A big = A::random_uniform({64, 10}, -3, 3, 73), wb = A::random_uniform({10}, 0.5, 2, 74);
    std::vector<std::int64_t> lb(64);
    for (std::size_t i = 0; i < lb.size(); ++i) lb[i] = static_cast<std::int64_t>((i * 7) % 10);
    const std::vector<double> lbd(lb.begin(), lb.end());
    const A lba({64}, std::span<const double>(lbd));
    check_dot_product([&](const T& v, const T& weights) { return tg::cross_entropy(v, tg::constant(lba), weights, {.label_smoothing = e}); },
                      big, wb);
  }
  CHECK_THROWS_WITH_AS(tg::cross_entropy(logits, labels, A::ones({3})), doctest::Contains("weights have shape (3) expected (4) one per class"),
                       tg::Error);
  CHECK_THROWS_WITH_AS(tg::cross_entropy(logits, labels, {.label_smoothing = 1.5}),
                       doctest::Contains("label_smoothing (1.5) expected a number in [0, 1]"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::cross_entropy(logits, labels, A::zeros({4})), doctest::Contains("the weights of this batch's labels sum to 0"),
                       tg::Error);
}

TEST_CASE("softmax and losses: dot-product test on realistic shapes") {
  const A x = A::random_uniform({64, 10}, -3, 3, 1);
  check_dot_product([](const T& v) { return tg::softmax(v, 1) + tg::log_softmax(v, 0); }, x);
  check_dot_product([](const T& v) { return tg::logsumexp(v, 1); }, x);
  std::vector<std::int64_t> labels(64);  // a std::vector: copied, fine where nothing is replayed
  for (std::size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<std::int64_t>(i % 10);
  check_dot_product([&](const T& v) { return tg::cross_entropy(v, labels); }, x);
  check_dot_product([](const T& v, const T& w) { return tg::mse(v, w); }, x, A::random_uniform({64, 10}, -1, 1, 2));
}

TEST_CASE("pointwise losses: hand-worked values, the triple, the dot-product test") {
  const A x({2}, {0.0, 2.0}), t({2}, {1.0, 0.0});
  CHECK(tg::bce_with_logits(x, t).item() == doctest::Approx((std::log(2.0) + 2 + std::log1p(std::exp(-2.0))) / 2).epsilon(1e-15));
  CHECK(tg::bce_with_logits(A({1}, {-1000.0}), A({1}, {0.0})).item() == 0.0);  // no overflow
  CHECK(tg::l1_loss(A({3}, {1, 2, 3}), A({3}, {1, 0, 5})).item() == doctest::Approx(4.0 / 3));
  CHECK(max_abs_diff(tg::gradient([](const T& p) { return tg::l1_loss(p, tg::constant(A({3}, {1, 0, 5}))); }, A({3}, {1, 2, 3})),
                     A({3}, {0, 1.0 / 3, -1.0 / 3})) < 1e-15);
  CHECK(tg::smooth_l1_loss(A::zeros({3}), A({3}, {0.5, 2, -3})).item() == doctest::Approx(1.375));
  CHECK(tg::smooth_l1_loss(A::zeros({3}), A({3}, {0.5, 2, -3}), 0.0).item() == doctest::Approx(5.5 / 3));  // beta 0: L1
  // d/dx bce = sigmoid(x) - t; the targets get -x.
  const auto [gx, gt] = tg::gradient([](const T& a, const T& b) { return tg::bce_with_logits(a, b); }, x, t);
  CHECK(gx(0) == doctest::Approx((0.5 - 1) / 2));
  CHECK(gt(1) == doctest::Approx(-2.0 / 2));
  for (std::uint64_t seed : {1u, 2u}) {
    const A p = A::random_uniform({3, 4}, -2, 2, seed), q = A::random_uniform({3, 4}, 0, 1, seed + 5);
    const A p2 = A::random_uniform({3, 4}, -2, 2, seed + 10), q2 = A::random_uniform({3, 4}, 0, 1, seed + 15);
    check_op([](const T& a, const T& b) { return tg::bce_with_logits(a, b); }, std::tuple{p, q}, std::tuple{p2, q2});
    check_op([](const T& a, const T& b) { return tg::l1_loss(a, b); }, std::tuple{p, q}, std::tuple{p2, q2});
    check_op([](const T& a, const T& b) { return tg::smooth_l1_loss(a, b, 0.5); }, std::tuple{p, q}, std::tuple{p2, q2});
  }
  const A big = A::random_uniform({64, 32}, -3, 3, 7), target = A::random_uniform({64, 32}, 0, 1, 8);
  check_dot_product([](const T& a, const T& b) { return tg::bce_with_logits(a, b) + tg::l1_loss(a, b) + tg::smooth_l1_loss(a, b, 0.7); },
                    big, target);
  CHECK_THROWS_WITH_AS(tg::l1_loss(A::zeros({3}), A::zeros({4})),
                       doctest::Contains("l1_loss: prediction (3) and target (4) shapes must be equal"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::smooth_l1_loss(A::zeros({3}), A::zeros({3}), -1.0),
                       doctest::Contains("smooth_l1_loss: beta -1 expected a non-negative number"), tg::Error);
}

TEST_CASE("matmul, softmax, losses: bad input is a clear tg::Error") {
  CHECK_THROWS_WITH_AS(tg::matmul(A::ones({2, 3}), A::ones({4, 2})),
                       doctest::Contains("matmul: inner dimensions (3) and (4) of shapes (2,3) and (4,2) must match"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::matmul(A::ones({3}), A::ones({3, 2})), doctest::Contains("expected rank >= 2"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::matmul(A::ones({2, 2, 3}), A::ones({3, 3, 2})), doctest::Contains("not broadcastable"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::softmax(A::ones({2, 3}), 2), doctest::Contains("softmax: axis (2) out of range"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::mse(A::ones({2, 3}), A::ones({3})), doctest::Contains("mse: prediction (2,3) and target (3)"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::cross_entropy(A::ones({2, 3}), std::vector<std::int64_t>{0, 3}),
                       doctest::Contains("cross_entropy: label (3) at index 1"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::cross_entropy(A::ones({2, 3}), std::vector<std::int64_t>{0}),
                       doctest::Contains("labels have shape (1) expected (2)"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::cross_entropy(A::ones({2, 3}), A({2}, {0, 0.5})), doctest::Contains("label (0.5)"), tg::Error);
  // Labels far outside int64, NaN and -1 are refused before any cast (found by the tape-file fuzzer).
  for (double bad : {2.35625e+251, -1e300, std::nan(""), -1.0})
    CHECK_THROWS_WITH_AS(tg::cross_entropy(A::ones({2, 3}), A({2}, {0, bad})), doctest::Contains("is not a class index"), tg::Error);
  // A bad label met on replay is an error too, naming the recording site.
  auto tape = tg::record([](const T& z, const T& y) { return tg::cross_entropy(z, y); }, A::ones({2, 3}), A({2}, {0, 1}));
  CHECK_THROWS_WITH_AS(tape.gradient(A::ones({2, 3}), A({2}, {0, 7})), doctest::Contains("test_matmul_softmax_loss.cpp"), tg::Error);
}
