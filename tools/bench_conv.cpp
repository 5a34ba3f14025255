// Convolution kernels against LibTorch, in one run: forward, backward-input and
// backward-weight (fp32) for the layers of issue 3, at 1 and 2 threads, with
// GFLOP/s and the ratio; then the seed case (500x500 double image, 3x3 kernel,
// replicate border: forward + both gradients) at 1 thread.
//
//   bench_conv [--threads 1,2] [--reps N] [--only NAME|resnet|depthwise|seed|semantics] [--algorithm NAME|tuned] [--no-compare]
//              [--against onednn|tiles]
//
// --only resnet: the convolutions of the ResNet example's training step
// (examples/cnn/resnet_model.hpp, width 32, batch 128), N1-N8; --only
// depthwise: three depthwise 3x3 layers, D1-D3 (LibTorch only).
//
// Times are medians of N repetitions after one warm-up; tapegrad is timed at
// the kernel (the algorithm its cost rule picks, the one named, or with
// "tuned" the fastest by timing, as CompileOptions::tune_algorithms does), LibTorch at at::conv2d and
// at::convolution_backward with the other gradients masked off. The last
// column checks that both computed the same numbers (max relative difference).
// Last, a table of semantic checks: the same arguments through both libraries
// in double (conv 1-3D, conv_transpose, the pools), values and gradients.
//
// --against onednn (built when Debian's libdnnl-dev is installed): the same
// layers against oneDNN's primitives instead, in interleaved rounds (ours,
// then oneDNN's, per round), oneDNN on its own blocked layouts with the
// reorders outside the timed calls (onednn_conv.hpp), with GFLOP/s and the
// share of the measured FMA peak (fma_peak.hpp) of each library's level; a
// warning when that peak says another program held a core while it was measured.
//
// --against tiles: our kernels with the AVX-512 micro-kernel's paired 6x2
// tiles against its single 6x1 ones (Note [Paired tiles]), in interleaved
// rounds, whichever this CPU's FMA units pick by default: on an Intel
// machine, the measure of whether pairing pays there.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <tapegrad/tapegrad.hpp>

#include "conv_layers.hpp"
#include "timing.hpp"

#ifdef TAPEGRAD_HAVE_TORCH
#include <torch/torch.h>
#endif
#ifdef TAPEGRAD_HAVE_ONEDNN
#include "fma_peak.hpp"
#include "onednn_conv.hpp"
#endif

namespace {

using tg::kernels::ConvAlgorithm;
using tg::kernels::ConvPass;

using Layer = tgbench::ConvLayer;
using tgbench::selected_layers;

struct Options {
  std::vector<int> threads{1, 2};
  int reps = 5;
  std::string only;
  std::string algorithm;  // empty: the cost rule's choice
  bool compare = true;
  std::string against = "libtorch";  // or onednn
};

// One warm-up run, then the median.
template <class F>
double median_seconds(int reps, F f) {
  return tgbench::median_seconds(reps, f, /*warmup=*/1);
}

void set_threads(int n) {
  tg::set_num_threads(n);
#ifdef TAPEGRAD_HAVE_TORCH
  torch::set_num_threads(n);
#endif
}

double max_rel_diff(const float* a, const float* b, std::int64_t n) {
  double scale = 1e-30, diff = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    scale = std::max(scale, double(std::abs(b[i])));
    diff = std::max(diff, double(std::abs(a[i] - b[i])));
  }
  return diff / scale;
}

struct Row {
  std::string layer, pass, algorithm;
  int threads;
  double ours, theirs, gflop;
  double check;
};

const char* pass_name(ConvPass p) {
  return p == ConvPass::forward ? "forward" : p == ConvPass::backward_input ? "bwd-input" : "bwd-weight";
}

ConvAlgorithm forced(const std::string& name) {
  for (ConvAlgorithm a : {ConvAlgorithm::direct, ConvAlgorithm::im2col, ConvAlgorithm::implicit_gemm, ConvAlgorithm::fft,
                         ConvAlgorithm::winograd})
    if (name == tg::kernels::to_string(a)) return a;
  return ConvAlgorithm::automatic;
}

