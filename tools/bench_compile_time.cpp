// How compile time grows with the tape's length: tg::compile on tapes of 1k,
// 10k and 100k instructions of three kinds, beside recording the tape and one
// interpreted gradient (what the compiled program must beat to pay off).
//   matmul chain:  y = matmul(y, w) n times on 2x2 matrices (every forward value
//                  lives until its pullback: the arena plan's worst case)
//   ew chain:      n elementwise ops on 4-element arrays, one fused chain
//   ew unfused:    the same chain compiled with fuse_elementwise off
// The time per instruction should stay flat (O(n log n) at most); the compiled
// gradient runs once (first replay, arena included) to show it runs in bounded memory.
//
//   bench_compile_time [--sizes 1000,10000,100000] [--reps 3]
#include <sys/resource.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <tapegrad/tapegrad.hpp>

#include "timing.hpp"

namespace {

using D = tg::Tracked<double>;
using A = tg::Array<double>;

double seconds_of(auto f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct Case {
  std::string name;
  tg::CompileOptions options;
  std::function<D(const D&, const D&)> f;
  tg::Shape x, w;
};

std::vector<Case> cases(std::int64_t n) {
  auto matmuls = [n](const D& x, const D& w) {
    D y = x;
    for (std::int64_t i = 0; i < n; ++i) y = tg::matmul(y, w);
    return tg::sum(y);
  };
  auto elementwise = [n](const D& x, const D& w) {
    D y = x;
    for (std::int64_t i = 0; i < n; ++i) y = i % 3 == 0 ? tg::tanh(y) : i % 3 == 1 ? y * w : y + 0.5;
    return tg::sum(y);
  };
  tg::CompileOptions unfused;
  unfused.fuse_elementwise = false;
  return {{"matmul chain", {}, matmuls, {2, 2}, {2, 2}},
          {"ew chain", {}, elementwise, {4}, {4}},
          {"ew unfused", unfused, elementwise, {4}, {4}}};
}

long peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss / 1024;
}

}  // namespace

int main(int argc, char** argv) try {
  std::vector<std::int64_t> sizes{1000, 10000, 100000};
  int reps = 3;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc) reps = std::stoi(argv[++i]);
    else if (std::strcmp(argv[i], "--sizes") == 0 && i + 1 < argc) {
      sizes.clear();
      for (std::string s = argv[++i]; !s.empty();) {
        const auto comma = s.find(',');
        sizes.push_back(std::stoll(s.substr(0, comma)));
        s = comma == std::string::npos ? "" : s.substr(comma + 1);
      }
    } else tg::fail("bench_compile_time", fmt::format("unknown flag {} expected --sizes N,N,... or --reps N", argv[i]));
  }
  fmt::print("{}\nbench_compile_time: best of {} runs, double, {} threads\n", tgbench::cpu_line(), reps, tg::num_threads());
  fmt::print("{:<14} {:>8} {:>10} {:>12} {:>12} {:>14} {:>10} {:>14}\n", "tape", "instrs", "record ms", "gradient ms",
             "compile ms", "compile us/ins", "arena KiB", "compiled grad");
  for (const std::int64_t n : sizes)
    for (const Case& c : cases(n)) {
      const A x = A::random_uniform(c.x, -0.5, 0.5, 1), w = A::random_uniform(c.w, -0.5, 0.5, 2);
      double record = 1e30, gradient = 1e30, compile = 1e30, compiled = 1e30;
      std::int64_t arena = 0;
      std::size_t instrs = 0;
      for (int r = 0; r < reps; ++r) {
        std::optional<tg::GradientTape<double, A, A>> tape;
        record = std::min(record, seconds_of([&] { tape.emplace(tg::record(c.f, x, w)); }));
        instrs = tape->tape().num_instructions();
        gradient = std::min(gradient, seconds_of([&] { tape->gradient(); }));
        std::optional<tg::CompiledTape<double, A, A>> ct;
        compile = std::min(compile, seconds_of([&] { ct.emplace(tg::compile(*tape, c.options)); }));
        arena = ct->program().arena_bytes();
        compiled = std::min(compiled, seconds_of([&] { ct->gradient(x, w); }));
      }
      fmt::print("{:<14} {:>8} {:>10.2f} {:>12.2f} {:>12.2f} {:>14.2f} {:>10.1f} {:>11.2f} ms\n", c.name, instrs,
                 record * 1e3, gradient * 1e3, compile * 1e3, compile * 1e6 / double(instrs), double(arena) / 1024,
                 compiled * 1e3);
    }
  fmt::print("peak RSS {} MiB\n", peak_rss_mib());
  return 0;
} catch (const std::exception& e) {
  fmt::print(stderr, "bench_compile_time: {}\n", e.what());
  return 1;
}
