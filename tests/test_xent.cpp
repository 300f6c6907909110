// Host-backend tests of the PGT cross-entropy (compiled by a plain C++ compiler, no CUDA).
//
// Every op result is checked element by element against the independent float64 reference in
// reference.hpp (see xent_cases.hpp for the case generator and the tolerance table). The typed
// tests run over fp32 / fp16 / bf16 storage; the target kind (int32, int64, dense) is a runtime
// field of each case, dispatched once in xent_cases.hpp, so the template count stays small.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "reference.hpp"
#include "xent_cases.hpp"

namespace pgtest {
namespace {

// ---------------------------------------------------------------------------------------------
// Dtype conversions: the library's fp16/bf16 load/store against the reference's own decoding and
// rounding (which is itself checked first: exact round trips and ties to even).
// ---------------------------------------------------------------------------------------------
bool same_value(double a, double b) { return (std::isnan(a) && std::isnan(b)) || (a == b && std::signbit(a) == std::signbit(b)); }

TEST(Dtype, ReferenceEncoderRoundTripsEveryPattern) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const uint16_t h = static_cast<uint16_t>(b);
    const double vh = pgref::half_bits_to_double(h), vb = pgref::bf16_bits_to_double(h);
    if (!std::isnan(vh)) {
      ASSERT_EQ(pgref::double_to_half_bits(vh), h) << "fp16 pattern " << b;
    }
    if (!std::isnan(vb)) {
      ASSERT_EQ(pgref::double_to_bf16_bits(vb), h) << "bf16 pattern " << b;
    }
  }
}

TEST(Dtype, ReferenceEncoderRoundsHalfwayToEven) {
  for (uint32_t b = 0; b < 0x7BFF; ++b) {  // positive finite fp16 values and their successors
    const double lo = pgref::half_bits_to_double(static_cast<uint16_t>(b));
    const double hi = pgref::half_bits_to_double(static_cast<uint16_t>(b + 1));
    const double mid = 0.5 * (lo + hi);
    const uint16_t even = (b % 2 == 0) ? static_cast<uint16_t>(b) : static_cast<uint16_t>(b + 1);
    ASSERT_EQ(pgref::double_to_half_bits(mid), even) << b;
    ASSERT_EQ(pgref::double_to_half_bits(std::nextafter(mid, 0.0)), b) << b;
    ASSERT_EQ(pgref::double_to_half_bits(std::nextafter(mid, 1e9)), b + 1) << b;
  }
  EXPECT_EQ(pgref::double_to_half_bits(65519.99), 0x7BFF);
  EXPECT_EQ(pgref::double_to_half_bits(65520.0), 0x7C00);  // ties to even: inf
  EXPECT_EQ(pgref::double_to_bf16_bits(std::ldexp(2.0 - std::ldexp(1.0, -8), 127)), 0x7F80);
  EXPECT_EQ(pgref::double_to_half_bits(std::ldexp(1.0, -25)), 0x0000);       // tie with 0 -> even (0)
  EXPECT_EQ(pgref::double_to_half_bits(std::ldexp(1.5, -25)), 0x0001);       // above the tie
  EXPECT_EQ(pgref::double_to_half_bits(-std::ldexp(3.0, -25)), 0x8002);      // tie 1.5 ulp -> 2 ulp
}

TEST(Dtype, LibraryLoadsEveryPatternExactly) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const uint16_t h = static_cast<uint16_t>(b);
    ASSERT_TRUE(same_value(pg::to_float(half_t{h}), pgref::half_bits_to_double(h))) << "fp16 pattern " << b;
    ASSERT_TRUE(same_value(pg::to_float(bfloat16_t{h}), pgref::bf16_bits_to_double(h))) << "bf16 pattern " << b;
  }
}

TEST(Dtype, LibraryStoresRoundToNearestEven) {
  std::vector<float> xs;
  // Every fp16 / bf16 midpoint (exact in fp32) and its neighbours, both signs.
  for (uint32_t b = 0; b < 0x7C00; ++b) {
    const double lo = pgref::half_bits_to_double(static_cast<uint16_t>(b)),
                 hi = pgref::half_bits_to_double(static_cast<uint16_t>(b + 1));
    const float mid = static_cast<float>(0.5 * (lo + hi));
    xs.insert(xs.end(), {mid, std::nextafter(mid, 0.f), std::nextafter(mid, 1e30f), static_cast<float>(lo)});
  }
  for (uint32_t b = 0; b < 0x7F80; b += 3) {
    const double lo = pgref::bf16_bits_to_double(static_cast<uint16_t>(b)),
                 hi = pgref::bf16_bits_to_double(static_cast<uint16_t>(b + 1));
    const float mid = static_cast<float>(0.5 * (lo + hi));
    xs.insert(xs.end(), {mid, std::nextafter(mid, 0.f), std::nextafter(mid, 3e38f)});
  }
  std::mt19937 rng(5);
  for (int i = 0; i < 200000; ++i) {
    uint32_t u = rng();
    float f;
    std::memcpy(&f, &u, 4);
    xs.push_back(f);
  }
  xs.insert(xs.end(), {0.f, -0.f, 65504.f, 65519.f, 65520.f, 1e6f, std::numeric_limits<float>::infinity(),
                       -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::max(),
                       std::numeric_limits<float>::denorm_min()});
  const size_t n = xs.size();
  for (size_t i = 0; i < n; ++i) xs.push_back(-xs[i]);
  int fails = 0;
  for (float f : xs) {
    const half_t h = pg::from_float<half_t>(f);
    const bfloat16_t b = pg::from_float<bfloat16_t>(f);
    if (std::isnan(f)) {
      if (!std::isnan(pgref::half_bits_to_double(h.bits)) || !std::isnan(pgref::bf16_bits_to_double(b.bits)))
        ADD_FAILURE() << "NaN not stored as NaN", ++fails;
      continue;
    }
    if (h.bits != pgref::double_to_half_bits(f)) {
      ADD_FAILURE() << "fp16 store of " << f << ": got 0x" << std::hex << h.bits << ", expected 0x"
                    << pgref::double_to_half_bits(f);
      ++fails;
    }
    if (b.bits != pgref::double_to_bf16_bits(f)) {
      ADD_FAILURE() << "bf16 store of " << f << ": got 0x" << std::hex << b.bits << ", expected 0x"
                    << pgref::double_to_bf16_bits(f);
      ++fails;
    }
    if (fails > 10) return;
  }
}

