// Convolution: geometry validation, the algorithm cost rule, and the dispatch
// that every pass goes through (flip handled here, once).
#include "tapegrad/kernels/conv.hpp"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <array>
#include <limits>
#include <utility>
#include <cmath>

#include "conv_impl.hpp"
#include "fft_size.hpp"
#include "spatial_dims.hpp"
#include "tapegrad/kernels/error.hpp"
#include "tapegrad/kernels/parallel.hpp"

namespace tg::kernels {

const char* to_string(ConvAlgorithm a) {
  switch (a) {
    case ConvAlgorithm::automatic: return "auto";
    case ConvAlgorithm::direct: return "direct";
    case ConvAlgorithm::im2col: return "im2col";
    case ConvAlgorithm::implicit_gemm: return "implicit_gemm";
    case ConvAlgorithm::fft: return "fft";
    case ConvAlgorithm::winograd: return "winograd";
  }
  return "?";
}

const char* to_string(ConvPass p) {
  switch (p) {
    case ConvPass::forward: return "forward";
    case ConvPass::backward_input: return "backward_input";
    case ConvPass::backward_weight: return "backward_weight";
  }
  return "?";
}

bool ConvGeometry::pointwise() const {
  for (int d = 0; d < kMaxSpatial; ++d)
    if (ker[d] != 1 || stride[d] != 1 || lo[d] != 0 || hi[d] != 0) return false;
  return true;
}

bool ConvGeometry::unit_stride_and_dilation() const {
  for (int d = 0; d < kMaxSpatial; ++d)
    if (stride[d] != 1 || dil[d] != 1) return false;
  return true;
}

int conv_threads() { return tg::num_threads(); }


namespace {
// No dilated kernel may reach further than this (sums with it fit int64 with room).
constexpr std::int64_t kMaxExtent = std::int64_t(1) << 62;
}  // namespace

ConvGeometry conv_geometry(const Shape& x, const Shape& w, const ConvSpec& spec, const char* op) {
  const int rank = static_cast<int>(x.rank());
  if (rank < 3 || rank > 5)
    fail(op, fmt::format("input has shape {} (rank {}) expected (N, C, spatial...) with 1-3 spatial dims; "
                         "hint: reshape a single image to (1, 1, H, W)",
                         to_string(x), rank));
  if (static_cast<int>(w.rank()) != rank)
    fail(op, fmt::format("weight has shape {} (rank {}) expected rank {} like the input {}: (K, C/groups, kernel...)",
                         to_string(w), w.rank(), rank, to_string(x)));
  ConvGeometry g;
  g.spatial = rank - 2;
  g.N = x[0];
  g.C = x[1];
  g.K = w[0];
  g.groups = spec.groups;
  g.flip = spec.flip;
  if (g.groups < 1) fail(op, fmt::format("groups is {} expected >= 1", g.groups));
  if (g.C < 1 || g.K < 1)
    fail(op, fmt::format("channels are {} (input {}) and {} (weight {}) expected >= 1", g.C, to_string(x), g.K, to_string(w)));
  if (g.C % g.groups != 0 || g.K % g.groups != 0)
    fail(op, fmt::format("input channels ({}) and filters ({}) must both be divisible by groups ({}); hint: depthwise "
                         "convolution has groups = C",
                         g.C, g.K, g.groups));
  g.Cg = g.C / g.groups;
  g.Kg = g.K / g.groups;
  if (w[1] != g.Cg)
    fail(op, fmt::format("weight {} has {} input channels per filter expected C/groups = {}/{} = {}", to_string(w), w[1],
                         g.C, g.groups, g.Cg));
  g.stride = spatial_dims(spec.stride, g.spatial, 1, 1, "stride", op);
  g.dil = spatial_dims(spec.dilation, g.spatial, 1, 1, "dilation", op);
  g.lo = spatial_dims(spec.pad_lo, g.spatial, 0, 0, "padding (low side)", op);
  g.hi = spatial_dims(spec.pad_hi, g.spatial, 0, 0, "padding (high side)", op);
  const int first = ConvGeometry::kMaxSpatial - g.spatial;
  ConvGeometry::Dims padded_dims{1, 1, 1};
  for (int d = first; d < ConvGeometry::kMaxSpatial; ++d) {
    g.in[d] = x[2 + d - first];
    g.ker[d] = w[2 + d - first];
    if (g.ker[d] < 1) fail(op, fmt::format("weight {} has an empty kernel expected every kernel dim >= 1", to_string(w)));
    std::int64_t extent = 0;
    if (__builtin_mul_overflow(g.dil[d], g.ker[d] - 1, &extent) || extent >= kMaxExtent)
      fail(op, fmt::format("dilated kernel along spatial dim {} (dilation {} x kernel {}) is larger than 2^62 expected a "
                           "smaller dilation; hint: a tape file with such a conv is damaged", d - first, g.dil[d], g.ker[d]));
    extent += 1;
    std::int64_t padded = 0;
    if (__builtin_add_overflow(g.in[d], g.lo[d], &padded) || __builtin_add_overflow(padded, g.hi[d], &padded))
      padded = std::numeric_limits<std::int64_t>::max();  // refused below as too many elements
    padded_dims[d] = padded;
    if (extent > padded)
      fail(op, fmt::format("kernel extent ({}) along spatial dim {} is larger than the padded input ({} = {} + {} + {}) "
                           "expected extent <= padded input; hint: pad more or use a smaller kernel",
                           extent, d - first, padded, g.in[d], g.lo[d], g.hi[d]));
    g.out[d] = (padded - extent) / g.stride[d] + 1;
  }
  // The kernels hold the padded input and the output in memory: both must be countable (Note [Checked sizes]).
  using Dims5 = std::array<std::int64_t, 5>;
  if (bounded_size(Dims5{g.N, g.C, padded_dims[0], padded_dims[1], padded_dims[2]}) < 0 ||
      bounded_size(Dims5{g.N, g.K, g.out[0], g.out[1], g.out[2]}) < 0)
    fail(op, fmt::format("input {} with padding {}+{} gives a padded input or an output of more than 2^59 elements "
                         "expected fewer; hint: check the padding", to_string(x), fmt::join(g.lo, ","), fmt::join(g.hi, ",")));
  return g;
}

ConvGeometry conv_transpose_geometry(const Shape& x, const Shape& w, const ConvSpec& spec,
                                     const std::vector<std::int64_t>& output_padding, const char* op) {
  if (x.rank() < 3 || x.rank() > 5 || w.rank() != x.rank())
    fail(op, fmt::format("input {} and weight {} expected (N, C, spatial...) and (C, K/groups, kernel...) of equal rank "
                         "with 1-3 spatial dims",
                         to_string(x), to_string(w)));
  if (spec.groups < 1) fail(op, fmt::format("groups is {} expected >= 1", spec.groups));
  if (x[1] != w[0])
    fail(op, fmt::format("input {} has {} channels but weight {} has {} expected equal (weight layout (C, K/groups, kernel...))",
                         to_string(x), x[1], to_string(w), w[0]));
  const int spatial = static_cast<int>(x.rank()) - 2, first = ConvGeometry::kMaxSpatial - spatial;
  const auto stride = spatial_dims(spec.stride, spatial, 1, 1, "stride", op);
  const auto dil = spatial_dims(spec.dilation, spatial, 1, 1, "dilation", op);
  const auto lo = spatial_dims(spec.pad_lo, spatial, 0, 0, "padding (low side)", op);
  const auto hi = spatial_dims(spec.pad_hi, spatial, 0, 0, "padding (high side)", op);
  const auto extra = spatial_dims(output_padding, spatial, 0, 0, "output_padding", op);
  Shape out{x[0], w[1] * spec.groups};
  for (int d = first; d < ConvGeometry::kMaxSpatial; ++d) {
    const int i = d - first;  // the user's spatial dim
    if (extra[d] >= std::max(stride[d], dil[d]))
      fail(op, fmt::format("output_padding ({}) along spatial dim {} expected in [0, max(stride, dilation) = {})", extra[d],
                           i, std::max(stride[d], dil[d])));
    // (in - 1) * stride - lo - hi + dilation * (k - 1) + output_padding + 1, without overflow (Note [Checked sizes])
    std::int64_t span = 0, reach = 0, size = 0;
    if (__builtin_mul_overflow(x[2 + i] - 1, stride[d], &span) || __builtin_mul_overflow(dil[d], w[2 + i] - 1, &reach) ||
        __builtin_add_overflow(span, reach, &size) || __builtin_sub_overflow(size, lo[d], &size) ||
        __builtin_sub_overflow(size, hi[d], &size) || __builtin_add_overflow(size, extra[d] + 1, &size) ||
        size > kMaxElements)
      fail(op, fmt::format("output size along spatial dim {} (input {}, stride {}, dilation {}, kernel {}) is more than "
                           "2^59 expected an output that fits in memory; hint: check the stride and dilation",
                           i, x[2 + i], stride[d], dil[d], w[2 + i]));
    if (size < 1)
      fail(op, fmt::format("output size along spatial dim {} is {} (input {}, stride {}, padding {}+{}) expected >= 1; "
                           "hint: reduce the padding",
                           i, size, x[2 + i], stride[d], lo[d], hi[d]));
    out.push_back(size);
  }
  ConvGeometry g = conv_geometry(out, w, spec, op);
  if (conv_output_shape(g) != x)
    fail(op, fmt::format("input {} is not the conv output {} of the computed output shape {}", to_string(x),
                         to_string(conv_output_shape(g)), to_string(out)));
  return g;
}

namespace {
Shape with_spatial(std::int64_t a, std::int64_t b, const ConvGeometry& g, const ConvGeometry::Dims& dims) {
  Shape s{a, b};
  for (int d = ConvGeometry::kMaxSpatial - g.spatial; d < ConvGeometry::kMaxSpatial; ++d) s.push_back(dims[d]);
  return s;
}
}  // namespace

Shape conv_input_shape(const ConvGeometry& g) { return with_spatial(g.N, g.C, g, g.in); }
Shape conv_weight_shape(const ConvGeometry& g) { return with_spatial(g.K, g.Cg, g, g.ker); }
Shape conv_output_shape(const ConvGeometry& g) { return with_spatial(g.N, g.K, g, g.out); }

// ---- the cost rule (Note [Choosing a convolution algorithm]) ----------------
namespace {

constexpr double kGemmRate = 40e9;    // multiply-adds per second per thread, large GEMM
constexpr double kImplicitGemmRate = 36e9;  // multiply-adds per second per thread, implicit GEMM tiles
constexpr double kPointwiseWeightRate = 44e9;  // the same, a 1x1 conv's weight gradient (no copy)
constexpr double kDirectRate = 4e9;   // multiply-adds per second per thread, direct loops
constexpr double kShiftedForwardRate = 44e9;  // multiply-adds per second per thread, shifted copies (AVX-512 or AVX2)
constexpr double kShiftedWeightRate = 46e9;
constexpr double kCopyRate = 1.5e9;   // im2col/col2im elements per second per thread
constexpr double kFftRate = 7e9;      // FFT flops per second per thread (FFTW, 5-smooth sizes)
constexpr double kWinogradRate = 16e9;          // transformed multiply-adds per second per thread
constexpr double kWinogradTransformRate = 8e9;  // transformed elements per second per thread

double gemm_seconds(const ConvGeometry& g) {
  // Every pass multiplies a Kg-sided matrix by an R-sided one (R = Cg * ker_vol);
  // the smaller of the two decides how close to its peak the GEMM runs.
  const double rows = double(g.Cg) * double(g.ker_vol());
  const double smallest = std::min<double>(double(g.Kg), rows);
  const double efficiency = std::min(1.0, smallest / 32.0);
  const double copied = g.pointwise() ? 0.0 : double(g.N) * double(g.groups) * rows * double(g.out_vol());
  return g.macs() / (kGemmRate * efficiency) + copied / kCopyRate;
}

// Implicit GEMM: no patch copy (its rate includes the one copy of the padded
// input, which a limit bounds), but its tiles are 16 filters wide (8 in double), so
// a pass producing few channels wastes the rest of the tile: forward and
// weight gradient produce Kg, the input gradient Cg (the adjoint conv's
// filters, or for strides the phases' channels; past the padded copy's limit,
// or where a phase has no taps, a strided input gradient runs im2col). Without
// AVX2+FMA the micro-kernel is plain C++ and never chosen automatically. A 1x1
// conv's forward and input gradient are GEMMs with nothing to copy (im2col, or
// the pointwise runs); its weight gradient runs here where both sides have 32
// channels or more: R4's 8.4 ms against OpenBLAS's 9.6-10.0 (1 thread), 4.1
// against 4.8-5.0 (2); with 16 channels a side, 2 threads took 4x OpenBLAS's time.
double implicit_gemm_seconds(const ConvGeometry& g, ConvPass pass) {
  if (!conv_impl::implicit_gemm_vectorised()) return INFINITY;
  if (g.pointwise()) {
    if (pass != ConvPass::backward_weight || std::min(g.Kg, g.Cg) < 32) return INFINITY;
    const double fill = double(g.Kg) / (16.0 * std::ceil(double(g.Kg) / 16.0));
    return g.macs() / (kPointwiseWeightRate * fill);
  }
  if (pass == ConvPass::backward_input && !conv_impl::unit_stride(g) &&
      !(conv_impl::strided_adjoint_applies(g) && conv_impl::strided_adjoint_dense(g)))
    return INFINITY;
  if (!conv_impl::implicit_gemm_applies(g, pass)) return INFINITY;
  const double produced = double(pass == ConvPass::backward_input ? g.Cg : g.Kg);
  const double fill = produced / (16.0 * std::ceil(produced / 16.0));
  return g.macs() / (kImplicitGemmRate * fill);
}

// Winograd (Note [Winograd convolution]): one GEMM per transform point (36
// for a 3x3 kernel, 64 for a 5x5) over tiles, channels in vectors of 8 and
// filters in tiles of 16, plus the transforms of every tile's input channels
// and filters. The rates are measured on LeNet's conv2 and the 3x3 layers of
// bench_conv; a single-channel layer (LeNet's conv1) stays with implicit GEMM.
double winograd_seconds(const ConvGeometry& g, ConvPass pass) {
  if (!conv_impl::implicit_gemm_vectorised() || !conv_impl::winograd_applies(g) || g.ker_vol() == 1) return INFINITY;
  auto tiles_along = [&](int d) {
    const std::int64_t m = conv_impl::winograd_alpha(g.ker[d]) - g.ker[d] + 1;
    return double((g.out[d] + m - 1) / m);
  };
  auto round_up = [](std::int64_t v, std::int64_t to) { return double((v + to - 1) / to * to); };
  const double points = double(conv_impl::winograd_alpha(g.ker[1]) * conv_impl::winograd_alpha(g.ker[2]));
  const double tiles = double(g.N * g.groups) * tiles_along(1) * tiles_along(2);
  const std::int64_t produced = pass == ConvPass::backward_input ? g.Cg : g.Kg;
  const std::int64_t consumed = pass == ConvPass::backward_input ? g.Kg : g.Cg;
  const double macs = tiles * points * double(consumed) * round_up(produced, 16);
  const double transformed = tiles * points * (round_up(consumed, 8) + round_up(produced, 16));
  return macs / kWinogradRate + transformed / kWinogradTransformRate;
}

// The direct loops; a 1x1 conv's forward or input gradient by the pointwise runs
// (Note [Pointwise runs]); or for the forward and weight gradient where they
// run (Note [Shifted copies]) the shifted copies: whole vectors of 16 positions,
// so a plane's last partial vector is the waste, and no more threads busy
// than there are samples (forward) or blocks of filters (weight gradient). An
// input gradient the shifted copies run is priced as the adjoint conv's forward.
double direct_seconds(const ConvGeometry& g, ConvPass pass) {
  const double plane = double(g.out_vol()), fill = plane / (16.0 * std::ceil(plane / 16.0));
  if (conv_impl::pointwise_runs_pass(g, pass)) return g.macs() / (kShiftedForwardRate * fill);  // Note [Pointwise runs]
  if (!conv_impl::shifted_runs(g, pass)) return g.macs() / kDirectRate;
  if (pass == ConvPass::backward_input) return direct_seconds(conv_impl::adjoint_geometry(g), ConvPass::forward);
  const double units = double(pass == ConvPass::forward ? g.N * g.groups : conv_impl::shifted_weight_tasks(g));
  const double threads = double(tg::num_threads()), busy = std::min(threads, units) / threads;
  return g.macs() / ((pass == ConvPass::forward ? kShiftedForwardRate : kShiftedWeightRate) * fill * busy);
}

double fft_seconds(const ConvGeometry& g) {
  double points = 1;
  for (int d = 0; d < ConvGeometry::kMaxSpatial; ++d) points *= double(fft_size(g.in[d] + g.lo[d] + g.hi[d]));
  const double transforms = double(g.N * g.C + g.K * g.Cg + g.N * g.K);
  return (transforms * 5 * points * std::log2(std::max(2.0, points)) + double(g.N) * double(g.K) * double(g.Cg) * points * 8) /
         kFftRate;
}

}  // namespace

AlgorithmSeconds conv_estimated_seconds(const ConvGeometry& g, ConvPass pass) {
  AlgorithmSeconds s;
  s.fill(INFINITY);  // automatic, and any algorithm that cannot run this pass
  s[index_of(ConvAlgorithm::direct)] = direct_seconds(g, pass);
  s[index_of(ConvAlgorithm::im2col)] = gemm_seconds(g);
  s[index_of(ConvAlgorithm::implicit_gemm)] = implicit_gemm_seconds(g, pass);
  if (g.unit_stride_and_dilation()) s[index_of(ConvAlgorithm::fft)] = fft_seconds(g);
  s[index_of(ConvAlgorithm::winograd)] = winograd_seconds(g, pass);
  return s;
}

ConvAlgorithm choose_conv_algorithm(const ConvGeometry& g, ConvPass pass, ConvAlgorithm requested, const char* op) {
  if (static_cast<unsigned>(requested) > static_cast<unsigned>(ConvAlgorithm::winograd))
    fail(op, fmt::format("algorithm ({}) is not a ConvAlgorithm expected automatic, direct, im2col, implicit_gemm, fft "
                         "or winograd",
                         static_cast<int>(requested)));
  if (requested == ConvAlgorithm::fft && !g.unit_stride_and_dilation())
    fail(op, fmt::format("algorithm fft runs only stride 1 and dilation 1 (this call has stride [{}] dilation [{}]); "
                         "hint: use im2col or direct, or leave the algorithm automatic",
                         fmt::join(g.stride, ","), fmt::join(g.dil, ",")));
  if (requested == ConvAlgorithm::winograd) conv_impl::require_winograd(g, op);
  if (requested == ConvAlgorithm::implicit_gemm) conv_impl::require_implicit_gemm(g, pass, op);
  if (requested != ConvAlgorithm::automatic) return requested;
  const AlgorithmSeconds s = conv_estimated_seconds(g, pass);
  // Ties go to the first in this order.
  ConvAlgorithm best = ConvAlgorithm::fft;
  for (ConvAlgorithm a : {ConvAlgorithm::winograd, ConvAlgorithm::direct, ConvAlgorithm::implicit_gemm, ConvAlgorithm::im2col})
    if (s[index_of(a)] < s[index_of(best)]) best = a;
  return best;
}

// ---- dispatch -----------------------------------------------------------------
namespace {

// The kernel reversed along every spatial dim (each (k, c) block of ker_vol taps
// reversed), on the scratch stack: a replayed convolve allocates nothing.
template <class T>
T* flipped(ScratchScope& scratch, const ConvGeometry& g, const T* w) {
  const std::int64_t taps = g.ker_vol(), blocks = g.K * g.Cg;
  T* out = scratch.take<T>(taps * blocks).data();
  for (std::int64_t b = 0; b < blocks; ++b)
    for (std::int64_t t = 0; t < taps; ++t) out[b * taps + t] = w[b * taps + (taps - 1 - t)];
  return out;
}

ConvGeometry unflipped(ConvGeometry g) {
  g.flip = false;
  return g;
}

void require_resolved(ConvAlgorithm a) {
  if (a == ConvAlgorithm::automatic) fail("conv", "algorithm automatic reached a kernel expected a resolved algorithm");
}

// Note [Sample chunks]: implicit GEMM copies its input zero-padded for the
// whole batch (its weight pass packs gy as well) on the scratch stack, whose
// block then keeps that size for good: 20 MiB for the ResNet example's first
// stride-2 conv, on top of its 141 MiB arena. A batch whose copies pass
// kChunkBytes runs as convolutions of consecutive samples, each copying
// only its own, which also stay in cache between the copy and the GEMMs. The
// weight passes add each chunk into gw (and the bias gradient), so the sum's
// order depends on the batch, never on the thread count. Rejected: chunks of
// one sample, whose forward left a thread idle at every chunk's last run.
constexpr double kChunkBytes = double(4 << 20);

// Note [Pointwise weight pass, packing the smaller side]: implicit GEMM's weight
// pass packs gy (K planes) and reads x in place. For a 1x1 conv with fewer
// input channels than filters (R5: 64 -> 256), the same pass on the swapped
// roles (x as gy, gy as x: channels and filters exchanged) packs x instead,
// a quarter of the bytes there, and gives gw transposed: R5's weight gradient
// 10.3-10.5 -> 8.8-9.7 ms at 1 thread, 4.8 -> 4.2-4.3 ms at 2. A prologue on gy
// then runs as its own pass first (conv_backward_weight_folded).
bool swaps_pointwise_roles(const ConvGeometry& g) { return g.pointwise() && g.Cg < g.Kg; }

ConvGeometry swapped_roles(ConvGeometry g) {
  std::swap(g.C, g.K);
  std::swap(g.Cg, g.Kg);
  return g;
}

// run(part, n0) for consecutive samples [n0, n0 + part.N) of g, as few chunks as keep each one's copies within kChunkBytes.
template <class T, class F>
void in_sample_chunks(const ConvGeometry& g, ConvPass pass, F&& run) {
  double copied = conv_impl::implicit_gemm_copied(g, pass);
  if (pass == ConvPass::backward_weight) copied += double(g.N) * double(g.K) * double(g.out_vol());  // gy, packed
  const double per_sample = copied * double(sizeof(T)) / double(std::max<std::int64_t>(g.N, 1));
  const std::int64_t fit = per_sample > 0 ? std::int64_t(kChunkBytes / per_sample) : g.N;  // samples a chunk
  const std::int64_t chunks = conv_impl::ceil_div(g.N, std::max<std::int64_t>(fit, 1));
  if (chunks <= 1) return run(g, std::int64_t(0));
  for (std::int64_t c = 0; c < chunks; ++c) {
    ConvGeometry part = g;
    const std::int64_t n0 = g.N * c / chunks;
    part.N = g.N * (c + 1) / chunks - n0;
    run(part, n0);
  }
}

// implicit GEMM's weight pass on the swapped roles (Note [Pointwise weight
// pass, packing the smaller side]): gw transposed, then added into gw.
template <class T>
void pointwise_weight_swapped(const ConvGeometry& g, const T* x, const T* gy, T* gw) {
  ScratchScope scratch;
  T* gwt = scratch.take_filled<T>(g.K * g.Cg, T(0)).data();  // per group (Cg x Kg): gw transposed
  in_sample_chunks<T>(swapped_roles(g), ConvPass::backward_weight, [&](const ConvGeometry& part, std::int64_t n0) {
    conv_impl::implicit_gemm_backward_weight(part, gy + n0 * g.K * g.out_vol(), x + n0 * g.C * g.in_vol(), gwt);
  });
  for (std::int64_t grp = 0; grp < g.groups; ++grp)  // gw_grp (Kg x Cg) += gwt_grp (Cg x Kg)^T
    conv_impl::transpose_blocks(gwt + grp * g.Cg * g.Kg, g.Kg, g.Cg, g.Kg, gw + grp * g.Kg * g.Cg, g.Cg, /*add=*/true);
}

}  // namespace

template <class T>
void conv_forward(const ConvGeometry& g, ConvAlgorithm a, const T* x, const T* w, T* y, bool accumulate,
                  const OutputEpilogue<T>* epilogue) {
  require_resolved(a);
  if (epilogue && accumulate) fail("conv", "an output epilogue with accumulate expected a plain forward");
  if (g.flip) {
    ScratchScope scratch;
    return conv_forward(unflipped(g), a, x, flipped(scratch, g, w), y, accumulate, epilogue);
  }
  if (a == ConvAlgorithm::implicit_gemm)
    return in_sample_chunks<T>(g, ConvPass::forward, [&](const ConvGeometry& part, std::int64_t n0) {
      conv_impl::implicit_gemm_forward(part, x + n0 * g.C * g.in_vol(), w, y + n0 * g.K * g.out_vol(), accumulate, epilogue);
    });
  if (a == ConvAlgorithm::winograd) return conv_impl::winograd_forward(g, x, w, y, accumulate, epilogue);
  if (a == ConvAlgorithm::direct && conv_impl::shifted_runs(g, ConvPass::forward))
    return conv_impl::shifted_forward(g, x, w, y, accumulate, epilogue);
  if (a == ConvAlgorithm::direct && conv_impl::pointwise_runs(g))
    return conv_impl::pointwise_forward(g, x, w, y, accumulate, epilogue);
  switch (a) {
    case ConvAlgorithm::direct: conv_impl::direct_forward(g, x, w, y, accumulate); break;
    case ConvAlgorithm::im2col: conv_impl::im2col_forward(g, x, w, y, accumulate); break;
    default: conv_impl::fft_forward(g, x, w, y, accumulate); break;
  }
  if (epilogue) {  // one pass over every (sample, channel) plane
    const std::int64_t ov = g.out_vol();
    parallel_for(g.N * g.K, threads_if(g.N * g.K * ov > 32768),
                 [&](std::int64_t plane) { epilogue->apply(y + plane * ov, ov, plane % g.K); });
  }
}

template <class T>
void conv_backward_input(const ConvGeometry& g, ConvAlgorithm a, const T* gy, const T* w, T* gx, bool accumulate) {
  require_resolved(a);
  if (g.flip) {
    ScratchScope scratch;
    return conv_backward_input(unflipped(g), a, gy, flipped(scratch, g, w), gx, accumulate);
  }
  // These write gx unless told to accumulate; FFT adds into zeros.
  if (a == ConvAlgorithm::direct && conv_impl::pointwise_runs(g)) {  // the adjoint 1x1 conv's forward
    ScratchScope scratch;
    return conv_impl::pointwise_forward(conv_impl::adjoint_geometry(g), gy, conv_impl::adjoint_weights(g, w, scratch), gx,
                                        accumulate, static_cast<const OutputEpilogue<T>*>(nullptr));
  }
  if (a == ConvAlgorithm::direct && conv_impl::shifted_runs(g, ConvPass::backward_input)) {  // the adjoint conv's forward
    ScratchScope scratch;
    return conv_impl::shifted_forward(conv_impl::adjoint_geometry(g), gy, conv_impl::adjoint_weights(g, w, scratch), gx,
                                      accumulate, static_cast<const OutputEpilogue<T>*>(nullptr));
  }
  if (a == ConvAlgorithm::direct) return conv_impl::direct_backward_input(g, gy, w, gx, accumulate);
  if (a == ConvAlgorithm::implicit_gemm)
    return in_sample_chunks<T>(g, ConvPass::backward_input, [&](const ConvGeometry& part, std::int64_t n0) {
      conv_impl::implicit_gemm_backward_input(part, gy + n0 * g.K * g.out_vol(), w, gx + n0 * g.C * g.in_vol(), accumulate);
    });
  if (a == ConvAlgorithm::winograd) return conv_impl::winograd_backward_input(g, gy, w, gx, accumulate);
  if (a == ConvAlgorithm::im2col) return conv_impl::im2col_backward_input(g, gy, w, gx, accumulate);
  if (!accumulate) std::fill(gx, gx + g.N * g.C * g.in_vol(), T(0));
  conv_impl::fft_backward_input(g, gy, w, gx);
}

template <class T>
void conv_backward_weight(const ConvGeometry& g, ConvAlgorithm a, const T* x, const T* gy, T* gw) {
  require_resolved(a);
  if (g.flip) {
    // The gradient of the flipped kernel, flipped back onto the kernel the caller holds.
    ScratchScope scratch;
    const std::int64_t n = g.K * g.Cg * g.ker_vol();
    T* gwf = scratch.take_filled<T>(n, T(0)).data();
    conv_backward_weight(unflipped(g), a, x, gy, gwf);
    const T* back = flipped(scratch, g, gwf);
    for (std::int64_t i = 0; i < n; ++i) gw[i] += back[i];
    return;
  }
  switch (a) {
    case ConvAlgorithm::direct:
      if (conv_impl::shifted_runs(g, ConvPass::backward_weight)) return conv_impl::shifted_backward_weight<T>(g, x, gy, gw, nullptr, nullptr);
      return conv_impl::direct_backward_weight(g, x, gy, gw);
    case ConvAlgorithm::im2col: return conv_impl::im2col_backward_weight(g, x, gy, gw);
    case ConvAlgorithm::implicit_gemm:
      if (swaps_pointwise_roles(g)) return pointwise_weight_swapped(g, x, gy, gw);
      return in_sample_chunks<T>(g, ConvPass::backward_weight, [&](const ConvGeometry& part, std::int64_t n0) {
        conv_impl::implicit_gemm_backward_weight(part, x + n0 * g.C * g.in_vol(), gy + n0 * g.K * g.out_vol(), gw);
      });
    case ConvAlgorithm::winograd: return conv_impl::winograd_backward_weight(g, x, gy, gw);
    default: return conv_impl::fft_backward_weight(g, x, gy, gw);
  }
}

template <class T>
void apply_adjoint_prologue(T* gy, std::int64_t n, const AdjointPrologue<T>& prologue) {
  constexpr std::int64_t kChunk = 16384;
  const std::int64_t chunks = (n + kChunk - 1) / kChunk;
  parallel_for(chunks, threads_if(chunks > 1), [&](std::int64_t c) {
    prologue.apply(gy + c * kChunk, c * kChunk, std::min(kChunk, n - c * kChunk));
  });
}

template <class T>
void conv_bias_backward(const T* gy, T* gbias, std::int64_t samples, std::int64_t channels, std::int64_t plane) {
  parallel_for(channels, threads_if(samples * channels * plane > 100000), [&](std::int64_t k) {
    T total = T(0);
    for (std::int64_t n = 0; n < samples; ++n) total += sum_run(gy + (n * channels + k) * plane, plane);
    gbias[k] += total;
  });
}

template <class T>
void conv_backward_weight_folded(const ConvGeometry& g, ConvAlgorithm a, const T* x, T* gy, T* gw,
                                 const AdjointPrologue<T>& prologue) {
  require_resolved(a);
  if (a == ConvAlgorithm::implicit_gemm && !g.flip && !swaps_pointwise_roles(g))
    return in_sample_chunks<T>(g, ConvPass::backward_weight, [&](const ConvGeometry& part, std::int64_t n0) {
      const std::int64_t at = n0 * g.K * g.out_vol();
      AdjointPrologue<T> shifted = prologue;  // its output indexed from the chunk's first sample
      if (shifted.output) shifted.output += at;
      conv_impl::implicit_gemm_backward_weight(part, x + n0 * g.C * g.in_vol(), gy + at, gw, &shifted, gy + at);
    });
  if (a == ConvAlgorithm::winograd && !g.flip) return conv_impl::winograd_backward_weight(g, x, gy, gw, &prologue, gy);
  if (a == ConvAlgorithm::direct && !g.flip && conv_impl::shifted_runs(g, ConvPass::backward_weight))
    return conv_impl::shifted_backward_weight(g, x, gy, gw, &prologue, gy);
  if (prologue.pullback) apply_adjoint_prologue(gy, g.N * g.K * g.out_vol(), prologue);
  if (prologue.bias_grad) conv_bias_backward(gy, prologue.bias_grad, g.N, g.K, g.out_vol());
  conv_backward_weight(g, a, x, gy, gw);
}

template <class T>
void conv_backward_weight_and_bias(const ConvGeometry& g, ConvAlgorithm a, const T* x, const T* gy, T* gw, T* gbias) {
  // A prologue without a pullback only reads gy: it is never written through.
  conv_backward_weight_folded(g, a, x, const_cast<T*>(gy), gw, AdjointPrologue<T>{nullptr, nullptr, nullptr, gbias});
}

#define TG_INSTANTIATE(T)                                                                                  \
  template void conv_backward_weight_and_bias<T>(const ConvGeometry&, ConvAlgorithm, const T*, const T*, T*, T*); \
  template void apply_adjoint_prologue<T>(T*, std::int64_t, const AdjointPrologue<T>&);                   \
  template void conv_bias_backward<T>(const T*, T*, std::int64_t, std::int64_t, std::int64_t);           \
  template void conv_backward_weight_folded<T>(const ConvGeometry&, ConvAlgorithm, const T*, T*, T*,      \
                                               const AdjointPrologue<T>&);                                 \
  template void conv_forward<T>(const ConvGeometry&, ConvAlgorithm, const T*, const T*, T*, bool, const OutputEpilogue<T>*);         \
  template void conv_backward_input<T>(const ConvGeometry&, ConvAlgorithm, const T*, const T*, T*, bool);       \
  template void conv_backward_weight<T>(const ConvGeometry&, ConvAlgorithm, const T*, const T*, T*);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg::kernels
