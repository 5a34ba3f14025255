// Second order against LibTorch's double backward (issue 21): the same
// functions, values and directions in double precision, differentiated twice
// by tapegrad's recorded pullbacks and by torch.autograd.grad with
// create_graph=True. Prints the largest difference relative to the scale of
// LibTorch's answer for each case and fails above 1e-10.
//
//   1. a gradient penalty: d/d(net, x) of loss + 0.1 |d loss / dx|^2, loss a
//      conv (bias, padding) -> maxpool -> silu -> linear -> cross-entropy;
//   2. a Hessian-vector product of the same loss in the parameters;
//   3. the seed case's Hessian-vector product: 0.5 |correlate(x, k) - b|^2
//      with a replicate border, in the image and the kernel;
//   4. a gradient penalty through bilinear upsampling, a reflect pad, a
//      mean-pool, exact gelu, an lp-pool, an adaptive max-pool and a max
//      reduction (linear_adjoint, erf, the adaptive max routes).
//
//   check_second_order_torch   (built with the benchmarks when LibTorch is installed)
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <tapegrad/tapegrad.hpp>
#include <torch/torch.h>

namespace {

using A = tg::Array<double>;
namespace F = torch::nn::functional;

template <class X>
struct Net {
  X w, b, fc;
};

torch::Tensor to_torch(const A& a) {
  const auto dims = a.shape().dims();
  return torch::from_blob(const_cast<double*>(a.data()), std::vector<std::int64_t>(dims.begin(), dims.end()),
                          torch::kFloat64)
      .clone();
}

// max |ours - theirs| / max(1e-30, max |theirs|)
double relative_difference(const A& ours, const torch::Tensor& theirs) {
  const torch::Tensor t = theirs.detach().contiguous();
  if (t.numel() != ours.size()) return INFINITY;
  const double* p = t.data_ptr<double>();
  double diff = 0, scale = 1e-30;
  for (std::int64_t i = 0; i < ours.size(); ++i) {
    diff = std::max(diff, std::abs(ours.data()[i] - p[i]));
    scale = std::max(scale, std::abs(p[i]));
  }
  return diff / scale;
}

constexpr std::int64_t kBatch = 4, kClasses = 5;
const std::vector<std::int64_t> kLabels{0, 3, 1, 4};

template <class N, class X>
auto ours_loss(const N& net, const X& x) {
  const auto h = tg::silu(tg::maxpool(tg::conv(x, net.w, net.b, {.padding = {1}}), {.window = {2}}));
  return tg::cross_entropy(tg::matmul(tg::reshape(h, {kBatch, -1}), net.fc), kLabels);
}

torch::Tensor torch_loss(const std::vector<torch::Tensor>& net, const torch::Tensor& x) {
  auto h = F::silu(F::max_pool2d(F::conv2d(x, net[0], F::Conv2dFuncOptions().bias(net[1]).padding(1)), F::MaxPool2dFuncOptions(2)));
  return F::cross_entropy(torch::matmul(h.reshape({kBatch, -1}), net[2]), torch::tensor(kLabels, torch::kLong));
}

std::vector<torch::Tensor> leaves(const Net<A>& net) {
  return {to_torch(net.w).requires_grad_(true), to_torch(net.b).requires_grad_(true), to_torch(net.fc).requires_grad_(true)};
}

double gradient_penalty(const Net<A>& net, const A& x) {
  auto penalty = [](const auto& n, const auto& image) {
    const auto gx = tg::gradient([&](const auto& v) { return ours_loss(n, v); }, image);
    return ours_loss(n, image) + tg::sum(gx * gx) * 0.1;
  };
  const auto [gnet, gx] = tg::gradient(penalty, net, x);
  std::vector<torch::Tensor> tnet = leaves(net);
  torch::Tensor tx = to_torch(x).requires_grad_(true);
  const torch::Tensor loss = torch_loss(tnet, tx);
  const torch::Tensor inner = torch::autograd::grad({loss}, {tx}, {}, /*retain_graph=*/true, /*create_graph=*/true)[0];
  const torch::Tensor total = loss + 0.1 * (inner * inner).sum();
  const auto theirs = torch::autograd::grad({total}, {tnet[0], tnet[1], tnet[2], tx});
  return std::max({relative_difference(gnet.w, theirs[0]), relative_difference(gnet.b, theirs[1]),
                   relative_difference(gnet.fc, theirs[2]), relative_difference(gx, theirs[3])});
}

double parameter_hvp(const Net<A>& net, const Net<A>& v, const A& x) {
  const Net<A> hv = tg::hvp([&](const auto& n) { return ours_loss(n, x); }, net, v);
  std::vector<torch::Tensor> tnet = leaves(net);
  const torch::Tensor loss = torch_loss(tnet, to_torch(x));
  const auto g = torch::autograd::grad({loss}, tnet, {}, true, true);
  const torch::Tensor directional = (g[0] * to_torch(v.w)).sum() + (g[1] * to_torch(v.b)).sum() + (g[2] * to_torch(v.fc)).sum();
  const auto theirs = torch::autograd::grad({directional}, tnet);
  return std::max({relative_difference(hv.w, theirs[0]), relative_difference(hv.b, theirs[1]), relative_difference(hv.fc, theirs[2])});
}

template <class X>
struct Deblur {
  X image, kernel;
};

double seed_case_hvp() {
  const std::int64_t n = 64;
  const A blurred = A::random_uniform({n, n}, 0, 1, 21);
  const Deblur<A> at{A::random_uniform({n, n}, 0, 1, 22), A::random_uniform({3, 3}, 0, 0.3, 23)};
  const Deblur<A> v{A::random_uniform({n, n}, -1, 1, 24), A::random_uniform({3, 3}, -1, 1, 25)};
  const tg::FilterParams replicate{.border = tg::Border::replicate()};
  const Deblur<A> hv = tg::hvp(
      [&](const auto& p) {
        const auto r = tg::correlate(p.image, p.kernel, replicate) - blurred;
        return tg::sum(r * r) * 0.5;
      },
      at, v);
  torch::Tensor image = to_torch(at.image).requires_grad_(true), kernel = to_torch(at.kernel).requires_grad_(true);
  const torch::Tensor padded = F::pad(image.reshape({1, 1, n, n}), F::PadFuncOptions({1, 1, 1, 1}).mode(torch::kReplicate));
  const torch::Tensor r = F::conv2d(padded, kernel.reshape({1, 1, 3, 3})).reshape({n, n}) - to_torch(blurred);
  const torch::Tensor loss = 0.5 * (r * r).sum();
  const auto g = torch::autograd::grad({loss}, {image, kernel}, {}, true, true);
  const torch::Tensor directional = (g[0] * to_torch(v.image)).sum() + (g[1] * to_torch(v.kernel)).sum();
  const auto theirs = torch::autograd::grad({directional}, {image, kernel});
  return std::max(relative_difference(hv.image, theirs[0]), relative_difference(hv.kernel, theirs[1]));
}

template <class X>
auto ours_resampling_loss(const X& fc, const X& x) {
  const auto up = tg::upsample(x, {.scale = {2}, .mode = tg::UpsampleMode::linear});
  const auto pooled = tg::meanpool(tg::pad(up, {.widths = {1, 1}, .border = tg::Border::reflect()}), {.window = {3}, .stride = {2}});
  const auto h = tg::adaptive_maxpool(tg::lppool(tg::gelu(pooled), {.window = {2}, .p = 2}), {.output = {3}});
  return tg::cross_entropy(tg::matmul(tg::reshape(h, {kBatch, -1}), fc), kLabels) + tg::max(h) * 0.1;
}

torch::Tensor torch_resampling_loss(const torch::Tensor& fc, const torch::Tensor& x) {
  const auto up = F::interpolate(x, F::InterpolateFuncOptions().scale_factor(std::vector<double>{2, 2}).mode(torch::kBilinear).align_corners(false));
  const auto pooled = F::avg_pool2d(F::pad(up, F::PadFuncOptions({1, 1, 1, 1}).mode(torch::kReflect)), F::AvgPool2dFuncOptions(3).stride(2));
  const auto h = F::adaptive_max_pool2d(F::lp_pool2d(F::gelu(pooled), F::LPPool2dFuncOptions(2, 2)), F::AdaptiveMaxPool2dFuncOptions(3));
  return F::cross_entropy(torch::matmul(h.reshape({kBatch, -1}), fc), torch::tensor(kLabels, torch::kLong)) + 0.1 * h.max();
}

double resampling_penalty(const A& fc, const A& x) {
  auto penalty = [](const auto& weights, const auto& image) {
    const auto gx = tg::gradient([&](const auto& v) { return ours_resampling_loss(weights, v); }, image);
    return ours_resampling_loss(weights, image) + tg::sum(gx * gx) * 0.1;
  };
  const auto grads = tg::gradient(penalty, fc, x);
  torch::Tensor tfc = to_torch(fc).requires_grad_(true), tx = to_torch(x).requires_grad_(true);
  const torch::Tensor loss = torch_resampling_loss(tfc, tx);
  const torch::Tensor inner = torch::autograd::grad({loss}, {tx}, {}, /*retain_graph=*/true, /*create_graph=*/true)[0];
  const auto theirs = torch::autograd::grad({loss + 0.1 * (inner * inner).sum()}, {tfc, tx});
  return std::max(relative_difference(std::get<0>(grads), theirs[0]), relative_difference(std::get<1>(grads), theirs[1]));
}

}  // namespace