// ---------------------------------------------------------------------------------------------
// Typed op tests.
// ---------------------------------------------------------------------------------------------
template <class T>
class XentHost : public ::testing::Test {};
struct DtypeNames {
  template <class T>
  static std::string GetName(int) {
    return DT<T>::name;
  }
};
using Dtypes = ::testing::Types<float, half_t, bfloat16_t>;
TYPED_TEST_SUITE(XentHost, Dtypes, DtypeNames);

// Runs fn over the cases; stops after a few failing cases so that a systematic bug does not bury
// the log.
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

TYPED_TEST(XentHost, ForwardBackwardEveryAlphaSmoothingReductionTarget) {
  for_cases(cross_cases(), [](const Case& c) { check_fused_case<TypeParam, HostMem>(c); });
}

TYPED_TEST(XentHost, ForwardBackwardVocabularySizes) {
  for_cases(shape_cases(), [](const Case& c) { check_fused_case<TypeParam, HostMem>(c); });
}

TYPED_TEST(XentHost, ForwardBackwardEdgeSemantics) {
  for_cases(special_cases(), [](const Case& c) { check_fused_case<TypeParam, HostMem>(c); });
}

TYPED_TEST(XentHost, BackwardWithSavedLseAlpha) {
  for_cases(backward_cases(), [](const Case& c) { check_backward_case<TypeParam, HostMem>(c, true, false); });
}

TYPED_TEST(XentHost, BackwardWithoutSavedStatsEqualsFused) {
  for_cases(backward_cases(), [](const Case& c) { check_backward_case<TypeParam, HostMem>(c, false, true); });
}

std::vector<std::pair<Case, std::vector<int64_t>>> shard_cases() {
  std::vector<std::pair<Case, std::vector<int64_t>>> v;
  const TargetKind tks[] = {TargetKind::kInt32, TargetKind::kInt64, TargetKind::kDense};
  const Reduction reds[] = {Reduction::kNone, Reduction::kMean, Reduction::kSum};
  uint64_t seed = 5000;
  int i = 0;
  for (int64_t C : {1, 2, 3, 10, 1025, 3000, 50257}) {
    for (const auto& w : shard_layouts(C)) {
      Case c;
      c.cols = C;
      c.rows = C > 5000 ? 4 : 8;  // >= k rows so that every shard holds some row's target
      c.alpha = all_alphas()[i % all_alphas().size()];
      c.eps = (i % 2) ? 0.1f : 0.f;
      c.red = reds[i % 3];
      c.targets = tks[(i / 2) % 3];
      c.in_place = (i % 3) == 0;
      c.ld_pad = (i % 2) ? 3 : 0;
      c.offset = (i % 4) == 1;
      c.up = static_cast<UpMode>(i % 3);
      c.mask_frac = (i % 5 == 3) ? 0.1 : 0.0;
      c.ignore_frac = (i % 4 == 2) ? 0.25 : 0.0;
      c.target_shards = w;
      c.seed = seed++;
      v.push_back({c, w});
      ++i;
    }
  }
  return v;
}

TYPED_TEST(XentHost, SplitFormEqualsUnsplit) {
  for_cases(shard_cases(), [](const std::pair<Case, std::vector<int64_t>>& cw) {
    check_shard_case<TypeParam, HostMem>(cw.first, cw.second);
  });
}

// docs/design.md §2.5: class weights, z-loss, softcapping and the accuracy outputs on every op.
TYPED_TEST(XentHost, ForwardBackwardOptions) {
  for_cases(option_cases(), [](const Case& c) { check_fused_case<TypeParam, HostMem>(c); });
}

TYPED_TEST(XentHost, BackwardOptionsSavedAndRecomputed) {
  for_cases(option_cases(), [](const Case& c) {
    check_backward_case<TypeParam, HostMem>(c, true, false);
    check_backward_case<TypeParam, HostMem>(c, false, true);
  });
}

