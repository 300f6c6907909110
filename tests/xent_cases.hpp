// Case generator and checking code shared by the host tests (test_xent.cpp, g++) and the device
// tests (test_xent_device.cu, nvcc). It drives the library's public C++ API through a memory policy
// (`Mem`): HostMem below hands the ops host vectors, DeviceMem in test_xent_device.cu copies them
// to device memory and back. Every result is compared with the library-free float64 reference in
// reference.hpp.
//
// Discipline (docs/design.md §4): fixed seeds; inputs are drawn in double, rounded to the element type, and
// the reference reads the rounded values; every output buffer is poisoned (all bytes 0xFF, a NaN
// in every dtype) before a call; EVERY element of every output buffer is checked: written elements
// against the reference with the tolerance table below, all other elements (row padding, guard
// elements before and after, unrequested outputs) for being bit-for-bit untouched.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "powergrad/xent.hpp"
#include "reference.hpp"

namespace pgtest {

namespace pg = ::powergrad;
using pg::Backend;
using pg::bfloat16_t;
using pg::half_t;
using pg::Reduction;
using pg::RowStats;
using pg::Status;

// ---------------------------------------------------------------------------------------------
// Element types. Decoding for the reference goes through reference.hpp, never the library.
// ---------------------------------------------------------------------------------------------
template <class T>
struct DT;
template <>
struct DT<float> {
  static constexpr const char* name = "fp32";
  static double decode(float v) { return static_cast<double>(v); }
  static float encode(double x) { return static_cast<float>(x); }
  static constexpr double u = 5.9604644775390625e-08;  // 2^-24, unit roundoff of the stored result
  static constexpr double abs_floor = 1e-44;           // below the smallest fp32 subnormal step
};
template <>
struct DT<half_t> {
  static constexpr const char* name = "fp16";
  static double decode(half_t v) { return pgref::half_bits_to_double(v.bits); }
  static half_t encode(double x) { return half_t{pgref::double_to_half_bits(x)}; }
  static constexpr double u = 4.8828125e-04;        // 2^-11
  static constexpr double abs_floor = 2.98023224e-08;  // 2^-25: half the fp16 subnormal step
};
template <>
struct DT<bfloat16_t> {
  static constexpr const char* name = "bf16";
  static double decode(bfloat16_t v) { return pgref::bf16_bits_to_double(v.bits); }
  static bfloat16_t encode(double x) { return bfloat16_t{pgref::double_to_bf16_bits(x)}; }
  static constexpr double u = 3.90625e-03;  // 2^-8
  static constexpr double abs_floor = 1e-40;
};

template <class U>
U poison_value() {
  U v;
  std::memset(static_cast<void*>(&v), 0xFF, sizeof(U));
  return v;
}
template <class U>
bool same_bits(const U& a, const U& b) {
  return std::memcmp(&a, &b, sizeof(U)) == 0;
}
template <class U>
bool is_poison(const U& v) {
  return same_bits(v, poison_value<U>());
}

// ---------------------------------------------------------------------------------------------
// Tolerance table.
//
// The library computes in fp32 whatever the storage type, so the error of a result has two parts:
//  (1) fp32 arithmetic, the same for every dtype. For a gradient element g (p' - q):
//        |g| * (kGradAbs + (kRel0 + kArgRel * |exp argument|) * p' + 4 u32 q)
//      kGradAbs (8 u32): absolute error of p' - q per unit |g| (rounding of q = 1 - eps + eps/C and of
//        g = scale * v / n in fp32, and of p' near 1, where p' - q must be formed in fp32 and not
//        cancel after a 16-bit rounding; docs/design.md §2.1).
//      kRel0 (2e-5): relative error of p' from the fp32 row sums: sequential sums of up to 1024 terms
//        merged over up to 126 chunks for C = 128256 (bound ~(1024 + 126) u32 ~ 7e-5, observed
//        typically < 2e-6); also covers exp2/log2 (< 2 ulp).
//      kArgRel (8 u32): p' = exp(x) with x = alpha (z - m) - log sa formed in fp32, so its relative
//        error grows with |x| (with a saved lse_alpha, x = alpha z - lse_alpha: large logits cost
//        precision, which is the documented price of the one-read backward).
//  (2) the final rounding to the output type: <= u_out |value| (+ half a subnormal step), with
//      u_out = 2^-24 (fp32), 2^-11 (fp16), 2^-8 (bf16). This is tighter than a flat "1e-3 of max |g|
//      of the row" for fp16 / "8e-3" for bf16, because it is per element: a wrong small element is
//      caught even when the row holds a large one.
// Losses and statistics are fp32 outputs for every dtype (same tolerance for 16-bit inputs, since
// the reference reads the rounded inputs): kRel0 relative to the magnitudes that enter the sums
// (|lse|, |m|, sum |q z|), plus kRel0 absolute.
// ---------------------------------------------------------------------------------------------
constexpr double kU32 = 5.9604644775390625e-08;
constexpr double kGradAbs = 8 * kU32;
constexpr double kRel0 = 2e-5;
constexpr double kArgRel = 8 * kU32;

enum class TargetKind : int { kInt32 = 0, kInt64 = 1, kDense = 2 };
inline const char* target_name(TargetKind k) {
  return k == TargetKind::kInt32 ? "i32" : (k == TargetKind::kInt64 ? "i64" : "dense");
}
inline const char* red_name(Reduction r) {
  return r == Reduction::kNone ? "none" : (r == Reduction::kMean ? "mean" : "sum");
}

// Upstream gradient shapes.
enum class UpMode : int {
  kNull = 0,    // values = nullptr (v = 1), scale up_scale
  kScalar = 1,  // values given: one value (kMean/kSum) or the same value on every row (kNone)
  kPerRow = 2,  // values given: a random value per row (kNone); one random value for kMean/kSum
};

struct Case {
  int64_t rows = 4;
  int64_t cols = 10;
  int64_t ld_pad = 0;      // logits ld = cols + ld_pad (padding poisoned: must be neither read nor written)
  int64_t out_ld_pad = 0;  // out-of-place gradient ld = cols + out_ld_pad
  int offset = 0;          // logits / gradient start pointers offset by this many elements (unaligned)
  float alpha = 1.f;
  float eps = 0.f;
  Reduction red = Reduction::kMean;
  TargetKind targets = TargetKind::kInt32;
  bool in_place = false;
  double logit_scale = 4.0;  // logits uniform in shift +- logit_scale
  double logit_shift = 0.0;
  double peak_frac = 0.3;    // fraction of rows whose target logit gets +3*logit_scale (p_y -> 1)
  double mask_frac = 0.0;    // fraction of -inf (masked) logits
  bool target_on_masked = false;  // row 0's target column is masked (its loss is +inf)
  double ignore_frac = 0.0;
  bool all_ignored = false;
  int64_t ignore_index = -100;
  std::vector<int64_t> nan_rows, inf_rows;  // one NaN / +inf logit in these rows
  std::vector<int64_t> bad_target_rows;     // class index out of range (CUDA backend only)
  UpMode up = UpMode::kNull;
  float up_scale = 1.f;
  bool want_loss = true, want_lse = true, want_lse_a = true, want_grad = true;
  std::vector<int64_t> target_shards;  // if set: row r's target lies in shard r % k of these widths
  // Options (docs/design.md §2.5).
  bool weights = false;      // class weights in [0, 2] (some exactly 0)
  float z_loss = 0.f;        // z_loss_scale
  float softcap = 0.f;
  bool want_accuracy = false;  // argmax (and correct, class targets) outputs; z_loss output when z_loss > 0
  double dense_mass = 1.0;   // dense targets: each row sums to this (rows of zeros when 0)
  uint64_t seed = 1;
  bool options() const { return weights || z_loss != 0.f || softcap != 0.f; }

  int64_t ld() const { return cols + ld_pad; }
  int64_t ld_out() const { return in_place ? ld() : cols + out_ld_pad; }
  int64_t dense_ld() const { return cols + (ld_pad ? 2 : 0); }

