# Build flags of powergrad's own targets (library, tests, benchmarks, examples). Internal: not
# installed, and nothing here reaches a consumer of powergrad::powergrad.
#
#   powergrad_target_flags(<target>)   warnings for the C++ and CUDA units, and the sanitizer chosen
#                                       by POWERGRAD_SANITIZE / POWERGRAD_SANITIZE_THREAD
#   powergrad_sanitize(<target>)        the sanitizer alone (C targets with their own warning flags)
include_guard(GLOBAL)

# nvcc: the host compiler's warnings for the host side of .cu units; device-side diagnostics that
# hide real bugs become errors (a __host__ __device__ function calling a host-only one compiles to a
# trap on the device otherwise).
set(POWERGRAD_CUDA_WARNING_FLAGS
  -Xcompiler=-Wall
  -Xcompiler=-Wextra
  --Wreorder
  --Werror=cross-execution-space-call
  --Werror=reorder)

if(POWERGRAD_SANITIZE)
  set(_pg_sanitizer_flags -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
elseif(POWERGRAD_SANITIZE_THREAD)
  set(_pg_sanitizer_flags -fsanitize=thread -fno-omit-frame-pointer)
else()
  set(_pg_sanitizer_flags)
endif()
if(_pg_sanitizer_flags AND POWERGRAD_HAS_CUDA)
  message(STATUS "powergrad: sanitizers instrument the C/C++ units only, not the .cu units")
endif()

function(powergrad_sanitize target)
  if(_pg_sanitizer_flags)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:C,CXX>:${_pg_sanitizer_flags}>)
    target_link_options(${target} PRIVATE ${_pg_sanitizer_flags})
  endif()
endfunction()

function(powergrad_target_flags target)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra>)
  endif()
  if(POWERGRAD_HAS_CUDA)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:${POWERGRAD_CUDA_WARNING_FLAGS}>)
  endif()
  powergrad_sanitize(${target})
endfunction()
