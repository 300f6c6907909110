#!/usr/bin/env bash
# powergrad GPU check (docs/design.md §4-5): build HERE for an H100, run THERE, in two halves.
#
#   tools/gpu-check.sh build   # on the development machine (no GPU, CUDA 13 nvcc): ~5-10 min, 2 cores
#   tools/gpu-check.sh run     # on the GPU machine; without a GPU it says so and does a dry run
#   tools/gpu-check.sh sass    # here: only remake build-gpu/sass_report.md from the last build
#
# `build` configures a Release build for sm_90 (static CUDA runtime) in build-gpu/, builds every
# target it can (device tests, benchmarks, the dev/ sandbox), and keeps what must travel in
# build-gpu/carry/ (executables with device code, the host benchmark, the non-system shared
# libraries they need in carry/lib/, MANIFEST.txt, the offline SASS/ptxas report). It also writes
# build-gpu/sass_report.md (raw dumps in build-gpu/sass/): 128-bit global loads/stores (LDG.E.128 /
# STG.E.128), registers, stack, spills and local memory of every kernel, read with cuobjdump and
# from `-Xptxas -v` (no GPU time). cuobjdump/nvdisasm come from PyPI when the toolkit lacks them.
# build-gpu/ is git-ignored: run `build` again right before the device call, on the tree you test
# (MANIFEST.txt records the commit and whether the tree had uncommitted changes).
#
# The device call to make after `build` (one call, nothing else on the machine):
#   command:   tools/gpu-check.sh run
#   carry:     ["build-gpu/carry"]
#   timeout_s: 420
# `run` keeps itself under PG_BUDGET_S seconds (default 340, every step under `timeout`) and writes
# at most 8 files to $OUT: env.txt, tests_device.json, tests_device.log, sanitizer.log,
# bench_device.json (cross-entropy and bucket benchmarks), bench_device.log, summary.md (+ sass_report.md
# when it had to make it there).
# The summary table (op, dtype, shape, GB/s, ratio_to_copy, goals) is printed LAST.
#
# Knobs (environment): PG_BUDGET_S, PG_BENCH_SET=full|quick (default full), PG_BENCH_MIN_TIME
# (default 0.05 seconds: Google Benchmark 1.7.1 takes a plain number), PG_SANITIZER_FILTER (gtest
# filter for memcheck) and PG_SANITIZER_FILTER_SMALL (racecheck/initcheck/synccheck): small shapes
# only; PG_VARIANTS=1 (also run the dev/ tuning sandbox, if time is left).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
B="$ROOT/build-gpu"
C="$B/carry"
HERE_TOOLS="$B/tools"  # cuobjdump/nvdisasm from PyPI when the toolkit here has none

say() { printf '\n=== gpu-check: %s (%ss)\n' "$*" "$SECONDS"; }

find_cuobjdump() {
  local d
  for d in "$(dirname "$(command -v cuobjdump 2>/dev/null || echo /nonexistent/x)")" /usr/local/cuda/bin \
    "$HERE_TOOLS/nvidia/cu13/bin"; do
    if [ -x "$d/cuobjdump" ] && { [ -x "$d/nvdisasm" ] || command -v nvdisasm >/dev/null 2>&1; }; then
      echo "$d"
      return 0
    fi
  done
  return 1
}

# Whether a binary carries device code (a .nv_fatbin section). No `grep -q` here: with pipefail,
# grep leaving early makes readelf die of SIGPIPE and the pipeline report failure.
has_device_code() {
  local n
  n=$(readelf -S "$1" 2>/dev/null | grep -c '\.nv_fatbin')
  [ "${n:-0}" -gt 0 ]
}

# Executables among the arguments that carry device code.
device_executables() {
  local f
  for f in "$@"; do
    [ -f "$f" ] && [ -x "$f" ] || continue
    if has_device_code "$f"; then echo "$f"; fi
  done
}

