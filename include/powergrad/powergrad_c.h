/* powergrad C ABI (docs/design.md §3 layer 5): PGT softmax cross-entropy on raw pointers.
 *
 * A thin, boring ABI for any framework: prefixed functions, enums with explicit numbers, plain
 * argument structs passed by pointer, the stream as `void*` last. Every function returns a
 * pg_status_t and never lets an exception escape; pg_last_error() explains the last failure on the
 * calling thread. Accepted by a C99 compiler. The math is docs/design.md §2.1-2.3 (usage: docs/c-abi.md).
 *
 * Struct versioning: every argument struct starts with `struct_size`, which the caller sets to
 * sizeof(the struct) as compiled; the library rejects sizes it does not know
 * (PG_STATUS_INVALID_VALUE), so that later versions can append fields.
 *
 * Errors: every call first clears the calling thread's message; a failing call writes nothing to
 * any output and leaves a message naming the offending argument. Enum arguments and fields may hold
 * any int (a value outside the enum gives PG_STATUS_INVALID_VALUE). PG_DEVICE_CUDA in a library
 * built without CUDA gives PG_STATUS_NO_CUDA_SUPPORT (see pg_has_cuda()).
 */
#ifndef POWERGRAD_C_H_
#define POWERGRAD_C_H_

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define PG_API __declspec(dllexport)
#elif defined(__GNUC__)
#define PG_API __attribute__((visibility("default")))
#else
#define PG_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum pg_status_t {
  PG_STATUS_SUCCESS = 0,
  PG_STATUS_NULL_POINTER = 1,
  PG_STATUS_INVALID_SIZE = 2,
  PG_STATUS_INVALID_VALUE = 3,
  PG_STATUS_INVALID_LAYOUT = 4,
  PG_STATUS_INVALID_TARGET = 5,
  PG_STATUS_WORKSPACE_TOO_SMALL = 6,
  PG_STATUS_NO_CUDA_SUPPORT = 7,
  PG_STATUS_CUDA_ERROR = 8,
  PG_STATUS_UNSUPPORTED = 9,
  PG_STATUS_INTERNAL_ERROR = 10 /* an unexpected C++ exception, caught at the boundary */
} pg_status_t;

typedef enum pg_dtype_t { PG_DTYPE_FLOAT32 = 0, PG_DTYPE_FLOAT16 = 1, PG_DTYPE_BFLOAT16 = 2 } pg_dtype_t;

typedef enum pg_device_t { PG_DEVICE_HOST = 0, PG_DEVICE_CUDA = 1 } pg_device_t;

typedef enum pg_reduction_t { PG_REDUCTION_NONE = 0, PG_REDUCTION_MEAN = 1, PG_REDUCTION_SUM = 2 } pg_reduction_t;

/* How targets are given: class indices (int32 or int64, with ignore_index) or dense probabilities
 * of the logits' dtype ([rows x cols], row stride target_ld; 0 means cols). */
typedef enum pg_target_kind_t {
  PG_TARGET_INDEX_INT32 = 0,
  PG_TARGET_INDEX_INT64 = 1,
  PG_TARGET_DENSE = 2
} pg_target_kind_t;

/* One cross-entropy problem (the C form of powergrad::XentProblem). */
typedef struct pg_xent_problem_t {
  size_t struct_size;          /* sizeof(pg_xent_problem_t) */
  pg_device_t device;          /* where every pointer of the call lives */
  pg_dtype_t dtype;            /* element type of logits / gradients / dense targets */
  const void* logits;          /* [rows x cols], row stride ld (0 means cols); for pg_xent_hook: the incoming gradient */
  int64_t rows;
  int64_t cols;
  int64_t ld;
  pg_target_kind_t target_kind;
  const void* targets;         /* int32_t* / int64_t* [rows], or dense [rows x cols] of dtype */
  int64_t target_ld;           /* dense targets only; 0 means cols */
  int64_t ignore_index;        /* class targets only (PyTorch's default is -100) */
  float alpha;                 /* PGT exponent, finite, >= 0; 1 = ordinary gradient */
  float label_smoothing;       /* in [0, 1) */
  pg_reduction_t reduction;
  int64_t col_offset;          /* split form: these cols are [col_offset, col_offset+cols) of total_cols; 0 */
  int64_t total_cols;          /* 0 means cols (required when col_offset > 0) */
  int32_t* bad_target_count;   /* optional, CUDA only: counts rows with an out-of-range class target or a bad class weight (docs/design.md §8) */
  /* Options (docs/design.md §2.5), appended to the first layout; a struct_size of the first layout
   * (ending above) is still accepted, with every option off. */
  const float* weight;         /* optional class weights of these cols columns (float, same memory), finite, >= 0 */
  float z_loss_scale;          /* lambda >= 0: adds lambda * lse^2 per row; 0 = off */
  float softcap;               /* c > 0: logits become c * tanh(z / c); 0 = off */
} pg_xent_problem_t;

