// powergrad internal: the normalised description of one cross-entropy launch that both backends
// (host loops and CUDA kernels) execute. Built and validated by the C++ API in xent.hpp.
#pragma once

#include <cstddef>
#include <cstdint>

#include "powergrad/detail/xent_workspace.hpp"
#include "powergrad/math/xent_math.hpp"
#include "powergrad/xent_types.hpp"

POWERGRAD_NS_BEGIN
namespace detail {

// What a launch computes. A compile-time parameter of the CUDA row kernels (each op instantiates
// only the kernels of its modes); the host loops read it from the job. The numbers are part of the
// kernels' symbol names, so existing modes keep theirs.
enum class XentMode : int {
  kFused = 0,         // statistics + loss + gradient in one sweep of each row (forward+backward, backward)
  kStats = 1,         // partial row statistics of a shard only (split form, step 1)
  kApplyMerged = 2,   // gradient (+ loss, lse, lse_alpha) from merged statistics (split form, step 3)
  kHook = 3,          // rewrite an existing gradient s*(p - q) into s*(p' - q)
  kApplySaved = 4,    // gradient only, from a saved lse_alpha (backward: one read, one write)
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
  const RowStats* stats_in = nullptr;    // kApplyMerged: merged statistics
  const float* lse_alpha_in = nullptr;   // kApplySaved: a saved lse_alpha
};

// Whether a job needs the reduction workspace: a reduced loss or z-loss is written, or kMean scales
// the gradient by 1/n_valid (or 1/D with class weights).
template <class T, class Tg>
bool xent_job_needs_workspace(const XentJob<T, Tg>& j) {
  if (j.mode != XentMode::kFused && j.mode != XentMode::kApplyMerged && j.mode != XentMode::kApplySaved) return false;
  if (j.p.reduction == Reduction::kNone) return false;
  return j.out.loss != nullptr || j.out.z_loss != nullptr ||
         (j.p.reduction == Reduction::kMean && j.out.dlogits != nullptr);
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
