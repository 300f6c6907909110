// powergrad host backend: the PGT cross-entropy ops as plain C++ loops over the math layer.
//
// It follows the device kernels' partition where that is cheap: a row is cut into chunks, each
// chunk gets its own online statistics (max first, then the two sums at one reference), and the
// chunk statistics are combined with the same merge operator the kernels and the split form use.
// CPU tests therefore exercise the merge logic, not only a textbook loop.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "powergrad/detail/xent_job.hpp"
#include "powergrad/math/dtype.hpp"
#include "powergrad/math/xent_math.hpp"
#include "powergrad/status.hpp"

POWERGRAD_NS_BEGIN
namespace host {

constexpr int64_t kChunkCols = 1024;  // columns per partial statistic before a merge

namespace detail_host {

using powergrad::detail::XentJob;
using powergrad::detail::XentMode;

// Per-row view of the targets.
template <class Tg>
struct RowTarget;

template <class Index>
struct RowTarget<ClassTargets<Index>> {
  int64_t y = 0;
  bool ignored = false;
  template <class T>
  RowTarget(const XentJob<T, ClassTargets<Index>>& j, int64_t r) {
    y = static_cast<int64_t>(j.p.targets.index[r]);
    ignored = (y == j.p.targets.ignore_index);
  }
  // Target probability of local column c.
  template <class T>
  float q(const XentJob<T, ClassTargets<Index>>& j, int64_t, int64_t c) const {
    return math::hard_q(c + j.p.col_offset, y, j.k);
  }
};

template <class TT>
struct RowTarget<DenseTargets<TT>> {
  bool ignored = false;
  const TT* row = nullptr;
  template <class T>
  RowTarget(const XentJob<T, DenseTargets<TT>>& j, int64_t r) : row(j.p.targets.prob + r * j.p.targets.ld) {}
  template <class T>
  float q(const XentJob<T, DenseTargets<TT>>& j, int64_t, int64_t c) const {
    return math::dense_q(to_float(row[c]), j.k);
  }
};

template <class Tg>
constexpr bool is_hard() {
  return powergrad::detail::target_traits<Tg>::hard;
}

// The value the statistics run over: the logit, or for the hook form log(p) with p recovered from
// the incoming gradient (p = G/s + q clamped to [0, 1]; log 0 = -inf acts as a masked class).
template <class T, class Tg>
float row_z(const XentJob<T, Tg>& j, const RowTarget<Tg>& tg, const T* x, int64_t r, int64_t c, float s_r) {
  const float v = to_float(x[c]);
  if (j.mode != XentMode::kHook) return v;
  float p = v / s_r + tg.q(j, r, c);
  p = p < 0.f ? 0.f : (p > 1.f ? 1.f : p);  // comparisons keep NaN
  return std::log(p);
}

template <class T, class Tg>
RowStats row_stats(const XentJob<T, Tg>& j, const RowTarget<Tg>& tg, const T* x, int64_t r, float s_r) {
  const int64_t C = j.p.cols;
  RowStats total = math::empty_stats();
  for (int64_t c0 = 0; c0 < C; c0 += kChunkCols) {
    const int64_t c1 = c0 + kChunkCols < C ? c0 + kChunkCols : C;
    float bm = math::neg_inf();
    for (int64_t c = c0; c < c1; ++c) {
      const float z = row_z(j, tg, x, r, c, s_r);
      bm = z > bm ? z : bm;  // NaN never becomes the max; it reaches the sums instead
    }
    RowStats part = math::empty_stats();
    const float ref = math::rescale_to(part, bm, j.k);
    for (int64_t c = c0; c < c1; ++c) {
      const float z = row_z(j, tg, x, r, c, s_r);
      math::accumulate(part, z, ref, j.k);
      if (j.mode == XentMode::kHook) continue;
      if constexpr (is_hard<Tg>()) {
        part.t += math::q_times_z(j.k.smooth_off, z);
      } else {
        part.t += math::q_times_z(tg.q(j, r, c), z);
      }
    }
    total = math::merge(total, part, j.k.alpha_log2e);
  }
  if constexpr (is_hard<Tg>()) {
    const int64_t yl = tg.y - j.p.col_offset;
    if (j.mode != XentMode::kHook && !tg.ignored && yl >= 0 && yl < C) {
      total.t += math::q_times_z(j.k.smooth_on, to_float(x[yl]));
    }
  }
  return total;
}


template <class T, class Tg>
int64_t count_valid(const XentJob<T, Tg>& j) {
  if constexpr (!is_hard<Tg>()) {
    return j.p.rows;
  } else {
    int64_t n = 0;
    for (int64_t r = 0; r < j.p.rows; ++r) n += (static_cast<int64_t>(j.p.targets.index[r]) != j.p.targets.ignore_index);
    return n;
  }
}

}  // namespace detail_host

// Runs one validated job on host memory.
template <class T, class Tg>
Status xent_run(const powergrad::detail::XentJob<T, Tg>& j) {
  using namespace detail_host;
  // Class indices were checked by the API layer (xent.hpp: check_host_targets) before this runs.
  const int64_t R = j.p.rows, C = j.p.cols;
  const bool reduced = j.p.reduction != Reduction::kNone;
  const int64_t n_valid = count_valid(j);
  double loss_sum = 0.0;

  for (int64_t r = 0; r < R; ++r) {
    const T* x = j.p.logits + r * j.p.ld;
    const RowTarget<Tg> tg(j, r);

    if (j.mode == XentMode::kHook) {
      const float s_r = j.hook_scale.scale * (j.hook_scale.row_scale ? j.hook_scale.row_scale[r] : 1.f);
      T* o = j.out.dlogits + r * j.out.ld_dlogits;
      if (tg.ignored || s_r == 0.f) {
        for (int64_t c = 0; c < C; ++c) o[c] = from_float<T>(0.f);
        continue;
      }
      if (!(s_r > 0.f) || !std::isfinite(s_r)) {  // negative, NaN or inf scale: the row is NaN
        for (int64_t c = 0; c < C; ++c) o[c] = from_float<T>(std::numeric_limits<float>::quiet_NaN());
        continue;
      }
      const RowStats st = row_stats(j, tg, x, r, s_r);
      const float ref = math::safe_ref(st.m), c2 = math::fast_log2(st.sa);
      for (int64_t c = 0; c < C; ++c) {
        const float z = row_z(j, tg, x, r, c, s_r);  // read before the (possibly in-place) write
        o[c] = from_float<T>(math::grad_elem(s_r, math::pgt_prob(z, j.k.alpha_log2e, ref, c2), tg.q(j, r, c)));
      }
      continue;
    }

    // Statistics: computed (kFused, kStats), merged (kApplyMerged) or only lse_alpha (kApplySaved).
    RowStats st{};
    float ref = 0.f, c2 = 0.f;
    if (j.mode == XentMode::kApplySaved) {
      c2 = j.lse_alpha_in[r] * math::kLog2e;
    } else {
      st = (j.mode == XentMode::kApplyMerged) ? j.stats_in[r] : row_stats(j, tg, x, r, 1.f);
      if (j.mode == XentMode::kStats) {
        j.stats_out[r] = st;
        continue;
      }
      ref = math::safe_ref(st.m);
      c2 = math::fast_log2(st.sa);
      if (j.out.lse) j.out.lse[r] = math::lse_of(st);
      if (j.out.lse_alpha) j.out.lse_alpha[r] = math::lse_alpha_of(st, j.k.alpha);
      const float row_loss = tg.ignored ? 0.f : math::row_loss_of(math::lse_of(st), st);
      if (!reduced && j.out.loss) j.out.loss[r] = row_loss;
      loss_sum += static_cast<double>(row_loss);
    }

    if (!j.out.dlogits) continue;
    T* o = j.out.dlogits + r * j.out.ld_dlogits;
    if (tg.ignored) {
      for (int64_t c = 0; c < C; ++c) o[c] = from_float<T>(0.f);
      continue;
    }
    float g = j.up.scale * (j.up.values ? j.up.values[reduced ? 0 : r] : 1.f);
    if (j.p.reduction == Reduction::kMean) g = n_valid > 0 ? g / static_cast<float>(n_valid) : 0.f;
    for (int64_t c = 0; c < C; ++c) {
      const float z = to_float(x[c]);
      o[c] = from_float<T>(math::grad_elem(g, math::pgt_prob(z, j.k.alpha_log2e, ref, c2), tg.q(j, r, c)));
    }
  }

  if (reduced && j.out.loss && (j.mode == XentMode::kFused || j.mode == XentMode::kApplyMerged)) {
    double l = loss_sum;
    if (j.p.reduction == Reduction::kMean) l = n_valid > 0 ? l / static_cast<double>(n_valid) : 0.0;
    j.out.loss[0] = static_cast<float>(l);
  }
  return Status::kSuccess;
}

// Merges shards x rows partial statistics (layout [shard][row]) in shard order.
inline Status merge_stats_run(const RowStats* parts, int64_t shards, int64_t rows, float alpha, RowStats* merged) {
  const float a2 = alpha * math::kLog2e;
  for (int64_t r = 0; r < rows; ++r) {
    RowStats acc = parts[r];
    for (int64_t k = 1; k < shards; ++k) acc = math::merge(acc, parts[k * rows + r], a2);
    merged[r] = acc;
  }
  return Status::kSuccess;
}

}  // namespace host
POWERGRAD_NS_END
