// The filter's passes by rows (Note [Extended rows]) against the same passes
// on the extended image (border_pad, the direct correlation, border_pad_adjoint),
// kernel by kernel; and through correlate / convolve on images where the rows
// serve at every kernel level.
#include "support/checks.hpp"

using namespace tgtest;
using T = tg::Tracked<double>;
using tg::Border;
using tg::BorderMode;
using tg::FilterParams;
using tg::Output;
namespace k = tg::kernels;

namespace {

constexpr BorderMode kModes[] = {BorderMode::fill, BorderMode::replicate, BorderMode::reflect, BorderMode::symmetric,
                                 BorderMode::circular};

struct RowsCase {
  tg::Shape image, kernel;
  std::vector<std::int64_t> lo, hi;
};

// Image and kernel rows past a vector, narrower than the kernel and exactly as
// wide, kernel rows of 1 to 9 taps (the fused 2x2 and 3x3 kernel gradient,
// the per-tap loops past 7), every extension from none to the kernel less one,
// one and several bands of 64 rows.
const std::vector<RowsCase> kRowsCases = {
    {{1}, {3}, {1}, {1}},
    {{7}, {3}, {1}, {1}},
    {{40}, {5}, {2}, {2}},
    {{37}, {4}, {3}, {0}},
    {{20}, {9}, {4}, {4}},
    {{2, 3}, {3, 3}, {1, 1}, {1, 1}},
    {{3, 2}, {3, 3}, {1, 1}, {1, 1}},
    {{9, 37}, {3, 3}, {1, 1}, {1, 1}},
    {{9, 37}, {2, 2}, {1, 0}, {0, 1}},
    {{6, 30}, {5, 5}, {2, 2}, {2, 2}},
    {{5, 33}, {2, 4}, {1, 3}, {0, 0}},
    {{8, 40}, {3, 3}, {2, 0}, {0, 2}},
    {{4, 20}, {1, 3}, {0, 1}, {0, 1}},
    {{12, 18}, {3, 1}, {1, 0}, {1, 0}},
    {{5, 26}, {3, 9}, {1, 4}, {1, 4}},
    {{130, 40}, {3, 3}, {1, 1}, {1, 1}},
    {{70, 45}, {3, 3}, {2, 2}, {2, 2}},
};

template <class E>
using Arr = tg::Array<E>;

template <class E>
double max_diff(const Arr<E>& a, const Arr<E>& b) {
  REQUIRE(a.shape() == b.shape());
  double m = 0;
  for (std::int64_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(double(a.data()[i]) - double(b.data()[i])));
  return m;
}

// The three passes by rows against the extended image's, with a fill value of
// 0.5, accumulating and not, the fill value's adjoint with and without the image's.
template <class E>
void check_rows(const RowsCase& rc, BorderMode mode, bool flip, double tol) {
  tg::Shape padded;
  for (std::size_t d = 0; d < rc.image.rank(); ++d) padded.push_back(rc.image[d] + rc.lo[d] + rc.hi[d]);
  const k::Correlation c = k::correlation_geometry(padded, rc.kernel, flip, "test");
  const auto rows = k::border_rows(c, rc.image, rc.lo, mode);
  REQUIRE(rows.has_value());
  const E fill = E(0.5);
  const auto x = Arr<double>::random_uniform(rc.image, -1, 1, 1).cast<E>();
  const auto w = Arr<double>::random_uniform(rc.kernel, -1, 1, 2).cast<E>();
  const auto gy = Arr<double>::random_uniform(c.out, -1, 1, 3).cast<E>();
  const auto start = Arr<double>::random_uniform(c.out, -1, 1, 4).cast<E>();
  const auto gx_start = Arr<double>::random_uniform(rc.image, -1, 1, 5).cast<E>();
  auto xp = Arr<E>::zeros(padded);
  k::border_pad(x.data(), rc.image, rc.lo, rc.hi, mode, fill, xp.data());
  const auto direct = k::ConvAlgorithm::direct;

  auto y_ref = Arr<E>::zeros(c.out), y = start, y_acc = start;  // y: written over
  k::correlate_forward(c, direct, xp.data(), w.data(), y_ref.data(), false);
  k::rows_forward(*rows, x.data(), fill, w.data(), y.data(), false);
  k::rows_forward(*rows, x.data(), fill, w.data(), y_acc.data(), true);
  CHECK(max_diff(y, y_ref) <= tol);
  CHECK(max_diff(y_acc, Arr<E>(start + y_ref)) <= tol);

  auto gw_ref = Arr<E>::zeros(rc.kernel), gw = Arr<E>::ones(rc.kernel);  // rows_backward_weight adds
  k::correlate_backward_weight(c, direct, xp.data(), gy.data(), gw_ref.data());
  k::rows_backward_weight(*rows, x.data(), fill, gy.data(), gw.data());
  CHECK(max_diff(Arr<E>(gw - E(1)), gw_ref) <= tol * double(c.out.size()));

  auto gxp = Arr<E>::zeros(padded), gx_ref = Arr<E>::zeros(rc.image), gx = gx_start, gx_acc = gx_start;  // gx: written over
  E gfill_ref = 0, gfill = 0, gfill_alone = 0;
  k::correlate_backward_input(c, direct, gy.data(), w.data(), gxp.data(), false);
  k::border_pad_adjoint(gxp.data(), rc.image, rc.lo, rc.hi, mode, gx_ref.data(), &gfill_ref, false);
  k::rows_backward_input(*rows, gy.data(), w.data(), gx.data(), &gfill, false);
  k::rows_backward_input(*rows, gy.data(), w.data(), gx_acc.data(), static_cast<E*>(nullptr), true);
  k::rows_backward_input(*rows, gy.data(), w.data(), static_cast<E*>(nullptr), &gfill_alone, false);
  CHECK(max_diff(gx, gx_ref) <= tol);
  CHECK(max_diff(gx_acc, Arr<E>(gx_start + gx_ref)) <= tol);
  CHECK(std::abs(double(gfill) - double(gfill_ref)) <= tol * double(padded.size()));
  CHECK(double(gfill_alone) == double(gfill));
}

}  // namespace

