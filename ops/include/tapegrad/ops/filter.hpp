// Image filtering: correlate and convolve on arrays of any rank, one instruction each.
//
//   tg::correlate(img, kernel, {.border = tg::Border::replicate()})      same-size output
//   tg::convolve(img, kernel, {.output = tg::Output::full})
//   tg::correlate(img, kernel, fill, {})          fill: a tracked one-element value, border fill
//   tg::correlate(img, {gx, gy}, params)          separable: one 1-D factor per dim, one pass each
//
// The kernel has the image's rank. Semantics are SciPy's:
//  * output same: correlate/convolve equal scipy.ndimage.correlate/convolve,
//    the kernel centred at k//2 (shifted by `origin`, SciPy's parameter of
//    that name), with border fill(v) / replicate / reflect / symmetric /
//    circular = ndimage mode constant(cval=v) / nearest / mirror / reflect / wrap;
//  * output valid and full: equal scipy.signal.correlate/convolve with that
//    mode (zero fill; another border extends the image by its rule instead).
// convolve(x, k) is a true convolution: y[i] = sum_t k[t] x[i - t + k//2 + origin].
//
// Multi-channel images: give the kernel size 1 along the channel axis (leading
// or trailing) and each channel is filtered on its own. For CNN layers with
// many filters use tg::conv (see examples/multi_filter.cpp).
//
// Separable filters run one pass per dim, each its own instruction, so their
// gradients come back per factor. With a border other than fill(0) that is
// SciPy's separable semantics (each pass extends its own input, as
// ndimage.gaussian_filter does).
//
// Gradients flow to the image, the kernel and a tracked fill value; the border's
// pullback folds the adjoint of every extended pixel back onto the pixel it copied.
#pragma once

#include <source_location>
#include <span>
#include <initializer_list>
#include <vector>

#include "tapegrad/autodiff/tracked.hpp"
#include "tapegrad/kernels/conv.hpp"
#include "tapegrad/kernels/filter.hpp"

namespace tg {

using kernels::BorderMode;
using kernels::ConvAlgorithm;

struct Border {
  BorderMode mode = BorderMode::fill;
  double value = 0;  // the fill value, for mode fill
  static Border fill(double v = 0) { return {BorderMode::fill, v}; }
  static Border replicate() { return {BorderMode::replicate, 0}; }
  static Border reflect() { return {BorderMode::reflect, 0}; }
  static Border symmetric() { return {BorderMode::symmetric, 0}; }
  static Border circular() { return {BorderMode::circular, 0}; }
};

enum class Output { same, valid, full };
const char* to_string(Output o);

struct FilterParams {
  Border border = Border::fill(0);
  Output output = Output::same;
  DimList origin{};  // output same only: one per dim or one for all; default 0 (centred)
  ConvAlgorithm algorithm = ConvAlgorithm::automatic;  // every pass (direct or fft suit single-channel filtering)
};

namespace ops {
// axis < 0: the kernel has the image's rank; axis >= 0: a 1-D kernel applied along that axis.
template <class T>
Tracked<T> filter_tracked(std::span<const Operand<T>> operands, const FilterParams& p, bool convolve, std::int64_t axis,
                          const std::source_location& where);
template <class T>
Array<T> filter_eval(std::span<const Array<T>* const> inputs, const FilterParams& p, bool convolve, std::int64_t axis,
                     const std::source_location& where);
void check_separable(std::size_t factors, const Shape& image, const std::source_location& where);
// The two halves of the filter's pullback, recorded (Note [The filter's
// gradient ops] in ops/src/filter.cpp): d<gy, filter(x, k)>/dx for x of shape
// `image`, with inputs (gy, k), and d<gy, filter(x, k)>/dk for k of shape
// `kernel`, with inputs (x, gy).
template <class T>
Tracked<T> filter_image_grad_tracked(const Operand<T>& gy, const Operand<T>& k, const FilterParams& p, bool convolve,
                                     std::int64_t axis, const Shape& image, const std::source_location& where);
template <class T>
Tracked<T> filter_kernel_grad_tracked(const Operand<T>& x, const Operand<T>& gy, const FilterParams& p, bool convolve,
                                      std::int64_t axis, const Shape& kernel, const std::source_location& where);

template <class X, class K>
auto separable(const X& img, const std::vector<K>& factors, const FilterParams& p, bool convolve,
               const std::source_location& where) {
  using T = element_t<X>;
  constexpr bool tracked = is_tracked_v<X> || is_tracked_v<K>;
  check_separable(factors.size(), img.shape(), where);
  auto pass = [&](const auto& current, std::size_t d) {
    if constexpr (tracked) {
      const Operand<T> operands[] = {Operand<T>(current, where), Operand<T>(factors[d], where)};
      return filter_tracked<T>(operands, p, convolve, static_cast<std::int64_t>(d), where);
    } else {
      const Array<T>* in[] = {&current, &factors[d]};
      return filter_eval<T>(in, p, convolve, static_cast<std::int64_t>(d), where);
    }
  };
  auto out = pass(img, 0);
  for (std::size_t d = 1; d < factors.size(); ++d) out = pass(out, d);
  return out;
}
}  // namespace ops

// The factors of a separable kernel, as DESIGN.md spells it:
//   tg::correlate(img, tg::separable({k1, k2}), params)
// (the same as passing std::vector{k1, k2}).
template <class K>
std::vector<K> separable(std::initializer_list<K> factors) {
  return std::vector<K>(factors);
}

#define TG_FILTER_FAMILY(name, flip)                                                                                \
  template <class X, class K>                                                                                       \
    requires RecordsOnTape<X, K>                                                                                    \
  Tracked<element_t<X>> name(const X& img, const K& kernel, const FilterParams& p = {},                             \
                             std::source_location where = std::source_location::current()) {                        \
    using T = element_t<X>;                                                                                         \
    const Operand<T> ops[] = {Operand<T>(img, where), Operand<T>(kernel, where)};                                   \
    return ops::filter_tracked<T>(ops, p, flip, -1, where);                                                         \
  }                                                                                                                 \
  template <class X, class K, class F>                                                                              \
    requires RecordsOnTape<X, K, F>                                                                                 \
  Tracked<element_t<X>> name(const X& img, const K& kernel, const F& fill, const FilterParams& p = {},               \
                             std::source_location where = std::source_location::current()) {                        \
    using T = element_t<X>;                                                                                         \
    const Operand<T> ops[] = {Operand<T>(img, where), Operand<T>(kernel, where), Operand<T>(fill, where)};          \
    return ops::filter_tracked<T>(ops, p, flip, -1, where);                                                         \
  }                                                                                                                 \
  template <class T>                                                                                                \
  Array<T> name(const Array<T>& img, const Array<T>& kernel, const FilterParams& p = {},                            \
                std::source_location where = std::source_location::current()) {                                     \
    const Array<T>* in[] = {&img, &kernel};                                                                         \
    return ops::filter_eval<T>(in, p, flip, -1, where);                                                             \
  }                                                                                                                 \
  /* Separable: factors[d] (1-D) filters along dim d, one pass (instruction) per dim. */                         \
  template <class X, class K>                                                                                       \
  auto name(const X& img, const std::vector<K>& factors, const FilterParams& p = {},                                \
            std::source_location where = std::source_location::current()) {                                         \
    return ops::separable(img, factors, p, flip, where);                                                            \
  }
TG_FILTER_FAMILY(correlate, false)
TG_FILTER_FAMILY(convolve, true)
#undef TG_FILTER_FAMILY

}  // namespace tg
