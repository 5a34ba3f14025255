// The replay front-end shared by both engines: GradientTape runs a recorded
// Tape (the interpreter), CompiledTape a CompiledProgram; both are this one
// class over another engine, so forward, gradient, gradient_into, vjp,
// set_needs_grad, the guard policy and their error texts exist once.
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
// (N inputs), and a compiled replay must not pay an indirect call per input.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <tuple>
#include <utility>

#include <fmt/format.h>

#include "tapegrad/autodiff/tape.hpp"

namespace tg {

// What a replay does when its inputs break a guard or have other shapes (Note [Guards]).
enum class GuardPolicy : std::uint8_t {
  error,     // throw tg::Error naming the guard and where it was recorded (the default)
  rerecord,  // record the held function again on these inputs, and go on with the new tape
};

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

template <class Engine, class T, std::size_t N>
class FrontEnd {
 public:
  // Records the function again on new inputs (held by tg::record).
  using Recorder = std::function<std::unique_ptr<Tape<T>>(const std::array<const Array<T>*, N>&)>;

  // The output value of the last forward run (recording or replay); an error
  // after a replay that failed (Note [Failed replays]).
  const Array<T>& output() const {
    engine_.check_usable(ops().output);
    return engine_.output();
  }
  // The output of a one-element function as a plain T.
  T value() const { return output().item(); }

  // Marks input k as data that needs no gradient (Note [Inputs without gradient]):
  //   auto tape = tg::record(loss, images, labels, w, b);
  //   tape.set_needs_grad(0, false); tape.set_needs_grad(1, false);
  // A compiled program is planned for one mask: changing it records the function
  // again on the current inputs and compiles that (held function needed).
  void set_needs_grad(std::size_t k, bool needs) {
    const ReplayGuard busy(owner_, ops().set_needs_grad);
    if (k >= N) fail(ops().set_needs_grad, fmt::format("input index ({}) out of range expected an index below {}", k, N));
    if (engine_.set_input_needs_grad(k, needs)) {
      needs_grad_[k] = needs;
      return;
    }
    if (needs_grad_[k] == needs) return;
    if (!recorder_)
      fail(ops().set_needs_grad,
           fmt::format("input {} cannot change its gradient mark on a compiled program without its function expected a "
                       "program compiled from a tape of tg::record with a copyable function; hint: call "
                       "set_needs_grad on the GradientTape before tg::compile",
                       k));
    needs_grad_[k] = needs;
    try {
      std::array<const Array<T>*, N> current;
      for (std::size_t i = 0; i < N; ++i) current[i] = &engine_.input_value(i);
      record_again(current);
    } catch (...) {
      needs_grad_[k] = !needs;
      throw;
    }
  }
  bool needs_grad(std::size_t k) const { return needs_grad_[k]; }

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

  // Replays the forward pass on new inputs (same shapes as recorded) and returns the output.
  // Note [One replay at a time] (tape_identity.hpp): from one thread at a time.
  template <class... A>
  const Array<T>& forward(const A&... inputs) {
    static_assert(sizeof...(A) == N, "forward: give one Array per recorded input");
    const ReplayGuard busy(owner_, ops().forward);
    if (policy_ == GuardPolicy::error) {
      set_inputs(inputs...);
      engine_.forward();
      return output();
    }
    std::size_t k = 0;
    if (!((engine_.input_shape(k++) == inputs.shape()) && ...)) return rerecord(inputs...);  // shapes are guards too
    set_inputs(inputs...);
    engine_.run_forward();
    if (const std::int64_t g = engine_.first_failed_guard(); g >= 0) {
      // Until the new recording succeeds, the old one holds new values on the old path.
      engine_.mark_failed(fmt::format("guard {} failed and the function is being recorded again", g));
      return rerecord(inputs...);
    }
    return output();
  }

