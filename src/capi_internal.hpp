// powergrad C ABI internals (docs/design.md §3 layer 5): what the C entry points (capi.cpp) hand to the
// per-dtype translation units (xent_f32.cu, xent_f16.cu, xent_bf16.cu). Not installed.
//
// capi.cpp validates everything the C++ API cannot see (struct sizes, enum values, null struct
// pointers) and switches on the dtype once; each dtype TU switches on the target kind and the op and
// calls the C++ API, which validates the rest and runs the host or CUDA backend.
#pragma once

#include <cstddef>
#include <cstdint>

#include "powergrad/powergrad_c.h"
#include "powergrad/status.hpp"
#include "powergrad/xent_types.hpp"

namespace powergrad_capi {

enum class Op { kForwardBackward, kBackward, kHook, kShardStats, kShardApply };

// One validated C call: enums in range, struct pointers non-null where the op needs them.
struct Call {
  Op op = Op::kForwardBackward;
  pg_xent_problem_t problem_value{};          // the caller's problem (options off for the first layout)
  const pg_xent_problem_t* problem = nullptr; // &problem_value once read
  pg_upstream_t upstream{sizeof(pg_upstream_t), 1.f, nullptr};  // forward_backward, backward, shard_apply
  pg_xent_outputs_t outputs{sizeof(pg_xent_outputs_t), nullptr, nullptr, nullptr, nullptr, 0,
                            nullptr, nullptr, nullptr};  // fb, apply
  const float* saved_lse_alpha = nullptr;                    // backward
  void* grad = nullptr;                                      // backward: dlogits; hook: out
  int64_t ld_grad = 0;
  float hook_scale = 1.f;                                    // hook
  const float* row_scale = nullptr;                          // hook
  pg_row_stats_t* stats = nullptr;                           // shard_stats
  const pg_row_stats_t* merged = nullptr;                    // shard_apply
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  void* stream = nullptr;
};

// One per dtype, each in its own translation unit (compile time: docs/design.md §7).
powergrad::Status xent_call_f32(const Call& c);
powergrad::Status xent_call_f16(const Call& c);
powergrad::Status xent_call_bf16(const Call& c);

// Lives in xent_f32.cu because the CUDA backend of the merge is a kernel.
powergrad::Status merge_stats_call(pg_device_t device, const pg_row_stats_t* parts, int64_t shards, int64_t rows,
                                   float alpha, pg_row_stats_t* merged, void* stream);


// One validated bucket call (capi.cpp checked the enums and, for ops, read the dtypes from the plan).
enum class BucketOp { kBuild, kPower, kClipNorm, kAgc };
struct BucketCall {
  BucketOp op = BucketOp::kPower;
  int param_dtype = 0;                      // pg_dtype_t of AGC parameters
  const pg_bucket_desc_t* desc = nullptr;   // kBuild
  void* plan_out = nullptr;                 // kBuild
  size_t plan_bytes = 0;                    // kBuild
  const void* plan = nullptr;               // ops
  size_t plan_size = 0;                     // ops: the caller's plan buffer size
  float beta = 1.f, max_norm = 1.f, clip = 0.01f, eps = 1e-3f;
  int preserve = 0, scope = 0;
  float* norms = nullptr;
  int32_t* flags = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  void* stream = nullptr;
};
powergrad::Status bucket_call_f32(const BucketCall& c);
powergrad::Status bucket_call_f16(const BucketCall& c);
powergrad::Status bucket_call_bf16(const BucketCall& c);
// Lives in bucket_f32.cu (its CUDA half is a cudaMemcpyAsync).
powergrad::Status bucket_upload_call(const void* plan, size_t plan_bytes, void* workspace, size_t workspace_bytes,
                                     void* stream);

}  // namespace powergrad_capi
