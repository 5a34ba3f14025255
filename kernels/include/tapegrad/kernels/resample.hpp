// Resampling over the spatial dims of (N, C, spatial...), 1 to 3 of them:
// upsample (nearest, linear: bilinear, trilinear) and adaptive pools. Each
// spatial dim is a map from output index to input taps, computed once per
// geometry; a rank below 3 is padded in front with dims of size 1.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace tg::kernels {

// Along one dim: output o reads inputs [lo[o], hi[o]] (a linear tap pair, or a
// nearest index with lo == hi), weighted (1 - w[o], w[o]); for adaptive pools
// the window [lo[o], hi[o]) and w unused.
struct AxisMap {
  std::int64_t in = 1, out = 1;
  std::vector<std::int64_t> lo, hi;
  std::vector<double> w;
};

enum class ResampleMode : std::uint8_t { nearest, linear, adaptive_mean, adaptive_max };

struct ResampleGeometry {
  std::int64_t planes = 0;     // N * C
  std::array<AxisMap, 3> axes;  // (D, H, W), leading ones of size 1 when the rank is lower
  ResampleMode mode = ResampleMode::nearest;
  std::int64_t in_volume() const { return axes[0].in * axes[1].in * axes[2].in; }
  std::int64_t out_volume() const { return axes[0].out * axes[1].out * axes[2].out; }
};

// PyTorch's source index rules (interpolate): for size-given maps `scale` is in / out.
AxisMap nearest_axis(std::int64_t in, std::int64_t out, double scale);
AxisMap linear_axis(std::int64_t in, std::int64_t out, double scale, bool align_corners);
// Adaptive pooling windows: [floor(o * in / out), ceil((o + 1) * in / out)).
AxisMap adaptive_axis(std::int64_t in, std::int64_t out);

template <class T>
void resample_forward(const ResampleGeometry& g, const T* x, T* y);
// dx += the adjoint of dy (x is read by adaptive_max only, to find each window's maximum).
template <class T>
void resample_backward(const ResampleGeometry& g, const T* x, const T* dy, T* dx);
// An adaptive max-pool's gather (its pullback's adjoint): out (+)= v at each
// window's first maximum of x; v has x's shape, out the pool's output shape.
template <class T>
void adaptive_max_gather(const ResampleGeometry& g, const T* x, const T* v, T* out, bool add);

}  // namespace tg::kernels
