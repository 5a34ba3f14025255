// What a tape knows about itself beyond its instructions: a generation that no
// other tape of the process ever had, and which thread is replaying it.
//
// Note [Tape identity]: a Tracked handle holds a Tape pointer, and a pointer
// alone cannot tell a live tape from a new one that reuses the address of a
// destroyed one. Every tape therefore gets a generation, unique for the life
// of the process (a copy, an assignment and a move give new ones), kept in a
// process-wide set of live generations; a handle records its tape's generation
// when made and is checked against that set before use, so a handle that
// outlived its recording is a tg::Error instead of a read of freed memory. A
// thread-local cache of the last generation found live, dropped whenever any
// tape dies, keeps the check off the recording hot path (one atomic load).
// Rejected: comparing the handle's generation with the one stored in the tape
// it points to, which reads the dead tape's memory when the address was not reused.
//
// Note [One replay at a time]: a tape's values and adjoints are one set of
// buffers, so two threads replaying one tape at once would overwrite each
// other's (wrong gradients, no crash). A replay takes the tape for its thread
// (ReplayGuard); another thread that asks meanwhile gets a tg::Error saying
// so. The same thread may take it again (a replay inside a replay's call).
// Use one tape per thread: record (or compile) one each; recording several
// tapes on several threads at once is fine.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>

namespace tg::detail {

class TapeIdentity {
 public:
  TapeIdentity();
  TapeIdentity(const TapeIdentity&);
  TapeIdentity(TapeIdentity&& other) noexcept;
  TapeIdentity& operator=(const TapeIdentity&);
  TapeIdentity& operator=(TapeIdentity&& other) noexcept;
  ~TapeIdentity();

  std::uint64_t generation() const noexcept { return generation_; }
  // Gives this tape a new generation: every handle made so far goes stale.
  void renew() noexcept;

 private:
  std::uint64_t generation_;
};

// Whether a tape of this generation is alive (Note [Tape identity]).
bool tape_is_live(std::uint64_t generation) noexcept;

// The thread replaying a tape (Note [One replay at a time]); copies and moves start free.
class ReplayOwner {
 public:
  ReplayOwner() = default;
  ReplayOwner(const ReplayOwner&) noexcept {}
  ReplayOwner& operator=(const ReplayOwner&) noexcept { return *this; }

  // Takes the tape for this thread, or throws tg::Error naming `op` when another thread holds it.
  void acquire(const char* op);
  void release() noexcept;

 private:
  std::atomic<std::thread::id> owner_{};
  int depth_ = 0;  // touched only by the owner
};

class ReplayGuard {
 public:
  ReplayGuard(ReplayOwner& owner, const char* op) : owner_(owner) { owner_.acquire(op); }
  ReplayGuard(const ReplayGuard&) = delete;
  ReplayGuard& operator=(const ReplayGuard&) = delete;
  ~ReplayGuard() { owner_.release(); }

 private:
  ReplayOwner& owner_;
};

}  // namespace tg::detail
