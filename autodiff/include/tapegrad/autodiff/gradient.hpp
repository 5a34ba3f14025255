// The user API: record(), gradient(), value_and_gradient(), jacobian(), and
// GradientTape, a recorded tape kept as a reusable program.
//
//   auto [gx, gw] = tg::gradient(f, x, w);
//   auto tape = tg::record(f, x, w);          // f(const Tracked<T>&...) -> Tracked<T>
//   auto [gx2, gw2] = tape.gradient(x2, w2);  // replay on new inputs of the same shapes
//   auto g = tg::gradient(loss, net, tg::data(images), tg::data(labels));  // g: net's type (tree.hpp)
#pragma once

#include <array>
#include <type_traits>
#include <vector>
#include <functional>
#include <memory>
#include <tuple>
#include <utility>

#include "tapegrad/autodiff/front_end.hpp"
#include "tapegrad/autodiff/tracked.hpp"

namespace tg {

namespace detail {
// The interpreter as an engine of the front-end (Note [Engines]): it runs the recorded Tape itself.
template <class T>
class Interpreter {
 public:
  static constexpr FrontEndOps kOps = TG_FRONT_END_OPS("GradientTape");
  explicit Interpreter(std::unique_ptr<Tape<T>> tape) : tape_(std::move(tape)) {}

  Tape<T>& tape() { return *tape_; }
  const Tape<T>& tape() const { return *tape_; }

  void check_input(std::size_t k, const Shape& shape, const char* op) const { tape_->check_input(k, shape, op); }
  void set_input(std::size_t k, const Array<T>& value, const char* op) { tape_->set_input(k, value, op); }
  const Shape& input_shape(std::size_t k) const { return input_value(k).shape(); }
  const Array<T>& input_value(std::size_t k) const { return tape_->value(tape_->inputs()[k]); }
  void forward() { tape_->forward(); }
  void run_forward() { tape_->run_forward(); }
  std::int64_t first_failed_guard() const { return tape_->first_failed_guard(); }
  void mark_failed(std::string why) { tape_->mark_failed(std::move(why)); }
  void check_usable(const char* op) const { tape_->check_usable(op); }
  const Array<T>& output() const { return tape_->value(tape_->output()); }
  void reverse(const Array<T>& seed) { tape_->reverse(seed); }
  void reverse_ones() { tape_->reverse(Array<T>::ones(output().shape())); }
  void input_gradient_into(std::size_t k, Array<T>& out) const { tape_->adjoint_into(tape_->inputs()[k], out); }
  bool set_input_needs_grad(std::size_t k, bool needs) {
    tape_->set_input_needs_grad(k, needs);
    return true;
  }
  void adopt(std::unique_ptr<Tape<T>> fresh) { tape_ = std::move(fresh); }

 private:
  std::unique_ptr<Tape<T>> tape_;
};
}  // namespace detail

// A recorded tape kept as a reusable program, run by the interpreter: the
// calls of detail::FrontEnd (front_end.hpp), and the tape itself. Args are the
// argument types given to tg::record (trees, tg::data(tree)).
template <class T, class... Args>
class GradientTape : public detail::FrontEnd<detail::Interpreter<T>, T, Args...> {
  using Base = detail::FrontEnd<detail::Interpreter<T>, T, Args...>;

 public:
  using typename Base::Recorder;
  GradientTape(std::unique_ptr<Tape<T>> tape, Recorder recorder, const Args&... first)
      : Base(detail::Interpreter<T>(std::move(tape)), std::move(recorder), first...) {}

