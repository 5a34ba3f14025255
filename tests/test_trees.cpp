// Models as values (tree.hpp, jit.hpp): parameter trees give the positional
// API's gradients leaf by leaf, tg::data gets none, captured Arrays are
// refused where a tape is replayed, and tg::jit caches one program per signature.
#include <array>
#include <vector>

#include "support/checks.hpp"

using namespace tgtest;
using T = tg::Tracked<double>;

namespace {

template <class Arr>
struct Block {
  Arr w1, b1, w2;
};
template <class Arr>
struct Net {
  Arr stem_w, stem_b;
  std::vector<Block<Arr>> blocks;  // length chosen at run time
  std::array<Arr, 2> head;
};
using Params = Net<A>;

Params make_net(std::size_t depth, std::uint64_t seed) {
  Params net{A::random_uniform({4, 1, 3, 3}, -0.5, 0.5, seed), A::random_uniform({4}, -0.1, 0.1, seed + 1), {},
             {A::random_uniform({64, 3}, -0.2, 0.2, seed + 2), A::random_uniform({3}, -0.1, 0.1, seed + 3)}};
  for (std::size_t i = 0; i < depth; ++i)
    net.blocks.push_back({A::random_uniform({4, 4, 3, 3}, -0.3, 0.3, seed + 10 + 3 * i),
                          A::random_uniform({4}, -0.1, 0.1, seed + 11 + 3 * i),
                          A::random_uniform({4, 4, 1, 1}, -0.3, 0.3, seed + 12 + 3 * i)});
  return net;
}

// A small residual network over a tree (x: (2, 1, 4, 4), labels: (2)).
auto net_loss = [](const auto& net, const auto& x, const auto& labels) {
  auto h = tg::relu(tg::conv(x, net.stem_w, net.stem_b, {.padding = {1}}));
  for (const auto& b : net.blocks) h = h + tg::conv(tg::tanh(tg::conv(h, b.w1, b.b1, {.padding = {1}})), b.w2);
  const auto logits = tg::matmul(tg::reshape(h, {2, 64}), net.head[0]) + net.head[1];
  return tg::cross_entropy(logits, labels);
};

// The same function with positional arguments, for a network of depth 2.
auto positional_loss = [](const T& x, const T& labels, const T& sw, const T& sb, const T& w10, const T& b10, const T& w20,
                          const T& w11, const T& b11, const T& w21, const T& hw, const T& hb) {
  Net<T> net{sw, sb, {{w10, b10, w20}, {w11, b11, w21}}, {hw, hb}};
  return net_loss(net, x, labels);
};

std::vector<const A*> leaves(const Params& p) {
  std::vector<const A*> out;
  tg::tree::for_each_leaf(p, [&](const A& a) { out.push_back(&a); });
  return out;
}

const A images = A::random_uniform({2, 1, 4, 4}, -1, 1, 77), labels({2}, {0, 2});

}  // namespace

TEST_CASE("trees: names, structure and rebinding") {
  CHECK(tg::tree::field_names<Block<A>>[1] == "b1");
  static_assert(std::is_same_v<tg::tree::rebind<Params, T>, Net<T>>);
  static_assert(tg::tree::is_tree_of<Params, double>());
  static_assert(!tg::tree::is_tree_of<Params, float>());
  const Params net = make_net(3, 1);
  CHECK(tg::tree::count_leaves(net) == 2 + 3 * 3 + 2);
  const auto names = tg::tree::leaf_paths(net);
  CHECK(names[0] == "stem_w");
  CHECK(names[4] == "blocks.0.w2");
  CHECK(names[10] == "blocks.2.w2");
  CHECK(names[12] == "head.1");
}