// --algorithm: a named one, "tuned" (timed, Note [Tuning convolution algorithms]), or none (the cost rule).
ConvAlgorithm algorithm_for(const tg::kernels::ConvGeometry& g, ConvPass pass, const std::string& name) {
  if (name == "tuned") return tg::kernels::tune_conv_algorithm<float>(g, pass);
  return tg::kernels::choose_conv_algorithm(g, pass, forced(name), "bench");
}

// One layer's random input, weights and output adjoint, and our three passes' results.
struct LayerData {
  using A = tg::Array<float>;
  A x, w;
  tg::kernels::ConvGeometry g;
  A gy, y, gx, gw;

  explicit LayerData(const Layer& L)
      : x(A::random_uniform({L.N, L.C, L.H, L.W}, -1, 1, 1)),
        w(A::random_uniform({L.K, L.channels_per_group(), L.k, L.k}, -1, 1, 2)),
        g(geometry(L, x, w)), gy(A::random_uniform(tg::kernels::conv_output_shape(g), -1, 1, 3)), y(A::zeros(gy.shape())),
        gx(A::zeros(x.shape())), gw(A::zeros(w.shape())) {}

  static tg::kernels::ConvGeometry geometry(const Layer& L, const A& x, const A& w) {
    tg::kernels::ConvSpec spec;
    spec.stride = {L.stride};
    spec.pad_lo = spec.pad_hi = {L.pad};
    spec.groups = L.groups;
    return tg::kernels::conv_geometry(x.shape(), w.shape(), spec, "bench");
  }
  // One pass of our kernel, with algorithm a; its result in y, gx or gw.
  void run(ConvPass pass, ConvAlgorithm a) {
    if (pass == ConvPass::forward) tg::kernels::conv_forward(g, a, x.data(), w.data(), y.data());
    // gx written, as a compiled step assigns an input's first adjoint (Note [Assigned adjoints]) and as
    // the comparisons write theirs; gw added into zeros (the weight gradient only accumulates).
    if (pass == ConvPass::backward_input) tg::kernels::conv_backward_input(g, a, gy.data(), w.data(), gx.data(), /*accumulate=*/false);
    if (pass == ConvPass::backward_weight) {
      gw.fill(0);
      tg::kernels::conv_backward_weight(g, a, x.data(), gy.data(), gw.data());
    }
  }
  const A& result(ConvPass pass) const { return pass == ConvPass::forward ? y : pass == ConvPass::backward_input ? gx : gw; }
};

std::vector<Row> bench_layer(const Layer& L, int threads, const Options& o) {
  using A = tg::Array<float>;
  LayerData d(L);
  const A &x = d.x, &w = d.w, &gy = d.gy;
  const auto& g = d.g;
  const double flop = 2 * g.macs();
  std::vector<Row> rows;
  for (ConvPass pass : {ConvPass::forward, ConvPass::backward_input, ConvPass::backward_weight}) {
    const ConvAlgorithm a = algorithm_for(g, pass, o.algorithm);
    const A* result = &d.result(pass);
    const double ours = median_seconds(o.reps, [&] { d.run(pass, a); });
    Row r{L.name, pass_name(pass), tg::kernels::to_string(a), threads, ours, NAN, flop, NAN};
#ifdef TAPEGRAD_HAVE_TORCH
    if (o.compare) {
      torch::NoGradGuard no_grad;
      auto tx = torch::from_blob(const_cast<float*>(x.data()), {L.N, L.C, L.H, L.W}).clone();
      auto tw = torch::from_blob(const_cast<float*>(w.data()), {L.K, L.channels_per_group(), L.k, L.k}).clone();
      auto tgy = torch::from_blob(const_cast<float*>(gy.data()), {gy.shape()[0], gy.shape()[1], gy.shape()[2], gy.shape()[3]}).clone();
      torch::Tensor out;
      const std::array<bool, 3> mask{pass == ConvPass::backward_input, pass == ConvPass::backward_weight, false};
      r.theirs = median_seconds(o.reps, [&] {
        if (pass == ConvPass::forward)
          out = at::conv2d(tx, tw, {}, {L.stride, L.stride}, {L.pad, L.pad}, {1, 1}, L.groups);
        else
          out = pass == ConvPass::backward_input
                    ? std::get<0>(at::convolution_backward(tgy, tx, tw, c10::nullopt, {L.stride, L.stride}, {L.pad, L.pad},
                                                           {1, 1}, false, {0, 0}, L.groups, mask))
                    : std::get<1>(at::convolution_backward(tgy, tx, tw, c10::nullopt, {L.stride, L.stride}, {L.pad, L.pad},
                                                           {1, 1}, false, {0, 0}, L.groups, mask));
      });
      out = out.contiguous();
      r.check = max_rel_diff(result->data(), out.data_ptr<float>(), result->size());
    }
#endif
    rows.push_back(r);
  }
  return rows;
}

