// im2col + GEMM through OpenBLAS: the workhorse for channel-heavy layers.
//
// The output positions of the whole batch, taken output row by output row
// (a "row" is one run along the last spatial dim, out[2] positions), are cut
// into column blocks of about kBlockColumns positions: a block is a slice of
// one sample's rows or several whole samples. For one block and one group,
// with R = Cg * ker_vol patch rows and B = the block's columns:
//   col (R x B)                 = the input patches, one column per output position
//   forward:          y_b  (Kg x B) = W_g (Kg x R) . col (R x B)
//   backward input:   col  (R x B)  = W_g^T (R x Kg) . gy_b (Kg x B);   gx += col2im(col)
//                     (for unit stride: the forward pass of the adjoint geometry instead)
//   backward weight:  gW_g (Kg x R) += gy_b (Kg x B) . col^T (B x R)
// y_b / gy_b are strided views into y / gy when the block lies in one sample,
// else packed copies. Blocks keep the workspace cache-sized and give small
// layers (many samples of few positions) GEMMs big enough to run fast.
//
// Parallelism: with at least two chunks of blocks (see Blocking), OpenMP splits the
// blocks (batch and spatial tiles alike) and each thread runs single-threaded
// GEMMs on its own workspace (OpenBLAS's OpenMP build runs serially inside a
// parallel region); with fewer blocks they run in turn and OpenBLAS threads
// each GEMM itself. A pointwise convolution (1x1, stride 1, unpadded) uses
// the input rows as col directly when its block lies in one sample.
#include <omp.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "conv_impl.hpp"
#include "tapegrad/kernels/gemm.hpp"
#include "tapegrad/kernels/scratch.hpp"

namespace tg::kernels::conv_impl {
namespace {

// Output positions per block: enough for an efficient GEMM, few enough that
// the block's patches stay in cache between im2col and the GEMM (measured on
// the issue-3 layers: 256-512 beat 1024-4096 by 10-30%). A pointwise conv has
// no patches to copy, so its blocks are whole samples (at least kPointwiseColumns).
constexpr std::int64_t kBlockColumns = 512;
constexpr std::int64_t kPointwiseColumns = 4096;
// Largest K.kernel (patch rows of the adjoint conv) for which the unit-stride
// input adjoint runs as a forward conv (see im2col_backward_input).
constexpr std::int64_t kAdjointMaxRows = 1280;
// ... and at least this many input channels per group (its GEMM's rows; L1,
// with one input channel, would run a GEMV: 1.5 ms as col2im, 22 ms as a conv).
constexpr std::int64_t kAdjointMinChannels = 16;

std::int64_t col_rows(const ConvGeometry& g) { return g.Cg * g.ker_vol(); }

// A run of output rows [begin, end) of the flattened (sample, row) space.
struct Block {
  std::int64_t begin, end;
};

// Blocks [first, second) of one chunk.
struct Chunk {
  std::size_t first, second;
};

struct Blocking {
  std::int64_t rows_per_sample, row_len;  // out[0]*out[1] rows of out[2] positions
  std::span<Block> blocks;  // in the caller's scratch (Note [Scratch stack])
  std::int64_t max_columns = 0;
  // Blocks of the same sample write overlapping parts of gx in the backward-input
  // pass (neighbouring output rows share input rows), so work is handed out in
  // chunks [first, last) of blocks: all blocks that start in one sample go to one thread.
  std::span<Chunk> chunks;
  int threads = 1;  // min(conv_threads(), chunks)
};

Blocking make_blocks(const ConvGeometry& g, ScratchScope& scratch) {
  Blocking b;
  b.rows_per_sample = g.out[0] * g.out[1];
  b.row_len = g.out[2];
  const std::int64_t target = g.pointwise() ? std::max(kPointwiseColumns, g.out_vol()) : kBlockColumns;
  const std::int64_t rows = std::max<std::int64_t>(1, target / b.row_len);
  std::size_t count = 0;
  if (rows >= b.rows_per_sample) {
    // Whole samples per block.
    const std::int64_t samples = rows / b.rows_per_sample;
    b.blocks = scratch.take<Block>((g.N + samples - 1) / samples);
    for (std::int64_t n = 0; n < g.N; n += samples)
      b.blocks[count++] = {n * b.rows_per_sample, std::min(g.N, n + samples) * b.rows_per_sample};
  } else {
    // Slices of one sample; a block never crosses a sample boundary.
    b.blocks = scratch.take<Block>(g.N * ((b.rows_per_sample + rows - 1) / rows));
    for (std::int64_t n = 0; n < g.N; ++n)
      for (std::int64_t r = 0; r < b.rows_per_sample; r += rows)
        b.blocks[count++] = {n * b.rows_per_sample + r, n * b.rows_per_sample + std::min(b.rows_per_sample, r + rows)};
  }
  for (const auto& blk : b.blocks) b.max_columns = std::max(b.max_columns, (blk.end - blk.begin) * b.row_len);
  auto chunks = scratch.take<Chunk>(std::ssize(b.blocks));
  std::size_t n_chunks = 0;
  for (std::size_t i = 0; i < b.blocks.size();) {
    std::size_t j = i + 1;
    const std::int64_t sample = b.blocks[i].begin / b.rows_per_sample;
    while (j < b.blocks.size() && b.blocks[j].begin / b.rows_per_sample == sample) ++j;
    chunks[n_chunks++] = {i, j};
    i = j;
  }
  b.chunks = chunks.first(n_chunks);
  b.threads = static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(conv_threads(), std::ssize(b.chunks))));
  return b;
}

