// Pooling kernels (see pool.hpp). Planes are independent: OpenMP splits them.
#include "tapegrad/kernels/pool.hpp"

#include <fmt/format.h>
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "tapegrad/kernels/parallel.hpp"
#include "tapegrad/kernels/reduce.hpp"
#include "spatial_dims.hpp"
#include "tapegrad/kernels/scratch.hpp"
#include "tapegrad/kernels/error.hpp"
#include "tapegrad/kernels/isa.hpp"

namespace tg::kernels {

PoolGeometry pool_geometry(const Shape& x, const PoolSpec& spec, const char* op) {
  if (x.rank() < 3 || x.rank() > 5)
    fail(op, fmt::format("input has shape {} (rank {}) expected (N, C, spatial...) with 1-3 spatial dims", to_string(x),
                         x.rank()));
  if (spec.window.empty()) fail(op, "no window given expected window sizes, one per spatial dim or one for all");
  PoolGeometry g;
  g.spatial = static_cast<int>(x.rank()) - 2;
  g.N = x[0];
  g.C = x[1];
  g.win = spatial_dims(spec.window, g.spatial, 1, 1, "window", op);
  g.stride = spec.stride.empty() ? g.win : spatial_dims(spec.stride, g.spatial, 1, 1, "stride", op);
  g.pad = spatial_dims(spec.padding, g.spatial, 0, 0, "padding", op);
  g.dil = spatial_dims(spec.dilation, g.spatial, 1, 1, "dilation", op);
  if (g.spatial > 0 && x.size() / std::max<std::int64_t>(1, x[0] * x[1]) >= (std::int64_t(1) << 31))
    fail(op, fmt::format("input {} has planes of {} elements expected fewer than 2^31 per (sample, channel) plane",
                         to_string(x), x.size() / std::max<std::int64_t>(1, x[0] * x[1])));
  for (int d = 3 - g.spatial; d < 3; ++d) {
    g.in[d] = x[static_cast<std::size_t>(2 + d - (3 - g.spatial))];
    std::int64_t extent = 0;
    if (__builtin_mul_overflow(g.dil[d], g.win[d] - 1, &extent) || extent >= (std::int64_t(1) << 62))
      fail(op, fmt::format("dilated window along spatial dim {} (dilation {} x window {}) is larger than 2^62 expected "
                           "a smaller dilation; hint: a tape file with such a pool is damaged", d - (3 - g.spatial), g.dil[d], g.win[d]));
    extent += 1;
    if (2 * g.pad[d] > extent)
      fail(op, fmt::format("padding {} along spatial dim {} is more than half the window ({}) expected <= {}", g.pad[d],
                           d - (3 - g.spatial), extent, extent / 2));
    const std::int64_t span = g.in[d] + 2 * g.pad[d] - extent;
    if (span < 0)
      fail(op, fmt::format("window ({}) along spatial dim {} is larger than the padded input ({}) expected window <= "
                           "padded input",
                           extent, d - (3 - g.spatial), g.in[d] + 2 * g.pad[d]));
    // ceil_mode adds a partial last window when it starts inside the input or the
    // low padding: at (full + 1) * stride < in + pad, compared without a product (any stride).
    const std::int64_t full = span / g.stride[d];
    g.out[d] = full + 1;
    if (spec.ceil_mode && span % g.stride[d] != 0 && full + 1 <= (g.in[d] + g.pad[d] - 1) / g.stride[d]) ++g.out[d];
  }
  return g;
}

Shape pool_output_shape(const PoolGeometry& g) {
  Shape s{g.N, g.C};
  for (int d = 3 - g.spatial; d < 3; ++d) s.push_back(g.out[d]);
  return s;
}

namespace {

// For every output index along each dim, the in-bounds input indices of its
// window, computed once per call: the inner loops then run without bounds checks.
struct Windows {
  std::array<std::span<std::int64_t>, 3> index;   // index[d][o * win[d] + k] for k < inside[d][o]
  std::array<std::span<std::int64_t>, 3> inside;  // in-bounds positions of the window
  std::array<std::span<std::int64_t>, 3> padded;  // positions within the padded extent (PyTorch's avg divisor)
  PoolGeometry::Dims win;
  Windows(const PoolGeometry& g, ScratchScope& scratch) : win(g.win) {
    for (int d = 0; d < 3; ++d) {
      index[d] = scratch.take_filled<std::int64_t>(g.out[d] * g.win[d], 0);
      inside[d] = scratch.take<std::int64_t>(g.out[d]);
      padded[d] = scratch.take<std::int64_t>(g.out[d]);
      for (std::int64_t o = 0; o < g.out[d]; ++o) {
        const std::int64_t start = o * g.stride[d] - g.pad[d];
        std::int64_t n = 0;
        for (std::int64_t t = 0; t < g.win[d]; ++t) {
          const std::int64_t i = start + t * g.dil[d];
          if (i >= 0 && i < g.in[d]) index[d][static_cast<std::size_t>(o * g.win[d] + n++)] = i;
        }
        inside[d][static_cast<std::size_t>(o)] = n;
        padded[d][static_cast<std::size_t>(o)] = std::min(start + g.win[d], g.in[d] + g.pad[d]) - start;
      }
    }
  }
};

// Calls f(offset within the plane) for every in-bounds window element of output
// (o0, o1, o2), in row-major order.
template <class F>
inline void for_each_in_window(const PoolGeometry& g, const Windows& w, std::int64_t o0, std::int64_t o1, std::int64_t o2, F f) {
  const std::int64_t* i0 = w.index[0].data() + o0 * w.win[0];
  const std::int64_t* i1 = w.index[1].data() + o1 * w.win[1];
  const std::int64_t* i2 = w.index[2].data() + o2 * w.win[2];
  const std::int64_t n0 = w.inside[0][static_cast<std::size_t>(o0)], n1 = w.inside[1][static_cast<std::size_t>(o1)],
                     n2 = w.inside[2][static_cast<std::size_t>(o2)];
  for (std::int64_t a = 0; a < n0; ++a)
    for (std::int64_t b = 0; b < n1; ++b) {
      const std::int64_t row = (i0[a] * g.in[1] + i1[b]) * g.in[2];
      for (std::int64_t c = 0; c < n2; ++c) f(row + i2[c]);
    }
}

// Calls f(plane input, plane output index, o0, o1, o2) for every output of every plane, planes in parallel.
template <class F>
void for_each_output(const PoolGeometry& g, F f) {
  parallel_for(g.N * g.C, threads_if(g.N * g.C * g.out_vol() > 20000), [&](std::int64_t plane) {
    std::int64_t j = 0;
    for (std::int64_t o0 = 0; o0 < g.out[0]; ++o0)
      for (std::int64_t o1 = 0; o1 < g.out[1]; ++o1)
        for (std::int64_t o2 = 0; o2 < g.out[2]; ++o2) f(plane, plane * g.out_vol() + j++, o0, o1, o2);
  });
}

// The divisor of one mean window (PyTorch's avg_pool rule).
inline std::int64_t mean_divisor(const Windows& w, bool count_include_pad, std::int64_t o0, std::int64_t o1, std::int64_t o2) {
  const auto& n = count_include_pad ? w.padded : w.inside;
  return n[0][static_cast<std::size_t>(o0)] * n[1][static_cast<std::size_t>(o1)] * n[2][static_cast<std::size_t>(o2)];
}

}  // namespace

// For each tap t2 of the last window dim: the outputs [begin, end) whose input
// o2 * stride + offset lies inside the row (computed once per call).
struct LastDimTaps {
  std::span<std::int64_t> begin, end, offset;
  LastDimTaps(const PoolGeometry& g, ScratchScope& scratch)
      : begin(scratch.take<std::int64_t>(g.win[2])), end(scratch.take<std::int64_t>(g.win[2])),
        offset(scratch.take<std::int64_t>(g.win[2])) {
    const std::int64_t s2 = g.stride[2];
    for (std::int64_t t2 = 0; t2 < g.win[2]; ++t2) {
      const std::int64_t off = t2 * g.dil[2] - g.pad[2];
      std::int64_t b = 0;
      while (b < g.out[2] && b * s2 + off < 0) ++b;
      std::int64_t e = b;
      while (e < g.out[2] && e * s2 + off < g.in[2]) ++e;
      const auto at = static_cast<std::size_t>(t2);
      begin[at] = b, end[at] = e, offset[at] = off;
    }
  }
};

// Calls tap(row offset, t2) for every window tap of output row (o0, o1), in the
// window's row-major order.
template <class F>
inline void for_each_tap(const PoolGeometry& g, std::int64_t o0, std::int64_t o1, F tap) {
  for (std::int64_t t0 = 0; t0 < g.win[0]; ++t0) {
    const std::int64_t i0 = o0 * g.stride[0] - g.pad[0] + t0 * g.dil[0];
    if (i0 < 0 || i0 >= g.in[0]) continue;
    for (std::int64_t t1 = 0; t1 < g.win[1]; ++t1) {
      const std::int64_t i1 = o1 * g.stride[1] - g.pad[1] + t1 * g.dil[1];
      if (i1 < 0 || i1 >= g.in[1]) continue;
      for (std::int64_t t2 = 0; t2 < g.win[2]; ++t2) tap((i0 * g.in[1] + i1) * g.in[2], t2);
    }
  }
}

// The maximum of every window of one output row (o0, o1) of a plane (a NaN wins),
// tap by tap over the whole row: selects the compiler vectorises, where a
// comparison per window element mispredicted about half the time on real data.
template <class T>
void row_max(const PoolGeometry& g, const LastDimTaps& taps, const T* __restrict xp, std::int64_t o0, std::int64_t o1,
             T* __restrict best) {
  const std::int64_t n = g.out[2], s2 = g.stride[2];
  for (std::int64_t o2 = 0; o2 < n; ++o2) best[o2] = -std::numeric_limits<T>::infinity();
  for_each_tap(g, o0, o1, [&](std::int64_t row, std::int64_t t2) {
    const T* __restrict x = xp + row + taps.offset[static_cast<std::size_t>(t2)];
    for (std::int64_t o2 = taps.begin[static_cast<std::size_t>(t2)]; o2 < taps.end[static_cast<std::size_t>(t2)]; ++o2) {
      const T v = x[o2 * s2], b = best[o2];
      const T m = b > v ? b : v;   // maxss: v when v is NaN
      best[o2] = b != b ? b : m;   // an earlier NaN stays
    }
  });
}

// The first element equal to each window's maximum, or its last NaN (Note [Ties in maxpool]), as plane offsets.
template <class T>
void row_argmax(const PoolGeometry& g, const LastDimTaps& taps, const T* __restrict xp, std::int64_t o0,
                      std::int64_t o1, const T* __restrict best, std::int32_t* __restrict arg) {
  const std::int64_t n = g.out[2], s2 = g.stride[2];
  for (std::int64_t o2 = 0; o2 < n; ++o2) arg[o2] = -1;
  for_each_tap(g, o0, o1, [&](std::int64_t row, std::int64_t t2) {
    const std::int64_t off = row + taps.offset[static_cast<std::size_t>(t2)];
    for (std::int64_t o2 = taps.begin[static_cast<std::size_t>(t2)]; o2 < taps.end[static_cast<std::size_t>(t2)]; ++o2) {
      const T v = xp[off + o2 * s2], b = best[o2];
      const bool hit = ((arg[o2] < 0) & (v == b)) | ((v != v) & (b != b));
      arg[o2] = hit ? static_cast<std::int32_t>(off + o2 * s2) : arg[o2];  // 32-bit, like the float compare: vector blends
    }
  });
}

// Runs f(plane, output row (o0, o1), first output index of the row) for every output row, planes in parallel.
template <class F>
void for_each_output_row(const PoolGeometry& g, F f) {
  parallel_for(g.N * g.C, threads_if(g.N * g.C * g.out_vol() > 20000), [&](std::int64_t plane) {
    for (std::int64_t o0 = 0; o0 < g.out[0]; ++o0)
      for (std::int64_t o1 = 0; o1 < g.out[1]; ++o1) f(plane, o0, o1, plane * g.out_vol() + (o0 * g.out[1] + o1) * g.out[2]);
  });
}

// Note [The 2x2 pool of most CNNs]: a 2x2 window with stride 2, no padding,
// no dilation and no partial window gets its own loops: its rows have no
// bounds to check and its taps need no tables. Same results as the general
// path, tap for tap: the same max (an earlier NaN stays) and the same first
// argmax in row-major order.
bool is_2x2_stride_2(const PoolGeometry& g) {
  return g.spatial >= 2 && g.win == PoolGeometry::Dims{1, 2, 2} && g.stride == PoolGeometry::Dims{1, 2, 2} &&
         g.pad == PoolGeometry::Dims{0, 0, 0} && g.dil == PoolGeometry::Dims{1, 1, 1} && 2 * g.out[1] <= g.in[1] &&
         2 * g.out[2] <= g.in[2];
}

// One step of row_max's rule: the larger value, an earlier NaN staying.
template <class T>
inline T max_step(T best, T v) {
  const T m = best > v ? best : v;
  return best != best ? best : m;
}

// The code (Note [Maxpool window codes]) of a 2x2 window (a, b; c, d) whose
// maximum is m: the first of a, b, c that is the maximum, else d; when m is
// NaN, the last NaN (Note [Ties in maxpool]). In integer arithmetic on the
// comparisons: GCC turned selects into branches in the loop's scalar tail.
template <class T>
inline int window_code(T a, T b, T c, T d, T m) {
  if (m != m) [[unlikely]]
    return d != d ? 3 : c != c ? 2 : b != b ? 1 : 0;
  const int not_a = a != m, not_b = b != m, not_c = c != m;
  return not_a * (1 + not_b * (1 + not_c));
}

// Note [Short rows in chunks]: the 2x2 pool's rows are short (LeNet's have 14
// and 7 outputs), so a loop of vectors spends most of its time in its scalar
// tail. A row is done in chunks of 16 bytes of outputs (4 floats, 2 doubles)
// instead, the last chunk moved back to end at the row's end, overlapping the
// one before it: those outputs are computed again, to the same values. Rows
// shorter than one chunk run the scalar loop. (The backward's scatter from codes
// stays scalar: a chunked version that wrote each window's four adjoints with
// selects measured slower than zeroing the rows and adding one value per window.)
template <class T>
struct Chunk {
  static constexpr int kLanes = 16 / int(sizeof(T));
  typedef T V __attribute__((vector_size(16)));
  using Mask = decltype(V{} < V{});

