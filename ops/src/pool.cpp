// ============================================================================
// Pooling: maxpool, meanpool, lppool, and the global pools (a window covering
// every spatial dim). Forward and pullback side by side; one geometry each.
// ============================================================================
#include "tapegrad/ops/pool.hpp"

#include "assigned.hpp"
#include "builtin_ops.hpp"
#include "op_table.hpp"
#include "recorded_pullbacks.hpp"
#include "routes.hpp"

#include <fmt/format.h>

#include <cmath>

#include "tapegrad/autodiff/record.hpp"
#include "tapegrad/kernels/pool.hpp"

namespace tg::ops {

enum class PoolKind { max, mean, lp };

struct PoolOpParams : OpParams {
  PoolParams user;
  PoolKind kind = PoolKind::max;
  bool global = false;
  kernels::PoolGeometry geometry;  // resolved by the plan step (Note [Plans]) in the copy an instruction keeps
};

template <class T>
const OpInfo<T>& maxpool_route_op();
template <class T>
const OpInfo<T>& maxpool_gather_op();
template <class T>
const OpInfo<T>& meanpool_op();

namespace {

std::shared_ptr<PoolOpParams> make_params(const PoolParams& u, PoolKind kind, bool global);

void save_pool_params(const PoolParams& u, ParamWriter& w) {
  for (const auto* list : {&u.window, &u.stride, &u.padding, &u.dilation}) w.list(*list);
  w.boolean(u.ceil_mode);
  w.boolean(u.counts_padding());
  w.f64(u.p);
}

PoolParams load_pool_params(ParamReader& in) {
  PoolParams u;
  u.window = in.list("window");
  u.stride = in.list("stride");
  u.padding = in.list("padding");
  u.dilation = in.list("dilation");
  u.ceil_mode = in.boolean("ceil_mode");
  u.count_include_pad = in.boolean("count_include_pad");
  u.p = in.f64("p");
  return u;
}

const char* op_name(PoolKind k, bool global) {
  switch (k) {
    case PoolKind::max: return global ? "global_maxpool" : "maxpool";
    case PoolKind::mean: return global ? "global_meanpool" : "meanpool";
    case PoolKind::lp: return "lppool";
  }
  return "?";
}

Plan plan(const PoolOpParams& p, const Shape& x) {
  const char* op = op_name(p.kind, p.global);
  kernels::PoolSpec spec{p.user.window, p.user.stride, p.user.padding, p.user.dilation, p.user.ceil_mode};
  if (p.global) {
    if (x.rank() < 3) fail(op, fmt::format("input has shape {} expected (N, C, spatial...)", to_string(x)));
    spec = {};
    for (std::size_t d = 2; d < x.rank(); ++d) spec.window.push_back(x[d]);
  }
  if (p.kind == PoolKind::lp && !(p.user.p > 0 && std::isfinite(p.user.p)))
    fail(op, fmt::format("p is {} expected a finite p > 0; hint: p = inf is the maximum of |x|: maxpool(abs(x))", p.user.p));
  auto resolved = std::make_shared<PoolOpParams>(p);
  resolved->geometry = kernels::pool_geometry(x, spec, op);
  return {kernels::pool_output_shape(resolved->geometry), std::move(resolved)};
}

// The buffer for a maxpool's window codes, one per output, kept in a saved
// Array (reused across replays); null when the pool keeps none.
template <class T>
T* window_codes(const kernels::PoolGeometry& g, const Array<T>& y, Array<T>& saved) {
  if (!kernels::maxpool_keeps_codes(g)) return nullptr;
  if (!(saved.shape() == y.shape())) saved = Array<T>::uninitialized(y.shape());
  return saved.data();
}

template <class T>
Tracked<T> record_route(const OpInfo<T>& op, const OpParams* pool_params, const Tracked<T>& x, const Tracked<T>& other);

std::string print_pool_params(const OpParams* params) {
  const auto& p = params_as<PoolOpParams>(params);
  if (p.global) return std::string();
  const PoolParams& u = p.user;
  auto list = [](const char* name, const std::vector<std::int64_t>& v) {
    return v.empty() ? std::string() : fmt::format(" {}=[{}]", name, fmt::join(v, ","));
  };
  std::string s = fmt::format("window=[{}]{}{}{}{}", fmt::join(u.window, ","), list("stride", u.stride),
                              list("padding", u.padding), list("dilation", u.dilation), u.ceil_mode ? " ceil_mode" : "");
  if (p.kind == PoolKind::mean && !u.counts_padding()) s += " exclude_pad";
  if (p.kind == PoolKind::lp) s += fmt::format(" p={}", u.p);
  return s;
}


// An lp-pool's recorded pullback, as its kernel's: each window's adjoint
// scaled by y^(1-p) (0 where the window norm y is 0), summed back over the
// window's elements, times sign(x) |x|^(p-1). The sum is a mean-pool's
// adjoint (padding excluded) of the scale times each window's element count.
template <class T>
void record_lppool_pullback(const RecordedPullbackCall<T>& c) {
  if (!c.wants(0)) return;
  const auto& p = params_as<PoolOpParams>(c.params);
  const T power = static_cast<T>(p.user.p);
  const Tracked<T>&x = c.input(0), &y = c.output;
  const auto site = std::source_location::current();
  PoolParams counting = p.user;
  counting.p = 1;
  const Array<T> counts = tg::lppool(Array<T>::ones(x.shape()), counting);  // in-bounds elements per window
  const Tracked<T> nonzero_y = tg::where(y, y, T(1));
  const Tracked<T> scale = tg::where(y, c.output_adjoint * tg::pow(nonzero_y, double(1 - power)), T(0));
  PoolParams mean = p.user;
  mean.count_include_pad = false;
  mean.count_padding.reset();
  const Tracked<T> spread = record_linear_adjoint<T>(meanpool_op<T>(), make_params(mean, PoolKind::mean, false), x.shape(),
                                                      scale * counts, site);
  c.contribute(0, spread * sign_of(x) * tg::pow(tg::abs(x), double(power - 1)));
}

template <class T>
OpInfo<T> pool_row(PoolKind kind, bool global) {
  OpInfo<T> r;
  r.name = op_name(kind, global);
  r.arity = 1;
  r.flags = kind == PoolKind::mean ? kLinear : kNoFlags;
  if (kind == PoolKind::mean) r.transposable = &always_transposable;
  r.n_saved = kind == PoolKind::max ? 1 : 0;  // a 2x2 maxpool's window codes (Note [Maxpool window codes])
  r.flags |= kPullbackCanAssign;  // from codes, or by a global mean-pool, the whole adjoint is written; otherwise zeroed first
  r.plan = [](const OpParams* p, std::span<const Shape* const> s) { return plan(params_as<PoolOpParams>(p), *s[0]); };
  r.flops = [](const OpParams* p, std::span<const Shape* const>, const Shape&) {  // one per window element
    const kernels::PoolGeometry& g = params_as<PoolOpParams>(p).geometry;
    return double(g.N) * double(g.C) * double(g.out_vol()) * double(g.win[0]) * double(g.win[1]) * double(g.win[2]);
  };
  r.forward = [](const ForwardCall<T>& c) {
    const auto& p = params_as<PoolOpParams>(c.params);
    const T* x = c.inputs[0]->data();
    T* y = c.output.data();
    switch (p.kind) {
      case PoolKind::max: return kernels::maxpool_forward(p.geometry, x, y, window_codes(p.geometry, c.output, c.saved[0]));
      case PoolKind::mean: return kernels::meanpool_forward(p.geometry, p.user.counts_padding(), x, y);
      case PoolKind::lp: return kernels::lppool_forward(p.geometry, static_cast<T>(p.user.p), x, y);
    }
  };
  r.pullback = [](const PullbackCall<T>& c) {
    const auto& p = params_as<PoolOpParams>(c.params);
    if (!c.input_adjoints[0]) return;
    const T *x = c.inputs[0]->data(), *gy = c.output_adjoint.data();
    T* gx = c.input_adjoints[0]->data();
    const T* codes = p.kind == PoolKind::max && kernels::maxpool_keeps_codes(p.geometry) &&
                             c.saved[0].shape() == c.output.shape()
                         ? c.saved[0].data()
                         : nullptr;
    const bool write = c.assigns(0) && (p.kind == PoolKind::mean ? kernels::window_is_whole_plane(p.geometry)
                                                                  : codes && kernels::maxpool_codes_cover_input(p.geometry));
    if (!write) zero_if_assigned(c, 0);
    switch (p.kind) {
      case PoolKind::max:
        return kernels::maxpool_backward(p.geometry, x, c.output.data(), gy, gx, codes, write);
      case PoolKind::mean: return kernels::meanpool_backward(p.geometry, p.user.counts_padding(), gy, gx, write);
      case PoolKind::lp: return kernels::lppool_backward(p.geometry, static_cast<T>(p.user.p), x, c.output.data(), gy, gx);
    }
  };
  Fusion<T> fusion;
  fusion.pools_by_max = kind == PoolKind::max;
  // From window codes a maxpool's pullback never reads its input; a mean-pool's never does.
  fusion.pullback_reads_input = [kind](const OpParams* params, std::size_t) {
    const auto& p = params_as<PoolOpParams>(params);
    return kind == PoolKind::lp || (kind == PoolKind::max && !kernels::maxpool_keeps_codes(p.geometry));
  };
  r.fusion = std::make_shared<const Fusion<T>>(std::move(fusion));
  r.print_params = &print_pool_params;
  r.save_params = [](const OpParams* p, ParamWriter& w) { save_pool_params(params_as<PoolOpParams>(p).user, w); };
  r.load_params = [kind, global](ParamReader& in) { return make_params(load_pool_params(in), kind, global); };
  // A max-pool's adjoint goes to each window's recorded choice (Note [Maxpool routes]).
  if (kind == PoolKind::max)
    r.record_pullback = [](const RecordedPullbackCall<T>& c) {
      if (c.wants(0)) c.contribute(0, record_route<T>(maxpool_route_op<T>(), c.params, c.input(0), c.output_adjoint));
    };
  // A mean-pool's adjoint spreads each window's share back (Note [Linear adjoints]).
  if (kind == PoolKind::mean && !global) r.record_pullback = recorded_by_adjoint<T, PoolOpParams>(&meanpool_op<T>);
  if (kind == PoolKind::lp) r.record_pullback = &record_lppool_pullback<T>;
  // A global mean-pool spreads each plane's adjoint evenly over it.
  if (kind == PoolKind::mean && global)
    r.record_pullback = [](const RecordedPullbackCall<T>& c) {
      if (!c.wants(0)) return;
      const Shape in = c.input(0).shape();
      const T plane = T(in.size() / std::max<std::int64_t>(1, c.output.size()));
      c.contribute(0, tg::broadcast_to(c.output_adjoint / plane, in));
    };
  return r;
}

// Note [Maxpool routes]: a max-pool's pullback sends each window's adjoint to
// the element its scan chose (Note [Ties in maxpool]); that choice depends on x
// but is constant where it is differentiable, so the pullback is linear in gy
// with no derivative in x. Recorded, it is maxpool_route(x, gy) (x's shape);
// its adjoint in gy is maxpool_gather(x, v) (the pool's output shape: v at each
// window's chosen element), and the two are each other's pullbacks. Both find
// the choice by scanning x against the maxima, which they recompute into a
// saved buffer (reused across replays). Rejected: saving the chosen offsets
// from the forward, which every first-order maxpool would pay for.
template <class T>
Tracked<T> record_route(const OpInfo<T>& op, const OpParams* pool_params, const Tracked<T>& x, const Tracked<T>& other) {
  const auto& p = params_as<PoolOpParams>(pool_params);
  const auto site = std::source_location::current();
  return record_op(op, make_params(p.user, PoolKind::max, p.global), {Operand<T>(x, site), Operand<T>(other, site)}, site);
}

// The maxima of x's windows, and a 2x2 pool's window codes (Note [Maxpool
// window codes]; null when it keeps none), in saved buffers kept across
// replays: the pullback reads them.
template <class T>
struct Maxima {
  const T* values;
  const T* codes;
};
template <class T>
Maxima<T> maxima(const PoolOpParams& p, const Array<T>& x, std::span<Array<T>> saved) {
  const Shape out = kernels::pool_output_shape(p.geometry);
  if (!(saved[0].shape() == out)) saved[0] = Array<T>::uninitialized(out);
  T* codes = window_codes(p.geometry, saved[0], saved[1]);
  kernels::maxpool_forward(p.geometry, x.data(), saved[0].data(), codes);
  return {saved[0].data(), codes};
}
template <class T>
Maxima<T> saved_maxima(const PoolOpParams& p, std::span<Array<T>> saved) {
  return {saved[0].data(), kernels::maxpool_keeps_codes(p.geometry) ? saved[1].data() : nullptr};
}

template <class T>
OpInfo<T> route_row(RouteRole role) {
  OpInfo<T> r;
  r.name = role == RouteRole::route ? "maxpool_route" : "maxpool_gather";
  r.arity = 2;
  r.n_saved = 2;  // the maxima, and a 2x2 pool's window codes
  r.flags = kPullbackIgnoresOutput;
  r.plan = [role](const OpParams* params, std::span<const Shape* const> s) {
    return plan_route(role, role == RouteRole::route ? "maxpool_route" : "maxpool_gather", s,
                      [&](const Shape& x) { return plan(params_as<PoolOpParams>(params), x); });
  };
  // gather: out (+)= v at the chosen elements; route: out (+)= gy sent to them,
  // from the window codes where the pool keeps them (written whole when they cover x).
  auto run = [](RouteRole which, const PoolOpParams& p, const Array<T>& x, Maxima<T> y, const T* values, T* out, bool add) {
    if (which == RouteRole::gather) return kernels::maxpool_gather(p.geometry, x.data(), y.values, values, out, add, y.codes);
    const bool write = !add && y.codes && kernels::maxpool_codes_cover_input(p.geometry);
    if (!add && !write) std::fill(out, out + x.size(), T(0));
    kernels::maxpool_backward(p.geometry, x.data(), y.values, values, out, y.codes, write);
  };
  r.forward = [role, run](const ForwardCall<T>& c) {
    const auto& p = params_as<PoolOpParams>(c.params);
    run(role, p, *c.inputs[0], maxima(p, *c.inputs[0], c.saved), c.inputs[1]->data(), c.output.data(), false);
  };
  // The other role, applied to the output adjoint, with the forward's maxima; x gets nothing (Note [Maxpool routes]).
  r.pullback = [role, run](const PullbackCall<T>& c) {
    if (!c.input_adjoints[1]) return;
    const auto& p = params_as<PoolOpParams>(c.params);
    run(other_role(role), p, *c.inputs[0], saved_maxima(p, c.saved), c.output_adjoint.data(), c.input_adjoints[1]->data(), true);
  };
  r.record_pullback = [role](const RecordedPullbackCall<T>& c) {
    if (!c.wants(1)) return;
    const OpInfo<T>& other = role == RouteRole::route ? maxpool_gather_op<T>() : maxpool_route_op<T>();
    c.contribute(1, record_route<T>(other, c.params, c.input(0), c.output_adjoint));
  };
  r.print_params = &print_pool_params;
  r.save_params = [](const OpParams* p, ParamWriter& w) {
    save_pool_params(params_as<PoolOpParams>(p).user, w);
    w.boolean(params_as<PoolOpParams>(p).global);
  };
  r.load_params = [](ParamReader& in) {
    const PoolParams u = load_pool_params(in);
    return make_params(u, PoolKind::max, in.boolean("global"));
  };
  return r;
}

}  // namespace

template <class T>
OpInfo<T> maxpool_row() {
  return pool_row<T>(PoolKind::max, false);
}
template <class T>
OpInfo<T> meanpool_row() {
  return pool_row<T>(PoolKind::mean, false);
}
template <class T>
OpInfo<T> lppool_row() {
  return pool_row<T>(PoolKind::lp, false);
}
template <class T>
OpInfo<T> global_maxpool_row() {
  return pool_row<T>(PoolKind::max, true);
}
template <class T>
OpInfo<T> global_meanpool_row() {
  return pool_row<T>(PoolKind::mean, true);
}

template <class T>
OpInfo<T> maxpool_route_row() {
  return route_row<T>(RouteRole::route);
}
template <class T>
OpInfo<T> maxpool_gather_row() {
  return route_row<T>(RouteRole::gather);
}

// The family's op table (Note [Op tables]).
#define TG_POOL_ROWS(X) X(maxpool) X(meanpool) X(lppool) X(global_maxpool) X(global_meanpool) X(maxpool_route) X(maxpool_gather)
TG_OP_TABLE(pool, TG_POOL_ROWS)

namespace {

template <class T>
const OpInfo<T>& pool_op(PoolKind kind, bool global) {
  switch (kind) {
    case PoolKind::max: return global ? global_maxpool_op<T>() : maxpool_op<T>();
    case PoolKind::mean: return global ? global_meanpool_op<T>() : meanpool_op<T>();
    default: return lppool_op<T>();
  }
}

std::shared_ptr<PoolOpParams> make_params(const PoolParams& u, PoolKind kind, bool global) {
  auto p = std::make_shared<PoolOpParams>();
  p->user = u;
  p->kind = kind;
  p->global = global;
  return p;
}

template <class T>
Tracked<T> pool_tracked(const Tracked<T>& x, const PoolParams& u, PoolKind kind, bool global, const std::source_location& where) {
  return record_op(pool_op<T>(kind, global), make_params(u, kind, global), {Operand<T>(x, where)}, where);
}

template <class T>
Array<T> pool_eval(const Array<T>& x, const PoolParams& u, PoolKind kind, bool global, const std::source_location& where) {
  const auto p = make_params(u, kind, global);
  return evaluate_op(pool_op<T>(kind, global), p.get(), {&x}, where);
}

}  // namespace

template <class T>
Tracked<T> maxpool_route_tracked(const Tracked<T>& x, const Tracked<T>& values, const PoolParams& p, bool gather,
                                 const std::source_location& where) {
  return record_op(gather ? maxpool_gather_op<T>() : maxpool_route_op<T>(), make_params(p, PoolKind::max, false),
                   {Operand<T>(x, where), Operand<T>(values, where)}, where);
}
template Tracked<float> maxpool_route_tracked(const Tracked<float>&, const Tracked<float>&, const PoolParams&, bool,
                                              const std::source_location&);
template Tracked<double> maxpool_route_tracked(const Tracked<double>&, const Tracked<double>&, const PoolParams&, bool,
                                               const std::source_location&);

}  // namespace tg::ops

