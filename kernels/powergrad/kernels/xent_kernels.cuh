// powergrad device kernels: PGT softmax cross-entropy (docs/design.md §2.1-2.3, §6).
//
// One kernel template covers the five modes of detail::XentMode (fused forward+backward, shard
// statistics, apply merged statistics, apply a saved lse_alpha, hook form); the mode is a template
// parameter from the op down, so an op instantiates only its own kernels. A *group* of G threads owns one row at a
// time: 4, 8 or 16 threads or a warp per row (256 / G rows per block) for short rows, a whole block per row
// for long ones (launch_rows picks a named RowPolicy by width). Each row is swept at most twice:
//   pass 1  online statistics (one running max, two running sums: docs/design.md §6) over 16-byte
//           vectors; the first CACHE vectors of each thread stay in registers (and optionally
//           SMEM more in shared memory),
//   merge   butterfly over the sub-warp / warp (and the block's warps) with math::merge, fixed
//           order,
//   pass 2  p' - q, scaled, written once; cached vectors come from registers, the rest of the row
//           is re-read while it is still in L2 (a block of 1024 threads per row keeps about one
//           row per SM in flight, ~30 MB for 128k bf16 columns, inside an H100's 50 MB L2).
// Rows whose start is not 16-byte aligned (odd ld, offset pointers) run a scalar head and tail
// around the vector body; an output whose alignment differs from the input's is stored scalar.
// Reduced losses go through caller workspace and two tiny single-block kernels (n_valid count
// before, fixed-order sum after): deterministic, no atomics on floats, no host synchronisation.
#pragma once

#include <cuda_runtime.h>

#include <cub/block/block_reduce.cuh>
#include <cstdint>

#include "powergrad/config.hpp"
#include "powergrad/detail/xent_job.hpp"
#include "powergrad/detail/xent_workspace.hpp"
#include "powergrad/kernels/launch.cuh"
#include "powergrad/kernels/vec.cuh"
#include "powergrad/math/dtype.hpp"
#include "powergrad/math/xent_math.hpp"
#include "powergrad/status.hpp"

