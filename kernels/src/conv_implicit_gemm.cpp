// Implicit GEMM: the convolution as a GEMM whose patch matrix is never built.
//
// With the input zero-padded once (xp, per sample (C, P0, P1, P2)), every
// patch entry is xp[base[p] + tap[t]]: base[p] is where output position p's
// window starts, tap[t] the offset of patch row t = (c, t0, t1, t2) inside a
// window. Two small index tables replace im2col's Cg*ker_vol*out_vol copy.
// One register-tiled micro-kernel serves both GEMM passes:
//
//   tile[i][j] = sum_q a_i[index[q]] * b[q][j]      i < kTileRows, j < NR
//
//   forward (per sample, group):  y (Kg x out_vol) = W (Kg x R) . patches (R x out_vol)
//       i = output positions p, a_i = xp + base[p], index = tap, b = W^T packed (R x NR)
//   backward weight:              gW (Kg x R) += gy (Kg x out_vol) . patches^T (out_vol x R)
//       i = patch rows t, a_i = xp + tap[t], index = base, b = gy^T packed (out_vol x NR)
//
// The backward input of a unit-stride conv is the forward of its adjoint
// geometry (conv_impl.hpp); a strided one runs by phases (conv_strided_adjoint.cpp).
// The AVX2+FMA micro-kernel keeps a 6 x NR tile (NR = 16 floats or 8 doubles)
// in 12 registers: per step 2 vector loads of b, 6 broadcasts, 12 FMAs; the
// AVX-512 one the same tile in 6 registers, half the instructions. On a CPU
// without AVX2 the same loop runs in plain C++ (Note [Instruction-set levels]).
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <span>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "conv_impl.hpp"
#include "zmm.hpp"
#include "tapegrad/kernels/error.hpp"
#include "tapegrad/kernels/isa.hpp"
#include "tapegrad/kernels/parallel.hpp"
#include "tapegrad/kernels/scratch.hpp"

