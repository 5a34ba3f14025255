// Parameter trees: a model as a plain C++ value.
//
//   template <class A> struct Block { A w1, b1, w2, b2; };
//   template <class A> struct Net { A stem_w, stem_b; std::vector<Block<A>> blocks; A fc_w, fc_b; };
//   Net<tg::Array<float>> net = ...;          // seen by a recorded function as Net<tg::Tracked<float>>
//
// A tree is an Array or a Tracked (a leaf), a std::vector or std::array of
// trees, or an aggregate struct of trees, any depth. Each leaf has a path
// name ("blocks.2.w1") for dumps, errors and checkpoints. The number of leaves
// is a run-time fact (a vector's length).
//
// Note [Struct reflection]: the fields of an aggregate are found without the
// user listing them. They are counted as the most initializers S{any...}
// accepts, with `any` converting to every type (so a std::array field takes
// one, never brace-elided elements); structured bindings reach them; a
// field's name is read from the compiler's spelling of a template whose
// argument points at that field of a never-defined object (the technique of
// Boost.PFR 2.2). Rejected: Boost.PFR 1.81 (Debian's), whose field counting
// crashes GCC 12 on a struct with a std::array field and which cannot name
// fields; and a TG_FIELDS(Net, w1, b1, ...) declaration per struct, one more
// thing to keep in step with the struct. A struct is rebound to its
// Tracked form through its one template parameter (S<Array<T>> -> S<Tracked<T>>),
// so a parameter struct is a template over its array type; a struct with
// constructors, bases or private fields is not an aggregate and is refused by
// a static_assert.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "tapegrad/autodiff/tracked.hpp"

