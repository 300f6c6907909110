// powergrad C++ API: argument types of the PGT cross-entropy ops (see xent.hpp for the ops).
#pragma once

#include <cstddef>
#include <cstdint>

#include "powergrad/config.hpp"
#include "powergrad/math/dtype.hpp"
#include "powergrad/types.hpp"  // Backend, Reduction, RowStats, stream_t

POWERGRAD_NS_BEGIN

// Hard targets: one class index per row (int32_t or int64_t). A row whose target equals
// ignore_index is ignored (loss 0, gradient row 0, not counted by kMean).
template <class Index>
struct ClassTargets {
  const Index* index = nullptr;
  int64_t ignore_index = -100;
};

// Dense targets: a row-major [rows x cols] matrix of target probabilities, same element type as the
// logits. ld = 0 means ld = cols. For a column shard, it points at the shard's columns.
template <class T>
struct DenseTargets {
  const T* prob = nullptr;
  int64_t ld = 0;
};

// One PGT cross-entropy problem: logits [rows x cols] with row stride ld (>= cols), targets, and
// the math parameters of docs/design.md §2.1.
template <class T, class Targets>
struct XentProblem {
  const T* logits = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t ld = 0;  // 0 means ld = cols
  Targets targets{};
  float alpha = 1.f;            // PGT exponent, finite and >= 0 (alpha = 1: ordinary gradient)
  float label_smoothing = 0.f;  // eps in [0, 1): q = (1 - eps) q + eps / total_cols
  Reduction reduction = Reduction::kMean;
  // Split form (docs/design.md §2.3): these `cols` columns are global columns
  // [col_offset, col_offset + cols) of a row of total_cols columns. Defaults: the whole row.
  int64_t col_offset = 0;
  int64_t total_cols = 0;  // 0 means total_cols = cols
  // Optional, CUDA backend only: incremented (integer atomics) once per row whose class index is
  // neither ignore_index nor in [0, total_cols), or that uses a bad class weight (NaN, infinite or
  // negative: docs/design.md §8); such a row's loss and gradient are NaN. The host backend instead
  // rejects the call (kInvalidTarget, kInvalidValue) before writing anything.
  int32_t* bad_target_count = nullptr;
  // Options (docs/design.md §2.5), off by default.
  const float* weight = nullptr;  // class weights of these `cols` columns (same memory), finite and >= 0
  float z_loss_scale = 0.f;       // lambda >= 0: adds lambda * lse^2 per row (gradient with the ordinary softmax)
  float softcap = 0.f;            // c > 0: every logit z becomes c * tanh(z / c); 0 = off
};

// Upstream gradient of the loss: g_r = scale * v / (kMean ? n_valid : 1), where v = values[0] for
// kMean/kSum, v = values[r] for kNone, and v = 1 when values is null. `values` lives in the same
// memory as the other pointers (device memory for kCuda), so no host synchronisation is needed.
struct Upstream {
  float scale = 1.f;
  const float* values = nullptr;
};

// Outputs of the forward+backward op. Every pointer is optional.
template <class T>
struct XentOutputs {
  float* loss = nullptr;       // kMean/kSum: one value; kNone: rows values (0 for ignored rows)
  float* lse = nullptr;        // rows values: log-sum-exp of z (saved statistics)
  float* lse_alpha = nullptr;  // rows values: log-sum-exp of alpha*z (what a later backward needs)
  T* dlogits = nullptr;        // gradient; may equal logits (in place, then ld must match)
  int64_t ld_dlogits = 0;      // 0 means the logits' ld
  float* z_loss = nullptr;     // the z-loss part of `loss`, reduced as `loss` (docs/design.md §2.5)
  int64_t* argmax = nullptr;   // rows values: first column of the row's maximum (global index)
  int32_t* correct = nullptr;  // rows values, class targets: 1 when argmax equals the target, else 0
};

// Scale of an incoming gradient for the hook form: s_r = scale * (row_scale ? row_scale[r] : 1).
struct GradScale {
  float scale = 1.f;
  const float* row_scale = nullptr;
};

POWERGRAD_NS_END
