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

#include "tapegrad/kernels/threads.hpp"

namespace tg::kernels {

// body(i) for i in [0, n), split statically over `threads` threads (<= 1, or
// inside a parallel region, where a nested region would run on one thread: the
// calling thread).
template <class F>
void parallel_for(std::int64_t n, int threads, F&& body) {
  if (threads <= 1 || n <= 1 || omp_in_parallel()) {
    for (std::int64_t i = 0; i < n; ++i) body(i);
    return;
  }
#pragma omp parallel for schedule(static) num_threads(threads)
  for (std::int64_t i = 0; i < n; ++i) body(i);
}

// tapegrad's thread count (tg::num_threads) when `parallel` holds, else 1.
inline int threads_if(bool parallel) { return parallel ? tg::num_threads() : 1; }

// body(begin, end) over [0, n) in chunks of 32,768 elements, on threads once n
// spans two chunks: for elementwise loops (a fused block of 1,024 elements
// stays on its thread).
template <class F>
void parallel_chunks(std::int64_t n, F&& body) {
  constexpr std::int64_t kChunk = std::int64_t(1) << 15;
  const std::int64_t chunks = (n + kChunk - 1) / kChunk;
  parallel_for(chunks, threads_if(chunks >= 2), [&](std::int64_t c) { body(c * kChunk, std::min(n, (c + 1) * kChunk)); });
}

// data[0, n) = value, on threads once n is large: zeroing the adjoints of a
// LeNet step (about 13 MB) on one thread left the other idle for 1 ms.
template <class T>
void parallel_fill(T* data, std::int64_t n, T value) {
  parallel_chunks(n, [&](std::int64_t begin, std::int64_t end) { std::fill(data + begin, data + end, value); });
}

}  // namespace tg::kernels
