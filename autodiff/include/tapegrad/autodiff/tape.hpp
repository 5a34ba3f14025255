// Tape<T>: a flat vector of instructions plus slot-indexed tables of values,
// adjoints and saved buffers. Every value (input, constant, op result) is a slot.
//
// Note [Replay]: a tape is a program. forward() re-runs every instruction on
// the current input values (same shapes: outputs are overwritten in place, no
// allocation), reverse() walks the instructions backwards calling each
// pullback. Data-dependent control flow in the user's function is frozen at
// recording time, as in every tape-based AD.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <source_location>
#include <span>
#include <string>
#include <vector>

#include "tapegrad/autodiff/registry.hpp"
#include "tapegrad/autodiff/tape_identity.hpp"

namespace tg {

enum class SlotKind : std::uint8_t { input, constant, computed };

// Per-instruction wall time accumulated over the passes run while a Tape points
// at it (Tape::set_profile). Seconds, indexed by instruction.
struct TapeProfile {
  std::vector<double> forward_seconds, pullback_seconds;
  int forward_passes = 0, reverse_passes = 0;
};

// Note [Guards]: a comparison of tracked values that the user's C++ control
// flow depended on while recording: `if (tg::any(x > 0))`, `if (x.at(0) > 0.5)`
// (guard.hpp). Each is kept on the tape with the answer recording saw, and
// every replay checks it after its forward pass: an answer that comes out
// differently means the function would have taken another path, so the replay
// is an error, or a re-recording (GradientTape::set_guard_policy), never a
// silently wrong gradient. Shapes are guarded the same way (set_input). What
// cannot be guarded: reads that bypass these calls (x.value(), x.item(), a
// pointer into the data); the tape counts x.value() and x.item() reads made
// while recording and the dump warns about them.
enum class Compare : std::uint8_t { greater, greater_equal, less, less_equal, equal, not_equal };
enum class GuardKind : std::uint8_t { any, all, element };

struct Guard {
  GuardKind kind = GuardKind::any;
  Compare compare = Compare::greater;
  std::uint32_t lhs = 0;
  std::uint32_t rhs = ~std::uint32_t{0};  // a slot, or ~0: compare with `scalar`
  double scalar = 0;
  std::int64_t element = 0;  // GuardKind::element: the flat index into lhs
  bool expected = false;     // the answer while recording
  Site where;
};
const char* to_string(Compare c);
// "any(%3 > 0)", "%5[2] <= %7": the guard's test, in the dump's slot names.
std::string describe(const Guard& g);

template <class T>
struct Instr {
  const OpInfo<T>* op = nullptr;
  std::shared_ptr<const OpParams> params;  // null for ops without attributes
  std::uint32_t args_begin = 0, n_args = 0;  // input slots, in Tape::args
  std::uint32_t out = 0;                     // output slot
  std::uint32_t saved_begin = 0, n_saved = 0;  // in Tape::saved
  Site where;
  // A step of a recorded pullback: the output slot of the forward instruction
  // it differentiates (Note [Pullback origins]); ~0 for any other instruction.
  std::uint32_t pullback_of = ~std::uint32_t{0};
};

// The error of a replay whose inputs break guard `g` (index `i`), as "op: ...".
[[noreturn]] void fail_guard(const char* op, const Guard& g, std::size_t i);

namespace detail {
// Note [Failed replays]: a replay that throws after it changed a tape's values
// (an op's error, a failed guard) leaves them half-updated, so the tape is
// marked and everything that would read those values throws until a forward
// pass succeeds. A shape error on an input changes nothing (the callers check
// every input before setting any). Shared by Tape and CompiledProgram.
class ReplayHealth {
 public:
  // Runs a forward pass: an Error it throws marks the tape (and goes on); success clears the mark.
  template <class F>
  void run(F forward) {
    try {
      forward();
    } catch (const Error& e) {
      why_ = e.what();
      throw;
    }
    why_.clear();
  }
  // Marks the tape and throws fail_guard's error for guard i.
  [[noreturn]] void guard_failed(const char* op, const Guard& g, std::size_t i);
  void mark(std::string why) { why_ = std::move(why); }
  // Throws, naming `op` and `subject` ("tape", "compiled tape"), while the tape is marked.
  void check(const char* op, const char* subject) const;
  bool ok() const noexcept { return why_.empty(); }

