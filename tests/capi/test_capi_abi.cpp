// C ABI vs C++ API on the host backend: every op, dtype and target kind, called both ways on the
// same data, must give bitwise-equal outputs (the C entry points run the same code).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <type_traits>
#include <vector>

#include "powergrad/powergrad_c.h"
#include "powergrad/xent.hpp"

namespace {

using powergrad::bfloat16_t;
using powergrad::half_t;

template <class T>
constexpr pg_dtype_t dtype_of() {
  if constexpr (std::is_same_v<T, float>) return PG_DTYPE_FLOAT32;
  if constexpr (std::is_same_v<T, half_t>) return PG_DTYPE_FLOAT16;
  return PG_DTYPE_BFLOAT16;
}

template <class T, class Tg>
constexpr pg_target_kind_t kind_of() {
  if constexpr (std::is_same_v<Tg, powergrad::ClassTargets<int32_t>>) return PG_TARGET_INDEX_INT32;
  if constexpr (std::is_same_v<Tg, powergrad::ClassTargets<int64_t>>) return PG_TARGET_INDEX_INT64;
  return PG_TARGET_DENSE;
}

// Same poison on both sides: an element one side leaves unwritten must be unwritten on the other.
template <class V>
V poisoned(size_t n) {
  V v(n);
  std::memset(v.data(), 0xA7, n * sizeof(typename V::value_type));
  return v;
}

template <class V>
void expect_bitwise_equal(const V& a, const V& b, const char* what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(typename V::value_type))) << what;
}

void expect_ok(pg_status_t s) { ASSERT_EQ(s, PG_STATUS_SUCCESS) << pg_status_string(s) << ": " << pg_last_error(); }

constexpr int64_t kRows = 7, kCols = 37, kLd = 41;
constexpr int64_t kSplit = 20;  // shard 0: columns [0, 20); shard 1: [20, 37)

template <class T, class Tg>
struct Data {
  std::vector<T> logits, dense;
  std::vector<int32_t> idx32;
  std::vector<int64_t> idx64;
  std::vector<float> upstream_values, row_scale;

  Data() {
    std::mt19937 rng(1234 + static_cast<int>(dtype_of<T>()) * 7 + static_cast<int>(kind_of<T, Tg>()));
    std::normal_distribution<float> z(0.f, 2.f);
    std::uniform_real_distribution<float> u(0.f, 1.f);
    logits.resize(kRows * kLd);
    for (auto& x : logits) x = powergrad::from_float<T>(z(rng));
    dense.resize(kRows * kCols);
    for (int64_t r = 0; r < kRows; ++r) {
      std::vector<float> q(kCols);
      float sum = 0.f;
      for (auto& x : q) sum += (x = u(rng) * u(rng));
      for (int64_t c = 0; c < kCols; ++c) dense[r * kCols + c] = powergrad::from_float<T>(q[c] / sum);
    }
    for (int64_t r = 0; r < kRows; ++r) {
      const int32_t y = r == 2 ? -100 : static_cast<int32_t>(rng() % kCols);  // row 2 ignored
      idx32.push_back(y);
      idx64.push_back(y);
    }
    for (int64_t r = 0; r < kRows; ++r) upstream_values.push_back(0.25f + u(rng));
    for (int64_t r = 0; r < kRows; ++r) row_scale.push_back(0.5f + u(rng));
  }

  const void* target_ptr(int64_t col_offset) const {
    if constexpr (std::is_same_v<Tg, powergrad::DenseTargets<T>>) return dense.data() + col_offset;
    else if constexpr (std::is_same_v<Tg, powergrad::ClassTargets<int32_t>>) return idx32.data();
    else return idx64.data();
  }

