// The layers of issue 19: batch_norm, layer_norm, group_norm (hand-worked
// values and naive reference loops, the triple and the dot-product test,
// running statistics as state: updated once per forward run by every entry
// point, no gradient, untouched by optimizers, saved by checkpoints; the
// compiler's fused BN + ReLU), dropout (fresh, reproducible masks), bad input.
#include <filesystem>

#include "support/checks.hpp"

#include <optional>

using namespace tgtest;
using T = tg::Tracked<double>;

namespace {

// Reference: y = (x - mean) / sqrt(var + eps) * gamma + beta with statistics
// over the elements stat_of(i) groups, the affine index affine_of(i).
template <class StatOf, class AffineOf>
A reference_norm(const A& x, std::int64_t stats, StatOf stat_of, AffineOf affine_of, const A* gamma, const A* beta,
                 double eps) {
  std::vector<double> sum(stats, 0), sq(stats, 0), count(stats, 0);
  for (std::int64_t i = 0; i < x.size(); ++i) sum[stat_of(i)] += x.data()[i], count[stat_of(i)] += 1;
  for (std::int64_t i = 0; i < x.size(); ++i) {
    const double d = x.data()[i] - sum[stat_of(i)] / count[stat_of(i)];
    sq[stat_of(i)] += d * d;
  }
  A y(x.shape());
  for (std::int64_t i = 0; i < x.size(); ++i) {
    const std::int64_t s = stat_of(i);
    const double xhat = (x.data()[i] - sum[s] / count[s]) / std::sqrt(sq[s] / count[s] + eps);
    y.data()[i] = xhat * (gamma ? gamma->data()[affine_of(i)] : 1.0) + (beta ? beta->data()[affine_of(i)] : 0.0);
  }
  return y;
}

template <class M>
struct BnNet {
  M gamma, beta;
  tg::BatchNormState<M> bn;
};
BnNet<A> bn_net(std::int64_t c) { return {A::random_uniform({c}, 0.5, 1.5, 3), A::random_uniform({c}, -0.5, 0.5, 4), tg::batch_norm_state<double>(c)}; }

// The running mean after k training steps on the same batch, from 0, momentum 0.1.
double running_mean_after(int k, double batch_mean) { return (1 - std::pow(0.9, k)) * batch_mean; }

}  // namespace

TEST_CASE("batch_norm: hand-worked values, running statistics, and the reference loops") {
  // One channel, four values: mean 2.5, biased variance 1.25, unbiased 5/3.
  const A x({4, 1}, {1, 2, 3, 4});
  auto state = tg::batch_norm_state<double>(1);
  const A y = tg::batch_norm(x, A::ones({1}), A::zeros({1}), state, {.momentum = 0.1, .eps = 0});
  const double s = std::sqrt(1.25);
  CHECK(max_abs_diff(y, A({4, 1}, {-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s})) < 1e-15);
  CHECK(state.mean.value.item() == doctest::Approx(0.25).epsilon(1e-15));
  CHECK(state.var.value.item() == doctest::Approx(0.9 + 0.1 * 5.0 / 3.0).epsilon(1e-15));
  // Evaluation uses the running statistics and changes nothing.
  const A ye = tg::batch_norm(x, A::ones({1}), A::zeros({1}), state, {.training = false, .eps = 0});
  CHECK(ye.data()[0] == doctest::Approx((1 - 0.25) / std::sqrt(0.9 + 0.5 / 3.0)));
  CHECK(state.mean.value.item() == doctest::Approx(0.25));

  // (N, C, H, W) against the reference, float and double.
  const A x4 = A::random_uniform({3, 4, 5, 6}, -2, 3, 5);
  BnNet<A> p = bn_net(4);
  const std::int64_t hw = 30;
  const A expected = reference_norm(
      x4, 4, [&](std::int64_t i) { return (i / hw) % 4; }, [&](std::int64_t i) { return (i / hw) % 4; }, &p.gamma, &p.beta,
      1e-5);
  CHECK(max_abs_diff(tg::batch_norm(x4, p.gamma, p.beta, p.bn), expected) < 1e-12);
  tg::Array<float> xf(x4.shape()), gf(p.gamma.shape()), bf(p.beta.shape());
  std::copy(x4.begin(), x4.end(), xf.data());
  std::copy(p.gamma.begin(), p.gamma.end(), gf.data());
  std::copy(p.beta.begin(), p.beta.end(), bf.data());
  auto sf = tg::batch_norm_state<float>(4);
  const tg::Array<float> yf = tg::batch_norm(xf, gf, bf, sf);
  for (std::int64_t i = 0; i < yf.size(); ++i) CHECK(yf.data()[i] == doctest::Approx(expected.data()[i]).epsilon(1e-5));
}