TEST_CASE("correlate by rows: every border, extension and flip equals the passes on the extended image, double and float") {
  for (const auto& rc : kRowsCases)
    for (auto mode : kModes)
      for (bool flip : {false, true}) {
        CAPTURE(tg::to_string(rc.image));
        CAPTURE(tg::to_string(rc.kernel));
        CAPTURE(std::string(k::to_string(mode)));
        CAPTURE(flip);
        check_rows<double>(rc, mode, flip, 1e-12);
        check_rows<float>(rc, mode, flip, 1e-5);
      }
}

TEST_CASE("correlate by rows: one thread and two give the same bits") {
  const RowsCase rc{{130, 40}, {3, 3}, {1, 1}, {1, 1}};  // three bands of output rows
  const k::Correlation c = k::correlation_geometry(tg::Shape{132, 42}, rc.kernel, false, "test");
  const auto rows = k::border_rows(c, rc.image, rc.lo, BorderMode::reflect);
  REQUIRE(rows.has_value());
  const A x = A::random_uniform(rc.image, -1, 1, 1), w = A::random_uniform(rc.kernel, -1, 1, 2);
  const A gy = A::random_uniform(c.out, -1, 1, 3);
  auto run = [&](int threads) {
    tg::set_num_threads(threads);
    A y = A::zeros(c.out), gw = A::zeros(rc.kernel), gx = A::zeros(rc.image);
    k::rows_forward(*rows, x.data(), 0.0, w.data(), y.data(), false);
    k::rows_backward_weight(*rows, x.data(), 0.0, gy.data(), gw.data());
    k::rows_backward_input(*rows, gy.data(), w.data(), gx.data(), static_cast<double*>(nullptr), false);
    return std::tuple{y, gw, gx};
  };
  const int before = tg::max_threads();
  const auto [y1, gw1, gx1] = run(1);
  const auto [y2, gw2, gx2] = run(2);
  tg::set_num_threads(before);
  CHECK(max_abs_diff(y1, y2) == 0);
  CHECK(max_abs_diff(gw1, gw2) == 0);
  CHECK(max_abs_diff(gx1, gx2) == 0);
}

// 300x300: past the shifted copies' size, so the rows serve at every kernel
// level (the small images of test_filter.cpp take them below AVX-512 only).
TEST_CASE("correlate/convolve by rows: a realistic image equals pad + valid correlation, values and gradients") {
  const A x = A::random_uniform({300, 300}, -1, 1, 1), x2 = A::random_uniform({300, 300}, -1, 1, 2);
  const A kern = A::random_uniform({3, 5}, -1, 1, 3), kern2 = A::random_uniform({3, 5}, -1, 1, 4);
  for (auto mode : kModes)
    for (auto output : {Output::same, Output::full})
      for (bool convolve : {false, true}) {
        CAPTURE(std::string(k::to_string(mode)));
        CAPTURE(tg::to_string(output));
        CAPTURE(convolve);
        const FilterParams p{.border = {mode, 0.3}, .output = output};
        auto f = [&](const T& a, const T& b) { return convolve ? tg::convolve(a, b, p) : tg::correlate(a, b, p); };
        // The same filter composed: the extended image, then a valid correlation (the kernel reversed to convolve).
        // (odd kernel sizes: the same centre for both)
        const std::vector<std::int64_t> widths = output == Output::full ? std::vector<std::int64_t>{2, 4} : std::vector<std::int64_t>{1, 2};
        auto composed = [&](const T& a, const T& b) {
          const T extended = tg::pad(a, {.widths = widths, .border = {mode, 0.3}});
          return convolve ? tg::convolve(extended, b, {.output = Output::valid}) : tg::correlate(extended, b, {.output = Output::valid});
        };
        auto tape = tg::record(f, x, kern);
        CHECK(tape.tape().num_instructions() == 1);
        CHECK(tg::dump(tape).find("by_rows") != std::string::npos);
        const A gy = A::random_uniform(tape.output().shape(), -1, 1, 5);
        const auto [gx, gk] = tape.vjp(gy);
        const auto [gx_ref, gk_ref] = tg::record(composed, x, kern).vjp(gy);
        CHECK(max_abs_diff(tape.output(), tg::record(composed, x, kern).output()) < 1e-12);
        CHECK(max_abs_diff(gx, gx_ref) < 1e-12);
        CHECK(max_abs_diff(gk, gk_ref) < 1e-9);
        CHECK(max_abs_diff(tape.forward(x2, kern2), tg::record(composed, x2, kern2).output()) < 1e-12);
        check_dot_product(f, x, kern);
      }
  // A tracked fill value: its adjoint through the rows, against the composition's.
  auto with_fill = [](const T& a, const T& b, const T& v) { return tg::correlate(a, b, v, {}); };
  auto with_fill_composed = [](const T& a, const T& b, const T& v) {
    return tg::correlate(tg::pad(a, v, {.widths = {1, 2}}), b, {.output = Output::valid});
  };
  const A fill = A::scalar(0.3), gy = A::random_uniform({300, 300}, -1, 1, 6);
  const auto [gx, gk, gv] = tg::record(with_fill, x, kern, fill).vjp(gy);
  const auto [gx_ref, gk_ref, gv_ref] = tg::record(with_fill_composed, x, kern, fill).vjp(gy);
  CHECK(max_abs_diff(gx, gx_ref) < 1e-12);
  CHECK(max_abs_diff(gk, gk_ref) < 1e-9);
  CHECK(std::abs(gv.item() - gv_ref.item()) < 1e-9);
}

// Note [Rows or shifted copies]: at AVX-512 a filter whose image's copies
// hold at most 64 Ki elements runs by shifted copies, a larger one by rows;
// below AVX-512 every image by rows. A 3x3 kernel's copies of an n x n image
// ("same" output) hold 3 x (n + 2) x n elements: 59,640 at 140, 68,400 at 150.
TEST_CASE("correlate: rows or shifted copies by the copies' size and the kernel level") {
  auto by_rows = [](std::int64_t n) {
    const A x = A::random_uniform({n, n}, -1, 1, 1), kern = A::random_uniform({3, 3}, -1, 1, 2);
    const FilterParams p{.border = Border::replicate()};
    auto tape = tg::record([&](const T& a, const T& b) { return tg::correlate(a, b, p); }, x, kern);
    return tg::dump(tape).find("by_rows") != std::string::npos;
  };
  const bool avx512 = k::kernel_isa() >= k::Isa::avx512;
  CHECK(by_rows(32) == !avx512);
  CHECK(by_rows(140) == !avx512);
  CHECK(by_rows(150));
  CHECK(by_rows(300));
}
