// powergrad: status codes and the thread-local last-error message.
#pragma once

#include <cstdarg>
#include <cstdio>

#include "powergrad/config.hpp"

POWERGRAD_NS_BEGIN

// Every entry point returns one of these; nothing throws across a library boundary.
enum class Status : int {
  kSuccess = 0,
  kNullPointer = 1,            // a required pointer is null
  kInvalidSize = 2,            // negative size, ld < cols, bad shard range, ...
  kInvalidValue = 3,           // alpha, label smoothing, scale, ... out of its domain
  kInvalidLayout = 4,          // e.g. an in-place call whose layouts differ, overlapping buffers
  kInvalidTarget = 5,          // a class index outside [0, C) that is not ignore_index (host backend)
  kWorkspaceTooSmall = 6,      // the caller's workspace is smaller than the size query returned
  kNoCudaSupport = 7,          // a device call in a build without CUDA
  kCudaError = 8,              // a CUDA runtime error (launch failure, ...)
  kUnsupported = 9,            // a valid request this build does not implement
};

inline const char* status_string(Status s) {
  switch (s) {
    case Status::kSuccess: return "success";
    case Status::kNullPointer: return "null pointer";
    case Status::kInvalidSize: return "invalid size";
    case Status::kInvalidValue: return "invalid value";
    case Status::kInvalidLayout: return "invalid layout";
    case Status::kInvalidTarget: return "invalid target";
    case Status::kWorkspaceTooSmall: return "workspace too small";
    case Status::kNoCudaSupport: return "no CUDA support in this build";
    case Status::kCudaError: return "CUDA error";
    case Status::kUnsupported: return "unsupported";
  }
  return "unknown status";
}

namespace detail {
inline char* last_error_buffer() {
  static thread_local char buf[512] = {0};
  return buf;
}
}  // namespace detail

// The message that explains the last non-success status returned on this thread.
inline const char* last_error_message() { return detail::last_error_buffer(); }

namespace detail {
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
inline Status fail(Status s, const char* fmt, ...) {
  char* buf = last_error_buffer();
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, 512, fmt, ap);
  va_end(ap);
  return s;
}
inline void clear_error() { last_error_buffer()[0] = '\0'; }
}  // namespace detail

POWERGRAD_NS_END
