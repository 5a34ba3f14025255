// FFT convolution (stride 1, dilation 1) for large kernels, on Eigen's FFT
// module (kissfft: header-only, no new dependency; see README for why not FFTW).
//
// With xp the zero-padded input (extent P = in + lo + hi per dim) and a grid
// of F >= P points per dim, no circular wrap-around reaches the cropped result
// of any pass, because every linear result fits in P points:
//   forward:          y[o]  = sum_t xp[o+t] w[t]          Y   = sum_c XP . conj(W)
//   backward input:   gxp[p] = sum_t gy[p-t] w[t]          GXP = sum_k GY . W      (then crop by lo)
//   backward weight:  gw[t] = sum_o xp[o+t] gy[o]          GW  = sum_n XP . conj(GY)
// Every plane is transformed once per pass (real-to-complex along the
// contiguous dim, complex along the others) and the products are summed in the
// frequency domain. Planes are split over OpenMP threads, each with its own
// Eigen::FFT (which caches plans and is not thread-safe).
#include <unsupported/Eigen/FFT>

#include <omp.h>

#include <complex>
#include <vector>

#include "conv_impl.hpp"
#include "fft_size.hpp"

namespace tg::kernels::conv_impl {
namespace {

using Dims = ConvGeometry::Dims;

template <class T>
class Spectral3 {
 public:
  using C = std::complex<T>;

  explicit Spectral3(const Dims& padded)
      : F_{fft_size(padded[0]), fft_size(padded[1]), fft_size_real(padded[2])}, H_(F_[2] / 2 + 1) {}

  std::int64_t size() const { return F_[0] * F_[1] * H_; }

  // spec = DFT of src (extent `dims`) placed at offset `at` in an all-zero grid.
  void forward(Eigen::FFT<T>& fft, const T* src, const Dims& dims, const Dims& at, C* spec) const {
    std::vector<T> row(static_cast<std::size_t>(F_[2]));
    for (std::int64_t p0 = 0; p0 < F_[0]; ++p0)
      for (std::int64_t p1 = 0; p1 < F_[1]; ++p1) {
        C* out = spec + (p0 * F_[1] + p1) * H_;
        const std::int64_t s0 = p0 - at[0], s1 = p1 - at[1];
        if (s0 < 0 || s0 >= dims[0] || s1 < 0 || s1 >= dims[1]) {
          std::fill(out, out + H_, C(0));
          continue;
        }
        std::fill(row.begin(), row.end(), T(0));
        const T* in = src + (s0 * dims[1] + s1) * dims[2];
        std::copy(in, in + dims[2], row.begin() + at[2]);
        fft.fwd(out, row.data(), F_[2]);
      }
    along_outer_dims(fft, spec, /*inverse=*/false);
  }

  // out[i] += IDFT(spec)[at + i] for i within `dims`; spec is overwritten.
  void inverse_add(Eigen::FFT<T>& fft, C* spec, const Dims& at, const Dims& dims, T* out) const {
    along_outer_dims(fft, spec, /*inverse=*/true);
    std::vector<T> row(static_cast<std::size_t>(F_[2]));
    for (std::int64_t i0 = 0; i0 < dims[0]; ++i0)
      for (std::int64_t i1 = 0; i1 < dims[1]; ++i1) {
        fft.inv(row.data(), spec + ((i0 + at[0]) * F_[1] + (i1 + at[1])) * H_, F_[2]);
        T* dst = out + (i0 * dims[1] + i1) * dims[2];
        for (std::int64_t i2 = 0; i2 < dims[2]; ++i2) dst[i2] += row[static_cast<std::size_t>(at[2] + i2)];
      }
  }

 private:
  // Complex transforms along dims 1 and 0 of the (F0, F1, H) half-spectrum grid.
  void along_outer_dims(Eigen::FFT<T>& fft, C* spec, bool inverse) const {
    std::vector<C> line(static_cast<std::size_t>(std::max(F_[0], F_[1]))), done(line.size());
    auto transform = [&](std::int64_t n, std::int64_t stride, C* base) {
      if (n == 1) return;
      for (std::int64_t i = 0; i < n; ++i) line[static_cast<std::size_t>(i)] = base[i * stride];
      if (inverse)
        fft.inv(done.data(), line.data(), n);
      else
        fft.fwd(done.data(), line.data(), n);
      for (std::int64_t i = 0; i < n; ++i) base[i * stride] = done[static_cast<std::size_t>(i)];
    };
    for (std::int64_t p0 = 0; p0 < F_[0]; ++p0)
      for (std::int64_t h = 0; h < H_; ++h) transform(F_[1], H_, spec + p0 * F_[1] * H_ + h);
    for (std::int64_t p1 = 0; p1 < F_[1]; ++p1)
      for (std::int64_t h = 0; h < H_; ++h) transform(F_[0], F_[1] * H_, spec + p1 * H_ + h);
  }

