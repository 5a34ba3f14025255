// Losses: mean squared error, and cross-entropy with integer class labels.
//
// cross_entropy(logits (N, C), labels (N)): mean over the batch of
// -log_softmax(logits)[i, labels[i]]. Labels are class indices 0..C-1, given as a
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

namespace ops {
template <class T>
Tracked<T> mse_tracked(const Operand<T>& pred, const Operand<T>& target, const std::source_location& where);
template <class T>
Tracked<T> cross_entropy_tracked(const Operand<T>& logits, const Operand<T>& labels, const std::source_location& where);
}  // namespace ops

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
Tracked<element_t<A>> cross_entropy(const A& logits, const B& labels,
                                    std::source_location where = std::source_location::current()) {
  using T = element_t<A>;
  return ops::cross_entropy_tracked<T>(Operand<T>(logits, where), Operand<T>(labels, where), where);
}
template <class T>
Tracked<T> cross_entropy(const Tracked<T>& logits, const std::vector<std::int64_t>& labels,
                         std::source_location where = std::source_location::current());
template <class T>
Array<T> cross_entropy(const Array<T>& logits, const Array<T>& labels, std::source_location where = std::source_location::current());
template <class T>
Array<T> cross_entropy(const Array<T>& logits, const std::vector<std::int64_t>& labels,
                       std::source_location where = std::source_location::current());

}  // namespace tg
