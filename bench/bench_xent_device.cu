// powergrad device benchmark: PGT cross-entropy ops on a CUDA GPU, each against a device-to-device
// copy of the same bytes timed the same way in the same process, plus the paper's unfused chain.
//
//   powergrad_bench_device [google-benchmark flags] [--pg_set=quick|full] [--pg_alpha=A] [--pg_probe]
//
// --pg_set=quick (default): bf16 at 4096x1000, 8192x32000, 8192x128256; fp32 at 8192x128256; the
//   unfused baseline for bf16 8192x128256. --pg_set=full: bf16/fp16/fp32 x 7 shapes, every op,
//   unfused baseline for each dtype at 8192x128256. The goal shape (bf16 8192x128256) runs first.
// --pg_probe: print the CUDA devices and exit (status 0 with a device, 3 without).
//
// Ops (int64 class targets, reduction mean, alpha 0.7 unless --pg_alpha):
//   copy              cudaMemcpyAsync D2D of N bytes (reads N, writes N): the reference
//   fwd_bwd_inplace   loss + gradient written over the logits (needs xent_workspace_bytes)
//   fwd_bwd_out       loss + gradient into a separate buffer
//   fwd_bwd_inplace_options   [xent-options] fwd_bwd_inplace with every option of docs/design.md
//                     §2.5 on: class weights, z-loss (1e-4) with its z_loss output, softcap 30,
//                     argmax and correct; the counter options_over_plain is its time over the same
//                     run's fwd_bwd_inplace of the same dtype and shape (registered just before it)
//   bwd_saved         xent_backward with a saved lse_alpha, in place: one read + one write
//   hook              xent_hook, in place over an existing gradient p - q (scale 1)
//   unfused           softmax -> pow -> normalise -> subtract as five plain kernels (unfused_xent.cuh)
// Every op moves at least N = rows*cols*sizeof(T) bytes in and N out: `bytes` = 2N for all.
//
// Timing: each benchmark iteration replays a CUDA graph of K launches between two CUDA events
// (manual time = elapsed / K, per launch). Inputs whose working set is under kRotateBelow bytes
// are replicated into several buffer sets and the launches rotate through them, so that the
// 50 MB L2 of an H100 does not serve them from cache. In-place ops read what the previous launch
// wrote (finite gradients; the kernels' work does not depend on the values).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "unfused_xent.cuh"

namespace {

using pgbench::Shape;
using powergrad::Backend;
using powergrad::ClassTargets;
using powergrad::Reduction;
using powergrad::Status;
using Targets = ClassTargets<int64_t>;

constexpr uint64_t kRotateBelow = 256ull << 20;    // rotate buffer sets while a set is smaller
constexpr uint64_t kGraphMinBytes = 512ull << 20;  // a graph replay moves at least this much
constexpr int kMaxSets = 1024;
constexpr int kMaxLaunchesPerGraph = 1024;
// Timed replays per benchmark. Fixed, because manual time is per launch: with --benchmark_min_time
// a 2 us launch would need tens of thousands of replays of up to a thousand launches each. Every
// replay moves >= kGraphMinBytes, so 20 replays are >= 10 GB of traffic: a stable median-free mean.
constexpr int kReplaysPerBenchmark = 20;

float g_alpha = 0.7f;
cudaStream_t g_stream = nullptr;

enum class Op { kCopy, kFwdBwdInPlace, kFwdBwdOut, kBwdSaved, kHook, kUnfused, kFwdBwdOptions };

const char* op_name(Op op) {
  switch (op) {
    case Op::kCopy: return "copy";
    case Op::kFwdBwdInPlace: return "fwd_bwd_inplace";
    case Op::kFwdBwdOut: return "fwd_bwd_out";
    case Op::kBwdSaved: return "bwd_saved";
    case Op::kHook: return "hook";
    case Op::kUnfused: return "unfused";
    case Op::kFwdBwdOptions: return "fwd_bwd_inplace_options";
  }
  return "?";
}

bool out_of_place(Op op) { return op == Op::kCopy || op == Op::kFwdBwdOut || op == Op::kUnfused; }

struct DevMem {
  void* p = nullptr;
  DevMem() = default;
  DevMem(const DevMem&) = delete;
  DevMem& operator=(const DevMem&) = delete;
  ~DevMem() {
    if (p) cudaFree(p);
  }
  cudaError_t alloc(size_t n) { return cudaMalloc(&p, n ? n : 1); }
  template <class U>
  U* as(size_t byte_offset = 0) const {
    return reinterpret_cast<U*>(static_cast<char*>(p) + byte_offset);
  }
};

template <class T>
__global__ void fill_logits(T* x, uint64_t n, uint64_t seed) {
  for (uint64_t i = blockIdx.x * uint64_t(blockDim.x) + threadIdx.x; i < n; i += uint64_t(gridDim.x) * blockDim.x)
    x[i] = powergrad::from_float<T>(pgbench::logit_at(seed, i));
}

// Class weights in [0.5, 1.375], none 0 (multiples of 1/8).
__global__ void fill_weights(float* w, int64_t cols) {
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < cols; c += int64_t(gridDim.x) * blockDim.x)
    w[c] = 0.5f + static_cast<float>(c % 8) / 8.f;
}

