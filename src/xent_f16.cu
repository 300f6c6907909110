// powergrad C ABI: float16 ops.
#define PG_CAPI_T powergrad::half_t
#define PG_CAPI_FN xent_call_f16
#include "xent_dtype.inc"
