// powergrad math layer, host only: per-element functions written for the compiler's vectoriser, and
// the host ISA paths that run them (docs/design.md §6.2).
//
// Every function here is branch-free straight-line code over one lane (selects instead of branches,
// no calls into libm, no table lookups), so a loop over an array of them is vectorised by GCC and
// clang at -O2/-O3 for whatever ISA the enclosing function is compiled for. The hot loops of the
// host backend are compiled three times (baseline x86-64 = SSE2, AVX2, AVX-512F) through target
// attributes and one is picked at run time from the CPU (host_isa()); nothing assumes the build
// machine's CPU. None of the three targets enables FMA, so every path performs the same roundings
// in the same order: the results are bitwise equal across paths (tested). Other architectures get
// the baseline path only.
//
// Accuracy (measured against float64 over every 257th fp32 bit pattern plus the special values, in
// tests/test_host_parallel.cpp): exp2_poly within 2 ulp of the exact result over the whole fp32
// range, subnormal results included (the scaling by 2^n is split in two so a subnormal result is
// rounded once; measured worst 1.17 ulp); log2_poly within 3 ulp for every positive input,
// subnormal inputs included (measured worst 2.76 ulp, for x in [sqrt(1/2), sqrt(2)) where the
// roundings of t = (m - 1) / (m + 1) and of t P(t^2) dominate).
// Both are exact at integer powers of two. Special values follow C99: exp2(-inf) = 0, exp2(+inf) =
// +inf, log2(0) = -inf, log2(x < 0) = NaN, log2(+inf) = +inf, NaN in gives NaN out.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>

#include "powergrad/config.hpp"
#include "powergrad/math/dtype.hpp"

#if defined(__GNUC__) || defined(__clang__)
#define PG_VEC_INLINE inline __attribute__((always_inline))
#else
#define PG_VEC_INLINE inline
#endif

// No contraction of a * b + c into an FMA anywhere in the host loops: AVX-512F has FMA instructions
// of its own (and a consumer may build with -mfma), and a contracted path would round differently
// from the others. And no trapping math: GCC's default -ftrapping-math keeps it from if-converting
// the selects below (a select's arm may raise an FP exception flag), which leaves the loops scalar;
// the flags are never read, and values, NaNs and signed zeros are unchanged. GCC: every function of
// the host loops (here and in host/bucket_host.hpp) is defined between PG_HOST_LOOPS_BEGIN and
// PG_HOST_LOOPS_END, so they all carry the same options and inline into each other; clang (which
// does not trap by default): a contract(off) pragma in each body.
// PG_LANE_LOOP before a loop over the kLanes lanes whose body is small (a compare and two
// selects): GCC -O3 unrolls such a loop completely before the loop vectoriser runs, and the
// straight-line code is then left scalar (a compare and a branch per element); kept as a loop, it
// becomes one or two vector compares and blends.
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define PG_LANE_LOOP _Pragma("GCC unroll 1")
#else
#define PG_LANE_LOOP
#endif

#if defined(__clang__)
#define PG_FP_STRICT _Pragma("clang fp contract(off)")
#define PG_HOST_LOOPS_BEGIN
#define PG_HOST_LOOPS_END
#elif defined(__GNUC__) && !defined(__CUDACC__)
#define PG_FP_STRICT
#define PG_HOST_LOOPS_BEGIN \
  _Pragma("GCC push_options") _Pragma("GCC optimize(\"fp-contract=off\", \"no-trapping-math\")")
#define PG_HOST_LOOPS_END _Pragma("GCC pop_options")
#else
#define PG_FP_STRICT
#define PG_HOST_LOOPS_BEGIN
#define PG_HOST_LOOPS_END
#endif