TEST_CASE("trees: gradients equal the positional API's, leaf by leaf, and come back as the tree's type") {
  const Params net = make_net(2, 3);
  const auto p = leaves(net);
  const auto positional = tg::gradient(positional_loss, images, labels, *p[0], *p[1], *p[2], *p[3], *p[4], *p[5], *p[6],
                                       *p[7], *p[8], *p[9]);
  const Params g = tg::gradient(net_loss, net, tg::data(images), tg::data(labels));
  const auto gl = leaves(g);
  REQUIRE(gl.size() == p.size());
  const std::vector<const A*> want = std::apply(
      [](const auto&, const auto&, const auto&... w) { return std::vector<const A*>{&w...}; }, positional);
  for (std::size_t k = 0; k < want.size(); ++k) CHECK(max_abs_diff(*gl[k], *want[k]) == 0.0);
  // value_and_gradient, a recorded tape replayed on another network, and a compiled one.
  const auto [value, g2] = tg::value_and_gradient(net_loss, net, tg::data(images), tg::data(labels));
  CHECK(value == doctest::Approx(net_loss(net, images, labels).item()).epsilon(1e-14));
  CHECK(max_abs_diff(g2.blocks[1].w1, g.blocks[1].w1) == 0.0);
  auto tape = tg::record(net_loss, net, tg::data(images), tg::data(labels));
  const Params other = make_net(2, 9);
  const Params g3 = tape.gradient(other, tg::data(images), tg::data(labels));
  const Params want3 = tg::gradient(net_loss, other, tg::data(images), tg::data(labels));
  CHECK(max_abs_diff(g3.head[0], want3.head[0]) == 0.0);
  auto ct = tg::compile(tape);
  const Params g4 = ct.gradient(other, tg::data(images), tg::data(labels));
  CHECK(max_abs_diff(g4.blocks[0].w2, want3.blocks[0].w2) < 1e-12);
  // Gradients into a caller's tree: shaped on the first call, its storage reused after.
  Params into;
  const double v = ct.value_and_gradient_into(into, other, tg::data(images), tg::data(labels));
  const double* storage = into.stem_w.data();
  ct.value_and_gradient_into(into, other, tg::data(images), tg::data(labels));
  CHECK(into.stem_w.data() == storage);
  CHECK(v == doctest::Approx(tape.value()));
  CHECK(max_abs_diff(into.stem_b, want3.stem_b) < 1e-12);
}

TEST_CASE("trees: leaves are named on the tape, in dumps and in errors; data leaves get no gradient and no pullback") {
  const Params net = make_net(1, 5);
  auto tape = tg::record(net_loss, net, tg::data(images), tg::data(labels));
  const std::string text = tg::dump(tape);
  CHECK(text.find("input 2 blocks.0.w1") != std::string::npos);
  CHECK(text.find("input 7 (no gradient)") != std::string::npos);
  CHECK_FALSE(tape.needs_grad(7));
  CHECK(tape.tape().input_name(6) == "head.1");
  // Tape files keep the names (tapedump prints them).
  const tg::LoadedTape<double> loaded = tg::deserialize_tape<double>(tg::serialize_tape(tape.tape()));
  CHECK(loaded.tape.input_name(2) == "blocks.0.w1");
  CHECK(tg::dump(loaded.tape).find("input 2 blocks.0.w1") != std::string::npos);
  CHECK(tg::dump(tg::compile(tape)).find("input 6 head.1") != std::string::npos);
  // A leaf of another shape names its path.
  Params bad = net;
  bad.blocks[0].b1 = A::zeros({5});
  CHECK_THROWS_WITH_AS(tape.gradient(bad, tg::data(images), tg::data(labels)),
                       doctest::Contains("input 3 (blocks.0.b1) has shape (5) but the tape was recorded with (4)"), tg::Error);
  // Another depth is another structure: an error naming the lengths, or a new recording.
  const Params deeper = make_net(3, 5);
  CHECK_THROWS_WITH_AS(tape.gradient(deeper, tg::data(images), tg::data(labels)),
                       doctest::Contains("the arguments have 15 leaves (vector lengths 3) but the tape was recorded with 9 "
                                         "(vector lengths 1)"),
                       tg::Error);
  tape.set_guard_policy(tg::GuardPolicy::rerecord);
  const Params g = tape.gradient(deeper, tg::data(images), tg::data(labels));
  CHECK(g.blocks.size() == 3);
  CHECK(tape.rerecords() == 1);
  CHECK(max_abs_diff(g.blocks[2].w1, tg::gradient(net_loss, deeper, tg::data(images), tg::data(labels)).blocks[2].w1) == 0.0);
  // Pullbacks that only feed data do not run: exp(x) is instruction 0.
  auto g2 = tg::record([](const auto& w, const auto& x) { return tg::sum(w[0] * tg::exp(x)); }, std::vector<A>{A::ones({3})},
                       tg::data(A::ones({3})));
  tg::TapeProfile profile;
  g2.tape().set_profile(&profile);
  g2.gradient(std::vector<A>{A::ones({3})}, tg::data(A::ones({3})));
  CHECK(profile.pullback_seconds[0] == 0.0);
  CHECK(profile.pullback_seconds[1] > 0.0);
}

