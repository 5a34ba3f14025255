// ============================================================================
// linear_adjoint: the adjoint of a linear one-input op (OpInfo::transposable), as an
// op of its own, so that the op's recorded pullback is one instruction and
// differentiates again (Note [Linear adjoints]).
// ============================================================================
#include "builtin_ops.hpp"
#include "op_table.hpp"
#include "recorded_pullbacks.hpp"

#include <fmt/format.h>

#include "tapegrad/autodiff/record.hpp"
#include "tapegrad/kernels/parallel.hpp"

namespace tg::ops {

// Note [Linear adjoints]: for a linear op A (meanpool, upsample, a pad with a
// copying border, a stepped slice), A's pullback is the map g -> A^T g and the
// pullback of A^T is A again. linear_adjoint(g) of A runs A's own pullback
// kernel as its forward and A's forward kernel as its pullback, so A's recorded
// pullback is one instruction whose recorded pullback is one A: any order of
// derivative costs what the first-order kernels cost. A's pullback must not
// read its input's values, its output or saved buffers (OpInfo::transposable): the
// forward hands it arrays that carry shapes only. Rejected: a second, adjoint
// op per linear op (meanpool_spread, upsample_adjoint, ...), each with its own
// plan, print and save/load that repeat the forward op's.
template <class T>
struct LinearAdjointParams : OpParams {
  const OpInfo<T>* of = nullptr;
  std::shared_ptr<const OpParams> of_params;  // A's params (resolved by plan)
  Shape input_shape;   // A's input: linear_adjoint's output
  Shape output_shape;  // A's output: linear_adjoint's input
};

namespace {

constexpr const char* kName = "linear_adjoint";

template <class T>
const LinearAdjointParams<T>& params_of(const OpParams* p) {
  return params_as<LinearAdjointParams<T>>(p);
}

template <class T>
Plan plan(const LinearAdjointParams<T>& given, std::span<const Shape* const> s) {
  if (!given.of || !given.of->transposable || !given.of->transposable(given.of_params.get()))
    fail(kName, fmt::format("op '{}' with these params is not transposable expected an op linear in its one input "
                            "(meanpool, upsample, adaptive_meanpool, slice, pad with a copying border or fill 0)",
                            given.of ? given.of->name : std::string("(none)")));
  auto resolved = std::make_shared<LinearAdjointParams<T>>(given);
  const Shape* in[] = {&given.input_shape};
  if (given.of->plan) {
    Plan of_plan = given.of->plan(given.of_params.get(), in);
    resolved->output_shape = std::move(of_plan.output);
    if (of_plan.resolved) resolved->of_params = std::move(of_plan.resolved);
  } else {
    resolved->output_shape = given.of->shape(given.of_params.get(), in);
  }
  if (!(*s[0] == resolved->output_shape))
    fail(kName, fmt::format("adjoint has shape {} expected {} ({}'s output for input {})", to_string(*s[0]),
                            to_string(resolved->output_shape), given.of->name, to_string(given.input_shape)));
  return {given.input_shape, std::move(resolved)};
}

template <class T>
OpInfo<T> linear_adjoint_row() {
  OpInfo<T> r;
  r.name = kName;
  r.arity = 1;
  r.n_saved = 1;  // the pullback's workspace when it adds
  r.flags = kLinear | kPullbackIgnoresOutput | kPullbackCanAssign;
  r.plan = [](const OpParams* p, std::span<const Shape* const> s) { return plan(params_of<T>(p), s); };
  // A's pullback into the output; A's input and output are shapes only (OpInfo::transposable).
  r.forward = [](const ForwardCall<T>& c) {
    const auto& p = params_of<T>(c.params);
    const Array<T> input_shape = Array<T>::borrowed(p.input_shape, nullptr);
    const Array<T> output_shape = Array<T>::borrowed(p.output_shape, nullptr);
    const bool assign = (p.of->flags & kPullbackCanAssign) != 0;
    if (!assign) c.output.fill(T(0));
    const Array<T>* inputs[] = {&input_shape};
    Array<T>* adjoints[] = {&c.output};
    p.of->pullback(PullbackCall<T>{p.of_params.get(), inputs, output_shape, *c.inputs[0], adjoints, {}, assign ? 1u : 0u});
  };
  // A's forward on the output adjoint, written in place or into the workspace and added.
  r.pullback = [](const PullbackCall<T>& c) {
    if (!c.input_adjoints[0]) return;
    const auto& p = params_of<T>(c.params);
    Array<T>& adjoint = *c.input_adjoints[0];
    Array<T>& target = c.assigns(0) ? adjoint : c.saved[0];
    if (!(target.shape() == adjoint.shape())) target = Array<T>::uninitialized(adjoint.shape());
    const Array<T>* inputs[] = {&c.output_adjoint};
    p.of->forward(ForwardCall<T>{p.of_params.get(), inputs, target, {}});
    if (&target == &adjoint) return;
    T* out = adjoint.data();
    const T* add = target.data();
    kernels::parallel_chunks(adjoint.size(), [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t i = begin; i < end; ++i) out[i] += add[i];
    });
  };
  r.record_pullback = [](const RecordedPullbackCall<T>& c) {
    if (!c.wants(0)) return;
    const auto& p = params_of<T>(c.params);
    const auto site = std::source_location::current();
    c.contribute(0, record_op(*p.of, p.of_params, {Operand<T>(c.output_adjoint, site)}, site));
  };
  Fusion<T> fusion;
  fusion.pullback_reads_input = [](const OpParams*, std::size_t) { return false; };
  r.fusion = std::make_shared<const Fusion<T>>(std::move(fusion));
  r.print_params = [](const OpParams* params) {
    const auto& p = params_of<T>(params);
    const std::string inner = p.of->print_params ? p.of->print_params(p.of_params.get()) : std::string();
    return fmt::format("of={} input={}{}{}", p.of->name, to_string(p.input_shape), inner.empty() ? "" : " ", inner);
  };
  r.save_params = [](const OpParams* params, ParamWriter& w) {
    const auto& p = params_of<T>(params);
    w.string(p.of->name);
    w.list(std::span<const std::int64_t>(p.input_shape.data(), p.input_shape.rank()));
    if (p.of->save_params) p.of->save_params(p.of_params.get(), w);
  };
  r.load_params = [](ParamReader& in) {
    auto p = std::make_shared<LinearAdjointParams<T>>();
    const std::size_t at = in.offset();
    const std::string name = in.string("of");
    p->of = Registry<T>::find(name);
    if (!p->of || !p->of->transposable)
      in.fail_at("of", at, fmt::format("op '{}' {} expected a transposable op", name, p->of ? "is not transposable" : "is not registered"));
    const std::vector<std::int64_t> dims = in.list("input shape");
    p->input_shape = Shape(std::span<const std::int64_t>(dims));
    if (p->of->load_params) p->of_params = p->of->load_params(in);
    return p;
  };
  return r;
}

}  // namespace

// The family's op table (Note [Op tables]).
#define TG_LINEAR_ADJOINT_ROWS(X) X(linear_adjoint)
TG_OP_TABLE(linear_adjoint, TG_LINEAR_ADJOINT_ROWS)

template <class T>
Tracked<T> record_linear_adjoint(const OpInfo<T>& of, std::shared_ptr<const OpParams> of_params, const Shape& input_shape,
                                 const Tracked<T>& g, const std::source_location& where) {
  auto p = std::make_shared<LinearAdjointParams<T>>();
  p->of = &of;
  p->of_params = std::move(of_params);
  p->input_shape = input_shape;
  return record_op(linear_adjoint_op<T>(), std::move(p), {Operand<T>(g, where)}, where);
}
template Tracked<float> record_linear_adjoint(const OpInfo<float>&, std::shared_ptr<const OpParams>, const Shape&,
                                              const Tracked<float>&, const std::source_location&);
template Tracked<double> record_linear_adjoint(const OpInfo<double>&, std::shared_ptr<const OpParams>, const Shape&,
                                               const Tracked<double>&, const std::source_location&);

}  // namespace tg::ops
