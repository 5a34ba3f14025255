// Second order (Note [Recorded pullbacks]): gradients recorded inside a
// recording, tg::hvp and tg::hessian, against hand-worked Hessians, central
// differences of the gradient and the Hessian's symmetry; the errors.
#include "support/checks.hpp"

#include "../examples/cnn/resnet_model.hpp"

using namespace tgtest;
using T = tg::Tracked<double>;

TEST_CASE("second order: the Hessian of a quadratic form is A + A^T") {
  const A a({3, 3}, {1, 2, 0, -1, 3, 4, 0.5, 0, 2});
  auto quadratic = [&](const T& x) { return tg::sum(x * tg::matmul(tg::constant(a), x)); };  // x^T A x, x (3, 1)
  const A x({3, 1}, {0.3, -1.2, 2.0});
  const A H = tg::hessian(quadratic, x);
  REQUIRE(H.shape() == tg::Shape{3, 3});
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) CHECK(H.data()[i * 3 + j] == doctest::Approx(a.data()[i * 3 + j] + a.data()[j * 3 + i]));
  const A v({3, 1}, {1, 0, -2});
  const A hv = tg::hvp(quadratic, x, v);  // (A + A^T) v = [2, 1, 0.5; 1, 6, 4; 0.5, 4, 4] v
  CHECK(max_abs_diff(hv, A({3, 1}, {1, -7, -7.5})) < 1e-12);
}

TEST_CASE("second order: hand-worked Hessians of elementwise functions") {
  const A x({4}, {0.5, 1.0, 1.5, 2.0});
  // sum(x^3): H = diag(6 x)
  const A H = tg::hessian([](const T& v) { return tg::sum(tg::pow(v, 3.0)); }, x);
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) CHECK(H.data()[i * 4 + j] == doctest::Approx(i == j ? 6 * x.data()[i] : 0.0));
  // sum(exp(x)) * sum(x): H_ij = exp(x_i) + exp(x_j) + [i = j] exp(x_i) sum(x)
  const A H2 = tg::hessian([](const T& v) { return tg::sum(tg::exp(v)) * tg::sum(v); }, x);
  const double total = 5.0;
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      const double ei = std::exp(x.data()[i]), ej = std::exp(x.data()[j]);
      CHECK(H2.data()[i * 4 + j] == doctest::Approx(ei + ej + (i == j ? ei * total : 0.0)));
    }
}

TEST_CASE("second order: hvp against central differences, op by op") {
  const A x = random_away_from({3, 4}, 21, 0.2, 1.8);  // positive: log, sqrt, div
  const A row = A::random_uniform({4}, -1, 1, 22);
  check_second_order([](const T& v) { return tg::sum(tg::exp(v) * v); }, x, 1);
  check_second_order([](const T& v) { return tg::sum(tg::log(v) * tg::sqrt(v)); }, x, 2);
  check_second_order([](const T& v) { return tg::sum(tg::tanh(v) * tg::sigmoid(v)); }, x, 3);
  check_second_order([](const T& v) { return tg::mean(tg::pow(v, 3.0) / (v + 1.0)); }, x, 4);
  check_second_order([](const T& v) { return tg::sum(-(v * v) - v); }, x, 5);
  check_second_order([&](const T& v) { return tg::sum(tg::pow(v + row, 2.0) * tg::constant(row)); }, x, 6);  // broadcast
  check_second_order([](const T& v) { return tg::sum(tg::pow(tg::sum(v, {1}), 2.0)); }, x, 7);
  check_second_order([](const T& v) { return tg::sum(tg::mean(v * v, {0}, true) * v); }, x, 8);
  check_second_order([](const T& v) { return tg::sum(tg::pow(tg::reshape(v, {4, 3}), 3.0)); }, x, 9);
  check_second_order([](const T& v) { return tg::sum(tg::pow(tg::broadcast_to(tg::reshape(v, {1, 12}), {2, 12}), 3.0)); }, x, 10);
  check_second_order([](const T& v) { return tg::sum(tg::tanh(tg::matmul(v, tg::transpose(v)))); }, x, 11);
  // relu and where are piecewise linear: their recorded pullbacks keep the mask fixed.
  const A signed_x = random_away_from({3, 4}, 23);
  check_second_order([](const T& v) { return tg::sum(tg::relu(v) * v * v); }, signed_x, 12);
  check_second_order([](const T& v) { return tg::sum(tg::where(v, v * v, v) * v); }, signed_x, 13);
}

TEST_CASE("second order: the Hessian of a small network's loss is symmetric and matches differences") {
  const A x = A::random_uniform({5, 3}, -1, 1, 31), w0 = A::random_uniform({3, 2}, -1, 1, 32);
  auto loss = [&](const T& w) { return tg::mean(tg::pow(tg::tanh(tg::matmul(tg::constant(x), w)) - 0.25, 2.0)); };
  const A H = tg::hessian(loss, w0);
  REQUIRE(H.shape() == tg::Shape{6, 6});
  for (int i = 0; i < 6; ++i)
    for (int j = 0; j < 6; ++j) CHECK(H.data()[i * 6 + j] == doctest::Approx(H.data()[j * 6 + i]).epsilon(1e-10));
  for (int j = 0; j < 6; ++j) {  // column j by central differences of the gradient
    A e = A::zeros(w0.shape());
    e.data()[j] = 1e-5;
    const A column = (tg::gradient(loss, w0 + e) - tg::gradient(loss, w0 - e)) / 2e-5;
    for (int i = 0; i < 6; ++i) CHECK(H.data()[i * 6 + j] == doctest::Approx(column.data()[i]).epsilon(1e-6));
  }
}

TEST_CASE("second order: a gradient penalty, differentiated, recorded and replayed") {
  const A x = A::random_uniform({4, 3}, -1, 1, 41), w = A::random_uniform({3, 2}, -1, 1, 42);
  auto inner = [](const T& weights, const T& images) { return tg::sum(tg::tanh(tg::matmul(images, weights))); };
  // |d inner / d images|^2, a function of the weights
  auto penalty = [&](const T& weights, const T& images) {
    const T gx = tg::gradient(inner, tg::data(weights), images);
    return tg::sum(gx * gx);
  };
  check_gradient([&](const T& weights, const T& images) { return penalty(weights, images); }, w, x);
  // Recorded once, replayed on new inputs: the same gradient as a fresh call.
  auto tape = tg::record(penalty, w, tg::data(x));
  const A w2 = A::random_uniform({3, 2}, -1, 1, 43), x2 = A::random_uniform({4, 3}, -1, 1, 44);
  const A replayed = tape.gradient(w2, tg::data(x2));
  const A fresh = tg::gradient(penalty, w2, tg::data(x2));
  CHECK(max_abs_diff(replayed, fresh) < 1e-12);
  CHECK(tape.forward(w2, tg::data(x2)).item() == doctest::Approx(std::get<0>(tg::value_and_gradient(penalty, w2, tg::data(x2)))));
  // Compiled with the usual passes: the same gradient; the dump shows the recorded reverse pass.
  auto compiled = tg::compile(tape);
  CHECK(max_abs_diff(compiled.gradient(w2, tg::data(x2)), fresh) < 1e-12);
  auto step = tg::jit(penalty);  // recorded and compiled at once
  CHECK(max_abs_diff(step.gradient(w2, tg::data(x2)), fresh) < 1e-12);
  const std::string listing = tg::dump(tape);
  CHECK(listing.find("matmul") != std::string::npos);
  CHECK(listing.find("permute") != std::string::npos);  // the transposes of matmul's recorded pullback
}

template <class A>
struct Linear {
  A w, b;
};

