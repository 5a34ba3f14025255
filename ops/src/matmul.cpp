// ============================================================================
// matmul, batched with broadcasting. Forward and both pullbacks are GEMMs.
// ============================================================================
#include "tapegrad/ops/matmul.hpp"

#include "assigned.hpp"
#include "builtin_ops.hpp"
#include "op_table.hpp"
#include "recorded_pullbacks.hpp"

#include <fmt/format.h>

#include "tapegrad/autodiff/record.hpp"
#include "tapegrad/kernels/gemm.hpp"
#include "tapegrad/kernels/strided.hpp"

namespace tg::ops {
namespace {

// Validated once per call: matrix sizes and the broadcast batch.
struct MatmulGeometry {
  std::int64_t m, k, n;
  Shape batch;            // broadcast batch shape
  Strides a_step, b_step;  // per batch index, in elements of a and b (0 where broadcast)
};

Shape leading(const Shape& s) { return Shape(std::span<const std::int64_t>(s.data(), s.rank() - 2)); }

MatmulGeometry matmul_geometry(const Shape& a, const Shape& b) {
  if (a.rank() < 2 || b.rank() < 2)
    fail("matmul", fmt::format("operands have shapes {} and {} expected rank >= 2 for both; hint: reshape a vector to (1, n) or (n, 1)",
                               to_string(a), to_string(b)));
  MatmulGeometry g;
  g.m = a[a.rank() - 2];
  g.k = a.back();
  g.n = b.back();
  if (b[b.rank() - 2] != g.k)
    fail("matmul", fmt::format("inner dimensions ({}) and ({}) of shapes {} and {} must match; hint: transpose one operand",
                               g.k, b[b.rank() - 2], to_string(a), to_string(b)));
  const Shape ba = leading(a), bb = leading(b);
  g.batch = broadcast_shapes(ba, bb, "matmul");
  g.a_step = broadcast_strides(ba, g.batch);
  g.b_step = broadcast_strides(bb, g.batch);
  for (std::size_t i = 0; i < g.batch.rank(); ++i) {
    g.a_step[i] *= g.m * g.k;
    g.b_step[i] *= g.k * g.n;
  }
  return g;
}

// Calls f(a_offset, b_offset, c_offset) for every batch element.
template <class F>
void for_each_batch(const MatmulGeometry& g, F f) {
  const Strides c_step = [&] {
    Strides s = contiguous_strides(g.batch);
    for (std::size_t i = 0; i < s.rank(); ++i) s[i] *= g.m * g.n;
    return s;
  }();
  kernels::for_each_run<3>(g.batch, {&g.a_step, &g.b_step, &c_step},
                           [&](std::int64_t count, const kernels::Offsets<3>& o, const kernels::Offsets<3>& s) {
                             for (std::int64_t i = 0; i < count; ++i) f(o[0] + i * s[0], o[1] + i * s[1], o[2] + i * s[2]);
                           });
}

}  // namespace

template <class T>
OpInfo<T> matmul_row() {
  OpInfo<T> r;
  r.name = "matmul";
  r.arity = 2;
  r.flags = kPullbackIgnoresOutput | kPullbackCanAssign;
  r.shape = [](const OpParams*, std::span<const Shape* const> s) {
    const auto g = matmul_geometry(*s[0], *s[1]);
    Shape out = g.batch;
    out.push_back(g.m);
    out.push_back(g.n);
    return out;
  };
  r.flops = [](const OpParams*, std::span<const Shape* const> s, const Shape& out) {
    return 2.0 * double(out.size()) * double(s[0]->back());  // a multiply and an add per (output, k)
  };
  r.forward = [](const ForwardCall<T>& c) {
    const T *A = c.inputs[0]->data(), *B = c.inputs[1]->data();
    const auto g = matmul_geometry(c.inputs[0]->shape(), c.inputs[1]->shape());
    for_each_batch(g, [&](std::int64_t oa, std::int64_t ob, std::int64_t oc) {
      // C (m x n) = A (m x k) . B (k x n)
      kernels::gemm(false, false, g.m, g.n, g.k, T(1), A + oa, g.k, B + ob, g.n, T(0), c.output.data() + oc, g.n);
    });
  };
  r.pullback = [](const PullbackCall<T>& c) {
    const T *A = c.inputs[0]->data(), *B = c.inputs[1]->data(), *dC = c.output_adjoint.data();
    const auto g = matmul_geometry(c.inputs[0]->shape(), c.inputs[1]->shape());
    Array<T>*dA = c.input_adjoints[0], *dB = c.input_adjoints[1];
    // An assigned adjoint (Note [Assigned adjoints]) is written with beta 0 when each
    // batch has a block of its own; a broadcast operand's blocks sum batches: zeroed first.
    const std::int64_t batches = c.output.size() / std::max<std::int64_t>(1, g.m * g.n);
    auto beta_for = [&](std::size_t i, std::int64_t block) {
      if (!c.assigns(i)) return T(1);
      if (c.inputs[i]->size() == batches * block) return T(0);
      zero_if_assigned(c, i);
      return T(1);
    };
    const T beta_a = dA ? beta_for(0, g.m * g.k) : T(1), beta_b = dB ? beta_for(1, g.k * g.n) : T(1);
    for_each_batch(g, [&](std::int64_t oa, std::int64_t ob, std::int64_t oc) {
      // dA (m x k) (+)= dC (m x n) . B^T (n x k); broadcast batches fold by accumulation
      if (dA) kernels::gemm(false, true, g.m, g.k, g.n, T(1), dC + oc, g.n, B + ob, g.n, beta_a, dA->data() + oa, g.k);
      // dB (k x n) (+)= A^T (k x m) . dC (m x n)
      if (dB) kernels::gemm(true, false, g.k, g.n, g.m, T(1), A + oa, g.k, dC + oc, g.n, beta_b, dB->data() + ob, g.n);
    });
  };
  // The same products as ops; recorded_by_input sums broadcast batches.
  r.record_pullback = recorded_by_input<T>(
      [](const RecordedPullbackCall<T>& c) {
        const auto site = std::source_location::current();
        return matmul_tracked<T>(Operand<T>(c.output_adjoint, site), Operand<T>(tg::transpose(c.input(1)), site), site);
      },
      [](const RecordedPullbackCall<T>& c) {
        const auto site = std::source_location::current();
        return matmul_tracked<T>(Operand<T>(tg::transpose(c.input(0)), site), Operand<T>(c.output_adjoint, site), site);
      });
  return r;
}

// The family's op table (Note [Op tables]).
#define TG_MATMUL_ROWS(X) X(matmul)
TG_OP_TABLE(matmul, TG_MATMUL_ROWS)

template <class T>
Tracked<T> matmul_tracked(const Operand<T>& a, const Operand<T>& b, const std::source_location& where) {
  return record_op(matmul_op<T>(), nullptr, {a, b}, where);
}
template Tracked<float> matmul_tracked(const Operand<float>&, const Operand<float>&, const std::source_location&);
template Tracked<double> matmul_tracked(const Operand<double>&, const Operand<double>&, const std::source_location&);


}  // namespace tg::ops

namespace tg {
template <class T>
Array<T> matmul(const Array<T>& a, const Array<T>& b, std::source_location where) {
  return evaluate_op(ops::matmul_op<T>(), nullptr, {&a, &b}, where);
}
template Array<float> matmul(const Array<float>&, const Array<float>&, std::source_location);
template Array<double> matmul(const Array<double>&, const Array<double>&, std::source_location);
}  // namespace tg
