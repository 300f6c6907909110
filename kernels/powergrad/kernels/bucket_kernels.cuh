// powergrad device kernels: gradient-bucket transforms (docs/design.md §2.4) over a plan resident in the
// caller's workspace (detail/bucket_plan.hpp).
//
// At most three launches per op, whatever the number of tensors:
//   1. bucket_stats_kernel  one warp per item: partial sums in double (g^2, w^2, |g|^e, |g|) -> partials[item];
//   2. bucket_coef_kernel   one block per group: the group's partials in item order, in double, through a
//                           fixed-shape block reduction -> coefs[group] (+ norms, flags);
//   3. bucket_apply_kernel  one warp per item: g <- coefs[group] * sign(g)|g|^e, in place.
// Ops without statistics (power without norm preservation) run kernel 3 only. No float atomics:
// the same input gives the same bits, run after run. Every kernel first checks that the workspace
// holds the plan it was launched for (magic + checksum) and otherwise writes nothing but the
// kBucketFlagStalePlan flag.
#pragma once

#include <cuda_runtime.h>

#include <cub/block/block_reduce.cuh>
#include <cstdint>

#include "powergrad/bucket_types.hpp"
#include "powergrad/config.hpp"
#include "powergrad/detail/bucket_job.hpp"
#include "powergrad/detail/bucket_plan.hpp"
#include "powergrad/kernels/launch.cuh"
#include "powergrad/kernels/vec.cuh"
#include "powergrad/math/bucket_math.hpp"
#include "powergrad/math/dtype.hpp"
#include "powergrad/status.hpp"

POWERGRAD_NS_BEGIN
namespace device {

constexpr int kBucketWarpsPerBlock = 8;

PG_DEVICE bool bucket_plan_ok(const detail::BucketPlanHeader* h, uint64_t checksum) {
  return h->magic == detail::kBucketPlanMagic && h->checksum == checksum;
}

// The gradient and parameter addresses come from the plan table (integers), so the compiler cannot
// tell they are global memory: without help it emits generic LD/ST and, since a generic store may
// alias any later load, never has more than one load in flight. These force global, 16-byte accesses
// (ld.global.nc: the data is read once per kernel, before this thread's own write of it).
PG_DEVICE uint4 ldg16(const void* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }
PG_DEVICE void stg16(void* p, const uint4& v) {
  asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w) : "memory");
}

constexpr int kBucketBatch = 4;  // 16-byte loads in flight per lane in the vector body

// One warp sweeps p[begin, end): scalar head up to 16-byte alignment, 16-byte vectors (kBucketBatch
// loads issued before any is used), scalar tail. f(x) is called for every element; with WRITE its
// result is stored back in place (the statistics pass reads only, the apply pass rewrites).
template <bool WRITE, class T, class F>
PG_DEVICE void warp_sweep(T* p, int64_t begin, int64_t end, int lane, F&& f) {
  constexpr int V = Vec<T>::kSize;
  T* a = p + begin;
  const int64_t n = end - begin;
  const int64_t head = misalignment_elems(a) < n ? misalignment_elems(a) : n;
  auto scalar = [&](int64_t k) {
    const float y = f(to_float(a[k]));
    if (WRITE) a[k] = from_float<T>(y);
  };
  auto vector = [&](T* q, const uint4& u) {
    float x[V];
    unpack(u, x, T{});
#pragma unroll
    for (int e = 0; e < V; ++e) x[e] = f(x[e]);
    if (WRITE) stg16(q, pack(x, T{}));
  };
  if (lane < head) scalar(lane);
  T* b = a + head;
  const int64_t nv = (n - head) / V;
  int64_t v = lane;
  for (; v + 32 * (kBucketBatch - 1) < nv; v += 32 * kBucketBatch) {
    uint4 u[kBucketBatch];
#pragma unroll
    for (int k = 0; k < kBucketBatch; ++k) u[k] = ldg16(b + (v + 32 * k) * V);
#pragma unroll
    for (int k = 0; k < kBucketBatch; ++k) vector(b + (v + 32 * k) * V, u[k]);
  }
  for (; v < nv; v += 32) vector(b + v * V, ldg16(b + v * V));
  for (int64_t k = head + nv * V + lane; k < n; k += 32) scalar(k);
}

// f(x) for every element of p[begin, end) (read only).
template <class T, class F>
PG_DEVICE void warp_for_each(const T* p, int64_t begin, int64_t end, int lane, F&& f) {
  warp_sweep<false>(const_cast<T*>(p), begin, end, lane, [&](float x) {
    f(x);
    return x;
  });
}

// p[k] <- f(p[k]) over [begin, end).
template <class T, class F>
PG_DEVICE void warp_transform(T* p, int64_t begin, int64_t end, int lane, F&& f) {
  warp_sweep<true>(p, begin, end, lane, f);
}

