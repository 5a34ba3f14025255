// The seed's small example: learn a 3x3 blur kernel by gradient descent
// through correlate with a replicate border, and compare the recovered kernel
// with the true one.
//
// A batch of images (a leading batch axis, filtered by a kernel of size 1
// along it) is blurred by the true kernel; starting from a random kernel,
// gradient descent on mse(correlate(images, k), blurred) recovers it. The tape
// is recorded once and replayed every step.
#include <cmath>
#include <cstdio>

#include <tapegrad/tapegrad.hpp>

using A = tg::Array<double>;
using T = tg::Tracked<double>;

int main() {
  const A truth({1, 3, 3}, {1 / 16.0, 2 / 16.0, 1 / 16.0, 2 / 16.0, 4 / 16.0, 2 / 16.0, 1 / 16.0, 2 / 16.0, 1 / 16.0});
  const tg::FilterParams replicate{.border = tg::Border::replicate()};
  const A images = A::random_uniform({8, 48, 48}, 0.0, 1.0, 1);  // 8 images, batch axis first
  const A blurred = tg::correlate(images, truth, replicate);

  auto loss = [&](const T& k, const T& x, const T& target) { return tg::mse(tg::correlate(x, k, replicate), target); };
  A k = A::random_uniform({1, 3, 3}, 0.0, 0.2, 2);
  auto tape = tg::record(loss, k, tg::data(images), tg::data(blurred));
  const double lr = 0.3;  // below 2 / (largest curvature of the loss), about 0.4 for these images
  for (int step = 0; step <= 400; ++step) {
    const A g = tape.gradient(k, tg::data(images), tg::data(blurred));
    if (step % 80 == 0) fmt::print("step {:3}  loss {:.3e}\n", step, tape.value());
    for (std::int64_t i = 0; i < k.size(); ++i) k.data()[i] -= lr * g.data()[i];
  }
  double err = 0;
  for (std::int64_t i = 0; i < 9; ++i) err = std::max(err, std::abs(k.data()[i] - truth.data()[i]));
  fmt::print("\nrecovered kernel            true kernel\n");
  for (int r = 0; r < 3; ++r)
    fmt::print("{:7.4f} {:7.4f} {:7.4f}     {:7.4f} {:7.4f} {:7.4f}\n", k(0, r, 0), k(0, r, 1), k(0, r, 2), truth(0, r, 0),
               truth(0, r, 1), truth(0, r, 2));
  fmt::print("largest difference {:.1e}\n", err);
  return err < 1e-3 ? 0 : 1;
}
