// Compiling a recorded tape: one step per instruction, the passes in order
// (the pass list below), then the memory plan. Running it: runtime.cpp.
#include <fmt/format.h>

#include <numeric>

#include "ir.hpp"
#include "tapegrad/autodiff/tape_file.hpp"

namespace tg {
namespace compile_impl {
// The passes, each in its own file (pass_*.cpp).
template <class T>
void eliminate_dead_code(Ir<T>& ir);  // Note [Dead instructions]
template <class T>
void fold_norms(Ir<T>& ir);  // Note [Folded norms]
template <class T>
void tune_algorithms(Ir<T>& ir);  // Note [Tuned algorithms]
template <class T>
void fuse_elementwise(Ir<T>& ir);  // Note [Elementwise fusion]
template <class T>
void fuse_epilogues(Ir<T>& ir);  // Note [Epilogue fusion]
template <class T>
void move_pullbacks_to_max_pools(Ir<T>& ir);  // Note [Activation pullbacks at the max-pool]
template <class T>
void share_views(Ir<T>& ir);  // Note [Views share buffers]
}  // namespace compile_impl

namespace {

using compile_impl::Ir;

// The passes, in order; each runs when its option is on. Chains come before
// epilogues: an activation on an elementwise op joins its chain, the rest (an
// activation after conv or matmul, or after a broadcasting bias add) become
// epilogues; views last, over what the fusions left.
template <class T>
struct Pass {
  bool CompileOptions::*enabled;
  void (*run)(Ir<T>&);
};
template <class T>
constexpr Pass<T> kPasses[] = {
    {&CompileOptions::dead_code, &compile_impl::eliminate_dead_code<T>},
    {&CompileOptions::fold_norms, &compile_impl::fold_norms<T>},
    {&CompileOptions::tune_algorithms, &compile_impl::tune_algorithms<T>},
    {&CompileOptions::fuse_elementwise, &compile_impl::fuse_elementwise<T>},
    {&CompileOptions::fuse_epilogues, &compile_impl::fuse_epilogues<T>},
    {&CompileOptions::fuse_epilogues, &compile_impl::move_pullbacks_to_max_pools<T>},
    {&CompileOptions::share_views, &compile_impl::share_views<T>},
};

// An owning copy of a tape's value; the shape alone for a value without storage
// (a tape loaded for its structure only, Tape::structure_only).
template <class T>
Array<T> copy_of(const Array<T>& v) {
  if (v.size() > 0 && !v.data()) return Array<T>::borrowed(v.shape(), nullptr);
  return v;
}

// The program before any pass: one plain step per recorded instruction; a
// pullback runs where the output needs a gradient.
template <class T>
std::vector<typename CompiledProgram<T>::Step> one_step_per_instruction(const Tape<T>& tape) {
  std::vector<typename CompiledProgram<T>::Step> steps;
  steps.reserve(tape.num_instructions());
  for (std::size_t i = 0; i < tape.num_instructions(); ++i) {
    const Instr<T>& ins = tape.instruction(i);
    const auto args = tape.args_of(ins);
    const auto saved = tape.saved_of(ins);
    steps.push_back({ins.op, ins.params, {args.begin(), args.end()}, ins.out, {saved.begin(), saved.end()}, ins.where,
                     tape.needs_grad(ins.out), {}});
  }
  return steps;
}

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
  for (std::size_t k = 0; k < inputs_.size(); ++k) input_names_.push_back(tape.input_name(k));
  values_.resize(slots);
  adjoints_.resize(slots);
  kind_.resize(slots);
  needs_grad_.resize(slots);
  for (std::uint32_t s = 0; s < slots; ++s) {
    kind_[s] = tape.kind(s);
    needs_grad_[s] = tape.needs_grad(s) ? 1 : 0;
    if (kind_[s] != SlotKind::computed) values_[s] = copy_of(tape.value(s));  // inputs and constants: owned copies
  }
  guards_.assign(tape.guards().begin(), tape.guards().end());
  Ir<T> ir{tape, options_, one_step_per_instruction(tape), needs_grad_, output_, guards_,
           std::vector<std::uint32_t>(slots), std::vector<std::uint32_t>(slots)};
  std::iota(ir.value_root.begin(), ir.value_root.end(), 0u);
  std::iota(ir.adjoint_root.begin(), ir.adjoint_root.end(), 0u);
  for (const Pass<T>& pass : kPasses<T>)
    if (options_.*pass.enabled) pass.run(ir);
  adopt_memory_plan(compile_impl::plan_memory(ir), tape);
  steps_ = std::move(ir.steps);
}

// Every planned buffer gets the shape without storage until the arena exists
// (dump prints types before any replay); the output, the recorded value.
template <class T>
void CompiledProgram<T>::adopt_memory_plan(compile_impl::MemoryPlan plan, const Tape<T>& tape) {
  arena_bytes_ = plan.arena_bytes;
  unplanned_bytes_ = plan.unplanned_bytes;
  value_offset_ = std::move(plan.value_offset);
  adjoint_offset_ = std::move(plan.adjoint_offset);
  for (const auto& v : plan.views) {
    const Shape& shape = tape.value(v.slot).shape();
    arena_views_.push_back({v.slot, v.adjoint, shape});
    (v.adjoint ? adjoints_ : values_)[v.slot] = Array<T>::borrowed(shape, nullptr);
  }
  values_[output_] = copy_of(tape.value(output_));  // output() before any replay (an owning copy)
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

template class CompiledProgram<float>;
template class CompiledProgram<double>;

}  // namespace tg