  Dims F_;
  std::int64_t H_;
};

Dims padded_extent(const ConvGeometry& g) {
  return {g.in[0] + g.lo[0] + g.hi[0], g.in[1] + g.lo[1] + g.hi[1], g.in[2] + g.lo[2] + g.hi[2]};
}

// Transforms `count` planes of extent `dims` (plane i at src + i * volume) placed at `at`.
template <class T>
std::vector<std::complex<T>> transform_planes(const Spectral3<T>& grid, const T* src, std::int64_t count,
                                              const Dims& dims, const Dims& at) {
  const std::int64_t vol = dims[0] * dims[1] * dims[2];
  std::vector<std::complex<T>> spec(static_cast<std::size_t>(count * grid.size()));
#pragma omp parallel
  {
    Eigen::FFT<T> fft;
    fft.SetFlag(Eigen::FFT<T>::HalfSpectrum);
#pragma omp for schedule(dynamic)
    for (std::int64_t i = 0; i < count; ++i) grid.forward(fft, src + i * vol, dims, at, spec.data() + i * grid.size());
  }
  return spec;
}

// For every output plane j < count: acc = sum over (a, b) in terms(j) of
// A[a] . (conjugate ? conj(B[b]) : B[b]); then out plane j += IDFT(acc) cropped.
template <class T, class Terms>
void combine_and_invert(const Spectral3<T>& grid, std::int64_t count, const std::complex<T>* A, const std::complex<T>* B,
                        bool conjugate, Terms terms, const Dims& at, const Dims& dims, T* out) {
  const std::int64_t S = grid.size(), vol = dims[0] * dims[1] * dims[2];
#pragma omp parallel
  {
    Eigen::FFT<T> fft;
    fft.SetFlag(Eigen::FFT<T>::HalfSpectrum);
    std::vector<std::complex<T>> acc(static_cast<std::size_t>(S));
#pragma omp for schedule(dynamic)
    for (std::int64_t j = 0; j < count; ++j) {
      std::fill(acc.begin(), acc.end(), std::complex<T>(0));
      terms(j, [&](std::int64_t a, std::int64_t b) {
        const std::complex<T>* pa = A + a * S;
        const std::complex<T>* pb = B + b * S;
        if (conjugate)
          for (std::int64_t s = 0; s < S; ++s) acc[static_cast<std::size_t>(s)] += pa[s] * std::conj(pb[s]);
        else
          for (std::int64_t s = 0; s < S; ++s) acc[static_cast<std::size_t>(s)] += pa[s] * pb[s];
      });
      grid.inverse_add(fft, acc.data(), at, dims, out + j * vol);
    }
  }
}

}  // namespace

template <class T>
void fft_forward(const ConvGeometry& g, const T* x, const T* w, T* y, bool accumulate) {
  if (!accumulate) std::fill(y, y + g.N * g.K * g.out_vol(), T(0));
  const Spectral3<T> grid(padded_extent(g));
  const auto X = transform_planes(grid, x, g.N * g.C, g.in, g.lo);
  const auto W = transform_planes(grid, w, g.K * g.Cg, g.ker, Dims{0, 0, 0});
  // Y[n,k] = sum_c X[n, group c] . conj(W[k, c])
  combine_and_invert(
      grid, g.N * g.K, X.data(), W.data(), true,
      [&](std::int64_t nk, auto term) {
        const std::int64_t n = nk / g.K, k = nk % g.K, group = k / g.Kg;
        for (std::int64_t c = 0; c < g.Cg; ++c) term(n * g.C + group * g.Cg + c, k * g.Cg + c);
      },
      Dims{0, 0, 0}, g.out, y);
}

template <class T>
void fft_backward_input(const ConvGeometry& g, const T* gy, const T* w, T* gx) {
  const Spectral3<T> grid(padded_extent(g));
  const auto GY = transform_planes(grid, gy, g.N * g.K, g.out, Dims{0, 0, 0});
  const auto W = transform_planes(grid, w, g.K * g.Cg, g.ker, Dims{0, 0, 0});
  // GXP[n,c] = sum_k GY[n,k] . W[k,c]; gx is gxp cropped at the low padding
  combine_and_invert(
      grid, g.N * g.C, GY.data(), W.data(), false,
      [&](std::int64_t nc, auto term) {
        const std::int64_t n = nc / g.C, channel = nc % g.C, group = channel / g.Cg, c = channel % g.Cg;
        for (std::int64_t k = group * g.Kg; k < (group + 1) * g.Kg; ++k) term(n * g.K + k, k * g.Cg + c);
      },
      g.lo, g.in, gx);
}

template <class T>
void fft_backward_weight(const ConvGeometry& g, const T* x, const T* gy, T* gw) {
  const Spectral3<T> grid(padded_extent(g));
  const auto X = transform_planes(grid, x, g.N * g.C, g.in, g.lo);
  const auto GY = transform_planes(grid, gy, g.N * g.K, g.out, Dims{0, 0, 0});
  // GW[k,c] = sum_n XP[n, group c] . conj(GY[n,k])
  combine_and_invert(
      grid, g.K * g.Cg, X.data(), GY.data(), true,
      [&](std::int64_t kc, auto term) {
        const std::int64_t k = kc / g.Cg, c = kc % g.Cg, group = k / g.Kg;
        for (std::int64_t n = 0; n < g.N; ++n) term(n * g.C + group * g.Cg + c, n * g.K + k);
      },
      Dims{0, 0, 0}, g.ker, gw);
}

#define TG_INSTANTIATE(T)                                                                 \
  template void fft_forward<T>(const ConvGeometry&, const T*, const T*, T*, bool);        \
  template void fft_backward_input<T>(const ConvGeometry&, const T*, const T*, T*);        \
  template void fft_backward_weight<T>(const ConvGeometry&, const T*, const T*, T*);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg::kernels::conv_impl
