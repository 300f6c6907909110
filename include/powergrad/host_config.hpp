// powergrad C++ API: the host backend's process-wide settings (docs/design.md §6.1, §6.2).
//
//   set_host_threads(n)   threads a host op may use: n >= 1, or 0 for the default (the machine's
//                         hardware concurrency). Python's binding sets it from torch.get_num_threads().
//   set_host_isa(isa)     the instruction set of the host loops (kAuto: the best this CPU supports);
//                         for tests and benchmarks, since every path gives the same bits.
//
// Neither setting changes a result: work is split into fixed chunks merged in a fixed order, and
// every ISA path performs the same roundings.
#pragma once

#include "powergrad/config.hpp"
#include "powergrad/detail/validate.hpp"
#include "powergrad/host/parallel.hpp"
#include "powergrad/math/vec_host.hpp"
#include "powergrad/status.hpp"

POWERGRAD_NS_BEGIN

namespace detail {
inline Status set_host_threads_named(int n, const char* name) {
  clear_error();
  POWERGRAD_REQUIRE(n >= 0 && n <= host::kMaxHostThreads, Status::kInvalidValue,
                    "%s = %d: must be 0 (the default: hardware concurrency) or 1..%d", name, n, host::kMaxHostThreads);
  host::thread_detail::host_threads_setting().store(n, std::memory_order_relaxed);
  return Status::kSuccess;
}
inline Status set_host_isa_named(int isa, const char* name) {
  clear_error();
  POWERGRAD_REQUIRE(isa >= -1 && isa <= 2, Status::kInvalidValue, "%s (%d) is not a HostIsa value", name, isa);
  POWERGRAD_REQUIRE(vec::host_isa_supported(static_cast<HostIsa>(isa)), Status::kUnsupported,
                    "%s (%d): this CPU or build does not support that instruction set", name, isa);
  vec::detail::isa_setting().store(isa, std::memory_order_relaxed);
  return Status::kSuccess;
}
}  // namespace detail

[[nodiscard]] inline Status set_host_threads(int threads) { return detail::set_host_threads_named(threads, "threads"); }
// The thread count host ops use now (the setting, or the default when it is 0).
inline int host_threads() { return host::host_threads(); }

[[nodiscard]] inline Status set_host_isa(HostIsa isa) { return detail::set_host_isa_named(static_cast<int>(isa), "isa"); }
// The path host ops take now (never kAuto).
inline HostIsa host_isa() { return vec::active_host_isa(); }
inline bool host_isa_supported(HostIsa isa) { return vec::host_isa_supported(isa); }

POWERGRAD_NS_END