__global__ void fill_targets(int64_t* y, int64_t rows, int64_t cols, uint64_t seed) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < rows; r += int64_t(gridDim.x) * blockDim.x)
    y[r] = static_cast<int64_t>(pgbench::mix64(seed + static_cast<uint64_t>(r)) % static_cast<uint64_t>(cols));
}

std::string cuda_msg(const char* what, cudaError_t e) { return std::string(what) + ": " + cudaGetErrorString(e); }

// Everything one benchmark needs: rotating buffer sets, shared targets / statistics / workspace,
// and a launch function for launch number k (which rotates over the sets).
template <class T>
struct Bench {
  Shape s;
  Op op;
  uint64_t n = 0;       // bytes of one [rows x cols] matrix
  uint64_t stride = 0;  // bytes between two sets (n rounded up to 256)
  int sets = 1;
  DevMem in, out, targets, lse_alpha, loss, ws, lse_tmp, row_loss_tmp;
  DevMem weight, z_loss, argmax, correct;  // fwd_bwd_inplace_options
  size_t ws_bytes = 0;
  std::string error;

  Bench(Shape shape, Op o) : s(shape), op(o) {
    n = static_cast<uint64_t>(s.rows) * static_cast<uint64_t>(s.cols) * sizeof(T);
    stride = (n + 255) / 256 * 256;
    const uint64_t footprint = n * (out_of_place(op) ? 2 : 1);
    if (footprint < kRotateBelow) sets = static_cast<int>(std::min<uint64_t>(kMaxSets, (kRotateBelow + footprint - 1) / footprint));
  }

  T* logits(int set) const { return in.as<T>(stride * static_cast<uint64_t>(set)); }
  T* grad_out(int set) const { return out.as<T>(stride * static_cast<uint64_t>(set)); }

  bool check(cudaError_t e, const char* what) {
    if (e != cudaSuccess && error.empty()) error = cuda_msg(what, e);
    return e == cudaSuccess;
  }
  bool check(Status st, const char* what) {
    if (st != Status::kSuccess && error.empty())
      error = std::string(what) + ": " + powergrad::status_string(st) + ": " + powergrad::last_error_message();
    return st == Status::kSuccess;
  }

  powergrad::XentProblem<T, Targets> problem(int set) const {
    powergrad::XentProblem<T, Targets> p;
    p.logits = logits(set);
    p.rows = s.rows;
    p.cols = s.cols;
    p.targets.index = targets.as<int64_t>();
    p.alpha = g_alpha;
    p.reduction = Reduction::kMean;
    if (op == Op::kFwdBwdOptions) {
      p.weight = weight.as<float>();
      p.z_loss_scale = 1e-4f;
      p.softcap = 30.f;
    }
    return p;
  }

