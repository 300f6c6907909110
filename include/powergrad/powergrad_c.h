/* powergrad C ABI (DESIGN.md §3 layer 5): PGT softmax cross-entropy on raw pointers.
 *
 * A thin, boring ABI for any framework: prefixed functions, enums with explicit numbers, plain
 * argument structs passed by pointer, the stream as `void*` last. Every function returns a
 * pg_status_t and never lets an exception escape; pg_last_error() explains the last failure on the
 * calling thread. Accepted by a C99 compiler. The math is DESIGN.md §2.1-2.3 (see README.md).
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
  int32_t* bad_target_count;   /* optional, CUDA only: counts out-of-range class targets (see README) */
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
} pg_xent_outputs_t;

/* Mergeable per-row statistics of the split form (16 bytes, same layout as powergrad::RowStats). */
typedef struct pg_row_stats_t {
  float m, s, sa, t;
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

#ifdef __cplusplus
}
#endif

#endif /* POWERGRAD_C_H_ */
