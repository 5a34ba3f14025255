// Tracked<T>: a small handle (tape, slot) to a value recorded on a tape.
// Operand<T>: what an op accepts in one argument position: a Tracked value, a
// plain Array (recorded as a constant) or a scalar (a rank-0 constant).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <source_location>

#include "tapegrad/autodiff/tape.hpp"

namespace tg {

template <class T>
class GuardedElement;

template <class T>
class Tracked {
 public:
  // Each handle counts itself on its tape while both live (Note [Unreachable values]).
  Tracked(Tape<T>* tape, std::uint32_t slot) : tape_(tape), slot_(slot), generation_(tape->generation()) {
    tape_->add_handle(slot_);
  }
  Tracked(const Tracked& other) noexcept : tape_(other.tape_), slot_(other.slot_), generation_(other.generation_) { hold(); }
  Tracked& operator=(const Tracked& other) noexcept {
    other.hold();  // first: other may hold the last other handle of this one's slot
    let_go();
    tape_ = other.tape_, slot_ = other.slot_, generation_ = other.generation_;
    return *this;
  }
  ~Tracked() { let_go(); }

  // The current value: an unguarded read (Note [Guards]). Fine for printing; a
  // branch on it is not checked on replay (the tape counts such reads and the
  // dump warns). Branch through tg::any / tg::all or at() instead.
  //
  // Note [Values by value]: value() and shape() return copies. The tape keeps
  // its values in a vector that recording more ops moves, so a reference
  // handed out here could dangle within one expression:
  // tg::reshape(tg::tanh(d) * 2.0, x.shape()) may read x.shape() first and
  // record after. A Shape is a small inline copy; value() is for printing.
  // Rejected: a std::deque of values (stable references), which costs an
  // allocation per few slots on the recording hot path and an extra
  // indirection per slot on every replay.
  Array<T> value(std::source_location where = std::source_location::current()) const {
    tape()->note_unguarded_read(where);
    return tape_->value(slot_);
  }
  Shape shape() const { return tape()->value(slot_).shape(); }
  std::int64_t size() const { return tape()->value(slot_).size(); }
  std::size_t rank() const { return tape()->value(slot_).rank(); }
  // The single element of a one-element value (an unguarded read, like value()).
  T item(std::source_location where = std::source_location::current()) const {
    tape()->note_unguarded_read(where);
    return tape_->value(slot_).item();
  }
  // One element at a row-major multi-index, for a guarded comparison: x.at({0, 2}) > 0.5 (guard.hpp).
  GuardedElement<T> at(std::initializer_list<std::int64_t> index,
                       std::source_location where = std::source_location::current()) const;

  // The tape, checked alive (Note [Tape identity]): a handle kept past its
  // recording is a tg::Error here, not a read of freed memory.
  Tape<T>* tape() const {
    if (!detail::tape_is_live(generation_) || slot_ >= tape_->num_slots()) fail_stale();
    return tape_;
  }
  std::uint32_t slot() const noexcept { return slot_; }
  std::uint64_t generation() const noexcept { return generation_; }

 private:
  void hold() const noexcept {
    if (detail::tape_is_live(generation_)) tape_->add_handle(slot_);
  }
  void let_go() const noexcept {
    if (detail::tape_is_live(generation_)) tape_->drop_handle(slot_);
  }
  [[noreturn]] void fail_stale() const {
    fail("Tracked", fmt::format("value %{} belongs to a tape (generation {}) that no longer exists expected a value of "
                                "the recording in progress; hint: Tracked values live only while their function is "
                                "recorded: do not keep them in globals, captures or containers across gradient() or "
                                "record() calls",
                                slot_, generation_));
  }

  Tape<T>* tape_;
  std::uint32_t slot_;
  std::uint64_t generation_;
};

// One argument of an op. Implicit conversions let `x + 2.0`, `x * w` and
// `x - array` all reach the same recording code; each conversion also captures
// the user's source location (Note [Recording sites for operators]).
//
// Note [Recording sites for operators]: an overloaded operator cannot take a
// defaulted std::source_location parameter, but the constructor of its argument
// type can: the default argument is evaluated where the conversion happens,
// i.e. in the user's expression. Named ops take `where` directly.
template <class T>
struct Operand {
  enum class Kind : std::uint8_t { tracked, array, scalar };

  Operand(const Tracked<T>& t, std::source_location site = std::source_location::current())
      : kind(Kind::tracked), tracked(&t), where(site) {}
  Operand(const Array<T>& a, std::source_location site = std::source_location::current())
      : kind(Kind::array), array(&a), where(site) {}
  Operand(T v, std::source_location site = std::source_location::current()) : kind(Kind::scalar), scalar(v), where(site) {}

  Kind kind;
  const Tracked<T>* tracked = nullptr;
  const Array<T>* array = nullptr;
  T scalar{};
  std::source_location where;
};

// Element type of Tracked<T> / Array<T>.
template <class X>
struct element_of;
template <class T>
struct element_of<Tracked<T>> {
  using type = T;
};
template <class T>
struct element_of<Array<T>> {
  using type = T;
};
template <class X>
using element_t = typename element_of<std::remove_cvref_t<X>>::type;

template <class X>
inline constexpr bool is_tracked_v = false;
template <class T>
inline constexpr bool is_tracked_v<Tracked<T>> = true;

// Arguments of a mixed op: each a Tracked<T> or Array<T> of one T, at least one tracked.
template <class... X>
concept RecordsOnTape = (requires { typename element_t<X>; } && ...) &&
                        (is_tracked_v<std::remove_cvref_t<X>> || ...) &&
                        (std::is_same_v<element_t<X>, element_t<std::tuple_element_t<0, std::tuple<X...>>>> && ...);

}  // namespace tg
