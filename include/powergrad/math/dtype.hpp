// powergrad math layer: element types and their conversion to and from fp32.
//
// half_t and bfloat16_t are 16-bit storage types with the bit layout of IEEE binary16 and bfloat16
// (the same layout as CUDA's __half and __nv_bfloat16). All arithmetic happens in fp32; these types
// only load and store. Host conversions are written out bit by bit (round to nearest even), so the
// host backend needs no CUDA header; device code uses the hardware conversion instructions.
#pragma once

#include <cstdint>
#include <cstring>

#include "powergrad/config.hpp"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

POWERGRAD_NS_BEGIN

struct alignas(2) half_t {
  uint16_t bits;
};
struct alignas(2) bfloat16_t {
  uint16_t bits;
};

namespace detail {

PG_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}
PG_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

inline float half_bits_to_float_host(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t man = h & 0x3FFu;
  if (exp == 0x1Fu) return bits_float(sign | 0x7F800000u | (man << 13));  // inf / NaN
  if (exp != 0) return bits_float(sign | ((exp + 112u) << 23) | (man << 13));
  // Subnormal half: man * 2^-24, exact in fp32.
  const float mag = static_cast<float>(man) * 5.9604644775390625e-8f;
  return sign ? -mag : mag;
}

inline uint16_t float_to_half_bits_host(float f) {
  const uint32_t u = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) {  // inf or NaN (keep NaN quiet and non-zero)
    return static_cast<uint16_t>(sign | 0x7C00u | (abs > 0x7F800000u ? 0x200u | ((abs >> 13) & 0x3FFu) : 0u));
  }
  if (abs >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds to >= 65520: inf
  if (abs < 0x38800000u) {
    // Result is subnormal (or zero) in half: quantum 2^-24. Round to nearest even on the integer.
    if (abs < 0x33000000u) return sign;  // < 2^-25: rounds to zero (2^-25 exactly ties to even 0)
    const uint32_t e = abs >> 23;
    const uint32_t m = (abs & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126u - e;  // value = m * 2^(e-150); in units of 2^-24: m >> (126 - e)
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return static_cast<uint16_t>(sign | q);
  }
  // Normal: rebias exponent, round 13 dropped bits to nearest even (carry into the exponent is right).
  uint32_t v = abs - 0x38000000u;  // exponent 127 -> 15
  const uint32_t rem = v & 0x1FFFu;
  v >>= 13;
  if (rem > 0x1000u || (rem == 0x1000u && (v & 1u))) ++v;
  return static_cast<uint16_t>(sign | v);
}

inline uint16_t float_to_bf16_bits_host(float f) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  const uint32_t rounding = 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

}  // namespace detail

// ---- load: storage -> fp32 ----
PG_HD float to_float(float x) { return x; }
PG_HD float to_float(half_t x) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(x.bits));
#else
  return detail::half_bits_to_float_host(x.bits);
#endif
}
PG_HD float to_float(bfloat16_t x) { return detail::bits_float(static_cast<uint32_t>(x.bits) << 16); }

// ---- store: fp32 -> storage, round to nearest even ----
template <class T>
PG_HD T from_float(float f);
template <>
PG_HD float from_float<float>(float f) {
  return f;
}
template <>
PG_HD half_t from_float<half_t>(float f) {
#if defined(__CUDA_ARCH__)
  return half_t{__half_as_ushort(__float2half_rn(f))};
#else
  return half_t{detail::float_to_half_bits_host(f)};
#endif
}
template <>
PG_HD bfloat16_t from_float<bfloat16_t>(float f) {
#if defined(__CUDA_ARCH__)
  return bfloat16_t{__bfloat16_as_ushort(__float2bfloat16_rn(f))};
#else
  return bfloat16_t{detail::float_to_bf16_bits_host(f)};
#endif
}

POWERGRAD_NS_END
