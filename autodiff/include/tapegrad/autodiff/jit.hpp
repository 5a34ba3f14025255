// tg::jit(f): a callable that records and compiles f once per signature of its
// arguments (the tree types, every leaf's shape, tg::data marks) and keeps the
// programs in a bounded cache, least recently used out first.
//
//   auto step = tg::jit(loss);
//   auto [value, g] = step.value_and_gradient(net, tg::data(x), tg::data(y));   // compiles on the first call
//   ... the epoch's short last batch compiles a second program; both stay cached
//   fmt::print("{}", tg::dump(step));                                            // hits, misses, evictions, programs
//
// Guard outcomes are part of the key (Note [Guards]): when the values of a
// call take another path through f than the program recorded, the program of
// that path runs if one is cached, else f is recorded again for it (a miss);
// both stay cached, so alternating paths do not re-record. GuardPolicy::error
// makes a failed guard an error instead. Note [Captured values]
// applies: the programs are replayed, so f takes everything it reads as arguments.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <typeindex>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "tapegrad/autodiff/compile.hpp"

namespace tg {

struct JitOptions {
  std::size_t capacity = 8;  // programs kept; the least recently used goes first
  bool compiled = true;      // false: the recorded tapes run on the interpreter (debugging, comparing)
  CompileOptions compile = {};
  // rerecord: values that fail a guard run the program of their path, recorded on first need;
  // error: a failed guard is a tg::Error.
  GuardPolicy guard_policy = GuardPolicy::rerecord;
};

struct JitStats {
  std::int64_t hits = 0, misses = 0, evictions = 0;
  std::int64_t path_switches = 0;  // calls whose values failed a guard of the most recent program of their shapes
};

namespace detail {
// What identifies a program: the argument types and marks, the vector lengths, every leaf's shape.
struct JitKey {
  std::type_index types = typeid(void);
  std::vector<std::uint64_t> structure;
  std::vector<Shape> shapes;

  template <class T>
  bool matches(std::type_index t, const Flat<T>& flat) const {
    if (t != types || flat.structure != structure || flat.leaves.size() != shapes.size()) return false;
    for (std::size_t k = 0; k < shapes.size(); ++k)
      if (!(flat.leaves[k]->shape() == shapes[k])) return false;
    return true;
  }
};
struct JitEntryBase {
  JitKey key;
  std::string signature;  // the leaves' shapes, for dump()
  std::uint64_t last_used = 0;  // the clock of the last call it served
  std::uint64_t tried = 0;      // the clock of the last call that tried it
  std::int64_t calls = 0;
  virtual ~JitEntryBase() = default;
};
template <class T, class... A>
struct JitEntry final : JitEntryBase {
  // visitor(the GradientTape or the CompiledTape): both give the same results' types.
  template <class V>
  decltype(auto) visit(V&& visitor) {
    if (program) return visitor(*program);
    return visitor(*tape);
  }
  std::optional<GradientTape<T, A...>> tape;    // JitOptions::compiled == false
  std::optional<CompiledTape<T, A...>> program;
};
}  // namespace detail

template <class F>
class Jit {
 public:
  explicit Jit(F f, JitOptions options = {}) : f_(std::move(f)), options_(options) {
    if (options_.capacity == 0) fail("jit", "capacity 0 expected room for at least one program");
  }

  // The output after a forward run on the arguments.
  template <class... A>
  const auto& forward(const A&... args) {
    return run(args...).visit([&](auto& p) -> decltype(auto) { return p.output(); });
  }
  // Gradients of every argument that is not tg::data, in the arguments' tree types.
  template <class... A>
  auto gradient(const A&... args) {
    return run(args...).visit([&](auto& p) { return p.gradient(); });
  }
  // (value, gradients...).
  template <class... A>
  auto value_and_gradient(const A&... args) {
    return run(args...).visit([&](auto& p) { return p.value_and_gradient(); });
  }
  // The value; the gradients go into `out` (its arrays reused once shaped: no allocation per step).
  template <class G, class... A>
  auto value_and_gradient_into(G& out, const A&... args) {
    return run(args...).visit([&](auto& p) { return p.value_and_gradient_into(out); });
  }
  // visitor(program) with the program of these arguments after a forward run
  // on them: a GradientTape, or a CompiledTape when compiled.
  template <class V, class... A>
  decltype(auto) with_program(V&& visitor, const A&... args) {
    return run(args...).visit(visitor);
  }

