// find_nonfinite and check_instructions (debug.hpp).
#include "tapegrad/autodiff/debug.hpp"

#include <cmath>
#include <limits>
#include <random>

#include <fmt/format.h>

#include "tapegrad/autodiff/dump.hpp"

namespace tg {

template <class T>
ValueStats value_stats(const Array<T>& a) {
  ValueStats s;
  s.size = a.size();
  double sum = 0;
  std::int64_t finite = 0;
  s.min = std::numeric_limits<double>::infinity();
  s.max = -std::numeric_limits<double>::infinity();
  for (std::int64_t i = 0; i < a.size(); ++i) {
    const double v = static_cast<double>(a.data()[i]);
    if (!std::isfinite(v)) {
      ++s.nonfinite;
      continue;
    }
    s.min = std::min(s.min, v);
    s.max = std::max(s.max, v);
    sum += v;
    ++finite;
  }
  s.mean = finite ? sum / double(finite) : std::numeric_limits<double>::quiet_NaN();
  if (!finite) s.min = s.max = std::numeric_limits<double>::quiet_NaN();
  return s;
}

namespace {

std::string stats_text(const ValueStats& s) {
  return fmt::format("min {:.4g} max {:.4g} mean {:.4g} ({} of {} not finite)", s.min, s.max, s.mean, s.nonfinite, s.size);
}

template <class T>
NonfiniteReport report(const Tape<T>& tape, std::size_t i, bool in_adjoint, const ValueStats& value) {
  const Instr<T>& ins = tape.instruction(i);
  NonfiniteReport r;
  r.found = true;
  r.in_adjoint = in_adjoint;
  r.instruction = i;
  r.equation = equation(tape, ins);
  r.site = site_string(ins.where);
  r.value = value;
  for (auto a : tape.args_of(ins)) r.inputs.push_back(value_stats(tape.value(a)));
  return r;
}

}  // namespace

std::string NonfiniteReport::summary() const {
  if (!found) return "no NaN or Inf: every value and adjoint is finite\n";
  std::string out = fmt::format("first non-finite {} instruction {}: {}   # {}\n  {}: {}\n",
                                in_adjoint ? "adjoint: written by the pullback of" : "value: the output of", instruction,
                                equation, site, in_adjoint ? "input adjoint" : "output", stats_text(value));
  for (std::size_t k = 0; k < inputs.size(); ++k) out += fmt::format("  input {}: {}\n", k, stats_text(inputs[k]));
  return out;
}

template <class T>
NonfiniteReport find_nonfinite(Tape<T>& tape) {
  tape.run_forward();  // guards are not the question here
  for (std::size_t i = 0; i < tape.num_instructions(); ++i) {
    const ValueStats s = value_stats(tape.value(tape.instruction(i).out));
    if (s.nonfinite) return report(tape, i, false, s);
  }
  if (tape.output() == Tape<T>::kNoSlot) return {};
  // The reverse pass by hand, checking what each pullback writes as it runs.
  std::vector<Array<T>> adjoint(tape.num_slots());
  std::vector<std::uint8_t> live(tape.num_slots(), 0);
  auto fresh = [&](std::uint32_t slot) -> Array<T>& {
    if (!live[slot]) adjoint[slot] = Array<T>(tape.value(slot).shape()), live[slot] = 1;
    return adjoint[slot];
  };
  fresh(tape.output()).fill(T(1));
  for (std::size_t i = tape.num_instructions(); i-- > 0;) {
    const Instr<T>& ins = tape.instruction(i);
    if (!live[ins.out] || !tape.needs_grad(ins.out)) continue;
    std::vector<const Array<T>*> in;
    std::vector<Array<T>*> grads;
    for (auto a : tape.args_of(ins)) {
      in.push_back(&tape.value(a));
      grads.push_back(tape.needs_grad(a) ? &fresh(a) : nullptr);
    }
    const auto recorded = tape.saved_of(ins);
    std::vector<Array<T>> saved(recorded.begin(), recorded.end());
    try {
      ins.op->pullback({ins.params.get(), in, tape.value(ins.out), adjoint[ins.out], grads, saved});
    } catch (const Error& e) {
      throw e.with_site(ins.where);
    }
    for (Array<T>* g : grads) {
      if (!g) continue;
      const ValueStats s = value_stats(*g);
      if (s.nonfinite) return report(tape, i, true, s);
    }
  }
  return {};
}

// ---- per-instruction gradient check -----------------------------------------------

const InstructionCheck* InstructionCheckReport::first_failure() const {
  for (const auto& c : instructions)
    if (!c.passed) return &c;
  return nullptr;
}

std::string InstructionCheckReport::summary() const {
  std::string out;
  std::size_t checked = 0;
  for (const auto& c : instructions) checked += c.checked;
  const InstructionCheck* bad = first_failure();
  out += bad ? fmt::format("pullback of instruction {} disagrees with finite differences of its forward: max abs error "
                           "{:.3g}, max rel error {:.3g} (input {}, element {})\n  {}   # {}\n",
                           bad->instruction, bad->max_abs_error, bad->max_rel_error, bad->worst_input, bad->worst_element,
                           bad->equation, bad->site)
             : fmt::format("every pullback agrees with finite differences ({} of {} instructions had something to check)\n",
                           checked, instructions.size());
  for (const auto& c : instructions)
    out += fmt::format("  {:>4} {:<7} rel {:9.2e}  {}   # {}\n", c.instruction,
                       !c.checked ? "-" : c.passed ? "ok" : "FAILED", c.max_rel_error, c.equation, c.site);
  return out;
}

namespace {

double dot(const Array<double>& a, const Array<double>& b) {
  double s = 0;
  for (std::int64_t i = 0; i < a.size(); ++i) s += a.data()[i] * b.data()[i];
  return s;
}

// One instruction, in double: its forward on `inputs`, and <v, forward>.
struct Instruction {
  const OpInfo<double>* op;
  const OpParams* params;
  Shape out_shape;

