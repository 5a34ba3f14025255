// Reliability (issue 22): threads, sizes, numerics and failed replays. Each case
// is one a hostile but ordinary user hit: a crash or a silently wrong answer.
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <atomic>
#include <cstring>
#include <limits>
#include <optional>
#include <thread>
#include <vector>

#include "support/checks.hpp"
#include "tapegrad/kernels/scratch.hpp"

using namespace tgtest;
using T = tg::Tracked<double>;
using F = tg::Array<float>;

// ---- FFT convolutions from several user threads (Note [One FFTW planner lock]) --------

namespace {
// sum(tanh(correlate(img, k))) with the FFT forced, on an image of size n: each
// n gives a new transform grid, so threads plan r2c and c2r transforms at once.
A fft_filter_gradient(std::int64_t n, tg::ConvAlgorithm algorithm) {
  const A img = A::random_uniform({n, n + 1}, -1.0, 1.0, static_cast<std::uint64_t>(n));
  const A k = A::random_uniform({15, 15}, -0.1, 0.1, 7);
  auto f = [&](const T& x) { return tg::sum(tg::tanh(tg::correlate(x, k, {.algorithm = algorithm}))); };
  return tg::gradient(f, img);
}
}  // namespace

TEST_CASE("reliability: FFT convolutions on several user threads plan safely and give the direct answer") {
  constexpr int kThreads = 4, kSizes = 6;
  std::vector<std::vector<A>> got(kThreads);
  std::vector<std::string> errors(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      try {
        // Sizes no other test uses, interleaved between threads: every call plans a new grid.
        for (int i = 0; i < kSizes; ++i) got[t].push_back(fft_filter_gradient(61 + 2 * (i * kThreads + t), tg::ConvAlgorithm::fft));
      } catch (const std::exception& e) {
        errors[t] = e.what();
      }
    });
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) {
    CHECK_MESSAGE(errors[t].empty(), errors[t]);
    REQUIRE(got[t].size() == kSizes);
    for (int i = 0; i < kSizes; ++i) {
      const A direct = fft_filter_gradient(61 + 2 * (i * kThreads + t), tg::ConvAlgorithm::direct);
      CHECK(max_abs_diff(got[t][i], direct) <= 1e-10);
    }
  }
}

// ---- sizes past int64 (Note [Checked sizes]) ---------------------------------------------

TEST_CASE("reliability: shapes whose element or byte counts overflow are errors, never wrapped sizes") {
  const std::int64_t huge = (std::int64_t{1} << 62) + 1;
  // (2^62 + 1) * 4 wraps to 4: it was accepted as a reshape of 4 elements.
  CHECK_THROWS_WITH_AS(A::ones({4}).reshape({huge, 4}), doctest::Contains("has more than 2^59 elements but the input (4)"),
                       tg::Error);
  CHECK_THROWS_WITH_AS(tg::reshape(A::ones({4}), {huge, 4}), doctest::Contains("reshape: target shape (4611686018427387905,4)"),
                       tg::Error);
  CHECK_THROWS_AS(tg::gradient([&](const T& x) { return tg::sum(tg::max(tg::reshape(x, {huge, 4}), tg::Axes{0})); }, A::ones({4})), tg::Error);
  CHECK_THROWS_AS(tg::reshape(A::ones({4}), {huge, -1}), tg::Error);
  // 2^61 doubles are 2^64 bytes, which wrapped to 0.
  CHECK_THROWS_WITH_AS(A::zeros({std::int64_t{1} << 61}), doctest::Contains("Array: shape (2305843009213693952) has more than 2^59"),
                       tg::Error);
  CHECK_THROWS_AS(A::zeros({std::int64_t{1} << 31, std::int64_t{1} << 31, 4}), tg::Error);
  CHECK_THROWS_AS(A::zeros({-1, 2}), tg::Error);
  // Broadcasting two valid shapes into an impossible one.
  const std::int64_t big = std::int64_t{1} << 40;
  CHECK_THROWS_WITH_AS(tg::broadcast_shapes({big, 1}, {1, big}, "add"), doctest::Contains("add: shape (1099511627776,1099511627776)"),
                       tg::Error);
  // Zero-size dims multiply to zero whatever the others are.
  CHECK(tg::bounded_size(tg::Shape{0, std::int64_t{1} << 62, std::int64_t{1} << 62}.dims()) == 0);
  CHECK(A::zeros({0, std::int64_t{1} << 40}).size() == 0);
  // An allocation that fails names the shape (a tg::Error, not a bare std::bad_alloc).
  CHECK_THROWS_WITH_AS(F::zeros({std::int64_t{1} << 50}), doctest::Contains("cannot allocate 4503599627370496 bytes for shape (1125899906842624)"),
                       tg::Error);
  // So does a kernel workspace the system refuses, and the scratch stack stays usable.
  {
    tg::kernels::ScratchScope scope;
    CHECK_THROWS_WITH_AS(scope.take<float>(std::int64_t{1} << 50), doctest::Contains("scratch: cannot allocate 4503599627370496 bytes"),
                         tg::Error);
    // A count whose bytes would wrap around 2^64 is refused, not taken as a small block.
    CHECK_THROWS_WITH_AS(scope.take<double>(std::int64_t{1} << 62), doctest::Contains("scratch: cannot allocate"), tg::Error);
    const std::span<float> small = scope.take_filled<float>(16, 2.0f);
    CHECK(small.size() == 16);
    CHECK(small[15] == 2.0f);
  }
}

