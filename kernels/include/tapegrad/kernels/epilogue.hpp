// What a kernel applies to its finished output while it is still in cache: a
// per-channel bias, then an activation (the tape compiler's epilogue fusion,
// Note [Epilogue fusion] in autodiff/compile.hpp). The kernels know no ops: the
// activation is a plain function pointer with a context.
#pragma once

#include <cstdint>

namespace tg::kernels {

template <class T>
struct OutputEpilogue {
  const T* bias = nullptr;  // one value per output channel, or none
  void (*activation)(const void* context, T* values, std::int64_t n) = nullptr;  // in place, or none
  const void* context = nullptr;

  // values: n outputs of output channel `channel`.
  void apply(T* values, std::int64_t n, std::int64_t channel) const {
    if (bias)
      for (std::int64_t i = 0; i < n; ++i) values[i] += bias[channel];
    if (activation) activation(context, values, n);
  }
  // The activation alone: for a kernel that adds the bias itself (Note [Bias in the transpose]).
  OutputEpilogue without_bias() const { return {nullptr, activation, context}; }
};

// Note [Adjoint prologue]: the backward half of an epilogue. A backward pass
// of the op that produced the activation's input first applies the
// activation's pullback to the output adjoint gy, in place, and adds each
// channel's sum of the result to the bias gradient, while the rows are in
// cache: the weight gradient's implicit GEMM does it as it packs gy
// (conv_backward_weight_folded in conv.hpp), instead of a pass of its own over
// gy and another for the bias.
template <class T>
struct AdjointPrologue {
  const T* output = nullptr;  // the activation's output, laid out like gy
  // adjoint[i] = f'(x[i]) * adjoint[i], from the output; or none
  void (*pullback)(const void* context, const T* output, T* adjoint, std::int64_t n) = nullptr;
  const void* context = nullptr;
  T* bias_grad = nullptr;  // one per output channel, += the channel's sum; or none

  // The pullback on n adjoints at `offset` in gy.
  void apply(T* adjoint, std::int64_t offset, std::int64_t n) const {
    if (pullback) pullback(context, output + offset, adjoint, n);
  }
};

}  // namespace tg::kernels
