// powergrad demo — the main job: PGT softmax cross-entropy forward+backward on random data.
//
// For fp32 and bf16 logits it runs xent_forward_backward (alpha = 0.3, label smoothing 0.1, mean
// reduction, some ignored rows, some confident rows where p_y -> 1), checks a few rows and the
// reduced loss against a plain float64 loop written here (it shares no code with the library's
// math), and reports throughput in GB/s of minimal bytes (logits read once + gradient written
// once) and the ratio to a memcpy of the same bytes timed in the same run.
//
// Compiled as C++ it uses the host backend (4096 x 32000). Compiled as CUDA (the `demo` target
// when nvcc is available) it uses the GPU when cudaGetDeviceCount finds one (8192 x 128256) and
// otherwise falls back to the host backend.
//
//   demo [--host] [--rows R] [--cols C] [--iters N]
//
// Exit code: 0 when every check passes, 1 when one fails, 2 on a usage or CUDA error.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "powergrad/powergrad.hpp"

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#endif

namespace pg = powergrad;

namespace {

// ---- storage helpers, written out here so the check does not trust the library's conversions ----

float bf16_bits_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t float_to_bf16_bits(float f) {  // round to nearest even (the demo's data has no NaN)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

template <class T>
struct Elem;
template <>
struct Elem<float> {
  static constexpr const char* name = "fp32";
  static float load(float x) { return x; }
  static float store(float f) { return f; }
};
template <>
struct Elem<pg::bfloat16_t> {
  static constexpr const char* name = "bf16";
  static float load(pg::bfloat16_t x) { return bf16_bits_to_float(x.bits); }
  static pg::bfloat16_t store(float f) { return pg::bfloat16_t{float_to_bf16_bits(f)}; }
};

// ---- the problem ----

constexpr float kAlpha = 0.3f;           // the paper's alpha for SE-ResNet-50 / ResNet-101
constexpr float kLabelSmoothing = 0.1f;  // the paper's label-smoothing run
constexpr int64_t kIgnore = -100;

struct Problem {
  int64_t rows = 0, cols = 0;
  std::vector<float> logits;     // fp32 values; the bf16 run rounds them
  std::vector<int32_t> targets;  // class index or kIgnore
  std::vector<int64_t> check_rows;
};

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Logits uniform in [-6, 6); every 97th row ignored; every 8th row "confident" (target logit 24,
// so p_y is within ~1e-4 of 1: the cancellation case of docs/design.md §2.1).
Problem make_problem(int64_t rows, int64_t cols) {
  Problem p;
  p.rows = rows;
  p.cols = cols;
  p.logits.resize(static_cast<size_t>(rows * cols));
  p.targets.resize(static_cast<size_t>(rows));
  uint64_t seed = 2111124950ull;  // the paper's arXiv number
  for (int64_t r = 0; r < rows; ++r) {
    float* z = p.logits.data() + r * cols;
    for (int64_t c = 0; c < cols; ++c) z[c] = static_cast<float>(splitmix64(seed) >> 40) * (12.f / 16777216.f) - 6.f;
    const int64_t y = static_cast<int64_t>(splitmix64(seed) % static_cast<uint64_t>(cols));
    if (r % 8 == 3) z[y] = 24.f;
    p.targets[static_cast<size_t>(r)] = (r % 97 == 5) ? static_cast<int32_t>(kIgnore) : static_cast<int32_t>(y);
  }
  const int64_t cand[] = {0, 1, 3, 5, 11, rows / 2, rows / 3 + 1, rows - 1};
  for (int64_t r : cand)
    if (r >= 0 && r < rows && std::find(p.check_rows.begin(), p.check_rows.end(), r) == p.check_rows.end())
      p.check_rows.push_back(r);
  return p;
}

// ---- the float64 reference (docs/design.md §2.1, written from the formulas) ----

struct RefRow {
  double lse = 0, lse_alpha = 0, loss = 0;
  std::vector<double> pq;  // p'_j - q_j; the gradient is g * pq
};

template <class T>
RefRow reference_row(const T* z, int64_t cols, int64_t y) {
  RefRow r;
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < cols; ++j) m = std::max(m, static_cast<double>(Elem<T>::load(z[j])));
  double s = 0, sa = 0, zsum = 0;
  for (int64_t j = 0; j < cols; ++j) {
    const double v = Elem<T>::load(z[j]);
    s += std::exp(v - m);
    sa += std::exp(kAlpha * (v - m));
    zsum += v;
  }
  r.lse = m + std::log(s);
  r.lse_alpha = kAlpha * m + std::log(sa);
  const double eps = kLabelSmoothing, zy = Elem<T>::load(z[y]);
  r.loss = r.lse - ((1 - eps) * zy + eps / cols * zsum);
  r.pq.resize(static_cast<size_t>(cols));
  for (int64_t j = 0; j < cols; ++j) {
    const double q = (j == y ? 1 - eps : 0) + eps / cols;
    r.pq[static_cast<size_t>(j)] = std::exp(kAlpha * static_cast<double>(Elem<T>::load(z[j])) - r.lse_alpha) - q;
  }
  return r;
}

// ---- one backend's buffers and calls ----

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

#if defined(__CUDACC__)
#define DEMO_CUDA(call)                                                                          \
  do {                                                                                           \
    const cudaError_t e_ = (call);                                                               \
    if (e_ != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorName(e_), __FILE__, __LINE__, \
                   cudaGetErrorString(e_));                                                      \
      std::exit(2);                                                                              \
    }                                                                                            \
  } while (0)
#endif

template <class T>
struct Buffers {
  pg::Backend backend;
  size_t n = 0, rows = 0;
  T *logits = nullptr, *dlogits = nullptr;
  int32_t* targets = nullptr;
  float *lse = nullptr, *lse_alpha = nullptr, *loss = nullptr;
  void* ws = nullptr;
  size_t ws_bytes = 0;
  std::vector<T> h_dlogits;  // host backend storage (the logits are the caller's)
  std::vector<float> h_lse, h_lse_alpha;
  float h_loss = 0;

