#include "tapegrad/kernels/norm.hpp"

#include <algorithm>
#include <cmath>

#include "tapegrad/kernels/parallel.hpp"

namespace tg::kernels {
namespace {

// Calls body(run) for each contiguous run of channel c: n runs of s elements.
template <class T, class F>
void for_each_run(const T* base, const ChannelView& v, std::int64_t c, F&& body) {
  for (std::int64_t i = 0; i < v.n; ++i) body(base + (i * v.c + c) * v.s, (i * v.c + c) * v.s);
}

template <class T>
double run_sum(const T* x, std::int64_t n) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (std::int64_t j = 0; j < n; ++j) s += static_cast<double>(x[j]);
  return s;
}

template <class T>
double run_squared_deviation(const T* x, std::int64_t n, double mean) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (std::int64_t j = 0; j < n; ++j) {
    const double d = static_cast<double>(x[j]) - mean;
    s += d * d;
  }
  return s;
}

// y = x * scale + shift (then the activation), over one run.
template <class T>
void affine_run(const T* x, std::int64_t n, T scale, T shift, NormActivation act, T* y) {
  if (act == NormActivation::relu) {
#pragma omp simd
    for (std::int64_t j = 0; j < n; ++j) y[j] = std::max(T(0), x[j] * scale + shift);
  } else {
#pragma omp simd
    for (std::int64_t j = 0; j < n; ++j) y[j] = x[j] * scale + shift;
  }
}

// The output adjoint as the normalisation sees it: zero where a fused relu was off.
template <class T>
T adjoint_at(const T* dy, const T* y, std::int64_t j, NormActivation act) {
  return act == NormActivation::relu && !(y[j] > T(0)) ? T(0) : dy[j];
}

bool parallel_channels(const ChannelView& v) { return v.n * v.c * v.s > 32768 && v.c > 1; }

}  // namespace

template <class T>
void batch_norm_train_forward(const BatchNormArgs<T>& a, T* mean, T* invstd, T* y, T* running_mean, T* running_var,
                              double momentum) {
  const ChannelView& v = a.v;
  const double m = static_cast<double>(v.per_channel());
  parallel_for(v.c, threads_if(parallel_channels(v)), [&](std::int64_t c) {
    double sum = 0;
    for_each_run(a.x, v, c, [&](const T* run, std::int64_t) { sum += run_sum(run, v.s); });
    const double mu = sum / m;
    double squares = 0;
    for_each_run(a.x, v, c, [&](const T* run, std::int64_t) { squares += run_squared_deviation(run, v.s, mu); });
    const double var = squares / m;
    const double inv = 1.0 / std::sqrt(var + a.eps);
    mean[c] = static_cast<T>(mu);
    invstd[c] = static_cast<T>(inv);
    const T scale = static_cast<T>(static_cast<double>(a.gamma[c]) * inv);
    const T shift = static_cast<T>(static_cast<double>(a.beta[c]) - mu * static_cast<double>(a.gamma[c]) * inv);
    for_each_run(a.x, v, c, [&](const T* run, std::int64_t at) { affine_run(run, v.s, scale, shift, a.activation, y + at); });
    if (running_mean) {
      running_mean[c] = static_cast<T>((1 - momentum) * static_cast<double>(running_mean[c]) + momentum * mu);
      running_var[c] = static_cast<T>((1 - momentum) * static_cast<double>(running_var[c]) + momentum * var * m / (m - 1));
    }
  });
}

template <class T>
void batch_norm_eval_forward(const BatchNormArgs<T>& a, const T* running_mean, const T* running_var, T* mean, T* invstd, T* y) {
  const ChannelView& v = a.v;
  parallel_for(v.c, threads_if(parallel_channels(v)), [&](std::int64_t c) {
    const double mu = static_cast<double>(running_mean[c]);
    const double inv = 1.0 / std::sqrt(static_cast<double>(running_var[c]) + a.eps);
    mean[c] = static_cast<T>(mu);
    invstd[c] = static_cast<T>(inv);
    const T scale = static_cast<T>(static_cast<double>(a.gamma[c]) * inv);
    const T shift = static_cast<T>(static_cast<double>(a.beta[c]) - mu * static_cast<double>(a.gamma[c]) * inv);
    for_each_run(a.x, v, c, [&](const T* run, std::int64_t at) { affine_run(run, v.s, scale, shift, a.activation, y + at); });
  });
}