  bool setup() {
    const uint64_t total = stride * static_cast<uint64_t>(sets);
    if (!check(in.alloc(total), "cudaMalloc(logits)")) return false;
    if (out_of_place(op) && !check(out.alloc(total), "cudaMalloc(out)")) return false;
    const size_t rows = static_cast<size_t>(s.rows);
    if (!check(targets.alloc(rows * sizeof(int64_t)), "cudaMalloc(targets)")) return false;
    if (!check(lse_alpha.alloc(rows * sizeof(float)), "cudaMalloc(lse_alpha)")) return false;
    if (!check(loss.alloc(sizeof(float)), "cudaMalloc(loss)")) return false;
    if (!check(lse_tmp.alloc(rows * sizeof(float)), "cudaMalloc(lse)")) return false;
    if (!check(row_loss_tmp.alloc(rows * sizeof(float)), "cudaMalloc(row_loss)")) return false;
    ws_bytes = powergrad::xent_workspace_bytes(s.rows, Reduction::kMean);
    if (!check(ws.alloc(ws_bytes), "cudaMalloc(workspace)")) return false;

    const uint64_t elems = static_cast<uint64_t>(s.rows) * static_cast<uint64_t>(s.cols);
    for (int k = 0; k < sets; ++k) {
      fill_logits<T><<<1024, 256, 0, g_stream>>>(logits(k), elems, 11 + k);
      if (out_of_place(op)) fill_logits<T><<<1024, 256, 0, g_stream>>>(grad_out(k), elems, 5000 + k);
    }
    fill_targets<<<256, 256, 0, g_stream>>>(targets.as<int64_t>(), s.rows, s.cols, 3);
    if (op == Op::kFwdBwdOptions) {
      if (!check(weight.alloc(static_cast<size_t>(s.cols) * sizeof(float)), "cudaMalloc(weight)") ||
          !check(z_loss.alloc(sizeof(float)), "cudaMalloc(z_loss)") ||
          !check(argmax.alloc(rows * sizeof(int64_t)), "cudaMalloc(argmax)") ||
          !check(correct.alloc(rows * sizeof(int32_t)), "cudaMalloc(correct)"))
        return false;
      fill_weights<<<256, 256, 0, g_stream>>>(weight.as<float>(), s.cols);
    }
    if (!check(cudaGetLastError(), "fill kernels")) return false;

    if (op == Op::kBwdSaved) {  // the forward pass that a real backward follows: saves lse_alpha
      powergrad::XentOutputs<T> o;
      o.lse_alpha = lse_alpha.as<float>();
      o.loss = loss.as<float>();
      if (!check(powergrad::xent_forward_backward(Backend::kCuda, problem(0), powergrad::Upstream{}, o, ws.p,
                                                  ws_bytes, g_stream),
                 "xent_forward_backward (saving lse_alpha)"))
        return false;
    }
    if (op == Op::kHook) {  // hook input: an existing gradient G = 1 * (p - q), one per set
      for (int k = 0; k < sets; ++k) {
        auto p = problem(k);
        p.reduction = Reduction::kSum;
        powergrad::XentOutputs<T> o;
        o.dlogits = logits(k);
        if (!check(powergrad::xent_forward_backward(Backend::kCuda, p, powergrad::Upstream{}, o, ws.p, ws_bytes,
                                                    g_stream),
                   "xent_forward_backward (hook input)"))
          return false;
      }
    }
    return check(cudaStreamSynchronize(g_stream), "setup");
  }

  // Launch number k of a replay (set k % sets).
  bool launch(int k) {
    const int set = k % sets;
    switch (op) {
      case Op::kCopy:
        return check(cudaMemcpyAsync(grad_out(set), logits(set), n, cudaMemcpyDeviceToDevice, g_stream),
                     "cudaMemcpyAsync");
      case Op::kFwdBwdInPlace:
      case Op::kFwdBwdOptions:
      case Op::kFwdBwdOut: {
        powergrad::XentOutputs<T> o;
        o.loss = loss.as<float>();
        o.dlogits = op == Op::kFwdBwdOut ? grad_out(set) : logits(set);
        if (op == Op::kFwdBwdOptions) {
          o.z_loss = z_loss.as<float>();
          o.argmax = argmax.as<int64_t>();
          o.correct = correct.as<int32_t>();
        }
        return check(powergrad::xent_forward_backward(Backend::kCuda, problem(set), powergrad::Upstream{}, o, ws.p,
                                                      ws_bytes, g_stream),
                     "xent_forward_backward");
      }
      case Op::kBwdSaved:
        return check(powergrad::xent_backward(Backend::kCuda, problem(set), powergrad::Upstream{},
                                              lse_alpha.as<float>(), logits(set), 0, ws.p, ws_bytes, g_stream),
                     "xent_backward");
      case Op::kHook: {
        powergrad::GradScale sc;
        sc.scale = 1.f;
        return check(powergrad::xent_hook(Backend::kCuda, problem(set), sc, logits(set), 0, g_stream), "xent_hook");
      }
      case Op::kUnfused:
        return check(pgbench::unfused::chain<T>(logits(set), grad_out(set), targets.as<int64_t>(), s.rows, s.cols,
                                                g_alpha, lse_tmp.as<float>(), row_loss_tmp.as<float>(), g_stream),
                     "unfused chain");
    }
    return false;
  }
};