PG_DEVICE double warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Kernel 1. G2 / POW / ABS select the gradient sums; the parameter sum (AGC) is a uniform branch.
template <class T, class P, bool G2, bool POW, bool ABS>
__global__ PG_KERNEL_VISIBILITY void __launch_bounds__(kBucketWarpsPerBlock * 32)
    bucket_stats_kernel(const detail::BucketPlanHeader* __restrict__ h, detail::BucketJob j, bool with_param,
                        math::BucketSums* __restrict__ partials) {
  const bool first_thread = blockIdx.x == 0 && threadIdx.x == 0;
  if (!bucket_plan_ok(h, j.checksum)) {
    if (first_thread && j.flags) *j.flags = kBucketFlagStalePlan;
    return;
  }
  if (first_thread && j.flags) *j.flags = 0;  // later kernels of this op OR bits in
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kBucketWarpsPerBlock + threadIdx.x / 32;
  if (item >= h->n_items) return;
  const int lane = threadIdx.x % 32;
  const detail::BucketItem it = detail::locate_item(*h, item, j.scope);
  const detail::BucketPlanTensor& t = detail::plan_tensors(h)[it.tensor];
  double g2 = 0, pw = 0, ab = 0, w2 = 0;
  warp_for_each(reinterpret_cast<const T*>(t.grad), it.begin, it.end, lane, [&](float x) {
    const double xd = x;
    if (G2) g2 = fma(xd, xd, g2);
    if (POW) pw += detail::bucket_pow_summand(j, x);
    if (ABS) ab += fabs(xd);
  });
  if (with_param)
    warp_for_each(reinterpret_cast<const P*>(t.param), it.begin, it.end, lane, [&](float x) {
      const double xd = x;
      w2 = fma(xd, xd, w2);
    });
  g2 = warp_sum(g2);
  w2 = warp_sum(w2);
  pw = warp_sum(pw);
  ab = warp_sum(ab);
  if (lane == 0) {
    math::BucketSums out;
    out.g2 = g2;
    out.w2 = w2;
    out.pw = pw;
    out.ab = ab;
    partials[item] = out;
  }
}

struct BucketSumsAdd {
  PG_DEVICE math::BucketSums operator()(const math::BucketSums& a, const math::BucketSums& b) const {
    math::BucketSums s;
    s.g2 = a.g2 + b.g2;
    s.w2 = a.w2 + b.w2;
    s.pw = a.pw + b.pw;
    s.ab = a.ab + b.ab;
    return s;
  }
};

// Kernel 2: one block of THREADS per group (grid-stride over groups); thread i sums items
// first+i, first+i+THREADS, ... then a fixed-shape block reduction: a fixed order for a given plan.
template <int THREADS>
__global__ PG_KERNEL_VISIBILITY void __launch_bounds__(THREADS)
    bucket_coef_kernel(const detail::BucketPlanHeader* __restrict__ h, detail::BucketJob j,
                       const math::BucketSums* __restrict__ partials, math::BucketCoef* __restrict__ coefs) {
  if (!bucket_plan_ok(h, j.checksum)) return;
  using Reduce = cub::BlockReduce<math::BucketSums, THREADS, cub::BLOCK_REDUCE_RAKING_COMMUTATIVE_ONLY>;
  __shared__ typename Reduce::TempStorage tmp;
  const int64_t groups = detail::bucket_groups(*h, j.scope);
  for (int64_t g = blockIdx.x; g < groups; g += gridDim.x) {
    int64_t first = 0, last = 0;
    detail::group_items(*h, g, j.scope, first, last);
    math::BucketSums s;
    for (int64_t i = first + threadIdx.x; i < last; i += THREADS) {
      const math::BucketSums p = partials[i];
      s.g2 += p.g2;
      s.w2 += p.w2;
      s.pw += p.pw;
      s.ab += p.ab;
    }
    s = Reduce(tmp).Reduce(s, BucketSumsAdd{});
    if (threadIdx.x == 0) {
      const math::GroupCoef c = detail::bucket_group_coef(j, s);
      coefs[g] = math::bucket_coef_of(c.k);
      if (j.norms) j.norms[g] = c.norm;
      if (c.non_finite && j.flags) atomicOr(j.flags, static_cast<int>(kBucketFlagNonFinite));
    }
    __syncthreads();  // tmp is reused by the next group
  }
}

// Kernel 3. HAS_COEF: a statistics pass ran (coefs[group] holds K), else K = 1 and this kernel is
// the op's first (it resets the flags).
template <class T, bool HAS_COEF>
__global__ PG_KERNEL_VISIBILITY void __launch_bounds__(kBucketWarpsPerBlock * 32)
    bucket_apply_kernel(const detail::BucketPlanHeader* __restrict__ h, detail::BucketJob j,
                        const math::BucketCoef* __restrict__ coefs) {
  const bool first_thread = blockIdx.x == 0 && threadIdx.x == 0;
  if (!bucket_plan_ok(h, j.checksum)) {
    if (!HAS_COEF && first_thread && j.flags) *j.flags = kBucketFlagStalePlan;
    return;
  }
  if (!HAS_COEF && first_thread && j.flags) *j.flags = 0;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kBucketWarpsPerBlock + threadIdx.x / 32;
  if (item >= h->n_items) return;
  const detail::BucketItem it = detail::locate_item(*h, item, j.scope);
  const detail::BucketPlanTensor& t = detail::plan_tensors(h)[it.tensor];
  const math::BucketCoef k = HAS_COEF ? coefs[it.group] : math::BucketCoef{};
  const float e = detail::bucket_apply_exponent(j);
  warp_transform(reinterpret_cast<T*>(t.grad), it.begin, it.end, threadIdx.x % 32,
                 [&](float x) { return math::scaled_signed_pow(x, e, k); });
}

