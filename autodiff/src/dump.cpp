#include "tapegrad/autodiff/dump.hpp"

#include <algorithm>

#include <fmt/format.h>

namespace tg {

template <class T>
std::string type_string(const Array<T>& a) {
  return fmt::format("{}[{}]", dtype_name<T>(), fmt::join(a.shape().dims(), ","));
}

template <class T>
std::string equation(std::uint32_t out, const Array<T>& value, const OpInfo<T>& op, const OpParams* params,
                     std::span<const std::uint32_t> args) {
  std::string line = fmt::format("%{}:{} = {}", out, type_string(value), op.name);
  if (op.print_params && params) {
    std::string attrs = op.print_params(params);
    if (!attrs.empty()) line += fmt::format("[{}]", attrs);
  }
  for (auto a : args) line += fmt::format(" %{}", a);
  return line;
}

template <class T>
std::string equation(const Tape<T>& tape, const Instr<T>& ins) {
  return equation(ins.out, tape.value(ins.out), *ins.op, ins.params.get(), tape.args_of(ins));
}

std::string format_profile(const TapeProfile& profile, std::span<const std::string> lines) {
  const std::size_t n = lines.size();
  auto per_pass = [](const std::vector<double>& s, std::size_t i, int passes) {
    return i < s.size() && passes > 0 ? s[i] / passes : 0.0;
  };
  std::vector<std::size_t> order(n);
  std::vector<double> fwd(n), back(n);
  double total_fwd = 0, total_back = 0;
  for (std::size_t i = 0; i < n; ++i) {
    order[i] = i;
    fwd[i] = per_pass(profile.forward_seconds, i, profile.forward_passes);
    back[i] = per_pass(profile.pullback_seconds, i, profile.reverse_passes);
    total_fwd += fwd[i];
    total_back += back[i];
  }
  std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return fwd[a] + back[a] > fwd[b] + back[b]; });
  const double total = std::max(total_fwd + total_back, 1e-300);
  std::string out = fmt::format(
      "profile over {} forward and {} reverse passes: {:.3f} ms per step (forward {:.3f} ms, pullbacks {:.3f} ms)\n"
      "  share  forward ms  pullback ms  instruction\n",
      profile.forward_passes, profile.reverse_passes, 1e3 * total, 1e3 * total_fwd, 1e3 * total_back);
  for (auto i : order)
    out += fmt::format("  {:5.1f}%  {:10.3f}  {:11.3f}  {}\n", 100 * (fwd[i] + back[i]) / total, 1e3 * fwd[i], 1e3 * back[i],
                       lines[i]);
  return out;
}

template <class T>
std::string dump_profile(const Tape<T>& tape, const TapeProfile& profile) {
  std::vector<std::string> lines;
  for (std::size_t i = 0; i < tape.num_instructions(); ++i) {
    const Instr<T>& ins = tape.instruction(i);
    lines.push_back(fmt::format("{:<60}  # {}", equation(tape, ins), origin_string(ins)));
  }
  return format_profile(profile, lines);
}

template <class T>
std::string dump(const Tape<T>& tape) {
  std::string out = fmt::format("tape {}: {} inputs, {} instructions\n", dtype_name<T>(), tape.inputs().size(),
                                tape.num_instructions());
  // Inputs and constants are printed where they first appear.
  std::vector<bool> shown(tape.num_slots(), false);
  auto show_leaf = [&](std::uint32_t slot) {
    if (shown[slot] || tape.kind(slot) == SlotKind::computed) return;
    shown[slot] = true;
    const Array<T>& v = tape.value(slot);
    if (tape.kind(slot) == SlotKind::input) {
      std::size_t k = 0;
      while (tape.inputs()[k] != slot) ++k;
      const std::string& name = tape.input_name(k);
      out += fmt::format("  %{}:{} = input {}{}{}\n", slot, type_string(v), k, name.empty() ? "" : " " + name,
                         tape.needs_grad(slot) ? "" : " (no gradient)");
    } else if (v.size() <= 4) {
      out += fmt::format("  %{}:{} = const {}\n", slot, type_string(v), to_string(v));
    } else {
      out += fmt::format("  %{}:{} = const\n", slot, type_string(v));
    }
  };
  for (auto slot : tape.inputs()) show_leaf(slot);
  for (std::size_t i = 0; i < tape.num_instructions(); ++i) {
    const Instr<T>& ins = tape.instruction(i);
    for (auto a : tape.args_of(ins)) show_leaf(a);
    out += fmt::format("{:<48}  # {}\n", "  " + equation(tape, ins), origin_string(ins));
  }
  out += guard_lines(tape.guards());
  if (tape.unguarded_reads() > 0)
    out += fmt::format("  warning: {} unguarded read(s) of tracked values while recording (first at {}): control flow "
                       "on x.value() or x.item() is not checked on replay; compare through tg::any, tg::all or x.at() "
                       "to record a guard\n",
                       tape.unguarded_reads(), site_string(tape.first_unguarded_read()));
  if (tape.output() != Tape<T>::kNoSlot) out += fmt::format("  output %{}\n", tape.output());
  return out;
}

std::string guard_lines(std::span<const Guard> guards) {
  std::string out;
  for (std::size_t i = 0; i < guards.size(); ++i)
    out += fmt::format("{:<48}  # {}\n", fmt::format("  guard {}: {} is {}", i, describe(guards[i]), guards[i].expected),
                       site_string(guards[i].where));
  return out;
}

template std::string type_string(const Array<float>&);
template std::string type_string(const Array<double>&);
template std::string dump(const Tape<float>&);
template std::string dump(const Tape<double>&);
template std::string equation(const Tape<float>&, const Instr<float>&);
template std::string equation(const Tape<double>&, const Instr<double>&);
template std::string equation(std::uint32_t, const Array<float>&, const OpInfo<float>&, const OpParams*,
                              std::span<const std::uint32_t>);
template std::string equation(std::uint32_t, const Array<double>&, const OpInfo<double>&, const OpParams*,
                              std::span<const std::uint32_t>);
template std::string dump_profile(const Tape<float>&, const TapeProfile&);
template std::string dump_profile(const Tape<double>&, const TapeProfile&);

}  // namespace tg
