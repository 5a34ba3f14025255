// ============================================================================
// Reductions: sum, mean, max, min. One params struct (which axes, keepdims)
// computed and validated once at recording; forward and pullback side by side.
// ============================================================================
#include "tapegrad/ops/reduce.hpp"

#include "assigned.hpp"
#include "builtin_ops.hpp"
#include "op_table.hpp"
#include "recorded_pullbacks.hpp"

#include <fmt/format.h>

#include "tapegrad/autodiff/record.hpp"
#include "tapegrad/kernels/reduce.hpp"

namespace tg::ops {

struct ReduceParams : OpParams {
  Axes axes;      // as the user gave them, for printing
  bool all = false;  // reduce every axis
  bool keepdims = false;

  kernels::AxisMask mask(const Shape& in, const char* op) const {
    kernels::AxisMask m(in.rank(), all);
    if (all) return m;
    for (auto a : axes) {
      const std::size_t k = normalize_axis(a, in.rank(), op);
      if (m[k]) fail(op, fmt::format("axis {} given twice in [{}] each axis at most once", a, fmt::join(axes, ",")));
      m.set(k);
    }
    return m;
  }
};

namespace {

Shape reduced_shape(const Shape& in, const kernels::AxisMask& mask, bool keepdims) {
  if (keepdims) return kernels::keepdims_shape(in, mask);
  Shape out;
  for (std::size_t i = 0; i < in.rank(); ++i)
    if (!mask[i]) out.push_back(in[i]);
  return out;
}

std::int64_t reduced_count(const Shape& in, const kernels::AxisMask& mask) {
  std::int64_t n = 1;
  for (std::size_t i = 0; i < in.rank(); ++i)
    if (mask[i]) n *= in[i];
  return n;
}

enum class Kind { sum, mean, max, min };

// A max (or min) reduction's recorded pullback, as its kernel's: the adjoint
// split evenly among the elements that tie the extremum, found by comparison
// with x on the tape (Note [Masks in recorded pullbacks]). `extremum` and `g`
// have the keepdims shape.
template <class T>
Tracked<T> extremum_adjoint(const Tracked<T>& x, const Tracked<T>& extremum, const Tracked<T>& g,
                            const kernels::AxisMask& mask, bool is_max) {
  const auto site = std::source_location::current();
  const Tracked<T> gap = x - tg::broadcast_to(extremum, x.shape());
  const Operand<T> tie(T(1), site), other(T(0), site);
  const Tracked<T> ties = is_max ? if_below(gap, T(0), other, tie) : if_above(gap, T(0), other, tie);
  Axes axes;
  for (std::size_t d = 0; d < x.shape().rank(); ++d)
    if (mask[d]) axes.push_back(static_cast<std::int64_t>(d));
  return ties * tg::broadcast_to(g / tg::sum(ties, axes, true), x.shape());
}

template <class T>
OpInfo<T> reduce_family_row(const char* name, Kind kind) {
  OpInfo<T> row;
  row.name = name;
  row.arity = 1;
  // Sum and mean write every input adjoint element once; max and min zero it first (Note [Assigned adjoints]).
  row.flags = (kind == Kind::sum || kind == Kind::mean ? kLinear : kNoFlags) | kPullbackCanAssign;
  row.shape = [name, kind](const OpParams* p, std::span<const Shape* const> s) {
    const auto& rp = params_as<ReduceParams>(p);
    const auto mask = rp.mask(*s[0], name);
    if ((kind == Kind::max || kind == Kind::min || kind == Kind::mean) && reduced_count(*s[0], mask) == 0)
      fail(name, fmt::format("reducing an empty extent of shape {} has no value expected at least one element; "
                             "hint: check the input is not empty",
                             to_string(*s[0])));
    return reduced_shape(*s[0], mask, rp.keepdims);
  };
  row.print_params = [](const OpParams* p) {
    const auto& rp = params_as<ReduceParams>(p);
    if (rp.all) return rp.keepdims ? std::string("keepdims") : std::string();
    return fmt::format("axes=[{}]{}", fmt::join(rp.axes, ","), rp.keepdims ? " keepdims" : "");
  };
  row.save_params = [](const OpParams* p, ParamWriter& w) {
    const auto& rp = params_as<ReduceParams>(p);
    w.list(rp.axes);
    w.boolean(rp.all);
    w.boolean(rp.keepdims);
  };
  row.load_params = [](ParamReader& in) {
    auto p = std::make_shared<ReduceParams>();
    p->axes = in.list("axes");
    p->all = in.boolean("all");
    p->keepdims = in.boolean("keepdims");
    return p;
  };
  row.forward = [name, kind](const ForwardCall<T>& c) {
    const Array<T>& x = *c.inputs[0];
    const auto mask = params_as<ReduceParams>(c.params).mask(x.shape(), name);
    const Shape keep = kernels::keepdims_shape(x.shape(), mask);
    T* out = c.output.data();
    if (kind == Kind::sum || kind == Kind::mean) {
      c.output.fill(T(0));
      kernels::sum_accumulate(x.data(), x.shape(), out, keep);
      if (kind == Kind::mean) {
        const T scale = T(1) / static_cast<T>(reduced_count(x.shape(), mask));
        for (auto& v : c.output) v *= scale;
      }
    } else if (kind == Kind::max) {
      kernels::extremum_reduce<true>(x.data(), x.shape(), out, keep);
    } else {
      kernels::extremum_reduce<false>(x.data(), x.shape(), out, keep);
    }
  };
  row.pullback = [name, kind](const PullbackCall<T>& c) {
    const Array<T>& x = *c.inputs[0];
    Array<T>& dx = *c.input_adjoints[0];
    const auto mask = params_as<ReduceParams>(c.params).mask(x.shape(), name);
    const Shape keep = kernels::keepdims_shape(x.shape(), mask);
    if (kind == Kind::sum || kind == Kind::mean) {
      const T scale = kind == Kind::sum ? T(1) : T(1) / static_cast<T>(reduced_count(x.shape(), mask));
      kernels::broadcast_accumulate(c.output_adjoint.data(), keep, dx.data(), x.shape(), scale, c.assigns(0));
    } else {
      zero_if_assigned(c, 0);
      kernels::extremum_reduce_backward(x.data(), x.shape(), c.output.data(), c.output_adjoint.data(), keep, dx.data());
    }
  };
  row.record_pullback = [name, kind](const RecordedPullbackCall<T>& c) {
    if (!c.wants(0)) return;
    const Shape xs = c.input(0).shape();
    const auto mask = params_as<ReduceParams>(c.params).mask(xs, name);
    const Shape keep = kernels::keepdims_shape(xs, mask);
    Tracked<T> g = tg::reshape(c.output_adjoint, keep);
    if (kind == Kind::mean) g = g * (T(1) / static_cast<T>(reduced_count(xs, mask)));
    if (kind == Kind::sum || kind == Kind::mean) return c.contribute(0, tg::broadcast_to(g, xs));
    c.contribute(0, extremum_adjoint(c.input(0), tg::reshape(c.output, keep), g, mask, kind == Kind::max));
  };
  return row;
}

}  // namespace

template <class T>
OpInfo<T> sum_row() {
  return reduce_family_row<T>("sum", Kind::sum);
}
template <class T>
OpInfo<T> mean_row() {
  return reduce_family_row<T>("mean", Kind::mean);
}
template <class T>
OpInfo<T> max_row() {
  return reduce_family_row<T>("max", Kind::max);
}
template <class T>
OpInfo<T> min_row() {
  return reduce_family_row<T>("min", Kind::min);
}

// The family's op table (Note [Op tables]).
TG_OP_TABLE(reduce, TG_REDUCTIONS)

std::shared_ptr<const ReduceParams> reduce_params(const Axes* axes, bool keepdims) {
  auto p = std::make_shared<ReduceParams>();
  p->all = axes == nullptr;
  if (axes) p->axes = *axes;
  p->keepdims = keepdims;
  return p;
}


}  // namespace tg::ops

