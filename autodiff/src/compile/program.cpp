// CompiledProgram: built from a recorded tape (dead-code elimination, then the
// arena plan), and run (forward and reverse passes over the kept steps).
#include <fmt/format.h>

#include <algorithm>
#include <numeric>

#include "../timed.hpp"
#include "arena_plan.hpp"
#include "elementwise_fusion.hpp"
#include "tapegrad/kernels/parallel.hpp"
#include "tapegrad/kernels/scratch.hpp"
#include "../input_adjoints.hpp"
#include "tapegrad/autodiff/compile.hpp"
#include "tapegrad/autodiff/tape_file.hpp"

namespace tg {
namespace {

using compile_impl::Buffer;

// Note [Dead instructions]: slots from which the output, or a guard (Note [Guards]), can be reached.
template <class T>
std::vector<std::uint8_t> reaches_output(const Tape<T>& tape) {
  std::vector<std::uint8_t> reach(tape.num_slots(), 0);
  if (tape.output() != Tape<T>::kNoSlot) reach[tape.output()] = 1;
  for (const Guard& g : tape.guards()) {
    reach[g.lhs] = 1;
    if (g.rhs != Tape<T>::kNoSlot) reach[g.rhs] = 1;
  }
  for (std::size_t i = tape.num_instructions(); i-- > 0;) {
    const Instr<T>& ins = tape.instruction(i);
    if (reach[ins.out])
      for (auto a : tape.args_of(ins)) reach[a] = 1;
  }
  return reach;
}

// Note [Epilogue fusion]: folds activation steps into their producers.
// Per slot: how many steps and guards read it, and the step that writes it (-1: none).
struct SlotUses {
  std::vector<int> consumers, producer;
};
template <class T>
SlotUses slot_uses(const std::vector<typename CompiledProgram<T>::Step>& steps, std::size_t slots,
                   std::span<const Guard> guards) {
  SlotUses u{std::vector<int>(slots, 0), std::vector<int>(slots, -1)};
  for (const Guard& g : guards) {  // a guarded value must survive what would rewrite it
    u.consumers[g.lhs]++;
    if (g.rhs != Tape<T>::kNoSlot) u.consumers[g.rhs]++;
  }
  for (std::size_t s = 0; s < steps.size(); ++s) {
    u.producer[steps[s].out] = static_cast<int>(s);
    for (auto a : steps[s].args) u.consumers[a]++;
  }
  return u;
}

template <class T>
void fuse_epilogues(std::vector<typename CompiledProgram<T>::Step>& steps, std::uint32_t output, std::size_t slots,
                    std::span<const Guard> guards) {
  auto [consumers, producer] = slot_uses<T>(steps, slots, guards);
  std::vector<std::uint8_t> removed(steps.size(), 0);
  for (std::size_t s = 0; s < steps.size(); ++s) {
    auto& act = steps[s];
    if (!act.group.empty() || !act.op->epilogue_forward || act.args.size() != 1) continue;
    const std::uint32_t x = act.args[0];
    const int p = producer[x];
    if (p < 0 || removed[p] || consumers[x] != 1 || x == output) continue;
    auto& prod = steps[static_cast<std::size_t>(p)];
    if (!prod.group.empty() || !(prod.op->flags & kPullbackIgnoresOutput) || prod.epilogue) continue;
    prod.epilogue = act.op;
    prod.epilogue_params = act.params;
    prod.out = act.out;  // the producer now writes the activation's slot
    producer[act.out] = p;
    removed[s] = 1;
  }
  std::size_t kept = 0;
  for (std::size_t s = 0; s < steps.size(); ++s) {
    if (removed[s]) continue;
    if (kept != s) steps[kept] = std::move(steps[s]);  // never a self-move: it would empty the vectors
    ++kept;
  }
  steps.resize(kept);
}

// Note [Activation pullbacks at the max-pool] (compile.hpp): after epilogue
// fusion, a producer whose fused activation has a mask pullback and whose
// output feeds only a max-pool hands that pullback to the pool's step.
template <class T>
void move_pullbacks_to_max_pools(std::vector<typename CompiledProgram<T>::Step>& steps, std::uint32_t output,
                                 std::size_t slots, std::span<const Guard> guards) {
  const auto [consumers, producer] = slot_uses<T>(steps, slots, guards);
  for (auto& pool : steps) {
    if (!(pool.op->flags & kPoolsByMax) || !pool.group.empty() || !pool.pullback || pool.args.size() != 1) continue;
    const std::uint32_t x = pool.args[0];
    const int p = producer[x];
    if (p < 0 || consumers[x] != 1 || x == output) continue;
    auto& prod = steps[static_cast<std::size_t>(p)];
    if (!prod.epilogue || !(prod.epilogue->flags & kMaskPullback) || !prod.pullback) continue;
    prod.epilogue_pullback_moved = true;
    pool.at_max = prod.epilogue;
    pool.at_max_params = prod.epilogue_params;
  }
}

// Note [Tuned algorithms]: an op with a tune hook times its kernels for the
// passes its step runs; the step keeps the tuned params, the tape its own.
template <class T>
void tune_algorithms(std::vector<typename CompiledProgram<T>::Step>& steps, const std::vector<std::uint8_t>& needs_grad) {
  for (auto& st : steps) {
    if (!st.op->tune) continue;
    std::uint32_t grads = 0;  // bit i: input i's gradient is computed
    for (std::size_t i = 0; st.pullback && i < std::min<std::size_t>(st.args.size(), 32); ++i)
      if (needs_grad[st.args[i]]) grads |= 1u << i;
    try {
      if (auto tuned = st.op->tune(st.params.get(), grads)) st.params = std::move(tuned);
    } catch (const Error& e) {
      throw e.with_site(st.where);
    }
  }
}

// Note [Views share buffers]: root[slot] is the slot whose buffer `slot` uses
// (itself, unless it is a view). A view's value takes its input's root; when
// the view is its input's only consumer, the input's adjoint takes the view's
// adjoint root (resolved at the end: a chain of views points forward).
template <class T>
void share_views(std::vector<typename CompiledProgram<T>::Step>& steps, const std::vector<SlotKind>& kind,
                 const std::vector<std::uint8_t>& needs_grad, std::uint32_t output,
                 std::vector<std::uint32_t>& value_root, std::vector<std::uint32_t>& adjoint_root) {
  std::vector<int> consumers(kind.size(), 0);
  for (const auto& st : steps)
    for (auto a : st.args) consumers[a]++;
  for (auto& st : steps) {
    if (!(st.op->flags & kView) || !st.group.empty() || st.epilogue) continue;
    const std::uint32_t x = st.args[0];
    if (kind[x] != SlotKind::computed) continue;  // inputs and constants live outside the arena
    st.shares_value = true;
    value_root[st.out] = value_root[x];
    if (st.pullback && needs_grad[x] && consumers[x] == 1 && x != output) {
      st.shares_adjoint = true;
      adjoint_root[x] = st.out;
    }
  }
  for (std::size_t s = adjoint_root.size(); s-- > 0;) adjoint_root[s] = adjoint_root[adjoint_root[s]];  // roots come later
}

// An epilogue's pass over a whole output (or its adjoint), in parallel chunks.
constexpr std::int64_t kEpilogueChunk = 16384;
template <class T>
void run_epilogue_forward(const OpInfo<T>& act, const OpParams* params, T* y, std::int64_t n) {
  const std::int64_t chunks = (n + kEpilogueChunk - 1) / kEpilogueChunk;
  kernels::parallel_for(chunks, kernels::threads_if(chunks > 1), [&](std::int64_t c) {
    const std::int64_t begin = c * kEpilogueChunk;
    act.epilogue_forward(params, y + begin, std::min(kEpilogueChunk, n - begin));
  });
}
template <class T>
void run_epilogue_pullback(const OpInfo<T>& act, const OpParams* params, const T* y, T* dy, std::int64_t n) {
  const std::int64_t chunks = (n + kEpilogueChunk - 1) / kEpilogueChunk;
  kernels::parallel_for(chunks, kernels::threads_if(chunks > 1), [&](std::int64_t c) {
    const std::int64_t begin = c * kEpilogueChunk;
    act.epilogue_pullback(params, y + begin, dy + begin, std::min(kEpilogueChunk, n - begin));
  });
}

// Whether step st's pullback reads its k-th input's value: a fused chain's
// members may all read theirs; an op says so by its registry hook.
template <class T>
bool pullback_reads_input(const typename CompiledProgram<T>::Step& st, std::size_t k) {
  return !st.group.empty() || !st.op->pullback_reads_input || st.op->pullback_reads_input(st.params.get(), k);
}

// An owning copy of a tape's value; the shape alone for a value without storage
// (a tape loaded for its structure only, Tape::structure_only).
template <class T>
Array<T> copy_of(const Array<T>& v) {
  if (v.size() > 0 && !v.data()) return Array<T>::borrowed(v.shape(), nullptr);
  return v;
}

// The timeline of one step: forward step s at time s, the seed at S, the
// pullback of step s at S + 1 + (S - 1 - s), the user reading results at 2S + 1.
struct Timeline {
  int steps;
  int forward(std::size_t s) const { return static_cast<int>(s); }
  int seed() const { return steps; }
  int pullback(std::size_t s) const { return steps + 1 + (steps - 1 - static_cast<int>(s)); }
  int end() const { return 2 * steps + 1; }
};

}  // namespace

template <class T>
CompiledProgram<T>::CompiledProgram(const Tape<T>& tape, const CompileOptions& options)
    : options_(options),
      recorded_(tape.num_instructions()),
      kept_strings_(tape.kept_strings()) {
  tape.check_usable("compile");
  structure_only_ = tape.structure_only();
  try {
    source_skeleton_ = tape_file_skeleton(tape, &options);
  } catch (const Error& e) {
    source_error_ = e.what();  // compiling still works; saving says why it cannot
  }
  if (tape.output() == Tape<T>::kNoSlot)
    fail("compile", "the tape has no output; hint: compile a tape made by tg::record");
  const std::size_t slots = tape.num_slots();
  output_ = tape.output();
  inputs_.assign(tape.inputs().begin(), tape.inputs().end());
  values_.resize(slots);
  adjoints_.resize(slots);
  kind_.resize(slots);
  needs_grad_.resize(slots);
  for (std::uint32_t s = 0; s < slots; ++s) {
    kind_[s] = tape.kind(s);
    needs_grad_[s] = tape.needs_grad(s) ? 1 : 0;
    if (kind_[s] != SlotKind::computed) values_[s] = copy_of(tape.value(s));  // inputs and constants: owned copies
  }
  // Dead-code elimination: steps whose output reaches the tape's output.
  const auto reach = reaches_output(tape);
  for (std::size_t i = 0; i < tape.num_instructions(); ++i) {
    const Instr<T>& ins = tape.instruction(i);
    if (options.dead_code && !reach[ins.out]) continue;
    const auto args = tape.args_of(ins);
    const auto saved = tape.saved_of(ins);
    steps_.push_back({ins.op, ins.params, {args.begin(), args.end()}, ins.out, {saved.begin(), saved.end()}, ins.where,
                      needs_grad_[ins.out] != 0, /*epilogue=*/nullptr, /*epilogue_params=*/nullptr, /*group=*/{}});
  }
  guards_.assign(tape.guards().begin(), tape.guards().end());
  if (options.tune_algorithms) tune_algorithms<T>(steps_, needs_grad_);
  // Chains first: an activation on an elementwise op joins its chain; the rest
  // (an activation after conv or matmul, or after a broadcasting bias add) are epilogues.
  if (options.fuse_elementwise) compile_impl::fuse_elementwise<T>(steps_, tape, output_, guards_);
  if (options.fuse_epilogues) {
    fuse_epilogues<T>(steps_, output_, slots, guards_);
    move_pullbacks_to_max_pools<T>(steps_, output_, slots, guards_);
  }
  std::vector<std::uint32_t> value_root(slots), adjoint_root(slots);
  std::iota(value_root.begin(), value_root.end(), 0u);
  std::iota(adjoint_root.begin(), adjoint_root.end(), 0u);
  if (options.share_views) share_views<T>(steps_, kind_, needs_grad_, output_, value_root, adjoint_root);
  // Live intervals of every computed value and every computed slot's adjoint.
  const Timeline t{static_cast<int>(steps_.size())};
  std::vector<Buffer> buffers;
  std::vector<std::pair<std::uint32_t, bool>> owner;  // (slot, is adjoint)
  std::vector<int> value_buffer(slots, -1), adjoint_buffer(slots, -1);
  auto touch = [&](std::vector<int>& index, std::uint32_t slot, bool adjoint, int time) {
    if (kind_[slot] != SlotKind::computed) return;  // inputs, constants and their adjoints stay outside the arena
    slot = (adjoint ? adjoint_root : value_root)[slot];  // a view uses its root's buffer
    int& b = index[slot];
    if (b < 0) {
      b = static_cast<int>(buffers.size());
      buffers.push_back({static_cast<std::int64_t>(sizeof(T)) * tape.value(slot).size(), time, time});
      owner.emplace_back(slot, adjoint);
    }
    buffers[b].first = std::min(buffers[b].first, time);
    buffers[b].last = std::max(buffers[b].last, time);
  };
  for (std::size_t s = 0; s < steps_.size(); ++s) {
    const Step& st = steps_[s];
    touch(value_buffer, st.out, false, t.forward(s));
    for (auto a : st.args) touch(value_buffer, a, false, t.forward(s));
    if (!st.pullback) continue;
    const int back = t.pullback(s);  // reads inputs, output and output adjoint; writes input adjoints
    // An op that ignores its output reads it only for a fused activation's pullback it still runs.
    const bool reads_output = !(st.op->flags & kPullbackIgnoresOutput) || !st.group.empty() || st.shares_value ||
                              (st.epilogue && !st.epilogue_pullback_moved);
    if (reads_output) touch(value_buffer, st.out, false, back);
    touch(adjoint_buffer, st.out, true, back);
    for (std::size_t k = 0; k < st.args.size(); ++k) {
      const auto a = st.args[k];
      if (pullback_reads_input<T>(st, k)) touch(value_buffer, a, false, back);
      if (needs_grad_[a]) touch(adjoint_buffer, a, true, back);
    }
  }
  touch(value_buffer, output_, false, t.end());
  for (const Guard& g : guards_) {  // checked after the forward pass
    touch(value_buffer, g.lhs, false, t.seed());
    if (g.rhs != Tape<T>::kNoSlot) touch(value_buffer, g.rhs, false, t.seed());
  }
  touch(adjoint_buffer, output_, true, t.seed());
  std::vector<std::int64_t> offsets;
  arena_bytes_ = compile_impl::place_buffers(buffers, options.plan_memory, offsets);
  std::vector<std::int64_t> own;
  unplanned_bytes_ = compile_impl::place_buffers(buffers, false, own);
  value_offset_.assign(slots, kNotPlanned);
  adjoint_offset_.assign(slots, kNotPlanned);
  for (std::size_t b = 0; b < buffers.size(); ++b) {
    const auto [slot, adjoint] = owner[b];
    (adjoint ? adjoint_offset_ : value_offset_)[slot] = offsets[b];
    arena_views_.push_back({slot, adjoint, tape.value(slot).shape()});
    // Until the arena exists: the shape without storage (dump prints types before any replay).
    (adjoint ? adjoints_ : values_)[slot] = Array<T>::borrowed(tape.value(slot).shape(), nullptr);
  }
  for (std::uint32_t s = 0; s < slots; ++s)  // views: their root's bytes under their own shape
    for (const bool adjoint : {false, true}) {
      const std::uint32_t root = (adjoint ? adjoint_root : value_root)[s];
      std::vector<std::int64_t>& offset = adjoint ? adjoint_offset_ : value_offset_;
      if (root == s || offset[root] == kNotPlanned) continue;
      offset[s] = offset[root];
      arena_views_.push_back({s, adjoint, tape.value(s).shape()});
      (adjoint ? adjoints_ : values_)[s] = Array<T>::borrowed(tape.value(s).shape(), nullptr);
    }
  values_[output_] = copy_of(tape.value(output_));  // output() before any replay: the recorded value (an owning copy)
}

// Note [The arena comes with the first replay]: a program is usually compiled
// from a tape that is dropped right after (tg::compile(tg::record(...))), so
// the arena is allocated on the first forward(), when the tape's buffers are
// already free (tg::release_array_cache can then hand them back to the system):
// the tape and the arena are never resident together.
template <class T>
void CompiledProgram<T>::ensure_arena() {
  if (arena_ready_) return;
  arena_ = Array<T>::uninitialized(Shape{arena_bytes_ / static_cast<std::int64_t>(sizeof(T))});
  for (const ArenaView& v : arena_views_) {
    const std::int64_t offset = v.adjoint ? adjoint_offset_[v.slot] : value_offset_[v.slot];
    T* at = arena_.data() + offset / static_cast<std::int64_t>(sizeof(T));
    (v.adjoint ? adjoints_ : values_)[v.slot] = Array<T>::borrowed(v.shape, at);
  }
  arena_ready_ = true;
}

template <class T>
void CompiledProgram<T>::check_input(std::size_t k, const Shape& shape) const {
  if (k >= inputs_.size()) fail("CompiledTape", fmt::format("input index ({}) out of range the tape has {} inputs", k, inputs_.size()));
  const Shape& recorded = values_[inputs_[k]].shape();
  if (!(recorded == shape))
    fail("CompiledTape", fmt::format("input {} has shape {} but the tape was recorded with {} shapes must match on "
                                     "replay; hint: record and compile again for new shapes",
                                     k, to_string(shape), to_string(recorded)));
}

template <class T>
void CompiledProgram<T>::set_input(std::size_t k, const Array<T>& value) {
  const detail::ReplayGuard busy(owner_, "CompiledTape");
  check_computable();
  check_input(k, value.shape());
  values_[inputs_[k]] = value;
}

template <class T>
void CompiledProgram<T>::forward() {
  const detail::ReplayGuard busy(owner_, "CompiledTape");
  run_forward();
  if (const std::int64_t g = first_failed_guard(); g >= 0)
    health_.guard_failed("CompiledTape", guards_[g], static_cast<std::size_t>(g));
}

template <class T>
const std::string& CompiledProgram<T>::source_skeleton() const {
  if (!source_error_.empty()) fail("save_tape", fmt::format("the compiled tape cannot be saved: {}", source_error_));
  return source_skeleton_;
}

template <class T>
std::int64_t CompiledProgram<T>::first_failed_guard() const {
  for (std::size_t i = 0; i < guards_.size(); ++i) {
    const Guard& g = guards_[i];
    const Array<T>* rhs = g.rhs == Tape<T>::kNoSlot ? nullptr : &values_[g.rhs];
    if (evaluate_guard(g, values_[g.lhs], rhs) != g.expected) return static_cast<std::int64_t>(i);
  }
  return -1;
}

template <class T>
void CompiledProgram<T>::check_computable() const {
  if (structure_only_)
    fail("CompiledTape", "compiled from a tape loaded for its structure only (LoadOptions::replay = false) expected a "
                         "tape loaded with replay; hint: load it again with replay on");
}

template <class T>
void CompiledProgram<T>::run_forward() {
  const detail::ReplayGuard busy(owner_, "CompiledTape");
  check_computable();
  health_.run([&] { run_steps(); });
}

template <class T>
void CompiledProgram<T>::run_steps() {
  ensure_arena();
  std::vector<double>* seconds =
      profile_ ? detail::start_pass(&profile_->forward_seconds, &profile_->forward_passes, steps_.size()) : nullptr;
  for (std::size_t s = 0; s < steps_.size(); ++s) {
    Step& st = steps_[s];
    if (st.shares_value) continue;  // Note [Views share buffers]
    scratch_in_.clear();
    for (auto a : st.args) scratch_in_.push_back(&values_[a]);
    try {
      detail::timed(seconds, s, [&] {
        if (!st.group.empty()) return group_forward(st);
        Array<T>& y = values_[st.out];
        const EpilogueCall<T> epilogue{st.epilogue, st.epilogue_params.get()};
        const bool inside = st.epilogue && (st.op->flags & kAppliesEpilogue);
        st.op->forward({st.params.get(), scratch_in_, y, st.saved, inside ? &epilogue : nullptr});
        if (st.epilogue && !inside) run_epilogue_forward(*st.epilogue, st.epilogue_params.get(), y.data(), y.size());
      });
    } catch (const Error& e) {
      throw e.with_site(st.where);
    }
  }
}

template <class T>
void CompiledProgram<T>::reverse(const Array<T>& seed) {
  if (!(seed.shape() == output().shape()))
    fail("CompiledTape", fmt::format("seed shape {} differs from the output shape {} they must match",
                                     to_string(seed.shape()), to_string(output().shape())));
  run_reverse([&](Array<T>& adjoint) { adjoint = seed; });
}

template <class T>
void CompiledProgram<T>::reverse_ones() {
  run_reverse([](Array<T>& adjoint) { adjoint.fill(T(1)); });
}

namespace {

// Whether external input k of a fused step has one reader among the members,
// and that reader can write its adjoint (Note [Assigned adjoints]).
template <class Step>
bool one_assigning_reader(const Step& st, std::size_t k) {
  int reads = 0;
  bool can_assign = false;
  for (const auto& mem : st.group)
    for (int i = 0; i < mem.n_in; ++i)
      if (mem.in[static_cast<std::size_t>(i)] == static_cast<std::int32_t>(k)) {
        ++reads;
        can_assign = mem.needs_grad && (mem.op->flags & kPullbackCanAssign);
      }
  return reads == 1 && can_assign;
}

// The external adjoints of a fused step, ready for its pullback: an adjoint no
// pullback has written yet in this pass, of the chain's shape and read by one
// member, is handed over unzeroed (its bit in the result); the others are
// zeroed on first use, and the members add into them.
template <class T, class Step>
std::uint32_t external_adjoints(const Step& st, detail::AdjointSlots<T>& slots, const std::vector<std::uint8_t>& needs_grad) {
  std::uint32_t assigned = 0;
  for (std::size_t k = 0; k < st.args.size(); ++k) {
    const std::uint32_t a = st.args[k];
    if (!needs_grad[a]) continue;
    const bool whole = slots.values[a].size() == slots.values[st.out].size();  // not a one-element input summed per block
    if (k < 32 && whole && !slots.live[a] && one_assigning_reader(st, k)) {
      slots.claim(a);
      assigned |= 1u << k;
    } else {
      slots.fresh(a);
    }
  }
  return assigned;
}

}  // namespace

template <class T>
template <class Seed>
void CompiledProgram<T>::run_reverse(Seed write_seed) {
  const detail::ReplayGuard busy(owner_, "CompiledTape");
  check_computable();
  check_usable("CompiledTape");
  if (!arena_ready_) fail("CompiledTape", "reverse() before forward() expected a forward pass first; hint: call forward or gradient");
  adjoint_live_.assign(values_.size(), 0);
  // Zeroed when first written in this pass (planned adjoints share bytes with
  // dead buffers), or assigned by their first writer (Note [Assigned adjoints]).
  detail::AdjointSlots<T> slots{adjoints_, adjoint_live_, values_};
  write_seed(slots.fresh(output_));
  std::vector<double>* seconds =
      profile_ ? detail::start_pass(&profile_->pullback_seconds, &profile_->reverse_passes, steps_.size()) : nullptr;
  for (std::size_t s = steps_.size(); s-- > 0;) {
    Step& st = steps_[s];
    if (!st.pullback || !adjoint_live_[st.out]) continue;
    if (st.shares_adjoint) {  // the input's adjoint is the output adjoint's bytes (Note [Views share buffers])
      adjoint_live_[st.args[0]] = 1;
      continue;
    }
    try {
      detail::timed(seconds, s, [&] {  // zeroing the input adjoints counts as the pullback's time
        scratch_in_.clear();
        scratch_adj_.clear();
        for (auto a : st.args) scratch_in_.push_back(&values_[a]);
        if (!st.group.empty()) return group_pullback(st, external_adjoints(st, slots, needs_grad_));
        const std::uint32_t assign = slots.inputs(*st.op, st.args, needs_grad_, scratch_adj_);
        Array<T>& dy = adjoints_[st.out];
        if (st.at_max)  // Note [Activation pullbacks at the max-pool]: the pool's output stands for the activation's
          run_epilogue_pullback(*st.at_max, st.at_max_params.get(), values_[st.out].data(), dy.data(), dy.size());
        // The op folds the activation's pullback into its own first read of dy, or it runs here as a pass of its own.
        const OpInfo<T>* activation = st.epilogue_pullback_moved ? nullptr : st.epilogue;
        const EpilogueCall<T> epilogue{activation, st.epilogue_params.get()};
        const bool folded = activation && (st.op->flags & kFoldsEpiloguePullback);
        if (activation && !folded) run_epilogue_pullback(*activation, st.epilogue_params.get(), values_[st.out].data(), dy.data(), dy.size());
        st.op->pullback({st.params.get(), scratch_in_, values_[st.out], dy, scratch_adj_, st.saved,
                         folded ? &epilogue : nullptr, folded ? &dy : nullptr, assign});
      });
    } catch (const Error& e) {
      throw e.with_site(st.where);
    }
  }
}

// ---- fused elementwise chains (Note [Elementwise fusion]) ------------------------------

namespace {
// A block [begin, begin + len) of a fused step's external input or adjoint: a
// one-element value is the same element for every block (rank 0: it broadcasts).
template <class T>
Array<T> block_of(const Array<T>& full, std::int64_t n, std::int64_t begin, std::int64_t len) {
  T* data = const_cast<T*>(full.data());  // borrowed views never free; inputs are only read through const Arrays
  if (full.size() == 1 && n != 1) return Array<T>::borrowed(Shape{}, data);
  return Array<T>::borrowed(Shape{len}, data + begin);
}

// The input views of one member of a fused step on a block: inner values from
// `inner` (member j's block at j * kFusedBlock), external ones from `values`.
template <class T, class Step, class Member>
void member_inputs(const Step& st, const Member& mem, const std::vector<Array<T>>& values, T* inner, std::int64_t n,
                   std::int64_t begin, std::int64_t len, std::array<Array<T>, 2>& in, std::array<const Array<T>*, 2>& ptr) {
  for (int i = 0; i < mem.n_in; ++i) {
    const std::int32_t code = mem.in[static_cast<std::size_t>(i)];
    in[i] = code < 0 ? Array<T>::borrowed(Shape{len}, inner + (-1 - code) * compile_impl::kFusedBlock)
                     : block_of(values[st.args[static_cast<std::size_t>(code)]], n, begin, len);
    ptr[i] = &in[i];
  }
}
}  // namespace

// Blocks run in parallel, each on its thread's scratch (Note [Scratch stack]).
template <class T>
void CompiledProgram<T>::group_forward(const Step& st) {
  using compile_impl::kFusedBlock;
  const std::size_t members = st.group.size();
  Array<T>& result = values_[st.out];
  const std::int64_t n = result.size(), blocks = (n + kFusedBlock - 1) / kFusedBlock;
  kernels::parallel_for(blocks, kernels::threads_if(blocks > 1), [&](std::int64_t block) {
    kernels::ScratchScope scratch;
    T* inner = scratch.take<T>(static_cast<std::int64_t>(members) * kFusedBlock).data();  // member m at m * kFusedBlock
    const std::int64_t begin = block * kFusedBlock, len = std::min(kFusedBlock, n - begin);
    for (std::size_t m = 0; m < members; ++m) {
      const auto& mem = st.group[m];
      std::array<Array<T>, 2> in;
      std::array<const Array<T>*, 2> in_ptr{};
      member_inputs(st, mem, values_, inner, n, begin, len, in, in_ptr);
      Array<T> out = Array<T>::borrowed(Shape{len}, m + 1 == members ? result.data() + begin : inner + m * kFusedBlock);
      mem.op->forward({mem.params.get(), std::span<const Array<T>* const>(in_ptr.data(), mem.n_in), out, {}, nullptr});
    }
  });
}

// Per block: recompute the inner values, then every member's pullback, last
// first. An inner adjoint has one writer, which assigns it, as does an
// external one in assigned_externals. Blocks run in parallel; the adjoint of a
// one-element input (which every block adds to) goes to one partial sum per
// block, added up in block order afterwards, so the result does not depend on
// the thread count.
template <class T>
void CompiledProgram<T>::group_pullback(const Step& st, std::uint32_t assigned_externals) {
  using compile_impl::kFusedBlock;
  const std::size_t members = st.group.size();
  const Array<T>& result = values_[st.out];
  const std::int64_t n = result.size(), blocks = (n + kFusedBlock - 1) / kFusedBlock;
  std::array<std::int32_t, 4> partial_of{};  // per external input: its slot among the partial sums, or -1
  std::int32_t partials = 0;
  for (std::size_t k = 0; k < st.args.size(); ++k) {
    const std::uint32_t a = st.args[k];
    const bool summed = needs_grad_[a] && values_[a].size() == 1 && n != 1;
    if (k < partial_of.size()) partial_of[k] = summed ? partials++ : -1;
    else if (summed) fail("CompiledTape", "a fused chain has more than 4 external inputs that are single elements");
  }
  kernels::ScratchScope outer;
  T* partial = outer.take_filled<T>(blocks * partials, T(0)).data();  // partial[block * partials + slot]
  kernels::parallel_for(blocks, kernels::threads_if(blocks > 1), [&](std::int64_t block) {
    kernels::ScratchScope scratch;
    T* inner = scratch.take<T>(static_cast<std::int64_t>(members) * kFusedBlock).data();
    T* inner_adj = scratch.take<T>(static_cast<std::int64_t>(members) * kFusedBlock).data();
    const std::int64_t begin = block * kFusedBlock, len = std::min(kFusedBlock, n - begin);
    auto value_of = [&](std::size_t m) {
      return Array<T>::borrowed(Shape{len}, m + 1 == members ? const_cast<T*>(result.data()) + begin : inner + m * kFusedBlock);
    };
    auto inputs_of = [&](const auto& mem, std::array<Array<T>, 2>& in, std::array<const Array<T>*, 2>& ptr) {
      member_inputs(st, mem, values_, inner, n, begin, len, in, ptr);
    };
    for (std::size_t m = 0; m + 1 < members; ++m) {  // the inner values again
      std::array<Array<T>, 2> in;
      std::array<const Array<T>*, 2> ptr{};
      inputs_of(st.group[m], in, ptr);
      Array<T> out = value_of(m);
      st.group[m].op->forward(
          {st.group[m].params.get(), std::span<const Array<T>* const>(ptr.data(), st.group[m].n_in), out, {}, nullptr});
    }
    for (std::size_t m = members; m-- > 0;) {
      const auto& mem = st.group[m];
      if (!mem.needs_grad) continue;
      std::array<Array<T>, 2> in, adj;
      std::array<const Array<T>*, 2> ptr{};
      std::array<Array<T>*, 2> adj_ptr{};
      std::uint32_t assign = 0;
      inputs_of(mem, in, ptr);
      for (int i = 0; i < mem.n_in; ++i) {
        const std::int32_t code = mem.in[static_cast<std::size_t>(i)];
        if (code < 0) {  // an inner value: this member is its only reader, so the only writer of its adjoint
          const std::size_t j = static_cast<std::size_t>(-1 - code);
          if (!st.group[j].needs_grad) continue;
          T* inner_adjoint = inner_adj + j * kFusedBlock;
          if (mem.op->flags & kPullbackCanAssign) assign |= 1u << i;
          else std::fill(inner_adjoint, inner_adjoint + len, T(0));
          adj[i] = Array<T>::borrowed(Shape{len}, inner_adjoint);
        } else {
          const std::uint32_t a = st.args[static_cast<std::size_t>(code)];
          if (!needs_grad_[a]) continue;
          const std::int32_t slot = static_cast<std::size_t>(code) < partial_of.size() ? partial_of[code] : -1;
          adj[i] = slot >= 0 ? Array<T>::borrowed(Shape{}, partial + block * partials + slot) : block_of(adjoints_[a], n, begin, len);
          if (code < 32 && ((assigned_externals >> code) & 1u)) assign |= 1u << i;
        }
        adj_ptr[i] = &adj[i];
      }
      const Array<T> out = value_of(m);
      const Array<T> dy = Array<T>::borrowed(
          Shape{len}, m + 1 == members ? adjoints_[st.out].data() + begin : inner_adj + m * kFusedBlock);
      mem.op->pullback({mem.params.get(), std::span<const Array<T>* const>(ptr.data(), mem.n_in), out, dy,
                        std::span<Array<T>* const>(adj_ptr.data(), mem.n_in), {}, nullptr, nullptr, assign});
    }
  });
  for (std::size_t k = 0; k < st.args.size() && k < partial_of.size(); ++k) {
    if (partial_of[k] < 0) continue;
    T sum = T(0);
    for (std::int64_t b = 0; b < blocks; ++b) sum += partial[b * partials + partial_of[k]];
    adjoints_[st.args[k]].data()[0] += sum;
  }
}

template <class T>
std::int64_t CompiledProgram<T>::held_bytes() const {
  std::int64_t elements = 0;
  for (const Step& st : steps_)
    for (const Array<T>& s : st.saved) elements += s.size();
  for (std::size_t s = 0; s < values_.size(); ++s)
    if (kind_[s] != SlotKind::computed) elements += values_[s].size() * (needs_grad_[s] ? 2 : 1);
  return arena_bytes_ + elements * static_cast<std::int64_t>(sizeof(T));
}

template <class T>
void CompiledProgram<T>::input_gradient_into(std::size_t k, Array<T>& out) const {
  const std::uint32_t slot = inputs_[k];
  if (slot < adjoint_live_.size() && adjoint_live_[slot]) {
    out = adjoints_[slot];
    return;
  }
  if (!(out.shape() == values_[slot].shape())) out = Array<T>(values_[slot].shape());
  out.fill(T(0));
}

template class CompiledProgram<float>;
template class CompiledProgram<double>;

}  // namespace tg
