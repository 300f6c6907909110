// powergrad C++ API: core types shared by every op family (cross-entropy and bucket transforms) and
// by every layer (math, host loops, CUDA kernels). Plain C++: no CUDA include.
#pragma once

#include <cstdint>

#include "powergrad/config.hpp"

// cudaStream_t is `struct CUstream_st*`; naming it this way keeps the API headers free of CUDA
// includes, so a plain C++ compiler can use the host backend.
struct CUstream_st;

POWERGRAD_NS_BEGIN

using stream_t = CUstream_st*;

// Where the pointers of a call live, and so which backend runs it.
enum class Backend : int { kHost = 0, kCuda = 1 };

// How a cross-entropy loss is reduced over the rows.
enum class Reduction : int { kNone = 0, kMean = 1, kSum = 2 };

// Which norm of the scope a bucket power map keeps unchanged (kNone: plain sign-power).
enum class NormPreserve : int { kNone = 0, kL1 = 1, kL2 = 2 };

// Partial softmax statistics of one row (or one column shard of a row) in the mergeable form of
// docs/design.md §2.3 and §6. Plain struct: 32 bytes, the layout of the C ABI's pg_row_stats_t, the
// same whatever options (docs/design.md §2.5) a call uses.
struct RowStats {
  float m;         // running max of z (-inf when every column seen so far is masked)
  float s;         // sum exp(z - m)
  float sa;        // sum exp(alpha (z - m))
  float t;         // sum b z over the columns seen (b: the weighted, smoothed target)
  float a;         // sum b: the part of the target mass A in these columns
  float w;         // the row's weight in a weighted mean (w_y from the columns holding y)
  int64_t argmax;  // global column of the first maximum (the first column seen when all are masked)
};

POWERGRAD_NS_END
