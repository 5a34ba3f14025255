// Zmm<T>: one 512-bit register of T through AVX-512 intrinsics, each function
// compiled for AVX-512 by its own target attribute (so it works under Clang,
// which has no target pragma). Call only from a function with the same target,
// on a CPU where kernel_isa() allows avx512: implicit GEMM's micro-kernel
// (conv_implicit_gemm.cpp) and the shifted-copy passes (conv_shifted.cpp).
#pragma once

#include <immintrin.h>

#include <cstdint>

#define TG_AVX512 __attribute__((target("avx512f")))

namespace tg::kernels::conv_impl {

// One specialisation per element type: the intrinsics differ in name only.
template <class T>
struct Zmm;
template <>
struct Zmm<float> {
  using V = __m512;
  static constexpr int kLanes = 16;
  TG_AVX512 static V zero() { return _mm512_setzero_ps(); }
  TG_AVX512 static V load(const float* p) { return _mm512_loadu_ps(p); }
  TG_AVX512 static V set1(float v) { return _mm512_set1_ps(v); }
  TG_AVX512 static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  TG_AVX512 static V add(V a, V b) { return _mm512_add_ps(a, b); }
  TG_AVX512 static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  // The first n < kLanes lanes: loaded (the others zero, their memory never
  // touched), or stored (the others left as they are).
  TG_AVX512 static V load_first(const float* p, std::int64_t n) { return load_lanes(p, (1u << n) - 1); }
  TG_AVX512 static void store_first(float* p, V v, std::int64_t n) {
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), v);
  }
  // The lanes set in `lanes`, the others zero (their memory never touched).
  TG_AVX512 static V load_lanes(const float* p, unsigned lanes) {
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>(lanes), p);
  }
};
template <>
struct Zmm<double> {
  using V = __m512d;
  static constexpr int kLanes = 8;
  TG_AVX512 static V zero() { return _mm512_setzero_pd(); }
  TG_AVX512 static V load(const double* p) { return _mm512_loadu_pd(p); }
  TG_AVX512 static V set1(double v) { return _mm512_set1_pd(v); }
  TG_AVX512 static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  TG_AVX512 static V add(V a, V b) { return _mm512_add_pd(a, b); }
  TG_AVX512 static void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  TG_AVX512 static V load_first(const double* p, std::int64_t n) { return load_lanes(p, (1u << n) - 1); }
  TG_AVX512 static void store_first(double* p, V v, std::int64_t n) {
    _mm512_mask_storeu_pd(p, static_cast<__mmask8>((1u << n) - 1), v);
  }
  TG_AVX512 static V load_lanes(const double* p, unsigned lanes) {
    return _mm512_maskz_loadu_pd(static_cast<__mmask8>(lanes), p);
  }
};

}  // namespace tg::kernels::conv_impl
