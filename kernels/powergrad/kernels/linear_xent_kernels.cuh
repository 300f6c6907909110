// powergrad device kernels: the parts of the PGT linear cross-entropy (docs/design.md §2.6) around
// the row op: the cuBLAS GEMMs (fp32 accumulation, the caller's handle and stream), the bias
// broadcast, fp32 <-> fp16/bf16 conversions, fixed-order column sums for the bias gradient, the
// count of valid rows and the chunk-loss sum. No floating-point atomics, no allocation, no host
// synchronisation. The chunk loop is in
// linear_xent.hpp. Needs cuBLAS (link CUDA::cublas).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "powergrad/config.hpp"
#include "powergrad/kernels/launch.cuh"
#include "powergrad/math/dtype.hpp"
#include "powergrad/status.hpp"
#include "powergrad/types.hpp"
#include "powergrad/xent_types.hpp"

POWERGRAD_NS_BEGIN
namespace device {

// The header of the linear op's workspace (the first 256 bytes).
struct LinearHeader {
  float g;          // kMean / kSum: scale * v / (kMean ? D : 1), the chunks' kSum upstream value
  float chunk_loss; // the current chunk's loss sum (the row op's kSum output)
  float chunk_z;    // the current chunk's z-loss sum (0 unless the z_loss output is asked for)
  float unused;
  int64_t n_valid;  // exact count of rows whose target is not ignore_index
  double denom;     // the kMean denominator D (docs/design.md §2.5)
  double loss_sum;  // sum of the chunk losses, in chunk order
  double z_sum;     // sum of the chunk z-losses, in chunk order
};
static_assert(sizeof(LinearHeader) <= 256, "the header is the workspace's first 256 bytes");

template <class T>
constexpr cudaDataType_t cuda_type() {
  if constexpr (std::is_same<T, float>::value) return CUDA_R_32F;
  else if constexpr (std::is_same<T, half_t>::value) return CUDA_R_16F;
  else return CUDA_R_16BF;
}

inline Status cublas_check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    return powergrad::detail::fail(Status::kCudaError, "%s failed (cublasStatus_t %d)", what, static_cast<int>(s));
  return Status::kSuccess;
}

inline Status cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) return powergrad::detail::fail(Status::kCudaError, "%s: %s", what, cudaGetErrorString(e));
  return Status::kSuccess;
}

// Runs the op's cuBLAS calls on `stream`: sets the caller's handle to it and gives the handle its
// previous stream back when the op returns. The handle's workspace is left as the caller set it
// (cublasSetWorkspace; PyTorch's handles have one), so nothing of the op's workspace outlives the call.
class CublasStreamScope {
 public:
  explicit CublasStreamScope(void* handle) : h_(static_cast<cublasHandle_t>(handle)) {}
  Status bind(stream_t stream) {
    POWERGRAD_TRY(cublas_check(cublasGetStream(h_, &prev_), "cublasGetStream"));
    bound_ = true;
    return cublas_check(cublasSetStream(h_, stream), "cublasSetStream");
  }
  ~CublasStreamScope() {
    if (bound_) (void)cublasSetStream(h_, prev_);
  }
  CublasStreamScope(const CublasStreamScope&) = delete;
  CublasStreamScope& operator=(const CublasStreamScope&) = delete;

 private:
  cublasHandle_t h_;
  cudaStream_t prev_ = nullptr;
  bool bound_ = false;
};

// Row-major C[m x n] = op(A) op(B) + beta C with fp32 accumulation (CUBLAS_COMPUTE_32F: no TF32),
// A and B of type TA, C of type TC. Row-major X is column-major X^T, so this is the column-major
// product C^T = op(B)^T op(A)^T.
template <class TA, class TC>
Status gemm_rm(void* handle, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const TA* a, int64_t lda,
               const TA* b, int64_t ldb, float beta, TC* c, int64_t ldc) {
  const float one = 1.f;
  return cublas_check(
      cublasGemmEx(static_cast<cublasHandle_t>(handle), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                   trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k),
                   &one, b, cuda_type<TA>(), static_cast<int>(ldb), a, cuda_type<TA>(), static_cast<int>(lda), &beta, c,
                   cuda_type<TC>(), static_cast<int>(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
      "cublasGemmEx");
}

constexpr int kLinearThreads = 256;

inline unsigned grid_for(int64_t n) {
  const int64_t b = (n + kLinearThreads - 1) / kLinearThreads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535 * 16 ? 65535 * 16 : b));
}

// z[r][c] = bias[c] (0 without a bias), for a [rows x cols] block of row stride ld.
template <class T>
__global__ void PG_KERNEL_VISIBILITY linear_fill_bias_kernel(const T* bias, int64_t rows, int64_t cols, float* z,
                                                             int64_t ld) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    z[r * ld + c] = bias ? to_float(bias[c]) : 0.f;
  }
}

// dst[r][c] = TO(src[r][c] (+ dst[r][c] when accumulate)), rounded once.
template <class FROM, class TO>
__global__ void PG_KERNEL_VISIBILITY linear_convert_kernel(const FROM* src, int64_t ld_src, int64_t rows, int64_t cols,
                                                           TO* dst, int64_t ld_dst, bool accumulate) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    float v = to_float(src[r * ld_src + c]);
    if (accumulate) v += to_float(dst[r * ld_dst + c]);
    dst[r * ld_dst + c] = from_float<TO>(v);
  }
}

// acc[c] += sum_r g[r][c], rows in order, a thread per column: deterministic.
template <int kUnused = 0>
__global__ void PG_KERNEL_VISIBILITY linear_column_sums_kernel(const float* g, int64_t ld, int64_t rows, int64_t cols,
                                                               float* acc) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < cols;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float s = acc[c];
    for (int64_t r = 0; r < rows; ++r) s += g[r * ld + c];
    acc[c] = s;
  }
}

