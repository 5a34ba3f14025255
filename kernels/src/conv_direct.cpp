// The direct convolution: loops over output rows, vectorised along the row.
// Used for depthwise and single-channel filtering and small kernels, where an
// im2col workspace would cost more than it saves. No workspace at all.
//
// Loop order: every output row stays in L1 while all its taps accumulate into
// it (forward), every input-gradient plane is owned by one thread (backward
// input), and every (filter, channel) kernel gradient is owned by one thread
// (backward weight), so the parallel loops need no reductions or atomics.
//
// The loops are in conv_direct_passes.hpp (and a filter's passes by rows, on
// them, in filter_rows_passes.hpp), compiled here for any x86-64 and in
// conv_direct_avx2.cpp for AVX2+FMA; this file picks one by kernel_isa().
#define TG_DIRECT_ISA portable
#include "conv_direct_passes.hpp"
#include "filter_rows_passes.hpp"

#include "tapegrad/kernels/isa.hpp"

namespace tg::kernels::conv_impl {
namespace avx2 {  // conv_direct_avx2.cpp
template <class T>
void forward_any(const ConvGeometry& g, const T* x, const T* w, T* y, bool accumulate);
template <class T>
void backward_input_any(const ConvGeometry& g, const T* gy, const T* w, T* gx, bool accumulate);
template <class T>
void backward_weight_any(const ConvGeometry& g, const T* x, const T* gy, T* gw);
template <class T>
void rows_forward_any(const BorderRows& b, const T* x, T fill, const T* w, T* y, bool accumulate);
template <class T>
void rows_backward_input_any(const BorderRows& b, const T* gy, const T* w, T* gx, T* gfill, bool accumulate);
template <class T>
void rows_backward_weight_any(const BorderRows& b, const T* x, T fill, const T* gy, T* gw);
}  // namespace avx2

template <class T>
void direct_forward(const ConvGeometry& g, const T* x, const T* w, T* y, bool accumulate) {
  if (kernel_isa() >= Isa::avx2) return avx2::forward_any(g, x, w, y, accumulate);
  portable::forward_any(g, x, w, y, accumulate);
}

template <class T>
void direct_backward_input(const ConvGeometry& g, const T* gy, const T* w, T* gx, bool accumulate) {
  if (kernel_isa() >= Isa::avx2) return avx2::backward_input_any(g, gy, w, gx, accumulate);
  portable::backward_input_any(g, gy, w, gx, accumulate);
}

template <class T>
void direct_backward_weight(const ConvGeometry& g, const T* x, const T* gy, T* gw) {
  if (kernel_isa() >= Isa::avx2) return avx2::backward_weight_any(g, x, gy, gw);
  portable::backward_weight_any(g, x, gy, gw);
}

template <class T>
void direct_rows_forward(const BorderRows& b, const T* x, T fill, const T* w, T* y, bool accumulate) {
  if (kernel_isa() >= Isa::avx2) return avx2::rows_forward_any(b, x, fill, w, y, accumulate);
  portable::rows_forward_any(b, x, fill, w, y, accumulate);
}

template <class T>
void direct_rows_backward_input(const BorderRows& b, const T* gy, const T* w, T* gx, T* gfill, bool accumulate) {
  if (kernel_isa() >= Isa::avx2) return avx2::rows_backward_input_any(b, gy, w, gx, gfill, accumulate);
  portable::rows_backward_input_any(b, gy, w, gx, gfill, accumulate);
}

template <class T>
void direct_rows_backward_weight(const BorderRows& b, const T* x, T fill, const T* gy, T* gw) {
  if (kernel_isa() >= Isa::avx2) return avx2::rows_backward_weight_any(b, x, fill, gy, gw);
  portable::rows_backward_weight_any(b, x, fill, gy, gw);
}

#define TG_INSTANTIATE(T)                                                                    \
  template void direct_forward<T>(const ConvGeometry&, const T*, const T*, T*, bool);        \
  template void direct_backward_input<T>(const ConvGeometry&, const T*, const T*, T*, bool);      \
  template void direct_backward_weight<T>(const ConvGeometry&, const T*, const T*, T*);                  \
  template void direct_rows_forward<T>(const BorderRows&, const T*, T, const T*, T*, bool);              \
  template void direct_rows_backward_input<T>(const BorderRows&, const T*, const T*, T*, T*, bool);      \
  template void direct_rows_backward_weight<T>(const BorderRows&, const T*, T, const T*, T*);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg::kernels::conv_impl
