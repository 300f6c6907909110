// powergrad math layer: per-element maps and per-scope coefficients of the gradient-bucket
// transforms (DESIGN.md §2.4). Shared by the host backend and the device kernels.
//
// Every op is out = K_u * f(g) per element, with one coefficient K_u per statistics group u
// (a tensor, the bucket, or an AGC unit) computed from four sums over the group:
//   S0 = sum g^2, S1 = sum w^2 (AGC: the parameter), S2 = sum |g|^e (e = beta for L1, 2 beta for L2
//   preservation), S3 = sum |g|.
// f(g) = g (clip_norm, AGC) or sign(g)|g|^beta (power; GradPower, arXiv 2505.24275; with L1
// preservation it is the PGT map p^beta / sum p^beta on p = |g| / sum|g|, arXiv 2111.12495).
#pragma once

#include <cmath>

#include "powergrad/config.hpp"

POWERGRAD_NS_BEGIN
namespace math {

// Which sums a bucket op needs from the statistics pass (bit mask).
enum BucketStat : int { kStatG2 = 1, kStatW2 = 2, kStatPow = 4, kStatAbs = 8 };

// sign(x) |x|^beta for beta > 0; beta == 1 returns x bit for bit. 0 -> 0 (sign kept), inf -> inf,
// NaN -> NaN.
PG_HD float signed_pow(float x, float beta) {
  if (beta == 1.f) return x;
#if defined(__CUDA_ARCH__)
  const float a = exp2f(beta * log2f(fabsf(x)));
  return copysignf(a, x);
#else
  return std::copysign(std::pow(std::fabs(x), beta), x);
#endif
}

// |x|^e, the summand of S2 (e = beta or 2 beta).
PG_HD float abs_pow(float x, float e) {
#if defined(__CUDA_ARCH__)
  return e == 1.f ? fabsf(x) : exp2f(e * log2f(fabsf(x)));
#else
  return e == 1.f ? std::fabs(x) : std::pow(std::fabs(x), e);
#endif
}

// Four running sums of one statistics item (fp32; items are at most a few thousand elements).
struct BucketSums {
  float g2 = 0.f, w2 = 0.f, pw = 0.f, ab = 0.f;
};

// Group sums in double (the fixed-order reduction over items).
struct GroupSums {
  double g2 = 0, w2 = 0, pw = 0, ab = 0;
};

PG_HD bool finite_d(double v) { return v - v == 0.0; }

// The coefficient and the scope norm of one group. `norm` is what clip_norm reports (sqrt S0).
struct GroupCoef {
  float k = 1.f;
  float norm = 0.f;
  bool non_finite = false;
};

// clip_norm, as torch.nn.utils.clip_grad_norm_: coef = min(1, max_norm / (norm + 1e-6)); a NaN norm
// gives a NaN coefficient (so NaN gradients stay NaN), an inf norm gives 0.
PG_HD GroupCoef clip_coef(const GroupSums& s, float max_norm) {
  GroupCoef c;
  const float norm = static_cast<float>(sqrt(s.g2));
  float k = max_norm / (norm + 1e-6f);
  if (k > 1.f) k = 1.f;  // a NaN k is kept (the comparison is false)
  c.k = k;
  c.norm = norm;
  c.non_finite = !finite_d(s.g2);
  return c;
}

// Power with norm preservation over the group: K = S3 / S2 (L1) or sqrt(S0 / S2) (L2), times an
// optional pre-scale `a` applied to g before the map (AGC's clip coefficient):
// ||a g||_1 / || |a g|^beta ||_1 = a S3 / (a^beta S2), so K * a^beta = a S3 / S2 (L1) and
// a sqrt(S0 / S2) (L2); without preservation K = a^beta. An all-zero group (S2 = 0) gets K = a^beta.
PG_HD float power_coef(const GroupSums& s, int preserve, float beta, float a) {
  const double ab = pow(static_cast<double>(a), static_cast<double>(beta));
  if (preserve == 0 || s.pw == 0.0) return static_cast<float>(ab);
  if (preserve == 1) return static_cast<float>(static_cast<double>(a) * s.ab / s.pw);
  return static_cast<float>(static_cast<double>(a) * sqrt(s.g2 / s.pw));
}

// AGC (NFNets, arXiv 2102.06171), exactly timm's adaptive_clip_grad: limit = clip * max(||W_u||, eps);
// G_u is kept when ||G_u|| < limit, else scaled by limit / max(||G_u||, 1e-6). The clamps keep NaN
// (as torch.clamp does), so a NaN norm of either tensor gives a NaN coefficient and NaN outputs.
PG_HD float agc_coef(const GroupSums& s, float clip, float eps, bool& non_finite) {
  const float wn = static_cast<float>(sqrt(s.w2));
  const float limit = (wn < eps ? eps : wn) * clip;
  const float gn = static_cast<float>(sqrt(s.g2));
  non_finite = !finite_d(s.g2) || !finite_d(s.w2);
  if (gn < limit) return 1.f;
  return limit / (gn < 1e-6f ? 1e-6f : gn);
}

}  // namespace math
POWERGRAD_NS_END
