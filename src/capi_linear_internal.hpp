// powergrad C ABI internals: what the linear cross-entropy entry points (capi_linear.cpp) hand to
// the per-dtype translation units (linear_xent_f32.cu, linear_xent_f16.cu, linear_xent_bf16.cu),
// and the C names of their arguments. Not installed.
#pragma once

#include <cstddef>
#include <cstdint>

#include "powergrad/linear_xent.hpp"
#include "powergrad/powergrad_c.h"
#include "powergrad/status.hpp"

namespace powergrad_capi {

inline constexpr powergrad::detail::LinearXentArgNames kLinearXentCNames = {
    "problem->device",      "problem->hidden",      "problem->rows",       "problem->hidden_dim",
    "problem->ld_hidden",   "problem->weight",      "problem->vocab",      "problem->weight_dim",
    "problem->ld_weight",   "problem->bias",        "problem->bias_len",   "problem->targets",
    "problem->targets",     "problem->target_ld",   "problem->alpha",      "problem->label_smoothing",
    "problem->reduction",   "problem->bad_target_count", "upstream->scale", "upstream->values",
    "outputs->loss",        "outputs->dhidden",     "outputs->ld_dhidden", "outputs->dweight",
    "outputs->ld_dweight",  "outputs->dweight_type", "outputs->dbias",     "outputs->dbias_type",
    "chunk_rows",           "blas_handle",          "pg_linear_xent_workspace_bytes()", "problem->vocab_offset",
    "problem->total_vocab", "problem->class_weight", "problem->z_loss_scale", "problem->softcap",
    "outputs->z_loss",      "outputs->argmax",      "outputs->correct",    "stats",
    "merged"};

enum class LinearOp { kWorkspaceBytes, kChunkRows, kForwardBackward, kShardStats, kShardApply };

// One validated C call: struct sizes, enums and the accumulate flags checked; `problem` and `outputs`
// point at copies of the full current layout (fields a first-layout caller lacks are zero).
struct LinearCall {
  LinearOp op = LinearOp::kForwardBackward;
  pg_linear_xent_problem_t problem_value{};
  pg_linear_xent_outputs_t outputs_value{};
  const pg_linear_xent_problem_t* problem = nullptr;  // &problem_value
  const pg_linear_xent_outputs_t* outputs = nullptr;  // &outputs_value
  pg_upstream_t upstream{sizeof(pg_upstream_t), 1.f, nullptr};
  int64_t chunk_rows = 0;
  size_t budget = 0;
  size_t* bytes_out = nullptr;
  int64_t* chunk_out = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  void* blas_handle = nullptr;
  void* stream = nullptr;
  pg_row_stats_t* stats = nullptr;         // kShardStats
  const pg_row_stats_t* merged = nullptr;  // kShardApply
};

powergrad::Status linear_xent_call_f32(const LinearCall& c);
powergrad::Status linear_xent_call_f16(const LinearCall& c);
powergrad::Status linear_xent_call_bf16(const LinearCall& c);

}  // namespace powergrad_capi
