// ============================================================================
// Losses: mse, cross_entropy, bce_with_logits, l1_loss, smooth_l1_loss.
// ============================================================================
#include "tapegrad/ops/loss.hpp"

#include "builtin_ops.hpp"
#include "op_table.hpp"
#include "recorded_pullbacks.hpp"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "tapegrad/autodiff/record.hpp"
#include "tapegrad/kernels/softmax.hpp"
#include "tapegrad/ops/elementwise_rows.hpp"
#include "tapegrad/ops/softmax.hpp"

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

// A mean loss's recorded pullback from its slope in the prediction as ops,
// slope(call) (the prediction's shape): dp = dloss / n * slope; the target's
// is -dp for the losses of p - t, or its own (target_slope) for bce.
template <class T, class Slope, class TargetSlope>
std::function<void(const RecordedPullbackCall<T>&)> recorded_mean_loss(Slope slope, TargetSlope target_slope) {
  return [slope, target_slope](const RecordedPullbackCall<T>& c) {
    const Tracked<T> scale = c.output_adjoint / T(c.input(0).size());
    if (c.wants(0)) c.contribute(0, scale * slope(c));
    if (c.wants(1)) c.contribute(1, scale * target_slope(c));
  };
}
template <class T, class Slope>
std::function<void(const RecordedPullbackCall<T>&)> recorded_mean_loss(Slope slope) {
  return recorded_mean_loss<T>(slope, [slope](const RecordedPullbackCall<T>& c) { return -slope(c); });
}

// mean((p - t)^2).
template <class T>
OpInfo<T> mse_row() {
  OpInfo<T> r = mean_loss_row<T, NoLossParams>(
      "mse", [](T p, T t, const NoLossParams&) { return (p - t) * (p - t); },
      [](T p, T t, const NoLossParams&) { return T(2) * (p - t); },
      [](T p, T t, const NoLossParams&) { return T(-2) * (p - t); });
  r.record_pullback = recorded_mean_loss<T>([](const RecordedPullbackCall<T>& c) { return (c.input(0) - c.input(1)) * T(2); });
  return r;
}
template <class T>
T sign_of(T v) {
  return v > T(0) ? T(1) : v < T(0) ? T(-1) : T(0);
}

