// Losses: mean squared error, cross-entropy with integer class labels, binary
// cross-entropy with logits, L1 and smooth L1.
//
// cross_entropy(logits (N, C), labels (N)[, weights (C)][, {.label_smoothing}]):
// mean over the batch of -log_softmax(logits)[i, labels[i]], PyTorch's
// weighted mean and label smoothing (Note [Cross-entropy as PyTorch], loss.cpp). Labels are class indices 0..C-1, given as a
// std::vector<int64_t> or as an Array/Tracked of integer values (so that a
// recorded tape can be replayed on a new batch with new labels).
// Note [Labels are not differentiable]: the loss is piecewise constant in the
// labels, so their derivative is zero wherever it exists; a tracked labels
// input therefore receives a zero gradient.
#pragma once

#include <source_location>
#include <vector>

#include "tapegrad/autodiff/tracked.hpp"

namespace tg {

// cross_entropy's options (PyTorch's): the target is (1 - label_smoothing) on
// the label and label_smoothing / C on every class.
struct CrossEntropyParams {
  double label_smoothing = 0;
};

namespace ops {
template <class T>
Tracked<T> mse_tracked(const Operand<T>& pred, const Operand<T>& target, const std::source_location& where);
template <class T>
Tracked<T> cross_entropy_tracked(std::span<const Operand<T>> operands, const CrossEntropyParams& p, const std::source_location& where);
template <class T>
Array<T> cross_entropy_eval(std::span<const Array<T>* const> inputs, const CrossEntropyParams& p, const std::source_location& where);
enum class PointwiseLoss : std::uint8_t { bce_with_logits, l1, smooth_l1 };
template <class T>
Tracked<T> pointwise_loss_tracked(PointwiseLoss loss, const Operand<T>& pred, const Operand<T>& target, double beta,
                                  const std::source_location& where);
template <class T>
Array<T> pointwise_loss_eval(PointwiseLoss loss, const Array<T>& pred, const Array<T>& target, double beta,
                             const std::source_location& where);
}  // namespace ops

// Pointwise losses, the mean over equal shapes (PyTorch's reduction='mean'; no broadcasting):
//   bce_with_logits(logits, targets): max(x, 0) - x t + log(1 + exp(-|x|)), targets in [0, 1]
//   l1_loss(pred, target): |p - t|
//   smooth_l1_loss(pred, target, beta = 1): 0.5 d^2 / beta where |d| < beta, else |d| - beta / 2
#define TG_POINTWISE_LOSS(name, kind)                                                                                \
  template <class A, class B>                                                                                        \
    requires RecordsOnTape<A, B>                                                                                     \
  Tracked<element_t<A>> name(const A& pred, const B& target, std::source_location where = std::source_location::current()) { \
    using T = element_t<A>;                                                                                          \
    return ops::pointwise_loss_tracked<T>(kind, Operand<T>(pred, where), Operand<T>(target, where), 1.0, where);    \
  }                                                                                                                  \
  template <class T>                                                                                                 \
  Array<T> name(const Array<T>& pred, const Array<T>& target, std::source_location where = std::source_location::current()) { \
    return ops::pointwise_loss_eval<T>(kind, pred, target, 1.0, where);                                             \
  }
TG_POINTWISE_LOSS(bce_with_logits, ops::PointwiseLoss::bce_with_logits)
TG_POINTWISE_LOSS(l1_loss, ops::PointwiseLoss::l1)
#undef TG_POINTWISE_LOSS
template <class A, class B>
  requires RecordsOnTape<A, B>
Tracked<element_t<A>> smooth_l1_loss(const A& pred, const B& target, double beta = 1.0,
                                     std::source_location where = std::source_location::current()) {
  using T = element_t<A>;
  return ops::pointwise_loss_tracked<T>(ops::PointwiseLoss::smooth_l1, Operand<T>(pred, where), Operand<T>(target, where),
                                        beta, where);
}
template <class T>
Array<T> smooth_l1_loss(const Array<T>& pred, const Array<T>& target, double beta = 1.0,
                        std::source_location where = std::source_location::current()) {
  return ops::pointwise_loss_eval<T>(ops::PointwiseLoss::smooth_l1, pred, target, beta, where);
}

// mean((pred - target)^2); shapes must be equal (no silent broadcasting).
template <class A, class B>
  requires RecordsOnTape<A, B>
Tracked<element_t<A>> mse(const A& pred, const B& target, std::source_location where = std::source_location::current()) {
  using T = element_t<A>;
  return ops::mse_tracked<T>(Operand<T>(pred, where), Operand<T>(target, where), where);
}
template <class T>
Array<T> mse(const Array<T>& pred, const Array<T>& target, std::source_location where = std::source_location::current());

template <class A, class B>
  requires RecordsOnTape<A, B>
Tracked<element_t<A>> cross_entropy(const A& logits, const B& labels, const CrossEntropyParams& p = {},
                                    std::source_location where = std::source_location::current()) {
  using T = element_t<A>;
  const Operand<T> operands[] = {Operand<T>(logits, where), Operand<T>(labels, where)};
  return ops::cross_entropy_tracked<T>(operands, p, where);
}
// With class weights (C): each row counts w[label], the mean divides by their sum.
template <class A, class B, class W>
  requires RecordsOnTape<A, B, W>
Tracked<element_t<A>> cross_entropy(const A& logits, const B& labels, const W& weights, const CrossEntropyParams& p = {},
                                    std::source_location where = std::source_location::current()) {
  using T = element_t<A>;
  const Operand<T> operands[] = {Operand<T>(logits, where), Operand<T>(labels, where), Operand<T>(weights, where)};
  return ops::cross_entropy_tracked<T>(operands, p, where);
}
template <class T>
Tracked<T> cross_entropy(const Tracked<T>& logits, const std::vector<std::int64_t>& labels, const CrossEntropyParams& p = {},
                         std::source_location where = std::source_location::current());
template <class T>
Array<T> cross_entropy(const Array<T>& logits, const Array<T>& labels, const CrossEntropyParams& p = {},
                       std::source_location where = std::source_location::current()) {
  const Array<T>* inputs[] = {&logits, &labels};
  return ops::cross_entropy_eval<T>(inputs, p, where);
}
template <class T>
Array<T> cross_entropy(const Array<T>& logits, const Array<T>& labels, const Array<T>& weights, const CrossEntropyParams& p = {},
                       std::source_location where = std::source_location::current()) {
  const Array<T>* inputs[] = {&logits, &labels, &weights};
  return ops::cross_entropy_eval<T>(inputs, p, where);
}
template <class T>
Array<T> cross_entropy(const Array<T>& logits, const std::vector<std::int64_t>& labels, const CrossEntropyParams& p = {},
                       std::source_location where = std::source_location::current());

}  // namespace tg