namespace tg::kernels::conv_impl {
namespace {

// ---- the micro-kernel ------------------------------------------------------------

// out[i][j] (+)= sum_q a[i][index[q]] * b[q * NR + j] for the kTileRows rows out[i];
// `accumulate` adds to what they hold (the weight gradient sums samples in registers' worth of tile).
// Where element q of a tile row lies: an index table (the implicit GEMM's
// patch offsets), or q * stride (Winograd's transformed tiles).
struct IndexTable {
  const std::int64_t* index;
  std::int64_t operator[](std::int64_t q) const { return index[q]; }
};
struct Strided {
  std::int64_t stride;
  std::int64_t operator[](std::int64_t q) const { return q * stride; }
};

template <class T, class Offsets>
void tile_portable(const T* const* a, Offsets index, const T* b, std::int64_t n, T* const* out, bool accumulate) {
  constexpr int NR = kTileCols<T>;
  T acc[kTileRows][NR] = {};
  if (accumulate)
    for (int i = 0; i < kTileRows; ++i) std::copy(out[i], out[i] + NR, acc[i]);
  for (std::int64_t q = 0; q < n; ++q) {
    const T* bq = b + q * NR;
    for (int i = 0; i < kTileRows; ++i) {
      const T v = a[i][index[q]];
      for (int j = 0; j < NR; ++j) acc[i][j] += v * bq[j];
    }
  }
  for (int i = 0; i < kTileRows; ++i) std::copy(acc[i], acc[i] + NR, out[i]);
}

template <class Offsets>
__attribute__((target("avx2,fma"))) void tile_avx2(const float* const* a, Offsets index, const float* b, std::int64_t n,
                                                    float* const* out, bool accumulate) {
  const float *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3], *a4 = a[4], *a5 = a[5];
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  if (accumulate) {
    c00 = _mm256_loadu_ps(out[0]), c01 = _mm256_loadu_ps(out[0] + 8), c10 = _mm256_loadu_ps(out[1]);
    c11 = _mm256_loadu_ps(out[1] + 8), c20 = _mm256_loadu_ps(out[2]), c21 = _mm256_loadu_ps(out[2] + 8);
    c30 = _mm256_loadu_ps(out[3]), c31 = _mm256_loadu_ps(out[3] + 8), c40 = _mm256_loadu_ps(out[4]);
    c41 = _mm256_loadu_ps(out[4] + 8), c50 = _mm256_loadu_ps(out[5]), c51 = _mm256_loadu_ps(out[5] + 8);
  }
  for (std::int64_t q = 0; q < n; ++q, b += 16) {
    const std::int64_t o = index[q];
    const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
    __m256 v = _mm256_broadcast_ss(a0 + o);
    c00 = _mm256_fmadd_ps(v, b0, c00), c01 = _mm256_fmadd_ps(v, b1, c01);
    v = _mm256_broadcast_ss(a1 + o);
    c10 = _mm256_fmadd_ps(v, b0, c10), c11 = _mm256_fmadd_ps(v, b1, c11);
    v = _mm256_broadcast_ss(a2 + o);
    c20 = _mm256_fmadd_ps(v, b0, c20), c21 = _mm256_fmadd_ps(v, b1, c21);
    v = _mm256_broadcast_ss(a3 + o);
    c30 = _mm256_fmadd_ps(v, b0, c30), c31 = _mm256_fmadd_ps(v, b1, c31);
    v = _mm256_broadcast_ss(a4 + o);
    c40 = _mm256_fmadd_ps(v, b0, c40), c41 = _mm256_fmadd_ps(v, b1, c41);
    v = _mm256_broadcast_ss(a5 + o);
    c50 = _mm256_fmadd_ps(v, b0, c50), c51 = _mm256_fmadd_ps(v, b1, c51);
  }
  _mm256_storeu_ps(out[0], c00), _mm256_storeu_ps(out[0] + 8, c01), _mm256_storeu_ps(out[1], c10);
  _mm256_storeu_ps(out[1] + 8, c11), _mm256_storeu_ps(out[2], c20), _mm256_storeu_ps(out[2] + 8, c21);
  _mm256_storeu_ps(out[3], c30), _mm256_storeu_ps(out[3] + 8, c31), _mm256_storeu_ps(out[4], c40);
  _mm256_storeu_ps(out[4] + 8, c41), _mm256_storeu_ps(out[5], c50), _mm256_storeu_ps(out[5] + 8, c51);
}

template <class Offsets>
__attribute__((target("avx2,fma"))) void tile_avx2(const double* const* a, Offsets index, const double* b, std::int64_t n,
                                                    double* const* out, bool accumulate) {
  const double *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3], *a4 = a[4], *a5 = a[5];
  __m256d c00 = _mm256_setzero_pd(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256d c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  if (accumulate) {
    c00 = _mm256_loadu_pd(out[0]), c01 = _mm256_loadu_pd(out[0] + 4), c10 = _mm256_loadu_pd(out[1]);
    c11 = _mm256_loadu_pd(out[1] + 4), c20 = _mm256_loadu_pd(out[2]), c21 = _mm256_loadu_pd(out[2] + 4);
    c30 = _mm256_loadu_pd(out[3]), c31 = _mm256_loadu_pd(out[3] + 4), c40 = _mm256_loadu_pd(out[4]);
    c41 = _mm256_loadu_pd(out[4] + 4), c50 = _mm256_loadu_pd(out[5]), c51 = _mm256_loadu_pd(out[5] + 4);
  }
  for (std::int64_t q = 0; q < n; ++q, b += 8) {
    const std::int64_t o = index[q];
    const __m256d b0 = _mm256_loadu_pd(b), b1 = _mm256_loadu_pd(b + 4);
    __m256d v = _mm256_broadcast_sd(a0 + o);
    c00 = _mm256_fmadd_pd(v, b0, c00), c01 = _mm256_fmadd_pd(v, b1, c01);
    v = _mm256_broadcast_sd(a1 + o);
    c10 = _mm256_fmadd_pd(v, b0, c10), c11 = _mm256_fmadd_pd(v, b1, c11);
    v = _mm256_broadcast_sd(a2 + o);
    c20 = _mm256_fmadd_pd(v, b0, c20), c21 = _mm256_fmadd_pd(v, b1, c21);
    v = _mm256_broadcast_sd(a3 + o);
    c30 = _mm256_fmadd_pd(v, b0, c30), c31 = _mm256_fmadd_pd(v, b1, c31);
    v = _mm256_broadcast_sd(a4 + o);
    c40 = _mm256_fmadd_pd(v, b0, c40), c41 = _mm256_fmadd_pd(v, b1, c41);
    v = _mm256_broadcast_sd(a5 + o);
    c50 = _mm256_fmadd_pd(v, b0, c50), c51 = _mm256_fmadd_pd(v, b1, c51);
  }
  _mm256_storeu_pd(out[0], c00), _mm256_storeu_pd(out[0] + 4, c01), _mm256_storeu_pd(out[1], c10);
  _mm256_storeu_pd(out[1] + 4, c11), _mm256_storeu_pd(out[2], c20), _mm256_storeu_pd(out[2] + 4, c21);
  _mm256_storeu_pd(out[3], c30), _mm256_storeu_pd(out[3] + 4, c31), _mm256_storeu_pd(out[4], c40);
  _mm256_storeu_pd(out[4] + 4, c41), _mm256_storeu_pd(out[5], c50), _mm256_storeu_pd(out[5] + 4, c51);
}

// AVX-512: the same 6 x NR tile, one zmm register per tile row (NR = 16 floats
// or 8 doubles): per step one vector load of b, 6 broadcasts, 6 FMAs.
template <class T, class Offsets>
__attribute__((target("avx512f"))) void tile_avx512(const T* const* a, Offsets index, const T* b, std::int64_t n,
                                                     T* const* out, bool accumulate) {
  using Z = Zmm<T>;
  constexpr int NR = kTileCols<T>;
  const T *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3], *a4 = a[4], *a5 = a[5];
  typename Z::V c0 = Z::zero(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0;
  if (accumulate) {
    c0 = Z::load(out[0]), c1 = Z::load(out[1]), c2 = Z::load(out[2]);
    c3 = Z::load(out[3]), c4 = Z::load(out[4]), c5 = Z::load(out[5]);
  }
  for (std::int64_t q = 0; q < n; ++q, b += NR) {
    const std::int64_t o = index[q];
    const typename Z::V bq = Z::load(b);
    c0 = Z::fma(Z::set1(a0[o]), bq, c0), c1 = Z::fma(Z::set1(a1[o]), bq, c1), c2 = Z::fma(Z::set1(a2[o]), bq, c2);
    c3 = Z::fma(Z::set1(a3[o]), bq, c3), c4 = Z::fma(Z::set1(a4[o]), bq, c4), c5 = Z::fma(Z::set1(a5[o]), bq, c5);
  }
  Z::store(out[0], c0), Z::store(out[1], c1), Z::store(out[2], c2);
  Z::store(out[3], c3), Z::store(out[4], c4), Z::store(out[5], c5);
}

// Two column blocks at once (Note [Paired tiles]): the second block's b at
// b + b_step, its rows at out[i] + out_step; per step two vector loads, 6
// broadcasts and 12 FMAs, each sum in tile_avx512's order.
template <class T, class Offsets>
__attribute__((target("avx512f"))) void tile_pair_avx512(const T* const* a, Offsets index, const T* b,
                                                          std::int64_t b_step, std::int64_t n, T* const* out,
                                                          std::int64_t out_step, bool accumulate) {
  using Z = Zmm<T>;
  using V = typename Z::V;
  constexpr int NR = kTileCols<T>;
  const T *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3], *a4 = a[4], *a5 = a[5];
  V c0 = Z::zero(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0;
  V d0 = c0, d1 = c0, d2 = c0, d3 = c0, d4 = c0, d5 = c0;
  if (accumulate) {
    c0 = Z::load(out[0]), c1 = Z::load(out[1]), c2 = Z::load(out[2]);
    c3 = Z::load(out[3]), c4 = Z::load(out[4]), c5 = Z::load(out[5]);
    d0 = Z::load(out[0] + out_step), d1 = Z::load(out[1] + out_step), d2 = Z::load(out[2] + out_step);
    d3 = Z::load(out[3] + out_step), d4 = Z::load(out[4] + out_step), d5 = Z::load(out[5] + out_step);
  }
  for (std::int64_t q = 0; q < n; ++q, b += NR) {
    const std::int64_t o = index[q];
    const V bq = Z::load(b), bn = Z::load(b + b_step);
    V s = Z::set1(a0[o]);
    c0 = Z::fma(s, bq, c0), d0 = Z::fma(s, bn, d0), s = Z::set1(a1[o]);
    c1 = Z::fma(s, bq, c1), d1 = Z::fma(s, bn, d1), s = Z::set1(a2[o]);
    c2 = Z::fma(s, bq, c2), d2 = Z::fma(s, bn, d2), s = Z::set1(a3[o]);
    c3 = Z::fma(s, bq, c3), d3 = Z::fma(s, bn, d3), s = Z::set1(a4[o]);
    c4 = Z::fma(s, bq, c4), d4 = Z::fma(s, bn, d4), s = Z::set1(a5[o]);
    c5 = Z::fma(s, bq, c5), d5 = Z::fma(s, bn, d5);
  }
  Z::store(out[0], c0), Z::store(out[1], c1), Z::store(out[2], c2);
  Z::store(out[3], c3), Z::store(out[4], c4), Z::store(out[5], c5);
  Z::store(out[0] + out_step, d0), Z::store(out[1] + out_step, d1), Z::store(out[2] + out_step, d2);
  Z::store(out[3] + out_step, d3), Z::store(out[4] + out_step, d4), Z::store(out[5] + out_step, d5);
}

// ---- layout: the padded input and the two index tables ----------------------------

struct Layout {
  ConvGeometry::Dims padded;            // P0, P1, P2
  std::int64_t plane = 0;               // P0 * P1 * P2
  std::span<std::int64_t> tap;          // R = Cg * ker_vol offsets, in the weights' (c, t0, t1, t2) order
  std::span<std::int64_t> base;         // out_vol offsets, one per output position
  bool copy = false;                    // false: no padding, xp is x itself
};

Layout make_layout(const ConvGeometry& g, ScratchScope& scratch) {
  Layout L;
  L.tap = scratch.take<std::int64_t>(g.Cg * g.ker_vol());
  L.base = scratch.take<std::int64_t>(g.out_vol());
  std::size_t t = 0, b = 0;
  for (int d = 0; d < ConvGeometry::kMaxSpatial; ++d) {
    L.padded[d] = g.in[d] + g.lo[d] + g.hi[d];
    L.copy = L.copy || g.lo[d] != 0 || g.hi[d] != 0;
  }
  const std::int64_t row = L.padded[2], slab = L.padded[1] * L.padded[2];
  L.plane = L.padded[0] * slab;
  for (std::int64_t c = 0; c < g.Cg; ++c)
    for (std::int64_t t0 = 0; t0 < g.ker[0]; ++t0)
      for (std::int64_t t1 = 0; t1 < g.ker[1]; ++t1)
        for (std::int64_t t2 = 0; t2 < g.ker[2]; ++t2)
          L.tap[t++] = c * L.plane + t0 * g.dil[0] * slab + t1 * g.dil[1] * row + t2 * g.dil[2];
  for (std::int64_t o0 = 0; o0 < g.out[0]; ++o0)
    for (std::int64_t o1 = 0; o1 < g.out[1]; ++o1)
      for (std::int64_t o2 = 0; o2 < g.out[2]; ++o2)
        L.base[b++] = o0 * g.stride[0] * slab + o1 * g.stride[1] * row + o2 * g.stride[2];
  return L;
}

std::int64_t column_blocks(std::int64_t kg, int nr) { return (kg + nr - 1) / nr; }

// W (K, R) -> per group and block of NR filters, W^T (R x NR), zero columns past Kg.
template <class T>
const T* pack_weights(const ConvGeometry& g, std::int64_t R, const T* w, ScratchScope& scratch) {
  constexpr int NR = kTileCols<T>;
  const std::int64_t blocks = column_blocks(g.Kg, NR);
  T* packed = scratch.take_filled<T>(g.groups * blocks * R * NR, T(0)).data();
  for (std::int64_t grp = 0; grp < g.groups; ++grp)
    for (std::int64_t k = 0; k < g.Kg; ++k) {
      T* dst = packed + ((grp * blocks + k / NR) * R) * NR + k % NR;
      const T* src = w + (grp * g.Kg + k) * R;
      for (std::int64_t t = 0; t < R; ++t) dst[t * NR] = src[t];
    }
  return packed;
}

// The kTileRows row pointers of a tile starting at row `first`; rows past `count`
// repeat the last valid one (computed, never stored).
template <class T>
void tile_rows(const T* origin, const std::int64_t* offsets, std::int64_t first, std::int64_t count, const T** rows) {
  for (int i = 0; i < kTileRows; ++i) rows[i] = origin + offsets[std::min(first + i, count - 1)];
}

}  // namespace

