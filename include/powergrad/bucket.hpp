// powergrad C++ API: gradient-bucket transforms, per tensor or per bucket (docs/design.md §2.4).
//
// A bucket is a set of gradient tensors: separate pointers (BucketTensor[]) or one flat buffer with
// segment offsets, as DDP buckets are (bucket_tensors_from_flat turns it into the former).
// Use:
//   1. bucket_plan_bytes(count) -> build the plan once into a 16-byte-aligned host buffer with
//      bucket_plan_build (validates every tensor; kTensor units for power / clip_norm, kRows for AGC);
//   2. bucket_workspace_bytes(plan) -> CUDA: allocate the workspace, bucket_plan_upload once;
//   3. every step: bucket_power / bucket_clip_norm / bucket_agc on the plan (at most three launches,
//      no host synchronisation, no allocation, CUDA-graph capturable).
// Every op transforms the gradients in place, writes nothing on bad input (a Status and a message in
// last_error_message()), and gives the same bits for the same input, run after run.
// The plan stores raw addresses: rebuild (and re-upload) it when a gradient moves.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "powergrad/bucket_types.hpp"
#include "powergrad/config.hpp"
#include "powergrad/detail/bucket_job.hpp"
#include "powergrad/detail/bucket_plan.hpp"
#include "powergrad/host/bucket_host.hpp"
#include "powergrad/status.hpp"

#if defined(__CUDACC__)
#include "powergrad/kernels/bucket_kernels.cuh"
#endif

POWERGRAD_NS_BEGIN

