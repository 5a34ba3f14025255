// Pooling kernels over (N, C, spatial...) with 1-3 spatial dims; each (n, c)
// plane is pooled on its own. Semantics are PyTorch's max_pool / avg_pool /
// lp_pool: padding is implicit (-inf for max, 0 for mean and lp), at most half
// the window; ceil_mode never starts a window inside the high padding.
//
// Note [Ties in maxpool]: the maximum's adjoint goes to ONE element, the first
// maximum in row-major order within the window (PyTorch's CPU rule); a NaN
// counts as the maximum (the first NaN wins). The backward pass re-scans the
// window for the first element equal to the forward's maximum rather than storing indices.
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

template <class T>
void maxpool_forward(const PoolGeometry& g, const T* x, T* y);
// y: the forward's output (the maxima), so the pass only has to find where they are.
template <class T>
void maxpool_backward(const PoolGeometry& g, const T* x, const T* y, const T* gy, T* gx);

template <class T>
void meanpool_forward(const PoolGeometry& g, bool count_include_pad, const T* x, T* y);
template <class T>
void meanpool_backward(const PoolGeometry& g, bool count_include_pad, const T* gy, T* gx);

// y = (sum over the window of |x|^p)^(1/p)
template <class T>
void lppool_forward(const PoolGeometry& g, T p, const T* x, T* y);
template <class T>
void lppool_backward(const PoolGeometry& g, T p, const T* x, const T* y, const T* gy, T* gx);

}  // namespace tg::kernels
