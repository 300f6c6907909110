// The linear cross-entropy through the C ABI (libpowergrad): results bitwise equal to the C++ API
// (which test_linear_xent.cpp checks against the float64 reference), and the C-only checks (struct
// sizes, enum values, accumulate flags) with C argument names and nothing written.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "powergrad/linear_xent.hpp"
#include "powergrad/powergrad_c.h"

namespace {

namespace pg = powergrad;

struct Inputs {
  int64_t N = 23, H = 9, V = 41;
  std::vector<float> h, w, b;
  std::vector<int32_t> y;
  Inputs() {
    std::mt19937 rng(5);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    h.resize(N * H);
    w.resize(V * H);
    b.resize(V);
    for (auto& x : h) x = u(rng);
    for (auto& x : w) x = u(rng) * 0.5f;
    for (auto& x : b) x = u(rng) * 0.2f;
    for (int64_t r = 0; r < N; ++r) y.push_back(r % 5 == 0 ? -100 : static_cast<int32_t>(rng() % V));
  }
  pg_linear_xent_problem_t c_problem() const {
    pg_linear_xent_problem_t p;
    std::memset(&p, 0, sizeof p);
    p.struct_size = sizeof p;
    p.device = PG_DEVICE_HOST;
    p.dtype = PG_DTYPE_FLOAT32;
    p.hidden = h.data();
    p.rows = N;
    p.hidden_dim = H;
    p.weight = w.data();
    p.vocab = V;
    p.bias = b.data();
    p.target_kind = PG_TARGET_INDEX_INT32;
    p.targets = y.data();
    p.ignore_index = -100;
    p.alpha = 0.4f;
    p.label_smoothing = 0.05f;
    p.reduction = PG_REDUCTION_MEAN;
    return p;
  }
};

struct Outs {
  std::vector<float> loss = std::vector<float>(1, -7.f), dh, dw, db;
  Outs(const Inputs& in) : dh(in.N * in.H, -7.f), dw(in.V * in.H, 0.5f), db(in.V, 0.25f) {}
  pg_linear_xent_outputs_t c_outputs() {
    pg_linear_xent_outputs_t o;
    std::memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    o.loss = loss.data();
    o.dhidden = dh.data();
    o.dweight = dw.data();
    o.accumulate_dweight = 1;
    o.dbias = db.data();
    return o;
  }
  bool operator==(const Outs& x) const {
    return std::memcmp(loss.data(), x.loss.data(), loss.size() * 4) == 0 &&
           std::memcmp(dh.data(), x.dh.data(), dh.size() * 4) == 0 &&
           std::memcmp(dw.data(), x.dw.data(), dw.size() * 4) == 0 &&
           std::memcmp(db.data(), x.db.data(), db.size() * 4) == 0;
  }
};

TEST(CapiLinear, SameBitsAsTheCppApi) {
  ASSERT_EQ(pg_has_host_blas(), 1);
  const Inputs in;
  Outs c_out(in), cpp_out(in);
  const pg_linear_xent_problem_t cp = in.c_problem();
  pg_linear_xent_outputs_t co = c_out.c_outputs();
  const int64_t chunk = 5;
  size_t bytes = 0;
  ASSERT_EQ(PG_STATUS_SUCCESS, pg_linear_xent_workspace_bytes(&cp, &co, chunk, &bytes)) << pg_last_error();
  std::vector<double> ws(bytes / 8 + 1);
  const pg_upstream_t up = {sizeof(pg_upstream_t), 2.f, nullptr};
  ASSERT_EQ(PG_STATUS_SUCCESS,
            pg_linear_xent_forward_backward(&cp, &up, &co, ws.data(), bytes, chunk, nullptr, nullptr))
      << pg_last_error();
  EXPECT_STREQ(pg_last_error(), "");

  pg::LinearXentProblem<float, pg::ClassTargets<int32_t>> p;
  p.hidden = in.h.data(), p.rows = in.N, p.hidden_dim = in.H, p.weight = in.w.data(), p.vocab = in.V;
  p.bias = in.b.data(), p.targets = {in.y.data(), -100}, p.alpha = 0.4f, p.label_smoothing = 0.05f;
  pg::LinearXentOutputs<float> o;
  o.loss = cpp_out.loss.data(), o.dhidden = cpp_out.dh.data(), o.dweight = cpp_out.dw.data();
  o.accumulate_dweight = true, o.dbias = cpp_out.db.data();
  size_t cpp_bytes = 0;
  ASSERT_EQ(pg::Status::kSuccess, pg::linear_xent_workspace_bytes(pg::Backend::kHost, p, o, chunk, &cpp_bytes));
  EXPECT_EQ(bytes, cpp_bytes);
  std::vector<double> ws2(cpp_bytes / 8 + 1);
  ASSERT_EQ(pg::Status::kSuccess, pg::linear_xent_forward_backward(pg::Backend::kHost, p, pg::Upstream{2.f, nullptr}, o,
                                                                   ws2.data(), cpp_bytes, chunk));
  EXPECT_TRUE(c_out == cpp_out);
  EXPECT_NE(c_out.loss[0], -7.f);

  int64_t rows = 0;
  ASSERT_EQ(PG_STATUS_SUCCESS, pg_linear_xent_chunk_rows(&cp, &co, bytes, &rows)) << pg_last_error();
  EXPECT_GE(rows, chunk);
}

TEST(CapiLinear, BadCallsNameTheCField) {
  const Inputs in;
  struct Bad {
    const char* name;
    pg_status_t want;
    void (*mutate)(pg_linear_xent_problem_t&, pg_linear_xent_outputs_t&);
  };
  const Bad bads[] = {
      {"problem->struct_size", PG_STATUS_INVALID_VALUE, [](auto& p, auto&) { p.struct_size -= 8; }},
      {"outputs->struct_size", PG_STATUS_INVALID_VALUE, [](auto&, auto& o) { o.struct_size = 3; }},
      {"problem->dtype", PG_STATUS_INVALID_VALUE, [](auto& p, auto&) { std::memset(&p.dtype, 0x7f, sizeof(int)); }},
      {"problem->device", PG_STATUS_INVALID_VALUE, [](auto& p, auto&) { std::memset(&p.device, 0x11, sizeof(int)); }},
      {"problem->target_kind", PG_STATUS_INVALID_VALUE,
       [](auto& p, auto&) { std::memset(&p.target_kind, 0x22, sizeof(int)); }},
      {"problem->reduction", PG_STATUS_INVALID_VALUE,
       [](auto& p, auto&) { std::memset(&p.reduction, 0x33, sizeof(int)); }},
      {"outputs->dweight_type", PG_STATUS_INVALID_VALUE,
       [](auto&, auto& o) { std::memset(&o.dweight_type, 0x44, sizeof(int)); }},
      {"outputs->accumulate_dbias", PG_STATUS_INVALID_VALUE, [](auto&, auto& o) { o.accumulate_dbias = 2; }},
      {"problem->weight_dim", PG_STATUS_INVALID_SIZE, [](auto& p, auto&) { p.weight_dim = p.hidden_dim + 2; }},
      {"problem->bias_len", PG_STATUS_INVALID_SIZE, [](auto& p, auto&) { p.bias_len = 3; }},
      {"problem->hidden", PG_STATUS_NULL_POINTER, [](auto& p, auto&) { p.hidden = nullptr; }},
      {"outputs->dweight", PG_STATUS_INVALID_LAYOUT,
       [](auto&, auto& o) { o.dweight = static_cast<float*>(o.dhidden) + 1; }},
      {"pg_linear_xent_workspace_bytes()", PG_STATUS_WORKSPACE_TOO_SMALL, nullptr},  // one byte short
  };
  for (const Bad& bad : bads) {
    Outs out(in), before(in);
    pg_linear_xent_problem_t p = in.c_problem();
    pg_linear_xent_outputs_t o = out.c_outputs();
    size_t bytes = 0;
    ASSERT_EQ(PG_STATUS_SUCCESS, pg_linear_xent_workspace_bytes(&p, &o, in.N, &bytes));
    std::vector<double> ws(bytes / 8 + 1);
    if (bad.mutate) bad.mutate(p, o);
    const pg_status_t st = pg_linear_xent_forward_backward(&p, nullptr, &o, ws.data(), bad.mutate ? bytes : bytes - 1,
                                                           bad.mutate ? 0 : in.N, nullptr, nullptr);
    EXPECT_EQ(st, bad.want) << bad.name << ": " << pg_last_error();
    EXPECT_NE(std::string(pg_last_error()).find(bad.name), std::string::npos)
        << "message '" << pg_last_error() << "' does not name " << bad.name;
    EXPECT_TRUE(out == before) << bad.name << ": an output was written";
  }
  EXPECT_EQ(PG_STATUS_NULL_POINTER, pg_linear_xent_forward_backward(nullptr, nullptr, nullptr, nullptr, 0, 0, nullptr, nullptr));
  EXPECT_NE(std::string(pg_last_error()).find("problem"), std::string::npos);
}

// A caller compiled against the first layouts (struct_size ending at bad_target_count /
// accumulate_dbias) gets the whole vocabulary and every option off: the fields past its struct are
// not read (they hold garbage here).
TEST(CapiLinear, FirstLayoutsStillAccepted) {
  const Inputs in;
  Outs full(in), first(in);
  const pg_linear_xent_problem_t p_full = in.c_problem();
  pg_linear_xent_problem_t p_first = p_full;
  p_first.struct_size = offsetof(pg_linear_xent_problem_t, vocab_offset);
  std::memset(reinterpret_cast<char*>(&p_first) + p_first.struct_size, 0x5A, sizeof p_first - p_first.struct_size);
  pg_linear_xent_outputs_t o_full = full.c_outputs();
  pg_linear_xent_outputs_t o_first = first.c_outputs();
  o_first.struct_size = offsetof(pg_linear_xent_outputs_t, z_loss);
  std::memset(reinterpret_cast<char*>(&o_first) + o_first.struct_size, 0x5A, sizeof o_first - o_first.struct_size);
  size_t b_full = 0, b_first = 0;
  ASSERT_EQ(PG_STATUS_SUCCESS, pg_linear_xent_workspace_bytes(&p_full, &o_full, 4, &b_full)) << pg_last_error();
  ASSERT_EQ(PG_STATUS_SUCCESS, pg_linear_xent_workspace_bytes(&p_first, &o_first, 4, &b_first)) << pg_last_error();
  EXPECT_EQ(b_full, b_first);
  std::vector<double> ws(b_full / 8 + 1);
  ASSERT_EQ(PG_STATUS_SUCCESS, pg_linear_xent_forward_backward(&p_full, nullptr, &o_full, ws.data(), b_full, 4, nullptr, nullptr))
      << pg_last_error();
  ASSERT_EQ(PG_STATUS_SUCCESS, pg_linear_xent_forward_backward(&p_first, nullptr, &o_first, ws.data(), b_full, 4, nullptr, nullptr))
      << pg_last_error();
  EXPECT_TRUE(full == first);
  o_first.struct_size = offsetof(pg_linear_xent_outputs_t, z_loss) + 8;  // neither layout
  EXPECT_EQ(PG_STATUS_INVALID_VALUE, pg_linear_xent_forward_backward(&p_first, nullptr, &o_first, ws.data(), b_full, 4, nullptr, nullptr));
  EXPECT_NE(std::string(pg_last_error()).find("outputs->struct_size"), std::string::npos) << pg_last_error();
}

// The split form through the C ABI, with options: two shards' statistics, the library's merge, and
// each shard's apply give the same bits as the C++ API (which test_linear_xent.cpp checks against
// the float64 reference).
TEST(CapiLinear, SplitFormSameBitsAsTheCppApi) {
  const Inputs in;
  std::vector<float> cw(in.V);
  for (int64_t v = 0; v < in.V; ++v) cw[v] = 0.5f + static_cast<float>(v % 7) * 0.25f;
  const int64_t cut = 15, chunk = 6;
  const int64_t off[3] = {0, cut, in.V};
  std::vector<pg_row_stats_t> parts_c(2 * in.N), merged_c(in.N);
  std::vector<pg::RowStats> parts_cpp(2 * in.N), merged_cpp(in.N);
  struct ShardOut {
    std::vector<float> loss = std::vector<float>(1, -7.f), zl = std::vector<float>(1, -7.f), dh, dw, db;
    std::vector<int64_t> am;
    std::vector<int32_t> cor;
  };
  ShardOut c_out[2], cpp_out[2];
  for (ShardOut* so : {c_out, cpp_out})
    for (int k = 0; k < 2; ++k) {
      so[k].dh.assign(in.N * in.H, -7.f);
      so[k].dw.assign((off[k + 1] - off[k]) * in.H, -7.f);
      so[k].db.assign(off[k + 1] - off[k], -7.f);
      so[k].am.assign(in.N, -7);
      so[k].cor.assign(in.N, -7);
    }
  auto c_problem = [&](int k) {
    pg_linear_xent_problem_t p = in.c_problem();
    p.weight = in.w.data() + off[k] * in.H;
    p.vocab = off[k + 1] - off[k];
    p.bias = in.b.data() + off[k];
    p.vocab_offset = off[k];
    p.total_vocab = in.V;
    p.class_weight = cw.data() + off[k];
    p.z_loss_scale = 1e-2f;
    p.softcap = 2.5f;
    return p;
  };
  auto c_outputs = [&](ShardOut& so) {
    pg_linear_xent_outputs_t o;
    std::memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    o.loss = so.loss.data(), o.dhidden = so.dh.data(), o.dweight = so.dw.data(), o.dbias = so.db.data();
    o.z_loss = so.zl.data(), o.argmax = so.am.data(), o.correct = so.cor.data();
    return o;
  };
  size_t bytes = 0;
  {
    const pg_linear_xent_problem_t p = c_problem(0);
    const pg_linear_xent_outputs_t o = c_outputs(c_out[0]);
    ASSERT_EQ(PG_STATUS_SUCCESS, pg_linear_xent_workspace_bytes(&p, &o, chunk, &bytes)) << pg_last_error();
  }
  std::vector<double> ws(bytes / 8 + 64);
  for (int k = 0; k < 2; ++k) {
    const pg_linear_xent_problem_t p = c_problem(k);
    ASSERT_EQ(PG_STATUS_SUCCESS, pg_linear_xent_shard_stats(&p, parts_c.data() + k * in.N, ws.data(), ws.size() * 8,
                                                            chunk, nullptr, nullptr))
        << pg_last_error();
  }
  ASSERT_EQ(PG_STATUS_SUCCESS, pg_xent_merge_stats(PG_DEVICE_HOST, parts_c.data(), 2, in.N, 0.4f, merged_c.data(), nullptr));
  const pg_upstream_t up = {sizeof(pg_upstream_t), 1.5f, nullptr};
  for (int k = 0; k < 2; ++k) {
    const pg_linear_xent_problem_t p = c_problem(k);
    const pg_linear_xent_outputs_t o = c_outputs(c_out[k]);
    ASSERT_EQ(PG_STATUS_SUCCESS, pg_linear_xent_shard_apply(&p, merged_c.data(), &up, &o, ws.data(), ws.size() * 8,
                                                            chunk, nullptr, nullptr))
        << pg_last_error();
  }
  for (int k = 0; k < 2; ++k) {
    pg::LinearXentProblem<float, pg::ClassTargets<int32_t>> p;
    p.hidden = in.h.data(), p.rows = in.N, p.hidden_dim = in.H, p.weight = in.w.data() + off[k] * in.H;
    p.vocab = off[k + 1] - off[k], p.bias = in.b.data() + off[k], p.targets = {in.y.data(), -100};
    p.alpha = 0.4f, p.label_smoothing = 0.05f, p.vocab_offset = off[k], p.total_vocab = in.V;
    p.class_weight = cw.data() + off[k], p.z_loss_scale = 1e-2f, p.softcap = 2.5f;
    ASSERT_EQ(pg::Status::kSuccess, pg::linear_xent_shard_stats(pg::Backend::kHost, p, parts_cpp.data() + k * in.N,
                                                                ws.data(), ws.size() * 8, chunk));
  }
  ASSERT_EQ(0, std::memcmp(parts_c.data(), parts_cpp.data(), parts_c.size() * sizeof(pg_row_stats_t)));
  ASSERT_EQ(pg::Status::kSuccess, pg::xent_merge_stats(pg::Backend::kHost, parts_cpp.data(), 2, in.N, 0.4f, merged_cpp.data()));
  for (int k = 0; k < 2; ++k) {
    pg::LinearXentProblem<float, pg::ClassTargets<int32_t>> p;
    p.hidden = in.h.data(), p.rows = in.N, p.hidden_dim = in.H, p.weight = in.w.data() + off[k] * in.H;
    p.vocab = off[k + 1] - off[k], p.bias = in.b.data() + off[k], p.targets = {in.y.data(), -100};
    p.alpha = 0.4f, p.label_smoothing = 0.05f, p.vocab_offset = off[k], p.total_vocab = in.V;
    p.class_weight = cw.data() + off[k], p.z_loss_scale = 1e-2f, p.softcap = 2.5f;
    pg::LinearXentOutputs<float> o;
    ShardOut& so = cpp_out[k];
    o.loss = so.loss.data(), o.dhidden = so.dh.data(), o.dweight = so.dw.data(), o.dbias = so.db.data();
    o.z_loss = so.zl.data(), o.argmax = so.am.data(), o.correct = so.cor.data();
    ASSERT_EQ(pg::Status::kSuccess, pg::linear_xent_shard_apply(pg::Backend::kHost, p, merged_cpp.data(),
                                                                pg::Upstream{1.5f, nullptr}, o, ws.data(),
                                                                ws.size() * 8, chunk));
  }
  for (int k = 0; k < 2; ++k) {
    const ShardOut &a = c_out[k], &b = cpp_out[k];
    EXPECT_TRUE(a.loss == b.loss && a.zl == b.zl && a.dh == b.dh && a.dw == b.dw && a.db == b.db && a.am == b.am &&
                a.cor == b.cor)
        << "shard " << k;
    EXPECT_NE(a.loss[0], -7.f);
    EXPECT_NE(a.zl[0], -7.f);
    EXPECT_EQ(0, std::memcmp(a.loss.data(), c_out[0].loss.data(), 4));  // every shard: the same loss
  }
}

TEST(CapiLinear, BadOptionAndSplitCallsNameTheCField) {
  const Inputs in;
  std::vector<float> cw(in.V, 1.f);
  cw[3] = -1.f;
  Outs out(in), before(in);
  pg_linear_xent_problem_t p = in.c_problem();
  pg_linear_xent_outputs_t o = out.c_outputs();
  size_t bytes = 0;
  ASSERT_EQ(PG_STATUS_SUCCESS, pg_linear_xent_workspace_bytes(&p, &o, in.N, &bytes));
  std::vector<double> ws(bytes / 8 + 1);
  auto expect = [&](pg_status_t st, pg_status_t want, const char* name) {
    EXPECT_EQ(st, want) << name << ": " << pg_last_error();
    EXPECT_NE(std::string(pg_last_error()).find(name), std::string::npos)
        << "message '" << pg_last_error() << "' does not name " << name;
    EXPECT_TRUE(out == before) << name << ": an output was written";
  };
  pg_linear_xent_problem_t q = p;
  q.class_weight = cw.data();
  expect(pg_linear_xent_forward_backward(&q, nullptr, &o, ws.data(), bytes, 0, nullptr, nullptr), PG_STATUS_INVALID_VALUE,
         "problem->class_weight");
  q = p;
  q.softcap = -1.f;
  expect(pg_linear_xent_forward_backward(&q, nullptr, &o, ws.data(), bytes, 0, nullptr, nullptr), PG_STATUS_INVALID_VALUE,
         "problem->softcap");
  q = p;
  q.z_loss_scale = -1.f;
  expect(pg_linear_xent_forward_backward(&q, nullptr, &o, ws.data(), bytes, 0, nullptr, nullptr), PG_STATUS_INVALID_VALUE,
         "problem->z_loss_scale");
  q = p;
  q.vocab_offset = 2;
  expect(pg_linear_xent_forward_backward(&q, nullptr, &o, ws.data(), bytes, 0, nullptr, nullptr), PG_STATUS_INVALID_SIZE,
         "problem->total_vocab");
  q.total_vocab = in.V + 2;
  expect(pg_linear_xent_forward_backward(&q, nullptr, &o, ws.data(), bytes, 0, nullptr, nullptr), PG_STATUS_INVALID_SIZE,
         "problem->vocab_offset");
  q.total_vocab = in.V + 1;
  expect(pg_linear_xent_shard_apply(&q, nullptr, nullptr, &o, ws.data(), bytes, 0, nullptr, nullptr), PG_STATUS_INVALID_SIZE,
         "problem->total_vocab");
  q.total_vocab = in.V + 2;
  expect(pg_linear_xent_shard_apply(&q, nullptr, nullptr, &o, ws.data(), bytes, 0, nullptr, nullptr), PG_STATUS_NULL_POINTER,
         "merged");
  expect(pg_linear_xent_shard_stats(&q, nullptr, ws.data(), bytes, 0, nullptr, nullptr), PG_STATUS_NULL_POINTER, "stats");
  std::vector<pg_row_stats_t> st(in.N + 1);
  expect(pg_linear_xent_shard_stats(&q, reinterpret_cast<pg_row_stats_t*>(reinterpret_cast<char*>(st.data()) + 4),
                                    ws.data(), bytes, 0, nullptr, nullptr),
         PG_STATUS_INVALID_LAYOUT, "stats");
  pg_linear_xent_outputs_t o2 = o;
  std::vector<int32_t> cor(in.N, -7);
  o2.correct = cor.data();
  q = p;
  q.target_kind = PG_TARGET_DENSE;  // dense targets have no target class
  expect(pg_linear_xent_forward_backward(&q, nullptr, &o2, ws.data(), bytes, 0, nullptr, nullptr), PG_STATUS_UNSUPPORTED,
         "outputs->correct");
  EXPECT_TRUE(std::all_of(cor.begin(), cor.end(), [](int32_t v) { return v == -7; }));
}

}  // namespace
