#include "tapegrad/kernels/isa.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>

#include "tapegrad/kernels/error.hpp"

namespace tg::kernels {

Isa detected_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
  return Isa::portable;
}

Isa capped_isa(Isa detected, const char* cap) {
  if (cap == nullptr || *cap == '\0') return detected;
  for (Isa level : {Isa::portable, Isa::avx2, Isa::avx512})
    if (std::strcmp(cap, to_string(level)) == 0) return std::min(detected, level);
  fail("TG_ISA", fmt::format("value '{}' is not a level expected portable, avx2 or avx512; hint: unset it to use the "
                             "widest level this CPU has ({})",
                             cap, to_string(detected)));
}

Isa isa() {
  static const Isa level = [] {
    const Isa detected = detected_isa();
    if (std::getenv("TAPEGRAD_PORTABLE_KERNELS") != nullptr) return Isa::portable;
    return capped_isa(detected, std::getenv("TG_ISA"));
  }();
  return level;
}

Isa kernel_isa() noexcept {
  static const Isa level = [] {
    try {
      return isa();
    } catch (const Error& e) {
      std::fprintf(stderr, "tapegrad: %s (the kernels run at %s)\n", e.what(), to_string(detected_isa()));
      return detected_isa();
    }
  }();
  return level;
}

const char* to_string(Isa level) {
  switch (level) {
    case Isa::portable: return "portable";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
  }
  return "?";
}

}  // namespace tg::kernels
