// powergrad math layer: per-element maps and per-scope coefficients of the gradient-bucket
// transforms (docs/design.md §2.4). Shared by the host backend and the device kernels.
//
// Every op is out = K_u * f(g) per element, with one coefficient K_u per statistics group u
// (a tensor, the bucket, or an AGC unit) computed from four sums over the group:
//   S0 = sum g^2, S1 = sum w^2 (AGC: the parameter), S2 = sum |g|^e (e = beta for L1, 2 beta for L2
//   preservation), S3 = sum |g|.
// f(g) = g (clip_norm, AGC) or sign(g)|g|^beta (power; GradPower, arXiv 2505.24275; with L1
// preservation it is the PGT map p^beta / sum p^beta on p = |g| / sum|g|, arXiv 2111.12495).
#pragma once

#include <cmath>
#include <cstdint>

#include "powergrad/config.hpp"
#include "powergrad/types.hpp"  // NormPreserve

POWERGRAD_NS_BEGIN
namespace math {

// Which sums a bucket op needs from the statistics pass (bit mask).
enum BucketStat : int { kStatG2 = 1, kStatW2 = 2, kStatPow = 4, kStatAbs = 8 };

// A group's coefficient K, kept as K = m * 2^e with the mantissa m in double (frexp form) so that
// neither a huge nor a tiny K (norm preservation of very large or very small magnitudes with a large
// beta: K = S3 / S2 spans hundreds of binary orders) is rounded or flushed in fp32 before it meets
// |g|^beta. `f` is K rounded to float, the plain scale of clip_norm and AGC (e = 1). Non-finite K:
// m is K itself and e = 0.
struct BucketCoef {
  double m = 0.5;
  int32_t e = 1;
  float f = 1.f;
};

static_assert(sizeof(BucketCoef) == 16, "BucketCoef is one 16-byte workspace record per group");

PG_HD BucketCoef bucket_coef_of(double k) {
  BucketCoef c;
  c.f = static_cast<float>(k);
  if (k - k == 0.0) {
    int e = 0;
    c.m = frexp(k, &e);
    c.e = e;
  } else {
    c.m = k;
    c.e = 0;
  }
  return c;
}

// K * sign(x)|x|^e for e > 0 and K >= 0 (or NaN). e == 1 is a plain product with K in float (bit-exact
// identity for K = 1). Otherwise |x|^e = 2^y, y = e log2|x| split as 2^(y - floor y) * 2^floor(y), and
// K's mantissa and both binary exponents are combined in double with a single final rounding: a group of
// equal magnitudes comes back as itself for any beta whose powers fit in double (the statistics pass
// forms |x|^e with the same fp32 y, so the two cancel). 0 -> 0 (sign kept), inf -> inf, NaN -> NaN;
// K = 0 with an inf x gives NaN, like 0 * inf; a NaN or inf K gives NaN or inf.
PG_HD float scaled_signed_pow(float x, float e, const BucketCoef& k) {
  if (e == 1.f) return k.f * x;
#if defined(__CUDA_ARCH__)
  const float a = fabsf(x);
  const float y = e * log2f(a);
#else
  const float a = std::fabs(x);
  const float y = e * std::log2(a);
#endif
  const bool k_finite = k.m - k.m == 0.0;
  if (!(y - y == 0.f) || !k_finite) {
    // x = 0, inf or NaN, |x|^e beyond fp32's exponent range, or an infinite or NaN K: IEEE products.
    if (y != y) return y;
    if (k.m != k.m) return static_cast<float>(k.m);
#if defined(__CUDA_ARCH__)
    const float pw = y == HUGE_VALF ? HUGE_VALF : (y == -HUGE_VALF ? 0.f : exp2f(y));
#else
    const float pw = y == HUGE_VALF ? HUGE_VALF : (y == -HUGE_VALF ? 0.f : std::exp2(y));
#endif
    // K reduced to its class: 0, positive finite (its size cannot matter next to 0 or inf), or inf.
    const float kc = !k_finite ? HUGE_VALF : (k.m == 0.0 ? 0.f : 1.f);
#if defined(__CUDA_ARCH__)
    return copysignf(kc * pw, x);
#else
    return std::copysign(kc * pw, x);
#endif
  }
#if defined(__CUDA_ARCH__)
  const float n = floorf(y);
  const double frac = static_cast<double>(exp2f(y - n));
#else
  const float n = std::floor(y);
  const double frac = static_cast<double>(std::exp2(y - n));
#endif
  const int ex = static_cast<int>(n < -4000.f ? -4000.f : (n > 4000.f ? 4000.f : n)) + k.e;
  const float r = static_cast<float>(ldexp(frac * k.m, ex));
#if defined(__CUDA_ARCH__)
  return copysignf(r, x);
#else
  return std::copysign(r, x);
#endif
}

// |x|^e in double, the summand of S2 (e = beta or 2 beta): 2^(e log2|x|) split into 2^frac (float)
// times 2^int (exact in double), so a tiny |x| does not underflow to 0 as |x|^e would in fp32.
PG_HD double abs_pow_d(float x, float e) {
#if defined(__CUDA_ARCH__)
  const float a = fabsf(x);
#else
  const float a = std::fabs(x);
#endif
  if (e == 1.f || a == 0.f || !(a < HUGE_VALF)) return static_cast<double>(a);  // also NaN, inf
#if defined(__CUDA_ARCH__)
  const float y = e * log2f(a);
  const float n = floorf(y);
  const float f = exp2f(y - n);
#else
  const float y = e * std::log2(a);
  const float n = std::floor(y);
  const float f = std::exp2(y - n);
#endif
  if (n > 1100.f) return HUGE_VAL;
  if (n < -1100.f) return 0.0;
  return ldexp(static_cast<double>(f), static_cast<int>(n));
}

// The four sums S0..S3, in double: squares of fp32 values below 1e-23 and their powers do not
// underflow, and sums of thousands of terms stay exact to ~1e-16. One type for both levels: the
// per-item partials of the statistics pass and the group totals of their fixed-order reduction.
struct BucketSums {
  double g2 = 0, w2 = 0, pw = 0, ab = 0;
};

PG_HD bool finite_d(double v) { return v - v == 0.0; }

// The coefficient and the scope norm of one group. `norm` is what clip_norm reports (sqrt S0).
struct GroupCoef {
  double k = 1.0;
  float norm = 0.f;
  bool non_finite = false;
};

// clip_norm, as torch.nn.utils.clip_grad_norm_: coef = min(1, max_norm / (norm + 1e-6)); a NaN norm
// gives a NaN coefficient (so NaN gradients stay NaN), an inf norm gives 0. Either is non-finite.
PG_HD GroupCoef clip_coef(const BucketSums& s, float max_norm) {
  GroupCoef c;
  const float norm = static_cast<float>(sqrt(s.g2));
  float k = max_norm / (norm + 1e-6f);
  if (k > 1.f) k = 1.f;  // a NaN k is kept (the comparison is false)
  c.k = k;
  c.norm = norm;
  // Finite fp32 gradients whose L2 norm exceeds FLT_MAX have a finite double sum but an infinite
  // fp32 norm: the gradients are zeroed (as torch does), so the flag must say so too.
  c.non_finite = !finite_d(s.g2) || !(norm < HUGE_VALF);
  return c;
}

// Power with norm preservation over the group: K = S3 / S2 (L1) or sqrt(S0 / S2) (L2), times an
// optional pre-scale `a` applied to g before the map (AGC's clip coefficient):
// ||a g||_1 / || |a g|^beta ||_1 = a S3 / (a^beta S2), so K * a^beta = a S3 / S2 (L1) and
// a sqrt(S0 / S2) (L2); without preservation K = a^beta. An all-zero group (S2 = 0) gets K = a^beta.
PG_HD double power_coef(const BucketSums& s, NormPreserve preserve, float beta, float a) {
  const double ab = pow(static_cast<double>(a), static_cast<double>(beta));
  if (preserve == NormPreserve::kNone || s.pw == 0.0) return ab;
  if (preserve == NormPreserve::kL1) return static_cast<double>(a) * s.ab / s.pw;
  return static_cast<double>(a) * sqrt(s.g2 / s.pw);
}

// AGC (NFNets, arXiv 2102.06171), exactly timm's adaptive_clip_grad: limit = clip * max(||W_u||, eps);
// G_u is kept when ||G_u|| < limit, else scaled by limit / max(||G_u||, 1e-6). The clamps keep NaN
// (as torch.clamp does), so a NaN norm of either tensor gives a NaN coefficient and NaN outputs.
PG_HD float agc_coef(const BucketSums& s, float clip, float eps, bool& non_finite) {
  const float wn = static_cast<float>(sqrt(s.w2));
  const float limit = (wn < eps ? eps : wn) * clip;
  const float gn = static_cast<float>(sqrt(s.g2));
  non_finite = !finite_d(s.g2) || !finite_d(s.w2) || !(gn < HUGE_VALF) || !(wn < HUGE_VALF);
  if (gn < limit) return 1.f;
  return limit / (gn < 1e-6f ? 1e-6f : gn);
}

}  // namespace math
POWERGRAD_NS_END
