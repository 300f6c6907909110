// powergrad C++ API: the PGT linear cross-entropy (docs/design.md §2.6): the classifier GEMM
// z = h W^T + b fused with the PGT cross-entropy of docs/design.md §2.1, cut into row chunks so
// that the full logits [rows x vocab] never exist.
//
// Per chunk of rows, in a caller-provided workspace: z_chunk by one GEMM (fp32 accumulation), the
// existing fused row op (xent_forward_backward) in place over it, giving the loss rows and
// G = g_r (p' - q); then dh_chunk = G W, dW += G^T h_chunk (fp32 accumulation whatever the output
// type) and db += the column sums of G. The mean's 1/n_valid is counted before the first chunk;
// nothing is read back to the host, nothing is allocated, and the same input gives bitwise the
// same output run after run (no floating-point atomics).
//
// The options of the cross-entropy (docs/design.md §2.5: class_weight, z_loss_scale, softcap; the
// z_loss, argmax and correct outputs) pass through to the row op; the kMean denominator with class
// weights is formed before the first chunk like n_valid. The split form for a vocabulary-sharded
// weight (linear_xent_shard_stats, the caller's all-gather + xent_merge_stats, linear_xent_shard_apply)
// is docs/design.md §2.6's.
//
// Backends: the host backend needs a CBLAS (POWERGRAD_HAS_BLAS; CMake links OpenBLAS into
// powergrad::powergrad when FindBLAS finds it) and returns kUnsupported without one; the CUDA
// backend (this header compiled by nvcc) needs cuBLAS (link CUDA::cublas) and the caller's
// cublasHandle_t (passed as void*): the op runs its GEMMs on `stream` through it and gives the
// handle its previous stream back; the handle's own workspace (cublasSetWorkspace) is used as is.
//
// This header is not part of the umbrella powergrad.hpp: only code that uses it needs BLAS.
#pragma once

#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "powergrad/config.hpp"
#include "powergrad/detail/validate.hpp"
#include "powergrad/host/linear_xent_host.hpp"
#include "powergrad/linear_xent_types.hpp"
#include "powergrad/status.hpp"
#include "powergrad/xent.hpp"

#if defined(__CUDACC__)
#include "powergrad/kernels/linear_xent_kernels.cuh"
#endif

