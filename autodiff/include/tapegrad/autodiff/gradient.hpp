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

#include "tapegrad/autodiff/tracked.hpp"

namespace tg {

namespace detail {
// One Array for a single input, a tuple of Arrays (structured bindings) for several.
template <class T, std::size_t N, std::size_t... I>
auto to_tuple(std::array<Array<T>, N>&& a, std::index_sequence<I...>) {
  return std::tuple<decltype((void)I, Array<T>())...>(std::move(a[I])...);
}
template <class T, std::size_t N>
auto pack(std::array<Array<T>, N>&& a) {
  if constexpr (N == 1) return std::move(a[0]);
  else return to_tuple<T, N>(std::move(a), std::make_index_sequence<N>{});
}
}  // namespace detail

// What a replay does when its inputs break a guard or have other shapes (Note [Guards]).
enum class GuardPolicy : std::uint8_t {
  error,     // throw tg::Error naming the guard and where it was recorded (the default)
  rerecord,  // record the held function again on these inputs, and go on with the new tape
};

template <class T, std::size_t N>
class GradientTape {
 public:
  // Records the function again on new inputs (held by tg::record).
  using Recorder = std::function<std::unique_ptr<Tape<T>>(const std::array<const Array<T>*, N>&)>;

  explicit GradientTape(std::unique_ptr<Tape<T>> tape, Recorder recorder = {})
      : tape_(std::move(tape)), recorder_(std::move(recorder)) {
    needs_grad_.fill(true);
  }

  const Tape<T>& tape() const { return *tape_; }
  Tape<T>& tape() { return *tape_; }
  // The output value of the last forward run (recording or replay); an error
  // after a replay that failed (Note [Failed replays]).
  const Array<T>& output() const {
    tape_->check_usable("GradientTape::output");
    return tape_->value(tape_->output());
  }
  // The output of a one-element function as a plain T.
  T value() const { return output().item(); }

  // Marks input k as data that needs no gradient (Note [Inputs without gradient]):
  //   auto tape = tg::record(loss, images, labels, w, b);
  //   tape.set_needs_grad(0, false); tape.set_needs_grad(1, false);
  void set_needs_grad(std::size_t k, bool needs) {
    const detail::ReplayGuard busy(owner_, "GradientTape::set_needs_grad");
    tape_->set_input_needs_grad(k, needs);
    needs_grad_[k] = needs;
  }

  // Note [Guards]: error (default) or rerecord. Re-recording calls the function
  // given to tg::record again, so whatever it captured by reference must still
  // be alive; the needs-grad marks carry over to the new tape.
  void set_guard_policy(GuardPolicy policy) {
    if (policy == GuardPolicy::rerecord && !recorder_)
      fail("set_guard_policy", "rerecord on a tape that does not hold its function expected a tape made by tg::record "
                               "from a copyable function; hint: pass a lambda or a function pointer");
    policy_ = policy;
  }
  GuardPolicy guard_policy() const { return policy_; }
  // The held function (empty when f could not be copied), and input k's needs-grad mark.
  const Recorder& recorder() const { return recorder_; }
  bool needs_grad(std::size_t k) const { return needs_grad_[k]; }
  // How many times a replay recorded the function again (GuardPolicy::rerecord).
  int rerecords() const { return rerecords_; }

  // Replays the forward pass on new inputs (same shapes as recorded) and returns the output.
  // Note [One replay at a time] (tape_identity.hpp): from one thread at a time.
  template <class... A>
  const Array<T>& forward(const A&... inputs) {
    static_assert(sizeof...(A) == N, "GradientTape::forward: give one Array per recorded input");
    const detail::ReplayGuard busy(owner_, "GradientTape::forward");
    if (policy_ == GuardPolicy::error) {
      set_inputs(inputs...);
      tape_->forward_pass();
      return output();
    }
    if (!same_shapes(inputs...)) return rerecord(inputs...);  // shapes are guards too
    set_inputs(inputs...);
    tape_->run_forward();
    if (const std::int64_t g = tape_->first_failed_guard(); g >= 0) {
      // Until the new recording succeeds, the old tape holds new values on the old path.
      tape_->mark_failed(fmt::format("guard {} failed and the function is being recorded again", g));
      return rerecord(inputs...);
    }
    return output();
  }

