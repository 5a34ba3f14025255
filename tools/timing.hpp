// Timing for the benchmark programs: the median of `reps` runs of f, in seconds
// (after `warmup` untimed runs).
#pragma once

#include <algorithm>
#include <chrono>
#include <vector>

namespace tgbench {

template <class F>
double median_seconds(int reps, F f, int warmup = 0) {
  using Clock = std::chrono::steady_clock;
  for (int w = 0; w < warmup; ++w) f();
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const auto start = Clock::now();
    f();
    t.push_back(std::chrono::duration<double>(Clock::now() - start).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace tgbench
