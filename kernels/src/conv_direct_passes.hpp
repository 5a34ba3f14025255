// The direct convolution's loops (conv_direct.cpp says how they go), compiled
// twice as the Winograd passes are (conv_winograd_passes.hpp): in
// conv_direct.cpp for any x86-64 and in conv_direct_avx2.cpp with AVX2+FMA
// (a target pragma after the includes), each in its own namespace
// (TG_DIRECT_ISA). Include from those two files only.
#pragma once

#include <omp.h>

#include <algorithm>
#include <limits>
#include <span>

#include "conv_impl.hpp"
#include "lanes.hpp"
#include "tapegrad/kernels/parallel.hpp"
#include "tapegrad/kernels/scratch.hpp"

#ifndef TG_DIRECT_ISA
#error "define TG_DIRECT_ISA (portable or avx2) before including conv_direct_passes.hpp"
#endif

#if defined(TG_DIRECT_AVX2) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

namespace tg::kernels::conv_impl::TG_DIRECT_ISA {
namespace {

constexpr double kParallelMacs = 1e5;  // below this a parallel region costs more than it saves

std::span<const TapRange> row_ranges(const ConvGeometry& g, ScratchScope& scratch) {
  std::span<TapRange> r = scratch.take<TapRange>(g.ker[2]);
  for (std::int64_t t = 0; t < g.ker[2]; ++t) r[static_cast<std::size_t>(t)] = tap_range(g, 2, t);
  return r;
}

// y[o] += w * x[o * stride] for o in [0, count)
template <class T>
inline void axpy_row(T* __restrict y, T w, const T* __restrict x, std::int64_t count, std::int64_t stride) {
  if (stride == 1)
    for (std::int64_t o = 0; o < count; ++o) y[o] += w * x[o];
  else
    for (std::int64_t o = 0; o < count; ++o) y[o] += w * x[o * stride];
}

// x[o * stride] += w * y[o] for o in [0, count)
template <class T>
inline void scatter_row(T* __restrict x, T w, const T* __restrict y, std::int64_t count, std::int64_t stride) {
  if (stride == 1)
    for (std::int64_t o = 0; o < count; ++o) x[o] += w * y[o];
  else
    for (std::int64_t o = 0; o < count; ++o) x[o * stride] += w * y[o];
}

// sum over o in [0, count) of x[o * stride] * y[o]
template <class T>
inline T dot_row(const T* __restrict x, const T* __restrict y, std::int64_t count, std::int64_t stride) {
  // kLanes independent partial sums (four AVX2 vectors' worth): the compiler
  // vectorises the inner loop without reassociating anything, and four FMA
  // chains hide the FMA latency a single running sum would wait on.
  // (Only where there is a whole round of them: a short edge would pay for
  // zeroing and adding up kLanes sums it never used.)
  constexpr int kLanes = 128 / sizeof(T);
  std::int64_t o = 0;
  T acc = T(0);
  if (stride == 1 && count >= kLanes) {
    T lanes[kLanes] = {};
    for (; o + kLanes <= count; o += kLanes)
      for (int j = 0; j < kLanes; ++j) lanes[j] += x[o + j] * y[o + j];
    for (int j = 0; j < kLanes; ++j) acc += lanes[j];
  }
  for (; o < count; ++o) acc += x[o * stride] * y[o];
  return acc;
}

// Offset into an input row of the first output a tap reaches (never out of bounds).
inline std::int64_t first_input(const TapRange& r, std::int64_t stride) { return r.offset + r.begin * stride; }

// Calls f(input_row_offset, tap_row_offset) for every kernel row (t0, t1) whose
// input row lies inside the input for output row (o0, o1).
template <class F>
inline void for_each_tap_row(const ConvGeometry& g, std::int64_t o0, std::int64_t o1, F f) {
  for (std::int64_t t0 = 0; t0 < g.ker[0]; ++t0) {
    const std::int64_t i0 = input_index(g, 0, o0, t0);
    if (i0 < 0) continue;
    for (std::int64_t t1 = 0; t1 < g.ker[1]; ++t1) {
      const std::int64_t i1 = input_index(g, 1, o1, t1);
      if (i1 < 0) continue;
      f((i0 * g.in[1] + i1) * g.in[2], (t0 * g.ker[1] + t1) * g.ker[2]);
    }
  }
}

// The fused passes' vectors: 256-bit with AVX2, else 128-bit, the register
// width (a 256-bit vector extension compiled for SSE2 came out as pairs of
// xmm registers built through the stack, 2.7x the old loops' time).
#ifdef TG_DIRECT_AVX2
constexpr int kVectorBytes = 32;
#else
constexpr int kVectorBytes = 16;
#endif
template <class T>
using Vec = typename VectorOf<T, kVectorBytes>::type;
template <class T>
constexpr int kVec = kVectorBytes / int(sizeof(T));
constexpr int kFusedVectors = 8;  // outputs a fused block holds: 8 of the 16 vector registers

// The input rows (and their kernel rows) that reach one output row, gathered
// over channels and the leading kernel dims: x[r] is input row r's element 0,
// w[r] its ker[2] taps.
template <class T>
struct TapRows {
  std::span<const T*> x, w;
  std::int64_t count = 0;
  void add(const T* input_row, const T* taps) {
    x[static_cast<std::size_t>(count)] = input_row;
    w[static_cast<std::size_t>(count)] = taps;
    ++count;
  }
};

// U vectors of fused_rows' outputs (below), held in registers. Dil: the
// dilation when known at compile time (1), else 0 and `dil` gives it; a known
// one makes every tap's offset a constant in the load instruction instead of
// a register (24 of them spilled).
template <int K2, int U, int Dil, class T>
[[gnu::always_inline]] inline void fused_rows_block(T* __restrict y, const TapRows<T>& rows, std::int64_t shift,
                                                    std::int64_t dil, bool accumulate) {
  if constexpr (Dil > 0) dil = Dil;
  using V = Vec<T>;
  constexpr int L = kVec<T>;
  V acc[U];
  for (int u = 0; u < U; ++u) acc[u] = accumulate ? load<V>(y + u * L) : V{};
  for (std::int64_t r = 0; r < rows.count; ++r) {
    const T* x = rows.x[static_cast<std::size_t>(r)] + shift;
    const T* w = rows.w[static_cast<std::size_t>(r)];
    // x becomes opaque here, so each load addresses it plus a constant; otherwise
    // GCC made one induction variable per load and spilled them (3x3: 24).
    asm("" : "+r"(x));
#pragma GCC unroll 7
    for (int t = 0; t < K2; ++t)
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u) acc[u] += w[t] * load<V>(x + u * L + t * dil);
  }
  for (int u = 0; u < U; ++u) store(y + u * L, acc[u]);
}

// y[o] (= or +=) sum over rows r, taps t of w[r][t] x[r][shift + o + t * dil],
// o in [0, count): every tap of every row in one pass over y, 8 vectors of
// outputs held in registers (8 independent FMA chains; K2 known at compile
// time, so the taps unroll).
// Note [Fused tap rows]: y is read and written once per output row, not once
// per kernel row, and needs no zeroing first; the sum runs in the order the
// per-row passes added (row by row, tap by tap). The last partial vector is a
// whole one ending at the row's end, over outputs already done, whose new
// lanes alone are kept (added to y after the taps, when accumulating).
// Rejected: one vector at a time for what is left after the 8-vector blocks,
// one FMA chain that made a 28-wide row wait on every FMA (L1: 1.4x slower).
template <int K2, class T>
void fused_rows(T* __restrict y, const TapRows<T>& rows, std::int64_t shift, std::int64_t count, std::int64_t dil,
                bool accumulate) {
  constexpr int L = kVec<T>, U = kFusedVectors;
  std::int64_t o = 0;
  if (dil == 1)
    for (; o + U * L <= count; o += U * L) fused_rows_block<K2, U, 1>(y + o, rows, shift + o, dil, accumulate);
  else
    for (; o + U * L <= count; o += U * L) fused_rows_block<K2, U, 0>(y + o, rows, shift + o, dil, accumulate);
  // The rest as one block of as many vectors as remain (a narrow row is all
  // rest: one vector at a time would be one FMA chain, waiting on each FMA).
  const std::int64_t vectors = (count - o) / L;
  switch (vectors) {
    case 1: fused_rows_block<K2, 1, 0>(y + o, rows, shift + o, dil, accumulate); break;
    case 2: fused_rows_block<K2, 2, 0>(y + o, rows, shift + o, dil, accumulate); break;
    case 3: fused_rows_block<K2, 3, 0>(y + o, rows, shift + o, dil, accumulate); break;
    case 4: fused_rows_block<K2, 4, 0>(y + o, rows, shift + o, dil, accumulate); break;
    case 5: fused_rows_block<K2, 5, 0>(y + o, rows, shift + o, dil, accumulate); break;
    case 6: fused_rows_block<K2, 6, 0>(y + o, rows, shift + o, dil, accumulate); break;
    case 7: fused_rows_block<K2, 7, 0>(y + o, rows, shift + o, dil, accumulate); break;
    default: break;
  }
  o += vectors * L;
  const std::int64_t rest = count - o;  // fewer than L outputs
  if (rest == 0) return;
  T acc[L];
  if (count >= L) {
    // One vector ending at the last output, overlapping outputs already done,
    // whose new lanes are then added (or written) one by one.
    T* tail = y + count - L;
    fused_rows_block<K2, 1, 0>(acc, rows, shift + count - L, dil, /*accumulate=*/false);
    for (std::int64_t j = L - rest; j < L; ++j) tail[j] = accumulate ? tail[j] + acc[j] : acc[j];
    return;
  }
  for (std::int64_t j = 0; j < rest; ++j) acc[j] = accumulate ? y[o + j] : T(0);
  for (std::int64_t r = 0; r < rows.count; ++r) {
    const T* x = rows.x[static_cast<std::size_t>(r)] + shift + o;
    const T* w = rows.w[static_cast<std::size_t>(r)];
    for (int t = 0; t < K2; ++t)
      for (std::int64_t j = 0; j < rest; ++j) acc[j] += w[t] * x[j + t * dil];
  }
  for (std::int64_t j = 0; j < rest; ++j) y[o + j] = acc[j];
}

// sums[t] += sum over o in [0, count) of x[o + t * dil] * gy[o], for t < K2:
// one load of gy serves every tap, and K2 * U independent sums hide the FMA
// latency. The sums stay vectors (the caller adds their lanes once, at the end
// of its plane); outputs past the last whole vector go to acc[t]. Dil as in
// fused_rows_block.
template <int K2, int Dil, class T>
void fused_dots_at(Vec<T>* sums, T* acc, const T* __restrict x, const T* __restrict gy, std::int64_t count,
                   std::int64_t dil) {
  if constexpr (Dil > 0) dil = Dil;
  using V = Vec<T>;
  constexpr int L = kVec<T>, U = K2 >= 12 ? 1 : 12 / (K2 + 1);
  V part[K2][U] = {};
  std::int64_t o = 0;
  for (; o + U * L <= count; o += U * L) {
    const T* xo = x + o;
    asm("" : "+r"(xo));  // one base register for every load (fused_rows_block)
    V g[U];
    for (int u = 0; u < U; ++u) g[u] = load<V>(gy + o + u * L);
#pragma GCC unroll 7
    for (int t = 0; t < K2; ++t)
#pragma GCC unroll 6
      for (int u = 0; u < U; ++u) part[t][u] += g[u] * load<V>(xo + u * L + t * dil);
  }
  for (; o + L <= count; o += L) {
    const V g = load<V>(gy + o);
    for (int t = 0; t < K2; ++t) part[t][0] += g * load<V>(x + o + t * dil);
  }
  for (int t = 0; t < K2; ++t) {
    for (int u = 0; u < U; ++u) sums[t] += part[t][u];
    T rest = T(0);
    for (std::int64_t p = o; p < count; ++p) rest += x[p + t * dil] * gy[p];
    acc[t] += rest;
  }
}
template <int K2, class T>
void fused_dots(Vec<T>* sums, T* acc, const T* x, const T* gy, std::int64_t count, std::int64_t dil) {
  if (dil == 1) fused_dots_at<K2, 1>(sums, acc, x, gy, count, dil);
  else fused_dots_at<K2, 0>(sums, acc, x, gy, count, dil);
}

// Note [Fused kernel rows]: where every kernel row reaches an output row (unit
// stride and dilation) and the kernel is 2x2 or 3x3, one pass over the row's
// interior (the outputs every tap reaches; a padded row's few edge outputs go
// one tap at a time) adds all K * K taps' products: each
// vector of gy is loaded once for all of them, and the K * K vector sums stay
// in registers for the whole row (K * K + 2 of the 16 vector registers). The
// seed case's kernel gradient (500x500 doubles, 3x3) took 0.249 ms with a pass
// per kernel row (fused_dots), reloading gy and its sums for each.
// sums[r * K + t] += x[r][o + t] * gy[o] over whole vectors of o < count, the
// rest into acc.
template <int K, class T>
void fused_kernel_rows(Vec<T>* sums, T* acc, const T* const* x, const T* __restrict gy, std::int64_t count) {
  using V = Vec<T>;
  constexpr int L = kVec<T>;
  V part[K * K];
  for (int t = 0; t < K * K; ++t) part[t] = sums[t];
  std::int64_t o = 0;
  for (; o + L <= count; o += L) {
    const V g = load<V>(gy + o);
#pragma GCC unroll 3
    for (int r = 0; r < K; ++r) {
      const T* xo = x[r] + o;
      asm("" : "+r"(xo));  // one base register for the row's loads (fused_rows_block)
#pragma GCC unroll 3
      for (int t = 0; t < K; ++t) part[r * K + t] += g * load<V>(xo + t);
    }
  }
  for (int t = 0; t < K * K; ++t) sums[t] = part[t];
  for (int r = 0; r < K; ++r)
    for (int t = 0; t < K; ++t) {
      T rest = T(0);
      for (std::int64_t p = o; p < count; ++p) rest += x[r][p + t] * gy[p];
      acc[r * K + t] += rest;
    }
}

// Whether fused_kernel_rows serves a kernel gradient whose output rows each
// meet kernel_rows rows of taps along g's last dim: 2x2 or 3x3 taps, unit
// stride and dilation, every tap reaching at least 4 vectors of outputs of a
// row in common (the interior; the few outputs a padded row's edge leaves go
// one tap at a time). For a conv, kernel_rows = g.ker[1] and g.ker[0] == 1.
template <class T>
bool kernel_rows_fuse(const ConvGeometry& g, std::int64_t kernel_rows, const std::int64_t interior[2]) {
  const std::int64_t K = g.ker[2];
  return kernel_rows == K && (K == 2 || K == 3) && g.stride[2] == 1 && g.dil[2] == 1 &&
         interior[1] - interior[0] >= 4 * kVec<T>;
}

// Calls fused_rows<K2> or fused_dots<K2> for a K2 known at run time (1..7).
template <template <int> class Pass, class... A>
void with_taps(std::int64_t K2, A&&... a) {
  switch (K2) {
    case 1: return Pass<1>::run(a...);
    case 2: return Pass<2>::run(a...);
    case 3: return Pass<3>::run(a...);
    case 4: return Pass<4>::run(a...);
    case 5: return Pass<5>::run(a...);
    case 6: return Pass<6>::run(a...);
    default: return Pass<7>::run(a...);
  }
}
template <int K2>
struct FusedRows {
  template <class T>
  static void run(T* y, const TapRows<T>& rows, std::int64_t shift, std::int64_t count, std::int64_t dil, bool accumulate) {
    fused_rows<K2>(y, rows, shift, count, dil, accumulate);
  }
};
template <int K2>
struct FusedDots {
  template <class T>
  static void run(Vec<T>* sums, T* acc, const T* x, const T* gy, std::int64_t count, std::int64_t dil) {
    fused_dots<K2>(sums, acc, x, gy, count, dil);
  }
};

constexpr std::int64_t kMaxFusedTaps = 7;  // along the last dim; wider kernels go one tap at a time

// The parts of a tap's output range [r.begin, r.end) outside the interior
// [begin, end) that the fused passes cover (all of it when nothing is fused).
template <class F>
inline void for_each_edge(const TapRange& r, std::int64_t begin, std::int64_t end, F f) {
  if (begin >= end) {
    if (!r.empty()) f(r.begin, r.end);
    return;
  }
  if (r.begin < std::min(r.end, begin)) f(r.begin, std::min(r.end, begin));
  if (std::max(r.begin, end) < r.end) f(std::max(r.begin, end), r.end);
}

// One output row (out[2] values) from its tap rows: the interior fused when
// the stride is 1, the edges (and other strides) one tap at a time.
template <class T>
void output_row(const ConvGeometry& g, std::span<const TapRange> taps, const std::int64_t interior[2], T* yrow,
                const TapRows<T>& rows, bool accumulate) {
  const std::int64_t K2 = g.ker[2], s2 = g.stride[2];
  std::int64_t begin = interior[0], end = interior[1];
  if (s2 != 1 || K2 > kMaxFusedTaps || begin >= end) begin = end = 0;
  if (!accumulate) {
    std::fill(yrow, yrow + begin, T(0));
    std::fill(yrow + end, yrow + g.out[2], T(0));
  }
  if (begin < end)
    with_taps<FusedRows>(K2, yrow + begin, rows, taps[0].offset + begin, end - begin, g.dil[2], accumulate);
  for (std::int64_t r = 0; r < rows.count; ++r) {
    const T* xrow = rows.x[static_cast<std::size_t>(r)];
    const T* w = rows.w[static_cast<std::size_t>(r)];
    for (std::int64_t t2 = 0; t2 < K2; ++t2) {
      const TapRange& tr = taps[static_cast<std::size_t>(t2)];
      for_each_edge(tr, begin, end, [&](std::int64_t a, std::int64_t b) {
        axpy_row(yrow + a, w[t2], xrow + tr.offset + a * s2, b - a, s2);
      });
    }
  }
}

// The kernel-gradient twin of output_row for one tap row: acc[t2] (and the
// vector sums[t2] of the fused interior) += input row . output-adjoint row,
// over the outputs tap t2 reaches.
template <class T>
void dot_kernel_row(const ConvGeometry& g, std::span<const TapRange> taps, const std::int64_t interior[2],
                    Vec<T>* sums, T* acc, const T* xrow, const T* gyrow) {
  const std::int64_t K2 = g.ker[2], s2 = g.stride[2];
  std::int64_t begin = interior[0], end = interior[1];
  // Below 4 vectors the lanes' bookkeeping costs more than one load of gy saves.
  if (s2 != 1 || K2 > kMaxFusedTaps || end - begin < 4 * kVec<T>) begin = end = 0;
  if (begin < end)
    with_taps<FusedDots>(K2, sums, acc, xrow + taps[0].offset + begin, gyrow + begin, end - begin, g.dil[2]);
  for (std::int64_t t2 = 0; t2 < K2; ++t2) {
    const TapRange& tr = taps[static_cast<std::size_t>(t2)];
    for_each_edge(tr, begin, end, [&](std::int64_t a, std::int64_t b) {
      acc[t2] += dot_row(xrow + tr.offset + a * s2, gyrow + a, b - a, s2);
    });
  }
}

// Every tap of a 2x2 or 3x3 kernel over one output row (kernel_rows_fuse):
// the interior fused, the edge outputs one tap at a time. x[r]: kernel row r's
// input row, element 0.
template <class T>
void kernel_rows_with_edges(const ConvGeometry& g, std::span<const TapRange> taps, const std::int64_t interior[2],
                            Vec<T>* sums, T* acc, const T* const* x, const T* gyrow) {
  const std::int64_t K = g.ker[2], count = interior[1] - interior[0];
  const T* interior_rows[3];
  for (std::int64_t r = 0; r < K; ++r) interior_rows[r] = x[r] + taps[0].offset + interior[0];
  if (K == 3) fused_kernel_rows<3>(sums, acc, interior_rows, gyrow + interior[0], count);
  else fused_kernel_rows<2>(sums, acc, interior_rows, gyrow + interior[0], count);
  for (std::int64_t r = 0; r < K; ++r)
    for (std::int64_t t2 = 0; t2 < K; ++t2) {
      const TapRange& tr = taps[static_cast<std::size_t>(t2)];
      for_each_edge(tr, interior[0], interior[1], [&](std::int64_t a, std::int64_t b) {
        acc[r * K + t2] += dot_row(x[r] + tr.offset + a, gyrow + a, b - a, 1);
      });
    }
}

// The outputs along the last dim that every tap of a kernel row reaches.
inline void interior_of(std::span<const TapRange> rows, std::int64_t interior[2]) {
  interior[0] = 0;
  interior[1] = std::numeric_limits<std::int64_t>::max();
  for (const auto& r : rows) {
    interior[0] = std::max(interior[0], r.begin);
    interior[1] = std::min(interior[1], r.end);
  }
  if (interior[0] >= interior[1]) interior[0] = interior[1] = 0;
}

}  // namespace

