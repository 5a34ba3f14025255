#include "tapegrad/autodiff/tape.hpp"

#include <fmt/format.h>

#include "input_adjoints.hpp"
#include "timed.hpp"

namespace tg {

using detail::timed;

template <class T>
std::uint32_t Tape<T>::add_slot(Array<T> value, SlotKind kind, bool needs_grad) {
  const auto slot = static_cast<std::uint32_t>(values_.size());
  values_.push_back(std::move(value));
  kind_.push_back(kind);
  needs_grad_.push_back(needs_grad ? 1 : 0);
  state_.push_back(0);
  handles_.push_back(0);
  return slot;
}

template <class T>
void Tape<T>::drop_handle(std::uint32_t slot) noexcept {
  if (slot >= handles_.size() || handles_[slot] == 0 || --handles_[slot] > 0) return;
  if (!release_unreachable_ || kind_[slot] != SlotKind::computed || slot == output_) return;
  values_[slot] = Array<T>::borrowed(values_[slot].shape(), nullptr);  // the shape stays, for compile
}

template <class T>
void Tape<T>::release_unreachable_from(std::uint32_t first) noexcept {
  if (!release_unreachable_) return;
  for (std::uint32_t slot = first; slot < handles_.size(); ++slot)
    if (handles_[slot] == 0 && kind_[slot] == SlotKind::computed && slot != output_)
      values_[slot] = Array<T>::borrowed(values_[slot].shape(), nullptr);
}

template <class T>
std::uint32_t Tape<T>::add_input(Array<T> value, bool needs_grad, std::string name, bool state) {
  const auto slot = add_slot(std::move(value), SlotKind::input, needs_grad && !state);
  state_[slot] = state ? 1 : 0;
  inputs_.push_back(slot);
  input_names_.push_back(std::move(name));
  return slot;
}

template <class T>
std::string Tape<T>::describe_input(std::size_t k) const {
  return input_names_[k].empty() ? fmt::format("input {}", k) : fmt::format("input {} ({})", k, input_names_[k]);
}

template <class T>
const char* Tape<T>::keep_string(std::string s) {
  if (!kept_strings_) kept_strings_ = std::make_shared<std::deque<std::string>>();
  return kept_strings_->emplace_back(std::move(s)).c_str();
}

template <class T>
std::uint32_t Tape<T>::add_constant(Array<T> value) {
  return add_slot(std::move(value), SlotKind::constant, false);
}

template <class T>
std::uint32_t Tape<T>::append(const OpInfo<T>& op, std::shared_ptr<const OpParams> params, std::span<const std::uint32_t> args,
                              Array<T> output, std::vector<Array<T>> saved, const Site& where) {
  bool needs_grad = false;
  for (auto a : args) needs_grad = needs_grad || needs_grad_[a] != 0;
  Instr<T> ins;
  ins.op = &op;
  ins.params = std::move(params);
  ins.args_begin = static_cast<std::uint32_t>(args_.size());
  ins.n_args = static_cast<std::uint32_t>(args.size());
  ins.saved_begin = static_cast<std::uint32_t>(saved_.size());
  ins.n_saved = static_cast<std::uint32_t>(saved.size());
  ins.where = where;
  if (pullback_origin_.slot != kNoSlot) {  // Note [Pullback origins]
    ins.pullback_of = pullback_origin_.slot;
    ins.where = pullback_origin_.where;
  }
  args_.insert(args_.end(), args.begin(), args.end());
  for (auto& s : saved) saved_.push_back(std::move(s));
  ins.out = add_slot(std::move(output), SlotKind::computed, needs_grad);
  instrs_.push_back(std::move(ins));
  return instrs_.back().out;
}

template <class T>
void Tape<T>::set_input(std::size_t k, const Array<T>& value, const char* op) {
  const auto busy = replay_guard(op);
  check_computable(op);
  check_input(k, value.shape(), op);
  values_[inputs_[k]] = value;  // same size: copies into the existing storage
}

template <class T>
void Tape<T>::check_input(std::size_t k, const Shape& shape, const char* op) const {
  if (k >= inputs_.size())
    fail(op, fmt::format("input index ({}) out of range the tape has {} inputs", k, inputs_.size()));
  const Shape& recorded = values_[inputs_[k]].shape();
  if (!(recorded == shape))
    fail(op, fmt::format("{} has shape {} but the tape was recorded with {} shapes must match on replay; "
                         "hint: record the tape again for new shapes, or use tg::jit",
                         describe_input(k), to_string(shape), to_string(recorded)));
}

template <class T>
void Tape<T>::set_input_needs_grad(std::size_t k, bool needs) {
  if (k >= inputs_.size())
    fail("set_input_needs_grad", fmt::format("input index ({}) out of range the tape has {} inputs", k, inputs_.size()));
  needs_grad_[inputs_[k]] = needs && !state_[inputs_[k]] ? 1 : 0;
  for (const auto& ins : instrs_) {
    bool any = false;
    for (auto a : args_of(ins)) any = any || needs_grad_[a] != 0;
    needs_grad_[ins.out] = any ? 1 : 0;
  }
}

template <class T>
void Tape<T>::forward() {
  const auto busy = replay_guard("replay");
  run_forward();
  if (const std::int64_t g = first_failed_guard(); g >= 0) health_.guard_failed("replay", guards_[g], static_cast<std::size_t>(g));
}

namespace detail {
void ReplayHealth::guard_failed(const char* op, const Guard& g, std::size_t i) {
  try {
    fail_guard(op, g, i);
  } catch (const Error& e) {
    why_ = e.what();
    throw;
  }
}

void ReplayHealth::check(const char* op, const char* subject) const {
  if (why_.empty()) return;
  fail(op, fmt::format("the {}'s last replay failed ({}) and left its values half-updated expected a successful "
                       "replay first; hint: replay again on valid inputs (gradient(inputs...) or forward(inputs...))",
                       subject, why_));
}
}  // namespace detail

template <class T>
void Tape<T>::check_computable(const char* op) const {
  if (structure_only_)
    fail(op, "the tape was loaded for its structure only (LoadOptions::replay = false) and has no values expected a "
             "tape loaded with replay; hint: load it again with replay on (tapedump --profile, --check-grad)");
}

template <class T>
void Tape<T>::run_forward() {
  const auto busy = replay_guard("replay");
  check_computable("replay");
  health_.run([&] { run_instructions(); });
}

template <class T>
void Tape<T>::run_instructions() {
  std::vector<double>* seconds =
      profile_ ? detail::start_pass(&profile_->forward_seconds, &profile_->forward_passes, instrs_.size()) : nullptr;
  for (std::size_t i = 0; i < instrs_.size(); ++i) {
    const Instr<T>& ins = instrs_[i];
    scratch_in_.clear();
    for (auto a : args_of(ins)) scratch_in_.push_back(&values_[a]);
    try {
      timed(seconds, i, [&] {
        ins.op->forward({ins.params.get(), scratch_in_, values_[ins.out], {saved_.data() + ins.saved_begin, ins.n_saved}});
      });
    } catch (const Error& e) {
      throw e.with_site(ins.where);
    }
  }
}

// ---- guards (Note [Guards]) ---------------------------------------------------------

const char* to_string(Compare c) {
  switch (c) {
    case Compare::greater: return ">";
    case Compare::greater_equal: return ">=";
    case Compare::less: return "<";
    case Compare::less_equal: return "<=";
    case Compare::equal: return "==";
    case Compare::not_equal: return "!=";
  }
  return "?";
}

namespace {
template <class T>
bool compare(Compare c, T a, T b) {
  switch (c) {
    case Compare::greater: return a > b;
    case Compare::greater_equal: return a >= b;
    case Compare::less: return a < b;
    case Compare::less_equal: return a <= b;
    case Compare::equal: return a == b;
    case Compare::not_equal: return a != b;
  }
  return false;
}
}  // namespace

template <class T>
bool evaluate_guard(const Guard& g, const Array<T>& lhs, const Array<T>* rhs) {
  // rhs: absent (the scalar), one element (broadcast), or lhs's shape.
  auto right = [&](std::int64_t i) {
    if (!rhs) return static_cast<T>(g.scalar);
    return rhs->size() == 1 ? rhs->data()[0] : rhs->data()[i];
  };
  if (g.kind == GuardKind::element) return compare(g.compare, lhs.data()[g.element], right(g.element));
  const bool want_all = g.kind == GuardKind::all;
  for (std::int64_t i = 0; i < lhs.size(); ++i)
    if (compare(g.compare, lhs.data()[i], right(i)) != want_all) return !want_all;
  return want_all;
}

template <class T>
bool Tape<T>::evaluate(const Guard& g) const {
  return evaluate_guard(g, values_[g.lhs], g.rhs == kNoSlot ? nullptr : &values_[g.rhs]);
}

template <class T>
void Tape<T>::check_guard(const Guard& g) const {
  if (g.lhs >= values_.size() || (g.rhs != kNoSlot && g.rhs >= values_.size()))
    fail("guard", fmt::format("slots {} and {} expected below {}", g.lhs, g.rhs, values_.size()));
  const Array<T>& lhs = values_[g.lhs];
  if (g.rhs != kNoSlot && values_[g.rhs].size() != 1 && !(values_[g.rhs].shape() == lhs.shape()))
    fail("guard", fmt::format("compares shape {} with shape {} expected equal shapes or a one-element right side; "
                              "hint: reduce or broadcast explicitly first",
                              to_string(lhs.shape()), to_string(values_[g.rhs].shape())));
  if (g.kind == GuardKind::element && (g.element < 0 || g.element >= lhs.size()))
    fail("guard", fmt::format("element {} of a value of {} elements expected an index inside it", g.element, lhs.size()));
}

template <class T>
bool Tape<T>::add_guard(Guard g) {
  check_guard(g);
  g.expected = evaluate(g);
  guards_.push_back(g);
  return g.expected;
}

template <class T>
void Tape<T>::add_recorded_guard(const Guard& g) {
  check_guard(g);
  guards_.push_back(g);
}

template <class T>
std::int64_t Tape<T>::first_failed_guard() const {
  for (std::size_t i = 0; i < guards_.size(); ++i)
    if (evaluate(guards_[i]) != guards_[i].expected) return static_cast<std::int64_t>(i);
  return -1;
}

template <class T>
void Tape<T>::note_unguarded_read(const std::source_location& where) {
  if (unguarded_reads_++ == 0) first_unguarded_read_ = where;
}

std::string describe(const Guard& g) {
  const std::string rhs = g.rhs == ~std::uint32_t{0} ? fmt::format("{}", g.scalar) : fmt::format("%{}", g.rhs);
  if (g.kind == GuardKind::element) return fmt::format("%{}[{}] {} {}", g.lhs, g.element, to_string(g.compare), rhs);
  return fmt::format("{}(%{} {} {})", g.kind == GuardKind::any ? "any" : "all", g.lhs, to_string(g.compare), rhs);
}

void fail_guard(const char* op, const Guard& g, std::size_t i) {
  const std::string test = describe(g);
  throw Error(op,
              fmt::format("guard {} ({}) was {} when recorded and is {} for these inputs expected the recorded "
                          "control flow; hint: record again for these inputs, or let the tape re-record: "
                          "tape.set_guard_policy(tg::GuardPolicy::rerecord)",
                          i, test, g.expected, !g.expected),
              site_string(g.where));
}

template bool evaluate_guard(const Guard&, const Array<float>&, const Array<float>*);
template bool evaluate_guard(const Guard&, const Array<double>&, const Array<double>*);

template <class T>
void Tape<T>::reverse(const Array<T>& seed) {
  const auto busy = replay_guard("Tape::reverse");
  check_computable("Tape::reverse");
  check_usable("Tape::reverse");
  if (output_ == kNoSlot) fail("Tape::reverse", "the tape has no output; hint: record a function that returns a Tracked value");
  if (!(seed.shape() == values_[output_].shape()))
    fail("Tape::reverse", fmt::format("seed shape {} differs from the output shape {} they must match",
                                     to_string(seed.shape()), to_string(values_[output_].shape())));
  adjoints_.resize(values_.size());
  adjoint_live_.assign(values_.size(), 0);
  detail::AdjointSlots<T> slots{adjoints_, adjoint_live_, values_};
  slots.claim(output_) = seed;
  std::vector<double>* seconds =
      profile_ ? detail::start_pass(&profile_->pullback_seconds, &profile_->reverse_passes, instrs_.size()) : nullptr;
  for (std::size_t i = instrs_.size(); i-- > 0;) {
    const Instr<T>& ins = instrs_[i];
    if (!adjoint_live_[ins.out] || !needs_grad_[ins.out]) continue;
    try {
      timed(seconds, i, [&] {  // zeroing the input adjoints counts as the pullback's time
        scratch_in_.clear();
        scratch_adj_.clear();
        for (auto a : args_of(ins)) scratch_in_.push_back(&values_[a]);
        const std::uint32_t assign = slots.inputs(*ins.op, args_of(ins), needs_grad_, scratch_adj_);
        ins.op->pullback({ins.params.get(), scratch_in_, values_[ins.out], adjoints_[ins.out], scratch_adj_,
                           {saved_.data() + ins.saved_begin, ins.n_saved}, assign});
      });
    } catch (const Error& e) {
      throw e.with_site(ins.where);
    }
  }
}

template <class T>
Array<T> Tape<T>::adjoint(std::uint32_t slot) const {
  if (slot < adjoint_live_.size() && adjoint_live_[slot]) return adjoints_[slot];
  return Array<T>::zeros(values_[slot].shape());
}

template <class T>
void Tape<T>::adjoint_into(std::uint32_t slot, Array<T>& out) const {
  if (slot < adjoint_live_.size() && adjoint_live_[slot]) {
    out = adjoints_[slot];
  } else {
    if (!(out.shape() == values_[slot].shape())) out = Array<T>(values_[slot].shape());
    out.fill(T(0));
  }
}

template class Tape<float>;
template class Tape<double>;

}  // namespace tg
