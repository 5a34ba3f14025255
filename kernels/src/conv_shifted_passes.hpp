// The shifted copies' passes (Note [Shifted copies], conv_shifted.cpp): the
// copies, the forward and the weight pass, compiled once per level: in
// conv_shifted.cpp at avx512 (Zmm, 32 registers) and in conv_shifted_avx2.cpp
// at avx2 (Ymm, 16 registers), each in its own namespace (TG_SHIFTED_ISA),
// every vector loop with the level's target attribute (TG_SHIFTED_TARGET),
// TG_SHIFTED_VECTORS position vectors per forward register block and the
// weight pass's blocks sized for TG_SHIFTED_REGISTERS. Include from those two
// files only.
#pragma once

#include <algorithm>
#include <cstdint>

#include "conv_impl.hpp"
#include "conv_shifted.hpp"
#include "tapegrad/kernels/parallel.hpp"
#include "tapegrad/kernels/reduce.hpp"
#include "tapegrad/kernels/scratch.hpp"

#if !defined(TG_SHIFTED_ISA) || !defined(TG_SHIFTED_VEC) || !defined(TG_SHIFTED_TARGET) || !defined(TG_SHIFTED_VECTORS) || \
    !defined(TG_SHIFTED_REGISTERS)
#error "define TG_SHIFTED_ISA, _VEC, _TARGET, _VECTORS and _REGISTERS before including conv_shifted_passes.hpp"
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

// The weight pass's filters per register block: F * KW sums, KW input
// vectors and one of gy in the level's 32 or 16 registers.
constexpr int filters_per_block(int KW) {
  if (TG_SHIFTED_REGISTERS == 32) return KW <= 3 ? 8 : 24 / KW;
  return KW <= 3 ? 4 : KW <= 5 ? 2 : 1;
}

// ---- weight gradient ----------------------------------------------------------

// A register block of sums: acc[i][j] = sums' vector i * row_stride + j, and back.
template <class T, int R, int C>
[[gnu::always_inline]] TG_SHIFTED_TARGET inline void load_sums(typename Vec<T>::V (&acc)[R][C], const T* sums,
                                                               std::int64_t row_stride) {
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < C; ++j) acc[i][j] = Vec<T>::load(sums + (i * row_stride + j) * Vec<T>::kLanes);
}
template <class T, int R, int C>
[[gnu::always_inline]] TG_SHIFTED_TARGET inline void store_sums(const typename Vec<T>::V (&acc)[R][C], T* sums,
                                                                std::int64_t row_stride) {
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < C; ++j) Vec<T>::store(sums + (i * row_stride + j) * Vec<T>::kLanes, acc[i][j]);
}

// sums' vector f * KW + dx (L lanes of T) += gy[f][p] * run[dx][p] over p < plane,
// lane p % L, for f < F; meanwhile fetches `fetch` vectors from `next` into cache.
template <class T, int KW, int F>
TG_SHIFTED_TARGET void row_sums(T* sums, const T* const* gy, const T* const* run, std::int64_t plane, const T* next,
                                std::int64_t fetch) {
  using Z = Vec<T>;
  using V = typename Z::V;
  constexpr int L = Z::kLanes;
  V acc[F][KW];
  load_sums<T>(acc, sums, KW);
  std::int64_t p = 0;
  for (; p + L <= plane; p += L) {
    if (p < fetch * L) _mm_prefetch(reinterpret_cast<const char*>(next + p), _MM_HINT_T0);
    V in[KW];
#pragma GCC unroll 8
    for (int dx = 0; dx < KW; ++dx) in[dx] = Z::load(run[dx] + p);
#pragma GCC unroll 8
    for (int f = 0; f < F; ++f) {
      const V adj = Z::load(gy[f] + p);
#pragma GCC unroll 8
      for (int dx = 0; dx < KW; ++dx) acc[f][dx] = Z::fma(adj, in[dx], acc[f][dx]);
    }
  }
  if (p < plane) {  // both operands masked: the lanes past the plane add 0 * 0
    V in[KW];
#pragma GCC unroll 8
    for (int dx = 0; dx < KW; ++dx) in[dx] = Z::load_first(run[dx] + p, plane - p);
#pragma GCC unroll 8
    for (int f = 0; f < F; ++f) {
      const V adj = Z::load_first(gy[f] + p, plane - p);
#pragma GCC unroll 8
      for (int dx = 0; dx < KW; ++dx) acc[f][dx] = Z::fma(adj, in[dx], acc[f][dx]);
    }
  }
  store_sums<T>(acc, sums, KW);
}

