// Note [Elementwise fusion] (compile.hpp): finding the chains. Private to the compiler.
#pragma once

#include <algorithm>
#include <vector>

#include "tapegrad/autodiff/compile.hpp"

namespace tg::compile_impl {

// Elements per block. Each member's kernel call per block costs about a
// thousand instructions of its own (its Arrays, the row's dispatch); at 1,024
// elements that was a third of an 11-op chain's step. 4,096 floats are 16 KiB
// per member, so a chain's inner values and adjoints stay in L2.
inline constexpr std::int64_t kFusedBlock = 4096;

// Members per chain, at most. A chain's step takes members x kFusedBlock
// elements of scratch per thread for its inner values (twice in the pullback)
// and looks inner values up among its members: a 120,000-op chain of
// 4-element arrays asked for 8 GB. A longer chain is cut into chains of this
// many, each of which writes its result to memory.
inline constexpr std::size_t kMaxChainMembers = 64;

// A step that may join a chain: an elementwise op without saved buffers or
// epilogue, whose every input has its output's shape or one element.
template <class T>
bool fusable(const typename CompiledProgram<T>::Step& st, const Tape<T>& tape) {
  if (!(st.op->flags & kElementwise) || !st.saved.empty() || st.epilogue || st.args.empty() || st.args.size() > 2)
    return false;
  const Shape& out = tape.value(st.out).shape();
  for (auto a : st.args)
    if (!(tape.value(a).shape() == out) && tape.value(a).size() != 1) return false;
  return true;
}

// Groups fusable steps into chains and replaces every chain of two or more by
// one step at the position of its last member.
template <class T>
void fuse_elementwise(std::vector<typename CompiledProgram<T>::Step>& steps, const Tape<T>& tape, std::uint32_t output,
                      std::span<const Guard> guards) {
  using Step = typename CompiledProgram<T>::Step;
  const std::size_t slots = tape.num_slots();
  std::vector<int> consumers(slots, 0), producer(slots, -1);
  for (const Guard& g : guards) {  // a guarded value stays a value
    consumers[g.lhs]++;
    if (g.rhs != Tape<T>::kNoSlot) consumers[g.rhs]++;
  }
  consumers[output]++;
  for (std::size_t s = 0; s < steps.size(); ++s) {
    producer[steps[s].out] = static_cast<int>(s);
    for (auto a : steps[s].args) consumers[a]++;
  }
  // A step joins the chain of every input whose producer is fusable and feeds
  // it alone: chains are trees whose root (the last member) is the only value
  // leaving them. root_of: union-find over step indices, -1 for steps in no chain.
  std::vector<int> root_of(steps.size(), -1);
  std::vector<std::size_t> members_of(steps.size(), 1);  // at a chain's root
  auto find = [&](int s) {
    while (root_of[s] != s) s = root_of[s] = root_of[root_of[s]];
    return s;
  };
  std::vector<std::uint8_t> ok(steps.size());
  for (std::size_t s = 0; s < steps.size(); ++s) ok[s] = fusable<T>(steps[s], tape) ? 1 : 0;
  for (std::size_t s = 0; s < steps.size(); ++s) {
    if (!ok[s]) continue;
    for (auto a : steps[s].args) {
      const int p = producer[a];
      if (p < 0 || !ok[p] || consumers[a] != 1 || !(tape.value(a).shape() == tape.value(steps[s].out).shape())) continue;
      const int rp = root_of[p] < 0 ? p : find(p), rs = root_of[s] < 0 ? static_cast<int>(s) : find(static_cast<int>(s));
      if (rp == rs || members_of[rp] + members_of[rs] > kMaxChainMembers) continue;  // p's chain ends at p: its output is written
      root_of[p] = root_of[p] < 0 ? p : root_of[p];
      root_of[s] = root_of[s] < 0 ? static_cast<int>(s) : root_of[s];
      root_of[rp] = rs;
      members_of[rs] += members_of[rp];
    }
  }
  // Every chain's members in order, bucketed by root in one pass (O(n)).
  std::vector<std::vector<std::size_t>> chains(steps.size());
  for (std::size_t s = 0; s < steps.size(); ++s)
    if (root_of[s] >= 0) chains[static_cast<std::size_t>(find(static_cast<int>(s)))].push_back(s);
  std::vector<std::uint8_t> removed(steps.size(), 0);
  for (const std::vector<std::size_t>& members : chains) {
    if (members.size() < 2) continue;
    Step fused = steps[members.back()];  // its position, output, site and pullback flag
    fused.args.clear();
    fused.saved.clear();
    std::vector<std::uint32_t> member_out;
    for (std::size_t m = 0; m < members.size(); ++m) {
      const Step& st = steps[members[m]];
      typename Step::Member member{st.op, st.params, {0, 0}, static_cast<int>(st.args.size()), st.pullback, st.out};
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
      fused.group.push_back(std::move(member));
      if (m + 1 < members.size()) removed[members[m]] = 1;
    }
    steps[members.back()] = std::move(fused);
  }
  std::size_t kept = 0;
  for (std::size_t s = 0; s < steps.size(); ++s) {
    if (removed[s]) continue;
    if (kept != s) steps[kept] = std::move(steps[s]);
    ++kept;
  }
  steps.resize(kept);
}

}  // namespace tg::compile_impl
