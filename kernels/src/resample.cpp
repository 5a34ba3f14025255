#include "tapegrad/kernels/resample.hpp"

#include <algorithm>
#include <cmath>

#include "tapegrad/kernels/parallel.hpp"

namespace tg::kernels {

AxisMap nearest_axis(std::int64_t in, std::int64_t out, double scale) {
  AxisMap m{in, out, {}, {}, {}};
  for (std::int64_t o = 0; o < out; ++o) {
    const auto i = std::min(in - 1, static_cast<std::int64_t>(std::floor(static_cast<double>(o) * scale)));
    m.lo.push_back(i);
    m.hi.push_back(i);
    m.w.push_back(0);
  }
  return m;
}

AxisMap linear_axis(std::int64_t in, std::int64_t out, double scale, bool align_corners) {
  AxisMap m{in, out, {}, {}, {}};
  for (std::int64_t o = 0; o < out; ++o) {
    double src = align_corners ? (out > 1 ? static_cast<double>(o) * static_cast<double>(in - 1) / static_cast<double>(out - 1) : 0.0)
                               : std::max(0.0, (static_cast<double>(o) + 0.5) * scale - 0.5);
    const auto i0 = std::min(in - 1, static_cast<std::int64_t>(std::floor(src)));
    const auto i1 = std::min(in - 1, i0 + 1);
    m.lo.push_back(i0);
    m.hi.push_back(i1);
    m.w.push_back(i1 == i0 ? 0.0 : src - static_cast<double>(i0));
  }
  return m;
}

AxisMap adaptive_axis(std::int64_t in, std::int64_t out) {
  AxisMap m{in, out, {}, {}, {}};
  for (std::int64_t o = 0; o < out; ++o) {
    m.lo.push_back(o * in / out);
    m.hi.push_back(((o + 1) * in + out - 1) / out);
  }
  return m;
}

namespace {

// Calls body(od, oh, ow, offset of the output) over a plane's outputs.
template <class F>
void for_each_output(const ResampleGeometry& g, F&& body) {
  std::int64_t at = 0;
  for (std::int64_t od = 0; od < g.axes[0].out; ++od)
    for (std::int64_t oh = 0; oh < g.axes[1].out; ++oh)
      for (std::int64_t ow = 0; ow < g.axes[2].out; ++ow) body(od, oh, ow, at++);
}

// The (up to 8) taps of a linear output: f(input offset, weight).
template <class F>
void linear_taps(const ResampleGeometry& g, std::int64_t od, std::int64_t oh, std::int64_t ow, F&& f) {
  const AxisMap &d = g.axes[0], &h = g.axes[1], &w = g.axes[2];
  const std::int64_t id[2] = {d.lo[od], d.hi[od]}, ih[2] = {h.lo[oh], h.hi[oh]}, iw[2] = {w.lo[ow], w.hi[ow]};
  const double wd[2] = {1 - d.w[od], d.w[od]}, wh[2] = {1 - h.w[oh], h.w[oh]}, ww[2] = {1 - w.w[ow], w.w[ow]};
  for (int a = 0; a < 2; ++a)
    for (int b = 0; b < 2; ++b)
      for (int c = 0; c < 2; ++c) {
        const double weight = wd[a] * wh[b] * ww[c];
        if (weight != 0) f((id[a] * h.in + ih[b]) * w.in + iw[c], weight);
      }
}

// The window of an adaptive output: f(input offset) for each element, row-major.
template <class F>
void window(const ResampleGeometry& g, std::int64_t od, std::int64_t oh, std::int64_t ow, F&& f) {
  const AxisMap &d = g.axes[0], &h = g.axes[1], &w = g.axes[2];
  for (std::int64_t i = d.lo[od]; i < d.hi[od]; ++i)
    for (std::int64_t j = h.lo[oh]; j < h.hi[oh]; ++j)
      for (std::int64_t k = w.lo[ow]; k < w.hi[ow]; ++k) f((i * h.in + j) * w.in + k);
}
std::int64_t window_size(const ResampleGeometry& g, std::int64_t od, std::int64_t oh, std::int64_t ow) {
  return (g.axes[0].hi[od] - g.axes[0].lo[od]) * (g.axes[1].hi[oh] - g.axes[1].lo[oh]) * (g.axes[2].hi[ow] - g.axes[2].lo[ow]);
}
// The offset of the window's first maximum (NaN counts as the maximum).
template <class T>
std::int64_t argmax_in(const ResampleGeometry& g, const T* x, std::int64_t od, std::int64_t oh, std::int64_t ow) {
  std::int64_t best = -1;
  window(g, od, oh, ow, [&](std::int64_t i) {
    if (best < 0 || (!std::isnan(x[best]) && (x[i] > x[best] || std::isnan(x[i])))) best = i;
  });
  return best;
}

bool parallel(const ResampleGeometry& g) { return g.planes > 1 && g.planes * g.out_volume() > 20000; }

}  // namespace

template <class T>
void resample_forward(const ResampleGeometry& g, const T* x, T* y) {
  const std::int64_t in_vol = g.in_volume(), out_vol = g.out_volume();
  parallel_for(g.planes, threads_if(parallel(g)), [&](std::int64_t p) {
    const T* xp = x + p * in_vol;
    T* yp = y + p * out_vol;
    for_each_output(g, [&](std::int64_t od, std::int64_t oh, std::int64_t ow, std::int64_t at) {
      switch (g.mode) {
        case ResampleMode::nearest:
          yp[at] = xp[(g.axes[0].lo[od] * g.axes[1].in + g.axes[1].lo[oh]) * g.axes[2].in + g.axes[2].lo[ow]];
          break;
        case ResampleMode::linear: {
          double s = 0;
          linear_taps(g, od, oh, ow, [&](std::int64_t i, double weight) { s += weight * static_cast<double>(xp[i]); });
          yp[at] = static_cast<T>(s);
          break;
        }
        case ResampleMode::adaptive_mean: {
          double s = 0;
          window(g, od, oh, ow, [&](std::int64_t i) { s += static_cast<double>(xp[i]); });
          yp[at] = static_cast<T>(s / static_cast<double>(window_size(g, od, oh, ow)));
          break;
        }
        case ResampleMode::adaptive_max: yp[at] = xp[argmax_in(g, xp, od, oh, ow)]; break;
      }
    });
  });
}

template <class T>
void resample_backward(const ResampleGeometry& g, const T* x, const T* dy, T* dx) {
  const std::int64_t in_vol = g.in_volume(), out_vol = g.out_volume();
  parallel_for(g.planes, threads_if(parallel(g)), [&](std::int64_t p) {
    const T* xp = x ? x + p * in_vol : nullptr;
    const T* gp = dy + p * out_vol;
    T* dp = dx + p * in_vol;
    for_each_output(g, [&](std::int64_t od, std::int64_t oh, std::int64_t ow, std::int64_t at) {
      const T gy = gp[at];
      switch (g.mode) {
        case ResampleMode::nearest:
          dp[(g.axes[0].lo[od] * g.axes[1].in + g.axes[1].lo[oh]) * g.axes[2].in + g.axes[2].lo[ow]] += gy;
          break;
        case ResampleMode::linear:
          linear_taps(g, od, oh, ow, [&](std::int64_t i, double weight) { dp[i] += static_cast<T>(weight) * gy; });
          break;
        case ResampleMode::adaptive_mean: {
          const T share = gy / static_cast<T>(window_size(g, od, oh, ow));
          window(g, od, oh, ow, [&](std::int64_t i) { dp[i] += share; });
          break;
        }
        case ResampleMode::adaptive_max: dp[argmax_in(g, xp, od, oh, ow)] += gy; break;
      }
    });
  });
}

template <class T>
void adaptive_max_gather(const ResampleGeometry& g, const T* x, const T* v, T* out, bool add) {
  const std::int64_t in_vol = g.in_volume(), out_vol = g.out_volume();
  parallel_for(g.planes, threads_if(parallel(g)), [&](std::int64_t p) {
    const T* xp = x + p * in_vol;
    const T* vp = v + p * in_vol;
    T* op = out + p * out_vol;
    for_each_output(g, [&](std::int64_t od, std::int64_t oh, std::int64_t ow, std::int64_t at) {
      const T picked = vp[argmax_in(g, xp, od, oh, ow)];
      op[at] = add ? op[at] + picked : picked;
    });
  });
}

template void adaptive_max_gather(const ResampleGeometry&, const float*, const float*, float*, bool);
template void adaptive_max_gather(const ResampleGeometry&, const double*, const double*, double*, bool);
template void resample_forward(const ResampleGeometry&, const float*, float*);
template void resample_forward(const ResampleGeometry&, const double*, double*);
template void resample_backward(const ResampleGeometry&, const float*, const float*, float*);
template void resample_backward(const ResampleGeometry&, const double*, const double*, double*);

}  // namespace tg::kernels
