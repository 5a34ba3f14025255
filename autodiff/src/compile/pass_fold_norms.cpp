// Note [Folded norms] (registry.hpp, compile.hpp): an op with Fusion::fold_into
// (evaluation-mode batch_norm) whose first input comes from a plain step that
// feeds nothing else is computed by that step: the producer's params become
// the ones fold_into gives, the op's other inputs join the producer's, and
// the producer writes the op's output slot. One step and one buffer less, and
// no pass over the activation for the normalisation.
#include "ir.hpp"

namespace tg::compile_impl {

template <class T>
void fold_norms(Ir<T>& ir) {
  using Step = typename Ir<T>::Step;
  SlotUses uses = slot_uses(ir);
  std::vector<std::uint8_t> removed(ir.steps.size(), 0);
  for (std::size_t s = 0; s < ir.steps.size(); ++s) {
    Step& norm = ir.steps[s];
    const Fusion<T>* f = norm.op->fusion.get();
    if (!norm.plain() || !f || !f->fold_into || norm.args.empty()) continue;
    const int p = sole_plain_producer(ir, uses, removed, norm.args[0]);
    if (p < 0) continue;
    Step& prod = ir.steps[static_cast<std::size_t>(p)];
    auto params = f->fold_into(*prod.op, prod.params.get(), prod.args.size(), norm.params.get());
    if (!params) continue;
    prod.params = std::move(params);
    prod.args.insert(prod.args.end(), norm.args.begin() + 1, norm.args.end());
    prod.out = norm.out;
    prod.pullback = prod.pullback || norm.pullback;
    uses.producer[norm.out] = p;
    removed[s] = 1;
  }
  compact(ir.steps, removed);
}

TG_COMPILE_PASS_INSTANCES(fold_norms)

}  // namespace tg::compile_impl
