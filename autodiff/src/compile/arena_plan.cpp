#include "arena_plan.hpp"

#include <algorithm>
#include <numeric>

namespace tg::compile_impl {
namespace {

std::int64_t aligned(std::int64_t bytes) { return (bytes + kArenaAlignment - 1) / kArenaAlignment * kArenaAlignment; }

// Whether a and b may not share bytes: they live at once, or one starts too soon after the other ends.
bool overlap(const Buffer& a, const Buffer& b) { return a.first <= b.last + kHandoverGap && b.first <= a.last + kHandoverGap; }

}  // namespace

std::int64_t place_buffers(const std::vector<Buffer>& buffers, bool share, std::vector<std::int64_t>& offsets) {
  offsets.assign(buffers.size(), 0);
  std::int64_t total = 0;
  if (!share) {
    for (std::size_t i = 0; i < buffers.size(); ++i) {
      offsets[i] = total;
      total += aligned(buffers[i].bytes);
    }
    return total;
  }
  std::vector<std::size_t> order(buffers.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return buffers[a].bytes > buffers[b].bytes; });
  std::vector<std::size_t> placed;
  for (std::size_t i : order) {
    // The placed buffers live at the same time as i, by offset: take the first gap that fits.
    std::vector<std::size_t> busy;
    for (std::size_t j : placed)
      if (overlap(buffers[i], buffers[j])) busy.push_back(j);
    std::sort(busy.begin(), busy.end(), [&](auto a, auto b) { return offsets[a] < offsets[b]; });
    const std::int64_t need = aligned(buffers[i].bytes);
    std::int64_t at = 0;
    for (std::size_t j : busy) {
      if (offsets[j] >= at + need) break;
      at = std::max(at, offsets[j] + aligned(buffers[j].bytes));
    }
    offsets[i] = at;
    total = std::max(total, at + need);
    placed.push_back(i);
  }
  return total;
}

}  // namespace tg::compile_impl