namespace detail {

#define POWERGRAD_BCHECK(cond, status, ...)                                 \
  do {                                                                      \
    if (!(cond)) return ::powergrad::detail::fail(status, __VA_ARGS__);     \
  } while (0)

inline long long bll(int64_t v) { return static_cast<long long>(v); }

inline bool ranges_overlap_bytes(const void* a, uint64_t na, const void* b, uint64_t nb) {
  const uint64_t pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return pa < pb + nb && pb < pa + na;
}

inline Status check_bucket_backend(Backend b) {
  POWERGRAD_BCHECK(b == Backend::kHost || b == Backend::kCuda, Status::kInvalidValue,
                   "backend (%d) is not a Backend value", static_cast<int>(b));
#if !defined(__CUDACC__)
  POWERGRAD_BCHECK(b == Backend::kHost, Status::kNoCudaSupport,
                   "backend is kCuda but this translation unit was not compiled with CUDA (nvcc)");
#endif
  return Status::kSuccess;
}

// Whether `plan` (non-null, 16-byte aligned) is an intact plan image of this library version. The
// size fields are checked before the checksum reads the image.
inline Status check_intact_plan(const void* plan, const BucketPlanHeader*& h) {
  POWERGRAD_BCHECK(plan != nullptr, Status::kNullPointer, "plan is null");
  POWERGRAD_BCHECK(reinterpret_cast<uintptr_t>(plan) % 16 == 0, Status::kInvalidLayout, "plan must be 16-byte aligned");
  h = static_cast<const BucketPlanHeader*>(plan);
  POWERGRAD_BCHECK(h->magic == kBucketPlanMagic && h->version == kBucketPlanVersion, Status::kInvalidValue,
                   "plan is not a bucket plan of this library version (build it with bucket_plan_build)");
  POWERGRAD_BCHECK(h->n_tensors >= 0 && h->n_tensors <= (int64_t(1) << 40) &&
                       h->plan_bytes == bucket_plan_bytes_for(h->n_tensors) && h->checksum == bucket_plan_checksum(h),
                   Status::kInvalidValue, "plan is corrupted (size or checksum mismatch): rebuild it");
  return Status::kSuccess;
}

// The plan header after checking that `plan` is an intact image for gradients T and parameters P.
template <class T, class P>
Status read_plan(const void* plan, BucketUnits want, const BucketPlanHeader*& h) {
  Status st = check_intact_plan(plan, h);
  if (st != Status::kSuccess) return st;
  POWERGRAD_BCHECK(h->grad_dtype == static_cast<int32_t>(dtype_of<T>::value), Status::kInvalidValue,
                   "plan was built for gradient dtype %d, the call is for dtype %d", h->grad_dtype,
                   static_cast<int>(dtype_of<T>::value));
  POWERGRAD_BCHECK(h->units == static_cast<int32_t>(want), Status::kInvalidValue,
                   "plan has units %s but this op needs %s", h->units == 0 ? "kTensor" : "kRows",
                   want == BucketUnits::kTensor ? "kTensor (power, clip_norm)" : "kRows (agc, with parameters)");
  POWERGRAD_BCHECK(want == BucketUnits::kTensor || h->param_dtype == static_cast<int32_t>(dtype_of<P>::value),
                   Status::kInvalidValue, "plan was built for parameter dtype %d, the call is for dtype %d",
                   h->param_dtype, static_cast<int>(dtype_of<P>::value));
  return check_bucket_backend(static_cast<Backend>(h->backend));
}

inline Status check_bucket_workspace(const BucketPlanHeader& h, void* ws, size_t ws_bytes) {
  if (h.backend != static_cast<int32_t>(Backend::kCuda)) return Status::kSuccess;
  const size_t need = bucket_workspace_layout(h).total;
  POWERGRAD_BCHECK(ws != nullptr && ws_bytes >= need, Status::kWorkspaceTooSmall,
                   "workspace (%zu bytes%s) is smaller than bucket_workspace_bytes() = %zu", ws_bytes,
                   ws ? "" : ", null", need);
  POWERGRAD_BCHECK(reinterpret_cast<uintptr_t>(ws) % kBucketAlign == 0, Status::kInvalidLayout,
                   "workspace must be %zu-byte aligned", kBucketAlign);
  return Status::kSuccess;
}

// An output (norms, flags) must not overlap a gradient the op rewrites.
inline Status check_not_in_grads(const BucketPlanHeader& h, size_t elem_bytes, const void* p, uint64_t bytes,
                                 const char* name) {
  if (!p) return Status::kSuccess;
  const BucketPlanTensor* ts = plan_tensors(&h);
  const uint64_t a = reinterpret_cast<uintptr_t>(p);
  for (int64_t i = 0; i < h.n_tensors; ++i) {
    const uint64_t g = ts[i].grad, n = static_cast<uint64_t>(ts[i].numel) * elem_bytes;
    POWERGRAD_BCHECK(!(a < g + n && g < a + bytes), Status::kInvalidLayout, "%s overlaps the gradient of tensor %lld",
                     name, bll(i));
  }
  return Status::kSuccess;
}

// An output must also stay out of the workspace and (AGC) the parameters the kernels read meanwhile.
template <class P>
Status check_output_elsewhere(const BucketPlanHeader& h, const void* p, uint64_t bytes, const void* ws, size_t ws_bytes,
                              const char* name) {
  if (!p) return Status::kSuccess;
  POWERGRAD_BCHECK(!ws || !ranges_overlap_bytes(p, bytes, ws, ws_bytes), Status::kInvalidLayout,
                   "%s overlaps the workspace", name);
  if (h.units != static_cast<int32_t>(BucketUnits::kRows)) return Status::kSuccess;
  const BucketPlanTensor* ts = plan_tensors(&h);
  for (int64_t i = 0; i < h.n_tensors; ++i)
    POWERGRAD_BCHECK(!ranges_overlap_bytes(p, bytes, reinterpret_cast<const void*>(ts[i].param),
                                           static_cast<uint64_t>(ts[i].numel) * sizeof(P)),
                     Status::kInvalidLayout, "%s overlaps the parameter of tensor %lld", name, bll(i));
  return Status::kSuccess;
}

template <class T, class P>
Status bucket_dispatch(const BucketPlanHeader& h, const BucketJob& j, void* ws, stream_t stream) {
  if (h.backend == static_cast<int32_t>(Backend::kHost)) return host::bucket_run<T, P>(h, j);
#if defined(__CUDACC__)
  return device::bucket_run<T, P>(h, j, ws, stream);
#else
  (void)ws;
  (void)stream;
  return fail(Status::kNoCudaSupport, "the plan is for kCuda but this build has no CUDA support");
#endif
}

template <class T, class P>
Status bucket_prepare(const void* plan, BucketUnits units, void* ws, size_t ws_bytes, int32_t* flags,
                      const BucketPlanHeader*& h) {
  Status s = read_plan<T, P>(plan, units, h);
  if (s != Status::kSuccess) return s;
  if ((s = check_bucket_workspace(*h, ws, ws_bytes)) != Status::kSuccess) return s;
  if ((s = check_not_in_grads(*h, sizeof(T), flags, sizeof(int32_t), "flags")) != Status::kSuccess) return s;
  return check_output_elsewhere<P>(*h, flags, sizeof(int32_t), ws, ws_bytes, "flags");
}

}  // namespace detail

