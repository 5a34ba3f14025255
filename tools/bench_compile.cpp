// The tape compiler against the interpreter, per replayed training step, in one
// run: an elementwise chain on 2^20 floats (what elementwise fusion is for) and
// the LeNet step of the main job (batch 64, random images). Median of --reps
// steps after warm-up, the four tapegrad variants timed in interleaved rounds:
// the interpreter, the compiled program (default options), the compiled
// program with tune_algorithms (conv algorithms timed at compile time; the
// chain has none) and the compiled program without elementwise fusion;
// LibTorch's forward + backward of the same chain beside them when built with it.
//
//   bench_compile [--reps 20] [--threads 2] [--profile] [--only chain|lenet]
//
// --profile also prints per-instruction profiles over --reps steps each
// (tg::dump_profile): the chain compiled fused and unfused, the LeNet step
// interpreted, compiled and compiled tuned. --only runs one of the two.
#include <cstring>
#include <string>

#include "../examples/cnn/lenet_model.hpp"
#include "timing.hpp"

#ifdef TAPEGRAD_HAVE_TORCH
#include <torch/torch.h>
#endif

namespace {

using F = tg::Tracked<float>;
using tgbench::median_seconds;

// Eleven elementwise ops, two broadcasts of a one-element input.
template <class V, class S>
V chain(const V& x, const V& w, const S& s) {
  auto tanh_of = [](const auto& v) {
    if constexpr (std::is_same_v<V, F>) return tg::tanh(v);
#ifdef TAPEGRAD_HAVE_TORCH
    else return torch::tanh(v);
#endif
  };
  auto sigmoid_of = [](const auto& v) {
    if constexpr (std::is_same_v<V, F>) return tg::sigmoid(v);
#ifdef TAPEGRAD_HAVE_TORCH
    else return torch::sigmoid(v);
#endif
  };
  auto exp_of = [](const auto& v) {
    if constexpr (std::is_same_v<V, F>) return tg::exp(v);
#ifdef TAPEGRAD_HAVE_TORCH
    else return torch::exp(v);
#endif
  };
  const V a = tanh_of(x * w + s);
  const V b = a * a - sigmoid_of(x) * 0.5f;
  return exp_of(-b) / (w * w + 1.0f);
}

F chain_loss(const F& x, const F& w, const F& s) { return tg::sum(chain(x, w, s)); }

struct Row {
  std::string what;
  double interpreted, compiled, tuned, unfused, torch;
};

// The compiled variants of one tape.
template <class Tape>
struct Variants {
  decltype(tg::compile(std::declval<Tape&>())) compiled, tuned, unfused;
  explicit Variants(Tape& tape)
      : compiled(tg::compile(tape)),
        tuned(tg::compile(tape, {.tune_algorithms = true})),
        unfused(tg::compile(tape, {.fuse_elementwise = false})) {}
};

// Milliseconds per step of the interpreter and the compiled variants, timed in interleaved rounds.
template <class Tape, class V, class Step>
std::array<double, 4> interleaved_ms(int reps, Tape& tape, V& v, Step step) {
  auto s = tgbench::interleaved_medians(reps, 2, [&] { step(tape); }, [&] { step(v.compiled); }, [&] { step(v.tuned); },
                                        [&] { step(v.unfused); });
  for (double& t : s) t *= 1e3;
  return s;
}

// Per-instruction times of `reps` steps of one engine, printed slowest first.
template <class Program, class Step>
void print_profile(const char* what, const char* engine, int reps, Program& p, Step step) {
  tg::TapeProfile profile;
  auto& target = [&]() -> auto& {
    if constexpr (requires { p.program(); }) return p.program();
    else return p.tape();
  }();
  target.set_profile(&profile);
  for (int r = 0; r < reps; ++r) step(p);
  target.set_profile(nullptr);
  fmt::print("\n{}, {} ({} steps):\n{}", what, engine, reps, tg::dump_profile(target, profile));
}

Row elementwise_row(int reps, bool profile) {
  using A = tg::Array<float>;
  const std::int64_t n = std::int64_t{1} << 20;
  const A x = A::random_uniform({n}, -1.f, 1.f, 1), w = A::random_uniform({n}, -1.f, 1.f, 2), s = A::scalar(0.25f);
  auto tape = tg::record(chain_loss, x, w, s);
  Variants v(tape);
  A gx, gw, gs;
  auto step = [&](auto& p) { p.gradient_into({&gx, &gw, &gs}, x, w, s); };
  const auto ms = interleaved_ms(reps, tape, v, step);
  if (profile)
    for (auto [engine, p] : {std::pair{"compiled", &v.compiled}, std::pair{"compiled unfused", &v.unfused}})
      print_profile("elementwise chain", engine, reps, *p, step);
  Row r{"elementwise chain, 2^20 floats", ms[0], ms[1], ms[2], ms[3], 0};
#ifdef TAPEGRAD_HAVE_TORCH
  auto tx = torch::from_blob(const_cast<float*>(x.data()), {n}).clone().requires_grad_(true);
  auto tw = torch::from_blob(const_cast<float*>(w.data()), {n}).clone().requires_grad_(true);
  auto ts = torch::full({}, 0.25f).requires_grad_(true);
  r.torch = 1e3 * median_seconds(reps, [&] {
    for (auto* t : {&tx, &tw, &ts})
      if (t->grad().defined()) t->grad().zero_();
    chain(tx, tw, ts).sum().backward();
  }, 2);
#endif
  return r;
}

Row lenet_row(int reps, bool profile) {
  const cnn::LenetParams net = cnn::lenet_init(1);
  const std::int64_t n = 64;
  cnn::A x = cnn::A::random_normal({n, 1, 28, 28}, 0, 1, 1), y({n});
  for (std::int64_t i = 0; i < n; ++i) y.data()[i] = static_cast<float>(i % 10);
  auto tape = tg::record(cnn::lenet_loss, net, tg::data(x), tg::data(y));
  Variants v(tape);
  cnn::LenetParams grads;
  auto step = [&](auto& p) { p.value_and_gradient_into(grads, net, tg::data(x), tg::data(y)); };
  const auto ms = interleaved_ms(reps, tape, v, step);
  const auto& program = v.compiled.program();
  auto mib = [](std::int64_t bytes) { return double(bytes) / (1 << 20); };
  fmt::print("LeNet step memory: compiled {:.1f} MiB (arena {:.1f} MiB, one buffer each {:.1f} MiB), interpreted {:.1f} MiB: "
             "{:.2f}x\n",
             mib(program.held_bytes()), mib(program.arena_bytes()), mib(program.unplanned_bytes()),
             mib(tg::held_bytes(tape.tape())), double(program.held_bytes()) / double(tg::held_bytes(tape.tape())));
  if (profile) {
    print_profile("LeNet step", "interpreted", reps, tape, step);
    print_profile("LeNet step", "compiled", reps, v.compiled, step);
    print_profile("LeNet step", "compiled, tuned", reps, v.tuned, step);
  }
  return {"LeNet training step, batch 64", ms[0], ms[1], ms[2], ms[3], 0};
}

}  // namespace