template <class T>
void batch_norm_backward(const BatchNormArgs<T>& a, const T* mean, const T* invstd, bool batch_stats, const T* y, const T* dy,
                         T* dx, T* dgamma, T* dbeta) {
  const ChannelView& v = a.v;
  const double m = static_cast<double>(v.per_channel());
  parallel_for(v.c, threads_if(parallel_channels(v)), [&](std::int64_t c) {
    const double mu = static_cast<double>(mean[c]), inv = static_cast<double>(invstd[c]);
    double sum_dy = 0, sum_dy_xc = 0;  // sums of dy and dy * (x - mean)
    for_each_run(a.x, v, c, [&](const T* run, std::int64_t at) {
      double s0 = 0, s1 = 0;
#pragma omp simd reduction(+ : s0, s1)
      for (std::int64_t j = 0; j < v.s; ++j) {
        const double g = static_cast<double>(adjoint_at(dy + at, y + at, j, a.activation));
        s0 += g;
        s1 += g * (static_cast<double>(run[j]) - mu);
      }
      sum_dy += s0;
      sum_dy_xc += s1;
    });
    if (dbeta) dbeta[c] += static_cast<T>(sum_dy);
    if (dgamma) dgamma[c] += static_cast<T>(sum_dy_xc * inv);
    if (!dx) return;
    const double gi = static_cast<double>(a.gamma[c]) * inv;
    // dx = gamma * invstd * (dy - mean(dy) - (x - mean) * invstd^2 * mean(dy * (x - mean))), the
    // last two only when the statistics came from x.
    const T k_dy = static_cast<T>(gi);
    const T k_const = static_cast<T>(batch_stats ? -gi * sum_dy / m : 0.0);
    const T k_x = static_cast<T>(batch_stats ? -gi * inv * inv * sum_dy_xc / m : 0.0);
    const T mu_t = static_cast<T>(mu);
    for_each_run(a.x, v, c, [&](const T* run, std::int64_t at) {
      T* out = dx + at;
#pragma omp simd
      for (std::int64_t j = 0; j < v.s; ++j) out[j] += k_dy * adjoint_at(dy + at, y + at, j, a.activation) + k_const + k_x * (run[j] - mu_t);
    });
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
    const double mu = run_sum(x, v.length) / static_cast<double>(v.length);
    const double inv = 1.0 / std::sqrt(run_squared_deviation(x, v.length, mu) / static_cast<double>(v.length) + a.eps);
    mean[r] = static_cast<T>(mu);
    invstd[r] = static_cast<T>(inv);
    T* out = y + r * v.length;
    for (std::int64_t j0 = 0; j0 < v.length; j0 += v.inner) {  // a run of `inner` elements shares gamma and beta
      const std::int64_t k = affine_index(v, r, j0);
      const double g = static_cast<double>(affine_or(a.gamma, k, T(1)));
      const T scale = static_cast<T>(g * inv);
      const T shift = static_cast<T>(static_cast<double>(affine_or(a.beta, k, T(0))) - mu * g * inv);
      affine_run(x + j0, v.inner, scale, shift, NormActivation::none, out + j0);
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

#define TG_NORM_INSTANCES(T)                                                                                                  \
  template void batch_norm_train_forward(const BatchNormArgs<T>&, T*, T*, T*, T*, T*, double);                               \
  template void batch_norm_eval_forward(const BatchNormArgs<T>&, const T*, const T*, T*, T*, T*);                            \
  template void batch_norm_backward(const BatchNormArgs<T>&, const T*, const T*, bool, const T*, const T*, T*, T*, T*);      \
  template void row_norm_forward(const RowNormArgs<T>&, T*, T*, T*);                                                          \
  template void row_norm_backward(const RowNormArgs<T>&, const T*, const T*, const T*, T*, T*, T*);
TG_NORM_INSTANCES(float)
TG_NORM_INSTANCES(double)

}  // namespace tg::kernels
