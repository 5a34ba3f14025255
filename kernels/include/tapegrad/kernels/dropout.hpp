// Dropout masks from a counter-based generator: element i of the draw keyed by
// (seed, step) is kept when bits of hash(seed, step, i / plane) clear the
// drop probability. Nothing is stored: the pullback draws the same mask again
// from the same key. `plane` > 1 drops whole runs (channel dropout: a plane per (n, c)).
//
// Note [Counter-based masks]: hash(seed, step, unit) is SplitMix64's finaliser
// applied twice (to the key, then to the key's hash xor the unit index); its
// top 32 bits are compared with p * 2^32. A stateful generator (a Mersenne
// twister advanced per element) was rejected: a replay could not draw the
// mask of a given step without running every step before it, and the
// pullback would have to keep the mask.
#pragma once

#include <cstdint>

namespace tg::kernels {

constexpr std::uint64_t splitmix64(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

struct DropoutMask {
  std::uint64_t seed = 0, step = 0;
  double p = 0.5;          // drop probability, in [0, 1)
  std::int64_t plane = 1;  // elements sharing one draw
  std::uint64_t key() const { return splitmix64(seed * 0x100000001b3ULL ^ splitmix64(step)); }
  std::uint32_t threshold() const { return static_cast<std::uint32_t>(p * 4294967296.0); }
};

// Whether unit u (element index / plane) is kept.
inline bool dropout_keeps(std::uint64_t key, std::uint32_t threshold, std::uint64_t unit) {
  return static_cast<std::uint32_t>(splitmix64(key ^ unit) >> 32) >= threshold;
}

// out[i] (= or += when accumulate) x[i] * mask[i] / (1 - p), over n elements.
template <class T>
void dropout_apply(const DropoutMask& m, const T* x, std::int64_t n, T* out, bool accumulate);

}  // namespace tg::kernels
