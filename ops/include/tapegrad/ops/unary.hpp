// Unary math, elementwise: exp, log, sqrt, abs, tanh, sigmoid, relu, leaky_relu, softplus.
//
// Note [Kinks]: at a kink the derivative is one of the one-sided derivatives,
// fixed and documented: relu'(0) = 0, leaky_relu'(0) = slope, abs'(0) = 0.
#pragma once

#include <source_location>

#include "tapegrad/autodiff/tracked.hpp"

namespace tg {

// The one-argument functions without attributes, one list (Note [Op tables] in
// ops/src/op_table.hpp): it declares them here and defines and registers them in unary.cpp.
#define TG_UNARY_FUNCTIONS(X) \
  X(exp)                      \
  X(log)                      \
  X(sqrt)                     \
  X(abs)                      \
  X(tanh)                     \
  X(sigmoid) /* 1 / (1 + exp(-x)), computed without overflow */ \
  X(relu)                     \
  X(softplus) /* log(1 + exp(x)), computed without overflow */

#define TG_DECLARE_UNARY(name)                                                                        \
  template <class T>                                                                                  \
  Tracked<T> name(const Tracked<T>& x, std::source_location where = std::source_location::current()); \
  template <class T>                                                                                  \
  Array<T> name(const Array<T>& x, std::source_location where = std::source_location::current());
TG_UNARY_FUNCTIONS(TG_DECLARE_UNARY)
#undef TG_DECLARE_UNARY

// x where x > 0, slope * x elsewhere.
template <class T>
Tracked<T> leaky_relu(const Tracked<T>& x, std::type_identity_t<T> slope = T(0.01),
                      std::source_location where = std::source_location::current());
template <class T>
Array<T> leaky_relu(const Array<T>& x, std::type_identity_t<T> slope = T(0.01),
                    std::source_location where = std::source_location::current());

}  // namespace tg
