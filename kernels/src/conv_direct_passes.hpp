// The direct convolution's loops (conv_direct.cpp says how they go), compiled
// twice as the Winograd passes are (conv_winograd_passes.hpp): in
// conv_direct.cpp for any x86-64 and in conv_direct_avx2.cpp with AVX2+FMA
// (a target pragma after the includes), each in its own namespace
// (TG_DIRECT_ISA). Include from those two files only.
#pragma once

#include <omp.h>

#include <algorithm>
#include <limits>
#include <span>

#include "conv_impl.hpp"
#include "tapegrad/kernels/parallel.hpp"

#ifndef TG_DIRECT_ISA
#error "define TG_DIRECT_ISA (portable or avx2) before including conv_direct_passes.hpp"
#endif

#if defined(TG_DIRECT_AVX2) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

namespace tg::kernels::conv_impl::TG_DIRECT_ISA {
namespace {

constexpr double kParallelMacs = 1e5;  // below this a parallel region costs more than it saves

std::span<const TapRange> row_ranges(const ConvGeometry& g, ScratchScope& scratch) {
  std::span<TapRange> r = scratch.take<TapRange>(g.ker[2]);
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
  // kLanes independent partial sums (four AVX2 vectors' worth): the compiler
  // vectorises the inner loop without reassociating anything, and four FMA
  // chains hide the FMA latency a single running sum would wait on.
  constexpr int kLanes = 128 / sizeof(T);
  T lanes[kLanes] = {};
  std::int64_t o = 0;
  if (stride == 1) {
    for (; o + kLanes <= count; o += kLanes)
      for (int j = 0; j < kLanes; ++j) lanes[j] += x[o + j] * y[o + j];
  }
  T acc = T(0);
  for (; o < count; ++o) acc += x[o * stride] * y[o];
  for (int j = 0; j < kLanes; ++j) acc += lanes[j];
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

// y[o] += sum_t w[t] x[o + t * dil] for o in [0, count): all K2 taps of a kernel
// row in one pass over y (K2 known at compile time, so the taps unroll and the
// loop over o vectorises).
template <int K2, class T>
inline void fused_row(T* __restrict y, const T* __restrict w, const T* __restrict x, std::int64_t count, std::int64_t dil) {
  T wt[K2];
  for (int t = 0; t < K2; ++t) wt[t] = w[t];
  for (std::int64_t o = 0; o < count; ++o) {
    T acc = y[o];
    for (int t = 0; t < K2; ++t) acc += wt[t] * x[o + t * dil];
    y[o] = acc;
  }
}

// One kernel row (ker[2] taps w) applied to one input row into one output row.
// Outputs every tap reaches (the interior) run fused when the stride is 1;
// the edges, and other strides, run one tap at a time.
template <class T>
inline void accumulate_kernel_row(const ConvGeometry& g, std::span<const TapRange> rows, const std::int64_t interior[2],
                                  T* yrow, const T* w, const T* xrow) {
  const std::int64_t K2 = g.ker[2], s2 = g.stride[2];
  std::int64_t begin = interior[0], end = interior[1];
  if (s2 != 1 || K2 > 7 || begin >= end) begin = end = 0;
  if (begin < end) {
    const T* x0 = xrow + rows[0].offset + begin;  // tap 0's input for output `begin`
    const std::int64_t n = end - begin, d = g.dil[2];
    switch (K2) {
      case 1: fused_row<1>(yrow + begin, w, x0, n, d); break;
      case 2: fused_row<2>(yrow + begin, w, x0, n, d); break;
      case 3: fused_row<3>(yrow + begin, w, x0, n, d); break;
      case 4: fused_row<4>(yrow + begin, w, x0, n, d); break;
      case 5: fused_row<5>(yrow + begin, w, x0, n, d); break;
      case 6: fused_row<6>(yrow + begin, w, x0, n, d); break;
      default: fused_row<7>(yrow + begin, w, x0, n, d); break;
    }
  }
  for (std::int64_t t2 = 0; t2 < K2; ++t2) {
    const TapRange& r = rows[static_cast<std::size_t>(t2)];
    // the parts of this tap's range outside [begin, end)
    const std::int64_t parts[2][2] = {{r.begin, std::min(r.end, begin == end ? r.end : begin)},
                                      {std::max(r.begin, end == begin ? r.end : end), r.end}};
    for (const auto& part : parts)
      if (part[0] < part[1])
        axpy_row(yrow + part[0], w[t2], xrow + r.offset + part[0] * s2, part[1] - part[0], s2);
  }
}


// The kernel-gradient twin of accumulate_kernel_row: acc[t2] += input row . output-adjoint row.
template <class T>
inline void dot_kernel_row(const ConvGeometry& g, std::span<const TapRange> rows, T* acc, const T* xrow, const T* gyrow) {
  for (std::int64_t t2 = 0; t2 < g.ker[2]; ++t2) {
    const TapRange& r = rows[static_cast<std::size_t>(t2)];
    if (!r.empty()) acc[t2] += dot_row(xrow + first_input(r, g.stride[2]), gyrow + r.begin, r.end - r.begin, g.stride[2]);
  }
}

// The outputs along the last dim that every tap of a kernel row reaches.
inline void interior_of(std::span<const TapRange> rows, std::int64_t interior[2]) {
  interior[0] = 0;
  interior[1] = std::numeric_limits<std::int64_t>::max();
  for (const auto& r : rows) {
    interior[0] = std::max(interior[0], r.begin);
    interior[1] = std::min(interior[1], r.end);
  }
  if (interior[0] >= interior[1]) interior[0] = interior[1] = 0;
}

}  // namespace

template <class T>
void forward_any(const ConvGeometry& g, const T* x, const T* w, T* y, bool accumulate) {
  const std::int64_t ov = g.out_vol(), iv = g.in_vol(), kv = g.ker_vol();
  ScratchScope scratch;
  const auto rows = row_ranges(g, scratch);
  std::int64_t interior[2];
  interior_of(rows, interior);
  parallel_for(g.N * g.K, threads_if(g.macs() > kParallelMacs), [&](std::int64_t nk) {
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
            accumulate_kernel_row(g, rows, interior, yrow, wc + tap_row, xc + in_row);
          });
        }
      }
  });
}