 private:
  std::string why_;  // the failed replay's error; empty: usable
};
}  // namespace detail

template <class T>
class Tape {
 public:
  static constexpr std::uint32_t kNoSlot = ~std::uint32_t{0};

  // --- recording -------------------------------------------------------------
  // An input; `name` is its leaf path ("blocks.2.w1"), shown by dumps and errors.
  // `state`: a tg::State leaf (Note [State leaves]), which ops with
  // OpInfo::state_inputs may update in place; it needs no gradient.
  std::uint32_t add_input(Array<T> value, bool needs_grad = true, std::string name = {}, bool state = false);
  std::uint32_t add_constant(Array<T> value);
  // Note [Captured values]: on a tape that will be replayed (tg::record, tg::jit),
  // an Array operand that is not an argument is refused instead of copied.
  void set_refuse_captures(bool refuse) { refuse_captures_ = refuse; }
  bool refuses_captures() const noexcept { return refuse_captures_; }
  // Appends a fully computed instruction; `args` are slots already on this tape.
  std::uint32_t append(const OpInfo<T>& op, std::shared_ptr<const OpParams> params, std::span<const std::uint32_t> args,
                       Array<T> output, std::vector<Array<T>> saved, const Site& where);
  void set_output(std::uint32_t slot) { output_ = slot; }
  // Evaluates `guard` on the current values, sets guard.expected, keeps it, returns the answer.
  bool add_guard(Guard guard);
  // Counts a read of a tracked value that no guard covers (Tracked::value, item).
  void note_unguarded_read(const std::source_location& where);
  // Keeps a string as long as the tape (or a copy of it) lives: the sites of a loaded tape.
  const char* keep_string(std::string s);
  std::shared_ptr<const void> kept_strings() const { return kept_strings_; }

  // --- reading -----------------------------------------------------------------
  std::size_t num_slots() const noexcept { return values_.size(); }
  std::size_t num_instructions() const noexcept { return instrs_.size(); }
  const Instr<T>& instruction(std::size_t i) const { return instrs_[i]; }
  std::span<const std::uint32_t> args_of(const Instr<T>& ins) const { return {args_.data() + ins.args_begin, ins.n_args}; }
  std::span<const Array<T>> saved_of(const Instr<T>& ins) const { return {saved_.data() + ins.saved_begin, ins.n_saved}; }
  const Array<T>& value(std::uint32_t slot) const { return values_[slot]; }
  SlotKind kind(std::uint32_t slot) const { return kind_[slot]; }
  bool needs_grad(std::uint32_t slot) const { return needs_grad_[slot] != 0; }
  // Whether the slot is an input recorded from a tg::State leaf.
  bool is_state(std::uint32_t slot) const { return state_[slot] != 0; }
  std::span<const std::uint32_t> inputs() const noexcept { return inputs_; }
  // Input k's leaf path, or "" when it has none.
  const std::string& input_name(std::size_t k) const { return input_names_[k]; }
  // "input 3 (blocks.0.w1)" or "input 3", for messages.
  std::string describe_input(std::size_t k) const;
  std::uint32_t output() const noexcept { return output_; }
  std::span<const Guard> guards() const noexcept { return guards_; }
  // The answer of a guard on the current values.
  bool evaluate(const Guard& guard) const;
  // Index of the first guard the current values answer differently, or -1.
  std::int64_t first_failed_guard() const;
  std::int64_t unguarded_reads() const noexcept { return unguarded_reads_; }
  const Site& first_unguarded_read() const noexcept { return first_unguarded_read_; }
  // The adjoint of a slot after reverse(); zeros if nothing reached it.
  Array<T> adjoint(std::uint32_t slot) const;
  // Copies the adjoint of a slot into `out`, reusing its storage when the size matches.
  void adjoint_into(std::uint32_t slot, Array<T>& out) const;

