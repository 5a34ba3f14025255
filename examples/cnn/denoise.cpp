// Removes Gaussian noise from Fashion-MNIST images with a small U-Net:
//
//   28x28: conv 1->16, conv 16->16 ----------------------------- skip --+
//   14x14: conv 16->32 stride 2, conv 32->32 ----------- skip --+        |
//    7x7:  conv 32->64 stride 2, conv 64->64                    |        |
//   14x14: upsample (bilinear) x2, conv 64->32, concat ---------+, conv 64->32
//   28x28: upsample (bilinear) x2, conv 32->16, concat ------------------+, conv 32->16
//   conv 1x1 16->1: the noise, subtracted from the input
//
// every conv 3x3 with bias and ReLU but the last. Pixels in [0, 1], noise of
// standard deviation --sigma (0.3), mean squared error, Adam. Reports the
// test set's PSNR before (noisy) and after (denoised), and writes a PNG grid
// of noisy / denoised / clean test images (libpng).
//
//   denoise [--epochs 2] [--batch 64] [--lr 2e-3] [--sigma 0.3] [--threads N] [--seed 1]
//           [--data DIR] [--quick] [--out DIR]
#include <unistd.h>

#include <png.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>

#include "fashion_mnist.hpp"
#include "run.hpp"

using cnn::A;

namespace {

template <class Arr>
struct Conv {
  Arr w, b;  // (out, in, k, k), (out)
};
template <class Arr>
struct Unet {
  Conv<Arr> enc1a, enc1b, down1, enc2, down2, mid, up2, dec2, up1, dec1, out;
};

Conv<A> conv_init(std::int64_t out, std::int64_t in, std::int64_t k, std::uint64_t seed) {
  return {tg::init::conv_weight<float>({out, in, k, k}, seed), tg::init::bias<float>(out, in * k * k, seed + 1)};
}

Unet<A> unet_init(std::uint64_t seed) {
  return {conv_init(16, 1, 3, seed),        conv_init(16, 16, 3, seed + 2),  conv_init(32, 16, 3, seed + 4),
          conv_init(32, 32, 3, seed + 6),   conv_init(64, 32, 3, seed + 8),  conv_init(64, 64, 3, seed + 10),
          conv_init(32, 64, 3, seed + 12),  conv_init(32, 64, 3, seed + 14), conv_init(16, 32, 3, seed + 16),
          conv_init(16, 32, 3, seed + 18),  conv_init(1, 16, 1, seed + 20)};
}

// conv (same padding) + bias, then ReLU unless `linear`.
template <class C, class X>
X layer(const C& c, const X& x, std::int64_t stride = 1, bool linear = false) {
  const std::int64_t k = c.w.shape()[2];
  X y = tg::conv(x, c.w, c.b, {.stride = {stride}, .padding = {k / 2}});
  return linear ? y : tg::relu(y);
}

template <class X>
X up2x(const X& x) {
  return tg::upsample(x, {.scale = {2}, .mode = tg::UpsampleMode::linear});
}

// The denoised images (n, 1, 28, 28) of noisy images x.
template <class P, class X>
X denoised(const P& p, const X& x) {
  const X e1 = layer(p.enc1b, layer(p.enc1a, x));                                   // (n, 16, 28, 28)
  const X e2 = layer(p.enc2, layer(p.down1, e1, 2));                                // (n, 32, 14, 14)
  const X m = layer(p.mid, layer(p.down2, e2, 2));                                  // (n, 64, 7, 7)
  const X d2 = layer(p.dec2, tg::concat(std::vector<X>{layer(p.up2, up2x(m)), e2}, 1));   // (n, 32, 14, 14)
  const X d1 = layer(p.dec1, tg::concat(std::vector<X>{layer(p.up1, up2x(d2)), e1}, 1));  // (n, 16, 28, 28)
  return x - layer(p.out, d1, 1, true);
}

constexpr auto denoise_loss = [](const auto& net, const auto& noisy, const auto& clean) { return tg::mse(denoised(net, noisy), clean); };

// Images order[begin, end) in [0, 1] (clean) and with noise added (noisy), the noise from (seed, index).
void gather(const cnn::Dataset& d, const std::vector<std::int64_t>& order, std::int64_t begin, std::int64_t end, float sigma,
            std::uint64_t seed, A& noisy, A& clean) {
  for (std::int64_t i = begin; i < end; ++i) {
    const std::int64_t s = order[static_cast<std::size_t>(i)];
    std::mt19937_64 rng(seed * 7919 + static_cast<std::uint64_t>(s));
    std::normal_distribution<float> noise(0.0f, sigma);
    for (std::int64_t k = 0; k < cnn::kPixels; ++k) {
      const float v = float(d.pixels[static_cast<std::size_t>(s * cnn::kPixels + k)]) / 255.0f;
      clean.data()[(i - begin) * cnn::kPixels + k] = v;
      noisy.data()[(i - begin) * cnn::kPixels + k] = v + noise(rng);
    }
  }
}

// Mean over images of 10 log10(1 / mse(a, b)): pixels in [0, 1].
double mean_psnr(const A& a, const A& b) {
  const std::int64_t n = a.shape()[0];
  double sum = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    double se = 0;
    for (std::int64_t k = 0; k < cnn::kPixels; ++k) {
      const double d = double(std::clamp(a.data()[i * cnn::kPixels + k], 0.0f, 1.0f)) - double(b.data()[i * cnn::kPixels + k]);
      se += d * d;
    }
    sum += 10 * std::log10(1.0 / std::max(1e-12, se / double(cnn::kPixels)));
  }
  return sum / double(n);
}

