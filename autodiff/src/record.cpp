#include "tapegrad/autodiff/record.hpp"

#include <array>
#include <new>

#include <fmt/format.h>

namespace tg {
namespace {

// Note [No allocation per operand]: recording is the hot path of small-op
// programs (issue: under 0.5 us per op), so the per-call lists of operands,
// shapes and slots live in inline storage; only ops with more than
// kInline operands (a long concat) spill to the heap.
template <class X, std::size_t kInline = 4>
class InlineList {
 public:
  explicit InlineList(std::size_t capacity) {
    if (capacity > kInline) heap_.reserve(capacity);
  }
  InlineList(const InlineList&) = delete;
  InlineList& operator=(const InlineList&) = delete;
  ~InlineList() {
    for (std::size_t i = 0; i < size_; ++i) inline_data()[i].~X();
  }
  X& push_back(X x) {
    if (heap_.capacity() > 0) return heap_.emplace_back(std::move(x));
    X* slot = new (inline_data() + size_) X(std::move(x));  // constructed only when used
    ++size_;
    return *slot;
  }
  X* data() { return heap_.capacity() > 0 ? heap_.data() : inline_data(); }
  std::size_t size() const { return heap_.capacity() > 0 ? heap_.size() : size_; }
  X& operator[](std::size_t i) { return data()[i]; }
  std::span<X> span() { return {data(), size()}; }

