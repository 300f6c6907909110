// powergrad internal: the device workspace of the reduced cross-entropy ops, in one place. The size
// query (xent_workspace_bytes), the argument check and the CUDA kernels all read this layout.
//
// One caller buffer, 16-byte aligned, used only when a call reduces the loss or the z-loss
// (kMean / kSum) and writes it, or scales the gradient by 1/n_valid (kMean):
//   byte  0  float         mean divisor: the kMean denominator converted to float once, by the count
//                          kernel; what the row kernels divide the upstream gradient by for kMean
//   byte  4  (4 bytes of padding)
//   byte  8  the kMean denominator, one of (the op knows which from its arguments):
//            int64         n_valid: rows whose target is not ignore_index, counted exactly (an
//                          int64 holds any row count; a float count is exact only up to 2^24), or
//            double        D = sum of w_y over those rows (class targets with class weights,
//                          docs/design.md §2.5)
//   byte 16  float[rows]   per-row losses of the row kernels, summed in a fixed order by the
//                          loss-reduction kernel
//   byte 16 + 4 rows  float[rows]   per-row z-losses (the `z_loss` output, reduced the same way)
#pragma once

#include <cstddef>
#include <cstdint>

#include "powergrad/config.hpp"
#include "powergrad/types.hpp"

POWERGRAD_NS_BEGIN
namespace detail {

// The most rows one call may have: every per-row buffer size (rows * 16 bytes at most) and the
// workspace size stay far from overflow.
constexpr int64_t kXentMaxRows = int64_t(1) << 59;

struct XentWorkspace {
  static constexpr size_t kAlign = 16;             // required alignment of the buffer
  static constexpr size_t kMeanDivisorOffset = 0;  // float
  static constexpr size_t kValidCountOffset = 8;   // int64_t
  static constexpr size_t kRowLossOffset = 16;     // float[rows]
  static constexpr size_t kHeaderBytes = kRowLossOffset;
  // The row losses as an index into the workspace viewed as float[] (signed, like the row index).
  static constexpr int64_t kRowLossIndex = static_cast<int64_t>(kRowLossOffset / sizeof(float));

  // Bytes needed for `rows` rows and reduction `r` (0 for kNone or no rows; SIZE_MAX beyond
  // kXentMaxRows, which the ops reject).
  static constexpr size_t bytes(int64_t rows, Reduction r) {
    if (r == Reduction::kNone || rows <= 0) return 0;
    if (rows > kXentMaxRows) return SIZE_MAX;
    return kHeaderBytes + 2 * static_cast<size_t>(rows) * sizeof(float);
  }

  // Typed views of a workspace base pointer (the kernels receive it as float*).
  PG_HD static float* mean_divisor(float* ws) { return ws + kMeanDivisorOffset / sizeof(float); }
  PG_HD static const float* mean_divisor(const float* ws) { return ws + kMeanDivisorOffset / sizeof(float); }
  PG_HD static int64_t* valid_count(float* ws) {
    return reinterpret_cast<int64_t*>(reinterpret_cast<unsigned char*>(ws) + kValidCountOffset);
  }
  PG_HD static const int64_t* valid_count(const float* ws) {
    return reinterpret_cast<const int64_t*>(reinterpret_cast<const unsigned char*>(ws) + kValidCountOffset);
  }
  PG_HD static double* weight_sum(float* ws) {
    return reinterpret_cast<double*>(reinterpret_cast<unsigned char*>(ws) + kValidCountOffset);
  }
  PG_HD static const double* weight_sum(const float* ws) {
    return reinterpret_cast<const double*>(reinterpret_cast<const unsigned char*>(ws) + kValidCountOffset);
  }
  PG_HD static float* row_loss(float* ws) { return ws + kRowLossIndex; }
  PG_HD static float* row_z_loss(float* ws, int64_t rows) { return ws + kRowLossIndex + rows; }
};

static_assert(XentWorkspace::kMeanDivisorOffset + sizeof(float) <= XentWorkspace::kValidCountOffset &&
                  XentWorkspace::kValidCountOffset % alignof(int64_t) == 0 &&
                  XentWorkspace::kValidCountOffset % alignof(double) == 0 && sizeof(double) == sizeof(int64_t) &&
                  XentWorkspace::kValidCountOffset + sizeof(int64_t) <= XentWorkspace::kRowLossOffset &&
                  XentWorkspace::kRowLossOffset % XentWorkspace::kAlign == 0,
              "xent workspace fields overlap or are misaligned");

// The size query behind xent_workspace_bytes() and pg_xent_workspace_bytes().
inline size_t xent_workspace_bytes_impl(int64_t rows, Reduction r) { return XentWorkspace::bytes(rows, r); }

}  // namespace detail
POWERGRAD_NS_END
