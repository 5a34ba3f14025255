// ============================================================================
// Unary math. Each row: y = f(x), then dx = f'(x) * dy (from x or from y,
// whichever is cheaper). Kinks: Note [Kinks] in unary.hpp.
// ============================================================================
#include "tapegrad/ops/unary.hpp"

#include "builtin_ops.hpp"
#include "op_table.hpp"
#include "recorded_pullbacks.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

#include <fmt/format.h>

#include "tapegrad/kernels/parallel.hpp"
#include "tapegrad/kernels/vector_math.hpp"
#include "tapegrad/ops/elementwise_rows.hpp"

namespace tg::ops {
namespace {

template <class T>
T stable_sigmoid(T x) {
  if (x >= T(0)) return T(1) / (T(1) + std::exp(-x));
  const T e = std::exp(x);
  return e / (T(1) + e);
}

template <class T, class Fwd, class Dfwd>
OpInfo<T> unary_plain(const char* name, Fwd fwd, Dfwd dfwd) {
  return unary_row<T, NoParams>(
      name, kNoFlags, [fwd](T x, const NoParams&) { return fwd(x); },
      [dfwd](T x, T y, T dy, const NoParams&) { return dfwd(x, y, dy); });
}

// An op whose derivative follows from its output, with its epilogue hooks
// (Note [Epilogues]); dfwd(x, y, dy) must not read x. Its forward is an array
// function array_fwd(x, y, n) (y may be x): exp, tanh and sigmoid run
// vectorised (Note [Vector math]), for the op, its epilogue and in a fused block alike.
template <class T, class ArrayFwd, class Dfwd>
OpInfo<T> unary_epilogue(const char* name, ArrayFwd array_fwd, Dfwd dfwd, bool mask_pullback = false) {
  OpInfo<T> row = unary_row_without_forward<T, NoParams>(
      name, kNoFlags, [dfwd](T x, T y, T dy, const NoParams&) { return dfwd(x, y, dy); });
  row.forward = [array_fwd](const ForwardCall<T>& c) {
    const T* x = c.inputs[0]->data();
    T* y = c.output.data();
    kernels::parallel_chunks(c.output.size(), [&](std::int64_t begin, std::int64_t end) { array_fwd(x + begin, y + begin, end - begin); });
  };
  Fusion<T> fusion;
  fusion.epilogue_forward = [array_fwd](const OpParams*, T* y, std::int64_t n) { array_fwd(y, y, n); };
  fusion.epilogue_pullback = [dfwd](const OpParams*, const T* y, T* dy, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) dy[i] = dfwd(T(0), y[i], dy[i]);
  };
  fusion.mask_pullback = mask_pullback;
  fusion.pullback_reads_input = [](const OpParams*, std::size_t) { return false; };  // the derivative from the output
  row.fusion = std::make_shared<const Fusion<T>>(std::move(fusion));
  return row;
}

// stable_sigmoid over an array: e = exp(-|x|) vectorised, then 1 / (1 + e) for
// x >= 0 and e / (1 + e) below, in chunks on the stack.
template <class T>
void vector_sigmoid(const T* x, T* y, std::int64_t n) {
  constexpr std::int64_t kChunk = 256;
  T e[kChunk];
  for (std::int64_t begin = 0; begin < n; begin += kChunk) {
    const std::int64_t len = std::min(kChunk, n - begin);
    for (std::int64_t i = 0; i < len; ++i) e[i] = -std::abs(x[begin + i]);
    kernels::vector_exp(e, e, len);
    for (std::int64_t i = 0; i < len; ++i) {
      const T v = x[begin + i];
      y[begin + i] = (v >= T(0) ? T(1) : e[i]) / (T(1) + e[i]);
    }
  }
}

// ---- the rows ----

template <class T>
OpInfo<T> exp_row() {
  OpInfo<T> r = unary_epilogue<T>(
      "exp", [](const T* x, T* y, std::int64_t n) { kernels::vector_exp(x, y, n); },  //
      [](T, T y, T dy) { return dy * y; });
  r.record_pullback = recorded_by_input<T>([](const RecordedPullbackCall<T>& c) { return c.output_adjoint * c.output; });
  return r;
}
template <class T>
OpInfo<T> log_row() {
  OpInfo<T> r = unary_plain<T>(
      "log", [](T x) { return std::log(x); },  //
      [](T x, T, T dy) { return dy / x; });
  r.record_pullback = recorded_by_input<T>([](const RecordedPullbackCall<T>& c) { return c.output_adjoint / c.input(0); });
  return r;
}
template <class T>
OpInfo<T> sqrt_row() {
  OpInfo<T> r = unary_plain<T>(
      "sqrt", [](T x) { return std::sqrt(x); },  //
      [](T, T y, T dy) { return dy / (T(2) * y); });
  r.record_pullback = recorded_by_input<T>([](const RecordedPullbackCall<T>& c) { return c.output_adjoint / (c.output * T(2)); });
  return r;
}
template <class T>
OpInfo<T> abs_row() {
  OpInfo<T> r = unary_plain<T>(
      "abs", [](T x) { return std::abs(x); },  //
      [](T x, T, T dy) { return x > T(0) ? dy : (x < T(0) ? -dy : T(0)); });
  r.record_pullback = recorded_by_input<T>([](const RecordedPullbackCall<T>& c) { return c.output_adjoint * sign_of(c.input(0)); });
  return r;
}
template <class T>
OpInfo<T> tanh_row() {
  OpInfo<T> r = unary_epilogue<T>(
      "tanh", [](const T* x, T* y, std::int64_t n) { kernels::vector_tanh(x, y, n); },  //
      [](T, T y, T dy) { return dy * (T(1) - y * y); });
  r.record_pullback = recorded_by_input<T>([](const RecordedPullbackCall<T>& c) { return c.output_adjoint * (T(1) - c.output * c.output); });
  return r;
}
template <class T>
OpInfo<T> sigmoid_row() {
  OpInfo<T> r = unary_epilogue<T>(
      "sigmoid", [](const T* x, T* y, std::int64_t n) { vector_sigmoid(x, y, n); },  //
      [](T, T y, T dy) { return dy * y * (T(1) - y); });
  r.record_pullback = recorded_by_input<T>([](const RecordedPullbackCall<T>& c) { return c.output_adjoint * (c.output * (T(1) - c.output)); });
  return r;
}
template <class T>
OpInfo<T> relu_row() {
  OpInfo<T> r = unary_epilogue<T>(
      "relu",
      [](const T* x, T* y, std::int64_t n) {
        for (std::int64_t i = 0; i < n; ++i) y[i] = x[i] > T(0) ? x[i] : T(0);
      },
      [](T, T y, T dy) { return y > T(0) ? dy : T(0); },  // y > 0 exactly where x > 0
      /*mask_pullback=*/true);                             // relu(NaN) = 0
  // The adjoint where the output is nonzero (x > 0), through where: its condition gets no gradient.
  r.record_pullback = recorded_by_input<T>([](const RecordedPullbackCall<T>& c) {
    const auto site = std::source_location::current();
    return where_tracked<T>(Operand<T>(c.output, site), Operand<T>(c.output_adjoint, site), Operand<T>(T(0), site), site);
  });
  return r;
}
template <class T>
OpInfo<T> softplus_row() {
  OpInfo<T> r = unary_plain<T>(
      "softplus", [](T x) { return std::max(x, T(0)) + std::log1p(std::exp(-std::abs(x))); },
      [](T x, T, T dy) { return dy * stable_sigmoid(x); });
  r.record_pullback = recorded_by_input<T>([](const RecordedPullbackCall<T>& c) { return c.output_adjoint * tg::sigmoid(c.input(0)); });
  return r;
}

template <class T>
OpInfo<T> erf_row() {
  constexpr T two_over_sqrt_pi = T(2 * std::numbers::inv_sqrtpi);
  OpInfo<T> r = unary_plain<T>(
      "erf", [](T x) { return std::erf(x); }, [](T x, T, T dy) { return dy * two_over_sqrt_pi * std::exp(-x * x); });
  r.record_pullback = recorded_by_input<T>([](const RecordedPullbackCall<T>& c) {
    const Tracked<T>& x = c.input(0);
    return c.output_adjoint * (tg::exp(-(x * x)) * two_over_sqrt_pi);
  });
  return r;
}
template <class T>
OpInfo<T> gelu_row() {
  constexpr T inv_sqrt2 = T(std::numbers::sqrt2 / 2), inv_sqrt_2pi = T(std::numbers::inv_sqrtpi / std::numbers::sqrt2);
  OpInfo<T> r = unary_plain<T>(
      "gelu", [](T x) { return T(0.5) * x * (T(1) + std::erf(x * inv_sqrt2)); },
      [](T x, T, T dy) {
        const T cdf = T(0.5) * (T(1) + std::erf(x * inv_sqrt2));
        const T pdf = std::exp(T(-0.5) * x * x) * inv_sqrt_2pi;
        return dy * (cdf + x * pdf);
      });
  // Phi(x) + x phi(x), Phi through erf.
  r.record_pullback = recorded_by_input<T>([](const RecordedPullbackCall<T>& c) {
    const Tracked<T>& x = c.input(0);
    return c.output_adjoint * ((tg::erf(x * inv_sqrt2) + T(1)) * T(0.5) + x * (tg::exp(x * x * T(-0.5)) * inv_sqrt_2pi));
  });
  return r;
}
template <class T>
OpInfo<T> gelu_tanh_row() {
  constexpr T k = T(0.7978845608028654);  // sqrt(2 / pi)
  constexpr T c = T(0.044715);
  OpInfo<T> r = unary_plain<T>(
      "gelu_tanh", [](T x) { return T(0.5) * x * (T(1) + std::tanh(k * (x + c * x * x * x))); },
      [](T x, T, T dy) {
        const T t = std::tanh(k * (x + c * x * x * x));
        return dy * (T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * k * (T(1) + T(3) * c * x * x));
      });
  r.record_pullback = recorded_by_input<T>([](const RecordedPullbackCall<T>& call) {
    const Tracked<T>& x = call.input(0);
    const Tracked<T> x2 = x * x, t = tg::tanh((x + x2 * x * c) * k);
    return call.output_adjoint * ((t + T(1)) * T(0.5) + x * (T(1) - t * t) * ((x2 * (T(3) * c) + T(1)) * (T(0.5) * k)));
  });
  return r;
}
template <class T>
OpInfo<T> silu_row() {
  OpInfo<T> r = unary_plain<T>(
      "silu", [](T x) { return x * stable_sigmoid(x); },
      [](T x, T, T dy) {
        const T s = stable_sigmoid(x);
        return dy * s * (T(1) + x * (T(1) - s));
      });
  r.record_pullback = recorded_by_input<T>([](const RecordedPullbackCall<T>& c) {
    const Tracked<T>& x = c.input(0);
    const Tracked<T> s = tg::sigmoid(x);
    return c.output_adjoint * s * (x * (T(1) - s) + T(1));
  });
  return r;
}
template <class T>
OpInfo<T> hardswish_row() {
  OpInfo<T> r = unary_plain<T>(
      "hardswish", [](T x) { return x <= T(-3) ? T(0) : x >= T(3) ? x : x * (x + T(3)) / T(6); },
      [](T x, T, T dy) { return x < T(-3) ? T(0) : x <= T(3) ? dy * (T(2) * x + T(3)) / T(6) : dy; });  // Note [Kinks]
  // x > 3: dy; x < -3: 0; else dy (2x + 3) / 6 (Note [Masks in recorded pullbacks]).
  r.record_pullback = recorded_by_input<T>([](const RecordedPullbackCall<T>& c) {
    const auto site = std::source_location::current();
    const Tracked<T>&x = c.input(0), &g = c.output_adjoint;
    const Tracked<T> middle = g * (x * T(2) + T(3)) / T(6);
    return if_above(x, T(3), Operand<T>(g, site), Operand<T>(if_below(x, T(-3), Operand<T>(T(0), site), Operand<T>(middle, site)), site));
  });
  return r;
}

struct EluParams : OpParams {
  double alpha = 1;
};
template <class T>
OpInfo<T> elu_row() {
  auto r = unary_row<T, EluParams>(
      "elu", kNoFlags, [](T x, const EluParams& p) { return x > T(0) ? x : T(p.alpha) * std::expm1(x); },
      [](T x, T y, T dy, const EluParams& p) { return x > T(0) ? dy : dy * (y + T(p.alpha)); });
  one_double_attribute(r, "alpha", &EluParams::alpha);
  r.record_pullback = recorded_by_input<T>([](const RecordedPullbackCall<T>& c) {
    const auto site = std::source_location::current();
    const Tracked<T>& g = c.output_adjoint;
    const T alpha = T(params_as<EluParams>(c.params).alpha);
    return if_above(c.input(0), T(0), Operand<T>(g, site), Operand<T>(g * (c.output + alpha), site));
  });
  return r;
}

struct ClampParams : OpParams {
  double lo = 0, hi = 0;
};
template <class T>
OpInfo<T> clamp_row() {
  auto r = unary_row<T, ClampParams>(
      "clamp", kNoFlags, [](T x, const ClampParams& p) { return std::min(std::max(x, T(p.lo)), T(p.hi)); },
      [](T x, T, T dy, const ClampParams& p) { return x >= T(p.lo) && x <= T(p.hi) ? dy : T(0); });
  // dy where lo <= x <= hi: zero above hi or below lo (Note [Masks in recorded pullbacks]).
  r.record_pullback = recorded_by_input<T>([](const RecordedPullbackCall<T>& c) {
    const auto site = std::source_location::current();
    const auto& p = params_as<ClampParams>(c.params);
    const Tracked<T>& x = c.input(0);
    const Tracked<T> inside = if_below(x, T(p.lo), Operand<T>(T(0), site), Operand<T>(c.output_adjoint, site));
    return if_above(x, T(p.hi), Operand<T>(T(0), site), Operand<T>(inside, site));
  });
  r.print_params = [](const OpParams* p) {
    const auto& c = params_as<ClampParams>(p);
    return fmt::format("lo={} hi={}", c.lo, c.hi);
  };
  r.save_params = [](const OpParams* p, ParamWriter& w) {
    w.f64(params_as<ClampParams>(p).lo);
    w.f64(params_as<ClampParams>(p).hi);
  };
  r.load_params = [](ParamReader& in) {
    auto p = std::make_shared<ClampParams>();
    p->lo = in.f64("lo");
    p->hi = in.f64("hi");
    if (!(p->lo <= p->hi)) fail("clamp", fmt::format("bounds [{}, {}] expected lo <= hi", p->lo, p->hi));
    return p;
  };
  return r;
}

struct LeakyReluParams : OpParams {
  double slope = 0.01;
};

template <class T>
OpInfo<T> leaky_relu_row() {
  auto r = unary_row<T, LeakyReluParams>(
      "leaky_relu", kNoFlags,
      [](T x, const LeakyReluParams& p) { return x > T(0) ? x : static_cast<T>(p.slope) * x; },
      [](T x, T, T dy, const LeakyReluParams& p) { return x > T(0) ? dy : static_cast<T>(p.slope) * dy; });
  one_double_attribute(r, "slope", &LeakyReluParams::slope);
  r.record_pullback = recorded_by_input<T>([](const RecordedPullbackCall<T>& c) {
    const auto site = std::source_location::current();
    const Tracked<T>& g = c.output_adjoint;
    return if_above(c.input(0), T(0), Operand<T>(g, site), Operand<T>(g * T(params_as<LeakyReluParams>(c.params).slope), site));
  });
  return r;
}

}  // namespace

