// Saved tapes: a recorded (or compiled) tape as a file, loaded back and replayed
// later, by a debugging tool or as a regression test.
//
//   tg::save_tape(tape, "step.tgt");                   // GradientTape, CompiledTape or Tape
//   auto loaded = tg::load_tape<float>("step.tgt");    // .tape replayed on the saved (or seeded random) inputs
//
// Any program saves every distinct tape it records into a directory when the
// environment variable TAPEGRAD_DUMP=dir is set, without code changes (one file
// per distinct program: a training loop that records each step saves once);
// TAPEGRAD_DUMP_INPUTS=0 leaves the input values out.
//
// Note [Tape file format], version 3 (versions 1 and 2, still read, have no input names (1) and no pullback origins (1, 2)). Little-endian; strings and blobs are a
// u32 byte count then the bytes; a shape is a u32 rank then i64 dims.
//   header   "TAPEGRAD" (8 bytes), u32 version, u8 element bytes (4 = f32, 8 = f64),
//            u8 flags (1: input values present, 2: compiled), u32 compile options
//            (bit 0 dead_code, 1 plan_memory, 2 fuse_epilogues, 3 fuse_elementwise, 4 share_views,
//            5 tune_algorithms)
//   slots    u32 count, then one record per slot, in slot order:
//              u8 'I'  input:    shape, u8 needs_grad, f64 min, f64 max, u8 integer-valued,
//                                string name (its leaf path, "" for none; version 2)
//              u8 'C'  constant: shape, values
//              u8 'X'  computed: string op name, blob params (the op's save_params),
//                                string params as printed, u32 n_args, u32 slot each,
//                                shape of the output, site, u32 pullback_of (the forward
//                                slot a recorded pullback step differentiates, ~0 for
//                                none; version 3, Note [Pullback origins])
//   guards   u32 count, then each: u8 kind, u8 compare, u32 lhs, u32 rhs, f64 scalar,
//            i64 element, u8 expected, site
//   output   u32 slot (0xffffffff: none)
//   inputs   every input's values, in slot order (flag 1 only)
//   end      "END!"
//   site:    string file, string function, u32 line, u32 column
// Loading checks every field (slots refer only to earlier slots, shapes match
// what the ops compute on replay, counts fit in the bytes left) and reports the
// first bad one as tg::Error naming the field and its byte offset.
#pragma once

#include <cstdint>
#include <span>
#include <vector>
#include <string>
#include <string_view>

#include "tapegrad/autodiff/compile.hpp"
#include "tapegrad/autodiff/tape.hpp"

namespace tg {

inline constexpr std::uint32_t kTapeFileVersion = 3;

struct SaveOptions {
  bool input_values = true;  // false: inputs by shape and range only (replayed on seeded random values)
};

struct LoadOptions {
  // Inputs saved without values (or all, with random_inputs) are drawn uniformly in
  // each input's recorded [min, max] with this seed; integer-valued inputs
  // (class labels) stay integers.
  std::uint64_t seed = 1;
  bool random_inputs = false;
  // Refuse files whose values add up to more elements than this (a damaged shape
  // would otherwise ask for terabytes).
  std::int64_t max_elements = std::int64_t{1} << 31;
  // Refuse to replay more than this many FLOPs while loading: the ops' nominal
  // counts (OpInfo::flops; a convolution counts as direct), summed in file order.
  // A file of a few hundred bytes can describe hours of work.
  double max_flops = 1e11;
  // false: the structure only, for printing and comparing. Nothing is computed or
  // allocated for inputs and computed values: they have shapes but no storage,
  // guards keep the answers the file recorded, and the tape cannot be replayed
  // (forward and reverse passes are errors). max_flops does not apply.
  bool replay = true;
};

// What a file holds, read from its header only (tools pick the element type from it).
struct TapeFileInfo {
  std::uint32_t version = 0;
  int element_bytes = 0;  // 4 or 8
  bool input_values = false;
  bool compiled = false;
  CompileOptions compile_options;
};

// A tape with the compile options it was saved with (compiled = false: none).
template <class T>
struct LoadedTape {
  Tape<T> tape;
  TapeFileInfo info;
};

template <class T>
std::string serialize_tape(const Tape<T>& tape, const SaveOptions& options = {}, const CompileOptions* compiled = nullptr);
template <class T>
LoadedTape<T> deserialize_tape(std::string_view bytes, const LoadOptions& options = {});
TapeFileInfo read_tape_file_info(std::string_view bytes);
// The two halves of serialize_tape: everything up to the output slot, then the
// input values (none: left out) and the end marker. A compiled program keeps
// its skeleton so that it can be saved after its tape is gone.
template <class T>
std::string tape_file_skeleton(const Tape<T>& tape, const CompileOptions* compiled);
template <class T>
std::string finish_tape_file(std::string skeleton, std::span<const Array<T>* const> input_values);

// The whole file as bytes; throws tg::Error when it cannot be read.
std::string read_file_bytes(const std::string& path);
void write_file_bytes(const std::string& path, std::string_view bytes);

template <class T>
void save_tape(const Tape<T>& tape, const std::string& path, const SaveOptions& options = {}) {
  write_file_bytes(path, serialize_tape(tape, options));
}
template <class T, class... Args>
void save_tape(const GradientTape<T, Args...>& tape, const std::string& path, const SaveOptions& options = {}) {
  save_tape(tape.tape(), path, options);
}
template <class T>
std::string serialize_program(const CompiledProgram<T>& program, const SaveOptions& options = {}) {
  std::vector<const Array<T>*> inputs;
  if (options.input_values)
    for (auto s : program.inputs()) inputs.push_back(&program.value(s));
  return finish_tape_file<T>(program.source_skeleton(), inputs);
}
template <class T, class... Args>
void save_tape(const CompiledTape<T, Args...>& ct, const std::string& path, const SaveOptions& options = {}) {
  write_file_bytes(path, serialize_program(ct.program(), options));
}
template <class T>
LoadedTape<T> load_tape(const std::string& path, const LoadOptions& options = {}) {
  return deserialize_tape<T>(read_file_bytes(path), options);
}

#define TG_TAPE_FILE_EXTERN(T)                                                                                 \
  extern template std::string tape_file_skeleton(const Tape<T>&, const CompileOptions*);                      \
  extern template std::string finish_tape_file(std::string, std::span<const Array<T>* const>);                 \
  extern template std::string serialize_tape(const Tape<T>&, const SaveOptions&, const CompileOptions*);      \
  extern template LoadedTape<T> deserialize_tape(std::string_view, const LoadOptions&);
TG_TAPE_FILE_EXTERN(float)
TG_TAPE_FILE_EXTERN(double)
#undef TG_TAPE_FILE_EXTERN

}  // namespace tg
