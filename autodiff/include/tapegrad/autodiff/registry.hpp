// The op registry INTERFACE. autodiff/ knows no particular op: the interpreter,
// the printer and (later) the compiler read only the rows of this table.
// ops/ fills one row per op; users add rows for custom ops (custom_op.hpp).
//
// Note [Pullbacks accumulate]: a pullback ADDS its contribution into each input
// adjoint (+=); the engines zero an adjoint once, the first time it is needed
// in a reverse pass, unless its first writer assigns it (Note [Assigned
// adjoints]). A value used twice therefore sums both adjoints, including x*x
// where both input adjoint pointers alias the same array.
//
// Note [Assigned adjoints]: zeroing an adjoint only for its first writer to add
// into it costs a pass over memory. An op with kPullbackCanAssign may be told,
// per input (PullbackCall::assign, bit i for input i), that no pullback has
// written that adjoint yet in this pass: its bytes are stale, and the pullback
// writes every element (=) instead of adding. The engines set the bit only for
// a slot that appears once among the instruction's arguments (x*x adds twice).
// Ops that can only add honour it with assigned_as_zero() first.
//
// Note [Needs-grad mask]: input_adjoints[i] is nullptr when input i needs no
// gradient (a constant, or a value that depends on no tape input). Pullbacks
// skip those inputs entirely: a constant weight costs no weight gradient.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "tapegrad/kernels/error.hpp"

#include "tapegrad/autodiff/param_io.hpp"
#include "tapegrad/kernels/array.hpp"

namespace tg {

// Base of every op's named parameter struct (ReduceParams, SliceParams, ...).
struct OpParams {
  virtual ~OpParams() = default;
};

// Looks an instruction's params up as the op's own struct.
template <class P>
const P& params_as(const OpParams* p) {
  return *static_cast<const P*>(p);
}

enum OpFlag : std::uint32_t {
  kNoFlags = 0,
  kElementwise = 1u << 0,  // output element i depends only on input elements i (after broadcasting)
  kLinear = 1u << 1,       // linear in every differentiable input
  kPullbackIgnoresOutput = 1u << 2,  // the pullback never reads the op's output value (conv, matmul, add)
  kPullbackCanAssign = 1u << 5,  // the pullback honours PullbackCall::assign (Note [Assigned adjoints])
  kView = 1u << 6,  // one input; the output is its elements in the same order, another shape (reshape)
  // The op a recorded reverse pass sums adjoint contributions with (add; Note [Recorded pullbacks]).
  kSumsAdjoints = 1u << 7,
};

template <class T>
class Tracked;

// Note [Recorded pullbacks]: tg::gradient called inside a recording records
// its reverse pass on that recording's tape, so the gradient is a recorded
// value like any other: it can be differentiated again (gradients of
// gradients, Hessian-vector products), replayed, compiled and dumped. An op
// takes part through OpInfo::record_pullback: given handles to its inputs,
// output and output adjoint, it records its pullback with ops that have
// pullbacks of their own, and hands each wanted input's contribution to
// `contribute`; the recorded reverse pass sums contributions with the
// kSumsAdjoints op. An op without the hook is a tg::Error when such a
// gradient is recorded, never a silently missing term. Rejected:
// forward-over-reverse (a tangent through every pullback kernel), which gives
// Hessian-vector products but not the gradient of a function that itself
// contains a gradient (a gradient penalty).
template <class T>
struct RecordedPullbackCall {
  const OpParams* params;
  std::span<const Tracked<T>* const> inputs;
  const Tracked<T>& output;
  const Tracked<T>& output_adjoint;
  std::span<const char> wanted;  // wanted[i]: input i's contribution is needed
  std::function<void(std::size_t input, const Tracked<T>& contribution)> contribute;  // same shape as the input

  const Tracked<T>& input(std::size_t i) const { return *inputs[i]; }
  bool wants(std::size_t i) const { return i < wanted.size() && wanted[i] != 0; }
};

template <class T>
struct OpInfo;

// An activation the compiler fused onto an op's output (Note [Epilogues]).
template <class T>
struct EpilogueCall {
  const OpInfo<T>* activation;
  const OpParams* params;
};

constexpr int kVariadic = -1;

// Note [Plans]: what an op's plan step resolves once, when an instruction is
// recorded, evaluated or loaded: the output shape, and the params the kernels
// run with (a geometry, the algorithm of each pass) as a new immutable struct.
// Replays and compiled programs use the resolved params and never plan again.
// (Before, a shape rule wrote `mutable` fields of the user's params: a params
// object shared by two instructions, or read while planned, raced.)
struct Plan {
  Shape output;
  std::shared_ptr<const OpParams> resolved;  // null: the params as given
};

template <class T>
struct ForwardCall {
  const OpParams* params;
  std::span<const Array<T>* const> inputs;
  Array<T>& output;       // already has the shape the shape rule gave; write every element
  std::span<Array<T>> saved;  // op-owned buffers kept for the pullback (n_saved of them)

