// Image-filtering kernels on arrays of any rank: border extension (and its
// adjoint) and the valid correlation of an array with a kernel of the same rank.
//
// Border modes, by the pixel a padded position copies (a b c d is the image):
//   fill       v v | a b c d | v v    (SciPy ndimage 'constant')
//   replicate  a a | a b c d | d d    ('nearest')
//   reflect    c b | a b c d | c b    ('mirror': the edge pixel is not repeated)
//   symmetric  b a | a b c d | d c    ('reflect': the edge pixel is repeated)
//   circular   c d | a b c d | a b    ('wrap')
// Pads wider than the image keep extending by the same rule (reflect and
// symmetric are periodic with periods 2(n-1) and 2n).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "tapegrad/kernels/conv.hpp"
#include "tapegrad/kernels/shape.hpp"

namespace tg::kernels {

enum class BorderMode { fill, replicate, reflect, symmetric, circular };
const char* to_string(BorderMode m);

// The image index a padded position copies, for position j relative to the
// image start (may be negative or >= n); -1 for a fill value.
std::int64_t border_source(BorderMode mode, std::int64_t j, std::int64_t n);

// out (x's shape widened by lo + hi per dim) = x extended by the border rule.
template <class T>
void border_pad(const T* x, const Shape& shape, std::span<const std::int64_t> lo, std::span<const std::int64_t> hi,
                BorderMode mode, T fill, T* out);

// The adjoint of border_pad: every padded position's adjoint is added onto the
// pixel it copied (gx, when not null) or onto the fill value (gfill, when not
// null). Without `accumulate` gx is written (its old values unread).
template <class T>
void border_pad_adjoint(const T* gpadded, const Shape& shape, std::span<const std::int64_t> lo,
                        std::span<const std::int64_t> hi, BorderMode mode, T* gx, T* gfill, bool accumulate);

// Valid correlation of xp with w (same rank, any rank >= 1; w no larger than xp
// in any dim): y[o] = sum_t xp[o + t] w[t] (with flip: w reversed in every dim).
// Rank 1-3 run the convolution kernels (so every conv algorithm applies); higher
// ranks reduce to rank 3 by looping over the leading dims.
struct Correlation {
  Shape padded, kernel, out;
  bool flip = false;
  ConvGeometry inner;  // the rank <= 3 problem the leading dims reduce to
};
Correlation correlation_geometry(const Shape& padded, const Shape& kernel, bool flip, const char* op);

// y = xp (*) w  (y += with accumulate)
template <class T>
void correlate_forward(const Correlation& c, ConvAlgorithm a, const T* xp, const T* w, T* y, bool accumulate);
// gxp = the adjoint with respect to xp of gy (gxp += with accumulate)
template <class T>
void correlate_backward_input(const Correlation& c, ConvAlgorithm a, const T* gy, const T* w, T* gxp, bool accumulate);
// gw += adjoint with respect to w of gy
template <class T>
void correlate_backward_weight(const Correlation& c, ConvAlgorithm a, const T* xp, const T* gy, T* gw);

}  // namespace tg::kernels
