// powergrad C ABI (docs/design.md §3 layer 5): the exported entry points of the linear
// cross-entropy (docs/design.md §2.6). As in capi.cpp: clear the thread's last error, check what
// the C++ API cannot see (struct sizes, null struct pointers, enum values read as raw integers, the
// accumulate flags, a CUDA device in a build without CUDA), switch on the dtype once, map the
// status; nothing throws across this boundary.
#include <cstddef>
#include <cstring>
#include <exception>

#include "capi_linear_internal.hpp"
#include "powergrad/config.hpp"
#include "powergrad/host/linear_xent_host.hpp"
#include "powergrad/status.hpp"

#ifndef POWERGRAD_CAPI_HAS_CUDA
#error "POWERGRAD_CAPI_HAS_CUDA must be defined (0 or 1) by the build"
#endif

using powergrad::Status;
using powergrad::detail::fail;

namespace {

static_assert(static_cast<int>(PG_GRAD_WEIGHT_DTYPE) == static_cast<int>(powergrad::GradType::kWeightType) &&
                  static_cast<int>(PG_GRAD_FLOAT32) == static_cast<int>(powergrad::GradType::kFloat32),
              "pg_grad_type_t must match powergrad::GradType");

// An enum crossing the boundary, read as its raw int (a C caller may pass any value).
template <class E>
int raw_int(const E& e) {
  static_assert(sizeof(E) == sizeof(int), "C enums are int-sized on the supported ABIs");
  int v;
  std::memcpy(&v, &e, sizeof v);
  return v;
}

#define PG_LTRY(expr)                              \
  do {                                             \
    const Status pg_s_ = (expr);                   \
    if (pg_s_ != Status::kSuccess) return pg_s_;   \
  } while (0)

Status check_struct(size_t got, size_t want, const char* arg, const char* type) {
  if (got != want)
    return fail(Status::kInvalidValue, "%s->struct_size (%zu) is not a size this library knows (sizeof(%s) = %zu)",
                arg, got, type, want);
  return Status::kSuccess;
}

// A struct of the current layout, or of the first layout (which ended before `first_new`): copied
// into `into` with the fields the caller's struct lacks left zero (the whole vocabulary, every
// option off).
template <class S>
Status read_struct(const S* in, size_t first_new, S& into, const char* arg, const char* type) {
  const size_t got = in->struct_size;
  if (got != sizeof(S) && got != first_new)
    return fail(Status::kInvalidValue,
                "%s->struct_size (%zu) is not a size this library knows (sizeof(%s) = %zu, or %zu for the first layout)",
                arg, got, type, sizeof(S), first_new);
  into = S{};
  std::memcpy(&into, in, got);
  into.struct_size = sizeof(S);
  return Status::kSuccess;
}

static_assert(sizeof(pg_row_stats_t) == sizeof(powergrad::RowStats) &&
                  alignof(pg_row_stats_t) == alignof(powergrad::RowStats),
              "pg_row_stats_t must match powergrad::RowStats");

// The caller's structs read into `c` (full layouts), then checked.
Status read_linear_call(const pg_linear_xent_problem_t* p, const pg_linear_xent_outputs_t* o,
                        powergrad_capi::LinearCall& c) {
  if (!p) return fail(Status::kNullPointer, "problem is null");
  PG_LTRY(read_struct(p, offsetof(pg_linear_xent_problem_t, vocab_offset), c.problem_value, "problem",
                      "pg_linear_xent_problem_t"));
  c.problem = &c.problem_value;
  if (!o) return fail(Status::kNullPointer, "outputs is null");
  PG_LTRY(read_struct(o, offsetof(pg_linear_xent_outputs_t, z_loss), c.outputs_value, "outputs",
                      "pg_linear_xent_outputs_t"));
  c.outputs = &c.outputs_value;
  return Status::kSuccess;
}

Status check_linear_call(const pg_linear_xent_problem_t* p, const pg_linear_xent_outputs_t* o) {
  const int dev = raw_int(p->device);
  if (dev != PG_DEVICE_HOST && dev != PG_DEVICE_CUDA)
    return fail(Status::kInvalidValue, "problem->device (%d) is not a pg_device_t value", dev);
  if (dev == PG_DEVICE_CUDA && !POWERGRAD_CAPI_HAS_CUDA)
    return fail(Status::kNoCudaSupport, "problem->device is PG_DEVICE_CUDA but this library was built with no CUDA support");
  const int dt = raw_int(p->dtype);
  if (dt != PG_DTYPE_FLOAT32 && dt != PG_DTYPE_FLOAT16 && dt != PG_DTYPE_BFLOAT16)
    return fail(Status::kInvalidValue, "problem->dtype (%d) is not a pg_dtype_t value", dt);
  const int tk = raw_int(p->target_kind);
  if (tk != PG_TARGET_INDEX_INT32 && tk != PG_TARGET_INDEX_INT64 && tk != PG_TARGET_DENSE)
    return fail(Status::kInvalidValue, "problem->target_kind (%d) is not a pg_target_kind_t value", tk);
  const int red = raw_int(p->reduction);
  if (red != PG_REDUCTION_NONE && red != PG_REDUCTION_MEAN && red != PG_REDUCTION_SUM)
    return fail(Status::kInvalidValue, "problem->reduction (%d) is not a pg_reduction_t value", red);
  const int dwt = raw_int(o->dweight_type), dbt = raw_int(o->dbias_type);
  if (dwt != PG_GRAD_WEIGHT_DTYPE && dwt != PG_GRAD_FLOAT32)
    return fail(Status::kInvalidValue, "outputs->dweight_type (%d) is not a pg_grad_type_t value", dwt);
  if (dbt != PG_GRAD_WEIGHT_DTYPE && dbt != PG_GRAD_FLOAT32)
    return fail(Status::kInvalidValue, "outputs->dbias_type (%d) is not a pg_grad_type_t value", dbt);
  if (o->accumulate_dweight != 0 && o->accumulate_dweight != 1)
    return fail(Status::kInvalidValue, "outputs->accumulate_dweight (%d) must be 0 or 1",
                static_cast<int>(o->accumulate_dweight));
  if (o->accumulate_dbias != 0 && o->accumulate_dbias != 1)
    return fail(Status::kInvalidValue, "outputs->accumulate_dbias (%d) must be 0 or 1",
                static_cast<int>(o->accumulate_dbias));
  return Status::kSuccess;
}

Status dispatch_linear(const powergrad_capi::LinearCall& c) {
  switch (c.problem->dtype) {
    case PG_DTYPE_FLOAT32: return powergrad_capi::linear_xent_call_f32(c);
    case PG_DTYPE_FLOAT16: return powergrad_capi::linear_xent_call_f16(c);
    case PG_DTYPE_BFLOAT16: return powergrad_capi::linear_xent_call_bf16(c);
  }
  return fail(Status::kInvalidValue, "problem->dtype (%d) is not a pg_dtype_t value", raw_int(c.problem->dtype));
}

template <class F>
pg_status_t guarded_linear(F&& body) noexcept {
  try {
    powergrad::detail::clear_error();
    const Status s = body();
    if (s != Status::kSuccess && powergrad::last_error_message()[0] == '\0') fail(s, "%s", powergrad::status_string(s));
    return static_cast<pg_status_t>(static_cast<int>(s));
  } catch (const std::exception& e) {
    fail(Status::kSuccess, "internal error: unexpected C++ exception: %s", e.what());
  } catch (...) {
    fail(Status::kSuccess, "internal error: unexpected C++ exception");
  }
  return PG_STATUS_INTERNAL_ERROR;
}

}  // namespace