TEST_CASE("batch_norm: the triple and the dot-product test, training and evaluation, with a fused ReLU") {
  const A x = A::random_uniform({3, 2, 3, 2}, -2, 2, 1), x2 = A::random_uniform({3, 2, 3, 2}, -1, 3, 2);
  const A g = A::random_uniform({2}, 0.5, 1.5, 3), b = A::random_uniform({2}, -1, 1, 4);
  const A rm = A::random_uniform({2}, -0.5, 0.5, 5), rv = A::random_uniform({2}, 0.5, 2, 6);
  for (const bool training : {true, false}) {
    CAPTURE(training);
    auto f = [&, training](const T& v, const T& gamma, const T& beta) {
      const tg::BatchNormState<T> s{{tg::constant(rm)}, {tg::constant(rv)}};  // copies, on purpose
      return tg::batch_norm(v, gamma, beta, s, {.training = training});
    };
    check_op(f, std::tuple{x, g, b}, std::tuple{x2, g, b});
    const A big = A::random_uniform({8, 16, 12, 12}, -1, 2, 7);
    const A gb = A::random_uniform({16}, 0.5, 1.5, 8), bb = A::random_uniform({16}, -1, 1, 9);
    auto fb = [&, training](const T& v, const T& gamma, const T& beta) {
      const tg::BatchNormState<T> s{{tg::constant(A::zeros({16}))}, {tg::constant(A::ones({16}))}};
      return tg::batch_norm(v, gamma, beta, s, {.training = training});
    };
    check_dot_product(fb, big, gb, bb);
    // Compiled with its ReLU fused: one step, the interpreter's values and gradients.
    const A w = A::random_uniform({4, 16, 3, 3}, -1, 1, 10);
    auto fr = [&, training](const T& v, const T& gamma, const T& beta) {  // conv -> BN -> ReLU -> conv
      const tg::BatchNormState<T> s{{tg::constant(A::zeros({16}))}, {tg::constant(A::ones({16}))}};
      return tg::sum(tg::conv(tg::relu(tg::batch_norm(v, gamma, beta, s, {.training = training})), tg::constant(w)));
    };
    auto tape = tg::record(fr, big, gb, bb);
    auto ct = tg::compile(tape);
    bool fused = false;
    for (const auto& st : ct.program().steps())
      fused = fused || (st.op->name == "batch_norm" && st.epilogue() && st.epilogue()->activation.op->name == "relu");
    CHECK_MESSAGE(fused, tg::dump(ct));
    const auto [gx1, gg1, gb1] = tape.gradient(big, gb, bb);
    const auto [gx2, gg2, gb2] = ct.gradient(big, gb, bb);
    // Relative to the gradients' size: at TG_ISA=portable the two runs' convolutions sum in other orders.
    CHECK(max_abs_diff(gx1, gx2) < 1e-12 * (1 + max_abs(gx1)));
    CHECK(max_abs_diff(gg1, gg2) < 1e-12 * (1 + max_abs(gg1)));
    CHECK(max_abs_diff(gb1, gb2) < 1e-12 * (1 + max_abs(gb1)));
    CHECK(std::abs(tape.value() - ct.value()) < 1e-9);
  }
}

namespace {
// Largest |a - b| relative to b's largest magnitude.
double relative_diff(const A& a, const A& b) { return max_abs_diff(a, b) / std::max(1e-30, max_abs(b)); }

// Losses over x (N, 4, H, W) weighted by r, in r's element type: batch_norm +
// ReLU, batch_norm times x, group_norm, layer_norm.
template <class E>
auto norm_losses(const tg::Array<E>& r) {
  using M = tg::Tracked<E>;
  using Arr = tg::Array<E>;
  auto state = [] { return tg::BatchNormState<M>{{tg::constant(Arr::zeros({4}))}, {tg::constant(Arr::ones({4}))}}; };
  auto bn_relu = [r, state](const M& v, const M& gamma, const M& beta) {
    return tg::sum(tg::relu(tg::batch_norm(v, gamma, beta, state())) * tg::constant(r));
  };
  auto bn_twice = [r, state](const M& v, const M& gamma, const M& beta) {
    return tg::sum(tg::batch_norm(v, gamma, beta, state()) * v * tg::constant(r));
  };
  auto gn = [r](const M& v, const M& gamma, const M& beta) {
    return tg::sum(tg::group_norm(v, gamma, beta, {.groups = 2}) * tg::constant(r));
  };
  auto ln = [r](const M& v) { return tg::sum(tg::layer_norm(v, {.dims = 2}) * tg::constant(r)); };
  return std::tuple{bn_relu, bn_twice, gn, ln};
}
}  // namespace