  // Input i, which OpInfo::state_inputs names, to update in place (Note [State inputs]).
  Array<T>& state(std::size_t i) const { return const_cast<Array<T>&>(*inputs[i]); }
};

template <class T>
struct PullbackCall {
  const OpParams* params;
  std::span<const Array<T>* const> inputs;
  const Array<T>& output;
  const Array<T>& output_adjoint;
  std::span<Array<T>* const> input_adjoints;  // accumulate (+=); nullptr = not needed
  std::span<Array<T>> saved;  // the forward's saved buffers; a pullback may also keep workspaces here
  // Bit i: input_adjoints[i] holds stale bytes; write it instead of adding
  // (Note [Assigned adjoints]). Nonzero only for kPullbackCanAssign ops.
  std::uint32_t assign = 0;

  bool assigns(std::size_t i) const { return i < 32 && ((assign >> i) & 1u) != 0; }
};

// Note [Fusion hooks]: what only the compiler reads lives in one optional part
// of a row; an op without fusion leaves OpInfo::fusion null, and no call it
// receives carries compiler state. (Rejected: compiler flags and hooks on every
// row, and epilogue pointers in every ForwardCall and PullbackCall, which each
// plain op had to ignore.)
template <class T>
struct Fusion {
  // As an activation (Note [Epilogues]): a one-input elementwise op whose
  // derivative follows from its output alone (relu, tanh, sigmoid, exp) can run
  // in place on the buffer of the op that produced its input (the compiler's
  // epilogue fusion, when that producer is kPullbackIgnoresOutput and has no
  // other consumer):
  //   epilogue_forward:  y[i] = f(y[i])
  //   epilogue_pullback: dy[i] = f'(x[i]) * dy[i], computed from the output y
  std::function<void(const OpParams*, T* values, std::int64_t n)> epilogue_forward;
  std::function<void(const OpParams*, const T* output, T* adjoint, std::int64_t n)> epilogue_pullback;
  // Note [Activation pullbacks at the max-pool] (compile.hpp): the epilogue
  // pullback multiplies the adjoint by 0 or 1, chosen by the output value, and
  // the forward never outputs NaN (relu).
  bool mask_pullback = false;
  // As a producer: the forward that runs a fused activation inside its own
  // output loop (conv), and the pullback that applies the activation's pullback
  // itself, in place on `adjoint` (output_adjoint's own buffer, not yet turned
  // into the producer's) as it first reads it (Note [Adjoint prologue] in
  // kernels/epilogue.hpp). Empty: the compiler runs the activation as a pass.
  std::function<void(const ForwardCall<T>&, const EpilogueCall<T>&)> forward_with_epilogue;
  std::function<void(const PullbackCall<T>&, const EpilogueCall<T>&, Array<T>& adjoint)> pullback_with_epilogue;
  // Each output is one element of its input window, and the pullback sends the
  // output adjoint to that element alone (maxpool).
  bool pools_by_max = false;
  // Whether the pullback reads input k's value; empty: it reads every input.
  // A compiled program's memory plan lets bytes of an input that no pullback
  // reads go to other buffers after its last forward reader (Note [Planned arena]).
  std::function<bool(const OpParams*, std::size_t k)> pullback_reads_input;
  // Note [Folded norms]: an op that maps its first input by an affine map per
  // channel, known from its other inputs (evaluation-mode batch_norm), may be
  // computed by the op that produces that input (a conv, with folded weights
  // and bias): given the producer's row, params and input count, fold_into
  // returns the producer's params for computing both, under which it takes
  // this op's other inputs after its own; null when it cannot.
  std::function<std::shared_ptr<const OpParams>(const OpInfo<T>& producer, const OpParams* producer_params,
                                                std::size_t producer_inputs, const OpParams* params)>
      fold_into;
};

template <class T>
struct OpInfo {
  std::string name;
  int arity = 1;  // number of inputs, or kVariadic
  std::uint32_t flags = kNoFlags;
  int n_saved = 0;
  // Note [State inputs]: bit i set: input i is state (a tg::State leaf, Note
  // [State leaves]) that the forward may update in place (ForwardCall::state),
  // as batch_norm updates its running statistics. Recording checks that each
  // such operand is a state input of the tape (or a tg::constant, a copy made
  // on purpose), so an update never lands on a parameter, data or a computed
  // value; a state slot gets no gradient,
  // and the compiler keeps the instruction even when its output is unused.
  std::uint32_t state_inputs = 0;
  // Validates the inputs and returns the output shape; throws tg::Error. An op
  // whose kernels need more than shapes (a geometry) gives `plan` instead
  // (Note [Plans]); exactly one of the two is set.
  std::function<Shape(const OpParams*, std::span<const Shape* const>)> shape;
  std::function<Plan(const OpParams*, std::span<const Shape* const>)> plan;
  std::function<void(const ForwardCall<T>&)> forward;
  std::function<void(const PullbackCall<T>&)> pullback;
  // The pullback recorded as ops (Note [Recorded pullbacks]); empty: the op
  // cannot be differentiated twice yet.
  std::function<void(const RecordedPullbackCall<T>&)> record_pullback;
  // Note [Linear adjoints] (ops/src/linear_adjoint.cpp): whether, with these
  // params, the op is linear in its one input and its pullback reads neither
  // that input's values, the output nor saved buffers (n_saved = 0), so the
  // built-in linear_adjoint op can run the pullback as its forward and the
  // forward as its pullback (meanpool, upsample, slice; pad unless it fills
  // with a nonzero value, which is affine). Empty: never.
  std::function<bool(const OpParams*)> transposable;
  // "stride=1 axes=[0,2]"; empty when the op has no attributes.
  std::function<std::string(const OpParams*)> print_params;
  // Saved tape files (tape_file.hpp): the params struct as bytes and back, field
  // by field (param_io.hpp). Both empty for an op without params.
  std::function<void(const OpParams*, ParamWriter&)> save_params;
  std::function<std::shared_ptr<const OpParams>(ParamReader&)> load_params;
  // Floating-point operations of one forward from the input and output shapes
  // (summaries); empty: one per output element.
  std::function<double(const OpParams*, std::span<const Shape* const> inputs, const Shape& output)> flops;
  // What only the compiler reads (Note [Fusion hooks]); null for most ops.
  std::shared_ptr<const Fusion<T>> fusion;
  // Note [Tuned algorithms]: an op with several kernels for one computation
  // (conv's algorithms) may time them for a compiled program
  // (CompileOptions::tune_algorithms). Given its params and which inputs need
  // gradients (bit i: input i; 0 when no pullback runs), it returns a copy of the
  // params with the choices it left automatic made by measurement, or null to
  // keep its own. The recorded tape's params are never changed. Empty for most ops.
  std::function<std::shared_ptr<const OpParams>(const OpParams*, std::uint32_t needs_grad)> tune;
  std::uint32_t id = 0;  // index in the registry, assigned by Registry::add
  std::string registered_at;  // "unary.cpp:210", set by Registry::add (error messages, coverage reports)
  bool builtin = false;  // a row of ops/' op tables (Note [Op tables]); false for custom ops
};

// The table. Rows live for the program's lifetime, so instructions hold plain
// pointers to them. Adding is thread-safe; rows never move.
//
// Note [Unique op names]: a saved tape names its ops, and loading looks them up
// by name, so a second row with a name already taken is a tg::Error naming both
// registration sites. (Shadowing the first, or the second, silently ran the
// wrong op on load.) Names are per element type: "relu" has a float and a double row.
template <class T>
class Registry {
 public:
  static const OpInfo<T>& add(OpInfo<T> row, Site where = std::source_location::current()) {
    auto& self = instance();
    std::lock_guard lock(self.mutex_);
    row.registered_at = site_string(where);
    for (const auto& existing : self.rows_)
      if (existing.name == row.name) fail("register op", duplicate_message(existing, row));
    if (row.builtin && self.builtins_sealed_)
      fail("register op", "built-in op '" + row.name + "' (" + row.registered_at +
                              ") was first used after start-up registration; every built-in row must be in its "
                              "family's op table; hint: add the family to TG_OP_FAMILIES in ops/src/builtin_ops.hpp");
    row.id = static_cast<std::uint32_t>(self.rows_.size());
    return self.rows_.emplace_back(std::move(row));
  }
  static const OpInfo<T>* find(std::string_view name) {
    auto& self = instance();
    std::lock_guard lock(self.mutex_);
    for (const auto& row : self.rows_)
      if (row.name == name) return &row;
    return nullptr;
  }
  static std::size_t size() {
    auto& self = instance();
    std::lock_guard lock(self.mutex_);
    return self.rows_.size();
  }
  // Every row, in registration order (a snapshot: rows added later are not in it).
  static std::vector<const OpInfo<T>*> rows() {
    auto& self = instance();
    std::lock_guard lock(self.mutex_);
    std::vector<const OpInfo<T>*> out;
    for (const auto& row : self.rows_) out.push_back(&row);
    return out;
  }
  // Called once every op table has registered (register_builtin_ops): from then
  // on a built-in row appearing is a missing table entry, and an error.
  static void seal_builtins() {
    auto& self = instance();
    std::lock_guard lock(self.mutex_);
    self.builtins_sealed_ = true;
  }

 private:
  static Registry& instance() {
    static Registry registry;
    return registry;
  }
  static std::string duplicate_message(const OpInfo<T>& existing, const OpInfo<T>& row) {
    return "op name '" + row.name + "' is already registered (at " + existing.registered_at + ", " +
           (existing.builtin ? "a built-in op" : "a custom op") + "; again at " + row.registered_at +
           ") names must be unique, since tape files find ops by name; hint: give the op registered at " +
           row.registered_at + " another name";
  }
  std::mutex mutex_;
  std::deque<OpInfo<T>> rows_;  // deque: references stay valid as rows are added
  bool builtins_sealed_ = false;
};

}  // namespace tg
