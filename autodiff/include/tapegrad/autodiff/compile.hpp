// The tape compiler: tg::compile(tape) turns a recorded tape into a program
// that gives the interpreter's results, doing less work in less memory.
//
//   auto tape = tg::record(f, x, w);
//   auto ct = tg::compile(tape);                 // CompiledTape
//   auto [gx, gw] = ct.gradient(x2, w2);         // replay, same shapes
//   fmt::print("{}", tg::dump(ct));              // kept instructions, arena offsets, planned bytes
//
// Passes (each can be switched off in CompileOptions, for debugging and tests;
// one file each in autodiff/src/compile, run in the order of the pass list in
// program.cpp; Note [Fusion hooks] in registry.hpp says what an op offers them):
//   dead_code:   Note [Dead instructions]: an instruction whose output does not
//                reach the tape's output is not run, forward or backward; a
//                pullback runs only when the gradient reaches a needs-grad input.
//   fold_norms:  Note [Folded norms]: an evaluation-mode batch_norm after a conv
//                whose output feeds nothing else is computed by the conv, with the
//                weights and bias folded (w * gamma / sqrt(var + eps), one channel
//                at a time) on every run, so the recorded parameters stay the
//                inputs; its pullback gives gamma and beta their gradients too.
//   fuse_epilogues: Note [Epilogue fusion]: an activation (an op with
//                epilogue hooks: relu, tanh, sigmoid, exp) whose input comes from
//                an op that never reads its own output in its pullback (conv,
//                matmul, add) and feeds nothing else runs in place on that op's
//                output buffer, and its pullback turns the output adjoint into the
//                producer's in place: one buffer and one adjoint less, no extra
//                adjoint to zero. A conv (Fusion::forward_with_epilogue) runs it, with
//                its bias, inside the kernel's output loop (implicit GEMM: on
//                each task's block of outputs as it is stored); after any other
//                producer it runs as one parallel pass. Its pullback is one
//                parallel pass over the adjoint before the producer's pullback,
//                or folded into a conv's weight gradient (see below).
//                Note [Activation pullbacks at the max-pool]: when the fused
//                activation's output feeds only a max-pool (Fusion::mask_pullback
//                and pools_by_max: ReLU then maxpool), its pullback
//                runs on the pool's output adjoint instead, with the pool's
//                output as the activation's: a window's maximum is the
//                activation's output at the element the pool's pullback sends
//                the adjoint to, every other element gets a zero adjoint, and
//                a 0/1 mask of those is exact. LeNet's pullbacks then mask
//                4x fewer elements, and the producer's output is no longer
//                read in the reverse pass.
//   fuse_elementwise: Note [Elementwise fusion]: a chain of elementwise ops
//                (registry flag kElementwise, no saved buffers) whose inner
//                values feed only the next op of the chain, with external
//                inputs of the chain's shape or of one element, becomes one
//                step: it runs over the elements in blocks of kFusedBlock, every
//                member on a block held in cache-sized scratch, and only the chain's
//                result is written to memory. Its pullback recomputes a block's
//                inner values and runs the members' pullbacks on that block
//                (each inner adjoint written by its one reader, not zeroed),
//                so inner values and adjoints never take arena space.
//   share_views: Note [Views share buffers]: a view (registry flag kView:
//                reshape) of a computed value gets no buffer and runs nothing
//                forward: its value is its input's bytes under its own shape.
//                When it is its input's only consumer, the input's adjoint is
//                the view's adjoint's bytes too, and its pullback copies
//                nothing. Chains of views share one buffer.
//   plan_memory: Note [Planned arena]: every computed value and every adjoint
//                lives in one arena at an offset chosen from its live interval
//                over the forward and reverse pass; buffers whose intervals are
//                more than two steps apart share bytes. A value lives until its last reader:
//                the forward steps that read it, and the pullbacks that do (an
//                op's Fusion::pullback_reads_input says which inputs; a
//                2x2 max-pool with window codes and a mean-pool read none, so a
//                conv's output before LeNet's max-pool is free after the forward).
//                Without it each gets its own bytes.
//
// One option is off by default, like cuDNN's benchmark mode:
//   tune_algorithms: Note [Tuned algorithms] (registry.hpp): an op with several
//                kernels for one computation (conv: direct, im2col, implicit
//                GEMM, FFT, Winograd per pass) times those its cost rule finds
//                plausible, on this machine and this layer's shapes, and the
//                program runs the fastest. Only choices the user left automatic;
//                the passes that run (no input-gradient pass for an image).
//                Compiling costs the timings (each layer once per process); the
//                results match the interpreter's to rounding, not bit for bit,
//                and which algorithm wins can differ between runs.
//
// Guards (Note [Guards], tape.hpp) recorded on the tape are checked after every
// forward pass (their values are kept alive and never fused away); a failed one
// throws, or re-records and recompiles (set_guard_policy).
//
// After the first call a replay makes no heap allocation: kernels take their
// workspaces from the per-thread scratch stack (kernels/scratch.hpp).
//
// The interpreter (Tape) stays the reference: the tests compare every model
// both ways, with every subset of passes. A conv's activation pullback folds
// into its weight gradient's packing of the adjoint (Fusion::pullback_with_epilogue,
// Note [Adjoint prologue]); after a matmul it stays one parallel pass, since
// OpenBLAS packs its own operands.
//
// Note [Constants are folded when recorded]: there is no constant-folding
// pass because a tapegrad tape has nothing left to fold: an op on plain
// Arrays is evaluated when it is called and enters the tape as one constant,
// and every recorded instruction has a Tracked operand, which traces back to
// an input (inputs marked as data still change on replay, so they are not
// constants either).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <source_location>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "tapegrad/autodiff/gradient.hpp"