template <class T>
void backward_input_any(const ConvGeometry& g, const T* gy, const T* w, T* gx, bool accumulate) {
  if (unit_stride(g)) {
    // Unit stride: a gather (the forward loops on the adjoint geometry) instead of a scatter.
    ScratchScope scratch;
    return forward_any(adjoint_geometry(g), gy, adjoint_weights(g, w, scratch), gx, accumulate);
  }
  if (!accumulate) std::fill(gx, gx + g.N * g.C * g.in_vol(), T(0));
  const std::int64_t ov = g.out_vol(), iv = g.in_vol(), kv = g.ker_vol();
  ScratchScope scratch;
  const auto rows = row_ranges(g, scratch);
  parallel_for(g.N * g.C, threads_if(g.macs() > kParallelMacs), [&](std::int64_t nc) {
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
  });
}

template <class T>
void backward_weight_any(const ConvGeometry& g, const T* x, const T* gy, T* gw) {
  const std::int64_t ov = g.out_vol(), iv = g.in_vol(), kv = g.ker_vol();
  ScratchScope scratch;
  const auto rows = row_ranges(g, scratch);
  parallel_for(g.K * g.Cg, threads_if(g.macs() > kParallelMacs), [&](std::int64_t kc) {
    const std::int64_t k = kc / g.Cg, c = kc % g.Cg, group = k / g.Kg;
    ScratchScope own;  // this thread's stack (Note [Scratch stack])
    const std::span<T> acc = own.take_filled<T>(kv, T(0));
    for (std::int64_t n = 0; n < g.N; ++n) {
      const T* xc = x + (n * g.C + group * g.Cg + c) * iv;
      const T* gyk = gy + (n * g.K + k) * ov;
      for (std::int64_t o0 = 0; o0 < g.out[0]; ++o0)
        for (std::int64_t o1 = 0; o1 < g.out[1]; ++o1) {
          const T* gyrow = gyk + (o0 * g.out[1] + o1) * g.out[2];
          for_each_tap_row(g, o0, o1, [&](std::int64_t in_row, std::int64_t tap_row) {
            dot_kernel_row(g, rows, acc.data() + tap_row, xc + in_row, gyrow);
          });
        }
    }
    for (std::int64_t t = 0; t < kv; ++t) gw[kc * kv + t] += acc[static_cast<std::size_t>(t)];
  });
}

}  // namespace tg::kernels::conv_impl::TG_DIRECT_ISA

#if defined(TG_DIRECT_AVX2) && !defined(__clang__)
#pragma GCC pop_options
#endif