TEST_CASE("second order: a gradient inside a recording takes and returns parameter trees") {
  const Linear<A> net{A::random_uniform({3, 2}, -1, 1, 61), A::random_uniform({2}, -1, 1, 62)};
  const A x = A::random_uniform({4, 3}, -1, 1, 63);
  auto inner = [](const auto& p, const T& images) { return tg::sum(tg::tanh(tg::matmul(images, p.w) + p.b)); };
  // The squared norm of the gradient with respect to the parameters, differentiated in them.
  auto sharpness = [&](const auto& p, const T& images) {
    const Linear<T> g = tg::gradient(inner, p, tg::data(images));
    return tg::sum(g.w * g.w) + tg::sum(g.b * g.b);
  };
  const Linear<A> g = tg::gradient(sharpness, net, tg::data(x));
  // Against central differences of the value, leaf by leaf.
  auto value = [&](const Linear<A>& p) { return std::get<0>(tg::value_and_gradient(sharpness, p, tg::data(x))); };
  for (int leaf = 0; leaf < 2; ++leaf) {
    const A& analytic = leaf == 0 ? g.w : g.b;
    for (std::int64_t i = 0; i < analytic.size(); ++i) {
      Linear<A> up = net, down = net;
      (leaf == 0 ? up.w : up.b).data()[i] += 1e-6;
      (leaf == 0 ? down.w : down.b).data()[i] -= 1e-6;
      CHECK(analytic.data()[i] == doctest::Approx((value(up) - value(down)) / 2e-6).epsilon(1e-6));
    }
  }
  // hvp in a tree: against central differences of the gradient tree along the direction.
  const Linear<A> dir{A::random_uniform({3, 2}, -1, 1, 64), A::random_uniform({2}, -1, 1, 65)};
  auto loss = [&](const auto& p) { return inner(p, tg::constant(x)) * inner(p, tg::constant(x)); };
  const Linear<A> hv = tg::hvp(loss, net, dir);
  const Linear<A> up{net.w + dir.w * 1e-5, net.b + dir.b * 1e-5}, down{net.w - dir.w * 1e-5, net.b - dir.b * 1e-5};
  const Linear<A> gu = tg::gradient(loss, up), gd = tg::gradient(loss, down);
  CHECK(max_abs_diff(hv.w, (gu.w - gd.w) / 2e-5) < 1e-6 * std::max(1.0, max_abs(hv.w)));
  CHECK(max_abs_diff(hv.b, (gu.b - gd.b) / 2e-5) < 1e-6 * std::max(1.0, max_abs(hv.b)));
  CHECK_THROWS_WITH_AS(tg::hvp(loss, net, Linear<A>{dir.w, A::zeros({3})}),
                       doctest::Contains("hvp: v has shape (3) expected x's shape (2) (leaf 1)"), tg::Error);
}

TEST_CASE("second order: gradients nested three deep") {
  // f = sum(x^4); d/dx sum(f') = 12 x^2 summed ... the third derivative of sum(x^4) along ones is 24 x.
  auto f = [](const T& x) { return tg::sum(x * x * x * x); };
  auto first = [&](const T& x) { return tg::sum(tg::gradient(f, x)); };       // sum(4 x^3)
  auto second = [&](const T& x) { return tg::sum(tg::gradient(first, x)); };  // sum(12 x^2)
  const A x({3}, {0.5, -1.0, 2.0});
  const A third = tg::gradient(second, x);  // 24 x
  CHECK(max_abs_diff(third, A({3}, {12, -24, 48})) < 1e-12);
}

TEST_CASE("second order: errors") {
  const A x = A::random_uniform({2, 3}, -1, 1, 51);
  // A custom op's hand-written pullback has no recorded form: a clear error naming it, at recording.
  static const auto square = tg::register_op<double>({
      .name = "second_order_square",
      .forward = [](const tg::InputList<double>& in) { return in[0] * in[0]; },
      .pullback = [](const tg::InputList<double>& in, const A&, const A& dy) { return std::vector<A>{2.0 * in[0] * dy}; },
  });
  auto through_custom = [](const T& v) { return tg::sum(tg::gradient([](const T& u) { return tg::sum(square(u)); }, v)); };
  CHECK_THROWS_WITH_AS(tg::gradient(through_custom, x), doctest::Contains("op 'second_order_square'"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::gradient(through_custom, x), doctest::Contains("cannot be differentiated twice yet"), tg::Error);
  // hvp's direction must have x's shape; a gradient inside a recording needs a one-element value.
  CHECK_THROWS_WITH_AS(tg::hvp([](const T& v) { return tg::sum(v); }, x, A::zeros({3, 2})),
                       doctest::Contains("hvp: v has shape (3,2) expected x's shape (2,3)"), tg::Error);
  auto not_scalar = [](const T& v) { return tg::sum(tg::gradient([](const T& u) { return u * u; }, v)); };
  CHECK_THROWS_WITH_AS(tg::gradient(not_scalar, x), doctest::Contains("expected one element"), tg::Error);
}

namespace {
// 2 J^T J for J (outputs, inputs): the Hessian of sum(f^2) for a linear f with Jacobian J.
A gram(const A& J) {
  const std::int64_t m = J.shape()[0], n = J.shape()[1];
  A out = A::zeros({n, n});
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < n; ++j)
      for (std::int64_t r = 0; r < m; ++r) out.data()[i * n + j] += 2 * J.data()[r * n + i] * J.data()[r * n + j];
  return out;
}
}  // namespace

TEST_CASE("second order: sum(conv(x, w)^2) has the Hessian 2 J^T J, in x and in w") {
  const A x = A::random_uniform({1, 2, 4, 4}, -1, 1, 71), w = A::random_uniform({2, 2, 3, 3}, -1, 1, 72);
  const tg::ConvParams p{.padding = {1}};
  const A Hw = tg::hessian([&](const T& v) { return tg::sum(tg::pow(tg::conv(tg::constant(x), v, p), 2.0)); }, w);
  const A Jw = tg::jacobian([&](const T& v) { return tg::conv(tg::constant(x), v, p); }, w);
  CHECK(max_abs_diff(Hw, gram(Jw)) < 1e-10);
  const A Hx = tg::hessian([&](const T& v) { return tg::sum(tg::pow(tg::conv(v, tg::constant(w), p), 2.0)); }, x);
  const A Jx = tg::jacobian([&](const T& v) { return tg::conv(v, tg::constant(w), p); }, x);
  CHECK(max_abs_diff(Hx, gram(Jx)) < 1e-10);
}

TEST_CASE("second order: convolutions, strided, grouped, dilated, with bias and transposed") {
  const A x = A::random_uniform({2, 4, 7, 6}, -1, 1, 81), w = A::random_uniform({6, 2, 3, 3}, -1, 1, 82);
  const A b = A::random_uniform({6}, -1, 1, 83), wt = A::random_uniform({4, 3, 3, 2}, -1, 1, 84);
  const std::vector<tg::ConvParams> geometries = {  // w (6, 2, 3, 3) on 4 channels: two groups
      {.padding = {1}, .groups = 2}, {.stride = {2}, .padding = {1}, .groups = 2},
      {.stride = {2, 1}, .pad_lo = {0, 1}, .pad_hi = {1, 0}, .groups = 2}, {.padding = {2}, .dilation = {2}, .groups = 2, .flip = true}};
  for (const tg::ConvParams& p : geometries) {
    check_second_order([&](const T& v) { return tg::sum(tg::tanh(tg::conv(v, tg::constant(w), tg::constant(b), p))); }, x, 1);
    check_second_order([&](const T& v) { return tg::sum(tg::tanh(tg::conv(tg::constant(x), v, p))); }, w, 2);
  }
  // Input and weights from one array: the mixed second derivatives of a bilinear op.
  check_second_order([](const T& v) { return tg::sum(tg::pow(tg::conv(v, v * 0.5 + 0.1, {.padding = {2}}), 2.0)); },
                     A::random_uniform({1, 2, 5, 5}, -1, 1, 85), 3);
  const tg::ConvParams up{.stride = {2}, .padding = {1}, .output_padding = {1}};
  check_second_order([&](const T& v) { return tg::sum(tg::tanh(tg::conv_transpose(v, tg::constant(wt), up))); }, x, 4);
  check_second_order([&](const T& v) { return tg::sum(tg::tanh(tg::conv_transpose(tg::constant(x), v, up))); }, wt, 5);
}

TEST_CASE("second order: conv_weight_grad, the weights' part of conv's recorded pullback") {
  const tg::ConvParams p{.stride = {2}, .padding = {1}, .groups = 2};
  const A x = A::random_uniform({2, 4, 7, 6}, -1, 1, 91), x2 = A::random_uniform({2, 4, 7, 6}, -1, 1, 92);
  const tg::Shape weight{6, 2, 3, 3};
  const A gy = A::random_uniform({2, 6, 4, 3}, -1, 1, 93), gy2 = A::random_uniform({2, 6, 4, 3}, -1, 1, 94);
  auto f = [&](const T& a, const T& g) {
    const auto site = std::source_location::current();
    return tg::ops::conv_weight_grad_tracked<double>(tg::Operand<double>(a, site), tg::Operand<double>(g, site), p, weight, site);
  };
  check_op(f, std::tuple{x, gy}, std::tuple{x2, gy2});
  // Its value: the weight gradient of <gy, conv(x, w)>.
  const A w = A::random_uniform(weight, -1, 1, 95);
  const A expected = std::get<1>(tg::gradient([&](const T& a, const T& v) { return tg::sum(tg::conv(a, v, p) * tg::constant(gy)); }, x, w));
  CHECK(max_abs_diff(tg::record(f, x, gy).output(), expected) < 1e-12);
  const A xb = A::random_uniform({4, 8, 14, 12}, -1, 1, 96), gyb = A::random_uniform({4, 6, 7, 6}, -1, 1, 97);
  const tg::ConvParams pb{.stride = {2}, .padding = {1}, .groups = 2};
  check_dot_product([&](const T& a, const T& g) {
    const auto site = std::source_location::current();
    return tg::ops::conv_weight_grad_tracked<double>(tg::Operand<double>(a, site), tg::Operand<double>(g, site), pb,
                                                     tg::Shape{6, 4, 3, 3}, site);
  }, xb, gyb);
  CHECK_THROWS_WITH_AS(tg::record(f, x, A::zeros({2, 6, 4, 4})),
                       doctest::Contains("conv_weight_grad: gy has shape (2,6,4,4) expected the conv's output shape (2,6,4,3)"),
                       tg::Error);
}

