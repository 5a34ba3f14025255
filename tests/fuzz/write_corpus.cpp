// Writes the tape-file fuzzer's seed corpus: saved tapes that load (seed-*) and
// damaged ones that must fail with a clear error (bad-*). Run it by hand after
// a change of the file format, then commit the files:
//   cmake --build build --target write_fuzz_corpus && build/tests/write_fuzz_corpus tests/fuzz/corpus
// (bad-conv-overflow.tgt and bad-huge-label.tgt came from the fuzzer itself and are kept as they are.)
#include <filesystem>
#include <string>

#include <fmt/format.h>

#include "support/tape_models.hpp"

namespace fs = std::filesystem;
using namespace tgtest;

int main(int argc, char** argv) try {
  if (argc != 2) {
    fmt::print(stderr, "usage: write_fuzz_corpus DIR\n");
    return 2;
  }
  const fs::path dir = argv[1];
  fs::create_directories(dir);
  int written = 0;
  auto write = [&](const std::string& name, const std::string& bytes) {
    tg::write_file_bytes((dir / name).string(), bytes);
    ++written;
  };
  auto cnn = models::record_small_cnn<double>();
  auto every = models::record_every_param<float>();
  auto small = tg::record([](const tg::Tracked<float>& v) { return tg::sum(tg::relu(v) * 2.0f); },
                          tg::Array<float>::random_uniform({3}, -1, 1, 1));
  const std::string seed = tg::serialize_tape(cnn.tape());
  write("seed-cnn-f64.tgt", seed);
  write("seed-every-param-f32.tgt", tg::serialize_tape(every.tape(), {.input_values = false}));
  write("seed-small-f32.tgt", tg::serialize_tape(small.tape()));
  write("seed-compiled-f64.tgt", tg::serialize_program(tg::compile(cnn).program()));
  write("bad-truncated.tgt", seed.substr(0, seed.size() / 2));
  std::string future = seed;
  future[8] = 9;
  write("bad-future-version.tgt", future);
  write("bad-magic.tgt", "TAPEGRAF" + seed.substr(8));
  write("bad-trailing.tgt", seed + "junk");
  std::string op = seed;
  op.replace(op.find("maxpool"), 7, "maxpoox");
  write("bad-unknown-op.tgt", op);
  std::string kind = seed;
  kind[8 + 4 + 1 + 1 + 4 + 4] = 'Q';  // the first slot's kind
  write("bad-slot-kind.tgt", kind);
  write("bad-huge-conv.tgt", models::huge_conv_file());    // 2e13 FLOPs to replay
  write("bad-huge-input.tgt", models::huge_input_file());  // 2^30 input elements
  write("bad-huge-padding.tgt", models::huge_padding_file(tg::ConvAlgorithm::implicit_gemm));  // a 9.9e12-element copy
  write("seed-wide-padding-f32.tgt", models::huge_padding_file(tg::ConvAlgorithm::automatic));
  fmt::print("write_fuzz_corpus: {} files in {}\n", written, dir.string());
  return 0;
} catch (const std::exception& e) {
  fmt::print(stderr, "write_fuzz_corpus: {}\n", e.what());
  return 1;
}
