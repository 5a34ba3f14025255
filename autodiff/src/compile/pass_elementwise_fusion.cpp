// Note [Elementwise fusion] (compile.hpp): finding the chains.
//
// kFusedBlock (ir.hpp), elements per block: each member's kernel call per
// block costs about a thousand instructions of its own (its Arrays, the row's
// dispatch); at 1,024 elements that was a third of an 11-op chain's step.
// 4,096 floats are 16 KiB per member, so a chain's inner values and adjoints stay in L2.
//
// kMaxChainMembers (ir.hpp): a chain's step takes members x kFusedBlock
// elements of scratch per thread for its inner values (twice in the pullback)
// and looks inner values up among its members: a 120,000-op chain of
// 4-element arrays asked for 8 GB. A longer chain is cut into chains of this
// many, each of which writes its result to memory.
#include <algorithm>

#include "ir.hpp"

namespace tg::compile_impl {
namespace {

// A step that may join a chain: an elementwise op without saved buffers,
// whose every input has its output's shape or one element.
template <class T>
bool fusable(const typename Ir<T>::Step& st, const Ir<T>& ir) {
  if (!(st.op->flags & kElementwise) || !st.saved.empty() || !st.plain() || st.args.empty() || st.args.size() > 2)
    return false;
  const Shape& out = ir.shape(st.out);
  for (auto a : st.args)
    if (!(ir.shape(a) == out) && ir.tape.value(a).size() != 1) return false;
  return true;
}

// The chains, each as its members' step indices in order: a step joins the
// chain of every input whose producer is fusable and feeds it alone, so chains
// are trees whose root (the last member) is the only value leaving them.
// Union-find over step indices (root_of: -1 for steps in no chain), bucketed by root in one pass (O(n)).
template <class T>
std::vector<std::vector<std::size_t>> find_chains(const Ir<T>& ir) {
  const auto& steps = ir.steps;
  const SlotUses uses = slot_uses(ir);
  auto feeds_one = [&](std::uint32_t a) { return uses.readers(a) == 1 && a != ir.output; };
  std::vector<int> root_of(steps.size(), -1);
  std::vector<std::size_t> members_of(steps.size(), 1);  // at a chain's root
  auto find = [&](int s) {
    while (root_of[s] != s) s = root_of[s] = root_of[root_of[s]];
    return s;
  };
  std::vector<std::uint8_t> ok(steps.size());
  for (std::size_t s = 0; s < steps.size(); ++s) ok[s] = fusable<T>(steps[s], ir) ? 1 : 0;
  for (std::size_t s = 0; s < steps.size(); ++s) {
    if (!ok[s]) continue;
    for (auto a : steps[s].args) {
      const int p = uses.producer[a];
      if (p < 0 || !ok[p] || !feeds_one(a) || !(ir.shape(a) == ir.shape(steps[s].out))) continue;
      const int rp = root_of[p] < 0 ? p : find(p), rs = root_of[s] < 0 ? static_cast<int>(s) : find(static_cast<int>(s));
      if (rp == rs || members_of[rp] + members_of[rs] > kMaxChainMembers) continue;  // p's chain ends at p: its output is written
      root_of[p] = root_of[p] < 0 ? p : root_of[p];
      root_of[s] = root_of[s] < 0 ? static_cast<int>(s) : root_of[s];
      root_of[rp] = rs;
      members_of[rs] += members_of[rp];
    }
  }
  std::vector<std::vector<std::size_t>> chains(steps.size());
  for (std::size_t s = 0; s < steps.size(); ++s)
    if (root_of[s] >= 0) chains[static_cast<std::size_t>(find(static_cast<int>(s)))].push_back(s);
  return chains;
}

// One step for a chain's members, at the position (output, site, pullback flag) of its last.
template <class T>
typename Ir<T>::Step chain_step(const std::vector<typename Ir<T>::Step>& steps, const std::vector<std::size_t>& members) {
  using Step = typename Ir<T>::Step;
  Step fused = steps[members.back()];
  fused.args.clear();
  fused.saved.clear();
  typename Step::Chain chain;
  std::vector<std::uint32_t> member_out;
  for (std::size_t m : members) {
    const Step& st = steps[m];
    typename CompiledProgram<T>::Member member{st.op, st.params, {0, 0}, static_cast<int>(st.args.size()), st.pullback, st.out};
    for (std::size_t i = 0; i < st.args.size(); ++i) {
      const auto inner = std::find(member_out.begin(), member_out.end(), st.args[i]);
      if (inner != member_out.end()) {
        member.in[i] = -1 - static_cast<std::int32_t>(inner - member_out.begin());
        continue;
      }
      auto ext = std::find(fused.args.begin(), fused.args.end(), st.args[i]);
      if (ext == fused.args.end()) ext = fused.args.insert(fused.args.end(), st.args[i]);
      member.in[i] = static_cast<std::int32_t>(ext - fused.args.begin());
    }
    member_out.push_back(st.out);
    chain.members.push_back(std::move(member));
  }
  const ChainReads reads = chain_reads(chain.members, fused.args.size());
  for (std::size_t m = 0; m < chain.members.size(); ++m) chain.members[m].read_back = reads.member[m] != 0;
  fused.kind = std::move(chain);
  return fused;
}

}  // namespace

// Replaces every chain of two or more steps by one step at the position of its last member.
template <class T>
void fuse_elementwise(Ir<T>& ir) {
  std::vector<std::uint8_t> removed(ir.steps.size(), 0);
  for (const std::vector<std::size_t>& members : find_chains(ir)) {
    if (members.size() < 2) continue;
    auto fused = chain_step<T>(ir.steps, members);
    for (std::size_t m = 0; m + 1 < members.size(); ++m) removed[members[m]] = 1;
    ir.steps[members.back()] = std::move(fused);
  }
  compact(ir.steps, removed);
}

TG_COMPILE_PASS_INSTANCES(fuse_elementwise)

}  // namespace tg::compile_impl
