// Note [Folded norms] (registry.hpp): what batch_norm's fold_into hook asks of
// the conv family (private to ops/).
#pragma once

#include <memory>

#include "tapegrad/autodiff/registry.hpp"

namespace tg::ops {

// A conv's params that also apply an evaluation-mode batch_norm with `eps`,
// whose inputs follow the conv's `conv_inputs`; null for a transposed conv or
// one that already folds a norm.
std::shared_ptr<const OpParams> conv_with_folded_norm(const OpParams* conv_params, std::size_t conv_inputs, double eps);

}  // namespace tg::ops