  static V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void store(T* p, V v) { std::memcpy(p, &v, sizeof v); }
  static V splat(T t) { return V{} + t; }
  static V select(Mask m, V a, V b) { return (V)((m & (Mask)a) | (~m & (Mask)b)); }
  // Elements 0, 2, 4, ... (and 1, 3, 5, ...) of the 2 * kLanes values at p.
  template <std::size_t... I>
  static V evens(const T* p, std::index_sequence<I...>) { return __builtin_shufflevector(load(p), load(p + kLanes), (2 * I)...); }
  template <std::size_t... I>
  static V odds(const T* p, std::index_sequence<I...>) { return __builtin_shufflevector(load(p), load(p + kLanes), (2 * I + 1)...); }
  static V evens(const T* p) { return evens(p, std::make_index_sequence<kLanes>{}); }
  static V odds(const T* p) { return odds(p, std::make_index_sequence<kLanes>{}); }
  // max_step on lanes.
  static V max_step(V best, V v) { return select(best != best, best, select(best > v, best, v)); }
};

// Runs chunk(o2) over a row of n outputs (Note [Short rows in chunks]); false
// when the row is shorter than one chunk.
template <class T, class F>
bool for_each_chunk(std::int64_t n, F chunk) {
  constexpr std::int64_t L = Chunk<T>::kLanes;
  if (n < L) return false;
  for (std::int64_t o2 = 0; o2 < n; o2 += L) chunk(std::min(o2, n - L));
  return true;
}

// The float chunk loop with AVX2 (8 outputs a chunk, blends instead of
// and/andnot/or selects): LeNet's first pool, rows of 14 outputs, in 2
// chunks instead of 4. The same rule, lane for lane, as Chunk's: the same
// maxima and codes bit for bit.
#define TG_AVX2 __attribute__((target("avx2,fma")))
TG_AVX2 inline void evens_and_odds(const float* p, __m256& evens, __m256& odds) {
  const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
  const __m256 lo = _mm256_loadu_ps(p), hi = _mm256_loadu_ps(p + 8);
  evens = _mm256_permutevar8x32_ps(_mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0)), order);
  odds = _mm256_permutevar8x32_ps(_mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1)), order);
}
TG_AVX2 inline __m256 nan_lanes(__m256 v) { return _mm256_cmp_ps(v, v, _CMP_UNORD_Q); }
TG_AVX2 inline __m256 equal_lanes(__m256 u, __m256 v) { return _mm256_cmp_ps(u, v, _CMP_EQ_OQ); }
// u where the mask's lanes are set, else v.
TG_AVX2 inline __m256 pick(__m256 mask, float u, __m256 v) { return _mm256_blendv_ps(v, _mm256_set1_ps(u), mask); }
TG_AVX2 inline __m256 max_step_avx2(__m256 best, __m256 v) {
  return _mm256_blendv_ps(_mm256_max_ps(best, v), best, nan_lanes(best));  // max_ps: best > v ? best : v
}
TG_AVX2 void maxpool_2x2_row_avx2(const float* r0, const float* r1, float* y, float* codes, std::int64_t n) {
  for (std::int64_t o = 0; o < n; o += 8) {
    const std::int64_t at = std::min<std::int64_t>(o, n - 8);
    __m256 a, b, c, d;
    evens_and_odds(r0 + 2 * at, a, b);
    evens_and_odds(r1 + 2 * at, c, d);
    const __m256 m = max_step_avx2(max_step_avx2(max_step_avx2(a, b), c), d);
    _mm256_storeu_ps(y + at, m);
    if (!codes) continue;
    // window_code: the first of a, b, c that is the maximum, else d; for a NaN maximum the last NaN.
    const __m256 first = pick(equal_lanes(a, m), 0, pick(equal_lanes(b, m), 1, pick(equal_lanes(c, m), 2, _mm256_set1_ps(3))));
    const __m256 last_nan = pick(nan_lanes(d), 3, pick(nan_lanes(c), 2, pick(nan_lanes(b), 1, _mm256_setzero_ps())));
    _mm256_storeu_ps(codes + at, _mm256_blendv_ps(first, last_nan, nan_lanes(m)));
  }
}
#undef TG_AVX2

