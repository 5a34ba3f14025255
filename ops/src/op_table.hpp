// The op tables: how each family file lists its registry rows (private to ops/).
//
// Note [Op tables]: a family file writes one maker per row, `name_row<T>()`
// returning the OpInfo, and ends with one list naming them:
//     #define TG_UNARY_ROWS(X) X(exp) X(log) ... X(leaky_relu)
//     TG_OP_TABLE(unary, TG_UNARY_ROWS)
// The list defines each row's accessor `name_op<T>()` (the registered row,
// added on first use) and the family's register_unary_ops<T>(), explicitly
// instantiated for float and double; where the family's functions share one
// signature (unary, reductions) the list also declares and defines them. An op
// cannot be used without being in the list (its accessor exists only there),
// nor listed without being registered at start-up (the list is the
// registration); a family missing from TG_OP_FAMILIES is an error at its
// first use (Registry::seal_builtins).
// An X-macro, not a constexpr array of makers: the list must also produce
// declarations and explicit instantiations, which no constexpr value can.
#pragma once

#include "tapegrad/autodiff/registry.hpp"

// `name_op<T>()`: the row `name_row<T>()` makes, registered once, on first use.
#define TG_OP_ROW_ACCESSOR(name)                                                                       \
  template <class T>                                                                                   \
  const OpInfo<T>& name##_op() {                                                                       \
    static const OpInfo<T>& row = Registry<T>::add(                                                    \
        [] {                                                                                           \
          OpInfo<T> r = name##_row<T>();                                                               \
          r.builtin = true;                                                                            \
          return r;                                                                                    \
        }(),                                                                                           \
        Site(__FILE__, __LINE__, 0, #name));                                                           \
    return row;                                                                                        \
  }
#define TG_OP_ROW_REGISTER(name) name##_op<T>();

// The accessors and register_<family>_ops<T>() of one family's list.
#define TG_OP_TABLE(family, LIST)                  \
  LIST(TG_OP_ROW_ACCESSOR)                         \
  template <class T>                               \
  void register_##family##_ops() {                 \
    LIST(TG_OP_ROW_REGISTER)                       \
  }                                                \
  template void register_##family##_ops<float>();  \
  template void register_##family##_ops<double>();