// The split form with the weights sharded like the logits; every shard layout of a few widths.
TYPED_TEST(XentHost, SplitFormOptionsEqualsUnsplit) {
  for_cases(shard_option_cases(), [](const std::pair<Case, std::vector<int64_t>>& cw) {
    check_shard_case<TypeParam, HostMem>(cw.first, cw.second);
  });
}

std::vector<HookCase> hook_cases() {
  std::vector<HookCase> v;
  uint64_t seed = 6000;
  int i = 0;
  for (int64_t C : {2, 10, 333, 1500})
    for (float a : all_alphas()) {
      HookCase h;
      h.cols = C;
      h.rows = 6;
      h.alpha = a;
      h.eps = (i % 3 == 1 && a != 0.f) ? 0.1f : 0.f;  // (alpha = 0 with smoothing: see hook_cases note)
      h.targets = static_cast<TargetKind>(i % 3);
      h.in_place = (i % 2) == 1;
      h.ld_pad = (i % 4 == 2) ? 2 : 0;
      h.offset = (i % 4 == 3);
      h.row_scale = (i % 3 == 2);
      h.special_rows = (i % 2 == 0);
      h.scale = (i % 5 == 0) ? 0.5f : 4.f;
      h.seed = seed++;
      v.push_back(h);
      ++i;
    }
  return v;
}
// Note: with alpha = 0 the hook maps every recovered p > 0 to the same weight, so a p that is 0 in
// exact arithmetic but a rounding residue in fp32 (p = G/s + eps/C) flips a class between masked and
// not. That is inherent to the hook form (docs/design.md §2.2: it is less precise than the logits form);
// alpha = 0 is tested with eps = 0, where the recovery p = G/s (+ 1) is exact for power-of-two s.

TYPED_TEST(XentHost, HookFromIncomingGradient) {
  for_cases(hook_cases(), [](const HookCase& h) { check_hook_case<TypeParam, HostMem>(h, false); });
}

TEST(XentHostHook, AgreesWithLogitsFormInFp32) {
  for_cases(hook_cases(), [](HookCase h) {
    h.special_rows = false;
    h.logit_scale = 2.0;
    check_hook_case<float, HostMem>(h, true);
  });
}

TYPED_TEST(XentHost, TwoRunsAreBitwiseEqual) {
  for_cases(backward_cases(), [](const Case& c) { check_fused_case<TypeParam, HostMem>(c, true); });
}

// rows = 0: success; nothing is written except a reduced loss, which is 0.
TYPED_TEST(XentHost, EmptyBatchWritesOnlyAReducedLoss) {
  using T = TypeParam;
  std::vector<T> logits(8, DT<T>::encode(1.0)), grad(8, poison_value<T>());
  std::vector<int64_t> y(2, 0);
  std::vector<float> loss(3, poison_value<float>()), lse(3, poison_value<float>()), lse_a(3, poison_value<float>());
  std::vector<RowStats> stats(4, poison_value<RowStats>());
  for (Reduction red : {Reduction::kNone, Reduction::kMean, Reduction::kSum}) {
    std::fill(loss.begin(), loss.end(), poison_value<float>());
    pg::XentProblem<T, pg::ClassTargets<int64_t>> p;
    p.logits = logits.data();
    p.rows = 0;
    p.cols = 4;
    p.targets.index = y.data();
    p.reduction = red;
    pg::XentOutputs<T> o;
    o.loss = loss.data();
    o.lse = lse.data();
    o.lse_alpha = lse_a.data();
    o.dlogits = grad.data();
    ASSERT_EQ(pg::xent_forward_backward(Backend::kHost, p, pg::Upstream{}, o), Status::kSuccess);
    if (red == Reduction::kNone) {
      EXPECT_TRUE(is_poison(loss[0]));
    } else {
      EXPECT_EQ(loss[0], 0.f) << red_name(red);
    }
    EXPECT_TRUE(is_poison(loss[1]));
    std::fill(loss.begin(), loss.end(), poison_value<float>());
    ASSERT_EQ(pg::xent_shard_apply(Backend::kHost, p, stats.data(), pg::Upstream{}, o), Status::kSuccess);
    if (red != Reduction::kNone) {
      EXPECT_EQ(loss[0], 0.f);
    }
    ASSERT_EQ(pg::xent_backward(Backend::kHost, p, pg::Upstream{}, nullptr, grad.data()), Status::kSuccess);
    ASSERT_EQ(pg::xent_hook(Backend::kHost, p, pg::GradScale{}, grad.data()), Status::kSuccess);
    ASSERT_EQ(pg::xent_shard_stats(Backend::kHost, p, stats.data()), Status::kSuccess);
    ASSERT_EQ(pg::xent_merge_stats(Backend::kHost, stats.data(), 2, 0, 1.f, stats.data() + 2), Status::kSuccess);
  }
  for (auto& g : grad) EXPECT_TRUE(is_poison(g));
  for (auto& s : stats) EXPECT_TRUE(is_poison(s));
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(is_poison(lse[i]) && is_poison(lse_a[i]));
}

