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
#include "powergrad/detail/validate.hpp"
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

// The names under which the caller knows each argument: messages print these, so a C++ caller
// reads "problem.rows" and a C caller "problem->rows" (src/capi_names.hpp has the C table).
struct XentArgNames {
  const char* backend;
  const char* rows;
  const char* cols;
  const char* ld;
  const char* col_offset;
  const char* total_cols;
  const char* alpha;
  const char* label_smoothing;
  const char* reduction;
  const char* logits;            // the input: logits, or the incoming gradient of the hook form
  const char* targets_index;
  const char* targets_prob;
  const char* targets_ld;
  const char* bad_target_count;
  const char* upstream_scale;
  const char* upstream_values;
  const char* loss;              // outputs of forward_backward / shard_apply
  const char* lse;
  const char* lse_alpha;
  const char* dlogits;
  const char* ld_dlogits;
  const char* backward_grad;     // xent_backward's gradient and its ld
  const char* backward_ld;
  const char* saved_lse_alpha;
  const char* hook_out;          // xent_hook's output, its ld and scales
  const char* hook_ld;
  const char* hook_scale;
  const char* hook_row_scale;
  const char* stats;             // shard_stats output
  const char* merged;            // shard_apply input
  const char* workspace_query;
  const char* weight;            // options (docs/design.md §2.5)
  const char* z_loss_scale;
  const char* softcap;
  const char* z_loss;
  const char* argmax;
  const char* correct;
};

inline constexpr XentArgNames kXentCppNames = {
    "backend",          "problem.rows",          "problem.cols",        "problem.ld",
    "problem.col_offset", "problem.total_cols",  "problem.alpha",       "problem.label_smoothing",
    "problem.reduction", "problem.logits",       "problem.targets.index", "problem.targets.prob",
    "problem.targets.ld", "problem.bad_target_count", "upstream.scale", "upstream.values",
    "out.loss",         "out.lse",               "out.lse_alpha",       "out.dlogits",
    "out.ld_dlogits",   "dlogits",               "ld_dlogits",          "saved_lse_alpha",
    "out",              "ld_out",                "scale.scale",         "scale.row_scale",
    "stats",            "merged",                "xent_workspace_bytes()", "problem.weight",
    "problem.z_loss_scale", "problem.softcap",   "out.z_loss",          "out.argmax",
    "out.correct"};

// Bytes spanned by a [rows x cols] block of T with row stride ld (0 when rows is 0). The caller has
// checked that rows * ld * sizeof(T) fits in int64.
template <class T>
uint64_t span_bytes(int64_t rows, int64_t cols, int64_t ld) {
  if (rows <= 0) return 0;
  return (static_cast<uint64_t>(rows - 1) * static_cast<uint64_t>(ld) + static_cast<uint64_t>(cols)) * sizeof(T);
}

// Whether a [rows x ld] block of `elem`-byte elements is addressable with 64-bit byte offsets.
inline bool block_fits(int64_t rows, int64_t ld, size_t elem) {
  return rows == 0 || ld <= INT64_MAX / static_cast<int64_t>(elem) / rows;
}

// One buffer an op reads or writes. A non-null pointer covers at least one byte, so that two
// arguments naming the same address are caught even when the batch is empty.
struct Region {
  const void* p;
  uint64_t bytes;
  const char* name;
};

inline bool regions_overlap(const Region& a, const Region& b) {
  if (!a.p || !b.p) return false;
  return ranges_overlap(a.p, a.bytes ? a.bytes : 1, b.p, b.bytes ? b.bytes : 1);
}

// Every output must be disjoint from every input and from every other output. The one exception is
// the gradient written in place over the input (ins[0]): pass its index in `outs` as in_place_out
// (check_grad_output has checked that it then has the input's ld).
template <size_t NI, size_t NO>
Status check_disjoint(const Region (&ins)[NI], const Region (&outs)[NO], int in_place_out = -1) {
  for (size_t o = 0; o < NO; ++o) {
    for (size_t i = 0; i < NI; ++i) {
      if (static_cast<int>(o) == in_place_out && i == 0 && outs[o].p == ins[0].p) continue;
      POWERGRAD_REQUIRE(!regions_overlap(outs[o], ins[i]), Status::kInvalidLayout, "%s overlaps %s", outs[o].name,
                        ins[i].name);
    }
    for (size_t k = o + 1; k < NO; ++k)
      POWERGRAD_REQUIRE(!regions_overlap(outs[o], outs[k]), Status::kInvalidLayout, "%s overlaps %s", outs[o].name,
                        outs[k].name);
  }
  return Status::kSuccess;
}

