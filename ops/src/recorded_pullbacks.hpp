// What the ops' recorded pullbacks share (Note [Recorded pullbacks] in
// autodiff/registry.hpp): each records its op's pullback with public ops, which
// have recorded pullbacks themselves, so any order of derivative works.
#pragma once

#include "tapegrad/autodiff/registry.hpp"
#include "tapegrad/ops/arithmetic.hpp"
#include "tapegrad/ops/reduce.hpp"
#include "tapegrad/ops/second_order.hpp"
#include "tapegrad/ops/shape.hpp"
#include "tapegrad/ops/unary.hpp"

namespace tg::ops {

// g summed over the dims it was broadcast along to reach its shape from `shape`
// (the leading dims it lacks, and dims where `shape` has 1): the adjoint of a broadcast.
template <class T>
Tracked<T> reduce_to_shape(const Tracked<T>& g, const Shape& shape) {
  const Shape gs = g.shape();
  if (gs == shape) return g;
  const std::int64_t extra = std::int64_t(gs.rank()) - std::int64_t(shape.rank());
  Axes axes;
  for (std::int64_t d = 0; d < std::int64_t(gs.rank()); ++d)
    if (d < extra || (shape[d - extra] == 1 && gs[d] != 1)) axes.push_back(d);
  return tg::reshape(tg::sum(g, axes), shape);
}

// A row's record_pullback from one function per input, each giving the
// contribution from (call) before it is reduced to the input's shape.
template <class T, class... Parts>
std::function<void(const RecordedPullbackCall<T>&)> recorded_by_input(Parts... parts) {
  return [parts...](const RecordedPullbackCall<T>& c) {
    std::size_t i = 0;
    auto one = [&](const auto& part) {
      if (c.wants(i)) c.contribute(i, reduce_to_shape(part(c), c.input(i).shape()));
      ++i;
    };
    (one(parts), ...);
  };
}

// A transposable row's record_pullback (Note [Linear adjoints]): linear_adjoint of the row (its
// accessor), over a copy of the instruction's params (P, the row's struct).
// The transposable hook of a row that is linear whatever its params.
inline bool always_transposable(const OpParams*) { return true; }

template <class T, class P>
std::function<void(const RecordedPullbackCall<T>&)> recorded_by_adjoint(const OpInfo<T>& (*row)()) {
  return [row](const RecordedPullbackCall<T>& c) {
    if (!c.wants(0)) return;
    auto params = std::make_shared<P>(params_as<P>(c.params));
    c.contribute(0, record_linear_adjoint<T>(row(), std::move(params), c.input(0).shape(), c.output_adjoint,
                                             std::source_location::current()));
  };
}

// Note [Masks in recorded pullbacks]: a piecewise pullback picks its branch by
// a comparison with the input, which must be an op of the tape (a mask taken
// from the values at recording would be wrong on replay). relu(x - c) is
// nonzero exactly where x > c, and where() gives its condition no gradient, so
// where(relu(x - c), a, b) is "x > c ? a : b" on every replay, with the
// first-order pullbacks' choice at the kinks kept by picking the strict side.
template <class T>
Tracked<T> if_above(const Tracked<T>& x, T c, const Operand<T>& above, const Operand<T>& otherwise) {
  const auto site = std::source_location::current();
  const Tracked<T> margin = c == T(0) ? tg::relu(x) : tg::relu(x - c);
  return where_tracked<T>(Operand<T>(margin, site), above, otherwise, site);
}
// "x < c ? below : otherwise".
template <class T>
Tracked<T> if_below(const Tracked<T>& x, T c, const Operand<T>& below, const Operand<T>& otherwise) {
  const auto site = std::source_location::current();
  const Tracked<T> margin = c == T(0) ? tg::relu(-x) : tg::relu(T(c) - x);
  return where_tracked<T>(Operand<T>(margin, site), below, otherwise, site);
}
// sign(x): 1, -1 or 0 (at 0), as the first-order pullbacks' sign_of.
template <class T>
Tracked<T> sign_of(const Tracked<T>& x) {
  const auto site = std::source_location::current();
  return if_above(x, T(0), Operand<T>(T(1), site), Operand<T>(if_below(x, T(0), Operand<T>(T(-1), site), Operand<T>(T(0), site)), site));
}

}  // namespace tg::ops
