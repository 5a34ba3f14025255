// tapegrad: reverse-mode automatic differentiation over arrays.
// The umbrella header: everything a user needs.
#pragma once

#include "tapegrad/kernels/array.hpp"
#include "tapegrad/kernels/error.hpp"
#include "tapegrad/kernels/gemm.hpp"
#include "tapegrad/kernels/threads.hpp"
#include "tapegrad/autodiff/custom_op.hpp"
#include "tapegrad/autodiff/dump.hpp"
#include "tapegrad/autodiff/gradcheck.hpp"
#include "tapegrad/autodiff/compile.hpp"
#include "tapegrad/autodiff/gradient.hpp"
#include "tapegrad/autodiff/record.hpp"
#include "tapegrad/ops/arithmetic.hpp"
#include "tapegrad/ops/conv.hpp"
#include "tapegrad/ops/filter.hpp"
#include "tapegrad/ops/pool.hpp"
#include "tapegrad/ops/loss.hpp"
#include "tapegrad/ops/matmul.hpp"
#include "tapegrad/ops/reduce.hpp"
#include "tapegrad/ops/shape.hpp"
#include "tapegrad/ops/softmax.hpp"
#include "tapegrad/ops/unary.hpp"
