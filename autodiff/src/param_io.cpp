#include "tapegrad/autodiff/param_io.hpp"

#include <fmt/format.h>

namespace tg {

bool ParamReader::boolean(const char* field) {
  const std::size_t at = offset();
  const std::uint8_t v = u8(field);
  if (v > 1) bad_value(field, at, v, 1);
  return v == 1;
}

std::vector<std::int64_t> ParamReader::list(const char* field) {
  const std::size_t at = offset();
  const std::uint32_t n = u32(field);
  if (n > remaining() / sizeof(std::int64_t))
    fail_at(field, at, fmt::format("a list of {} values needs {} bytes but {} are left", n, std::size_t{n} * 8, remaining()));
  std::vector<std::int64_t> v(n);
  if (n > 0) raw(v.data(), std::size_t{n} * sizeof(std::int64_t), field);
  for (std::uint32_t k = 0; k < n; ++k) check_magnitude(field, at + 4 + 8 * k, v[k]);
  return v;
}

std::string ParamReader::string(const char* field) {
  const std::size_t at = offset();
  const std::uint32_t n = u32(field);
  if (n > remaining()) fail_at(field, at, fmt::format("a string of {} bytes but {} are left", n, remaining()));
  std::string s(bytes_.substr(pos_, n));
  pos_ += n;
  return s;
}

void ParamReader::finish() const {
  if (!at_end())
    fail_at("end", offset(), fmt::format("{} bytes left over expected none; hint: the file was written by another version",
                                         remaining()));
}

void ParamReader::fail_at(const char* field, std::size_t at, const std::string& what) const {
  fail(context_, fmt::format("field `{}` at byte {}: {}", field, at, what));
}

void ParamReader::out_of_range(const char* field, std::size_t at, std::int64_t v) const {
  fail_at(field, at, fmt::format("{} out of range expected at most 2^32 in magnitude (a dimension, index or count)", v));
}

void ParamReader::truncated(const char* field, std::size_t n) const {
  fail_at(field, offset(), fmt::format("needs {} bytes but only {} are left (truncated); hint: the file is cut short or "
                                       "damaged",
                                       n, remaining()));
}

void ParamReader::bad_value(const char* field, std::size_t at, unsigned value, unsigned last) const {
  fail_at(field, at, fmt::format("value {} out of range expected 0..{}", value, last));
}

}  // namespace tg
