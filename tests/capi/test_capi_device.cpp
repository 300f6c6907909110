// The C ABI on the CUDA backend: forward_backward, backward (saved lse_alpha) and the split form
// on the device agree with the host backend within a per-dtype tolerance (the reduction orders
// differ, so not bitwise). Skips with a reason when no GPU is visible.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "powergrad/math/dtype.hpp"
#include "powergrad/powergrad_c.h"

namespace {

constexpr int64_t kRows = 33, kCols = 1000;

bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

template <class T>
struct Dev {
  T* p = nullptr;
  size_t n;
  explicit Dev(size_t count) : n(count) {
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&p), n * sizeof(T)), cudaSuccess);
    EXPECT_EQ(cudaMemset(p, 0xFF, n * sizeof(T)), cudaSuccess);  // NaN poison
  }
  Dev(const std::vector<T>& h) : Dev(h.size()) {
    EXPECT_EQ(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~Dev() { cudaFree(p); }
  std::vector<T> get() const {
    std::vector<T> h(n);
    EXPECT_EQ(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  }
};

template <class T>
void expect_close(const std::vector<T>& got, const std::vector<T>& want, double tol, const char* what) {
  ASSERT_EQ(got.size(), want.size());
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = powergrad::to_float(got[i]), w = powergrad::to_float(want[i]);
    if (!(std::fabs(g - w) <= tol * (1.0 + std::fabs(w))) && bad++ < 5)
      ADD_FAILURE() << what << "[" << i << "]: device " << g << ", host " << w;
  }
  EXPECT_EQ(bad, 0u) << what;
}

template <class T>
void check_device(pg_dtype_t dtype, double tol) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device visible";
  std::mt19937 rng(7);
  std::normal_distribution<float> z(0.f, 3.f);
  std::vector<T> logits(kRows * kCols);
  for (auto& x : logits) x = powergrad::from_float<T>(z(rng));
  std::vector<int64_t> targets(kRows);
  for (int64_t r = 0; r < kRows; ++r) targets[r] = r == 5 ? -100 : static_cast<int64_t>(rng() % kCols);

  pg_xent_problem_t p{};
  p.struct_size = sizeof p;
  p.dtype = dtype;
  p.rows = kRows;
  p.cols = kCols;
  p.target_kind = PG_TARGET_INDEX_INT64;
  p.ignore_index = -100;
  p.alpha = 0.7f;
  p.label_smoothing = 0.1f;
  p.reduction = PG_REDUCTION_MEAN;

  // host reference
  std::vector<float> h_loss(1), h_lse(kRows), h_lse_a(kRows);
  std::vector<T> h_grad(kRows * kCols);
  p.device = PG_DEVICE_HOST;
  p.logits = logits.data();
  p.targets = targets.data();
  pg_xent_outputs_t ho{sizeof ho, h_loss.data(), h_lse.data(), h_lse_a.data(), h_grad.data(), 0};
  ASSERT_EQ(pg_xent_forward_backward(&p, nullptr, &ho, nullptr, 0, nullptr), PG_STATUS_SUCCESS) << pg_last_error();

  // device
  Dev<T> d_logits(logits), d_grad(kRows * kCols), d_grad2(kRows * kCols);
  Dev<int64_t> d_targets(targets);
  Dev<float> d_loss(1), d_lse(kRows), d_lse_a(kRows);
  size_t ws_bytes = 0;
  ASSERT_EQ(pg_xent_workspace_bytes(kRows, PG_REDUCTION_MEAN, &ws_bytes), PG_STATUS_SUCCESS);
  Dev<float> d_ws(ws_bytes / sizeof(float) + 4);
  p.device = PG_DEVICE_CUDA;
  p.logits = d_logits.p;
  p.targets = d_targets.p;
  pg_xent_outputs_t dout{sizeof dout, d_loss.p, d_lse.p, d_lse_a.p, d_grad.p, 0};
  ASSERT_EQ(pg_xent_forward_backward(&p, nullptr, &dout, d_ws.p, ws_bytes, nullptr), PG_STATUS_SUCCESS)
      << pg_last_error();
  ASSERT_EQ(pg_xent_backward(&p, nullptr, d_lse_a.p, d_grad2.p, 0, d_ws.p, ws_bytes, nullptr), PG_STATUS_SUCCESS)
      << pg_last_error();
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  expect_close(d_loss.get(), h_loss, 1e-5, "loss");
  expect_close(d_lse.get(), h_lse, 1e-5, "lse");
  expect_close(d_lse_a.get(), h_lse_a, 1e-5, "lse_alpha");
  expect_close(d_grad.get(), h_grad, tol, "dlogits");
  expect_close(d_grad2.get(), h_grad, tol, "dlogits (backward, saved lse_alpha)");

  // split form: two shards' statistics merged on the device give the same gradient
  Dev<pg_row_stats_t> d_parts(2 * kRows), d_merged(kRows);
  const int64_t off[2] = {0, 400}, cols[2] = {400, kCols - 400};
  Dev<T> d_grad3(kRows * kCols);
  for (int s = 0; s < 2; ++s) {
    auto q = p;
    q.logits = d_logits.p + off[s];
    q.ld = kCols;
    q.cols = cols[s];
    q.col_offset = off[s];
    q.total_cols = kCols;
    ASSERT_EQ(pg_xent_shard_stats(&q, d_parts.p + s * kRows, nullptr), PG_STATUS_SUCCESS) << pg_last_error();
  }
  ASSERT_EQ(pg_xent_merge_stats(PG_DEVICE_CUDA, d_parts.p, 2, kRows, p.alpha, d_merged.p, nullptr), PG_STATUS_SUCCESS)
      << pg_last_error();
  for (int s = 0; s < 2; ++s) {
    auto q = p;
    q.logits = d_logits.p + off[s];
    q.ld = kCols;
    q.cols = cols[s];
    q.col_offset = off[s];
    q.total_cols = kCols;
    pg_xent_outputs_t so{sizeof so, nullptr, nullptr, nullptr, d_grad3.p + off[s], kCols};
    ASSERT_EQ(pg_xent_shard_apply(&q, d_merged.p, nullptr, &so, d_ws.p, ws_bytes, nullptr), PG_STATUS_SUCCESS)
        << pg_last_error();
  }
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  expect_close(d_grad3.get(), h_grad, tol, "dlogits (split form)");
}

TEST(CapiDevice, Float32) { check_device<float>(PG_DTYPE_FLOAT32, 1e-5); }
TEST(CapiDevice, Float16) { check_device<powergrad::half_t>(PG_DTYPE_FLOAT16, 2e-3); }
TEST(CapiDevice, Bfloat16) { check_device<powergrad::bfloat16_t>(PG_DTYPE_BFLOAT16, 1.6e-2); }

}  // namespace