namespace tg {

#define TG_DEFINE_REDUCTION(name)                                                                          \
  template <class T>                                                                                       \
  Tracked<T> name(const Tracked<T>& x, std::source_location where) {                                       \
    return record_op(ops::name##_op<T>(), ops::reduce_params(nullptr, false), {Operand<T>(x, where)}, where); \
  }                                                                                                        \
  template <class T>                                                                                       \
  Tracked<T> name(const Tracked<T>& x, const Axes& axes, bool keepdims, std::source_location where) {      \
    return record_op(ops::name##_op<T>(), ops::reduce_params(&axes, keepdims), {Operand<T>(x, where)}, where); \
  }                                                                                                        \
  template <class T>                                                                                       \
  Array<T> name(const Array<T>& x, std::source_location where) {                                           \
    return evaluate_op(ops::name##_op<T>(), ops::reduce_params(nullptr, false).get(), {&x}, where);       \
  }                                                                                                        \
  template <class T>                                                                                       \
  Array<T> name(const Array<T>& x, const Axes& axes, bool keepdims, std::source_location where) {          \
    return evaluate_op(ops::name##_op<T>(), ops::reduce_params(&axes, keepdims).get(), {&x}, where);      \
  }                                                                                                        \
  template Tracked<float> name(const Tracked<float>&, std::source_location);                               \
  template Tracked<double> name(const Tracked<double>&, std::source_location);                             \
  template Tracked<float> name(const Tracked<float>&, const Axes&, bool, std::source_location);            \
  template Tracked<double> name(const Tracked<double>&, const Axes&, bool, std::source_location);          \
  template Array<float> name(const Array<float>&, std::source_location);                                   \
  template Array<double> name(const Array<double>&, std::source_location);                                 \
  template Array<float> name(const Array<float>&, const Axes&, bool, std::source_location);                \
  template Array<double> name(const Array<double>&, const Axes&, bool, std::source_location);
TG_REDUCTIONS(TG_DEFINE_REDUCTION)
#undef TG_DEFINE_REDUCTION

}  // namespace tg
