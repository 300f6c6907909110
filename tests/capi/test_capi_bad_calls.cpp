// Bad calls through the C ABI, table-driven: each returns its own status, leaves a message in
// pg_last_error() that names the offending argument, writes nothing (every buffer, inputs and
// outputs, is compared with a snapshot around canaries) and never crashes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstddef>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <cstdlib>
#include <string>
#include <vector>

#include "powergrad/powergrad_c.h"

namespace {

constexpr int64_t kRows = 4, kCols = 8, kGuard = 16;

// A buffer with canary bytes on both sides; `at()` is the usable part.
template <class T>
struct Guarded {
  std::vector<unsigned char> bytes;
  explicit Guarded(size_t n) : bytes((n + 2 * kGuard) * sizeof(T), 0xC3) {}
  T* at() { return reinterpret_cast<T*>(bytes.data() + kGuard * sizeof(T)); }
};

// Every buffer of a call. Calls mutate copies of the structs, never the buffers.
struct Env {
  Guarded<float> logits{kRows * kCols}, dense{kRows * kCols}, loss{kRows}, lse{kRows}, lse_alpha{kRows},
      dlogits{kRows * kCols}, upstream_values{kRows};
  Guarded<int32_t> targets{kRows};
  Guarded<float> weight{kCols}, neg_weight{kCols}, nan_weight{kCols}, inf_weight{kCols};  // options
  Guarded<int32_t> correct{kRows};
  Guarded<pg_row_stats_t> stats{2 * kRows}, merged{kRows};
  Guarded<unsigned char> workspace{4096};
  pg_xent_problem_t p{};
  pg_upstream_t up{};
  pg_xent_outputs_t out{};

  Env() {
    for (int64_t i = 0; i < kRows * kCols; ++i) logits.at()[i] = 0.1f * static_cast<float>(i % 7);
    for (int64_t i = 0; i < kRows * kCols; ++i) dense.at()[i] = 1.f / kCols;
    for (int64_t r = 0; r < kRows; ++r) targets.at()[r] = static_cast<int32_t>(r % kCols);
    for (int64_t r = 0; r < kRows; ++r) upstream_values.at()[r] = 1.f;
    for (int64_t i = 0; i < 2 * kRows; ++i) stats.at()[i] = pg_row_stats_t{0.f, 1.f, 1.f, 0.f, 1.f, 1.f, 0};
    for (int64_t c = 0; c < kCols; ++c) {
      weight.at()[c] = neg_weight.at()[c] = nan_weight.at()[c] = inf_weight.at()[c] = 1.f;
    }
    neg_weight.at()[3] = -1.f;
    nan_weight.at()[5] = std::numeric_limits<float>::quiet_NaN();
    inf_weight.at()[0] = std::numeric_limits<float>::infinity();
    p.struct_size = sizeof p;
    p.device = PG_DEVICE_HOST;
    p.dtype = PG_DTYPE_FLOAT32;
    p.logits = logits.at();
    p.rows = kRows;
    p.cols = kCols;
    p.target_kind = PG_TARGET_INDEX_INT32;
    p.targets = targets.at();
    p.ignore_index = -100;
    p.alpha = 0.5f;
    p.reduction = PG_REDUCTION_MEAN;
    up = pg_upstream_t{sizeof up, 1.f, nullptr};
    out = pg_xent_outputs_t{sizeof out, loss.at(), lse.at(), lse_alpha.at(), dlogits.at(), 0, nullptr, nullptr, nullptr};
  }
  std::vector<std::vector<unsigned char>> snapshot() const {
    return {logits.bytes, dense.bytes, loss.bytes, lse.bytes, lse_alpha.bytes, dlogits.bytes, upstream_values.bytes,
            targets.bytes, stats.bytes, merged.bytes, workspace.bytes, weight.bytes, neg_weight.bytes,
            nan_weight.bytes, inf_weight.bytes, correct.bytes};
  }

