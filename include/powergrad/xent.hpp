// powergrad C++ API: PGT softmax cross-entropy ops (docs/design.md §2.1-2.3).
//
// Every op validates its arguments, writes nothing and returns a non-success Status (with a message
// in last_error_message()) on bad input, and otherwise dispatches to the host backend (plain loops,
// always available) or the CUDA backend (available when this header is compiled by nvcc).
// CUDA calls are asynchronous on `stream`, never synchronise the host, never allocate, and are
// capturable in a CUDA graph; reduced losses need caller-provided workspace (xent_workspace_bytes).
//
// Ops:
//   xent_forward_backward  loss (+ saved lse, lse_alpha) and dlogits in one sweep of the logits
//   xent_backward          dlogits from the logits; with a saved lse_alpha: one read + one write
//   xent_hook              rewrite an existing gradient s*(p - q) into s*(p' - q), s given
//   xent_shard_stats / xent_merge_stats / xent_shard_apply   the split form for column shards
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "powergrad/config.hpp"
#include "powergrad/detail/xent_job.hpp"
#include "powergrad/host/xent_host.hpp"
#include "powergrad/math/dtype.hpp"
#include "powergrad/status.hpp"
#include "powergrad/xent_types.hpp"

#if defined(__CUDACC__)
#include "powergrad/kernels/xent_kernels.cuh"
#endif

POWERGRAD_NS_BEGIN

// Bytes of device workspace that forward_backward / backward / shard_apply need for `rows` rows
// and reduction `r` (0 for kNone). The host backend needs none.
inline size_t xent_workspace_bytes(int64_t rows, Reduction r) { return detail::xent_workspace_bytes_impl(rows, r); }

