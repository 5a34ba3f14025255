// The replay front-end shared by both engines: GradientTape runs a recorded
// Tape (the interpreter), CompiledTape a CompiledProgram; both are this one
// class over another engine, so forward, gradient, gradient_into, vjp,
// set_needs_grad, the guard policy and their error texts exist once.
//
// Arguments are parameter trees (tree.hpp) or tg::data(tree): the front-end
// flattens them into the tape's inputs, one per leaf, in walk order, and
// builds gradients back into the arguments' tree types. The number of leaves
// is whatever the arguments have (a vector's length); a replay whose trees
// have another structure is a failed guard (Note [Guards]).
//
// Note [Engines]: an engine is what runs a recording; the front-end asks it for
//   kOps                            the error names of each call ("CompiledTape::vjp")
//   check_input(k, shape, op)       throws for a missing input or another shape; changes nothing
//   set_input(k, value, op), input_shape(k), input_value(k)
//   forward()                       runs every step, then checks the guards (throws on a failed one)
//   run_forward(), first_failed_guard(), mark_failed(why), check_usable(op)
//   output(), reverse(seed), reverse_ones(), input_gradient_into(k, out)
//   set_input_needs_grad(k, needs)  false: the engine cannot change it in place (a
//                                   compiled program plans its reverse pass for one mask)
//   adopt(tape)                     a fresh recording replaces what it runs; its output is ready after
// A virtual interface was the alternative: the front-end is a template anyway
// (its argument types), and a compiled replay must not pay an indirect call per input.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "tapegrad/autodiff/tape.hpp"
#include "tapegrad/autodiff/tree.hpp"

namespace tg {

// What a replay does when its inputs break a guard or have other shapes (Note [Guards]).
enum class GuardPolicy : std::uint8_t {
  error,     // throw tg::Error naming the guard and where it was recorded (the default)
  rerecord,  // record the held function again on these inputs, and go on with the new tape
};

namespace detail {

// One argument position of a recorded function: a tree of parameters, or data.
template <class X>
struct ArgKind {
  using Tree = X;
  static constexpr bool data = false;
  static const Tree& tree(const X& x) { return x; }
};
template <class X>
struct ArgKind<Data<X>> {
  using Tree = X;
  static constexpr bool data = true;
  static const Tree& tree(const Data<X>& d) { return d.value; }
};
template <class A>
const auto& tree_of(const A& a) {
  if constexpr (tree::is_data_v<A>) return a.value;
  else return a;
}

// The gradients of a call: one tree per argument that is not data, the
// arguments' own types with Array leaves; one alone, a tuple for several.
template <class T, class... Args>
struct GradientTypes {
  template <class A>
  using One = std::conditional_t<ArgKind<A>::data, std::tuple<>, std::tuple<tree::rebind<typename ArgKind<A>::Tree, Array<T>>>>;
  using Tuple = decltype(std::tuple_cat(std::declval<One<Args>>()...));
  static constexpr std::size_t count = std::tuple_size_v<Tuple>;
  using Result = std::conditional_t<count == 1, std::tuple_element_t<0, std::conditional_t<count == 0, std::tuple<void>, Tuple>>, Tuple>;
};

// The names errors give each call, one literal per engine and call (no string
// is built on a replay: a compiled step allocates nothing).
struct FrontEndOps {
  const char *forward, *gradient, *gradient_into, *vjp, *set_needs_grad, *set_guard_policy, *output;
};
#define TG_FRONT_END_OPS(engine)                                                                          \
  ::tg::detail::FrontEndOps {                                                                             \
    engine "::forward", engine "::gradient", engine "::gradient_into", engine "::vjp",                    \
        engine "::set_needs_grad", engine "::set_guard_policy", engine "::output"                         \
  }

// The leaves of a call's arguments, in walk order, and the vector lengths
// that the types do not fix. Reused call after call: no allocation once sized.
template <class T>
struct Flat {
  std::vector<const Array<T>*> leaves;
  std::vector<std::uint64_t> structure;
  template <class... A>
  void assign(const A&... args) {
    leaves.clear();
    structure.clear();
    (tree::for_each_leaf(tree_of(args), [&](const Array<T>& leaf) { leaves.push_back(&leaf); }), ...);
    (tree::append_structure(tree_of(args), structure), ...);
  }
};

// The leaves' path names of a call ("blocks.2.w1"): a tree's leaves take
// their paths, prefixed with "arg{k}." when several arguments are trees; a
// lone Array argument is known by its input number and has none.
template <class... A>
std::vector<std::string> leaf_names(const A&... args) {
  std::vector<std::string> names;
  const int trees = ((tree::is_leaf_v<std::remove_cvref_t<decltype(tree_of(args))>> ? 0 : 1) + ... + 0);
  std::size_t k = 0;
  auto add = [&](const auto& t) {
    using X = std::remove_cvref_t<decltype(t)>;
    if constexpr (tree::is_leaf_v<X>) names.emplace_back();  // known by its position
    else for (auto& p : tree::leaf_paths(t, trees > 1 ? fmt::format("arg{}", k) : std::string())) names.push_back(std::move(p));
    ++k;
  };
  (add(tree_of(args)), ...);
  return names;
}

template <class Engine, class T, class... Args>
class FrontEnd {
  static_assert(sizeof...(Args) >= 1, "tg: a recorded function takes at least one argument");

