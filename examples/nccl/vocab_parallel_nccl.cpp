// Vocab-parallel PGT cross-entropy in a C++ trainer that uses NCCL, through powergrad's C ABI
// (docs/design.md §2.3, the split form): every rank holds a column shard of the logits, computes its
// partial row statistics (pg_xent_shard_stats), exchanges them with ONE ncclAllGather (32 bytes per
// row per rank, whatever the vocabulary size), merges them in rank order (pg_xent_merge_stats: the
// same bits on every rank) and writes its shard's gradient and the loss (pg_xent_shard_apply).
//
// One process drives every visible GPU as one rank (ncclCommInitAll); with a single GPU it is one
// rank holding the whole vocabulary, which still exercises the whole sequence. The result is checked
// against the unsharded pg_xent_forward_backward, and the exchange is timed against the kernels.
// Without a GPU it says so and exits 0.
#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "powergrad/powergrad_c.h"

#define CHECK_CUDA(x)                                                                      \
  do {                                                                                     \
    cudaError_t e_ = (x);                                                                  \
    if (e_ != cudaSuccess) {                                                               \
      std::fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_));                       \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)
#define CHECK_NCCL(x)                                                                      \
  do {                                                                                     \
    ncclResult_t r_ = (x);                                                                 \
    if (r_ != ncclSuccess) {                                                               \
      std::fprintf(stderr, "%s: %s\n", #x, ncclGetErrorString(r_));                       \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)
#define CHECK_PG(x)                                                                        \
  do {                                                                                     \
    pg_status_t s_ = (x);                                                                  \
    if (s_ != PG_STATUS_SUCCESS) {                                                         \
      std::fprintf(stderr, "%s: %s (%s)\n", #x, pg_status_string(s_), pg_last_error());   \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

namespace {

constexpr int64_t kRows = 8192;
constexpr int64_t kVocab = 32000;
constexpr float kAlpha = 0.3f;

struct Rank {
  int device = 0;
  int64_t start = 0, width = 0;
  cudaStream_t stream = nullptr;
  ncclComm_t comm = nullptr;
  float *logits = nullptr, *grad = nullptr, *stats = nullptr, *parts = nullptr, *merged = nullptr, *loss = nullptr;
  int64_t* targets = nullptr;
  void* ws = nullptr;
  size_t ws_bytes = 0;
};

pg_xent_problem_t shard_problem(const Rank& r) {
  pg_xent_problem_t p{};
  p.struct_size = sizeof p;
  p.device = PG_DEVICE_CUDA;
  p.dtype = PG_DTYPE_FLOAT32;
  p.logits = r.logits;
  p.rows = kRows;
  p.cols = r.width;
  p.target_kind = PG_TARGET_INDEX_INT64;
  p.targets = r.targets;
  p.ignore_index = -100;
  p.alpha = kAlpha;
  p.reduction = PG_REDUCTION_MEAN;
  p.col_offset = r.start;
  p.total_cols = kVocab;
  return p;
}

}  // namespace

int main() {
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
    std::printf("vocab_parallel_nccl: no CUDA device visible; nothing to run (this example needs a GPU)\n");
    return 0;
  }
  std::vector<float> z(static_cast<size_t>(kRows * kVocab));
  std::vector<int64_t> y(kRows);
  for (size_t i = 0; i < z.size(); ++i) z[i] = 3.f * std::sin(0.37f * static_cast<float>(i % 100003));
  for (int64_t r = 0; r < kRows; ++r) y[static_cast<size_t>(r)] = (r * 7919) % kVocab;
  y[3] = -100;

  // Unequal shards: rank k gets a width proportional to k + 1.
  std::vector<Rank> ranks(static_cast<size_t>(ndev));
  int64_t start = 0, weight_sum = ndev * (ndev + 1) / 2;
  for (int k = 0; k < ndev; ++k) {
    Rank& r = ranks[static_cast<size_t>(k)];
    r.device = k;
    r.start = start;
    r.width = k == ndev - 1 ? kVocab - start : kVocab * (k + 1) / weight_sum;
    start += r.width;
  }
  std::vector<int> devs(static_cast<size_t>(ndev));
  for (int k = 0; k < ndev; ++k) devs[static_cast<size_t>(k)] = k;
  std::vector<ncclComm_t> comms(static_cast<size_t>(ndev));
  CHECK_NCCL(ncclCommInitAll(comms.data(), ndev, devs.data()));
  CHECK_PG(pg_xent_workspace_bytes(kRows, PG_REDUCTION_MEAN, &ranks[0].ws_bytes));
  for (Rank& r : ranks) {
    r.comm = comms[static_cast<size_t>(r.device)];
    r.ws_bytes = ranks[0].ws_bytes;
    CHECK_CUDA(cudaSetDevice(r.device));
    CHECK_CUDA(cudaStreamCreate(&r.stream));
    std::vector<float> shard(static_cast<size_t>(kRows * r.width));
    for (int64_t i = 0; i < kRows; ++i)
      std::copy_n(&z[static_cast<size_t>(i * kVocab + r.start)], r.width, &shard[static_cast<size_t>(i * r.width)]);
    CHECK_CUDA(cudaMalloc(&r.logits, shard.size() * sizeof(float)));
    CHECK_CUDA(cudaMalloc(&r.grad, shard.size() * sizeof(float)));
    CHECK_CUDA(cudaMalloc(&r.targets, kRows * sizeof(int64_t)));
    CHECK_CUDA(cudaMalloc(&r.stats, kRows * sizeof(pg_row_stats_t)));
    CHECK_CUDA(cudaMalloc(&r.parts, ndev * kRows * sizeof(pg_row_stats_t)));
    CHECK_CUDA(cudaMalloc(&r.merged, kRows * sizeof(pg_row_stats_t)));
    CHECK_CUDA(cudaMalloc(&r.loss, sizeof(float)));
    CHECK_CUDA(cudaMalloc(&r.ws, r.ws_bytes));
    CHECK_CUDA(cudaMemcpy(r.logits, shard.data(), shard.size() * sizeof(float), cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(r.targets, y.data(), kRows * sizeof(int64_t), cudaMemcpyHostToDevice));
  }

  std::vector<cudaEvent_t> ev(static_cast<size_t>(4 * ndev));
  for (int k = 0; k < ndev; ++k) {
    CHECK_CUDA(cudaSetDevice(k));
    for (int e = 0; e < 4; ++e) CHECK_CUDA(cudaEventCreate(&ev[static_cast<size_t>(4 * k + e)]));
  }
  for (int iter = 0; iter < 2; ++iter) {  // the second iteration is timed (the first warms up NCCL)
    for (int k = 0; k < ndev; ++k) {
      Rank& r = ranks[static_cast<size_t>(k)];
      CHECK_CUDA(cudaSetDevice(r.device));
      const pg_xent_problem_t p = shard_problem(r);
      CHECK_CUDA(cudaEventRecord(ev[static_cast<size_t>(4 * k)], r.stream));
      CHECK_PG(pg_xent_shard_stats(&p, reinterpret_cast<pg_row_stats_t*>(r.stats), r.stream));
      CHECK_CUDA(cudaEventRecord(ev[static_cast<size_t>(4 * k + 1)], r.stream));
    }
    CHECK_NCCL(ncclGroupStart());
    for (Rank& r : ranks)
      CHECK_NCCL(ncclAllGather(r.stats, r.parts, sizeof(pg_row_stats_t) * kRows, ncclUint8, r.comm, r.stream));
    CHECK_NCCL(ncclGroupEnd());
    for (int k = 0; k < ndev; ++k) {
      Rank& r = ranks[static_cast<size_t>(k)];
      CHECK_CUDA(cudaSetDevice(r.device));
      CHECK_CUDA(cudaEventRecord(ev[static_cast<size_t>(4 * k + 2)], r.stream));
      const pg_xent_problem_t p = shard_problem(r);
      CHECK_PG(pg_xent_merge_stats(PG_DEVICE_CUDA, reinterpret_cast<pg_row_stats_t*>(r.parts), ndev, kRows, kAlpha,
                                   reinterpret_cast<pg_row_stats_t*>(r.merged), r.stream));
      pg_xent_outputs_t out{};
      out.struct_size = sizeof out;
      out.loss = r.loss;
      out.dlogits = r.grad;
      CHECK_PG(pg_xent_shard_apply(&p, reinterpret_cast<pg_row_stats_t*>(r.merged), nullptr, &out, r.ws, r.ws_bytes,
                                   r.stream));
      CHECK_CUDA(cudaEventRecord(ev[static_cast<size_t>(4 * k + 3)], r.stream));
    }
    for (Rank& r : ranks) CHECK_CUDA(cudaStreamSynchronize(r.stream));
  }

  // Reference: the unsharded op on device 0.
  CHECK_CUDA(cudaSetDevice(0));
  float *dz = nullptr, *dg = nullptr, *dl = nullptr;
  int64_t* dy = nullptr;
  void* dws = nullptr;
  CHECK_CUDA(cudaMalloc(&dz, z.size() * sizeof(float)));
  CHECK_CUDA(cudaMalloc(&dg, z.size() * sizeof(float)));
  CHECK_CUDA(cudaMalloc(&dl, sizeof(float)));
  CHECK_CUDA(cudaMalloc(&dy, kRows * sizeof(int64_t)));
  CHECK_CUDA(cudaMalloc(&dws, ranks[0].ws_bytes));
  CHECK_CUDA(cudaMemcpy(dz, z.data(), z.size() * sizeof(float), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(dy, y.data(), kRows * sizeof(int64_t), cudaMemcpyHostToDevice));
  Rank whole;
  whole.logits = dz;
  whole.targets = dy;
  whole.width = kVocab;
  pg_xent_problem_t full = shard_problem(whole);
  full.col_offset = 0;
  full.total_cols = 0;
  pg_xent_outputs_t fo{};
  fo.struct_size = sizeof fo;
  fo.loss = dl;
  fo.dlogits = dg;
  CHECK_PG(pg_xent_forward_backward(&full, nullptr, &fo, dws, ranks[0].ws_bytes, nullptr));
  std::vector<float> ref_grad(z.size());
  float ref_loss = 0;
  CHECK_CUDA(cudaMemcpy(ref_grad.data(), dg, z.size() * sizeof(float), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(&ref_loss, dl, sizeof(float), cudaMemcpyDeviceToHost));

  double worst_grad = 0, worst_loss = 0;
  for (int k = 0; k < ndev; ++k) {
    Rank& r = ranks[static_cast<size_t>(k)];
    CHECK_CUDA(cudaSetDevice(r.device));
    std::vector<float> g(static_cast<size_t>(kRows * r.width));
    float l = 0;
    CHECK_CUDA(cudaMemcpy(g.data(), r.grad, g.size() * sizeof(float), cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaMemcpy(&l, r.loss, sizeof(float), cudaMemcpyDeviceToHost));
    worst_loss = std::max(worst_loss, std::fabs(static_cast<double>(l) - ref_loss) / std::fabs(ref_loss));
    for (int64_t i = 0; i < kRows; ++i)
      for (int64_t j = 0; j < r.width; ++j)
        worst_grad = std::max(worst_grad, std::fabs(static_cast<double>(g[static_cast<size_t>(i * r.width + j)]) -
                                                    ref_grad[static_cast<size_t>(i * kVocab + r.start + j)]));
    float t_stats = 0, t_exchange = 0, t_apply = 0;
    CHECK_CUDA(cudaEventElapsedTime(&t_stats, ev[static_cast<size_t>(4 * k)], ev[static_cast<size_t>(4 * k + 1)]));
    CHECK_CUDA(cudaEventElapsedTime(&t_exchange, ev[static_cast<size_t>(4 * k + 1)], ev[static_cast<size_t>(4 * k + 2)]));
    CHECK_CUDA(cudaEventElapsedTime(&t_apply, ev[static_cast<size_t>(4 * k + 2)], ev[static_cast<size_t>(4 * k + 3)]));
    std::printf("rank %d: columns [%lld, %lld)  stats %.3f ms  all_gather %.3f ms (%lld bytes in)  merge+apply %.3f ms\n",
                k, static_cast<long long>(r.start), static_cast<long long>(r.start + r.width), t_stats, t_exchange,
                static_cast<long long>(16 * kRows * (ndev - 1)), t_apply);
  }
  std::printf("vocab_parallel_nccl: %d rank(s), %lld x %lld fp32, alpha %.2f: loss %.6f, max |loss - unsharded| / loss "
              "%.2e, max |grad - unsharded| %.2e\n",
              ndev, static_cast<long long>(kRows), static_cast<long long>(kVocab), kAlpha, ref_loss, worst_loss, worst_grad);
  const bool ok = worst_loss < 1e-5 && worst_grad < 1e-6;
  for (ncclComm_t c : comms) ncclCommDestroy(c);
  std::printf("%s\n", ok ? "OK" : "MISMATCH");
  return ok ? 0 : 1;
}
