// Saving and loading tapes (tape_file.hpp, Note [Tape file format]).
#include "tapegrad/autodiff/tape_file.hpp"

#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <unordered_set>

#include <fmt/format.h>

#include "tapegrad/autodiff/record.hpp"

namespace tg {
namespace {

constexpr std::string_view kMagic = "TAPEGRAD";
constexpr std::string_view kEnd = "END!";
constexpr std::size_t kFlagsOffset = 8 + 4 + 1;  // magic, version, element bytes
enum FileFlags : std::uint8_t { kInputValues = 1, kCompiled = 2 };
constexpr const char* kContext = "tape file";

static_assert(std::endian::native == std::endian::little, "tape files are written little-endian, as the host stores them");

constexpr std::uint32_t kOptionBits = 127;  // one bit per CompileOptions field

std::uint32_t options_bits(const CompileOptions& o) {
  return (o.dead_code ? 1u : 0u) | (o.plan_memory ? 2u : 0u) | (o.fuse_epilogues ? 4u : 0u) | (o.fuse_elementwise ? 8u : 0u) |
         (o.share_views ? 16u : 0u) | (o.tune_algorithms ? 32u : 0u) | (o.fold_norms ? 64u : 0u);
}

CompileOptions options_from_bits(std::uint32_t bits) {
  return {.dead_code = (bits & 1) != 0, .plan_memory = (bits & 2) != 0, .fuse_epilogues = (bits & 4) != 0,
          .fuse_elementwise = (bits & 8) != 0, .share_views = (bits & 16) != 0,
          .tune_algorithms = (bits & 32) != 0, .fold_norms = (bits & 64) != 0};
}

void write_site(ParamWriter& w, const Site& s) {
  w.string(s.file ? s.file : "");
  w.string(s.function ? s.function : "");
  w.u32(s.line);
  w.u32(s.column);
}

// Finite range of an input and whether every element is an integer (class labels):
// what a replay on seeded random inputs draws from.
template <class T>
void write_input_range(ParamWriter& w, const Array<T>& a) {
  double lo = 0, hi = 0;
  bool any = false, integer = true;
  if (a.data())  // a value without storage (a tape loaded for its structure only) has no range
    for (const T v : a) {
      if (!std::isfinite(double(v))) continue;
      lo = any ? std::min(lo, double(v)) : double(v);
      hi = any ? std::max(hi, double(v)) : double(v);
      any = true;
      integer = integer && std::floor(double(v)) == double(v);
    }
  w.f64(lo);
  w.f64(hi);
  w.boolean(any && integer);
}

template <class T>
void write_values(ParamWriter& w, const Array<T>& a) {
  w.raw(a.data(), static_cast<std::size_t>(a.size()) * sizeof(T));
}

// ---- reading: the file as plain records, every field checked ---------------------

// Note [Printable strings from files]: a tape file's strings (sites, op names)
// end up on terminals (tapedump, error messages). Control characters in them,
// C0, DEL and the C1 range in UTF-8, become \xNN escapes, so a crafted file
// cannot move the cursor or rewrite the screen; other bytes pass unchanged.
std::string printable(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    const bool c1 = c == 0xC2 && i + 1 < s.size() && static_cast<unsigned char>(s[i + 1]) >= 0x80 &&
                    static_cast<unsigned char>(s[i + 1]) <= 0x9F;
    if (c < 0x20 || c == 0x7F || c1) {
      out += fmt::format("\\x{:02x}", c);
      if (c1) out += fmt::format("\\x{:02x}", static_cast<unsigned char>(s[++i]));
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

struct SiteRecord {
  std::string file, function;
  std::uint32_t line = 0, column = 0;
};

struct SlotRecord {
  char kind = 0;
  std::size_t offset = 0;  // of the record, in the file
  Shape shape;
  bool needs_grad = false;                  // input
  double min = 0, max = 0;                  // input
  bool integer = false;                     // input
  std::string name;                         // input (version 2): its leaf path
  std::string_view values;                  // constant (and input, once the values section is read)
  std::string op, params_text;              // computed
  std::string_view params;                  // computed
  std::size_t params_offset = 0;            // computed
  std::vector<std::uint32_t> args;          // computed
  SiteRecord site;                          // computed
  std::uint32_t pullback_of = Tape<float>::kNoSlot;  // computed (version 3)
};

struct GuardRecord {
  Guard guard;
  SiteRecord site;
  std::size_t offset = 0;
};

struct FileRecords {
  TapeFileInfo info;
  std::vector<SlotRecord> slots;
  std::vector<GuardRecord> guards;
  std::uint32_t output = Tape<float>::kNoSlot;
};

class FileReader {
 public:
  FileReader(std::string_view bytes, const LoadOptions& options) : r_(bytes, kContext), bytes_(bytes), options_(options) {}

  TapeFileInfo header() {
    std::string magic(kMagic.size(), '\0');
    r_.raw(magic.data(), magic.size(), "magic");
    if (magic != kMagic)
      r_.fail_at("magic", 0, "the file does not start with \"TAPEGRAD\" expected a tapegrad tape file; hint: was it "
                             "written by tg::save_tape or TAPEGRAD_DUMP?");
    TapeFileInfo info;
    info.version = r_.u32("version");
    if (info.version == 0 || info.version > kTapeFileVersion)
      r_.fail_at("version", 8, fmt::format("version {} expected 1..{}; hint: a file from a newer tapegrad needs that "
                                           "version to read it",
                                           info.version, kTapeFileVersion));
    const std::size_t at = r_.offset();
    info.element_bytes = r_.u8("element bytes");
    if (info.element_bytes != 4 && info.element_bytes != 8)
      r_.fail_at("element bytes", at, fmt::format("{} expected 4 (f32) or 8 (f64)", info.element_bytes));
    const std::uint8_t flags = r_.u8("flags");
    if (flags & ~(kInputValues | kCompiled)) r_.fail_at("flags", kFlagsOffset, fmt::format("{:#x} has unknown bits", flags));
    info.input_values = (flags & kInputValues) != 0;
    info.compiled = (flags & kCompiled) != 0;
    const std::uint32_t bits = r_.u32("compile options");
    if (bits & ~kOptionBits) r_.fail_at("compile options", kFlagsOffset + 1, fmt::format("{:#x} has unknown bits", bits));
    info.compile_options = options_from_bits(bits);
    return info;
  }

  FileRecords records() {
    FileRecords f;
    f.info = header();
    version_ = f.info.version;
    element_bytes_ = static_cast<std::size_t>(f.info.element_bytes);
    const std::uint32_t n_slots = count("slot count", 1 + 4);
    f.slots.resize(n_slots);
    for (std::uint32_t s = 0; s < n_slots; ++s) f.slots[s] = slot(s);
    const std::uint32_t n_guards = count("guard count", 2 + 4 + 4 + 8 + 8 + 1 + 16);
    for (std::uint32_t i = 0; i < n_guards; ++i) f.guards.push_back(guard(n_slots));
    const std::size_t at = r_.offset();
    f.output = r_.u32("output");
    if (f.output != Tape<float>::kNoSlot && f.output >= n_slots)
      r_.fail_at("output", at, fmt::format("slot {} but the tape has {} slots", f.output, n_slots));
    if (f.info.input_values)
      for (auto& s : f.slots)
        if (s.kind == 'I') s.values = values(s.shape, "input values");
    std::string end(kEnd.size(), '\0');
    r_.raw(end.data(), end.size(), "end marker");
    if (end != kEnd) r_.fail_at("end marker", r_.offset() - kEnd.size(), "expected \"END!\"");
    r_.finish();
    return f;
  }

 private:
  // A count of records each at least `min_bytes` long: more than the bytes left is an error.
  std::uint32_t count(const char* field, std::size_t min_bytes) {
    const std::size_t at = r_.offset();
    const std::uint32_t n = r_.u32(field);
    if (n > r_.remaining() / min_bytes)
      r_.fail_at(field, at, fmt::format("{} records cannot fit in the {} bytes left", n, r_.remaining()));
    return n;
  }

  Shape shape(const char* field) {
    const std::size_t at = r_.offset();
    const auto dims = r_.list(field);
    std::int64_t size = 1;
    for (auto d : dims) {
      if (d < 0) r_.fail_at(field, at, fmt::format("dimension {} expected >= 0", d));
      if (d > 0 && size > options_.max_elements / d)
        r_.fail_at(field, at, fmt::format("[{}] has more than {} elements (LoadOptions::max_elements)", fmt::join(dims, ","),
                                          options_.max_elements));
      size *= d;
    }
    elements_ += size;
    if (elements_ > options_.max_elements)
      r_.fail_at(field, at, fmt::format("the tape's values add up to more than {} elements (LoadOptions::max_elements)",
                                        options_.max_elements));
    return Shape(std::span<const std::int64_t>(dims));
  }

  std::string_view values(const Shape& s, const char* field) {
    const std::size_t n = static_cast<std::size_t>(s.size()) * element_bytes_;
    if (n > r_.remaining())
      r_.fail_at(field, r_.offset(), fmt::format("{} values need {} bytes but {} are left (truncated)", s.size(), n,
                                                 r_.remaining()));
    const std::string_view v = bytes_.substr(r_.offset(), n);
    r_.skip(n, field);
    return v;
  }

  SiteRecord site() {
    SiteRecord s;
    s.file = printable(r_.string("site file"));
    s.function = printable(r_.string("site function"));
    s.line = r_.u32("site line");
    s.column = r_.u32("site column");
    return s;
  }

  SlotRecord slot(std::uint32_t index) {
    SlotRecord s;
    s.offset = r_.offset();
    s.kind = static_cast<char>(r_.u8("slot kind"));
    switch (s.kind) {
      case 'I':
        s.shape = shape("input shape");
        s.needs_grad = r_.boolean("input needs_grad");
        s.min = r_.f64("input min");
        s.max = r_.f64("input max");
        s.integer = r_.boolean("input integer");
        if (version_ >= 2) s.name = printable(r_.string("input name"));
        if (!(s.min <= s.max) || !std::isfinite(s.min) || !std::isfinite(s.max))
          r_.fail_at("input min", s.offset + 1, fmt::format("range [{}, {}] expected finite min <= max", s.min, s.max));
        break;
      case 'C':
        s.shape = shape("constant shape");
        s.values = values(s.shape, "constant values");
        break;
      case 'X': {
        s.op = r_.string("op name");  // looked up as is; printed only through printable()
        const std::uint32_t n = r_.u32("params size");
        s.params_offset = r_.offset();
        if (n > r_.remaining()) r_.fail_at("params", s.params_offset, fmt::format("{} bytes but {} are left", n, r_.remaining()));
        s.params = bytes_.substr(s.params_offset, n);
        r_.skip(n, "params");
        s.params_text = printable(r_.string("params text"));
        const std::uint32_t n_args = count("argument count", 4);
        for (std::uint32_t k = 0; k < n_args; ++k) {
          const std::size_t at = r_.offset();
          const std::uint32_t a = r_.u32("argument");
          if (a >= index)
            r_.fail_at("argument", at, fmt::format("slot {} for slot {} expected an earlier slot (< {})", a, index, index));
          s.args.push_back(a);
        }
        s.shape = shape("output shape");
        s.site = site();
        if (version_ >= 3) {
          const std::size_t at = r_.offset();
          s.pullback_of = r_.u32("pullback of");
          if (s.pullback_of != Tape<float>::kNoSlot && s.pullback_of >= index)
            r_.fail_at("pullback of", at, fmt::format("slot {} for slot {} expected an earlier slot (< {}) or none", s.pullback_of, index, index));
        }
        break;
      }
      default:
        r_.fail_at("slot kind", s.offset, fmt::format("{} expected 'I' (input), 'C' (constant) or 'X' (computed)",
                                                      static_cast<int>(static_cast<unsigned char>(s.kind))));
    }
    return s;
  }

  GuardRecord guard(std::uint32_t n_slots) {
    GuardRecord g;
    g.offset = r_.offset();
    g.guard.kind = r_.enumeration("guard kind", GuardKind::element);
    g.guard.compare = r_.enumeration("guard compare", Compare::not_equal);
    g.guard.lhs = r_.u32("guard lhs");
    g.guard.rhs = r_.u32("guard rhs");
    if (g.guard.lhs >= n_slots || (g.guard.rhs != Tape<float>::kNoSlot && g.guard.rhs >= n_slots))
      r_.fail_at("guard lhs", g.offset + 2, fmt::format("slots {} and {} expected below {}", g.guard.lhs, g.guard.rhs, n_slots));
    g.guard.scalar = r_.f64("guard scalar");
    g.guard.element = r_.i64("guard element");
    g.guard.expected = r_.boolean("guard expected");
    g.site = site();
    return g;
  }

  ParamReader r_;
  std::string_view bytes_;
  LoadOptions options_;
  std::size_t element_bytes_ = 4;
  std::uint32_t version_ = 1;
  std::int64_t elements_ = 0;
};

// ---- building the tape -------------------------------------------------------------

template <class T>
Array<T> array_from(const Shape& shape, std::string_view bytes) {
  Array<T> a = Array<T>::uninitialized(shape);
  if (!bytes.empty()) std::memcpy(a.data(), bytes.data(), bytes.size());
  return a;
}

template <class T>
Array<T> random_input(const SlotRecord& s, std::uint64_t seed) {
  if (!s.integer) return Array<T>::random_uniform(s.shape, T(s.min), T(s.max), seed);
  Array<T> a = Array<T>::random_uniform(s.shape, T(0), T(1), seed);
  const double span = s.max - s.min + 1;
  for (T& v : a) v = T(std::min(s.max, s.min + std::floor(double(v) * span)));
  return a;
}

template <class T>
Site site_on(Tape<T>& tape, const SiteRecord& s) {
  return Site(tape.keep_string(s.file), s.line, s.column, tape.keep_string(s.function));
}

template <class T>
std::shared_ptr<const OpParams> load_params(const OpInfo<T>& op, const SlotRecord& s) {
  ParamReader r(s.params, fmt::format("tape file: op {} params", op.name), s.params_offset);
  if (!op.load_params) {
    r.finish();  // no params expected: the blob must be empty
    return nullptr;
  }
  auto params = op.load_params(r);
  r.finish();
  return params;
}

template <class T>
void add_computed(Tape<T>& tape, std::uint32_t index, const SlotRecord& s, ReplayBudget& budget) {
  const OpInfo<T>* op = Registry<T>::find(s.op);
  if (!op)
    fail(kContext, fmt::format("slot %{} (byte {}) uses op `{}` that this program has not registered expected a "
                               "registered op; hint: link the code that registers custom ops (tg::register_op) and "
                               "register them before loading",
                               index, s.offset, printable(s.op)));
  try {
    const Site where = site_on(tape, s.site);
    const auto before = tape.set_pullback_origin({s.pullback_of, where});  // Note [Pullback origins]
    try {
      replay_instruction(tape, *op, load_params(*op, s), s.args, s.shape, where, budget);
    } catch (...) {
      tape.set_pullback_origin(before);
      throw;
    }
    tape.set_pullback_origin(before);
  } catch (const Error& e) {
    fail(kContext, fmt::format("slot %{} (byte {}, {}) does not replay: {}", index, s.offset, s.op, e.what()));
  }
}

// Note [Budget before inputs]: a loaded tape that replays on inputs it makes
// (random, in each input's saved range) is built twice: first its structure
// alone, counting every instruction's FLOPs against LoadOptions::max_flops
// (dry), then for real. A file of a few hundred bytes that asks for too much
// work is refused before its inputs are made (random inputs of a 4096² image,
// 17M values, took 18 s under the sanitizers only to be thrown away). Saved
// inputs are bounded by the file itself. Rejected: counting only as the
// instructions run, after the inputs.
template <class T>
Tape<T> build(const FileRecords& f, const LoadOptions& options, bool dry) {
  if (f.info.element_bytes != static_cast<int>(sizeof(T)))
    fail(kContext, fmt::format("holds f{} values but f{} was asked for expected the file's element type; hint: "
                               "tg::read_tape_file_info tells which",
                               f.info.element_bytes * 8, sizeof(T) * 8));
  Tape<T> tape;
  std::vector<bool> needs_grad;
  ReplayBudget budget{.run = options.replay && !dry, .limit_flops = options.replay, .flops_left = options.max_flops};
  if (!budget.run) tape.set_structure_only();
  for (std::uint32_t i = 0; i < f.slots.size(); ++i) {
    const SlotRecord& s = f.slots[i];
    switch (s.kind) {
      case 'I': {
        const bool saved = f.info.input_values && !options.random_inputs;
        tape.add_input(!budget.run ? Array<T>::borrowed(s.shape, nullptr)
                       : saved         ? array_from<T>(s.shape, s.values)
                                       : random_input<T>(s, options.seed + needs_grad.size()),
                       true, s.name);
        needs_grad.push_back(s.needs_grad);
        break;
      }
      case 'C': tape.add_constant(array_from<T>(s.shape, s.values)); break;
      default: add_computed(tape, i, s, budget);
    }
  }
  for (std::size_t k = 0; k < needs_grad.size(); ++k)
    if (!needs_grad[k]) tape.set_input_needs_grad(k, false);
  for (const GuardRecord& g : f.guards) {
    Guard guard = g.guard;
    guard.where = site_on(tape, g.site);
    try {
      if (budget.run) tape.add_guard(guard);
      else tape.add_recorded_guard(guard);
    } catch (const Error& e) {
      fail(kContext, fmt::format("guard at byte {} does not apply: {}", g.offset, e.what()));
    }
  }
  tape.set_output(f.output);
  return tape;
}

std::uint64_t fnv1a(std::string_view bytes) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
  return h;
}

}  // namespace

// The skeleton; without constant values and input ranges it identifies the program
// only (TAPEGRAD_DUMP saves each program once, whatever batch a step holds).
template <class T>
std::string write_skeleton(const Tape<T>& tape, const CompileOptions* compiled, bool constant_values) {
  ParamWriter w;
  w.raw(kMagic.data(), kMagic.size());
  w.u32(kTapeFileVersion);
  w.u8(sizeof(T));
  w.u8(compiled ? kCompiled : 0);
  w.u32(compiled ? options_bits(*compiled) : 0);
  w.u32(static_cast<std::uint32_t>(tape.num_slots()));
  std::vector<const Instr<T>*> producer(tape.num_slots(), nullptr);
  for (std::size_t i = 0; i < tape.num_instructions(); ++i) producer[tape.instruction(i).out] = &tape.instruction(i);
  std::size_t next_input = 0;
  for (std::uint32_t s = 0; s < tape.num_slots(); ++s) {
    const Array<T>& v = tape.value(s);
    switch (tape.kind(s)) {
      case SlotKind::input:
        w.u8('I');
        w.list(v.shape().dims());
        w.boolean(tape.needs_grad(tape.inputs()[next_input++]));
        if (constant_values) write_input_range(w, v);
        w.string(tape.input_name(next_input - 1));
        break;
      case SlotKind::constant:
        w.u8('C');
        w.list(v.shape().dims());
        if (constant_values) write_values(w, v);
        break;
      case SlotKind::computed: {
        const Instr<T>& ins = *producer[s];
        w.u8('X');
        w.string(ins.op->name);
        ParamWriter p;
        if (ins.params) {
          if (!ins.op->save_params)
            fail("save_tape", fmt::format("op {} has parameters but no save_params expected every op with parameters to "
                                          "save them; hint: fill OpInfo::save_params and load_params",
                                          ins.op->name));
          ins.op->save_params(ins.params.get(), p);
        }
        w.string(p.bytes());
        w.string(ins.op->print_params && ins.params ? ins.op->print_params(ins.params.get()) : "");
        const auto args = tape.args_of(ins);
        w.u32(static_cast<std::uint32_t>(args.size()));
        for (auto a : args) w.u32(a);
        w.list(v.shape().dims());
        write_site(w, ins.where);
        w.u32(ins.pullback_of);
        break;
      }
    }
  }
  w.u32(static_cast<std::uint32_t>(tape.guards().size()));
  for (const Guard& g : tape.guards()) {
    w.enumeration(g.kind);
    w.enumeration(g.compare);
    w.u32(g.lhs);
    w.u32(g.rhs);
    w.f64(g.scalar);
    w.i64(g.element);
    w.boolean(g.expected);
    write_site(w, g.where);
  }
  w.u32(tape.output());
  return w.take();
}

template <class T>
std::string tape_file_skeleton(const Tape<T>& tape, const CompileOptions* compiled) {
  return write_skeleton(tape, compiled, /*constant_values=*/true);
}

template <class T>
std::string finish_tape_file(std::string skeleton, std::span<const Array<T>* const> input_values) {
  ParamWriter w;
  for (const Array<T>* v : input_values) write_values(w, *v);
  if (!input_values.empty()) skeleton[kFlagsOffset] = static_cast<char>(skeleton[kFlagsOffset] | kInputValues);
  w.raw(kEnd.data(), kEnd.size());
  return skeleton + w.bytes();
}

template <class T>
std::string serialize_tape(const Tape<T>& tape, const SaveOptions& options, const CompileOptions* compiled) {
  std::vector<const Array<T>*> inputs;
  if (options.input_values)
    for (auto s : tape.inputs()) inputs.push_back(&tape.value(s));
  return finish_tape_file<T>(tape_file_skeleton(tape, compiled), inputs);
}

TapeFileInfo read_tape_file_info(std::string_view bytes) {
  return FileReader(bytes, {}).header();
}

template <class T>
LoadedTape<T> deserialize_tape(std::string_view bytes, const LoadOptions& options) {
  const FileRecords f = FileReader(bytes, options).records();
  const bool makes_inputs = !f.info.input_values || options.random_inputs;
  if (options.replay && makes_inputs) build<T>(f, options, /*dry=*/true);  // Note [Budget before inputs]
  return {build<T>(f, options, /*dry=*/false), f.info};
}

std::string read_file_bytes(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) fail("load_tape", fmt::format("`{}` is a directory expected a file", path));
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("load_tape", fmt::format("cannot open `{}` expected a readable file", path));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("load_tape", fmt::format("reading `{}` failed", path));
  return bytes;
}

void write_file_bytes(const std::string& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) fail("save_tape", fmt::format("cannot open `{}` for writing expected a writable path", path));
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) fail("save_tape", fmt::format("writing {} bytes to `{}` failed", bytes.size(), path));
}