// One block: n_valid (exact), the kMean denominator D (docs/design.md §2.5: n_valid, or with class
// weights the sum of the non-ignored targets' weights, read from the merged statistics in the split
// form; a class index out of [0, vocab) weighs 0; rows for dense targets), summed in double in a
// fixed tree order; the chunks' upstream value g; the loss accumulators reset.
template <class Tg>
__global__ void __launch_bounds__(1024) PG_KERNEL_VISIBILITY linear_begin_kernel(Tg targets, int64_t rows, Upstream up,
                                                                                 bool mean, const float* class_weight,
                                                                                 int64_t vocab, const RowStats* merged,
                                                                                 LinearHeader* h) {
  __shared__ long long part[1024];
  __shared__ double dpart[1024];
  long long n = 0;
  double d = 0.0;
  if constexpr (std::is_same<Tg, ClassTargets<int32_t>>::value || std::is_same<Tg, ClassTargets<int64_t>>::value) {
    for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
      const int64_t y = static_cast<int64_t>(targets.index[r]);
      if (y == targets.ignore_index) continue;
      ++n;
      if (!class_weight) d += 1.0;
      else if (merged) d += static_cast<double>(merged[r].w);
      else if (y >= 0 && y < vocab) d += static_cast<double>(class_weight[y]);
    }
  } else {
    n = threadIdx.x == 0 ? rows : 0;
    d = static_cast<double>(n);
  }
  part[threadIdx.x] = n;
  dpart[threadIdx.x] = d;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      part[threadIdx.x] += part[threadIdx.x + s];
      dpart[threadIdx.x] += dpart[threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const long long total = part[0];
    const double denom = dpart[0];
    const float v = up.values ? up.values[0] : 1.f;
    float g = up.scale * v;
    if (mean) g = denom > 0.0 ? g / static_cast<float>(denom) : 0.f;
    h->g = g;
    h->chunk_loss = 0.f;
    h->chunk_z = 0.f;
    h->n_valid = total;
    h->denom = denom;
    h->loss_sum = 0.0;
    h->z_sum = 0.0;
  }
}

template <int kUnused = 0>
__global__ void PG_KERNEL_VISIBILITY linear_add_chunk_loss_kernel(LinearHeader* h) {
  h->loss_sum += static_cast<double>(h->chunk_loss);
  h->z_sum += static_cast<double>(h->chunk_z);
}

template <int kUnused = 0>
__global__ void PG_KERNEL_VISIBILITY linear_final_loss_kernel(const LinearHeader* h, bool mean, float* loss,
                                                              float* z_loss) {
  double l = h->loss_sum, zl = h->z_sum;
  if (mean) {
    l = h->denom > 0.0 ? l / h->denom : 0.0;
    zl = h->denom > 0.0 ? zl / h->denom : 0.0;
  }
  if (loss) loss[0] = static_cast<float>(l);
  if (z_loss) z_loss[0] = static_cast<float>(zl);
}

// ---- launchers ----
template <class T>
Status fill_bias(const T* bias, int64_t rows, int64_t cols, float* z, int64_t ld, stream_t s) {
  linear_fill_bias_kernel<T><<<grid_for(rows * cols), kLinearThreads, 0, s>>>(bias, rows, cols, z, ld);
  return check_launch("linear_fill_bias_kernel");
}
template <class FROM, class TO>
Status convert(const FROM* src, int64_t ld_src, int64_t rows, int64_t cols, TO* dst, int64_t ld_dst, bool acc,
               stream_t s) {
  if (rows == 0 || cols == 0) return Status::kSuccess;
  linear_convert_kernel<FROM, TO><<<grid_for(rows * cols), kLinearThreads, 0, s>>>(src, ld_src, rows, cols, dst, ld_dst,
                                                                                  acc);
  return check_launch("linear_convert_kernel");
}
inline Status column_sums(const float* g, int64_t ld, int64_t rows, int64_t cols, float* acc, stream_t s) {
  linear_column_sums_kernel<><<<grid_for(cols), kLinearThreads, 0, s>>>(g, ld, rows, cols, acc);
  return check_launch("linear_column_sums_kernel");
}
template <class Tg>
Status linear_begin(const Tg& targets, int64_t rows, const Upstream& up, bool mean, const float* class_weight,
                    int64_t vocab, const RowStats* merged, LinearHeader* h, stream_t s) {
  linear_begin_kernel<Tg><<<1, 1024, 0, s>>>(targets, rows, up, mean, class_weight, vocab, merged, h);
  return check_launch("linear_begin_kernel");
}
inline Status add_chunk_loss(LinearHeader* h, stream_t s) {
  linear_add_chunk_loss_kernel<><<<1, 1, 0, s>>>(h);
  return check_launch("linear_add_chunk_loss_kernel");
}
inline Status final_loss(const LinearHeader* h, bool mean, float* loss, float* z_loss, stream_t s) {
  linear_final_loss_kernel<><<<1, 1, 0, s>>>(h, mean, loss, z_loss);
  return check_launch("linear_final_loss_kernel");
}
// Zeroes a strided [rows x cols] float block.
inline Status zero_block(float* p, int64_t rows, int64_t cols, int64_t ld, stream_t s) {
  return cuda_check(cudaMemset2DAsync(p, static_cast<size_t>(ld) * sizeof(float), 0, static_cast<size_t>(cols) * sizeof(float),
                                      static_cast<size_t>(rows), s),
                    "cudaMemset2DAsync");
}

}  // namespace device
POWERGRAD_NS_END