bool single_sample(const Blocking& b, const Block& blk) {
  return blk.begin / b.rows_per_sample == (blk.end - 1) / b.rows_per_sample;
}

// Calls f(sample, first row within the sample, row count, first column in the block)
// for each sample segment of a block.
template <class F>
void for_each_segment(const Blocking& b, const Block& blk, F f) {
  for (std::int64_t r = blk.begin; r < blk.end;) {
    const std::int64_t n = r / b.rows_per_sample, within = r % b.rows_per_sample;
    const std::int64_t count = std::min(blk.end - r, b.rows_per_sample - within);
    f(n, within, count, (r - blk.begin) * b.row_len);
    r += count;
  }
}

// The one traversal im2col and col2im share: for every patch row (c, t0, t1, t2)
// and every output row of the block, calls
//   run(col_row, input_row, tap_range)
// with col_row the offset of that output row's entries in col, and input_row
// the offset in x of the input row the tap reads (-1 when it lies in the padding).
template <class F>
void for_each_patch_run(const ConvGeometry& g, const Blocking& b, const Block& blk, std::int64_t grp, F run) {
  const std::int64_t iv = g.in_vol(), cols = (blk.end - blk.begin) * b.row_len;
  for (std::int64_t c = 0; c < g.Cg; ++c)
    for (std::int64_t t0 = 0; t0 < g.ker[0]; ++t0)
      for (std::int64_t t1 = 0; t1 < g.ker[1]; ++t1)
        for (std::int64_t t2 = 0; t2 < g.ker[2]; ++t2) {
          const std::int64_t crow = (((c * g.ker[0] + t0) * g.ker[1] + t1) * g.ker[2] + t2) * cols;
          const TapRange r = tap_range(g, 2, t2);
          for_each_segment(b, blk, [&](std::int64_t n, std::int64_t row0, std::int64_t count, std::int64_t col0) {
            const std::int64_t channel = (n * g.C + grp * g.Cg + c) * iv;
            // Walk the output rows (o0, o1) without a division per row.
            std::int64_t o0 = row0 / g.out[1], o1 = row0 % g.out[1];
            std::int64_t i0 = input_index(g, 0, o0, t0);
            for (std::int64_t k = 0; k < count; ++k) {
              const std::int64_t i1 = input_index(g, 1, o1, t1);
              const std::int64_t input_row = i0 < 0 || i1 < 0 ? -1 : channel + (i0 * g.in[1] + i1) * g.in[2];
              run(crow + col0 + k * b.row_len, input_row, r);
              if (++o1 == g.out[1]) {
                o1 = 0;
                i0 = input_index(g, 0, ++o0, t0);
              }
            }
          });
        }
}

