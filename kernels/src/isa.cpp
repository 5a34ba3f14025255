#include "tapegrad/kernels/isa.hpp"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

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

namespace {

// Nanoseconds for `steps` steps of 6 (Wide = false) or 12 independent zmm FMA chains.
template <bool Wide>
__attribute__((target("avx512f"), noinline)) double fma_chains_ns(std::int64_t steps) {
  const __m512 m = _mm512_set1_ps(0.999f), a = _mm512_set1_ps(1e-3f);
  // Distinct starts, or the compiler merges the chains into one.
  __m512 c0 = _mm512_set1_ps(1), c1 = _mm512_set1_ps(2), c2 = _mm512_set1_ps(3), c3 = _mm512_set1_ps(4);
  __m512 c4 = _mm512_set1_ps(5), c5 = _mm512_set1_ps(6), d0 = _mm512_set1_ps(7), d1 = _mm512_set1_ps(8);
  __m512 d2 = _mm512_set1_ps(9), d3 = _mm512_set1_ps(10), d4 = _mm512_set1_ps(11), d5 = _mm512_set1_ps(12);
  const auto start = std::chrono::steady_clock::now();
  for (std::int64_t s = 0; s < steps; ++s) {
    c0 = _mm512_fmadd_ps(c0, m, a), c1 = _mm512_fmadd_ps(c1, m, a), c2 = _mm512_fmadd_ps(c2, m, a);
    c3 = _mm512_fmadd_ps(c3, m, a), c4 = _mm512_fmadd_ps(c4, m, a), c5 = _mm512_fmadd_ps(c5, m, a);
    if constexpr (Wide) {
      d0 = _mm512_fmadd_ps(d0, m, a), d1 = _mm512_fmadd_ps(d1, m, a), d2 = _mm512_fmadd_ps(d2, m, a);
      d3 = _mm512_fmadd_ps(d3, m, a), d4 = _mm512_fmadd_ps(d4, m, a), d5 = _mm512_fmadd_ps(d5, m, a);
    }
  }
  const auto stop = std::chrono::steady_clock::now();
  const __m512 all = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(c0, c1), _mm512_add_ps(c2, c3)),
                                   _mm512_add_ps(_mm512_add_ps(c4, c5), _mm512_add_ps(_mm512_add_ps(d0, d1),
                                                 _mm512_add_ps(_mm512_add_ps(d2, d3), _mm512_add_ps(d4, d5)))));
  float lanes[16];
  _mm512_storeu_ps(lanes, all);
  volatile float sink = lanes[0] + lanes[15];  // keeps every chain
  (void)sink;
  return std::chrono::duration<double, std::nano>(stop - start).count();
}

// One unit runs 12 chains in twice the time of 6 (6 and 12 cycles a step);
// two run them in 1.5 times (4 cycles of latency, then 6). The first steps
// warm the units up (Intel's run 512-bit FMAs slowly for their first
// microseconds). Each round times both back to back, and the median of the
// rounds' ratios ignores a round that was preempted or changed frequency
// midway. A sibling hyperthread's FMAs can only make two units look like one.
int measured_fma512_units() {
  fma_chains_ns<true>(50000);
  constexpr int kRounds = 9;
  double ratio[kRounds];
  for (double& r : ratio) {
    const double six = fma_chains_ns<false>(2000);
    r = fma_chains_ns<true>(2000) / six;
  }
  std::nth_element(ratio, ratio + kRounds / 2, ratio + kRounds);
  return ratio[kRounds / 2] < 1.75 ? 2 : 1;
}

}  // namespace

int fma512_units() noexcept {
  static const int units = kernel_isa() >= Isa::avx512 ? measured_fma512_units() : 0;
  return units;
}

bool paired_tiles_for(Isa level, int units, const char* force) {
  if (level < Isa::avx512) return false;
  if (force == nullptr || *force == '\0') return units == 2;
  if (std::strcmp(force, "0") == 0 || std::strcmp(force, "1") == 0) return *force == '1';
  fail("TG_PAIRED_TILES", fmt::format("value '{}' is not a choice expected 0 or 1; hint: unset it to pair the tiles "
                                      "where the CPU has two 512-bit FMA units",
                                      force));
}

namespace {
// The choice at start: TG_PAIRED_TILES where it says 0 or 1, else the FMA units.
bool default_paired_tiles() noexcept {
  const char* force = std::getenv("TG_PAIRED_TILES");
  if (kernel_isa() >= Isa::avx512 && force != nullptr && *force != '\0') {
    try {
      return paired_tiles_for(kernel_isa(), 0, force);
    } catch (const Error& e) {
      std::fprintf(stderr, "tapegrad: %s (the tiles follow the FMA units)\n", e.what());
    }
  }
  return paired_tiles_for(kernel_isa(), fma512_units(), nullptr);
}
std::atomic<bool>& paired_choice() {
  static std::atomic<bool> choice{default_paired_tiles()};
  return choice;
}
}  // namespace

bool paired_tiles() noexcept { return paired_choice().load(std::memory_order_relaxed); }

bool set_paired_tiles(bool paired) noexcept {
  return paired_choice().exchange(paired && kernel_isa() >= Isa::avx512, std::memory_order_relaxed);
}

std::string kernels_line() {
  std::string text = fmt::format("{} (TG_ISA caps it)", to_string(kernel_isa()));
  if (kernel_isa() >= Isa::avx512)
    text += fmt::format(", {} tiles ({} 512-bit FMA unit{}; TG_PAIRED_TILES overrides)", paired_tiles() ? "6x2" : "6x1",
                        fma512_units(), fma512_units() == 1 ? "" : "s");
  return text;
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
