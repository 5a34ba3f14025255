// libFuzzer target for the safetensors checkpoint loader (checkpoint.hpp): any
// bytes must load into a small model or throw tg::Error; anything else (a
// crash, a sanitizer report, another exception, a huge allocation) is a bug.
// Run by scripts/test.sh on tests/fuzz/safetensors_corpus.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <tapegrad/tapegrad.hpp>

namespace {
template <class Arr>
struct Layer {
  Arr w, b;
};
template <class Arr>
struct Model {
  Layer<Arr> first;
  std::vector<Layer<Arr>> rest;
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  Model<tg::Array<float>> m{{tg::Array<float>::zeros({2, 3}), tg::Array<float>::zeros({3})},
                            {{tg::Array<float>::zeros({3, 3}), tg::Array<float>::zeros({3})}}};
  std::vector<tg::checkpoint_impl::Destination> into;
  tg::checkpoint_impl::add_tree<float>(into, m, "");
  const std::vector<std::string> steps{"optim.step"};
  try {
    (void)tg::checkpoint_impl::describe(bytes);
    tg::checkpoint_impl::read_into(bytes, into, steps, "fuzz input");
  } catch (const tg::Error&) {
    // a clear error: what a damaged file must give
  }
  return 0;
}