/* g_r = scale * v / (MEAN ? n_valid : 1); v = values[0] (MEAN/SUM) or values[r] (NONE), 1 if NULL. */
typedef struct pg_upstream_t {
  size_t struct_size;          /* sizeof(pg_upstream_t) */
  float scale;
  const float* values;         /* same memory space as the problem's pointers; may be NULL */
} pg_upstream_t;

/* Outputs; every pointer optional (the struct itself is required). */
typedef struct pg_xent_outputs_t {
  size_t struct_size;          /* sizeof(pg_xent_outputs_t) */
  float* loss;                 /* MEAN/SUM: 1 value; NONE: rows values */
  float* lse;                  /* rows values */
  float* lse_alpha;            /* rows values */
  void* dlogits;               /* dtype; may equal logits (in place, same ld) */
  int64_t ld_dlogits;          /* 0 means the logits' ld */
  /* Appended to the first layout (docs/design.md §2.5), whose struct_size (ending above) is still accepted. */
  float* z_loss;               /* the z-loss part of loss, reduced as loss */
  int64_t* argmax;             /* rows values: first column of the row's maximum (global index) */
  int32_t* correct;            /* rows values, class targets: 1 when argmax equals the target, else 0 */
} pg_xent_outputs_t;

/* Mergeable per-row statistics of the split form (32 bytes, same layout as powergrad::RowStats;
 * docs/design.md §2.3): max, the two exponential sums, the target dot product, the target mass, the
 * row's weight in a weighted mean, and the global column of the first maximum. */
typedef struct pg_row_stats_t {
  float m, s, sa, t, a, w;
  int64_t argmax;
} pg_row_stats_t;

/* Library version as MAJOR*10000 + MINOR*100 + PATCH. */
PG_API int pg_version(void);
/* Static, human-readable name of a status. */
PG_API const char* pg_status_string(pg_status_t status);
/* Message explaining the status of the calling thread's last call ("" after a success). Valid until
 * the thread's next call. */
PG_API const char* pg_last_error(void);
/* 1 when this build can run PG_DEVICE_CUDA calls, else 0. */
PG_API int pg_has_cuda(void);

/* Device workspace in bytes for forward_backward / backward / shard_apply (0 for NONE). */
PG_API pg_status_t pg_xent_workspace_bytes(int64_t rows, pg_reduction_t reduction, size_t* bytes);

/* Loss (+ saved lse, lse_alpha) and gradient in one sweep. upstream may be NULL (scale 1). */
PG_API pg_status_t pg_xent_forward_backward(const pg_xent_problem_t* problem, const pg_upstream_t* upstream,
                                            const pg_xent_outputs_t* outputs, void* workspace,
                                            size_t workspace_bytes, void* stream);

/* Gradient only; with saved_lse_alpha (rows floats, may be NULL) one read + one write. */
PG_API pg_status_t pg_xent_backward(const pg_xent_problem_t* problem, const pg_upstream_t* upstream,
                                    const float* saved_lse_alpha, void* dlogits, int64_t ld_dlogits,
                                    void* workspace, size_t workspace_bytes, void* stream);

/* Hook form: problem->logits holds G = s_r (p - q); writes s_r (p' - q), s_r = scale * (row_scale ? row_scale[r] : 1). */
PG_API pg_status_t pg_xent_hook(const pg_xent_problem_t* problem, float scale, const float* row_scale, void* out,
                                int64_t ld_out, void* stream);

/* Split form. */
PG_API pg_status_t pg_xent_shard_stats(const pg_xent_problem_t* problem, pg_row_stats_t* stats, void* stream);
PG_API pg_status_t pg_xent_merge_stats(pg_device_t device, const pg_row_stats_t* parts, int64_t shards, int64_t rows,
                                       float alpha, pg_row_stats_t* merged, void* stream);
