// The direct convolution's forward and weight gradient for few input channels
// (and input gradient for few filters), by shifted copies (Note [Shifted
// copies]): the weight pass at AVX-512 here, the forward at AVX-512 (here) or
// AVX2 (conv_shifted_avx2.cpp) from conv_shifted_passes.hpp. conv.cpp runs the
// direct algorithm's passes with these where shifted_runs(g, pass) holds (the
// input gradient as the adjoint conv's forward).
//
// Note [Shifted copies]: a unit-stride 1-D or 2-D conv with few taps per
// filter (LeNet's conv1: 1 channel, 5x5, 28-wide rows) has too few patch
// rows (Cg*KH*KW = 25) to fill GEMM tiles, and rows too narrow for whole
// vectors. Per sample, each input channel c is copied KW times: copy (c, dx)
// has the output's width W = out[2], out[1] + (KH-1)*dil rows, and holds the
// input shifted left by dx*dil columns, zero outside it. The input value that
// tap (c, dy, dx) meets at output position p (row-major over the output plane)
// is then copy(c, dx)[p + dy*dil*W]: every tap is one contiguous run over the
// whole plane, so both passes run over flat vectors of positions, with no row
// ends; only the plane's last vector is partial (masked loads).
//   forward: y[k][p] = sum over taps of w[k][tap] * run(tap)[p]; a block of F
//     filters x U vectors of positions in registers, per tap U loads and F
//     broadcasts.
//   weight:  gw[k][tap] = sum over samples and p of gy[k][p] * run(tap)[p];
//     a block of F filters x KW taps of one kernel row in registers, as
//     vectors of partial sums over positions; their lanes are added once, at
//     the end. Each filter block belongs to one thread and adds the samples in
//     order, so the sum is the same on every run and every thread count.
// Rejected: vectors along one output row (28 outputs: one whole and one
// partial zmm per row, L1's weight gradient 1.18-1.92x implicit GEMM's time);
// implicit GEMM itself, whose packing of gy is a quarter of L1's weight pass;
// and the weight pass on 256-bit vectors (16 registers: 2 filters x 5 taps),
// slower than implicit GEMM at AVX2 (the forward's 4 filters x 3 vectors are
// faster there: LeNet's conv1 0.93 ms against 1.54).
#include <algorithm>
#include <cstdint>

#include "zmm.hpp"
#define TG_SHIFTED_ISA avx512
#define TG_SHIFTED_VEC Zmm
#define TG_SHIFTED_TARGET __attribute__((target("avx512f,prfchw")))
#define TG_SHIFTED_VECTORS 6
#include "conv_shifted_passes.hpp"
#include "tapegrad/kernels/isa.hpp"
#include "tapegrad/kernels/parallel.hpp"
#include "tapegrad/kernels/reduce.hpp"
#include "tapegrad/kernels/scratch.hpp"

namespace tg::kernels::conv_impl {
namespace {

constexpr std::int64_t kMaxShiftedTaps = 128;        // Cg * KH * KW: the weight pass's sums per filter
constexpr std::int64_t kMaxShiftedRowTaps = 7;       // KW: one compiled kernel per count
constexpr double kMaxCopyElements = 1 << 18;        // the copies a thread holds at once: one group's

// The weight pass's filters per register block: F * KW sums, KW input
// vectors and one of gy in the 32 registers.
constexpr int filters_per_block(int KW) { return KW <= 3 ? 8 : 24 / KW; }

// ---- weight gradient ----------------------------------------------------------

// A register block of sums: acc[i][j] = sums' vector i * row_stride + j, and back.
template <class T, int R, int C>
[[gnu::always_inline]] TG_AVX512 inline void load_sums(typename Zmm<T>::V (&acc)[R][C], const T* sums,
                                                       std::int64_t row_stride) {
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < C; ++j) acc[i][j] = Zmm<T>::load(sums + (i * row_stride + j) * Zmm<T>::kLanes);
}
template <class T, int R, int C>
[[gnu::always_inline]] TG_AVX512 inline void store_sums(const typename Zmm<T>::V (&acc)[R][C], T* sums,
                                                        std::int64_t row_stride) {
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < C; ++j) Zmm<T>::store(sums + (i * row_stride + j) * Zmm<T>::kLanes, acc[i][j]);
}