// ---------------------------------------------------------------------------------------------
// Bad input: each call returns the documented status, a message naming the argument, and writes
// nothing (every buffer is canary-filled before and compared bitwise after).
// ---------------------------------------------------------------------------------------------
struct Bufs {
  static constexpr int64_t R = 4, C = 10;
  std::vector<float> logits, grad, loss, lse, lse_a, dense, up;
  std::vector<int32_t> y;
  std::vector<int64_t> y64;
  std::vector<RowStats> parts, merged;
  Bufs() {
    logits.resize(R * (C + 2) + 8);
    for (size_t i = 0; i < logits.size(); ++i) logits[i] = static_cast<float>(std::sin(0.7 * static_cast<double>(i)));
    grad.assign(R * (C + 2) + 8, poison_value<float>());
    loss.assign(R + 2, poison_value<float>());
    lse.assign(R + 2, poison_value<float>());
    lse_a.assign(R + 2, poison_value<float>());
    dense.assign(R * C, 0.1f);
    up.assign(R, 1.f);
    y = {1, 2, 3, 4};
    y64 = {1, 2, 3, 4};
    parts.assign(2 * R, RowStats{0.f, 1.f, 1.f, 0.f, 1.f, 1.f, 0});
    merged.assign(R + 2, poison_value<RowStats>());
  }
  pg::XentProblem<float, pg::ClassTargets<int32_t>> prob() {
    pg::XentProblem<float, pg::ClassTargets<int32_t>> p;
    p.logits = logits.data();
    p.rows = R;
    p.cols = C;
    p.targets.index = y.data();
    return p;
  }
  pg::XentProblem<float, pg::DenseTargets<float>> dprob() {
    pg::XentProblem<float, pg::DenseTargets<float>> p;
    p.logits = logits.data();
    p.rows = R;
    p.cols = C;
    p.targets.prob = dense.data();
    return p;
  }
  pg::XentOutputs<float> outs() {
    pg::XentOutputs<float> o;
    o.loss = loss.data();
    o.lse = lse.data();
    o.lse_alpha = lse_a.data();
    o.dlogits = grad.data();
    return o;
  }
  template <class U>
  static bool same(const std::vector<U>& a, const std::vector<U>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(U)) == 0;
  }
  bool same_as(const Bufs& o) const {
    return same(logits, o.logits) && same(grad, o.grad) && same(loss, o.loss) && same(lse, o.lse) &&
           same(lse_a, o.lse_a) && same(dense, o.dense) && same(parts, o.parts) && same(merged, o.merged) &&
           same(y, o.y) && same(y64, o.y64);
  }
};

struct BadCase {
  std::string name;
  Status expect;
  const char* needle;  // must appear in last_error_message()
  std::function<Status(Bufs&)> call;
};

const float kNaNf = std::numeric_limits<float>::quiet_NaN();
const float kInff = std::numeric_limits<float>::infinity();

Status fb(Bufs& b, pg::XentProblem<float, pg::ClassTargets<int32_t>> p, Backend be = Backend::kHost) {
  return pg::xent_forward_backward(be, p, pg::Upstream{}, b.outs());
}