int main(int argc, char** argv) try {
  int reps = 20, threads = 2;
  bool profile = false;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc) reps = std::stoi(argv[++i]);
    else if (std::strcmp(argv[i], "--threads") == 0 && i + 1 < argc) threads = std::stoi(argv[++i]);
    else if (std::strcmp(argv[i], "--profile") == 0) profile = true;
    else if (std::strcmp(argv[i], "--only") == 0 && i + 1 < argc) only = argv[++i];
    else
      tg::fail("bench_compile",
               fmt::format("unknown flag {} expected --reps N, --threads N, --profile or --only chain|lenet", argv[i]));
  }
  if (!only.empty() && only != "chain" && only != "lenet")
    tg::fail("bench_compile", fmt::format("--only {} expected chain or lenet", only));
  tg::set_num_threads(threads);
#ifdef TAPEGRAD_HAVE_TORCH
  torch::set_num_threads(threads);
#endif
  std::vector<Row> rows;
  if (only != "lenet") rows.push_back(elementwise_row(reps, profile));
  if (only != "chain") rows.push_back(lenet_row(reps, profile));
  fmt::print("\nreplayed gradient steps, ms (median of {}), {} threads\n", reps, threads);
  fmt::print("{:<32} {:>12} {:>9} {:>7} {:>9} {:>9} {:>21} {:>18} {:>18}\n", "", "interpreted", "compiled", "tuned",
             "unfused", "LibTorch", "interpreted/compiled", "interpreted/tuned", "compiled/LibTorch");
  for (const Row& r : rows) {
    const std::string torch = r.torch > 0 ? fmt::format("{:.2f}", r.torch) : "-";
    const std::string vs_torch = r.torch > 0 ? fmt::format("{:.2f}x", r.compiled / r.torch) : "-";
    fmt::print("{:<32} {:>12.2f} {:>9.2f} {:>7.2f} {:>9.2f} {:>9} {:>20.2f}x {:>17.2f}x {:>18}\n", r.what, r.interpreted,
               r.compiled, r.tuned, r.unfused, torch, r.interpreted / r.compiled, r.interpreted / r.tuned, vs_torch);
  }
  return 0;
} catch (const std::exception& e) {
  fmt::print(stderr, "{}\n", e.what());
  return 1;
}