  // The same problem in both forms; [col_offset, col_offset + cols) of the row.
  powergrad::XentProblem<T, Tg> cpp(pg_reduction_t red, int64_t col_offset = 0, int64_t cols = kCols,
                                    const T* input = nullptr) const {
    powergrad::XentProblem<T, Tg> p;
    p.logits = (input ? input : logits.data()) + col_offset;
    p.rows = kRows;
    p.cols = cols;
    p.ld = kLd;
    if constexpr (std::is_same_v<Tg, powergrad::DenseTargets<T>>) {
      p.targets.prob = dense.data() + col_offset;
      p.targets.ld = kCols;
    } else {
      p.targets.index = static_cast<decltype(p.targets.index)>(target_ptr(0));
      p.targets.ignore_index = -100;
    }
    p.alpha = 0.6f;
    p.label_smoothing = 0.05f;
    p.reduction = static_cast<powergrad::Reduction>(red);
    p.col_offset = col_offset;
    p.total_cols = col_offset || cols != kCols ? kCols : 0;
    return p;
  }
  pg_xent_problem_t c(pg_reduction_t red, int64_t col_offset = 0, int64_t cols = kCols,
                      const T* input = nullptr) const {
    pg_xent_problem_t p{};
    p.struct_size = sizeof p;
    p.device = PG_DEVICE_HOST;
    p.dtype = dtype_of<T>();
    p.logits = (input ? input : logits.data()) + col_offset;
    p.rows = kRows;
    p.cols = cols;
    p.ld = kLd;
    p.target_kind = kind_of<T, Tg>();
    p.targets = target_ptr(col_offset);
    p.target_ld = std::is_same_v<Tg, powergrad::DenseTargets<T>> ? kCols : 0;
    p.ignore_index = -100;
    p.alpha = 0.6f;
    p.label_smoothing = 0.05f;
    p.reduction = red;
    p.col_offset = col_offset;
    p.total_cols = col_offset || cols != kCols ? kCols : 0;
    return p;
  }
};

struct Outs {
  std::vector<float> loss, lse, lse_alpha;
  template <class T>
  Outs(pg_reduction_t red, std::vector<T>& grad_storage) {
    loss = poisoned<std::vector<float>>(red == PG_REDUCTION_NONE ? kRows : 1);
    lse = poisoned<std::vector<float>>(kRows);
    lse_alpha = poisoned<std::vector<float>>(kRows);
    grad_storage = poisoned<std::vector<T>>(kRows * kLd);
  }
};

