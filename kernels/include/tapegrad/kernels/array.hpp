// Array<T>: owning, contiguous, row-major, 64-byte aligned N-D array.
// Value semantics: copying an Array copies its elements.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <new>
#include <ostream>
#include <random>
#include <span>
#include <type_traits>

#include <fmt/format.h>

#include "tapegrad/kernels/error.hpp"
#include "tapegrad/kernels/shape.hpp"

namespace tg {

namespace detail {
// Note [Aligned storage on malloc's fast path]: aligned operator new goes through
// glibc's memalign, several times slower than malloc for the tiny arrays a tape
// of small ops allocates by the thousand. We over-allocate by 64 bytes with
// malloc, align by hand, and keep the offset in the byte before the data.
//
// Note [Cached large blocks]: glibc hands blocks of a few MiB back to the OS
// when they are freed, so every fresh gradient() of an image-sized function
// page-faults all its arrays in again (measured: 2.6 ms -> 10.8 ms for the
// 500x500 filter seed case). Blocks of kLargeBlock bytes and more therefore
// come from a small process-wide cache of freed blocks (bounded, see
// tg::set_array_cache_limit); their offset byte is 0, which small blocks never use.
inline constexpr std::size_t kLargeBlock = std::size_t(1) << 20;
void* large_allocate(std::size_t bytes);
void large_free(void* aligned) noexcept;

inline void* aligned_allocate(std::size_t bytes) {
  if (bytes >= kLargeBlock) return large_allocate(bytes);
  auto* raw = static_cast<unsigned char*>(std::malloc(bytes + 64));
  if (!raw) throw std::bad_alloc();
  const std::size_t shift = 64 - (reinterpret_cast<std::uintptr_t>(raw) & 63);  // 1..64
  unsigned char* aligned = raw + shift;
  aligned[-1] = static_cast<unsigned char>(shift);
  return aligned;
}
// aligned_allocate for `count` elements of `element_bytes` (count <= kMaxElements);
// a failure is a tg::Error naming the shape and the bytes, not a bare std::bad_alloc.
void* allocate_array(std::size_t element_bytes, std::int64_t count, const Shape& shape);
struct AlignedFree {
  bool owned = true;  // false: borrowed storage (Array::borrowed), never freed here
  void operator()(void* p) const noexcept {
    if (!owned) return;
    auto* aligned = static_cast<unsigned char*>(p);
    if (aligned[-1] == 0) return large_free(p);
    std::free(aligned - aligned[-1]);
  }
};
}  // namespace detail

// Bytes of freed large arrays kept for reuse (Note [Cached large blocks]); 0 turns
// the cache off and releases what it holds. Default 256 MiB.
void set_array_cache_limit(std::size_t bytes);
// Hands every cached block back to the system (the limit stays): e.g. once a
// recorded tape that was compiled is dropped, its buffers are not needed again.
void release_array_cache();

template <class T>
class Array {
  static_assert(std::is_trivially_copyable_v<T>, "tg::Array<T>: T must be trivially copyable");

 public:
  using value_type = T;

  // An empty rank-1 array of size 0.
  Array() : shape_({0}) {}
  // Zero-filled array of this shape.
  explicit Array(Shape shape) : Array(uninitialized(std::move(shape))) { fill(T(0)); }
  Array(Shape shape, std::initializer_list<T> values) : Array(std::move(shape), std::span<const T>(values.begin(), values.size())) {}
  Array(Shape shape, std::span<const T> values) : Array(uninitialized(std::move(shape))) {
    if (static_cast<std::int64_t>(values.size()) != size())
      fail("Array", fmt::format("value count ({}) does not match shape {} of size {}; hint: give exactly one value per element",
                                values.size(), to_string(shape_), size()));
    if (size() > 0) std::memcpy(data_.get(), values.data(), sizeof(T) * values.size());
  }

  Array(const Array& other) : Array(uninitialized(other.shape_)) {
    if (size() > 0) std::memcpy(data(), other.data(), sizeof(T) * static_cast<std::size_t>(size()));
  }
  Array(Array&&) noexcept = default;
  Array& operator=(const Array& other) {
    if (this == &other) return *this;
    if (other.size() != size()) *this = uninitialized(other.shape_);
    shape_ = other.shape_;
    if (size() > 0) std::memcpy(data(), other.data(), sizeof(T) * static_cast<std::size_t>(size()));
    return *this;
  }
  Array& operator=(Array&&) noexcept = default;
  ~Array() = default;

