// Trainings in forked processes that take turns on the machine, for the
// benchmarks that compare whole trainings (bench_lenet, bench_resnet).
//
// Each framework trains in its own forked process, so that neither sees the
// other's threads or heap. Memory: the process's peak resident set (VmHWM,
// which includes the data the parent loaded) and the peak growth above the
// resident set at the child's start (the training's own memory).
//
// Note [Comparison programs]: the benchmark itself links tapegrad only; the
// LibTorch training is a program of its own (bench_*_torch), started in its
// child by exec, which loads the data itself and trains through run_as_child.
// A benchmark that linked LibTorch would hand every forked child LibTorch's
// resident libraries and the 57 MiB its static initialisers allocate, memory
// a tapegrad program never holds (rejected: forking every training from a
// parent that links both frameworks).
//
// Note [Interleaved trainings]: a shared machine's speed drifts, by 20-40%
// over minutes on the 2-core VMs this was measured on, so trainings run one
// after another compare the machine's moods as much as the engines. The
// trainings therefore take turns: the parent lets one child run --turn-steps
// steps while the others wait blocked on a pipe, then the next, round robin,
// and each child's clock counts only its own turns. Drift then falls on every
// engine alike. --turn-steps 0 runs them one after another instead.
#pragma once

#include <sys/prctl.h>
#include <sys/wait.h>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <cstdint>
#include <cstdlib>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include <tapegrad/tapegrad.hpp>

namespace tgbench {

constexpr int kMaxEpochs = 16;

// What a child process sends back through a pipe (plain data).
struct Result {
  int epochs = 0;
  double seconds[kMaxEpochs] = {}, accuracy[kMaxEpochs] = {}, loss[kMaxEpochs] = {};
  double start_rss_mib = 0, peak_rss_mib = 0;
};


// A field of /proc/self/status in MiB ("VmRSS", "VmHWM").
double status_mib(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string key;
  double kib = 0;
  while (in >> key) {
    if (key == std::string(field) + ":") {
      in >> kib;
      return kib / 1024;
    }
    in.ignore(1 << 12, '\n');
  }
  return 0;
}

// Resets the peak resident set to the current one (Linux: clear_refs 5).
void reset_peak_rss() { std::ofstream("/proc/self/clear_refs") << "5"; }

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// A child's side of the turns (Note [Interleaved trainings]): `go` carries the
// parent's permission to run, `back` the child's messages ('r': ready, 't': my
// turn is over, 'f': finished, followed by its Result). Without pipes (one training at
// a time) a child never waits.
class Turns {
 public:
  Turns(int go, int back, int turn_steps) : go_(go), back_(back), turn_steps_(turn_steps) {}
  // Blocks until the parent gives this child its turn.
  void wait() const {
    char c = 0;
    if (go_ >= 0 && read(go_, &c, 1) != 1) _exit(3);  // the parent is gone
  }
  // After each training step: at the end of a turn, hands the machine on and
  // waits for the next turn. Returns the seconds spent waiting (0 otherwise).
  double after_step() {
    if (go_ < 0 || turn_steps_ == 0 || ++steps_ % turn_steps_ != 0) return 0;
    const auto start = Clock::now();
    send('t');
    wait();
    return since(start);
  }
  void send(char c) const {
    if (back_ >= 0 && write(back_, &c, 1) != 1) _exit(3);
  }

 private:
  int go_, back_, turn_steps_;
  std::int64_t steps_ = 0;
};


// The epochs of one training: order(e) gives epoch e's sample order, step(order,
// s) runs step s and returns its loss, accuracy() the test accuracy after an
// epoch. Each epoch's clock counts this child's turns only.
template <class Order, class Step, class Accuracy>
Result train_epochs(const char* name, int epochs, std::int64_t steps, Turns& turns, Order order, Step step, Accuracy accuracy) {
  Result r;
  for (int e = 1; e <= epochs; ++e) {
    const auto epoch_order = order(e);
    const auto start = Clock::now();
    double loss_sum = 0, waited = 0;
    for (std::int64_t s = 0; s < steps; ++s) {
      loss_sum += step(epoch_order, s);
      waited += turns.after_step();
    }
    r.seconds[e - 1] = since(start) - waited;
    r.loss[e - 1] = loss_sum / double(steps);
    r.accuracy[e - 1] = accuracy();
    r.epochs = e;
    fmt::print("  {} epoch {}: {:.1f} s, loss {:.4f}, test accuracy {:.2f}%\n", name, e, r.seconds[e - 1], r.loss[e - 1],
               100 * r.accuracy[e - 1]);
    std::fflush(stdout);
  }
  r.peak_rss_mib = status_mib("VmHWM");
  return r;
}

using TrainFn = std::function<Result(Turns&)>;

// One training: a function run in a forked child, or a program (argv) that the
// child starts by exec and that trains through run_as_child (Note [Comparison programs]).
struct Training {
  TrainFn run;
  std::vector<std::string> program;
  template <class F>
    requires std::is_invocable_r_v<Result, F&, Turns&>
  Training(F f) : run(std::move(f)) {}  // NOLINT: a lambda is a training
  static Training exec(std::vector<std::string> argv) {
    Training t;
    t.program = std::move(argv);
    return t;
  }