// Host bytes of a plan for `count` tensors.
inline size_t bucket_plan_bytes(int64_t count) { return detail::bucket_plan_bytes_for(count < 0 ? 0 : count); }

// Builds the plan of `count` tensors into `plan` (bucket_plan_bytes(count) bytes, 16-byte aligned).
// Checks: pointers (grad, and param for kRows, non-null when numel > 0), sizes (numel >= 0;
// kRows: rows >= 0 dividing numel), gradients pairwise disjoint, parameters disjoint from every
// gradient. `backend` says where the tensors live.
template <class T, class P = T>
[[nodiscard]] Status bucket_plan_build(Backend backend, const BucketTensor<T, P>* tensors, int64_t count,
                                       BucketUnits units, void* plan, size_t plan_bytes) {
  using namespace detail;
  clear_error();
  Status s = check_bucket_backend(backend);
  if (s != Status::kSuccess) return s;
  POWERGRAD_BCHECK(units == BucketUnits::kTensor || units == BucketUnits::kRows, Status::kInvalidValue,
                   "units (%d) is not a BucketUnits value", static_cast<int>(units));
  POWERGRAD_BCHECK(count >= 0, Status::kInvalidSize, "count (%lld) is negative", bll(count));
  POWERGRAD_BCHECK(count <= (int64_t(1) << 40), Status::kInvalidSize, "count (%lld) is too large", bll(count));
  POWERGRAD_BCHECK(count == 0 || tensors != nullptr, Status::kNullPointer, "tensors is null (count %lld)", bll(count));
  POWERGRAD_BCHECK(plan != nullptr, Status::kNullPointer, "plan is null");
  POWERGRAD_BCHECK(reinterpret_cast<uintptr_t>(plan) % 16 == 0, Status::kInvalidLayout, "plan must be 16-byte aligned");
  const size_t need = bucket_plan_bytes_for(count);
  POWERGRAD_BCHECK(plan_bytes >= need, Status::kWorkspaceTooSmall, "plan_bytes (%zu) is smaller than bucket_plan_bytes() = %zu",
                   plan_bytes, need);
  const bool rows_mode = units == BucketUnits::kRows;
  const int64_t max_numel = INT64_MAX / 16 - kBucketItemElems;
  for (int64_t i = 0; i < count; ++i) {
    const BucketTensor<T, P>& t = tensors[i];
    POWERGRAD_BCHECK(t.numel >= 0 && t.numel <= max_numel, Status::kInvalidSize, "tensors[%lld].numel (%lld) is out of range",
                     bll(i), bll(t.numel));
    if (t.numel == 0) continue;
    POWERGRAD_BCHECK(t.grad != nullptr, Status::kNullPointer, "tensors[%lld].grad is null", bll(i));
    POWERGRAD_BCHECK(reinterpret_cast<uintptr_t>(t.grad) % sizeof(T) == 0, Status::kInvalidLayout,
                     "tensors[%lld].grad is not aligned to its element size (%zu bytes)", bll(i), sizeof(T));
    if (!rows_mode) continue;
    POWERGRAD_BCHECK(t.param != nullptr, Status::kNullPointer, "tensors[%lld].param is null (AGC needs the parameters)",
                     bll(i));
    POWERGRAD_BCHECK(reinterpret_cast<uintptr_t>(t.param) % sizeof(P) == 0, Status::kInvalidLayout,
                     "tensors[%lld].param is not aligned to its element size (%zu bytes)", bll(i), sizeof(P));
    POWERGRAD_BCHECK(t.rows >= 0 && t.rows <= t.numel && (t.rows == 0 || t.numel % t.rows == 0), Status::kInvalidSize,
                     "tensors[%lld].rows (%lld) must be >= 0 and divide numel (%lld)", bll(i), bll(t.rows), bll(t.numel));
  }
  // Gradients are rewritten in place: no two may share a byte; parameters are read meanwhile.
  std::vector<int64_t> order;
  order.reserve(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i)
    if (tensors[i].numel > 0) order.push_back(i);
  auto lo = [&](int64_t i) { return reinterpret_cast<uintptr_t>(tensors[i].grad); };
  auto hi = [&](int64_t i) { return lo(i) + static_cast<uintptr_t>(tensors[i].numel) * sizeof(T); };
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return lo(a) < lo(b); });
  for (size_t k = 1; k < order.size(); ++k)
    POWERGRAD_BCHECK(hi(order[k - 1]) <= lo(order[k]), Status::kInvalidLayout,
                     "the gradients of tensors[%lld] and tensors[%lld] overlap", bll(order[k - 1]), bll(order[k]));
  if (rows_mode) {
    for (int64_t i = 0; i < count; ++i) {
      if (tensors[i].numel == 0) continue;
      const uintptr_t p0 = reinterpret_cast<uintptr_t>(tensors[i].param);
      const uintptr_t p1 = p0 + static_cast<uintptr_t>(tensors[i].numel) * sizeof(P);
      // The first gradient that ends after p0 is the only candidate for an overlap.
      auto it = std::upper_bound(order.begin(), order.end(), p0, [&](uintptr_t v, int64_t k) { return v < hi(k); });
      POWERGRAD_BCHECK(it == order.end() || lo(*it) >= p1, Status::kInvalidLayout,
                       "tensors[%lld].param overlaps the gradient of tensors[%lld]", bll(i), bll(*it));
    }
  }
  // Valid: write the image.
  auto* h = static_cast<BucketPlanHeader*>(plan);
  auto* ts = reinterpret_cast<BucketPlanTensor*>(h + 1);
  int64_t items = 0, n_units = 0, total = 0;
  for (int64_t i = 0; i < count; ++i) {
    const BucketTensor<T, P>& t = tensors[i];
    BucketPlanTensor r{};
    r.grad = reinterpret_cast<uintptr_t>(t.grad);
    r.param = rows_mode ? reinterpret_cast<uintptr_t>(t.param) : 0;
    r.numel = t.numel;
    r.n_units = t.numel == 0 ? 0 : (rows_mode && t.rows > 1 ? t.rows : 1);
    r.unit_len = r.n_units == 0 ? 1 : t.numel / r.n_units;
    r.items_per_unit = (r.unit_len + kBucketItemElems - 1) / kBucketItemElems;
    r.first_item = items;
    r.first_unit = n_units;
    items += r.n_units * r.items_per_unit;
    n_units += r.n_units;
    total += t.numel;
    ts[i] = r;
  }
  BucketPlanHeader hd{};
  hd.magic = kBucketPlanMagic;
  hd.version = kBucketPlanVersion;
  hd.backend = static_cast<int32_t>(backend);
  hd.grad_dtype = static_cast<int32_t>(dtype_of<T>::value);
  hd.param_dtype = static_cast<int32_t>(rows_mode ? dtype_of<P>::value : dtype_of<T>::value);
  hd.units = static_cast<int32_t>(units);
  hd.n_tensors = count;
  hd.n_items = items;
  hd.n_units = n_units;
  hd.total_numel = total;
  hd.plan_bytes = need;
  *h = hd;
  h->checksum = bucket_plan_checksum(h);
  return Status::kSuccess;
}

