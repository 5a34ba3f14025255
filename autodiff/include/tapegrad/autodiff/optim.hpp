// Optimizers over parameter trees (tree.hpp), with torch.optim's update formulas.
//
//   tg::optim::Adam opt(net, {.lr = 1e-3});
//   auto g = step.gradient(net, tg::data(x), tg::data(y));   // g has net's type
//   tg::optim::clip_grad_norm(g, 1.0);                      // optional
//   opt.set_lr(schedule(opt.steps()));                      // optional: tg::optim::Cosine{...}
//   opt.step(net, g);                                       // updates net in place
//
// A step is one pass over every leaf, split over threads in blocks
// (kernels/optim.hpp); after the first it allocates nothing. The state
// (momentum buffers, moments, the step count) is a list of named arrays that
// checkpoints save and load (checkpoint.hpp): "exp_avg.blocks.2.w1".
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "tapegrad/autodiff/tree.hpp"
#include "tapegrad/kernels/optim.hpp"

namespace tg::optim {

namespace detail {

// What every optimizer shares: the state arrays (one tree's worth per kind),
// the leaf lists of the current step, the block plan, the step count.
template <class T>
class UpdateState {
 public:
  // kinds: the names of the state buffers ("momentum_buffer"; "exp_avg", "exp_avg_sq").
  UpdateState(std::vector<std::string> kinds, std::vector<std::string> leaf_names, const std::vector<Shape>& shapes)
      : kinds_(std::move(kinds)), names_(std::move(leaf_names)), shapes_(shapes) {
    for (std::size_t k = 0; k < kinds_.size(); ++k)
      for (const Shape& s : shapes_) buffers_.push_back(Array<T>::zeros(s));
  }

  // Fills the segments from the current parameters and gradients (checked
  // against the optimizer's leaves: count and shapes), then plans the blocks once.
  template <class P, class G>
  void gather(const char* op, P& params, const G& grads) {
    segments_.clear();
    tree::for_each_parameter(params, [&](Array<T>& p) {
      const std::size_t k = segments_.size();
      if (k >= shapes_.size() || !(p.shape() == shapes_[k])) mismatch(op, "parameter", k, p.shape());
      kernels::UpdateSegment<T> s;
      s.param = p.data();
      s.size = p.size();
      for (std::size_t j = 0; j < kinds_.size() && j < 3; ++j) (j == 0 ? s.state0 : j == 1 ? s.state1 : s.state2) = buffer(j, k).data();
      segments_.push_back(s);
    });
    if (segments_.size() != shapes_.size()) too_few(op, "parameter", segments_.size());
    std::size_t k = 0;
    tree::for_each_parameter(grads, [&](const Array<T>& g) {
      if (k >= shapes_.size() || !(g.shape() == shapes_[k])) mismatch(op, "gradient", k, g.shape());
      segments_[k++].grad = g.data();
    });
    if (k != shapes_.size()) too_few(op, "gradient", k);
    if (blocks_.empty() && !segments_.empty()) blocks_ = kernels::plan_update_blocks<T>(segments_);
  }
  std::span<const kernels::UpdateSegment<T>> segments() const { return segments_; }
  std::span<const kernels::UpdateBlock> blocks() const { return blocks_; }
  std::int64_t& steps() { return steps_; }
  std::int64_t steps() const { return steps_; }

  // The state as named arrays, for checkpoints: f(name, Array&) for each buffer.
  template <class F>
  void for_each_state(F&& f) {
    for (std::size_t j = 0; j < kinds_.size(); ++j)
      for (std::size_t k = 0; k < shapes_.size(); ++k) f(names_[k].empty() ? kinds_[j] : kinds_[j] + "." + names_[k], buffer(j, k));
  }

 private:
  Array<T>& buffer(std::size_t kind, std::size_t leaf) { return buffers_[kind * shapes_.size() + leaf]; }
  [[noreturn]] void mismatch(const char* op, const char* what, std::size_t k, const Shape& got) const {
    if (k < shapes_.size())
      fail(op, fmt::format("{} {} ({}) has shape {} but the optimizer was made for {} expected the tree it was made "
                           "with; hint: make the optimizer from this model",
                           what, k, names_[k], to_string(got), to_string(shapes_[k])));
    fail(op, fmt::format("the {}s have more leaves than the {} the optimizer was made for expected the tree it was "
                         "made with; hint: make the optimizer from this model",
                         what, shapes_.size()));
  }
  [[noreturn]] void too_few(const char* op, const char* what, std::size_t n) const {
    fail(op, fmt::format("the {}s have {} leaves but the optimizer was made for {} expected the tree it was made with; "
                         "hint: make the optimizer from this model",
                         what, n, shapes_.size()));
  }

