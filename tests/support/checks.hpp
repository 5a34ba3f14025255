// The one shared gradient-check helper for every test file (STYLE.md: tolerances
// and kink policy in one place).
//
// check_op: the ReverseDiff triple for an op applied once:
//   1. recording adds exactly one instruction;
//   2. replaying the tape on new inputs gives the value a fresh recording gives;
//   3. the reverse pass equals central finite differences (double precision:
//      check_gradient, also for composites).
// check_dot_product: <J u, v> = <u, J^T v> on realistic shapes.
// Kink policy: tests draw inputs with random_away_from(…) so no element sits
// within 0.05 of a kink (relu, abs, max ties); FD steps are 1e-6.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <tuple>

#include <tapegrad/tapegrad.hpp>

#include "support/coverage.hpp"

namespace tgtest {

using A = tg::Array<double>;

inline constexpr double kAtol = 1e-6;
inline constexpr double kRtol = 1e-5;

// Uniform in [low, high], each element nudged to stay >= margin away from `kink`.
inline A random_away_from(tg::Shape shape, std::uint64_t seed, double low = -2, double high = 2, double kink = 0,
                          double margin = 0.05) {
  A a = A::random_uniform(std::move(shape), low, high, seed);
  for (auto& v : a)
    if (std::abs(v - kink) < margin) v = kink + (v < kink ? -margin : margin);
  return a;
}

inline double max_abs_diff(const A& a, const A& b) {
  REQUIRE(a.shape() == b.shape());
  double m = 0;
  for (std::int64_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a.data()[i] - b.data()[i]));
  return m;
}

inline double max_abs(const A& a) {
  double m = 0;
  for (std::int64_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a.data()[i]));
  return m;
}

// The reverse pass of f at the inputs against central finite differences; true when it passed.
template <class F, class... In>
bool check_gradient(F f, const In&... inputs) {
  tg::GradcheckOptions opt;
  opt.atol = kAtol;
  opt.rtol = kRtol;
  const auto report = tg::gradcheck(opt, f, inputs...);
  CHECK_MESSAGE(report.passed(), report.summary());
  return report.passed();
}

template <class F, class... In>
void check_op(F f, const std::tuple<In...>& inputs, const std::tuple<In...>& new_inputs) {
  auto tape = std::apply([&](const auto&... x) { return tg::record(f, x...); }, inputs);
  const bool one_instruction = tape.tape().num_instructions() == 1;
  CHECK_MESSAGE(one_instruction, tg::dump(tape));

  const A replayed = std::apply([&](const auto&... x) { return tape.forward(x...); }, new_inputs);
  const A fresh = std::apply([&](const auto&... x) { return tg::record(f, x...).output(); }, new_inputs);
  const bool replays = max_abs_diff(replayed, fresh) <= 1e-12;
  CHECK(replays);

  const bool gradient = std::apply([&](const auto&... x) { return check_gradient(f, x...); }, inputs);
  if (one_instruction && replays && gradient) covered(Check::op_triple, tape.tape());
}

template <class F, class... In>
void check_dot_product(F f, const In&... inputs) {
  const auto r = tg::dot_product_test(11, f, inputs...);
  CHECK_MESSAGE(r.rel_error < 1e-6, "<Ju,v>=" << r.jvp_dot_v << " <u,J^T v>=" << r.u_dot_vjp);
  // Recorded once more to see its ops, nothing replayed: constants may be copied.
  if (r.rel_error < 1e-6) covered(Check::dot_product, tg::detail::record_with<double>(f, tg::Capture::copy, inputs...).tape());
}

// Second order (Note [Recorded pullbacks]): for a one-element f of one array,
// tg::hvp against central differences of the gradient along v, and the
// symmetry of the Hessian along random directions, <u, H v> = <H u, v>.
template <class F>
void check_second_order(F f, const A& x, std::uint64_t seed) {
  const A u = A::random_uniform(x.shape(), -1, 1, seed), v = A::random_uniform(x.shape(), -1, 1, seed + 1);
  const A hv = tg::hvp(f, x, v), hu = tg::hvp(f, x, u);
  constexpr double h = 1e-5;
  const A numeric = (tg::gradient(f, x + v * h) - tg::gradient(f, x - v * h)) / (2 * h);
  CHECK_MESSAGE(max_abs_diff(hv, numeric) <= 1e-6 + 1e-5 * max_abs(numeric),
                "hvp " << max_abs_diff(hv, numeric) << " from central differences of the gradient (scale " << max_abs(numeric) << ")");
  const double u_hv = tg::sum(u * hv).item(), hu_v = tg::sum(hu * v).item();
  CHECK_MESSAGE(std::abs(u_hv - hu_v) <= 1e-10 * std::max(1.0, std::abs(u_hv)), "<u,Hv>=" << u_hv << " <Hu,v>=" << hu_v);
}

}  // namespace tgtest
