// The update loops of the optimizers (tg::optim, autodiff/optim.hpp): one
// pass over a list of parameter segments, split over threads in blocks, with
// PyTorch's formulas. Scalars (learning rate, bias corrections) come in as
// double and enter the loops as T, as torch.optim's do.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace tg::kernels {

// One leaf: its parameters, gradient and state buffers (nullptr where the rule has none).
template <class T>
struct UpdateSegment {
  T* param = nullptr;
  const T* grad = nullptr;
  T* state0 = nullptr;  // SGD: momentum buffer; Adam: exp_avg
  T* state1 = nullptr;  // Adam: exp_avg_sq
  T* state2 = nullptr;  // Adam with amsgrad: max_exp_avg_sq
  std::int64_t size = 0;
};

struct SgdStep {
  double lr = 0, momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false;
  bool first = false;  // the momentum buffer starts as the first (decayed) gradient
};

struct AdamStep {
  double lr = 0, beta1 = 0, beta2 = 0, eps = 0, weight_decay = 0;
  bool decoupled = false;  // AdamW: param *= 1 - lr * weight_decay, no decay in the gradient
  bool amsgrad = false;
  double bias_correction1 = 1, bias_correction2_sqrt = 1;  // 1 - beta1^t, sqrt(1 - beta2^t)
};

// A block of one segment: the unit of work handed to a thread.
struct UpdateBlock {
  std::uint32_t segment;
  std::int64_t begin, end;
};

// Cuts the segments into blocks of at most kUpdateBlock elements, in order.
inline constexpr std::int64_t kUpdateBlock = std::int64_t(1) << 14;
template <class T>
std::vector<UpdateBlock> plan_update_blocks(std::span<const UpdateSegment<T>> segments);

template <class T>
void sgd_update(std::span<const UpdateSegment<T>> segments, std::span<const UpdateBlock> blocks, const SgdStep& s);
template <class T>
void adam_update(std::span<const UpdateSegment<T>> segments, std::span<const UpdateBlock> blocks, const AdamStep& s);

// Sum of squares of x[0, n), accumulated in double, on threads when n is large.
template <class T>
double sum_of_squares(const T* x, std::int64_t n);
// x[0, n) *= factor.
template <class T>
void scale_in_place(T* x, std::int64_t n, T factor);

}  // namespace tg::kernels
