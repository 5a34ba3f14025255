// libFuzzer target for the tape-file loader (tape_file.hpp): any bytes must load
// or throw tg::Error; anything else (a crash, a sanitizer report, another
// exception, a hang) is a bug. Run by scripts/test.sh on tests/fuzz/corpus:
//   build-fuzz/tests/fuzz/fuzz_tape_file -max_total_time=60 corpus-copy tests/fuzz/corpus
#include <cstddef>
#include <cstdint>
#include <string_view>

#include <tapegrad/tapegrad.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  // Replayed within small budgets (a file must not make the loader run long),
  // then loaded for its structure only and printed, as tapedump does.
  for (const bool replay : {true, false}) {
    const tg::LoadOptions options{
        .seed = 1, .random_inputs = false, .max_elements = std::int64_t{1} << 16, .max_flops = 1e7, .replay = replay};
    try {
      if (tg::read_tape_file_info(bytes).element_bytes == 4) {
        auto loaded = tg::deserialize_tape<float>(bytes, options);
        (void)tg::dump(loaded.tape);
        (void)tg::summary(loaded.tape);
      } else {
        auto loaded = tg::deserialize_tape<double>(bytes, options);
        (void)tg::dump(loaded.tape);
        (void)tg::summary(loaded.tape);
      }
    } catch (const tg::Error&) {
      // a clear error: what a damaged file must give
    }
  }
  return 0;
}
