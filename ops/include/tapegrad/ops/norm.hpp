// Normalisation layers, PyTorch's semantics, each one instruction:
//
//   template <class A> struct ConvBn { A w, gamma, beta; tg::BatchNormState<A> bn; };
//   ConvBn<tg::Array<float>> p{w, tg::Array<float>::ones({C}), tg::Array<float>::zeros({C}),
//                              tg::batch_norm_state<float>(C)};
//   auto y = tg::batch_norm(tg::conv(x, p.w), p.gamma, p.beta, p.bn, {.training = true});
//   auto z = tg::layer_norm(x, gamma, beta, {.dims = 1});         // over the last dim
//   auto u = tg::group_norm(x, gamma, beta, {.groups = 8});       // x (N, C, ...), gamma (C)
//   auto v = tg::instance_norm(x, gamma, beta);                   // group_norm with C groups
//
// batch_norm normalises x (N, C, spatial...) per channel. In training it uses
// the batch's mean and biased variance, and moves the running statistics
// towards the batch's (unbiased variance) by `momentum`, on every forward run:
// the recording, and every replay of a recorded or compiled program, once.
// In evaluation it uses the running statistics and changes nothing. The
// running statistics are tg::State leaves (Note [State leaves]): they live in
// the model, are saved by checkpoints, get no gradient and are not touched by
// optimizers.
#pragma once

#include <source_location>

#include "tapegrad/autodiff/tracked.hpp"
#include "tapegrad/autodiff/tree.hpp"

namespace tg {

// Running mean and variance of a batch_norm layer, (C) each.
template <class A>
struct BatchNormState {
  State<A> mean, var;
};
// Mean 0 and variance 1 for C channels (PyTorch's initial running statistics).
template <class T>
BatchNormState<Array<T>> batch_norm_state(std::int64_t channels) {
  return {{Array<T>::zeros({channels})}, {Array<T>::ones({channels})}};
}

struct BatchNormParams {
  bool training = true;   // batch statistics, running statistics updated; false: running statistics used
  double momentum = 0.1;  // running = (1 - momentum) * running + momentum * batch
  double eps = 1e-5;
};
struct LayerNormParams {
  std::int64_t dims = 1;  // normalise over the last `dims` dims; gamma and beta have their shape
  double eps = 1e-5;
};
struct GroupNormParams {
  std::int64_t groups = 1;  // divides C; C groups is instance norm
  double eps = 1e-5;
};

namespace ops {
template <class T>
Tracked<T> batch_norm_tracked(std::span<const Operand<T>> operands, const BatchNormParams& p, const std::source_location& where);
template <class T>
Array<T> batch_norm_eval(std::span<const Array<T>* const> inputs, const BatchNormParams& p, const std::source_location& where);
template <class T>
Tracked<T> layer_norm_tracked(std::span<const Operand<T>> operands, const LayerNormParams& p, const std::source_location& where);
template <class T>
Array<T> layer_norm_eval(std::span<const Array<T>* const> inputs, const LayerNormParams& p, const std::source_location& where);
template <class T>
Tracked<T> group_norm_tracked(std::span<const Operand<T>> operands, const GroupNormParams& p, const std::source_location& where);
template <class T>
Array<T> group_norm_eval(std::span<const Array<T>* const> inputs, const GroupNormParams& p, const std::source_location& where);
}  // namespace ops

template <class X, class G, class B>
  requires RecordsOnTape<X, G, B>
Tracked<element_t<X>> batch_norm(const X& x, const G& gamma, const B& beta, const BatchNormState<Tracked<element_t<X>>>& state,
                                 const BatchNormParams& p = {}, std::source_location where = std::source_location::current()) {
  using T = element_t<X>;
  const Operand<T> operands[] = {Operand<T>(x, where), Operand<T>(gamma, where), Operand<T>(beta, where),
                                 Operand<T>(state.mean.value, where), Operand<T>(state.var.value, where)};
  return ops::batch_norm_tracked<T>(operands, p, where);
}
// On plain Arrays: training mode updates `state` in place.
template <class T>
Array<T> batch_norm(const Array<T>& x, const Array<T>& gamma, const Array<T>& beta, const BatchNormState<Array<T>>& state,
                    const BatchNormParams& p = {}, std::source_location where = std::source_location::current()) {
  const Array<T>* inputs[] = {&x, &gamma, &beta, &state.mean.value, &state.var.value};
  return ops::batch_norm_eval<T>(inputs, p, where);
}

// Layer norm with gamma and beta (shape: x's last p.dims dims), or without (no affine step).
template <class X, class G, class B>
  requires RecordsOnTape<X, G, B>
Tracked<element_t<X>> layer_norm(const X& x, const G& gamma, const B& beta, const LayerNormParams& p = {},
                                 std::source_location where = std::source_location::current()) {
  using T = element_t<X>;
  const Operand<T> operands[] = {Operand<T>(x, where), Operand<T>(gamma, where), Operand<T>(beta, where)};
  return ops::layer_norm_tracked<T>(operands, p, where);
}
template <class T>
Tracked<T> layer_norm(const Tracked<T>& x, const LayerNormParams& p = {}, std::source_location where = std::source_location::current()) {
  const Operand<T> operands[] = {Operand<T>(x, where)};
  return ops::layer_norm_tracked<T>(operands, p, where);
}
template <class T>
Array<T> layer_norm(const Array<T>& x, const Array<T>& gamma, const Array<T>& beta, const LayerNormParams& p = {},
                    std::source_location where = std::source_location::current()) {
  const Array<T>* inputs[] = {&x, &gamma, &beta};
  return ops::layer_norm_eval<T>(inputs, p, where);
}

template <class X, class G, class B>
  requires RecordsOnTape<X, G, B>
Tracked<element_t<X>> group_norm(const X& x, const G& gamma, const B& beta, const GroupNormParams& p,
                                 std::source_location where = std::source_location::current()) {
  using T = element_t<X>;
  const Operand<T> operands[] = {Operand<T>(x, where), Operand<T>(gamma, where), Operand<T>(beta, where)};
  return ops::group_norm_tracked<T>(operands, p, where);
}
template <class T>
Array<T> group_norm(const Array<T>& x, const Array<T>& gamma, const Array<T>& beta, const GroupNormParams& p,
                    std::source_location where = std::source_location::current()) {
  const Array<T>* inputs[] = {&x, &gamma, &beta};
  return ops::group_norm_eval<T>(inputs, p, where);
}
// Instance norm: each (sample, channel) plane normalised alone; group_norm with C groups.
template <class X, class G, class B>
auto instance_norm(const X& x, const G& gamma, const B& beta, double eps = 1e-5,
                   std::source_location where = std::source_location::current()) {
  const Shape s = x.shape();
  return group_norm(x, gamma, beta, {.groups = s.rank() >= 2 ? s[1] : 1, .eps = eps}, where);
}

}  // namespace tg
