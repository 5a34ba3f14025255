// ============================================================================
// pad: border extension as an op. Forward: kernels::border_pad; pullback: its
// adjoint, onto the array and onto the fill value (kernels::border_pad_adjoint).
// ============================================================================
#include "tapegrad/ops/pad.hpp"

#include "builtin_ops.hpp"
#include "op_table.hpp"

#include <fmt/format.h>

#include "tapegrad/autodiff/record.hpp"
#include "tapegrad/kernels/filter.hpp"
#include "assigned.hpp"
#include "recorded_pullbacks.hpp"

namespace tg::ops {

template <class T>
const OpInfo<T>& pad_op();

namespace {

struct PadOpParams : OpParams {
  PadParams user;
  std::vector<std::int64_t> lo, hi;  // resolved: one per dim of the array
};

PadOpParams make_params(const PadParams& user) {
  PadOpParams p;
  p.user = user;
  return p;
}

// One list per side, over all dims (leading dims 0), from the user's trailing-dim lists.
Plan plan(const PadOpParams& given, std::span<const Shape* const> s) {
  auto resolved = std::make_shared<PadOpParams>(given);
  PadOpParams& p = *resolved;
  const PadParams& u = p.user;
  if (s.size() != 1 && s.size() != 2) fail("pad", fmt::format("got {} inputs expected (x) or (x, fill value)", s.size()));
  const Shape& x = *s[0];
  if (s.size() == 2) {
    if (s[1]->size() != 1) fail("pad", fmt::format("fill value has shape {} expected one element", to_string(*s[1])));
    if (u.border.mode != BorderMode::fill)
      fail("pad", fmt::format("a fill value was given with border {} expected border fill", kernels::to_string(u.border.mode)));
  }
  if (static_cast<int>(u.border.mode) < 0 || static_cast<int>(u.border.mode) > static_cast<int>(BorderMode::circular))
    fail("pad", fmt::format("border mode ({}) is not a BorderMode expected fill, replicate, reflect, symmetric or circular",
                            static_cast<int>(u.border.mode)));
  const std::size_t k = std::max({u.widths.size(), u.lo.size(), u.hi.size()});
  if (k > x.rank())
    fail("pad", fmt::format("{} padded dims for an array of shape {} expected at most its rank ({}); hint: the lists "
                            "pad the trailing dims",
                            k, to_string(x), x.rank()));
  for (const auto* list : {&u.widths, &u.lo, &u.hi})
    if (!list->empty() && list->size() != k)
      fail("pad", fmt::format("widths [{}], lo [{}] and hi [{}] have different lengths expected one length (the "
                              "number of trailing dims padded)",
                              fmt::join(u.widths, ","), fmt::join(u.lo, ","), fmt::join(u.hi, ",")));
  p.lo.assign(x.rank(), 0);
  p.hi.assign(x.rank(), 0);
  Shape out;
  for (std::size_t d = 0; d < x.rank(); ++d) {
    if (d + k >= x.rank()) {
      const std::size_t j = d + k - x.rank();
      const std::int64_t w = u.widths.empty() ? 0 : u.widths[j];
      p.lo[d] = u.lo.empty() ? w : u.lo[j];
      p.hi[d] = u.hi.empty() ? w : u.hi[j];
      if (p.lo[d] < 0 || p.hi[d] < 0 || p.lo[d] > (std::int64_t{1} << 40) || p.hi[d] > (std::int64_t{1} << 40))
        fail("pad", fmt::format("widths ({}, {}) along dim {} expected non-negative sizes", p.lo[d], p.hi[d], d));
      if ((p.lo[d] || p.hi[d]) && x[d] == 0 && u.border.mode != BorderMode::fill)
        fail("pad", fmt::format("array {} is empty along dim {} expected at least one element to extend with border {}; "
                                "hint: use border fill",
                                to_string(x), d, kernels::to_string(u.border.mode)));
    }
    out.push_back(x[d] + p.lo[d] + p.hi[d]);
  }
  checked_size(out, "pad");
  return {std::move(out), std::move(resolved)};
}

template <class T>
T fill_value(const PadOpParams& p, std::span<const Array<T>* const> inputs) {
  return inputs.size() == 2 ? inputs[1]->data()[0] : static_cast<T>(p.user.border.value);
}

template <class T>
OpInfo<T> pad_row() {
  OpInfo<T> r;
  r.name = "pad";
  r.arity = kVariadic;
  r.flags = kPullbackCanAssign;  // the array's adjoint is written, not zeroed and added to
  r.transposable = [](const OpParams* params) {  // with one input: a copying border, or fill 0 (else affine)
    const auto& p = params_as<PadOpParams>(params);
    return p.user.border.mode != BorderMode::fill || p.user.border.value == 0;
  };
  r.plan = [](const OpParams* p, std::span<const Shape* const> s) { return plan(params_as<PadOpParams>(p), s); };
  r.forward = [](const ForwardCall<T>& c) {
    const auto& p = params_as<PadOpParams>(c.params);
    const Array<T>& x = *c.inputs[0];
    kernels::border_pad(x.data(), x.shape(), std::span<const std::int64_t>(p.lo), std::span<const std::int64_t>(p.hi),
                        p.user.border.mode, fill_value(p, c.inputs), c.output.data());
  };
  r.pullback = [](const PullbackCall<T>& c) {
    const auto& p = params_as<PadOpParams>(c.params);
    Array<T>* gx = c.input_adjoints[0];
    T* gfill = c.input_adjoints.size() == 2 && c.input_adjoints[1] ? c.input_adjoints[1]->data() : nullptr;
    if (!gx && !gfill) return;
    if (gfill) zero_if_assigned(c, 1);
    kernels::border_pad_adjoint(c.output_adjoint.data(), c.inputs[0]->shape(), std::span<const std::int64_t>(p.lo),
                                std::span<const std::int64_t>(p.hi), p.user.border.mode, gx ? gx->data() : nullptr, gfill,
                                /*accumulate=*/!c.assigns(0));
  };
  // With the fill border the pad is x placed in a frame of the fill value: the
  // adjoint of x is the output adjoint's inner block (slices, whose own
  // adjoints are pads with zeros), and the fill value's the sum of the rest.
  // The other borders are linear in x, their adjoint the fold of the copies
  // back (linear_adjoint, Note [Linear adjoints]).
  r.record_pullback = [](const RecordedPullbackCall<T>& c) {
    const auto& p = params_as<PadOpParams>(c.params);
    if (p.user.border.mode != BorderMode::fill) return recorded_by_adjoint<T, PadOpParams>(&pad_op<T>)(c);
    Tracked<T> inner = c.output_adjoint;
    for (std::size_t d = 0; d < p.lo.size(); ++d)
      if (p.lo[d] != 0 || p.hi[d] != 0)
        inner = tg::slice(inner, static_cast<std::int64_t>(d), p.lo[d], p.lo[d] + c.input(0).shape()[d]);
    if (c.wants(0)) c.contribute(0, inner);
    if (c.wants(1)) c.contribute(1, tg::reshape(tg::sum(c.output_adjoint) - tg::sum(inner), c.input(1).shape()));
  };
  r.print_params = [](const OpParams* params) {
    const auto& p = params_as<PadOpParams>(params);
    std::string border = kernels::to_string(p.user.border.mode);
    if (p.user.border.mode == BorderMode::fill) border += fmt::format("({})", p.user.border.value);
    return fmt::format("lo=[{}] hi=[{}] border={}", fmt::join(p.lo, ","), fmt::join(p.hi, ","), border);
  };
  r.save_params = [](const OpParams* params, ParamWriter& w) {
    const auto& p = params_as<PadOpParams>(params);
    w.list(p.user.widths);
    w.list(p.user.lo);
    w.list(p.user.hi);
    w.enumeration(p.user.border.mode);
    w.f64(p.user.border.value);
  };
  r.load_params = [](ParamReader& in) {
    PadParams u;
    u.widths = in.list("widths");
    u.lo = in.list("lo");
    u.hi = in.list("hi");
    u.border.mode = in.enumeration("border", BorderMode::circular);
    u.border.value = in.f64("fill value");
    return std::make_shared<PadOpParams>(make_params(u));
  };
  return r;
}

}  // namespace

// The family's op table (Note [Op tables]).
#define TG_PAD_ROWS(X) X(pad)
TG_OP_TABLE(pad, TG_PAD_ROWS)

template <class T>
Tracked<T> pad_tracked(std::span<const Operand<T>> operands, const PadParams& p, const std::source_location& where) {
  return record_op(pad_op<T>(), std::make_shared<PadOpParams>(make_params(p)), operands, where);
}
template <class T>
Array<T> pad_eval(std::span<const Array<T>* const> inputs, const PadParams& p, const std::source_location& where) {
  const PadOpParams params = make_params(p);
  return evaluate_op(pad_op<T>(), &params, inputs, where);
}

template Tracked<float> pad_tracked(std::span<const Operand<float>>, const PadParams&, const std::source_location&);
template Tracked<double> pad_tracked(std::span<const Operand<double>>, const PadParams&, const std::source_location&);
template Array<float> pad_eval(std::span<const Array<float>* const>, const PadParams&, const std::source_location&);
template Array<double> pad_eval(std::span<const Array<double>* const>, const PadParams&, const std::source_location&);

}  // namespace tg::ops
