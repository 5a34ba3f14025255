// Saved tapes (tape_file.hpp): every op's parameters survive a save and load, a
// loaded tape replays to the same values and gradients, compiled tapes keep
// their options, TAPEGRAD_DUMP saves each program once, and every damaged file
// (each truncation, each flipped byte, the fuzz corpus) is a clear tg::Error.
#include <cstdlib>
#include <filesystem>

#include "support/checks.hpp"
#include "support/tape_models.hpp"

using namespace tgtest;
namespace fs = std::filesystem;

namespace {

using models::record_every_param;
using models::record_small_cnn;

// Forward value and every input's adjoint after a reverse pass seeded with ones.
template <class T>
std::vector<tg::Array<T>> replay(tg::Tape<T>& tape) {
  tape.forward();
  tape.reverse(tg::Array<T>::ones(tape.value(tape.output()).shape()));
  std::vector<tg::Array<T>> out{tape.value(tape.output())};
  for (auto s : tape.inputs()) out.push_back(tape.adjoint(s));
  return out;
}

template <class T>
void check_round_trip(tg::Tape<T>& original) {
  const std::string bytes = tg::serialize_tape(original);
  tg::LoadedTape<T> loaded = tg::deserialize_tape<T>(bytes);
  CHECK(tg::dump(loaded.tape) == tg::dump(original));
  CHECK(tg::diff_tapes(original, loaded.tape).empty());
  CHECK_FALSE(loaded.info.compiled);
  CHECK(loaded.info.input_values);
  const auto want = replay(original), got = replay(loaded.tape);
  REQUIRE(want.size() == got.size());
  for (std::size_t k = 0; k < want.size(); ++k) {
    REQUIRE(want[k].shape() == got[k].shape());
    for (std::int64_t i = 0; i < want[k].size(); ++i) CHECK(want[k].data()[i] == got[k].data()[i]);  // bit for bit
  }
  for (std::size_t k = 0; k < original.inputs().size(); ++k)
    CHECK(loaded.tape.needs_grad(loaded.tape.inputs()[k]) == original.needs_grad(original.inputs()[k]));
  CHECK(loaded.tape.guards().size() == original.guards().size());
  // Saving the loaded tape gives the same bytes as saving the original (both
  // replayed once: state such as batch-norm statistics moved alike).
  const bool same_bytes = tg::serialize_tape(loaded.tape) == tg::serialize_tape(original);
  CHECK(same_bytes);
  if (same_bytes && tg::diff_tapes(original, loaded.tape).empty()) tgtest::covered(tgtest::Check::save_load, original);
}

}  // namespace

TEST_CASE("tape file: a second-order tape (a gradient penalty through a conv) round-trips, f32 and f64") {
  auto both = [](auto zero) {
    using E = decltype(zero);
    using AE = tg::Array<E>;
    auto tape = tg::record(models::conv_penalty<E>, AE::random_uniform({2, 3, 5, 5}, E(-1), E(1), 1),
                           AE::random_uniform({3, 2, 3, 3}, E(-1), E(1), 2), AE::random_uniform({3, 3}, E(-1), E(1), 3));
    check_round_trip(tape.tape());
    // Note [Pullback origins]: the loaded tape marks the same pullback steps, with the user's sites.
    const auto loaded = tg::deserialize_tape<E>(tg::serialize_tape(tape.tape()));
    std::size_t steps = 0;
    for (std::size_t i = 0; i < tape.tape().num_instructions(); ++i) {
      const auto &a = tape.tape().instruction(i), &b = loaded.tape.instruction(i);
      CHECK(a.pullback_of == b.pullback_of);
      if (a.pullback_of == tg::Tape<E>::kNoSlot) continue;
      ++steps;
      CHECK(tg::site_string(b.where).starts_with("tape_models.hpp:"));
    }
    CHECK(steps == 45);  // the steps of the recorded reverse passes in conv_penalty
  };
  both(0.0);
  both(0.0f);
}

TEST_CASE("tape file: a third-order tape through cross-entropy (cross_entropy_grad with row_scales) round-trips") {
  const A labels({3}, {0, 2, 1});
  auto loss = [&](const tg::Tracked<double>& u) { return tg::cross_entropy(u, tg::constant(labels), {.label_smoothing = 0.1}); };
  auto penalty = [&](const tg::Tracked<double>& z) {
    const tg::Tracked<double> g = tg::gradient(loss, z);
    return tg::sum(g * g);
  };
  auto tape = tg::record([&](const tg::Tracked<double>& z) { return tg::sum(tg::gradient(penalty, z)); }, A::random_uniform({3, 4}, -1, 1, 5));
  CHECK(tg::dump(tape).find("label_smoothing=0.1 row_scales") != std::string::npos);
  check_round_trip(tape.tape());
}

