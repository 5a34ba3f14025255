// The shifted copies' forward (Note [Shifted copies], conv_shifted.cpp) and
// the copies themselves, compiled once per level: in conv_shifted.cpp at
// avx512 (Zmm, 32 registers) and in conv_shifted_avx2.cpp at avx2 (Ymm, 16
// registers), each in its own namespace (TG_SHIFTED_ISA), every vector loop
// with the level's target attribute (TG_SHIFTED_TARGET), TG_SHIFTED_VECTORS
// position vectors per register block. Include from those two files only.
#pragma once

#include <algorithm>
#include <cstdint>

#include "conv_impl.hpp"
#include "conv_shifted.hpp"
#include "tapegrad/kernels/parallel.hpp"
#include "tapegrad/kernels/scratch.hpp"

#if !defined(TG_SHIFTED_ISA) || !defined(TG_SHIFTED_VEC) || !defined(TG_SHIFTED_TARGET) || !defined(TG_SHIFTED_VECTORS)
#error "define TG_SHIFTED_ISA, TG_SHIFTED_VEC, TG_SHIFTED_TARGET and TG_SHIFTED_VECTORS before including conv_shifted_passes.hpp"
#endif

namespace tg::kernels::conv_impl::TG_SHIFTED_ISA {

template <class T>
using Vec = TG_SHIFTED_VEC<T>;

namespace {

// Flat copies of channels [c0, c1) of sample n (Note [Flat copies]).
template <class T>
TG_SHIFTED_TARGET void flat_copies(const ConvGeometry& g, const ShiftedLayout& s, const unsigned* masks, const T* x,
                           std::int64_t n, std::int64_t c0, std::int64_t c1, T* copies) {
  using Z = Vec<T>;
  constexpr int L = Z::kLanes;
  const std::int64_t vectors = s.copy_stride / L;
  for (std::int64_t c = c0; c < c1; ++c)
    for (std::int64_t dx = 0; dx < s.KW; ++dx) {
      // copy position q holds input element q + from of the plane
      const std::int64_t from = column_shift(g, dx) - g.lo[1] * g.in[2];
      const T* xc = address_at(x + (n * g.C + c) * g.in_vol(), from);
      T* copy = copies + ((c - c0) * s.KW + dx) * s.copy_stride;
      const unsigned* mask = masks + dx * vectors;
      for (std::int64_t v = 0; v < vectors; ++v) Z::store(copy + v * L, Z::load_lanes(address_at(xc, v * L), mask[v]));
    }
}

// Copies of channels [c0, c1) of sample n, any widths: each is built a column
// vector at a time down its rows. The vector's lanes that meet input columns
// are one mask for every row, a masked load from the input row (zero
// elsewhere, and in the rows of padding); the row's last vector stores only
// its own lanes.
template <class T>
TG_SHIFTED_TARGET void column_copies(const ConvGeometry& g, const ShiftedLayout& s, const T* x, std::int64_t n,
                             std::int64_t c0, std::int64_t c1, T* copies) {
  using Z = Vec<T>;
  constexpr int L = Z::kLanes;
  const std::int64_t H = g.in[1], W = g.in[2];
  for (std::int64_t c = c0; c < c1; ++c) {
    const T* xc = x + (n * g.C + c) * g.in_vol();
    for (std::int64_t dx = 0; dx < s.KW; ++dx) {
      T* copy = copies + ((c - c0) * s.KW + dx) * s.copy_stride;
      const std::int64_t shift = column_shift(g, dx);
      for (std::int64_t j = 0; j < s.width; j += L) {
        const std::int64_t lanes = std::min<std::int64_t>(L, s.width - j);
        const std::int64_t lo = std::clamp<std::int64_t>(-shift - j, 0, lanes);
        const unsigned inside = lane_range(lo, std::clamp<std::int64_t>(W - shift - j, lo, lanes));
        for (std::int64_t i = 0; i < s.rows; ++i) {
          const std::int64_t r = i - g.lo[1];
          const auto v = r >= 0 && r < H && inside ? Z::load_lanes(address_at(xc, r * W + j + shift), inside) : Z::zero();
          if (lanes == L) Z::store(copy + i * s.width + j, v);
          else Z::store_first(copy + i * s.width + j, v, lanes);
        }
      }
    }
  }
}

// copies[(c - c0) * KW + dx] for channels [c0, c1) of sample n, as Note
// [Shifted copies] says; `masks` from copy_masks.
template <class T>
void make_copies(const ConvGeometry& g, const ShiftedLayout& s, const unsigned* masks, const T* x, std::int64_t n,
                 std::int64_t c0, std::int64_t c1, T* copies) {
  if (masks) flat_copies(g, s, masks, x, n, c0, c1, copies);
  else column_copies(g, s, x, n, c0, c1, copies);
}

// ---- forward --------------------------------------------------------------------

// The forward's register block: F filters x U vectors of sums, U inputs and
// one weight: 4 x 6 in AVX-512's 32 registers, 4 x 3 in AVX2's 16. Every loop over the block is unrolled whole (as in row_sums), so the sums
// never leave registers: rolled, GCC kept them in a stack array, three moves
// per sum and block, and LeNet's conv1 forward took 0.96 ms against 0.80.
constexpr int kForwardFilters = 4, kForwardVectors = TG_SHIFTED_VECTORS;

// y[f][at + u*L ..] (=, or += when accumulating) sum over taps t of w[f][t] *
// run[t][at + u*L ..] (+ bias[f]), for u < U and f < F; with Partial (U = 1)
// the vector holds only the plane's last `last` < L outputs.
template <class T, int U, int F, bool Partial>
TG_SHIFTED_TARGET void output_block(T* const* y, const T* const* w, const T* bias, const T* const* run,
                                    std::int64_t taps, std::int64_t at, std::int64_t last, bool accumulate,
                                    std::int64_t fetch_at) {
  static_assert(!Partial || U == 1);
  using Z = Vec<T>;
  using V = typename Z::V;
  constexpr int L = Z::kLanes;
  V acc[F][U];
#pragma GCC unroll 8
  for (int f = 0; f < F; ++f)
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) acc[f][u] = Z::zero();
  for (std::int64_t t = 0; t < taps; ++t) {
    if (fetch_at >= 0 && t < F * U) __builtin_prefetch(y[t / U] + fetch_at + t % U * L, 1, 3);
    const T* in = run[t] + at;
    V v[U];
    for (int u = 0; u < U; ++u) v[u] = Partial ? Z::load_first(in, last) : Z::load(in + u * L);
    for (int f = 0; f < F; ++f) {
      const V weight = Z::set1(w[f][t]);
      for (int u = 0; u < U; ++u) acc[f][u] = Z::fma(weight, v[u], acc[f][u]);
    }
  }
#pragma GCC unroll 8
  for (int f = 0; f < F; ++f)
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) {
      T* out = y[f] + at + u * L;
      V sum = acc[f][u];
      if (accumulate) sum = Z::add(sum, Partial ? Z::load_first(out, last) : Z::load(out));
      if (bias) sum = Z::add(sum, Z::set1(bias[f]));
      if (Partial) Z::store_first(out, sum, last);
      else Z::store(out, sum);
    }
}

