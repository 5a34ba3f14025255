// Timing for the benchmark programs: the median of `reps` runs of f, in seconds
// (after `warmup` untimed runs); and interleaved medians of several variants.
#pragma once

#include <pthread.h>
#include <sched.h>

#include <tapegrad/kernels/isa.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace tgbench {

// Note [Core-to-core round trip]: the VMs these benchmarks run on sometimes
// have their two vCPUs placed far apart by the host. A cache line then takes
// 320-370 ns to go from one to the other and back instead of 50-60 ns, and
// kernels whose threads share data slow down (Winograd's weight pass most:
// L2's 2.0 ms became 3.5-3.7 ms). The tables' head says which state the
// machine was in: two threads on the first two allowed CPUs pass one atomic
// back and forth, for at most 20,000 trips or 50 ms. Returns the mean
// nanoseconds a trip, or -1 with fewer than two CPUs.
inline double core_round_trip_ns() {
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return -1;
  int cpus[2] = {0, 0}, found = 0;
  for (int c = 0; c < CPU_SETSIZE && found < 2; ++c)
    if (CPU_ISSET(c, &allowed)) cpus[found++] = c;
  if (found < 2) return -1;
  auto pin = [](int cpu) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    pthread_setaffinity_np(pthread_self(), sizeof one, &one);
  };
  constexpr int kTrips = 20000;
  alignas(64) std::atomic<int> ball{0};
  alignas(64) std::atomic<bool> stop{false};
  std::thread partner([&] {
    pin(cpus[1]);
    for (int i = 0; i < kTrips && !stop.load(std::memory_order_relaxed); ++i) {
      while (ball.load(std::memory_order_acquire) != 2 * i + 1)
        if (stop.load(std::memory_order_relaxed)) return;
      ball.store(2 * i + 2, std::memory_order_release);
    }
  });
  pin(cpus[0]);
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now(), deadline = start + std::chrono::milliseconds(50);
  int trips = 0;
  for (; trips < kTrips; ++trips) {
    ball.store(2 * trips + 1, std::memory_order_release);
    bool late = false;
    for (int spins = 0; ball.load(std::memory_order_acquire) != 2 * trips + 2; ++spins)
      if ((spins & 1023) == 1023 && Clock::now() > deadline) {
        late = true;
        break;
      }
    if (late) break;
  }
  const double ns = std::chrono::duration<double, std::nano>(Clock::now() - start).count();
  stop.store(true);
  partner.join();
  sched_setaffinity(0, sizeof allowed, &allowed);
  return trips > 0 ? ns / trips : -1;
}

// "cpu: <model name> (N cores)" from /proc/cpuinfo, for the head of every
// table, with the core-to-core round trip (Note [Core-to-core round trip]).
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
  const double trip = core_round_trip_ns();
  const std::string trip_text =
      trip < 0 ? "" : ", core-to-core round trip " + std::to_string(static_cast<int>(trip + 0.5)) + " ns";
  return "cpu: " + model + " (" + std::to_string(cores) + " logical cores" + trip_text +
         "), tapegrad's kernels at " + tg::kernels::kernels_line();
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