// sums' vector f * KW + dx (L lanes of T) += gy[f][p] * run[dx][p] over p < plane,
// lane p % L, for f < F; meanwhile fetches `fetch` vectors from `next` into cache.
template <class T, int KW, int F>
TG_AVX512 void row_sums(T* sums, const T* const* gy, const T* const* run, std::int64_t plane, const T* next,
                        std::int64_t fetch) {
  using Z = Zmm<T>;
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
TG_AVX512 void tap_sums(T* sums, std::int64_t dy_stride, const T* gy, const T* const* run, std::int64_t row_step,
                        std::int64_t plane, const T* next, std::int64_t fetch) {
  using Z = Zmm<T>;
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

// The kernels whose KH x KW sums tap_sums holds in registers: square ones of 2 to 5 taps a row.
constexpr bool has_tap_sums(std::int64_t KH, int KW) { return KH == KW && KW >= 2 && KW <= 5; }

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
  return g.Cg * g.ker[1] * block_slots(g) * g.ker[2] * Zmm<T>::kLanes;
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
  static constexpr int F = filters_per_block(KW), L = Zmm<T>::kLanes;
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
        avx512::make_copies(g, s, masks, x, n, grp * g.Cg, (grp + 1) * g.Cg, copies);
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
  const WeightPass<T, KW> pass{g, s, prologue, gy_in_place, prologue ? gy_in_place : gy, partial, copy_masks<T, Zmm<T>::kLanes>(g, s, scratch)};
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

}  // namespace

bool shifted_applies(const ConvGeometry& g, ConvPass pass) {
  if (pass == ConvPass::backward_input) return unit_stride(g) && shifted_applies(adjoint_geometry(g), ConvPass::forward);
  // A 1x1 kernel has nothing to share between taps: it is a GEMM (im2col).
  if (g.spatial > 2 || g.stride[1] != 1 || g.stride[2] != 1 || g.ker[2] > kMaxShiftedRowTaps || g.ker_vol() == 1)
    return false;
  if (g.Cg * g.ker[1] * g.ker[2] > kMaxShiftedTaps) return false;
  // A group's channels are copied at once.
  const double rows = double(g.out[1]) + double(g.ker[1] - 1) * double(g.dil[1]);
  return double(g.Cg) * double(g.ker[2]) * (rows * double(g.out[2]) + 16) <= kMaxCopyElements;
}

bool shifted_runs(const ConvGeometry& g, ConvPass pass) {
  const Isa needs = pass == ConvPass::backward_weight ? Isa::avx512 : Isa::avx2;  // the weight pass is AVX-512 only
  return kernel_isa() >= needs && shifted_applies(g, pass);
}

bool pointwise_runs(const ConvGeometry& g) { return kernel_isa() >= Isa::avx512 && g.pointwise(); }

bool pointwise_runs_pass(const ConvGeometry& g, ConvPass pass) {
  return pass != ConvPass::backward_weight && pointwise_runs(g);
}

std::int64_t shifted_weight_tasks(const ConvGeometry& g) {
  const std::int64_t parts = weight_parts<float>(g);  // Note [Shifted weight pass by sample parts]
  return parts > 0 ? parts : weight_blocks(g);
}

template <class T>
void shifted_backward_weight(const ConvGeometry& g, const T* x, const T* gy, T* gw, const AdjointPrologue<T>* prologue,
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
  if (kernel_isa() >= Isa::avx512) return avx512::shifted_forward(g, x, w, y, accumulate, epilogue);
  avx2::shifted_forward(g, x, w, y, accumulate, epilogue);
}

// Note [Pointwise runs]: a 1x1 conv with unit stride and no padding needs no
// copies: each input channel's plane is already its tap's run, and the forward
// is the shifted copies' forward with Cg taps. A task is a chunk of a sample's
// positions, whole register blocks (up to 8) whose input runs stay within
// kPointwiseChunkBytes, so L2 holds them while every filter block passes over
// the chunk (the outputs go out in runs of up to 768 floats per plane: 256
// planes written 96 at a time left the stores waiting). With 64 taps a chunk
// is 8 blocks; with 256, 4 (8 blocks: 12-14% slower). The cost rule takes it
// for forwards and input gradients (the adjoint conv's forward) wherever the
// plane's last partial vector wastes little: against OpenBLAS, which packs
// both operands and zeroes y first, R4 and R5 take 8-14% less time, 128 ->
// 128 at 28x28 20-35% less; 7x7 planes (3 whole vectors and one of 1) stay
// with OpenBLAS, 10-18% faster there at one thread. AVX-512 only: with AVX2's
// 4 x 3 blocks R4's forward and R5's input gradient took 13.0-13.7 ms against
// OpenBLAS's 10.0-12.3.
constexpr std::int64_t kPointwiseChunkBytes = 400 << 10;  // a task's input runs: Cg x its positions

template <class T>
void pointwise_forward(const ConvGeometry& g, const T* x, const T* w, T* y, bool accumulate,
                       const OutputEpilogue<T>* epilogue) {
  constexpr std::int64_t kVectors = avx512::kForwardVectors * Zmm<T>::kLanes;  // positions per register block
  const std::int64_t block_bytes = g.Cg * kVectors * std::int64_t(sizeof(T));
  const std::int64_t chunk = kVectors * std::clamp<std::int64_t>(kPointwiseChunkBytes / block_bytes, 1, 8);  // positions a task
  const std::int64_t plane = g.out_vol(), blocks = (plane + chunk - 1) / chunk;
  parallel_for(g.N * g.groups * blocks, threads_if(g.macs() > 1e5), [&](std::int64_t task) {
    const std::int64_t block = task % blocks, grp = task / blocks % g.groups, n = task / (blocks * g.groups);
    ScratchScope own;  // this thread's stack (Note [Scratch stack])
    const T** run = own.take<const T*>(g.Cg).data();
    for (std::int64_t c = 0; c < g.Cg; ++c) run[c] = x + (n * g.C + grp * g.Cg + c) * plane;
    avx512::output_range(g, n, grp, w, y, run, g.Cg, block * chunk, std::min(plane, (block + 1) * chunk), accumulate, epilogue);
  });
}

#define TG_INSTANTIATE(T)                                                                                       \
  template void shifted_forward<T>(const ConvGeometry&, const T*, const T*, T*, bool, const OutputEpilogue<T>*); \
  template void pointwise_forward<T>(const ConvGeometry&, const T*, const T*, T*, bool, const OutputEpilogue<T>*); \
  template void shifted_backward_weight<T>(const ConvGeometry&, const T*, const T*, T*, const AdjointPrologue<T>*, T*);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

namespace avx512 {
#define TG_INSTANTIATE(T)                                                                                       \
  template void shifted_forward<T>(const ConvGeometry&, const T*, const T*, T*, bool, const OutputEpilogue<T>*);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE
}  // namespace avx512

}  // namespace tg::kernels::conv_impl
