// tapedump, run in-process (tools/tapedump/tapedump.hpp): golden text dumps,
// DOT that Graphviz accepts, JSON that parses, summaries, profiles, a planted
// NaN and a planted wrong pullback found, diffs, and usage errors.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "support/checks.hpp"
#include "support/json_check.hpp"
#include "support/tape_models.hpp"
#include "tapedump.hpp"

using namespace tgtest;
namespace fs = std::filesystem;

namespace {

struct Run {
  int status;
  std::string out, err;
};

Run tapedump(std::vector<std::string> args) {
  std::ostringstream out, err;
  const int status = tg::tools::run_tapedump(args, out, err);
  return {status, out.str(), err.str()};
}

fs::path temp_file(const std::string& name) { return fs::temp_directory_path() / ("tapegrad-tapedump-" + name); }

template <class Holder>
std::string saved(const Holder& tape, const std::string& name, const tg::SaveOptions& options = {}) {
  const fs::path path = temp_file(name);
  tg::save_tape(tape, path.string(), options);
  return path.string();
}

std::string cnn_file() {
  auto [x, y, w1, b1, w2] = models::small_cnn_inputs<double>();
  auto tape = tg::record([](const auto&... a) { return models::small_cnn<double>(a...); }, x, y, w1, b1, w2);
  tape.set_needs_grad(1, false);
  return saved(tape, "cnn.tgt");
}

// "tape_models.hpp:41" -> "tape_models.hpp:N": golden dumps must not change when a line above a model moves.
std::string without_line_numbers(const std::string& text) {
  static const std::regex site(R"(([A-Za-z0-9_]+\.[ch]pp):[0-9]+)");
  return std::regex_replace(text, site, "$1:N");
}

// Compares `text` (sites without line numbers) with tests/fixtures/golden/<name>;
// TAPEGRAD_UPDATE_GOLDEN=1 rewrites the file instead.
void check_golden(const std::string& name, const std::string& text) {
  const fs::path path = fs::path(TAPEGRAD_TEST_SOURCE_DIR) / "fixtures" / "golden" / name;
  if (std::getenv("TAPEGRAD_UPDATE_GOLDEN")) {
    tg::write_file_bytes(path.string(), without_line_numbers(text));
    return;
  }
  REQUIRE_MESSAGE(fs::exists(path), path, " is missing; run with TAPEGRAD_UPDATE_GOLDEN=1 to write it");
  CHECK(tg::read_file_bytes(path.string()) == without_line_numbers(text));
}

bool have_dot() { return std::system("command -v dot > /dev/null 2>&1") == 0; }

}  // namespace

TEST_CASE("tapedump: golden text dumps of small tapes") {
  check_golden("small_cnn.txt", tapedump({cnn_file()}).out);
  auto [x, w] = models::every_param_inputs<double>();
  auto every = tg::record([](const auto& a, const auto& b) { return models::every_param<double>(a, b); }, x, w);
  check_golden("every_param.txt", tapedump({saved(every, "every.tgt")}).out);
  auto nan = tg::record([](const auto& v) { return models::planted_nan<double>(v); }, A({3}, {2.0, 0.5, 3.0}));
  check_golden("planted_nan.txt", tapedump({saved(nan, "nan.tgt")}).out);
  // A compiled tape prints its tape, then the program: fused groups, arena offsets, planned bytes.
  auto [cx, cy, cw1, cb1, cw2] = models::small_cnn_inputs<double>();
  auto cnn = tg::record([](const auto&... a) { return models::small_cnn<double>(a...); }, cx, cy, cw1, cb1, cw2);
  const Run compiled = tapedump({saved(tg::compile(cnn), "compiled.tgt")});
  CHECK(compiled.status == 0);
  check_golden("small_cnn_compiled.txt", compiled.out);
  CHECK(compiled.out.find("compiled tape f64") != std::string::npos);
  CHECK(compiled.out.find("+ relu") != std::string::npos);  // conv's fused epilogue
}

