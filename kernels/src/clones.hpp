// TG_AVX2_CLONES: an AVX2 and a baseline copy of a function, one picked when
// the library loads (target_clones; Note [Update loops] in optim.cpp).
//
// Note [Clones under ThreadSanitizer]: the picking is an ifunc resolver that
// runs while the dynamic loader relocates the program, before any sanitizer
// runtime exists; ThreadSanitizer instruments it, and the program crashed
// before main (GCC 12). Under it the baseline copy alone is built.
#pragma once

#include "tapegrad/kernels/sanitizer.hpp"

#if TG_THREAD_SANITIZER
#define TG_AVX2_CLONES
#else
#define TG_AVX2_CLONES __attribute__((target_clones("avx2", "default")))
#endif