// The seed case: f(x, w) = sum(correlate(x, w, replicate)), 500x500 double, 3x3 kernel.
void bench_seed(const Options& o) {
  set_threads(1);
  using A = tg::Array<double>;
  const A x = A::random_uniform({500, 500}, -1, 1, 1), w = A::random_uniform({3, 3}, -1, 1, 2);
  const tg::FilterParams p{.border = tg::Border::replicate()};
  const double fwd = median_seconds(o.reps * 4, [&] { (void)tg::correlate(x, w, p); });
  auto f = [&](const tg::Tracked<double>& a, const tg::Tracked<double>& b) { return tg::sum(tg::correlate(a, b, p)); };
  const double full = median_seconds(o.reps * 4, [&] { (void)tg::gradient(f, x, w); });
  auto tape = tg::record(f, x, w);
  const double replay = median_seconds(o.reps * 4, [&] { (void)tape.gradient(x, w); });
  A gx = A::zeros(x.shape()), gw = A::zeros(w.shape());
  const double into = median_seconds(o.reps * 4, [&] { tape.gradient_into({&gx, &gw}, x, w); });
  std::printf("\nseed case: sum(correlate(x 500x500, w 3x3, replicate)), double, 1 thread\n");
  std::printf("  %-44s %9.3f ms\n", "tapegrad forward", fwd * 1e3);
  std::printf("  %-44s %9.3f ms  (%.2fx the forward)\n", "tapegrad forward + both gradients (gradient())", full * 1e3,
              full / fwd);
  std::printf("  %-44s %9.3f ms  (%.2fx the forward)\n", "tapegrad replayed tape.gradient(x, w)", replay * 1e3, replay / fwd);
  std::printf("  %-44s %9.3f ms  (%.2fx the forward)\n", "tapegrad replayed into caller arrays", into * 1e3, into / fwd);
  set_threads(2);  // the filter's passes run bands of rows on threads
  const double into2 = median_seconds(o.reps * 4, [&] { tape.gradient_into({&gx, &gw}, x, w); });
  set_threads(1);
  std::printf("  %-44s %9.3f ms  (%.2fx one thread's time)\n", "tapegrad replayed into caller arrays, 2 threads",
              into2 * 1e3, into2 / into);
#ifdef TAPEGRAD_HAVE_TORCH
  if (o.compare) {
    auto tx = torch::from_blob(const_cast<double*>(x.data()), {1, 1, 500, 500}, torch::kFloat64).clone();
    auto tw = torch::from_blob(const_cast<double*>(w.data()), {1, 1, 3, 3}, torch::kFloat64).clone();
    const double theirs = median_seconds(o.reps * 4, [&] {
      auto a = tx.clone().requires_grad_(true), b = tw.clone().requires_grad_(true);
      auto padded = torch::nn::functional::pad(a, torch::nn::functional::PadFuncOptions({1, 1, 1, 1}).mode(torch::kReplicate));
      at::conv2d(padded, b).sum().backward();
    });
    std::printf("  %-44s %9.3f ms  (LibTorch / tapegrad = %.1fx)\n", "LibTorch pad(replicate) + conv2d + backward",
                theirs * 1e3, theirs / full);
  }
#endif
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) o.reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) o.only = argv[++i];
    else if (!std::strcmp(argv[i], "--algorithm") && i + 1 < argc) {
      o.algorithm = argv[++i];
      if (o.algorithm != "tuned" && forced(o.algorithm) == ConvAlgorithm::automatic)
        tg::fail("bench_conv", fmt::format("--algorithm {} expected direct, im2col, implicit_gemm, fft, winograd or tuned",
                                           o.algorithm));
    }
    else if (!std::strcmp(argv[i], "--no-compare")) o.compare = false;
    else if (!std::strcmp(argv[i], "--against") && i + 1 < argc) {
      o.against = argv[++i];
      if (o.against != "libtorch" && o.against != "onednn" && o.against != "tiles")
        tg::fail("bench_conv", fmt::format("--against {} expected libtorch, onednn or tiles", o.against));
      if (o.against == "tiles" && tg::kernels::kernel_isa() < tg::kernels::Isa::avx512)
        tg::fail("bench_conv", fmt::format("--against tiles: kernels at {} expected avx512, where the tiles pair; hint: "
                                           "run it on a CPU with AVX-512 and without TG_ISA capping it",
                                           tg::kernels::to_string(tg::kernels::kernel_isa())));
#ifndef TAPEGRAD_HAVE_ONEDNN
      if (o.against == "onednn")
        tg::fail("bench_conv", "--against onednn: built without oneDNN expected libdnnl-dev installed when configuring; "
                               "hint: apt-get install libdnnl-dev and configure again");
#endif
    }
    else if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) {
      o.threads.clear();
      for (const char* s = argv[++i]; *s;) {
        o.threads.push_back(std::atoi(s));
        while (*s && *s != ',') ++s;
        if (*s == ',') ++s;
      }
    }
  }
  if (o.against == "onednn")
    for (const Layer& L : selected_layers(o.only))
      if (L.groups != 1)
        tg::fail("bench_conv", fmt::format("--against onednn with layer {} ({} groups) expected layers of one group; "
                                           "hint: compare grouped layers with --against libtorch", L.name, L.groups));
  return o;
}