// RowStats buffers hold an int64 (argmax): they must be aligned for it.
inline Status check_stats_aligned(const void* p, const char* name) {
  POWERGRAD_REQUIRE(reinterpret_cast<uintptr_t>(p) % alignof(RowStats) == 0, Status::kInvalidLayout,
                    "%s must be %zu-byte aligned (alignof(RowStats))", name, alignof(RowStats));
  return Status::kSuccess;
}

// The PGT exponent: finite, >= 0, and alpha * log2(e) finite (the kernels scale by it).
inline Status check_alpha(float alpha, const char* name) {
  POWERGRAD_REQUIRE(std::isfinite(alpha) && alpha >= 0.f && std::isfinite(alpha * math::kLog2e),
                    Status::kInvalidValue, "%s (%g) must be finite, >= 0 and below FLT_MAX / log2(e)", name,
                    static_cast<double>(alpha));
  return Status::kSuccess;
}

// Validates and normalises the problem (ld, total_cols, targets.ld). Checked whatever the number
// of rows: an argument that is wrong for every batch size is rejected for an empty one too.
// The targets of a [rows x cols] problem (class indices, or a dense block whose ld = 0 becomes cols),
// shared by the cross-entropy and the linear cross-entropy with their own argument names.
struct TargetArgNames {
  const char* rows;
  const char* cols;
  const char* index;
  const char* prob;
  const char* ld;
};

template <class Tg>
Status check_targets(const TargetArgNames& n, Tg& t, int64_t rows, int64_t cols) {
  if constexpr (target_traits<Tg>::hard) {
    POWERGRAD_REQUIRE(t.index != nullptr, Status::kNullPointer, "%s is null", n.index);
  } else {
    POWERGRAD_REQUIRE(t.prob != nullptr, Status::kNullPointer, "%s is null", n.prob);
    POWERGRAD_REQUIRE(t.ld >= 0, Status::kInvalidSize, "%s (%lld) is negative", n.ld, as_ll(t.ld));
    if (t.ld == 0) t.ld = cols;
    POWERGRAD_REQUIRE(t.ld >= cols, Status::kInvalidSize, "%s (%lld) is smaller than %s (%lld)", n.ld, as_ll(t.ld),
                      n.cols, as_ll(cols));
    POWERGRAD_REQUIRE(block_fits(rows, t.ld, sizeof(*t.prob)), Status::kInvalidSize,
                      "%s x %s (%lld x %lld elements) does not fit in 64-bit byte offsets", n.rows, n.ld,
                      as_ll(rows), as_ll(t.ld));
  }
  return Status::kSuccess;
}

