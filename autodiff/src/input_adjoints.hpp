// The input adjoints of one pullback, shared by the interpreter and the compiled
// program: zeroed on first use, or handed over unzeroed to an op that assigns
// them (Note [Assigned adjoints] in registry.hpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "tapegrad/autodiff/registry.hpp"
#include "tapegrad/kernels/parallel.hpp"

namespace tg::detail {

// Adjoints of one reverse pass: which slots a pullback has written (live), and
// each slot's buffer, kept across passes.
template <class T>
struct AdjointSlots {
  std::vector<Array<T>>& adjoints;
  std::vector<std::uint8_t>& live;
  const std::vector<Array<T>>& values;

  // The slot's adjoint with the value's shape, its bytes as they are.
  Array<T>& claim(std::uint32_t slot) {
    Array<T>& adj = adjoints[slot];
    if (!(adj.shape() == values[slot].shape())) adj = Array<T>::uninitialized(values[slot].shape());
    live[slot] = 1;
    return adj;
  }
  // The slot's adjoint, zeroed the first time it is needed in this pass.
  Array<T>& fresh(std::uint32_t slot) {
    if (live[slot]) return adjoints[slot];
    Array<T>& adj = claim(slot);
    kernels::parallel_fill(adj.data(), adj.size(), T(0));
    return adj;
  }
  // Fills `out` with each argument's adjoint (null where no gradient is needed)
  // and returns PullbackCall::assign for them.
  std::uint32_t inputs(const OpInfo<T>& op, std::span<const std::uint32_t> args,
                       const std::vector<std::uint8_t>& needs_grad, std::vector<Array<T>*>& out) {
    std::uint32_t assign = 0;
    const bool can_assign = (op.flags & kPullbackCanAssign) != 0;
    for (std::size_t i = 0; i < args.size(); ++i) {
      const std::uint32_t a = args[i];
      if (!needs_grad[a]) {
        out.push_back(nullptr);
      } else if (can_assign && i < 32 && !live[a] && std::count(args.begin(), args.end(), a) == 1) {
        out.push_back(&claim(a));
        assign |= 1u << i;
      } else {
        out.push_back(&fresh(a));
      }
    }
    return assign;
  }
};

}  // namespace tg::detail
