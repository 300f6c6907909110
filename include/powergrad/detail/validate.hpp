// powergrad internal: the one validation layer of the C++ API (docs/design.md §8).
//
// Every op checks its arguments with these helpers before anything is written. A failed check
// returns a Status and leaves a message in last_error_message() that names the argument as the
// caller spelled it: the C++ API passes its own parameter names ("problem.rows", "out.dlogits"),
// the C ABI passes the names of its structs' fields ("problem->rows", "outputs->dlogits"), so
// each message is formatted once, from a literal that can be found in the source.
#pragma once

#include <cstddef>
#include <cstdint>

#include "powergrad/config.hpp"
#include "powergrad/status.hpp"

// Returns from the enclosing function with `status` and a printf-style message when `cond` is false.
#define POWERGRAD_REQUIRE(cond, status, ...)                                 \
  do {                                                                       \
    if (!(cond)) return ::powergrad::detail::fail(status, __VA_ARGS__);      \
  } while (0)

// Returns from the enclosing function with the Status of `expr` when it is not kSuccess.
#define POWERGRAD_TRY(expr)                                                  \
  do {                                                                       \
    const ::powergrad::Status powergrad_try_status_ = (expr);               \
    if (powergrad_try_status_ != ::powergrad::Status::kSuccess) return powergrad_try_status_; \
  } while (0)

POWERGRAD_NS_BEGIN
namespace detail {

// For printing int64_t with %lld on every platform.
inline long long as_ll(int64_t v) { return static_cast<long long>(v); }

// Whether the byte ranges [a, a + na) and [b, b + nb) share a byte (empty ranges share none). A range
// that would run past the end of the address space is taken to reach it (so it overlaps everything
// above its start): such a buffer cannot exist, and the caller's other checks reject it.
inline bool ranges_overlap(const void* a, uint64_t na, const void* b, uint64_t nb) {
  if (na == 0 || nb == 0) return false;
  const uint64_t pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  const uint64_t ea = na > UINT64_MAX - pa ? UINT64_MAX : pa + na;
  const uint64_t eb = nb > UINT64_MAX - pb ? UINT64_MAX : pb + nb;
  return pa < eb && pb < ea;
}

// `backend` (a Backend as its int value: 0 kHost, 1 kCuda) is one this translation unit can run:
// kCuda needs the caller's translation unit to be compiled by nvcc.
inline Status check_backend(int backend, const char* name) {
  POWERGRAD_REQUIRE(backend == 0 || backend == 1, Status::kInvalidValue, "%s (%d) is not a Backend value", name,
                    backend);
#if !defined(__CUDACC__)
  POWERGRAD_REQUIRE(backend == 0, Status::kNoCudaSupport,
                    "%s is kCuda but this translation unit was not compiled with CUDA (nvcc)", name);
#endif
  return Status::kSuccess;
}

// A caller-provided CUDA workspace: 16-byte aligned and at least `need` bytes (`query` names the size
// query the caller should have used); null is fine when nothing is needed.
inline Status check_workspace_size(const void* ws, size_t ws_bytes, size_t need, size_t align, const char* query) {
  POWERGRAD_REQUIRE((ws != nullptr || need == 0) && ws_bytes >= need, Status::kWorkspaceTooSmall,
                    "workspace (%zu bytes%s) is smaller than %s = %zu", ws_bytes, ws ? "" : ", null", query, need);
  POWERGRAD_REQUIRE(reinterpret_cast<uintptr_t>(ws) % align == 0, Status::kInvalidLayout,
                    "workspace must be %zu-byte aligned", align);
  return Status::kSuccess;
}

}  // namespace detail
POWERGRAD_NS_END
