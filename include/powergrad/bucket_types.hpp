// powergrad C++ API: argument types of the gradient-bucket transforms (docs/design.md §2.4; ops in bucket.hpp).
#pragma once

#include <cstddef>
#include <cstdint>

#include "powergrad/config.hpp"
#include "powergrad/math/dtype.hpp"
#include "powergrad/types.hpp"  // Backend, NormPreserve, stream_t

POWERGRAD_NS_BEGIN

// Runtime element types (the C ABI's pg_dtype_t numbers).
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

template <class T>
struct dtype_of;
template <>
struct dtype_of<float> {
  static constexpr DType value = DType::kFloat32;
};
template <>
struct dtype_of<half_t> {
  static constexpr DType value = DType::kFloat16;
};
template <>
struct dtype_of<bfloat16_t> {
  static constexpr DType value = DType::kBFloat16;
};

// Where a transform takes its statistics: each tensor on its own, or the whole bucket at once.
enum class BucketScope : int { kTensor = 0, kBucket = 1 };

// How a plan splits its tensors into statistics units:
//   kTensor: whole tensors (power, clip_norm: scope tensor or bucket);
//   kRows:   slices along dim 0, `rows` per tensor (AGC's unit-wise norms; rows = 1 for ndim <= 1).
enum class BucketUnits : int { kTensor = 0, kRows = 1 };

// One gradient tensor of a bucket: `numel` contiguous elements. For AGC (kRows plans), `param` is
// the matching parameter (same numel, dtype T or float) and `rows` its size along dim 0
// (numel % rows == 0; 0 or 1 = the whole tensor is one unit). Ignored by kTensor plans.
template <class T, class P = T>
struct BucketTensor {
  T* grad = nullptr;
  const P* param = nullptr;
  int64_t numel = 0;
  int64_t rows = 0;
};

// Bit flags an op may write to its optional `flags` output (device memory for kCuda), so that a
// caller can learn them later without a host synchronisation.
enum BucketFlag : int32_t {
  kBucketFlagNonFinite = 1,  // a norm or statistic was NaN or inf (the output follows the documented rule)
  kBucketFlagStalePlan = 2,  // the workspace does not hold this plan (not uploaded): nothing was written
};

POWERGRAD_NS_END