template <class T>
void forward_any(const ConvGeometry& g, const T* x, const T* w, T* y, bool accumulate) {
  const std::int64_t ov = g.out_vol(), iv = g.in_vol(), kv = g.ker_vol(), most_rows = g.Cg * g.ker[0] * g.ker[1];
  ScratchScope scratch;
  const auto taps = row_ranges(g, scratch);
  std::int64_t interior[2];
  interior_of(taps, interior);
  parallel_for(g.N * g.K, threads_if(g.macs() > kParallelMacs), [&](std::int64_t nk) {
    const std::int64_t n = nk / g.K, k = nk % g.K, group = k / g.Kg;
    ScratchScope own;  // this thread's stack (Note [Scratch stack])
    TapRows<T> rows{own.take<const T*>(most_rows), own.take<const T*>(most_rows)};
    T* yk = y + nk * ov;
    for (std::int64_t o0 = 0; o0 < g.out[0]; ++o0)
      for (std::int64_t o1 = 0; o1 < g.out[1]; ++o1) {
        rows.count = 0;
        for (std::int64_t c = 0; c < g.Cg; ++c) {
          const T* xc = x + (n * g.C + group * g.Cg + c) * iv;
          const T* wc = w + (k * g.Cg + c) * kv;
          for_each_tap_row(g, o0, o1, [&](std::int64_t in_row, std::int64_t tap_row) { rows.add(xc + in_row, wc + tap_row); });
        }
        output_row(g, taps, interior, yk + (o0 * g.out[1] + o1) * g.out[2], rows, accumulate);
      }
  });
}

