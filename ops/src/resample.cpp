// ============================================================================
// Resampling: upsample (nearest, linear) and the adaptive pools. One geometry
// per instruction (kernels/resample.hpp's per-dim maps), planned once;
// forward and pullback are the kernels' resample_forward / resample_backward.
// ============================================================================
#include "tapegrad/ops/resample.hpp"

#include "builtin_ops.hpp"
#include "op_table.hpp"
#include "recorded_pullbacks.hpp"
#include "routes.hpp"

#include <cmath>

#include <fmt/format.h>

#include "tapegrad/autodiff/record.hpp"
#include "tapegrad/kernels/resample.hpp"

namespace tg::ops {

template <class T>
const OpInfo<T>& upsample_op();
template <class T>
const OpInfo<T>& adaptive_meanpool_op();
template <class T>
const OpInfo<T>& adaptive_maxpool_route_op();
template <class T>
const OpInfo<T>& adaptive_maxpool_gather_op();

namespace {

struct ResampleOpParams : OpParams {
  Resample kind = Resample::upsample;
  UpsampleParams up;
  AdaptivePoolParams pool;
  kernels::ResampleGeometry geometry;  // resolved by plan
};

const char* name_of(Resample k) {
  return k == Resample::upsample ? "upsample" : k == Resample::adaptive_mean ? "adaptive_meanpool" : "adaptive_maxpool";
}

double scale_at(const std::vector<double>& s, std::size_t d) { return s.size() == 1 ? s[0] : s[d]; }
std::int64_t dim_at(const std::vector<std::int64_t>& s, std::size_t d) { return s.size() == 1 ? s[0] : s[d]; }

// The output size and axis map of spatial dim d (of `spatial`) of an upsample.
kernels::AxisMap upsample_axis(const UpsampleParams& u, std::int64_t in, std::size_t d, std::int64_t& out) {
  const char* op = "upsample";
  double s;  // input step per output step
  if (!u.size.empty()) {
    out = dim_at(u.size, d);
    s = static_cast<double>(in) / static_cast<double>(std::max<std::int64_t>(out, 1));
  } else {
    const double f = scale_at(u.scale, d);
    if (!(f > 0) || !std::isfinite(f) || f > 1e6) fail(op, fmt::format("scale ({}) along spatial dim {} expected a positive factor", f, d));
    out = static_cast<std::int64_t>(std::floor(static_cast<double>(in) * f));
    s = 1.0 / f;
  }
  if (out <= 0 || out > (std::int64_t{1} << 31))
    fail(op, fmt::format("output size {} along spatial dim {} (input {}) expected at least 1; hint: a larger scale or size", out, d, in));
  return u.mode == UpsampleMode::nearest ? kernels::nearest_axis(in, out, s) : kernels::linear_axis(in, out, s, u.align_corners);
}

Plan plan(const ResampleOpParams& given, std::span<const Shape* const> s) {
  auto resolved = std::make_shared<ResampleOpParams>(given);
  ResampleOpParams& p = *resolved;
  const char* op = name_of(p.kind);
  const Shape& x = *s[0];
  if (x.rank() < 3 || x.rank() > 5)
    fail(op, fmt::format("x has shape {} expected (N, C, spatial...) with 1 to 3 spatial dims", to_string(x)));
  const std::size_t dims = x.rank() - 2;
  kernels::ResampleGeometry& g = p.geometry;
  g.planes = x[0] * x[1];
  Shape out{x[0], x[1]};
  if (p.kind == Resample::upsample) {
    const UpsampleParams& u = p.up;
    if (u.size.empty() == u.scale.empty())
      fail(op, fmt::format("{} expected exactly one of .scale and .size", u.size.empty() ? "neither .scale nor .size given" : "both .scale and .size given"));
    check_dim_list(u.size, dims, "size", "spatial dim", op);
    if (!u.scale.empty() && u.scale.size() != 1 && u.scale.size() != dims)
      fail(op, fmt::format("{} scales for {} spatial dims expected one, or one per spatial dim", u.scale.size(), dims));
    if (u.mode != UpsampleMode::nearest && u.mode != UpsampleMode::linear)
      fail(op, fmt::format("mode ({}) is not an UpsampleMode expected nearest or linear", static_cast<int>(u.mode)));
    if (u.align_corners && u.mode == UpsampleMode::nearest)
      fail(op, "align_corners with mode nearest expected mode linear; hint: align_corners only moves interpolated samples");
    g.mode = u.mode == UpsampleMode::nearest ? kernels::ResampleMode::nearest : kernels::ResampleMode::linear;
  } else {
    check_dim_list(p.pool.output, dims, "output", "spatial dim", op);
    if (p.pool.output.empty()) fail(op, "no output size expected .output = {size per spatial dim}");
    g.mode = p.kind == Resample::adaptive_mean ? kernels::ResampleMode::adaptive_mean : kernels::ResampleMode::adaptive_max;
  }
  for (std::size_t d = 0; d < 3; ++d) g.axes[d] = kernels::AxisMap{1, 1, {0}, {p.kind == Resample::upsample ? 0 : 1}, {0}};
  for (std::size_t d = 0; d < dims; ++d) {
    const std::int64_t in = x[2 + d];
    if (in < 1) fail(op, fmt::format("x has shape {}: spatial dim {} is empty expected at least one element", to_string(x), d));
    std::int64_t o = 0;
    kernels::AxisMap& axis = g.axes[3 - dims + d];
    if (p.kind == Resample::upsample) {
      axis = upsample_axis(p.up, in, d, o);
    } else {
      o = dim_at(p.pool.output, d);
      if (o < 1 || o > (std::int64_t{1} << 31))
        fail(op, fmt::format("output size {} along spatial dim {} expected at least 1", o, d));
      axis = kernels::adaptive_axis(in, o);
    }
    out.push_back(o);
  }
  checked_size(out, op);
  return {std::move(out), std::move(resolved)};
}

template <Resample K>
std::shared_ptr<const OpParams> load(ParamReader& in) {
  auto p = std::make_shared<ResampleOpParams>();
  p->kind = K;
  p->pool.output = in.list("output");
  p->up.size = in.list("size");
  const std::int64_t n = in.i64("scale count");
  if (n < 0 || n > 3) fail("load_tape", fmt::format("{}: {} scales expected 0 to 3", name_of(K), n));
  for (std::int64_t i = 0; i < n; ++i) p->up.scale.push_back(in.f64("scale"));
  p->up.mode = in.enumeration("mode", UpsampleMode::linear);
  p->up.align_corners = in.boolean("align_corners");
  return p;
}

template <class T>
Tracked<T> record_route(RouteRole role, const OpParams* pool_params, const Tracked<T>& x, const Tracked<T>& values);

template <class T>
OpInfo<T> resample_row(Resample kind) {
  OpInfo<T> r;
  r.name = name_of(kind);
  r.arity = 1;
  r.flags = kPullbackIgnoresOutput | (kind == Resample::adaptive_max ? kNoFlags : kLinear);
  if (kind != Resample::adaptive_max) r.transposable = &always_transposable;
  r.plan = [](const OpParams* p, std::span<const Shape* const> s) { return plan(params_as<ResampleOpParams>(p), s); };
  r.forward = [](const ForwardCall<T>& c) {
    kernels::resample_forward(params_as<ResampleOpParams>(c.params).geometry, c.inputs[0]->data(), c.output.data());
  };
  r.pullback = [](const PullbackCall<T>& c) {
    if (!c.input_adjoints[0]) return;
    kernels::resample_backward(params_as<ResampleOpParams>(c.params).geometry, c.inputs[0]->data(), c.output_adjoint.data(),
                               c.input_adjoints[0]->data());
  };
  if (kind == Resample::adaptive_max)
    r.record_pullback = [](const RecordedPullbackCall<T>& c) {
      if (c.wants(0)) c.contribute(0, record_route(RouteRole::route, c.params, c.input(0), c.output_adjoint));
    };
  if (kind != Resample::adaptive_max) {
    // Note [Linear adjoints]: the adjoint spreads each output back over its taps.
    r.record_pullback = kind == Resample::upsample ? recorded_by_adjoint<T, ResampleOpParams>(&upsample_op<T>)
                                                   : recorded_by_adjoint<T, ResampleOpParams>(&adaptive_meanpool_op<T>);
    Fusion<T> fusion;
    fusion.pullback_reads_input = [](const OpParams*, std::size_t) { return false; };
    r.fusion = std::make_shared<const Fusion<T>>(std::move(fusion));
  }
  r.print_params = [](const OpParams* params) {
    const auto& p = params_as<ResampleOpParams>(params);
    if (p.kind != Resample::upsample) return fmt::format("output=[{}]", fmt::join(p.pool.output, ","));
    const std::string what = p.up.size.empty() ? fmt::format("scale=[{}]", fmt::join(p.up.scale, ","))
                                               : fmt::format("size=[{}]", fmt::join(p.up.size, ","));
    return fmt::format("{} {}{}", what, p.up.mode == UpsampleMode::nearest ? "nearest" : "linear",
                       p.up.align_corners ? " align_corners" : "");
  };
  r.save_params = [](const OpParams* params, ParamWriter& w) {
    const auto& p = params_as<ResampleOpParams>(params);
    w.list(p.pool.output);
    w.list(p.up.size);
    w.i64(static_cast<std::int64_t>(p.up.scale.size()));
    for (double s : p.up.scale) w.f64(s);
    w.enumeration(p.up.mode);
    w.boolean(p.up.align_corners);
  };
  r.load_params = kind == Resample::upsample ? &load<Resample::upsample>
                  : kind == Resample::adaptive_mean ? &load<Resample::adaptive_mean> : &load<Resample::adaptive_max>;
  r.flops = [](const OpParams* params, std::span<const Shape* const> in, const Shape& out) {
    const auto& p = params_as<ResampleOpParams>(params);
    const double n = static_cast<double>(checked_size(out, "resample"));
    return p.kind == Resample::upsample ? 16.0 * n : static_cast<double>(checked_size(*in[0], "resample"));
  };
  return r;
}

// Note [Adaptive max routes]: as a max-pool's (Note [Maxpool routes]), an
// adaptive max-pool's pullback sends each window's adjoint to the window's
// first maximum: linear in gy, with no derivative in x. Recorded, it is
// adaptive_maxpool_route(x, gy) (x's shape); its adjoint in gy is
// adaptive_maxpool_gather(x, v) (the pool's output shape: v at each window's
// maximum), and each is the other's pullback. Both scan x for the maxima.
template <class T>
Tracked<T> record_route(RouteRole role, const OpParams* pool_params, const Tracked<T>& x, const Tracked<T>& values) {
  const auto site = std::source_location::current();
  const OpInfo<T>& op = role == RouteRole::route ? adaptive_maxpool_route_op<T>() : adaptive_maxpool_gather_op<T>();
  return record_op(op, std::make_shared<ResampleOpParams>(params_as<ResampleOpParams>(pool_params)),
                   {Operand<T>(x, site), Operand<T>(values, site)}, site);
}

template <class T>
void run_route(RouteRole role, const ResampleOpParams& p, const Array<T>& x, const T* values, T* out, bool add) {
  if (role == RouteRole::gather) return kernels::adaptive_max_gather(p.geometry, x.data(), values, out, add);
  if (!add) std::fill(out, out + x.size(), T(0));
  kernels::resample_backward(p.geometry, x.data(), values, out);
}

template <class T>
OpInfo<T> route_row(RouteRole role) {
  OpInfo<T> r = resample_row<T>(Resample::adaptive_max);
  r.name = role == RouteRole::route ? "adaptive_maxpool_route" : "adaptive_maxpool_gather";
  r.arity = 2;
  r.flags = kPullbackIgnoresOutput;
  r.plan = [role](const OpParams* params, std::span<const Shape* const> s) {
    return plan_route(role, role == RouteRole::route ? "adaptive_maxpool_route" : "adaptive_maxpool_gather", s, [&](const Shape& x) {
      const Shape* only[] = {&x};
      return plan(params_as<ResampleOpParams>(params), only);
    });
  };
  r.forward = [role](const ForwardCall<T>& c) {
    run_route(role, params_as<ResampleOpParams>(c.params), *c.inputs[0], c.inputs[1]->data(), c.output.data(), false);
  };
  // The other role, applied to the output adjoint; x gets nothing (Note [Adaptive max routes]).
  r.pullback = [role](const PullbackCall<T>& c) {
    if (!c.input_adjoints[1]) return;
    run_route(other_role(role), params_as<ResampleOpParams>(c.params), *c.inputs[0], c.output_adjoint.data(), c.input_adjoints[1]->data(), true);
  };
  r.record_pullback = [role](const RecordedPullbackCall<T>& c) {
    if (c.wants(1))
      c.contribute(1, record_route(other_role(role), c.params, c.input(0), c.output_adjoint));
  };
  r.fusion = nullptr;
  r.flops = nullptr;
  return r;
}

template <class T>
OpInfo<T> adaptive_maxpool_route_row() {
  return route_row<T>(RouteRole::route);
}
template <class T>
OpInfo<T> adaptive_maxpool_gather_row() {
  return route_row<T>(RouteRole::gather);
}

template <class T>
OpInfo<T> upsample_row() {
  return resample_row<T>(Resample::upsample);
}
template <class T>
OpInfo<T> adaptive_meanpool_row() {
  return resample_row<T>(Resample::adaptive_mean);
}
template <class T>
OpInfo<T> adaptive_maxpool_row() {
  return resample_row<T>(Resample::adaptive_max);
}

std::shared_ptr<ResampleOpParams> make_params(Resample kind, const UpsampleParams& up, const AdaptivePoolParams& pool) {
  auto p = std::make_shared<ResampleOpParams>();
  p->kind = kind;
  p->up = up;
  p->pool = pool;
  return p;
}

}  // namespace

// The family's op table (Note [Op tables]).
#define TG_RESAMPLE_ROWS(X) X(upsample) X(adaptive_meanpool) X(adaptive_maxpool) X(adaptive_maxpool_route) X(adaptive_maxpool_gather)
TG_OP_TABLE(resample, TG_RESAMPLE_ROWS)

template <class T>
const OpInfo<T>& resample_op(Resample kind) {
  return kind == Resample::upsample ? upsample_op<T>() : kind == Resample::adaptive_mean ? adaptive_meanpool_op<T>() : adaptive_maxpool_op<T>();
}

template <class T>
Tracked<T> resample_tracked(Resample kind, const Tracked<T>& x, const UpsampleParams& up, const AdaptivePoolParams& pool,
                            const std::source_location& where) {
  const Operand<T> operands[] = {Operand<T>(x, where)};
  return record_op(resample_op<T>(kind), make_params(kind, up, pool), std::span<const Operand<T>>(operands), where);
}
template <class T>
Array<T> resample_eval(Resample kind, const Array<T>& x, const UpsampleParams& up, const AdaptivePoolParams& pool,
                       const std::source_location& where) {
  const Array<T>* inputs[] = {&x};
  return evaluate_op(resample_op<T>(kind), make_params(kind, up, pool).get(), std::span<const Array<T>* const>(inputs), where);
}

template <class T>
Tracked<T> adaptive_maxpool_route_tracked(const Tracked<T>& x, const Tracked<T>& values, const AdaptivePoolParams& p, bool gather,
                                          const std::source_location& where) {
  return record_op(gather ? adaptive_maxpool_gather_op<T>() : adaptive_maxpool_route_op<T>(),
                   make_params(Resample::adaptive_max, {}, p), {Operand<T>(x, where), Operand<T>(values, where)}, where);
}

#define TG_RESAMPLE_INSTANCES(T)                                                                                         \
  template Tracked<T> resample_tracked(Resample, const Tracked<T>&, const UpsampleParams&, const AdaptivePoolParams&,   \
                                       const std::source_location&);                                                   \
  template Array<T> resample_eval(Resample, const Array<T>&, const UpsampleParams&, const AdaptivePoolParams&,          \
                                  const std::source_location&);                                                   \
  template Tracked<T> adaptive_maxpool_route_tracked(const Tracked<T>&, const Tracked<T>&, const AdaptivePoolParams&, bool, \
                                                     const std::source_location&);
TG_RESAMPLE_INSTANCES(float)
TG_RESAMPLE_INSTANCES(double)

}  // namespace tg::ops