// ---- softmax family: the shift comes before the log (Note [Shift before the log]) ------------

TEST_CASE("reliability: softmax, log_softmax and cross_entropy keep log-sum next to a large maximum") {
  // Exact answers for logits [c, c+1, c-1]: softmax[1] = e / (1 + e + 1/e).
  const double e = std::exp(1.0), p1 = e / (1 + e + 1 / e);
  for (const float c : {1e6f, 1e7f, 1.6e7f}) {  // below 2^24: c - 1, c, c + 1 are floats
    CAPTURE(c);
    const F logits({1, 3}, {c, c + 1, c - 1});
    REQUIRE(logits.data()[1] - logits.data()[0] == 1.0f);  // the logits are exact in float
    CHECK(tg::softmax(logits).data()[1] == doctest::Approx(p1).epsilon(1e-6));
    CHECK(tg::log_softmax(logits).data()[1] == doctest::Approx(std::log(p1)).epsilon(1e-6));
    CHECK(tg::cross_entropy(logits, std::vector<std::int64_t>{1}).item() == doctest::Approx(-std::log(p1)).epsilon(1e-6));
    CHECK(tg::logsumexp(logits).item() == doctest::Approx(double(c) + 1 - std::log(p1)).epsilon(1e-7));
  }
  // Double logits of 1e17: log 2 and the gradient (-1/2, 1/2), not 0 and (0, 1).
  const A big({1, 2}, {1e17, 1e17});
  auto loss = [](const T& x) { return tg::cross_entropy(x, std::vector<std::int64_t>{0}); };
  auto [value, g] = tg::value_and_gradient(loss, big);
  CHECK(value == doctest::Approx(std::log(2.0)).epsilon(1e-15));
  CHECK(g.data()[0] == doctest::Approx(-0.5).epsilon(1e-15));
  CHECK(g.data()[1] == doctest::Approx(0.5).epsilon(1e-15));
  // logsumexp's pullback is the softmax, recomputed shifted: (1/2, 1/2), not (1, 1).
  const A glse = tg::gradient([](const T& x) { return tg::sum(tg::logsumexp(x)); }, big);
  CHECK(glse.data()[0] == doctest::Approx(0.5).epsilon(1e-15));
  CHECK(glse.data()[1] == doctest::Approx(0.5).epsilon(1e-15));
  const A gls = tg::gradient([](const T& x) { return tg::sum(tg::log_softmax(x) * A({1, 2}, {1.0, 0.0})); }, big);
  CHECK(gls.data()[0] == doctest::Approx(0.5).epsilon(1e-15));
  CHECK(gls.data()[1] == doctest::Approx(-0.5).epsilon(1e-15));
  // Infinite and NaN lines behave as before: NaN out, no exception.
  const A odd({2, 2}, {std::numeric_limits<double>::quiet_NaN(), 1.0, -std::numeric_limits<double>::infinity(), 0.0});
  const A s = tg::softmax(odd);
  CHECK(std::isnan(s.data()[0]));
  CHECK(std::isnan(s.data()[1]));
  CHECK(s.data()[2] == 0.0);
  CHECK(s.data()[3] == 1.0);
}