// max(x, 0) - x t + log(1 + exp(-|x|)): logits x, targets t in [0, 1].
template <class T>
OpInfo<T> bce_with_logits_row() {
  OpInfo<T> r = mean_loss_row<T, NoLossParams>(
      "bce_with_logits",
      [](T x, T t, const NoLossParams&) { return std::max(x, T(0)) - x * t + std::log1p(std::exp(-std::abs(x))); },
      [](T x, T t, const NoLossParams&) {
        const T e = std::exp(-std::abs(x));  // sigmoid(x) without overflow
        return (x >= T(0) ? T(1) : e) / (T(1) + e) - t;
      },
      [](T x, T, const NoLossParams&) { return -x; });
  r.record_pullback = recorded_mean_loss<T>([](const RecordedPullbackCall<T>& c) { return tg::sigmoid(c.input(0)) - c.input(1); },
                                            [](const RecordedPullbackCall<T>& c) { return -c.input(0); });
  return r;
}
// |p - t|; its derivative at p == t is 0 (Note [Kinks]).
template <class T>
OpInfo<T> l1_loss_row() {
  OpInfo<T> r = mean_loss_row<T, NoLossParams>(
      "l1_loss", [](T p, T t, const NoLossParams&) { return std::abs(p - t); },
      [](T p, T t, const NoLossParams&) { return sign_of(p - t); },
      [](T p, T t, const NoLossParams&) { return -sign_of(p - t); });
  r.record_pullback = recorded_mean_loss<T>([](const RecordedPullbackCall<T>& c) { return sign_of(c.input(0) - c.input(1)); });
  return r;
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
  // The slope is clamp(d / beta, -1, 1): d / beta inside, the sign outside (beta 0: the sign).
  r.record_pullback = recorded_mean_loss<T>([](const RecordedPullbackCall<T>& c) {
    const T beta = c.params ? T(params_as<SmoothL1Params>(c.params).beta) : T(1);
    const Tracked<T> d = c.input(0) - c.input(1);
    return beta > T(0) ? tg::clamp(d / beta, T(-1), T(1)) : sign_of(d);
  });
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

struct CrossEntropyOpParams : OpParams {
  CrossEntropyParams user;
  bool row_scales = false;  // cross_entropy_grad only: the rows' scales A_i / W, (N, 1) (Note [Cross-entropy's gradient op])
};

namespace {
bool row_scales_of(const OpParams* p) { return p && params_as<CrossEntropyOpParams>(p).row_scales; }
}  // namespace

template <class T>
const OpInfo<T>& cross_entropy_grad_op();

// The per-class weights of a call (1 for every class without a weights input).
template <class T>
T class_weight(std::span<const Array<T>* const> in, std::int64_t c) {
  return in.size() == 3 ? in[2]->data()[c] : T(1);
}

// The checks of a cross-entropy call (also its gradient op's).
inline void check_cross_entropy(const OpParams* p, std::span<const Shape* const> s) {
  if (s.size() != 2 && s.size() != 3)
    fail("cross_entropy", fmt::format("got {} inputs expected (logits, labels) or (logits, labels, weights)", s.size()));
  const Shape &logits = *s[0], &labels = *s[1];
  if (logits.rank() != 2)
    fail("cross_entropy", fmt::format("logits have shape {} expected (N, C); hint: reshape to (-1, classes)", to_string(logits)));
  if (labels.rank() != 1 || labels[0] != logits[0])
    fail("cross_entropy", fmt::format("labels have shape {} expected ({}) one label per row of logits {}", to_string(labels),
                                      logits[0], to_string(logits)));
  if (logits[0] == 0 || logits[1] == 0)
    fail("cross_entropy", fmt::format("logits {} are empty expected at least one row and one class", to_string(logits)));
  if (s.size() == 3 && !(*s[2] == Shape{logits[1]}))
    fail("cross_entropy", fmt::format("weights have shape {} expected ({}) one per class of logits {}", to_string(*s[2]),
                                      logits[1], to_string(logits)));
  const double e = p ? params_as<CrossEntropyOpParams>(p).user.label_smoothing : 0.0;
  if (!(e >= 0 && e <= 1)) fail("cross_entropy", fmt::format("label_smoothing ({}) expected a number in [0, 1]", e));
}

// W = sum_i w[y_i] (the mean's divisor) and sum_c w[c] of a call.
template <class T>
std::pair<double, double> cross_entropy_weights(std::span<const Array<T>* const> in, std::int64_t n, std::int64_t classes) {
  double total_weight = 0, weight_sum = 0;
  for (std::int64_t i = 0; i < n; ++i) total_weight += static_cast<double>(class_weight(in, label_at(*in[1], i, classes)));
  for (std::int64_t j = 0; j < classes; ++j) weight_sum += static_cast<double>(class_weight(in, j));
  return {total_weight, weight_sum};
}

// row_grad += g ((1 - e) w[k] (p - onehot(k)) + e / C (p sum_c w[c] - w)): one
// row's logit gradient, scaled by g = dloss / W (Note [Cross-entropy as PyTorch]).
template <class T>
void add_logit_gradient(std::span<const Array<T>* const> in, const T* logp_row, std::int64_t k, double e, double weight_sum,
                        double g, T* row_grad) {
  const std::int64_t classes = in[0]->shape()[1];
  const double smooth = e / static_cast<double>(classes), wk = static_cast<double>(class_weight(in, k));
  const double scale = g * ((1 - e) * wk + smooth * weight_sum);
  for (std::int64_t j = 0; j < classes; ++j)
    row_grad[j] += static_cast<T>(scale * std::exp(static_cast<double>(logp_row[j])) -
                                  g * smooth * static_cast<double>(class_weight(in, j)));
  row_grad[k] -= static_cast<T>(g * (1 - e) * wk);
}

// Note [Cross-entropy as PyTorch]: with weights w, label smoothing e and C classes,
//   loss = ((1 - e) sum_i w[y_i] (-logp[i, y_i]) + e / C sum_i sum_c w[c] (-logp[i, c])) / W,
//   W = sum_i w[y_i]  (N without weights),
// PyTorch's mean reduction. The saved buffer holds the log-probabilities, so
// that the weights' gradient reads -logp exactly, even where p underflows.
template <class T>
OpInfo<T> cross_entropy_row() {
  OpInfo<T> r;
  r.name = "cross_entropy";
  r.arity = kVariadic;  // logits, labels, and optionally the class weights (C)
  r.n_saved = 1;  // log-softmax (N, C), for the pullback
  r.shape = [](const OpParams* p, std::span<const Shape* const> s) {
    check_cross_entropy(p, s);
    return Shape{};
  };
  r.forward = [](const ForwardCall<T>& c) {
    const Array<T>&x = *c.inputs[0], &labels = *c.inputs[1];
    const std::int64_t n = x.shape()[0], classes = x.shape()[1];
    const double e = c.params ? params_as<CrossEntropyOpParams>(c.params).user.label_smoothing : 0.0;
    Array<T>& logp = c.saved[0];
    if (!(logp.shape() == x.shape())) logp = Array<T>::uninitialized(x.shape());
    kernels::softmax_forward<true>(x.data(), logp.data(), {n, classes, 1});
    double nll = 0, smooth = 0, total_weight = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      const T* row = logp.data() + i * classes;
      const std::int64_t k = label_at(labels, i, classes);
      const double w = static_cast<double>(class_weight(c.inputs, k));
      total_weight += w;
      nll -= w * static_cast<double>(row[k]);
      if (e > 0)
        for (std::int64_t j = 0; j < classes; ++j) smooth -= static_cast<double>(class_weight(c.inputs, j)) * static_cast<double>(row[j]);
    }
    if (!(total_weight != 0))
      fail("cross_entropy", fmt::format("the weights of this batch's labels sum to {} expected a nonzero sum (the mean's divisor)", total_weight));
    c.output.data()[0] = static_cast<T>(((1 - e) * nll + e / static_cast<double>(classes) * smooth) / total_weight);
  };
  // dlogits[i] += dloss / W ((1 - e) w[y_i] (p_i - onehot(y_i)) + e / C (p_i sum_c w[c] - w));
  // labels: Note [Labels are not differentiable]; weights: d(A / W) = (dA - loss dW) / W.
  r.pullback = [](const PullbackCall<T>& c) {
    Array<T>* dx = c.input_adjoints[0];
    Array<T>* dw = c.input_adjoints.size() == 3 ? c.input_adjoints[2] : nullptr;
    if (!dx && !dw) return;
    const Array<T>&logp = c.saved[0], &labels = *c.inputs[1];
    const std::int64_t n = logp.shape()[0], classes = logp.shape()[1];
    const double e = c.params ? params_as<CrossEntropyOpParams>(c.params).user.label_smoothing : 0.0;
    const auto [total_weight, weight_sum] = cross_entropy_weights(c.inputs, n, classes);
    const double g = static_cast<double>(c.output_adjoint.data()[0]) / total_weight, smooth = e / static_cast<double>(classes);
    const double loss = static_cast<double>(c.output.data()[0]);
    for (std::int64_t i = 0; i < n; ++i) {
      const T* row = logp.data() + i * classes;
      const std::int64_t k = label_at(labels, i, classes);
      if (dx) add_logit_gradient(c.inputs, row, k, e, weight_sum, g, dx->data() + i * classes);
      if (dw) {
        T* wg = dw->data();
        wg[k] += static_cast<T>(g * ((1 - e) * -static_cast<double>(row[k]) - loss));
        if (e > 0)
          for (std::int64_t j = 0; j < classes; ++j) wg[j] += static_cast<T>(g * smooth * -static_cast<double>(row[j]));
      }
    }
  };
  r.print_params = [](const OpParams* p) {
    const double e = p ? params_as<CrossEntropyOpParams>(p).user.label_smoothing : 0.0;
    return e == 0 ? std::string() : fmt::format("label_smoothing={}", e);
  };
  // dlogits = dloss * cross_entropy_grad(logits, labels[, weights]) (Note [Cross-entropy's gradient op]).
  r.record_pullback = [](const RecordedPullbackCall<T>& c) {
    const bool weights = c.inputs.size() == 3;
    if (weights && (c.wants(2) || c.input(2).tape()->needs_grad(c.input(2).slot())))
      fail("cross_entropy", "class weights that need a gradient have no second order yet expected weights passed as "
                            "tg::data or a constant when the loss is differentiated twice");
    if (!c.wants(0)) return;
    const auto site = std::source_location::current();
    std::vector<Operand<T>> operands{Operand<T>(c.input(0), site), Operand<T>(c.input(1), site)};
    if (weights) operands.emplace_back(c.input(2), site);
    const Tracked<T> g = record_op(cross_entropy_grad_op<T>(), c.params ? std::make_shared<CrossEntropyOpParams>(params_as<CrossEntropyOpParams>(c.params)) : nullptr,
                                   std::span<const Operand<T>>(operands), site);
    c.contribute(0, g * c.output_adjoint);
  };
  r.save_params = [](const OpParams* p, ParamWriter& w) {
    if (p) w.f64(params_as<CrossEntropyOpParams>(p).user.label_smoothing);  // none: the bytes of a file from before
  };
  r.load_params = [](ParamReader& in) -> std::shared_ptr<const OpParams> {
    if (in.at_end()) return nullptr;  // a file from before label smoothing: no params
    auto p = std::make_shared<CrossEntropyOpParams>();
    p->user.label_smoothing = in.f64("label_smoothing");
    return p;
  };
  return r;
}

