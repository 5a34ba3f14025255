// ============================================================================
// conv and conv_transpose. One validated geometry (kernels::ConvGeometry) is
// shared by the forward kernel and both backward kernels; the algorithm of
// each pass is resolved once, when the instruction is recorded.
//
// conv_transpose is the adjoint of conv: for the conv whose input has the
// transpose's output shape and whose output has the transpose's input shape,
//   transpose forward          = conv_backward_input
//   transpose pullback wrt x   = conv_forward        (of the output adjoint)
//   transpose pullback wrt w   = conv_backward_weight (input = output adjoint, gy = x)
// ============================================================================
#include "tapegrad/ops/conv.hpp"

#include "assigned.hpp"
#include "folding.hpp"
#include "builtin_ops.hpp"
#include "op_table.hpp"
#include "recorded_pullbacks.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>

#include "tapegrad/autodiff/record.hpp"
#include "tapegrad/kernels/scratch.hpp"

namespace tg::ops {

using kernels::ConvGeometry;
using kernels::ConvPass;

struct ConvOpParams : OpParams {
  ConvParams user;
  bool transpose = false;
  // Resolved by the plan step (Note [Plans]) in the copy an instruction keeps.
  ConvGeometry geometry;
  std::array<ConvAlgorithm, 3> algorithm{};  // the kernels' passes: forward, backward_input, backward_weight
  // Note [Folded norms]: set by the compiler's fold_norms pass: the conv also
  // applies an evaluation-mode batch_norm, whose gamma, beta, running mean and
  // variance follow its own inputs (x, w[, bias]).
  struct FoldedNorm {
    bool on = false;
    bool bias = false;  // the conv has a bias input
    double eps = 0;
  } folded;
};

// The weight gradient of a conv as an op of its own (Note [Recorded pullbacks]):
// conv_weight_grad(x, gy) = d<gy, conv(x, w)>/dw, of w's shape. It is what a
// conv's recorded pullback gives the weights, and it is bilinear in (x, gy), so
// its own pullbacks are a conv_transpose and a conv by the weight adjoint.
struct ConvWeightGradParams : OpParams {
  ConvParams user;  // the conv's (no output_padding)
  Shape weight;     // (K, C/groups, kernel...)
  // Resolved by the plan step: the conv's geometry and its three passes.
  ConvGeometry geometry;
  std::array<ConvAlgorithm, 3> algorithm{};
};

template <class T>
const OpInfo<T>& conv_weight_grad_op();

namespace {

std::shared_ptr<ConvOpParams> make_params(const ConvParams& p, bool transpose);

void save_conv_params(const ConvParams& u, ParamWriter& w) {
  for (const auto* list : {&u.stride, &u.padding, &u.pad_lo, &u.pad_hi, &u.dilation, &u.output_padding}) w.list(*list);
  w.i64(u.groups);
  w.boolean(u.flip);
  for (auto a : {u.algorithm, u.forward_algorithm, u.backward_input_algorithm, u.backward_weight_algorithm}) w.enumeration(a);
}

ConvParams load_conv_params(ParamReader& in) {
  ConvParams u;
  u.stride = in.list("stride");
  u.padding = in.list("padding");
  u.pad_lo = in.list("pad_lo");
  u.pad_hi = in.list("pad_hi");
  u.dilation = in.list("dilation");
  u.output_padding = in.list("output_padding");
  u.groups = in.i64("groups");
  u.flip = in.boolean("flip");
  u.algorithm = in.enumeration("algorithm", ConvAlgorithm::winograd);
  u.forward_algorithm = in.enumeration("forward_algorithm", ConvAlgorithm::winograd);
  u.backward_input_algorithm = in.enumeration("backward_input_algorithm", ConvAlgorithm::winograd);
  u.backward_weight_algorithm = in.enumeration("backward_weight_algorithm", ConvAlgorithm::winograd);
  return u;
}

const char* op_name(bool transpose) { return transpose ? "conv_transpose" : "conv"; }

kernels::ConvSpec spec_of(const ConvParams& p) {
  kernels::ConvSpec s;
  s.stride = p.stride;
  s.dilation = p.dilation;
  s.pad_lo = p.pad_lo.empty() ? p.padding : p.pad_lo;
  s.pad_hi = p.pad_hi.empty() ? p.padding : p.pad_hi;
  s.groups = p.groups;
  s.flip = p.flip;
  return s;
}

void check_bias(const Shape& b, std::int64_t channels, const char* op) {
  if (b.rank() != 1 || b[0] != channels)
    fail(op, fmt::format("bias has shape {} expected ({}), one value per output channel", to_string(b), channels));
}

ConvAlgorithm requested(const ConvParams& p, ConvAlgorithm per_pass) {
  return per_pass != ConvAlgorithm::automatic ? per_pass : p.algorithm;
}

// The request for each of the kernels' passes (forward, backward_input,
// backward_weight); a transpose's own forward is the kernels' backward_input.
std::array<ConvAlgorithm, 3> kernel_requests(const ConvOpParams& cp) {
  const ConvParams& p = cp.user;
  const ConvAlgorithm fwd = requested(p, p.forward_algorithm), bin = requested(p, p.backward_input_algorithm),
                      bw = requested(p, p.backward_weight_algorithm);
  return cp.transpose ? std::array{bin, fwd, bw} : std::array{fwd, bin, bw};
}

// Resolves geometry and algorithms into a copy of the params (Note [Plans]).
Plan plan(const ConvOpParams& given, std::span<const Shape* const> s) {
  auto resolved = std::make_shared<ConvOpParams>(given);
  ConvOpParams& cp = *resolved;
  const char* op = op_name(cp.transpose);
  if (s.size() != 2 && s.size() != 3)
    fail(op, fmt::format("got {} inputs expected (x, w) or (x, w, bias)", s.size()));
  const ConvParams& p = cp.user;
  if (!cp.transpose && std::any_of(p.output_padding.begin(), p.output_padding.end(), [](std::int64_t v) { return v != 0; }))
    fail(op, fmt::format("output_padding [{}] on a conv expected none: it sizes a conv_transpose's output; hint: use "
                         "padding or pad_hi for a conv",
                         fmt::join(p.output_padding, ",")));
  const ConvGeometry g = cp.transpose ? kernels::conv_transpose_geometry(*s[0], *s[1], spec_of(p), p.output_padding, op)
                                      : kernels::conv_geometry(*s[0], *s[1], spec_of(p), op);
  if (s.size() == 3) check_bias(*s[2], cp.transpose ? g.C : g.K, op);
  cp.geometry = g;
  const auto request = kernel_requests(cp);
  for (std::size_t pass = 0; pass < 3; ++pass)
    cp.algorithm[pass] = choose_conv_algorithm(g, static_cast<ConvPass>(pass), request[pass], op);
  return {cp.transpose ? conv_input_shape(g) : conv_output_shape(g), std::move(resolved)};
}

// Note [Tuned algorithms]: the kernels' passes this instruction runs, each left
// automatic by the user, take the measured fastest algorithm
// (kernels::tune_conv_algorithm) in a copy of the params.
template <class T>
std::shared_ptr<const OpParams> tune(const OpParams* params, std::uint32_t needs_grad) {
  const auto& cp = params_as<ConvOpParams>(params);
  const bool gx = (needs_grad & 1u) != 0, gw = (needs_grad & 2u) != 0;
  // forward, backward_input, backward_weight: which of them run
  const std::array<bool, 3> runs = cp.transpose ? std::array{gx, true, gw} : std::array{true, gx, gw};
  const auto request = kernel_requests(cp);
  auto tuned = std::make_shared<ConvOpParams>(cp);
  for (std::size_t pass = 0; pass < 3; ++pass)
    if (runs[pass] && request[pass] == ConvAlgorithm::automatic)
      tuned->algorithm[pass] = kernels::tune_conv_algorithm<T>(cp.geometry, static_cast<ConvPass>(pass));
  return tuned;
}

// Runs a fused activation (an EpilogueCall) for kernels::OutputEpilogue.
template <class T>
void activation_trampoline(const void* context, T* values, std::int64_t n) {
  const auto* e = static_cast<const EpilogueCall<T>*>(context);
  e->activation->fusion->epilogue_forward(e->params, values, n);
}

// y[n, k, ...] += bias[k]
template <class T>
void add_bias(const T* bias, T* y, std::int64_t n, std::int64_t channels, std::int64_t plane) {
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t k = 0; k < channels; ++k) {
      T* p = y + (i * channels + k) * plane;
      for (std::int64_t j = 0; j < plane; ++j) p[j] += bias[k];
    }
}

// Runs a fused activation's pullback (an EpilogueCall) for kernels::AdjointPrologue.
template <class T>
void pullback_trampoline(const void* context, const T* y, T* dy, std::int64_t n) {
  const auto* e = static_cast<const EpilogueCall<T>*>(context);
  e->activation->fusion->epilogue_pullback(e->params, y, dy, n);
}

// Applies a fused activation's pullback to the output adjoint in place. With a
// weight gradient to compute (not transposed), that pass computes it and the
// bias gradient too, as it packs the adjoint: returns true. Otherwise it is a
// pass of its own: returns false.
template <class T>
bool fold_into_weight_pass(const PullbackCall<T>& c, const EpilogueCall<T>& activation, Array<T>& adjoint,
                           const ConvOpParams& cp, Array<T>* gw, Array<T>* gbias) {
  const ConvGeometry& g = cp.geometry;
  kernels::AdjointPrologue<T> prologue{c.output.data(), &pullback_trampoline<T>, &activation, nullptr};
  T* gy = adjoint.data();
  if (cp.transpose || !gw) {
    kernels::apply_adjoint_prologue(gy, adjoint.size(), prologue);
    return false;
  }
  prologue.bias_grad = gbias ? gbias->data() : nullptr;
  kernels::conv_backward_weight_folded(g, cp.algorithm[2], c.inputs[0]->data(), gy, gw->data(), prologue);
  return true;
}

// y = conv(x, w) (+ bias); a fused activation (compiled programs) runs on each
// block of outputs as it is stored.
template <class T>
void conv_forward_call(const ForwardCall<T>& c, const EpilogueCall<T>* activation) {
  const auto& cp = params_as<ConvOpParams>(c.params);
  const ConvGeometry& g = cp.geometry;
  const T *x = c.inputs[0]->data(), *w = c.inputs[1]->data();
  T* y = c.output.data();
  const T* bias = c.inputs.size() == 3 ? c.inputs[2]->data() : nullptr;
  if (!cp.transpose) {
    // Bias and a fused activation run inside the kernel's output loop (Note [Epilogues]).
    kernels::OutputEpilogue<T> epilogue{bias, nullptr, activation};
    if (activation) epilogue.activation = &activation_trampoline<T>;
    const bool any = bias || activation;
    kernels::conv_forward(g, cp.algorithm[0], x, w, y, /*accumulate=*/false, any ? &epilogue : nullptr);
    return;
  }
  c.output.fill(T(0));
  kernels::conv_backward_input(g, cp.algorithm[1], x, w, y);
  if (bias) add_bias(bias, y, g.N, g.C, g.in_vol());
  if (activation) activation->activation->fusion->epilogue_forward(activation->params, y, c.output.size());
}

// The input, weight and bias gradients; with a fused activation (compiled
// programs), its pullback first turns `adjoint` (the output adjoint's buffer) into the conv's.
template <class T>
void conv_pullback_call(const PullbackCall<T>& c, const EpilogueCall<T>* activation, Array<T>* adjoint) {
  const auto& cp = params_as<ConvOpParams>(c.params);
  const ConvGeometry& g = cp.geometry;
  const T *x = c.inputs[0]->data(), *w = c.inputs[1]->data(), *gout = c.output_adjoint.data();
  Array<T>*gx = c.input_adjoints[0], *gw = c.input_adjoints[1];
  Array<T>* gbias = c.input_adjoints.size() == 3 ? c.input_adjoints[2] : nullptr;
  // gx is written when assigned (Note [Assigned adjoints]); the weight and bias passes add.
  const bool add_gx = !c.assigns(0);
  for (std::size_t i = 1; i < c.input_adjoints.size(); ++i) zero_if_assigned(c, i);
  // A fused activation's pullback (compiled programs, Note [Adjoint prologue]) runs as
  // the weight gradient packs the adjoint, with the bias gradient; first, since gx reads its result.
  if (activation && fold_into_weight_pass(c, *activation, *adjoint, cp, gw, gbias)) {
    gw = nullptr;
    gbias = nullptr;
  }
  if (!cp.transpose && gw && gbias) {  // the bias gradient's row sums as the weight pass reads gy
    kernels::conv_backward_weight_and_bias(g, cp.algorithm[2], x, gout, gw->data(), gbias->data());
    gw = nullptr;
    gbias = nullptr;
  }
  if (!cp.transpose) {
    if (gx) kernels::conv_backward_input(g, cp.algorithm[1], gout, w, gx->data(), add_gx);
    if (gw) kernels::conv_backward_weight(g, cp.algorithm[2], x, gout, gw->data());
  } else {
    if (gx) kernels::conv_forward(g, cp.algorithm[0], gout, w, gx->data(), add_gx);
    if (gw) kernels::conv_backward_weight(g, cp.algorithm[2], gout, x, gw->data());
  }
  if (gbias)
    kernels::conv_bias_backward(gout, gbias->data(), g.N, cp.transpose ? g.C : g.K, cp.transpose ? g.in_vol() : g.out_vol());
}

// Note [Folded norms]: with s = gamma / sqrt(var + eps) per output channel,
//   batch_norm(conv(x, w) + b) = conv(x, s w) + s (b - mean) + beta,
// so the forward runs the conv on folded weights and bias (scratch, computed
// on every run from the current inputs). The pullback runs the conv's on them
// with raw weight and bias gradients dW', db' (of the folded conv), then
//   dw = s dW',  db = s db',  dbeta = db',  dgamma = invstd (<w, dW'> + (b - mean) db')
// per channel: <w, dW'> is the sum of dy * conv(x, w) (the conv is bilinear), so
// no pre-normalisation activation is kept.
template <class T>
struct Folded {
  Array<T> w, b;                   // views of scratch: s w and s (b - mean) + beta
  std::span<T> invstd;             // 1 / sqrt(var + eps)
  std::size_t gamma = 0;           // index of gamma among the inputs (beta, mean, var follow)
};

template <class T>
Folded<T> fold(const ConvOpParams& cp, std::span<const Array<T>* const> in, kernels::ScratchScope& scratch) {
  Folded<T> f;
  f.gamma = cp.folded.bias ? 3 : 2;
  const Array<T>& w = *in[1];
  const std::int64_t k = w.shape()[0], row = w.size() / std::max<std::int64_t>(k, 1);
  const T *gamma = in[f.gamma]->data(), *beta = in[f.gamma + 1]->data(), *mean = in[f.gamma + 2]->data(),
          *var = in[f.gamma + 3]->data();
  const T* bias = cp.folded.bias ? in[2]->data() : nullptr;
  f.w = Array<T>::borrowed(w.shape(), scratch.take<T>(w.size()).data());
  f.b = Array<T>::borrowed(Shape{k}, scratch.take<T>(k).data());
  f.invstd = scratch.take<T>(k);
  for (std::int64_t c = 0; c < k; ++c) {
    const double inv = 1.0 / std::sqrt(static_cast<double>(var[c]) + cp.folded.eps);
    const double s = static_cast<double>(gamma[c]) * inv;
    f.invstd[c] = static_cast<T>(inv);
    for (std::int64_t j = 0; j < row; ++j) f.w.data()[c * row + j] = static_cast<T>(s * static_cast<double>(w.data()[c * row + j]));
    f.b.data()[c] = static_cast<T>(s * (static_cast<double>(bias ? bias[c] : T(0)) - static_cast<double>(mean[c])) +
                                   static_cast<double>(beta[c]));
  }
  return f;
}

template <class T>
void folded_forward(const ForwardCall<T>& c, const EpilogueCall<T>* activation) {
  kernels::ScratchScope scratch;
  const Folded<T> f = fold(params_as<ConvOpParams>(c.params), c.inputs, scratch);
  const Array<T>* in[] = {c.inputs[0], &f.w, &f.b};
  conv_forward_call<T>({c.params, in, c.output, c.saved}, activation);
}

template <class T>
void folded_pullback(const PullbackCall<T>& c, const EpilogueCall<T>* activation, Array<T>* adjoint) {
  const auto& cp = params_as<ConvOpParams>(c.params);
  kernels::ScratchScope scratch;
  const Folded<T> f = fold(cp, c.inputs, scratch);
  const std::size_t gi = f.gamma;
  Array<T>*gw = c.input_adjoints[1], *gb = cp.folded.bias ? c.input_adjoints[2] : nullptr;
  Array<T>*ggamma = c.input_adjoints[gi], *gbeta = c.input_adjoints[gi + 1];
  const bool parameters = gw || gb || ggamma || gbeta;
  const Array<T>& w = *c.inputs[1];
  const std::int64_t k = w.shape()[0], row = w.size() / std::max<std::int64_t>(k, 1);
  Array<T> dw = Array<T>::borrowed(w.shape(), scratch.take<T>(w.size()).data());
  Array<T> db = Array<T>::borrowed(Shape{k}, scratch.take<T>(k).data());
  Array<T>* adj[] = {c.input_adjoints[0], parameters ? &dw : nullptr, parameters ? &db : nullptr};
  const Array<T>* in[] = {c.inputs[0], &f.w, &f.b};
  const std::uint32_t assign = (c.assigns(0) ? 1u : 0u) | 6u;  // dw and db hold stale scratch
  conv_pullback_call<T>({c.params, in, c.output, c.output_adjoint, adj, c.saved, assign}, activation, adjoint);
  if (!parameters) return;
  for (std::size_t i = 1; i < c.input_adjoints.size(); ++i) zero_if_assigned(c, i);
  const T *gamma = c.inputs[gi]->data(), *mean = c.inputs[gi + 2]->data();
  const T* bias = cp.folded.bias ? c.inputs[2]->data() : nullptr;
  for (std::int64_t ch = 0; ch < k; ++ch) {
    const double inv = static_cast<double>(f.invstd[ch]), s = static_cast<double>(gamma[ch]) * inv;
    const T* dw_row = dw.data() + ch * row;
    if (gw)
      for (std::int64_t j = 0; j < row; ++j) gw->data()[ch * row + j] += static_cast<T>(s * static_cast<double>(dw_row[j]));
    if (gb) gb->data()[ch] += static_cast<T>(s * static_cast<double>(db.data()[ch]));
    if (gbeta) gbeta->data()[ch] += db.data()[ch];
    if (ggamma) {
      double w_dot = 0;
      for (std::int64_t j = 0; j < row; ++j) w_dot += static_cast<double>(w.data()[ch * row + j]) * static_cast<double>(dw_row[j]);
      const double centred = static_cast<double>(bias ? bias[ch] : T(0)) - static_cast<double>(mean[ch]);
      ggamma->data()[ch] += static_cast<T>(inv * (w_dot + centred * static_cast<double>(db.data()[ch])));
    }
  }
}

template <class T>
void conv_forward_any(const ForwardCall<T>& c, const EpilogueCall<T>* activation) {
  if (params_as<ConvOpParams>(c.params).folded.on) return folded_forward(c, activation);
  conv_forward_call(c, activation);
}
template <class T>
void conv_pullback_any(const PullbackCall<T>& c, const EpilogueCall<T>* activation, Array<T>* adjoint) {
  if (params_as<ConvOpParams>(c.params).folded.on) return folded_pullback(c, activation, adjoint);
  conv_pullback_call(c, activation, adjoint);
}

std::string print_list(const char* name, const std::vector<std::int64_t>& v) {
  return v.empty() ? std::string() : fmt::format(" {}=[{}]", name, fmt::join(v, ","));
}

template <class T>
void conv_record_pullback(const RecordedPullbackCall<T>& c);

template <class T>
OpInfo<T> conv_family_row(bool transpose) {
  OpInfo<T> r;
  r.name = op_name(transpose);
  r.arity = kVariadic;
  // bilinear in (x, w), not linear in each jointly
  r.flags = kPullbackIgnoresOutput | kPullbackCanAssign;
  r.plan = [](const OpParams* p, std::span<const Shape* const> s) { return plan(params_as<ConvOpParams>(p), s); };
  r.flops = [](const OpParams* p, std::span<const Shape* const>, const Shape&) {
    return 2.0 * params_as<ConvOpParams>(p).geometry.macs();
  };
  r.forward = [](const ForwardCall<T>& c) { conv_forward_any<T>(c, nullptr); };
  r.pullback = [](const PullbackCall<T>& c) { conv_pullback_any<T>(c, nullptr, nullptr); };
  // Note [Fusion hooks]: a fused activation runs in the forward's output loop,
  // its pullback in the weight gradient's packing of the output adjoint.
  Fusion<T> fusion;
  fusion.forward_with_epilogue = [](const ForwardCall<T>& c, const EpilogueCall<T>& e) { conv_forward_any(c, &e); };
  fusion.pullback_with_epilogue = [](const PullbackCall<T>& c, const EpilogueCall<T>& e, Array<T>& adjoint) {
    conv_pullback_any(c, &e, &adjoint);
  };
  r.fusion = std::make_shared<const Fusion<T>>(std::move(fusion));
  r.tune = &tune<T>;
  r.print_params = [](const OpParams* p) {
    const auto& cp = params_as<ConvOpParams>(p);
    const ConvParams& u = cp.user;
    // The op's passes: for a transpose its forward is the kernels' backward_input.
    const auto& a = cp.algorithm;
    const ConvAlgorithm fwd = cp.transpose ? a[1] : a[0], bin = cp.transpose ? a[0] : a[1];
    std::string out = fmt::format(
        "{}{}{}{}{}{}{}{} algorithm={}/{}/{}", print_list("stride", u.stride), print_list("padding", u.padding),
        print_list("pad_lo", u.pad_lo), print_list("pad_hi", u.pad_hi), print_list("dilation", u.dilation),
        u.groups != 1 ? fmt::format(" groups={}", u.groups) : "", u.flip ? " flip" : "",
        print_list("output_padding", u.output_padding), kernels::to_string(fwd), kernels::to_string(bin),
        kernels::to_string(a[2]));
    if (cp.folded.on) out += fmt::format(" +batch_norm[eval eps={}]", cp.folded.eps);
    return out.substr(1);  // without the leading space
  };
  r.save_params = [](const OpParams* p, ParamWriter& w) { save_conv_params(params_as<ConvOpParams>(p).user, w); };
  r.load_params = [transpose](ParamReader& in) { return make_params(load_conv_params(in), transpose); };
  r.record_pullback = &conv_record_pullback<T>;
  return r;
}


// The user's conv params for a conv recorded by a recorded pullback: the same
// geometry, the algorithms left to the cost rule (the passes map differently),
// and the output padding that sizes a conv_transpose's output to `in`.
ConvParams recorded_conv_params(const ConvParams& user, const ConvGeometry& g, bool sized_transpose) {
  ConvParams p = user;
  p.algorithm = p.forward_algorithm = p.backward_input_algorithm = p.backward_weight_algorithm = ConvAlgorithm::automatic;
  p.output_padding.clear();
  if (sized_transpose)
    for (int d = ConvGeometry::kMaxSpatial - g.spatial; d < ConvGeometry::kMaxSpatial; ++d)
      p.output_padding.push_back(g.in[d] - ((g.out[d] - 1) * g.stride[d] - g.lo[d] - g.hi[d] + g.dil[d] * (g.ker[d] - 1) + 1));
  return p;
}

// Sums over the batch and spatial dims: the bias gradient.
template <class T>
Tracked<T> channel_sums(const Tracked<T>& gy) {
  Axes axes{0};
  for (std::int64_t d = 2; d < std::int64_t(gy.rank()); ++d) axes.push_back(d);
  return tg::sum(gy, axes);
}

template <class T>
Tracked<T> record_conv(const Tracked<T>& x, const Tracked<T>& w, const ConvParams& p, bool transpose) {
  const auto where = std::source_location::current();
  const Operand<T> operands[] = {Operand<T>(x, where), Operand<T>(w, where)};
  return conv_tracked<T>(operands, p, transpose, where);
}

// conv: gx = conv_transpose(gy, w), gw = conv_weight_grad(x, gy), gbias = channel sums of gy.
// conv_transpose (the adjoint of the conv from its output's shape to x's):
// gx = conv(gy, w), gw = conv_weight_grad(gy, x), gbias likewise.
template <class T>
void conv_record_pullback(const RecordedPullbackCall<T>& c) {
  const auto& cp = params_as<ConvOpParams>(c.params);
  if (cp.folded.on) fail("conv", "a conv with a folded batch_norm has no recorded pullback expected a recorded conv");
  const ConvGeometry& g = cp.geometry;
  const Tracked<T>&x = c.input(0), &w = c.input(1), &gy = c.output_adjoint;
  const ConvParams plain = recorded_conv_params(cp.user, g, false);
  if (c.wants(0))
    c.contribute(0, cp.transpose ? record_conv(gy, w, plain, false) : record_conv(gy, w, recorded_conv_params(cp.user, g, true), true));
  if (c.wants(1))
    c.contribute(1, cp.transpose ? conv_weight_grad_tracked<T>(gy, x, plain, w.shape(), std::source_location::current())
                                 : conv_weight_grad_tracked<T>(x, gy, plain, w.shape(), std::source_location::current()));
  if (c.wants(2)) c.contribute(2, channel_sums(gy));
}

Plan plan_weight_grad(const ConvWeightGradParams& given, std::span<const Shape* const> s) {
  auto resolved = std::make_shared<ConvWeightGradParams>(given);
  ConvWeightGradParams& wp = *resolved;
  constexpr const char* op = "conv_weight_grad";
  if (s.size() != 2) fail(op, fmt::format("got {} inputs expected (x, gy)", s.size()));
  const ConvGeometry g = kernels::conv_geometry(*s[0], wp.weight, spec_of(wp.user), op);
  if (conv_output_shape(g) != *s[1])
    fail(op, fmt::format("gy has shape {} expected the conv's output shape {} for x {} and weights {}", to_string(*s[1]),
                         to_string(conv_output_shape(g)), to_string(*s[0]), to_string(wp.weight)));
  wp.geometry = g;
  for (std::size_t pass = 0; pass < 3; ++pass)  // the cost rule's (recorded_conv_params leaves every pass automatic)
    wp.algorithm[pass] = choose_conv_algorithm(g, static_cast<ConvPass>(pass), ConvAlgorithm::automatic, op);
  return {wp.weight, std::move(resolved)};
}

std::shared_ptr<ConvOpParams> make_params(const ConvParams& p, bool transpose) {
  auto cp = std::make_shared<ConvOpParams>();
  cp->user = p;
  cp->transpose = transpose;
  return cp;
}

}  // namespace

