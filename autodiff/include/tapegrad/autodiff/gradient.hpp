// The user API: record(), gradient(), value_and_gradient(), jacobian(), and
// GradientTape, a recorded tape kept as a reusable program.
//
//   auto [gx, gw] = tg::gradient(f, x, w);
//   auto tape = tg::record(f, x, w);          // f(const Tracked<T>&...) -> Tracked<T>
//   auto [gx2, gw2] = tape.gradient(x2, w2);  // replay on new inputs of the same shapes
#pragma once

#include <array>
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
// calls of detail::FrontEnd (front_end.hpp), and the tape itself.
template <class T, std::size_t N>
class GradientTape : public detail::FrontEnd<detail::Interpreter<T>, T, N> {
  using Base = detail::FrontEnd<detail::Interpreter<T>, T, N>;

 public:
  using typename Base::Recorder;
  explicit GradientTape(std::unique_ptr<Tape<T>> tape, Recorder recorder = {})
      : Base(detail::Interpreter<T>(std::move(tape)), std::move(recorder), all_need_grad()) {}

  const Tape<T>& tape() const { return this->engine_.tape(); }
  Tape<T>& tape() { return this->engine_.tape(); }

 private:
  static std::array<bool, N> all_need_grad() {
    std::array<bool, N> a;
    a.fill(true);
    return a;
  }
};

namespace detail {
// Records f on inputs into a fresh tape.
template <class T, std::size_t N, class F>
std::unique_ptr<Tape<T>> record_tape(F& f, const std::array<const Array<T>*, N>& inputs) {
  auto tape = std::make_unique<Tape<T>>();
  std::array<std::uint32_t, N> slots;
  for (std::size_t k = 0; k < N; ++k) slots[k] = tape->add_input(*inputs[k]);
  auto call = [&]<std::size_t... I>(std::index_sequence<I...>) {
    const std::array<Tracked<T>, N> args{Tracked<T>(tape.get(), slots[I])...};
    return Tracked<T>(f(args[I]...));
  };
  Tracked<T> y = call(std::make_index_sequence<N>{});
  if (y.tape() != tape.get())
    fail("record", "the function returned a value from another tape expected a value computed from its arguments; "
                   "hint: do not return Tracked values captured from outside");
  tape->set_output(y.slot());
  dump_tape_if_requested(*tape);
  return tape;
}
}  // namespace detail

// Records f(x, xs...) once and keeps the tape. f takes const Tracked<T>& arguments
// (a generic lambda taking auto works too) and returns a Tracked<T>.
// The tape holds a copy of f (when f can be copied) for GuardPolicy::rerecord.
template <class F, class T, class... Rest>
auto record(F&& f, const Array<T>& x, const Rest&... xs) {
  static_assert((std::is_same_v<Rest, Array<T>> && ...), "tg::record: every input must be an Array of one element type");
  constexpr std::size_t N = 1 + sizeof...(Rest);
  const std::array<const Array<T>*, N> inputs{&x, &xs...};
  auto tape = detail::record_tape<T, N>(f, inputs);
  typename GradientTape<T, N>::Recorder recorder;
  using Held = std::decay_t<F>;
  if constexpr (std::is_copy_constructible_v<Held>) {
    auto held = std::make_shared<Held>(f);
    recorder = [held](const std::array<const Array<T>*, N>& in) { return detail::record_tape<T, N>(*held, in); };
  }
  return GradientTape<T, N>(std::move(tape), std::move(recorder));
}

// Gradient of a one-element function with respect to every input.
template <class F, class T, class... Rest>
auto gradient(F&& f, const Array<T>& x, const Rest&... xs) {
  return record(std::forward<F>(f), x, xs...).gradient();
}

// (value as a plain T, gradients...).
template <class F, class T, class... Rest>
auto value_and_gradient(F&& f, const Array<T>& x, const Rest&... xs) {
  auto tape = record(std::forward<F>(f), x, xs...);
  auto grads = tape.gradient();
  if constexpr (sizeof...(Rest) == 0) return std::tuple<T, Array<T>>(tape.value(), std::move(grads));
  else return std::tuple_cat(std::tuple<T>(tape.value()), std::move(grads));
}

// Jacobian of an array-valued f: for each input, an Array of shape (outputs, input size),
// both flattened row-major. One reverse pass per output element.
template <class F, class T, class... Rest>
auto jacobian(F&& f, const Array<T>& x, const Rest&... xs) {
  constexpr std::size_t N = 1 + sizeof...(Rest);
  auto tape = record(std::forward<F>(f), x, xs...);
  const std::int64_t m = tape.output().size();
  std::array<Array<T>, N> jac;
  for (std::size_t k = 0; k < N; ++k) {
    const std::int64_t n = tape.tape().value(tape.tape().inputs()[k]).size();
    jac[k] = Array<T>(Shape{m, n});
  }
  Array<T> seed(tape.output().shape());
  for (std::int64_t i = 0; i < m; ++i) {
    seed.fill(T(0));
    seed.data()[i] = T(1);
    tape.tape().reverse(seed);
    for (std::size_t k = 0; k < N; ++k) {
      const Array<T> g = tape.tape().adjoint(tape.tape().inputs()[k]);
      std::copy(g.begin(), g.end(), jac[k].data() + i * g.size());
    }
  }
  return detail::pack<T, N>(std::move(jac));
}

}  // namespace tg
