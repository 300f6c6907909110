// powergrad internal: the normalised description of one cross-entropy launch that both backends
// (host loops and CUDA kernels) execute. Built and validated by the C++ API in xent.hpp.
#pragma once

#include <cstddef>
#include <cstdint>

#include "powergrad/xent_types.hpp"

POWERGRAD_NS_BEGIN
namespace detail {

enum class XentMode : int {
  kFused = 0,  // statistics + loss + gradient in one sweep of each row (forward+backward, backward)
  kStats = 1,  // partial row statistics of a shard only (split form, step 1)
  kApply = 2,  // gradient (+ loss) from merged statistics or a saved lse_alpha (one read, one write)
  kHook = 3,   // rewrite an existing gradient s*(p - q) into s*(p' - q)
};

template <class T, class Targets>
struct XentJob {
  XentProblem<T, Targets> p;  // ld, total_cols normalised (never 0)
  math::XentScalars k{};
  XentMode mode = XentMode::kFused;
  Upstream up{};
  GradScale hook_scale{};
  XentOutputs<T> out{};  // ld_dlogits normalised when dlogits is set
  RowStats* stats_out = nullptr;
  const RowStats* stats_in = nullptr;    // kApply: merged statistics, or
  const float* lse_alpha_in = nullptr;   // kApply: a saved lse_alpha
};

// Device workspace layout for reduced losses: [n_valid (float), pad to 16 bytes][rows floats].
inline size_t xent_workspace_bytes_impl(int64_t rows, Reduction r) {
  if (r == Reduction::kNone || rows <= 0) return 0;
  return 16 + static_cast<size_t>(rows) * sizeof(float);
}

// Whether a job needs the reduction workspace: a reduced loss is written, or kMean scales the
// gradient by 1/n_valid.
template <class T, class Tg>
bool xent_job_needs_workspace(const XentJob<T, Tg>& j) {
  if (j.mode != XentMode::kFused && j.mode != XentMode::kApply) return false;
  if (j.p.reduction == Reduction::kNone) return false;
  return j.out.loss != nullptr || (j.p.reduction == Reduction::kMean && j.out.dlogits != nullptr);
}

template <class Tg>
struct target_traits;
template <>
struct target_traits<ClassTargets<int32_t>> {
  static constexpr bool hard = true;
};
template <>
struct target_traits<ClassTargets<int64_t>> {
  static constexpr bool hard = true;
};
template <class T>
struct target_traits<DenseTargets<T>> {
  static constexpr bool hard = false;
};

}  // namespace detail
POWERGRAD_NS_END
