// Note [Tuned algorithms] (registry.hpp): an op with a tune hook times its
// kernels for the passes its step runs; the step keeps the tuned params, the
// tape its own.
#include <algorithm>

#include "ir.hpp"

namespace tg::compile_impl {

template <class T>
void tune_algorithms(Ir<T>& ir) {
  for (auto& st : ir.steps) {
    if (!st.op->tune) continue;
    std::uint32_t grads = 0;  // bit i: input i's gradient is computed
    for (std::size_t i = 0; st.pullback && i < std::min<std::size_t>(st.args.size(), 32); ++i)
      if (ir.needs_grad[st.args[i]]) grads |= 1u << i;
    try {
      if (auto tuned = st.op->tune(st.params.get(), grads)) st.params = std::move(tuned);
    } catch (const Error& e) {
      throw e.with_site(st.where);
    }
  }
}

TG_COMPILE_PASS_INSTANCES(tune_algorithms)

}  // namespace tg::compile_impl
