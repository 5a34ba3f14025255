// The one N-D loop every layout-aware kernel uses (broadcasting, reductions,
// permutes, slices): walk a shape in row-major order with K operands, each
// with its own element strides, handing the caller whole innermost runs so the
// hot loop is a plain 1-D loop the compiler can vectorise.
#pragma once

#include <array>
#include <cstdint>

#include "tapegrad/kernels/shape.hpp"

namespace tg::kernels {

template <std::size_t K>
using Offsets = std::array<std::int64_t, K>;

// Calls run(n, offsets, steps) once per innermost run of `shape`: n elements,
// operand k starting at offsets[k] and advancing steps[k] per element.
template <std::size_t K, class Run>
void for_each_run(const Shape& shape, const std::array<const Strides*, K>& strides, Run&& run) {
  if (shape.size() == 0) return;
  const std::size_t rank = shape.rank();
  Offsets<K> offsets{};
  if (rank == 0) {
    run(std::int64_t{1}, offsets, Offsets<K>{});
    return;
  }
  Offsets<K> steps;
  for (std::size_t k = 0; k < K; ++k) steps[k] = (*strides[k])[rank - 1];
  const std::int64_t n = shape[rank - 1];
  Shape index = Shape::filled(rank, 0);
  for (;;) {
    run(n, offsets, steps);
    std::size_t d = rank - 1;
    for (;;) {  // odometer increment over dims [0, rank-1)
      if (d == 0) return;
      --d;
      ++index[d];
      for (std::size_t k = 0; k < K; ++k) offsets[k] += (*strides[k])[d];
      if (index[d] < shape[d]) break;
      for (std::size_t k = 0; k < K; ++k) offsets[k] -= (*strides[k])[d] * shape[d];
      index[d] = 0;
    }
  }
}

// dst[i] = src[i] (or += when Accumulate) over `shape`, each side with its own strides.
template <bool Accumulate, class T>
void strided_copy(const Shape& shape, const T* src, const Strides& src_strides, T* dst, const Strides& dst_strides) {
  for_each_run<2>(shape, {&src_strides, &dst_strides}, [&](std::int64_t n, const Offsets<2>& o, const Offsets<2>& s) {
    const T* in = src + o[0];
    T* out = dst + o[1];
    for (std::int64_t i = 0; i < n; ++i) {
      if constexpr (Accumulate) out[i * s[1]] += in[i * s[0]];
      else out[i * s[1]] = in[i * s[0]];
    }
  });
}

}  // namespace tg::kernels
