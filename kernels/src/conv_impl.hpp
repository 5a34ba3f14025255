// Private to the convolution kernels: one function per (algorithm, pass), and
// the index arithmetic they share. The dispatcher (conv.cpp) has already
// resolved the algorithm and un-flipped the weights, so these see flip = false.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "tapegrad/kernels/array.hpp"
#include "tapegrad/kernels/conv.hpp"
#include "tapegrad/kernels/filter.hpp"
#include "tapegrad/kernels/isa.hpp"
#include "tapegrad/kernels/parallel.hpp"
#include "tapegrad/kernels/reduce.hpp"
#include "tapegrad/kernels/scratch.hpp"

namespace tg::kernels::conv_impl {

inline std::int64_t floor_div(std::int64_t a, std::int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return -floor_div(-a, b); }

// The outputs [begin, end) along spatial dim d whose input index
// o * stride + tap * dilation - pad_lo falls inside the input, for one kernel tap.
struct TapRange {
  std::int64_t begin, end;
  std::int64_t offset;  // input index of output 0: tap * dilation - pad_lo
  bool empty() const { return begin >= end; }
};

inline TapRange tap_range(const ConvGeometry& g, int d, std::int64_t tap) {
  const std::int64_t off = tap * g.dil[d] - g.lo[d];
  const std::int64_t b = std::max<std::int64_t>(0, ceil_div(-off, g.stride[d]));
  const std::int64_t e = std::min<std::int64_t>(g.out[d], floor_div(g.in[d] - 1 - off, g.stride[d]) + 1);
  return {b, std::max(b, e), off};
}

// Input index along dim d of output o and tap t, or -1 when it lies in the padding.
inline std::int64_t input_index(const ConvGeometry& g, int d, std::int64_t o, std::int64_t tap) {
  const std::int64_t i = o * g.stride[d] + tap * g.dil[d] - g.lo[d];
  return (i >= 0 && i < g.in[d]) ? i : -1;
}

// Uninitialised scratch of n elements. Arrays take large blocks from the cache
// of freed blocks (Note [Cached large blocks]): a fresh multi-MiB workspace per
// call would page-fault in every time.
template <class T>
Array<T> scratch(std::int64_t n) {
  return Array<T>::uninitialized(Shape{n > 0 ? n : 0});
}

inline bool unit_stride(const ConvGeometry& g) { return g.stride[0] == 1 && g.stride[1] == 1 && g.stride[2] == 1; }

// The geometry of the input adjoint of a unit-stride conv, as a conv of gy:
// gx[c] += sum_k correlate(gy[k], reversed w[k, c]) with low padding dil*(k-1) - lo.
inline ConvGeometry adjoint_geometry(const ConvGeometry& g) {
  ConvGeometry a = g;
  a.C = g.K;
  a.K = g.C;
  a.Cg = g.Kg;
  a.Kg = g.Cg;
  a.in = g.out;
  a.out = g.in;
  for (int d = 0; d < ConvGeometry::kMaxSpatial; ++d) {
    a.lo[d] = g.dil[d] * (g.ker[d] - 1) - g.lo[d];
    a.hi[d] = g.in[d] - g.out[d] - a.lo[d] + g.dil[d] * (g.ker[d] - 1);
  }
  return a;
}

// w (K, Cg, taps) -> (C, Kg, taps) per group, taps reversed: the adjoint geometry's weights.
template <class T>
const T* adjoint_weights(const ConvGeometry& g, const T* w, ScratchScope& scratch) {
  const std::int64_t kv = g.ker_vol();
  T* out = scratch.take<T>(g.K * g.Cg * kv).data();
  for (std::int64_t grp = 0; grp < g.groups; ++grp)
    for (std::int64_t c = 0; c < g.Cg; ++c)
      for (std::int64_t k = 0; k < g.Kg; ++k)
        for (std::int64_t u = 0; u < kv; ++u)
          out[((grp * g.Cg + c) * g.Kg + k) * kv + u] =
              w[((grp * g.Kg + k) * g.Cg + c) * kv + (kv - 1 - u)];
  return out;
}
template <class T>
void direct_forward(const ConvGeometry& g, const T* x, const T* w, T* y, bool accumulate);
template <class T>
void direct_backward_input(const ConvGeometry& g, const T* gy, const T* w, T* gx, bool accumulate);
template <class T>
void direct_backward_weight(const ConvGeometry& g, const T* x, const T* gy, T* gw);
// A filter's passes over its extended image by rows (filter_rows_passes.hpp), w unflipped.
template <class T>
void direct_rows_forward(const BorderRows& b, const T* x, T fill, const T* w, T* y, bool accumulate);
template <class T>
void direct_rows_backward_input(const BorderRows& b, const T* gy, const T* w, T* gx, T* gfill, bool accumulate);
template <class T>
void direct_rows_backward_weight(const BorderRows& b, const T* x, T fill, const T* gy, T* gw);

// The direct forward and weight gradient by shifted copies (conv_shifted.cpp,
// Note [Shifted copies]): unit-stride 1-D and 2-D convs, not 1x1, with at most
// 128 taps per filter and 7 along a row; the input gradient of a unit-stride
// conv as its adjoint conv's forward (adjoint_geometry) where that applies
// (depthwise layers, few filters). shifted_runs: it applies and the kernels
// run at avx2 (forward, input gradient) or avx512 (weight gradient), so the
// direct algorithm runs the pass with it.
bool shifted_applies(const ConvGeometry& g, ConvPass pass);
bool shifted_runs(const ConvGeometry& g, ConvPass pass);
// The weight pass's units of work: its sample parts, or its blocks of filters (each on one thread).
std::int64_t shifted_weight_tasks(const ConvGeometry& g);
template <class T>
void shifted_forward(const ConvGeometry& g, const T* x, const T* w, T* y, bool accumulate,
                     const OutputEpilogue<T>* epilogue);
// A 1x1 conv (unit stride, no padding) with the same loops, the input planes
// as the runs (Note [Pointwise runs]); pointwise_runs: pointwise and avx512.
// pointwise_runs_pass: it runs, and the pass is a forward or an input gradient
// (the adjoint 1x1 conv's forward).
bool pointwise_runs(const ConvGeometry& g);
bool pointwise_runs_pass(const ConvGeometry& g, ConvPass pass);
template <class T>
void pointwise_forward(const ConvGeometry& g, const T* x, const T* w, T* y, bool accumulate,
                       const OutputEpilogue<T>* epilogue);
// gw += the weight gradient. With a prologue, it is applied to gy_in_place
// (gy itself) plane by plane first (Note [Adjoint prologue]).
template <class T>
void shifted_backward_weight(const ConvGeometry& g, const T* x, const T* gy, T* gw, const AdjointPrologue<T>* prologue,
                             T* gy_in_place);

template <class T>
void im2col_forward(const ConvGeometry& g, const T* x, const T* w, T* y, bool accumulate);
// gx = (or += with accumulate) the input gradient.
template <class T>
void im2col_backward_input(const ConvGeometry& g, const T* gy, const T* w, T* gx, bool accumulate);
template <class T>
void im2col_backward_weight(const ConvGeometry& g, const T* x, const T* gy, T* gw);

// bias_grad[k] += the sum over samples, in order, of partial[n * K + k]: each
// (sample, channel) row's sum of the prologue's result (Note [Adjoint prologue];
// the same additions as conv_bias_backward).
template <class T>
void add_channel_sums(const ConvGeometry& g, const T* partial, T* bias_grad) {
  for (std::int64_t k = 0; k < g.K; ++k) {
    T total = T(0);
    for (std::int64_t n = 0; n < g.N; ++n) total += partial[n * g.K + k];
    bias_grad[k] += total;
  }
}

// True when the implicit GEMM micro-kernel runs with AVX2+FMA on this CPU.
bool implicit_gemm_vectorised();
// The micro-kernel the implicit GEMM and Winograd passes share (conv_implicit_gemm.cpp):
//   out[i][j] (+)= sum_{q < n} a[i][index[q]] * b[q * kTileCols + j]     i < kTileRows, j < kTileCols
// a tile of kTileRows rows (any row pointers, one shared index table) by two
// AVX2 vectors of columns; `accumulate` adds to what out holds. Each tile row
// is stored straight to its own place out[i] (kTileCols values): a tile in a
// buffer copied out afterwards read back each just-stored vector in 16-byte
// pieces, a failed store forward per piece (20% of LeNet's conv1 forward).
constexpr int kTileRows = 6;
template <class T>
constexpr int kTileCols = 64 / int(sizeof(T));
template <class T>
void gemm_tile(const T* const* a, const std::int64_t* index, const T* b, std::int64_t n, T* const* out,
               bool accumulate = false);
// The same with a[i][q * stride] in place of a[i][index[q]].
template <class T>
void gemm_tile_strided(const T* const* a, std::int64_t stride, const T* b, std::int64_t n, T* const* out,
                       bool accumulate = false);
// Two column blocks' tiles at once: the second block's b at b + b_step and
// its rows at out[i] + out_step, each sum the same as gemm_tile's; one 6 x 2
// tile where paired_tiles() (Note [Paired tiles]), else two gemm_tile calls.
template <class T>
void gemm_tile_pair(const T* const* a, const std::int64_t* index, const T* b, std::int64_t b_step, std::int64_t n,
                    T* const* out, std::int64_t out_step, bool accumulate = false);
template <class T>
void gemm_tile_pair_strided(const T* const* a, std::int64_t stride, const T* b, std::int64_t b_step, std::int64_t n,
                            T* const* out, std::int64_t out_step, bool accumulate = false);
// How many column blocks the passes run together: 2 where paired_tiles(), else 1.
inline int column_block_step() { return paired_tiles() ? 2 : 1; }
// Note [Transformed weights on each thread] (conv_winograd_passes.hpp): the
// most bytes of weights, transformed or packed, that a pass copies onto every
// thread (threads x one copy); past it the threads share one copy.
inline constexpr std::int64_t kOwnWeightBytes = std::int64_t(8) << 20;

// run(task, weights) for tasks [0, tasks) on `threads` threads, each thread a
// run of consecutive tasks, where weights = prepare(scratch, prepare_threads)
// is `bytes` of transformed or packed weights: a copy made on each thread
// while threads x bytes stays within kOwnWeightBytes, else one copy made on
// all threads and shared.
template <class Prepare, class Run>
void with_weights_on_each_thread(std::int64_t tasks, int threads, std::int64_t bytes, ScratchScope& scratch,
                                 Prepare&& prepare, Run&& run) {
  if (threads <= 1 || threads * bytes > kOwnWeightBytes) {
    const auto weights = prepare(scratch, threads);
    parallel_for(tasks, threads, [&](std::int64_t task) { run(task, weights); });
    return;
  }
  const std::int64_t chunks = std::min<std::int64_t>(threads, tasks);
  parallel_for(chunks, threads, [&](std::int64_t chunk) {
    ScratchScope own;
    const auto weights = prepare(own, 1);
    for (std::int64_t task = tasks * chunk / chunks; task < tasks * (chunk + 1) / chunks; ++task) run(task, weights);
  });
}
// Note [Implicit GEMM's padded copy]: implicit GEMM copies its input zero-padded
// once (N*C*padded_vol elements), so it runs a geometry only while that copy is
// at most kPaddedCopyRatio times its input and output together plus
// kPaddedCopySlack elements: padding far wider than the kernel, read through an
// equally large stride, would otherwise allocate a mostly-zero buffer without
// bound (a tape file could ask for terabytes). Cropping the copy to the windows
// was rejected: direct and im2col already run those geometries without one.
inline constexpr std::int64_t kPaddedCopyRatio = 16;
inline constexpr std::int64_t kPaddedCopySlack = std::int64_t{1} << 22;
// The elements of the padded copy pass `pass` makes (0: it reads the input in place).
double implicit_gemm_copied(const ConvGeometry& g, ConvPass pass);
bool implicit_gemm_applies(const ConvGeometry& g, ConvPass pass);
// Throws a tg::Error naming `op` where implicit_gemm_applies is false.
void require_implicit_gemm(const ConvGeometry& g, ConvPass pass, const char* op);
template <class T>
void implicit_gemm_forward(const ConvGeometry& g, const T* x, const T* w, T* y, bool accumulate,
                           const OutputEpilogue<T>* epilogue = nullptr);
// gx = (or += with accumulate) the input gradient: the forward of the adjoint
// geometry, or for strides the phases of conv_strided_adjoint.cpp, either of
// which writes every element (im2col, which only adds, past the copy's limit).
template <class T>
void implicit_gemm_backward_input(const ConvGeometry& g, const T* gy, const T* w, T* gx, bool accumulate);
// The strided input gradient by phases (conv_strided_adjoint.cpp, Note [Strided
// input adjoint by phases]): its phase count (a GEMM each), the elements of gy's
// zero-padded copy it makes, and whether it runs: at most kMaxStridedAdjointPhases
// phases and a copy within Note [Implicit GEMM's padded copy]'s limit (otherwise
// implicit_gemm_backward_input runs im2col's col2im).
inline constexpr std::int64_t kMaxStridedAdjointPhases = 64;
std::int64_t strided_adjoint_phases(const ConvGeometry& g);
double strided_adjoint_copied(const ConvGeometry& g);
bool strided_adjoint_applies(const ConvGeometry& g);
// False when a phase has no taps (a stride longer than the dilated kernel, as
// 1x1 stride 2): its zeros cost a pass of their own, and col2im runs it faster.
bool strided_adjoint_dense(const ConvGeometry& g);
template <class T>
void implicit_gemm_strided_backward_input(const ConvGeometry& g, const T* gy, const T* w, T* gx, bool accumulate);
// x (planes, in) zero-padded by lo (negative: cropped) into (planes, padded), on the scratch stack.
template <class T>
const T* zero_padded(const T* x, std::int64_t planes, const ConvGeometry::Dims& in, const ConvGeometry::Dims& lo,
                     const ConvGeometry::Dims& padded, ScratchScope& scratch);
// With a prologue, gy_in_place is gy itself (writable): the prologue runs on it as it is packed.
template <class T>
void implicit_gemm_backward_weight(const ConvGeometry& g, const T* x, const T* gy, T* gw,
                                   const AdjointPrologue<T>* prologue = nullptr, T* gy_in_place = nullptr);

// dst[j * dst_stride + i] (+)= src[i * src_stride + j] for i < rows, j < cols:
// the layout changes between channel-first and channel-last, a vector block at
// a time in registers (transpose in conv_winograd_passes.hpp, with AVX2 where
// the CPU has it); Winograd's passes and implicit GEMM's packing use it.
// With col_offset (not with add), dst[j * dst_stride + i] = src[...] + col_offset[j].
//
// Note [Bias in the transpose]: implicit GEMM and Winograd compute their
// outputs channel-last and transpose them into y's planes; a conv's bias is
// added in those stores, one add on a vector already in a register, instead
// of an epilogue pass over y afterwards (a load, an add and a store per
// value, at the baseline instruction set: 0.1 ms of LeNet's conv1 forward,
// 0.58 ms at 2 threads). The sum is the same float add either way. Rejected:
// the epilogue on the channel-last block before the transpose, which timed
// the same as the pass over y.
template <class T>
void transpose_blocks(const T* src, std::int64_t src_stride, std::int64_t rows, std::int64_t cols, T* dst,
                      std::int64_t dst_stride, bool add = false, const T* col_offset = nullptr);

// Winograd (conv_winograd.cpp, Note [Winograd convolution]): unit stride and
// dilation, 1-D or 2-D, 1, 3 or 5 taps per dim. require_winograd throws a
// tg::Error naming `op` where it does not apply.
bool winograd_applies(const ConvGeometry& g);
// Transform points along a dim of `taps` taps (1, 3 or 5): 1 (no transform),
// 6 for F(4, 3) and 8 for F(4, 5); a tile has alpha - taps + 1 outputs.
constexpr int winograd_alpha(std::int64_t taps) { return taps == 1 ? 1 : taps == 3 ? 6 : 8; }
void require_winograd(const ConvGeometry& g, const char* op);
template <class T>
void winograd_forward(const ConvGeometry& g, const T* x, const T* w, T* y, bool accumulate,
                      const OutputEpilogue<T>* epilogue = nullptr);
template <class T>
void winograd_backward_input(const ConvGeometry& g, const T* gy, const T* w, T* gx, bool accumulate);
// With a prologue, gy_in_place is gy itself (writable): the prologue runs on each
// block of samples' rows before they are transformed (Note [Adjoint prologue]).
template <class T>
void winograd_backward_weight(const ConvGeometry& g, const T* x, const T* gy, T* gw,
                              const AdjointPrologue<T>* prologue = nullptr, T* gy_in_place = nullptr);

template <class T>
void fft_forward(const ConvGeometry& g, const T* x, const T* w, T* y, bool accumulate);
template <class T>
void fft_backward_input(const ConvGeometry& g, const T* gy, const T* w, T* gx);
template <class T>
void fft_backward_weight(const ConvGeometry& g, const T* x, const T* gy, T* gw);

}  // namespace tg::kernels::conv_impl