namespace detail {

#define POWERGRAD_CHECK(cond, status, ...) \
  do {                              \
    if (!(cond)) return ::powergrad::detail::fail(status, __VA_ARGS__); \
  } while (0)

inline long long ll(int64_t v) { return static_cast<long long>(v); }

inline Status check_backend(Backend b) {
  POWERGRAD_CHECK(b == Backend::kHost || b == Backend::kCuda, Status::kInvalidValue, "backend (%d) is not a Backend value",
           static_cast<int>(b));
#if !defined(__CUDACC__)
  POWERGRAD_CHECK(b == Backend::kHost, Status::kNoCudaSupport,
           "backend is kCuda but this translation unit was not compiled with CUDA (nvcc)");
#endif
  return Status::kSuccess;
}

// Bytes spanned by a [rows x cols] block with row stride ld (rows >= 1).
template <class T>
uint64_t span_bytes(int64_t rows, int64_t cols, int64_t ld) {
  return (static_cast<uint64_t>(rows - 1) * static_cast<uint64_t>(ld) + static_cast<uint64_t>(cols)) * sizeof(T);
}

inline bool ranges_overlap(const void* a, uint64_t na, const void* b, uint64_t nb) {
  const auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return pa < pb + nb && pb < pa + na;
}

// Validates and normalises the problem (ld, total_cols, targets.ld). `grad_like` names the input
// for messages ("logits" or "grad").
template <class T, class Tg>
Status check_problem(XentProblem<T, Tg>& p, const char* input_name) {
  POWERGRAD_CHECK(p.rows >= 0, Status::kInvalidSize, "rows (%lld) is negative", ll(p.rows));
  POWERGRAD_CHECK(p.cols >= 1, Status::kInvalidSize, "cols (%lld) must be >= 1", ll(p.cols));
  if (p.ld == 0) p.ld = p.cols;
  POWERGRAD_CHECK(p.ld >= p.cols, Status::kInvalidSize, "ld (%lld) is smaller than cols (%lld)", ll(p.ld), ll(p.cols));
  POWERGRAD_CHECK(p.col_offset >= 0, Status::kInvalidSize, "col_offset (%lld) is negative", ll(p.col_offset));
  POWERGRAD_CHECK(p.col_offset == 0 || p.total_cols != 0, Status::kInvalidSize,
                  "total_cols must be given for a column shard (col_offset = %lld)", ll(p.col_offset));
  if (p.total_cols == 0) p.total_cols = p.cols;
  POWERGRAD_CHECK(p.total_cols >= p.col_offset + p.cols, Status::kInvalidSize,
           "total_cols (%lld) is smaller than col_offset + cols (%lld + %lld)", ll(p.total_cols), ll(p.col_offset),
           ll(p.cols));
  POWERGRAD_CHECK(std::isfinite(p.alpha) && p.alpha >= 0.f && std::isfinite(p.alpha * math::kLog2e),
                  Status::kInvalidValue, "alpha (%g) must be finite, >= 0 and below FLT_MAX / log2(e)",
                  static_cast<double>(p.alpha));
  POWERGRAD_CHECK(p.label_smoothing >= 0.f && p.label_smoothing < 1.f, Status::kInvalidValue,
           "label_smoothing (%g) must be in [0, 1)", static_cast<double>(p.label_smoothing));
  POWERGRAD_CHECK(p.reduction == Reduction::kNone || p.reduction == Reduction::kMean || p.reduction == Reduction::kSum,
           Status::kInvalidValue, "reduction (%d) is not a Reduction value", static_cast<int>(p.reduction));
  if (p.rows == 0) return Status::kSuccess;
  POWERGRAD_CHECK(p.logits != nullptr, Status::kNullPointer, "%s is null", input_name);
  if constexpr (target_traits<Tg>::hard) {
    POWERGRAD_CHECK(p.targets.index != nullptr, Status::kNullPointer, "targets.index is null");
  } else {
    POWERGRAD_CHECK(p.targets.prob != nullptr, Status::kNullPointer, "targets.prob is null");
    if (p.targets.ld == 0) p.targets.ld = p.cols;
    POWERGRAD_CHECK(p.targets.ld >= p.cols, Status::kInvalidSize, "targets.ld (%lld) is smaller than cols (%lld)",
             ll(p.targets.ld), ll(p.cols));
  }
  return Status::kSuccess;
}

// A gradient output must be either exactly the input (in place, same ld) or disjoint from it.
template <class T, class Tg>
Status check_grad_output(const XentProblem<T, Tg>& p, T*& out, int64_t& ld_out, const char* out_name) {
  POWERGRAD_CHECK(out != nullptr, Status::kNullPointer, "%s is null", out_name);
  if (ld_out == 0) ld_out = p.ld;
  POWERGRAD_CHECK(ld_out >= p.cols, Status::kInvalidSize, "ld of %s (%lld) is smaller than cols (%lld)", out_name,
           ll(ld_out), ll(p.cols));
  if (static_cast<const void*>(out) == static_cast<const void*>(p.logits)) {
    POWERGRAD_CHECK(ld_out == p.ld, Status::kInvalidLayout, "in-place call: ld of %s (%lld) differs from the input's ld (%lld)",
             out_name, ll(ld_out), ll(p.ld));
  } else {
    POWERGRAD_CHECK(!ranges_overlap(out, span_bytes<T>(p.rows, p.cols, ld_out), p.logits, span_bytes<T>(p.rows, p.cols, p.ld)),
             Status::kInvalidLayout, "%s partially overlaps the input (use the same pointer and ld for in place)",
             out_name);
  }
  return Status::kSuccess;
}

inline Status check_upstream(const Upstream& up) {
  POWERGRAD_CHECK(std::isfinite(up.scale), Status::kInvalidValue, "upstream.scale (%g) is not finite",
           static_cast<double>(up.scale));
  return Status::kSuccess;
}

// The float outputs (loss, lse, lse_alpha) must not overlap the input or the gradient.
template <class T, class Tg>
Status check_float_outputs(const XentJob<T, Tg>& j) {
  const uint64_t in_bytes = span_bytes<T>(j.p.rows, j.p.cols, j.p.ld);
  const uint64_t rows = static_cast<uint64_t>(j.p.rows);
  const struct {
    const float* p;
    uint64_t n;
    const char* name;
  } outs[] = {{j.out.loss, j.p.reduction == Reduction::kNone ? rows : 1, "out.loss"},
              {j.out.lse, rows, "out.lse"},
              {j.out.lse_alpha, rows, "out.lse_alpha"}};
  for (const auto& o : outs) {
    if (!o.p) continue;
    POWERGRAD_CHECK(!ranges_overlap(o.p, o.n * sizeof(float), j.p.logits, in_bytes), Status::kInvalidLayout,
                    "%s overlaps the logits", o.name);
    POWERGRAD_CHECK(!j.out.dlogits || !ranges_overlap(o.p, o.n * sizeof(float), j.out.dlogits,
                                                      span_bytes<T>(j.p.rows, j.p.cols, j.out.ld_dlogits)),
                    Status::kInvalidLayout, "%s overlaps the gradient", o.name);
  }
  return Status::kSuccess;
}

template <class T, class Tg>
Status check_workspace(const XentJob<T, Tg>& j, Backend b, void* ws, size_t ws_bytes) {
  if (b != Backend::kCuda || !xent_job_needs_workspace(j)) return Status::kSuccess;
  const size_t need = xent_workspace_bytes_impl(j.p.rows, j.p.reduction);
  POWERGRAD_CHECK(reinterpret_cast<uintptr_t>(ws) % 16 == 0, Status::kInvalidLayout,
                  "workspace must be 16-byte aligned");
  POWERGRAD_CHECK(ws != nullptr && ws_bytes >= need, Status::kWorkspaceTooSmall,
           "workspace (%zu bytes%s) is smaller than xent_workspace_bytes() = %zu", ws_bytes, ws ? "" : ", null", need);
  return Status::kSuccess;
}

template <class T, class Tg>
void init_job(XentJob<T, Tg>& j) {
  j.k = math::make_scalars(j.p.alpha, j.p.label_smoothing, j.p.total_cols);
}

template <class T, class Tg>
Status dispatch(Backend b, const XentJob<T, Tg>& j, void* ws, size_t ws_bytes, stream_t stream) {
  if (b == Backend::kHost) return host::xent_run(j);
#if defined(__CUDACC__)
  return device::xent_run(j, ws, ws_bytes, stream);
#else
  (void)ws;
  (void)ws_bytes;
  (void)stream;
  return fail(Status::kNoCudaSupport, "backend is kCuda but this build has no CUDA support");
#endif
}

// rows == 0: nothing to compute; a reduced loss is 0 by the contract for an empty batch.
template <class T, class Tg>
Status empty_batch(Backend b, const XentJob<T, Tg>& j, stream_t stream) {
  if (j.out.loss == nullptr || j.p.reduction == Reduction::kNone) return Status::kSuccess;
  if (b == Backend::kHost) {
    j.out.loss[0] = 0.f;
    return Status::kSuccess;
  }
#if defined(__CUDACC__)
  return device::zero_floats(j.out.loss, 1, stream);
#else
  (void)stream;
  return Status::kNoCudaSupport;
#endif
}

}  // namespace detail

