// tg::Error: the one exception type of tapegrad.
//
// Note [Error messages]: every message reads
//     op: what (values) expectation; hint
// e.g. "matmul: inner dimensions (3) and (4) must match; hint: transpose one operand".
// Errors thrown while recording carry the user's recording site, appended as
// " [at file:line]" by the recording code (autodiff/), so kernels need not know it.
#pragma once

#include <cstdint>
#include <source_location>
#include <stdexcept>
#include <string>
#include <string_view>

namespace tg {

// Where an instruction or guard was recorded: a std::source_location, or a site
// read back from a saved tape file (whose strings the loaded tape owns).
struct Site {
  const char* file = "";
  const char* function = "";
  std::uint32_t line = 0, column = 0;

  Site() = default;
  Site(const std::source_location& where)  // NOLINT: implicit, every recording site converts
      : file(where.file_name()), function(where.function_name()), line(where.line()), column(where.column()) {}
  Site(const char* file_name, std::uint32_t line_number, std::uint32_t column_number, const char* function_name)
      : file(file_name), function(function_name), line(line_number), column(column_number) {}
};

class Error : public std::runtime_error {
 public:
  Error(std::string op, std::string detail, std::string site = {});

  const std::string& op() const noexcept { return op_; }
  const std::string& detail() const noexcept { return detail_; }
  const std::string& site() const noexcept { return site_; }

  // The same error, with the recording site attached (kept if already set).
  Error with_site(const Site& where) const;

 private:
  std::string op_, detail_, site_;
};

// Throws tg::Error(op, detail). `detail` is "what (values) expectation; hint".
[[noreturn]] void fail(std::string_view op, std::string detail);

// "file.cpp:41" with the directories stripped.
std::string site_string(const Site& where);

}  // namespace tg