template <class T, class Tg>
Status check_problem(const XentArgNames& n, XentProblem<T, Tg>& p) {
  POWERGRAD_REQUIRE(p.rows >= 0, Status::kInvalidSize, "%s (%lld) is negative", n.rows, as_ll(p.rows));
  POWERGRAD_REQUIRE(p.rows <= kXentMaxRows, Status::kInvalidSize, "%s (%lld) is larger than 2^59", n.rows,
                    as_ll(p.rows));
  POWERGRAD_REQUIRE(p.cols >= 1, Status::kInvalidSize, "%s (%lld) must be >= 1", n.cols, as_ll(p.cols));
  POWERGRAD_REQUIRE(p.ld >= 0, Status::kInvalidSize, "%s (%lld) is negative", n.ld, as_ll(p.ld));
  if (p.ld == 0) p.ld = p.cols;
  POWERGRAD_REQUIRE(p.ld >= p.cols, Status::kInvalidSize, "%s (%lld) is smaller than %s (%lld)", n.ld, as_ll(p.ld),
                    n.cols, as_ll(p.cols));
  POWERGRAD_REQUIRE(block_fits(p.rows, p.ld, sizeof(T)), Status::kInvalidSize,
                    "%s x %s (%lld x %lld elements) does not fit in 64-bit byte offsets", n.rows, n.ld, as_ll(p.rows),
                    as_ll(p.ld));
  POWERGRAD_REQUIRE(p.col_offset >= 0, Status::kInvalidSize, "%s (%lld) is negative", n.col_offset,
                    as_ll(p.col_offset));
  POWERGRAD_REQUIRE(p.total_cols >= 0, Status::kInvalidSize, "%s (%lld) is negative", n.total_cols,
                    as_ll(p.total_cols));
  POWERGRAD_REQUIRE(p.col_offset == 0 || p.total_cols != 0, Status::kInvalidSize,
                    "%s must be given for a column shard (%s = %lld)", n.total_cols, n.col_offset, as_ll(p.col_offset));
  if (p.total_cols == 0) p.total_cols = p.cols;
  // Written as a subtraction: col_offset + cols may overflow int64.
  POWERGRAD_REQUIRE(p.total_cols >= p.cols && p.col_offset <= p.total_cols - p.cols, Status::kInvalidSize,
                    "%s (%lld) is smaller than %s + %s (%lld + %lld)", n.total_cols, as_ll(p.total_cols),
                    n.col_offset, n.cols, as_ll(p.col_offset), as_ll(p.cols));
  POWERGRAD_TRY(check_alpha(p.alpha, n.alpha));
  POWERGRAD_REQUIRE(p.label_smoothing >= 0.f && p.label_smoothing < 1.f, Status::kInvalidValue,
                    "%s (%g) must be in [0, 1)", n.label_smoothing, static_cast<double>(p.label_smoothing));
  POWERGRAD_REQUIRE(p.reduction == Reduction::kNone || p.reduction == Reduction::kMean ||
                        p.reduction == Reduction::kSum,
                    Status::kInvalidValue, "%s (%d) is not a Reduction value", n.reduction,
                    static_cast<int>(p.reduction));
  POWERGRAD_REQUIRE(std::isfinite(p.z_loss_scale) && p.z_loss_scale >= 0.f, Status::kInvalidValue,
                    "%s (%g) must be finite and >= 0", n.z_loss_scale, static_cast<double>(p.z_loss_scale));
  // 1 / c must be finite too: the kernels scale by it.
  POWERGRAD_REQUIRE(p.softcap == 0.f || (std::isfinite(p.softcap) && p.softcap > 0.f && std::isfinite(1.f / p.softcap)),
                    Status::kInvalidValue, "%s (%g) must be finite and > 0, or 0 (off)", n.softcap,
                    static_cast<double>(p.softcap));
  POWERGRAD_REQUIRE(p.logits != nullptr, Status::kNullPointer, "%s is null", n.logits);
  return check_targets(TargetArgNames{n.rows, n.cols, n.targets_index, n.targets_prob, n.targets_ld}, p.targets,
                       p.rows, p.cols);
}

// The buffers every op reads: the input block and the targets.
template <class T, class Tg>
Region input_region(const XentArgNames& n, const XentProblem<T, Tg>& p) {
  return {p.logits, span_bytes<T>(p.rows, p.cols, p.ld), n.logits};
}
template <class T, class Tg>
Region targets_region(const XentArgNames& n, const XentProblem<T, Tg>& p) {
  if constexpr (target_traits<Tg>::hard)
    return {p.targets.index, static_cast<uint64_t>(p.rows) * sizeof(*p.targets.index), n.targets_index};
  else
    return {p.targets.prob, span_bytes<T>(p.rows, p.cols, p.targets.ld), n.targets_prob};
}
template <class T, class Tg>
Region weight_region(const XentArgNames& n, const XentProblem<T, Tg>& p) {
  return {p.weight, static_cast<uint64_t>(p.cols) * sizeof(float), n.weight};
}
template <class T, class Tg>
Region bad_count_region(const XentArgNames& n, const XentProblem<T, Tg>& p) {
  return {p.bad_target_count, sizeof(int32_t), n.bad_target_count};
}
inline Region floats_region(const float* p, int64_t count, const char* name) {
  return {p, static_cast<uint64_t>(count) * sizeof(float), name};
}