// row_sums for a block of `filters` <= filters_per_block(KW) filters.
template <class T, int KW, int F = filters_per_block(KW)>
void row_sums_for(int filters, T* sums, const T* const* gy, const T* const* run, std::int64_t plane, const T* next,
                  std::int64_t fetch) {
  if constexpr (F > 1)
    if (filters < F) return row_sums_for<T, KW, F - 1>(filters, sums, gy, run, plane, next, fetch);
  row_sums<T, KW, F>(sums, gy, run, plane, next, fetch);
}

// Note [One filter, every kernel row]: a block of one filter (a depthwise
// layer) gives row_sums KW sums a call, one per tap of a kernel row: each
// position vector loads KW inputs and gy for KW FMAs, and the KW chains keep
// an FMA unit at most KW/4 busy (4 cycles of latency). tap_sums runs all KH
// rows of a channel at once instead: KH x KW sums, gy loaded once for KH x KW
// FMAs. Each sum still adds the positions in order from the value it had, so
// the results are row_sums' bit for bit. Rejected: gy shifted by kernel rows
// against one load of each copy (KW + KH loads a vector instead of KH x KW + 1),
// which needs a zero-extended copy of gy for the shifted reads.

// sums' vector (dy * dy_stride + dx) * L (lanes of T) += gy[p] * run[dx][dy * row_step + p]
// over p < plane, lane p % L, for dy < KH and dx < KW; fetching as row_sums.
template <class T, int KH, int KW>
TG_SHIFTED_TARGET void tap_sums(T* sums, std::int64_t dy_stride, const T* gy, const T* const* run, std::int64_t row_step,
                                std::int64_t plane, const T* next, std::int64_t fetch) {
  using Z = Vec<T>;
  using V = typename Z::V;
  constexpr int L = Z::kLanes;
  V acc[KH][KW];
  load_sums<T>(acc, sums, dy_stride);
  std::int64_t p = 0;
  for (; p + L <= plane; p += L) {
    if (p < fetch * L) _mm_prefetch(reinterpret_cast<const char*>(next + p), _MM_HINT_T0);
    const V adj = Z::load(gy + p);
#pragma GCC unroll 8
    for (int dy = 0; dy < KH; ++dy)
#pragma GCC unroll 8
      for (int dx = 0; dx < KW; ++dx) acc[dy][dx] = Z::fma(adj, Z::load(run[dx] + dy * row_step + p), acc[dy][dx]);
  }
  if (p < plane) {  // both operands masked: the lanes past the plane add 0 * 0
    const V adj = Z::load_first(gy + p, plane - p);
#pragma GCC unroll 8
    for (int dy = 0; dy < KH; ++dy)
#pragma GCC unroll 8
      for (int dx = 0; dx < KW; ++dx)
        acc[dy][dx] = Z::fma(adj, Z::load_first(run[dx] + dy * row_step + p, plane - p), acc[dy][dx]);
  }
  store_sums<T>(acc, sums, dy_stride);
}

// The kernels whose KH x KW sums tap_sums holds in registers: square ones of 2 to 5 taps a row
// (2 or 3 in AVX2's 16 registers).
constexpr bool has_tap_sums(std::int64_t KH, int KW) {
  return KH == KW && KW >= 2 && KW <= (TG_SHIFTED_REGISTERS == 32 ? 5 : 3);
}

// The weight pass's blocks of filters (filters_per_block of one group each),
// their filter slots (fewer where a group has fewer filters, as a depthwise
// layer's one), and the sums one block keeps: [c][dy][slot][dx][lane].
std::int64_t weight_blocks(const ConvGeometry& g) {
  const std::int64_t F = filters_per_block(static_cast<int>(g.ker[2]));
  return g.groups * ((g.Kg + F - 1) / F);
}
inline std::int64_t block_slots(const ConvGeometry& g) {
  return std::min<std::int64_t>(filters_per_block(static_cast<int>(g.ker[2])), g.Kg);
}
template <class T>
std::int64_t weight_block_sums(const ConvGeometry& g) {
  return g.Cg * g.ker[1] * block_slots(g) * g.ker[2] * Vec<T>::kLanes;
}

