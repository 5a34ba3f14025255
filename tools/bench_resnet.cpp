// The ResNet example's training (examples/cnn/resnet_model.hpp) in tapegrad
// (compiled) against the same network in LibTorch, in one run: the same
// layers (conv without bias + BatchNorm2d, basic blocks, global mean pool,
// linear), the same initial weights, batches and order, SGD with momentum 0.9
// and weight decay 5e-4 under the same warm-up + cosine schedule. Prints
// seconds per epoch, images/s, test accuracy and peak memory side by side,
// each as a ratio to LibTorch's.
//
//   bench_resnet [--epochs 1] [--threads 2] [--steps N] [--width 32] [--batch 128] [--lr 0.05]
//                [--data DIR] [--no-compare] [--turn-steps 20] [--profile-steps 0]
//
// The trainings run in child processes that take turns (interleaved.hpp,
// Note [Interleaved trainings]); LibTorch's is the program bench_resnet_torch
// (Note [Comparison programs]).
#include <string>

#include "resnet_bench.hpp"
#include "timing.hpp"

namespace {

using namespace tgbench;
using namespace tgbench::resnet;

Result train_tapegrad(const Data& d, const Options& o, Turns& turns) {
  tg::set_num_threads(o.threads);
  cnn::ResnetParams net = cnn::resnet_init(o.width, 1);
  tg::optim::Sgd sgd(net, {.lr = o.lr, .momentum = 0.9, .weight_decay = o.weight_decay});
  const auto lr = schedule(d, o);
  auto jit = tg::jit(cnn::resnet_loss, {.capacity = 1});  // as the example: one arena resident
  cnn::ResnetParams grads;
  A x, y;
  auto step = [&] {
    const double loss = jit.value_and_gradient_into(grads, net, tg::data(x), tg::data(y));
    sgd.set_lr(lr(sgd.steps()));
    sgd.step(net, grads);
    return loss;
  };
  Result r = train_epochs(
      "tapegrad", o.epochs, d.steps, turns, [&](int e) { return cnn::shuffled(d.train.size(), 1, e); },
      [&](const std::vector<std::int64_t>& order, std::int64_t s) { return batch(d, order, s, x, y), step(); },
      [&] { return cnn::resnet_accuracy(d.test, net, d.test.size()); });
  const auto order = cnn::shuffled(d.train.size(), 1, 0);
  batch(d, order, 0, x, y);
  print_arena(jit, "compiled full-batch step", net, tg::data(x), tg::data(y));
  r.peak_rss_mib = status_mib("VmHWM");
  if (o.profile_steps > 0) {  // full batches: the first of epoch 0's order
    print_step_profile(jit, "tapegrad compiled", o.threads, o.profile_steps, [&](int s) { batch(d, order, s, x, y), step(); },
                       net, tg::data(x), tg::data(y));
  }
  return r;
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  const Data d = load_data(o);
  const std::int64_t images = std::min(d.train.size(), d.steps * o.batch);
  fmt::print("{}\n", cpu_line());
  fmt::print("ResNet (width {}) on Fashion-MNIST, {} epoch(s) of {} steps ({} images), batch {}, SGD momentum 0.9 lr {} "
             "warm-up + cosine, weight decay {}, {} threads\n",
             o.width, o.epochs, d.steps, images, o.batch, o.lr, o.weight_decay, o.threads);
  std::vector<const char*> names{"tapegrad compiled"};
  std::vector<Training> trainings{[&](Turns& t) { return train_tapegrad(d, o, t); }};
#ifdef TAPEGRAD_HAVE_TORCH  // bench_resnet_torch was built beside this program
  if (o.compare) {
    names.push_back("LibTorch");
    std::vector<std::string> program{program_beside("bench_resnet_torch")};
    program.insert(program.end(), argv + 1, argv + argc);
    trainings.push_back(Training::exec(std::move(program)));
  }
#endif
  if (o.turn_steps > 0) fmt::print("the trainings take turns of {} steps (Note [Interleaved trainings])\n", o.turn_steps);
  const std::vector<Result> results = run_trainings(trainings, o.turn_steps);
  std::vector<Run> runs;
  for (std::size_t i = 0; i < results.size(); ++i) runs.push_back({names[i], results[i]});
  print_table(runs, images);
  return 0;
} catch (const tg::Error& e) {
  fmt::print(stderr, "error: {}\n", e.what());
  return 2;
}
