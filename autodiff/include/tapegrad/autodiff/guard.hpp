// Guards: comparisons of tracked values that C++ control flow may depend on
// while a tape records (Note [Guards], tape.hpp).
//
//   auto f = [](const tg::Tracked<double>& x) {
//     if (tg::any(x > 0.0)) return tg::sum(tg::relu(x));   // records a guard
//     return tg::sum(x * x);
//   };
//   auto tape = tg::record(f, x);
//   tape.gradient(x2);            // throws if any(x2 > 0) differs from any(x > 0)
//   tape.set_guard_policy(tg::GuardPolicy::rerecord);
//   tape.gradient(x2);            // records f again on x2 instead
//
//   if (x.at({0}) > 0.5) ...     // one element, guarded the same way
//
// x.value() and x.item() are not guarded: use them for printing, not for
// decisions (the dump counts and warns about such reads while recording).
#pragma once

#include <optional>
#include <source_location>
#include <type_traits>

#include "tapegrad/autodiff/tracked.hpp"

namespace tg {

// lhs <compare> rhs, elementwise, waiting for tg::any or tg::all.
template <class T>
struct Comparison {
  Tracked<T> lhs;
  std::optional<Tracked<T>> rhs;  // absent: compare with `scalar`
  T scalar{};
  Compare compare;
};

namespace detail {
inline Compare mirrored(Compare c) {  // a < x  is  x > a
  switch (c) {
    case Compare::greater: return Compare::less;
    case Compare::greater_equal: return Compare::less_equal;
    case Compare::less: return Compare::greater;
    case Compare::less_equal: return Compare::greater_equal;
    default: return c;
  }
}
template <class T>
bool guard(const Comparison<T>& c, GuardKind kind, const std::source_location& where) {
  Guard g;
  g.kind = kind;
  g.compare = c.compare;
  g.lhs = c.lhs.slot();
  if (c.rhs) {
    if (c.rhs->tape() != c.lhs.tape())
      fail(kind == GuardKind::any ? "any" : "all", "compares values of two different tapes expected values of one "
                                                   "recording; hint: compare inside the function being recorded");
    g.rhs = c.rhs->slot();
  }
  g.scalar = static_cast<double>(c.scalar);
  g.where = where;
  try {
    return c.lhs.tape()->add_guard(g);
  } catch (const Error& e) {
    throw e.with_site(where);
  }
}
}  // namespace detail

#define TG_COMPARISON(op, name)                                                                         \
  template <class T>                                                                                    \
  Comparison<T> operator op(const Tracked<T>& a, const Tracked<T>& b) {                                 \
    return {a, b, T(0), Compare::name};                                                                 \
  }                                                                                                     \
  template <class T>                                                                                    \
  Comparison<T> operator op(const Tracked<T>& a, std::type_identity_t<T> b) {                           \
    return {a, std::nullopt, b, Compare::name};                                                         \
  }                                                                                                     \
  template <class T>                                                                                    \
  Comparison<T> operator op(std::type_identity_t<T> a, const Tracked<T>& b) {                           \
    return {b, std::nullopt, a, detail::mirrored(Compare::name)};                                       \
  }
TG_COMPARISON(>, greater)
TG_COMPARISON(>=, greater_equal)
TG_COMPARISON(<, less)
TG_COMPARISON(<=, less_equal)
TG_COMPARISON(==, equal)
TG_COMPARISON(!=, not_equal)
#undef TG_COMPARISON

// True when the comparison holds for some element; recorded as a guard.
template <class T>
bool any(const Comparison<T>& c, std::source_location where = std::source_location::current()) {
  return detail::guard(c, GuardKind::any, where);
}
// True when the comparison holds for every element; recorded as a guard.
template <class T>
bool all(const Comparison<T>& c, std::source_location where = std::source_location::current()) {
  return detail::guard(c, GuardKind::all, where);
}

// One element of a tracked value, compared with a number: x.at(i, j) > 0.5.
// Each comparison answers from the current value and records a guard.
template <class T>
class GuardedElement {
 public:
  GuardedElement(const Tracked<T>& x, std::int64_t flat, std::source_location where) : x_(x), flat_(flat), where_(where) {}

#define TG_ELEMENT_COMPARISON(op, name)                                                   \
  friend bool operator op(const GuardedElement& e, std::type_identity_t<T> v) {           \
    return e.guard(Compare::name, v);                                                     \
  }                                                                                       \
  friend bool operator op(std::type_identity_t<T> v, const GuardedElement& e) {           \
    return e.guard(detail::mirrored(Compare::name), v);                                   \
  }
  TG_ELEMENT_COMPARISON(>, greater)
  TG_ELEMENT_COMPARISON(>=, greater_equal)
  TG_ELEMENT_COMPARISON(<, less)
  TG_ELEMENT_COMPARISON(<=, less_equal)
  TG_ELEMENT_COMPARISON(==, equal)
  TG_ELEMENT_COMPARISON(!=, not_equal)
#undef TG_ELEMENT_COMPARISON

 private:
  bool guard(Compare c, T v) const {
    Guard g;
    g.kind = GuardKind::element;
    g.compare = c;
    g.lhs = x_.slot();
    g.scalar = static_cast<double>(v);
    g.element = flat_;
    g.where = where_;
    try {
      return x_.tape()->add_guard(g);
    } catch (const Error& e) {
      throw e.with_site(where_);
    }
  }
  Tracked<T> x_;
  std::int64_t flat_;
  std::source_location where_;
};

// The element at a row-major multi-index (one index per dimension), guarded.
template <class T>
GuardedElement<T> at(const Tracked<T>& x, std::initializer_list<std::int64_t> index,
                     std::source_location where = std::source_location::current()) {
  const Shape& s = x.shape();
  if (index.size() != s.rank())
    throw Error("at", fmt::format("{} indices for a value of rank {} expected one index per dimension", index.size(), s.rank()),
                site_string(where));
  std::int64_t flat = 0;
  std::size_t d = 0;
  for (std::int64_t i : index) {
    if (i < 0 || i >= s[d])
      throw Error("at", fmt::format("index {} along dimension {} of shape {} expected 0 <= index < {}", i, d, to_string(s), s[d]),
                  site_string(where));
    flat = flat * s[d] + i;
    ++d;
  }
  return GuardedElement<T>(x, flat, where);
}

template <class T>
GuardedElement<T> Tracked<T>::at(std::initializer_list<std::int64_t> index, std::source_location where) const {
  return tg::at(*this, index, where);
}

}  // namespace tg
