// Recover a blur kernel and a sharp image at once with Newton-CG on
// Hessian-vector products (tg::hvp), against the first-order gradient descent
// of learn_blur, on the same problem and to the same error.
//
// The seed problem (correlate with a replicate border, a 3x3 kernel) made
// joint: the kernel k and a sharp image x are unknown; known are a
// calibration pair (a sharp chart s and its blurred copy c) and the blurred
// image b. The loss
//   L(x, k) = 0.5 |correlate(s, k) - c|^2 + 0.5 |correlate(x, k) - b|^2
// is bilinear in (x, k) and zero at the truth. The kernel passes the highest
// frequencies only weakly (its spectrum falls to about 0.02), so the image's
// part of the Hessian has a condition number in the thousands: gradient
// descent crawls along those frequencies, while conjugate gradients on the
// Hessian resolves them in a few dozen products per Newton step.
//
//   deblur_newton [--size N] [--max-seconds S] [--quick]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>

#include <tapegrad/tapegrad.hpp>

namespace {

using A = tg::Array<double>;

// The unknowns, as a parameter tree.
template <class X>
struct Deblur {
  X image, kernel;
};
using Point = Deblur<A>;

double dot(const Point& a, const Point& b) {
  return tg::sum(a.image * b.image).item() + tg::sum(a.kernel * b.kernel).item();
}
// a + t * d
Point step(const Point& a, double t, const Point& d) { return {a.image + d.image * t, a.kernel + d.kernel * t}; }

struct Errors {
  double kernel;  // largest difference to the true kernel
  double image;   // |x - truth| / |truth|
  bool below(double tol) const { return kernel <= tol && image <= tol; }
};

struct Report {
  const char* method;
  int iterations = 0, gradients = 0, hvps = 0;
  double seconds = 0;
  Errors errors{};
  bool reached = false;
};

using Clock = std::chrono::steady_clock;
double since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// Newton-CG: each step solves H d = -g by conjugate gradients on hvp products,
// truncated once the residual is below eta |g| (eta = min(0.5, sqrt |g|): a
// superlinear rate near the solution) or at a direction of negative curvature,
// then backtracks until the loss falls enough (Armijo).
template <class Loss, class Error>
Report newton_cg(Loss loss, Point p, Error error, double tol, double max_seconds) {
  Report r{"Newton-CG on tg::hvp"};
  const auto start = Clock::now();
  while (since(start) < max_seconds) {
    r.errors = error(p);
    if ((r.reached = r.errors.below(tol))) break;
    const auto [value, g] = tg::value_and_gradient(loss, p);
    ++r.gradients;
    const double g_norm = std::sqrt(dot(g, g)), eta = std::min(0.5, std::sqrt(g_norm));
    Point d{A::zeros(p.image.shape()), A::zeros(p.kernel.shape())};
    Point residual = step(d, -1.0, g), z = residual;  // residual = -g - H d
    double rr = dot(residual, residual);
    for (int j = 0; j < 500; ++j) {
      const Point hz = tg::hvp(loss, p, z);
      ++r.hvps;
      const double curvature = dot(z, hz);
      if (curvature <= 0) {  // negative curvature: the steepest descent direction on the first product
        if (j == 0) d = step(d, -1.0, g);
        break;
      }
      const double alpha = rr / curvature;
      d = step(d, alpha, z);
      residual = step(residual, -alpha, hz);
      const double rr_next = dot(residual, residual);
      if (std::sqrt(rr_next) <= eta * g_norm) break;
      z = step(residual, rr_next / rr, z);
      rr = rr_next;
    }
    const double slope = dot(g, d), current = value;
    double t = 1;
    while (t > 1e-10 && loss(step(p, t, d)).item() > current + 1e-4 * t * slope) t /= 2;
    p = step(p, t, d);
    ++r.iterations;
  }
  r.seconds = since(start);
  return r;
}

// learn_blur's method, with a step per leaf: the image and the kernel differ
// in curvature by a factor of thousands (the kernel's second derivatives sum
// over every pixel), so one step size would be the kernel's and freeze the
// image. Each leaf steps 1 / (its block of the Hessian's largest eigenvalue at
// the start, by power iteration on hvp); both are halved whenever the loss
// would rise.
template <class Loss>
double largest_curvature(Loss loss, const Point& p, bool image, Report& r) {
  auto restrict_to = [&](Point v) {
    (image ? v.kernel : v.image) = A::zeros((image ? p.kernel : p.image).shape());
    return v;
  };
  Point v = restrict_to({A::random_uniform(p.image.shape(), -1, 1, 5), A::random_uniform(p.kernel.shape(), -1, 1, 6)});
  double largest = 0;
  for (int i = 0; i < 30; ++i) {
    const Point hv = restrict_to(tg::hvp(loss, p, v));
    ++r.hvps;
    largest = std::sqrt(dot(hv, hv) / dot(v, v));
    v = hv;
  }
  return largest;
}

template <class Loss, class Error>
Report gradient_descent(Loss loss, Point p, Error error, double tol, double max_seconds) {
  Report r{"gradient descent"};
  const auto start = Clock::now();
  double image_lr = 1 / largest_curvature(loss, p, true, r), kernel_lr = 1 / largest_curvature(loss, p, false, r);
  while (since(start) < max_seconds) {
    if (r.iterations % 50 == 0) {
      r.errors = error(p);
      if ((r.reached = r.errors.below(tol))) break;
    }
    const auto value_and_g = tg::value_and_gradient(loss, p);  // no structured binding: a lambda reads g
    const double value = std::get<0>(value_and_g);
    const Point& g = std::get<1>(value_and_g);
    ++r.gradients;
    auto descend = [&] { return Point{p.image - g.image * image_lr, p.kernel - g.kernel * kernel_lr}; };
    Point next = descend();
    while (loss(next).item() > value) {
      image_lr /= 2;
      kernel_lr /= 2;
      next = descend();
    }
    p = next;
    ++r.iterations;
  }
  r.errors = error(p);
  r.reached = r.errors.below(tol);
  r.seconds = since(start);
  return r;
}

void print(const Report& r) {
  fmt::print("{:<22} {:>10} {:>9} {:>6} {:>9.3f} s {:>12.1e} {:>12.1e}  {}\n", r.method, r.iterations, r.gradients, r.hvps,
             r.seconds, r.errors.kernel, r.errors.image, r.reached ? "reached" : "not reached in the time allowed");
}

}  // namespace

int main(int argc, char** argv) try {
  std::int64_t size = 64;
  double max_seconds = 60;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--size" && i + 1 < argc) size = std::stoll(argv[++i]);
    else if (a == "--max-seconds" && i + 1 < argc) max_seconds = std::stod(argv[++i]);
    else if (a == "--quick") size = 24, max_seconds = 10;
    else {
      fmt::print(stderr, "error: deblur_newton: unknown flag {} expected --size N --max-seconds S --quick\n", a);
      return 2;
    }
  }
  // The true kernel: the outer product of two lopsided 3-tap blurs (its spectrum never reaches 0).
  const A rows({3, 1}, {0.15, 0.6, 0.25}), cols({1, 3}, {0.25, 0.55, 0.2});
  const A truth_kernel = tg::matmul(rows, cols);
  const A truth_image = A::random_uniform({size, size}, 0, 1, 1);
  const A chart = A::random_uniform({size, size}, 0, 1, 2);
  const tg::FilterParams replicate{.border = tg::Border::replicate()};
  const A chart_blurred = tg::correlate(chart, truth_kernel, replicate);
  const A blurred = tg::correlate(truth_image, truth_kernel, replicate);

  // One function for both uses: on Arrays it evaluates (the line searches), on
  // the Tracked form tg::value_and_gradient and tg::hvp differentiate it.
  auto loss = [&](const auto& p) {
    const auto chart_misfit = tg::correlate(chart, p.kernel, replicate) - chart_blurred;
    const auto image_misfit = tg::correlate(p.image, p.kernel, replicate) - blurred;
    return (tg::sum(chart_misfit * chart_misfit) + tg::sum(image_misfit * image_misfit)) * 0.5;
  };
  auto error = [&](const Point& p) {
    const double image = std::sqrt(tg::sum(tg::pow(p.image - truth_image, 2.0)).item() / tg::sum(truth_image * truth_image).item());
    return Errors{tg::max(tg::abs(p.kernel - truth_kernel)).item(), image};
  };
  // Start from the blurred image itself and a box kernel.
  const Point start{blurred, A::full({3, 3}, 1.0 / 9)};
  const double tol = 1e-6;
  fmt::print("{}x{} image and a 3x3 kernel, replicate border, double, {} threads; target: kernel and relative image "
             "error <= {:.0e}\n",
             size, size, tg::num_threads(), tol);
  fmt::print("start: kernel error {:.1e}, image error {:.1e}\n\n", error(start).kernel, error(start).image);
  fmt::print("{:<22} {:>10} {:>9} {:>6} {:>11} {:>12} {:>12}\n", "method", "iterations", "gradients", "hvps", "time",
             "kernel err", "image err");
  const Report newton = newton_cg(loss, start, error, tol, max_seconds);
  print(newton);
  const Report descent = gradient_descent(loss, start, error, tol, max_seconds);
  print(descent);
  if (descent.reached)
    fmt::print("\nNewton-CG reached the target in {:.1f}x less time ({} Newton steps against {} gradient steps)\n",
               descent.seconds / newton.seconds, newton.iterations, descent.iterations);
  else
    fmt::print("\nNewton-CG reached the target in {:.3f} s; gradient descent had not after {} steps and {:.1f} s\n",
               newton.seconds, descent.iterations, descent.seconds);
  return newton.reached ? 0 : 1;
} catch (const tg::Error& e) {
  fmt::print(stderr, "error: {}\n", e.what());
  return 2;
}
