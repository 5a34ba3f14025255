// Resampling over the spatial dims of x (N, C, spatial...), 1 to 3 of them,
// PyTorch's semantics (F.interpolate, adaptive pools), one instruction each:
//
//   auto up = tg::upsample(x, {.scale = {2, 2}});                                   // nearest
//   auto bl = tg::upsample(x, {.size = {56, 56}, .mode = tg::UpsampleMode::linear,   // bilinear
//                              .align_corners = true});
//   auto g = tg::adaptive_meanpool(x, {.output = {1, 1}});                          // (N, C, 1, 1)
//   auto m = tg::adaptive_maxpool(x, {.output = {4, 4}});
//
// Nearest reads input floor(o * s); linear (bilinear, trilinear by rank) reads
// the two inputs around (o + 0.5) * s - 0.5 (clamped at 0), or o * (in - 1) /
// (out - 1) with align_corners; s is in / out for a given size, 1 / scale for
// a scale. Adaptive output o pools inputs [floor(o in / out), ceil((o + 1) in / out));
// adaptive_maxpool sends the adjoint to each window's first maximum.
#pragma once

#include <source_location>
#include <vector>

#include "tapegrad/autodiff/tracked.hpp"

namespace tg {

enum class UpsampleMode : std::uint8_t { nearest, linear };

struct UpsampleParams {
  std::vector<double> scale{};  // per spatial dim, or one for all; out = floor(in * scale)
  DimList size{};               // the output's spatial size instead of a scale
  UpsampleMode mode = UpsampleMode::nearest;
  bool align_corners = false;   // linear only
};
struct AdaptivePoolParams {
  DimList output{};  // the output's spatial size, per spatial dim or one for all
};

namespace ops {
// The recorded form of an adaptive max-pool's pullback and its adjoint (Note
// [Adaptive max routes]): adaptive_maxpool_route(x, gy) sends gy to each
// window's first maximum (x's shape); adaptive_maxpool_gather(x, v) (gather =
// true) reads v there (the pool's output shape).
template <class T>
Tracked<T> adaptive_maxpool_route_tracked(const Tracked<T>& x, const Tracked<T>& values, const AdaptivePoolParams& p, bool gather,
                                          const std::source_location& where = std::source_location::current());
enum class Resample : std::uint8_t { upsample, adaptive_mean, adaptive_max };
template <class T>
Tracked<T> resample_tracked(Resample kind, const Tracked<T>& x, const UpsampleParams& up, const AdaptivePoolParams& pool,
                            const std::source_location& where);
template <class T>
Array<T> resample_eval(Resample kind, const Array<T>& x, const UpsampleParams& up, const AdaptivePoolParams& pool,
                       const std::source_location& where);
}  // namespace ops

template <class T>
Tracked<T> upsample(const Tracked<T>& x, const UpsampleParams& p, std::source_location where = std::source_location::current()) {
  return ops::resample_tracked<T>(ops::Resample::upsample, x, p, {}, where);
}
template <class T>
Array<T> upsample(const Array<T>& x, const UpsampleParams& p, std::source_location where = std::source_location::current()) {
  return ops::resample_eval<T>(ops::Resample::upsample, x, p, {}, where);
}
#define TG_ADAPTIVE_POOL(name, kind)                                                                              \
  template <class T>                                                                                              \
  Tracked<T> name(const Tracked<T>& x, const AdaptivePoolParams& p,                                               \
                  std::source_location where = std::source_location::current()) {                                 \
    return ops::resample_tracked<T>(kind, x, {}, p, where);                                                       \
  }                                                                                                               \
  template <class T>                                                                                              \
  Array<T> name(const Array<T>& x, const AdaptivePoolParams& p, std::source_location where = std::source_location::current()) { \
    return ops::resample_eval<T>(kind, x, {}, p, where);                                                          \
  }
TG_ADAPTIVE_POOL(adaptive_meanpool, ops::Resample::adaptive_mean)
TG_ADAPTIVE_POOL(adaptive_maxpool, ops::Resample::adaptive_max)
#undef TG_ADAPTIVE_POOL

}  // namespace tg
