// Printing a compiled program: the kept steps as equations with the arena
// offsets of their value and adjoint, and the planned bytes.
#include <fmt/format.h>

#include "tapegrad/autodiff/compile.hpp"
#include "tapegrad/autodiff/dump.hpp"

namespace tg {
namespace {

std::string mib(std::int64_t bytes) { return fmt::format("{:.2f} MiB", double(bytes) / (1 << 20)); }

std::string offset_text(const char* what, std::int64_t offset) {
  return offset < 0 ? std::string() : fmt::format(" {}@{}", what, offset);
}

}  // namespace

// "%13:f32[64,64,14,14] = conv[...] %12 %4 %5 + relu", or a fused chain:
// "%9:f64[12,12] = fused{%5 = mul %0 %1; %6 = add %5 %2; %9 = tanh %6} %0 %1 %2"
template <class T>
std::string step_equation(const CompiledProgram<T>& p, const typename CompiledProgram<T>::Step& st) {
  if (const auto* chain = st.chain()) {
    std::vector<std::string> members;
    for (const auto& m : chain->members) {
      std::string text = fmt::format("%{} = {}", m.slot, m.op->name);
      if (m.op->print_params && m.params) {
        const std::string attrs = m.op->print_params(m.params.get());
        if (!attrs.empty()) text += fmt::format("[{}]", attrs);
      }
      for (int i = 0; i < m.n_in; ++i) {
        const std::int32_t code = m.in[static_cast<std::size_t>(i)];
        text += fmt::format(" %{}", code < 0 ? chain->members[static_cast<std::size_t>(-1 - code)].slot : st.args[static_cast<std::size_t>(code)]);
      }
      members.push_back(std::move(text));
    }
    return fmt::format("%{}:{} = fused{{{}}} %{}", st.out, type_string(p.value(st.out)), fmt::join(members, "; "),
                       fmt::join(st.args, " %"));
  }
  std::string line = equation(st.out, p.value(st.out), *st.op, st.params.get(), st.args);
  if (const auto* e = st.epilogue()) {  // a fused group: the activation runs on the op's output
    line += " + " + e->activation.op->name;
    if (e->pullback_at_max) line += " (its pullback at the max-pool)";  // Note [Activation pullbacks at the max-pool]
  }
  if (const auto* m = st.at_max()) line += fmt::format(" ({}'s pullback here)", m->activation.op->name);
  if (const auto* v = st.view()) line += v->shares_adjoint ? " (view: value and adjoint shared)" : " (view: value shared)";
  return line;
}

template <class T>
std::string dump_profile(const CompiledProgram<T>& p, const TapeProfile& profile) {
  std::vector<std::string> lines;
  for (const auto& st : p.steps()) lines.push_back(fmt::format("{:<60}  # {}", step_equation(p, st), site_string(st.where)));
  return format_profile(profile, lines);
}

template <class T>
std::string dump(const CompiledProgram<T>& p) {
  const auto& o = p.options();
  std::size_t pullbacks = 0;
  for (const auto& st : p.steps()) pullbacks += st.pullback;
  std::string out = fmt::format(
      "compiled tape {}: {} steps for {} recorded instructions, {} pullbacks (dead_code {}, fuse_epilogues {}, "
      "fuse_elementwise {}, share_views {}, plan_memory {}, tune_algorithms {}, fold_norms {})\n"
      "  arena {} for values and adjoints ({} one buffer each: {:.2f}x)\n",
      dtype_name<T>(), p.steps().size(), p.recorded_instructions(), pullbacks, o.dead_code ? "on" : "off",
      o.fuse_epilogues ? "on" : "off", o.fuse_elementwise ? "on" : "off", o.share_views ? "on" : "off", o.plan_memory ? "on" : "off",
      o.tune_algorithms ? "on" : "off", o.fold_norms ? "on" : "off",
      mib(p.arena_bytes()), mib(p.unplanned_bytes()),
      double(p.arena_bytes()) / double(std::max<std::int64_t>(1, p.unplanned_bytes())));
  for (std::size_t k = 0; k < p.inputs().size(); ++k)
    out += fmt::format("  %{}:{} = input {}{}\n", p.inputs()[k], type_string(p.value(p.inputs()[k])), k,
                       p.input_name(k).empty() ? "" : " " + p.input_name(k));
  for (const auto& st : p.steps()) {
    std::string line = "  " + step_equation(p, st);
    line += offset_text("value", p.value_offset(st.out)) + offset_text("adjoint", p.adjoint_offset(st.out));
    out += fmt::format("{:<60}  # {}\n", line, site_string(st.where));
  }
  out += guard_lines(p.guards());
  out += fmt::format("  output %{}\n", p.output_slot());
  return out;
}

template std::string dump(const CompiledProgram<float>&);
template std::string dump(const CompiledProgram<double>&);
template std::string dump_profile(const CompiledProgram<float>&, const TapeProfile&);
template std::string dump_profile(const CompiledProgram<double>&, const TapeProfile&);

}  // namespace tg
