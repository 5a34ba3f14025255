// Each op family's registration function (private to ops/): builtin_ops.cpp calls them all.
#pragma once

namespace tg::ops {

template <class T>
void register_arithmetic_ops();
template <class T>
void register_conv_ops();
template <class T>
void register_filter_ops();
template <class T>
void register_loss_ops();
template <class T>
void register_matmul_ops();
template <class T>
void register_pool_ops();
template <class T>
void register_reduce_ops();
template <class T>
void register_shape_ops();
template <class T>
void register_softmax_ops();
template <class T>
void register_unary_ops();

}  // namespace tg::ops
