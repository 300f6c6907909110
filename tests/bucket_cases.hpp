// Case generator and checks of the gradient-bucket transforms, shared by the host tests
// (test_bucket.cpp) and the device tests (test_bucket_device.cu) through the memory policy of
// xent_cases.hpp (HostMem) or device_mem.cuh (DeviceMem). Results are compared with the float64
// reference in reference_bucket.hpp.
//
// Discipline: fixed seeds; inputs drawn in double and rounded to the dtype, the reference reads the
// rounded values; every tensor sits between guard elements that are poisoned (0xFF bytes) and must
// come back bit-for-bit untouched; norms and flags outputs are poisoned before the call; EVERY
// element of every tensor is checked.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "powergrad/bucket.hpp"
#include "reference_bucket.hpp"
#include "xent_cases.hpp"

namespace pgtest {

using pg::BucketScope;
using pg::BucketTensor;
using pg::BucketUnits;
using pg::NormPreserve;

enum class BOp : int { kPower = 0, kClip = 1, kAgc = 2 };

struct BucketCase {
  std::vector<std::vector<int64_t>> shapes;  // AGC units run along dim 0 (ndim <= 1: whole tensor)
  BOp op = BOp::kPower;
  bool flat = false;  // one contiguous buffer + segment offsets (else separate pointers, placed in reverse order)
  float beta = 1.f;
  NormPreserve preserve = NormPreserve::kNone;
  BucketScope scope = BucketScope::kTensor;
  float max_norm = 1.f;
  float clip = 0.01f, eps = 1e-3f;
  bool zero_params = false;  // AGC: parameters of tensor 0 all zero (w norm below eps)
  int bad_tensor = -1;       // a tensor holding one non-finite value (in its gradient, or its parameter)
  double bad_value = 0;
  bool bad_in_param = false;
  double gscale = 1.0;       // gradient magnitude (tiny values test under- and overflow of the sums)
  uint32_t seed = 1;

  std::string str() const {
    std::ostringstream o;
    const char* ops[] = {"power", "clip", "agc"};
    o << ops[static_cast<int>(op)] << " tensors=" << shapes.size() << (flat ? " flat" : " separate")
      << " beta=" << beta << " preserve=" << static_cast<int>(preserve)
      << " scope=" << (scope == BucketScope::kBucket ? "bucket" : "tensor") << " max_norm=" << max_norm
      << " clip=" << clip << " bad=" << bad_tensor << (bad_in_param ? "(param)" : "") << " gscale=" << gscale
      << " seed=" << seed;
    return o.str();
  }
};

inline int64_t numel_of(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}
inline int64_t rows_of(const std::vector<int64_t>& s) { return s.size() <= 1 ? 0 : s[0]; }

struct alignas(16) PlanBlock {
  unsigned char b[16];
};

template <class T, class P>
struct BucketData {
  std::vector<T> grad;    // guard | tensor | guard | tensor | ... | guard
  std::vector<P> param;   // same offsets
  std::vector<int64_t> off;  // element offset of each tensor in grad / param
  pgref::Tensors g_in, w_in;  // rounded inputs as doubles
};

template <class T, class P>
BucketData<T, P> make_bucket_data(const BucketCase& c) {
  BucketData<T, P> d;
  std::mt19937_64 rng(c.seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::uniform_real_distribution<double> ud(0.0, 1.0);
  const size_t n = c.shapes.size();
  d.off.assign(n, 0);
  // Placement order: list order for the flat layout, reverse for separate pointers.
  int64_t pos = kGuard;
  for (size_t k = 0; k < n; ++k) {
    const size_t t = c.flat ? k : n - 1 - k;
    d.off[t] = pos;
    pos += numel_of(c.shapes[t]) + (c.flat ? 0 : kGuard);  // a flat bucket is contiguous
  }
  if (c.flat) pos += kGuard;
  d.grad.assign(static_cast<size_t>(pos), poison_value<T>());
  d.param.assign(static_cast<size_t>(pos), poison_value<P>());
  d.g_in.resize(n);
  d.w_in.resize(n);
  for (size_t t = 0; t < n; ++t) {
    const int64_t ne = numel_of(c.shapes[t]);
    const int64_t units = rows_of(c.shapes[t]) > 1 ? rows_of(c.shapes[t]) : 1;
    const int64_t len = ne / std::max<int64_t>(units, 1);
    const double tscale = c.gscale * (0.2 + 2.0 * ud(rng));
    std::vector<double> g(static_cast<size_t>(ne)), w(static_cast<size_t>(ne));
    for (int64_t u = 0; u < (ne ? units : 0); ++u) {
      // Parameters with a unit scale; for AGC the gradient's norm is 0.5x or 2x the unit's limit
      // (well away from the threshold, so rounding cannot flip the decision).
      const double wscale = (c.zero_params && t == 0) ? 0.0 : std::exp(4.0 * ud(rng) - 2.0);
      double wss = 0, gss = 0;
      for (int64_t i = u * len; i < (u + 1) * len; ++i) {
        w[static_cast<size_t>(i)] = wscale * nd(rng);
        g[static_cast<size_t>(i)] = tscale * nd(rng);
      }
      for (int64_t i = u * len; i < (u + 1) * len; ++i) {
        w[static_cast<size_t>(i)] = DT<P>::decode(DT<P>::encode(w[static_cast<size_t>(i)]));
        wss += w[static_cast<size_t>(i)] * w[static_cast<size_t>(i)];
        gss += g[static_cast<size_t>(i)] * g[static_cast<size_t>(i)];
      }
      if (c.op == BOp::kAgc && gss > 0) {
        const double limit = std::max(std::sqrt(wss), static_cast<double>(c.eps)) * c.clip;
        const double r = ud(rng) < 0.5 ? 0.5 : 2.0;
        const double f = r * limit / std::sqrt(gss);
        for (int64_t i = u * len; i < (u + 1) * len; ++i) g[static_cast<size_t>(i)] *= f;
      }
    }
    if (static_cast<int>(t) == c.bad_tensor && ne > 0) (c.bad_in_param ? w : g)[static_cast<size_t>(ne / 2)] = c.bad_value;
    for (int64_t i = 0; i < ne; ++i) {
      const T v = DT<T>::encode(g[static_cast<size_t>(i)]);
      d.grad[static_cast<size_t>(d.off[t] + i)] = v;
      g[static_cast<size_t>(i)] = DT<T>::decode(v);
      d.param[static_cast<size_t>(d.off[t] + i)] = DT<P>::encode(w[static_cast<size_t>(i)]);
    }
    d.g_in[t] = std::move(g);
    d.w_in[t] = std::move(w);
  }
  return d;
}

// Checks one output value against the reference: NaN <-> NaN, inf <-> the same inf, else within tol.
inline bool close_or_same_special(double got, double ref, double tol) {
  if (std::isnan(ref)) return std::isnan(got);
  if (std::isinf(ref)) return got == ref;
  return std::isfinite(got) && std::fabs(got - ref) <= tol;
}

// Builds the plan, runs the case's op through the public API and returns its status; `d` holds the
// results afterwards (fetched back from the device). norms / flags receive those outputs.
template <class T, class P, class Mem>
Status run_bucket_op(const BucketCase& c, Mem& m, BucketData<T, P>& d, std::vector<float>& norms, int32_t& flags,
                     bool twice = false) {
  const size_t n = c.shapes.size();
  T* g = m.in(d.grad);
  P* w = m.in(d.param);
  std::vector<BucketTensor<T, P>> ts(n);
  if (c.flat) {
    // A DDP-style bucket: contiguous segments, tensor t = grad[off[t], off[t+1]).
    std::vector<int64_t> offs;
    std::vector<const P*> params;
    std::vector<int64_t> rows;
    for (size_t t = 0; t < n; ++t) {
      offs.push_back(d.off[t] - d.off[0]);
      params.push_back(w + d.off[t]);
      rows.push_back(rows_of(c.shapes[t]));
    }
    offs.push_back(d.off[n - 1] - d.off[0] + numel_of(c.shapes[n - 1]));
    EXPECT_EQ((pg::bucket_tensors_from_flat<T, P>(g + d.off[0], offs.data(), static_cast<int64_t>(n), params.data(),
                                                  rows.data(), ts.data())),
              Status::kSuccess)
        << pg::last_error_message();
  } else {
    for (size_t t = 0; t < n; ++t)
      ts[t] = BucketTensor<T, P>{g + d.off[t], w + d.off[t], numel_of(c.shapes[t]), rows_of(c.shapes[t])};
  }
  const BucketUnits units = c.op == BOp::kAgc ? BucketUnits::kRows : BucketUnits::kTensor;
  std::vector<PlanBlock> plan(pg::bucket_plan_bytes(static_cast<int64_t>(n)) / 16 + 1);
  Status s = pg::bucket_plan_build<T, P>(Mem::backend, ts.data(), static_cast<int64_t>(n), units, plan.data(),
                                         plan.size() * 16);
  if (s != Status::kSuccess) return s;
  size_t ws_bytes = 0;
  EXPECT_EQ(pg::bucket_workspace_bytes(plan.data(), plan.size() * 16, &ws_bytes), Status::kSuccess);
  void* ws = m.workspace(ws_bytes);
  if ((s = pg::bucket_plan_upload(plan.data(), plan.size() * 16, ws, ws_bytes, m.stream())) != Status::kSuccess) return s;
  std::vector<int32_t> fl(1);
  int32_t* dfl = m.out(fl);
  float* dn = m.out(norms);
  for (int rep = 0; rep < (twice ? 2 : 1); ++rep) {
    switch (c.op) {
      case BOp::kPower:
        s = pg::bucket_power<T>(plan.data(), plan.size() * 16, c.beta, c.preserve, c.scope, ws, ws_bytes, dfl, m.stream());
        break;
      case BOp::kClip:
        s = pg::bucket_clip_norm<T>(plan.data(), plan.size() * 16, c.max_norm, c.scope, dn, ws, ws_bytes, dfl, m.stream());
        break;
      case BOp::kAgc:
        s = pg::bucket_agc<T, P>(plan.data(), plan.size() * 16, c.clip, c.eps, c.beta, c.preserve, ws, ws_bytes, dfl, m.stream());
        break;
    }
    if (s != Status::kSuccess) return s;
  }
  m.fetch(d.grad, g);
  m.fetch(norms, dn);
  m.fetch(fl, dfl);
  flags = fl[0];
  return s;
}

// Runs the case and checks every element against the reference.
template <class T, class P, class Mem>
void check_bucket_case(const BucketCase& c) {
  SCOPED_TRACE(c.str() + " dtype=" + DT<T>::name + " param=" + DT<P>::name);
  Mem m;
  BucketData<T, P> d = make_bucket_data<T, P>(c);
  const size_t n = c.shapes.size();
  const bool whole = c.scope == BucketScope::kBucket;
  std::vector<double> ref_norms;
  pgref::Tensors ref;
  switch (c.op) {
    case BOp::kPower: ref = pgref::power(d.g_in, c.beta, static_cast<int>(c.preserve), whole); break;
    case BOp::kClip: ref = pgref::clip_norm(d.g_in, c.max_norm, whole, ref_norms); break;
    case BOp::kAgc: {
      std::vector<int64_t> rows;
      for (const auto& s : c.shapes) rows.push_back(rows_of(s));
      ref = pgref::agc(d.g_in, d.w_in, rows, c.clip, c.eps, c.beta, static_cast<int>(c.preserve));
      break;
    }
  }
  const std::vector<T> before = d.grad;
  std::vector<float> norms(c.op == BOp::kClip ? (whole ? 1 : n) : 0);
  int32_t flags = -7;
  const Status s = run_bucket_op<T, P, Mem>(c, m, d, norms, flags);
  ASSERT_EQ(s, Status::kSuccess) << pg::last_error_message();
  // fp32 arithmetic (sums over a few thousand terms, exp2/log2 of the power map) + output rounding.
  const double rel = 2e-5 + 2 * DT<T>::u;
  int64_t bad = 0;
  std::ostringstream first;
  for (size_t t = 0; t < n; ++t) {
    double maxabs = 0;
    for (double v : ref[t])
      if (std::isfinite(v)) maxabs = std::max(maxabs, std::fabs(v));
    for (size_t i = 0; i < ref[t].size(); ++i) {
      const double got = DT<T>::decode(d.grad[static_cast<size_t>(d.off[t]) + i]);
      const double r = ref[t][i];
      const double tol = rel * std::fabs(r) + rel * 1e-6 * maxabs + DT<T>::abs_floor;
      if (!close_or_same_special(got, r, tol) && bad++ == 0)
        first << "tensor " << t << " element " << i << ": got " << got << ", expected " << r << " (input "
              << d.g_in[t][i] << ", tol " << tol << ")";
    }
  }
  // Guards (everything outside the tensors) untouched.
  std::vector<bool> inside(d.grad.size(), false);
  for (size_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < numel_of(c.shapes[t]); ++i) inside[static_cast<size_t>(d.off[t] + i)] = true;
  for (size_t i = 0; i < d.grad.size(); ++i)
    if (!inside[i] && !same_bits(d.grad[i], before[i]) && bad++ == 0) first << "guard element " << i << " was written";
  EXPECT_EQ(bad, 0) << bad << " bad elements; first: " << first.str();
  bool any_non_finite = false;
  for (size_t k = 0; k < ref_norms.size(); ++k) {
    any_non_finite = any_non_finite || !std::isfinite(ref_norms[k]);
    EXPECT_TRUE(close_or_same_special(norms[k], ref_norms[k], 1e-5 * ref_norms[k] + 1e-30))
        << "norm " << k << ": got " << norms[k] << ", expected " << ref_norms[k];
  }
  if (c.op == BOp::kClip || c.preserve != NormPreserve::kNone || c.op == BOp::kAgc) {
    const bool expect_nf = c.bad_tensor >= 0;
    EXPECT_EQ(flags, expect_nf ? pg::kBucketFlagNonFinite : 0) << (any_non_finite ? "(a norm is non-finite)" : "");
  } else {
    EXPECT_EQ(flags, 0);
  }
}

// The case lists, shared by the host and device suites.
inline std::vector<std::vector<int64_t>> mixed_shapes() {
  return {{7}, {64, 3, 3, 3}, {1000}, {33, 17}, {0}, {4097}, {2, 8193}, {1}, {12000}};
}
inline std::vector<std::vector<int64_t>> resnet_like_shapes() {
  // ResNet-50-like parameter shapes (conv weights, BN vectors, the classifier), fewer output units
  // than the real ones to keep the float64 reference fast; unit lengths are the real ones.
  return {{64, 3, 7, 7}, {64}, {64}, {64, 64, 1, 1}, {32, 64, 3, 3}, {64, 64, 1, 1}, {256}, {16, 256, 1, 1},
          {16, 512, 3, 3}, {2048}, {40, 2048}, {1000}};
}

inline std::vector<BucketCase> power_cases() {
  std::vector<BucketCase> v;
  uint32_t seed = 100;
  for (NormPreserve p : {NormPreserve::kNone, NormPreserve::kL1, NormPreserve::kL2})
    for (BucketScope sc : {BucketScope::kTensor, BucketScope::kBucket})
      for (float beta : {0.3f, 2.0f})
        for (bool flat : {false, true}) {
          BucketCase c;
          c.shapes = mixed_shapes();
          c.op = BOp::kPower;
          c.preserve = p;
          c.scope = sc;
          c.beta = beta;
          c.flat = flat;
          c.seed = seed++;
          v.push_back(c);
        }
  return v;
}
inline std::vector<BucketCase> clip_cases() {
  std::vector<BucketCase> v;
  uint32_t seed = 200;
  for (BucketScope sc : {BucketScope::kTensor, BucketScope::kBucket})
    for (float mn : {0.5f, 1e6f})
      for (bool flat : {false, true}) {
        BucketCase c;
        c.shapes = mixed_shapes();
        c.op = BOp::kClip;
        c.scope = sc;
        c.max_norm = mn;
        c.flat = flat;
        c.seed = seed++;
        v.push_back(c);
      }
  return v;
}
inline std::vector<BucketCase> agc_cases() {
  std::vector<BucketCase> v;
  uint32_t seed = 300;
  for (float beta : {1.0f, 0.5f})
    for (NormPreserve p : {NormPreserve::kNone, NormPreserve::kL1, NormPreserve::kL2})
      for (bool flat : {false, true}) {
        BucketCase c;
        c.shapes = resnet_like_shapes();
        c.shapes.push_back({5, 2000});  // units longer than... and shorter than an item
        c.shapes.push_back({3, 9000});  // units spanning several items
        c.shapes.push_back({1500, 3});  // > 1024 groups in all: the warp-per-group reduction
        c.op = BOp::kAgc;
        c.beta = beta;
        c.preserve = p;
        c.flat = flat;
        c.zero_params = true;
        c.seed = seed++;
        v.push_back(c);
      }
  return v;
}
// Non-finite inputs: one NaN or inf in tensor 2 (documented: the scope's outputs follow the
// reference's NaN / inf rules and kBucketFlagNonFinite is set).
inline std::vector<BucketCase> nonfinite_cases() {
  std::vector<BucketCase> v;
  uint32_t seed = 400;
  for (double bad : std::vector<double>{std::nan(""), INFINITY}) {
    for (BucketScope sc : {BucketScope::kTensor, BucketScope::kBucket}) {
      BucketCase c;
      c.shapes = mixed_shapes();
      c.op = BOp::kClip;
      c.scope = sc;
      c.bad_tensor = 2;
      c.bad_value = bad;
      c.seed = seed++;
      v.push_back(c);
      c.op = BOp::kPower;
      c.preserve = NormPreserve::kL1;
      c.beta = 0.5f;
      v.push_back(c);
    }
    BucketCase a;
    a.shapes = resnet_like_shapes();
    a.op = BOp::kAgc;
    a.bad_tensor = 2;
    a.bad_value = bad;
    a.seed = seed++;
    v.push_back(a);
    a.bad_in_param = true;  // NaN weight norm -> NaN unit; inf weight norm -> the unit is kept (timm)
    a.bad_tensor = 3;
    v.push_back(a);
  }
  return v;
}
// Tiny magnitudes: sums of squares and powers of |g| ~ 1e-22 underflow in fp32; norm preservation
// and clipping must still follow the reference (fp16 cannot hold such values: 1e-3 there).
template <class T>
std::vector<BucketCase> tiny_cases() {
  const double scale = std::is_same<T, half_t>::value ? 1e-3 : 1e-22;
  std::vector<BucketCase> v;
  uint32_t seed = 500;
  const struct {
    BOp op;
    float beta;
    NormPreserve p;
  } ops[] = {{BOp::kPower, 0.5f, NormPreserve::kL2}, {BOp::kPower, 2.f, NormPreserve::kL1},
             {BOp::kClip, 1.f, NormPreserve::kNone}, {BOp::kAgc, 0.5f, NormPreserve::kL2}};
  for (const auto& o : ops) {
    BucketCase c;
    c.shapes = mixed_shapes();
    c.op = o.op;
    c.beta = o.beta;
    c.preserve = o.p;
    c.max_norm = 1e-23f;
    c.gscale = scale;
    c.seed = seed++;
    v.push_back(c);
  }
  return v;
}
// 1000 tiny tensors (1..40 elements) and empty ones in between.
inline std::vector<BucketCase> many_tiny_cases() {
  std::vector<BucketCase> v;
  BucketCase c;
  for (int i = 0; i < 1000; ++i) c.shapes.push_back({i % 97 == 0 ? 0 : 1 + (i * 7919) % 40});
  for (BOp op : {BOp::kPower, BOp::kClip, BOp::kAgc}) {
    c.op = op;
    c.preserve = op == BOp::kPower ? NormPreserve::kL2 : NormPreserve::kNone;
    c.beta = op == BOp::kPower ? 0.7f : 1.f;
    for (bool flat : {false, true}) {
      c.flat = flat;
      c.seed += 1;
      v.push_back(c);
    }
  }
  return v;
}

}  // namespace pgtest
