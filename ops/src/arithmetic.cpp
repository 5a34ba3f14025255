// ============================================================================
// Arithmetic: add, sub, mul, div (broadcasting), neg, pow, where.
// Each row: forward, then the contribution to each operand's adjoint.
// ============================================================================
#include "tapegrad/ops/arithmetic.hpp"

#include "assigned.hpp"
#include "builtin_ops.hpp"
#include "op_table.hpp"
#include "recorded_pullbacks.hpp"

#include <cmath>

#include <fmt/format.h>

#include "tapegrad/kernels/parallel.hpp"
#include "tapegrad/kernels/strided.hpp"
#include "tapegrad/ops/elementwise_rows.hpp"

namespace tg::ops {

// add and sub: the pullback reads neither operand's value (only their shapes).
template <class T>
OpInfo<T> reading_no_operand(OpInfo<T> row) {
  Fusion<T> fusion;
  fusion.pullback_reads_input = [](const OpParams*, std::size_t) { return false; };
  row.fusion = std::make_shared<const Fusion<T>>(std::move(fusion));
  return row;
}

// The adjoint as it is, for a recorded pullback.
template <class T>
const Tracked<T>& adjoint_of(const RecordedPullbackCall<T>& c) {
  return c.output_adjoint;
}

template <class T>
OpInfo<T> add_row() {
  OpInfo<T> r = reading_no_operand(binary_row<T>(
      "add", kLinear | kPullbackIgnoresOutput | kSumsAdjoints, [](T a, T b) { return a + b; },  //
      [](T, T, T, T g) { return g; },                                                          // d/da
      [](T, T, T, T g) { return g; }));                                                        // d/db
  r.record_pullback = recorded_by_input<T>(adjoint_of<T>, adjoint_of<T>);
  return r;
}

template <class T>
OpInfo<T> sub_row() {
  OpInfo<T> r = reading_no_operand(binary_row<T>(
      "sub", kLinear | kPullbackIgnoresOutput, [](T a, T b) { return a - b; },  //
      [](T, T, T, T g) { return g; },                                          //
      [](T, T, T, T g) { return -g; }));
  r.record_pullback = recorded_by_input<T>(adjoint_of<T>, [](const RecordedPullbackCall<T>& c) { return -c.output_adjoint; });
  return r;
}

template <class T>
OpInfo<T> mul_row() {
  OpInfo<T> r = binary_row<T>(
      "mul", kNoFlags, [](T a, T b) { return a * b; },  //
      [](T, T b, T, T g) { return g * b; },              //
      [](T a, T, T, T g) { return g * a; });
  r.record_pullback = recorded_by_input<T>([](const RecordedPullbackCall<T>& c) { return c.output_adjoint * c.input(1); },
                                           [](const RecordedPullbackCall<T>& c) { return c.output_adjoint * c.input(0); });
  return r;
}

template <class T>
OpInfo<T> div_row() {
  OpInfo<T> r = binary_row<T>(
      "div", kNoFlags, [](T a, T b) { return a / b; },  //
      [](T, T b, T, T g) { return g / b; },              //
      [](T, T b, T out, T g) { return -g * out / b; });
  r.record_pullback = recorded_by_input<T>(
      [](const RecordedPullbackCall<T>& c) { return c.output_adjoint / c.input(1); },
      [](const RecordedPullbackCall<T>& c) { return -(c.output_adjoint * c.output) / c.input(1); });
  return r;
}

template <class T>
OpInfo<T> neg_row() {
  OpInfo<T> r = unary_row<T, NoParams>(
      "neg", kLinear, [](T x, const NoParams&) { return -x; },  //
      [](T, T, T dy, const NoParams&) { return -dy; });
  r.record_pullback = recorded_by_input<T>([](const RecordedPullbackCall<T>& c) { return -c.output_adjoint; });
  return r;
}

// x^y, both operands differentiable (Note [pow at zero]).
template <class T>
OpInfo<T> pow_row() {
  OpInfo<T> r = binary_row<T>(
      "pow", kNoFlags, [](T x, T y) { return std::pow(x, y); },
      [](T x, T y, T, T g) { return y == T(0) ? T(0) : g * y * std::pow(x, y - T(1)); },
      [](T x, T, T out, T g) { return x == T(0) ? T(0) : g * out * std::log(x); });
  // The same zeros through where: log reads x where x != 0 and 1 elsewhere, so
  // no inf reaches a product (the double-where of JAX's FAQ).
  auto choose = [](const Tracked<T>& cond, const Tracked<T>& a) {
    const auto site = std::source_location::current();
    return where_tracked<T>(Operand<T>(cond, site), Operand<T>(a, site), Operand<T>(T(0), site), site);
  };
  r.record_pullback = recorded_by_input<T>(
      [choose](const RecordedPullbackCall<T>& c) {
        const Tracked<T>&x = c.input(0), &y = c.input(1);
        return choose(y, c.output_adjoint * y * tg::pow(x, y - T(1)));
      },
      [choose](const RecordedPullbackCall<T>& c) {
        const auto site = std::source_location::current();
        const Tracked<T>& x = c.input(0);
        const Tracked<T> safe = where_tracked<T>(Operand<T>(x, site), Operand<T>(x, site), Operand<T>(T(1), site), site);
        return choose(x, c.output_adjoint * c.output * tg::log(safe));
      });
  return r;
}

// x^p, constant exponent p.
struct PowScalarParams : OpParams {
  double p = 1;
};

template <class T>
OpInfo<T> pow_scalar_row() {
  auto r = unary_row<T, PowScalarParams>(
      "pow_scalar", kNoFlags,
      [](T x, const PowScalarParams& q) { return q.p == 2 ? x * x : std::pow(x, static_cast<T>(q.p)); },
      [](T x, T, T dy, const PowScalarParams& q) {
        if (q.p == 0) return T(0);
        return q.p == 2 ? dy * T(2) * x : dy * static_cast<T>(q.p) * std::pow(x, static_cast<T>(q.p - 1));
      });
  one_double_attribute(r, "p", &PowScalarParams::p);
  r.record_pullback = [](const RecordedPullbackCall<T>& c) {
    const double p = params_as<PowScalarParams>(c.params).p;
    if (!c.wants(0) || p == 0) return;  // a constant: no contribution
    const Tracked<T> slope = p == 2 ? c.input(0) * T(2) : tg::pow(c.input(0), static_cast<T>(p - 1)) * static_cast<T>(p);
    c.contribute(0, c.output_adjoint * slope);
  };
  return r;
}

// The family's op table (Note [Op tables]).
// where(cond, a, b): a where cond != 0, else b; the three broadcast together.
// The pullback sends the output adjoint to a where cond holds and to b
// elsewhere, summed over broadcast dims; cond gets none (Note [Labels are not
// differentiable] holds for masks too).
// An operand of a broadcasting op that is either whole (the output's size: then
// its elements are in the output's order, since broadcasting only adds dims of
// 1 to it) or one element: read at i, or always at 0.
template <class T>
struct FlatOperand {
  FlatOperand(const Array<T>& a, std::int64_t n) : data(a.data()), step(a.size() == n ? 1 : 0) {}
  T operator[](std::int64_t i) const { return data[i * step]; }
  const T* data;
  std::int64_t step;
};
template <class T>
bool flat_operands(std::span<const Array<T>* const> in, std::int64_t n) {
  for (const Array<T>* a : in)
    if (a->size() != 1 && a->size() != n) return false;
  return true;
}

// out[i] = cond[i] != 0 ? a : b over [begin, end), a and b whole or one element.
// Both branches are read unconditionally, so the loop compiles to a vector
// blend; a branch per element mispredicts on a mask (7 ms for 1.6M elements).
template <class T, bool AWhole, bool BWhole>
void select_run(const T* cond, const T* a, const T* b, T* out, std::int64_t begin, std::int64_t end) {
  for (std::int64_t i = begin; i < end; ++i) {
    const T av = AWhole ? a[i] : a[0], bv = BWhole ? b[i] : b[0];
    out[i] = cond[i] != T(0) ? av : bv;
  }
}

template <class T>
OpInfo<T> where_row() {
  OpInfo<T> r;
  r.name = "where";
  r.arity = 3;
  r.flags = kPullbackCanAssign;  // a whole branch's adjoint is written by the select; otherwise zeroed first
  r.shape = [](const OpParams*, std::span<const Shape* const> s) {
    return broadcast_shapes(*s[0], broadcast_shapes(*s[1], *s[2], "where"), "where");
  };
  r.forward = [](const ForwardCall<T>& c) {
    const Shape& so = c.output.shape();
    if (flat_operands(c.inputs, c.output.size())) {  // each operand whole or one element: one flat loop
      const std::int64_t n = c.output.size();
      const FlatOperand<T> cond(*c.inputs[0], n), a(*c.inputs[1], n), b(*c.inputs[2], n);
      T* out = c.output.data();
      if (cond.step == 0) {
        for (std::int64_t i = 0; i < n; ++i) out[i] = cond[i] != T(0) ? a[i] : b[i];
        return;
      }
      // A whole condition (relu's recorded pullback, masks): a vector select on threads.
      kernels::parallel_chunks(n, [&](std::int64_t begin, std::int64_t end) {
        if (a.step == 1 && b.step == 1) return select_run<T, true, true>(cond.data, a.data, b.data, out, begin, end);
        if (a.step == 1) return select_run<T, true, false>(cond.data, a.data, b.data, out, begin, end);
        if (b.step == 1) return select_run<T, false, true>(cond.data, a.data, b.data, out, begin, end);
        select_run<T, false, false>(cond.data, a.data, b.data, out, begin, end);
      });
      return;
    }
    const Strides sc = broadcast_strides(c.inputs[0]->shape(), so), sa = broadcast_strides(c.inputs[1]->shape(), so),
                  sb = broadcast_strides(c.inputs[2]->shape(), so), st = contiguous_strides(so);
    const T *cond = c.inputs[0]->data(), *a = c.inputs[1]->data(), *b = c.inputs[2]->data();
    T* out = c.output.data();
    kernels::for_each_run<4>(so, {&sc, &sa, &sb, &st}, [&](std::int64_t n, const kernels::Offsets<4>& o, const kernels::Offsets<4>& d) {
      for (std::int64_t i = 0; i < n; ++i)
        out[o[3] + i * d[3]] = cond[o[0] + i * d[0]] != T(0) ? a[o[1] + i * d[1]] : b[o[2] + i * d[2]];
    });
  };
  r.pullback = [](const PullbackCall<T>& c) {
    zero_if_assigned(c, 0);  // the condition's adjoint, when it has one, stays zero
    Array<T>*ga = c.input_adjoints[1], *gb = c.input_adjoints[2];
    if (!ga && !gb) return;
    const Shape& so = c.output.shape();
    if (flat_operands(c.inputs, c.output.size())) {
      const std::int64_t n = c.output.size();
      const FlatOperand<T> cond(*c.inputs[0], n);
      const T* gy = c.output_adjoint.data();
      for (int side = 1; side <= 2; ++side) {
        Array<T>* g = side == 1 ? ga : gb;
        if (!g) continue;
        const bool to_a = side == 1;
        if (g->size() == n && cond.step == 1) {
          T* gd = g->data();
          const T* cd = cond.data;
          const bool assign = c.assigns(static_cast<std::size_t>(side));
          kernels::parallel_chunks(n, [&](std::int64_t begin, std::int64_t end) {
            for (std::int64_t i = begin; i < end; ++i) {
              const T v = gy[i];  // read unconditionally: the loop is a vector select, not a branch per element
              const T share = (cd[i] != T(0)) == to_a ? v : T(0);
              gd[i] = assign ? share : gd[i] + share;
            }
          });
          continue;
        }
        zero_if_assigned(c, static_cast<std::size_t>(side));
        if (g->size() == n) {
          T* gd = g->data();
          for (std::int64_t i = 0; i < n; ++i) gd[i] += (cond[i] != T(0)) == to_a ? gy[i] : T(0);
        } else {  // one element: the sum of its share
          T total = T(0);
          for (std::int64_t i = 0; i < n; ++i) total += (cond[i] != T(0)) == to_a ? gy[i] : T(0);
          g->data()[0] += total;
        }
      }
      return;
    }
    const Strides sc = broadcast_strides(c.inputs[0]->shape(), so), st = contiguous_strides(so);
    const T *cond = c.inputs[0]->data(), *gy = c.output_adjoint.data();
    for (int side = 1; side <= 2; ++side) {  // a where cond holds, b elsewhere; += over broadcast dims
      Array<T>* g = side == 1 ? ga : gb;
      if (!g) continue;
      zero_if_assigned(c, static_cast<std::size_t>(side));
      const Strides sg = broadcast_strides(c.inputs[side]->shape(), so);
      T* gd = g->data();
      const bool to_a = side == 1;
      kernels::for_each_run<3>(so, {&sc, &sg, &st}, [&](std::int64_t n, const kernels::Offsets<3>& o, const kernels::Offsets<3>& d) {
        for (std::int64_t i = 0; i < n; ++i)
          if ((cond[o[0] + i * d[0]] != T(0)) == to_a) gd[o[1] + i * d[1]] += gy[o[2] + i * d[2]];
      });
    }
  };
  // The condition gets no contribution, as above.
  r.record_pullback = [](const RecordedPullbackCall<T>& c) {
    const auto where = std::source_location::current();
    for (std::size_t side = 1; side <= 2; ++side)
      if (c.wants(side)) {
        const Operand<T> adjoint(c.output_adjoint, where), zero(T(0), where);
        const Tracked<T> routed = side == 1 ? where_tracked<T>(Operand<T>(c.input(0), where), adjoint, zero, where)
                                            : where_tracked<T>(Operand<T>(c.input(0), where), zero, adjoint, where);
        c.contribute(side, reduce_to_shape(routed, c.input(side).shape()));
      }
  };
  return r;
}

#define TG_ARITHMETIC_ROWS(X) X(add) X(sub) X(mul) X(div) X(neg) X(pow) X(pow_scalar) X(where)
TG_OP_TABLE(arithmetic, TG_ARITHMETIC_ROWS)

template <class T>
Tracked<T> pow_tracked(const Operand<T>& x, const Operand<T>& y, const std::source_location& where) {
  return record_op(pow_op<T>(), nullptr, {x, y}, where);
}
template <class T>
Tracked<T> where_tracked(const Operand<T>& cond, const Operand<T>& a, const Operand<T>& b, const std::source_location& where) {
  return record_op(where_op<T>(), nullptr, {cond, a, b}, where);
}
template Tracked<float> where_tracked(const Operand<float>&, const Operand<float>&, const Operand<float>&,
                                      const std::source_location&);
template Tracked<double> where_tracked(const Operand<double>&, const Operand<double>&, const Operand<double>&,
                                       const std::source_location&);
template Tracked<float> pow_tracked(const Operand<float>&, const Operand<float>&, const std::source_location&);
template Tracked<double> pow_tracked(const Operand<double>&, const Operand<double>&, const std::source_location&);

}  // namespace tg::ops

