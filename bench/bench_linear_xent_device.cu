// powergrad device benchmark: the PGT linear cross-entropy (forward + backward, all three gradients)
// against the floor of three bare cuBLAS GEMMs of the same sizes (z = h W^T, dh = G W, dW = G^T h:
// 3 x 2 N H V flop), both timed with CUDA events in the same process and run.
//
//   powergrad_bench_linear_device [N H V] [--budget-mb=M] [--reps=R] [--dtype=bf16|fp16|fp32]
//
// Default: bf16, N 8192, H 4096, V 128256 (the goal shape: ratio op / GEMMs <= 1.15), workspace
// budget 2048 MB (the chunk's fp32 logits and its low-precision G; dW is an fp32 output here). Prints
// one JSON object: times in ms, the ratio, TFLOP/s of both, the chunk and the workspace bytes (the
// op's peak extra memory, beyond its inputs and outputs). Exit 3 without a GPU.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "powergrad/linear_xent.hpp"

namespace {

namespace pg = powergrad;

#define CK(x)                                                                                       \
  do {                                                                                              \
    const cudaError_t e_ = (x);                                                                     \
    if (e_ != cudaSuccess) {                                                                        \
      std::fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_));                                 \
      std::exit(1);                                                                                 \
    }                                                                                               \
  } while (0)

template <class T>
__global__ void fill_kernel(T* p, size_t n, float scale, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    p[i] = pg::from_float<T>((static_cast<float>(x >> 40) / 16777216.f - 0.5f) * scale);
  }
}

__global__ void targets_kernel(int64_t* y, int64_t n, int64_t v) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = (i * 7919) % v;
}

template <class T>
int run(int64_t N, int64_t H, int64_t V, size_t budget, int reps) {
  T *h, *w, *dh, *zt;
  float* dw;
  int64_t* y;
  float* loss;
  CK(cudaMalloc(&h, N * H * sizeof(T)));
  CK(cudaMalloc(&w, V * H * sizeof(T)));
  CK(cudaMalloc(&dh, N * H * sizeof(T)));
  CK(cudaMalloc(&dw, V * H * sizeof(float)));
  CK(cudaMalloc(&y, N * sizeof(int64_t)));
  CK(cudaMalloc(&loss, sizeof(float)));
  fill_kernel<T><<<1024, 256>>>(h, N * H, 2.f, 1);
  fill_kernel<T><<<1024, 256>>>(w, V * H, 0.1f, 2);
  targets_kernel<<<256, 256>>>(y, N, V);
  cublasHandle_t handle;
  if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) return 1;
  cudaStream_t s;
  CK(cudaStreamCreate(&s));
  pg::LinearXentProblem<T, pg::ClassTargets<int64_t>> p;
  p.hidden = h, p.rows = N, p.hidden_dim = H, p.weight = w, p.vocab = V, p.targets = {y, -100}, p.alpha = 0.7f;
  pg::LinearXentOutputs<T> o;
  o.loss = loss, o.dhidden = dh, o.dweight = dw, o.dweight_type = pg::GradType::kFloat32;
  int64_t chunk = 0;
  size_t bytes = 0;
  if (pg::linear_xent_chunk_rows(pg::Backend::kCuda, p, o, budget, &chunk) != pg::Status::kSuccess ||
      pg::linear_xent_workspace_bytes(pg::Backend::kCuda, p, o, chunk, &bytes) != pg::Status::kSuccess) {
    std::fprintf(stderr, "%s\n", pg::last_error_message());
    return 1;
  }
  void* ws;
  CK(cudaMalloc(&ws, bytes));
  auto op = [&] {
    const pg::Status st = pg::linear_xent_forward_backward(pg::Backend::kCuda, p, pg::Upstream{}, o, ws, bytes, chunk,
                                                           handle, reinterpret_cast<pg::stream_t>(s));
    if (st != pg::Status::kSuccess) {
      std::fprintf(stderr, "op: %s\n", pg::last_error_message());
      std::exit(1);
    }
  };
  // The floor: three bare GEMMs of the same sizes, the full logits materialised in T.
  CK(cudaMalloc(&zt, static_cast<size_t>(N) * V * sizeof(T)));
  if (cublasSetStream(handle, s) != CUBLAS_STATUS_SUCCESS) return 1;
  auto gemms = [&] {
    if (pg::device::gemm_rm<T, T>(handle, false, true, N, V, H, h, H, w, H, 0.f, zt, V) != pg::Status::kSuccess ||
        pg::device::gemm_rm<T, T>(handle, false, false, N, H, V, zt, V, w, H, 0.f, dh, H) != pg::Status::kSuccess ||
        pg::device::gemm_rm<T, float>(handle, true, false, V, H, N, zt, V, h, H, 0.f, dw, H) != pg::Status::kSuccess) {
      std::fprintf(stderr, "gemm: %s\n", pg::last_error_message());
      std::exit(1);
    }
  };
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  auto time = [&](auto&& f) {
    f();  // warm-up
    CK(cudaStreamSynchronize(s));
    CK(cudaEventRecord(a, s));
    for (int i = 0; i < reps; ++i) f();
    CK(cudaEventRecord(b, s));
    CK(cudaEventSynchronize(b));
    float ms = 0.f;
    CK(cudaEventElapsedTime(&ms, a, b));
    return ms / reps;
  };
  // Interleaved, twice each, so that clocks and other load hit both alike; the best of the two.
  float t_op = time(op), t_gemm = time(gemms);
  t_op = std::min(t_op, time(op));
  t_gemm = std::min(t_gemm, time(gemms));
  const double flop = 3.0 * 2.0 * double(N) * double(H) * double(V);
  std::printf("{\"N\": %lld, \"H\": %lld, \"V\": %lld, \"chunk_rows\": %lld, \"workspace_bytes\": %zu, "
              "\"op_ms\": %.3f, \"three_gemms_ms\": %.3f, \"ratio_op_to_gemms\": %.4f, \"op_tflops\": %.1f, "
              "\"gemm_tflops\": %.1f}\n",
              (long long)N, (long long)H, (long long)V, (long long)chunk, bytes, t_op, t_gemm, t_op / t_gemm,
              flop / t_op / 1e9, flop / t_gemm / 1e9);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t dims[3] = {8192, 4096, 128256};
  int nd = 0;
  size_t budget = size_t{2048} << 20;
  int reps = 5;
  std::string dtype = "bf16";
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--budget-mb=", 12) == 0) budget = std::strtoull(argv[i] + 12, nullptr, 10) << 20;
    else if (std::strncmp(argv[i], "--reps=", 7) == 0) reps = std::atoi(argv[i] + 7);
    else if (std::strncmp(argv[i], "--dtype=", 8) == 0) dtype = argv[i] + 8;
    else if (nd < 3) dims[nd++] = std::atoll(argv[i]);
  }
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::fprintf(stderr, "no CUDA device\n");
    return 3;
  }
  if (dtype == "fp32") return run<float>(dims[0], dims[1], dims[2], budget, reps);
  if (dtype == "fp16") return run<pg::half_t>(dims[0], dims[1], dims[2], budget, reps);
  return run<pg::bfloat16_t>(dims[0], dims[1], dims[2], budget, reps);
}
