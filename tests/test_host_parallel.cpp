// Host-backend speed layers (docs/design.md §6.1-6.3): the polynomial exp2/log2/tanh against float64
// over the whole fp32 range, the 16-bit conversions against the reference's decoders and encoders,
// the thread pool's contract, the thread and ISA settings, and bitwise determinism of the bucket
// transforms and of the cross-entropy ops for 1, 2 and 3 threads and every ISA path this CPU supports.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "bucket_cases.hpp"
#include "powergrad/host_config.hpp"

namespace pgtest {
namespace {

namespace vec = pg::vec;
using pg::HostIsa;

float bits_f(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint32_t f_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Error of fp32 `y` against the exact `ref`, in units of the fp32 spacing at `ref` (subnormal
// spacing 2^-149 below 2^-126; an infinite y, or a ref beyond the fp32 range, counts as 2^128).
double ulp_error(float y, double ref) {
  const double big = std::ldexp(1.0, 128);
  double r = std::fabs(ref) > big ? std::copysign(big, ref) : ref;
  double yd = std::isinf(y) ? std::copysign(big, static_cast<double>(y)) : static_cast<double>(y);
  const int e = r == 0.0 ? -149 : std::max(std::ilogb(r), -126) - 23;
  return std::fabs(yd - r) / std::ldexp(1.0, e);
}

// Every 257th bit pattern (all exponents, signs and mantissa patterns), plus the edges.
template <class F>
void for_sampled_floats(F&& f) {
  for (uint64_t u = 0; u <= 0xFFFFFFFFull; u += 257) f(bits_f(static_cast<uint32_t>(u)));
  for (uint32_t u : {0x00000000u, 0x80000000u, 0x00000001u, 0x007FFFFFu, 0x00800000u, 0x3F800000u, 0x7F7FFFFFu,
                     0x7F800000u, 0xFF800000u, 0x7FC00000u, 0x7F800001u, 0xFFC00000u})
    f(bits_f(u));
}

TEST(HostVec, Exp2WithinTwoUlpOverTheWholeRange) {
  double worst = 0;
  float worst_x = 0;
  for_sampled_floats([&](float x) {
    const float y = vec::exp2_poly(x);
    if (std::isnan(x)) {
      ASSERT_TRUE(std::isnan(y)) << x;
      return;
    }
    const double ref = std::exp2(static_cast<double>(x));
    const double err = ulp_error(y, ref);
    if (err > worst) worst = err, worst_x = x;
    ASSERT_LE(err, 2.0) << "x = " << x << " y = " << y << " ref = " << ref;
  });
  EXPECT_EQ(vec::exp2_poly(-std::numeric_limits<float>::infinity()), 0.f);
  EXPECT_EQ(vec::exp2_poly(std::numeric_limits<float>::infinity()), std::numeric_limits<float>::infinity());
  EXPECT_EQ(vec::exp2_poly(128.f), std::numeric_limits<float>::infinity());
  EXPECT_EQ(vec::exp2_poly(-149.f), bits_f(1));  // the smallest subnormal, exactly
  EXPECT_EQ(vec::exp2_poly(-160.f), 0.f);
  for (int n = -149; n <= 127; ++n) ASSERT_EQ(vec::exp2_poly(static_cast<float>(n)), std::ldexp(1.f, n)) << n;
  std::printf("exp2_poly: worst %.3f ulp at x = %.9g\n", worst, worst_x);
}

TEST(HostVec, Exp2NegEqualsExp2PolyAndFlushesBelowMinus126) {
  for_sampled_floats([&](float x) {
    if (!(x <= 0.f) && !std::isnan(x)) return;  // its contract: x <= 0 or NaN
    const float y = vec::exp2_neg(x);
    if (std::isnan(x)) {
      ASSERT_TRUE(std::isnan(y)) << x;
    } else if (x < -126.f) {
      ASSERT_EQ(y, 0.f) << x;
    } else {
      ASSERT_EQ(f_bits(y), f_bits(vec::exp2_poly(x))) << "x = " << x;
    }
  });
  EXPECT_EQ(vec::exp2_neg(-std::numeric_limits<float>::infinity()), 0.f);
  EXPECT_EQ(vec::exp2_neg(0.f), 1.f);
  EXPECT_EQ(vec::exp2_neg(-126.f), std::ldexp(1.f, -126));
}

TEST(HostVec, Log2WithinThreeUlpForEveryPositiveInput) {
  double worst = 0;
  float worst_x = 0;
  for_sampled_floats([&](float x) {
    const float y = vec::log2_poly(x);
    if (std::isnan(x) || x < 0.f) {
      ASSERT_TRUE(std::isnan(y)) << x;
      return;
    }
    if (x == 0.f) {
      ASSERT_EQ(y, -std::numeric_limits<float>::infinity());
      return;
    }
    const double ref = std::log2(static_cast<double>(x));
    if (std::isinf(x)) {
      ASSERT_EQ(y, std::numeric_limits<float>::infinity());
      return;
    }
    const double err = ulp_error(y, ref);
    if (err > worst) worst = err, worst_x = x;
    ASSERT_LE(err, 3.0) << "x = " << x << " y = " << y << " ref = " << ref;
  });
  for (int n = -149; n <= 127; ++n) ASSERT_EQ(vec::log2_poly(std::ldexp(1.f, n)), static_cast<float>(n)) << n;
  EXPECT_TRUE(std::isnan(vec::log2_poly(-0.5f)));
  std::printf("log2_poly: worst %.3f ulp at x = %.9g\n", worst, worst_x);
}

// Decoders: all 65536 patterns against the reference (NaN for NaN).
TEST(HostVec, TanhWithinFourUlpOverTheWholeRange) {
  double worst = 0;
  float worst_x = 0;
  for_sampled_floats([&](float x) {
    const float y = vec::tanh_poly(x);
    if (std::isnan(x)) {
      ASSERT_TRUE(std::isnan(y)) << x;
      return;
    }
    const double e = ulp_error(y, std::tanh(static_cast<double>(x)));
    if (e > worst) {
      worst = e;
      worst_x = x;
    }
    ASSERT_LE(e, 4.0) << "x = " << x << " got " << y;
  });
  EXPECT_EQ(vec::tanh_poly(std::numeric_limits<float>::infinity()), 1.f);
  EXPECT_EQ(vec::tanh_poly(-std::numeric_limits<float>::infinity()), -1.f);
  EXPECT_TRUE(std::signbit(vec::tanh_poly(-0.f)));
  std::printf("tanh_poly: worst %.3f ulp at x = %.9g\n", worst, worst_x);
}

TEST(HostVec, SixteenBitDecodeMatchesReference) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const double rh = pgref::half_bits_to_double(static_cast<uint16_t>(h));
    const float vh = vec::f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(rh)) ASSERT_TRUE(std::isnan(vh)) << h;
    else ASSERT_EQ(static_cast<double>(vh), rh) << h;
    if (!std::isnan(rh)) {
      ASSERT_EQ(std::signbit(vh), std::signbit(rh)) << h;
    }
    const double rb = pgref::bf16_bits_to_double(static_cast<uint16_t>(h));
    const float vb = vec::bf16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(rb)) ASSERT_TRUE(std::isnan(vb)) << h;
    else ASSERT_EQ(static_cast<double>(vb), rb) << h;
  }
}

