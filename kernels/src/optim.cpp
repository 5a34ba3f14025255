#include "tapegrad/kernels/optim.hpp"

#include <algorithm>
#include <cmath>

#include "clones.hpp"
#include "tapegrad/kernels/parallel.hpp"

namespace tg::kernels {

template <class T>
std::vector<UpdateBlock> plan_update_blocks(std::span<const UpdateSegment<T>> segments) {
  std::vector<UpdateBlock> blocks;
  for (std::size_t k = 0; k < segments.size(); ++k)
    for (std::int64_t b = 0; b < segments[k].size; b += kUpdateBlock)
      blocks.push_back({static_cast<std::uint32_t>(k), b, std::min(segments[k].size, b + kUpdateBlock)});
  return blocks;
}

namespace {

// Note [Update loops]: each loop is written once (a template inlined into
// an AVX2 and a baseline copy, Note [Two-level loops] in clones.hpp), and its
// file is built with -fno-math-errno so that sqrt vectorises. The
// operations follow torch.optim's order (lerp for exp_avg, addcmul, sqrt then
// divide then add eps), so results agree with PyTorch to float rounding.
// The loops, with every choice a template parameter: a branch inside would stop the vectorizer.
template <class T, bool First, bool Nesterov>
__attribute__((always_inline)) inline void sgd_momentum_loop(T* __restrict p, const T* __restrict g, T* __restrict buf,
                                                             std::int64_t n, T lr, T momentum, T dampening, T wd) {
#pragma omp simd
  for (std::int64_t i = 0; i < n; ++i) {
    const T d = g[i] + wd * p[i];
    T b;
    if constexpr (First) b = d;
    else b = momentum * buf[i] + (T(1) - dampening) * d;
    buf[i] = b;
    if constexpr (Nesterov) p[i] -= lr * (d + momentum * b);
    else p[i] -= lr * b;
  }
}

template <class T>
__attribute__((always_inline)) inline void sgd_loop(T* __restrict p, const T* __restrict g, T* __restrict buf,
                                                    std::int64_t n, T lr, T momentum, T dampening, T wd, bool nesterov,
                                                    bool first) {
  if (!buf) {
#pragma omp simd
    for (std::int64_t i = 0; i < n; ++i) p[i] -= lr * (g[i] + wd * p[i]);
  } else if (first) {
    if (nesterov) sgd_momentum_loop<T, true, true>(p, g, buf, n, lr, momentum, dampening, wd);
    else sgd_momentum_loop<T, true, false>(p, g, buf, n, lr, momentum, dampening, wd);
  } else {
    if (nesterov) sgd_momentum_loop<T, false, true>(p, g, buf, n, lr, momentum, dampening, wd);
    else sgd_momentum_loop<T, false, false>(p, g, buf, n, lr, momentum, dampening, wd);
  }
}

template <class T, bool Decoupled, bool Amsgrad>
__attribute__((always_inline)) inline void adam_kind_loop(T* __restrict p, const T* __restrict g, T* __restrict m,
                                                          T* __restrict v, T* __restrict vmax, std::int64_t n, T lr,
                                                          T beta1, T beta2, T eps, T wd, T step_size, T bc2_sqrt) {
  const T one_minus_beta1 = T(1) - beta1, one_minus_beta2 = T(1) - beta2, decay = T(1) - lr * wd;
#pragma omp simd
  for (std::int64_t i = 0; i < n; ++i) {
    T pi = p[i], gi = g[i];
    if constexpr (Decoupled) pi *= decay;
    else gi += wd * pi;
    const T mi = m[i] + one_minus_beta1 * (gi - m[i]);  // torch: exp_avg.lerp_(grad, 1 - beta1)
    const T vi = v[i] * beta2 + one_minus_beta2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    T second = vi;
    if constexpr (Amsgrad) {
      second = vmax[i] > vi ? vmax[i] : vi;
      vmax[i] = second;
    }
    const T denom = std::sqrt(second) / bc2_sqrt + eps;
    p[i] = pi - step_size * (mi / denom);
  }
}

template <class T>
__attribute__((always_inline)) inline void adam_loop(T* __restrict p, const T* __restrict g, T* __restrict m,
                                                     T* __restrict v, T* __restrict vmax, std::int64_t n, T lr, T beta1,
                                                     T beta2, T eps, T wd, bool decoupled, T step_size, T bc2_sqrt) {
  if (decoupled) {
    if (vmax) adam_kind_loop<T, true, true>(p, g, m, v, vmax, n, lr, beta1, beta2, eps, wd, step_size, bc2_sqrt);
    else adam_kind_loop<T, true, false>(p, g, m, v, vmax, n, lr, beta1, beta2, eps, wd, step_size, bc2_sqrt);
  } else {
    if (vmax) adam_kind_loop<T, false, true>(p, g, m, v, vmax, n, lr, beta1, beta2, eps, wd, step_size, bc2_sqrt);
    else adam_kind_loop<T, false, false>(p, g, m, v, vmax, n, lr, beta1, beta2, eps, wd, step_size, bc2_sqrt);
  }
}

// Each loop at two levels per type (Note [Two-level loops] in clones.hpp).
#define TG_UPDATE_LOOPS(T)                                                                                           \
  TG_AT_TWO_LEVELS(void, sgd_block,                                                                                  \
                   (T * p, const T* g, T* buf, std::int64_t n, T lr, T momentum, T dampening, T wd, bool nesterov,   \
                    bool first),                                                                                     \
                   (p, g, buf, n, lr, momentum, dampening, wd, nesterov, first),                                     \
                   { sgd_loop<T>(p, g, buf, n, lr, momentum, dampening, wd, nesterov, first); })                     \
  TG_AT_TWO_LEVELS(void, adam_block,                                                                                 \
                   (T * p, const T* g, T* m, T* v, T* vmax, std::int64_t n, T lr, T beta1, T beta2, T eps, T wd,     \
                    bool decoupled, T step_size, T bc2_sqrt),                                                        \
                   (p, g, m, v, vmax, n, lr, beta1, beta2, eps, wd, decoupled, step_size, bc2_sqrt),                 \
                   { adam_loop<T>(p, g, m, v, vmax, n, lr, beta1, beta2, eps, wd, decoupled, step_size, bc2_sqrt); })
TG_UPDATE_LOOPS(float)
TG_UPDATE_LOOPS(double)
#undef TG_UPDATE_LOOPS

}  // namespace

template <class T>
void sgd_update(std::span<const UpdateSegment<T>> segments, std::span<const UpdateBlock> blocks, const SgdStep& s) {
  const std::int64_t n = static_cast<std::int64_t>(blocks.size());
  parallel_for(n, threads_if(n >= 2), [&](std::int64_t i) {
    const UpdateBlock& b = blocks[static_cast<std::size_t>(i)];
    const UpdateSegment<T>& seg = segments[b.segment];
    sgd_block(seg.param + b.begin, seg.grad + b.begin, seg.state0 ? seg.state0 + b.begin : nullptr, b.end - b.begin,
                 T(s.lr), T(s.momentum), T(s.dampening), T(s.weight_decay), s.nesterov, s.first);
  });
}

template <class T>
void adam_update(std::span<const UpdateSegment<T>> segments, std::span<const UpdateBlock> blocks, const AdamStep& s) {
  const std::int64_t n = static_cast<std::int64_t>(blocks.size());
  const T step_size = T(s.lr / s.bias_correction1);
  parallel_for(n, threads_if(n >= 2), [&](std::int64_t i) {
    const UpdateBlock& b = blocks[static_cast<std::size_t>(i)];
    const UpdateSegment<T>& seg = segments[b.segment];
    adam_block(seg.param + b.begin, seg.grad + b.begin, seg.state0 + b.begin, seg.state1 + b.begin,
                  seg.state2 ? seg.state2 + b.begin : nullptr, b.end - b.begin, T(s.lr), T(s.beta1), T(s.beta2), T(s.eps),
                  T(s.weight_decay), s.decoupled, step_size, T(s.bias_correction2_sqrt));
  });
}

template <class T>
double sum_of_squares(const T* x, std::int64_t n) {
  constexpr std::int64_t kChunk = std::int64_t(1) << 15;
  const std::int64_t chunks = (n + kChunk - 1) / kChunk;
  double partial[64] = {};  // per chunk group: the result does not depend on the thread count
  const std::int64_t groups = std::min<std::int64_t>(64, chunks);
  parallel_for(groups, threads_if(groups >= 2), [&](std::int64_t gi) {
    double s = 0;
    for (std::int64_t c = gi; c < chunks; c += groups) {
      const std::int64_t end = std::min(n, (c + 1) * kChunk);
      for (std::int64_t i = c * kChunk; i < end; ++i) s += double(x[i]) * double(x[i]);
    }
    partial[gi] = s;
  });
  double total = 0;
  for (std::int64_t gi = 0; gi < groups; ++gi) total += partial[gi];
  return total;
}

template <class T>
void scale_in_place(T* x, std::int64_t n, T factor) {
  parallel_chunks(n, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) x[i] *= factor;
  });
}

#define TG_INSTANTIATE(T)                                                                                            \
  template std::vector<UpdateBlock> plan_update_blocks(std::span<const UpdateSegment<T>>);                           \
  template void sgd_update(std::span<const UpdateSegment<T>>, std::span<const UpdateBlock>, const SgdStep&);         \
  template void adam_update(std::span<const UpdateSegment<T>>, std::span<const UpdateBlock>, const AdamStep&);       \
  template double sum_of_squares(const T*, std::int64_t);                                                            \
  template void scale_in_place(T*, std::int64_t, T);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg::kernels
