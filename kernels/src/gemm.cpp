#include "tapegrad/kernels/gemm.hpp"

#include <cblas.h>
#include <omp.h>

#include <algorithm>

namespace tg::kernels {
namespace {
CBLAS_TRANSPOSE flag(bool t) { return t ? CblasTrans : CblasNoTrans; }
blasint bi(std::int64_t v) { return static_cast<blasint>(v); }

void blas(bool ta, bool tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a, std::int64_t lda,
          const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
  cblas_sgemm(CblasRowMajor, flag(ta), flag(tb), bi(m), bi(n), bi(k), alpha, a, bi(lda), b, bi(ldb), beta, c, bi(ldc));
}
void blas(bool ta, bool tb, std::int64_t m, std::int64_t n, std::int64_t k, double alpha, const double* a, std::int64_t lda,
          const double* b, std::int64_t ldb, double beta, double* c, std::int64_t ldc) {
  cblas_dgemm(CblasRowMajor, flag(ta), flag(tb), bi(m), bi(n), bi(k), alpha, a, bi(lda), b, bi(ldb), beta, c, bi(ldc));
}

// Note [GEMM split over our threads]: OpenBLAS's threaded driver mallocs a job
// table on every call it threads (above m*n*k = 262144), three times per LeNet
// step; a replayed step is to make no heap allocation. So a GEMM that big is
// split here into one block of C's rows (or columns, whichever is longer) per
// OpenMP thread, and each thread calls OpenBLAS, which runs single-threaded
// inside a parallel region. Blocks are multiples of 16 rows/columns (whole
// micro-tiles). Smaller GEMMs, and any called from inside a parallel region,
// go to OpenBLAS as they are (it runs those on one thread); so does a big GEMM
// whose C has fewer than 32 rows and columns (OpenBLAS threads it, over k).
constexpr double kSplitMacs = 65536.0;

template <class T>
void split_gemm(bool ta, bool tb, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a, std::int64_t lda,
                const T* b, std::int64_t ldb, T beta, T* c, std::int64_t ldc) {
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  const bool by_rows = m >= n;
  const std::int64_t extent = by_rows ? m : n;
  const std::int64_t block = (extent + threads - 1) / threads;
  const std::int64_t chunk = (block + 15) / 16 * 16;
  if (threads <= 1 || double(m) * double(n) * double(k) <= kSplitMacs || extent < 32)
    return blas(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
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
