// The input gradient of a strided convolution as implicit GEMMs, one per phase.
//
// Note [Strided input adjoint by phases]: with stride s, input position i
// receives gy[o] * w[a] exactly where s*o + a*dil - lo = i, so the taps a that
// reach i depend only on its phase r = (i + lo) mod s (taps with a*dil = r mod s).
// Within a phase, i = first + s*m and o = m + e_a with e_a = (first + lo -
// a*dil) / s, exact: each phase is a unit-stride correlation of gy (zero-padded
// once for every phase) with the phase's taps, a GEMM of the implicit-GEMM
// micro-kernel
//
//   gx_r (positions_r x Cg) = gy patches (positions_r x Kg*taps_r) . W_r (Kg*taps_r x Cg)
//
// Every tap belongs to one phase, so the multiply-adds are the forward's, where
// im2col's col2im form multiplied over the short Kg dimension and then added
// Cg*kernel values per output position into gx. A task computes every phase of
// a few samples (or of a run of input rows) channel-last in a buffer that stays
// in cache, then transposes it into gx's rows whole; a phase's positions run
// across the task's samples, so a small phase (7x7) fills whole tiles, and a
// phase without taps (a 1x1 stride-2 kernel's odd positions) gives zeros.
// Rejected: scattering each tile's results into gx directly (a store per
// element, 3-4x slower on a 1x1 stride-2 layer), and a transposed convolution
// over a zero-stuffed gy, which multiplies s^2 - 1 zeros for every value.
#include <algorithm>
#include <array>
#include <cstdint>
#include <span>

#include "conv_impl.hpp"
#include "tapegrad/kernels/parallel.hpp"
#include "tapegrad/kernels/scratch.hpp"