namespace tg {
namespace compile_impl {
struct MemoryPlan;
}

struct CompileOptions {
  bool dead_code = true;
  bool plan_memory = true;
  bool fuse_epilogues = true;
  bool fuse_elementwise = true;
  bool share_views = true;
  bool tune_algorithms = false;
  bool fold_norms = true;
};

// The program, independent of how many inputs the user's function has.
template <class T>
class CompiledProgram {
 public:
  CompiledProgram(const Tape<T>& tape, const CompileOptions& options);

  void set_input(std::size_t k, const Array<T>& value);
  // Throws set_input's error for a missing input or another shape; changes nothing.
  void check_input(std::size_t k, const Shape& shape) const;
  // Note [Failed replays] (tape.hpp), the same for compiled programs.
  void check_usable(const char* op) const { health_.check(op, "compiled tape"); }
  void mark_failed(std::string why) { health_.mark(std::move(why)); }
  // Note [One replay at a time] (tape_identity.hpp): a caller running several steps holds one guard.
  detail::ReplayGuard replay_guard(const char* op) { return detail::ReplayGuard(owner_, op); }
  // Runs every step, then checks the tape's guards (Note [Guards]): throws on a failed one.
  void forward();
  // Runs every step; guards are left to the caller.
  void run_forward();
  // Index of the first guard the current values answer differently, or -1.
  std::int64_t first_failed_guard() const;
  std::span<const Guard> guards() const { return guards_; }
  const Shape& input_shape(std::size_t k) const { return values_[inputs_[k]].shape(); }
  void reverse(const Array<T>& seed);
  // reverse() seeded with ones, without building the seed (no heap allocation).
  void reverse_ones();
  const Array<T>& output() const { return values_[output_]; }
  // Input k's gradient after reverse(): zeros if it needs none or nothing reached it.
  void input_gradient_into(std::size_t k, Array<T>& out) const;
  std::size_t num_inputs() const { return inputs_.size(); }
  // Times every step's forward and pullback into `profile` (nullptr: off); print with dump_profile.
  void set_profile(TapeProfile* profile) { profile_ = profile; }

  // --- what the compiler decided (printing, tests) ---------------------------------
  // An activation fused onto a step (Note [Epilogue fusion]).
  struct Activation {
    const OpInfo<T>* op = nullptr;
    std::shared_ptr<const OpParams> params;
  };
  // Note [Elementwise fusion]: one op of a chain run as one step, block by block.
  struct Member {
    const OpInfo<T>* op;
    std::shared_ptr<const OpParams> params;
    std::array<std::int32_t, 2> in;  // >= 0: index into the step's args; < 0: member -1 - in's output
    int n_in;
    bool needs_grad;     // its output needs a gradient: its pullback runs
    std::uint32_t slot;  // the recorded slot of its output (for printing)
    // The chain's pullback reads its value: an inner one is recomputed, the last
    // one's is the step's output, kept (Note [What a chain's pullback reads], ir.hpp).
    bool read_back = true;
  };
  struct Step {
    const OpInfo<T>* op;
    std::shared_ptr<const OpParams> params;
    std::vector<std::uint32_t> args;
    std::uint32_t out;
    std::vector<Array<T>> saved;  // the op's own buffers, as the tape had them
    Site where;
    bool pullback;  // runs in the reverse pass

