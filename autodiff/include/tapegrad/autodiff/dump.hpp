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

// Where an instruction came from: its site, "model.cpp:12", and for a step of
// a recorded pullback the forward instruction it differentiates,
// "pullback of %5, model.cpp:12" (Note [Pullback origins]).
template <class T>
std::string origin_string(const Instr<T>& ins) {
  if (ins.pullback_of == Tape<T>::kNoSlot) return site_string(ins.where);
  return "pullback of %" + std::to_string(ins.pullback_of) + ", " + site_string(ins.where);
}

// One instruction as its equation, "%7:f32[64,10] = matmul %3 %5" (no site).
template <class T>
std::string equation(const Tape<T>& tape, const Instr<T>& ins);
// The same from its parts (the compiled program prints its steps with it).
template <class T>
std::string equation(std::uint32_t out, const Array<T>& value, const OpInfo<T>& op, const OpParams* params,
                     std::span<const std::uint32_t> args);

// A profile (Tape::set_profile) as a table: per instruction the forward and
// pullback time of one pass and its share of the total, slowest first.
template <class T>
std::string dump_profile(const Tape<T>& tape, const TapeProfile& profile);
// The table itself, for any program: lines[i] describes step i of the profile.
std::string format_profile(const TapeProfile& profile, std::span<const std::string> lines);

// One line per guard (Note [Guards]): "guard 0: any(%3 > 0) is true   # site".
std::string guard_lines(std::span<const Guard> guards);

// "f32[64,10]"
template <class T>
std::string type_string(const Array<T>& a);

extern template std::string dump(const Tape<float>&);
extern template std::string dump(const Tape<double>&);
extern template std::string equation(const Tape<float>&, const Instr<float>&);
extern template std::string equation(const Tape<double>&, const Instr<double>&);
extern template std::string equation(std::uint32_t, const Array<float>&, const OpInfo<float>&, const OpParams*,
                                     std::span<const std::uint32_t>);
extern template std::string equation(std::uint32_t, const Array<double>&, const OpInfo<double>&, const OpParams*,
                                     std::span<const std::uint32_t>);
extern template std::string dump_profile(const Tape<float>&, const TapeProfile&);
extern template std::string dump_profile(const Tape<double>&, const TapeProfile&);

}  // namespace tg
