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
