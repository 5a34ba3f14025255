// Dropout, one instruction: each element (dropout) or each (n, c) plane
// (dropout2d, PyTorch's Dropout2d) is zeroed with probability p and the rest
// scaled by 1 / (1 - p).
//
//   template <class A> struct Net { A w1, w2; tg::State<A> key; };
//   Net<tg::Array<float>> net{..., tg::dropout_key<float>(/*seed=*/7)};
//   auto h = tg::dropout(tg::relu(tg::matmul(x, p.w1)), 0.5, p.key);
//
// The key is a tg::State leaf (Note [State leaves]) holding (seed, step):
// every forward run (the recording, each replay of a recorded or compiled
// program) draws its mask from (seed, step) and advances step by one, so a
// run is reproducible from the seed and no two steps share a mask; the key is
// saved by checkpoints, so a resumed run goes on with fresh masks. Steps
// count modulo 2^24 for float keys (2^53 for double): the values a float holds exactly.
// p = 0 and .training = false return x itself: nothing is recorded.
#pragma once

#include <source_location>

#include "tapegrad/autodiff/tracked.hpp"
#include "tapegrad/autodiff/tree.hpp"

namespace tg {

// A dropout key for `seed` (below 2^24), at step 0.
template <class T>
State<Array<T>> dropout_key(std::uint32_t seed) {
  return {Array<T>({2}, {static_cast<T>(seed & 0xFFFFFFu), T(0)})};
}

struct DropoutParams {
  bool training = true;  // false: the identity
  bool channels = false;  // drop whole (n, c) planes of x (N, C, spatial...): dropout2d
};

namespace ops {
template <class T>
Tracked<T> dropout_tracked(const Tracked<T>& x, double p, const Tracked<T>& key, const DropoutParams& params,
                           const std::source_location& where);
template <class T>
Array<T> dropout_eval(const Array<T>& x, double p, const Array<T>& key, const DropoutParams& params,
                      const std::source_location& where);
// Dropout's recorded pullback (Note [Dropout's recorded pullback]): the mask
// dropout(x, p, key) drew `back` steps before the key's value, applied to
// values (scaled by 1 / (1 - p)); the key is read, not advanced.
template <class T>
Tracked<T> dropout_mask_tracked(const Tracked<T>& values, double p, const Tracked<T>& key, std::int64_t back,
                                const DropoutParams& params = {}, const std::source_location& where = std::source_location::current());
}  // namespace ops

template <class T>
Tracked<T> dropout(const Tracked<T>& x, double p, const State<Tracked<T>>& key, const DropoutParams& params = {},
                   std::source_location where = std::source_location::current()) {
  return ops::dropout_tracked<T>(x, p, key.value, params, where);
}
template <class T>
Array<T> dropout(const Array<T>& x, double p, const State<Array<T>>& key, const DropoutParams& params = {},
                 std::source_location where = std::source_location::current()) {
  return ops::dropout_eval<T>(x, p, key.value, params, where);
}
template <class X, class K>
auto dropout2d(const X& x, double p, const K& key, DropoutParams params = {},
               std::source_location where = std::source_location::current()) {
  params.channels = true;
  return dropout(x, p, key, params, where);
}

}  // namespace tg