TEST_CASE("tapedump: DOT output is accepted by Graphviz's dot; JSON parses") {
  const std::string file = cnn_file();
  const Run dot = tapedump({file, "--format", "dot"});
  CHECK(dot.status == 0);
  CHECK(dot.out.starts_with("digraph tape {"));
  CHECK(dot.out.find("s5 [label=\"%5 = conv[padding=[1] algorithm=") != std::string::npos);
  CHECK(dot.out.find("s0 -> s5 [label=\"0\"]") != std::string::npos);
  const Run json = tapedump({file, "--format", "json"});
  CHECK(json.status == 0);
  CHECK(json_error(json.out) == "");
  CHECK(json.out.find("\"op\": \"conv\"") != std::string::npos);
  CHECK(json_error("{\"a\": [1, 2,]}") != "");  // the checker does reject bad JSON
  if (!have_dot()) {
    MESSAGE("Graphviz's dot is not installed: the rendering half of this test is skipped (scripts/install-deps.sh installs it)");
    return;
  }
  const fs::path svg = temp_file("cnn.svg");
  fs::remove(svg);
  const Run render = tapedump({file, "--svg", svg.string()});
  CHECK_MESSAGE(render.status == 0, render.err);
  REQUIRE(fs::exists(svg));
  std::ifstream in(svg);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(text.find("<svg") != std::string::npos);
  CHECK(text.find("maxpool") != std::string::npos);
  // Every golden model's DOT, and one with quotes and backslashes in a site, render too.
  const fs::path dot_file = temp_file("every.dot");
  auto [x, w] = models::every_param_inputs<double>();
  auto every = tg::record([](const auto& a, const auto& b) { return models::every_param<double>(a, b); }, x, w);
  tg::write_file_bytes(dot_file.string(), tg::dump_dot(every));
  CHECK(std::system(("dot -Tsvg " + dot_file.string() + " -o /dev/null").c_str()) == 0);
}

TEST_CASE("tapedump: a compiled tape's DOT boxes each fused step and draws removed instructions dashed") {
  using T = tg::Tracked<double>;
  auto f = [](const T& x, const T& w) {
    auto unused = tg::exp(x);  // reaches no output: removed by dead-code elimination
    (void)unused;
    auto h = tg::relu(tg::matmul(x, w));                      // matmul + relu epilogue
    return tg::sum(tg::tanh(h * 2.0 + 1.0) * tg::sigmoid(h));  // an elementwise chain
  };
  auto tape = tg::record(f, A::random_uniform({4, 3}, -1, 1, 1), A::random_uniform({3, 5}, -1, 1, 2));
  const std::string file = saved(tg::compile(tape), "fused.tgt");
  const Run dot = tapedump({file, "--format", "dot"});
  CHECK(dot.status == 0);
  CHECK(dot.out.find("subgraph cluster_0 {\n    label=\"matmul + relu epilogue\"") != std::string::npos);
  CHECK(dot.out.find("label=\"fused elementwise (") != std::string::npos);
  CHECK(dot.out.find("(removed: reaches no output)\", style=\"rounded,dashed\"") != std::string::npos);
  // The interpreted tape's DOT has no clusters.
  CHECK(tg::dump_dot(tape).find("subgraph") == std::string::npos);
  if (!have_dot()) return;
  const fs::path svg = temp_file("fused.svg");
  CHECK(tapedump({file, "--svg", svg.string()}).status == 0);
  CHECK(fs::file_size(svg) > 1000);
}

TEST_CASE("tapedump --summary: op counts, FLOPs, bytes, conv algorithms; a compiled tape's groups and arena") {
  const Run s = tapedump({cnn_file(), "--summary"});
  CHECK(s.status == 0);
  CHECK(s.out.find("tape f64: 5 inputs, 7 instructions, 0 guards, 8756 FLOP per forward pass") != std::string::npos);
  // conv: 2 * N * K * out_pixels * C * kh * kw = 2 * 2 * 3 * 36 * 2 * 9 = 7776; matmul 2 * 2 * 4 * 27 = 432;
  // relu 216 and maxpool 216 (its input), tanh 54, reshape 54, cross_entropy 8 (its logits): 8756 in all.
  CHECK(s.out.find("conv                 1  7776") != std::string::npos);
  CHECK(s.out.find("matmul               1  432") != std::string::npos);
  CHECK(s.out.find("%5 conv: algorithm=") != std::string::npos);
  CHECK(s.out.find("saved for the reverse pass") != std::string::npos);
  auto [x, y, w1, b1, w2] = models::small_cnn_inputs<double>();
  auto cnn = tg::record([](const auto&... a) { return models::small_cnn<double>(a...); }, x, y, w1, b1, w2);
  const Run c = tapedump({saved(tg::compile(cnn), "compiled.tgt"), "--summary"});
  CHECK(c.out.find("arena") != std::string::npos);
  CHECK(c.out.find("+ relu") != std::string::npos);
}

