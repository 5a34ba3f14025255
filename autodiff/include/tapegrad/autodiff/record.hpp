// Recording one instruction, and evaluating an op eagerly on plain Arrays.
// Both run the same registry row, so an op behaves identically on Tracked
// values and on plain Arrays.
//
// Note [Failed ops leave the tape unchanged]: record_op validates (shape rule)
// and computes the output (forward) BEFORE it touches the tape; only when both
// succeed are the constants, the output slot and the instruction appended.
#pragma once

#include <initializer_list>
#include <memory>
#include <span>

#include "tapegrad/autodiff/tracked.hpp"

namespace tg {

template <class T>
Tracked<T> record_op(const OpInfo<T>& op, std::shared_ptr<const OpParams> params, std::span<const Operand<T>> operands,
                     const std::source_location& where);

template <class T>
Tracked<T> record_op(const OpInfo<T>& op, std::shared_ptr<const OpParams> params, std::initializer_list<Operand<T>> operands,
                     const std::source_location& where) {
  return record_op(op, std::move(params), std::span<const Operand<T>>(operands.begin(), operands.size()), where);
}

template <class T>
Array<T> evaluate_op(const OpInfo<T>& op, const OpParams* params, std::span<const Array<T>* const> inputs,
                     const std::source_location& where);

template <class T>
Array<T> evaluate_op(const OpInfo<T>& op, const OpParams* params, std::initializer_list<const Array<T>*> inputs,
                     const std::source_location& where) {
  return evaluate_op(op, params, std::span<const Array<T>* const>(inputs.begin(), inputs.size()), where);
}

// Note [Captured values]: an Array operand of a recorded op that is not one of
// the function's arguments is copied into the tape. A tape that is replayed
// (tg::record, tg::jit) would then keep its recording-time value after the
// user changed it (weights after an optimizer step, the last batch's labels),
// so recording refuses it with an error naming the site. tg::constant(a)
// copies it on purpose: the current recording gets a constant slot. One-shot
// calls (tg::gradient, value_and_gradient, jacobian) replay nothing and copy.
// Rejected: replays that re-read the captured Array, which cannot tell a
// capture from a temporary gone since recording.
template <class T>
Tracked<T> constant(const Array<T>& a, std::source_location where = std::source_location::current());
extern template Tracked<float> constant(const Array<float>&, std::source_location);
extern template Tracked<double> constant(const Array<double>&, std::source_location);

// How a loaded tape's instructions are replayed (tape_file.hpp's LoadOptions).
struct ReplayBudget {
  bool run = true;  // false: shapes only; outputs get no storage and no forward runs
  // Whether the FLOPs below bound the instructions, run or not (a dry pass over
  // the shapes counts them before any input is made: deserialize_tape).
  bool limit_flops = true;
  // FLOPs the forwards may still take (each op's nominal count, OpInfo::flops, else
  // one per element of its largest operand); an instruction past it is an error.
  double flops_left = 0;
};

// Appends an instruction whose inputs are slots already on `tape` (a loaded tape
// file): the shape rule must give `expected` (checked before anything is
// allocated), then, within `budget`, the forward runs and the instruction is committed.
template <class T>
std::uint32_t replay_instruction(Tape<T>& tape, const OpInfo<T>& op, std::shared_ptr<const OpParams> params,
                                 std::span<const std::uint32_t> args, const Shape& expected, const Site& where,
                                 ReplayBudget& budget);
// An op's nominal FLOPs: its flops hook, else one per element of its largest operand.
template <class T>
double nominal_flops(const OpInfo<T>& op, const OpParams* params, std::span<const Shape* const> inputs, const Shape& output);

extern template std::uint32_t replay_instruction(Tape<float>&, const OpInfo<float>&, std::shared_ptr<const OpParams>,
                                                 std::span<const std::uint32_t>, const Shape&, const Site&, ReplayBudget&);
extern template std::uint32_t replay_instruction(Tape<double>&, const OpInfo<double>&, std::shared_ptr<const OpParams>,
                                                 std::span<const std::uint32_t>, const Shape&, const Site&, ReplayBudget&);
extern template double nominal_flops(const OpInfo<float>&, const OpParams*, std::span<const Shape* const>, const Shape&);
extern template double nominal_flops(const OpInfo<double>&, const OpParams*, std::span<const Shape* const>, const Shape&);
extern template Tracked<float> record_op(const OpInfo<float>&, std::shared_ptr<const OpParams>, std::span<const Operand<float>>,
                                         const std::source_location&);
extern template Tracked<double> record_op(const OpInfo<double>&, std::shared_ptr<const OpParams>,
                                          std::span<const Operand<double>>, const std::source_location&);
extern template Array<float> evaluate_op(const OpInfo<float>&, const OpParams*, std::span<const Array<float>* const>,
                                         const std::source_location&);
extern template Array<double> evaluate_op(const OpInfo<double>&, const OpParams*, std::span<const Array<double>* const>,
                                          const std::source_location&);

}  // namespace tg
