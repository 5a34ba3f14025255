// The compiler's one internal program representation, and its passes.
// Private to autodiff/src/compile.
//
// A program is built from a recorded tape as one step per instruction; each
// pass (one file each, pass_*.cpp) reads and rewrites the steps; the memory
// plan then lays the remaining buffers out in one arena; runtime.cpp runs the
// result. The pass list is in program.cpp: adding a pass is its file, and its
// declaration and row there (and its source in autodiff/CMakeLists.txt).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "tapegrad/autodiff/compile.hpp"

namespace tg::compile_impl {

template <class T>
struct Ir {
  using Step = typename CompiledProgram<T>::Step;
  const Tape<T>& tape;  // shapes, slot kinds, the recorded instructions
  const CompileOptions& options;
  std::vector<Step> steps;
  std::vector<std::uint8_t> needs_grad;  // per slot
  std::uint32_t output;
  std::span<const Guard> guards;  // checked after every forward pass: their values stay values
  // Note [Views share buffers]: the slot whose buffer a slot's value / adjoint uses.
  std::vector<std::uint32_t> value_root, adjoint_root;

  std::size_t slots() const { return tape.num_slots(); }
  const Shape& shape(std::uint32_t slot) const { return tape.value(slot).shape(); }
  SlotKind kind(std::uint32_t slot) const { return tape.kind(slot); }
};

// Per slot: how many steps and guards read it, and the step that writes it (-1: none).
struct SlotUses {
  std::vector<int> step_readers, guard_readers, producer;
  int readers(std::uint32_t slot) const { return step_readers[slot] + guard_readers[slot]; }
};
template <class T>
SlotUses slot_uses(const Ir<T>& ir) {
  const std::size_t n = ir.slots();
  SlotUses u{std::vector<int>(n, 0), std::vector<int>(n, 0), std::vector<int>(n, -1)};
  for (const Guard& g : ir.guards) {
    u.guard_readers[g.lhs]++;
    if (g.rhs != Tape<T>::kNoSlot) u.guard_readers[g.rhs]++;
  }
  for (std::size_t s = 0; s < ir.steps.size(); ++s) {
    u.producer[ir.steps[s].out] = static_cast<int>(s);
    for (auto a : ir.steps[s].args) u.step_readers[a]++;
  }
  return u;
}

// The step writing `slot` when it is a plain step that feeds that one reader
// alone (nothing else, no guard, not the output) and is still in the program:
// what a fusion can merge into its reader. -1 otherwise.
template <class T>
int sole_plain_producer(const Ir<T>& ir, const SlotUses& uses, const std::vector<std::uint8_t>& removed, std::uint32_t slot) {
  const int p = uses.producer[slot];
  if (p < 0 || removed[static_cast<std::size_t>(p)] || uses.readers(slot) != 1 || slot == ir.output) return -1;
  return ir.steps[static_cast<std::size_t>(p)].plain() ? p : -1;
}

// Drops the steps marked removed, keeping the others in order.
template <class Step>
void compact(std::vector<Step>& steps, const std::vector<std::uint8_t>& removed) {
  std::size_t kept = 0;
  for (std::size_t s = 0; s < steps.size(); ++s) {
    if (removed[s]) continue;
    if (kept != s) steps[kept] = std::move(steps[s]);  // never a self-move: it would empty the vectors
    ++kept;
  }
  steps.resize(kept);
}

// Elementwise chains: elements per block, and members per chain at most
// (pass_elementwise_fusion.cpp says why).
inline constexpr std::int64_t kFusedBlock = 4096;
inline constexpr std::size_t kMaxChainMembers = 64;

// ---- the memory plan (Note [Planned arena], pass_memory_plan.cpp) ----------
struct MemoryPlan {
  static constexpr std::int64_t kNotPlanned = -1;
  std::int64_t arena_bytes = 0, unplanned_bytes = 0;
  std::vector<std::int64_t> value_offset, adjoint_offset;  // per slot, bytes, or kNotPlanned
  struct View {
    std::uint32_t slot;
    bool adjoint;
  };
  std::vector<View> views;  // every buffer in the arena, views of another's bytes included
};
template <class T>
MemoryPlan plan_memory(const Ir<T>& ir);

// Whether op's pullback reads its k-th input's value: an op says so by its fusion hook.
template <class T>
bool op_pullback_reads_input(const OpInfo<T>& op, const OpParams* params, std::size_t k) {
  const auto* f = op.fusion.get();
  return !f || !f->pullback_reads_input || f->pullback_reads_input(params, k);
}

// Note [What a chain's pullback reads]: a fused chain's pullback recomputes an
// inner value only where a member's pullback reads it, as its output or as an
// input, and recomputing a member reads that member's inputs. So an external
// input is read back only through such a path: add + relu reads neither addend
// (relu's derivative follows from its output, add's from nothing), and the
// arena may reuse their bytes after the forward pass. Rejected: recomputing
// every inner value, which kept every input of every chain alive for the
// reverse pass (30 MiB of a ResNet step's 194).
struct ChainReads {
  std::vector<std::uint8_t> member;    // per member: its value is read (the last one's is the step's output)
  std::vector<std::uint8_t> external;  // per external input (the step's args)
};
template <class Member>
ChainReads chain_reads(const std::vector<Member>& members, std::size_t externals) {
  ChainReads r{std::vector<std::uint8_t>(members.size(), 0), std::vector<std::uint8_t>(externals, 0)};
  auto mark = [&](std::int32_t code) {
    if (code < 0) r.member[static_cast<std::size_t>(-1 - code)] = 1;
    else r.external[static_cast<std::size_t>(code)] = 1;
  };
  for (std::size_t m = 0; m < members.size(); ++m) {
    const Member& mem = members[m];
    if (!mem.needs_grad) continue;  // its pullback does not run
    if (!(mem.op->flags & kPullbackIgnoresOutput)) r.member[m] = 1;
    for (int i = 0; i < mem.n_in; ++i)
      if (op_pullback_reads_input(*mem.op, mem.params.get(), static_cast<std::size_t>(i))) mark(mem.in[static_cast<std::size_t>(i)]);
  }
  for (std::size_t m = members.size() - 1; m-- > 0;)  // an inner value read is recomputed from its inputs
    if (r.member[m])
      for (int i = 0; i < members[m].n_in; ++i) mark(members[m].in[static_cast<std::size_t>(i)]);
  return r;
}

// Whether step st's pullback reads its k-th input's value.
template <class Step>
bool pullback_reads_input(const Step& st, std::size_t k) {
  if (const auto* c = st.chain()) return chain_reads(c->members, st.args.size()).external[k] != 0;
  return op_pullback_reads_input(*st.op, st.params.get(), k);
}

}  // namespace tg::compile_impl

// Explicit instantiations of a pass for float and double, at the end of its file.
#define TG_COMPILE_PASS_INSTANCES(pass)                      \
  template void pass(tg::compile_impl::Ir<float>& ir);       \
  template void pass(tg::compile_impl::Ir<double>& ir);
