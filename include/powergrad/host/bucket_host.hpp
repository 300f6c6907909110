// powergrad host backend: the gradient-bucket transforms as plain loops over the plan's items, with
// the kernels' partition (per-item partial sums, per-group sums in item order, all in double), so the
// CPU tests exercise the same work split and merge order as the device.
#pragma once

#include <cmath>
#include <vector>

#include "powergrad/detail/bucket_job.hpp"
#include "powergrad/detail/bucket_plan.hpp"
#include "powergrad/math/bucket_math.hpp"
#include "powergrad/math/dtype.hpp"
#include "powergrad/status.hpp"

POWERGRAD_NS_BEGIN
namespace host {

template <class T, class P>
Status bucket_run(const detail::BucketPlanHeader& h, const detail::BucketJob& j) {
  const detail::BucketPlanTensor* ts = detail::plan_tensors(&h);
  const int mask = detail::bucket_stat_mask(j);
  const int64_t groups = detail::bucket_groups(h, j.scope);
  std::vector<math::BucketCoef> coef(static_cast<size_t>(groups));  // K = 1
  bool non_finite = false;
  if (mask != 0) {
    // Pass 1: one partial per item (what one warp sums on the device).
    std::vector<math::BucketSums> part(static_cast<size_t>(h.n_items));
    for (int64_t i = 0; i < h.n_items; ++i) {
      const detail::BucketItem it = detail::locate_item(h, i, j.scope);
      const T* g = reinterpret_cast<const T*>(ts[it.tensor].grad);
      math::BucketSums s;
      for (int64_t k = it.begin; k < it.end; ++k) {
        const float x = to_float(g[k]);
        const double xd = x;
        if (mask & math::kStatG2) s.g2 += xd * xd;
        if (mask & math::kStatPow) s.pw += detail::bucket_pow_summand(j, x);
        if (mask & math::kStatAbs) s.ab += std::fabs(xd);
      }
      if (mask & math::kStatW2) {
        const P* w = reinterpret_cast<const P*>(ts[it.tensor].param);
        for (int64_t k = it.begin; k < it.end; ++k) {
          const double x = to_float(w[k]);
          s.w2 += x * x;
        }
      }
      part[static_cast<size_t>(i)] = s;
    }
    // Pass 2: per group, in item order.
    for (int64_t g = 0; g < groups; ++g) {
      int64_t first = 0, last = 0;
      detail::group_items(h, g, j.scope, first, last);
      math::BucketSums gs;
      for (int64_t i = first; i < last; ++i) {
        const math::BucketSums& p = part[static_cast<size_t>(i)];
        gs.g2 += p.g2;
        gs.w2 += p.w2;
        gs.pw += p.pw;
        gs.ab += p.ab;
      }
      const math::GroupCoef c = detail::bucket_group_coef(j, gs);
      coef[static_cast<size_t>(g)] = math::bucket_coef_of(c.k);
      non_finite = non_finite || c.non_finite;
      if (j.norms) j.norms[g] = c.norm;
    }
  }
  // Pass 3: out = K_group * sign(g)|g|^e.
  const float e = detail::bucket_apply_exponent(j);
  for (int64_t i = 0; i < h.n_items; ++i) {
    const detail::BucketItem it = detail::locate_item(h, i, j.scope);
    T* g = reinterpret_cast<T*>(ts[it.tensor].grad);
    const math::BucketCoef k = coef[static_cast<size_t>(it.group)];
    for (int64_t x = it.begin; x < it.end; ++x) g[x] = from_float<T>(math::scaled_signed_pow(to_float(g[x]), e, k));
  }
  if (j.flags) *j.flags = non_finite ? kBucketFlagNonFinite : 0;
  return Status::kSuccess;
}

}  // namespace host
POWERGRAD_NS_END
