#!/usr/bin/env bash
# Fuzzes the C ABI for a bounded time (tests/fuzz/fuzz_capi.cpp: libFuzzer + ASan + UBSan, host
# backend). Debian 12, no GPU needed:
#   1. installs clang and libclang-rt-14-dev (libFuzzer) with apt-get when they are missing,
#   2. configures build-fuzz/ with clang (POWERGRAD_BUILD_FUZZ=ON, host only) and builds the target,
#   3. replays the seed corpus (tests/fuzz/corpus), then fuzzes a scratch copy of it: by default a
#      reproducible run (one process, seed FUZZ_SEED = 20261201, FUZZ_RUNS = 40000 inputs, at most
#      FUZZ_SECONDS = 120 s), which is what CI runs; FUZZ_SEED=0 explores instead (random seeds, one
#      job per core, FUZZ_JOBS, for FUZZ_SECONDS).
# Exits non-zero on any crash, sanitizer report or contract violation; the failing input is left
# in build-fuzz/artifacts/ and printed in base64 (reproduce: build-fuzz/tests/fuzz/powergrad_fuzz_capi FILE).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${FUZZ_SECONDS:-120}
seed=${FUZZ_SEED:-20261201}
runs=${FUZZ_RUNS:-40000}
jobs=${FUZZ_JOBS:-$(nproc)}
build=build-fuzz

packages=(clang libclang-rt-14-dev cmake ninja-build libgtest-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "ci-fuzz: installing ${missing[*]}" >&2
  sudo=()
  [ "$(id -u)" -ne 0 ] && sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -q
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

start=$SECONDS
CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DPOWERGRAD_ENABLE_CUDA=OFF -DPOWERGRAD_BUILD_BENCH=OFF -DPOWERGRAD_BUILD_EXAMPLES=OFF \
  -DPOWERGRAD_SANITIZE=OFF -DPOWERGRAD_SANITIZE_THREAD=OFF -DPOWERGRAD_BUILD_FUZZ=ON >/dev/null
cmake --build "$build" -j"$(nproc)" --target powergrad_fuzz_capi
echo "ci-fuzz: built in $((SECONDS - start)) s"

fuzzer=$build/tests/fuzz/powergrad_fuzz_capi
artifacts=$build/artifacts
work=$build/fuzz-corpus
rm -rf "$artifacts" "$work"
mkdir -p "$artifacts" "$work"
cp tests/fuzz/corpus/* "$work"/

"$fuzzer" -runs=0 tests/fuzz/corpus
echo "ci-fuzz: seed corpus replayed"

status=0
if [ "$seed" != 0 ]; then
  # Reproducible (the default, what CI runs): one process, a fixed seed and a fixed number of
  # inputs, so a given tree either passes or fails every time; FUZZ_SECONDS only bounds the time.
  ( cd "$build" && "../$fuzzer" -seed="$seed" -runs="$runs" -max_total_time="$seconds" -timeout=10 \
      -rss_limit_mb=2048 -artifact_prefix="artifacts/" -print_final_stats=1 fuzz-corpus ../tests/fuzz/corpus ) \
    >"$build/fuzz.log" 2>&1 || status=$?
else
  # Exploration (FUZZ_SEED=0): a random seed on every core for FUZZ_SECONDS; -fork stops at the
  # first failure; the merged corpus stays in build-fuzz/fuzz-corpus.
  ( cd "$build" && "../$fuzzer" -fork="$jobs" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="artifacts/" -print_final_stats=1 fuzz-corpus ../tests/fuzz/corpus ) \
    >"$build/fuzz.log" 2>&1 || status=$?
fi
tail -n 25 "$build/fuzz.log"
if [ "$status" -ne 0 ] || ls "$artifacts"/* >/dev/null 2>&1; then
  for f in "$artifacts"/*; do
    [ -e "$f" ] || continue
    echo "ci-fuzz: failing input $f (base64: $(base64 -w0 "$f"))"
  done
  echo "ci-fuzz: FAILED (exit $status) after $((SECONDS - start)) s; full log: $build/fuzz.log" >&2
  exit 1
fi
if [ "$seed" != 0 ]; then
  echo "ci-fuzz: no failure in $runs inputs from seed $seed (or ${seconds} s) ($((SECONDS - start)) s in all)"
else
  echo "ci-fuzz: no failure in ${seconds} s of fuzzing ($((SECONDS - start)) s in all)"
fi
