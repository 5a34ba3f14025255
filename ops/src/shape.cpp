// ============================================================================
// Shape ops: reshape, permute, slice, concat, broadcast_to. Each moves elements
// with the one strided copy kernel; each pullback is the same copy reversed
// (accumulating), or a sum over broadcast dimensions.
// ============================================================================
#include "tapegrad/ops/shape.hpp"

#include "builtin_ops.hpp"
#include "op_table.hpp"
#include "recorded_pullbacks.hpp"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "tapegrad/autodiff/record.hpp"
#include "tapegrad/kernels/reduce.hpp"
#include "tapegrad/ops/pad.hpp"

namespace tg::ops {
namespace {

template <class T>
OpInfo<T> base_row(const char* name, int arity) {
  OpInfo<T> row;
  row.name = name;
  row.arity = arity;
  row.flags = kLinear;
  return row;
}

template <class T>
void add_into(const Array<T>& src, Array<T>& dst) {
  for (std::int64_t i = 0; i < dst.size(); ++i) dst.data()[i] += src.data()[i];
}

}  // namespace

// ---- reshape ----------------------------------------------------------------
struct ReshapeParams : OpParams {
  Shape target;  // may hold one -1
};

template <class T>
OpInfo<T> reshape_row() {
  auto r = base_row<T>("reshape", 1);
  r.shape = [](const OpParams* p, std::span<const Shape* const> s) {
    return resolve_reshape(*s[0], params_as<ReshapeParams>(p).target, "reshape");
  };
  r.print_params = [](const OpParams* p) { return fmt::format("shape={}", to_string(params_as<ReshapeParams>(p).target)); };
  r.save_params = [](const OpParams* p, ParamWriter& w) { w.list(params_as<ReshapeParams>(p).target.dims()); };
  r.load_params = [](ParamReader& in) {
    auto p = std::make_shared<ReshapeParams>();
    p->target = Shape(std::span<const std::int64_t>(in.list("shape")));
    return p;
  };
  r.forward = [](const ForwardCall<T>& c) {
    if (c.output.size() > 0) std::memcpy(c.output.data(), c.inputs[0]->data(), sizeof(T) * c.output.size());
  };
  r.flags |= kPullbackCanAssign | kView;  // a compiled program gives it its input's bytes (Note [Views share buffers])
  r.pullback = [](const PullbackCall<T>& c) {
    Array<T>& gx = *c.input_adjoints[0];
    if (!c.assigns(0)) add_into(c.output_adjoint, gx);
    else if (gx.size() > 0) std::memcpy(gx.data(), c.output_adjoint.data(), sizeof(T) * gx.size());
  };
  r.record_pullback = recorded_by_input<T>(
      [](const RecordedPullbackCall<T>& c) { return tg::reshape(c.output_adjoint, c.input(0).shape()); });
  return r;
}

// ---- permute ----------------------------------------------------------------
struct PermuteParams : OpParams {
  std::vector<std::int64_t> perm;
};

namespace {
void check_perm(const std::vector<std::int64_t>& perm, std::size_t rank) {
  std::vector<bool> seen(rank, false);
  bool ok = perm.size() == rank;
  for (auto a : perm) {
    if (!ok) break;
    ok = a >= 0 && a < static_cast<std::int64_t>(rank) && !seen[static_cast<std::size_t>(a)];
    if (ok) seen[static_cast<std::size_t>(a)] = true;
  }
  if (!ok)
    fail("permute", fmt::format("axes [{}] are not a permutation of 0..{} expected each axis exactly once",
                                fmt::join(perm, ","), static_cast<std::int64_t>(rank) - 1));
}
// Strides reading the input in output order: out axis i walks input axis perm[i].
Strides permuted_strides(const Shape& in, const std::vector<std::int64_t>& perm) {
  const Strides st = contiguous_strides(in);
  Strides out = st;
  for (std::size_t i = 0; i < perm.size(); ++i) out[i] = st[static_cast<std::size_t>(perm[i])];
  return out;
}
}  // namespace

template <class T>
OpInfo<T> permute_row() {
  auto r = base_row<T>("permute", 1);
  r.shape = [](const OpParams* p, std::span<const Shape* const> s) {
    const auto& perm = params_as<PermuteParams>(p).perm;
    check_perm(perm, s[0]->rank());
    Shape out = *s[0];
    for (std::size_t i = 0; i < perm.size(); ++i) out[i] = (*s[0])[static_cast<std::size_t>(perm[i])];
    return out;
  };
  r.print_params = [](const OpParams* p) { return fmt::format("perm=[{}]", fmt::join(params_as<PermuteParams>(p).perm, ",")); };
  r.save_params = [](const OpParams* p, ParamWriter& w) { w.list(params_as<PermuteParams>(p).perm); };
  r.load_params = [](ParamReader& in) {
    auto p = std::make_shared<PermuteParams>();
    p->perm = in.list("perm");
    return p;
  };
  r.forward = [](const ForwardCall<T>& c) {
    const Strides src = permuted_strides(c.inputs[0]->shape(), params_as<PermuteParams>(c.params).perm);
    kernels::strided_copy<false>(c.output.shape(), c.inputs[0]->data(), src, c.output.data(), contiguous_strides(c.output.shape()));
  };
  r.pullback = [](const PullbackCall<T>& c) {
    const Strides dst = permuted_strides(c.inputs[0]->shape(), params_as<PermuteParams>(c.params).perm);
    kernels::strided_copy<true>(c.output.shape(), c.output_adjoint.data(), contiguous_strides(c.output.shape()),
                                c.input_adjoints[0]->data(), dst);
  };
  // The inverse permutation: output axis i came from input axis perm[i].
  r.record_pullback = recorded_by_input<T>([](const RecordedPullbackCall<T>& c) {
    const auto& perm = params_as<PermuteParams>(c.params).perm;
    std::vector<std::int64_t> inverse(perm.size());
    for (std::size_t i = 0; i < perm.size(); ++i) inverse[static_cast<std::size_t>(perm[i])] = std::int64_t(i);
    return tg::permute(c.output_adjoint, inverse);
  });
  return r;
}

// ---- slice ------------------------------------------------------------------
struct SliceParams : OpParams {
  std::int64_t axis = 0, start = 0, stop = 0, step = 1;  // as given (start/stop may be negative)
};

namespace {
SliceParams slice_params(std::int64_t axis, std::int64_t start, std::int64_t stop, std::int64_t step) {
  SliceParams p;
  p.axis = axis;
  p.start = start;
  p.stop = stop;
  p.step = step;
  return p;
}
struct SliceGeometry {
  std::size_t axis;
  std::int64_t start, count;
};
SliceGeometry slice_geometry(const SliceParams& p, const Shape& in) {
  const std::size_t axis = normalize_axis(p.axis, in.rank(), "slice");
  const std::int64_t n = in[axis];
  if (p.step < 1) fail("slice", fmt::format("step ({}) must be >= 1", p.step));
  const std::int64_t start = p.start < 0 ? p.start + n : p.start, stop = p.stop < 0 ? p.stop + n : p.stop;
  if (start < 0 || stop > n || start > stop)
    fail("slice", fmt::format("range [{}, {}) out of bounds for axis {} of length {} expected 0 <= start <= stop <= {}; "
                              "hint: negative indices count from the end",
                              p.start, p.stop, p.axis, n, n));
  return {axis, start, stop == start ? 0 : (stop - start - 1) / p.step + 1};  // ceil((stop - start) / step), for any step
}
// Strides and base offset that read the sliced elements out of the input.
std::pair<Strides, std::int64_t> slice_view(const SliceParams& p, const Shape& in) {
  const auto g = slice_geometry(p, in);
  Strides st = contiguous_strides(in);
  const std::int64_t offset = g.start * st[g.axis];
  if (g.count > 1) st[g.axis] *= p.step;  // (count - 1) * step < n: no overflow; with one element the stride is never used
  return {st, offset};
}
}  // namespace

template <class T>
const OpInfo<T>& slice_op();

template <class T>
OpInfo<T> slice_row() {
  auto r = base_row<T>("slice", 1);
  r.shape = [](const OpParams* p, std::span<const Shape* const> s) {
    const auto g = slice_geometry(params_as<SliceParams>(p), *s[0]);
    Shape out = *s[0];
    out[g.axis] = g.count;
    return out;
  };
  r.print_params = [](const OpParams* p) {
    const auto& q = params_as<SliceParams>(p);
    return fmt::format("axis={} start={} stop={} step={}", q.axis, q.start, q.stop, q.step);
  };
  r.save_params = [](const OpParams* p, ParamWriter& w) {
    const auto& q = params_as<SliceParams>(p);
    for (auto v : {q.axis, q.start, q.stop, q.step}) w.i64(v);
  };
  r.load_params = [](ParamReader& in) {
    auto p = std::make_shared<SliceParams>();
    p->axis = in.i64("axis");
    p->start = in.i64("start");
    p->stop = in.i64("stop");
    p->step = in.i64("step");
    return p;
  };
  r.forward = [](const ForwardCall<T>& c) {
    const auto [st, offset] = slice_view(params_as<SliceParams>(c.params), c.inputs[0]->shape());
    kernels::strided_copy<false>(c.output.shape(), c.inputs[0]->data() + offset, st, c.output.data(),
                                 contiguous_strides(c.output.shape()));
  };
  r.pullback = [](const PullbackCall<T>& c) {
    const auto [st, offset] = slice_view(params_as<SliceParams>(c.params), c.inputs[0]->shape());
    kernels::strided_copy<true>(c.output.shape(), c.output_adjoint.data(), contiguous_strides(c.output.shape()),
                                c.input_adjoints[0]->data() + offset, st);
  };
  r.transposable = &always_transposable;
  r.record_pullback = recorded_by_adjoint<T, SliceParams>(&slice_op<T>);
  return r;
}

// ---- concat -----------------------------------------------------------------
struct ConcatParams : OpParams {
  std::int64_t axis = 0;
};

namespace {
// Viewing each array as (outer, extent along axis * inner): copy row blocks.
std::int64_t outer_of(const Shape& s, std::size_t axis) {
  std::int64_t n = 1;
  for (std::size_t i = 0; i < axis; ++i) n *= s[i];
  return n;
}
}  // namespace

template <class T>
OpInfo<T> concat_row() {
  auto r = base_row<T>("concat", kVariadic);
  r.shape = [](const OpParams* p, std::span<const Shape* const> s) {
    const Shape& first = *s[0];
    const std::size_t axis = normalize_axis(params_as<ConcatParams>(p).axis, first.rank(), "concat");
    Shape out = first;
    for (std::size_t k = 1; k < s.size(); ++k) {
      bool ok = s[k]->rank() == first.rank();
      for (std::size_t i = 0; ok && i < first.rank(); ++i) ok = i == axis || (*s[k])[i] == first[i];
      if (!ok)
        fail("concat", fmt::format("input {} has shape {} but input 0 has {} all dimensions except axis {} must match",
                                   k, to_string(*s[k]), to_string(first), axis));
      out[axis] += (*s[k])[axis];
    }
    return out;
  };
  r.print_params = [](const OpParams* p) { return fmt::format("axis={}", params_as<ConcatParams>(p).axis); };
  r.save_params = [](const OpParams* p, ParamWriter& w) { w.i64(params_as<ConcatParams>(p).axis); };
  r.load_params = [](ParamReader& in) {
    auto p = std::make_shared<ConcatParams>();
    p->axis = in.i64("axis");
    return p;
  };
  r.forward = [](const ForwardCall<T>& c) {
    const std::size_t axis = normalize_axis(params_as<ConcatParams>(c.params).axis, c.output.rank(), "concat");
    const std::int64_t outer = outer_of(c.output.shape(), axis), out_row = c.output.size() / std::max<std::int64_t>(outer, 1);
    std::int64_t col = 0;
    for (const Array<T>* in : c.inputs) {
      const std::int64_t in_row = outer ? in->size() / outer : 0;
      for (std::int64_t o = 0; o < outer; ++o)
        std::copy(in->data() + o * in_row, in->data() + (o + 1) * in_row, c.output.data() + o * out_row + col);
      col += in_row;
    }
  };
  r.pullback = [](const PullbackCall<T>& c) {
    const std::size_t axis = normalize_axis(params_as<ConcatParams>(c.params).axis, c.output.rank(), "concat");
    const std::int64_t outer = outer_of(c.output.shape(), axis), out_row = c.output.size() / std::max<std::int64_t>(outer, 1);
    std::int64_t col = 0;
    for (std::size_t k = 0; k < c.inputs.size(); ++k) {
      const std::int64_t in_row = outer ? c.inputs[k]->size() / outer : 0;
      if (Array<T>* g = c.input_adjoints[k])
        for (std::int64_t o = 0; o < outer; ++o)
          for (std::int64_t j = 0; j < in_row; ++j) g->data()[o * in_row + j] += c.output_adjoint.data()[o * out_row + col + j];
      col += in_row;
    }
  };
  // Each input's adjoint is its slice of the output's (the slice's own is a pad).
  r.record_pullback = [](const RecordedPullbackCall<T>& c) {
    const std::int64_t axis = static_cast<std::int64_t>(normalize_axis(params_as<ConcatParams>(c.params).axis, c.output.rank(), "concat"));
    std::int64_t offset = 0;
    for (std::size_t k = 0; k < c.inputs.size(); ++k) {
      const std::int64_t len = c.input(k).shape()[static_cast<std::size_t>(axis)];
      if (c.wants(k)) c.contribute(k, tg::slice(c.output_adjoint, axis, offset, offset + len));
      offset += len;
    }
  };
  return r;
}

// ---- broadcast_to -----------------------------------------------------------
struct BroadcastParams : OpParams {
  Shape target;
};

template <class T>
OpInfo<T> broadcast_to_row() {
  auto r = base_row<T>("broadcast_to", 1);
  r.shape = [](const OpParams* p, std::span<const Shape* const> s) {
    const Shape& target = params_as<BroadcastParams>(p).target;
    if (!(broadcast_shapes(*s[0], target, "broadcast_to") == target))
      fail("broadcast_to", fmt::format("shape {} does not broadcast to {} expected each dimension to match or be 1",
                                       to_string(*s[0]), to_string(target)));
    return target;
  };
  r.print_params = [](const OpParams* p) { return fmt::format("shape={}", to_string(params_as<BroadcastParams>(p).target)); };
  r.save_params = [](const OpParams* p, ParamWriter& w) { w.list(params_as<BroadcastParams>(p).target.dims()); };
  r.load_params = [](ParamReader& in) {
    auto p = std::make_shared<BroadcastParams>();
    p->target = Shape(std::span<const std::int64_t>(in.list("shape")));
    return p;
  };
  r.forward = [](const ForwardCall<T>& c) {
    const Shape& so = c.output.shape();
    kernels::strided_copy<false>(so, c.inputs[0]->data(), broadcast_strides(c.inputs[0]->shape(), so), c.output.data(),
                                 contiguous_strides(so));
  };
  r.pullback = [](const PullbackCall<T>& c) {
    kernels::sum_accumulate(c.output_adjoint.data(), c.output.shape(), c.input_adjoints[0]->data(), c.inputs[0]->shape());
  };
  r.record_pullback = recorded_by_input<T>([](const RecordedPullbackCall<T>& c) { return c.output_adjoint; });
  return r;
}

// The family's op table (Note [Op tables]).
#define TG_SHAPE_ROWS(X) X(reshape) X(permute) X(slice) X(concat) X(broadcast_to)
TG_OP_TABLE(shape, TG_SHAPE_ROWS)

}  // namespace tg::ops