template <class T>
void maxpool_2x2_forward(const PoolGeometry& g, const T* x, T* y, T* codes) {
  using C = Chunk<T>;
  const bool avx2_rows = std::is_same_v<T, float> && g.out[2] >= 8 && kernel_isa() >= Isa::avx2;
  for_each_output_row(g, [&](std::int64_t plane, std::int64_t o0, std::int64_t o1, std::int64_t j) {
    const T* __restrict r0 = x + (plane * g.in[0] + o0) * g.in[1] * g.in[2] + 2 * o1 * g.in[2];
    const T* __restrict r1 = r0 + g.in[2];
    T* __restrict yr = y + j;
    T* __restrict cr = codes ? codes + j : nullptr;
    const std::int64_t n = g.out[2];
    if constexpr (std::is_same_v<T, float>)
      if (avx2_rows) return maxpool_2x2_row_avx2(r0, r1, yr, cr, n);
    const bool chunked = for_each_chunk<T>(n, [&](std::int64_t o2) {
      const typename C::V a = C::evens(r0 + 2 * o2), b = C::odds(r0 + 2 * o2), c = C::evens(r1 + 2 * o2),
                          d = C::odds(r1 + 2 * o2);
      const typename C::V m = C::max_step(C::max_step(C::max_step(a, b), c), d);
      C::store(yr + o2, m);
      if (cr) {  // window_code, lane by lane
        const typename C::V first = C::select(a == m, C::splat(0), C::select(b == m, C::splat(1), C::select(c == m, C::splat(2), C::splat(3))));
        const typename C::V last_nan = C::select(d != d, C::splat(3), C::select(c != c, C::splat(2), C::select(b != b, C::splat(1), C::splat(0))));
        C::store(cr + o2, C::select(m != m, last_nan, first));
      }
    });
    if (chunked) return;
    for (std::int64_t o2 = 0; o2 < n; ++o2) {
      const T a = r0[2 * o2], b = r0[2 * o2 + 1], c = r1[2 * o2], d = r1[2 * o2 + 1];
      const T m = max_step(max_step(max_step(a, b), c), d);
      yr[o2] = m;
      if (cr) cr[o2] = static_cast<T>(window_code(a, b, c, d, m));
    }
  });
}

