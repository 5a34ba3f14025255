// Running a compiled program: the forward and reverse passes over its steps,
// on buffers in the arena the memory plan laid out.
#include <fmt/format.h>

#include <algorithm>

#include "../input_adjoints.hpp"
#include "../timed.hpp"
#include "ir.hpp"
#include "tapegrad/kernels/parallel.hpp"
#include "tapegrad/kernels/scratch.hpp"

namespace tg {
namespace {

using compile_impl::kFusedBlock;

// An epilogue's pass over a whole output (or its adjoint), in parallel chunks.
constexpr std::int64_t kEpilogueChunk = 16384;
template <class T>
void run_epilogue_forward(const OpInfo<T>& act, const OpParams* params, T* y, std::int64_t n) {
  const std::int64_t chunks = (n + kEpilogueChunk - 1) / kEpilogueChunk;
  kernels::parallel_for(chunks, kernels::threads_if(chunks > 1), [&](std::int64_t c) {
    const std::int64_t begin = c * kEpilogueChunk;
    act.fusion->epilogue_forward(params, y + begin, std::min(kEpilogueChunk, n - begin));
  });
}
template <class T>
void run_epilogue_pullback(const OpInfo<T>& act, const OpParams* params, const T* y, T* dy, std::int64_t n) {
  const std::int64_t chunks = (n + kEpilogueChunk - 1) / kEpilogueChunk;
  kernels::parallel_for(chunks, kernels::threads_if(chunks > 1), [&](std::int64_t c) {
    const std::int64_t begin = c * kEpilogueChunk;
    act.fusion->epilogue_pullback(params, y + begin, dy + begin, std::min(kEpilogueChunk, n - begin));
  });
}

}  // namespace

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
    fail("CompiledTape", fmt::format("input {}{} has shape {} but the tape was recorded with {} shapes must match on "
                                     "replay; hint: record and compile again for new shapes, or use tg::jit",
                                     k, input_names_[k].empty() ? "" : " (" + input_names_[k] + ")", to_string(shape),
                                     to_string(recorded)));
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

// One plain, epilogue or max-pool step's forward. A fused activation runs
// inside the op's output loop when the op can (Note [Fusion hooks]), else as a pass of its own.
template <class T>
void CompiledProgram<T>::run_step_forward(Step& st) {
  if (st.chain()) return group_forward(st);
  Array<T>& y = values_[st.out];
  const ForwardCall<T> call{st.params.get(), scratch_in_, y, st.saved};
  const auto* e = st.epilogue();
  if (!e) return st.op->forward(call);
  const EpilogueCall<T> activation{e->activation.op, e->activation.params.get()};
  const Fusion<T>* f = st.op->fusion.get();
  if (f && f->forward_with_epilogue) return f->forward_with_epilogue(call, activation);
  st.op->forward(call);
  run_epilogue_forward(*e->activation.op, e->activation.params.get(), y.data(), y.size());
}

// The pullback of one plain, epilogue or max-pool step. Note [Activation
// pullbacks at the max-pool]: a max-pool runs the moved activation pullback on
// its own output adjoint, its output standing for the activation's. A fused
// activation's pullback is folded into the op's first read of the adjoint when
// the op can, else a pass of its own.
template <class T>
void CompiledProgram<T>::run_step_pullback(Step& st, std::uint32_t assign) {
  Array<T>& dy = adjoints_[st.out];
  const PullbackCall<T> call{st.params.get(), scratch_in_, values_[st.out], dy, scratch_adj_, st.saved, assign};
  if (const auto* m = st.at_max())
    run_epilogue_pullback(*m->activation.op, m->activation.params.get(), values_[st.out].data(), dy.data(), dy.size());
  const auto* e = st.epilogue();
  if (e && !e->pullback_at_max) {
    const EpilogueCall<T> activation{e->activation.op, e->activation.params.get()};
    const Fusion<T>* f = st.op->fusion.get();
    if (f && f->pullback_with_epilogue) return f->pullback_with_epilogue(call, activation, dy);
    run_epilogue_pullback(*e->activation.op, e->activation.params.get(), values_[st.out].data(), dy.data(), dy.size());
  }
  st.op->pullback(call);
}

template <class T>
void CompiledProgram<T>::run_steps() {
  ensure_arena();
  std::vector<double>* seconds =
      profile_ ? detail::start_pass(&profile_->forward_seconds, &profile_->forward_passes, steps_.size()) : nullptr;
  for (std::size_t s = 0; s < steps_.size(); ++s) {
    Step& st = steps_[s];
    if (st.view()) continue;  // Note [Views share buffers]: nothing to run
    scratch_in_.clear();
    for (auto a : st.args) scratch_in_.push_back(&values_[a]);
    try {
      detail::timed(seconds, s, [&] { run_step_forward(st); });
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
  for (const auto& mem : st.chain()->members)
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
    if (const auto* view = st.view(); view && view->shares_adjoint) {  // the input's adjoint is the output adjoint's bytes
      adjoint_live_[st.args[0]] = 1;
      continue;
    }
    try {
      detail::timed(seconds, s, [&] {  // zeroing the input adjoints counts as the pullback's time
        scratch_in_.clear();
        scratch_adj_.clear();
        for (auto a : st.args) scratch_in_.push_back(&values_[a]);
        if (st.chain()) return group_pullback(st, external_adjoints(st, slots, needs_grad_));
        const std::uint32_t assign = slots.inputs(*st.op, st.args, needs_grad_, scratch_adj_);
        run_step_pullback(st, assign);
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
    in[i] = code < 0 ? Array<T>::borrowed(Shape{len}, inner + (-1 - code) * kFusedBlock)
                     : block_of(values[st.args[static_cast<std::size_t>(code)]], n, begin, len);
    ptr[i] = &in[i];
  }
}
}  // namespace

// Blocks run in parallel, each on its thread's scratch (Note [Scratch stack]).
template <class T>
void CompiledProgram<T>::group_forward(const Step& st) {
  const auto& chain = st.chain()->members;
  const std::size_t members = chain.size();
  Array<T>& result = values_[st.out];
  const std::int64_t n = result.size(), blocks = (n + kFusedBlock - 1) / kFusedBlock;
  kernels::parallel_for(blocks, kernels::threads_if(blocks > 1), [&](std::int64_t block) {
    kernels::ScratchScope scratch;
    T* inner = scratch.take<T>(static_cast<std::int64_t>(members) * kFusedBlock).data();  // member m at m * kFusedBlock
    const std::int64_t begin = block * kFusedBlock, len = std::min(kFusedBlock, n - begin);
    for (std::size_t m = 0; m < members; ++m) {
      const auto& mem = chain[m];
      std::array<Array<T>, 2> in;
      std::array<const Array<T>*, 2> in_ptr{};
      member_inputs(st, mem, values_, inner, n, begin, len, in, in_ptr);
      Array<T> out = Array<T>::borrowed(Shape{len}, m + 1 == members ? result.data() + begin : inner + m * kFusedBlock);
      mem.op->forward({mem.params.get(), std::span<const Array<T>* const>(in_ptr.data(), mem.n_in), out, {}});
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
  const auto& chain = st.chain()->members;
  const std::size_t members = chain.size();
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
    for (std::size_t m = 0; m + 1 < members; ++m) {  // the inner values read back, again
      if (!chain[m].read_back) continue;
      std::array<Array<T>, 2> in;
      std::array<const Array<T>*, 2> ptr{};
      inputs_of(chain[m], in, ptr);
      Array<T> out = value_of(m);
      chain[m].op->forward({chain[m].params.get(), std::span<const Array<T>* const>(ptr.data(), chain[m].n_in), out, {}});
    }
    for (std::size_t m = members; m-- > 0;) {
      const auto& mem = chain[m];
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
          if (!chain[j].needs_grad) continue;
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
                        std::span<Array<T>* const>(adj_ptr.data(), mem.n_in), {}, assign});
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
void CompiledProgram<T>::input_gradient_into(std::size_t k, Array<T>& out) const {
  const std::uint32_t slot = inputs_[k];
  if (slot < adjoint_live_.size() && adjoint_live_[slot]) {
    out = adjoints_[slot];
    return;
  }
  if (!(out.shape() == values_[slot].shape())) out = Array<T>(values_[slot].shape());
  out.fill(T(0));
}

// The members defined here (the class itself is instantiated in program.cpp).
#define TG_RUNTIME_INSTANCES(T)                                                              \
  template void CompiledProgram<T>::ensure_arena();                                          \
  template void CompiledProgram<T>::check_input(std::size_t, const Shape&) const;            \
  template void CompiledProgram<T>::set_input(std::size_t, const Array<T>&);                 \
  template void CompiledProgram<T>::forward();                                               \
  template const std::string& CompiledProgram<T>::source_skeleton() const;                   \
  template std::int64_t CompiledProgram<T>::first_failed_guard() const;                      \
  template void CompiledProgram<T>::check_computable() const;                                \
  template void CompiledProgram<T>::run_forward();                                           \
  template void CompiledProgram<T>::run_step_forward(Step&);                                 \
  template void CompiledProgram<T>::run_step_pullback(Step&, std::uint32_t);                 \
  template void CompiledProgram<T>::run_steps();                                             \
  template void CompiledProgram<T>::reverse(const Array<T>&);                                \
  template void CompiledProgram<T>::reverse_ones();                                          \
  template void CompiledProgram<T>::group_forward(const Step&);                              \
  template void CompiledProgram<T>::group_pullback(const Step&, std::uint32_t);              \
  template void CompiledProgram<T>::input_gradient_into(std::size_t, Array<T>&) const;
TG_RUNTIME_INSTANCES(float)
TG_RUNTIME_INSTANCES(double)
#undef TG_RUNTIME_INSTANCES

}  // namespace tg
