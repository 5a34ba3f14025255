// The machine's measured single-precision FMA peak at one instruction-set
// level and thread count (benchmarks only): every thread runs a loop of
// independent FMAs on registers, long enough to reach the steady clock.
#pragma once

#include <immintrin.h>
#include <omp.h>

#include <chrono>
#include <algorithm>
#include <cstdint>
#include <cstdio>

namespace tgbench {

enum class FmaLevel { avx2, avx512 };

inline bool cpu_has(FmaLevel level) {
  __builtin_cpu_init();
  return level == FmaLevel::avx2 ? __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
                                 : __builtin_cpu_supports("avx512f");
}

namespace detail {
// 12 independent accumulators: more than the FMA latency times the FMA ports.
__attribute__((target("avx2,fma"), noinline)) inline float fma_loop_avx2(std::int64_t iterations) {
  __m256 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm256_set1_ps(float(i));
  const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (std::int64_t n = 0; n < iterations; ++n)
    for (int i = 0; i < 12; ++i) a[i] = _mm256_fmadd_ps(a[i], m, c);
  __m256 s = a[0];
  for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, a[i]);
  return _mm256_cvtss_f32(s);
}
__attribute__((target("avx512f"), noinline)) inline float fma_loop_avx512(std::int64_t iterations) {
  __m512 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_ps(float(i));
  const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
  for (std::int64_t n = 0; n < iterations; ++n)
    for (int i = 0; i < 12; ++i) a[i] = _mm512_fmadd_ps(a[i], m, c);
  __m512 s = a[0];
  for (int i = 1; i < 12; ++i) s = _mm512_add_ps(s, a[i]);
  return _mm512_reduce_add_ps(s);
}
}  // namespace detail

// GFLOP/s of `threads` threads running FMAs at `level` (0 when the CPU lacks it); the best of 3 runs.
inline double fma_peak_gflops(FmaLevel level, int threads) {
  if (!cpu_has(level)) return 0;
  const std::int64_t iterations = 20'000'000;
  const double flops_per_iteration = 12.0 * (level == FmaLevel::avx2 ? 16 : 32);
  double best = 0;
  float sink = 0;
  for (int run = 0; run < 3; ++run) {
    const auto start = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    sink += level == FmaLevel::avx2 ? detail::fma_loop_avx2(iterations) : detail::fma_loop_avx512(iterations);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::max(best, threads * iterations * flops_per_iteration / seconds / 1e9);
  }
  if (sink == 12345.0f) std::fputs("", stderr);  // the sums are used: the loops stay
  return best;
}

}  // namespace tgbench
