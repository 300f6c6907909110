// powergrad C ABI: bfloat16 ops.
#define PG_CAPI_T powergrad::bfloat16_t
#define PG_CAPI_FN xent_call_bf16
#include "xent_dtype.inc"

// The device kernels this library ships for bfloat16_t: every mode and target kind, instantiated
// explicitly (each op would instantiate its own; this names the whole set in one place).
#if defined(__CUDACC__)
POWERGRAD_XENT_INSTANTIATE(powergrad::bfloat16_t)
#endif
