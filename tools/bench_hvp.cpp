// The cost of a Hessian-vector product against one gradient (issue 21), on
// LeNet's loss (the example's model, float, random images of Fashion-MNIST's
// shape): one-shot calls (recording included), and recorded tapes replayed.
// Rounds alternate between the two, so that the machine's drift hits both.
//
//   bench_hvp [--batch N] [--rounds N] [--threads N]
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

}  // namespace

int main(int argc, char** argv) {
  std::int64_t batch = 64;
  int rounds = 5, threads = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--batch" && i + 1 < argc) batch = std::stoll(argv[++i]);
    else if (a == "--rounds" && i + 1 < argc) rounds = std::stoi(argv[++i]);
    else if (a == "--threads" && i + 1 < argc) threads = std::stoi(argv[++i]);
    else {
      fmt::print(stderr, "error: bench_hvp: unknown flag {} expected --batch --rounds --threads\n", a);
      return 2;
    }
  }
  if (threads > 0) tg::set_num_threads(threads);
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

  fmt::print("{}\n", tgbench::cpu_line());
  fmt::print("LeNet's loss (conv 5x5 32, maxpool, conv 5x5 64, maxpool, fc 128, fc 10, cross-entropy), batch {}, float, {} threads\n",
             batch, tg::num_threads());
  fmt::print("second-order tape: {} instructions against {} for the loss alone; one-shot and replayed hvp differ by {:.1e}\n",
             second.tape().num_instructions(), first.tape().num_instructions(), worst);
  std::vector<double> g1, h1, g2, h2;
  for (int r = 0; r < rounds; ++r) {
    g1.push_back(median_seconds(3, [&] { (void)tg::gradient(loss, net); }));
    h1.push_back(median_seconds(3, [&] { (void)tg::hvp(loss, net, v); }));
    g2.push_back(median_seconds(3, [&] { (void)first.gradient(net, tg::data(images), tg::data(labels)); }));
    h2.push_back(median_seconds(3, [&] { (void)second.gradient(net, tg::data(v), tg::data(images), tg::data(labels)); }));
  }
  auto median = [](std::vector<double> s) {
    std::sort(s.begin(), s.end());
    return s[s.size() / 2];
  };
  fmt::print("{:<28} {:>12} {:>12} {:>8}\n", "", "gradient", "hvp", "ratio");
  fmt::print("{:<28} {:>10.2f}ms {:>10.2f}ms {:>7.2f}x\n", "one-shot (records each call)", median(g1) * 1e3, median(h1) * 1e3,
             median(h1) / median(g1));
  fmt::print("{:<28} {:>10.2f}ms {:>10.2f}ms {:>7.2f}x\n", "recorded tape, replayed", median(g2) * 1e3, median(h2) * 1e3,
             median(h2) / median(g2));
  if (std::getenv("BENCH_HVP_PROFILE")) {
    tg::TapeProfile prof;
    second.tape().set_profile(&prof);
    for (int i = 0; i < 5; ++i) (void)second.gradient(net, tg::data(v), tg::data(images), tg::data(labels));
    fmt::print("{}\n", tg::dump_profile(second.tape(), prof));
  }
  return 0;
}
