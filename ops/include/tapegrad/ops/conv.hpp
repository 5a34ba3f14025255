// Deep-learning convolution: conv and conv_transpose, one instruction each.
//
//   tg::conv(x, w, {.stride = {2}, .padding = {1}})          x (N, C, spatial...), w (K, C/groups, kernel...)
//   tg::conv(x, w, bias, {.padding = {2}})                   bias (K)
//   tg::conv_transpose(x, w, {.stride = {2}, .output_padding = {1}})   w (C, K/groups, kernel...)
//
// 1, 2 or 3 spatial dims. The semantics are PyTorch's conv1d/2d/3d and
// conv_transpose1d/2d/3d for the same arguments: cross-correlation by default,
// zero padding, output = floor((in + lo + hi - dilation*(k-1) - 1) / stride) + 1.
// flip = true makes it a true convolution (the kernel reversed along every
// spatial dim). Each list in ConvParams holds one value per spatial dim or a
// single value for all of them.
//
// The algorithm of every pass (forward, backward-input, backward-weight) is
// chosen per call by the cost rule in kernels/conv.hpp (Note [Choosing a
// convolution algorithm]), can be forced here, and is printed by tg::dump.
#pragma once

#include <source_location>
#include <span>
#include <vector>

#include "tapegrad/autodiff/tracked.hpp"
#include "tapegrad/kernels/conv.hpp"

namespace tg {

using kernels::ConvAlgorithm;

struct ConvParams {
  DimList stride{};          // default 1
  DimList padding{};         // zeros on both sides; default 0
  DimList pad_lo{}, pad_hi{};  // asymmetric padding; each, when given, replaces `padding` on its side
  DimList dilation{};        // default 1
  std::int64_t groups = 1;                   // C and K divisible by it; groups = C is depthwise
  bool flip = false;                         // true convolution; default cross-correlation
  DimList output_padding{};  // conv_transpose only: extra outputs on the high side, < max(stride, dilation)
  ConvAlgorithm algorithm = ConvAlgorithm::automatic;  // every pass, unless one of the three below is set
  ConvAlgorithm forward_algorithm = ConvAlgorithm::automatic;
  ConvAlgorithm backward_input_algorithm = ConvAlgorithm::automatic;
  ConvAlgorithm backward_weight_algorithm = ConvAlgorithm::automatic;
};

namespace ops {
template <class T>
Tracked<T> conv_tracked(std::span<const Operand<T>> operands, const ConvParams& p, bool transpose,
                        const std::source_location& where);
template <class T>
Array<T> conv_eval(std::span<const Array<T>* const> inputs, const ConvParams& p, bool transpose,
                   const std::source_location& where);
// d<gy, conv(x, w; p)>/dw for w of shape `weight`, recorded: the weights' part
// of a conv's recorded pullback (Note [Recorded pullbacks]).
template <class T>
Tracked<T> conv_weight_grad_tracked(const Operand<T>& x, const Operand<T>& gy, const ConvParams& p, const Shape& weight,
                                    const std::source_location& where);
}  // namespace ops

#define TG_CONV_FAMILY(name, transpose)                                                                             \
  template <class X, class W>                                                                                       \
    requires RecordsOnTape<X, W>                                                                                    \
  Tracked<element_t<X>> name(const X& x, const W& w, const ConvParams& p = {},                                      \
                             std::source_location where = std::source_location::current()) {                        \
    using T = element_t<X>;                                                                                         \
    const Operand<T> ops[] = {Operand<T>(x, where), Operand<T>(w, where)};                                          \
    return ops::conv_tracked<T>(ops, p, transpose, where);                                                          \
  }                                                                                                                 \
  template <class X, class W, class B>                                                                              \
    requires RecordsOnTape<X, W, B>                                                                                 \
  Tracked<element_t<X>> name(const X& x, const W& w, const B& bias, const ConvParams& p = {},                       \
                             std::source_location where = std::source_location::current()) {                        \
    using T = element_t<X>;                                                                                         \
    const Operand<T> ops[] = {Operand<T>(x, where), Operand<T>(w, where), Operand<T>(bias, where)};                 \
    return ops::conv_tracked<T>(ops, p, transpose, where);                                                          \
  }                                                                                                                 \
  template <class T>                                                                                                \
  Array<T> name(const Array<T>& x, const Array<T>& w, const ConvParams& p = {},                                     \
                std::source_location where = std::source_location::current()) {                                     \
    const Array<T>* in[] = {&x, &w};                                                                                \
    return ops::conv_eval<T>(in, p, transpose, where);                                                              \
  }                                                                                                                 \
  template <class T>                                                                                                \
  Array<T> name(const Array<T>& x, const Array<T>& w, const Array<T>& bias, const ConvParams& p = {},               \
                std::source_location where = std::source_location::current()) {                                     \
    const Array<T>* in[] = {&x, &w, &bias};                                                                         \
    return ops::conv_eval<T>(in, p, transpose, where);                                                              \
  }
TG_CONV_FAMILY(conv, false)
TG_CONV_FAMILY(conv_transpose, true)
#undef TG_CONV_FAMILY

}  // namespace tg