// Note [Padded copy by planes]: a task copies whole planes, row by row, with
// no divisions per row. Rejected: a task per row, whose index arithmetic
// outweighed the copy of its 30 values (a 128x32x28x28 batch: 1.8 ms against
// 1.15 by planes, at one thread).
template <class T>
const T* zero_padded(const T* x, std::int64_t planes, const ConvGeometry::Dims& in, const ConvGeometry::Dims& lo,
                     const ConvGeometry::Dims& padded, ScratchScope& scratch) {
  const std::int64_t row = padded[2], slab = padded[1] * row, plane = padded[0] * slab;
  T* out = scratch.take<T>(planes * plane).data();
  // Padded columns [first, last) hold input columns from first - lo: zeros, a copy, zeros.
  const std::int64_t first = std::clamp<std::int64_t>(lo[2], 0, row);
  const std::int64_t last = std::clamp<std::int64_t>(lo[2] + in[2], first, row);
  parallel_for(planes, conv_threads(), [&](std::int64_t p) {
    const T* src_plane = x + p * in[0] * in[1] * in[2];
    T* dst = out + p * plane;
    for (std::int64_t p0 = 0; p0 < padded[0]; ++p0) {
      const std::int64_t i0 = p0 - lo[0];
      for (std::int64_t p1 = 0; p1 < padded[1]; ++p1, dst += row) {
        const std::int64_t i1 = p1 - lo[1];
        if (i0 < 0 || i0 >= in[0] || i1 < 0 || i1 >= in[1]) {
          std::fill(dst, dst + row, T(0));
          continue;
        }
        const T* src = src_plane + (i0 * in[1] + i1) * in[2] + (first - lo[2]);
        std::fill(dst, dst + first, T(0));
        std::copy(src, src + (last - first), dst + first);
        std::fill(dst + last, dst + row, T(0));
      }
    }
  });
  return out;
}

