// Shape ops: reshape, permute/transpose, slice, concat, broadcast_to.
#pragma once

#include <source_location>
#include <vector>

#include "tapegrad/autodiff/tracked.hpp"

namespace tg {

// Same elements, new shape; one dimension may be -1 (inferred).
template <class T>
Tracked<T> reshape(const Tracked<T>& x, const Shape& shape, std::source_location where = std::source_location::current());
template <class T>
Array<T> reshape(const Array<T>& x, const Shape& shape, std::source_location where = std::source_location::current());

// Output axis i is input axis perm[i].
template <class T>
Tracked<T> permute(const Tracked<T>& x, const std::vector<std::int64_t>& perm,
                   std::source_location where = std::source_location::current());
template <class T>
Array<T> permute(const Array<T>& x, const std::vector<std::int64_t>& perm,
                 std::source_location where = std::source_location::current());

// Swaps the last two axes (rank >= 2): the matrix transpose, batched.
template <class T>
Tracked<T> transpose(const Tracked<T>& x, std::source_location where = std::source_location::current());
template <class T>
Array<T> transpose(const Array<T>& x, std::source_location where = std::source_location::current());

// Elements start, start+step, ... < stop along `axis` (Python semantics for negative start/stop; step >= 1).
template <class T>
Tracked<T> slice(const Tracked<T>& x, std::int64_t axis, std::int64_t start, std::int64_t stop, std::int64_t step = 1,
                 std::source_location where = std::source_location::current());
template <class T>
Array<T> slice(const Array<T>& x, std::int64_t axis, std::int64_t start, std::int64_t stop, std::int64_t step = 1,
               std::source_location where = std::source_location::current());

// Joins arrays along an existing axis; all other dimensions must match.
template <class T>
Tracked<T> concat(const std::vector<Tracked<T>>& xs, std::int64_t axis,
                  std::source_location where = std::source_location::current());
template <class T>
Array<T> concat(const std::vector<Array<T>>& xs, std::int64_t axis, std::source_location where = std::source_location::current());

// NumPy broadcasting to an explicit shape.
template <class T>
Tracked<T> broadcast_to(const Tracked<T>& x, const Shape& shape, std::source_location where = std::source_location::current());
template <class T>
Array<T> broadcast_to(const Array<T>& x, const Shape& shape, std::source_location where = std::source_location::current());

}  // namespace tg