// Encoders (round to nearest even): sampled fp32 patterns, and every tie and neighbour of a tie
// around each half value, against the reference encoder; NaN stays a NaN.
TEST(HostVec, SixteenBitEncodeMatchesReference) {
  auto check = [](float x) {
    const uint16_t h = vec::f32_to_f16(x), b = vec::f32_to_bf16(x);
    if (std::isnan(x)) {
      ASSERT_TRUE(std::isnan(pgref::half_bits_to_double(h))) << f_bits(x);
      ASSERT_TRUE(std::isnan(pgref::bf16_bits_to_double(b))) << f_bits(x);
      return;
    }
    ASSERT_EQ(h, pgref::double_to_half_bits(x)) << "x = " << x << " bits " << f_bits(x);
    ASSERT_EQ(b, pgref::double_to_bf16_bits(x)) << "x = " << x << " bits " << f_bits(x);
  };
  for_sampled_floats(check);
  for (uint32_t h = 0; h < 0x7C00; ++h) {
    const double lo = pgref::half_bits_to_double(static_cast<uint16_t>(h));
    const double hi = pgref::half_bits_to_double(static_cast<uint16_t>(h + 1));
    const float mid = static_cast<float>((lo + hi) / 2);  // exact: 11 bits + 1
    for (float x : {mid, std::nextafter(mid, 0.f), std::nextafter(mid, 1e30f)}) {
      check(x);
      check(-x);
    }
  }
}

// ---- the thread pool ----