sass_report() {  # $1: folder with executables, $2: output markdown, $3: ptxas log (may be missing)
  local dir=$1 out=$2 ptx=${3:-} bin tmp
  local cudir
  if ! cudir=$(find_cuobjdump); then
    echo "(no cuobjdump + nvdisasm: SASS report skipped)"
    return 1
  fi
  tmp="$B/sass"  # raw dumps stay here for reading (not carried)
  mkdir -p "$tmp"
  local args=()
  for bin in $(device_executables "$dir"/*); do
    local name
    name=$(basename "$bin")
    PATH="$cudir:$PATH" "$cudir/cuobjdump" --dump-sass "$bin" >"$tmp/$name.sass" 2>/dev/null
    PATH="$cudir:$PATH" "$cudir/cuobjdump" --dump-resource-usage "$bin" >"$tmp/$name.res" 2>/dev/null
    args+=(--binary "$name" "$tmp/$name.sass" "$tmp/$name.res")
  done
  [ -n "$ptx" ] && [ -f "$ptx" ] && args+=(--ptxas-log "$ptx")
  python3 "$ROOT/tools/sass_report.py" "${args[@]}" >"$out"
  local rc=$?
  echo "(raw SASS and resource dumps: build-gpu/sass/)" >&2
  return $rc
}

# ------------------------------------------------------------------------------------------------
do_build() {
  export PATH="/usr/local/cuda/bin:$PATH"
  if ! command -v nvcc >/dev/null 2>&1; then
    echo "gpu-check build: nvcc not found (looked on PATH and in /usr/local/cuda/bin)" >&2
    return 1
  fi
  mkdir -p "$B"
  say "configure Release, sm_90, static CUDA runtime -> build-gpu/"
  local cfg=(-S "$ROOT" -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release
    -DPOWERGRAD_ENABLE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_CUDA_RUNTIME_LIBRARY=Static
    -DPOWERGRAD_BUILD_BENCH=ON -DPOWERGRAD_BUILD_EXAMPLES=ON "-DCMAKE_CUDA_FLAGS=-Xptxas=-v")
  if ! cmake "${cfg[@]}" -DPOWERGRAD_BUILD_TESTS=ON >"$B/configure.log" 2>&1; then
    grep -A4 'CMake Error' "$B/configure.log" | head -20
    echo "WARNING: configure with the tests failed (above); configuring WITHOUT tests so the benchmarks still build"
    rm -f "$B/CMakeCache.txt"
    cmake "${cfg[@]}" -DPOWERGRAD_BUILD_TESTS=OFF >"$B/configure.log" 2>&1 || {
      tail -30 "$B/configure.log"
      return 1
    }
  fi
  grep -E 'powergrad:|CUDA' "$B/configure.log" | head -20

  say "build (every target; -k 0 keeps going past a broken one)"
  local jobs
  jobs=$(nproc 2>/dev/null || echo 2)
  cmake --build "$B" -j"$jobs" -- -k 0 >"$B/build.log" 2>&1
  local build_rc=$?
  grep -E '^FAILED|error' "$B/build.log" | grep -v 'ptxas info' | head -20
  echo "build exit status: $build_rc (full log: build-gpu/build.log)"

  # The dev/ tuning sandbox is a plain nvcc program (not a CMake target): build it too if present.
  local variants_rc=skipped
  if [ -f "$ROOT/dev/xent_variants.cu" ]; then
    nvcc -std=c++17 -O3 -arch=sm_90 -cudart static -Xptxas=-v -I"$ROOT/include" -I"$ROOT/kernels" \
      "$ROOT/dev/xent_variants.cu" -o "$B/xent_variants" >"$B/variants_build.log" 2>&1
    variants_rc=$?
  fi

  say "collect what travels -> build-gpu/carry/"
  rm -rf "$C"
  mkdir -p "$C/lib"
  local exe copied=()
  while IFS= read -r exe; do
    case "$exe" in */CMakeFiles/*) continue ;; esac
    local name
    name=$(basename "$exe")
    # Everything with device code, plus the host benchmark (the dry run and a host ratio there).
    if has_device_code "$exe" || [ "$name" = powergrad_bench_host ] || [ "$name" = powergrad_bench_bucket_host ]; then
      cp "$exe" "$C/" && copied+=("$name")
    fi
  done < <(find "$B" -maxdepth 3 -type f -executable \( -name 'powergrad_*' -o -name 'xent_variants' \) 2>/dev/null | sort)
  # Shared libraries that are not part of every Linux system (libbenchmark from Debian) travel too.
  local lib
  for exe in "$C"/*; do
    [ -f "$exe" ] || continue
    ldd "$exe" 2>/dev/null | awk '/=> \// {print $3}' | while read -r lib; do
      case "$(basename "$lib")" in
        libc.so* | libm.so* | libdl.so* | librt.so* | libpthread.so* | ld-linux* | libgcc_s.so* | libstdc++.so*) ;;
        *) cp -nL "$lib" "$C/lib/" ;;
      esac
    done
  done
  strip --strip-debug "$C"/powergrad_* "$C"/xent_variants 2>/dev/null

  say "offline SASS / ptxas facts (no GPU time)"
  if ! find_cuobjdump >/dev/null; then
    echo "cuobjdump/nvdisasm not in this toolkit: installing them from PyPI into build-gpu/tools"
    python3 -m pip install -q --disable-pip-version-check --target "$HERE_TOOLS" \
      nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm >/dev/null 2>&1 || echo "(pip install failed)"
  fi
  cat "$B/build.log" "$B/variants_build.log" 2>/dev/null >"$B/ptxas.log"
  if sass_report "$C" "$B/sass_report.md" "$B/ptxas.log"; then
    cp "$B/sass_report.md" "$C/"
    cat "$B/sass_report.md"
  fi

  {
    echo "powergrad gpu-check carry"
    echo "commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')"
    echo "built: $(date -u +%FT%TZ) on $(uname -m), $(nvcc --version | tail -1)"
    echo "build exit status: $build_rc; dev/xent_variants: $variants_rc"
    echo "glibc needed (max): $(for f in "$C"/powergrad_* "$C"/lib/*; do objdump -T "$f" 2>/dev/null; done | grep -o 'GLIBC_[0-9.]*' | sort -V | tail -1)"
    echo "files:"
    (cd "$C" && find . -type f -printf '  %p %s\n' | sort)
  } >"$C/MANIFEST.txt"
  cat "$C/MANIFEST.txt"
  local size
  size=$(du -sb "$C" | cut -f1)
  echo "carry size: $((size / 1024 / 1024)) MiB ($size bytes; the limit for everything that travels is 64 MiB)"
  [ "$size" -lt $((60 * 1024 * 1024)) ] || echo "WARNING: build-gpu/carry is too big to travel"
  for want in powergrad_tests_device powergrad_bench_device; do
    [ -x "$C/$want" ] || echo "NOTE: $want was not built (missing target or build failure): run will skip it"
  done
  echo
  echo "device call: command 'tools/gpu-check.sh run', carry [\"build-gpu/carry\"], timeout_s 420"
  return 0
}

# ------------------------------------------------------------------------------------------------
BUDGET=${PG_BUDGET_S:-340}

# Runs a command under `timeout`, with the smaller of its own limit and what is left of the budget.
bounded() {
  local lim=$1
  shift
  local left=$((BUDGET - SECONDS))
  [ "$left" -lt "$lim" ] && lim=$left
  if [ "$lim" -lt 5 ]; then
    echo "(skipped: the ${BUDGET}s budget is spent)"
    return 124
  fi
  timeout -k 5 "$lim" "$@"
}

status_word() {
  case "$1" in
    0) echo ok ;;
    124 | 137) echo "TIMEOUT" ;;
    *) echo "FAILED (exit $1)" ;;
  esac
}

do_run() {
  local out=${OUT:-$B/out}
  # Shared libraries that travelled with the binaries (libbenchmark; libcudart if a target links it).
  export LD_LIBRARY_PATH="$C/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  mkdir -p "$out"
  local results=()  # "step: status" lines for the summary
  local have_gpu=0 why=""
  if [ "${PG_FORCE_GPU_PATH:-0}" = 1 ]; then  # only for testing this script on a machine without a GPU
    have_gpu=1
  elif ! command -v nvidia-smi >/dev/null 2>&1; then
    why="nvidia-smi not found"
  elif ! nvidia-smi -L >/dev/null 2>&1; then
    why="nvidia-smi -L failed"
  elif [ -x "$C/powergrad_bench_device" ] && ! LD_LIBRARY_PATH="$C/lib" "$C/powergrad_bench_device" --pg_probe >/dev/null 2>&1; then
    why="cudaGetDeviceCount found no usable device"
  else
    have_gpu=1
  fi

  if [ "$have_gpu" = 0 ]; then
    say "NO GPU on this machine ($why): DRY RUN"
    local hb="$C/powergrad_bench_host"
    [ -x "$hb" ] || hb="$ROOT/build-bench/bench/powergrad_bench_host"
    if [ -x "$hb" ]; then
      echo "host benchmark, small shape, to check the plumbing:"
      bounded 120 env LD_LIBRARY_PATH="$C/lib" "$hb" --pg_shape=256x4000 --benchmark_min_time=0.05 \
        --benchmark_filter='host/(copy|fwd_bwd_inplace|unfused)/fp32' \
        --benchmark_out="$out/bench_host.json" --benchmark_out_format=json
      python3 "$ROOT/tools/summarize.py" "$out/bench_host.json"
    else
      echo "(no host benchmark binary: run 'tools/gpu-check.sh build' first)"
    fi
    local hbb="$C/powergrad_bench_bucket_host"
    [ -x "$hbb" ] || hbb="$ROOT/build-gpu/bench/powergrad_bench_bucket_host"
    if [ -x "$hbb" ]; then
      echo "host bucket benchmark (clip_norm):"
      bounded 60 env LD_LIBRARY_PATH="$C/lib" "$hbb" --benchmark_filter='clip_norm' 2>&1 | grep -E 'bucket_host|ERROR'
    fi
    echo
    echo "SKIPPED (need a GPU): nvidia-smi, device tests (powergrad_tests_device), compute-sanitizer"
    echo "memcheck/racecheck/initcheck/synccheck, device benchmarks (powergrad_bench_device,"
    echo "powergrad_bench_bucket_device)."
    echo "carry present: $( [ -d "$C" ] && ls "$C" | tr '\n' ' ' || echo 'no (run build first)')"
    return 0
  fi

  say "environment"
  {
    nvidia-smi -L
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw \
      --format=csv 2>&1
    LD_LIBRARY_PATH="$C/lib" "$C/powergrad_bench_device" --pg_probe 2>&1
    echo "host: $(uname -srm), $(nproc) CPUs"
    cat "$C/MANIFEST.txt" 2>/dev/null
  } | tee "$out/env.txt"
  local missing
  missing=$(for f in "$C"/powergrad_* "$C"/xent_variants; do [ -x "$f" ] && LD_LIBRARY_PATH="$C/lib" ldd "$f" 2>/dev/null | grep 'not found'; done | sort -u)
  [ -n "$missing" ] && echo "MISSING SHARED LIBRARIES: $missing"

  local T="$C/powergrad_tests_device" rc
  local big_test='XentDeviceApi.MoreThan2To31Elements'
  say "device tests"
  if [ -x "$T" ]; then
    # The >2^31-element test (a float64 host reference over 2^31 elements) runs last, on its own.
    bounded 100 "$T" --gtest_filter="-$big_test" --gtest_output=json:"$out/tests_device.json" >"$out/tests_device.log" 2>&1
    rc=$?
    grep -E '^\[  FAILED  \]' "$out/tests_device.log" | sort -u | head -20
    grep -E '^\[  (PASSED|SKIPPED|FAILED) +\] [0-9]+ test' "$out/tests_device.log"
    results+=("device tests: $(status_word $rc)")
  else
    echo "(no powergrad_tests_device in the carry: skipped)"
    results+=("device tests: not built")
  fi

  say "device benchmarks (set ${PG_BENCH_SET:-full}, min_time ${PG_BENCH_MIN_TIME:-0.05}s)"
  if [ -x "$C/powergrad_bench_device" ]; then
    bounded 150 env LD_LIBRARY_PATH="$C/lib" "$C/powergrad_bench_device" --pg_set="${PG_BENCH_SET:-full}" \
      --benchmark_min_time="${PG_BENCH_MIN_TIME:-0.05}" \
      --benchmark_out="$out/bench_device.json" --benchmark_out_format=json >"$out/bench_device.log" 2>&1
    rc=$?
    grep -E 'GOAL|ERROR|error' "$out/bench_device.log" | head -20
    [ "$rc" = 0 ] || tail -5 "$out/bench_device.log"
    results+=("device benchmarks: $(status_word $rc)")
  else
    results+=("device benchmarks: not built")
  fi

  say "bucket benchmarks (powergrad_bench_bucket_device)"
  if [ -x "$C/powergrad_bench_bucket_device" ]; then
    # Same log; its JSON entries are merged into bench_device.json (the 8-file budget of $OUT).
    { echo "--- powergrad_bench_bucket_device"
      bounded 60 env LD_LIBRARY_PATH="$C/lib" "$C/powergrad_bench_bucket_device" \
        --benchmark_out="/tmp/pg_bench_bucket.json" --benchmark_out_format=json 2>&1; } >>"$out/bench_device.log"
    rc=$?
    python3 - "$out/bench_device.json" /tmp/pg_bench_bucket.json <<'PY' || echo "(bucket JSON not merged; the results are in bench_device.log)"
import json, sys
main, extra = sys.argv[1], sys.argv[2]
try:
    with open(main) as f:
        doc = json.load(f)
except (OSError, ValueError):
    sys.exit("bench_device.json is missing or truncated: not merged")
with open(extra) as f:
    add = json.load(f)
doc.setdefault("benchmarks", []).extend(add.get("benchmarks", []))
with open(main, "w") as f:
    json.dump(doc, f, indent=1)
PY
    grep -A12 -- '--- powergrad_bench_bucket_device' "$out/bench_device.log" | grep -E 'bucket/|ERROR' | head -12
    results+=("bucket benchmarks: $(status_word $rc)")
  else
    results+=("bucket benchmarks: not built")
  fi

  say "compute-sanitizer"
  local san
  san=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
  # Small shapes only (racecheck and initcheck run kernels orders of magnitude slower), yet every
  # kernel mode: fused (edge cases), apply (saved lse_alpha), stats + apply (split form), hook,
  # bad targets, graph capture; the bucket kernels (stats, coef, apply; misaligned starts, NaN inputs,
  # the stale-plan guard). memcheck gets fp32 as well (other vector width).
  local small='XentDevice/bf16.ForwardBackwardEdgeSemantics:XentDevice/bf16.HookFromIncomingGradient'
  small+=':XentDevice/bf16.SplitFormEqualsUnsplit:XentDevice/bf16.BackwardWithSavedLseAlpha'
  small+=':BucketDevice/bf16.NonFinite:BucketDevice/bf16.ManyTinyTensors:BucketDeviceApi.StalePlanWritesNothing'
  local filter_small=${PG_SANITIZER_FILTER_SMALL:-$small}
  local filter=${PG_SANITIZER_FILTER:-"$small:XentDevice/fp32.ForwardBackwardEdgeSemantics:XentDevice/fp16.HookFromIncomingGradient:XentDevice/bf16.BadTargetsAreCountedAndPoisonOnlyTheirRow:XentDeviceApi.CudaGraphCaptureReplays"}
  : >"$out/sanitizer.log"
  if [ -z "$san" ]; then
    echo "(compute-sanitizer not found)"
    results+=("compute-sanitizer: not found")
  else
    local tool target=()
    if [ -x "$T" ]; then
      target=("$T" --gtest_brief=1)
    elif [ -x "$C/powergrad_bench_device" ]; then  # no tests: the benchmark on a small shape
      target=(env LD_LIBRARY_PATH="$C/lib" "$C/powergrad_bench_device" --pg_set=full
        --benchmark_filter='dev/(fwd_bwd_inplace|fwd_bwd_out|bwd_saved|hook)/bf16/256x1000' --benchmark_min_time=0.0001)
    fi
    for tool in memcheck racecheck initcheck synccheck; do
      [ ${#target[@]} -gt 0 ] || break
      local f=()
      if [ -x "$T" ]; then
        if [ "$tool" = memcheck ]; then f=(--gtest_filter="$filter"); else f=(--gtest_filter="$filter_small"); fi
      fi
      echo "--- $tool: ${target[*]} ${f[*]}" >>"$out/sanitizer.log"
      bounded 40 "$san" --tool "$tool" --error-exitcode 99 --print-limit 20 "${target[@]}" "${f[@]}" >>"$out/sanitizer.log" 2>&1
      rc=$?
      echo "--- $tool exit status $rc" >>"$out/sanitizer.log"
      local verdict
      verdict=$(status_word $rc)
      [ "$rc" = 99 ] && verdict="ERRORS FOUND"
      echo "$tool: $verdict ($(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/sanitizer.log" | tail -1))"
      results+=("compute-sanitizer $tool: $verdict")
    done
  fi

  if [ -x "$T" ]; then
    say "device test $big_test (last: the slowest on the host side)"
    echo "--- $big_test" >>"$out/tests_device.log"
    bounded 60 "$T" --gtest_filter="$big_test" >>"$out/tests_device.log" 2>&1
    rc=$?
    tail -4 "$out/tests_device.log"
    results+=("device test $big_test: $(status_word $rc)")
  fi

  if [ ! -f "$C/sass_report.md" ]; then
    say "SASS report (not made offline: making it here)"
    sass_report "$C" "$out/sass_report.md" "" && head -40 "$out/sass_report.md"
  fi

  if [ "${PG_VARIANTS:-0}" = 1 ] && [ -x "$C/xent_variants" ]; then
    say "dev/ variants"
    { echo "--- dev/xent_variants"; bounded 60 "$C/xent_variants" 2>&1; } | tee -a "$out/bench_device.log" | tail -40
  fi

  say "summary"
  {
    echo "## Steps"
    local r
    for r in "${results[@]}"; do echo "- $r"; done
    echo
    local json=()
    [ -f "$out/bench_device.json" ] && json=("$out/bench_device.json")
    python3 "$ROOT/tools/summarize.py" "${json[@]}" --tests "$out/tests_device.json"
  } >"$out/summary.md" 2>&1
  cat "$out/summary.md"
  return 0
}

case "${1:-}" in
  build) do_build ;;
  run) do_run ;;
  sass)  # regenerate build-gpu/sass_report.md from an existing build (no rebuild)
    sass_report "$C" "$B/sass_report.md" "$B/ptxas.log" && cp "$B/sass_report.md" "$C/" && cat "$B/sass_report.md"
    ;;
  *)
    echo "usage: tools/gpu-check.sh build|run|sass   (see the header of this file)" >&2
    exit 2
    ;;
esac