namespace tg {

// tg::data(x): an argument that receives no gradient (images, labels). Its
// pullbacks that only feed it do not run.
template <class X>
struct Data {
  const X& value;
};
template <class X>
Data<X> data(const X& x) {
  return Data<X>{x};
}

// Note [State leaves]: tg::State<A> holds a leaf that is state, not a
// parameter: batch-norm running statistics, a dropout key. It is an input of
// a recording like any leaf (so replays see its current value), gets no
// gradient (zeros in the gradient tree), is skipped by optimizers, and is
// saved and loaded by checkpoints. An op that updates it (batch_norm in
// training mode) writes the tape's copy, and the entry point copies the new
// value back into the argument's leaf once the forward run succeeded, exactly
// once per call. `value` is mutable, so that the update reaches it through
// the const references every entry point takes, as PyTorch's buffers change
// under a forward. Rejected: returning the new state from every entry point
// (Flax's mutable collections), which every training loop would have to thread through.
template <class A>
struct State {
  mutable A value;
};

namespace tree {

template <class X>
inline constexpr bool is_array_v = false;
template <class T>
inline constexpr bool is_array_v<Array<T>> = true;
template <class X>
inline constexpr bool is_vector_v = false;
template <class X, class Al>
inline constexpr bool is_vector_v<std::vector<X, Al>> = true;
template <class X>
inline constexpr bool is_std_array_v = false;
template <class X, std::size_t N>
inline constexpr bool is_std_array_v<std::array<X, N>> = true;
template <class X>
inline constexpr bool is_data_v = false;
template <class X>
inline constexpr bool is_data_v<Data<X>> = true;

template <class X>
inline constexpr bool is_state_v = false;
template <class A>
inline constexpr bool is_state_v<State<A>> = true;

template <class X>
inline constexpr bool is_leaf_v = is_array_v<X> || is_tracked_v<X>;
template <class X>
inline constexpr bool is_struct_v = std::is_class_v<X> && std::is_aggregate_v<X> && !is_leaf_v<X> && !is_vector_v<X> &&
                                    !is_std_array_v<X> && !is_data_v<X> && !is_state_v<X>;

// The most fields reflect_fields reaches.
inline constexpr std::size_t kMaxFields = 24;

namespace detail {
// Converts to anything: S{Any{}, ...} compiles with S's field count of them, never more.
struct Any {
  template <class U>
  constexpr operator U() const noexcept;  // never defined: used in unevaluated requires-expressions only
};
template <class S, std::size_t... I>
constexpr bool initializable_with(std::index_sequence<I...>) {
  return requires { S{((void)I, Any{})...}; };
}
// The most initializers S accepts, searched downwards: a field without a
// default constructor (Tracked) makes every shorter list fail.
template <class S, std::size_t N = kMaxFields>
constexpr std::size_t count_fields() {
  if constexpr (N == 0 || initializable_with<S>(std::make_index_sequence<N>{})) return N;
  else return count_fields<S, N - 1>();
}
template <class S>
constexpr std::size_t field_count() {
  return count_fields<std::remove_cv_t<S>>();
}

// Pointers to every field of s, in declaration order (const when S is).
template <std::size_t N, class S>
constexpr auto field_pointers(S& s) {
#define TG_TIE(...)                 \
  auto& [__VA_ARGS__] = s;          \
  return std::apply([](auto&... field) { return std::tuple{&field...}; }, std::tie(__VA_ARGS__))
  static_assert(N >= 1 && N <= kMaxFields, "tg tree: a parameter struct has 1 to 24 fields; group more into nested structs");
  if constexpr (N == 1) { TG_TIE(v0); }
  else if constexpr (N == 2) { TG_TIE(v0, v1); }
  else if constexpr (N == 3) { TG_TIE(v0, v1, v2); }
  else if constexpr (N == 4) { TG_TIE(v0, v1, v2, v3); }
  else if constexpr (N == 5) { TG_TIE(v0, v1, v2, v3, v4); }
  else if constexpr (N == 6) { TG_TIE(v0, v1, v2, v3, v4, v5); }
  else if constexpr (N == 7) { TG_TIE(v0, v1, v2, v3, v4, v5, v6); }
  else if constexpr (N == 8) { TG_TIE(v0, v1, v2, v3, v4, v5, v6, v7); }
  else if constexpr (N == 9) { TG_TIE(v0, v1, v2, v3, v4, v5, v6, v7, v8); }
  else if constexpr (N == 10) { TG_TIE(v0, v1, v2, v3, v4, v5, v6, v7, v8, v9); }
  else if constexpr (N == 11) { TG_TIE(v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10); }
  else if constexpr (N == 12) { TG_TIE(v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11); }
  else if constexpr (N == 13) { TG_TIE(v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12); }
  else if constexpr (N == 14) { TG_TIE(v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13); }
  else if constexpr (N == 15) { TG_TIE(v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14); }
  else if constexpr (N == 16) { TG_TIE(v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14, v15); }
  else if constexpr (N == 17) { TG_TIE(v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14, v15, v16); }
  else if constexpr (N == 18) { TG_TIE(v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14, v15, v16, v17); }
  else if constexpr (N == 19) { TG_TIE(v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14, v15, v16, v17, v18); }
  else if constexpr (N == 20) { TG_TIE(v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14, v15, v16, v17, v18, v19); }
  else if constexpr (N == 21) { TG_TIE(v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14, v15, v16, v17, v18, v19, v20); }
  else if constexpr (N == 22) { TG_TIE(v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14, v15, v16, v17, v18, v19, v20, v21); }
  else if constexpr (N == 23) { TG_TIE(v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14, v15, v16, v17, v18, v19, v20, v21, v22); }
  else { TG_TIE(v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14, v15, v16, v17, v18, v19, v20, v21, v22, v23); }
#undef TG_TIE
}

// Field names (Note [Struct reflection]).
template <class S>
struct Never {
  const S value;
};
template <class S>
extern const Never<S> never_defined;
template <class P>
struct PointerArg {
  P p;
};
template <class P>
PointerArg(P) -> PointerArg<P>;
template <auto P>
consteval std::string_view spelling() {
  return __PRETTY_FUNCTION__;
}
// The identifier just before the last '}' of the spelling, past any ')':
// GCC "...{(& never_defined<S>.Never<S>::value.S::w1)}]", clang "...{&never_defined.value.w1}]".
consteval std::string_view last_identifier(std::string_view s) {
  std::size_t end = s.rfind('}');
  while (end > 0 && s[end - 1] == ')') --end;
  std::size_t begin = end;
  auto ident = [](char c) { return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); };
  while (begin > 0 && ident(s[begin - 1])) --begin;
  return s.substr(begin, end - begin);
}
template <class S, std::size_t I>
consteval std::string_view field_name() {
  return last_identifier(spelling<PointerArg{std::get<I>(field_pointers<field_count<S>()>(never_defined<S>.value))}>());
}
template <class S, std::size_t... I>
constexpr std::array<std::string_view, sizeof...(I)> field_names(std::index_sequence<I...>) {
  return {field_name<S, I>()...};
}
}  // namespace detail

// The names of an aggregate's fields, in declaration order.
template <class S>
inline constexpr auto field_names = detail::field_names<S>(std::make_index_sequence<detail::field_count<S>()>{});

// Calls f(field, name) for every field of the aggregate s (const or not).
template <class S, class F>
void for_each_field(S& s, F&& f) {
  using Plain = std::remove_cv_t<S>;
  constexpr std::size_t n = detail::field_count<Plain>();
  auto ptrs = detail::field_pointers<n>(s);
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    (f(*std::get<I>(ptrs), field_names<Plain>[I]), ...);
  }(std::make_index_sequence<n>{});
}