// One tile at the level in use (Note [Instruction-set levels]).
template <class T, class Offsets>
void tile(const T* const* a, Offsets index, const T* b, std::int64_t n, T* const* out, bool accumulate) {
  if (kernel_isa() >= Isa::avx512) tile_avx512(a, index, b, n, out, accumulate);
  else if (implicit_gemm_vectorised()) tile_avx2(a, index, b, n, out, accumulate);
  else tile_portable(a, index, b, n, out, accumulate);
}
template <class T>
void gemm_tile(const T* const* a, const std::int64_t* index, const T* b, std::int64_t n, T* const* out, bool accumulate) {
  tile(a, IndexTable{index}, b, n, out, accumulate);
}
template <class T>
void gemm_tile_strided(const T* const* a, std::int64_t stride, const T* b, std::int64_t n, T* const* out, bool accumulate) {
  tile(a, Strided{stride}, b, n, out, accumulate);
}
// Two column blocks: one 6 x 2 tile where paired, else the two one after the other (the same sums).
template <class T, class Offsets>
void tile_pair(const T* const* a, Offsets index, const T* b, std::int64_t b_step, std::int64_t n, T* const* out,
               std::int64_t out_step, bool accumulate) {
  if (paired_tiles()) return tile_pair_avx512(a, index, b, b_step, n, out, out_step, accumulate);
  T* next[kTileRows];
  for (int i = 0; i < kTileRows; ++i) next[i] = out[i] + out_step;
  tile(a, index, b, n, out, accumulate);
  tile(a, index, b + b_step, n, next, accumulate);
}
template <class T>
void gemm_tile_pair(const T* const* a, const std::int64_t* index, const T* b, std::int64_t b_step, std::int64_t n,
                    T* const* out, std::int64_t out_step, bool accumulate) {
  tile_pair(a, IndexTable{index}, b, b_step, n, out, out_step, accumulate);
}
template <class T>
void gemm_tile_pair_strided(const T* const* a, std::int64_t stride, const T* b, std::int64_t b_step, std::int64_t n,
                            T* const* out, std::int64_t out_step, bool accumulate) {
  tile_pair(a, Strided{stride}, b, b_step, n, out, out_step, accumulate);
}
#define TG_INSTANTIATE(T)                                                                                  \
  template void gemm_tile_pair<T>(const T* const*, const std::int64_t*, const T*, std::int64_t, std::int64_t, \
                                  T* const*, std::int64_t, bool);                                         \
  template void gemm_tile_pair_strided<T>(const T* const*, std::int64_t, const T*, std::int64_t, std::int64_t, \
                                          T* const*, std::int64_t, bool);                                 \
  template const T* zero_padded<T>(const T*, std::int64_t, const ConvGeometry::Dims&, const ConvGeometry::Dims&, \
                                   const ConvGeometry::Dims&, ScratchScope&);                             \
  template void gemm_tile<T>(const T* const*, const std::int64_t*, const T*, std::int64_t, T* const*, bool); \
  template void gemm_tile_strided<T>(const T* const*, std::int64_t, const T*, std::int64_t, T* const*, bool);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

