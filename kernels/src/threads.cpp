#include "tapegrad/kernels/threads.hpp"

#include <fmt/format.h>
#include <omp.h>

#include "tapegrad/kernels/error.hpp"
#include "tapegrad/kernels/gemm.hpp"

#include <atomic>

namespace tg {
namespace {
// Note [Process-wide thread count]: omp_set_num_threads sets the calling
// thread's OpenMP default only; a std::thread started later, or another that
// is running, keeps OMP_NUM_THREADS. tapegrad's count is this one process-wide
// value (0: not set, OpenMP's default of the calling thread), and every
// parallel region of the kernels asks num_threads() for its team size.
std::atomic<int> g_threads{0};
}  // namespace

void set_num_threads(int threads) {
  if (threads < 1) fail("set_num_threads", fmt::format("threads is {} expected >= 1", threads));
  g_threads.store(threads, std::memory_order_relaxed);
  omp_set_num_threads(threads);
  kernels::set_blas_threads(threads);
}

int num_threads() {
  const int set = g_threads.load(std::memory_order_relaxed);
  return set > 0 ? set : omp_get_max_threads();
}

}  // namespace tg