TEST_CASE("second order: max-pools through their recorded window choice") {
  const A x = A::random_uniform({2, 3, 7, 6}, -1, 1, 101);  // continuous: no ties
  const std::vector<tg::PoolParams> pools = {{.window = {2}}, {.window = {3}, .stride = {2}, .padding = {1}},
                                             {.window = {2, 3}, .stride = {1}, .dilation = {2, 1}, .ceil_mode = true}};
  for (const tg::PoolParams& p : pools) {
    check_second_order([&](const T& v) { return tg::sum(tg::pow(tg::maxpool(v * v, p), 2.0)); }, x, 1);
    check_second_order([&](const T& v) { return tg::sum(tg::tanh(tg::maxpool(tg::tanh(v), p)) * tg::maxpool(v, p)); }, x, 2);
  }
  check_second_order([](const T& v) { return tg::sum(tg::pow(tg::global_maxpool(v), 3.0)); }, x, 3);
  // sum(maxpool(x)^2): the Hessian is 2 at each window's maximum (a diagonal of 2s and 0s), 2x2 windows on a 4x4 plane.
  const A plane = A::random_uniform({1, 1, 4, 4}, -1, 1, 102);
  const A H = tg::hessian([](const T& v) { return tg::sum(tg::pow(tg::maxpool(v, {.window = {2}}), 2.0)); }, plane);
  const A y = tg::maxpool(plane, {.window = {2}});
  for (std::int64_t i = 0; i < 16; ++i) {
    bool is_max = false;
    for (std::int64_t j = 0; j < 4; ++j) is_max = is_max || plane.data()[i] == y.data()[j];
    for (std::int64_t k = 0; k < 16; ++k) CHECK(H.data()[i * 16 + k] == (i == k && is_max ? 2.0 : 0.0));
  }
}

TEST_CASE("second order: maxpool_route and maxpool_gather, each other's adjoints") {
  const tg::PoolParams p{.window = {3}, .stride = {2}, .padding = {1}};
  const A x = A::random_uniform({2, 3, 7, 6}, -1, 1, 111), x2 = A::random_uniform({2, 3, 7, 6}, -1, 1, 112);
  const A gy = A::random_uniform({2, 3, 4, 3}, -1, 1, 113), gy2 = A::random_uniform({2, 3, 4, 3}, -1, 1, 114);
  const A v = A::random_uniform({2, 3, 7, 6}, -1, 1, 115), v2 = A::random_uniform({2, 3, 7, 6}, -1, 1, 116);
  auto route = [&](const T& a, const T& g) { return tg::ops::maxpool_route_tracked(a, g, p, false); };
  auto gather = [&](const T& a, const T& w) { return tg::ops::maxpool_route_tracked(a, w, p, true); };
  check_op(route, std::tuple{x, gy}, std::tuple{x2, gy2});
  check_op(gather, std::tuple{x, v}, std::tuple{x2, v2});
  // Values: route is maxpool's input gradient; gather reads v at the same elements.
  const A routed = tg::record(route, x, gy).output();
  const A expected = tg::gradient([&](const T& a) { return tg::sum(tg::maxpool(a, p) * tg::constant(gy)); }, x);
  CHECK(max_abs_diff(routed, expected) == 0);
  const A gathered = tg::record(gather, x, v).output();
  CHECK(tg::sum(routed * v).item() == doctest::Approx(tg::sum(gy * gathered).item()).epsilon(1e-12));  // <route gy, v> = <gy, gather v>
  // Ties: the first maximum in row-major order takes the adjoint, in both.
  const A flat = A::zeros({1, 1, 2, 2}), ones = A::ones({1, 1, 1, 1}), probe = A({1, 1, 2, 2}, {5, 6, 7, 8});
  const tg::PoolParams two{.window = {2}};
  CHECK(max_abs_diff(tg::record([&](const T& a, const T& g) { return tg::ops::maxpool_route_tracked(a, g, two, false); }, flat, ones).output(),
                     A({1, 1, 2, 2}, {1, 0, 0, 0})) == 0);
  CHECK(tg::record([&](const T& a, const T& w) { return tg::ops::maxpool_route_tracked(a, w, two, true); }, flat, probe).output().item() == 5);
  const A xb = A::random_uniform({4, 8, 14, 14}, -1, 1, 117), gyb = A::random_uniform({4, 8, 7, 7}, -1, 1, 118);
  const A vb = A::random_uniform({4, 8, 14, 14}, -1, 1, 119);
  check_dot_product([&](const T& a, const T& g) { return tg::ops::maxpool_route_tracked(a, g, two, false); }, xb, gyb);
  check_dot_product([&](const T& a, const T& w) { return tg::ops::maxpool_route_tracked(a, w, two, true); }, xb, vb);
  CHECK_THROWS_WITH_AS(tg::record(route, x, v), doctest::Contains("maxpool_route: values have shape (2,3,7,6) expected (2,3,4,3)"),
                       tg::Error);
}

TEST_CASE("second order: cross-entropy, with class weights and label smoothing") {
  const A logits = A::random_uniform({4, 5}, -2, 2, 121), labels({4}, {0, 3, 4, 3}), weights({5}, {1, 0.5, 2, 1.5, 1});
  // Hand-worked: without weights or smoothing the Hessian is block diagonal, (diag(p_i) - p_i p_i^T) / N per row.
  const A H = tg::hessian([&](const T& z) { return tg::cross_entropy(z, tg::constant(labels)); }, logits);
  const A p = tg::softmax(logits, 1);
  for (std::int64_t a = 0; a < 20; ++a)
    for (std::int64_t b = 0; b < 20; ++b) {
      const std::int64_t i = a / 5, j = a % 5, i2 = b / 5, k = b % 5;
      const double pj = p.data()[i * 5 + j], pk = p.data()[i * 5 + k];
      const double expected = i != i2 ? 0.0 : ((j == k ? pj : 0.0) - pj * pk) / 4;
      CHECK(H.data()[a * 20 + b] == doctest::Approx(expected).epsilon(1e-10));
    }
  check_second_order([&](const T& z) { return tg::cross_entropy(z, tg::constant(labels)); }, logits, 1);
  check_second_order([&](const T& z) { return tg::cross_entropy(z, tg::constant(labels), tg::constant(weights), {.label_smoothing = 0.2}); },
                     logits, 2);
  check_second_order([&](const T& z) { return tg::cross_entropy(tg::tanh(z) * 3.0, tg::constant(labels), {.label_smoothing = 0.1}); },
                     logits, 3);
  // cross_entropy_grad itself: the triple, its value (the first-order gradient), a dot product.
  auto grad_op = [&](const T& z) { return tg::gradient([&](const T& u) { return tg::cross_entropy(u, tg::constant(labels), tg::constant(weights), {.label_smoothing = 0.2}); }, z); };
  const A expected = tg::gradient([&](const T& u) { return tg::cross_entropy(u, tg::constant(labels), tg::constant(weights), {.label_smoothing = 0.2}); }, logits);
  auto recorded = tg::record(grad_op, logits);
  CHECK(max_abs_diff(recorded.output(), expected) < 1e-15);
  auto direct = [&](const T& z) {
    const auto site = std::source_location::current();
    return tg::record_op(*tg::Registry<double>::find("cross_entropy_grad"), nullptr,
                         {tg::Operand<double>(z, site), tg::Operand<double>(tg::constant(labels), site)}, site);
  };
  check_op(direct, std::tuple{logits}, std::tuple{A::random_uniform({4, 5}, -2, 2, 122)});
  A many_labels({64});
  for (std::int64_t i = 0; i < 64; ++i) many_labels.data()[i] = double(i % 10);
  check_dot_product([&](const T& z) {
    const auto site = std::source_location::current();
    return tg::record_op(*tg::Registry<double>::find("cross_entropy_grad"), nullptr,
                         {tg::Operand<double>(z, site), tg::Operand<double>(tg::constant(many_labels), site)}, site);
  }, A::random_uniform({64, 10}, -2, 2, 123));
  // Third order: a penalty on the logits' gradient, differentiated twice (cross_entropy_grad's
  // recorded pullback: softmax ops scaled by the rows' scales, cross_entropy_grad with row_scales).
  for (const double smoothing : {0.0, 0.3}) {
    auto penalty = [&](const T& z) {
      const T g = tg::gradient([&](const T& u) { return tg::cross_entropy(u, tg::constant(labels), tg::constant(weights), {.label_smoothing = smoothing}); }, z);
      return tg::sum(g * g * z);
    };
    check_second_order(penalty, logits, 4);
  }
  // The rows' scales A_i / W: 1 / N without weights or smoothing; with weights w[y_i] / sum_i w[y_i].
  auto scales_of = [&](bool weighted) {
    auto loss = [&, weighted](const T& u) {
      return weighted ? tg::cross_entropy(u, tg::constant(labels), tg::constant(weights)) : tg::cross_entropy(u, tg::constant(labels));
    };
    auto penalty = [&](const T& z) {
      const T g = tg::gradient(loss, z);
      return tg::sum(g * g);
    };
    auto tape = tg::record([&](const T& z) { return tg::sum(tg::gradient(penalty, z)); }, logits);
    for (std::size_t i = 0; i < tape.tape().num_instructions(); ++i) {
      const auto& ins = tape.tape().instruction(i);
      if (ins.op->name == "cross_entropy_grad" && tape.tape().value(ins.out).shape() == tg::Shape{4, 1}) return A(tape.tape().value(ins.out));
    }
    return A();
  };
  CHECK(max_abs_diff(scales_of(false), A({4, 1}, {0.25, 0.25, 0.25, 0.25})) < 1e-15);
  CHECK(max_abs_diff(scales_of(true), A({4, 1}, {1 / 5.0, 1.5 / 5.0, 1 / 5.0, 1.5 / 5.0})) < 1e-15);
  // Class weights that need a gradient: refused when the second order is recorded.
  auto in_weights = [&](const T& z, const T& w) {
    return tg::sum(tg::gradient([&](const T& u) { return tg::cross_entropy(u, tg::constant(labels), w); }, z));
  };
  CHECK_THROWS_WITH_AS(tg::gradient(in_weights, logits, weights), doctest::Contains("class weights that need a gradient"), tg::Error);
}

