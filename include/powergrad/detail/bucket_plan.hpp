// powergrad internal: the bucket plan, a flat byte image that describes one gradient bucket to both
// backends (docs/design.md §2.4, §3).
//
// A plan is built once on the host from the bucket's tensors (validated there: null pointers,
// counts, overlapping tensors), and for the CUDA backend copied once into the start of the caller's
// device workspace; every later op launch reads its metadata from there, so a launch takes no host
// data and is CUDA-graph capturable. The image is position independent (plain integers).
//
// Work partition, shared by the host loops and the kernels: every tensor is split into statistics
// units (the whole tensor, or AGC's rows), every unit into items of at most kItemElems contiguous
// elements. An item is the work of one warp; per-item partial sums are reduced per group (unit,
// tensor or bucket) in item order, so results do not depend on scheduling.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "powergrad/bucket_types.hpp"
#include "powergrad/config.hpp"
#include "powergrad/math/bucket_math.hpp"

POWERGRAD_NS_BEGIN
namespace detail {

constexpr uint32_t kBucketPlanMagic = 0x50424750u;  // "PGBP"
constexpr uint32_t kBucketPlanVersion = 1;
constexpr int64_t kBucketItemElems = 4096;
constexpr size_t kBucketAlign = 256;

struct alignas(16) BucketPlanHeader {
  uint32_t magic;
  uint32_t version;
  int32_t backend;      // Backend the tensors live on
  int32_t grad_dtype;   // DType
  int32_t param_dtype;  // DType (kRows plans), else = grad_dtype
  int32_t units;        // BucketUnits
  int64_t n_tensors;
  int64_t n_items;
  int64_t n_units;
  int64_t total_numel;
  uint64_t plan_bytes;  // header + tensor table
  uint64_t checksum;    // FNV-1a of the image with this field zero
  uint64_t reserved;    // 0 (explicit, so that the hashed header has no padding bytes)
};

struct alignas(16) BucketPlanTensor {
  uint64_t grad;  // address of the gradient
  uint64_t param; // address of the parameter (kRows), else 0
  int64_t numel;
  int64_t unit_len;        // elements per unit
  int64_t items_per_unit;  // ceil(unit_len / kBucketItemElems)
  int64_t n_units;         // 0 for an empty tensor
  int64_t first_item;
  int64_t first_unit;
};

static_assert(sizeof(BucketPlanHeader) == 80 && sizeof(BucketPlanTensor) == 64, "plan record sizes are part of the format");

PG_HD size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

// The most tensors one plan may hold: the plan's byte size and every index stay far from overflow.
constexpr int64_t kBucketMaxTensors = int64_t(1) << 40;

inline size_t bucket_plan_bytes_for(int64_t n_tensors) {
  return sizeof(BucketPlanHeader) + static_cast<size_t>(n_tensors) * sizeof(BucketPlanTensor);
}

PG_HD const BucketPlanTensor* plan_tensors(const BucketPlanHeader* h) {
  return reinterpret_cast<const BucketPlanTensor*>(h + 1);
}

PG_HD int64_t bucket_groups(const BucketPlanHeader& h, BucketScope scope) {
  if (h.units == static_cast<int32_t>(BucketUnits::kRows)) return h.n_units;
  return scope == BucketScope::kBucket ? 1 : h.n_tensors;
}

// Device workspace: [plan image][per-item partial sums, 32 B each][per-group coefficients].
struct BucketWorkspaceLayout {
  size_t partials = 0, coefs = 0, total = 0;
};
inline BucketWorkspaceLayout bucket_workspace_layout(const BucketPlanHeader& h) {
  BucketWorkspaceLayout l;
  l.partials = round_up(static_cast<size_t>(h.plan_bytes), kBucketAlign);
  l.coefs = round_up(l.partials + static_cast<size_t>(h.n_items) * sizeof(math::BucketSums), kBucketAlign);
  const int64_t groups = h.n_units > h.n_tensors ? h.n_units : (h.n_tensors > 0 ? h.n_tensors : 1);
  l.total = round_up(l.coefs + static_cast<size_t>(groups) * sizeof(math::BucketCoef), kBucketAlign);
  return l;
}

// FNV-1a over 8-byte words (the records are multiples of 16 bytes): every op call re-checks the plan on
// the host, so this runs once per step and must stay cheap (~1000 tensors: 8 k words).
inline uint64_t fnv1a_words(const void* p, size_t bytes, uint64_t h = 1469598103934665603ull) {
  const unsigned char* c = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i + 8 <= bytes; i += 8) {
    uint64_t w;
    std::memcpy(&w, c + i, 8);
    h = (h ^ w) * 1099511628211ull;
  }
  return h;
}
inline uint64_t bucket_plan_checksum(const BucketPlanHeader* h) {
  BucketPlanHeader copy = *h;
  copy.checksum = 0;
  const uint64_t c = fnv1a_words(&copy, sizeof copy);
  return fnv1a_words(h + 1, static_cast<size_t>(h->plan_bytes) - sizeof copy, c);
}

// The last tensor whose first_item (kItem) or first_unit (kUnit) is <= v (tensors are sorted by
// both; empty tensors share the value of the next one and are skipped by taking the last).
template <bool kByUnit>
PG_HD int64_t find_tensor(const BucketPlanTensor* t, int64_t n, int64_t v) {
  int64_t lo = 0, hi = n;  // answer in [lo, hi)
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    const int64_t key = kByUnit ? t[mid].first_unit : t[mid].first_item;
    if (key <= v) lo = mid; else hi = mid;
  }
  return lo;
}

// Where item `item` lives: its tensor, element range [begin, end) in that tensor, and its group.
struct BucketItem {
  int64_t tensor, begin, end, group;
};
PG_HD BucketItem locate_item(const BucketPlanHeader& h, int64_t item, BucketScope scope) {
  const BucketPlanTensor* ts = plan_tensors(&h);
  BucketItem it;
  it.tensor = find_tensor<false>(ts, h.n_tensors, item);
  const BucketPlanTensor& t = ts[it.tensor];
  const int64_t local = item - t.first_item;
  const int64_t unit = local / t.items_per_unit;
  const int64_t part = local - unit * t.items_per_unit;
  it.begin = unit * t.unit_len + part * kBucketItemElems;
  const int64_t unit_end = (unit + 1) * t.unit_len;
  it.end = it.begin + kBucketItemElems < unit_end ? it.begin + kBucketItemElems : unit_end;
  if (h.units == static_cast<int32_t>(BucketUnits::kRows)) it.group = t.first_unit + unit;
  else it.group = scope == BucketScope::kBucket ? 0 : it.tensor;
  return it;
}

// The items [first, last) of group g.
PG_HD void group_items(const BucketPlanHeader& h, int64_t g, BucketScope scope, int64_t& first, int64_t& last) {
  const BucketPlanTensor* ts = plan_tensors(&h);
  if (h.units == static_cast<int32_t>(BucketUnits::kRows)) {
    const BucketPlanTensor& t = ts[find_tensor<true>(ts, h.n_tensors, g)];
    first = t.first_item + (g - t.first_unit) * t.items_per_unit;
    last = first + t.items_per_unit;
  } else if (scope == BucketScope::kBucket) {
    first = 0;
    last = h.n_items;
  } else {
    first = ts[g].first_item;
    last = first + ts[g].n_units * ts[g].items_per_unit;
  }
}

}  // namespace detail
POWERGRAD_NS_END
