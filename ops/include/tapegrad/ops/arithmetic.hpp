// + - * / with NumPy broadcasting and with scalars, unary minus, pow.
// On Tracked values they record one instruction; on plain Arrays they compute at once.
#pragma once

#include <type_traits>

#include "tapegrad/autodiff/tracked.hpp"

namespace tg {

// Tracked (at least one side): non-template overloads so that Tracked, Array and
// scalar operands all convert to Operand (Note [Recording sites for operators]).
Tracked<float> operator+(const Operand<float>& a, const Operand<float>& b);
Tracked<float> operator-(const Operand<float>& a, const Operand<float>& b);
Tracked<float> operator*(const Operand<float>& a, const Operand<float>& b);
Tracked<float> operator/(const Operand<float>& a, const Operand<float>& b);
Tracked<float> operator-(const Operand<float>& a);
Tracked<double> operator+(const Operand<double>& a, const Operand<double>& b);
Tracked<double> operator-(const Operand<double>& a, const Operand<double>& b);
Tracked<double> operator*(const Operand<double>& a, const Operand<double>& b);
Tracked<double> operator/(const Operand<double>& a, const Operand<double>& b);
Tracked<double> operator-(const Operand<double>& a);

// Plain Arrays: exact-match templates, preferred over the Operand conversions.
template <class T> Array<T> operator+(const Array<T>& a, const Array<T>& b);
template <class T> Array<T> operator-(const Array<T>& a, const Array<T>& b);
template <class T> Array<T> operator*(const Array<T>& a, const Array<T>& b);
template <class T> Array<T> operator/(const Array<T>& a, const Array<T>& b);
template <class T> Array<T> operator+(const Array<T>& a, std::type_identity_t<T> b) { return a + Array<T>::scalar(b); }
template <class T> Array<T> operator-(const Array<T>& a, std::type_identity_t<T> b) { return a - Array<T>::scalar(b); }
template <class T> Array<T> operator*(const Array<T>& a, std::type_identity_t<T> b) { return a * Array<T>::scalar(b); }
template <class T> Array<T> operator/(const Array<T>& a, std::type_identity_t<T> b) { return a / Array<T>::scalar(b); }
template <class T> Array<T> operator+(std::type_identity_t<T> a, const Array<T>& b) { return Array<T>::scalar(a) + b; }
template <class T> Array<T> operator-(std::type_identity_t<T> a, const Array<T>& b) { return Array<T>::scalar(a) - b; }
template <class T> Array<T> operator*(std::type_identity_t<T> a, const Array<T>& b) { return Array<T>::scalar(a) * b; }
template <class T> Array<T> operator/(std::type_identity_t<T> a, const Array<T>& b) { return Array<T>::scalar(a) / b; }
template <class T> Array<T> operator-(const Array<T>& a);

// x^p for a constant exponent; x^y elementwise (broadcasting) with both differentiable.
// Note [pow at zero]: d(x^y)/dy = x^y log x is taken as 0 where x == 0.
template <class T>
Tracked<T> pow(const Tracked<T>& x, std::type_identity_t<T> p, std::source_location where = std::source_location::current());
template <class T>
Array<T> pow(const Array<T>& x, std::type_identity_t<T> p, std::source_location where = std::source_location::current());
template <class A, class B>
  requires RecordsOnTape<A, B>
Tracked<element_t<A>> pow(const A& x, const B& y, std::source_location where = std::source_location::current());
template <class T>
Array<T> pow(const Array<T>& x, const Array<T>& y, std::source_location where = std::source_location::current());

namespace ops {
template <class T>
Tracked<T> pow_tracked(const Operand<T>& x, const Operand<T>& y, const std::source_location& where);
}
template <class A, class B>
  requires RecordsOnTape<A, B>
Tracked<element_t<A>> pow(const A& x, const B& y, std::source_location where) {
  using T = element_t<A>;
  return ops::pow_tracked<T>(Operand<T>(x, where), Operand<T>(y, where), where);
}

// where(cond, a, b): a where cond != 0, b elsewhere, with the three broadcast
// together (NumPy's rule); a and b get the adjoint where they were chosen, cond
// none (a mask of 0/1 values, e.g. from a comparison computed on plain Arrays
// or passed as tg::data). A scalar may stand for a or b: where(m, x, 0.0).
namespace ops {
template <class T>
Tracked<T> where_tracked(const Operand<T>& cond, const Operand<T>& a, const Operand<T>& b, const std::source_location& where);
}
template <class C, class A, class B>
  requires RecordsOnTape<C, A, B>
Tracked<element_t<C>> where(const C& cond, const A& a, const B& b, std::source_location site = std::source_location::current()) {
  using T = element_t<C>;
  return ops::where_tracked<T>(Operand<T>(cond, site), Operand<T>(a, site), Operand<T>(b, site), site);
}
template <class C, class A>
  requires RecordsOnTape<C, A>
Tracked<element_t<C>> where(const C& cond, const A& a, std::type_identity_t<element_t<C>> b,
                            std::source_location site = std::source_location::current()) {
  using T = element_t<C>;
  return ops::where_tracked<T>(Operand<T>(cond, site), Operand<T>(a, site), Operand<T>(b, site), site);
}
template <class C, class B>
  requires RecordsOnTape<C, B>
Tracked<element_t<C>> where(const C& cond, std::type_identity_t<element_t<C>> a, const B& b,
                            std::source_location site = std::source_location::current()) {
  using T = element_t<C>;
  return ops::where_tracked<T>(Operand<T>(cond, site), Operand<T>(a, site), Operand<T>(b, site), site);
}
template <class T>
Array<T> where(const Array<T>& cond, const Array<T>& a, const Array<T>& b, std::source_location site = std::source_location::current());

}  // namespace tg