POWERGRAD_NS_BEGIN
namespace device {

using powergrad::detail::XentJob;
using powergrad::detail::XentMode;
using powergrad::detail::XentWorkspace;

constexpr unsigned kFullMask = 0xFFFFFFFFu;
constexpr int kSmallGroupBlock = 256;  // G <= 32: 256 / G rows per block of 256 threads

// Threads per block and rows per block of a group size.
PG_HD constexpr int block_threads(int G) { return G <= 32 ? kSmallGroupBlock : G; }
PG_HD constexpr int rows_per_block(int G) { return G <= 32 ? kSmallGroupBlock / G : 1; }

// ---------------------------------------------------------------------------------------------
// Group-wide merge of RowStats. Every thread of the group ends with the same statistics.
// W <= 32 lanes (a power of two) form an aligned sub-group of the warp; the shuffles name only
// that sub-group's lanes, so sub-groups of one warp may be on different rows or paths.
// Which fields a mode merges (docs/design.md §2.3, §6): every mode the max, the two sums and the
// target term; the target mass `a` where it is summed per element (dense targets, shard
// statistics); `w` and `argmax` only for the shard statistics. Fields a mode does not merge are
// neither exchanged nor stored, so the other modes' kernels are what they were before the fields
// existed.
enum class MergeFields : int { kCore = 0, kMass = 1, kAll = 2 };

template <MergeFields F>
PG_DEVICE RowStats with_fields(RowStats s) {
  if constexpr (F == MergeFields::kCore) s.a = 0.f;
  if constexpr (F != MergeFields::kAll) {
    s.w = 0.f;
    s.argmax = 0;
  }
  return s;
}

template <int W, MergeFields F>
PG_DEVICE RowStats subwarp_merge(RowStats s, float a2) {
  const unsigned mask = W == 32 ? kFullMask : (((1u << W) - 1u) << (threadIdx.x & 31 & ~(W - 1)));
#pragma unroll
  for (int o = W / 2; o > 0; o >>= 1) {
    RowStats other = with_fields<F>(math::empty_stats());
    other.m = __shfl_xor_sync(mask, s.m, o);
    other.s = __shfl_xor_sync(mask, s.s, o);
    other.sa = __shfl_xor_sync(mask, s.sa, o);
    other.t = __shfl_xor_sync(mask, s.t, o);
    if constexpr (F != MergeFields::kCore) other.a = __shfl_xor_sync(mask, s.a, o);
    if constexpr (F == MergeFields::kAll) {
      other.w = __shfl_xor_sync(mask, s.w, o);
      other.argmax = static_cast<int64_t>(__shfl_xor_sync(mask, static_cast<long long>(s.argmax), o));
    }
    s = with_fields<F>(math::merge(s, other, a2));
  }
  // Shuffles exchange registers but do not order memory: the barrier makes every pass-1 read of
  // the sub-group (including the target column read by lane 0) happen before any in-place write.
  __syncwarp(mask);
  return s;
}

// The block-level exchange slot of one warp: only the fields of F are stored and loaded.
template <MergeFields F>
PG_DEVICE void store_fields(RowStats& slot, const RowStats& s) {
  slot.m = s.m;
  slot.s = s.s;
  slot.sa = s.sa;
  slot.t = s.t;
  if constexpr (F != MergeFields::kCore) slot.a = s.a;
  if constexpr (F == MergeFields::kAll) {
    slot.w = s.w;
    slot.argmax = s.argmax;
  }
}
template <MergeFields F>
PG_DEVICE RowStats load_fields(const RowStats& slot) {
  RowStats s = with_fields<F>(math::empty_stats());
  s.m = slot.m;
  s.s = slot.s;
  s.sa = slot.sa;
  s.t = slot.t;
  if constexpr (F != MergeFields::kCore) s.a = slot.a;
  if constexpr (F == MergeFields::kAll) {
    s.w = slot.w;
    s.argmax = slot.argmax;
  }
  return s;
}

template <int G, MergeFields F = MergeFields::kCore>
PG_DEVICE RowStats group_merge(RowStats s, float a2, RowStats* smem) {
  s = subwarp_merge<(G < 32 ? G : 32), F>(s, a2);
  if constexpr (G > 32) {
    constexpr int kWarps = G / 32;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) store_fields<F>(smem[warp], s);
    __syncthreads();
    s = lane < kWarps ? load_fields<F>(smem[lane]) : with_fields<F>(math::empty_stats());
    s = subwarp_merge<32, F>(s, a2);
    __syncthreads();  // smem is reused by the next row
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Per-row view of the targets.
template <class Tg>
struct DevRowTarget;

template <class Index>
struct DevRowTarget<ClassTargets<Index>> {
  int64_t yl;    // target column relative to this shard's first column
  bool ignored;  // target == ignore_index
  bool bad;      // neither ignored nor in [0, total_cols)
  template <class T>
  PG_DEVICE DevRowTarget(const XentJob<T, ClassTargets<Index>>& j, int64_t r) {
    const int64_t y = static_cast<int64_t>(j.p.targets.index[r]);
    ignored = (y == j.p.targets.ignore_index);
    bad = !ignored && (y < 0 || y >= j.p.total_cols);
    yl = y - j.p.col_offset;
  }
  // q of local column c.
  template <class T>
  PG_DEVICE float q(const XentJob<T, ClassTargets<Index>>& j, int64_t c) const {
    return (c == yl ? j.k.smooth_on : 0.f) + j.k.smooth_off;
  }
  template <class T, int V>
  PG_DEVICE void qvec(const XentJob<T, ClassTargets<Index>>& j, int64_t c0, float (&q)[V]) const {
    const int64_t rel = yl - c0;
#pragma unroll
    for (int e = 0; e < V; ++e) q[e] = (e == rel ? j.k.smooth_on : 0.f) + j.k.smooth_off;
  }
};

template <class TT>
struct DevRowTarget<DenseTargets<TT>> {
  const TT* row;
  bool ignored = false;
  bool bad = false;
  template <class T>
  PG_DEVICE DevRowTarget(const XentJob<T, DenseTargets<TT>>& j, int64_t r) : row(j.p.targets.prob + r * j.p.targets.ld) {}
  template <class T>
  PG_DEVICE float q(const XentJob<T, DenseTargets<TT>>& j, int64_t c) const {
    return math::dense_q(to_float(row[c]), j.k);
  }
  template <class T, int V>
  PG_DEVICE void qvec(const XentJob<T, DenseTargets<TT>>& j, int64_t c0, float (&q)[V]) const {
    const TT* p = row + c0;
    if (is_aligned16(p)) {
      unpack(load16(p), q, TT{});
#pragma unroll
      for (int e = 0; e < V; ++e) q[e] = math::dense_q(q[e], j.k);
    } else {
#pragma unroll
      for (int e = 0; e < V; ++e) q[e] = math::dense_q(to_float(p[e]), j.k);
    }
  }
};

template <class Tg>
constexpr bool kHardTargets = powergrad::detail::target_traits<Tg>::hard;

// ---------------------------------------------------------------------------------------------
// The row worker: everything one group does for one row.
// A class weight as the kernels use it: a negative, infinite or NaN weight becomes NaN, so that every
// row using it gets a NaN target mass, loss and gradient and is counted (docs/design.md §8).
PG_DEVICE float checked_weight(float w) { return (w >= 0.f && w <= 3.402823466e38f) ? w : __int_as_float(0x7fffffff); }

// OPT: the options of docs/design.md §2.5 (class weights, z-loss, softcap, argmax / correct / z_loss
// outputs) are compiled in. A kernel without them (OPT = false) is the plain one, instruction for
// instruction; the launcher picks OPT = true only when some option of the call is on.
template <class T, class Tg, int G, int CACHE, int SMEM, int BATCH, XentMode MODE, bool OPT = false>
struct RowWorker {
  static constexpr int V = Vec<T>::kSize;
  static constexpr int kBatch = BATCH;  // independent 16-byte loads in flight per thread (streamed part)
  static constexpr bool kOpt = OPT && MODE != XentMode::kHook;
  // Pass 1 reads a per-element value besides the logit: q (hook), the weighted target b (dense
  // targets), or, with options and class targets, the column's weight (1 without weights).
  static constexpr bool kNeedQInPass1 = (MODE == XentMode::kHook) || !kHardTargets<Tg> || kOpt;
  // The target mass A = sum b (docs/design.md §2.5): 1 for class targets, summed per element for
  // dense targets (a row need not sum to 1) and for weighted rows; the shard statistics also carry
  // w and the argmax, and so does every kernel with options (the argmax outputs).
  static constexpr bool kDenseMass = !kHardTargets<Tg> && MODE != XentMode::kHook;
  static constexpr MergeFields kFields = (MODE == XentMode::kStats || kOpt)
                                             ? MergeFields::kAll
                                             : (kDenseMass ? MergeFields::kMass : MergeFields::kCore);
  static constexpr bool kArgmax = MODE == XentMode::kStats || kOpt;

  const XentJob<T, Tg>& j;
  const int tid;  // thread index within the group
  int64_t r;
  const T* x;           // input row (logits, or the incoming gradient for the hook form)
  T* out;               // output row (may equal x)
  int head;             // scalar columns before the vector body
  int64_t nvec;         // 16-byte vectors in the body
  int64_t tail0;        // first column of the scalar tail
  bool out_vec;         // output shares the input's alignment
  float s_r;            // hook form: the incoming gradient's scale
  float mass = 1.f;     // dense targets: the row's target mass A (the gradient is g (A p' - q))
  float wy = 1.f;       // kOpt, class targets: the target column's checked weight when it is in this shard, else 0
  float lse = 0.f;      // kOpt: the row's lse (the z-loss gradient's ordinary softmax)
  float zl2 = 0.f;      // kOpt: 2 lambda lse (0 without a z-loss)
  uint4 cache[CACHE > 0 ? CACHE : 1];
  uint4* stage;         // SMEM > 0: this group's shared-memory slots (SMEM vectors per thread)

  PG_DEVICE RowWorker(const XentJob<T, Tg>& job, int t, uint4* st) : j(job), tid(t), stage(st) {}

  // Vectors [CACHE*G, (CACHE+SMEM)*G) of a row are kept in shared memory between the passes;
  // each thread reads back only the slots it wrote, so no barrier is needed.
  PG_DEVICE static bool staged(int64_t k) { return SMEM > 0 && k < static_cast<int64_t>(CACHE + SMEM) * G; }
  PG_DEVICE static int64_t stage_slot(int64_t k) { return k - static_cast<int64_t>(CACHE) * G; }

  PG_DEVICE void setup(int64_t row) {
    r = row;
    x = j.p.logits + r * j.p.ld;
    out = j.out.dlogits ? j.out.dlogits + r * j.out.ld_dlogits : nullptr;
    const int64_t C = j.p.cols;
    head = misalignment_elems(x);
    if (head > C) head = static_cast<int>(C);
    nvec = (C - head) / V;
    tail0 = head + nvec * V;
    out_vec = out != nullptr && is_aligned16(out + head);
  }

  // Number of scalar (head + tail) columns, and the column of scalar item i.
  PG_DEVICE int64_t n_scalar() const { return head + (j.p.cols - tail0); }
  PG_DEVICE int64_t scalar_col(int64_t i) const { return i < head ? i : tail0 + (i - head); }

  // Value the statistics run over.
  PG_DEVICE float zval(float v, float q) const {
    if constexpr (MODE == XentMode::kHook) {
      float p = v / s_r + q;
      p = p < 0.f ? 0.f : (p > 1.f ? 1.f : p);
      return __log2f(p) * math::kLn2;  // one MUFU.LG2; log(0) = -inf: a masked class
    } else {
      (void)q;
      if constexpr (kOpt) return j.k.softcap > 0.f ? math::softcapped(v, j.k) : v;
      return v;
    }
  }

  // Weight of local column c as the kernels use it (kOpt, weights given).
  PG_DEVICE float wcol(int64_t c) const { return checked_weight(j.p.weight[c]); }
  // Whether pass 1 of a class-target row needs each column's weight: the uniform part of b is
  // (eps / C) w_j, so only with weights and label smoothing.
  PG_DEVICE bool weights_per_column() const { return j.p.weight != nullptr && j.k.smooth_off != 0.f; }

  // The per-element value of pass 1 (kNeedQInPass1): q for the hook form; b = w q' for dense
  // targets; for class targets with options the column's weight (or 1), which pass 1 sums into
  // a and t and scales by eps / C once per thread.
  PG_DEVICE void p1vec(int64_t c0, const DevRowTarget<Tg>& tg, float (&q)[V]) const {
    if constexpr (kOpt && kHardTargets<Tg>) {
      const bool wpc = weights_per_column();
#pragma unroll
      for (int e = 0; e < V; ++e) q[e] = wpc ? wcol(c0 + e) : 1.f;
    } else {
      tg.template qvec<T, V>(j, c0, q);
      if constexpr (kOpt) {
        if (j.p.weight) {
#pragma unroll
          for (int e = 0; e < V; ++e) q[e] *= wcol(c0 + e);
        }
      }
    }
  }
  PG_DEVICE float p1scalar(int64_t c, const DevRowTarget<Tg>& tg) const {
    if constexpr (kOpt && kHardTargets<Tg>) {
      return weights_per_column() ? wcol(c) : 1.f;
    } else {
      const float q = tg.q(j, c);
      if constexpr (kOpt) {
        if (j.p.weight) return q * wcol(c);
      }
      return q;
    }
  }
  // kOpt, pass 2: the weighted target b of column c (docs/design.md §2.5).
  PG_DEVICE float b_of(int64_t c, const DevRowTarget<Tg>& tg) const {
    if constexpr (kHardTargets<Tg>) {
      const float off = j.k.smooth_off == 0.f ? 0.f : (j.p.weight ? j.k.smooth_off * wcol(c) : j.k.smooth_off);
      return (c == tg.yl ? j.k.smooth_on * wy : 0.f) + off;
    } else {
      return p1scalar(c, tg);
    }
  }

  // Pass 1 on V values already converted to fp32.
  PG_DEVICE void stats_vec(RowStats& st, const float (&v)[V], int64_t c0, const DevRowTarget<Tg>& tg) const {
    float q[V];
    if constexpr (kNeedQInPass1) p1vec(c0, tg, q);
    float z[V];
    float bm = math::neg_inf();
    int be = 0;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      z[e] = zval(v[e], kNeedQInPass1 ? q[e] : 0.f);
      if constexpr (kArgmax) {
        if (z[e] > bm) be = e;  // the first maximum of the vector (NaN never is one)
      }
      bm = fmaxf(bm, z[e]);
    }
    if constexpr (kArgmax) note_max(st, bm, c0 + be);
    const float ref = math::rescale_to(st, bm, j.k);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      math::accumulate(st, z[e], ref, j.k);
      add_t(st, z[e], kNeedQInPass1 ? q[e] : 0.f);
    }
  }