// Note [Cross-entropy's gradient op]: with p = softmax(logits) and, per row i,
// a_i = (1 - e) w[y_i] onehot(y_i) + e/C w and A_i = sum_c a_i[c], the
// cross-entropy's gradient is G = (A_i p_i - a_i) / W (Note [Cross-entropy as
// PyTorch]): cross_entropy_grad computes it, so that a recorded pullback can
// differentiate it again. Its own pullback in the logits is the softmax's
// Jacobian scaled per row, (A_i / W) p_i * (g_i - <p_i, g_i>); labels get
// none (Note [Labels are not differentiable]) and weights that need a
// gradient are refused when it is recorded. Recorded, that pullback is
// softmax and arithmetic ops times the rows' scales A_i / W, which the same op
// gives with row_scales set (an (N, 1) value that depends on the labels and
// weights only, so a replay on a new batch scales by the new labels).
template <class T>
OpInfo<T> cross_entropy_grad_row() {
  OpInfo<T> r;
  r.name = "cross_entropy_grad";
  r.arity = kVariadic;  // logits, labels, and optionally the class weights (C)
  r.n_saved = 1;        // log-softmax (N, C)
  r.flags = kPullbackIgnoresOutput;
  r.shape = [](const OpParams* p, std::span<const Shape* const> s) {
    check_cross_entropy(p, s);
    return row_scales_of(p) ? Shape{(*s[0])[0], 1} : *s[0];
  };
  r.forward = [](const ForwardCall<T>& c) {
    const Array<T>& x = *c.inputs[0];
    const std::int64_t n = x.shape()[0], classes = x.shape()[1];
    const double e = c.params ? params_as<CrossEntropyOpParams>(c.params).user.label_smoothing : 0.0;
    const auto [total_weight, weight_sum] = cross_entropy_weights(c.inputs, n, classes);
    if (!(total_weight != 0))
      fail("cross_entropy_grad", fmt::format("the weights of this batch's labels sum to {} expected a nonzero sum", total_weight));
    if (row_scales_of(c.params)) {
      for (std::int64_t i = 0; i < n; ++i) {
        const double wk = static_cast<double>(class_weight(c.inputs, label_at(*c.inputs[1], i, classes)));
        c.output.data()[i] = static_cast<T>(((1 - e) * wk + e / static_cast<double>(classes) * weight_sum) / total_weight);
      }
      return;
    }
    Array<T>& logp = c.saved[0];
    if (!(logp.shape() == x.shape())) logp = Array<T>::uninitialized(x.shape());
    kernels::softmax_forward<true>(x.data(), logp.data(), {n, classes, 1});
    c.output.fill(T(0));
    for (std::int64_t i = 0; i < n; ++i)
      add_logit_gradient(c.inputs, logp.data() + i * classes, label_at(*c.inputs[1], i, classes), e, weight_sum,
                         1 / total_weight, c.output.data() + i * classes);
  };
  r.pullback = [](const PullbackCall<T>& c) {
    if (c.input_adjoints.size() == 3 && c.input_adjoints[2])
      fail("cross_entropy_grad", "class weights that need a gradient have no second order yet expected weights passed as tg::data");
    Array<T>* dx = c.input_adjoints[0];
    if (!dx || row_scales_of(c.params)) return;  // the row scales do not depend on the logits
    const Array<T>& logp = c.saved[0];
    const std::int64_t n = logp.shape()[0], classes = logp.shape()[1];
    const double e = c.params ? params_as<CrossEntropyOpParams>(c.params).user.label_smoothing : 0.0;
    const auto [total_weight, weight_sum] = cross_entropy_weights(c.inputs, n, classes);
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t k = label_at(*c.inputs[1], i, classes);
      const double scale = ((1 - e) * static_cast<double>(class_weight(c.inputs, k)) + e / static_cast<double>(classes) * weight_sum) / total_weight;
      const T *row = logp.data() + i * classes, *g = c.output_adjoint.data() + i * classes;
      double dot = 0;
      for (std::int64_t j = 0; j < classes; ++j) dot += std::exp(static_cast<double>(row[j])) * static_cast<double>(g[j]);
      T* d = dx->data() + i * classes;
      for (std::int64_t j = 0; j < classes; ++j)
        d[j] += static_cast<T>(scale * std::exp(static_cast<double>(row[j])) * (static_cast<double>(g[j]) - dot));
    }
  };
  r.record_pullback = [](const RecordedPullbackCall<T>& c) {
    if (!c.wants(0) || row_scales_of(c.params)) return;
    const auto site = std::source_location::current();
    auto scales_params = std::make_shared<CrossEntropyOpParams>();
    if (c.params) *scales_params = params_as<CrossEntropyOpParams>(c.params);
    scales_params->row_scales = true;
    std::vector<Operand<T>> operands;
    for (const Tracked<T>* in : c.inputs) operands.emplace_back(*in, site);
    const Tracked<T> scales = record_op(cross_entropy_grad_op<T>(), std::move(scales_params), std::span<const Operand<T>>(operands), site);
    const Tracked<T> p = tg::softmax(c.input(0), 1), v = c.output_adjoint * scales;
    c.contribute(0, p * (v - tg::sum(p * v, {1}, true)));
  };
  r.print_params = [](const OpParams* p) {
    const std::string smoothing = cross_entropy_row<T>().print_params(p);
    if (!row_scales_of(p)) return smoothing;
    return smoothing.empty() ? std::string("row_scales") : smoothing + " row_scales";
  };
  // The row-scale flag only when set: the bytes of a gradient op saved before it are unchanged.
  r.save_params = [](const OpParams* p, ParamWriter& w) {
    w.f64(p ? params_as<CrossEntropyOpParams>(p).user.label_smoothing : 0.0);
    if (row_scales_of(p)) w.boolean(true);
  };
  r.load_params = [](ParamReader& in) -> std::shared_ptr<const OpParams> {
    auto p = std::make_shared<CrossEntropyOpParams>();
    p->user.label_smoothing = in.f64("label_smoothing");
    if (!in.at_end()) p->row_scales = in.boolean("row_scales");
    return p;
  };
  return r;
}

