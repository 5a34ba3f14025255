// The unit tests' main: doctest, then (on a full run, no arguments) the op
// coverage walk of support/coverage.hpp.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <array>

#include "support/coverage.hpp"
#include "tapegrad/kernels/threads.hpp"

int main(int argc, char** argv) {
  // The tests that set a thread count (uneven blocks, determinism, no allocation
  // per step) need it kept on a loaded machine too; the dynamic count has its own.
  tg::set_dynamic_threads(false);
  doctest::Context context(argc, argv);
  const int failed = context.run();
  if (context.shouldExit() || argc > 1) return failed;  // a filtered run cannot judge coverage
  constexpr std::array checks{tgtest::Check::op_triple, tgtest::Check::dot_product, tgtest::Check::save_load};
  return tgtest::report_uncovered(checks) != 0 ? 1 : failed;
}
