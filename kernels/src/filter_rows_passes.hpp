// A filter's three passes over its extended image row by row (Note [Extended
// rows], filter.hpp), on the direct loops of conv_direct_passes.hpp: included
// after it, in the same two files and namespaces. The kernel is never flipped
// here (filter.cpp reverses it first).
#pragma once

#ifndef TG_DIRECT_ISA
#error "include filter_rows_passes.hpp after conv_direct_passes.hpp"
#endif

#include "tapegrad/kernels/filter.hpp"

#if defined(TG_DIRECT_AVX2) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

namespace tg::kernels::conv_impl::TG_DIRECT_ISA {
namespace {

constexpr std::int64_t kBandRows = 64;  // output rows a task runs (the kernel gradient's sums are cut by them too)

// The valid 1-D correlation of a row of `in` elements with the row geometry's
// kernel row (in >= its taps), the part of a pass that reads no border.
ConvGeometry valid_row(const ConvGeometry& row, std::int64_t in) {
  ConvGeometry v = row;
  v.in[2] = in;
  v.lo[2] = v.hi[2] = 0;
  v.out[2] = in - row.ker[2] + 1;
  return v;
}

// A valid row geometry's taps and interior (conv_direct_passes.hpp).
struct RowTaps {
  ConvGeometry g;
  std::span<const TapRange> taps;
  std::int64_t interior[2] = {0, 0};
  RowTaps(const ConvGeometry& geometry, ScratchScope& scratch) : g(geometry), taps(row_ranges(g, scratch)) {
    interior_of(taps, interior);
  }
};

// What the passes share: the border's row and column maps (the image row or
// column each extended one copies, -1 for the fill value), the image's rows
// by extended row (a row of fill values for a fill row), and the outputs of a
// row that read no border column: [edge_begin, edge_end), where the valid
// correlation of the image's rows goes.
template <class T>
struct RowPlan {
  const BorderRows& b;
  T fill;
  std::int64_t K2, left, edge_begin, edge_end;
  std::span<const std::int64_t> row_source, col_source;
  std::span<const T*> row;  // by extended row

  RowPlan(const BorderRows& plan, const T* x, T fill_value, ScratchScope& scratch)
      : b(plan), fill(fill_value), K2(b.row.ker[2]), left(b.row.lo[2]) {
    row_source = map(b.mode, b.ext_rows, b.top, b.rows, scratch);
    col_source = map(b.mode, b.ext_cols, left, b.cols, scratch);
    const T* fill_row = x ? scratch.take_filled<T>(b.cols, fill).data() : nullptr;
    row = scratch.take<const T*>(b.ext_rows);
    for (std::int64_t p = 0; p < b.ext_rows; ++p) {
      const std::int64_t s = row_source[static_cast<std::size_t>(p)];
      row[static_cast<std::size_t>(p)] = s >= 0 && x ? x + s * b.cols : fill_row;
    }
    edge_begin = std::min(b.out_cols(), left);
    edge_end = edge_begin + std::max<std::int64_t>(0, b.cols - K2 + 1);
    plan_edges(scratch);
  }
  static std::span<const std::int64_t> map(BorderMode mode, std::int64_t extended, std::int64_t before, std::int64_t n,
                                           ScratchScope& scratch) {
    std::span<std::int64_t> m = scratch.take<std::int64_t>(extended);
    for (std::int64_t j = 0; j < extended; ++j) m[static_cast<std::size_t>(j)] = border_source(mode, j - before, n);
    return m;
  }
  // f(tap, value) for every tap of edge output e (edge_outputs[e]) of output
  // row o_row: the few outputs near the row's ends that read the border.
  template <class F>
  void for_each_tap_of(std::int64_t o_row, std::size_t e, F f) const {
    const std::int64_t* source = edge_source.data() + e * static_cast<std::size_t>(K2);
    for (std::int64_t t1 = 0; t1 < b.krows; ++t1) {
      const T* xr = row[static_cast<std::size_t>(o_row + t1)];
      for (std::int64_t t2 = 0; t2 < K2; ++t2) {
        const std::int64_t c = source[t2];
        f(t1 * K2 + t2, c < 0 ? fill : xr[c]);
      }
    }
  }
  // The outputs outside [edge_begin, edge_end), and each one's taps' image columns (-1: fill).
  std::span<std::int64_t> edge_outputs, edge_source;

