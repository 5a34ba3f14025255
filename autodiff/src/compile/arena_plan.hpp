// Note [Planned arena]: buffers with live intervals on one timeline (forward
// steps, then the reverse pass) get byte offsets in one arena. Two buffers may
// share bytes only when their intervals do not overlap; intervals are closed,
// so a buffer read for the last time at step t never shares with one first
// written at step t (an op's output never aliases its input).
//
// Bytes change hands only between buffers more than kHandoverGap steps apart.
// When a buffer's first writer runs right after the previous owner's last
// readers, every line it writes must first be taken from the other threads'
// caches; where the threads do not share one L3 (a VM's two vCPUs on two dies,
// two sockets) that is slow. On such spells of the 2-core test VM, two threads
// writing 6.4 MB that both had just read took 1.33-1.42 ms, against 0.58 ms
// after writing their own halves and 0.61 ms cold (0.62 against 0.58 when the
// vCPUs shared an L3), and LeNet's pool1 pullback, writing its adjoint into
// the bytes conv2's adjoint had just left, 1.3-1.9 ms instead of 0.4. With a
// gap of 2 the LeNet step took 17.75 ms in those spells against 19.86 with
// none and 18.13 with no sharing at all, the same 13.8-14.0 ms otherwise; its
// arena is 13.8 MiB instead of 9.2 (one buffer each: 23.1).
//
// Placement is the greedy best-known heuristic for this offline problem:
// largest buffers first, each at the lowest offset that clears every placed
// buffer it overlaps in time; past kExactPlacement buffers, an allocator
// replaying the timeline (Note [Placement in n log n], arena_plan.cpp).
#pragma once

#include <cstdint>
#include <vector>

namespace tg::compile_impl {

struct Buffer {
  std::int64_t bytes = 0;
  int first = 0, last = 0;  // live interval, inclusive, in timeline steps
};

inline constexpr std::int64_t kArenaAlignment = 64;
inline constexpr int kHandoverGap = 2;
inline constexpr std::size_t kExactPlacement = 2048;

// Offsets (multiples of 64 bytes) for `buffers`; with share = false every
// buffer gets bytes of its own. Returns the arena's size in bytes.
std::int64_t place_buffers(const std::vector<Buffer>& buffers, bool share, std::vector<std::int64_t>& offsets);

}  // namespace tg::compile_impl
