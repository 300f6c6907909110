// powergrad device kernels: launch-error helper shared by every op's launchers.
#pragma once

#include <cuda_runtime.h>

#include "powergrad/config.hpp"
#include "powergrad/status.hpp"

POWERGRAD_NS_BEGIN
namespace device {

// Maps a failed launch (bad configuration, no device, ...) to kCudaError with the runtime's reason.
inline Status check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    return powergrad::detail::fail(Status::kCudaError, "%s: %s", what, cudaGetErrorString(e));
  return Status::kSuccess;
}

}  // namespace device
POWERGRAD_NS_END
