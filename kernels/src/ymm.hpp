// Ymm<T>: one 256-bit register of T through AVX2 + FMA intrinsics, with the
// interface of Zmm<T> (zmm.hpp), so the shifted copies' forward
// (conv_shifted_passes.hpp) compiles for either. Each function has its own
// target attribute; call only from a function with the same target, on a CPU
// where kernel_isa() allows avx2. The masked loads and stores are vmaskmov:
// lanes outside the mask are neither read nor written, and do not fault
// (Intel's manual says so; AMD's calls it implementation dependent, and
// compilers' masked loads rely on it there alike).
#pragma once

#include <immintrin.h>

#include <cstdint>

#define TG_AVX2 __attribute__((target("avx2,fma")))

namespace tg::kernels::conv_impl {

template <class T>
struct Ymm;
template <>
struct Ymm<float> {
  using V = __m256;
  static constexpr int kLanes = 8;
  TG_AVX2 static V zero() { return _mm256_setzero_ps(); }
  TG_AVX2 static V load(const float* p) { return _mm256_loadu_ps(p); }
  TG_AVX2 static V set1(float v) { return _mm256_set1_ps(v); }
  TG_AVX2 static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  TG_AVX2 static V add(V a, V b) { return _mm256_add_ps(a, b); }
  TG_AVX2 static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  // The first n < kLanes lanes: loaded (the others zero), or stored (the others left as they are).
  TG_AVX2 static V load_first(const float* p, std::int64_t n) { return _mm256_maskload_ps(p, first(n)); }
  TG_AVX2 static void store_first(float* p, V v, std::int64_t n) { _mm256_maskstore_ps(p, first(n), v); }
  // The lanes set in `lanes`, the others zero.
  TG_AVX2 static V load_lanes(const float* p, unsigned lanes) {
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_maskload_ps(p, _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(int(lanes)), bit), bit));
  }
  TG_AVX2 static __m256i first(std::int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
};
template <>
struct Ymm<double> {
  using V = __m256d;
  static constexpr int kLanes = 4;
  TG_AVX2 static V zero() { return _mm256_setzero_pd(); }
  TG_AVX2 static V load(const double* p) { return _mm256_loadu_pd(p); }
  TG_AVX2 static V set1(double v) { return _mm256_set1_pd(v); }
  TG_AVX2 static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  TG_AVX2 static V add(V a, V b) { return _mm256_add_pd(a, b); }
  TG_AVX2 static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  TG_AVX2 static V load_first(const double* p, std::int64_t n) { return _mm256_maskload_pd(p, first(n)); }
  TG_AVX2 static void store_first(double* p, V v, std::int64_t n) { _mm256_maskstore_pd(p, first(n), v); }
  TG_AVX2 static V load_lanes(const double* p, unsigned lanes) {
    const __m256i bit = _mm256_setr_epi64x(1, 2, 4, 8);
    return _mm256_maskload_pd(p, _mm256_cmpeq_epi64(_mm256_and_si256(_mm256_set1_epi64x(lanes), bit), bit));
  }
  TG_AVX2 static __m256i first(std::int64_t n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
  }
};

}  // namespace tg::kernels::conv_impl
