// powergrad host backend: the gradient-bucket transforms over the plan's items, with the kernels'
// partition (per-item partial sums, per-group sums in item order, all in double), vectorised and
// threaded (docs/design.md §6.1, §6.2).
//
// Threads take whole items (parallel_for over blocks of items); an item's partial is its own slot,
// and every group sums its items' partials in item order afterwards, so neither the thread count nor
// the ISA path changes a bit. Inside an item the sums run over kLanes interleaved accumulators
// (element k of the item goes to lane k % kLanes), combined by a fixed tree: the vectoriser maps
// the lanes onto 2, 4 or 8 doubles per register, always with the same per-lane additions.
#pragma once

#include <cmath>
#include <vector>

#include "powergrad/detail/bucket_job.hpp"
#include "powergrad/detail/bucket_plan.hpp"
#include "powergrad/host/parallel.hpp"
#include "powergrad/math/bucket_math.hpp"
#include "powergrad/math/dtype.hpp"
#include "powergrad/math/vec_host.hpp"
#include "powergrad/status.hpp"

POWERGRAD_NS_BEGIN
namespace host {
namespace bucket_detail {
PG_HOST_LOOPS_BEGIN

constexpr int kLanes = 8;
constexpr int64_t kItemsPerTask = 16;  // 64 k elements per task at most (items hold <= 4096)

using vec::load_f;
using vec::store_f;

// |x|^e in double (math::abs_pow_d's contract) with the vectorisable exp2/log2: 2^(e log2|x|)
// split into 2^frac (fp32, in [1, 2)) times 2^floor (exact, as two factors so that a subnormal
// double is rounded once); 0, inf and NaN come back as |x|.
PG_VEC_INLINE double abs_pow_vec(float x, float e) {
  PG_FP_STRICT
  const float a = vec::abs_f(x);
  const bool plain = e == 1.f || a == 0.f || !(a < HUGE_VALF);
  float y = e * vec::log2_poly(plain ? 1.f : a);
  y = y < -2000.f ? -2000.f : (y > 2000.f ? 2000.f : y);
  const float n = vec::floor_small(y);
  const float f = vec::exp2_poly(y - n);
  const int32_t ni = static_cast<int32_t>(n);
  const int32_t n1 = ni >> 1, n2 = ni - n1;  // each in [-1000, 1000]
  const double r = (static_cast<double>(f) * vec::pow2_d(n1)) * vec::pow2_d(n2);
  return plain ? static_cast<double>(a) : r;
}

// K sign(x)|x|^e for e != 1 and a finite K (math::scaled_signed_pow's contract, the same
// decomposition as abs_pow_vec so that equal magnitudes cancel exactly against S2).
PG_VEC_INLINE float scaled_pow_vec(float x, float e, double km, int32_t ke, float kc) {
  PG_FP_STRICT
  const float a = vec::abs_f(x);
  const float y = e * vec::log2_poly(a);
  const bool fin = y - y == 0.f;
  float ys = fin ? y : 0.f;
  ys = ys < -4000.f ? -4000.f : (ys > 4000.f ? 4000.f : ys);
  const float n = vec::floor_small(ys);
  const double frac = static_cast<double>(vec::exp2_poly(ys - n));
  int32_t ex = static_cast<int32_t>(n) + ke;
  ex = ex < -300 ? -300 : (ex > 300 ? 300 : ex);  // beyond +-300 the fp32 result is 0 or inf anyway
  const float r = static_cast<float>((frac * km) * vec::pow2_d(ex));
  // y = -inf (x = 0): K * 0; y = +inf: K * inf; y = NaN: NaN.
  const float pw = y > 0.f ? HUGE_VALF : 0.f;
  const float special = y != y ? y : vec::copysign_f(kc * pw, x);
  return fin ? vec::copysign_f(r, x) : special;
}

// The partial sums of one item: kMask selects the sums (math::BucketStat bits).
template <int kMask, class T, class P>
PG_VEC_INLINE math::BucketSums item_sums(const T* g, const P* w, int64_t begin, int64_t end, float beta, bool l2) {
  PG_FP_STRICT
  double s0[kLanes] = {}, s2[kLanes] = {}, s3[kLanes] = {}, s1[kLanes] = {};
  const int64_t n = end - begin;
  const T* gp = g + begin;
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const float x = load_f(gp, k + l);
      const double xd = x;
      if (kMask & math::kStatG2) s0[l] += xd * xd;
      if (kMask & math::kStatAbs) s3[l] += vec::abs_d(xd);
      if (kMask & math::kStatPow) {
        const double p = abs_pow_vec(x, beta);
        s2[l] += l2 ? p * p : p;
      }
    }
  }
  for (int l = 0; k + l < n; ++l) {
    const float x = load_f(gp, k + l);
    const double xd = x;
    if (kMask & math::kStatG2) s0[l] += xd * xd;
    if (kMask & math::kStatAbs) s3[l] += vec::abs_d(xd);
    if (kMask & math::kStatPow) {
      const double p = abs_pow_vec(x, beta);
      s2[l] += l2 ? p * p : p;
    }
  }
  if (kMask & math::kStatW2) {
    const P* wp = w + begin;
    k = 0;
    for (; k + kLanes <= n; k += kLanes)
      for (int l = 0; l < kLanes; ++l) {
        const double x = load_f(wp, k + l);
        s1[l] += x * x;
      }
    for (int l = 0; k + l < n; ++l) {
      const double x = load_f(wp, k + l);
      s1[l] += x * x;
    }
  }
  auto tree = [](const double* a) { return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])); };
  static_assert(kLanes == 8, "tree() combines eight lanes");
  math::BucketSums s;
  s.g2 = tree(s0);
  s.w2 = tree(s1);
  s.pw = tree(s2);
  s.ab = tree(s3);
  return s;
}

template <class T, class P>
PG_VEC_INLINE math::BucketSums item_sums_masked(int mask, const T* g, const P* w, int64_t b, int64_t e, float beta,
                                                bool l2) {
  using namespace math;
  switch (mask) {
    case kStatG2: return item_sums<kStatG2>(g, w, b, e, beta, l2);
    case kStatG2 | kStatW2: return item_sums<kStatG2 | kStatW2>(g, w, b, e, beta, l2);
    case kStatG2 | kStatW2 | kStatPow: return item_sums<kStatG2 | kStatW2 | kStatPow>(g, w, b, e, beta, l2);
    case kStatG2 | kStatW2 | kStatPow | kStatAbs:
      return item_sums<kStatG2 | kStatW2 | kStatPow | kStatAbs>(g, w, b, e, beta, l2);
    case kStatPow | kStatAbs: return item_sums<kStatPow | kStatAbs>(g, w, b, e, beta, l2);
    case kStatPow | kStatG2: return item_sums<kStatPow | kStatG2>(g, w, b, e, beta, l2);
    default: break;
  }
  // Not produced by bucket_stat_mask today; kept complete rather than silently wrong.
  BucketSums s = (mask & kStatW2) ? item_sums<kStatG2 | kStatW2 | kStatPow | kStatAbs>(g, w, b, e, beta, l2)
                                  : item_sums<kStatG2 | kStatPow | kStatAbs>(g, w, b, e, beta, l2);
  if (!(mask & kStatG2)) s.g2 = 0;
  if (!(mask & kStatPow)) s.pw = 0;
  if (!(mask & kStatAbs)) s.ab = 0;
  return s;
}

struct Pass {
  const detail::BucketPlanHeader* h;
  const detail::BucketJob* j;
  int mask;
  math::BucketSums* part;         // statistics: one per item
  const math::BucketCoef* coef;   // apply: one per group
};

// Statistics of items [first, last).
template <class T, class P>
PG_VEC_INLINE void stats_body(const Pass& p, int64_t first, int64_t last) {
  const detail::BucketPlanTensor* ts = detail::plan_tensors(p.h);
  const bool l2 = p.j->preserve == NormPreserve::kL2;
  for (int64_t i = first; i < last; ++i) {
    const detail::BucketItem it = detail::locate_item(*p.h, i, p.j->scope);
    const T* g = reinterpret_cast<const T*>(ts[it.tensor].grad);
    const P* w = reinterpret_cast<const P*>(ts[it.tensor].param);
    p.part[i] = item_sums_masked<T, P>(p.mask, g, w, it.begin, it.end, p.j->beta, l2);
  }
}

// out = K_group * sign(g)|g|^e over items [first, last).
template <class T>
PG_VEC_INLINE void apply_body(const Pass& p, int64_t first, int64_t last) {
  PG_FP_STRICT
  const detail::BucketPlanTensor* ts = detail::plan_tensors(p.h);
  const float e = detail::bucket_apply_exponent(*p.j);
  for (int64_t i = first; i < last; ++i) {
    const detail::BucketItem it = detail::locate_item(*p.h, i, p.j->scope);
    T* g = reinterpret_cast<T*>(ts[it.tensor].grad);
    const math::BucketCoef k = p.coef[it.group];
    if (e == 1.f) {
      const float kf = k.f;
      for (int64_t x = it.begin; x < it.end; ++x) store_f(g, x, kf * load_f(g, x));
    } else if (k.m - k.m == 0.0) {
      const double km = k.m;
      const int32_t ke = k.e;
      const float kc = km == 0.0 ? 0.f : 1.f;
      for (int64_t x = it.begin; x < it.end; ++x) store_f(g, x, scaled_pow_vec(load_f(g, x), e, km, ke, kc));
    } else {
      // A NaN or infinite K (the non-finite flag is set): IEEE products, element by element.
      for (int64_t x = it.begin; x < it.end; ++x) store_f(g, x, math::scaled_signed_pow(load_f(g, x), e, k));
    }
  }
}

// The ISA paths: the same bodies, compiled for each target (math/vec_host.hpp).
template <class T, class P>
void stats_baseline(const Pass& p, int64_t f, int64_t l) { stats_body<T, P>(p, f, l); }
template <class T>
void apply_baseline(const Pass& p, int64_t f, int64_t l) { apply_body<T>(p, f, l); }
#if PG_HOST_ISA_X86
template <class T, class P>
PG_TARGET_AVX2 void stats_avx2(const Pass& p, int64_t f, int64_t l) { stats_body<T, P>(p, f, l); }
template <class T>
PG_TARGET_AVX2 void apply_avx2(const Pass& p, int64_t f, int64_t l) { apply_body<T>(p, f, l); }
#endif
#if PG_HOST_ISA_AVX512
template <class T, class P>
PG_TARGET_AVX512 void stats_avx512(const Pass& p, int64_t f, int64_t l) { stats_body<T, P>(p, f, l); }
template <class T>
PG_TARGET_AVX512 void apply_avx512(const Pass& p, int64_t f, int64_t l) { apply_body<T>(p, f, l); }
#endif

PG_HOST_LOOPS_END

using RangeFn = void (*)(const Pass&, int64_t, int64_t);

template <class T, class P>
RangeFn stats_fn(HostIsa isa) {
#if PG_HOST_ISA_AVX512
  if (isa == HostIsa::kAvx512) return &stats_avx512<T, P>;
#endif
#if PG_HOST_ISA_X86
  if (isa == HostIsa::kAvx2) return &stats_avx2<T, P>;
#endif
  (void)isa;
  return &stats_baseline<T, P>;
}
template <class T>
RangeFn apply_fn(HostIsa isa) {
#if PG_HOST_ISA_AVX512
  if (isa == HostIsa::kAvx512) return &apply_avx512<T>;
#endif
#if PG_HOST_ISA_X86
  if (isa == HostIsa::kAvx2) return &apply_avx2<T>;
#endif
  (void)isa;
  return &apply_baseline<T>;
}

// Runs fn over every item, in blocks of kItemsPerTask items, on `threads` threads.
inline void for_items(int threads, int64_t n_items, RangeFn fn, const Pass& p) {
  const int64_t tasks = (n_items + kItemsPerTask - 1) / kItemsPerTask;
  parallel_for(threads, tasks, [&](int64_t t) {
    const int64_t first = t * kItemsPerTask;
    fn(p, first, first + kItemsPerTask < n_items ? first + kItemsPerTask : n_items);
  });
}

}  // namespace bucket_detail

template <class T, class P>
Status bucket_run(const detail::BucketPlanHeader& h, const detail::BucketJob& j) {
  namespace bd = bucket_detail;
  const int mask = detail::bucket_stat_mask(j);
  const int64_t groups = detail::bucket_groups(h, j.scope);
  const HostIsa isa = vec::active_host_isa();
  const int64_t work = h.total_numel * (mask != 0 ? 2 : 1);
  const int threads = threads_for(work, (h.n_items + bd::kItemsPerTask - 1) / bd::kItemsPerTask);
  std::vector<math::BucketCoef> coef(static_cast<size_t>(groups));  // K = 1
  bd::Pass pass{&h, &j, mask, nullptr, coef.data()};
  bool non_finite = false;
  if (mask != 0) {
    // Pass 1: one partial per item (what one warp sums on the device).
    std::vector<math::BucketSums> part(static_cast<size_t>(h.n_items));
    pass.part = part.data();
    bd::for_items(threads, h.n_items, bd::stats_fn<T, P>(isa), pass);
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
  bd::for_items(threads, h.n_items, bd::apply_fn<T>(isa), pass);
  if (j.flags) *j.flags = non_finite ? kBucketFlagNonFinite : 0;
  return Status::kSuccess;
}

}  // namespace host
POWERGRAD_NS_END