POWERGRAD_NS_BEGIN
namespace detail {

// The names under which the caller knows each argument (src/capi_linear.cpp has the C table).
struct LinearXentArgNames {
  const char* backend;
  const char* hidden;
  const char* rows;
  const char* hidden_dim;
  const char* ld_hidden;
  const char* weight;
  const char* vocab;
  const char* weight_dim;
  const char* ld_weight;
  const char* bias;
  const char* bias_len;
  const char* targets_index;
  const char* targets_prob;
  const char* targets_ld;
  const char* alpha;
  const char* label_smoothing;
  const char* reduction;
  const char* bad_target_count;
  const char* upstream_scale;
  const char* upstream_values;
  const char* loss;
  const char* dhidden;
  const char* ld_dhidden;
  const char* dweight;
  const char* ld_dweight;
  const char* dweight_type;
  const char* dbias;
  const char* dbias_type;
  const char* chunk_rows;
  const char* blas_handle;
  const char* workspace_query;
  // Split form and options (appended: the C table in src/capi_linear_internal.hpp follows this order).
  const char* vocab_offset;
  const char* total_vocab;
  const char* class_weight;
  const char* z_loss_scale;
  const char* softcap;
  const char* z_loss;
  const char* argmax;
  const char* correct;
  const char* stats;
  const char* merged;
};

inline constexpr LinearXentArgNames kLinearXentCppNames = {
    "backend",           "problem.hidden",         "problem.rows",          "problem.hidden_dim",
    "problem.ld_hidden", "problem.weight",         "problem.vocab",         "problem.weight_dim",
    "problem.ld_weight", "problem.bias",           "problem.bias_len",      "problem.targets.index",
    "problem.targets.prob", "problem.targets.ld",  "problem.alpha",         "problem.label_smoothing",
    "problem.reduction", "problem.bad_target_count", "upstream.scale",      "upstream.values",
    "out.loss",          "out.dhidden",            "out.ld_dhidden",        "out.dweight",
    "out.ld_dweight",    "out.dweight_type",       "out.dbias",             "out.dbias_type",
    "chunk_rows",        "blas_handle",            "linear_xent_workspace_bytes()", "problem.vocab_offset",
    "problem.total_vocab", "problem.class_weight", "problem.z_loss_scale", "problem.softcap",
    "out.z_loss",        "out.argmax",             "out.correct",           "stats",
    "merged"};

// BLAS takes int sizes and strides.
constexpr int64_t kLinearXentMaxDim = INT_MAX;
constexpr size_t kLinearXentAlign = 256;

inline size_t align_up(size_t v) { return (v + kLinearXentAlign - 1) / kLinearXentAlign * kLinearXentAlign; }

// Which parts of the workspace a call needs: a function of the backend, the dtype, the target
// kind, the requested outputs and the chunk size only.
struct LinearXentNeeds {
  bool cuda = false;
  bool low_precision = false;  // T is fp16/bf16
  bool dense = false;
  bool reduced = false;        // kMean / kSum
  bool dh = false, dw = false, db = false;
  bool dw_in_t = false;        // dW output in the weight's (low-precision) type: fp32 accumulator
  bool db_in_t = false;
  int64_t vocab = 0, hidden = 0;
  size_t elem = 4;
};

// The one layout of the workspace (offsets from its start, each 256-byte aligned).
struct LinearXentLayout {
  size_t header = 0, xent = 0, logits = 0, targets = 0, grad_lp = 0, hidden32 = 0, dh32 = 0,
         weight32 = 0, dw32 = 0, db32 = 0, total = 0;
};

// Largest byte count a layout may reach; above it the layout reports SIZE_MAX (never wraps).
inline size_t sat_mul(uint64_t a, uint64_t b) {
  if (a != 0 && b > (uint64_t{1} << 62) / a) return SIZE_MAX;
  return static_cast<size_t>(a * b);
}

inline LinearXentLayout linear_xent_layout(const LinearXentNeeds& n, int64_t chunk) {
  LinearXentLayout l;
  size_t off = 0;
  bool overflow = false;
  auto take = [&](size_t bytes) -> size_t {
    if (bytes == 0) return 0;
    if (bytes == SIZE_MAX || off > (size_t{1} << 62) - bytes) overflow = true;
    const size_t at = off;
    if (!overflow) off = align_up(off + bytes);
    return at;
  };
  const uint64_t c = static_cast<uint64_t>(chunk), v = static_cast<uint64_t>(n.vocab),
                 h = static_cast<uint64_t>(n.hidden);
  const bool any_grad = n.dh || n.dw || n.db;
  if (n.cuda) {
    l.header = take(kLinearXentAlign);
    if (n.reduced) l.xent = take(xent_workspace_bytes(chunk, Reduction::kSum));
  }
  l.logits = take(sat_mul(sat_mul(c, v), 4));
  if (n.dense && n.low_precision) l.targets = take(sat_mul(sat_mul(c, v), 4));
  if (n.cuda && n.low_precision && (n.dh || n.dw)) l.grad_lp = take(sat_mul(sat_mul(c, v), n.elem));
  if (!n.cuda && n.low_precision) {
    l.hidden32 = take(sat_mul(sat_mul(c, h), 4));
    if (n.dh) l.dh32 = take(sat_mul(sat_mul(c, h), 4));
    l.weight32 = take(sat_mul(sat_mul(v, h), 4));
  }
  if (n.dw && n.dw_in_t) l.dw32 = take(sat_mul(sat_mul(v, h), 4));
  if (n.db && (n.db_in_t || n.cuda)) l.db32 = take(sat_mul(v, 4));
  (void)any_grad;
  l.total = overflow ? SIZE_MAX : off;
  return l;
}

template <class T, class Tg>
LinearXentNeeds linear_xent_needs(Backend b, const LinearXentProblem<T, Tg>& p, const LinearXentOutputs<T>& o) {
  LinearXentNeeds n;
  n.cuda = b == Backend::kCuda;
  n.low_precision = !std::is_same<T, float>::value;
  n.dense = !target_traits<Tg>::hard;
  n.reduced = p.reduction != Reduction::kNone;
  n.dh = o.dhidden != nullptr;
  n.dw = o.dweight != nullptr;
  n.db = o.dbias != nullptr;
  n.dw_in_t = n.low_precision && o.dweight_type == GradType::kWeightType;
  n.db_in_t = n.low_precision && o.dbias_type == GradType::kWeightType;
  n.vocab = p.vocab;
  n.hidden = p.hidden_dim;
  n.elem = sizeof(T);
  return n;
}

inline bool valid_grad_type(GradType t) {
  int v;
  static_assert(sizeof(GradType) == sizeof(int), "GradType is int-sized");
  std::memcpy(&v, &t, sizeof v);
  return v == 0 || v == 1;
}

// Validates and normalises the problem (ld_hidden, weight_dim, ld_weight, bias_len, targets.ld).
template <class T, class Tg>
Status check_linear_problem(const LinearXentArgNames& n, LinearXentProblem<T, Tg>& p) {
  POWERGRAD_REQUIRE(p.rows >= 0, Status::kInvalidSize, "%s (%lld) is negative", n.rows, as_ll(p.rows));
  POWERGRAD_REQUIRE(p.rows <= kXentMaxRows, Status::kInvalidSize, "%s (%lld) is larger than 2^59", n.rows,
                    as_ll(p.rows));
  POWERGRAD_REQUIRE(p.hidden_dim >= 1 && p.hidden_dim <= kLinearXentMaxDim, Status::kInvalidSize,
                    "%s (%lld) must be in [1, 2^31)", n.hidden_dim, as_ll(p.hidden_dim));
  POWERGRAD_REQUIRE(p.vocab >= 1 && p.vocab <= kLinearXentMaxDim, Status::kInvalidSize,
                    "%s (%lld) must be in [1, 2^31)", n.vocab, as_ll(p.vocab));
  POWERGRAD_REQUIRE(p.weight_dim >= 0, Status::kInvalidSize, "%s (%lld) is negative", n.weight_dim,
                    as_ll(p.weight_dim));
  if (p.weight_dim == 0) p.weight_dim = p.hidden_dim;
  POWERGRAD_REQUIRE(p.weight_dim == p.hidden_dim, Status::kInvalidSize,
                    "%s (%lld) differs from %s (%lld): weight must be [vocab x hidden_dim]", n.weight_dim,
                    as_ll(p.weight_dim), n.hidden_dim, as_ll(p.hidden_dim));
  POWERGRAD_REQUIRE(p.ld_hidden >= 0, Status::kInvalidSize, "%s (%lld) is negative", n.ld_hidden, as_ll(p.ld_hidden));
  if (p.ld_hidden == 0) p.ld_hidden = p.hidden_dim;
  POWERGRAD_REQUIRE(p.ld_hidden >= p.hidden_dim && p.ld_hidden <= kLinearXentMaxDim, Status::kInvalidSize,
                    "%s (%lld) must be in [%s (%lld), 2^31)", n.ld_hidden, as_ll(p.ld_hidden), n.hidden_dim,
                    as_ll(p.hidden_dim));
  POWERGRAD_REQUIRE(p.ld_weight >= 0, Status::kInvalidSize, "%s (%lld) is negative", n.ld_weight, as_ll(p.ld_weight));
  if (p.ld_weight == 0) p.ld_weight = p.hidden_dim;
  POWERGRAD_REQUIRE(p.ld_weight >= p.hidden_dim && p.ld_weight <= kLinearXentMaxDim, Status::kInvalidSize,
                    "%s (%lld) must be in [%s (%lld), 2^31)", n.ld_weight, as_ll(p.ld_weight), n.hidden_dim,
                    as_ll(p.hidden_dim));
  POWERGRAD_REQUIRE(block_fits(p.rows, p.ld_hidden, sizeof(T)), Status::kInvalidSize,
                    "%s x %s (%lld x %lld elements) does not fit in 64-bit byte offsets", n.rows, n.ld_hidden,
                    as_ll(p.rows), as_ll(p.ld_hidden));
  POWERGRAD_REQUIRE(p.bias_len >= 0, Status::kInvalidSize, "%s (%lld) is negative", n.bias_len, as_ll(p.bias_len));
  if (p.bias_len == 0) p.bias_len = p.vocab;
  POWERGRAD_REQUIRE(p.bias_len == p.vocab, Status::kInvalidSize, "%s (%lld) differs from %s (%lld)", n.bias_len,
                    as_ll(p.bias_len), n.vocab, as_ll(p.vocab));
  POWERGRAD_REQUIRE(p.vocab_offset >= 0, Status::kInvalidSize, "%s (%lld) is negative", n.vocab_offset,
                    as_ll(p.vocab_offset));
  POWERGRAD_REQUIRE(p.total_vocab >= 0, Status::kInvalidSize, "%s (%lld) is negative", n.total_vocab,
                    as_ll(p.total_vocab));
  POWERGRAD_REQUIRE(p.vocab_offset == 0 || p.total_vocab != 0, Status::kInvalidSize,
                    "%s must be given for a vocabulary shard (%s = %lld)", n.total_vocab, n.vocab_offset,
                    as_ll(p.vocab_offset));
  if (p.total_vocab == 0) p.total_vocab = p.vocab;
  // Written as a subtraction: vocab_offset + vocab may overflow int64.
  POWERGRAD_REQUIRE(p.total_vocab >= p.vocab && p.vocab_offset <= p.total_vocab - p.vocab, Status::kInvalidSize,
                    "%s (%lld) is smaller than %s + %s (%lld + %lld)", n.total_vocab, as_ll(p.total_vocab),
                    n.vocab_offset, n.vocab, as_ll(p.vocab_offset), as_ll(p.vocab));
  POWERGRAD_REQUIRE(std::isfinite(p.z_loss_scale) && p.z_loss_scale >= 0.f, Status::kInvalidValue,
                    "%s (%g) must be finite and >= 0", n.z_loss_scale, static_cast<double>(p.z_loss_scale));
  POWERGRAD_REQUIRE(p.softcap == 0.f || (std::isfinite(p.softcap) && p.softcap > 0.f && std::isfinite(1.f / p.softcap)),
                    Status::kInvalidValue, "%s (%g) must be finite and > 0, or 0 (off)", n.softcap,
                    static_cast<double>(p.softcap));
  POWERGRAD_TRY(check_alpha(p.alpha, n.alpha));
  POWERGRAD_REQUIRE(p.label_smoothing >= 0.f && p.label_smoothing < 1.f, Status::kInvalidValue,
                    "%s (%g) must be in [0, 1)", n.label_smoothing, static_cast<double>(p.label_smoothing));
  POWERGRAD_REQUIRE(p.reduction == Reduction::kNone || p.reduction == Reduction::kMean ||
                        p.reduction == Reduction::kSum,
                    Status::kInvalidValue, "%s (%d) is not a Reduction value", n.reduction,
                    static_cast<int>(p.reduction));
  POWERGRAD_REQUIRE(p.hidden != nullptr, Status::kNullPointer, "%s is null", n.hidden);
  POWERGRAD_REQUIRE(p.weight != nullptr, Status::kNullPointer, "%s is null", n.weight);
  return check_targets(TargetArgNames{n.rows, n.vocab, n.targets_index, n.targets_prob, n.targets_ld}, p.targets,
                       p.rows, p.vocab);
}

// Validates and normalises the outputs' strides and types.
template <class T, class Tg>
Status check_linear_outputs(const LinearXentArgNames& n, const LinearXentProblem<T, Tg>& p, LinearXentOutputs<T>& o) {
  POWERGRAD_REQUIRE(valid_grad_type(o.dweight_type), Status::kInvalidValue, "%s is not a GradType value",
                    n.dweight_type);
  POWERGRAD_REQUIRE(valid_grad_type(o.dbias_type), Status::kInvalidValue, "%s is not a GradType value", n.dbias_type);
  if (o.dhidden) {
    POWERGRAD_REQUIRE(o.ld_dhidden >= 0, Status::kInvalidSize, "%s (%lld) is negative", n.ld_dhidden,
                      as_ll(o.ld_dhidden));
    if (o.ld_dhidden == 0) o.ld_dhidden = p.hidden_dim;
    POWERGRAD_REQUIRE(o.ld_dhidden >= p.hidden_dim && o.ld_dhidden <= kLinearXentMaxDim, Status::kInvalidSize,
                      "%s (%lld) must be in [%s (%lld), 2^31)", n.ld_dhidden, as_ll(o.ld_dhidden), n.hidden_dim,
                      as_ll(p.hidden_dim));
    POWERGRAD_REQUIRE(block_fits(p.rows, o.ld_dhidden, sizeof(T)), Status::kInvalidSize,
                      "%s x %s (%lld x %lld elements) does not fit in 64-bit byte offsets", n.rows, n.ld_dhidden,
                      as_ll(p.rows), as_ll(o.ld_dhidden));
  }
  if (o.dweight) {
    POWERGRAD_REQUIRE(o.ld_dweight >= 0, Status::kInvalidSize, "%s (%lld) is negative", n.ld_dweight,
                      as_ll(o.ld_dweight));
    if (o.ld_dweight == 0) o.ld_dweight = p.hidden_dim;
    POWERGRAD_REQUIRE(o.ld_dweight >= p.hidden_dim && o.ld_dweight <= kLinearXentMaxDim, Status::kInvalidSize,
                      "%s (%lld) must be in [%s (%lld), 2^31)", n.ld_dweight, as_ll(o.ld_dweight), n.hidden_dim,
                      as_ll(p.hidden_dim));
  }
  POWERGRAD_REQUIRE(o.dbias == nullptr || p.bias != nullptr, Status::kInvalidValue,
                    "%s is given but %s is null (no bias to differentiate)", n.dbias, n.bias);
  if constexpr (!target_traits<Tg>::hard)
    POWERGRAD_REQUIRE(o.correct == nullptr, Status::kUnsupported,
                      "%s needs class targets (dense targets have no target class; %s is defined)", n.correct,
                      n.argmax);
  return Status::kSuccess;
}

template <class T>
size_t grad_elem(GradType t) {
  return t == GradType::kFloat32 ? sizeof(float) : sizeof(T);
}

template <class T, class Tg>
Status check_linear_buffers(const LinearXentArgNames& n, Backend b, const LinearXentProblem<T, Tg>& p,
                            const LinearXentOutputs<T>& o, const Upstream& up, void* ws, size_t ws_bytes,
                            size_t ws_need, Region extra_in = Region{nullptr, 0, ""},
                            Region extra_out = Region{nullptr, 0, ""}) {
  POWERGRAD_REQUIRE(std::isfinite(up.scale), Status::kInvalidValue, "%s (%g) is not finite", n.upstream_scale,
                    static_cast<double>(up.scale));
  POWERGRAD_TRY(check_workspace_size(ws, ws_bytes, ws_need, 16, n.workspace_query));
  (void)b;
  const bool none = p.reduction == Reduction::kNone;
  const uint64_t hw = static_cast<uint64_t>(p.vocab);
  Region tg;
  if constexpr (target_traits<Tg>::hard)
    tg = {p.targets.index, static_cast<uint64_t>(p.rows) * sizeof(*p.targets.index), n.targets_index};
  else
    tg = {p.targets.prob, span_bytes<T>(p.rows, p.vocab, p.targets.ld), n.targets_prob};
  const Region ins[] = {{p.hidden, span_bytes<T>(p.rows, p.hidden_dim, p.ld_hidden), n.hidden},
                        {p.weight, span_bytes<T>(p.vocab, p.hidden_dim, p.ld_weight), n.weight},
                        {p.bias, p.bias ? hw * sizeof(T) : 0, n.bias},
                        tg,
                        floats_region(up.values, none ? p.rows : 1, n.upstream_values),
                        floats_region(p.class_weight, p.vocab, n.class_weight),
                        extra_in};
  const uint64_t dw_bytes =
      o.dweight ? (static_cast<uint64_t>(p.vocab - 1) * static_cast<uint64_t>(o.ld_dweight) +
                   static_cast<uint64_t>(p.hidden_dim)) * grad_elem<T>(o.dweight_type)
                : 0;
  const Region outs[] = {floats_region(o.loss, none ? p.rows : 1, n.loss),
                         {o.dhidden, o.dhidden ? span_bytes<T>(p.rows, p.hidden_dim, o.ld_dhidden) : 0, n.dhidden},
                         {o.dweight, dw_bytes, n.dweight},
                         {o.dbias, o.dbias ? hw * grad_elem<T>(o.dbias_type) : 0, n.dbias},
                         {p.bad_target_count, sizeof(int32_t), n.bad_target_count},
                         {ws_need ? ws : nullptr, ws_bytes, "workspace"},
                         floats_region(o.z_loss, none ? p.rows : 1, n.z_loss),
                         {o.argmax, static_cast<uint64_t>(p.rows) * sizeof(int64_t), n.argmax},
                         {o.correct, static_cast<uint64_t>(p.rows) * sizeof(int32_t), n.correct},
                         extra_out};
  return check_disjoint(ins, outs);
}

// Largest chunk (rows per chunk, at most `rows`, at least 1) whose layout fits in `budget` bytes;
// 0 when not even one row fits.
inline int64_t linear_xent_chunk_for(const LinearXentNeeds& need, int64_t rows, size_t budget) {
  int64_t hi = rows < 1 ? 1 : rows;
  if (hi > kLinearXentMaxDim) hi = kLinearXentMaxDim;
  if (linear_xent_layout(need, 1).total > budget) return 0;
  int64_t lo = 1;  // fits
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (linear_xent_layout(need, mid).total <= budget)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// Resolves chunk_rows (0: the largest that fits the workspace) and returns the bytes it needs.
inline Status resolve_chunk(const LinearXentArgNames& n, const LinearXentNeeds& need, int64_t rows, int64_t& chunk,
                            size_t ws_bytes, size_t& ws_need) {
  POWERGRAD_REQUIRE(chunk >= 0 && chunk <= kLinearXentMaxDim, Status::kInvalidSize, "%s (%lld) must be in [0, 2^31)",
                    n.chunk_rows, as_ll(chunk));
  if (chunk == 0) {
    chunk = linear_xent_chunk_for(need, rows, ws_bytes);
    if (chunk == 0) {
      ws_need = linear_xent_layout(need, 1).total;
      return fail(Status::kWorkspaceTooSmall, "workspace (%zu bytes) is smaller than %s = %zu for a chunk of one row",
                  ws_bytes, n.workspace_query, ws_need);
    }
  } else if (rows > 0 && chunk > rows) {
    chunk = rows;
  }
  ws_need = linear_xent_layout(need, chunk).total;
  POWERGRAD_REQUIRE(ws_need != SIZE_MAX, Status::kInvalidSize, "%s (%lld) x %s needs more than 2^62 bytes of workspace",
                    n.chunk_rows, as_ll(chunk), n.vocab);
  return Status::kSuccess;
}

template <class T>
T* at(void* ws, size_t off) {
  return reinterpret_cast<T*>(static_cast<unsigned char*>(ws) + off);
}

// The per-chunk row op's targets: the chunk's slice of the caller's, as fp32 for dense targets.
template <class Index>
ClassTargets<Index> chunk_targets(const ClassTargets<Index>& t, int64_t r0, const float*, int64_t) {
  return {t.index + r0, t.ignore_index};
}
template <class T>
DenseTargets<float> chunk_targets(const DenseTargets<T>& t, int64_t r0, const float* converted, int64_t vocab) {
  if constexpr (std::is_same<T, float>::value) {
    (void)converted, (void)vocab;
    return {t.prob + r0 * t.ld, t.ld};
  } else {
    return {converted, vocab};
  }
}

// Which pass of the chunk loop runs: the whole op, or one of the two calls of the split form
// (docs/design.md §2.6) around the caller's exchange of the statistics.
enum class LinearPass { kFused, kStats, kApply };

// The row op of one chunk: the cross-entropy problem over the chunk's fp32 logits, with the linear
// problem's options and its place in the vocabulary.
template <class T, class Tg>
auto chunk_problem(const LinearXentProblem<T, Tg>& p, float* z, int64_t r0, int64_t c, const float* tconv) {
  XentProblem<float, decltype(chunk_targets(p.targets, r0, tconv, p.vocab))> xp;
  xp.logits = z;
  xp.rows = c;
  xp.cols = p.vocab;
  xp.ld = p.vocab;
  xp.targets = chunk_targets(p.targets, r0, tconv, p.vocab);
  xp.alpha = p.alpha;
  xp.label_smoothing = p.label_smoothing;
  xp.reduction = p.reduction == Reduction::kNone ? Reduction::kNone : Reduction::kSum;
  xp.col_offset = p.vocab_offset;
  xp.total_cols = p.total_vocab;
  xp.bad_target_count = p.bad_target_count;
  xp.weight = p.class_weight;
  xp.z_loss_scale = p.z_loss_scale;
  xp.softcap = p.softcap;
  return xp;
}

// The row op's per-row outputs of a chunk (kNone: the chunk's slice of the loss rows; kMean / kSum:
// the chunk's sums in `loss_sum` / `z_sum`).
template <class T>
XentOutputs<float> chunk_outputs(const LinearXentOutputs<T>& o, bool none, int64_t r0, float* loss_sum, float* z_sum,
                                 float* dlogits) {
  XentOutputs<float> xo;
  xo.loss = o.loss ? (none ? o.loss + r0 : loss_sum) : nullptr;
  xo.z_loss = o.z_loss ? (none ? o.z_loss + r0 : z_sum) : nullptr;
  xo.argmax = o.argmax ? o.argmax + r0 : nullptr;
  xo.correct = o.correct ? o.correct + r0 : nullptr;
  xo.dlogits = dlogits;
  return xo;
}

// The kMean denominator D of docs/design.md §2.5 over the whole batch (host memory): the
// non-ignored rows, the sum of their targets' class weights (from the merged statistics in the split
// form, where a shard holds only its own weights), or every row for dense targets.
template <class T, class Tg>
double linear_mean_denominator(const LinearXentProblem<T, Tg>& p, const RowStats* merged) {
  if constexpr (!target_traits<Tg>::hard) {
    (void)merged;
    return static_cast<double>(p.rows);
  } else {
    double d = 0.0;
    for (int64_t r = 0; r < p.rows; ++r) {
      const int64_t y = static_cast<int64_t>(p.targets.index[r]);
      if (y == p.targets.ignore_index) continue;
      if (!p.class_weight) d += 1.0;
      else if (merged) d += static_cast<double>(merged[r].w);
      else d += static_cast<double>(p.class_weight[y]);  // whole vocabulary, y checked in range
    }
    return d;
  }
}

// The host backend's chunk loop.
template <LinearPass PASS, class T, class Tg>
Status linear_host_run(const LinearXentProblem<T, Tg>& p, const Upstream& up, const LinearXentOutputs<T>& o,
                       void* ws, const LinearXentLayout& l, int64_t chunk, const RowStats* merged, RowStats* stats) {
  constexpr bool lp = !std::is_same<T, float>::value;
  const int64_t V = p.vocab, H = p.hidden_dim;
  const bool none = p.reduction == Reduction::kNone;
  const bool need_g = PASS != LinearPass::kStats && (o.dhidden || o.dweight || o.dbias);
  // g for kMean/kSum: scale * v / (kMean ? D : 1), the contract of docs/design.md §2.1 / §2.5 over
  // every row, handed to each chunk's row op as a kSum upstream.
  double denom = 1.0;
  float g_all = 0.f;
  if (PASS != LinearPass::kStats && !none) {
    if (p.reduction == Reduction::kMean) denom = linear_mean_denominator(p, merged);
    const float v = up.values ? up.values[0] : 1.f;
    g_all = p.reduction == Reduction::kMean ? (denom > 0.0 ? up.scale * v / static_cast<float>(denom) : 0.f)
                                            : up.scale * v;
  }
  float* z = at<float>(ws, l.logits);
  const float* w32 = reinterpret_cast<const float*>(p.weight);
  int64_t ldw32 = p.ld_weight;
  if constexpr (lp) {
    host::block_to_float(p.weight, p.ld_weight, V, H, at<float>(ws, l.weight32), H);
    w32 = at<float>(ws, l.weight32);
    ldw32 = H;
  }
  // dW and db accumulators: the caller's fp32 buffer, or fp32 workspace rounded once at the end.
  float* dw_acc = nullptr;
  int64_t ld_dw_acc = 0;
  bool dw_accumulate_into = o.accumulate_dweight;
  if (o.dweight) {
    if (lp && o.dweight_type == GradType::kWeightType) {
      dw_acc = at<float>(ws, l.dw32);
      ld_dw_acc = H;
      dw_accumulate_into = false;
    } else {
      dw_acc = static_cast<float*>(o.dweight);
      ld_dw_acc = o.ld_dweight;
    }
  }
  float* db_acc = nullptr;
  if (o.dbias) {
    db_acc = (lp && o.dbias_type == GradType::kWeightType) ? at<float>(ws, l.db32) : static_cast<float*>(o.dbias);
    if (db_acc != o.dbias || !o.accumulate_dbias) std::memset(db_acc, 0, static_cast<size_t>(V) * sizeof(float));
  }
  if (dw_acc && !dw_accumulate_into && p.rows == 0)
    for (int64_t v = 0; v < V; ++v) std::memset(dw_acc + v * ld_dw_acc, 0, static_cast<size_t>(H) * sizeof(float));
  double loss_sum = 0.0, z_sum = 0.0;
  for (int64_t r0 = 0; r0 < p.rows; r0 += chunk) {
    const int64_t c = p.rows - r0 < chunk ? p.rows - r0 : chunk;
    const float* h32 = reinterpret_cast<const float*>(p.hidden + r0 * p.ld_hidden);
    int64_t ldh32 = p.ld_hidden;
    if constexpr (lp) {
      host::block_to_float(p.hidden + r0 * p.ld_hidden, p.ld_hidden, c, H, at<float>(ws, l.hidden32), H);
      h32 = at<float>(ws, l.hidden32);
      ldh32 = H;
    }
    // z = bias + h W^T
    host::fill_bias_rows(p.bias, c, V, z, V);
    host::sgemm_rm(false, true, c, V, H, h32, ldh32, w32, ldw32, 1.f, z, V);
    // The PGT row op in place: loss rows and G = g (p' - q) (or this shard's statistics).
    float* tconv = nullptr;
    if constexpr (!target_traits<Tg>::hard && lp) {
      tconv = at<float>(ws, l.targets);
      host::block_to_float(p.targets.prob + r0 * p.targets.ld, p.targets.ld, c, V, tconv, V);
    }
    const auto xp = chunk_problem(p, z, r0, c, tconv);
    if constexpr (PASS == LinearPass::kStats) {
      POWERGRAD_TRY(xent_shard_stats(Backend::kHost, xp, stats + r0));
      continue;
    }
    float chunk_loss = 0.f, chunk_z = 0.f;
    const XentOutputs<float> xo = chunk_outputs(o, none, r0, &chunk_loss, &chunk_z, need_g ? z : nullptr);
    const Upstream xu = none ? Upstream{up.scale, up.values ? up.values + r0 : nullptr} : Upstream{1.f, &g_all};
    if constexpr (PASS == LinearPass::kFused)
      POWERGRAD_TRY(xent_forward_backward(Backend::kHost, xp, xu, xo));
    else
      POWERGRAD_TRY(xent_shard_apply(Backend::kHost, xp, merged + r0, xu, xo));
    loss_sum += chunk_loss;
    z_sum += chunk_z;
    if (!need_g) continue;
    const bool first = r0 == 0;
    if (o.dhidden) {
      if constexpr (lp) {
        float* dh32 = at<float>(ws, l.dh32);
        host::sgemm_rm(false, false, c, H, V, z, V, w32, ldw32, 0.f, dh32, H);
        host::block_from_float(dh32, H, c, H, o.dhidden + r0 * o.ld_dhidden, o.ld_dhidden, false);
      } else {
        host::sgemm_rm(false, false, c, H, V, z, V, w32, ldw32, 0.f,
                       reinterpret_cast<float*>(o.dhidden + r0 * o.ld_dhidden), o.ld_dhidden);
      }
    }
    if (dw_acc)
      host::sgemm_rm(true, false, V, H, c, z, V, h32, ldh32, (first && !dw_accumulate_into) ? 0.f : 1.f, dw_acc,
                     ld_dw_acc);
    if (db_acc) host::add_column_sums(z, V, c, V, db_acc);
  }
  if (PASS == LinearPass::kStats) return Status::kSuccess;
  const auto finish = [&](double v) {
    return p.reduction == Reduction::kMean ? (denom > 0.0 ? static_cast<float>(v / denom) : 0.f) : static_cast<float>(v);
  };
  if (o.loss && !none) o.loss[0] = finish(loss_sum);
  if (o.z_loss && !none) o.z_loss[0] = finish(z_sum);
  if (o.dweight && dw_acc != o.dweight)
    host::block_from_float(dw_acc, H, V, H, static_cast<T*>(o.dweight), o.ld_dweight, o.accumulate_dweight);
  if (o.dbias && db_acc != o.dbias) host::block_from_float(db_acc, V, 1, V, static_cast<T*>(o.dbias), V, o.accumulate_dbias);
  return Status::kSuccess;
}

#if defined(__CUDACC__)
// The CUDA backend's chunk loop: the same steps as linear_host_run, each a cuBLAS call or a kernel on
// `stream`; the upstream value of kMean / kSum (with its denominator) is computed on the device
// before the first chunk.
template <LinearPass PASS, class T, class Tg>
Status linear_cuda_run(const LinearXentProblem<T, Tg>& p, const Upstream& up, const LinearXentOutputs<T>& o, void* ws,
                       const LinearXentLayout& l, int64_t chunk, void* blas, stream_t stream, const RowStats* merged,
                       RowStats* stats) {
  constexpr bool lp = !std::is_same<T, float>::value;
  const int64_t V = p.vocab, H = p.hidden_dim;
  const bool none = p.reduction == Reduction::kNone;
  const bool need_g = PASS != LinearPass::kStats && (o.dhidden || o.dweight || o.dbias);
  auto* hdr = at<device::LinearHeader>(ws, l.header);
  device::CublasStreamScope on_stream(blas);
  POWERGRAD_TRY(on_stream.bind(stream));
  if (PASS != LinearPass::kStats && !none)
    POWERGRAD_TRY(device::linear_begin(p.targets, p.rows, up, p.reduction == Reduction::kMean, p.class_weight,
                                       p.vocab, PASS == LinearPass::kApply ? merged : nullptr, hdr, stream));
  float* z = at<float>(ws, l.logits);
  float* dw_acc = nullptr;
  int64_t ld_dw_acc = 0;
  bool dw_accumulate_into = o.accumulate_dweight;
  if (o.dweight) {
    if (lp && o.dweight_type == GradType::kWeightType) {
      dw_acc = at<float>(ws, l.dw32);
      ld_dw_acc = H;
      dw_accumulate_into = false;
    } else {
      dw_acc = static_cast<float*>(o.dweight);
      ld_dw_acc = o.ld_dweight;
    }
    if (p.rows == 0 && !dw_accumulate_into) POWERGRAD_TRY(device::zero_block(dw_acc, V, H, ld_dw_acc, stream));
  }
  float* db_acc = o.dbias ? at<float>(ws, l.db32) : nullptr;
  if (db_acc) POWERGRAD_TRY(device::zero_block(db_acc, 1, V, V, stream));
  T* g_lp = lp && (o.dhidden || o.dweight) ? at<T>(ws, l.grad_lp) : nullptr;
  for (int64_t r0 = 0; r0 < p.rows; r0 += chunk) {
    const int64_t c = p.rows - r0 < chunk ? p.rows - r0 : chunk;
    const T* hc = p.hidden + r0 * p.ld_hidden;
    POWERGRAD_TRY(device::fill_bias(p.bias, c, V, z, V, stream));
    POWERGRAD_TRY((device::gemm_rm<T, float>(blas, false, true, c, V, H, hc, p.ld_hidden, p.weight, p.ld_weight, 1.f, z, V)));
    float* tconv = nullptr;
    if constexpr (!target_traits<Tg>::hard && lp) {
      tconv = at<float>(ws, l.targets);
      POWERGRAD_TRY(device::convert(p.targets.prob + r0 * p.targets.ld, p.targets.ld, c, V, tconv, V, false, stream));
    }
    const auto xp = chunk_problem(p, z, r0, c, tconv);
    if constexpr (PASS == LinearPass::kStats) {
      POWERGRAD_TRY(xent_shard_stats(Backend::kCuda, xp, stats + r0, stream));
      continue;
    }
    const XentOutputs<float> xo = chunk_outputs(o, none, r0, &hdr->chunk_loss, &hdr->chunk_z, need_g ? z : nullptr);
    const Upstream xu = none ? Upstream{up.scale, up.values ? up.values + r0 : nullptr} : Upstream{1.f, &hdr->g};
    const size_t xbytes = none ? 0 : xent_workspace_bytes(c, Reduction::kSum);
    void* xws = none ? nullptr : at<void>(ws, l.xent);
    if constexpr (PASS == LinearPass::kFused)
      POWERGRAD_TRY(xent_forward_backward(Backend::kCuda, xp, xu, xo, xws, xbytes, stream));
    else
      POWERGRAD_TRY(xent_shard_apply(Backend::kCuda, xp, merged + r0, xu, xo, xws, xbytes, stream));
    if (!none) POWERGRAD_TRY(device::add_chunk_loss(hdr, stream));
    if (!need_g) continue;
    const bool first = r0 == 0;
    const T* g_in = nullptr;
    if constexpr (lp) {
      if (g_lp) POWERGRAD_TRY(device::convert(z, V, c, V, g_lp, V, false, stream));
      g_in = g_lp;
    } else {
      g_in = z;
    }
    if (o.dhidden)
      POWERGRAD_TRY((device::gemm_rm<T, T>(blas, false, false, c, H, V, g_in, V, p.weight, p.ld_weight, 0.f,
                                           o.dhidden + r0 * o.ld_dhidden, o.ld_dhidden)));
    if (dw_acc)
      POWERGRAD_TRY((device::gemm_rm<T, float>(blas, true, false, V, H, c, g_in, V, hc, p.ld_hidden,
                                               (first && !dw_accumulate_into) ? 0.f : 1.f, dw_acc, ld_dw_acc)));
    if (db_acc) POWERGRAD_TRY(device::column_sums(z, V, c, V, db_acc, stream));
  }
  if (PASS == LinearPass::kStats) return Status::kSuccess;
  if ((o.loss || o.z_loss) && !none)
    POWERGRAD_TRY(device::final_loss(hdr, p.reduction == Reduction::kMean, o.loss, o.z_loss, stream));
  if (o.dweight && dw_acc != o.dweight)
    POWERGRAD_TRY(device::convert(dw_acc, H, V, H, static_cast<T*>(o.dweight), o.ld_dweight, o.accumulate_dweight, stream));
  if (o.dbias) {
    if (o.dbias_type == GradType::kFloat32)
      POWERGRAD_TRY(device::convert(db_acc, V, 1, V, static_cast<float*>(o.dbias), V, o.accumulate_dbias, stream));
    else
      POWERGRAD_TRY(device::convert(db_acc, V, 1, V, static_cast<T*>(o.dbias), V, o.accumulate_dbias, stream));
  }
  return Status::kSuccess;
}
#endif

// Host backend: every class index is ignore_index or in [0, total_vocab), and every class weight is
// finite and >= 0, checked before anything is written (the CUDA backend cannot check either
// without a host synchronisation: it counts bad rows instead, docs/design.md §8).
template <class T, class Tg>
Status check_linear_host_inputs(const LinearXentArgNames& n, const LinearXentProblem<T, Tg>& p) {
  if constexpr (target_traits<Tg>::hard) {
    for (int64_t r = 0; r < p.rows; ++r) {
      const int64_t y = static_cast<int64_t>(p.targets.index[r]);
      POWERGRAD_REQUIRE(y == p.targets.ignore_index || (y >= 0 && y < p.total_vocab), Status::kInvalidTarget,
                        "%s[%lld] = %lld is outside [0, %lld) and is not ignore_index (%lld)", n.targets_index,
                        as_ll(r), as_ll(y), as_ll(p.total_vocab), as_ll(p.targets.ignore_index));
    }
  }
  if (p.class_weight)
    for (int64_t v = 0; v < p.vocab; ++v)
      POWERGRAD_REQUIRE(std::isfinite(p.class_weight[v]) && p.class_weight[v] >= 0.f, Status::kInvalidValue,
                        "%s[%lld] (%g) must be finite and >= 0", n.class_weight, as_ll(v),
                        static_cast<double>(p.class_weight[v]));
  return Status::kSuccess;
}

// The one body of the three calls: validation (nothing written on failure), then the pass's chunk
// loop on the backend.
template <LinearPass PASS, class T, class Tg>
Status linear_run(const LinearXentArgNames& n, Backend backend, LinearXentProblem<T, Tg> p, const Upstream& up,
                  LinearXentOutputs<T> o, const RowStats* merged, RowStats* stats, void* ws, size_t ws_bytes,
                  int64_t chunk_rows, void* blas_handle, stream_t stream) {
  clear_error();
  POWERGRAD_TRY(check_backend(static_cast<int>(backend), n.backend));
  POWERGRAD_TRY(check_linear_problem(n, p));
  POWERGRAD_TRY(check_linear_outputs(n, p, o));
  if (PASS == LinearPass::kFused)
    POWERGRAD_REQUIRE(p.vocab_offset == 0 && p.total_vocab == p.vocab, Status::kInvalidSize,
                      "%s / %s (%lld / %lld) make this a vocabulary shard of %lld classes: use the split form "
                      "(linear_xent_shard_stats, the exchange, linear_xent_shard_apply)",
                      n.vocab_offset, n.total_vocab, as_ll(p.vocab_offset), as_ll(p.total_vocab), as_ll(p.vocab));
  Region extra_in{nullptr, 0, ""}, extra_out{nullptr, 0, ""};
  if (PASS == LinearPass::kStats) {
    POWERGRAD_REQUIRE(stats != nullptr, Status::kNullPointer, "%s is null", n.stats);
    POWERGRAD_TRY(check_stats_aligned(stats, n.stats));
    extra_out = {stats, static_cast<uint64_t>(p.rows) * sizeof(RowStats), n.stats};
  }
  if (PASS == LinearPass::kApply) {
    POWERGRAD_REQUIRE(merged != nullptr, Status::kNullPointer, "%s is null", n.merged);
    POWERGRAD_TRY(check_stats_aligned(merged, n.merged));
    extra_in = {merged, static_cast<uint64_t>(p.rows) * sizeof(RowStats), n.merged};
  }
  const LinearXentNeeds need = linear_xent_needs(backend, p, o);
  size_t ws_need = 0;
  POWERGRAD_TRY(resolve_chunk(n, need, p.rows, chunk_rows, ws_bytes, ws_need));
  POWERGRAD_TRY(check_linear_buffers(n, backend, p, o, up, ws, ws_bytes, ws_need, extra_in, extra_out));
  const LinearXentLayout l = linear_xent_layout(need, chunk_rows);
  if (backend == Backend::kHost) {
    (void)blas_handle;
    (void)stream;
    POWERGRAD_REQUIRE(host::host_blas_available(), Status::kUnsupported,
                      "%s is kHost but this build has no host BLAS (POWERGRAD_HAS_BLAS; CMake: FindBLAS found none)",
                      n.backend);
    POWERGRAD_TRY(check_linear_host_inputs(n, p));
    return linear_host_run<PASS>(p, up, o, ws, l, chunk_rows, merged, stats);
  }
#if defined(__CUDACC__)
  POWERGRAD_REQUIRE(blas_handle != nullptr, Status::kNullPointer, "%s is null (the caller's cublasHandle_t)",
                    n.blas_handle);
  return linear_cuda_run<PASS>(p, up, o, ws, l, chunk_rows, blas_handle, stream, merged, stats);
#else
  return fail(Status::kNoCudaSupport, "%s is kCuda but this build has no CUDA support", n.backend);
#endif
}

template <class T, class Tg>
Status linear_forward_backward(const LinearXentArgNames& n, Backend backend, LinearXentProblem<T, Tg> p,
                               const Upstream& up, LinearXentOutputs<T> o, void* ws, size_t ws_bytes,
                               int64_t chunk_rows, void* blas_handle, stream_t stream) {
  return linear_run<LinearPass::kFused>(n, backend, p, up, o, nullptr, nullptr, ws, ws_bytes, chunk_rows, blas_handle,
                                        stream);
}

// Split form, step 1: the statistics need none of the outputs (and no upstream).
template <class T, class Tg>
Status linear_shard_stats(const LinearXentArgNames& n, Backend backend, LinearXentProblem<T, Tg> p, RowStats* stats,
                          void* ws, size_t ws_bytes, int64_t chunk_rows, void* blas_handle, stream_t stream) {
  return linear_run<LinearPass::kStats>(n, backend, p, Upstream{}, LinearXentOutputs<T>{}, nullptr, stats, ws,
                                        ws_bytes, chunk_rows, blas_handle, stream);
}

template <class T, class Tg>
Status linear_shard_apply(const LinearXentArgNames& n, Backend backend, LinearXentProblem<T, Tg> p,
                          const RowStats* merged, const Upstream& up, LinearXentOutputs<T> o, void* ws,
                          size_t ws_bytes, int64_t chunk_rows, void* blas_handle, stream_t stream) {
  return linear_run<LinearPass::kApply>(n, backend, p, up, o, merged, nullptr, ws, ws_bytes, chunk_rows, blas_handle,
                                        stream);
}

template <class T, class Tg>
Status linear_workspace_bytes(const LinearXentArgNames& n, Backend backend, LinearXentProblem<T, Tg> p,
                              LinearXentOutputs<T> o, int64_t chunk_rows, size_t& bytes) {
  clear_error();
  POWERGRAD_TRY(check_backend(static_cast<int>(backend), n.backend));
  POWERGRAD_TRY(check_linear_problem(n, p));
  POWERGRAD_TRY(check_linear_outputs(n, p, o));
  POWERGRAD_REQUIRE(chunk_rows >= 1 && chunk_rows <= kLinearXentMaxDim, Status::kInvalidSize,
                    "%s (%lld) must be in [1, 2^31)", n.chunk_rows, as_ll(chunk_rows));
  if (p.rows > 0 && chunk_rows > p.rows) chunk_rows = p.rows;
  bytes = linear_xent_layout(linear_xent_needs(backend, p, o), chunk_rows).total;
  POWERGRAD_REQUIRE(bytes != SIZE_MAX, Status::kInvalidSize, "%s (%lld) x %s needs more than 2^62 bytes of workspace",
                    n.chunk_rows, as_ll(chunk_rows), n.vocab);
  return Status::kSuccess;
}

template <class T, class Tg>
Status linear_chunk_rows(const LinearXentArgNames& n, Backend backend, LinearXentProblem<T, Tg> p,
                         LinearXentOutputs<T> o, size_t budget, int64_t& chunk) {
  clear_error();
  POWERGRAD_TRY(check_backend(static_cast<int>(backend), n.backend));
  POWERGRAD_TRY(check_linear_problem(n, p));
  POWERGRAD_TRY(check_linear_outputs(n, p, o));
  const LinearXentNeeds need = linear_xent_needs(backend, p, o);
  chunk = linear_xent_chunk_for(need, p.rows, budget);
  POWERGRAD_REQUIRE(chunk > 0, Status::kWorkspaceTooSmall, "a budget of %zu bytes is smaller than %s = %zu for one row",
                    budget, n.workspace_query, linear_xent_layout(need, 1).total);
  return Status::kSuccess;
}

}  // namespace detail

// Bytes of workspace linear_xent_forward_backward needs with chunks of `chunk_rows` rows (both
// backends need one: the chunk's fp32 logits live there). Depends on the backend, the dtype, the
// target kind, which outputs are requested and their types, vocab and hidden_dim.
template <class T, class Tg>
[[nodiscard]] Status linear_xent_workspace_bytes(Backend backend, const LinearXentProblem<T, Tg>& problem,
                                                 const LinearXentOutputs<T>& out, int64_t chunk_rows, size_t* bytes) {
  if (bytes == nullptr) {
    detail::clear_error();
    return detail::fail(Status::kNullPointer, "bytes is null");
  }
  size_t b = 0;
  POWERGRAD_TRY(detail::linear_workspace_bytes(detail::kLinearXentCppNames, backend, problem, out, chunk_rows, b));
  *bytes = b;
  return Status::kSuccess;
}

// The largest chunk (rows) whose workspace fits in `budget` bytes.
template <class T, class Tg>
[[nodiscard]] Status linear_xent_chunk_rows(Backend backend, const LinearXentProblem<T, Tg>& problem,
                                            const LinearXentOutputs<T>& out, size_t budget, int64_t* chunk_rows) {
  if (chunk_rows == nullptr) {
    detail::clear_error();
    return detail::fail(Status::kNullPointer, "chunk_rows is null");
  }
  int64_t c = 0;
  POWERGRAD_TRY(detail::linear_chunk_rows(detail::kLinearXentCppNames, backend, problem, out, budget, c));
  *chunk_rows = c;
  return Status::kSuccess;
}

// Loss and the requested gradients (dhidden, dweight, dbias) of the PGT cross-entropy of
// z = hidden weight^T + bias. chunk_rows = 0 takes the largest chunk the workspace holds.
// blas_handle: kCuda only, the caller's cublasHandle_t (the op's GEMMs run on `stream` through it;
// the handle's previous stream is restored, its workspace is not touched). kHost: ignored.
template <class T, class Tg>
[[nodiscard]] Status linear_xent_forward_backward(Backend backend, const LinearXentProblem<T, Tg>& problem,
                                                  const Upstream& upstream, const LinearXentOutputs<T>& out,
                                                  void* workspace, size_t workspace_bytes, int64_t chunk_rows = 0,
                                                  void* blas_handle = nullptr, stream_t stream = nullptr) {
  return detail::linear_forward_backward(detail::kLinearXentCppNames, backend, problem, upstream, out, workspace,
                                         workspace_bytes, chunk_rows, blas_handle, stream);
}

// Split form for a vocabulary-sharded weight (tensor parallelism; docs/design.md §2.6): shard k holds
// the rows [vocab_offset, vocab_offset + vocab) of W (and of the bias, the class weights and dense
// targets) of total_vocab classes.
//
// Step 1: this shard's 32-byte partial statistics (RowStats, docs/design.md §2.3) of every row, chunk
// by chunk (z_shard = h W_shard^T + b_shard in the workspace). The workspace of step 3 (queried with
// its outputs) serves this call too; pass the same chunk_rows to both calls.
template <class T, class Tg>
[[nodiscard]] Status linear_xent_shard_stats(Backend backend, const LinearXentProblem<T, Tg>& problem,
                                             RowStats* stats, void* workspace, size_t workspace_bytes,
                                             int64_t chunk_rows = 0, void* blas_handle = nullptr,
                                             stream_t stream = nullptr) {
  return detail::linear_shard_stats(detail::kLinearXentCppNames, backend, problem, stats, workspace, workspace_bytes,
                                    chunk_rows, blas_handle, stream);
}

// Step 2 is the caller's: an all-gather of every shard's statistics ([shard][row]) and
// xent_merge_stats into merged[rows] (the same bits on every shard).
//
// Step 3: with the merged statistics, recomputes z_shard per chunk and writes the loss (every shard
// writes the same value), the option outputs, dW_shard, db_shard and this shard's PARTIAL
// dhidden = G_shard W_shard: the caller sums dhidden over the shards (an all-reduce).
template <class T, class Tg>
[[nodiscard]] Status linear_xent_shard_apply(Backend backend, const LinearXentProblem<T, Tg>& problem,
                                             const RowStats* merged, const Upstream& upstream,
                                             const LinearXentOutputs<T>& out, void* workspace, size_t workspace_bytes,
                                             int64_t chunk_rows = 0, void* blas_handle = nullptr,
                                             stream_t stream = nullptr) {
  return detail::linear_shard_apply(detail::kLinearXentCppNames, backend, problem, merged, upstream, out, workspace,
                                    workspace_bytes, chunk_rows, blas_handle, stream);
}

POWERGRAD_NS_END