 private:
  void plan_edges(ScratchScope& scratch) {
    const std::int64_t n = edge_begin + b.out_cols() - edge_end;
    edge_outputs = scratch.take<std::int64_t>(n);
    edge_source = scratch.take<std::int64_t>(n * K2);
    std::int64_t e = 0;
    auto add = [&](std::int64_t o) {
      edge_outputs[static_cast<std::size_t>(e)] = o;
      for (std::int64_t t2 = 0; t2 < K2; ++t2) edge_source[static_cast<std::size_t>(e * K2 + t2)] = col_source[static_cast<std::size_t>(o + t2)];
      ++e;
    };
    for (std::int64_t o = 0; o < edge_begin; ++o) add(o);
    for (std::int64_t o = edge_end; o < b.out_cols(); ++o) add(o);
  }
};

}  // namespace

template <class T>
void rows_forward_any(const BorderRows& b, const T* x, T fill, const T* w, T* y, bool accumulate) {
  ScratchScope scratch;
  const RowPlan<T> plan(b, x, fill, scratch);
  const RowTaps valid(valid_row(b.row, std::max(b.cols, plan.K2)), scratch);
  const std::int64_t out_rows = b.out_rows(), bands = (out_rows + kBandRows - 1) / kBandRows;
  const double macs = double(out_rows) * double(b.out_cols()) * double(b.krows * plan.K2);
  parallel_for(bands, threads_if(macs > kParallelMacs), [&](std::int64_t band) {
    ScratchScope own;  // this thread's stack (Note [Scratch stack])
    TapRows<T> rows{own.take<const T*>(b.krows), own.take<const T*>(b.krows)};
    for (std::int64_t o = band * kBandRows; o < std::min(out_rows, (band + 1) * kBandRows); ++o) {
      T* yrow = y + o * b.out_cols();
      if (plan.edge_end > plan.edge_begin) {
        rows.count = 0;
        for (std::int64_t t = 0; t < b.krows; ++t) rows.add(plan.row[static_cast<std::size_t>(o + t)], w + t * plan.K2);
        output_row(valid.g, valid.taps, valid.interior, yrow + plan.edge_begin, rows, accumulate);
      }
      for (std::size_t e = 0; e < plan.edge_outputs.size(); ++e) {
        T sum = T(0);
        plan.for_each_tap_of(o, e, [&](std::int64_t tap, T v) { sum += w[tap] * v; });
        T& out = yrow[plan.edge_outputs[e]];
        out = accumulate ? out + sum : sum;
      }
    }
  });
}

// Per band of output rows, its own sums (added in band order at the end, so the
// result does not depend on the thread count).
template <class T>
void rows_backward_weight_any(const BorderRows& b, const T* x, T fill, const T* gy, T* gw) {
  ScratchScope scratch;
  const RowPlan<T> plan(b, x, fill, scratch);
  const RowTaps valid(valid_row(b.row, std::max(b.cols, plan.K2)), scratch);
  const std::int64_t K2 = plan.K2, kv = b.krows * K2, out_rows = b.out_rows(), out_cols = b.out_cols();
  const std::int64_t count = plan.edge_end - plan.edge_begin;
  const bool fuse = count > 0 && kernel_rows_fuse<T>(valid.g, b.krows, valid.interior);  // Note [Fused kernel rows]
  const std::int64_t bands = (out_rows + kBandRows - 1) / kBandRows;
  const std::span<T> band_sums = scratch.take<T>(bands * kv);
  const double macs = double(out_rows) * double(out_cols) * double(kv);
  parallel_for(bands, threads_if(macs > kParallelMacs), [&](std::int64_t band) {
    ScratchScope own;
    const std::span<T> acc = own.take_filled<T>(kv, T(0));
    const std::span<Vec<T>> sums = own.take<Vec<T>>(kv);  // filled here: Note [Lanes never cross a call]
    for (auto& v : sums) v = Vec<T>{};
    for (std::int64_t o = band * kBandRows; o < std::min(out_rows, (band + 1) * kBandRows); ++o) {
      const T* gyrow = gy + o * out_cols;
      const T* const* xrows = plan.row.data() + o;
      // (no edges in the valid part: fused_kernel_rows itself, not kernel_rows_with_edges, whose empty edge loops cost 8%)
      if (fuse && K2 == 3) fused_kernel_rows<3>(sums.data(), acc.data(), xrows, gyrow + plan.edge_begin, count);
      else if (fuse) fused_kernel_rows<2>(sums.data(), acc.data(), xrows, gyrow + plan.edge_begin, count);
      else if (count > 0)
        for (std::int64_t t = 0; t < b.krows; ++t)
          dot_kernel_row(valid.g, valid.taps, valid.interior, sums.data() + t * K2, acc.data() + t * K2, xrows[t],
                         gyrow + plan.edge_begin);
      for (std::size_t e = 0; e < plan.edge_outputs.size(); ++e) {
        const T g = gyrow[plan.edge_outputs[e]];
        plan.for_each_tap_of(o, e, [&](std::int64_t tap, T v) { acc[static_cast<std::size_t>(tap)] += g * v; });
      }
    }
    for (std::int64_t t = 0; t < kv; ++t) {
      T total = acc[static_cast<std::size_t>(t)];
      for (int j = 0; j < kVec<T>; ++j) total += sums[static_cast<std::size_t>(t)][j];
      band_sums[static_cast<std::size_t>(band * kv + t)] = total;
    }
  });
  for (std::int64_t band = 0; band < bands; ++band)
    for (std::int64_t t = 0; t < kv; ++t) gw[t] += band_sums[static_cast<std::size_t>(band * kv + t)];
}

namespace {

// The image gradient of one extended row p: sum over the kernel rows t that
// reach it of the adjoint of row t's correlation applied to gy's row p - t.
// An extended column q's adjoint is sum over taps t2 of gy[q - t2] w[t2];
// for the image's own columns c in [first, first + valid.out) every tap lands
// inside gy's row, which is the valid correlation of gy's row with the kernel
// row reversed (wr), written at column `first` = K2 - 1 - left.
template <class T>
struct RowAdjoint {
  const BorderRows& b;
  const RowPlan<T>& plan;
  const RowTaps& valid;  // over gy's row
  const T* w;            // the kernel
  const T* wr;           // each kernel row reversed
  std::int64_t first;    // the first own column every tap reaches: K2 - 1 - left
  std::int64_t own_end;  // and one past the last