std::shared_ptr<const OpParams> conv_with_folded_norm(const OpParams* conv_params, std::size_t conv_inputs, double eps) {
  const auto& cp = params_as<ConvOpParams>(conv_params);
  if (cp.transpose || cp.folded.on) return nullptr;
  auto out = std::make_shared<ConvOpParams>(cp);
  out->folded = {true, conv_inputs == 3, eps};
  return out;
}

template <class T>
OpInfo<T> conv_row() {
  return conv_family_row<T>(false);
}
template <class T>
OpInfo<T> conv_transpose_row() {
  return conv_family_row<T>(true);
}

template <class T>
OpInfo<T> conv_weight_grad_row() {
  OpInfo<T> r;
  r.name = "conv_weight_grad";
  r.arity = 2;
  r.flags = kPullbackIgnoresOutput;  // bilinear in (x, gy)
  r.plan = [](const OpParams* p, std::span<const Shape* const> s) { return plan_weight_grad(params_as<ConvWeightGradParams>(p), s); };
  r.flops = [](const OpParams* p, std::span<const Shape* const>, const Shape&) {
    return 2.0 * params_as<ConvWeightGradParams>(p).geometry.macs();
  };
  r.forward = [](const ForwardCall<T>& c) {
    const auto& wp = params_as<ConvWeightGradParams>(c.params);
    c.output.fill(T(0));
    kernels::conv_backward_weight(wp.geometry, wp.algorithm[2], c.inputs[0]->data(), c.inputs[1]->data(), c.output.data());
  };
  // With gw_bar the output adjoint: x gets the conv's input gradient of gy by
  // gw_bar, gy gets the conv of x by gw_bar.
  r.pullback = [](const PullbackCall<T>& c) {
    const auto& wp = params_as<ConvWeightGradParams>(c.params);
    const T* gw_bar = c.output_adjoint.data();
    if (c.input_adjoints[0])
      kernels::conv_backward_input(wp.geometry, wp.algorithm[1], c.inputs[1]->data(), gw_bar, c.input_adjoints[0]->data(), true);
    if (c.input_adjoints[1])
      kernels::conv_forward(wp.geometry, wp.algorithm[0], c.inputs[0]->data(), gw_bar, c.input_adjoints[1]->data(), true);
  };
  r.record_pullback = [](const RecordedPullbackCall<T>& c) {
    const auto& wp = params_as<ConvWeightGradParams>(c.params);
    if (c.wants(0))
      c.contribute(0, record_conv(c.input(1), c.output_adjoint, recorded_conv_params(wp.user, wp.geometry, true), true));
    if (c.wants(1)) c.contribute(1, record_conv(c.input(0), c.output_adjoint, wp.user, false));
  };
  r.print_params = [](const OpParams* p) {
    const auto& wp = params_as<ConvWeightGradParams>(p);
    const ConvParams& u = wp.user;
    return fmt::format("weight={}{}{}{}{}{}{}{} algorithm={}", to_string(wp.weight), print_list("stride", u.stride),
                       print_list("padding", u.padding), print_list("pad_lo", u.pad_lo), print_list("pad_hi", u.pad_hi),
                       print_list("dilation", u.dilation), u.groups != 1 ? fmt::format(" groups={}", u.groups) : "",
                       u.flip ? " flip" : "", kernels::to_string(wp.algorithm[2]));
  };
  r.save_params = [](const OpParams* p, ParamWriter& w) {
    const auto& wp = params_as<ConvWeightGradParams>(p);
    save_conv_params(wp.user, w);
    w.list(wp.weight.dims());
  };
  r.load_params = [](ParamReader& in) {
    auto wp = std::make_shared<ConvWeightGradParams>();
    wp->user = load_conv_params(in);
    wp->weight = Shape(std::span<const std::int64_t>(in.list("weight")));
    return wp;
  };
  return r;
}

