#include "tapegrad/kernels/threads.hpp"

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <fmt/format.h>
#include <omp.h>

#include "tapegrad/kernels/error.hpp"
#include "tapegrad/kernels/gemm.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>
#include <string_view>

namespace tg {
namespace {
// Note [Process-wide thread count]: omp_set_num_threads sets the calling
// thread's OpenMP default only; a std::thread started later, or another that
// is running, keeps OMP_NUM_THREADS. tapegrad's count is this one process-wide
// value (0: not set, OpenMP's default as the process started), and every
// parallel region of the kernels asks num_threads() for its team size.
std::atomic<int> g_threads{0};

bool dynamic_from_environment() {
  const char* v = std::getenv("TG_DYNAMIC_THREADS");
  if (v == nullptr) return true;
  const std::string_view s(v);
  return !(s == "0" || s == "false" || s == "off");
}
std::atomic<bool> g_dynamic{dynamic_from_environment()};

// Note [Threads on a busy machine]: libgomp's idle threads spin before they
// sleep, and beside another CPU-bound program a team of one thread per core
// waits at every barrier for the member the scheduler has put off: on a loaded
// 2-core machine 2 threads took twice the time of 1 (bench_lenet --busy). The
// waiting policy cannot be changed once libgomp has loaded (docs/design-notes.md),
// so the team is sized from the load instead. Every 250 ms the time this
// process's CPUs spent busy (/proc/stat, the hypervisor's steal included) less
// this process's own CPU time (its spinning threads included) is the other
// programs' load L, in cores; a core counts as taken from L's first 0.4 of it,
// and the kernels use min(ceiling, cores - taken), at least one thread, or the
// ceiling itself while nothing else runs. Rejected: libgomp's OMP_DYNAMIC,
// whose 15-minute load average counts our own spinning threads and trails a
// change by minutes.
class LoadGauge {
 public:
  double load() {
    const std::int64_t now = clock_ns(CLOCK_MONOTONIC_COARSE);
    if (now >= next_.load(std::memory_order_relaxed) && mutex_.try_lock()) {
      std::lock_guard lock(mutex_, std::adopt_lock);
      if (now >= next_.load(std::memory_order_relaxed)) {
        next_.store(now + (sample() ? kPeriodNs : kRetryNs), std::memory_order_relaxed);
      }
    }
    return load_.load(std::memory_order_relaxed);
  }
  int cores() const { return cores_.load(std::memory_order_relaxed); }

 private:
  static constexpr std::int64_t kPeriodNs = 250'000'000;
  // A window longer than kStaleNs (this process had no kernels to run) tells
  // what the machine did while it waited, and with interleaved trainings that
  // was the other training: it only starts a new window, kRetryNs long.
  static constexpr std::int64_t kStaleNs = 400'000'000, kRetryNs = 100'000'000;
  struct Reading {
    std::int64_t wall_ns = 0, own_ns = 0;
    std::uint64_t busy_ticks = 0;
    int cores = 0;
  };