  std::string str() const {
    std::ostringstream o;
    o << "rows=" << rows << " cols=" << cols << " ld=" << ld() << " ld_out=" << ld_out() << " off=" << offset
      << " alpha=" << alpha << " eps=" << eps << " red=" << red_name(red) << " tg=" << target_name(targets)
      << (in_place ? " inplace" : " outofplace") << " scale=" << logit_scale << " shift=" << logit_shift
      << " mask=" << mask_frac << (target_on_masked ? " tgt_masked" : "") << " ign=" << ignore_frac
      << (all_ignored ? " all_ignored" : "") << " nan_rows=" << nan_rows.size() << " inf_rows=" << inf_rows.size()
      << " bad_rows=" << bad_target_rows.size() << " up=" << static_cast<int>(up) << " up_scale=" << up_scale
      << " outs=" << want_loss << want_lse << want_lse_a << want_grad << " weights=" << weights
      << " zloss=" << z_loss << " softcap=" << softcap << " acc=" << want_accuracy << " dmass=" << dense_mass
      << " seed=" << seed;
    return o.str();
  }
};

constexpr int64_t kGuard = 3;  // poisoned elements after every buffer

template <class T>
struct CaseData {
  Case c;
  std::vector<T> logits;  // offset + rows*ld + kGuard; only the [rows x cols] block is data
  std::vector<int32_t> y32;
  std::vector<int64_t> y64;
  std::vector<T> dense;  // rows x dense_ld
  std::vector<float> upv;
  std::vector<float> weight;  // cols class weights (Case::weights)
  pgref::Problem ref;
  int64_t elem(int64_t r, int64_t j) const { return c.offset + r * c.ld() + j; }
};

inline pgref::Red to_ref(Reduction r) {
  return r == Reduction::kNone ? pgref::Red::kNone : (r == Reduction::kMean ? pgref::Red::kMean : pgref::Red::kSum);
}

template <class T>
CaseData<T> make_case(const Case& c) {
  CaseData<T> d;
  d.c = c;
  const int64_t R = c.rows, C = c.cols;
  std::mt19937_64 rng(c.seed * 0x9E3779B97F4A7C15ull + 12345);
  std::uniform_real_distribution<double> uni(-1.0, 1.0), u01(0.0, 1.0);
  auto coin = [&](double prob) { return prob > 0 && u01(rng) < prob; };
  auto randint = [&](int64_t lo, int64_t hi) {  // [lo, hi)
    return lo + static_cast<int64_t>(rng() % static_cast<uint64_t>(hi - lo));
  };
  auto in_list = [](const std::vector<int64_t>& v, int64_t r) { return std::find(v.begin(), v.end(), r) != v.end(); };

  pgref::Problem& P = d.ref;
  P.rows = R;
  P.cols = C;
  P.alpha = static_cast<double>(c.alpha);
  P.eps = static_cast<double>(c.eps);
  P.red = to_ref(c.red);
  P.dense = (c.targets == TargetKind::kDense);
  P.ignore_index = c.ignore_index;
  P.up_scale = static_cast<double>(c.up_scale);
  P.z.assign(R * C, 0.0);
  P.lambda = static_cast<double>(c.z_loss);
  P.cap = static_cast<double>(c.softcap);

  // Targets.
  std::vector<int64_t> y(R, 0);
  for (int64_t r = 0; r < R; ++r) {
    if (!c.target_shards.empty()) {
      const int64_t k = static_cast<int64_t>(c.target_shards.size());
      int64_t lo = 0;
      for (int64_t s = 0; s < r % k; ++s) lo += c.target_shards[s];
      y[r] = randint(lo, lo + c.target_shards[r % k]);
    } else {
      y[r] = randint(0, C);
    }
    if (!P.dense && (c.all_ignored || coin(c.ignore_frac))) y[r] = c.ignore_index;
    if (!P.dense && in_list(c.bad_target_rows, r)) {
      const int64_t bad[4] = {C, C + 7, -1, 1000000007};
      y[r] = bad[r % 4] == c.ignore_index ? C + 1 : bad[r % 4];
    }
  }
  if (!P.dense) {
    P.y = y;
    if (c.targets == TargetKind::kInt32) {
      d.y32.resize(R);
      for (int64_t r = 0; r < R; ++r) d.y32[r] = static_cast<int32_t>(y[r]);
    } else {
      d.y64 = y;
    }
  }

  // Logits, rounded to T; the reference reads the rounded values.
  d.logits.assign(c.offset + R * c.ld() + kGuard, poison_value<T>());
  for (int64_t r = 0; r < R; ++r) {
    std::vector<double> v(C);
    const int64_t yr = (y[r] >= 0 && y[r] < C) ? y[r] : 0;  // column to peak / keep unmasked
    const bool peak = coin(c.peak_frac);
    for (int64_t j = 0; j < C; ++j) {
      v[j] = c.logit_shift + c.logit_scale * uni(rng);
      if (peak && j == yr) v[j] += 3.0 * c.logit_scale;
      if (C > 1 && coin(c.mask_frac)) v[j] = -pgref::kInf;
    }
    if (C > 1 && c.mask_frac > 0) {
      // Never a fully masked row (outside the contract); row 0 may get its target masked.
      const int64_t keep = (yr + 1) % C;
      if (v[keep] == -pgref::kInf) v[keep] = c.logit_shift;
      if (c.target_on_masked && r == 0 && !P.dense) v[yr] = -pgref::kInf;
    }
    if (in_list(c.nan_rows, r)) v[randint(0, C)] = std::nan("");
    if (in_list(c.inf_rows, r)) v[randint(0, C)] = pgref::kInf;
    for (int64_t j = 0; j < C; ++j) {
      const T e = DT<T>::encode(v[j]);
      d.logits[d.elem(r, j)] = e;
      P.z[r * C + j] = DT<T>::decode(e);
    }
  }

  // Dense targets: random distributions (some exact zeros), rounded to T; the reference reads the
  // rounded values (which may sum to 1 only approximately; the reference follows them exactly).
  if (P.dense) {
    d.dense.assign(R * c.dense_ld(), poison_value<T>());
    P.qd.assign(R * C, 0.0);
    for (int64_t r = 0; r < R; ++r) {
      std::vector<double> w(C);
      double s = 0.0;
      for (int64_t j = 0; j < C; ++j) {
        const double a = u01(rng);
        w[j] = coin(0.25) ? 0.0 : a * a * a;
        s += w[j];
      }
      if (s == 0.0) {
        w[0] = 1.0;
        s = 1.0;
      }
      for (int64_t j = 0; j < C; ++j) {
        const T e = DT<T>::encode(c.dense_mass * w[j] / s);
        d.dense[r * c.dense_ld() + j] = e;
        P.qd[r * C + j] = DT<T>::decode(e);
      }
    }
  }

  // Class weights: multiples of 1/8 in [0, 2], a few exactly 0 (the reference reads the floats).
  if (c.weights) {
    d.weight.resize(C);
    P.w.resize(C);
    for (int64_t j = 0; j < C; ++j) {
      d.weight[j] = coin(0.1) ? 0.f : static_cast<float>(randint(1, 17)) / 8.f;
      P.w[j] = static_cast<double>(d.weight[j]);
    }
  }

  // Upstream.
  if (c.up != UpMode::kNull) {
    const int64_t n = (c.red == Reduction::kNone) ? std::max<int64_t>(R, 1) : 1;
    d.upv.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      d.upv[i] = c.up == UpMode::kScalar ? 0.75f : static_cast<float>(std::ldexp(std::round(uni(rng) * 64.0), -5));
    }
    P.has_up_values = true;
    P.up_values.assign(d.upv.begin(), d.upv.end());
  }
  return d;
}

// ---------------------------------------------------------------------------------------------
// Memory policy for host pointers (the device one lives in test_xent_device.cu).
// ---------------------------------------------------------------------------------------------
struct HostMem {
  static constexpr Backend backend = Backend::kHost;
  // Input: the op reads it. Returns null for an empty vector.
  template <class U>
  U* in(std::vector<U>& v) {
    return v.empty() ? nullptr : v.data();
  }
  // Output: poisoned, then handed to the op.
  template <class U>
  U* out(std::vector<U>& v) {
    std::fill(v.begin(), v.end(), poison_value<U>());
    return v.empty() ? nullptr : v.data();
  }
  // Copies an op's result back into v (p is what in()/out() returned for v).
  template <class U>
  void fetch(std::vector<U>&, const U*) {}
  void* workspace(size_t bytes) {
    ws_.assign(bytes, 0xFF);
    return bytes ? ws_.data() : nullptr;
  }
  pg::stream_t stream() const { return nullptr; }
  std::vector<unsigned char> ws_;
};

// Runtime target kind -> target type.
template <class T, class F>
void with_targets(TargetKind k, F&& f) {
  switch (k) {
    case TargetKind::kInt32: f(pg::ClassTargets<int32_t>{}); break;
    case TargetKind::kInt64: f(pg::ClassTargets<int64_t>{}); break;
    case TargetKind::kDense: f(pg::DenseTargets<T>{}); break;
  }
}

template <class T, class Tg, class Mem>
Tg make_targets(Mem& mem, CaseData<T>& d) {
  Tg t{};
  if constexpr (std::is_same<Tg, pg::ClassTargets<int32_t>>::value) {
    t.index = mem.in(d.y32);
    t.ignore_index = d.c.ignore_index;
  } else if constexpr (std::is_same<Tg, pg::ClassTargets<int64_t>>::value) {
    t.index = mem.in(d.y64);
    t.ignore_index = d.c.ignore_index;
  } else {
    t.prob = mem.in(d.dense);
    t.ld = d.c.dense_ld();
  }
  return t;
}

// The problem of a case: its logits (starting at `input`, offset applied here), targets and math
// parameters; columns [off, off + width) of each row when width > 0 (a shard), else the whole row.
template <class T, class Tg, class Mem>
pg::XentProblem<T, Tg> make_problem(Mem& mem, CaseData<T>& d, T* input, int64_t off = 0, int64_t width = 0) {
  const Case& c = d.c;
  pg::XentProblem<T, Tg> p;
  p.logits = input + c.offset + off;
  p.rows = c.rows;
  p.cols = width > 0 ? width : c.cols;
  p.ld = c.ld();
  p.targets = make_targets<T, Tg>(mem, d);
  if constexpr (std::is_same<Tg, pg::DenseTargets<T>>::value) p.targets.prob += off;
  p.alpha = c.alpha;
  p.label_smoothing = c.eps;
  p.reduction = c.red;
  if (c.weights) p.weight = mem.in(d.weight) + off;  // a shard passes its own columns' weights
  p.z_loss_scale = c.z_loss;
  p.softcap = c.softcap;
  if (width > 0) {
    p.col_offset = off;
    p.total_cols = c.cols;
  }
  return p;
}

// ---------------------------------------------------------------------------------------------
// Checking.
// ---------------------------------------------------------------------------------------------
struct Checker {
  std::string ctx;
  int64_t checked = 0, fails = 0;
  double worst = 0.0;  // max |got - ref| / tol over finite comparisons
  std::ostringstream msgs;
  explicit Checker(std::string c) : ctx(std::move(c)) {}
  void fail(const std::string& m) {
    if (fails < 12) msgs << "  " << m << "\n";
    ++fails;
  }
  void value(const std::string& what, double got, double ref, double tol, bool nan_ok = false) {
    ++checked;
    bool ok;
    if (nan_ok && std::isnan(got)) {
      ok = true;
    } else if (std::isnan(ref)) {
      ok = std::isnan(got);
    } else if (std::isinf(ref)) {
      ok = (got == ref);
    } else {
      ok = std::isfinite(got) && std::fabs(got - ref) <= tol;
      if (std::isfinite(got) && tol > 0) worst = std::max(worst, std::fabs(got - ref) / tol);
    }
    if (!ok) {
      std::ostringstream o;
      o.precision(10);
      o << what << ": got " << got << ", expected " << ref << " (tol " << tol << ", diff " << std::fabs(got - ref)
        << ")";
      fail(o.str());
    }
  }
  ~Checker() {
    if (fails) {
      ADD_FAILURE() << ctx << "\n  " << fails << " of " << checked << " checks failed:\n" << msgs.str();
    } else if (std::getenv("PG_TEST_VERBOSE")) {
      std::printf("[ worst err/tol %.3f over %lld checks ] %s\n", worst, static_cast<long long>(checked), ctx.c_str());
    }
  }
};

enum class StatsMode { kFused, kSaved };

// Tolerance of gradient element (r, j) of the reference.
template <class T>
double grad_tol(const pgref::Problem& P, const pgref::Result& R, int64_t r, int64_t j, StatsMode mode,
                double ref_value) {
  const int64_t i = r * P.cols + j;
  const double a = P.alpha, z = P.z[i], m = R.m[r];
  double arg = 0.0;
  if (z != -pgref::kInf) {
    arg = (mode == StatsMode::kFused) ? std::fabs(a * (z - m)) + std::fabs(R.lse_a[r] - (a == 0 ? 0.0 : a * m))
                                      : std::fabs(a * z) + std::fabs(R.lse_a[r]);
  }
  // Options (docs/design.md §2.5): p' enters scaled by the target mass A; the z-loss term
  // 2 lambda lse p adds its own exp error; the softcap's fp32 tanh shifts each exponent by a few
  // ulp of |z| and its chain factor 1 - tanh^2 carries an absolute error of a few ulp.
  const double A = std::max(1.0, R.mass[r]);
  const double zl = 2.0 * P.lambda * std::fabs(R.lse[r]);
  if (P.cap > 0) arg += 8 * std::fabs(P.cap) + 2 * std::fabs(R.lse[r]);
  const double dzc = A * R.p[i] + R.q[i] + zl * R.psoft[i];
  double internal = std::fabs(R.g[r]) * R.slope[i] *
                    (kGradAbs * A + (kRel0 + kArgRel * arg) * A * R.p[i] + 4 * kU32 * R.q[i] +
                     zl * (kGradAbs + (kRel0 + kArgRel * (arg + std::fabs(R.lse[r]))) * R.psoft[i]));
  if (P.cap > 0) internal += std::fabs(R.g[r]) * dzc * 8 * kU32;
  return internal * (1 + DT<T>::u) + 1.0001 * DT<T>::u * std::fabs(ref_value) + DT<T>::abs_floor;
}

inline double loss_row_tol(const pgref::Result& R, int64_t r) {
  if (R.ignored[r]) return 0.0;  // exactly 0 by the contract
  const double A = std::max(1.0, R.mass[r]);
  return kRel0 * (1.0 + A * (std::fabs(R.lse[r]) + std::fabs(R.m[r])) + R.tabs[r] + 2 * std::fabs(R.zloss_row[r]));
}

inline double loss_reduced_tol(const pgref::Problem& P, const pgref::Result& R) {
  double t = 0.0;
  for (int64_t r = 0; r < P.rows; ++r) t += loss_row_tol(R, r);
  t += 4 * kU32 * std::fabs(R.loss_reduced) * (P.red == pgref::Red::kMean ? R.denom : 1.0);
  if (P.red == pgref::Red::kMean && R.denom > 0) t /= R.denom;
  return t;
}

// A gradient buffer: elements [rows x [col_lo, col_hi)] at offset + r*ld + j are written and
// compared with `expect` (a rows x cols matrix) ; every other element must be bitwise `before`.
template <class T, class TolFn>
void check_grad_buffer(Checker& ck, const char* name, const std::vector<T>& got, const std::vector<T>& before,
                       int64_t offset, int64_t ld, int64_t rows, int64_t cols, bool written,
                       const std::vector<double>& expect, TolFn tol, const std::vector<char>* nan_ok = nullptr) {
  EXPECT_EQ(got.size(), before.size());
  for (int64_t i = 0; i < static_cast<int64_t>(got.size()); ++i) {
    const int64_t k = i - offset;
    const int64_t r = k >= 0 ? k / ld : -1, j = k >= 0 ? k % ld : -1;
    const bool in_block = written && k >= 0 && r < rows && j < cols;
    if (!in_block) {
      if (!same_bits(got[i], before[i])) {
        std::ostringstream o;
        o << name << "[" << i << "] (row " << r << ", col " << j << ") outside the output block was modified: "
          << DT<T>::decode(got[i]) << " (was " << DT<T>::decode(before[i]) << ")";
        ck.fail(o.str());
      }
      continue;
    }
    const double ref = expect[r * cols + j];
    std::ostringstream w;
    w << name << "(" << r << "," << j << ")";
    if (is_poison(got[i])) {
      ck.fail(w.str() + " was never written (poison survived)");
      continue;
    }
    ck.value(w.str(), DT<T>::decode(got[i]), ref, tol(r, j, ref), nan_ok && (*nan_ok)[r * cols + j]);
  }
}

inline void check_floats(Checker& ck, const char* name, const std::vector<float>& got, int64_t n_written,
                         const std::vector<double>& ref, const std::vector<double>& tol,
                         const std::vector<char>* skip = nullptr) {
  for (int64_t i = 0; i < static_cast<int64_t>(got.size()); ++i) {
    std::ostringstream w;
    w << name << "[" << i << "]";
    if (i >= n_written) {
      if (!is_poison(got[i])) ck.fail(w.str() + " past the end was modified");
      continue;
    }
    if (skip && (*skip)[i]) continue;
    if (is_poison(got[i])) {
      ck.fail(w.str() + " was never written (poison survived)");
      continue;
    }
    ck.value(w.str(), static_cast<double>(got[i]), ref[i], tol[i]);
  }
}

