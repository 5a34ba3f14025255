// Transform lengths for the FFT algorithm: the smallest 5-smooth number >= n
// (2^a 3^b 5^c), sizes FFTW's codelets handle fastest.
#pragma once

#include <cstdint>

namespace tg::kernels {

inline std::int64_t fft_size(std::int64_t n) {
  for (std::int64_t m = n < 1 ? 1 : n;; ++m) {
    std::int64_t r = m;
    for (std::int64_t p : {2, 3, 5})
      while (r % p == 0) r /= p;
    if (r == 1) return m;
  }
}

}  // namespace tg::kernels