  Buffers(pg::Backend b, const Problem& p, const std::vector<T>& logits_h) : backend(b) {
    n = static_cast<size_t>(p.rows * p.cols);
    rows = static_cast<size_t>(p.rows);
    if (b == pg::Backend::kHost) {
      h_dlogits.resize(n);
      h_lse.resize(rows);
      h_lse_alpha.resize(rows);
      logits = const_cast<T*>(logits_h.data());
      dlogits = h_dlogits.data();
      targets = const_cast<int32_t*>(p.targets.data());
      lse = h_lse.data();
      lse_alpha = h_lse_alpha.data();
      loss = &h_loss;
      return;
    }
#if defined(__CUDACC__)
    ws_bytes = pg::xent_workspace_bytes(p.rows, pg::Reduction::kMean);
    DEMO_CUDA(cudaMalloc(&logits, n * sizeof(T)));
    DEMO_CUDA(cudaMalloc(&dlogits, n * sizeof(T)));
    DEMO_CUDA(cudaMalloc(&targets, rows * sizeof(int32_t)));
    DEMO_CUDA(cudaMalloc(&lse, rows * sizeof(float)));
    DEMO_CUDA(cudaMalloc(&lse_alpha, rows * sizeof(float)));
    DEMO_CUDA(cudaMalloc(&loss, sizeof(float)));
    DEMO_CUDA(cudaMalloc(&ws, ws_bytes));
    DEMO_CUDA(cudaMemcpy(logits, logits_h.data(), n * sizeof(T), cudaMemcpyHostToDevice));
    DEMO_CUDA(cudaMemcpy(targets, p.targets.data(), rows * sizeof(int32_t), cudaMemcpyHostToDevice));
#endif
  }
  ~Buffers() {
#if defined(__CUDACC__)
    if (backend == pg::Backend::kCuda) {
      cudaFree(logits);
      cudaFree(dlogits);
      cudaFree(targets);
      cudaFree(lse);
      cudaFree(lse_alpha);
      cudaFree(loss);
      cudaFree(ws);
    }
#endif
  }
  Buffers(const Buffers&) = delete;
  Buffers& operator=(const Buffers&) = delete;

