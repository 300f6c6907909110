# ctest include file (tests/capi/CMakeLists.txt): labels the discovered C ABI device tests.
foreach(_pg_test IN LISTS powergrad_capi_device_tests_TESTS)
  set_tests_properties("${_pg_test}" PROPERTIES LABELS "capi;device")
endforeach()
