// powergrad host backend: the PGT cross-entropy ops, vectorised and threaded (docs/design.md §6.3).
//
// Threads take blocks of whole rows (a fixed function of the shape); every row writes its own
// outputs and, for a reduced loss, its own loss slot, summed afterwards on the calling thread in row
// order. Inside a row every pass is a loop of branch-free per-element code over kLanes interleaved
// lanes (column k of a chunk's whole blocks of kLanes goes to lane k % kLanes, the chunk's last
// columns to one tail accumulator), compiled for three ISA paths
// (math/vec_host.hpp). The statistics are taken per chunk of kChunkCols columns (lanes summed by a
// fixed tree) and the chunks summed in double, in column order. Neither the thread count nor the ISA
// path can change a bit of any result.
//
// A row takes up to three sweeps of its logits, the last two from cache: (1) the row's max and
// argmax (and, with options, the capped logits and their tanh slopes, into a per-thread row
// buffer); (2) the sums s and sa at that max, storing exp(alpha (z - m)) (and exp(z - m) for the
// z-loss) in per-thread row buffers, plus the target dot product t and mass a where the targets
// need them; (3) the gradient from the stored terms, dz = g (A exp(alpha (z - m)) / sa - b). The
// split form's apply step and the saved-statistics backward form the terms from the given
// statistics in one sweep instead.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "powergrad/detail/xent_job.hpp"
#include "powergrad/host/parallel.hpp"
#include "powergrad/math/dtype.hpp"
#include "powergrad/math/vec_host.hpp"
#include "powergrad/math/xent_math.hpp"
#include "powergrad/status.hpp"