TEST_CASE("tape file: a version 2 file, without pullback origins, still loads") {
  auto tape = tg::record([](const tg::Tracked<double>& x) { return tg::sum(tg::tanh(x)); }, A::random_uniform({3, 4}, -1, 1, 1));
  std::string bytes = tg::serialize_tape(tape.tape(), {.input_values = false});
  // Version 3's one addition here: the u32 pullback_of (~0) after the one computed slot's site... two slots: tanh and sum.
  for (int k = 0; k < 2; ++k) {
    const auto at = bytes.find(std::string(4, '\xff'));
    REQUIRE(at != std::string::npos);
    bytes.erase(at, 4);
  }
  REQUIRE(bytes.find(std::string(4, '\xff')) == std::string::npos);
  bytes[8] = 2;
  const auto loaded = tg::deserialize_tape<double>(bytes);
  CHECK(tg::dump(loaded.tape) == tg::dump(tape.tape()));
}

namespace {

// Runs `load` and returns the tg::Error's message; fails the test if it loads or throws anything else.
template <class F>
std::string load_error(F load) {
  try {
    load();
  } catch (const tg::Error& e) {
    return e.what();
  }
  FAIL("expected a tg::Error");
  return {};
}

}  // namespace

TEST_CASE("tape file: a CNN, a tape using every op's parameters and an elementwise mix round-trip, f32 and f64, bit for bit") {
  auto cnn64 = record_small_cnn<double>();
  check_round_trip(cnn64.tape());
  auto cnn32 = record_small_cnn<float>();
  check_round_trip(cnn32.tape());
  auto every64 = record_every_param<double>();
  check_round_trip(every64.tape());
  auto every32 = record_every_param<float>();
  check_round_trip(every32.tape());
  CHECK(every64.tape().guards().size() == 1);
  auto mix64 = tgtest::models::record_elementwise_mix<double>();
  check_round_trip(mix64.tape());
  auto mix32 = tgtest::models::record_elementwise_mix<float>();
  check_round_trip(mix32.tape());
}

TEST_CASE("tape file: saved and loaded through a file, with the recording sites of the original") {
  auto tape = record_small_cnn<double>();
  const fs::path path = fs::temp_directory_path() / "tapegrad-test-cnn.tgt";
  tg::save_tape(tape, path.string());
  const auto loaded = tg::load_tape<double>(path.string());
  REQUIRE(loaded.tape.num_instructions() == 7);
  CHECK(tg::site_string(loaded.tape.instruction(0).where) == tg::site_string(tape.tape().instruction(0).where));
  CHECK(tg::site_string(loaded.tape.instruction(0).where).starts_with("tape_models.hpp:"));
  CHECK(std::string(loaded.tape.instruction(0).where.function).find("small_cnn") != std::string::npos);
  fs::remove(path);
}

TEST_CASE("tape file: without input values, replayed on seeded random inputs in each input's range") {
  auto tape = record_small_cnn<double>();
  const auto bytes = tg::serialize_tape(tape.tape(), {.input_values = false});
  CHECK(bytes.size() < tg::serialize_tape(tape.tape()).size());
  auto loaded = tg::deserialize_tape<double>(bytes, {.seed = 5});
  CHECK_FALSE(loaded.info.input_values);
  const auto& labels = loaded.tape.value(loaded.tape.inputs()[1]);  // recorded as {0, 3}: integers in [0, 3]
  for (double v : labels) {
    CHECK(v == std::floor(v));
    CHECK(v >= 0);
    CHECK(v <= 3);
  }
  const auto& x = loaded.tape.value(loaded.tape.inputs()[0]);
  const auto& x0 = tape.tape().value(tape.tape().inputs()[0]);
  const auto stats = tg::value_stats(x), stats0 = tg::value_stats(x0);
  CHECK(stats.min >= stats0.min);
  CHECK(stats.max <= stats0.max);
  CHECK(max_abs_diff(x, x0) > 0);  // other values
  // The same seed gives the same inputs; the replay's gradient check passes on them.
  auto again = tg::deserialize_tape<double>(bytes, {.seed = 5});
  CHECK(max_abs_diff(again.tape.value(again.tape.inputs()[0]), x) == 0);
  CHECK(tg::check_instructions(loaded.tape).first_failure() == nullptr);
  // random_inputs ignores saved values.
  auto random = tg::deserialize_tape<double>(tg::serialize_tape(tape.tape()), {.seed = 5, .random_inputs = true});
  CHECK(max_abs_diff(random.tape.value(random.tape.inputs()[0]), x) == 0);
}

