// powergrad C ABI (DESIGN.md §3 layer 5): the exported entry points of libpowergrad.
//
// Each entry point: clear the thread's last error, check what the C++ API cannot see (struct
// sizes, null struct pointers, enum values, a CUDA device in a build without CUDA), switch on the
// dtype once, and map the C++ Status to pg_status_t. Nothing throws across this boundary.
#include <cstring>
#include <exception>

#include "capi_internal.hpp"
#include "powergrad/config.hpp"
#include "powergrad/detail/xent_job.hpp"
#include "powergrad/status.hpp"
#include "powergrad/xent_types.hpp"

#ifndef POWERGRAD_CAPI_HAS_CUDA
#error "POWERGRAD_CAPI_HAS_CUDA must be defined (0 or 1) by the build"
#endif

using powergrad::Status;
using powergrad::detail::fail;

namespace {

#define PG_SAME_STATUS(c, s) static_assert(static_cast<int>(c) == static_cast<int>(Status::s), #c)
PG_SAME_STATUS(PG_STATUS_SUCCESS, kSuccess);
PG_SAME_STATUS(PG_STATUS_NULL_POINTER, kNullPointer);
PG_SAME_STATUS(PG_STATUS_INVALID_SIZE, kInvalidSize);
PG_SAME_STATUS(PG_STATUS_INVALID_VALUE, kInvalidValue);
PG_SAME_STATUS(PG_STATUS_INVALID_LAYOUT, kInvalidLayout);
PG_SAME_STATUS(PG_STATUS_INVALID_TARGET, kInvalidTarget);
PG_SAME_STATUS(PG_STATUS_WORKSPACE_TOO_SMALL, kWorkspaceTooSmall);
PG_SAME_STATUS(PG_STATUS_NO_CUDA_SUPPORT, kNoCudaSupport);
PG_SAME_STATUS(PG_STATUS_CUDA_ERROR, kCudaError);
PG_SAME_STATUS(PG_STATUS_UNSUPPORTED, kUnsupported);
#undef PG_SAME_STATUS
static_assert(static_cast<int>(PG_REDUCTION_NONE) == static_cast<int>(powergrad::Reduction::kNone) &&
                  static_cast<int>(PG_REDUCTION_MEAN) == static_cast<int>(powergrad::Reduction::kMean) &&
                  static_cast<int>(PG_REDUCTION_SUM) == static_cast<int>(powergrad::Reduction::kSum),
              "pg_reduction_t must match powergrad::Reduction");

// The integer in an enum field or argument. A C caller may pass any int; in C++, loading an enum
// object whose value lies outside the enum's range is undefined (UBSan's -fsanitize=enum flags it),
// so every enum that crosses the boundary is read as raw bytes before it is checked.
template <class E>
int raw(const E& e) {
  static_assert(sizeof(E) == sizeof(int), "C enums are int-sized on the supported ABIs");
  int v;
  std::memcpy(&v, &e, sizeof v);
  return v;
}

pg_status_t to_c(Status s) {
  // Every failure explains itself, even where a lower layer set no message.
  if (s != Status::kSuccess && powergrad::last_error_message()[0] == '\0')
    fail(s, "%s", powergrad::status_string(s));
  return static_cast<pg_status_t>(static_cast<int>(s));
}

Status check_size(size_t got, size_t want, const char* name) {
  if (got != want)
    return fail(Status::kInvalidValue, "%s->struct_size (%zu) is not a size this library knows (sizeof(%s) = %zu)",
                name, got, name, want);
  return Status::kSuccess;
}

Status check_device(const pg_device_t& d, const char* name) {
  const int v = raw(d);
  if (v != PG_DEVICE_HOST && v != PG_DEVICE_CUDA)
    return fail(Status::kInvalidValue, "%s (%d) is not a pg_device_t value", name, v);
  if (v == PG_DEVICE_CUDA && !POWERGRAD_CAPI_HAS_CUDA)
    return fail(Status::kNoCudaSupport, "%s is PG_DEVICE_CUDA but this library was built with no CUDA support", name);
  return Status::kSuccess;
}

Status check_reduction(const pg_reduction_t& r, const char* name) {
  const int v = raw(r);
  if (v != PG_REDUCTION_NONE && v != PG_REDUCTION_MEAN && v != PG_REDUCTION_SUM)
    return fail(Status::kInvalidValue, "%s (%d) is not a pg_reduction_t value", name, v);
  return Status::kSuccess;
}

#define PG_TRY(expr)                                 \
  do {                                               \
    const Status pg_s_ = (expr);                     \
    if (pg_s_ != Status::kSuccess) return pg_s_;     \
  } while (0)

Status check_problem(const pg_xent_problem_t* p) {
  if (!p) return fail(Status::kNullPointer, "problem is null");
  PG_TRY(check_size(p->struct_size, sizeof(pg_xent_problem_t), "pg_xent_problem_t"));
  PG_TRY(check_device(p->device, "problem->device"));
  const int dt = raw(p->dtype);
  if (dt != PG_DTYPE_FLOAT32 && dt != PG_DTYPE_FLOAT16 && dt != PG_DTYPE_BFLOAT16)
    return fail(Status::kInvalidValue, "problem->dtype (%d) is not a pg_dtype_t value", dt);
  const int tk = raw(p->target_kind);
  if (tk != PG_TARGET_INDEX_INT32 && tk != PG_TARGET_INDEX_INT64 && tk != PG_TARGET_DENSE)
    return fail(Status::kInvalidValue, "problem->target_kind (%d) is not a pg_target_kind_t value", tk);
  return check_reduction(p->reduction, "problem->reduction");
}

Status read_upstream(const pg_upstream_t* up, powergrad_capi::Call& c) {
  if (!up) return Status::kSuccess;  // NULL: scale 1, no values
  PG_TRY(check_size(up->struct_size, sizeof(pg_upstream_t), "pg_upstream_t"));
  c.upstream = *up;
  return Status::kSuccess;
}

Status read_outputs(const pg_xent_outputs_t* out, powergrad_capi::Call& c) {
  if (!out) return fail(Status::kNullPointer, "outputs is null");
  PG_TRY(check_size(out->struct_size, sizeof(pg_xent_outputs_t), "pg_xent_outputs_t"));
  c.outputs = *out;
  return Status::kSuccess;
}

// The one dtype switch of the library (STYLE.md 5).
Status dispatch_dtype(const powergrad_capi::Call& c) {
  switch (c.problem->dtype) {
    case PG_DTYPE_FLOAT32: return powergrad_capi::xent_call_f32(c);
    case PG_DTYPE_FLOAT16: return powergrad_capi::xent_call_f16(c);
    case PG_DTYPE_BFLOAT16: return powergrad_capi::xent_call_bf16(c);
  }
  return fail(Status::kInvalidValue, "problem->dtype (%d) is not a pg_dtype_t value", raw(c.problem->dtype));
}

// Runs `body` (returning Status) with the last error cleared, and no exception escaping.
template <class F>
pg_status_t guarded(F&& body) noexcept {
  try {
    powergrad::detail::clear_error();
    return to_c(body());
  } catch (const std::exception& e) {
    fail(Status::kSuccess, "internal error: unexpected C++ exception: %s", e.what());
  } catch (...) {
    fail(Status::kSuccess, "internal error: unexpected C++ exception");
  }
  return PG_STATUS_INTERNAL_ERROR;
}

}  // namespace

