// powergrad benchmarks: the buckets of the bucket-transform benchmarks (host and device), as
// (size along dim 0 for AGC units (0: the whole tensor is one unit), element count) per tensor.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace pgbench {

using BucketShapes = std::vector<std::pair<int64_t, int64_t>>;

// ResNet-50 parameter shapes (torchvision layout), as (dim0, numel).
inline BucketShapes resnet50_shapes() {
  BucketShapes v;
  auto conv = [&](int64_t out, int64_t in, int64_t k) { v.push_back({out, out * in * k * k}); };
  auto bn = [&](int64_t c) {
    v.push_back({0, c});
    v.push_back({0, c});
  };
  conv(64, 3, 7);
  bn(64);
  const int blocks[4] = {3, 4, 6, 3};
  int64_t in = 64;
  for (int s = 0; s < 4; ++s) {
    const int64_t w = 64LL << s;
    for (int b = 0; b < blocks[s]; ++b) {
      conv(w, in, 1);
      bn(w);
      conv(w, w, 3);
      bn(w);
      conv(4 * w, w, 1);
      bn(4 * w);
      if (b == 0) {
        conv(4 * w, in, 1);
        bn(4 * w);
      }
      in = 4 * w;
    }
  }
  v.push_back({1000, 1000 * 2048});
  v.push_back({0, 1000});
  return v;
}

// A DDP-style flat bucket of `mib` MiB of 2-byte elements (bf16) in 96 segments of 0.5..4 MiB scale.
inline BucketShapes flat256_shapes(int64_t mib = 256) {
  BucketShapes v;
  const int64_t total = (mib << 20) / 2;
  int64_t used = 0;
  for (int i = 0; i < 95; ++i) {
    const int64_t n = ((1LL << 19) + (i * 7919LL % 1700) * 1024) * mib / 256;
    v.push_back({0, n});
    used += n;
  }
  v.push_back({0, total - used});
  return v;
}

inline BucketShapes tiny_shapes() {
  BucketShapes v;
  for (int i = 0; i < 1000; ++i) v.push_back({0, 1 + (i * 7919LL) % 2000});
  return v;
}

}  // namespace pgbench
