// The cost of a Hessian-vector product against one gradient (issue 21), on
// LeNet's loss (the example's model, float, random images of Fashion-MNIST's
// shape) and on the seed case (a 500 x 500 f64 image, a 3 x 3 kernel, replicate
// border: 0.5 |correlate(x, k) - b|^2 in both): one-shot calls (recording
// included), and recorded tapes replayed. Rounds alternate between the forms,
// so that the machine's drift hits both.
//
//   bench_hvp [--batch N] [--rounds N] [--threads N] [--only lenet|seed]
#include <cstdio>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <tapegrad/tapegrad.hpp>

#include "../examples/cnn/lenet_model.hpp"
#include "timing.hpp"

namespace {

using tgbench::median_seconds;

template <class X>
X direction_like(const X& x, std::uint64_t seed) {
  X v = x;
  tg::tree::for_each_leaf(v, [&](tg::Array<float>& leaf) { leaf = tg::Array<float>::random_uniform(leaf.shape(), -1, 1, seed++); });
  return v;
}

double median(std::vector<double> s) {
  std::sort(s.begin(), s.end());
  return s[s.size() / 2];
}

// Times one-shot and replayed gradient and hvp calls in alternating rounds and prints the two ratios.
template <class G1, class H1, class G2, class H2>
void compare(int rounds, G1 gradient_once, H1 hvp_once, G2 gradient_replayed, H2 hvp_replayed) {
  std::vector<double> g1, h1, g2, h2;
  for (int r = 0; r < rounds; ++r) {
    g1.push_back(median_seconds(3, gradient_once));
    h1.push_back(median_seconds(3, hvp_once));
    g2.push_back(median_seconds(3, gradient_replayed));
    h2.push_back(median_seconds(3, hvp_replayed));
  }
  fmt::print("{:<28} {:>12} {:>12} {:>8}\n", "", "gradient", "hvp", "ratio");
  fmt::print("{:<28} {:>10.2f}ms {:>10.2f}ms {:>7.2f}x\n", "one-shot (records each call)", median(g1) * 1e3, median(h1) * 1e3,
             median(h1) / median(g1));
  fmt::print("{:<28} {:>10.2f}ms {:>10.2f}ms {:>7.2f}x\n", "recorded tape, replayed", median(g2) * 1e3, median(h2) * 1e3,
             median(h2) / median(g2));
}

// The seed case's parameters: the sharp image and the blur kernel.
template <class A>
struct Deblur {
  A image, kernel;
};

void seed_case(int rounds) {
  using A = tg::Array<double>;
  const tg::FilterParams replicate{.border = tg::Border::replicate()};
  const A blurred = A::random_uniform({500, 500}, 0, 1, 7);
  const Deblur<A> at{A::random_uniform({500, 500}, 0, 1, 8), A::random_uniform({3, 3}, 0, 0.2, 9)};
  const Deblur<A> v{A::random_uniform({500, 500}, -1, 1, 10), A::random_uniform({3, 3}, -1, 1, 11)};
  auto misfit = [&](const auto& p, const auto& b) {
    const auto r = tg::correlate(p.image, p.kernel, replicate) - b;
    return tg::sum(r * r) * 0.5;
  };
  auto loss = [&](const auto& p) { return misfit(p, tg::constant(blurred)); };
  auto directional = [&](const auto& p, const auto& d, const auto& b) {
    const auto g = tg::gradient([&](const auto& q) { return misfit(q, b); }, p);
    return tg::sum(g.image * d.image) + tg::sum(g.kernel * d.kernel);
  };
  auto first = tg::record(misfit, at, tg::data(blurred));
  auto second = tg::record(directional, at, tg::data(v), tg::data(blurred));
  const Deblur<A> a = tg::hvp(loss, at, v), b = second.gradient(at, tg::data(v), tg::data(blurred));
  const double worst = std::max(tg::max(tg::abs(a.image - b.image)).item(), tg::max(tg::abs(a.kernel - b.kernel)).item());
  fmt::print("\nthe seed case: 0.5 |correlate(x, k, replicate) - b|^2, x 500 x 500, k 3 x 3, double, in (x, k), {} threads\n",
             tg::num_threads());
  fmt::print("second-order tape: {} instructions against {} for the loss alone; one-shot and replayed hvp differ by {:.1e}\n",
             second.tape().num_instructions(), first.tape().num_instructions(), worst);
  compare(
      rounds, [&] { (void)tg::gradient(loss, at); }, [&] { (void)tg::hvp(loss, at, v); },
      [&] { (void)first.gradient(at, tg::data(blurred)); }, [&] { (void)second.gradient(at, tg::data(v), tg::data(blurred)); });
}

}  // namespace

