// The second seed case: a multi-channel, multi-filter layer with its gradient.
//
//   A (32 x 32 x 128, channels last)  *  K (3 x 3 x 128 x 256)  ->  B (32 x 32 x 256)
//
// expressed through tg::conv with no user loops: permute to the (N, C, H, W)
// and (K, C, kh, kw) layouts conv uses, convolve with padding 1 ("same"), and
// permute back (double precision, so a finite difference can check it). The gradient of a loss of B flows back to A and K through the
// permutes and the one conv instruction.
#include <chrono>
#include <cmath>
#include <cstdio>

#include <tapegrad/tapegrad.hpp>

using A = tg::Array<double>;
using T = tg::Tracked<double>;

namespace {

// B = multi_filter(A, K) in the channels-last layout the seed case uses.
T multi_filter(const T& image, const T& kernels) {
  const T x = tg::reshape(tg::permute(image, {2, 0, 1}), {1, 128, 32, 32});  // (32,32,128) -> (1,128,32,32)
  const T w = tg::permute(kernels, {3, 2, 0, 1});                             // (3,3,128,256) -> (256,128,3,3)
  const T y = tg::conv(x, w, {.padding = {1}});                               // (1,256,32,32)
  return tg::permute(tg::reshape(y, {256, 32, 32}), {1, 2, 0});               // -> (32,32,256)
}

// One output element by the definition: B[i, j, f] = sum_{a, b, c} A[i+a-1, j+b-1, c] K[a, b, c, f].
double by_definition(const A& a, const A& k, std::int64_t i, std::int64_t j, std::int64_t f) {
  double acc = 0;
  for (std::int64_t di = 0; di < 3; ++di)
    for (std::int64_t dj = 0; dj < 3; ++dj)
      for (std::int64_t c = 0; c < 128; ++c) {
        const std::int64_t y = i + di - 1, x = j + dj - 1;
        if (y >= 0 && y < 32 && x >= 0 && x < 32) acc += a(y, x, c) * k(di, dj, c, f);
      }
  return acc;
}

}  // namespace

int main() {
  const A image = A::random_uniform({32, 32, 128}, -1, 1, 1);
  const A kernels = A::random_normal({3, 3, 128, 256}, 0, 0.05, 2);

  // loss = mean(B^2) / 2; its gradient with respect to the image and the filters
  auto loss = [](const T& a, const T& k) {
    const T b = multi_filter(a, k);
    return tg::mean(b * b) * 0.5;
  };
  auto tape = tg::record(loss, image, kernels);
  const auto t0 = std::chrono::steady_clock::now();
  auto [g_image, g_kernels] = tape.gradient(image, kernels);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();

  const A b = tg::permute(tg::reshape(tg::conv(tg::reshape(tg::permute(image, {2, 0, 1}), {1, 128, 32, 32}),
                                               tg::permute(kernels, {3, 2, 0, 1}), {.padding = {1}}),
                                      {256, 32, 32}),
                          {1, 2, 0});
  double err = 0;
  for (auto [i, j, f] : {std::array<std::int64_t, 3>{0, 0, 0}, {31, 31, 255}, {5, 17, 100}, {0, 31, 7}})
    err = std::max(err, std::abs(b(i, j, f) - by_definition(image, kernels, i, j, f)));
  fmt::print("B has shape {}; four elements agree with the definition to {:.1e}\n", tg::to_string(b.shape()), err);
  fmt::print("dL/dA has shape {}, dL/dK has shape {}; replayed forward + gradient in {:.1f} ms\n",
             tg::to_string(g_image.shape()), tg::to_string(g_kernels.shape()), ms);

  // A finite-difference spot check of one filter weight.
  A k2 = kernels;
  const double h = 1e-4;
  k2(1, 1, 3, 7) += h;
  const double up = tape.forward(image, k2).item();
  k2(1, 1, 3, 7) -= 2 * h;
  const double down = tape.forward(image, k2).item();
  const double fd = (up - down) / (2 * h);
  fmt::print("dL/dK[1,1,3,7]: tape {:.6e}, central difference {:.6e}\n", g_kernels(1, 1, 3, 7), fd);
  fmt::print("\n{}", tg::dump(tape));
  const bool ok = err < 1e-9 && std::abs(fd - g_kernels(1, 1, 3, 7)) < 1e-6 * std::abs(fd);
  return ok ? 0 : 1;
}
