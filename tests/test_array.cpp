#include <doctest/doctest.h>

#include <tapegrad/kernels/sanitizer.hpp>
#include <tapegrad/tapegrad.hpp>

using tg::Array;

TEST_CASE("Array: construction, access, shape queries") {
  Array<double> w({3, 3}, {1, 2, 1, 2, 4, 2, 1, 2, 1});
  CHECK(w.rank() == 2);
  CHECK(w.size() == 9);
  CHECK(w.shape() == tg::Shape{3, 3});
  CHECK(w(1, 1) == 4);
  w(2, 0) = 7;
  CHECK(w.data()[6] == 7);
  CHECK(reinterpret_cast<std::uintptr_t>(w.data()) % 64 == 0);

  auto s = Array<float>::scalar(2.5f);
  CHECK(s.rank() == 0);
  CHECK(s.size() == 1);
  CHECK(s.item() == 2.5f);
  CHECK(s() == 2.5f);

  CHECK(Array<double>::zeros({2, 2})(1, 1) == 0);
  CHECK(Array<double>::ones({2})(1) == 1);
  CHECK(Array<double>::full({2}, 3.0)(0) == 3.0);
  CHECK(Array<double>::iota({4})(3) == 3.0);
  CHECK(Array<double>({2, 0}).size() == 0);
}

TEST_CASE("Array: seeded random is reproducible and in range") {
  auto a = Array<double>::random_uniform({100}, -1.0, 1.0, 7);
  auto b = Array<double>::random_uniform({100}, -1.0, 1.0, 7);
  auto c = Array<double>::random_uniform({100}, -1.0, 1.0, 8);
  CHECK(std::equal(a.begin(), a.end(), b.begin()));
  CHECK_FALSE(std::equal(a.begin(), a.end(), c.begin()));
  for (double v : a) CHECK((v >= -1.0 && v <= 1.0));
  auto n = Array<double>::random_normal({20000}, 1.0, 2.0, 3);
  double mean = 0;
  for (double v : n) mean += v / n.size();
  CHECK(mean == doctest::Approx(1.0).epsilon(0.05));
}

TEST_CASE("Array: reshape, including an inferred -1") {
  auto a = Array<double>::iota({2, 3});
  auto b = a.reshape({3, -1});
  CHECK(b.shape() == tg::Shape{3, 2});
  CHECK(b(2, 1) == 5);
  CHECK_THROWS_AS(a.reshape({4, 2}), tg::Error);
  CHECK_THROWS_AS(a.reshape({-1, -1}), tg::Error);
}

TEST_CASE("Array: printing with fmt") {
  CHECK(fmt::format("{}", Array<double>::iota({2, 2})) == "[[0, 1], [2, 3]]");
  CHECK(fmt::format("{}", Array<double>::scalar(1.5)) == "1.5");
  CHECK(tg::to_string(tg::Shape{2, 3}) == "(2,3)");
}

TEST_CASE("Array: bad input is a clear tg::Error") {
  CHECK_THROWS_WITH_AS(Array<double>({2, 2}, {1, 2, 3}), doctest::Contains("Array: value count (3)"), tg::Error);
  CHECK_THROWS_WITH_AS(Array<double>::iota({2, 2})(2, 0), doctest::Contains("index (2) out of range"), tg::Error);
  CHECK_THROWS_WITH_AS(Array<double>::iota({2, 2})(1), doctest::Contains("got 1 indices"), tg::Error);
  CHECK_THROWS_AS(Array<double>::iota({2}).item(), tg::Error);
  CHECK_THROWS_AS(Array<double>({-1, 2}), tg::Error);
}

TEST_CASE("Shape: ranks beyond the inline capacity") {
  tg::Shape big{1, 2, 1, 2, 1, 2, 1, 2};
  CHECK(big.rank() == 8);
  CHECK(big.size() == 16);
  tg::Shape copy = big;
  CHECK(copy == big);
  auto a = Array<double>::iota(big);
  CHECK(a(0, 1, 0, 1, 0, 1, 0, 1) == 15);
}

TEST_CASE("gemm: OpenBLAS matches the reference loop, every transpose combination") {
  const std::int64_t m = 5, n = 4, k = 3;
  auto a = Array<double>::random_uniform({m * k}, -1.0, 1.0, 1);
  auto b = Array<double>::random_uniform({k * n}, -1.0, 1.0, 2);
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      Array<double> c1 = Array<double>::ones({m, n}), c2 = Array<double>::ones({m, n});
      const std::int64_t lda = ta ? m : k, ldb = tb ? k : n;
      tg::kernels::gemm(ta, tb, m, n, k, 2.0, a.data(), lda, b.data(), ldb, 0.5, c1.data(), n);
      tg::kernels::gemm_reference(ta, tb, m, n, k, 2.0, a.data(), lda, b.data(), ldb, 0.5, c2.data(), n);
      for (std::int64_t i = 0; i < m * n; ++i) CHECK(c1.data()[i] == doctest::Approx(c2.data()[i]).epsilon(1e-12));
    }
}