// --- types ------------------------------------------------------------------------

template <class X>
struct type_is {
  using type = X;
};

template <class X>
struct one_parameter_template : std::false_type {};
template <template <class...> class S, class A>
struct one_parameter_template<S<A>> : std::true_type {
  using argument = A;
  template <class B>
  using with = S<B>;
};

// Element type of a tree's leaves (void: no leaf type found).
template <class X>
auto element_of_tree() {
  if constexpr (is_array_v<X> || is_tracked_v<X>) return type_is<element_t<X>>{};
  else if constexpr (is_data_v<X> || is_state_v<X>) return element_of_tree<std::remove_cvref_t<decltype(std::declval<X>().value)>>();
  else if constexpr (is_vector_v<X> || is_std_array_v<X>) return element_of_tree<typename X::value_type>();
  else if constexpr (one_parameter_template<X>::value) return element_of_tree<typename one_parameter_template<X>::argument>();
  else return type_is<void>{};
}
template <class X>
using element_type = typename decltype(element_of_tree<X>())::type;

// X with every leaf replaced by L: Net<Array<float>> -> Net<Tracked<float>>.
template <class X, class L>
auto rebind_tree() {
  if constexpr (is_leaf_v<X>) return type_is<L>{};
  else if constexpr (is_state_v<X>) return type_is<State<L>>{};
  else if constexpr (is_vector_v<X>) return type_is<std::vector<typename decltype(rebind_tree<typename X::value_type, L>())::type>>{};
  else if constexpr (is_std_array_v<X>)
    return type_is<std::array<typename decltype(rebind_tree<typename X::value_type, L>())::type, std::tuple_size_v<X>>>{};
  else if constexpr (is_struct_v<X> && one_parameter_template<X>::value)
    return type_is<typename one_parameter_template<X>::template with<L>>{};
  else return type_is<void>{};
}
template <class X, class L>
using rebind = typename decltype(rebind_tree<X, L>())::type;

// Whether X is a tree of leaves of element T (checked field by field, so that
// the static_assert of an entry point can name what is wrong).
template <class X, class T>
constexpr bool is_tree_of() {
  if constexpr (is_leaf_v<X>) return std::is_same_v<element_t<X>, T>;
  else if constexpr (is_state_v<X>) return is_leaf_v<decltype(X::value)> && is_tree_of<decltype(X::value), T>();
  else if constexpr (is_vector_v<X> || is_std_array_v<X>) return is_tree_of<typename X::value_type, T>();
  else if constexpr (is_struct_v<X>) {
    if constexpr (!one_parameter_template<X>::value) return false;
    else {
      constexpr std::size_t n = detail::field_count<X>();
      using Fields = decltype(detail::field_pointers<n>(std::declval<X&>()));
      return []<std::size_t... I>(std::index_sequence<I...>) {
        return (is_tree_of<std::remove_pointer_t<std::tuple_element_t<I, Fields>>, T>() && ...);
      }(std::make_index_sequence<n>{});
    }
  } else return false;
}

// --- walking ----------------------------------------------------------------------

// A path as the walk goes down: "blocks.2.w1"; `prefix` is the argument's own name, if any.
class Path {
 public:
  explicit Path(std::string prefix = {}) : text_(std::move(prefix)) {}
  template <class F>
  void with(std::string_view part, F&& f) {
    const std::size_t keep = text_.size();
    if (!text_.empty()) text_ += '.';
    text_ += part;
    f();
    text_.resize(keep);
  }
  template <class F>
  void with(std::size_t index, F&& f) {
    with(std::string_view(std::to_string(index)), std::forward<F>(f));
  }
  const std::string& str() const { return text_; }

 private:
  std::string text_;
};

// Calls f(leaf, is_state) for every leaf in order (leaf is const when x is,
// except a State's, which is mutable: Note [State leaves]).
template <class X, class F>
void for_each_leaf_kind(X& x, F&& f) {
  using Plain = std::remove_cv_t<X>;
  if constexpr (is_leaf_v<Plain>) f(x, false);
  else if constexpr (is_state_v<Plain>) f(x.value, true);
  else if constexpr (is_vector_v<Plain> || is_std_array_v<Plain>) {
    for (auto& e : x) for_each_leaf_kind(e, f);
  } else if constexpr (is_struct_v<Plain>) {
    for_each_field(x, [&](auto& field, std::string_view) { for_each_leaf_kind(field, f); });
  } else {
    static_assert(is_leaf_v<Plain>, "tg tree: a tree is an Array, a std::vector or std::array of trees, or an aggregate "
                                    "struct of trees (template <class A> struct Net { A w, b; })");
  }
}

