// FFT convolution (stride 1, dilation 1) for large kernels, on FFTW3.
//
// Why FFTW: measured on this machine, a 576x576 real 2-D transform takes
// 1.7 ms with FFTW (FFTW_ESTIMATE plans) and 10.2 ms with Eigen's FFT module
// (kissfft); 144x144: 0.07 vs 0.43 ms. The FFT path exists only for speed, so
// the 5-9x decides it (Debian's libfftw3-dev; GPL-2+, see README).
//
// With xp the zero-padded input (extent P = in + lo + hi per dim) and a grid
// of F >= P points per dim, no circular wrap-around reaches the cropped result
// of any pass, because every linear result fits in P points:
//   forward:          y[o]  = sum_t xp[o+t] w[t]          Y   = sum_c XP . conj(W)
//   backward input:   gxp[p] = sum_t gy[p-t] w[t]          GXP = sum_k GY . W      (then crop by lo)
//   backward weight:  gw[t] = sum_o xp[o+t] gy[o]          GW  = sum_n XP . conj(GY)
// Every plane is transformed once per pass (real-to-complex 3-D transforms on
// the (F0, F1, F2) grid, unused dims of size 1) and the products are summed in
// the frequency domain. Planes are split over OpenMP threads; each thread has
// its own buffers and shares the cached plans.
#include <fftw3.h>
#include <fmt/format.h>
#include <omp.h>

#include <array>
#include <complex>
#include <map>
#include <mutex>
#include <span>
#include <vector>

#include "conv_impl.hpp"
#include "fft_size.hpp"
#include "tapegrad/kernels/error.hpp"
#include "tapegrad/kernels/scratch.hpp"
#include "tapegrad/kernels/threads.hpp"

namespace tg::kernels::conv_impl {
namespace {

using Dims = ConvGeometry::Dims;


// FFTW's double and float APIs behind one name, with a process-wide cache of
// plans by grid size: planning (even FFTW_ESTIMATE) costs about as much as a
// transform, and FFTW_UNALIGNED plans run on any arrays, from any thread at
// once (only the planner needs the lock).
template <class T>
struct Fftw;

// Note [FFTW without buffers]: plans are made with FFTW_NO_BUFFERING where FFTW
// can: a buffered plan mallocs a buffer on every execute, and a replayed conv
// must not allocate (issue 5). Sizes it cannot plan so fall back to buffering.
constexpr unsigned kPlanFlags = FFTW_ESTIMATE | FFTW_UNALIGNED;

// Note [One FFTW planner lock]: FFTW's planner keeps global state (its wisdom,
// its twiddle tables) and is not thread-safe; only executing a plan is. Every
// planner call of this process, double and float, r2c and c2r, runs under this
// one mutex, which also guards the plan caches. (One mutex per cache let an r2c
// and a c2r plan be made at once from two user threads: heap corruption, issue
// 22.) FFTW's own fftw_make_planner_thread_safe was the alternative; it needs
// libfftw3_threads linked for a lock this file can hold itself.
std::mutex& planner_mutex() {
  static std::mutex mutex;
  return mutex;
}

// Plans are made on the calling thread, before any parallel region (Spectral3),
// so that a planning failure is a tg::Error the caller can catch: thrown inside
// an OpenMP region it would terminate the process. `make(flags, real, spec)` is
// handed scratch arrays of the grid's size, allocated only when the plan is new
// (FFTW_ESTIMATE never writes them).
template <class T, class Make>
typename Fftw<T>::Plan cached_plan(const int n[3], bool inverse, Make make) {
  using Plan = typename Fftw<T>::Plan;
  // Never destroyed: plans live as long as the process (and stay reachable, so
  // LeakSanitizer does not count them). One cache per precision.
  static auto* plans = new std::map<std::array<int, 4>, Plan>;
  std::lock_guard lock(planner_mutex());
  const std::array<int, 4> key{n[0], n[1], n[2], inverse ? 1 : 0};
  auto it = plans->find(key);
  if (it == plans->end()) {
    const std::size_t half = static_cast<std::size_t>(n[0]) * static_cast<std::size_t>(n[1]) * static_cast<std::size_t>(n[2] / 2 + 1);
    std::vector<T> real(2 * half);  // >= n0 * n1 * n2
    std::vector<std::complex<T>> spec(half);
    Plan plan = make(kPlanFlags | FFTW_NO_BUFFERING, real.data(), spec.data());
    if (!plan) plan = make(kPlanFlags, real.data(), spec.data());
    if (!plan) fail("conv (fft)", fmt::format("FFTW could not plan a {}x{}x{} transform", n[0], n[1], n[2]));
    it = plans->emplace(key, plan).first;
  }
  return it->second;
}

template <>
struct Fftw<double> {
  using Plan = fftw_plan;
  static Plan r2c(const int n[3]) {
    return cached_plan<double>(n, false, [&](unsigned flags, double* in, std::complex<double>* out) {
      return fftw_plan_dft_r2c(3, n, in, reinterpret_cast<fftw_complex*>(out), flags);
    });
  }
  static Plan c2r(const int n[3]) {
    return cached_plan<double>(n, true, [&](unsigned flags, double* out, std::complex<double>* in) {
      return fftw_plan_dft_c2r(3, n, reinterpret_cast<fftw_complex*>(in), out, flags);
    });
  }
  static void r2c(Plan p, double* in, std::complex<double>* out) { fftw_execute_dft_r2c(p, in, reinterpret_cast<fftw_complex*>(out)); }
  static void c2r(Plan p, std::complex<double>* in, double* out) { fftw_execute_dft_c2r(p, reinterpret_cast<fftw_complex*>(in), out); }
};

template <>
struct Fftw<float> {
  using Plan = fftwf_plan;
  static Plan r2c(const int n[3]) {
    return cached_plan<float>(n, false, [&](unsigned flags, float* in, std::complex<float>* out) {
      return fftwf_plan_dft_r2c(3, n, in, reinterpret_cast<fftwf_complex*>(out), flags);
    });
  }
  static Plan c2r(const int n[3]) {
    return cached_plan<float>(n, true, [&](unsigned flags, float* out, std::complex<float>* in) {
      return fftwf_plan_dft_c2r(3, n, reinterpret_cast<fftwf_complex*>(in), out, flags);
    });
  }
  static void r2c(Plan p, float* in, std::complex<float>* out) { fftwf_execute_dft_r2c(p, in, reinterpret_cast<fftwf_complex*>(out)); }
  static void c2r(Plan p, std::complex<float>* in, float* out) { fftwf_execute_dft_c2r(p, reinterpret_cast<fftwf_complex*>(in), out); }
};

// The transform grid of one pass and one thread's plans and real buffer on it.
template <class T>
class Spectral3 {
 public:
  using C = std::complex<T>;

  // Plans (or finds) the grid's transforms: on the calling thread, outside any parallel region.
  explicit Spectral3(const Dims& padded)
      : F_{fft_size(padded[0]), fft_size(padded[1]), fft_size(padded[2])}, H_(F_[2] / 2 + 1) {
    const int n[3] = {int(F_[0]), int(F_[1]), int(F_[2])};
    forward_ = Fftw<T>::r2c(n);
    inverse_ = Fftw<T>::c2r(n);
  }

  std::int64_t size() const { return F_[0] * F_[1] * H_; }
  std::int64_t real_size() const { return F_[0] * F_[1] * F_[2]; }

  class Worker {
   public:
    // Its buffers come from the calling thread's scratch stack (`scope`).
    Worker(const Spectral3& grid, ScratchScope& scope) : g_(grid), real_(scope.take<T>(grid.real_size())) {}
    Worker(const Worker&) = delete;
    Worker& operator=(const Worker&) = delete;

    // spec = DFT of src (extent `dims`) placed at offset `at` in an all-zero grid.
    void forward(const T* src, const Dims& dims, const Dims& at, C* spec) {
      std::fill(real_.begin(), real_.end(), T(0));
      for (std::int64_t i0 = 0; i0 < dims[0]; ++i0)
        for (std::int64_t i1 = 0; i1 < dims[1]; ++i1) {
          const T* in = src + (i0 * dims[1] + i1) * dims[2];
          std::copy(in, in + dims[2], real_.data() + ((i0 + at[0]) * g_.F_[1] + (i1 + at[1])) * g_.F_[2] + at[2]);
        }
      Fftw<T>::r2c(g_.forward_, real_.data(), spec);
    }

    // out[i] += IDFT(spec)[at + i] for i within `dims`; spec is overwritten.
    void inverse_add(C* spec, const Dims& at, const Dims& dims, T* out) {
      Fftw<T>::c2r(g_.inverse_, spec, real_.data());
      const T scale = T(1) / static_cast<T>(g_.real_size());  // FFTW's transforms are unnormalised
      for (std::int64_t i0 = 0; i0 < dims[0]; ++i0)
        for (std::int64_t i1 = 0; i1 < dims[1]; ++i1) {
          const T* row = real_.data() + ((i0 + at[0]) * g_.F_[1] + (i1 + at[1])) * g_.F_[2] + at[2];
          T* dst = out + (i0 * dims[1] + i1) * dims[2];
          for (std::int64_t i2 = 0; i2 < dims[2]; ++i2) dst[i2] += scale * row[i2];
        }
    }

   private:
    const Spectral3& g_;
    std::span<T> real_;
  };

