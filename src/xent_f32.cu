// powergrad C ABI: float32 ops, and the (dtype-free) merge of split-form statistics.
#define PG_CAPI_T float
#define PG_CAPI_FN xent_call_f32
#include "xent_dtype.inc"

// The device kernels this library ships for float: every mode and target kind, instantiated
// explicitly (each op would instantiate its own; this names the whole set in one place).
#if defined(__CUDACC__)
POWERGRAD_XENT_INSTANTIATE(float)
#endif

namespace powergrad_capi {

powergrad::Status merge_stats_call(pg_device_t device, const pg_row_stats_t* parts, int64_t shards, int64_t rows,
                                   float alpha, pg_row_stats_t* merged, void* stream) {
  return powergrad::xent_merge_stats(device == PG_DEVICE_CUDA ? powergrad::Backend::kCuda : powergrad::Backend::kHost,
                                     reinterpret_cast<const powergrad::RowStats*>(parts), shards, rows, alpha,
                                     reinterpret_cast<powergrad::RowStats*>(merged),
                                     static_cast<powergrad::stream_t>(stream));
}

}  // namespace powergrad_capi