// A graph of K launches (falls back to plain launches if capture fails) timed with events.
template <class T>
struct Replay {
  Bench<T>& b;
  int K = 1;
  cudaGraphExec_t exec = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  bool graph = false;

  explicit Replay(Bench<T>& bench) : b(bench) {
    const uint64_t traffic = 2 * b.n;
    const uint64_t want = (kGraphMinBytes + traffic - 1) / traffic;
    K = static_cast<int>(std::min<uint64_t>(kMaxLaunchesPerGraph, std::max<uint64_t>(want, b.sets)));
    K = (K + b.sets - 1) / b.sets * b.sets;  // every set the same number of times
  }
  ~Replay() {
    if (exec) cudaGraphExecDestroy(exec);
    if (start) cudaEventDestroy(start);
    if (stop) cudaEventDestroy(stop);
  }

  bool prepare() {
    if (!b.check(cudaEventCreate(&start), "cudaEventCreate") || !b.check(cudaEventCreate(&stop), "cudaEventCreate"))
      return false;
    for (int k = 0; k < b.sets; ++k)  // warm-up: module load, first touch of every set
      if (!b.launch(k)) return false;
    if (!b.check(cudaStreamSynchronize(g_stream), "warm-up")) return false;
    cudaGraph_t g = nullptr;
    if (cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess) {
      bool ok = true;
      for (int k = 0; k < K && ok; ++k) ok = b.launch(k);
      const cudaError_t e = cudaStreamEndCapture(g_stream, &g);
      if (!ok) return false;
      graph = e == cudaSuccess && g && cudaGraphInstantiate(&exec, g, 0) == cudaSuccess;
      if (g) cudaGraphDestroy(g);
    }
    cudaGetLastError();  // a failed capture is not an error of the op: plain launches instead
    for (int w = 0; w < 2; ++w)
      if (!run_once()) return false;
    return b.check(cudaStreamSynchronize(g_stream), "warm-up replay");
  }

  bool run_once() {
    if (graph) return b.check(cudaGraphLaunch(exec, g_stream), "cudaGraphLaunch");
    for (int k = 0; k < K; ++k)
      if (!b.launch(k)) return false;
    return true;
  }

