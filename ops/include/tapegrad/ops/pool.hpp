// Pooling: maxpool, meanpool, lppool and global pools over (N, C, spatial...),
// 1-3 spatial dims, one instruction each. PyTorch's max_pool/avg_pool/lp_pool
// semantics:
//   tg::maxpool(x, {.window = {2}})                          stride defaults to the window
//   tg::meanpool(x, {.window = {3}, .stride = {1}, .padding = {1}, .count_include_pad = false})
//   tg::lppool(x, {.window = {2}, .p = 3})                   (sum |x|^p)^(1/p); or lppool(x, 3.0, {.window = {2}})
//   tg::global_maxpool(x), tg::global_meanpool(x)            -> (N, C, 1, ...)
// maxpool routes the adjoint to the first maximum of each window in row-major
// order (Note [Ties in maxpool], kernels/pool.hpp). lppool uses |x|^p, so it
// equals PyTorch's LPPool wherever PyTorch's (which uses x^p) is defined, e.g.
// for even p or non-negative inputs; its gradient is 0 where a window's norm is 0.
#pragma once

#include <optional>
#include <source_location>
#include <vector>

#include "tapegrad/autodiff/tracked.hpp"

namespace tg {

struct PoolParams {
  DimList window{};    // required: one per spatial dim or one for all
  DimList stride{};    // default: the window
  DimList padding{};   // default 0; at most half the window
  DimList dilation{};  // default 1
  bool ceil_mode = false;
  bool count_include_pad = true;  // meanpool: padded zeros count in the divisor (PyTorch's default)
  double p = 2;                   // lppool: the norm's power, > 0
  std::optional<bool> count_padding;  // DESIGN.md's name for count_include_pad; when set, it decides
  bool counts_padding() const { return count_padding.value_or(count_include_pad); }
};

#define TG_DECLARE_POOL(name)                                                                           \
  template <class T>                                                                                    \
  Tracked<T> name(const Tracked<T>& x, const PoolParams& p,                                             \
                  std::source_location where = std::source_location::current());                        \
  template <class T>                                                                                    \
  Array<T> name(const Array<T>& x, const PoolParams& p, std::source_location where = std::source_location::current());
TG_DECLARE_POOL(maxpool)
TG_DECLARE_POOL(meanpool)
TG_DECLARE_POOL(lppool)
#undef TG_DECLARE_POOL

// lppool(x, p, params): the power given first, as DESIGN.md spells it.
template <class X>
auto lppool(const X& x, double p, PoolParams params, std::source_location where = std::source_location::current()) {
  params.p = p;
  return lppool(x, params, where);
}

#define TG_DECLARE_GLOBAL_POOL(name)                                                                               \
  template <class T>                                                                                               \
  Tracked<T> name(const Tracked<T>& x, std::source_location where = std::source_location::current());              \
  template <class T>                                                                                               \
  Array<T> name(const Array<T>& x, std::source_location where = std::source_location::current());
TG_DECLARE_GLOBAL_POOL(global_maxpool)
TG_DECLARE_GLOBAL_POOL(global_meanpool)
#undef TG_DECLARE_GLOBAL_POOL

namespace ops {
// The recorded form of a max-pool's pullback and its adjoint (Note [Maxpool
// routes]): maxpool_route(x, gy) sends gy to each window's chosen element (x's
// shape); maxpool_gather(x, v) (gather = true) reads v there (the pool's output shape).
template <class T>
Tracked<T> maxpool_route_tracked(const Tracked<T>& x, const Tracked<T>& values, const PoolParams& p, bool gather,
                                 const std::source_location& where = std::source_location::current());
}  // namespace ops

}  // namespace tg
