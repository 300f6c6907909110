# cmake -DDIR=<scratch folder> -P forbidden_fixture.cmake
#
# Writes a fixture whose citations all resolve but whose source names one of the upper-case
# background files that the repository must never mention, then runs check_refs.cmake on it (which
# must fail: the test is WILL_FAIL). The name is assembled at run time so that no file in the
# repository contains it.
cmake_minimum_required(VERSION 3.25)
if(NOT DEFINED DIR)
  message(FATAL_ERROR "forbidden_fixture: -DDIR=<scratch folder> is required")
endif()
file(REMOVE_RECURSE "${DIR}")
string(CONCAT _name "DESIGN" ".md")
file(WRITE "${DIR}/docs/design.md" "# fixture design\n\n## 1. One\n")
file(WRITE "${DIR}/src/mentions.cpp" "// Resolves: docs/design.md §1.\n// Background: see ${_name}.\nint fixture_value() { return 3; }\n")
set(ROOT "${DIR}")
include("${CMAKE_CURRENT_LIST_DIR}/check_refs.cmake")