template <class T>
void maxpool_2x2_backward(const PoolGeometry& g, const T* x, const T* y, const T* gy, T* gx) {
  for_each_output_row(g, [&](std::int64_t plane, std::int64_t o0, std::int64_t o1, std::int64_t j) {
    const std::int64_t row0 = (plane * g.in[0] + o0) * g.in[1] * g.in[2] + 2 * o1 * g.in[2], row1 = row0 + g.in[2];
    for (std::int64_t o2 = 0; o2 < g.out[2]; ++o2) {
      const std::int64_t c = 2 * o2;
      const int code = window_code(x[row0 + c], x[row0 + c + 1], x[row1 + c], x[row1 + c + 1], y[j + o2]);
      gx[(code >> 1 ? row1 : row0) + c + (code & 1)] += gy[j + o2];
    }
  });
}

// The backward from window codes: one add per output at the element its code
// names, the address computed without a branch (selects per window element
// compiled to branches that mispredicted like the re-scan).
// write: the two input rows of each output row are zeroed (in cache) before the
// adds, which with maxpool_codes_cover_input writes all of gx.
template <class T>
void maxpool_2x2_backward_codes(const PoolGeometry& g, const T* codes, const T* gy, T* gx, bool write) {
  const std::int64_t row = g.in[2], n = g.out[2];
  for_each_output_row(g, [&](std::int64_t plane, std::int64_t o0, std::int64_t o1, std::int64_t j) {
    T* __restrict g0 = gx + (plane * g.in[0] + o0) * g.in[1] * row + 2 * o1 * row;
    if (write) std::fill(g0, g0 + 2 * row, T(0));
    const T* __restrict gyr = gy + j;
    const T* __restrict cr = codes + j;
    for (std::int64_t o2 = 0; o2 < n; ++o2) {
      const auto code = static_cast<std::int64_t>(cr[o2]);  // 0-3: (row, column) = (code / 2, code % 2)
      g0[2 * o2 + (code & 1) + (code >> 1) * row] += gyr[o2];
    }
  });
}