// Note [Shifted weight pass by sample parts]: where every block's sums fit
// in kPartSumBytes, the samples are cut into weight_parts(g) ranges (by the
// batch alone, never by the thread count, so the gradient is the same at any
// number of threads), each range summing every block into sums of its own,
// added into gw in a fixed tree (run_parts). With 2 threads each then reads the x and gy
// that the sample-split passes around it wrote on the same thread, and makes
// each sample's copies once. Cut by filter blocks (the rule where the sums
// are larger), every thread read every sample: half of gy from the other
// thread, and those lines, shared, were slow to write in the next step where
// the threads do not share an L3 (LeNet's conv1). Rejected: a range per thread,
// whose sums would change with the thread count. Past kMaxPartBlocks blocks
// the blocks themselves spread over the threads, and the parts' sums (parts x
// blocks of them, zeroed, then added in the tree) cost more than the parts
// save: a depthwise 8x128x14^2 layer's pass took 0.172 ms by parts against
// 0.133 by blocks (one thread).
constexpr std::int64_t kPartSumBytes = std::int64_t(256) << 10, kMaxWeightParts = 8, kMaxPartBlocks = 32;

// The sample ranges of the weight pass, or 0 where it is cut by filter blocks.
template <class T>
std::int64_t weight_parts(const ConvGeometry& g) {
  const bool by_samples = weight_blocks(g) <= kMaxPartBlocks &&
                          weight_blocks(g) * weight_block_sums<T>(g) * std::int64_t(sizeof(T)) <= kPartSumBytes;
  return by_samples ? std::min(g.N, kMaxWeightParts) : 0;
}

// The weight pass's blocks of F filters (filters of one group), numbered
// across groups, and what each thread does with its range of them.
template <class T, int KW>
struct WeightPass {
  static constexpr int F = filters_per_block(KW), L = Vec<T>::kLanes;
  const ConvGeometry& g;
  const ShiftedLayout s;
  const AdjointPrologue<T>* prologue;
  T* gy_in_place;
  const T* adjoint;  // gy, or gy_in_place once the prologue ran on it
  T* partial;        // per (sample, filter) sums of the adjoint for the bias, or null
  const unsigned* masks;  // copy_masks
  std::int64_t blocks_per_group = (g.Kg + F - 1) / F, blocks = weight_blocks(g);
  std::int64_t slots = block_slots(g), sums_per_block = weight_block_sums<T>(g);  // [c][dy][slot][dx][lane]

  std::int64_t first_filter(std::int64_t b) const { return b / blocks_per_group * g.Kg + b % blocks_per_group * F; }
  int filters_of(std::int64_t b) const {
    return static_cast<int>(std::min<std::int64_t>(F, (b / blocks_per_group + 1) * g.Kg - first_filter(b)));
  }

  // Blocks [b0, b1) over every sample, adding their sums into gw.
  void run_blocks(std::int64_t b0, std::int64_t b1, const T* x, T* gw) const {
    ScratchScope own;  // this thread's stack (Note [Scratch stack])
    T* sums = own.take_filled<T>((b1 - b0) * sums_per_block, T(0)).data();
    run(0, g.N, b0, b1, x, sums);
    for (std::int64_t b = b0; b < b1; ++b) add_lanes(b, sums + (b - b0) * sums_per_block, gw);
  }

  // Samples [n0, n1) of blocks [b0, b1), their sums into sums[b - b0]: per
  // sample, group by group, each group's copies made just before its blocks
  // read them, so a depthwise layer's copies are read back from L1, not L2.
  void run(std::int64_t n0, std::int64_t n1, std::int64_t b0, std::int64_t b1, const T* x, T* sums) const {
    ScratchScope own;  // this thread's stack (Note [Scratch stack])
    T* copies = own.take<T>(s.copies_of(g.Cg)).data();  // one group's
    for (std::int64_t n = n0; n < n1; ++n)
      for (std::int64_t b = b0; b < b1;) {
        const std::int64_t grp = b / blocks_per_group, group_end = std::min(b1, (grp + 1) * blocks_per_group);
        make_copies(g, s, masks, x, n, grp * g.Cg, (grp + 1) * g.Cg, copies);
        for (; b < group_end; ++b) {
          const bool same_sample = b + 1 < b1;
          const T* next = same_sample || n + 1 < n1 ? plane_of(same_sample ? n : n + 1, same_sample ? b + 1 : b0) : nullptr;
          block_sums(n, b, copies, next, next ? filters_of(same_sample ? b + 1 : b0) : 0, sums + (b - b0) * sums_per_block);
        }
      }
  }

