// Pooling kernels (see pool.hpp). Planes are independent: OpenMP splits them.
#include "tapegrad/kernels/pool.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

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

// For every output index along each dim, the in-bounds input indices of its
// window, computed once per call: the inner loops then run without bounds checks.
struct Windows {
  std::array<std::vector<std::int64_t>, 3> index;  // index[d][o * win[d] + k] for k < inside[d][o]
  std::array<std::vector<std::int64_t>, 3> inside;  // in-bounds positions of the window
  std::array<std::vector<std::int64_t>, 3> padded;  // positions within the padded extent (PyTorch's avg divisor)
  PoolGeometry::Dims win;
  explicit Windows(const PoolGeometry& g) : win(g.win) {
    for (int d = 0; d < 3; ++d)
      for (std::int64_t o = 0; o < g.out[d]; ++o) {
        const std::int64_t start = o * g.stride[d] - g.pad[d];
        std::int64_t n = 0;
        for (std::int64_t t = 0; t < g.win[d]; ++t) {
          const std::int64_t i = start + t * g.dil[d];
          if (i >= 0 && i < g.in[d]) index[d].push_back(i), ++n;
        }
        index[d].resize(static_cast<std::size_t>((o + 1) * g.win[d]), 0);
        inside[d].push_back(n);
        padded[d].push_back(std::min(start + g.win[d], g.in[d] + g.pad[d]) - start);
      }
  }
};

// Calls f(offset within the plane) for every in-bounds window element of output
// (o0, o1, o2), in row-major order.
template <class F>
inline void for_each_in_window(const PoolGeometry& g, const Windows& w, std::int64_t o0, std::int64_t o1, std::int64_t o2, F f) {
  const std::int64_t* i0 = w.index[0].data() + o0 * w.win[0];
  const std::int64_t* i1 = w.index[1].data() + o1 * w.win[1];
  const std::int64_t* i2 = w.index[2].data() + o2 * w.win[2];
  const std::int64_t n0 = w.inside[0][static_cast<std::size_t>(o0)], n1 = w.inside[1][static_cast<std::size_t>(o1)],
                     n2 = w.inside[2][static_cast<std::size_t>(o2)];
  for (std::int64_t a = 0; a < n0; ++a)
    for (std::int64_t b = 0; b < n1; ++b) {
      const std::int64_t row = (i0[a] * g.in[1] + i1[b]) * g.in[2];
      for (std::int64_t c = 0; c < n2; ++c) f(row + i2[c]);
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
// Branch-free selects: on real data the comparisons are unpredictable.
template <class T>
inline std::int64_t argmax(const PoolGeometry& g, const Windows& w, const T* xp, std::int64_t o0, std::int64_t o1,
                           std::int64_t o2) {
  std::int64_t best = -1;
  T best_value = T(0);
  for_each_in_window(g, w, o0, o1, o2, [&](std::int64_t i) {
    const T v = xp[i];
    const bool take = best < 0 || (v > best_value) || (v != v && best_value == best_value);
    best = take ? i : best;
    best_value = take ? v : best_value;
  });
  return best;
}

// The divisor of one mean window (PyTorch's avg_pool rule).
inline std::int64_t mean_divisor(const Windows& w, bool count_include_pad, std::int64_t o0, std::int64_t o1, std::int64_t o2) {
  const auto& n = count_include_pad ? w.padded : w.inside;
  return n[0][static_cast<std::size_t>(o0)] * n[1][static_cast<std::size_t>(o1)] * n[2][static_cast<std::size_t>(o2)];
}

}  // namespace

template <class T>
void maxpool_forward(const PoolGeometry& g, const T* x, T* y) {
  const Windows w(g);
  for_each_output(g, [&](std::int64_t plane, std::int64_t j, std::int64_t o0, std::int64_t o1, std::int64_t o2) {
    const T* xp = x + plane * g.in_vol();
    y[j] = xp[argmax(g, w, xp, o0, o1, o2)];
  });
}

template <class T>
void maxpool_backward(const PoolGeometry& g, const T* x, const T* gy, T* gx) {
  const Windows w(g);
  // Planes are independent, so each thread's writes stay inside its own planes.
  for_each_output(g, [&](std::int64_t plane, std::int64_t j, std::int64_t o0, std::int64_t o1, std::int64_t o2) {
    const T* xp = x + plane * g.in_vol();
    gx[plane * g.in_vol() + argmax(g, w, xp, o0, o1, o2)] += gy[j];
  });
}

template <class T>
void meanpool_forward(const PoolGeometry& g, bool count_include_pad, const T* x, T* y) {
  const Windows w(g);
  for_each_output(g, [&](std::int64_t plane, std::int64_t j, std::int64_t o0, std::int64_t o1, std::int64_t o2) {
    const T* xp = x + plane * g.in_vol();
    T acc = T(0);
    for_each_in_window(g, w, o0, o1, o2, [&](std::int64_t i) { acc += xp[i]; });
    y[j] = acc / static_cast<T>(mean_divisor(w, count_include_pad, o0, o1, o2));
  });
}

template <class T>
void meanpool_backward(const PoolGeometry& g, bool count_include_pad, const T* gy, T* gx) {
  const Windows w(g);
  for_each_output(g, [&](std::int64_t plane, std::int64_t j, std::int64_t o0, std::int64_t o1, std::int64_t o2) {
    T* gp = gx + plane * g.in_vol();
    const T share = gy[j] / static_cast<T>(mean_divisor(w, count_include_pad, o0, o1, o2));
    for_each_in_window(g, w, o0, o1, o2, [&](std::int64_t i) { gp[i] += share; });
  });
}

template <class T>
void lppool_forward(const PoolGeometry& g, T p, const T* x, T* y) {
  const Windows w(g);
  for_each_output(g, [&](std::int64_t plane, std::int64_t j, std::int64_t o0, std::int64_t o1, std::int64_t o2) {
    const T* xp = x + plane * g.in_vol();
    T acc = T(0);
    for_each_in_window(g, w, o0, o1, o2, [&](std::int64_t i) { acc += std::pow(std::abs(xp[i]), p); });
    y[j] = std::pow(acc, T(1) / p);
  });
}

template <class T>
void lppool_backward(const PoolGeometry& g, T p, const T* x, const T* y, const T* gy, T* gx) {
  const Windows w(g);
  // d y / d x_i = sign(x_i) |x_i|^(p-1) y^(1-p); zero where the window norm is zero.
  for_each_output(g, [&](std::int64_t plane, std::int64_t j, std::int64_t o0, std::int64_t o1, std::int64_t o2) {
    if (y[j] == T(0)) return;
    const T* xp = x + plane * g.in_vol();
    T* gp = gx + plane * g.in_vol();
    const T scale = gy[j] * std::pow(y[j], T(1) - p);
    for_each_in_window(g, w, o0, o1, o2, [&](std::int64_t i) {
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