// A gradient output: required, ld >= cols (0: the input's), and either exactly the input (in place,
// same ld) or disjoint from it (checked with the other buffers by check_disjoint).
template <class T, class Tg>
Status check_grad_output(const XentArgNames& n, const XentProblem<T, Tg>& p, T* out, int64_t& ld_out,
                         const char* out_name, const char* ld_name) {
  POWERGRAD_REQUIRE(out != nullptr, Status::kNullPointer, "%s is null", out_name);
  POWERGRAD_REQUIRE(ld_out >= 0, Status::kInvalidSize, "%s (%lld) is negative", ld_name, as_ll(ld_out));
  if (ld_out == 0) ld_out = p.ld;
  POWERGRAD_REQUIRE(ld_out >= p.cols, Status::kInvalidSize, "%s (%lld) is smaller than %s (%lld)", ld_name,
                    as_ll(ld_out), n.cols, as_ll(p.cols));
  POWERGRAD_REQUIRE(block_fits(p.rows, ld_out, sizeof(T)), Status::kInvalidSize,
                    "%s x %s (%lld x %lld elements) does not fit in 64-bit byte offsets", n.rows, ld_name,
                    as_ll(p.rows), as_ll(ld_out));
  if (static_cast<const void*>(out) == static_cast<const void*>(p.logits))
    POWERGRAD_REQUIRE(ld_out == p.ld, Status::kInvalidLayout, "in-place call: %s (%lld) differs from %s (%lld)",
                      ld_name, as_ll(ld_out), n.ld, as_ll(p.ld));
  return Status::kSuccess;
}

inline Status check_upstream(const XentArgNames& n, const Upstream& up) {
  POWERGRAD_REQUIRE(std::isfinite(up.scale), Status::kInvalidValue, "%s (%g) is not finite", n.upstream_scale,
                    static_cast<double>(up.scale));
  return Status::kSuccess;
}

// The opening checks every cross-entropy op shares.
template <class T, class Tg>
Status open_op(const XentArgNames& n, Backend b, XentProblem<T, Tg>& p) {
  clear_error();
  POWERGRAD_TRY(check_backend(static_cast<int>(b), n.backend));
  return check_problem(n, p);
}

template <class T, class Tg>
Region workspace_region(const XentJob<T, Tg>& j, Backend b, void* ws, size_t ws_bytes) {
  if (b != Backend::kCuda || !xent_job_needs_workspace(j)) return {nullptr, 0, "workspace"};
  return {ws, ws_bytes, "workspace"};
}

template <class T, class Tg>
Status check_workspace(const XentArgNames& n, const XentJob<T, Tg>& j, Backend b, void* ws, size_t ws_bytes) {
  if (b != Backend::kCuda || !xent_job_needs_workspace(j)) return Status::kSuccess;
  return check_workspace_size(ws, ws_bytes, xent_workspace_bytes_impl(j.p.rows, j.p.reduction), XentWorkspace::kAlign, n.workspace_query);
}

template <class T, class Tg>
void init_job(XentJob<T, Tg>& j) {
  j.k = math::make_scalars(j.p.alpha, j.p.label_smoothing, j.p.total_cols, j.p.softcap, j.p.z_loss_scale);
}

// Host backend: every class index is ignore_index or in [0, total_cols), and every class weight is
// finite and >= 0 (the CUDA backend cannot check either without a host synchronisation: it makes
// the rows concerned NaN and counts them instead, docs/design.md §8).
template <class T, class Tg>
Status check_host_inputs(const XentArgNames& n, const XentJob<T, Tg>& j) {
  if constexpr (target_traits<Tg>::hard) {
    const auto& t = j.p.targets;
    for (int64_t r = 0; r < j.p.rows; ++r) {
      const int64_t y = static_cast<int64_t>(t.index[r]);
      POWERGRAD_REQUIRE(y == t.ignore_index || (y >= 0 && y < j.p.total_cols), Status::kInvalidTarget,
                        "%s[%lld] = %lld is outside [0, %lld) and is not ignore_index (%lld)", n.targets_index,
                        as_ll(r), as_ll(y), as_ll(j.p.total_cols), as_ll(t.ignore_index));
    }
  }
  if (j.p.weight) {
    for (int64_t c = 0; c < j.p.cols; ++c)
      POWERGRAD_REQUIRE(std::isfinite(j.p.weight[c]) && j.p.weight[c] >= 0.f, Status::kInvalidValue,
                        "%s[%lld] (%g) must be finite and >= 0", n.weight, as_ll(c),
                        static_cast<double>(j.p.weight[c]));
  }
  return Status::kSuccess;
}

