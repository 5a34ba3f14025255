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
};

}  // namespace tg::kernels