  // Gradients at the values already on the tape (no replay).
  auto gradient() {
    const detail::ReplayGuard busy(owner_, "GradientTape::gradient");
    check_scalar("gradient");
    tape_->reverse_pass(Array<T>::ones(output().shape()));
    return collect();
  }
  // Replays on new inputs, then returns the gradients: no re-recording.
  template <class... A>
  auto gradient(const A&... inputs) {
    static_assert(sizeof...(A) == N, "GradientTape::gradient: give one Array per recorded input");
    const detail::ReplayGuard busy(owner_, "GradientTape::gradient");
    forward(inputs...);
    return gradient();
  }
  // Same, writing into caller-owned Arrays (their storage is reused when sizes match);
  // a nullptr entry skips that input's gradient.
  template <class... A>
  void gradient_into(const std::array<Array<T>*, N>& grads, const A&... inputs) {
    const detail::ReplayGuard busy(owner_, "GradientTape::gradient_into");
    forward(inputs...);
    check_scalar("gradient_into");
    tape_->reverse_pass(Array<T>::ones(output().shape()));
    for (std::size_t k = 0; k < N; ++k)
      if (grads[k]) tape_->adjoint_into(tape_->inputs()[k], *grads[k]);
  }
  // Vector-Jacobian product at the current values: J^T v, for an output of any shape.
  auto vjp(const Array<T>& v) {
    const detail::ReplayGuard busy(owner_, "GradientTape::vjp");
    tape_->reverse_pass(v);
    return collect();
  }

 private:
  // Every shape is checked before any input is set: a bad one changes nothing (Note [Failed replays]).
  template <class... A>
  void set_inputs(const A&... inputs) {
    std::size_t k = 0;
    (tape_->check_input(k++, inputs.shape(), "GradientTape::gradient"), ...);
    k = 0;
    (tape_->set_input(k++, inputs, "GradientTape::gradient"), ...);
  }
  template <class... A>
  bool same_shapes(const A&... inputs) const {
    std::size_t k = 0;
    return ((tape_->value(tape_->inputs()[k++]).shape() == inputs.shape()) && ...);
  }
  template <class... A>
  const Array<T>& rerecord(const A&... inputs) {
    auto fresh = recorder_(std::array<const Array<T>*, N>{&inputs...});
    for (std::size_t k = 0; k < N; ++k)
      if (!needs_grad_[k]) fresh->set_input_needs_grad(k, false);
    tape_ = std::move(fresh);
    ++rerecords_;
    return output();
  }
  void check_scalar(const char* op) const {
    if (output().size() != 1)
      fail(op, fmt::format("output has shape {} ({} elements) expected one element; hint: reduce with tg::sum or "
                           "tg::mean, or use jacobian() / vjp() for array-valued functions",
                           to_string(output().shape()), output().size()));
  }
  auto collect() const {
    std::array<Array<T>, N> grads;
    for (std::size_t k = 0; k < N; ++k) grads[k] = tape_->adjoint(tape_->inputs()[k]);
    return detail::pack<T, N>(std::move(grads));
  }

  std::unique_ptr<Tape<T>> tape_;
  Recorder recorder_;
  GuardPolicy policy_ = GuardPolicy::error;
  std::array<bool, N> needs_grad_;
  int rerecords_ = 0;
  detail::ReplayOwner owner_;  // Note [One replay at a time]: also guards tape_ against a re-recording
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
    tape.tape().reverse_pass(seed);
    for (std::size_t k = 0; k < N; ++k) {
      const Array<T> g = tape.tape().adjoint(tape.tape().inputs()[k]);
      std::copy(g.begin(), g.end(), jac[k].data() + i * g.size());
    }
  }
  return detail::pack<T, N>(std::move(jac));
}

}  // namespace tg
