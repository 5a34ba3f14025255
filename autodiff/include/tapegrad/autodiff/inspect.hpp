// A tape for other eyes and tools (issue 6's library side; tapedump wraps these):
//
//   fmt::print("{}", tg::summary(tape));       // op counts, FLOPs, bytes of values and saved buffers
//   std::ofstream("tape.dot") << tg::dump_dot(tape);    // Graphviz: dot -Tsvg tape.dot -o tape.svg
//   std::ofstream("tape.json") << tg::dump_json(tape);  // for other tools
//   fmt::print("{}", tg::diff_tapes(before.tape(), after.tape()));  // what changed
//
// JSON layout (format "tapegrad-tape", version 1):
//   {"format": "tapegrad-tape", "version": 1, "dtype": "f32",
//    "slots": [{"id": 0, "kind": "input"|"constant"|"computed", "shape": [..], "needs_grad": true}, ...],
//    "inputs": [slot, ...],
//    "instructions": [{"out": slot, "op": "conv", "params": "padding=[2] ...", "args": [slot, ...],
//                      "flops": 1.2e6, "site": "file.cpp:41"}, ...],
//    "guards": [{"test": "any(%0 > 0)", "expected": true, "site": "file.cpp:12"}, ...],
//    "output": slot}
#pragma once

#include <string>

#include "tapegrad/autodiff/compile.hpp"
#include "tapegrad/autodiff/tape.hpp"

namespace tg {

template <class T>
std::string summary(const Tape<T>& tape);
// Bytes the interpreter holds during a gradient step: every slot's value, the
// saved buffers and the adjoints of slots that need a gradient (the summary's
// peak; CompiledProgram::held_bytes counts the same for a compiled program).
template <class T>
std::int64_t held_bytes(const Tape<T>& tape);
template <class T>
std::string dump_dot(const Tape<T>& tape);
// The tape as `program` (compiled from it) runs it: each fused step (an
// elementwise chain, a producer with its epilogue) boxed as a cluster, and
// instructions dead-code elimination removed drawn dashed.
template <class T>
std::string dump_dot(const Tape<T>& tape, const CompiledProgram<T>& program);
template <class T>
std::string dump_json(const Tape<T>& tape);

// What changed from tape `a` to tape `b` (two recordings of one model, two saved
// files): inputs, instructions added or removed (aligned by op, longest common
// subsequence), and for the instructions both have: output shape, parameters
// and arguments. One line per change; empty when they match.
template <class T>
std::string diff_tapes(const Tape<T>& a, const Tape<T>& b);

// Anything that holds a tape (GradientTape).
template <class Holder>
  requires requires(const Holder& h) { h.tape(); }
std::string summary(const Holder& h) {
  return summary(h.tape());
}
template <class Holder>
  requires requires(const Holder& h) { h.tape(); }
std::string dump_dot(const Holder& h) {
  return dump_dot(h.tape());
}
template <class Holder>
  requires requires(const Holder& h) { h.tape(); }
std::string dump_json(const Holder& h) {
  return dump_json(h.tape());
}

extern template std::string diff_tapes(const Tape<float>&, const Tape<float>&);
extern template std::string diff_tapes(const Tape<double>&, const Tape<double>&);
extern template std::int64_t held_bytes(const Tape<float>&);
extern template std::int64_t held_bytes(const Tape<double>&);
extern template std::string summary(const Tape<float>&);
extern template std::string summary(const Tape<double>&);
extern template std::string dump_dot(const Tape<float>&, const CompiledProgram<float>&);
extern template std::string dump_dot(const Tape<double>&, const CompiledProgram<double>&);
extern template std::string dump_dot(const Tape<float>&);
extern template std::string dump_dot(const Tape<double>&);
extern template std::string dump_json(const Tape<float>&);
extern template std::string dump_json(const Tape<double>&);

}  // namespace tg
