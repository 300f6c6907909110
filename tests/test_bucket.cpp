// Host-backend tests of the gradient-bucket transforms (docs/design.md §2.4) against the float64
// reference (reference_bucket.hpp): power (L1 / L2 / no preservation), clip_norm, AGC (+ power per
// unit), per tensor and per bucket, separate pointers and flat buckets, fp32 / fp16 / bf16 gradients
// (AGC parameters in the gradient's dtype or fp32), non-finite inputs, 1000 tiny tensors, the plan's
// index math past 2^31 elements, determinism, and a table of bad calls that must write nothing.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "bucket_cases.hpp"

namespace pgtest {
namespace {

template <class T>
class BucketHost : public ::testing::Test {};
struct BucketDtypeNames {
  template <class T>
  static std::string GetName(int) {
    return DT<T>::name;
  }
};
using BucketDtypes = ::testing::Types<float, half_t, bfloat16_t>;
TYPED_TEST_SUITE(BucketHost, BucketDtypes, BucketDtypeNames);

TYPED_TEST(BucketHost, Power) {
  for (const BucketCase& c : power_cases()) check_bucket_case<TypeParam, TypeParam, HostMem>(c);
}
TYPED_TEST(BucketHost, ClipNorm) {
  for (const BucketCase& c : clip_cases()) check_bucket_case<TypeParam, TypeParam, HostMem>(c);
}
TYPED_TEST(BucketHost, Agc) {
  for (const BucketCase& c : agc_cases()) check_bucket_case<TypeParam, TypeParam, HostMem>(c);
}
TYPED_TEST(BucketHost, AgcFloatParams) {
  for (const BucketCase& c : agc_cases()) check_bucket_case<TypeParam, float, HostMem>(c);
}
TYPED_TEST(BucketHost, NonFinite) {
  for (const BucketCase& c : nonfinite_cases()) check_bucket_case<TypeParam, TypeParam, HostMem>(c);
}
TYPED_TEST(BucketHost, TinyMagnitudes) {
  for (const BucketCase& c : tiny_cases<TypeParam>()) check_bucket_case<TypeParam, TypeParam, HostMem>(c);
}
TYPED_TEST(BucketHost, ManyTinyTensors) {
  for (const BucketCase& c : many_tiny_cases()) check_bucket_case<TypeParam, TypeParam, HostMem>(c);
}

// beta = 1 without preservation, and clip_norm below its threshold, leave every bit unchanged.
TYPED_TEST(BucketHost, IdentityIsBitExact) {
  for (BOp op : {BOp::kPower, BOp::kClip, BOp::kAgc}) {
    BucketCase c;
    c.shapes = mixed_shapes();
    c.op = op;
    c.max_norm = 1e30f;
    c.clip = 1e30f;
    HostMem m;
    BucketCase gen = c;
    gen.op = BOp::kPower;  // plain random gradients (AGC's generator scales them around the limit)
    auto d = make_bucket_data<TypeParam, TypeParam>(gen);
    const auto before = d.grad;
    std::vector<float> norms(op == BOp::kClip ? c.shapes.size() : 0);
    int32_t flags = -1;
    ASSERT_EQ((run_bucket_op<TypeParam, TypeParam, HostMem>(c, m, d, norms, flags)), Status::kSuccess);
    for (size_t i = 0; i < before.size(); ++i) ASSERT_TRUE(same_bits(before[i], d.grad[i])) << "op " << int(op) << " i " << i;
  }
}

// All-zero tensors: power keeps zeros (K = 1 when the powered sum is 0), clip reports norm 0.
TYPED_TEST(BucketHost, ZeroTensors) {
  using T = TypeParam;
  std::vector<T> g(100, DT<T>::encode(0.0));
  BucketTensor<T> t[2] = {{g.data(), nullptr, 60, 0}, {g.data() + 60, nullptr, 40, 0}};
  std::vector<PlanBlock> plan(pg::bucket_plan_bytes(2) / 16 + 1);
  ASSERT_EQ(pg::bucket_plan_build<T>(Backend::kHost, t, 2, BucketUnits::kTensor, plan.data(), plan.size() * 16),
            Status::kSuccess);
  int32_t flags = -1;
  ASSERT_EQ(pg::bucket_power<T>(plan.data(), plan.size() * 16, 0.5f, NormPreserve::kL1, BucketScope::kTensor, nullptr, 0, &flags),
            Status::kSuccess);
  EXPECT_EQ(flags, 0);
  float norms[2] = {-1, -1};
  ASSERT_EQ(pg::bucket_clip_norm<T>(plan.data(), plan.size() * 16, 1.f, BucketScope::kTensor, norms, nullptr, 0, &flags), Status::kSuccess);
  EXPECT_EQ(norms[0], 0.f);
  EXPECT_EQ(norms[1], 0.f);
  for (const T& v : g) EXPECT_EQ(DT<T>::decode(v), 0.0);
}

// Norm-preserving power on a tensor of equal magnitudes is the identity for any beta whose powers fit
// in double: the coefficient K = S3 / S2 (L1) or sqrt(S0 / S2) (L2) spans hundreds of binary orders
// here (1e5 with beta 10: K = 1e-45; 1e-20 with beta 3: K = 1e40) and must not be rounded or flushed
// in fp32 on its way to the elements.
TEST(BucketHostApi, PowerPreservesEqualMagnitudes) {
  for (const float mag : {1e5f, 1e-20f, 1.f, 3e-30f, 7.5e30f}) {
    for (const float beta : {0.1f, 0.5f, 3.f, 10.f, 25.f}) {
      for (const NormPreserve pr : {NormPreserve::kL1, NormPreserve::kL2}) {
        // The contract's range: S2's summand |g|^beta (L1) or |g|^(2 beta) (L2) inside double's.
        const double log2_summand = (pr == NormPreserve::kL2 ? 2.0 : 1.0) * beta * std::log2(static_cast<double>(mag));
        if (std::fabs(log2_summand) > 1000.0) continue;
        SCOPED_TRACE(::testing::Message() << "magnitude " << mag << " beta " << beta << " preserve " << int(pr));
        std::vector<float> g = {mag, -mag, mag, mag, -mag};
        BucketTensor<float> t{g.data(), nullptr, 5, 0};
        std::vector<PlanBlock> plan(pg::bucket_plan_bytes(1) / 16 + 1);
        ASSERT_EQ(pg::bucket_plan_build<float>(Backend::kHost, &t, 1, BucketUnits::kTensor, plan.data(),
                                               plan.size() * 16),
                  Status::kSuccess);
        int32_t flags = -1;
        ASSERT_EQ(pg::bucket_power<float>(plan.data(), plan.size() * 16, beta, pr, BucketScope::kTensor, nullptr, 0,
                                          &flags),
                  Status::kSuccess);
        EXPECT_EQ(flags, 0);
        for (size_t i = 0; i < g.size(); ++i) {
          const double want = (i == 1 || i == 4) ? -static_cast<double>(mag) : static_cast<double>(mag);
          EXPECT_NEAR(g[i], want, 1.2e-7 * static_cast<double>(mag)) << "element " << i;  // within 1 ulp
        }
      }
    }
  }
}

// Beyond that range (1e-20 with beta 25: |g|^beta = 1e-500) the norm cannot be preserved: flagged.
TEST(BucketHostApi, PowerOutOfRangeIsFlagged) {
  std::vector<float> g = {1e-20f, -1e-20f, 1e-20f};
  BucketTensor<float> t{g.data(), nullptr, 3, 0};
  std::vector<PlanBlock> plan(pg::bucket_plan_bytes(1) / 16 + 1);
  ASSERT_EQ(pg::bucket_plan_build<float>(Backend::kHost, &t, 1, BucketUnits::kTensor, plan.data(), plan.size() * 16),
            Status::kSuccess);
  int32_t flags = 0;
  ASSERT_EQ(pg::bucket_power<float>(plan.data(), plan.size() * 16, 25.f, NormPreserve::kL1, BucketScope::kTensor,
                                    nullptr, 0, &flags),
            Status::kSuccess);
  EXPECT_NE(flags & pg::kBucketFlagNonFinite, 0);
}

// The plan size query never wraps: a count beyond 2^40 gets SIZE_MAX (plan_build then rejects it).
TEST(BucketHostApi, PlanBytesOfHugeCountsDoNotWrap) {
  EXPECT_EQ(pg::bucket_plan_bytes(INT64_MAX), SIZE_MAX);
  EXPECT_EQ(pg::bucket_plan_bytes((int64_t(1) << 58) + 1), SIZE_MAX);
  EXPECT_EQ(pg::bucket_plan_bytes(-1), SIZE_MAX);
  EXPECT_GE(pg::bucket_plan_bytes(int64_t(1) << 40), size_t(64) << 40);
}

// Finite fp32 gradients whose L2 norm exceeds FLT_MAX: the fp32 norm is inf, the gradients are zeroed
// (torch: coef = max_norm / (inf + 1e-6) = 0) and the non-finite flag is raised.
TEST(BucketHostApi, ClipNormOverflowingNormIsFlagged) {
  std::vector<float> g = {3e38f, -3e38f, 3e38f, 1.f};
  BucketTensor<float> t{g.data(), nullptr, 4, 0};
  std::vector<PlanBlock> plan(pg::bucket_plan_bytes(1) / 16 + 1);
  ASSERT_EQ(pg::bucket_plan_build<float>(Backend::kHost, &t, 1, BucketUnits::kTensor, plan.data(), plan.size() * 16),
            Status::kSuccess);
  float norm = -1;
  int32_t flags = 0;
  ASSERT_EQ(pg::bucket_clip_norm<float>(plan.data(), plan.size() * 16, 1.f, BucketScope::kBucket, &norm, nullptr, 0,
                                        &flags),
            Status::kSuccess);
  EXPECT_EQ(norm, HUGE_VALF);
  EXPECT_NE(flags & pg::kBucketFlagNonFinite, 0) << "an infinite norm must set the non-finite flag";
  for (float v : g) EXPECT_EQ(v, 0.f);
}

// An empty bucket is valid and does nothing.
TEST(BucketHostApi, EmptyBucket) {
  std::vector<PlanBlock> plan(pg::bucket_plan_bytes(0) / 16 + 1);
  ASSERT_EQ((pg::bucket_plan_build<float, float>(Backend::kHost, nullptr, 0, BucketUnits::kTensor, plan.data(),
                                                  plan.size() * 16)),
            Status::kSuccess);
  float norm = -1;
  int32_t flags = -1;
  EXPECT_EQ(pg::bucket_clip_norm<float>(plan.data(), plan.size() * 16, 1.f, BucketScope::kBucket, &norm, nullptr, 0, &flags),
            Status::kSuccess);
  EXPECT_EQ(norm, 0.f);
  EXPECT_EQ(flags, 0);
}

// The plan's index math for a tensor past 2^31 elements (no memory is touched: only locate_item and
// group_items, which both backends use, are exercised).
TEST(BucketHostApi, PlanIndexMathPast2to31) {
  const int64_t big = int64_t(3) * 715827883;  // 2^31 + 1, three units
  // Addresses only (never dereferenced): a fake, well-aligned range per tensor.
  auto* base = reinterpret_cast<float*>(uintptr_t(1) << 40);
  BucketTensor<float> t[3] = {{base, base + (int64_t(1) << 33), 10, 2},
                              {base + 64, base + (int64_t(1) << 34), big, 3},
                              {base + 64 + big, base + (int64_t(1) << 35), 5000, 0}};
  for (BucketUnits u : {BucketUnits::kTensor, BucketUnits::kRows}) {
    std::vector<PlanBlock> plan(pg::bucket_plan_bytes(3) / 16 + 1);
    ASSERT_EQ(pg::bucket_plan_build<float>(Backend::kHost, t, 3, u, plan.data(), plan.size() * 16), Status::kSuccess)
        << pg::last_error_message();
    const auto& h = *reinterpret_cast<const pg::detail::BucketPlanHeader*>(plan.data());
    // Every element of every tensor is covered exactly once, in order, by the items.
    int64_t expect_tensor = 0, expect_begin = 0;
    for (int64_t i = 0; i < h.n_items; ++i) {
      const auto it = pg::detail::locate_item(h, i, BucketScope::kTensor);
      if (it.tensor != expect_tensor) {
        ASSERT_EQ(expect_begin, t[expect_tensor].numel) << "item " << i;
        expect_tensor = it.tensor;
        expect_begin = 0;
      }
      ASSERT_EQ(it.begin, expect_begin) << "item " << i;
      ASSERT_GT(it.end, it.begin);
      ASSERT_LE(it.end - it.begin, pg::detail::kBucketItemElems);
      expect_begin = it.end;
    }
    EXPECT_EQ(expect_tensor, 2);
    EXPECT_EQ(expect_begin, 5000);
    EXPECT_EQ(h.total_numel, 10 + big + 5000);
    if (u == BucketUnits::kRows) {
      // Units: 2 + 3 + 1; the middle tensor's units are big / 3 elements each.
      ASSERT_EQ(h.n_units, 6);
      int64_t first = 0, last = 0, covered = 0;
      for (int64_t g = 0; g < 6; ++g) {
        pg::detail::group_items(h, g, BucketScope::kTensor, first, last);
        ASSERT_EQ(first, covered);
        for (int64_t i = first; i < last; ++i) ASSERT_EQ(pg::detail::locate_item(h, i, BucketScope::kTensor).group, g);
        covered = last;
      }
      EXPECT_EQ(covered, h.n_items);
    }
  }
}

// ---- Bad calls: each returns its status with a message and writes nothing. ----
struct BadCall {
  std::string name;
  Status expect;
  std::function<Status(std::vector<float>& g, std::vector<float>& w, void* plan, float* norms, int32_t* flags)> call;
};

// The plan buffer every bad call gets (BadCallsWriteNothing allocates it).
constexpr size_t kPlanBuf = 4096;

std::vector<BadCall> bad_calls() {
  using F = float;
  auto build = [](std::vector<F>& g, std::vector<F>& w, void* plan, BucketUnits u) {
    BucketTensor<F> t[2] = {{g.data(), w.data(), 60, 6}, {g.data() + 60, w.data() + 60, 40, 0}};
    return pg::bucket_plan_build<F>(Backend::kHost, t, 2, u, plan, pg::bucket_plan_bytes(2));
  };
  auto with_tensors = [](std::function<void(BucketTensor<F>*, std::vector<F>&, std::vector<F>&)> edit, BucketUnits u) {
    return [edit, u](std::vector<F>& g, std::vector<F>& w, void* plan, float*, int32_t*) {
      BucketTensor<F> t[2] = {{g.data(), w.data(), 60, 6}, {g.data() + 60, w.data() + 60, 40, 0}};
      edit(t, g, w);
      return pg::bucket_plan_build<F>(Backend::kHost, t, 2, u, plan, pg::bucket_plan_bytes(2));
    };
  };
  const BucketUnits kT = BucketUnits::kTensor, kR = BucketUnits::kRows;
  std::vector<BadCall> v;
  // Plan building.
  v.push_back({"null tensors", Status::kNullPointer, [](auto&, auto&, void* plan, float*, int32_t*) {
                 return pg::bucket_plan_build<F, F>(Backend::kHost, nullptr, 2, BucketUnits::kTensor, plan, 4096);
               }});
  v.push_back({"negative count", Status::kInvalidSize, [](auto& g, auto&, void* plan, float*, int32_t*) {
                 BucketTensor<F> t{g.data(), nullptr, 1, 0};
                 return pg::bucket_plan_build<F>(Backend::kHost, &t, -1, BucketUnits::kTensor, plan, 4096);
               }});
  v.push_back({"null plan", Status::kNullPointer, [](auto& g, auto&, void*, float*, int32_t*) {
                 BucketTensor<F> t{g.data(), nullptr, 1, 0};
                 return pg::bucket_plan_build<F>(Backend::kHost, &t, 1, BucketUnits::kTensor, nullptr, 4096);
               }});
  v.push_back({"plan too small", Status::kWorkspaceTooSmall, [](auto& g, auto&, void* plan, float*, int32_t*) {
                 BucketTensor<F> t{g.data(), nullptr, 1, 0};
                 return pg::bucket_plan_build<F>(Backend::kHost, &t, 1, BucketUnits::kTensor, plan, 100);
               }});
  v.push_back({"unaligned plan", Status::kInvalidLayout, [](auto& g, auto&, void* plan, float*, int32_t*) {
                 BucketTensor<F> t{g.data(), nullptr, 1, 0};
                 return pg::bucket_plan_build<F>(Backend::kHost, &t, 1, BucketUnits::kTensor,
                                                 static_cast<char*>(plan) + 8, 4000);
               }});
  v.push_back({"bad units", Status::kInvalidValue, [](auto& g, auto&, void* plan, float*, int32_t*) {
                 BucketTensor<F> t{g.data(), nullptr, 1, 0};
                 return pg::bucket_plan_build<F>(Backend::kHost, &t, 1, static_cast<BucketUnits>(7), plan, 4096);
               }});
  v.push_back({"bad backend", Status::kInvalidValue, [](auto& g, auto&, void* plan, float*, int32_t*) {
                 BucketTensor<F> t{g.data(), nullptr, 1, 0};
                 return pg::bucket_plan_build<F>(static_cast<Backend>(5), &t, 1, BucketUnits::kTensor, plan, 4096);
               }});
  v.push_back({"null grad", Status::kNullPointer, with_tensors([](auto* t, auto&, auto&) { t[1].grad = nullptr; }, kT)});
  v.push_back({"negative numel", Status::kInvalidSize, with_tensors([](auto* t, auto&, auto&) { t[0].numel = -3; }, kT)});
  v.push_back({"overlapping grads", Status::kInvalidLayout,
               with_tensors([](auto* t, auto&, auto&) { t[1].grad = t[0].grad + 59; }, kT)});
  v.push_back({"same grad twice", Status::kInvalidLayout,
               with_tensors([](auto* t, auto&, auto&) { t[1].grad = t[0].grad; }, kT)});
  v.push_back({"null param (AGC)", Status::kNullPointer, with_tensors([](auto* t, auto&, auto&) { t[0].param = nullptr; }, kR)});
  v.push_back({"param overlaps a grad", Status::kInvalidLayout,
               with_tensors([](auto* t, auto& g, auto&) { t[1].param = g.data() + 10; }, kR)});
  v.push_back({"rows does not divide numel", Status::kInvalidSize,
               with_tensors([](auto* t, auto&, auto&) { t[0].rows = 7; }, kR)});
  v.push_back({"misaligned grad", Status::kInvalidLayout,
               with_tensors([](auto* t, auto&, auto&) { t[1].grad = reinterpret_cast<float*>(reinterpret_cast<char*>(t[1].grad) + 2); }, kT)});
  v.push_back({"misaligned param", Status::kInvalidLayout,
               with_tensors([](auto* t, auto& g, auto& w) {
                 (void)g;
                 t[0].param = reinterpret_cast<const float*>(reinterpret_cast<const char*>(w.data()) + 1);
               }, kR)});
  v.push_back({"flags inside a parameter (AGC)", Status::kInvalidLayout,
               [build](std::vector<F>& g, std::vector<F>& w, void* plan, float*, int32_t*) {
                 if (build(g, w, plan, BucketUnits::kRows) != Status::kSuccess) return Status::kSuccess;
                 return pg::bucket_agc<F>(plan, kPlanBuf, 0.01f, 1e-3f, 1.f, NormPreserve::kNone, nullptr, 0,
                                          reinterpret_cast<int32_t*>(w.data() + 5));
               }});
  v.push_back({"negative rows", Status::kInvalidSize, with_tensors([](auto* t, auto&, auto&) { t[0].rows = -2; }, kR)});
  // Flat layout.
  v.push_back({"flat: decreasing offsets (overlap)", Status::kInvalidLayout, [](auto& g, auto&, void*, float*, int32_t*) {
                 const int64_t off[3] = {0, 50, 40};
                 BucketTensor<F> t[2];
                 return pg::bucket_tensors_from_flat<F, F>(g.data(), off, 2, nullptr, nullptr, t);
               }});
  v.push_back({"flat: null offsets", Status::kNullPointer, [](auto& g, auto&, void*, float*, int32_t*) {
                 BucketTensor<F> t[2];
                 const int64_t* volatile none = nullptr;  // opaque to the optimiser (no -Warray-bounds noise)
                 return pg::bucket_tensors_from_flat<F, F>(g.data(), none, 2, nullptr, nullptr, t);
               }});
  v.push_back({"flat: negative first offset", Status::kInvalidSize, [](auto& g, auto&, void*, float*, int32_t*) {
                 const int64_t off[3] = {-4, 50, 60};
                 BucketTensor<F> t[2];
                 return pg::bucket_tensors_from_flat<F, F>(g.data(), off, 2, nullptr, nullptr, t);
               }});
  // Ops on a valid plan.
  auto op_on = [build](BucketUnits u, std::function<Status(void*, float*, int32_t*)> op) {
    return [build, u, op](std::vector<F>& g, std::vector<F>& w, void* plan, float* norms, int32_t* flags) {
      if (build(g, w, plan, u) != Status::kSuccess) return Status::kSuccess;  // fails the test: wrong status
      return op(plan, norms, flags);
    };
  };
  const auto kTen = BucketScope::kTensor;
  v.push_back({"beta 0", Status::kInvalidValue, op_on(kT, [=](void* p, float*, int32_t* f) {
                 return pg::bucket_power<F>(p, kPlanBuf, 0.f, NormPreserve::kL1, kTen, nullptr, 0, f);
               })});
  v.push_back({"beta negative", Status::kInvalidValue, op_on(kT, [=](void* p, float*, int32_t* f) {
                 return pg::bucket_power<F>(p, kPlanBuf, -1.f, NormPreserve::kNone, kTen, nullptr, 0, f);
               })});
  v.push_back({"beta NaN", Status::kInvalidValue, op_on(kT, [=](void* p, float*, int32_t* f) {
                 return pg::bucket_power<F>(p, kPlanBuf, NAN, NormPreserve::kNone, kTen, nullptr, 0, f);
               })});
  v.push_back({"bad preserve", Status::kInvalidValue, op_on(kT, [=](void* p, float*, int32_t* f) {
                 return pg::bucket_power<F>(p, kPlanBuf, 0.5f, static_cast<NormPreserve>(3), kTen, nullptr, 0, f);
               })});
  v.push_back({"bad scope", Status::kInvalidValue, op_on(kT, [=](void* p, float* n, int32_t* f) {
                 return pg::bucket_clip_norm<F>(p, kPlanBuf, 1.f, static_cast<BucketScope>(2), n, nullptr, 0, f);
               })});
  v.push_back({"max_norm 0", Status::kInvalidValue, op_on(kT, [=](void* p, float* n, int32_t* f) {
                 return pg::bucket_clip_norm<F>(p, kPlanBuf, 0.f, kTen, n, nullptr, 0, f);
               })});
  v.push_back({"max_norm inf", Status::kInvalidValue, op_on(kT, [=](void* p, float* n, int32_t* f) {
                 return pg::bucket_clip_norm<F>(p, kPlanBuf, INFINITY, kTen, n, nullptr, 0, f);
               })});
  v.push_back({"clip 0", Status::kInvalidValue, op_on(kR, [=](void* p, float*, int32_t* f) {
                 return pg::bucket_agc<F>(p, kPlanBuf, 0.f, 1e-3f, 1.f, NormPreserve::kNone, nullptr, 0, f);
               })});
  v.push_back({"eps negative", Status::kInvalidValue, op_on(kR, [=](void* p, float*, int32_t* f) {
                 return pg::bucket_agc<F>(p, kPlanBuf, 0.01f, -1e-3f, 1.f, NormPreserve::kNone, nullptr, 0, f);
               })});
  v.push_back({"AGC on a kTensor plan", Status::kInvalidValue, op_on(kT, [=](void* p, float*, int32_t* f) {
                 return pg::bucket_agc<F>(p, kPlanBuf, 0.01f, 1e-3f, 1.f, NormPreserve::kNone, nullptr, 0, f);
               })});
  v.push_back({"power on a kRows plan", Status::kInvalidValue, op_on(kR, [=](void* p, float*, int32_t* f) {
                 return pg::bucket_power<F>(p, kPlanBuf, 0.5f, NormPreserve::kNone, kTen, nullptr, 0, f);
               })});
  v.push_back({"wrong dtype for the plan", Status::kInvalidValue, op_on(kT, [=](void* p, float*, int32_t* f) {
                 return pg::bucket_power<bfloat16_t>(p, kPlanBuf, 0.5f, NormPreserve::kNone, kTen, nullptr, 0, f);
               })});
  v.push_back({"wrong param dtype for the plan", Status::kInvalidValue, op_on(kR, [=](void* p, float*, int32_t* f) {
                 return pg::bucket_agc<F, half_t>(p, kPlanBuf, 0.01f, 1e-3f, 1.f, NormPreserve::kNone, nullptr, 0, f);
               })});
  v.push_back({"corrupted plan", Status::kInvalidValue, op_on(kT, [=](void* p, float*, int32_t* f) {
                 reinterpret_cast<pg::detail::BucketPlanHeader*>(p)->n_items += 1;
                 return pg::bucket_power<F>(p, kPlanBuf, 0.5f, NormPreserve::kNone, kTen, nullptr, 0, f);
               })});
  v.push_back({"not a plan", Status::kInvalidValue, op_on(kT, [=](void* p, float*, int32_t* f) {
                 std::memset(p, 0, 64);
                 return pg::bucket_power<F>(p, kPlanBuf, 0.5f, NormPreserve::kNone, kTen, nullptr, 0, f);
               })});
  v.push_back({"null plan to an op", Status::kNullPointer, op_on(kT, [=](void*, float*, int32_t* f) {
                 return pg::bucket_power<F>(nullptr, kPlanBuf, 0.5f, NormPreserve::kNone, kTen, nullptr, 0, f);
               })});
  v.push_back({"norms inside a gradient", Status::kInvalidLayout,
               [build](std::vector<F>& g, std::vector<F>& w, void* plan, float*, int32_t* f) {
                 if (build(g, w, plan, BucketUnits::kTensor) != Status::kSuccess) return Status::kSuccess;
                 return pg::bucket_clip_norm<F>(plan, kPlanBuf, 1.f, BucketScope::kTensor, g.data() + 59, nullptr, 0, f);
               }});
  v.push_back({"flags inside a gradient", Status::kInvalidLayout,
               [build](std::vector<F>& g, std::vector<F>& w, void* plan, float*, int32_t*) {
                 if (build(g, w, plan, BucketUnits::kTensor) != Status::kSuccess) return Status::kSuccess;
                 return pg::bucket_power<F>(plan, kPlanBuf, 0.5f, NormPreserve::kL1, BucketScope::kTensor, nullptr, 0,
                                            reinterpret_cast<int32_t*>(g.data() + 3));
               }});
  // Outputs inside the host plan image: the host backend reads the tensor table while it writes.
  v.push_back({"norms inside the plan", Status::kInvalidLayout,
               [build](std::vector<F>& g, std::vector<F>& w, void* plan, float*, int32_t* f) {
                 if (build(g, w, plan, BucketUnits::kTensor) != Status::kSuccess) return Status::kSuccess;
                 float* in_plan = reinterpret_cast<float*>(static_cast<char*>(plan) + sizeof(pg::detail::BucketPlanHeader));
                 return pg::bucket_clip_norm<F>(plan, kPlanBuf, 1.f, BucketScope::kTensor, in_plan, nullptr, 0, f);
               }});
  v.push_back({"flags inside the plan", Status::kInvalidLayout,
               [build](std::vector<F>& g, std::vector<F>& w, void* plan, float*, int32_t*) {
                 if (build(g, w, plan, BucketUnits::kTensor) != Status::kSuccess) return Status::kSuccess;
                 int32_t* in_plan = reinterpret_cast<int32_t*>(static_cast<char*>(plan) + 8);
                 return pg::bucket_power<F>(plan, kPlanBuf, 0.5f, NormPreserve::kL1, BucketScope::kTensor, nullptr, 0,
                                            in_plan);
               }});
  // A header whose tensor count and size are enlarged consistently: its size must fit in the buffer
  // the caller vouches for before the checksum reads past the table.
  v.push_back({"plan header enlarged past the buffer", Status::kInvalidSize, op_on(kT, [=](void* p, float*, int32_t* f) {
                 auto* h = reinterpret_cast<pg::detail::BucketPlanHeader*>(p);
                 h->n_tensors = 1000;
                 h->plan_bytes = pg::detail::bucket_plan_bytes_for(1000);
                 return pg::bucket_power<F>(p, kPlanBuf, 0.5f, NormPreserve::kNone, kTen, nullptr, 0, f);
               })});
  v.push_back({"plan_bytes smaller than the plan", Status::kInvalidSize, op_on(kT, [=](void* p, float*, int32_t* f) {
                 return pg::bucket_power<F>(p, pg::bucket_plan_bytes(2) - 16, 0.5f, NormPreserve::kNone, kTen, nullptr,
                                            0, f);
               })});
  v.push_back({"workspace_bytes: bytes inside the plan", Status::kInvalidLayout,
               op_on(kT, [=](void* p, float*, int32_t*) {
                 return pg::bucket_workspace_bytes(p, kPlanBuf, reinterpret_cast<size_t*>(static_cast<char*>(p) + 96));
               })});
  v.push_back({"plan_bytes smaller than a header", Status::kInvalidSize, op_on(kT, [=](void* p, float*, int32_t* f) {
                 return pg::bucket_power<F>(p, 8, 0.5f, NormPreserve::kNone, kTen, nullptr, 0, f);
               })});
  v.push_back({"flat: count too large", Status::kInvalidSize, [](auto& g, auto&, void*, float*, int32_t*) {
                 const int64_t off[3] = {0, 50, 60};
                 BucketTensor<F> t[2];
                 return pg::bucket_tensors_from_flat<F, F>(g.data(), off, int64_t(1) << 61, nullptr, nullptr, t);
               }});
  v.push_back({"flat: out overlaps offsets", Status::kInvalidLayout, [](auto& g, auto&, void*, float*, int32_t*) {
                 // out[0] would overwrite offsets[1..] before they are read.
                 alignas(16) int64_t buf[16] = {0, 10, 20, 30};
                 return pg::bucket_tensors_from_flat<F, F>(g.data(), buf, 3, nullptr, nullptr,
                                                           reinterpret_cast<BucketTensor<F>*>(buf));
               }});
  v.push_back({"flat: out overlaps rows", Status::kInvalidLayout, [](auto& g, auto&, void*, float*, int32_t*) {
                 const int64_t off[3] = {0, 50, 60};
                 alignas(16) int64_t buf[16] = {1, 1};
                 return pg::bucket_tensors_from_flat<F, F>(g.data(), off, 2, nullptr, buf + 2,
                                                           reinterpret_cast<BucketTensor<F>*>(buf));
               }});
  // The tensor table and the gradients must stay out of the plan the build writes (and the ops read).
  v.push_back({"tensor table inside the plan", Status::kInvalidLayout, [](auto& g, auto&, void* plan, float*, int32_t*) {
                 auto* t = reinterpret_cast<BucketTensor<F>*>(static_cast<char*>(plan) + 256);
                 for (int i = 0; i < 4; ++i) t[i] = BucketTensor<F>{g.data() + 20 * i, nullptr, 20, 0};
                 return pg::bucket_plan_build<F>(Backend::kHost, t, 4, BucketUnits::kTensor, plan, kPlanBuf);
               }});
  v.push_back({"gradient inside the plan", Status::kInvalidLayout, [](auto& g, auto&, void* plan, float*, int32_t*) {
                 BucketTensor<F> t[2] = {{reinterpret_cast<F*>(static_cast<char*>(plan) + 144), nullptr, 16, 0},
                                         {g.data(), nullptr, 10, 0}};
                 return pg::bucket_plan_build<F>(Backend::kHost, t, 2, BucketUnits::kTensor, plan, kPlanBuf);
               }});
  v.push_back({"gradient range wraps the address space", Status::kInvalidLayout,
               [](auto&, auto&, void* plan, float*, int32_t*) {
                 BucketTensor<F> t{reinterpret_cast<F*>(uintptr_t(0xFFFFFFFFFFFFF000ull)), nullptr, int64_t(1) << 40, 0};
                 return pg::bucket_plan_build<F>(Backend::kHost, &t, 1, BucketUnits::kTensor, plan, kPlanBuf);
               }});
  v.push_back({"plan_build: huge count, small plan", Status::kWorkspaceTooSmall,
               [](auto& g, auto&, void* plan, float*, int32_t*) {
                 BucketTensor<F> t{g.data(), nullptr, 10, 0};
                 return pg::bucket_plan_build<F>(Backend::kHost, &t, int64_t(1) << 31, BucketUnits::kTensor, plan,
                                                 kPlanBuf);
               }});
  return v;
}

TEST(BucketHostApi, BadCallsWriteNothing) {
  const auto calls = bad_calls();
  EXPECT_GE(calls.size(), 30u);
  for (const BadCall& bc : calls) {
    SCOPED_TRACE(bc.name);
    std::vector<float> g(100), w(100);
    for (int i = 0; i < 100; ++i) {
      g[static_cast<size_t>(i)] = 0.25f * static_cast<float>(i % 13) - 1.f;
      w[static_cast<size_t>(i)] = 0.1f * static_cast<float>(i % 7);
    }
    const auto g0 = g, w0 = w;
    std::vector<PlanBlock> plan(kPlanBuf / 16);
    float norms[4] = {-3, -3, -3, -3};
    int32_t flags = -3;
    const Status s = bc.call(g, w, plan.data(), norms, &flags);
    EXPECT_EQ(s, bc.expect) << pg::last_error_message();
    EXPECT_STRNE(pg::last_error_message(), "");
    EXPECT_TRUE(std::memcmp(g.data(), g0.data(), g.size() * sizeof(float)) == 0) << "gradients were written";
    EXPECT_TRUE(std::memcmp(w.data(), w0.data(), w.size() * sizeof(float)) == 0) << "parameters were written";
    for (float n : norms) EXPECT_EQ(n, -3.f);
    EXPECT_EQ(flags, -3);
  }
}

}  // namespace
}  // namespace pgtest
