// Unary math, elementwise: exp, log, sqrt, abs, tanh, sigmoid, relu, leaky_relu, softplus.
//
// Note [Kinks]: at a kink the derivative is one of the one-sided derivatives,
// fixed and documented: relu'(0) = 0, leaky_relu'(0) = slope, abs'(0) = 0.
#pragma once

#include <source_location>

#include "tapegrad/autodiff/tracked.hpp"

namespace tg {

#define TG_DECLARE_UNARY(name)                                                                        \
  template <class T>                                                                                  \
  Tracked<T> name(const Tracked<T>& x, std::source_location where = std::source_location::current()); \
  template <class T>                                                                                  \
  Array<T> name(const Array<T>& x, std::source_location where = std::source_location::current());
TG_DECLARE_UNARY(exp)
TG_DECLARE_UNARY(log)
TG_DECLARE_UNARY(sqrt)
TG_DECLARE_UNARY(abs)
TG_DECLARE_UNARY(tanh)
TG_DECLARE_UNARY(sigmoid)  // 1 / (1 + exp(-x)), computed without overflow
TG_DECLARE_UNARY(relu)
TG_DECLARE_UNARY(softplus)  // log(1 + exp(x)), computed without overflow
#undef TG_DECLARE_UNARY

// x where x > 0, slope * x elsewhere.
template <class T>
Tracked<T> leaky_relu(const Tracked<T>& x, std::type_identity_t<T> slope = T(0.01),
                      std::source_location where = std::source_location::current());
template <class T>
Array<T> leaky_relu(const Array<T>& x, std::type_identity_t<T> slope = T(0.01),
                    std::source_location where = std::source_location::current());

}  // namespace tg
