#include "builtin_ops.hpp"

#include <mutex>

#include "tapegrad/ops/builtin.hpp"

namespace tg {

void register_builtin_ops() {
  static std::once_flag once;
  std::call_once(once, [] {
    using namespace ops;
    register_arithmetic_ops<float>();
    register_arithmetic_ops<double>();
    register_conv_ops<float>();
    register_conv_ops<double>();
    register_filter_ops<float>();
    register_filter_ops<double>();
    register_loss_ops<float>();
    register_loss_ops<double>();
    register_matmul_ops<float>();
    register_matmul_ops<double>();
    register_pool_ops<float>();
    register_pool_ops<double>();
    register_reduce_ops<float>();
    register_reduce_ops<double>();
    register_shape_ops<float>();
    register_shape_ops<double>();
    register_softmax_ops<float>();
    register_softmax_ops<double>();
    register_unary_ops<float>();
    register_unary_ops<double>();
  });
}

}  // namespace tg