// Forward + backward: loss, optional saved statistics and the gradient in one sweep of each row.
// out.dlogits may equal problem.logits (in place). Dtypes: float, half_t, bfloat16_t (or CUDA's
// __half / __nv_bfloat16); targets: ClassTargets<int32_t|int64_t> or DenseTargets<T>.
template <class T, class Tg>
[[nodiscard]] Status xent_forward_backward(Backend backend, XentProblem<T, Tg> problem, const Upstream& upstream,
                                           XentOutputs<T> out, void* workspace = nullptr, size_t workspace_bytes = 0,
                                           stream_t stream = nullptr) {
  detail::clear_error();
  Status s = detail::check_backend(backend);
  if (s != Status::kSuccess) return s;
  if ((s = detail::check_problem(problem, "logits")) != Status::kSuccess) return s;
  if ((s = detail::check_upstream(upstream)) != Status::kSuccess) return s;
  detail::XentJob<T, Tg> j;
  j.p = problem;
  j.mode = detail::XentMode::kFused;
  j.up = upstream;
  j.out = out;
  detail::init_job(j);
  if (problem.rows == 0) return detail::empty_batch(backend, j, stream);
  if (out.dlogits && (s = detail::check_grad_output(j.p, j.out.dlogits, j.out.ld_dlogits, "out.dlogits")) != Status::kSuccess)
    return s;
  if ((s = detail::check_float_outputs(j)) != Status::kSuccess) return s;
  if ((s = detail::check_workspace(j, backend, workspace, workspace_bytes)) != Status::kSuccess) return s;
  return detail::dispatch(backend, j, workspace, workspace_bytes, stream);
}

