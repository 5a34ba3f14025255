// tapegrad: reverse-mode automatic differentiation over arrays.
// The umbrella header: everything a user needs.
#pragma once

#include "tapegrad/kernels/array.hpp"
#include "tapegrad/kernels/error.hpp"
#include "tapegrad/kernels/gemm.hpp"
#include "tapegrad/kernels/isa.hpp"
#include "tapegrad/kernels/threads.hpp"
#include "tapegrad/autodiff/custom_op.hpp"
#include "tapegrad/autodiff/debug.hpp"
#include "tapegrad/autodiff/inspect.hpp"
#include "tapegrad/autodiff/dump.hpp"
#include "tapegrad/autodiff/gradcheck.hpp"
#include "tapegrad/autodiff/compile.hpp"
#include "tapegrad/autodiff/gradient.hpp"
#include "tapegrad/autodiff/nested.hpp"
#include "tapegrad/autodiff/guard.hpp"
#include "tapegrad/autodiff/record.hpp"
#include "tapegrad/autodiff/tape_file.hpp"
#include "tapegrad/autodiff/checkpoint.hpp"
#include "tapegrad/autodiff/init.hpp"
#include "tapegrad/autodiff/jit.hpp"
#include "tapegrad/autodiff/optim.hpp"
#include "tapegrad/autodiff/tree.hpp"
#include "tapegrad/ops/arithmetic.hpp"
#include "tapegrad/ops/builtin.hpp"
#include "tapegrad/ops/conv.hpp"
#include "tapegrad/ops/filter.hpp"
#include "tapegrad/ops/dropout.hpp"
#include "tapegrad/ops/norm.hpp"
#include "tapegrad/ops/pad.hpp"
#include "tapegrad/ops/pool.hpp"
#include "tapegrad/ops/loss.hpp"
#include "tapegrad/ops/matmul.hpp"
#include "tapegrad/ops/reduce.hpp"
#include "tapegrad/ops/resample.hpp"
#include "tapegrad/ops/shape.hpp"
#include "tapegrad/ops/second_order.hpp"
#include "tapegrad/ops/softmax.hpp"
#include "tapegrad/ops/unary.hpp"

namespace tg::detail {
// Every built-in op has its registry row before main() runs: a loaded tape file
// finds its ops by name (tape_file.hpp).
inline const bool builtin_ops_registered = (register_builtin_ops(), true);
}  // namespace tg::detail
