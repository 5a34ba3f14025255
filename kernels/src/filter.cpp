// Border extension, its adjoint, and N-D valid correlation (see filter.hpp).
#include "tapegrad/kernels/filter.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "conv_impl.hpp"
#include "tapegrad/kernels/error.hpp"
#include "tapegrad/kernels/isa.hpp"
#include "tapegrad/kernels/scratch.hpp"

namespace tg::kernels {

const char* to_string(BorderMode m) {
  switch (m) {
    case BorderMode::fill: return "fill";
    case BorderMode::replicate: return "replicate";
    case BorderMode::reflect: return "reflect";
    case BorderMode::symmetric: return "symmetric";
    case BorderMode::circular: return "circular";
  }
  return "?";
}

namespace {
std::int64_t positive_mod(std::int64_t a, std::int64_t m) {
  const std::int64_t r = a % m;
  return r < 0 ? r + m : r;
}
}  // namespace

std::int64_t border_source(BorderMode mode, std::int64_t j, std::int64_t n) {
  if (j >= 0 && j < n) return j;
  switch (mode) {
    case BorderMode::fill: return -1;
    case BorderMode::replicate: return j < 0 ? 0 : n - 1;
    case BorderMode::reflect: {
      if (n == 1) return 0;
      const std::int64_t m = positive_mod(j, 2 * (n - 1));
      return m < n ? m : 2 * (n - 1) - m;
    }
    case BorderMode::symmetric: {
      const std::int64_t m = positive_mod(j, 2 * n);
      return m < n ? m : 2 * n - 1 - m;
    }
    case BorderMode::circular: return positive_mod(j, n);
  }
  return -1;
}

namespace {

// For every padded dim, the source index of each padded position (-1 = fill).
struct BorderMaps {
  std::span<std::span<std::int64_t>> source;
  Shape padded;
  std::span<std::int64_t> index;  // the row odometer of for_each_padded_row
  BorderMaps(const Shape& shape, std::span<const std::int64_t> lo, std::span<const std::int64_t> hi, BorderMode mode,
             ScratchScope& scratch)
      : source(scratch.take<std::span<std::int64_t>>(static_cast<std::int64_t>(shape.rank()))),
        index(scratch.take<std::int64_t>(static_cast<std::int64_t>(shape.rank()))) {
    for (std::size_t d = 0; d < shape.rank(); ++d) {
      const std::int64_t p = shape[d] + lo[d] + hi[d];
      padded.push_back(p);
      auto& m = source[d] = scratch.take<std::int64_t>(p);
      for (std::int64_t j = 0; j < p; ++j) m[static_cast<std::size_t>(j)] = border_source(mode, j - lo[d], shape[d]);
    }
  }
};

// Calls row(padded_row_offset, source_row_offset or -1, own) for every row (all
// dims but the last) of the padded array, `own` when it is the image's own row
// rather than a copy in the extension; the last dim is mapped by the caller.
template <class F>
void for_each_padded_row(BorderMaps& maps, const Shape& shape, std::span<const std::int64_t> lo, F row) {
  const std::size_t rank = shape.rank();
  const std::int64_t rows = rank <= 1 ? 1 : [&] {
    std::int64_t r = 1;
    for (std::size_t d = 0; d + 1 < rank; ++d) r *= maps.padded[d];
    return r;
  }();
  const Strides src_strides = contiguous_strides(shape);
  std::span<std::int64_t> index = maps.index;
  std::fill(index.begin(), index.end(), 0);
  for (std::int64_t r = 0; r < rows; ++r) {
    std::int64_t src = 0;
    bool own = true;
    for (std::size_t d = 0; d + 1 < rank; ++d) {
      const std::int64_t s = maps.source[d][static_cast<std::size_t>(index[d])];
      if (s < 0) {
        src = -1;
        own = false;
        break;
      }
      src += s * src_strides[d];
      own = own && index[d] - lo[d] == s;
    }
    row(r * maps.padded.back(), src, own);
    for (std::size_t d = rank - 1; d-- > 0;) {  // next row: odometer over the leading dims
      if (++index[d] < maps.padded[d]) break;
      index[d] = 0;
    }
  }
}

}  // namespace

template <class T>
void border_pad(const T* x, const Shape& shape, std::span<const std::int64_t> lo, std::span<const std::int64_t> hi,
                BorderMode mode, T fill, T* out) {
  ScratchScope scratch;
  BorderMaps maps(shape, lo, hi, mode, scratch);
  const auto& last = maps.source.back();
  const std::int64_t n = shape.back(), before = lo.back(), width = maps.padded.back();
  for_each_padded_row(maps, shape, lo, [&](std::int64_t dst, std::int64_t src, bool) {
    T* o = out + dst;
    if (src < 0) return std::fill(o, o + width, fill);
    const T* s = x + src;
    for (std::int64_t j = 0; j < before; ++j) o[j] = last[static_cast<std::size_t>(j)] < 0 ? fill : s[last[static_cast<std::size_t>(j)]];
    std::copy(s, s + n, o + before);
    for (std::int64_t j = before + n; j < width; ++j)
      o[j] = last[static_cast<std::size_t>(j)] < 0 ? fill : s[last[static_cast<std::size_t>(j)]];
  });
}

template <class T>
void border_pad_adjoint(const T* gpadded, const Shape& shape, std::span<const std::int64_t> lo,
                        std::span<const std::int64_t> hi, BorderMode mode, T* gx, T* gfill, bool accumulate) {
  ScratchScope scratch;
  BorderMaps maps(shape, lo, hi, mode, scratch);
  const auto& last = maps.source.back();
  const std::int64_t n = shape.back(), before = lo.back(), width = maps.padded.back();
  // Written, not added: the image's own pixels first, so that the copies in
  // the extension then add onto them.
  const bool write_own = gx && !accumulate;
  if (write_own)
    for_each_padded_row(maps, shape, lo, [&](std::int64_t src_row, std::int64_t dst, bool own) {
      if (own) std::copy(gpadded + src_row + before, gpadded + src_row + before + n, gx + dst);
    });
  T fill_sum = T(0);
  for_each_padded_row(maps, shape, lo, [&](std::int64_t src_row, std::int64_t dst, bool own) {
    const T* g = gpadded + src_row;
    if (dst < 0) {
      for (std::int64_t j = 0; j < width; ++j) fill_sum += g[j];
      return;
    }
    // The image's own pixels map one to one; only the extension needs the map.
    if (gx && !(own && write_own)) {
      T* row = gx + dst;
      const T* inside = g + before;
      for (std::int64_t j = 0; j < n; ++j) row[j] += inside[j];
    }
    for (std::int64_t j = 0; j < width; ++j) {
      if (j == before) j += n;
      if (j >= width) break;
      const std::int64_t s = last[static_cast<std::size_t>(j)];
      if (s < 0)
        fill_sum += g[j];
      else if (gx)
        gx[dst + s] += g[j];
    }
  });
  if (gfill) *gfill += fill_sum;
}

// ---- N-D valid correlation --------------------------------------------------

Correlation correlation_geometry(const Shape& padded, const Shape& kernel, bool flip, const char* op) {
  if (padded.rank() == 0 || kernel.rank() != padded.rank())
    fail(op, fmt::format("image {} and kernel {} expected the same rank >= 1", to_string(padded), to_string(kernel)));
  Correlation c;
  c.padded = padded;
  c.kernel = kernel;
  c.flip = flip;
  for (std::size_t d = 0; d < padded.rank(); ++d) {
    if (kernel[d] < 1 || kernel[d] > padded[d])
      fail(op, fmt::format("kernel {} is larger than the (extended) image {} along dim {} expected 1 <= kernel <= image; "
                           "hint: use output = same or full, or a smaller kernel",
                           to_string(kernel), to_string(padded), d));
    c.out.push_back(padded[d] - kernel[d] + 1);
  }
  // The innermost (up to) 3 dims form one single-channel convolution.
  const std::size_t inner = std::min<std::size_t>(3, padded.rank());
  Shape xs{1, 1}, ws{1, 1};
  for (std::size_t d = padded.rank() - inner; d < padded.rank(); ++d) {
    xs.push_back(padded[d]);
    ws.push_back(kernel[d]);
  }
  ConvSpec spec;
  spec.flip = flip;
  c.inner = conv_geometry(xs, ws, spec, op);
  return c;
}

namespace {

// Runs pass(xp_offset, w_offset, y_offset) for every combination of leading
// (rank > 3) output and kernel indices: y[o] gets xp[o + t] (*) w[t].
template <class F>
void for_each_leading(const Correlation& c, F pass) {
  const std::size_t lead = c.padded.rank() > 3 ? c.padded.rank() - 3 : 0;
  if (lead == 0) return pass(0, 0, 0);
  const Strides xs = contiguous_strides(c.padded), ws = contiguous_strides(c.kernel), ys = contiguous_strides(c.out);
  std::vector<std::int64_t> o(lead, 0), t(lead, 0);
  auto next = [&](std::vector<std::int64_t>& idx, const Shape& extent) {
    for (std::size_t d = lead; d-- > 0;) {
      if (++idx[d] < extent[d]) return true;
      idx[d] = 0;
    }
    return false;
  };
  do {
    do {
      std::int64_t xo = 0, wo = 0, yo = 0;
      for (std::size_t d = 0; d < lead; ++d) {
        const std::int64_t tap = c.flip ? c.kernel[d] - 1 - t[d] : t[d];
        xo += (o[d] + t[d]) * xs[d];
        wo += tap * ws[d];
        yo += o[d] * ys[d];
      }
      pass(xo, wo, yo);
    } while (next(t, c.kernel));
  } while (next(o, c.out));
}

}  // namespace

template <class T>
void correlate_forward(const Correlation& c, ConvAlgorithm a, const T* xp, const T* w, T* y, bool accumulate) {
  if (c.padded.rank() <= 3) return conv_forward(c.inner, a, xp, w, y, accumulate);
  if (!accumulate) std::fill(y, y + c.out.size(), T(0));
  for_each_leading(c, [&](std::int64_t xo, std::int64_t wo, std::int64_t yo) {
    conv_forward(c.inner, a, xp + xo, w + wo, y + yo, /*accumulate=*/true);
  });
}

template <class T>
void correlate_backward_input(const Correlation& c, ConvAlgorithm a, const T* gy, const T* w, T* gxp, bool accumulate) {
  if (c.padded.rank() <= 3) return conv_backward_input(c.inner, a, gy, w, gxp, accumulate);
  if (!accumulate) std::fill(gxp, gxp + c.padded.size(), T(0));
  for_each_leading(c, [&](std::int64_t xo, std::int64_t wo, std::int64_t yo) {
    conv_backward_input(c.inner, a, gy + yo, w + wo, gxp + xo);
  });
}

template <class T>
void correlate_backward_weight(const Correlation& c, ConvAlgorithm a, const T* xp, const T* gy, T* gw) {
  for_each_leading(c, [&](std::int64_t xo, std::int64_t wo, std::int64_t yo) {
    conv_backward_weight(c.inner, a, xp + xo, gy + yo, gw + wo);
  });
}

// ---- the extended image by rows (Note [Extended rows]) ------------------------

// Note [Rows or shifted copies]: the direct algorithm runs a filter's forward
// and kernel gradient by shifted copies (Note [Shifted copies]) at AVX-512
// while the image's copies (KW of them) hold at most kShiftedFilterCopies
// elements, and by rows otherwise. Replayed gradient of a 3x3 replicate
// filter, one thread, Zen 4, shifted against rows: 32^2 6.0 against 11.6 us
// (f64), 3.9 against 15.5 (f32); 128^2 76 against 73 (f64), 45 against 61
// (f32); 200^2 204 against 147-153 (f64), 114 against 92-114 (f32); 256^2
// 370-380 against 191-231 (f64), 190 against 143-174 (f32): past L2 the
// copies cost more than they save. At AVX2 (4 x 3 forward blocks, one filter:
// load-bound) the rows were faster from 64^2 in double: 21.6 against 27-37 us.
constexpr double kShiftedFilterCopies = 64 * 1024;

bool rows_serve(const Correlation& c, const std::array<ConvAlgorithm, 3>& algorithms) {
  for (ConvAlgorithm a : algorithms)
    if (a != ConvAlgorithm::direct) return false;
  const ConvGeometry& g = c.inner;
  const double copies = double(g.ker[2]) * double(g.out[1] + g.ker[1] - 1) * double(g.out[2]);
  const bool shifted = kernel_isa() >= Isa::avx512 && conv_impl::shifted_runs(g, ConvPass::forward) &&
                       conv_impl::shifted_runs(g, ConvPass::backward_weight) && copies <= kShiftedFilterCopies;
  return !shifted;
}

std::optional<BorderRows> border_rows(const Correlation& c, const Shape& image, std::span<const std::int64_t> lo,
                                      BorderMode mode) {
  const std::size_t rank = image.rank();
  if (rank < 1 || rank > 2 || lo.size() != rank || c.padded.rank() != rank) return std::nullopt;
  for (std::size_t d = 0; d < rank; ++d)
    if (lo[d] < 0 || lo[d] > c.kernel[d] - 1 || c.padded[d] - image[d] - lo[d] < 0 ||
        c.padded[d] - image[d] - lo[d] > c.kernel[d] - 1)
      return std::nullopt;
  BorderRows b;
  b.rows = rank == 2 ? image[0] : 1;
  b.cols = image.back();
  b.krows = rank == 2 ? c.kernel[0] : 1;
  b.top = rank == 2 ? lo[0] : 0;
  const std::int64_t left = lo.back();
  b.ext_rows = rank == 2 ? c.padded[0] : 1;
  b.ext_cols = c.padded.back();
  b.mode = mode;
  b.flip = c.flip;
  ConvSpec spec;
  spec.pad_lo = {left};
  spec.pad_hi = {b.ext_cols - b.cols - left};
  b.row = conv_geometry(Shape{1, 1, b.cols}, Shape{1, 1, c.kernel.back()}, spec, "correlate");
  return b;
}

namespace {
// w reversed in every dim (a true convolution's kernel as the correlation reads it).
template <class T>
const T* unflipped_kernel(const BorderRows& b, const T* w, ScratchScope& scratch) {
  if (!b.flip) return w;
  const std::int64_t kv = b.krows * b.row.ker[2];
  T* r = scratch.take<T>(kv).data();
  for (std::int64_t t = 0; t < kv; ++t) r[t] = w[kv - 1 - t];
  return r;
}
}  // namespace

template <class T>
void rows_forward(const BorderRows& b, const T* x, T fill, const T* w, T* y, bool accumulate) {
  ScratchScope scratch;
  conv_impl::direct_rows_forward(b, x, fill, unflipped_kernel(b, w, scratch), y, accumulate);
}

template <class T>
void rows_backward_input(const BorderRows& b, const T* gy, const T* w, T* gx, T* gfill, bool accumulate) {
  ScratchScope scratch;
  conv_impl::direct_rows_backward_input(b, gy, unflipped_kernel(b, w, scratch), gx, gfill, accumulate);
}

template <class T>
void rows_backward_weight(const BorderRows& b, const T* x, T fill, const T* gy, T* gw) {
  if (!b.flip) return conv_impl::direct_rows_backward_weight(b, x, fill, gy, gw);
  // The gradient of the reversed kernel, reversed back onto the kernel the caller holds.
  ScratchScope scratch;
  const std::int64_t kv = b.krows * b.row.ker[2];
  T* reversed = scratch.take_filled<T>(kv, T(0)).data();
  conv_impl::direct_rows_backward_weight(b, x, fill, gy, reversed);
  for (std::int64_t t = 0; t < kv; ++t) gw[t] += reversed[kv - 1 - t];
}

#define TG_INSTANTIATE(T)                                                                                            \
  template void rows_forward<T>(const BorderRows&, const T*, T, const T*, T*, bool);                                 \
  template void rows_backward_input<T>(const BorderRows&, const T*, const T*, T*, T*, bool);                         \
  template void rows_backward_weight<T>(const BorderRows&, const T*, T, const T*, T*);                               \
  template void border_pad<T>(const T*, const Shape&, std::span<const std::int64_t>, std::span<const std::int64_t>,  \
                              BorderMode, T, T*);                                                                    \
  template void border_pad_adjoint<T>(const T*, const Shape&, std::span<const std::int64_t>,                         \
                                      std::span<const std::int64_t>, BorderMode, T*, T*, bool);                      \
  template void correlate_forward<T>(const Correlation&, ConvAlgorithm, const T*, const T*, T*, bool);                     \
  template void correlate_backward_input<T>(const Correlation&, ConvAlgorithm, const T*, const T*, T*, bool);              \
  template void correlate_backward_weight<T>(const Correlation&, ConvAlgorithm, const T*, const T*, T*);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg::kernels