TEST_CASE("gemm: a small GEMM's last n mod 16 columns, computed outside OpenBLAS, match the reference, float and double") {
  // Note [OpenBLAS small-matrix kernels]: untransposed operands, m*n*k <= 100^3, n not a multiple of 16.
  auto worst_error = [](auto value, std::int64_t m, std::int64_t n, std::int64_t k, auto beta) {
    using V = decltype(value);
    const std::int64_t lda = k + 2, ldb = n + 3, ldc = n + 1;
    auto a = tg::Array<V>::random_uniform({m * lda}, -1, 1, 1), b = tg::Array<V>::random_uniform({std::max<std::int64_t>(k, 1) * ldb}, -1, 1, 2);
    // beta 0: C is never read, so NaN there must not leak.
    tg::Array<V> c1 = beta == V(0) ? tg::Array<V>::full({m * ldc}, static_cast<V>(std::nan(""))) : tg::Array<V>::random_uniform({m * ldc}, -1, 1, 3);
    tg::Array<V> c2 = beta == V(0) ? tg::Array<V>::zeros({m * ldc}) : c1;
    tg::kernels::gemm(false, false, m, n, k, V(1.5), a.data(), lda, b.data(), ldb, V(beta), c1.data(), ldc);
    tg::kernels::gemm_reference(false, false, m, n, k, V(1.5), a.data(), lda, b.data(), ldb, V(beta), c2.data(), ldc);
    double worst = 0;
    for (std::int64_t i = 0; i < m; ++i)
      for (std::int64_t j = 0; j < n; ++j) worst = std::max(worst, double(std::abs(c1.data()[i * ldc + j] - c2.data()[i * ldc + j])));
    return worst;
  };
  for (std::int64_t n : {1, 10, 17, 31, 47})
    for (std::int64_t k : {0, 5, 40}) {
      CAPTURE(n);
      CAPTURE(k);
      CHECK(worst_error(0.0, 37, n, k, 0.0) <= 1e-12);
      CHECK(worst_error(0.0, 37, n, k, 0.5) <= 1e-12);
      CHECK(worst_error(0.0f, 37, n, k, 0.5f) <= 1e-4f);
    }
}

TEST_CASE("gemm: GEMMs split over threads (by rows and by columns) match the reference, padded leading dimensions") {
  // Note [GEMM split over our threads]: m*n*k above 65536 with 32+ rows or columns;
  // fewer rows and columns, split over k (Note [GEMM split over k]): the last three.
  struct Case {
    std::int64_t m, n, k;
  };
  const int threads_before = tg::max_threads();
  tg::set_num_threads(3);  // uneven blocks, whatever the machine's cores
  for (const Case& cs : {Case{70, 33, 40}, Case{33, 97, 41}, Case{150, 150, 8}, Case{20, 20, 400}, Case{8, 27, 5001}, Case{1, 31, 777}})
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        CAPTURE(cs.m);
        CAPTURE(cs.n);
        CAPTURE(ta);
        CAPTURE(tb);
        const std::int64_t m = cs.m, n = cs.n, k = cs.k, pad = 3;
        const std::int64_t lda = (ta ? m : k) + pad, ldb = (tb ? k : n) + pad, ldc = n + pad;
        auto a = Array<double>::random_uniform({(ta ? k : m) * lda}, -1.0, 1.0, 3);
        auto b = Array<double>::random_uniform({(tb ? n : k) * ldb}, -1.0, 1.0, 4);
        Array<double> c1 = Array<double>::random_uniform({m * ldc}, -1.0, 1.0, 5), c2 = c1;
        tg::kernels::gemm(ta, tb, m, n, k, 1.5, a.data(), lda, b.data(), ldb, 0.5, c1.data(), ldc);
        tg::kernels::gemm_reference(ta, tb, m, n, k, 1.5, a.data(), lda, b.data(), ldb, 0.5, c2.data(), ldc);
        double worst = 0;
        for (std::int64_t i = 0; i < m; ++i)
          for (std::int64_t j = 0; j < n; ++j) worst = std::max(worst, std::abs(c1.data()[i * ldc + j] - c2.data()[i * ldc + j]));
        CHECK(worst <= 1e-11);
        for (std::int64_t i = 0; i < m; ++i)  // the padding columns of C are untouched
          for (std::int64_t j = n; j < ldc; ++j) CHECK(c1.data()[i * ldc + j] == c2.data()[i * ldc + j]);
        // beta 0: C is written, never read (NaN there must not leak), and twice gives the same bits.
        Array<double> c3 = Array<double>::full({m * ldc}, std::nan("")), c4 = Array<double>::zeros({m * ldc}), c5 = c3;
        tg::kernels::gemm(ta, tb, m, n, k, 1.5, a.data(), lda, b.data(), ldb, 0.0, c3.data(), ldc);
        tg::kernels::gemm(ta, tb, m, n, k, 1.5, a.data(), lda, b.data(), ldb, 0.0, c5.data(), ldc);
        tg::kernels::gemm_reference(ta, tb, m, n, k, 1.5, a.data(), lda, b.data(), ldb, 0.0, c4.data(), ldc);
        double worst0 = 0;
        for (std::int64_t i = 0; i < m; ++i)
          for (std::int64_t j = 0; j < n; ++j) {
            worst0 = std::max(worst0, std::abs(c3.data()[i * ldc + j] - c4.data()[i * ldc + j]));
            CHECK(c3.data()[i * ldc + j] == c5.data()[i * ldc + j]);
          }
        CHECK(worst0 <= 1e-11);
      }
  tg::set_num_threads(threads_before);
}

TEST_CASE("Array: large blocks are reused after they are freed, within the cache limit") {
  const tg::Shape big{512, 1024};  // 4 MiB of double
  const double* first = nullptr;
  {
    const auto a = tg::Array<double>::zeros(big);
    first = a.data();
  }
  const auto b = tg::Array<double>::ones(big);
#if !TG_ADDRESS_SANITIZER
  CHECK(b.data() == first);  // the freed block came back
#endif
  CHECK(b(511, 1023) == 1.0);
  tg::set_array_cache_limit(0);  // off: nothing is kept
  {
    const auto c = tg::Array<double>::zeros(big);
    CHECK(c(0, 0) == 0.0);
  }
  tg::set_array_cache_limit(std::size_t(256) << 20);
}
