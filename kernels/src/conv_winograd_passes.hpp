// The Winograd passes (Note [Winograd convolution] in conv_winograd.cpp),
// compiled twice: conv_winograd.cpp for any x86-64 and conv_winograd_avx2.cpp
// with AVX2+FMA, each in its own namespace (TG_WINOGRAD_ISA), so the vector
// transforms use 256-bit registers wherever the CPU has them, whatever the
// build's -march. Include from those two files only.
//
// The AVX2 copy gets its target from a pragma placed after the includes, not
// from a flag on the file: a flag would also compile the headers' inline
// functions (std::fill, ...) for AVX2, and the linker may keep that copy for
// every caller. Clang has no such pragma; there both copies are portable.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "conv_impl.hpp"
#include "lanes.hpp"
#include "tapegrad/kernels/parallel.hpp"
#include "tapegrad/kernels/scratch.hpp"

#ifndef TG_WINOGRAD_ISA
#error "define TG_WINOGRAD_ISA (portable or avx2) before including conv_winograd_passes.hpp"
#endif

#if defined(TG_WINOGRAD_AVX2) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

namespace tg::kernels::conv_impl::TG_WINOGRAD_ISA {
namespace {


constexpr int kAlpha = winograd_alpha(5);  // the most transform points per dim

// ---- the matrices (Note [Winograd convolution]), in double at compile time ----

struct Matrix {
  double v[kAlpha][kAlpha] = {};
};

constexpr double power(double x, int k) {
  double p = 1.0;
  for (int i = 0; i < k; ++i) p *= x;
  return p;
}

// E_n: the alpha x n evaluation matrix.
constexpr Matrix evaluation(int alpha, int n) {
  constexpr double points[kAlpha - 1] = {0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0};
  Matrix E;
  for (int j = 0; j < alpha; ++j)
    for (int k = 0; k < n; ++k)
      E.v[j][k] = j == alpha - 1 && alpha > 1 ? (k == n - 1 ? 1.0 : 0.0) : power(points[j], k);
  return E;
}

// E^-1 of an n x n matrix (Gauss-Jordan with partial pivoting).
constexpr Matrix inverse(const Matrix& E, int n) {
  double a[kAlpha][2 * kAlpha] = {};
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) a[i][j] = E.v[i][j];
    a[i][n + i] = 1.0;
  }
  auto magnitude = [](double x) { return x < 0 ? -x : x; };
  for (int col = 0; col < n; ++col) {
    int pivot = col;
    for (int i = col + 1; i < n; ++i)
      if (magnitude(a[i][col]) > magnitude(a[pivot][col])) pivot = i;
    for (int j = 0; j < 2 * n; ++j) {
      const double t = a[col][j];
      a[col][j] = a[pivot][j];
      a[pivot][j] = t;
    }
    const double scale = 1.0 / a[col][col];
    for (int j = 0; j < 2 * n; ++j) a[col][j] *= scale;
    for (int i = 0; i < n; ++i) {
      const double f = a[i][col];
      if (i == col || f == 0.0) continue;
      for (int j = 0; j < 2 * n; ++j) a[i][j] -= f * a[col][j];
    }
  }
  Matrix inv;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) inv.v[i][j] = a[i][n + j];
  return inv;
}

constexpr Matrix transposed(const Matrix& m) {
  Matrix t;
  for (int i = 0; i < kAlpha; ++i)
    for (int j = 0; j < kAlpha; ++j) t.v[i][j] = m.v[j][i];
  return t;
}

// The same matrix as T.
template <class T>
struct Coefficients {
  T v[kAlpha][kAlpha] = {};
  constexpr explicit Coefficients(const Matrix& m) {
    for (int i = 0; i < kAlpha; ++i)
      for (int j = 0; j < kAlpha; ++j) v[i][j] = T(m.v[i][j]);
  }
};

// F(m, r) along one dim: alpha points, m outputs per tile, r taps.
template <class T, int R>
struct Dim {
  static constexpr int r = R, alpha = winograd_alpha(R), m = alpha - R + 1;
  static constexpr Matrix C = inverse(evaluation(alpha, alpha), alpha);
  static constexpr Coefficients<T> BT{transposed(C)};                  // alpha x alpha
  static constexpr Coefficients<T> AT{transposed(evaluation(alpha, m))};  // m x alpha
  static constexpr Coefficients<T> A{evaluation(alpha, m)};              // alpha x m
  static constexpr Coefficients<T> G{evaluation(alpha, R)};              // alpha x r
  static constexpr Coefficients<T> GT{transposed(evaluation(alpha, R))};  // r x alpha
};

// ---- the two-sided transform, a vector of channels at a time ----------------------

// out(a) = sum over i < LI of L[a][i] in(i), for a < LA: one side of a
// transform, one vector of channels; in(i) = in + i * in_stride, out(a) = out + a * out_stride.
template <int LA, int LI, class V, class T>
[[gnu::always_inline]] inline void one_sided(const Coefficients<T>& L, const T* in, std::int64_t in_stride, T* out,
                                             std::int64_t out_stride) {
  V v[LI];
#pragma GCC unroll 8
  for (int i = 0; i < LI; ++i) v[i] = load<V>(in + i * in_stride);
#pragma GCC unroll 8
  for (int a = 0; a < LA; ++a) {
    V acc{};
#pragma GCC unroll 8
    for (int i = 0; i < LI; ++i)
      if (L.v[a][i] != T(0)) acc += L.v[a][i] * v[i];
    store(out + a * out_stride, acc);
  }
}

// out(a, b) = sum over i < LI, j < RJ of L[a][i] R[b][j] in(i, j), for a < LA,
// b < RB; in(i, j) = in + i * row_stride + j * col_stride, out(a, b) = out +
// (a * RB + b) * out_stride: L down every column, then R along every row.
// V is one value (T) or a vector of them (Lanes<T>). Inlined and unrolled, so
// the compile-time coefficients fold (zeros cost nothing) and mid stays in registers.
template <int LA, int LI, int RB, int RJ, class V, class T>
[[gnu::always_inline]] inline void transform(const Coefficients<T>& L, const Coefficients<T>& R, const T* in,
                                             std::int64_t row_stride, std::int64_t col_stride, T* out,
                                             std::int64_t out_stride) {
  constexpr int W = sizeof(V) / sizeof(T);
  T mid[LA * RJ * W];  // mid(a, j) at (a * RJ + j) * W
#pragma GCC unroll 8
  for (int j = 0; j < RJ; ++j) one_sided<LA, LI, V>(L, in + j * col_stride, row_stride, mid + j * W, RJ * W);
#pragma GCC unroll 8
  for (int a = 0; a < LA; ++a) one_sided<RB, RJ, V>(R, mid + a * RJ * W, W, out + a * RB * out_stride, out_stride);
}

// ---- moving between channel-first and channel-last ------------------------------