// Rows of `columns` images: noisy, denoised, clean (each (n, 1, 28, 28)), each
// pixel drawn 3 x 3, white gaps between.
void write_grid(const std::string& path, const A& noisy, const A& out, const A& clean, std::int64_t columns) {
  constexpr int kZoom = 3, kGap = 6, kSide = 28 * kZoom;
  const int width = int(columns) * (kSide + kGap) + kGap, height = 3 * (kSide + kGap) + kGap;
  std::vector<png_byte> pixels(static_cast<std::size_t>(width * height), 255);
  const A* rows[] = {&noisy, &out, &clean};
  for (int r = 0; r < 3; ++r)
    for (std::int64_t c = 0; c < columns; ++c)
      for (int y = 0; y < kSide; ++y)
        for (int x = 0; x < kSide; ++x) {
          const float v = std::clamp(rows[r]->data()[c * cnn::kPixels + (y / kZoom) * 28 + x / kZoom], 0.0f, 1.0f);
          pixels[static_cast<std::size_t>((kGap + r * (kSide + kGap) + y) * width + kGap + int(c) * (kSide + kGap) + x)] =
              static_cast<png_byte>(std::lround(v * 255));
        }
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(width);
  image.height = static_cast<png_uint_32>(height);
  image.format = PNG_FORMAT_GRAY;
  if (!png_image_write_to_file(&image, path.c_str(), 0, pixels.data(), width, nullptr))
    tg::fail("denoise", fmt::format("writing {} failed: {}", path, image.message));
}

}  // namespace

