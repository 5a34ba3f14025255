#include "tapegrad/kernels/threads.hpp"

#include <fmt/format.h>
#include <omp.h>

#include "tapegrad/kernels/error.hpp"
#include "tapegrad/kernels/gemm.hpp"

namespace tg {

void set_num_threads(int threads) {
  if (threads < 1) fail("set_num_threads", fmt::format("threads is {} expected >= 1", threads));
  omp_set_num_threads(threads);
  kernels::set_blas_threads(threads);
}

int num_threads() { return omp_get_max_threads(); }

}  // namespace tg