  Array<double> forward(const std::vector<Array<double>>& inputs) const {
    std::vector<const Array<double>*> in;
    for (const auto& x : inputs) in.push_back(&x);
    Array<double> y = Array<double>::uninitialized(out_shape);
    std::vector<Array<double>> saved(static_cast<std::size_t>(op->n_saved));
    op->forward({params, in, y, saved});
    return y;
  }
};

template <class T>
InstructionCheck check_one(const Tape<T>& tape, std::size_t i, const InstructionCheckOptions& o) {
  const Instr<T>& ins = tape.instruction(i);
  InstructionCheck c;
  c.instruction = i;
  c.equation = equation(tape, ins);
  c.site = site_string(ins.where);
  const OpInfo<double>* op;
  if constexpr (std::is_same_v<T, double>) op = ins.op;
  else op = Registry<double>::find(ins.op->name);
  const auto args = tape.args_of(ins);
  bool any = false;
  for (auto a : args) any = any || tape.needs_grad(a);
  if (!op || !any) return c;  // no double row (a float-only custom op), or nothing differentiable
  c.checked = true;
  const Instruction f{op, ins.params.get(), tape.value(ins.out).shape()};
  std::vector<Array<double>> x;
  for (auto a : args) x.push_back(tape.value(a).template cast<double>());
  // J^T v through the pullback.
  std::vector<const Array<double>*> in;
  for (const auto& xi : x) in.push_back(&xi);
  Array<double> y = Array<double>::uninitialized(f.out_shape);
  std::vector<Array<double>> saved(static_cast<std::size_t>(op->n_saved));
  op->forward({f.params, in, y, saved});
  const Array<double> v = Array<double>::random_uniform(f.out_shape, -1.0, 1.0, o.seed + i);
  std::vector<Array<double>> grads;
  std::vector<Array<double>*> grad_ptr;
  for (std::size_t k = 0; k < args.size(); ++k) grads.emplace_back(x[k].shape());
  for (std::size_t k = 0; k < args.size(); ++k) grad_ptr.push_back(tape.needs_grad(args[k]) ? &grads[k] : nullptr);
  op->pullback({f.params, in, y, v, grad_ptr, saved});
  // Central differences of <v, f> on elements spread over each differentiable input.
  const double base = dot(v, y);
  for (std::size_t k = 0; k < args.size(); ++k) {
    if (!grad_ptr[k]) continue;
    const std::int64_t n = x[k].size(), count = std::min(n, o.elements_per_input);
    for (std::int64_t j = 0; j < count; ++j) {
      const std::int64_t e = j * n / count;
      double& xe = x[k].data()[e];
      const double saved_x = xe, h = o.step * std::max(1.0, std::abs(saved_x));
      double plus, minus;
      try {  // an input the forward refuses to perturb (integer labels) is not differentiable: skip it
        xe = saved_x + h;
        plus = dot(v, f.forward(x));
        xe = saved_x - h;
        minus = dot(v, f.forward(x));
        xe = saved_x;
      } catch (const Error&) {
        xe = saved_x;
        break;
      }
      // At a kink (relu at 0, a tie in a max window) the one-sided slopes differ: no derivative to check there.
      const double slope_up = (plus - base) / h, slope_down = (base - minus) / h;
      if (std::abs(slope_up - slope_down) > 1e-3 * std::max({1.0, std::abs(slope_up), std::abs(slope_down)})) continue;
      const double numeric = (plus - minus) / (2 * h), analytic = grads[k].data()[e];
      const double abs_err = std::abs(analytic - numeric);
      const double scale = std::max(std::abs(analytic), std::abs(numeric));
      const double rel_err = scale > 0 ? abs_err / scale : 0;
      if (abs_err > c.max_abs_error) c.max_abs_error = abs_err, c.worst_input = k, c.worst_element = e;
      c.max_rel_error = std::max(c.max_rel_error, rel_err);
      if (abs_err > o.atol + o.rtol * std::abs(numeric)) c.passed = false;
    }
  }
  return c;
}

}  // namespace

template <class T>
InstructionCheckReport check_instructions(const Tape<T>& tape, const InstructionCheckOptions& options) {
  InstructionCheckReport r;
  for (std::size_t i = 0; i < tape.num_instructions(); ++i) {
    try {
      r.instructions.push_back(check_one(tape, i, options));
    } catch (const Error& e) {
      throw e.with_site(tape.instruction(i).where);
    }
  }
  return r;
}

template ValueStats value_stats(const Array<float>&);
template ValueStats value_stats(const Array<double>&);
template NonfiniteReport find_nonfinite(Tape<float>&);
template NonfiniteReport find_nonfinite(Tape<double>&);
template InstructionCheckReport check_instructions(const Tape<float>&, const InstructionCheckOptions&);
template InstructionCheckReport check_instructions(const Tape<double>&, const InstructionCheckOptions&);

}  // namespace tg
