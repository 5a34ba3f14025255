#include "tapegrad/autodiff/dump.hpp"

#include <fmt/format.h>

namespace tg {

template <class T>
std::string type_string(const Array<T>& a) {
  return fmt::format("{}[{}]", dtype_name<T>(), fmt::join(a.shape().dims(), ","));
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
      out += fmt::format("  %{}:{} = input {}\n", slot, type_string(v), k);
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
    std::string line = fmt::format("  %{}:{} = {}", ins.out, type_string(tape.value(ins.out)), ins.op->name);
    if (ins.op->print_params && ins.params) {
      std::string attrs = ins.op->print_params(ins.params.get());
      if (!attrs.empty()) line += fmt::format("[{}]", attrs);
    }
    for (auto a : tape.args_of(ins)) line += fmt::format(" %{}", a);
    out += fmt::format("{:<48}  # {}\n", line, site_string(ins.where));
  }
  if (tape.output() != Tape<T>::kNoSlot) out += fmt::format("  output %{}\n", tape.output());
  return out;
}

template std::string type_string(const Array<float>&);
template std::string type_string(const Array<double>&);
template std::string dump(const Tape<float>&);
template std::string dump(const Tape<double>&);

}  // namespace tg
