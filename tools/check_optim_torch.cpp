// tg::optim against torch::optim: the same parameters, the same 100 random
// gradients, every optimizer and option the library offers, in float. Prints
// the largest difference relative to the parameters' scale after 100 steps and
// fails above 1e-5 (float rounding: the two order a few operations differently).
//
//   check_optim_torch          (built with the benchmarks when LibTorch is installed)
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <tapegrad/tapegrad.hpp>
#include <torch/torch.h>

namespace {

using A = tg::Array<float>;
template <class Arr>
struct Params {
  Arr w, b;
};

constexpr int kSteps = 100;
const std::vector<std::int64_t> kWeightShape{16, 33}, kBiasShape{33};

torch::Tensor to_torch(const A& a) {
  return torch::from_blob(const_cast<float*>(a.data()), std::vector<std::int64_t>(a.shape().dims().begin(), a.shape().dims().end()))
      .clone();
}

// Runs both for kSteps steps; returns max |ours - torch| / max(1, |torch|).
double compare(const std::function<void(Params<A>&, const Params<A>&)>& ours_step, auto make_torch) {
  Params<A> p{A::random_normal({16, 33}, 0, 1, 1), A::random_normal({33}, 0, 1, 2)};
  std::vector<torch::Tensor> tp{to_torch(p.w).requires_grad_(true), to_torch(p.b).requires_grad_(true)};
  auto opt = make_torch(tp);
  for (int s = 0; s < kSteps; ++s) {
    const Params<A> g{A::random_normal({16, 33}, 0, 1, 100 + s), A::random_normal({33}, 0, 1, 1000 + s)};
    ours_step(p, g);
    tp[0].mutable_grad() = to_torch(g.w);
    tp[1].mutable_grad() = to_torch(g.b);
    opt.step();
  }
  double worst = 0;
  auto check = [&](const A& ours, const torch::Tensor& theirs) {
    const float* t = theirs.data_ptr<float>();
    for (std::int64_t i = 0; i < ours.size(); ++i)
      worst = std::max(worst, std::abs(double(ours.data()[i]) - double(t[i])) / std::max(1.0, std::abs(double(t[i]))));
  };
  check(p.w, tp[0].detach());
  check(p.b, tp[1].detach());
  return worst;
}

}  // namespace

int main() {
  torch::set_num_threads(1);
  struct Case {
    std::string name;
    std::function<double()> run;
  };
  auto sgd = [](tg::optim::SgdOptions o) {
    return [o] {
      Params<A> init{A::random_normal({16, 33}, 0, 1, 1), A::random_normal({33}, 0, 1, 2)};
      tg::optim::Sgd<Params<A>> ours(init, o);
      return compare([&](Params<A>& p, const Params<A>& g) { ours.step(p, g); }, [&](std::vector<torch::Tensor>& t) {
        return torch::optim::SGD(t, torch::optim::SGDOptions(o.lr).momentum(o.momentum).dampening(o.dampening).nesterov(
                                        o.nesterov).weight_decay(o.weight_decay));
      });
    };
  };
  auto adam = [](tg::optim::AdamOptions o, bool decoupled) {
    return [o, decoupled] {
      Params<A> init{A::random_normal({16, 33}, 0, 1, 1), A::random_normal({33}, 0, 1, 2)};
      if (decoupled) {
        tg::optim::AdamW<Params<A>> ours(init, o);
        return compare([&](Params<A>& p, const Params<A>& g) { ours.step(p, g); }, [&](std::vector<torch::Tensor>& t) {
          return torch::optim::AdamW(t, torch::optim::AdamWOptions(o.lr).betas({o.beta1, o.beta2}).eps(o.eps).weight_decay(
                                            o.weight_decay).amsgrad(o.amsgrad));
        });
      }
      tg::optim::Adam<Params<A>> ours(init, o);
      return compare([&](Params<A>& p, const Params<A>& g) { ours.step(p, g); }, [&](std::vector<torch::Tensor>& t) {
        return torch::optim::Adam(t, torch::optim::AdamOptions(o.lr).betas({o.beta1, o.beta2}).eps(o.eps).weight_decay(
                                         o.weight_decay).amsgrad(o.amsgrad));
      });
    };
  };
  const std::vector<Case> cases{
      {"SGD lr 0.01", sgd({.lr = 0.01})},
      {"SGD momentum 0.9, weight decay 1e-4", sgd({.lr = 0.01, .momentum = 0.9, .weight_decay = 1e-4})},
      {"SGD momentum 0.9, dampening 0.1", sgd({.lr = 0.01, .momentum = 0.9, .dampening = 0.1})},
      {"SGD Nesterov 0.9, weight decay 1e-3", sgd({.lr = 0.01, .momentum = 0.9, .nesterov = true, .weight_decay = 1e-3})},
      {"Adam lr 1e-3", adam({.lr = 1e-3}, false)},
      {"Adam weight decay 1e-2, betas (0.8, 0.99)", adam({.lr = 1e-3, .beta1 = 0.8, .beta2 = 0.99, .weight_decay = 1e-2}, false)},
      {"Adam AMSGrad", adam({.lr = 1e-2, .amsgrad = true}, false)},
      {"AdamW weight decay 1e-2", adam({.lr = 1e-3, .weight_decay = 1e-2}, true)},
      {"AdamW AMSGrad, weight decay 0.1", adam({.lr = 1e-2, .weight_decay = 0.1, .amsgrad = true}, true)},
  };
  fmt::print("tg::optim against torch::optim {}, float, {} steps of random gradients on a (16,33) weight and (33) bias\n",
             TORCH_VERSION, kSteps);
  fmt::print("{:<42} {:>22}\n", "optimizer", "max relative difference");
  bool ok = true;
  for (const auto& c : cases) {
    const double d = c.run();
    ok = ok && d <= 1e-5;
    fmt::print("{:<42} {:>22.2e}{}\n", c.name, d, d <= 1e-5 ? "" : "  FAILED");
  }
  return ok ? 0 : 1;
}