 private:
  Dims F_;
  std::int64_t H_;
  typename Fftw<T>::Plan forward_, inverse_;
};

Dims padded_extent(const ConvGeometry& g) {
  return {g.in[0] + g.lo[0] + g.hi[0], g.in[1] + g.lo[1] + g.hi[1], g.in[2] + g.lo[2] + g.hi[2]};
}

// Transforms `count` planes of extent `dims` (plane i at src + i * volume) placed
// at `at`; the spectra are taken from `scope` (the caller's scratch stack).
template <class T>
std::complex<T>* transform_planes(ScratchScope& scope, const Spectral3<T>& grid, const T* src, std::int64_t count,
                                  const Dims& dims, const Dims& at) {
  const std::int64_t vol = dims[0] * dims[1] * dims[2];
  std::complex<T>* spec = scope.take<std::complex<T>>(count * grid.size()).data();
#pragma omp parallel num_threads(tg::num_threads())
  {
    ScratchScope mine;  // each thread's transform buffers
    typename Spectral3<T>::Worker worker(grid, mine);
#pragma omp for schedule(dynamic)
    for (std::int64_t i = 0; i < count; ++i) worker.forward(src + i * vol, dims, at, spec + i * grid.size());
  }
  return spec;
}

// For every output plane j < count: acc = sum over (a, b) in terms(j) of
// A[a] . (conjugate ? conj(B[b]) : B[b]); then out plane j += IDFT(acc) cropped.
template <class T, class Terms>
void combine_and_invert(const Spectral3<T>& grid, std::int64_t count, const std::complex<T>* A, const std::complex<T>* B,
                        bool conjugate, Terms terms, const Dims& at, const Dims& dims, T* out) {
  const std::int64_t S = grid.size(), vol = dims[0] * dims[1] * dims[2];
#pragma omp parallel num_threads(tg::num_threads())
  {
    ScratchScope mine;  // each thread's transform buffers and accumulator
    typename Spectral3<T>::Worker worker(grid, mine);
    std::complex<T>* acc = mine.take<std::complex<T>>(S).data();
#pragma omp for schedule(dynamic)
    for (std::int64_t j = 0; j < count; ++j) {
      std::fill(acc, acc + S, std::complex<T>(0));
      terms(j, [&](std::int64_t a, std::int64_t b) {
        const std::complex<T>* pa = A + a * S;
        const std::complex<T>* pb = B + b * S;
        if (conjugate)
          for (std::int64_t s = 0; s < S; ++s) acc[s] += pa[s] * std::conj(pb[s]);
        else
          for (std::int64_t s = 0; s < S; ++s) acc[s] += pa[s] * pb[s];
      });
      worker.inverse_add(acc, at, dims, out + j * vol);
    }
  }
}

}  // namespace

template <class T>
void fft_forward(const ConvGeometry& g, const T* x, const T* w, T* y, bool accumulate) {
  if (!accumulate) std::fill(y, y + g.N * g.K * g.out_vol(), T(0));
  const Spectral3<T> grid(padded_extent(g));
  ScratchScope scope;
  const auto* X = transform_planes(scope, grid, x, g.N * g.C, g.in, g.lo);
  const auto* W = transform_planes(scope, grid, w, g.K * g.Cg, g.ker, Dims{0, 0, 0});
  // Y[n,k] = sum_c X[n, group c] . conj(W[k, c])
  combine_and_invert(
      grid, g.N * g.K, X, W, true,
      [&](std::int64_t nk, auto term) {
        const std::int64_t n = nk / g.K, k = nk % g.K, group = k / g.Kg;
        for (std::int64_t c = 0; c < g.Cg; ++c) term(n * g.C + group * g.Cg + c, k * g.Cg + c);
      },
      Dims{0, 0, 0}, g.out, y);
}

template <class T>
void fft_backward_input(const ConvGeometry& g, const T* gy, const T* w, T* gx) {
  const Spectral3<T> grid(padded_extent(g));
  ScratchScope scope;
  const auto* GY = transform_planes(scope, grid, gy, g.N * g.K, g.out, Dims{0, 0, 0});
  const auto* W = transform_planes(scope, grid, w, g.K * g.Cg, g.ker, Dims{0, 0, 0});
  // GXP[n,c] = sum_k GY[n,k] . W[k,c]; gx is gxp cropped at the low padding
  combine_and_invert(
      grid, g.N * g.C, GY, W, false,
      [&](std::int64_t nc, auto term) {
        const std::int64_t n = nc / g.C, channel = nc % g.C, group = channel / g.Cg, c = channel % g.Cg;
        for (std::int64_t k = group * g.Kg; k < (group + 1) * g.Kg; ++k) term(n * g.K + k, k * g.Cg + c);
      },
      g.lo, g.in, gx);
}

template <class T>
void fft_backward_weight(const ConvGeometry& g, const T* x, const T* gy, T* gw) {
  const Spectral3<T> grid(padded_extent(g));
  ScratchScope scope;
  const auto* X = transform_planes(scope, grid, x, g.N * g.C, g.in, g.lo);
  const auto* GY = transform_planes(scope, grid, gy, g.N * g.K, g.out, Dims{0, 0, 0});
  // GW[k,c] = sum_n XP[n, group c] . conj(GY[n,k])
  combine_and_invert(
      grid, g.K * g.Cg, X, GY, true,
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