  // All-ones bytes: NaN in fp32 and in bf16, so an element the op forgets to write fails the check.
  void poison() {
    if (backend == pg::Backend::kHost) {
      std::memset(dlogits, 0xFF, n * sizeof(T));
      std::memset(lse, 0xFF, rows * sizeof(float));
      std::memset(lse_alpha, 0xFF, rows * sizeof(float));
      std::memset(loss, 0xFF, sizeof(float));
      return;
    }
#if defined(__CUDACC__)
    DEMO_CUDA(cudaMemset(dlogits, 0xFF, n * sizeof(T)));
    DEMO_CUDA(cudaMemset(lse, 0xFF, rows * sizeof(float)));
    DEMO_CUDA(cudaMemset(lse_alpha, 0xFF, rows * sizeof(float)));
    DEMO_CUDA(cudaMemset(loss, 0xFF, sizeof(float)));
#endif
  }

  pg::Status run(const Problem& p) {
    pg::XentProblem<T, pg::ClassTargets<int32_t>> prob;
    prob.logits = logits;
    prob.rows = p.rows;
    prob.cols = p.cols;
    prob.targets.index = targets;
    prob.targets.ignore_index = kIgnore;
    prob.alpha = kAlpha;
    prob.label_smoothing = kLabelSmoothing;
    prob.reduction = pg::Reduction::kMean;
    pg::XentOutputs<T> out;
    out.loss = loss;
    out.lse = lse;
    out.lse_alpha = lse_alpha;
    out.dlogits = dlogits;
    return pg::xent_forward_backward(backend, prob, pg::Upstream{}, out, ws, ws_bytes, nullptr);
  }

  void sync() {
#if defined(__CUDACC__)
    if (backend == pg::Backend::kCuda) {
      DEMO_CUDA(cudaGetLastError());
      DEMO_CUDA(cudaDeviceSynchronize());
    }
#endif
  }

  // The same bytes as the op's minimal traffic: read n elements, write n elements.
  void copy() {
    if (backend == pg::Backend::kHost) {
      std::memcpy(dlogits, logits, n * sizeof(T));
      return;
    }
#if defined(__CUDACC__)
    DEMO_CUDA(cudaMemcpyAsync(dlogits, logits, n * sizeof(T), cudaMemcpyDeviceToDevice, nullptr));
#endif
  }

  // Best-of-iters wall time of f (host), or mean of iters on the device (events around a batch).
  template <class F>
  double time_s(int iters, F&& f) {
    if (backend == pg::Backend::kHost) {
      double best = 1e30;
      for (int i = 0; i < iters; ++i) {
        const double t0 = now_s();
        f();
        best = std::min(best, now_s() - t0);
      }
      return best;
    }
#if defined(__CUDACC__)
    for (int i = 0; i < 3; ++i) f();  // warm-up
    cudaEvent_t a, b;
    DEMO_CUDA(cudaEventCreate(&a));
    DEMO_CUDA(cudaEventCreate(&b));
    DEMO_CUDA(cudaEventRecord(a, nullptr));
    for (int i = 0; i < iters; ++i) f();
    DEMO_CUDA(cudaEventRecord(b, nullptr));
    DEMO_CUDA(cudaEventSynchronize(b));
    float ms = 0;
    DEMO_CUDA(cudaEventElapsedTime(&ms, a, b));
    DEMO_CUDA(cudaEventDestroy(a));
    DEMO_CUDA(cudaEventDestroy(b));
    DEMO_CUDA(cudaGetLastError());
    return ms * 1e-3 / iters;
#else
    return 0;
#endif
  }

