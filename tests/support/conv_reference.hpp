// Naive reference loops for the convolution family, written from the
// definitions and generic over the element type. Every algorithm is checked
// against these (and these against hand-worked answers).
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include <tapegrad/tapegrad.hpp>

namespace tgtest::ref {

// The geometry of a conv, spatial dims right-aligned into 3 (unused dims size 1).
struct Geo {
  std::int64_t N, C, K, G;
  std::array<std::int64_t, 3> in{1, 1, 1}, ker{1, 1, 1}, out{1, 1, 1}, s{1, 1, 1}, d{1, 1, 1}, lo{0, 0, 0}, hi{0, 0, 0};
  bool flip = false;
};

inline Geo geo(const tg::Shape& x, const tg::Shape& w, const tg::ConvParams& p) {
  Geo g;
  const std::size_t sp = x.rank() - 2;
  g.N = x[0];
  g.C = x[1];
  g.K = w[0];
  g.G = p.groups;
  g.flip = p.flip;
  auto val = [](const std::vector<std::int64_t>& v, std::size_t i, std::int64_t f) {
    return v.empty() ? f : v.size() == 1 ? v[0] : v[i];
  };
  for (std::size_t i = 0; i < sp; ++i) {
    const std::size_t j = 3 - sp + i;
    g.in[j] = x[2 + i];
    g.ker[j] = w[2 + i];
    g.s[j] = val(p.stride, i, 1);
    g.d[j] = val(p.dilation, i, 1);
    g.lo[j] = val(p.pad_lo.empty() ? p.padding : p.pad_lo, i, 0);
    g.hi[j] = val(p.pad_hi.empty() ? p.padding : p.pad_hi, i, 0);
    g.out[j] = (g.in[j] + g.lo[j] + g.hi[j] - g.d[j] * (g.ker[j] - 1) - 1) / g.s[j] + 1;
  }
  return g;
}

// Calls f(x_index, w_index, y_index) for every multiply-add of the convolution.
template <class F>
void for_each_mac(const Geo& g, F f) {
  const std::int64_t Cg = g.C / g.G, Kg = g.K / g.G;
  for (std::int64_t n = 0; n < g.N; ++n)
    for (std::int64_t k = 0; k < g.K; ++k)
      for (std::int64_t c = 0; c < Cg; ++c)
        for (std::int64_t o0 = 0; o0 < g.out[0]; ++o0)
          for (std::int64_t o1 = 0; o1 < g.out[1]; ++o1)
            for (std::int64_t o2 = 0; o2 < g.out[2]; ++o2)
              for (std::int64_t t0 = 0; t0 < g.ker[0]; ++t0)
                for (std::int64_t t1 = 0; t1 < g.ker[1]; ++t1)
                  for (std::int64_t t2 = 0; t2 < g.ker[2]; ++t2) {
                    const std::int64_t i0 = o0 * g.s[0] + t0 * g.d[0] - g.lo[0];
                    const std::int64_t i1 = o1 * g.s[1] + t1 * g.d[1] - g.lo[1];
                    const std::int64_t i2 = o2 * g.s[2] + t2 * g.d[2] - g.lo[2];
                    if (i0 < 0 || i0 >= g.in[0] || i1 < 0 || i1 >= g.in[1] || i2 < 0 || i2 >= g.in[2]) continue;
                    const std::int64_t ci = (k / Kg) * Cg + c;
                    const std::int64_t xi = (((n * g.C + ci) * g.in[0] + i0) * g.in[1] + i1) * g.in[2] + i2;
                    const std::int64_t u0 = g.flip ? g.ker[0] - 1 - t0 : t0, u1 = g.flip ? g.ker[1] - 1 - t1 : t1,
                                       u2 = g.flip ? g.ker[2] - 1 - t2 : t2;
                    const std::int64_t wi = (((k * Cg + c) * g.ker[0] + u0) * g.ker[1] + u1) * g.ker[2] + u2;
                    const std::int64_t yi = (((n * g.K + k) * g.out[0] + o0) * g.out[1] + o1) * g.out[2] + o2;
                    f(xi, wi, yi);
                  }
}

template <class T>
tg::Shape out_shape(const tg::Shape& x, const Geo& g) {
  tg::Shape s{g.N, g.K};
  for (std::size_t i = 0; i + 2 < x.rank(); ++i) s.push_back(g.out[3 - (x.rank() - 2) + i]);
  return s;
}

template <class T>
tg::Array<T> conv(const tg::Array<T>& x, const tg::Array<T>& w, const tg::ConvParams& p) {
  const Geo g = geo(x.shape(), w.shape(), p);
  auto y = tg::Array<T>::zeros(out_shape<T>(x.shape(), g));
  for_each_mac(g, [&](auto xi, auto wi, auto yi) { y.data()[yi] += x.data()[xi] * w.data()[wi]; });
  return y;
}

// The adjoints of conv applied to gy: (gx, gw).
template <class T>
std::pair<tg::Array<T>, tg::Array<T>> conv_backward(const tg::Array<T>& x, const tg::Array<T>& w, const tg::Array<T>& gy,
                                                    const tg::ConvParams& p) {
  const Geo g = geo(x.shape(), w.shape(), p);
  auto gx = tg::Array<T>::zeros(x.shape());
  auto gw = tg::Array<T>::zeros(w.shape());
  for_each_mac(g, [&](auto xi, auto wi, auto yi) {
    gx.data()[xi] += gy.data()[yi] * w.data()[wi];
    gw.data()[wi] += gy.data()[yi] * x.data()[xi];
  });
  return {gx, gw};
}

// conv_transpose from its definition: every input pixel scatters its weighted
// kernel into the output (PyTorch's conv_transpose semantics).
template <class T>
tg::Array<T> conv_transpose(const tg::Array<T>& x, const tg::Array<T>& w, const tg::ConvParams& p, const tg::Shape& out) {
  // The transpose's output is the conv's input: run the conv's mac list on that geometry.
  const Geo g = geo(out, w.shape(), p);
  auto y = tg::Array<T>::zeros(out);
  for_each_mac(g, [&](auto yi, auto wi, auto xi) { y.data()[yi] += x.data()[xi] * w.data()[wi]; });
  return y;
}

}  // namespace tgtest::ref
