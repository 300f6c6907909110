// powergrad device benchmark: gradient-bucket transforms on a CUDA GPU, each against a same-run
// device-to-device copy (docs/design.md §5).
//
//   powergrad_bench_bucket_device [google-benchmark flags]
//
// Buckets:
//   flat256     one 256 MiB bf16 DDP-style flat bucket of 96 segments (1..4.3 MiB)
//   resnet50    ResNet-50's 161 parameter tensors (25.6 M elements), bf16 and fp32 (AGC: parameters too)
//   tiny1000    1000 tensors of 1..2000 elements, fp32
// Ops and the bytes counted (N = gradient bytes; W = parameter bytes):
//   power        no preservation: one read + one write of the gradients        -> 2N
//   power_l1     statistics pass + apply pass                                   -> 3N
//   clip_norm    one read for the norm, one read + one write for the scale      -> 3N
//   agc          gradients and parameters read for the norms, then read + write -> 3N + W
// ratio_to_copy = (time of a D2D copy moving the same number of bytes) / (op time), the copy timed
// in this process: copy of `bytes / 2` bytes (a copy reads and writes each byte).
// Every op is captured once into a CUDA graph and replayed (launch overhead as in a training step).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "bucket_shapes.hpp"
#include "powergrad/bucket.hpp"

namespace {

using powergrad::Backend;
using powergrad::bfloat16_t;
using powergrad::BucketScope;
using powergrad::BucketTensor;
using powergrad::BucketUnits;
using powergrad::NormPreserve;
using powergrad::Status;
using pgbench::flat256_shapes;
using pgbench::resnet50_shapes;
using pgbench::tiny_shapes;

constexpr int kReps = 20;
cudaStream_t g_stream = nullptr;

template <class T>
__global__ void fill(T* x, int64_t n, float scale, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] = powergrad::from_float<T>(scale * (pgbench::logit_at(seed, static_cast<uint64_t>(i)) / 8.f));
}

double time_graph(cudaGraphExec_t exec) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  cudaGraphLaunch(exec, g_stream);
  cudaEventRecord(a, g_stream);
  for (int r = 0; r < kReps; ++r) cudaGraphLaunch(exec, g_stream);
  cudaEventRecord(b, g_stream);
  cudaEventSynchronize(b);
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms * 1e-3 / kReps;
}

template <class F>
double time_op(F&& launch, std::string* err, size_t* nodes = nullptr) {
  cudaGraph_t g = nullptr;
  cudaGraphExec_t exec = nullptr;
  cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeGlobal);
  const Status s = launch();
  cudaStreamEndCapture(g_stream, &g);
  if (s != Status::kSuccess) {
    *err = powergrad::last_error_message();
    if (g) cudaGraphDestroy(g);
    return 0;
  }
  if (nodes) cudaGraphGetNodes(g, nullptr, nodes);
  if (cudaGraphInstantiate(&exec, g, 0) != cudaSuccess) {
    *err = "cudaGraphInstantiate failed";
    cudaGraphDestroy(g);
    return 0;
  }
  const double t = time_graph(exec);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(g);
  return t;
}

double copy_seconds(uint64_t bytes) {
  void *a = nullptr, *b = nullptr;
  cudaMalloc(&a, bytes);
  cudaMalloc(&b, bytes);
  std::string err;
  const double t = time_op([&] {
    cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, g_stream);
    return Status::kSuccess;
  }, &err);
  cudaFree(a);
  cudaFree(b);
  return t;
}

enum class Op { kPower, kPowerL1, kClip, kAgc };

template <class T>
void run(benchmark::State& state, const std::vector<std::pair<int64_t, int64_t>>& shapes, Op op) {
  int64_t total = 0;
  for (auto& s : shapes) total += (s.second + 7) / 8 * 8;  // 16-byte aligned segments
  T *g = nullptr, *w = nullptr;
  if (cudaMalloc(&g, total * sizeof(T)) != cudaSuccess || (op == Op::kAgc && cudaMalloc(&w, total * sizeof(T)) != cudaSuccess)) {
    state.SkipWithError("cudaMalloc failed");
    return;
  }
  fill<T><<<1024, 256, 0, g_stream>>>(g, total, 1e-2f, 1);
  if (w) fill<T><<<1024, 256, 0, g_stream>>>(w, total, 1.f, 2);
  std::vector<BucketTensor<T>> ts;
  int64_t off = 0, numel = 0;
  for (auto& s : shapes) {
    ts.push_back({g + off, w ? w + off : nullptr, s.second, op == Op::kAgc ? s.first : 0});
    off += (s.second + 7) / 8 * 8;
    numel += s.second;
  }
  std::vector<unsigned char> raw(powergrad::bucket_plan_bytes(static_cast<int64_t>(ts.size())) + 16);
  void* plan = raw.data() + (16 - reinterpret_cast<uintptr_t>(raw.data()) % 16) % 16;
  const size_t plan_bytes = raw.size() - 16;
  const BucketUnits units = op == Op::kAgc ? BucketUnits::kRows : BucketUnits::kTensor;
  size_t ws_bytes = 0;
  void* ws = nullptr;
  float* norms = nullptr;
  if (powergrad::bucket_plan_build<T>(Backend::kCuda, ts.data(), static_cast<int64_t>(ts.size()), units, plan,
                                      plan_bytes) != Status::kSuccess ||
      powergrad::bucket_workspace_bytes(plan, plan_bytes, &ws_bytes) != Status::kSuccess || cudaMalloc(&ws, ws_bytes) != cudaSuccess ||
      cudaMalloc(&norms, ts.size() * sizeof(float)) != cudaSuccess ||
      powergrad::bucket_plan_upload(plan, plan_bytes, ws, ws_bytes, g_stream) != Status::kSuccess) {
    state.SkipWithError(powergrad::last_error_message());
    return;
  }
  std::string err;
  size_t nodes = 0;
  auto launch = [&] {
    switch (op) {
      case Op::kPower: return powergrad::bucket_power<T>(plan, plan_bytes, 0.5f, NormPreserve::kNone, BucketScope::kTensor, ws, ws_bytes, nullptr, g_stream);
      case Op::kPowerL1: return powergrad::bucket_power<T>(plan, plan_bytes, 0.5f, NormPreserve::kL1, BucketScope::kTensor, ws, ws_bytes, nullptr, g_stream);
      case Op::kClip: return powergrad::bucket_clip_norm<T>(plan, plan_bytes, 1.f, BucketScope::kBucket, norms, ws, ws_bytes, nullptr, g_stream);
      case Op::kAgc: return powergrad::bucket_agc<T>(plan, plan_bytes, 0.01f, 1e-3f, 1.f, NormPreserve::kNone, ws, ws_bytes, nullptr, g_stream);
    }
    return Status::kUnsupported;
  };
  const uint64_t n = static_cast<uint64_t>(numel) * sizeof(T);
  const uint64_t bytes = op == Op::kPower ? 2 * n : (op == Op::kAgc ? 4 * n : 3 * n);
  double t = 0;
  for (auto _ : state) {
    t = time_op(launch, &err, &nodes);
    if (!err.empty()) {
      state.SkipWithError(err.c_str());
      break;
    }
    state.SetIterationTime(t);
  }
  if (err.empty()) {
    const double copy = copy_seconds(bytes / 2);
    pgbench::report(state, bytes, t, copy);
    state.counters["tensors"] = benchmark::Counter(static_cast<double>(ts.size()));
    state.counters["kernels"] = benchmark::Counter(static_cast<double>(nodes));
    state.counters["op_us"] = benchmark::Counter(t * 1e6);
  }
  cudaFree(g);
  if (w) cudaFree(w);
  cudaFree(ws);
  cudaFree(norms);
}

template <class T>
void add(const char* bucket, std::vector<std::pair<int64_t, int64_t>> shapes, Op op, const char* opname) {
  const std::string name = std::string("bucket/") + opname + "/" + pgbench::dtype_name<T>() + "/" + bucket;
  benchmark::RegisterBenchmark(name.c_str(), [shapes, op](benchmark::State& st) { run<T>(st, shapes, op); })
      ->UseManualTime()
      ->Iterations(3)
      ->Unit(benchmark::kMicrosecond);
}

}  // namespace

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "powergrad_bench_bucket_device: no CUDA device; nothing to run\n");
    return 3;
  }
  cudaStreamCreate(&g_stream);
  using bf16 = bfloat16_t;
  add<bf16>("flat256", flat256_shapes(), Op::kPower, "power");
  add<bf16>("flat256", flat256_shapes(), Op::kPowerL1, "power_l1");
  add<bf16>("flat256", flat256_shapes(), Op::kClip, "clip_norm");
  add<bf16>("resnet50", resnet50_shapes(), Op::kClip, "clip_norm");
  add<bf16>("resnet50", resnet50_shapes(), Op::kAgc, "agc");
  add<float>("resnet50", resnet50_shapes(), Op::kAgc, "agc");
  add<float>("tiny1000", tiny_shapes(), Op::kClip, "clip_norm");
  add<float>("tiny1000", tiny_shapes(), Op::kAgc, "agc");
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  cudaStreamDestroy(g_stream);
  return 0;
}