// Calls f(leaf) for every leaf in order, state included.
template <class X, class F>
void for_each_leaf(X& x, F&& f) {
  for_each_leaf_kind(x, [&](auto& leaf, bool) { f(leaf); });
}

// Calls f(leaf) for every leaf that is not state: what optimizers update.
template <class X, class F>
void for_each_parameter(X& x, F&& f) {
  for_each_leaf_kind(x, [&](auto& leaf, bool state) {
    if (!state) f(leaf);
  });
}

// Calls f(leaf, path) for every leaf in order (a State's path is its own field's).
template <class X, class F>
void for_each_leaf_with_path(X& x, Path& path, F&& f) {
  using Plain = std::remove_cv_t<X>;
  if constexpr (is_leaf_v<Plain>) f(x, path.str());
  else if constexpr (is_state_v<Plain>) f(x.value, path.str());
  else if constexpr (is_vector_v<Plain> || is_std_array_v<Plain>) {
    std::size_t i = 0;
    for (auto& e : x) path.with(i++, [&] { for_each_leaf_with_path(e, path, f); });
  } else if constexpr (is_struct_v<Plain>) {
    for_each_field(x, [&](auto& field, std::string_view name) { path.with(name, [&] { for_each_leaf_with_path(field, path, f); }); });
  } else {
    for_each_leaf(x, f);  // the static_assert
  }
}

template <class X>
std::size_t count_leaves(const X& x) {
  std::size_t n = 0;
  for_each_leaf(x, [&](const auto&) { ++n; });
  return n;
}

// Every leaf's path, in order ("" for a lone Array).
template <class X>
std::vector<std::string> leaf_paths(const X& x, std::string prefix = {}) {
  std::vector<std::string> out;
  Path path(std::move(prefix));
  for_each_leaf_with_path(x, path, [&](const auto&, const std::string& p) { out.push_back(p); });
  return out;
}

// Per leaf in order: 1 when it is state (Note [State leaves]).
template <class X>
void append_state_marks(const X& x, std::vector<std::uint8_t>& out) {
  for_each_leaf_kind(x, [&](const auto&, bool state) { out.push_back(state ? 1 : 0); });
}

// The paths of the leaves that are not state, in order (optimizers' names).
template <class X>
std::vector<std::string> parameter_paths(const X& x) {
  std::vector<std::string> paths = leaf_paths(x);
  std::vector<std::uint8_t> state;
  append_state_marks(x, state);
  std::vector<std::string> out;
  for (std::size_t k = 0; k < paths.size(); ++k)
    if (!state[k]) out.push_back(std::move(paths[k]));
  return out;
}

// The shape of a tree beyond its type: every vector's length, in walk order.
template <class X>
void append_structure(const X& x, std::vector<std::uint64_t>& out) {
  if constexpr (is_leaf_v<X> || is_state_v<X>) return;
  else if constexpr (is_vector_v<X> || is_std_array_v<X>) {
    if constexpr (is_vector_v<X>) out.push_back(x.size());
    for (const auto& e : x) append_structure(e, out);
  } else if constexpr (is_struct_v<X>) {
    for_each_field(x, [&](const auto& field, std::string_view) { append_structure(field, out); });
  }
}

// Builds a tree of type Y from a structure (its vector lengths in walk order,
// as append_structure gives them; the cursor advances) and make(), called once
// per leaf in order: the Tracked arguments of a recording, the gradients.
template <class Y, class Make>
Y build(const std::uint64_t*& structure, Make& make) {
  if constexpr (is_leaf_v<Y>) return make();
  else if constexpr (is_state_v<Y>) return Y{make()};
  else if constexpr (is_vector_v<Y>) {
    Y out;
    const std::uint64_t n = *structure++;
    out.reserve(n);
    for (std::uint64_t i = 0; i < n; ++i) out.push_back(build<typename Y::value_type>(structure, make));
    return out;
  } else if constexpr (is_std_array_v<Y>) {
    return [&]<std::size_t... I>(std::index_sequence<I...>) {
      return Y{((void)I, build<typename Y::value_type>(structure, make))...};  // braces: in order
    }(std::make_index_sequence<std::tuple_size_v<Y>>{});
  } else {
    constexpr std::size_t n = detail::field_count<Y>();
    using Fields = decltype(detail::field_pointers<n>(std::declval<Y&>()));
    return [&]<std::size_t... I>(std::index_sequence<I...>) {
      return Y{build<std::remove_pointer_t<std::tuple_element_t<I, Fields>>>(structure, make)...};
    }(std::make_index_sequence<n>{});
  }
}

}  // namespace tree
}  // namespace tg