template <XentMode MODE, class T, class Tg>
Status dispatch(const XentArgNames& n, Backend b, const XentJob<T, Tg>& j, void* ws, size_t ws_bytes,
                stream_t stream) {
  if (b == Backend::kHost) {
    POWERGRAD_TRY(check_host_inputs(n, j));
    return host::xent_run(j);
  }
#if defined(__CUDACC__)
  return device::xent_run<MODE>(j, ws, ws_bytes, stream);
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
  if (j.p.reduction == Reduction::kNone) return Status::kSuccess;
  if (b == Backend::kHost) {
    if (j.out.loss) j.out.loss[0] = 0.f;
    if (j.out.z_loss) j.out.z_loss[0] = 0.f;
    return Status::kSuccess;
  }
#if defined(__CUDACC__)
  if (j.out.loss) POWERGRAD_TRY(device::zero_floats(j.out.loss, 1, stream));
  if (j.out.z_loss) POWERGRAD_TRY(device::zero_floats(j.out.z_loss, 1, stream));
  return Status::kSuccess;
#else
  (void)stream;
  return Status::kNoCudaSupport;
#endif
}

// The buffers of every op but shard_stats: the gradient output (`grad_required`: backward and hook;
// optional for forward_backward and shard_apply), the upstream, the workspace, and every output
// (loss, lse, lse_alpha, gradient, bad-target counter, workspace) against every input (logits,
// targets, upstream values, and the op's own `extra_in`: merged statistics, a saved lse_alpha or
// the hook's row scales) and against each other.
template <class T, class Tg>
Status check_buffers(const XentArgNames& n, XentJob<T, Tg>& j, Backend b, void* ws, size_t ws_bytes,
                     bool grad_required, const char* grad_name, const char* ld_name, Region extra_in) {
  const XentProblem<T, Tg>& p = j.p;
  if (j.out.dlogits || grad_required)
    POWERGRAD_TRY(check_grad_output(n, p, j.out.dlogits, j.out.ld_dlogits, grad_name, ld_name));
  POWERGRAD_TRY(check_upstream(n, j.up));
  POWERGRAD_TRY(check_workspace(n, j, b, ws, ws_bytes));
  const bool none = p.reduction == Reduction::kNone;
  const Region ins[] = {input_region(n, p), targets_region(n, p),
                        floats_region(j.up.values, none ? p.rows : 1, n.upstream_values), extra_in,
                        weight_region(n, p)};
  const Region outs[] = {{j.out.dlogits, j.out.dlogits ? span_bytes<T>(p.rows, p.cols, j.out.ld_dlogits) : 0, grad_name},
                         floats_region(j.out.loss, none ? p.rows : 1, n.loss),
                         floats_region(j.out.lse, p.rows, n.lse),
                         floats_region(j.out.lse_alpha, p.rows, n.lse_alpha),
                         bad_count_region(n, p),
                         workspace_region(j, b, ws, ws_bytes),
                         floats_region(j.out.z_loss, none ? p.rows : 1, n.z_loss),
                         {j.out.argmax, static_cast<uint64_t>(p.rows) * sizeof(int64_t), n.argmax},
                         {j.out.correct, static_cast<uint64_t>(p.rows) * sizeof(int32_t), n.correct}};
  return check_disjoint(ins, outs, 0);
}

// Which options an op supports (docs/design.md §2.5). `whole_rows`: forward_backward and backward,
// whose kMean denominator needs the target's weight, so weights need the whole row there (the split
// form carries it in the statistics).
template <class T, class Tg>
Status check_options(const XentArgNames& n, const XentJob<T, Tg>& j, bool whole_rows) {
  const XentProblem<T, Tg>& p = j.p;
  if (whole_rows)
    POWERGRAD_REQUIRE(!p.weight || (p.col_offset == 0 && p.total_cols == p.cols), Status::kUnsupported,
                      "%s with a column shard (%s %lld, %s %lld) needs the split form (shard_stats, merge_stats, "
                      "shard_apply)",
                      n.weight, n.col_offset, as_ll(p.col_offset), n.total_cols, as_ll(p.total_cols));
  // A dense row's target mass A sums over every column (docs/design.md §2.5): a column shard sees only
  // its part of it, so a whole-row op over a shard of dense targets would silently use the wrong A.
  if constexpr (!target_traits<Tg>::hard)
    if (whole_rows)
      POWERGRAD_REQUIRE(p.col_offset == 0 && p.total_cols == p.cols, Status::kUnsupported,
                        "dense %s with a column shard (%s %lld, %s %lld) need the split form (shard_stats, "
                        "merge_stats, shard_apply): the row's target mass sums over every shard",
                        n.targets_prob, n.col_offset, as_ll(p.col_offset), n.total_cols, as_ll(p.total_cols));
  if constexpr (!target_traits<Tg>::hard)
    POWERGRAD_REQUIRE(j.out.correct == nullptr, Status::kUnsupported,
                      "%s needs class targets (dense targets have no target class; %s is defined)", n.correct,
                      n.argmax);
  return Status::kSuccess;
}

