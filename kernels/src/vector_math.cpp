// Note [Vector math] (vector_math.hpp): libmvec's AVX2 variants, called only
// from functions compiled for AVX2 and only when the CPU has it.
#include "tapegrad/kernels/vector_math.hpp"

#include "tapegrad/kernels/isa.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

#ifdef TAPEGRAD_HAVE_LIBMVEC
extern "C" {
__m256 _ZGVdN8v_expf(__m256);
__m256 _ZGVdN8v_tanhf(__m256);
__m256d _ZGVdN4v_exp(__m256d);
__m256d _ZGVdN4v_tanh(__m256d);
}
#endif

namespace tg::kernels {
namespace {

#ifdef TAPEGRAD_HAVE_LIBMVEC
// y = f(x) a vector at a time; the tail through one zero-padded vector.
__attribute__((target("avx2,fma"))) void apply(__m256 (*f)(__m256), const float* x, float* y, std::int64_t n) {
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, f(_mm256_loadu_ps(x + i)));
  if (i == n) return;
  float tail[8] = {};
  std::copy(x + i, x + n, tail);
  _mm256_storeu_ps(tail, f(_mm256_loadu_ps(tail)));
  std::copy(tail, tail + (n - i), y + i);
}
__attribute__((target("avx2,fma"))) void apply(__m256d (*f)(__m256d), const double* x, double* y, std::int64_t n) {
  std::int64_t i = 0;
  for (; i + 4 <= n; i += 4) _mm256_storeu_pd(y + i, f(_mm256_loadu_pd(x + i)));
  if (i == n) return;
  double tail[4] = {};
  std::copy(x + i, x + n, tail);
  _mm256_storeu_pd(tail, f(_mm256_loadu_pd(tail)));
  std::copy(tail, tail + (n - i), y + i);
}
#endif

template <class T, class F>
void per_element(const T* x, T* y, std::int64_t n, F f) {
  for (std::int64_t i = 0; i < n; ++i) y[i] = f(x[i]);
}

}  // namespace

// TG_ISA=portable selects libm (the tests run the suite once that way).
bool vector_math_vectorised() {
#ifdef TAPEGRAD_HAVE_LIBMVEC
  return kernel_isa() >= Isa::avx2;
#else
  return false;
#endif
}

#ifdef TAPEGRAD_HAVE_LIBMVEC
#define TG_VECTOR_OR(vector_fn, scalar_fn) \
  if (vector_math_vectorised()) return apply(vector_fn, x, y, n); \
  per_element(x, y, n, [](auto v) { return scalar_fn(v); })
#else
#define TG_VECTOR_OR(vector_fn, scalar_fn) per_element(x, y, n, [](auto v) { return scalar_fn(v); })
#endif

void vector_exp(const float* x, float* y, std::int64_t n) { TG_VECTOR_OR(_ZGVdN8v_expf, std::exp); }
void vector_exp(const double* x, double* y, std::int64_t n) { TG_VECTOR_OR(_ZGVdN4v_exp, std::exp); }
void vector_tanh(const float* x, float* y, std::int64_t n) { TG_VECTOR_OR(_ZGVdN8v_tanhf, std::tanh); }
void vector_tanh(const double* x, double* y, std::int64_t n) { TG_VECTOR_OR(_ZGVdN4v_tanh, std::tanh); }

#undef TG_VECTOR_OR

}  // namespace tg::kernels