 private:
  Training() = default;
};

// The path of a program in this program's directory (the comparison programs are built beside the benchmarks).
std::string program_beside(const std::string& name) {
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) tg::fail("bench", "cannot read /proc/self/exe to find " + name);
  std::string dir(self, static_cast<std::size_t>(n));
  return dir.substr(0, dir.rfind('/') + 1) + name;
}

// A child's whole life: says it is ready ('r': a started program has loaded its
// libraries and data, so that no training's turn runs beside that work), waits
// for its first turn, trains, sends its Result back, exits.
[[noreturn]] void child_main(int go, int back, int turn_steps, const TrainFn& train) {
  Turns turns(go, back, turn_steps);
  turns.send('r');
  turns.wait();
  reset_peak_rss();
  const double start_rss = status_mib("VmRSS");
  Result r = train(turns);
  r.start_rss_mib = start_rss;
  std::fflush(stdout);
  turns.send('f');
  const ssize_t written = write(back, &r, sizeof r);
  _exit(written == sizeof r ? 0 : 1);
}

constexpr const char* kChildEnv = "TGBENCH_CHILD";  // "go back turn_steps", set for a program started as a child

// In a program started by Training::exec: trains as that child and exits.
[[noreturn]] void run_as_child(const char* program, const TrainFn& train) {
  const char* env = std::getenv(kChildEnv);
  int go = -1, back = -1, turn_steps = 0;
  if (!env || std::sscanf(env, "%d %d %d", &go, &back, &turn_steps) != 3)
    tg::fail(program, "runs as a child of its benchmark (bench_lenet, bench_resnet), which starts it; run that instead");
  child_main(go, back, turn_steps, train);
}

// The main of a comparison program (bench_*_torch): the benchmark's flags
// (parse), its data (load), and train(data, options, turns) as the child.
template <class Parse, class Load, class Train>
int comparison_main(const char* program, int argc, char** argv, Parse parse, Load load, Train train) try {
  const auto options = parse(argc, argv);
  const auto data = load(options);
  run_as_child(program, [&](Turns& t) { return train(data, options, t); });
} catch (const tg::Error& e) {
  fmt::print(stderr, "error: {}\n", e.what());
  return 2;
}

// One training in a forked child: its pipes from and to the parent.
struct Child {
  pid_t pid = -1;
  int go = -1, back = -1;
  bool finished = false;
  Result result;
};

// Starts a program's training in the child c (which has its pipe ends go and back).
[[noreturn]] void exec_child(const std::vector<std::string>& program, int go, int back, int turn_steps) {
  setenv(kChildEnv, fmt::format("{} {} {}", go, back, turn_steps).c_str(), 1);
  std::vector<char*> argv;
  for (const std::string& a : program) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  execv(argv[0], argv.data());
  fmt::print(stderr, "bench: cannot start {}: {}\n", program[0], std::strerror(errno));
  _exit(4);
}

Child fork_child(const Training& train, int turn_steps) {
  int go[2], back[2];
  if (pipe(go) != 0 || pipe(back) != 0) tg::fail("bench", "pipe failed");
  std::fflush(stdout);
  Child c;
  c.pid = fork();
  if (c.pid < 0) tg::fail("bench", "fork failed");
  if (c.pid == 0) {
    close(go[1]);
    close(back[0]);
    if (!train.program.empty()) exec_child(train.program, go[0], back[1], turn_steps);
    child_main(go[0], back[1], turn_steps, train.run);
  }
  close(go[0]);
  close(back[1]);
  c.go = go[1];
  c.back = back[0];
  char ready = 0;
  if (read(c.back, &ready, 1) != 1 || ready != 'r') tg::fail("bench", "a training process failed to start (see its output above)");
  return c;
}

// Gives child c one turn: returns when it hands the machine back or finishes.
void give_turn(Child& c) {
  char msg = 'g';
  if (write(c.go, &msg, 1) != 1 || read(c.back, &msg, 1) != 1)
    tg::fail("bench", "a training process failed (see its output above)");
  if (msg != 'f') return;
  c.finished = true;
  if (read(c.back, &c.result, sizeof c.result) != sizeof c.result) tg::fail("bench", "a training process sent no result");
}

// Runs the trainings in forked children, in turns of turn_steps steps each
// (Note [Interleaved trainings]), or one after another when turn_steps is 0.
std::vector<Result> run_trainings(const std::vector<Training>& trainings, int turn_steps) {
  std::vector<Child> children;
  for (const Training& t : trainings) {
    children.push_back(fork_child(t, turn_steps));
    if (turn_steps == 0) give_turn(children.back());  // runs to the end: the next starts after it
  }
  for (bool running = true; running;) {
    running = false;
    for (Child& c : children)
      if (!c.finished) {
        give_turn(c);
        running = true;
      }
  }
  std::vector<Result> results;
  for (Child& c : children) {
    int status = 0;
    waitpid(c.pid, &status, 0);
    close(c.go);
    close(c.back);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
      tg::fail("bench", "a training process failed (see its output above)");
    results.push_back(c.result);
  }
  return results;
}

