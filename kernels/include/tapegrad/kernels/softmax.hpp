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

// Note [Shift before the log]: a line's log-softmax is (x - m) - log(sum(exp(x - m)))
// with m the line's maximum, in that order. Computing x - (m + log s) instead
// loses log s next to a large m: float logits [c, c+1, c-1] at c = 1e7 gave
// softmax 1.0 and cross-entropy 0 (exact: 0.6652 and 0.41). The logsumexp
// pullback recomputes the shifted form from x for the same reason: exp(x - lse)
// with lse rounded to m is 1 for every maximal element.
template <class T>
struct LineShift {
  T max;      // the line's maximum (+-inf or NaN when the line holds one)
  T log_sum;  // log(sum(exp(x - max))); 0 when max is not finite
};

template <class T>
LineShift<T> line_shift(const T* x, std::int64_t n, std::int64_t stride) {
  T m = -std::numeric_limits<T>::infinity();
  bool nan = false;
  for (std::int64_t j = 0; j < n; ++j) {
    nan = nan || std::isnan(x[j * stride]);
    m = std::max(m, x[j * stride]);
  }
  if (nan) return {std::numeric_limits<T>::quiet_NaN(), T(0)};
  if (!std::isfinite(m)) return {m, T(0)};
  T s = T(0);
  for (std::int64_t j = 0; j < n; ++j) s += std::exp(x[j * stride] - m);
  return {m, std::log(s)};
}

// lse[line] = log(sum(exp(x along the line))), computed stably.
template <class T>
T line_logsumexp(const T* x, std::int64_t n, std::int64_t stride) {
  const LineShift<T> shift = line_shift(x, n, stride);
  return shift.max + shift.log_sum;
}

template <class T>
void logsumexp_forward(const T* x, T* lse, const AxisView& v) {
  for (std::int64_t o = 0; o < v.outer; ++o)
    for (std::int64_t i = 0; i < v.inner; ++i) lse[o * v.inner + i] = line_logsumexp(x + o * v.n * v.inner + i, v.n, v.inner);
}

// dx += dlse * softmax(x), the softmax recomputed in the shifted form (Note [Shift before the log]).
template <class T>
void logsumexp_backward(const T* x, const T* dlse, T* dx, const AxisView& v) {
  for (std::int64_t o = 0; o < v.outer; ++o)
    for (std::int64_t i = 0; i < v.inner; ++i) {
      const std::int64_t line = o * v.inner + i, base = o * v.n * v.inner + i;
      const LineShift<T> shift = line_shift(x + base, v.n, v.inner);
      for (std::int64_t j = 0; j < v.n; ++j)
        dx[base + j * v.inner] += dlse[line] * std::exp((x[base + j * v.inner] - shift.max) - shift.log_sum);
    }
}

// y = (x - max) - log(sum(exp(x - max))) (log_softmax) or exp of that (softmax).
template <bool Log, class T>
void softmax_forward(const T* x, T* y, const AxisView& v) {
  for_each_line(v, [&](std::int64_t base) {
    const LineShift<T> shift = line_shift(x + base, v.n, v.inner);
    for (std::int64_t j = 0; j < v.n; ++j) {
      const T z = (x[base + j * v.inner] - shift.max) - shift.log_sum;
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