// ---- failed replays leave no half-updated tape (Note [Failed replays]) -----------------------

namespace {
T branchy(const T& x, const T& w) {
  if (tg::any(x > 0.0)) return tg::sum(x * w);
  return tg::sum(x * x * w);
}
}  // namespace

TEST_CASE("reliability: a replay that fails on a guard makes the tape unusable until a replay succeeds") {
  const A x({3}, {1.0, 2.0, 3.0}), w({3}, {0.5, -1.0, 2.0}), x_negative({3}, {-1.0, -2.0, -3.0});
  auto tape = tg::record(branchy, x, w);
  CHECK_THROWS_WITH_AS(tape.gradient(x_negative, w), doctest::Contains("guard 0"), tg::Error);
  // The tape holds x_negative's values on the recorded (positive) branch: no gradient, no output from it.
  CHECK_THROWS_WITH_AS(tape.gradient(), doctest::Contains("last replay failed (replay: guard 0"), tg::Error);
  CHECK_THROWS_WITH_AS((void)tape.output(), doctest::Contains("last replay failed"), tg::Error);
  CHECK_THROWS_WITH_AS(tape.vjp(A::ones({})), doctest::Contains("last replay failed"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::compile(tape), doctest::Contains("compile: the tape's last replay failed"), tg::Error);
  // A successful replay makes it usable again, with the right answer.
  const A x2({3}, {2.0, 1.0, 0.5});
  auto [gx, gw] = tape.gradient(x2, w);
  CHECK(max_abs_diff(gx, w) == 0.0);
  CHECK(max_abs_diff(gw, x2) == 0.0);
  CHECK(tape.value() == doctest::Approx(1.0 - 1.0 + 1.0));

  auto ct = tg::compile(tape);
  CHECK_THROWS_WITH_AS(ct.gradient(x_negative, w), doctest::Contains("guard 0"), tg::Error);
  CHECK_THROWS_WITH_AS((void)ct.output(), doctest::Contains("compiled tape's last replay failed"), tg::Error);
  CHECK_THROWS_WITH_AS(ct.program().reverse_ones(), doctest::Contains("last replay failed"), tg::Error);
  auto [cgx, cgw] = ct.gradient(x, w);
  CHECK(max_abs_diff(cgx, w) == 0.0);
  CHECK(max_abs_diff(cgw, x) == 0.0);
}

TEST_CASE("reliability: a replay whose op fails, or whose later input has the wrong shape, changes nothing usable") {
  const A x({3}, {1.0, 2.0, 3.0}), w({3}, {0.5, -1.0, 2.0});
  auto tape = tg::record(branchy, x, w);
  const A recorded_gx = std::get<0>(tape.gradient());
  // Input 1 has the wrong shape: input 0 must not have been replaced.
  CHECK_THROWS_WITH_AS(tape.gradient(A({3}, {4.0, 5.0, 6.0}), A::ones({4})), doctest::Contains("input 1 has shape (4)"), tg::Error);
  CHECK(max_abs_diff(tape.tape().value(tape.tape().inputs()[0]), x) == 0.0);
  CHECK(max_abs_diff(std::get<0>(tape.gradient()), recorded_gx) == 0.0);
  auto ct = tg::compile(tape);
  CHECK_THROWS_WITH_AS(ct.gradient(A({3}, {4.0, 5.0, 6.0}), A::ones({4})), doctest::Contains("input 1 has shape (4)"), tg::Error);
  CHECK(max_abs_diff(ct.program().value(ct.program().inputs()[0]), x) == 0.0);
  CHECK(ct.value() == doctest::Approx(0.5 - 2.0 + 6.0));

  // An op that fails on the new values (a label out of range) leaves the tape marked.
  const A logits = A::random_uniform({2, 3}, -1.0, 1.0, 3), labels({2}, {0.0, 2.0});
  auto ce = tg::record([](const T& z, const T& l) { return tg::cross_entropy(z, l); }, logits, labels);
  CHECK_THROWS_WITH_AS(ce.gradient(logits, A({2}, {0.0, 7.0})), doctest::Contains("label (7)"), tg::Error);
  CHECK_THROWS_WITH_AS(ce.gradient(), doctest::Contains("last replay failed (cross_entropy: label (7)"), tg::Error);
  CHECK_NOTHROW(ce.gradient(logits, labels));
  CHECK(ce.tape().usable());
}

// ---- one replay of a tape at a time (Note [One replay at a time]) ----------------------------

TEST_CASE("reliability: a tape replayed from a second thread meanwhile is an error, never a mixed gradient") {
  const A x = A::random_uniform({64}, -1.0, 1.0, 1), w = A::random_uniform({64}, -1.0, 1.0, 2);
  auto f = [](const T& a, const T& b) { return tg::sum(tg::tanh(a * b) * a); };
  auto tape = tg::record(f, x, w);
  auto ct = tg::compile(tape);
  // Deterministic: this thread holds the tape; another thread's replay is refused.
  auto error_on_another_thread = [](auto replay) {
    std::string message;
    std::thread([&] {
      try {
        replay();
      } catch (const tg::Error& e) {
        message = e.what();
      }
    }).join();
    return message;
  };
  {
    auto held = tape.tape().replay_guard("test");
    const std::string message = error_on_another_thread([&] { tape.gradient(x, w); });
    CHECK(message.find("the tape is being replayed by another thread") != std::string::npos);
    CHECK(message.find("give each thread its own tape") != std::string::npos);
    CHECK_NOTHROW(tape.gradient(x, w));  // the holding thread may replay (re-entrant)
  }
  {
    auto held = ct.program().replay_guard("test");
    CHECK(error_on_another_thread([&] { ct.gradient(x, w); }).find("being replayed by another thread") != std::string::npos);
  }
  // Racing: every call either is refused or returns the exact gradient of its own inputs.
  const A x2 = A::random_uniform({64}, -1.0, 1.0, 3);
  const auto want1 = tg::gradient(f, x, w), want2 = tg::gradient(f, x2, w);
  std::atomic<int> wrong{0}, refused{0}, done{0};
  auto hammer = [&](const A& in, const A& want, bool compiled) {
    for (int i = 0; i < 200; ++i) {
      try {
        const A g = compiled ? std::get<0>(ct.gradient(in, w)) : std::get<0>(tape.gradient(in, w));
        if (max_abs_diff(g, want) != 0.0) ++wrong;
        ++done;
      } catch (const tg::Error& e) {
        if (std::string(e.what()).find("another thread") == std::string::npos) ++wrong;
        ++refused;
      }
    }
  };
  for (const bool compiled : {false, true}) {
    std::thread a(hammer, std::cref(x), std::cref(std::get<0>(want1)), compiled);
    std::thread b(hammer, std::cref(x2), std::cref(std::get<0>(want2)), compiled);
    a.join();
    b.join();
  }
  CHECK(wrong == 0);
  CHECK(done + refused == 800);
  MESSAGE("replays done ", done.load(), ", refused ", refused.load());
}

TEST_CASE("reliability: independent tapes recorded and replayed on several threads at once agree with one thread") {
  // A conv and OpenBLAS GEMMs (a matmul large enough to be split over threads) on every thread at once.
  const A w = A::random_uniform({3, 2, 3, 3}, -0.5, 0.5, 4), m = A::random_uniform({243, 300}, -0.1, 0.1, 5);
  auto f = [&](const T& x) {
    const T h = tg::relu(tg::conv(x, tg::constant(w), {.padding = {1, 1}}));  // (2, 3, 9, 9)
    return tg::sum(tg::tanh(tg::matmul(tg::reshape(h, {2, 243}), tg::constant(m))));
  };
  std::vector<A> inputs, want, got(4);
  for (int t = 0; t < 4; ++t) {
    inputs.push_back(A::random_uniform({2, 2, 9, 9}, -1.0, 1.0, 10 + t));
    want.push_back(tg::gradient(f, inputs.back()));
  }
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      auto tape = tg::record(f, inputs[t]);
      for (int i = 0; i < 20; ++i) got[t] = tape.gradient(inputs[t]);
    });
  for (auto& th : threads) th.join();
  for (int t = 0; t < 4; ++t) CHECK(max_abs_diff(got[t], want[t]) == 0.0);
}

// ---- handles that outlive their tape (Note [Tape identity]) -------------------------------

TEST_CASE("reliability: a Tracked kept from a destroyed tape is an error, even where a new tape reuses its address") {
  const A x({3}, {1.0, 2.0, 3.0});
  std::optional<T> kept;
  tg::gradient([&](const T& v) {
    kept = tg::exp(v);  // slot 1 of a tape that dies with this call
    return tg::sum(v);
  }, x);
  REQUIRE(kept);
  CHECK_THROWS_WITH_AS((void)kept->shape(), doctest::Contains("Tracked: value %1 belongs to a tape (generation"), tg::Error);
  for (int i = 0; i < 4; ++i)  // new tapes of the same size: the allocator hands back the dead tape's address
    CHECK_THROWS_WITH_AS(tg::gradient([&](const T& v) { return tg::sum(v + *kept); }, x), doctest::Contains("no longer exists"),
                         tg::Error);
  // A copied tape is another tape: handles of the original do not work on it, and the copy replays on its own.
  auto tape = tg::record([](const T& v) { return tg::sum(v * v); }, x);
  tg::Tape<double> copy = tape.tape();
  CHECK(copy.generation() != tape.tape().generation());
  copy.forward();
  copy.reverse(A::ones({}));
  CHECK(max_abs_diff(copy.adjoint(copy.inputs()[0]), A({3}, {2.0, 4.0, 6.0})) == 0.0);
}

// ---- smaller silent cases -------------------------------------------------------------------

TEST_CASE("reliability: slice with a huge step takes one element, not none") {
  const A x = A::iota({4, 2});
  const std::int64_t step = std::numeric_limits<std::int64_t>::max();
  const A s = tg::slice(x, 0, 0, 4, step);
  CHECK(s.shape() == tg::Shape{1, 2});
  CHECK(max_abs_diff(s, A({1, 2}, {0.0, 1.0})) == 0.0);
  CHECK(tg::slice(x, 1, 1, 2, step).shape() == tg::Shape{4, 1});
  CHECK(tg::slice(x, 0, 2, 2, step).shape() == tg::Shape{0, 2});
  const A g = tg::gradient([&](const T& v) { return tg::sum(tg::slice(v, 0, 0, 4, step) * 3.0); }, x);
  CHECK(max_abs_diff(g, A({4, 2}, {3, 3, 0, 0, 0, 0, 0, 0})) == 0.0);
}

TEST_CASE("reliability: maxpool's ceil_mode with a huge stride keeps its first window") {
  const A x = A::iota({1, 1, 5, 5});
  for (const std::int64_t huge : {std::numeric_limits<std::int64_t>::max(), std::numeric_limits<std::int64_t>::max() / 2}) {
    const A y = tg::maxpool(x, {.window = {2}, .stride = {huge}, .ceil_mode = true});
    CHECK(y.shape() == tg::Shape{1, 1, 1, 1});
    CHECK(y.item() == 6.0);
  }
  // PyTorch's sizes: 5 with window 2, stride 4: floor 1, ceil 2 (the last window starts at 4 < 5).
  CHECK(tg::maxpool(x, {.window = {2}, .stride = {4}, .ceil_mode = true}).shape() == tg::Shape{1, 1, 2, 2});
  CHECK(tg::maxpool(x, {.window = {2}, .stride = {4}}).shape() == tg::Shape{1, 1, 1, 1});
  // window 3, stride 2, padding 1 on 5: ceil gives 3 (a window starting at 4 + 1 = 5 would start in the high padding).
  CHECK(tg::maxpool(x, {.window = {3}, .stride = {2}, .padding = {1}, .ceil_mode = true}).shape() == tg::Shape{1, 1, 3, 3});
  CHECK(tg::maxpool(A::iota({1, 1, 6, 6}), {.window = {3}, .stride = {2}, .padding = {1}, .ceil_mode = true}).shape() ==
        tg::Shape{1, 1, 4, 4});
}

TEST_CASE("reliability: values outside an op's domain are errors, not silently ignored") {
  const A x = A::random_uniform({1, 2, 6, 6}, -1.0, 1.0, 5), w = A::random_uniform({3, 2, 3, 3}, -1.0, 1.0, 6);
  CHECK_THROWS_WITH_AS(tg::lppool(x, {.window = {2}, .p = std::numeric_limits<double>::infinity()}),
                       doctest::Contains("lppool: p is inf expected a finite p > 0"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::lppool(x, {.window = {2}, .p = std::numeric_limits<double>::quiet_NaN()}), doctest::Contains("p is nan"),
                       tg::Error);
  CHECK_THROWS_WITH_AS(tg::conv(x, w, {.algorithm = static_cast<tg::ConvAlgorithm>(42)}),
                       doctest::Contains("conv: algorithm (42) is not a ConvAlgorithm"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::conv(x, w, {.backward_weight_algorithm = static_cast<tg::ConvAlgorithm>(-1)}),
                       doctest::Contains("is not a ConvAlgorithm"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::conv(x, w, {.output_padding = {1, 1}}), doctest::Contains("conv: output_padding [1,1] on a conv"), tg::Error);
  CHECK_NOTHROW(tg::conv(x, w, {.output_padding = {0}}));
  const A img = A::random_uniform({7, 7}, -1.0, 1.0, 7), k = A::ones({3, 3});
  CHECK_THROWS_WITH_AS(tg::correlate(img, k, {.border = {static_cast<tg::BorderMode>(99), 0.0}}),
                       doctest::Contains("correlate: border mode (99) is not a BorderMode"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::correlate(img, k, {.output = static_cast<tg::Output>(7)}), doctest::Contains("output (7) is not an Output"),
                       tg::Error);
  CHECK_THROWS_WITH_AS(tg::correlate(img, k, {.algorithm = static_cast<tg::ConvAlgorithm>(9)}), doctest::Contains("algorithm (9)"),
                       tg::Error);
}

TEST_CASE("reliability: set_num_threads applies to every thread, running or started later") {
  const int before = tg::max_threads();
  std::atomic<bool> changed{false};
  int seen_running = 0, seen_new = 0;
  std::thread running([&] {
    while (!changed) std::this_thread::yield();
    seen_running = tg::num_threads();
  });
  tg::set_num_threads(before == 1 ? 2 : 1);
  changed = true;
  running.join();
  std::thread([&] { seen_new = tg::num_threads(); }).join();
  CHECK(seen_running == (before == 1 ? 2 : 1));
  CHECK(seen_new == (before == 1 ? 2 : 1));
  // Kernels on another thread follow it: an FFT conv gives the same gradient (its regions size their teams by it).
  const A img = A::random_uniform({40, 41}, -1.0, 1.0, 8), k = A::random_uniform({15, 15}, -1.0, 1.0, 9);
  auto f = [&](const T& v) { return tg::sum(tg::correlate(v, k, {.algorithm = tg::ConvAlgorithm::fft})); };
  A on_thread;
  std::thread([&] { on_thread = tg::gradient(f, img); }).join();
  tg::set_num_threads(before);
  CHECK(max_abs_diff(on_thread, tg::gradient(f, img)) <= 1e-12);
}

TEST_CASE("reliability: max and min of arrays holding NaN give NaN and split the adjoint among the NaNs (PyTorch)") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const A x({4}, {1.0, nan, 3.0, nan});
  CHECK(std::isnan(tg::max(x).item()));
  CHECK(std::isnan(tg::min(x).item()));
  for (const bool is_max : {true, false}) {
    const A g = tg::gradient([&](const T& v) { return is_max ? tg::max(v) : tg::min(v); }, x);
    CHECK(max_abs_diff(g, A({4}, {0.0, 0.5, 0.0, 0.5})) == 0.0);
  }
  const A rows({2, 3}, {1.0, nan, 2.0, 4.0, 5.0, 5.0});
  const A g = tg::gradient([&](const T& v) { return tg::sum(tg::max(v, tg::Axes{1})); }, rows);
  CHECK(max_abs_diff(g, A({2, 3}, {0.0, 1.0, 0.0, 0.0, 0.5, 0.5})) == 0.0);
}

// Note [Threads on a busy machine]: the rule, then the gauge against a real
// competing process.
TEST_CASE("reliability: the thread count in use is the ceiling less the cores other programs keep busy") {
  using tg::kernels::threads_for_load;
  CHECK(threads_for_load(2, 2, 0.0) == 2);
  CHECK(threads_for_load(2, 2, 0.3) == 2);  // background noise takes no core
  CHECK(threads_for_load(2, 2, 0.5) == 1);  // from 0.4 of a core on, it is taken
  CHECK(threads_for_load(2, 2, 1.0) == 1);
  CHECK(threads_for_load(2, 2, 3.5) == 1);  // never fewer than one
  CHECK(threads_for_load(4, 8, 2.0) == 4);  // free cores enough for the ceiling
  CHECK(threads_for_load(8, 8, 2.0) == 6);
  CHECK(threads_for_load(3, 2, 0.0) == 3);  // an idle machine keeps the ceiling, even above the cores
  CHECK(threads_for_load(3, 2, 1.0) == 1);
  CHECK(threads_for_load(2, 0, 5.0) == 2);  // no reading of /proc/stat: the ceiling
}

TEST_CASE("reliability: a competing CPU-bound process lowers the thread count in use; switched off, the ceiling stays") {
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  REQUIRE(sched_getaffinity(0, sizeof allowed, &allowed) == 0);
  const int cores = CPU_COUNT(&allowed);
  if (cores < 2) return;  // one CPU: there is nothing to lower
  const int before = tg::max_threads();
  const bool dynamic_before = tg::dynamic_threads();
  tg::set_num_threads(cores);
  tg::set_dynamic_threads(true);
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    volatile unsigned long spin = 0;
    while (true) spin = spin + 1;
  }
  // The gauge measures windows of 250 ms; give it up to 3 s.
  int lowest = cores;
  double load = 0;
  const auto start = std::chrono::steady_clock::now();
  while (lowest == cores && std::chrono::steady_clock::now() - start < std::chrono::seconds(3)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    lowest = std::min(lowest, tg::num_threads());
    load = std::max(load, tg::kernels::other_load());
  }
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  CAPTURE(load);
  CHECK(load >= 0.4);
  CHECK(lowest >= 1);
  CHECK(lowest < cores);
  CHECK(tg::max_threads() == cores);  // the ceiling is not moved
  tg::set_dynamic_threads(false);
  CHECK(tg::num_threads() == cores);
  tg::set_dynamic_threads(dynamic_before);
  tg::set_num_threads(before);
}

// README, "Threads and determinism": bit-identical results at a fixed thread
// count; the kernels without per-thread partial sums also across thread counts.
TEST_CASE("reliability: gradients repeat bit for bit at a fixed thread count, and across counts where the README says so") {
  const int before = tg::max_threads();
  const A x = A::random_uniform({8, 4, 16, 16}, -1, 1, 1), w = A::random_uniform({6, 4, 5, 5}, -1, 1, 2);
  auto bits_equal = [](const A& a, const A& b) { return std::memcmp(a.data(), b.data(), sizeof(double) * a.size()) == 0; };
  for (const auto algorithm : {tg::ConvAlgorithm::direct, tg::ConvAlgorithm::im2col, tg::ConvAlgorithm::implicit_gemm,
                               tg::ConvAlgorithm::winograd, tg::ConvAlgorithm::fft}) {
    CAPTURE(tg::kernels::to_string(algorithm));
    auto f = [&](const T& a, const T& b) {
      auto y = tg::maxpool(tg::relu(tg::conv(a, b, {.padding = {2}, .algorithm = algorithm})), {.window = {2}});
      return tg::cross_entropy(tg::reshape(y, {8, -1}), std::vector<std::int64_t>(8, 1)) + tg::sum(tg::meanpool(a, {.window = {3}}));
    };
    std::vector<std::array<A, 2>> runs;
    for (const int threads : {1, 1, 2, 2}) {
      tg::set_num_threads(threads);
      auto [gx, gw] = tg::gradient(f, x, w);
      runs.push_back({gx, gw});
    }
    for (int k = 0; k < 2; ++k) {
      CHECK(bits_equal(runs[0][k], runs[1][k]));  // 1 thread, twice
      CHECK(bits_equal(runs[2][k], runs[3][k]));  // 2 threads, twice
      // im2col's weight gradient sums per-thread partials: equal to rounding only.
      if (algorithm != tg::ConvAlgorithm::im2col) CHECK(bits_equal(runs[0][k], runs[2][k]));
      else CHECK(max_abs_diff(runs[0][k], runs[2][k]) <= 1e-12 * std::max(1.0, max_abs(runs[0][k])));
    }
  }
  tg::set_num_threads(before);
}

TEST_CASE("reliability: conv_transpose with a huge stride or dilation is an error, not a wrapped size") {
  const A x = A::ones({1, 1, 3, 3}), w = A::ones({1, 1, 2, 2});
  const std::int64_t huge = std::int64_t{1} << 62;
  CHECK_THROWS_WITH_AS(tg::conv_transpose(x, w, {.stride = {huge}}), doctest::Contains("conv_transpose: output size along spatial dim 0"),
                       tg::Error);
  CHECK_THROWS_WITH_AS(tg::conv_transpose(x, w, {.dilation = {huge}}), doctest::Contains("is more than 2^59"), tg::Error);
  CHECK(tg::conv_transpose(x, w, {.stride = {2}}).shape() == tg::Shape{1, 1, 6, 6});
}

// Issue 17, item 7 (Note [Values by value]): x.shape() read in the same
// expression that records more ops used to return a reference into the tape's
// vector of values, which recording moved ("reshape: target shape () ...").
TEST_CASE("reliability: shapes and values read from a Tracked stay valid while the function records more ops") {
  const A x = A::random_uniform({2, 6, 4, 5}, -1, 1, 1);
  auto f = [](const T& v) {
    const T d = tg::reshape(v, {48, 5});
    return tg::sum(tg::reshape(tg::tanh(tg::tanh(tg::tanh(tg::tanh(d)))) * 2.0 + 1.0, v.shape()) * v);
  };
  auto [value, g] = tg::value_and_gradient(f, x);
  A expected_value = tg::sum((tg::tanh(tg::tanh(tg::tanh(tg::tanh(x)))) * 2.0 + 1.0) * x);
  CHECK(value == doctest::Approx(expected_value.item()).epsilon(1e-12));
  CHECK(g.shape() == x.shape());
  const A seen = [&] {
    A out;
    tg::gradient([&](const T& v) {
      const A before = v.value();
      T y = v;
      for (int i = 0; i < 100; ++i) y = y * 1.0;  // moves the tape's storage many times
      out = before;
      return tg::sum(y);
    }, x);
    return out;
  }();
  CHECK(max_abs_diff(seen, x) == 0.0);
}

// A fill value passed as an input to a filter that extends nothing (output
// valid) gets a zero gradient; its pullback used to write the image's adjoint
// through a null pointer when only the fill value needed one.
TEST_CASE("reliability: a filter's fill value with nothing extended, alone in needing a gradient, gets zero") {
  const A img = A::random_uniform({5, 5}, -1, 1, 1), k = A::random_uniform({3, 3}, -1, 1, 2);
  const A g = tg::gradient([&](const T& fill) { return tg::sum(tg::correlate(tg::constant(img), tg::constant(k), fill, {.output = tg::Output::valid})); },
                           A({1}, {0.5}));
  CHECK(g.data()[0] == 0.0);
  // Extended (output same), the output is affine in the fill value: its gradient is the change per unit of fill.
  const A gs = tg::gradient([&](const T& fill) { return tg::sum(tg::correlate(tg::constant(img), tg::constant(k), fill)); }, A({1}, {0.5}));
  const double per_unit = tg::sum(tg::correlate(img, k, {.border = tg::Border::fill(1)})).item() - tg::sum(tg::correlate(img, k)).item();
  CHECK(gs.data()[0] == doctest::Approx(per_unit).epsilon(1e-12));
}
