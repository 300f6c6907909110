// powergrad host micro-benchmark: the vectorised exp2/log2 polynomials of math/vec_host.hpp
// (docs/design.md §6.2) against libm's std::exp2 / std::log2 over the same 1 M floats, on each ISA
// path this CPU supports (the polynomial loops are compiled per path here as in the host backend).
//
//   powergrad_bench_vec_host [google-benchmark flags]
//
// Reports elements per second; the ratio of the two rows of a function is the speed-up.
#include <benchmark/benchmark.h>

#include <cmath>
#include <string>
#include <vector>

#include "powergrad/host_config.hpp"
#include "powergrad/math/vec_host.hpp"

namespace {

namespace vec = powergrad::vec;
using powergrad::HostIsa;

PG_HOST_LOOPS_BEGIN
PG_VEC_INLINE void exp2_body(const float* x, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = vec::exp2_poly(x[i]);
}
PG_VEC_INLINE void log2_body(const float* x, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = vec::log2_poly(x[i]);
}
void exp2_baseline(const float* x, float* y, size_t n) { exp2_body(x, y, n); }
void log2_baseline(const float* x, float* y, size_t n) { log2_body(x, y, n); }
#if PG_HOST_ISA_X86
PG_TARGET_AVX2 void exp2_avx2(const float* x, float* y, size_t n) { exp2_body(x, y, n); }
PG_TARGET_AVX2 void log2_avx2(const float* x, float* y, size_t n) { log2_body(x, y, n); }
#endif
#if PG_HOST_ISA_AVX512
PG_TARGET_AVX512 void exp2_avx512(const float* x, float* y, size_t n) { exp2_body(x, y, n); }
PG_TARGET_AVX512 void log2_avx512(const float* x, float* y, size_t n) { log2_body(x, y, n); }
#endif
PG_HOST_LOOPS_END

using Fn = void (*)(const float*, float*, size_t);

constexpr size_t kN = size_t(1) << 20;

std::vector<float> inputs(bool positive) {
  std::vector<float> x(kN);
  for (size_t i = 0; i < kN; ++i) {
    const float t = static_cast<float>(i) / static_cast<float>(kN);
    x[i] = positive ? std::ldexp(1.f + t, static_cast<int>(i % 61) - 30) : 60.f * t - 30.f;
  }
  return x;
}

void run(benchmark::State& state, Fn fn, bool positive) {
  const std::vector<float> x = inputs(positive);
  std::vector<float> y(kN);
  for (auto _ : state) {
    fn(x.data(), y.data(), kN);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(kN));
}

void libm_exp2(const float* x, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = std::exp2(x[i]);
}
void libm_log2(const float* x, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = std::log2(x[i]);
}

void add(const std::string& name, Fn fn, bool positive) {
  benchmark::RegisterBenchmark(name.c_str(), [fn, positive](benchmark::State& st) { run(st, fn, positive); })
      ->Unit(benchmark::kMicrosecond);
}

}  // namespace

int main(int argc, char** argv) {
  add("exp2/libm", &libm_exp2, false);
  add("exp2/poly/baseline", &exp2_baseline, false);
  add("log2/libm", &libm_log2, true);
  add("log2/poly/baseline", &log2_baseline, true);
#if PG_HOST_ISA_X86
  if (powergrad::host_isa_supported(HostIsa::kAvx2)) {
    add("exp2/poly/avx2", &exp2_avx2, false);
    add("log2/poly/avx2", &log2_avx2, true);
  }
#endif
#if PG_HOST_ISA_AVX512
  if (powergrad::host_isa_supported(HostIsa::kAvx512)) {
    add("exp2/poly/avx512", &exp2_avx512, false);
    add("log2/poly/avx512", &log2_avx512, true);
  }
#endif
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