  std::vector<std::string> kinds_, names_;
  std::vector<Shape> shapes_;
  std::vector<Array<T>> buffers_;
  std::vector<kernels::UpdateSegment<T>> segments_;
  std::vector<kernels::UpdateBlock> blocks_;
  std::int64_t steps_ = 0;
};

template <class Tree>
std::vector<Shape> leaf_shapes(const Tree& t) {
  std::vector<Shape> out;
  tree::for_each_parameter(t, [&](const auto& a) { out.push_back(a.shape()); });
  return out;
}

// What every optimizer offers beside its step: the learning rate, the step
// count, and the state as named arrays for checkpoints (checkpoint.hpp).
template <class T, class Options>
class Optimizer {
 public:
  double lr() const { return options_.lr; }
  void set_lr(double lr) { options_.lr = lr; }
  const Options& options() const { return options_; }
  std::int64_t steps() const { return state_.steps(); }
  std::int64_t& step_count() { return state_.steps(); }
  template <class F>
  void for_each_state(F&& f) { state_.for_each_state(f); }

 protected:
  Optimizer(Options options, UpdateState<T> state) : options_(options), state_(std::move(state)) {}
  Options options_;
  UpdateState<T> state_;
};

}  // namespace detail

struct SgdOptions {
  double lr = 0.01;
  double momentum = 0;
  double dampening = 0;
  bool nesterov = false;
  double weight_decay = 0;
};

// Stochastic gradient descent, torch.optim.SGD: with weight decay d = g + wd p;
// with momentum b = d on the first step, then b = momentum b + (1 - dampening) d,
// and d = b (or d + momentum b with Nesterov); p -= lr d.
template <class Tree>
class Sgd : public detail::Optimizer<tree::element_type<Tree>, SgdOptions> {
  using T = tree::element_type<Tree>;
  using Base = detail::Optimizer<T, SgdOptions>;
  using Base::options_, Base::state_;

 public:
  Sgd(const Tree& params, SgdOptions options)
      : Base(options, detail::UpdateState<T>(options.momentum != 0 ? std::vector<std::string>{"momentum_buffer"}
                                                                   : std::vector<std::string>{},
                                             tree::parameter_paths(params), detail::leaf_shapes(params))) {
    if (!(options.lr >= 0) || !(options.momentum >= 0) || !(options.weight_decay >= 0) ||
        (options.nesterov && (options.momentum <= 0 || options.dampening != 0)))
      fail("optim::Sgd", fmt::format("lr {} momentum {} dampening {} weight_decay {} nesterov {} expected non-negative "
                                     "values, and momentum > 0 with dampening 0 for Nesterov",
                                     options.lr, options.momentum, options.dampening, options.weight_decay,
                                     options.nesterov));
  }
  template <class G>
  void step(Tree& params, const G& grads) {
    state_.gather("optim::Sgd::step", params, grads);
    kernels::SgdStep s{.lr = options_.lr, .momentum = options_.momentum, .dampening = options_.dampening,
                       .weight_decay = options_.weight_decay, .nesterov = options_.nesterov, .first = state_.steps() == 0};
    kernels::sgd_update<T>(state_.segments(), state_.blocks(), s);
    ++state_.steps();
  }
};

struct AdamOptions {
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0;
  bool amsgrad = false;
};

// Adam (torch.optim.Adam: weight decay added to the gradient) and AdamW
// (torch.optim.AdamW: p *= 1 - lr wd first; its default weight_decay is 0.01).
template <class Tree, bool Decoupled>
class AdamFamily : public detail::Optimizer<tree::element_type<Tree>, AdamOptions> {
  using T = tree::element_type<Tree>;
  using Base = detail::Optimizer<T, AdamOptions>;
  using Base::options_, Base::state_;

