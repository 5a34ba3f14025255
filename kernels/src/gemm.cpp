#include "tapegrad/kernels/gemm.hpp"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <span>

#include "tapegrad/kernels/scratch.hpp"
#include "tapegrad/kernels/threads.hpp"

namespace tg::kernels {
namespace {
CBLAS_TRANSPOSE flag(bool t) { return t ? CblasTrans : CblasNoTrans; }
blasint bi(std::int64_t v) { return static_cast<blasint>(v); }

void openblas(bool ta, bool tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a, std::int64_t lda,
              const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
  cblas_sgemm(CblasRowMajor, flag(ta), flag(tb), bi(m), bi(n), bi(k), alpha, a, bi(lda), b, bi(ldb), beta, c, bi(ldc));
}
void openblas(bool ta, bool tb, std::int64_t m, std::int64_t n, std::int64_t k, double alpha, const double* a,
              std::int64_t lda, const double* b, std::int64_t ldb, double beta, double* c, std::int64_t ldc) {
  cblas_dgemm(CblasRowMajor, flag(ta), flag(tb), bi(m), bi(n), bi(k), alpha, a, bi(lda), b, bi(ldb), beta, c, bi(ldc));
}

// Note [OpenBLAS small-matrix kernels]: on AVX-512 machines (SkylakeX,
// Cooper Lake) OpenBLAS runs a GEMM of at most 100^3 multiply-adds with its
// small-matrix kernels, and the one for two untransposed operands mallocs, on
// every call, a packed copy of the rows of its column-major C left over after
// its blocks of 8 (double) or 16 (float) rows: our row-major C's last n mod 16
// columns. A replayed step is to make no heap allocation (the allocation test
// caught it: a (4096, 16) . (16, 10) block). So such a GEMM gives OpenBLAS the
// first 16 * floor(n / 16) columns, and the rest (at most 15 columns of at
// most 100^3 multiply-adds) go to the reference loop.
constexpr double kSmallMatrixMacs = 1e6;
constexpr std::int64_t kSmallMatrixColumns = 16;

// One single-threaded GEMM (Note [OpenBLAS small-matrix kernels]).
template <class T>
void blas(bool ta, bool tb, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a, std::int64_t lda,
          const T* b, std::int64_t ldb, T beta, T* c, std::int64_t ldc) {
  const std::int64_t wide = n / kSmallMatrixColumns * kSmallMatrixColumns;
  if (ta || tb || wide == n || double(m) * double(n) * double(k) > kSmallMatrixMacs)
    return openblas(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  if (wide > 0) openblas(false, false, m, wide, k, alpha, a, lda, b, ldb, beta, c, ldc);
  // C[:, wide:] (m, n - wide) = alpha * A (m, k) . B[:, wide:] (k, n - wide) + beta * C[:, wide:]
  gemm_reference(false, false, m, n - wide, k, alpha, a, lda, b + wide, ldb, beta, c + wide, ldc);
}

// Note [GEMM split over our threads]: OpenBLAS's threaded driver mallocs a job
// table on every call it threads (above m*n*k = 262144), three times per LeNet
// step; a replayed step is to make no heap allocation. So a GEMM that big is
// split here into one block of C's rows (or columns, whichever is longer) per
// OpenMP thread, and each thread calls OpenBLAS, which runs single-threaded
// inside a parallel region. Blocks are multiples of 16 rows/columns (whole
// micro-tiles). Smaller GEMMs, and any called from inside a parallel region,
// go to OpenBLAS as they are (it runs those on one thread). A big GEMM whose C
// has fewer than 32 rows and columns (a weight gradient summed over a batch of
// pixels) is split over k instead (split_inner).
constexpr double kSplitMacs = 65536.0;

// Note [GEMM split over k]: each thread multiplies one slice of the inner
// dimension into its own partial C (m x n, from the scratch stack); the partials
// are then added in slice order, so the result does not depend on timing.
//   partial[p] (m, n) = alpha * op(A)[:, slice p] (m, len) . op(B)[slice p, :] (len, n)
//   C (m, n) = beta * C + sum over p of partial[p]
template <class T>
void split_inner(int threads, bool ta, bool tb, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a,
                 std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* c, std::int64_t ldc) {
  const std::int64_t slice = ((k + threads - 1) / threads + 15) / 16 * 16;
  const std::int64_t parts = (k + slice - 1) / slice;
  ScratchScope scope;
  const std::span<T> partial = scope.take<T>(parts * m * n);
#pragma omp parallel for schedule(static, 1) num_threads(threads)
  for (std::int64_t p = 0; p < parts; ++p) {
    const std::int64_t begin = p * slice, len = std::min(slice, k - begin);
    blas(ta, tb, m, n, len, alpha, ta ? a + begin * lda : a + begin, lda, tb ? b + begin : b + begin * ldb, ldb, T(0),
         partial.data() + p * m * n, n);
  }
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      T sum = beta == T(0) ? T(0) : beta * c[i * ldc + j];  // beta 0: C is not read (it may hold garbage)
      for (std::int64_t p = 0; p < parts; ++p) sum += partial[static_cast<std::size_t>((p * m + i) * n + j)];
      c[i * ldc + j] = sum;
    }
}

template <class T>
void split_gemm(bool ta, bool tb, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a, std::int64_t lda,
                const T* b, std::int64_t ldb, T beta, T* c, std::int64_t ldc) {
  const int threads = omp_in_parallel() ? 1 : tg::num_threads();
  const bool by_rows = m >= n;
  const std::int64_t extent = by_rows ? m : n;
  const std::int64_t block = (extent + threads - 1) / threads;
  const std::int64_t chunk = (block + 15) / 16 * 16;
  if (threads <= 1 || double(m) * double(n) * double(k) <= kSplitMacs)
    return blas(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  if (extent < 32) {
    if (k < 64 * threads) return blas(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return split_inner(threads, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
  const std::int64_t parts = (extent + chunk - 1) / chunk;
#pragma omp parallel for schedule(static, 1) num_threads(threads)
  for (std::int64_t part = 0; part < parts; ++part) {
    const std::int64_t begin = part * chunk, len = std::min(chunk, extent - begin);
    if (by_rows)  // C rows [begin, begin + len) = op(A) rows . op(B)
      blas(ta, tb, len, n, k, alpha, ta ? a + begin : a + begin * lda, lda, b, ldb, beta, c + begin * ldc, ldc);
    else  // C columns [begin, begin + len) = op(A) . op(B) columns
      blas(ta, tb, m, len, k, alpha, a, lda, tb ? b + begin * ldb : b + begin, ldb, beta, c + begin, ldc);
  }
}
}  // namespace

void gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
          std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
  if (m == 0 || n == 0) return;
  split_gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, double alpha, const double* a,
          std::int64_t lda, const double* b, std::int64_t ldb, double beta, double* c, std::int64_t ldc) {
  if (m == 0 || n == 0) return;
  split_gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void set_blas_threads(int threads) {
  if (threads > 0) openblas_set_num_threads(threads);
}

}  // namespace tg::kernels
