// AD overhead per op: record + reverse pass of a chain of 1,000 tiny
// elementwise ops on 1- and 16-element arrays, in microseconds per op, beside
// LibTorch running the same chain in the same process (when built with it).
//
//   bench_overhead [--reps N] [--no-compare]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <tapegrad/tapegrad.hpp>

#include "timing.hpp"

#ifdef TAPEGRAD_HAVE_TORCH
#include <torch/torch.h>
#endif

namespace {

constexpr int kChain = 1000;


using tgbench::median_seconds;

// The chain: 4 kinds of op in turn, all elementwise, one of them binary with a tracked operand.
template <class V, class Tanh>
V chain(V y, const V& x, Tanh tanh_fn) {
  for (int i = 0; i < kChain; ++i) {
    switch (i % 4) {
      case 0: y = y * 1.001f; break;
      case 1: y = y + 0.01f; break;
      case 2: y = tanh_fn(y); break;
      default: y = y - x; break;
    }
  }
  return y;
}

double tapegrad_us_per_op(std::int64_t n, int reps, bool backward) {
  const auto x = tg::Array<float>::random_uniform({n}, -1.f, 1.f, 1);
  volatile float sink = 0;
  const double s = median_seconds(reps, [&] {
    auto f = [](const tg::Tracked<float>& v) {
      return tg::sum(chain(v, v, [](const tg::Tracked<float>& a) { return tg::tanh(a); }));
    };
    if (backward) {
      sink = tg::gradient(f, x).data()[0];
    } else {
      sink = tg::record(f, x).value();
    }
  });
  (void)sink;
  return s / (kChain + 1) * 1e6;
}

#ifdef TAPEGRAD_HAVE_TORCH
double torch_us_per_op(std::int64_t n, int reps, bool backward) {
  torch::manual_seed(1);
  const auto x0 = torch::rand({n}) * 2 - 1;
  volatile float sink = 0;
  const double s = median_seconds(reps, [&] {
    auto x = x0.clone().requires_grad_(true);
    auto y = chain(x, x, [](const torch::Tensor& a) { return torch::tanh(a); }).sum();
    if (backward) {
      y.backward();
      sink = x.grad().data_ptr<float>()[0];
    } else {
      sink = y.item<float>();
    }
  });
  (void)sink;
  return s / (kChain + 1) * 1e6;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  int reps = 200;
  bool compare = true;  // --no-compare: tapegrad only (for profiling)
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc) reps = std::stoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--no-compare") == 0) compare = false;
  }
#ifdef TAPEGRAD_HAVE_TORCH
  torch::set_num_threads(1);
#endif
  std::printf("AD overhead: chain of %d elementwise ops (f32), median of %d runs, microseconds per op\n", kChain, reps);
  std::printf("%-10s %-22s %12s %12s %10s\n", "elements", "pass", "tapegrad", "libtorch", "ratio");
  for (std::int64_t n : {1, 16}) {
    for (bool backward : {false, true}) {
      const char* pass = backward ? "record + reverse" : "record (forward)";
      const double ours = tapegrad_us_per_op(n, reps, backward);
#ifdef TAPEGRAD_HAVE_TORCH
      const double theirs = compare ? torch_us_per_op(n, reps, backward) : 0.0;
      std::printf("%-10lld %-22s %12.3f %12.3f %9.1fx\n", static_cast<long long>(n), pass, ours, theirs, theirs / ours);
#else
      std::printf("%-10lld %-22s %12.3f %12s %10s\n", static_cast<long long>(n), pass, ours, "(not built)", "-");
#endif
    }
  }
  std::printf("ratio = libtorch time / tapegrad time (above 1: tapegrad is faster)\n");
  return 0;
}
