// XLA FFI binding of powergrad for JAX: what the cross-entropy and bucket handlers share.
//
// The handlers (xent_handlers.hpp, bucket_handlers.hpp) are templates over the backend: the host
// translation units (*_cpu.cpp) instantiate Backend::kHost for XLA's "cpu" platform, the CUDA ones
// (*_cuda.cu, compiled by nvcc) Backend::kCuda on the stream XLA passes. Every handler validates
// its buffers' dtypes and element counts, then calls the C++ API (include/powergrad/xent.hpp,
// bucket.hpp) with an argument-name table that spells arguments as the Python caller
// (python/powergrad/jax.py) knows them, so a failure reads "powergrad: targets[3] = ..." (docs/design.md §8).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "powergrad/status.hpp"
#include "powergrad/types.hpp"
#include "powergrad/math/dtype.hpp"
#include "xla/ffi/api/ffi.h"

namespace powergrad_jax {

namespace ffi = xla::ffi;
namespace pg = powergrad;

template <class T>
struct Tag {
  using type = T;
};

// A powergrad status as an FFI error: bad arguments are kInvalidArgument (JAX raises them as a
// runtime error carrying the message), a CUDA failure is kInternal.
inline ffi::Error error_of(pg::Status s) {
  if (s == pg::Status::kSuccess) return ffi::Error::Success();
  std::string msg = std::string("powergrad: ") + pg::last_error_message();
  if (s == pg::Status::kCudaError) return ffi::Error::Internal(std::move(msg));
  if (s == pg::Status::kNoCudaSupport || s == pg::Status::kUnsupported)
    return ffi::Error(ffi::ErrorCode::kUnimplemented, std::move(msg));
  return ffi::Error::InvalidArgument(std::move(msg));
}

inline ffi::Error invalid(const std::string& msg) { return ffi::Error::InvalidArgument("powergrad: " + msg); }

inline const char* dtype_name(ffi::DataType t) {
  switch (t) {
    case ffi::DataType::F32: return "float32";
    case ffi::DataType::F16: return "float16";
    case ffi::DataType::BF16: return "bfloat16";
    case ffi::DataType::S32: return "int32";
    case ffi::DataType::S64: return "int64";
    default: return "an unsupported dtype";
  }
}

// Calls f(Tag<T>{}) with the storage type of a float buffer (float32, float16, bfloat16).
template <class F>
ffi::Error with_float_type(ffi::DataType t, const char* name, F&& f) {
  switch (t) {
    case ffi::DataType::F32: return f(Tag<float>{});
    case ffi::DataType::F16: return f(Tag<pg::half_t>{});
    case ffi::DataType::BF16: return f(Tag<pg::bfloat16_t>{});
    default: return invalid(std::string(name) + " has dtype " + dtype_name(t) + "; float32, float16 or bfloat16 expected");
  }
}

template <class T>
constexpr ffi::DataType ffi_dtype_of() {
  if constexpr (std::is_same_v<T, float>) return ffi::DataType::F32;
  else if constexpr (std::is_same_v<T, pg::half_t>) return ffi::DataType::F16;
  else return ffi::DataType::BF16;
}

// The last dimension of a buffer (the class dimension), or 0 for a scalar.
inline int64_t last_dim(const ffi::AnyBuffer& b) {
  auto d = b.dimensions();
  return d.size() == 0 ? 0 : d.back();
}

inline int64_t as_i64(size_t n) { return static_cast<int64_t>(n); }

}  // namespace powergrad_jax