 public:
  using Gradients = typename GradientTypes<T, Args...>::Result;
  static constexpr std::size_t gradient_count = GradientTypes<T, Args...>::count;
  // Records the function again on new arguments (held by tg::record).
  using Recorder = std::function<std::unique_ptr<Tape<T>>(const typename ArgKind<Args>::Tree&...)>;

  // The output value of the last forward run (recording or replay); an error
  // after a replay that failed (Note [Failed replays]).
  const Array<T>& output() const {
    engine_.check_usable(ops().output);
    return engine_.output();
  }
  // The output of a one-element function as a plain T.
  T value() const { return output().item(); }
  // How many inputs (leaves) the recording has, and their path names.
  std::size_t num_inputs() const { return needs_grad_.size(); }

  // Marks input (leaf) k as data that needs no gradient (Note [Inputs without
  // gradient]); tg::data(x) at the call is the usual way. A compiled program is
  // planned for one mask: changing it records the function again on the
  // current inputs and compiles that (held function needed).
  void set_needs_grad(std::size_t k, bool needs) {
    const ReplayGuard busy(owner_, ops().set_needs_grad);
    if (k >= num_inputs())
      fail(ops().set_needs_grad, fmt::format("input index ({}) out of range expected an index below {}", k, num_inputs()));
    if (engine_.set_input_needs_grad(k, needs)) {
      needs_grad_[k] = needs;
      return;
    }
    if ((needs_grad_[k] != 0) == needs) return;
    if (!recorder_)
      fail(ops().set_needs_grad,
           fmt::format("input {} cannot change its gradient mark on a compiled program without its function expected a "
                       "program compiled from a tape of tg::record with a copyable function; hint: pass tg::data(x) "
                       "when recording, or call set_needs_grad on the GradientTape before tg::compile",
                       k));
    needs_grad_[k] = needs;
    try {
      record_current();
    } catch (...) {
      needs_grad_[k] = !needs;
      throw;
    }
  }
  bool needs_grad(std::size_t k) const { return needs_grad_[k] != 0; }

  // Note [Guards]: error (default) or rerecord. Re-recording calls the function
  // given to tg::record again, so whatever it captured by reference must still
  // be alive; the needs-grad marks carry over to the new tape (and a compiled
  // program compiles the new tape with its options).
  void set_guard_policy(GuardPolicy policy) {
    if (policy == GuardPolicy::rerecord && !recorder_)
      fail(ops().set_guard_policy, "rerecord without the recorded function expected a tape made by tg::record from a "
                                   "copyable function; hint: pass a lambda or a function pointer");
    policy_ = policy;
  }
  GuardPolicy guard_policy() const { return policy_; }
  // The held function (empty when f could not be copied).
  const Recorder& recorder() const { return recorder_; }
  // How many times a replay recorded the function again (GuardPolicy::rerecord).
  int rerecords() const { return rerecords_; }

  // Replays the forward pass on new arguments (same types, structure and
  // shapes as recorded) and returns the output. tg::data marks may be given
  // again or left out. Note [One replay at a time] (tape_identity.hpp).
  template <class... A>
  const Array<T>& forward(const A&... args) {
    check_arguments<A...>();
    const ReplayGuard busy(owner_, ops().forward);
    flat_.assign(args...);
    const bool same_structure = flat_.structure == structure_ && flat_.leaves.size() == num_inputs();
    if (policy_ == GuardPolicy::error) {
      if (!same_structure) fail_structure();
      set_inputs();
      engine_.forward();
      write_back_state();
      return output();
    }
    bool same = same_structure;
    for (std::size_t k = 0; same && k < flat_.leaves.size(); ++k) same = engine_.input_shape(k) == flat_.leaves[k]->shape();
    if (!same) return rerecord(args...);  // structure and shapes are guards too
    set_inputs();
    engine_.run_forward();
    if (const std::int64_t g = engine_.first_failed_guard(); g >= 0) {
      // Until the new recording succeeds, the old one holds new values on the old path.
      engine_.mark_failed(fmt::format("guard {} failed and the function is being recorded again", g));
      return rerecord(args...);
    }
    write_back_state();
    return output();
  }