// The ISA paths: x86-64 with GCC or clang (the target attribute and __builtin_cpu_supports).
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDA_ARCH__)
#define PG_HOST_ISA_X86 1
#define PG_TARGET_AVX2 __attribute__((target("avx2")))
#define PG_TARGET_AVX512 __attribute__((target("avx512f")))
#else
#define PG_HOST_ISA_X86 0
#endif
// nvcc's front end does not pass the optimize pragma on to the host compiler, and AVX-512F would
// then contract into FMAs: in a .cu unit the AVX-512 path is compiled only when the build gives the
// host compiler -ffp-contract=off -fno-trapping-math itself and says so with
// POWERGRAD_HOST_FP_FLAGS=1 (libpowergrad's CUDA build does, src/CMakeLists.txt).
#if PG_HOST_ISA_X86 && (!defined(__CUDACC__) || (defined(POWERGRAD_HOST_FP_FLAGS) && POWERGRAD_HOST_FP_FLAGS))
#define PG_HOST_ISA_AVX512 1
#else
#define PG_HOST_ISA_AVX512 0
#endif

POWERGRAD_NS_BEGIN

// The instruction sets the host loops are compiled for. kAuto: the best one this CPU supports.
enum class HostIsa : int { kAuto = -1, kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

namespace vec {
PG_HOST_LOOPS_BEGIN

PG_VEC_INLINE uint32_t f2u(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
PG_VEC_INLINE float u2f(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
PG_VEC_INLINE double u2d(uint64_t u) {
  double d;
  std::memcpy(&d, &u, 8);
  return d;
}

PG_VEC_INLINE float abs_f(float x) { return u2f(f2u(x) & 0x7FFFFFFFu); }
PG_VEC_INLINE double abs_d(double x) {
  uint64_t u;
  std::memcpy(&u, &x, 8);
  return u2d(u & 0x7FFFFFFFFFFFFFFFull);
}
PG_VEC_INLINE float copysign_f(float mag, float sign) {
  return u2f((f2u(mag) & 0x7FFFFFFFu) | (f2u(sign) & 0x80000000u));
}

// Round to nearest even for |x| < 2^22 (adding and removing 1.5 * 2^23 leaves no fraction bits);
// larger values are returned unchanged (they are integers already, or NaN/inf).
PG_VEC_INLINE float rint_small(float x) {
  const float r = (x + 12582912.f) - 12582912.f;
  return abs_f(x) < 4194304.f ? r : x;
}
// floor for finite |x| < 2^22 (the callers clamp first).
PG_VEC_INLINE float floor_small(float x) {
  const float r = rint_small(x);
  return r > x ? r - 1.f : r;
}

// 2^n as a float for n in [-126, 127].
PG_VEC_INLINE float pow2_f(int32_t n) { return u2f(static_cast<uint32_t>(n + 127) << 23); }
// 2^n as a double for n in [-1022, 1023].
PG_VEC_INLINE double pow2_d(int32_t n) { return u2d(static_cast<uint64_t>(static_cast<int64_t>(n) + 1023) << 52); }

// 2^f for f in [-1/2, 1/2]: a degree-6 polynomial (coefficients fitted to minimise the relative
// error on [-0.5, 0.5], max 2e-9 before fp32 rounding), evaluated by Horner.
PG_VEC_INLINE float exp2_frac(float f) {
  PG_FP_STRICT
  float p = 1.535336196e-04f;
  p = p * f + 1.339887502e-03f;
  p = p * f + 9.618436918e-03f;
  p = p * f + 5.550332367e-02f;
  p = p * f + 2.402264774e-01f;
  p = p * f + 6.931471825e-01f;
  return p * f + 1.f;
}

// 2^x. x = n + f with n = rint(x) and f in [-0.5, 0.5]; 2^f by a degree-6 polynomial (coefficients
// fitted to minimise the relative error on [-0.5, 0.5], max 2e-9 before fp32 rounding), evaluated by
// Horner; 2^n applied as two exact power-of-two factors so that a subnormal result is rounded once.
PG_VEC_INLINE float exp2_poly(float x) {
  PG_FP_STRICT
  const bool nan = x != x;
  float xc = x < -151.f ? -151.f : x;
  xc = xc > 129.f ? 129.f : xc;
  xc = nan ? 0.f : xc;
  const float n = rint_small(xc);
  const float f = xc - n;  // exact
  const float p = exp2_frac(f);
  const int32_t ni = static_cast<int32_t>(n);  // [-151, 129]
  const int32_t n1 = ni >> 1;                   // [-76, 64]
  const int32_t n2 = ni - n1;                   // [-75, 65]
  const float r = (p * pow2_f(n1)) * pow2_f(n2);
  return nan ? x : r;
}

// 2^x for x <= 0 (or NaN), the cross-entropy's exponentials (docs/design.md §6.3): exp2_poly's
// split and polynomial without its range handling. Bitwise equal to exp2_poly for x in [-126, 0];
// x < -126 gives 0 (results below 2^-126 are flushed, as the GPU's ex2.approx.ftz does); NaN in gives
// NaN out. x > 0 is outside its contract.
PG_VEC_INLINE float exp2_neg(float x) {
  PG_FP_STRICT
  const float xc = x < -126.f ? -126.f : x;  // NaN stays NaN
  const float t = xc + 12582912.f;           // 1.5 * 2^23 + n: n = rint(xc) in t's low bits
  const float n = t - 12582912.f;
  const float f = xc - n;  // exact, in [-0.5, 0.5]
  const float p = exp2_frac(f);
  const float two_n = u2f((f2u(t) - 0x4B400000u + 127u) << 23);  // 2^n, n in [-126, 0]
  const float r = p * two_n;
  return x < -126.f ? 0.f : r;
}

// log2(x). A subnormal x is first scaled by 2^23. x = m 2^e with m in [sqrt(1/2), sqrt(2)),
// log2 m = t P(t^2) with t = (m - 1) / (m + 1) (|t| <= 0.1716), P of degree 3 in t^2 (fitted,
// relative error 7e-10 before fp32 rounding).
PG_VEC_INLINE float log2_poly(float x) {
  PG_FP_STRICT
  const bool sub = x < 1.17549435e-38f;  // also 0 and negatives (handled below)
  const float xs = sub ? x * 8388608.f : x;
  const uint32_t u = f2u(xs);
  const int32_t e = static_cast<int32_t>(u - 0x3F3504F3u) >> 23;  // m = x / 2^e in [sqrt(1/2), sqrt(2))
  const float m = u2f(u - (static_cast<uint32_t>(e) << 23));
  const float t = (m - 1.f) / (m + 1.f);
  const float t2 = t * t;
  float p = 4.317359626e-01f;
  p = p * t2 + 5.767143965e-01f;
  p = p * t2 + 9.617988467e-01f;
  p = p * t2 + 2.885390043e+00f;
  const float r = static_cast<float>(e - (sub ? 23 : 0)) + t * p;
  // Special values, by select: x = 0 -> -inf, x < 0 or NaN -> NaN, +inf -> +inf.
  const float inf = u2f(0x7F800000u);
  float out = x == 0.f ? -inf : r;
  out = x < 0.f ? u2f(0x7FC00000u) : out;
  out = x == inf ? inf : out;
  return x != x ? x : out;
}

// tanh(x), for the softcap of docs/design.md §2.5. |x| < 0.625: x + x u P(u) with u = x^2, P of
// degree 4 (fitted for relative error, 4.4e-9 before fp32 rounding); otherwise
// sign(x) (1 - e) / (1 + e) with e = 2^(-2 |x| log2 e) by exp2_neg (in (2^-29, 0.29]: no range
// handling needed), |x| clamped to 10 (tanh(10) rounds to 1).
// Within 4 ulp over the whole fp32 range (tests/test_host_parallel.cpp); tanh(+-inf) = +-1, NaN in
// gives NaN out, tanh(-0) = -0.
PG_VEC_INLINE float tanh_poly(float x) {
  PG_FP_STRICT
  const float a = abs_f(x);
  const float u = x * x;
  float p = -5.704991985e-03f;
  p = p * u + 2.063909173e-02f;
  p = p * u - 5.373971537e-02f;
  p = p * u + 1.333144158e-01f;
  p = p * u - 3.333328068e-01f;
  const float small = x + x * (u * p);
  const float ac = a > 10.f ? 10.f : a;
  const float e = exp2_neg(ac * -2.885390082f);
  const float big = (1.f - e) / (1.f + e);
  const float r = a < 0.625f ? small : copysign_f(big, x);
  return x != x || a == 0.f ? x : r;  // NaN, and the sign of a zero
}

// ---- 16-bit storage <-> fp32, per lane (bitwise equal to math/dtype.hpp's scalar conversions) ----

PG_VEC_INLINE float bf16_to_f32(uint16_t b) { return u2f(static_cast<uint32_t>(b) << 16); }
PG_VEC_INLINE uint16_t f32_to_bf16(float f) {
  const uint32_t u = f2u(f);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const uint32_t quiet = (u >> 16) | 0x40u;
  return static_cast<uint16_t>((u & 0x7FFFFFFFu) > 0x7F800000u ? quiet : rounded);
}

PG_VEC_INLINE float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t o = static_cast<uint32_t>(h & 0x7FFFu) << 13;  // exponent and mantissa in place
  const uint32_t e = o & 0x0F800000u;
  const uint32_t normal = o + ((127u - 15u) << 23);
  const uint32_t infnan = o + ((255u - 31u) << 23);
  // Subnormal (and zero): 2^-14 (1 + man/1024) - 2^-14 = man 2^-24, exact.
  const float sub = u2f(o + (113u << 23)) - u2f(113u << 23);
  const uint32_t mag = e == 0x0F800000u ? infnan : (e == 0 ? f2u(sub) : normal);
  return u2f(mag | sign);
}

PG_VEC_INLINE uint16_t f32_to_f16(float f) {
  const uint32_t u = f2u(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7FFFFFFFu;
  // NaN: quiet, payload kept; inf and everything that rounds to >= 65520: inf.
  const uint32_t nan = 0x7C00u | 0x200u | ((a >> 13) & 0x3FFu);
  // Subnormal half (a < 2^-14): adding 0.5 aligns the quantum 2^-24 with fp32's last mantissa bit, so
  // the fp32 addition rounds to nearest even; the mantissa bits are then the half's.
  const uint32_t sub = f2u(u2f(a) + 0.5f) - f2u(0.5f);
  // Normal: rebias, round the 13 dropped bits to nearest even (a carry into the exponent is right).
  const uint32_t normal = (a - ((127u - 15u) << 23) + 0xFFFu + ((a >> 13) & 1u)) >> 13;
  uint32_t r = a < 0x38800000u ? sub : normal;
  r = a >= 0x477FF000u ? 0x7C00u : r;
  r = a > 0x7F800000u ? nan : r;
  return static_cast<uint16_t>(r | sign);
}

// Loads and stores of the three storage types, through the conversions above.
PG_VEC_INLINE float load_f(const float* p, int64_t i) { return p[i]; }
PG_VEC_INLINE float load_f(const half_t* p, int64_t i) { return f16_to_f32(p[i].bits); }
PG_VEC_INLINE float load_f(const bfloat16_t* p, int64_t i) { return bf16_to_f32(p[i].bits); }
PG_VEC_INLINE void store_f(float* p, int64_t i, float v) { p[i] = v; }
PG_VEC_INLINE void store_f(half_t* p, int64_t i, float v) { p[i].bits = f32_to_f16(v); }
PG_VEC_INLINE void store_f(bfloat16_t* p, int64_t i, float v) { p[i].bits = f32_to_bf16(v); }

PG_HOST_LOOPS_END

// ---- the ISA paths ----

namespace detail {
inline std::atomic<int>& isa_setting() {
  static std::atomic<int> v{static_cast<int>(HostIsa::kAuto)};
  return v;
}
}  // namespace detail

// Whether this CPU (and this build) can run `isa`.
inline bool host_isa_supported(HostIsa isa) {
  if (isa == HostIsa::kBaseline || isa == HostIsa::kAuto) return true;
#if PG_HOST_ISA_X86
  if (isa == HostIsa::kAvx2) return __builtin_cpu_supports("avx2");
#if PG_HOST_ISA_AVX512
  if (isa == HostIsa::kAvx512) return __builtin_cpu_supports("avx512f");
#endif
#endif
  return false;
}

// The path the host loops take: the one set with set_host_isa when supported, else the best one.
inline HostIsa active_host_isa() {
  const HostIsa want = static_cast<HostIsa>(detail::isa_setting().load(std::memory_order_relaxed));
  if (want != HostIsa::kAuto && host_isa_supported(want)) return want;
  if (host_isa_supported(HostIsa::kAvx512)) return HostIsa::kAvx512;
  if (host_isa_supported(HostIsa::kAvx2)) return HostIsa::kAvx2;
  return HostIsa::kBaseline;
}

}  // namespace vec
POWERGRAD_NS_END
