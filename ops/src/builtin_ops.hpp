// The op families (private to ops/): each one's register_<family>_ops<T>() is
// made by its op table (op_table.hpp); register_builtin_ops calls them all.
#pragma once

// Every family with an op table. A family left out here fails at its first use
// (Note [Op tables]).
#define TG_OP_FAMILIES(X) \
  X(arithmetic)           \
  X(conv)                 \
  X(dropout)              \
  X(filter)               \
  X(linear_adjoint)       \
  X(loss)                 \
  X(matmul)               \
  X(norm)                 \
  X(pad)                  \
  X(pool)                 \
  X(reduce)               \
  X(resample)             \
  X(shape)                \
  X(softmax)              \
  X(unary)

namespace tg::ops {

#define TG_DECLARE_FAMILY_REGISTRATION(family) \
  template <class T>                           \
  void register_##family##_ops();
TG_OP_FAMILIES(TG_DECLARE_FAMILY_REGISTRATION)
#undef TG_DECLARE_FAMILY_REGISTRATION

}  // namespace tg::ops
