// powergrad host backend: the matrix parts of the PGT linear cross-entropy (docs/design.md §2.6):
// the three GEMMs through a CBLAS (OpenBLAS by default), conversions of fp16/bf16 blocks to and from
// fp32 around them, the bias broadcast and the fixed-order bias-gradient sums. The chunk loop and the
// row op (host::xent_run through xent.hpp) are driven by linear_xent.hpp.
//
// BLAS is an optional dependency: when the build defines POWERGRAD_HAS_BLAS (CMake does when
// FindBLAS finds one, and links it into powergrad::powergrad), <cblas.h> is used; without it
// host_blas_available() is false and the host op returns kUnsupported.
#pragma once

#include <cstdint>
#include <cstring>

#include "powergrad/config.hpp"
#include "powergrad/math/dtype.hpp"

#if defined(POWERGRAD_HAS_BLAS) && POWERGRAD_HAS_BLAS
#include <cblas.h>
#define POWERGRAD_HOST_BLAS 1
#else
#define POWERGRAD_HOST_BLAS 0
#endif

POWERGRAD_NS_BEGIN
namespace host {

constexpr bool host_blas_available() { return POWERGRAD_HOST_BLAS != 0; }

// Row-major C[m x n] = alpha op(A) op(B) + beta C, fp32, with op = transpose when trans_* is set.
// Dimensions and strides have been checked to fit in int by the caller.
inline void sgemm_rm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                     const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
#if POWERGRAD_HOST_BLAS
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), 1.f, a, static_cast<int>(lda), b,
              static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
#else
  (void)trans_a, (void)trans_b, (void)m, (void)n, (void)k, (void)a, (void)lda, (void)b, (void)ldb, (void)beta,
      (void)c, (void)ldc;
#endif
}

// dst[r][c] = float(src[r][c]) for a [rows x cols] block.
template <class T>
void block_to_float(const T* src, int64_t ld_src, int64_t rows, int64_t cols, float* dst, int64_t ld_dst) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* s = src + r * ld_src;
    float* d = dst + r * ld_dst;
    for (int64_t c = 0; c < cols; ++c) d[c] = to_float(s[c]);
  }
}

// dst[r][c] = T(src[r][c] (+ dst[r][c] when accumulate)), rounded once.
template <class T>
void block_from_float(const float* src, int64_t ld_src, int64_t rows, int64_t cols, T* dst, int64_t ld_dst,
                      bool accumulate) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = src + r * ld_src;
    T* d = dst + r * ld_dst;
    for (int64_t c = 0; c < cols; ++c) d[c] = from_float<T>(accumulate ? to_float(d[c]) + s[c] : s[c]);
  }
}

// Every row of the [rows x cols] block z set to the bias (or to 0 without one).
template <class T>
void fill_bias_rows(const T* bias, int64_t rows, int64_t cols, float* z, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r) {
    float* d = z + r * ld;
    if (bias) {
      for (int64_t c = 0; c < cols; ++c) d[c] = to_float(bias[c]);
    } else {
      std::memset(d, 0, static_cast<size_t>(cols) * sizeof(float));
    }
  }
}

// acc[c] += g[r][c] for r = 0, 1, ... in row order: the bias gradient's sum over rows is taken row
// after row, so it does not depend on how the rows were cut into chunks.
inline void add_column_sums(const float* g, int64_t ld, int64_t rows, int64_t cols, float* acc) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = g + r * ld;
    for (int64_t c = 0; c < cols; ++c) acc[c] += s[c];
  }
}

}  // namespace host
POWERGRAD_NS_END