bool maxpool_keeps_codes(const PoolGeometry& g) { return is_2x2_stride_2(g); }

bool maxpool_codes_cover_input(const PoolGeometry& g) {
  return is_2x2_stride_2(g) && 2 * g.out[1] == g.in[1] && 2 * g.out[2] == g.in[2];
}

template <class T>
void maxpool_forward(const PoolGeometry& g, const T* x, T* y, T* codes) {
  if (is_2x2_stride_2(g)) return maxpool_2x2_forward(g, x, y, codes);
  ScratchScope scratch;
  const LastDimTaps taps(g, scratch);
  for_each_output_row(g, [&](std::int64_t plane, std::int64_t o0, std::int64_t o1, std::int64_t j) {
    row_max(g, taps, x + plane * g.in_vol(), o0, o1, y + j);
  });
}

// f(plane, output index, plane offset of that window's chosen element) for
// every output, by re-scanning each window against its maximum y (Note [Ties
// in maxpool]). Planes are independent: each thread's writes stay inside its own planes.
template <class T, class F>
void for_each_choice(const PoolGeometry& g, const T* x, const T* y, F f) {
  ScratchScope scratch;
  const LastDimTaps taps(g, scratch);
  for_each_output_row(g, [&](std::int64_t plane, std::int64_t o0, std::int64_t o1, std::int64_t j) {
    thread_local std::vector<std::int32_t> arg;
    arg.resize(static_cast<std::size_t>(g.out[2]));
    row_argmax(g, taps, x + plane * g.in_vol(), o0, o1, y + j, arg.data());
    for (std::int64_t o2 = 0; o2 < g.out[2]; ++o2) f(plane, j + o2, std::int64_t{arg[static_cast<std::size_t>(o2)]});
  });
}

