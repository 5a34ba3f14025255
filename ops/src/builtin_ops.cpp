#include "builtin_ops.hpp"

#include <mutex>

#include "tapegrad/autodiff/registry.hpp"
#include "tapegrad/ops/builtin.hpp"

namespace tg {

template <class T>
static void register_every_family() {
#define TG_REGISTER_FAMILY(family) ops::register_##family##_ops<T>();
  TG_OP_FAMILIES(TG_REGISTER_FAMILY)
#undef TG_REGISTER_FAMILY
  Registry<T>::seal_builtins();
}

void register_builtin_ops() {
  static std::once_flag once;
  std::call_once(once, [] {
    register_every_family<float>();
    register_every_family<double>();
  });
}

}  // namespace tg