  // Copies [count] elements starting at element `offset` of a buffer to the host.
  template <class U>
  std::vector<U> fetch(const U* src, size_t offset, size_t count) const {
    std::vector<U> h(count);
    if (backend == pg::Backend::kHost) {
      std::memcpy(h.data(), src + offset, count * sizeof(U));
      return h;
    }
#if defined(__CUDACC__)
    DEMO_CUDA(cudaMemcpy(h.data(), src + offset, count * sizeof(U), cudaMemcpyDeviceToHost));
#endif
    return h;
  }
};

// ---- one dtype: run, check, time ----

struct Tolerance {
  double grad_atol, grad_rtol, stat_rtol, loss_rtol;
};

template <class T>
bool run_dtype(pg::Backend backend, const Problem& p, int iters, const Tolerance& tol) {
  const char* where = backend == pg::Backend::kHost ? "host" : "cuda";
  std::vector<T> logits_h(p.logits.size());
  for (size_t i = 0; i < logits_h.size(); ++i) logits_h[i] = Elem<T>::store(p.logits[i]);

  Buffers<T> buf(backend, p, logits_h);
  buf.poison();
  const pg::Status s = buf.run(p);
  buf.sync();
  if (s != pg::Status::kSuccess) {
    std::printf("[%s %s] FAIL: xent_forward_backward returned '%s': %s\n", where, Elem<T>::name,
                pg::status_string(s), pg::last_error_message());
    return false;
  }

  // Reference: float64 over the check rows; the reduced loss from the library's (checked) lse.
  int64_t n_valid = 0;
  for (int32_t y : p.targets) n_valid += (y != kIgnore);
  const double g = n_valid ? 1.0 / static_cast<double>(n_valid) : 0.0;
  const std::vector<float> lse = buf.fetch(buf.lse, 0, buf.rows);
  const std::vector<float> lse_alpha = buf.fetch(buf.lse_alpha, 0, buf.rows);
  const float loss = buf.fetch(buf.loss, 0, 1)[0];
  double loss_from_lse = 0;
  for (int64_t r = 0; r < p.rows; ++r) {
    const int64_t y = p.targets[static_cast<size_t>(r)];
    if (y == kIgnore) continue;
    const T* z = logits_h.data() + r * p.cols;
    double zsum = 0;
    for (int64_t j = 0; j < p.cols; ++j) zsum += Elem<T>::load(z[j]);
    const double eps = kLabelSmoothing;
    loss_from_lse += lse[static_cast<size_t>(r)] - ((1 - eps) * Elem<T>::load(z[y]) + eps / p.cols * zsum);
  }
  loss_from_lse *= g;

  double max_grad_err = 0, max_stat_err = 0;
  int64_t bad = 0;
  for (int64_t r : p.check_rows) {
    const int64_t y = p.targets[static_cast<size_t>(r)];
    const std::vector<T> d = buf.fetch(buf.dlogits, static_cast<size_t>(r * p.cols), static_cast<size_t>(p.cols));
    if (y == kIgnore) {  // ignored row: gradient exactly 0; lse is still the row's statistic
      for (int64_t j = 0; j < p.cols; ++j) bad += (Elem<T>::load(d[static_cast<size_t>(j)]) != 0.f);
      continue;
    }
    const RefRow ref = reference_row(logits_h.data() + r * p.cols, p.cols, y);
    const double e_lse = std::fabs(lse[static_cast<size_t>(r)] - ref.lse) / std::max(1.0, std::fabs(ref.lse));
    const double e_lsa =
        std::fabs(lse_alpha[static_cast<size_t>(r)] - ref.lse_alpha) / std::max(1.0, std::fabs(ref.lse_alpha));
    max_stat_err = std::max({max_stat_err, e_lse, e_lsa});
    if (!(e_lse <= tol.stat_rtol) || !(e_lsa <= tol.stat_rtol)) ++bad;
    for (int64_t j = 0; j < p.cols; ++j) {
      // Compared in units of g, so the numbers read as errors in p'_j - q_j.
      const double got = Elem<T>::load(d[static_cast<size_t>(j)]) / g, want = ref.pq[static_cast<size_t>(j)];
      const double err = std::fabs(got - want);
      if (!(err <= tol.grad_atol + tol.grad_rtol * std::fabs(want))) {
        if (bad < 5)
          std::printf("[%s %s]   row %lld col %lld: got %.9g, want %.9g (x g)\n", where, Elem<T>::name,
                      static_cast<long long>(r), static_cast<long long>(j), got, want);
        ++bad;
      }
      if (!(err <= max_grad_err)) max_grad_err = err;  // NaN-propagating max
    }
  }
  const double loss_err = std::fabs(loss - loss_from_lse) / std::max(1.0, std::fabs(loss_from_lse));
  if (!(loss_err <= tol.loss_rtol)) ++bad;

  // Throughput: minimal bytes = logits read once + gradient written once.
  const double bytes = 2.0 * static_cast<double>(buf.n) * sizeof(T);
  const double t_copy = buf.time_s(iters, [&] { buf.copy(); });
  const double t_op = buf.time_s(iters, [&] { (void)buf.run(p); });
  buf.sync();

  std::printf("[%s %s] %lld x %lld, alpha %.2f, label smoothing %.1f, %lld valid rows\n", where, Elem<T>::name,
              static_cast<long long>(p.rows), static_cast<long long>(p.cols), kAlpha, kLabelSmoothing,
              static_cast<long long>(n_valid));
  std::printf("  check   loss %.6f (float64 from lse: %.6f, rel err %.1e); %zu rows vs float64: "
              "max |err| of p'-q %.2e, of lse/lse_alpha %.2e (rel)\n",
              loss, loss_from_lse, loss_err, p.check_rows.size(), max_grad_err, max_stat_err);
  std::printf("  speed   fwd+bwd %8.3f ms = %7.2f GB/s | memcpy of the same bytes %8.3f ms = %7.2f GB/s | "
              "ratio %.2f of memcpy\n",
              t_op * 1e3, bytes / t_op * 1e-9, t_copy * 1e3, bytes / t_copy * 1e-9, t_copy / t_op);
  std::printf("  %s\n", bad ? "FAIL" : "ok");
  return bad == 0;
}

}  // namespace

