// Per-step wall time for profiles (TapeProfile), shared by the interpreter and
// the compiled program.
#pragma once

#include <chrono>
#include <vector>

namespace tg::detail {

// Runs f, adding its wall time to (*seconds)[i] when profiling (seconds not null).
template <class F>
void timed(std::vector<double>* seconds, std::size_t i, F&& f) {
  if (!seconds) return f();
  const auto start = std::chrono::steady_clock::now();
  f();
  (*seconds)[i] += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Starts a pass of `steps` steps on a profile; returns where its times go (null: not profiling).
inline std::vector<double>* start_pass(std::vector<double>* seconds, int* passes, std::size_t steps) {
  if (!seconds) return nullptr;
  seconds->resize(steps);
  ++*passes;
  return seconds;
}

}  // namespace tg::detail
