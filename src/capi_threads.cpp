// powergrad C ABI: the host backend's thread count (docs/design.md §6.1), declared in the last block
// of powergrad_c.h. The setting is process-wide and changes no result, only how many threads a host
// op may use.
#include <exception>

#include "powergrad/host_config.hpp"
#include "powergrad/powergrad_c.h"
#include "powergrad/status.hpp"

extern "C" {

PG_API pg_status_t pg_set_host_threads(int32_t threads) {
  try {
    return static_cast<pg_status_t>(powergrad::detail::set_host_threads_named(threads, "threads"));
  } catch (...) {
    powergrad::detail::fail(powergrad::Status::kSuccess, "internal error: unexpected C++ exception");
    return PG_STATUS_INTERNAL_ERROR;
  }
}

PG_API int32_t pg_host_threads(void) {
  powergrad::detail::clear_error();
  return powergrad::host_threads();
}

}  // extern "C"
