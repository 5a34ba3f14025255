// Adding into a gradient or writing it. Pullback kernels take `assign` when the
// caller knows the gradient's bytes are stale (no one has written it in this
// pass): they write instead of adding, and skip a zero-filling pass.
// store<Add>(g, v) is the one place that decides; with_store instantiates a
// loop for each case, so neither tests the flag per element.
#pragma once

#include <type_traits>

namespace tg::kernels {

template <bool Add, class T>
inline void store(T& g, T v) {
  if constexpr (Add) g += v;
  else g = v;
}

// body(std::true_type) adds, body(std::false_type) assigns.
template <class Body>
void with_store(bool assign, Body&& body) {
  if (assign) body(std::false_type{});
  else body(std::true_type{});
}

}  // namespace tg::kernels
