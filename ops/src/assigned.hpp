// For pullbacks that honour PullbackCall::assign (Note [Assigned adjoints],
// registry.hpp) on some paths only: elsewhere they zero the adjoint first and add.
#pragma once

#include "tapegrad/autodiff/registry.hpp"
#include "tapegrad/kernels/parallel.hpp"

namespace tg::ops {

// Zeroes input i's adjoint when the engine handed it over unzeroed.
template <class T>
void zero_if_assigned(const PullbackCall<T>& c, std::size_t i) {
  Array<T>* adj = c.input_adjoints[i];
  if (adj && c.assigns(i)) kernels::parallel_fill(adj->data(), adj->size(), T(0));
}

}  // namespace tg::ops