  const Tape<T>& tape() const { return this->engine_.tape(); }
  Tape<T>& tape() { return this->engine_.tape(); }
};

// Records every call of tg::constant and refuses captured Arrays (Note [Captured values]).
enum class Capture : std::uint8_t {
  refuse,  // tg::record, tg::jit: the tape is replayed, so a copied Array would go stale
  copy,    // tg::gradient and the other one-shot calls: nothing is replayed
};

namespace detail {

// Misuse that would otherwise be pages of overload candidates: one
// static_assert line, and false, so that the caller stops there.
template <class T, class F, class... Args>
constexpr bool recordable() {
  constexpr bool has_element = !std::is_void_v<T>;
  static_assert(has_element, "tg: each argument must be a tree of Arrays: an Array, a std::vector or std::array of trees, "
                             "or an aggregate struct that is a template over its array type, template <class A> struct "
                             "S { A w, b; } (tree.hpp)");
  if constexpr (!has_element) {
    return false;
  } else {
    constexpr bool trees = (tree::is_tree_of<typename ArgKind<Args>::Tree, T>() && ...);
    static_assert(trees, "tg: each argument must be a tree of Arrays of one element type: an Array, a std::vector or "
                         "std::array of trees, or an aggregate struct template <class A> struct S { A w, b; } (tree.hpp)");
    if constexpr (!trees) {
      return false;
    } else {
      constexpr bool callable = std::is_invocable_v<F&, const tree::rebind<typename ArgKind<Args>::Tree, Tracked<T>>&...>;
      static_assert(callable, "tg: the function cannot be called with the Tracked forms of the arguments: take `const "
                              "auto&` (or tg::Tracked<T> / S<tg::Tracked<T>>) parameters, not tg::Array");
      if constexpr (!callable) {
        return false;
      } else {
        using R = std::remove_cvref_t<std::invoke_result_t<F&, const tree::rebind<typename ArgKind<Args>::Tree, Tracked<T>>&...>>;
        constexpr bool returns_tracked = std::is_same_v<R, Tracked<T>>;
        static_assert(returns_tracked, "tg: the function must return a tg::Tracked<T> computed from its arguments (it "
                                       "returned something else, e.g. an Array or a scalar)");
        return returns_tracked;
      }
    }
  }
}
// What an entry point returns after a failed static_assert (nothing else is compiled).
struct NotRecorded {};

// What follows a recording: the tape is kept (replayed, differentiated), or
// it is compiled at once (tg::jit). Compiling at once, the recording drops the
// values no handle can reach (Note [Unreachable values], tape.hpp), and it
// leaves the State leaves as they were: the compiled program's first run
// updates them (Note [State leaves]), which would otherwise happen twice.
enum class RecordFor : std::uint8_t { tape, compiling };

// Records f on the arguments' trees into a fresh tape: one input per leaf,
// named by its path; the leaves of tg::data positions get no gradient.
template <class T, class... Args, class F>
std::unique_ptr<Tape<T>> record_tape(F& f, Capture capture, RecordFor use, const typename ArgKind<Args>::Tree&... trees) {
  auto tape = std::make_unique<Tape<T>>();
  tape->set_refuse_captures(capture == Capture::refuse);
  tape->set_release_unreachable(use == RecordFor::compiling);
  const std::vector<std::string> names = leaf_names(trees...);
  std::vector<std::uint32_t> slots;
  auto add = [&](const auto& t, bool needs) {
    tree::for_each_leaf_kind(t, [&](const Array<T>& leaf, bool state) {
      slots.push_back(tape->add_input(leaf, needs, names[slots.size()], state));
    });
  };
  (add(trees, !ArgKind<Args>::data), ...);
  std::vector<std::uint64_t> structure;
  (tree::append_structure(trees, structure), ...);
  std::size_t next = 0;
  auto make = [&] { return Tracked<T>(tape.get(), slots[next++]); };
  const std::uint64_t* cursor = structure.data();
  const std::tuple<tree::rebind<typename ArgKind<Args>::Tree, Tracked<T>>...> tracked{
      tree::build<tree::rebind<typename ArgKind<Args>::Tree, Tracked<T>>>(cursor, make)...};
  const RecordingScope scope(tape.get());
  Tracked<T> y = std::apply(f, tracked);
  if (y.tape() != tape.get())
    fail("record", "the function returned a value from another tape expected a value computed from its arguments; "
                   "hint: do not return Tracked values captured from outside");
  tape->set_output(y.slot());
  dump_tape_if_requested(*tape);
  return tape;
}

template <class T, class F, class... Args>
GradientTape<T, Args...> record_checked(F&& f, Capture capture, RecordFor use, const Args&... args) {
  auto tape = record_tape<T, Args...>(f, capture, use, tree_of(args)...);
  typename GradientTape<T, Args...>::Recorder recorder;
  using Held = std::decay_t<F>;
  if constexpr (std::is_copy_constructible_v<Held>) {
    auto held = std::make_shared<Held>(f);
    recorder = [held, capture](const typename ArgKind<Args>::Tree&... trees) {
      return record_tape<T, Args...>(*held, capture, RecordFor::tape, trees...);
    };
  }
  GradientTape<T, Args...> out(std::move(tape), std::move(recorder), args...);
  if (use == RecordFor::tape) out.write_back_state(args...);
  return out;
}

template <class T, class F, class... Args>
auto record_with(F&& f, Capture capture, RecordFor use, const Args&... args) {
  if constexpr (!recordable<T, std::decay_t<F>, Args...>()) return NotRecorded{};
  else return record_checked<T>(std::forward<F>(f), capture, use, args...);
}
template <class T, class F, class... Args>
auto record_with(F&& f, Capture capture, const Args&... args) {
  return record_with<T>(std::forward<F>(f), capture, RecordFor::tape, args...);
}

template <class... Args>
using element_of_args = tree::element_type<std::tuple_element_t<0, std::tuple<typename ArgKind<Args>::Tree...>>>;

}  // namespace detail

// Records f(args...) once and keeps the tape: a reusable program.
//   auto tape = tg::record(loss, net, tg::data(x), tg::data(y));
//   auto g = tape.gradient(net, tg::data(x2), tg::data(y2));   // replay: g has net's type
// Each argument is a tree of Arrays (an Array, a std::vector or std::array of
// trees, an aggregate struct template over its array type), or tg::data(tree)
// for one that gets no gradient; f sees each tree with Tracked leaves (take
// `const auto&`) and returns a Tracked<T>. Note [Captured values]: an Array
// the function captures instead of taking as an argument is refused, since a
// replay would keep its recording-time value; tg::constant(a) copies one on purpose.
// The tape holds a copy of f (when f can be copied) for GuardPolicy::rerecord.
template <class F, class... Args>
auto record(F&& f, const Args&... args) {
  return detail::record_with<detail::element_of_args<Args...>>(std::forward<F>(f), Capture::refuse, args...);
}

// Gradient of a one-element function with respect to every argument that is
// not tg::data: one tree of the argument's type, a tuple for several.
template <class F, class... Args>
auto gradient(F&& f, const Args&... args) {
  auto tape = detail::record_with<detail::element_of_args<Args...>>(std::forward<F>(f), Capture::copy, args...);
  if constexpr (std::is_same_v<decltype(tape), detail::NotRecorded>) return tape;
  else return tape.gradient();
}

// (value as a plain T, gradients...).
template <class F, class... Args>
auto value_and_gradient(F&& f, const Args&... args) {
  auto tape = detail::record_with<detail::element_of_args<Args...>>(std::forward<F>(f), Capture::copy, args...);
  if constexpr (std::is_same_v<decltype(tape), detail::NotRecorded>) return tape;
  else return tape.value_and_gradient();
}

namespace detail {
template <class Tape>
auto jacobian_of(Tape& tape) {
  using T = std::remove_cvref_t<decltype(tape.value())>;
  const std::int64_t m = tape.output().size();
  const std::size_t n_in = tape.tape().inputs().size();
  std::vector<Array<T>> jac(n_in);
  for (std::size_t k = 0; k < n_in; ++k) jac[k] = Array<T>(Shape{m, tape.tape().value(tape.tape().inputs()[k]).size()});
  Array<T> seed(tape.output().shape());
  for (std::int64_t i = 0; i < m; ++i) {
    seed.fill(T(0));
    seed.data()[i] = T(1);
    tape.tape().reverse(seed);
    for (std::size_t k = 0; k < n_in; ++k) {
      const Array<T> g = tape.tape().adjoint(tape.tape().inputs()[k]);
      std::copy(g.begin(), g.end(), jac[k].data() + i * g.size());
    }
  }
  // The gradient trees' structure, with the Jacobians as leaves.
  auto grads = tape.vjp(seed);
  std::size_t k = 0;
  auto put = [&](auto& tree_of_grads) {
    tree::for_each_leaf(tree_of_grads, [&](Array<T>& leaf) {
      while (!tape.needs_grad(k)) ++k;
      leaf = std::move(jac[k++]);
    });
  };
  if constexpr (Tape::gradient_count == 1) put(grads);
  else std::apply([&](auto&... g) { (put(g), ...); }, grads);
  return grads;
}
}  // namespace detail

// Jacobian of an array-valued f: for each input leaf, an Array of shape
// (outputs, leaf size), both flattened row-major, in the gradients' tree
// types. One reverse pass per output element.
template <class F, class... Args>
auto jacobian(F&& f, const Args&... args) {
  using T = detail::element_of_args<Args...>;
  auto tape = detail::record_with<T>(std::forward<F>(f), Capture::copy, args...);
  if constexpr (std::is_same_v<decltype(tape), detail::NotRecorded>) return tape;
  else return detail::jacobian_of(tape);
}

}  // namespace tg