  const JitStats& stats() const { return stats_; }
  std::size_t size() const { return entries_.size(); }
  const JitOptions& options() const { return options_; }
  // One line per cached program: its signature and calls, most recent first.
  std::string describe() const {
    const JitStats& s = stats();
    std::string out = fmt::format("jit: {} program(s) cached (capacity {}), {} hits, {} misses, {} evictions, {} path switches\n",
                                  entries_.size(), options_.capacity, s.hits, s.misses, s.evictions, s.path_switches);
    std::vector<const detail::JitEntryBase*> order;
    for (const auto& e : entries_) order.push_back(e.get());
    std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->last_used > b->last_used; });
    for (const auto* e : order) out += fmt::format("  {} calls  {}\n", e->calls, e->signature);
    return out;
  }

 private:
  // The entry whose program ran forward on args with every guard holding:
  // cached programs of these shapes first (most recent first), else a new recording.
  template <class... A>
  auto& run(const A&... args) {
    using T = detail::element_of_args<A...>;
    using Entry = detail::JitEntry<std::conditional_t<std::is_void_v<T>, float, T>, A...>;
    if constexpr (!detail::recordable<T, F, A...>()) {
      return *static_cast<Entry*>(nullptr);  // not compiled into anything: the static_assert above stops the build
    } else {
      return run_checked<T, Entry>(args...);
    }
  }
  template <class T, class Entry, class... A>
  Entry& run_checked(const A&... args) {
    const std::type_index types = typeid(std::tuple<A...>);
    auto& flat = flat_for<T>();
    flat.assign(args...);
    ++clock_;
    bool first = true;
    for (;;) {  // candidates in order of recency, without allocating
      Entry* best = nullptr;
      for (auto& e : entries_)
        if (e->tried < clock_ && e->key.matches(types, flat) && (!best || e->last_used > best->last_used))
          best = static_cast<Entry*>(e.get());
      if (!best) break;
      best->tried = clock_;
      const bool holds = options_.guard_policy == GuardPolicy::error
                             ? (best->visit([&](auto& p) { p.forward(args...); }), true)  // throws on a failed guard
                             : best->visit([&](auto& p) { return p.try_forward(args...); });
      if (holds) {
        if (first) ++stats_.hits;
        best->last_used = clock_;
        ++best->calls;
        return *best;
      }
      if (first) ++stats_.path_switches, first = false;
    }
    ++stats_.misses;
    detail::JitKey key{types, flat.structure, {}};
    std::vector<std::string> shapes;
    for (const Array<T>* leaf : flat.leaves) {
      key.shapes.push_back(leaf->shape());
      shapes.push_back(to_string(leaf->shape()));
    }
    // The least recently used program goes before the new one is recorded, and
    // its freed buffers with it: the two are never resident together.
    if (entries_.size() == options_.capacity) {
      evict();
      release_array_cache();
    }
    auto entry = std::make_unique<Entry>();
    entry->tape.emplace(detail::record_with<T>(
        f_, Capture::refuse, options_.compiled ? detail::RecordFor::compiling : detail::RecordFor::tape, args...));
    if (options_.compiled) {
      entry->program.emplace(compile(*entry->tape, options_.compile));
      entry->tape.reset();
      release_array_cache();  // the dropped tape's buffers (Note [The arena comes with the first replay])
      entry->program->forward(args...);  // the compiled program's own first run (the recording ran the tape's)
    }
    entry->key = std::move(key);
    entry->signature = fmt::format("{}[{}]", sizeof(T) == 4 ? "f32" : "f64", fmt::join(shapes, " "));
    entry->last_used = clock_;
    entry->calls = 1;
    entries_.push_back(std::move(entry));
    return *static_cast<Entry*>(entries_.back().get());
  }
  void evict() {
    auto oldest = std::min_element(entries_.begin(), entries_.end(),
                                   [](const auto& a, const auto& b) { return a->last_used < b->last_used; });
    entries_.erase(oldest);
    ++stats_.evictions;
  }
  template <class T>
  detail::Flat<T>& flat_for() {
    if constexpr (std::is_same_v<T, float>) return flat_float_;
    else return flat_double_;
  }

  F f_;
  JitOptions options_;
  std::vector<std::unique_ptr<detail::JitEntryBase>> entries_;
  detail::Flat<float> flat_float_;
  detail::Flat<double> flat_double_;
  std::uint64_t clock_ = 0;
  JitStats stats_;
};

template <class F>
Jit<std::decay_t<F>> jit(F&& f, JitOptions options = {}) {
  return Jit<std::decay_t<F>>(std::forward<F>(f), options);
}

template <class F>
std::string dump(const Jit<F>& step) {
  return step.describe();
}

}  // namespace tg
