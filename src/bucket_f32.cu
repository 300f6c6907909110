// powergrad C ABI: gradient-bucket transforms of f32 gradients.
#define PG_CAPI_T float
#define PG_CAPI_FN bucket_call_f32
#include "bucket_dtype.inc"

namespace powergrad_capi {

// Dtype-free, but its CUDA half is a cudaMemcpyAsync: lives in a CUDA translation unit.
powergrad::Status bucket_upload_call(const void* plan, size_t plan_bytes, void* workspace, size_t workspace_bytes,
                                     void* stream) {
  return powergrad::detail::plan_upload(kBucketCNames, plan, plan_bytes, workspace, workspace_bytes,
                                         static_cast<powergrad::stream_t>(stream));
}

}  // namespace powergrad_capi
