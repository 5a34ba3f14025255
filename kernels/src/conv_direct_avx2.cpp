// The direct convolution's loops compiled with AVX2+FMA (a target pragma in
// conv_direct_passes.hpp); conv_direct.cpp calls them only where kernel_isa()
// allows AVX2.
#define TG_DIRECT_ISA avx2
#define TG_DIRECT_AVX2 1
#include "conv_direct_passes.hpp"
#include "filter_rows_passes.hpp"

#if !defined(__clang__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
namespace tg::kernels::conv_impl::avx2 {

#define TG_INSTANTIATE(T)                                                                 \
  template void forward_any<T>(const ConvGeometry&, const T*, const T*, T*, bool);        \
  template void backward_input_any<T>(const ConvGeometry&, const T*, const T*, T*, bool); \
  template void backward_weight_any<T>(const ConvGeometry&, const T*, const T*, T*);                      \
  template void rows_forward_any<T>(const BorderRows&, const T*, T, const T*, T*, bool);                  \
  template void rows_backward_input_any<T>(const BorderRows&, const T*, const T*, T*, T*, bool);          \
  template void rows_backward_weight_any<T>(const BorderRows&, const T*, T, const T*, T*);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg::kernels::conv_impl::avx2
#if !defined(__clang__)
#pragma GCC pop_options
#endif
