// The user API: gradient, value_and_gradient, jacobian, record/replay, dump,
// custom ops, gradcheck, and the errors of the API itself.
#include "support/checks.hpp"

using namespace tgtest;
using T = tg::Tracked<double>;

namespace {
// The seed case: f(x, w) = sum(x @ w) style model, small.
tg::Tracked<double> model(const T& x, const T& w) { return tg::sum(tg::tanh(tg::matmul(x, w))); }
}  // namespace

TEST_CASE("gradient: one input gives an Array, several a tuple; generic lambdas work") {
  const A x = A::random_uniform({3, 4}, -1, 1, 1), w = A::random_uniform({4, 2}, -1, 1, 2);
  A g = tg::gradient([](const auto& v) { return tg::sum(v * v); }, x);
  CHECK(max_abs_diff(g, 2.0 * x) < 1e-15);
  auto [gx, gw] = tg::gradient(model, x, w);
  CHECK(gx.shape() == x.shape());
  CHECK(gw.shape() == w.shape());
  auto [v, gx1, gw1] = tg::value_and_gradient(model, x, w);
  CHECK(v == doctest::Approx(tg::sum(tg::tanh(tg::matmul(x, w))).item()));
  CHECK(max_abs_diff(gx, gx1) == 0);
  CHECK(max_abs_diff(gw, gw1) == 0);
  auto [v1, g1] = tg::value_and_gradient([](const T& a) { return tg::sum(a); }, x);
  CHECK(v1 == doctest::Approx(tg::sum(x).item()));
  CHECK(max_abs_diff(g1, A::ones({3, 4})) == 0);
}

TEST_CASE("gradient: float works too") {
  const tg::Array<float> x({3}, {1, 2, 3});
  auto g = tg::gradient([](const tg::Tracked<float>& v) { return tg::sum(v * v * 0.5f); }, x);
  CHECK(g(2) == 3.0f);
}

TEST_CASE("jacobian: shape (outputs, inputs) and values") {
  const A x({3}, {1, 2, 3});
  const A J = tg::jacobian([](const T& v) { return v * v; }, x);
  CHECK(J.shape() == tg::Shape{3, 3});
  CHECK(max_abs_diff(J, A({3, 3}, {2, 0, 0, 0, 4, 0, 0, 0, 6})) == 0);
  const A W = A::random_uniform({2, 3}, -1, 1, 1);
  auto [Jw, Jx] = tg::jacobian([](const T& w, const T& v) { return tg::matmul(w, tg::reshape(v, {3, 1})); }, W, x);
  CHECK(Jw.shape() == tg::Shape{2, 6});
  CHECK(max_abs_diff(Jx, W) < 1e-15);  // d(Wx)/dx = W
}

TEST_CASE("record: replay on new inputs gives new gradients without re-recording") {
  const A x = A::random_uniform({3, 4}, -1, 1, 1), w = A::random_uniform({4, 2}, -1, 1, 2);
  const A x2 = A::random_uniform({3, 4}, -1, 1, 3), w2 = A::random_uniform({4, 2}, -1, 1, 4);
  auto tape = tg::record(model, x, w);
  const std::size_t n = tape.tape().num_instructions();
  auto [gx2, gw2] = tape.gradient(x2, w2);
  CHECK(tape.tape().num_instructions() == n);
  auto [ex, ew] = tg::gradient(model, x2, w2);
  CHECK(max_abs_diff(gx2, ex) == 0);
  CHECK(max_abs_diff(gw2, ew) == 0);
  CHECK(tape.value() == doctest::Approx(tg::sum(tg::tanh(tg::matmul(x2, w2))).item()));
}

TEST_CASE("record: gradient_into writes into caller-owned arrays") {
  const A x = A::random_uniform({3, 4}, -1, 1, 1), w = A::random_uniform({4, 2}, -1, 1, 2);
  auto tape = tg::record(model, x, w);
  A gx({3, 4}), gw({4, 2});
  const double* storage = gx.data();
  tape.gradient_into({&gx, &gw}, x, w);
  CHECK(gx.data() == storage);  // no new allocation
  auto [ex, ew] = tg::gradient(model, x, w);
  CHECK(max_abs_diff(gx, ex) == 0);
  CHECK(max_abs_diff(gw, ew) == 0);
}

TEST_CASE("record: an input that does not reach the output has a zero gradient") {
  auto [ga, gb] = tg::gradient([](const T& a, const T&) { return tg::sum(a); }, A::ones({2}), A::ones({3}));
  CHECK(max_abs_diff(gb, A::zeros({3})) == 0);
  CHECK(max_abs_diff(ga, A::ones({2})) == 0);
}

TEST_CASE("record: inputs marked as data get no gradient and their pullbacks do not run") {
  const A x = A::random_uniform({3, 4}, -1, 1, 1), w = A::random_uniform({4, 2}, -1, 1, 2);
  auto both = [](const T& a, const T& b) { return tg::sum(tg::tanh(a)) + model(a, b); };
  auto tape = tg::record(both, x, w);
  const auto [ex, ew] = tape.gradient();
  tape.set_needs_grad(0, false);
  tg::TapeProfile profile;
  tape.tape().set_profile(&profile);
  const auto [gx, gw] = tape.gradient();
  CHECK(max_abs_diff(gx, A::zeros({3, 4})) == 0);
  CHECK(max_abs_diff(gw, ew) == 0);
  // tanh(x) depends on x alone: its output needs no gradient, so its pullback never ran.
  const auto& t = tape.tape();
  std::size_t tanh_of_x = 0;
  while (!(t.instruction(tanh_of_x).op->name == "tanh" && t.args_of(t.instruction(tanh_of_x))[0] == t.inputs()[0]))
    ++tanh_of_x;
  CHECK_FALSE(t.needs_grad(t.instruction(tanh_of_x).out));
  CHECK(profile.pullback_seconds[tanh_of_x] == 0);
  CHECK(profile.reverse_passes == 1);
  CHECK(profile.forward_passes == 0);  // gradient() at the recorded values runs no forward pass
  // gradient_into skips a nullptr entry; the mask can be switched back on.
  A gw2;
  tape.gradient_into({nullptr, &gw2}, x, w);
  CHECK(max_abs_diff(gw2, ew) == 0);
  CHECK(profile.forward_passes == 1);
  tape.set_needs_grad(0, true);
  CHECK(max_abs_diff(std::get<0>(tape.gradient()), ex) == 0);
  CHECK_THROWS_WITH_AS(tape.set_needs_grad(2, false), doctest::Contains("input index (2) out of range"), tg::Error);
}

TEST_CASE("dump_profile: per-instruction times, slowest first, with shares") {
  auto tape = tg::record(model, A::random_uniform({64, 64}, -1, 1, 1), A::random_uniform({64, 64}, -1, 1, 2));
  tg::TapeProfile profile;
  tape.tape().set_profile(&profile);
  for (int i = 0; i < 3; ++i) tape.gradient(A::random_uniform({64, 64}, -1, 1, 3), A::random_uniform({64, 64}, -1, 1, 4));
  CHECK(profile.forward_passes == 3);
  CHECK(profile.reverse_passes == 3);
  REQUIRE(profile.forward_seconds.size() == 3);
  for (double s : profile.forward_seconds) CHECK(s > 0);
  const std::string text = tg::dump_profile(tape.tape(), profile);
  CHECK(text.find("profile over 3 forward and 3 reverse passes") != std::string::npos);
  CHECK(text.find("%2:f64[64,64] = matmul %0 %1") != std::string::npos);
  CHECK(text.find("# test_api.cpp:10") != std::string::npos);  // model's line
  CHECK(text.find("%") != std::string::npos);
}

TEST_CASE("dump: one typed equation per instruction with its recording site") {
  auto tape = tg::record([](const T& x, const T& w) { return tg::sum(tg::matmul(x, w), {1}); }, A::ones({2, 3}), A::ones({3, 4}));
  const std::string text = tg::dump(tape);
  CHECK(text.find("%0:f64[2,3] = input 0") != std::string::npos);
  CHECK(text.find("%2:f64[2,4] = matmul %0 %1") != std::string::npos);
  CHECK(text.find("%3:f64[2] = sum[axes=[1]] %2") != std::string::npos);
  CHECK(text.find("# test_api.cpp:") != std::string::npos);
  CHECK(text.find("output %3") != std::string::npos);
  auto ft = tg::record([](const tg::Tracked<float>& v) { return v + 1.0f; }, tg::Array<float>::ones({2}));
  CHECK(tg::dump(ft).find("%1:f32[] = const 1") != std::string::npos);
}

TEST_CASE("operators record the user's line") {
  auto tape = tg::record([](const T& x) { return x * 2.0; }, A::ones({2}));
  const int line = __LINE__ - 1;
  CHECK(tg::site_string(tape.tape().instruction(0).where) == fmt::format("test_api.cpp:{}", line));
}

// A user op: y = x^3 with a hand-written pullback.
TEST_CASE("custom ops: record, replay, dump and gradient-check like a built-in") {
  static const auto cube = tg::register_op<double>({
      .name = "cube",
      .forward = [](const tg::InputList<double>& in) { return in[0] * in[0] * in[0]; },
      .pullback = [](const tg::InputList<double>& in, const A&, const A& dy) { return std::vector<A>{3.0 * in[0] * in[0] * dy}; },
  });
  const A x = A::random_uniform({3, 4}, -1, 1, 1), x2 = A::random_uniform({3, 4}, -1, 1, 2);
  check_op([](const T& v) { return cube(v); }, std::tuple{x}, std::tuple{x2});
  check_dot_product([](const T& v) { return cube(v); }, A::random_uniform({32, 32}, -1, 1, 3));
  auto tape = tg::record([](const T& v) { return tg::sum(cube(v)); }, x);
  CHECK(tg::dump(tape).find("= cube %0") != std::string::npos);
  CHECK(max_abs_diff(cube.evaluate(x), x * x * x) == 0);

  static const auto wrong = tg::register_op<double>({
      .name = "wrong_shape_grad",
      .forward = [](const tg::InputList<double>& in) { return in[0]; },
      .pullback = [](const tg::InputList<double>&, const A&, const A&) { return std::vector<A>{A::ones({1})}; },
  });
  CHECK_THROWS_WITH_AS(tg::gradient([](const T& v) { return tg::sum(wrong(v)); }, x),
                       doctest::Contains("wrong_shape_grad: pullback gradient 0 has shape (1)"), tg::Error);
}

TEST_CASE("custom ops: a name already registered is an error naming both sites, and the registry is unchanged") {
  const auto spec = [](std::string name) {
    return tg::CustomOpSpec<double>{
        .name = std::move(name),
        .forward = [](const tg::InputList<double>& in) { return in[0]; },
        .pullback = [](const tg::InputList<double>&, const A&, const A& dy) { return std::vector<A>{dy}; }};
  };
  const std::size_t rows = tg::Registry<double>::size();
  // A built-in name (a custom "relu" used to be silently shadowed when a tape was loaded).
  CHECK_THROWS_WITH_AS(tg::register_op<double>(spec("relu")),
                       doctest::Contains("register op: op name 'relu' is already registered (at unary.cpp:"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::register_op<double>(spec("relu")), doctest::Contains("a built-in op; again at test_api.cpp:"),
                       tg::Error);
  // Two custom ops of one name: the message names both lines.
  static const auto first = tg::register_op<double>(spec("api_twice"));
  const int first_line = __LINE__ - 1;
  const int second_line = __LINE__ + 2;
  try {
    tg::register_op<double>(spec("api_twice"));
    FAIL("expected a tg::Error");
  } catch (const tg::Error& e) {
    CHECK(std::string(e.what()) ==
          fmt::format("register op: op name 'api_twice' is already registered (at test_api.cpp:{}, a custom op; again at "
                      "test_api.cpp:{}) names must be unique, since tape files find ops by name; hint: give the op "
                      "registered at test_api.cpp:{} another name",
                      first_line, second_line, second_line));
  }
  CHECK(tg::Registry<double>::size() == rows + 1);
  CHECK(tg::Registry<double>::find("relu")->builtin);
  CHECK(&first.info() == tg::Registry<double>::find("api_twice"));
  // Names are per element type: a float op may take a name only double has.
  CHECK_NOTHROW(tg::register_op<float>({.name = "api_twice",
                                         .forward = [](const tg::InputList<float>& in) { return in[0]; },
                                         .pullback = [](const tg::InputList<float>&, const tg::Array<float>&,
                                                        const tg::Array<float>& dy) { return std::vector{dy}; }}));
}

TEST_CASE("op tables: a built-in row appearing after start-up (a family missing from TG_OP_FAMILIES) is an error") {
  tg::OpInfo<double> row;
  row.name = "api_unlisted_builtin";
  row.builtin = true;
  CHECK_THROWS_WITH_AS(tg::Registry<double>::add(std::move(row)),
                       doctest::Contains("built-in op 'api_unlisted_builtin' (test_api.cpp:"), tg::Error);
  CHECK(tg::Registry<double>::find("api_unlisted_builtin") == nullptr);
}

TEST_CASE("gradcheck: passes a right gradient and catches a wrong one") {
  static const auto bad = tg::register_op<double>({
      .name = "bad_sin",
      .forward = [](const tg::InputList<double>& in) { return tg::tanh(in[0]); },
      .pullback = [](const tg::InputList<double>&, const A&, const A& dy) { return std::vector<A>{dy}; },  // wrong on purpose
  });
  const A x = A::random_uniform({5}, -1, 1, 1);
  CHECK(tg::gradcheck([](const T& v) { return tg::sum(tg::tanh(v)); }, x).passed());
  const auto report = tg::gradcheck([](const T& v) { return tg::sum(bad(v)); }, x);
  CHECK_FALSE(report.passed());
  CHECK(report.inputs[0].max_abs_error > 0.01);
  CHECK(tg::dot_product_test(3, [](const T& v) { return bad(v); }, x).rel_error > 1e-3);
}

TEST_CASE("API errors: non-scalar gradient, replay shape, mixed tapes") {
  const A x = A::ones({2, 3});
  CHECK_THROWS_WITH_AS(tg::gradient([](const T& v) { return v * 2.0; }, x),
                       doctest::Contains("gradient: output has shape (2,3) (6 elements) expected one element"), tg::Error);
  auto tape = tg::record([](const T& v) { return tg::sum(v); }, x);
  CHECK_THROWS_WITH_AS(tape.gradient(A::ones({3, 2})),
                       doctest::Contains("input 0 has shape (3,2) but the tape was recorded with (2,3)"), tg::Error);
  auto other = tg::record([](const T& v) { return v; }, x);
  T foreign(&other.tape(), other.tape().inputs()[0]);
  CHECK_THROWS_WITH_AS(tg::record([&](const T& v) { return v + foreign; }, x),
                       doctest::Contains("add: operands belong to different tapes"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::record([&](const T&) { return foreign; }, x), doctest::Contains("record: the function returned a value from another tape"),
                       tg::Error);
}