  // Note [Unreachable values]: a recording compiled at once (tg::jit) needs of
  // a computed value only its shape once no Tracked handle can reach it, since
  // no later op can then read it. Handles count themselves per slot
  // (add_handle, drop_handle); with release_unreachable on, the last handle of
  // a computed value other than the output frees its storage and leaves its
  // shape, as a structure-only tape has. Recording a ResNet step then holds the
  // few activations its handles reach, not all of them (207 MiB, the largest
  // memory of its jit training). Rejected: keeping every value until compile.
  // Off: every value stays (a tape that is replayed or differentiated).
  void set_release_unreachable(bool on) { release_unreachable_ = on; }
  bool releases_unreachable() const noexcept { return release_unreachable_; }
  // Frees, as the last handle's drop would have, every computed value from
  // slot `first` on that no handle reaches: after a gradient recorded inside
  // the recording, which kept them while its reverse pass read them.
  void release_unreachable_from(std::uint32_t first) noexcept;
  void add_handle(std::uint32_t slot) noexcept {
    if (slot < handles_.size()) ++handles_[slot];
  }
  void drop_handle(std::uint32_t slot) noexcept;

  // Note [Pullback origins]: while an op's recorded pullback records (a
  // gradient taken inside a recording), every instruction it appends is marked
  // as a step of the forward instruction it differentiates and takes that
  // instruction's site, the user's line, instead of the op library's. Dumps
  // show "d%5" beside it, errors name the user's line, and tape files keep
  // the mark. Rejected: a site per op library line (reduce.cpp:125), which
  // says nothing about the model.
  struct PullbackOrigin {
    std::uint32_t slot = kNoSlot;  // the forward instruction's output; kNoSlot: not in a pullback
    Site where;
  };
  // Sets the origin of the instructions appended from now on; returns the one before.
  PullbackOrigin set_pullback_origin(PullbackOrigin origin) noexcept {
    std::swap(origin, pullback_origin_);
    return origin;
  }

  // Note [Tape identity] (tape_identity.hpp): unique for the life of the process.
  std::uint64_t generation() const noexcept { return identity_.generation(); }

  // --- running -----------------------------------------------------------------
  // Note [One replay at a time] (tape_identity.hpp): every call below takes the
  // tape for the calling thread while it runs; a caller that runs several
  // (set inputs, forward, reverse, read adjoints) holds one guard across them.
  detail::ReplayGuard replay_guard(const char* op) { return detail::ReplayGuard(replay_owner_, op); }
  // Note [Failed replays]: after a replay that threw, reverse and
  // check_usable throw until a forward pass succeeds; mark_failed marks it so.
  void check_usable(const char* op) const { health_.check(op, "tape"); }
  bool usable() const noexcept { return health_.ok(); }
  void mark_failed(std::string why) { health_.mark(std::move(why)); }
  // A tape file loaded for its structure only (LoadOptions::replay = false):
  // inputs and computed values have shapes but no storage, so every call that
  // would compute, replay or set an input throws.
  void set_structure_only() { structure_only_ = true; }
  bool structure_only() const noexcept { return structure_only_; }
  // Adds a guard with the answer it had when recorded (a loaded tape's), without evaluating it.
  void add_recorded_guard(const Guard& guard);
  // Note [Inputs without gradient]: input k can be marked as data (a batch of
  // images, labels) that needs no gradient. The mask is propagated again through
  // every instruction, so pullbacks skip work that only fed that input (conv1's
  // input gradient); its adjoint() is zeros afterwards.
  void set_input_needs_grad(std::size_t k, bool needs);
  // Times every instruction's forward and pullback into `profile` (nullptr: off).
  void set_profile(TapeProfile* profile) { profile_ = profile; }
  // Replaces input k's value; its shape must equal the recorded one (Note [Replay]).
  void set_input(std::size_t k, const Array<T>& value, const char* op = "replay");
  // Throws set_input's error when input k does not exist or has another shape; changes nothing.
  void check_input(std::size_t k, const Shape& shape, const char* op) const;
  // Replays every instruction, then checks every guard (Note [Guards]): throws on a failed one.
  void forward();
  // Replays every instruction; guards are left to the caller (first_failed_guard).
  void run_forward();
  // Seeds the output adjoint with `seed` (output's shape) and runs every pullback.
  void reverse(const Array<T>& seed);

