// Pooling kernels over (N, C, spatial...) with 1-3 spatial dims; each (n, c)
// plane is pooled on its own. Semantics are PyTorch's max_pool / avg_pool /
// lp_pool: padding is implicit (-inf for max, 0 for mean and lp), at most half
// the window; ceil_mode never starts a window inside the high padding.
//
// Note [Ties in maxpool]: the maximum's adjoint goes to ONE element, the first
// maximum in row-major order within the window; a NaN counts as the maximum,
// and of several NaNs the last one in row-major order takes it. Both are
// PyTorch's CPU rule (its scan replaces the maximum when `v > max || isnan(v)`).
// The backward pass re-scans the window for that element, except in the 2x2
// pool of Note [Maxpool window codes].
//
// Note [Maxpool window codes]: for a 2x2 window with stride 2 (the pool of most
// CNNs: maxpool_keeps_codes) the forward can also write, per output, a code
// 0-3 naming its window's first maximum in row-major order; the backward then
// reads the codes instead of x and y. Its loop has no data-dependent branch
// (the re-scan mispredicts on real data). Codes are stored as T: with bytes the
// loops mix element widths and GCC vectorises them 32 outputs at a time, more
// than a 14-output row, so they ran scalar.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "tapegrad/kernels/shape.hpp"

namespace tg::kernels {

struct PoolSpec {
  std::vector<std::int64_t> window, stride, padding, dilation;  // per spatial dim or one for all
  bool ceil_mode = false;
};

struct PoolGeometry {
  using Dims = std::array<std::int64_t, 3>;
  int spatial = 0;
  std::int64_t N = 0, C = 0;
  Dims in{1, 1, 1}, win{1, 1, 1}, out{1, 1, 1}, stride{1, 1, 1}, pad{0, 0, 0}, dil{1, 1, 1};
  std::int64_t in_vol() const { return in[0] * in[1] * in[2]; }
  std::int64_t out_vol() const { return out[0] * out[1] * out[2]; }
};

PoolGeometry pool_geometry(const Shape& x, const PoolSpec& spec, const char* op);
Shape pool_output_shape(const PoolGeometry& g);

// Whether the forward writes window codes for g (Note [Maxpool window codes]), one per output.
bool maxpool_keeps_codes(const PoolGeometry& g);

// codes: null, or (when maxpool_keeps_codes) N * C * out_vol values to receive the window codes.
template <class T>
void maxpool_forward(const PoolGeometry& g, const T* x, T* y, T* codes = nullptr);
// Whether the 2x2 windows tile the whole input (no row or column left over):
// then the backward from codes can write gx instead of adding into it.
bool maxpool_codes_cover_input(const PoolGeometry& g);
// y: the forward's output (the maxima), so the pass only has to find where they are;
// codes: the forward's window codes, or null to re-scan x; write (with codes
// that cover the input only): gx = the adjoint instead of gx += it.
template <class T>
void maxpool_backward(const PoolGeometry& g, const T* x, const T* y, const T* gy, T* gx,
                      const T* codes = nullptr, bool write = false);

// out[j] = v at the element maxpool_backward sends output j's adjoint to (Note
// [Ties in maxpool]), v laid out like x; y: the forward's output. The adjoint
// of maxpool_backward as a map of gy, for a fixed x (second order). add: out += instead.
// codes: the forward's window codes, or null to re-scan x.
template <class T>
void maxpool_gather(const PoolGeometry& g, const T* x, const T* y, const T* v, T* out, bool add = false, const T* codes = nullptr);

// Whether one window covers each whole plane (a global pool: no padding, one
// output per plane); then the mean-pool's backward can write gx instead of adding.
bool window_is_whole_plane(const PoolGeometry& g);
template <class T>
void meanpool_forward(const PoolGeometry& g, bool count_include_pad, const T* x, T* y);
// write (with window_is_whole_plane only): gx = the adjoint instead of gx += it.
template <class T>
void meanpool_backward(const PoolGeometry& g, bool count_include_pad, const T* gy, T* gx, bool write = false);

// y = (sum over the window of |x|^p)^(1/p)
template <class T>
void lppool_forward(const PoolGeometry& g, T p, const T* x, T* y);
template <class T>
void lppool_backward(const PoolGeometry& g, T p, const T* x, const T* y, const T* gy, T* gx);

}  // namespace tg::kernels
