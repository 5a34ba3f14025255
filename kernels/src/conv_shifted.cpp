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
#define TG_SHIFTED_REGISTERS 32
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

// At AVX2 the weight pass runs only where every block is one filter whose
// sums fit in the 16 registers (depthwise layers, 2x2 and 3x3); with several
// filters a block it is slower than implicit GEMM there (Note [Shifted copies]).
bool shifted_runs(const ConvGeometry& g, ConvPass pass) {
  if (kernel_isa() < Isa::avx2 || !shifted_applies(g, pass)) return false;
  return pass != ConvPass::backward_weight || kernel_isa() >= Isa::avx512 || avx2::one_filter_sums_fit(g);
}

bool pointwise_runs(const ConvGeometry& g) { return kernel_isa() >= Isa::avx512 && g.pointwise(); }

bool pointwise_runs_pass(const ConvGeometry& g, ConvPass pass) {
  return pass != ConvPass::backward_weight && pointwise_runs(g);
}

std::int64_t shifted_weight_tasks(const ConvGeometry& g) {
  return kernel_isa() >= Isa::avx512 ? avx512::weight_tasks(g) : avx2::weight_tasks(g);
}

template <class T>
void shifted_backward_weight(const ConvGeometry& g, const T* x, const T* gy, T* gw, const AdjointPrologue<T>* prologue,
                             T* gy_in_place) {
  if (kernel_isa() >= Isa::avx512) return avx512::backward_weight(g, x, gy, gw, prologue, gy_in_place);
  avx2::backward_weight(g, x, gy, gw, prologue, gy_in_place);
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

}  // namespace tg::kernels::conv_impl