    // What a step is beyond running its op, one kind at a time:
    // the op, then an activation in place on its output (`out` is the
    // activation's slot); the activation's pullback may have moved to the
    // max-pool that reads `out` (Note [Activation pullbacks at the max-pool]).
    struct Epilogue {
      Activation activation;
      bool pullback_at_max = false;
    };
    // A max-pool that runs such a moved pullback on its own output adjoint first.
    struct AtMax {
      Activation activation;
    };
    // A chain of elementwise ops: `args` are its external inputs, `out` the last member's output.
    struct Chain {
      std::vector<Member> members;
    };
    // Note [Views share buffers]: the value is the input's bytes (nothing runs
    // forward); with shares_adjoint the input's adjoint is the output adjoint's
    // bytes too (the pullback only marks it written).
    struct View {
      bool shares_adjoint = false;
    };
    std::variant<std::monostate, Epilogue, AtMax, Chain, View> kind;

    const Epilogue* epilogue() const { return std::get_if<Epilogue>(&kind); }
    const AtMax* at_max() const { return std::get_if<AtMax>(&kind); }
    const Chain* chain() const { return std::get_if<Chain>(&kind); }
    const View* view() const { return std::get_if<View>(&kind); }
    bool plain() const { return std::holds_alternative<std::monostate>(kind); }
  };
  static constexpr std::int64_t kNotPlanned = -1;
  const CompileOptions& options() const { return options_; }
  const std::vector<Step>& steps() const { return steps_; }
  std::size_t recorded_instructions() const { return recorded_; }
  // Byte offsets in the arena of slot's value and adjoint (kNotPlanned: not in the arena).
  std::int64_t value_offset(std::uint32_t slot) const { return value_offset_[slot]; }
  std::int64_t adjoint_offset(std::uint32_t slot) const { return adjoint_offset_[slot]; }
  const Array<T>& value(std::uint32_t slot) const { return values_[slot]; }
  SlotKind kind(std::uint32_t slot) const { return kind_[slot]; }
  std::span<const std::uint32_t> inputs() const { return inputs_; }
  const std::string& input_name(std::size_t k) const { return input_names_[k]; }
  std::uint32_t output_slot() const { return output_; }
  // The arena's bytes, and what the same buffers take one by one (the interpreter's way).
  std::int64_t arena_bytes() const { return arena_bytes_; }
  std::int64_t unplanned_bytes() const { return unplanned_bytes_; }
  // Bytes a replay holds: the arena, the steps' saved buffers, and the values and
  // adjoints outside the arena (inputs and constants); tg::held_bytes(tape) counts the interpreter's.
  std::int64_t held_bytes() const;
  // The recorded tape as a tape file without input values (tape_file.hpp): saving
  // a compiled program appends its current inputs (serialize_program). It holds
  // the constants' values once more (a model's constants are scalars and small
  // tables; inputs, the big arrays, are not in it).
  const std::string& source_skeleton() const;

 private:
  CompileOptions options_;
  std::size_t recorded_ = 0;
  std::vector<Step> steps_;
  std::vector<Array<T>> values_, adjoints_;
  std::vector<SlotKind> kind_;
  std::vector<std::uint8_t> needs_grad_, adjoint_live_;
  std::vector<std::int64_t> value_offset_, adjoint_offset_;
  std::vector<std::uint32_t> inputs_;
  std::vector<std::string> input_names_;
  std::vector<Guard> guards_;
  std::uint32_t output_ = 0;
  Array<T> arena_;  // allocated by the first forward() (Note [The arena comes with the first replay])
  bool arena_ready_ = false;
  struct ArenaView {
    std::uint32_t slot;
    bool adjoint;
    Shape shape;
  };
  std::vector<ArenaView> arena_views_;
  std::int64_t arena_bytes_ = 0, unplanned_bytes_ = 0;
  std::string source_skeleton_;
  std::string source_error_;  // why the tape could not be written (an op without save_params)
  std::shared_ptr<const void> kept_strings_;  // the sites of a loaded tape, which steps point into
  std::vector<const Array<T>*> scratch_in_;
  std::vector<Array<T>*> scratch_adj_;
  TapeProfile* profile_ = nullptr;
  detail::ReplayOwner owner_;
  detail::ReplayHealth health_;  // Note [Failed replays]
  bool structure_only_ = false;  // from a tape without values (Tape::structure_only): nothing runs

