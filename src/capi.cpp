// powergrad C ABI (docs/design.md §3 layer 5): the exported entry points of libpowergrad.
//
// Each entry point: clear the thread's last error, check what the C++ API cannot see (struct
// sizes, null struct pointers, enum values, a CUDA device in a build without CUDA), switch on the
// dtype once, and map the C++ Status to pg_status_t. Nothing throws across this boundary.
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <utility>
#include <exception>
#include <vector>

#include "capi_internal.hpp"
#include "capi_names.hpp"
#include "powergrad/bucket.hpp"
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

Status check_size(size_t got, size_t want, const char* arg, const char* type) {
  if (got != want)
    return fail(Status::kInvalidValue, "%s->struct_size (%zu) is not a size this library knows (sizeof(%s) = %zu)",
                arg, got, type, want);
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

// A struct of this layout, or of the first layout (which ended before `first_new`): copied into
// `into` with the fields the caller's struct lacks left zero (every option off).
template <class S>
Status read_struct(const S* in, size_t first_new, S& into, const char* arg, const char* type) {
  const size_t got = in->struct_size;
  if (got != sizeof(S) && got != first_new)
    return fail(Status::kInvalidValue,
                "%s->struct_size (%zu) is not a size this library knows (sizeof(%s) = %zu, or %zu for the layout without options)",
                arg, got, type, sizeof(S), first_new);
  into = S{};
  std::memcpy(&into, in, got);
  into.struct_size = sizeof(S);
  return Status::kSuccess;
}

Status check_problem(const pg_xent_problem_t* in, powergrad_capi::Call& c) {
  if (!in) return fail(Status::kNullPointer, "problem is null");
  PG_TRY(read_struct(in, offsetof(pg_xent_problem_t, weight), c.problem_value, "problem", "pg_xent_problem_t"));
  const pg_xent_problem_t* p = &c.problem_value;
  c.problem = p;
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
  PG_TRY(check_size(up->struct_size, sizeof(pg_upstream_t), "upstream", "pg_upstream_t"));
  c.upstream = *up;
  return Status::kSuccess;
}

Status read_outputs(const pg_xent_outputs_t* out, powergrad_capi::Call& c) {
  if (!out) return fail(Status::kNullPointer, "outputs is null");
  return read_struct(out, offsetof(pg_xent_outputs_t, z_loss), c.outputs, "outputs", "pg_xent_outputs_t");
}

// The dtype switch of the cross-entropy ops (docs/design.md §7); the bucket ops have their own below.
Status dispatch_dtype(const powergrad_capi::Call& c) {
  switch (c.problem->dtype) {
    case PG_DTYPE_FLOAT32: return powergrad_capi::xent_call_f32(c);
    case PG_DTYPE_FLOAT16: return powergrad_capi::xent_call_f16(c);
    case PG_DTYPE_BFLOAT16: return powergrad_capi::xent_call_bf16(c);
  }
  return fail(Status::kInvalidValue, "problem->dtype (%d) is not a pg_dtype_t value", raw(c.problem->dtype));
}


// ---- buckets ----
static_assert(sizeof(pg_bucket_tensor_t) == sizeof(powergrad::BucketTensor<float>) &&
                  offsetof(pg_bucket_tensor_t, numel) == offsetof(powergrad::BucketTensor<float>, numel) &&
                  offsetof(pg_bucket_tensor_t, rows) == offsetof(powergrad::BucketTensor<float>, rows),
              "pg_bucket_tensor_t must have powergrad::BucketTensor's layout");

Status check_dtype(int v, const char* name) {
  if (v != PG_DTYPE_FLOAT32 && v != PG_DTYPE_FLOAT16 && v != PG_DTYPE_BFLOAT16)
    return fail(Status::kInvalidValue, "%s (%d) is not a pg_dtype_t value", name, v);
  return Status::kSuccess;
}

Status check_in_range(int v, int hi, const char* name, const char* type) {
  if (v < 0 || v > hi) return fail(Status::kInvalidValue, "%s (%d) is not a %s value", name, v, type);
  return Status::kSuccess;
}

Status dispatch_bucket(int grad_dtype, const powergrad_capi::BucketCall& c) {
  switch (grad_dtype) {
    case PG_DTYPE_FLOAT32: return powergrad_capi::bucket_call_f32(c);
    case PG_DTYPE_FLOAT16: return powergrad_capi::bucket_call_f16(c);
    case PG_DTYPE_BFLOAT16: return powergrad_capi::bucket_call_bf16(c);
  }
  return fail(Status::kInvalidValue, "plan is corrupted (gradient dtype %d): rebuild it", grad_dtype);
}

// The dtypes recorded in a plan's header. The typed C++ op checks the rest (size fields, checksum,
// units, backend), so the plan is hashed once per call.
Status read_plan_dtypes(const void* plan, size_t plan_bytes, powergrad_capi::BucketCall& c, int& grad_dtype) {
  const powergrad::detail::BucketPlanHeader* h = nullptr;
  PG_TRY(powergrad::detail::check_plan_header(powergrad_capi::kBucketCNames, plan, plan_bytes, h));
  grad_dtype = h->grad_dtype;
  c.param_dtype = h->param_dtype;
  c.plan = plan;
  c.plan_size = plan_bytes;
  return Status::kSuccess;
}

// The common part of the bucket ops: the plan's dtypes, the workspace / flags / stream arguments,
// then `set` fills in the op's own arguments.
template <class F>
Status bucket_op(const void* plan, size_t plan_bytes, powergrad_capi::BucketOp op, void* workspace, size_t workspace_bytes, int32_t* flags,
                 void* stream, F&& set) {
  powergrad_capi::BucketCall c;
  int grad_dtype = 0;
  PG_TRY(read_plan_dtypes(plan, plan_bytes, c, grad_dtype));
  c.op = op;
  c.workspace = workspace;
  c.workspace_bytes = workspace_bytes;
  c.flags = flags;
  c.stream = stream;
  set(c);
  return dispatch_bucket(grad_dtype, c);
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
    if (rows > powergrad::detail::kXentMaxRows)
      return fail(Status::kInvalidSize, "rows (%lld) is larger than 2^59", static_cast<long long>(rows));
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
    PG_TRY(check_problem(problem, c));
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
    PG_TRY(check_problem(problem, c));
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
    PG_TRY(check_problem(problem, c));
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
    PG_TRY(check_problem(problem, c));
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
    PG_TRY(check_problem(problem, c));
    c.merged = merged;
    PG_TRY(read_upstream(upstream, c));
    PG_TRY(read_outputs(outputs, c));
    c.workspace = workspace;
    c.workspace_bytes = workspace_bytes;
    c.stream = stream;
    return dispatch_dtype(c);
  });
}