std::vector<BadCase> bad_cases() {
  using P = pg::XentProblem<float, pg::ClassTargets<int32_t>>;
  std::vector<BadCase> v;
  auto add = [&](std::string n, Status s, const char* needle, std::function<Status(Bufs&)> f) {
    v.push_back({std::move(n), s, needle, std::move(f)});
  };
  // Null pointers.
  add("null logits", Status::kNullPointer, "logits", [](Bufs& b) { P p = b.prob(); p.logits = nullptr; return fb(b, p); });
  add("null targets.index", Status::kNullPointer, "targets.index", [](Bufs& b) { P p = b.prob(); p.targets.index = nullptr; return fb(b, p); });
  add("null targets.prob", Status::kNullPointer, "targets.prob", [](Bufs& b) {
    auto p = b.dprob(); p.targets.prob = nullptr;
    return pg::xent_forward_backward(Backend::kHost, p, pg::Upstream{}, b.outs()); });
  add("null dlogits (backward)", Status::kNullPointer, "dlogits", [](Bufs& b) {
    return pg::xent_backward(Backend::kHost, b.prob(), pg::Upstream{}, nullptr, static_cast<float*>(nullptr)); });
  add("null out (hook)", Status::kNullPointer, "out", [](Bufs& b) {
    return pg::xent_hook(Backend::kHost, b.prob(), pg::GradScale{}, static_cast<float*>(nullptr)); });
  add("null grad input (hook)", Status::kNullPointer, "problem.logits", [](Bufs& b) {
    P p = b.prob(); p.logits = nullptr;
    return pg::xent_hook(Backend::kHost, p, pg::GradScale{}, b.grad.data()); });
  add("null stats (shard_stats)", Status::kNullPointer, "stats", [](Bufs& b) {
    return pg::xent_shard_stats(Backend::kHost, b.prob(), nullptr); });
  add("null merged (shard_apply)", Status::kNullPointer, "merged", [](Bufs& b) {
    return pg::xent_shard_apply(Backend::kHost, b.prob(), nullptr, pg::Upstream{}, b.outs()); });
  add("null parts (merge)", Status::kNullPointer, "parts", [](Bufs& b) {
    return pg::xent_merge_stats(Backend::kHost, nullptr, 2, Bufs::R, 1.f, b.merged.data()); });
  add("null merged (merge)", Status::kNullPointer, "merged", [](Bufs& b) {
    return pg::xent_merge_stats(Backend::kHost, b.parts.data(), 2, Bufs::R, 1.f, nullptr); });
  // Sizes.
  add("negative rows", Status::kInvalidSize, "rows", [](Bufs& b) { P p = b.prob(); p.rows = -1; return fb(b, p); });
  add("cols 0", Status::kInvalidSize, "cols", [](Bufs& b) { P p = b.prob(); p.cols = 0; return fb(b, p); });
  add("negative cols", Status::kInvalidSize, "cols", [](Bufs& b) { P p = b.prob(); p.cols = -5; return fb(b, p); });
  add("ld < cols", Status::kInvalidSize, "ld", [](Bufs& b) { P p = b.prob(); p.ld = Bufs::C - 1; return fb(b, p); });
  add("ld_dlogits < cols", Status::kInvalidSize, "ld", [](Bufs& b) {
    auto o = b.outs(); o.ld_dlogits = Bufs::C - 2;
    return pg::xent_forward_backward(Backend::kHost, b.prob(), pg::Upstream{}, o); });
  add("dense targets.ld < cols", Status::kInvalidSize, "targets.ld", [](Bufs& b) {
    auto p = b.dprob(); p.targets.ld = Bufs::C - 1;
    return pg::xent_forward_backward(Backend::kHost, p, pg::Upstream{}, b.outs()); });
  add("shard total_cols < col_offset + cols", Status::kInvalidSize, "total_cols", [](Bufs& b) {
    P p = b.prob(); p.col_offset = 4; p.total_cols = 12;
    return pg::xent_shard_stats(Backend::kHost, p, b.parts.data()); });
  add("shard_apply total_cols < col_offset + cols", Status::kInvalidSize, "total_cols", [](Bufs& b) {
    P p = b.prob(); p.col_offset = 1; p.total_cols = Bufs::C;
    return pg::xent_shard_apply(Backend::kHost, p, b.parts.data(), pg::Upstream{}, b.outs()); });
  add("negative col_offset", Status::kInvalidSize, "col_offset", [](Bufs& b) {
    P p = b.prob(); p.col_offset = -1; p.total_cols = 20;
    return pg::xent_shard_stats(Backend::kHost, p, b.parts.data()); });
  add("shard without total_cols", Status::kInvalidSize, "total_cols", [](Bufs& b) {
    P p = b.prob(); p.col_offset = 3; p.total_cols = 0;
    return pg::xent_shard_stats(Backend::kHost, p, b.parts.data()); });
  add("hook on a column shard", Status::kInvalidSize, "whole rows", [](Bufs& b) {
    P p = b.prob(); p.col_offset = 2; p.total_cols = Bufs::C + 2;
    return pg::xent_hook(Backend::kHost, p, pg::GradScale{}, b.grad.data()); });
  add("lse output inside the logits", Status::kInvalidLayout, "out.lse", [](Bufs& b) {
    auto o = b.outs(); o.lse = b.logits.data() + 1;
    return pg::xent_forward_backward(Backend::kHost, b.prob(), pg::Upstream{}, o); });
  add("loss output inside the gradient", Status::kInvalidLayout, "out.loss", [](Bufs& b) {
    auto o = b.outs(); o.loss = b.grad.data() + 3;
    return pg::xent_forward_backward(Backend::kHost, b.prob(), pg::Upstream{}, o); });
  add("merge with 0 shards", Status::kInvalidSize, "shards", [](Bufs& b) {
    return pg::xent_merge_stats(Backend::kHost, b.parts.data(), 0, Bufs::R, 1.f, b.merged.data()); });
  add("merge with negative rows", Status::kInvalidSize, "rows", [](Bufs& b) {
    return pg::xent_merge_stats(Backend::kHost, b.parts.data(), 2, -3, 1.f, b.merged.data()); });
  // Values.
  for (float a : {-0.5f, kNaNf, kInff, -kInff, 3e38f}) {  // 3e38: alpha * log2(e) overflows
    add("bad alpha " + std::to_string(a), Status::kInvalidValue, "alpha", [a](Bufs& b) { P p = b.prob(); p.alpha = a; return fb(b, p); });
    add("bad alpha (hook) " + std::to_string(a), Status::kInvalidValue, "alpha", [a](Bufs& b) {
      P p = b.prob(); p.alpha = a; return pg::xent_hook(Backend::kHost, p, pg::GradScale{}, b.grad.data()); });
    add("bad alpha (merge) " + std::to_string(a), Status::kInvalidValue, "alpha", [a](Bufs& b) {
      return pg::xent_merge_stats(Backend::kHost, b.parts.data(), 2, Bufs::R, a, b.merged.data()); });
  }
  for (float e : {-0.1f, 1.0f, 1.5f, kNaNf}) {
    add("bad label_smoothing " + std::to_string(e), Status::kInvalidValue, "label_smoothing", [e](Bufs& b) {
      P p = b.prob(); p.label_smoothing = e; return fb(b, p); });
    add("bad label_smoothing (backward) " + std::to_string(e), Status::kInvalidValue, "label_smoothing", [e](Bufs& b) {
      P p = b.prob(); p.label_smoothing = e;
      return pg::xent_backward(Backend::kHost, p, pg::Upstream{}, nullptr, b.grad.data()); });
  }
  add("invalid reduction enum", Status::kInvalidValue, "reduction", [](Bufs& b) {
    P p = b.prob(); p.reduction = static_cast<Reduction>(7); return fb(b, p); });
  add("invalid backend enum", Status::kInvalidValue, "backend", [](Bufs& b) { return fb(b, b.prob(), static_cast<Backend>(3)); });
  for (float s : {kNaNf, kInff}) {
    add("non-finite upstream.scale " + std::to_string(s), Status::kInvalidValue, "upstream.scale", [s](Bufs& b) {
      return pg::xent_forward_backward(Backend::kHost, b.prob(), pg::Upstream{s, nullptr}, b.outs()); });
  }
  for (float s : {-1.f, kNaNf, kInff}) {
    add("bad hook scale " + std::to_string(s), Status::kInvalidValue, "scale.scale", [s](Bufs& b) {
      return pg::xent_hook(Backend::kHost, b.prob(), pg::GradScale{s, nullptr}, b.grad.data()); });
  }
  // Layouts.
  add("in place with a different ld", Status::kInvalidLayout, "ld", [](Bufs& b) {
    auto o = b.outs(); o.dlogits = b.logits.data(); o.ld_dlogits = Bufs::C + 1;
    return pg::xent_forward_backward(Backend::kHost, b.prob(), pg::Upstream{}, o); });
  add("in place with a different ld (backward)", Status::kInvalidLayout, "ld", [](Bufs& b) {
    P p = b.prob(); p.ld = Bufs::C + 2;
    return pg::xent_backward(Backend::kHost, p, pg::Upstream{}, nullptr, b.logits.data(), Bufs::C); });
  add("partially overlapping output (+1)", Status::kInvalidLayout, "overlaps", [](Bufs& b) {
    auto o = b.outs(); o.dlogits = b.logits.data() + 1;
    return pg::xent_forward_backward(Backend::kHost, b.prob(), pg::Upstream{}, o); });
  add("partially overlapping output (last row)", Status::kInvalidLayout, "overlaps", [](Bufs& b) {
    auto o = b.outs(); o.dlogits = b.logits.data() + (Bufs::R - 1) * Bufs::C + 3;
    return pg::xent_forward_backward(Backend::kHost, b.prob(), pg::Upstream{}, o); });
  add("output overlapping the input from below", Status::kInvalidLayout, "overlaps", [](Bufs& b) {
    P p = b.prob(); p.logits = b.logits.data() + 5;
    return pg::xent_backward(Backend::kHost, p, pg::Upstream{}, nullptr, b.logits.data()); });
  add("partially overlapping output (hook)", Status::kInvalidLayout, "overlaps", [](Bufs& b) {
    return pg::xent_hook(Backend::kHost, b.prob(), pg::GradScale{}, b.logits.data() + 2); });
  add("merged overlapping parts", Status::kInvalidLayout, "overlaps", [](Bufs& b) {
    return pg::xent_merge_stats(Backend::kHost, b.parts.data(), 2, Bufs::R, 1.f, b.parts.data() + 1); });
  // Targets out of range on the host: rejected before anything is written.
  for (int32_t bad : {static_cast<int32_t>(Bufs::C), -1, 1000000, -101}) {
    add("target out of range " + std::to_string(bad), Status::kInvalidTarget, "targets.index", [bad](Bufs& b) {
      b.y[2] = bad; return fb(b, b.prob()); });
  }
  add("target out of range (int64, backward)", Status::kInvalidTarget, "targets.index", [](Bufs& b) {
    b.y64[3] = (int64_t{1} << 40);
    pg::XentProblem<float, pg::ClassTargets<int64_t>> p;
    p.logits = b.logits.data(); p.rows = Bufs::R; p.cols = Bufs::C; p.targets.index = b.y64.data();
    return pg::xent_backward(Backend::kHost, p, pg::Upstream{}, nullptr, b.grad.data()); });
  add("target out of range (hook)", Status::kInvalidTarget, "targets.index", [](Bufs& b) {
    b.y[0] = Bufs::C; return pg::xent_hook(Backend::kHost, b.prob(), pg::GradScale{}, b.grad.data()); });
  add("target beyond total_cols (shard_apply)", Status::kInvalidTarget, "targets.index", [](Bufs& b) {
    P p = b.prob(); p.col_offset = 10; p.total_cols = 20; b.y[1] = 20;
    return pg::xent_shard_apply(Backend::kHost, p, b.parts.data(), pg::Upstream{}, b.outs()); });
  add("target out of range (shard_stats)", Status::kInvalidTarget, "targets.index", [](Bufs& b) {
    P p = b.prob(); p.cols = 5; p.total_cols = 5; b.y[3] = 7;
    return pg::xent_shard_stats(Backend::kHost, p, b.parts.data()); });
  // Shard range arithmetic that would overflow int64 (col_offset + cols).
  add("col_offset + cols overflows", Status::kInvalidSize, "problem.total_cols", [](Bufs& b) {
    P p = b.prob(); p.col_offset = INT64_MAX - 1; p.total_cols = INT64_MAX; return fb(b, p); });
  add("rows beyond 2^59", Status::kInvalidSize, "problem.rows", [](Bufs& b) {
    P p = b.prob(); p.rows = (int64_t{1} << 59) + 1; p.cols = 1; return fb(b, p); });
  add("rows x ld overflows", Status::kInvalidSize, "problem.ld", [](Bufs& b) {
    P p = b.prob(); p.ld = INT64_MAX / 2; return fb(b, p); });
  // Aliasing: every output against every input and every other output.
  add("loss aliases upstream.values (none)", Status::kInvalidLayout, "out.loss", [](Bufs& b) {
    P p = b.prob(); p.reduction = pg::Reduction::kNone;
    pg::XentOutputs<float> o = b.outs(); o.loss = b.up.data();
    return pg::xent_forward_backward(Backend::kHost, p, pg::Upstream{1.f, b.up.data()}, o); });
  add("lse overlaps lse_alpha", Status::kInvalidLayout, "out.lse", [](Bufs& b) {
    pg::XentOutputs<float> o = b.outs(); o.lse_alpha = b.lse.data() + 1;
    return pg::xent_forward_backward(Backend::kHost, b.prob(), pg::Upstream{}, o); });
  add("loss overlaps dlogits", Status::kInvalidLayout, "out.loss", [](Bufs& b) {
    pg::XentOutputs<float> o = b.outs(); o.loss = b.grad.data() + 5;
    return pg::xent_forward_backward(Backend::kHost, b.prob(), pg::Upstream{}, o); });
  add("dlogits over the targets", Status::kInvalidLayout, "out.dlogits", [](Bufs& b) {
    auto p = b.dprob(); pg::XentOutputs<float> o = b.outs(); o.dlogits = b.dense.data();
    return pg::xent_forward_backward(Backend::kHost, p, pg::Upstream{}, o); });
  add("dlogits over saved_lse_alpha (backward)", Status::kInvalidLayout, "saved_lse_alpha", [](Bufs& b) {
    return pg::xent_backward(Backend::kHost, b.prob(), pg::Upstream{}, b.grad.data(), b.grad.data()); });
  add("stats over the logits (shard_stats)", Status::kInvalidLayout, "stats", [](Bufs& b) {
    return pg::xent_shard_stats(Backend::kHost, b.prob(), reinterpret_cast<RowStats*>(b.logits.data())); });
  add("loss over merged (shard_apply)", Status::kInvalidLayout, "out.loss", [](Bufs& b) {
    pg::XentOutputs<float> o = b.outs(); o.loss = reinterpret_cast<float*>(b.parts.data());
    return pg::xent_shard_apply(Backend::kHost, b.prob(), b.parts.data(), pg::Upstream{}, o); });
  add("hook out over row_scale", Status::kInvalidLayout, "out", [](Bufs& b) {
    return pg::xent_hook(Backend::kHost, b.prob(), pg::GradScale{1.f, b.grad.data()}, b.grad.data()); });
  // Zero rows: arguments wrong whatever the batch size are still rejected.
  add("rows 0: null dlogits (backward)", Status::kNullPointer, "dlogits", [](Bufs& b) {
    P p = b.prob(); p.rows = 0;
    return pg::xent_backward(Backend::kHost, p, pg::Upstream{}, nullptr, static_cast<float*>(nullptr)); });
  add("rows 0: null out (hook)", Status::kNullPointer, "out", [](Bufs& b) {
    P p = b.prob(); p.rows = 0;
    return pg::xent_hook(Backend::kHost, p, pg::GradScale{}, static_cast<float*>(nullptr)); });
  add("rows 0: negative ld", Status::kInvalidSize, "problem.ld", [](Bufs& b) {
    P p = b.prob(); p.rows = 0; p.ld = -7; return fb(b, p); });
  add("rows 0: negative ld_dlogits", Status::kInvalidSize, "out.ld_dlogits", [](Bufs& b) {
    P p = b.prob(); p.rows = 0; pg::XentOutputs<float> o = b.outs(); o.ld_dlogits = -7;
    return pg::xent_forward_backward(Backend::kHost, p, pg::Upstream{}, o); });
  add("rows 0: dlogits == loss", Status::kInvalidLayout, "overlaps", [](Bufs& b) {
    P p = b.prob(); p.rows = 0; pg::XentOutputs<float> o = b.outs(); o.dlogits = o.loss;
    return pg::xent_forward_backward(Backend::kHost, p, pg::Upstream{}, o); });
  // A device call from a translation unit compiled without CUDA.
  add("kCuda without CUDA (forward_backward)", Status::kNoCudaSupport, "CUDA", [](Bufs& b) { return fb(b, b.prob(), Backend::kCuda); });
  add("kCuda without CUDA (backward)", Status::kNoCudaSupport, "CUDA", [](Bufs& b) {
    return pg::xent_backward(Backend::kCuda, b.prob(), pg::Upstream{}, nullptr, b.grad.data()); });
  add("kCuda without CUDA (hook)", Status::kNoCudaSupport, "CUDA", [](Bufs& b) {
    return pg::xent_hook(Backend::kCuda, b.prob(), pg::GradScale{}, b.grad.data()); });
  add("kCuda without CUDA (shard_stats)", Status::kNoCudaSupport, "CUDA", [](Bufs& b) {
    return pg::xent_shard_stats(Backend::kCuda, b.prob(), b.parts.data()); });
  add("kCuda without CUDA (merge)", Status::kNoCudaSupport, "CUDA", [](Bufs& b) {
    return pg::xent_merge_stats(Backend::kCuda, b.parts.data(), 2, Bufs::R, 1.f, b.merged.data()); });
  add("kCuda without CUDA (shard_apply)", Status::kNoCudaSupport, "CUDA", [](Bufs& b) {
    return pg::xent_shard_apply(Backend::kCuda, b.prob(), b.parts.data(), pg::Upstream{}, b.outs()); });
  return v;
}

// The workspace size query never wraps (rows beyond 2^59: SIZE_MAX, which the ops reject).
TEST(XentApi, WorkspaceBytesDoNotWrap) {
  EXPECT_EQ(pg::xent_workspace_bytes(INT64_MAX, pg::Reduction::kMean), SIZE_MAX);
  EXPECT_EQ(pg::xent_workspace_bytes(int64_t{1} << 62, pg::Reduction::kSum), SIZE_MAX);
  EXPECT_EQ(pg::xent_workspace_bytes(1000, pg::Reduction::kMean), size_t{16 + 2 * 4000});
  EXPECT_EQ(pg::xent_workspace_bytes(INT64_MAX, pg::Reduction::kNone), size_t{0});
}

// A row whose every logit is masked has no distribution: its loss and gradient are NaN whatever the
// target, including a dense target row with no mass (lse - sum q z would be -inf - 0 = -inf).
TEST(XentEdge, AllMaskedRowWithEmptyDenseTargetIsNaN) {
  constexpr int64_t R = 2, C = 5;
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> z = {ninf, ninf, ninf, ninf, ninf, 0.5f, -1.f, 2.f, 0.f, 1.f};
  std::vector<float> q = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 1.f, 0.f, 0.f};
  std::vector<float> loss(R, -7.f), grad(R * C, -7.f);
  pg::XentProblem<float, pg::DenseTargets<float>> p;
  p.logits = z.data();
  p.rows = R;
  p.cols = C;
  p.targets.prob = q.data();
  p.alpha = 0.5f;
  p.reduction = pg::Reduction::kNone;
  pg::XentOutputs<float> o;
  o.loss = loss.data();
  o.dlogits = grad.data();
  ASSERT_EQ(pg::xent_forward_backward(Backend::kHost, p, pg::Upstream{}, o), Status::kSuccess)
      << pg::last_error_message();
  EXPECT_TRUE(std::isnan(loss[0])) << "loss of the all-masked row: " << loss[0];
  for (int64_t c = 0; c < C; ++c) EXPECT_TRUE(std::isnan(grad[c])) << "column " << c;
  // Row 1 from the definition: lse - z_y.
  double se = 0;
  for (int64_t c = 0; c < C; ++c) se += std::exp(static_cast<double>(z[C + c]));
  EXPECT_NEAR(loss[1], std::log(se) - 2.0, 1e-6);
}