namespace tg {
using namespace tg::ops;

#define TG_BINARY_OPERATOR(T, symbol, row)                                     \
  Tracked<T> operator symbol(const Operand<T>& a, const Operand<T>& b) {      \
    return record_op(row<T>(), nullptr, {a, b}, a.where);                     \
  }
// One line per (operator, type); spelled out rather than generated by loops.
TG_BINARY_OPERATOR(float, +, add_op)
TG_BINARY_OPERATOR(float, -, sub_op)
TG_BINARY_OPERATOR(float, *, mul_op)
TG_BINARY_OPERATOR(float, /, div_op)
TG_BINARY_OPERATOR(double, +, add_op)
TG_BINARY_OPERATOR(double, -, sub_op)
TG_BINARY_OPERATOR(double, *, mul_op)
TG_BINARY_OPERATOR(double, /, div_op)
#undef TG_BINARY_OPERATOR

Tracked<float> operator-(const Operand<float>& a) { return record_op(neg_op<float>(), nullptr, {a}, a.where); }
Tracked<double> operator-(const Operand<double>& a) { return record_op(neg_op<double>(), nullptr, {a}, a.where); }

template <class T> Array<T> operator+(const Array<T>& a, const Array<T>& b) { return evaluate_op(add_op<T>(), nullptr, {&a, &b}, std::source_location::current()); }
template <class T> Array<T> operator-(const Array<T>& a, const Array<T>& b) { return evaluate_op(sub_op<T>(), nullptr, {&a, &b}, std::source_location::current()); }
template <class T> Array<T> operator*(const Array<T>& a, const Array<T>& b) { return evaluate_op(mul_op<T>(), nullptr, {&a, &b}, std::source_location::current()); }
template <class T> Array<T> operator/(const Array<T>& a, const Array<T>& b) { return evaluate_op(div_op<T>(), nullptr, {&a, &b}, std::source_location::current()); }
template <class T> Array<T> operator-(const Array<T>& a) { return evaluate_op(neg_op<T>(), nullptr, {&a}, std::source_location::current()); }

template <class T>
Tracked<T> pow(const Tracked<T>& x, std::type_identity_t<T> p, std::source_location where) {
  auto params = std::make_shared<PowScalarParams>();
  params->p = static_cast<double>(p);
  return record_op(pow_scalar_op<T>(), std::move(params), {Operand<T>(x, where)}, where);
}
template <class T>
Array<T> pow(const Array<T>& x, std::type_identity_t<T> p, std::source_location where) {
  PowScalarParams params;
  params.p = static_cast<double>(p);
  return evaluate_op(pow_scalar_op<T>(), &params, {&x}, where);
}
template <class T>
Array<T> pow(const Array<T>& x, const Array<T>& y, std::source_location where) {
  return evaluate_op(pow_op<T>(), nullptr, {&x, &y}, where);
}
template <class T>
Array<T> where(const Array<T>& cond, const Array<T>& a, const Array<T>& b, std::source_location site) {
  return evaluate_op(ops::where_op<T>(), nullptr, {&cond, &a, &b}, site);
}

#define TG_INSTANTIATE(T)                                                               \
  template Array<T> operator+(const Array<T>&, const Array<T>&);                        \
  template Array<T> operator-(const Array<T>&, const Array<T>&);                        \
  template Array<T> operator*(const Array<T>&, const Array<T>&);                        \
  template Array<T> operator/(const Array<T>&, const Array<T>&);                        \
  template Array<T> operator-(const Array<T>&);                                         \
  template Tracked<T> pow(const Tracked<T>&, std::type_identity_t<T>, std::source_location); \
  template Array<T> pow(const Array<T>&, std::type_identity_t<T>, std::source_location);     \
  template Array<T> pow(const Array<T>&, const Array<T>&, std::source_location);          \
  template Array<T> where(const Array<T>&, const Array<T>&, const Array<T>&, std::source_location);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg
