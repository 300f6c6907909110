# ctest include file (tests/capi/CMakeLists.txt): labels every discovered C ABI GoogleTest test.
foreach(_pg_test IN LISTS powergrad_capi_tests_TESTS)
  set_tests_properties("${_pg_test}" PROPERTIES LABELS "capi;host")
endforeach()