PG_API pg_status_t pg_bucket_plan_bytes(int64_t count, size_t* bytes) {
  return guarded([&] {
    if (count < 0) return fail(Status::kInvalidSize, "count (%lld) is negative", static_cast<long long>(count));
    if (count > powergrad::detail::kBucketMaxTensors)
      return fail(Status::kInvalidSize, "count (%lld) is larger than 2^40", static_cast<long long>(count));
    if (!bytes) return fail(Status::kNullPointer, "bytes is null");
    *bytes = powergrad::bucket_plan_bytes(count);
    return Status::kSuccess;
  });
}

PG_API pg_status_t pg_bucket_plan_build(const pg_bucket_desc_t* desc, void* plan, size_t plan_bytes) {
  return guarded([&] {
    if (!desc) return fail(Status::kNullPointer, "desc is null");
    // desc is read while the plan is written.
    if (plan && powergrad::detail::ranges_overlap(desc, sizeof(pg_bucket_desc_t), plan, plan_bytes))
      return fail(Status::kInvalidLayout, "desc overlaps the plan");
    PG_TRY(check_size(desc->struct_size, sizeof(pg_bucket_desc_t), "desc", "pg_bucket_desc_t"));
    PG_TRY(check_device(desc->device, "desc->device"));
    PG_TRY(check_dtype(raw(desc->grad_dtype), "desc->grad_dtype"));
    PG_TRY(check_in_range(raw(desc->units), 1, "desc->units", "pg_bucket_units_t"));
    powergrad_capi::BucketCall c;
    c.op = powergrad_capi::BucketOp::kBuild;
    c.param_dtype = raw(desc->grad_dtype);
    if (raw(desc->units) == PG_BUCKET_UNITS_ROWS) {
      PG_TRY(check_dtype(raw(desc->param_dtype), "desc->param_dtype"));
      if (raw(desc->param_dtype) != raw(desc->grad_dtype) && raw(desc->param_dtype) != PG_DTYPE_FLOAT32)
        return fail(Status::kInvalidValue, "desc->param_dtype (%d) must be desc->grad_dtype or PG_DTYPE_FLOAT32",
                    raw(desc->param_dtype));
      c.param_dtype = raw(desc->param_dtype);
    }
    c.desc = desc;
    c.plan_out = plan;
    c.plan_bytes = plan_bytes;
    return dispatch_bucket(raw(desc->grad_dtype), c);
  });
}