template <class T, class Tg>
void check_all_ops() {
  const Data<T, Tg> d;
  for (pg_reduction_t red : {PG_REDUCTION_MEAN, PG_REDUCTION_SUM, PG_REDUCTION_NONE}) {
    SCOPED_TRACE(testing::Message() << "reduction " << static_cast<int>(red));
    const powergrad::Upstream up{0.75f, red == PG_REDUCTION_NONE ? d.upstream_values.data() : nullptr};
    const pg_upstream_t c_up{sizeof(pg_upstream_t), up.scale, up.values};

    // forward_backward
    std::vector<T> g_cpp, g_c;
    Outs o_cpp(red, g_cpp), o_c(red, g_c);
    {
      powergrad::XentOutputs<T> out{o_cpp.loss.data(), o_cpp.lse.data(), o_cpp.lse_alpha.data(), g_cpp.data(), 0};
      ASSERT_EQ(powergrad::xent_forward_backward(powergrad::Backend::kHost, d.cpp(red), up, out),
                powergrad::Status::kSuccess);
      const pg_xent_outputs_t c_out{sizeof(pg_xent_outputs_t), o_c.loss.data(), o_c.lse.data(), o_c.lse_alpha.data(),
                                    g_c.data(), 0, nullptr, nullptr, nullptr};
      const pg_xent_problem_t cp = d.c(red);
      expect_ok(pg_xent_forward_backward(&cp, &c_up, &c_out, nullptr, 0, nullptr));
      expect_bitwise_equal(o_cpp.loss, o_c.loss, "forward_backward loss");
      expect_bitwise_equal(o_cpp.lse, o_c.lse, "forward_backward lse");
      expect_bitwise_equal(o_cpp.lse_alpha, o_c.lse_alpha, "forward_backward lse_alpha");
      expect_bitwise_equal(g_cpp, g_c, "forward_backward dlogits");
      EXPECT_TRUE(std::isfinite(o_c.loss[0]));
    }

    // backward, with and without the saved lse_alpha
    for (const float* saved : {static_cast<const float*>(nullptr), static_cast<const float*>(o_c.lse_alpha.data())}) {
      auto b_cpp = poisoned<std::vector<T>>(kRows * kLd), b_c = b_cpp;
      ASSERT_EQ(powergrad::xent_backward(powergrad::Backend::kHost, d.cpp(red), up, saved, b_cpp.data()),
                powergrad::Status::kSuccess);
      const pg_xent_problem_t cp = d.c(red);
      expect_ok(pg_xent_backward(&cp, &c_up, saved, b_c.data(), 0, nullptr, 0, nullptr));
      expect_bitwise_equal(b_cpp, b_c, saved ? "backward (saved lse_alpha) dlogits" : "backward dlogits");
    }

    // hook: the input is an ordinary (alpha = 1) gradient scaled per row
    {
      std::vector<T> g1 = poisoned<std::vector<T>>(kRows * kLd);
      auto p1 = d.cpp(PG_REDUCTION_NONE);
      p1.alpha = 1.f;
      p1.label_smoothing = 0.f;
      const powergrad::Upstream up1{1.f, d.row_scale.data()};
      ASSERT_EQ(powergrad::xent_backward(powergrad::Backend::kHost, p1, up1, nullptr, g1.data()),
                powergrad::Status::kSuccess);
      for (const float* rs : {static_cast<const float*>(nullptr), static_cast<const float*>(d.row_scale.data())}) {
        auto h_cpp = poisoned<std::vector<T>>(kRows * kLd), h_c = h_cpp;
        ASSERT_EQ(powergrad::xent_hook(powergrad::Backend::kHost, d.cpp(red, 0, kCols, g1.data()),
                                       powergrad::GradScale{1.5f, rs}, h_cpp.data()),
                  powergrad::Status::kSuccess);
        const pg_xent_problem_t cp = d.c(red, 0, kCols, g1.data());
        expect_ok(pg_xent_hook(&cp, 1.5f, rs, h_c.data(), 0, nullptr));
        expect_bitwise_equal(h_cpp, h_c, "hook out");
      }
    }

    // split form: two column shards, stats -> merge -> apply
    {
      const int64_t off[2] = {0, kSplit}, cols[2] = {kSplit, kCols - kSplit};
      auto parts_cpp = poisoned<std::vector<powergrad::RowStats>>(2 * kRows);
      auto parts_c = poisoned<std::vector<pg_row_stats_t>>(2 * kRows);
      for (int s = 0; s < 2; ++s) {
        ASSERT_EQ(powergrad::xent_shard_stats(powergrad::Backend::kHost, d.cpp(red, off[s], cols[s]),
                                              parts_cpp.data() + s * kRows),
                  powergrad::Status::kSuccess);
        const pg_xent_problem_t cp = d.c(red, off[s], cols[s]);
        expect_ok(pg_xent_shard_stats(&cp, parts_c.data() + s * kRows, nullptr));
      }
      ASSERT_EQ(0, std::memcmp(parts_cpp.data(), parts_c.data(), parts_c.size() * sizeof(pg_row_stats_t)))
          << "shard_stats";
      auto merged_cpp = poisoned<std::vector<powergrad::RowStats>>(kRows);
      auto merged_c = poisoned<std::vector<pg_row_stats_t>>(kRows);
      ASSERT_EQ(powergrad::xent_merge_stats(powergrad::Backend::kHost, parts_cpp.data(), 2, kRows, 0.6f,
                                            merged_cpp.data()),
                powergrad::Status::kSuccess);
      expect_ok(pg_xent_merge_stats(PG_DEVICE_HOST, parts_c.data(), 2, kRows, 0.6f, merged_c.data(), nullptr));
      ASSERT_EQ(0, std::memcmp(merged_cpp.data(), merged_c.data(), merged_c.size() * sizeof(pg_row_stats_t)))
          << "merge_stats";
      for (int s = 0; s < 2; ++s) {
        std::vector<T> a_cpp, a_c;
        Outs oa_cpp(red, a_cpp), oa_c(red, a_c);
        powergrad::XentOutputs<T> out{oa_cpp.loss.data(), oa_cpp.lse.data(), oa_cpp.lse_alpha.data(),
                                      a_cpp.data() + off[s], kLd};
        ASSERT_EQ(powergrad::xent_shard_apply(powergrad::Backend::kHost, d.cpp(red, off[s], cols[s]),
                                              merged_cpp.data(), up, out),
                  powergrad::Status::kSuccess);
        const pg_xent_outputs_t c_out{sizeof(pg_xent_outputs_t), oa_c.loss.data(), oa_c.lse.data(),
                                      oa_c.lse_alpha.data(), a_c.data() + off[s], kLd, nullptr, nullptr, nullptr};
        const pg_xent_problem_t cp = d.c(red, off[s], cols[s]);
        expect_ok(pg_xent_shard_apply(&cp, merged_c.data(), &c_up, &c_out, nullptr, 0, nullptr));
        expect_bitwise_equal(oa_cpp.loss, oa_c.loss, "shard_apply loss");
        expect_bitwise_equal(oa_cpp.lse, oa_c.lse, "shard_apply lse");
        expect_bitwise_equal(oa_cpp.lse_alpha, oa_c.lse_alpha, "shard_apply lse_alpha");
        expect_bitwise_equal(a_cpp, a_c, "shard_apply dlogits");
      }
    }
  }
}

