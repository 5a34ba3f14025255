// Second order (Note [Recorded pullbacks] in autodiff/registry.hpp):
//   Array<T> hv = tg::hvp(f, x, v);   // H(x) v for a one-element f, v of x's shape
//   Array<T> H = tg::hessian(f, x);   // (x.size(), x.size()), row-major over x's elements
// Both differentiate a gradient recorded inside a recording, so every op
// between x and f's value needs a recorded pullback (a tg::Error names the one
// that has none).
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

}  // namespace tg
