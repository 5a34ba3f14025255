// Guards (Note [Guards]): comparisons that C++ control flow depended on while
// recording are checked on every replay, interpreted and compiled; a failed one
// throws or re-records, by policy; never a silently wrong gradient.
#include "support/checks.hpp"

using namespace tgtest;
using T = tg::Tracked<double>;

namespace {

// Two paths, chosen by a guarded comparison.
T two_paths(const T& x) {
  if (tg::any(x > 0.0)) return tg::sum(tg::relu(x) * 3.0);
  return tg::sum(x * x);
}

// A conv whose output decides the path; the relu that follows could be fused
// into the conv in place, which must not hide the guarded pre-activation value.
T conv_path(const T& x, const T& w) {
  auto y = tg::conv(x, w, {.padding = {1}});
  if (tg::all(y < 4.0)) return tg::sum(tg::relu(y));
  return tg::sum(tg::tanh(y));
}

// An element guard, written both ways round.
T element_path(const T& x) {
  if (x.at({0, 1}) > 0.5 && 0.0 < x.at({1, 0})) return tg::sum(x * 2.0);
  return tg::sum(tg::exp(x));
}

A fresh_gradient(const A& x) { return tg::gradient(two_paths, x); }

}  // namespace

TEST_CASE("guards: tg::any records a guard; a replay on the same path gives the fresh gradient") {
  const A x({4}, {-1.0, 2.0, -3.0, 0.5}), x2({4}, {1.5, -2.0, 0.25, -1.0});
  auto tape = tg::record(two_paths, x);
  REQUIRE(tape.tape().guards().size() == 1);
  CHECK(tape.tape().guards()[0].expected);
  CHECK(tg::dump(tape).find("guard 0: any(%0 > 0) is true") != std::string::npos);
  CHECK(max_abs_diff(tape.gradient(x2), fresh_gradient(x2)) == 0.0);
}

TEST_CASE("guards: inputs that take the other path make the replay throw, naming the guard and its site") {
  const A x({3}, {1.0, -1.0, 2.0}), negative({3}, {-1.0, -2.0, -0.5});
  auto tape = tg::record(two_paths, x);
  CHECK_THROWS_WITH_AS(tape.gradient(negative),
                       doctest::Contains("replay: guard 0 (any(%0 > 0)) was true when recorded and is false for these "
                                         "inputs expected the recorded control flow"),
                       tg::Error);
  CHECK_THROWS_WITH_AS(tape.gradient(negative), doctest::Contains("[recorded at test_guards.cpp:13]"), tg::Error);
  // The tape stays usable: a replay on inputs of the recorded path is right again.
  CHECK(max_abs_diff(tape.gradient(x), fresh_gradient(x)) == 0.0);
}

TEST_CASE("guards: GuardPolicy::rerecord records the function again and gives the right gradient") {
  const A x({3}, {1.0, -1.0, 2.0}), negative({3}, {-1.0, -2.0, -0.5});
  auto tape = tg::record(two_paths, x);
  tape.set_needs_grad(0, true);
  tape.set_guard_policy(tg::GuardPolicy::rerecord);
  CHECK(max_abs_diff(tape.gradient(negative), fresh_gradient(negative)) == 0.0);
  CHECK(tape.rerecords() == 1);
  CHECK(tape.tape().guards()[0].expected == false);
  CHECK(max_abs_diff(tape.gradient(negative), fresh_gradient(negative)) == 0.0);  // same path: plain replay
  CHECK(tape.rerecords() == 1);
  CHECK(max_abs_diff(tape.gradient(x), fresh_gradient(x)) == 0.0);
  CHECK(tape.rerecords() == 2);
}

TEST_CASE("guards: shapes are guards too: other shapes are an error, or a re-recording") {
  const A x({3}, {1.0, -1.0, 2.0}), longer({5}, {1.0, 2.0, 3.0, -4.0, 5.0});
  auto tape = tg::record(two_paths, x);
  CHECK_THROWS_WITH_AS(tape.gradient(longer), doctest::Contains("shapes must match on replay"), tg::Error);
  tape.set_guard_policy(tg::GuardPolicy::rerecord);
  CHECK(max_abs_diff(tape.gradient(longer), fresh_gradient(longer)) == 0.0);
  CHECK(tape.rerecords() == 1);
}

TEST_CASE("guards: the needs-grad marks survive a re-recording") {
  auto f = [](const T& x, const T& y) { return tg::any(x > 0.0) ? tg::sum(x * y) : tg::sum(x + y); };
  const A x({2}, {1.0, 2.0}), y({2}, {3.0, 4.0}), negative({2}, {-1.0, -2.0});
  auto tape = tg::record(f, x, y);
  tape.set_needs_grad(0, false);
  tape.set_guard_policy(tg::GuardPolicy::rerecord);
  const auto [gx, gy] = tape.gradient(negative, y);
  CHECK(tape.rerecords() == 1);
  CHECK(max_abs_diff(gx, A({2}, {0.0, 0.0})) == 0.0);  // marked as data: no gradient
  CHECK(max_abs_diff(gy, A({2}, {1.0, 1.0})) == 0.0);
}

