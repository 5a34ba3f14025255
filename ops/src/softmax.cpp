// ============================================================================
// softmax, log_softmax, logsumexp along an axis.
// ============================================================================
#include "tapegrad/ops/softmax.hpp"

#include "builtin_ops.hpp"
#include "op_table.hpp"

#include <fmt/format.h>

#include "recorded_pullbacks.hpp"
#include "tapegrad/autodiff/record.hpp"
#include "tapegrad/kernels/softmax.hpp"
#include "tapegrad/ops/unary.hpp"

namespace tg::ops {

struct AxisParams : OpParams {
  std::int64_t axis = -1;
  bool keepdims = false;
};

namespace {

kernels::AxisView axis_view(const Shape& s, std::int64_t axis_given, const char* op) {
  const std::size_t axis = normalize_axis(axis_given, s.rank(), op);
  kernels::AxisView v{1, s[axis], 1};
  for (std::size_t i = 0; i < axis; ++i) v.outer *= s[i];
  for (std::size_t i = axis + 1; i < s.rank(); ++i) v.inner *= s[i];
  return v;
}

std::string print_axis(const OpParams* p) {
  const auto& q = params_as<AxisParams>(p);
  return fmt::format("axis={}{}", q.axis, q.keepdims ? " keepdims" : "");
}

void save_axis(const OpParams* p, ParamWriter& w) {
  w.i64(params_as<AxisParams>(p).axis);
  w.boolean(params_as<AxisParams>(p).keepdims);
}

std::shared_ptr<const OpParams> load_axis(ParamReader& in) {
  auto p = std::make_shared<AxisParams>();
  p->axis = in.i64("axis");
  p->keepdims = in.boolean("keepdims");
  return p;
}

// The input's shape with the axis kept as 1: where a per-row value broadcasts back.
Shape kept_axis_shape(const Shape& s, std::int64_t axis_given, const char* op) {
  Shape out = s;
  out[normalize_axis(axis_given, s.rank(), op)] = 1;
  return out;
}

// Recorded pullbacks (Note [Recorded pullbacks]), the kernels' formulas as ops:
//   softmax:     gx = y * (g - sum(g * y, axis))
//   log_softmax: gx = g - exp(y) * sum(g, axis)
//   logsumexp:   gx = exp(x - out) * g, out and g broadcast back along the axis
template <class T, bool Log>
void softmax_record_pullback(const RecordedPullbackCall<T>& c) {
  if (!c.wants(0)) return;
  const Axes axis{params_as<AxisParams>(c.params).axis};
  const Tracked<T>&y = c.output, &g = c.output_adjoint;
  if constexpr (Log) c.contribute(0, g - tg::exp(y) * tg::sum(g, axis, true));
  else c.contribute(0, y * (g - tg::sum(g * y, axis, true)));
}

template <class T>
void logsumexp_record_pullback(const RecordedPullbackCall<T>& c) {
  if (!c.wants(0)) return;
  const Tracked<T>& x = c.input(0);
  const Shape kept = kept_axis_shape(x.shape(), params_as<AxisParams>(c.params).axis, "logsumexp");
  c.contribute(0, tg::exp(x - tg::reshape(c.output, kept)) * tg::reshape(c.output_adjoint, kept));
}

template <class T, bool Log>
OpInfo<T> softmax_family_row(const char* name) {
  OpInfo<T> r;
  r.name = name;
  r.arity = 1;
  r.shape = [name](const OpParams* p, std::span<const Shape* const> s) {
    const auto v = axis_view(*s[0], params_as<AxisParams>(p).axis, name);
    if (v.n == 0) fail(name, fmt::format("axis of length 0 in shape {} expected at least one element", to_string(*s[0])));
    return *s[0];
  };
  r.print_params = print_axis;
  r.save_params = save_axis;
  r.load_params = load_axis;
  r.forward = [name](const ForwardCall<T>& c) {
    kernels::softmax_forward<Log>(c.inputs[0]->data(), c.output.data(),
                                  axis_view(c.output.shape(), params_as<AxisParams>(c.params).axis, name));
  };
  r.pullback = [name](const PullbackCall<T>& c) {
    kernels::softmax_backward<Log>(c.output.data(), c.output_adjoint.data(), c.input_adjoints[0]->data(),
                                   axis_view(c.output.shape(), params_as<AxisParams>(c.params).axis, name));
  };
  r.record_pullback = &softmax_record_pullback<T, Log>;
  return r;
}

}  // namespace

template <class T>
OpInfo<T> softmax_row() {
  return softmax_family_row<T, false>("softmax");
}
template <class T>
OpInfo<T> log_softmax_row() {
  return softmax_family_row<T, true>("log_softmax");
}

template <class T>
OpInfo<T> logsumexp_row() {
  OpInfo<T> r;
  r.name = "logsumexp";
  r.arity = 1;
  r.shape = [](const OpParams* p, std::span<const Shape* const> s) {
    const auto& q = params_as<AxisParams>(p);
    const std::size_t axis = normalize_axis(q.axis, s[0]->rank(), "logsumexp");
    if ((*s[0])[axis] == 0) fail("logsumexp", fmt::format("axis of length 0 in shape {} expected at least one element", to_string(*s[0])));
    Shape out;
    for (std::size_t i = 0; i < s[0]->rank(); ++i) {
      if (i != axis) out.push_back((*s[0])[i]);
      else if (q.keepdims) out.push_back(1);
    }
    return out;
  };
  r.print_params = print_axis;
  r.save_params = save_axis;
  r.load_params = load_axis;
  r.forward = [](const ForwardCall<T>& c) {
    kernels::logsumexp_forward(c.inputs[0]->data(), c.output.data(),
                               axis_view(c.inputs[0]->shape(), params_as<AxisParams>(c.params).axis, "logsumexp"));
  };
  r.pullback = [](const PullbackCall<T>& c) {
    kernels::logsumexp_backward(c.inputs[0]->data(), c.output_adjoint.data(), c.input_adjoints[0]->data(),
                                axis_view(c.inputs[0]->shape(), params_as<AxisParams>(c.params).axis, "logsumexp"));
  };
  r.record_pullback = &logsumexp_record_pullback<T>;
  return r;
}

std::shared_ptr<AxisParams> axis_params(std::int64_t axis, bool keepdims) {
  auto p = std::make_shared<AxisParams>();
  p->axis = axis;
  p->keepdims = keepdims;
  return p;
}

// The family's op table (Note [Op tables]).
#define TG_SOFTMAX_ROWS(X) X(softmax) X(log_softmax) X(logsumexp)
TG_OP_TABLE(softmax, TG_SOFTMAX_ROWS)

}  // namespace tg::ops