template <class T>
void maxpool_backward(const PoolGeometry& g, const T* x, const T* y, const T* gy, T* gx, const T* codes, bool write) {
  if (write && !(codes && maxpool_codes_cover_input(g)))
    fail("maxpool", "a written (not accumulated) backward expected window codes that cover the input");
  if (is_2x2_stride_2(g)) return codes ? maxpool_2x2_backward_codes(g, codes, gy, gx, write) : maxpool_2x2_backward(g, x, y, gy, gx);
  for_each_choice(g, x, y, [&](std::int64_t plane, std::int64_t j, std::int64_t chosen) { gx[plane * g.in_vol() + chosen] += gy[j]; });
}

// The gather from window codes: the read at each code's element, as the
// backward's scatter (no branch per window element).
template <class T>
void maxpool_2x2_gather_codes(const PoolGeometry& g, const T* codes, const T* v, T* out, bool add) {
  const std::int64_t row = g.in[2], n = g.out[2];
  for_each_output_row(g, [&](std::int64_t plane, std::int64_t o0, std::int64_t o1, std::int64_t j) {
    const T* __restrict v0 = v + (plane * g.in[0] + o0) * g.in[1] * row + 2 * o1 * row;
    T* __restrict outr = out + j;
    const T* __restrict cr = codes + j;
    for (std::int64_t o2 = 0; o2 < n; ++o2) {
      const auto code = static_cast<std::int64_t>(cr[o2]);
      const T picked = v0[2 * o2 + (code & 1) + (code >> 1) * row];
      outr[o2] = add ? outr[o2] + picked : picked;
    }
  });
}

