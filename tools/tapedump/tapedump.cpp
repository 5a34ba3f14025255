// tapedump's commands (tapedump.hpp). Each is a few lines over a library API.
#include "tapedump.hpp"

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <charconv>
#include <cstdio>
#include <filesystem>
#include <optional>

#include <fmt/format.h>
#include <fmt/ostream.h>

#include <tapegrad/tapegrad.hpp>

extern char** environ;

namespace tg::tools {

const char* const kTapedumpUsage = R"(usage:
  tapedump FILE                       the tape as typed equations, one per line, with recording sites
  tapedump FILE --format dot|json     Graphviz or JSON on standard output (text is the default)
  tapedump FILE --svg OUT.svg         render the Graphviz graph with `dot` (Graphviz must be installed)
  tapedump FILE --summary             op counts, FLOPs, bytes of values, saved buffers and adjoints,
                                      conv algorithms; for a compiled tape its fused groups and arena
  tapedump FILE --profile [--repeat N]
                                      replay forward and reverse N times (default 10); per-instruction
                                      time, slowest first, with its share of the total
  tapedump FILE --check-grad          every pullback against finite differences of its own forward
  tapedump FILE --find-nonfinite      the first instruction whose output or adjoint has NaN or Inf
  tapedump diff A B                   what changed between two tapes (instructions, shapes, params)
options:
  --random-inputs   replay on seeded random inputs (in each input's recorded range), not the saved ones
  --seed S          the seed for random inputs (default 1)
  --max-elements N  refuse a file whose values add up to more than N elements (default 2^31)
  --max-flops F     refuse to replay more than F FLOPs while loading (default 1e11; the ops' nominal counts)
Printing (text, dot, json, --svg, --summary, diff) reads the file's structure only: nothing is
replayed or allocated for inputs and computed values. --profile, --check-grad and --find-nonfinite
replay the tape, within --max-flops.
exit status: 0 done; 1 a problem found (failed check, NaN/Inf, tapes differ) or an unreadable file; 2 bad usage
)";

namespace {

struct Command {
  std::vector<std::string> files;
  std::string format = "text", svg;
  bool summary = false, profile = false, check_grad = false, find_nonfinite = false, diff = false;
  int repeat = 10;
  LoadOptions load;
};

struct UsageError {
  std::string message;
};

template <class N>
N number(const std::string& flag, const std::string& text) {
  N value{};
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size())
    throw UsageError{fmt::format("{} expects a number, got `{}`", flag, text)};
  return value;
}

Command parse(const std::vector<std::string>& args) {
  Command c;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> const std::string& {
      if (i + 1 >= args.size()) throw UsageError{fmt::format("{} expects a value", a)};
      return args[++i];
    };
    if (a == "--format") c.format = value();
    else if (a == "--svg") c.svg = value();
    else if (a == "--summary") c.summary = true;
    else if (a == "--profile") c.profile = true;
    else if (a == "--repeat") c.repeat = number<int>(a, value());
    else if (a == "--check-grad") c.check_grad = true;
    else if (a == "--find-nonfinite") c.find_nonfinite = true;
    else if (a == "--random-inputs") c.load.random_inputs = true;
    else if (a == "--seed") c.load.seed = number<std::uint64_t>(a, value());
    else if (a == "--max-elements") c.load.max_elements = number<std::int64_t>(a, value());
    else if (a == "--max-flops") c.load.max_flops = number<double>(a, value());
    else if (a == "diff" && i == 0) c.diff = true;
    else if (a.starts_with("--")) throw UsageError{fmt::format("unknown option {}", a)};
    else c.files.push_back(a);
  }
  if (c.format != "text" && c.format != "dot" && c.format != "json")
    throw UsageError{fmt::format("--format {} expected text, dot or json", c.format)};
  if (c.repeat < 1) throw UsageError{fmt::format("--repeat {} expected >= 1", c.repeat)};
  if (c.load.max_elements < 0) throw UsageError{fmt::format("--max-elements {} expected >= 0", c.load.max_elements)};
  if (!(c.load.max_flops >= 0)) throw UsageError{fmt::format("--max-flops {} expected >= 0", c.load.max_flops)};
  // Only these commands compute; everything else prints the file's structure.
  c.load.replay = c.profile || c.check_grad || c.find_nonfinite;
  if (c.files.size() != (c.diff ? 2u : 1u))
    throw UsageError{c.diff ? "diff expects two files" : fmt::format("expected one tape file, got {}", c.files.size())};
  return c;
}

// Graphviz's dot renders `dot_text` into `svg_path`; a clear error when dot is missing or fails.
void render_svg(const std::string& dot_text, const std::string& svg_path) {
  const auto dot_path = std::filesystem::temp_directory_path() / fmt::format("tapedump-{}.dot", ::getpid());
  write_file_bytes(dot_path.string(), dot_text);
  std::vector<std::string> argv_s{"dot", "-Tsvg", dot_path.string(), "-o", svg_path};
  std::vector<char*> argv;
  for (auto& s : argv_s) argv.push_back(s.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int spawned = posix_spawnp(&pid, "dot", nullptr, nullptr, argv.data(), environ);
  int status = 0;
  if (spawned == 0) waitpid(pid, &status, 0);
  std::filesystem::remove(dot_path);
  if (spawned != 0)
    fail("tapedump --svg", "cannot run Graphviz's `dot` expected it on PATH; hint: apt install graphviz, or use --format dot");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    fail("tapedump --svg", fmt::format("`dot -Tsvg` failed (status {}) writing {}", status, svg_path));
}

template <class T>
std::string profile(Tape<T>& tape, const TapeFileInfo& info, int repeat) {
  TapeProfile p;
  const Array<T> seed = Array<T>::ones(tape.value(tape.output()).shape());
  if (info.compiled) {
    CompiledProgram<T> program(tape, info.compile_options);
    program.forward();  // the first run allocates the arena: not timed
    program.reverse(seed);
    program.set_profile(&p);
    for (int r = 0; r < repeat; ++r) {
      program.forward();
      program.reverse(seed);
    }
    return dump_profile(program, p);
  }
  tape.forward();
  tape.reverse(seed);
  tape.set_profile(&p);
  for (int r = 0; r < repeat; ++r) {
    tape.forward();
    tape.reverse(seed);
  }
  tape.set_profile(nullptr);
  return dump_profile(tape, p);
}

std::string inputs_note(const TapeFileInfo& info, const LoadOptions& load) {
  return info.input_values && !load.random_inputs
             ? std::string("on the saved inputs")
             : fmt::format("on seeded random inputs (seed {}, each in its recorded range)", load.seed);
}

// Runs f; a tg::Error it throws names the file it was reading.
template <class F>
auto reading(const std::string& path, F f) {
  try {
    return f();
  } catch (const Error& e) {
    throw Error(e.op(), fmt::format("{} (in {})", e.detail(), path), e.site());
  }
}

template <class T>
LoadedTape<T> load(const std::string& path, const std::string& bytes, const LoadOptions& options) {
  return reading(path, [&] { return deserialize_tape<T>(bytes, options); });
}

// The compiled program a file describes, for printing: its plan without tuning
// (tune_algorithms times kernels, which printing never runs).
template <class T>
CompiledProgram<T> planned(const Tape<T>& tape, const TapeFileInfo& info) {
  CompileOptions options = info.compile_options;
  options.tune_algorithms = false;
  return CompiledProgram<T>(tape, options);
}

template <class T>
int inspect(const Command& c, const std::string& bytes, std::ostream& out) {
  LoadedTape<T> loaded = load<T>(c.files[0], bytes, c.load);
  Tape<T>& tape = loaded.tape;
  const TapeFileInfo& info = loaded.info;
  if (tape.output() == Tape<T>::kNoSlot) fail("tapedump", "the tape has no output expected a tape made by tg::record");
  if (c.summary) {
    fmt::print(out, "{}", summary(tape));
    if (info.compiled) fmt::print(out, "\n{}", dump(planned(tape, info)));
    return 0;
  }
  if (c.profile) {
    fmt::print(out, "{} forward and reverse passes {}{}, kernels at {}\n{}", c.repeat, inputs_note(info, c.load),
               info.compiled ? ", compiled" : "", kernels::kernels_line(), profile(tape, info, c.repeat));
    return 0;
  }
  if (c.check_grad) {
    const InstructionCheckReport report = check_instructions(tape);
    fmt::print(out, "{}", report.summary());
    return report.first_failure() ? 1 : 0;
  }
  if (c.find_nonfinite) {
    const NonfiniteReport report = find_nonfinite(tape);
    fmt::print(out, "replayed {}\n{}", inputs_note(info, c.load), report.summary());
    return report.found ? 1 : 0;
  }
  auto dot = [&] {
    return info.compiled ? dump_dot(tape, planned(tape, info)) : dump_dot(tape);
  };
  if (!c.svg.empty()) {
    render_svg(dot(), c.svg);
    fmt::print(out, "wrote {}\n", c.svg);
    return 0;
  }
  if (c.format == "dot") fmt::print(out, "{}", dot());
  else if (c.format == "json") fmt::print(out, "{}", dump_json(tape));
  else {
    fmt::print(out, "{}", dump(tape));
    if (info.compiled) fmt::print(out, "\n{}", dump(planned(tape, info)));
  }
  return 0;
}

template <class T>
int diff(const Command& c, const std::string& a, const std::string& b, std::ostream& out) {
  const LoadedTape<T> ta = load<T>(c.files[0], a, c.load), tb = load<T>(c.files[1], b, c.load);
  const std::string changes = diff_tapes(ta.tape, tb.tape);
  fmt::print(out, "{}", changes.empty() ? "the tapes match: same instructions, shapes and parameters\n" : changes);
  return changes.empty() ? 0 : 1;
}

}  // namespace

namespace {
int run(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    fmt::print(args.empty() ? err : out, "{}", kTapedumpUsage);
    return args.empty() ? 2 : 0;
  }
  try {
    const Command c = parse(args);
    std::vector<std::string> bytes;
    for (const auto& f : c.files) bytes.push_back(read_file_bytes(f));
    std::vector<int> element_bytes;
    for (std::size_t k = 0; k < bytes.size(); ++k) element_bytes.push_back(reading(c.files[k], [&] { return read_tape_file_info(bytes[k]); }).element_bytes);
    if (c.diff) {
      if (element_bytes[1] != element_bytes[0])
        fail("tapedump diff", fmt::format("{} holds f{} values and {} f{} expected one element type", c.files[0],
                                          element_bytes[0] * 8, c.files[1], element_bytes[1] * 8));
      return element_bytes[0] == 4 ? diff<float>(c, bytes[0], bytes[1], out) : diff<double>(c, bytes[0], bytes[1], out);
    }
    return element_bytes[0] == 4 ? inspect<float>(c, bytes[0], out) : inspect<double>(c, bytes[0], out);
  } catch (const UsageError& e) {
    fmt::print(err, "tapedump: {}\n{}", e.message, kTapedumpUsage);
    return 2;
  } catch (const std::exception& e) {
    const std::string_view what = e.what();  // errors of tapedump's own commands already start with "tapedump"
    fmt::print(err, "{}{}\n", what.starts_with("tapedump") ? "" : "tapedump: ", what);
    return 1;
  }
}
}  // namespace

int run_tapedump(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  const int status = run(args, out, err);
  out.flush();
  err.flush();
  return status;
}

}  // namespace tg::tools