// Turns a flat buffer `data` with segment offsets (count + 1 non-decreasing element offsets; tensor
// i is data[offsets[i], offsets[i+1])) into `out[count]`. params (AGC, may be null) and rows (may be
// null: whole tensors) give each segment's parameter and size along dim 0.
template <class T, class P = T>
[[nodiscard]] Status bucket_tensors_from_flat(T* data, const int64_t* offsets, int64_t count,
                                              const P* const* params, const int64_t* rows, BucketTensor<T, P>* out) {
  using namespace detail;
  clear_error();
  POWERGRAD_BCHECK(count >= 0, Status::kInvalidSize, "count (%lld) is negative", bll(count));
  if (count == 0) return Status::kSuccess;
  POWERGRAD_BCHECK(offsets != nullptr, Status::kNullPointer, "offsets is null");
  POWERGRAD_BCHECK(out != nullptr, Status::kNullPointer, "out is null");
  POWERGRAD_BCHECK(offsets[0] >= 0, Status::kInvalidSize, "offsets[0] (%lld) is negative", bll(offsets[0]));
  for (int64_t i = 0; i < count; ++i)
    POWERGRAD_BCHECK(offsets[i + 1] >= offsets[i], Status::kInvalidLayout,
                     "offsets[%lld] (%lld) < offsets[%lld] (%lld): segments overlap", bll(i + 1), bll(offsets[i + 1]),
                     bll(i), bll(offsets[i]));
  POWERGRAD_BCHECK(data != nullptr || offsets[count] == offsets[0], Status::kNullPointer, "data is null");
  for (int64_t i = 0; i < count; ++i) {
    out[i].grad = data ? data + offsets[i] : nullptr;
    out[i].param = params ? params[i] : nullptr;
    out[i].numel = offsets[i + 1] - offsets[i];
    out[i].rows = rows ? rows[i] : 0;
  }
  return Status::kSuccess;
}