// Backward: dlogits = g_r (p' - q). With saved_lse_alpha (from a forward pass with the same logits
// and alpha) it reads the logits once and writes the gradient once; without it, it recomputes the
// row statistics. dlogits may equal problem.logits (in place).
template <class T, class Tg>
[[nodiscard]] Status xent_backward(Backend backend, XentProblem<T, Tg> problem, const Upstream& upstream,
                                   const float* saved_lse_alpha, T* dlogits, int64_t ld_dlogits = 0,
                                   void* workspace = nullptr, size_t workspace_bytes = 0, stream_t stream = nullptr) {
  detail::clear_error();
  Status s = detail::check_backend(backend);
  if (s != Status::kSuccess) return s;
  if ((s = detail::check_problem(problem, "logits")) != Status::kSuccess) return s;
  if ((s = detail::check_upstream(upstream)) != Status::kSuccess) return s;
  detail::XentJob<T, Tg> j;
  j.p = problem;
  j.mode = saved_lse_alpha ? detail::XentMode::kApply : detail::XentMode::kFused;
  j.lse_alpha_in = saved_lse_alpha;
  j.up = upstream;
  j.out.dlogits = dlogits;
  j.out.ld_dlogits = ld_dlogits;
  detail::init_job(j);
  if (problem.rows == 0) return Status::kSuccess;
  if ((s = detail::check_grad_output(j.p, j.out.dlogits, j.out.ld_dlogits, "dlogits")) != Status::kSuccess) return s;
  if ((s = detail::check_workspace(j, backend, workspace, workspace_bytes)) != Status::kSuccess) return s;
  return detail::dispatch(backend, j, workspace, workspace_bytes, stream);
}

// Hook form (docs/design.md §2.2): problem.logits holds an existing gradient G = s_r (p - q) with a
// known per-row scale s_r > 0; writes s_r (p' - q) with p recovered as clamp(G/s_r + q, 0, 1).
// Rows with s_r = 0 or an ignored target get 0; a negative or non-finite s_r gives a NaN row.
// A recovered p of 0 acts as a masked class (p' = 0 for every alpha). problem.reduction is unused.
template <class T, class Tg>
[[nodiscard]] Status xent_hook(Backend backend, XentProblem<T, Tg> problem, const GradScale& scale, T* out,
                               int64_t ld_out = 0, stream_t stream = nullptr) {
  detail::clear_error();
  Status s = detail::check_backend(backend);
  if (s != Status::kSuccess) return s;
  if ((s = detail::check_problem(problem, "grad")) != Status::kSuccess) return s;
  // p' = p^alpha / sum p^alpha needs the whole row: the hook form has no split form.
  POWERGRAD_CHECK(problem.col_offset == 0 && problem.total_cols == problem.cols, Status::kInvalidSize,
                  "the hook form needs whole rows (col_offset %lld, total_cols %lld, cols %lld)",
                  detail::ll(problem.col_offset), detail::ll(problem.total_cols), detail::ll(problem.cols));
  POWERGRAD_CHECK(std::isfinite(scale.scale) && scale.scale >= 0.f, Status::kInvalidValue,
           "scale.scale (%g) must be finite and >= 0", static_cast<double>(scale.scale));
  detail::XentJob<T, Tg> j;
  j.p = problem;
  j.mode = detail::XentMode::kHook;
  j.hook_scale = scale;
  j.out.dlogits = out;
  j.out.ld_dlogits = ld_out;
  detail::init_job(j);
  if (problem.rows == 0) return Status::kSuccess;
  if ((s = detail::check_grad_output(j.p, j.out.dlogits, j.out.ld_dlogits, "out")) != Status::kSuccess) return s;
  return detail::dispatch(backend, j, nullptr, 0, stream);
}

// Split form, step 1: partial statistics (m, s, sa, t) of this column shard for every row.
// problem.col_offset / total_cols place the shard in the full row.
template <class T, class Tg>
[[nodiscard]] Status xent_shard_stats(Backend backend, XentProblem<T, Tg> problem, RowStats* stats,
                                      stream_t stream = nullptr) {
  detail::clear_error();
  Status s = detail::check_backend(backend);
  if (s != Status::kSuccess) return s;
  if ((s = detail::check_problem(problem, "logits")) != Status::kSuccess) return s;
  if (problem.rows == 0) return Status::kSuccess;
  POWERGRAD_CHECK(stats != nullptr, Status::kNullPointer, "stats is null");
  detail::XentJob<T, Tg> j;
  j.p = problem;
  j.mode = detail::XentMode::kStats;
  j.stats_out = stats;
  detail::init_job(j);
  return detail::dispatch(backend, j, nullptr, 0, stream);
}