template <class T, class Tg>
Status forward_backward(const XentArgNames& n, Backend backend, XentProblem<T, Tg> problem, const Upstream& upstream,
                        XentOutputs<T> out, void* workspace, size_t workspace_bytes, stream_t stream) {
  POWERGRAD_TRY(open_op(n, backend, problem));
  XentJob<T, Tg> j;
  j.p = problem;
  j.mode = XentMode::kFused;
  j.up = upstream;
  j.out = out;
  init_job(j);
  POWERGRAD_TRY(check_options(n, j, true));
  POWERGRAD_TRY(check_buffers(n, j, backend, workspace, workspace_bytes, false, n.dlogits, n.ld_dlogits,
                              Region{nullptr, 0, ""}));
  if (problem.rows == 0) return empty_batch(backend, j, stream);
  return dispatch<XentMode::kFused>(n, backend, j, workspace, workspace_bytes, stream);
}

template <class T, class Tg>
Status backward(const XentArgNames& n, Backend backend, XentProblem<T, Tg> problem, const Upstream& upstream,
                const float* saved_lse_alpha, T* dlogits, int64_t ld_dlogits, void* workspace, size_t workspace_bytes,
                stream_t stream) {
  POWERGRAD_TRY(open_op(n, backend, problem));
  XentJob<T, Tg> j;
  j.p = problem;
  // The z-loss gradient needs lse as well as lse_alpha: with a z-loss the statistics are recomputed
  // (docs/design.md §2.5), and the saved lse_alpha is only checked for overlaps.
  const bool use_saved = saved_lse_alpha != nullptr && problem.z_loss_scale == 0.f;
  j.mode = use_saved ? XentMode::kApplySaved : XentMode::kFused;
  j.lse_alpha_in = use_saved ? saved_lse_alpha : nullptr;
  j.up = upstream;
  j.out.dlogits = dlogits;
  j.out.ld_dlogits = ld_dlogits;
  init_job(j);
  POWERGRAD_TRY(check_options(n, j, true));
  POWERGRAD_TRY(check_buffers(n, j, backend, workspace, workspace_bytes, true, n.backward_grad, n.backward_ld,
                              floats_region(saved_lse_alpha, j.p.rows, n.saved_lse_alpha)));
  if (problem.rows == 0) return Status::kSuccess;
  if (use_saved) return dispatch<XentMode::kApplySaved>(n, backend, j, workspace, workspace_bytes, stream);
  return dispatch<XentMode::kFused>(n, backend, j, workspace, workspace_bytes, stream);
}

template <class T, class Tg>
Status hook(const XentArgNames& n, Backend backend, XentProblem<T, Tg> problem, const GradScale& scale, T* out,
            int64_t ld_out, stream_t stream) {
  POWERGRAD_TRY(open_op(n, backend, problem));
  // p' = p^alpha / sum p^alpha needs the whole row: the hook form has no split form.
  POWERGRAD_REQUIRE(problem.col_offset == 0 && problem.total_cols == problem.cols, Status::kInvalidSize,
                    "the hook form needs whole rows (%s %lld, %s %lld, %s %lld)", n.col_offset,
                    as_ll(problem.col_offset), n.total_cols, as_ll(problem.total_cols), n.cols, as_ll(problem.cols));
  POWERGRAD_REQUIRE(std::isfinite(scale.scale) && scale.scale >= 0.f, Status::kInvalidValue,
                    "%s (%g) must be finite and >= 0", n.hook_scale, static_cast<double>(scale.scale));
  // Its input is a gradient: p cannot be recovered from it once weights, a z-loss term or a softcap
  // chain factor are in it (docs/design.md §2.5).
  POWERGRAD_REQUIRE(problem.weight == nullptr, Status::kUnsupported, "the hook form does not support %s",
                    n.weight);
  POWERGRAD_REQUIRE(problem.z_loss_scale == 0.f, Status::kUnsupported, "the hook form does not support %s (%g)",
                    n.z_loss_scale, static_cast<double>(problem.z_loss_scale));
  POWERGRAD_REQUIRE(problem.softcap == 0.f, Status::kUnsupported, "the hook form does not support %s (%g)",
                    n.softcap, static_cast<double>(problem.softcap));
  XentJob<T, Tg> j;
  j.p = problem;
  j.mode = XentMode::kHook;
  j.hook_scale = scale;
  j.out.dlogits = out;
  j.out.ld_dlogits = ld_out;
  init_job(j);
  POWERGRAD_TRY(check_buffers(n, j, backend, nullptr, 0, true, n.hook_out, n.hook_ld,
                              floats_region(scale.row_scale, j.p.rows, n.hook_row_scale)));
  if (problem.rows == 0) return Status::kSuccess;
  return dispatch<XentMode::kHook>(n, backend, j, nullptr, 0, stream);
}