  static std::int64_t clock_ns(clockid_t clock) {
    timespec ts{};
    clock_gettime(clock, &ts);
    return std::int64_t(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
  }

  // Busy ticks summed over the CPUs this process may run on; false where
  // /proc/stat cannot be read. A static buffer, not the heap: a sample can
  // fall inside a replayed step, which is to allocate nothing.
  static bool read(Reading& r) {
    static char text[1 << 17];
    cpu_set_t allowed;
    CPU_ZERO(&allowed);
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return false;
    const int fd = open("/proc/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    std::size_t size = 0;
    for (ssize_t got; size < sizeof text - 1 && (got = ::read(fd, text + size, sizeof text - 1 - size)) > 0;)
      size += static_cast<std::size_t>(got);
    close(fd);
    text[size] = '\0';
    r.wall_ns = clock_ns(CLOCK_MONOTONIC);
    r.own_ns = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
    // Lines "cpuN user nice system idle iowait irq softirq steal ...", after the "cpu " total.
    for (const char* line = text; std::strncmp(line, "cpu", 3) == 0;) {
      char* p = nullptr;
      const long cpu = std::strtol(line + 3, &p, 10);
      if (p != line + 3 && cpu >= 0 && cpu < CPU_SETSIZE && CPU_ISSET(cpu, &allowed)) {
        std::uint64_t field[8] = {};
        for (auto& f : field) f = std::strtoull(p, &p, 10);
        r.busy_ticks += field[0] + field[1] + field[2] + field[5] + field[6] + field[7];
        ++r.cores;
      }
      const char* end = std::strchr(line, '\n');
      if (end == nullptr) break;
      line = end + 1;
    }
    return r.cores > 0;
  }

  // False when the window was not measured (the first, a stale one, a change of CPUs).
  bool sample() {
    Reading r;
    if (!read(r)) {
      load_.store(0.0, std::memory_order_relaxed);
      cores_.store(0, std::memory_order_relaxed);
      have_previous_ = false;
      return true;
    }
    const std::int64_t window = r.wall_ns - previous_.wall_ns;
    const bool measured = have_previous_ && r.cores == previous_.cores && window > 0 && window <= kStaleNs;
    if (measured) {
      static const double ticks_per_second = double(sysconf(_SC_CLK_TCK));
      const double busy = double(r.busy_ticks - previous_.busy_ticks) / ticks_per_second;
      const double own = double(r.own_ns - previous_.own_ns) * 1e-9;
      load_.store(std::max(0.0, (busy - own) / (double(window) * 1e-9)), std::memory_order_relaxed);
    }
    cores_.store(r.cores, std::memory_order_relaxed);
    previous_ = r;
    have_previous_ = true;
    return measured;
  }

  std::mutex mutex_;
  std::atomic<std::int64_t> next_{0};
  std::atomic<double> load_{0.0};
  std::atomic<int> cores_{0};
  Reading previous_;  // under mutex_
  bool have_previous_ = false;
};

LoadGauge& gauge() {
  static LoadGauge g;
  return g;
}

// OpenMP's default (OMP_NUM_THREADS, else one per core), read once: OpenBLAS's
// openblas_set_num_threads, which use() calls, also sets the calling thread's
// OpenMP default, and must not move the ceiling.
int default_threads() {
  static const int threads = omp_get_max_threads();
  return threads;
}

// Note [OpenBLAS follows the count in use]: a GEMM that our threads do not
// split runs in OpenBLAS, which threads it by its own count (Note [GEMM split
// over our threads]). While the load lowers the count, OpenBLAS must not keep
// the ceiling's threads, or its spinning team is the collapse this avoids; so
// a change of the count in use is passed on. Rare (the load moves), and only
// the thread that changes g_blas_threads calls OpenBLAS.
std::atomic<int> g_blas_threads{0};

int use(int threads) {
  if (omp_in_parallel()) return threads;  // a nested call: OpenBLAS runs single-threaded there; the caller's thread passes it on
  if (g_blas_threads.load(std::memory_order_relaxed) != threads &&
      g_blas_threads.exchange(threads, std::memory_order_relaxed) != threads)
    kernels::set_blas_threads(threads);
  return threads;
}
}  // namespace

void set_num_threads(int threads) {
  if (threads < 1) fail("set_num_threads", fmt::format("threads is {} expected >= 1", threads));
  g_threads.store(threads, std::memory_order_relaxed);
  omp_set_num_threads(threads);
  g_blas_threads.store(threads, std::memory_order_relaxed);
  kernels::set_blas_threads(threads);
}

int max_threads() {
  const int set = g_threads.load(std::memory_order_relaxed);
  return set > 0 ? set : default_threads();
}

int num_threads() {
  const int ceiling = max_threads();
  if (ceiling <= 1 || !g_dynamic.load(std::memory_order_relaxed)) return use(ceiling);
  const double load = gauge().load();
  return use(kernels::threads_for_load(ceiling, gauge().cores(), load));
}

void set_dynamic_threads(bool on) { g_dynamic.store(on, std::memory_order_relaxed); }
bool dynamic_threads() { return g_dynamic.load(std::memory_order_relaxed); }

namespace kernels {
int threads_for_load(int ceiling, int cores, double other_load) {
  const int taken = static_cast<int>(std::floor(std::max(0.0, other_load) + 0.6));
  if (taken <= 0 || cores <= 0) return ceiling;
  return std::clamp(cores - taken, 1, std::max(1, ceiling));
}

double other_load() { return gauge().load(); }
}  // namespace kernels

}  // namespace tg
