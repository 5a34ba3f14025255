// Unary math, elementwise: exp, log, sqrt, abs, tanh, sigmoid, relu, leaky_relu,
// softplus, erf, and the activations gelu (exact and tanh), silu, elu, hardswish, clamp.
//
// Note [Kinks]: at a kink the derivative is one of the one-sided derivatives,
// fixed and documented (PyTorch's choices): relu'(0) = 0, leaky_relu'(0) =
// slope, abs'(0) = 0, elu'(0) = alpha, hardswish'(-3) = -1/2 and
// hardswish'(3) = 3/2 (the inner formula), clamp passes the adjoint where
// lo <= x <= hi (both ends included).
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
  X(softplus) /* log(1 + exp(x)), computed without overflow */ \
  X(gelu)      /* x Phi(x), Phi the standard normal CDF (PyTorch's approximate='none') */ \
  X(gelu_tanh) /* x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2 (approximate='tanh') */ \
  X(silu)      /* x sigmoid(x) (swish) */ \
  X(hardswish) /* x relu6(x + 3) / 6 */ \
  X(erf)       /* the error function, 2/sqrt(pi) * integral of exp(-t^2) from 0 to x */

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

// x where x > 0, alpha (exp(x) - 1) elsewhere.
template <class T>
Tracked<T> elu(const Tracked<T>& x, std::type_identity_t<T> alpha = T(1),
               std::source_location where = std::source_location::current());
template <class T>
Array<T> elu(const Array<T>& x, std::type_identity_t<T> alpha = T(1),
             std::source_location where = std::source_location::current());

// min(max(x, lo), hi); lo <= hi.
template <class T>
Tracked<T> clamp(const Tracked<T>& x, std::type_identity_t<T> lo, std::type_identity_t<T> hi,
                 std::source_location where = std::source_location::current());
template <class T>
Array<T> clamp(const Array<T>& x, std::type_identity_t<T> lo, std::type_identity_t<T> hi,
               std::source_location where = std::source_location::current());

}  // namespace tg
