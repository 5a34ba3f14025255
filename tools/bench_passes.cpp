// The conv kernels alone, pass by pass: the minimum time of each anchor
// layer's forward, input gradient and weight gradient (fp32, the algorithm the
// cost rule picks), one line per layer and thread count.
//
//   bench_passes [--threads 1,2] [--reps N] [--only NAME|resnet]
//
// It uses the kernels' API only (tapegrad/kernels/conv.hpp), so that
// scripts/compare-kernels.sh can build it against the kernels of an earlier
// commit and run the two in turns: a regression check between commits, where
// bench_conv compares against other libraries.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "conv_layers.hpp"
#include "tapegrad/kernels/conv.hpp"
#include "tapegrad/kernels/threads.hpp"

namespace {

namespace k = tg::kernels;

struct Options {
  std::vector<int> threads{1, 2};
  int reps = 10;
  std::string only;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--reps" && has_value) {
      o.reps = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--only" && has_value) {
      o.only = argv[++i];
    } else if (a == "--threads" && has_value) {
      o.threads.clear();
      for (const char* p = argv[++i]; *p;) {
        o.threads.push_back(std::max(1, std::atoi(p)));
        while (*p && *p != ',') ++p;
        if (*p == ',') ++p;
      }
    } else {
      std::fprintf(stderr, "bench_passes: unknown argument '%s'; usage: bench_passes [--threads 1,2] [--reps N] [--only NAME|resnet]\n",
                   argv[i]);
      std::exit(2);
    }
  }
  return o;
}

std::vector<float> random_floats(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<float> v(n);
  for (float& e : v) e = u(rng);
  return v;
}

// The least of `reps` timed calls of f, after one untimed, in milliseconds.
template <class F>
double min_ms(int reps, F f) {
  f();
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

// "L1 1  1.234 1.156 1.130": the layer, the threads, then forward, input gradient and weight gradient in ms.
void bench_layer(const tgbench::ConvLayer& L, int threads, int reps) {
  k::ConvSpec spec;
  spec.stride = {L.stride};
  spec.pad_lo = spec.pad_hi = {L.pad};
  spec.groups = L.groups;
  const std::int64_t Cg = L.channels_per_group();
  const k::ConvGeometry g = k::conv_geometry({L.N, L.C, L.H, L.W}, {L.K, Cg, L.k, L.k}, spec, "bench_passes");
  const std::size_t in = L.N * L.C * L.H * L.W, taps = L.K * Cg * L.k * L.k, out = L.N * L.K * g.out_vol();
  const std::vector<float> x = random_floats(in, 1), w = random_floats(taps, 2), gy = random_floats(out, 3);
  std::vector<float> y(out), gx(in), gw(taps);
  tg::set_num_threads(threads);
  auto algorithm = [&](k::ConvPass pass) { return k::choose_conv_algorithm(g, pass, k::ConvAlgorithm::automatic, "bench_passes"); };
  const k::ConvAlgorithm fwd = algorithm(k::ConvPass::forward), bin = algorithm(k::ConvPass::backward_input),
                         bw = algorithm(k::ConvPass::backward_weight);
  const double t_fwd = min_ms(reps, [&] { k::conv_forward<float>(g, fwd, x.data(), w.data(), y.data()); });
  const double t_in = min_ms(reps, [&] { k::conv_backward_input<float>(g, bin, gy.data(), w.data(), gx.data(), false); });
  const double t_w = min_ms(reps, [&] {
    std::fill(gw.begin(), gw.end(), 0.f);
    k::conv_backward_weight<float>(g, bw, x.data(), gy.data(), gw.data());
  });
  std::printf("%-3s %d  %8.3f %8.3f %8.3f\n", L.name, threads, t_fwd, t_in, t_w);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  const std::vector<tgbench::ConvLayer> layers = tgbench::selected_layers(o.only);
  if (layers.empty()) {
    std::fprintf(stderr, "bench_passes: no layer named '%s'; expected L1, L2, R1-R6, N1-N8, D1-D3, resnet or depthwise\n", o.only.c_str());
    return 2;
  }
  for (const int threads : o.threads)
    for (const auto& L : layers) bench_layer(L, threads, o.reps);
}
