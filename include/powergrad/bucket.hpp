// powergrad C++ API: gradient-bucket transforms, per tensor or per bucket (docs/design.md §2.4).
//
// A bucket is a set of gradient tensors: separate pointers (BucketTensor[]) or one flat buffer with
// segment offsets, as DDP buckets are (bucket_tensors_from_flat turns it into the former).
// Use:
//   1. bucket_plan_bytes(count) -> build the plan once into a 16-byte-aligned host buffer with
//      bucket_plan_build (validates every tensor; kTensor units for power / clip_norm, kRows for AGC);
//   2. bucket_workspace_bytes(plan, plan_bytes) -> CUDA: allocate the workspace, bucket_plan_upload once;
//   3. every step: bucket_power / bucket_clip_norm / bucket_agc on the plan (at most three launches,
//      no host synchronisation, no allocation, CUDA-graph capturable).
// Every call that reads a plan takes the size of the caller's plan buffer (plan_bytes, as CUB's ops
// take their temp-storage size): the plan's own size fields are checked against it before anything
// past the header is read.
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
#include "powergrad/detail/validate.hpp"
#include "powergrad/host/bucket_host.hpp"
#include "powergrad/host_config.hpp"
#include "powergrad/status.hpp"

#if defined(__CUDACC__)
#include "powergrad/kernels/bucket_kernels.cuh"
#endif

POWERGRAD_NS_BEGIN