int main() try {
  torch::set_num_threads(1);
  const Net<A> net{A::random_uniform({6, 3, 3, 3}, -0.5, 0.5, 1), A::random_uniform({6}, -0.5, 0.5, 2),
                   A::random_uniform({6 * 4 * 4, kClasses}, -0.3, 0.3, 3)};
  const Net<A> v{A::random_uniform({6, 3, 3, 3}, -1, 1, 4), A::random_uniform({6}, -1, 1, 5),
                 A::random_uniform({6 * 4 * 4, kClasses}, -1, 1, 6)};
  const A x = A::random_uniform({kBatch, 3, 8, 8}, -1, 1, 7);
  struct Result {
    const char* name;
    double difference;
  };
  const Result results[] = {
      {"gradient penalty (conv, maxpool, silu, linear, cross-entropy) in net and x", gradient_penalty(net, x)},
      {"hvp of the same loss in the parameters", parameter_hvp(net, v, x)},
      {"hvp of the seed case (64x64, 3x3, replicate) in image and kernel", seed_case_hvp()},
      {"gradient penalty (upsample, pad, meanpool, gelu, lppool, adaptive maxpool, max)",
       resampling_penalty(A::random_uniform({3 * 3 * 3, kClasses}, -0.5, 0.5, 8), x)}};
  bool ok = true;
  fmt::print("tapegrad's second order against LibTorch's double backward (create_graph=True), double precision\n");
  for (const Result& r : results) {
    const bool pass = r.difference <= 1e-10;
    ok = ok && pass;
    fmt::print("  {:<78} {:9.2e}  {}\n", r.name, r.difference, pass ? "ok" : "FAIL (> 1e-10)");
  }
  return ok ? 0 : 1;
} catch (const std::exception& e) {
  fmt::print(stderr, "error: {}\n", e.what());
  return 2;
}
