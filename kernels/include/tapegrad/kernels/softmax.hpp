// Softmax family along one axis. The array is viewed as (outer, n, inner): the
// axis has length n and stride `inner`.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace tg::kernels {

struct AxisView {
  std::int64_t outer, n, inner;
};

// Calls body(base) for the first element of every 1-D line along the axis.
template <class F>
void for_each_line(const AxisView& v, F body) {
  for (std::int64_t o = 0; o < v.outer; ++o)
    for (std::int64_t i = 0; i < v.inner; ++i) body(o * v.n * v.inner + i);
}

// lse[line] = log(sum(exp(x along the line))), computed stably.
template <class T>
T line_logsumexp(const T* x, std::int64_t n, std::int64_t stride) {
  T m = -std::numeric_limits<T>::infinity();
  for (std::int64_t j = 0; j < n; ++j) m = std::max(m, x[j * stride]);
  if (!std::isfinite(m)) return m;
  T s = T(0);
  for (std::int64_t j = 0; j < n; ++j) s += std::exp(x[j * stride] - m);
  return m + std::log(s);
}

template <class T>
void logsumexp_forward(const T* x, T* lse, const AxisView& v) {
  for (std::int64_t o = 0; o < v.outer; ++o)
    for (std::int64_t i = 0; i < v.inner; ++i) lse[o * v.inner + i] = line_logsumexp(x + o * v.n * v.inner + i, v.n, v.inner);
}

// dx += dlse * exp(x - lse)
template <class T>
void logsumexp_backward(const T* x, const T* lse, const T* dlse, T* dx, const AxisView& v) {
  for (std::int64_t o = 0; o < v.outer; ++o)
    for (std::int64_t i = 0; i < v.inner; ++i) {
      const std::int64_t line = o * v.inner + i, base = o * v.n * v.inner + i;
      for (std::int64_t j = 0; j < v.n; ++j) dx[base + j * v.inner] += dlse[line] * std::exp(x[base + j * v.inner] - lse[line]);
    }
}

// y = x - logsumexp(x) (log_softmax) or exp of that (softmax).
template <bool Log, class T>
void softmax_forward(const T* x, T* y, const AxisView& v) {
  for_each_line(v, [&](std::int64_t base) {
    const T lse = line_logsumexp(x + base, v.n, v.inner);
    for (std::int64_t j = 0; j < v.n; ++j) {
      const T z = x[base + j * v.inner] - lse;
      y[base + j * v.inner] = Log ? z : std::exp(z);
    }
  });
}

// softmax:     dx += y * (dy - sum(dy * y))
// log_softmax: dx += dy - exp(y) * sum(dy)
template <bool Log, class T>
void softmax_backward(const T* y, const T* dy, T* dx, const AxisView& v) {
  for_each_line(v, [&](std::int64_t base) {
    T dot = T(0);
    for (std::int64_t j = 0; j < v.n; ++j) {
      const std::int64_t k = base + j * v.inner;
      dot += Log ? dy[k] : dy[k] * y[k];
    }
    for (std::int64_t j = 0; j < v.n; ++j) {
      const std::int64_t k = base + j * v.inner;
      dx[k] += Log ? dy[k] - std::exp(y[k]) * dot : y[k] * (dy[k] - dot);
    }
  });
}

}  // namespace tg::kernels