#ifdef TAPEGRAD_HAVE_TORCH
// Same values and gradients as PyTorch for the same arguments: each case runs
// forward and backward (of sum(y * r) for a fixed random r) in both libraries,
// in double, and prints the largest differences.
namespace semantics {

using A = tg::Array<double>;
using TT = tg::Tracked<double>;

torch::Tensor to_torch(const A& a) {
  std::vector<std::int64_t> shape(a.shape().begin(), a.shape().end());
  return torch::from_blob(const_cast<double*>(a.data()), shape, torch::kFloat64).clone();
}

double diff(const A& a, const torch::Tensor& t) {
  auto c = t.contiguous();
  if (c.numel() != a.size()) return INFINITY;
  double m = 0;
  for (std::int64_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a.data()[i] - c.data_ptr<double>()[i]));
  return m;
}

template <class Ours, class Theirs, class... In>
void compare(const char* what, Ours ours, Theirs theirs, const In&... inputs) {
  auto tape = tg::record(ours, inputs...);
  const A y = tape.output();
  const A r = A::random_uniform(y.shape(), -1, 1, 7);
  const auto grads = tape.vjp(r);
  std::vector<torch::Tensor> t{to_torch(inputs).requires_grad_(true)...};
  torch::Tensor ty = [&] {
    if constexpr (sizeof...(In) == 1) return theirs(t[0]);
    else return theirs(t[0], t[1]);
  }();
  ty.backward(to_torch(r));
  double dx = 0, dw = NAN;
  if constexpr (sizeof...(In) == 1) {
    dx = diff(grads, t[0].grad());
  } else {
    dx = diff(std::get<0>(grads), t[0].grad());
    dw = diff(std::get<1>(grads), t[1].grad());
  }
  std::printf("  %-58s value %8.1e  d/dx %8.1e  d/dw %8.1e\n", what, diff(y, ty.detach()), dx, dw);
}

