// What the ops' recorded pullbacks share (Note [Recorded pullbacks] in
// autodiff/registry.hpp): each records its op's pullback with public ops, which
// have recorded pullbacks themselves, so any order of derivative works.
#pragma once

#include "tapegrad/autodiff/registry.hpp"
#include "tapegrad/ops/arithmetic.hpp"
#include "tapegrad/ops/reduce.hpp"
#include "tapegrad/ops/shape.hpp"

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

}  // namespace tg::ops
