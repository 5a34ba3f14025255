// Second order (Note [Recorded pullbacks] in autodiff/registry.hpp):
//   Array<T> hv = tg::hvp(f, x, v);   // H(x) v for a one-element f, v of x's shape
//   Array<T> H = tg::hessian(f, x);   // (x.size(), x.size()), row-major over x's elements
// Both differentiate a gradient recorded inside a recording, so every op
// between x and f's value needs a recorded pullback (a tg::Error names the one
// that has none).
//   Tracked<T> gx = tg::linear_transpose(f, x_shape, g);   // A^T g for a linear op A = f
#pragma once

#include <fmt/format.h>

#include "tapegrad/autodiff/nested.hpp"
#include "tapegrad/ops/arithmetic.hpp"
#include "tapegrad/ops/reduce.hpp"

namespace tg {

// H(x) v as the gradient of <grad f(x), v>: two reverse passes, the inner one
// recorded. x and v are Arrays of one shape, or trees of one structure (a
// model's parameters and a direction in them); the result has x's type.
template <class F, class X>
X hvp(F&& f, const X& x, const X& v) {
  using T = tree::element_type<X>;
  std::vector<const Array<T>*> directions;
  std::vector<Shape> shapes;
  tree::for_each_leaf(x, [&](const Array<T>& leaf) { shapes.push_back(leaf.shape()); });
  tree::for_each_leaf(v, [&](const Array<T>& leaf) { directions.push_back(&leaf); });
  if (directions.size() != shapes.size())
    fail("hvp", fmt::format("v has {} leaves expected x's {}; hint: v is a direction in x's space", directions.size(), shapes.size()));
  for (std::size_t i = 0; i < shapes.size(); ++i)
    if (!(directions[i]->shape() == shapes[i]))
      fail("hvp", fmt::format("v has shape {} expected x's shape {}{}; hint: v is a direction in x's space",
                              to_string(directions[i]->shape()), to_string(shapes[i]),
                              shapes.size() > 1 ? fmt::format(" (leaf {})", i) : std::string()));
  return tg::gradient(
      [&f, &directions](const auto& xt) {
        const auto g = tg::gradient(f, xt);
        std::vector<Tracked<T>> terms;
        std::size_t i = 0;
        tree::for_each_leaf(g, [&](const Tracked<T>& leaf) { terms.push_back(tg::sum(leaf * *directions[i++])); });
        Tracked<T> total = terms[0];
        for (std::size_t k = 1; k < terms.size(); ++k) total = total + terms[k];
        return total;
      },
      x);
}

// The Hessian of a one-element f at x: <grad f(x), v> recorded once, then one
// replayed reverse pass per row with v the row's unit vector.
template <class F, class T>
Array<T> hessian(F&& f, const Array<T>& x) {
  const std::int64_t n = x.size();
  auto directional = [&f](const Tracked<T>& xt, const Tracked<T>& vt) { return tg::sum(tg::gradient(f, xt) * vt); };
  Array<T> unit = Array<T>::zeros(x.shape());
  auto tape = tg::record(directional, x, tg::data(unit));
  Array<T> H(Shape{n, n});
  for (std::int64_t i = 0; i < n; ++i) {
    unit.data()[i] = T(1);
    const Array<T> row = tape.gradient(x, tg::data(unit));
    std::copy(row.begin(), row.end(), H.data() + i * n);
    unit.data()[i] = T(0);
  }
  return H;
}

namespace ops {
// Note [Linear adjoints] (ops/src/linear_adjoint.cpp): records linear_adjoint,
// the adjoint of the transposable op `of` (params `of_params`, input shape
// `input_shape`) applied to g.
template <class T>
Tracked<T> record_linear_adjoint(const OpInfo<T>& of, std::shared_ptr<const OpParams> of_params, const Shape& input_shape,
                                 const Tracked<T>& g, const std::source_location& where = std::source_location::current());
}  // namespace ops

// A^T g, for f(x) = A x one linear op (meanpool, upsample, adaptive_meanpool,
// pad with a copying border, slice) on inputs of shape input_shape, recorded as
// one instruction on g's tape whose own pullback is A (Note [Linear adjoints]),
// as JAX's linear_transpose. f is recorded once, on zeros, to find A.
template <class F, class T>
Tracked<T> linear_transpose(F&& f, const Shape& input_shape, const Tracked<T>& g,
                            const std::source_location& where = std::source_location::current()) {
  const auto probe = tg::record(std::forward<F>(f), Array<T>::zeros(input_shape));
  const Tape<T>& tape = probe.tape();
  const std::string what = tape.num_instructions() == 1 ? fmt::format("op '{}'", tape.instruction(0).op->name)
                                                         : fmt::format("{} instructions", tape.num_instructions());
  const auto transposable = [&](const Instr<T>& ins) { return ins.op->transposable && ins.op->transposable(ins.params.get()); };
  if (tape.num_instructions() != 1 || !transposable(tape.instruction(0)) ||
      tape.args_of(tape.instruction(0)).size() != 1 || tape.args_of(tape.instruction(0))[0] != tape.inputs()[0])
    throw Error("linear_transpose",
                fmt::format("f recorded {} expected one linear op of x (meanpool, upsample, adaptive_meanpool, pad with "
                            "a copying border, slice); hint: transpose a composition op by op",
                            what))
        .with_site(where);
  const Instr<T>& ins = tape.instruction(0);
  return ops::record_linear_adjoint(*ins.op, ins.params, input_shape, g, where);
}

}  // namespace tg