PG_API pg_status_t pg_bucket_tensors_from_flat(void* data, pg_dtype_t dtype, const int64_t* offsets, int64_t count,
                                               const void* const* params, const int64_t* rows,
                                               pg_bucket_tensor_t* out) {
  return guarded([&] {
    PG_TRY(check_dtype(raw(dtype), "dtype"));
    const size_t elem = raw(dtype) == PG_DTYPE_FLOAT32 ? 4 : 2;
    PG_TRY(powergrad::detail::check_flat_segments(data, offsets, count, params, rows, out, sizeof(pg_bucket_tensor_t)));
    unsigned char* base = static_cast<unsigned char*>(data);
    for (int64_t i = 0; i < count; ++i) {
      out[i].grad = base ? base + static_cast<size_t>(offsets[i]) * elem : nullptr;
      out[i].param = params ? params[i] : nullptr;
      out[i].numel = offsets[i + 1] - offsets[i];
      out[i].rows = rows ? rows[i] : 0;
    }
    return Status::kSuccess;
  });
}

PG_API pg_status_t pg_bucket_workspace_bytes(const void* plan, size_t plan_bytes, size_t* bytes) {
  return guarded(
      [&] { return powergrad::detail::workspace_bytes(powergrad_capi::kBucketCNames, plan, plan_bytes, bytes); });
}

PG_API pg_status_t pg_bucket_plan_upload(const void* plan, size_t plan_bytes, void* workspace, size_t workspace_bytes,
                                         void* stream) {
  return guarded([&] {
    powergrad_capi::BucketCall c;
    int grad_dtype = 0;
    PG_TRY(read_plan_dtypes(plan, plan_bytes, c, grad_dtype));
    const auto* h = static_cast<const powergrad::detail::BucketPlanHeader*>(plan);
    if (h->backend == PG_DEVICE_CUDA && !POWERGRAD_CAPI_HAS_CUDA)
      return fail(Status::kNoCudaSupport, "the plan is for PG_DEVICE_CUDA but this library was built with no CUDA support");
    return powergrad_capi::bucket_upload_call(plan, plan_bytes, workspace, workspace_bytes, stream);
  });
}

PG_API pg_status_t pg_bucket_power(const void* plan, size_t plan_bytes, float beta, pg_norm_preserve_t preserve,
                                   pg_bucket_scope_t scope, void* workspace, size_t workspace_bytes, int32_t* flags, void* stream) {
  return guarded([&] {
    PG_TRY(check_in_range(raw(preserve), 2, "preserve", "pg_norm_preserve_t"));
    PG_TRY(check_in_range(raw(scope), 1, "scope", "pg_bucket_scope_t"));
    return bucket_op(plan, plan_bytes, powergrad_capi::BucketOp::kPower, workspace, workspace_bytes, flags, stream,
                     [&](powergrad_capi::BucketCall& c) {
                       c.beta = beta;
                       c.preserve = raw(preserve);
                       c.scope = raw(scope);
                     });
  });
}

PG_API pg_status_t pg_bucket_clip_norm(const void* plan, size_t plan_bytes, float max_norm, pg_bucket_scope_t scope,
                                       float* norms, void* workspace, size_t workspace_bytes, int32_t* flags, void* stream) {
  return guarded([&] {
    PG_TRY(check_in_range(raw(scope), 1, "scope", "pg_bucket_scope_t"));
    return bucket_op(plan, plan_bytes, powergrad_capi::BucketOp::kClipNorm, workspace, workspace_bytes, flags, stream,
                     [&](powergrad_capi::BucketCall& c) {
                       c.max_norm = max_norm;
                       c.scope = raw(scope);
                       c.norms = norms;
                     });
  });
}

PG_API pg_status_t pg_bucket_agc(const void* plan, size_t plan_bytes, float clip, float eps, float beta,
                                 pg_norm_preserve_t preserve, void* workspace, size_t workspace_bytes, int32_t* flags, void* stream) {
  return guarded([&] {
    PG_TRY(check_in_range(raw(preserve), 2, "preserve", "pg_norm_preserve_t"));
    return bucket_op(plan, plan_bytes, powergrad_capi::BucketOp::kAgc, workspace, workspace_bytes, flags, stream,
                     [&](powergrad_capi::BucketCall& c) {
                       c.clip = clip;
                       c.eps = eps;
                       c.beta = beta;
                       c.preserve = raw(preserve);
                     });
  });
}

}  // extern "C"