  // Target dot product: dense targets add q z; hard targets add plain z here (the uniform eps/C
  // part is applied once per thread in pass1, which saves a multiply and a select per element).
  // With options, class targets sum w_j z_j and w_j (q = w_j, or 1 without weights) like dense ones.
  PG_DEVICE static void add_t(RowStats& st, float z, float q) {
    if constexpr (MODE == XentMode::kHook) {
      return;
    } else if constexpr (kHardTargets<Tg> && !kOpt) {
      st.t += z;
    } else {
      st.t += math::q_times_z(q, z);
      st.a += q;
    }
  }

  // Shard statistics: the first column of the maximum (global index) before st.m moves to `bm`.
  // A thread visits its columns out of order (vector body, then the scalar head and tail), so an
  // equal maximum keeps the smaller column.
  PG_DEVICE void note_max(RowStats& st, float bm, int64_t c) const {
    const int64_t g = c + j.p.col_offset;
    if (bm > st.m || (bm == st.m && g < st.argmax)) st.argmax = g;
  }

  PG_DEVICE void stats_scalar(RowStats& st, int64_t c, const DevRowTarget<Tg>& tg) const {
    const float q = kNeedQInPass1 ? p1scalar(c, tg) : 0.f;
    const float z = zval(to_float(x[c]), q);
    if constexpr (kArgmax) note_max(st, z, c);
    const float ref = math::rescale_to(st, z, j.k);
    math::accumulate(st, z, ref, j.k);
    add_t(st, z, q);
  }

  // Pass 1 over the whole row; leaves this thread's first CACHE vectors in registers.
  PG_DEVICE RowStats pass1(const DevRowTarget<Tg>& tg) {
    RowStats st = math::empty_stats();
    float v[V];
#pragma unroll
    for (int i = 0; i < CACHE; ++i) {
      const int64_t k = tid + static_cast<int64_t>(i) * G;
      if (k < nvec) cache[i] = load16(x + head + k * V);
    }
#pragma unroll
    for (int i = 0; i < CACHE; ++i) {
      const int64_t k = tid + static_cast<int64_t>(i) * G;
      if (k < nvec) {
        unpack(cache[i], v, T{});
        stats_vec(st, v, head + k * V, tg);
      }
    }
    // Streamed part: batches of kBatch independent 16-byte loads in flight per thread.
    for (int64_t k0 = tid + static_cast<int64_t>(CACHE) * G; k0 < nvec; k0 += kBatch * G) {
      uint4 buf[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int64_t k = k0 + b * G;
        if (k < nvec) buf[b] = load16(x + head + k * V);
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int64_t k = k0 + b * G;
        if (k < nvec) {
          if (staged(k)) stage[stage_slot(k)] = buf[b];
          unpack(buf[b], v, T{});
          stats_vec(st, v, head + k * V, tg);
        }
      }
    }
    for (int64_t i = tid; i < n_scalar(); i += G) stats_scalar(st, scalar_col(i), tg);
    // The target column's (1 - eps) z_y, read here, before the group's barrier: an in-place pass 2
    // of another thread may overwrite it right after.
    if constexpr (kHardTargets<Tg> && MODE != XentMode::kHook && !kOpt) {
      st.t = math::q_times_z(j.k.smooth_off, st.t);  // eps/C * sum z (0 when eps = 0, even if -inf)
      if (tid == 0 && !tg.ignored && !tg.bad && tg.yl >= 0 && tg.yl < j.p.cols)
        st.t += math::q_times_z(j.k.smooth_on, to_float(x[tg.yl]));
    } else if constexpr (kHardTargets<Tg> && kOpt) {
      // t = (eps/C) sum w_j zc_j + (1 - eps) w_y zc_y and a = (eps/C) sum w_j + (1 - eps) w_y
      // (w = 1 without weights; wy = 0 when the target is not in this shard).
      st.t = math::q_times_z(j.k.smooth_off, st.t);
      st.a *= j.k.smooth_off;
      if (tid == 0 && !tg.ignored && !tg.bad && tg.yl >= 0 && tg.yl < j.p.cols) {
        const float on = j.k.smooth_on * wy;
        st.t += math::q_times_z(on, zval(to_float(x[tg.yl]), 0.f));
        st.a += on;
      }
    }
    return st;
  }

