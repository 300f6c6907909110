// powergrad: configuration macros shared by every layer.
#pragma once

#include <cstdint>

#define POWERGRAD_VERSION_MAJOR 0
#define POWERGRAD_VERSION_MINOR 1
#define POWERGRAD_VERSION_PATCH 0

// Versioned inline namespace (as CUB does) so that two copies of the library built at different
// versions can live in one process without ODR clashes.
#define POWERGRAD_NS_BEGIN namespace powergrad { inline namespace v0_1 {
#define POWERGRAD_NS_END } }

#if defined(__CUDACC__)
#define PG_HD __host__ __device__ __forceinline__
#define PG_DEVICE __device__ __forceinline__
#else
#define PG_HD inline
#define PG_DEVICE inline
#endif

// Kernels get hidden visibility so that a shared library built from these headers exports only
// what it means to (the C ABI), never a template instantiation.
#if defined(__GNUC__)
#define PG_KERNEL_VISIBILITY __attribute__((visibility("hidden")))
#else
#define PG_KERNEL_VISIBILITY
#endif
