// Printing is an API: one typed equation per instruction, e.g.
//   %7:f32[64,10] = matmul %3 %5   # model.cpp:41
#pragma once

#include <string>

#include "tapegrad/autodiff/tape.hpp"

namespace tg {

template <class T>
std::string dump(const Tape<T>& tape);

// Anything that holds a tape (GradientTape).
template <class Holder>
  requires requires(const Holder& h) { h.tape(); }
std::string dump(const Holder& holder) {
  return dump(holder.tape());
}

// "f32[64,10]"
template <class T>
std::string type_string(const Array<T>& a);

extern template std::string dump(const Tape<float>&);
extern template std::string dump(const Tape<double>&);

}  // namespace tg