  void check_computable() const;  // throws when structure_only_
  void adopt_memory_plan(compile_impl::MemoryPlan plan, const Tape<T>& tape);
  template <class Seed>
  void run_reverse(Seed write_seed);
  void ensure_arena();
  void run_steps();
  void run_step_forward(Step& st);
  void run_step_pullback(Step& st, std::uint32_t assign);
  void group_forward(const Step& st);
  // assigned_externals, bit k: external input k's adjoint holds stale bytes and its one reader writes it.
  void group_pullback(const Step& st, std::uint32_t assigned_externals);
};

extern template class CompiledProgram<float>;
extern template class CompiledProgram<double>;

namespace detail {
// A compiled program as an engine of the front-end (Note [Engines]). Its reverse
// pass is planned for one needs-grad mask, so the front-end changes a mark by
// recording again and compiling that with the same options (adopt).
template <class T>
class Compiled {
 public:
  static constexpr FrontEndOps kOps = TG_FRONT_END_OPS("CompiledTape");
  Compiled(const Tape<T>& tape, const CompileOptions& options)
      : program_(std::make_unique<CompiledProgram<T>>(tape, options)), options_(options) {}

  CompiledProgram<T>& program() { return *program_; }
  const CompiledProgram<T>& program() const { return *program_; }

  void check_input(std::size_t k, const Shape& shape, const char*) const { program_->check_input(k, shape); }
  void set_input(std::size_t k, const Array<T>& value, const char*) { program_->set_input(k, value); }
  const Shape& input_shape(std::size_t k) const { return program_->input_shape(k); }
  const Array<T>& input_value(std::size_t k) const { return program_->value(program_->inputs()[k]); }
  void forward() { program_->forward(); }
  void run_forward() { program_->run_forward(); }
  std::int64_t first_failed_guard() const { return program_->first_failed_guard(); }
  void mark_failed(std::string why) { program_->mark_failed(std::move(why)); }
  void check_usable(const char* op) const { program_->check_usable(op); }
  const Array<T>& output() const { return program_->output(); }
  void reverse(const Array<T>& seed) { program_->reverse(seed); }
  void reverse_ones() { program_->reverse_ones(); }
  void input_gradient_into(std::size_t k, Array<T>& out) const { program_->input_gradient_into(k, out); }
  bool set_input_needs_grad(std::size_t, bool) { return false; }
  void adopt(std::unique_ptr<Tape<T>> fresh) {
    program_ = std::make_unique<CompiledProgram<T>>(*fresh, options_);
    program_->forward();
  }

 private:
  std::unique_ptr<CompiledProgram<T>> program_;
  CompileOptions options_;
};
}  // namespace detail

// The user-facing handle: the calls of detail::FrontEnd (front_end.hpp), the
// same as GradientTape's, and the compiled program.
template <class T, class... Args>
class CompiledTape : public detail::FrontEnd<detail::Compiled<T>, T, Args...> {
  using Base = detail::FrontEnd<detail::Compiled<T>, T, Args...>;

 public:
  using typename Base::Recorder;
  CompiledTape(const GradientTape<T, Args...>& tape, const CompileOptions& options)
      : Base(detail::Compiled<T>(tape.tape(), options), tape.recorder()) {
    this->adopt_marks(tape);
  }

  const CompiledProgram<T>& program() const { return this->engine_.program(); }
  CompiledProgram<T>& program() { return this->engine_.program(); }
};

template <class T, class... Args>
CompiledTape<T, Args...> compile(const GradientTape<T, Args...>& tape, const CompileOptions& options = {}) {
  detail::dump_tape_if_requested(tape.tape(), &options);
  return CompiledTape<T, Args...>(tape, options);
}

// The compiled program as text: kept instructions with the arena offsets of
// their value and adjoint, what dead-code elimination removed, planned bytes.
template <class T>
std::string dump(const CompiledProgram<T>& program);
template <class T, class... Args>
std::string dump(const CompiledTape<T, Args...>& ct) {
  return dump(ct.program());
}

// Per-step times of a compiled program (CompiledProgram::set_profile), slowest first.
template <class T>
std::string dump_profile(const CompiledProgram<T>& program, const TapeProfile& profile);

extern template std::string dump_profile(const CompiledProgram<float>&, const TapeProfile&);
extern template std::string dump_profile(const CompiledProgram<double>&, const TapeProfile&);
extern template std::string dump(const CompiledProgram<float>&);
extern template std::string dump(const CompiledProgram<double>&);

}  // namespace tg
