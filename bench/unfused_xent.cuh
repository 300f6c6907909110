// powergrad benchmarks: the paper's PGT chain as separate, plain CUDA kernels — the unfused
// baseline that the fused op is compared with. This is what an eager framework runs for
// softmax -> pow(alpha) -> normalise -> subtract q: each step a pass over device memory, the
// intermediate p stored in the tensor's dtype. Deliberately simple (scalar, coalesced accesses,
// a block per row for row reductions); it is a baseline, not a tuned kernel.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "powergrad/math/dtype.hpp"

namespace pgbench {
namespace unfused {

constexpr int kThreads = 256;

__device__ inline float block_reduce(float v, bool is_max, float* smem) {
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, w) : v + w;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // smem may still be read from a previous reduction
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  v = lane < kThreads / 32 ? smem[lane] : (is_max ? -INFINITY : 0.f);
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, w) : v + w;
  }
  return v;
}

// Step 1: row max and log-sum-exp (a block per row); row loss = lse - z_y.
template <class T>
__global__ void __launch_bounds__(kThreads) row_lse(const T* z, const int64_t* y, int64_t rows, int64_t cols,
                                                    float* lse, float* row_loss) {
  __shared__ float smem[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* zr = z + r * cols;
    float m = -INFINITY;
    for (int64_t c = threadIdx.x; c < cols; c += kThreads) m = fmaxf(m, powergrad::to_float(zr[c]));
    m = block_reduce(m, true, smem);
    float s = 0.f;
    for (int64_t c = threadIdx.x; c < cols; c += kThreads) s += __expf(powergrad::to_float(zr[c]) - m);
    s = block_reduce(s, false, smem);
    if (threadIdx.x == 0) {
      const float l = m + __logf(s);
      lse[r] = l;
      row_loss[r] = l - powergrad::to_float(zr[y[r]]);
    }
  }
}

// Steps 2, 3, 5 are elementwise: blockIdx.y walks rows, blockIdx.x the columns of a row.
enum class Elementwise { kSoftmax, kPow, kSubtract };

template <class T, Elementwise OP>
__global__ void __launch_bounds__(kThreads) elementwise(const T* in, T* out, const float* lse, const int64_t* y,
                                                        int64_t rows, int64_t cols, float alpha, float g) {
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    for (int64_t c = blockIdx.x * int64_t(kThreads) + threadIdx.x; c < cols; c += int64_t(gridDim.x) * kThreads) {
      const int64_t i = r * cols + c;
      const float v = powergrad::to_float(in[i]);
      float o;
      if (OP == Elementwise::kSoftmax) o = __expf(v - lse[r]);
      if (OP == Elementwise::kPow) o = __powf(v, alpha);
      if (OP == Elementwise::kSubtract) o = g * (v - (c == y[r] ? 1.f : 0.f));
      out[i] = powergrad::from_float<T>(o);
    }
  }
}

// Step 4: p <- p / sum_row(p) (a block per row: one read to sum, one read + write to divide).
template <class T>
__global__ void __launch_bounds__(kThreads) normalise(T* p, int64_t rows, int64_t cols) {
  __shared__ float smem[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    T* pr = p + r * cols;
    float s = 0.f;
    for (int64_t c = threadIdx.x; c < cols; c += kThreads) s += powergrad::to_float(pr[c]);
    const float inv = 1.f / block_reduce(s, false, smem);
    for (int64_t c = threadIdx.x; c < cols; c += kThreads)
      pr[c] = powergrad::from_float<T>(powergrad::to_float(pr[c]) * inv);
  }
}

// The whole chain, out of place: z -> p (the gradient, mean reduction). lse and row_loss hold
// `rows` floats each. Five launches.
template <class T>
cudaError_t chain(const T* z, T* p, const int64_t* y, int64_t rows, int64_t cols, float alpha, float* lse,
                  float* row_loss, cudaStream_t stream) {
  const unsigned row_grid = static_cast<unsigned>(rows < (1 << 20) ? rows : (1 << 20));
  const int64_t xblocks = (cols + kThreads - 1) / kThreads;
  const dim3 ew_grid(static_cast<unsigned>(xblocks < 1024 ? xblocks : 1024),
                     static_cast<unsigned>(rows < 65535 ? rows : 65535));
  const float g = 1.f / static_cast<float>(rows);
  row_lse<T><<<row_grid, kThreads, 0, stream>>>(z, y, rows, cols, lse, row_loss);
  elementwise<T, Elementwise::kSoftmax><<<ew_grid, kThreads, 0, stream>>>(z, p, lse, y, rows, cols, alpha, g);
  elementwise<T, Elementwise::kPow><<<ew_grid, kThreads, 0, stream>>>(p, p, lse, y, rows, cols, alpha, g);
  normalise<T><<<row_grid, kThreads, 0, stream>>>(p, rows, cols);
  elementwise<T, Elementwise::kSubtract><<<ew_grid, kThreads, 0, stream>>>(p, p, lse, y, rows, cols, alpha, g);
  return cudaGetLastError();
}

}  // namespace unfused
}  // namespace pgbench