  // Pass 2 element: the output value for input value v at column c with target mass q.
  // p' = exp2((z - ref) alpha_log2e - c2); out = g (p' - q).
  PG_DEVICE float out_elem(float v, float q, float g, float ref, float c2) const {
    const float z = zval(v, q);
    const float p = math::pgt_prob(z, j.k.alpha_log2e, ref, c2);
    if constexpr (kDenseMass) {
      return math::grad_elem(g, mass * p, q);
    } else {
      return math::grad_elem(g, p, q);
    }
  }

  // kOpt, pass 2 element (docs/design.md §2.5): g (A p'_j - b_j + 2 lambda lse p_j) (1 - tanh^2(z_j / c)),
  // formed in fp32 before the single final rounding; p (the ordinary softmax) only with a z-loss.
  PG_DEVICE float opt_elem(float v, float b, float g, float ref, float c2) const {
    float zc = v, slope = 1.f;
    const bool capped = j.k.softcap > 0.f;
    if (capped) math::softcap_with_slope(v, j.k, zc, slope);
    const float pp = math::pgt_prob(zc, j.k.alpha_log2e, ref, c2);
    float p = 0.f;
    if (zl2 != 0.f) p = zc == math::neg_inf() ? 0.f : math::fast_exp2((zc - lse) * math::kLog2e);
    float d = math::option_grad(mass, pp, b, zl2, p);
    if (capped) d *= slope;
    return g * d;
  }

  PG_DEVICE void write_vec(const uint4& raw, int64_t k, float g, float ref, float c2, const DevRowTarget<Tg>& tg) {
    float v[V];
    unpack(raw, v, T{});
    const int64_t c0 = head + k * V;
    if constexpr (kOpt) {
#pragma unroll
      for (int e = 0; e < V; ++e) v[e] = opt_elem(v[e], b_of(c0 + e, tg), g, ref, c2);
    } else if constexpr (kHardTargets<Tg> && MODE != XentMode::kHook) {
      // Hard targets: q = eps/C everywhere but the target column. One FFMA per element; the target
      // column (in at most one vector of the row) is formed as g (p' - q_y) in fp32, so that
      // p'_y - q_y does not cancel after rounding as p'_y -> 1.
      const float g_off = g * j.k.smooth_off;
      const int64_t rel = tg.yl - c0;
      float p[V];
#pragma unroll
      for (int e = 0; e < V; ++e) {
        p[e] = math::pgt_prob(v[e], j.k.alpha_log2e, ref, c2);
        v[e] = fmaf(g, p[e], -g_off);
      }
      if (rel >= 0 && rel < V) {
        const float q_y = j.k.smooth_on + j.k.smooth_off;
#pragma unroll
        for (int e = 0; e < V; ++e)
          if (e == rel) v[e] = math::grad_elem(g, p[e], q_y);
      }
    } else {
      float q[V];
      tg.template qvec<T, V>(j, c0, q);
#pragma unroll
      for (int e = 0; e < V; ++e) v[e] = out_elem(v[e], q[e], g, ref, c2);
    }
    if (out_vec) {
      store16_stream(out + c0, pack(v, T{}));
    } else {
#pragma unroll
      for (int e = 0; e < V; ++e) out[c0 + e] = from_float<T>(v[e]);
    }
  }

  // Pass 2: writes every column of the output row. `cached` says whether pass 1 ran (so the first
  // CACHE vectors are in registers).
  PG_DEVICE void pass2(bool cached, float g, float ref, float c2, const DevRowTarget<Tg>& tg) {
#pragma unroll
    for (int i = 0; i < CACHE; ++i) {
      const int64_t k = tid + static_cast<int64_t>(i) * G;
      if (k < nvec) {
        if (!cached) cache[i] = load16_last(x + head + k * V);
      }
    }
#pragma unroll
    for (int i = 0; i < CACHE; ++i) {
      const int64_t k = tid + static_cast<int64_t>(i) * G;
      if (k < nvec) write_vec(cache[i], k, g, ref, c2, tg);
    }
    for (int64_t k0 = tid + static_cast<int64_t>(CACHE) * G; k0 < nvec; k0 += kBatch * G) {
      uint4 buf[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int64_t k = k0 + b * G;
        if (k < nvec) buf[b] = (cached && staged(k)) ? stage[stage_slot(k)] : load16_last(x + head + k * V);
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int64_t k = k0 + b * G;
        if (k < nvec) write_vec(buf[b], k, g, ref, c2, tg);
      }
    }
    for (int64_t i = tid; i < n_scalar(); i += G) {
      const int64_t c = scalar_col(i);
      if constexpr (kOpt) {
        out[c] = from_float<T>(opt_elem(to_float(x[c]), b_of(c, tg), g, ref, c2));
      } else {
        const float q = tg.q(j, c);
        out[c] = from_float<T>(out_elem(to_float(x[c]), q, g, ref, c2));
      }
    }
  }

  // kOpt with weights: a row whose target mass A is NaN used a bad weight (checked_weight made it
  // NaN, and with it the row's loss and gradient); it is counted with the bad targets
  // (docs/design.md §8), once per row and kernel.
  PG_DEVICE void count_bad_weight(const DevRowTarget<Tg>& tg, float A) const {
    if (j.p.weight && tid == 0 && j.p.bad_target_count && !tg.ignored && !tg.bad && isnan(A))
      atomicAdd(j.p.bad_target_count, 1);
  }

  // Writes `value` to every column of the output row (ignored rows: 0; invalid rows: NaN).
  PG_DEVICE void fill(float value) {
    const T vt = from_float<T>(value);
    for (int64_t c = tid; c < j.p.cols; c += G) out[c] = vt;
  }
};

