// The Winograd passes compiled with AVX2+FMA (a target pragma in
// conv_winograd_passes.hpp); conv_winograd.cpp calls them only on a CPU that
// has both (implicit_gemm_vectorised).
#define TG_WINOGRAD_ISA avx2
#define TG_WINOGRAD_AVX2 1
#include "conv_winograd_passes.hpp"

#if !defined(__clang__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
namespace tg::kernels::conv_impl::avx2 {

#define TG_INSTANTIATE(T)                                                                                         \
  template void forward_any<T>(const ConvGeometry&, const T*, const T*, T*, bool, const OutputEpilogue<T>*);     \
  template void backward_weight_any<T>(const ConvGeometry&, const T*, const T*, T*, const AdjointPrologue<T>*, T*); \
  template void transpose_any<T>(const T*, std::int64_t, std::int64_t, std::int64_t, T*, std::int64_t, bool, const T*);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg::kernels::conv_impl::avx2
#if !defined(__clang__)
#pragma GCC pop_options
#endif