// The vector micro-kernels run from AVX2 + FMA up (Note [Instruction-set levels]);
// TG_ISA=portable selects the plain C++ one (the tests run the convolution family that way).
bool implicit_gemm_vectorised() { return kernel_isa() >= Isa::avx2; }

double implicit_gemm_copied(const ConvGeometry& g, ConvPass pass) {
  if (pass == ConvPass::backward_input) {
    if (!unit_stride(g)) return strided_adjoint_applies(g) ? strided_adjoint_copied(g) : 0;  // else col2im: no copy
    return implicit_gemm_copied(adjoint_geometry(g), ConvPass::forward);
  }
  double padded = double(g.N) * double(g.C);
  bool copies = false;
  for (int d = 0; d < ConvGeometry::kMaxSpatial; ++d) {
    padded *= double(g.in[d] + g.lo[d] + g.hi[d]);
    copies = copies || g.lo[d] != 0 || g.hi[d] != 0;
  }
  return copies ? padded : 0;
}

namespace {
bool within_copy_limit(const ConvGeometry& g, double copied) {
  const double moved = double(g.N) * (double(g.C) * double(g.in_vol()) + double(g.K) * double(g.out_vol()));
  return copied <= double(kPaddedCopyRatio) * moved + double(kPaddedCopySlack);
}
}  // namespace

bool strided_adjoint_applies(const ConvGeometry& g) {
  return strided_adjoint_phases(g) <= kMaxStridedAdjointPhases && within_copy_limit(g, strided_adjoint_copied(g));
}

bool implicit_gemm_applies(const ConvGeometry& g, ConvPass pass) { return within_copy_limit(g, implicit_gemm_copied(g, pass)); }

void require_implicit_gemm(const ConvGeometry& g, ConvPass pass, const char* op) {
  if (!implicit_gemm_applies(g, pass))
    fail(op, fmt::format("algorithm implicit_gemm would copy the input zero-padded to {:.3g} elements for the {} pass "
                         "(input [{}] padded by [{}] and [{}], stride [{}]) expected at most {} times the input and "
                         "output together (Note [Implicit GEMM's padded copy]); hint: use direct or im2col, or leave "
                         "the algorithm automatic",
                         implicit_gemm_copied(g, pass), to_string(pass), fmt::join(g.in, ","), fmt::join(g.lo, ","),
                         fmt::join(g.hi, ","), fmt::join(g.stride, ","), kPaddedCopyRatio));
}

