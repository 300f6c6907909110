// powergrad C ABI: float16 ops.
#define PG_CAPI_T powergrad::half_t
#define PG_CAPI_FN xent_call_f16
#include "xent_dtype.inc"

// The device kernels this library ships for half_t: every mode and target kind, instantiated
// explicitly (each op would instantiate its own; this names the whole set in one place).
#if defined(__CUDACC__)
POWERGRAD_XENT_INSTANTIATE(powergrad::half_t)
#endif
