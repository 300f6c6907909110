// powergrad C ABI: float16 linear cross-entropy.
#define PG_CAPI_T powergrad::half_t
#define PG_CAPI_FN linear_xent_call_f16
#include "linear_xent_dtype.inc"