// ---------------------------------------------------------------------------------------------
template <class T, class Tg, int G, int CACHE, int SMEM, int BATCH, int MIN_BLOCKS, XentMode MODE, bool OPT = false>
__global__ void __launch_bounds__(block_threads(G), MIN_BLOCKS)
    PG_KERNEL_VISIBILITY xent_rows_kernel(const __grid_constant__ XentJob<T, Tg> j, float* __restrict__ ws) {
  constexpr int kRowsPerBlock = rows_per_block(G);
  __shared__ RowStats smem[G > 32 ? G / 32 : 1];
  const int tid = G <= 32 ? (threadIdx.x & (G - 1)) : threadIdx.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (G <= 32 ? threadIdx.x / G : 0);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
  const float a2 = j.k.alpha_log2e;
  const bool reduced = j.p.reduction != Reduction::kNone;
  // Per-row losses: the output itself (kNone) or the workspace's row-loss array (reduced).
  float* row_loss = reduced ? (j.out.loss ? XentWorkspace::row_loss(ws) : nullptr) : j.out.loss;

  extern __shared__ uint4 stage_smem[];  // SMEM vectors per thread (dynamic; 0 bytes when SMEM = 0)
  uint4* stage = SMEM > 0 ? stage_smem + (G <= 32 ? (threadIdx.x / G) * G * SMEM : 0) : nullptr;
  using W = RowWorker<T, Tg, G, CACHE, SMEM, BATCH, MODE, OPT>;
  W w(j, tid, stage);
  for (int64_t r = first; r < j.p.rows; r += stride) {
    w.setup(r);
    const DevRowTarget<Tg> tg(j, r);
    if (tg.bad && tid == 0 && j.p.bad_target_count) atomicAdd(j.p.bad_target_count, 1);
    const float nan = __int_as_float(0x7fffffff);
    if constexpr (W::kOpt && kHardTargets<Tg>) {
      const bool in_shard = !tg.ignored && !tg.bad && tg.yl >= 0 && tg.yl < j.p.cols;
      w.wy = !in_shard ? 0.f : (j.p.weight ? checked_weight(j.p.weight[tg.yl]) : 1.f);
    }

    if constexpr (MODE == XentMode::kHook) {
      w.s_r = j.hook_scale.scale * (j.hook_scale.row_scale ? j.hook_scale.row_scale[r] : 1.f);
      if (tg.ignored || w.s_r == 0.f) {
        w.fill(0.f);
        continue;
      }
      if (tg.bad || !(w.s_r > 0.f) || isinf(w.s_r)) {
        w.fill(nan);
        continue;
      }
      const RowStats st = group_merge<G>(w.pass1(tg), a2, smem);
      w.pass2(true, w.s_r, math::safe_ref(st.m), math::fast_log2(st.sa), tg);
      continue;
    } else {
      float ref = 0.f, c2 = 0.f;
      bool cached = false;
      if constexpr (MODE == XentMode::kApplySaved) {
        c2 = j.lse_alpha_in[r] * math::kLog2e;
        if constexpr (W::kOpt) {
          // The target mass from the targets and weights (docs/design.md §2.5; the API runs kFused
          // with a z-loss, so zl2 stays 0): dense targets sum b = w q'; weighted class targets
          // (1 - eps) w_y + (eps / C) sum_j w_j; class targets without weights 1.
          float A = 1.f;
          if constexpr (!kHardTargets<Tg>) {
            RowStats part = with_fields<MergeFields::kMass>(math::empty_stats());
            for (int64_t c = tid; c < j.p.cols; c += G) part.a += w.p1scalar(c, tg);
            A = group_merge<G, MergeFields::kMass>(part, a2, smem).a;
          } else if (j.p.weight) {
            A = j.k.smooth_on * w.wy;
            if (w.weights_per_column()) {
              RowStats part = with_fields<MergeFields::kMass>(math::empty_stats());
              for (int64_t c = tid; c < j.p.cols; c += G) part.a += w.wcol(c);
              A += j.k.smooth_off * group_merge<G, MergeFields::kMass>(part, a2, smem).a;
            }
          }
          w.mass = A;
          w.count_bad_weight(tg, A);
        } else if constexpr (W::kDenseMass) {
          // Dense targets: A = sum q before the write (one read of the target row; the fused op
          // gets it from its statistics pass). Summed through the group merge's target mass.
          RowStats part = with_fields<MergeFields::kMass>(math::empty_stats());
          for (int64_t c = tid; c < j.p.cols; c += G) part.a += tg.q(j, c);
          w.mass = group_merge<G, MergeFields::kMass>(part, a2, smem).a;
        }
      } else {
        RowStats st;
        if constexpr (MODE == XentMode::kApplyMerged) {
          st = j.stats_in[r];
        } else {
          st = group_merge<G, W::kFields>(w.pass1(tg), a2, smem);
          cached = true;
          if constexpr (W::kOpt) {
            if (tg.ignored) st.a = 0.f;  // an ignored row has no target (docs/design.md §2.3)
          }
        }
        if constexpr (MODE == XentMode::kStats) {
          if (tid == 0) {
            if constexpr (W::kOpt) {
              // a and t as pass 1 summed them (weights, softcap); w = the target's weight when the
              // target column is in this shard.
              if constexpr (kHardTargets<Tg>) {
                st.w = w.wy;
              } else {
                st.w = 0.f;
              }
            } else if constexpr (kHardTargets<Tg>) {
              // Class targets: a = (1 - eps) [y in shard] + (eps / C) cols, w = [y in shard]; an
              // ignored row has no target (docs/design.md §2.3).
              const bool in_shard = !tg.ignored && !tg.bad && tg.yl >= 0 && tg.yl < j.p.cols;
              st.a = tg.ignored ? 0.f
                                : (in_shard ? j.k.smooth_on : 0.f) + j.k.smooth_off * static_cast<float>(j.p.cols);
              st.w = in_shard ? 1.f : 0.f;
            } else {
              st.w = 0.f;
            }
            j.stats_out[r] = st;
          }
          if constexpr (W::kOpt) w.count_bad_weight(tg, st.a);
          continue;
        }
        ref = math::safe_ref(st.m);
        c2 = math::fast_log2(st.sa);
        if constexpr (W::kOpt) {
          // A = 1 exactly for class targets without weights (the statistics' a is 1 up to rounding).
          w.mass = (!kHardTargets<Tg> || j.p.weight) ? st.a : 1.f;
          w.lse = math::lse_of(st);
          w.zl2 = 2.f * j.k.z_loss_scale * w.lse;
          w.count_bad_weight(tg, w.mass);
        } else if constexpr (W::kDenseMass) {
          w.mass = st.a;
        }
        if (tid == 0) {
          const float lse = math::lse_of(st);
          if (j.out.lse) j.out.lse[r] = lse;
          if (j.out.lse_alpha) j.out.lse_alpha[r] = math::lse_alpha_of(st, j.k.alpha);
          float loss_r;
          if constexpr (W::kOpt) {
            const float lambda = j.k.z_loss_scale;
            const float zrow = lambda == 0.f ? 0.f : lambda * lse * lse;
            loss_r = math::row_loss_mass(lse, w.mass, st) + zrow;
            float* zl = reduced ? (j.out.z_loss ? XentWorkspace::row_z_loss(ws, j.p.rows) : nullptr) : j.out.z_loss;
            if (zl) zl[r] = tg.ignored ? 0.f : (tg.bad ? nan : zrow);
            if (j.out.argmax) j.out.argmax[r] = st.argmax;
            if constexpr (kHardTargets<Tg>) {
              if (j.out.correct)
                j.out.correct[r] = (!tg.ignored && !tg.bad && st.argmax == tg.yl + j.p.col_offset) ? 1 : 0;
            }
          } else if constexpr (W::kDenseMass) {
            loss_r = math::row_loss_mass(lse, st.a, st);
          } else {
            loss_r = math::row_loss_of(lse, st);
          }
          if (row_loss) row_loss[r] = tg.ignored ? 0.f : (tg.bad ? nan : loss_r);
        }
      }
      if (!w.out) continue;
      if (tg.ignored || tg.bad) {
        w.fill(tg.ignored ? 0.f : nan);
        continue;
      }
      float g = j.up.scale * (j.up.values ? j.up.values[reduced ? 0 : r] : 1.f);
      if (j.p.reduction == Reduction::kMean) {
        const float n_valid = *XentWorkspace::mean_divisor(ws);
        if constexpr (W::kOpt) {
          // A weighted denominator that a bad weight made NaN makes every row NaN.
          g = n_valid > 0.f ? g / n_valid : (n_valid == 0.f ? 0.f : nan);
        } else {
          g = n_valid > 0.f ? g / n_valid : 0.f;
        }
      }
      w.pass2(cached, g, ref, c2, tg);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// n_valid (rows whose target is not ignore_index), in one block: deterministic. Writes the exact
// int64 count and its one conversion to float (the kMean divisor of the row kernels).
template <class Tg>
__global__ void __launch_bounds__(1024) PG_KERNEL_VISIBILITY xent_count_valid_kernel(Tg targets, int64_t rows,
                                                                                      float* ws) {
  int64_t n = 0;
  if constexpr (kHardTargets<Tg>) {
    // Unrolled so that several independent loads are in flight: one SM reads every target.
#pragma unroll 8
    for (int64_t r = threadIdx.x; r < rows; r += blockDim.x)
      n += static_cast<int64_t>(targets.index[r]) != targets.ignore_index;
  } else {
    n = threadIdx.x == 0 ? rows : 0;
  }
  using Reduce = cub::BlockReduce<long long, 1024>;
  __shared__ typename Reduce::TempStorage tmp;
  const long long total = Reduce(tmp).Sum(static_cast<long long>(n));
  if (threadIdx.x == 0) {
    *XentWorkspace::valid_count(ws) = static_cast<int64_t>(total);
    *XentWorkspace::mean_divisor(ws) = static_cast<float>(total);
  }
}

// The weighted kMean denominator D = sum of w_y over the non-ignored rows (class targets with
// weights, docs/design.md §2.5), in one block and in double: from the weights of whole rows, or from
// the merged statistics' w in the split form. Writes D (double) and its one conversion to float (the
// divisor of the row kernels). A bad weight (checked_weight) makes D NaN, and so every row of a
// weighted mean NaN; a row whose class index is out of range adds nothing (it is NaN and counted).
template <class Tg>
__global__ void __launch_bounds__(1024) PG_KERNEL_VISIBILITY xent_weight_sum_kernel(Tg targets, int64_t rows,
                                                                                     int64_t cols,
                                                                                     const float* weight,
                                                                                     const RowStats* merged, float* ws) {
  double d = 0.0;
#pragma unroll 4
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    const int64_t y = static_cast<int64_t>(targets.index[r]);
    if (y == targets.ignore_index) continue;
    if (merged) {
      d += static_cast<double>(merged[r].w);
    } else if (y >= 0 && y < cols) {
      d += static_cast<double>(checked_weight(weight[y]));
    }
  }
  using Reduce = cub::BlockReduce<double, 1024>;
  __shared__ typename Reduce::TempStorage tmp;
  const double total = Reduce(tmp).Sum(d);
  if (threadIdx.x == 0) {
    *XentWorkspace::weight_sum(ws) = total;
    *XentWorkspace::mean_divisor(ws) = static_cast<float>(total);
  }
}

// Sum of the workspace's row losses in a fixed order; loss = sum (kSum) or sum / n_valid (kMean: the
// exact int64 count, the division in double as on the host). KIND bit 0: divide by the weighted
// denominator D (double) instead; bit 1: sum the row z-losses instead of the row losses.
// (Kernels in this header are templates, even where nothing varies, so that several translation
// units can include it without multiple definitions.)
template <int KIND = 0>
__global__ void __launch_bounds__(1024) PG_KERNEL_VISIBILITY xent_reduce_loss_kernel(const float* ws, int64_t rows,
                                                                                      bool mean, float* loss) {
  const float* vals = ws + XentWorkspace::kRowLossIndex + ((KIND & 2) ? rows : 0);
  float acc = 0.f;
  // Unrolled for loads in flight; the additions stay in the same (fixed) order.
#pragma unroll 8
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) acc += vals[r];
  using Reduce = cub::BlockReduce<float, 1024>;
  __shared__ typename Reduce::TempStorage tmp;
  const float total = Reduce(tmp).Sum(acc);
  if (threadIdx.x == 0) {
    float l = total;
    if (mean) {
      if constexpr ((KIND & 1) != 0) {
        const double d = *XentWorkspace::weight_sum(ws);
        // NaN (a bad weight) stays NaN; D = 0 gives 0 (docs/design.md §2.5).
        l = d > 0.0 ? static_cast<float>(static_cast<double>(total) / d) : (d == 0.0 ? 0.f : __int_as_float(0x7fffffff));
      } else {
        const int64_t n_valid = *XentWorkspace::valid_count(ws);
        l = n_valid > 0 ? static_cast<float>(static_cast<double>(total) / static_cast<double>(n_valid)) : 0.f;
      }
    }
    loss[0] = l;
  }
}

// Merges [shards][rows] statistics in shard order, a thread per row.
template <int kUnused = 0>
__global__ void PG_KERNEL_VISIBILITY xent_merge_stats_kernel(const RowStats* __restrict__ parts, int64_t shards,
                                                             int64_t rows, float a2, RowStats* __restrict__ merged) {
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    RowStats acc = parts[r];
    for (int64_t k = 1; k < shards; ++k) acc = math::merge(acc, parts[k * rows + r], a2);
    merged[r] = acc;
  }
}