namespace detail {

template <class T>
void dump_tape_if_requested(const Tape<T>& tape, const CompileOptions* compiled) {
  const char* dir = std::getenv("TAPEGRAD_DUMP");
  if (!dir || !*dir) return;
  static std::mutex mutex;
  static std::unordered_set<std::uint64_t> seen;
  static int saved = 0;
  static bool warned = false;
  try {
    const std::uint64_t program = fnv1a(write_skeleton(tape, compiled, /*constant_values=*/false));
    std::lock_guard lock(mutex);
    if (!seen.insert(program).second) return;  // this program was saved already
    const char* with_inputs = std::getenv("TAPEGRAD_DUMP_INPUTS");
    const SaveOptions options{.input_values = !(with_inputs && std::string_view(with_inputs) == "0")};
    std::filesystem::create_directories(dir);
    const std::string path =
        fmt::format("{}/tape-{}-{:03}{}.tgt", dir, static_cast<long>(::getpid()), ++saved, compiled ? "-compiled" : "");
    write_file_bytes(path, serialize_tape(tape, options, compiled));
    fmt::print(stderr, "tapegrad: TAPEGRAD_DUMP saved a tape of {} instructions to {}\n", tape.num_instructions(), path);
  } catch (const std::exception& e) {
    std::lock_guard lock(mutex);
    if (!warned) fmt::print(stderr, "tapegrad: TAPEGRAD_DUMP={} could not save a tape: {}\n", dir, e.what());
    warned = true;
  }
}

}  // namespace detail

#define TG_INSTANTIATE(T)                                                                                    \
  template std::string tape_file_skeleton(const Tape<T>&, const CompileOptions*);                           \
  template std::string finish_tape_file(std::string, std::span<const Array<T>* const>);                      \
  template std::string serialize_tape(const Tape<T>&, const SaveOptions&, const CompileOptions*);           \
  template LoadedTape<T> deserialize_tape(std::string_view, const LoadOptions&);                            \
  template void detail::dump_tape_if_requested(const Tape<T>&, const CompileOptions*);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg
