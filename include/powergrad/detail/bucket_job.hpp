// powergrad internal: one normalised bucket-transform launch, executed by the host loops
// (host/bucket_host.hpp) and the CUDA kernels (kernels/bucket_kernels.cuh). Built and validated by
// the C++ API in bucket.hpp.
#pragma once

#include <cstdint>

#include "powergrad/bucket_types.hpp"
#include "powergrad/config.hpp"
#include "powergrad/detail/bucket_plan.hpp"
#include "powergrad/math/bucket_math.hpp"

POWERGRAD_NS_BEGIN
namespace detail {

enum class BucketOp : int { kPower = 0, kClipNorm = 1, kAgc = 2 };

struct BucketJob {
  BucketOp op = BucketOp::kPower;
  BucketScope scope = BucketScope::kTensor;  // kRows plans: the unit
  NormPreserve preserve = NormPreserve::kNone;
  float beta = 1.f;                          // power exponent (kPower, kAgc's optional power)
  float max_norm = 1.f;                      // kClipNorm
  float clip = 0.01f, eps = 1e-3f;           // kAgc
  float* norms = nullptr;                    // kClipNorm: one norm per group (optional)
  int32_t* flags = nullptr;                  // BucketFlag bits (optional)
  uint64_t checksum = 0;                     // the plan's, checked against the device copy
};

// The sums the statistics pass must produce (math::BucketStat bits); 0 = no statistics pass.
PG_HD int bucket_stat_mask(const BucketJob& j) {
  int m = 0;
  if (j.op == BucketOp::kClipNorm) m |= math::kStatG2;
  if (j.op == BucketOp::kAgc) m |= math::kStatG2 | math::kStatW2;
  if (j.preserve == NormPreserve::kL1) m |= math::kStatPow | math::kStatAbs;
  if (j.preserve == NormPreserve::kL2) m |= math::kStatPow | math::kStatG2;
  return m;
}

// S2's summand: |g|^beta for L1 preservation, (|g|^beta)^2 for L2 — the square of the very value the
// apply pass forms (math::abs_pow_d with the same fp32 exponent), so that K and the element powers
// cancel exactly for equal magnitudes.
PG_HD double bucket_pow_summand(const BucketJob& j, float x) {
  const double p = math::abs_pow_d(x, j.beta);
  return j.preserve == NormPreserve::kL2 ? p * p : p;
}

// Exponent of the element map out = K * sign(g)|g|^e (1 for clip_norm: a plain scale).
PG_HD float bucket_apply_exponent(const BucketJob& j) { return j.op == BucketOp::kClipNorm ? 1.f : j.beta; }

PG_HD math::GroupCoef bucket_group_coef(const BucketJob& j, const math::BucketSums& s) {
  math::GroupCoef c;
  switch (j.op) {
    case BucketOp::kClipNorm: return math::clip_coef(s, j.max_norm);
    case BucketOp::kPower:
      c.k = math::power_coef(s, j.preserve, j.beta, 1.f);
      break;
    case BucketOp::kAgc: {
      bool nf = false;
      const float a = math::agc_coef(s, j.clip, j.eps, nf);
      c.k = math::power_coef(s, j.preserve, j.beta, a);
      c.non_finite = nf;
      break;
    }
  }
  c.norm = static_cast<float>(sqrt(s.g2));
  if (!(c.k - c.k == 0.0)) c.non_finite = true;
  // S2 out of double's normal range (|g|^beta or its square over- or underflowed while |g| did not): the
  // norm cannot be preserved; report it rather than return silently scaled gradients.
  // A subnormal S2 (below 2^-1022) has lost most of its bits: out of range too.
  if (j.preserve != NormPreserve::kNone && (!math::finite_d(s.pw) || (s.pw < 0x1p-1022 && s.g2 + s.ab > 0.0)))
    c.non_finite = true;
  return c;
}

}  // namespace detail
POWERGRAD_NS_END
