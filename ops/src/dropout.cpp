// ============================================================================
// dropout: a mask drawn from a counter-based generator keyed by the State leaf
// (seed, step) (kernels/dropout.hpp). Forward: x * mask / (1 - p), then the
// key's step advances; pullback: the same mask, drawn again from the key the
// forward used (saved, two numbers), times the output adjoint.
// ============================================================================
#include "tapegrad/ops/dropout.hpp"

#include "builtin_ops.hpp"
#include "op_table.hpp"

#include <cmath>

#include <fmt/format.h>

#include "tapegrad/autodiff/record.hpp"
#include "tapegrad/kernels/dropout.hpp"

namespace tg::ops {

template <class T>
const OpInfo<T>& dropout_mask_op();

namespace {

struct DropoutOpParams : OpParams {
  double p = 0.5;
  bool channels = false;
  std::int64_t back = 0;  // dropout_mask: the mask of this many steps before the key's (Note [Dropout's recorded pullback])
};

void check_p(double p) {
  if (!(p >= 0 && p < 1)) fail("dropout", fmt::format("p ({}) expected a probability in [0, 1); hint: p = 1 drops everything", p));
}

// Whether dropout(x, p) with these params is the identity (p = 0, evaluation); checks p first.
bool is_identity(double p, const DropoutParams& params, const std::source_location& where) {
  try {
    check_p(p);
  } catch (const Error& e) {
    throw e.with_site(where);
  }
  return p == 0 || !params.training;
}

Shape dropout_shape(const DropoutOpParams& p, std::span<const Shape* const> s) {
  check_p(p.p);
  if (!(*s[1] == Shape{2}))
    fail("dropout", fmt::format("key has shape {} expected (2): (seed, step); hint: make it with tg::dropout_key<T>(seed)",
                                to_string(*s[1])));
  if (p.channels && s[0]->rank() < 2)
    fail("dropout", fmt::format("x has shape {} expected (N, C, spatial...) for channel dropout", to_string(*s[0])));
  return *s[0];
}

// Steps wrap where T stops holding integers exactly (Note [Counter-based masks]).
template <class T>
constexpr double step_period() {
  return std::ldexp(1.0, std::numeric_limits<T>::digits);
}

// A key element as a counter: its integer part, clamped to [0, 2^62] (NaN: 0).
template <class T>
std::uint64_t counter_of(T v) {
  const double d = std::floor(static_cast<double>(v));
  return d >= 0 ? static_cast<std::uint64_t>(std::min(d, 4.6e18)) : 0;
}

// The step `back` steps before `step`, on the key's cycle.
template <class T>
std::uint64_t steps_before(std::uint64_t step, std::uint64_t back) {
  const auto period = static_cast<std::uint64_t>(step_period<T>());
  return (step % period + period - back % period) % period;
}

template <class T>
kernels::DropoutMask mask_of(const DropoutOpParams& p, const Shape& x, const T* key) {
  kernels::DropoutMask m;
  m.seed = counter_of(key[0]);
  m.step = steps_before<T>(counter_of(key[1]), static_cast<std::uint64_t>(p.back));
  m.p = p.p;
  if (p.channels) {
    m.plane = 1;
    for (std::size_t d = 2; d < x.rank(); ++d) m.plane *= x[d];
  }
  return m;
}

// Print, save and load of dropout's params; dropout_mask's (with_back) also carry `back`.
template <class T>
void param_hooks(OpInfo<T>& r, bool with_back) {
  r.print_params = [with_back](const OpParams* params) {
    const auto& p = params_as<DropoutOpParams>(params);
    return fmt::format("p={}{}{}", p.p, p.channels ? " channels" : "", with_back ? fmt::format(" back={}", p.back) : std::string());
  };
  r.save_params = [with_back](const OpParams* params, ParamWriter& w) {
    const auto& p = params_as<DropoutOpParams>(params);
    w.f64(p.p);
    w.boolean(p.channels);
    if (with_back) w.i64(p.back);
  };
  r.load_params = [with_back](ParamReader& in) {
    auto p = std::make_shared<DropoutOpParams>();
    p->p = in.f64("p");
    p->channels = in.boolean("channels");
    if (!with_back) return p;
    const std::size_t at = in.offset();
    p->back = in.i64("back");
    if (p->back < 0) in.fail_at("back", at, fmt::format("{} steps back expected a count >= 0", p->back));
    return p;
  };
}

// Note [Dropout's recorded pullback]: dropout's pullback multiplies by the
// mask its forward drew, from the key as it was before the forward advanced
// it. Recorded, it is dropout_mask(gy, key): the same mask applied to gy,
// drawn from the key `back` steps before its value where the pullback runs.
// `back` is fixed at recording, the steps the key advanced since the forward
// (this dropout's and any later one's on the same key); every replay runs the
// same instructions in the same order, so it holds on every replay. The mask
// is diagonal: dropout_mask is its own pullback. Rejected: y / x as the mask,
// which is 0/0 wherever x is 0.
template <class T>
void record_dropout_pullback(const RecordedPullbackCall<T>& c) {
  if (!c.wants(0)) return;
  const Tape<T>& tape = *c.output.tape();
  std::size_t i = tape.num_instructions();  // the dropout instruction: the one that wrote the output
  do --i;
  while (tape.instruction(i).out != c.output.slot());
  const T* used = tape.saved_of(tape.instruction(i))[0].data();
  const T* now = tape.value(c.input(1).slot()).data();
  auto params = std::make_shared<DropoutOpParams>(params_as<DropoutOpParams>(c.params));
  params->back = static_cast<std::int64_t>(steps_before<T>(counter_of(now[1]), counter_of(used[1])));  // now - used, on the cycle
  const auto site = std::source_location::current();
  c.contribute(0, record_op(dropout_mask_op<T>(), std::move(params), {Operand<T>(c.output_adjoint, site), Operand<T>(c.input(1), site)}, site));
}

template <class T>
OpInfo<T> dropout_mask_row() {
  OpInfo<T> r;
  r.name = "dropout_mask";
  r.arity = 2;  // values, key (read, not advanced)
  r.flags = kLinear | kPullbackIgnoresOutput;
  r.shape = [](const OpParams* p, std::span<const Shape* const> s) { return dropout_shape(params_as<DropoutOpParams>(p), s); };
  r.forward = [](const ForwardCall<T>& c) {
    const Array<T>& x = *c.inputs[0];
    kernels::dropout_apply(mask_of(params_as<DropoutOpParams>(c.params), x.shape(), c.inputs[1]->data()), x.data(), x.size(),
                           c.output.data(), false);
  };
  r.pullback = [](const PullbackCall<T>& c) {
    if (!c.input_adjoints[0]) return;
    const Array<T>& dy = c.output_adjoint;
    kernels::dropout_apply(mask_of(params_as<DropoutOpParams>(c.params), dy.shape(), c.inputs[1]->data()), dy.data(), dy.size(),
                           c.input_adjoints[0]->data(), true);
  };
  r.record_pullback = [](const RecordedPullbackCall<T>& c) {
    if (!c.wants(0)) return;
    const auto site = std::source_location::current();
    c.contribute(0, record_op(dropout_mask_op<T>(), std::make_shared<DropoutOpParams>(params_as<DropoutOpParams>(c.params)),
                              {Operand<T>(c.output_adjoint, site), Operand<T>(c.input(1), site)}, site));
  };
  Fusion<T> fusion;
  fusion.pullback_reads_input = [](const OpParams*, std::size_t k) { return k == 1; };
  r.fusion = std::make_shared<const Fusion<T>>(std::move(fusion));
  param_hooks(r, /*with_back=*/true);
  return r;
}

template <class T>
OpInfo<T> dropout_row() {
  OpInfo<T> r;
  r.name = "dropout";
  r.arity = 2;  // x, key
  r.n_saved = 1;  // the key this forward used
  r.state_inputs = 1u << 1;
  r.flags = kPullbackIgnoresOutput;
  r.shape = [](const OpParams* p, std::span<const Shape* const> s) { return dropout_shape(params_as<DropoutOpParams>(p), s); };
  r.forward = [](const ForwardCall<T>& c) {
    const auto& p = params_as<DropoutOpParams>(c.params);
    Array<T>& key = c.state(1);
    if (c.saved[0].size() != 2) c.saved[0] = Array<T>({2});
    std::copy(key.begin(), key.end(), c.saved[0].data());
    const Array<T>& x = *c.inputs[0];
    kernels::dropout_apply(mask_of(p, x.shape(), key.data()), x.data(), x.size(), c.output.data(), false);
    key.data()[1] = static_cast<T>(std::fmod(std::floor(static_cast<double>(key.data()[1])) + 1, step_period<T>()));
  };
  r.pullback = [](const PullbackCall<T>& c) {
    if (!c.input_adjoints[0]) return;
    const auto& p = params_as<DropoutOpParams>(c.params);
    const Array<T>& dy = c.output_adjoint;
    kernels::dropout_apply(mask_of(p, dy.shape(), c.saved[0].data()), dy.data(), dy.size(), c.input_adjoints[0]->data(), true);
  };
  r.record_pullback = &record_dropout_pullback<T>;
  Fusion<T> fusion;
  fusion.pullback_reads_input = [](const OpParams*, std::size_t) { return false; };
  r.fusion = std::make_shared<const Fusion<T>>(std::move(fusion));
  param_hooks(r, /*with_back=*/false);
  return r;
}

std::shared_ptr<DropoutOpParams> make_params(double p, const DropoutParams& u) {
  auto out = std::make_shared<DropoutOpParams>();
  out->p = p;
  out->channels = u.channels;
  return out;
}

}  // namespace

// The family's op table (Note [Op tables]).
#define TG_DROPOUT_ROWS(X) X(dropout) X(dropout_mask)
TG_OP_TABLE(dropout, TG_DROPOUT_ROWS)

template <class T>
Tracked<T> dropout_tracked(const Tracked<T>& x, double p, const Tracked<T>& key, const DropoutParams& params,
                           const std::source_location& where) {
  if (is_identity(p, params, where)) return x;  // nothing recorded
  const Operand<T> operands[] = {Operand<T>(x, where), Operand<T>(key, where)};
  return record_op(dropout_op<T>(), make_params(p, params), std::span<const Operand<T>>(operands), where);
}
template <class T>
Array<T> dropout_eval(const Array<T>& x, double p, const Array<T>& key, const DropoutParams& params,
                      const std::source_location& where) {
  if (is_identity(p, params, where)) return x;
  const Array<T>* inputs[] = {&x, &key};
  return evaluate_op(dropout_op<T>(), make_params(p, params).get(), std::span<const Array<T>* const>(inputs), where);
}

template <class T>
Tracked<T> dropout_mask_tracked(const Tracked<T>& values, double p, const Tracked<T>& key, std::int64_t back,
                                const DropoutParams& params, const std::source_location& where) {
  auto q = make_params(p, params);
  if (back < 0) throw Error("dropout_mask", fmt::format("{} steps back expected a count >= 0", back)).with_site(where);
  q->back = back;
  return record_op(dropout_mask_op<T>(), std::move(q), {Operand<T>(values, where), Operand<T>(key, where)}, where);
}
template Tracked<float> dropout_mask_tracked(const Tracked<float>&, double, const Tracked<float>&, std::int64_t, const DropoutParams&,
                                             const std::source_location&);
template Tracked<double> dropout_mask_tracked(const Tracked<double>&, double, const Tracked<double>&, std::int64_t, const DropoutParams&,
                                              const std::source_location&);

template Tracked<float> dropout_tracked(const Tracked<float>&, double, const Tracked<float>&, const DropoutParams&, const std::source_location&);
template Tracked<double> dropout_tracked(const Tracked<double>&, double, const Tracked<double>&, const DropoutParams&, const std::source_location&);
template Array<float> dropout_eval(const Array<float>&, double, const Array<float>&, const DropoutParams&, const std::source_location&);
template Array<double> dropout_eval(const Array<double>&, double, const Array<double>&, const DropoutParams&, const std::source_location&);

}  // namespace tg::ops