// The family's op table (Note [Op tables]).
#define TG_UNARY_ROWS(X) TG_UNARY_FUNCTIONS(X) X(leaky_relu) X(elu) X(clamp)
TG_OP_TABLE(unary, TG_UNARY_ROWS)

}  // namespace tg::ops

namespace tg {

#define TG_DEFINE_UNARY(name)                                                       \
  template <class T>                                                                \
  Tracked<T> name(const Tracked<T>& x, std::source_location where) {                \
    return record_op(ops::name##_op<T>(), nullptr, {Operand<T>(x, where)}, where); \
  }                                                                                 \
  template <class T>                                                                \
  Array<T> name(const Array<T>& x, std::source_location where) {                    \
    return evaluate_op(ops::name##_op<T>(), nullptr, {&x}, where);                 \
  }                                                                                 \
  template Tracked<float> name(const Tracked<float>&, std::source_location);        \
  template Tracked<double> name(const Tracked<double>&, std::source_location);      \
  template Array<float> name(const Array<float>&, std::source_location);            \
  template Array<double> name(const Array<double>&, std::source_location);
TG_UNARY_FUNCTIONS(TG_DEFINE_UNARY)
#undef TG_DEFINE_UNARY

template <class T>
Tracked<T> leaky_relu(const Tracked<T>& x, std::type_identity_t<T> slope, std::source_location where) {
  auto p = std::make_shared<ops::LeakyReluParams>();
  p->slope = static_cast<double>(slope);
  return record_op(ops::leaky_relu_op<T>(), std::move(p), {Operand<T>(x, where)}, where);
}
template <class T>
Array<T> leaky_relu(const Array<T>& x, std::type_identity_t<T> slope, std::source_location where) {
  ops::LeakyReluParams p;
  p.slope = static_cast<double>(slope);
  return evaluate_op(ops::leaky_relu_op<T>(), &p, {&x}, where);
}
template Tracked<float> leaky_relu(const Tracked<float>&, float, std::source_location);
template Tracked<double> leaky_relu(const Tracked<double>&, double, std::source_location);
template Array<float> leaky_relu(const Array<float>&, float, std::source_location);
template Array<double> leaky_relu(const Array<double>&, double, std::source_location);

}  // namespace tg

namespace tg {

template <class T>
Tracked<T> elu(const Tracked<T>& x, std::type_identity_t<T> alpha, std::source_location where) {
  auto p = std::make_shared<ops::EluParams>();
  p->alpha = static_cast<double>(alpha);
  return record_op(ops::elu_op<T>(), std::move(p), {Operand<T>(x, where)}, where);
}
template <class T>
Array<T> elu(const Array<T>& x, std::type_identity_t<T> alpha, std::source_location where) {
  ops::EluParams p;
  p.alpha = static_cast<double>(alpha);
  return evaluate_op(ops::elu_op<T>(), &p, {&x}, where);
}

namespace {
void check_clamp_bounds(double lo, double hi, const std::source_location& where) {
  if (!(lo <= hi))
    throw Error("clamp", fmt::format("bounds [{}, {}] expected lo <= hi; hint: swap them", lo, hi)).with_site(where);
}
}  // namespace

template <class T>
Tracked<T> clamp(const Tracked<T>& x, std::type_identity_t<T> lo, std::type_identity_t<T> hi, std::source_location where) {
  check_clamp_bounds(double(lo), double(hi), where);
  auto p = std::make_shared<ops::ClampParams>();
  p->lo = static_cast<double>(lo);
  p->hi = static_cast<double>(hi);
  return record_op(ops::clamp_op<T>(), std::move(p), {Operand<T>(x, where)}, where);
}
template <class T>
Array<T> clamp(const Array<T>& x, std::type_identity_t<T> lo, std::type_identity_t<T> hi, std::source_location where) {
  check_clamp_bounds(double(lo), double(hi), where);
  ops::ClampParams p;
  p.lo = static_cast<double>(lo);
  p.hi = static_cast<double>(hi);
  return evaluate_op(ops::clamp_op<T>(), &p, {&x}, where);
}

#define TG_INSTANTIATE(T)                                                                               \
  template Tracked<T> elu(const Tracked<T>&, T, std::source_location);                                  \
  template Array<T> elu(const Array<T>&, T, std::source_location);                                      \
  template Tracked<T> clamp(const Tracked<T>&, T, T, std::source_location);                             \
  template Array<T> clamp(const Array<T>&, T, T, std::source_location);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg
