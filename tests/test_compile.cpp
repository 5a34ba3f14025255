// The tape compiler against the interpreter: every model, every subset of
// passes, recorded and new inputs, replayed twice (a buffer shared while
// still live would change a value or gradient); what dead-code elimination
// removes; the arena plan; the dump; errors.
#include "support/checks.hpp"

using namespace tgtest;
using T = tg::Tracked<double>;

namespace {

double relative_diff(const A& a, const A& b) { return max_abs_diff(a, b) / std::max(1.0, max_abs(b)); }

// Every subset of the passes.
std::vector<tg::CompileOptions> all_options() {
  std::vector<tg::CompileOptions> out;
  for (int bits = 0; bits < 32; ++bits)
    out.push_back({.dead_code = (bits & 1) != 0,
                   .plan_memory = (bits & 2) != 0,
                   .fuse_epilogues = (bits & 4) != 0,
                   .fuse_elementwise = (bits & 8) != 0,
                   .share_views = (bits & 16) != 0});
  return out;
}

// The compiled program gives the tape's value and every gradient, within
// `tolerance` relative, on the recorded inputs and on new ones, replayed twice
// (the arena is reused).
template <class Tape, class Compiled, class... In>
void check_matches_interpreter(Tape& tape, Compiled& ct, const std::tuple<In...>& inputs,
                               const std::tuple<In...>& new_inputs, double tolerance) {
  for (int round = 0; round < 2; ++round)
    for (const auto* in : {&inputs, &new_inputs}) {
      const auto expected = std::apply([&](const auto&... x) { return tape.gradient(x...); }, *in);
      const double value = tape.value();
      const auto got = std::apply([&](const auto&... x) { return ct.gradient(x...); }, *in);
      CHECK(std::abs(ct.value() - value) <= 1e-12 * std::max(1.0, std::abs(value)));
      if constexpr (sizeof...(In) == 1) {
        CHECK(relative_diff(got, expected) <= tolerance);
      } else {
        double worst = 0;
        std::apply([&](const auto&... g) {
          std::apply([&](const auto&... e) { ((worst = std::max(worst, relative_diff(g, e))), ...); }, expected);
        }, got);
        CHECK(worst <= tolerance);
      }
    }
}

// Compiled (each subset of passes) equals interpreted within 1e-12.
template <class F, class... In>
void check_compiled(F f, const std::tuple<In...>& inputs, const std::tuple<In...>& new_inputs,
                    const std::vector<std::size_t>& data_inputs = {}) {
  for (const auto& options : all_options()) {
    CAPTURE(options.dead_code);
    CAPTURE(options.plan_memory);
    CAPTURE(options.fuse_epilogues);
    CAPTURE(options.fuse_elementwise);
    CAPTURE(options.share_views);
    auto tape = std::apply([&](const auto&... x) { return tg::record(f, x...); }, inputs);
    for (auto k : data_inputs) tape.set_needs_grad(k, false);
    auto ct = tg::compile(tape, options);
    check_matches_interpreter(tape, ct, inputs, new_inputs, 1e-12);
  }
}

// A small CNN: conv + bias, relu, maxpool, conv, relu, meanpool, linear, cross-entropy.
T small_cnn(const T& x, const T& labels, const T& w1, const T& b1, const T& w2, const T& w3) {
  const std::int64_t n = x.shape()[0];
  auto h = tg::maxpool(tg::relu(tg::conv(x, w1, b1, {.padding = {1}})), {.window = {2}});  // (n, 4, 4, 4)
  h = tg::meanpool(tg::relu(tg::conv(h, w2, {.padding = {1}})), {.window = {2}});         // (n, 6, 2, 2)
  return tg::cross_entropy(tg::matmul(tg::reshape(h, {n, 24}), w3), labels);              // (n, 24) @ (24, 3)
}

std::tuple<A, A, A, A, A, A> cnn_inputs(std::uint64_t seed) {
  return {A::random_uniform({3, 2, 8, 8}, -1, 1, seed), A({3}, {0, 2, 1}), A::random_uniform({4, 2, 3, 3}, -1, 1, seed + 1),
          A::random_uniform({4}, -1, 1, seed + 2), A::random_uniform({6, 4, 3, 3}, -1, 1, seed + 3),
          A::random_uniform({24, 3}, -1, 1, seed + 4)};
}

}  // namespace

TEST_CASE("compile: a small CNN gives the interpreter's value and gradients with every subset of passes") {
  check_compiled(small_cnn, cnn_inputs(1), cnn_inputs(11));
  check_compiled(small_cnn, cnn_inputs(1), cnn_inputs(11), {0, 1});  // images and labels as data
}

TEST_CASE("compile: the filter seed case, elementwise chains, and a function with a dead branch") {
  check_compiled([](const T& x, const T& w) { return tg::sum(tg::correlate(x, w, {.border = tg::Border::replicate()})); },
                 std::tuple{A::random_uniform({20, 17}, -1, 1, 1), A::random_uniform({3, 3}, -1, 1, 2)},
                 std::tuple{A::random_uniform({20, 17}, -1, 1, 3), A::random_uniform({3, 3}, -1, 1, 4)});
  auto chain = [](const T& x, const T& w) { return tg::mean(tg::sigmoid(x * w + 1.0) - x / 2.0 + tg::tanh(w) * tg::exp(x)); };
  check_compiled(chain, std::tuple{A::random_uniform({5, 7}, -1, 1, 1), A::random_uniform({7}, -1, 1, 2)},
                 std::tuple{A::random_uniform({5, 7}, -1, 1, 3), A::random_uniform({7}, -1, 1, 4)});
  auto dead = [](const T& x, const T& w) {
    const T unused = tg::exp(x) * w;  // never reaches the output
    (void)unused;
    return tg::sum(tg::tanh(x) * w);
  };
  check_compiled(dead, std::tuple{A::random_uniform({4, 3}, -1, 1, 1), A::random_uniform({3}, -1, 1, 2)},
                 std::tuple{A::random_uniform({4, 3}, -1, 1, 3), A::random_uniform({3}, -1, 1, 4)});
  check_compiled([](const T& x) { return tg::sum(x); }, std::tuple{A::ones({3})}, std::tuple{A::iota({3})});
}

TEST_CASE("compile: dead-code elimination removes what does not reach the output") {
  auto dead = [](const T& x, const T& w) {
    const T unused = tg::exp(x) * w;
    (void)unused;
    return tg::sum(tg::tanh(x) * w);
  };
  auto tape = tg::record(dead, A::random_uniform({4, 3}, -1, 1, 1), A::random_uniform({3}, -1, 1, 2));
  REQUIRE(tape.tape().num_instructions() == 5);  // exp, mul, tanh, mul, sum
  auto ct = tg::compile(tape);
  CHECK(ct.program().steps().size() == 3);
  for (const auto& st : ct.program().steps()) CHECK(st.op->name != "exp");
  CHECK(tg::compile(tape, {.dead_code = false}).program().steps().size() == 5);
  // Data inputs: the pullbacks that only feed them are not run at all.
  auto data = tg::record(dead, A::random_uniform({4, 3}, -1, 1, 1), A::random_uniform({3}, -1, 1, 2));
  data.set_needs_grad(0, false);
  const auto compiled_data = tg::compile(data);  // a range-for over a temporary's member would dangle
  std::size_t pullbacks = 0;
  for (const auto& st : compiled_data.program().steps()) pullbacks += st.pullback;
  CHECK(pullbacks == 2);  // mul and sum: tanh(x) depends on x only
}

TEST_CASE("compile: the arena plan is aligned, inside the arena, and smaller than one buffer each") {
  auto [x, y, w1, b1, w2, w3] = cnn_inputs(1);
  auto tape = tg::record(small_cnn, x, y, w1, b1, w2, w3);
  const auto ct = tg::compile(tape);
  const auto& p = ct.program();
  CHECK(p.arena_bytes() < p.unplanned_bytes());
  CHECK(tg::compile(tape, {.plan_memory = false}).program().arena_bytes() == p.unplanned_bytes());
  // Every planned buffer is 64-byte aligned and inside the arena.
  for (std::uint32_t s = 0; s < tape.tape().num_slots(); ++s)
    for (auto offset : {p.value_offset(s), p.adjoint_offset(s)})
      if (offset >= 0) {
        CHECK(offset % 64 == 0);
        CHECK(offset + std::int64_t(sizeof(double)) * tape.tape().value(s).size() <= p.arena_bytes());
      }
  const std::string text = tg::dump(ct);
  CHECK(text.find("compiled tape f64: 7 steps for 9 recorded instructions") != std::string::npos);
  CHECK(text.find("conv[padding=[1]") != std::string::npos);
  CHECK(text.find("%2 %3 + relu") != std::string::npos);  // conv + bias + relu: one fused step
  CHECK(text.find("value@") != std::string::npos);
  CHECK(text.find("adjoint@") != std::string::npos);
  CHECK(text.find("arena ") != std::string::npos);
  CHECK(text.find("# test_compile.cpp:") != std::string::npos);
}

TEST_CASE("compile: a pool's input gives its bytes away when the pool's pullback does not read it") {
  // a = x + w (add's pullback reads no value), pooled, summed. At the pool's
  // pullback a's adjoint, the pool's output and its adjoint are live. A 2x2
  // max-pool's pullback reads its window codes instead of a (here with a row
  // and a column its windows do not cover), and a mean-pool's reads only the
  // adjoint: a's bytes can go to its adjoint. A padded or 3x3 max-pool (no
  // codes) and an Lp pool read a: all four buffers live at once.
  const A x = A::random_uniform({2, 3, 7, 9}, -1, 1, 1), w = A::random_uniform({2, 3, 7, 9}, -1, 1, 2);
  const std::int64_t a_bytes = x.size() * sizeof(double);
  // Whether the arena holds less than a, its adjoint, the pool's output and its adjoint.
  auto frees_a = [&](auto pool) {
    auto f = [&](const T& x, const T& w) { return tg::sum(pool(x + w)); };
    check_compiled(f, std::tuple{x, w}, std::tuple{w, x});
    auto tape = tg::record(f, x, w);
    const std::int64_t pooled_bytes = tape.tape().value(tape.tape().num_slots() - 2).size() * sizeof(double);
    return tg::compile(tape).program().arena_bytes() < 2 * a_bytes + 2 * pooled_bytes;
  };
  CHECK(frees_a([](const T& a) { return tg::maxpool(a, {.window = {2}}); }));
  CHECK(frees_a([](const T& a) { return tg::meanpool(a, {.window = {3}, .stride = {1}, .padding = {1}}); }));
  CHECK_FALSE(frees_a([](const T& a) { return tg::maxpool(a, {.window = {2}, .padding = {1}}); }));
  CHECK_FALSE(frees_a([](const T& a) { return tg::maxpool(a, {.window = {3}, .stride = {1}}); }));
  CHECK_FALSE(frees_a([](const T& a) { return tg::lppool(a, {.window = {2}, .p = 3}); }));
}

TEST_CASE("compile: a chain's pullback reads back only the values its members' pullbacks read") {
  // relu(x @ w + x @ v): add's pullback reads no value and relu's reads its
  // output, so neither product is read back (Note [What a chain's pullback
  // reads]): after the forward pass their bytes go to the adjoints. Compiled
  // with the chain fused and without, the arena holds less than five
  // products' bytes; reading both back, it held six (the two products, the
  // chain's output and three adjoints at the chain's pullback).
  const A x = A::random_uniform({64, 32}, -1, 1, 1), w = A::random_uniform({32, 48}, -1, 1, 2),
          v = A::random_uniform({32, 48}, -1, 1, 3);
  auto f = [](const T& a, const T& b, const T& c) { return tg::sum(tg::relu(tg::matmul(a, b) + tg::matmul(a, c))); };
  check_compiled(f, std::tuple{x, w, v}, std::tuple{x, v, w});
  auto tape = tg::record(f, x, w, v);
  const std::int64_t product_bytes = 64 * 48 * sizeof(double);
  for (const bool fuse : {true, false}) {
    CAPTURE(fuse);
    auto ct = tg::compile(tape, {.fuse_elementwise = fuse});
    CHECK(ct.program().arena_bytes() < 5 * product_bytes);
    const auto [gx, gw, gv] = ct.gradient(x, w, v);
    const auto [ex, ew, ev] = tape.gradient(x, w, v);
    CHECK(max_abs_diff(gx, ex) < 1e-12);
    CHECK(max_abs_diff(gw, ew) < 1e-12);
    CHECK(max_abs_diff(gv, ev) < 1e-12);
  }
  // mul's pullback reads both products, so this chain keeps them; tanh reads only its output.
  auto g = [](const T& a, const T& b, const T& c) { return tg::sum(tg::tanh(tg::matmul(a, b) * tg::matmul(a, c))); };
  check_compiled(g, std::tuple{x, w, v}, std::tuple{x, v, w});
  // A product read back by an inner member: exp's output feeds mul, whose pullback reads it (recomputed).
  auto h = [](const T& a, const T& b, const T& c) {
    return tg::sum(tg::relu(tg::exp(tg::matmul(a, b) * 0.1) * tg::matmul(a, c)));
  };
  check_compiled(h, std::tuple{x, w, v}, std::tuple{x, v, w});
}

TEST_CASE("compile: bytes change hands only between buffers more than two steps apart") {
  // %2 = x + w, %3 = maxpool %2, %4 = sum %3; steps: forward 0-2, seed 3,
  // pullbacks of sum, maxpool, add at 4, 5, 6 (Note [Planned arena]).
  auto f = [](const T& x, const T& w) { return tg::sum(tg::maxpool(x + w, {.window = {2}})); };
  const A x = A::random_uniform({2, 3, 8, 8}, -1, 1, 1), w = A::random_uniform({2, 3, 8, 8}, -1, 1, 2);
  auto tape = tg::record(f, x, w);
  const auto ct = tg::compile(tape, {.fuse_elementwise = false});
  const auto& p = ct.program();
  auto bytes_of = [&](std::int64_t offset, std::uint32_t slot) {
    return std::pair{offset, offset + std::int64_t(sizeof(double)) * tape.tape().value(slot).size()};
  };
  auto intersect = [](std::pair<std::int64_t, std::int64_t> a, std::pair<std::int64_t, std::int64_t> b) {
    return a.first < b.second && b.first < a.second;
  };
  const auto a_value = bytes_of(p.value_offset(2), 2), a_adjoint = bytes_of(p.adjoint_offset(2), 2);
  const auto sum_adjoint = bytes_of(p.adjoint_offset(4), 4);
  // a's value, last read at 1, and its adjoint, first written at 5: shared.
  CHECK(intersect(a_value, a_adjoint));
  // The sum's adjoint lives at 3-4: too close to a's value (1) and a's adjoint (5).
  CHECK_FALSE(intersect(sum_adjoint, a_value));
  CHECK_FALSE(intersect(sum_adjoint, a_adjoint));
  check_compiled(f, std::tuple{x, w}, std::tuple{w, x});
}

TEST_CASE("compile: held bytes count the arena, saved buffers, inputs and their adjoints; the tape's count everything") {
  auto f = [](const T& x, const T& w) { return tg::sum(tg::exp(x) * w); };
  const A x = A::random_uniform({1000}, -1, 1, 1), w = A::random_uniform({1000}, -1, 1, 2);
  auto tape = tg::record(f, x, w);
  tape.set_needs_grad(1, false);
  // Values: x, w, exp, mul, sum (4 x 1000 + 1); adjoints: x, exp, mul, sum (3 x 1000 + 1).
  CHECK(tg::held_bytes(tape.tape()) == 7002 * 8);
  const auto ct = tg::compile(tape);
  // Outside the arena: x with its adjoint, w without one.
  CHECK(ct.program().held_bytes() == ct.program().arena_bytes() + 3000 * 8);
  CHECK(ct.program().held_bytes() < tg::held_bytes(tape.tape()));
}

TEST_CASE("compile: errors name the problem") {
  auto tape = tg::record([](const T& v) { return tg::sum(v * 2.0); }, A::ones({2, 3}));
  auto ct = tg::compile(tape);
  CHECK_THROWS_WITH_AS(ct.gradient(A::ones({3, 2})), doctest::Contains("input 0 has shape (3,2) but the tape was recorded with (2,3)"),
                       tg::Error);
  auto vector_valued = tg::record([](const T& v) { return v * 2.0; }, A::ones({2}));
  auto cv = tg::compile(vector_valued);
  CHECK(max_abs_diff(cv.forward(A::iota({2})), A({2}, {0, 2})) == 0);
  CHECK_THROWS_WITH_AS(cv.gradient(A::ones({2})), doctest::Contains("expected one element"), tg::Error);
}

TEST_CASE("compile: epilogue fusion folds an activation into its producer only when that is safe") {
  auto f = [](const T& x, const T& w) {
    const T h = tg::matmul(x, w);          // matmul -> relu: fused
    const T a = tg::relu(h);
    const T s = x * 2.0;                  // mul reads its output? no, but mul is not kPullbackIgnoresOutput
    const T b = tg::tanh(s);              // not fused
    const T shared = tg::matmul(x, w);    // used twice: its relu is not fused
    return tg::sum(a) + tg::sum(b) + tg::sum(tg::relu(shared) * shared);
  };
  const A x = A::random_uniform({4, 5}, -1, 1, 1), w = A::random_uniform({5, 5}, -1, 1, 2);
  auto tape = tg::record(f, x, w);
  const auto ct = tg::compile(tape, {.fuse_elementwise = false});  // counts the epilogues alone
  std::size_t fused = 0;
  for (const auto& st : ct.program().steps())
    if (st.epilogue()) {
      ++fused;
      CHECK(st.op->name == "matmul");
      CHECK(st.epilogue()->activation.op->name == "relu");
    }
  CHECK(fused == 1);
  CHECK(ct.program().steps().size() + 1 == tape.tape().num_instructions());
  check_compiled(f, std::tuple{x, w}, std::tuple{A::random_uniform({4, 5}, -1, 1, 3), A::random_uniform({5, 5}, -1, 1, 4)});
}

// Note [Views share buffers]: a reshape of a computed value runs nothing forward
// and takes its input's bytes; its input's adjoint takes its adjoint's bytes
// only when the reshape is that input's one consumer.
TEST_CASE("compile: a reshape shares its input's buffer, and its adjoint when it is the only consumer") {
  auto f = [](const T& x, const T& w) {
    const T h = tg::tanh(tg::matmul(x, w));                        // (4, 6)
    const T chain = tg::reshape(tg::reshape(h, {2, 12}), {24});     // only consumer of h: everything shared
    const T t = tg::sigmoid(x);                                     // (4, 5), read twice below
    const T r = tg::reshape(t, {20});                               // value shared, adjoint not
    const T of_input = tg::reshape(x, {5, 4});                      // an input: copied
    return tg::sum(chain * chain) + tg::sum(r * r) + tg::sum(t) + tg::sum(of_input * of_input);
  };
  const A x = A::random_uniform({4, 5}, -1, 1, 1), w = A::random_uniform({5, 6}, -1, 1, 2);
  auto tape = tg::record(f, x, w);
  const auto ct = tg::compile(tape, {.fuse_elementwise = false});
  const auto& p = ct.program();
  std::vector<const tg::CompiledProgram<double>::Step*> views;
  for (const auto& st : p.steps())
    if (st.op->name == "reshape") views.push_back(&st);
  REQUIRE(views.size() == 4);
  const std::uint32_t h = views[0]->args[0], t = views[2]->args[0];
  for (int k = 0; k < 2; ++k) {  // the chain: one value buffer and one adjoint buffer for h and both reshapes
    REQUIRE(views[k]->view());
    CHECK(views[k]->view()->shares_adjoint);
    CHECK(p.value_offset(views[k]->out) == p.value_offset(h));
    CHECK(p.adjoint_offset(views[k]->out) == p.adjoint_offset(h));
  }
  REQUIRE(views[2]->view());
  CHECK_FALSE(views[2]->view()->shares_adjoint);  // t's adjoint also gathers sum(t)'s
  CHECK(p.value_offset(views[2]->out) == p.value_offset(t));
  CHECK(p.adjoint_offset(views[2]->out) != p.adjoint_offset(t));
  CHECK_FALSE(views[3]->view());
  CHECK(tg::dump(ct).find("(view: value and adjoint shared)") != std::string::npos);
  CHECK(tg::dump(ct).find("share_views on") != std::string::npos);
  const auto plain = tg::compile(tape, {.fuse_elementwise = false, .share_views = false});
  CHECK(p.unplanned_bytes() < plain.program().unplanned_bytes());
  check_compiled(f, std::tuple{x, w}, std::tuple{A::random_uniform({4, 5}, -1, 1, 3), A::random_uniform({5, 6}, -1, 1, 4)});
}

TEST_CASE("compile: a reshape that is the output, or that feeds a guard, reads its input's bytes") {
  auto out_view = [](const T& x) { return tg::reshape(tg::sum(tg::exp(x)), {1}); };
  auto guarded = [](const T& x) {
    const T r = tg::reshape(tg::tanh(x), {6});
    return tg::any(r > -2.0) ? tg::sum(r * r) : tg::sum(r);  // holds for every input
  };
  const A x = A::random_uniform({2, 3}, -1, 1, 5);
  auto tape = tg::record(out_view, x);
  auto ct = tg::compile(tape);
  CHECK(ct.program().steps().back().view());
  ct.forward(x * 0.5);
  CHECK(std::abs(ct.value() - tg::sum(tg::exp(x * 0.5)).item()) < 1e-12);
  check_compiled(guarded, std::tuple{x}, std::tuple{A::random_uniform({2, 3}, -1, 1, 6)});
}

// Note [Adjoint prologue]: a conv's fused activation has its pullback applied
// as the weight gradient packs the output adjoint, with the bias gradient; a
// pass of its own when there is no weight gradient or the conv is transposed.
TEST_CASE("compile: a conv's fused activation pullback folds into the weight gradient, for every algorithm") {
  using tg::kernels::ConvAlgorithm;
  for (auto algorithm : {ConvAlgorithm::direct, ConvAlgorithm::im2col, ConvAlgorithm::implicit_gemm, ConvAlgorithm::fft,
                         ConvAlgorithm::winograd}) {
    CAPTURE(std::string(tg::kernels::to_string(algorithm)));
    const tg::ConvParams p{.padding = {1}, .algorithm = algorithm};
    auto with_bias = [p](const T& x, const T& w, const T& b) {
      return tg::sum(tg::relu(tg::conv(x, w, b, p)) * tg::conv(x, w, p)) + tg::sum(tg::tanh(tg::conv(x, w, b, p)));
    };
    auto no_bias = [p](const T& x, const T& w) { return tg::sum(tg::sigmoid(tg::conv(x, w, p)) * x.shape()[0]); };
    const auto in = [](std::uint64_t s) {
      return std::tuple{A::random_uniform({3, 4, 6, 6}, -1, 1, s), A::random_uniform({5, 4, 3, 3}, -1, 1, s + 1),
                        A::random_uniform({5}, -1, 1, s + 2)};
    };
    check_compiled(with_bias, in(1), in(7));
    check_compiled(with_bias, in(1), in(7), {1});  // no weight gradient: the pullback runs as its own pass
    check_compiled(no_bias, std::tuple{std::get<0>(in(1)), std::get<1>(in(1))}, std::tuple{std::get<0>(in(7)), std::get<1>(in(7))});
  }
  auto transposed = [](const T& x, const T& w, const T& b) {
    return tg::sum(tg::relu(tg::conv_transpose(x, w, b, {.stride = {2}})) * 0.5);
  };
  check_compiled(transposed, std::tuple{A::random_uniform({2, 3, 4, 4}, -1, 1, 1), A::random_uniform({3, 2, 3, 3}, -1, 1, 2), A::random_uniform({2}, -1, 1, 3)},
                 std::tuple{A::random_uniform({2, 3, 4, 4}, -1, 1, 4), A::random_uniform({3, 2, 3, 3}, -1, 1, 5), A::random_uniform({2}, -1, 1, 6)});
}

TEST_CASE("compile: the folded and the moved pullback give the interpreter's float gradients bit for bit on a LeNet layer") {
  // The algorithms that fold the pullback (and the bias gradient) into their
  // weight pass: implicit GEMM as it packs gy, Winograd per block of samples,
  // the direct kernel's shifted copies per plane. Before a max-pool the ReLU's pullback moves to the pool instead
  // (Note [Activation pullbacks at the max-pool]).
  using F = tg::Tracked<float>;
  using AF = tg::Array<float>;
  for (auto algorithm : {tg::kernels::ConvAlgorithm::implicit_gemm, tg::kernels::ConvAlgorithm::winograd,
                         tg::kernels::ConvAlgorithm::direct})
    for (const bool pooled : {true, false}) {
      CAPTURE(std::string(tg::kernels::to_string(algorithm)));
      CAPTURE(pooled);
      auto layer = [algorithm, pooled](const F& x, const F& w, const F& b) {
        const F h = tg::relu(tg::conv(x, w, b, {.padding = {2}, .algorithm = algorithm}));
        return pooled ? tg::sum(tg::maxpool(h, {.window = {2}})) : tg::sum(h * 0.5f);
      };
      // 40 samples of 16 tiles: Winograd's weight pass runs blocks of 16, 16 and 8
      // samples (Note [Weight pass pipeline]), each folding the pullback first.
      // The direct kernel folds it where its shifted copies run (few channels, at avx512).
      const std::int64_t channels = algorithm == tg::kernels::ConvAlgorithm::direct ? 2 : 8;
      const AF x = AF::random_uniform({40, channels, 14, 14}, -1, 1, 1), w = AF::random_uniform({30, channels, 5, 5}, -1, 1, 2),
               b = AF::random_uniform({30}, -1, 1, 3);
      auto tape = tg::record(layer, x, w, b);
      auto ct = tg::compile(tape);
      CHECK((tg::dump(ct).find("(relu's pullback here)") != std::string::npos) == pooled);
      const auto [ex, ew, eb] = tape.gradient(x, w, b);
      for (int round = 0; round < 2; ++round) {
        const auto [gx, gw, gb] = ct.gradient(x, w, b);
        auto same = [](const AF& a, const AF& e) { return a.shape() == e.shape() && std::equal(a.begin(), a.end(), e.begin()); };
        CHECK(same(gx, ex));
        CHECK(same(gw, ew));
        CHECK(same(gb, eb));
      }
    }
}

TEST_CASE("compile: an activation's pullback moves to a max-pool only when that is exact") {
  // relu(x) then maxpool: the pool's output is the ReLU's output at the element
  // its pullback reaches, and ReLU's pullback is a 0/1 mask: moved. Overlapping
  // and padded windows too (an element can be the maximum of two windows).
  auto moved = [](const T& x, const T& w) {
    const T h = tg::relu(tg::conv(x, w, {.padding = {1}}));
    return tg::sum(tg::maxpool(h, {.window = {2}}) * 2.0) + tg::sum(tg::maxpool(tg::relu(tg::conv(x, w)), {.window = {3}, .stride = {2}, .padding = {1}}));
  };
  auto in = [](std::uint64_t s) { return std::tuple{A::random_uniform({2, 3, 7, 8}, -1, 1, s), A::random_uniform({4, 3, 3, 3}, -1, 1, s + 1)}; };
  check_compiled(moved, in(1), in(5));
  auto tape = tg::record(moved, std::get<0>(in(1)), std::get<1>(in(1)));
  const std::string text = tg::dump(tg::compile(tape));
  std::size_t count = 0;
  for (std::size_t at = text.find("(relu's pullback here)"); at != std::string::npos; at = text.find("(relu's pullback here)", at + 1)) ++count;
  CHECK(count == 2);
  CHECK(text.find("+ relu (its pullback at the max-pool)") != std::string::npos);
  CHECK(tg::dump(tg::compile(tape, {.fuse_epilogues = false})).find("pullback here") == std::string::npos);
  // Not moved: the ReLU's output read elsewhere too, a mean-pool, an activation whose pullback is not a mask.
  auto kept = [](const T& x, const T& w) {
    const T h = tg::relu(tg::conv(x, w, {.padding = {1}}));
    return tg::sum(tg::maxpool(h, {.window = {2}})) + tg::sum(h) + tg::sum(tg::meanpool(tg::relu(tg::conv(x, w)), {.window = {2}})) +
           tg::sum(tg::maxpool(tg::tanh(tg::conv(x, w)), {.window = {2}}));
  };
  check_compiled(kept, in(1), in(5));
  CHECK(tg::dump(tg::compile(tg::record(kept, std::get<0>(in(1)), std::get<1>(in(1))))).find("pullback here") == std::string::npos);
}

TEST_CASE("compile: tune_algorithms times the conv passes that run, for the compiled program only, and keeps forced ones") {
  // Note [Tuned algorithms]
  const auto inputs = cnn_inputs(1), new_inputs = cnn_inputs(11);
  auto tape = std::apply([](const auto&... x) { return tg::record(small_cnn, x...); }, inputs);
  tape.set_needs_grad(0, false);  // the images: conv1 runs no input-gradient pass
  tape.set_needs_grad(1, false);  // the labels
  const std::string recorded = tg::dump(tape);
  auto ct = tg::compile(tape, {.tune_algorithms = true});
  CHECK(tg::dump(tape) == recorded);  // the tape's own params are untouched
  const std::string compiled = tg::dump(ct);
  CHECK(compiled.find("tune_algorithms on") != std::string::npos);
  // conv1's algorithms, forward/backward_input/backward_weight: the pass that does not run keeps the rule's choice.
  auto first_triple = [](const std::string& text) {
    const auto at = text.find("algorithm=") + 10;
    return text.substr(at, text.find(']', at) - at);
  };
  auto middle = [](const std::string& triple) { return triple.substr(triple.find('/'), triple.rfind('/') - triple.find('/')); };
  CHECK(middle(first_triple(compiled)) == middle(first_triple(recorded)));
  // The interpreter's value and gradients, to rounding (other algorithms sum in another order).
  check_matches_interpreter(tape, ct, inputs, new_inputs, 1e-10);
  // A pass the user forced is not tuned.
  const auto& [x, labels, w1, b1, w2, w3] = inputs;
  auto forced = tg::record([](const T& a, const T& w) {
    return tg::sum(tg::conv(a, w, {.padding = {1}, .algorithm = tg::ConvAlgorithm::direct}));
  }, x, w1);
  CHECK(tg::dump(tg::compile(forced, {.tune_algorithms = true})).find("algorithm=direct/direct/direct") != std::string::npos);
}

TEST_CASE("compile: a compiled program profiles its steps like a tape") {
  auto [x, y, w1, b1, w2, w3] = cnn_inputs(1);
  auto ct = tg::compile(tg::record(small_cnn, x, y, w1, b1, w2, w3));
  tg::TapeProfile profile;
  ct.program().set_profile(&profile);
  for (int i = 0; i < 2; ++i) ct.gradient(x, y, w1, b1, w2, w3);
  CHECK(profile.forward_passes == 2);
  CHECK(profile.reverse_passes == 2);
  CHECK(profile.forward_seconds.size() == ct.program().steps().size());
  const std::string text = tg::dump_profile(ct.program(), profile);
  CHECK(text.find("profile over 2 forward and 2 reverse passes") != std::string::npos);
  CHECK(text.find("+ relu") != std::string::npos);
  CHECK(text.find("# test_compile.cpp:") != std::string::npos);
}

TEST_CASE("compile: elementwise fusion runs a chain as one step, block by block, with its pullbacks") {
  // 9,000 elements: two whole blocks of 4,096 and a partial one; s is a one-element
  // input (its adjoint sums over every block); w has x's shape.
  auto f = [](const T& x, const T& w, const T& s) {
    const T a = tg::tanh(x * w + s);
    const T b = a * a - tg::sigmoid(x) * 0.5;
    return tg::sum(tg::exp(-b) / (w * w + 1.0));
  };
  const auto inputs = [](std::uint64_t seed) {
    return std::tuple{A::random_uniform({90, 100}, -1, 1, seed), A::random_uniform({90, 100}, -1, 1, seed + 1),
                      A::random_uniform({}, -1, 1, seed + 2)};
  };
  check_compiled(f, inputs(1), inputs(11));
  auto tape = std::apply([&](const auto&... x) { return tg::record(f, x...); }, inputs(1));
  const auto fused = tg::compile(tape), plain = tg::compile(tape, {.fuse_elementwise = false});
  std::size_t groups = 0, members = 0;
  for (const auto& st : fused.program().steps())
    if (const auto* chain = st.chain()) ++groups, members += chain->members.size();
  CHECK(fused.program().steps().size() < plain.program().steps().size());
  CHECK(groups >= 1);
  CHECK(members >= 8);
  CHECK(fused.program().arena_bytes() < plain.program().arena_bytes());  // inner values and adjoints take no arena space
  const std::string text = tg::dump(fused);
  CHECK(text.find("= fused{") != std::string::npos);
  CHECK(text.find("fuse_elementwise on") != std::string::npos);
  // A value used outside the chain, a guarded value and the output end a chain.
  auto shared = [](const T& x) {
    const T a = tg::exp(x * 2.0);
    return tg::sum(tg::tanh(a)) + tg::sum(a);  // a feeds two ops: materialised
  };
  check_compiled(shared, std::tuple{A::random_uniform({3, 5}, -1, 1, 1)}, std::tuple{A::random_uniform({3, 5}, -1, 1, 2)});
}

TEST_CASE("compile: long tapes: chains are cut at 64 members and past 2,048 buffers the timeline allocator plans the arena") {
  // 300 elementwise ops on 8 elements: chains of at most 64 members, the interpreter's answers.
  auto ew = [](const T& x, const T& w) {
    T y = x;
    for (int i = 0; i < 300; ++i) y = i % 3 == 0 ? tg::tanh(y) : i % 3 == 1 ? y * w : y + 0.25;
    return tg::sum(y);
  };
  const auto ew_in = [](std::uint64_t seed) { return std::tuple{A::random_uniform({8}, -1, 1, seed), A::random_uniform({8}, -1, 1, seed + 1)}; };
  auto tape = std::apply([&](const auto&... x) { return tg::record(ew, x...); }, ew_in(1));
  auto ct = tg::compile(tape);
  std::size_t members = 0, longest = 0;
  for (const auto& st : ct.program().steps()) {
    const std::size_t size = st.chain() ? st.chain()->members.size() : 0;
    members += size;
    longest = std::max(longest, size);
  }
  CHECK(longest == 64);
  CHECK(members == 300);
  check_matches_interpreter(tape, ct, ew_in(1), ew_in(5), 1e-12);
  // 1,200 chained matmuls: every forward value lives until its pullback (about
  // 2,400 buffers, the values all alive at the seed): the adjoints reuse each
  // other's bytes, and the answers stay the interpreter's, replayed twice on new inputs.
  auto mm = [](const T& x, const T& w) {
    T y = x;
    for (int i = 0; i < 1200; ++i) y = tg::matmul(y, w);
    return tg::sum(y);
  };
  const auto mm_in = [](std::uint64_t seed) {
    A w = A::random_uniform({3, 3}, -0.4, 0.4, seed + 1);
    for (std::int64_t i = 0; i < 3; ++i) w(i, i) += 0.7;  // keeps the product of 1,200 of them finite
    return std::tuple{A::random_uniform({2, 3}, -1, 1, seed), w};
  };
  auto mm_tape = std::apply([&](const auto&... x) { return tg::record(mm, x...); }, mm_in(1));
  auto mm_ct = tg::compile(mm_tape);
  CHECK(mm_ct.program().arena_bytes() < 0.6 * double(mm_ct.program().unplanned_bytes()));
  check_matches_interpreter(mm_tape, mm_ct, mm_in(1), mm_in(7), 1e-12);
}

// ---- one front-end over both engines (front_end.hpp) ----

namespace {
// conv + relu + reshape: an array-valued output, three inputs.
T conv_features(const T& x, const T& w, const T& b) {
  return tg::reshape(tg::relu(tg::conv(x, w, b, {.padding = {1}})), {2, -1});
}
}  // namespace

TEST_CASE("front-end: a compiled tape's vjp equals the interpreter's, at the last values and on new inputs") {
  const A x = A::random_uniform({2, 3, 6, 6}, -1, 1, 1), w = A::random_uniform({4, 3, 3, 3}, -1, 1, 2),
          b = A::random_uniform({4}, -1, 1, 3);
  const A x2 = A::random_uniform({2, 3, 6, 6}, -1, 1, 4), v = A::random_uniform({2, 144}, -1, 1, 5);
  auto tape = tg::record(conv_features, x, w, b);
  auto ct = tg::compile(tape);
  const auto [gx, gw, gb] = tape.vjp(v);
  ct.forward(x, w, b);
  const auto [cx, cw, cb] = ct.vjp(v);
  CHECK(relative_diff(cx, gx) <= 1e-12);
  CHECK(relative_diff(cw, gw) <= 1e-12);
  CHECK(relative_diff(cb, gb) <= 1e-12);
  const auto [gx2, gw2, gb2] = tape.vjp(v, x2, w, b);
  const auto [cx2, cw2, cb2] = ct.vjp(v, x2, w, b);
  CHECK(relative_diff(cx2, gx2) <= 1e-12);
  CHECK(relative_diff(cw2, gw2) <= 1e-12);
  CHECK(max_abs_diff(cx2, cx) > 0.01);  // the new input counted
  // The same errors from both, under each one's name.
  CHECK_THROWS_WITH_AS(tape.vjp(A::ones({2, 3})),
                       "GradientTape::vjp: v has shape (2,3) but the output has shape (2,144) they must match; hint: v "
                       "is a cotangent of the output",
                       tg::Error);
  CHECK_THROWS_WITH_AS(ct.vjp(A::ones({2, 3})),
                       "CompiledTape::vjp: v has shape (2,3) but the output has shape (2,144) they must match; hint: v "
                       "is a cotangent of the output",
                       tg::Error);
  CHECK_THROWS_WITH_AS(tape.gradient(), doctest::Contains("GradientTape::gradient: output has shape (2,144) (288 elements) expected one element; hint: reduce with tg::sum or tg::mean, or use jacobian() / vjp()"), tg::Error);
  CHECK_THROWS_WITH_AS(ct.gradient(), doctest::Contains("CompiledTape::gradient: output has shape (2,144) (288 elements) expected one element; hint: reduce with tg::sum or tg::mean, or use jacobian() / vjp()"), tg::Error);
}

TEST_CASE("front-end: set_needs_grad on a compiled tape recompiles for the new mask, both ways") {
  const A x = A::random_uniform({2, 3, 6, 6}, -1, 1, 1), w = A::random_uniform({4, 3, 3, 3}, -1, 1, 2),
          b = A::random_uniform({4}, -1, 1, 3);
  auto loss = [](const T& xv, const T& wv, const T& bv) { return tg::sum(tg::tanh(conv_features(xv, wv, bv))); };
  auto tape = tg::record(loss, x, w, b);
  auto ct = tg::compile(tape);
  const auto [gx, gw, gb] = tape.gradient(x, w, b);
  ct.set_needs_grad(0, false);
  CHECK_FALSE(ct.needs_grad(0));
  const auto [cx, cw, cb] = ct.gradient(x, w, b);
  CHECK(max_abs(cx) == 0);  // compiled for the new mask: input 0 gets no gradient
  CHECK(relative_diff(cw, gw) <= 1e-12);
  CHECK(relative_diff(cb, gb) <= 1e-12);
  ct.set_needs_grad(0, true);
  const auto [dx, dw, db] = ct.gradient(x, w, b);
  CHECK(relative_diff(dx, gx) <= 1e-12);
  CHECK(relative_diff(dw, gw) <= 1e-12);
  // At the values of the last replay, without inputs, as the interpreter does.
  const auto [ex, ew, eb] = ct.gradient();
  CHECK(relative_diff(ew, gw) <= 1e-12);
  CHECK_THROWS_WITH_AS(ct.set_needs_grad(3, false),
                       "CompiledTape::set_needs_grad: input index (3) out of range expected an index below 3", tg::Error);
  // A program whose tape does not hold its function cannot change its mask.
  struct NotCopyable {
    std::unique_ptr<int> p = std::make_unique<int>(1);
    T operator()(const T& v) const { return tg::sum(v * v); }
  };
  auto held_nothing = tg::compile(tg::record(NotCopyable{}, x));
  CHECK_THROWS_WITH_AS(held_nothing.set_needs_grad(0, false),
                       doctest::Contains("CompiledTape::set_needs_grad: input 0 cannot change its gradient mark on a "
                                         "compiled program without its function"),
                       tg::Error);
  CHECK(held_nothing.needs_grad(0));
  CHECK_NOTHROW(held_nothing.set_needs_grad(0, true));  // unchanged: nothing to do
}
