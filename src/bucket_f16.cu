// powergrad C ABI: gradient-bucket transforms of f16 gradients.
#define PG_CAPI_T powergrad::half_t
#define PG_CAPI_FN bucket_call_f16
#include "bucket_dtype.inc"