// The family's op table (Note [Op tables]).
#define TG_CONV_ROWS(X) X(conv) X(conv_transpose) X(conv_weight_grad)
TG_OP_TABLE(conv, TG_CONV_ROWS)

template <class T>
Tracked<T> conv_tracked(std::span<const Operand<T>> operands, const ConvParams& p, bool transpose,
                        const std::source_location& where) {
  return record_op((transpose ? conv_transpose_op<T>() : conv_op<T>()), make_params(p, transpose), operands, where);
}

template <class T>
Tracked<T> conv_weight_grad_tracked(const Operand<T>& x, const Operand<T>& gy, const ConvParams& p, const Shape& weight,
                                    const std::source_location& where) {
  auto wp = std::make_shared<ConvWeightGradParams>();
  wp->user = p;
  wp->weight = weight;
  return record_op(conv_weight_grad_op<T>(), std::move(wp), {x, gy}, where);
}

template <class T>
Array<T> conv_eval(std::span<const Array<T>* const> inputs, const ConvParams& p, bool transpose,
                   const std::source_location& where) {
  const auto cp = make_params(p, transpose);
  return evaluate_op((transpose ? conv_transpose_op<T>() : conv_op<T>()), cp.get(), inputs, where);
}

#define TG_INSTANTIATE(T)                                                                                          \
  template Tracked<T> conv_tracked(std::span<const Operand<T>>, const ConvParams&, bool, const std::source_location&); \
  template Tracked<T> conv_weight_grad_tracked(const Operand<T>&, const Operand<T>&, const ConvParams&, const Shape&,        \
                                               const std::source_location&);                                             \
  template Array<T> conv_eval(std::span<const Array<T>* const>, const ConvParams&, bool, const std::source_location&);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE


}  // namespace tg::ops
