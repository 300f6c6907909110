// powergrad host benchmark: PGT cross-entropy forward+backward on the host backend, against a
// same-run memcpy of the same bytes and against the paper's unfused chain of passes.
//
//   powergrad_bench_host [google-benchmark flags] [--pg_shape=ROWSxCOLS] [--pg_alpha=A]
//                        [--pg_threads=N] [--pg_isa=baseline|avx2|avx512]
//
// --pg_threads / --pg_isa set powergrad::set_host_threads / set_host_isa (default: every hardware
// thread, the best ISA path this CPU supports).
//
// Default shape: 4096 x 32000 (float and bf16). Reported per benchmark (see bench_common.hpp):
//   bytes            minimal bytes: logits read once + gradient written once (in or out of place)
//   bytes_per_second bytes / mean time
//   ratio_to_copy    time of memcpy(bytes / 2) measured in this run / op time
// Targets are int64 class indices (as PyTorch passes them), reduction mean, loss written.
#include <chrono>
#include <cstdlib>
#include <string>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "bench_common.hpp"

namespace {

using pgbench::Shape;
using powergrad::Backend;
using powergrad::ClassTargets;
using powergrad::Reduction;
using powergrad::Status;
using Targets = ClassTargets<int64_t>;
using Clock = std::chrono::steady_clock;

float g_alpha = 0.7f;

template <class T>
struct HostData {
  std::vector<T> logits;
  std::vector<T> out;  // out-of-place gradient, unfused temporary, copy destination
  std::vector<int64_t> targets;
  explicit HostData(Shape s, bool need_out) {
    const size_t n = static_cast<size_t>(s.rows * s.cols);
    logits.resize(n);
    for (size_t i = 0; i < n; ++i) logits[i] = powergrad::from_float<T>(pgbench::logit_at(1, i));
    if (need_out) out.assign(n, powergrad::from_float<T>(0.5f));  // touched: no first-touch page faults in the loop
    targets.resize(static_cast<size_t>(s.rows));
    for (int64_t r = 0; r < s.rows; ++r) targets[r] = static_cast<int64_t>(pgbench::mix64(7 + r) % s.cols);
  }
};

template <class T>
uint64_t elem_bytes(Shape s) {
  return static_cast<uint64_t>(s.rows) * static_cast<uint64_t>(s.cols) * sizeof(T);
}

// Runs `body` once per benchmark iteration, timing it with a steady clock; returns mean seconds.
// `before` runs untimed ahead of each iteration (restoring the inputs of an in-place op).
template <class F, class G = void (*)()>
double timed_loop(benchmark::State& state, F&& body, G&& before = [] {}) {
  double total = 0.0;
  for (auto _ : state) {
    before();
    const auto t0 = Clock::now();
    body();
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    state.SetIterationTime(dt);
    total += dt;
  }
  return state.iterations() ? total / static_cast<double>(state.iterations()) : 0.0;
}

// Copy of the same bytes the op moves: it reads N and writes N where the op reads the logits (N)
// and writes the gradient (N).
template <class T>
void bm_copy(benchmark::State& state, Shape s) {
  HostData<T> d(s, true);
  const uint64_t n = elem_bytes<T>(s);
  std::memcpy(d.out.data(), d.logits.data(), n);  // warm-up
  const double t = timed_loop(state, [&] {
    std::memcpy(d.out.data(), d.logits.data(), n);
    benchmark::DoNotOptimize(d.out.data());
    benchmark::ClobberMemory();
  });
  pgbench::copy_seconds_by_bytes()[n] = t;
  pgbench::report(state, 2 * n, t, t);
}

double copy_seconds_for(uint64_t n) {
  auto& m = pgbench::copy_seconds_by_bytes();
  auto it = m.find(n);
  return it == m.end() ? 0.0 : it->second;
}

// `options`: class weights + z-loss + softcap + the argmax/correct outputs (docs/design.md §2.5), to
// compare with the same op without them in the same run.
template <class T>
void bm_fused(benchmark::State& state, Shape s, bool in_place, bool options = false) {
  HostData<T> d(s, !in_place);
  float loss = 0.f, z_loss = 0.f;
  std::vector<float> weight;
  std::vector<int64_t> argmax;
  std::vector<int32_t> correct;
  powergrad::XentProblem<T, Targets> p;
  p.logits = d.logits.data();
  p.rows = s.rows;
  p.cols = s.cols;
  p.targets.index = d.targets.data();
  p.alpha = g_alpha;
  p.reduction = Reduction::kMean;
  powergrad::XentOutputs<T> o;
  o.loss = &loss;
  o.dlogits = in_place ? d.logits.data() : d.out.data();
  if (options) {
    weight.resize(static_cast<size_t>(s.cols));
    for (int64_t c = 0; c < s.cols; ++c) weight[c] = 0.5f + static_cast<float>(pgbench::mix64(11 + c) % 8) / 8.f;
    argmax.resize(static_cast<size_t>(s.rows));
    correct.resize(static_cast<size_t>(s.rows));
    p.weight = weight.data();
    p.z_loss_scale = 1e-4f;
    p.softcap = 30.f;
    o.z_loss = &z_loss;
    o.argmax = argmax.data();
    o.correct = correct.data();
  }
  const powergrad::Upstream up{};
  Status st = powergrad::xent_forward_backward(Backend::kHost, p, up, o);  // warm-up + validation
  if (st != Status::kSuccess) {
    state.SkipWithError(powergrad::last_error_message());
    return;
  }
  // In place, every timed call starts from the original logits again (restored untimed): libm's
  // exp/log speed can depend on the values, so timing on the previous gradient would mislead.
  std::vector<T> pristine;
  if (in_place) {
    pristine.resize(d.logits.size());
    for (size_t i = 0; i < pristine.size(); ++i) pristine[i] = powergrad::from_float<T>(pgbench::logit_at(1, i));
  }
  const double t = timed_loop(
      state,
      [&] {
        st = powergrad::xent_forward_backward(Backend::kHost, p, up, o);
        benchmark::DoNotOptimize(loss);
        benchmark::ClobberMemory();
      },
      [&] {
        if (in_place) std::memcpy(d.logits.data(), pristine.data(), pristine.size() * sizeof(T));
      });
  if (st != Status::kSuccess) {
    state.SkipWithError(powergrad::last_error_message());
    return;
  }
  const uint64_t n = elem_bytes<T>(s);
  pgbench::report(state, 2 * n, t, copy_seconds_for(n));
}

// The paper's chain as separate passes over the data (what an eager framework runs), each a plain
// loop, intermediates stored in the tensor's dtype: (1) row max and log-sum-exp; (2) softmax p;
// (3) p^alpha; (4) row sum of p^alpha and division; (5) g (p' - q). Out of place: the chain needs
// its own buffer for p.
template <class T>
void unfused_chain(const T* z, T* p, const int64_t* y, Shape s, float alpha, float* loss) {
  const int64_t R = s.rows, C = s.cols;
  std::vector<float> lse(static_cast<size_t>(R));
  double loss_sum = 0.0;
  for (int64_t r = 0; r < R; ++r) {  // pass 1: statistics
    const T* zr = z + r * C;
    float m = -INFINITY;
    for (int64_t c = 0; c < C; ++c) m = std::fmax(m, powergrad::to_float(zr[c]));
    float sum = 0.f;
    for (int64_t c = 0; c < C; ++c) sum += std::exp(powergrad::to_float(zr[c]) - m);
    lse[r] = m + std::log(sum);
    loss_sum += lse[r] - powergrad::to_float(zr[y[r]]);
  }
  *loss = static_cast<float>(loss_sum / static_cast<double>(R));
  for (int64_t r = 0; r < R; ++r)  // pass 2: softmax
    for (int64_t c = 0; c < C; ++c)
      p[r * C + c] = powergrad::from_float<T>(std::exp(powergrad::to_float(z[r * C + c]) - lse[r]));
  for (int64_t i = 0; i < R * C; ++i)  // pass 3: power
    p[i] = powergrad::from_float<T>(std::pow(powergrad::to_float(p[i]), alpha));
  for (int64_t r = 0; r < R; ++r) {  // pass 4: normalise
    T* pr = p + r * C;
    float sum = 0.f;
    for (int64_t c = 0; c < C; ++c) sum += powergrad::to_float(pr[c]);
    const float inv = 1.f / sum;
    for (int64_t c = 0; c < C; ++c) pr[c] = powergrad::from_float<T>(powergrad::to_float(pr[c]) * inv);
  }
  const float g = 1.f / static_cast<float>(R);
  for (int64_t r = 0; r < R; ++r) {  // pass 5: subtract the target, scale (mean reduction)
    T* pr = p + r * C;
    for (int64_t c = 0; c < C; ++c) {
      const float q = c == y[r] ? 1.f : 0.f;
      pr[c] = powergrad::from_float<T>(g * (powergrad::to_float(pr[c]) - q));
    }
  }
}

template <class T>
void bm_unfused(benchmark::State& state, Shape s) {
  HostData<T> d(s, true);
  float loss = 0.f;
  unfused_chain(d.logits.data(), d.out.data(), d.targets.data(), s, g_alpha, &loss);  // warm-up
  const double t = timed_loop(state, [&] {
    unfused_chain(d.logits.data(), d.out.data(), d.targets.data(), s, g_alpha, &loss);
    benchmark::DoNotOptimize(loss);
    benchmark::ClobberMemory();
  });
  const uint64_t n = elem_bytes<T>(s);
  pgbench::report(state, 2 * n, t, copy_seconds_for(n));
}

template <class T>
void register_dtype(Shape s) {
  const std::string tail = std::string("/") + pgbench::dtype_name<T>() + "/" + pgbench::shape_name(s);
  // Copy first: the ops of this size read its time.
  benchmark::RegisterBenchmark(("host/copy" + tail).c_str(), [s](benchmark::State& st) { bm_copy<T>(st, s); })
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark(("host/fwd_bwd_inplace" + tail).c_str(),
                               [s](benchmark::State& st) { bm_fused<T>(st, s, true); })
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark(("host/fwd_bwd_out" + tail).c_str(),
                               [s](benchmark::State& st) { bm_fused<T>(st, s, false); })
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
  // The same in-place op with weights + z-loss + softcap + accuracy (goal: <= 1.25x the time above).
  benchmark::RegisterBenchmark(("host/fwd_bwd_inplace_options" + tail).c_str(),
                               [s](benchmark::State& st) { bm_fused<T>(st, s, true, true); })
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark(("host/unfused" + tail).c_str(), [s](benchmark::State& st) { bm_unfused<T>(st, s); })
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
}

}  // namespace

