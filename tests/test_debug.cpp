// Debugging a tape: the first NaN/Inf (forward value or adjoint) found at the
// right instruction, and a per-instruction gradient check that finds a planted
// wrong pullback (debug.hpp).
#include "support/checks.hpp"

using namespace tgtest;
using T = tg::Tracked<double>;

namespace {

T debug_cnn(const T& x, const T& labels, const T& w1, const T& b1, const T& w2) {
  const std::int64_t n = x.shape()[0];
  auto h = tg::maxpool(tg::relu(tg::conv(x, w1, b1, {.padding = {1}})), {.window = {2}});  // (n, 3, 3, 3)
  return tg::cross_entropy(tg::matmul(tg::reshape(tg::tanh(h), {n, 27}), w2), labels);     // (n, 27) @ (27, 4)
}

std::tuple<A, A, A, A, A> cnn_inputs() {
  return {A::random_uniform({2, 2, 6, 6}, -1, 1, 1), A({2}, {0, 3}), A::random_uniform({3, 2, 3, 3}, -1, 1, 2),
          A::random_uniform({3}, -1, 1, 3), A::random_uniform({27, 4}, -1, 1, 4)};
}

}  // namespace

TEST_CASE("find_nonfinite: a planted NaN is found at the instruction that made it, with its inputs' statistics") {
  auto f = [](const T& x) { return tg::sum(tg::log(x - 1.0) * 2.0); };  // sub, log, mul, sum
  auto tape = tg::record(f, A({3}, {2.0, 0.5, 3.0}));
  const tg::NonfiniteReport r = tg::find_nonfinite(tape.tape());
  REQUIRE(r.found);
  CHECK_FALSE(r.in_adjoint);
  CHECK(r.instruction == 1);
  CHECK(r.equation.find("= log %") != std::string::npos);
  CHECK(r.site.find("test_debug.cpp:") == 0);
  CHECK(r.value.nonfinite == 1);
  REQUIRE(r.inputs.size() == 1);
  CHECK(r.inputs[0].min == doctest::Approx(-0.5));
  CHECK(r.inputs[0].max == doctest::Approx(2.0));
  CHECK(r.summary().find("first non-finite value: the output of instruction 1: %") != std::string::npos);
}

TEST_CASE("find_nonfinite: an Inf made by a pullback is found at that pullback; a finite tape says so") {
  auto f = [](const T& x) { return tg::sum(tg::sqrt(x) * 3.0); };  // sqrt'(0) = Inf
  auto tape = tg::record(f, A({3}, {4.0, 0.0, 1.0}));
  const tg::NonfiniteReport r = tg::find_nonfinite(tape.tape());
  REQUIRE(r.found);
  CHECK(r.in_adjoint);
  CHECK(r.instruction == 0);
  CHECK(r.equation.find("= sqrt %") != std::string::npos);
  CHECK(r.summary().find("first non-finite adjoint: written by the pullback of instruction 0: %") != std::string::npos);
  // Replayed on good inputs, nothing is found.
  tape.forward(A({3}, {4.0, 2.0, 1.0}));
  CHECK_FALSE(tg::find_nonfinite(tape.tape()).found);
  auto [x, y, w1, b1, w2] = cnn_inputs();
  auto cnn = tg::record(debug_cnn, x, y, w1, b1, w2);
  CHECK(tg::find_nonfinite(cnn.tape()).summary() == "no NaN or Inf: every value and adjoint is finite\n");
}

TEST_CASE("check_instructions: every pullback of a CNN agrees with its own forward's finite differences") {
  auto [x, y, w1, b1, w2] = cnn_inputs();
  auto tape = tg::record(debug_cnn, x, y, w1, b1, w2);  // labels not marked as data: skipped, not failed
  const auto report = tg::check_instructions(tape.tape());
  CHECK_MESSAGE(report.first_failure() == nullptr, report.summary());
  CHECK(report.instructions.size() == tape.tape().num_instructions());
  std::size_t checked = 0;
  for (const auto& c : report.instructions) checked += c.checked;
  CHECK(checked == report.instructions.size());
  // A float tape is checked through the ops' double rows.
  auto ff = [](const tg::Tracked<float>& v) { return tg::sum(tg::sigmoid(v) * v); };
  const auto float_report = tg::check_instructions(tg::record(ff, tg::Array<float>::random_uniform({5}, -1.f, 1.f, 1)).tape());
  CHECK_MESSAGE(float_report.first_failure() == nullptr, float_report.summary());
}

TEST_CASE("check_instructions: a planted wrong pullback is found, and only it") {
  static const auto bad_square = tg::register_op<double>({
      .name = "bad_square",
      .forward = [](const tg::InputList<double>& in) { return in[0] * in[0]; },
      .pullback = [](const tg::InputList<double>& in, const A&, const A& dy) {
        return std::vector<A>{dy * in[0] * 3.0};  // should be 2 x dy
      }});
  auto f = [](const T& x) { return tg::sum(tg::tanh(bad_square(tg::exp(x)))); };  // exp, bad_square, tanh, sum
  auto tape = tg::record(f, A::random_uniform({4}, -1, 1, 5));
  const auto report = tg::check_instructions(tape.tape());
  const tg::InstructionCheck* bad = report.first_failure();
  REQUIRE(bad != nullptr);
  CHECK(bad->instruction == 1);
  CHECK(bad->equation.find("bad_square") != std::string::npos);
  CHECK(bad->max_rel_error == doctest::Approx(1.0 / 3.0).epsilon(1e-4));  // 3x against 2x
  std::size_t failures = 0;
  for (const auto& c : report.instructions) failures += !c.passed;
  CHECK(failures == 1);
  CHECK(report.summary().find("pullback of instruction 1 disagrees with finite differences") != std::string::npos);
}
