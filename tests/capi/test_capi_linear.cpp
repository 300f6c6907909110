// The linear cross-entropy through the C ABI (libpowergrad): results bitwise equal to the C++ API
// (which test_linear_xent.cpp checks against the float64 reference), and the C-only checks (struct
// sizes, enum values, accumulate flags) with C argument names and nothing written.
#include <gtest/gtest.h>

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

}  // namespace
