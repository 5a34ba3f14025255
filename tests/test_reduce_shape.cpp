// Reductions and shape ops: hand-worked values, the triple, dot products, errors.
#include "support/checks.hpp"

using namespace tgtest;
using T = tg::Tracked<double>;

TEST_CASE("reductions: hand-worked values on iota") {
  const A x = A::iota({2, 3});  // [[0,1,2],[3,4,5]]
  CHECK(tg::sum(x).item() == 15);
  CHECK(tg::sum(x).rank() == 0);
  CHECK(max_abs_diff(tg::sum(x, {0}), A({3}, {3, 5, 7})) == 0);
  CHECK(max_abs_diff(tg::sum(x, {-1}, true), A({2, 1}, {3, 12})) == 0);
  CHECK(max_abs_diff(tg::mean(x, {1}), A({2}, {1, 4})) == 0);
  CHECK(max_abs_diff(tg::max(x, {0}), A({3}, {3, 4, 5})) == 0);
  CHECK(max_abs_diff(tg::min(x, {1}), A({2}, {0, 3})) == 0);
  CHECK(tg::max(x).item() == 5);
  CHECK(max_abs_diff(tg::sum(x, tg::Axes{}), x) == 0);  // no axes: nothing reduced (NumPy axis=())
  const A y = A::iota({2, 3, 4});
  CHECK(max_abs_diff(tg::sum(y, {0, 2}), A({3}, {60, 92, 124})) == 0);
}

TEST_CASE("reductions: the triple over axes, keepdims and seeds") {
  const std::vector<std::pair<tg::Axes, bool>> cases = {{{}, false}, {{0}, false}, {{1}, true}, {{0, 2}, false}, {{-1}, true}};
  for (std::uint64_t seed : {1u, 2u})
    for (const auto& c : cases) {
      const tg::Axes& axes = c.first;  // not a structured binding: clang's OpenMP cannot capture one
      const bool keep = c.second;
      const A x = A::random_uniform({3, 4, 5}, -1, 1, seed), x2 = A::random_uniform({3, 4, 5}, -1, 1, seed + 5);
      check_op([&](const T& v) { return tg::sum(v, axes, keep); }, std::tuple{x}, std::tuple{x2});
      check_op([&](const T& v) { return tg::mean(v, axes, keep); }, std::tuple{x}, std::tuple{x2});
      check_op([&](const T& v) { return tg::max(v, axes, keep); }, std::tuple{x}, std::tuple{x2});
      check_op([&](const T& v) { return tg::min(v, axes, keep); }, std::tuple{x}, std::tuple{x2});
    }
  const A x = A::random_uniform({3, 4}, -1, 1, 9), x2 = A::random_uniform({3, 4}, -1, 1, 10);
  check_op([](const T& v) { return tg::sum(v); }, std::tuple{x}, std::tuple{x2});
  check_op([](const T& v) { return tg::mean(v); }, std::tuple{x}, std::tuple{x2});
  check_op([](const T& v) { return tg::max(v); }, std::tuple{x}, std::tuple{x2});
  check_op([](const T& v) { return tg::min(v); }, std::tuple{x}, std::tuple{x2});
}

TEST_CASE("max: ties split the adjoint evenly (Note [Ties in max and min])") {
  const A x({4}, {1, 3, 3, 2});
  CHECK(max_abs_diff(tg::gradient([](const T& v) { return tg::max(v); }, x), A({4}, {0, 0.5, 0.5, 0})) == 0);
}

TEST_CASE("shape ops: hand-worked values") {
  const A x = A::iota({2, 3});
  CHECK(max_abs_diff(tg::transpose(x), A({3, 2}, {0, 3, 1, 4, 2, 5})) == 0);
  CHECK(max_abs_diff(tg::reshape(x, {3, -1}), A({3, 2}, {0, 1, 2, 3, 4, 5})) == 0);
  CHECK(max_abs_diff(tg::slice(x, 1, 0, 3, 2), A({2, 2}, {0, 2, 3, 5})) == 0);
  CHECK(max_abs_diff(tg::slice(x, -1, -2, 3), A({2, 2}, {1, 2, 4, 5})) == 0);
  CHECK(max_abs_diff(tg::concat<double>({x, A::ones({2, 1})}, 1), A({2, 4}, {0, 1, 2, 1, 3, 4, 5, 1})) == 0);
  CHECK(max_abs_diff(tg::concat<double>({x, x}, 0), A({4, 3}, {0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5})) == 0);
  CHECK(max_abs_diff(tg::broadcast_to(A({3}, {1, 2, 3}), {2, 3}), A({2, 3}, {1, 2, 3, 1, 2, 3})) == 0);
  const A y = A::iota({2, 3, 4});
  const A p = tg::permute(y, {2, 0, 1});
  CHECK(p.shape() == tg::Shape{4, 2, 3});
  CHECK(p(3, 1, 2) == y(1, 2, 3));
}

