// powergrad C ABI: float32 linear cross-entropy.
#define PG_CAPI_T float
#define PG_CAPI_FN linear_xent_call_f32
#include "linear_xent_dtype.inc"
