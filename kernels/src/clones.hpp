// TG_AT_TWO_LEVELS(ret, name, (params), (args), body): `ret name(params)` runs
// one of two copies of body, compiled with AVX2+FMA and for the baseline,
// picked at each call by kernel_isa() (Note [Instruction-set levels]), so
// TG_ISA caps these loops as it caps the convolutions'.
//
// Note [Two-level loops]: the elementwise loops of batch norm and the
// optimizers are templates inlined into both copies. They were target_clones
// until TG_ISA existed: the clone is picked by an ifunc resolver as the
// library loads, which sees the CPU and not the cap, and which crashed under
// ThreadSanitizer before main (GCC 12). A call here costs one predictable
// branch on a cached level; the loops run over a whole run or block per call.
#pragma once

#include "tapegrad/kernels/isa.hpp"

#define TG_AT_TWO_LEVELS(ret, name, params, args, ...)                                         \
  __attribute__((target("avx2,fma"))) ret name##_avx2 params __VA_ARGS__                      \
  ret name##_baseline params __VA_ARGS__                                                       \
  inline ret name params { return kernel_isa() >= Isa::avx2 ? name##_avx2 args : name##_baseline args; }
