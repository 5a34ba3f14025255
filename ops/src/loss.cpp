// ============================================================================
// Losses: mse, cross_entropy, bce_with_logits, l1_loss, smooth_l1_loss.
// ============================================================================
#include "tapegrad/ops/loss.hpp"

#include "builtin_ops.hpp"
#include "op_table.hpp"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "tapegrad/autodiff/record.hpp"
#include "tapegrad/kernels/softmax.hpp"
#include "tapegrad/ops/elementwise_rows.hpp"

namespace tg::ops {

// ---- the pointwise losses (mse too): mean of loss(p, t) over equal shapes -----
// Their pullbacks: dp += dloss / n * dp(p, t), dt += dloss / n * dt(p, t).
template <class T, class P, class F, class DP, class DT>
OpInfo<T> mean_loss_row(const char* name, F f, DP dp, DT dt) {
  OpInfo<T> r;
  r.name = name;
  r.arity = 2;
  r.shape = [name](const OpParams*, std::span<const Shape* const> s) {
    if (!(*s[0] == *s[1]))
      fail(name, fmt::format("prediction {} and target {} shapes must be equal; hint: reshape the target (the "
                             "losses do not broadcast, to avoid silently averaging the wrong pairs)",
                             to_string(*s[0]), to_string(*s[1])));
    if (s[0]->size() == 0) fail(name, "empty prediction has no mean expected at least one element");
    return Shape{};
  };
  r.forward = [f](const ForwardCall<T>& c) {
    static const P defaults{};
    const P& params = c.params ? params_as<P>(c.params) : defaults;
    const T *p = c.inputs[0]->data(), *t = c.inputs[1]->data();
    const std::int64_t n = c.inputs[0]->size();
    T acc = T(0);
    for (std::int64_t i = 0; i < n; ++i) acc += f(p[i], t[i], params);
    c.output.data()[0] = acc / static_cast<T>(n);
  };
  r.pullback = [dp, dt](const PullbackCall<T>& c) {
    static const P defaults{};
    const P& params = c.params ? params_as<P>(c.params) : defaults;
    const T *p = c.inputs[0]->data(), *t = c.inputs[1]->data();
    const std::int64_t n = c.inputs[0]->size();
    const T scale = c.output_adjoint.data()[0] / static_cast<T>(n);
    Array<T>*gp = c.input_adjoints[0], *gt = c.input_adjoints[1];
    for (std::int64_t i = 0; i < n; ++i) {
      if (gp) gp->data()[i] += scale * dp(p[i], t[i], params);
      if (gt) gt->data()[i] += scale * dt(p[i], t[i], params);
    }
  };
  return r;
}

struct NoLossParams : OpParams {};

// mean((p - t)^2).
template <class T>
OpInfo<T> mse_row() {
  return mean_loss_row<T, NoLossParams>(
      "mse", [](T p, T t, const NoLossParams&) { return (p - t) * (p - t); },
      [](T p, T t, const NoLossParams&) { return T(2) * (p - t); },
      [](T p, T t, const NoLossParams&) { return T(-2) * (p - t); });
}
template <class T>
T sign_of(T v) {
  return v > T(0) ? T(1) : v < T(0) ? T(-1) : T(0);
}

// max(x, 0) - x t + log(1 + exp(-|x|)): logits x, targets t in [0, 1].
template <class T>
OpInfo<T> bce_with_logits_row() {
  return mean_loss_row<T, NoLossParams>(
      "bce_with_logits",
      [](T x, T t, const NoLossParams&) { return std::max(x, T(0)) - x * t + std::log1p(std::exp(-std::abs(x))); },
      [](T x, T t, const NoLossParams&) {
        const T e = std::exp(-std::abs(x));  // sigmoid(x) without overflow
        return (x >= T(0) ? T(1) : e) / (T(1) + e) - t;
      },
      [](T x, T, const NoLossParams&) { return -x; });
}
// |p - t|; its derivative at p == t is 0 (Note [Kinks]).
template <class T>
OpInfo<T> l1_loss_row() {
  return mean_loss_row<T, NoLossParams>(
      "l1_loss", [](T p, T t, const NoLossParams&) { return std::abs(p - t); },
      [](T p, T t, const NoLossParams&) { return sign_of(p - t); },
      [](T p, T t, const NoLossParams&) { return -sign_of(p - t); });
}
// 0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta (d = p - t); beta 0 is l1.
struct SmoothL1Params : OpParams {
  double beta = 1;
};
template <class T>
T smooth_l1_slope(T d, const SmoothL1Params& q) {
  return std::abs(d) < T(q.beta) ? d / T(q.beta) : sign_of(d);
}
template <class T>
OpInfo<T> smooth_l1_loss_row() {
  auto r = mean_loss_row<T, SmoothL1Params>(
      "smooth_l1_loss",
      [](T p, T t, const SmoothL1Params& q) {
        const T d = std::abs(p - t), beta = T(q.beta);
        return d < beta ? T(0.5) * d * d / beta : d - T(0.5) * beta;
      },
      [](T p, T t, const SmoothL1Params& q) { return smooth_l1_slope(p - t, q); },
      [](T p, T t, const SmoothL1Params& q) { return -smooth_l1_slope(p - t, q); });
  one_double_attribute(r, "beta", &SmoothL1Params::beta);
  return r;
}

// ---- cross_entropy ----------------------------------------------------------
namespace {
template <class T>
std::int64_t label_at(const Array<T>& labels, std::int64_t i, std::int64_t classes) {
  const T v = labels.data()[i];
  // Range first (NaN fails it too): casting a value outside int64 is undefined.
  const bool in_range = v >= T(0) && v < static_cast<T>(classes);
  const auto k = in_range ? static_cast<std::int64_t>(v) : -1;
  if (!in_range || !(static_cast<T>(k) == v))
    fail("cross_entropy", fmt::format("label ({}) at index {} is not a class index expected an integer in [0, {})", v, i, classes));
  return k;
}
}  // namespace

template <class T>
OpInfo<T> cross_entropy_row() {
  OpInfo<T> r;
  r.name = "cross_entropy";
  r.arity = 2;
  r.n_saved = 1;  // softmax probabilities (N, C), for the pullback
  r.shape = [](const OpParams*, std::span<const Shape* const> s) {
    const Shape &logits = *s[0], &labels = *s[1];
    if (logits.rank() != 2)
      fail("cross_entropy", fmt::format("logits have shape {} expected (N, C); hint: reshape to (-1, classes)", to_string(logits)));
    if (labels.rank() != 1 || labels[0] != logits[0])
      fail("cross_entropy", fmt::format("labels have shape {} expected ({}) one label per row of logits {}", to_string(labels),
                                        logits[0], to_string(logits)));
    if (logits[0] == 0 || logits[1] == 0)
      fail("cross_entropy", fmt::format("logits {} are empty expected at least one row and one class", to_string(logits)));
    return Shape{};
  };
  r.forward = [](const ForwardCall<T>& c) {
    const Array<T>&x = *c.inputs[0], &labels = *c.inputs[1];
    const std::int64_t n = x.shape()[0], classes = x.shape()[1];
    Array<T>& probs = c.saved[0];
    if (!(probs.shape() == x.shape())) probs = Array<T>::uninitialized(x.shape());
    kernels::softmax_forward<true>(x.data(), probs.data(), {n, classes, 1});  // log-probabilities
    T loss = T(0);
    for (std::int64_t i = 0; i < n; ++i) loss -= probs.data()[i * classes + label_at(labels, i, classes)];
    for (auto& v : probs) v = std::exp(v);
    c.output.data()[0] = loss / static_cast<T>(n);
  };
  // dlogits += dloss / N * (softmax - onehot(labels)); labels: Note [Labels are not differentiable].
  r.pullback = [](const PullbackCall<T>& c) {
    Array<T>* dx = c.input_adjoints[0];
    if (!dx) return;
    const Array<T>&probs = c.saved[0], &labels = *c.inputs[1];
    const std::int64_t n = probs.shape()[0], classes = probs.shape()[1];
    const T scale = c.output_adjoint.data()[0] / static_cast<T>(n);
    for (std::int64_t i = 0; i < n; ++i) {
      T* row_grad = dx->data() + i * classes;
      const T* p = probs.data() + i * classes;
      for (std::int64_t j = 0; j < classes; ++j) row_grad[j] += scale * p[j];
      row_grad[label_at(labels, i, classes)] -= scale;
    }
  };
  return r;
}

// The family's op table (Note [Op tables]).
#define TG_LOSS_ROWS(X) X(mse) X(cross_entropy) X(bce_with_logits) X(l1_loss) X(smooth_l1_loss)
TG_OP_TABLE(loss, TG_LOSS_ROWS)

template <class T>
Tracked<T> mse_tracked(const Operand<T>& pred, const Operand<T>& target, const std::source_location& where) {
  return record_op(mse_op<T>(), nullptr, {pred, target}, where);
}
template <class T>
Tracked<T> cross_entropy_tracked(const Operand<T>& logits, const Operand<T>& labels, const std::source_location& where) {
  return record_op(cross_entropy_op<T>(), nullptr, {logits, labels}, where);
}
std::shared_ptr<const OpParams> smooth_l1_params(double beta, const std::source_location& where) {
  if (!(beta >= 0))
    throw Error("smooth_l1_loss", fmt::format("beta {} expected a non-negative number (0: the L1 loss)", beta)).with_site(where);
  auto p = std::make_shared<SmoothL1Params>();
  p->beta = beta;
  return p;
}
template <class T>
Tracked<T> pointwise_loss_tracked(PointwiseLoss loss, const Operand<T>& pred, const Operand<T>& target, double beta,
                                  const std::source_location& where) {
  switch (loss) {
    case PointwiseLoss::bce_with_logits: return record_op(bce_with_logits_op<T>(), nullptr, {pred, target}, where);
    case PointwiseLoss::l1: return record_op(l1_loss_op<T>(), nullptr, {pred, target}, where);
    case PointwiseLoss::smooth_l1: return record_op(smooth_l1_loss_op<T>(), smooth_l1_params(beta, where), {pred, target}, where);
  }
  fail("loss", "unknown pointwise loss");
}
template <class T>
Array<T> pointwise_loss_eval(PointwiseLoss loss, const Array<T>& pred, const Array<T>& target, double beta,
                             const std::source_location& where) {
  switch (loss) {
    case PointwiseLoss::bce_with_logits: return evaluate_op(bce_with_logits_op<T>(), nullptr, {&pred, &target}, where);
    case PointwiseLoss::l1: return evaluate_op(l1_loss_op<T>(), nullptr, {&pred, &target}, where);
    case PointwiseLoss::smooth_l1: {
      const auto p = smooth_l1_params(beta, where);
      return evaluate_op(smooth_l1_loss_op<T>(), p.get(), {&pred, &target}, where);
    }
  }
  fail("loss", "unknown pointwise loss");
}
#define TG_INSTANTIATE(T)                                                                                            \
  template Tracked<T> pointwise_loss_tracked(PointwiseLoss, const Operand<T>&, const Operand<T>&, double,            \
                                             const std::source_location&);                                           \
  template Array<T> pointwise_loss_eval(PointwiseLoss, const Array<T>&, const Array<T>&, double, const std::source_location&);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

template <class T>
Array<T> labels_array(const std::vector<std::int64_t>& labels) {
  Array<T> a = Array<T>::uninitialized(Shape{static_cast<std::int64_t>(labels.size())});
  for (std::size_t i = 0; i < labels.size(); ++i) a.data()[i] = static_cast<T>(labels[i]);
  return a;
}

template Tracked<float> mse_tracked(const Operand<float>&, const Operand<float>&, const std::source_location&);
template Tracked<double> mse_tracked(const Operand<double>&, const Operand<double>&, const std::source_location&);
template Tracked<float> cross_entropy_tracked(const Operand<float>&, const Operand<float>&, const std::source_location&);
template Tracked<double> cross_entropy_tracked(const Operand<double>&, const Operand<double>&, const std::source_location&);


}  // namespace tg::ops

