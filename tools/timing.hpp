// Timing for the benchmark programs: the median of `reps` runs of f, in seconds
// (after `warmup` untimed runs); and interleaved medians of several variants.
#pragma once

#include <tapegrad/kernels/isa.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <fstream>
#include <string>
#include <vector>

namespace tgbench {

// "cpu: <model name> (N cores)" from /proc/cpuinfo, for the head of every table.
inline std::string cpu_line() {
  std::ifstream in("/proc/cpuinfo");
  std::string line, model = "unknown";
  int cores = 0;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      ++cores;
      if (const auto colon = line.find(':'); colon != std::string::npos) model = line.substr(colon + 2);
    }
  }
  return "cpu: " + model + " (" + std::to_string(cores) + " logical cores), tapegrad's kernels at " +
         tg::kernels::to_string(tg::kernels::isa()) + " (TG_ISA caps it)";
}

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

// The median seconds of each of fs, timed in rounds that run every variant
// once (after `warmup` rounds): this machine's speed drifts over seconds, and
// variants timed one block after another would each get a different drift.
template <class... F>
std::array<double, sizeof...(F)> interleaved_medians(int reps, int warmup, F... fs) {
  using Clock = std::chrono::steady_clock;
  std::array<std::vector<double>, sizeof...(F)> t;
  for (int r = 0; r < warmup + reps; ++r) {
    std::size_t i = 0;
    auto time_one = [&](auto& f) {
      const auto start = Clock::now();
      f();
      if (r >= warmup) t[i].push_back(std::chrono::duration<double>(Clock::now() - start).count());
      ++i;
    };
    (time_one(fs), ...);
  }
  std::array<double, sizeof...(F)> medians{};
  for (std::size_t i = 0; i < t.size(); ++i) {
    std::sort(t[i].begin(), t[i].end());
    medians[i] = t[i][t[i].size() / 2];
  }
  return medians;
}

}  // namespace tgbench