// Note [The filter's gradient ops]: every border, output mode, origin, convolve
// and separable factors, in the image, in the kernel and in both at once.
TEST_CASE("second order: correlate and convolve, every border and output mode") {
  const A x = A::random_uniform({6, 7}, -1, 1, 111), k = A::random_uniform({3, 2}, -1, 1, 112);
  struct Case {
    tg::FilterParams p;
    bool convolve;
  };
  const std::vector<Case> cases = {
      {{.border = tg::Border::fill(0.3)}, false},        {{.border = tg::Border::replicate()}, false},
      {{.border = tg::Border::reflect(), .output = tg::Output::full}, false},
      {{.border = tg::Border::symmetric(), .origin = {-1, 0}}, true},
      {{.border = tg::Border::circular()}, true},       {{.output = tg::Output::valid}, false},
      {{.border = tg::Border::replicate(), .algorithm = tg::ConvAlgorithm::fft}, false}};
  for (const Case& c : cases) {
    CAPTURE(tg::kernels::to_string(c.p.border.mode));
    CAPTURE(tg::to_string(c.p.output));
    auto filter = [&](const T& a, const T& b) { return c.convolve ? tg::convolve(a, b, c.p) : tg::correlate(a, b, c.p); };
    check_second_order([&](const T& v) { return tg::sum(tg::tanh(filter(v, tg::constant(k)))); }, x, 1);
    check_second_order([&](const T& v) { return tg::sum(tg::tanh(filter(tg::constant(x), v))); }, k, 2);
    // One array as image and kernel: the mixed second derivatives of a bilinear op.
    check_second_order([&](const T& v) { return tg::sum(tg::pow(filter(v, tg::reshape(v, {6, 7}) * 0.5 + 0.1), 2.0)); },
                       A::random_uniform({6, 7}, -1, 1, 113), 3);
  }
  // Separable factors: one instruction per dim, each with its own recorded pullback.
  const A k1 = A::random_uniform({3}, -1, 1, 114), k2 = A::random_uniform({5}, -1, 1, 115);
  check_second_order([&](const T& v) {
    return tg::sum(tg::tanh(tg::correlate(v, std::vector<A>{k1, k2}, {.border = tg::Border::reflect()})));
  }, x, 4);
  check_second_order([&](const T& v) {
    return tg::sum(tg::tanh(tg::correlate(tg::constant(x), std::vector<T>{v, tg::constant(k2)}, {.border = tg::Border::symmetric()})));
  }, k1, 5);
}

TEST_CASE("second order: sum(correlate(x, k)^2) has the Hessian 2 J^T J, in x and in k") {
  const A x = A::random_uniform({5, 4}, -1, 1, 121), k = A::random_uniform({3, 3}, -1, 1, 122);
  const tg::FilterParams p{.border = tg::Border::replicate()};
  auto flat = [](const T& y) { return tg::reshape(y, {-1}); };
  const A Hk = tg::hessian([&](const T& v) { return tg::sum(tg::pow(tg::correlate(tg::constant(x), v, p), 2.0)); }, k);
  CHECK(max_abs_diff(Hk, gram(tg::jacobian([&](const T& v) { return flat(tg::correlate(tg::constant(x), v, p)); }, k))) < 1e-10);
  const A Hx = tg::hessian([&](const T& v) { return tg::sum(tg::pow(tg::correlate(v, tg::constant(k), p), 2.0)); }, x);
  CHECK(max_abs_diff(Hx, gram(tg::jacobian([&](const T& v) { return flat(tg::correlate(v, tg::constant(k), p)); }, x))) < 1e-10);
}

TEST_CASE("second order: filter_image_grad and filter_kernel_grad, the halves of the filter's recorded pullback") {
  const auto site = std::source_location::current();
  for (const bool convolve : {false, true}) {
    const tg::FilterParams p{.border = convolve ? tg::Border::reflect() : tg::Border::fill(0.7), .output = tg::Output::same};
    CAPTURE(convolve);
    const tg::Shape image{6, 5}, kernel{3, 4};
    const A x = A::random_uniform(image, -1, 1, 131), x2 = A::random_uniform(image, -1, 1, 132);
    const A k = A::random_uniform(kernel, -1, 1, 133), k2 = A::random_uniform(kernel, -1, 1, 134);
    const A gy = A::random_uniform(image, -1, 1, 135), gy2 = A::random_uniform(image, -1, 1, 136);
    auto image_grad = [&](const T& g, const T& b) {
      return tg::ops::filter_image_grad_tracked<double>({g, site}, {b, site}, p, convolve, -1, image, site);
    };
    auto kernel_grad = [&](const T& a, const T& g) {
      return tg::ops::filter_kernel_grad_tracked<double>({a, site}, {g, site}, p, convolve, -1, kernel, site);
    };
    check_op(image_grad, std::tuple{gy, k}, std::tuple{gy2, k2});
    check_op(kernel_grad, std::tuple{x, gy}, std::tuple{x2, gy2});
    // Their values: the gradients of <gy, filter(x, k)>.
    auto inner = [&](const T& a, const T& b) {
      return tg::sum((convolve ? tg::convolve(a, b, p) : tg::correlate(a, b, p)) * tg::constant(gy));
    };
    const auto [gx, gk] = tg::gradient(inner, x, k);
    CHECK(max_abs_diff(tg::record(image_grad, gy, k).output(), gx) < 1e-12);
    CHECK(max_abs_diff(tg::record(kernel_grad, x, gy).output(), gk) < 1e-12);
    // Realistic shapes: a 64 x 80 image, a 5 x 5 kernel.
    const tg::Shape big_image{64, 80}, big_kernel{5, 5};
    check_dot_product([&](const T& g, const T& b) {
      return tg::ops::filter_image_grad_tracked<double>({g, site}, {b, site}, p, convolve, -1, big_image, site);
    }, A::random_uniform(big_image, -1, 1, 137), A::random_uniform(big_kernel, -1, 1, 138));
    check_dot_product([&](const T& a, const T& g) {
      return tg::ops::filter_kernel_grad_tracked<double>({a, site}, {g, site}, p, convolve, -1, big_kernel, site);
    }, A::random_uniform(big_image, -1, 1, 139), A::random_uniform(big_image, -1, 1, 140));
    CHECK_THROWS_WITH_AS(tg::record(kernel_grad, x, A::zeros({6, 4})),
                         doctest::Contains("gy has shape (6,4) expected the filter's output shape (6,5)"), tg::Error);
  }
  // A fill value passed as an input: second order in the image, the kernel and the fill, alone and mixed.
  const A img = A::random_uniform({4, 5}, -1, 1, 141), k = A::random_uniform({3, 2}, -1, 1, 142);
  const A fill({1}, {0.5});
  for (const bool convolve : {false, true}) {
    auto filter = [convolve](const T& a, const T& b, const T& f) {
      return convolve ? tg::convolve(a, b, f, {.output = tg::Output::full}) : tg::correlate(a, b, f, {.origin = {1, 0}});
    };
    check_second_order([&](const T& v) { return tg::sum(tg::pow(filter(v, tg::constant(k), tg::constant(fill)), 2.0)); }, img, 6);
    check_second_order([&](const T& v) { return tg::sum(tg::tanh(filter(tg::constant(img), v, tg::constant(fill)))); }, k, 7);
    check_second_order([&](const T& v) { return tg::sum(tg::tanh(filter(tg::constant(img), tg::constant(k), v * v))); }, A({1}, {0.7}), 8);
    // Image, kernel and fill from one array: every mixed term.
    check_second_order([&](const T& v) {
      const T kernel = tg::reshape(tg::slice(tg::reshape(v, {20}), 0, 0, 6), {3, 2});
      return tg::sum(tg::pow(filter(v, kernel, tg::reshape(tg::slice(tg::reshape(v, {20}), 0, 7, 8), {1})), 2.0));
    }, img, 9);
  }
}

// Note [Pullback origins]: the recorded reverse pass names the forward
// instruction each step differentiates, with the user's line as its site.
TEST_CASE("second order: the dump shows which forward instruction each recorded pullback step came from") {
  auto penalty = [](const T& x) {
    const T g = tg::gradient([](const T& u) { return tg::sum(tg::tanh(u)); }, x);  // the line of every pullback step
    return tg::sum(g * g);
  };
  const int line = __LINE__ - 3;
  auto tape = tg::record(penalty, A::random_uniform({3}, -1, 1, 151));
  const std::string text = tg::dump(tape.tape());
  CAPTURE(text);
  // %1 = tanh %0, %2 = sum %1; the pullback of %2 broadcasts the seed, that of %1 multiplies by 1 - tanh^2.
  const std::string site = fmt::format("test_second_order.cpp:{}", line);
  CHECK(text.find("%1:f64[3] = tanh %0") != std::string::npos);
  CHECK(text.find("broadcast_to[shape=(3)] %") != std::string::npos);
  std::size_t steps = 0;
  for (std::size_t i = 0; i < tape.tape().num_instructions(); ++i) {
    const auto& ins = tape.tape().instruction(i);
    if (ins.pullback_of == tg::Tape<double>::kNoSlot) continue;
    ++steps;
    CHECK((ins.pullback_of == 1 || ins.pullback_of == 2));
    CHECK(tg::site_string(ins.where) == site);
  }
  CHECK(steps == 5);  // reshape, broadcast_to (of the sum); mul, sub, mul (of tanh)
  CHECK(text.find("# pullback of %2, " + site) != std::string::npos);
  CHECK(text.find("# pullback of %1, " + site) != std::string::npos);
  CHECK(tg::dump_json(tape.tape()).find("\"pullback_of\": 1") != std::string::npos);
}

TEST_CASE("second order: softmax, log_softmax and logsumexp along any axis") {
  const A x = A::random_uniform({3, 4, 2}, -2, 2, 161);
  const A w = A::random_uniform({3, 4, 2}, -1, 1, 162);
  for (const std::int64_t axis : {0, 1, -1}) {
    CAPTURE(axis);
    check_second_order([&](const T& v) { return tg::sum(tg::softmax(v, axis) * tg::constant(w) * v); }, x, 1);
    check_second_order([&](const T& v) { return tg::sum(tg::pow(tg::log_softmax(v * v, axis), 2.0)); }, x, 2);
    for (const bool keepdims : {false, true})
      check_second_order([&](const T& v) { return tg::sum(tg::tanh(tg::logsumexp(v, axis, keepdims))); }, x, 3);
  }
  // The Hessian of logsumexp(x) over one row is diag(p) - p p^T, p = softmax(x).
  const A row({4}, {0.3, -1.0, 2.0, 0.5});
  const A H = tg::hessian([](const T& v) { return tg::logsumexp(v, 0); }, row);
  const A p = tg::softmax(row, 0);
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j)
      CHECK(H.data()[i * 4 + j] == doctest::Approx((i == j ? p.data()[i] : 0.0) - p.data()[i] * p.data()[j]).epsilon(1e-12));
}

// Note [Masks in recorded pullbacks]: the piecewise ops choose their branch by
// ops of the tape, so a replay on new inputs chooses again.
TEST_CASE("second order: the activations, pointwise losses and pow") {
  const A x = A::random_uniform({4, 5}, -5, 5, 171), t = A::random_uniform({4, 5}, -1, 1, 172);
  const A positive = A::random_uniform({4, 5}, 0.2, 2, 173), labels = A::random_uniform({4, 5}, 0, 1, 174);
  using Fn = std::function<T(const T&)>;
  const std::vector<std::pair<const char*, Fn>> activations = {
      {"abs", [](const T& v) { return tg::abs(v); }},
      {"softplus", [](const T& v) { return tg::softplus(v); }},
      {"gelu", [](const T& v) { return tg::gelu(v); }},
      {"gelu_tanh", [](const T& v) { return tg::gelu_tanh(v); }},
      {"erf", [](const T& v) { return tg::erf(v); }},
      {"silu", [](const T& v) { return tg::silu(v); }},
      {"hardswish", [](const T& v) { return tg::hardswish(v); }},
      {"elu", [](const T& v) { return tg::elu(v, 0.7); }},
      {"leaky_relu", [](const T& v) { return tg::leaky_relu(v, 0.1); }},
      {"clamp", [](const T& v) { return tg::clamp(v, -2.0, 1.5); }}};
  for (const auto& named : activations) {  // not a structured binding: clang's OpenMP cannot capture one
    const char* name = named.first;
    const Fn& act = named.second;
    CAPTURE(name);
    // Products with v itself, so that even the piecewise-linear ones have a nonzero Hessian.
    check_second_order([&](const T& v) { return tg::sum(act(v) * v * tg::constant(t)); }, x, 1);
    check_second_order([&](const T& v) { return tg::sum(tg::pow(act(v * 0.5), 2.0)); }, x, 2);
    // The recorded gradient's value equals the first-order one, kinks included (0, 1.5, -2, 3, -3 exactly).
    A kinks = x;
    for (std::int64_t i = 0; i < 5; ++i) kinks.data()[i] = std::array{0.0, 1.5, -2.0, 3.0, -3.0}[static_cast<std::size_t>(i)];
    auto inner = [&](const T& v) { return tg::sum(act(v) * tg::constant(t)); };
    const A first = tg::gradient(inner, kinks);
    const double recorded = std::get<0>(tg::value_and_gradient([&](const T& v) { return tg::sum(tg::gradient(inner, v) * tg::constant(t)); }, kinks));
    CHECK(recorded == doctest::Approx(tg::sum(first * t).item()).epsilon(1e-12));
  }
  auto both = [&](auto loss, const A& p, const A& target, std::uint64_t seed) {
    check_second_order([&](const T& v) { return loss(tg::tanh(v) * 2.0, tg::constant(target)); }, p, seed);
    check_second_order([&](const T& v) { return loss(tg::constant(p), tg::tanh(v)); }, target, seed + 1);
    check_second_order([&](const T& v) { return loss(v * v, tg::tanh(v)); }, target, seed + 2);
  };
  both([](const T& p, const T& q) { return tg::mse(p, q); }, x, t, 10);
  both([](const T& p, const T& q) { return tg::l1_loss(p, q) * tg::sum(p * p); }, x, t, 20);
  both([](const T& p, const T& q) { return tg::smooth_l1_loss(p, q, 0.5); }, x, t, 30);
  both([](const T& p, const T& q) { return tg::smooth_l1_loss(p, q, 0.0) * tg::sum(q * p); }, x, t, 40);
  check_second_order([&](const T& v) { return tg::bce_with_logits(v, tg::constant(labels)); }, x, 50);
  check_second_order([&](const T& v) { return tg::bce_with_logits(tg::constant(x), tg::sigmoid(v)); }, t, 51);
  // pow with both operands tracked, and its zeros: d/dy x^y at x = 0 is 0, not NaN.
  check_second_order([&](const T& v) { return tg::sum(tg::pow(v, tg::constant(t) + 2.0)); }, positive, 60);
  check_second_order([&](const T& v) { return tg::sum(tg::pow(tg::constant(positive), v * v)); }, t, 61);
  A with_zero = positive;
  with_zero.data()[3] = 0.0;
  const A hv = tg::hvp([&](const T& v) { return tg::sum(tg::pow(tg::constant(with_zero), v)); }, t + 2.0, t);
  for (std::int64_t i = 0; i < hv.size(); ++i) CHECK(std::isfinite(hv.data()[i]));
  CHECK(hv.data()[3] == 0.0);
}