namespace tg {

template <class T>
Array<T> mse(const Array<T>& pred, const Array<T>& target, std::source_location where) {
  return evaluate_op(ops::mse_op<T>(), nullptr, {&pred, &target}, where);
}
template <class T>
Tracked<T> cross_entropy(const Tracked<T>& logits, const std::vector<std::int64_t>& labels, std::source_location where) {
  if (logits.tape()->refuses_captures())
    throw Error("cross_entropy", fmt::format("labels given as a std::vector ({} labels) are copied into the tape, and a "
                            "replay would keep this batch's labels expected labels as an argument; hint: pass them "
                            "as tg::data(labels) (an Array of class indices), or copy them on purpose with "
                            "tg::constant(labels_array)",
                            labels.size()))
        .with_site(where);
  const Array<T> l = ops::labels_array<T>(labels);
  return ops::cross_entropy_tracked<T>(Operand<T>(logits, where), Operand<T>(l, where), where);
}
template <class T>
Array<T> cross_entropy(const Array<T>& logits, const Array<T>& labels, std::source_location where) {
  return evaluate_op(ops::cross_entropy_op<T>(), nullptr, {&logits, &labels}, where);
}
template <class T>
Array<T> cross_entropy(const Array<T>& logits, const std::vector<std::int64_t>& labels, std::source_location where) {
  const Array<T> l = ops::labels_array<T>(labels);
  return cross_entropy(logits, l, where);
}

#define TG_INSTANTIATE(T)                                                                                  \
  template Array<T> mse(const Array<T>&, const Array<T>&, std::source_location);                           \
  template Tracked<T> cross_entropy(const Tracked<T>&, const std::vector<std::int64_t>&, std::source_location); \
  template Array<T> cross_entropy(const Array<T>&, const Array<T>&, std::source_location);                 \
  template Array<T> cross_entropy(const Array<T>&, const std::vector<std::int64_t>&, std::source_location);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg
