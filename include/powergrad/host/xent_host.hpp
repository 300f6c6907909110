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

// Class weight of local column c (1 without weights).
template <class T, class Tg>
float weight_of(const XentJob<T, Tg>& j, int64_t c) {
  return j.p.weight ? j.p.weight[c] : 1.f;
}

// Per-row view of the targets: q (the hook form's target, no options) and b, the weighted smoothed
// target of docs/design.md §2.5 (b = q without weights).
template <class Tg>
struct RowTarget;

template <class Index>
struct RowTarget<ClassTargets<Index>> {
  int64_t y = 0;
  int64_t yl = 0;         // target column relative to this shard
  bool ignored = false;
  bool in_shard = false;  // the target column is one of these columns
  float wy = 0.f;         // its weight when it is (1 without weights), else 0
  template <class T>
  RowTarget(const XentJob<T, ClassTargets<Index>>& j, int64_t r) {
    y = static_cast<int64_t>(j.p.targets.index[r]);
    ignored = (y == j.p.targets.ignore_index);
    yl = y - j.p.col_offset;
    in_shard = !ignored && yl >= 0 && yl < j.p.cols;
    wy = in_shard ? weight_of(j, yl) : 0.f;
  }
  // Target probability of local column c.
  template <class T>
  float q(const XentJob<T, ClassTargets<Index>>& j, int64_t, int64_t c) const {
    return math::hard_q(c + j.p.col_offset, y, j.k);
  }
  // The part of b_c that is not the target column's (1 - eps) w_y.
  template <class T>
  float b_off(const XentJob<T, ClassTargets<Index>>& j, int64_t c) const {
    return j.p.weight ? j.k.smooth_off * j.p.weight[c] : j.k.smooth_off;
  }
  template <class T>
  float b(const XentJob<T, ClassTargets<Index>>& j, int64_t c) const {
    return (c == yl ? j.k.smooth_on * wy : 0.f) + b_off(j, c);
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
  template <class T>
  float b(const XentJob<T, DenseTargets<TT>>& j, int64_t c) const {
    const float qc = math::dense_q(to_float(row[c]), j.k);
    return j.p.weight ? j.p.weight[c] * qc : qc;
  }
};

template <class Tg>
constexpr bool is_hard() {
  return powergrad::detail::target_traits<Tg>::hard;
}

// The value the statistics run over: the logit (softcapped when asked), or for the hook form log(p)
// with p recovered from the incoming gradient (p = G/s + q clamped to [0, 1]; log 0 = -inf acts as
// a masked class).
template <class T, class Tg>
float row_z(const XentJob<T, Tg>& j, const RowTarget<Tg>& tg, const T* x, int64_t r, int64_t c, float s_r) {
  const float v = to_float(x[c]);
  if (j.mode != XentMode::kHook) return j.k.softcap > 0.f ? math::softcapped(v, j.k) : v;
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
    // The chunk's values, formed once (a softcap's tanh or the hook's log is not computed twice).
    float zbuf[kChunkCols];
    float bm = math::neg_inf();
    int64_t bi = c0;
    for (int64_t c = c0; c < c1; ++c) {
      const float z = row_z(j, tg, x, r, c, s_r);
      zbuf[c - c0] = z;
      if (z > bm) {  // NaN never becomes the max; it reaches the sums instead. The first maximum wins.
        bm = z;
        bi = c;
      }
    }
    RowStats part = math::empty_stats();
    const float ref = math::rescale_to(part, bm, j.k);
    part.argmax = bi + j.p.col_offset;
    for (int64_t c = c0; c < c1; ++c) {
      const float z = zbuf[c - c0];
      math::accumulate(part, z, ref, j.k);
      if (j.mode == XentMode::kHook) continue;
      if constexpr (is_hard<Tg>()) {
        const float bo = tg.b_off(j, c);
        part.t += math::q_times_z(bo, z);
        part.a += bo;
      } else {
        const float b = tg.b(j, c);
        part.t += math::q_times_z(b, z);
        part.a += b;
      }
    }
    total = math::merge(total, part, j.k.alpha_log2e);
  }
  if constexpr (is_hard<Tg>()) {
    if (j.mode != XentMode::kHook && tg.in_shard) {
      const float on = j.k.smooth_on * tg.wy;
      total.t += math::q_times_z(on, row_z(j, tg, x, r, tg.yl, s_r));
      total.a += on;
      total.w = tg.wy;
    }
  }
  if (tg.ignored) total.a = total.w = 0.f;  // an ignored row has no target
  return total;
}

// Sum of the weights of these columns (class targets with weights and smoothing: part of A).
template <class T, class Tg>
double weight_sum(const XentJob<T, Tg>& j) {
  if (!j.p.weight) return static_cast<double>(j.p.cols);
  double s = 0.0;
  for (int64_t c = 0; c < j.p.cols; ++c) s += j.p.weight[c];
  return s;
}

// The target mass A of a row when only a saved lse_alpha is at hand (docs/design.md §2.5).
template <class T, class Tg>
float saved_mode_mass(const XentJob<T, Tg>& j, const RowTarget<Tg>& tg, double wsum) {
  if constexpr (is_hard<Tg>()) {
    if (!j.p.weight) return 1.f;
    return j.k.smooth_on * tg.wy + static_cast<float>(j.k.smooth_off * wsum);
  } else {
    double A = 0.0;  // one long sequential sum: in double (the statistics pass sums by chunk)
    for (int64_t c = 0; c < j.p.cols; ++c) A += tg.b(j, c);
    return static_cast<float>(A);
  }
}

// The kMean denominator D (docs/design.md §2.5): the non-ignored rows (class targets), the sum of
// their targets' weights (class targets with weights; from the merged statistics in the split
// form, where each shard holds only its own weights), or every row (dense targets).
template <class T, class Tg>
double mean_denominator(const XentJob<T, Tg>& j) {
  if constexpr (!is_hard<Tg>()) {
    return static_cast<double>(j.p.rows);
  } else {
    double n = 0.0;
    for (int64_t r = 0; r < j.p.rows; ++r) {
      const int64_t y = static_cast<int64_t>(j.p.targets.index[r]);
      if (y == j.p.targets.ignore_index) continue;
      if (!j.p.weight) n += 1.0;
      else if (j.mode == XentMode::kApplyMerged) n += static_cast<double>(j.stats_in[r].w);
      else n += static_cast<double>(j.p.weight[y - j.p.col_offset]);  // whole rows: checked by the API
    }
    return n;
  }
}

}  // namespace detail_host

// Runs one validated job on host memory.
template <class T, class Tg>
Status xent_run(const powergrad::detail::XentJob<T, Tg>& j) {
  using namespace detail_host;
  // Class indices and weights were checked by the API layer (xent.hpp: check_host_inputs) before this runs.
  const int64_t R = j.p.rows, C = j.p.cols;
  const bool reduced = j.p.reduction != Reduction::kNone;
  const bool mean = j.p.reduction == Reduction::kMean;
  const double denom = (mean && j.mode != XentMode::kHook && j.mode != XentMode::kStats) ? mean_denominator(j) : 1.0;
  const double wsum = j.mode == XentMode::kApplySaved ? weight_sum(j) : 0.0;
  const bool capped = j.k.softcap > 0.f;
  const float lambda = j.k.z_loss_scale;
  double loss_sum = 0.0, z_sum = 0.0;

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
    float ref = 0.f, c2 = 0.f, A = 1.f, lse = 0.f;
    if (j.mode == XentMode::kApplySaved) {
      c2 = j.lse_alpha_in[r] * math::kLog2e;
      if (!tg.ignored) A = saved_mode_mass(j, tg, wsum);
    } else {
      st = (j.mode == XentMode::kApplyMerged) ? j.stats_in[r] : row_stats(j, tg, x, r, 1.f);
      if (j.mode == XentMode::kStats) {
        j.stats_out[r] = st;
        continue;
      }
      // Class targets without weights: A = 1 exactly (the statistics' a is 1 up to rounding).
      if (!is_hard<Tg>() || j.p.weight) A = st.a;
      ref = math::safe_ref(st.m);
      c2 = math::fast_log2(st.sa);
      lse = math::lse_of(st);
      if (j.out.lse) j.out.lse[r] = lse;
      if (j.out.lse_alpha) j.out.lse_alpha[r] = math::lse_alpha_of(st, j.k.alpha);
      const float zrow = tg.ignored || lambda == 0.f ? 0.f : lambda * lse * lse;
      const float row_loss = tg.ignored ? 0.f : math::row_loss_mass(lse, A, st) + zrow;
      if (!reduced && j.out.loss) j.out.loss[r] = row_loss;
      if (!reduced && j.out.z_loss) j.out.z_loss[r] = zrow;
      if (j.out.argmax) j.out.argmax[r] = st.argmax;
      if constexpr (is_hard<Tg>()) {
        if (j.out.correct) j.out.correct[r] = !tg.ignored && st.argmax == tg.y ? 1 : 0;
      }
      loss_sum += static_cast<double>(row_loss);
      z_sum += static_cast<double>(zrow);
    }

    if (!j.out.dlogits) continue;
    T* o = j.out.dlogits + r * j.out.ld_dlogits;
    if (tg.ignored) {
      for (int64_t c = 0; c < C; ++c) o[c] = from_float<T>(0.f);
      continue;
    }
    float g = j.up.scale * (j.up.values ? j.up.values[reduced ? 0 : r] : 1.f);
    if (mean) g = denom > 0.0 ? g / static_cast<float>(denom) : 0.f;
    const float zl2 = 2.f * lambda * lse;  // z-loss: the API runs kFused whenever lambda > 0
    for (int64_t c = 0; c < C; ++c) {
      const float z = to_float(x[c]);
      float zc = z, slope = 1.f;
      if (capped) math::softcap_with_slope(z, j.k, zc, slope);
      const float pp = math::pgt_prob(zc, j.k.alpha_log2e, ref, c2);
      float p = 0.f;
      if (lambda != 0.f) p = zc == math::neg_inf() ? 0.f : math::fast_exp2((zc - lse) * math::kLog2e);
      float d = math::option_grad(A, pp, tg.b(j, c), zl2, p);
      if (capped) d *= slope;
      o[c] = from_float<T>(g * d);
    }
  }

  if (reduced && (j.mode == XentMode::kFused || j.mode == XentMode::kApplyMerged)) {
    const auto finish = [&](double v) { return static_cast<float>(mean ? (denom > 0.0 ? v / denom : 0.0) : v); };
    if (j.out.loss) j.out.loss[0] = finish(loss_sum);
    if (j.out.z_loss) j.out.z_loss[0] = finish(z_sum);
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
