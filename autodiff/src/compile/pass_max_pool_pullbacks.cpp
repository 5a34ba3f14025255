// Note [Activation pullbacks at the max-pool] (compile.hpp): after epilogue
// fusion, a producer whose fused activation has a mask pullback and whose
// output feeds only a max-pool hands that pullback to the pool's step.
#include "ir.hpp"

namespace tg::compile_impl {

template <class T>
void move_pullbacks_to_max_pools(Ir<T>& ir) {
  using Step = typename Ir<T>::Step;
  const SlotUses uses = slot_uses(ir);
  for (Step& pool : ir.steps) {
    const Fusion<T>* f = pool.op->fusion.get();
    if (!f || !f->pools_by_max || !pool.plain() || !pool.pullback || pool.args.size() != 1) continue;
    const std::uint32_t x = pool.args[0];
    const int p = uses.producer[x];
    if (p < 0 || uses.readers(x) != 1 || x == ir.output) continue;
    Step& prod = ir.steps[static_cast<std::size_t>(p)];
    auto* e = std::get_if<typename Step::Epilogue>(&prod.kind);
    if (!e || !e->activation.op->fusion->mask_pullback || !prod.pullback) continue;
    e->pullback_at_max = true;
    pool.kind = typename Step::AtMax{e->activation};
  }
}

TG_COMPILE_PASS_INSTANCES(move_pullbacks_to_max_pools)

}  // namespace tg::compile_impl