int main(int argc, char** argv) {
  std::int64_t batch = 64;
  int rounds = 5, threads = 0;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--batch" && i + 1 < argc) batch = std::stoll(argv[++i]);
    else if (a == "--rounds" && i + 1 < argc) rounds = std::stoi(argv[++i]);
    else if (a == "--threads" && i + 1 < argc) threads = std::stoi(argv[++i]);
    else if (a == "--only" && i + 1 < argc && (std::string(argv[i + 1]) == "lenet" || std::string(argv[i + 1]) == "seed")) only = argv[++i];
    else {
      fmt::print(stderr, "error: bench_hvp: unknown flag {} expected --batch --rounds --threads --only lenet|seed\n", a);
      return 2;
    }
  }
  if (threads > 0) tg::set_num_threads(threads);
  fmt::print("{}\n", tgbench::cpu_line());
  if (only == "seed") {
    seed_case(rounds);
    return 0;
  }
  const cnn::LenetParams net = cnn::lenet_init(1);
  const tg::Array<float> images = tg::Array<float>::random_uniform({batch, 1, 28, 28}, 0, 1, 2);
  tg::Array<float> labels({batch});
  for (std::int64_t i = 0; i < batch; ++i) labels.data()[i] = float(i % 10);
  const cnn::LenetParams v = direction_like(net, 100);
  auto loss = [&](const auto& p) { return cnn::lenet_loss(p, tg::constant(images), tg::constant(labels)); };
  // <grad loss, v> as a recorded function of the parameters, for the replayed form.
  auto directional = [&](const auto& p, const auto& d, const auto& x, const auto& y) {
    const auto g = tg::gradient([&](const auto& q) { return cnn::lenet_loss(q, x, y); }, p);
    std::vector<tg::Tracked<float>> terms;
    std::vector<const tg::Tracked<float>*> dirs;
    tg::tree::for_each_leaf(d, [&](const tg::Tracked<float>& leaf) { dirs.push_back(&leaf); });
    std::size_t i = 0;
    tg::tree::for_each_leaf(g, [&](const tg::Tracked<float>& leaf) { terms.push_back(tg::sum(leaf * *dirs[i++])); });
    tg::Tracked<float> total = terms[0];
    for (std::size_t k = 1; k < terms.size(); ++k) total = total + terms[k];
    return total;
  };
  auto first = tg::record([](const auto& p, const auto& x, const auto& y) { return cnn::lenet_loss(p, x, y); }, net,
                          tg::data(images), tg::data(labels));
  auto second = tg::record(directional, net, tg::data(v), tg::data(images), tg::data(labels));
  // The replayed hvp agrees with the one-shot call.
  const cnn::LenetParams a = tg::hvp(loss, net, v), b = second.gradient(net, tg::data(v), tg::data(images), tg::data(labels));
  double worst = 0;
  std::vector<const tg::Array<float>*> bl;
  tg::tree::for_each_leaf(b, [&](const tg::Array<float>& leaf) { bl.push_back(&leaf); });
  std::size_t li = 0;
  tg::tree::for_each_leaf(a, [&](const tg::Array<float>& leaf) {
    for (std::int64_t i = 0; i < leaf.size(); ++i) worst = std::max(worst, double(std::abs(leaf.data()[i] - bl[li]->data()[i])));
    ++li;
  });

  fmt::print("LeNet's loss (conv 5x5 32, maxpool, conv 5x5 64, maxpool, fc 128, fc 10, cross-entropy), batch {}, float, {} threads\n",
             batch, tg::num_threads());
  fmt::print("second-order tape: {} instructions against {} for the loss alone; one-shot and replayed hvp differ by {:.1e}\n",
             second.tape().num_instructions(), first.tape().num_instructions(), worst);
  compare(
      rounds, [&] { (void)tg::gradient(loss, net); }, [&] { (void)tg::hvp(loss, net, v); },
      [&] { (void)first.gradient(net, tg::data(images), tg::data(labels)); },
      [&] { (void)second.gradient(net, tg::data(v), tg::data(images), tg::data(labels)); });
  // Both tapes compiled (tg::compile: fused elementwise chains, planned memory).
  auto first_compiled = tg::compile(first);
  auto second_compiled = tg::compile(second);
  std::vector<double> gc, hc;
  for (int r = 0; r < rounds; ++r) {
    gc.push_back(median_seconds(3, [&] { (void)first_compiled.gradient(net, tg::data(images), tg::data(labels)); }));
    hc.push_back(median_seconds(3, [&] { (void)second_compiled.gradient(net, tg::data(v), tg::data(images), tg::data(labels)); }));
  }
  fmt::print("{:<28} {:>10.2f}ms {:>10.2f}ms {:>7.2f}x\n", "compiled tapes, replayed", median(gc) * 1e3, median(hc) * 1e3,
             median(hc) / median(gc));
  if (std::getenv("BENCH_HVP_PROFILE")) {
    tg::TapeProfile prof;
    second.tape().set_profile(&prof);
    for (int i = 0; i < 5; ++i) (void)second.gradient(net, tg::data(v), tg::data(images), tg::data(labels));
    fmt::print("{}\n", tg::dump_profile(second.tape(), prof));
  }
  if (only.empty()) seed_case(rounds);
  return 0;
}