extern "C" {

PG_API int pg_has_host_blas(void) { return powergrad::host::host_blas_available() ? 1 : 0; }

PG_API pg_status_t pg_linear_xent_workspace_bytes(const pg_linear_xent_problem_t* problem,
                                                  const pg_linear_xent_outputs_t* outputs, int64_t chunk_rows,
                                                  size_t* bytes) {
  return guarded_linear([&]() -> Status {
    powergrad_capi::LinearCall c;
    PG_LTRY(read_linear_call(problem, outputs, c));
    PG_LTRY(check_linear_call(c.problem, c.outputs));
    if (!bytes) return fail(Status::kNullPointer, "bytes is null");
    c.op = powergrad_capi::LinearOp::kWorkspaceBytes;
    c.chunk_rows = chunk_rows;
    c.bytes_out = bytes;
    return dispatch_linear(c);
  });
}

PG_API pg_status_t pg_linear_xent_chunk_rows(const pg_linear_xent_problem_t* problem,
                                             const pg_linear_xent_outputs_t* outputs, size_t budget,
                                             int64_t* chunk_rows) {
  return guarded_linear([&]() -> Status {
    powergrad_capi::LinearCall c;
    PG_LTRY(read_linear_call(problem, outputs, c));
    PG_LTRY(check_linear_call(c.problem, c.outputs));
    if (!chunk_rows) return fail(Status::kNullPointer, "chunk_rows is null");
    c.op = powergrad_capi::LinearOp::kChunkRows;
    c.budget = budget;
    c.chunk_out = chunk_rows;
    return dispatch_linear(c);
  });
}

PG_API pg_status_t pg_linear_xent_forward_backward(const pg_linear_xent_problem_t* problem,
                                                   const pg_upstream_t* upstream,
                                                   const pg_linear_xent_outputs_t* outputs, void* workspace,
                                                   size_t workspace_bytes, int64_t chunk_rows, void* blas_handle,
                                                   void* stream) {
  return guarded_linear([&]() -> Status {
    powergrad_capi::LinearCall c;
    PG_LTRY(read_linear_call(problem, outputs, c));
    PG_LTRY(check_linear_call(c.problem, c.outputs));
    if (upstream) {
      PG_LTRY(check_struct(upstream->struct_size, sizeof(pg_upstream_t), "upstream", "pg_upstream_t"));
      c.upstream = *upstream;
    }
    c.op = powergrad_capi::LinearOp::kForwardBackward;
    c.chunk_rows = chunk_rows;
    c.workspace = workspace;
    c.workspace_bytes = workspace_bytes;
    c.blas_handle = blas_handle;
    c.stream = stream;
    return dispatch_linear(c);
  });
}

PG_API pg_status_t pg_linear_xent_shard_stats(const pg_linear_xent_problem_t* problem, pg_row_stats_t* stats,
                                              void* workspace, size_t workspace_bytes, int64_t chunk_rows,
                                              void* blas_handle, void* stream) {
  return guarded_linear([&]() -> Status {
    powergrad_capi::LinearCall c;
    pg_linear_xent_outputs_t none;  // the statistics need no output
    std::memset(&none, 0, sizeof none);
    none.struct_size = sizeof none;
    PG_LTRY(read_linear_call(problem, &none, c));
    PG_LTRY(check_linear_call(c.problem, c.outputs));
    c.op = powergrad_capi::LinearOp::kShardStats;
    c.stats = stats;
    c.chunk_rows = chunk_rows;
    c.workspace = workspace;
    c.workspace_bytes = workspace_bytes;
    c.blas_handle = blas_handle;
    c.stream = stream;
    return dispatch_linear(c);
  });
}

PG_API pg_status_t pg_linear_xent_shard_apply(const pg_linear_xent_problem_t* problem, const pg_row_stats_t* merged,
                                              const pg_upstream_t* upstream, const pg_linear_xent_outputs_t* outputs,
                                              void* workspace, size_t workspace_bytes, int64_t chunk_rows,
                                              void* blas_handle, void* stream) {
  return guarded_linear([&]() -> Status {
    powergrad_capi::LinearCall c;
    PG_LTRY(read_linear_call(problem, outputs, c));
    PG_LTRY(check_linear_call(c.problem, c.outputs));
    if (upstream) {
      PG_LTRY(check_struct(upstream->struct_size, sizeof(pg_upstream_t), "upstream", "pg_upstream_t"));
      c.upstream = *upstream;
    }
    c.op = powergrad_capi::LinearOp::kShardApply;
    c.merged = merged;
    c.chunk_rows = chunk_rows;
    c.workspace = workspace;
    c.workspace_bytes = workspace_bytes;
    c.blas_handle = blas_handle;
    c.stream = stream;
    return dispatch_linear(c);
  });
}

}  // extern "C"