template <class T>
void backward_input_any(const ConvGeometry& g, const T* gy, const T* w, T* gx, bool accumulate) {
  if (unit_stride(g)) {
    // Unit stride: a gather (the forward loops on the adjoint geometry) instead of a scatter.
    ScratchScope scratch;
    return forward_any(adjoint_geometry(g), gy, adjoint_weights(g, w, scratch), gx, accumulate);
  }
  if (!accumulate) std::fill(gx, gx + g.N * g.C * g.in_vol(), T(0));
  const std::int64_t ov = g.out_vol(), iv = g.in_vol(), kv = g.ker_vol();
  ScratchScope scratch;
  const auto rows = row_ranges(g, scratch);
  parallel_for(g.N * g.C, threads_if(g.macs() > kParallelMacs), [&](std::int64_t nc) {
    const std::int64_t n = nc / g.C, channel = nc % g.C, group = channel / g.Cg, c = channel % g.Cg;
    T* gxc = gx + nc * iv;
    for (std::int64_t k = group * g.Kg; k < (group + 1) * g.Kg; ++k) {
      const T* gyk = gy + (n * g.K + k) * ov;
      const T* wc = w + (k * g.Cg + c) * kv;
      for (std::int64_t o0 = 0; o0 < g.out[0]; ++o0)
        for (std::int64_t o1 = 0; o1 < g.out[1]; ++o1) {
          const T* gyrow = gyk + (o0 * g.out[1] + o1) * g.out[2];
          for_each_tap_row(g, o0, o1, [&](std::int64_t in_row, std::int64_t tap_row) {
            for (std::int64_t t2 = 0; t2 < g.ker[2]; ++t2) {
              const TapRange& r = rows[static_cast<std::size_t>(t2)];
              if (!r.empty())
                scatter_row(gxc + in_row + first_input(r, g.stride[2]), wc[tap_row + t2], gyrow + r.begin, r.end - r.begin, g.stride[2]);
            }
          });
        }
    }
  });
}

template <class T>
void backward_weight_any(const ConvGeometry& g, const T* x, const T* gy, T* gw) {
  const std::int64_t ov = g.out_vol(), iv = g.in_vol(), kv = g.ker_vol();
  ScratchScope scratch;
  const auto taps = row_ranges(g, scratch);
  std::int64_t interior[2];
  interior_of(taps, interior);
  const bool fuse = g.ker[0] == 1 && kernel_rows_fuse<T>(g, g.ker[1], interior);
  parallel_for(g.K * g.Cg, threads_if(g.macs() > kParallelMacs), [&](std::int64_t kc) {
    const std::int64_t k = kc / g.Cg, c = kc % g.Cg, group = k / g.Kg;
    ScratchScope own;  // this thread's stack (Note [Scratch stack])
    const std::span<T> acc = own.take_filled<T>(kv, T(0));
    const std::span<Vec<T>> sums = own.take<Vec<T>>(kv);  // filled here: Note [Lanes never cross a call]
    for (auto& v : sums) v = Vec<T>{};
    for (std::int64_t n = 0; n < g.N; ++n) {
      const T* xc = x + (n * g.C + group * g.Cg + c) * iv;
      const T* gyk = gy + (n * g.K + k) * ov;
      for (std::int64_t o0 = 0; o0 < g.out[0]; ++o0)
        for (std::int64_t o1 = 0; o1 < g.out[1]; ++o1) {
          const T* gyrow = gyk + (o0 * g.out[1] + o1) * g.out[2];
          const T* xrows[3];
          std::int64_t rows = 0;
          if (fuse)
            for_each_tap_row(g, o0, o1, [&](std::int64_t in_row, std::int64_t) { xrows[rows++] = xc + in_row; });
          if (fuse && rows == g.ker[1]) {  // every kernel row: Note [Fused kernel rows]
            kernel_rows_with_edges(g, taps, interior, sums.data(), acc.data(), xrows, gyrow);
            continue;
          }
          for_each_tap_row(g, o0, o1, [&](std::int64_t in_row, std::int64_t tap_row) {
            dot_kernel_row(g, taps, interior, sums.data() + tap_row, acc.data() + tap_row, xc + in_row, gyrow);
          });
        }
    }
    for (std::int64_t t = 0; t < kv; ++t) {
      T total = acc[static_cast<std::size_t>(t)];
      for (int j = 0; j < kVec<T>; ++j) total += sums[static_cast<std::size_t>(t)][j];
      gw[kc * kv + t] += total;
    }
  });
}

}  // namespace tg::kernels::conv_impl::TG_DIRECT_ISA

#if defined(TG_DIRECT_AVX2) && !defined(__clang__)
#pragma GCC pop_options
#endif
