// powergrad C ABI: gradient-bucket transforms of bf16 gradients.
#define PG_CAPI_T powergrad::bfloat16_t
#define PG_CAPI_FN bucket_call_bf16
#include "bucket_dtype.inc"
