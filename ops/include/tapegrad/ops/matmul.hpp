// matmul: (..., m, k) @ (..., k, n) -> (..., m, n). Batch dimensions broadcast (NumPy
// semantics); both operands must have rank >= 2.
#pragma once

#include <source_location>

#include "tapegrad/autodiff/tracked.hpp"

namespace tg {

namespace ops {
template <class T>
Tracked<T> matmul_tracked(const Operand<T>& a, const Operand<T>& b, const std::source_location& where);
}

template <class A, class B>
  requires RecordsOnTape<A, B>
Tracked<element_t<A>> matmul(const A& a, const B& b, std::source_location where = std::source_location::current()) {
  using T = element_t<A>;
  return ops::matmul_tracked<T>(Operand<T>(a, where), Operand<T>(b, where), where);
}
template <class T>
Array<T> matmul(const Array<T>& a, const Array<T>& b, std::source_location where = std::source_location::current());

}  // namespace tg