TEST_CASE("tapedump --profile: every instruction's forward and pullback time, slowest first, with shares") {
  const Run p = tapedump({cnn_file(), "--profile", "--repeat", "3"});
  CHECK(p.status == 0);
  CHECK(p.out.starts_with("3 forward and reverse passes on the saved inputs"));
  CHECK(p.out.find(fmt::format("kernels at {}", tg::kernels::to_string(tg::kernels::isa()))) != std::string::npos);
  for (const char* op : {"conv", "relu", "maxpool", "tanh", "reshape", "matmul", "cross_entropy"})
    CHECK_MESSAGE(p.out.find(std::string("= ") + op) != std::string::npos, op);
  CHECK(p.out.find("share") != std::string::npos);
  const Run random = tapedump({cnn_file(), "--profile", "--random-inputs", "--seed", "4"});
  CHECK(random.out.find("on seeded random inputs (seed 4") != std::string::npos);
}

TEST_CASE("tapedump --find-nonfinite: the planted NaN, at the instruction that made it") {
  auto nan = tg::record([](const auto& v) { return models::planted_nan<double>(v); }, A({3}, {2.0, 0.5, 3.0}));
  const Run r = tapedump({saved(nan, "nan.tgt"), "--find-nonfinite"});
  CHECK(r.status == 1);
  CHECK(r.out.find("first non-finite value: the output of instruction 1: %") != std::string::npos);
  CHECK(r.out.find("= log %") != std::string::npos);
  CHECK(r.out.find("tape_models.hpp:") != std::string::npos);
  const Run clean = tapedump({cnn_file(), "--find-nonfinite"});
  CHECK(clean.status == 0);
  CHECK(clean.out.find("no NaN or Inf") != std::string::npos);
}

TEST_CASE("tapedump --check-grad: a planted wrong pullback (a custom op) is found, and only it") {
  static const auto bad_square = tg::register_op<double>({
      .name = "tapedump_bad_square",
      .forward = [](const tg::InputList<double>& in) { return in[0] * in[0]; },
      .pullback = [](const tg::InputList<double>& in, const A&, const A& dy) {
        return std::vector<A>{dy * in[0] * 3.0};  // should be 2 x dy
      }});
  auto tape = tg::record([](const tg::Tracked<double>& x) { return tg::sum(tg::tanh(bad_square(tg::exp(x)))); },
                         A::random_uniform({4}, -1, 1, 5));
  const std::string file = saved(tape, "bad.tgt");
  const Run r = tapedump({file, "--check-grad"});
  CHECK(r.status == 1);
  CHECK(r.out.find("pullback of instruction 1 disagrees with finite differences of its forward") != std::string::npos);
  CHECK(r.out.find("tapedump_bad_square") != std::string::npos);
  CHECK(tapedump({cnn_file(), "--check-grad"}).status == 0);
}

TEST_CASE("tapedump diff: changed parameters and shapes, added instructions; identical tapes match") {
  using T = tg::Tracked<double>;
  auto model = [](std::int64_t padding, bool extra) {
    return [padding, extra](const T& x, const T& w) {
      auto y = tg::relu(tg::conv(x, w, {.padding = {padding}}));
      if (extra) y = tg::tanh(y);
      return tg::sum(y);
    };
  };
  const A x = A::random_uniform({1, 1, 5, 5}, -1, 1, 1), w = A::random_uniform({2, 1, 3, 3}, -1, 1, 2);
  const std::string a = saved(tg::record(model(0, false), x, w), "diff-a.tgt");
  const std::string b = saved(tg::record(model(1, true), x, w), "diff-b.tgt");
  const Run d = tapedump({"diff", a, b});
  CHECK(d.status == 1);
  CHECK(d.out.find("~ %2 -> %2 conv: shape f64[1,2,3,3] -> f64[1,2,5,5]; params [padding=[0] algorithm=") != std::string::npos);
  CHECK(d.out.find("-> [padding=[1] algorithm=") != std::string::npos);
  CHECK(d.out.find("+ %4:f64[1,2,5,5] = tanh %3") != std::string::npos);
  const Run same = tapedump({"diff", a, a});
  CHECK(same.status == 0);
  CHECK(same.out == "the tapes match: same instructions, shapes and parameters\n");
}

