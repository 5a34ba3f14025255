// Shape: the dimensions of an array, any rank (rank 0 is a scalar).
//
// Note [Small shapes]: a tape records thousands of tiny ops, and each holds a
// shape; a std::vector would cost one heap allocation per shape. Shape keeps
// up to kInlineRank dimensions inline and spills to the heap only beyond that.
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace tg {

class Shape {
 public:
  static constexpr std::size_t kInlineRank = 6;

  Shape() = default;
  Shape(std::initializer_list<std::int64_t> dims) { assign(dims.begin(), dims.size()); }
  explicit Shape(std::span<const std::int64_t> dims) { assign(dims.data(), dims.size()); }
  static Shape filled(std::size_t rank, std::int64_t value);

  Shape(const Shape& other) { assign(other.data(), other.rank_); }
  Shape(Shape&& other) noexcept { take(std::move(other)); }
  Shape& operator=(const Shape& other) {
    if (this != &other) assign(other.data(), other.rank_);
    return *this;
  }
  Shape& operator=(Shape&& other) noexcept {
    if (this != &other) take(std::move(other));
    return *this;
  }
  ~Shape() = default;

  std::size_t rank() const noexcept { return rank_; }
  // Product of dims; 1 for rank 0. Unchecked: every shape an Array or a tape
  // holds passed checked_size (Note [Checked sizes]).
  std::int64_t size() const noexcept {
    std::int64_t n = 1;
    for (std::size_t i = 0; i < rank_; ++i) n *= data()[i];
    return n;
  }
  const std::int64_t* data() const noexcept { return heap_ ? heap_.get() : inline_; }
  std::int64_t* data() noexcept { return heap_ ? heap_.get() : inline_; }
  std::int64_t operator[](std::size_t i) const noexcept { return data()[i]; }
  std::int64_t& operator[](std::size_t i) noexcept { return data()[i]; }
  const std::int64_t* begin() const noexcept { return data(); }
  const std::int64_t* end() const noexcept { return data() + rank_; }
  std::span<const std::int64_t> dims() const noexcept { return {data(), rank_}; }
  std::int64_t back() const noexcept { return data()[rank_ - 1]; }

  void push_back(std::int64_t d);
  friend bool operator==(const Shape& a, const Shape& b) noexcept {
    return std::equal(a.begin(), a.end(), b.begin(), b.end());
  }

 private:
  // Copies and moves run for every Array a kernel call builds (a fused block
  // builds several per member), so the inline case is a plain loop, inlined.
  void assign(const std::int64_t* dims, std::size_t rank) {
    if (rank > capacity_) grow(rank);
    std::int64_t* to = data();
    for (std::size_t i = 0; i < rank; ++i) to[i] = dims[i];
    rank_ = rank;
  }
  void take(Shape&& other) noexcept {
    rank_ = other.rank_;
    capacity_ = other.capacity_;
    heap_ = std::move(other.heap_);
    if (!heap_)
      for (std::size_t i = 0; i < rank_; ++i) inline_[i] = other.inline_[i];
    other.rank_ = 0;
    other.capacity_ = kInlineRank;
  }
  void grow(std::size_t capacity);  // heap storage for `capacity` dims; the contents are not kept

  std::int64_t inline_[kInlineRank] = {};
  std::unique_ptr<std::int64_t[]> heap_;
  std::size_t rank_ = 0;
  std::size_t capacity_ = kInlineRank;
};

using Strides = Shape;  // element strides, same small-vector storage

// Note [Checked sizes]: no shape may hold more than kMaxElements elements, so
// that every element count, offset and stride, and the byte count of an array
// of 8-byte elements (with room to spare), fits in int64. Shape::size() multiplies without
// checks; the places that create shapes check instead: Array storage (owned or
// borrowed), reshape targets, broadcast results, tape files. An impossible
// size is a tg::Error that names the dimensions, never the wrapped product.
inline constexpr std::int64_t kMaxElements = std::int64_t{1} << 59;

// The product of dims, or -1 when a dim is negative or the product exceeds kMaxElements.
std::int64_t bounded_size(std::span<const std::int64_t> dims) noexcept;
// The product of shape's dims; throws tg::Error naming `op` when bounded_size would give -1.
std::int64_t checked_size(const Shape& shape, const char* op);

// "(2,3,4)"; "()" for rank 0.
std::string to_string(const Shape& shape);

// Row-major strides of a contiguous array of this shape.
Strides contiguous_strides(const Shape& shape);

// NumPy broadcasting of two shapes; throws tg::Error naming `op` if they do not broadcast.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

// Strides that read an array of shape `from` as if it had shape `to` (which `from`
// broadcasts to): same rank as `to`, 0 on broadcast dimensions.
Strides broadcast_strides(const Shape& from, const Shape& to);

// Normalises a possibly negative axis against `rank`; throws tg::Error naming `op`.
std::size_t normalize_axis(std::int64_t axis, std::size_t rank, const char* op);

// A per-dimension attribute (stride, padding, window, ...): one value per
// spatial dim, or one for all: {.stride = {2}}, {.padding = {1, 0}}. A bare
// number ({.stride = 2}) is a one-line compile error saying so, instead of
// pages of failed conversions.
struct DimList : std::vector<std::int64_t> {
  using std::vector<std::int64_t>::vector;
  DimList() = default;
  DimList(std::initializer_list<std::int64_t> values) : std::vector<std::int64_t>(values) {}
  DimList(const std::vector<std::int64_t>& values) : std::vector<std::int64_t>(values) {}  // NOLINT: implicit
  template <class I>
    requires std::is_arithmetic_v<I>
  DimList(I) {  // NOLINT: implicit, to reach the static_assert
    static_assert(sizeof(I) == 0, "tg: a per-dimension attribute is a list: write {.stride = {2}}, not {.stride = 2}");
  }
};

// A per-dim attribute list (stride, padding, origin, ...) holds nothing (the
// default), one value for every dim, or one per dim: throws otherwise, naming
// `what` and the dims ("spatial dim" or "dim"). Every such list is checked here.
void check_dim_list(const std::vector<std::int64_t>& values, std::size_t dims, const char* what, const char* dim_word,
                    const char* op);

}  // namespace tg