void run() {
  std::printf("\nsame arguments, same answers: max |tapegrad - LibTorch| in double\n");
  auto r = [](tg::Shape s, std::uint64_t seed) { return A::random_uniform(std::move(s), -1, 1, seed); };
  compare("conv2d stride 2, padding 1, dilation 2, groups 2",
          [](const TT& x, const TT& w) { return tg::conv(x, w, {.stride = {2}, .padding = {1}, .dilation = {2}, .groups = 2}); },
          [](const torch::Tensor& x, const torch::Tensor& w) { return torch::conv2d(x, w, {}, 2, 1, 2, 2); },
          r({2, 4, 9, 8}, 1), r({6, 2, 3, 3}, 2));
  compare("conv1d stride 3, padding 2",
          [](const TT& x, const TT& w) { return tg::conv(x, w, {.stride = {3}, .padding = {2}}); },
          [](const torch::Tensor& x, const torch::Tensor& w) { return torch::conv1d(x, w, {}, 3, 2); },
          r({2, 3, 11}, 3), r({4, 3, 4}, 4));
  compare("conv3d padding (1,0,1)",
          [](const TT& x, const TT& w) { return tg::conv(x, w, {.padding = {1, 0, 1}}); },
          [](const torch::Tensor& x, const torch::Tensor& w) { return torch::conv3d(x, w, {}, 1, {1, 0, 1}); },
          r({1, 2, 5, 6, 4}, 5), r({3, 2, 2, 3, 2}, 6));
  compare("conv2d depthwise (groups = C), fft forced",
          [](const TT& x, const TT& w) { return tg::conv(x, w, {.padding = {2}, .groups = 3, .algorithm = tg::ConvAlgorithm::fft}); },
          [](const torch::Tensor& x, const torch::Tensor& w) { return torch::conv2d(x, w, {}, 1, 2, 1, 3); },
          r({2, 3, 12, 10}, 7), r({3, 1, 5, 5}, 8));
  compare("conv_transpose2d stride 2, padding 1, output_padding 1",
          [](const TT& x, const TT& w) { return tg::conv_transpose(x, w, {.stride = {2}, .padding = {1}, .output_padding = {1}}); },
          [](const torch::Tensor& x, const torch::Tensor& w) { return torch::conv_transpose2d(x, w, {}, 2, 1, 1); },
          r({2, 4, 5, 6}, 9), r({4, 3, 3, 3}, 10));
  compare("conv_transpose2d stride 3, groups 2, dilation 2",
          [](const TT& x, const TT& w) { return tg::conv_transpose(x, w, {.stride = {3}, .dilation = {2}, .groups = 2}); },
          [](const torch::Tensor& x, const torch::Tensor& w) { return torch::conv_transpose2d(x, w, {}, 3, 0, 0, 2, 2); },
          r({1, 4, 4, 4}, 11), r({4, 1, 2, 2}, 12));
  compare("max_pool2d window 3, stride 2, padding 1, ceil_mode",
          [](const TT& x) { return tg::maxpool(x, {.window = {3}, .stride = {2}, .padding = {1}, .ceil_mode = true}); },
          [](const torch::Tensor& x) { return torch::max_pool2d(x, 3, 2, 1, 1, true); }, r({2, 3, 9, 8}, 13));
  A ties = r({2, 3, 8, 8}, 14);
  for (auto& v : ties) v = std::round(v);  // only -1, 0, 1: ties everywhere
  compare("max_pool2d window 2 on values with ties",
          [](const TT& x) { return tg::maxpool(x, {.window = {2}, .stride = {1}}); },
          [](const torch::Tensor& x) { return torch::max_pool2d(x, 2, 1); }, ties);
  compare("avg_pool2d window 3, stride 2, padding 1, ceil_mode, count_include_pad",
          [](const TT& x) { return tg::meanpool(x, {.window = {3}, .stride = {2}, .padding = {1}, .ceil_mode = true}); },
          [](const torch::Tensor& x) { return torch::avg_pool2d(x, 3, 2, 1, true, true); }, r({2, 3, 9, 8}, 15));
  compare("avg_pool2d window 3, stride 2, padding 1, exclude padding",
          [](const TT& x) { return tg::meanpool(x, {.window = {3}, .stride = {2}, .padding = {1}, .count_include_pad = false}); },
          [](const torch::Tensor& x) { return torch::avg_pool2d(x, 3, 2, 1, false, false); }, r({2, 3, 9, 8}, 16));
  A positive = r({2, 3, 8, 6}, 17);
  for (auto& v : positive) v = std::abs(v) + 0.1;
  compare("lp_pool2d p = 3, window 2 (non-negative input)",
          [](const TT& x) { return tg::lppool(x, {.window = {2}, .p = 3}); },
          [](const torch::Tensor& x) { return torch::nn::functional::lp_pool2d(x, torch::nn::functional::LPPool2dFuncOptions(3, 2)); },
          positive);
  compare("max_pool3d window 2",
          [](const TT& x) { return tg::maxpool(x, {.window = {2}}); },
          [](const torch::Tensor& x) { return torch::max_pool3d(x, 2); }, r({1, 2, 4, 6, 4}, 18));
  compare("adaptive_avg_pool2d(1) = global_meanpool",
          [](const TT& x) { return tg::global_meanpool(x); },
          [](const torch::Tensor& x) { return torch::adaptive_avg_pool2d(x, {1, 1}); }, r({2, 3, 5, 7}, 19));
}

}  // namespace semantics
#endif

}  // namespace