// ---------------------------------------------------------------------------------------------
// Launchers.

inline Status zero_floats(float* p, int64_t n, stream_t stream) {
  const cudaError_t e = cudaMemsetAsync(p, 0, static_cast<size_t>(n) * sizeof(float), stream);
  if (e != cudaSuccess) return powergrad::detail::fail(Status::kCudaError, "cudaMemsetAsync: %s", cudaGetErrorString(e));
  return Status::kSuccess;
}

constexpr int64_t kMaxGrid = int64_t(1) << 20;  // rows beyond this are walked by a grid-stride loop

// One launch of the row kernel with an explicit configuration: G threads per row, CACHE vectors
// per thread kept in registers, SMEM more per thread kept in shared memory, MIN_BLOCKS resident
// blocks per SM asked of the compiler, BATCH loads in flight per thread in the streamed part (by
// default 2 where the register budget is 64 per thread, else 4). The tuning sandbox (dev/)
// calls this directly.
template <class T, class Tg, XentMode MODE, int G, int CACHE, int MIN_BLOCKS, int SMEM = 0,
          int BATCH = (block_threads(G) * MIN_BLOCKS >= 1024 ? 2 : 4), bool OPT = false>
Status launch_rows_config(const XentJob<T, Tg>& j, float* ws, stream_t stream) {
  constexpr int kThreads = block_threads(G);
  constexpr size_t kSmemBytes = static_cast<size_t>(SMEM) * kThreads * sizeof(uint4);
  auto kernel = xent_rows_kernel<T, Tg, G, CACHE, SMEM, BATCH, MIN_BLOCKS, MODE, OPT>;
  if constexpr (kSmemBytes > 48 * 1024) {
    // Raising the dynamic shared-memory limit is a function attribute (per device), not a stream
    // operation: legal while a graph is being captured. Only tuning configurations use it.
    const cudaError_t attr =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmemBytes));
    if (attr != cudaSuccess)
      return powergrad::detail::fail(Status::kCudaError, "cudaFuncSetAttribute(%zu bytes of shared memory): %s",
                                     kSmemBytes, cudaGetErrorString(attr));
  }
  const int64_t blocks = (j.p.rows + rows_per_block(G) - 1) / rows_per_block(G);
  const unsigned grid = static_cast<unsigned>(blocks < kMaxGrid ? blocks : kMaxGrid);
  kernel<<<grid, kThreads, kSmemBytes, stream>>>(j, ws);
  return check_launch("xent_rows_kernel");
}

// ---------------------------------------------------------------------------------------------
// Named launch policies of the row kernel (in the manner of CUB's tuning policies and quack's
// threads-per-row table), one per band of row widths.

// One launch configuration of xent_rows_kernel.
struct RowPolicy {
  int threads_per_row;  // G: 4-32 (a sub-warp or warp per row, 256 / G rows per block) or 256-1024 (a block)
  int reg_vecs;         // CACHE: 16-byte vectors per thread kept in registers between the two passes
  int smem_vecs;        // SMEM: further vectors per thread kept in shared memory (0: re-read from L2)
  int loads_in_flight;  // BATCH: independent 16-byte loads per thread in the streamed part
  int min_blocks;       // MIN_BLOCKS: resident blocks per SM asked of the compiler (__launch_bounds__)
};

// One band of row widths: rows of at most max_vecs 16-byte vectors (row_vecs below) run `stats` in
// the modes with a statistics pass (fused, stats, hook) and `apply` in the two apply modes, which
// have no statistics pass and so their own optimum.
struct RowBand {
  int64_t max_vecs;  // inclusive upper end; the last band is unbounded
  RowPolicy stats;
  RowPolicy apply;
};

constexpr int64_t kUnboundedVecs = INT64_MAX;

// Chosen from the configuration sweeps of dev/xent_variants.cu on an H100 (bench/results/
// 2026-11-26-h100/sweeps/{run2,run3,final}.txt; times below are run3's, bf16, ms). Overall: occupancy and loads in
// flight beat keeping rows in registers at every width, and staging rows in shared memory gained
// little (the L2 re-read is cheap), so no shipped policy uses shared memory. Columns per band are
// for bf16 (V = 8 per vector; fp32 has V = 4, so half as many columns).
//                        stats modes {G, reg, smem, loads, minb}   apply modes
constexpr RowBand kRowBands[] = {
    // <= 31 cols: 4 threads per row, 64 rows per block (65536x10 fused: 0.016 vs 0.024 for 8 threads).
    {4, {4, 1, 0, 2, 4}, {4, 1, 0, 2, 4}},
    // <= 127 cols: 8 threads per row. (At 65536x100 the 4-thread policy measured faster, fused 0.019
    // vs 0.026, apply 0.015 vs 0.017: a candidate for re-tuning, not applied without a new sweep.)
    {16, {8, 2, 0, 2, 4}, {8, 2, 0, 2, 4}},
    // <= 1023 cols: 16 threads per row for the stats modes (65536x1000 fused: 0.122 vs 0.128 for a
    // warp); a warp with 4 cached vectors and 3 blocks per SM for apply (0.103 vs 0.104).
    {128, {16, 2, 0, 2, 4}, {32, 4, 0, 4, 3}},
    // <= 2047 cols: a warp per row, 2 vectors per lane, 4 blocks per SM (65536x2048 fused: 0.223 vs
    // 0.260 with 4 vectors per lane; apply 0.192).
    {256, {32, 2, 0, 2, 4}, {32, 2, 0, 2, 4}},
    // <= 32767 cols: a block of 256 per row, 4 cached vectors, 4 blocks per SM; 4 loads in flight
    // for the stats modes (8192x32000 fused: 0.407 vs 0.411 with 2), 2 for apply (0.368 vs 0.378).
    {4096, {256, 4, 0, 4, 4}, {256, 4, 0, 2, 4}},
    // <= 65535 cols: a block of 512 per row, 2 blocks per SM; 1 cached vector for the stats modes
    // (8192x50257 fused: 0.621 vs 0.659 with 2), 4 for apply (0.650; run3 also measured 0.642 with
    // 2 and 0.594 for a 1024-thread block with 8 loads: a candidate for re-tuning).
    {8192, {512, 1, 0, 4, 2}, {512, 4, 0, 4, 2}},
    // longer: a block of 1024 per row, one row per SM (~32 MB of rows re-read from L2 at 128k bf16
    // columns, inside the H100's 50 MB); the stats modes cache nothing and keep 8 loads in flight
    // (8192x128256 fused: 1.580 vs 1.641 with 4), apply caches 1 vector with 4 loads (1.434).
    {kUnboundedVecs, {1024, 0, 0, 8, 1}, {1024, 1, 0, 4, 1}},
};
constexpr int kNumRowBands = static_cast<int>(sizeof(kRowBands) / sizeof(kRowBands[0]));

constexpr bool is_apply_mode(XentMode m) { return m == XentMode::kApplyMerged || m == XentMode::kApplySaved; }

template <XentMode MODE>
constexpr RowPolicy row_policy(int band) {
  return is_apply_mode(MODE) ? kRowBands[band].apply : kRowBands[band].stats;
}

// Width of a row in 16-byte vectors for the band lookup: cols / V + 1, the most vectors a row of
// `cols` elements can touch whatever its alignment (a row that does not start 16-byte aligned, as
// with an odd ld or an offset pointer, spans one vector more than an aligned one). It is an upper
// bound of the kernel's vector body (RowWorker::nvec <= cols / V), so one shape picks one policy
// for every row alignment.
template <class T>
PG_HD constexpr int64_t row_vecs(int64_t cols) {
  return cols / Vec<T>::kSize + 1;
}