PG_API pg_status_t pg_xent_shard_apply(const pg_xent_problem_t* problem, const pg_row_stats_t* merged,
                                       const pg_upstream_t* upstream, const pg_xent_outputs_t* outputs,
                                       void* workspace, size_t workspace_bytes, void* stream);


/* ---- Gradient-bucket transforms (docs/design.md §2.4; usage: docs/buckets.md) ----
 * A plan describes one bucket (its tensors' addresses and sizes) in a caller-provided host buffer
 * (pg_bucket_plan_bytes, 16-byte aligned); it is validated once when built. CUDA plans are then
 * copied once into the start of the caller's device workspace (pg_bucket_plan_upload); every op
 * after that is at most three kernels, no host synchronisation, CUDA-graph capturable. Ops rewrite
 * the gradients in place. The optional `flags` output (int32, the plan's memory space) receives
 * PG_BUCKET_FLAG_* bits. Rebuild the plan when a gradient moves. */
typedef enum pg_bucket_units_t {
  PG_BUCKET_UNITS_TENSOR = 0,  /* whole tensors: power, clip_norm */
  PG_BUCKET_UNITS_ROWS = 1     /* slices along dim 0 (`rows` per tensor): AGC; needs the parameters */
} pg_bucket_units_t;

typedef enum pg_bucket_scope_t { PG_BUCKET_SCOPE_TENSOR = 0, PG_BUCKET_SCOPE_BUCKET = 1 } pg_bucket_scope_t;

typedef enum pg_norm_preserve_t { PG_PRESERVE_NONE = 0, PG_PRESERVE_L1 = 1, PG_PRESERVE_L2 = 2 } pg_norm_preserve_t;

enum { PG_BUCKET_FLAG_NON_FINITE = 1, PG_BUCKET_FLAG_STALE_PLAN = 2 };

/* One tensor of a bucket (same layout as powergrad::BucketTensor). */
typedef struct pg_bucket_tensor_t {
  void* grad;         /* numel contiguous elements of grad_dtype */
  const void* param;  /* PG_BUCKET_UNITS_ROWS: the parameter, numel elements of param_dtype */
  int64_t numel;
  int64_t rows;       /* PG_BUCKET_UNITS_ROWS: size along dim 0 (0 or 1: the whole tensor is one unit) */
} pg_bucket_tensor_t;

typedef struct pg_bucket_desc_t {
  size_t struct_size;          /* sizeof(pg_bucket_desc_t) */
  pg_device_t device;          /* where the tensors live */
  pg_dtype_t grad_dtype;
  pg_dtype_t param_dtype;      /* ROWS plans: grad_dtype or PG_DTYPE_FLOAT32; ignored otherwise */
  pg_bucket_units_t units;
  const pg_bucket_tensor_t* tensors;
  int64_t count;
} pg_bucket_desc_t;

/* Host bytes of a plan for `count` tensors. */
PG_API pg_status_t pg_bucket_plan_bytes(int64_t count, size_t* bytes);
/* Validates the bucket (null pointers, sizes, overlapping gradients, parameters overlapping a
 * gradient) and writes the plan. */
PG_API pg_status_t pg_bucket_plan_build(const pg_bucket_desc_t* desc, void* plan, size_t plan_bytes);
/* A flat buffer with count + 1 non-decreasing element offsets (a DDP bucket) -> out[count].
 * params (count pointers) and rows (count values) may be NULL. */
PG_API pg_status_t pg_bucket_tensors_from_flat(void* data, pg_dtype_t dtype, const int64_t* offsets, int64_t count,
                                               const void* const* params, const int64_t* rows,
                                               pg_bucket_tensor_t* out);
/* Every call below takes the plan and plan_bytes, the size of the buffer it was built into: the plan's
 * own size fields are checked against plan_bytes before anything past its header is read. */
/* Workspace bytes of the plan's ops (0 for a host plan). */
PG_API pg_status_t pg_bucket_workspace_bytes(const void* plan, size_t plan_bytes, size_t* bytes);
/* CUDA plans: copies the plan into the workspace (once, outside graph capture). Host plans: no-op. */
PG_API pg_status_t pg_bucket_plan_upload(const void* plan, size_t plan_bytes, void* workspace, size_t workspace_bytes,
                                         void* stream);

