// Reductions along a set of axes, and their adjoints.
//
// Convention: the reduced result is addressed through its "keepdims" shape (same
// rank as the input, 1 on reduced axes); the dropped-axes shape has the same
// elements in the same order, so callers may use either.
#pragma once

#include <cstdint>
#include <limits>

#include <fmt/format.h>

#include "tapegrad/kernels/error.hpp"
#include "tapegrad/kernels/parallel.hpp"
#include "tapegrad/kernels/scratch.hpp"
#include "tapegrad/kernels/store.hpp"
#include "tapegrad/kernels/strided.hpp"

namespace tg::kernels {

// Which axes of a rank-r array are reduced: bits, so that a replayed reduction
// builds its mask without a heap allocation (ranks above 64 are refused).
class AxisMask {
 public:
  AxisMask(std::size_t rank, bool all) : rank_(rank) {
    if (rank > 64) fail("AxisMask", fmt::format("rank {} expected at most 64 axes", rank));
    bits_ = all ? (rank == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << rank) - 1) : 0;
  }
  bool operator[](std::size_t axis) const { return (bits_ >> axis) & 1u; }
  void set(std::size_t axis) { bits_ |= std::uint64_t{1} << axis; }
  std::size_t size() const { return rank_; }

 private:
  std::size_t rank_;
  std::uint64_t bits_ = 0;
};

// The keepdims shape of reducing `in` over `mask`.
inline Shape keepdims_shape(const Shape& in, const AxisMask& mask) {
  Shape out = in;
  for (std::size_t i = 0; i < in.rank(); ++i)
    if (mask[i]) out[i] = 1;
  return out;
}

// The sum of n contiguous values, in 8 interleaved partial sums: the adds
// vectorise (one running sum cannot, under strict IEEE order: a 4-cycle
// dependency per element) and rounding errors grow more slowly.
template <class T>
T sum_run(const T* x, std::int64_t n) {
  T part[8] = {};
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) part[j] += x[i + j];
  T tail = T(0);
  for (; i < n; ++i) tail += x[i];
  return ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7])) + tail;
}

// out[keep(i)] += x[i]. `out` has keepdims shape `so`, or any shape `x`'s shape broadcasts from.
// This is also the fold of a broadcast's adjoint back onto the smaller operand.
template <class T>
void sum_accumulate(const T* x, const Shape& sx, T* out, const Shape& so) {
  if (sx.size() == so.size()) {  // nothing reduced: same elements, same order
    for (std::int64_t i = 0; i < sx.size(); ++i) out[i] += x[i];
    return;
  }
  const Strides st_x = contiguous_strides(sx), st_o = broadcast_strides(so, sx);
  for_each_run<2>(sx, {&st_x, &st_o}, [&](std::int64_t n, const Offsets<2>& o, const Offsets<2>& s) {
    if (s[1] == 0) {
      out[o[1]] += sum_run(x + o[0], n);
    } else {
      for (std::int64_t i = 0; i < n; ++i) out[o[1] + i * s[1]] += x[o[0] + i];
    }
  });
}

// out = max (or min) of x over the reduced axes; `out` has keepdims shape `so`.
template <bool IsMax, class T>
void extremum_reduce(const T* x, const Shape& sx, T* out, const Shape& so) {
  const T init = IsMax ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::infinity();
  for (std::int64_t i = 0; i < so.size(); ++i) out[i] = init;
  const Strides st_x = contiguous_strides(sx), st_o = broadcast_strides(so, sx);
  for_each_run<2>(sx, {&st_x, &st_o}, [&](std::int64_t n, const Offsets<2>& o, const Offsets<2>& s) {
    for (std::int64_t i = 0; i < n; ++i) {
      T& slot = out[o[1] + i * s[1]];
      const T v = x[o[0] + i];
      if (IsMax ? (v > slot || v != v) : (v < slot || v != v)) slot = v;  // NaN propagates
    }
  });
}

// Note [Ties in max and min]: the adjoint of a max (min) reduction is split evenly
// among all elements equal to the result (as JAX does): deterministic, symmetric,
// and the average of the one-sided derivatives at a tie. A NaN result (NaN
// propagates) is split evenly among the NaN elements, as PyTorch does; matching
// by == alone gave every element a zero gradient.
// dx[i] += dout[keep(i)] / count(ties of keep(i)) where x[i] ties out[keep(i)].
template <class T>
inline bool ties_extremum(T v, T extremum) {
  return v == extremum || (v != v && extremum != extremum);
}

template <class T>
void extremum_reduce_backward(const T* x, const Shape& sx, const T* out, const T* dout, const Shape& so, T* dx) {
  ScratchScope scratch;  // no heap allocation per pullback (a compiled step allocates nothing)
  T* ties = scratch.take_filled<T>(so.size(), T(0)).data();
  const Strides st_x = contiguous_strides(sx), st_o = broadcast_strides(so, sx);
  for_each_run<2>(sx, {&st_x, &st_o}, [&](std::int64_t n, const Offsets<2>& o, const Offsets<2>& s) {
    for (std::int64_t i = 0; i < n; ++i)
      if (ties_extremum(x[o[0] + i], out[o[1] + i * s[1]])) ties[o[1] + i * s[1]] += T(1);
  });
  for_each_run<2>(sx, {&st_x, &st_o}, [&](std::int64_t n, const Offsets<2>& o, const Offsets<2>& s) {
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t k = o[1] + i * s[1];
      if (ties_extremum(x[o[0] + i], out[k])) dx[o[0] + i] += dout[k] / ties[k];
    }
  });
}

// dx[i] (+)= scale * dy[keep(i)]: spreads a reduced adjoint back over the input
// (the adjoint of sum and mean); `assign` writes dx (store.hpp). Every element
// is computed alone, so a whole reduction's spread runs on threads.
template <class T>
void broadcast_accumulate(const T* dy, const Shape& sy, T* dx, const Shape& sx, T scale, bool assign) {
  with_store(assign, [&](auto add) {
    constexpr bool Add = decltype(add)::value;
    if (sy.size() == 1) {
      const T v = scale * dy[0];
      parallel_chunks(sx.size(), [&](std::int64_t begin, std::int64_t end) {
        for (std::int64_t i = begin; i < end; ++i) store<Add>(dx[i], v);
      });
      return;
    }
    const Strides st_y = broadcast_strides(sy, sx), st_x = contiguous_strides(sx);
    for_each_run<2>(sx, {&st_y, &st_x}, [&](std::int64_t n, const Offsets<2>& o, const Offsets<2>& s) {
      for (std::int64_t i = 0; i < n; ++i) store<Add>(dx[o[1] + i], scale * dy[o[0] + i * s[0]]);
    });
  });
}

}  // namespace tg::kernels