// Invariants on a gradient block that must hold whatever the reference says (independent formulas).
template <class T>
void check_invariants(Checker& ck, const CaseData<T>& d, const pgref::Result& R, const std::vector<T>& buf,
                      int64_t ld_out, StatsMode mode) {
  const pgref::Problem& P = d.ref;
  const int64_t C = P.cols;
  if (P.lambda != 0.0 || P.cap != 0.0) return;  // the textbook formulas below have neither
  for (int64_t r = 0; r < P.rows; ++r) {
    if (R.ignored[r] || R.nonfinite[r]) continue;
    const double* z = &P.z[r * C];
    const double* q = &R.q[r * C];
    auto got = [&](int64_t j) { return DT<T>::decode(buf[d.c.offset + r * ld_out + j]); };
    auto tol = [&](int64_t j, double ref) { return grad_tol<T>(P, R, r, j, mode, ref); };
    if (P.alpha == 1.0) {  // alpha = 1 is the ordinary softmax cross-entropy gradient
      const std::vector<double> e = pgref::softmax_grad_row(z, q, C, R.g[r]);
      for (int64_t j = 0; j < C; ++j) ck.value("alpha=1 vs softmax grad", got(j), e[j], tol(j, e[j]));
    }
    if (P.alpha == 0.0) {  // alpha = 0: p' uniform over the unmasked classes
      const std::vector<double> e = pgref::uniform_grad_row(z, q, C, R.g[r]);
      for (int64_t j = 0; j < C; ++j) ck.value("alpha=0 vs 1/n - q", got(j), e[j], tol(j, e[j]));
    }
    // sum_j g (p'_j - q_j) = g (1 - sum q) = 0 when q sums to 1 (hard targets; dense targets only
    // approximately after rounding to T). Bounded by the sum of the element tolerances.
    if (!P.dense) {
      double s = 0.0, t = 0.0;
      for (int64_t j = 0; j < C; ++j) {
        s += got(j);
        t += tol(j, R.grad[r * C + j]);
      }
      ck.value("row sum of gradient (row " + std::to_string(r) + ")", s, 0.0, t + 4 * kU32 * std::fabs(R.g[r]));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The ops, driven through a memory policy, and their checks.
// ---------------------------------------------------------------------------------------------
template <class T>
struct FusedOut {
  Status status = Status::kSuccess;
  std::vector<T> buf, before;  // the buffer the gradient lands in (the logits buffer when in place)
  std::vector<T> logits_after; // out of place: the logits buffer after the call (must be unchanged)
  std::vector<float> loss, lse, lse_a;
  std::vector<int32_t> bad_count;  // CUDA backend, cases with bad targets: the counter after the call
  std::vector<float> zl;           // options: the z-loss output
  std::vector<int64_t> argmax;
  std::vector<int32_t> correct;
};

// The option outputs of a case (docs/design.md §2.5), poisoned and handed to the op.
template <class T, class Mem>
void set_option_outputs(Mem& mem, const Case& c, std::vector<float>& zl, std::vector<int64_t>& argmax,
                        std::vector<int32_t>& correct, pg::XentOutputs<T>& out) {
  zl.assign((c.red == Reduction::kNone ? c.rows : 1) + kGuard, poison_value<float>());
  argmax.assign(c.rows + kGuard, poison_value<int64_t>());
  correct.assign(c.rows + kGuard, poison_value<int32_t>());
  if (!c.want_accuracy) return;
  if (c.z_loss != 0.f) out.z_loss = mem.out(zl);
  out.argmax = mem.out(argmax);
  if (c.targets != TargetKind::kDense) out.correct = mem.out(correct);
}
template <class T, class Mem>
void fetch_option_outputs(Mem& mem, std::vector<float>& zl, std::vector<int64_t>& argmax, std::vector<int32_t>& correct,
                          const pg::XentOutputs<T>& out) {
  if (out.z_loss) mem.fetch(zl, out.z_loss);
  if (out.argmax) mem.fetch(argmax, out.argmax);
  if (out.correct) mem.fetch(correct, out.correct);
}

inline int64_t loss_len(const Case& c) { return c.red == Reduction::kNone ? c.rows : 1; }

template <class T, class Tg, class Mem>
FusedOut<T> run_fused(Mem& mem, CaseData<T>& d) {
  const Case& c = d.c;
  FusedOut<T> o;
  std::vector<T> logits = d.logits;
  o.loss.assign(loss_len(c) + kGuard, poison_value<float>());
  o.lse.assign(c.rows + kGuard, poison_value<float>());
  o.lse_a.assign(c.rows + kGuard, poison_value<float>());
  if (!c.in_place) o.buf.assign(c.offset + c.rows * c.ld_out() + kGuard, poison_value<T>());

  T* lg = mem.in(logits);
  pg::XentProblem<T, Tg> p = make_problem<T, Tg>(mem, d, lg);
  pg::Upstream up{c.up_scale, mem.in(d.upv)};
  pg::XentOutputs<T> out;
  float* dloss = c.want_loss ? mem.out(o.loss) : nullptr;
  float* dlse = c.want_lse ? mem.out(o.lse) : nullptr;
  float* dlsea = c.want_lse_a ? mem.out(o.lse_a) : nullptr;
  T* gb = nullptr;
  if (c.want_grad) gb = c.in_place ? lg : mem.out(o.buf);
  out.loss = dloss;
  out.lse = dlse;
  out.lse_alpha = dlsea;
  out.dlogits = gb ? gb + c.offset : nullptr;
  out.ld_dlogits = c.in_place ? 0 : c.ld_out();
  int32_t* dbad = nullptr;
  if (!c.bad_target_rows.empty()) {
    o.bad_count.assign(1, 0);
    dbad = mem.in(o.bad_count);
    p.bad_target_count = dbad;
  }
  set_option_outputs<T>(mem, c, o.zl, o.argmax, o.correct, out);
  const size_t wsb = pg::xent_workspace_bytes(c.rows, c.red);
  void* ws = mem.workspace(wsb);
  o.status = pg::xent_forward_backward(Mem::backend, p, up, out, ws, wsb, mem.stream());
  fetch_option_outputs<T>(mem, o.zl, o.argmax, o.correct, out);
  if (dbad) mem.fetch(o.bad_count, dbad);
  if (dloss) mem.fetch(o.loss, dloss);
  if (dlse) mem.fetch(o.lse, dlse);
  if (dlsea) mem.fetch(o.lse_a, dlsea);
  mem.fetch(logits, lg);
  if (c.in_place) {
    o.before = d.logits;
    o.buf = logits;
  } else {
    if (gb) mem.fetch(o.buf, gb);
    o.before.assign(o.buf.size(), poison_value<T>());
    o.logits_after = logits;
  }
  return o;
}

template <class T>
void check_stats_outputs(Checker& ck, const CaseData<T>& d, const pgref::Result& R, const std::vector<float>& lse,
                         const std::vector<float>& lse_a, bool want_lse, bool want_lse_a) {
  const pgref::Problem& P = d.ref;
  std::vector<double> tl(P.rows), ta(P.rows);
  for (int64_t r = 0; r < P.rows; ++r) {
    tl[r] = kRel0 * (1 + std::fabs(R.lse[r]) + std::fabs(R.m[r]));
    ta[r] = kRel0 * (1 + std::fabs(R.lse_a[r]) + std::fabs(P.alpha * R.m[r]));
  }
  check_floats(ck, "lse", lse, want_lse ? P.rows : 0, R.lse, tl, &R.bad);
  check_floats(ck, "lse_alpha", lse_a, want_lse_a ? P.rows : 0, R.lse_a, ta, &R.bad);
}

template <class T>
void check_loss_output(Checker& ck, const CaseData<T>& d, const pgref::Result& R, const std::vector<float>& loss,
                       bool written) {
  const pgref::Problem& P = d.ref;
  if (P.red == pgref::Red::kNone) {
    std::vector<double> tol(P.rows);
    for (int64_t r = 0; r < P.rows; ++r) tol[r] = loss_row_tol(R, r);
    check_floats(ck, "loss", loss, written ? P.rows : 0, R.loss_row, tol);
  } else {
    check_floats(ck, "loss(reduced)", loss, written ? 1 : 0, {R.loss_reduced}, {loss_reduced_tol(P, R)});
  }
}

// The z-loss, argmax and correct outputs: every element written when asked for, untouched past the
// end and when not asked for. argmax may name any column whose value is the row's maximum within
// the fp32 rounding of a softcap (the reference's first maximum otherwise); correct must agree with
// the argmax written.
template <class T>
void check_option_outputs(Checker& ck, const CaseData<T>& d, const pgref::Result& R, const std::vector<float>& zl,
                          const std::vector<int64_t>& argmax, const std::vector<int32_t>& correct) {
  const Case& c = d.c;
  const pgref::Problem& P = d.ref;
  const bool want_zl = c.want_accuracy && c.z_loss != 0.f;
  if (P.red == pgref::Red::kNone) {
    std::vector<double> tol(P.rows);
    for (int64_t r = 0; r < P.rows; ++r) tol[r] = kRel0 * (1 + 2 * std::fabs(R.zloss_row[r]));
    check_floats(ck, "z_loss", zl, want_zl ? P.rows : 0, R.zloss_row, tol, &R.bad);
  } else {
    double t = 0;
    for (int64_t r = 0; r < P.rows; ++r) t += kRel0 * (1 + 2 * std::fabs(R.zloss_row[r]));
    if (P.red == pgref::Red::kMean && R.denom > 0) t /= R.denom;
    check_floats(ck, "z_loss(reduced)", zl, want_zl ? 1 : 0, {R.zloss_reduced}, {t});
  }
  const bool want_am = c.want_accuracy, want_cor = c.want_accuracy && c.targets != TargetKind::kDense;
  for (int64_t i = 0; i < static_cast<int64_t>(argmax.size()); ++i) {
    const std::string w = "argmax[" + std::to_string(i) + "]";
    if (!want_am || i >= P.rows) {
      if (!same_bits(argmax[i], poison_value<int64_t>())) ck.fail(w + " outside the output was modified");
      continue;
    }
    ++ck.checked;
    const int64_t a = argmax[i], e = R.argmax[i];
    bool ok = a == e;
    if (!ok && P.cap > 0 && a >= 0 && a < P.cols && !R.nonfinite[i]) {
      const double za = pgref::capped_logit(P, P.z[i * P.cols + a]);
      ok = std::fabs(za - R.m[i]) <= 4 * kU32 * (1 + std::fabs(R.m[i])) && a < e + P.cols;
    }
    if (R.nonfinite[i]) ok = a >= 0 && a < P.cols;  // NaN rows: any column (the loss is NaN)
    if (!ok) ck.fail(w + ": got " + std::to_string(a) + ", expected " + std::to_string(e));
  }
  for (int64_t i = 0; i < static_cast<int64_t>(correct.size()); ++i) {
    const std::string w = "correct[" + std::to_string(i) + "]";
    if (!want_cor || i >= P.rows) {
      if (!same_bits(correct[i], poison_value<int32_t>())) ck.fail(w + " outside the output was modified");
      continue;
    }
    ++ck.checked;
    const int32_t e = !R.ignored[i] && argmax[i] == P.y[i] ? 1 : 0;
    if (correct[i] != e || (!R.nonfinite[i] && P.cap == 0 && correct[i] != R.correct[i]))
      ck.fail(w + ": got " + std::to_string(correct[i]) + ", expected " + std::to_string(e));
  }
}

// Checks every output of a forward+backward call: status, gradient (every element of the buffer),
// invariants, untouched input (out of place), loss, lse, lse_alpha, bad-target counter.
template <class T>
void check_fused_result(Checker& ck, const CaseData<T>& d, const pgref::Result& R, const FusedOut<T>& o) {
  const Case& c = d.c;
  if (o.status != Status::kSuccess) {
    ck.fail(std::string("status ") + pg::status_string(o.status) + ": " + pg::last_error_message());
    return;
  }
  const int64_t ld_out = c.ld_out();
  check_grad_buffer(ck, "dlogits", o.buf, o.before, c.offset, ld_out, c.rows, c.cols, c.want_grad, R.grad,
                    [&](int64_t r, int64_t j, double ref) { return grad_tol<T>(d.ref, R, r, j, StatsMode::kFused, ref); },
                    &R.nan_ok);
  if (c.want_grad) check_invariants(ck, d, R, o.buf, ld_out, StatsMode::kFused);
  if (!c.in_place) {
    for (size_t i = 0; i < d.logits.size(); ++i) {
      if (!same_bits(o.logits_after[i], d.logits[i])) {
        ck.fail("out-of-place call modified the logits buffer at element " + std::to_string(i));
        break;
      }
    }
  }
  check_loss_output(ck, d, R, o.loss, c.want_loss);
  check_stats_outputs(ck, d, R, o.lse, o.lse_a, c.want_lse, c.want_lse_a);
  check_option_outputs(ck, d, R, o.zl, o.argmax, o.correct);
  if (!c.bad_target_rows.empty()) {
    ck.value("bad_target_count", o.bad_count.empty() ? -1.0 : static_cast<double>(o.bad_count[0]),
             static_cast<double>(c.bad_target_rows.size()), 0.0);
  }
}

// Forward+backward on one case. Optionally runs twice and demands bitwise equality (determinism).
template <class T, class Mem>
void check_fused_case(const Case& c, bool twice = false) {
  CaseData<T> d = make_case<T>(c);
  const pgref::Result R = pgref::compute(d.ref);
  with_targets<T>(c.targets, [&](auto tag) {
    using Tg = decltype(tag);
    Checker ck(std::string("forward_backward ") + DT<T>::name + " " + c.str());
    Mem mem;
    FusedOut<T> o = run_fused<T, Tg>(mem, d);
    check_fused_result(ck, d, R, o);
    if (twice) {
      Mem mem2;
      FusedOut<T> o2 = run_fused<T, Tg>(mem2, d);
      bool same = o2.status == o.status && o2.buf.size() == o.buf.size() &&
                  std::memcmp(o2.buf.data(), o.buf.data(), o.buf.size() * sizeof(T)) == 0 &&
                  std::memcmp(o2.loss.data(), o.loss.data(), o.loss.size() * sizeof(float)) == 0 &&
                  std::memcmp(o2.lse.data(), o.lse.data(), o.lse.size() * sizeof(float)) == 0 &&
                  std::memcmp(o2.lse_a.data(), o.lse_a.data(), o.lse_a.size() * sizeof(float)) == 0;
      if (!same) ck.fail("two identical runs differ bitwise (determinism)");
    }
  });
}

// Backward: with a saved lse_alpha (taken from a forward pass of the library) or without; compared
// with the reference, and (without saved statistics) bitwise with the fused op when `bitwise_fused`.
template <class T, class Mem>
void check_backward_case(const Case& c0, bool saved, bool bitwise_fused) {
  Case c = c0;
  CaseData<T> d = make_case<T>(c);
  const pgref::Result R = pgref::compute(d.ref);
  with_targets<T>(c.targets, [&](auto tag) {
    using Tg = decltype(tag);
    Checker ck(std::string(saved ? "backward(saved lse_alpha) " : "backward(no saved stats) ") + DT<T>::name + " " +
               c.str());
    Case cf = c;  // the forward pass, out of place, for the saved statistics / the fused gradient
    cf.in_place = false;
    cf.want_grad = true;
    CaseData<T> df = d;
    df.c = cf;
    Mem memf;
    FusedOut<T> f = run_fused<T, Tg>(memf, df);
    if (f.status != Status::kSuccess) {
      ck.fail(std::string("forward status ") + pg::status_string(f.status) + ": " + pg::last_error_message());
      return;
    }
    std::vector<float> saved_lse_a(f.lse_a.begin(), f.lse_a.begin() + c.rows);

    Mem mem;
    std::vector<T> logits = d.logits;
    std::vector<T> buf;
    if (!c.in_place) buf.assign(c.offset + c.rows * c.ld_out() + kGuard, poison_value<T>());
    T* lg = mem.in(logits);
    pg::XentProblem<T, Tg> p = make_problem<T, Tg>(mem, d, lg);
    pg::Upstream up{c.up_scale, mem.in(d.upv)};
    const float* sl = saved ? mem.in(saved_lse_a) : nullptr;
    T* gb = c.in_place ? lg : mem.out(buf);
    const size_t wsb = pg::xent_workspace_bytes(c.rows, c.red);
    void* ws = mem.workspace(wsb);
    const Status st = pg::xent_backward(Mem::backend, p, up, sl, gb + c.offset, c.in_place ? 0 : c.ld_out(), ws, wsb,
                                        mem.stream());
    mem.fetch(logits, lg);
    if (!c.in_place) mem.fetch(buf, gb);
    if (st != Status::kSuccess) {
      ck.fail(std::string("status ") + pg::status_string(st) + ": " + pg::last_error_message());
      return;
    }
    const std::vector<T>& got = c.in_place ? logits : buf;
    const std::vector<T> before = c.in_place ? d.logits : std::vector<T>(buf.size(), poison_value<T>());
    const StatsMode mode = saved ? StatsMode::kSaved : StatsMode::kFused;
    check_grad_buffer(ck, "dlogits", got, before, c.offset, c.ld_out(), c.rows, c.cols, true, R.grad,
                      [&](int64_t r, int64_t j, double ref) { return grad_tol<T>(d.ref, R, r, j, mode, ref); }, &R.nan_ok);
    check_invariants(ck, d, R, got, c.ld_out(), mode);
    if (!saved && bitwise_fused) {
      for (int64_t r = 0; r < c.rows; ++r)
        for (int64_t j = 0; j < c.cols; ++j)
          if (!same_bits(got[c.offset + r * c.ld_out() + j], f.buf[cf.offset + r * cf.ld_out() + j])) {
            ck.fail("backward without saved stats differs bitwise from forward_backward at (" + std::to_string(r) +
                    "," + std::to_string(j) + ")");
            r = c.rows;
            break;
          }
    }
  });
}

// Split form: k column shards of the given widths: shard_stats on each, merge_stats, shard_apply on
// each (every shard also writes loss, lse, lse_alpha: all must agree with the unsplit reference).
template <class T, class Mem>
void check_shard_case(const Case& c, const std::vector<int64_t>& widths) {
  CaseData<T> d = make_case<T>(c);
  const pgref::Result R = pgref::compute(d.ref);
  const int64_t k = static_cast<int64_t>(widths.size());
  with_targets<T>(c.targets, [&](auto tag) {
    using Tg = decltype(tag);
    std::ostringstream wn;
    for (auto w : widths) wn << w << " ";
    Checker ck(std::string("shards[ ") + wn.str() + "] " + DT<T>::name + " " + c.str());
    Mem mem;
    std::vector<T> logits = d.logits;
    std::vector<T> buf;
    if (!c.in_place) buf.assign(c.offset + c.rows * c.ld_out() + kGuard, poison_value<T>());
    std::vector<RowStats> parts(k * c.rows), merged(c.rows);
    T* lg = mem.in(logits);
    T* gb = c.in_place ? lg : mem.out(buf);
    RowStats* dparts = mem.out(parts);
    RowStats* dmerged = mem.out(merged);
    pg::Upstream up{c.up_scale, mem.in(d.upv)};
    auto shard_problem = [&](int64_t off, int64_t w) { return make_problem<T, Tg>(mem, d, lg, off, w); };
    int64_t off = 0;
    for (int64_t s = 0; s < k; ++s) {
      const Status st = pg::xent_shard_stats(Mem::backend, shard_problem(off, widths[s]), dparts + s * c.rows, mem.stream());
      if (st != Status::kSuccess) ck.fail(std::string("shard_stats status ") + pg::status_string(st) + ": " + pg::last_error_message());
      off += widths[s];
    }
    EXPECT_EQ(off, c.cols);
    Status st = pg::xent_merge_stats(Mem::backend, dparts, k, c.rows, c.alpha, dmerged, mem.stream());
    if (st != Status::kSuccess) ck.fail(std::string("merge_stats status ") + pg::status_string(st) + ": " + pg::last_error_message());
    std::vector<std::vector<float>> loss(k), lse(k), lse_a(k), zl(k);
    std::vector<std::vector<int64_t>> am(k);
    std::vector<std::vector<int32_t>> cor(k);
    std::vector<float*> dloss(k), dlse(k), dlsea(k);
    const size_t wsb = pg::xent_workspace_bytes(c.rows, c.red);
    off = 0;
    for (int64_t s = 0; s < k; ++s) {
      loss[s].assign(loss_len(c) + kGuard, poison_value<float>());
      lse[s].assign(c.rows + kGuard, poison_value<float>());
      lse_a[s].assign(c.rows + kGuard, poison_value<float>());
      dloss[s] = mem.out(loss[s]);
      dlse[s] = mem.out(lse[s]);
      dlsea[s] = mem.out(lse_a[s]);
      pg::XentOutputs<T> o;
      o.loss = dloss[s];
      o.lse = dlse[s];
      o.lse_alpha = dlsea[s];
      o.dlogits = gb + c.offset + off;
      o.ld_dlogits = c.in_place ? 0 : c.ld_out();
      set_option_outputs<T>(mem, c, zl[s], am[s], cor[s], o);
      void* ws = mem.workspace(wsb);
      st = pg::xent_shard_apply(Mem::backend, shard_problem(off, widths[s]), dmerged, up, o, ws, wsb, mem.stream());
      if (st != Status::kSuccess) ck.fail(std::string("shard_apply status ") + pg::status_string(st) + ": " + pg::last_error_message());
      fetch_option_outputs<T>(mem, zl[s], am[s], cor[s], o);
      mem.fetch(loss[s], dloss[s]);
      mem.fetch(lse[s], dlse[s]);
      mem.fetch(lse_a[s], dlsea[s]);
      off += widths[s];
    }
    mem.fetch(logits, lg);
    if (!c.in_place) mem.fetch(buf, gb);
    const std::vector<T>& got = c.in_place ? logits : buf;
    const std::vector<T> before = c.in_place ? d.logits : std::vector<T>(buf.size(), poison_value<T>());
    check_grad_buffer(ck, "dlogits", got, before, c.offset, c.ld_out(), c.rows, c.cols, true, R.grad,
                      [&](int64_t r, int64_t j, double ref) { return grad_tol<T>(d.ref, R, r, j, StatsMode::kFused, ref); }, &R.nan_ok);
    for (int64_t s = 0; s < k; ++s) {
      check_loss_output(ck, d, R, loss[s], true);
      check_stats_outputs(ck, d, R, lse[s], lse_a[s], true, true);
      check_option_outputs(ck, d, R, zl[s], am[s], cor[s]);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Hook form. The incoming gradient G = s_r (p - q) is built in double from a probability matrix p
// and rounded to T; the reference applies docs/design.md §2.2 to the decoded G (p = clamp(G/s + q)).
// ---------------------------------------------------------------------------------------------
struct HookCase {
  int64_t rows = 6, cols = 10;
  int64_t ld_pad = 0;
  int offset = 0;
  float alpha = 0.5f, eps = 0.f;
  TargetKind targets = TargetKind::kInt32;
  bool in_place = false;
  float scale = 2.f;            // GradScale::scale
  bool row_scale = false;       // per-row scales (row 1: 0, row 2: negative -> NaN row when rows > 2)
  bool special_rows = false;    // one ignored row, one zero-probability class, one clamp below 0 / above 1
  double logit_scale = 3.0;
  uint64_t seed = 7;
  std::string str() const {
    std::ostringstream o;
    o << "hook rows=" << rows << " cols=" << cols << " ld_pad=" << ld_pad << " off=" << offset << " alpha=" << alpha
      << " eps=" << eps << " tg=" << target_name(targets) << (in_place ? " inplace" : "") << " scale=" << scale
      << (row_scale ? " row_scale" : "") << (special_rows ? " special" : "") << " seed=" << seed;
    return o.str();
  }
};

// `against_logits_form`: also compare the output with the logits-form reference gradient s (p'(z) - q)
// where p = softmax(z) exactly (only meaningful for fp32 and moderate logits).
template <class T, class Mem>
void check_hook_case(const HookCase& h, bool against_logits_form) {
  Case c;
  c.rows = h.rows;
  c.cols = h.cols;
  c.ld_pad = h.ld_pad;
  c.offset = h.offset;
  c.alpha = 1.f;  // p = softmax(z)
  c.eps = h.eps;
  c.targets = h.targets;
  c.in_place = h.in_place;
  c.logit_scale = h.logit_scale;
  c.peak_frac = 0.2;
  c.red = Reduction::kSum;
  c.seed = h.seed;
  CaseData<T> d = make_case<T>(c);
  const int64_t Rn = h.rows, C = h.cols;
  if (h.special_rows && h.targets != TargetKind::kDense && Rn > 3) {
    d.ref.y[3] = c.ignore_index;
    if (!d.y32.empty()) d.y32[3] = static_cast<int32_t>(c.ignore_index);
    if (!d.y64.empty()) d.y64[3] = c.ignore_index;
  }
  pgref::Problem Pa = d.ref;  // p from the logits: the alpha = 1 reference
  const pgref::Result P1 = pgref::compute(Pa);
  pgref::Problem Pz = d.ref;  // the logits-form PGT gradient with the hook's alpha and g = s_r
  Pz.alpha = h.alpha;
  const pgref::Result Rz = pgref::compute(Pz);

  std::vector<float> rs(Rn, 1.f);
  for (int64_t r = 0; r < Rn; ++r) rs[r] = h.row_scale ? static_cast<float>(std::ldexp(1.0, static_cast<int>(r % 5) - 2)) : 1.f;
  if (h.row_scale && Rn > 2) {
    rs[1] = 0.f;
    rs[2] = -1.f;
  }
  std::vector<double> s(Rn);
  for (int64_t r = 0; r < Rn; ++r) s[r] = static_cast<double>(h.scale) * static_cast<double>(rs[r]);

  // Probabilities and the incoming gradient. Special rows: row 0 gets a class of probability exactly 0
  // (masked) when no label smoothing; row 4 gets G below -s*q (clamped to p = 0) and above s(1-q)
  // (clamped to 1) for columns with q = 0.
  std::vector<double> p(P1.p);
  std::vector<T> G(h.offset + Rn * c.ld() + kGuard, poison_value<T>());
  std::vector<double> Gd(Rn * C, 0.0);
  for (int64_t r = 0; r < Rn; ++r) {
    for (int64_t j = 0; j < C; ++j) {
      const int64_t i = r * C + j;
      double gv = s[r] * (p[i] - P1.q[i]);
      if (!std::isfinite(gv)) gv = 0.0;  // rows with s < 0 still get a finite G
      if (h.special_rows && h.eps == 0.f && C > 2) {
        if (r == 0 && j == C - 1 && P1.q[i] == 0.0) gv = 0.0;                  // p = 0 exactly: masked
        if (r == 4 && j == 0 && P1.q[i] == 0.0) gv = -0.25 * std::fabs(s[r]);  // p = -0.25 -> 0
        if (r == 4 && j == 1 && P1.q[i] == 0.0) gv = 1.5 * std::fabs(s[r]);    // p = 1.5 -> 1
      }
      const T e = DT<T>::encode(gv);
      G[h.offset + r * c.ld() + j] = e;
      Gd[i] = DT<T>::decode(e);
    }
  }
  // Reference from the decoded G, and per-element tolerances.
  std::vector<double> ref(Rn * C), tol(Rn * C);
  for (int64_t r = 0; r < Rn; ++r) {
    const bool ignored = !d.ref.dense && d.ref.y[r] == d.ref.ignore_index;
    std::vector<double> pr, pp;
    const std::vector<double> o = pgref::hook_row(&Gd[r * C], &P1.q[r * C], C, s[r], h.alpha, ignored, &pr, &pp);
    double ebar = 0.0, pmax = 0.0, S = 0.0;
    std::vector<double> e(C, 0.0);
    if (!pr.empty()) {
      for (int64_t j = 0; j < C; ++j) {
        const double q = P1.q[r * C + j];
        if (pr[j] > 0) e[j] = 4 * kU32 * (std::fabs(Gd[r * C + j] / s[r]) + q + pr[j]) / pr[j];
        ebar += pp[j] * e[j];
        pmax = std::max(pmax, pr[j]);
      }
      for (int64_t j = 0; j < C; ++j)
        if (pr[j] > 0) S += std::pow(pr[j] / pmax, h.alpha);
    }
    for (int64_t j = 0; j < C; ++j) {
      const int64_t i = r * C + j;
      ref[i] = o[j];
      double t = 0.0;
      if (!pr.empty()) {
        const double arg = pr[j] > 0 ? std::fabs(h.alpha * std::log(pr[j] / pmax)) + std::log(S) +
                                           std::fabs(h.alpha * std::log(pr[j]))
                                     : 0.0;
        const double rel = kRel0 + h.alpha * (e[j] + ebar) + kArgRel * arg;
        t = std::fabs(s[r]) * (kGradAbs + rel * pp[j] + 4 * kU32 * P1.q[i]);
      }
      tol[i] = t * (1 + DT<T>::u) + 1.0001 * DT<T>::u * std::fabs(ref[i]) + DT<T>::abs_floor;
    }
  }

  with_targets<T>(h.targets, [&](auto tag) {
    using Tg = decltype(tag);
    Checker ck(std::string(DT<T>::name) + " " + h.str());
    Mem mem;
    std::vector<T> in = G;
    std::vector<T> buf;
    if (!h.in_place) buf.assign(h.offset + Rn * c.ld() + kGuard, poison_value<T>());
    T* gi = mem.in(in);
    T* go = h.in_place ? gi : mem.out(buf);
    pg::XentProblem<T, Tg> p;
    p.logits = gi + h.offset;
    p.rows = Rn;
    p.cols = C;
    p.ld = c.ld();
    p.targets = make_targets<T, Tg>(mem, d);
    p.alpha = h.alpha;
    p.label_smoothing = h.eps;
    pg::GradScale gs{h.scale, h.row_scale ? mem.in(rs) : nullptr};
    const Status st = pg::xent_hook(Mem::backend, p, gs, go + h.offset, 0, mem.stream());
    mem.fetch(in, gi);
    if (!h.in_place) mem.fetch(buf, go);
    if (st != Status::kSuccess) {
      ck.fail(std::string("status ") + pg::status_string(st) + ": " + pg::last_error_message());
      return;
    }
    const std::vector<T>& got = h.in_place ? in : buf;
    const std::vector<T> before = h.in_place ? G : std::vector<T>(buf.size(), poison_value<T>());
    check_grad_buffer(ck, "hook_out", got, before, h.offset, c.ld(), Rn, C, true, ref,
                      [&](int64_t r, int64_t j, double) { return tol[r * C + j]; });
    if (against_logits_form) {
      for (int64_t r = 0; r < Rn; ++r) {
        if (!(s[r] > 0) || (!d.ref.dense && d.ref.y[r] == d.ref.ignore_index)) continue;
        for (int64_t j = 0; j < C; ++j) {
          const int64_t i = r * C + j;
          // The logits form with g = s_r; the hook loses what the rounding of G hides, hence the
          // hook's tolerance (built from the recovered p) plus one rounding of G relative to s.
          const double e = s[r] * (Rz.p[i] - Rz.q[i]);
          ck.value("hook vs logits form (" + std::to_string(r) + "," + std::to_string(j) + ")",
                   DT<T>::decode(got[h.offset + r * c.ld() + j]), e, 2 * tol[i]);
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Case lists shared by the host and device suites.
// ---------------------------------------------------------------------------------------------
inline const std::vector<float>& all_alphas() {
  static const std::vector<float> a = {0.f, 0.05f, 0.25f, 0.3f, 0.5f, 1.f, 2.f};
  return a;
}

// Small C: every alpha x eps x reduction x target kind; layout and upstream rotate with the index.
inline std::vector<Case> cross_cases() {
  std::vector<Case> v;
  const int64_t cols[] = {1, 2, 7, 10};
  const Reduction reds[] = {Reduction::kNone, Reduction::kMean, Reduction::kSum};
  const TargetKind tks[] = {TargetKind::kInt32, TargetKind::kInt64, TargetKind::kDense};
  uint64_t i = 0;
  for (int64_t C : cols)
    for (float a : all_alphas())
      for (float eps : {0.f, 0.1f})
        for (Reduction red : reds)
          for (TargetKind tk : tks) {
            Case c;
            c.cols = C;
            c.rows = (i % 3 == 0) ? 1 : static_cast<int64_t>(2 + i % 6);
            c.alpha = a;
            c.eps = eps;
            c.red = red;
            c.targets = tk;
            c.in_place = (i % 2) == 1;
            c.ld_pad = (i % 4 == 2) ? 3 : 0;
            c.out_ld_pad = (i % 5 == 1) ? 2 : 0;
            c.offset = static_cast<int>(i % 3 == 1);
            c.up = static_cast<UpMode>(i % 3);
            c.up_scale = (i % 7 == 3) ? 128.f : 1.f;
            c.ignore_frac = (i % 6 == 4) ? 0.3 : 0.0;  // with ld padding / offsets: ignored rows stay in bounds
            c.seed = 1000 + i;
            v.push_back(c);
            ++i;
          }
  return v;
}

// The vocabulary sizes, rows kept small for the big ones.
inline std::vector<Case> shape_cases() {
  std::vector<Case> v;
  const int64_t cols[] = {1000, 1023, 1024, 1025, 32000, 50257, 128256};
  const TargetKind tks[] = {TargetKind::kInt32, TargetKind::kInt64, TargetKind::kDense};
  const Reduction reds[] = {Reduction::kMean, Reduction::kNone, Reduction::kSum};
  uint64_t i = 0;
  for (int64_t C : cols) {
    const bool big = C >= 32000;
    for (int k = 0; k < 4; ++k, ++i) {
      Case c;
      c.cols = C;
      c.rows = big ? (k % 3) + 1 : (k == 0 ? 1 : (k == 1 ? 3 : 17));
      c.alpha = all_alphas()[(i * 3 + 1) % all_alphas().size()];
      c.eps = (k % 2) ? 0.1f : 0.f;
      c.red = reds[(i + k) % 3];
      c.targets = tks[(i + 2 * k) % 3];
      c.in_place = (k % 2) == 0;
      c.ld_pad = (k == 1 || k == 2) ? 5 : 0;
      c.out_ld_pad = (k == 3) ? 8 : 0;
      c.offset = (k == 2 || k == 3) ? 1 : 0;
      c.up = static_cast<UpMode>((i + k) % 3);
      c.logit_scale = (k == 3) ? 12.0 : 4.0;
      c.ignore_frac = (k == 2) ? 0.4 : 0.0;
      c.mask_frac = (k == 1) ? 0.01 : 0.0;
      c.seed = 2000 + i;
      v.push_back(c);
    }
  }
  return v;
}

// Edge semantics: masked classes, non-finite rows, ignored rows, upstream, large/shifted logits.
inline std::vector<Case> special_cases() {
  std::vector<Case> v;
  uint64_t seed = 3000;
  // -inf masked logits, every alpha (alpha = 0 included: uniform over the unmasked classes).
  for (float a : all_alphas())
    for (float eps : {0.f, 0.1f}) {
      Case c;
      c.rows = 9;
      c.cols = 37;
      c.alpha = a;
      c.eps = eps;
      c.mask_frac = 0.3;
      c.target_on_masked = (a == 0.5f);
      c.red = Reduction::kNone;
      c.targets = (a == 1.f) ? TargetKind::kDense : TargetKind::kInt64;
      c.seed = seed++;
      v.push_back(c);
    }
  // NaN and +inf rows: that row's loss and gradient NaN, other rows right.
  for (Reduction red : {Reduction::kNone, Reduction::kMean, Reduction::kSum})
    for (float a : {0.f, 0.5f, 1.f, 2.f}) {
      Case c;
      c.rows = 6;
      c.cols = 1500;  // more than one host chunk
      c.alpha = a;
      c.red = red;
      c.nan_rows = {1};
      c.inf_rows = {4};
      c.in_place = (a == 0.5f);
      c.targets = (a == 2.f) ? TargetKind::kDense : TargetKind::kInt32;
      c.seed = seed++;
      v.push_back(c);
    }
  // A NaN row mixed with masked logits.
  {
    Case c;
    c.rows = 5;
    c.cols = 64;
    c.mask_frac = 0.2;
    c.nan_rows = {0, 3};
    c.red = Reduction::kNone;
    c.seed = seed++;
    v.push_back(c);
  }
  // Ignored rows, every reduction; an all-ignored batch (kMean: loss 0, gradient 0).
  for (Reduction red : {Reduction::kNone, Reduction::kMean, Reduction::kSum}) {
    for (TargetKind tk : {TargetKind::kInt32, TargetKind::kInt64}) {
      Case c;
      c.rows = 12;
      c.cols = 33;
      c.red = red;
      c.targets = tk;
      c.ignore_frac = 0.4;
      c.ignore_index = (tk == TargetKind::kInt32) ? -100 : 5;  // an in-range ignore_index works too
      c.alpha = 0.25f;
      c.eps = 0.1f;
      c.up = UpMode::kPerRow;
      c.seed = seed++;
      v.push_back(c);
      Case a = c;
      a.all_ignored = true;
      a.seed = seed++;
      v.push_back(a);
    }
  }
  // Upstream: scalar and per-row values with a non-unit scale; unrequested outputs stay untouched.
  for (Reduction red : {Reduction::kNone, Reduction::kMean, Reduction::kSum})
    for (UpMode up : {UpMode::kScalar, UpMode::kPerRow}) {
      Case c;
      c.rows = 7;
      c.cols = 300;
      c.red = red;
      c.up = up;
      c.up_scale = 0.125f;
      c.alpha = 0.3f;
      c.want_lse = (up == UpMode::kScalar);
      c.want_lse_a = (red != Reduction::kSum);
      c.want_loss = (red != Reduction::kMean || up == UpMode::kPerRow);
      c.seed = seed++;
      v.push_back(c);
    }
  // Only statistics (no gradient) and only gradient.
  {
    Case c;
    c.rows = 5;
    c.cols = 100;
    c.want_grad = false;
    c.alpha = 2.f;
    c.seed = seed++;
    v.push_back(c);
    c.want_grad = true;
    c.want_loss = c.want_lse = c.want_lse_a = false;
    c.red = Reduction::kMean;
    c.seed = seed++;
    v.push_back(c);
  }
  // Large and shifted logits (the max subtraction matters; p_y -> 1 cancellation at the target).
  for (float a : {0.05f, 1.f, 2.f}) {
    Case c;
    c.rows = 8;
    c.cols = 513;
    c.alpha = a;
    c.logit_scale = 30.0;
    c.logit_shift = 200.0;
    c.peak_frac = 0.6;
    c.red = Reduction::kNone;
    c.seed = seed++;
    v.push_back(c);
    Case n = c;
    n.logit_shift = -500.0;
    n.eps = 0.1f;
    n.in_place = true;
    n.seed = seed++;
    v.push_back(n);
  }
  return v;
}

// Cases for the backward op and the split form (a representative subset of the above).
inline std::vector<Case> backward_cases() {
  std::vector<Case> v;
  uint64_t seed = 4000;
  const int64_t cols[] = {1, 7, 1025, 50257};
  const TargetKind tks[] = {TargetKind::kInt32, TargetKind::kInt64, TargetKind::kDense};
  const Reduction reds[] = {Reduction::kNone, Reduction::kMean, Reduction::kSum};
  int i = 0;
  for (int64_t C : cols)
    for (float a : {0.f, 0.3f, 1.f, 2.f}) {
      Case c;
      c.cols = C;
      c.rows = C > 5000 ? 2 : 5;
      c.alpha = a;
      c.eps = (i % 2) ? 0.1f : 0.f;
      c.red = reds[i % 3];
      c.targets = tks[(i / 3) % 3];
      c.in_place = (i % 2) == 0;
      c.ld_pad = (i % 3 == 1) ? 4 : 0;
      c.offset = (i % 4 == 3);
      c.up = static_cast<UpMode>(i % 3);
      c.mask_frac = (i % 5 == 2) ? 0.2 : 0.0;
      c.ignore_frac = (i % 4 == 1) ? 0.3 : 0.0;
      c.seed = seed++;
      v.push_back(c);
      ++i;
    }
  Case big;
  big.cols = 2000;
  big.rows = 6;
  big.alpha = 0.5f;
  big.logit_shift = 300.0;  // large |alpha z|: the saved-lse_alpha path's precision limit
  big.logit_scale = 10.0;
  big.seed = seed++;
  v.push_back(big);
  return v;
}

// Shard layouts (unequal widths that sum to C), k = 1..4.
// The options of docs/design.md §2.5, alone and combined (weights + smoothing + z-loss + softcap),
// over every target kind, reduction and alpha in {0, 0.3, 1}, in place and out of place, with
// ignored rows, the accuracy outputs, and dense rows whose mass is not 1 (2, 0.5, or all zeros).
inline std::vector<Case> option_cases() {
  std::vector<Case> v;
  const TargetKind tks[] = {TargetKind::kInt32, TargetKind::kInt64, TargetKind::kDense};
  const Reduction reds[] = {Reduction::kNone, Reduction::kMean, Reduction::kSum};
  const float alphas[] = {0.f, 0.3f, 1.f};
  struct Opt {
    bool w;
    float zl, cap, eps;
  };
  const Opt opts[] = {{true, 0.f, 0.f, 0.f},    {true, 0.f, 0.f, 0.1f}, {false, 1e-2f, 0.f, 0.f},
                      {false, 0.f, 5.f, 0.f},   {false, 0.f, 0.f, 0.f}, {true, 1e-3f, 3.f, 0.1f},
                      {true, 0.5f, 30.f, 0.2f}};
  uint64_t seed = 9000;
  int i = 0;
  for (int64_t C : {7, 300, 2100})
    for (const Opt& o : opts)
      for (TargetKind tk : tks) {
        Case c;
        c.cols = C;
        c.rows = C > 1000 ? 5 : 9;
        c.targets = tk;
        c.red = reds[i % 3];
        c.alpha = alphas[(i / 3) % 3];
        c.weights = o.w;
        c.z_loss = o.zl;
        c.softcap = o.cap;
        c.eps = o.eps;
        c.want_accuracy = (i % 4) != 3;
        c.in_place = (i % 2) == 1;
        c.ld_pad = (i % 5 == 2) ? 3 : 0;
        c.offset = (i % 4) == 1;
        c.up = static_cast<UpMode>(i % 3);
        c.ignore_frac = (i % 3 == 1) ? 0.3 : 0.0;
        c.mask_frac = (i % 7 == 4) ? 0.1 : 0.0;
        c.logit_scale = (i % 2) ? 4.0 : 12.0;  // large enough for the softcap to bend the logits
        if (tk == TargetKind::kDense) c.dense_mass = (i % 3 == 0) ? 2.0 : ((i % 3 == 1) ? 0.5 : 1.0);
        c.seed = seed++;
        v.push_back(c);
        ++i;
      }
  // Dense rows of zeros (PyTorch: loss 0, gradient 0), with and without options.
  for (bool w : {false, true}) {
    Case c;
    c.cols = 33;
    c.rows = 3;
    c.targets = TargetKind::kDense;
    c.dense_mass = 0.0;
    c.weights = w;
    c.red = w ? Reduction::kMean : Reduction::kNone;
    c.alpha = 0.3f;
    c.want_accuracy = true;
    c.seed = seed++;
    v.push_back(c);
  }
  // Weighted mean whose denominator is 0: every row ignored.
  {
    Case c;
    c.cols = 20;
    c.rows = 4;
    c.weights = true;
    c.all_ignored = true;
    c.red = Reduction::kMean;
    c.z_loss = 0.1f;
    c.want_accuracy = true;
    c.seed = seed++;
    v.push_back(c);
  }
  return v;
}

inline std::vector<std::vector<int64_t>> shard_layouts(int64_t C) {
  std::vector<std::vector<int64_t>> v;
  v.push_back({C});
  if (C >= 2) v.push_back({C / 3 + 1, C - (C / 3 + 1)});
  if (C >= 3) v.push_back({1, C / 2, C - 1 - C / 2});
  if (C >= 10) v.push_back({C / 5, C / 2 - 1, 3, C - C / 5 - (C / 2 - 1) - 3});
  return v;
}

// option_cases() in the split form, with the weights sharded like the logits: one shard layout of
// several columns per case (the host and the device tests share this table).
inline std::vector<std::pair<Case, std::vector<int64_t>>> shard_option_cases() {
  std::vector<std::pair<Case, std::vector<int64_t>>> v;
  int i = 0;
  for (Case c : option_cases()) {
    if (c.cols < 10 && i++ % 2) continue;
    const auto layouts = shard_layouts(c.cols);
    const auto& w = layouts[1 + (i++ % (layouts.size() - 1))];
    if (c.rows < static_cast<int64_t>(w.size())) c.rows = static_cast<int64_t>(w.size());
    c.target_shards = w;
    v.push_back({c, w});
  }
  return v;
}

}  // namespace pgtest