/* power: g <- K sign(g)|g|^beta, K keeping the scope's L1 / L2 norm (NONE: K = 1); beta > 0. */
PG_API pg_status_t pg_bucket_power(const void* plan, size_t plan_bytes, float beta, pg_norm_preserve_t preserve,
                                   pg_bucket_scope_t scope, void* workspace, size_t workspace_bytes, int32_t* flags, void* stream);
/* clip_norm as torch.nn.utils.clip_grad_norm_; norms (optional): one float per scope group. */
PG_API pg_status_t pg_bucket_clip_norm(const void* plan, size_t plan_bytes, float max_norm, pg_bucket_scope_t scope,
                                       float* norms, void* workspace, size_t workspace_bytes, int32_t* flags, void* stream);
/* AGC as timm's adaptive_clip_grad per unit, then (beta != 1 or preserve != NONE) the power map per unit. */
PG_API pg_status_t pg_bucket_agc(const void* plan, size_t plan_bytes, float clip, float eps, float beta,
                                 pg_norm_preserve_t preserve, void* workspace, size_t workspace_bytes, int32_t* flags, void* stream);

/* ---- PGT linear cross-entropy (docs/design.md §2.6; usage: docs/linear-xent.md) ----
 * The classifier GEMM z = hidden weight^T + bias fused with the PGT cross-entropy, in row chunks
 * of a caller-provided workspace, so that the logits [rows x vocab] never exist. Host calls need a
 * library built with a host BLAS (pg_has_host_blas()); CUDA calls need the caller's
 * cublasHandle_t as blas_handle (its GEMMs run on `stream`; the handle's previous stream is
 * restored and its workspace left as the caller set it). */
typedef enum pg_grad_type_t {
  PG_GRAD_WEIGHT_DTYPE = 0,  /* the problem's dtype */
  PG_GRAD_FLOAT32 = 1
} pg_grad_type_t;

typedef struct pg_linear_xent_problem_t {
  size_t struct_size;          /* sizeof(pg_linear_xent_problem_t) */
  pg_device_t device;
  pg_dtype_t dtype;            /* of hidden, weight, bias, dense targets, dhidden */
  const void* hidden;          /* [rows x hidden_dim], row stride ld_hidden (0 means hidden_dim) */
  int64_t rows;
  int64_t hidden_dim;
  int64_t ld_hidden;
  const void* weight;          /* [vocab x weight_dim], row stride ld_weight (0 means hidden_dim) */
  int64_t vocab;
  int64_t weight_dim;          /* 0 means hidden_dim; anything else must equal it */
  int64_t ld_weight;
  const void* bias;            /* optional, [bias_len] */
  int64_t bias_len;            /* 0 means vocab; anything else must equal it */
  pg_target_kind_t target_kind;
  const void* targets;         /* int32_t* / int64_t* [rows], or dense [rows x vocab] of dtype */
  int64_t target_ld;           /* dense targets only; 0 means vocab */
  int64_t ignore_index;
  float alpha;
  float label_smoothing;
  pg_reduction_t reduction;
  int32_t* bad_target_count;   /* optional, CUDA only */
  /* Appended to the first layout (which ends above; its struct_size is still accepted, with the
   * whole vocabulary and every option off). Split form (docs/design.md §2.6): these vocab rows of
   * weight (and of bias, class_weight, dense targets) are the global classes
   * [vocab_offset, vocab_offset + vocab) of total_vocab (0 means vocab); class indices are global. */
  int64_t vocab_offset;
  int64_t total_vocab;
  /* Options of the cross-entropy (docs/design.md §2.5); `weight` is the classifier's. */
  const float* class_weight;   /* optional, [vocab] floats in the problem's memory, finite, >= 0 */
  float z_loss_scale;          /* lambda >= 0: adds lambda * lse^2 per row; 0 = off */
  float softcap;               /* c > 0: logits become c * tanh(z / c); 0 = off */
} pg_linear_xent_problem_t;

/* Outputs; every pointer optional. dweight / dbias are written (accumulate 0) or added to
 * (accumulate 1), summed over chunks in fp32 and rounded once to their type. */
