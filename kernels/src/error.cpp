#include "tapegrad/kernels/error.hpp"

#include <fmt/format.h>

namespace tg {
namespace {
std::string compose(const std::string& op, const std::string& detail, const std::string& site) {
  std::string message = fmt::format("{}: {}", op, detail);
  if (!site.empty()) message += fmt::format(" [recorded at {}]", site);
  return message;
}
}  // namespace

Error::Error(std::string op, std::string detail, std::string site)
    : std::runtime_error(compose(op, detail, site)),
      op_(std::move(op)),
      detail_(std::move(detail)),
      site_(std::move(site)) {}

Error Error::with_site(const Site& where) const {
  if (!site_.empty()) return *this;
  return Error(op_, detail_, site_string(where));
}

void fail(std::string_view op, std::string detail) { throw Error(std::string(op), std::move(detail)); }

std::string site_string(const Site& where) {
  std::string_view file = where.file;
  if (auto slash = file.find_last_of('/'); slash != std::string_view::npos) file.remove_prefix(slash + 1);
  return fmt::format("{}:{}", file, where.line);
}

}  // namespace tg
