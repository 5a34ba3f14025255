// The per-thread scratch stack (Note [Scratch stack], scratch.hpp).
#include "tapegrad/kernels/scratch.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <new>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "tapegrad/kernels/error.hpp"
#include "tapegrad/kernels/sanitizer.hpp"

namespace tg::kernels {
namespace {

#if TG_ADDRESS_SANITIZER
constexpr bool kEveryTakeOnTheHeap = true;
#else
constexpr bool kEveryTakeOnTheHeap = false;
#endif

constexpr std::size_t kAlign = 64;
std::size_t round_up(std::size_t bytes, std::size_t to) { return (bytes + to - 1) / to * to; }

// Pages mapped for the stack alone: not malloc'd (Note [Large blocks bypass
// malloc], array_cache.cpp) and not kept in the array cache (the stack keeps
// its one block itself). Under AddressSanitizer, malloc'd so that it checks them.
std::size_t block_bytes(std::size_t bytes) { return round_up(std::max<std::size_t>(bytes, kAlign), 4096); }
// nullptr when the system refuses the pages.
void* heap_block(std::size_t bytes) noexcept {
  if (kEveryTakeOnTheHeap) return std::aligned_alloc(kAlign, block_bytes(bytes));
  void* p = mmap(nullptr, block_bytes(bytes), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}
void free_block(void* p, std::size_t bytes) {
  if (!p) return;
  if (kEveryTakeOnTheHeap) std::free(p);
  else munmap(p, block_bytes(bytes));
}

struct Overflow {
  std::size_t at;  // stack position
  void* block;
  std::size_t bytes;
};

struct Stack {
  unsigned char* block = nullptr;
  std::size_t capacity = 0, used = 0, high_water = 0;
  int depth = 0;
  std::vector<Overflow> overflow;  // takes beyond `block`, each in its own pages

  Stack() { overflow.reserve(64); }
  ~Stack() {
    for (const Overflow& o : overflow) free_block(o.block, o.bytes);
    free_block(block, capacity);
  }
  // The outermost scope closed: size the block for everything the last call
  // took. Runs in a destructor, so it never throws: refused pages leave no
  // block, and the next call's takes go to the heap one by one.
  void regrow() noexcept {
    if (kEveryTakeOnTheHeap || high_water <= capacity) return;
    free_block(block, capacity);
    const std::size_t bytes = round_up(high_water, 4096);
    block = static_cast<unsigned char*>(heap_block(bytes));
    capacity = block ? bytes : 0;
    if (!block) high_water = 0;
  }
};

Stack& stack() {
  thread_local Stack s;
  return s;
}

}  // namespace

ScratchScope::ScratchScope() {
  Stack& s = stack();
  mark_ = s.used;
  ++s.depth;
}

ScratchScope::~ScratchScope() {
  Stack& s = stack();
  while (!s.overflow.empty() && s.overflow.back().at >= mark_) {
    free_block(s.overflow.back().block, s.overflow.back().bytes);
    s.overflow.pop_back();
  }
  s.used = mark_;
  if (--s.depth == 0) s.regrow();
}

void* ScratchScope::take_bytes(std::size_t bytes) {
  if (bytes == 0) return nullptr;
  Stack& s = stack();
  const std::size_t start = s.used, end = start + round_up(bytes, kAlign);
  void* p;
  if (!kEveryTakeOnTheHeap && s.overflow.empty() && end <= s.capacity) {
    p = s.block + start;
  } else {
    p = bytes <= kMaxTakeBytes ? heap_block(bytes) : nullptr;
    if (!p)
      fail("scratch", fmt::format("cannot allocate {} bytes of kernel workspace expected that much free memory; hint: a "
                                  "smaller batch or image, or an algorithm with a smaller workspace (direct)",
                                  bytes));
    try {
      s.overflow.push_back({start, p, bytes});
    } catch (...) {
      free_block(p, bytes);
      throw;
    }
  }
  s.used = end;
  s.high_water = std::max(s.high_water, end);
  return p;
}

std::size_t scratch_bytes() { return stack().capacity; }

void release_scratch() {
  Stack& s = stack();
  if (s.depth != 0)
    fail("release_scratch", fmt::format("{} scratch scope(s) are open on this thread expected none; hint: call it "
                                        "between kernel calls",
                                        s.depth));
  free_block(s.block, s.capacity);
  s.block = nullptr;
  s.capacity = s.high_water = 0;
}

}  // namespace tg::kernels