 private:
  X* inline_data() { return std::launder(reinterpret_cast<X*>(storage_)); }
  alignas(X) unsigned char storage_[sizeof(X) * kInline];
  std::size_t size_ = 0;
  std::vector<X> heap_;
};

template <class T>
void check_arity(const OpInfo<T>& op, std::size_t n) {
  if (op.arity != kVariadic && static_cast<std::size_t>(op.arity) != n)
    fail(op.name, fmt::format("got {} inputs expected {}", n, op.arity));
  if (op.arity == kVariadic && n == 0) fail(op.name, "got no inputs expected at least one");
}

template <class T>
Plan plan_of(const OpInfo<T>& op, const OpParams* params, std::span<const Shape* const> shapes) {
  if (op.plan) return op.plan(params, shapes);
  return {op.shape(params, shapes), nullptr};
}

// The forward of an op already planned: an output of `shape`, and its saved buffers.
template <class T>
Array<T> forward_planned(const OpInfo<T>& op, const OpParams* params, std::span<const Array<T>* const> inputs,
                         const Shape& shape, std::vector<Array<T>>& saved) {
  Array<T> out = Array<T>::uninitialized(shape);
  if (op.n_saved > 0) saved.resize(static_cast<std::size_t>(op.n_saved));
  op.forward({params, inputs, out, saved});
  return out;
}

// Plans (Note [Plans]) and runs the forward; `params` becomes the resolved params.
template <class T>
Array<T> run_forward(const OpInfo<T>& op, std::shared_ptr<const OpParams>& params, std::span<const Array<T>* const> inputs,
                     std::vector<Array<T>>& saved) {
  InlineList<const Shape*> shapes(inputs.size());
  for (auto* a : inputs) shapes.push_back(&a->shape());
  Plan plan = plan_of(op, params.get(), std::span<const Shape* const>(shapes.data(), shapes.size()));
  if (plan.resolved) params = std::move(plan.resolved);
  return forward_planned(op, params.get(), inputs, plan.output, saved);
}

}  // namespace

template <class T>
Array<T> evaluate_op(const OpInfo<T>& op, const OpParams* params, std::span<const Array<T>* const> inputs,
                     const std::source_location& where) {
  try {
    check_arity(op, inputs.size());
    std::vector<Array<T>> saved;
    std::shared_ptr<const OpParams> planned(std::shared_ptr<const OpParams>(), params);  // not owned
    return run_forward(op, planned, inputs, saved);
  } catch (const Error& e) {
    throw e.with_site(where);
  }
}

// Note [Captured values]: a tape that is replayed would keep a copied Array at
// its recording-time value (weights after an optimizer step, last batch's labels).
template <class T>
[[noreturn]] void fail_captured(const std::string& op, std::size_t operand, const Array<T>& a) {
  fail(op, fmt::format("operand {} is an Array of shape {} that the function captured (or made) instead of taking as an "
                       "argument, and a replay would keep its recording-time value expected a Tracked value; hint: pass "
                       "it as an argument (a parameter tree leaf, or tg::data(a) for data), or copy it on purpose with "
                       "tg::constant(a)",
                       operand, to_string(a.shape())));
}

// Note [State inputs]: a state input of the tape, or a constant the user
// copied on purpose (tg::constant), whose updates stay in the tape's copy.
template <class T>
bool updatable_state(const Tape<T>& tape, std::uint32_t slot) {
  return tape.is_state(slot) || tape.kind(slot) == SlotKind::constant;
}

template <class T>
Tracked<T> record_op(const OpInfo<T>& op, std::shared_ptr<const OpParams> params, std::span<const Operand<T>> operands,
                     const std::source_location& where) {
  try {
    check_arity(op, operands.size());
    // 1. The tape: the one every tracked operand belongs to, alive (Note [Tape identity]).
    Tape<T>* tape = nullptr;
    for (const auto& o : operands) {
      if (o.kind != Operand<T>::Kind::tracked) continue;
      Tape<T>* mine = o.tracked->tape();
      if (tape && mine != tape)
        fail(op.name, "operands belong to different tapes (mixed handles) all tracked operands must come from one "
                      "recording; hint: do not keep Tracked values from an earlier gradient() or record() call");
      tape = mine;
    }
    if (!tape) fail(op.name, "no operand is tracked expected at least one Tracked value; hint: use the plain-Array overload");

    // 2. Values of every operand; scalars become rank-0 arrays (not yet on the tape).
    InlineList<Array<T>> scalars(operands.size());
    InlineList<const Array<T>*> inputs(operands.size());
    for (const auto& o : operands) {
      switch (o.kind) {
        case Operand<T>::Kind::tracked: inputs.push_back(&tape->value(o.tracked->slot())); break;
        case Operand<T>::Kind::array: inputs.push_back(o.array); break;
        case Operand<T>::Kind::scalar: inputs.push_back(&scalars.push_back(Array<T>::scalar(o.scalar))); break;
      }
    }

    // Note [State inputs]: checked before the forward, which updates them.
    for (std::size_t i = 0; i < operands.size() && i < 32; ++i)
      if ((op.state_inputs >> i) & 1u)
        if (operands[i].kind != Operand<T>::Kind::tracked || !updatable_state(*tape, operands[i].tracked->slot()))
          fail(op.name, fmt::format("operand {} (shape {}) is not a tg::State leaf of the function's arguments expected "
                                    "state that the forward updates in place; hint: keep it in the model as a "
                                    "tg::State (tg::BatchNormState<A> for batch_norm) and pass the model to the entry point",
                                    i, to_string(inputs[i]->shape())));

    // 3. Validate and compute. Nothing on the tape has changed yet.
    std::vector<Array<T>> saved;
    Array<T> out = run_forward(op, params, std::span<const Array<T>* const>(inputs.data(), inputs.size()), saved);
    // Note [Captured values], after the op's own checks: a bad shape is the first thing to fix.
    if (tape->refuses_captures())
      for (std::size_t i = 0; i < operands.size(); ++i)
        if (operands[i].kind == Operand<T>::Kind::array) fail_captured(op.name, i, *operands[i].array);

    // 4. Commit: constants, then the instruction and its output slot.
    InlineList<std::uint32_t> args(operands.size());
    std::size_t next_scalar = 0;
    for (std::size_t i = 0; i < operands.size(); ++i) {
      const auto& o = operands[i];
      switch (o.kind) {
        case Operand<T>::Kind::tracked: args.push_back(o.tracked->slot()); break;
        case Operand<T>::Kind::array: args.push_back(tape->add_constant(*o.array)); break;
        case Operand<T>::Kind::scalar: args.push_back(tape->add_constant(std::move(scalars[next_scalar++]))); break;
      }
    }
    const auto slot = tape->append(op, std::move(params), args.span(), std::move(out), std::move(saved), where);
    return Tracked<T>(tape, slot);
  } catch (const Error& e) {
    throw e.with_site(where);
  }
}

template <class T>
double nominal_flops(const OpInfo<T>& op, const OpParams* params, std::span<const Shape* const> inputs, const Shape& output) {
  if (op.flops) return op.flops(params, inputs, output);
  double largest = double(output.size());
  for (const Shape* s : inputs) largest = std::max(largest, double(s->size()));
  return largest;
}

template <class T>
std::uint32_t replay_instruction(Tape<T>& tape, const OpInfo<T>& op, std::shared_ptr<const OpParams> params,
                                 std::span<const std::uint32_t> args, const Shape& expected, const Site& where,
                                 ReplayBudget& budget) {
  try {
    check_arity(op, args.size());
    std::vector<const Array<T>*> inputs;
    std::vector<const Shape*> shapes;
    for (auto a : args) {
      inputs.push_back(&tape.value(a));
      shapes.push_back(&tape.value(a).shape());
    }
    Plan plan = plan_of(op, params.get(), shapes);
    if (plan.resolved) params = std::move(plan.resolved);
    const Shape& shape = plan.output;
    if (!(shape == expected))
      fail(op.name, fmt::format("computes shape {} from its inputs but the tape says {} expected equal; hint: the tape "
                                "file is damaged, or the op changed since it was saved",
                                to_string(shape), to_string(expected)));
    if (budget.limit_flops) {
      const double flops = nominal_flops(op, params.get(), shapes, shape);
      if (!(flops <= budget.flops_left))
        fail(op.name, fmt::format("replaying it would take {:.3g} FLOPs, past what is left of the load's budget ({:.3g}) "
                                  "expected a tape within LoadOptions::max_flops; hint: raise max_flops (tapedump "
                                  "--max-flops) for a file you trust",
                                  flops, budget.flops_left));
      budget.flops_left -= flops;
    }
    if (!budget.run) {  // the structure only: no storage, nothing computed
      std::vector<Array<T>> saved(static_cast<std::size_t>(std::max(op.n_saved, 0)));
      return tape.append(op, std::move(params), args, Array<T>::borrowed(shape, nullptr), std::move(saved), where);
    }
    // Note [State inputs]: the file holds the state as it was saved, after the
    // recording's update; loading computes the values again and keeps it so.
    std::vector<std::pair<Array<T>*, Array<T>>> kept_state;
    for (std::size_t i = 0; i < args.size() && i < 32; ++i)
      if ((op.state_inputs >> i) & 1u) {
        if (tape.kind(args[i]) == SlotKind::computed)
          fail(op.name, fmt::format("operand {} is a computed value where the op keeps state expected an input or a "
                                    "constant; hint: the tape file is damaged",
                                    i));
        auto& value = const_cast<Array<T>&>(tape.value(args[i]));
        kept_state.emplace_back(&value, value);
      }
    std::vector<Array<T>> saved;
    Array<T> out = forward_planned(op, params.get(), std::span<const Array<T>* const>(inputs), shape, saved);
    for (auto& [slot, value] : kept_state) *slot = std::move(value);
    return tape.append(op, std::move(params), args, std::move(out), std::move(saved), where);
  } catch (const Error& e) {
    throw e.with_site(where);
  }
}

template std::uint32_t replay_instruction(Tape<float>&, const OpInfo<float>&, std::shared_ptr<const OpParams>,
                                          std::span<const std::uint32_t>, const Shape&, const Site&, ReplayBudget&);
template std::uint32_t replay_instruction(Tape<double>&, const OpInfo<double>&, std::shared_ptr<const OpParams>,
                                          std::span<const std::uint32_t>, const Shape&, const Site&, ReplayBudget&);
template double nominal_flops(const OpInfo<float>&, const OpParams*, std::span<const Shape* const>, const Shape&);
template double nominal_flops(const OpInfo<double>&, const OpParams*, std::span<const Shape* const>, const Shape&);
template Tracked<float> record_op(const OpInfo<float>&, std::shared_ptr<const OpParams>, std::span<const Operand<float>>,
                                  const std::source_location&);
template Tracked<double> record_op(const OpInfo<double>&, std::shared_ptr<const OpParams>, std::span<const Operand<double>>,
                                   const std::source_location&);
template Array<float> evaluate_op(const OpInfo<float>&, const OpParams*, std::span<const Array<float>* const>,
                                  const std::source_location&);
template Array<double> evaluate_op(const OpInfo<double>&, const OpParams*, std::span<const Array<double>* const>,
                                   const std::source_location&);

template <class T>
Tracked<T> constant(const Array<T>& a, std::source_location where) {
  Tape<T>* tape = detail::current_recording<T>();
  if (!tape)
    throw Error("constant", fmt::format("called outside a recording (shape {}) expected a call inside a function given "
                            "to tg::record, tg::gradient or tg::jit; hint: plain Arrays need no tg::constant outside one",
                            to_string(a.shape())))
        .with_site(where);
  return Tracked<T>(tape, tape->add_constant(a));
}
template Tracked<float> constant(const Array<float>&, std::source_location);
template Tracked<double> constant(const Array<double>&, std::source_location);

}  // namespace tg