extern "C" {

PG_API int pg_version(void) {
  return POWERGRAD_VERSION_MAJOR * 10000 + POWERGRAD_VERSION_MINOR * 100 + POWERGRAD_VERSION_PATCH;
}

PG_API const char* pg_status_string(pg_status_t status) {
  const int v = raw(status);
  if (v == PG_STATUS_INTERNAL_ERROR) return "internal error";
  if (v < PG_STATUS_SUCCESS || v > PG_STATUS_UNSUPPORTED) return "unknown status";
  return powergrad::status_string(static_cast<Status>(v));
}

PG_API const char* pg_last_error(void) { return powergrad::last_error_message(); }

PG_API int pg_has_cuda(void) { return POWERGRAD_CAPI_HAS_CUDA; }

PG_API pg_status_t pg_xent_workspace_bytes(int64_t rows, pg_reduction_t reduction, size_t* bytes) {
  return guarded([&] {
    PG_TRY(check_reduction(reduction, "reduction"));
    if (rows < 0) return fail(Status::kInvalidSize, "rows (%lld) is negative", static_cast<long long>(rows));
    if (!bytes) return fail(Status::kNullPointer, "bytes is null");
    // Same as powergrad::xent_workspace_bytes (xent.hpp), without the whole API in this TU.
    *bytes = powergrad::detail::xent_workspace_bytes_impl(rows, static_cast<powergrad::Reduction>(reduction));
    return Status::kSuccess;
  });
}

PG_API pg_status_t pg_xent_forward_backward(const pg_xent_problem_t* problem, const pg_upstream_t* upstream,
                                            const pg_xent_outputs_t* outputs, void* workspace,
                                            size_t workspace_bytes, void* stream) {
  return guarded([&] {
    powergrad_capi::Call c;
    c.op = powergrad_capi::Op::kForwardBackward;
    PG_TRY(check_problem(problem));
    c.problem = problem;
    PG_TRY(read_upstream(upstream, c));
    PG_TRY(read_outputs(outputs, c));
    c.workspace = workspace;
    c.workspace_bytes = workspace_bytes;
    c.stream = stream;
    return dispatch_dtype(c);
  });
}

PG_API pg_status_t pg_xent_backward(const pg_xent_problem_t* problem, const pg_upstream_t* upstream,
                                    const float* saved_lse_alpha, void* dlogits, int64_t ld_dlogits,
                                    void* workspace, size_t workspace_bytes, void* stream) {
  return guarded([&] {
    powergrad_capi::Call c;
    c.op = powergrad_capi::Op::kBackward;
    PG_TRY(check_problem(problem));
    c.problem = problem;
    PG_TRY(read_upstream(upstream, c));
    c.saved_lse_alpha = saved_lse_alpha;
    c.grad = dlogits;
    c.ld_grad = ld_dlogits;
    c.workspace = workspace;
    c.workspace_bytes = workspace_bytes;
    c.stream = stream;
    return dispatch_dtype(c);
  });
}

PG_API pg_status_t pg_xent_hook(const pg_xent_problem_t* problem, float scale, const float* row_scale, void* out,
                                int64_t ld_out, void* stream) {
  return guarded([&] {
    powergrad_capi::Call c;
    c.op = powergrad_capi::Op::kHook;
    PG_TRY(check_problem(problem));
    c.problem = problem;
    c.hook_scale = scale;
    c.row_scale = row_scale;
    c.grad = out;
    c.ld_grad = ld_out;
    c.stream = stream;
    return dispatch_dtype(c);
  });
}

PG_API pg_status_t pg_xent_shard_stats(const pg_xent_problem_t* problem, pg_row_stats_t* stats, void* stream) {
  return guarded([&] {
    powergrad_capi::Call c;
    c.op = powergrad_capi::Op::kShardStats;
    PG_TRY(check_problem(problem));
    c.problem = problem;
    c.stats = stats;
    c.stream = stream;
    return dispatch_dtype(c);
  });
}

PG_API pg_status_t pg_xent_merge_stats(pg_device_t device, const pg_row_stats_t* parts, int64_t shards, int64_t rows,
                                       float alpha, pg_row_stats_t* merged, void* stream) {
  return guarded([&] {
    PG_TRY(check_device(device, "device"));
    return powergrad_capi::merge_stats_call(device, parts, shards, rows, alpha, merged, stream);
  });
}

PG_API pg_status_t pg_xent_shard_apply(const pg_xent_problem_t* problem, const pg_row_stats_t* merged,
                                       const pg_upstream_t* upstream, const pg_xent_outputs_t* outputs,
                                       void* workspace, size_t workspace_bytes, void* stream) {
  return guarded([&] {
    powergrad_capi::Call c;
    c.op = powergrad_capi::Op::kShardApply;
    PG_TRY(check_problem(problem));
    c.problem = problem;
    c.merged = merged;
    PG_TRY(read_upstream(upstream, c));
    PG_TRY(read_outputs(outputs, c));
    c.workspace = workspace;
    c.workspace_bytes = workspace_bytes;
    c.stream = stream;
    return dispatch_dtype(c);
  });
}

}  // extern "C"