  // Replays the forward pass and reports whether every guard holds; when one
  // fails the values are marked unusable (Note [Failed replays]) and false is
  // returned, without an error (tg::jit then tries the program of another path).
  template <class... A>
  bool try_forward(const A&... args) {
    check_arguments<A...>();
    const ReplayGuard busy(owner_, ops().forward);
    flat_.assign(args...);
    if (!(flat_.structure == structure_ && flat_.leaves.size() == num_inputs())) fail_structure();
    set_inputs();
    engine_.run_forward();
    if (engine_.first_failed_guard() < 0) {
      write_back_state();
      return true;
    }
    engine_.mark_failed("a guard failed on these values");
    return false;
  }

  // Copies the new values of the arguments' State leaves from the last
  // forward run back into them (Note [State leaves]); the recording entry
  // points call it once after recording.
  template <class... A>
  void write_back_state(const A&... args) {
    flat_.assign(args...);
    write_back_state();
    flat_.leaves.clear();
  }

  // Gradients at the values of the last forward run (no replay).
  Gradients gradient() {
    const ReplayGuard busy(owner_, ops().gradient);
    check_scalar(ops().gradient);
    engine_.reverse_ones();
    return collect();
  }
  // Replays on new arguments, then returns the gradients.
  template <class A0, class... A>
  Gradients gradient(const A0& a0, const A&... args) {
    const ReplayGuard busy(owner_, ops().gradient);
    forward(a0, args...);
    return gradient();
  }
  // (value, gradients...) after a replay on new arguments.
  template <class... A>
  auto value_and_gradient(const A&... args) {
    auto g = gradient(args...);
    if constexpr (GradientTypes<T, Args...>::count == 1) return std::tuple<T, Gradients>(value(), std::move(g));
    else return std::tuple_cat(std::tuple<T>(value()), std::move(g));
  }
  // Replays, then writes the gradients into `out` (the Gradients type: a tree,
  // or a tuple of trees), reusing its arrays' storage when their sizes match.
  // Returns the value.
  template <class... A>
  T value_and_gradient_into(Gradients& out, const A&... args) {
    const ReplayGuard busy(owner_, ops().gradient_into);
    forward(args...);
    check_scalar(ops().gradient_into);
    engine_.reverse_ones();
    write_gradients(out);
    return value();
  }
  // The same at the values of the last forward run (no replay).
  T value_and_gradient_into(Gradients& out) {
    const ReplayGuard busy(owner_, ops().gradient_into);
    check_scalar(ops().gradient_into);
    engine_.reverse_ones();
    write_gradients(out);
    return value();
  }
  // The same one leaf at a time: one pointer per input (leaf), nullptr skips it.
  template <class... A>
  void gradient_into(std::initializer_list<Array<T>*> grads, const A&... args) {
    gradient_into(std::span<Array<T>* const>(grads.begin(), grads.size()), args...);
  }
  template <class... A>
  void gradient_into(std::span<Array<T>* const> grads, const A&... args) {
    const ReplayGuard busy(owner_, ops().gradient_into);
    forward(args...);
    if (grads.size() != num_inputs())
      fail(ops().gradient_into, fmt::format("{} gradient arrays for {} inputs expected one pointer per input (nullptr "
                                            "to skip one)",
                                            grads.size(), num_inputs()));
    check_scalar(ops().gradient_into);
    engine_.reverse_ones();
    for (std::size_t k = 0; k < grads.size(); ++k)
      if (grads[k]) engine_.input_gradient_into(k, *grads[k]);
  }
  // Vector-Jacobian product J^T v at the values of the last forward run, for an
  // output of any shape (v has the output's shape).
  Gradients vjp(const Array<T>& v) {
    const ReplayGuard busy(owner_, ops().vjp);
    if (!(v.shape() == output().shape()))
      fail(ops().vjp, fmt::format("v has shape {} but the output has shape {} they must match; hint: v is a cotangent "
                                  "of the output",
                                  to_string(v.shape()), to_string(output().shape())));
    engine_.reverse(v);
    return collect();
  }
  // Replays on new arguments, then returns J^T v.
  template <class A0, class... A>
  Gradients vjp(const Array<T>& v, const A0& a0, const A&... args) {
    const ReplayGuard busy(owner_, ops().vjp);
    forward(a0, args...);
    return vjp(v);
  }