template <class T, class Tg>
Status shard_stats(const XentArgNames& n, Backend backend, XentProblem<T, Tg> problem, RowStats* stats,
                   stream_t stream) {
  POWERGRAD_TRY(open_op(n, backend, problem));
  POWERGRAD_REQUIRE(stats != nullptr, Status::kNullPointer, "%s is null", n.stats);
  POWERGRAD_TRY(check_stats_aligned(stats, n.stats));
  const Region ins[] = {input_region(n, problem), targets_region(n, problem), weight_region(n, problem)};
  const Region outs[] = {{stats, static_cast<uint64_t>(problem.rows) * sizeof(RowStats), n.stats},
                         bad_count_region(n, problem)};
  POWERGRAD_TRY(check_disjoint(ins, outs));
  if (problem.rows == 0) return Status::kSuccess;
  XentJob<T, Tg> j;
  j.p = problem;
  j.mode = XentMode::kStats;
  j.stats_out = stats;
  init_job(j);
  return dispatch<XentMode::kStats>(n, backend, j, nullptr, 0, stream);
}

template <class T, class Tg>
Status shard_apply(const XentArgNames& n, Backend backend, XentProblem<T, Tg> problem, const RowStats* merged,
                   const Upstream& upstream, XentOutputs<T> out, void* workspace, size_t workspace_bytes,
                   stream_t stream) {
  POWERGRAD_TRY(open_op(n, backend, problem));
  POWERGRAD_REQUIRE(merged != nullptr, Status::kNullPointer, "%s is null", n.merged);
  POWERGRAD_TRY(check_stats_aligned(merged, n.merged));
  XentJob<T, Tg> j;
  j.p = problem;
  j.mode = XentMode::kApplyMerged;
  j.stats_in = merged;
  j.up = upstream;
  j.out = out;
  init_job(j);
  POWERGRAD_TRY(check_options(n, j, false));
  POWERGRAD_TRY(check_buffers(n, j, backend, workspace, workspace_bytes, false, n.dlogits, n.ld_dlogits,
                              Region{merged, static_cast<uint64_t>(problem.rows) * sizeof(RowStats), n.merged}));
  if (problem.rows == 0) return empty_batch(backend, j, stream);
  return dispatch<XentMode::kApplyMerged>(n, backend, j, workspace, workspace_bytes, stream);
}

inline Status merge_stats(Backend backend, const RowStats* parts, int64_t shards, int64_t rows, float alpha,
                          RowStats* merged, stream_t stream) {
  clear_error();
  POWERGRAD_TRY(check_backend(static_cast<int>(backend), "backend"));
  POWERGRAD_REQUIRE(rows >= 0, Status::kInvalidSize, "rows (%lld) is negative", as_ll(rows));
  POWERGRAD_REQUIRE(shards >= 1, Status::kInvalidSize, "shards (%lld) must be >= 1", as_ll(shards));
  POWERGRAD_TRY(check_alpha(alpha, "alpha"));
  POWERGRAD_REQUIRE(rows == 0 || shards <= INT64_MAX / static_cast<int64_t>(sizeof(RowStats)) / rows,
                    Status::kInvalidSize, "shards x rows (%lld x %lld) overflows", as_ll(shards), as_ll(rows));
  POWERGRAD_REQUIRE(parts != nullptr, Status::kNullPointer, "parts is null");
  POWERGRAD_REQUIRE(merged != nullptr, Status::kNullPointer, "merged is null");
  POWERGRAD_TRY(check_stats_aligned(parts, "parts"));
  POWERGRAD_TRY(check_stats_aligned(merged, "merged"));
  const Region ins[] = {{parts, sizeof(RowStats) * static_cast<uint64_t>(shards * rows), "parts"}};
  const Region outs[] = {{merged, sizeof(RowStats) * static_cast<uint64_t>(rows), "merged"}};
  POWERGRAD_TRY(check_disjoint(ins, outs));
  if (rows == 0) return Status::kSuccess;
  if (backend == Backend::kHost) return host::merge_stats_run(parts, shards, rows, alpha, merged);
#if defined(__CUDACC__)
  return device::merge_stats_run(parts, shards, rows, alpha, merged, stream);
#else
  (void)stream;
  return Status::kNoCudaSupport;
#endif
}

}  // namespace detail