  // Seconds per launch of one timed replay; < 0 on error.
  double timed() {
    if (!b.check(cudaEventRecord(start, g_stream), "cudaEventRecord")) return -1;
    if (!run_once()) return -1;
    if (!b.check(cudaEventRecord(stop, g_stream), "cudaEventRecord")) return -1;
    if (!b.check(cudaEventSynchronize(stop), "cudaEventSynchronize")) return -1;
    float ms = 0.f;
    if (!b.check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime")) return -1;
    return static_cast<double>(ms) * 1e-3 / K;
  }
};

// Same-run copy reference for ops that move n bytes each way; measured inline (20 replays) when
// no copy benchmark of that size ran before (for example under a --benchmark_filter).
template <class T>
double copy_seconds_for(uint64_t n, Shape s) {
  auto& m = pgbench::copy_seconds_by_bytes();
  auto it = m.find(n);
  if (it != m.end()) return it->second;
  Bench<T> b(s, Op::kCopy);
  Replay<T> r(b);
  if (!b.setup() || !r.prepare()) return 0.0;
  double total = 0;
  for (int i = 0; i < 20; ++i) {
    const double t = r.timed();
    if (t < 0) return 0.0;
    total += t;
  }
  m[n] = total / 20;
  return m[n];
}

// Relative difference between the unfused chain and the fused op on a few rows (printed as a
// counter so that a baseline computing something else would show).
template <class T>
double unfused_vs_fused(Bench<T>& b) {
  const int64_t C = b.s.cols;
  DevMem fused;
  if (!b.check(fused.alloc(b.n), "cudaMalloc(check)")) return -1;
  powergrad::XentOutputs<T> o;
  o.dlogits = fused.as<T>();
  if (!b.check(powergrad::xent_forward_backward(Backend::kCuda, b.problem(0), powergrad::Upstream{}, o, b.ws.p,
                                                b.ws_bytes, g_stream),
               "fused reference"))
    return -1;
  if (!b.launch(0) || !b.check(cudaStreamSynchronize(g_stream), "check")) return -1;
  const int64_t rows_checked[3] = {0, b.s.rows / 2, b.s.rows - 1};
  std::vector<T> a(static_cast<size_t>(C)), u(static_cast<size_t>(C));
  double max_diff = 0, max_ref = 0;
  for (int64_t r : rows_checked) {
    const size_t off = static_cast<size_t>(r * C) * sizeof(T);
    if (!b.check(cudaMemcpy(a.data(), fused.as<char>(off), C * sizeof(T), cudaMemcpyDeviceToHost), "D2H") ||
        !b.check(cudaMemcpy(u.data(), b.out.template as<char>(off), C * sizeof(T), cudaMemcpyDeviceToHost), "D2H"))
      return -1;
    for (int64_t c = 0; c < C; ++c) {
      const double x = powergrad::to_float(a[c]), y = powergrad::to_float(u[c]);
      max_diff = std::max(max_diff, std::fabs(x - y));
      max_ref = std::max(max_ref, std::fabs(x));
    }
  }
  return max_ref > 0 ? max_diff / max_ref : max_diff;
}

template <class T>
void bm_device(benchmark::State& state, Shape s, Op op, double goal, const char* goal_name) {
  Bench<T> b(s, op);
  Replay<T> r(b);
  double check_diff = -1;
  if (b.setup() && r.prepare() && op == Op::kUnfused) check_diff = unfused_vs_fused(b);
  if (!b.error.empty()) {
    state.SkipWithError(b.error.c_str());
    return;
  }
  double total = 0;
  for (auto _ : state) {
    const double t = r.timed();
    if (t < 0) {
      state.SkipWithError(b.error.c_str());
      break;
    }
    state.SetIterationTime(t);
    total += t;
  }
  if (!b.error.empty() || state.iterations() == 0) return;
  const double mean = total / static_cast<double>(state.iterations());
  if (op == Op::kCopy) pgbench::copy_seconds_by_bytes()[b.n] = mean;
  const double copy = op == Op::kCopy ? mean : copy_seconds_for<T>(b.n, s);
  pgbench::report(state, 2 * b.n, mean, copy, goal > 0 ? goal_name : nullptr, goal);
  // The cost of the options: against the same run's fwd_bwd_inplace of this dtype and shape.
  static std::map<std::string, double> plain_seconds;
  const std::string key = std::string(pgbench::dtype_name<T>()) + "/" + pgbench::shape_name(s);
  if (op == Op::kFwdBwdInPlace) plain_seconds[key] = mean;
  if (op == Op::kFwdBwdOptions) {
    const auto it = plain_seconds.find(key);
    if (it != plain_seconds.end() && it->second > 0) {
      const double over = mean / it->second;
      state.counters["options_over_plain"] = benchmark::Counter(over);
    }
  }
  state.counters["sets"] = benchmark::Counter(b.sets);
  state.counters["launches_per_replay"] = benchmark::Counter(r.K);
  state.counters["graph"] = benchmark::Counter(r.graph ? 1 : 0);
  if (op == Op::kUnfused) state.counters["check_rel_diff_vs_fused"] = benchmark::Counter(check_diff);
}

template <class T>
void add(Shape s, Op op, double goal = 0, const char* goal_name = nullptr) {
  const std::string name =
      std::string("dev/") + op_name(op) + "/" + pgbench::dtype_name<T>() + "/" + pgbench::shape_name(s);
  benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st) { bm_device<T>(st, s, op, goal, goal_name); })
      ->UseManualTime()
      ->Iterations(kReplaysPerBenchmark)
      ->Unit(benchmark::kMicrosecond);
}

// All ops of one dtype and shape, the copy first (the ops read its time).
template <class T>
void add_shape(Shape s, bool unfused) {
  add<T>(s, Op::kCopy);
  add<T>(s, Op::kFwdBwdInPlace);
  add<T>(s, Op::kFwdBwdOut);
  add<T>(s, Op::kBwdSaved);
  add<T>(s, Op::kHook);
  if (unfused) add<T>(s, Op::kUnfused);
}