template <class T>
void maxpool_gather(const PoolGeometry& g, const T* x, const T* y, const T* v, T* out, bool add, const T* codes) {
  if (codes && is_2x2_stride_2(g)) return maxpool_2x2_gather_codes(g, codes, v, out, add);
  for_each_choice(g, x, y, [&](std::int64_t plane, std::int64_t j, std::int64_t chosen) {
    out[j] = (add ? out[j] : T(0)) + v[plane * g.in_vol() + chosen];
  });
}

bool window_is_whole_plane(const PoolGeometry& g) {
  return g.out_vol() == 1 && g.win == g.in && g.pad == PoolGeometry::Dims{0, 0, 0} && g.dil == PoolGeometry::Dims{1, 1, 1};
}

namespace {
// A global mean-pool: each plane's contiguous values summed at once, and its
// adjoint spread back as a reduction's is.
template <class T>
void whole_plane_mean_forward(const PoolGeometry& g, const T* x, T* y) {
  const std::int64_t n = g.in_vol();
  parallel_for(g.N * g.C, threads_if(g.N * g.C * n > 20000),
               [&](std::int64_t plane) { y[plane] = sum_run(x + plane * n, n) / static_cast<T>(n); });
}

// Each plane of gx (=, or += unless write) gy's value over the plane's size,
// a task per block of planes (through broadcast_accumulate's general runs, the
// ResNet example's 128x128x7x7 pullback took 1.25 ms in the step).
template <class T>
void whole_plane_mean_backward(const PoolGeometry& g, const T* gy, T* gx, bool write) {
  const std::int64_t planes = g.N * g.C, n = g.in_vol();
  constexpr std::int64_t kPlanesPerTask = 64;
  const std::int64_t tasks = (planes + kPlanesPerTask - 1) / kPlanesPerTask;
  parallel_for(tasks, threads_if(planes * n > 32768), [&](std::int64_t task) {
    for (std::int64_t plane = task * kPlanesPerTask; plane < std::min(planes, (task + 1) * kPlanesPerTask); ++plane) {
      const T share = gy[plane] / static_cast<T>(n);
      T* out = gx + plane * n;
      if (write) std::fill(out, out + n, share);
      else
        for (std::int64_t i = 0; i < n; ++i) out[i] += share;
    }
  });
}
}  // namespace

