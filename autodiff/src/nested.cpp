// The recorded reverse pass (Note [Recorded pullbacks], registry.hpp): the
// reverse pass of a tg::gradient called inside a recording, recorded on that
// recording's tape as the ops' record_pullback hooks give it.
#include "tapegrad/autodiff/nested.hpp"

#include <optional>

#include <fmt/format.h>

#include "tapegrad/autodiff/record.hpp"

namespace tg::detail {
namespace {

template <class T>
const OpInfo<T>* find_adjoint_adder() {
  for (const OpInfo<T>* row : Registry<T>::rows())
    if (row->flags & kSumsAdjoints) return row;
  return nullptr;
}

template <class T>
const OpInfo<T>& adjoint_adder() {
  static const OpInfo<T>* const cached = find_adjoint_adder<T>();
  const OpInfo<T>* adder = cached ? cached : find_adjoint_adder<T>();  // registered after the first call
  if (!adder)
    fail("gradient", "no registered op sums adjoints (flag kSumsAdjoints) expected the built-in add; hint: call "
                     "tg::register_builtin_ops() or include tapegrad/tapegrad.hpp");
  return *adder;
}

// Slots that depend on a `wrt` slot through instructions [first, end).
template <class T>
std::vector<char> depends_on(const Tape<T>& tape, std::size_t first, std::span<const std::uint32_t> wrt) {
  std::vector<char> reaches(tape.num_slots(), 0);
  for (std::uint32_t s : wrt) reaches[s] = 1;
  for (std::size_t i = first; i < tape.num_instructions(); ++i) {
    const Instr<T>& ins = tape.instruction(i);
    for (std::uint32_t a : tape.args_of(ins)) reaches[ins.out] = reaches[ins.out] || reaches[a];
  }
  return reaches;
}

}  // namespace

template <class T>
std::vector<Tracked<T>> recorded_gradient(Tape<T>& tape, std::size_t first, const Tracked<T>& output,
                                          std::span<const std::uint32_t> wrt, const std::source_location& where) {
  if (output.size() != 1)
    fail("gradient", fmt::format("the function's value has shape {} expected one element; hint: reduce it (tg::sum) "
                                 "before taking a gradient inside a recording",
                                 to_string(output.shape())));
  const std::size_t end = tape.num_instructions();
  const std::vector<char> reaches = depends_on(tape, first, wrt);
  std::vector<std::optional<Tracked<T>>> adjoint(tape.num_slots());
  adjoint[output.slot()] = Tracked<T>(&tape, tape.add_constant(Array<T>::ones(output.shape())));
  auto accumulate = [&](std::uint32_t slot, const Tracked<T>& contribution) {
    if (!adjoint[slot]) adjoint[slot] = contribution;
    else adjoint[slot] = record_op(adjoint_adder<T>(), nullptr, {Operand<T>(*adjoint[slot], where), Operand<T>(contribution, where)}, where);
  };
  for (std::size_t i = end; i-- > first;) {
    const Instr<T> ins = tape.instruction(i);  // a copy: recording the pullback appends instructions
    if (!reaches[ins.out] || !adjoint[ins.out]) continue;
    const std::span<const std::uint32_t> arg_span = tape.args_of(ins);
    const std::vector<std::uint32_t> args(arg_span.begin(), arg_span.end());
    std::vector<char> wanted(args.size());
    bool any = false;
    for (std::size_t j = 0; j < args.size(); ++j) any = (wanted[j] = reaches[args[j]]) || any;
    if (!any) continue;
    if (!ins.op->record_pullback)
      fail("gradient", fmt::format("op '{}' (%{} recorded at {}) cannot be differentiated twice yet: its pullback has no "
                                   "recorded form expected only ops with one (Note [Recorded pullbacks]) between the "
                                   "arguments and the value of a gradient taken inside a recording; hint: take this "
                                   "gradient outside the recording, or report the op",
                                   ins.op->name, ins.out, site_string(ins.where)));
    std::vector<Tracked<T>> inputs;
    inputs.reserve(args.size());
    for (std::uint32_t a : args) inputs.emplace_back(&tape, a);
    std::vector<const Tracked<T>*> input_ptrs;
    for (const Tracked<T>& t : inputs) input_ptrs.push_back(&t);
    const Tracked<T> out(&tape, ins.out);
    const Tracked<T> out_adjoint = *adjoint[ins.out];
    const RecordedPullbackCall<T> call{
        ins.params.get(), input_ptrs, out, out_adjoint, wanted, [&](std::size_t j, const Tracked<T>& contribution) {
          if (j >= args.size() || !wanted[j] || contribution.shape() != inputs[j].shape())
            fail("gradient", fmt::format("op '{}''s recorded pullback gave input {} a contribution of shape {} expected "
                                         "a wanted input's shape {}; hint: a bug in the op's record_pullback",
                                         ins.op->name, j, to_string(contribution.shape()),
                                         j < args.size() ? to_string(inputs[j].shape()) : std::string("(none)")));
          accumulate(args[j], contribution);
        }};
    // Note [Pullback origins]: what the pullback appends is a step of instruction i.
    struct Origin {
      Tape<T>& tape;
      typename Tape<T>::PullbackOrigin before;
      ~Origin() { tape.set_pullback_origin(before); }
    } origin{tape, tape.set_pullback_origin({ins.out, ins.where})};
    ins.op->record_pullback(call);
  }
  std::vector<Tracked<T>> out;
  out.reserve(wrt.size());
  for (std::uint32_t s : wrt)
    out.push_back(adjoint[s] ? *adjoint[s] : Tracked<T>(&tape, tape.add_constant(Array<T>::zeros(tape.value(s).shape()))));
  return out;
}

template std::vector<Tracked<float>> recorded_gradient(Tape<float>&, std::size_t, const Tracked<float>&,
                                                       std::span<const std::uint32_t>, const std::source_location&);
template std::vector<Tracked<double>> recorded_gradient(Tape<double>&, std::size_t, const Tracked<double>&,
                                                        std::span<const std::uint32_t>, const std::source_location&);

}  // namespace tg::detail
