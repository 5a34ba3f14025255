// im2col + GEMM through OpenBLAS: the workhorse for channel-heavy layers.
//
// For one sample n and one group, with R = Cg * ker_vol rows:
//   col (R x out_vol)          = the input patches, one column per output position
//   forward:          y_g  (Kg x out_vol) = W_g (Kg x R) . col (R x out_vol)
//   backward input:   col  (R x out_vol)  = W_g^T (R x Kg) . gy_g (Kg x out_vol);  gx += col2im(col)
//   backward weight:  gW_g (Kg x R)      += gy_g (Kg x out_vol) . col^T (out_vol x R)
// A pointwise convolution (1x1, stride 1, unpadded) uses the input as col directly.
//
// Parallelism: with at least two samples, OpenMP splits the batch and each
// thread runs its own single-threaded GEMMs on its own workspace (OpenBLAS's
// OpenMP build runs serially inside a parallel region); with one sample the
// batch loop is serial and OpenBLAS threads the GEMM itself.
#include <omp.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "conv_impl.hpp"
#include "tapegrad/kernels/gemm.hpp"

namespace tg::kernels::conv_impl {
namespace {

std::int64_t col_rows(const ConvGeometry& g) { return g.Cg * g.ker_vol(); }

// Copies the patches of one group's Cg channels (x points at its first channel) into col.
template <class T>
void im2col(const ConvGeometry& g, const T* x, T* col) {
  const std::int64_t ov = g.out_vol(), iv = g.in_vol(), s2 = g.stride[2];
  for (std::int64_t c = 0; c < g.Cg; ++c)
    for (std::int64_t t0 = 0; t0 < g.ker[0]; ++t0)
      for (std::int64_t t1 = 0; t1 < g.ker[1]; ++t1)
        for (std::int64_t t2 = 0; t2 < g.ker[2]; ++t2) {
          T* crow = col + (((c * g.ker[0] + t0) * g.ker[1] + t1) * g.ker[2] + t2) * ov;
          const TapRange r = tap_range(g, 2, t2);
          for (std::int64_t o0 = 0; o0 < g.out[0]; ++o0) {
            const std::int64_t i0 = input_index(g, 0, o0, t0);
            for (std::int64_t o1 = 0; o1 < g.out[1]; ++o1) {
              T* dst = crow + (o0 * g.out[1] + o1) * g.out[2];
              const std::int64_t i1 = input_index(g, 1, o1, t1);
              if (i0 < 0 || i1 < 0 || r.empty()) {
                std::fill(dst, dst + g.out[2], T(0));
                continue;
              }
              const T* src = x + c * iv + (i0 * g.in[1] + i1) * g.in[2] + r.offset + r.begin * s2;
              std::fill(dst, dst + r.begin, T(0));
              if (s2 == 1)
                std::copy(src, src + (r.end - r.begin), dst + r.begin);
              else
                for (std::int64_t o = 0; o < r.end - r.begin; ++o) dst[r.begin + o] = src[o * s2];
              std::fill(dst + r.end, dst + g.out[2], T(0));
            }
          }
        }
}

// The adjoint of im2col: adds every column entry back onto the input pixel it came from.
template <class T>
void col2im(const ConvGeometry& g, const T* col, T* gx) {
  const std::int64_t ov = g.out_vol(), iv = g.in_vol(), s2 = g.stride[2];
  for (std::int64_t c = 0; c < g.Cg; ++c)
    for (std::int64_t t0 = 0; t0 < g.ker[0]; ++t0)
      for (std::int64_t t1 = 0; t1 < g.ker[1]; ++t1)
        for (std::int64_t t2 = 0; t2 < g.ker[2]; ++t2) {
          const T* crow = col + (((c * g.ker[0] + t0) * g.ker[1] + t1) * g.ker[2] + t2) * ov;
          const TapRange r = tap_range(g, 2, t2);
          if (r.empty()) continue;
          for (std::int64_t o0 = 0; o0 < g.out[0]; ++o0) {
            const std::int64_t i0 = input_index(g, 0, o0, t0);
            if (i0 < 0) continue;
            for (std::int64_t o1 = 0; o1 < g.out[1]; ++o1) {
              const std::int64_t i1 = input_index(g, 1, o1, t1);
              if (i1 < 0) continue;
              const T* src = crow + (o0 * g.out[1] + o1) * g.out[2] + r.begin;
              T* dst = gx + c * iv + (i0 * g.in[1] + i1) * g.in[2] + r.offset + r.begin * s2;
              if (s2 == 1)
                for (std::int64_t o = 0; o < r.end - r.begin; ++o) dst[o] += src[o];
              else
                for (std::int64_t o = 0; o < r.end - r.begin; ++o) dst[o * s2] += src[o];
            }
          }
        }
}

// Per-thread scratch, uninitialised.
template <class T>
struct Workspaces {
  Workspaces(int threads, std::int64_t elements) {
    for (int t = 0; t < threads; ++t) buffers.emplace_back(elements > 0 ? new T[static_cast<std::size_t>(elements)] : nullptr);
  }
  T* operator[](int t) { return buffers[static_cast<std::size_t>(t)].get(); }
  std::vector<std::unique_ptr<T[]>> buffers;
};

int batch_threads(const ConvGeometry& g) {
  return static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(conv_threads(), g.N)));
}