TEST_CASE("tape file: a compiled tape keeps its compile options and replays as compiled") {
  auto tape = record_small_cnn<double>();
  const tg::CompileOptions options{.dead_code = true, .plan_memory = false, .fuse_epilogues = true, .fuse_elementwise = false,
                                   .share_views = false, .tune_algorithms = true};
  auto ct = tg::compile(tape, options);
  auto [x, y, w1, b1, w2] = models::small_cnn_inputs<double>();
  const auto w2b = A::random_uniform(w2.shape(), -1, 1, 99);
  ct.forward(x, y, w1, b1, w2b);  // the program's current inputs are saved
  const auto bytes = tg::serialize_program(ct.program());
  auto loaded = tg::deserialize_tape<double>(bytes);
  REQUIRE(loaded.info.compiled);
  CHECK(loaded.info.compile_options.dead_code);
  CHECK_FALSE(loaded.info.compile_options.plan_memory);
  CHECK(loaded.info.compile_options.fuse_epilogues);
  CHECK_FALSE(loaded.info.compile_options.fuse_elementwise);
  CHECK_FALSE(loaded.info.compile_options.share_views);
  CHECK(loaded.info.compile_options.tune_algorithms);
  CHECK(tg::deserialize_tape<double>(tg::serialize_program(tg::compile(tape).program())).info.compile_options.share_views);
  CHECK(max_abs_diff(loaded.tape.value(loaded.tape.inputs()[4]), w2b) == 0);
  CHECK(loaded.tape.value(loaded.tape.output()).item() == doctest::Approx(ct.value()).epsilon(1e-14));
  tg::CompiledProgram<double> program(loaded.tape, loaded.info.compile_options);
  program.forward();
  CHECK(program.output().item() == doctest::Approx(ct.value()).epsilon(1e-14));
  CHECK(tg::dump(program) == tg::dump(ct.program()));
}