// Split form, step 2: merges `shards` arrays of per-row statistics laid out [shard][row] (as an
// all-gather produces them), in shard order, into merged[rows]. merged may not alias parts.
[[nodiscard]] inline Status xent_merge_stats(Backend backend, const RowStats* parts, int64_t shards, int64_t rows,
                                             float alpha, RowStats* merged, stream_t stream = nullptr) {
  detail::clear_error();
  Status s = detail::check_backend(backend);
  if (s != Status::kSuccess) return s;
  POWERGRAD_CHECK(rows >= 0, Status::kInvalidSize, "rows (%lld) is negative", detail::ll(rows));
  POWERGRAD_CHECK(shards >= 1, Status::kInvalidSize, "shards (%lld) must be >= 1", detail::ll(shards));
  POWERGRAD_CHECK(std::isfinite(alpha) && alpha >= 0.f, Status::kInvalidValue, "alpha (%g) must be finite and >= 0",
           static_cast<double>(alpha));
  POWERGRAD_CHECK(std::isfinite(alpha * math::kLog2e), Status::kInvalidValue, "alpha (%g) is too large",
                  static_cast<double>(alpha));
  if (rows == 0) return Status::kSuccess;
  POWERGRAD_CHECK(shards <= INT64_MAX / rows, Status::kInvalidSize, "shards x rows (%lld x %lld) overflows",
                  detail::ll(shards), detail::ll(rows));
  POWERGRAD_CHECK(parts != nullptr, Status::kNullPointer, "parts is null");
  POWERGRAD_CHECK(merged != nullptr, Status::kNullPointer, "merged is null");
  POWERGRAD_CHECK(!detail::ranges_overlap(parts, sizeof(RowStats) * static_cast<uint64_t>(shards * rows), merged,
                                   sizeof(RowStats) * static_cast<uint64_t>(rows)),
           Status::kInvalidLayout, "merged overlaps parts");
  if (backend == Backend::kHost) return host::merge_stats_run(parts, shards, rows, alpha, merged);
#if defined(__CUDACC__)
  return device::merge_stats_run(parts, shards, rows, alpha, merged, stream);
#else
  (void)stream;
  return Status::kNoCudaSupport;
#endif
}

// Split form, step 3: with the merged statistics of every row, writes this shard's gradient and,
// optionally, the loss (per row or reduced) and lse / lse_alpha. Every shard may write the loss;
// the values agree.
template <class T, class Tg>
[[nodiscard]] Status xent_shard_apply(Backend backend, XentProblem<T, Tg> problem, const RowStats* merged,
                                      const Upstream& upstream, XentOutputs<T> out, void* workspace = nullptr,
                                      size_t workspace_bytes = 0, stream_t stream = nullptr) {
  detail::clear_error();
  Status s = detail::check_backend(backend);
  if (s != Status::kSuccess) return s;
  if ((s = detail::check_problem(problem, "logits")) != Status::kSuccess) return s;
  if ((s = detail::check_upstream(upstream)) != Status::kSuccess) return s;
  detail::XentJob<T, Tg> j;
  j.p = problem;
  j.mode = detail::XentMode::kApply;
  j.stats_in = merged;
  j.up = upstream;
  j.out = out;
  detail::init_job(j);
  if (problem.rows == 0) return detail::empty_batch(backend, j, stream);
  POWERGRAD_CHECK(merged != nullptr, Status::kNullPointer, "merged is null");
  if (out.dlogits && (s = detail::check_grad_output(j.p, j.out.dlogits, j.out.ld_dlogits, "out.dlogits")) != Status::kSuccess)
    return s;
  if ((s = detail::check_float_outputs(j)) != Status::kSuccess) return s;
  if ((s = detail::check_workspace(j, backend, workspace, workspace_bytes)) != Status::kSuccess) return s;
  return detail::dispatch(backend, j, workspace, workspace_bytes, stream);
}

POWERGRAD_NS_END

#undef POWERGRAD_CHECK