TEST(HostParallel, EveryTaskRunsExactlyOnce) {
  for (int threads : {1, 2, 3, 8})
    for (int64_t tasks : {0, 1, 2, 3, 7, 100, 1000}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(tasks));
      pg::host::parallel_for(threads, tasks, [&](int64_t t) { hits[static_cast<size_t>(t)].fetch_add(1); });
      for (int64_t t = 0; t < tasks; ++t) ASSERT_EQ(hits[static_cast<size_t>(t)].load(), 1) << threads << " " << t;
    }
}

// Several program threads at once, and a region inside a region: a busy pool runs the work on the
// calling thread; every task still runs once.
TEST(HostParallel, ConcurrentAndNestedRegions) {
  std::vector<std::thread> callers;
  std::atomic<int> bad{0};
  for (int c = 0; c < 4; ++c)
    callers.emplace_back([&bad] {
      for (int rep = 0; rep < 50; ++rep) {
        std::vector<std::atomic<int>> hits(64 * 8);
        pg::host::parallel_for(3, 64, [&](int64_t t) {
          pg::host::parallel_for(2, 8, [&](int64_t u) { hits[static_cast<size_t>(t * 8 + u)].fetch_add(1); });
        });
        for (auto& h : hits)
          if (h.load() != 1) bad.fetch_add(1);
      }
    });
  for (auto& t : callers) t.join();
  EXPECT_EQ(bad.load(), 0);
}

TEST(HostParallel, SettingsRejectBadValues) {
  const int before = pg::host_threads();
  EXPECT_EQ(pg::set_host_threads(-1), Status::kInvalidValue);
  EXPECT_NE(std::string(pg::last_error_message()).find("threads = -1"), std::string::npos) << pg::last_error_message();
  EXPECT_EQ(pg::set_host_threads(100000), Status::kInvalidValue);
  EXPECT_EQ(pg::host_threads(), before);
  ASSERT_EQ(pg::set_host_threads(3), Status::kSuccess);
  EXPECT_EQ(pg::host_threads(), 3);
  EXPECT_STREQ(pg::last_error_message(), "");
  ASSERT_EQ(pg::set_host_threads(0), Status::kSuccess);
  EXPECT_GE(pg::host_threads(), 1);
  EXPECT_EQ(pg::set_host_isa(static_cast<HostIsa>(7)), Status::kInvalidValue);
  EXPECT_NE(std::string(pg::last_error_message()).find("isa (7)"), std::string::npos) << pg::last_error_message();
  EXPECT_EQ(pg::set_host_isa(HostIsa::kBaseline), Status::kSuccess);
  EXPECT_EQ(pg::host_isa(), HostIsa::kBaseline);
  EXPECT_EQ(pg::set_host_isa(HostIsa::kAuto), Status::kSuccess);
  EXPECT_NE(pg::host_isa(), HostIsa::kAuto);
}

// ---- determinism of the bucket transforms ----

std::vector<HostIsa> supported_isas() {
  std::vector<HostIsa> v;
  for (HostIsa i : {HostIsa::kBaseline, HostIsa::kAvx2, HostIsa::kAvx512})
    if (pg::host_isa_supported(i)) v.push_back(i);
  return v;
}

struct SettingsGuard {
  ~SettingsGuard() {
    (void)pg::set_host_threads(0);
    (void)pg::set_host_isa(HostIsa::kAuto);
  }
};

template <class T>
class HostDeterminism : public ::testing::Test {};
struct DetNames {
  template <class T>
  static std::string GetName(int) {
    return DT<T>::name;
  }
};
using DetTypes = ::testing::Types<float, half_t, bfloat16_t>;
TYPED_TEST_SUITE(HostDeterminism, DetTypes, DetNames);

std::vector<BucketCase> determinism_cases() {
  std::vector<BucketCase> v;
  uint32_t seed = 900;
  auto add = [&](BOp op, float beta, NormPreserve p, BucketScope sc) {
    BucketCase c;
    c.shapes = resnet_like_shapes();
    c.op = op;
    c.beta = beta;
    c.preserve = p;
    c.scope = sc;
    c.max_norm = 0.5f;
    c.seed = seed++;
    v.push_back(c);
  };
  add(BOp::kClip, 1.f, NormPreserve::kNone, BucketScope::kBucket);
  add(BOp::kClip, 1.f, NormPreserve::kNone, BucketScope::kTensor);
  add(BOp::kAgc, 1.f, NormPreserve::kNone, BucketScope::kTensor);
  add(BOp::kAgc, 0.5f, NormPreserve::kL1, BucketScope::kTensor);
  add(BOp::kPower, 0.5f, NormPreserve::kNone, BucketScope::kTensor);
  add(BOp::kPower, 0.7f, NormPreserve::kL1, BucketScope::kBucket);
  add(BOp::kPower, 2.f, NormPreserve::kL2, BucketScope::kTensor);
  BucketCase bad = v.back();  // a non-finite gradient element
  bad.bad_tensor = 2;
  bad.bad_value = std::numeric_limits<double>::infinity();
  v.push_back(bad);
  return v;
}

