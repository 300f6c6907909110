// powergrad host benchmark: the gradient-bucket transforms on the host backend, against a same-run
// memcpy moving the same bytes (docs/design.md §5; the device version is bench_bucket_device.cu).
//
//   powergrad_bench_bucket_host [--threads=N] [--isa=baseline|avx2|avx512] [google-benchmark flags]
//
// --threads sets powergrad::set_host_threads (default: the machine's hardware concurrency), --isa the
// host loops' instruction set (default: the best one this CPU supports); both are reported as
// counters. Buckets: flat16 (a DDP-style flat bucket of 96 fp32 segments, 8 M elements = 32 MiB),
// flat32 (the same shape at 16 M elements = 64 MiB), resnet50
// (ResNet-50's 161 parameter tensors, fp32), tiny1000 (1000 tensors of 1..2000 elements, fp32).
// Bytes counted as in the device benchmark: power 2N, power_l1 / clip_norm 3N, agc 3N + W (N gradient,
// W parameter bytes); ratio_to_copy = time of memcpy(bytes / 2), timed after each op iteration, / op
// time. Ops run in place on the same data every iteration (beta 0.5 keeps the values in range).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "bucket_shapes.hpp"
#include "powergrad/bucket.hpp"
#include "powergrad/host_config.hpp"

namespace {

using powergrad::Backend;
using powergrad::BucketScope;
using powergrad::BucketTensor;
using powergrad::BucketUnits;
using powergrad::NormPreserve;
using powergrad::Status;
using Clock = std::chrono::steady_clock;

enum class Op { kPower, kPowerL1, kClip, kAgc };

// One memcpy of `bytes` (the reference), timed right after each op iteration so that both see the
// same machine load.
double memcpy_once(std::vector<unsigned char>& dst, const std::vector<unsigned char>& src) {
  const auto t0 = Clock::now();
  std::memcpy(dst.data(), src.data(), src.size());
  benchmark::DoNotOptimize(dst.data());
  benchmark::ClobberMemory();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

void run(benchmark::State& state, const pgbench::BucketShapes& shapes, Op op) {
  int64_t total = 0;
  for (const auto& s : shapes) total += s.second;
  std::vector<float> g(static_cast<size_t>(total)), w(op == Op::kAgc ? static_cast<size_t>(total) : 0);
  for (size_t i = 0; i < g.size(); ++i) g[i] = 1e-2f * pgbench::logit_at(1, i) / 8.f;
  for (size_t i = 0; i < w.size(); ++i) w[i] = pgbench::logit_at(2, i) / 8.f;
  std::vector<BucketTensor<float>> ts;
  int64_t off = 0;
  for (const auto& s : shapes) {
    ts.push_back({g.data() + off, w.empty() ? nullptr : w.data() + off, s.second, op == Op::kAgc ? s.first : 0});
    off += s.second;
  }
  struct alignas(16) Block {
    unsigned char b[16];
  };
  std::vector<Block> plan(powergrad::bucket_plan_bytes(static_cast<int64_t>(ts.size())) / 16 + 1);
  const BucketUnits units = op == Op::kAgc ? BucketUnits::kRows : BucketUnits::kTensor;
  if (powergrad::bucket_plan_build<float>(Backend::kHost, ts.data(), static_cast<int64_t>(ts.size()), units,
                                          plan.data(), plan.size() * 16) != Status::kSuccess) {
    state.SkipWithError(powergrad::last_error_message());
    return;
  }
  float norm = 0.f;
  auto call = [&] {
    switch (op) {
      case Op::kPower: return powergrad::bucket_power<float>(plan.data(), plan.size() * 16, 0.5f, NormPreserve::kNone, BucketScope::kTensor);
      case Op::kPowerL1: return powergrad::bucket_power<float>(plan.data(), plan.size() * 16, 0.5f, NormPreserve::kL1, BucketScope::kTensor);
      case Op::kClip: return powergrad::bucket_clip_norm<float>(plan.data(), plan.size() * 16, 1.f, BucketScope::kBucket, &norm);
      case Op::kAgc: return powergrad::bucket_agc<float>(plan.data(), plan.size() * 16, 0.01f, 1e-3f);
    }
    return Status::kUnsupported;
  };
  const uint64_t n = static_cast<uint64_t>(total) * sizeof(float);
  const uint64_t bytes = op == Op::kPower ? 2 * n : (op == Op::kAgc ? 4 * n : 3 * n);
  std::vector<unsigned char> src(bytes / 2, 1), dst(bytes / 2, 2);
  memcpy_once(dst, src);  // warm-up
  double sum = 0, copy_sum = 0;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    if (call() != Status::kSuccess) {
      state.SkipWithError(powergrad::last_error_message());
      return;
    }
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    state.SetIterationTime(dt);
    sum += dt;
    copy_sum += memcpy_once(dst, src);
  }
  const double iters = static_cast<double>(state.iterations());
  pgbench::report(state, bytes, sum / iters, copy_sum / iters);
  state.counters["tensors"] = benchmark::Counter(static_cast<double>(ts.size()));
  state.counters["threads"] = benchmark::Counter(static_cast<double>(powergrad::host_threads()));
  state.counters["isa"] = benchmark::Counter(static_cast<double>(static_cast<int>(powergrad::host_isa())));
}

void add(const char* bucket, pgbench::BucketShapes shapes, Op op, const char* opname) {
  const std::string name = std::string("bucket_host/") + opname + "/fp32/" + bucket;
  benchmark::RegisterBenchmark(name.c_str(), [shapes, op](benchmark::State& st) { run(st, shapes, op); })
      ->UseManualTime()
      ->Iterations(3)
      ->Unit(benchmark::kMillisecond);
}

}  // namespace

int main(int argc, char** argv) {
  // Our own flags first (google-benchmark rejects unknown ones).
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--threads=", 0) == 0) {
      if (powergrad::set_host_threads(std::atoi(a.c_str() + 10)) != Status::kSuccess) {
        std::fprintf(stderr, "%s\n", powergrad::last_error_message());
        return 2;
      }
    } else if (a.rfind("--isa=", 0) == 0) {
      const std::string v = a.substr(6);
      const powergrad::HostIsa isa = v == "avx512" ? powergrad::HostIsa::kAvx512
                                     : v == "avx2" ? powergrad::HostIsa::kAvx2 : powergrad::HostIsa::kBaseline;
      if (powergrad::set_host_isa(isa) != Status::kSuccess) {
        std::fprintf(stderr, "%s\n", powergrad::last_error_message());
        return 2;
      }
    } else {
      argv[kept++] = argv[i];
    }
  }
  argc = kept;
  // 16 MiB of 2-byte elements in the shape helper = 8 M elements; here they are fp32 (32 MiB).
  add("flat16", pgbench::flat256_shapes(16), Op::kPower, "power");
  add("flat16", pgbench::flat256_shapes(16), Op::kPowerL1, "power_l1");
  add("flat16", pgbench::flat256_shapes(16), Op::kClip, "clip_norm");
  add("flat32", pgbench::flat256_shapes(32), Op::kPower, "power");
  add("flat32", pgbench::flat256_shapes(32), Op::kClip, "clip_norm");
  add("resnet50", pgbench::resnet50_shapes(), Op::kClip, "clip_norm");
  add("resnet50", pgbench::resnet50_shapes(), Op::kAgc, "agc");
  add("tiny1000", pgbench::tiny_shapes(), Op::kClip, "clip_norm");
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
