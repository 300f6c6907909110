// powergrad benchmarks: helpers shared by the host and device benchmark programs.
//
// Method (docs/design.md §5, docs/performance.md): every op is memory-bound, so each benchmark reports
// the op's MINIMAL bytes (each input read once, each output written once) per second, and the ratio
// to a plain copy of the same bytes timed the same way in the same process:
//   ratio_to_copy = copy_time / op_time     (1.0 = as fast as a copy; > 1 is impossible for a
//                                            correct op that really moves those bytes)
// Absolute times on shared machines are noise; the ratio is the number to compare.
#pragma once

#include <benchmark/benchmark.h>

#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "powergrad/powergrad.hpp"

#if defined(__CUDACC__)
#define PGB_HD __host__ __device__ inline
#else
#define PGB_HD inline
#endif

namespace pgbench {

struct Shape {
  int64_t rows;
  int64_t cols;
};

inline std::string shape_name(Shape s) {
  return std::to_string(static_cast<long long>(s.rows)) + "x" + std::to_string(static_cast<long long>(s.cols));
}

// "4096x32000" -> Shape; returns false on a malformed string.
inline bool parse_shape(const char* text, Shape* out) {
  long long r = 0, c = 0;
  char x = 0;
  if (std::sscanf(text, "%lld%c%lld", &r, &x, &c) != 3 || (x != 'x' && x != 'X') || r < 1 || c < 1) return false;
  *out = Shape{r, c};
  return true;
}

// Removes our own "--pg_NAME=VALUE" flags from argv (Google Benchmark rejects unknown flags) and
// returns them as a map NAME -> VALUE ("--pg_probe" gives "probe" -> "").
inline std::map<std::string, std::string> take_pg_flags(int* argc, char** argv) {
  std::map<std::string, std::string> flags;
  int w = 1;
  for (int i = 1; i < *argc; ++i) {
    if (std::strncmp(argv[i], "--pg_", 5) == 0) {
      const char* kv = argv[i] + 5;
      const char* eq = std::strchr(kv, '=');
      if (eq) {
        flags[std::string(kv, eq)] = std::string(eq + 1);
      } else {
        flags[kv] = "";
      }
    } else {
      argv[w++] = argv[i];
    }
  }
  *argc = w;
  argv[w] = nullptr;
  return flags;
}

template <class T>
const char* dtype_name();
template <>
inline const char* dtype_name<float>() {
  return "fp32";
}
template <>
inline const char* dtype_name<powergrad::half_t>() {
  return "fp16";
}
template <>
inline const char* dtype_name<powergrad::bfloat16_t>() {
  return "bf16";
}

// splitmix64: a reproducible, seedable stream for inputs that are never all zeros.
PGB_HD uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
// Uniform in [-4, 4): logits of a realistic spread (softmax neither flat nor one-hot).
PGB_HD float logit_at(uint64_t seed, uint64_t i) {
  return static_cast<float>(mix64(seed * 0x100000001B3ull + i) >> 40) * (8.0f / 16777216.0f) - 4.0f;
}

// Copy times measured in this process, by byte count: the reference of ratio_to_copy. A copy
// benchmark runs before the ops of the same size (registration order) and stores its mean time.
inline std::map<uint64_t, double>& copy_seconds_by_bytes() {
  static std::map<uint64_t, double> m;
  return m;
}

// Sets the counters every op benchmark reports. `min_bytes` counts each input read once and each
// output written once; `copy_bytes` is what the reference copy reads (and writes) for this op, so
// that copy traffic (2 * copy_bytes) equals min_bytes.
inline void report(benchmark::State& state, uint64_t min_bytes, double op_seconds, double copy_seconds,
                   const char* goal_name = nullptr, double goal = 0.0) {
  state.counters["bytes"] = benchmark::Counter(static_cast<double>(min_bytes));
  state.counters["bytes_per_second"] = benchmark::Counter(static_cast<double>(min_bytes) / op_seconds);
  std::string label;
  if (copy_seconds > 0.0) {
    const double ratio = copy_seconds / op_seconds;
    state.counters["ratio_to_copy"] = benchmark::Counter(ratio);
    state.counters["copy_bytes_per_second"] = benchmark::Counter(static_cast<double>(min_bytes) / copy_seconds);
    char buf[160];
    std::snprintf(buf, sizeof buf, "ratio=%.3f", ratio);
    label = buf;
    if (goal_name) {
      std::snprintf(buf, sizeof buf, " GOAL %s>=%.2f %s", goal_name, goal, ratio >= goal ? "MET" : "MISSED");
      label += buf;
      state.counters["goal"] = benchmark::Counter(goal);
    }
  } else {
    label = "ratio_to_copy=n/a (no same-run copy)";
  }
  state.SetLabel(label);
}

}  // namespace pgbench