// The policy of the kernels with options (OPT) in a band: the band's threads and blocks, nothing
// cached in registers and half the loads in flight (at least one). The options' per-element work (a
// tanh, the weights, one more exp2) needs the registers: with the plain policy most OPT kernels spill
// (bf16, sm_90: stack frames of 32-144 bytes); with this one none of the bf16 class-target kernels
// does (docs/performance.md). Not tuned on a GPU.
constexpr RowPolicy options_policy(RowPolicy p) {
  p.reg_vecs = 0;
  p.smem_vecs = 0;
  p.loads_in_flight = p.loads_in_flight > 1 ? p.loads_in_flight / 2 : 1;
  return p;
}

// Launches the policy of the first band (from BAND on) that holds rows of `vecs` vectors.
template <class T, class Tg, XentMode MODE, bool OPT = false, int BAND = 0>
Status launch_rows_band(const XentJob<T, Tg>& j, int64_t vecs, float* ws, stream_t stream) {
  if constexpr (BAND + 1 < kNumRowBands) {
    if (vecs > kRowBands[BAND].max_vecs) return launch_rows_band<T, Tg, MODE, OPT, BAND + 1>(j, vecs, ws, stream);
  }
  constexpr RowPolicy P = OPT ? options_policy(row_policy<MODE>(BAND)) : row_policy<MODE>(BAND);
  return launch_rows_config<T, Tg, MODE, P.threads_per_row, P.reg_vecs, P.min_blocks, P.smem_vecs,
                            P.loads_in_flight, OPT>(j, ws, stream);
}

// Whether a job uses any option of docs/design.md §2.5 (then the kernels with OPT = true run; the
// hook form has none: the API refuses them). The statistics kernels ignore the z-loss.
template <XentMode MODE, class T, class Tg>
bool xent_job_uses_options(const XentJob<T, Tg>& j) {
  if (MODE == XentMode::kHook) return false;
  return j.p.weight != nullptr || j.k.softcap > 0.f || (MODE != XentMode::kStats && j.k.z_loss_scale != 0.f) ||
         j.out.z_loss != nullptr || j.out.argmax != nullptr || j.out.correct != nullptr;
}

template <class T, class Tg, XentMode MODE>
Status launch_rows(const XentJob<T, Tg>& j, float* ws, stream_t stream) {
  if constexpr (MODE != XentMode::kHook) {
    if (xent_job_uses_options<MODE>(j)) return launch_rows_band<T, Tg, MODE, true>(j, row_vecs<T>(j.p.cols), ws, stream);
  }
  return launch_rows_band<T, Tg, MODE>(j, row_vecs<T>(j.p.cols), ws, stream);
}

// Runs one validated job of mode MODE (== j.mode) on device memory (asynchronous on `stream`).
template <XentMode MODE, class T, class Tg>
Status xent_run(const XentJob<T, Tg>& j, void* workspace, size_t, stream_t stream) {
  float* ws = static_cast<float*>(workspace);
  const bool use_ws = powergrad::detail::xent_job_needs_workspace(j);
  const bool mean = j.p.reduction == Reduction::kMean;
  // Class weights with class targets: kMean divides by D = sum w_y (docs/design.md §2.5).
  const bool weighted_mean = kHardTargets<Tg> && mean && j.p.weight != nullptr;
  if (use_ws && mean) {
    if constexpr (kHardTargets<Tg>) {
      if (weighted_mean) {
        xent_weight_sum_kernel<Tg><<<1, 1024, 0, stream>>>(
            j.p.targets, j.p.rows, j.p.cols, j.p.weight, MODE == XentMode::kApplyMerged ? j.stats_in : nullptr, ws);
        const Status s = check_launch("xent_weight_sum_kernel");
        if (s != Status::kSuccess) return s;
      }
    }
    if (!weighted_mean) {
      xent_count_valid_kernel<Tg><<<1, 1024, 0, stream>>>(j.p.targets, j.p.rows, ws);
      const Status s = check_launch("xent_count_valid_kernel");
      if (s != Status::kSuccess) return s;
    }
  }
  const Status s = launch_rows<T, Tg, MODE>(j, ws, stream);
  if (s != Status::kSuccess) return s;
  constexpr bool kWritesLoss = MODE == XentMode::kFused || MODE == XentMode::kApplyMerged;
  if (kWritesLoss && j.out.loss && j.p.reduction != Reduction::kNone) {
    if (weighted_mean) xent_reduce_loss_kernel<1><<<1, 1024, 0, stream>>>(ws, j.p.rows, mean, j.out.loss);
    else xent_reduce_loss_kernel<><<<1, 1024, 0, stream>>>(ws, j.p.rows, mean, j.out.loss);
    const Status r = check_launch("xent_reduce_loss_kernel");
    if (r != Status::kSuccess) return r;
  }
  if (kWritesLoss && j.out.z_loss && j.p.reduction != Reduction::kNone) {
    if (weighted_mean) xent_reduce_loss_kernel<3><<<1, 1024, 0, stream>>>(ws, j.p.rows, mean, j.out.z_loss);
    else xent_reduce_loss_kernel<2><<<1, 1024, 0, stream>>>(ws, j.p.rows, mean, j.out.z_loss);
    return check_launch("xent_reduce_loss_kernel");
  }
  return Status::kSuccess;
}

inline Status merge_stats_run(const RowStats* parts, int64_t shards, int64_t rows, float alpha, RowStats* merged,
                              stream_t stream) {
  const int64_t blocks = (rows + 255) / 256;
  xent_merge_stats_kernel<><<<static_cast<unsigned>(blocks < kMaxGrid ? blocks : kMaxGrid), 256, 0, stream>>>(
      parts, shards, rows, alpha * math::kLog2e, merged);
  return check_launch("xent_merge_stats_kernel");
}

}  // namespace device
POWERGRAD_NS_END

// Explicit instantiation of the device kernels of every op for element type T (all five modes and
// the three target kinds): what the shared library ships (src/xent_<dtype>.cu).
#define POWERGRAD_XENT_INSTANTIATE_MODE(MODE, T, Tg) \
  template Status xent_run<XentMode::MODE, T, Tg>(const XentJob<T, Tg>&, void*, size_t, stream_t);
#define POWERGRAD_XENT_INSTANTIATE_TG(T, Tg)              \
  POWERGRAD_XENT_INSTANTIATE_MODE(kFused, T, Tg)          \
  POWERGRAD_XENT_INSTANTIATE_MODE(kStats, T, Tg)          \
  POWERGRAD_XENT_INSTANTIATE_MODE(kApplyMerged, T, Tg)    \
  POWERGRAD_XENT_INSTANTIATE_MODE(kApplySaved, T, Tg)     \
  POWERGRAD_XENT_INSTANTIATE_MODE(kHook, T, Tg)
#define POWERGRAD_XENT_INSTANTIATE(T)                       \
  POWERGRAD_NS_BEGIN namespace device {                     \
  POWERGRAD_XENT_INSTANTIATE_TG(T, ClassTargets<int32_t>)   \
  POWERGRAD_XENT_INSTANTIATE_TG(T, ClassTargets<int64_t>)   \
  POWERGRAD_XENT_INSTANTIATE_TG(T, DenseTargets<T>)         \
  }                                                         \
  POWERGRAD_NS_END