  void gather(std::int64_t p, const T* gy, TapRows<T>& rows) const {
    rows.count = 0;
    for (std::int64_t t = std::max<std::int64_t>(0, p - b.out_rows() + 1); t <= std::min(p, b.krows - 1); ++t)
      rows.add(gy + (p - t) * b.out_cols(), wr + t * plan.K2);
  }
  // Extended column q's adjoint, one tap at a time (the rows gathered for p).
  T column(const TapRows<T>& rows, std::int64_t p, std::int64_t q) const {
    const std::int64_t K2 = plan.K2, t_first = std::max<std::int64_t>(0, p - b.out_rows() + 1);
    T sum = T(0);
    for (std::int64_t r = 0; r < rows.count; ++r) {
      const T* gyrow = rows.x[static_cast<std::size_t>(r)];
      const T* wrow = w + (t_first + r) * K2;
      for (std::int64_t t2 = std::max<std::int64_t>(0, q - b.out_cols() + 1); t2 <= std::min(q, K2 - 1); ++t2)
        sum += gyrow[q - t2] * wrow[t2];
    }
    return sum;
  }
  // Extended row p's adjoint folded back: onto image row gxrow (its own
  // columns first, written or added to, then its border columns added; null:
  // no image gradient wanted), or, for a fill row, all of it onto the fill
  // value. Returns what falls on the fill value.
  T fold(std::int64_t p, const T* gy, TapRows<T>& rows, T* gxrow, bool fill_row, bool write_own) const {
    gather(p, gy, rows);
    T fill_sum = T(0);
    if (fill_row) {
      for (std::int64_t c = 0; c < b.cols; ++c) fill_sum += column(rows, p, plan.left + c);
    } else if (gxrow) {
      if (own_end > first) output_row(valid.g, valid.taps, valid.interior, gxrow + first, rows, !write_own);
      auto edge = [&](std::int64_t c) {
        const T v = column(rows, p, plan.left + c);
        gxrow[c] = write_own ? v : gxrow[c] + v;
      };
      for (std::int64_t c = 0; c < std::min(first, b.cols); ++c) edge(c);
      for (std::int64_t c = std::max(first, own_end); c < b.cols; ++c) edge(c);
    }
    for (std::int64_t q = 0; q < b.ext_cols; ++q) {
      if (q == plan.left) q += b.cols;
      if (q >= b.ext_cols) break;
      const std::int64_t source = plan.col_source[static_cast<std::size_t>(q)];
      if (fill_row || source < 0) fill_sum += column(rows, p, q);
      else if (gxrow) gxrow[source] += column(rows, p, q);
    }
    return fill_sum;
  }
};

}  // namespace

template <class T>
void rows_backward_input_any(const BorderRows& b, const T* gy, const T* w, T* gx, T* gfill, bool accumulate) {
  ScratchScope scratch;
  const RowPlan<T> plan(b, nullptr, T(0), scratch);
  const std::int64_t K2 = plan.K2;
  const RowTaps valid(valid_row(b.row, std::max(b.out_cols(), K2)), scratch);
  const std::span<T> wr = scratch.take<T>(b.krows * K2);
  for (std::int64_t t = 0; t < b.krows; ++t)
    for (std::int64_t j = 0; j < K2; ++j) wr[static_cast<std::size_t>(t * K2 + j)] = w[t * K2 + K2 - 1 - j];
  const std::int64_t first = K2 - 1 - plan.left;
  const RowAdjoint<T> adj{b, plan, valid, w, wr.data(), first, first + std::max<std::int64_t>(0, b.out_cols() - K2 + 1)};
  // The image's own rows (extended rows top .. top + rows - 1) in bands, each
  // written (or added to) in place; the fill's sums per band, added in band order.
  const std::int64_t bands = (b.rows + kBandRows - 1) / kBandRows;
  const std::span<T> band_fill = scratch.take_filled<T>(bands, T(0));
  const double macs = double(b.out_rows()) * double(b.out_cols()) * double(b.krows * K2);
  parallel_for(bands, threads_if(macs > kParallelMacs), [&](std::int64_t band) {
    ScratchScope own;
    TapRows<T> rows{own.take<const T*>(b.krows), own.take<const T*>(b.krows)};
    for (std::int64_t s = band * kBandRows; s < std::min(b.rows, (band + 1) * kBandRows); ++s)
      band_fill[static_cast<std::size_t>(band)] += adj.fold(b.top + s, gy, rows, gx ? gx + s * b.cols : nullptr, false, !accumulate);
  });
  T fill_sum = T(0);
  for (std::int64_t band = 0; band < bands; ++band) fill_sum += band_fill[static_cast<std::size_t>(band)];
  // Then the border's rows, added onto the rows they copy (or onto the fill value).
  TapRows<T> rows{scratch.take<const T*>(b.krows), scratch.take<const T*>(b.krows)};
  for (std::int64_t p = 0; p < b.ext_rows; ++p) {
    if (p == b.top) p += b.rows;
    if (p >= b.ext_rows) break;
    const std::int64_t s = plan.row_source[static_cast<std::size_t>(p)];
    if (s >= 0) fill_sum += adj.fold(p, gy, rows, gx ? gx + s * b.cols : nullptr, false, false);
    else if (gfill) fill_sum += adj.fold(p, gy, rows, nullptr, true, false);
  }
  if (gfill) *gfill += fill_sum;
}

}  // namespace tg::kernels::conv_impl::TG_DIRECT_ISA

#if defined(TG_DIRECT_AVX2) && !defined(__clang__)
#pragma GCC pop_options
#endif
