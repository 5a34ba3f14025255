// Note [Vector math]: exp and tanh over arrays through glibc's vector math
// library (libmvec: its AVX2 variants, 8 floats or 4 doubles per call, within
// 4 ulp) when the CPU has AVX2 and the build found libmvec; libm element by
// element otherwise. Every element goes through the same function whatever the
// array's length (a tail is padded into a whole vector), so a value does not
// depend on how an array was split (the compiler's fused blocks). Rejected:
// libm per element everywhere (10-20x slower; docs/design-notes.md).
#pragma once

#include <cstdint>

namespace tg::kernels {

// y[i] = exp(x[i]) / tanh(x[i]) for i < n; y may be x.
void vector_exp(const float* x, float* y, std::int64_t n);
void vector_exp(const double* x, double* y, std::int64_t n);
void vector_tanh(const float* x, float* y, std::int64_t n);
void vector_tanh(const double* x, double* y, std::int64_t n);

// Whether the functions above run libmvec's vectors (else libm per element).
bool vector_math_vectorised();

}  // namespace tg::kernels