template <class T>
void meanpool_forward(const PoolGeometry& g, bool count_include_pad, const T* x, T* y) {
  if (window_is_whole_plane(g)) return whole_plane_mean_forward(g, x, y);
  ScratchScope scratch;
  const Windows w(g, scratch);
  for_each_output(g, [&](std::int64_t plane, std::int64_t j, std::int64_t o0, std::int64_t o1, std::int64_t o2) {
    const T* xp = x + plane * g.in_vol();
    T acc = T(0);
    for_each_in_window(g, w, o0, o1, o2, [&](std::int64_t i) { acc += xp[i]; });
    y[j] = acc / static_cast<T>(mean_divisor(w, count_include_pad, o0, o1, o2));
  });
}

template <class T>
void meanpool_backward(const PoolGeometry& g, bool count_include_pad, const T* gy, T* gx, bool write) {
  if (window_is_whole_plane(g)) return whole_plane_mean_backward(g, gy, gx, write);
  ScratchScope scratch;
  const Windows w(g, scratch);
  for_each_output(g, [&](std::int64_t plane, std::int64_t j, std::int64_t o0, std::int64_t o1, std::int64_t o2) {
    T* gp = gx + plane * g.in_vol();
    const T share = gy[j] / static_cast<T>(mean_divisor(w, count_include_pad, o0, o1, o2));
    for_each_in_window(g, w, o0, o1, o2, [&](std::int64_t i) { gp[i] += share; });
  });
}

template <class T>
void lppool_forward(const PoolGeometry& g, T p, const T* x, T* y) {
  ScratchScope scratch;
  const Windows w(g, scratch);
  for_each_output(g, [&](std::int64_t plane, std::int64_t j, std::int64_t o0, std::int64_t o1, std::int64_t o2) {
    const T* xp = x + plane * g.in_vol();
    T acc = T(0);
    for_each_in_window(g, w, o0, o1, o2, [&](std::int64_t i) { acc += std::pow(std::abs(xp[i]), p); });
    y[j] = std::pow(acc, T(1) / p);
  });
}

template <class T>
void lppool_backward(const PoolGeometry& g, T p, const T* x, const T* y, const T* gy, T* gx) {
  ScratchScope scratch;
  const Windows w(g, scratch);
  // d y / d x_i = sign(x_i) |x_i|^(p-1) y^(1-p); zero where the window norm is zero.
  for_each_output(g, [&](std::int64_t plane, std::int64_t j, std::int64_t o0, std::int64_t o1, std::int64_t o2) {
    if (y[j] == T(0)) return;
    const T* xp = x + plane * g.in_vol();
    T* gp = gx + plane * g.in_vol();
    const T scale = gy[j] * std::pow(y[j], T(1) - p);
    for_each_in_window(g, w, o0, o1, o2, [&](std::int64_t i) {
      const T v = xp[i];
      gp[i] += scale * (v > 0 ? T(1) : v < 0 ? T(-1) : T(0)) * std::pow(std::abs(v), p - T(1));
    });
  });
}

#define TG_INSTANTIATE(T)                                                                             \
  template void maxpool_forward<T>(const PoolGeometry&, const T*, T*, T*);                 \
  template void maxpool_backward<T>(const PoolGeometry&, const T*, const T*, const T*, T*, const T*, bool); \
  template void maxpool_gather<T>(const PoolGeometry&, const T*, const T*, const T*, T*, bool, const T*);               \
  template void meanpool_forward<T>(const PoolGeometry&, bool, const T*, T*);                         \
  template void meanpool_backward<T>(const PoolGeometry&, bool, const T*, T*, bool);                        \
  template void lppool_forward<T>(const PoolGeometry&, T, const T*, T*);                              \
  template void lppool_backward<T>(const PoolGeometry&, T, const T*, const T*, const T*, T*);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg::kernels