template <class T, class P>
Status launch_bucket_stats(const detail::BucketPlanHeader* dh, const detail::BucketJob& j, bool with_param,
                           math::BucketSums* partials, unsigned grid, stream_t stream) {
  const int m = detail::bucket_stat_mask(j);
  const bool g2 = m & math::kStatG2, pw = m & math::kStatPow, ab = m & math::kStatAbs;
  constexpr unsigned kThreads = kBucketWarpsPerBlock * 32;
  if (g2 && !pw && !ab) bucket_stats_kernel<T, P, true, false, false><<<grid, kThreads, 0, stream>>>(dh, j, with_param, partials);
  else if (!g2 && pw && ab) bucket_stats_kernel<T, P, false, true, true><<<grid, kThreads, 0, stream>>>(dh, j, with_param, partials);
  else if (g2 && pw && !ab) bucket_stats_kernel<T, P, true, true, false><<<grid, kThreads, 0, stream>>>(dh, j, with_param, partials);
  else bucket_stats_kernel<T, P, true, true, true><<<grid, kThreads, 0, stream>>>(dh, j, with_param, partials);
  return check_launch("bucket_stats_kernel");
}

// Runs one validated job. `ws` holds the uploaded plan (`plan` is the caller's host image).
template <class T, class P>
Status bucket_run(const detail::BucketPlanHeader& plan, const detail::BucketJob& j, void* ws, stream_t stream) {
  const detail::BucketWorkspaceLayout l = detail::bucket_workspace_layout(plan);
  auto* base = static_cast<unsigned char*>(ws);
  const auto* dh = reinterpret_cast<const detail::BucketPlanHeader*>(base);
  auto* partials = reinterpret_cast<math::BucketSums*>(base + l.partials);
  auto* coefs = reinterpret_cast<math::BucketCoef*>(base + l.coefs);
  const int64_t blocks = (plan.n_items + kBucketWarpsPerBlock - 1) / kBucketWarpsPerBlock;
  const unsigned grid = static_cast<unsigned>(blocks > 0 ? blocks : 1);
  if (detail::bucket_stat_mask(j) == 0) {
    bucket_apply_kernel<T, false><<<grid, kBucketWarpsPerBlock * 32, 0, stream>>>(dh, j, coefs);
    return check_launch("bucket_apply_kernel");
  }
  Status s = launch_bucket_stats<T, P>(dh, j, detail::bucket_stat_mask(j) & math::kStatW2, partials, grid, stream);
  if (s != Status::kSuccess) return s;
  const int64_t groups = detail::bucket_groups(plan, j.scope);
  if (groups > 0) {
    // Block size by the work of the largest group: one warp per group for many small groups (AGC
    // units, many small tensors), 256 threads when a group has many items, 1024 for one group.
    int64_t max_items = 0;
    const detail::BucketPlanTensor* ts = detail::plan_tensors(&plan);
    for (int64_t t = 0; t < plan.n_tensors; ++t) {
      const bool rows = plan.units == static_cast<int32_t>(BucketUnits::kRows);
      const int64_t items = rows ? ts[t].items_per_unit : ts[t].n_units * ts[t].items_per_unit;
      max_items = items > max_items ? items : max_items;
    }
    const unsigned ggrid = static_cast<unsigned>(groups < (int64_t(1) << 30) ? groups : (int64_t(1) << 30));
    if (groups == 1) bucket_coef_kernel<1024><<<1, 1024, 0, stream>>>(dh, j, partials, coefs);
    else if (groups <= 1024 || max_items > 64) bucket_coef_kernel<256><<<ggrid, 256, 0, stream>>>(dh, j, partials, coefs);
    else bucket_coef_kernel<32><<<ggrid, 32, 0, stream>>>(dh, j, partials, coefs);
    if ((s = check_launch("bucket_coef_kernel")) != Status::kSuccess) return s;
  }
  bucket_apply_kernel<T, true><<<grid, kBucketWarpsPerBlock * 32, 0, stream>>>(dh, j, coefs);
  return check_launch("bucket_apply_kernel");
}

// Copies the host plan image to the start of the workspace (once per plan; not during capture).
inline Status bucket_upload(const void* plan, size_t bytes, void* ws, stream_t stream) {
  const cudaError_t e = cudaMemcpyAsync(ws, plan, bytes, cudaMemcpyHostToDevice, stream);
  if (e != cudaSuccess) return powergrad::detail::fail(Status::kCudaError, "plan upload (cudaMemcpyAsync): %s", cudaGetErrorString(e));
  return Status::kSuccess;
}

}  // namespace device
POWERGRAD_NS_END
