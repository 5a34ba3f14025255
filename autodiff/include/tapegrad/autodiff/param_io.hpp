// An op's parameters as bytes, for saved tape files (tape_file.hpp).
//
// Each op with a parameter struct fills OpInfo::save_params and load_params
// with a few calls, field by field, in one order:
//
//   r.save_params = [](const OpParams* p, ParamWriter& w) { w.list(params_as<X>(p).axes); w.boolean(...); };
//   r.load_params = [](ParamReader& r) { auto p = std::make_shared<X>(); p->axes = r.list("axes"); ...; return p; };
//
// The reader never trusts the bytes: a field that runs past the end, an enum
// out of range or a list longer than the bytes left is a tg::Error naming the
// field and the byte offset in the file. Values are then validated by the op's
// own shape rule when the loaded instruction is replayed, as a recorded one is.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tapegrad/kernels/error.hpp"

namespace tg {

struct OpParams;

// Little-endian fixed-width fields appended to a byte string.
class ParamWriter {
 public:
  void u8(std::uint8_t v) { bytes_.push_back(static_cast<char>(v)); }
  void u32(std::uint32_t v) { raw(&v, sizeof v); }
  void i64(std::int64_t v) { raw(&v, sizeof v); }
  void f64(double v) { raw(&v, sizeof v); }
  void boolean(bool v) { u8(v ? 1 : 0); }
  template <class E>
  void enumeration(E v) {
    u8(static_cast<std::uint8_t>(v));
  }
  void list(std::span<const std::int64_t> v) {
    u32(static_cast<std::uint32_t>(v.size()));
    for (auto x : v) i64(x);
  }
  void string(std::string_view s) {
    u32(static_cast<std::uint32_t>(s.size()));
    bytes_.append(s);
  }
  void raw(const void* p, std::size_t n) { bytes_.append(static_cast<const char*>(p), n); }

  const std::string& bytes() const noexcept { return bytes_; }
  std::string take() { return std::move(bytes_); }

 private:
  std::string bytes_;  // the host is little-endian (checked when a file is written or read)
};

// Reads what a ParamWriter wrote; every read is bounds-checked. `context` names
// the thing being read in errors ("tape file: op conv params"), `base_offset` is
// where the bytes start in the file.
class ParamReader {
 public:
  ParamReader(std::string_view bytes, std::string context, std::size_t base_offset = 0)
      : bytes_(bytes), context_(std::move(context)), base_(base_offset) {}

  std::uint8_t u8(const char* field) {
    std::uint8_t v;
    raw(&v, 1, field);
    return v;
  }
  std::uint32_t u32(const char* field) {
    std::uint32_t v;
    raw(&v, sizeof v, field);
    return v;
  }
  // An integer parameter (a dimension, index, count or axis): at most 2^32 in
  // magnitude, so that no shape rule computes with absurd values.
  std::int64_t i64(const char* field) {
    const std::size_t at = offset();
    std::int64_t v;
    raw(&v, sizeof v, field);
    check_magnitude(field, at, v);
    return v;
  }
  static constexpr std::int64_t kMaxMagnitude = std::int64_t{1} << 32;
  double f64(const char* field) {
    double v;
    raw(&v, sizeof v, field);
    return v;
  }
  bool boolean(const char* field);
  // An enum stored as one byte, checked to be at most `last`.
  template <class E>
  E enumeration(const char* field, E last) {
    const std::size_t at = offset();
    const std::uint8_t v = u8(field);
    if (v > static_cast<std::uint8_t>(last)) bad_value(field, at, v, static_cast<std::uint8_t>(last));
    return static_cast<E>(v);
  }
  std::vector<std::int64_t> list(const char* field);
  std::string string(const char* field);
  void raw(void* out, std::size_t n, const char* field) {
    need(n, field);
    std::memcpy(out, bytes_.data() + pos_, n);
    pos_ += n;
  }

  void skip(std::size_t n, const char* field) {
    need(n, field);
    pos_ += n;
  }

  std::size_t offset() const noexcept { return base_ + pos_; }  // in the file
  std::size_t remaining() const noexcept { return bytes_.size() - pos_; }
  bool at_end() const noexcept { return pos_ == bytes_.size(); }
  // Throws unless every byte was read (a params blob must be read whole).
  void finish() const;
  // Throws "context: field `field` at byte N: what".
  [[noreturn]] void fail_at(const char* field, std::size_t at, const std::string& what) const;

 private:
  void need(std::size_t n, const char* field) const {
    if (n > remaining()) truncated(field, n);
  }
  void check_magnitude(const char* field, std::size_t at, std::int64_t v) const {
    if (v > kMaxMagnitude || v < -kMaxMagnitude) out_of_range(field, at, v);
  }
  [[noreturn]] void out_of_range(const char* field, std::size_t at, std::int64_t v) const;
  [[noreturn]] void truncated(const char* field, std::size_t n) const;
  [[noreturn]] void bad_value(const char* field, std::size_t at, unsigned value, unsigned last) const;

  std::string_view bytes_;
  std::string context_;
  std::size_t base_ = 0, pos_ = 0;
};

}  // namespace tg
