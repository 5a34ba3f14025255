// Convolution kernels: one validated geometry, three passes, three algorithms.
//
//   y  = conv(x, w)               x (N, C, in...), w (K, C/groups, ker...), y (N, K, out...)
//   gx += conv_backward_input     (a transposed convolution of gy with w)
//   gw += conv_backward_weight    (a correlation of x with gy)
//
// Spatial rank 1-3; internally every geometry is 3-D, unused dims have size 1.
// Cross-correlation by default (the deep-learning convention); flip = true is
// a true convolution (the kernel reversed along every spatial dim).
//
// Note [Choosing a convolution algorithm]: choose_conv_algorithm prices each
// pass of a geometry with a small cost model and takes the cheapest that
// applies:
//   direct  : macs / kDirectRate                (loops, vectorised along the
//             output row; no workspace; any stride, dilation, groups)
//   im2col  : macs / kGemmRate + copied / kCopyRate  (workspace of
//             Cg*ker_vol*out_vol elements per thread; skipped for 1x1 stride 1
//             unpadded convolutions, which are a GEMM on the input directly)
//   implicit_gemm : macs / (kImplicitGemmRate * fill), fill = the share of
//             its 16-filter tiles the pass's output channels use; no patch
//             copy (index tables into a padded input copy); only with AVX2+FMA, never for pointwise
//             convolutions, a strided input gradient, or padding that makes
//             the copy far larger than input and output (Note [Implicit GEMM's padded copy])
//   winograd: only stride 1 and dilation 1, 1-D or 2-D, 1, 3 or 5 taps per
//             dim, with AVX2+FMA (Note [Winograd convolution]): one GEMM per
//             point of 4x4-output tiles (64 points for a 5x5 kernel, 36 for a 3x3),
//             tiles*points*Cg*Kg' / kWinogradRate plus the transforms of every
//             tile's channels and filters / kWinogradTransformRate
//   fft     : only stride 1 and dilation 1; transforms of every input
//             channel, filter and output plane on the padded grid, plus the
//             pointwise products: (N*C + K*C + N*K) * 5 F log2 F / kFftRate
//             + N*K*Cg * F * 4 / kFftRate for F points per plane.
// The rates are measured on an AVX2 core (see tools/bench_conv); the rule
// picks direct for depthwise and single-channel filtering, winograd for the
// channel-heavy 3x3 and 5x5 layers of a CNN, implicit_gemm for the other
// channel-heavy layers (im2col for 1x1 layers), and fft for large kernels (15x15 and up
// on a 512x512 plane). Any pass can be forced through the algorithm argument;
// forcing fft or winograd on a geometry it cannot run is an error.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "tapegrad/kernels/epilogue.hpp"
#include "tapegrad/kernels/shape.hpp"

namespace tg::kernels {

enum class ConvAlgorithm { automatic, direct, im2col, implicit_gemm, fft, winograd };
const char* to_string(ConvAlgorithm a);

enum class ConvPass { forward, backward_input, backward_weight };
const char* to_string(ConvPass p);

// What the caller asks for. Each list holds one value per spatial dim, or one
// value for every dim, or nothing for the default (stride 1, dilation 1, no padding).
struct ConvSpec {
  std::vector<std::int64_t> stride, dilation, pad_lo, pad_hi;
  std::int64_t groups = 1;
  bool flip = false;
};

struct ConvGeometry {
  static constexpr int kMaxSpatial = 3;
  using Dims = std::array<std::int64_t, kMaxSpatial>;
  int spatial = 0;                  // number of spatial dims the caller has (1-3)
  std::int64_t N = 0, C = 0, K = 0;  // batch, input channels, output channels
  std::int64_t groups = 1, Cg = 0, Kg = 0;  // channels per group (input, output)
  Dims in{1, 1, 1}, ker{1, 1, 1}, out{1, 1, 1};
  Dims stride{1, 1, 1}, dil{1, 1, 1}, lo{0, 0, 0}, hi{0, 0, 0};
  bool flip = false;

