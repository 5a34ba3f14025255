// Loops over threads without a heap allocation per call (the kernels, the tape compiler).
//
// Note [One-thread regions]: libgomp builds a team for every parallel region and
// keeps it for the next region only when that team had more than one thread; a
// region that runs on one thread (num_threads(1), or an if() clause that is
// false) mallocs and frees its team on every call. A replayed step calls its
// kernels thousands of times, so a region that would run on one thread is not
// opened at all: the loop runs on the calling thread.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace tg::kernels {

// body(i) for i in [0, n), split statically over `threads` threads (<= 1: the calling thread).
template <class F>
void parallel_for(std::int64_t n, int threads, F&& body) {
  if (threads <= 1 || n <= 1) {
    for (std::int64_t i = 0; i < n; ++i) body(i);
    return;
  }
#pragma omp parallel for schedule(static) num_threads(threads)
  for (std::int64_t i = 0; i < n; ++i) body(i);
}

// OpenMP's thread count when `parallel` holds, else 1.
inline int threads_if(bool parallel) { return parallel ? omp_get_max_threads() : 1; }

// data[0, n) = value, in chunks over threads once n is large: zeroing the
// adjoints of a LeNet step (about 13 MB) on one thread left the other idle for 1 ms.
template <class T>
void parallel_fill(T* data, std::int64_t n, T value) {
  constexpr std::int64_t kChunk = std::int64_t(1) << 16;
  const std::int64_t chunks = (n + kChunk - 1) / kChunk;
  parallel_for(chunks, threads_if(chunks >= 4), [&](std::int64_t c) {
    std::fill(data + c * kChunk, data + std::min(n, (c + 1) * kChunk), value);
  });
}

}  // namespace tg::kernels
