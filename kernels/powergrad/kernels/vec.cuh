// powergrad device kernels: 16-byte vector loads and stores of fp32 / fp16 / bf16 rows.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "powergrad/config.hpp"
#include "powergrad/math/dtype.hpp"

POWERGRAD_NS_BEGIN
namespace device {

// Elements of T in one 16-byte access.
template <class T>
struct Vec {
  static constexpr int kSize = 16 / static_cast<int>(sizeof(T));
};

// Elements before the first 16-byte-aligned address of `p` (0 when p is aligned).
template <class T>
PG_DEVICE int misalignment_elems(const T* p) {
  const unsigned off = static_cast<unsigned>(reinterpret_cast<uintptr_t>(p) & 15u);
  return off == 0 ? 0 : static_cast<int>((16u - off) / sizeof(T));
}
template <class T>
PG_DEVICE bool is_aligned16(const T* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// Raw 16 bytes <-> fp32 lanes.
PG_DEVICE void unpack(const uint4& u, float (&f)[4], float) {
  f[0] = __uint_as_float(u.x);
  f[1] = __uint_as_float(u.y);
  f[2] = __uint_as_float(u.z);
  f[3] = __uint_as_float(u.w);
}
PG_DEVICE void unpack2(uint32_t w, float& a, float& b, half_t) {
  const float2 v = __half22float2(*reinterpret_cast<const __half2*>(&w));
  a = v.x;
  b = v.y;
}
PG_DEVICE void unpack2(uint32_t w, float& a, float& b, bfloat16_t) {
  a = __uint_as_float(w << 16);
  b = __uint_as_float(w & 0xFFFF0000u);
}
template <class T>
PG_DEVICE void unpack(const uint4& u, float (&f)[8], T tag) {
  unpack2(u.x, f[0], f[1], tag);
  unpack2(u.y, f[2], f[3], tag);
  unpack2(u.z, f[4], f[5], tag);
  unpack2(u.w, f[6], f[7], tag);
}

PG_DEVICE uint4 pack(const float (&f)[4], float) {
  return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3]));
}
PG_DEVICE uint32_t pack2(float a, float b, half_t) {
  const __half2 h = __floats2half2_rn(a, b);
  return *reinterpret_cast<const uint32_t*>(&h);
}
PG_DEVICE uint32_t pack2(float a, float b, bfloat16_t) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<const uint32_t*>(&h);
}
template <class T>
PG_DEVICE uint4 pack(const float (&f)[8], T tag) {
  return make_uint4(pack2(f[0], f[1], tag), pack2(f[2], f[3], tag), pack2(f[4], f[5], tag), pack2(f[6], f[7], tag));
}

// Loads: plain (kept in cache: the row will be read again) or streaming (evict-first: last use).
PG_DEVICE uint4 load16(const void* p) { return *reinterpret_cast<const uint4*>(p); }
PG_DEVICE uint4 load16_last(const void* p) { return __ldcs(reinterpret_cast<const uint4*>(p)); }
// Stores of results nobody reads in this kernel: streaming, so they do not push rows out of L2.
PG_DEVICE void store16_stream(void* p, const uint4& v) { __stcs(reinterpret_cast<uint4*>(p), v); }

}  // namespace device
POWERGRAD_NS_END
