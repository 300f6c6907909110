// powergrad math layer: the PGT cross-entropy contract (docs/design.md §2.1-2.3) as scalar functions
// shared by the host backend and the device kernels.
//
// PowerGrad Transform (Das, Mondal, Lall, Joshi, Dutta Roy, "Altering Backward Pass Gradients
// improves Convergence", arXiv 2111.12495): the backward pass of softmax cross-entropy uses
// p' = p^alpha / sum p^alpha = softmax(alpha*z) instead of p; the forward loss is unchanged.
//
// Row statistics are kept in the mergeable form of the online softmax (Milakov & Gimelshein,
// "Online normalizer calculation for softmax", 2018), extended with a second running sum for alpha:
//   m  = max_j z_j
//   s  = sum_j exp(z_j - m)               -> lse   = m + log s
//   sa = sum_j exp(alpha (z_j - m))       -> lse_a = alpha m + log sa   (max(alpha z) = alpha max z)
//   t  = sum_j b_j z_j  (this shard's part of the target dot product; b = q without class weights)
//   a  = sum_j b_j      (this shard's part of the target mass A, docs/design.md §2.5)
//   w  = w_y when the target column is in this shard (the row's weight in a weighted mean)
//   argmax = global column of the first maximum
// Sums are kept in base 2 internally (exp2 with a pre-scaled log2(e)), which is what the special
// function unit computes.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "powergrad/config.hpp"
#include "powergrad/types.hpp"  // RowStats

POWERGRAD_NS_BEGIN
namespace math {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

PG_HD float neg_inf() { return -HUGE_VALF; }

PG_HD float fast_exp2(float x) {
#if defined(__CUDA_ARCH__)
  // One MUFU.EX2 (max relative error ~2^-22); results below 2^-126 flush to 0, far below what
  // any fp32/fp16/bf16 gradient element can resolve next to the row's largest term.
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return std::exp2(x);
#endif
}
PG_HD float fast_log2(float x) {
#if defined(__CUDA_ARCH__)
  return log2f(x);
#else
  return std::log2(x);
#endif
}

// argmax starts past every column, so that merging with any real statistic keeps that one's index.
PG_HD RowStats empty_stats() { return RowStats{neg_inf(), 0.f, 0.f, 0.f, 0.f, 0.f, INT64_MAX}; }

// Per-op constants, computed once on the host.
struct XentScalars {
  float alpha;        // PGT exponent, finite and >= 0
  float alpha_log2e;  // alpha * log2(e)
  float smooth_on;    // 1 - eps: weight of the one-hot (or dense) target
  float smooth_off;   // eps / C_total: uniform part of q
  // Options (docs/design.md §2.5); 0 when off.
  float softcap;       // c
  float inv_softcap;   // 1 / c
  float z_loss_scale;  // lambda
};

inline XentScalars make_scalars(float alpha, float label_smoothing, int64_t total_cols, float softcap = 0.f,
                                float z_loss_scale = 0.f) {
  XentScalars k;
  k.softcap = softcap;
  k.inv_softcap = softcap > 0.f ? 1.f / softcap : 0.f;
  k.z_loss_scale = z_loss_scale;
  k.alpha = alpha;
  k.alpha_log2e = alpha * kLog2e;
  k.smooth_on = 1.f - label_smoothing;
  k.smooth_off = label_smoothing / static_cast<float>(total_cols);
  return k;
}

// The reference point used when scaling by a max: -inf (nothing seen yet) becomes 0, so that
// exp(z - ref) is 0 for masked z instead of exp(-inf + inf) = NaN.
PG_HD float safe_ref(float m) { return m == neg_inf() ? 0.f : m; }

// exp2(alpha_log2e * d) with d = z - ref, where a masked z (-inf) gives 0 for every alpha,
// including alpha = 0 (0 * -inf would be NaN).
PG_HD float masked_pow_term(float alpha_log2e, float z, float ref) {
  return z == neg_inf() ? 0.f : fast_exp2(alpha_log2e * (z - ref));
}

// Folds a batch of values that the caller has already reduced to their max `bm` into `st`:
// rescales st to the new max once and returns the reference to use for each element.
PG_HD float rescale_to(RowStats& st, float bm, const XentScalars& k) {
  const float nm = bm > st.m ? bm : st.m;  // keeps the running max when bm is NaN
  if (nm != st.m) {
    const float d = safe_ref(st.m) - safe_ref(nm);  // <= 0; -inf never reaches the exp
    // When st.m is -inf the sums are 0, so the scale is irrelevant; avoid 0*(-inf) regardless.
    st.s *= st.m == neg_inf() ? 0.f : fast_exp2(d * kLog2e);
    st.sa *= st.m == neg_inf() ? 0.f : fast_exp2(d * k.alpha_log2e);
    st.m = nm;
  }
  return safe_ref(nm);
}

// Adds one element to the sums at reference `ref`. The difference z - ref is formed first (exact
// near the max): folding ref into an FFMA (z log2e - ref log2e) would cost fp32 accuracy when
// |logits| are large (~1e-5 relative at |z| ~ 500). NaN and +inf propagate: z = NaN gives NaN
// terms; z = +inf makes ref = +inf and z - ref = NaN.
PG_HD void accumulate(RowStats& st, float z, float ref, const XentScalars& k) {
  const float d = z - ref;
  st.s += fast_exp2(d * kLog2e);
  st.sa += z == neg_inf() ? 0.f : fast_exp2(d * k.alpha_log2e);
}

// a*b + c*d with each product rounded on its own, so that the result does not depend on the
// order of the two terms (an FMA contraction would round only one product): butterfly reductions
// rely on merge(a, b) and merge(b, a) giving the same bits.
PG_HD float sum_of_products(float a, float b, float c, float d) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(__fmul_rn(a, b), __fmul_rn(c, d));
#else
  volatile float p = a * b, q = c * d;  // volatile: no contraction by the host compiler either
  return p + q;
#endif
}

// Merge of two partial statistics: the combine operator of the split form (docs/design.md §2.3).
// Associative and commutative up to rounding; callers merge in a fixed order for determinism.
PG_HD RowStats merge(const RowStats& a, const RowStats& b, float alpha_log2e) {
  const float M = b.m > a.m ? b.m : a.m;  // maxima are never NaN (NaN lives in the sums)
  const float ref = safe_ref(M);
  const float fa = a.m == neg_inf() ? 0.f : fast_exp2((a.m - ref) * kLog2e);
  const float fb = b.m == neg_inf() ? 0.f : fast_exp2((b.m - ref) * kLog2e);
  const float fa2 = a.m == neg_inf() ? 0.f : fast_exp2((a.m - ref) * alpha_log2e);
  const float fb2 = b.m == neg_inf() ? 0.f : fast_exp2((b.m - ref) * alpha_log2e);
  RowStats r;
  r.m = M;
  r.s = sum_of_products(a.s, fa, b.s, fb);
  r.sa = sum_of_products(a.sa, fa2, b.sa, fb2);
  r.t = a.t + b.t;
  r.a = a.a + b.a;
  r.w = a.w + b.w;
  // The first maximum: the larger max wins, equal maxima keep the smaller column (torch.argmax).
  r.argmax = b.m > a.m ? b.argmax : (a.m > b.m ? a.argmax : (a.argmax < b.argmax ? a.argmax : b.argmax));
  return r;
}

// Functor form of merge for CUB reductions.
struct MergeOp {
  float alpha_log2e;
  PG_HD RowStats operator()(const RowStats& a, const RowStats& b) const { return merge(a, b, alpha_log2e); }
};

// lse = m + log s (natural log).
PG_HD float lse_of(const RowStats& st) { return st.m + fast_log2(st.s) * kLn2; }
// lse_alpha = alpha m + log sa. With alpha = 0, the alpha*m term is dropped (m may be +-inf).
PG_HD float lse_alpha_of(const RowStats& st, float alpha) {
  const float am = alpha == 0.f ? 0.f : alpha * st.m;
  // A row whose max is +inf or NaN has sa = NaN already; keep the result NaN.
  return am + fast_log2(st.sa) * kLn2;
}

// p'_j = exp(alpha (z_j - ref)) / 2^c2, 0 for a masked logit, in base 2:
//   with full statistics:   ref = safe_ref(m), c2 = log2(sa)
//   with a saved lse_alpha: ref = 0,           c2 = lse_alpha * log2(e)
// alpha = 0: 0 * (z - ref) is 0 for finite z; a NaN or +inf z gives NaN, as it must.
// A masked column gets 0 * |c2|: 0, or NaN when the row's statistics are NaN, so that a row with
// a NaN or +inf logit is NaN in every column (masked ones included).
PG_HD float pgt_prob(float z, float alpha_log2e, float ref, float c2) {
  return z == neg_inf() ? 0.f * fabsf(c2) : fast_exp2(fmaf(z - ref, alpha_log2e, -c2));
}

// The row's loss lse - sum q z. A row whose every column is masked (m = -inf) has no distribution:
// NaN, whatever the targets (a dense target with no mass would otherwise give -inf - 0 = -inf).
PG_HD float row_loss_of(float lse, const RowStats& st) {
#if defined(__CUDA_ARCH__)
  const float nan = __int_as_float(0x7fffffff);
#else
  const float nan = std::numeric_limits<float>::quiet_NaN();
#endif
  return st.m == neg_inf() ? nan : lse - st.t;
}

// Softcapping (Gemma 2; docs/design.md §2.5): zc = c tanh(z / c). A masked logit (-inf) stays
// masked; +inf becomes c, NaN stays NaN.
PG_HD float softcapped(float z, const XentScalars& k) {
#if defined(__CUDA_ARCH__)
  return z == neg_inf() ? z : k.softcap * tanhf(z * k.inv_softcap);
#else
  return z == neg_inf() ? z : k.softcap * std::tanh(z * k.inv_softcap);
#endif
}
// d zc / d z = 1 - tanh^2(z / c): the chain factor of the capped gradient (0 for a masked logit,
// whose gradient is 0 anyway).
PG_HD float softcap_slope(float z, const XentScalars& k) {
#if defined(__CUDA_ARCH__)
  const float t = tanhf(z * k.inv_softcap);
#else
  const float t = std::tanh(z * k.inv_softcap);
#endif
  return z == neg_inf() ? 0.f : 1.f - t * t;
}

// Both at once, from one tanh: the capped logit and its chain factor (the same values as
// softcapped() and softcap_slope()).
PG_HD void softcap_with_slope(float z, const XentScalars& k, float& zc, float& slope) {
#if defined(__CUDA_ARCH__)
  const float t = tanhf(z * k.inv_softcap);
#else
  const float t = std::tanh(z * k.inv_softcap);
#endif
  const bool masked = z == neg_inf();
  zc = masked ? z : k.softcap * t;
  slope = masked ? 0.f : 1.f - t * t;
}

// dL/dzc of one element (docs/design.md §2.5): A p' - b, plus the z-loss term 2 lambda lse p with
// the ordinary softmax p (zl2 = 2 lambda lse; p is only used when zl2 != 0). Formed in fp32 before
// the single final rounding, so A p'_y - b_y does not cancel as p'_y -> 1.
PG_HD float option_grad(float A, float pp, float b, float zl2, float p) {
  const float ce = A * pp - b;  // A = 1: exactly pp - b
  return zl2 == 0.f ? ce : ce + zl2 * p;
}

// The row's loss with a target mass A: A lse - t. A row whose every column is masked: NaN.
PG_HD float row_loss_mass(float lse, float A, const RowStats& st) {
#if defined(__CUDA_ARCH__)
  const float nan = __int_as_float(0x7fffffff);
#else
  const float nan = std::numeric_limits<float>::quiet_NaN();
#endif
  return st.m == neg_inf() ? nan : A * lse - st.t;  // A = 1: exactly lse - t
}

// Target probability of column j (global index) for a hard target y (already known valid).
PG_HD float hard_q(int64_t j, int64_t y, const XentScalars& k) {
  return (j == y ? k.smooth_on : 0.f) + k.smooth_off;
}
// Target probability for a dense target value qv.
PG_HD float dense_q(float qv, const XentScalars& k) { return k.smooth_on * qv + k.smooth_off; }

// q*z with the convention 0 * z = 0 (so a masked logit with zero target mass adds nothing).
PG_HD float q_times_z(float q, float z) { return q == 0.f ? 0.f : q * z; }

// Gradient element: g * (p' - q), formed in fp32 before the single final rounding.
PG_HD float grad_elem(float g, float p, float q) { return g * (p - q); }

}  // namespace math
POWERGRAD_NS_END
