#include "tapegrad/kernels/shape.hpp"

#include <fmt/format.h>

#include "tapegrad/kernels/error.hpp"

namespace tg {

Shape Shape::filled(std::size_t rank, std::int64_t value) {
  Shape s;
  for (std::size_t i = 0; i < rank; ++i) s.push_back(value);
  return s;
}

void Shape::grow(std::size_t capacity) {
  heap_ = std::make_unique<std::int64_t[]>(capacity);
  capacity_ = capacity;
}

void Shape::push_back(std::int64_t d) {
  if (rank_ == capacity_) {
    auto bigger = std::make_unique<std::int64_t[]>(capacity_ * 2);
    std::copy(begin(), end(), bigger.get());
    heap_ = std::move(bigger);
    capacity_ *= 2;
  }
  data()[rank_++] = d;
}

std::int64_t bounded_size(std::span<const std::int64_t> dims) noexcept {
  std::int64_t n = 1;
  bool zero = false;
  for (const std::int64_t d : dims) {
    if (d < 0) return -1;
    zero = zero || d == 0;
  }
  if (zero) return 0;  // (0, 2^62, 2^62) is empty, not too large
  for (const std::int64_t d : dims)
    if (__builtin_mul_overflow(n, d, &n) || n > kMaxElements) return -1;
  return n;
}

std::int64_t checked_size(const Shape& shape, const char* op) {
  const std::int64_t n = bounded_size(shape.dims());
  if (n >= 0) return n;
  for (const std::int64_t d : shape.dims())
    if (d < 0) fail(op, fmt::format("negative dimension in shape {} dimensions must be >= 0", to_string(shape)));
  fail(op, fmt::format("shape {} has more than 2^59 elements expected an array that fits in memory; hint: check the "
                       "dimensions for a wrong value",
                       to_string(shape)));
}

std::string to_string(const Shape& shape) { return fmt::format("({})", fmt::join(shape.dims(), ",")); }

Strides contiguous_strides(const Shape& shape) {
  Strides strides = shape;
  std::int64_t step = 1;
  for (std::size_t i = shape.rank(); i-- > 0;) {
    strides[i] = step;
    step *= shape[i];
  }
  return strides;
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  if (a == b) return a;
  const std::size_t rank = std::max(a.rank(), b.rank());
  Shape out = Shape::filled(rank, 1);
  for (std::size_t i = 0; i < rank; ++i) {
    const std::int64_t da = i < rank - a.rank() ? 1 : a[i - (rank - a.rank())];
    const std::int64_t db = i < rank - b.rank() ? 1 : b[i - (rank - b.rank())];
    if (da != db && da != 1 && db != 1)
      fail(op, fmt::format("shapes {} and {} are not broadcastable (dimension {}: {} vs {}) "
                           "each dimension must match or be 1; hint: reshape or broadcast_to one operand",
                           to_string(a), to_string(b), i, da, db));
    out[i] = da == 1 ? db : da;
  }
  checked_size(out, op);
  return out;
}

Strides broadcast_strides(const Shape& from, const Shape& to) {
  const Strides own = contiguous_strides(from);
  Strides out = Shape::filled(to.rank(), 0);
  const std::size_t lead = to.rank() - from.rank();
  for (std::size_t i = 0; i < from.rank(); ++i) out[lead + i] = from[i] == 1 ? 0 : own[i];
  return out;
}

std::size_t normalize_axis(std::int64_t axis, std::size_t rank, const char* op) {
  const auto r = static_cast<std::int64_t>(rank);
  if (axis < -r || axis >= r)
    fail(op, fmt::format("axis ({}) out of range for rank {} expected in [{}, {}); hint: negative axes count from the end",
                         axis, rank, -r, r));
  return static_cast<std::size_t>(axis < 0 ? axis + r : axis);
}

void check_dim_list(const std::vector<std::int64_t>& values, std::size_t dims, const char* what, const char* dim_word,
                    const char* op) {
  if (!values.empty() && values.size() != 1 && values.size() != dims)
    fail(op, fmt::format("{} has {} values ([{}]) expected 1 or {} (one per {})", what, values.size(),
                         fmt::join(values, ","), dims, dim_word));
}

}  // namespace tg

#include "tapegrad/kernels/array.hpp"

namespace tg {
Shape resolve_reshape(const Shape& from, const Shape& to, const char* op) {
  Shape out = to;
  int inferred = -1;
  for (std::size_t i = 0; i < to.rank(); ++i) {
    if (to[i] == -1) {
      if (inferred >= 0) fail(op, fmt::format("target shape {} has more than one -1 at most one dimension can be inferred", to_string(to)));
      inferred = static_cast<int>(i);
    } else if (to[i] < 0) {
      fail(op, fmt::format("target shape {} has a negative dimension dimensions must be >= 0 or a single -1", to_string(to)));
    }
  }
  const std::int64_t size = from.size();
  if (inferred >= 0) out[static_cast<std::size_t>(inferred)] = 1;
  const std::int64_t known = bounded_size(out.dims());  // -1: more than kMaxElements (Note [Checked sizes])
  if (known < 0 || (inferred < 0 && known != size))
    fail(op, fmt::format("target shape {} has {} elements but the input {} has {} sizes must match; hint: use -1 for one dimension",
                         to_string(to), known < 0 ? std::string("more than 2^59") : std::to_string(known), to_string(from), size));
  if (inferred >= 0) {
    if (known == 0 || size % known != 0)
      fail(op, fmt::format("cannot infer -1 in {} from shape {} of size {}; hint: the other dimensions must divide the size",
                           to_string(to), to_string(from), size));
    out[static_cast<std::size_t>(inferred)] = size / known;
  }
  return out;
}
}  // namespace tg