#define PG_ABI_TEST(NAME, T, TG) \
  TEST(CapiAbi, NAME) { check_all_ops<T, TG>(); }
PG_ABI_TEST(F32Int32, float, powergrad::ClassTargets<int32_t>)
PG_ABI_TEST(F32Int64, float, powergrad::ClassTargets<int64_t>)
PG_ABI_TEST(F32Dense, float, powergrad::DenseTargets<float>)
PG_ABI_TEST(F16Int32, half_t, powergrad::ClassTargets<int32_t>)
PG_ABI_TEST(F16Int64, half_t, powergrad::ClassTargets<int64_t>)
PG_ABI_TEST(F16Dense, half_t, powergrad::DenseTargets<half_t>)
PG_ABI_TEST(Bf16Int32, bfloat16_t, powergrad::ClassTargets<int32_t>)
PG_ABI_TEST(Bf16Int64, bfloat16_t, powergrad::ClassTargets<int64_t>)
PG_ABI_TEST(Bf16Dense, bfloat16_t, powergrad::DenseTargets<bfloat16_t>)

TEST(CapiAbi, VersionStatusAndWorkspace) {
  EXPECT_EQ(pg_version(), POWERGRAD_VERSION_MAJOR * 10000 + POWERGRAD_VERSION_MINOR * 100 + POWERGRAD_VERSION_PATCH);
  for (int s = 0; s <= PG_STATUS_INTERNAL_ERROR; ++s)
    EXPECT_STRNE(pg_status_string(static_cast<pg_status_t>(s)), "unknown status") << s;
  // A C caller may pass any int (in C++ a static_cast of -1 to the enum would be undefined).
  const auto status_string_int = reinterpret_cast<const char* (*)(int)>(&pg_status_string);
  EXPECT_STREQ(status_string_int(-1), "unknown status");
  EXPECT_STREQ(status_string_int(1000), "unknown status");
  EXPECT_STREQ(pg_status_string(PG_STATUS_NO_CUDA_SUPPORT), "no CUDA support in this build");
  for (pg_reduction_t r : {PG_REDUCTION_NONE, PG_REDUCTION_MEAN, PG_REDUCTION_SUM}) {
    size_t bytes = 12345;
    expect_ok(pg_xent_workspace_bytes(1000, r, &bytes));
    EXPECT_EQ(bytes, powergrad::xent_workspace_bytes(1000, static_cast<powergrad::Reduction>(r)));
  }
  // A successful call clears the message of an earlier failure.
  size_t bytes = 0;
  EXPECT_EQ(pg_xent_workspace_bytes(-1, PG_REDUCTION_MEAN, &bytes), PG_STATUS_INVALID_SIZE);
  EXPECT_STRNE(pg_last_error(), "");
  expect_ok(pg_xent_workspace_bytes(1, PG_REDUCTION_MEAN, &bytes));
  EXPECT_STREQ(pg_last_error(), "");
}

}  // namespace