TEST_CASE("norms in float: values and gradients equal double's to float rounding, over runs longer than a sum block") {
  // 1600-element spatial runs, 25,600 per channel, values far from zero (mean 50):
  // float lanes sum in blocks (Note [Blocked sums]). The loss reads x twice, so
  // batch_norm's dx is added to (x feeds the product too) in one program and
  // assigned in the other.
  const A x = A::random_uniform({16, 4, 40, 40}, 48, 52, 41), r = A::random_uniform({16, 4, 40, 40}, -1, 1, 42);
  const A g = A::random_uniform({4}, 0.5, 1.5, 43), b = A::random_uniform({4}, -0.5, 0.5, 44);
  const auto [bn64, bn_twice64, gn64, ln64] = norm_losses(r);
  const auto [bn32, bn_twice32, gn32, ln32] = norm_losses(r.cast<float>());
  const auto xf = x.cast<float>(), gf = g.cast<float>(), bf = b.cast<float>();
  auto compare = [&](auto f64, auto f32, const char* name) {
    CAPTURE(name);
    auto compiled = tg::compile(tg::record(f32, xf, gf, bf));  // batch_norm + ReLU fused in the first
    const auto [dx, dg, db] = tg::gradient(f64, x, g, b);
    const auto [dxf, dgf, dbf] = compiled.gradient(xf, gf, bf);
    CHECK(double(compiled.value()) == doctest::Approx(tg::record(f64, x, g, b).value()).epsilon(1e-4));
    CHECK(relative_diff(dxf.template cast<double>(), dx) < 1e-4);
    CHECK(relative_diff(dgf.template cast<double>(), dg) < 1e-4);
    CHECK(relative_diff(dbf.template cast<double>(), db) < 1e-4);
  };
  compare(bn64, bn32, "batch_norm + relu");
  compare(bn_twice64, bn_twice32, "batch_norm, x read twice");
  compare(gn64, gn32, "group_norm");
  CHECK(relative_diff(tg::gradient(ln32, xf).cast<double>(), tg::gradient(ln64, x)) < 1e-4);
}

TEST_CASE("batch_norm: by planes, the same values and gradients at every thread count") {
  // Note [Batch norm by planes]: the planes' moments are combined in sample
  // order, so 1-3 threads give the same bits (float, 64 planes of 1600, mean 50).
  using F = tg::Array<float>;
  const F x = A::random_uniform({16, 4, 40, 40}, 48, 52, 51).cast<float>(), r = A::random_uniform({16, 4, 40, 40}, -1, 1, 52).cast<float>();
  const F g = A::random_uniform({4}, 0.5, 1.5, 53).cast<float>(), b = A::random_uniform({4}, -0.5, 0.5, 54).cast<float>();
  const auto loss = std::get<0>(norm_losses(r));  // batch_norm + ReLU
  const int before = tg::max_threads();
  std::optional<std::tuple<F, F, F>> first;
  for (int threads : {1, 2, 3}) {
    CAPTURE(threads);
    tg::set_num_threads(threads);
    auto state = tg::batch_norm_state<float>(4);
    const F y = tg::batch_norm(x, g, b, state);
    const auto [dx, dg, db] = tg::gradient(loss, x, g, b);
    if (!first) first = std::tuple{y, F(dx), F(dg)};
    CHECK(max_abs_diff(y.cast<double>(), std::get<0>(*first).cast<double>()) == 0);
    CHECK(max_abs_diff(F(dx).cast<double>(), std::get<1>(*first).cast<double>()) == 0);
    CHECK(max_abs_diff(F(dg).cast<double>(), std::get<2>(*first).cast<double>()) == 0);
  }
  tg::set_num_threads(before);
}