// The family's op table (Note [Op tables]).
#define TG_LOSS_ROWS(X) X(mse) X(cross_entropy) X(bce_with_logits) X(l1_loss) X(smooth_l1_loss) X(cross_entropy_grad)
TG_OP_TABLE(loss, TG_LOSS_ROWS)

template <class T>
Tracked<T> mse_tracked(const Operand<T>& pred, const Operand<T>& target, const std::source_location& where) {
  return record_op(mse_op<T>(), nullptr, {pred, target}, where);
}
std::shared_ptr<const OpParams> cross_entropy_params(const CrossEntropyParams& p) {
  if (p.label_smoothing == 0) return nullptr;  // the tape prints and saves as before label smoothing
  auto out = std::make_shared<CrossEntropyOpParams>();
  out->user = p;
  return out;
}
template <class T>
Tracked<T> cross_entropy_tracked(std::span<const Operand<T>> operands, const CrossEntropyParams& p, const std::source_location& where) {
  return record_op(cross_entropy_op<T>(), cross_entropy_params(p), operands, where);
}
template <class T>
Array<T> cross_entropy_eval(std::span<const Array<T>* const> inputs, const CrossEntropyParams& p, const std::source_location& where) {
  const auto params = cross_entropy_params(p);
  return evaluate_op(cross_entropy_op<T>(), params.get(), inputs, where);
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
#define TG_INSTANTIATE(T)                                                                                                      \
  template Tracked<T> cross_entropy_tracked(std::span<const Operand<T>>, const CrossEntropyParams&, const std::source_location&); \
  template Array<T> cross_entropy_eval(std::span<const Array<T>* const>, const CrossEntropyParams&, const std::source_location&);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE


}  // namespace tg::ops