// Transposes the W x W block r (W = kLanes<T>) in registers: r[j] becomes
// column j. Interleaves, then 64-bit pairs, then 128-bit halves: the usual
// AVX sequence (24 shuffles for 8 floats, 8 for 4 doubles).
[[gnu::always_inline]] inline void transpose_lanes(Lanes<float> (&r)[8]) {
  Lanes<float> t[8], u[8];
  for (int i = 0; i < 8; i += 2) {  // t[i] = rows i, i+1 interleaved: columns 0 1 | 4 5; t[i+1]: 2 3 | 6 7
    t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4)  // u[i + c] = column c | column c + 4 of rows i..i+3
    for (int h = 0; h < 2; ++h) {
      u[i + 2 * h] = __builtin_shufflevector(t[i + h], t[i + 2 + h], 0, 1, 8, 9, 4, 5, 12, 13);
      u[i + 2 * h + 1] = __builtin_shufflevector(t[i + h], t[i + 2 + h], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  for (int c = 0; c < 4; ++c) {
    r[c] = __builtin_shufflevector(u[c], u[c + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    r[c + 4] = __builtin_shufflevector(u[c], u[c + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}
[[gnu::always_inline]] inline void transpose_lanes(Lanes<double> (&r)[4]) {
  Lanes<double> t[4];
  for (int i = 0; i < 4; i += 2) {  // t[i] = rows i, i+1: columns 0 | 2; t[i+1]: 1 | 3
    t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 4, 2, 6);
    t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 1, 5, 3, 7);
  }
  for (int c = 0; c < 2; ++c) {
    r[c] = __builtin_shufflevector(t[c], t[c + 2], 0, 1, 4, 5);
    r[c + 2] = __builtin_shufflevector(t[c], t[c + 2], 2, 3, 6, 7);
  }
}

// dst[j * dst_stride + i] (+)= src[i * src_stride + j] for i < rows, j < cols,
// plus col_offset[j] where given (not with add: a conv's bias).
// W x W blocks in registers; a ragged end of a dim of at least W takes one more
// block that overlaps the last (its elements are written twice, with the same
// values), except when adding, where the ragged ends go element by element.
template <class T>
void transpose(const T* src, std::int64_t src_stride, std::int64_t rows, std::int64_t cols, T* dst,
               std::int64_t dst_stride, bool add = false, const T* col_offset = nullptr) {
  constexpr int W = kLanes<T>;
  using V = Lanes<T>;
  auto covered = [&](std::int64_t n) { return n < W ? 0 : add ? n / W * W : n; };
  const std::int64_t rows_v = covered(rows), cols_v = covered(cols);
  // The blocks, each column j's vector stored as combine(destination, vector, j).
  auto blocks = [&](auto combine) {
    for (std::int64_t i0 = 0; i0 < rows_v; i0 += W) {
      const std::int64_t i = std::min(i0, rows - W);
      for (std::int64_t j0 = 0; j0 < cols_v; j0 += W) {
        const std::int64_t j = std::min(j0, cols - W);
        V r[W];
        for (int k = 0; k < W; ++k) r[k] = load<V>(src + (i + k) * src_stride + j);
        transpose_lanes(r);
        for (int k = 0; k < W; ++k) {
          T* d = dst + (j + k) * dst_stride + i;
          store(d, combine(d, r[k], j + k));
        }
      }
    }
  };
  if (add) blocks([](const T* d, V v, std::int64_t) { return load<V>(d) + v; });
  else if (col_offset) blocks([&](const T*, V v, std::int64_t j) { return v + col_offset[j]; });
  else blocks([](const T*, V v, std::int64_t) { return v; });
  auto element = [&](std::int64_t i, std::int64_t j) {
    T& d = dst[j * dst_stride + i];
    const T v = src[i * src_stride + j];
    d = add ? d + v : col_offset ? v + col_offset[j] : v;
  };
  for (std::int64_t i = rows_v; i < rows; ++i)
    for (std::int64_t j = 0; j < cols; ++j) element(i, j);
  for (std::int64_t i = 0; i < rows_v; ++i)
    for (std::int64_t j = cols_v; j < cols; ++j) element(i, j);
}

// ---- the layout -------------------------------------------------------------------

// How a geometry is cut into tiles and tasks (spatial dims 1 = rows, 2 = columns).
template <class T, class Y, class X>
struct Tiling {
  static constexpr std::int64_t points = Y::alpha * X::alpha;
  // About this many tiles a forward task: a large sample splits into tasks,
  // small ones share one (Note [Winograd tasks span samples]).
  static constexpr std::int64_t kTargetTiles = 48;
  std::int64_t tiles_y = 0, tiles_x = 0;
  std::int64_t P1 = 0, P2 = 0;    // the padded input plane
  std::int64_t Cgp = 0;           // a group's channels padded to whole vectors
  std::int64_t rows_per_task = 0, tasks_per_sample = 0;

  explicit Tiling(const ConvGeometry& g) {
    tiles_y = ceil_div(g.out[1], Y::m);
    tiles_x = ceil_div(g.out[2], X::m);
    P1 = tiles_y * Y::m + Y::r - 1;
    P2 = tiles_x * X::m + X::r - 1;
    Cgp = ceil_div(g.Cg, kLanes<T>) * kLanes<T>;
    tasks_per_sample = std::max<std::int64_t>(1, (tiles_y * tiles_x) / kTargetTiles);
    rows_per_task = ceil_div(tiles_y, tasks_per_sample);
    tasks_per_sample = ceil_div(tiles_y, rows_per_task);
  }
  // Note [Winograd tasks span samples]: a forward task streams every
  // transformed weight of its group (U, up to MBs) through its GEMMs once, so
  // a task of one small sample paid that for a few tiles (7x7 images: 4
  // tiles, padded to 6 GEMM rows). A task takes several samples up to about
  // kTargetTiles tiles (48: 8 whole GEMM row tiles) as long as every thread
  // still gets two tasks; its tiles, outputs and transposes run sample by
  // sample. 1 thread: N7 (7x7) forward 0.70x the time, L2 and N4 0.91x. The
  // samples are then dealt out in nearly equal ranges, as many as a whole
  // number of rounds of the threads (N7: 12 ranges of 10-11, not 10 of 12
  // and one of 8, which left one of 2 threads 72 samples and the other 56).
  // Rejected: a target of 96 tiles, no faster than 48 while V doubles.
  std::int64_t samples_per_task(const ConvGeometry& g, int threads) const {
    if (tasks_per_sample > 1) return 1;
    const std::int64_t wanted = std::max<std::int64_t>(1, kTargetTiles / (tiles_y * tiles_x));
    const std::int64_t most = std::max<std::int64_t>(1, g.N * g.groups / (2 * std::int64_t(threads)));
    return std::min(wanted, most);
  }
  // Elements of `rows` padded rows of one group's channel-last input.
  std::int64_t rows_size(std::int64_t rows) const { return rows * P2 * Cgp; }

  // Note [Point strides]: a transform writes one vector per transform point,
  // the points a block apart, and each GEMM reads one point's block. Stored
  // back to back, a block was often a multiple of 4 KB (16 tiles x 64
  // channels, 256 tiles x 16 filters), so all 36 or 64 vectors of a tile fell
  // into one set of L1 and evicted each other (L2's input transform: 29% of
  // its input gradient against 8% of its forward). A block is padded to an
  // odd number of cache lines, which spreads consecutive points over every
  // set. Rejected: the points innermost ([tile][point][channel]), which would
  // make the writes contiguous but put a GEMM's rows a whole tile apart.
  static std::int64_t point_stride(std::int64_t elements) {
    constexpr std::int64_t line = 64 / sizeof(T);
    return (ceil_div(elements, line) | 1) * line;
  }
};

// Note [Fetching the next task]: a task's transposes read its input rows
// from memory, 32 or more planes at once, which the hardware prefetchers do
// not follow well. While a task runs its GEMMs, it fetches the next task's
// rows (static schedules give a thread consecutive tasks) into L2, a share
// per GEMM tile, and the lines its own outputs will be stored to. Rejected: a
// share per transform point, bursts of 40 and more lines that filled the
// miss queue and stalled the prefetches themselves.
class LineFetch {
 public:
  LineFetch() = default;  // nothing to fetch
  // Runs of `run_bytes` bytes at first + (s * sample_stride + p * plane_stride)
  // bytes, for s < samples and p < planes.
  LineFetch(const void* first, std::int64_t samples, std::int64_t sample_stride, std::int64_t planes,
            std::int64_t plane_stride, std::int64_t run_bytes, bool for_writing)
      : sample_(static_cast<const char*>(first)), run_(sample_), planes_(planes), sample_stride_(sample_stride),
        plane_stride_(plane_stride), run_bytes_(run_bytes), per_run_(run_bytes > 0 ? (run_bytes + 63) / 64 + 1 : 0),
        total_(samples * planes * per_run_), write_(for_writing) {}
  std::int64_t lines() const { return total_; }
  // The next `count` lines (the last of a run is its last byte's), counted
  // without divisions: this runs between every few GEMM tiles.
  void fetch(std::int64_t count) {
    for (count = std::min(count, total_ - done_); count > 0; --count, ++done_) {
      const char* at = line_ + 1 == per_run_ ? run_ + run_bytes_ - 1 : run_ + line_ * 64;
      if (write_) __builtin_prefetch(at, 1, 3);
      else __builtin_prefetch(at, 0, 2);
      if (++line_ < per_run_) continue;
      line_ = 0;
      if (++plane_ < planes_) {
        run_ += plane_stride_;
      } else {
        plane_ = 0;
        sample_ += sample_stride_;
        run_ = sample_;
      }
    }
  }

 private:
  const char* sample_ = nullptr;  // the current sample's first run
  const char* run_ = nullptr;     // the current run
  std::int64_t planes_ = 1, sample_stride_ = 0, plane_stride_ = 0, run_bytes_ = 0, per_run_ = 0, total_ = 0;
  std::int64_t done_ = 0, line_ = 0, plane_ = 0;
  bool write_ = false;
};

// The lines of the input rows behind padded rows [p_begin, p_end) of group
// grp's channels, for `samples` samples from n (Note [Fetching the next task]).
template <class T>
LineFetch input_row_lines(const ConvGeometry& g, const T* x, std::int64_t n, std::int64_t samples, std::int64_t grp,
                          std::int64_t p_begin, std::int64_t p_end) {
  const std::int64_t plane = g.in[1] * g.in[2], bytes = std::int64_t(sizeof(T));
  const std::int64_t i_begin = std::clamp<std::int64_t>(p_begin - g.lo[1], 0, g.in[1]);
  const std::int64_t i_end = std::clamp<std::int64_t>(p_end - g.lo[1], i_begin, g.in[1]);
  return LineFetch(x + (n * g.C + grp * g.Cg) * plane + i_begin * g.in[2], samples, g.C * plane * bytes, g.Cg,
                   plane * bytes, (i_end - i_begin) * g.in[2] * bytes, false);
}

// Padded rows [p1_begin, p1_end) of sample n's input, group grp's channels,
// channel-last into out (rows, P2, Cgp): zero outside the input and past Cg.
// Each row's (channels x pixels) block is transposed a vector block at a time.
template <class T, class Y, class X>
void channel_last_rows(const ConvGeometry& g, const Tiling<T, Y, X>& tl, const T* x, std::int64_t n, std::int64_t grp,
                       std::int64_t p1_begin, std::int64_t p1_end, T* out) {
  const std::int64_t plane = g.in[1] * g.in[2], row = tl.P2 * tl.Cgp;
  // Padded columns [p_begin, p_end) hold input columns from p_begin - lo (a negative padding drops columns).
  const std::int64_t p_begin = std::clamp<std::int64_t>(g.lo[2], 0, tl.P2);
  const std::int64_t p_end = std::clamp<std::int64_t>(g.lo[2] + g.in[2], p_begin, tl.P2);
  const T* channels = x + (n * g.C + grp * g.Cg) * plane;  // channel c's plane at channels + c * plane
  for (std::int64_t p1 = p1_begin; p1 < p1_end; ++p1) {
    T* dst = out + (p1 - p1_begin) * row;
    const std::int64_t i1 = p1 - g.lo[1];
    if (i1 < 0 || i1 >= g.in[1] || p_begin == p_end) {
      std::fill(dst, dst + row, T(0));
      continue;
    }
    std::fill(dst, dst + p_begin * tl.Cgp, T(0));
    std::fill(dst + p_end * tl.Cgp, dst + row, T(0));
    T* d = dst + p_begin * tl.Cgp;
    transpose(channels + i1 * g.in[2] + (p_begin - g.lo[2]), plane, g.Cg, p_end - p_begin, d, tl.Cgp);
    if (tl.Cgp > g.Cg)
      for (std::int64_t p = 0; p < p_end - p_begin; ++p) std::fill(d + p * tl.Cgp + g.Cg, d + (p + 1) * tl.Cgp, T(0));
  }
}

// V[xi][t][0..Cgp) = (B1^T d B2)[xi] for the tiles t = first + tx of a tile
// row whose windows start at `rows` (one group's channel-last padded input,
// rows of P2 pixels of Cgp). Neighbouring tiles share r2 - 1 columns of their
// windows, so B1^T runs once per column of the row's band (into band, alpha1 x
// P2 x Cgp), then B2 once per tile.
template <class T, class Y, class X>
void input_row(const Tiling<T, Y, X>& tl, const T* rows, T* band, T* V, std::int64_t xi_stride) {
  constexpr int W = kLanes<T>;
  for (std::int64_t p2 = 0; p2 < tl.P2; ++p2)
    for (std::int64_t c = 0; c < tl.Cgp; c += W)
      one_sided<Y::alpha, Y::alpha, Lanes<T>>(Y::BT, rows + p2 * tl.Cgp + c, tl.P2 * tl.Cgp, band + p2 * tl.Cgp + c,
                                              tl.P2 * tl.Cgp);
  for (std::int64_t tx = 0; tx < tl.tiles_x; ++tx)
    for (int a = 0; a < Y::alpha; ++a)
      for (std::int64_t c = 0; c < tl.Cgp; c += W)
        one_sided<X::alpha, X::alpha, Lanes<T>>(X::BT, band + (a * tl.P2 + tx * X::m) * tl.Cgp + c, tl.Cgp,
                                                V + a * X::alpha * xi_stride + tx * tl.Cgp + c, xi_stride);
}

// U[grp][xi][block][c][NR] = (G1 g G2^T)[xi] of filter k = block * NR + lane, zero past Kg.
// A task (group, filter block, channel) transforms its NR filters into u and
// writes whole NR-wide rows: one point's rows lie Cg * NR apart (4 KB at 32
// channels), and single floats scattered at that stride evicted each other
// from L1 (3% of a ResNet step).
template <class T, class Y, class X>
const T* transform_weights(const ConvGeometry& g, const Tiling<T, Y, X>& tl, const T* w, ScratchScope& scratch,
                           int threads) {
  constexpr int NR = kTileCols<T>;
  const std::int64_t blocks = ceil_div(g.Kg, NR);
  T* U = scratch.take<T>(g.groups * tl.points * blocks * g.Cg * NR).data();
  parallel_for(g.groups * blocks * g.Cg, g.K * g.Cg > 512 ? threads : 1, [&](std::int64_t task) {
    const std::int64_t c = task % g.Cg, blk = (task / g.Cg) % blocks, grp = task / (g.Cg * blocks);
    const std::int64_t lanes = std::min<std::int64_t>(NR, g.Kg - blk * NR);
    // The block's filters' taps side by side, wt[tap * NR + lane] (zero past
    // Kg), transformed a vector of filters at a time into u[xi * NR + lane].
    T wt[Y::r * X::r * NR] = {}, u[kAlpha * kAlpha * NR];
    for (std::int64_t lane = 0; lane < lanes; ++lane) {
      const T* taps = w + ((grp * g.Kg + blk * NR + lane) * g.Cg + c) * Y::r * X::r;
      for (int t = 0; t < Y::r * X::r; ++t) wt[t * NR + lane] = taps[t];
    }
    for (int v = 0; v < NR; v += kLanes<T>)
      transform<Y::alpha, Y::r, X::alpha, X::r, Lanes<T>>(Y::G, X::G, wt + v, X::r * NR, NR, u + v, NR);
    for (std::int64_t xi = 0; xi < tl.points; ++xi)
      std::copy(u + xi * NR, u + (xi + 1) * NR, U + (((grp * tl.points + xi) * blocks + blk) * g.Cg + c) * NR);
  });
  return U;
}

// ---- the passes, for one pair of tap counts ----------------------------------------

// y (N, K, out) (+)= conv(x, w): tasks of (samples, group, block of tile rows).
template <class T, class Y, class X>
void forward(const ConvGeometry& g, const T* x, const T* w, T* y, bool accumulate, const OutputEpilogue<T>* epilogue) {
  constexpr int NR = kTileCols<T>;
  ScratchScope scratch;
  const Tiling<T, Y, X> tl(g);
  const std::int64_t blocks = ceil_div(g.Kg, NR), ov = g.out_vol(), ow = g.out[2];
  const int threads = omp_in_parallel() ? 1 : conv_threads();
  // Sample ranges of nearly equal size, as many as a whole number of rounds of the threads.
  const std::int64_t spt = tl.samples_per_task(g, threads);
  const std::int64_t sample_tasks = std::min(g.N, ceil_div(ceil_div(g.N, spt), threads) * threads);
  const std::int64_t tasks = sample_tasks * g.groups * tl.tasks_per_sample;
  struct Task {
    std::int64_t n0, samples, grp, ty0, ty1;
  };
  auto task_of = [&](std::int64_t task) {
    const std::int64_t part = task % tl.tasks_per_sample, grp = (task / tl.tasks_per_sample) % g.groups;
    const std::int64_t range = task / (tl.tasks_per_sample * g.groups);
    const std::int64_t n0 = g.N * range / sample_tasks, samples = g.N * (range + 1) / sample_tasks - n0;
    const std::int64_t ty0 = part * tl.rows_per_task;
    return Task{n0, samples, grp, ty0, std::min(tl.tiles_y, ty0 + tl.rows_per_task)};
  };
  // Note [Fetching the next task]: the input rows a task reads.
  auto input_lines = [&](const Task& t) {
    return input_row_lines(g, x, t.n0, t.samples, t.grp, t.ty0 * Y::m, t.ty1 * Y::m + Y::r - 1);
  };
  auto run_task = [&](std::int64_t task, const T* U) {
    const Task t = task_of(task);  // named, not a structured binding: block_outputs captures them
    const std::int64_t n0 = t.n0, samples = t.samples, grp = t.grp, ty0 = t.ty0, ty1 = t.ty1;
    const std::int64_t per_sample = (ty1 - ty0) * tl.tiles_x;  // the task's tiles of one sample
    const std::int64_t count = samples * per_sample, padded = ceil_div(count, kTileRows) * kTileRows;
    ScratchScope local;
    const std::int64_t v_stride = tl.point_stride(count * tl.Cgp), m_stride = tl.point_stride(padded * NR);
    const int step = column_block_step();  // blocks a GEMM tile serves (Note [Paired tiles])
    T* V = local.take<T>(tl.points * v_stride).data();  // [xi][t][Cgp], points v_stride apart
    T* M = local.take<T>(step * tl.points * m_stride).data();  // [block][xi][t][NR], points m_stride apart
    T* band = local.take<T>(Y::alpha * tl.P2 * tl.Cgp).data();
    // Each sample's padded input rows for the task, channel-last (Note [Winograd convolution], layout).
    const std::int64_t p1_begin = ty0 * Y::m, p1_end = ty1 * Y::m + Y::r - 1;
    T* xt = local.take<T>(tl.rows_size(p1_end - p1_begin)).data();
    for (std::int64_t s = 0; s < samples; ++s) {
      channel_last_rows(g, tl, x, n0 + s, grp, p1_begin, p1_end, xt);
      for (std::int64_t ty = ty0; ty < ty1; ++ty)
        input_row(tl, xt + tl.rows_size((ty - ty0) * Y::m), band,
                  V + (s * per_sample + (ty - ty0) * tl.tiles_x) * tl.Cgp, v_stride);
    }
    // The task's outputs, channel-last: S[s][position][k] for the positions of
    // its output rows (contiguous in every output plane) and the group's filters.
    const std::int64_t first = ty0 * Y::m * ow, last = std::min(ty1 * Y::m, g.out[1]) * ow, Kgp = blocks * NR;
    const std::int64_t positions = last - first;
    T* S = local.take<T>(samples * positions * Kgp).data();
    const T* rows[kTileRows];
    T* out[kTileRows];
    T tile_out[Y::m * X::m * NR];
    LineFetch next_input = task + 1 < tasks ? input_lines(task_of(task + 1)) : LineFetch();
    LineFetch output(y + (n0 * g.K + grp * g.Kg) * ov + first, samples, g.K * ov * std::int64_t(sizeof(T)), g.Kg,
                     ov * std::int64_t(sizeof(T)), positions * std::int64_t(sizeof(T)), true);
    // tile_out = A1^T M A2 per tile of block blk (its M at Mb), NR filters at
    // once, into S (the tile's outputs inside the plane).
    auto block_outputs = [&](std::int64_t blk, const T* Mb) {
      const T* Mt = Mb;  // tile t's first point
      for (std::int64_t s = 0; s < samples; ++s)
        for (std::int64_t ty = ty0; ty < ty1; ++ty)
          for (std::int64_t tx = 0; tx < tl.tiles_x; ++tx, Mt += NR) {
            for (int v = 0; v < NR; v += kLanes<T>)
              transform<Y::m, Y::alpha, X::m, X::alpha, Lanes<T>>(Y::AT, X::AT, Mt + v, X::alpha * m_stride, m_stride,
                                                                   tile_out + v, NR);
            const std::int64_t in = std::min<std::int64_t>(Y::m, g.out[1] - ty * Y::m);
            const std::int64_t jn = std::min<std::int64_t>(X::m, ow - tx * X::m);
            T* corner = S + (s * positions + (ty * Y::m) * ow + tx * X::m - first) * Kgp + blk * NR;
            for (std::int64_t i = 0; i < in; ++i)
              for (std::int64_t jj = 0; jj < jn; ++jj)
                std::memcpy(corner + (i * ow + jj) * Kgp, tile_out + (i * X::m + jj) * NR, NR * sizeof(T));
          }
    };
    const std::int64_t rounds = ceil_div(blocks, step) * tl.points * ceil_div(count, kTileRows);  // one per GEMM tile
    const std::int64_t input_share = ceil_div(next_input.lines(), rounds), output_share = ceil_div(output.lines(), rounds);
    for (std::int64_t first_blk = 0; first_blk < blocks; first_blk += step) {
      const bool pair = step == 2 && first_blk + 1 < blocks;  // U's next block follows; M's lies a block further
      for (std::int64_t xi = 0; xi < tl.points; ++xi) {
        const T* Ub = U + ((grp * tl.points + xi) * blocks + first_blk) * g.Cg * NR;
        const T* Vxi = V + xi * v_stride;
        for (std::int64_t t0 = 0; t0 < count; t0 += kTileRows) {
          next_input.fetch(input_share);
          output.fetch(output_share);
          for (int i = 0; i < kTileRows; ++i) {
            rows[i] = Vxi + std::min(t0 + i, count - 1) * tl.Cgp;
            out[i] = M + xi * m_stride + (t0 + i) * NR;
          }
          // M[xi] (6 tiles x NR filters, or a pair's 2NR) = V[xi] (6 x Cg) . U[xi] (Cg x NR, or 2NR)
          if (pair) gemm_tile_pair_strided(rows, 1, Ub, g.Cg * NR, g.Cg, out, tl.points * m_stride);
          else gemm_tile_strided(rows, 1, Ub, g.Cg, out);
        }
      }
      for (std::int64_t blk = first_blk; blk < first_blk + (pair ? 2 : 1); ++blk)
        block_outputs(blk, M + (blk - first_blk) * tl.points * m_stride);
    }
    // The epilogue's bias is added as the outputs move (Note [Bias in the transpose]).
    const T* bias = epilogue && epilogue->bias ? epilogue->bias + grp * g.Kg : nullptr;
    const OutputEpilogue<T> activation = epilogue ? epilogue->without_bias() : OutputEpilogue<T>{};
    for (std::int64_t s = 0; s < samples; ++s) {
      // y[k][first..last) (+)= S[s][.][k]: the group's filters, back to channel-first.
      T* plane0 = y + ((n0 + s) * g.K + grp * g.Kg) * ov + first;
      transpose(S + s * positions * Kgp, Kgp, positions, g.Kg, plane0, ov, accumulate, bias);
      if (activation.activation)  // the task's output rows, every filter of its group, still in cache
        for (std::int64_t k = 0; k < g.Kg; ++k) activation.apply(plane0 + k * ov, positions, grp * g.Kg + k);
    }
  };
  // Note [Transformed weights on each thread]: every task streams all of U
  // through its GEMMs. Transformed on all threads, each thread's tasks read
  // the half the other wrote, which is slow where the threads do not share an
  // L3, and the next call's writes to it too: far apart, ResNet's
  // 128x128x7x7 forward took 4.5-5.0 ms with U shared, 3.7-3.9 with a copy
  // on each thread (close, 3.8 either way). Each thread therefore transforms
  // every filter into a U of its own (the same values), as long as the copies
  // stay small (threads x U within kOwnWeightBytes); else they share one.
  // Rejected: U transformed by the calling thread alone, which every other
  // thread would still read from it.
  const std::int64_t u_bytes = g.groups * tl.points * blocks * NR * g.Cg * std::int64_t(sizeof(T));
  with_weights_on_each_thread(
      tasks, threads, u_bytes, scratch,
      [&](ScratchScope& into, int transform_threads) { return transform_weights(g, tl, w, into, transform_threads); },
      run_task);
}

// The Winograd weight pass of one geometry: gw (K, Cg, r1, r2) += G1^T gU G2
// with gU[xi] (Cg x Kg) = sum over tiles of V[xi]^T Yhat[xi], samples taken a
// block at a time, the block's V and Yhat transformed, then added into a
// fixed set of gU tiles, so the sum is in sample order on every run. A
// prologue (Note [Adjoint prologue]) runs on the block's rows of gy first, in
// place, while they are about to be read: each (sample, filter) row's sum goes
// to the bias gradient in the same order as conv_bias_backward's.
template <class T, class Y, class X>
class WinogradWeightPass {
 public:
  static constexpr int NR = kTileCols<T>;
  static constexpr std::int64_t kMinHalfTiles = 32;  // Note [Weight pass halves]

  WinogradWeightPass(const ConvGeometry& g, const T* x, const T* gy, const AdjointPrologue<T>* prologue, T* gy_in_place,
                     ScratchScope& scratch)
      : g_(g), tl_(g), x_(x), gy_(gy), prologue_(prologue), gy_in_place_(gy_in_place) {
    blocks_ = ceil_div(g.Kg, NR), ov_ = g.out_vol(), ow_ = g.out[2], per_sample_ = tl_.tiles_y * tl_.tiles_x;
    // Note [Weight pass sample blocks]: a block's V and Yhat (every point of
    // its tiles, channels and filters) stay within kWeightBlockBytes, so that
    // the scratch stack, which keeps its largest size, does not grow with the
    // channel count (at 128 channels, 256 tiles took 9 MiB), and up to 256 tiles.
    constexpr std::int64_t kWeightBlockBytes = std::int64_t(4) << 20;
    const std::int64_t tile_bytes = tl_.points * (tl_.Cgp + blocks_ * NR) * std::int64_t(sizeof(T)) * g.groups;
    const std::int64_t block_tiles = std::clamp<std::int64_t>(kWeightBlockBytes / tile_bytes, 1, 256);
    sample_block_ = std::clamp<std::int64_t>(block_tiles / per_sample_, 1, g.N);
    // Note [Weight pass halves]: the work is cut into two halves, each summed
    // into a gU of its own, added at the end: the batch's first and second half
    // of samples, a block taking samples from both (where a block holds two
    // samples or more), else a block's first and second half of tile rows. On 2
    // threads each half runs on a thread of its own (Note [Weight pass halves
    // on two threads]), so no thread reads the V and Yhat another wrote, and
    // each reads the x and gy that the sample-split passes before it wrote on
    // the same thread: where the threads do not share an L3, reading the
    // other's lines is slow, and so is the next step's write to them (LeNet's
    // first pool, whose output is conv2's x: 0.47-0.57 ms far apart with blocks
    // cut by tile rows, 0.16-0.26 by samples; close, 0.17-0.20). The halves are
    // cut by the geometry, not by the thread count, so the sums are the same at
    // any number of threads. Rejected: a gU per thread, whose sums would change
    // with the thread count.
    // Halves only where each half's GEMMs add kMinHalfTiles tiles or more a
    // block, else one gU: every block's GEMMs load and store all of gU, and a
    // shallower sum spends the pass on that. R3 (8x256x14x14, 3x3: 16 tiles a
    // sample, gU 9.4 MB) in halves of one sample a block took 11.6-12.3 ms at
    // one thread (AVX2) against 9.0-9.9 with one gU over blocks of three.
    const bool samples_split = sample_block_ >= 2 && g.N >= 2;
    const std::int64_t half_tiles =
        samples_split ? sample_block_ / 2 * per_sample_ : ceil_div(sample_block_ * tl_.tiles_y, 2) * tl_.tiles_x;
    halves_ = half_tiles >= kMinHalfTiles;
    by_samples_ = halves_ && samples_split;
    half_n_ = by_samples_ ? ceil_div(g.N, 2) : g.N, half_block_ = by_samples_ ? sample_block_ / 2 : sample_block_;
    c_tiles_ = ceil_div(g.Cg, kTileRows);
    gu_size_ = g.groups * tl_.points * blocks_ * c_tiles_ * kTileRows * NR;
    step_ = column_block_step();  // blocks a GEMM tile serves (Note [Paired tiles])
    gemm_tiles_ = g.groups * tl_.points * ceil_div(blocks_, step_) * c_tiles_;
    gU_ = scratch.take<T>((halves_ ? 2 : 1) * gu_size_).data();  // [half][grp][xi][blk][c][NR]
    if (prologue && prologue->bias_grad) partial_ = scratch.take<T>(g.N * g.K).data();  // row sums (N x K)
  }

  void run(T* gw, ScratchScope& scratch) const {
    const int threads = conv_threads();
    if (by_samples_ && threads <= 2) run_halves_on_own_threads(threads);  // (by_samples_ implies halves_)
    else run_blocks_on_all_threads(threads, scratch);
    if (partial_) add_channel_sums(g_, partial_, prologue_->bias_grad);
    add_to_weights(gw);
  }

 private:
  // Where a block's tiles are kept: V [grp][xi][t][Cgp] and Yhat
  // [grp][xi][blk][t][NR] for blocks of up to `most` tiles (Note [Point
  // strides]: a group's points lie v_stride and y_stride apart).
  struct Buffers {
    T* V;
    T* Yhat;
    std::int64_t most, v_stride, y_stride;
  };
  Buffers buffers(std::int64_t most, ScratchScope& scratch) const {
    Buffers b{nullptr, nullptr, most, tl_.point_stride(most * tl_.Cgp), tl_.point_stride(blocks_ * most * NR)};
    b.V = scratch.take<T>(g_.groups * tl_.points * b.v_stride).data();
    b.Yhat = scratch.take<T>(g_.groups * tl_.points * b.y_stride).data();
    return b;
  }

  // Note [Weight pass halves on two threads]: each half is one task, on a
  // thread of its own from its first transform to its last GEMM, with V and
  // Yhat in that thread's scratch. Its blocks are those of
  // run_blocks_on_all_threads (the same samples, tiles and order), so the sums
  // are the same at any thread count, bit for bit. The two threads meet once a
  // pass instead of twice a block: ResNet's 128x32x28x28 weight pass (32
  // blocks) took 4.55-4.76 ms close and 7.05-8.17 ms far apart with all
  // threads on every block, 4.01-4.15 ms in both now. Three threads and more
  // take run_blocks_on_all_threads, whose tasks spread over any count.
  void run_halves_on_own_threads(int threads) const {
    parallel_for(2, threads, [&](std::int64_t half) {
      ScratchScope own;
      const Buffers b = buffers(half_block_ * per_sample_, own);
      const std::int64_t first = half * half_n_, end = half == 0 ? half_n_ : g_.N;
      for (std::int64_t j0 = 0; first + j0 < end; j0 += half_block_) {
        const std::int64_t s0 = first + j0, s1 = std::min(end, s0 + half_block_);
        if (prologue_)
          for (std::int64_t r = 0; r < (s1 - s0) * g_.K; ++r) prologue_rows(s0 + r / g_.K, r % g_.K);
        const std::int64_t row_tasks = (s1 - s0) * g_.groups * tl_.tiles_y;
        for (std::int64_t task = 0; task < row_tasks; ++task)
          transform_task(task, row_tasks, [&](std::int64_t s) { return s0 + s; }, b);
        for (std::int64_t tile_index = 0; tile_index < gemm_tiles_; ++tile_index)
          gemm_tile(half, tile_index, b, 0, (s1 - s0) * per_sample_, j0 != 0);
      }
    });
  }

  // Block by block, each block's transforms and then its GEMM tiles spread
  // over the threads.
  void run_blocks_on_all_threads(int threads, ScratchScope& scratch) const {
    const Buffers b = buffers((by_samples_ ? 2 * half_block_ : sample_block_) * per_sample_, scratch);
    for (std::int64_t j0 = 0; j0 < half_n_; j0 += half_block_) {
      // The block's samples: [a0, a1) of the first half, then [b0, b1) of the second.
      const std::int64_t a0 = j0, a1 = std::min(half_n_, j0 + half_block_);
      const std::int64_t b0 = half_n_ + j0, b1 = std::max(b0, std::min(g_.N, half_n_ + j0 + half_block_));
      const std::int64_t samples = (a1 - a0) + (b1 - b0), count = samples * per_sample_;
      auto sample_of = [&](std::int64_t s) { return s < a1 - a0 ? a0 + s : b0 + (s - (a1 - a0)); };
      if (prologue_)
        parallel_for(samples * g_.K, threads, [&](std::int64_t r) { prologue_rows(sample_of(r / g_.K), r % g_.K); });
      // V and Yhat of the block's tiles: one task per (sample, group, row of tiles).
      const std::int64_t row_tasks = samples * g_.groups * tl_.tiles_y;
      parallel_for(row_tasks, threads, [&](std::int64_t task) { transform_task(task, row_tasks, sample_of, b); });
      // gU[half] (+)= V^T Yhat over the half's tiles, each GEMM tile on one thread.
      const std::int64_t split = !halves_   ? count
                                 : by_samples_ ? (a1 - a0) * per_sample_
                                               : ceil_div(samples * tl_.tiles_y, 2) * tl_.tiles_x;
      parallel_for((halves_ ? 2 : 1) * gemm_tiles_, threads, [&](std::int64_t index) {
        const std::int64_t half = index / gemm_tiles_;
        gemm_tile(half, index % gemm_tiles_, b, half == 0 ? 0 : split, half == 0 ? split : count, j0 != 0);
      });
    }
  }

  // The prologue on sample n's row of filter k of gy, in place.
  void prologue_rows(std::int64_t n, std::int64_t k) const {
    const std::int64_t row_index = n * g_.K + k;
    T* row = gy_in_place_ + row_index * ov_;
    prologue_->apply(row, row_index * ov_, ov_);
    if (partial_) partial_[row_index] = sum_run(row, ov_);
  }

  // Note [Fetching the next task]: the rows of x and gy behind tile row ty of sample n, group grp.
  std::pair<LineFetch, LineFetch> row_lines(std::int64_t n, std::int64_t grp, std::int64_t ty) const {
    const std::int64_t o_end = std::min<std::int64_t>(ty * Y::m + Y::m, g_.out[1]), bytes = std::int64_t(sizeof(T));
    return {input_row_lines(g_, x_, n, 1, grp, ty * Y::m, ty * Y::m + Y::alpha),
            LineFetch(gy_ + (n * g_.K + grp * g_.Kg) * ov_ + ty * Y::m * ow_, 1, 0, g_.Kg, ov_ * bytes,
                      (o_end - ty * Y::m) * ow_ * bytes, false)};
  }

  // Task (s, group, tile row) of a block's row_tasks, s its s-th sample (sample_of(s) in the batch).
  template <class SampleOf>
  void transform_task(std::int64_t task, std::int64_t row_tasks, const SampleOf& sample_of, const Buffers& b) const {
    auto parts = [&](std::int64_t t) {
      return std::array<std::int64_t, 3>{t / (tl_.tiles_y * g_.groups), (t / tl_.tiles_y) % g_.groups, t % tl_.tiles_y};
    };
    const auto [s, grp, ty] = parts(task);
    std::pair<LineFetch, LineFetch> next{};
    if (task + 1 < row_tasks) {
      const auto [s1, grp1, ty1] = parts(task + 1);
      next = row_lines(sample_of(s1), grp1, ty1);
    }
    transform_row(sample_of(s), grp, ty, s * per_sample_ + ty * tl_.tiles_x, b, next);
  }

  // V and Yhat of tile row ty of sample n, group grp, as tiles t0 + tx of a
  // block, fetching the next task's rows while it runs.
  void transform_row(std::int64_t n, std::int64_t grp, std::int64_t ty, std::int64_t t0, const Buffers& b,
                     std::pair<LineFetch, LineFetch>& next) const {
    auto& [next_x, next_gy] = next;
    const std::int64_t in = std::min<std::int64_t>(Y::m, g_.out[1] - ty * Y::m);
    const std::int64_t x_share = ceil_div(next_x.lines(), tl_.tiles_x * blocks_ + 1);
    const std::int64_t gy_share = ceil_div(next_gy.lines(), tl_.tiles_x * blocks_ + 1);
    T dy[Y::m * X::m * NR];
    ScratchScope local;
    T* band = local.take<T>(Y::alpha * tl_.P2 * tl_.Cgp).data();
    // Note [Weight pass input rows]: the tile row's alpha1 padded rows of x,
    // channel-last, transposed here while they are read. Neighbouring tile
    // rows share r1 - 1 rows, transposed twice (alpha1 / m1 = 1.5x for 3x3),
    // all in cache. Rejected: all of x channel-last up front, a separate
    // pass writing and reading the whole batch (14.7 MiB for ResNet's
    // 128x32x28x28): 1.2x the weight pass's time at 1 thread.
    T* xt = local.take<T>(tl_.rows_size(Y::alpha)).data();
    channel_last_rows(g_, tl_, x_, n, grp, ty * Y::m, ty * Y::m + Y::alpha, xt);
    next_x.fetch(x_share), next_gy.fetch(gy_share);
    input_row(tl_, xt, band, b.V + grp * tl_.points * b.v_stride + t0 * tl_.Cgp, b.v_stride);
    // The tile row's rows of gy, channel-last: D[position][k], zero past Kg.
    const std::int64_t Kgp = blocks_ * NR;
    T* D = local.take<T>(in * ow_ * Kgp).data();
    transpose(gy_ + (n * g_.K + grp * g_.Kg) * ov_ + ty * Y::m * ow_, ov_, g_.Kg, in * ow_, D, Kgp);
    if (Kgp > g_.Kg)
      for (std::int64_t p = 0; p < in * ow_; ++p) std::fill(D + p * Kgp + g_.Kg, D + (p + 1) * Kgp, T(0));
    for (std::int64_t tx = 0; tx < tl_.tiles_x; ++tx) {
      const std::int64_t jn = std::min<std::int64_t>(X::m, ow_ - tx * X::m);
      for (std::int64_t blk = 0; blk < blocks_; ++blk) {
        next_x.fetch(x_share), next_gy.fetch(gy_share);
        // The tile of gy, NR filters channel-last, zero past the output's edge.
        const T* corner = D + tx * X::m * Kgp + blk * NR;
        if (in < Y::m || jn < X::m) std::fill(dy, dy + Y::m * X::m * NR, T(0));
        for (std::int64_t i = 0; i < in; ++i)
          for (std::int64_t jj = 0; jj < jn; ++jj)
            std::memcpy(dy + (i * X::m + jj) * NR, corner + (i * ow_ + jj) * Kgp, NR * sizeof(T));
        // Yhat = A1 dy A2^T (alpha1 x alpha2, NR filters)
        T* Yt = b.Yhat + grp * tl_.points * b.y_stride + (blk * b.most + t0 + tx) * NR;
        for (int v = 0; v < NR; v += kLanes<T>)
          transform<Y::alpha, Y::m, X::alpha, X::m, Lanes<T>>(Y::A, X::A, dy + v, X::m * NR, NR, Yt + v, b.y_stride);
      }
    }
  }

  // gU[half] (+)= V^T Yhat over tiles [t0, t1) of a block, for GEMM tile tile_index.
  void gemm_tile(std::int64_t half, std::int64_t tile_index, const Buffers& b, std::int64_t t0, std::int64_t t1,
                 bool accumulate) const {
    const std::int64_t block_tiles = ceil_div(blocks_, step_);
    const std::int64_t ct = tile_index % c_tiles_, blk = (tile_index / c_tiles_) % block_tiles * step_;
    const std::int64_t xi = (tile_index / (c_tiles_ * block_tiles)) % tl_.points;
    const std::int64_t grp = tile_index / (c_tiles_ * block_tiles * tl_.points);
    const T* Vxi = b.V + (grp * tl_.points + xi) * b.v_stride + t0 * tl_.Cgp;
    const T* rows[kTileRows];
    T* out[kTileRows];
    for (int i = 0; i < kTileRows; ++i) {
      rows[i] = Vxi + std::min<std::int64_t>(ct * kTileRows + i, g_.Cg - 1);
      out[i] = gU_ + half * gu_size_ + ((((grp * tl_.points + xi) * blocks_ + blk) * c_tiles_ + ct) * kTileRows + i) * NR;
    }
    // gU[xi] (6 channels x NR filters, or a pair's 2NR) (+)= V[xi]^T (6 x tiles) . Yhat[xi] (tiles x NR, or 2NR);
    // the next block's Yhat lies `most` tiles on, its gU c_tiles tiles on.
    const T* Yb = b.Yhat + (grp * tl_.points + xi) * b.y_stride + (blk * b.most + t0) * NR;
    if (step_ == 2 && blk + 1 < blocks_)
      gemm_tile_pair_strided(rows, tl_.Cgp, Yb, b.most * NR, t1 - t0, out, c_tiles_ * kTileRows * NR, accumulate);
    else
      gemm_tile_strided(rows, tl_.Cgp, Yb, t1 - t0, out, accumulate);
  }

  // gw[k][c] += G1^T gU[.][c][k] G2, a task per (group, filter block, channel)
  // reading whole NR-wide rows of gU (as transform_weights writes them).
  void add_to_weights(T* gw) const {
    parallel_for(g_.groups * blocks_ * g_.Cg, threads_if(g_.K * g_.Cg > 512), [&](std::int64_t task) {
      const std::int64_t c = task % g_.Cg, blk = (task / g_.Cg) % blocks_, grp = task / (g_.Cg * blocks_);
      const std::int64_t lanes = std::min<std::int64_t>(NR, g_.Kg - blk * NR);
      T u[kAlpha * kAlpha * NR], taps[Y::r * X::r * NR];  // u[xi * NR + lane], taps[tap * NR + lane]
      for (std::int64_t xi = 0; xi < tl_.points; ++xi) {
        const T* row = gU_ + (((grp * tl_.points + xi) * blocks_ + blk) * c_tiles_ * kTileRows + c) * NR;
        for (int lane = 0; lane < NR; ++lane) u[xi * NR + lane] = halves_ ? row[lane] + row[gu_size_ + lane] : row[lane];
      }
      for (int v = 0; v < NR; v += kLanes<T>)  // a vector of filters at a time
        transform<Y::r, Y::alpha, X::r, X::alpha, Lanes<T>>(Y::GT, X::GT, u + v, X::alpha * NR, NR, taps + v, NR);
      for (std::int64_t lane = 0; lane < lanes; ++lane) {
        T* dst = gw + ((grp * g_.Kg + blk * NR + lane) * g_.Cg + c) * Y::r * X::r;
        for (int i = 0; i < Y::r * X::r; ++i) dst[i] += taps[i * NR + lane];
      }
    });
  }

  const ConvGeometry& g_;
  const Tiling<T, Y, X> tl_;
  const T* x_;
  const T* gy_;
  const AdjointPrologue<T>* prologue_;
  T* gy_in_place_;
  std::int64_t blocks_ = 0, ov_ = 0, ow_ = 0, per_sample_ = 0, sample_block_ = 0, half_n_ = 0, half_block_ = 0;
  std::int64_t c_tiles_ = 0, gu_size_ = 0, gemm_tiles_ = 0, step_ = 1;
  bool halves_ = false, by_samples_ = false;
  T* gU_ = nullptr;
  T* partial_ = nullptr;  // per (sample, filter) row sums of the adjoint for the bias, or null
};

template <class T, class Y, class X>
void backward_weight(const ConvGeometry& g, const T* x, const T* gy, T* gw, const AdjointPrologue<T>* prologue,
                     T* gy_in_place) {
  ScratchScope scratch;
  const WinogradWeightPass<T, Y, X> pass(g, x, gy, prologue, gy_in_place, scratch);
  pass.run(gw, scratch);
}

// f.template operator()<Y, X>() with the Dims of the geometry's tap counts (1, 3 or 5 each).
template <class T, class F>
void with_dims(const ConvGeometry& g, F&& f) {
  auto cols = [&]<class Y>() {
    switch (g.ker[2]) {
      case 1: return f.template operator()<Y, Dim<T, 1>>();
      case 3: return f.template operator()<Y, Dim<T, 3>>();
      default: return f.template operator()<Y, Dim<T, 5>>();
    }
  };
  switch (g.ker[1]) {
    case 1: return cols.template operator()<Dim<T, 1>>();
    case 3: return cols.template operator()<Dim<T, 3>>();
    default: return cols.template operator()<Dim<T, 5>>();
  }
}


}  // namespace

template <class T>
void forward_any(const ConvGeometry& g, const T* x, const T* w, T* y, bool accumulate, const OutputEpilogue<T>* epilogue) {
  with_dims<T>(g, [&]<class Y, class X>() { forward<T, Y, X>(g, x, w, y, accumulate, epilogue); });
}

template <class T>
void backward_weight_any(const ConvGeometry& g, const T* x, const T* gy, T* gw, const AdjointPrologue<T>* prologue,
                         T* gy_in_place) {
  with_dims<T>(g, [&]<class Y, class X>() { backward_weight<T, Y, X>(g, x, gy, gw, prologue, gy_in_place); });
}

template <class T>
void transpose_any(const T* src, std::int64_t src_stride, std::int64_t rows, std::int64_t cols, T* dst,
                   std::int64_t dst_stride, bool add, const T* col_offset) {
  transpose(src, src_stride, rows, cols, dst, dst_stride, add, col_offset);
}

}  // namespace tg::kernels::conv_impl::TG_WINOGRAD_ISA

#if defined(TG_WINOGRAD_AVX2) && !defined(__clang__)
#pragma GCC pop_options
#endif
