// Transform lengths for the FFT algorithm: the smallest 5-smooth number >= n
// (2^a 3^b 5^c), sizes FFTW's codelets handle fastest.
#pragma once

#include <cstdint>

namespace tg::kernels {

// Every 5^c 3^b below n, each doubled up to n: O(log^3 n) steps at any size.
inline std::int64_t fft_size(std::int64_t n) {
  if (n <= 1) return 1;
  if (n > (std::int64_t{1} << 60)) return n;  // no transform is ever this long; only costed
  std::int64_t best = std::int64_t{1} << 62;
  for (std::int64_t p5 = 1; p5 < 2 * n; p5 *= 5)
    for (std::int64_t p35 = p5; p35 < 2 * n; p35 *= 3) {
      std::int64_t m = p35;
      while (m < n) m *= 2;
      if (m < best) best = m;
    }
  return best;
}

}  // namespace tg::kernels

