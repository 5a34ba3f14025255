// Reductions: sum, mean, max, min over the whole array or along axes.
//   tg::sum(x)                       -> rank 0
//   tg::sum(x, {0, 2}, /*keepdims=*/true)
// Axes may be negative (counted from the end); an empty list reduces nothing (as NumPy's axis=()).
// max/min: the adjoint is split evenly among ties (Note [Ties in max and min]).
#pragma once

#include <source_location>
#include <vector>

#include "tapegrad/autodiff/tracked.hpp"

namespace tg {

using Axes = std::vector<std::int64_t>;

// The reductions, one list (Note [Op tables] in ops/src/op_table.hpp): it
// declares them here and defines and registers them in reduce.cpp.
#define TG_REDUCTIONS(X) X(sum) X(mean) X(max) X(min)

#define TG_DECLARE_REDUCTION(name)                                                                                   \
  template <class T>                                                                                                 \
  Tracked<T> name(const Tracked<T>& x, std::source_location where = std::source_location::current());                \
  template <class T>                                                                                                 \
  Tracked<T> name(const Tracked<T>& x, const Axes& axes, bool keepdims = false,                                      \
                  std::source_location where = std::source_location::current());                                     \
  template <class T>                                                                                                 \
  Array<T> name(const Array<T>& x, std::source_location where = std::source_location::current());                    \
  template <class T>                                                                                                 \
  Array<T> name(const Array<T>& x, const Axes& axes, bool keepdims = false,                                          \
                std::source_location where = std::source_location::current());
TG_REDUCTIONS(TG_DECLARE_REDUCTION)
#undef TG_DECLARE_REDUCTION

}  // namespace tg
