// Tuning sandbox (in the manner of llm.c's dev/cuda): configurations of the cross-entropy row
// kernel, each checked against a float64 loop on sampled rows and timed against a same-run
// device-to-device copy of the same bytes. Not part of the library; one call on a lent GPU.
//
//   nvcc -std=c++17 -O3 -arch=sm_90 -Iinclude -Ikernels dev/xent_variants.cu -o xent_variants
//   ./xent_variants            # prints one table row per (shape, op, configuration)
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "powergrad/powergrad.hpp"

using namespace powergrad;
using detail::XentJob;
using detail::XentMode;
using T = bfloat16_t;
using Tg = ClassTargets<int64_t>;

#define CK(x)                                                                                 \
  do {                                                                                        \
    cudaError_t e_ = (x);                                                                     \
    if (e_ != cudaSuccess) {                                                                  \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__);   \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)

static float bf(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

struct Timer {
  cudaEvent_t a, b;
  Timer() { cudaEventCreate(&a); cudaEventCreate(&b); }
  float median_ms(const std::function<void(int)>& fn, int iters) {
    std::vector<float> t;
    for (int i = 0; i < 3; ++i) fn(i);
    for (int i = 0; i < iters; ++i) {
      cudaEventRecord(a);
      fn(i);
      cudaEventRecord(b);
      cudaEventSynchronize(b);
      float ms;
      cudaEventElapsedTime(&ms, a, b);
      t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  }
};

using Launch = Status (*)(const XentJob<T, Tg>&, float*, stream_t);

struct Variant {
  const char* name;
  Launch fused;
  Launch apply;
};

template <int G, int CACHE, int MINB, int SMEM = 0, int BATCH = (device::block_threads(G) * MINB >= 1024 ? 2 : 4)>
Variant make(const char* name) {
  return Variant{name, &device::launch_rows_config<T, Tg, XentMode::kFused, G, CACHE, MINB, SMEM, BATCH>,
                 &device::launch_rows_config<T, Tg, XentMode::kApplySaved, G, CACHE, MINB, SMEM, BATCH>};
}

int main() {
  int dev = 0;
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, dev));
  std::printf("device %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
  struct Shape { int64_t rows, cols; std::vector<Variant> vs; };
  // Names: b<threads>c<register vectors>[s<shared-memory vectors>][x<min blocks/SM>][b<batch>];
  // w32: a warp per row. The first entry of each shape is the library's default.
  std::vector<Shape> shapes = {
      {8192, 128256, {make<1024, 0, 1, 0, 8>("b1024c0b8"), make<1024, 1, 1, 0, 4>("b1024c1b4"),
                      make<1024, 0, 1, 0, 12>("b1024c0b12"), make<1024, 0, 1, 8, 8>("b1024c0s8b8"),
                      make<512, 0, 2, 0, 8>("b512c0x2b8")}},
      {8192, 50257, {make<512, 1, 2, 0, 4>("b512c1x2b4"), make<512, 4, 2, 0, 4>("b512c4x2b4"),
                     make<512, 0, 2, 0, 8>("b512c0x2b8"), make<1024, 0, 1, 0, 8>("b1024c0b8")}},
      {8192, 32000, {make<256, 4, 4, 0, 4>("b256c4x4b4"), make<256, 4, 4>("b256c4x4"), make<256, 1, 4, 0, 4>("b256c1x4b4"),
                     make<512, 1, 2, 0, 4>("b512c1x2b4")}},
      {65536, 2048, {make<32, 2, 4>("w32c2x4"), make<16, 2, 4>("g16c2x4"), make<32, 1, 4, 0, 4>("w32c1x4b4")}},
      {65536, 1000, {make<16, 2, 4>("g16c2x4"), make<32, 4, 3>("w32c4x3"), make<8, 2, 4>("g8c2x4")}},
      {65536, 100, {make<8, 2, 4>("g8c2x4"), make<4, 1, 4>("g4c1x4"), make<16, 2, 4>("g16c2x4")}},
      {65536, 10, {make<4, 1, 4>("g4c1x4"), make<8, 1, 4>("g8c1x4")}},
  };
  std::printf("%-14s %-6s %-10s %9s %9s %8s %8s %10s\n", "shape", "op", "config", "op_ms", "copy_ms", "GB/s",
              "ratio", "max_err");
  std::mt19937 rng(123);
  for (const auto& sh : shapes) {
    const int64_t R = sh.rows, C = sh.cols, N = R * C;
    const size_t bytes = size_t(N) * sizeof(T);
    std::vector<uint16_t> h(N);
    // Cheap generator (a billion elements): sum of two uniforms, spread ~ +-4.
    uint64_t state = 0x9E3779B97F4A7C15ull ^ uint64_t(C);
    for (auto& v : h) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      const float f = (float((state >> 40) & 0xFFFF) + float((state >> 24) & 0xFFFF)) * (4.f / 65536.f) - 4.f;
      uint32_t u;
      std::memcpy(&u, &f, 4);
      v = uint16_t((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
    }
    std::vector<int64_t> y(R);
    for (auto& v : y) v = int64_t(rng() % C);
    T *pristine, *buf, *out;
    int64_t* dy;
    float *ws, *loss, *lse_a;
    CK(cudaMalloc(&pristine, bytes));
    CK(cudaMalloc(&buf, bytes));
    CK(cudaMalloc(&out, bytes));
    CK(cudaMalloc(&dy, R * 8));
    CK(cudaMalloc(&ws, xent_workspace_bytes(R, Reduction::kMean)));
    CK(cudaMalloc(&loss, 4));
    CK(cudaMalloc(&lse_a, R * 4));
    CK(cudaMemcpy(pristine, h.data(), bytes, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dy, y.data(), R * 8, cudaMemcpyHostToDevice));
    Timer tm;
    const float copy_ms =
        tm.median_ms([&](int) { cudaMemcpyAsync(buf, pristine, bytes, cudaMemcpyDeviceToDevice); }, 20);
    for (const auto& v : sh.vs) {
      XentJob<T, Tg> j;
      j.p.logits = pristine;
      j.p.rows = R;
      j.p.cols = C;
      j.p.ld = C;
      j.p.total_cols = C;
      j.p.targets.index = dy;
      j.p.alpha = 0.3f;
      j.p.reduction = Reduction::kMean;
      j.k = math::make_scalars(0.3f, 0.f, C);
      j.mode = XentMode::kFused;
      j.out.dlogits = out;
      j.out.ld_dlogits = C;
      j.out.loss = loss;
      j.out.lse_alpha = lse_a;
      // Correctness (out of place, pristine input): sampled rows vs a float64 loop.
      CK(cudaMemset(out, 0xFF, bytes));
      CK(cudaMemcpy(buf, pristine, bytes, cudaMemcpyDeviceToDevice));
      if (device::xent_run<XentMode::kFused>(j, ws, 0, nullptr) != Status::kSuccess) std::printf("launch failed: %s\n", last_error_message());
      CK(cudaDeviceSynchronize());
      // The xent_run above counted n_valid into ws; launch variants directly after it.
      if (v.fused(j, ws, nullptr) != Status::kSuccess) std::printf("variant failed: %s\n", last_error_message());
      CK(cudaDeviceSynchronize());
      double max_err = 0;
      std::vector<uint16_t> g(C);
      for (int64_t r : {int64_t(0), R / 2, R - 1}) {
        CK(cudaMemcpy(g.data(), out + r * C, C * 2, cudaMemcpyDeviceToHost));
        double m = -1e300, s = 0;
        for (int64_t c = 0; c < C; ++c) m = std::max(m, 0.3 * bf(h[r * C + c]));
        for (int64_t c = 0; c < C; ++c) s += std::exp(0.3 * bf(h[r * C + c]) - m);
        for (int64_t c = 0; c < C; ++c) {
          const double p = std::exp(0.3 * bf(h[r * C + c]) - m) / s;
          const double ref = (p - (c == y[r] ? 1.0 : 0.0)) / double(R);
          max_err = std::max(max_err, std::fabs(ref - bf(g[c])) * R);
        }
      }
      // Timing: fused forward+backward in place (the buffer is re-made from pristine each time
      // by a copy outside the timed region would double traffic; in-place over its own output is
      // timed instead: same work per element).
      XentJob<T, Tg> ji = j;
      ji.p.logits = buf;
      ji.out.dlogits = buf;
      const float f_ms = tm.median_ms([&](int) { (void)v.fused(ji, ws, nullptr); }, 15);
      XentJob<T, Tg> ja = ji;
      ja.mode = XentMode::kApplySaved;
      ja.lse_alpha_in = lse_a;
      ja.out.loss = nullptr;
      ja.out.lse_alpha = nullptr;
      const float a_ms = tm.median_ms([&](int) { (void)v.apply(ja, ws, nullptr); }, 15);
      CK(cudaGetLastError());
      char shape[32];
      std::snprintf(shape, sizeof shape, "%lldx%lld", (long long)R, (long long)C);
      std::printf("%-14s %-6s %-10s %9.4f %9.4f %8.0f %8.3f %10.2e\n", shape, "fused", v.name, f_ms, copy_ms,
                  2.0 * bytes / f_ms * 1e-6, copy_ms / f_ms, max_err);
      std::printf("%-14s %-6s %-10s %9.4f %9.4f %8.0f %8.3f %10s\n", shape, "apply", v.name, a_ms, copy_ms,
                  2.0 * bytes / a_ms * 1e-6, copy_ms / a_ms, "-");
    }
    cudaFree(pristine); cudaFree(buf); cudaFree(out); cudaFree(dy); cudaFree(ws); cudaFree(loss); cudaFree(lse_a);
  }
  return 0;
}