 public:
  AdamFamily(const Tree& params, AdamOptions options)
      : Base(options, detail::UpdateState<T>(options.amsgrad
                                                 ? std::vector<std::string>{"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
                                                 : std::vector<std::string>{"exp_avg", "exp_avg_sq"},
                                             tree::parameter_paths(params), detail::leaf_shapes(params))) {
    if (!(options.lr >= 0) || !(options.beta1 >= 0 && options.beta1 < 1) || !(options.beta2 >= 0 && options.beta2 < 1) ||
        !(options.eps >= 0) || !(options.weight_decay >= 0))
      fail(name(), fmt::format("lr {} betas ({}, {}) eps {} weight_decay {} expected lr, eps, weight_decay >= 0 and "
                               "betas in [0, 1)",
                               options.lr, options.beta1, options.beta2, options.eps, options.weight_decay));
  }
  template <class G>
  void step(Tree& params, const G& grads) {
    state_.gather(Decoupled ? "optim::AdamW::step" : "optim::Adam::step", params, grads);
    const double t = double(state_.steps() + 1);
    kernels::AdamStep s{.lr = options_.lr, .beta1 = options_.beta1, .beta2 = options_.beta2, .eps = options_.eps,
                        .weight_decay = options_.weight_decay, .decoupled = Decoupled, .amsgrad = options_.amsgrad,
                        .bias_correction1 = 1 - std::pow(options_.beta1, t),
                        .bias_correction2_sqrt = std::sqrt(1 - std::pow(options_.beta2, t))};
    kernels::adam_update<T>(state_.segments(), state_.blocks(), s);
    ++state_.steps();
  }

 private:
  static const char* name() { return Decoupled ? "optim::AdamW" : "optim::Adam"; }
};

template <class Tree>
class Adam : public AdamFamily<Tree, false> {
 public:
  Adam(const Tree& params, AdamOptions options = {}) : AdamFamily<Tree, false>(params, options) {}
};
template <class Tree>
class AdamW : public AdamFamily<Tree, true> {
 public:
  AdamW(const Tree& params, AdamOptions options = {.weight_decay = 0.01}) : AdamFamily<Tree, true>(params, options) {}
};
template <class Tree>
Sgd(const Tree&, SgdOptions) -> Sgd<Tree>;
template <class Tree>
Adam(const Tree&, AdamOptions) -> Adam<Tree>;
template <class Tree>
AdamW(const Tree&, AdamOptions) -> AdamW<Tree>;

// Scales every gradient leaf by max_norm / (norm + 1e-6) when the global L2
// norm over all leaves exceeds max_norm (torch.nn.utils.clip_grad_norm_);
// returns the norm before clipping.
template <class G>
double clip_grad_norm(G& grads, double max_norm) {
  if (!(max_norm > 0)) fail("optim::clip_grad_norm", fmt::format("max_norm {} expected a positive number", max_norm));
  double squares = 0;
  tree::for_each_parameter(grads, [&](const auto& g) { squares += kernels::sum_of_squares(g.data(), g.size()); });
  const double norm = std::sqrt(squares);
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1)
    tree::for_each_parameter(grads, [&](auto& g) {
      using T = std::remove_cvref_t<decltype(*g.data())>;
      kernels::scale_in_place(g.data(), g.size(), T(coef));
    });
  return norm;
}

// Learning-rate schedules: functions of the step (0-based), like torch's
// StepLR, CosineAnnealingLR and a linear warm-up followed by cosine decay.
struct StepDecay {
  double base;
  std::int64_t step_size;
  double gamma = 0.1;
  double operator()(std::int64_t step) const { return base * std::pow(gamma, double(step / std::max<std::int64_t>(1, step_size))); }
};
struct Cosine {
  double base;
  std::int64_t total;  // steps to reach min_lr
  double min_lr = 0;
  double operator()(std::int64_t step) const {
    const double t = double(std::clamp<std::int64_t>(step, 0, total)) / double(std::max<std::int64_t>(1, total));
    return min_lr + (base - min_lr) * 0.5 * (1 + std::cos(std::numbers::pi * t));
  }
};
struct WarmupCosine {
  double base;
  std::int64_t warmup;  // steps of linear increase from base / warmup to base
  std::int64_t total;   // all steps, warm-up included
  double min_lr = 0;
  double operator()(std::int64_t step) const {
    if (step < warmup) return base * double(step + 1) / double(warmup);
    return Cosine{base, total - warmup, min_lr}(step - warmup);
  }
};

}  // namespace tg::optim
