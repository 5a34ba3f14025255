// pad: an array extended along its trailing dims by one of the five borders
// the filters use (fill, replicate, reflect, symmetric, circular; filter.hpp),
// differentiable in the array and, for fill, in the fill value.
//
//   auto y = tg::pad(x, {.widths = {1, 1}, .border = tg::Border::reflect()});   // (N, C, H+2, W+2)
//   auto z = tg::pad(x, {.lo = {0, 2}, .hi = {1, 0}});                           // zeros, asymmetric
//   auto v = tg::pad(x, fill, {.widths = {1}});                                  // fill: a Tracked scalar
// A list of k entries pads the last k dims (PyTorch's F.pad reads its pairs
// the same way, from the last dim). Pads wider than the array keep extending
// by the border's rule; a border other than fill needs every padded dim >= 1.
#pragma once

#include <source_location>

#include "tapegrad/ops/filter.hpp"

namespace tg {

struct PadParams {
  DimList widths{};    // added on both sides of each trailing dim
  DimList lo{}, hi{};  // asymmetric: each, when given, replaces `widths` on its side
  Border border = Border::fill(0);
};

namespace ops {
template <class T>
Tracked<T> pad_tracked(std::span<const Operand<T>> operands, const PadParams& p, const std::source_location& where);
template <class T>
Array<T> pad_eval(std::span<const Array<T>* const> inputs, const PadParams& p, const std::source_location& where);
}  // namespace ops

template <class T>
Tracked<T> pad(const Tracked<T>& x, const PadParams& p, std::source_location where = std::source_location::current()) {
  const Operand<T> operands[] = {Operand<T>(x, where)};
  return ops::pad_tracked<T>(operands, p, where);
}
template <class T>
Array<T> pad(const Array<T>& x, const PadParams& p, std::source_location where = std::source_location::current()) {
  const Array<T>* inputs[] = {&x};
  return ops::pad_eval<T>(inputs, p, where);
}
// With the fill value as an operand (one element), so that it gets a gradient.
template <class X, class V>
  requires RecordsOnTape<X, V>
Tracked<element_t<X>> pad(const X& x, const V& fill, const PadParams& p, std::source_location where = std::source_location::current()) {
  using T = element_t<X>;
  const Operand<T> operands[] = {Operand<T>(x, where), Operand<T>(fill, where)};
  return ops::pad_tracked<T>(operands, p, where);
}

}  // namespace tg