#ifdef TAPEGRAD_HAVE_ONEDNN
// Our kernels against oneDNN's primitives, interleaved per round; see the file's head.
int against_onednn(const Options& o) {
  using A = tg::Array<float>;
  using Pass = tgbench::OnednnConv::Pass;
  tg::set_dynamic_threads(false);  // a fixed thread count for both (Note [Threads on a busy machine])
  std::printf("%s\ntapegrad conv kernels vs oneDNN %d.%d.%d (%s, blocked layouts, reorders excluded), fp32; "
              "medians of %d interleaved rounds\n",
              tgbench::cpu_line().c_str(), dnnl::version()->major, dnnl::version()->minor, dnnl::version()->patch,
              tgbench::onednn_isa().c_str(), o.reps);
  std::vector<double> peak_avx2, peak_avx512;
  for (int threads : o.threads) {
    peak_avx2.push_back(tgbench::fma_peak_gflops(tgbench::FmaLevel::avx2, threads));
    peak_avx512.push_back(tgbench::fma_peak_gflops(tgbench::FmaLevel::avx512, threads));
    std::printf("measured FMA peak at %d thread(s): AVX2 %.0f GFLOP/s, AVX-512 %.0f GFLOP/s\n", threads, peak_avx2.back(),
                peak_avx512.back());
  }
  // A peak far below the thread count times the first count's per-thread peak means another
  // program held a core meanwhile: that count's rows measure the machine, not the kernels.
  for (std::size_t t = 1; t < o.threads.size(); ++t) {
    const double per_thread = peak_avx2[0] / o.threads[0], share = peak_avx2[t] / (per_thread * o.threads[t]);
    if (share < 0.75)
      std::printf("warning: the FMA peak at %d threads was %.0f%% of %d times one thread's: the machine was busy, "
                  "so the rows at %d threads are unreliable; rerun\n",
                  o.threads[t], 100 * share, o.threads[t], o.threads[t]);
  }
  std::printf("%-4s %-10s %3s %-13s %9s %7s %5s %9s %7s %5s %8s %8s\n", "", "pass", "thr", "algo", "tapegrad", "GFLOP/s",
              "%pk", "oneDNN", "GFLOP/s", "%pk", "ours/dnn", "max rel");
  double log_sum = 0, worst = 0;
  int pairs = 0;
  for (std::size_t t = 0; t < o.threads.size(); ++t) {
    const int threads = o.threads[t];
    set_threads(threads);
    omp_set_num_threads(threads);
    const double ours_peak = tg::kernels::isa() >= tg::kernels::Isa::avx512 ? std::max(peak_avx2[t], peak_avx512[t]) : peak_avx2[t];
    const double their_peak = std::max(peak_avx2[t], peak_avx512[t]);
    for (const Layer& L : selected_layers(o.only)) {
      LayerData d(L);
      tgbench::OnednnConv dnn({L.N, L.C, L.H, L.W, L.K, L.k, L.stride, L.pad}, d.x.data(), d.w.data(), d.gy.data());
      for (ConvPass pass : {ConvPass::forward, ConvPass::backward_input, ConvPass::backward_weight}) {
        const ConvAlgorithm a = algorithm_for(d.g, pass, o.algorithm);
        const Pass theirs_pass = pass == ConvPass::forward ? Pass::forward : pass == ConvPass::backward_input ? Pass::backward_data
                                                                                                              : Pass::backward_weights;
        const auto medians = tgbench::interleaved_medians(o.reps, /*warmup=*/1, [&] { d.run(pass, a); }, [&] { dnn.run(theirs_pass); });
        const double ours = medians[0], theirs = medians[1], flop = 2 * d.g.macs();
        const A& mine = d.result(pass);
        A other = A::zeros(mine.shape());
        dnn.result(theirs_pass, other.data());
        const double ratio = ours / theirs;
        std::printf("%-4s %-10s %3d %-13s %7.2fms %7.1f %4.0f%% %7.2fms %7.1f %4.0f%% %7.2fx %8.1e\n", L.name, pass_name(pass),
                    threads, tg::kernels::to_string(a), ours * 1e3, flop / ours * 1e-9, 100 * flop / ours * 1e-9 / ours_peak,
                    theirs * 1e3, flop / theirs * 1e-9, 100 * flop / theirs * 1e-9 / their_peak, ratio,
                    max_rel_diff(mine.data(), other.data(), mine.size()));
        std::fflush(stdout);
        log_sum += std::log(ratio);
        worst = std::max(worst, ratio);
        ++pairs;
      }
    }
  }
  std::printf("\nover %d (layer, pass, threads) triples: geometric mean ours/oneDNN = %.2fx, worst = %.2fx\n", pairs,
              std::exp(log_sum / std::max(1, pairs)), worst);
  for (const Layer& L : selected_layers(o.only)) {
    const A x = A::zeros({L.N, L.C, L.H, L.W}), w = A::zeros({L.K, L.C, L.k, L.k});
    const std::int64_t Ho = (L.H + 2 * L.pad - L.k) / L.stride + 1, Wo = (L.W + 2 * L.pad - L.k) / L.stride + 1;
    const A gy = A::zeros({L.N, L.K, Ho, Wo});
    tgbench::OnednnConv dnn({L.N, L.C, L.H, L.W, L.K, L.k, L.stride, L.pad}, x.data(), w.data(), gy.data());
    std::printf("oneDNN %s: forward %s; backward data %s; backward weights %s\n", L.name,
                dnn.implementation(Pass::forward).c_str(), dnn.implementation(Pass::backward_data).c_str(),
                dnn.implementation(Pass::backward_weights).c_str());
  }
  return 0;
}
#endif

