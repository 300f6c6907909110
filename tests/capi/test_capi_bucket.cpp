// C ABI of the bucket transforms on the host backend: every op through pg_bucket_* gives the same
// bits as the C++ API (which the float64-reference tests check), and a table of bad calls that each
// return their status with a message naming the argument and write nothing.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "powergrad/bucket.hpp"
#include "powergrad/powergrad_c.h"

namespace {

struct alignas(16) Block {
  unsigned char b[16];
};

struct Env {
  std::vector<float> g, w;
  std::vector<pg_bucket_tensor_t> ts;
  pg_bucket_desc_t desc{};
  std::vector<Block> plan;
  Env(pg_bucket_units_t units) : g(500), w(500), plan(64) {
    for (size_t i = 0; i < g.size(); ++i) {
      g[i] = 0.01f * static_cast<float>((i * 37) % 101) - 0.5f;
      w[i] = 0.02f * static_cast<float>((i * 11) % 53) - 0.3f;
    }
    ts = {{g.data(), w.data(), 120, 12}, {g.data() + 120, w.data() + 120, 1, 0}, {g.data() + 200, w.data() + 200, 300, 3}};
    desc.struct_size = sizeof desc;
    desc.device = PG_DEVICE_HOST;
    desc.grad_dtype = PG_DTYPE_FLOAT32;
    desc.param_dtype = PG_DTYPE_FLOAT32;
    desc.units = units;
    desc.tensors = ts.data();
    desc.count = 3;
  }
  void* p() { return plan.data(); }
};

// Same op through the C++ API on a copy of the gradients.
std::vector<float> via_cpp(Env& e, int op) {
  std::vector<float> g = e.g;
  std::vector<powergrad::BucketTensor<float>> ts;
  for (const auto& t : e.ts)
    ts.push_back({g.data() + (static_cast<float*>(t.grad) - e.g.data()), static_cast<const float*>(t.param), t.numel, t.rows});
  std::vector<Block> plan(64);
  const auto units = op == 2 ? powergrad::BucketUnits::kRows : powergrad::BucketUnits::kTensor;
  EXPECT_EQ(powergrad::bucket_plan_build<float>(powergrad::Backend::kHost, ts.data(), 3, units, plan.data(), 1024),
            powergrad::Status::kSuccess);
  if (op == 0) {
    EXPECT_EQ(powergrad::bucket_power<float>(plan.data(), plan.size() * 16, 0.4f, powergrad::NormPreserve::kL2, powergrad::BucketScope::kBucket),
              powergrad::Status::kSuccess);
  }
  if (op == 1) {
    EXPECT_EQ(powergrad::bucket_clip_norm<float>(plan.data(), plan.size() * 16, 0.5f, powergrad::BucketScope::kTensor),
              powergrad::Status::kSuccess);
  }
  if (op == 2) {
    EXPECT_EQ(powergrad::bucket_agc<float>(plan.data(), plan.size() * 16, 0.05f, 1e-3f, 0.5f, powergrad::NormPreserve::kL1),
              powergrad::Status::kSuccess);
  }
  return g;
}

TEST(CapiBucket, EveryOpMatchesTheCppApiBitwise) {
  for (int op = 0; op < 3; ++op) {
    Env e(op == 2 ? PG_BUCKET_UNITS_ROWS : PG_BUCKET_UNITS_TENSOR);
    const std::vector<float> want = via_cpp(e, op);
    size_t bytes = 0, ws = 7;
    ASSERT_EQ(pg_bucket_plan_bytes(3, &bytes), PG_STATUS_SUCCESS);
    ASSERT_LE(bytes, e.plan.size() * 16);
    ASSERT_EQ(pg_bucket_plan_build(&e.desc, e.p(), bytes), PG_STATUS_SUCCESS) << pg_last_error();
    ASSERT_EQ(pg_bucket_workspace_bytes(e.p(), e.plan.size() * 16, &ws), PG_STATUS_SUCCESS);
    EXPECT_EQ(ws, 0u);  // host plans need no workspace
    ASSERT_EQ(pg_bucket_plan_upload(e.p(), e.plan.size() * 16, nullptr, 0, nullptr), PG_STATUS_SUCCESS);
    float norms[3] = {-1, -1, -1};
    int32_t flags = -1;
    if (op == 0) {
      ASSERT_EQ(pg_bucket_power(e.p(), e.plan.size() * 16, 0.4f, PG_PRESERVE_L2, PG_BUCKET_SCOPE_BUCKET, nullptr, 0, &flags, nullptr), PG_STATUS_SUCCESS);
    }
    if (op == 1) {
      ASSERT_EQ(pg_bucket_clip_norm(e.p(), e.plan.size() * 16, 0.5f, PG_BUCKET_SCOPE_TENSOR, norms, nullptr, 0, &flags, nullptr), PG_STATUS_SUCCESS);
    }
    if (op == 2) {
      ASSERT_EQ(pg_bucket_agc(e.p(), e.plan.size() * 16, 0.05f, 1e-3f, 0.5f, PG_PRESERVE_L1, nullptr, 0, &flags, nullptr), PG_STATUS_SUCCESS);
    }
    EXPECT_EQ(flags, 0);
    EXPECT_EQ(std::memcmp(want.data(), e.g.data(), want.size() * sizeof(float)), 0) << "op " << op;
    if (op == 1) {
      for (float n : norms) EXPECT_GT(n, 0.f);
    }
  }
}

struct Bad {
  const char* name;
  pg_status_t expect;
  const char* mentions;  // the message names the argument
  std::function<pg_status_t(Env&)> call;
};

TEST(CapiBucket, BadCallsWriteNothing) {
  const std::vector<Bad> bad = {
      {"null desc", PG_STATUS_NULL_POINTER, "desc", [](Env& e) { return pg_bucket_plan_build(nullptr, e.p(), 1024); }},
      {"struct size", PG_STATUS_INVALID_VALUE, "struct_size",
       [](Env& e) { e.desc.struct_size = 8; return pg_bucket_plan_build(&e.desc, e.p(), 1024); }},
      {"device enum", PG_STATUS_INVALID_VALUE, "desc->device",
       [](Env& e) { std::memset(&e.desc.device, 0x7f, sizeof(int)); return pg_bucket_plan_build(&e.desc, e.p(), 1024); }},
      {"dtype enum", PG_STATUS_INVALID_VALUE, "desc->grad_dtype",
       [](Env& e) { std::memset(&e.desc.grad_dtype, 0x7f, sizeof(int)); return pg_bucket_plan_build(&e.desc, e.p(), 1024); }},
      {"units enum", PG_STATUS_INVALID_VALUE, "desc->units",
       [](Env& e) { std::memset(&e.desc.units, 0x7f, sizeof(int)); return pg_bucket_plan_build(&e.desc, e.p(), 1024); }},
      {"param dtype (fp16 params for fp32 grads)", PG_STATUS_INVALID_VALUE, "param_dtype",
       [](Env& e) { e.desc.units = PG_BUCKET_UNITS_ROWS; e.desc.param_dtype = PG_DTYPE_FLOAT16; return pg_bucket_plan_build(&e.desc, e.p(), 1024); }},
      {"null tensors", PG_STATUS_NULL_POINTER, "tensors",
       [](Env& e) { e.desc.tensors = nullptr; return pg_bucket_plan_build(&e.desc, e.p(), 1024); }},
      {"overlap", PG_STATUS_INVALID_LAYOUT, "overlap",
       [](Env& e) { e.ts[1].grad = e.g.data() + 100; return pg_bucket_plan_build(&e.desc, e.p(), 1024); }},
      {"plan too small", PG_STATUS_WORKSPACE_TOO_SMALL, "plan_bytes",
       [](Env& e) { return pg_bucket_plan_build(&e.desc, e.p(), 64); }},
      {"plan bytes: null out", PG_STATUS_NULL_POINTER, "bytes", [](Env&) { return pg_bucket_plan_bytes(3, nullptr); }},
      {"plan bytes: negative", PG_STATUS_INVALID_SIZE, "count", [](Env&) { size_t b; return pg_bucket_plan_bytes(-1, &b); }},
      {"plan bytes: count beyond 2^40 (no wrap)", PG_STATUS_INVALID_SIZE, "count",
       [](Env&) { size_t b; return pg_bucket_plan_bytes(INT64_MAX, &b); }},
      {"build: desc inside the plan", PG_STATUS_INVALID_LAYOUT, "desc",
       [](Env& e) {
         auto* d = reinterpret_cast<pg_bucket_desc_t*>(static_cast<char*>(e.p()) + 512);
         *d = e.desc;
         return pg_bucket_plan_build(d, e.p(), 1024);
       }},
      {"flat: out over offsets", PG_STATUS_INVALID_LAYOUT, "offsets",
       [](Env& e) {
         alignas(16) int64_t buf[16] = {0, 10, 20, 30};
         return pg_bucket_tensors_from_flat(e.g.data(), PG_DTYPE_FLOAT32, buf, 3, nullptr, nullptr,
                                            reinterpret_cast<pg_bucket_tensor_t*>(buf));
       }},
      {"power: null plan", PG_STATUS_NULL_POINTER, "plan",
       [](Env&) { return pg_bucket_power(nullptr, 1024, 0.5f, PG_PRESERVE_L1, PG_BUCKET_SCOPE_TENSOR, nullptr, 0, nullptr, nullptr); }},
      {"power: unbuilt plan", PG_STATUS_INVALID_VALUE, "plan",
       [](Env& e) { return pg_bucket_power(e.p(), e.plan.size() * 16, 0.5f, PG_PRESERVE_L1, PG_BUCKET_SCOPE_TENSOR, nullptr, 0, nullptr, nullptr); }},
      {"power: preserve enum", PG_STATUS_INVALID_VALUE, "preserve",
       [](Env& e) { pg_bucket_plan_build(&e.desc, e.p(), 1024); pg_norm_preserve_t p; std::memset(&p, 0x7f, sizeof p);
                    return pg_bucket_power(e.p(), e.plan.size() * 16, 0.5f, p, PG_BUCKET_SCOPE_TENSOR, nullptr, 0, nullptr, nullptr); }},
      {"power: beta", PG_STATUS_INVALID_VALUE, "beta",
       [](Env& e) { pg_bucket_plan_build(&e.desc, e.p(), 1024);
                    return pg_bucket_power(e.p(), e.plan.size() * 16, -0.5f, PG_PRESERVE_L1, PG_BUCKET_SCOPE_TENSOR, nullptr, 0, nullptr, nullptr); }},
      {"clip: scope enum", PG_STATUS_INVALID_VALUE, "scope",
       [](Env& e) { pg_bucket_plan_build(&e.desc, e.p(), 1024); pg_bucket_scope_t s; std::memset(&s, 0x7f, sizeof s);
                    return pg_bucket_clip_norm(e.p(), e.plan.size() * 16, 1.f, s, nullptr, nullptr, 0, nullptr, nullptr); }},
      {"clip: max_norm", PG_STATUS_INVALID_VALUE, "max_norm",
       [](Env& e) { pg_bucket_plan_build(&e.desc, e.p(), 1024);
                    return pg_bucket_clip_norm(e.p(), e.plan.size() * 16, 0.f, PG_BUCKET_SCOPE_BUCKET, nullptr, nullptr, 0, nullptr, nullptr); }},
      {"agc: on a tensor plan", PG_STATUS_INVALID_VALUE, "units",
       [](Env& e) { pg_bucket_plan_build(&e.desc, e.p(), 1024);
                    return pg_bucket_agc(e.p(), e.plan.size() * 16, 0.01f, 1e-3f, 1.f, PG_PRESERVE_NONE, nullptr, 0, nullptr, nullptr); }},
      {"agc: eps", PG_STATUS_INVALID_VALUE, "eps",
       [](Env& e) { e.desc.units = PG_BUCKET_UNITS_ROWS; pg_bucket_plan_build(&e.desc, e.p(), 1024);
                    return pg_bucket_agc(e.p(), e.plan.size() * 16, 0.01f, -1.f, 1.f, PG_PRESERVE_NONE, nullptr, 0, nullptr, nullptr); }},
      {"flat: overlapping segments", PG_STATUS_INVALID_LAYOUT, "overlap",
       [](Env& e) { const int64_t off[3] = {0, 20, 10}; pg_bucket_tensor_t out[2];
                    return pg_bucket_tensors_from_flat(e.g.data(), PG_DTYPE_FLOAT32, off, 2, nullptr, nullptr, out); }},
      {"flat: dtype enum", PG_STATUS_INVALID_VALUE, "dtype",
       [](Env& e) { const int64_t off[2] = {0, 20}; pg_bucket_tensor_t out[1]; pg_dtype_t d; std::memset(&d, 0x7f, sizeof d);
                    return pg_bucket_tensors_from_flat(e.g.data(), d, off, 1, nullptr, nullptr, out); }},
  };
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.name);
    Env e(PG_BUCKET_UNITS_TENSOR);
    const std::vector<float> g0 = e.g;
    EXPECT_EQ(b.call(e), b.expect) << pg_last_error();
    EXPECT_NE(std::string(pg_last_error()).find(b.mentions), std::string::npos) << pg_last_error();
    EXPECT_EQ(std::memcmp(g0.data(), e.g.data(), g0.size() * sizeof(float)), 0) << "gradients were written";
  }
}

}  // namespace
