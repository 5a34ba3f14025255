// Gradients inside a recording, and the second-order calls built on them
// (Note [Recorded pullbacks], registry.hpp):
//
//   auto penalty = [](const auto& net, const auto& x) {
//     auto gx = tg::gradient(inner_loss, net, x);   // inside a recording: a recorded value
//     return tg::sum(gx * gx);
//   };
//   auto g = tg::gradient(penalty, net, tg::data(x));    // a gradient of a gradient
//   auto hv = tg::hvp(f, x, v);                          // H(x) v, x and v of one shape
//   auto H = tg::hessian(f, x);                          // (x.size(), x.size())
#pragma once

#include <source_location>
#include <span>
#include <tuple>
#include <vector>

#include "tapegrad/autodiff/gradient.hpp"

namespace tg {
namespace detail {

// The gradients of `output` (one element) with respect to the slots `wrt`,
// recorded on `tape`: the reverse pass over the instructions from `first` on.
template <class T>
std::vector<Tracked<T>> recorded_gradient(Tape<T>& tape, std::size_t first, const Tracked<T>& output,
                                          std::span<const std::uint32_t> wrt, const std::source_location& where);
extern template std::vector<Tracked<float>> recorded_gradient(Tape<float>&, std::size_t, const Tracked<float>&,
                                                              std::span<const std::uint32_t>, const std::source_location&);
extern template std::vector<Tracked<double>> recorded_gradient(Tape<double>&, std::size_t, const Tracked<double>&,
                                                               std::span<const std::uint32_t>, const std::source_location&);

// An argument whose leaves are Tracked values (or tg::data of such a tree).
template <class X>
constexpr bool is_tracked_tree() {
  using Tree = typename ArgKind<X>::Tree;
  using E = tree::element_type<Tree>;
  if constexpr (std::is_void_v<E>) return false;
  else return std::is_same_v<tree::rebind<Tree, Tracked<E>>, Tree>;
}
template <class... Args>
concept TrackedArguments = sizeof...(Args) > 0 && (is_tracked_tree<Args>() && ...);

}  // namespace detail

namespace detail {
// f's value and the tuple of its gradient trees (one per argument that is not
// tg::data), recorded on the arguments' tape.
template <class F, class... Args>
auto nested_value_and_gradients(F&& f, const Args&... args) {
  using T = tree::element_type<typename detail::ArgKind<std::tuple_element_t<0, std::tuple<Args...>>>::Tree>;
  const std::source_location where = std::source_location::current();
  Tape<T>* tape = nullptr;
  std::vector<std::uint32_t> wrt;
  auto collect = [&](const auto& t, bool data) {
    tree::for_each_leaf(t, [&](const Tracked<T>& leaf) {
      if (tape && leaf.tape() != tape)
        fail("gradient", "the arguments' Tracked values belong to different tapes expected values of one recording; "
                         "hint: pass the values the recorded function received");
      tape = leaf.tape();
      if (!data) wrt.push_back(leaf.slot());
    });
  };
  (collect(detail::tree_of(args), detail::ArgKind<Args>::data), ...);
  if (!tape) fail("gradient", "the arguments hold no Tracked value expected at least one leaf; hint: pass a tree with leaves");
  const std::size_t first = tape->num_instructions();
  // Note [Unreachable values]: the reverse pass reads values of f that no
  // handle reaches any more, so a recording that frees those keeps them until
  // it has run, then frees what is still unreachable.
  struct KeepValues {
    Tape<T>* tape;
    bool releasing = tape->releases_unreachable();
    std::uint32_t first_slot = static_cast<std::uint32_t>(tape->num_slots());
    ~KeepValues() {
      tape->set_release_unreachable(releasing);
      tape->release_unreachable_from(first_slot);
    }
  } keep{tape};
  tape->set_release_unreachable(false);
  std::vector<Tracked<T>> grads;
  const Tracked<T> y = std::invoke(f, detail::tree_of(args)...);
  if (y.tape() != tape)
    fail("gradient", "the function returned a value of another tape expected a value computed from its arguments");
  grads = detail::recorded_gradient(*tape, first, y, wrt, where);
  std::size_t next = 0;
  auto make = [&] { return grads[next++]; };
  auto build_one = [&](const auto& arg) {
    using A = std::remove_cvref_t<decltype(arg)>;
    if constexpr (detail::ArgKind<A>::data) {
      return std::tuple<>{};
    } else {
      std::vector<std::uint64_t> structure;
      tree::append_structure(arg, structure);
      const std::uint64_t* cursor = structure.data();
      return std::tuple<A>{tree::build<A>(cursor, make)};
    }
  };
  std::tuple<decltype(build_one(args))...> parts{build_one(args)...};  // braces: in argument order
  auto all = std::apply([](auto&... p) { return std::tuple_cat(std::move(p)...); }, parts);
  return std::pair{y, std::move(all)};
}
}  // namespace detail

// tg::gradient inside a recording: the arguments are the recording's Tracked
// trees, and the gradients come back as Tracked trees of the same types, recorded
// on the same tape (so they can be differentiated again).
template <class F, class... Args>
  requires detail::TrackedArguments<Args...>
auto gradient(F&& f, const Args&... args) {
  auto all = detail::nested_value_and_gradients(std::forward<F>(f), args...).second;
  if constexpr (std::tuple_size_v<decltype(all)> == 1) return std::get<0>(std::move(all));
  else return all;
}

// tg::value_and_gradient inside a recording: (the value, a Tracked, then the
// gradients as tg::gradient gives them), one evaluation of f for both, so an op
// with state (batch_norm in training) runs once.
template <class F, class... Args>
  requires detail::TrackedArguments<Args...>
auto value_and_gradient(F&& f, const Args&... args) {
  auto [value, all] = detail::nested_value_and_gradients(std::forward<F>(f), args...);
  return std::tuple_cat(std::tuple{value}, std::move(all));
}

}  // namespace tg
