// The shifted copies' forward and weight pass compiled for AVX2 + FMA
// (conv_shifted_passes.hpp, sized for the 16 ymm registers); conv_shifted.cpp
// calls them only where kernel_isa() is avx2.
#include "ymm.hpp"
#define TG_SHIFTED_ISA avx2
#define TG_SHIFTED_VEC Ymm
#define TG_SHIFTED_TARGET TG_AVX2
#define TG_SHIFTED_VECTORS 3
#define TG_SHIFTED_REGISTERS 16
#include "conv_shifted_passes.hpp"

namespace tg::kernels::conv_impl::avx2 {

#define TG_INSTANTIATE(T)                                                                                       \
  template void shifted_forward<T>(const ConvGeometry&, const T*, const T*, T*, bool, const OutputEpilogue<T>*); \
  template void backward_weight<T>(const ConvGeometry&, const T*, const T*, T*, const AdjointPrologue<T>*, T*);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg::kernels::conv_impl::avx2
