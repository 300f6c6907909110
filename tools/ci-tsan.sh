#!/usr/bin/env bash
# The host tests under ThreadSanitizer (CMakePresets.json: preset tsan, build-tsan/, host backend
# only), including tests/test_concurrency.cpp (the C++ API and the C ABI from several threads).
# Debian 12, no GPU; the packages are those of .ci/deps.sh (g++ provides libtsan).
# Exits non-zero on a build failure, a failing test or a ThreadSanitizer report (halt_on_error=1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

start=$SECONDS
cmake --preset tsan
if ! grep -q '^POWERGRAD_SANITIZE_THREAD:BOOL=ON' build-tsan/CMakeCache.txt; then
  echo "ci-tsan: the build does not declare POWERGRAD_SANITIZE_THREAD; the run would be a plain run" >&2
  exit 1
fi
cmake --build --preset tsan -j"$(nproc)"
echo "ci-tsan: built in $((SECONDS - start)) s"
# The test preset filters on the label host and sets TSAN_OPTIONS (halt_on_error=1).
ctest --preset tsan -j"$(nproc)"
echo "ci-tsan: passed in $((SECONDS - start)) s"