// Copies the patches of one group (channels [grp*Cg, (grp+1)*Cg)) for a block into col (R x columns).
// The runs are short (one output row, often 7-56 values), so the copies are
// plain loops the compiler inlines and vectorises, not memcpy/memset calls
// (GCC would turn the loops back into calls; the attribute stops it. Clang,
// used only for the fuzzing build, has no such attribute: it gets none).
#if defined(__clang__)
#define TG_NO_LOOP_TO_CALL
#else
#define TG_NO_LOOP_TO_CALL __attribute__((optimize("no-tree-loop-distribute-patterns")))
#endif
template <class T>
TG_NO_LOOP_TO_CALL void im2col(const ConvGeometry& g, const Blocking& b,
                                                                            const Block& blk, std::int64_t grp, const T* x,
                                                                            T* col) {
  const std::int64_t s2 = g.stride[2], len = b.row_len;
  for_each_patch_run(g, b, blk, grp, [&](std::int64_t col_row, std::int64_t input_row, const TapRange& r) {
    T* __restrict dst = col + col_row;
    if (input_row < 0 || r.empty()) {
      for (std::int64_t o = 0; o < len; ++o) dst[o] = T(0);
      return;
    }
    const T* __restrict src = x + input_row;  // src[r.offset + o * s2] is output o's input
    for (std::int64_t o = 0; o < r.begin; ++o) dst[o] = T(0);
    if (s2 == 1)
      for (std::int64_t o = r.begin; o < r.end; ++o) dst[o] = src[r.offset + o];
    else
      for (std::int64_t o = r.begin; o < r.end; ++o) dst[o] = src[r.offset + o * s2];
    for (std::int64_t o = r.end; o < len; ++o) dst[o] = T(0);
  });
}

// The adjoint of im2col: adds every column entry back onto the input pixel it came from.
template <class T>
void col2im(const ConvGeometry& g, const Blocking& b, const Block& blk, std::int64_t grp, const T* col, T* gx) {
  const std::int64_t s2 = g.stride[2];
  for_each_patch_run(g, b, blk, grp, [&](std::int64_t col_row, std::int64_t input_row, const TapRange& r) {
    if (input_row < 0 || r.empty()) return;
    const T* src = col + col_row + r.begin;
    T* dst = gx + input_row + r.offset + r.begin * s2;
    if (s2 == 1)
      for (std::int64_t o = 0; o < r.end - r.begin; ++o) dst[o] += src[o];
    else
      for (std::int64_t o = 0; o < r.end - r.begin; ++o) dst[o * s2] += src[o];
  });
}

// Packs the (Kg x block) slice of an (N, K, out_vol) array for group grp, or unpacks/adds it back.
template <class T>
void pack_block(const ConvGeometry& g, const Blocking& b, const Block& blk, std::int64_t grp, const T* y, T* packed) {
  const std::int64_t ov = g.out_vol(), cols = (blk.end - blk.begin) * b.row_len;
  for_each_segment(b, blk, [&](std::int64_t n, std::int64_t row0, std::int64_t count, std::int64_t col0) {
    for (std::int64_t k = 0; k < g.Kg; ++k) {
      const T* src = y + (n * g.K + grp * g.Kg + k) * ov + row0 * b.row_len;
      std::copy(src, src + count * b.row_len, packed + k * cols + col0);
    }
  });
}

template <class T>
void unpack_block(const ConvGeometry& g, const Blocking& b, const Block& blk, std::int64_t grp, const T* packed, T* y,
                  bool accumulate) {
  const std::int64_t ov = g.out_vol(), cols = (blk.end - blk.begin) * b.row_len;
  for_each_segment(b, blk, [&](std::int64_t n, std::int64_t row0, std::int64_t count, std::int64_t col0) {
    for (std::int64_t k = 0; k < g.Kg; ++k) {
      T* dst = y + (n * g.K + grp * g.Kg + k) * ov + row0 * b.row_len;
      const T* src = packed + k * cols + col0;
      if (accumulate)
        for (std::int64_t j = 0; j < count * b.row_len; ++j) dst[j] += src[j];
      else
        std::copy(src, src + count * b.row_len, dst);
    }
  });
}

// Per-thread workspaces, uninitialised, each 64-byte aligned, in the caller's scratch.
template <class T>
struct Workspaces {
  Workspaces(ScratchScope& scratch, int threads, std::int64_t elements)
      : stride((elements + 15) / 16 * 16), all(scratch.take<T>(threads * stride).data()) {}
  T* operator[](int t) { return all + t * stride; }
  std::int64_t stride;
  T* all;
};

