#include "tapegrad/kernels/dropout.hpp"

#include <algorithm>

#include "tapegrad/kernels/parallel.hpp"

namespace tg::kernels {

template <class T>
void dropout_apply(const DropoutMask& m, const T* x, std::int64_t n, T* out, bool accumulate) {
  const std::uint64_t key = m.key();
  const std::uint32_t threshold = m.threshold();
  const T scale = static_cast<T>(1.0 / (1.0 - m.p));
  const std::int64_t plane = m.plane < 1 ? 1 : m.plane;
  if (plane == 1) {
    parallel_chunks(n, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t i = begin; i < end; ++i) {
        const T k = dropout_keeps(key, threshold, static_cast<std::uint64_t>(i)) ? scale : T(0);
        out[i] = accumulate ? out[i] + k * x[i] : k * x[i];
      }
    });
    return;
  }
  parallel_chunks(n, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end;) {
      const std::uint64_t unit = static_cast<std::uint64_t>(i / plane);
      const std::int64_t stop = std::min(end, (i / plane + 1) * plane);  // the rest of this unit's run
      const T k = dropout_keeps(key, threshold, unit) ? scale : T(0);
      if (accumulate)
        for (; i < stop; ++i) out[i] += k * x[i];
      else
        for (; i < stop; ++i) out[i] = k * x[i];
    }
  });
}

template void dropout_apply(const DropoutMask&, const float*, std::int64_t, float*, bool);
template void dropout_apply(const DropoutMask&, const double*, std::int64_t, double*, bool);

}  // namespace tg::kernels