namespace tg {

template <class T>
Tracked<T> softmax(const Tracked<T>& x, std::int64_t axis, std::source_location where) {
  return record_op(ops::softmax_op<T>(), ops::axis_params(axis, false), {Operand<T>(x, where)}, where);
}
template <class T>
Array<T> softmax(const Array<T>& x, std::int64_t axis, std::source_location where) {
  return evaluate_op(ops::softmax_op<T>(), ops::axis_params(axis, false).get(), {&x}, where);
}
template <class T>
Tracked<T> log_softmax(const Tracked<T>& x, std::int64_t axis, std::source_location where) {
  return record_op(ops::log_softmax_op<T>(), ops::axis_params(axis, false), {Operand<T>(x, where)}, where);
}
template <class T>
Array<T> log_softmax(const Array<T>& x, std::int64_t axis, std::source_location where) {
  return evaluate_op(ops::log_softmax_op<T>(), ops::axis_params(axis, false).get(), {&x}, where);
}
template <class T>
Tracked<T> logsumexp(const Tracked<T>& x, std::int64_t axis, bool keepdims, std::source_location where) {
  return record_op(ops::logsumexp_op<T>(), ops::axis_params(axis, keepdims), {Operand<T>(x, where)}, where);
}
template <class T>
Array<T> logsumexp(const Array<T>& x, std::int64_t axis, bool keepdims, std::source_location where) {
  return evaluate_op(ops::logsumexp_op<T>(), ops::axis_params(axis, keepdims).get(), {&x}, where);
}

#define TG_INSTANTIATE(T)                                                                      \
  template Tracked<T> softmax(const Tracked<T>&, std::int64_t, std::source_location);          \
  template Array<T> softmax(const Array<T>&, std::int64_t, std::source_location);              \
  template Tracked<T> log_softmax(const Tracked<T>&, std::int64_t, std::source_location);      \
  template Array<T> log_softmax(const Array<T>&, std::int64_t, std::source_location);          \
  template Tracked<T> logsumexp(const Tracked<T>&, std::int64_t, bool, std::source_location);  \
  template Array<T> logsumexp(const Array<T>&, std::int64_t, bool, std::source_location);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg
