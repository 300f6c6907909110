// powergrad C ABI: bfloat16 linear cross-entropy.
#define PG_CAPI_T powergrad::bfloat16_t
#define PG_CAPI_FN linear_xent_call_bf16
#include "linear_xent_dtype.inc"
