// Winograd convolution: fewer multiplies per output, in a transformed domain.
//
// Note [Winograd convolution]: along a spatial dim with r = 3 or 5 taps, a
// tile of m = 4 outputs reads alpha = m + r - 1 inputs d (6 or 8) and is computed as
//   y = A^T [ (G g) . (B^T d) ]                 (. : elementwise over alpha points)
// the Toom-Cook algorithm F(m, r) on the points 0, 1, -1, 1/2, -1/2 and
// infinity (Barabasz et al.'s most accurate choice for 6), with 2 and -2, the
// next simplest pair, added for 8. A dim of one tap is left alone (alpha =
// m = 1). In 2-D the transforms apply along both dims,
//   Y = A1^T [ (G1 g G2^T) . (B1^T d B2) ] A2
// so a 4x4 output tile of a 5x5 kernel costs 64 multiplies instead of 400, and
// of a 3x3 kernel 36 instead of 144. Summed over input channels the pointwise
// products are independent GEMMs, one per transform point xi:
//   M[xi] (tiles x Kg) = V[xi] (tiles x Cg) . U[xi] (Cg x Kg)
// with V = B^T d B per (tile, channel) and U = G g G^T per (filter, channel),
// run by the implicit GEMM's micro-kernel. The weight gradient is the same
// identity read backwards (its adjoint with respect to g):
//   gU[xi] (Cg x Kg) = V[xi]^T (Cg x tiles) . Yhat[xi] (tiles x Kg),
//   Yhat = A1 gY A2^T per (tile, filter),   gw += G1^T gU G2
// and the input gradient is the forward of the adjoint geometry.
//
// The matrices come from evaluation: E_n (alpha x n) evaluates a polynomial of n
// coefficients at the points (row j = [1, p_j, ..., p_j^(n-1)]; the infinity
// row picks the leading coefficient). A linear convolution of g (r
// coefficients) with h (m) is s = C [(E_r g) . (E_m h)], C = E_alpha^-1;
// correlation is its transpose with respect to h, so G = E_r, A^T = E_m^T and
// B^T = C^T. They are computed at compile time, with the tap counts as
// template parameters, so every transform is unrolled.
//
// Rounding: the transforms scale values up before the GEMMs and back down, so
// in float the outputs differ from a direct convolution by a few 1e-6 relative
// (the weight gradient by a few 1e-5 of its largest entry); in double by 1e-12.
// Tiles of 4x4 outputs, not 2x2: 4 multiplies per output of a 5x5 kernel
// instead of 9, for input transforms of about the same cost per output.
// (Measurements: docs/design-notes.md, Winograd.)
//
// Layout: the transforms read the input zero-padded to whole tiles and
// channel-last, each group's channels padded to whole vectors: (P1, P2, Cg')
// per sample and group. Every transform then works on a vector of channels (or
// of filters) at a time. A forward task is (samples, group, a block of tile rows):
// it copies its padded input rows channel-last (into L2, not a copy of the
// whole input through memory), transforms its tiles into V, runs the GEMMs
// one block of filters at a time into M, transforms M back into a channel-last copy of its output rows,
// moves that to the output's channel-first planes, and applies the epilogue to
// its rows while they are in cache (Note [Winograd tasks span samples]). The weight gradient's tasks are rows of
// tiles: each copies its tile row's input rows and its rows of gy channel-last
// (Note [Weight pass input rows]). Every change of layout is a transpose
// of vector-sized blocks in registers (8 x 8 floats), not element by element.
//
// The passes themselves are in conv_winograd_passes.hpp, compiled here for any
// x86-64 and in conv_winograd_avx2.cpp for AVX2+FMA; this file picks one.
#define TG_WINOGRAD_ISA portable
#include "conv_winograd_passes.hpp"

#include "tapegrad/kernels/error.hpp"

namespace tg::kernels::conv_impl {
namespace avx2 {  // conv_winograd_avx2.cpp
template <class T>
void forward_any(const ConvGeometry& g, const T* x, const T* w, T* y, bool accumulate, const OutputEpilogue<T>* epilogue);
template <class T>
void backward_weight_any(const ConvGeometry& g, const T* x, const T* gy, T* gw, const AdjointPrologue<T>* prologue,
                         T* gy_in_place);
template <class T>
void transpose_any(const T* src, std::int64_t src_stride, std::int64_t rows, std::int64_t cols, T* dst,
                   std::int64_t dst_stride, bool add, const T* col_offset);
}  // namespace avx2


bool winograd_applies(const ConvGeometry& g) {
  auto taps_ok = [](std::int64_t r) { return r == 1 || r == 3 || r == 5; };
  return g.spatial <= 2 && g.unit_stride_and_dilation() && taps_ok(g.ker[1]) && taps_ok(g.ker[2]);
}

void require_winograd(const ConvGeometry& g, const char* op) {
  if (!winograd_applies(g))
    fail(op, fmt::format("algorithm winograd runs only 1-D and 2-D convolutions with stride 1, dilation 1 and 1, 3 "
                         "or 5 taps per dim (this call has kernel [{}] stride [{}] dilation [{}]); hint: use "
                         "implicit_gemm, or leave the algorithm automatic",
                         fmt::join(g.ker, ","), fmt::join(g.stride, ","), fmt::join(g.dil, ",")));
}

template <class T>
void winograd_forward(const ConvGeometry& g, const T* x, const T* w, T* y, bool accumulate,
                      const OutputEpilogue<T>* epilogue) {
  require_winograd(g, "conv");
  if (implicit_gemm_vectorised()) return avx2::forward_any(g, x, w, y, accumulate, epilogue);
  portable::forward_any(g, x, w, y, accumulate, epilogue);
}

template <class T>
void winograd_backward_input(const ConvGeometry& g, const T* gy, const T* w, T* gx, bool accumulate) {
  require_winograd(g, "conv");
  ScratchScope scratch;
  const T* wa = adjoint_weights(g, w, scratch);
  winograd_forward(adjoint_geometry(g), gy, wa, gx, accumulate);  // writes every element of gx
}

template <class T>
void winograd_backward_weight(const ConvGeometry& g, const T* x, const T* gy, T* gw, const AdjointPrologue<T>* prologue,
                              T* gy_in_place) {
  require_winograd(g, "conv");
  if (implicit_gemm_vectorised()) return avx2::backward_weight_any(g, x, gy, gw, prologue, gy_in_place);
  portable::backward_weight_any(g, x, gy, gw, prologue, gy_in_place);
}

template <class T>
void transpose_blocks(const T* src, std::int64_t src_stride, std::int64_t rows, std::int64_t cols, T* dst,
                      std::int64_t dst_stride, bool add, const T* col_offset) {
  if (implicit_gemm_vectorised())
    return avx2::transpose_any(src, src_stride, rows, cols, dst, dst_stride, add, col_offset);
  portable::transpose_any(src, src_stride, rows, cols, dst, dst_stride, add, col_offset);
}

#define TG_INSTANTIATE(T)                                                                                          \
  template void transpose_blocks<T>(const T*, std::int64_t, std::int64_t, std::int64_t, T*, std::int64_t, bool, const T*); \
  template void winograd_forward<T>(const ConvGeometry&, const T*, const T*, T*, bool, const OutputEpilogue<T>*); \
  template void winograd_backward_input<T>(const ConvGeometry&, const T*, const T*, T*, bool);                          \
  template void winograd_backward_weight<T>(const ConvGeometry&, const T*, const T*, T*, const AdjointPrologue<T>*, T*);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg::kernels::conv_impl