namespace tg {

#define TG_DEFINE_POOL(name, kind)                                                                                     \
  template <class T>                                                                                                   \
  Tracked<T> name(const Tracked<T>& x, const PoolParams& p, std::source_location where) {                              \
    return ops::pool_tracked(x, p, kind, false, where);                                                                \
  }                                                                                                                    \
  template <class T>                                                                                                   \
  Array<T> name(const Array<T>& x, const PoolParams& p, std::source_location where) {                                  \
    return ops::pool_eval(x, p, kind, false, where);                                                                   \
  }                                                                                                                    \
  template Tracked<float> name(const Tracked<float>&, const PoolParams&, std::source_location);                        \
  template Tracked<double> name(const Tracked<double>&, const PoolParams&, std::source_location);                      \
  template Array<float> name(const Array<float>&, const PoolParams&, std::source_location);                            \
  template Array<double> name(const Array<double>&, const PoolParams&, std::source_location);
TG_DEFINE_POOL(maxpool, ops::PoolKind::max)
TG_DEFINE_POOL(meanpool, ops::PoolKind::mean)
TG_DEFINE_POOL(lppool, ops::PoolKind::lp)
#undef TG_DEFINE_POOL

#define TG_DEFINE_GLOBAL_POOL(name, kind)                                                                 \
  template <class T>                                                                                      \
  Tracked<T> name(const Tracked<T>& x, std::source_location where) {                                      \
    return ops::pool_tracked(x, PoolParams{}, kind, true, where);                                         \
  }                                                                                                       \
  template <class T>                                                                                      \
  Array<T> name(const Array<T>& x, std::source_location where) {                                          \
    return ops::pool_eval(x, PoolParams{}, kind, true, where);                                            \
  }                                                                                                       \
  template Tracked<float> name(const Tracked<float>&, std::source_location);                              \
  template Tracked<double> name(const Tracked<double>&, std::source_location);                            \
  template Array<float> name(const Array<float>&, std::source_location);                                  \
  template Array<double> name(const Array<double>&, std::source_location);
TG_DEFINE_GLOBAL_POOL(global_maxpool, ops::PoolKind::max)
TG_DEFINE_GLOBAL_POOL(global_meanpool, ops::PoolKind::mean)
#undef TG_DEFINE_GLOBAL_POOL

}  // namespace tg