namespace tg {

template <class T>
Array<T> mse(const Array<T>& pred, const Array<T>& target, std::source_location where) {
  return evaluate_op(ops::mse_op<T>(), nullptr, {&pred, &target}, where);
}
template <class T>
Tracked<T> cross_entropy(const Tracked<T>& logits, const std::vector<std::int64_t>& labels, const CrossEntropyParams& p,
                         std::source_location where) {
  if (logits.tape()->refuses_captures())
    throw Error("cross_entropy", fmt::format("labels given as a std::vector ({} labels) are copied into the tape, and a "
                            "replay would keep this batch's labels expected labels as an argument; hint: pass them "
                            "as tg::data(labels) (an Array of class indices), or copy them on purpose with "
                            "tg::constant(labels_array)",
                            labels.size()))
        .with_site(where);
  const Array<T> l = ops::labels_array<T>(labels);
  const Operand<T> operands[] = {Operand<T>(logits, where), Operand<T>(l, where)};
  return ops::cross_entropy_tracked<T>(operands, p, where);
}
template <class T>
Array<T> cross_entropy(const Array<T>& logits, const std::vector<std::int64_t>& labels, const CrossEntropyParams& p,
                       std::source_location where) {
  const Array<T> l = ops::labels_array<T>(labels);
  return cross_entropy(logits, l, p, where);
}

#define TG_INSTANTIATE(T)                                                                                  \
  template Array<T> mse(const Array<T>&, const Array<T>&, std::source_location);                           \
  template Tracked<T> cross_entropy(const Tracked<T>&, const std::vector<std::int64_t>&, const CrossEntropyParams&, \
                                    std::source_location);                                                 \
  template Array<T> cross_entropy(const Array<T>&, const std::vector<std::int64_t>&, const CrossEntropyParams&, std::source_location);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg
