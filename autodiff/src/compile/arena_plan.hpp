// Note [Planned arena]: buffers with live intervals on one timeline (forward
// steps, then the reverse pass) get byte offsets in one arena. Two buffers may
// share bytes only when their intervals do not overlap; intervals are closed,
// so a buffer read for the last time at step t never shares with one first
// written at step t (an op's output never aliases its input).
//
// Placement is the greedy best-known heuristic for this offline problem:
// largest buffers first, each at the lowest offset that clears every placed
// buffer it overlaps in time.
#pragma once

#include <cstdint>
#include <vector>

namespace tg::compile_impl {

struct Buffer {
  std::int64_t bytes = 0;
  int first = 0, last = 0;  // live interval, inclusive, in timeline steps
};

inline constexpr std::int64_t kArenaAlignment = 64;

// Offsets (multiples of 64 bytes) for `buffers`; with share = false every
// buffer gets bytes of its own. Returns the arena's size in bytes.
std::int64_t place_buffers(const std::vector<Buffer>& buffers, bool share, std::vector<std::int64_t>& offsets);

}  // namespace tg::compile_impl