TEST_CASE("batch_norm: running statistics are state, updated once per forward run by every entry point") {
  const A x = A::random_uniform({6, 3, 4}, -1, 3, 11);
  const double mean0 = [&] {
    double s = 0;
    for (std::int64_t n = 0; n < 6; ++n)
      for (std::int64_t j = 0; j < 4; ++j) s += x.data()[(n * 3 + 0) * 4 + j];
    return s / 24;
  }();
  BnNet<A> net = bn_net(3);
  auto loss = [](const BnNet<T>& p, const T& v) { return tg::sum(tg::batch_norm(v, p.gamma, p.beta, p.bn) * v); };
  int steps = 0;
  auto expect_steps = [&](int k) {
    steps = k;
    CHECK(net.bn.mean.value.data()[0] == doctest::Approx(running_mean_after(k, mean0)).epsilon(1e-12));
  };
  const BnNet<A> g = tg::gradient(loss, net, tg::data(x));
  expect_steps(1);
  CHECK(max_abs(g.bn.mean.value) == 0);  // state gets no gradient (zeros)
  CHECK(max_abs(g.bn.var.value) == 0);
  CHECK(g.bn.mean.value.shape() == tg::Shape{3});
  auto tape = tg::record(loss, net, tg::data(x));
  expect_steps(2);
  tape.gradient(net, tg::data(x));
  expect_steps(3);
  CHECK(tape.tape().input_name(2) == "bn.mean");
  auto ct = tg::compile(tape);
  ct.gradient(net, tg::data(x));
  expect_steps(4);
  auto step = tg::jit(loss);
  step.value_and_gradient(net, tg::data(x));  // a miss: recorded, compiled, run once
  expect_steps(5);
  step.value_and_gradient(net, tg::data(x));  // a hit
  expect_steps(6);
  auto interpreted = tg::jit(loss, {.compiled = false});
  interpreted.value_and_gradient(net, tg::data(x));
  expect_steps(7);
  // A failed replay (a shape guard) changes nothing.
  CHECK_THROWS_AS(tape.gradient(net, tg::data(A::zeros({6, 3, 5}))), tg::Error);
  expect_steps(7);

  // Optimizers skip state; checkpoints keep it.
  tg::optim::AdamW opt(net, {.lr = 0.1, .weight_decay = 0.5});
  const A before = net.bn.var.value;
  opt.step(net, tape.gradient(net, tg::data(x)));
  CHECK(max_abs_diff(net.bn.var.value, before) > 0);  // the replay's own update
  const A after_replay = net.bn.var.value;
  opt.step(net, g);
  CHECK(max_abs_diff(net.bn.var.value, after_replay) == 0);  // the optimizer's step: untouched
  const auto path = std::filesystem::temp_directory_path() / "tapegrad_bn_state.safetensors";
  tg::save_safetensors(path.string(), net);
  BnNet<A> loaded = bn_net(3);
  tg::load_safetensors(path.string(), loaded);
  CHECK(max_abs_diff(loaded.bn.mean.value, net.bn.mean.value) == 0);
  CHECK(max_abs_diff(loaded.bn.var.value, net.bn.var.value) == 0);
  std::filesystem::remove(path);
}

