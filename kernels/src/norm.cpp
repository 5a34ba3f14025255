#include "tapegrad/kernels/norm.hpp"

#include <algorithm>
#include <cmath>

#include "clones.hpp"
#include "tapegrad/kernels/parallel.hpp"
#include "tapegrad/kernels/scratch.hpp"

namespace tg::kernels {
namespace {

// Note [Blocked sums]: a float accumulator loses digits over 10^6 elements, and
// a double one halves the vector width and converts every element. The sums
// here add float lanes over blocks of kSumBlock elements (64 per lane at AVX2)
// and the blocks' totals in double: within float's rounding of the double sum,
// at float's speed. Rejected: Welford's update, a division per element.
constexpr std::int64_t kSumBlock = 512;

// The run loops: every choice a template parameter (a branch inside stops the
// vectorizer), inlined into one clone per type below (Note [Update loops]).
template <class T>
__attribute__((always_inline)) inline double sum_loop(const T* __restrict x, std::int64_t n) {
  double total = 0;
  for (std::int64_t b = 0; b < n; b += kSumBlock) {
    const std::int64_t e = std::min(n, b + kSumBlock);
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (std::int64_t j = b; j < e; ++j) s += x[j];
    total += static_cast<double>(s);
  }
  return total;
}

template <class T>
__attribute__((always_inline)) inline double squared_deviation_loop(const T* __restrict x, std::int64_t n, T mean) {
  double total = 0;
  for (std::int64_t b = 0; b < n; b += kSumBlock) {
    const std::int64_t e = std::min(n, b + kSumBlock);
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (std::int64_t j = b; j < e; ++j) s += (x[j] - mean) * (x[j] - mean);
    total += static_cast<double>(s);
  }
  return total;
}

// y = x * scale + shift, then the ReLU when Relu.
template <class T, bool Relu>
__attribute__((always_inline)) inline void affine_loop(const T* __restrict x, std::int64_t n, T scale, T shift,
                                                       T* __restrict y) {
#pragma omp simd
  for (std::int64_t j = 0; j < n; ++j) {
    const T v = x[j] * scale + shift;
    y[j] = Relu ? std::max(T(0), v) : v;
  }
}

// The output adjoint as the normalisation sees it: zero where a fused ReLU's output y was off.
template <class T, bool Relu>
__attribute__((always_inline)) inline T adjoint_at(const T* __restrict dy, const T* __restrict y, std::int64_t j) {
  if constexpr (Relu) return y[j] > T(0) ? dy[j] : T(0);
  else return dy[j];
}

// sums[0] += sum of g, sums[1] += sum of g * (x - mean), g the adjoint as seen.
template <class T, bool Relu>
__attribute__((always_inline)) inline void adjoint_sums_loop(const T* __restrict x, const T* __restrict dy,
                                                             const T* __restrict y, std::int64_t n, T mean, double* sums) {
  for (std::int64_t b = 0; b < n; b += kSumBlock) {
    const std::int64_t e = std::min(n, b + kSumBlock);
    T s0 = 0, s1 = 0;
#pragma omp simd reduction(+ : s0, s1)
    for (std::int64_t j = b; j < e; ++j) {
      const T g = adjoint_at<T, Relu>(dy, y, j);
      s0 += g;
      s1 += g * (x[j] - mean);
    }
    sums[0] += static_cast<double>(s0);
    sums[1] += static_cast<double>(s1);
  }
}

// dx (=, or += when Add) k_dy * g + k_const + k_x * (x - mean).
template <class T, bool Relu, bool Add>
__attribute__((always_inline)) inline void input_adjoint_loop(const T* __restrict x, const T* __restrict dy,
                                                              const T* __restrict y, std::int64_t n, T mean,
                                                              const T* k, T* __restrict dx) {
  const T k_dy = k[0], k_const = k[1], k_x = k[2];
#pragma omp simd
  for (std::int64_t j = 0; j < n; ++j) {
    const T v = k_dy * adjoint_at<T, Relu>(dy, y, j) + k_const + k_x * (x[j] - mean);
    if constexpr (Add) dx[j] += v;
    else dx[j] = v;
  }
}

// Each loop at two levels per type (Note [Two-level loops] in clones.hpp); y
// null means no ReLU, and k is (k_dy, k_const, k_x).
#define TG_NORM_LOOPS(T)                                                                                              \
  TG_AT_TWO_LEVELS(double, blocked_sum, (const T* x, std::int64_t n), (x, n), { return sum_loop(x, n); })            \
  TG_AT_TWO_LEVELS(double, squared_deviation_run, (const T* x, std::int64_t n, T mean), (x, n, mean),                \
                   { return squared_deviation_loop(x, n, mean); })                                                   \
  TG_AT_TWO_LEVELS(void, affine_run, (const T* x, std::int64_t n, T scale, T shift, bool relu, T* y),                \
                   (x, n, scale, shift, relu, y), {                                                                  \
                     if (relu) affine_loop<T, true>(x, n, scale, shift, y);                                          \
                     else affine_loop<T, false>(x, n, scale, shift, y);                                              \
                   })                                                                                                \
  TG_AT_TWO_LEVELS(void, adjoint_sums_run,                                                                           \
                   (const T* x, const T* dy, const T* y, std::int64_t n, T mean, double* sums),                      \
                   (x, dy, y, n, mean, sums), {                                                                      \
                     if (y) adjoint_sums_loop<T, true>(x, dy, y, n, mean, sums);                                     \
                     else adjoint_sums_loop<T, false>(x, dy, y, n, mean, sums);                                      \
                   })                                                                                                \
  TG_AT_TWO_LEVELS(void, input_adjoint_run,                                                                          \
                   (const T* x, const T* dy, const T* y, std::int64_t n, T mean, const T* k, bool add, T* dx),       \
                   (x, dy, y, n, mean, k, add, dx), {                                                                \
                     if (y && add) input_adjoint_loop<T, true, true>(x, dy, y, n, mean, k, dx);                      \
                     else if (y) input_adjoint_loop<T, true, false>(x, dy, y, n, mean, k, dx);                       \
                     else if (add) input_adjoint_loop<T, false, true>(x, dy, y, n, mean, k, dx);                     \
                     else input_adjoint_loop<T, false, false>(x, dy, y, n, mean, k, dx);                             \
                   })
TG_NORM_LOOPS(float)
TG_NORM_LOOPS(double)
#undef TG_NORM_LOOPS

// Note [Batch norm by planes]: the passes split their work by (sample,
// channel) planes, sample-major, as the convolutions around them split theirs
// by samples, so with two threads each thread reads the planes it wrote and
// writes those the next conv's same thread reads. Split by channel, every
// pass moved half of the activation between the threads, slow where they do
// not share an L3. Each plane's sum and squared deviations (about its own
// mean) are combined per channel in sample order (Chan, Golub and LeVeque's
// pairwise update), so the statistics do not depend on the thread count.
// Rejected: one pass of sums and sums of squares, which cancels catastrophically
// when the mean is large against the spread.
bool parallel_planes(const ChannelView& v) { return v.n * v.c * v.s > 32768 && v.n * v.c > 1; }

// stats[2 (n c + c)] = (sum, sum of squared deviations about centre[n c + c]) of each plane.
template <class T>
void plane_moments(const T* x, const ChannelView& v, double* stats) {
  parallel_for(v.n * v.c, threads_if(parallel_planes(v)), [&](std::int64_t p) {
    const T* plane = x + p * v.s;
    const double sum = blocked_sum(plane, v.s);
    const T centre = static_cast<T>(sum / static_cast<double>(v.s));
    // about the centre actually used, then shifted to the plane's exact mean
    const double exact = sum / static_cast<double>(v.s) - static_cast<double>(centre);
    stats[2 * p] = sum;
    stats[2 * p + 1] = squared_deviation_run(plane, v.s, centre) - static_cast<double>(v.s) * exact * exact;
  });
}

// Channel c's mean and sum of squared deviations from its planes' moments, in sample order.
void channel_moments(const ChannelView& v, const double* stats, std::int64_t c, double& mean, double& squares) {
  double sum = 0;
  for (std::int64_t n = 0; n < v.n; ++n) sum += stats[2 * (n * v.c + c)];
  mean = sum / static_cast<double>(v.per_channel());
  squares = 0;
  for (std::int64_t n = 0; n < v.n; ++n) {
    const double* p = stats + 2 * (n * v.c + c);
    const double apart = p[0] / static_cast<double>(v.s) - mean;
    squares += p[1] + static_cast<double>(v.s) * apart * apart;
  }
}

// affine[2c], affine[2c + 1] = the (scale, shift) that normalise channel c with
// mean mu and inverse deviation inv, then apply gamma and beta.
template <class T>
void channel_affine(const BatchNormArgs<T>& a, std::int64_t c, double mu, double inv, T* affine) {
  affine[2 * c] = static_cast<T>(static_cast<double>(a.gamma[c]) * inv);
  affine[2 * c + 1] = static_cast<T>(static_cast<double>(a.beta[c]) - mu * static_cast<double>(a.gamma[c]) * inv);
}

// y = x * scale + shift (then ReLU) per channel, a task per plane (Note [Batch norm by planes]).
template <class T>
void affine_planes(const BatchNormArgs<T>& a, const T* affine, T* y) {
  const ChannelView& v = a.v;
  const bool relu = a.activation == NormActivation::relu;
  parallel_for(v.n * v.c, threads_if(parallel_planes(v)), [&](std::int64_t p) {
    const std::int64_t c = p % v.c;
    affine_run(a.x + p * v.s, v.s, affine[2 * c], affine[2 * c + 1], relu, y + p * v.s);
  });
}
}  // namespace

template <class T>
void batch_norm_train_forward(const BatchNormArgs<T>& a, T* mean, T* invstd, T* y, T* running_mean, T* running_var,
                              double momentum) {
  const ChannelView& v = a.v;
  const double m = static_cast<double>(v.per_channel());
  ScratchScope scratch;
  double* stats = scratch.take<double>(2 * v.n * v.c).data();
  T* affine = scratch.take<T>(2 * v.c).data();  // (scale, shift) per channel
  plane_moments(a.x, v, stats);
  for (std::int64_t c = 0; c < v.c; ++c) {
    double mu, squares;
    channel_moments(v, stats, c, mu, squares);
    const double var = squares / m;
    const double inv = 1.0 / std::sqrt(var + a.eps);
    mean[c] = static_cast<T>(mu);
    invstd[c] = static_cast<T>(inv);
    channel_affine(a, c, mu, inv, affine);
    if (running_mean) {
      running_mean[c] = static_cast<T>((1 - momentum) * static_cast<double>(running_mean[c]) + momentum * mu);
      running_var[c] = static_cast<T>((1 - momentum) * static_cast<double>(running_var[c]) + momentum * var * m / (m - 1));
    }
  }
  affine_planes(a, affine, y);
}

template <class T>
void batch_norm_eval_forward(const BatchNormArgs<T>& a, const T* running_mean, const T* running_var, T* mean, T* invstd, T* y) {
  const ChannelView& v = a.v;
  ScratchScope scratch;
  T* affine = scratch.take<T>(2 * v.c).data();  // (scale, shift) per channel
  for (std::int64_t c = 0; c < v.c; ++c) {
    const double mu = static_cast<double>(running_mean[c]);
    const double inv = 1.0 / std::sqrt(static_cast<double>(running_var[c]) + a.eps);
    mean[c] = static_cast<T>(mu);
    invstd[c] = static_cast<T>(inv);
    channel_affine(a, c, mu, inv, affine);
  }
  affine_planes(a, affine, y);
}

template <class T>
void batch_norm_backward(const BatchNormArgs<T>& a, const T* mean, const T* invstd, bool batch_stats, const T* y, const T* dy,
                         T* dx, bool assign_dx, T* dgamma, T* dbeta) {
  const ChannelView& v = a.v;
  const double m = static_cast<double>(v.per_channel());
  const T* relu_y = a.activation == NormActivation::relu ? y : nullptr;
  ScratchScope scratch;
  double* stats = scratch.take<double>(2 * v.n * v.c).data();  // per plane: sum of g, of g * (x - mean)
  T* k = scratch.take<T>(3 * v.c).data();                      // per channel: (k_dy, k_const, k_x)
  parallel_for(v.n * v.c, threads_if(parallel_planes(v)), [&](std::int64_t p) {
    const std::int64_t at = p * v.s;
    stats[2 * p] = stats[2 * p + 1] = 0;
    adjoint_sums_run(a.x + at, dy + at, relu_y ? relu_y + at : nullptr, v.s, mean[p % v.c], stats + 2 * p);
  });
  for (std::int64_t c = 0; c < v.c; ++c) {
    double sums[2] = {0, 0};  // of g and of g * (x - mean), in sample order
    for (std::int64_t n = 0; n < v.n; ++n) sums[0] += stats[2 * (n * v.c + c)], sums[1] += stats[2 * (n * v.c + c) + 1];
    const double inv = static_cast<double>(invstd[c]);
    if (dbeta) dbeta[c] += static_cast<T>(sums[0]);
    if (dgamma) dgamma[c] += static_cast<T>(sums[1] * inv);
    // dx = gamma * invstd * (g - mean(g) - (x - mean) * invstd^2 * mean(g * (x - mean))), the
    // last two only when the statistics came from x.
    const double gi = static_cast<double>(a.gamma[c]) * inv;
    k[3 * c] = static_cast<T>(gi);
    k[3 * c + 1] = static_cast<T>(batch_stats ? -gi * sums[0] / m : 0.0);
    k[3 * c + 2] = static_cast<T>(batch_stats ? -gi * inv * inv * sums[1] / m : 0.0);
  }
  if (!dx) return;
  parallel_for(v.n * v.c, threads_if(parallel_planes(v)), [&](std::int64_t p) {
    const std::int64_t at = p * v.s, c = p % v.c;
    input_adjoint_run(a.x + at, dy + at, relu_y ? relu_y + at : nullptr, v.s, mean[c], k + 3 * c, !assign_dx, dx + at);
  });
}

namespace {
template <class T>
T affine_or(const T* p, std::int64_t k, T otherwise) {
  return p ? p[k] : otherwise;
}
// The affine index of element j of row r.
inline std::int64_t affine_index(const RowView& v, std::int64_t r, std::int64_t j) {
  return (r % v.groups) * (v.length / v.inner) + j / v.inner;
}
}  // namespace

template <class T>
void row_norm_forward(const RowNormArgs<T>& a, T* mean, T* invstd, T* y) {
  const RowView& v = a.v;
  parallel_for(v.rows, threads_if(v.rows * v.length > 32768 && v.rows > 1), [&](std::int64_t r) {
    const T* x = a.x + r * v.length;
    const double mu = blocked_sum(x, v.length) / static_cast<double>(v.length);
    const double inv =
        1.0 / std::sqrt(squared_deviation_run(x, v.length, static_cast<T>(mu)) / static_cast<double>(v.length) + a.eps);
    mean[r] = static_cast<T>(mu);
    invstd[r] = static_cast<T>(inv);
    T* out = y + r * v.length;
    if (v.inner == 1) {  // layer norm: gamma and beta per element
      const std::int64_t k0 = affine_index(v, r, 0);
#pragma omp simd
      for (std::int64_t j = 0; j < v.length; ++j) {
        const double xhat = (static_cast<double>(x[j]) - mu) * inv;
        out[j] = static_cast<T>(xhat * static_cast<double>(affine_or(a.gamma, k0 + j, T(1))) +
                                static_cast<double>(affine_or(a.beta, k0 + j, T(0))));
      }
      return;
    }
    for (std::int64_t j0 = 0; j0 < v.length; j0 += v.inner) {  // a run of `inner` elements shares gamma and beta
      const std::int64_t k = affine_index(v, r, j0);
      const double g = static_cast<double>(affine_or(a.gamma, k, T(1)));
      const T scale = static_cast<T>(g * inv);
      const T shift = static_cast<T>(static_cast<double>(affine_or(a.beta, k, T(0))) - mu * g * inv);
      affine_run(x + j0, v.inner, scale, shift, false, out + j0);
    }
  });
}

template <class T>
void row_norm_backward(const RowNormArgs<T>& a, const T* mean, const T* invstd, const T* dy, T* dx, T* dgamma, T* dbeta) {
  const RowView& v = a.v;
  const double len = static_cast<double>(v.length);
  if (dx)
    parallel_for(v.rows, threads_if(v.rows * v.length > 32768 && v.rows > 1), [&](std::int64_t r) {
      const T* x = a.x + r * v.length;
      const T* g = dy + r * v.length;
      const double mu = static_cast<double>(mean[r]), inv = static_cast<double>(invstd[r]);
      // With a = gamma * dy and xhat = (x - mean) * invstd: dx = invstd * (a - mean(a) - xhat * mean(a * xhat)).
      double sum_a = 0, sum_a_xhat = 0;
      for (std::int64_t j0 = 0; j0 < v.length; j0 += v.inner) {
        const double gam = static_cast<double>(affine_or(a.gamma, affine_index(v, r, j0), T(1)));
        double s0 = 0, s1 = 0;
#pragma omp simd reduction(+ : s0, s1)
        for (std::int64_t j = j0; j < j0 + v.inner; ++j) {
          s0 += static_cast<double>(g[j]);
          s1 += static_cast<double>(g[j]) * (static_cast<double>(x[j]) - mu);
        }
        sum_a += gam * s0;
        sum_a_xhat += gam * s1 * inv;
      }
      const T c0 = static_cast<T>(-inv * sum_a / len);
      const T c1 = static_cast<T>(-inv * inv * sum_a_xhat / len);
      const T mu_t = static_cast<T>(mu);
      T* out = dx + r * v.length;
      for (std::int64_t j0 = 0; j0 < v.length; j0 += v.inner) {
        const T k_dy = static_cast<T>(static_cast<double>(affine_or(a.gamma, affine_index(v, r, j0), T(1))) * inv);
#pragma omp simd
        for (std::int64_t j = j0; j < j0 + v.inner; ++j) out[j] += k_dy * g[j] + c0 + c1 * (x[j] - mu_t);
      }
    });
  if (!dgamma && !dbeta) return;
  // Per affine coefficient: its runs in every row of its group.
  const std::int64_t per_group = v.length / v.inner;
  parallel_for(v.affine_size(), threads_if(v.rows * v.length > 32768 && v.affine_size() > 1), [&](std::int64_t k) {
    const std::int64_t group = k / per_group, j0 = (k % per_group) * v.inner;
    double s_dy = 0, s_dy_xhat = 0;
    for (std::int64_t r = group; r < v.rows; r += v.groups) {
      const T* x = a.x + r * v.length + j0;
      const T* g = dy + r * v.length + j0;
      const double mu = static_cast<double>(mean[r]), inv = static_cast<double>(invstd[r]);
      double s0 = 0, s1 = 0;
#pragma omp simd reduction(+ : s0, s1)
      for (std::int64_t j = 0; j < v.inner; ++j) {
        s0 += static_cast<double>(g[j]);
        s1 += static_cast<double>(g[j]) * (static_cast<double>(x[j]) - mu);
      }
      s_dy += s0;
      s_dy_xhat += s1 * inv;
    }
    if (dbeta) dbeta[k] += static_cast<T>(s_dy);
    if (dgamma) dgamma[k] += static_cast<T>(s_dy_xhat);
  });
}

#define TG_NORM_INSTANCES(T)                                                                                          \
  template void batch_norm_train_forward(const BatchNormArgs<T>&, T*, T*, T*, T*, T*, double);                        \
  template void batch_norm_eval_forward(const BatchNormArgs<T>&, const T*, const T*, T*, T*, T*);                     \
  template void batch_norm_backward(const BatchNormArgs<T>&, const T*, const T*, bool, const T*, const T*, T*, bool, T*, T*); \
  template void row_norm_forward(const RowNormArgs<T>&, T*, T*, T*);                                                  \
  template void row_norm_backward(const RowNormArgs<T>&, const T*, const T*, const T*, T*, T*, T*);
TG_NORM_INSTANCES(float)
TG_NORM_INSTANCES(double)

}  // namespace tg::kernels