  pg_status_t fb(const pg_xent_problem_t& q) { return pg_xent_forward_backward(&q, &up, &out, nullptr, 0, nullptr); }
};

struct BadCall {
  const char* name;
  pg_status_t expect;        // in a build without CUDA (and for host calls, in every build)
  std::optional<pg_status_t> expect_cuda;  // in a CUDA build, where it differs (checked before any launch)
  const char* names;         // pg_last_error() must contain this
  std::function<pg_status_t(Env&)> call;
};

constexpr std::nullopt_t same = std::nullopt;  // the same status in every build

// Stores an arbitrary int in a C enum field, as a C caller may: in C++ a static_cast to an enum of
// a value outside its range is undefined (and UBSan would stop the test, not the library).
template <class E>
void set_raw(E& field, int v) {
  static_assert(sizeof(E) == sizeof(int));
  std::memcpy(&field, &v, sizeof v);
}

// The C functions with int in place of an enum argument (the same ABI: C enums are ints), for
// calls with values outside the enum's range.
const auto merge_stats_int = reinterpret_cast<pg_status_t (*)(int, const pg_row_stats_t*, int64_t, int64_t, float,
                                                              pg_row_stats_t*, void*)>(&pg_xent_merge_stats);
const auto workspace_bytes_int = reinterpret_cast<pg_status_t (*)(int64_t, int, size_t*)>(&pg_xent_workspace_bytes);

const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

const std::vector<BadCall>& bad_calls() {
  static const std::vector<BadCall> calls = {
      // struct pointers and struct sizes
      {"null problem", PG_STATUS_NULL_POINTER, same, "problem",
       [](Env& e) { return pg_xent_forward_backward(nullptr, &e.up, &e.out, nullptr, 0, nullptr); }},
      {"null outputs", PG_STATUS_NULL_POINTER, same, "outputs",
       [](Env& e) { return pg_xent_forward_backward(&e.p, &e.up, nullptr, nullptr, 0, nullptr); }},
      {"problem struct_size 0", PG_STATUS_INVALID_VALUE, same, "pg_xent_problem_t",
       [](Env& e) { auto q = e.p; q.struct_size = 0; return e.fb(q); }},
      {"problem struct_size too big", PG_STATUS_INVALID_VALUE, same, "pg_xent_problem_t",
       [](Env& e) { auto q = e.p; q.struct_size += 8; return e.fb(q); }},
      {"upstream struct_size", PG_STATUS_INVALID_VALUE, same, "pg_upstream_t",
       [](Env& e) { e.up.struct_size = 4; return e.fb(e.p); }},
      {"outputs struct_size", PG_STATUS_INVALID_VALUE, same, "pg_xent_outputs_t",
       [](Env& e) { e.out.struct_size = sizeof(pg_xent_outputs_t) - 8; return e.fb(e.p); }},
      {"shard_apply outputs struct_size", PG_STATUS_INVALID_VALUE, same, "pg_xent_outputs_t",
       [](Env& e) {
         e.out.struct_size = 1;
         return pg_xent_shard_apply(&e.p, e.merged.at(), &e.up, &e.out, nullptr, 0, nullptr);
       }},
      // options (docs/design.md §2.5)
      {"weight negative", PG_STATUS_INVALID_VALUE, same, "problem->weight[3]",
       [](Env& e) { auto q = e.p; q.weight = e.neg_weight.at(); return e.fb(q); }},
      {"weight NaN", PG_STATUS_INVALID_VALUE, same, "problem->weight[5]",
       [](Env& e) { auto q = e.p; q.weight = e.nan_weight.at(); return e.fb(q); }},
      {"weight inf (backward)", PG_STATUS_INVALID_VALUE, same, "problem->weight[0]",
       [](Env& e) {
         auto q = e.p;
         q.weight = e.inf_weight.at();
         return pg_xent_backward(&q, &e.up, nullptr, e.dlogits.at(), 0, nullptr, 0, nullptr);
       }},
      {"weight negative (shard_stats)", PG_STATUS_INVALID_VALUE, same, "problem->weight[3]",
       [](Env& e) { auto q = e.p; q.weight = e.neg_weight.at(); return pg_xent_shard_stats(&q, e.stats.at(), nullptr); }},
      {"weight over dlogits", PG_STATUS_INVALID_LAYOUT, same, "problem->weight",
       [](Env& e) { auto q = e.p; q.weight = e.dlogits.at() + 3; return e.fb(q); }},
      {"dlogits over weight", PG_STATUS_INVALID_LAYOUT, same, "problem->weight",
       [](Env& e) {
         auto q = e.p;
         q.weight = e.weight.at();
         e.out.dlogits = e.weight.at();
         return e.fb(q);
       }},
      {"weight on a column shard (forward_backward)", PG_STATUS_UNSUPPORTED, same, "problem->weight",
       [](Env& e) {
         auto q = e.p;
         q.weight = e.weight.at();
         q.col_offset = 8;
         q.total_cols = 16;
         return e.fb(q);
       }},
      {"softcap negative", PG_STATUS_INVALID_VALUE, same, "problem->softcap",
       [](Env& e) { auto q = e.p; q.softcap = -1.f; return e.fb(q); }},
      {"softcap NaN", PG_STATUS_INVALID_VALUE, same, "problem->softcap",
       [](Env& e) { auto q = e.p; q.softcap = kNaN; return e.fb(q); }},
      {"softcap inf", PG_STATUS_INVALID_VALUE, same, "problem->softcap",
       [](Env& e) { auto q = e.p; q.softcap = kInf; return e.fb(q); }},
      {"z_loss_scale negative", PG_STATUS_INVALID_VALUE, same, "problem->z_loss_scale",
       [](Env& e) { auto q = e.p; q.z_loss_scale = -0.5f; return e.fb(q); }},
      {"z_loss_scale NaN (shard_apply)", PG_STATUS_INVALID_VALUE, same, "problem->z_loss_scale",
       [](Env& e) {
         auto q = e.p;
         q.z_loss_scale = kNaN;
         return pg_xent_shard_apply(&q, e.merged.at(), &e.up, &e.out, nullptr, 0, nullptr);
       }},
      {"hook with weight", PG_STATUS_UNSUPPORTED, same, "problem->weight",
       [](Env& e) { auto q = e.p; q.weight = e.weight.at(); return pg_xent_hook(&q, 1.f, nullptr, e.dlogits.at(), 0, nullptr); }},
      {"hook with z_loss_scale", PG_STATUS_UNSUPPORTED, same, "problem->z_loss_scale",
       [](Env& e) { auto q = e.p; q.z_loss_scale = 0.1f; return pg_xent_hook(&q, 1.f, nullptr, e.dlogits.at(), 0, nullptr); }},
      {"hook with softcap", PG_STATUS_UNSUPPORTED, same, "problem->softcap",
       [](Env& e) { auto q = e.p; q.softcap = 30.f; return pg_xent_hook(&q, 1.f, nullptr, e.dlogits.at(), 0, nullptr); }},
      {"correct with dense targets", PG_STATUS_UNSUPPORTED, same, "outputs->correct",
       [](Env& e) {
         auto q = e.p;
         q.target_kind = PG_TARGET_DENSE;
         q.targets = e.dense.at();
         e.out.correct = e.correct.at();
         return e.fb(q);
       }},
      {"stats misaligned (shard_stats)", PG_STATUS_INVALID_LAYOUT, same, "stats",
       [](Env& e) {
         auto* st = reinterpret_cast<pg_row_stats_t*>(reinterpret_cast<unsigned char*>(e.stats.at()) + 4);
         return pg_xent_shard_stats(&e.p, st, nullptr);
       }},
      {"merged misaligned (merge_stats)", PG_STATUS_INVALID_LAYOUT, same, "merged",
       [](Env& e) {
         auto* m = reinterpret_cast<pg_row_stats_t*>(reinterpret_cast<unsigned char*>(e.merged.at()) + 4);
         return pg_xent_merge_stats(PG_DEVICE_HOST, e.stats.at(), 2, kRows - 1, 1.f, m, nullptr);
       }},
      {"correct over loss", PG_STATUS_INVALID_LAYOUT, same, "outputs->correct",
       [](Env& e) { e.out.correct = reinterpret_cast<int32_t*>(e.loss.at()); return e.fb(e.p); }},
      // enum values out of range
      {"dtype 7", PG_STATUS_INVALID_VALUE, same, "dtype",
       [](Env& e) { auto q = e.p; set_raw(q.dtype, 7); return e.fb(q); }},
      {"dtype -1", PG_STATUS_INVALID_VALUE, same, "dtype",
       [](Env& e) { auto q = e.p; set_raw(q.dtype, -1); return e.fb(q); }},
      {"device 5", PG_STATUS_INVALID_VALUE, same, "device",
       [](Env& e) { auto q = e.p; set_raw(q.device, 5); return e.fb(q); }},
      {"reduction 9", PG_STATUS_INVALID_VALUE, same, "reduction",
       [](Env& e) { auto q = e.p; set_raw(q.reduction, 9); return e.fb(q); }},
      {"target_kind 3", PG_STATUS_INVALID_VALUE, same, "target_kind",
       [](Env& e) { auto q = e.p; set_raw(q.target_kind, 3); return e.fb(q); }},
      {"hook target_kind -2", PG_STATUS_INVALID_VALUE, same, "target_kind",
       [](Env& e) {
         auto q = e.p;
         set_raw(q.target_kind, -2);
         return pg_xent_hook(&q, 1.f, nullptr, e.dlogits.at(), 0, nullptr);
       }},
      {"merge_stats device 3", PG_STATUS_INVALID_VALUE, same, "device",
       [](Env& e) {
         return merge_stats_int(3, e.stats.at(), 2, kRows, 1.f, e.merged.at(), nullptr);
       }},
      {"workspace_bytes reduction 5", PG_STATUS_INVALID_VALUE, same, "reduction",
       [](Env&) { size_t b = 0; return workspace_bytes_int(4, 5, &b); }},
      // null data pointers
      {"null logits", PG_STATUS_NULL_POINTER, same, "problem->logits",
       [](Env& e) { auto q = e.p; q.logits = nullptr; return e.fb(q); }},
      {"null targets", PG_STATUS_NULL_POINTER, same, "problem->targets",
       [](Env& e) { auto q = e.p; q.targets = nullptr; return e.fb(q); }},
      {"backward null dlogits", PG_STATUS_NULL_POINTER, same, "dlogits",
       [](Env& e) { return pg_xent_backward(&e.p, &e.up, nullptr, nullptr, 0, nullptr, 0, nullptr); }},
      {"hook null out", PG_STATUS_NULL_POINTER, same, "out",
       [](Env& e) { return pg_xent_hook(&e.p, 1.f, nullptr, nullptr, 0, nullptr); }},
      {"shard_stats null stats", PG_STATUS_NULL_POINTER, same, "stats",
       [](Env& e) { return pg_xent_shard_stats(&e.p, nullptr, nullptr); }},
      {"shard_apply null merged", PG_STATUS_NULL_POINTER, same, "merged",
       [](Env& e) { return pg_xent_shard_apply(&e.p, nullptr, &e.up, &e.out, nullptr, 0, nullptr); }},
      {"merge_stats null parts", PG_STATUS_NULL_POINTER, same, "parts",
       [](Env& e) { return pg_xent_merge_stats(PG_DEVICE_HOST, nullptr, 2, kRows, 1.f, e.merged.at(), nullptr); }},
      {"workspace_bytes null bytes", PG_STATUS_NULL_POINTER, same, "bytes",
       [](Env&) { return pg_xent_workspace_bytes(4, PG_REDUCTION_MEAN, nullptr); }},
      // sizes and strides
      {"rows -1", PG_STATUS_INVALID_SIZE, same, "problem->rows",
       [](Env& e) { auto q = e.p; q.rows = -1; return e.fb(q); }},
      {"cols 0", PG_STATUS_INVALID_SIZE, same, "problem->cols",
       [](Env& e) { auto q = e.p; q.cols = 0; return e.fb(q); }},
      {"ld < cols", PG_STATUS_INVALID_SIZE, same, "problem->ld",
       [](Env& e) { auto q = e.p; q.ld = kCols - 1; return e.fb(q); }},
      {"ld_dlogits < cols", PG_STATUS_INVALID_SIZE, same, "outputs->ld_dlogits",
       [](Env& e) { e.out.ld_dlogits = 3; return e.fb(e.p); }},
      {"dense target_ld < cols", PG_STATUS_INVALID_SIZE, same, "problem->target_ld",
       [](Env& e) {
         auto q = e.p;
         q.target_kind = PG_TARGET_DENSE;
         q.targets = e.dense.at();
         q.target_ld = 2;
         return e.fb(q);
       }},
      {"col_offset -1", PG_STATUS_INVALID_SIZE, same, "problem->col_offset",
       [](Env& e) { auto q = e.p; q.col_offset = -1; return e.fb(q); }},
      {"col_offset without total_cols", PG_STATUS_INVALID_SIZE, same, "total_cols",
       [](Env& e) { auto q = e.p; q.col_offset = 4; return e.fb(q); }},
      {"total_cols < col_offset + cols", PG_STATUS_INVALID_SIZE, same, "total_cols",
       [](Env& e) { auto q = e.p; q.col_offset = 2; q.total_cols = kCols; return e.fb(q); }},
      {"hook on a column shard", PG_STATUS_INVALID_SIZE, same, "col_offset",
       [](Env& e) {
         auto q = e.p;
         q.col_offset = 8;
         q.total_cols = 16;
         return pg_xent_hook(&q, 1.f, nullptr, e.dlogits.at(), 0, nullptr);
       }},
      {"merge_stats shards 0", PG_STATUS_INVALID_SIZE, same, "shards",
       [](Env& e) { return pg_xent_merge_stats(PG_DEVICE_HOST, e.stats.at(), 0, kRows, 1.f, e.merged.at(), nullptr); }},
      {"merge_stats rows -3", PG_STATUS_INVALID_SIZE, same, "rows",
       [](Env& e) { return pg_xent_merge_stats(PG_DEVICE_HOST, e.stats.at(), 2, -3, 1.f, e.merged.at(), nullptr); }},
      {"workspace_bytes rows -1", PG_STATUS_INVALID_SIZE, same, "rows",
       [](Env&) { size_t b = 0; return pg_xent_workspace_bytes(-1, PG_REDUCTION_SUM, &b); }},
      {"workspace bytes: rows beyond 2^59 (no wrap)", PG_STATUS_INVALID_SIZE, same, "rows",
       [](Env&) { size_t b = 0; return pg_xent_workspace_bytes(INT64_C(1) << 62, PG_REDUCTION_MEAN, &b); }},
      // values
      {"alpha NaN", PG_STATUS_INVALID_VALUE, same, "problem->alpha",
       [](Env& e) { auto q = e.p; q.alpha = kNaN; return e.fb(q); }},
      {"alpha -1", PG_STATUS_INVALID_VALUE, same, "alpha",
       [](Env& e) { auto q = e.p; q.alpha = -1.f; return e.fb(q); }},
      {"alpha inf", PG_STATUS_INVALID_VALUE, same, "alpha",
       [](Env& e) { auto q = e.p; q.alpha = kInf; return e.fb(q); }},
      {"alpha * log2(e) overflows", PG_STATUS_INVALID_VALUE, same, "alpha",
       [](Env& e) { auto q = e.p; q.alpha = 3e38f; return e.fb(q); }},
      {"label_smoothing 1", PG_STATUS_INVALID_VALUE, same, "problem->label_smoothing",
       [](Env& e) { auto q = e.p; q.label_smoothing = 1.f; return e.fb(q); }},
      {"upstream scale inf", PG_STATUS_INVALID_VALUE, same, "upstream->scale",
       [](Env& e) { e.up.scale = kInf; return e.fb(e.p); }},
      {"hook scale -1", PG_STATUS_INVALID_VALUE, same, "scale",
       [](Env& e) { return pg_xent_hook(&e.p, -1.f, nullptr, e.dlogits.at(), 0, nullptr); }},
      {"merge_stats alpha NaN", PG_STATUS_INVALID_VALUE, same, "alpha",
       [](Env& e) { return pg_xent_merge_stats(PG_DEVICE_HOST, e.stats.at(), 2, kRows, kNaN, e.merged.at(), nullptr); }},
      {"class target out of range", PG_STATUS_INVALID_TARGET, same, "problem->targets",
       [](Env& e) {
         static const int32_t bad[kRows] = {0, 1, kCols, 2};
         auto q = e.p;
         q.targets = bad;
         return e.fb(q);
       }},
      // layouts and overlaps
      {"dlogits partially overlaps logits", PG_STATUS_INVALID_LAYOUT, same, "outputs->dlogits",
       [](Env& e) { e.out.dlogits = e.logits.at() + 1; return e.fb(e.p); }},
      {"in place with another ld", PG_STATUS_INVALID_LAYOUT, same, "ld",
       [](Env& e) { e.out.dlogits = e.logits.at(); e.out.ld_dlogits = kCols + 1; return e.fb(e.p); }},
      {"loss overlaps logits", PG_STATUS_INVALID_LAYOUT, same, "outputs->loss",
       [](Env& e) { e.out.loss = e.logits.at() + 5; return e.fb(e.p); }},
      {"lse overlaps dlogits", PG_STATUS_INVALID_LAYOUT, same, "outputs->lse",
       [](Env& e) { e.out.lse = e.dlogits.at() + 3; return e.fb(e.p); }},
      {"merge_stats merged overlaps parts", PG_STATUS_INVALID_LAYOUT, same, "merged",
       [](Env& e) { return pg_xent_merge_stats(PG_DEVICE_HOST, e.stats.at(), 2, kRows, 1.f, e.stats.at() + 1, nullptr); }},
      // device: without CUDA support NO_CUDA_SUPPORT; with it, the workspace checks fail before any launch
      {"cuda device, no workspace", PG_STATUS_NO_CUDA_SUPPORT, PG_STATUS_WORKSPACE_TOO_SMALL, "",
       [](Env& e) { auto q = e.p; q.device = PG_DEVICE_CUDA; return e.fb(q); }},
      {"cuda device, misaligned workspace", PG_STATUS_NO_CUDA_SUPPORT, PG_STATUS_INVALID_LAYOUT, "",
       [](Env& e) {
         auto q = e.p;
         q.device = PG_DEVICE_CUDA;
         return pg_xent_forward_backward(&q, &e.up, &e.out, e.workspace.at() + 1, 1024, nullptr);
       }},
      {"cuda merge_stats, no CUDA support", PG_STATUS_NO_CUDA_SUPPORT, PG_STATUS_NULL_POINTER, "",
       [](Env& e) { return pg_xent_merge_stats(PG_DEVICE_CUDA, nullptr, 2, kRows, 1.f, e.merged.at(), nullptr); }},
  };
  return calls;
}

class CapiBadCall : public testing::TestWithParam<size_t> {};

TEST_P(CapiBadCall, ReturnsItsStatusNamesTheArgumentWritesNothing) {
  const BadCall& bc = bad_calls()[GetParam()];
  const bool cuda = pg_has_cuda() == 1;
  const pg_status_t want = cuda && bc.expect_cuda ? *bc.expect_cuda : bc.expect;
  // The names to look for in the message of a device-dependent case.
  std::string names = bc.names;
  if (names.empty()) names = want == PG_STATUS_NO_CUDA_SUPPORT ? "CUDA" : want == PG_STATUS_NULL_POINTER ? "parts"
                                                                                                         : "workspace";
  Env e;
  const auto before = e.snapshot();
  const pg_status_t got = bc.call(e);
  EXPECT_EQ(got, want) << pg_status_string(got) << ": " << pg_last_error();
  const std::string msg = pg_last_error();
  EXPECT_FALSE(msg.empty());
  EXPECT_NE(msg.find(names), std::string::npos) << "message '" << msg << "' does not name '" << names << "'";
  if (std::getenv("PG_PRINT_MESSAGES")) std::printf("%-40s %s\n", bc.name, msg.c_str());
  const auto after = e.snapshot();
  for (size_t i = 0; i < before.size(); ++i) EXPECT_EQ(before[i], after[i]) << "buffer " << i << " was written";
}

INSTANTIATE_TEST_SUITE_P(Table, CapiBadCall, testing::Range<size_t>(0, bad_calls().size()),
                         [](const testing::TestParamInfo<size_t>& info) {
                           std::string n = bad_calls()[info.param].name;
                           for (auto& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

TEST(CapiBadCallTable, HasAtLeastThirtyCases) { EXPECT_GE(bad_calls().size(), 30u); }

// The first layouts (structs that end before the options) are still accepted, with every option off: the
// result equals the current struct's with the options off, bit for bit.
TEST(CapiStructVersions, OldStructSizesAreAcceptedWithOptionsOff) {
  Env a, b;
  ASSERT_EQ(a.fb(a.p), PG_STATUS_SUCCESS) << pg_last_error();
  auto q = b.p;
  q.struct_size = offsetof(pg_xent_problem_t, weight);
  q.z_loss_scale = kNaN;  // past the first layout: never read
  q.softcap = -1.f;
  b.out.struct_size = offsetof(pg_xent_outputs_t, z_loss);
  b.out.correct = reinterpret_cast<int32_t*>(b.loss.at());  // past the first layout: never read
  ASSERT_EQ(b.fb(q), PG_STATUS_SUCCESS) << pg_last_error();
  EXPECT_EQ(a.loss.bytes, b.loss.bytes);
  EXPECT_EQ(a.dlogits.bytes, b.dlogits.bytes);
  EXPECT_EQ(a.lse.bytes, b.lse.bytes);
}

// A bad call after a good one, and a good one after a bad one: the message follows the last call.
TEST(CapiBadCallTable, LastErrorFollowsTheLastCall) {
  Env e;
  ASSERT_EQ(e.fb(e.p), PG_STATUS_SUCCESS) << pg_last_error();
  EXPECT_STREQ(pg_last_error(), "");
  auto q = e.p;
  q.alpha = -2.f;
  EXPECT_EQ(e.fb(q), PG_STATUS_INVALID_VALUE);
  EXPECT_NE(std::string(pg_last_error()).find("alpha"), std::string::npos);
}

}  // namespace