TEST_CASE("guards: element guards (x.at) and tg::all against another tracked value") {
  const A x({2, 2}, {0.0, 1.0, 2.0, 3.0});
  auto tape = tg::record(element_path, x);
  REQUIRE(tape.tape().guards().size() == 2);
  CHECK(tg::dump(tape).find("guard 0: %0[1] > 0.5 is true") != std::string::npos);
  CHECK(tg::dump(tape).find("guard 1: %0[2] > 0 is true") != std::string::npos);  // 0 < x  is  x > 0
  CHECK(max_abs_diff(tape.gradient(A({2, 2}, {5.0, 0.75, 1.0, -1.0})), A({2, 2}, {2.0, 2.0, 2.0, 2.0})) == 0.0);
  CHECK_THROWS_WITH_AS(tape.gradient(A({2, 2}, {5.0, 0.25, 1.0, 1.0})), doctest::Contains("guard 0 (%0[1] > 0.5)"),
                       tg::Error);

  auto both = [](const T& a, const T& b) { return tg::all(a >= b) ? tg::sum(a - b) : tg::sum(b - a); };
  auto tape2 = tg::record(both, A({2}, {3.0, 4.0}), A({2}, {1.0, 4.0}));
  CHECK(tg::dump(tape2).find("guard 0: all(%0 >= %1) is true") != std::string::npos);
  CHECK_THROWS_WITH_AS(tape2.gradient(A({2}, {3.0, 4.0}), A({2}, {1.0, 5.0})), doctest::Contains("all(%0 >= %1)"),
                       tg::Error);
}

TEST_CASE("guards: compiled programs check them too, with every subset of passes, and can re-record") {
  const A x = A::random_uniform({1, 1, 5, 5}, -0.5, 0.5, 1), w = A::random_uniform({2, 1, 3, 3}, 0.1, 0.5, 2);
  const A big = A::full({1, 1, 5, 5}, 10.0);  // conv outputs above 4 (9 taps of at least 0.1 x 10): the other path
  auto tape = tg::record(conv_path, x, w);
  for (int bits = 0; bits < 8; ++bits) {
    const tg::CompileOptions options{.dead_code = (bits & 1) != 0, .plan_memory = (bits & 2) != 0,
                                     .fuse_epilogues = (bits & 4) != 0};
    CAPTURE(bits);
    auto ct = tg::compile(tape, options);
    const A x2 = A::random_uniform({1, 1, 5, 5}, -0.5, 0.5, 3);
    const auto [gx, gw] = ct.gradient(x2, w);
    const auto [ex, ew] = tg::gradient(conv_path, x2, w);
    CHECK(max_abs_diff(gx, ex) <= 1e-12);
    CHECK(max_abs_diff(gw, ew) <= 1e-12);
    CHECK_THROWS_WITH_AS(ct.gradient(big, w), doctest::Contains("CompiledTape: guard 0 (all(%"), tg::Error);
    ct.set_guard_policy(tg::GuardPolicy::rerecord);
    const auto [bx, bw] = ct.gradient(big, w);
    const auto [fx, fw] = tg::gradient(conv_path, big, w);
    CHECK(ct.rerecords() == 1);
    CHECK(max_abs_diff(bx, fx) <= 1e-12);
    CHECK(max_abs_diff(bw, fw) <= 1e-12);
  }
  CHECK(tg::dump(tg::compile(tape)).find("guard 0: all(") != std::string::npos);
}

TEST_CASE("guards: reads that bypass them are counted, and the dump warns") {
  const A x({3}, {1.0, 2.0, 3.0});
  auto quiet = tg::record([](const T& v) { return tg::sum(v * double(v.shape()[0])); }, x);  // shape: not a value read
  CHECK(quiet.tape().unguarded_reads() == 0);
  CHECK(tg::dump(quiet).find("warning") == std::string::npos);
  auto reads = tg::record(
      [](const T& v) {
        const double first = v.value().data()[0];  // a branch on this would not be checked on replay
        return first > 0 ? tg::sum(v) : tg::sum(v * 2.0);
      },
      x);
  CHECK(reads.tape().unguarded_reads() == 1);
  CHECK(tg::dump(reads).find("warning: 1 unguarded read(s) of tracked values while recording (first at test_guards.cpp:") !=
        std::string::npos);
}

TEST_CASE("guards: bad arguments are clear errors") {
  const A x({2, 2}, {0.0, 1.0, 2.0, 3.0});
  CHECK_THROWS_WITH_AS(tg::record([](const T& v) { return v.at({2, 0}) > 0.0 ? tg::sum(v) : tg::sum(v); }, x),
                       doctest::Contains("at: index 2 along dimension 0 of shape (2,2) expected 0 <= index < 2"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::record([](const T& v) { return v.at({1}) > 0.0 ? tg::sum(v) : tg::sum(v); }, x),
                       doctest::Contains("at: 1 indices for a value of rank 2 expected one index per dimension"), tg::Error);
  CHECK_THROWS_WITH_AS(
      tg::record([](const T& v) { return tg::any(v > tg::reshape(v, {4})) ? tg::sum(v) : tg::sum(v); }, x),
      doctest::Contains("guard: compares shape (2,2) with shape (4) expected equal shapes or a one-element right side"),
      tg::Error);
  // A function object that cannot be copied is not held: re-recording is refused up front.
  struct Once {
    Once() = default;
    Once(const Once&) = delete;
    Once(Once&&) = default;
    T operator()(const T& v) const { return tg::sum(v); }
  };
  auto tape = tg::record(Once{}, x);
  CHECK_THROWS_WITH_AS(tape.set_guard_policy(tg::GuardPolicy::rerecord),
                       doctest::Contains("GradientTape::set_guard_policy: rerecord without the recorded function"), tg::Error);
}