namespace detail {

// The names under which the caller knows the arguments that the C ABI spells differently (the
// C table is in src/capi_names.hpp); the ops' own arguments (plan, beta, norms, flags, ...) have
// the same names in both.
struct BucketArgNames {
  const char* backend;
  const char* tensors;
  const char* count;
  const char* units;
  const char* plan_build;       // the function that builds plans
  const char* plan_bytes_query;
  const char* workspace_query;
};

inline constexpr BucketArgNames kBucketCppNames = {"backend", "tensors", "count", "units", "bucket_plan_build",
                                                   "bucket_plan_bytes()", "bucket_workspace_bytes()"};

// Whether `plan` (non-null, 16-byte aligned, `plan_bytes` bytes as the caller allocated it) is an
// intact plan image of this library version. Nothing beyond plan_bytes is read: the recorded size
// must fit in it before the checksum reads the image (a corrupted count cannot send it further).
// Step 1 (all the C ABI needs to read the plan's dtypes): non-null, aligned, at least a header, and a
// header of this library version.
inline Status check_plan_header(const BucketArgNames& n, const void* plan, size_t plan_bytes,
                                const BucketPlanHeader*& h) {
  POWERGRAD_REQUIRE(plan != nullptr, Status::kNullPointer, "plan is null");
  POWERGRAD_REQUIRE(reinterpret_cast<uintptr_t>(plan) % 16 == 0, Status::kInvalidLayout, "plan must be 16-byte aligned");
  POWERGRAD_REQUIRE(plan_bytes >= sizeof(BucketPlanHeader), Status::kInvalidSize,
                    "plan_bytes (%zu) is smaller than a plan header (%zu bytes)", plan_bytes, sizeof(BucketPlanHeader));
  h = static_cast<const BucketPlanHeader*>(plan);
  POWERGRAD_REQUIRE(h->magic == kBucketPlanMagic && h->version == kBucketPlanVersion, Status::kInvalidValue,
                    "plan is not a bucket plan of this library version (build it with %s)", n.plan_build);
  return Status::kSuccess;
}

inline Status check_intact_plan(const BucketArgNames& n, const void* plan, size_t plan_bytes,
                                const BucketPlanHeader*& h) {
  POWERGRAD_TRY(check_plan_header(n, plan, plan_bytes, h));
  POWERGRAD_REQUIRE(h->n_tensors >= 0 && h->n_tensors <= kBucketMaxTensors &&
                        h->plan_bytes == bucket_plan_bytes_for(h->n_tensors),
                    Status::kInvalidValue, "plan is corrupted (size mismatch): rebuild it");
  POWERGRAD_REQUIRE(static_cast<uint64_t>(h->plan_bytes) <= plan_bytes, Status::kInvalidSize,
                    "plan_bytes (%zu) is smaller than the plan's recorded size (%llu bytes): pass the buffer size "
                    "the plan was built into",
                    plan_bytes, static_cast<unsigned long long>(h->plan_bytes));
  POWERGRAD_REQUIRE(h->checksum == bucket_plan_checksum(h), Status::kInvalidValue,
                    "plan is corrupted (checksum mismatch): rebuild it");
  return Status::kSuccess;
}

// The plan header after checking that `plan` is an intact image for gradients T and parameters P.
template <class T, class P>
Status read_plan(const BucketArgNames& n, const void* plan, size_t plan_bytes, BucketUnits want,
                 const BucketPlanHeader*& h) {
  POWERGRAD_TRY(check_intact_plan(n, plan, plan_bytes, h));
  POWERGRAD_REQUIRE(h->grad_dtype == static_cast<int32_t>(dtype_of<T>::value), Status::kInvalidValue,
                   "plan was built for gradient dtype %d, the call is for dtype %d", h->grad_dtype,
                   static_cast<int>(dtype_of<T>::value));
  POWERGRAD_REQUIRE(h->units == static_cast<int32_t>(want), Status::kInvalidValue,
                   "plan has units %s but this op needs %s", h->units == 0 ? "kTensor" : "kRows",
                   want == BucketUnits::kTensor ? "kTensor (power, clip_norm)" : "kRows (agc, with parameters)");
  POWERGRAD_REQUIRE(want == BucketUnits::kTensor || h->param_dtype == static_cast<int32_t>(dtype_of<P>::value),
                   Status::kInvalidValue, "plan was built for parameter dtype %d, the call is for dtype %d",
                   h->param_dtype, static_cast<int>(dtype_of<P>::value));
  return check_backend(h->backend, "the plan's backend");
}

inline Status check_bucket_workspace(const BucketArgNames& n, const BucketPlanHeader& h, void* ws, size_t ws_bytes) {
  if (h.backend != static_cast<int32_t>(Backend::kCuda)) return Status::kSuccess;
  return check_workspace_size(ws, ws_bytes, bucket_workspace_layout(h).total, kBucketAlign, n.workspace_query);
}

// A buffer the op writes (norms, flags, the workspace) must not overlap a gradient it rewrites.
inline Status check_not_in_grads(const BucketPlanHeader& h, size_t elem_bytes, const void* p, uint64_t bytes,
                                 const char* name) {
  if (!p) return Status::kSuccess;
  const BucketPlanTensor* ts = plan_tensors(&h);
  for (int64_t i = 0; i < h.n_tensors; ++i)
    POWERGRAD_REQUIRE(!ranges_overlap(p, bytes, reinterpret_cast<const void*>(ts[i].grad),
                                      static_cast<uint64_t>(ts[i].numel) * elem_bytes),
                      Status::kInvalidLayout, "%s overlaps the gradient of tensor %lld", name, as_ll(i));
  return Status::kSuccess;
}

// ... nor (AGC plans) a parameter the kernels read meanwhile.
template <class P>
Status check_not_in_params(const BucketPlanHeader& h, const void* p, uint64_t bytes, const char* name) {
  if (!p || h.units != static_cast<int32_t>(BucketUnits::kRows)) return Status::kSuccess;
  const BucketPlanTensor* ts = plan_tensors(&h);
  for (int64_t i = 0; i < h.n_tensors; ++i)
    POWERGRAD_REQUIRE(!ranges_overlap(p, bytes, reinterpret_cast<const void*>(ts[i].param),
                                      static_cast<uint64_t>(ts[i].numel) * sizeof(P)),
                      Status::kInvalidLayout, "%s overlaps the parameter of tensor %lld", name, as_ll(i));
  return Status::kSuccess;
}

// An output (norms, flags) must stay out of the gradients, the plan image (the host backend reads it
// while writing), the workspace and the parameters.
template <class T, class P>
Status check_output(const BucketPlanHeader& h, const void* p, uint64_t bytes, const void* ws, size_t ws_bytes,
                    const char* name) {
  if (!p) return Status::kSuccess;
  POWERGRAD_TRY(check_not_in_grads(h, sizeof(T), p, bytes, name));
  POWERGRAD_REQUIRE(!ranges_overlap(p, bytes, &h, static_cast<uint64_t>(h.plan_bytes)), Status::kInvalidLayout,
                    "%s overlaps the plan", name);
  POWERGRAD_REQUIRE(!ws || !ranges_overlap(p, bytes, ws, ws_bytes), Status::kInvalidLayout,
                    "%s overlaps the workspace", name);
  return check_not_in_params<P>(h, p, bytes, name);
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
Status bucket_prepare(const BucketArgNames& n, const void* plan, size_t plan_bytes, BucketUnits units, void* ws,
                      size_t ws_bytes, int32_t* flags, const BucketPlanHeader*& h) {
  POWERGRAD_TRY((read_plan<T, P>(n, plan, plan_bytes, units, h)));
  POWERGRAD_TRY(check_bucket_workspace(n, *h, ws, ws_bytes));
  if (h->backend == static_cast<int32_t>(Backend::kCuda)) {
    // The ops write the workspace while they rewrite the gradients and read the parameters.
    POWERGRAD_TRY(check_not_in_grads(*h, sizeof(T), ws, ws_bytes, "workspace"));
    POWERGRAD_TRY(check_not_in_params<P>(*h, ws, ws_bytes, "workspace"));
  }
  return check_output<T, P>(*h, flags, sizeof(int32_t), ws, ws_bytes, "flags");
}

}  // namespace detail

// Host bytes of a plan for `count` tensors; SIZE_MAX (no buffer is that large: plan_build then
// reports the count) for a count outside [0, 2^40].
inline size_t bucket_plan_bytes(int64_t count) {
  if (count < 0 || count > detail::kBucketMaxTensors) return SIZE_MAX;
  return detail::bucket_plan_bytes_for(count);
}

// Builds the plan of `count` tensors into `plan` (bucket_plan_bytes(count) bytes, 16-byte aligned).
// Checks: pointers (grad, and param for kRows, non-null when numel > 0), sizes (numel >= 0;
// kRows: rows >= 0 dividing numel), gradients pairwise disjoint, parameters disjoint from every
// gradient. `backend` says where the tensors live.
namespace detail {
// `at(i)` gives tensor i as a BucketTensor<T, P> (read on demand: nothing proportional to `count` is
// allocated before count is checked against plan_bytes); `have_tensors` says the table is non-null.
// `table` / `table_elem`: where the caller's tensor table lies and its entry size; it is read while
// the plan image is written, so it may not overlap the plan, and neither may a gradient (the ops
// rewrite gradients while the host backend reads the plan).
template <class T, class P, class TensorAt>
Status plan_build(const BucketArgNames& n, Backend backend, TensorAt&& at, const void* table, size_t table_elem,
                  int64_t count, BucketUnits units, void* plan, size_t plan_bytes) {
  const bool have_tensors = table != nullptr;
  clear_error();
  POWERGRAD_TRY(check_backend(static_cast<int>(backend), n.backend));
  POWERGRAD_REQUIRE(units == BucketUnits::kTensor || units == BucketUnits::kRows, Status::kInvalidValue,
                   "%s (%d) is not a BucketUnits value", n.units, static_cast<int>(units));
  POWERGRAD_REQUIRE(count >= 0, Status::kInvalidSize, "%s (%lld) is negative", n.count, as_ll(count));
  POWERGRAD_REQUIRE(count <= kBucketMaxTensors, Status::kInvalidSize, "%s (%lld) is larger than 2^40", n.count,
                    as_ll(count));
  POWERGRAD_REQUIRE(count == 0 || have_tensors, Status::kNullPointer, "%s is null (%s %lld)", n.tensors, n.count,
                    as_ll(count));
  POWERGRAD_REQUIRE(plan != nullptr, Status::kNullPointer, "plan is null");
  POWERGRAD_REQUIRE(reinterpret_cast<uintptr_t>(plan) % 16 == 0, Status::kInvalidLayout, "plan must be 16-byte aligned");
  const size_t need = bucket_plan_bytes_for(count);
  POWERGRAD_REQUIRE(plan_bytes >= need, Status::kWorkspaceTooSmall, "plan_bytes (%zu) is smaller than %s = %zu",
                   plan_bytes, n.plan_bytes_query, need);
  POWERGRAD_REQUIRE(!ranges_overlap(table, static_cast<uint64_t>(count) * table_elem, plan, need), Status::kInvalidLayout,
                    "%s overlaps the plan", n.tensors);
  const bool rows_mode = units == BucketUnits::kRows;
  const int64_t max_numel = INT64_MAX / 16 - kBucketItemElems;
  for (int64_t i = 0; i < count; ++i) {
    const BucketTensor<T, P> t = at(i);
    POWERGRAD_REQUIRE(t.numel >= 0 && t.numel <= max_numel, Status::kInvalidSize, "%s[%lld].numel (%lld) is out of range",
                     n.tensors, as_ll(i), as_ll(t.numel));
    if (t.numel == 0) continue;
    POWERGRAD_REQUIRE(t.grad != nullptr, Status::kNullPointer, "%s[%lld].grad is null", n.tensors, as_ll(i));
    POWERGRAD_REQUIRE(reinterpret_cast<uintptr_t>(t.grad) % sizeof(T) == 0, Status::kInvalidLayout,
                     "%s[%lld].grad is not aligned to its element size (%zu bytes)", n.tensors, as_ll(i), sizeof(T));
    const uint64_t grad_bytes = static_cast<uint64_t>(t.numel) * sizeof(T);
    POWERGRAD_REQUIRE(reinterpret_cast<uintptr_t>(t.grad) <= UINTPTR_MAX - grad_bytes, Status::kInvalidLayout,
                      "%s[%lld].grad + numel wraps around the address space", n.tensors, as_ll(i));
    POWERGRAD_REQUIRE(!ranges_overlap(t.grad, grad_bytes, plan, need), Status::kInvalidLayout,
                      "%s[%lld].grad overlaps the plan", n.tensors, as_ll(i));
    if (!rows_mode) continue;
    POWERGRAD_REQUIRE(t.param != nullptr, Status::kNullPointer, "%s[%lld].param is null (AGC needs the parameters)",
                     n.tensors, as_ll(i));
    POWERGRAD_REQUIRE(reinterpret_cast<uintptr_t>(t.param) % sizeof(P) == 0, Status::kInvalidLayout,
                     "%s[%lld].param is not aligned to its element size (%zu bytes)", n.tensors, as_ll(i), sizeof(P));
    POWERGRAD_REQUIRE(reinterpret_cast<uintptr_t>(t.param) <= UINTPTR_MAX - static_cast<uint64_t>(t.numel) * sizeof(P),
                      Status::kInvalidLayout, "%s[%lld].param + numel wraps around the address space", n.tensors,
                      as_ll(i));
    POWERGRAD_REQUIRE(t.rows >= 0 && t.rows <= t.numel && (t.rows == 0 || t.numel % t.rows == 0), Status::kInvalidSize,
                     "%s[%lld].rows (%lld) must be >= 0 and divide numel (%lld)", n.tensors, as_ll(i), as_ll(t.rows), as_ll(t.numel));
  }
  // Gradients are rewritten in place: no two may share a byte; parameters are read meanwhile.
  std::vector<int64_t> order;
  order.reserve(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i)
    if (at(i).numel > 0) order.push_back(i);
  auto lo = [&](int64_t i) { return reinterpret_cast<uintptr_t>(at(i).grad); };
  auto hi = [&](int64_t i) { return lo(i) + static_cast<uintptr_t>(at(i).numel) * sizeof(T); };
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return lo(a) < lo(b); });
  for (size_t k = 1; k < order.size(); ++k)
    POWERGRAD_REQUIRE(hi(order[k - 1]) <= lo(order[k]), Status::kInvalidLayout,
                     "the gradients of %s[%lld] and %s[%lld] overlap", n.tensors, as_ll(order[k - 1]), n.tensors, as_ll(order[k]));
  if (rows_mode) {
    for (int64_t i = 0; i < count; ++i) {
      if (at(i).numel == 0) continue;
      const uintptr_t p0 = reinterpret_cast<uintptr_t>(at(i).param);
      const uintptr_t p1 = p0 + static_cast<uintptr_t>(at(i).numel) * sizeof(P);
      // The first gradient that ends after p0 is the only candidate for an overlap.
      auto it = std::upper_bound(order.begin(), order.end(), p0, [&](uintptr_t v, int64_t k) { return v < hi(k); });
      POWERGRAD_REQUIRE(it == order.end() || lo(*it) >= p1, Status::kInvalidLayout,
                       "%s[%lld].param overlaps the gradient of %s[%lld]", n.tensors, as_ll(i), n.tensors, as_ll(*it));
    }
  }
  // Valid: write the image.
  auto* h = static_cast<BucketPlanHeader*>(plan);
  auto* ts = reinterpret_cast<BucketPlanTensor*>(h + 1);
  int64_t items = 0, n_units = 0, total = 0;
  for (int64_t i = 0; i < count; ++i) {
    const BucketTensor<T, P> t = at(i);
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
}  // namespace detail

template <class T, class P = T>
[[nodiscard]] Status bucket_plan_build(Backend backend, const BucketTensor<T, P>* tensors, int64_t count,
                                       BucketUnits units, void* plan, size_t plan_bytes) {
  return detail::plan_build<T, P>(
      detail::kBucketCppNames, backend, [tensors](int64_t i) { return tensors[i]; }, tensors,
      sizeof(BucketTensor<T, P>), count, units, plan, plan_bytes);
}

namespace detail {

// The segment table of a flat buffer: count in [0, 2^40], offsets[0..count] non-decreasing from
// offsets[0] >= 0 to at most kBucketMaxFlatOffset elements, data non-null unless every segment is
// empty, and `out` (count entries of out_elem bytes) disjoint from offsets, params and rows, which
// are still read while it is written. Shared by bucket_tensors_from_flat and the C ABI (which lays
// out bytes, not elements).
constexpr int64_t kBucketMaxFlatOffset = INT64_MAX / 16 - kBucketItemElems;

inline Status check_flat_segments(const void* data, const int64_t* offsets, int64_t count, const void* params,
                                  const int64_t* rows, const void* out, size_t out_elem) {
  POWERGRAD_REQUIRE(count >= 0, Status::kInvalidSize, "count (%lld) is negative", as_ll(count));
  POWERGRAD_REQUIRE(count <= kBucketMaxTensors, Status::kInvalidSize, "count (%lld) is larger than 2^40",
                    as_ll(count));
  if (count == 0) return Status::kSuccess;
  POWERGRAD_REQUIRE(offsets != nullptr, Status::kNullPointer, "offsets is null");
  POWERGRAD_REQUIRE(out != nullptr, Status::kNullPointer, "out is null");
  const uint64_t n = static_cast<uint64_t>(count), out_bytes = n * out_elem;
  POWERGRAD_REQUIRE(!ranges_overlap(out, out_bytes, offsets, (n + 1) * sizeof(int64_t)), Status::kInvalidLayout,
                    "out overlaps offsets");
  POWERGRAD_REQUIRE(!params || !ranges_overlap(out, out_bytes, params, n * sizeof(void*)), Status::kInvalidLayout,
                    "out overlaps params");
  POWERGRAD_REQUIRE(!rows || !ranges_overlap(out, out_bytes, rows, n * sizeof(int64_t)), Status::kInvalidLayout,
                    "out overlaps rows");
  POWERGRAD_REQUIRE(offsets[0] >= 0, Status::kInvalidSize, "offsets[0] (%lld) is negative", as_ll(offsets[0]));
  for (int64_t i = 0; i < count; ++i)
    POWERGRAD_REQUIRE(offsets[i + 1] >= offsets[i], Status::kInvalidLayout,
                      "offsets[%lld] (%lld) < offsets[%lld] (%lld): segments overlap", as_ll(i + 1),
                      as_ll(offsets[i + 1]), as_ll(i), as_ll(offsets[i]));
  POWERGRAD_REQUIRE(offsets[count] <= kBucketMaxFlatOffset, Status::kInvalidSize, "offsets[%lld] (%lld) is too large",
                    as_ll(count), as_ll(offsets[count]));
  POWERGRAD_REQUIRE(data != nullptr || offsets[count] == offsets[0], Status::kNullPointer, "data is null");
  return Status::kSuccess;
}

}  // namespace detail

// Turns a flat buffer `data` with segment offsets (count + 1 non-decreasing element offsets; tensor
// i is data[offsets[i], offsets[i+1])) into `out[count]`. params (AGC, may be null) and rows (may be
// null: whole tensors) give each segment's parameter and size along dim 0.
template <class T, class P = T>
[[nodiscard]] Status bucket_tensors_from_flat(T* data, const int64_t* offsets, int64_t count,
                                              const P* const* params, const int64_t* rows, BucketTensor<T, P>* out) {
  detail::clear_error();
  POWERGRAD_TRY(detail::check_flat_segments(data, offsets, count, params, rows, out, sizeof(BucketTensor<T, P>)));
  for (int64_t i = 0; i < count; ++i) {
    out[i].grad = data ? data + offsets[i] : nullptr;
    out[i].param = params ? params[i] : nullptr;
    out[i].numel = offsets[i + 1] - offsets[i];
    out[i].rows = rows ? rows[i] : 0;
  }
  return Status::kSuccess;
}

namespace detail {

inline Status workspace_bytes(const BucketArgNames& n, const void* plan, size_t plan_bytes, size_t* bytes) {
  clear_error();
  POWERGRAD_REQUIRE(bytes != nullptr, Status::kNullPointer, "bytes is null");
  const BucketPlanHeader* h = nullptr;
  POWERGRAD_TRY(check_intact_plan(n, plan, plan_bytes, h));
  POWERGRAD_REQUIRE(!ranges_overlap(bytes, sizeof(size_t), plan, static_cast<uint64_t>(h->plan_bytes)),
                    Status::kInvalidLayout, "bytes overlaps the plan");
  *bytes = h->backend == static_cast<int32_t>(Backend::kCuda) ? bucket_workspace_layout(*h).total : 0;
  return Status::kSuccess;
}

inline Status plan_upload(const BucketArgNames& n, const void* plan, size_t plan_bytes, void* workspace,
                          size_t workspace_bytes, stream_t stream) {
  clear_error();
  const BucketPlanHeader* h = nullptr;
  POWERGRAD_TRY(check_intact_plan(n, plan, plan_bytes, h));
  POWERGRAD_TRY(check_backend(h->backend, "the plan's backend"));
  POWERGRAD_TRY(check_bucket_workspace(n, *h, workspace, workspace_bytes));
  if (h->backend == static_cast<int32_t>(Backend::kHost)) return Status::kSuccess;
#if defined(__CUDACC__)
  return device::bucket_upload(plan, static_cast<size_t>(h->plan_bytes), workspace, stream);
#else
  (void)stream;
  return fail(Status::kNoCudaSupport, "the plan is for kCuda but this build has no CUDA support");
#endif
}

inline Status check_preserve(NormPreserve preserve) {
  POWERGRAD_REQUIRE(static_cast<int>(preserve) >= 0 && static_cast<int>(preserve) <= 2, Status::kInvalidValue,
                    "preserve (%d) is not a NormPreserve value", static_cast<int>(preserve));
  return Status::kSuccess;
}

inline Status check_scope(BucketScope scope) {
  POWERGRAD_REQUIRE(scope == BucketScope::kTensor || scope == BucketScope::kBucket, Status::kInvalidValue,
                    "scope (%d) is not a BucketScope value", static_cast<int>(scope));
  return Status::kSuccess;
}

inline Status check_beta(float beta) {
  POWERGRAD_REQUIRE(std::isfinite(beta) && beta > 0.f, Status::kInvalidValue, "beta (%g) must be finite and > 0",
                    static_cast<double>(beta));
  return Status::kSuccess;
}

template <class T>
Status power(const BucketArgNames& n, const void* plan, size_t plan_bytes, float beta, NormPreserve preserve, BucketScope scope,
             void* workspace, size_t workspace_bytes, int32_t* flags, stream_t stream) {
  clear_error();
  POWERGRAD_TRY(check_beta(beta));
  POWERGRAD_TRY(check_preserve(preserve));
  POWERGRAD_TRY(check_scope(scope));
  const BucketPlanHeader* h = nullptr;
  POWERGRAD_TRY((bucket_prepare<T, T>(n, plan, plan_bytes, BucketUnits::kTensor, workspace, workspace_bytes, flags, h)));
  BucketJob j;
  j.op = BucketOp::kPower;
  j.scope = scope;
  j.preserve = preserve;
  j.beta = beta;
  j.flags = flags;
  j.checksum = h->checksum;
  return bucket_dispatch<T, T>(*h, j, workspace, stream);
}

template <class T>
Status clip_norm(const BucketArgNames& n, const void* plan, size_t plan_bytes, float max_norm, BucketScope scope, float* norms,
                 void* workspace, size_t workspace_bytes, int32_t* flags, stream_t stream) {
  clear_error();
  POWERGRAD_REQUIRE(std::isfinite(max_norm) && max_norm > 0.f, Status::kInvalidValue,
                    "max_norm (%g) must be finite and > 0", static_cast<double>(max_norm));
  POWERGRAD_TRY(check_scope(scope));
  const BucketPlanHeader* h = nullptr;
  POWERGRAD_TRY((bucket_prepare<T, T>(n, plan, plan_bytes, BucketUnits::kTensor, workspace, workspace_bytes, flags, h)));
  const uint64_t norms_bytes = static_cast<uint64_t>(bucket_groups(*h, scope)) * sizeof(float);
  POWERGRAD_TRY((check_output<T, T>(*h, norms, norms_bytes, workspace, workspace_bytes, "norms")));
  POWERGRAD_REQUIRE(!norms || !flags || !ranges_overlap(norms, norms_bytes, flags, sizeof(int32_t)),
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

template <class T, class P>
Status agc(const BucketArgNames& n, const void* plan, size_t plan_bytes, float clip, float eps, float beta, NormPreserve preserve,
           void* workspace, size_t workspace_bytes, int32_t* flags, stream_t stream) {
  clear_error();
  POWERGRAD_REQUIRE(std::isfinite(clip) && clip > 0.f, Status::kInvalidValue, "clip (%g) must be finite and > 0",
                    static_cast<double>(clip));
  POWERGRAD_REQUIRE(std::isfinite(eps) && eps >= 0.f, Status::kInvalidValue, "eps (%g) must be finite and >= 0",
                    static_cast<double>(eps));
  POWERGRAD_TRY(check_beta(beta));
  POWERGRAD_TRY(check_preserve(preserve));
  const BucketPlanHeader* h = nullptr;
  POWERGRAD_TRY((bucket_prepare<T, P>(n, plan, plan_bytes, BucketUnits::kRows, workspace, workspace_bytes, flags, h)));
  BucketJob j;
  j.op = BucketOp::kAgc;
  j.scope = BucketScope::kTensor;
  j.clip = clip;
  j.eps = eps;
  j.beta = beta;
  j.preserve = preserve;
  j.flags = flags;
  j.checksum = h->checksum;
  return bucket_dispatch<T, P>(*h, j, workspace, stream);
}

}  // namespace detail

// Device workspace for the plan's ops (the plan image + per-item and per-group scratch); 0 on the host.
[[nodiscard]] inline Status bucket_workspace_bytes(const void* plan, size_t plan_bytes, size_t* bytes) {
  return detail::workspace_bytes(detail::kBucketCppNames, plan, plan_bytes, bytes);
}

// CUDA plans: copies the plan into the workspace (asynchronously on `stream`; once per plan, outside
// graph capture). Host plans: nothing to do.
[[nodiscard]] inline Status bucket_plan_upload(const void* plan, size_t plan_bytes, void* workspace,
                                               size_t workspace_bytes, stream_t stream = nullptr) {
  return detail::plan_upload(detail::kBucketCppNames, plan, plan_bytes, workspace, workspace_bytes, stream);
}

// power: g <- K sign(g)|g|^beta, K keeping the scope's L1 or L2 norm (kNone: K = 1). beta > 0.
// With kL1 this is the PGT map on |g| / sum|g|. Without preservation no statistics are taken and
// `flags` only reports kBucketFlagStalePlan.
template <class T>
[[nodiscard]] Status bucket_power(const void* plan, size_t plan_bytes, float beta, NormPreserve preserve, BucketScope scope,
                                  void* workspace = nullptr, size_t workspace_bytes = 0, int32_t* flags = nullptr,
                                  stream_t stream = nullptr) {
  return detail::power<T>(detail::kBucketCppNames, plan, plan_bytes, beta, preserve, scope, workspace, workspace_bytes, flags,
                          stream);
}

// clip_norm, as torch.nn.utils.clip_grad_norm_ (L2): norm over the scope, coef = min(1, max_norm /
// (norm + 1e-6)), g <- coef g. norms (optional): one float per group (scope kTensor: per tensor;
// kBucket: one). A non-finite norm sets kBucketFlagNonFinite (NaN norm -> NaN gradients, inf -> 0 * g).
template <class T>
[[nodiscard]] Status bucket_clip_norm(const void* plan, size_t plan_bytes, float max_norm, BucketScope scope, float* norms = nullptr,
                                      void* workspace = nullptr, size_t workspace_bytes = 0,
                                      int32_t* flags = nullptr, stream_t stream = nullptr) {
  return detail::clip_norm<T>(detail::kBucketCppNames, plan, plan_bytes, max_norm, scope, norms, workspace, workspace_bytes, flags,
                              stream);
}

// AGC (adaptive gradient clipping, NFNets / timm's adaptive_clip_grad) per unit of a kRows plan:
// limit = clip * max(||W_u||, eps); G_u <- G_u * limit / max(||G_u||, 1e-6) unless ||G_u|| < limit.
// Then, in the same pass, the optional power map per unit: beta != 1 or preserve != kNone applies
// g <- K sign(g)|g|^beta to the clipped unit (K keeping its L1 / L2 norm). beta = 1, kNone: AGC only.
template <class T, class P = T>
[[nodiscard]] Status bucket_agc(const void* plan, size_t plan_bytes, float clip, float eps, float beta = 1.f,
                                NormPreserve preserve = NormPreserve::kNone, void* workspace = nullptr,
                                size_t workspace_bytes = 0, int32_t* flags = nullptr, stream_t stream = nullptr) {
  return detail::agc<T, P>(detail::kBucketCppNames, plan, plan_bytes, clip, eps, beta, preserve, workspace, workspace_bytes, flags,
                           stream);
}

POWERGRAD_NS_END