 protected:
  // `first`: the arguments the tape was recorded on (their structure; no reference is kept).
  FrontEnd(Engine engine, Recorder recorder, const Args&... first)
      : engine_(std::move(engine)), recorder_(std::move(recorder)) {
    flat_.assign(first...);
    note_structure(first...);
    needs_grad_ = leaf_needs_grad(first...);
    flat_.leaves.clear();
  }
  // The structure and marks come from adopt_marks.
  FrontEnd(Engine engine, Recorder recorder) : engine_(std::move(engine)), recorder_(std::move(recorder)) {}
  // Copies `other`'s argument structure and marks (CompiledTape from GradientTape).
  template <class Other>
  void adopt_marks(const Other& other) {
    structure_ = other.structure_;
    data_leaf_ = other.data_leaf_;
    state_leaf_ = other.state_leaf_;
    needs_grad_ = other.needs_grad_;
  }

  static const FrontEndOps& ops() { return Engine::kOps; }

  Engine engine_;
  template <class, class, class...>
  friend class FrontEnd;

 private:
  template <class... A>
  static constexpr void check_arguments() {
    static_assert(sizeof...(A) == sizeof...(Args), "tg: give the replay as many arguments as the recorded function takes");
    static_assert(((std::is_same_v<typename ArgKind<A>::Tree, typename ArgKind<Args>::Tree> && (ArgKind<Args>::data || !ArgKind<A>::data)) && ...),
                  "tg: each replay argument has the type it was recorded with (tg::data only where it was recorded as data)");
  }
  // Every shape is checked before any input is set: a bad one changes nothing (Note [Failed replays]).
  void set_inputs() {
    for (std::size_t k = 0; k < flat_.leaves.size(); ++k) engine_.check_input(k, flat_.leaves[k]->shape(), ops().forward);
    for (std::size_t k = 0; k < flat_.leaves.size(); ++k) engine_.set_input(k, *flat_.leaves[k], ops().forward);
  }
  // The State leaves of flat_ take the engine's input values (the forward's updates).
  void write_back_state() {
    for (std::size_t k = 0; k < state_leaf_.size() && k < flat_.leaves.size(); ++k) {
      if (!state_leaf_[k]) continue;
      const Array<T>& updated = engine_.input_value(k);
      auto& leaf = const_cast<Array<T>&>(*flat_.leaves[k]);  // a State's mutable value (Note [State leaves])
      if (&leaf != &updated) std::copy(updated.begin(), updated.end(), leaf.data());
    }
  }
  [[noreturn]] void fail_structure() const {
    fail(ops().forward, fmt::format("the arguments have {} leaves (vector lengths {}) but the tape was recorded with {} "
                                    "(vector lengths {}) a replay needs the recorded structure; hint: "
                                    "set_guard_policy(tg::GuardPolicy::rerecord), or tg::jit, records again",
                                    flat_.leaves.size(), fmt::join(flat_.structure, ","), num_inputs(),
                                    fmt::join(structure_, ",")));
  }
  template <class... A>
  const Array<T>& rerecord(const A&... args) {
    auto fresh = recorder_(tree_of(args)...);
    flat_.assign(args...);
    std::vector<std::uint8_t> marks = leaf_needs_grad(args...);
    if (structure_ == flat_.structure) marks = needs_grad_;  // set_needs_grad marks carry over
    for (std::size_t k = 0; k < marks.size(); ++k)
      if (!marks[k]) fresh->set_input_needs_grad(k, false);
    engine_.adopt(std::move(fresh));
    note_structure(args...);
    needs_grad_ = std::move(marks);
    ++rerecords_;
    write_back_state();
    return output();
  }
  // Records again on the current input values (set_needs_grad on a compiled program).
  void record_current() {
    std::vector<Array<T>> values;
    for (std::size_t k = 0; k < num_inputs(); ++k) values.push_back(engine_.input_value(k));
    std::size_t next = 0;
    auto make = [&] { return std::move(values[next++]); };
    const std::uint64_t* cursor = structure_.data();
    auto trees = std::tuple<typename ArgKind<Args>::Tree...>{tree::build<typename ArgKind<Args>::Tree>(cursor, make)...};
    auto fresh = std::apply(recorder_, trees);
    for (std::size_t k = 0; k < num_inputs(); ++k)
      if (!needs_grad_[k]) fresh->set_input_needs_grad(k, false);
    engine_.adopt(std::move(fresh));
  }
  void check_scalar(const char* op) const {
    if (output().size() != 1)
      fail(op, fmt::format("output has shape {} ({} elements) expected one element; hint: reduce with tg::sum or "
                           "tg::mean, or use jacobian() / vjp() for array-valued functions",
                           to_string(output().shape()), output().size()));
  }
  // The gradient trees, built from the recorded structure.
  Gradients collect() const {
    std::size_t k = 0;
    auto make = [&] {
      Array<T> g;
      engine_.input_gradient_into(k++, g);
      return g;
    };
    const std::uint64_t* cursor = structure_.data();
    auto all = std::tuple<tree::rebind<typename ArgKind<Args>::Tree, Array<T>>...>{
        tree::build<tree::rebind<typename ArgKind<Args>::Tree, Array<T>>>(cursor, make)...};
    return select_gradients(std::move(all), std::index_sequence_for<Args...>{});
  }
  template <class All, std::size_t... I>
  static Gradients select_gradients(All&& all, std::index_sequence<I...>) {
    auto kept = std::tuple_cat(pick<I>(all)...);
    if constexpr (GradientTypes<T, Args...>::count == 1) return std::move(std::get<0>(kept));
    else return kept;
  }
  template <std::size_t I, class All>
  static auto pick(All& all) {
    using A = std::tuple_element_t<I, std::tuple<Args...>>;
    if constexpr (ArgKind<A>::data) return std::tuple<>();
    else return std::tuple<std::tuple_element_t<I, All>>(std::move(std::get<I>(all)));
  }
  // Writes the gradients into out's leaves (walked in order, skipping data
  // arguments' leaves); a tree of another structure is rebuilt first.
  void write_gradients(Gradients& out) {
    std::size_t leaves = 0, expected = 0;
    for_each_gradient_tree(out, [&](auto& g) { leaves += tree::count_leaves(g); });
    for (auto d : data_leaf_) expected += d ? 0 : 1;
    if (leaves != expected) out = collect();  // the first call shapes the caller's trees
    std::size_t k = 0;
    for_each_gradient_tree(out, [&](auto& g) {
      tree::for_each_leaf(g, [&](Array<T>& leaf) {
        while (data_leaf_[k]) ++k;
        engine_.input_gradient_into(k++, leaf);
      });
    });
  }
  // Per leaf of args: 1 unless its position was recorded as tg::data.
  template <class... A>
  static std::vector<std::uint8_t> leaf_needs_grad(const A&... args) {
    std::vector<std::uint8_t> out;
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (tree::for_each_leaf(tree_of(args), [&](const auto&) {
         out.push_back(ArgKind<std::tuple_element_t<I, std::tuple<Args...>>>::data ? 0 : 1);
       }),
       ...);
    }(std::index_sequence_for<A...>{});
    return out;
  }
  template <class F>
  static void for_each_gradient_tree(Gradients& out, F&& f) {
    if constexpr (GradientTypes<T, Args...>::count == 1) f(out);
    else std::apply([&](auto&... g) { (f(g), ...); }, out);
  }
  template <class... A>
  void note_structure(const A&... args) {
    structure_ = flat_.structure;
    data_leaf_ = leaf_needs_grad(args...);
    for (auto& d : data_leaf_) d = d ? 0 : 1;
    state_leaf_.clear();
    (tree::append_state_marks(tree_of(args), state_leaf_), ...);
  }

  Recorder recorder_;
  GuardPolicy policy_ = GuardPolicy::error;
  std::vector<std::uint64_t> structure_;  // the recorded vector lengths
  std::vector<std::uint8_t> needs_grad_;  // per input (leaf)
  std::vector<std::uint8_t> data_leaf_;   // per input: belongs to a tg::data argument
  std::vector<std::uint8_t> state_leaf_;  // per input: a tg::State leaf (Note [State leaves])
  Flat<T> flat_;                          // the current call's leaves
  int rerecords_ = 0;
  ReplayOwner owner_;  // Note [One replay at a time]: also guards the engine against a re-recording
};

}  // namespace detail
}  // namespace tg