// The `vectors` < U whole vectors at `at`, as one block.
template <class T, int F, int U = kForwardVectors - 1>
void output_rest(T* const* y, const T* const* w, const T* bias, const T* const* run, std::int64_t taps, std::int64_t at,
                 std::int64_t vectors, bool accumulate) {
  if constexpr (U > 1)
    if (vectors < U) return output_rest<T, F, U - 1>(y, w, bias, run, taps, at, vectors, accumulate);
  output_block<T, U, F, false>(y, w, bias, run, taps, at, 0, accumulate, -1);
}

// Positions [from, to) of F planes: blocks of U vectors, one block of the
// whole vectors left, then the partial one.
template <class T, int F>
void output_planes(T* const* y, const T* const* w, const T* bias, const T* const* run, std::int64_t taps,
                   std::int64_t from, std::int64_t to, bool accumulate) {
  constexpr int L = Vec<T>::kLanes, U = kForwardVectors;
  std::int64_t at = from;
  for (; at + U * L <= to; at += U * L)
    output_block<T, U, F, false>(y, w, bias, run, taps, at, 0, accumulate, at + 2 * U * L <= to ? at + U * L : -1);
  if (const std::int64_t vectors = (to - at) / L; vectors > 0) {
    output_rest<T, F>(y, w, bias, run, taps, at, vectors, accumulate);
    at += vectors * L;
  }
  if (at < to) output_block<T, 1, F, true>(y, w, bias, run, taps, at, to - at, accumulate, -1);
}