TEST_CASE("batch_norm: bad input is a clear error and changes nothing") {
  BnNet<A> p = bn_net(3);
  CHECK_THROWS_WITH_AS(tg::batch_norm(A::zeros({1, 3}), p.gamma, p.beta, p.bn),
                       doctest::Contains("batch_norm: x has shape (1,3): 1 value per channel in training mode expected more than one"),
                       tg::Error);
  CHECK(tg::batch_norm(A::ones({1, 3}), p.gamma, p.beta, p.bn, {.training = false}).shape() == tg::Shape{1, 3});
  CHECK_THROWS_WITH_AS(tg::batch_norm(A::zeros({4, 5, 2}), p.gamma, p.beta, p.bn),
                       doctest::Contains("gamma has shape (3) but x (4,5,2) has 5 channels expected shape (5)"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::batch_norm(A::zeros({4, 3}), p.gamma, p.beta, p.bn, {.momentum = 1.5}),
                       doctest::Contains("momentum (1.5) expected a number in [0, 1]"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::batch_norm(A::zeros({4}), A::ones({1}), A::zeros({1}), tg::batch_norm_state<double>(1)),
                       doctest::Contains("x has shape (4) expected (N, C, spatial...)"), tg::Error);
  // A parameter passed where the running statistics belong: refused before anything runs.
  auto misuse = [](const BnNet<T>& q, const T& v) {
    const tg::BatchNormState<T> wrong{{q.gamma}, {q.bn.var.value}};
    return tg::sum(tg::batch_norm(v, q.gamma, q.beta, wrong));
  };
  const A gamma_before = p.gamma;
  CHECK_THROWS_WITH_AS(tg::gradient(misuse, p, tg::data(A::ones({4, 3}))),
                       doctest::Contains("batch_norm: operand 3 (shape (3)) is not a tg::State leaf"), tg::Error);
  CHECK(max_abs_diff(p.gamma, gamma_before) == 0);
}

TEST_CASE("layer_norm and group_norm: reference loops, the triple, the dot-product test, bad input") {
  const A x = A::random_uniform({2, 4, 3, 2}, -2, 2, 21), x2 = A::random_uniform({2, 4, 3, 2}, -1, 3, 22);
  // layer_norm over the last two dims: gamma and beta (3, 2).
  const A lg = A::random_uniform({3, 2}, 0.5, 1.5, 23), lb = A::random_uniform({3, 2}, -1, 1, 24);
  const A ln = reference_norm(
      x, 8, [](std::int64_t i) { return i / 6; }, [](std::int64_t i) { return i % 6; }, &lg, &lb, 1e-5);
  CHECK(max_abs_diff(tg::layer_norm(x, lg, lb, {.dims = 2}), ln) < 1e-12);
  // group_norm with 2 groups of 2 channels: gamma and beta per channel.
  const A gg = A::random_uniform({4}, 0.5, 1.5, 25), gb = A::random_uniform({4}, -1, 1, 26);
  const A gn = reference_norm(
      x, 4, [](std::int64_t i) { return i / 12; }, [](std::int64_t i) { return (i / 6) % 4; }, &gg, &gb, 1e-5);
  CHECK(max_abs_diff(tg::group_norm(x, gg, gb, {.groups = 2}), gn) < 1e-12);
  const A in = reference_norm(
      x, 8, [](std::int64_t i) { return i / 6; }, [](std::int64_t i) { return (i / 6) % 4; }, &gg, &gb, 1e-5);
  CHECK(max_abs_diff(tg::instance_norm(x, gg, gb), in) < 1e-12);

  check_op([](const T& v, const T& g, const T& b) { return tg::layer_norm(v, g, b, {.dims = 2}); }, std::tuple{x, lg, lb},
           std::tuple{x2, lg, lb});
  check_op([](const T& v) { return tg::layer_norm(v, {.dims = 1}); }, std::tuple{x}, std::tuple{x2});
  check_op([](const T& v, const T& g, const T& b) { return tg::group_norm(v, g, b, {.groups = 2}); }, std::tuple{x, gg, gb},
           std::tuple{x2, gg, gb});
  const A big = A::random_uniform({8, 16, 10, 10}, -1, 2, 27);
  const A g16 = A::random_uniform({16}, 0.5, 1.5, 28), b16 = A::random_uniform({16}, -1, 1, 29);
  const A g100 = A::random_uniform({10, 10}, 0.5, 1.5, 30), b100 = A::random_uniform({10, 10}, -1, 1, 31);
  check_dot_product([](const T& v, const T& g, const T& b) { return tg::layer_norm(v, g, b, {.dims = 2}); }, big, g100, b100);
  check_dot_product([](const T& v, const T& g, const T& b) { return tg::group_norm(v, g, b, {.groups = 4}); }, big, g16, b16);
  check_dot_product([](const T& v, const T& g, const T& b) { return tg::instance_norm(v, g, b); }, big, g16, b16);

  CHECK_THROWS_WITH_AS(tg::group_norm(x, gg, gb, {.groups = 3}),
                       doctest::Contains("group_norm: groups (3) does not divide the channels (4) of x (2,4,3,2)"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::layer_norm(x, gg, gb, {.dims = 2}), doctest::Contains("gamma has shape (4) expected (3,2)"),
                       tg::Error);
  CHECK_THROWS_WITH_AS(tg::layer_norm(x, lg, lb, {.dims = 5}), doctest::Contains("dims (5) for x of shape (2,4,3,2) expected 1 to its rank (4)"),
                       tg::Error);
  CHECK_THROWS_WITH_AS(tg::group_norm(x, gg, gb, {.groups = 2, .eps = -1}), doctest::Contains("eps (-1) expected a finite number >= 0"),
                       tg::Error);
}

// ---- dropout ----------------------------------------------------------------------

TEST_CASE("dropout: rate, scale, channel planes, identity cases") {
  auto key = tg::dropout_key<double>(3);
  const A ones = A::ones({20000});
  const A y = tg::dropout(ones, 0.3, key);
  std::int64_t zeros = 0;
  for (double v : y) {
    zeros += v == 0;
    if (v != 0) CHECK(v == doctest::Approx(1 / 0.7).epsilon(1e-15));
  }
  CHECK(std::abs(double(zeros) / 20000 - 0.3) < 0.015);
  CHECK(key.value.data()[1] == 1);  // the step advanced
  const A y2 = tg::dropout(ones, 0.3, key);
  CHECK(max_abs_diff(y, y2) > 0);  // a fresh mask
  auto same = tg::dropout_key<double>(3);
  CHECK(max_abs_diff(tg::dropout(ones, 0.3, same), y) == 0);  // reproducible from the seed
  // Channel dropout: whole (n, c) planes.
  const A planes = tg::dropout2d(A::ones({4, 16, 3, 3}), 0.5, key);
  std::int64_t dropped = 0;
  for (std::int64_t plane = 0; plane < 64; ++plane) {
    const double first = planes.data()[plane * 9];
    dropped += first == 0;
    for (std::int64_t j = 1; j < 9; ++j) CHECK(planes.data()[plane * 9 + j] == first);
  }
  CHECK(dropped > 10);
  CHECK(dropped < 54);
  // p = 0 and evaluation: the identity, nothing recorded, the key untouched.
  const double step = key.value.data()[1];
  auto tape = tg::record([](const T& x, const tg::State<T>& k) { return tg::sum(tg::dropout(tg::dropout(x, 0.0, k), 0.5, k, {.training = false})); },
                         ones, key);
  CHECK(tape.tape().num_instructions() == 1);  // the sum
  CHECK(key.value.data()[1] == step);
  CHECK_THROWS_WITH_AS(tg::dropout(ones, 1.0, key), doctest::Contains("dropout: p (1) expected a probability in [0, 1)"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::dropout(ones, -0.1, key), doctest::Contains("p (-0.1)"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::dropout2d(ones, 0.5, key), doctest::Contains("x has shape (20000) expected (N, C, spatial...)"), tg::Error);
}

TEST_CASE("dropout: every replay draws a fresh mask, reproducibly; the triple and the dot-product test") {
  const A x = A::random_uniform({4, 6}, 0.5, 1.5, 41), x2 = A::random_uniform({4, 6}, 0.5, 1.5, 42);
  auto f = [](const T& v, const tg::State<T>& k) { return tg::dropout(v, 0.5, k) * v; };
  auto run = [&](std::uint32_t seed) {
    auto key = tg::dropout_key<double>(seed);
    auto tape = tg::record(f, x, key);
    std::vector<A> outs{tape.output()};
    for (int i = 0; i < 2; ++i) outs.push_back(tape.forward(x, key));
    auto ct = tg::compile(tape);
    outs.push_back(ct.forward(x, key));
    CHECK(key.value.data()[1] == 4);  // recording, two replays, one compiled replay
    return outs;
  };
  const auto a = run(5), b = run(5);
  for (std::size_t i = 0; i < a.size(); ++i) {
    CHECK(max_abs_diff(a[i], b[i]) == 0);
    if (i > 0) CHECK(max_abs_diff(a[i], a[i - 1]) > 0);
  }
  // The gradient is the mask the forward used.
  auto key = tg::dropout_key<double>(9);
  auto tape = tg::record([](const T& v, const tg::State<T>& k) { return tg::sum(tg::dropout(v, 0.25, k)); }, x, key);
  CHECK(tape.tape().num_instructions() == 2);
  const A g = std::get<0>(tape.gradient());
  const A fresh = tg::dropout(A::ones(x.shape()), 0.25, tg::dropout_key<double>(9));
  CHECK(max_abs_diff(g, fresh) == 0);
  // The triple: a replay on new inputs gives what a fresh recording at the same step gives.
  auto one = tg::record([](const T& v, const tg::State<T>& k) { return tg::dropout(v, 0.5, k); }, x, tg::dropout_key<double>(2));
  CHECK(one.tape().num_instructions() == 1);
  const A replayed = one.forward(x2, tg::dropout_key<double>(2));
  const A recorded = tg::record([](const T& v, const tg::State<T>& k) { return tg::dropout(v, 0.5, k); }, x2, tg::dropout_key<double>(2)).output();
  CHECK(max_abs_diff(replayed, recorded) == 0);
  const A key_value = tg::dropout_key<double>(2).value;
  auto fixed = [key_value](const T& v) { return tg::dropout(v, 0.5, tg::State<T>{tg::constant(key_value)}); };  // one mask
  tg::GradcheckOptions opt;
  const auto report = tg::gradcheck(opt, fixed, x);
  CHECK_MESSAGE(report.passed(), report.summary());
  if (report.passed()) covered(Check::op_triple, one.tape());
  const A big = A::random_uniform({8, 16, 12, 12}, -1, 1, 43);
  check_dot_product(fixed, big);
  check_dot_product([key_value](const T& v) { return tg::dropout2d(v, 0.3, tg::State<T>{tg::constant(key_value)}); }, big);
}

// ---- upsample and adaptive pools ----------------------------------------------------

TEST_CASE("upsample: PyTorch's values by hand, separable in every mode, every rank") {
  using tg::UpsampleMode;
  const A x({1, 1, 2}, {1, 2});
  CHECK(max_abs_diff(tg::upsample(x, {.scale = {2}}), A({1, 1, 4}, {1, 1, 2, 2})) == 0);
  CHECK(max_abs_diff(tg::upsample(x, {.scale = {2}, .mode = UpsampleMode::linear}), A({1, 1, 4}, {1, 1.25, 1.75, 2})) < 1e-15);
  CHECK(max_abs_diff(tg::upsample(x, {.size = {4}, .mode = UpsampleMode::linear, .align_corners = true}),
                     A({1, 1, 4}, {1, 4.0 / 3, 5.0 / 3, 2})) < 1e-15);
  CHECK(max_abs_diff(tg::upsample(A({1, 1, 3}, {1, 2, 3}), {.size = {2}}), A({1, 1, 2}, {1, 2})) == 0);  // floor(o * 3 / 2)
  // An outer product a (x) b (x) c upsamples to up(a) (x) up(b) (x) up(c) in every mode.
  const A a = A::random_uniform({3}, -1, 1, 51), b = A::random_uniform({4}, -1, 1, 52), c = A::random_uniform({5}, -1, 1, 53);
  for (const auto mode : {UpsampleMode::nearest, UpsampleMode::linear})
    for (const bool corners : {false, true}) {
      if (corners && mode == UpsampleMode::nearest) continue;
      const tg::UpsampleParams p{.scale = {2, 1.5, 3}, .mode = mode, .align_corners = corners};
      auto up1 = [&](const A& v, double s) {
        return tg::upsample(tg::reshape(v, {1, 1, v.size()}), {.scale = {s}, .mode = mode, .align_corners = corners});
      };
      const A ua = up1(a, 2), ub = up1(b, 1.5), uc = up1(c, 3);
      A outer({1, 1, 3, 4, 5});
      for (std::int64_t i = 0; i < 60; ++i) outer.data()[i] = a.data()[i / 20] * b.data()[(i / 5) % 4] * c.data()[i % 5];
      const A y = tg::upsample(outer, p);
      REQUIRE(y.shape() == tg::Shape{1, 1, ua.size(), ub.size(), uc.size()});
      double err = 0;
      for (std::int64_t i = 0; i < y.size(); ++i) {
        const std::int64_t k = i % uc.size(), j = (i / uc.size()) % ub.size(), h = i / (uc.size() * ub.size());
        err = std::max(err, std::abs(y.data()[i] - ua.data()[h] * ub.data()[j] * uc.data()[k]));
      }
      CHECK(err < 1e-14);
    }
}

TEST_CASE("adaptive pools: PyTorch's windows by hand, global pools as the 1x1 case") {
  const A x({1, 1, 5}, {1, 5, 2, 4, 3});  // windows for 3 outputs: [0,2) [1,4) [3,5)
  CHECK(max_abs_diff(tg::adaptive_meanpool(x, {.output = {3}}), A({1, 1, 3}, {3, 11.0 / 3, 3.5})) < 1e-15);
  CHECK(max_abs_diff(tg::adaptive_maxpool(x, {.output = {3}}), A({1, 1, 3}, {5, 5, 4})) == 0);
  const auto g = tg::gradient([](const T& v) { return tg::sum(tg::adaptive_maxpool(v, {.output = {3}})); }, x);
  CHECK(max_abs_diff(g, A({1, 1, 5}, {0, 2, 0, 1, 0})) == 0);  // the shared maximum gets both adjoints
  const A img = A::random_uniform({2, 3, 7, 6}, -1, 1, 54);
  CHECK(max_abs_diff(tg::adaptive_meanpool(img, {.output = {1}}), tg::global_meanpool(img)) < 1e-15);
  CHECK(max_abs_diff(tg::adaptive_maxpool(img, {.output = {1, 1}}), tg::global_maxpool(img)) == 0);
  // Output sizes that divide the input: the plain pools.
  const A big = A::random_uniform({2, 3, 8, 6}, -1, 1, 55);
  CHECK(max_abs_diff(tg::adaptive_maxpool(big, {.output = {4, 3}}), tg::maxpool(big, {.window = {2}})) == 0);
  CHECK(max_abs_diff(tg::adaptive_meanpool(big, {.output = {4, 3}}), tg::meanpool(big, {.window = {2}})) < 1e-15);
}

TEST_CASE("upsample and adaptive pools: the triple, the dot-product test, bad input") {
  using tg::UpsampleMode;
  const A x = A::random_uniform({2, 2, 3, 4}, -1, 1, 61), x2 = A::random_uniform({2, 2, 3, 4}, -1, 1, 62);
  check_op([](const T& v) { return tg::upsample(v, {.scale = {2}}); }, std::tuple{x}, std::tuple{x2});
  check_op([](const T& v) { return tg::upsample(v, {.size = {5, 7}, .mode = UpsampleMode::linear}); }, std::tuple{x}, std::tuple{x2});
  check_op([](const T& v) { return tg::upsample(v, {.scale = {1.5}, .mode = UpsampleMode::linear, .align_corners = true}); },
           std::tuple{x}, std::tuple{x2});
  check_op([](const T& v) { return tg::adaptive_meanpool(v, {.output = {2, 3}}); }, std::tuple{x}, std::tuple{x2});
  check_op([](const T& v) { return tg::adaptive_maxpool(v, {.output = {2, 3}}); }, std::tuple{x}, std::tuple{x2});
  const A big = A::random_uniform({4, 8, 14, 14}, -1, 1, 63), vol = A::random_uniform({2, 3, 5, 6, 7}, -1, 1, 64);
  check_dot_product([](const T& v) { return tg::upsample(v, {.scale = {2}}); }, big);
  check_dot_product([](const T& v) { return tg::upsample(v, {.size = {28, 21}, .mode = UpsampleMode::linear}); }, big);
  check_dot_product([](const T& v) { return tg::upsample(v, {.scale = {2, 1.5, 3}, .mode = UpsampleMode::linear, .align_corners = true}); }, vol);
  check_dot_product([](const T& v) { return tg::adaptive_meanpool(v, {.output = {5, 3}}); }, big);
  check_dot_product([](const T& v) { return tg::adaptive_maxpool(v, {.output = {3, 4, 5}}); }, vol);

  CHECK_THROWS_WITH_AS(tg::upsample(x, {.scale = {0.1}}), doctest::Contains("upsample: output size 0 along spatial dim 0 (input 3) expected at least 1"),
                       tg::Error);
  CHECK_THROWS_WITH_AS(tg::upsample(x, {.size = {0, 3}}), doctest::Contains("output size 0 along spatial dim 0"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::upsample(x, {.scale = {2}, .size = {4, 4}}), doctest::Contains("both .scale and .size given expected exactly one"),
                       tg::Error);
  CHECK_THROWS_WITH_AS(tg::upsample(x, {}), doctest::Contains("neither .scale nor .size given"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::upsample(x, {.scale = {2}, .align_corners = true}), doctest::Contains("align_corners with mode nearest"),
                       tg::Error);
  CHECK_THROWS_WITH_AS(tg::upsample(A::zeros({3, 4}), {.scale = {2}}),
                       doctest::Contains("x has shape (3,4) expected (N, C, spatial...) with 1 to 3 spatial dims"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::adaptive_meanpool(x, {.output = {0}}), doctest::Contains("adaptive_meanpool: output size 0 along spatial dim 0"),
                       tg::Error);
  CHECK_THROWS_WITH_AS(tg::adaptive_maxpool(x, {.output = {1, 2, 3}}), doctest::Contains("adaptive_maxpool:"), tg::Error);
}

// ---- the compiler: evaluation-mode batch norm folded into its conv ----------------------

namespace {
template <class M>
struct ConvBnNet {
  M w, b, gamma, beta, w2;
  tg::BatchNormState<M> bn;
};
}  // namespace

TEST_CASE("compile: an evaluation-mode batch_norm folds into its conv, values and every gradient unchanged") {
  ConvBnNet<A> net{A::random_uniform({6, 3, 3, 3}, -0.5, 0.5, 81), A::random_uniform({6}, -0.5, 0.5, 82),
                   A::random_uniform({6}, 0.5, 1.5, 83),          A::random_uniform({6}, -0.5, 0.5, 84),
                   A::random_uniform({4, 6, 3, 3}, -0.5, 0.5, 85),
                   {{A::random_uniform({6}, -0.2, 0.2, 86)}, {A::random_uniform({6}, 0.5, 2, 87)}}};
  const A x = A::random_uniform({2, 3, 9, 8}, -1, 1, 88), x2 = A::random_uniform({2, 3, 9, 8}, -1, 1, 89);
  for (const bool with_bias : {true, false})
    for (const bool relu : {true, false}) {
      CAPTURE(with_bias);
      CAPTURE(relu);
      auto f = [with_bias, relu](const ConvBnNet<T>& p, const T& v) {
        const T c = with_bias ? tg::conv(v, p.w, p.b, {.padding = {1}}) : tg::conv(v, p.w, {.stride = {2}});
        const T y = tg::batch_norm(c, p.gamma, p.beta, p.bn, {.training = false, .eps = 1e-3});
        return tg::sum(tg::conv(relu ? tg::relu(y) : y, p.w2) * 0.5);
      };
      auto tape = tg::record(f, net, x);
      auto folded = tg::compile(tape), plain = tg::compile(tape, {.fold_norms = false});
      CHECK(folded.program().steps().size() + 1 == plain.program().steps().size());
      CHECK(tg::dump(folded).find("+batch_norm[eval eps=0.001]") != std::string::npos);
      for (const A& input : {x, x2}) {
        const auto expected = tape.gradient(net, input);
        const ConvBnNet<A>& g_ref = std::get<0>(expected);
        const A& gx_ref = std::get<1>(expected);
        const double v_ref = tape.value();
        auto check = [&](auto& program) {
          const auto [g, gx] = program.gradient(net, input);
          CHECK(std::abs(program.value() - v_ref) < 1e-10);
          CHECK(max_abs_diff(gx, gx_ref) < 1e-10);
          CHECK(max_abs_diff(g.w, g_ref.w) < 1e-10);
          CHECK(max_abs_diff(g.b, g_ref.b) < 1e-10);
          CHECK(max_abs_diff(g.gamma, g_ref.gamma) < 1e-10);
          CHECK(max_abs_diff(g.beta, g_ref.beta) < 1e-10);
          CHECK(max_abs_diff(g.w2, g_ref.w2) < 1e-10);
        };
        check(folded);
        check(plain);
      }
    }
  // Training mode: batch statistics, nothing folded.
  auto train = [](const ConvBnNet<T>& p, const T& v) {
    return tg::sum(tg::batch_norm(tg::conv(v, p.w, p.b), p.gamma, p.beta, p.bn) * 0.5);
  };
  const auto ct = tg::compile(tg::record(train, net, x));
  CHECK(tg::dump(ct).find("+batch_norm") == std::string::npos);
}
