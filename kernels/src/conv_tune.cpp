// Choosing a convolution algorithm by timing it (Note [Tuning convolution
// algorithms] in conv.hpp).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <mutex>
#include <vector>

#include "tapegrad/kernels/conv.hpp"

namespace tg::kernels {
namespace {

// Everything a kernel's time depends on: the geometry's fields, the pass, the
// element size and the thread count.
using TuneKey = std::vector<std::int64_t>;

TuneKey key_of(const ConvGeometry& g, ConvPass pass, std::size_t element_size) {
  TuneKey k{g.spatial, g.N, g.C, g.K, g.groups, g.flip ? 1 : 0, static_cast<std::int64_t>(pass),
            static_cast<std::int64_t>(element_size), conv_threads()};
  for (const auto* dims : {&g.in, &g.ker, &g.stride, &g.dil, &g.lo, &g.hi}) k.insert(k.end(), dims->begin(), dims->end());
  return k;
}

struct TuneCache {
  std::mutex mutex;
  std::map<TuneKey, ConvAlgorithm> best;
};

TuneCache& cache() {
  static TuneCache c;
  return c;
}

// Buffers of one geometry's shapes, holding a fixed pattern of small values.
template <class T>
struct PassBuffers {
  std::vector<T> x, w, y, gx, gw;

  explicit PassBuffers(const ConvGeometry& g)
      : x(pattern(g.N * g.C * g.in_vol())),
        w(pattern(g.K * g.Cg * g.ker_vol())),
        y(pattern(g.N * g.K * g.out_vol())),
        gx(x.size()),
        gw(w.size()) {}

  static std::vector<T> pattern(std::int64_t n) {
    std::vector<T> v(static_cast<std::size_t>(n));
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<T>(static_cast<int>(i % 7) - 3) / T(8);
    return v;
  }

  // One run of the pass with algorithm a. The outputs are overwritten (forward,
  // input gradient) or added into (weight gradient): their values are never read.
  void run(const ConvGeometry& g, ConvPass pass, ConvAlgorithm a) {
    switch (pass) {
      case ConvPass::forward: return conv_forward(g, a, x.data(), w.data(), y.data());
      case ConvPass::backward_input: return conv_backward_input(g, a, y.data(), w.data(), gx.data(), /*accumulate=*/false);
      case ConvPass::backward_weight: return conv_backward_weight(g, a, x.data(), y.data(), gw.data());
    }
  }
};

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// The fastest of kTuneRuns runs of algorithm a, after one to warm up.
template <class T>
double fastest_run(PassBuffers<T>& buffers, const ConvGeometry& g, ConvPass pass, ConvAlgorithm a) {
  buffers.run(g, pass, a);
  double best = INFINITY;
  for (int r = 0; r < kTuneRuns; ++r) {
    const auto start = std::chrono::steady_clock::now();
    buffers.run(g, pass, a);
    best = std::min(best, seconds_since(start));
  }
  return best;
}

// The algorithms worth timing: those priced within kTuneSlack of the cheapest.
std::vector<ConvAlgorithm> candidates(const ConvGeometry& g, ConvPass pass) {
  const AlgorithmSeconds estimate = conv_estimated_seconds(g, pass);
  const double cheapest = *std::min_element(estimate.begin(), estimate.end());
  std::vector<ConvAlgorithm> out;
  for (auto a : {ConvAlgorithm::direct, ConvAlgorithm::im2col, ConvAlgorithm::implicit_gemm, ConvAlgorithm::fft,
                 ConvAlgorithm::winograd})
    if (std::isfinite(estimate[index_of(a)]) && estimate[index_of(a)] <= kTuneSlack * cheapest) out.push_back(a);
  return out;
}

template <class T>
ConvAlgorithm measure(const ConvGeometry& g, ConvPass pass) {
  const std::vector<ConvAlgorithm> tried = candidates(g, pass);
  if (tried.size() == 1) return tried[0];
  PassBuffers<T> buffers(g);
  ConvAlgorithm best = tried[0];
  double best_seconds = INFINITY;
  for (ConvAlgorithm a : tried) {
    const double s = fastest_run(buffers, g, pass, a);
    if (s < best_seconds) best = a, best_seconds = s;
  }
  return best;
}

}  // namespace

template <class T>
ConvAlgorithm tune_conv_algorithm(const ConvGeometry& g, ConvPass pass) {
  const TuneKey key = key_of(g, pass, sizeof(T));
  TuneCache& c = cache();
  {
    std::lock_guard lock(c.mutex);
    if (auto it = c.best.find(key); it != c.best.end()) return it->second;
  }
  // Timed outside the lock (the kernels use the thread pool); a layer tuned by two
  // threads at once is timed twice and keeps the first answer stored.
  const ConvAlgorithm best = measure<T>(g, pass);
  std::lock_guard lock(c.mutex);
  return c.best.emplace(key, best).first->second;
}

template ConvAlgorithm tune_conv_algorithm<float>(const ConvGeometry&, ConvPass);
template ConvAlgorithm tune_conv_algorithm<double>(const ConvGeometry&, ConvPass);

}  // namespace tg::kernels