POWERGRAD_NS_BEGIN
namespace host {

constexpr int64_t kChunkCols = 1024;      // columns per partial sum (lanes, fixed tree) before the double sum
constexpr int64_t kRowTaskElems = 16384;  // a task is max(1, kRowTaskElems / cols) whole rows

namespace detail_host {

using powergrad::detail::XentJob;
using powergrad::detail::XentMode;

// Per-row view of the targets: q (the hook form's target, no options) and b, the weighted smoothed
// target of docs/design.md §2.5 (b = q without weights).
template <class Tg>
struct RowTarget;

template <class Index>
struct RowTarget<ClassTargets<Index>> {
  int64_t y = 0;
  int64_t yl = 0;         // target column relative to this shard
  bool ignored = false;
  bool in_shard = false;  // the target column is one of these columns
  float wy = 0.f;         // its weight when it is (1 without weights), else 0
  template <class T>
  RowTarget(const XentJob<T, ClassTargets<Index>>& j, int64_t r) {
    y = static_cast<int64_t>(j.p.targets.index[r]);
    ignored = (y == j.p.targets.ignore_index);
    yl = y - j.p.col_offset;
    in_shard = !ignored && yl >= 0 && yl < j.p.cols;
    wy = in_shard ? (j.p.weight ? j.p.weight[yl] : 1.f) : 0.f;
  }
};

template <class TT>
struct RowTarget<DenseTargets<TT>> {
  bool ignored = false;
  const TT* row = nullptr;
  template <class T>
  RowTarget(const XentJob<T, DenseTargets<TT>>& j, int64_t r) : row(j.p.targets.prob + r * j.p.targets.ld) {}
};

template <class Tg>
constexpr bool is_hard() {
  return powergrad::detail::target_traits<Tg>::hard;
}

// Sum of the weights of these columns (class targets with weights and smoothing: part of A).
template <class T, class Tg>
double weight_sum(const XentJob<T, Tg>& j) {
  if (!j.p.weight) return static_cast<double>(j.p.cols);
  double s = 0.0;
  for (int64_t c = 0; c < j.p.cols; ++c) s += j.p.weight[c];
  return s;
}

// The kMean denominator D (docs/design.md §2.5): the non-ignored rows (class targets), the sum of
// their targets' weights (class targets with weights; from the merged statistics in the split
// form, where each shard holds only its own weights), or every row (dense targets).
template <class T, class Tg>
double mean_denominator(const XentJob<T, Tg>& j) {
  if constexpr (!is_hard<Tg>()) {
    return static_cast<double>(j.p.rows);
  } else {
    double n = 0.0;
    for (int64_t r = 0; r < j.p.rows; ++r) {
      const int64_t y = static_cast<int64_t>(j.p.targets.index[r]);
      if (y == j.p.targets.ignore_index) continue;
      if (!j.p.weight) n += 1.0;
      else if (j.mode == XentMode::kApplyMerged) n += static_cast<double>(j.stats_in[r].w);
      else n += static_cast<double>(j.p.weight[y - j.p.col_offset]);  // whole rows: checked by the API
    }
    return n;
  }
}

// Per-thread row buffers (grown, never shrunk): the values the statistics run over when they are
// not the stored logits, their softcap slopes, exp(alpha (z - m)) and exp(z - m).
struct RowBuffers {
  std::vector<float> z, slope, ea, e;
  void fit(int64_t cols) {
    const size_t n = static_cast<size_t>(cols);
    if (ea.size() < n) {
      z.resize(n);
      slope.resize(n);
      ea.resize(n);
      e.resize(n);
    }
  }
};
inline RowBuffers& row_buffers() {
  static thread_local RowBuffers b;
  return b;
}

// One call's constants and per-row slots, shared by every task.
template <class T, class Tg>
struct RowsCtx {
  const XentJob<T, Tg>* j = nullptr;
  double denom = 1.0;            // kMean denominator
  double wsum = 0.0;             // kApplySaved: sum of the weights
  float* row_loss = nullptr;     // reduced loss: one slot per row, summed in row order afterwards
  float* row_z_loss = nullptr;
};

PG_HOST_LOOPS_BEGIN

constexpr int kLanes = 16;

PG_VEC_INLINE float tree16(const float* a) {
  return (((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))) +
         (((a[8] + a[9]) + (a[10] + a[11])) + ((a[12] + a[13]) + (a[14] + a[15])));
}

// Sources of the values a row's statistics run over.
template <class T>
struct SrcLogits {
  const T* x;
  PG_VEC_INLINE float operator()(int64_t c) const { return vec::load_f(x, c); }
};
struct SrcBuffer {
  const float* z;
  PG_VEC_INLINE float operator()(int64_t c) const { return z[c]; }
};

// The non-target part of b per column (docs/design.md §2.5): class targets give eps/C (times the
// column's weight), dense targets w (1 - eps) q + eps / C; the class target's own (1 - eps) w_y is
// added to its column by the caller.
struct BClass {
  float off;
  PG_VEC_INLINE float operator()(int64_t) const { return off; }
};
struct BClassWeighted {
  float off;
  const float* w;
  PG_VEC_INLINE float operator()(int64_t c) const { return off * w[c]; }
};
template <class TT>
struct BDense {
  const TT* q;
  float on, off;
  PG_VEC_INLINE float operator()(int64_t c) const { return on * vec::load_f(q, c) + off; }
};
template <class TT>
struct BDenseWeighted {
  const TT* q;
  const float* w;
  float on, off;
  PG_VEC_INLINE float operator()(int64_t c) const { return w[c] * (on * vec::load_f(q, c) + off); }
};

// The max of z[0, n) (n <= kChunkCols; -inf when empty or all NaN: NaN never becomes the max). A
// lane-wise running max, the lanes merged in a fixed order (the max is exact: no order could change
// it); each lane's step `v > m ? v : m` compiles to one vector max instruction.
PG_VEC_INLINE float chunk_max(const float* z, int n) {
  PG_FP_STRICT
  float bv[kLanes];
  for (int l = 0; l < kLanes; ++l) bv[l] = -HUGE_VALF;
  int k = 0;
  for (; k + kLanes <= n; k += kLanes)
    PG_LANE_LOOP for (int l = 0; l < kLanes; ++l) {
      const float v = z[k + l];
      bv[l] = v > bv[l] ? v : bv[l];
    }
  for (int l = 0; k + l < n; ++l) {
    const float v = z[k + l];
    bv[l] = v > bv[l] ? v : bv[l];
  }
  float m = bv[0];
  for (int l = 1; l < kLanes; ++l) m = bv[l] > m ? bv[l] : m;
  return m;
}

// The first column of z[0, n) equal to m (m must occur there): blocks of kLanes compared at once,
// then the block that holds it element by element.
PG_VEC_INLINE int first_equal(const float* z, int n, float m) {
  int k = 0;
  for (; k + kLanes <= n; k += kLanes) {
    int any = 0;
    PG_LANE_LOOP for (int l = 0; l < kLanes; ++l) any |= z[k + l] == m;
    if (any) break;
  }
  for (; k < n; ++k)
    if (z[k] == m) return k;
  return 0;  // not reached when m occurs in z
}

// A row's max and its first column (torch.argmax's choice among equal maxima; 0 when no value is
// above -inf). The max is taken a chunk at a time (add, in column order, remembering the first
// chunk that reaches it), then the column in that one chunk (finish).
struct RowMax {
  float m = -HUGE_VALF;
  int64_t chunk = 0;  // first column of the first chunk whose max is m
  int64_t arg = 0;
  PG_VEC_INLINE void add(float cm, int64_t c0) {
    if (cm > m) {
      m = cm;
      chunk = c0;
    }
  }
  PG_VEC_INLINE void finish(const float* z, int64_t cols) {
    if (!(m > -HUGE_VALF)) return;
    const int n = static_cast<int>(cols - chunk < kChunkCols ? cols - chunk : kChunkCols);
    arg = chunk + first_equal(z + chunk, n, m);
  }
};

// The float values the max pass reads (16-bit logits are always widened into a buffer first).
PG_VEC_INLINE const float* src_ptr(const SrcLogits<float>& s) { return s.x; }
PG_VEC_INLINE const float* src_ptr(const SrcBuffer& s) { return s.z; }

template <class Src>
PG_VEC_INLINE RowMax row_max(const Src& src, int64_t cols) {
  const float* z = src_ptr(src);
  RowMax mx;
  for (int64_t c0 = 0; c0 < cols; c0 += kChunkCols) {
    const int n = static_cast<int>(cols - c0 < kChunkCols ? cols - c0 : kChunkCols);
    mx.add(chunk_max(z + c0, n), c0);
  }
  mx.finish(z, cols);
  return mx;
}

// exp2(k2 (z - ref)) for z <= ref (ref is the row's max; k2 >= 0), a masked z (-inf) giving 0
// for every k2: kZeroK2 (alpha = 0) needs the select, otherwise -inf * k2 = -inf gives 0 by itself.
template <bool kZeroK2>
PG_VEC_INLINE float exp_term(float z, float ref, float k2) {
  PG_FP_STRICT
  const float v = vec::exp2_neg((z - ref) * k2);
  return kZeroK2 ? (z == -HUGE_VALF ? 0.f : v) : v;
}

// sum over [c0, c0 + n) of exp_term; the terms are stored to out[c] when kStore.
template <bool kStore, bool kZeroK2, class Src>
PG_VEC_INLINE float chunk_exp_sum(const Src& src, int64_t c0, int n, float ref, float k2, float* out) {
  PG_FP_STRICT
  float acc[kLanes] = {};
  int k = 0;
  for (; k + kLanes <= n; k += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const float v = exp_term<kZeroK2>(src(c0 + k + l), ref, k2);
      acc[l] += v;
      if (kStore) out[c0 + k + l] = v;
    }
  float tail = 0.f;
  for (int c = k; c < n; ++c) {
    const float v = exp_term<kZeroK2>(src(c0 + c), ref, k2);
    tail += v;
    if (kStore) out[c0 + c] = v;
  }
  return tree16(acc) + tail;
}

// Both sums of a row at once, in one sweep: sa over exp2(k2 (z - ref)) (stored to outa when
// kStoreA) and s over exp(z - ref) (stored to outb when kStoreB). Each accumulator sees the same
// terms in the same order as chunk_exp_sum's, so the bits are those of two separate sweeps.
template <bool kStoreA, bool kStoreB, bool kZeroK2, class Src>
PG_VEC_INLINE void chunk_exp_sum2(const Src& src, int64_t c0, int n, float ref, float k2, float* outa, float* outb,
                                  float& sa, float& s) {
  PG_FP_STRICT
  float acca[kLanes] = {}, accb[kLanes] = {};
  int k = 0;
  for (; k + kLanes <= n; k += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const float z = src(c0 + k + l);
      const float va = exp_term<kZeroK2>(z, ref, k2);
      const float vb = exp_term<false>(z, ref, math::kLog2e);
      acca[l] += va;
      accb[l] += vb;
      if (kStoreA) outa[c0 + k + l] = va;
      if (kStoreB) outb[c0 + k + l] = vb;
    }
  float ta = 0.f, tb = 0.f;
  for (int c = k; c < n; ++c) {
    const float z = src(c0 + c);
    const float va = exp_term<kZeroK2>(z, ref, k2);
    const float vb = exp_term<false>(z, ref, math::kLog2e);
    ta += va;
    tb += vb;
    if (kStoreA) outa[c0 + c] = va;
    if (kStoreB) outb[c0 + c] = vb;
  }
  sa = tree16(acca) + ta;
  s = tree16(accb) + tb;
}

template <class Src>
PG_VEC_INLINE void chunk_exp_sum2_any(const Src& src, int64_t c0, int n, float ref, float k2, float* outa, float* outb,
                                      bool store_a, bool store_b, float& sa, float& s) {
  // store_b implies store_a (the z-loss's terms are kept only where the gradient is written).
  if (k2 == 0.f) {
    if (store_b) return chunk_exp_sum2<true, true, true>(src, c0, n, ref, k2, outa, outb, sa, s);
    if (store_a) return chunk_exp_sum2<true, false, true>(src, c0, n, ref, k2, outa, outb, sa, s);
    return chunk_exp_sum2<false, false, true>(src, c0, n, ref, k2, outa, outb, sa, s);
  }
  if (store_b) return chunk_exp_sum2<true, true, false>(src, c0, n, ref, k2, outa, outb, sa, s);
  if (store_a) return chunk_exp_sum2<true, false, false>(src, c0, n, ref, k2, outa, outb, sa, s);
  return chunk_exp_sum2<false, false, false>(src, c0, n, ref, k2, outa, outb, sa, s);
}

template <class Src>
PG_VEC_INLINE float chunk_exp_sum_any(const Src& src, int64_t c0, int n, float ref, float k2, float* out, bool store) {
  if (k2 == 0.f)
    return store ? chunk_exp_sum<true, true>(src, c0, n, ref, k2, out) : chunk_exp_sum<false, true>(src, c0, n, ref, k2, out);
  return store ? chunk_exp_sum<true, false>(src, c0, n, ref, k2, out) : chunk_exp_sum<false, false>(src, c0, n, ref, k2, out);
}

// t = sum b z (0 z = 0: a masked logit with no target mass adds nothing) and a = sum b.
template <class Src, class B>
PG_VEC_INLINE void chunk_dot(const Src& src, const B& b, int64_t c0, int n, float& t, float& a) {
  PG_FP_STRICT
  float tt[kLanes] = {}, aa[kLanes] = {};
  int k = 0;
  for (; k + kLanes <= n; k += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const float bc = b(c0 + k + l);
      const float z = src(c0 + k + l);
      tt[l] += bc == 0.f ? 0.f : bc * z;
      aa[l] += bc;
    }
  float t_tail = 0.f, a_tail = 0.f;
  for (int c = k; c < n; ++c) {
    const float bc = b(c0 + c);
    const float z = src(c0 + c);
    t_tail += bc == 0.f ? 0.f : bc * z;
    a_tail += bc;
  }
  t = tree16(tt) + t_tail;
  a = tree16(aa) + a_tail;
}

// out[c] = p'_c = exp2(k2 (z - ref) - c2) for columns [0, n) from given statistics (the split
// form's apply step, the saved-statistics backward); a masked z gives 0 |c2|: 0, or NaN when the
// statistics are NaN (docs/design.md §2.1).
template <class Src>
PG_VEC_INLINE void row_probs(const Src& src, int64_t n, float ref, float k2, float c2, float* out) {
  PG_FP_STRICT
  const float masked = 0.f * vec::abs_f(c2);
  for (int64_t c = 0; c < n; ++c) {
    const float z = src(c);
    out[c] = z == -HUGE_VALF ? masked : vec::exp2_poly((z - ref) * k2 - c2);
  }
}

// One gradient element (docs/design.md §2.5): g (A p' - b), with the options the z-loss term
// 2 lambda lse p and the softcap slope. p' = ea sc, p = e sc_s. Shared by the loops and the target
// column, so both round identically.
template <bool kOpt>
PG_VEC_INLINE float grad_value(float g, float A, float ea, float sc, float b, float zl2, float e, float sc_s,
                               float slope) {
  PG_FP_STRICT
  float d = A * (ea * sc) - b;
  if (kOpt) {
    d = zl2 == 0.f ? d : d + zl2 * (e * sc_s);
    d = d * slope;
  }
  return g * d;
}

struct GradConsts {
  float g, A, sc, zl2, sc_s;
};

template <bool kOpt, class Tout, class B>
PG_VEC_INLINE void row_write(Tout* o, int64_t n, const B& b, const GradConsts& k, const float* ea, const float* e,
                             const float* slope) {
  PG_FP_STRICT
  for (int64_t c = 0; c < n; ++c)
    vec::store_f(o, c, grad_value<kOpt>(k.g, k.A, ea[c], k.sc, b(c), k.zl2, kOpt ? e[c] : 0.f, k.sc_s,
                                        kOpt ? slope[c] : 1.f));
}

template <class Tout>
PG_VEC_INLINE void row_fill(Tout* o, int64_t n, float v) {
  for (int64_t c = 0; c < n; ++c) vec::store_f(o, c, v);
}

// With options: the values the statistics run over (the capped logits c tanh(z / c), or z) and
// the softcap slopes 1 - tanh^2 (1 without a softcap, 0 for a masked logit), and their max and
// argmax, taken a chunk at a time while the chunk is in L1.
template <class T>
PG_VEC_INLINE void chunk_values(const T* x, int64_t c0, int n, const math::XentScalars& k, float* z, float* slope) {
  PG_FP_STRICT
  if (k.softcap > 0.f) {
    const float cap = k.softcap, inv = k.inv_softcap;
    const float* xs;
    if constexpr (std::is_same_v<T, float>) {
      xs = x;
    } else {  // widened first: a mixed 16/32-bit loop vectorises at half width
      for (int64_t c = c0; c < c0 + n; ++c) z[c] = vec::load_f(x, c);
      xs = z;
    }
    for (int64_t c = c0; c < c0 + n; ++c) {
      const float v = xs[c];
      const float t = vec::tanh_poly(v * inv);
      const bool masked = v == -HUGE_VALF;
      z[c] = masked ? v : cap * t;
      slope[c] = masked ? 0.f : 1.f - t * t;
    }
  } else {
    for (int64_t c = c0; c < c0 + n; ++c) {
      z[c] = vec::load_f(x, c);
      slope[c] = 1.f;
    }
  }
}

template <class T>
PG_VEC_INLINE RowMax row_values(const T* x, int64_t cols, const math::XentScalars& k, float* z, float* slope) {
  RowMax mx;
  for (int64_t c0 = 0; c0 < cols; c0 += kChunkCols) {
    const int n = static_cast<int>(cols - c0 < kChunkCols ? cols - c0 : kChunkCols);
    chunk_values(x, c0, n, k, z, slope);
    mx.add(chunk_max(z + c0, n), c0);
  }
  mx.finish(z, cols);
  return mx;
}

// 16-bit logits widened into z, with their max and argmax taken a chunk at a time from L1.
template <class T>
PG_VEC_INLINE RowMax row_widen(const T* x, int64_t cols, float* z) {
  RowMax mx;
  for (int64_t c0 = 0; c0 < cols; c0 += kChunkCols) {
    const int n = static_cast<int>(cols - c0 < kChunkCols ? cols - c0 : kChunkCols);
    for (int64_t c = c0; c < c0 + n; ++c) z[c] = vec::load_f(x, c);
    mx.add(chunk_max(z + c0, n), c0);
  }
  mx.finish(z, cols);
  return mx;
}

// The hook form's values: log p with p = G / s + q recovered from the incoming gradient and clamped
// to [0, 1] (log 0 = -inf acts as a masked class); the class target's column is fixed by the caller.
template <class T, class Q>
PG_VEC_INLINE void hook_values(const T* x, int64_t n, float s, const Q& q, float* z) {
  PG_FP_STRICT
  for (int64_t c = 0; c < n; ++c) {
    float p = vec::load_f(x, c) / s + q(c);  // a division: 1 / s overflows for s < 2.9e-39
    p = p < 0.f ? 0.f : (p > 1.f ? 1.f : p);  // comparisons keep NaN
    z[c] = vec::log2_poly(p) * math::kLn2;
  }
}

// Row statistics over [0, cols) at the row's max: m, s, sa, argmax (t, a, w by the caller); the
// terms exp(alpha (z - m)) are stored to ea and exp(z - m) to e when asked. s is taken only when
// need_s and alpha != 1 (alpha = 1: s = sa, and the e terms are the ea terms).
// pre: the row's max and argmax when the caller took them already (row_values), else null.
template <class Src>
PG_VEC_INLINE RowStats row_sums(const Src& src, int64_t cols, const math::XentScalars& k, float* ea, float* e,
                                bool store_ea, bool need_s, bool store_e, const RowMax* pre = nullptr) {
  const RowMax mx = pre ? *pre : row_max(src, cols);
  const float M = mx.m;
  const int64_t arg = mx.arg;
  const float ref = math::safe_ref(M);
  const bool one = k.alpha_log2e == math::kLog2e;
  const bool take_s = need_s && !one;
  double s = 0.0, sa = 0.0;
  for (int64_t c0 = 0; c0 < cols; c0 += kChunkCols) {
    const int n = static_cast<int>(cols - c0 < kChunkCols ? cols - c0 : kChunkCols);
    if (take_s) {
      float csa, cs;
      chunk_exp_sum2_any(src, c0, n, ref, k.alpha_log2e, ea, e, store_ea, store_e, csa, cs);
      sa += csa;
      s += cs;
    } else {
      sa += chunk_exp_sum_any(src, c0, n, ref, k.alpha_log2e, ea, store_ea);
    }
  }
  RowStats st = math::empty_stats();
  st.m = M;
  st.sa = static_cast<float>(sa);
  st.s = take_s ? static_cast<float>(s) : st.sa;
  st.argmax = arg;
  return st;
}

// t and a of a whole row (chunk partials summed in double).
template <class Src, class B>
PG_VEC_INLINE void row_dot(const Src& src, const B& b, int64_t cols, float& t, float& a) {
  double td = 0.0, ad = 0.0;
  for (int64_t c0 = 0; c0 < cols; c0 += kChunkCols) {
    const int n = static_cast<int>(cols - c0 < kChunkCols ? cols - c0 : kChunkCols);
    float ct, ca;
    chunk_dot(src, b, c0, n, ct, ca);
    td += ct;
    ad += ca;
  }
  t = static_cast<float>(td);
  a = static_cast<float>(ad);
}

template <class TT>
using Elem = std::remove_cv_t<TT>;

// t and a of the row's targets (docs/design.md §2.5), with the b of its target kind and weights.
template <class T, class Tg, class Src>
PG_VEC_INLINE void target_dot(const XentJob<T, Tg>& j, const RowTarget<Tg>& tg, const Src& src, float& t, float& a) {
  const int64_t C = j.p.cols;
  if constexpr (is_hard<Tg>()) {
    (void)tg;
    if (j.p.weight) row_dot(src, BClassWeighted{j.k.smooth_off, j.p.weight}, C, t, a);
    else row_dot(src, BClass{j.k.smooth_off}, C, t, a);
  } else {
    using TT = Elem<std::remove_pointer_t<decltype(tg.row)>>;
    if (j.p.weight) row_dot(src, BDenseWeighted<TT>{tg.row, j.p.weight, j.k.smooth_on, j.k.smooth_off}, C, t, a);
    else row_dot(src, BDense<TT>{tg.row, j.k.smooth_on, j.k.smooth_off}, C, t, a);
  }
}

// The gradient row, with the b of the row's target kind and weights (for class targets the
// target column is written afterwards by the caller).
template <bool kOpt, class T, class Tg>
PG_VEC_INLINE void target_write(const XentJob<T, Tg>& j, const RowTarget<Tg>& tg, T* o, const GradConsts& gk,
                                const float* ea, const float* e, const float* sl) {
  const int64_t C = j.p.cols;
  if constexpr (is_hard<Tg>()) {
    (void)tg;
    // Without smoothing the weighted b is 0 off the target column (the weights are finite): no read.
    if (j.p.weight && j.k.smooth_off != 0.f) row_write<kOpt>(o, C, BClassWeighted{j.k.smooth_off, j.p.weight}, gk, ea, e, sl);
    else row_write<kOpt>(o, C, BClass{j.k.smooth_off}, gk, ea, e, sl);
  } else {
    using TT = Elem<std::remove_pointer_t<decltype(tg.row)>>;
    if (j.p.weight)
      row_write<kOpt>(o, C, BDenseWeighted<TT>{tg.row, j.p.weight, j.k.smooth_on, j.k.smooth_off}, gk, ea, e, sl);
    else row_write<kOpt>(o, C, BDense<TT>{tg.row, j.k.smooth_on, j.k.smooth_off}, gk, ea, e, sl);
  }
}

// The hook form of one row: s (p - q) rewritten into s (p' - q) (the API refuses options here).
template <class T, class Tg>
PG_VEC_INLINE void hook_row(const XentJob<T, Tg>& j, const RowTarget<Tg>& tg, const T* x, int64_t r,
                            RowBuffers& rb) {
  const int64_t C = j.p.cols;
  const float s_r = j.hook_scale.scale * (j.hook_scale.row_scale ? j.hook_scale.row_scale[r] : 1.f);
  T* o = j.out.dlogits + r * j.out.ld_dlogits;
  if (tg.ignored || s_r == 0.f) return row_fill(o, C, 0.f);
  if (!(s_r > 0.f) || !std::isfinite(s_r)) return row_fill(o, C, std::numeric_limits<float>::quiet_NaN());
  float* z = rb.z.data();
  float qy = 0.f;  // the class target's q (its column's b in the write below)
  if constexpr (is_hard<Tg>()) {
    hook_values(x, C, s_r, BClass{j.k.smooth_off}, z);
    if (tg.in_shard) {
      qy = j.k.smooth_on + j.k.smooth_off;
      float p = vec::load_f(x, tg.yl) / s_r + qy;
      p = p < 0.f ? 0.f : (p > 1.f ? 1.f : p);
      z[tg.yl] = vec::log2_poly(p) * math::kLn2;
    }
  } else {
    using TT = Elem<std::remove_pointer_t<decltype(tg.row)>>;
    hook_values(x, C, s_r, BDense<TT>{tg.row, j.k.smooth_on, j.k.smooth_off}, z);
  }
  // Everything below reads the buffers only: the write may be in place.
  const RowStats st = row_sums(SrcBuffer{z}, C, j.k, rb.ea.data(), nullptr, true, false, false);
  const GradConsts gk{s_r, 1.f, 1.f / st.sa, 0.f, 0.f};
  if constexpr (is_hard<Tg>()) {
    row_write<false>(o, C, BClass{j.k.smooth_off}, gk, rb.ea.data(), nullptr, nullptr);
    if (tg.in_shard)
      vec::store_f(o, tg.yl, grad_value<false>(gk.g, 1.f, rb.ea[static_cast<size_t>(tg.yl)], gk.sc, qy, 0.f, 0.f, 0.f, 1.f));
  } else {
    using TT = Elem<std::remove_pointer_t<decltype(tg.row)>>;
    row_write<false>(o, C, BDense<TT>{tg.row, j.k.smooth_on, j.k.smooth_off}, gk, rb.ea.data(), nullptr, nullptr);
  }
}

// One row of every other mode. kOpt: an option of docs/design.md §2.5 is on (weights, z-loss or
// softcap); the statistics then run over the buffered values (capped or not) and the write applies
// the z-loss term and the slope.
template <bool kOpt, class T, class Tg, class Src>
PG_VEC_INLINE void xent_row_from(const RowsCtx<T, Tg>& cx, int64_t r, RowBuffers& rb, const RowTarget<Tg>& tg,
                                 const Src& src, const RowMax* pre = nullptr) {
  const XentJob<T, Tg>& j = *cx.j;
  const int64_t C = j.p.cols;

  const bool reduced = j.p.reduction != Reduction::kNone;
  const bool mean = j.p.reduction == Reduction::kMean;
  const float lambda = j.k.z_loss_scale;
  const bool grad = j.out.dlogits != nullptr && j.mode != XentMode::kStats;
  float* ea = rb.ea.data();
  float* sl = rb.slope.data();
  // With z-loss (the fused op and the split form's apply step), exp(z - m) is kept too; at
  // alpha = 1 those are the ea terms.
  const bool one = j.k.alpha_log2e == math::kLog2e;
  // (kApplySaved never has a z-loss: xent_backward runs the fused path whenever lambda > 0.)
  const bool zl = kOpt && lambda != 0.f && grad && j.mode != XentMode::kApplySaved;
  float* e = zl && (!one || j.mode != XentMode::kFused) ? rb.e.data() : ea;

  {
    RowStats st{};
    float ref = 0.f, c2 = 0.f, A = 1.f, lse = 0.f, sc = 1.f, sc_s = 0.f;
    if (j.mode == XentMode::kApplySaved) {
      c2 = j.lse_alpha_in[r] * math::kLog2e;
      if (!tg.ignored) {
        if constexpr (is_hard<Tg>()) {
          if (j.p.weight) A = j.k.smooth_on * tg.wy + static_cast<float>(j.k.smooth_off * cx.wsum);
        } else {
          float t_unused;
          target_dot(j, tg, src, t_unused, A);
        }
      }
    } else {
      if (j.mode == XentMode::kApplyMerged) {
        st = j.stats_in[r];
      } else {
        const bool store = grad && !tg.ignored;
        st = row_sums(src, C, j.k, ea, e, store, true, store && zl, pre);
        st.argmax += j.p.col_offset;
        // Class targets without smoothing: b is the target column alone (added below).
        const bool need_dot = !is_hard<Tg>() || j.k.smooth_off != 0.f;
        if (need_dot) target_dot(j, tg, src, st.t, st.a);
        if constexpr (is_hard<Tg>()) {
          if (tg.in_shard) {
            const float on = j.k.smooth_on * tg.wy;
            st.t += math::q_times_z(on, src(tg.yl));
            st.a += on;
            st.w = tg.wy;
          }
        }
        if (tg.ignored) st.a = st.w = 0.f;  // an ignored row has no target
        if (j.mode == XentMode::kStats) {
          j.stats_out[r] = st;
          return;
        }
      }
      // Class targets without weights: A = 1 exactly (the statistics' a is 1 up to rounding).
      if (!is_hard<Tg>() || j.p.weight) A = st.a;
      ref = math::safe_ref(st.m);
      c2 = math::fast_log2(st.sa);
      lse = math::lse_of(st);
      if (j.out.lse) j.out.lse[r] = lse;
      if (j.out.lse_alpha) j.out.lse_alpha[r] = math::lse_alpha_of(st, j.k.alpha);
      const float zrow = tg.ignored || lambda == 0.f ? 0.f : lambda * lse * lse;
      const float row_loss = tg.ignored ? 0.f : math::row_loss_mass(lse, A, st) + zrow;
      if (reduced) {
        cx.row_loss[r] = row_loss;
        cx.row_z_loss[r] = zrow;
      } else {
        if (j.out.loss) j.out.loss[r] = row_loss;
        if (j.out.z_loss) j.out.z_loss[r] = zrow;
      }
      if (j.out.argmax) j.out.argmax[r] = st.argmax;
      if constexpr (is_hard<Tg>()) {
        if (j.out.correct) j.out.correct[r] = !tg.ignored && st.argmax == tg.y ? 1 : 0;
      }
    }
    if (!grad) return;
    T* o = j.out.dlogits + r * j.out.ld_dlogits;
    if (tg.ignored) return row_fill(o, C, 0.f);
    float g = j.up.scale * (j.up.values ? j.up.values[reduced ? 0 : r] : 1.f);
    if (mean) g = cx.denom > 0.0 ? g / static_cast<float>(cx.denom) : 0.f;
    if (j.mode == XentMode::kFused) {
      sc = 1.f / st.sa;
      sc_s = 1.f / st.s;
    } else {
      // The terms from the given statistics (read before the possibly in-place write).
      row_probs(src, C, ref, j.k.alpha_log2e, c2, ea);
      if (zl && j.mode == XentMode::kApplyMerged) {  // the split form's apply step: p = exp(z - lse)
        row_probs(src, C, lse, math::kLog2e, 0.f, e);  // (z - lse) log2e, as the fused path rounds
        sc_s = 1.f;
      }
    }
    const GradConsts gk{g, A, sc, zl ? 2.f * lambda * lse : 0.f, sc_s};
    float by = 0.f;
    if constexpr (is_hard<Tg>()) {
      if (tg.in_shard) by = j.k.smooth_on * tg.wy + (j.p.weight ? j.k.smooth_off * j.p.weight[tg.yl] : j.k.smooth_off);
    }
    target_write<kOpt>(j, tg, o, gk, ea, e, sl);
    if constexpr (is_hard<Tg>()) {
      if (tg.in_shard) {
        const size_t y = static_cast<size_t>(tg.yl);
        vec::store_f(o, tg.yl, grad_value<kOpt>(gk.g, gk.A, ea[y], gk.sc, by, gk.zl2, kOpt ? e[y] : 0.f, gk.sc_s,
                                                kOpt ? sl[y] : 1.f));
      }
    }
  }
}

template <bool kOpt, class T, class Tg>
PG_VEC_INLINE void xent_row(const RowsCtx<T, Tg>& cx, int64_t r, RowBuffers& rb) {
  const XentJob<T, Tg>& j = *cx.j;
  const T* x = j.p.logits + r * j.p.ld;
  const RowTarget<Tg> tg(j, r);
  if (j.mode == XentMode::kHook) return hook_row(j, tg, x, r, rb);
  if constexpr (kOpt) {
    const RowMax mx = row_values(x, j.p.cols, j.k, rb.z.data(), rb.slope.data());
    xent_row_from<kOpt>(cx, r, rb, tg, SrcBuffer{rb.z.data()}, &mx);
  } else if constexpr (!std::is_same_v<T, float>) {
    // 16-bit logits are widened once: the passes below then run on full-width fp32 vectors (the
    // vectoriser handles a mixed 16/32-bit loop at half width, and the max pass not at all).
    const RowMax mx = row_widen(x, j.p.cols, rb.z.data());
    xent_row_from<kOpt>(cx, r, rb, tg, SrcBuffer{rb.z.data()}, &mx);
  } else {
    xent_row_from<kOpt>(cx, r, rb, tg, SrcLogits<T>{x});
  }
}

template <bool kOpt, class T, class Tg>
PG_VEC_INLINE void xent_rows(const RowsCtx<T, Tg>& cx, int64_t r0, int64_t r1) {
  RowBuffers& rb = row_buffers();
  rb.fit(cx.j->p.cols);
  for (int64_t r = r0; r < r1; ++r) xent_row<kOpt>(cx, r, rb);
}

// The ISA paths: the same body, compiled for each target (math/vec_host.hpp).
template <bool kOpt, class T, class Tg>
void xent_rows_baseline(const RowsCtx<T, Tg>& cx, int64_t r0, int64_t r1) {
  xent_rows<kOpt>(cx, r0, r1);
}
#if PG_HOST_ISA_X86
template <bool kOpt, class T, class Tg>
PG_TARGET_AVX2 void xent_rows_avx2(const RowsCtx<T, Tg>& cx, int64_t r0, int64_t r1) {
  xent_rows<kOpt>(cx, r0, r1);
}
#endif
#if PG_HOST_ISA_AVX512
template <bool kOpt, class T, class Tg>
PG_TARGET_AVX512 void xent_rows_avx512(const RowsCtx<T, Tg>& cx, int64_t r0, int64_t r1) {
  xent_rows<kOpt>(cx, r0, r1);
}
#endif

PG_HOST_LOOPS_END

template <class T, class Tg>
using RowsFn = void (*)(const RowsCtx<T, Tg>&, int64_t, int64_t);

template <bool kOpt, class T, class Tg>
RowsFn<T, Tg> rows_fn(HostIsa isa) {
#if PG_HOST_ISA_AVX512
  if (isa == HostIsa::kAvx512) return &xent_rows_avx512<kOpt, T, Tg>;
#endif
#if PG_HOST_ISA_X86
  if (isa == HostIsa::kAvx2) return &xent_rows_avx2<kOpt, T, Tg>;
#endif
  (void)isa;
  return &xent_rows_baseline<kOpt, T, Tg>;
}

}  // namespace detail_host

// Runs one validated job on host memory.
template <class T, class Tg>
Status xent_run(const powergrad::detail::XentJob<T, Tg>& j) {
  using namespace detail_host;
  // Class indices and weights were checked by the API layer (xent.hpp: check_host_inputs) before this runs.
  const int64_t R = j.p.rows, C = j.p.cols;
  const bool reduced = j.p.reduction != Reduction::kNone;
  const bool mean = j.p.reduction == Reduction::kMean;
  RowsCtx<T, Tg> cx;
  cx.j = &j;
  cx.denom = (mean && j.mode != XentMode::kHook && j.mode != XentMode::kStats) ? mean_denominator(j) : 1.0;
  cx.wsum = j.mode == XentMode::kApplySaved ? weight_sum(j) : 0.0;
  const bool with_loss = reduced && (j.mode == XentMode::kFused || j.mode == XentMode::kApplyMerged);
  std::vector<float> slots(with_loss ? static_cast<size_t>(2 * R) : 0);
  if (with_loss) {
    cx.row_loss = slots.data();
    cx.row_z_loss = slots.data() + R;
  }
  const bool opt = j.mode != XentMode::kHook && (j.p.weight != nullptr || j.k.softcap > 0.f || j.k.z_loss_scale != 0.f);
  const HostIsa isa = vec::active_host_isa();
  const RowsFn<T, Tg> fn = opt ? rows_fn<true, T, Tg>(isa) : rows_fn<false, T, Tg>(isa);
  const int64_t per_task = C >= kRowTaskElems ? 1 : kRowTaskElems / (C > 0 ? C : 1);
  const int64_t tasks = (R + per_task - 1) / per_task;
  const int threads = threads_for(R * (C > 0 ? C : 1) * 2, tasks);
  parallel_for(threads, tasks, [&](int64_t t) {
    const int64_t r0 = t * per_task;
    fn(cx, r0, r0 + per_task < R ? r0 + per_task : R);
  });
  if (with_loss) {
    double loss_sum = 0.0, z_sum = 0.0;  // in row order, whatever ran where
    for (int64_t r = 0; r < R; ++r) {
      loss_sum += static_cast<double>(cx.row_loss[r]);
      z_sum += static_cast<double>(cx.row_z_loss[r]);
    }
    const auto finish = [&](double v) {
      return static_cast<float>(mean ? (cx.denom > 0.0 ? v / cx.denom : 0.0) : v);
    };
    if (j.out.loss) j.out.loss[0] = finish(loss_sum);
    if (j.out.z_loss) j.out.z_loss[0] = finish(z_sum);
  }
  return Status::kSuccess;
}

// Merges shards x rows partial statistics (layout [shard][row]) in shard order.
inline Status merge_stats_run(const RowStats* parts, int64_t shards, int64_t rows, float alpha, RowStats* merged) {
  const float a2 = alpha * math::kLog2e;
  for (int64_t r = 0; r < rows; ++r) {
    RowStats acc = parts[r];
    for (int64_t k = 1; k < shards; ++k) acc = math::merge(acc, parts[k * rows + r], a2);
    merged[r] = acc;
  }
  return Status::kSuccess;
}

}  // namespace host
POWERGRAD_NS_END
