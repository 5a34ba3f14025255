// Pooling kernels (see pool.hpp). Planes are independent: OpenMP splits them.
#include "tapegrad/kernels/pool.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "spatial_dims.hpp"
#include "tapegrad/kernels/error.hpp"

namespace tg::kernels {

PoolGeometry pool_geometry(const Shape& x, const PoolSpec& spec, const char* op) {
  if (x.rank() < 3 || x.rank() > 5)
    fail(op, fmt::format("input has shape {} (rank {}) expected (N, C, spatial...) with 1-3 spatial dims", to_string(x),
                         x.rank()));
  if (spec.window.empty()) fail(op, "no window given expected window sizes, one per spatial dim or one for all");
  PoolGeometry g;
  g.spatial = static_cast<int>(x.rank()) - 2;
  g.N = x[0];
  g.C = x[1];
  g.win = spatial_dims(spec.window, g.spatial, 1, 1, "window", op);
  g.stride = spec.stride.empty() ? g.win : spatial_dims(spec.stride, g.spatial, 1, 1, "stride", op);
  g.pad = spatial_dims(spec.padding, g.spatial, 0, 0, "padding", op);
  g.dil = spatial_dims(spec.dilation, g.spatial, 1, 1, "dilation", op);
  for (int d = 3 - g.spatial; d < 3; ++d) {
    g.in[d] = x[static_cast<std::size_t>(2 + d - (3 - g.spatial))];
    const std::int64_t extent = g.dil[d] * (g.win[d] - 1) + 1;
    if (2 * g.pad[d] > extent)
      fail(op, fmt::format("padding {} along spatial dim {} is more than half the window ({}) expected <= {}", g.pad[d],
                           d - (3 - g.spatial), extent, extent / 2));
    const std::int64_t span = g.in[d] + 2 * g.pad[d] - extent;
    if (span < 0)
      fail(op, fmt::format("window ({}) along spatial dim {} is larger than the padded input ({}) expected window <= "
                           "padded input",
                           extent, d - (3 - g.spatial), g.in[d] + 2 * g.pad[d]));
    g.out[d] = (spec.ceil_mode ? (span + g.stride[d] - 1) / g.stride[d] : span / g.stride[d]) + 1;
    // ceil_mode: the last window must start inside the input or the low padding.
    if (spec.ceil_mode && (g.out[d] - 1) * g.stride[d] >= g.in[d] + g.pad[d]) --g.out[d];
  }
  return g;
}

Shape pool_output_shape(const PoolGeometry& g) {
  Shape s{g.N, g.C};
  for (int d = 3 - g.spatial; d < 3; ++d) s.push_back(g.out[d]);
  return s;
}

namespace {

// Calls f(offset within the plane) for every in-bounds window element of output
// (o0, o1, o2), in row-major order.
template <class F>
inline void for_each_in_window(const PoolGeometry& g, std::int64_t o0, std::int64_t o1, std::int64_t o2, F f) {
  const std::int64_t s0 = o0 * g.stride[0] - g.pad[0], s1 = o1 * g.stride[1] - g.pad[1], s2 = o2 * g.stride[2] - g.pad[2];
  for (std::int64_t t0 = 0; t0 < g.win[0]; ++t0) {
    const std::int64_t i0 = s0 + t0 * g.dil[0];
    if (i0 < 0 || i0 >= g.in[0]) continue;
    for (std::int64_t t1 = 0; t1 < g.win[1]; ++t1) {
      const std::int64_t i1 = s1 + t1 * g.dil[1];
      if (i1 < 0 || i1 >= g.in[1]) continue;
      const std::int64_t row = (i0 * g.in[1] + i1) * g.in[2];
      for (std::int64_t t2 = 0; t2 < g.win[2]; ++t2) {
        const std::int64_t i2 = s2 + t2 * g.dil[2];
        if (i2 >= 0 && i2 < g.in[2]) f(row + i2);
      }
    }
  }
}

// Calls f(plane input, plane output index, o0, o1, o2) for every output of every plane, planes in parallel.
template <class F>
void for_each_output(const PoolGeometry& g, F f) {
#pragma omp parallel for schedule(static) if (g.N * g.C * g.out_vol() > 20000)
  for (std::int64_t plane = 0; plane < g.N * g.C; ++plane) {
    std::int64_t j = 0;
    for (std::int64_t o0 = 0; o0 < g.out[0]; ++o0)
      for (std::int64_t o1 = 0; o1 < g.out[1]; ++o1)
        for (std::int64_t o2 = 0; o2 < g.out[2]; ++o2) f(plane, plane * g.out_vol() + j++, o0, o1, o2);
  }
}

// The first maximum (Note [Ties in maxpool]) of the window, as a plane offset.
template <class T>
inline std::int64_t argmax(const PoolGeometry& g, const T* xp, std::int64_t o0, std::int64_t o1, std::int64_t o2) {
  std::int64_t best = -1;
  for_each_in_window(g, o0, o1, o2, [&](std::int64_t i) {
    if (best < 0 || (!std::isnan(xp[best]) && (xp[i] > xp[best] || std::isnan(xp[i])))) best = i;
  });
  return best;
}

// The divisor of one mean window (PyTorch's avg_pool rule).
inline std::int64_t mean_divisor(const PoolGeometry& g, bool count_include_pad, std::int64_t o0, std::int64_t o1,
                                 std::int64_t o2) {
  const std::int64_t o[3] = {o0, o1, o2};
  std::int64_t count = 1;
  for (int d = 0; d < 3; ++d) {
    const std::int64_t start = o[d] * g.stride[d] - g.pad[d];
    const std::int64_t end = std::min(start + g.win[d], g.in[d] + g.pad[d]);
    count *= count_include_pad ? end - start : std::min(end, g.in[d]) - std::max<std::int64_t>(start, 0);
  }
  return count;
}

}  // namespace

template <class T>
void maxpool_forward(const PoolGeometry& g, const T* x, T* y) {
  for_each_output(g, [&](std::int64_t plane, std::int64_t j, std::int64_t o0, std::int64_t o1, std::int64_t o2) {
    const T* xp = x + plane * g.in_vol();
    y[j] = xp[argmax(g, xp, o0, o1, o2)];
  });
}

template <class T>
void maxpool_backward(const PoolGeometry& g, const T* x, const T* gy, T* gx) {
  // Planes are independent, so each thread's writes stay inside its own planes.
  for_each_output(g, [&](std::int64_t plane, std::int64_t j, std::int64_t o0, std::int64_t o1, std::int64_t o2) {
    const T* xp = x + plane * g.in_vol();
    gx[plane * g.in_vol() + argmax(g, xp, o0, o1, o2)] += gy[j];
  });
}

template <class T>
void meanpool_forward(const PoolGeometry& g, bool count_include_pad, const T* x, T* y) {
  for_each_output(g, [&](std::int64_t plane, std::int64_t j, std::int64_t o0, std::int64_t o1, std::int64_t o2) {
    const T* xp = x + plane * g.in_vol();
    T acc = T(0);
    for_each_in_window(g, o0, o1, o2, [&](std::int64_t i) { acc += xp[i]; });
    y[j] = acc / static_cast<T>(mean_divisor(g, count_include_pad, o0, o1, o2));
  });
}

template <class T>
void meanpool_backward(const PoolGeometry& g, bool count_include_pad, const T* gy, T* gx) {
  for_each_output(g, [&](std::int64_t plane, std::int64_t j, std::int64_t o0, std::int64_t o1, std::int64_t o2) {
    T* gp = gx + plane * g.in_vol();
    const T share = gy[j] / static_cast<T>(mean_divisor(g, count_include_pad, o0, o1, o2));
    for_each_in_window(g, o0, o1, o2, [&](std::int64_t i) { gp[i] += share; });
  });
}

template <class T>
void lppool_forward(const PoolGeometry& g, T p, const T* x, T* y) {
  for_each_output(g, [&](std::int64_t plane, std::int64_t j, std::int64_t o0, std::int64_t o1, std::int64_t o2) {
    const T* xp = x + plane * g.in_vol();
    T acc = T(0);
    for_each_in_window(g, o0, o1, o2, [&](std::int64_t i) { acc += std::pow(std::abs(xp[i]), p); });
    y[j] = std::pow(acc, T(1) / p);
  });
}

template <class T>
void lppool_backward(const PoolGeometry& g, T p, const T* x, const T* y, const T* gy, T* gx) {
  // d y / d x_i = sign(x_i) |x_i|^(p-1) y^(1-p); zero where the window norm is zero.
  for_each_output(g, [&](std::int64_t plane, std::int64_t j, std::int64_t o0, std::int64_t o1, std::int64_t o2) {
    if (y[j] == T(0)) return;
    const T* xp = x + plane * g.in_vol();
    T* gp = gx + plane * g.in_vol();
    const T scale = gy[j] * std::pow(y[j], T(1) - p);
    for_each_in_window(g, o0, o1, o2, [&](std::int64_t i) {
      const T v = xp[i];
      gp[i] += scale * (v > 0 ? T(1) : v < 0 ? T(-1) : T(0)) * std::pow(std::abs(v), p - T(1));
    });
  });
}

#define TG_INSTANTIATE(T)                                                                             \
  template void maxpool_forward<T>(const PoolGeometry&, const T*, T*);                                \
  template void maxpool_backward<T>(const PoolGeometry&, const T*, const T*, T*);                     \
  template void meanpool_forward<T>(const PoolGeometry&, bool, const T*, T*);                         \
  template void meanpool_backward<T>(const PoolGeometry&, bool, const T*, T*);                        \
  template void lppool_forward<T>(const PoolGeometry&, T, const T*, T*);                              \
  template void lppool_backward<T>(const PoolGeometry&, T, const T*, const T*, const T*, T*);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg::kernels