typedef struct pg_linear_xent_outputs_t {
  size_t struct_size;          /* sizeof(pg_linear_xent_outputs_t) */
  float* loss;                 /* MEAN/SUM: 1 value; NONE: rows values */
  void* dhidden;               /* [rows x hidden_dim] of dtype, row stride ld_dhidden (0 means hidden_dim) */
  int64_t ld_dhidden;
  void* dweight;               /* [vocab x hidden_dim] of dweight_type, row stride ld_dweight */
  int64_t ld_dweight;
  pg_grad_type_t dweight_type;
  int32_t accumulate_dweight;  /* 0 or 1 */
  void* dbias;                 /* [vocab] of dbias_type; needs a bias */
  pg_grad_type_t dbias_type;
  int32_t accumulate_dbias;    /* 0 or 1 */
  /* Appended to the first layout (which ends above; its struct_size is still accepted). */
  float* z_loss;               /* the z-loss part of loss, reduced as loss */
  int64_t* argmax;             /* rows values: first class of the row's maximum logit (global index) */
  int32_t* correct;            /* rows values, class targets: 1 when argmax equals the target, else 0 */
} pg_linear_xent_outputs_t;

/* 1 when this library's host backend has a BLAS (the host linear cross-entropy works), else 0. */
PG_API int pg_has_host_blas(void);
/* Workspace bytes with chunks of chunk_rows rows (>= 1). */
PG_API pg_status_t pg_linear_xent_workspace_bytes(const pg_linear_xent_problem_t* problem,
                                                  const pg_linear_xent_outputs_t* outputs, int64_t chunk_rows,
                                                  size_t* bytes);
/* The largest chunk whose workspace fits in budget bytes. */
PG_API pg_status_t pg_linear_xent_chunk_rows(const pg_linear_xent_problem_t* problem,
                                             const pg_linear_xent_outputs_t* outputs, size_t budget,
                                             int64_t* chunk_rows);
/* Loss and gradients. chunk_rows 0: the largest chunk the workspace holds. upstream may be NULL. */
PG_API pg_status_t pg_linear_xent_forward_backward(const pg_linear_xent_problem_t* problem,
                                                   const pg_upstream_t* upstream,
                                                   const pg_linear_xent_outputs_t* outputs, void* workspace,
                                                   size_t workspace_bytes, int64_t chunk_rows, void* blas_handle,
                                                   void* stream);
/* Split form for a vocabulary-sharded weight (problem->vocab_offset / total_vocab): step 1, this
 * shard's 32-byte statistics of every row into stats[rows] (8-byte aligned). The workspace of
 * pg_linear_xent_shard_apply (pg_linear_xent_workspace_bytes with its outputs) serves it too. */
PG_API pg_status_t pg_linear_xent_shard_stats(const pg_linear_xent_problem_t* problem, pg_row_stats_t* stats,
                                              void* workspace, size_t workspace_bytes, int64_t chunk_rows,
                                              void* blas_handle, void* stream);
/* Step 2 is the caller's: all-gather every shard's stats ([shard][row]), pg_xent_merge_stats.
 * Step 3: loss (the same on every shard), option outputs, this shard's dweight / dbias and its
 * PARTIAL dhidden (the caller sums dhidden over the shards: an all-reduce). upstream may be NULL. */
PG_API pg_status_t pg_linear_xent_shard_apply(const pg_linear_xent_problem_t* problem, const pg_row_stats_t* merged,
                                              const pg_upstream_t* upstream, const pg_linear_xent_outputs_t* outputs,
                                              void* workspace, size_t workspace_bytes, int64_t chunk_rows,
                                              void* blas_handle, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* POWERGRAD_C_H_ */

/* ---- Host threads (docs/design.md §6.1) ------------------------------------------------------------
 * Process-wide: how many threads a host-backend op may use. threads >= 1, or 0 for the default (the
 * machine's hardware concurrency); larger than 256 or negative: PG_STATUS_INVALID_VALUE. Results do
 * not depend on it (fixed work partition, fixed merge order). Bindings set it from their framework's
 * own setting (powergrad.torch: torch.get_num_threads()) so the two pools do not oversubscribe. */
#ifndef POWERGRAD_C_HOST_THREADS_H_
#define POWERGRAD_C_HOST_THREADS_H_
#ifdef __cplusplus
extern "C" {
#endif
PG_API pg_status_t pg_set_host_threads(int32_t threads);
/* The thread count host ops use now (the setting, or the default when it is 0). */
PG_API int32_t pg_host_threads(void);
#ifdef __cplusplus
}
#endif
#endif /* POWERGRAD_C_HOST_THREADS_H_ */
