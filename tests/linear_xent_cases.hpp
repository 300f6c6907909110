// Case generator and checking code of the linear cross-entropy tests (test_linear_xent.cpp on the
// host, test_linear_xent_device.cu through a device memory policy). The reference materialises
// z = h W^T + b in double from the decoded inputs, applies pgref::compute (reference.hpp, no library
// code) to it, and forms dh = G W, dW = G^T h (+ the old value), db = sum_r G_r (+ the old value)
// in double. Every output buffer is poisoned before the call and every element is checked, the
// guard elements around each buffer and the padding of strided rows included.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "powergrad/linear_xent.hpp"
#include "reference.hpp"
#include "xent_cases.hpp"

namespace lxt {

using namespace powergrad;
using pgtest::DT;
using pgtest::is_poison;
using pgtest::poison_value;

enum class Tk { kI32, kI64, kDense };

struct LCase {
  int64_t N = 4, H = 8, V = 16;
  int64_t pad = 0;          // extra row stride of hidden, weight, dhidden, dweight, dense targets
  bool bias = true;
  Tk tk = Tk::kI64;
  Reduction red = Reduction::kMean;
  float alpha = 0.5f, eps = 0.f;
  int64_t chunk = 0;        // 0: the largest that fits the workspace
  size_t budget = 0;        // with chunk 0: the workspace bytes (0: a workspace for every row at once)
  double ignore_frac = 0.2;
  bool all_ignored = false;
  bool up_values = false;
  float up_scale = 1.f;
  bool want_loss = true, want_dh = true, want_dw = true, want_db = true;
  GradType dwt = GradType::kWeightType, dbt = GradType::kWeightType;
  bool acc_dw = false, acc_db = false;
  // Options (docs/design.md §2.5) and their outputs.
  bool cw = false;            // class weights (one of them 0)
  float lambda = 0.f;         // z-loss scale
  float cap = 0.f;            // softcap
  bool want_z = false, want_am = false, want_cor = false;
  uint64_t seed = 1;
  std::string name() const {
    std::ostringstream s;
    s << "N" << N << " H" << H << " V" << V << " pad" << pad << (bias ? " bias" : " nobias") << " tk"
      << static_cast<int>(tk) << " red" << static_cast<int>(red) << " alpha" << alpha << " eps" << eps << " chunk"
      << chunk << " budget" << budget << (all_ignored ? " all-ignored" : "") << (up_values ? " upv" : "") << " scale"
      << up_scale << " dwt" << static_cast<int>(dwt) << " dbt" << static_cast<int>(dbt) << (acc_dw ? " acc_dw" : "")
      << (acc_db ? " acc_db" : "") << " out" << want_loss << want_dh << want_dw << want_db << (cw ? " cw" : "")
      << " lambda" << lambda << " cap" << cap << " zam" << want_z << want_am << want_cor;
    return s.str();
  }
};

constexpr int64_t kGuard = 8;  // untouchable elements before and after every output buffer

// A buffer of `n` elements with guards, poisoned (or filled, for an accumulated output).
template <class U>
struct Guarded {
  std::vector<U> v;
  int64_t n = 0;
  void init(int64_t count) {
    n = count;
    v.assign(static_cast<size_t>(count + 2 * kGuard), poison_value<U>());
  }
  U* data() { return v.data() + kGuard; }
  const U* data() const { return v.data() + kGuard; }
};

// The inputs of one case, in T, and their decoded values.
template <class T>
struct LData {
  LCase c;
  int64_t ldh = 0, ldw = 0, ldq = 0;
  std::vector<T> h, w, b, q;
  std::vector<int32_t> y32;
  std::vector<int64_t> y64;
  std::vector<double> hd, wd, bd, qd;
  std::vector<int64_t> y;
  std::vector<float> upv;
  std::vector<float> cw;  // class weights (empty: none)
  // Initial values of accumulated outputs (decoded), in the output's type.
  std::vector<double> dw0, db0;
};

template <class T>
LData<T> make_data(const LCase& c) {
  LData<T> d;
  d.c = c;
  std::mt19937_64 rng(c.seed * 0x9E3779B97F4A7C15ull + 777);
  std::uniform_real_distribution<double> uni(-1.0, 1.0), u01(0.0, 1.0);
  d.ldh = c.H + c.pad;
  d.ldw = c.H + c.pad;
  d.ldq = c.V + c.pad;
  const double ws = 2.0 / std::sqrt(static_cast<double>(c.H));  // logits of order 1..2
  d.h.assign(static_cast<size_t>(std::max<int64_t>(c.N * d.ldh, 1)), DT<T>::encode(0.0));
  d.hd.assign(d.h.size(), 0.0);
  for (int64_t r = 0; r < c.N; ++r)
    for (int64_t k = 0; k < c.H; ++k) {
      const T v = DT<T>::encode(uni(rng));
      d.h[r * d.ldh + k] = v;
      d.hd[r * d.ldh + k] = DT<T>::decode(v);
    }
  d.w.assign(static_cast<size_t>(c.V * d.ldw), DT<T>::encode(0.0));
  d.wd.assign(d.w.size(), 0.0);
  for (int64_t v = 0; v < c.V; ++v)
    for (int64_t k = 0; k < c.H; ++k) {
      const T e = DT<T>::encode(uni(rng) * ws);
      d.w[v * d.ldw + k] = e;
      d.wd[v * d.ldw + k] = DT<T>::decode(e);
    }
  d.b.assign(static_cast<size_t>(c.V), DT<T>::encode(0.0));
  d.bd.assign(static_cast<size_t>(c.V), 0.0);
  if (c.bias)
    for (int64_t v = 0; v < c.V; ++v) {
      d.b[v] = DT<T>::encode(uni(rng) * 0.5);
      d.bd[v] = DT<T>::decode(d.b[v]);
    }
  if (c.tk == Tk::kDense) {
    d.q.assign(static_cast<size_t>(std::max<int64_t>(c.N * d.ldq, 1)), DT<T>::encode(0.0));
    d.qd.assign(static_cast<size_t>(c.N * c.V), 0.0);
    for (int64_t r = 0; r < c.N; ++r) {
      // A distribution over a few classes, rounded to T, then renormalised in double over the
      // rounded values (so the row sums to 1 as the contract's dense rows do, up to T rounding:
      // the reference reads exactly the rounded values).
      std::vector<double> raw(static_cast<size_t>(c.V), 0.0);
      double s = 0.0;
      for (int64_t v = 0; v < c.V; ++v) {
        raw[v] = u01(rng) < 0.3 || v == r % c.V ? u01(rng) : 0.0;
        s += raw[v];
      }
      for (int64_t v = 0; v < c.V; ++v) {
        const T e = DT<T>::encode(raw[v] / s);
        d.q[r * d.ldq + v] = e;
        d.qd[r * c.V + v] = DT<T>::decode(e);
      }
    }
  } else {
    for (int64_t r = 0; r < c.N; ++r) {
      int64_t yy = static_cast<int64_t>(rng() % static_cast<uint64_t>(c.V));
      if (c.all_ignored || u01(rng) < c.ignore_frac) yy = -100;
      d.y.push_back(yy);
      d.y32.push_back(static_cast<int32_t>(yy));
      d.y64.push_back(yy);
    }
    if (d.y.empty()) {
      d.y32.push_back(0);
      d.y64.push_back(0);
    }
  }
  const int64_t nv = c.red == Reduction::kNone ? c.N : 1;
  for (int64_t i = 0; i < std::max<int64_t>(nv, 1); ++i) d.upv.push_back(static_cast<float>(0.5 + u01(rng)));
  if (c.cw)
    for (int64_t v = 0; v < c.V; ++v) d.cw.push_back(v == 1 ? 0.f : static_cast<float>(0.25 + 1.75 * u01(rng)));
  return d;
}

// Reference results (double).
struct LRef {
  std::vector<double> loss_row, dh, dw, db;
  std::vector<double> dh_abs, dw_abs, db_abs;  // sums of |terms| of each contraction (tolerances)
  double loss_reduced = 0.0, loss_abs = 0.0;
  std::vector<double> loss_tol_row;
  double zerr_max = 0.0;
  bool reduced = false;
  std::vector<double> zerr, z;           // per row: GEMM error bound of a logit; the logits [N x V]
  std::vector<double> zloss_row, lse;
  double zloss_reduced = 0.0, denom = 0.0;
  std::vector<int64_t> argmax;
  std::vector<char> ignored;
};

template <class T>
LRef reference(const LData<T>& d) {
  const LCase& c = d.c;
  const int64_t N = c.N, H = c.H, V = c.V;
  pgref::Problem P;
  P.rows = N;
  P.cols = V;
  P.z.assign(static_cast<size_t>(N * V), 0.0);
  std::vector<double> zerr(static_cast<size_t>(N), 0.0);
  for (int64_t r = 0; r < N; ++r) {
    double sz_max = 0.0;
    for (int64_t v = 0; v < V; ++v) {
      double s = d.bd[v], sa = std::fabs(d.bd[v]);
      for (int64_t k = 0; k < H; ++k) {
        s += d.hd[r * d.ldh + k] * d.wd[v * d.ldw + k];
        sa += std::fabs(d.hd[r * d.ldh + k] * d.wd[v * d.ldw + k]);
      }
      P.z[r * V + v] = s;
      sz_max = std::max(sz_max, sa);
    }
    // fp32 GEMM error of a logit: a sum of H + 1 terms (statistical bound, 4 sqrt(H + 1) u32 |terms|).
    zerr[r] = 4.0 * std::sqrt(static_cast<double>(H + 1)) * 5.96e-8 * sz_max;
  }
  P.dense = c.tk == Tk::kDense;
  P.y = d.y;
  P.qd = d.qd;
  P.alpha = c.alpha;
  P.eps = c.eps;
  P.red = c.red == Reduction::kNone ? pgref::Red::kNone : (c.red == Reduction::kMean ? pgref::Red::kMean : pgref::Red::kSum);
  P.up_scale = c.up_scale;
  P.has_up_values = c.up_values;
  for (float v : d.upv) P.up_values.push_back(v);
  for (float v : d.cw) P.w.push_back(v);
  P.lambda = c.lambda;
  P.cap = c.cap;
  const pgref::Result R = pgref::compute(P);
  LRef o;
  o.reduced = c.red != Reduction::kNone;
  o.loss_row = R.loss_row;
  o.loss_reduced = R.loss_reduced;
  o.loss_tol_row.assign(static_cast<size_t>(N), 0.0);
  for (int64_t r = 0; r < N; ++r) {
    // The target mass A (class weights) scales the lse term; the z-loss adds lambda lse^2.
    const double A = std::max(1.0, std::fabs(R.mass[r]));
    o.loss_tol_row[r] = 2e-5 * (A * std::fabs(R.lse[r]) + R.tabs[r] + 1.0 + R.zloss_row[r]) +
                        2.0 * zerr[r] * (A + 2.0 * c.lambda * std::fabs(R.lse[r]));
    o.zerr_max = std::max(o.zerr_max, zerr[r]);
  }
  o.zerr = zerr;
  o.z = P.z;
  o.zloss_row = R.zloss_row;
  o.zloss_reduced = R.zloss_reduced;
  o.lse = R.lse;
  o.denom = R.denom;
  o.argmax = R.argmax;
  o.ignored = R.ignored;
  o.dh.assign(static_cast<size_t>(N * H), 0.0);
  o.dh_abs.assign(o.dh.size(), 0.0);
  o.dw.assign(static_cast<size_t>(V * H), 0.0);
  o.dw_abs.assign(o.dw.size(), 0.0);
  o.db.assign(static_cast<size_t>(V), 0.0);
  o.db_abs.assign(o.db.size(), 0.0);
  for (int64_t r = 0; r < N; ++r)
    for (int64_t v = 0; v < V; ++v) {
      const double g = R.grad[r * V + v];
      if (g == 0.0) continue;
      for (int64_t k = 0; k < H; ++k) {
        o.dh[r * H + k] += g * d.wd[v * d.ldw + k];
        o.dh_abs[r * H + k] += std::fabs(g * d.wd[v * d.ldw + k]);
        o.dw[v * H + k] += g * d.hd[r * d.ldh + k];
        o.dw_abs[v * H + k] += std::fabs(g * d.hd[r * d.ldh + k]);
      }
      o.db[v] += g;
      o.db_abs[v] += std::fabs(g);
    }
  return o;
}

// Tolerance of a gradient element formed by a contraction of K terms in fp32 from G, whose
// elements carry a relative error of 3e-5 (the row op, docs/design.md §2.1's tolerance table:
// kRel0 and a few u32) plus 2 alpha zerr (p' = exp(alpha z - ...) with z off by zerr).
// g_round: the CUDA backend rounds G to fp16/bf16 before the dh / dW GEMMs (cuBLAS takes both
// operands in one type), one more relative error of u_T per term.
inline double grad_tol(double abs_sum, double ref, double old_abs, int64_t K, double alpha, double zerr, double u_out,
                       double floor, double g_round = 0.0) {
  const double rel = 3e-5 + g_round + 2.0 * alpha * zerr + 4.0 * std::sqrt(static_cast<double>(K)) * 5.96e-8;
  return rel * abs_sum + 2.0 * 5.96e-8 * old_abs + u_out * std::fabs(ref) + floor;
}

template <class U>
double decode_any(const U& v) {
  return DT<U>::decode(v);
}

// Checks a strided [rows x cols] output with guards: written elements against ref within tol(i),
// padding and guards untouched (still poison, or equal to `before` for accumulated buffers).
template <class U, class Tol>
::testing::AssertionResult check_block(const char* what, const Guarded<U>& out, const std::vector<U>& before,
                                       int64_t rows, int64_t cols, int64_t ld, const std::vector<double>& ref,
                                       Tol tol) {
  int bad = 0;
  std::ostringstream msg;
  for (int64_t i = -kGuard; i < out.n + kGuard; ++i) {
    const U& got = out.v[static_cast<size_t>(i + kGuard)];
    const bool inside = i >= 0 && i < out.n && (i % ld) < cols && (i / ld) < rows;
    if (!inside) {
      if (!pgtest::same_bits(got, before[static_cast<size_t>(i + kGuard)])) {
        if (bad++ < 5) msg << what << ": element " << i << " outside the output was changed\n";
      }
      continue;
    }
    const int64_t r = i / ld, cc = i % ld;
    const double want = ref[static_cast<size_t>(r * cols + cc)];
    const double g = decode_any(got);
    const double t = tol(r, cc, want);
    if (!(std::fabs(g - want) <= t)) {
      if (bad++ < 5) msg << what << "[" << r << "," << cc << "] = " << g << ", reference " << want << ", tol " << t << "\n";
    }
  }
  if (bad) return ::testing::AssertionFailure() << bad << " bad elements\n" << msg.str();
  return ::testing::AssertionSuccess();
}

// Host memory policy: the op runs on the caller's vectors directly.
struct HostMem {
  static constexpr Backend backend = Backend::kHost;
  template <class U>
  struct Buf {
    std::vector<U>* host = nullptr;
    U* ptr = nullptr;
    void up(std::vector<U>& h) {
      host = &h;
      ptr = h.data();
    }
    void down() {}
  };
  struct Workspace {
    std::vector<unsigned char> raw;
    void* ptr = nullptr;
    void alloc(size_t bytes) {
      raw.assign(bytes + 256, 0xAB);
      uintptr_t p = reinterpret_cast<uintptr_t>(raw.data());
      ptr = reinterpret_cast<void*>((p + 255) / 256 * 256);
    }
  };
  void* blas_handle() { return nullptr; }
};

// Everything a case produced, in host memory.
template <class T>
struct LOut {
  Status st = Status::kSuccess;
  std::string msg;
  Guarded<float> loss;
  Guarded<T> dh;
  Guarded<T> dw_t;
  Guarded<float> dw_f;
  Guarded<T> db_t;
  Guarded<float> db_f;
  Guarded<float> zl;
  Guarded<int64_t> am;
  Guarded<int32_t> cor;
  int64_t chunk = 0;
  size_t ws_bytes = 0;
};

// Runs one case through the memory policy. `before_*` receive the outputs' initial contents.
template <class T, class Mem>
LOut<T> run_case(Mem& mem, const LData<T>& d, LOut<T>& before) {
  const LCase& c = d.c;
  LOut<T> o;
  const int64_t N = c.N, H = c.H, V = c.V;
  const int64_t lddh = H + c.pad, lddw = H + c.pad;
  o.loss.init(c.red == Reduction::kNone ? std::max<int64_t>(N, 1) : 1);
  o.dh.init(std::max<int64_t>(N * lddh, 1));
  o.dw_t.init(V * lddw);
  o.dw_f.init(V * lddw);
  o.db_t.init(V);
  o.db_f.init(V);
  o.zl.init(c.red == Reduction::kNone ? std::max<int64_t>(N, 1) : 1);
  o.am.init(std::max<int64_t>(N, 1));
  o.cor.init(std::max<int64_t>(N, 1));
  // Accumulated outputs start from finite values (an embedding's gradient, an earlier micro-batch).
  std::mt19937_64 rng(c.seed + 99);
  std::uniform_real_distribution<double> uni(-1.0, 1.0);
  if (c.acc_dw)
    for (int64_t v = 0; v < V; ++v)
      for (int64_t k = 0; k < H; ++k) {
        const double x = uni(rng);
        o.dw_t.data()[v * lddw + k] = DT<T>::encode(x);
        o.dw_f.data()[v * lddw + k] = static_cast<float>(x);
      }
  if (c.acc_db)
    for (int64_t v = 0; v < V; ++v) {
      const double x = uni(rng);
      o.db_t.data()[v] = DT<T>::encode(x);
      o.db_f.data()[v] = static_cast<float>(x);
    }
  before = o;

  // Device (or host) copies.
  std::vector<T> h = d.h, w = d.w, b = d.b, q = d.q.empty() ? std::vector<T>(1) : d.q;
  std::vector<int32_t> y32 = d.y32;
  std::vector<int64_t> y64 = d.y64;
  std::vector<float> upv = d.upv, cw = d.cw.empty() ? std::vector<float>(1) : d.cw;
  typename Mem::template Buf<T> bh, bw, bb, bq, bdh, bdwt, bdbt;
  typename Mem::template Buf<float> bloss, bdwf, bdbf, bupv, bcw, bzl;
  typename Mem::template Buf<int32_t> by32, bcor;
  typename Mem::template Buf<int64_t> by64, bam;
  bcw.up(cw);
  bzl.up(o.zl.v);
  bam.up(o.am.v);
  bcor.up(o.cor.v);
  bh.up(h);
  bw.up(w);
  bb.up(b);
  bq.up(q);
  by32.up(y32);
  by64.up(y64);
  bupv.up(upv);
  bloss.up(o.loss.v);
  bdh.up(o.dh.v);
  bdwt.up(o.dw_t.v);
  bdwf.up(o.dw_f.v);
  bdbt.up(o.db_t.v);
  bdbf.up(o.db_f.v);

  LinearXentOutputs<T> out;
  out.loss = c.want_loss ? bloss.ptr + kGuard : nullptr;
  out.dhidden = c.want_dh ? bdh.ptr + kGuard : nullptr;
  out.ld_dhidden = lddh;
  if (c.want_dw) out.dweight = c.dwt == GradType::kFloat32 ? static_cast<void*>(bdwf.ptr + kGuard) : static_cast<void*>(bdwt.ptr + kGuard);
  out.ld_dweight = lddw;
  out.dweight_type = c.dwt;
  out.accumulate_dweight = c.acc_dw;
  if (c.want_db && c.bias) out.dbias = c.dbt == GradType::kFloat32 ? static_cast<void*>(bdbf.ptr + kGuard) : static_cast<void*>(bdbt.ptr + kGuard);
  out.dbias_type = c.dbt;
  out.accumulate_dbias = c.acc_db;
  out.z_loss = c.want_z ? bzl.ptr + kGuard : nullptr;
  out.argmax = c.want_am ? bam.ptr + kGuard : nullptr;
  out.correct = c.want_cor ? bcor.ptr + kGuard : nullptr;
  Upstream up{c.up_scale, c.up_values ? bupv.ptr : nullptr};

  auto go = [&](auto targets) {
    LinearXentProblem<T, decltype(targets)> p;
    p.hidden = bh.ptr;
    p.rows = N;
    p.hidden_dim = H;
    p.ld_hidden = d.ldh;
    p.weight = bw.ptr;
    p.vocab = V;
    p.ld_weight = d.ldw;
    p.bias = c.bias ? bb.ptr : nullptr;
    p.targets = targets;
    p.alpha = c.alpha;
    p.label_smoothing = c.eps;
    p.reduction = c.red;
    p.class_weight = c.cw ? bcw.ptr : nullptr;
    p.z_loss_scale = c.lambda;
    p.softcap = c.cap;
    size_t bytes = 0;
    int64_t chunk = c.chunk;
    if (chunk == 0) {
      if (c.budget) {
        o.st = linear_xent_chunk_rows(Mem::backend, p, out, c.budget, &chunk);
        if (o.st != Status::kSuccess) {
          o.msg = last_error_message();
          return;
        }
      } else {
        chunk = std::max<int64_t>(N, 1);
      }
    }
    o.chunk = chunk;
    o.st = linear_xent_workspace_bytes(Mem::backend, p, out, chunk, &bytes);
    if (o.st != Status::kSuccess) {
      o.msg = last_error_message();
      return;
    }
    o.ws_bytes = bytes;
    typename Mem::Workspace ws;
    ws.alloc(bytes);
    o.st = linear_xent_forward_backward(Mem::backend, p, up, out, ws.ptr, bytes, c.chunk == 0 && c.budget == 0 ? 0 : chunk,
                                        mem.blas_handle());
    o.msg = last_error_message();
  };
  if (c.tk == Tk::kI32) go(ClassTargets<int32_t>{by32.ptr, -100});
  else if (c.tk == Tk::kI64) go(ClassTargets<int64_t>{by64.ptr, -100});
  else go(DenseTargets<T>{bq.ptr, d.ldq});
  bloss.down();
  bdh.down();
  bdwt.down();
  bdwf.down();
  bdbt.down();
  bdbf.down();
  bzl.down();
  bam.down();
  bcor.down();
  return o;
}

// The option outputs (z_loss, argmax, correct) of a case against the reference; guards untouched.
// An argmax may differ from the reference's only where the two logits are within the fp32 GEMM's
// error of each other (a near tie).
template <class T>
::testing::AssertionResult check_option_outputs(const LData<T>& d, const LRef& R, const LOut<T>& o,
                                                const LOut<T>& before) {
  const LCase& c = d.c;
  const int64_t N = c.N, V = c.V;
  const bool none = c.red == Reduction::kNone;
  {
    std::vector<double> ref = none ? R.zloss_row : std::vector<double>{R.zloss_reduced};
    const int64_t n = c.want_z ? (none ? N : 1) : 0;
    auto ans = check_block("z_loss", o.zl, before.zl.v, n, 1, 1, ref, [&](int64_t r, int64_t, double want) {
      const double lse = none ? std::fabs(R.lse[r]) : 0.0;
      return 4e-5 * std::fabs(want) + 4.0 * c.lambda * (lse + 1.0) * R.zerr_max + 1e-6;
    });
    if (!ans) return ans;
  }
  int bad = 0;
  std::ostringstream msg;
  for (int64_t i = -kGuard; i < o.am.n + kGuard; ++i) {
    const bool inside = c.want_am && i >= 0 && i < N;
    const size_t k = static_cast<size_t>(i + kGuard);
    if (!inside) {
      if (!pgtest::same_bits(o.am.v[k], before.am.v[k]) && bad++ < 5) msg << "argmax: element " << i << " changed\n";
      continue;
    }
    const int64_t a = o.am.v[k], ra = R.argmax[i];
    const bool ok = a == ra || (a >= 0 && a < V && R.z[i * V + a] >= R.z[i * V + ra] - 2.0 * R.zerr[i]);
    if (!ok && bad++ < 5) msg << "argmax[" << i << "] = " << a << ", reference " << ra << "\n";
  }
  for (int64_t i = -kGuard; i < o.cor.n + kGuard; ++i) {
    const bool inside = c.want_cor && i >= 0 && i < N;
    const size_t k = static_cast<size_t>(i + kGuard);
    if (!inside) {
      if (!pgtest::same_bits(o.cor.v[k], before.cor.v[k]) && bad++ < 5) msg << "correct: element " << i << " changed\n";
      continue;
    }
    // The test cases ask for argmax with correct: correct must agree with it and the target.
    const int32_t want = !R.ignored[i] && o.am.v[k] == d.y[i] ? 1 : 0;
    if (o.cor.v[k] != want && bad++ < 5) msg << "correct[" << i << "] = " << o.cor.v[k] << ", expected " << want << "\n";
  }
  if (bad) return ::testing::AssertionFailure() << bad << " bad option outputs\n" << msg.str();
  return ::testing::AssertionSuccess();
}

// Checks every output of a successful case against the reference.
template <class T>
::testing::AssertionResult check_case(const LData<T>& d, const LOut<T>& o, const LOut<T>& before, double g_round = 0.0) {
  const LCase& c = d.c;
  if (o.st != Status::kSuccess)
    return ::testing::AssertionFailure() << "status " << static_cast<int>(o.st) << ": " << o.msg;
  const LRef R = reference(d);
  const int64_t N = c.N, H = c.H, V = c.V;
  const int64_t lddh = H + c.pad, lddw = H + c.pad;
  // The z-loss's gradient uses the ordinary softmax (alpha 1) of z, off by zerr too.
  const double a = c.lambda > 0.f ? std::max<double>(c.alpha, 1.0) : c.alpha;
  // loss
  {
    std::vector<double> ref;
    int64_t n = 0;
    if (!c.want_loss) {
      n = 0;
    } else if (c.red == Reduction::kNone) {
      ref = R.loss_row;
      n = N;
    } else {
      ref = {R.loss_reduced};
      n = 1;
    }
    double red_tol = 0.0;
    for (int64_t r = 0; r < N; ++r) red_tol += R.loss_tol_row[r];
    int64_t nv = 0;
    for (int64_t r = 0; r < N; ++r) nv += c.tk == Tk::kDense || d.y[r] != -100;
    if (c.red == Reduction::kMean && nv > 0) red_tol /= c.cw ? std::max(R.denom, 1e-3) : static_cast<double>(nv);
    auto ans = check_block("loss", o.loss, before.loss.v, n, n ? (c.red == Reduction::kNone ? 1 : 1) : 0, 1, ref,
                           [&](int64_t r, int64_t, double want) {
                             return (c.red == Reduction::kNone ? R.loss_tol_row[r] : red_tol + 2e-6 * std::fabs(want));
                           });
    if (!ans) return ans;
  }
  // dhidden
  {
    auto ans = check_block("dhidden", o.dh, before.dh.v, c.want_dh ? N : 0, H, lddh, R.dh,
                           [&](int64_t r, int64_t k, double want) {
                             return grad_tol(R.dh_abs[r * H + k], want, 0.0, V, a, R.zerr_max, DT<T>::u == 5.9604644775390625e-08 ? 0.0 : DT<T>::u,
                                             DT<T>::abs_floor, g_round);
                           });
    if (!ans) return ans;
  }
  // dweight
  {
    std::vector<double> ref = R.dw;
    const bool f = c.dwt == GradType::kFloat32;
    for (int64_t v = 0; v < V; ++v)
      for (int64_t k = 0; k < H; ++k)
        if (c.acc_dw)
          ref[v * H + k] += f ? static_cast<double>(before.dw_f.data()[v * lddw + k]) : DT<T>::decode(before.dw_t.data()[v * lddw + k]);
    const double u_out = f || DT<T>::u == 5.9604644775390625e-08 ? 0.0 : DT<T>::u;
    auto tol = [&](int64_t v, int64_t k, double want) {
      const double old = std::fabs(want - R.dw[v * H + k]);
      return grad_tol(R.dw_abs[v * H + k], want, old, N, a, R.zerr_max, u_out, DT<T>::abs_floor, g_round);
    };
    auto ans = f ? check_block("dweight(f32)", o.dw_f, before.dw_f.v, c.want_dw ? V : 0, H, lddw, ref, tol)
                 : check_block("dweight", o.dw_t, before.dw_t.v, c.want_dw ? V : 0, H, lddw, ref, tol);
    if (!ans) return ans;
    // The buffer of the other type is never touched.
    auto other = f ? check_block("dweight(T, unused)", o.dw_t, before.dw_t.v, 0, H, lddw, ref, tol)
                   : check_block("dweight(f32, unused)", o.dw_f, before.dw_f.v, 0, H, lddw, ref, tol);
    if (!other) return other;
  }
  // dbias
  {
    std::vector<double> ref = R.db;
    const bool f = c.dbt == GradType::kFloat32;
    if (c.acc_db)
      for (int64_t v = 0; v < V; ++v) ref[v] += f ? static_cast<double>(before.db_f.data()[v]) : DT<T>::decode(before.db_t.data()[v]);
    const double u_out = f || DT<T>::u == 5.9604644775390625e-08 ? 0.0 : DT<T>::u;
    auto tol = [&](int64_t, int64_t v, double want) {
      return grad_tol(R.db_abs[v], want, std::fabs(want - R.db[v]), N, a, R.zerr_max, u_out, DT<T>::abs_floor);
    };
    const int64_t rows = c.want_db && c.bias ? 1 : 0;
    auto ans = f ? check_block("dbias(f32)", o.db_f, before.db_f.v, rows, V, V, ref, tol)
                 : check_block("dbias", o.db_t, before.db_t.v, rows, V, V, ref, tol);
    if (!ans) return ans;
  }
  return check_option_outputs(d, R, o, before);
}

template <class T, class Mem>
::testing::AssertionResult run_and_check(Mem& mem, const LCase& c) {
  const LData<T> d = make_data<T>(c);
  LOut<T> before;
  const LOut<T> o = run_case<T>(mem, d, before);
  const double g_round = Mem::backend == Backend::kCuda && !std::is_same<T, float>::value ? DT<T>::u : 0.0;
  auto r = check_case<T>(d, o, before, g_round);
  if (!r) return r << " [" << DT<T>::name << " " << c.name() << "]";
  return r;
}

// Split form (docs/design.md §2.6) on the host, the shards emulated in one process: shard k holds
// the classes [off_k, off_k + width_k) (uneven widths), computes its statistics chunk by chunk
// (linear_xent_shard_stats), the library's merge op combines them in shard order
// (xent_merge_stats, what each rank does after an all-gather), and each shard's apply writes its
// rows of dW / db into the full buffers, its partial dh and the loss. Checked against the float64
// reference of the unsharded problem: every shard's loss and option outputs are bitwise the same,
// the sum of the partial dh (in double) is within the unsharded tolerance plus one rounding of each
// partial, and dW / db / the loss / the option outputs go through check_case.
inline std::vector<int64_t> shard_offsets(int64_t V, int shards) {
  std::vector<int64_t> off;  // shards + 1 boundaries: the first shard gets about half, then halving
  int64_t left = V, at = 0;
  for (int k = 0; k < shards; ++k) {
    off.push_back(at);
    const int64_t rest = shards - k - 1;
    int64_t w = k + 1 == shards ? left : std::max<int64_t>(1, std::min(left - rest, left / 2 + 1));
    at += w;
    left -= w;
  }
  off.push_back(V);
  return off;
}

template <class T, class Mem>
::testing::AssertionResult run_split_and_check(Mem& mem, const LCase& c, int shards) {
  const LData<T> d = make_data<T>(c);
  const int64_t N = c.N, H = c.H, V = c.V;
  const int64_t lddh = H + c.pad, lddw = H + c.pad;
  const bool none = c.red == Reduction::kNone;
  const std::vector<int64_t> off = shard_offsets(V, shards);
  LOut<T> o, before;
  o.loss.init(none ? std::max<int64_t>(N, 1) : 1);
  o.dh.init(std::max<int64_t>(N * lddh, 1));
  o.dw_t.init(V * lddw);
  o.dw_f.init(V * lddw);
  o.db_t.init(V);
  o.db_f.init(V);
  o.zl.init(none ? std::max<int64_t>(N, 1) : 1);
  o.am.init(std::max<int64_t>(N, 1));
  o.cor.init(std::max<int64_t>(N, 1));
  std::mt19937_64 rng(c.seed + 99);
  std::uniform_real_distribution<double> uni(-1.0, 1.0);
  if (c.acc_dw)
    for (int64_t v = 0; v < V; ++v)
      for (int64_t k = 0; k < H; ++k) {
        const double x = uni(rng);
        o.dw_t.data()[v * lddw + k] = DT<T>::encode(x);
        o.dw_f.data()[v * lddw + k] = static_cast<float>(x);
      }
  if (c.acc_db)
    for (int64_t v = 0; v < V; ++v) {
      const double x = uni(rng);
      o.db_t.data()[v] = DT<T>::encode(x);
      o.db_f.data()[v] = static_cast<float>(x);
    }
  before = o;
  std::vector<T> q = d.q.empty() ? std::vector<T>(1) : d.q;
  std::vector<float> upv = d.upv;
  const int64_t chunk = c.chunk > 0 ? c.chunk : std::max<int64_t>(N, 1);
  std::vector<RowStats> parts(static_cast<size_t>(std::max<int64_t>(shards * N, 1)));
  std::vector<RowStats> merged(static_cast<size_t>(std::max<int64_t>(N, 1)));
  // Per shard: its own loss / option outputs / partial dh (copied into `o` from shard 0 afterwards).
  std::vector<LOut<T>> sh(static_cast<size_t>(shards));
  for (auto& x : sh) {
    x.loss = before.loss;
    x.zl = before.zl;
    x.am = before.am;
    x.cor = before.cor;
    x.dh = before.dh;
  }
  if (shards > 3) return ::testing::AssertionFailure() << "run_split_and_check takes at most 3 shards";
  // The inputs and outputs in the memory policy's memory (the caller's vectors on the host).
  std::vector<T> hv = d.h, wv = d.w, bv = d.b;
  std::vector<int32_t> y32 = d.y32;
  std::vector<int64_t> y64 = d.y64;
  std::vector<float> cwv = d.cw.empty() ? std::vector<float>(1) : d.cw;
  typename Mem::template Buf<T> bh, bw, bb, bq, bdwt, bdbt, bdh[3];
  typename Mem::template Buf<float> bupv, bcw, bdwf, bdbf, bloss[3], bzl[3];
  typename Mem::template Buf<int32_t> by32, bcor[3];
  typename Mem::template Buf<int64_t> by64, bam[3];
  typename Mem::template Buf<RowStats> bparts, bmerged;
  bh.up(hv);
  bw.up(wv);
  bb.up(bv);
  bq.up(q);
  by32.up(y32);
  by64.up(y64);
  bcw.up(cwv);
  bupv.up(upv);
  bdwt.up(o.dw_t.v);
  bdwf.up(o.dw_f.v);
  bdbt.up(o.db_t.v);
  bdbf.up(o.db_f.v);
  for (int k = 0; k < shards; ++k) {
    LOut<T>& x = sh[static_cast<size_t>(k)];
    bdh[k].up(x.dh.v);
    bloss[k].up(x.loss.v);
    bzl[k].up(x.zl.v);
    bam[k].up(x.am.v);
    bcor[k].up(x.cor.v);
  }
  bparts.up(parts);
  bmerged.up(merged);
  const Upstream up{c.up_scale, c.up_values ? bupv.ptr : nullptr};
  ::testing::AssertionResult result = ::testing::AssertionSuccess();
  auto go = [&](auto targets_full) {
    using Tg = decltype(targets_full);
    auto problem = [&](int k) {
      LinearXentProblem<T, Tg> p;
      const int64_t o0 = off[k], w = off[k + 1] - off[k];
      p.hidden = bh.ptr;
      p.rows = N;
      p.hidden_dim = H;
      p.ld_hidden = d.ldh;
      p.weight = bw.ptr + o0 * d.ldw;
      p.vocab = w;
      p.ld_weight = d.ldw;
      p.bias = c.bias ? bb.ptr + o0 : nullptr;
      p.targets = targets_full;
      if constexpr (!powergrad::detail::target_traits<Tg>::hard) p.targets.prob = bq.ptr + o0;
      p.alpha = c.alpha;
      p.label_smoothing = c.eps;
      p.reduction = c.red;
      p.vocab_offset = o0;
      p.total_vocab = V;
      p.class_weight = c.cw ? bcw.ptr + o0 : nullptr;
      p.z_loss_scale = c.lambda;
      p.softcap = c.cap;
      return p;
    };
    auto outputs = [&](int k) {
      LinearXentOutputs<T> out;
      const int64_t o0 = off[k];
      out.loss = c.want_loss ? bloss[k].ptr + kGuard : nullptr;
      out.dhidden = c.want_dh ? bdh[k].ptr + kGuard : nullptr;
      out.ld_dhidden = lddh;
      if (c.want_dw)
        out.dweight = c.dwt == GradType::kFloat32 ? static_cast<void*>(bdwf.ptr + kGuard + o0 * lddw)
                                                  : static_cast<void*>(bdwt.ptr + kGuard + o0 * lddw);
      out.ld_dweight = lddw;
      out.dweight_type = c.dwt;
      out.accumulate_dweight = c.acc_dw;
      if (c.want_db && c.bias)
        out.dbias = c.dbt == GradType::kFloat32 ? static_cast<void*>(bdbf.ptr + kGuard + o0)
                                                : static_cast<void*>(bdbt.ptr + kGuard + o0);
      out.dbias_type = c.dbt;
      out.accumulate_dbias = c.acc_db;
      out.z_loss = c.want_z ? bzl[k].ptr + kGuard : nullptr;
      out.argmax = c.want_am ? bam[k].ptr + kGuard : nullptr;
      out.correct = c.want_cor ? bcor[k].ptr + kGuard : nullptr;
      return out;
    };
    for (int k = 0; k < shards && result; ++k) {
      const auto p = problem(k);
      size_t bytes = 0;
      if (linear_xent_workspace_bytes(Mem::backend, p, outputs(k), chunk, &bytes) != Status::kSuccess) {
        result = ::testing::AssertionFailure() << "workspace_bytes: " << last_error_message();
        return;
      }
      typename Mem::Workspace ws;
      ws.alloc(bytes);
      if (linear_xent_shard_stats(Mem::backend, p, bparts.ptr + k * N, ws.ptr, bytes, chunk, mem.blas_handle()) !=
          Status::kSuccess)
        result = ::testing::AssertionFailure() << "shard_stats " << k << ": " << last_error_message();
    }
    if (!result) return;
    if (xent_merge_stats(Mem::backend, bparts.ptr, shards, N, c.alpha, bmerged.ptr) != Status::kSuccess) {
      result = ::testing::AssertionFailure() << "merge: " << last_error_message();
      return;
    }
    for (int k = 0; k < shards && result; ++k) {
      const auto p = problem(k);
      const auto out = outputs(k);
      size_t bytes = 0;
      (void)linear_xent_workspace_bytes(Mem::backend, p, out, chunk, &bytes);
      typename Mem::Workspace ws;
      ws.alloc(bytes);
      if (linear_xent_shard_apply(Mem::backend, p, bmerged.ptr, up, out, ws.ptr, bytes, chunk, mem.blas_handle()) !=
          Status::kSuccess)
        result = ::testing::AssertionFailure() << "shard_apply " << k << ": " << last_error_message();
    }
  };
  if (c.tk == Tk::kI32) go(ClassTargets<int32_t>{by32.ptr, -100});
  else if (c.tk == Tk::kI64) go(ClassTargets<int64_t>{by64.ptr, -100});
  else go(DenseTargets<T>{bq.ptr, d.ldq});
  bdwt.down();
  bdwf.down();
  bdbt.down();
  bdbf.down();
  for (int k = 0; k < shards; ++k) {
    bdh[k].down();
    bloss[k].down();
    bzl[k].down();
    bam[k].down();
    bcor[k].down();
  }
  if (!result) return result << " [" << DT<T>::name << " split " << shards << " " << c.name() << "]";
  // Every shard reports the same loss and option outputs, bit for bit.
  for (int k = 1; k < shards; ++k) {
    const LOut<T>& a = sh[0];
    const LOut<T>& b = sh[static_cast<size_t>(k)];
    if (std::memcmp(a.loss.v.data(), b.loss.v.data(), a.loss.v.size() * sizeof(float)) ||
        std::memcmp(a.zl.v.data(), b.zl.v.data(), a.zl.v.size() * sizeof(float)) ||
        std::memcmp(a.am.v.data(), b.am.v.data(), a.am.v.size() * sizeof(int64_t)) ||
        std::memcmp(a.cor.v.data(), b.cor.v.data(), a.cor.v.size() * sizeof(int32_t)))
      return ::testing::AssertionFailure() << "shard " << k << " reports another loss / option output than shard 0 ["
                                           << DT<T>::name << " split " << shards << " " << c.name() << "]";
  }
  o.loss = sh[0].loss;
  o.zl = sh[0].zl;
  o.am = sh[0].am;
  o.cor = sh[0].cor;
  // dh: the sum of the partials, checked here (check_case sees an untouched dh buffer).
  LCase c2 = c;
  c2.want_dh = false;
  LData<T> d2 = d;
  d2.c = c2;
  // The CUDA backend rounds G to fp16/bf16 before the dh / dW GEMMs (as in run_and_check).
  const double g_round = Mem::backend == Backend::kCuda && !std::is_same<T, float>::value ? DT<T>::u : 0.0;
  auto ans = check_case<T>(d2, o, before, g_round);
  if (!ans) return ans << " [" << DT<T>::name << " split " << shards << " " << c.name() << "]";
  const LRef R = reference(d);
  const double a = c.lambda > 0.f ? std::max<double>(c.alpha, 1.0) : c.alpha;
  const double u_out = std::is_same<T, float>::value ? 0.0 : DT<T>::u;
  int bad = 0;
  std::ostringstream msg;
  for (int64_t r = 0; r < N; ++r)
    for (int64_t k = 0; k < H; ++k) {
      double sum = 0.0, abs_parts = 0.0;
      for (int j = 0; j < shards; ++j) {
        const T& g = sh[static_cast<size_t>(j)].dh.data()[r * lddh + k];
        if (c.want_dh && pgtest::is_poison(g)) ++bad;
        const double x = DT<T>::decode(g);
        sum += x;
        abs_parts += std::fabs(x);
      }
      if (!c.want_dh) continue;
      const double want = R.dh[r * H + k];
      const double t = grad_tol(R.dh_abs[r * H + k], want, 0.0, V, a, R.zerr_max, 0.0, DT<T>::abs_floor * shards,
                                g_round) +
                       u_out * abs_parts;
      if (!(std::fabs(sum - want) <= t) && bad++ < 5)
        msg << "sum of partial dhidden[" << r << "," << k << "] = " << sum << ", reference " << want << ", tol " << t << "\n";
    }
  // Nothing outside the partial dh rows (padding, guards) was written by any shard.
  for (int j = 0; j < shards; ++j) {
    const auto& v = sh[static_cast<size_t>(j)].dh;
    for (int64_t i = -kGuard; i < v.n + kGuard; ++i) {
      const bool inside = c.want_dh && i >= 0 && i < v.n && (i % lddh) < H && (i / lddh) < N;
      if (!inside && !pgtest::same_bits(v.v[static_cast<size_t>(i + kGuard)], before.dh.v[static_cast<size_t>(i + kGuard)]))
        ++bad;
    }
  }
  if (bad)
    return ::testing::AssertionFailure() << bad << " bad partial dhidden elements\n"
                                         << msg.str() << " [" << DT<T>::name << " split " << shards << " " << c.name() << "]";
  return ::testing::AssertionSuccess();
}

// Cases of the options (host backend): class weights (one of them 0), z-loss, softcap, argmax /
// correct, alone and together, every target kind and reduction, smoothing, chunk boundaries.
inline std::vector<LCase> option_cases() {
  std::vector<LCase> v;
  uint64_t seed = 500;
  auto add = [&](LCase c) {
    c.seed = seed++;
    v.push_back(c);
  };
  for (Tk tk : {Tk::kI32, Tk::kI64, Tk::kDense})
    for (Reduction red : {Reduction::kNone, Reduction::kMean, Reduction::kSum})
      for (int opt = 0; opt < 5; ++opt) {
        LCase c;
        c.N = 13, c.H = 7, c.V = 37, c.tk = tk, c.red = red, c.chunk = 5, c.alpha = 0.3f;
        c.cw = opt == 0 || opt == 4;
        c.lambda = (opt == 1 || opt == 4) ? 1e-2f : 0.f;
        c.cap = (opt == 2 || opt == 4) ? 1.5f : 0.f;
        c.want_z = c.lambda > 0.f;
        c.want_am = opt == 3 || opt == 4;
        c.want_cor = c.want_am && tk != Tk::kDense;
        c.eps = opt == 4 ? 0.1f : 0.f;
        c.up_values = opt % 2 == 1;
        c.up_scale = opt == 2 ? 2.f : 1.f;
        c.bias = opt != 1;
        add(c);
      }
  {
    LCase c;  // weights: all rows ignored (kMean denominator 0), and odd sizes with one-row chunks
    c.N = 9, c.H = 5, c.V = 21, c.chunk = 4, c.all_ignored = true, c.cw = true, c.lambda = 1e-3f, c.want_z = true;
    c.want_am = c.want_cor = true;
    add(c);
    c.all_ignored = false;
    c.N = 17, c.H = 3, c.V = 1000, c.chunk = 1, c.cap = 3.f, c.alpha = 0.f;
    add(c);
  }
  return v;
}

// Cases of the split form: shards of uneven width (one of one class), every target kind and
// reduction, bias / none, options, accumulation and output types.
inline std::vector<LCase> split_cases() {
  std::vector<LCase> v;
  uint64_t seed = 900;
  auto add = [&](LCase c) {
    c.seed = seed++;
    v.push_back(c);
  };
  for (Tk tk : {Tk::kI32, Tk::kI64, Tk::kDense})
    for (Reduction red : {Reduction::kNone, Reduction::kMean, Reduction::kSum}) {
      LCase c;
      c.N = 11, c.H = 6, c.V = 29, c.tk = tk, c.red = red, c.chunk = 4, c.alpha = 0.3f;
      c.bias = red != Reduction::kSum;
      c.up_values = red != Reduction::kMean;
      c.up_scale = 1.5f;
      add(c);
      c.cw = true, c.lambda = 1e-2f, c.cap = 2.f, c.eps = 0.1f, c.want_z = true, c.want_am = true;
      c.want_cor = tk != Tk::kDense;
      c.pad = 2;
      add(c);
    }
  {
    LCase c;
    c.N = 20, c.H = 5, c.V = 40, c.chunk = 7, c.dwt = GradType::kFloat32, c.acc_dw = c.acc_db = true;
    add(c);
    c.dwt = GradType::kWeightType, c.dbt = GradType::kFloat32, c.acc_dw = c.acc_db = false, c.all_ignored = true;
    add(c);
    c.all_ignored = false, c.N = 0;  // empty batch
    add(c);
  }
  return v;
}

// The case table every dtype runs: shapes of 1, 7, 1000, 4099, 32000 and odd sizes, bias and none,
// every target kind and reduction, label smoothing, upstream values, chunk boundaries, gradient
// output types, accumulation.
inline std::vector<LCase> main_cases() {
  std::vector<LCase> v;
  uint64_t seed = 1;
  auto add = [&](LCase c) {
    c.seed = seed++;
    v.push_back(c);
  };
  for (int64_t N : {1, 7, 33})
    for (int64_t H : {1, 7, 20})
      for (int64_t V : {1, 7, 1000}) {
        LCase c;
        c.N = N, c.H = H, c.V = V;
        c.chunk = N > 1 ? 3 : 1;  // N not a multiple of the chunk, and a one-row chunk
        c.bias = (N + H + V) % 2 == 0;
        add(c);
      }
  {
    LCase c;
    c.N = 5, c.H = 3, c.V = 4099, c.chunk = 2, c.pad = 3;
    add(c);
    c.N = 3, c.H = 8, c.V = 32000, c.chunk = 0;  // one chunk for everything
    add(c);
    c.N = 4099, c.H = 3, c.V = 7, c.chunk = 1000;
    add(c);
    c.N = 1000, c.H = 2, c.V = 33, c.chunk = 1;  // a chunk of one row, many chunks
    add(c);
  }
  for (Tk tk : {Tk::kI32, Tk::kI64, Tk::kDense})
    for (Reduction red : {Reduction::kNone, Reduction::kMean, Reduction::kSum})
      for (float alpha : {0.f, 0.3f, 1.f}) {
        LCase c;
        c.N = 11, c.H = 9, c.V = 37, c.tk = tk, c.red = red, c.alpha = alpha, c.chunk = 4;
        c.eps = alpha == 0.3f ? 0.1f : 0.f;
        c.up_values = alpha != 0.f;
        c.up_scale = alpha == 1.f ? 1.f : 2.5f;
        c.pad = alpha == 1.f ? 2 : 0;
        add(c);
      }
  for (int i = 0; i < 8; ++i) {
    LCase c;
    c.N = 13, c.H = 6, c.V = 29, c.chunk = 5;
    c.dwt = (i & 1) ? GradType::kFloat32 : GradType::kWeightType;
    c.dbt = (i & 2) ? GradType::kFloat32 : GradType::kWeightType;
    c.acc_dw = c.acc_db = (i & 4) != 0;
    add(c);
  }
  {
    LCase c;
    c.N = 9, c.H = 5, c.V = 21, c.chunk = 4, c.all_ignored = true;
    for (Reduction red : {Reduction::kNone, Reduction::kMean, Reduction::kSum}) {
      c.red = red;
      add(c);
    }
    c.all_ignored = false;
    c.red = Reduction::kMean;
    c.N = 0;  // empty batch: reduced loss 0, dW / db zero (or unchanged when accumulating)
    add(c);
    c.acc_dw = c.acc_db = true;
    add(c);
  }
  for (int i = 0; i < 7; ++i) {  // subsets of the outputs
    LCase c;
    c.N = 10, c.H = 4, c.V = 17, c.chunk = 3;
    c.want_loss = (i & 1) != 0;
    c.want_dh = (i & 2) != 0;
    c.want_dw = (i & 4) != 0;
    c.want_db = i == 3;
    add(c);
  }
  {
    LCase c;  // the chunk chosen by the budget: a few rows per chunk
    c.N = 50, c.H = 6, c.V = 300, c.budget = 16 * 300 * 4 + 4 * 300 * 4 * 4 + 300 * 6 * 4 * 2 + 4096;
    add(c);
  }
  return v;
}

}  // namespace lxt