// Paired tiles against single ones, interleaved per round; see the file's head.
int against_tiles(const Options& o) {
  tg::set_dynamic_threads(false);
  std::printf("%s\ntapegrad conv kernels, paired 6x2 tiles against single 6x1, fp32; medians of %d interleaved rounds\n",
              tgbench::cpu_line().c_str(), o.reps);
  std::printf("%-4s %-10s %3s %-13s %9s %9s %8s %8s\n", "", "pass", "thr", "algo", "6x1", "6x2", "6x2/6x1", "max diff");
  const bool before = tg::kernels::paired_tiles();
  double log_sum = 0;
  int rows = 0;
  for (int threads : o.threads) {
    set_threads(threads);
    for (const Layer& L : selected_layers(o.only)) {
      LayerData d(L);
      for (ConvPass pass : {ConvPass::forward, ConvPass::backward_input, ConvPass::backward_weight}) {
        const ConvAlgorithm a = algorithm_for(d.g, pass, o.algorithm);
        auto with_tiles = [&](bool paired) {
          tg::kernels::set_paired_tiles(paired);
          d.run(pass, a);
        };
        const auto medians = tgbench::interleaved_medians(o.reps, 1, [&] { with_tiles(false); }, [&] { with_tiles(true); });
        const tg::Array<float> paired = d.result(pass);  // the last run's, with pairs
        with_tiles(false);
        const double diff = max_rel_diff(paired.data(), d.result(pass).data(), paired.size());
        std::printf("%-4s %-10s %3d %-13s %7.2fms %7.2fms %7.2fx %8.1e\n", L.name, pass_name(pass), threads,
                    tg::kernels::to_string(a), medians[0] * 1e3, medians[1] * 1e3, medians[1] / medians[0], diff);
        std::fflush(stdout);
        log_sum += std::log(medians[1] / medians[0]);
        ++rows;
      }
    }
  }
  tg::kernels::set_paired_tiles(before);
  std::printf("\nover %d (layer, pass, threads) triples: geometric mean 6x2/6x1 = %.2fx (passes that do not pair: 1x)\n",
              rows, std::exp(log_sum / std::max(1, rows)));
  return 0;
}

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  if (o.against == "tiles") return against_tiles(o);
#ifdef TAPEGRAD_HAVE_ONEDNN
  if (o.against == "onednn") return against_onednn(o);