void register_all(bool full) {
  using bf16 = powergrad::bfloat16_t;
  using fp16 = powergrad::half_t;
  const Shape goal{8192, 128256};
  // The goal shape first, so that a run cut short still has the numbers that matter most.
  add<bf16>(goal, Op::kCopy);
  add<bf16>(goal, Op::kFwdBwdInPlace, 0.85, "fwd_bwd_inplace");
  add<bf16>(goal, Op::kFwdBwdOptions);  // [xent-options]: every option on, against the line above
  add<bf16>(goal, Op::kBwdSaved, 0.90, "bwd_saved");
  add<bf16>(goal, Op::kFwdBwdOut);
  add<bf16>(goal, Op::kHook);
  add<bf16>(goal, Op::kUnfused);
  if (!full) {
    add_shape<bf16>(Shape{4096, 1000}, false);
    add_shape<bf16>(Shape{8192, 32000}, false);
    add_shape<float>(goal, false);
    return;
  }
  const Shape shapes[] = {{256, 1000},   {4096, 1000},   {65536, 10},   {8192, 32000},
                          {8192, 50257}, {8192, 128256}, {4096, 256000}};
  for (Shape s : shapes) {
    const bool is_goal = s.rows == goal.rows && s.cols == goal.cols;
    if (!is_goal) add_shape<bf16>(s, false);
    add_shape<fp16>(s, is_goal);
    add_shape<float>(s, is_goal);
  }
}

int probe() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    std::printf("no CUDA device (%s)\n", e == cudaSuccess ? "device count 0" : cudaGetErrorString(e));
    return 3;
  }
  for (int d = 0; d < count; ++d) {
    cudaDeviceProp p{};
    cudaGetDeviceProperties(&p, d);
    std::printf("device %d: %s, cc %d.%d, %d SMs, L2 %d MB, %.1f GiB\n", d, p.name, p.major, p.minor,
                p.multiProcessorCount, p.l2CacheSize >> 20, static_cast<double>(p.totalGlobalMem) / (1ull << 30));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  auto flags = pgbench::take_pg_flags(&argc, argv);
  if (flags.count("probe")) return probe();
  if (flags.count("alpha")) g_alpha = std::strtof(flags["alpha"].c_str(), nullptr);
  const std::string set = flags.count("set") ? flags["set"] : "quick";
  if (set != "quick" && set != "full") {
    std::fprintf(stderr, "powergrad_bench_device: --pg_set must be quick or full\n");
    return 2;
  }
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("powergrad_bench_device: no CUDA device; nothing measured\n");
    return 3;
  }
  cudaDeviceProp p{};
  cudaGetDeviceProperties(&p, 0);
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  benchmark::AddCustomContext("gpu", p.name);
  benchmark::AddCustomContext("gpu_sms", std::to_string(p.multiProcessorCount));
  benchmark::AddCustomContext("gpu_l2_bytes", std::to_string(p.l2CacheSize));
  benchmark::AddCustomContext("cuda_driver", std::to_string(driver));
  benchmark::AddCustomContext("cuda_runtime", std::to_string(runtime));
  benchmark::AddCustomContext("powergrad_alpha", std::to_string(g_alpha));
  benchmark::AddCustomContext("powergrad_set", set);
  if (cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking) != cudaSuccess) {
    std::fprintf(stderr, "powergrad_bench_device: cudaStreamCreate failed\n");
    return 1;
  }
  // Bring clocks up before the first measurement (the goal shape's copy is measured first):
  // about 0.2 s of device-to-device copies.
  {
    DevMem a, b2;
    const size_t bytes = 256u << 20;
    if (a.alloc(bytes) == cudaSuccess && b2.alloc(bytes) == cudaSuccess) {
      for (int i = 0; i < 1200; ++i) cudaMemcpyAsync(b2.p, a.p, bytes, cudaMemcpyDeviceToDevice, g_stream);
      cudaStreamSynchronize(g_stream);
    }
    cudaGetLastError();
  }
  register_all(set == "full");
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  cudaStreamDestroy(g_stream);
  return 0;
}
