// Private to the convolution kernels: one function per (algorithm, pass), and
// the index arithmetic they share. The dispatcher (conv.cpp) has already
// resolved the algorithm and un-flipped the weights, so these see flip = false.
#pragma once

#include <algorithm>
#include <cstdint>

#include "tapegrad/kernels/conv.hpp"

namespace tg::kernels::conv_impl {

inline std::int64_t floor_div(std::int64_t a, std::int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return -floor_div(-a, b); }

// The outputs [begin, end) along spatial dim d whose input index
// o * stride + tap * dilation - pad_lo falls inside the input, for one kernel tap.
struct TapRange {
  std::int64_t begin, end;
  std::int64_t offset;  // input index of output 0: tap * dilation - pad_lo
  bool empty() const { return begin >= end; }
};

inline TapRange tap_range(const ConvGeometry& g, int d, std::int64_t tap) {
  const std::int64_t off = tap * g.dil[d] - g.lo[d];
  const std::int64_t b = std::max<std::int64_t>(0, ceil_div(-off, g.stride[d]));
  const std::int64_t e = std::min<std::int64_t>(g.out[d], floor_div(g.in[d] - 1 - off, g.stride[d]) + 1);
  return {b, std::max(b, e), off};
}

// Input index along dim d of output o and tap t, or -1 when it lies in the padding.
inline std::int64_t input_index(const ConvGeometry& g, int d, std::int64_t o, std::int64_t tap) {
  const std::int64_t i = o * g.stride[d] + tap * g.dil[d] - g.lo[d];
  return (i >= 0 && i < g.in[d]) ? i : -1;
}

template <class T>
void direct_forward(const ConvGeometry& g, const T* x, const T* w, T* y, bool accumulate);
template <class T>
void direct_backward_input(const ConvGeometry& g, const T* gy, const T* w, T* gx, bool accumulate);
template <class T>
void direct_backward_weight(const ConvGeometry& g, const T* x, const T* gy, T* gw);

template <class T>
void im2col_forward(const ConvGeometry& g, const T* x, const T* w, T* y, bool accumulate);
template <class T>
void im2col_backward_input(const ConvGeometry& g, const T* gy, const T* w, T* gx);
template <class T>
void im2col_backward_weight(const ConvGeometry& g, const T* x, const T* gy, T* gw);

template <class T>
void fft_forward(const ConvGeometry& g, const T* x, const T* w, T* y, bool accumulate);
template <class T>
void fft_backward_input(const ConvGeometry& g, const T* gy, const T* w, T* gx);
template <class T>
void fft_backward_weight(const ConvGeometry& g, const T* x, const T* gy, T* gw);

}  // namespace tg::kernels::conv_impl
