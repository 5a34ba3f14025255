#include "arena_plan.hpp"

#include <algorithm>
#include <map>
#include <numeric>
#include <set>

namespace tg::compile_impl {
namespace {

std::int64_t aligned(std::int64_t bytes) { return (bytes + kArenaAlignment - 1) / kArenaAlignment * kArenaAlignment; }

// Whether a and b may not share bytes: they live at once, or one starts too soon after the other ends.
bool overlap(const Buffer& a, const Buffer& b) { return a.first <= b.last + kHandoverGap && b.first <= a.last + kHandoverGap; }

// Note [Placement in n log n]: the exact greedy compares each buffer with every
// buffer placed before it, O(n^2): 40,000 buffers of a 20,000-matmul tape took
// 10 s. Beyond kExactPlacement buffers an allocator replays the timeline
// instead: a buffer takes bytes at its first step (the smallest free range
// that fits, else the top of the arena) and gives them back kHandoverGap steps
// after its last, and free ranges merge with their neighbours; every event
// is O(log n). Frees at a step come before allocations at it: two buffers
// share bytes exactly when overlap() says they may. Unlike the greedy it
// places buffers in time order, not largest first, so it can plan a larger
// arena; the programs that reach it are long chains of small ops. Rejected: a
// skyline (each buffer above the highest byte in use over its interval),
// O(n log n) too, which never reuses a hole: on a chain of 1,200 matmuls
// it gave every adjoint bytes of its own, as large as no plan at all.
class FreeRanges {
 public:
  // The offset of `bytes` new bytes: the smallest free range that holds them, else the top.
  std::int64_t take(std::int64_t bytes) {
    auto fit = by_size_.lower_bound({bytes, 0});
    if (fit == by_size_.end()) {
      // None fits: grow the arena, starting inside a free range that reaches its top.
      if (!by_offset_.empty() && std::prev(by_offset_.end())->first + std::prev(by_offset_.end())->second == top_) {
        const auto [at, size] = *std::prev(by_offset_.end());
        erase(at, size);
        top_ = at + bytes;
        return at;
      }
      top_ += bytes;
      return top_ - bytes;
    }
    const auto [size, at] = *fit;
    erase(at, size);
    if (size > bytes) insert(at + bytes, size - bytes);
    return at;
  }
  // Returns [at, at + bytes) to the free ranges, merged with the ranges next to it.
  void give_back(std::int64_t at, std::int64_t bytes) {
    auto next = by_offset_.lower_bound(at);
    if (next != by_offset_.end() && next->first == at + bytes) {
      bytes += next->second;
      erase(next->first, next->second);
    }
    auto prev = by_offset_.lower_bound(at);
    if (prev != by_offset_.begin() && std::prev(prev)->first + std::prev(prev)->second == at) {
      --prev;
      at = prev->first;
      bytes += prev->second;
      erase(prev->first, prev->second);
    }
    insert(at, bytes);
  }
  std::int64_t top() const { return top_; }

 private:
  void insert(std::int64_t at, std::int64_t size) {
    by_offset_.emplace(at, size);
    by_size_.emplace(size, at);
  }
  void erase(std::int64_t at, std::int64_t size) {
    by_offset_.erase(at);
    by_size_.erase({size, at});
  }
  std::map<std::int64_t, std::int64_t> by_offset_;      // offset -> size
  std::set<std::pair<std::int64_t, std::int64_t>> by_size_;  // (size, offset)
  std::int64_t top_ = 0;
};

std::int64_t place_by_timeline(const std::vector<Buffer>& buffers, std::vector<std::int64_t>& offsets) {
  struct Event {
    int time;
    bool take;  // false: give back (sorted first at equal times)
    std::size_t buffer;
  };
  std::vector<Event> events;
  events.reserve(2 * buffers.size());
  for (std::size_t i = 0; i < buffers.size(); ++i) {
    events.push_back({buffers[i].first, true, i});
    events.push_back({buffers[i].last + kHandoverGap + 1, false, i});
  }
  std::sort(events.begin(), events.end(), [](const Event& a, const Event& b) {
    return a.time != b.time ? a.time < b.time : a.take != b.take ? !a.take : a.buffer < b.buffer;
  });
  FreeRanges free;
  for (const Event& e : events) {
    const std::int64_t bytes = aligned(buffers[e.buffer].bytes);
    if (bytes == 0) continue;
    if (e.take) offsets[e.buffer] = free.take(bytes);
    else free.give_back(offsets[e.buffer], bytes);
  }
  return free.top();
}

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
  if (buffers.size() > kExactPlacement) return place_by_timeline(buffers, offsets);
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