TEST_CASE("shape ops: the triple") {
  for (std::uint64_t seed : {1u, 2u}) {
    const A x = A::random_uniform({2, 3, 4}, -1, 1, seed), x2 = A::random_uniform({2, 3, 4}, -1, 1, seed + 7);
    const A y = A::random_uniform({2, 5, 4}, -1, 1, seed + 1), y2 = A::random_uniform({2, 5, 4}, -1, 1, seed + 8);
    check_op([](const T& v) { return tg::reshape(v, {4, -1}); }, std::tuple{x}, std::tuple{x2});
    check_op([](const T& v) { return tg::permute(v, {1, 2, 0}); }, std::tuple{x}, std::tuple{x2});
    check_op([](const T& v) { return tg::transpose(v); }, std::tuple{x}, std::tuple{x2});
    check_op([](const T& v) { return tg::slice(v, 2, 1, 4, 2); }, std::tuple{x}, std::tuple{x2});
    check_op([](const T& v, const T& w) { return tg::concat<double>({v, w, v}, 1); }, std::tuple{x, y}, std::tuple{x2, y2});
    const A b = A::random_uniform({3, 1}, -1, 1, seed), b2 = A::random_uniform({3, 1}, -1, 1, seed + 3);
    check_op([](const T& v) { return tg::broadcast_to(v, {2, 3, 4}); }, std::tuple{b}, std::tuple{b2});
  }
}

TEST_CASE("reductions and shape ops: dot-product test on realistic shapes") {
  const A x = A::random_uniform({16, 32, 24}, -1, 1, 3);
  check_dot_product([](const T& v) { return tg::sum(v, {0, 2}) + tg::mean(v, {0, 2}) + tg::max(v, {0, 2}) + tg::min(v, {0, 2}); }, x);
  check_dot_product([](const T& v) { return tg::transpose(tg::slice(tg::permute(v, {2, 0, 1}), 0, 3, 20, 3)); }, x);
  check_dot_product([](const T& v) { return tg::concat<double>({v, tg::reshape(v, {16, 32, 24})}, 2); }, x);
  check_dot_product([](const T& v) { return tg::broadcast_to(tg::sum(v, {1}, true), {16, 32, 24}) * v; }, x);
}

TEST_CASE("reductions and shape ops: bad input is a clear tg::Error") {
  const A x = A::iota({2, 3});
  CHECK_THROWS_WITH_AS(tg::sum(x, {2}), doctest::Contains("sum: axis (2) out of range for rank 2"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::sum(x, {0, -2}), doctest::Contains("given twice"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::max(A({0, 3})), doctest::Contains("max: reducing an empty extent"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::mean(A({0})), doctest::Contains("mean: reducing an empty extent"), tg::Error);
  CHECK(tg::sum(A({0})).item() == 0);  // an empty sum is 0
  CHECK_THROWS_WITH_AS(tg::reshape(x, {4, 2}), doctest::Contains("reshape: target shape (4,2) has 8 elements"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::permute(x, {0, 0}), doctest::Contains("permute: axes [0,0] are not a permutation"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::transpose(A({3})), doctest::Contains("transpose: input has rank 1"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::slice(x, 1, 0, 4), doctest::Contains("slice: range [0, 4) out of bounds"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::slice(x, 1, 0, 2, 0), doctest::Contains("slice: step (0) must be >= 1"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::concat<double>({x, A::ones({3, 3})}, 1), doctest::Contains("concat: input 1 has shape (3,3)"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::broadcast_to(x, {3, 3}), doctest::Contains("broadcast_to"), tg::Error);
}
