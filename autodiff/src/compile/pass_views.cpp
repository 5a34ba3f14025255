// Note [Views share buffers] (compile.hpp): root[slot] is the slot whose buffer
// `slot` uses (itself, unless it is a view). A view's value takes its input's
// root; when the view is its input's only consumer, the input's adjoint takes
// the view's adjoint root (resolved at the end: a chain of views points forward).
#include "ir.hpp"

namespace tg::compile_impl {

template <class T>
void share_views(Ir<T>& ir) {
  using Step = typename Ir<T>::Step;
  const SlotUses uses = slot_uses(ir);  // adjoints: only steps read them, guards read values
  for (Step& st : ir.steps) {
    if (!(st.op->flags & kView) || !st.plain()) continue;
    const std::uint32_t x = st.args[0];
    if (ir.kind(x) != SlotKind::computed) continue;  // inputs and constants live outside the arena
    typename Step::View view;
    ir.value_root[st.out] = ir.value_root[x];
    if (st.pullback && ir.needs_grad[x] && uses.step_readers[x] == 1 && x != ir.output) {
      view.shares_adjoint = true;
      ir.adjoint_root[x] = st.out;
    }
    st.kind = view;
  }
  auto& root = ir.adjoint_root;
  for (std::size_t s = root.size(); s-- > 0;) root[s] = root[root[s]];  // roots come later
}

TG_COMPILE_PASS_INSTANCES(share_views)

}  // namespace tg::compile_impl