// Device workspace for the plan's ops (the plan image + per-item and per-group scratch); 0 on the host.
[[nodiscard]] inline Status bucket_workspace_bytes(const void* plan, size_t* bytes) {
  detail::clear_error();
  POWERGRAD_BCHECK(bytes != nullptr, Status::kNullPointer, "bytes is null");
  const detail::BucketPlanHeader* h = nullptr;
  const Status s = detail::check_intact_plan(plan, h);
  if (s != Status::kSuccess) return s;
  *bytes = h->backend == static_cast<int32_t>(Backend::kCuda) ? detail::bucket_workspace_layout(*h).total : 0;
  return Status::kSuccess;
}

// CUDA plans: copies the plan into the workspace (asynchronously on `stream`; once per plan, outside
// graph capture). Host plans: nothing to do.
[[nodiscard]] inline Status bucket_plan_upload(const void* plan, void* workspace, size_t workspace_bytes,
                                               stream_t stream = nullptr) {
  detail::clear_error();
  const detail::BucketPlanHeader* h = nullptr;
  Status s = detail::check_intact_plan(plan, h);
  if (s != Status::kSuccess) return s;
  s = detail::check_bucket_backend(static_cast<Backend>(h->backend));
  if (s != Status::kSuccess) return s;
  if ((s = detail::check_bucket_workspace(*h, workspace, workspace_bytes)) != Status::kSuccess) return s;
  if (h->backend == static_cast<int32_t>(Backend::kHost)) return Status::kSuccess;
#if defined(__CUDACC__)
  return device::bucket_upload(plan, static_cast<size_t>(h->plan_bytes), workspace, stream);
#else
  (void)stream;
  return detail::fail(Status::kNoCudaSupport, "no CUDA support");
#endif
}

// power: g <- K sign(g)|g|^beta, K keeping the scope's L1 or L2 norm (kNone: K = 1). beta > 0.
// With kL1 this is the PGT map on |g| / sum|g|. Without preservation no statistics are taken and
// `flags` only reports kBucketFlagStalePlan.
template <class T>
[[nodiscard]] Status bucket_power(const void* plan, float beta, NormPreserve preserve, BucketScope scope,
                                  void* workspace = nullptr, size_t workspace_bytes = 0, int32_t* flags = nullptr,
                                  stream_t stream = nullptr) {
  using namespace detail;
  clear_error();
  POWERGRAD_BCHECK(std::isfinite(beta) && beta > 0.f, Status::kInvalidValue, "beta (%g) must be finite and > 0",
                   static_cast<double>(beta));
  POWERGRAD_BCHECK(static_cast<int>(preserve) >= 0 && static_cast<int>(preserve) <= 2, Status::kInvalidValue,
                   "preserve (%d) is not a NormPreserve value", static_cast<int>(preserve));
  POWERGRAD_BCHECK(scope == BucketScope::kTensor || scope == BucketScope::kBucket, Status::kInvalidValue,
                   "scope (%d) is not a BucketScope value", static_cast<int>(scope));
  const BucketPlanHeader* h = nullptr;
  Status s = bucket_prepare<T, T>(plan, BucketUnits::kTensor, workspace, workspace_bytes, flags, h);
  if (s != Status::kSuccess) return s;
  BucketJob j;
  j.op = BucketOp::kPower;
  j.scope = scope;
  j.preserve = static_cast<int>(preserve);
  j.beta = beta;
  j.flags = flags;
  j.checksum = h->checksum;
  return bucket_dispatch<T, T>(*h, j, workspace, stream);
}

