// What the max-pools' recorded pullbacks share (private to ops/): a pair of
// ops, route and gather, each the other's pullback (Note [Maxpool routes] in
// pool.cpp, Note [Adaptive max routes] in resample.cpp).
#pragma once

#include <fmt/format.h>

#include "tapegrad/autodiff/registry.hpp"

namespace tg::ops {

// route(x, gy): gy sent to each window's chosen element (x's shape);
// gather(x, v): v read at those elements (the pool's output shape).
enum class RouteRole { route, gather };

inline RouteRole other_role(RouteRole role) { return role == RouteRole::route ? RouteRole::gather : RouteRole::route; }

// The plan of a route or gather over inputs (x, values): the pool's plan of x
// (plan_pool), with values checked against the shape the role reads.
template <class PlanPool>
Plan plan_route(RouteRole role, const char* name, std::span<const Shape* const> s, PlanPool plan_pool) {
  if (s.size() != 2) fail(name, fmt::format("got {} inputs expected (x, values)", s.size()));
  Plan pooled = plan_pool(*s[0]);
  const Shape& expected = role == RouteRole::route ? pooled.output : *s[0];
  if (!(*s[1] == expected))
    fail(name, fmt::format("values have shape {} expected {} ({}) for x {}", to_string(*s[1]), to_string(expected),
                           role == RouteRole::route ? "the pool's output" : "x's shape", to_string(*s[0])));
  if (role == RouteRole::route) pooled.output = *s[0];
  return pooled;
}

}  // namespace tg::ops
