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

#include <array>
#include <cstdint>
#include <optional>
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

// Note [Extended rows]: a 1-D or 2-D filter whose three passes run the direct
// loops reads its extended image row by row, and writes no extended copy. An
// output row's kernel rows are the image rows the border's row map names (a
// row of fill values for a fill row), each zero-padded along the row by the
// border's columns; what the border's columns add, at the few outputs near
// the row's ends, is added at once, while the row is in L1. The image gradient
// writes each image row's adjoint in place, and adds its border columns' and
// the border rows' adjoints onto the pixels they copy. The seed case's copy
// and fold took 0.12 of 0.79 ms, and kept two extended images for the pullback.
// Rejected: extending each row into a line first (the kernel gradient's copies
// cost 0.03 ms more than reading the extended image), and correcting the whole
// frame after a zero-padded conv (any algorithm would serve, but the left and
// right edges then touch every row again, at a cache miss each: 0.04 ms a pass).
struct BorderRows {
  ConvGeometry row;  // one image row zero-padded by the border's columns, correlated with one kernel row (1-D)
  std::int64_t rows = 1, cols = 1;  // the image (one row for 1-D)
  std::int64_t krows = 1;           // kernel rows (kernel columns: row.ker[2])
  std::int64_t top = 0;             // the extension above the image (left of it: row.lo[2])
  std::int64_t ext_rows = 1, ext_cols = 1;
  BorderMode mode = BorderMode::fill;
  bool flip = false;
  std::int64_t out_rows() const { return ext_rows - krows + 1; }
  std::int64_t out_cols() const { return row.out[2]; }
};
// The row passes for a correlation of rank 1 or 2 whose image is extended by
// lo (and by the rest of c.padded after it) with at most the kernel's size
// less one on each side; nullopt for any other.
std::optional<BorderRows> border_rows(const Correlation& c, const Shape& image, std::span<const std::int64_t> lo,
                                      BorderMode mode);
// Whether the row passes serve a correlation whose passes run these
// algorithms: every one direct, and not the shifted copies' loops.
bool rows_serve(const Correlation& c, const std::array<ConvAlgorithm, 3>& algorithms);

// y (+= with accumulate) = the correlation of x extended by the border (fill: `fill`) with w.
template <class T>
void rows_forward(const BorderRows& b, const T* x, T fill, const T* w, T* y, bool accumulate);
// gx (+= with accumulate; may be null) = the image's adjoint of gy, folded back
// through the border; the fill value's adjoint added to *gfill (when not null).
template <class T>
void rows_backward_input(const BorderRows& b, const T* gy, const T* w, T* gx, T* gfill, bool accumulate);
// gw += the kernel's adjoint of gy, for x extended by the border (fill: `fill`).
template <class T>
void rows_backward_weight(const BorderRows& b, const T* x, T fill, const T* gy, T* gw);

}  // namespace tg::kernels