TEST_CASE("trees: a jacobian and several tree arguments") {
  const std::vector<A> xs{A({2}, {1.0, 2.0}), A({1}, {3.0})};
  const std::array<A, 1> ys{A({2}, {0.5, -1.0})};
  auto f = [](const auto& v, const auto& w) { return tg::concat(std::vector{v[0] * w[0], v[1] * 2.0}, 0); };
  const auto [jv, jw] = tg::jacobian(f, xs, ys);
  CHECK(jv[0].shape() == tg::Shape{3, 2});
  CHECK(jv[0](1, 1) == -1.0);
  CHECK(jv[1](2, 0) == 2.0);
  CHECK(jw[0](0, 0) == 1.0);
  auto tape = tg::record([](const auto& v, const auto& w) { return tg::sum(v[0] * w[0]) + tg::sum(v[1]); }, xs, ys);
  CHECK(tape.tape().input_name(0) == "arg0.0");
  CHECK(tape.tape().input_name(2) == "arg1.0");
}

// ---- Note [Captured values] ------------------------------------------------------------

TEST_CASE("captures: a replayed tape refuses a captured Array or label vector; tg::constant copies on purpose") {
  const A w = A::random_uniform({3, 4}, -1, 1, 1), x = A::random_uniform({2, 3}, -1, 1, 2);
  auto captured = [&](const T& v) { return tg::sum(tg::matmul(v, w)); };
  CHECK_THROWS_WITH_AS(tg::record(captured, x),
                       doctest::Contains("matmul: operand 1 is an Array of shape (3,4) that the function captured (or made) "
                                         "instead of taking as an argument"),
                       tg::Error);
  CHECK_THROWS_WITH_AS(tg::record(captured, x), doctest::Contains("[recorded at test_trees.cpp:"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::jit(captured).gradient(x), doctest::Contains("tg::constant(a)"), tg::Error);
  const std::vector<std::int64_t> classes{1, 0};
  CHECK_THROWS_WITH_AS(tg::record([&](const T& v) { return tg::cross_entropy(v, classes); }, x),
                       doctest::Contains("cross_entropy: labels given as a std::vector (2 labels) are copied into the tape"),
                       tg::Error);
  // One-shot calls replay nothing and may copy.
  const auto [gx, gw] = tg::gradient([](const T& v, const T& m) { return tg::sum(tg::matmul(v, m)); }, x, w);
  CHECK(max_abs_diff(tg::gradient(captured, x), gx) == 0.0);
  // As an argument the replay sees the new weights: interpreter and compiled program.
  auto f = [](const T& v, const T& m) { return tg::sum(tg::matmul(v, m) * tg::matmul(v, m)); };
  auto tape = tg::record(f, x, tg::data(w));
  auto ct = tg::compile(tape);
  const A w2 = w * 2.0;
  const A want = tg::gradient(f, x, tg::data(w2));
  CHECK(max_abs_diff(tape.gradient(x, tg::data(w2)), want) < 1e-12);
  CHECK(max_abs_diff(ct.gradient(x, tg::data(w2)), want) < 1e-12);
  // tg::constant: a deliberate copy, replayed with its recording-time value.
  auto frozen = tg::record([&](const T& v) { return tg::sum(tg::matmul(v, tg::constant(w))); }, x);
  CHECK(max_abs_diff(frozen.gradient(x), tg::gradient(captured, x)) == 0.0);
  CHECK_THROWS_WITH_AS(tg::constant(w), doctest::Contains("constant: called outside a recording"), tg::Error);
}

// ---- tg::jit ------------------------------------------------------------------------------

TEST_CASE("jit: one program per signature, hits, misses, evictions and the short last batch") {
  const Params net = make_net(1, 11);
  auto loss = [](const auto& n, const auto& x, const auto& y) {
    auto h = tg::relu(tg::conv(x, n.stem_w, n.stem_b, {.padding = {1}}));
    return tg::cross_entropy(tg::matmul(tg::reshape(h, {-1, 64}), n.head[0]) + n.head[1], y);
  };
  auto step = tg::jit(loss, {.capacity = 2});
  const A x4 = A::random_uniform({4, 1, 4, 4}, -1, 1, 1), y4({4}, {0, 1, 2, 1});
  const A x1 = A::random_uniform({1, 1, 4, 4}, -1, 1, 2), y1({1}, {2});
  for (int i = 0; i < 3; ++i) step.value_and_gradient(net, tg::data(x4), tg::data(y4));
  const auto [v1, g1] = step.value_and_gradient(net, tg::data(x1), tg::data(y1));  // the short last batch
  CHECK(step.stats().misses == 2);
  CHECK(step.stats().hits == 2);
  CHECK(step.size() == 2);
  const Params want = tg::gradient(loss, net, tg::data(x1), tg::data(y1));
  CHECK(max_abs_diff(g1.head[0], want.head[0]) < 1e-12);
  CHECK(v1 == doctest::Approx(loss(net, x1, y1).item()));
  // A third signature evicts the least recently used (the batch of four).
  const A x2 = A::random_uniform({2, 1, 4, 4}, -1, 1, 3), y2({2}, {1, 1});
  step.gradient(net, tg::data(x2), tg::data(y2));
  step.gradient(net, tg::data(x1), tg::data(y1));
  CHECK(step.stats().evictions == 1);
  CHECK(step.stats().hits == 3);
  step.gradient(net, tg::data(x4), tg::data(y4));
  CHECK(step.stats().misses == 4);
  const std::string text = tg::dump(step);
  CHECK(text.find("jit: 2 program(s) cached (capacity 2), 3 hits, 4 misses, 2 evictions, 0 path switches") != std::string::npos);
  CHECK(text.find("f64[(4,1,3,3) (4) (4,4,3,3) (4) (4,4,1,1) (64,3) (3) (4,1,4,4) (4)]") != std::string::npos);
}

namespace {
// Bytes of the computed values the recording in progress still stores.
std::int64_t stored_computed_bytes() {
  const tg::Tape<double>& tape = *tg::detail::current_recording<double>();
  std::int64_t bytes = 0;
  for (std::uint32_t s = 0; s < tape.num_slots(); ++s)
    if (tape.kind(s) == tg::SlotKind::computed && tape.value(s).data()) bytes += tape.value(s).size() * 8;
  return bytes;
}
}  // namespace

TEST_CASE("jit: a recording compiled at once stores only the values a handle can still reach") {
  // Note [Unreachable values]: handles copied, assigned, moved, kept in a
  // vector and dropped; every value an op reads later is still stored (a read
  // of a dropped one would fault), and after twenty tanh steps on 1,000
  // elements the recording stores two of them, not twenty.
  const A x = A::random_uniform({10, 100}, -1, 1, 1);
  std::int64_t stored_in_loop = 0;
  auto f = [&stored_in_loop](const T& v) {
    T a = tg::exp(v);
    std::vector<T> kept{a * 2.0, tg::tanh(v)};
    T b = kept[0];
    a = tg::sigmoid(v);
    kept.clear();
    T moved = std::move(b);
    T h = v;
    for (int i = 0; i < 20; ++i) h = tg::tanh(h);
    stored_in_loop = stored_computed_bytes();
    return tg::sum(a * moved + tg::exp(moved) + h);
  };
  auto compiling = tg::detail::record_with<double>(f, tg::Capture::refuse, tg::detail::RecordFor::compiling, x);
  CHECK(stored_in_loop == 3 * 1000 * 8);  // a, moved and h
  const auto& tape = compiling.tape();
  for (std::uint32_t s = 0; s < tape.num_slots(); ++s) {
    CAPTURE(s);
    const bool computed = tape.kind(s) == tg::SlotKind::computed;
    CHECK((tape.value(s).data() == nullptr) == (computed && s != tape.output()));  // shapes stay for compile
    CHECK(tape.value(s).size() == (tape.value(s).rank() == 0 ? 1 : 1000));
  }
  auto ct = tg::compile(compiling);
  const A x2 = A::random_uniform({10, 100}, -1, 1, 2);
  CHECK(max_abs_diff(ct.gradient(x2), tg::gradient(f, x2)) < 1e-12);
  // A tape that is kept stores every value, as does tg::jit's interpreter;
  // tg::jit's compiled programs are recorded storing three. (Each count is
  // read before tg::gradient records f again.)
  auto kept_tape = tg::record(f, x);
  CHECK(stored_in_loop == 24 * 1000 * 8);  // exp, the product, tanh, sigmoid and the twenty
  CHECK(max_abs_diff(kept_tape.gradient(x2), tg::gradient(f, x2)) < 1e-12);
  auto interpreted = tg::jit(f, {.compiled = false});
  const A from_interpreter = interpreted.gradient(x2);
  CHECK(stored_in_loop == 24 * 1000 * 8);
  auto step = tg::jit(f);
  const A from_jit = step.gradient(x2);
  CHECK(stored_in_loop == 3 * 1000 * 8);
  CHECK(max_abs_diff(from_interpreter, tg::gradient(f, x2)) < 1e-12);
  CHECK(max_abs_diff(from_jit, tg::gradient(f, x2)) < 1e-12);
}

TEST_CASE("jit: guard outcomes are part of the key: each path gets its program, alternating paths re-record nothing") {
  auto f = [](const T& v) {
    if (tg::any(v > 0.0)) return tg::sum(v * v);
    return tg::sum(v * 3.0);
  };
  auto step = tg::jit(f);
  const A pos({2}, {1.0, -1.0}), neg({2}, {-1.0, -2.0});
  CHECK(step.gradient(pos)(0) == 2.0);
  CHECK(step.gradient(neg)(0) == 3.0);  // the recorded path's guard fails: a second program
  CHECK(step.stats().misses == 2);
  CHECK(step.stats().path_switches == 1);
  for (int i = 0; i < 3; ++i) {
    CHECK(step.gradient(pos)(1) == -2.0);
    CHECK(step.gradient(neg)(1) == 3.0);
  }
  CHECK(step.stats().misses == 2);  // both paths cached
  CHECK(step.stats().path_switches == 7);
  CHECK(step.gradient(neg)(0) == 3.0);
  CHECK(step.stats().hits == 1);
  auto strict = tg::jit(f, {.guard_policy = tg::GuardPolicy::error});
  strict.gradient(pos);
  CHECK_THROWS_WITH_AS(strict.gradient(neg), doctest::Contains("guard"), tg::Error);
  // The interpreter serves the same way.
  auto interpreted = tg::jit(f, {.compiled = false});
  CHECK(interpreted.gradient(pos)(0) == 2.0);
  CHECK(interpreted.gradient(neg)(0) == 3.0);
  CHECK(interpreted.gradient(pos)(0) == 2.0);
  CHECK(interpreted.stats().misses == 2);
}