int main(int argc, char** argv) {
  auto flags = pgbench::take_pg_flags(&argc, argv);
  Shape s{4096, 32000};
  if (flags.count("shape") && !pgbench::parse_shape(flags["shape"].c_str(), &s)) {
    std::fprintf(stderr, "powergrad_bench_host: bad --pg_shape=%s (want ROWSxCOLS)\n", flags["shape"].c_str());
    return 2;
  }
  if (flags.count("alpha")) g_alpha = std::strtof(flags["alpha"].c_str(), nullptr);
  if (flags.count("threads") && powergrad::set_host_threads(std::atoi(flags["threads"].c_str())) != Status::kSuccess) {
    std::fprintf(stderr, "powergrad_bench_host: %s\n", powergrad::last_error_message());
    return 2;
  }
  if (flags.count("isa")) {
    const std::string v = flags["isa"];
    const powergrad::HostIsa isa = v == "baseline" ? powergrad::HostIsa::kBaseline
                                   : v == "avx2"   ? powergrad::HostIsa::kAvx2
                                   : v == "avx512" ? powergrad::HostIsa::kAvx512
                                                   : powergrad::HostIsa::kAuto;
    if (isa == powergrad::HostIsa::kAuto || !powergrad::host_isa_supported(isa)) {
      std::fprintf(stderr, "powergrad_bench_host: --pg_isa=%s is not one this build and CPU can run\n", v.c_str());
      return 2;
    }
    (void)powergrad::set_host_isa(isa);
  }
  benchmark::AddCustomContext("powergrad_threads", std::to_string(powergrad::host_threads()));
  benchmark::AddCustomContext("powergrad_backend", "host");
  benchmark::AddCustomContext("powergrad_alpha", std::to_string(g_alpha));
  register_dtype<float>(s);
  register_dtype<powergrad::bfloat16_t>(s);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
