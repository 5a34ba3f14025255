// ============================================================================
// Normalisation: batch_norm (per channel, running statistics as state),
// layer_norm and group_norm (per row). Forward and pullback are
// kernels/norm.hpp's; the saved buffers are the statistics used (mean, invstd).
// ============================================================================
#include "tapegrad/ops/norm.hpp"

#include "assigned.hpp"
#include "builtin_ops.hpp"
#include "folding.hpp"
#include "op_table.hpp"
#include "recorded_pullbacks.hpp"

#include <fmt/format.h>

#include "tapegrad/autodiff/record.hpp"
#include "tapegrad/kernels/norm.hpp"

namespace tg::ops {
namespace {

void check_eps(const char* op, double eps) {
  if (!(eps >= 0) || !std::isfinite(eps)) fail(op, fmt::format("eps ({}) expected a finite number >= 0", eps));
}

void check_per_channel(const char* op, const char* what, const Shape& s, std::int64_t channels, const Shape& x) {
  if (!(s == Shape{channels}))
    fail(op, fmt::format("{} has shape {} but x {} has {} channels expected shape ({}); hint: x is (N, C, spatial...)", what,
                         to_string(s), to_string(x), channels, channels));
}

// ---- batch_norm: inputs x, gamma, beta, running mean, running var ------------------

struct BatchNormOpParams : OpParams {
  BatchNormParams user;
};

kernels::ChannelView channel_view(const Shape& x) {
  std::int64_t s = 1;
  for (std::size_t d = 2; d < x.rank(); ++d) s *= x[d];
  return {x[0], x[1], s};
}

Shape batch_norm_shape(const BatchNormOpParams& p, std::span<const Shape* const> s) {
  const char* op = "batch_norm";
  const Shape& x = *s[0];
  if (x.rank() < 2)
    fail(op, fmt::format("x has shape {} expected (N, C, spatial...) of rank 2 or more", to_string(x)));
  check_per_channel(op, "gamma", *s[1], x[1], x);
  check_per_channel(op, "beta", *s[2], x[1], x);
  check_per_channel(op, "running mean", *s[3], x[1], x);
  check_per_channel(op, "running variance", *s[4], x[1], x);
  check_eps(op, p.user.eps);
  if (!(p.user.momentum >= 0 && p.user.momentum <= 1))
    fail(op, fmt::format("momentum ({}) expected a number in [0, 1]", p.user.momentum));
  const kernels::ChannelView v = channel_view(x);
  if (p.user.training && v.per_channel() <= 1)
    fail(op, fmt::format("x has shape {}: {} value per channel in training mode expected more than one (a batch "
                         "variance needs two values); hint: a larger batch, or .training = false",
                         to_string(x), v.per_channel()));
  return x;
}

template <class T>
kernels::BatchNormArgs<T> batch_norm_args(const BatchNormOpParams& p, std::span<const Array<T>* const> in,
                                          kernels::NormActivation act) {
  return {in[0]->data(), channel_view(in[0]->shape()), in[1]->data(), in[2]->data(), p.user.eps, act};
}

template <class T>
void batch_norm_forward(const ForwardCall<T>& c, kernels::NormActivation act) {
  const auto& p = params_as<BatchNormOpParams>(c.params);
  const std::int64_t channels = c.inputs[0]->shape()[1];
  for (int k = 0; k < 2; ++k)
    if (c.saved[k].size() != channels) c.saved[k] = Array<T>::uninitialized({channels});
  const auto a = batch_norm_args(p, c.inputs, act);
  if (p.user.training)
    kernels::batch_norm_train_forward(a, c.saved[0].data(), c.saved[1].data(), c.output.data(), c.state(3).data(),
                                      c.state(4).data(), p.user.momentum);
  else
    kernels::batch_norm_eval_forward(a, c.inputs[3]->data(), c.inputs[4]->data(), c.saved[0].data(), c.saved[1].data(),
                                     c.output.data());
}

template <class T>
void batch_norm_pullback(const PullbackCall<T>& c, kernels::NormActivation act, const Array<T>& dy) {
  const auto& p = params_as<BatchNormOpParams>(c.params);
  T* dx = c.input_adjoints[0] ? c.input_adjoints[0]->data() : nullptr;
  T* dgamma = c.input_adjoints[1] ? c.input_adjoints[1]->data() : nullptr;
  T* dbeta = c.input_adjoints[2] ? c.input_adjoints[2]->data() : nullptr;
  for (std::size_t i = 1; i < 3; ++i) zero_if_assigned(c, i);
  if (!dx && !dgamma && !dbeta) return;
  kernels::batch_norm_backward(batch_norm_args(p, c.inputs, act), c.saved[0].data(), c.saved[1].data(), p.user.training,
                               c.output.data(), dy.data(), dx, c.assigns(0), dgamma, dbeta);
}

// d - mean(d) - xh * mean(d * xh) over `axes`: the adjoint of normalising by
// statistics of the same values, before the scale by invstd (both norms' recorded pullbacks).
template <class T>
Tracked<T> centred_adjoint(const Tracked<T>& d, const Tracked<T>& xh, const Axes& axes) {
  return d - tg::mean(d, axes, true) - xh * tg::mean(d * xh, axes, true);
}

// Recorded pullback (Note [Recorded pullbacks]): the kernels' formulas as ops
// over the axes other than the channel's, per-channel values kept as (1, C, 1..):
//   training: xh = (x - mean) * invstd with the batch's biased statistics,
//             dx = gamma * invstd * (g - mean(g) - xh * mean(g * xh))
//   eval:     xh from the running statistics (state: no gradient), dx = g * gamma * invstd
//   both:     dgamma = sum(g * xh), dbeta = sum(g)
template <class T>
void batch_norm_record_pullback(const RecordedPullbackCall<T>& c) {
  const auto& p = params_as<BatchNormOpParams>(c.params).user;
  const Tracked<T>&x = c.input(0), &g = c.output_adjoint;
  const Shape xs = x.shape();
  Axes axes{0};
  Shape per_channel(std::vector<std::int64_t>(xs.rank(), 1));
  per_channel[1] = xs[1];
  for (std::int64_t d = 2; d < std::int64_t(xs.rank()); ++d) axes.push_back(d);
  auto channel = [&](const Tracked<T>& v) { return tg::reshape(v, per_channel); };
  const Tracked<T> mean = p.training ? tg::mean(x, axes, true) : channel(c.input(3));
  const Tracked<T> centred = x - mean;
  const Tracked<T> var = p.training ? tg::mean(centred * centred, axes, true) : channel(c.input(4));
  const Tracked<T> invstd = tg::pow(var + T(p.eps), T(-0.5));
  const Tracked<T> xh = centred * invstd;
  if (c.wants(0)) {
    const Tracked<T> scale = channel(c.input(1)) * invstd;
    c.contribute(0, p.training ? scale * centred_adjoint(g, xh, axes) : g * scale);
  }
  if (c.wants(1)) c.contribute(1, tg::sum(g * xh, axes));
  if (c.wants(2)) c.contribute(2, tg::sum(g, axes));
}

template <class T>
bool is_relu(const EpilogueCall<T>& e) {
  return e.activation->name == "relu";
}

template <class T>
OpInfo<T> batch_norm_row() {
  OpInfo<T> r;
  r.name = "batch_norm";
  r.arity = 5;
  r.n_saved = 2;  // mean, invstd (C): the statistics the forward used
  r.state_inputs = (1u << 3) | (1u << 4);
  r.flags = kPullbackIgnoresOutput | kPullbackCanAssign;
  r.shape = [](const OpParams* p, std::span<const Shape* const> s) { return batch_norm_shape(params_as<BatchNormOpParams>(p), s); };
  r.forward = [](const ForwardCall<T>& c) { batch_norm_forward(c, kernels::NormActivation::none); };
  r.pullback = [](const PullbackCall<T>& c) { batch_norm_pullback(c, kernels::NormActivation::none, c.output_adjoint); };
  r.record_pullback = &batch_norm_record_pullback<T>;
  // Note [Fusion hooks]: a ReLU after batch_norm (the compiler's epilogue
  // fusion) runs in the normalisation's output loop, and its mask is applied
  // as the pullback reads the adjoint: one pass each way, not two.
  Fusion<T> fusion;
  fusion.forward_with_epilogue = [](const ForwardCall<T>& c, const EpilogueCall<T>& e) {
    if (is_relu(e)) return batch_norm_forward(c, kernels::NormActivation::relu);
    batch_norm_forward(c, kernels::NormActivation::none);
    e.activation->fusion->epilogue_forward(e.params, c.output.data(), c.output.size());
  };
  fusion.pullback_with_epilogue = [](const PullbackCall<T>& c, const EpilogueCall<T>& e, Array<T>& adjoint) {
    if (is_relu(e)) return batch_norm_pullback(c, kernels::NormActivation::relu, adjoint);
    e.activation->fusion->epilogue_pullback(e.params, c.output.data(), adjoint.data(), adjoint.size());
    batch_norm_pullback(c, kernels::NormActivation::none, adjoint);
  };
  fusion.pullback_reads_input = [](const OpParams*, std::size_t k) { return k <= 1; };  // x, gamma
  fusion.fold_into = [](const OpInfo<T>& producer, const OpParams* producer_params, std::size_t producer_inputs,
                        const OpParams* params) -> std::shared_ptr<const OpParams> {
    const BatchNormParams& p = params_as<BatchNormOpParams>(params).user;
    if (p.training || !producer.builtin || producer.name != "conv") return nullptr;
    return conv_with_folded_norm(producer_params, producer_inputs, p.eps);
  };
  r.fusion = std::make_shared<const Fusion<T>>(std::move(fusion));
  r.print_params = [](const OpParams* params) {
    const auto& p = params_as<BatchNormOpParams>(params).user;
    return fmt::format("{} momentum={} eps={}", p.training ? "training" : "eval", p.momentum, p.eps);
  };
  r.save_params = [](const OpParams* params, ParamWriter& w) {
    const auto& p = params_as<BatchNormOpParams>(params).user;
    w.boolean(p.training);
    w.f64(p.momentum);
    w.f64(p.eps);
  };
  r.load_params = [](ParamReader& in) {
    auto p = std::make_shared<BatchNormOpParams>();
    p->user.training = in.boolean("training");
    p->user.momentum = in.f64("momentum");
    p->user.eps = in.f64("eps");
    return p;
  };
  r.flops = [](const OpParams*, std::span<const Shape* const> in, const Shape&) {
    return 8.0 * static_cast<double>(checked_size(*in[0], "batch_norm"));
  };
  return r;
}

// ---- layer_norm and group_norm: inputs x, and gamma and beta (both or neither) --------

struct RowNormOpParams : OpParams {
  bool group = false;  // group_norm; else layer_norm
  LayerNormParams layer;
  GroupNormParams groups;
};

const char* row_op_name(const RowNormOpParams& p) { return p.group ? "group_norm" : "layer_norm"; }

// The row view of x, after the checks of each op.
kernels::RowView row_view(const RowNormOpParams& p, const Shape& x) {
  const char* op = row_op_name(p);
  if (p.group) {
    if (x.rank() < 2) fail(op, fmt::format("x has shape {} expected (N, C, spatial...) of rank 2 or more", to_string(x)));
    const std::int64_t g = p.groups.groups, c = x[1];
    if (g < 1 || c % g != 0)
      fail(op, fmt::format("groups ({}) does not divide the channels ({}) of x {} expected a divisor of {}", g, c, to_string(x), c));
    const kernels::ChannelView cv = channel_view(x);
    return {cv.n * g, c / g * cv.s, cv.s, g};
  }
  const std::int64_t k = p.layer.dims;
  if (k < 1 || static_cast<std::size_t>(k) > x.rank())
    fail(op, fmt::format("dims ({}) for x of shape {} expected 1 to its rank ({})", k, to_string(x), x.rank()));
  std::int64_t length = 1;
  for (std::size_t d = x.rank() - static_cast<std::size_t>(k); d < x.rank(); ++d) length *= x[d];
  return {length == 0 ? 0 : checked_size(x, op) / length, length, 1, 1};
}

Shape affine_shape(const RowNormOpParams& p, const Shape& x) {
  if (p.group) return Shape{x[1]};
  Shape out;
  for (std::size_t d = x.rank() - static_cast<std::size_t>(p.layer.dims); d < x.rank(); ++d) out.push_back(x[d]);
  return out;
}

Shape row_norm_shape(const RowNormOpParams& p, std::span<const Shape* const> s) {
  const char* op = row_op_name(p);
  if (s.size() != 1 && s.size() != 3)
    fail(op, fmt::format("got {} inputs expected (x) or (x, gamma, beta)", s.size()));
  const Shape& x = *s[0];
  const kernels::RowView v = row_view(p, x);
  check_eps(op, p.group ? p.groups.eps : p.layer.eps);
  if (v.length == 0 && v.rows > 0) fail(op, fmt::format("x {} has empty rows expected at least one value to normalise", to_string(x)));
  if (s.size() == 3) {
    const Shape want = affine_shape(p, x);
    for (int i = 1; i <= 2; ++i)
      if (!(*s[i] == want))
        fail(op, fmt::format("{} has shape {} expected {} for x of shape {}", i == 1 ? "gamma" : "beta", to_string(*s[i]),
                             to_string(want), to_string(x)));
  }
  return x;
}

template <class T>
kernels::RowNormArgs<T> row_norm_args(const RowNormOpParams& p, std::span<const Array<T>* const> in) {
  const bool affine = in.size() == 3;
  return {in[0]->data(), row_view(p, in[0]->shape()), affine ? in[1]->data() : nullptr, affine ? in[2]->data() : nullptr,
          p.group ? p.groups.eps : p.layer.eps};
}

// Recorded pullback (Note [Recorded pullbacks]): x as rows (v.rows, v.length),
// xh = (x - mean) * invstd per row, dxh = g * gamma (gamma broadcast: the last
// dims for layer_norm, the channel for group_norm), then per row
// dx = invstd * (dxh - mean(dxh) - xh * mean(dxh * xh)); dgamma and dbeta sum
// g * xh and g over everything but gamma's dims.
template <class T>
void row_norm_record_pullback(const RecordedPullbackCall<T>& c) {
  const auto& p = params_as<RowNormOpParams>(c.params);
  const Tracked<T>&x = c.input(0), &g = c.output_adjoint;
  const Shape xs = x.shape();
  const kernels::RowView v = row_view(p, xs);
  const bool affine = c.inputs.size() == 3;
  auto rows = [&](const Tracked<T>& t) { return tg::reshape(t, {v.rows, v.length}); };
  const Tracked<T> xr = rows(x);
  const Tracked<T> centred = xr - tg::mean(xr, Axes{1}, true);
  const Tracked<T> invstd = tg::pow(tg::mean(centred * centred, Axes{1}, true) + T(p.group ? p.groups.eps : p.layer.eps), T(-0.5));
  const Tracked<T> xh = centred * invstd;  // (rows, length)
  // gamma's shape within x: (1, C, 1, ...) for group_norm; its own (x's last dims) for layer_norm.
  Shape gamma_in_x = affine_shape(p, xs);
  Axes others;  // the dims of x that gamma does not have
  if (p.group) {
    gamma_in_x = Shape(std::vector<std::int64_t>(xs.rank(), 1));
    gamma_in_x[1] = xs[1];
    for (std::int64_t d = 0; d < std::int64_t(xs.rank()); ++d)
      if (d != 1) others.push_back(d);
  } else {
    for (std::int64_t d = 0; d < std::int64_t(xs.rank()) - p.layer.dims; ++d) others.push_back(d);
  }
  if (c.wants(0)) {
    const Tracked<T> dxh = rows(affine ? g * tg::reshape(c.input(1), gamma_in_x) : g);
    const Tracked<T> dx = invstd * centred_adjoint(dxh, xh, Axes{1});
    c.contribute(0, tg::reshape(dx, xs));
  }
  if (affine && c.wants(1)) c.contribute(1, tg::reshape(tg::sum(g * tg::reshape(xh, xs), others), c.input(1).shape()));
  if (affine && c.wants(2)) c.contribute(2, tg::reshape(tg::sum(g, others), c.input(2).shape()));
}

template <class T>
OpInfo<T> row_norm_row(bool group) {
  OpInfo<T> r;
  r.name = group ? "group_norm" : "layer_norm";
  r.arity = kVariadic;
  r.n_saved = 2;  // mean, invstd per row
  r.flags = kPullbackIgnoresOutput;
  r.shape = [](const OpParams* p, std::span<const Shape* const> s) { return row_norm_shape(params_as<RowNormOpParams>(p), s); };
  r.forward = [](const ForwardCall<T>& c) {
    const auto& p = params_as<RowNormOpParams>(c.params);
    const auto a = row_norm_args(p, c.inputs);
    for (int k = 0; k < 2; ++k)
      if (c.saved[k].size() != a.v.rows) c.saved[k] = Array<T>::uninitialized({a.v.rows});
    kernels::row_norm_forward(a, c.saved[0].data(), c.saved[1].data(), c.output.data());
  };
  r.pullback = [](const PullbackCall<T>& c) {
    const auto& p = params_as<RowNormOpParams>(c.params);
    auto grad = [&](std::size_t i) { return i < c.input_adjoints.size() && c.input_adjoints[i] ? c.input_adjoints[i]->data() : nullptr; };
    if (!grad(0) && !grad(1) && !grad(2)) return;
    kernels::row_norm_backward(row_norm_args(p, c.inputs), c.saved[0].data(), c.saved[1].data(), c.output_adjoint.data(),
                               grad(0), grad(1), grad(2));
  };
  r.record_pullback = &row_norm_record_pullback<T>;
  r.print_params = [](const OpParams* params) {
    const auto& p = params_as<RowNormOpParams>(params);
    return p.group ? fmt::format("groups={} eps={}", p.groups.groups, p.groups.eps) : fmt::format("dims={} eps={}", p.layer.dims, p.layer.eps);
  };
  r.save_params = [](const OpParams* params, ParamWriter& w) {
    const auto& p = params_as<RowNormOpParams>(params);
    w.i64(p.group ? p.groups.groups : p.layer.dims);
    w.f64(p.group ? p.groups.eps : p.layer.eps);
  };
  r.load_params = group ? [](ParamReader& in) {
    auto p = std::make_shared<RowNormOpParams>();
    p->group = true;
    p->groups.groups = in.i64("groups");
    p->groups.eps = in.f64("eps");
    return p;
  } : [](ParamReader& in) {
    auto p = std::make_shared<RowNormOpParams>();
    p->layer.dims = in.i64("dims");
    p->layer.eps = in.f64("eps");
    return p;
  };
  r.flops = [](const OpParams*, std::span<const Shape* const> in, const Shape&) {
    return 8.0 * static_cast<double>(checked_size(*in[0], "norm"));
  };
  return r;
}
template <class T>
OpInfo<T> layer_norm_row() {
  return row_norm_row<T>(false);
}
template <class T>
OpInfo<T> group_norm_row() {
  return row_norm_row<T>(true);
}

std::shared_ptr<RowNormOpParams> layer_params(const LayerNormParams& u) {
  auto p = std::make_shared<RowNormOpParams>();
  p->layer = u;
  return p;
}
std::shared_ptr<RowNormOpParams> group_params(const GroupNormParams& u) {
  auto p = std::make_shared<RowNormOpParams>();
  p->group = true;
  p->groups = u;
  return p;
}

}  // namespace

// The family's op table (Note [Op tables]).
#define TG_NORM_ROWS(X) X(batch_norm) X(layer_norm) X(group_norm)
TG_OP_TABLE(norm, TG_NORM_ROWS)

template <class T>
Tracked<T> batch_norm_tracked(std::span<const Operand<T>> operands, const BatchNormParams& p, const std::source_location& where) {
  auto params = std::make_shared<BatchNormOpParams>();
  params->user = p;
  return record_op(batch_norm_op<T>(), std::move(params), operands, where);
}
template <class T>
Array<T> batch_norm_eval(std::span<const Array<T>* const> inputs, const BatchNormParams& p, const std::source_location& where) {
  BatchNormOpParams params;
  params.user = p;
  return evaluate_op(batch_norm_op<T>(), &params, inputs, where);
}
template <class T>
Tracked<T> layer_norm_tracked(std::span<const Operand<T>> operands, const LayerNormParams& p, const std::source_location& where) {
  return record_op(layer_norm_op<T>(), layer_params(p), operands, where);
}
template <class T>
Array<T> layer_norm_eval(std::span<const Array<T>* const> inputs, const LayerNormParams& p, const std::source_location& where) {
  return evaluate_op(layer_norm_op<T>(), layer_params(p).get(), inputs, where);
}
template <class T>
Tracked<T> group_norm_tracked(std::span<const Operand<T>> operands, const GroupNormParams& p, const std::source_location& where) {
  return record_op(group_norm_op<T>(), group_params(p), operands, where);
}
template <class T>
Array<T> group_norm_eval(std::span<const Array<T>* const> inputs, const GroupNormParams& p, const std::source_location& where) {
  return evaluate_op(group_norm_op<T>(), group_params(p).get(), inputs, where);
}

#define TG_NORM_INSTANCES(T)                                                                                                  \
  template Tracked<T> batch_norm_tracked(std::span<const Operand<T>>, const BatchNormParams&, const std::source_location&);   \
  template Array<T> batch_norm_eval(std::span<const Array<T>* const>, const BatchNormParams&, const std::source_location&);   \
  template Tracked<T> layer_norm_tracked(std::span<const Operand<T>>, const LayerNormParams&, const std::source_location&);   \
  template Array<T> layer_norm_eval(std::span<const Array<T>* const>, const LayerNormParams&, const std::source_location&);   \
  template Tracked<T> group_norm_tracked(std::span<const Operand<T>>, const GroupNormParams&, const std::source_location&);   \
  template Array<T> group_norm_eval(std::span<const Array<T>* const>, const GroupNormParams&, const std::source_location&);
TG_NORM_INSTANCES(float)
TG_NORM_INSTANCES(double)

}  // namespace tg::ops