// y (N, K, out) = conv(x, w): tasks of (group, run of position tiles) over threads.
//
// Note [Tiles across samples]: a run of positions continues from one sample
// into the next, so a small output plane (7x7 = 49 positions) fills whole
// 6-row tiles instead of leaving a tenth of each sample's last tile empty.
template <class T>
void implicit_gemm_forward(const ConvGeometry& g, const T* x, const T* w, T* y, bool accumulate,
                           const OutputEpilogue<T>* epilogue) {
  constexpr int NR = kTileCols<T>;
  require_implicit_gemm(g, ConvPass::forward, "conv");
  ScratchScope scratch;
  const Layout L = make_layout(g, scratch);
  const std::int64_t R = g.Cg * g.ker_vol(), ov = g.out_vol(), blocks = column_blocks(g.Kg, NR);
  const T* xp = L.copy ? zero_padded(x, g.N * g.C, g.in, g.lo, L.padded, scratch) : x;
  // Tasks: (group, run of positions), the positions of every sample in a row
  // (Note [Tiles across samples]).
  constexpr std::int64_t kRun = kTileRows * 16;
  const std::int64_t total = g.N * ov, runs = (total + kRun - 1) / kRun;
  auto run_task = [&](std::int64_t task, const T* wp) {
    const std::int64_t run = task % runs, grp = task / runs;
    const std::int64_t p_begin = run * kRun, p_end = std::min(total, p_begin + kRun);
    // The task's outputs channel-last, S[position][filter] (whole tiles of
    // positions, blocks of filters), then transposed into y's planes.
    const std::int64_t Kgp = blocks * NR;
    ScratchScope local;
    T* S = local.take<T>((p_end - p_begin + kTileRows) * Kgp).data();
    const T* rows[kTileRows];
    T* out[kTileRows];
    const int step = column_block_step();
    for (std::int64_t blk = 0; blk < blocks; blk += step) {
      const bool pair = step == 2 && blk + 1 < blocks;  // the next block's weights follow, its columns in S too
      const T* wb = wp + (grp * blocks + blk) * R * NR;
      std::int64_t n = p_begin / ov, m = p_begin - n * ov;  // the sample and position of p0
      for (std::int64_t p0 = p_begin; p0 < p_end; p0 += kTileRows) {
        // Rows past the last position repeat it (computed, never stored).
        for (std::int64_t i = 0, ni = n, mi = m; i < kTileRows; ++i) {
          rows[i] = xp + (ni * g.C + grp * g.Cg) * L.plane + L.base[mi];
          out[i] = S + (p0 - p_begin + i) * Kgp + blk * NR;  // S has a tile's slack
          if (p0 + i + 1 < total && ++mi == ov) mi = 0, ++ni;
        }
        m += kTileRows;
        while (m >= ov) m -= ov, ++n;
        // S (positions p0.. x filters k0..) = patches^T (6 x R) . W^T (R x NR, or two blocks' R x 2NR)
        if (pair) gemm_tile_pair(rows, L.tap.data(), wb, R * NR, R, out, NR);
        else gemm_tile(rows, L.tap.data(), wb, R, out);
      }
    }
    // Each sample's share of the run, transposed into its planes with the
    // epilogue's bias (Note [Bias in the transpose]); complete and still in
    // cache, so the activation runs on it now.
    const T* bias = epilogue && epilogue->bias ? epilogue->bias + grp * g.Kg : nullptr;
    const OutputEpilogue<T> activation = epilogue ? epilogue->without_bias() : OutputEpilogue<T>{};
    for (std::int64_t p = p_begin; p < p_end;) {
      const std::int64_t n = p / ov, m = p - n * ov, len = std::min(p_end, (n + 1) * ov) - p;
      transpose_blocks(S + (p - p_begin) * Kgp, Kgp, len, g.Kg, y + (n * g.K + grp * g.Kg) * ov + m, ov, accumulate,
                       bias);
      if (activation.activation)
        for (std::int64_t k = grp * g.Kg; k < (grp + 1) * g.Kg; ++k) activation.apply(y + (n * g.K + k) * ov + m, len, k);
      p += len;
    }
  };
  // Note [Packed weights on each thread]: every task streams all of a
  // group's packed weights through its tiles; as with Winograd's U (Note
  // [Transformed weights on each thread]), each thread packs a copy of its
  // own while the copies stay within kOwnWeightBytes, so that no thread reads
  // the lines another wrote.
  const int threads = omp_in_parallel() ? 1 : conv_threads();
  const std::int64_t packed_bytes = g.groups * blocks * R * NR * std::int64_t(sizeof(T));
  with_weights_on_each_thread(
      g.groups * runs, threads, packed_bytes, scratch,
      [&](ScratchScope& into, int) { return pack_weights(g, R, w, into); }, run_task);
}

template <class T>
void implicit_gemm_backward_input(const ConvGeometry& g, const T* gy, const T* w, T* gx, bool accumulate) {
  if (!unit_stride(g)) {
    if (strided_adjoint_applies(g)) return implicit_gemm_strided_backward_input(g, gy, w, gx, accumulate);
    return im2col_backward_input(g, gy, w, gx, accumulate);
  }
  ScratchScope scratch;
  const T* wa = adjoint_weights(g, w, scratch);
  implicit_gemm_forward(adjoint_geometry(g), gy, wa, gx, accumulate);
}

// What the weight pass's packing applies to gy first (Note [Adjoint prologue]):
// the prologue on gy in place, each row's sum into partial (N x K) for the bias.
template <class T>
struct PackPrologue {
  const AdjointPrologue<T>* prologue = nullptr;
  T* gy = nullptr;  // writable gy
  T* partial = nullptr;
};

// Panel (n, grp, blk) of gy: the block's NR filters of sample n, gy^T (out_vol
// x NR) into dst, zero columns past Kg; the prologue first, on gy in place,
// while the rows are in cache.
template <class T>
void pack_panel(const ConvGeometry& g, const T* gy, const PackPrologue<T>& fold, std::int64_t n, std::int64_t grp,
                std::int64_t blk, T* dst) {
  constexpr int NR = kTileCols<T>;
  const std::int64_t ov = g.out_vol(), k0 = blk * NR, kn = std::min<std::int64_t>(NR, g.Kg - k0);
  const std::int64_t first = (n * g.K + grp * g.Kg + k0) * ov;  // kn rows of ov from here
  if (fold.prologue)
    for (std::int64_t j = 0; j < kn; ++j) {
      T* row = fold.gy + first + j * ov;
      fold.prologue->apply(row, first + j * ov, ov);
      if (fold.partial) fold.partial[n * g.K + grp * g.Kg + k0 + j] = sum_run(row, ov);
    }
  transpose_blocks(gy + first, ov, kn, ov, dst, NR);  // dst[p][j] = gy row j's p
  if (kn < NR)
    for (std::int64_t p = 0; p < ov; ++p) std::fill(dst + p * NR + kn, dst + (p + 1) * NR, T(0));
}

