// Gradient checking for users' own functions and ops, and for tapegrad's tests.
//
// gradcheck: every input element perturbed by central differences (double
// precision) against the reverse pass. For small shapes.
// dot_product_test: <J u, v> = <u, J^T v> along random directions u, v, with
// J u by one central difference along u: its cost does not grow with size, so
// it checks pullbacks on realistic shapes.
// Both evaluate f by recording it afresh, never by the replay they may be testing.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "tapegrad/autodiff/gradient.hpp"

namespace tg {

struct GradcheckOptions {
  double step = 1e-6;   // relative finite-difference step: h = step * max(1, |x|)
  double atol = 1e-6;   // an element passes when |analytic - numeric| <= atol + rtol * |numeric|
  double rtol = 1e-5;
  std::uint64_t seed = 7;  // for the random projection of array-valued outputs
};

struct InputCheck {
  double max_abs_error = 0;
  double max_rel_error = 0;  // |a - n| / max(|a|, |n|), 0 where both are 0
  std::int64_t worst_index = -1;
  bool passed = true;
};

struct GradcheckReport {
  std::vector<InputCheck> inputs;
  bool passed() const {
    for (const auto& i : inputs)
      if (!i.passed) return false;
    return true;
  }
  std::string summary() const {
    std::string s;
    for (std::size_t k = 0; k < inputs.size(); ++k)
      s += fmt::format("input {}: max abs error {:.3g}, max rel error {:.3g} (worst element {}){}\n", k,
                       inputs[k].max_abs_error, inputs[k].max_rel_error, inputs[k].worst_index,
                       inputs[k].passed ? "" : "  FAILED");
    return s;
  }
};

namespace detail {
inline double dot(const Array<double>& a, const Array<double>& b) {
  double s = 0;
  for (std::int64_t i = 0; i < a.size(); ++i) s += a.data()[i] * b.data()[i];
  return s;
}
// <v, f(inputs)> evaluated by a fresh recording.
template <class F, std::size_t N>
double projected_value(F& f, const std::array<Array<double>, N>& inputs, const Array<double>& v) {
  auto tape = std::apply([&](const auto&... x) { return detail::record_with<double>(f, Capture::copy, x...); }, inputs);
  return dot(tape.output(), v);
}
}  // namespace detail

template <class F, class... Rest>
GradcheckReport gradcheck(const GradcheckOptions& opt, F&& f, const Array<double>& x, const Rest&... xs) {
  constexpr std::size_t N = 1 + sizeof...(Rest);
  std::array<Array<double>, N> inputs{x, xs...};
  auto tape = detail::record_with<double>(f, Capture::copy, x, xs...);
  const Array<double>& out = tape.output();
  const Array<double> v = out.size() == 1 ? Array<double>::ones(out.shape())
                                          : Array<double>::random_normal(out.shape(), 0.0, 1.0, opt.seed);
  tape.tape().reverse(v);
  GradcheckReport report;
  for (std::size_t k = 0; k < N; ++k) {
    const Array<double> analytic = tape.tape().adjoint(tape.tape().inputs()[k]);
    InputCheck check;
    double worst = -1;
    for (std::int64_t j = 0; j < inputs[k].size(); ++j) {
      double& xj = inputs[k].data()[j];
      const double x0 = xj, h = opt.step * std::max(1.0, std::abs(x0));
      xj = x0 + h;
      const double up = detail::projected_value(f, inputs, v);
      xj = x0 - h;
      const double down = detail::projected_value(f, inputs, v);
      xj = x0;
      const double numeric = (up - down) / (2 * h), a = analytic.data()[j];
      const double err = std::abs(a - numeric), scale = std::max(std::abs(a), std::abs(numeric));
      const double rel = scale > 0 ? err / scale : 0.0;
      check.max_abs_error = std::max(check.max_abs_error, err);
      check.max_rel_error = std::max(check.max_rel_error, rel);
      const double excess = err - (opt.atol + opt.rtol * std::abs(numeric));
      if (excess > worst) {
        worst = excess;
        check.worst_index = j;
      }
      if (!(excess <= 0)) check.passed = false;  // also catches NaN
    }
    report.inputs.push_back(check);
  }
  return report;
}

template <class F, class... Rest>
GradcheckReport gradcheck(F&& f, const Array<double>& x, const Rest&... xs) {
  return gradcheck(GradcheckOptions{}, std::forward<F>(f), x, xs...);
}

struct DotProductResult {
  double jvp_dot_v = 0;  // <J u, v> by a central difference along u
  double u_dot_vjp = 0;  // <u, J^T v> by the reverse pass
  double rel_error = 0;
};

template <class F, class... Rest>
DotProductResult dot_product_test(std::uint64_t seed, F&& f, const Array<double>& x, const Rest&... xs) {
  constexpr std::size_t N = 1 + sizeof...(Rest);
  std::array<Array<double>, N> inputs{x, xs...};
  auto tape = detail::record_with<double>(f, Capture::copy, x, xs...);
  const Array<double> v = Array<double>::random_normal(tape.output().shape(), 0.0, 1.0, seed);
  tape.tape().reverse(v);
  DotProductResult r;
  std::array<Array<double>, N> plus = inputs, minus = inputs;
  double scale = 1;
  for (const auto& in : inputs)
    for (double e : in) scale = std::max(scale, std::abs(e));
  const double h = 1e-6 * scale;
  for (std::size_t k = 0; k < N; ++k) {
    const Array<double> u = Array<double>::random_normal(inputs[k].shape(), 0.0, 1.0, seed + 1 + k);
    r.u_dot_vjp += detail::dot(u, tape.tape().adjoint(tape.tape().inputs()[k]));
    for (std::int64_t j = 0; j < u.size(); ++j) {
      plus[k].data()[j] += h * u.data()[j];
      minus[k].data()[j] -= h * u.data()[j];
    }
  }
  r.jvp_dot_v = (detail::projected_value(f, plus, v) - detail::projected_value(f, minus, v)) / (2 * h);
  const double denom = std::max({std::abs(r.jvp_dot_v), std::abs(r.u_dot_vjp), 1e-12});
  r.rel_error = std::abs(r.jvp_dot_v - r.u_dot_vjp) / denom;
  return r;
}

}  // namespace tg
