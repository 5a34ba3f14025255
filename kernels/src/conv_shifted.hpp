// The pieces of the shifted copies (Note [Shifted copies], conv_shifted.cpp)
// that do not depend on the instruction set: the copies' layout and the flat
// copies' masks; and the passes compiled once per level
// (conv_shifted_passes.hpp): at avx512 in conv_shifted.cpp, at avx2 in
// conv_shifted_avx2.cpp.
#pragma once

#include <algorithm>
#include <cstdint>

#include "conv_impl.hpp"
#include "tapegrad/kernels/scratch.hpp"

namespace tg::kernels::conv_impl {

// The copies of one sample (Note [Shifted copies]), 64-byte aligned each.
struct ShiftedLayout {
  std::int64_t KH, KW, width, rows, plane, copy_stride;
  std::int64_t row_step;  // from one kernel row's run to the next: dil * width

  template <class T>
  static ShiftedLayout of(const ConvGeometry& g) {
    ShiftedLayout s;
    s.KH = g.ker[1], s.KW = g.ker[2], s.width = g.out[2];
    s.rows = g.out[1] + (g.ker[1] - 1) * g.dil[1];
    s.plane = g.out[1] * g.out[2];
    constexpr std::int64_t kAlign = 64 / sizeof(T);
    s.copy_stride = (s.rows * s.width + kAlign - 1) / kAlign * kAlign;
    s.row_step = g.dil[1] * s.width;
    return s;
  }
  std::int64_t copies_of(std::int64_t channels) const { return channels * KW * copy_stride; }
};

// Copy dx's column j holds input column j + column_shift(g, dx).
inline std::int64_t column_shift(const ConvGeometry& g, std::int64_t dx) { return dx * g.dil[2] - g.lo[2]; }

// The lanes [lo, hi) of a vector's mask.
constexpr unsigned lane_range(std::int64_t lo, std::int64_t hi) { return (1u << hi) - (1u << lo); }

// base + offset elements, as an address only: the masked loads below read
// through it the lanes that lie inside base's row, and no other memory.
template <class T>
const T* address_at(const T* base, std::int64_t offset) {
  return reinterpret_cast<const T*>(reinterpret_cast<std::uintptr_t>(base) + offset * std::int64_t(sizeof(T)));
}

// Note [Flat copies]: where the input rows are as wide as the output's (a
// "same" conv, as LeNet's conv1), copy (c, dx) is input plane c itself moved
// by lo[1] rows and dx*dil - lo[2] columns, the lanes that meet padding
// zeroed. It is made in whole aligned vectors, each one masked load through
// its mask (one per dx and vector, the same for every sample and channel,
// set once a pass by copy_masks) and one store. Other widths go down the
// copy's columns (column_copies), a vector of every row at a time, whose row
// ends split vectors and cache lines: LeNet's conv1 made its copies in 0.4 µs
// a sample that way against 0.2 flat.

// The flat copies' masks, [dx][vector of the copy]: bit l where position
// v*L + l of copy dx meets an input value; null where the copies are not flat.
// L: the lanes of the level's vectors of T.
template <class T, int L>
const unsigned* copy_masks(const ConvGeometry& g, const ShiftedLayout& s, ScratchScope& scratch) {
  if (g.in[2] != s.width) return nullptr;
  const std::int64_t vectors = s.copy_stride / L, H = g.in[1], W = g.in[2];
  unsigned* masks = scratch.take_filled<unsigned>(s.KW * vectors, 0u).data();
  const std::int64_t r0 = std::max<std::int64_t>(g.lo[1], 0), r1 = std::min(s.rows, g.lo[1] + H);
  for (std::int64_t dx = 0; dx < s.KW; ++dx) {
    const std::int64_t shift = column_shift(g, dx);
    const std::int64_t j0 = std::clamp<std::int64_t>(-shift, 0, W), j1 = std::clamp<std::int64_t>(W - shift, j0, W);
    for (std::int64_t i = r0; i < r1 && j0 < j1; ++i)
      for (std::int64_t q = i * W + j0; q < i * W + j1; q = (q / L + 1) * L)
        masks[dx * vectors + q / L] |= lane_range(q % L, std::min<std::int64_t>(L, q % L + i * W + j1 - q));
  }
  return masks;
}

// The forward and weight pass by shifted copies at each level; conv_impl.hpp's
// shifted_forward and shifted_backward_weight pick one.
namespace avx512 {
template <class T>
void shifted_forward(const ConvGeometry& g, const T* x, const T* w, T* y, bool accumulate, const OutputEpilogue<T>* epilogue);
template <class T>
void backward_weight(const ConvGeometry& g, const T* x, const T* gy, T* gw, const AdjointPrologue<T>* prologue,
                     T* gy_in_place);
std::int64_t weight_tasks(const ConvGeometry& g);
bool one_filter_sums_fit(const ConvGeometry& g);
}  // namespace avx512
namespace avx2 {
template <class T>
void shifted_forward(const ConvGeometry& g, const T* x, const T* w, T* y, bool accumulate, const OutputEpilogue<T>* epilogue);
template <class T>
void backward_weight(const ConvGeometry& g, const T* x, const T* gy, T* gw, const AdjointPrologue<T>* prologue,
                     T* gy_in_place);
std::int64_t weight_tasks(const ConvGeometry& g);
bool one_filter_sums_fit(const ConvGeometry& g);
}  // namespace avx2

}  // namespace tg::kernels::conv_impl