// 1, 2 and 3 threads x every ISA path: the same bits (outputs, norms, flags) as 1 thread on the
// baseline path. The default settings' results are checked against the reference by the bucket
// suites; here the reference check runs once more on the most different configuration.
TYPED_TEST(HostDeterminism, BucketOpsBitwiseAcrossThreadsAndIsa) {
  using T = TypeParam;
  SettingsGuard guard;
  for (const BucketCase& c : determinism_cases()) {
    SCOPED_TRACE(c.str());
    std::vector<T> first;
    std::vector<float> first_norms;
    int32_t first_flags = -1;
    for (HostIsa isa : supported_isas())
      for (int threads : {1, 2, 3}) {
        ASSERT_EQ(pg::set_host_isa(isa), Status::kSuccess);
        ASSERT_EQ(pg::set_host_threads(threads), Status::kSuccess);
        HostMem m;
        auto d = make_bucket_data<T, T>(c);
        std::vector<float> norms(c.op == BOp::kClip ? (c.scope == BucketScope::kBucket ? 1 : c.shapes.size()) : 0);
        int32_t flags = -1;
        ASSERT_EQ((run_bucket_op<T, T, HostMem>(c, m, d, norms, flags)), Status::kSuccess) << pg::last_error_message();
        if (first.empty()) {
          first = d.grad;
          first_norms = norms;
          first_flags = flags;
          continue;
        }
        ASSERT_EQ(flags, first_flags) << "isa " << int(isa) << " threads " << threads;
        for (size_t i = 0; i < norms.size(); ++i)
          ASSERT_TRUE(same_bits(norms[i], first_norms[i])) << "norm " << i << " isa " << int(isa) << " threads " << threads;
        for (size_t i = 0; i < first.size(); ++i)
          ASSERT_TRUE(same_bits(d.grad[i], first[i])) << "i " << i << " isa " << int(isa) << " threads " << threads;
      }
  }
  // The configuration farthest from the default, against the float64 reference.
  ASSERT_EQ(pg::set_host_isa(HostIsa::kBaseline), Status::kSuccess);
  ASSERT_EQ(pg::set_host_threads(3), Status::kSuccess);
  const std::vector<BucketCase> cases = determinism_cases();
  for (size_t i : {size_t(0), size_t(3), size_t(5)}) check_bucket_case<T, T, HostMem>(cases[i]);
}

// ---- determinism of the cross-entropy ----

// Shapes with several row tasks (docs/design.md §6.3: max(1, 16384 / cols) rows per task), chunk
// tails, masked and NaN logits, every target kind, with and without the options.
std::vector<Case> xent_determinism_cases() {
  std::vector<Case> v;
  uint64_t seed = 700;
  auto add = [&](int64_t rows, int64_t cols, TargetKind tk, float alpha, float eps, Reduction red, bool opts,
                 bool in_place) {
    Case c;
    c.rows = rows;
    c.cols = cols;
    c.targets = tk;
    c.alpha = alpha;
    c.eps = eps;
    c.red = red;
    c.in_place = in_place;
    c.mask_frac = 0.02;
    // A NaN logit in a dense row (class rows may be ignored, which the checker's NaN rule excludes).
    c.ignore_frac = tk == TargetKind::kDense ? 0.0 : 0.1;
    if (tk == TargetKind::kDense) c.nan_rows = {3};
    c.up = red == Reduction::kNone ? UpMode::kPerRow : UpMode::kScalar;
    if (opts) {
      c.weights = true;
      c.z_loss = 1e-3f;
      c.softcap = 20.f;
      c.want_accuracy = true;
    }
    c.seed = seed++;
    v.push_back(c);
  };
  add(37, 1500, TargetKind::kInt64, 0.3f, 0.1f, Reduction::kMean, false, false);
  add(37, 1500, TargetKind::kInt32, 0.3f, 0.f, Reduction::kSum, true, true);
  add(23, 2100, TargetKind::kDense, 1.f, 0.1f, Reduction::kNone, false, false);
  add(23, 2100, TargetKind::kDense, 0.f, 0.f, Reduction::kMean, true, false);
  add(3000, 40, TargetKind::kInt64, 0.7f, 0.f, Reduction::kMean, false, true);
  return v;
}

