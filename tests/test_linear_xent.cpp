// Host tests of the PGT linear cross-entropy (include/powergrad/linear_xent.hpp, docs/design.md
// §2.6) against the float64 reference on materialised logits (linear_xent_cases.hpp).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#if defined(__linux__)
#include <sys/resource.h>
#endif
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "linear_xent_cases.hpp"

using namespace lxt;

namespace {

template <class T>
void run_table() {
  HostMem mem;
  for (const LCase& c : main_cases()) EXPECT_TRUE((run_and_check<T, HostMem>(mem, c)));
}

TEST(LinearXentHost, CasesFp32) { run_table<float>(); }
TEST(LinearXentHost, CasesFp16) { run_table<half_t>(); }
TEST(LinearXentHost, CasesBf16) { run_table<bfloat16_t>(); }

template <class T>
void run_options() {
  HostMem mem;
  for (const LCase& c : option_cases()) EXPECT_TRUE((run_and_check<T, HostMem>(mem, c)));
}
TEST(LinearXentHost, OptionsFp32) { run_options<float>(); }
TEST(LinearXentHost, OptionsFp16) { run_options<half_t>(); }
TEST(LinearXentHost, OptionsBf16) { run_options<bfloat16_t>(); }

template <class T>
void run_split() {
  for (const LCase& c : split_cases())
    for (int shards : {1, 2, 3}) {
      HostMem mem;
      EXPECT_TRUE((run_split_and_check<T, HostMem>(mem, c, shards)));
    }
}
TEST(LinearXentHostSplit, ShardsFp32) { run_split<float>(); }
TEST(LinearXentHostSplit, ShardsFp16) { run_split<half_t>(); }
TEST(LinearXentHostSplit, ShardsBf16) { run_split<bfloat16_t>(); }

// A weight tied with an input embedding: its gradient buffer already holds the embedding's
// gradient, and the head's dW is added to it (fp32 accumulation, rounded once).
TEST(LinearXentHost, TiedWeightAccumulates) {
  HostMem mem;
  for (GradType t : {GradType::kWeightType, GradType::kFloat32}) {
    LCase c;
    c.N = 40, c.H = 16, c.V = 50, c.chunk = 7, c.acc_dw = true, c.dwt = t, c.bias = false, c.want_db = false;
    EXPECT_TRUE((run_and_check<float, HostMem>(mem, c)));
    EXPECT_TRUE((run_and_check<bfloat16_t, HostMem>(mem, c)));
  }
}

// Bitwise the same results run after run (same chunk size).
template <class T>
void check_deterministic(const LCase& c) {
  HostMem mem;
  const LData<T> d = make_data<T>(c);
  LOut<T> b1, b2;
  const LOut<T> o1 = run_case<T>(mem, d, b1);
  const LOut<T> o2 = run_case<T>(mem, d, b2);
  ASSERT_EQ(o1.st, Status::kSuccess) << o1.msg;
  ASSERT_EQ(o2.st, Status::kSuccess) << o2.msg;
  EXPECT_EQ(0, std::memcmp(o1.loss.v.data(), o2.loss.v.data(), o1.loss.v.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(o1.dh.v.data(), o2.dh.v.data(), o1.dh.v.size() * sizeof(T)));
  EXPECT_EQ(0, std::memcmp(o1.dw_t.v.data(), o2.dw_t.v.data(), o1.dw_t.v.size() * sizeof(T)));
  EXPECT_EQ(0, std::memcmp(o1.db_t.v.data(), o2.db_t.v.data(), o1.db_t.v.size() * sizeof(T)));
}

TEST(LinearXentHost, BitwiseDeterministic) {
  LCase c;
  c.N = 300, c.H = 40, c.V = 1000, c.chunk = 64;
  check_deterministic<float>(c);
  check_deterministic<bfloat16_t>(c);
}

// Bad calls: a status naming the argument, and nothing written.
struct Bad {
  const char* what;
  Status want;
  const char* name;  // must appear in the message
  std::function<void(LinearXentProblem<float, ClassTargets<int64_t>>&, LinearXentOutputs<float>&, size_t&, void*&,
                     int64_t&)>
      mutate;
};

TEST(LinearXentHost, BadCallsWriteNothing) {
  const int64_t N = 6, H = 5, V = 9;
  std::vector<float> h(N * H, 0.5f), w(V * H, 0.25f), b(V, 0.1f);
  std::vector<int64_t> y = {0, 1, 2, 3, 8, -100};
  const std::vector<Bad> bads = {
      {"weight_dim differs", Status::kInvalidSize, "problem.weight_dim",
       [](auto& p, auto&, size_t&, void*&, int64_t&) { p.weight_dim = p.hidden_dim + 1; }},
      {"bias_len differs", Status::kInvalidSize, "problem.bias_len",
       [](auto& p, auto&, size_t&, void*&, int64_t&) { p.bias_len = p.vocab - 1; }},
      {"null hidden", Status::kNullPointer, "problem.hidden",
       [](auto& p, auto&, size_t&, void*&, int64_t&) { p.hidden = nullptr; }},
      {"null weight", Status::kNullPointer, "problem.weight",
       [](auto& p, auto&, size_t&, void*&, int64_t&) { p.weight = nullptr; }},
      {"null targets", Status::kNullPointer, "problem.targets.index",
       [](auto& p, auto&, size_t&, void*&, int64_t&) { p.targets.index = nullptr; }},
      {"dbias without bias", Status::kInvalidValue, "out.dbias",
       [](auto& p, auto&, size_t&, void*&, int64_t&) { p.bias = nullptr; }},
      {"ld_hidden too small", Status::kInvalidSize, "problem.ld_hidden",
       [](auto& p, auto&, size_t&, void*&, int64_t&) { p.ld_hidden = p.hidden_dim - 1; }},
      {"ld_dweight too small", Status::kInvalidSize, "out.ld_dweight",
       [](auto&, auto& o, size_t&, void*&, int64_t&) { o.ld_dweight = 2; }},
      {"bad alpha", Status::kInvalidValue, "problem.alpha",
       [](auto& p, auto&, size_t&, void*&, int64_t&) { p.alpha = -1.f; }},
      {"bad GradType", Status::kInvalidValue, "out.dweight_type",
       [](auto&, auto& o, size_t&, void*&, int64_t&) {
         int v = 7;
         std::memcpy(&o.dweight_type, &v, sizeof v);
       }},
      {"dhidden overlaps dweight", Status::kInvalidLayout, "out.dweight",
       [](auto&, auto& o, size_t&, void*&, int64_t&) { o.dweight = o.dhidden + 3; }},
      {"dweight over weight", Status::kInvalidLayout, "problem.weight",
       [](auto& p, auto& o, size_t&, void*&, int64_t&) { o.dweight = const_cast<float*>(p.weight); }},
      {"loss over hidden", Status::kInvalidLayout, "problem.hidden",
       [](auto& p, auto& o, size_t&, void*&, int64_t&) { o.loss = const_cast<float*>(p.hidden); }},
      {"workspace over dhidden", Status::kInvalidLayout, "workspace",
       [](auto&, auto& o, size_t&, void*& ws, int64_t&) { ws = o.dhidden; }},
      {"workspace too small", Status::kWorkspaceTooSmall, "linear_xent_workspace_bytes()",
       [](auto&, auto&, size_t& bytes, void*&, int64_t&) { bytes -= 1; }},
      {"null workspace", Status::kWorkspaceTooSmall, "linear_xent_workspace_bytes()",
       [](auto&, auto&, size_t&, void*& ws, int64_t&) { ws = nullptr; }},
      {"negative chunk", Status::kInvalidSize, "chunk_rows",
       [](auto&, auto&, size_t&, void*&, int64_t& chunk) { chunk = -1; }},
      {"class index out of range", Status::kInvalidTarget, "problem.targets.index",
       [](auto& p, auto&, size_t&, void*&, int64_t&) { const_cast<int64_t*>(p.targets.index)[4] = 9; }},
      {"negative class weight", Status::kInvalidValue, "problem.class_weight",
       [](auto& p, auto&, size_t&, void*&, int64_t&) {
         static std::vector<float> cw = {1, 1, 1, 1, 1, -1, 1, 1, 1};
         p.class_weight = cw.data();
       }},
      {"NaN class weight", Status::kInvalidValue, "problem.class_weight",
       [](auto& p, auto&, size_t&, void*&, int64_t&) {
         static std::vector<float> cw = {1, 1, 1, 1, 1, 1, 1, 1, std::nanf("")};
         p.class_weight = cw.data();
       }},
      {"negative softcap", Status::kInvalidValue, "problem.softcap",
       [](auto& p, auto&, size_t&, void*&, int64_t&) { p.softcap = -2.f; }},
      {"infinite z-loss scale", Status::kInvalidValue, "problem.z_loss_scale",
       [](auto& p, auto&, size_t&, void*&, int64_t&) { p.z_loss_scale = INFINITY; }},
      {"a shard on the whole op", Status::kInvalidSize, "problem.vocab_offset",
       [](auto& p, auto&, size_t&, void*&, int64_t&) { p.vocab_offset = 1, p.total_vocab = p.vocab + 1; }},
      {"a shard without total_vocab", Status::kInvalidSize, "problem.total_vocab",
       [](auto& p, auto&, size_t&, void*&, int64_t&) { p.vocab_offset = 1; }},
      {"shard past total_vocab", Status::kInvalidSize, "problem.total_vocab",
       [](auto& p, auto&, size_t&, void*&, int64_t&) { p.vocab_offset = 1, p.total_vocab = p.vocab; }},
      {"argmax over dhidden", Status::kInvalidLayout, "out.argmax",
       [](auto&, auto& o, size_t&, void*&, int64_t&) { o.argmax = reinterpret_cast<int64_t*>(o.dhidden); }},
      {"z_loss over the class weights", Status::kInvalidLayout, "out.z_loss",
       [](auto& p, auto& o, size_t&, void*&, int64_t&) {
         static std::vector<float> cw(9, 1.f);
         p.class_weight = cw.data();
         o.z_loss = cw.data() + 2;
       }},
  };
  for (const Bad& bad : bads) {
    std::vector<int64_t> yy = y;
    LinearXentProblem<float, ClassTargets<int64_t>> p;
    p.hidden = h.data(), p.rows = N, p.hidden_dim = H, p.weight = w.data(), p.vocab = V, p.bias = b.data();
    p.targets = {yy.data(), -100};
    p.alpha = 0.5f;
    std::vector<float> loss(1, -7.f), dh(N * H * 2, -7.f), dw(V * H * 2, -7.f), db(V, -7.f);
    LinearXentOutputs<float> o;
    o.loss = loss.data(), o.dhidden = dh.data(), o.dweight = dw.data(), o.dbias = db.data();
    size_t bytes = 0;
    const int64_t chunk0 = 4;
    ASSERT_EQ(Status::kSuccess, linear_xent_workspace_bytes(Backend::kHost, p, o, chunk0, &bytes));
    std::vector<double> wsv(bytes / sizeof(double) + 64, -7.0);
    void* ws = wsv.data();
    int64_t chunk = chunk0;
    bad.mutate(p, o, bytes, ws, chunk);
    const auto loss0 = loss;
    const auto dh0 = dh, dw0 = dw, db0 = db;
    const Status st = linear_xent_forward_backward(Backend::kHost, p, Upstream{}, o, ws, bytes, chunk);
    EXPECT_EQ(st, bad.want) << bad.what << ": " << last_error_message();
    EXPECT_NE(std::string(last_error_message()).find(bad.name), std::string::npos)
        << bad.what << ": message '" << last_error_message() << "' does not name " << bad.name;
    EXPECT_TRUE(loss == loss0 && dh == dh0 && dw == dw0 && db == db0) << bad.what << ": an output was written";
  }
}

TEST(LinearXentHost, CudaWithoutNvccIsRejected) {
  std::vector<float> h(4, 1.f), w(4, 1.f);
  std::vector<int32_t> y = {0, 1};
  LinearXentProblem<float, ClassTargets<int32_t>> p;
  p.hidden = h.data(), p.rows = 2, p.hidden_dim = 2, p.weight = w.data(), p.vocab = 2, p.targets = {y.data(), -100};
  float loss = -7.f;
  LinearXentOutputs<float> o;
  o.loss = &loss;
  EXPECT_EQ(Status::kNoCudaSupport, linear_xent_forward_backward(Backend::kCuda, p, Upstream{}, o, nullptr, 0));
  EXPECT_EQ(loss, -7.f);
}

// Bounded memory: fp32 logits of N 8192 x V 128256 would take 4.2 GB (and their gradient as much
// again), eight times the 512 MB workspace the op runs in; the chunk is about 1000 rows, so the call
// runs eight or nine chunks and cannot have held the logits. (N 16384 proved the same bound at twice
// the CI time: the claim is workspace << logits, and 4.2 GB against 512 MB already is.) H is small
// to fit CI's time; the reference streams row by row (double), never holding the logits either.
TEST(LinearXentHostBounded, Vocab128256Rows8192In512MB) {
  const int64_t N = 8192, H = 4, V = 128256;
  const size_t budget = size_t{512} * 1000 * 1000;  // 512 MB
  std::mt19937_64 rng(2024);
  std::uniform_real_distribution<double> uni(-1.0, 1.0);
  std::vector<float> h(N * H), w(V * H), b(V);
  for (auto& x : h) x = static_cast<float>(uni(rng));
  for (auto& x : w) x = static_cast<float>(uni(rng));
  for (auto& x : b) x = static_cast<float>(0.5 * uni(rng));
  std::vector<int64_t> y(N);
  for (int64_t r = 0; r < N; ++r) y[r] = (r % 17 == 3) ? -100 : static_cast<int64_t>(rng() % V);
  LinearXentProblem<float, ClassTargets<int64_t>> p;
  p.hidden = h.data(), p.rows = N, p.hidden_dim = H, p.weight = w.data(), p.vocab = V, p.bias = b.data();
  p.targets = {y.data(), -100};
  p.alpha = 0.4f;
  p.reduction = Reduction::kMean;
  float loss = 0.f;
  std::vector<float> dh(N * H), dw(V * H), db(V);
  LinearXentOutputs<float> o;
  o.loss = &loss, o.dhidden = dh.data(), o.dweight = dw.data(), o.dbias = db.data();
  int64_t chunk = 0;
  ASSERT_EQ(Status::kSuccess, linear_xent_chunk_rows(Backend::kHost, p, o, budget, &chunk)) << last_error_message();
  size_t bytes = 0;
  ASSERT_EQ(Status::kSuccess, linear_xent_workspace_bytes(Backend::kHost, p, o, chunk, &bytes));
  ASSERT_LE(bytes, budget);
  ASSERT_LT(chunk, N);  // really chunked
  ASSERT_LT(bytes * 8, static_cast<size_t>(N) * static_cast<size_t>(V) * sizeof(float));  // logits >= 8x the workspace
  std::vector<unsigned char> ws(bytes);
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(Status::kSuccess, linear_xent_forward_backward(Backend::kHost, p, Upstream{}, o, ws.data(), bytes, chunk))
      << last_error_message();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("bounded: chunk %lld rows, workspace %.1f MB, op %.1f s\n", static_cast<long long>(chunk),
              static_cast<double>(bytes) / 1e6, secs);
#if defined(__linux__)
  // The process's peak resident memory: the workspace, the inputs and the outputs (about 0.53 GB),
  // far below the 4.2 GB of logits (checked before the reference adds its own buffers).
  struct rusage ru;
  ASSERT_EQ(0, getrusage(RUSAGE_SELF, &ru));
  const double peak = static_cast<double>(ru.ru_maxrss) * 1024.0;
  std::printf("bounded: peak resident %.2f GB (logits %.2f GB)\n", peak / 1e9,
              static_cast<double>(N) * static_cast<double>(V) * 4.0 / 1e9);
  EXPECT_LT(peak, 1.5e9);
#endif
  // Streaming float64 reference.
  int64_t nv = 0;
  for (int64_t r = 0; r < N; ++r) nv += y[r] != -100;
  const double g = 1.0 / static_cast<double>(nv), alpha = 0.4;
  std::vector<double> rdw(V * H, 0.0), rdb(V, 0.0), adw(V * H, 0.0), adb(V, 0.0), z(V), ea(V);
  double rloss = 0.0;
  int bad = 0;
  for (int64_t r = 0; r < N; ++r) {
    if (y[r] == -100) {
      for (int64_t k = 0; k < H; ++k) bad += dh[r * H + k] != 0.f;
      continue;
    }
    double m = -1e300;
    for (int64_t v = 0; v < V; ++v) {
      double s = b[v];
      for (int64_t k = 0; k < H; ++k) s += static_cast<double>(h[r * H + k]) * w[v * H + k];
      z[v] = s;
      m = std::max(m, s);
    }
    double s = 0.0, sa = 0.0;
    for (int64_t v = 0; v < V; ++v) {
      s += std::exp(z[v] - m);
      ea[v] = std::exp(alpha * (z[v] - m));
      sa += ea[v];
    }
    rloss += m + std::log(s) - z[y[r]];
    double rdh[4] = {0, 0, 0, 0}, adh[4] = {0, 0, 0, 0};
    for (int64_t v = 0; v < V; ++v) {
      const double G = g * (ea[v] / sa - (v == y[r] ? 1.0 : 0.0));
      for (int64_t k = 0; k < H; ++k) {
        rdh[k] += G * w[v * H + k];
        adh[k] += std::fabs(G * w[v * H + k]);
        rdw[v * H + k] += G * h[r * H + k];
        adw[v * H + k] += std::fabs(G * h[r * H + k]);
      }
      rdb[v] += G;
      adb[v] += std::fabs(G);
    }
    for (int64_t k = 0; k < H; ++k)
      if (!(std::fabs(dh[r * H + k] - rdh[k]) <= grad_tol(adh[k], rdh[k], 0, V, alpha, 3e-6, 0, 1e-40))) ++bad;
  }
  rloss /= static_cast<double>(nv);
  EXPECT_NEAR(loss, rloss, 1e-5 * std::fabs(rloss) + 1e-6);
  for (int64_t i = 0; i < V * H; ++i)
    if (!(std::fabs(dw[i] - rdw[i]) <= grad_tol(adw[i], rdw[i], 0, N, alpha, 3e-6, 0, 1e-40))) ++bad;
  for (int64_t v = 0; v < V; ++v)
    if (!(std::fabs(db[v] - rdb[v]) <= grad_tol(adb[v], rdb[v], 0, N, alpha, 3e-6, 0, 1e-40))) ++bad;
  EXPECT_EQ(bad, 0);
}

}  // namespace
