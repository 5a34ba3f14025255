// Debugging a recorded tape (issue 6's library side; the tapedump tool wraps these):
//
//   auto tape = tg::record(loss, x, w);
//   fmt::print("{}", tg::find_nonfinite(tape.tape()).summary());   // first NaN/Inf, forward or adjoint
//   fmt::print("{}", tg::check_instructions(tape.tape()).summary()); // every pullback against finite differences
//
// find_nonfinite replays the forward pass on the tape's current inputs and
// reports the first instruction whose output holds NaN or Inf, with the min,
// max and mean of its inputs and its recording site; when the forward pass is
// finite it runs the reverse pass (seed: ones) and reports the first adjoint,
// in the order the pullbacks produce them, that is not.
//
// check_instructions checks every instruction's pullback against central
// finite differences of that same instruction's forward, on the instruction's
// recorded input values (a per-node gradient check): J^T v from the pullback
// against <v, f(x + h e_j) - f(x - h e_j)> / 2h for a random v, on up to
// `elements_per_input` elements of each differentiable input. An element at a
// kink (relu at 0, a tie in a max window: the one-sided slopes differ) is
// skipped, and so is an input the forward refuses to perturb (integer labels).
// It runs in double
// (a float tape's ops are checked through their double rows), so a wrong
// pullback stands out from rounding. It names the first instruction that
// disagrees and by how much.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tapegrad/autodiff/tape.hpp"

namespace tg {

struct ValueStats {
  double min = 0, max = 0, mean = 0;
  std::int64_t nonfinite = 0, size = 0;
};
template <class T>
ValueStats value_stats(const Array<T>& a);

struct NonfiniteReport {
  bool found = false;
  bool in_adjoint = false;     // false: a forward value
  std::size_t instruction = 0;  // the instruction whose output (or output adjoint) is not finite
  std::string equation, site;
  ValueStats value;                // of that output or adjoint
  std::vector<ValueStats> inputs;  // of the instruction's inputs (forward values)
  std::string summary() const;
};

template <class T>
NonfiniteReport find_nonfinite(Tape<T>& tape);

struct InstructionCheck {
  std::size_t instruction = 0;
  std::string equation, site;
  double max_abs_error = 0, max_rel_error = 0;
  std::size_t worst_input = 0;
  std::int64_t worst_element = -1;
  bool passed = true;
  bool checked = false;  // false: nothing differentiable to check (constants, labels)
};

struct InstructionCheckOptions {
  double step = 1e-6;  // h = step * max(1, |x|)
  double atol = 1e-6, rtol = 1e-5;
  std::int64_t elements_per_input = 16;  // perturbed elements per input (spread over it)
  std::uint64_t seed = 7;
};

struct InstructionCheckReport {
  std::vector<InstructionCheck> instructions;
  // The first instruction that fails, or nullptr.
  const InstructionCheck* first_failure() const;
  std::string summary() const;
};

template <class T>
InstructionCheckReport check_instructions(const Tape<T>& tape, const InstructionCheckOptions& options = {});

extern template ValueStats value_stats(const Array<float>&);
extern template ValueStats value_stats(const Array<double>&);
extern template NonfiniteReport find_nonfinite(Tape<float>&);
extern template NonfiniteReport find_nonfinite(Tape<double>&);
extern template InstructionCheckReport check_instructions(const Tape<float>&, const InstructionCheckOptions&);
extern template InstructionCheckReport check_instructions(const Tape<double>&, const InstructionCheckOptions&);

}  // namespace tg