// clip_norm, as torch.nn.utils.clip_grad_norm_ (L2): norm over the scope, coef = min(1, max_norm /
// (norm + 1e-6)), g <- coef g. norms (optional): one float per group (scope kTensor: per tensor;
// kBucket: one). A non-finite norm sets kBucketFlagNonFinite (NaN norm -> NaN gradients, inf -> 0 * g).
template <class T>
[[nodiscard]] Status bucket_clip_norm(const void* plan, float max_norm, BucketScope scope, float* norms = nullptr,
                                      void* workspace = nullptr, size_t workspace_bytes = 0,
                                      int32_t* flags = nullptr, stream_t stream = nullptr) {
  using namespace detail;
  clear_error();
  POWERGRAD_BCHECK(std::isfinite(max_norm) && max_norm > 0.f, Status::kInvalidValue,
                   "max_norm (%g) must be finite and > 0", static_cast<double>(max_norm));
  POWERGRAD_BCHECK(scope == BucketScope::kTensor || scope == BucketScope::kBucket, Status::kInvalidValue,
                   "scope (%d) is not a BucketScope value", static_cast<int>(scope));
  const BucketPlanHeader* h = nullptr;
  Status s = bucket_prepare<T, T>(plan, BucketUnits::kTensor, workspace, workspace_bytes, flags, h);
  if (s != Status::kSuccess) return s;
  const int64_t groups = bucket_groups(*h, scope);
  if ((s = check_not_in_grads(*h, sizeof(T), norms, static_cast<uint64_t>(groups) * sizeof(float), "norms")) !=
      Status::kSuccess)
    return s;
  if ((s = check_output_elsewhere<T>(*h, norms, static_cast<uint64_t>(groups) * sizeof(float), workspace,
                                     workspace_bytes, "norms")) != Status::kSuccess)
    return s;
  POWERGRAD_BCHECK(!norms || !flags || !ranges_overlap_bytes(norms, static_cast<uint64_t>(groups) * 4, flags, 4),
                   Status::kInvalidLayout, "norms overlaps flags");
  BucketJob j;
  j.op = BucketOp::kClipNorm;
  j.scope = scope;
  j.max_norm = max_norm;
  j.norms = norms;
  j.flags = flags;
  j.checksum = h->checksum;
  return bucket_dispatch<T, T>(*h, j, workspace, stream);
}

// AGC (adaptive gradient clipping, NFNets / timm's adaptive_clip_grad) per unit of a kRows plan:
// limit = clip * max(||W_u||, eps); G_u <- G_u * limit / max(||G_u||, 1e-6) unless ||G_u|| < limit.
// Then, in the same pass, the optional power map per unit: beta != 1 or preserve != kNone applies
// g <- K sign(g)|g|^beta to the clipped unit (K keeping its L1 / L2 norm). beta = 1, kNone: AGC only.
template <class T, class P = T>
[[nodiscard]] Status bucket_agc(const void* plan, float clip, float eps, float beta = 1.f,
                                NormPreserve preserve = NormPreserve::kNone, void* workspace = nullptr,
                                size_t workspace_bytes = 0, int32_t* flags = nullptr, stream_t stream = nullptr) {
  using namespace detail;
  clear_error();
  POWERGRAD_BCHECK(std::isfinite(clip) && clip > 0.f, Status::kInvalidValue, "clip (%g) must be finite and > 0",
                   static_cast<double>(clip));
  POWERGRAD_BCHECK(std::isfinite(eps) && eps >= 0.f, Status::kInvalidValue, "eps (%g) must be finite and >= 0",
                   static_cast<double>(eps));
  POWERGRAD_BCHECK(std::isfinite(beta) && beta > 0.f, Status::kInvalidValue, "beta (%g) must be finite and > 0",
                   static_cast<double>(beta));
  POWERGRAD_BCHECK(static_cast<int>(preserve) >= 0 && static_cast<int>(preserve) <= 2, Status::kInvalidValue,
                   "preserve (%d) is not a NormPreserve value", static_cast<int>(preserve));
  const BucketPlanHeader* h = nullptr;
  Status s = bucket_prepare<T, P>(plan, BucketUnits::kRows, workspace, workspace_bytes, flags, h);
  if (s != Status::kSuccess) return s;
  BucketJob j;
  j.op = BucketOp::kAgc;
  j.scope = BucketScope::kTensor;
  j.clip = clip;
  j.eps = eps;
  j.beta = beta;
  j.preserve = static_cast<int>(preserve);
  j.flags = flags;
  j.checksum = h->checksum;
  return bucket_dispatch<T, P>(*h, j, workspace, stream);
}

POWERGRAD_NS_END

#undef POWERGRAD_BCHECK