  // Storage of this shape whose elements are left unset (kernels write all of them).
  // Throws tg::Error for a shape of more than kMaxElements elements (Note
  // [Checked sizes]) and when the memory cannot be had, naming the shape.
  static Array uninitialized(Shape shape) {
    Array a{NoInit{}};
    a.size_ = checked_size(shape, "Array");
    a.shape_ = std::move(shape);
    if (a.size_ > 0) a.data_.reset(static_cast<T*>(detail::allocate_array(sizeof(T), a.size_, a.shape_)));
    return a;
  }
  // An Array over storage someone else owns (a compiled tape's arena): it never
  // frees it, and the owner keeps it alive and 64-byte aligned. Copy-assigning an
  // Array of the same size writes into that storage; copying one gives an owning copy.
  static Array borrowed(Shape shape, T* storage) {
    Array a{NoInit{}};
    a.size_ = checked_size(shape, "Array::borrowed");
    a.shape_ = std::move(shape);
    a.data_ = std::unique_ptr<T[], detail::AlignedFree>(storage, detail::AlignedFree{false});
    return a;
  }
  bool owns_storage() const noexcept { return data_.get_deleter().owned; }
  static Array zeros(Shape shape) { return full(std::move(shape), T(0)); }
  static Array ones(Shape shape) { return full(std::move(shape), T(1)); }
  static Array full(Shape shape, T value) {
    Array a = uninitialized(std::move(shape));
    a.fill(value);
    return a;
  }
  static Array scalar(T value) { return full(Shape{}, value); }
  // The same values converted to another element type.
  template <class U>
  Array<U> cast() const {
    Array<U> out = Array<U>::uninitialized(shape());
    for (std::int64_t i = 0; i < size(); ++i) out.data()[i] = static_cast<U>(data()[i]);
    return out;
  }
  // 0, 1, 2, ... in row-major order (handy for hand-worked test answers).
  static Array iota(Shape shape, T start = T(0)) {
    Array a = uninitialized(std::move(shape));
    for (std::int64_t i = 0; i < a.size(); ++i) a.data()[i] = start + static_cast<T>(i);
    return a;
  }
  // Seeded: the same seed gives the same values on every run and machine with this standard library.
  static Array random_uniform(Shape shape, T low, T high, std::uint64_t seed) {
    Array a = uninitialized(std::move(shape));
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> dist(static_cast<double>(low), static_cast<double>(high));
    for (auto& v : a) v = static_cast<T>(dist(rng));
    return a;
  }
  static Array random_normal(Shape shape, T mean, T stddev, std::uint64_t seed) {
    Array a = uninitialized(std::move(shape));
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> dist(static_cast<double>(mean), static_cast<double>(stddev));
    for (auto& v : a) v = static_cast<T>(dist(rng));
    return a;
  }

  const Shape& shape() const noexcept { return shape_; }
  std::int64_t size() const noexcept { return size_; }
  std::size_t rank() const noexcept { return shape_.rank(); }
  T* data() noexcept { return data_.get(); }
  const T* data() const noexcept { return data_.get(); }
  T* begin() noexcept { return data(); }
  T* end() noexcept { return data() + size_; }
  const T* begin() const noexcept { return data(); }
  const T* end() const noexcept { return data() + size_; }

  // Element access with one index per dimension, bounds-checked.
  template <class... I>
  T& operator()(I... index) {
    return data()[offset_of({static_cast<std::int64_t>(index)...})];
  }
  template <class... I>
  const T& operator()(I... index) const {
    return data()[offset_of({static_cast<std::int64_t>(index)...})];
  }
  // The single element of a one-element array.
  T item() const {
    if (size_ != 1) fail("Array::item", fmt::format("array of shape {} has {} elements expected exactly 1", to_string(shape_), size_));
    return data()[0];
  }

  void fill(T value) { std::fill(begin(), end(), value); }

  // A copy with another shape of the same size; one dimension may be -1 (inferred).
  Array reshape(const Shape& shape) const;

 private:
  struct NoInit {};
  explicit Array(NoInit) {}
  std::int64_t offset_of(std::initializer_list<std::int64_t> index) const;

  std::unique_ptr<T[], detail::AlignedFree> data_;
  Shape shape_;
  std::int64_t size_ = 0;
};

// Resolves a reshape target with at most one -1 against `size` elements; throws tg::Error naming `op`.
Shape resolve_reshape(const Shape& from, const Shape& to, const char* op);

template <class T>
Array<T> Array<T>::reshape(const Shape& shape) const {
  Array out = *this;
  out.shape_ = resolve_reshape(shape_, shape, "reshape");
  return out;
}

template <class T>
std::int64_t Array<T>::offset_of(std::initializer_list<std::int64_t> index) const {
  if (index.size() != rank())
    fail("Array::operator()", fmt::format("got {} indices for an array of rank {} expected one index per dimension", index.size(), rank()));
  std::int64_t offset = 0;
  std::size_t axis = 0;
  for (auto i : index) {
    if (i < 0 || i >= shape_[axis])
      fail("Array::operator()", fmt::format("index ({}) out of range on axis {} of shape {} expected in [0, {})", i, axis,
                                            to_string(shape_), shape_[axis]));
    offset = offset * shape_[axis] + i;
    ++axis;
  }
  return offset;
}

// Short names used in dumps: f32, f64, or "T".
template <class T>
constexpr const char* dtype_name() {
  if constexpr (std::is_same_v<T, float>) return "f32";
  else if constexpr (std::is_same_v<T, double>) return "f64";
  else return "T";
}

// NumPy-like text: nested brackets, e.g. "[[1, 2], [3, 4]]"; long arrays elide their middle.
template <class T>
std::string to_string(const Array<T>& a) {
  std::string out;
  const Shape& s = a.shape();
  if (s.rank() == 0) return a.size() == 1 ? fmt::format("{}", a.data()[0]) : "[]";
  const Strides st = contiguous_strides(s);
  auto rec = [&](auto&& self, std::size_t axis, std::int64_t offset) -> void {
    out += '[';
    const std::int64_t n = s[axis];
    for (std::int64_t i = 0; i < n; ++i) {
      if (n > 12 && i == 6) {
        out += "..., ";
        i = n - 6;
      }
      if (axis + 1 == s.rank()) out += fmt::format("{}", a.data()[offset + i]);
      else self(self, axis + 1, offset + i * st[axis]);
      if (i + 1 < n) out += ", ";
    }
    out += ']';
  };
  rec(rec, 0, 0);
  return out;
}

}  // namespace tg

template <class T>
struct fmt::formatter<tg::Array<T>> : fmt::formatter<std::string_view> {
  auto format(const tg::Array<T>& a, format_context& ctx) const {
    return fmt::formatter<std::string_view>::format(tg::to_string(a), ctx);
  }
};

namespace tg {
template <class T>
std::ostream& operator<<(std::ostream& os, const Array<T>& a) {
  return os << to_string(a);
}
}  // namespace tg