  std::int64_t in_vol() const { return in[0] * in[1] * in[2]; }
  std::int64_t ker_vol() const { return ker[0] * ker[1] * ker[2]; }
  std::int64_t out_vol() const { return out[0] * out[1] * out[2]; }
  double macs() const { return double(N) * double(K) * double(Cg) * double(ker_vol()) * double(out_vol()); }
  // 1x1 kernel, stride 1, no padding: the convolution is a GEMM on the input itself.
  bool pointwise() const;
  bool unit_stride_and_dilation() const;
};

// Validates x and w against the spec (rank, channels, groups, stride, dilation,
// padding, kernel larger than the padded input); throws tg::Error naming `op`.
ConvGeometry conv_geometry(const Shape& x, const Shape& w, const ConvSpec& spec, const char* op);
// The conv whose backward-input pass is a transposed convolution of x (N, C,
// in...) by w (C, K/groups, kernel...): its input, the transpose's output, is
// (N, groups * w[1], out...) with out = (in - 1) * stride - lo - hi +
// dilation * (k - 1) + output_padding + 1, and its output is x.
ConvGeometry conv_transpose_geometry(const Shape& x, const Shape& w, const ConvSpec& spec,
                                     const std::vector<std::int64_t>& output_padding, const char* op);
Shape conv_input_shape(const ConvGeometry& g);
Shape conv_weight_shape(const ConvGeometry& g);
Shape conv_output_shape(const ConvGeometry& g);

// The algorithm a pass runs with: `requested` unless it is automatic (then the
// cost rule). Throws when `requested` cannot run this geometry.
ConvAlgorithm choose_conv_algorithm(const ConvGeometry& g, ConvPass pass, ConvAlgorithm requested, const char* op);

// The cost rule's estimate for every algorithm on one pass, indexed by
// index_of(algorithm); INFINITY where it cannot (or never automatically does) run.
constexpr std::size_t kConvAlgorithms = 6;
using AlgorithmSeconds = std::array<double, kConvAlgorithms>;
constexpr std::size_t index_of(ConvAlgorithm a) { return static_cast<std::size_t>(a); }
AlgorithmSeconds conv_estimated_seconds(const ConvGeometry& g, ConvPass pass);

// Note [Tuning convolution algorithms]: the cost rule's rates were measured on
// one machine; on another, or on a shape between the ones it was fitted to, the
// algorithm it prices second can run faster (LeNet's conv1 on an EPYC: the rule
// takes implicit GEMM, im2col runs the forward and weight passes in two thirds
// of its time). tune_conv_algorithm measures instead: every algorithm the rule
// prices within kTuneSlack of its cheapest runs the pass on buffers of the
// geometry's shapes, once to warm up and then kTuneRuns times; the fastest
// single run wins. A kernel's time does not depend on the values, so the
// buffers hold a fixed pattern. Results are kept for the process, per
// (geometry, pass, element type, thread count): tuning a layer twice times
// nothing. The compiler calls it for CompileOptions::tune_algorithms.
constexpr double kTuneSlack = 4.0;
constexpr int kTuneRuns = 3;
template <class T>
ConvAlgorithm tune_conv_algorithm(const ConvGeometry& g, ConvPass pass);

// y = conv(x, w); with accumulate, y += conv(x, w). An epilogue (bias,
// activation; not with accumulate) runs on the output: implicit GEMM and
// Winograd apply it to each task's block of outputs as soon as they are
// stored, the other algorithms in one parallel pass after the kernel.
template <class T>
void conv_forward(const ConvGeometry& g, ConvAlgorithm a, const T* x, const T* w, T* y, bool accumulate = false,
                  const OutputEpilogue<T>* epilogue = nullptr);
// gx += the adjoint of conv_forward with respect to x, applied to gy (gx = ... without accumulate).
template <class T>
void conv_backward_input(const ConvGeometry& g, ConvAlgorithm a, const T* gy, const T* w, T* gx, bool accumulate = true);
// gw += the adjoint of conv_forward with respect to w, applied to gy.
template <class T>
void conv_backward_weight(const ConvGeometry& g, ConvAlgorithm a, const T* x, const T* gy, T* gw);
// conv_backward_weight after applying the prologue to gy, in place (Note
// [Adjoint prologue]): implicit GEMM applies it as it packs gy, Winograd to
// each block of samples before it transforms them, the other algorithms in a
// pass of their own. gy then holds the activation's input
// adjoint, for conv_backward_input.
template <class T>
void conv_backward_weight_folded(const ConvGeometry& g, ConvAlgorithm a, const T* x, T* gy, T* gw,
                                 const AdjointPrologue<T>& prologue);
// gw += the weight gradient and gbias += the bias gradient (each output
// channel's sum of gy), in one pass over gy where the algorithm packs it
// (implicit GEMM, Winograd: the rows are summed as they are read, in
// conv_bias_backward's order, so the sums are the same bits), else in two.
template <class T>
void conv_backward_weight_and_bias(const ConvGeometry& g, ConvAlgorithm a, const T* x, const T* gy, T* gw, T* gbias);
// The prologue's pullback alone, over n adjoints in place (no bias), in parallel chunks.
template <class T>
void apply_adjoint_prologue(T* gy, std::int64_t n, const AdjointPrologue<T>& prologue);
// gbias[k] += the sum of gy[n, k, plane] over samples and the plane: each
// (sample, channel) row summed, then the rows added in sample order, so the
// folded bias gradient (Note [Adjoint prologue]) equals it bit for bit.
template <class T>
void conv_bias_backward(const T* gy, T* gbias, std::int64_t samples, std::int64_t channels, std::int64_t plane);

// Threads the convolution kernels use (OpenMP over the batch, or OpenBLAS
// inside the GEMM when the batch is smaller than the thread count).
int conv_threads();

}  // namespace tg::kernels