  // Gradients at the values of the last forward run (no replay).
  auto gradient() {
    const ReplayGuard busy(owner_, ops().gradient);
    check_scalar(ops().gradient);
    engine_.reverse_ones();
    return collect();
  }
  // Replays on new inputs, then returns the gradients.
  template <class... A>
  auto gradient(const A&... inputs) {
    static_assert(sizeof...(A) == N, "gradient: give one Array per recorded input");
    const ReplayGuard busy(owner_, ops().gradient);
    forward(inputs...);
    return gradient();
  }
  // Same, writing into caller-owned Arrays (their storage is reused when sizes
  // match); a nullptr entry skips that input's gradient.
  template <class... A>
  void gradient_into(const std::array<Array<T>*, N>& grads, const A&... inputs) {
    static_assert(sizeof...(A) == N, "gradient_into: give one Array per recorded input");
    const ReplayGuard busy(owner_, ops().gradient_into);
    forward(inputs...);
    check_scalar(ops().gradient_into);
    engine_.reverse_ones();
    for (std::size_t k = 0; k < N; ++k)
      if (grads[k]) engine_.input_gradient_into(k, *grads[k]);
  }
  // Vector-Jacobian product J^T v at the values of the last forward run, for an
  // output of any shape (v has the output's shape).
  auto vjp(const Array<T>& v) {
    const ReplayGuard busy(owner_, ops().vjp);
    if (!(v.shape() == output().shape()))
      fail(ops().vjp, fmt::format("v has shape {} but the output has shape {} they must match; hint: v is a cotangent "
                                  "of the output",
                                  to_string(v.shape()), to_string(output().shape())));
    engine_.reverse(v);
    return collect();
  }
  // Replays on new inputs, then returns J^T v.
  template <class... A>
  auto vjp(const Array<T>& v, const A&... inputs) {
    static_assert(sizeof...(A) == N, "vjp: give v, then one Array per recorded input");
    const ReplayGuard busy(owner_, ops().vjp);
    forward(inputs...);
    return vjp(v);
  }

 protected:
  FrontEnd(Engine engine, Recorder recorder, const std::array<bool, N>& needs_grad)
      : engine_(std::move(engine)), recorder_(std::move(recorder)), needs_grad_(needs_grad) {}

  static const FrontEndOps& ops() { return Engine::kOps; }

  Engine engine_;

 private:
  // Every shape is checked before any input is set: a bad one changes nothing (Note [Failed replays]).
  template <class... A>
  void set_inputs(const A&... inputs) {
    std::size_t k = 0;
    (engine_.check_input(k++, inputs.shape(), ops().forward), ...);
    k = 0;
    (engine_.set_input(k++, inputs, ops().forward), ...);
  }
  template <class... A>
  const Array<T>& rerecord(const A&... inputs) {
    record_again(std::array<const Array<T>*, N>{&inputs...});
    ++rerecords_;
    return output();
  }
  void record_again(const std::array<const Array<T>*, N>& inputs) {
    auto fresh = recorder_(inputs);
    for (std::size_t k = 0; k < N; ++k)
      if (!needs_grad_[k]) fresh->set_input_needs_grad(k, false);
    engine_.adopt(std::move(fresh));
  }
  void check_scalar(const char* op) const {
    if (output().size() != 1)
      fail(op, fmt::format("output has shape {} ({} elements) expected one element; hint: reduce with tg::sum or "
                           "tg::mean, or use jacobian() / vjp() for array-valued functions",
                           to_string(output().shape()), output().size()));
  }
  auto collect() const {
    std::array<Array<T>, N> grads;
    for (std::size_t k = 0; k < N; ++k) engine_.input_gradient_into(k, grads[k]);
    return pack<T, N>(std::move(grads));
  }

  Recorder recorder_;
  GuardPolicy policy_ = GuardPolicy::error;
  std::array<bool, N> needs_grad_;
  int rerecords_ = 0;
  ReplayOwner owner_;  // Note [One replay at a time]: also guards the engine against a re-recording
};

}  // namespace detail
}  // namespace tg