TEST_CASE("second order: slice, concat, pad with the fill border, global mean-pool") {
  const A x = A::random_uniform({2, 3, 4, 5}, -1, 1, 181);
  // Each through a nonlinearity on both sides, so the Hessian mixes elements the op moved.
  check_second_order([](const T& v) { return tg::sum(tg::pow(tg::tanh(tg::slice(tg::tanh(v), 2, 1, 3)), 2.0)); }, x, 1);
  check_second_order([](const T& v) { return tg::sum(tg::pow(tg::slice(v * v, -1, -4, 5), 3.0)); }, x, 2);
  check_second_order([](const T& v) {
    return tg::sum(tg::tanh(tg::concat(std::vector<T>{tg::tanh(v), v * v, tg::slice(v, 1, 0, 1)}, 1)) * 0.5);
  }, x, 3);
  for (const tg::PadParams& p : {tg::PadParams{.widths = {1, 2}}, tg::PadParams{.lo = {0, 1, 0, 2}, .hi = {1, 0, 3, 0}, .border = tg::Border::fill(0.4)}}) {
    check_second_order([&](const T& v) { return tg::sum(tg::pow(tg::tanh(tg::pad(tg::tanh(v), p)) + 0.3, 3.0)); }, x, 4);
  }
  // The fill value as an input: its gradient is the sum of the frame's adjoint.
  check_second_order([&](const T& v) {
    return tg::sum(tg::pow(tg::pad(tg::constant(x), tg::reshape(tg::sum(v * v), {1}), {.widths = {1}}), 3.0));
  }, A::random_uniform({3}, -1, 1, 185), 5);
  check_second_order([](const T& v) { return tg::sum(tg::pow(tg::global_meanpool(v * v), 2.0)); }, x, 6);
  // Every other border, and slices with steps, through linear_adjoint (Note [Linear adjoints]).
  for (const tg::Border b : {tg::Border::replicate(), tg::Border::reflect(), tg::Border::symmetric(), tg::Border::circular()})
    check_second_order([&](const T& v) {
      return tg::sum(tg::pow(tg::tanh(tg::pad(tg::tanh(v), {.lo = {2, 1}, .hi = {1, 3}, .border = b})) + 0.3, 3.0));
    }, x, 7);
  check_second_order([](const T& v) { return tg::sum(tg::pow(tg::tanh(tg::slice(tg::tanh(v), 3, 0, 5, 2)), 2.0)); }, x, 8);
  check_second_order([](const T& v) { return tg::sum(tg::pow(tg::slice(v * v, 2, 1, 4, 3), 3.0)); }, x, 9);
}

TEST_CASE("second order: batch_norm, training and evaluation, in x, gamma and beta") {
  const A x = A::random_uniform({3, 2, 3, 2}, -1, 2, 191);
  const A gamma = A::random_uniform({2}, 0.5, 1.5, 192), beta = A::random_uniform({2}, -0.5, 0.5, 193);
  const A rm = A::random_uniform({2}, -0.2, 0.2, 194), rv = A::random_uniform({2}, 0.5, 1.5, 195);
  for (const bool training : {true, false}) {
    CAPTURE(training);
    auto bn = [&](const T& v, const T& g, const T& b) {
      const tg::BatchNormState<T> s{{tg::constant(rm)}, {tg::constant(rv)}};
      return tg::batch_norm(v, g, b, s, {.training = training, .eps = 1e-3});
    };
    const A w = A::random_uniform(x.shape(), -1, 1, 196);
    check_second_order([&](const T& v) { return tg::sum(tg::tanh(bn(v, tg::constant(gamma), tg::constant(beta))) * tg::constant(w)); }, x, 1);
    check_second_order([&](const T& v) { return tg::sum(tg::pow(bn(tg::constant(x) * 0.5, v, tg::constant(beta)), 3.0)); }, gamma, 2);
    check_second_order([&](const T& v) { return tg::sum(tg::pow(bn(tg::constant(x), tg::constant(gamma), v * v), 3.0)); }, beta, 3);
    // gamma and x from one array: the mixed terms.
    check_second_order([&](const T& v) {
      return tg::sum(tg::tanh(bn(v, tg::slice(tg::reshape(v, {-1}), 0, 0, 2) + 1.0, tg::constant(beta))));
    }, x, 4);
  }
}

// Issue 21, item 4: a gradient-penalty training step on the small residual
// network (batch norm in training mode, its running statistics updated once a
// step): the penalty's gradient against central differences along a direction
// of every leaf. In double: the example's float network, cast.
namespace {
cnn::ConvBn<A> in_double(const cnn::ConvBn<tg::Array<float>>& c) {
  return {c.w.cast<double>(), c.gamma.cast<double>(), c.beta.cast<double>(),
          {{c.bn.mean.value.cast<double>()}, {c.bn.var.value.cast<double>()}}};
}
cnn::Resnet<A> small_resnet() {
  const cnn::ResnetParams f = cnn::resnet_init(2, 1);
  cnn::Resnet<A> net{in_double(f.stem), {}, f.fc_w.cast<double>(), f.fc_b.cast<double>()};
  for (const auto& b : f.blocks) {
    cnn::Block<A> block{in_double(b.a), in_double(b.b), {}};
    for (const auto& s : b.shortcut) block.shortcut.push_back(in_double(s));
    net.blocks.push_back(block);
  }
  return net;
}
}  // namespace

TEST_CASE("second order: a gradient-penalty step on the small residual network") {
  cnn::Resnet<A> net = small_resnet();
  const A images = A::random_uniform({4, 1, 8, 8}, 0, 1, 2), labels({4}, {1, 0, 3, 9});
  auto penalty = [](const auto& n, const auto& x, const auto& y) {
    // One evaluation of the loss for its value and its input gradient: batch norm's statistics move once.
    const auto [loss, gx] = tg::value_and_gradient([&](const auto& image) { return cnn::resnet_loss(n, image, y); }, x);
    return loss + tg::sum(gx * gx) * 10.0;
  };
  const A mean_before = net.stem.bn.mean.value;
  const auto value_and_g = tg::value_and_gradient(penalty, net, tg::data(images), tg::data(labels));
  const double value = std::get<0>(value_and_g);
  const auto& g = std::get<1>(value_and_g);
  // Running statistics: one update of momentum 0.1.
  const A batch_mean = tg::mean(tg::conv(images, net.stem.w, {.padding = {1}}), tg::Axes{0, 2, 3});
  CHECK(max_abs_diff(net.stem.bn.mean.value, mean_before * 0.9 + batch_mean * 0.1) < 1e-12);
  // Central differences of the penalty along a random direction of every leaf.
  cnn::Resnet<A> plus = net, minus = net, direction = net;
  std::uint64_t seed = 50;
  tg::tree::for_each_leaf(direction, [&](A& leaf) { leaf = A::random_uniform(leaf.shape(), -1, 1, seed++); });
  std::vector<const A*> gl, dl;
  tg::tree::for_each_leaf(g, [&](const A& leaf) { gl.push_back(&leaf); });
  tg::tree::for_each_leaf(direction, [&](const A& leaf) { dl.push_back(&leaf); });
  constexpr double h = 1e-5;
  std::size_t k = 0;
  tg::tree::for_each_leaf(plus, [&](A& leaf) { leaf = leaf + *dl[k++] * h; });
  k = 0;
  tg::tree::for_each_leaf(minus, [&](A& leaf) { leaf = leaf - *dl[k++] * h; });
  double analytic = 0;
  for (std::size_t i = 0; i < gl.size(); ++i) analytic += tg::sum(*gl[i] * *dl[i]).item();
  const double numeric = (std::get<0>(tg::value_and_gradient(penalty, plus, tg::data(images), tg::data(labels))) -
                          std::get<0>(tg::value_and_gradient(penalty, minus, tg::data(images), tg::data(labels)))) /
                         (2 * h);
  CAPTURE(value);
  CHECK(numeric == doctest::Approx(analytic).epsilon(1e-6));
}

TEST_CASE("second order: layer_norm and group_norm, with and without gamma and beta") {
  const A x = A::random_uniform({2, 4, 3, 2}, -1, 2, 201), w = A::random_uniform({2, 4, 3, 2}, -1, 1, 202);
  const A lg = A::random_uniform({3, 2}, 0.5, 1.5, 203), lb = A::random_uniform({3, 2}, -0.5, 0.5, 204);
  const A gg = A::random_uniform({4}, 0.5, 1.5, 205), gb = A::random_uniform({4}, -0.5, 0.5, 206);
  const tg::LayerNormParams layer{.dims = 2, .eps = 1e-3};
  const tg::GroupNormParams groups{.groups = 2, .eps = 1e-3};
  auto weighted = [&](const T& y) { return tg::sum(tg::tanh(y) * tg::constant(w)); };
  check_second_order([&](const T& v) { return weighted(tg::layer_norm(v, tg::constant(lg), tg::constant(lb), layer)); }, x, 1);
  check_second_order([&](const T& v) { return weighted(tg::layer_norm(v * v, layer)); }, x, 2);
  check_second_order([&](const T& v) { return tg::sum(tg::pow(tg::layer_norm(tg::constant(x), v, v * v, layer), 3.0)); }, lg, 3);
  check_second_order([&](const T& v) { return weighted(tg::group_norm(v, tg::constant(gg), tg::constant(gb), groups)); }, x, 4);
  check_second_order([&](const T& v) { return weighted(tg::group_norm(v, tg::constant(A::ones({4})), tg::constant(A::zeros({4})), {.groups = 4, .eps = 1e-3})); }, x, 5);  // instance norm
  check_second_order([&](const T& v) { return tg::sum(tg::pow(tg::group_norm(tg::constant(x), v, v * 0.5, groups), 3.0)); }, gg, 6);
}

