// Scratch memory for kernels: index tables, padded and packed copies, small
// accumulators, taken from a per-thread stack instead of the heap.
//
//   ScratchScope scratch;                              // marks the stack
//   std::span<std::int64_t> taps = scratch.take<std::int64_t>(R);
//   ...                                                // nested scopes take above
//   // ~ScratchScope gives back everything taken since the mark
//
// Note [Scratch stack]: a replayed tape calls the same kernels on the same
// shapes step after step; when each call took its workspaces from malloc, a
// LeNet training step made about 120 heap allocations (issue 5 asks for none).
// Each thread owns one 64-byte-aligned block. A take beyond its end is served
// by a heap block of its own (the stack's first use, or a bigger shape), and
// when the outermost scope closes the block is regrown to the high-water mark,
// so from the second call of the same shapes on nothing reaches the heap.
// Under AddressSanitizer every take is its own heap block, so that reads past a
// buffer or after its scope are still caught.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>

namespace tg::kernels {

class ScratchScope {
 public:
  ScratchScope();
  ~ScratchScope();
  ScratchScope(const ScratchScope&) = delete;
  ScratchScope& operator=(const ScratchScope&) = delete;

  // n uninitialised elements, 64-byte aligned, valid until this scope closes.
  template <class T>
  std::span<T> take(std::int64_t n) {
    static_assert(std::is_trivially_copyable_v<T> && alignof(T) <= 64, "ScratchScope::take: plain types only");
    const std::size_t count = n > 0 ? static_cast<std::size_t>(n) : 0;
    // A count whose bytes would wrap asks for more than any take may (refused in take_bytes).
    const std::size_t bytes = count <= kMaxTakeBytes / sizeof(T) ? count * sizeof(T) : kMaxTakeBytes + 1;
    return {static_cast<T*>(take_bytes(bytes)), count};
  }
  // n elements set to value.
  template <class T>
  std::span<T> take_filled(std::int64_t n, T value) {
    std::span<T> s = take<T>(n);
    for (T& v : s) v = value;
    return s;
  }

 private:
  static constexpr std::size_t kMaxTakeBytes = std::size_t{1} << 62;
  void* take_bytes(std::size_t bytes);
  std::size_t mark_;
};

// Bytes the calling thread's scratch stack holds (its block, between calls).
std::size_t scratch_bytes();
// Frees the calling thread's scratch block (for a program done with big shapes).
// Throws when a scope is open on this thread.
void release_scratch();

}  // namespace tg::kernels
