// The direct convolution: loops over output rows, vectorised along the row.
// Used for depthwise and single-channel filtering and small kernels, where an
// im2col workspace would cost more than it saves. No workspace at all.
//
// Loop order: every output row stays in L1 while all its taps accumulate into
// it (forward), every input-gradient plane is owned by one thread (backward
// input), and every (filter, channel) kernel gradient is owned by one thread
// (backward weight), so the parallel loops need no reductions or atomics.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "conv_impl.hpp"

namespace tg::kernels::conv_impl {
namespace {

constexpr double kParallelMacs = 1e5;  // below this a parallel region costs more than it saves

std::vector<TapRange> row_ranges(const ConvGeometry& g) {
  std::vector<TapRange> r(static_cast<std::size_t>(g.ker[2]));
  for (std::int64_t t = 0; t < g.ker[2]; ++t) r[static_cast<std::size_t>(t)] = tap_range(g, 2, t);
  return r;
}

// y[o] += w * x[o * stride] for o in [0, count)
template <class T>
inline void axpy_row(T* __restrict y, T w, const T* __restrict x, std::int64_t count, std::int64_t stride) {
  if (stride == 1)
    for (std::int64_t o = 0; o < count; ++o) y[o] += w * x[o];
  else
    for (std::int64_t o = 0; o < count; ++o) y[o] += w * x[o * stride];
}

// x[o * stride] += w * y[o] for o in [0, count)
template <class T>
inline void scatter_row(T* __restrict x, T w, const T* __restrict y, std::int64_t count, std::int64_t stride) {
  if (stride == 1)
    for (std::int64_t o = 0; o < count; ++o) x[o] += w * y[o];
  else
    for (std::int64_t o = 0; o < count; ++o) x[o * stride] += w * y[o];
}

// sum over o in [0, count) of x[o * stride] * y[o]
template <class T>
inline T dot_row(const T* __restrict x, const T* __restrict y, std::int64_t count, std::int64_t stride) {
  T acc = T(0);
  if (stride == 1)
    for (std::int64_t o = 0; o < count; ++o) acc += x[o] * y[o];
  else
    for (std::int64_t o = 0; o < count; ++o) acc += x[o * stride] * y[o];
  return acc;
}

// Offset into an input row of the first output a tap reaches (never out of bounds).
inline std::int64_t first_input(const TapRange& r, std::int64_t stride) { return r.offset + r.begin * stride; }

// Calls f(input_row_offset, tap_row_offset) for every kernel row (t0, t1) whose
// input row lies inside the input for output row (o0, o1).
template <class F>
inline void for_each_tap_row(const ConvGeometry& g, std::int64_t o0, std::int64_t o1, F f) {
  for (std::int64_t t0 = 0; t0 < g.ker[0]; ++t0) {
    const std::int64_t i0 = input_index(g, 0, o0, t0);
    if (i0 < 0) continue;
    for (std::int64_t t1 = 0; t1 < g.ker[1]; ++t1) {
      const std::int64_t i1 = input_index(g, 1, o1, t1);
      if (i1 < 0) continue;
      f((i0 * g.in[1] + i1) * g.in[2], (t0 * g.ker[1] + t1) * g.ker[2]);
    }
  }
}

}  // namespace

template <class T>
void direct_forward(const ConvGeometry& g, const T* x, const T* w, T* y, bool accumulate) {
  const std::int64_t ov = g.out_vol(), iv = g.in_vol(), kv = g.ker_vol();
  const auto rows = row_ranges(g);
#pragma omp parallel for schedule(static) if (g.macs() > kParallelMacs)
  for (std::int64_t nk = 0; nk < g.N * g.K; ++nk) {
    const std::int64_t n = nk / g.K, k = nk % g.K, group = k / g.Kg;
    T* yk = y + nk * ov;
    if (!accumulate) std::fill(yk, yk + ov, T(0));
    for (std::int64_t o0 = 0; o0 < g.out[0]; ++o0)
      for (std::int64_t o1 = 0; o1 < g.out[1]; ++o1) {
        T* yrow = yk + (o0 * g.out[1] + o1) * g.out[2];
        for (std::int64_t c = 0; c < g.Cg; ++c) {
          const T* xc = x + (n * g.C + group * g.Cg + c) * iv;
          const T* wc = w + (k * g.Cg + c) * kv;
          for_each_tap_row(g, o0, o1, [&](std::int64_t in_row, std::int64_t tap_row) {
            for (std::int64_t t2 = 0; t2 < g.ker[2]; ++t2) {
              const TapRange& r = rows[static_cast<std::size_t>(t2)];
              if (!r.empty())
                axpy_row(yrow + r.begin, wc[tap_row + t2], xc + in_row + first_input(r, g.stride[2]), r.end - r.begin, g.stride[2]);
            }
          });
        }
      }
  }
}

template <class T>
void direct_backward_input(const ConvGeometry& g, const T* gy, const T* w, T* gx) {
  const std::int64_t ov = g.out_vol(), iv = g.in_vol(), kv = g.ker_vol();
  const auto rows = row_ranges(g);
#pragma omp parallel for schedule(static) if (g.macs() > kParallelMacs)
  for (std::int64_t nc = 0; nc < g.N * g.C; ++nc) {
    const std::int64_t n = nc / g.C, channel = nc % g.C, group = channel / g.Cg, c = channel % g.Cg;
    T* gxc = gx + nc * iv;
    for (std::int64_t k = group * g.Kg; k < (group + 1) * g.Kg; ++k) {
      const T* gyk = gy + (n * g.K + k) * ov;
      const T* wc = w + (k * g.Cg + c) * kv;
      for (std::int64_t o0 = 0; o0 < g.out[0]; ++o0)
        for (std::int64_t o1 = 0; o1 < g.out[1]; ++o1) {
          const T* gyrow = gyk + (o0 * g.out[1] + o1) * g.out[2];
          for_each_tap_row(g, o0, o1, [&](std::int64_t in_row, std::int64_t tap_row) {
            for (std::int64_t t2 = 0; t2 < g.ker[2]; ++t2) {
              const TapRange& r = rows[static_cast<std::size_t>(t2)];
              if (!r.empty())
                scatter_row(gxc + in_row + first_input(r, g.stride[2]), wc[tap_row + t2], gyrow + r.begin, r.end - r.begin, g.stride[2]);
            }
          });
        }
    }
  }
}

template <class T>
void direct_backward_weight(const ConvGeometry& g, const T* x, const T* gy, T* gw) {
  const std::int64_t ov = g.out_vol(), iv = g.in_vol(), kv = g.ker_vol();
  const auto rows = row_ranges(g);
#pragma omp parallel for schedule(static) if (g.macs() > kParallelMacs)
  for (std::int64_t kc = 0; kc < g.K * g.Cg; ++kc) {
    const std::int64_t k = kc / g.Cg, c = kc % g.Cg, group = k / g.Kg;
    std::vector<T> acc(static_cast<std::size_t>(kv), T(0));
    for (std::int64_t n = 0; n < g.N; ++n) {
      const T* xc = x + (n * g.C + group * g.Cg + c) * iv;
      const T* gyk = gy + (n * g.K + k) * ov;
      for (std::int64_t o0 = 0; o0 < g.out[0]; ++o0)
        for (std::int64_t o1 = 0; o1 < g.out[1]; ++o1) {
          const T* gyrow = gyk + (o0 * g.out[1] + o1) * g.out[2];
          for_each_tap_row(g, o0, o1, [&](std::int64_t in_row, std::int64_t tap_row) {
            for (std::int64_t t2 = 0; t2 < g.ker[2]; ++t2) {
              const TapRange& r = rows[static_cast<std::size_t>(t2)];
              if (!r.empty())
                acc[static_cast<std::size_t>(tap_row + t2)] +=
                    dot_row(xc + in_row + first_input(r, g.stride[2]), gyrow + r.begin, r.end - r.begin, g.stride[2]);
            }
          });
        }
    }
    for (std::int64_t t = 0; t < kv; ++t) gw[kc * kv + t] += acc[static_cast<std::size_t>(t)];
  }
}

#define TG_INSTANTIATE(T)                                                                    \
  template void direct_forward<T>(const ConvGeometry&, const T*, const T*, T*, bool);        \
  template void direct_backward_input<T>(const ConvGeometry&, const T*, const T*, T*);        \
  template void direct_backward_weight<T>(const ConvGeometry&, const T*, const T*, T*);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg::kernels::conv_impl