TEST_CASE("second order: mean-pools, lp-pools, upsample and adaptive mean-pools, through linear_adjoint") {
  const A x = A::random_uniform({2, 3, 6, 5}, -1, 1, 191);
  auto through = [](auto op) { return [op](const T& v) { return tg::sum(tg::pow(tg::tanh(op(tg::tanh(v))) + 0.2, 3.0)); }; };
  check_second_order(through([](const T& v) { return tg::meanpool(v, {.window = {2}}); }), x, 1);
  check_second_order(through([](const T& v) {
    return tg::meanpool(v, {.window = {3}, .stride = {2}, .padding = {1}, .ceil_mode = true, .count_include_pad = false});
  }), x, 2);
  check_second_order(through([](const T& v) { return tg::upsample(v, {.scale = {2}}); }), x, 3);
  check_second_order(through([](const T& v) { return tg::upsample(v, {.size = {7, 9}, .mode = tg::UpsampleMode::linear}); }), x, 4);
  check_second_order(through([](const T& v) {
    return tg::upsample(v, {.scale = {1.5}, .mode = tg::UpsampleMode::linear, .align_corners = true});
  }), x, 5);
  check_second_order(through([](const T& v) { return tg::adaptive_meanpool(v, {.output = {4, 3}}); }), x, 6);
  // lp-pools: their recorded pullback spreads through a mean-pool's adjoint.
  check_second_order(through([](const T& v) { return tg::lppool(v, {.window = {2}}); }), x, 7);
  check_second_order(through([](const T& v) { return tg::lppool(v, {.window = {3}, .stride = {2}, .padding = {1}, .ceil_mode = true, .p = 3}); }), x, 8);
  check_second_order([](const T& v) { return tg::sum(tg::lppool(v * v + 0.5, {.window = {2, 3}, .stride = {1}, .dilation = {2, 1}, .p = 1.5})); }, x, 9);
  // Third order: the gradient of a gradient penalty through a mean-pool.
  const A hv = tg::hvp([](const T& v) {
    const T g = tg::gradient([](const T& u) { return tg::sum(tg::pow(tg::meanpool(u * u, {.window = {2}}), 2.0)); }, v);
    return tg::sum(g * g);
  }, x, A::random_uniform({2, 3, 6, 5}, -1, 1, 192));
  const double eps = 1e-5;
  auto grad_at = [&](const A& at) {
    return tg::gradient([](const T& v) {
      const T g = tg::gradient([](const T& u) { return tg::sum(tg::pow(tg::meanpool(u * u, {.window = {2}}), 2.0)); }, v);
      return tg::sum(g * g);
    }, at);
  };
  const A dir = A::random_uniform({2, 3, 6, 5}, -1, 1, 192);
  const A fd = (grad_at(x + dir * eps) - grad_at(x - dir * eps)) * (1 / (2 * eps));
  CHECK(max_abs_diff(hv, fd) < 1e-6 * (1 + max_abs(fd)));
}