namespace tg::kernels::conv_impl {
namespace {

using Dims = ConvGeometry::Dims;
constexpr int kDims = ConvGeometry::kMaxSpatial;

std::int64_t modulo(std::int64_t a, std::int64_t b) { return ((a % b) + b) % b; }

// Along one spatial dim, the phase whose first input index is f (f < stride):
// its residue r = (f + lo) mod stride and position count; its taps are the a
// with a*dil = r (mod stride), each reading gy at o = m + shift(a).
struct AxisPhase {
  std::int64_t residue = 0, first = 0, count = 0, stride = 1, dil = 1, lo = 0;
  bool has(std::int64_t a) const { return modulo(a * dil, stride) == residue; }
  std::int64_t shift(std::int64_t a) const { return (first + lo - a * dil) / stride; }
};

// Phases with positions along dim d: one per first index f < min(stride, in).
std::int64_t phases_along(const ConvGeometry& g, int d) { return std::min(g.stride[d], g.in[d]); }

AxisPhase axis_phase(const ConvGeometry& g, int d, std::int64_t f) {
  return {modulo(f + g.lo[d], g.stride[d]), f, (g.in[d] - 1 - f) / g.stride[d] + 1, g.stride[d], g.dil[d], g.lo[d]};
}

// gy's zero padding along each dim so that every phase's reads o = m + e_a stay inside.
struct GyPadding {
  Dims lo{0, 0, 0}, padded{1, 1, 1};
  std::int64_t plane = 1;
};

GyPadding gy_padding(const ConvGeometry& g) {
  GyPadding P;
  for (int d = 0; d < kDims; ++d) {
    std::int64_t lo = 0, hi = 0;
    for (std::int64_t f = 0; f < phases_along(g, d); ++f) {
      const AxisPhase a = axis_phase(g, d, f);
      for (std::int64_t t = 0; t < g.ker[d]; ++t)
        if (a.has(t)) {
          lo = std::max(lo, -a.shift(t));
          hi = std::max(hi, a.count - 1 + a.shift(t) - (g.out[d] - 1));
        }
    }
    P.lo[d] = lo;
    P.padded[d] = g.out[d] + lo + hi;
    P.plane *= P.padded[d];
  }
  return P;
}

// One phase (a first index per dim): its positions and taps as implicit-GEMM tables.
struct Phase {
  std::int64_t positions = 0, rows = 0;  // positions per sample; GEMM depth Kg * taps
  std::span<std::int64_t> tap;     // rows: offsets into one sample's padded gy (k, taps)
  std::span<std::int64_t> weight;  // rows: offsets into w of (k, c = 0, tap) in group 0
  std::span<std::int64_t> base;    // positions: offsets of o = m in the padded gy
  std::span<std::int64_t> target;  // positions: offsets in one gx plane
};

Phase make_phase(const ConvGeometry& g, const GyPadding& P, const Dims& first, ScratchScope& scratch) {
  AxisPhase ax[kDims];
  Phase ph;
  ph.positions = 1;
  std::int64_t taps = 1;
  for (int d = 0; d < kDims; ++d) {
    ax[d] = axis_phase(g, d, first[d]);
    ph.positions *= ax[d].count;
    std::int64_t n = 0;
    for (std::int64_t t = 0; t < g.ker[d]; ++t) n += ax[d].has(t);
    taps *= n;
  }
  const Dims pstride{P.padded[1] * P.padded[2], P.padded[2], 1};
  const Dims istride{g.in[1] * g.in[2], g.in[2], 1};
  const Dims kstride{g.ker[1] * g.ker[2], g.ker[2], 1};
  ph.rows = g.Kg * taps;
  ph.tap = scratch.take<std::int64_t>(ph.rows);
  ph.weight = scratch.take<std::int64_t>(ph.rows);
  ph.base = scratch.take<std::int64_t>(ph.positions);
  ph.target = scratch.take<std::int64_t>(ph.positions);
  std::int64_t q = 0;
  for (std::int64_t k = 0; k < g.Kg; ++k)
    for (std::int64_t a0 = 0; a0 < g.ker[0]; ++a0)
      for (std::int64_t a1 = 0; a1 < g.ker[1]; ++a1)
        for (std::int64_t a2 = 0; a2 < g.ker[2]; ++a2) {
          if (!ax[0].has(a0) || !ax[1].has(a1) || !ax[2].has(a2)) continue;
          ph.tap[q] = k * P.plane + (ax[0].shift(a0) + P.lo[0]) * pstride[0] + (ax[1].shift(a1) + P.lo[1]) * pstride[1] +
                      (ax[2].shift(a2) + P.lo[2]);
          ph.weight[q++] = k * g.Cg * g.ker_vol() + a0 * kstride[0] + a1 * kstride[1] + a2;
        }
  std::int64_t p = 0;
  for (std::int64_t m0 = 0; m0 < ax[0].count; ++m0)
    for (std::int64_t m1 = 0; m1 < ax[1].count; ++m1)
      for (std::int64_t m2 = 0; m2 < ax[2].count; ++m2, ++p) {
        ph.base[p] = m0 * pstride[0] + m1 * pstride[1] + m2;
        ph.target[p] = (ax[0].first + g.stride[0] * m0) * istride[0] + (ax[1].first + g.stride[1] * m1) * istride[1] +
                       ax[2].first + g.stride[2] * m2;
      }
  return ph;
}

// W_r per group and block of NR input channels: (rows x NR), zero columns past
// Cg; none for a phase without taps (its tiles read no weights).
template <class T>
const T* pack_phase_weights(const ConvGeometry& g, const Phase& ph, const T* w, std::int64_t blocks, ScratchScope& scratch) {
  constexpr int NR = kTileCols<T>;
  if (ph.rows == 0) return nullptr;
  T* packed = scratch.take_filled<T>(g.groups * blocks * ph.rows * NR, T(0)).data();
  const std::int64_t kv = g.ker_vol();
  for (std::int64_t grp = 0; grp < g.groups; ++grp)
    for (std::int64_t c = 0; c < g.Cg; ++c) {
      T* dst = packed + (grp * blocks + c / NR) * ph.rows * NR + c % NR;
      const T* src = w + grp * g.Kg * g.Cg * kv + c * kv;
      for (std::int64_t q = 0; q < ph.rows; ++q) dst[q * NR] = src[ph.weight[q]];
    }
  return packed;
}

// What one task computes: every phase's positions of samples [n0, n1), input
// positions [begin, end) of each (whole input rows), into S channel-last.
struct Task {
  std::int64_t grp, n0, n1, begin, end;
};

// Tasks sized so that S (positions x channels) stays within L2: several whole
// samples when a sample is small, else runs of input rows of one sample.
struct Tasks {
  std::int64_t samples_per_task = 1, positions_per_task = 0, sample_blocks = 0, chunks = 0, count = 0;
  Task operator()(const ConvGeometry& g, std::int64_t index) const {
    const std::int64_t chunk = index % chunks, sb = (index / chunks) % sample_blocks, grp = index / (chunks * sample_blocks);
    const std::int64_t n0 = sb * samples_per_task, begin = chunk * positions_per_task;
    return {grp, n0, std::min(g.N, n0 + samples_per_task), begin, std::min(g.in_vol(), begin + positions_per_task)};
  }
};

Tasks make_tasks(const ConvGeometry& g, std::int64_t channels, std::int64_t element_bytes) {
  constexpr std::int64_t kTaskBytes = 256 << 10;
  Tasks t;
  const std::int64_t row = g.in[2], iv = g.in_vol(), row_bytes = row * channels * element_bytes;
  const std::int64_t sample_bytes = iv * channels * element_bytes;
  if (sample_bytes <= kTaskBytes) {
    // Whole samples, but at least 4 tasks a thread where the batch allows it.
    const std::int64_t most = std::max<std::int64_t>(1, g.N * g.groups / (4 * std::int64_t(conv_threads())));
    t.samples_per_task = std::clamp<std::int64_t>(kTaskBytes / sample_bytes, 1, most);
    t.positions_per_task = iv;
  } else {
    t.positions_per_task = std::max<std::int64_t>(1, kTaskBytes / row_bytes) * row;
  }
  t.sample_blocks = (g.N + t.samples_per_task - 1) / t.samples_per_task;
  t.chunks = (iv + t.positions_per_task - 1) / t.positions_per_task;
  t.count = g.groups * t.sample_blocks * t.chunks;
  return t;
}

// One phase's share of a task: its positions whose target lies in [begin, end)
// (a contiguous run [first, last), targets increase with position), in every
// sample of the task, tile by tile into S.
template <class T>
void phase_into_task(const ConvGeometry& g, const GyPadding& P, const Phase& ph, const T* gyp, const T* wp,
                     std::int64_t blocks, const Task& task, T* S) {
  constexpr int NR = kTileCols<T>;
  const std::int64_t* targets = ph.target.data();
  const std::int64_t first = std::lower_bound(targets, targets + ph.positions, task.begin) - targets;
  const std::int64_t last = std::lower_bound(targets + first, targets + ph.positions, task.end) - targets;
  const std::int64_t run = last - first, total = (task.n1 - task.n0) * run, span = task.end - task.begin, Cgp = blocks * NR;
  if (run == 0) return;
  T spare[2 * NR];  // where rows past the run go (computed, never used), a pair's two blocks
  const T* rows[kTileRows];
  T* dst[kTileRows];
  const int step = column_block_step();
  for (std::int64_t blk = 0; blk < blocks; blk += step) {
    const bool pair = step == 2 && blk + 1 < blocks;  // the next block's weights follow, its channels in S too
    const T* wb = ph.rows ? wp + (task.grp * blocks + blk) * ph.rows * NR : nullptr;  // no taps: no weights
    std::int64_t s = 0, m = first;  // the task's sample and the phase position of v0
    for (std::int64_t v0 = 0; v0 < total; v0 += kTileRows) {
      // Rows past the run repeat its last position into `spare`.
      for (std::int64_t i = 0, si = s, mi = m; i < kTileRows; ++i) {
        rows[i] = gyp + ((task.n0 + si) * g.K + task.grp * g.Kg) * P.plane + ph.base[mi];
        dst[i] = v0 + i < total ? S + (si * span + targets[mi] - task.begin) * Cgp + blk * NR : spare;
        if (v0 + i + 1 < total && ++mi == last) mi = first, ++si;
      }
      m += kTileRows;
      while (m >= last) m -= run, ++s;
      // S rows (positions v0.. x channels blk*NR..) = gy patches (6 x rows) . W_r (rows x NR, or a pair's rows x 2NR)
      if (pair) gemm_tile_pair(rows, ph.tap.data(), wb, ph.rows * NR, ph.rows, dst, NR);
      else gemm_tile(rows, ph.tap.data(), wb, ph.rows, dst);
    }
  }
}

}  // namespace

std::int64_t strided_adjoint_phases(const ConvGeometry& g) {
  return phases_along(g, 0) * phases_along(g, 1) * phases_along(g, 2);
}

bool strided_adjoint_dense(const ConvGeometry& g) {
  for (int d = 0; d < kDims; ++d)
    for (std::int64_t f = 0; f < phases_along(g, d); ++f) {
      const AxisPhase a = axis_phase(g, d, f);
      bool any = false;
      for (std::int64_t t = 0; t < g.ker[d] && !any; ++t) any = a.has(t);
      if (!any) return false;
    }
  return true;
}

double strided_adjoint_copied(const ConvGeometry& g) {
  const std::int64_t plane = gy_padding(g).plane;
  return plane == g.out_vol() ? 0.0 : double(g.N) * double(g.K) * double(plane);  // no padding: gy itself
}

template <class T>
void implicit_gemm_strided_backward_input(const ConvGeometry& g, const T* gy, const T* w, T* gx, bool accumulate) {
  constexpr int NR = kTileCols<T>;
  ScratchScope scratch;
  const GyPadding P = gy_padding(g);
  const T* gyp = P.plane == g.out_vol() ? gy : zero_padded(gy, g.N * g.K, g.out, P.lo, P.padded, scratch);
  const std::int64_t blocks = (g.Cg + NR - 1) / NR, Cgp = blocks * NR;
  Phase phases[kMaxStridedAdjointPhases];
  std::int64_t count = 0, packed_bytes = 0;
  for (std::int64_t f0 = 0; f0 < phases_along(g, 0); ++f0)
    for (std::int64_t f1 = 0; f1 < phases_along(g, 1); ++f1)
      for (std::int64_t f2 = 0; f2 < phases_along(g, 2); ++f2, ++count) {
        phases[count] = make_phase(g, P, Dims{f0, f1, f2}, scratch);
        packed_bytes += g.groups * blocks * phases[count].rows * NR * std::int64_t(sizeof(T));
      }
  using Packed = std::array<const T*, kMaxStridedAdjointPhases>;
  auto pack_all = [&](ScratchScope& into, int) {
    Packed packed{};
    for (std::int64_t p = 0; p < count; ++p) packed[p] = pack_phase_weights(g, phases[p], w, blocks, into);
    return packed;
  };
  const Tasks tasks = make_tasks(g, Cgp, sizeof(T));
  const std::int64_t iv = g.in_vol();
  auto run_task = [&](std::int64_t index, const Packed& packed) {
    const Task task = tasks(g, index);
    const std::int64_t span = task.end - task.begin;
    ScratchScope local;
    T* S = local.take<T>((task.n1 - task.n0) * span * Cgp).data();  // S[sample][position][channel]
    for (std::int64_t p = 0; p < count; ++p) phase_into_task(g, P, phases[p], gyp, packed[p], blocks, task, S);
    for (std::int64_t n = task.n0; n < task.n1; ++n)
      transpose_blocks(S + (n - task.n0) * span * Cgp, Cgp, span, g.Cg, gx + (n * g.C + task.grp * g.Cg) * iv + task.begin,
                       iv, accumulate);
  };
  // Note [Packed weights on each thread] (conv_implicit_gemm.cpp).
  const int threads = omp_in_parallel() ? 1 : conv_threads();
  with_weights_on_each_thread(tasks.count, threads, packed_bytes, scratch, pack_all, run_task);
}

#define TG_INSTANTIATE(T) \
  template void implicit_gemm_strided_backward_input<T>(const ConvGeometry&, const T*, const T*, T*, bool);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg::kernels::conv_impl
