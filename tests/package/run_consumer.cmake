# cmake -DMODE=install|buildtree|fetchcontent|subdirectory -DSOURCE_DIR=<powergrad source> -DWORK_DIR=<scratch>
#       [-DGENERATOR=<generator>] [-DCXX_COMPILER=<c++>] -P run_consumer.cmake
#
# Configures, builds and runs tests/package/consumer against powergrad:
#   install       configure powergrad alone, cmake --install it to WORK_DIR/prefix, check the installed
#                 tree, then build the consumer with find_package(powergrad CONFIG REQUIRED)
#                 (and check that asking for an incompatible major version fails);
#   buildtree     configure powergrad alone and find_package it from its build tree (export());
#   fetchcontent  the consumer pulls powergrad in with FetchContent (SOURCE_DIR);
#   subdirectory  the consumer pulls powergrad in with add_subdirectory.
# The sub-project modes leave POWERGRAD_ENABLE_CUDA at its default: the C++-only consumer must get
# neither the CUDA language (even where nvcc is installed) nor any installed powergrad file.
# Every mode checks that the consumer sees the same include layout: the files below the include roots
# of powergrad::powergrad, relative to their root, are those of include/ and kernels/ merged.
cmake_minimum_required(VERSION 3.25)

foreach(_var MODE SOURCE_DIR WORK_DIR)
  if(NOT DEFINED ${_var})
    message(FATAL_ERROR "run_consumer.cmake: -D${_var}=... is required")
  endif()
endforeach()

set(_common_args -DCMAKE_BUILD_TYPE=Release)
if(GENERATOR)
  list(APPEND _common_args -G "${GENERATOR}")