TEST_CASE("second order: linear_transpose, a linear op's adjoint as one instruction") {
  const tg::Shape xs{2, 3, 6, 5};
  const std::vector<std::function<T(const T&)>> linear_ops{
      [](const T& v) { return tg::meanpool(v, {.window = {3}, .stride = {2}, .padding = {1}, .count_include_pad = false}); },
      [](const T& v) { return tg::upsample(v, {.size = {8, 7}, .mode = tg::UpsampleMode::linear}); },
      [](const T& v) { return tg::adaptive_meanpool(v, {.output = {4, 4}}); },
      [](const T& v) { return tg::pad(v, {.lo = {1, 2}, .hi = {3, 0}, .border = tg::Border::symmetric()}); },
      [](const T& v) { return tg::slice(v, 2, 1, 6, 2); },
  };
  for (std::size_t k = 0; k < linear_ops.size(); ++k) {
    CAPTURE(k);
    const auto& op = linear_ops[k];
    const A x = A::random_uniform(xs, -1, 1, 200 + k);
    const A y = tg::record(op, x).output();
    const A g = A::random_uniform(y.shape(), -1, 1, 210 + k), g2 = A::random_uniform(y.shape(), -1, 1, 220 + k);
    auto adjoint = [&](const T& gt) { return tg::linear_transpose(op, xs, gt); };
    check_op(adjoint, std::tuple{g}, std::tuple{g2});
    // <A^T g, x> = <g, A x>, and A^T g is A's own pullback of g.
    const A at_g = tg::record(adjoint, g).output();
    CHECK(tg::sum(at_g * x).item() == doctest::Approx(tg::sum(g * y).item()).epsilon(1e-12));
    CHECK(max_abs_diff(at_g, tg::gradient([&](const T& v) { return tg::sum(op(v) * tg::constant(g)); }, x)) < 1e-14);
  }
  // Hand-worked: a 2x2 mean-pool spreads a quarter of each adjoint over its window;
  // a step-2 slice's adjoint puts it back between zeros.
  const A spread = tg::record([](const T& g) { return tg::linear_transpose([](const T& v) { return tg::meanpool(v, {.window = {2}}); }, {1, 1, 2, 4}, g); },
                              A({1, 1, 1, 2}, {4, 8})).output();
  CHECK(max_abs_diff(spread, A({1, 1, 2, 4}, {1, 1, 2, 2, 1, 1, 2, 2})) == 0);
  const A back = tg::record([](const T& g) { return tg::linear_transpose([](const T& v) { return tg::slice(v, 0, 0, 5, 2); }, {5}, g); },
                            A({3}, {1, 2, 3})).output();
  CHECK(max_abs_diff(back, A({5}, {1, 0, 2, 0, 3})) == 0);
  const A gb = A::random_uniform({4, 8, 28, 28}, -1, 1, 231);
  check_dot_product([](const T& g) { return tg::linear_transpose([](const T& v) { return tg::upsample(v, {.scale = {2}, .mode = tg::UpsampleMode::linear}); }, {4, 8, 14, 14}, g); }, gb);
  check_dot_product([](const T& g) { return tg::linear_transpose([](const T& v) { return tg::pad(v, {.widths = {7, 7}, .border = tg::Border::circular()}); }, {4, 8, 14, 14}, g); }, gb);
  // Errors: not one linear op; an adjoint of the wrong shape.
  const A g = A::ones({2, 3, 3, 3});
  CHECK_THROWS_WITH_AS(tg::record([](const T& gt) { return tg::linear_transpose([](const T& v) { return tg::relu(v); }, {2, 3, 3, 3}, gt); }, g),
                       doctest::Contains("linear_transpose: f recorded op 'relu' expected one linear op of x"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::record([](const T& gt) { return tg::linear_transpose([](const T& v) { return tg::upsample(v * 2.0, {.scale = {2}}); }, {2, 3, 3, 3}, gt); }, g),
                       doctest::Contains("f recorded 2 instructions expected one linear op"), tg::Error);
  // A pad filling with a nonzero value is affine, not linear.
  CHECK_THROWS_WITH_AS(tg::record([](const T& gt) { return tg::linear_transpose([](const T& v) { return tg::pad(v, {.widths = {1}, .border = tg::Border::fill(0.5)}); }, {2, 3, 3, 3}, gt); },
                                  A::ones({2, 3, 3, 5})),
                       doctest::Contains("linear_transpose: f recorded op 'pad' expected one linear op of x"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::record([](const T& gt) { return tg::linear_transpose([](const T& v) { return tg::upsample(v, {.scale = {2}}); }, {2, 3, 3, 3}, gt); }, g),
                       doctest::Contains("linear_adjoint: adjoint has shape (2,3,3,3) expected (2,3,6,6) (upsample's output for input (2,3,3,3))"),
                       tg::Error);
}

TEST_CASE("second order: max and min reductions, ties split as the first-order kernel splits them") {
  const A x = random_away_from({3, 4, 5}, 241);
  check_second_order([](const T& v) { return tg::sum(tg::pow(tg::max(tg::tanh(v), {2}), 3.0)); }, x, 1);
  check_second_order([](const T& v) { return tg::sum(tg::pow(tg::min(v * v, {0, 2}, true), 2.0) * 0.5); }, x, 2);
  check_second_order([](const T& v) { return tg::pow(tg::max(v), 2.0) + tg::sum(tg::exp(tg::min(v, {1}))); }, x, 3);
  // Hand-worked: f = max(x)^2 at a tie between two of three elements: the gradient
  // gives each half of 2 max; H = [[1/2, 1/2, 0], [1/2, 1/2, 0], [0, 0, 0]] * (2 * 1/2).
  const A tied({3}, {2, 2, -1});
  const A H = tg::hessian([](const T& v) { return tg::pow(tg::max(v), 2.0); }, tied);
  const A expected({3, 3}, {0.5, 0.5, 0, 0.5, 0.5, 0, 0, 0, 0});
  CHECK(max_abs_diff(H, expected) < 1e-12);
  const A gradient = tg::gradient([](const T& v) { return tg::sum(tg::gradient([](const T& u) { return tg::pow(tg::max(u), 2.0); }, v)); }, tied);
  CHECK(max_abs_diff(gradient, A({3}, {1, 1, 0})) < 1e-12);
}

TEST_CASE("second order: adaptive max-pools through adaptive_maxpool_route and adaptive_maxpool_gather") {
  const A x = A::random_uniform({2, 3, 7, 6}, -1, 1, 251);
  check_second_order([](const T& v) { return tg::sum(tg::pow(tg::adaptive_maxpool(tg::tanh(v), {.output = {3, 4}}), 3.0)); }, x, 1);
  check_second_order([](const T& v) { return tg::sum(tg::tanh(tg::adaptive_maxpool(v * v, {.output = {2}})) * 0.5); }, x, 2);
  // Hand-worked: sum(adaptive_maxpool(x, 1)^2) has H = 2 at the maximum and 0 elsewhere.
  const A flat = A::random_uniform({1, 1, 2, 3}, -1, 1, 252);
  const A H = tg::hessian([](const T& v) { return tg::sum(tg::pow(tg::adaptive_maxpool(v, {.output = {1}}), 2.0)); }, flat);
  std::int64_t top = 0;
  for (std::int64_t i = 1; i < 6; ++i)
    if (flat.data()[i] > flat.data()[top]) top = i;
  for (std::int64_t i = 0; i < 6; ++i)
    for (std::int64_t k = 0; k < 6; ++k) CHECK(H.data()[i * 6 + k] == (i == top && k == top ? 2.0 : 0.0));
  // The pair: route is the pool's input gradient, gather its adjoint, each the other's pullback.
  const tg::AdaptivePoolParams p{.output = {3, 4}};
  const A x2 = A::random_uniform({2, 3, 7, 6}, -1, 1, 253);
  const A gy = A::random_uniform({2, 3, 3, 4}, -1, 1, 254), gy2 = A::random_uniform({2, 3, 3, 4}, -1, 1, 255);
  const A v = A::random_uniform({2, 3, 7, 6}, -1, 1, 256), v2 = A::random_uniform({2, 3, 7, 6}, -1, 1, 257);
  auto route = [&](const T& a, const T& g) { return tg::ops::adaptive_maxpool_route_tracked(a, g, p, false); };
  auto gather = [&](const T& a, const T& w) { return tg::ops::adaptive_maxpool_route_tracked(a, w, p, true); };
  check_op(route, std::tuple{x, gy}, std::tuple{x2, gy2});
  check_op(gather, std::tuple{x, v}, std::tuple{x2, v2});
  const A routed = tg::record(route, x, gy).output();
  CHECK(max_abs_diff(routed, tg::gradient([&](const T& a) { return tg::sum(tg::adaptive_maxpool(a, p) * tg::constant(gy)); }, x)) == 0);
  CHECK(tg::sum(routed * v).item() == doctest::Approx(tg::sum(gy * tg::record(gather, x, v).output()).item()).epsilon(1e-12));
  const A probe({1, 1, 2, 2}, {5, 6, 7, 8});
  CHECK(tg::record([](const T& a, const T& w) { return tg::ops::adaptive_maxpool_route_tracked(a, w, {.output = {1}}, true); },
                   A::zeros({1, 1, 2, 2}), probe).output().item() == 5);  // ties: the first maximum
  const A xb = A::random_uniform({4, 8, 28, 28}, -1, 1, 258), gyb = A::random_uniform({4, 8, 5, 5}, -1, 1, 259);
  check_dot_product([](const T& a, const T& g) { return tg::ops::adaptive_maxpool_route_tracked(a, g, {.output = {5}}, false); }, xb, gyb);
  check_dot_product([](const T& a, const T& w) { return tg::ops::adaptive_maxpool_route_tracked(a, w, {.output = {5}}, true); }, xb,
                    A::random_uniform({4, 8, 28, 28}, -1, 1, 260));
  CHECK_THROWS_WITH_AS(tg::record(route, x, v), doctest::Contains("adaptive_maxpool_route: values have shape (2,3,7,6) expected (2,3,3,4)"),
                       tg::Error);
}

TEST_CASE("second order: dropout, its recorded pullback the mask its forward drew") {
  const A x = A::random_uniform({4, 6, 5}, -1, 1, 261);
  const A key_value = tg::dropout_key<double>(7).value;
  // One key per recording (a constant copy): the same masks at every point of the differences.
  check_second_order([key_value](const T& v) {
    const tg::State<T> k{tg::constant(key_value)};
    return tg::sum(tg::pow(tg::tanh(tg::dropout(tg::tanh(v), 0.4, k)), 2.0));
  }, x, 1);
  // Two dropouts on one key: each recorded pullback finds the step its own forward used.
  check_second_order([key_value](const T& v) {
    const tg::State<T> k{tg::constant(key_value)};
    const T a = tg::dropout(v * v, 0.3, k);
    const T b = tg::dropout2d(tg::tanh(a), 0.5, k);
    return tg::sum(b * b * v);
  }, x, 2);
  // A penalty through dropout, replayed and compiled: every replay draws fresh masks and
  // its recorded pullback uses the forward's. g = 3 d(x)^2 * m / (1 - p) = 24 x^2 m at
  // p = 1/2 (m the 0/1 mask), so the penalty sum(g^2) is 576 sum(x^4 m), its gradient 2304 x^3 m.
  auto penalty = [](const T& v, const tg::State<T>& k) {
    const T g = tg::gradient([&](const T& u) { return tg::sum(tg::pow(tg::dropout(u, 0.5, k), 3.0)); }, v);
    return tg::sum(g * g);
  };
  auto key = tg::dropout_key<double>(11), masks = tg::dropout_key<double>(11);
  auto next_mask = [&] { return tg::dropout(A::ones(x.shape()), 0.5, masks) * 0.5; };
  auto tape = tg::record(penalty, x, key);
  const A x4 = x * x * x * x;
  A m = next_mask();
  CHECK(tape.output().item() == doctest::Approx(576 * tg::sum(x4 * m).item()).epsilon(1e-12));
  CHECK(max_abs_diff(std::get<0>(tape.gradient()), x * x * x * m * 2304.0) < 1e-10);
  for (int replay = 0; replay < 2; ++replay) {
    m = next_mask();
    CHECK(tape.forward(x, key).item() == doctest::Approx(576 * tg::sum(x4 * m).item()).epsilon(1e-12));
  }
  auto compiled = tg::compile(tape);
  m = next_mask();
  CHECK(compiled.forward(x, key).item() == doctest::Approx(576 * tg::sum(x4 * m).item()).epsilon(1e-12));
  CHECK(tg::dump(tape).find("dropout_mask") != std::string::npos);
  // dropout_mask by itself: the mask dropout drew `back` steps before the key's value.
  const A stepped({2}, {7, 3});  // (seed 7, step 3)
  auto mask_of = [&](std::int64_t back) {
    return [&stepped, back](const T& v) { return tg::ops::dropout_mask_tracked(v, 0.4, tg::constant(stepped), back); };
  };
  tg::State<A> at_step{A({2}, {7, 1})};
  const A drawn = tg::dropout(x, 0.4, at_step);  // step 1 = 3 - 2
  CHECK(max_abs_diff(tg::record(mask_of(2), x).output(), drawn) == 0);
  const A x2 = A::random_uniform({4, 6, 5}, -1, 1, 262);
  check_op(mask_of(2), std::tuple{x}, std::tuple{x2});
  check_dot_product(mask_of(0), A::random_uniform({8, 16, 12, 12}, -1, 1, 263));
  CHECK_THROWS_WITH_AS(tg::record(mask_of(-1), x), doctest::Contains("dropout_mask: -1 steps back expected a count >= 0"), tg::Error);
}