 private:
  std::uint32_t add_slot(Array<T> value, SlotKind kind, bool needs_grad);
  void run_instructions();
  void check_computable(const char* op) const;  // throws on a structure-only tape
  void check_guard(const Guard& guard) const;   // slots, shapes and element index of a guard to add

  std::vector<Instr<T>> instrs_;
  std::vector<std::uint32_t> args_;
  std::vector<Array<T>> values_;
  std::vector<Array<T>> adjoints_;
  std::vector<std::uint8_t> adjoint_live_;  // set when a reverse pass wrote the adjoint
  std::vector<std::uint8_t> needs_grad_;
  std::vector<std::uint8_t> state_;  // per slot: an input from a tg::State leaf
  std::vector<SlotKind> kind_;
  std::vector<Array<T>> saved_;
  std::vector<std::uint32_t> inputs_;
  std::vector<std::string> input_names_;
  std::uint32_t output_ = kNoSlot;
  std::vector<const Array<T>*> scratch_in_;  // reused per instruction: no allocation per step
  std::vector<Array<T>*> scratch_adj_;
  TapeProfile* profile_ = nullptr;
  std::vector<Guard> guards_;
  std::int64_t unguarded_reads_ = 0;
  Site first_unguarded_read_;
  std::shared_ptr<std::deque<std::string>> kept_strings_;  // deque: kept strings never move
  detail::TapeIdentity identity_;
  detail::ReplayOwner replay_owner_;
  detail::ReplayHealth health_;
  bool structure_only_ = false;
  bool refuse_captures_ = false;
  std::vector<std::uint32_t> handles_;  // per slot: live Tracked handles (Note [Unreachable values])
  bool release_unreachable_ = false;
  PullbackOrigin pullback_origin_;
};

namespace detail {
// The tape the innermost recording on this thread writes to (tg::constant), or nullptr.
template <class T>
Tape<T>*& current_recording() {
  thread_local Tape<T>* tape = nullptr;
  return tape;
}
// Makes `tape` the current recording for a scope; the previous one comes back after.
template <class T>
class RecordingScope {
 public:
  explicit RecordingScope(Tape<T>* tape) : previous_(current_recording<T>()) { current_recording<T>() = tape; }
  RecordingScope(const RecordingScope&) = delete;
  RecordingScope& operator=(const RecordingScope&) = delete;
  ~RecordingScope() { current_recording<T>() = previous_; }

 private:
  Tape<T>* previous_;
};
}  // namespace detail

struct CompileOptions;
namespace detail {
// TAPEGRAD_DUMP=dir (tape_file.hpp): saves `tape` into the directory when the
// variable is set and no tape of the same structure was saved by this process
// yet. Never throws: a failure is reported once on stderr.
template <class T>
void dump_tape_if_requested(const Tape<T>& tape, const CompileOptions* compiled = nullptr);
extern template void dump_tape_if_requested(const Tape<float>&, const CompileOptions*);
extern template void dump_tape_if_requested(const Tape<double>&, const CompileOptions*);
}  // namespace detail

// Evaluates a guard on values (shared by the interpreter and compiled programs).
template <class T>
bool evaluate_guard(const Guard& guard, const Array<T>& lhs, const Array<T>* rhs);

extern template class Tape<float>;
extern template class Tape<double>;

}  // namespace tg