TEST_CASE("tape file: TAPEGRAD_DUMP saves each distinct program once, without code changes") {
  const fs::path dir = fs::temp_directory_path() / "tapegrad-test-dump";
  fs::remove_all(dir);
  ::setenv("TAPEGRAD_DUMP", dir.c_str(), 1);
  ::setenv("TAPEGRAD_DUMP_INPUTS", "0", 1);
  auto f = [](const tg::Tracked<double>& v) { return tg::sum(tg::exp(v) * 3.0); };
  for (int step = 0; step < 5; ++step) tg::gradient(f, A::random_uniform({7}, -1, 1, step));  // one program
  tg::gradient(f, A::random_uniform({8}, -1, 1, 9));                                         // another shape
  ::unsetenv("TAPEGRAD_DUMP");
  ::unsetenv("TAPEGRAD_DUMP_INPUTS");
  tg::gradient(f, A::random_uniform({9}, -1, 1, 9));  // not saved
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir)) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  REQUIRE(files.size() == 2);
  const auto first = tg::load_tape<double>(files[0].string()), second = tg::load_tape<double>(files[1].string());
  CHECK_FALSE(first.info.input_values);
  CHECK(first.tape.value(first.tape.inputs()[0]).shape() == tg::Shape{7});
  CHECK(second.tape.value(second.tape.inputs()[0]).shape() == tg::Shape{8});
  CHECK(tg::diff_tapes(first.tape, second.tape).find("input 0: f64[7] -> f64[8]") != std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("tape file: damaged files are clear errors naming the field and byte, at every truncation and flipped byte") {
  auto tape = record_small_cnn<double>();
  const std::string bytes = tg::serialize_tape(tape.tape());
  SUBCASE("every truncation") {
    for (std::size_t n = 0; n < bytes.size(); ++n) {
      const std::string message = load_error([&] { tg::deserialize_tape<double>(std::string_view(bytes).substr(0, n)); });
      CHECK_MESSAGE(message.find("at byte") != std::string::npos, n, ": ", message);
    }
  }
  SUBCASE("every byte flipped: a clear error or a tape that loads") {
    std::int64_t errors = 0;
    for (std::size_t i = 0; i < bytes.size(); ++i) {
      std::string damaged = bytes;
      damaged[i] = static_cast<char>(damaged[i] ^ 0x5a);
      try {
        tg::deserialize_tape<double>(damaged, {.max_elements = 1 << 16});
      } catch (const tg::Error& e) {
        ++errors;
        CHECK(std::string(e.what()).starts_with("tape file"));
      }
    }
    CHECK(errors > 0);
  }
  SUBCASE("named cases") {
    std::string magic = bytes;
    magic[0] = 'X';
    CHECK(load_error([&] { tg::deserialize_tape<double>(magic); }).find("field `magic` at byte 0") != std::string::npos);
    std::string future = bytes;
    future[8] = 4;  // version 4
    CHECK(load_error([&] { tg::deserialize_tape<double>(future); })
              .find("field `version` at byte 8: version 4 expected 1..3; hint: a file from a newer tapegrad") != std::string::npos);
    CHECK(load_error([&] { tg::deserialize_tape<float>(bytes); }).find("holds f64 values but f32 was asked for") != std::string::npos);
    std::string unknown_op = bytes;
    const auto at = unknown_op.find("maxpool");
    unknown_op.replace(at, 7, "maxpoox");
    CHECK(load_error([&] { tg::deserialize_tape<double>(unknown_op); }).find("uses op `maxpoox` that this program has not registered") != std::string::npos);
    CHECK(load_error([&] { tg::deserialize_tape<double>(bytes, {.max_elements = 100}); }).find("LoadOptions::max_elements") != std::string::npos);
    CHECK(load_error([&] { tg::deserialize_tape<double>(bytes + "x"); }).find("1 bytes left over") != std::string::npos);
    CHECK(load_error([] { tg::load_tape<double>("/nonexistent/tape.tgt"); }).find("cannot open `/nonexistent/tape.tgt`") != std::string::npos);
  }
}

TEST_CASE("tape file: padding far wider than the windows replays without a padded copy, or is refused when forced") {
  // The fuzzer's case: a forced implicit GEMM would have copied 9.9e12 elements
  // (Note [Implicit GEMM's padded copy]); the error names the conv's slot.
  const std::string forced = models::huge_padding_file(tg::ConvAlgorithm::implicit_gemm);
  const std::string message = load_error([&] { tg::deserialize_tape<float>(forced); });
  CHECK(message.find("slot %2") != std::string::npos);
  CHECK(message.find("conv: algorithm implicit_gemm would copy the input zero-padded to 9.9e+12 elements") != std::string::npos);
  // Left automatic, the same conv replays: its one window over the input, the rest zeros.
  auto loaded = tg::deserialize_tape<float>(models::huge_padding_file(tg::ConvAlgorithm::automatic));
  const auto x = tg::Array<float>::random_uniform({1, 1, 5, 5}, -1, 1, 1), w = tg::Array<float>::random_uniform({1, 1, 3, 3}, -1, 1, 2);
  float window = 0;
  for (std::int64_t t0 = 0; t0 < 3; ++t0)
    for (std::int64_t t1 = 0; t1 < 3; ++t1) window += x(0, 0, 1 + t0, 1 + t1) * w(0, 0, t0, t1);
  CHECK(loaded.tape.value(2).shape() == tg::Shape{1, 1, 2, 2});
  CHECK(loaded.tape.value(loaded.tape.output()).item() == doctest::Approx(window).epsilon(1e-6));
}

TEST_CASE("tape file: a shape the op does not compute is refused before anything is allocated") {
  auto f = [](const tg::Tracked<double>& v) { return tg::sum(tg::reshape(v, {2, 3})); };
  auto tape = tg::record(f, A::random_uniform({6}, -1, 1, 1));
  std::string bytes = tg::serialize_tape(tape.tape());
  // The reshape's params hold (2, 3) as i64; make it (2, 4).
  const std::int64_t three = 3, four = 4;
  const auto at = bytes.find(std::string(reinterpret_cast<const char*>(&three), 8));
  REQUIRE(at != std::string::npos);
  bytes.replace(at, 8, std::string(reinterpret_cast<const char*>(&four), 8));
  const std::string message = load_error([&] { tg::deserialize_tape<double>(bytes); });
  CHECK(message.find("slot %1") != std::string::npos);
  CHECK(message.find("reshape") != std::string::npos);
}

TEST_CASE("tape file: the fuzz corpus loads or fails with a clear error, and the seed tapes load") {
  const fs::path corpus = fs::path(TAPEGRAD_TEST_SOURCE_DIR) / "fuzz" / "corpus";
  REQUIRE(fs::is_directory(corpus));
  int loaded = 0, refused = 0;
  for (const auto& entry : fs::directory_iterator(corpus)) {
    const std::string bytes = tg::read_file_bytes(entry.path().string());
    try {
      const auto info = tg::read_tape_file_info(bytes);
      if (info.element_bytes == 4) tg::deserialize_tape<float>(bytes, {.max_elements = 1 << 16});
      else tg::deserialize_tape<double>(bytes, {.max_elements = 1 << 16});
      ++loaded;
      CHECK_MESSAGE(entry.path().filename().string().starts_with("seed-"), entry.path());
    } catch (const tg::Error& e) {
      ++refused;
      CHECK_MESSAGE(entry.path().filename().string().starts_with("bad-"), entry.path(), ": ", e.what());
      const std::string message = e.what();
      CHECK_MESSAGE((message.starts_with("tape file") && message.find("byte") != std::string::npos), message);
    }
  }
  CHECK(loaded >= 3);
  CHECK(refused >= 5);
}

TEST_CASE("tape file: loading bounds its work: replays within a FLOP budget, structure-only loads compute nothing") {
  const std::string conv = models::huge_conv_file();
  CHECK(conv.size() < 1000);
  // Replaying would take 2e13 FLOPs: refused at the conv, before its forward runs.
  const std::string message = load_error([&] { tg::deserialize_tape<float>(conv); });
  CHECK(message.find("slot %2") != std::string::npos);
  CHECK(message.find("conv: replaying it would take 1.98e+13 FLOPs, past what is left of the load's budget (1e+11)") !=
        std::string::npos);
  CHECK(load_error([&] { tg::deserialize_tape<float>(conv, {.max_flops = 1e13}); }).find("budget (1e+13)") != std::string::npos);
  // The structure alone: shapes, no values, nothing run.
  auto loaded = tg::deserialize_tape<float>(conv, {.replay = false});
  CHECK(loaded.tape.structure_only());
  CHECK(loaded.tape.value(2).shape() == tg::Shape{1, 1, 3073, 3073});
  CHECK(loaded.tape.value(2).data() == nullptr);
  CHECK(tg::dump(loaded.tape).find("%2:f32[1,1,3073,3073] = conv[") != std::string::npos);
  CHECK(tg::summary(loaded.tape).find("1.98e+13") != std::string::npos);
  CHECK_THROWS_WITH_AS(loaded.tape.forward(), doctest::Contains("loaded for its structure only"), tg::Error);
  CHECK_THROWS_WITH_AS(loaded.tape.reverse(tg::Array<float>::ones({})), doctest::Contains("structure only"), tg::Error);
  CHECK_THROWS_WITH_AS(loaded.tape.set_input(0, tg::Array<float>::zeros({1, 1, 4096, 4096})), doctest::Contains("structure only"),
                       tg::Error);
  tg::CompiledProgram<float> program(loaded.tape, {});
  CHECK(tg::dump(program).find("conv") != std::string::npos);
  CHECK_THROWS_WITH_AS(program.forward(), doctest::Contains("structure only"), tg::Error);
  // One input of 2^30 floats: 4 GiB to replay; its structure costs nothing; max_elements refuses it.
  const std::string input = models::huge_input_file();
  CHECK(tg::deserialize_tape<float>(input, {.replay = false}).tape.value(0).shape() == tg::Shape{std::int64_t{1} << 30});
  CHECK(load_error([&] { tg::deserialize_tape<float>(input, {.max_elements = 1 << 20}); }).find("LoadOptions::max_elements") !=
        std::string::npos);
}

TEST_CASE("tape file: control characters in a file's strings are escaped, never printed raw") {
  auto tape = tg::record([](const tg::Tracked<double>& x) { return tg::sum(tg::exp(x)); }, A::ones({3}));
  std::string bytes = tg::serialize_tape(tape.tape());
  // The recording site's file name, same length: an escape sequence that would clear the screen.
  const std::string name = "test_tape_file.cpp", evil = "\x1b[2J\x1b[31m\xc2\x9b" "evil.cp";
  REQUIRE(evil.size() == name.size());
  for (auto at = bytes.find(name); at != std::string::npos; at = bytes.find(name, at)) bytes.replace(at, name.size(), evil);
  const std::string text = tg::dump(tg::deserialize_tape<double>(bytes).tape);
  CHECK(text.find('\x1b') == std::string::npos);
  CHECK(text.find("\\x1b[2J\\x1b[31m\\xc2\\x9bevil.cp:") != std::string::npos);
  // An op name with a bell in it: the error names it escaped.
  const auto at = bytes.find("exp");
  REQUIRE(at != std::string::npos);
  bytes.replace(at, 3, "e\x07p");
  const std::string message = load_error([&] { tg::deserialize_tape<double>(bytes); });
  CHECK(message.find('\x07') == std::string::npos);
  CHECK(message.find("uses op `e\\x07p`") != std::string::npos);
}