  const T* plane_of(std::int64_t n, std::int64_t b) const { return adjoint + (n * g.K + first_filter(b)) * s.plane; }

  // Sample n's share of block b's sums, from its group's copies.
  // Note [Fetching the next block]: gy's planes come from memory once; the
  // next block's (`next_filters` planes at `next`: the next filters', or the
  // next sample's first) are fetched a share per kernel row while this
  // block's sums run, so the first row's loads find them in cache. (Without:
  // LeNet's conv1 weight pass took 1.21 ms from memory against 0.87 ms.)
  void block_sums(std::int64_t n, std::int64_t b, const T* copies, const T* next, int next_filters, T* sums) const {
    const int filters = filters_of(b);
    const T* planes[F];
    for (int f = 0; f < filters; ++f) planes[f] = fold_prologue(n, first_filter(b) + f);
    const std::int64_t next_vectors = (next_filters * s.plane + L - 1) / L;
    const std::int64_t rounds = g.Cg * s.KH, share = (next_vectors + rounds - 1) / rounds;
    const T* run[KW];
    if (filters == 1 && has_tap_sums(s.KH, KW)) return one_filter_sums(copies, planes[0], next, next_vectors, sums);
    for (std::int64_t c = 0; c < g.Cg; ++c)
      for (std::int64_t dy = 0; dy < s.KH; ++dy) {
        for (int dx = 0; dx < KW; ++dx) run[dx] = copies + (c * KW + dx) * s.copy_stride + dy * s.row_step;
        const std::int64_t round = c * s.KH + dy, fetch = std::clamp<std::int64_t>(next_vectors - round * share, 0, share);
        row_sums_for<T, KW>(filters, sums + round * slots * KW * L, planes, run, s.plane,
                            next ? next + round * share * L : planes[0], fetch);
      }
  }

  // block_sums for a block of one filter (Note [One filter, every kernel row]):
  // a channel's kernel rows at once, the next block's planes fetched a share per channel.
  void one_filter_sums(const T* copies, const T* gy, const T* next, std::int64_t next_vectors, T* sums) const {
    const std::int64_t share = (next_vectors + g.Cg - 1) / g.Cg;
    const T* run[KW];
    for (std::int64_t c = 0; c < g.Cg; ++c) {
      for (int dx = 0; dx < KW; ++dx) run[dx] = copies + (c * KW + dx) * s.copy_stride;
      const std::int64_t fetch = std::clamp<std::int64_t>(next_vectors - c * share, 0, share);
      if constexpr (has_tap_sums(KW, KW))
        tap_sums<T, KW, KW>(sums + c * s.KH * slots * KW * L, slots * KW, gy, run, s.row_step, s.plane,
                            next ? next + c * share * L : gy, fetch);
    }
  }

  // Filter k's adjoint plane of sample n, the prologue applied (while the plane is in cache).
  const T* fold_prologue(std::int64_t n, std::int64_t k) const {
    const std::int64_t at = (n * g.K + k) * s.plane;
    if (prologue) {
      prologue->apply(gy_in_place + at, at, s.plane);
      if (partial) partial[n * g.K + k] = sum_run(gy_in_place + at, s.plane);
    }
    return adjoint + at;
  }

  // gw of block b's filters += the lanes of their sums.
  void add_lanes(std::int64_t b, const T* sums, T* gw) const {
    const std::int64_t k0 = first_filter(b);
    for (std::int64_t c = 0; c < g.Cg; ++c)
      for (std::int64_t dy = 0; dy < s.KH; ++dy)
        for (int f = 0; f < filters_of(b); ++f)
          for (int dx = 0; dx < KW; ++dx) {
            const T* lanes = sums + ((c * s.KH + dy) * slots * KW + f * KW + dx) * L;
            gw[((k0 + f) * g.Cg + c) * s.KH * KW + dy * KW + dx] += sum_run(lanes, L);
          }
  }
};

