// Device (CUDA backend) tests of the gradient-bucket transforms: the host suite's cases and checks
// (bucket_cases.hpp) on Backend::kCuda, plus what only the device has: CUDA-graph capture with the
// launch count (at most 3 kernels for 1000 tensors), run-to-run bitwise determinism of the
// reductions, the stale-plan guard, and a tensor past 2^31 elements.
// Without a usable GPU every test skips with the reason.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "bucket_cases.hpp"
#include "device_mem.cuh"

namespace pgtest {
namespace {

template <class T>
class BucketDevice : public ::testing::Test {
 protected:
  void SetUp() override { PG_REQUIRE_GPU(); }
};
struct BucketDtypeNames {
  template <class T>
  static std::string GetName(int) {
    return DT<T>::name;
  }
};
using BucketDtypes = ::testing::Types<float, half_t, bfloat16_t>;
TYPED_TEST_SUITE(BucketDevice, BucketDtypes, BucketDtypeNames);

TYPED_TEST(BucketDevice, Power) {
  for (const BucketCase& c : power_cases()) check_bucket_case<TypeParam, TypeParam, DeviceMem>(c);
}
TYPED_TEST(BucketDevice, ClipNorm) {
  for (const BucketCase& c : clip_cases()) check_bucket_case<TypeParam, TypeParam, DeviceMem>(c);
}
TYPED_TEST(BucketDevice, Agc) {
  for (const BucketCase& c : agc_cases()) check_bucket_case<TypeParam, TypeParam, DeviceMem>(c);
}
TYPED_TEST(BucketDevice, AgcFloatParams) {
  for (const BucketCase& c : agc_cases()) check_bucket_case<TypeParam, float, DeviceMem>(c);
}
TYPED_TEST(BucketDevice, NonFinite) {
  for (const BucketCase& c : nonfinite_cases()) check_bucket_case<TypeParam, TypeParam, DeviceMem>(c);
}
TYPED_TEST(BucketDevice, TinyMagnitudes) {
  for (const BucketCase& c : tiny_cases<TypeParam>()) check_bucket_case<TypeParam, TypeParam, DeviceMem>(c);
}
TYPED_TEST(BucketDevice, ManyTinyTensors) {
  for (const BucketCase& c : many_tiny_cases()) check_bucket_case<TypeParam, TypeParam, DeviceMem>(c);
}

// The same input gives the same bits, run after run (no float atomics in the reductions).
TYPED_TEST(BucketDevice, DeterministicRunToRun) {
  for (BOp op : {BOp::kPower, BOp::kClip, BOp::kAgc}) {
    BucketCase c;
    c.shapes = resnet_like_shapes();
    c.shapes.push_back({1 << 20});
    c.op = op;
    c.preserve = NormPreserve::kL2;
    c.beta = 0.6f;
    c.scope = BucketScope::kBucket;
    std::vector<TypeParam> first;
    std::vector<float> first_norms;
    for (int rep = 0; rep < 3; ++rep) {
      DeviceMem m;
      auto d = make_bucket_data<TypeParam, TypeParam>(c);
      std::vector<float> norms(op == BOp::kClip ? 1 : 0);
      int32_t flags = -1;
      ASSERT_EQ((run_bucket_op<TypeParam, TypeParam, DeviceMem>(c, m, d, norms, flags)), Status::kSuccess)
          << pg::last_error_message();
      if (rep == 0) {
        first = d.grad;
        first_norms = norms;
        continue;
      }
      for (size_t i = 0; i < first.size(); ++i) ASSERT_TRUE(same_bits(first[i], d.grad[i])) << "op " << int(op) << " i " << i;
      for (size_t i = 0; i < norms.size(); ++i) ASSERT_TRUE(same_bits(first_norms[i], norms[i]));
    }
  }
}

// A kCuda plan of the case's tensors (separate pointers into the device copy g of d.grad) and a
// poisoned workspace for it; `upload` copies the plan in.
template <class T>
struct DevicePlan {
  std::vector<PlanBlock> plan;
  void* ws = nullptr;
  size_t ws_bytes = 0;
  Status build(const BucketCase& c, const BucketData<T, T>& d, T* g, DeviceMem& m, bool upload) {
    const size_t n = c.shapes.size();
    std::vector<BucketTensor<T>> ts(n);
    for (size_t t = 0; t < n; ++t) ts[t] = {g + d.off[t], nullptr, numel_of(c.shapes[t]), 0};
    plan.resize(pg::bucket_plan_bytes(static_cast<int64_t>(n)) / 16 + 1);
    Status s = pg::bucket_plan_build<T>(Backend::kCuda, ts.data(), static_cast<int64_t>(n), BucketUnits::kTensor,
                                        plan.data(), plan.size() * 16);
    if (s != Status::kSuccess || (s = pg::bucket_workspace_bytes(plan.data(), plan.size() * 16, &ws_bytes)) != Status::kSuccess) return s;
    ws = m.workspace(ws_bytes);
    return upload ? pg::bucket_plan_upload(plan.data(), plan.size() * 16, ws, ws_bytes, m.stream()) : Status::kSuccess;
  }
};

// Captured into a CUDA graph: 1000 tiny tensors cost 3 kernel nodes (clip_norm), 1 (plain power);
// replaying the graph gives the reference result.
TEST(BucketDeviceApi, GraphCaptureAndLaunchCount) {
  PG_REQUIRE_GPU();
  using T = float;
  BucketCase c = many_tiny_cases()[2];  // clip_norm, separate tensors
  c.scope = BucketScope::kTensor;
  c.max_norm = 0.05f;
  DeviceMem m;
  PG_CUDA_EXPECT(cudaStreamCreate(&m.s));
  auto d = make_bucket_data<T, T>(c);
  std::vector<double> ref_norms;
  const pgref::Tensors ref = pgref::clip_norm(d.g_in, c.max_norm, false, ref_norms);
  T* g = m.in(d.grad);
  const size_t n = c.shapes.size();
  DevicePlan<T> dp;
  ASSERT_EQ(dp.build(c, d, g, m, true), Status::kSuccess) << pg::last_error_message();
  auto& plan = dp.plan;
  void* ws = dp.ws;
  const size_t ws_bytes = dp.ws_bytes;
  std::vector<float> norms(n);
  float* dn = m.out(norms);
  cudaGraph_t graph = nullptr;
  PG_CUDA_EXPECT(cudaStreamBeginCapture(m.s, cudaStreamCaptureModeGlobal));
  const Status s = pg::bucket_clip_norm<T>(plan.data(), plan.size() * 16, c.max_norm, c.scope, dn, ws, ws_bytes, nullptr, m.stream());
  PG_CUDA_EXPECT(cudaStreamEndCapture(m.s, &graph));
  ASSERT_EQ(s, Status::kSuccess) << pg::last_error_message();
  size_t nodes = 0;
  PG_CUDA_EXPECT(cudaGraphGetNodes(graph, nullptr, &nodes));
  EXPECT_EQ(nodes, 3u) << "clip_norm over 1000 tensors should be 3 kernels";
  cudaGraphExec_t exec = nullptr;
  PG_CUDA_EXPECT(cudaGraphInstantiate(&exec, graph, 0));
  PG_CUDA_EXPECT(cudaGraphLaunch(exec, m.s));
  m.fetch(d.grad, g);
  m.fetch(norms, dn);
  int64_t bad = 0;
  for (size_t t = 0; t < n; ++t)
    for (size_t i = 0; i < ref[t].size(); ++i) {
      const double got = DT<T>::decode(d.grad[static_cast<size_t>(d.off[t]) + i]);
      if (std::fabs(got - ref[t][i]) > 2e-5 * std::fabs(ref[t][i]) + 1e-30) ++bad;
    }
  EXPECT_EQ(bad, 0);
  for (size_t t = 0; t < n; ++t) EXPECT_NEAR(norms[t], ref_norms[t], 1e-5 * ref_norms[t] + 1e-30);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  // Plain power: statistics-free, one kernel.
  PG_CUDA_EXPECT(cudaStreamBeginCapture(m.s, cudaStreamCaptureModeGlobal));
  const Status s2 = pg::bucket_power<T>(plan.data(), plan.size() * 16, 0.5f, NormPreserve::kNone, c.scope, ws, ws_bytes, nullptr, m.stream());
  PG_CUDA_EXPECT(cudaStreamEndCapture(m.s, &graph));
  ASSERT_EQ(s2, Status::kSuccess);
  PG_CUDA_EXPECT(cudaGraphGetNodes(graph, nullptr, &nodes));
  EXPECT_EQ(nodes, 1u);
  cudaGraphDestroy(graph);
  PG_CUDA_EXPECT(cudaStreamSynchronize(m.s));
  PG_CUDA_EXPECT(cudaStreamDestroy(m.s));
  m.s = nullptr;
}

// A workspace that does not hold the plan (never uploaded): nothing written, the stale flag set.
TEST(BucketDeviceApi, StalePlanWritesNothing) {
  PG_REQUIRE_GPU();
  using T = bfloat16_t;
  BucketCase c;
  c.shapes = mixed_shapes();
  c.op = BOp::kClip;
  DeviceMem m;
  auto d = make_bucket_data<T, T>(c);
  const auto before = d.grad;
  T* g = m.in(d.grad);
  const size_t n = c.shapes.size();
  DevicePlan<T> dp;
  ASSERT_EQ(dp.build(c, d, g, m, false), Status::kSuccess);  // workspace poisoned, plan not uploaded
  auto& plan = dp.plan;
  void* ws = dp.ws;
  const size_t ws_bytes = dp.ws_bytes;
  std::vector<float> norms(n);
  float* dn = m.out(norms);
  for (int which = 0; which < 2; ++which) {
    std::vector<int32_t> fl(1);
    int32_t* dfl = m.out(fl);
    const Status s = which == 0
                         ? pg::bucket_clip_norm<T>(plan.data(), plan.size() * 16, 0.1f, BucketScope::kTensor, dn, ws, ws_bytes, dfl, m.stream())
                         : pg::bucket_power<T>(plan.data(), plan.size() * 16, 0.5f, NormPreserve::kNone, BucketScope::kTensor, ws, ws_bytes,
                                               dfl, m.stream());
    ASSERT_EQ(s, Status::kSuccess);
    m.fetch(fl, dfl);
    EXPECT_EQ(fl[0], pg::kBucketFlagStalePlan);
  }
  m.fetch(d.grad, g);
  m.fetch(norms, dn);
  for (size_t i = 0; i < before.size(); ++i) ASSERT_TRUE(same_bits(before[i], d.grad[i])) << i;
  for (float v : norms) EXPECT_TRUE(is_poison(v));
}

// One bf16 tensor of 2^31 + 8 elements (4 GiB): clip_norm over it, every element checked.
TEST(BucketDeviceApi, TensorPast2to31Elements) {
  PG_REQUIRE_GPU();
  using T = bfloat16_t;
  const int64_t n = (int64_t(1) << 31) + 8;
  size_t free_b = 0, total_b = 0;
  PG_CUDA_EXPECT(cudaMemGetInfo(&free_b, &total_b));
  if (free_b < static_cast<size_t>(n) * 2 + (size_t(1) << 30)) GTEST_SKIP() << "needs ~5 GiB of free device memory";
  T* g = nullptr;
  PG_CUDA_EXPECT(cudaMalloc(&g, static_cast<size_t>(n) * sizeof(T)));
  PG_CUDA_EXPECT(cudaMemset(g, 0x3F, static_cast<size_t>(n) * sizeof(T)));  // every element 0x3F3F
  const double x = DT<T>::decode(T{0x3F3F});
  BucketTensor<T> t{g, nullptr, n, 0};
  std::vector<PlanBlock> plan(pg::bucket_plan_bytes(1) / 16 + 1);
  ASSERT_EQ(pg::bucket_plan_build<T>(Backend::kCuda, &t, 1, BucketUnits::kTensor, plan.data(), plan.size() * 16),
            Status::kSuccess);
  size_t ws_bytes = 0;
  ASSERT_EQ(pg::bucket_workspace_bytes(plan.data(), plan.size() * 16, &ws_bytes), Status::kSuccess);
  void* ws = nullptr;
  float* dn = nullptr;
  PG_CUDA_EXPECT(cudaMalloc(&ws, ws_bytes));
  PG_CUDA_EXPECT(cudaMalloc(&dn, sizeof(float)));
  ASSERT_EQ(pg::bucket_plan_upload(plan.data(), plan.size() * 16, ws, ws_bytes, nullptr), Status::kSuccess);
  ASSERT_EQ(pg::bucket_clip_norm<T>(plan.data(), plan.size() * 16, 1000.f, BucketScope::kBucket, dn, ws, ws_bytes, nullptr, nullptr),
            Status::kSuccess);
  const double norm = x * std::sqrt(static_cast<double>(n));
  const double coef = 1000.0 / (norm + 1e-6);
  std::vector<T> out(static_cast<size_t>(n));
  float got_norm = 0;
  PG_CUDA_EXPECT(cudaMemcpy(out.data(), g, static_cast<size_t>(n) * sizeof(T), cudaMemcpyDeviceToHost));
  PG_CUDA_EXPECT(cudaMemcpy(&got_norm, dn, sizeof(float), cudaMemcpyDeviceToHost));
  EXPECT_NEAR(got_norm, norm, 1e-5 * norm);
  const double want = x * coef;
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i)
    if (std::fabs(DT<T>::decode(out[static_cast<size_t>(i)]) - want) > 2 * DT<T>::u * want) ++bad;
  EXPECT_EQ(bad, 0);
  cudaFree(g);
  cudaFree(ws);
  cudaFree(dn);
}

}  // namespace
}  // namespace pgtest
