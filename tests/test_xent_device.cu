// Device (CUDA backend) tests of the PGT cross-entropy: the same case generator, reference and
// checks as the host tests (xent_cases.hpp), run on Backend::kCuda with device buffers. Outputs are
// poisoned with cudaMemset(0xFF) before each run and every element is copied back and checked.
// Without a usable GPU every test skips with the reason (GTEST_SKIP), never fails or exits.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "device_mem.cuh"
#include "reference.hpp"
#include "xent_cases.hpp"

namespace pgtest {
namespace {


template <class C, class F>
void for_cases(const std::vector<C>& cases, F fn) {
  const ::testing::TestResult* res = ::testing::UnitTest::GetInstance()->current_test_info()->result();
  int failing = 0;
  for (const C& c : cases) {
    const int before = res->total_part_count();
    fn(c);
    if (res->total_part_count() != before && ++failing >= 6) {
      ADD_FAILURE() << "stopping after " << failing << " failing cases";
      return;
    }
  }
}

template <class T>
class XentDevice : public ::testing::Test {
 protected:
  void SetUp() override { PG_REQUIRE_GPU(); }
};
struct DtypeNames {
  template <class T>
  static std::string GetName(int) {
    return DT<T>::name;
  }
};
using Dtypes = ::testing::Types<float, half_t, bfloat16_t>;
TYPED_TEST_SUITE(XentDevice, Dtypes, DtypeNames);

TYPED_TEST(XentDevice, ForwardBackwardEveryAlphaSmoothingReductionTarget) {
  for_cases(cross_cases(), [](const Case& c) { check_fused_case<TypeParam, DeviceMem>(c); });
}

TYPED_TEST(XentDevice, ForwardBackwardVocabularySizes) {
  for_cases(shape_cases(), [](const Case& c) { check_fused_case<TypeParam, DeviceMem>(c); });
}

TYPED_TEST(XentDevice, ForwardBackwardEdgeSemantics) {
  for_cases(special_cases(), [](const Case& c) { check_fused_case<TypeParam, DeviceMem>(c); });
}

TYPED_TEST(XentDevice, BackwardWithSavedLseAlpha) {
  for_cases(backward_cases(), [](const Case& c) { check_backward_case<TypeParam, DeviceMem>(c, true, false); });
}

TYPED_TEST(XentDevice, BackwardWithoutSavedStats) {
  for_cases(backward_cases(), [](const Case& c) { check_backward_case<TypeParam, DeviceMem>(c, false, false); });
}

TYPED_TEST(XentDevice, SplitFormEqualsUnsplit) {
  const TargetKind tks[] = {TargetKind::kInt32, TargetKind::kInt64, TargetKind::kDense};
  int i = 0;
  std::vector<std::pair<Case, std::vector<int64_t>>> v;
  for (int64_t C : {3, 10, 1025, 50257})
    for (const auto& w : shard_layouts(C)) {
      Case c;
      c.cols = C;
      c.rows = 8;
      c.alpha = all_alphas()[(i * 2) % all_alphas().size()];
      c.eps = (i % 2) ? 0.1f : 0.f;
      c.red = static_cast<Reduction>(i % 3);
      c.targets = tks[i % 3];
      c.in_place = (i % 3) == 1;
      c.ld_pad = (i % 2) ? 3 : 0;
      c.offset = (i % 4) == 1;
      c.up = static_cast<UpMode>(i % 3);
      c.target_shards = w;
      c.seed = 7000 + i;
      v.push_back({c, w});
      ++i;
    }
  for_cases(v, [](const std::pair<Case, std::vector<int64_t>>& cw) {
    check_shard_case<TypeParam, DeviceMem>(cw.first, cw.second);
  });
}

TYPED_TEST(XentDevice, HookFromIncomingGradient) {
  std::vector<HookCase> v;
  int i = 0;
  for (int64_t C : {2, 10, 333, 1500, 40000})
    for (float a : {0.f, 0.25f, 1.f, 2.f}) {
      HookCase h;
      h.cols = C;
      h.rows = C > 5000 ? 5 : 6;
      h.alpha = a;
      h.eps = (i % 3 == 1 && a != 0.f) ? 0.1f : 0.f;  // see the note on alpha = 0 in test_xent.cpp
      h.targets = static_cast<TargetKind>(i % 3);
      h.in_place = (i % 2) == 1;
      h.ld_pad = (i % 4 == 2) ? 2 : 0;
      h.offset = (i % 4 == 3);
      h.row_scale = (i % 3 == 2);
      h.special_rows = (i % 2 == 0);
      h.seed = 8000 + i;
      v.push_back(h);
      ++i;
    }
  for_cases(v, [](const HookCase& h) { check_hook_case<TypeParam, DeviceMem>(h, false); });
}

// Determinism: no floating-point atomics, fixed reduction order -> bitwise equal results.
TYPED_TEST(XentDevice, TwoRunsAreBitwiseEqual) {
  std::vector<Case> v = backward_cases();
  for (Case c : shape_cases())
    if (c.cols >= 32000) v.push_back(c);
  for_cases(v, [](const Case& c) { check_fused_case<TypeParam, DeviceMem>(c, true); });
}

// Out-of-range class indices on the device: counted, that row's loss and gradient NaN, others right.
TYPED_TEST(XentDevice, BadTargetsAreCountedAndPoisonOnlyTheirRow) {
  std::vector<Case> v;
  int i = 0;
  for (int64_t C : {10, 1025, 50257})
    for (Reduction red : {Reduction::kNone, Reduction::kSum}) {
      Case c;
      c.cols = C;
      c.rows = 6;
      c.red = red;
      c.targets = (i % 2) ? TargetKind::kInt64 : TargetKind::kInt32;
      c.bad_target_rows = {1, 2, 4};
      c.ignore_frac = 0.2;
      c.alpha = 0.5f;
      c.seed = 9000 + i;
      v.push_back(c);
      ++i;
    }
  for_cases(v, [](const Case& c) { check_fused_case<TypeParam, DeviceMem>(c); });
}

// Dense target rows that do not sum to 1 (mass 2, 0.5, rows of zeros): the A = sum q rule of
// docs/design.md §2.5 in the fused, saved-statistics and split kernels without options (the kernels
// with options run in the Options tests below).
std::vector<Case> device_mass_cases() {
  std::vector<Case> v;
  for (Case c : option_cases())
    if (!c.options() && c.targets == TargetKind::kDense) {
      c.want_accuracy = false;
      v.push_back(c);
    }
  return v;
}

TYPED_TEST(XentDevice, DenseTargetMassRule) {
  for_cases(device_mass_cases(), [](const Case& c) {
    check_fused_case<TypeParam, DeviceMem>(c);
    check_backward_case<TypeParam, DeviceMem>(c, true, false);
    check_shard_case<TypeParam, DeviceMem>(c, shard_layouts(c.cols)[1]);
  });
}

// docs/design.md §2.5 on the CUDA backend: class weights, z-loss, softcapping and the accuracy
// outputs, alone and combined, over every target kind, reduction, alpha in {0, 0.3, 1}, in place and
// out of place (the host tests' table, option_cases()).
TYPED_TEST(XentDevice, ForwardBackwardOptions) {
  for_cases(option_cases(), [](const Case& c) { check_fused_case<TypeParam, DeviceMem>(c); });
}

// Backward with a saved lse_alpha (the target mass from the targets and weights; with a z-loss the
// statistics are recomputed) and without saved statistics.
TYPED_TEST(XentDevice, BackwardOptionsSavedAndRecomputed) {
  for_cases(option_cases(), [](const Case& c) {
    check_backward_case<TypeParam, DeviceMem>(c, true, false);
    check_backward_case<TypeParam, DeviceMem>(c, false, false);
  });
}

// The split form with the weights sharded like the logits (statistics with t, a, w and argmax; the
// weighted kMean denominator from the merged statistics' w).
TYPED_TEST(XentDevice, SplitFormOptionsEqualsUnsplit) {
  for_cases(shard_option_cases(), [](const std::pair<Case, std::vector<int64_t>>& cw) {
    check_shard_case<TypeParam, DeviceMem>(cw.first, cw.second);
  });
}

// Determinism with options on: no floating-point atomics, fixed reduction order.
TYPED_TEST(XentDevice, OptionsTwoRunsAreBitwiseEqual) {
  std::vector<Case> v;
  int i = 0;
  for (const Case& c : option_cases())
    if (i++ % 4 == 0) v.push_back(c);
  for_cases(v, [](const Case& c) { check_fused_case<TypeParam, DeviceMem>(c, true); });
}

// A bad class weight (NaN, infinite or negative) cannot be rejected without reading device memory
// from the host: every row that uses it gets a NaN loss and gradient and is counted in
// bad_target_count (docs/design.md §8); with kMean the denominator is NaN, so every row is NaN. Rows
// that do not use it are exact. Never a finite wrong answer.
TEST(XentDeviceApi, BadWeightsPoisonTheRowsThatUseThemAndAreCounted) {
  PG_REQUIRE_GPU();
  const float bads[] = {-1.f, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()};
  int k = 0;
  for (float bad : bads)
    for (Reduction red : {Reduction::kNone, Reduction::kMean})
      for (float eps : {0.f, 0.1f}) {
        Case c;
        c.rows = 6;
        c.cols = 50 + 517 * (k % 2);  // a warp per row and a block per row
        c.red = red;
        c.eps = eps;
        c.alpha = 0.3f;
        c.weights = true;
        c.targets = TargetKind::kInt32;
        c.seed = 9500 + k++;
        CaseData<float> d = make_case<float>(c);
        // Rows 1 and 3 have the target class whose weight is bad; row 4 is ignored.
        const int32_t ybad = d.y32[1];
        d.y32[3] = ybad;
        d.ref.y[3] = ybad;
        d.y32[4] = static_cast<int32_t>(c.ignore_index);
        d.ref.y[4] = c.ignore_index;
        for (int64_t r : {0, 2, 5})
          if (d.y32[r] == ybad) {
            d.y32[r] = (ybad + 1) % static_cast<int32_t>(c.cols);
            d.ref.y[r] = d.y32[r];
          }
        if (d.weight[(ybad + 1) % c.cols] == 0.f) d.weight[(ybad + 1) % c.cols] = 0.5f;
        for (int64_t j = 0; j < c.cols; ++j) d.ref.w[j] = d.weight[j];
        d.ref.w[ybad] = 1.0;  // the reference of the rows that do not use the bad weight
        const pgref::Result R = pgref::compute(d.ref);
        d.weight[ybad] = bad;

        DeviceMem mem;
        std::vector<float> loss(c.red == Reduction::kNone ? c.rows : 1), grad(d.logits.size());
        std::vector<int32_t> count(1, 0);
        pg::XentProblem<float, pg::ClassTargets<int32_t>> p;
        p.logits = mem.in(d.logits);
        p.rows = c.rows;
        p.cols = c.cols;
        p.targets.index = mem.in(d.y32);
        p.targets.ignore_index = c.ignore_index;
        p.alpha = c.alpha;
        p.label_smoothing = c.eps;
        p.reduction = c.red;
        p.weight = mem.in(d.weight);
        p.bad_target_count = mem.in(count);
        pg::XentOutputs<float> o;
        o.loss = mem.out(loss);
        o.dlogits = mem.out(grad);
        const size_t wsb = pg::xent_workspace_bytes(c.rows, c.red);
        void* ws = wsb ? mem.workspace(wsb) : nullptr;
        ASSERT_EQ(pg::xent_forward_backward(Backend::kCuda, p, pg::Upstream{}, o, ws, wsb), Status::kSuccess)
            << pg::last_error_message();
        mem.fetch(loss, o.loss);
        mem.fetch(grad, o.dlogits);
        mem.fetch(count, p.bad_target_count);
        const std::string what = std::string("bad weight ") + std::to_string(bad) + " " + c.str();
        // With smoothing every non-ignored row uses every weight.
        const auto uses_bad = [&](int64_t r) { return r != 4 && (eps != 0.f || r == 1 || r == 3); };
        int expect_count = 0;
        for (int64_t r = 0; r < c.rows; ++r) expect_count += uses_bad(r) ? 1 : 0;
        EXPECT_EQ(count[0], expect_count) << what;
        const bool all_nan = red == Reduction::kMean;
        for (int64_t r = 0; r < c.rows; ++r) {
          for (int64_t j = 0; j < c.cols; ++j) {
            const float g = grad[r * c.cols + j];
            if (r == 4) {
              EXPECT_EQ(g, 0.f) << what << " ignored row " << j;
            } else if (all_nan || uses_bad(r)) {
              EXPECT_TRUE(std::isnan(g)) << what << " row " << r << " col " << j << " = " << g;
            } else {
              const double ref = R.grad[r * c.cols + j];
              EXPECT_NEAR(g, ref, 1e-5 * (1.0 + std::fabs(ref))) << what << " row " << r << " col " << j;
            }
          }
          if (red == Reduction::kNone) {
            if (r == 4) EXPECT_EQ(loss[r], 0.f) << what;
            else if (uses_bad(r)) EXPECT_TRUE(std::isnan(loss[r])) << what << " loss row " << r << " = " << loss[r];
            else EXPECT_NEAR(loss[r], R.loss_row[r], 1e-5 * (1.0 + std::fabs(R.loss_row[r]))) << what << " row " << r;
          }
        }
        if (red == Reduction::kMean) EXPECT_TRUE(std::isnan(loss[0])) << what << " loss = " << loss[0];
      }
}

// The workspace size query is honoured: one byte less is rejected before anything is written.
TEST(XentDeviceApi, WorkspaceTooSmallIsRejected) {
  PG_REQUIRE_GPU();
  for (Reduction red : {Reduction::kMean, Reduction::kSum}) {
    Case c;
    c.rows = 5;
    c.cols = 100;
    c.red = red;
    CaseData<float> d = make_case<float>(c);
    DeviceMem mem;
    std::vector<float> loss(2), grad(d.logits.size());
    pg::XentProblem<float, pg::ClassTargets<int32_t>> p;
    p.logits = mem.in(d.logits);
    p.rows = c.rows;
    p.cols = c.cols;
    p.targets.index = mem.in(d.y32);
    p.reduction = red;
    pg::XentOutputs<float> o;
    o.loss = mem.out(loss);
    o.dlogits = mem.out(grad);
    const size_t need = pg::xent_workspace_bytes(c.rows, red);
    ASSERT_GT(need, 0u);
    void* ws = mem.workspace(need);
    EXPECT_EQ(pg::xent_forward_backward(Backend::kCuda, p, pg::Upstream{}, o, ws, need - 1), Status::kWorkspaceTooSmall);
    EXPECT_NE(std::string(pg::last_error_message()).find("workspace"), std::string::npos);
    EXPECT_EQ(pg::xent_forward_backward(Backend::kCuda, p, pg::Upstream{}, o, nullptr, 0), Status::kWorkspaceTooSmall);
    mem.fetch(loss, o.loss);
    mem.fetch(grad, o.dlogits);
    for (float v : loss) EXPECT_TRUE(is_poison(v));
    for (float v : grad) EXPECT_TRUE(is_poison(v));
    EXPECT_EQ(pg::xent_workspace_bytes(c.rows, Reduction::kNone), 0u);
  }
}

// rows * ld > 2^31 elements: 64-bit indexing. All logits 0 except three random rows (the first,
// the one straddling element 2^31, the last); checked rows are copied back and compared.
TEST(XentDeviceApi, MoreThan2To31Elements) {
  PG_REQUIRE_GPU();
  using T = half_t;
  const int64_t C = 128256, rows = (int64_t{1} << 31) / C + 2;  // 16745 rows: 2,147,646,720 elements
  const int64_t n = rows * C;
  ASSERT_GT(n, int64_t{1} << 31);
  const size_t bytes = static_cast<size_t>(n) * sizeof(T);
  size_t free_b = 0, total_b = 0;
  PG_CUDA_EXPECT(cudaMemGetInfo(&free_b, &total_b));
  if (free_b < bytes + (size_t{256} << 20)) GTEST_SKIP() << "needs " << (bytes >> 20) << " MiB free, have " << (free_b >> 20);

  const int64_t straddle = (int64_t{1} << 31) / C;  // row holding element 2^31
  const std::vector<int64_t> random_rows = {0, straddle, rows - 1};
  const std::vector<int64_t> const_rows = {1, rows / 2, straddle - 1};
  Case c;
  c.rows = 3;
  c.cols = C;
  c.alpha = 0.5f;
  c.red = Reduction::kNone;
  c.targets = TargetKind::kInt64;
  c.seed = 424242;
  CaseData<T> d = make_case<T>(c);

  std::vector<int64_t> y(rows);
  for (int64_t r = 0; r < rows; ++r) y[r] = (r * 7919) % C;
  for (int k = 0; k < 3; ++k) y[random_rows[k]] = d.y64[k];

  T* buf = nullptr;
  PG_CUDA_EXPECT(cudaMalloc(&buf, bytes));
  ASSERT_NE(buf, nullptr);
  DeviceMem mem;
  mem.allocs.push_back(buf);
  PG_CUDA_EXPECT(cudaMemset(buf, 0, bytes));  // half 0x0000 = 0.0
  for (int k = 0; k < 3; ++k)
    PG_CUDA_EXPECT(cudaMemcpy(buf + random_rows[k] * C, &d.logits[k * C], C * sizeof(T), cudaMemcpyHostToDevice));
  std::vector<float> loss(rows + kGuard);
  pg::XentProblem<T, pg::ClassTargets<int64_t>> p;
  p.logits = buf;
  p.rows = rows;
  p.cols = C;
  p.targets.index = mem.in(y);
  p.alpha = c.alpha;
  p.reduction = Reduction::kNone;
  pg::XentOutputs<T> o;
  o.loss = mem.out(loss);
  o.dlogits = buf;  // in place
  ASSERT_EQ(pg::xent_forward_backward(Backend::kCuda, p, pg::Upstream{}, o), Status::kSuccess) << pg::last_error_message();
  mem.fetch(loss, o.loss);

  // Reference of the six checked rows.
  pgref::Problem P = d.ref;
  P.rows = 6;
  P.y.clear();
  for (int k = 0; k < 3; ++k) P.y.push_back(y[random_rows[k]]);
  for (int64_t r : const_rows) P.y.push_back(y[r]);
  P.z.resize(6 * C, 0.0);
  const pgref::Result R = pgref::compute(P);
  CaseData<T> dd = d;
  dd.ref = P;
  Checker ck("rows*ld > 2^31 (fp16, C = 128256, in place)");
  std::vector<int64_t> all = random_rows;
  all.insert(all.end(), const_rows.begin(), const_rows.end());
  for (int k = 0; k < 6; ++k) {
    std::vector<T> row(C);
    PG_CUDA_EXPECT(cudaMemcpy(row.data(), buf + all[k] * C, C * sizeof(T), cudaMemcpyDeviceToHost));
    for (int64_t j = 0; j < C; ++j) {
      const double ref = R.grad[k * C + j];
      ck.value("grad(row " + std::to_string(all[k]) + ", " + std::to_string(j) + ")", DT<T>::decode(row[j]), ref,
               grad_tol<T>(P, R, k, j, StatsMode::kFused, ref));
    }
    ck.value("loss(row " + std::to_string(all[k]) + ")", loss[all[k]], R.loss_row[k], loss_row_tol(R, k));
  }
  // Every constant row's loss is log C (lse = log C, sum q z = 0).
  for (int64_t r = 0; r < rows; ++r) {
    if (r == random_rows[0] || r == random_rows[1] || r == random_rows[2]) continue;
    ck.value("loss(row " + std::to_string(r) + ")", loss[r], std::log(static_cast<double>(C)), kRel0 * 2);
  }
  for (int64_t i = rows; i < rows + kGuard; ++i)
    if (!is_poison(loss[i])) ck.fail("loss written past the end");
}

// A forward_backward captured in a CUDA graph replays correctly, also after its inputs change.
TEST(XentDeviceApi, CudaGraphCaptureReplays) {
  PG_REQUIRE_GPU();
  using T = bfloat16_t;
  Case c;
  c.rows = 16;
  c.cols = 1000;
  c.red = Reduction::kMean;
  c.up = UpMode::kScalar;
  c.alpha = 0.3f;
  c.eps = 0.1f;
  c.ignore_frac = 0.2;
  c.targets = TargetKind::kInt64;
  c.seed = 31337;
  CaseData<T> d1 = make_case<T>(c);
  Case c2 = c;
  c2.seed = 31338;
  CaseData<T> d2 = make_case<T>(c2);

  cudaStream_t s = nullptr;
  PG_CUDA_EXPECT(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  DeviceMem mem;
  mem.s = s;
  T* lg = mem.in(d1.logits);
  int64_t* yd = mem.in(d1.y64);
  float* upd = mem.in(d1.upv);
  FusedOut<T> o;
  o.buf.assign(d1.logits.size(), poison_value<T>());
  o.loss.assign(1 + kGuard, poison_value<float>());
  o.lse.assign(c.rows + kGuard, poison_value<float>());
  o.lse_a.assign(c.rows + kGuard, poison_value<float>());
  T* gd = mem.out(o.buf);
  float* lossd = mem.out(o.loss);
  float* lsed = mem.out(o.lse);
  float* lsead = mem.out(o.lse_a);
  const size_t wsb = pg::xent_workspace_bytes(c.rows, c.red);
  void* ws = mem.workspace(wsb);

  pg::XentProblem<T, pg::ClassTargets<int64_t>> p;
  p.logits = lg;
  p.rows = c.rows;
  p.cols = c.cols;
  p.targets.index = yd;
  p.targets.ignore_index = c.ignore_index;
  p.alpha = c.alpha;
  p.label_smoothing = c.eps;
  p.reduction = c.red;
  pg::XentOutputs<T> out;
  out.loss = lossd;
  out.lse = lsed;
  out.lse_alpha = lsead;
  out.dlogits = gd;

  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  PG_CUDA_EXPECT(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  const Status st = pg::xent_forward_backward(Backend::kCuda, p, pg::Upstream{c.up_scale, upd}, out, ws, wsb,
                                              reinterpret_cast<pg::stream_t>(s));
  PG_CUDA_EXPECT(cudaStreamEndCapture(s, &graph));
  ASSERT_EQ(st, Status::kSuccess) << pg::last_error_message();
  ASSERT_NE(graph, nullptr);
  PG_CUDA_EXPECT(cudaGraphInstantiate(&exec, graph, 0));

  for (int replay = 0; replay < 3; ++replay) {
    CaseData<T>& d = (replay == 1) ? d2 : d1;
    PG_CUDA_EXPECT(cudaMemcpyAsync(lg, d.logits.data(), d.logits.size() * sizeof(T), cudaMemcpyHostToDevice, s));
    PG_CUDA_EXPECT(cudaMemcpyAsync(yd, d.y64.data(), d.y64.size() * sizeof(int64_t), cudaMemcpyHostToDevice, s));
    PG_CUDA_EXPECT(cudaMemcpyAsync(upd, d.upv.data(), d.upv.size() * sizeof(float), cudaMemcpyHostToDevice, s));
    PG_CUDA_EXPECT(cudaMemsetAsync(gd, 0xFF, o.buf.size() * sizeof(T), s));
    PG_CUDA_EXPECT(cudaMemsetAsync(lossd, 0xFF, o.loss.size() * sizeof(float), s));
    PG_CUDA_EXPECT(cudaMemsetAsync(lsed, 0xFF, o.lse.size() * sizeof(float), s));
    PG_CUDA_EXPECT(cudaMemsetAsync(lsead, 0xFF, o.lse_a.size() * sizeof(float), s));
    PG_CUDA_EXPECT(cudaGraphLaunch(exec, s));
    PG_CUDA_EXPECT(cudaStreamSynchronize(s));
    FusedOut<T> r = o;
    mem.fetch(r.buf, gd);
    mem.fetch(r.loss, lossd);
    mem.fetch(r.lse, lsed);
    mem.fetch(r.lse_a, lsead);
    r.before.assign(r.buf.size(), poison_value<T>());
    r.logits_after = d.logits;
    const pgref::Result R = pgref::compute(d.ref);
    Checker ck("CUDA graph replay " + std::to_string(replay) + " " + c.str());
    check_fused_result(ck, d, R, r);
  }
  if (exec) cudaGraphExecDestroy(exec);
  if (graph) cudaGraphDestroy(graph);
  PG_CUDA_EXPECT(cudaStreamSynchronize(s));
  mem.s = nullptr;
  cudaStreamDestroy(s);
}

}  // namespace
}  // namespace pgtest
