// LeNet training on Fashion-MNIST, tapegrad (interpreted and compiled) against LibTorch in one run: the
// same network, initial weights, batches (same shuffled order), SGD momentum
// 0.9, lr 0.01, batch 64, pixel standardisation. Prints seconds per epoch,
// images/s and test accuracy for both, their ratio, the peak memory of each,
// and per-step profiles of a tapegrad training step: the compiled program's
// steps (fused activations shown with their conv) and the interpreter's instructions.
//
//   bench_lenet [--epochs 2] [--threads 2] [--steps N] [--data DIR] [--no-compare] [--no-compiled]
//               [--profile-steps 20] [--turn-steps 50] [--busy]
//
// --busy runs the trainings beside a competing CPU-bound process (a loaded machine, issue 20).
// The trainings run in child processes that take turns (interleaved.hpp,
// Note [Interleaved trainings]); LibTorch's is the program bench_lenet_torch
// (Note [Comparison programs]).
#include <optional>
#include <string>

#include "lenet_bench.hpp"
#include "timing.hpp"

namespace {

using namespace tgbench;
using namespace tgbench::lenet;

// --- tapegrad --------------------------------------------------------------------

// Trains with the interpreter (replayed tapes) or with compiled tapes (the
// recorded tape is dropped once compiled, so only the compiled program's memory counts).
Result train_tapegrad(const Data& d, const Options& o, bool compiled, Turns& turns) {
  tg::set_num_threads(o.threads);
  cnn::LenetParams net = cnn::lenet_init(1);
  tg::optim::Sgd sgd(net, {.lr = 0.01, .momentum = 0.9});
  auto jit = tg::jit(cnn::lenet_loss, {.compiled = compiled});
  cnn::LenetParams grads;
  A x, y;
  auto step = [&]() -> float { return jit.value_and_gradient_into(grads, net, tg::data(x), tg::data(y)); };
  const char* name = compiled ? "tapegrad compiled" : "tapegrad";
  Result r = train_epochs(
      name, o.epochs, d.steps, turns, [&](int e) { return cnn::shuffled(d.train.size(), 1, e); },
      [&](const std::vector<std::int64_t>& order, std::int64_t s) {
        batch(d, order, s, x, y);
        const float loss = step();
        sgd.step(net, grads);
        return loss;
      },
      [&] { return cnn::lenet_accuracy(d.test, net, d.test.size()); });
  const auto order = cnn::shuffled(d.train.size(), 1, 0);
  batch(d, order, 0, x, y);
  print_arena(jit, "compiled batch-64 step", net, tg::data(x), tg::data(y));
  r.peak_rss_mib = status_mib("VmHWM");
  if (o.profile_steps > 0)  // batch-64 steps only: the first batches of epoch 0's order
    print_step_profile(jit, name, o.threads, o.profile_steps, [&](int s) { batch(d, order, s, x, y), step(); }, net, tg::data(x),
                       tg::data(y));
  return r;
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  const Data d = load_data(o);
  const std::int64_t images = std::min(d.train.size(), d.steps * 64);
  fmt::print("{}\n", cpu_line());
  fmt::print("LeNet on Fashion-MNIST, {} epoch(s) of {} steps ({} images), batch 64, SGD momentum 0.9 lr 0.01, {} threads\n",
             o.epochs, d.steps, images, o.threads);
  std::vector<const char*> names;
  std::vector<Training> trainings;
  if (o.compiled) {
    names.push_back("tapegrad compiled");
    trainings.push_back([&](Turns& t) { return train_tapegrad(d, o, true, t); });
  }
  names.push_back("tapegrad");
  trainings.push_back([&](Turns& t) { return train_tapegrad(d, o, false, t); });
#ifdef TAPEGRAD_HAVE_TORCH  // bench_lenet_torch was built beside this program
  if (o.compare) {
    names.push_back("LibTorch");
    std::vector<std::string> program{program_beside("bench_lenet_torch")};
    program.insert(program.end(), argv + 1, argv + argc);
    trainings.push_back(Training::exec(std::move(program)));
  }
#endif
  if (o.turn_steps > 0)
    fmt::print("the trainings take turns of {} steps (Note [Interleaved trainings]; --turn-steps 0: one after another)\n",
               o.turn_steps);
  std::optional<CompetingLoad> load;
  if (o.busy) load.emplace();
  const std::vector<Result> results = run_trainings(trainings, o.turn_steps);
  load.reset();
  std::vector<Run> runs;
  for (std::size_t i = 0; i < results.size(); ++i) runs.push_back({names[i], results[i]});
  print_table(runs, images);
  return 0;
} catch (const tg::Error& e) {
  fmt::print(stderr, "error: {}\n", e.what());
  return 2;
}