TEST_CASE("tapedump: usage errors and unreadable files are clear, with exit status 2 and 1") {
  CHECK(tapedump({}).status == 2);
  CHECK(tapedump({"--help"}).status == 0);
  const Run unknown = tapedump({cnn_file(), "--frobnicate"});
  CHECK(unknown.status == 2);
  CHECK(unknown.err.starts_with("tapedump: unknown option --frobnicate\nusage:"));
  CHECK(tapedump({cnn_file(), "--format", "xml"}).err.starts_with("tapedump: --format xml expected text, dot or json"));
  CHECK(tapedump({cnn_file(), "--repeat", "x", "--profile"}).err.starts_with("tapedump: --repeat expects a number, got `x`"));
  CHECK(tapedump({"diff", cnn_file()}).err.starts_with("tapedump: diff expects two files"));
  const Run missing = tapedump({"/nonexistent.tgt"});
  CHECK(missing.status == 1);
  CHECK(missing.err == "tapedump: load_tape: cannot open `/nonexistent.tgt` expected a readable file\n");
  const fs::path junk = temp_file("junk.tgt");
  tg::write_file_bytes(junk.string(), "TAPEGRAD\x01");
  const Run bad = tapedump({junk.string()});
  CHECK(bad.status == 1);
  CHECK(bad.err.find("field `version` at byte 8: needs 4 bytes but only 1 are left (truncated)") != std::string::npos);
  CHECK(bad.err.find(junk.string()) != std::string::npos);
}

TEST_CASE("tapedump: hostile files print at once, replay only within --max-flops, and never print raw control characters") {
  const fs::path conv = temp_file("huge-conv.tgt"), input = temp_file("huge-input.tgt");
  tg::write_file_bytes(conv.string(), models::huge_conv_file());
  tg::write_file_bytes(input.string(), models::huge_input_file());
  // Printing reads the structure: no replay of the 2e13-FLOP conv, no 4 GiB input.
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {conv.string()}, {conv.string(), "--summary"}, {conv.string(), "--format", "json"}, {conv.string(), "--format", "dot"},
           {input.string()}, {"diff", conv.string(), conv.string()}}) {
    CAPTURE(args.back());
    const Run r = tapedump(args);
    CHECK(r.status == 0);
    CHECK(r.err.empty());
  }
  CHECK(tapedump({conv.string()}).out.find("%2:f32[1,1,3073,3073] = conv[") != std::string::npos);
  CHECK(tapedump({input.string()}).out.find("%0:f32[1073741824] = input 0") != std::string::npos);
  // Replaying commands are bounded: an error (once prefixed), exit status 1.
  const Run profile = tapedump({conv.string(), "--profile"});
  CHECK(profile.status == 1);
  CHECK(profile.err.starts_with("tapedump: tape file: slot %2 (byte "));
  CHECK(profile.err.find("past what is left of the load's budget (1e+11)") != std::string::npos);
  const Run elements = tapedump({input.string(), "--find-nonfinite", "--max-elements", "1000000"});
  CHECK(elements.status == 1);
  CHECK(elements.err.find("more than 1000000 elements (LoadOptions::max_elements)") != std::string::npos);
  CHECK(tapedump({conv.string(), "--max-flops", "lots"}).err.starts_with("tapedump: --max-flops expects a number, got `lots`"));
  CHECK(tapedump({conv.string(), "--max-elements", "-5"}).status == 2);
  // The prefix once, also for tapedump's own errors.
  auto no_output = tg::record([](const tg::Tracked<double>& x) { return tg::sum(x); }, A::ones({2}));
  no_output.tape().set_output(tg::Tape<double>::kNoSlot);
  const Run none = tapedump({saved(no_output, "no-output.tgt")});
  CHECK(none.status == 1);
  CHECK(none.err == "tapedump: the tape has no output expected a tape made by tg::record\n");
  // A site holding an escape sequence is printed escaped.
  auto tape = tg::record([](const tg::Tracked<double>& x) { return tg::sum(tg::exp(x)); }, A::ones({3}));
  std::string bytes = tg::serialize_tape(tape.tape());
  const std::string name = "test_tapedump.cpp", evil = "\x1b]0;pwned\x07" "evil.cp";
  REQUIRE(evil.size() == name.size());
  for (auto at = bytes.find(name); at != std::string::npos; at = bytes.find(name, at)) bytes.replace(at, name.size(), evil);
  const fs::path crafted = temp_file("escape.tgt");
  tg::write_file_bytes(crafted.string(), bytes);
  for (const std::string format : {"text", "dot", "json"}) {
    const Run r = tapedump({crafted.string(), "--format", format});
    CHECK(r.status == 0);
    CHECK(r.out.find('\x1b') == std::string::npos);
    CHECK(r.out.find('\x07') == std::string::npos);
  }
}