class XentBadInput : public ::testing::TestWithParam<size_t> {};

TEST_P(XentBadInput, ReturnsStatusNamesArgumentWritesNothing) {
  static const std::vector<BadCase> cases = bad_cases();
  const BadCase& bc = cases[GetParam()];
  SCOPED_TRACE(bc.name);
  Bufs b;
  // A successful call first, so that a stale message cannot satisfy the check below.
  {
    Bufs ok;
    ASSERT_EQ(fb(ok, ok.prob()), Status::kSuccess) << pg::last_error_message();
  }
  Bufs b_in = b;  // the setup (e.g. a bad target) is applied by the call itself; compare with it after
  const Status s = bc.call(b);
  EXPECT_EQ(s, bc.expect) << "got " << pg::status_string(s) << " (" << pg::last_error_message() << ")";
  const std::string msg = pg::last_error_message();
  EXPECT_FALSE(msg.empty());
  EXPECT_NE(msg.find(bc.needle), std::string::npos) << "message \"" << msg << "\" does not name " << bc.needle;
  // Nothing written: rebuild the expected state by applying only the call's own input edits.
  Bufs expect = b_in;
  expect.y = b.y;
  expect.y64 = b.y64;
  EXPECT_TRUE(expect.same_as(b)) << "a rejected call wrote to an output";
}

INSTANTIATE_TEST_SUITE_P(Table, XentBadInput, ::testing::Range<size_t>(0, bad_cases().size()),
                         [](const ::testing::TestParamInfo<size_t>& i) {
                           std::string n = std::to_string(i.param) + "_" + bad_cases()[i.param].name;
                           for (char& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

}  // namespace
}  // namespace pgtest