struct Run {
  const char* name;
  Result result;
};

// A competing CPU-bound process for as long as this object lives (bench_lenet
// --busy: issue 20's loaded machine), and the OpenMP waiting settings in force,
// which decide how much the trainings' idle threads spin through its time slices.
class CompetingLoad {
 public:
  CompetingLoad() {
    pid_ = fork();
    if (pid_ < 0) tg::fail("bench", "fork failed: cannot start the competing load");
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlives a benchmark that is killed
      if (getppid() == 1) _exit(0);
      volatile std::uint64_t spin = 0;
      while (true) spin = spin + 1;
    }
    const char* policy = std::getenv("OMP_WAIT_POLICY");
    const char* spins = std::getenv("GOMP_SPINCOUNT");
    fmt::print("competing load: one CPU-bound process (pid {}) for the whole run; OMP_WAIT_POLICY={} GOMP_SPINCOUNT={}; "
               "tapegrad's thread count {} (Note [Threads on a busy machine])\n",
               pid_, policy ? policy : "(unset)", spins ? spins : "(unset)",
               tg::dynamic_threads() ? "follows the load" : "fixed (TG_DYNAMIC_THREADS=0)");
  }
  ~CompetingLoad() {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  CompetingLoad(const CompetingLoad&) = delete;
  CompetingLoad& operator=(const CompetingLoad&) = delete;

 private:
  pid_t pid_;
};

// Seconds, images/s and accuracy per epoch for every run, each ratio against the last run (LibTorch when compared).
void print_table(const std::vector<Run>& runs, std::int64_t images) {
  const Run& base = runs.back();
  fmt::print("\n{:<6}", "epoch");
  for (const Run& r : runs) fmt::print(" | {:>22}", r.name);
  fmt::print("   (seconds, images/s, time ratio to {})\n", base.name);
  for (int e = 0; e < base.result.epochs; ++e) {
    fmt::print("{:<6}", e + 1);
    for (const Run& r : runs)
      fmt::print(" | {:6.1f} s {:5.0f}/s {:4.2f}x", r.result.seconds[e], double(images) / r.result.seconds[e],
                 r.result.seconds[e] / base.result.seconds[e]);
    fmt::print("\n");
  }
  for (int e = 0; e < base.result.epochs; ++e) {
    fmt::print("test accuracy after epoch {}:", e + 1);
    for (const Run& r : runs) fmt::print("  {} {:.2f}%", r.name, 100 * r.result.accuracy[e]);
    fmt::print("\n");
  }
  fmt::print("peak resident memory (the training's own growth above the child's start):\n");
  for (const Run& r : runs)
    fmt::print("  {:<18} {:5.0f} MiB ({:4.0f} MiB)  ratio to {} {:.2f}x ({:.2f}x)\n", r.name, r.result.peak_rss_mib,
               r.result.peak_rss_mib - r.result.start_rss_mib, base.name, r.result.peak_rss_mib / base.result.peak_rss_mib,
               (r.result.peak_rss_mib - r.result.start_rss_mib) / (base.result.peak_rss_mib - base.result.start_rss_mib));
}

// Prints the arena of the jit's compiled program for `args` (nothing for the interpreter).
template <class Jit, class... Args>
void print_arena(Jit& jit, const char* label, const Args&... args) {
  jit.with_program(
      [&](auto& program) {
        if constexpr (requires { program.program().arena_bytes(); })
          fmt::print("  {}: arena {:.1f} MiB for values and adjoints ({:.1f} MiB one buffer each)\n", label,
                     double(program.program().arena_bytes()) / (1 << 20), double(program.program().unplanned_bytes()) / (1 << 20));
      },
      args...);
}

// Prints the per-step (compiled) or per-instruction (interpreter) profile of the
// jit's program for `args` (which it records first if it has none), over `steps` calls of step(s) (s = 0, 1, ...), which
// refills the arguments and runs one training step.
template <class Jit, class Step, class... Args>
void print_step_profile(Jit& jit, const char* name, int threads, int steps, Step&& step, const Args&... args) {
  jit.with_program(
      [&](auto& program) {
        auto visit = [&](auto& runner, const char* unit) {
          tg::TapeProfile profile;
          runner.set_profile(&profile);
          for (int s = 0; s < steps; ++s) step(s);
          runner.set_profile(nullptr);
          fmt::print("\nper-{} profile of a {} training step ({} threads, mean of {} steps):\n{}", unit, name, threads,
                     steps, tg::dump_profile(runner, profile));
        };
        if constexpr (requires { program.program(); }) visit(program.program(), "step");
        else visit(program.tape(), "instruction");
      },
      args...);
}

}  // namespace tgbench