// Runs body(block, thread) for every block: chunks split over threads when
// there are at least two, else in turn (OpenBLAS then threads each GEMM).
template <class Body>
void for_each_block(const Blocking& b, Body body) {
  const auto& work = b.chunks;
  const std::int64_t count = std::ssize(work);
  if (b.threads > 1) {
#pragma omp parallel num_threads(b.threads)
    {
      const int t = omp_get_thread_num();
      // static: the same chunks always go to the same threads, so the per-thread
      // partial sums of the weight gradient add up in the same order every run.
#pragma omp for schedule(static)
      for (std::int64_t i = 0; i < count; ++i)
        for (std::size_t k = work[static_cast<std::size_t>(i)].first; k < work[static_cast<std::size_t>(i)].second; ++k)
          body(b.blocks[k], t);
    }
  } else {
    for (const auto& blk : b.blocks) body(blk, 0);
  }
}

// The patches of a block as col: the input itself for a pointwise conv in one sample, else im2col into ws.
template <class T>
const T* patches(const ConvGeometry& g, const Blocking& b, const Block& blk, std::int64_t grp, const T* x, T* ws,
                 std::int64_t& ld) {
  if (g.pointwise() && single_sample(b, blk)) {
    ld = g.in_vol();
    const std::int64_t n = blk.begin / b.rows_per_sample, row0 = blk.begin % b.rows_per_sample;
    return x + (n * g.C + grp * g.Cg) * g.in_vol() + row0 * b.row_len;
  }
  ld = (blk.end - blk.begin) * b.row_len;
  im2col(g, b, blk, grp, x, ws);
  return ws;
}

}  // namespace

template <class T>
void im2col_forward(const ConvGeometry& g, const T* x, const T* w, T* y, bool accumulate) {
  ScratchScope scratch;
  const Blocking b = make_blocks(g, scratch);
  const std::int64_t R = col_rows(g), ov = g.out_vol();
  Workspaces<T> col(scratch, b.threads, R * b.max_columns), out(scratch, b.threads, g.Kg * b.max_columns);
  for_each_block(b, [&](const Block& blk, int t) {
    const std::int64_t cols = (blk.end - blk.begin) * b.row_len;
    for (std::int64_t grp = 0; grp < g.groups; ++grp) {
      std::int64_t ld = 0;
      const T* patch = patches(g, b, blk, grp, x, col[t], ld);
      const T* wg = w + grp * g.Kg * R;
      if (single_sample(b, blk)) {
        const std::int64_t n = blk.begin / b.rows_per_sample, row0 = blk.begin % b.rows_per_sample;
        // y_b (Kg x B, row stride out_vol) = W_g (Kg x R) . col (R x B)
        gemm(false, false, g.Kg, cols, R, T(1), wg, R, patch, ld, accumulate ? T(1) : T(0),
             y + (n * g.K + grp * g.Kg) * ov + row0 * b.row_len, ov);
      } else {
        // packed (Kg x B) = W_g (Kg x R) . col (R x B), then spread over the block's samples
        gemm(false, false, g.Kg, cols, R, T(1), wg, R, patch, ld, T(0), out[t], cols);
        unpack_block(g, b, blk, grp, out[t], y, accumulate);
      }
    }
  });
}

template <class T>
void im2col_backward_input(const ConvGeometry& g, const T* gy, const T* w, T* gx, bool accumulate) {
  if (unit_stride(g) && g.Kg * g.ker_vol() <= kAdjointMaxRows && g.Cg >= kAdjointMinChannels) {
    // The input adjoint is itself a unit-stride conv of gy (adjoint_geometry):
    // its GEMM has the long K.kernel-sized inner dimension of a forward pass
    // instead of the short K one, and needs no col2im scatter. Measured at 2
    // threads: R1 20.1 -> 16.6 ms, R2 16.1 -> 14.2 ms; but with K.kernel above
    // ~1300 rows (L2: 1600, R3: 2304) its patches outgrow the cache and the
    // col2im form wins (L2 13.3 vs 24.2 ms, R3 15.7 vs 23.0 ms).
    // Its GEMMs write gx (beta = 0) unless told to accumulate: no pass of zeros first.
    ScratchScope scratch;
    return im2col_forward(adjoint_geometry(g), gy, adjoint_weights(g, w, scratch), gx, accumulate);
  }
  if (!accumulate) std::fill(gx, gx + g.N * g.C * g.in_vol(), T(0));  // col2im adds into it
  ScratchScope scratch;
  const Blocking b = make_blocks(g, scratch);
  const std::int64_t R = col_rows(g), ov = g.out_vol();
  Workspaces<T> col(scratch, b.threads, R * b.max_columns), in(scratch, b.threads, g.Kg * b.max_columns);
  for_each_block(b, [&](const Block& blk, int t) {
    const std::int64_t cols = (blk.end - blk.begin) * b.row_len;
    const bool single = single_sample(b, blk);
    const std::int64_t n = blk.begin / b.rows_per_sample, row0 = blk.begin % b.rows_per_sample;
    for (std::int64_t grp = 0; grp < g.groups; ++grp) {
      const T* wg = w + grp * g.Kg * R;
      const T* gyb = gy + (n * g.K + grp * g.Kg) * ov + row0 * b.row_len;
      std::int64_t ldy = ov;
      if (!single) {
        pack_block(g, b, blk, grp, gy, in[t]);
        gyb = in[t];
        ldy = cols;
      }
      if (g.pointwise() && single) {
        // gx_b (Cg x B, row stride in_vol) += W_g^T (Cg x Kg) . gy_b (Kg x B)
        gemm(true, false, R, cols, g.Kg, T(1), wg, R, gyb, ldy, T(1),
             gx + (n * g.C + grp * g.Cg) * g.in_vol() + row0 * b.row_len, g.in_vol());
        continue;
      }
      // col (R x B) = W_g^T (R x Kg) . gy_b (Kg x B)
      gemm(true, false, R, cols, g.Kg, T(1), wg, R, gyb, ldy, T(0), col[t], cols);
      col2im(g, b, blk, grp, col[t], gx);
    }
  });
}

template <class T>
void im2col_backward_weight(const ConvGeometry& g, const T* x, const T* gy, T* gw) {
  ScratchScope scratch;
  const Blocking b = make_blocks(g, scratch);
  const std::int64_t R = col_rows(g), ov = g.out_vol(), wsize = g.K * R;
  Workspaces<T> col(scratch, b.threads, R * b.max_columns), in(scratch, b.threads, g.Kg * b.max_columns);
  // Thread 0 accumulates straight into gw; the others into partial sums added at the end.
  Workspaces<T> partial(scratch, b.threads, wsize);
  for (int t = 1; t < b.threads; ++t) std::fill(partial[t], partial[t] + wsize, T(0));
  for_each_block(b, [&](const Block& blk, int t) {
    T* acc = t == 0 ? gw : partial[t];
    const std::int64_t cols = (blk.end - blk.begin) * b.row_len;
    const bool single = single_sample(b, blk);
    const std::int64_t n = blk.begin / b.rows_per_sample, row0 = blk.begin % b.rows_per_sample;
    for (std::int64_t grp = 0; grp < g.groups; ++grp) {
      std::int64_t ld = 0;
      const T* patch = patches(g, b, blk, grp, x, col[t], ld);
      const T* gyb = gy + (n * g.K + grp * g.Kg) * ov + row0 * b.row_len;
      std::int64_t ldy = ov;
      if (!single) {
        pack_block(g, b, blk, grp, gy, in[t]);
        gyb = in[t];
        ldy = cols;
      }
      // gW_g (Kg x R) += gy_b (Kg x B) . col^T (B x R)
      gemm(false, true, g.Kg, R, cols, T(1), gyb, ldy, patch, ld, T(1), acc + grp * g.Kg * R, R);
    }
  });
  for (int t = 1; t < b.threads; ++t)
    for (std::int64_t i = 0; i < wsize; ++i) gw[i] += partial[t][i];
}

#define TG_INSTANTIATE(T)                                                                    \
  template void im2col_forward<T>(const ConvGeometry&, const T*, const T*, T*, bool);        \
  template void im2col_backward_input<T>(const ConvGeometry&, const T*, const T*, T*, bool);        \
  template void im2col_backward_weight<T>(const ConvGeometry&, const T*, const T*, T*);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg::kernels::conv_impl