// Note [Weight tiles sum sample blocks]: a tile's inner loop runs over one
// sample's positions only (out_vol, often a few hundred), so its fixed costs
// (the tile's loads and stores, the add into gw) are paid per sample block
// instead: the tile accumulates kSampleBlock samples before it is added.
constexpr std::int64_t kSampleBlock = 4;

// The weight pass's index table for a sample block: position p of the block's
// s-th sample reads the padded input at s * C * plane + base[p], so one
// micro-kernel call runs the whole block (gy's panels of a block's samples lie
// back to back), its sums in registers from one sample to the next.
std::span<std::int64_t> block_positions(const ConvGeometry& g, const Layout& L, ScratchScope& scratch) {
  const std::int64_t ov = g.out_vol();
  std::span<std::int64_t> table = scratch.take<std::int64_t>(kSampleBlock * ov);
  for (std::int64_t s = 0; s < kSampleBlock; ++s)
    for (std::int64_t p = 0; p < ov; ++p) table[s * ov + p] = s * g.C * L.plane + L.base[p];
  return table;
}

// Tile (group, filter block, patch-row tile rt) of gw (K, R) += the `samples`
// samples of one block: x_first is the first one's padded input, gy_first its
// packed panel of the block's filters, the others' following it. With `next`
// > 0, block blk + 1's tile as well, its panels at gy_first + next (Note [Paired tiles]).
template <class T>
void add_weight_tile(const ConvGeometry& g, const Layout& L, const std::int64_t* positions, std::int64_t grp,
                     std::int64_t blk, std::int64_t rt, std::int64_t samples, const T* x_first, const T* gy_first,
                     std::int64_t next, T* gw) {
  constexpr int NR = kTileCols<T>;
  constexpr std::int64_t kTile = kTileRows * NR;
  const std::int64_t R = g.Cg * g.ker_vol(), t0 = rt * kTileRows;
  T out[2 * kTile];
  T* const out_rows[kTileRows] = {out, out + NR, out + 2 * NR, out + 3 * NR, out + 4 * NR, out + 5 * NR};
  const T* rows[kTileRows];
  tile_rows(x_first + grp * g.Cg * L.plane, L.tap.data(), t0, R, rows);
  // out (patch rows t0.. x filters k0..) = patches (6 x samples * out_vol) . gy^T (samples * out_vol x NR)
  if (next > 0) gemm_tile_pair(rows, positions, gy_first, next, samples * g.out_vol(), out_rows, kTile);
  else gemm_tile(rows, positions, gy_first, samples * g.out_vol(), out_rows, false);
  const std::int64_t tn = std::min<std::int64_t>(kTileRows, R - t0);
  for (std::int64_t b = 0; b < (next > 0 ? 2 : 1); ++b) {
    const std::int64_t k0 = (blk + b) * NR, kn = std::min<std::int64_t>(NR, g.Kg - k0);
    for (std::int64_t j = 0; j < kn; ++j) {
      T* dst = gw + (grp * g.Kg + k0 + j) * R + t0;
      for (std::int64_t i = 0; i < tn; ++i) dst[i] += out[b * kTile + i * NR + j];
    }
  }
}

// Note [Weight pass on each thread's own copies]: with the whole batch's copies
// shared, every thread's tiles read the padded input both threads wrote, and
// where the threads do not share an L3 (the test VM's vCPUs on two dies) two
// threads took longer than one (128x64x14x14 -> 128 stride 2: 12.5 ms against
// 11.4). When the (group, filter block) units divide evenly among the threads,
// each thread owns whole units instead: it copies the padded input of a few
// samples at a time and packs its own units' panels (their prologue rows are
// its alone), so it reads nothing another thread wrote. Every tile still adds
// the same sample blocks into gw in the same order, so the result is the same
// for every thread count. Rejected: threads taking samples (each a partial gw,
// summed in order), whose sums would change with the thread count.
constexpr double kOwnCopyBytes = double(2 << 20);

