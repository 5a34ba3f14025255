// Tape generations and replay owners (tape_identity.hpp).
#include "tapegrad/autodiff/tape_identity.hpp"

#include <fmt/format.h>

#include <mutex>
#include <unordered_set>

#include "tapegrad/kernels/error.hpp"

namespace tg::detail {
namespace {

struct LiveTapes {
  std::mutex mutex;
  std::unordered_set<std::uint64_t> live;
  std::uint64_t next = 1;
  std::atomic<std::uint64_t> deaths{0};  // bumped whenever a generation leaves `live`
};

// Never destroyed: tapes in static objects may die after main returns.
LiveTapes& live_tapes() {
  static auto* tapes = new LiveTapes;
  return *tapes;
}

std::uint64_t register_generation() {
  LiveTapes& t = live_tapes();
  std::lock_guard lock(t.mutex);
  const std::uint64_t g = t.next++;
  t.live.insert(g);
  return g;
}

void unregister_generation(std::uint64_t g) noexcept {
  LiveTapes& t = live_tapes();
  std::lock_guard lock(t.mutex);
  t.live.erase(g);
  t.deaths.fetch_add(1, std::memory_order_release);
}

struct LiveCache {
  std::uint64_t generation = 0, deaths = 0;
};
thread_local LiveCache cached;

}  // namespace

TapeIdentity::TapeIdentity() : generation_(register_generation()) {}
TapeIdentity::TapeIdentity(const TapeIdentity&) : generation_(register_generation()) {}
TapeIdentity::TapeIdentity(TapeIdentity&& other) noexcept : generation_(register_generation()) { other.renew(); }
TapeIdentity& TapeIdentity::operator=(const TapeIdentity& other) {
  if (this != &other) renew();
  return *this;
}
TapeIdentity& TapeIdentity::operator=(TapeIdentity&& other) noexcept {
  if (this != &other) {
    renew();
    other.renew();
  }
  return *this;
}
TapeIdentity::~TapeIdentity() { unregister_generation(generation_); }

void TapeIdentity::renew() noexcept {
  unregister_generation(generation_);
  generation_ = register_generation();
}

bool tape_is_live(std::uint64_t generation) noexcept {
  LiveTapes& t = live_tapes();
  const std::uint64_t deaths = t.deaths.load(std::memory_order_acquire);
  if (cached.generation == generation && cached.deaths == deaths) return true;
  std::lock_guard lock(t.mutex);
  if (!t.live.contains(generation)) return false;
  cached = {generation, t.deaths.load(std::memory_order_relaxed)};
  return true;
}

void ReplayOwner::acquire(const char* op) {
  const std::thread::id me = std::this_thread::get_id();
  std::thread::id expected{};
  if (owner_.compare_exchange_strong(expected, me, std::memory_order_acquire) || expected == me) {
    ++depth_;
    return;
  }
  fail(op, "the tape is being replayed by another thread expected one replay of a tape at a time; hint: give each "
           "thread its own tape (record or compile one per thread)");
}

void ReplayOwner::release() noexcept {
  if (--depth_ == 0) owner_.store(std::thread::id{}, std::memory_order_release);
}

}  // namespace tg::detail
