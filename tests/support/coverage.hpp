// Op coverage, enforced by the code (issue 17): the shared checks note which
// built-in ops they exercised, and after a full run the test program walks the
// registry and fails for any op a check never reached. Adding an op to a
// family's table without its tests fails the suite, naming the op and the
// missing check.
#pragma once

#include <cstdio>
#include <map>
#include <mutex>
#include <set>
#include <span>
#include <string>

#include <tapegrad/tapegrad.hpp>

namespace tgtest {

enum class Check {
  op_triple,         // check_op: one instruction, replay on new inputs, gradient = central differences
  dot_product,       // check_dot_product: <J u, v> = <u, J^T v> on realistic shapes
  save_load,         // a tape file round trip: same dump, same values, same bytes saved again
  allocation_model,  // a compiled step that allocates nothing after the first call (test_allocations.cpp)
};

inline const char* check_name(Check c) {
  switch (c) {
    case Check::op_triple: return "check_op (one instruction, replay, gradient check)";
    case Check::dot_product: return "check_dot_product";
    case Check::save_load: return "a tape-file round trip";
    case Check::allocation_model: return "the every-op allocation model";
  }
  return "?";
}

namespace detail {
struct Ledger {
  std::mutex mutex;
  std::map<Check, std::set<std::string>> seen;
};
inline Ledger& ledger() {
  static Ledger l;
  return l;
}
}  // namespace detail

// Notes every op on `tape` as exercised by `check`.
template <class T>
void covered(Check check, const tg::Tape<T>& tape) {
  auto& l = detail::ledger();
  std::lock_guard lock(l.mutex);
  for (std::size_t i = 0; i < tape.num_instructions(); ++i) l.seen[check].insert(tape.instruction(i).op->name);
}

// The problems of one registry row by itself: an op with attributes prints,
// saves and loads them (all three or none).
template <class T>
std::string row_problems(const tg::OpInfo<T>& row) {
  std::string out;
  if (!row.shape == !row.plan) out += " needs exactly one of a shape rule and a plan step;";
  if (!row.forward || !row.pullback) out += " lacks a forward or a pullback;";
  const int params_hooks = !!row.print_params + !!row.save_params + !!row.load_params;
  if (params_hooks != 0 && params_hooks != 3) out += " has some but not all of print_params, save_params, load_params;";
  return out;
}

// Every built-in op must have been seen by each of `checks`; prints what is
// missing and returns the number of problems (0: all covered).
inline int report_uncovered(std::span<const Check> checks) {
  auto& l = detail::ledger();
  std::lock_guard lock(l.mutex);
  int problems = 0;
  auto report = [&](const std::string& op, const std::string& what) {
    std::fprintf(stderr, "op coverage: '%s'%s\n", op.c_str(), what.c_str());
    ++problems;
  };
  for (const auto* row : tg::Registry<double>::rows()) {
    if (!row->builtin) continue;
    if (auto p = row_problems(*row); !p.empty()) report(row->name, p);
    if (const auto* f = tg::Registry<float>::find(row->name); !f) report(row->name, " has no float row;");
    else if (auto p = row_problems(*f); !p.empty()) report(row->name + " (float)", p);
    for (Check c : checks)
      if (!l.seen[c].contains(row->name))
        report(row->name, std::string(" (") + row->registered_at + ") is not exercised by " + check_name(c));
  }
  if (problems) std::fprintf(stderr, "op coverage: %d problem(s); every op of the op tables needs each check\n", problems);
  return problems;
}

}  // namespace tgtest
