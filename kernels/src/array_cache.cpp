// The cache of large freed array blocks (Note [Cached large blocks], array.hpp).
#include <sys/mman.h>

#include <cstdlib>
#include <limits>
#include <map>
#include <mutex>
#include <new>

#include "tapegrad/kernels/array.hpp"
#include "tapegrad/kernels/sanitizer.hpp"

namespace tg {
namespace detail {
namespace {

// A large block: [64-byte header | data ...]; the header's first word is the
// data capacity, its last byte (the byte before the data) is 0.
constexpr std::size_t kHeader = 64;

std::size_t& capacity_of(void* aligned) { return *reinterpret_cast<std::size_t*>(static_cast<unsigned char*>(aligned) - kHeader); }

#if TG_ADDRESS_SANITIZER
constexpr std::size_t kDefaultLimit = 0;  // let AddressSanitizer see every free
constexpr bool kMapPages = false;         // and every block come from its allocator
#else
constexpr std::size_t kDefaultLimit = std::size_t(256) << 20;
constexpr bool kMapPages = true;
#endif

// Note [Large blocks bypass malloc]: large blocks are mapped and unmapped here,
// not malloc'd: when glibc frees a block it had mapped, it raises its mmap
// threshold to that block's size, and from then on every allocation below it
// (up to 32 MiB) comes from the heap, whose freed holes stay resident. Dropping
// a recorded LeNet tape that way left 22 MiB of free heap in the process for
// good (51 MiB resident for a compiled training step instead of 37).
void* map_block(std::size_t total) {
  if (!kMapPages) return std::aligned_alloc(64, total);
  void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}
void unmap_block(void* raw, std::size_t total) {
  if (!kMapPages) return std::free(raw);
  munmap(raw, total);
}

struct Cache {
  std::mutex mutex;
  std::multimap<std::size_t, void*> free_blocks;  // capacity -> data pointer
  std::size_t cached = 0, limit = kDefaultLimit;

  void release(std::size_t keep) {
    while (cached > keep && !free_blocks.empty()) {
      auto it = std::prev(free_blocks.end());  // largest first
      cached -= it->first;
      unmap_block(static_cast<unsigned char*>(it->second) - kHeader, it->first + kHeader);
      free_blocks.erase(it);
    }
  }
};

// Never destroyed: arrays in other static objects may be freed after main returns.
Cache& cache() {
  static Cache* c = new Cache;
  return *c;
}

}  // namespace

void* large_allocate(std::size_t bytes) {
  {
    Cache& c = cache();
    std::lock_guard lock(c.mutex);
    // The smallest cached block that fits without wasting more than half of it.
    auto it = c.free_blocks.lower_bound(bytes);
    if (it != c.free_blocks.end() && it->first <= 2 * bytes) {
      void* p = it->second;
      c.cached -= it->first;
      c.free_blocks.erase(it);
      return p;
    }
  }
  const std::size_t capacity = (bytes + 63) / 64 * 64;
  auto* raw = static_cast<unsigned char*>(map_block(capacity + kHeader));
  if (!raw) throw std::bad_alloc();
  void* aligned = raw + kHeader;
  capacity_of(aligned) = capacity;
  raw[kHeader - 1] = 0;
  return aligned;
}

void* allocate_array(std::size_t element_bytes, std::int64_t count, const Shape& shape) {
  // count <= kMaxElements = 2^59, so the product fits for elements of up to 8 bytes;
  // wider ones (user types) are checked.
  constexpr auto kMaxBytes = static_cast<std::size_t>(std::numeric_limits<std::int64_t>::max() / 2);
  if (element_bytes != 0 && static_cast<std::size_t>(count) > kMaxBytes / element_bytes)
    fail("Array", fmt::format("shape {} of {}-byte elements needs more than 2^62 bytes expected an array that fits in "
                              "memory; hint: check the dimensions for a wrong value",
                              to_string(shape), element_bytes));
  const std::size_t bytes = element_bytes * static_cast<std::size_t>(count);
  try {
    return aligned_allocate(bytes);
  } catch (const std::bad_alloc&) {
    fail("Array", fmt::format("cannot allocate {} bytes for shape {} ({} elements of {} bytes) expected that much free "
                              "memory; hint: a smaller batch, or tg::set_array_cache_limit to hold fewer freed blocks",
                              bytes, to_string(shape), count, element_bytes));
  }
}

void large_free(void* aligned) noexcept {
  const std::size_t capacity = capacity_of(aligned);
  Cache& c = cache();
  std::lock_guard lock(c.mutex);
  if (c.cached + capacity <= c.limit) {
    c.free_blocks.emplace(capacity, aligned);
    c.cached += capacity;
    return;
  }
  unmap_block(static_cast<unsigned char*>(aligned) - kHeader, capacity + kHeader);
}

}  // namespace detail

void set_array_cache_limit(std::size_t bytes) {
  detail::Cache& c = detail::cache();
  std::lock_guard lock(c.mutex);
  c.limit = bytes;
  c.release(bytes);
}

void release_array_cache() {
  detail::Cache& c = detail::cache();
  std::lock_guard lock(c.mutex);
  c.release(0);
}

}  // namespace tg
