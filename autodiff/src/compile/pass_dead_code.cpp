// Note [Dead instructions] (compile.hpp): a step whose output reaches neither
// the tape's output nor a guard (Note [Guards]) is not run, forward or backward,
// unless it updates state (Note [State inputs]): that update is its effect.
#include "ir.hpp"

namespace tg::compile_impl {

template <class T>
void eliminate_dead_code(Ir<T>& ir) {
  std::vector<std::uint8_t> reach(ir.slots(), 0);
  reach[ir.output] = 1;
  for (const Guard& g : ir.guards) {
    reach[g.lhs] = 1;
    if (g.rhs != Tape<T>::kNoSlot) reach[g.rhs] = 1;
  }
  std::vector<std::uint8_t> removed(ir.steps.size(), 0);
  for (std::size_t s = ir.steps.size(); s-- > 0;) {
    const auto& st = ir.steps[s];
    if (!reach[st.out] && st.op->state_inputs == 0) {
      removed[s] = 1;
      continue;
    }
    for (auto a : st.args) reach[a] = 1;
  }
  compact(ir.steps, removed);
}

TG_COMPILE_PASS_INSTANCES(eliminate_dead_code)

}  // namespace tg::compile_impl
