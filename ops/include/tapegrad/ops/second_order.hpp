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

// H(x) v as the gradient of <grad f(x), v>: two reverse passes, the inner one recorded.
template <class F, class T>
Array<T> hvp(F&& f, const Array<T>& x, const Array<T>& v) {
  if (!(x.shape() == v.shape()))
    fail("hvp", fmt::format("v has shape {} expected x's shape {}; hint: v is a direction in x's space", to_string(v.shape()),
                            to_string(x.shape())));
  return tg::gradient([&f, &v](const Tracked<T>& xt) { return tg::sum(tg::gradient(f, xt) * v); }, x);
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
