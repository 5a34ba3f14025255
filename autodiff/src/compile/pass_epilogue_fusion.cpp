// Note [Epilogue fusion] (compile.hpp): an activation whose input comes from an
// op that never reads its own output in its pullback, and feeds nothing else,
// runs in place on that op's output buffer.
#include "ir.hpp"

namespace tg::compile_impl {

template <class T>
void fuse_epilogues(Ir<T>& ir) {
  using Step = typename Ir<T>::Step;
  SlotUses uses = slot_uses(ir);
  std::vector<std::uint8_t> removed(ir.steps.size(), 0);
  for (std::size_t s = 0; s < ir.steps.size(); ++s) {
    Step& act = ir.steps[s];
    const Fusion<T>* f = act.op->fusion.get();
    if (!act.plain() || !f || !f->epilogue_forward || act.args.size() != 1) continue;
    const int p = sole_plain_producer(ir, uses, removed, act.args[0]);
    if (p < 0) continue;
    Step& prod = ir.steps[static_cast<std::size_t>(p)];
    if (!(prod.op->flags & kPullbackIgnoresOutput)) continue;
    prod.kind = typename Step::Epilogue{{act.op, act.params}};
    prod.out = act.out;  // the producer now writes the activation's slot
    uses.producer[act.out] = p;
    removed[s] = 1;
  }
  compact(ir.steps, removed);
}

TG_COMPILE_PASS_INSTANCES(fuse_epilogues)

}  // namespace tg::compile_impl
