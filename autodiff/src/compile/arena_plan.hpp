// Note [Planned arena]: buffers with live intervals on one timeline (forward
// steps, then the reverse pass) get byte offsets in one arena. Two buffers may
// share bytes only when their intervals do not overlap; intervals are closed,
// so a buffer read for the last time at step t never shares with one first
// written at step t (an op's output never aliases its input).
//
// Bytes change hands only between buffers more than kHandoverGap steps apart:
// a buffer written right after the previous owner's last readers must first
// take every line from the other threads' caches, slow where threads do not
// share an L3. Rejected: handing bytes over at once (the smallest arena; LeNet's
// step 12% slower on such machines; docs/design-notes.md, Planned arena).
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