// Runs body(n, thread) for every sample: split over threads when the batch allows,
// else serially (OpenBLAS then threads each GEMM).
template <class Body>
void for_each_sample(const ConvGeometry& g, int threads, Body body) {
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    {
      const int t = omp_get_thread_num();
#pragma omp for schedule(static)
      for (std::int64_t n = 0; n < g.N; ++n) body(n, t);
    }
  } else {
    for (std::int64_t n = 0; n < g.N; ++n) body(n, 0);
  }
}

}  // namespace

template <class T>
void im2col_forward(const ConvGeometry& g, const T* x, const T* w, T* y, bool accumulate) {
  const std::int64_t R = col_rows(g), ov = g.out_vol(), iv = g.in_vol();
  const int threads = batch_threads(g);
  Workspaces<T> ws(threads, g.pointwise() ? 0 : R * ov);
  for_each_sample(g, threads, [&](std::int64_t n, int t) {
    for (std::int64_t grp = 0; grp < g.groups; ++grp) {
      const T* xg = x + (n * g.C + grp * g.Cg) * iv;
      const T* col = xg;
      if (!g.pointwise()) {
        im2col(g, xg, ws[t]);
        col = ws[t];
      }
      // y_g (Kg x out_vol) = W_g (Kg x R) . col (R x out_vol)
      gemm(false, false, g.Kg, ov, R, T(1), w + grp * g.Kg * R, R, col, ov, accumulate ? T(1) : T(0),
           y + (n * g.K + grp * g.Kg) * ov, ov);
    }
  });
}

template <class T>
void im2col_backward_input(const ConvGeometry& g, const T* gy, const T* w, T* gx) {
  const std::int64_t R = col_rows(g), ov = g.out_vol(), iv = g.in_vol();
  const int threads = batch_threads(g);
  Workspaces<T> ws(threads, g.pointwise() ? 0 : R * ov);
  for_each_sample(g, threads, [&](std::int64_t n, int t) {
    for (std::int64_t grp = 0; grp < g.groups; ++grp) {
      const T* wg = w + grp * g.Kg * R;
      const T* gyg = gy + (n * g.K + grp * g.Kg) * ov;
      T* gxg = gx + (n * g.C + grp * g.Cg) * iv;
      if (g.pointwise()) {
        // gx_g (Cg x in_vol) += W_g^T (Cg x Kg) . gy_g (Kg x out_vol)
        gemm(true, false, R, ov, g.Kg, T(1), wg, R, gyg, ov, T(1), gxg, ov);
        continue;
      }
      // col (R x out_vol) = W_g^T (R x Kg) . gy_g (Kg x out_vol)
      gemm(true, false, R, ov, g.Kg, T(1), wg, R, gyg, ov, T(0), ws[t], ov);
      col2im(g, ws[t], gxg);
    }
  });
}

template <class T>
void im2col_backward_weight(const ConvGeometry& g, const T* x, const T* gy, T* gw) {
  const std::int64_t R = col_rows(g), ov = g.out_vol(), iv = g.in_vol(), wsize = g.K * R;
  const int threads = batch_threads(g);
  Workspaces<T> ws(threads, g.pointwise() ? 0 : R * ov);
  // Thread 0 accumulates straight into gw; the others into partial sums added at the end.
  Workspaces<T> partial(threads, wsize);
  for (int t = 1; t < threads; ++t) std::fill(partial[t], partial[t] + wsize, T(0));
  for_each_sample(g, threads, [&](std::int64_t n, int t) {
    T* acc = t == 0 ? gw : partial[t];
    for (std::int64_t grp = 0; grp < g.groups; ++grp) {
      const T* xg = x + (n * g.C + grp * g.Cg) * iv;
      const T* col = xg;
      if (!g.pointwise()) {
        im2col(g, xg, ws[t]);
        col = ws[t];
      }
      // gW_g (Kg x R) += gy_g (Kg x out_vol) . col^T (out_vol x R)
      gemm(false, true, g.Kg, R, ov, T(1), gy + (n * g.K + grp * g.Kg) * ov, ov, col, ov, T(1), acc + grp * g.Kg * R, R);
    }
  });
  for (int t = 1; t < threads; ++t)
    for (std::int64_t i = 0; i < wsize; ++i) gw[i] += partial[t][i];
}

#define TG_INSTANTIATE(T)                                                                    \
  template void im2col_forward<T>(const ConvGeometry&, const T*, const T*, T*, bool);        \
  template void im2col_backward_input<T>(const ConvGeometry&, const T*, const T*, T*);        \
  template void im2col_backward_weight<T>(const ConvGeometry&, const T*, const T*, T*);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg::kernels::conv_impl
