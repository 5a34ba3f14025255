// ============================================================================
// correlate and convolve: border extension + valid N-D correlation, one
// instruction. The extended image is kept for the kernel gradient; the image
// gradient is the correlation's input adjoint folded back through the border.
// ============================================================================
#include "tapegrad/ops/filter.hpp"

#include "builtin_ops.hpp"
#include "op_table.hpp"
#include "assigned.hpp"
#include "recorded_pullbacks.hpp"

#include <fmt/format.h>

#include <array>
#include <optional>

#include "tapegrad/autodiff/record.hpp"

namespace tg {

const char* to_string(Output o) {
  switch (o) {
    case Output::same: return "same";
    case Output::valid: return "valid";
    case Output::full: return "full";
  }
  return "?";
}

namespace ops {

using kernels::ConvPass;

struct FilterOpParams : OpParams {
  FilterParams user;
  bool convolve = false;
  std::int64_t axis = -1;  // >= 0: a 1-D kernel along this axis
  // Resolved by the plan step (Note [Plans]) in the copy an instruction keeps.
  std::vector<std::int64_t> lo, hi;
  bool extended = false;  // whether the image is extended at all
  kernels::Correlation corr;
  std::array<ConvAlgorithm, 3> algorithm{};
  std::optional<kernels::BorderRows> rows;  // the passes by rows, with no extended copy (Note [Extended rows])
};

void check_separable(std::size_t factors, const Shape& image, const std::source_location& where) {
  if (factors != image.rank())
    throw Error("separable filter",
                fmt::format("{} factors for an image of shape {} expected one 1-D factor per dim ({})", factors,
                            to_string(image), image.rank()))
        .with_site(where);
}

namespace {

std::shared_ptr<FilterOpParams> make_params(const FilterParams& u, bool convolve, std::int64_t axis);
template <class T>
void filter_record_pullback(const RecordedPullbackCall<T>& c);

const char* op_name(const FilterOpParams& p) { return p.convolve ? "convolve" : "correlate"; }

// The kernel as a full-rank shape (a 1-D factor becomes 1 x .. x k x .. x 1).
Shape full_kernel_shape(const FilterOpParams& p, const Shape& image, const Shape& kernel) {
  const char* op = op_name(p);
  if (p.axis < 0) {
    if (kernel.rank() != image.rank() || image.rank() == 0)
      fail(op, fmt::format("kernel {} (rank {}) for image {} (rank {}) expected the same rank >= 1; hint: give the kernel "
                           "size 1 along axes it should not mix (e.g. a channel axis)",
                           to_string(kernel), kernel.rank(), to_string(image), image.rank()));
    return kernel;
  }
  if (kernel.rank() != 1)
    fail(op, fmt::format("separable factor {} for dim {} expected a 1-D kernel", to_string(kernel), p.axis));
  Shape k;
  for (std::size_t d = 0; d < image.rank(); ++d) k.push_back(static_cast<std::int64_t>(d) == p.axis ? kernel[0] : 1);
  return k;
}

// Extension of the image on each side of every dim (Note in filter.hpp: SciPy's centring).
void plan_extension(FilterOpParams& p, const Shape& image, const Shape& kernel) {
  const char* op = op_name(p);
  const FilterParams& u = p.user;
  const std::size_t rank = image.rank();
  if (static_cast<unsigned>(u.border.mode) > static_cast<unsigned>(BorderMode::circular))
    fail(op, fmt::format("border mode ({}) is not a BorderMode expected fill, replicate, reflect, symmetric or circular; "
                         "hint: use tg::Border::fill(v), replicate(), reflect(), symmetric() or circular()",
                         static_cast<int>(u.border.mode)));
  if (static_cast<unsigned>(u.output) > static_cast<unsigned>(Output::full))
    fail(op, fmt::format("output ({}) is not an Output expected same, valid or full", static_cast<int>(u.output)));
  if (!u.origin.empty() && u.output != Output::same)
    fail(op, fmt::format("origin [{}] with output {} expected an origin only with output same", fmt::join(u.origin, ","),
                         to_string(u.output)));
  check_dim_list(u.origin, rank, "origin", "dim", op);
  p.lo.assign(rank, 0);
  p.hi.assign(rank, 0);
  p.extended = false;
  for (std::size_t d = 0; d < rank; ++d) {
    const std::int64_t k = kernel[d];
    std::int64_t lo = 0;
    switch (u.output) {
      case Output::valid:
        if (image[d] < k)
          fail(op, fmt::format("kernel {} is larger than the image {} along dim {} with output valid expected kernel <= "
                               "image; hint: use output same or full",
                               to_string(kernel), to_string(image), d));
        break;
      case Output::full: lo = k - 1; break;
      case Output::same: {
        const std::int64_t origin = u.origin.empty() ? 0 : u.origin.size() == 1 ? u.origin[0] : u.origin[d];
        if (k == 1 && origin == 0) break;
        if (origin < -(k / 2) || origin > (k - 1) / 2)
          fail(op, fmt::format("origin {} along dim {} for a kernel of size {} expected in [{}, {}]", origin, d, k,
                               -(k / 2), (k - 1) / 2));
        const std::int64_t centre = k / 2 + origin;
        lo = p.convolve ? k - 1 - centre : centre;
        break;
      }
    }
    const std::int64_t hi = u.output == Output::valid ? 0 : u.output == Output::full ? k - 1 : k - 1 - lo;
    p.lo[d] = lo;
    p.hi[d] = hi;
    if (lo || hi) p.extended = true;
  }
}

// Resolves p (extension, geometry, algorithms) for the operand shapes s.
void resolve(FilterOpParams& p, std::span<const Shape* const> s) {
  const char* op = op_name(p);
  if (s.size() != 2 && s.size() != 3)
    fail(op, fmt::format("got {} inputs expected (image, kernel) or (image, kernel, fill value)", s.size()));
  const Shape& image = *s[0];
  for (std::size_t d = 0; d < image.rank(); ++d)
    if (image[d] < 1)
      fail(op, fmt::format("image {} is empty along dim {} expected every dim >= 1; hint: a border has nothing to extend",
                           to_string(image), d));
  if (p.axis >= static_cast<std::int64_t>(image.rank()))
    fail(op, fmt::format("separable axis {} for image {} expected < rank {}", p.axis, to_string(image), image.rank()));
  const Shape kernel = full_kernel_shape(p, image, *s[1]);
  if (s.size() == 3) {
    if (s[2]->size() != 1)
      fail(op, fmt::format("fill value has shape {} expected one element", to_string(*s[2])));
    if (p.user.border.mode != BorderMode::fill)
      fail(op, fmt::format("a fill value was given with border {} expected border fill", kernels::to_string(p.user.border.mode)));
  }
  plan_extension(p, image, kernel);
  Shape padded;
  for (std::size_t d = 0; d < image.rank(); ++d) padded.push_back(image[d] + p.lo[d] + p.hi[d]);
  p.corr = kernels::correlation_geometry(padded, kernel, p.convolve, op);
  const ConvAlgorithm want = p.user.algorithm;
  p.algorithm = {choose_conv_algorithm(p.corr.inner, ConvPass::forward, want, op),
                 choose_conv_algorithm(p.corr.inner, ConvPass::backward_input, want, op),
                 choose_conv_algorithm(p.corr.inner, ConvPass::backward_weight, want, op)};
  p.rows.reset();
  if (p.extended && kernels::rows_serve(p.corr, p.algorithm))
    p.rows = kernels::border_rows(p.corr, image, std::span<const std::int64_t>(p.lo), p.user.border.mode);
}

Plan plan(const FilterOpParams& given, std::span<const Shape* const> s) {
  auto resolved = std::make_shared<FilterOpParams>(given);
  resolve(*resolved, s);
  Shape out = resolved->corr.out;
  return {std::move(out), std::move(resolved)};
}

template <class T>
T fill_value(const FilterOpParams& p, std::span<const Array<T>* const> inputs) {
  return inputs.size() == 3 ? inputs[2]->data()[0] : static_cast<T>(p.user.border.value);
}

// The filter's buffers and passes, shared with its gradient ops.
template <class T>
Array<T>& workspace(Array<T>& a, const Shape& shape) {
  if (a.shape() != shape) a = Array<T>::uninitialized(shape);
  return a;
}

// out (the image's shape, when not null) = Pᵀ corrᵀ_x(gy, k), added to out with
// accumulate; the fill value's adjoint added to gfill (when not null).
template <class T>
void image_adjoint(const FilterOpParams& p, const Shape& image, const T* gy, const T* k, Array<T>& gext, T* out,
                   bool accumulate, T* gfill = nullptr) {
  if (p.rows) return kernels::rows_backward_input(*p.rows, gy, k, out, gfill, accumulate);
  if (!p.extended) {
    if (out) kernels::correlate_backward_input(p.corr, p.algorithm[1], gy, k, out, accumulate);
    return;
  }
  workspace(gext, p.corr.padded);
  kernels::correlate_backward_input(p.corr, p.algorithm[1], gy, k, gext.data(), /*accumulate=*/false);
  kernels::border_pad_adjoint(gext.data(), image, std::span<const std::int64_t>(p.lo), std::span<const std::int64_t>(p.hi),
                              p.user.border.mode, out, gfill, accumulate);
}

// The image extended by the border (fill value `fill`) into ext; the image itself when not extended.
template <class T>
const T* extend(const FilterOpParams& p, const Array<T>& image, Array<T>& ext, T fill) {
  if (!p.extended) return image.data();
  workspace(ext, p.corr.padded);
  kernels::border_pad(image.data(), image.shape(), std::span<const std::int64_t>(p.lo), std::span<const std::int64_t>(p.hi),
                      p.user.border.mode, fill, ext.data());
  return ext.data();
}

// y (+= with accumulate) = the filter of image (fill value `fill`) by k: by
// rows, or from the extended image xp (made in ext when null).
template <class T>
void filter_pass(const FilterOpParams& p, const Array<T>& image, T fill, const T* k, Array<T>& ext, T* y, bool accumulate,
                 const T* xp = nullptr) {
  if (p.rows) return kernels::rows_forward(*p.rows, image.data(), fill, k, y, accumulate);
  kernels::correlate_forward(p.corr, p.algorithm[0], xp ? xp : extend(p, image, ext, fill), k, y, accumulate);
}

// gk += the kernel's adjoint of gy for image (fill value `fill`): by rows, or
// from the extended image xp (made in ext when null).
template <class T>
void kernel_adjoint(const FilterOpParams& p, const Array<T>& image, T fill, const T* gy, Array<T>& ext, T* gk,
                    const T* xp = nullptr) {
  if (p.rows) return kernels::rows_backward_weight(*p.rows, image.data(), fill, gy, gk);
  kernels::correlate_backward_weight(p.corr, p.algorithm[2], xp ? xp : extend(p, image, ext, fill), gy, gk);
}


// The user's params, the same fields in the filter's and its gradient ops' records.
void save_filter_params(const FilterOpParams& p, ParamWriter& w) {
  w.enumeration(p.user.border.mode);
  w.f64(p.user.border.value);
  w.enumeration(p.user.output);
  w.list(p.user.origin);
  w.enumeration(p.user.algorithm);
  w.i64(p.axis);
}
std::shared_ptr<FilterOpParams> load_filter_params(ParamReader& in, bool convolve) {
  FilterParams u;
  u.border.mode = in.enumeration("border", BorderMode::circular);
  u.border.value = in.f64("fill value");
  u.output = in.enumeration("output", Output::full);
  u.origin = in.list("origin");
  u.algorithm = in.enumeration("algorithm", ConvAlgorithm::winograd);
  const std::int64_t axis = in.i64("axis");
  return make_params(u, convolve, axis);
}
// "axis=0 border=fill(0.5) output=same origin=[1]": the geometry's part of a print.
std::string print_geometry(const FilterOpParams& p) {
  const FilterParams& u = p.user;
  std::string border = kernels::to_string(u.border.mode);
  if (u.border.mode == BorderMode::fill) border += fmt::format("({})", u.border.value);
  return fmt::format("{}border={} output={}{}", p.axis >= 0 ? fmt::format("axis={} ", p.axis) : "", border, to_string(u.output),
                     u.origin.empty() ? std::string() : fmt::format(" origin=[{}]", fmt::join(u.origin, ",")));
}

template <class T>
OpInfo<T> filter_family_row(bool convolve) {
  OpInfo<T> r;
  r.name = convolve ? "convolve" : "correlate";
  r.arity = kVariadic;
  // saved[0]: the extended image; saved[1]: its adjoint's workspace (both empty when the
  // image is not extended; kept across replays so a replayed pullback allocates nothing).
  r.n_saved = 2;
  r.flags = kPullbackCanAssign;  // the image's adjoint is written, not zeroed and added to
  r.plan = [](const OpParams* p, std::span<const Shape* const> s) { return plan(params_as<FilterOpParams>(p), s); };
  r.flops = [](const OpParams* p, std::span<const Shape* const>, const Shape&) {
    return 2.0 * params_as<FilterOpParams>(p).corr.inner.macs();
  };
  r.forward = [](const ForwardCall<T>& c) {
    const auto& p = params_as<FilterOpParams>(c.params);
    filter_pass(p, *c.inputs[0], fill_value(p, c.inputs), c.inputs[1]->data(), c.saved[0], c.output.data(), false);
  };
  r.pullback = [](const PullbackCall<T>& c) {
    const auto& p = params_as<FilterOpParams>(c.params);
    const Array<T>& image = *c.inputs[0];
    const T* xp = p.extended && !p.rows ? c.saved[0].data() : image.data();  // the forward's extended image
    Array<T>* gx = c.input_adjoints[0];
    T* gfill = c.input_adjoints.size() == 3 && c.input_adjoints[2] ? c.input_adjoints[2]->data() : nullptr;
    zero_if_assigned(c, 1);  // the kernel's and the fill value's adjoints are small: zeroed, then added to
    if (gfill) zero_if_assigned(c, 2);
    if (c.input_adjoints[1])
      kernel_adjoint(p, image, fill_value(p, c.inputs), c.output_adjoint.data(), c.saved[0], c.input_adjoints[1]->data(), xp);
    if (gx || gfill)  // the extended image's adjoint, folded back through the border
      image_adjoint(p, image.shape(), c.output_adjoint.data(), c.inputs[1]->data(), c.saved[1], gx ? gx->data() : nullptr,
                    /*accumulate=*/!c.assigns(0), gfill);
  };
  r.print_params = [](const OpParams* params) {
    const auto& p = params_as<FilterOpParams>(params);
    return fmt::format("{} algorithm={}/{}/{}{}", print_geometry(p), kernels::to_string(p.algorithm[0]),
                       kernels::to_string(p.algorithm[1]), kernels::to_string(p.algorithm[2]), p.rows ? " by_rows" : "");
  };
  r.save_params = [](const OpParams* params, ParamWriter& w) { save_filter_params(params_as<FilterOpParams>(params), w); };
  r.load_params = [convolve](ParamReader& in) { return load_filter_params(in, convolve); };
  r.record_pullback = &filter_record_pullback<T>;
  return r;
}

// ---- the filter's gradient ops: its recorded pullback ----
//
// Note [The filter's gradient ops]: with the fill value a constant f, the filter
// is y = corr(P x + f e, k) (P the border extension with fill 0, e the fill's
// positions), linear in x and in k. Its pullback is two ops:
//   filter_image_grad(gy, k)  = Pᵀ corrᵀ_x(gy, k)          (image's shape)
//   filter_kernel_grad(x, gy) = corrᵀ_k(P x + f e, gy)     (kernel's shape)
// and reading <gy, y> three ways gives their pullbacks from the same three ops:
//   image_grad, adjoint u:  gy += filter₀(u, k),   k += kernel_grad₀(u, gy)
//   kernel_grad, adjoint v: x += image_grad(gy, v), gy += filter(x, v)
// where ₀ is fill 0: the image's part of the filter is the linear map P, not
// the affine P x + f e. The ops keep the filter's params (resolved against the
// filter's image and kernel shapes), so every border, output mode, origin,
// separable axis and algorithm carries over. A fill value passed as an input
// is the filter with fill 1 of a zero image, times the fill (below).
// Rejected: composing the gradients from pad and conv ops, which has no pad
// for the symmetric border and reads the extended image twice.
struct FilterGradOpParams : FilterOpParams {
  Shape result;  // image_grad: the filter's image shape; kernel_grad: its kernel shape
};

std::shared_ptr<FilterGradOpParams> make_grad_params(const FilterOpParams& filter, const Shape& result, bool fill_zero) {
  auto p = std::make_shared<FilterGradOpParams>();
  static_cast<FilterOpParams&>(*p) = filter;
  if (fill_zero) p->user.border.value = 0;
  p->result = result;
  return p;
}

// image_grad's inputs (gy, k) or kernel_grad's (x, gy): the filter's shapes
// resolve the params, and gy must be the filter's output shape.
Plan plan_grad(const FilterGradOpParams& given, std::span<const Shape* const> s, bool image_grad) {
  auto resolved = std::make_shared<FilterGradOpParams>(given);
  FilterGradOpParams& p = *resolved;
  const std::string op = fmt::format("{}_{}_grad", op_name(p), image_grad ? "image" : "kernel");
  if (s.size() != 2) fail(op.c_str(), fmt::format("got {} inputs expected {}", s.size(), image_grad ? "(gy, kernel)" : "(image, gy)"));
  if (image_grad) p.user.border.value = 0;  // the image's part is linear: no fill value (Note [The filter's gradient ops])
  const Shape* filter_shapes[] = {image_grad ? &p.result : s[0], image_grad ? s[1] : &p.result};
  resolve(p, filter_shapes);
  const Shape& gy = *s[image_grad ? 0 : 1];
  if (gy != p.corr.out)
    fail(op.c_str(), fmt::format("gy has shape {} expected the filter's output shape {} for image {} and kernel {}",
                                 to_string(gy), to_string(p.corr.out), to_string(*filter_shapes[0]), to_string(*filter_shapes[1])));
  Shape out = p.result;
  return {std::move(out), std::move(resolved)};
}

template <class T>
Tracked<T> record_filter(const Tracked<T>& x, const Tracked<T>& k, const FilterOpParams& p, bool fill_zero) {
  FilterParams u = p.user;
  if (fill_zero) u.border.value = 0;
  const auto where = std::source_location::current();
  const Operand<T> operands[] = {Operand<T>(x, where), Operand<T>(k, where)};
  return filter_tracked<T>(operands, u, p.convolve, p.axis, where);
}

template <class T>
Tracked<T> record_image_grad(const Tracked<T>& gy, const Tracked<T>& k, const FilterOpParams& p, const Shape& image);
template <class T>
Tracked<T> record_kernel_grad(const Tracked<T>& x, const Tracked<T>& gy, const FilterOpParams& p, const Shape& kernel,
                              bool fill_zero);

// A fill value f passed as an input: y = corr(P x, k) + f corr(e, k), and
// corr(e, k) is the filter with fill 1 of a zero image (the frame alone), so
// k's adjoint gains f kernel_grad₁(0, gy) and f's is <gy, filter₁(0, k)>.
template <class T>
void filter_record_pullback(const RecordedPullbackCall<T>& c) {
  const auto& p = params_as<FilterOpParams>(c.params);
  const Tracked<T>&x = c.input(0), &k = c.input(1), &gy = c.output_adjoint;
  const bool fill_input = c.inputs.size() == 3;
  if (c.wants(0)) c.contribute(0, record_image_grad(gy, k, p, x.shape()));
  if (!fill_input) {
    if (c.wants(1)) c.contribute(1, record_kernel_grad(x, gy, p, k.shape(), false));
    return;
  }
  FilterOpParams frame = p;
  frame.user.border.value = 1;
  const Tracked<T> zero_image = tg::constant(Array<T>::zeros(x.shape()));
  const Tracked<T> fill = tg::reshape(c.input(2), Shape{});
  if (c.wants(1))
    c.contribute(1, record_kernel_grad(x, gy, p, k.shape(), true) + fill * record_kernel_grad(zero_image, gy, frame, k.shape(), false));
  if (c.wants(2)) c.contribute(2, tg::reshape(tg::sum(gy * record_filter(zero_image, k, frame, false)), c.input(2).shape()));
}

template <class T>
void grad_op_hooks(OpInfo<T>& r, bool image_grad) {
  r.arity = 2;
  r.flags = kPullbackIgnoresOutput;  // bilinear in its two inputs
  r.n_saved = 2;                     // an extended image and an adjoint's workspace
  r.plan = [image_grad](const OpParams* p, std::span<const Shape* const> s) {
    return plan_grad(params_as<FilterGradOpParams>(p), s, image_grad);
  };
  r.flops = [](const OpParams* p, std::span<const Shape* const>, const Shape&) {
    return 2.0 * params_as<FilterGradOpParams>(p).corr.inner.macs();
  };
  r.print_params = [](const OpParams* params) {
    const auto& p = params_as<FilterGradOpParams>(params);
    return fmt::format("of={} {}={} {}", op_name(p), p.corr.out == p.result ? "shape" : "result", to_string(p.result),
                       print_geometry(p));
  };
  r.save_params = [](const OpParams* params, ParamWriter& w) {
    const auto& p = params_as<FilterGradOpParams>(params);
    w.i64(p.convolve ? 1 : 0);
    save_filter_params(p, w);
    w.list(p.result.dims());
  };
  r.load_params = [](ParamReader& in) {
    const bool convolve = in.i64("convolve") != 0;
    const auto filter = load_filter_params(in, convolve);
    const Shape result(std::span<const std::int64_t>(in.list("result shape")));
    return std::static_pointer_cast<const OpParams>(make_grad_params(*filter, result, false));
  };
}

template <class T>
OpInfo<T> filter_image_grad_row() {
  OpInfo<T> r;
  r.name = "filter_image_grad";
  grad_op_hooks(r, true);
  r.forward = [](const ForwardCall<T>& c) {  // inputs (gy, k)
    const auto& p = params_as<FilterGradOpParams>(c.params);
    image_adjoint(p, p.result, c.inputs[0]->data(), c.inputs[1]->data(), c.saved[0], c.output.data(), false);
  };
  r.pullback = [](const PullbackCall<T>& c) {  // u = the output adjoint, an image
    const auto& p = params_as<FilterGradOpParams>(c.params);
    const Array<T>& u = c.output_adjoint;  // its border's fill is 0 (Note [The filter's gradient ops])
    const T* up = p.rows ? nullptr : extend(p, u, c.saved[1], T(0));
    if (c.input_adjoints[0]) filter_pass(p, u, T(0), c.inputs[1]->data(), c.saved[1], c.input_adjoints[0]->data(), true, up);
    if (c.input_adjoints[1]) kernel_adjoint(p, u, T(0), c.inputs[0]->data(), c.saved[1], c.input_adjoints[1]->data(), up);
  };
  r.record_pullback = [](const RecordedPullbackCall<T>& c) {
    const auto& p = params_as<FilterGradOpParams>(c.params);
    const Tracked<T>&gy = c.input(0), &k = c.input(1), &u = c.output_adjoint;
    if (c.wants(0)) c.contribute(0, record_filter(u, k, p, true));
    if (c.wants(1)) c.contribute(1, record_kernel_grad(u, gy, p, k.shape(), true));
  };
  return r;
}

template <class T>
OpInfo<T> filter_kernel_grad_row() {
  OpInfo<T> r;
  r.name = "filter_kernel_grad";
  grad_op_hooks(r, false);
  r.forward = [](const ForwardCall<T>& c) {  // inputs (x, gy)
    const auto& p = params_as<FilterGradOpParams>(c.params);
    c.output.fill(T(0));
    kernel_adjoint(p, *c.inputs[0], static_cast<T>(p.user.border.value), c.inputs[1]->data(), c.saved[0], c.output.data());
  };
  r.pullback = [](const PullbackCall<T>& c) {  // v = the output adjoint, a kernel
    const auto& p = params_as<FilterGradOpParams>(c.params);
    const T* v = c.output_adjoint.data();
    if (c.input_adjoints[1]) {
      const Array<T>& x = *c.inputs[0];
      filter_pass(p, x, static_cast<T>(p.user.border.value), v, c.saved[0], c.input_adjoints[1]->data(), true,
                  p.extended ? c.saved[0].data() : x.data());  // the forward's extended image
    }
    if (c.input_adjoints[0])
      image_adjoint(p, c.inputs[0]->shape(), c.inputs[1]->data(), v, c.saved[1], c.input_adjoints[0]->data(), true);
  };
  r.record_pullback = [](const RecordedPullbackCall<T>& c) {
    const auto& p = params_as<FilterGradOpParams>(c.params);
    const Tracked<T>&x = c.input(0), &gy = c.input(1), &v = c.output_adjoint;
    if (c.wants(0)) c.contribute(0, record_image_grad(gy, v, p, x.shape()));
    if (c.wants(1)) c.contribute(1, record_filter(x, v, p, false));
  };
  return r;
}

std::shared_ptr<FilterOpParams> make_params(const FilterParams& u, bool convolve, std::int64_t axis) {
  auto p = std::make_shared<FilterOpParams>();
  p->user = u;
  p->convolve = convolve;
  p->axis = axis;
  return p;
}

}  // namespace

template <class T>
OpInfo<T> correlate_row() {
  return filter_family_row<T>(false);
}
template <class T>
OpInfo<T> convolve_row() {
  return filter_family_row<T>(true);
}

// The family's op table (Note [Op tables]).
#define TG_FILTER_ROWS(X) X(correlate) X(convolve) X(filter_image_grad) X(filter_kernel_grad)
TG_OP_TABLE(filter, TG_FILTER_ROWS)

namespace {
template <class T>
Tracked<T> record_image_grad(const Tracked<T>& gy, const Tracked<T>& k, const FilterOpParams& p, const Shape& image) {
  const auto where = std::source_location::current();
  const Operand<T> operands[] = {Operand<T>(gy, where), Operand<T>(k, where)};
  return record_op<T>(filter_image_grad_op<T>(), make_grad_params(p, image, true), operands, where);
}

template <class T>
Tracked<T> record_kernel_grad(const Tracked<T>& x, const Tracked<T>& gy, const FilterOpParams& p, const Shape& kernel,
                              bool fill_zero) {
  const auto where = std::source_location::current();
  const Operand<T> operands[] = {Operand<T>(x, where), Operand<T>(gy, where)};
  return record_op<T>(filter_kernel_grad_op<T>(), make_grad_params(p, kernel, fill_zero), operands, where);
}
}  // namespace

template <class T>
Tracked<T> filter_tracked(std::span<const Operand<T>> operands, const FilterParams& p, bool convolve, std::int64_t axis,
                          const std::source_location& where) {
  return record_op((convolve ? convolve_op<T>() : correlate_op<T>()), make_params(p, convolve, axis), operands, where);
}

template <class T>
Array<T> filter_eval(std::span<const Array<T>* const> inputs, const FilterParams& p, bool convolve, std::int64_t axis,
                     const std::source_location& where) {
  const auto params = make_params(p, convolve, axis);
  return evaluate_op((convolve ? convolve_op<T>() : correlate_op<T>()), params.get(), inputs, where);
}

template <class T>
Tracked<T> filter_image_grad_tracked(const Operand<T>& gy, const Operand<T>& k, const FilterParams& p, bool convolve,
                                     std::int64_t axis, const Shape& image, const std::source_location& where) {
  const Operand<T> operands[] = {gy, k};
  return record_op<T>(filter_image_grad_op<T>(), make_grad_params(*make_params(p, convolve, axis), image, false), operands, where);
}

template <class T>
Tracked<T> filter_kernel_grad_tracked(const Operand<T>& x, const Operand<T>& gy, const FilterParams& p, bool convolve,
                                      std::int64_t axis, const Shape& kernel, const std::source_location& where) {
  const Operand<T> operands[] = {x, gy};
  return record_op<T>(filter_kernel_grad_op<T>(), make_grad_params(*make_params(p, convolve, axis), kernel, false), operands, where);
}

#define TG_INSTANTIATE(T)                                                                                        \
  template Tracked<T> filter_image_grad_tracked(const Operand<T>&, const Operand<T>&, const FilterParams&, bool,  \
                                                std::int64_t, const Shape&, const std::source_location&);       \
  template Tracked<T> filter_kernel_grad_tracked(const Operand<T>&, const Operand<T>&, const FilterParams&, bool, \
                                                 std::int64_t, const Shape&, const std::source_location&);      \
  template Tracked<T> filter_tracked(std::span<const Operand<T>>, const FilterParams&, bool, std::int64_t,       \
                                     const std::source_location&);                                               \
  template Array<T> filter_eval(std::span<const Array<T>* const>, const FilterParams&, bool, std::int64_t,       \
                                const std::source_location&);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE


}  // namespace ops
}  // namespace tg