int main(int argc, char** argv) try {
  // --sigma is this example's own flag; the rest are run.hpp's.
  float sigma = 0.3f;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::string(argv[i]) == "--sigma" && i + 1 < argc) sigma = std::stof(argv[++i]);
    else args.push_back(argv[i]);
  }
  if (!(sigma > 0 && sigma < 2)) tg::fail("denoise", fmt::format("--sigma {} expected a number in (0, 2)", sigma));
  const cnn::Options o = cnn::parse(int(args.size()), args.data(), "denoise", {.epochs = 2, .batch = 64, .lr = 2e-3f, .optimizer = "adam"});
  if (o.threads > 0) tg::set_num_threads(o.threads);
  const cnn::Dataset train = cnn::load_fashion_mnist(o.data, "train"), test = cnn::load_fashion_mnist(o.data, "t10k");
  const std::int64_t n_train = o.quick ? std::min<std::int64_t>(3200, train.size()) : train.size();
  const std::int64_t n_test = o.quick ? std::min<std::int64_t>(500, test.size()) : test.size();
  const int epochs = o.quick && !o.epochs_given ? 1 : o.epochs;
  fmt::print("U-Net denoising of Fashion-MNIST (noise sigma {}): {} training and {} test images, {} epoch(s), batch {}, "
             "Adam lr {}, {} threads\n",
             sigma, n_train, n_test, epochs, o.batch, o.lr, tg::num_threads());

  Unet<A> net = unet_init(o.seed), grads;
  tg::optim::Adam opt(net, {.lr = o.lr});
  auto step = tg::jit(denoise_loss);
  const std::int64_t steps = (n_train + o.batch - 1) / o.batch;
  const bool terminal = isatty(fileno(stdout));
  double first_loss = 0, last_loss = 0;
  for (int epoch = 1; epoch <= epochs; ++epoch) {
    const auto order = cnn::shuffled(n_train, o.seed, epoch);
    const auto start = std::chrono::steady_clock::now();
    double running = 0, last_print = -1;
    for (std::int64_t s = 0; s < steps; ++s) {
      const std::int64_t begin = s * o.batch, b = std::min(o.batch, n_train - begin);
      A noisy = A::uninitialized({b, 1, 28, 28}), clean = A::uninitialized({b, 1, 28, 28});
      gather(train, order, begin, begin + b, sigma, o.seed + std::uint64_t(epoch), noisy, clean);
      const double l = step.value_and_gradient_into(grads, net, tg::data(noisy), tg::data(clean));
      opt.step(net, grads);
      running = s == 0 ? l : 0.95 * running + 0.05 * l;
      if (epoch == 1 && s == std::min<std::int64_t>(4, steps - 1)) first_loss = running;
      last_loss = running;
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const double rate = double(begin + b) / elapsed;
      const double eta = (double(n_train - begin - b) + double(epochs - epoch) * double(n_train)) / rate;
      if (terminal ? (elapsed - last_print > 0.25 || s + 1 == steps) : (s % std::max<std::int64_t>(1, steps / 10) == 0 || s + 1 == steps)) {
        last_print = elapsed;
        fmt::print("{}epoch {}/{}  batch {}/{}  loss {:.5f}  {:.0f} images/s  ETA {}{}", terminal ? "\r" : "", epoch, epochs, s + 1,
                   steps, running, rate, cnn::format_seconds(eta), terminal ? "   " : "\n");
        std::fflush(stdout);
      }
    }
    if (terminal) fmt::print("\n");
  }

  // The test set, denoised in chunks on plain Arrays.
  std::vector<std::int64_t> order(static_cast<std::size_t>(n_test));
  std::iota(order.begin(), order.end(), 0);
  A noisy = A::uninitialized({n_test, 1, 28, 28}), clean = A::uninitialized({n_test, 1, 28, 28}), out({n_test, 1, 28, 28});
  gather(test, order, 0, n_test, sigma, 999, noisy, clean);
  for (std::int64_t i = 0; i < n_test; i += 100) {
    const std::int64_t b = std::min<std::int64_t>(100, n_test - i);
    const A chunk = denoised(net, tg::slice(noisy, 0, i, i + b));
    std::copy(chunk.begin(), chunk.end(), out.data() + i * cnn::kPixels);
  }
  const double before = mean_psnr(noisy, clean), after = mean_psnr(out, clean);
  const std::string png = o.out + "/denoise_grid.png";
  write_grid(png, noisy, out, clean, std::min<std::int64_t>(10, n_test));
  fmt::print("test PSNR: noisy {:.2f} dB, denoised {:.2f} dB ({:+.2f} dB) over {} images; grid (noisy / denoised / clean): {}\n",
             before, after, after - before, n_test, png);
  if (o.quick) {  // the quick mode is a test: the loss falls and the network removes noise
    const bool ok = last_loss < 0.8 * first_loss && after > before + 1.5;
    fmt::print("quick check {}: loss {:.4f} -> {:.4f}, PSNR {:+.2f} dB\n", ok ? "passed" : "FAILED", first_loss, last_loss, after - before);
    return ok ? 0 : 1;
  }
  return 0;
} catch (const tg::Error& e) {
  fmt::print(stderr, "error: {}\n", e.what());
  return 2;
}