endif()
if(CXX_COMPILER)
  list(APPEND _common_args "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()

function(run_step what)
  message(STATUS "[package.${MODE}] ${what}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "[package.${MODE}] ${what} failed (${rc})")
  endif()
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
set(_consumer_args
  -S "${SOURCE_DIR}/tests/package/consumer" -B "${WORK_DIR}/consumer-build"
  ${_common_args} "-DPOWERGRAD_SOURCE_DIR=${SOURCE_DIR}" "-DPOWERGRAD_CONSUME=${MODE}")
# powergrad configured on its own (install, buildtree): host only, to keep the test fast.
set(_powergrad_args ${_common_args} -DPOWERGRAD_ENABLE_CUDA=OFF
    -DPOWERGRAD_BUILD_TESTS=OFF -DPOWERGRAD_BUILD_BENCH=OFF -DPOWERGRAD_BUILD_EXAMPLES=OFF)

if(MODE STREQUAL "install")
  set(_prefix "${WORK_DIR}/prefix")
  run_step("configure powergrad"
    ${CMAKE_COMMAND} -S "${SOURCE_DIR}" -B "${WORK_DIR}/powergrad-build" ${_powergrad_args}
    "-DCMAKE_INSTALL_PREFIX=${_prefix}")
  run_step("build powergrad" ${CMAKE_COMMAND} --build "${WORK_DIR}/powergrad-build")
  run_step("install powergrad" ${CMAKE_COMMAND} --install "${WORK_DIR}/powergrad-build")

  set(_expect
    include/powergrad/powergrad.hpp
    include/powergrad/xent.hpp
    lib/cmake/powergrad/powergradConfig.cmake
    lib/cmake/powergrad/powergradConfigVersion.cmake
    lib/cmake/powergrad/powergradTargets.cmake
    share/doc/powergrad/LICENSE)
  # Every kernel header must land next to the API headers (they are included as powergrad/kernels/...).
  file(GLOB_RECURSE _kernel_headers RELATIVE "${SOURCE_DIR}/kernels" "${SOURCE_DIR}/kernels/powergrad/*")
  foreach(_h IN LISTS _kernel_headers)
    list(APPEND _expect "include/${_h}")
  endforeach()
  foreach(_f IN LISTS _expect)
    if(NOT EXISTS "${_prefix}/${_f}")
      message(FATAL_ERROR "[package.install] ${_f} is missing from the installed tree ${_prefix}")
    endif()
  endforeach()

  list(APPEND _consumer_args "-DCMAKE_PREFIX_PATH=${_prefix}" "-DPOWERGRAD_EXPECT_PREFIX=${_prefix}"
       -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF)

  # SameMajorVersion: asking for powergrad 1.0 must not accept 0.x.
  message(STATUS "[package.install] find_package(powergrad 1.0) must fail")
  execute_process(
    COMMAND ${CMAKE_COMMAND} -S "${SOURCE_DIR}/tests/package/consumer" -B "${WORK_DIR}/version-check"
            ${_common_args} -DPOWERGRAD_ENABLE_CUDA=OFF "-DCMAKE_PREFIX_PATH=${_prefix}" -DPOWERGRAD_CONSUME=find_package
            -DPOWERGRAD_FIND_VERSION=1.0 -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
    RESULT_VARIABLE _rc OUTPUT_QUIET ERROR_QUIET)
  if(_rc EQUAL 0)
    message(FATAL_ERROR "[package.install] find_package(powergrad 1.0) accepted version 0.x")
  endif()
elseif(MODE STREQUAL "buildtree")
  run_step("configure powergrad"
    ${CMAKE_COMMAND} -S "${SOURCE_DIR}" -B "${WORK_DIR}/powergrad-build" ${_powergrad_args})
  list(APPEND _consumer_args "-Dpowergrad_DIR=${WORK_DIR}/powergrad-build"
       "-DPOWERGRAD_EXPECT_PREFIX=${WORK_DIR}/powergrad-build")
elseif(NOT MODE STREQUAL "fetchcontent" AND NOT MODE STREQUAL "subdirectory")
  message(FATAL_ERROR "run_consumer.cmake: unknown MODE '${MODE}'")
endif()

if(MODE STREQUAL "install" OR MODE STREQUAL "buildtree")
  set(_consume find_package)
else()
  set(_consume ${MODE})
endif()
list(TRANSFORM _consumer_args REPLACE "^-DPOWERGRAD_CONSUME=.*$" "-DPOWERGRAD_CONSUME=${_consume}")

run_step("configure consumer" ${CMAKE_COMMAND} ${_consumer_args})

# The same include layout in every mode: the merge of include/ and kernels/ (disjoint trees).
set(_want_headers)
foreach(_root include kernels)
  file(GLOB_RECURSE _found RELATIVE "${SOURCE_DIR}/${_root}" "${SOURCE_DIR}/${_root}/*")
  list(APPEND _want_headers ${_found})
endforeach()
list(SORT _want_headers)
file(STRINGS "${WORK_DIR}/consumer-build/powergrad_headers.txt" _seen_headers)
if(NOT _seen_headers STREQUAL _want_headers)
  set(_missing ${_want_headers})
  list(REMOVE_ITEM _missing ${_seen_headers})
  set(_extra ${_seen_headers})
  list(REMOVE_ITEM _extra ${_want_headers})
  message(FATAL_ERROR "[package.${MODE}] the consumer's include layout differs from include/ + kernels/: "
                      "missing '${_missing}', unexpected '${_extra}'")
endif()
list(LENGTH _seen_headers _n)
message(STATUS "[package.${MODE}] include layout: ${_n} headers, as in include/ + kernels/")

if(NOT _consume STREQUAL "find_package")
  # A sub-project installs nothing unless asked (POWERGRAD_INSTALL).
  set(_consumer_prefix "${WORK_DIR}/consumer-prefix")
  run_step("install consumer" ${CMAKE_COMMAND} --install "${WORK_DIR}/consumer-build" --prefix "${_consumer_prefix}")
  file(GLOB_RECURSE _installed "${_consumer_prefix}/*")
  if(_installed)
    message(FATAL_ERROR "[package.${MODE}] installing the consumer installed powergrad files: ${_installed}")
  endif()
endif()

run_step("build consumer" ${CMAKE_COMMAND} --build "${WORK_DIR}/consumer-build")
find_program(_exe consumer PATHS "${WORK_DIR}/consumer-build" "${WORK_DIR}/consumer-build/Release"
             NO_DEFAULT_PATH REQUIRED)
run_step("run consumer" "${_exe}")