int main(int argc, char** argv) {
  bool force_host = false;
  int64_t rows = 0, cols = 0;
  int iters = 0;
  for (int i = 1; i < argc; ++i) {
    const bool has_value = i + 1 < argc;
    if (!std::strcmp(argv[i], "--host")) {
      force_host = true;
    } else if (!std::strcmp(argv[i], "--rows") && has_value) {
      rows = std::atoll(argv[++i]);
    } else if (!std::strcmp(argv[i], "--cols") && has_value) {
      cols = std::atoll(argv[++i]);
    } else if (!std::strcmp(argv[i], "--iters") && has_value) {
      iters = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s [--host] [--rows R] [--cols C] [--iters N]\n", argv[0]);
      return 2;
    }
  }

  pg::Backend backend = pg::Backend::kHost;
#if defined(__CUDACC__)
  int devices = 0;
  const cudaError_t e = cudaGetDeviceCount(&devices);
  if (force_host) {
    std::printf("powergrad demo: --host given, using the host backend\n");
  } else if (e != cudaSuccess || devices == 0) {
    std::printf("powergrad demo: no CUDA device (%s), falling back to the host backend\n",
                e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
  } else {
    cudaDeviceProp prop{};
    DEMO_CUDA(cudaGetDeviceProperties(&prop, 0));
    std::printf("powergrad demo: CUDA backend on %s\n", prop.name);
    backend = pg::Backend::kCuda;
  }
#else
  (void)force_host;
  std::printf("powergrad demo: host backend (built without CUDA)\n");
#endif
  const bool dev = backend == pg::Backend::kCuda;
  if (rows <= 0) rows = dev ? 8192 : 4096;
  if (cols <= 0) cols = dev ? 128256 : 32000;
  if (iters <= 0) iters = dev ? 20 : 1;  // the host run takes seconds: one timed run after the check

  const Problem p = make_problem(rows, cols);
  // Tolerances on p'_j - q_j (|.| <= 1): fp32 arithmetic throughout; bf16 adds the output rounding.
  const Tolerance fp32_tol{1e-6, 1e-4, 1e-5, 1e-5};
  const Tolerance bf16_tol{1e-6, 1e-2, 1e-5, 1e-5};
  bool ok = run_dtype<float>(backend, p, iters, fp32_tol);
  ok = run_dtype<pg::bfloat16_t>(backend, p, iters, bf16_tol) && ok;
  std::printf("powergrad demo: %s\n", ok ? "all checks passed" : "CHECK FAILED");
  return ok ? 0 : 1;
}
