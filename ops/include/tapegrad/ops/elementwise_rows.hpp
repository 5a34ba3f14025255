// Builders for the registry rows of elementwise ops, so that each op's row
// reads as its forward next to its partial derivatives.
// Internal to ops/ (installed because op files of users may reuse it).
#pragma once

#include <fmt/format.h>

#include "tapegrad/autodiff/record.hpp"
#include "tapegrad/kernels/elementwise.hpp"

namespace tg::ops {

// A broadcasting binary op: out = fwd(a, b); the pullbacks return the contribution
// to each operand's adjoint, da(a, b, out, dout) and db(a, b, out, dout), added or
// written (Note [Assigned adjoints]: every elementwise pullback can assign).
template <class T, class Fwd, class DA, class DB>
OpInfo<T> binary_row(const char* name, std::uint32_t flags, Fwd fwd, DA da, DB db) {
  OpInfo<T> row;
  row.name = name;
  row.arity = 2;
  row.flags = kElementwise | kPullbackCanAssign | flags;
  row.shape = [name](const OpParams*, std::span<const Shape* const> s) { return broadcast_shapes(*s[0], *s[1], name); };
  row.forward = [fwd](const ForwardCall<T>& c) {
    const Array<T>&a = *c.inputs[0], &b = *c.inputs[1];
    kernels::binary_map(a.data(), a.shape(), b.data(), b.shape(), c.output.data(), c.output.shape(), fwd);
  };
  row.pullback = [da, db](const PullbackCall<T>& c) {
    const Array<T>&a = *c.inputs[0], &b = *c.inputs[1];
    const T* out = c.output.data();
    const T* dout = c.output_adjoint.data();
    const Shape& so = c.output.shape();
    if (Array<T>* ga = c.input_adjoints[0])
      kernels::binary_map_backward<kernels::Side::a>(a.data(), a.shape(), b.data(), b.shape(), out, dout, so, ga->data(), c.assigns(0), da);
    if (Array<T>* gb = c.input_adjoints[1])
      kernels::binary_map_backward<kernels::Side::b>(a.data(), a.shape(), b.data(), b.shape(), out, dout, so, gb->data(), c.assigns(1), db);
  };
  return row;
}

// A unary op with named parameters P (use struct NoParams when there are none):
// y = fwd(x, p); the pullback returns dx = dfwd(x, y, dy, p).
struct NoParams : OpParams {};

// A unary op's row without its forward: for ops whose forward runs over whole
// arrays (the vectorised exp, tanh, sigmoid); unary_row adds a per-element one.
template <class T, class P, class Dfwd>
OpInfo<T> unary_row_without_forward(const char* name, std::uint32_t flags, Dfwd dfwd) {
  OpInfo<T> row;
  row.name = name;
  row.arity = 1;
  row.flags = kElementwise | kPullbackCanAssign | flags;
  row.shape = [](const OpParams*, std::span<const Shape* const> s) { return *s[0]; };
  row.pullback = [dfwd](const PullbackCall<T>& c) {
    static const P defaults{};
    const P& p = c.params ? params_as<P>(c.params) : defaults;
    kernels::map_backward(c.inputs[0]->data(), c.output.data(), c.output_adjoint.data(), c.input_adjoints[0]->data(),
                          c.output.size(), c.assigns(0), [&](T x, T y, T dy) { return dfwd(x, y, dy, p); });
  };
  return row;
}

template <class T, class P, class Fwd, class Dfwd>
OpInfo<T> unary_row(const char* name, std::uint32_t flags, Fwd fwd, Dfwd dfwd) {
  OpInfo<T> row = unary_row_without_forward<T, P>(name, flags, dfwd);
  row.forward = [fwd](const ForwardCall<T>& c) {
    static const P defaults{};
    const P& p = c.params ? params_as<P>(c.params) : defaults;
    kernels::map(c.inputs[0]->data(), c.output.data(), c.output.size(), [&](T x) { return fwd(x, p); });
  };
  return row;
}

// The print, save and load hooks of an op whose only attribute is one double,
// P::*field, printed and saved as `name` ("slope=0.1").
template <class T, class P>
void one_double_attribute(OpInfo<T>& row, const char* name, double P::*field) {
  row.print_params = [name, field](const OpParams* p) { return fmt::format("{}={}", name, params_as<P>(p).*field); };
  row.save_params = [field](const OpParams* p, ParamWriter& w) { w.f64(params_as<P>(p).*field); };
  row.load_params = [name, field](ParamReader& in) {
    auto p = std::make_shared<P>();
    (*p).*field = in.f64(name);
    return p;
  };
}

}  // namespace tg::ops