template <class T, int F = kForwardFilters>
void output_planes_for(int filters, T* const* y, const T* const* w, const T* bias, const T* const* run,
                       std::int64_t taps, std::int64_t from, std::int64_t to, bool accumulate) {
  if constexpr (F > 1)
    if (filters < F) return output_planes_for<T, F - 1>(filters, y, w, bias, run, taps, from, to, accumulate);
  output_planes<T, F>(y, w, bias, run, taps, from, to, accumulate);
}

// Positions [from, to) of sample n's filters of group grp, every tap's run
// given: blocks of kForwardFilters filters, each with its bias and activation.
template <class T>
void output_range(const ConvGeometry& g, std::int64_t n, std::int64_t grp, const T* w, T* y, const T* const* run,
                  std::int64_t taps, std::int64_t from, std::int64_t to, bool accumulate, const OutputEpilogue<T>* epilogue) {
  constexpr int F = kForwardFilters;
  const std::int64_t plane = g.out_vol();
  for (std::int64_t k0 = grp * g.Kg; k0 < (grp + 1) * g.Kg; k0 += F) {
    const int filters = static_cast<int>(std::min<std::int64_t>(F, (grp + 1) * g.Kg - k0));
    T* planes[F];
    const T* weights[F];
    for (int f = 0; f < filters; ++f) {
      planes[f] = y + (n * g.K + k0 + f) * plane;
      weights[f] = w + (k0 + f) * taps;
    }
    const T* bias = epilogue && epilogue->bias ? epilogue->bias + k0 : nullptr;
    output_planes_for<T>(filters, planes, weights, bias, run, taps, from, to, accumulate);
    if (epilogue && epilogue->activation)
      for (int f = 0; f < filters; ++f) epilogue->activation(epilogue->context, planes[f] + from, to - from);
  }
}

}  // namespace

template <class T>
void shifted_forward(const ConvGeometry& g, const T* x, const T* w, T* y, bool accumulate,
                     const OutputEpilogue<T>* epilogue) {
  const ShiftedLayout s = ShiftedLayout::of<T>(g);
  const std::int64_t taps = g.Cg * s.KH * s.KW;
  ScratchScope scratch;
  const unsigned* masks = copy_masks<T, Vec<T>::kLanes>(g, s, scratch);
  // One task per (sample, group): its copies serve every filter of the group.
  parallel_for(g.N * g.groups, threads_if(g.macs() > 1e5), [&](std::int64_t task) {
    const std::int64_t n = task / g.groups, grp = task % g.groups;
    ScratchScope own;  // this thread's stack (Note [Scratch stack])
    T* copies = own.take<T>(s.copies_of(g.Cg)).data();
    make_copies(g, s, masks, x, n, grp * g.Cg, (grp + 1) * g.Cg, copies);
    const T** run = own.take<const T*>(taps).data();
    for (std::int64_t c = 0; c < g.Cg; ++c)
      for (std::int64_t dy = 0; dy < s.KH; ++dy)
        for (std::int64_t dx = 0; dx < s.KW; ++dx)
          run[(c * s.KH + dy) * s.KW + dx] = copies + (c * s.KW + dx) * s.copy_stride + dy * s.row_step;
    output_range(g, n, grp, w, y, run, taps, 0, s.plane, accumulate, epilogue);
  });
}

}  // namespace tg::kernels::conv_impl::TG_SHIFTED_ISA
