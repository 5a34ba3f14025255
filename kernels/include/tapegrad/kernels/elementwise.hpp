// Elementwise kernels: unary maps and NumPy-broadcasting binary maps, forward
// and backward. The math (exp, tanh, ...) lives with each op in ops/; these
// kernels own only the memory walk, split over threads for large arrays (each
// element computed alone, so the split changes no value; sums that fold a
// broadcast stay on one thread, in order).
#pragma once

#include <cstdint>

#include "tapegrad/kernels/parallel.hpp"
#include "tapegrad/kernels/store.hpp"
#include "tapegrad/kernels/strided.hpp"

namespace tg::kernels {

// y[i] = f(x[i])
template <class T, class F>
void map(const T* x, T* y, std::int64_t n, F f) {
  parallel_chunks(n, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) y[i] = f(x[i]);
  });
}

// dx[i] (+)= f(x[i], y[i], dy[i]): the pullback of a unary map (store.hpp: `assign` writes dx).
template <class T, class F>
void map_backward(const T* x, const T* y, const T* dy, T* dx, std::int64_t n, bool assign, F f) {
  with_store(assign, [&](auto add) {
    parallel_chunks(n, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t i = begin; i < end; ++i) store<decltype(add)::value>(dx[i], f(x[i], y[i], dy[i]));
    });
  });
}

// out = f(a, b) with NumPy broadcasting; `so` is the broadcast shape of `sa` and `sb`.
template <class T, class F>
void binary_map(const T* a, const Shape& sa, const T* b, const Shape& sb, T* out, const Shape& so, F f) {
  const std::int64_t n = so.size();
  if (sa == so && sb == so) {
    parallel_chunks(n, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t i = begin; i < end; ++i) out[i] = f(a[i], b[i]);
    });
  } else if (sa == so && sb.size() == 1) {
    const T bv = b[0];
    parallel_chunks(n, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t i = begin; i < end; ++i) out[i] = f(a[i], bv);
    });
  } else if (sb == so && sa.size() == 1) {
    const T av = a[0];
    parallel_chunks(n, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t i = begin; i < end; ++i) out[i] = f(av, b[i]);
    });
  } else {
    const Strides st_a = broadcast_strides(sa, so), st_b = broadcast_strides(sb, so), st_o = contiguous_strides(so);
    for_each_run<3>(so, {&st_a, &st_b, &st_o}, [&](std::int64_t m, const Offsets<3>& o, const Offsets<3>& s) {
      for (std::int64_t i = 0; i < m; ++i) out[o[2] + i] = f(a[o[0] + i * s[0]], b[o[1] + i * s[1]]);
    });
  }
}

enum class Side { a, b };

// binary_map_backward with its store chosen at compile time.
template <Side side, bool Add, class T, class F>
void binary_map_backward_as(const T* a, const Shape& sa, const T* b, const Shape& sb, const T* out, const T* dout,
                            const Shape& so, T* grad, F f) {
  const std::int64_t n = so.size();
  if (sa == so && sb == so) {
    parallel_chunks(n, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t i = begin; i < end; ++i) store<Add>(grad[i], f(a[i], b[i], out[i], dout[i]));
    });
    return;
  }
  if (sa == so && sb.size() == 1) {  // array op scalar: the common case of constants
    const T bv = b[0];
    if constexpr (side == Side::a) {
      parallel_chunks(n, [&](std::int64_t begin, std::int64_t end) {
        for (std::int64_t i = begin; i < end; ++i) store<Add>(grad[i], f(a[i], bv, out[i], dout[i]));
      });
    } else {
      T acc = T(0);
      for (std::int64_t i = 0; i < n; ++i) acc += f(a[i], bv, out[i], dout[i]);
      store<Add>(grad[0], acc);
    }
    return;
  }
  if (sb == so && sa.size() == 1) {  // scalar op array
    const T av = a[0];
    if constexpr (side == Side::b) {
      parallel_chunks(n, [&](std::int64_t begin, std::int64_t end) {
        for (std::int64_t i = begin; i < end; ++i) store<Add>(grad[i], f(av, b[i], out[i], dout[i]));
      });
    } else {
      T acc = T(0);
      for (std::int64_t i = 0; i < n; ++i) acc += f(av, b[i], out[i], dout[i]);
      store<Add>(grad[0], acc);
    }
    return;
  }
  // General broadcasting: several runs may fold onto one element, so they add (into zeros when assigning).
  if constexpr (!Add) {
    const std::int64_t g = (side == Side::a ? sa : sb).size();
    for (std::int64_t j = 0; j < g; ++j) grad[j] = T(0);
  }
  const Strides st_a = broadcast_strides(sa, so), st_b = broadcast_strides(sb, so), st_o = contiguous_strides(so);
  const Strides& st_g = side == Side::a ? st_a : st_b;
  for_each_run<4>(so, {&st_a, &st_b, &st_o, &st_g}, [&](std::int64_t m, const Offsets<4>& o, const Offsets<4>& s) {
    if (s[3] == 0) {  // the whole run folds onto one gradient element
      T acc = T(0);
      for (std::int64_t i = 0; i < m; ++i) acc += f(a[o[0] + i * s[0]], b[o[1] + i * s[1]], out[o[2] + i], dout[o[2] + i]);
      grad[o[3]] += acc;
    } else {
      for (std::int64_t i = 0; i < m; ++i)
        grad[o[3] + i * s[3]] += f(a[o[0] + i * s[0]], b[o[1] + i * s[1]], out[o[2] + i], dout[o[2] + i]);
    }
  });
}

// The pullback of binary_map for one side: grad_side[j] (+)= f(a, b, out, dout) summed
// over every output element that read element j (the broadcast dimensions fold back).
template <Side side, class T, class F>
void binary_map_backward(const T* a, const Shape& sa, const T* b, const Shape& sb, const T* out, const T* dout,
                         const Shape& so, T* grad, bool assign, F f) {
  with_store(assign, [&](auto add) { binary_map_backward_as<side, decltype(add)::value>(a, sa, b, sb, out, dout, so, grad, f); });
}

}  // namespace tg::kernels