// Forward + backward: loss, optional saved statistics and the gradient in one sweep of each row.
// out.dlogits may equal problem.logits (in place). Dtypes: float, half_t, bfloat16_t (pass CUDA's
// __half / __nv_bfloat16 buffers through a reinterpret_cast: the layouts are identical); targets:
// ClassTargets<int32_t|int64_t> or DenseTargets<T>.
template <class T, class Tg>
[[nodiscard]] Status xent_forward_backward(Backend backend, XentProblem<T, Tg> problem, const Upstream& upstream,
                                           XentOutputs<T> out, void* workspace = nullptr, size_t workspace_bytes = 0,
                                           stream_t stream = nullptr) {
  return detail::forward_backward(detail::kXentCppNames, backend, problem, upstream, out, workspace, workspace_bytes,
                                  stream);
}

// Backward: dlogits = g_r (p' - q). With saved_lse_alpha (from a forward pass with the same logits
// and alpha) it reads the logits once and writes the gradient once; without it, it recomputes the
// row statistics. dlogits may equal problem.logits (in place).
template <class T, class Tg>
[[nodiscard]] Status xent_backward(Backend backend, XentProblem<T, Tg> problem, const Upstream& upstream,
                                   const float* saved_lse_alpha, T* dlogits, int64_t ld_dlogits = 0,
                                   void* workspace = nullptr, size_t workspace_bytes = 0, stream_t stream = nullptr) {
  return detail::backward(detail::kXentCppNames, backend, problem, upstream, saved_lse_alpha, dlogits, ld_dlogits,
                          workspace, workspace_bytes, stream);
}

// Hook form (docs/design.md §2.2): problem.logits holds an existing gradient G = s_r (p - q) with a
// known per-row scale s_r > 0; writes s_r (p' - q) with p recovered as clamp(G/s_r + q, 0, 1).
// Rows with s_r = 0 or an ignored target get 0; a negative or non-finite s_r gives a NaN row.
// A recovered p of 0 acts as a masked class (p' = 0 for every alpha). problem.reduction is unused.
template <class T, class Tg>
[[nodiscard]] Status xent_hook(Backend backend, XentProblem<T, Tg> problem, const GradScale& scale, T* out,
                               int64_t ld_out = 0, stream_t stream = nullptr) {
  return detail::hook(detail::kXentCppNames, backend, problem, scale, out, ld_out, stream);
}

// Split form, step 1: partial statistics (m, s, sa, t, a, w, argmax: docs/design.md §2.3) of this
// column shard for every row; problem.weight, when given, holds this shard's weights.
// problem.col_offset / total_cols place the shard in the full row.
template <class T, class Tg>
[[nodiscard]] Status xent_shard_stats(Backend backend, XentProblem<T, Tg> problem, RowStats* stats,
                                      stream_t stream = nullptr) {
  return detail::shard_stats(detail::kXentCppNames, backend, problem, stats, stream);
}

// Split form, step 2: merges `shards` arrays of per-row statistics laid out [shard][row] (as an
// all-gather produces them), in shard order, into merged[rows]. merged may not alias parts.
[[nodiscard]] inline Status xent_merge_stats(Backend backend, const RowStats* parts, int64_t shards, int64_t rows,
                                             float alpha, RowStats* merged, stream_t stream = nullptr) {
  return detail::merge_stats(backend, parts, shards, rows, alpha, merged, stream);
}

// Split form, step 3: with the merged statistics of every row, writes this shard's gradient and,
// optionally, the loss (per row or reduced) and lse / lse_alpha. Every shard may write the loss;
// the values agree.
template <class T, class Tg>
[[nodiscard]] Status xent_shard_apply(Backend backend, XentProblem<T, Tg> problem, const RowStats* merged,
                                      const Upstream& upstream, XentOutputs<T> out, void* workspace = nullptr,
                                      size_t workspace_bytes = 0, stream_t stream = nullptr) {
  return detail::shard_apply(detail::kXentCppNames, backend, problem, merged, upstream, out, workspace, workspace_bytes,
                             stream);
}

POWERGRAD_NS_END
