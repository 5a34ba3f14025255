// Private to the kernels: turning a user's per-dim list into the 3-D form every
// convolution and pooling geometry uses (spatial dims right-aligned; the unused
// leading dims get 1, or 0 for paddings).
#pragma once

#include <fmt/format.h>

#include <array>
#include <cstdint>
#include <vector>

#include "tapegrad/kernels/error.hpp"
#include "tapegrad/kernels/shape.hpp"

namespace tg::kernels {

// One value per spatial dim from a list of 0 (fallback), 1 (for all) or `spatial` values, each >= minimum.
inline std::array<std::int64_t, 3> spatial_dims(const std::vector<std::int64_t>& v, int spatial, std::int64_t fallback,
                                                std::int64_t minimum, const char* what, const char* op) {
  check_dim_list(v, static_cast<std::size_t>(spatial), what, "spatial dim", op);
  const std::int64_t unused = minimum == 0 ? 0 : 1;
  std::array<std::int64_t, 3> out{unused, unused, unused};
  for (int d = 0; d < spatial; ++d) {
    const std::int64_t value = v.empty() ? fallback : v.size() == 1 ? v[0] : v[d];
    if (value < minimum) fail(op, fmt::format("{} is {} along spatial dim {} expected >= {}", what, value, d, minimum));
    out[3 - spatial + d] = value;
  }
  return out;
}

}  // namespace tg::kernels