// The weight pass by weight_parts(g) sample parts (Note [Shifted weight pass
// by sample parts]): each part's sums over every block, then the parts added
// in a fixed tree (each half of the parts in range order, on the threads that
// wrote them; then the two halves) and into gw.
template <class T, int KW>
void run_parts(const WeightPass<T, KW>& pass, std::int64_t parts, const T* x, T* gw) {
  const ConvGeometry& g = pass.g;
  const std::int64_t part_size = pass.blocks * pass.sums_per_block, half = (parts + 1) / 2;
  const int threads = threads_if(g.macs() > 1e5);
  ScratchScope scratch;
  T* sums = scratch.take<T>(parts * part_size).data();  // [part][block][sums_per_block]
  parallel_for(parts, threads, [&](std::int64_t p) {
    std::fill(sums + p * part_size, sums + (p + 1) * part_size, T(0));
    pass.run(g.N * p / parts, g.N * (p + 1) / parts, 0, pass.blocks, x, sums + p * part_size);
  });
  parallel_for(2 * pass.blocks, threads, [&](std::int64_t task) {
    const std::int64_t p0 = task / pass.blocks * half, p1 = std::min(parts, p0 + half);
    if (p0 >= parts) return;
    T* first = sums + p0 * part_size + task % pass.blocks * pass.sums_per_block;
    for (std::int64_t p = p0 + 1; p < p1; ++p)
      for (std::int64_t i = 0; i < pass.sums_per_block; ++i) first[i] += first[(p - p0) * part_size + i];
  });
  parallel_for(pass.blocks, threads, [&](std::int64_t b) {
    T* block = sums + b * pass.sums_per_block;
    if (half < parts)
      for (std::int64_t i = 0; i < pass.sums_per_block; ++i) block[i] += block[half * part_size + i];
    pass.add_lanes(b, block, gw);
  });
}

template <class T, int KW>
void weight_pass(const ConvGeometry& g, const T* x, const T* gy, T* gw, const AdjointPrologue<T>* prologue, T* gy_in_place) {
  ScratchScope scratch;
  T* partial = prologue && prologue->bias_grad ? scratch.take<T>(g.N * g.K).data() : nullptr;
  const ShiftedLayout s = ShiftedLayout::of<T>(g);
  const WeightPass<T, KW> pass{g, s, prologue, gy_in_place, prologue ? gy_in_place : gy, partial, copy_masks<T, Vec<T>::kLanes>(g, s, scratch)};
  if (const std::int64_t parts = weight_parts<T>(g)) {
    run_parts(pass, parts, x, gw);
  } else {
    const int threads = static_cast<int>(std::min<std::int64_t>(pass.blocks, threads_if(g.macs() > 1e5)));
    // One task per thread: a fixed range of filter blocks over every sample.
    parallel_for(threads, threads, [&](std::int64_t t) {
      const std::int64_t b0 = pass.blocks * t / threads, b1 = pass.blocks * (t + 1) / threads;
      if (b0 < b1) pass.run_blocks(b0, b1, x, gw);
    });
  }
  if (partial) add_channel_sums(g, partial, prologue->bias_grad);
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

// Whether every block of the weight pass is one filter whose sums tap_sums
// holds in the level's registers (Note [One filter, every kernel row]).
bool one_filter_sums_fit(const ConvGeometry& g) { return g.Kg == 1 && has_tap_sums(g.ker[1], static_cast<int>(g.ker[2])); }

// The weight pass's units of work: its sample parts, or its blocks of filters (each on one thread).
std::int64_t weight_tasks(const ConvGeometry& g) {
  const std::int64_t parts = weight_parts<float>(g);  // Note [Shifted weight pass by sample parts]
  return parts > 0 ? parts : weight_blocks(g);
}

template <class T>
void backward_weight(const ConvGeometry& g, const T* x, const T* gy, T* gw, const AdjointPrologue<T>* prologue,
                     T* gy_in_place) {
  switch (g.ker[2]) {
    case 1: return weight_pass<T, 1>(g, x, gy, gw, prologue, gy_in_place);
    case 2: return weight_pass<T, 2>(g, x, gy, gw, prologue, gy_in_place);
    case 3: return weight_pass<T, 3>(g, x, gy, gw, prologue, gy_in_place);
    case 4: return weight_pass<T, 4>(g, x, gy, gw, prologue, gy_in_place);
    case 5: return weight_pass<T, 5>(g, x, gy, gw, prologue, gy_in_place);
    case 6: return weight_pass<T, 6>(g, x, gy, gw, prologue, gy_in_place);
    default: return weight_pass<T, 7>(g, x, gy, gw, prologue, gy_in_place);
  }
}

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

#define TG_INSTANTIATE(T)                                                                                       \
  template void shifted_forward<T>(const ConvGeometry&, const T*, const T*, T*, bool, const OutputEpilogue<T>*); \
  template void backward_weight<T>(const ConvGeometry&, const T*, const T*, T*, const AdjointPrologue<T>*, T*);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg::kernels::conv_impl::TG_SHIFTED_ISA
