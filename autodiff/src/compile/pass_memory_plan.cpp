// Note [Planned arena] (arena_plan.hpp): the live interval of every computed
// value and every computed slot's adjoint over one timeline, then their
// offsets in one arena (place_buffers). Without CompileOptions::plan_memory
// each buffer gets bytes of its own.
#include <algorithm>

#include "arena_plan.hpp"
#include "ir.hpp"

namespace tg::compile_impl {
namespace {

// Forward step s at time s, the seed at S, the pullback of step s at
// S + 1 + (S - 1 - s), the user reading results at 2S + 1.
struct Timeline {
  int steps;
  int forward(std::size_t s) const { return static_cast<int>(s); }
  int seed() const { return steps; }
  int pullback(std::size_t s) const { return steps + 1 + (steps - 1 - static_cast<int>(s)); }
  int end() const { return 2 * steps + 1; }
};

// Buffers by first use; a view uses its root's buffer (Note [Views share buffers]).
template <class T>
class Intervals {
 public:
  explicit Intervals(const Ir<T>& ir) : ir_(ir), value_buffer_(ir.slots(), -1), adjoint_buffer_(ir.slots(), -1) {}

  void touch(std::uint32_t slot, bool adjoint, int time) {
    if (ir_.kind(slot) != SlotKind::computed) return;  // inputs, constants and their adjoints stay outside the arena
    slot = (adjoint ? ir_.adjoint_root : ir_.value_root)[slot];
    int& b = (adjoint ? adjoint_buffer_ : value_buffer_)[slot];
    if (b < 0) {
      b = static_cast<int>(buffers.size());
      buffers.push_back({static_cast<std::int64_t>(sizeof(T)) * ir_.tape.value(slot).size(), time, time});
      owner.push_back({slot, adjoint});
    }
    buffers[b].first = std::min(buffers[b].first, time);
    buffers[b].last = std::max(buffers[b].last, time);
  }

  std::vector<Buffer> buffers;
  std::vector<MemoryPlan::View> owner;  // per buffer

 private:
  const Ir<T>& ir_;
  std::vector<int> value_buffer_, adjoint_buffer_;
};

// Whether step st's pullback reads its output value. An op that ignores its
// output reads it only for a fused activation's pullback it still runs; a
// chain, when its last member's pullback reads it (Note [What a chain's pullback reads]).
template <class Step>
bool pullback_reads_output(const Step& st) {
  if (const auto* c = st.chain()) return c->members.back().read_back;
  if (!(st.op->flags & kPullbackIgnoresOutput) || st.view()) return true;
  const auto* e = st.epilogue();
  return e && !e->pullback_at_max;
}

}  // namespace

template <class T>
MemoryPlan plan_memory(const Ir<T>& ir) {
  const Timeline t{static_cast<int>(ir.steps.size())};
  Intervals<T> iv(ir);
  for (std::size_t s = 0; s < ir.steps.size(); ++s) {
    const auto& st = ir.steps[s];
    iv.touch(st.out, false, t.forward(s));
    for (auto a : st.args) iv.touch(a, false, t.forward(s));
    if (!st.pullback) continue;
    const int back = t.pullback(s);  // reads inputs, output and output adjoint; writes input adjoints
    if (pullback_reads_output(st)) iv.touch(st.out, false, back);
    iv.touch(st.out, true, back);
    for (std::size_t k = 0; k < st.args.size(); ++k) {
      const auto a = st.args[k];
      if (pullback_reads_input(st, k)) iv.touch(a, false, back);
      if (ir.needs_grad[a]) iv.touch(a, true, back);
    }
  }
  iv.touch(ir.output, false, t.end());
  for (const Guard& g : ir.guards) {  // checked after the forward pass
    iv.touch(g.lhs, false, t.seed());
    if (g.rhs != Tape<T>::kNoSlot) iv.touch(g.rhs, false, t.seed());
  }
  iv.touch(ir.output, true, t.seed());

  MemoryPlan plan;
  std::vector<std::int64_t> offsets, own;
  plan.arena_bytes = place_buffers(iv.buffers, ir.options.plan_memory, offsets);
  plan.unplanned_bytes = place_buffers(iv.buffers, false, own);
  plan.value_offset.assign(ir.slots(), MemoryPlan::kNotPlanned);
  plan.adjoint_offset.assign(ir.slots(), MemoryPlan::kNotPlanned);
  for (std::size_t b = 0; b < iv.buffers.size(); ++b) {
    const auto [slot, adjoint] = iv.owner[b];
    (adjoint ? plan.adjoint_offset : plan.value_offset)[slot] = offsets[b];
    plan.views.push_back(iv.owner[b]);
  }
  for (std::uint32_t s = 0; s < ir.slots(); ++s)  // views: their root's bytes under their own shape
    for (const bool adjoint : {false, true}) {
      const std::uint32_t root = (adjoint ? ir.adjoint_root : ir.value_root)[s];
      std::vector<std::int64_t>& offset = adjoint ? plan.adjoint_offset : plan.value_offset;
      if (root == s || offset[root] == MemoryPlan::kNotPlanned) continue;
      offset[s] = offset[root];
      plan.views.push_back({s, adjoint});
    }
  return plan;
}

template MemoryPlan plan_memory(const Ir<float>& ir);
template MemoryPlan plan_memory(const Ir<double>& ir);

}  // namespace tg::compile_impl