template <class T>
void weight_pass_on_own_copies(const ConvGeometry& g, const Layout& L, const std::int64_t* positions, const T* x,
                               const T* gy, const PackPrologue<T>& fold, T* gw, int threads) {
  constexpr int NR = kTileCols<T>;
  const std::int64_t ov = g.out_vol(), blocks = column_blocks(g.Kg, NR), units = g.groups * blocks;
  const std::int64_t row_tiles = (g.Cg * g.ker_vol() + kTileRows - 1) / kTileRows;
  const double per_sample = double(sizeof(T)) * (double(g.C) * double(L.copy ? L.plane : 0) + double(units / threads) * double(ov * NR));
  const std::int64_t fit = std::max<std::int64_t>(1, std::int64_t(kOwnCopyBytes / per_sample) / kSampleBlock);
  const bool paired = paired_tiles();
  const std::int64_t span = std::min(g.N, fit * kSampleBlock);  // samples per copy, whole sample blocks
#pragma omp parallel num_threads(threads)
  {
    const std::int64_t t = omp_get_thread_num(), u0 = units * t / threads, u1 = units * (t + 1) / threads;
    ScratchScope local;
    T* packed = local.take<T>((u1 - u0) * span * ov * NR).data();  // [unit][sample][position][NR]
    for (std::int64_t s0 = 0; s0 < g.N; s0 += span) {
      const std::int64_t s1 = std::min(g.N, s0 + span);
      ScratchScope copies;
      const T* xp = L.copy ? zero_padded(x + s0 * g.C * g.in_vol(), (s1 - s0) * g.C, g.in, g.lo, L.padded, copies)
                           : x + s0 * g.C * g.in_vol();
      auto panel = [&](std::int64_t u, std::int64_t n) { return packed + ((u - u0) * span + (n - s0)) * ov * NR; };
      for (std::int64_t n = s0; n < s1; ++n)
        for (std::int64_t u = u0; u < u1; ++u) pack_panel(g, gy, fold, n, u / blocks, u % blocks, panel(u, n));
      for (std::int64_t n0 = s0; n0 < s1; n0 += kSampleBlock)
        for (std::int64_t u = u0; u < u1;) {
          // Pairs of a thread's own units of one group (Note [Paired tiles]).
          const bool pair = paired && u + 1 < u1 && (u + 1) % blocks != 0;
          for (std::int64_t rt = 0; rt < row_tiles; ++rt)
            add_weight_tile(g, L, positions, u / blocks, u % blocks, rt, std::min(s1 - n0, kSampleBlock),
                            xp + (n0 - s0) * g.C * L.plane, panel(u, n0), pair ? span * ov * NR : 0, gw);
          u += pair ? 2 : 1;
        }
    }
  }
}

// gw (K, R) += sum over samples: each thread owns a fixed set of (group, filter
// block, patch-row tile) tiles and adds every sample's contribution to them in
// sample order, so the sum is race-free and the same on every run.
template <class T>
void implicit_gemm_backward_weight(const ConvGeometry& g, const T* x, const T* gy, T* gw,
                                   const AdjointPrologue<T>* prologue, T* gy_in_place) {
  constexpr int NR = kTileCols<T>;
  require_implicit_gemm(g, ConvPass::backward_weight, "conv");
  ScratchScope scratch;
  const Layout L = make_layout(g, scratch);
  const std::int64_t ov = g.out_vol(), blocks = column_blocks(g.Kg, NR), units = g.groups * blocks;
  PackPrologue<T> fold;
  if (prologue) {
    fold = {prologue, gy_in_place, prologue->bias_grad ? scratch.take<T>(g.N * g.K).data() : nullptr};
  }
  const std::int64_t* positions = block_positions(g, L, scratch).data();
  const int threads = conv_threads();
  if (threads > 1 && units % threads == 0 && !omp_in_parallel()) {
    weight_pass_on_own_copies(g, L, positions, x, gy, fold, gw, threads);
    if (fold.partial) add_channel_sums(g, fold.partial, prologue->bias_grad);
    return;
  }
  const T* xp = L.copy ? zero_padded(x, g.N * g.C, g.in, g.lo, L.padded, scratch) : x;
  T* gyp = scratch.take<T>(units * g.N * ov * NR).data();  // [group][block][sample][position][NR]
  parallel_for(g.N * units, threads, [&](std::int64_t panel) {
    const std::int64_t n = panel / units, unit = panel % units;
    pack_panel(g, gy, fold, n, unit / blocks, unit % blocks, gyp + (unit * g.N + n) * ov * NR);
  });
  if (fold.partial) add_channel_sums(g, fold.partial, prologue->bias_grad);
  // Tiles of a group's column blocks, by pairs where paired (Note [Paired tiles]).
  const int step = column_block_step();
  const std::int64_t row_tiles = (g.Cg * g.ker_vol() + kTileRows - 1) / kTileRows;
  const std::int64_t block_tiles = (blocks + step - 1) / step, tiles = g.groups * block_tiles * row_tiles;
  // Runs inside a parallel region, or on the calling thread alone (Note [One-thread regions]).
  auto accumulate_tiles = [&] {
    for (std::int64_t n0 = 0; n0 < g.N; n0 += kSampleBlock) {
#pragma omp for schedule(static) nowait
      for (std::int64_t tile_index = 0; tile_index < tiles; ++tile_index) {
        const std::int64_t rt = tile_index % row_tiles, column = tile_index / row_tiles;
        const std::int64_t grp = column / block_tiles, blk = column % block_tiles * step, unit = grp * blocks + blk;
        const bool pair = step == 2 && blk + 1 < blocks;
        add_weight_tile(g, L, positions, grp, blk, rt, std::min(g.N - n0, kSampleBlock), xp + n0 * g.C * L.plane,
                        gyp + (unit * g.N + n0) * ov * NR, pair ? g.N * ov * NR : 0, gw);
      }
    }
  };
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    accumulate_tiles();
  } else {
    accumulate_tiles();
  }
}

#define TG_INSTANTIATE(T)                                                                           \
  template void implicit_gemm_forward<T>(const ConvGeometry&, const T*, const T*, T*, bool, const OutputEpilogue<T>*); \
  template void implicit_gemm_backward_input<T>(const ConvGeometry&, const T*, const T*, T*, bool);       \
  template void implicit_gemm_backward_weight<T>(const ConvGeometry&, const T*, const T*, T*,          \
                                                 const AdjointPrologue<T>*, T*);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg::kernels::conv_impl