#endif
  std::printf("%s\ntapegrad conv kernels vs LibTorch, fp32; medians of %d; GFLOP/s = 2*MACs/time\n", tgbench::cpu_line().c_str(),
              o.reps);
#ifndef TAPEGRAD_HAVE_TORCH
  std::printf("(built without LibTorch: tapegrad's numbers only)\n");
#endif
  std::printf("%-4s %-10s %3s %-7s %10s %8s %10s %8s %9s %9s\n", "", "pass", "thr", "algo", "tapegrad", "GFLOP/s",
              "LibTorch", "GFLOP/s", "ours/LT", "max rel");
  double log_sum = 0, worst = 0;
  int pairs = 0, last_threads = o.threads.back();
  for (int threads : o.threads) {
    set_threads(threads);
    for (const auto& L : selected_layers(o.only)) {
      for (const auto& r : bench_layer(L, threads, o)) {
        const double ratio = r.ours / r.theirs;
        std::printf("%-4s %-10s %3d %-7s %8.2fms %8.1f %8.2fms %8.1f %8.2fx %9.1e\n", r.layer.c_str(), r.pass.c_str(),
                    r.threads, r.algorithm.c_str(), r.ours * 1e3, r.gflop / r.ours * 1e-9, r.theirs * 1e3,
                    r.gflop / r.theirs * 1e-9, ratio, r.check);
        std::fflush(stdout);
        if (threads == last_threads && std::isfinite(ratio)) {
          log_sum += std::log(ratio);
          worst = std::max(worst, ratio);
          ++pairs;
        }
      }
    }
  }
  if (pairs)
    std::printf("\nat %d threads over %d (layer, pass) pairs: geometric mean ours/LibTorch = %.2fx, worst = %.2fx\n",
                last_threads, pairs, std::exp(log_sum / pairs), worst);
  if (o.only.empty() || o.only == "seed") bench_seed(o);
#ifdef TAPEGRAD_HAVE_TORCH
  if (o.compare && (o.only.empty() || o.only == "semantics")) semantics::run();
#endif
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s\n", e.what());
  return 1;
}