template <class U>
void expect_same_bits(const std::vector<U>& got, const std::vector<U>& first, const char* what, HostIsa isa, int threads) {
  ASSERT_EQ(got.size(), first.size()) << what;
  for (size_t i = 0; i < first.size(); ++i)
    ASSERT_TRUE(same_bits(got[i], first[i])) << what << " " << i << " isa " << int(isa) << " threads " << threads;
}

// The fused op, the split form's statistics and the saved-statistics backward: 1, 2 and 3 threads
// x every ISA path give the same bits as 1 thread on the baseline path (the reference check of the
// default settings is the cross-entropy suites'; the farthest configuration is checked once more).
TYPED_TEST(HostDeterminism, CrossEntropyBitwiseAcrossThreadsAndIsa) {
  using T = TypeParam;
  SettingsGuard guard;
  for (const Case& c : xent_determinism_cases()) {
    SCOPED_TRACE(std::string(DT<T>::name) + " " + c.str());
    with_targets<T>(c.targets, [&](auto tag) {
      using Tg = decltype(tag);
      bool have_first = false;
      FusedOut<T> first;
      std::vector<RowStats> first_stats;
      std::vector<T> first_bwd;
      for (HostIsa isa : supported_isas())
        for (int threads : {1, 2, 3}) {
          ASSERT_EQ(pg::set_host_isa(isa), Status::kSuccess);
          ASSERT_EQ(pg::set_host_threads(threads), Status::kSuccess);
          HostMem mem;
          CaseData<T> d = make_case<T>(c);
          FusedOut<T> o = run_fused<T, Tg, HostMem>(mem, d);
          ASSERT_EQ(o.status, Status::kSuccess) << pg::last_error_message();
          // Split form, step 1, over the whole row.
          std::vector<RowStats> stats(c.rows);
          std::vector<T> logits = d.logits;
          ASSERT_EQ(pg::xent_shard_stats(Backend::kHost, make_problem<T, Tg>(mem, d, logits.data()), stats.data()),
                    Status::kSuccess)
              << pg::last_error_message();
          // Backward from the fused op's saved lse_alpha (no z-loss: that runs the fused path).
          std::vector<T> bwd(c.offset + c.rows * c.ld() + kGuard, poison_value<T>());
          if (c.z_loss == 0.f) {
            std::vector<float> lse_a(o.lse_a.begin(), o.lse_a.begin() + c.rows);
            std::vector<float> upv = d.upv;
            pg::Upstream up{c.up_scale, upv.empty() ? nullptr : upv.data()};
            const size_t wsb = pg::xent_workspace_bytes(c.rows, c.red);
            std::vector<unsigned char> ws(wsb + 1);
            ASSERT_EQ(pg::xent_backward(Backend::kHost, make_problem<T, Tg>(mem, d, logits.data()), up, lse_a.data(),
                                        bwd.data() + c.offset, c.ld(), ws.data(), wsb),
                      Status::kSuccess)
                << pg::last_error_message();
          }
          if (!have_first) {
            first = o;
            first_stats = stats;
            first_bwd = bwd;
            have_first = true;
            continue;
          }
          expect_same_bits(o.buf, first.buf, "dlogits", isa, threads);
          expect_same_bits(o.loss, first.loss, "loss", isa, threads);
          expect_same_bits(o.lse, first.lse, "lse", isa, threads);
          expect_same_bits(o.lse_a, first.lse_a, "lse_alpha", isa, threads);
          expect_same_bits(o.zl, first.zl, "z_loss", isa, threads);
          expect_same_bits(o.argmax, first.argmax, "argmax", isa, threads);
          expect_same_bits(o.correct, first.correct, "correct", isa, threads);
          expect_same_bits(bwd, first_bwd, "backward", isa, threads);
          for (size_t r = 0; r < stats.size(); ++r)
            ASSERT_EQ(std::memcmp(&stats[r], &first_stats[r], sizeof(RowStats)), 0)
                << "stats row " << r << " isa " << int(isa) << " threads " << threads;
        }
    });
  }
  ASSERT_EQ(pg::set_host_isa(HostIsa::kBaseline), Status::kSuccess);
  ASSERT_EQ(pg::set_host_threads(3), Status::kSuccess);
  for (const Case& c : xent_determinism_cases()) check_fused_case<T, HostMem>(c);
}

// The argmax output on rows built for its edge cases, against the first maximum found here by a
// plain scan: equal maxima in different chunks of 1024 columns (the first wins), the maximum in a
// chunk tail, -0 before +0, NaN never the max, and rows with no value above -inf (argmax 0). Every
// ISA path, 1 and 2 threads, fp32 and bf16 (widened into the row buffer), without and with a
// softcap (tanh is monotone: the capped row has the same argmax).
template <class T>
void check_argmax_edges(float softcap) {
  const int64_t R = 8, C = 3000;
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> z(static_cast<size_t>(R * C), -1.f);
  auto at = [&](int64_t r, int64_t c) -> float& { return z[static_cast<size_t>(r * C + c)]; };
  at(0, 2500) = 5.f, at(0, 1500) = 5.f;                   // equal maxima in chunks 1 and 2
  at(1, 2999) = 4.f;                                      // in the last chunk's tail
  for (int64_t c = 0; c < C; ++c) at(2, c) = -inf;        // nothing above -inf
  for (int64_t c = 0; c < C; ++c) at(3, c) = c < 10 ? nan : -inf;
  at(4, 0) = nan, at(4, 1031) = 7.f, at(4, 1030) = 7.f, at(4, 5) = 7.f;  // NaN first, ties in chunks 0 and 1
  for (int64_t c = 0; c < C; ++c) at(5, c) = -2.f;
  at(5, 3) = -0.f, at(5, 4) = 0.f, at(5, 2000) = 0.f;     // -0 == +0: the first of them
  at(6, 17) = 3.f, at(6, 16) = 3.f;                       // ties inside one block of 16 lanes
  at(7, 1023) = 9.f, at(7, 1024) = 9.f;                   // across a chunk boundary
  std::vector<int64_t> want(R);
  for (int64_t r = 0; r < R; ++r) {
    int64_t best = 0;
    float bv = -inf;
    for (int64_t c = 0; c < C; ++c)
      if (at(r, c) > bv) bv = at(r, c), best = c;
    want[static_cast<size_t>(r)] = best;
  }
  const std::vector<int64_t> expected = {1500, 2999, 0, 0, 5, 3, 16, 1023};
  ASSERT_EQ(want, expected);  // the scan above, checked against the rows' construction
  std::vector<T> logits(z.size());
  for (size_t i = 0; i < z.size(); ++i) logits[i] = pg::from_float<T>(z[i]);
  std::vector<int64_t> y(static_cast<size_t>(R), 0);
  for (HostIsa isa : supported_isas())
    for (int threads : {1, 2}) {
      ASSERT_EQ(pg::set_host_isa(isa), Status::kSuccess);
      ASSERT_EQ(pg::set_host_threads(threads), Status::kSuccess);
      pg::XentProblem<T, pg::ClassTargets<int64_t>> p;
      p.logits = logits.data();
      p.rows = R;
      p.cols = C;
      p.targets.index = y.data();
      p.reduction = Reduction::kNone;
      p.softcap = softcap;
      std::vector<float> loss(static_cast<size_t>(R));
      std::vector<int64_t> arg(static_cast<size_t>(R), -7);
      std::vector<int32_t> correct(static_cast<size_t>(R), -7);
      pg::XentOutputs<T> o;
      o.loss = loss.data();
      o.argmax = arg.data();
      o.correct = correct.data();
      ASSERT_EQ(pg::xent_forward_backward(Backend::kHost, p, pg::Upstream{}, o), Status::kSuccess)
          << pg::last_error_message();
      for (int64_t r = 0; r < R; ++r) {
        EXPECT_EQ(arg[static_cast<size_t>(r)], expected[static_cast<size_t>(r)])
            << "row " << r << " isa " << int(isa) << " threads " << threads << " softcap " << softcap;
        EXPECT_EQ(correct[static_cast<size_t>(r)], expected[static_cast<size_t>(r)] == 0 ? 1 : 0) << "row " << r;
      }
    }
}

TEST(HostXentArgmax, EdgeCasesOnEveryPath) {
  SettingsGuard guard;
  check_argmax_edges<float>(0.f);
  check_argmax_edges<float>(30.f);
  check_argmax_edges<pg::bfloat16_t>(0.f);
  check_argmax_edges<pg::bfloat16_t>(30.f);
}

}  // namespace
}  // namespace pgtest
