// powergrad C ABI: bfloat16 ops.
#define PG_CAPI_T powergrad::bfloat16_t
#define PG_CAPI_FN xent_call_bf16
#include "xent_dtype.inc"