namespace tg {
using namespace tg::ops;

template <class T>
Tracked<T> reshape(const Tracked<T>& x, const Shape& shape, std::source_location where) {
  auto p = std::make_shared<ReshapeParams>();
  p->target = shape;
  return record_op(reshape_op<T>(), std::move(p), {Operand<T>(x, where)}, where);
}
template <class T>
Array<T> reshape(const Array<T>& x, const Shape& shape, std::source_location where) {
  ReshapeParams p;
  p.target = shape;
  return evaluate_op(reshape_op<T>(), &p, {&x}, where);
}

template <class T>
Tracked<T> permute(const Tracked<T>& x, const std::vector<std::int64_t>& perm, std::source_location where) {
  auto p = std::make_shared<PermuteParams>();
  p->perm = perm;
  return record_op(permute_op<T>(), std::move(p), {Operand<T>(x, where)}, where);
}
template <class T>
Array<T> permute(const Array<T>& x, const std::vector<std::int64_t>& perm, std::source_location where) {
  PermuteParams p;
  p.perm = perm;
  return evaluate_op(permute_op<T>(), &p, {&x}, where);
}

namespace {
std::vector<std::int64_t> swap_last_two(std::size_t rank, const std::source_location& where) {
  if (rank < 2)
    throw Error("transpose", fmt::format("input has rank {} expected rank >= 2; hint: use permute or reshape", rank)).with_site(where);
  std::vector<std::int64_t> perm(rank);
  for (std::size_t i = 0; i < rank; ++i) perm[i] = static_cast<std::int64_t>(i);
  std::swap(perm[rank - 1], perm[rank - 2]);
  return perm;
}
}  // namespace

template <class T>
Tracked<T> transpose(const Tracked<T>& x, std::source_location where) {
  return permute(x, swap_last_two(x.rank(), where), where);
}
template <class T>
Array<T> transpose(const Array<T>& x, std::source_location where) {
  return permute(x, swap_last_two(x.rank(), where), where);
}

template <class T>
Tracked<T> slice(const Tracked<T>& x, std::int64_t axis, std::int64_t start, std::int64_t stop, std::int64_t step,
                 std::source_location where) {
  auto p = std::make_shared<SliceParams>(slice_params(axis, start, stop, step));
  return record_op(slice_op<T>(), std::move(p), {Operand<T>(x, where)}, where);
}
template <class T>
Array<T> slice(const Array<T>& x, std::int64_t axis, std::int64_t start, std::int64_t stop, std::int64_t step,
               std::source_location where) {
  const SliceParams p = slice_params(axis, start, stop, step);
  return evaluate_op(slice_op<T>(), &p, {&x}, where);
}

template <class T>
Tracked<T> concat(const std::vector<Tracked<T>>& xs, std::int64_t axis, std::source_location where) {
  auto p = std::make_shared<ConcatParams>();
  p->axis = axis;
  std::vector<Operand<T>> operands;
  operands.reserve(xs.size());
  for (const auto& x : xs) operands.emplace_back(x, where);
  return record_op(concat_op<T>(), std::move(p), std::span<const Operand<T>>(operands), where);
}
template <class T>
Array<T> concat(const std::vector<Array<T>>& xs, std::int64_t axis, std::source_location where) {
  ConcatParams p;
  p.axis = axis;
  std::vector<const Array<T>*> inputs;
  for (const auto& x : xs) inputs.push_back(&x);
  return evaluate_op(concat_op<T>(), &p, std::span<const Array<T>* const>(inputs), where);
}

template <class T>
Tracked<T> broadcast_to(const Tracked<T>& x, const Shape& shape, std::source_location where) {
  auto p = std::make_shared<BroadcastParams>();
  p->target = shape;
  return record_op(broadcast_to_op<T>(), std::move(p), {Operand<T>(x, where)}, where);
}
template <class T>
Array<T> broadcast_to(const Array<T>& x, const Shape& shape, std::source_location where) {
  BroadcastParams p;
  p.target = shape;
  return evaluate_op(broadcast_to_op<T>(), &p, {&x}, where);
}

#define TG_INSTANTIATE(T)                                                                                        \
  template Tracked<T> reshape(const Tracked<T>&, const Shape&, std::source_location);                            \
  template Array<T> reshape(const Array<T>&, const Shape&, std::source_location);                                \
  template Tracked<T> permute(const Tracked<T>&, const std::vector<std::int64_t>&, std::source_location);        \
  template Array<T> permute(const Array<T>&, const std::vector<std::int64_t>&, std::source_location);            \
  template Tracked<T> transpose(const Tracked<T>&, std::source_location);                                        \
  template Array<T> transpose(const Array<T>&, std::source_location);                                            \
  template Tracked<T> slice(const Tracked<T>&, std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::source_location); \
  template Array<T> slice(const Array<T>&, std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::source_location);     \
  template Tracked<T> concat(const std::vector<Tracked<T>>&, std::int64_t, std::source_location);               \
  template Array<T> concat(const std::vector<Array<T>>&, std::int64_t, std::source_location);                   \
  template Tracked<T> broadcast_to(const Tracked<T>&, const Shape&, std::source_location);                       \
  template Array<T> broadcast_to(const Array<T>&, const Shape&, std::source_location);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg
