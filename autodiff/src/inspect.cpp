// summary, dump_dot, dump_json (inspect.hpp).
#include "tapegrad/autodiff/inspect.hpp"

#include <algorithm>
#include <map>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "tapegrad/autodiff/dump.hpp"
#include "tapegrad/autodiff/record.hpp"

namespace tg {
namespace {

template <class T>
double instruction_flops(const Tape<T>& tape, const Instr<T>& ins) {
  std::vector<const Shape*> in;
  for (auto a : tape.args_of(ins)) in.push_back(&tape.value(a).shape());
  return nominal_flops(*ins.op, ins.params.get(), in, tape.value(ins.out).shape());
}

std::string bytes_text(double bytes) {
  if (bytes >= 1 << 20) return fmt::format("{:.2f} MiB", bytes / (1 << 20));
  if (bytes >= 1 << 10) return fmt::format("{:.1f} KiB", bytes / (1 << 10));
  return fmt::format("{:.0f} B", bytes);
}

const char* kind_name(SlotKind k) {
  switch (k) {
    case SlotKind::input: return "input";
    case SlotKind::constant: return "constant";
    default: return "computed";
  }
}

// A string as a JSON string literal, or as a DOT quoted string: the same escapes serve both.
std::string quoted(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) out += fmt::format("\\u{:04x}", int(c));
        else out += c;
    }
  }
  return out + "\"";
}

template <class T>
std::string params_text(const Instr<T>& ins) {
  return ins.op->print_params && ins.params ? ins.op->print_params(ins.params.get()) : std::string();
}

}  // namespace

template <class T>
std::int64_t held_bytes(const Tape<T>& tape) {
  std::int64_t elements = 0;
  for (std::size_t i = 0; i < tape.num_instructions(); ++i)
    for (const Array<T>& s : tape.saved_of(tape.instruction(i))) elements += s.size();
  for (std::uint32_t s = 0; s < tape.num_slots(); ++s) elements += tape.value(s).size() * (tape.needs_grad(s) ? 2 : 1);
  return elements * static_cast<std::int64_t>(sizeof(T));
}

template <class T>
std::string summary(const Tape<T>& tape) {
  std::map<std::string, std::pair<int, double>> ops;  // name -> (count, flops)
  double flops = 0, values = 0, saved = 0;
  for (std::size_t i = 0; i < tape.num_instructions(); ++i) {
    const Instr<T>& ins = tape.instruction(i);
    const double f = instruction_flops(tape, ins);
    auto& [count, op_flops] = ops[ins.op->name];
    ++count;
    op_flops += f;
    flops += f;
    for (const Array<T>& s : tape.saved_of(ins)) saved += double(s.size()) * sizeof(T);
  }
  double adjoints = 0;
  for (std::uint32_t s = 0; s < tape.num_slots(); ++s) {
    values += double(tape.value(s).size()) * sizeof(T);
    if (tape.needs_grad(s)) adjoints += double(tape.value(s).size()) * sizeof(T);
  }
  std::string out = fmt::format(
      "tape {}: {} inputs, {} instructions, {} guards, {:.4g} FLOP per forward pass\n"
      "  values {} (every slot), saved for the reverse pass {}, adjoints {} (slots that need a gradient)\n"
      "  peak of a gradient step with the interpreter (all of these at once): {}\n"
      "  op               count  FLOP        share\n",
      dtype_name<T>(), tape.inputs().size(), tape.num_instructions(), tape.guards().size(), flops, bytes_text(values),
      bytes_text(saved), bytes_text(adjoints), bytes_text(double(held_bytes(tape))));
  for (const auto& [name, entry] : ops)
    out += fmt::format("  {:<15} {:>6}  {:<10.4g} {:5.1f}%\n", name, entry.first, entry.second,
                       flops > 0 ? 100 * entry.second / flops : 0.0);
  // The convolution algorithms chosen, as the instructions print them.
  for (std::size_t i = 0; i < tape.num_instructions(); ++i) {
    const std::string p = params_text(tape.instruction(i));
    if (const auto at = p.find("algorithm="); at != std::string::npos)
      out += fmt::format("  %{} {}: {}\n", tape.instruction(i).out, tape.instruction(i).op->name, p.substr(at));
  }
  if (tape.unguarded_reads() > 0)
    out += fmt::format("  warning: {} unguarded read(s) of tracked values while recording (first at {})\n",
                       tape.unguarded_reads(), site_string(tape.first_unguarded_read()));
  return out;
}

namespace {

// What a compiled program did to each recorded slot, for drawing: the fused
// step (elementwise chain or producer + epilogue) it belongs to, or dead.
struct SlotGroups {
  std::vector<int> cluster;    // -1: none
  std::vector<std::string> cluster_label;
  std::vector<bool> dead;      // an instruction the program does not run
};

template <class T>
SlotGroups groups_of(const Tape<T>& tape, const CompiledProgram<T>* program) {
  SlotGroups g{std::vector<int>(tape.num_slots(), -1), {}, std::vector<bool>(tape.num_slots(), false)};
  if (!program) return g;
  std::vector<const Instr<T>*> producer(tape.num_slots(), nullptr);
  for (std::size_t i = 0; i < tape.num_instructions(); ++i) producer[tape.instruction(i).out] = &tape.instruction(i);
  std::vector<bool> runs(tape.num_slots(), false);
  for (const auto& st : program->steps()) {
    runs[st.out] = true;
    const int id = static_cast<int>(g.cluster_label.size());
    if (const auto* chain = st.chain()) {
      for (const auto& m : chain->members) {
        runs[m.slot] = true;
        g.cluster[m.slot] = id;
      }
      g.cluster_label.push_back(fmt::format("fused elementwise ({} ops)", chain->members.size()));
    } else if (st.epilogue() && producer[st.out]) {
      const std::uint32_t inner = tape.args_of(*producer[st.out])[0];  // the producer, whose buffer the activation reuses
      runs[inner] = true;
      g.cluster[inner] = g.cluster[st.out] = id;
      g.cluster_label.push_back(fmt::format("{} + {} epilogue", producer[inner] ? producer[inner]->op->name : "?",
                                            st.epilogue()->activation.op->name));
    }
  }
  for (std::size_t i = 0; i < tape.num_instructions(); ++i) g.dead[tape.instruction(i).out] = !runs[tape.instruction(i).out];
  return g;
}

template <class T>
std::string dot_graph(const Tape<T>& tape, const SlotGroups& groups) {
  std::string out = "digraph tape {\n  rankdir=TB;\n  node [fontname=\"monospace\", fontsize=10, shape=box];\n";
  std::vector<bool> leaf_used(tape.num_slots(), false);
  for (std::size_t i = 0; i < tape.num_instructions(); ++i)
    for (auto a : tape.args_of(tape.instruction(i))) leaf_used[a] = true;
  for (std::uint32_t s = 0; s < tape.num_slots(); ++s) {
    if (tape.kind(s) == SlotKind::computed || !(leaf_used[s] || tape.kind(s) == SlotKind::input)) continue;
    const bool input = tape.kind(s) == SlotKind::input;
    std::string label = fmt::format("%{} {}\n{}", s, input ? "input" : "const", type_string(tape.value(s)));
    if (!input && tape.value(s).size() == 1) label += fmt::format(" = {}", double(tape.value(s).data()[0]));
    if (input) {
      const auto in = tape.inputs();
      const std::string& name = tape.input_name(static_cast<std::size_t>(std::find(in.begin(), in.end(), s) - in.begin()));
      if (!name.empty()) label += "\n" + name;
    }
    if (input && !tape.needs_grad(s)) label += " (no gradient)";
    out += fmt::format("  s{} [label={}, style=filled, fillcolor=\"{}\"{}];\n", s, quoted(label),
                       input ? "#dbe8fb" : "#eeeeee", input ? "" : ", shape=ellipse");
  }
  std::vector<std::string> cluster_nodes(groups.cluster_label.size());
  for (std::size_t i = 0; i < tape.num_instructions(); ++i) {
    const Instr<T>& ins = tape.instruction(i);
    std::string label = fmt::format("%{} = {}", ins.out, ins.op->name);
    if (const std::string p = params_text(ins); !p.empty()) label += fmt::format("[{}]", p);
    label += fmt::format("\n{}\n{}", type_string(tape.value(ins.out)), origin_string(ins));
    const bool output = ins.out == tape.output(), dead = groups.dead[ins.out];
    if (dead) label += "\n(removed: reaches no output)";
    const std::string node = fmt::format("s{} [label={}, style=\"rounded{}{}\"{}{}];\n", ins.out, quoted(label),
                                         output ? ",filled" : "", dead ? ",dashed" : "",
                                         output ? ", fillcolor=\"#fde2c8\"" : "", dead ? ", fontcolor=\"#888888\"" : "");
    if (const int c = groups.cluster[ins.out]; c >= 0) cluster_nodes[static_cast<std::size_t>(c)] += "    " + node;
    else out += "  " + node;
    std::size_t k = 0;
    for (auto a : tape.args_of(ins)) out += fmt::format("  s{} -> s{} [label=\"{}\"];\n", a, ins.out, k++);
  }
  for (std::size_t c = 0; c < cluster_nodes.size(); ++c)
    if (!cluster_nodes[c].empty())
      out += fmt::format("  subgraph cluster_{} {{\n    label={}; style=\"rounded,filled\"; fillcolor=\"#eef7ea\"; "
                         "fontname=\"monospace\"; fontsize=10;\n{}  }}\n",
                         c, quoted(groups.cluster_label[c]), cluster_nodes[c]);
  return out + "}\n";
}

}  // namespace

template <class T>
std::string dump_dot(const Tape<T>& tape) {
  return dot_graph(tape, groups_of<T>(tape, nullptr));
}

template <class T>
std::string dump_dot(const Tape<T>& tape, const CompiledProgram<T>& program) {
  return dot_graph(tape, groups_of(tape, &program));
}

template <class T>
std::string dump_json(const Tape<T>& tape) {
  std::string out = fmt::format("{{\"format\": \"tapegrad-tape\", \"version\": 1, \"dtype\": \"{}\",\n \"slots\": [", dtype_name<T>());
  for (std::uint32_t s = 0; s < tape.num_slots(); ++s)
    out += fmt::format("{}\n  {{\"id\": {}, \"kind\": \"{}\", \"shape\": [{}], \"needs_grad\": {}}}", s ? "," : "", s,
                       kind_name(tape.kind(s)), fmt::join(tape.value(s).shape().dims(), ", "), tape.needs_grad(s));
  std::vector<std::string> names;
  for (std::size_t k = 0; k < tape.inputs().size(); ++k) names.push_back(quoted(tape.input_name(k)));
  out += fmt::format("],\n \"inputs\": [{}],\n \"input_names\": [{}],\n \"instructions\": [", fmt::join(tape.inputs(), ", "),
                     fmt::join(names, ", "));
  for (std::size_t i = 0; i < tape.num_instructions(); ++i) {
    const Instr<T>& ins = tape.instruction(i);
    out += fmt::format("{}\n  {{\"out\": {}, \"op\": {}, \"params\": {}, \"args\": [{}], \"flops\": {}, \"site\": {}{}}}",
                       i ? "," : "", ins.out, quoted(ins.op->name), quoted(params_text(ins)),
                       fmt::join(tape.args_of(ins), ", "), instruction_flops(tape, ins), quoted(site_string(ins.where)),
                       ins.pullback_of == Tape<T>::kNoSlot ? std::string() : fmt::format(", \"pullback_of\": {}", ins.pullback_of));
  }
  out += "],\n \"guards\": [";
  for (std::size_t i = 0; i < tape.guards().size(); ++i) {
    const Guard& g = tape.guards()[i];
    out += fmt::format("{}\n  {{\"test\": {}, \"expected\": {}, \"site\": {}}}", i ? "," : "", quoted(describe(g)), g.expected,
                       quoted(site_string(g.where)));
  }
  const std::string output = tape.output() == Tape<T>::kNoSlot ? "null" : fmt::format("{}", tape.output());
  return out + fmt::format("],\n \"output\": {}}}\n", output);
}

namespace {

// The instructions of a and b matched by op name (longest common subsequence):
// pairs (i, j), or i = -1 / j = -1 for an instruction only one of them has.
template <class T>
std::vector<std::pair<std::int64_t, std::int64_t>> align(const Tape<T>& a, const Tape<T>& b) {
  const std::size_t n = a.num_instructions(), m = b.num_instructions();
  std::vector<std::vector<std::uint32_t>> lcs(n + 1, std::vector<std::uint32_t>(m + 1, 0));
  for (std::size_t i = n; i-- > 0;)
    for (std::size_t j = m; j-- > 0;)
      lcs[i][j] = a.instruction(i).op->name == b.instruction(j).op->name ? lcs[i + 1][j + 1] + 1
                                                                          : std::max(lcs[i + 1][j], lcs[i][j + 1]);
  std::vector<std::pair<std::int64_t, std::int64_t>> pairs;
  std::size_t i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a.instruction(i).op->name == b.instruction(j).op->name) {
      pairs.emplace_back(i++, j++);
    } else if (j == m || (i < n && lcs[i + 1][j] >= lcs[i][j + 1])) {
      pairs.emplace_back(i++, -1);
    } else {
      pairs.emplace_back(-1, j++);
    }
  }
  return pairs;
}

template <class T>
std::string leaf_name(const Tape<T>& tape, std::uint32_t slot) {
  if (tape.kind(slot) == SlotKind::input) {
    const auto in = tape.inputs();
    const auto k = static_cast<std::size_t>(std::find(in.begin(), in.end(), slot) - in.begin());
    return tape.input_name(k).empty() ? fmt::format("input {}", k) : fmt::format("input {} {}", k, tape.input_name(k));
  }
  return tape.kind(slot) == SlotKind::constant ? fmt::format("const {}", type_string(tape.value(slot))) : std::string();
}

}  // namespace

template <class T>
std::string diff_tapes(const Tape<T>& a, const Tape<T>& b) {
  std::string out;
  if (a.inputs().size() != b.inputs().size())
    out += fmt::format("inputs: {} -> {}\n", a.inputs().size(), b.inputs().size());
  for (std::size_t k = 0; k < std::min(a.inputs().size(), b.inputs().size()); ++k) {
    const auto sa = a.inputs()[k], sb = b.inputs()[k];
    if (!(a.value(sa).shape() == b.value(sb).shape()))
      out += fmt::format("input {}: {} -> {}\n", k, type_string(a.value(sa)), type_string(b.value(sb)));
    if (a.needs_grad(sa) != b.needs_grad(sb))
      out += fmt::format("input {}: {} -> {}\n", k, a.needs_grad(sa) ? "needs a gradient" : "no gradient",
                         b.needs_grad(sb) ? "needs a gradient" : "no gradient");
  }
  // Slots of a as b numbers them, for comparing arguments.
  std::vector<std::int64_t> slot_in_b(a.num_slots(), -1);
  for (std::size_t k = 0; k < std::min(a.inputs().size(), b.inputs().size()); ++k) slot_in_b[a.inputs()[k]] = b.inputs()[k];
  for (const auto& [i, j] : align(a, b)) {
    if (j < 0) {
      const Instr<T>& ins = a.instruction(static_cast<std::size_t>(i));
      out += fmt::format("- {}  # {} (only in A)\n", equation(a, ins), origin_string(ins));
      continue;
    }
    const Instr<T>& insb = b.instruction(static_cast<std::size_t>(j));
    if (i < 0) {
      out += fmt::format("+ {}  # {} (only in B)\n", equation(b, insb), site_string(insb.where));
      continue;
    }
    const Instr<T>& insa = a.instruction(static_cast<std::size_t>(i));
    slot_in_b[insa.out] = insb.out;
    std::vector<std::string> changes;
    if (!(a.value(insa.out).shape() == b.value(insb.out).shape()))
      changes.push_back(fmt::format("shape {} -> {}", type_string(a.value(insa.out)), type_string(b.value(insb.out))));
    if (const auto pa = params_text(insa), pb = params_text(insb); pa != pb)
      changes.push_back(fmt::format("params [{}] -> [{}]", pa, pb));
    const auto args_a = a.args_of(insa), args_b = b.args_of(insb);
    bool same_args = args_a.size() == args_b.size();
    for (std::size_t k = 0; same_args && k < args_a.size(); ++k) {
      const std::uint32_t x = args_a[k], y = args_b[k];
      same_args = a.kind(x) == SlotKind::constant ? b.kind(y) == SlotKind::constant && a.value(x).shape() == b.value(y).shape()
                                                  : slot_in_b[x] == std::int64_t{y};
    }
    if (!same_args) {
      std::vector<std::string> from, to;
      for (auto x : args_a) from.push_back(fmt::format("%{}{}", x, leaf_name(a, x).empty() ? "" : " (" + leaf_name(a, x) + ")"));
      for (auto y : args_b) to.push_back(fmt::format("%{}{}", y, leaf_name(b, y).empty() ? "" : " (" + leaf_name(b, y) + ")"));
      changes.push_back(fmt::format("arguments {} -> {}", fmt::join(from, " "), fmt::join(to, " ")));
    }
    if (!changes.empty())
      out += fmt::format("~ %{} -> %{} {}: {}  # {}\n", insa.out, insb.out, insa.op->name, fmt::join(changes, "; "),
                         site_string(insb.where));
  }
  if (a.guards().size() != b.guards().size())
    out += fmt::format("guards: {} -> {}\n", a.guards().size(), b.guards().size());
  return out;
}

template std::string diff_tapes(const Tape<float>&, const Tape<float>&);
template std::string diff_tapes(const Tape<double>&, const Tape<double>&);
template std::int64_t held_bytes(const Tape<float>&);
template std::int64_t held_bytes(const Tape<double>&);
template std::string summary(const Tape<float>&);
template std::string summary(const Tape<double>&);
template std::string dump_dot(const Tape<float>&, const CompiledProgram<float>&);
template std::string dump_dot(const Tape<double>&, const CompiledProgram<double>&);
template std::string dump_dot(const Tape<float>&);
template std::string dump_dot(const Tape<double>&);
template std::string dump_json(const Tape<float>&);
template std::string dump_json(const Tape<double>&);

}  // namespace tg
