#!/usr/bin/env bash
# powergrad GPU check: build on a machine without a GPU, run on one with a GPU.
#
#   tools/gpu-check.sh bundle DIR         # here: Release build for sm_90, then a self-contained DIR
#   tools/gpu-check.sh run BUNDLE OUTDIR  # on the GPU machine (about 5 minutes on an H100/H200)
#   tools/gpu-check.sh sass [REPORT.md]      # here: the offline SASS report of the last build
#
# bundle: needs nvcc (PATH or /usr/local/cuda/bin), CMake, Ninja, GoogleTest and Google Benchmark;
#   no GPU. Configures build-gpu/ with the settings of the `gpu-bundle` CMake preset (Ninja, Release,
#   CMAKE_CUDA_ARCHITECTURES=90, tests, benchmarks and examples on; passed here as -D flags, so no
#   preset is needed), builds every target, and assembles DIR:
#     bin/        device and host tests, C ABI tests, benchmarks, examples (stripped)
#     lib/        libpowergrad.so.X.Y (one copy: the C ABI tests link it, the Python package finds it
#                 through POWERGRAD_LIBRARY) and the shared libraries the binaries need that a machine
#                 with only a GPU driver may lack (found with ldd); those over 32 MiB (NCCL) are
#                 listed in MANIFEST.txt, not copied, and `run` looks for them on the GPU machine
#     python/     the powergrad package
#     tests/python, bench/compare_frameworks.py, bench/plot.py, examples/python, tools/
#     wheels/     Liger-Kernel and pytest wheels when `pip download` works here (and compute-sanitizer
#                 with PG_SANITIZER_WHEEL=1); `run` unpacks them only when the GPU machine lacks them
#     sass_report.md, MANIFEST.txt (commit, date, nvcc, build status, every file's size and sha256)
#   `bundle DIR --no-build` assembles DIR from the existing build folder (no configure, no build, no
#   download). DIR must be new, empty, or an earlier bundle (it is replaced).
#
# run: every step is independent (a failure is recorded and the next step runs) and has its own
#   time limit: the device tests (gtest JSON), the C ABI device tests, compute-sanitizer
#   memcheck/racecheck/initcheck/synccheck on a subset of the device tests (cross-entropy and
#   bucket kernels), the device benchmarks (quick set), the bucket benchmarks, the ops demo, the C++
#   trainer with --device cuda, the NCCL example, the Python suite (pytest tests/python) and
#   bench/compare_frameworks.py --device cuda; the host tests and a small host benchmark run too.
#   Without a GPU the GPU steps are recorded as "skipped: no GPU" and the run still completes.
#   OUTDIR gets summary.md (machine, driver, commit, one line per step, goals, key ratios) and at
#   most 7 more files: env.txt, tests.json, bench.json, compare.json, sanitizer.log, python.log,
#   run.log (the output of every other step). The exit status is 0 once summary.md is written.
#
# Environment:
#   PG_BUILD_DIR      build folder of `bundle` and `sass` (default build-gpu)
#   PG_WHEELS=0       `bundle` downloads no wheel
#   PG_SANITIZER_WHEEL=1  `bundle` adds the compute-sanitizer wheel (14 MB) of nvcc's release
#   PG_STEPS          comma-separated steps for `run` (default: all; names as in summary.md)
#   PG_BUDGET_S       total seconds for `run` (default 330); a step gets the smaller of its own
#                     limit and what is left
#   PG_BENCH_MIN_TIME --benchmark_min_time of the device benchmarks (default 0.05; a plain number
#                     of seconds, as Google Benchmark 1.7 takes it)
#   PG_COMPARE_ARGS   arguments of compare_frameworks.py (default: bf16 at 8192x32000 and 8192x128256)
#   PG_PYTHON         Python interpreter for the Python steps (default python3)
#   PG_NO_GPU=1       treat the machine as having no GPU (to test this script)
#   PG_FORCE_GPU=1    run the GPU steps even when no GPU is detected (to test this script)
set -uo pipefail

TOOLS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$TOOLS/.." && pwd)

die() {
  echo "gpu-check: $*" >&2
  exit 2
}

usage() {
  cat >&2 <<'EOF'
usage: tools/gpu-check.sh bundle DIR [--no-build]
       tools/gpu-check.sh run BUNDLE OUTDIR
       tools/gpu-check.sh sass [REPORT.md]
(see the header of tools/gpu-check.sh)
EOF
  exit 2
}

abspath() {  # the absolute form of a path that may not exist yet
  case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s\n' "$PWD/$1" ;;
  esac
}

say() { printf '\n=== gpu-check %s (%ss)\n' "$*" "$SECONDS"; }

# The executables a bundle holds, by target name (a missing one is listed in MANIFEST.txt).
BUNDLE_EXES=(powergrad_tests_device powergrad_capi_device_tests powergrad_tests_host powergrad_capi_tests
  powergrad_capi_c99 powergrad_bench_device powergrad_bench_bucket_device powergrad_bench_host
  powergrad_bench_bucket_host demo demo_host trainer trainer_host vocab_parallel_nccl xent_c
  powergrad_tests_linear_device powergrad_bench_linear_device)

# Shared libraries every Linux system with a GPU driver has; never copied. libcuda and the other
# driver libraries must come from the GPU machine's driver.
is_system_lib() {
  case "$1" in
    libc.so* | libm.so* | libdl.so* | librt.so* | libpthread.so* | ld-linux* | libgcc_s.so* | libstdc++.so* | \
      libutil.so* | libresolv.so* | libcuda.so* | libnvidia-*) return 0 ;;
  esac
  return 1
}

# Whether a binary carries device code (a .nv_fatbin section). No `grep -q` here: with pipefail,
# grep leaving early makes readelf die of SIGPIPE and the pipeline report failure.
has_device_code() {
  local n
  n=$(readelf -S "$1" 2>/dev/null | grep -c '\.nv_fatbin')
  [ "${n:-0}" -gt 0 ]
}

# Executables named $2 (a find pattern) in the target folders of build folder $1 (not elsewhere:
# a bundle may sit inside the build folder).
build_executables() {
  local d dirs=()
  for d in tests bench examples src; do [ -d "$1/$d" ] && dirs+=("$1/$d"); done
  [ ${#dirs[@]} -gt 0 ] || return 0
  find "${dirs[@]}" -maxdepth 2 -type f -executable -name "$2" ! -path '*/CMakeFiles/*' 2>/dev/null
}

# ------------------------------------------------------------------------------------------------
# SASS report (offline, no GPU)

find_cuobjdump() {  # prints the folder holding cuobjdump and nvdisasm
  local d
  for d in "$(dirname "$(command -v cuobjdump 2>/dev/null || echo /nonexistent/x)")" /usr/local/cuda/bin \
    "$1/tools/nvidia/cu13/bin" "$1/tools/nvidia/cuda_cuobjdump/bin"; do
    if [ -x "$d/cuobjdump" ] && { [ -x "$d/nvdisasm" ] || command -v nvdisasm >/dev/null 2>&1; }; then
      echo "$d"
      return 0
    fi
  done
  return 1
}

# $1: build folder, $2: output markdown. Reads the device executables of the build folder and the
# `-Xptxas -v` lines of its build.log.
sass_report() {
  local build=$1 out=$2 cudir exe name
  if ! cudir=$(find_cuobjdump "$build"); then
    echo "(no cuobjdump + nvdisasm: no SASS report)" >&2
    return 1
  fi
  local raw="$build/sass"
  mkdir -p "$raw"
  local args=()
  while IFS= read -r exe; do
    has_device_code "$exe" || continue
    name=$(basename "$exe")
    PATH="$cudir:$PATH" "$cudir/cuobjdump" --dump-sass "$exe" >"$raw/$name.sass" 2>/dev/null
    PATH="$cudir:$PATH" "$cudir/cuobjdump" --dump-resource-usage "$exe" >"$raw/$name.res" 2>/dev/null
    args+=(--binary "$name" "$raw/$name.sass" "$raw/$name.res")
  done < <(build_executables "$build" 'powergrad_*' | sort)
  if [ ${#args[@]} -eq 0 ]; then
    echo "(no executable with device code in $build: no SASS report)" >&2
    return 1
  fi
  [ -f "$build/build.log" ] && args+=(--ptxas-log "$build/build.log")
  python3 "$TOOLS/sass_report.py" "${args[@]}" >"$out"
}

do_sass() {
  local build
  build=$(abspath "${PG_BUILD_DIR:-$ROOT/build-gpu}")
  local out=${1:-$build/sass_report.md}
  [ -d "$build" ] || die "sass: no build folder $build (run 'tools/gpu-check.sh bundle DIR' first)"
  sass_report "$build" "$out" || return 1
  cat "$out"
  echo "(raw dumps: $build/sass/)" >&2
}

# ------------------------------------------------------------------------------------------------
# bundle

configure_and_build() {  # $1: build folder
  local build=$1
  export PATH="/usr/local/cuda/bin:$PATH"
  command -v nvcc >/dev/null 2>&1 || die "bundle: nvcc not found (looked on PATH and in /usr/local/cuda/bin)"
  mkdir -p "$build"
  say "bundle: configure $build (Release, sm_90, tests, benchmarks, examples)"
  # The gpu-bundle preset's settings, plus the static CUDA runtime (fewer libraries to ship) and
  # ptxas statistics in the build log (spills, for the SASS report).
  local cfg=(-S "$ROOT" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90
    -DPOWERGRAD_ENABLE_CUDA=ON -DPOWERGRAD_BUILD_TESTS=ON -DPOWERGRAD_BUILD_BENCH=ON
    -DPOWERGRAD_BUILD_EXAMPLES=ON -DCMAKE_CUDA_RUNTIME_LIBRARY=Static "-DCMAKE_CUDA_FLAGS=-Xptxas=-v")
  if ! cmake "${cfg[@]}" >"$build/configure.log" 2>&1; then
    tail -30 "$build/configure.log" >&2
    die "bundle: configure failed (log: $build/configure.log)"
  fi
  grep -E '^-- powergrad' "$build/configure.log"
  say "bundle: build (every target; -k 0 keeps going past a broken one)"
  cmake --build "$build" -j"$(nproc 2>/dev/null || echo 2)" -- -k 0 >"$build/build.log" 2>&1
  BUILD_RC=$?
  grep -E '^FAILED|error' "$build/build.log" | grep -v 'ptxas info' | head -20
  echo "build exit status: $BUILD_RC (log: $build/build.log)"
}

fetch_wheels() {  # $1: cache folder. Best effort: a wheel that cannot be downloaded is left out.
  local cache=$1 nvcc_ver
  mkdir -p "$cache"
  nvcc_ver=$(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')
  local -a specs=("liger-kernel" "pytest")
  # compute-sanitizer of the toolkit's own release (a newer one may need a newer driver): 14 MB,
  # so only on request, for GPU machines without a CUDA toolkit.
  [ -n "$nvcc_ver" ] && [ "${PG_SANITIZER_WHEEL:-0}" = 1 ] && specs+=("nvidia-cuda-sanitizer-api==${nvcc_ver}.*")
  local spec deps
  for spec in "${specs[@]}"; do
    deps=--no-deps
    [ "$spec" = pytest ] && deps=  # pytest's own pure-Python dependencies come along
    if ! timeout 180 python3 -m pip download -q --disable-pip-version-check $deps --only-binary=:all: \
      -d "$cache" "$spec" >"$cache/pip-$$.log" 2>&1; then
      echo "(pip download $spec failed: not bundled; $(tail -1 "$cache/pip-$$.log"))"
    fi
  done
  rm -f "$cache/pip-$$.log"
}

write_manifest() {  # $1: bundle folder, $2: build folder
  local dir=$1 build=$2
  {
    echo "powergrad GPU bundle"
    echo "commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')"
    echo "built: $(date -u +%FT%TZ) on $(uname -m)"
    echo "nvcc: $(nvcc --version 2>/dev/null | tail -1 || echo none)"
    echo "build folder: $build; build exit status: ${BUILD_RC:-not built here}"
    echo "cmake: $(grep -E '^(CMAKE_BUILD_TYPE|CMAKE_CUDA_ARCHITECTURES|CMAKE_CUDA_RUNTIME_LIBRARY|POWERGRAD_HAS_CUDA)[:=]' "$build/CMakeCache.txt" 2>/dev/null | sed 's/:[A-Z]*=/=/' | tr '\n' ' ')"
    echo "glibc needed (max): $(for f in "$dir"/bin/* "$dir"/lib/*; do objdump -T "$f" 2>/dev/null; done | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)"
    echo "libstdc++ needed (max): $(for f in "$dir"/bin/* "$dir"/lib/*; do objdump -T "$f" 2>/dev/null; done | grep -o 'GLIBCXX_[0-9.]*' | sort -uV | tail -1)"
    local m
    for m in "${MISSING_EXES[@]}"; do echo "not built: $m"; done
    for m in "${SKIPPED_LIBS[@]}"; do echo "not bundled (found on the GPU machine by run): $m"; done
    echo "files (bytes, sha256):"
    (cd "$dir" && find . -type f ! -name MANIFEST.txt -printf '%P\n' | LC_ALL=C sort | while IFS= read -r f; do
      printf '  %s %s %s\n' "$f" "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -d' ' -f1)"
    done)
  } >"$dir/MANIFEST.txt"
}

do_bundle() {
  local dir="" no_build=0 a
  for a in "$@"; do
    case "$a" in
      --no-build) no_build=1 ;;
      -*) usage ;;
      *)
        [ -z "$dir" ] || usage
        dir=$a
        ;;
    esac
  done
  [ -n "$dir" ] || usage
  dir=$(abspath "$dir")
  local build
  build=$(abspath "${PG_BUILD_DIR:-$ROOT/build-gpu}")
  if [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ] && [ ! -f "$dir/MANIFEST.txt" ]; then
    die "bundle: $dir exists and is not a bundle (no MANIFEST.txt); choose a new folder"
  fi
  case "$build/" in "$dir/"*) die "bundle: DIR may not contain the build folder $build" ;; esac

  BUILD_RC=""
  if [ "$no_build" = 0 ]; then
    configure_and_build "$build"
  else
    [ -f "$build/CMakeCache.txt" ] || die "bundle --no-build: $build is not a build folder"
    export PATH="/usr/local/cuda/bin:$PATH"
  fi

  say "bundle: assemble $dir"
  rm -rf "$dir"
  mkdir -p "$dir/bin" "$dir/lib" "$dir/python" "$dir/tests" "$dir/bench" "$dir/examples" "$dir/tools"
  MISSING_EXES=()
  SKIPPED_LIBS=()
  local name exe
  for name in "${BUNDLE_EXES[@]}"; do
    exe=$(build_executables "$build" "$name" | head -1)
    if [ -n "$exe" ]; then
      cp "$exe" "$dir/bin/"
    else
      MISSING_EXES+=("$name")
    fi
  done

  # libpowergrad, under its SONAME (the name the C ABI executables ask the loader for).
  local lib real soname
  lib=$(find "$build/src" -maxdepth 1 -name 'libpowergrad.so' 2>/dev/null | head -1)
  if [ -n "$lib" ]; then
    real=$(readlink -f "$lib")
    soname=$(objdump -p "$real" 2>/dev/null | awk '/SONAME/ {print $2}')
    cp "$real" "$dir/lib/${soname:-libpowergrad.so}"
  else
    MISSING_EXES+=("libpowergrad.so")
  fi

  # Non-system shared libraries, found with ldd (the build's RUNPATH resolves them here).
  local cap=$((32 * 1024 * 1024)) dep base size
  for exe in "$dir"/bin/* ${real:+"$real"}; do
    [ -f "$exe" ] || continue
    while IFS= read -r dep; do
      base=$(basename "$dep")
      is_system_lib "$base" && continue
      case "$base" in libpowergrad.so*) continue ;; esac
      [ -e "$dir/lib/$base" ] && continue
      size=$(stat -L -c %s "$dep")
      if [ "$size" -gt "$cap" ]; then
        case " ${SKIPPED_LIBS[*]} " in *" $base "*) ;; *) SKIPPED_LIBS+=("$base ($((size / 1024 / 1024)) MiB)") ;; esac
        continue
      fi
      cp -L "$dep" "$dir/lib/$base"
    done < <(ldd "$exe" 2>/dev/null | awk '/=> \// {print $3}')
  done
  # Same-named entries may repeat in SKIPPED_LIBS (one per binary): keep one of each.
  if [ ${#SKIPPED_LIBS[@]} -gt 0 ]; then
    mapfile -t SKIPPED_LIBS < <(printf '%s\n' "${SKIPPED_LIBS[@]}" | sort -u)
  fi
  strip --strip-all "$dir"/bin/* 2>/dev/null
  strip --strip-unneeded "$dir"/lib/*.so* 2>/dev/null

  # Python package, tests and scripts.
  mkdir -p "$dir/python/powergrad" "$dir/tests/python" "$dir/examples/python" "$dir/bench/results/2026-11-26-h100"
  cp "$ROOT"/python/powergrad/*.py "$dir/python/powergrad/"
  # The package version, as a wheel build writes it (pyproject.toml): the bundle has no CMakeLists.txt.
  sed -n 's/^project(powergrad VERSION \([0-9][0-9.]*\).*/__version__ = "\1"/p' "$ROOT/CMakeLists.txt" \
    >"$dir/python/powergrad/_version.py"
  cp "$ROOT"/tests/python/*.py "$dir/tests/python/"
  cp "$ROOT/bench/compare_frameworks.py" "$ROOT/bench/plot.py" "$dir/bench/"
  # tests/python reads this recorded run (the plot and summary tests).
  local rec
  for rec in bench_device.json tests_device.json env.txt; do
    cp "$ROOT/bench/results/2026-11-26-h100/$rec" "$dir/bench/results/2026-11-26-h100/" 2>/dev/null
  done
  cp "$ROOT"/examples/python/*.py "$dir/examples/python/" 2>/dev/null
  cp "$TOOLS/gpu-check.sh" "$TOOLS/summarize.py" "$TOOLS/sass_report.py" "$dir/tools/"

  if [ "$no_build" = 0 ] && [ "${PG_WHEELS:-1}" != 0 ]; then
    say "bundle: wheels (pip download)"
    fetch_wheels "$build/wheels"
  fi
  if [ -d "$build/wheels" ] && [ "$no_build" = 0 ] && [ "${PG_WHEELS:-1}" != 0 ]; then
    mkdir -p "$dir/wheels"
    local w
    for w in "$build"/wheels/*.whl; do
      [ -f "$w" ] || continue
      case "$(basename "$w")" in nvidia_cuda_sanitizer_api-*) [ "${PG_SANITIZER_WHEEL:-0}" = 1 ] || continue ;; esac
      cp "$w" "$dir/wheels/"
    done
  fi

  say "bundle: SASS report (offline)"
  if [ "$no_build" = 0 ] && ! find_cuobjdump "$build" >/dev/null; then
    echo "cuobjdump/nvdisasm are not in this toolkit: installing them from PyPI into $build/tools"
    python3 -m pip install -q --disable-pip-version-check --target "$build/tools" \
      nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm >/dev/null 2>&1 || echo "(pip install failed)"
  fi
  if sass_report "$build" "$build/sass_report.md"; then
    cp "$build/sass_report.md" "$dir/"
    sed -n '/^## /,/^| kernel/p' "$build/sass_report.md" | grep -v '^| kernel' | cut -c1-200
  fi

  write_manifest "$dir" "$build"
  sed -n '1,/^files/p' "$dir/MANIFEST.txt"
  local total
  total=$(du -sb "$dir" | cut -f1)
  echo "bundle: $dir, $(find "$dir" -type f | wc -l) files, $((total / 1024 / 1024)) MiB ($total bytes)"
  [ "$total" -lt $((60 * 1024 * 1024)) ] || echo "WARNING: the bundle is 60 MiB or more"
  for name in powergrad_tests_device powergrad_bench_device libpowergrad.so; do
    case " ${MISSING_EXES[*]} " in *" $name "*) echo "NOTE: $name was not built: run will record its steps as skipped" ;; esac
  done
  [ -z "$BUILD_RC" ] || [ "$BUILD_RC" = 0 ] || echo "NOTE: the build failed in part (exit $BUILD_RC); the bundle holds what was built"
  return 0
}

# ------------------------------------------------------------------------------------------------
# run

# Runs a command under `timeout` with the step's limit (or less, when the whole run's budget is
# nearly spent). Exit status 124 or 137 means it ran out of time.
bounded() {
  local lim=$STEP_LIMIT left
  left=$((BUDGET - SECONDS))
  [ "$left" -lt "$lim" ] && lim=$left
  [ "$lim" -lt 1 ] && lim=1
  timeout -k 5 "$lim" "$@"
}

note() { STEP_NOTE="$*"; }  # the detail shown after a step's status in summary.md

# Unpacks the bundled wheels whose file names start with the given prefixes into the scratch
# folder and appends it to PYTHONPATH (after the installed packages, which keep precedence).
unpack_wheels() {
  local prefix w any=1
  for prefix in "$@"; do
    for w in "$BUNDLE"/wheels/"$prefix"-*.whl; do
      [ -f "$w" ] || continue
      "$PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$w" "$WORK/site" && any=0
    done
  done
  case ":${PYTHONPATH:-}:" in *":$WORK/site:"*) ;; *) export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$WORK/site" ;; esac
  return $any
}

gtest_step() {  # $1: executable name, $2: JSON name, then gtest arguments
  local exe="$BUNDLE/bin/$1" json="$WORK/$2.json"
  shift 2
  [ -x "$exe" ] || { note "not in the bundle"; return 77; }
  bounded "$exe" --gtest_output=json:"$json" "$@"
  local rc=$?
  TEST_JSONS+=("$(basename "$exe")=$json")
  return $rc
}

step_host_tests() {
  local rc=0 r any=0
  if [ -x "$BUNDLE/bin/powergrad_tests_host" ]; then
    any=1
    gtest_step powergrad_tests_host tests_host
    r=$?
    [ $r = 0 ] || rc=$r
  fi
  if [ -x "$BUNDLE/bin/powergrad_capi_tests" ]; then
    any=1
    gtest_step powergrad_capi_tests capi_tests
    r=$?
    [ $r = 0 ] || rc=$r
  fi
  if [ -x "$BUNDLE/bin/powergrad_capi_c99" ]; then
    any=1
    bounded "$BUNDLE/bin/powergrad_capi_c99"
    r=$?
    [ $r = 0 ] || rc=$r
  fi
  [ $any = 1 ] || { note "not in the bundle"; return 77; }
  return $rc
}

step_host_bench() {
  local rc=0 hb="$BUNDLE/bin/powergrad_bench_host" hbb="$BUNDLE/bin/powergrad_bench_bucket_host"
  [ -x "$hb" ] || [ -x "$hbb" ] || { note "not in the bundle"; return 77; }
  if [ -x "$hb" ]; then  # one small shape: the plumbing and a same-run memcpy ratio
    bounded "$hb" --pg_shape=256x4000 --benchmark_min_time=0.05 \
      --benchmark_filter='host/(copy|fwd_bwd_inplace|unfused)/fp32' \
      --benchmark_out="$WORK/bench_host.json" --benchmark_out_format=json || rc=$?
  fi
  if [ -x "$hbb" ]; then
    bounded "$hbb" --benchmark_filter='clip_norm' --benchmark_out="$WORK/bench_bucket_host.json" \
      --benchmark_out_format=json || rc=$?
  fi
  return $rc
}

step_device_tests() { gtest_step powergrad_tests_device tests_device; }

step_capi_device() { gtest_step powergrad_capi_device_tests capi_device; }

step_linear_tests() { gtest_step powergrad_tests_linear_device tests_linear_device; }

# Small shapes (racecheck and initcheck run kernels orders of magnitude slower), yet every kernel
# mode: fused (edge cases), apply (saved lse_alpha), stats + apply (split form), hook; the bucket
# kernels (statistics, coefficients, apply; non-finite inputs, many tiny tensors, the stale-plan
# guard). memcheck adds fp32/fp16 (other vector widths), bad targets and CUDA-graph capture.
SAN_SMALL='XentDevice/bf16.ForwardBackwardEdgeSemantics:XentDevice/bf16.HookFromIncomingGradient'
SAN_SMALL+=':XentDevice/bf16.SplitFormEqualsUnsplit:XentDevice/bf16.BackwardWithSavedLseAlpha'
SAN_SMALL+=':BucketDevice/bf16.NonFinite:BucketDevice/bf16.ManyTinyTensors:BucketDeviceApi.StalePlanWritesNothing'
SAN_SMALL+=':XentDevice/bf16.ForwardBackwardOptions'  # the kernels with options (small shapes, in place too)
SAN_MEMCHECK="$SAN_SMALL:XentDevice/fp32.ForwardBackwardEdgeSemantics:XentDevice/fp16.HookFromIncomingGradient"
SAN_MEMCHECK+=':XentDevice/bf16.BadTargetsAreCountedAndPoisonOnlyTheirRow:XentDeviceApi.CudaGraphCaptureReplays'
SAN_MEMCHECK+=':XentDevice/fp32.SplitFormOptionsEqualsUnsplit:XentDeviceApi.BadWeightsPoisonTheRowsThatUseThemAndAreCounted'

find_sanitizer() {
  local s d
  s=$(command -v compute-sanitizer 2>/dev/null) && { echo "$s"; return 0; }
  for d in /usr/local/cuda/bin /usr/local/cuda-*/bin /opt/nvidia/*/bin; do
    [ -x "$d/compute-sanitizer" ] && { echo "$d/compute-sanitizer"; return 0; }
  done
  if [ -x "$WORK/site/nvidia/cu13/bin/compute-sanitizer" ]; then
    echo "$WORK/site/nvidia/cu13/bin/compute-sanitizer"
    return 0
  fi
  # The bundled wheel (the toolkit's release), unpacked on first use.
  local w
  for w in "$BUNDLE"/wheels/nvidia_cuda_sanitizer_api-*.whl; do
    [ -f "$w" ] || continue
    "$PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$w" "$WORK/san" 2>/dev/null || continue
    s=$(find "$WORK/san" -type f -name compute-sanitizer | head -1)
    if [ -n "$s" ]; then
      chmod +x "$s"
      echo "$s"
      return 0
    fi
  done
  return 1
}

sanitizer_step() {  # $1: tool
  local tool=$1 san T="$BUNDLE/bin/powergrad_tests_device"
  [ -x "$T" ] || { note "powergrad_tests_device not in the bundle"; return 77; }
  san=$(find_sanitizer) || { note "compute-sanitizer not found"; return 77; }
  local filter=$SAN_SMALL
  [ "$tool" = memcheck ] && filter=$SAN_MEMCHECK
  local log="$WORK/san_$tool.log"
  {
    echo "--- $tool: powergrad_tests_device --gtest_filter=$filter"
    bounded "$san" --tool "$tool" --error-exitcode 99 --print-limit 20 "$T" --gtest_brief=1 --gtest_filter="$filter"
    echo "--- $tool exit status $?"
  } >"$log" 2>&1
  cat "$log" >>"$RESULTS/sanitizer.log"
  local rc
  rc=$(sed -n 's/^--- .* exit status \([0-9]*\)$/\1/p' "$log" | tail -1)
  local ran summary
  ran=$(grep -oE '[0-9]+ tests? from [0-9]+ test suites? ran' "$log" | tail -1)
  summary=$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1 | sed 's/^=* *//')
  note "${ran:-no test ran}; ${summary:-no sanitizer summary}"
  [ "$rc" = 99 ] && note "ERRORS FOUND: ${summary:-see sanitizer.log}"
  if [ "$rc" = 0 ] && case "$ran" in "" | "0 tests"*) true ;; *) false ;; esac; then
    note "the filter matched no test"
    return 1
  fi
  return "${rc:-1}"
}
step_sanitizer_memcheck() { sanitizer_step memcheck; }
step_sanitizer_racecheck() { sanitizer_step racecheck; }
step_sanitizer_initcheck() { sanitizer_step initcheck; }
step_sanitizer_synccheck() { sanitizer_step synccheck; }

step_bench() {
  local B="$BUNDLE/bin/powergrad_bench_device"
  [ -x "$B" ] || { note "not in the bundle"; return 77; }
  bounded "$B" --pg_set=quick --benchmark_min_time="${PG_BENCH_MIN_TIME:-0.05}" \
    --benchmark_out="$WORK/bench_device.json" --benchmark_out_format=json
}

# The linear cross-entropy at the goal shape (bf16 8192 x 4096 x 128256) against three bare cuBLAS
# GEMMs of the same sizes; one JSON line.
step_bench_linear() {
  local B="$BUNDLE/bin/powergrad_bench_linear_device"
  [ -x "$B" ] || { note "not in the bundle"; return 77; }
  bounded "$B" 8192 4096 128256 --reps=5 >"$WORK/bench_linear.json"
  local rc=$?
  cat "$WORK/bench_linear.json"
  return $rc
}

step_bench_bucket() {
  local B="$BUNDLE/bin/powergrad_bench_bucket_device"
  [ -x "$B" ] || { note "not in the bundle"; return 77; }
  bounded "$B" --benchmark_out="$WORK/bench_bucket.json" --benchmark_out_format=json
}

step_demo() {
  [ -x "$BUNDLE/bin/demo" ] || { note "not in the bundle"; return 77; }
  bounded "$BUNDLE/bin/demo"
}

step_trainer() {
  [ -x "$BUNDLE/bin/trainer" ] || { note "not in the bundle"; return 77; }
  bounded "$BUNDLE/bin/trainer" --device cuda --epochs 3
  local rc=$?
  note "3 epochs"
  return $rc
}

step_nccl() {
  local X="$BUNDLE/bin/vocab_parallel_nccl"
  [ -x "$X" ] || { note "not built (no NCCL where the bundle was built)"; return 77; }
  local extra="" d
  if ldd "$X" 2>/dev/null | grep -q 'libnccl.*not found'; then
    # NCCL is too large to bundle: PyTorch's NCCL wheel, a CUDA toolkit or the system provide it.
    for d in $("$PY" -c 'import glob, os, site, sys
paths = site.getsitepackages() + [site.getusersitepackages()]
for p in paths:
    for hit in glob.glob(os.path.join(p, "nvidia", "*", "lib", "libnccl.so*")):
        print(os.path.dirname(hit))' 2>/dev/null | sort -u) /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/lib/x86_64-linux-gnu; do
      if [ -e "$d/libnccl.so.2" ]; then
        extra=$d
        break
      fi
    done
    [ -n "$extra" ] || { note "libnccl.so.2 not found on this machine"; return 77; }
  fi
  local gpus
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
  bounded env LD_LIBRARY_PATH="${extra:+$extra:}$LD_LIBRARY_PATH" "$X"
  local rc=$?
  note "$gpus GPU(s), one rank each${extra:+; NCCL from $extra}"
  return $rc
}

python_ok() {  # sets the reason and fails when $PY cannot run the Python steps
  command -v "$PY" >/dev/null 2>&1 || { note "$PY not found"; return 1; }
  "$PY" -c "import torch" >/dev/null 2>&1 || { note "torch cannot be imported by $PY"; return 1; }
  [ -n "$LIBPG" ] || { note "no libpowergrad.so in the bundle"; return 1; }
}

step_python() {
  python_ok || return 77
  local from=""
  if ! "$PY" -c "import pytest" >/dev/null 2>&1; then
    unpack_wheels pytest pluggy iniconfig packaging pygments
    from="; pytest from the bundled wheel"
  fi
  "$PY" -c "import pytest" >/dev/null 2>&1 || { note "pytest cannot be imported (not installed, no wheel)"; return 77; }
  (cd "$BUNDLE" && bounded env POWERGRAD_LIBRARY="$LIBPG" POWERGRAD_TEST_STRICT=1 \
    "$PY" -m pytest -q -rs -p no:cacheprovider tests/python) >"$RESULTS/python.log" 2>&1
  local rc=$?
  note "$(grep -E '[0-9]+ (passed|failed|error)' "$RESULTS/python.log" | tail -1 | sed 's/^=* *//; s/ *=*$//')$from"
  return $rc
}

step_compare() {
  python_ok || return 77
  local liger="installed"
  if ! "$PY" -c "import liger_kernel" >/dev/null 2>&1; then
    liger="not available"
    unpack_wheels liger_kernel && "$PY" -c "import liger_kernel" >/dev/null 2>&1 && liger="bundled wheel"
  fi
  local args
  # shellcheck disable=SC2206  # word splitting of the user's argument string is intended
  args=(${PG_COMPARE_ARGS:---shapes 8192x32000,8192x128256 --dtypes bfloat16})
  (cd "$BUNDLE" && bounded "$PY" bench/compare_frameworks.py --device cuda \
    --library "$LIBPG" --json "$RESULTS/compare.json" "${args[@]}")
  local rc=$?
  note "Liger-Kernel: $liger"
  return $rc
}

# name:limit_seconds:needs (gpu|any)
# The GPU steps come first: when the budget runs short, the host checks are what is cut.
RUN_STEPS=(device-tests:120:gpu capi-device:60:gpu linear-tests:90:gpu bench-linear:60:gpu bench:90:gpu bench-bucket:60:gpu
  sanitizer-memcheck:60:gpu sanitizer-racecheck:60:gpu sanitizer-initcheck:45:gpu
  sanitizer-synccheck:45:gpu demo:60:gpu trainer:60:gpu nccl:45:gpu python:150:gpu compare:150:gpu
  host-tests:90:any host-bench:60:any)

detect_gpu() {  # sets HAVE_GPU and GPU_WHY
  HAVE_GPU=0
  GPU_WHY=""
  if [ "${PG_NO_GPU:-0}" = 1 ]; then
    GPU_WHY="PG_NO_GPU=1"
  elif [ "${PG_FORCE_GPU:-0}" = 1 ]; then
    HAVE_GPU=1
    GPU_WHY="PG_FORCE_GPU=1"
  elif [ -x "$BUNDLE/bin/powergrad_bench_device" ]; then
    if "$BUNDLE/bin/powergrad_bench_device" --pg_probe >/dev/null 2>&1; then
      HAVE_GPU=1
    else
      GPU_WHY="the CUDA runtime finds no usable device"
    fi
  elif ! command -v nvidia-smi >/dev/null 2>&1; then
    GPU_WHY="nvidia-smi not found"
  elif ! nvidia-smi -L >/dev/null 2>&1; then
    GPU_WHY="nvidia-smi -L failed"
  else
    HAVE_GPU=1
  fi
}

write_env() {
  {
    echo "date: $(date -u +%FT%TZ)"
    echo "host: $(uname -srm), $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo 2>/dev/null)"
    if command -v nvidia-smi >/dev/null 2>&1; then
      nvidia-smi -L 2>&1
      nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw \
        --format=csv 2>&1
    else
      echo "nvidia-smi: not found"
    fi
    [ -x "$BUNDLE/bin/powergrad_bench_device" ] && "$BUNDLE/bin/powergrad_bench_device" --pg_probe 2>&1
    echo "gpu: $([ "$HAVE_GPU" = 1 ] && echo yes || echo "no ($GPU_WHY)")"
    echo "compute-sanitizer: $(find_sanitizer 2>/dev/null || echo 'not found')"
    echo "python: $(command -v "$PY" || echo "$PY not found") $("$PY" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null)"
    "$PY" -c 'import torch; print("torch:", torch.__version__, "cuda", torch.version.cuda, "devices", torch.cuda.device_count())' 2>/dev/null ||
      echo "torch: cannot be imported by $PY"
    local missing
    missing=$(for f in "$BUNDLE"/bin/* "$BUNDLE"/lib/*.so*; do [ -f "$f" ] && ldd "$f" 2>/dev/null | grep 'not found'; done | sort -u | tr -s ' \t' ' ')
    echo "shared libraries not found:${missing:- none}"
    echo "--- MANIFEST.txt (head)"
    sed -n '1,/^files/p' "$BUNDLE/MANIFEST.txt" 2>/dev/null | grep -v '^files' || echo "(no MANIFEST.txt)"
  } >"$RESULTS/env.txt" 2>&1
}

do_run() {
  [ $# = 2 ] || usage
  BUNDLE=$(cd "$1" 2>/dev/null && pwd) || die "run: no bundle folder $1"
  [ -f "$BUNDLE/MANIFEST.txt" ] || die "run: $BUNDLE is not a bundle (no MANIFEST.txt)"
  RESULTS=$(abspath "$2")
  mkdir -p "$RESULTS" || die "run: cannot create $RESULTS"
  rm -f "$RESULTS"/summary.md "$RESULTS"/env.txt "$RESULTS"/tests.json "$RESULTS"/bench.json "$RESULTS"/compare.json \
    "$RESULTS"/sanitizer.log "$RESULTS"/python.log "$RESULTS"/run.log
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/pg-gpu-check.XXXXXX") || die "run: mktemp failed"
  trap 'rm -rf "$WORK"' EXIT
  BUDGET=${PG_BUDGET_S:-330}
  PY=${PG_PYTHON:-python3}
  export LD_LIBRARY_PATH="$BUNDLE/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  TEST_JSONS=()
  LIBPG=$(find "$BUNDLE/lib" -maxdepth 1 -name 'libpowergrad.so*' 2>/dev/null | head -1)
  : >"$WORK/steps.tsv"
  : >"$RESULTS/run.log"

  detect_gpu
  write_env
  say "run: bundle $BUNDLE -> $RESULTS; GPU: $([ "$HAVE_GPU" = 1 ] && echo yes${GPU_WHY:+ ($GPU_WHY)} || echo "no ($GPU_WHY)")"

  local spec name lim needs fn rc status t0 wanted=",${PG_STEPS:-all},"
  for spec in "${RUN_STEPS[@]}"; do
    IFS=: read -r name lim needs <<<"$spec"
    [ "$wanted" = ",all," ] || case "$wanted" in *",$name,"*) ;; *) continue ;; esac
    STEP_NOTE=""
    STEP_LIMIT=$lim
    t0=$SECONDS
    if [ "$needs" = gpu ] && [ "$HAVE_GPU" = 0 ]; then
      rc=77
      STEP_NOTE="no GPU"
    elif [ $((BUDGET - SECONDS)) -lt 5 ]; then
      rc=77
      STEP_NOTE="the ${BUDGET}s budget of the run was spent"
    else
      fn="step_${name//-/_}"
      echo "=== $name (limit ${lim}s, at ${SECONDS}s)" >>"$RESULTS/run.log"
      "$fn" >>"$RESULTS/run.log" 2>&1
      rc=$?
    fi
    case "$rc" in
      0) status=passed ;;
      77) status=skipped ;;
      124 | 137) status=timeout ;;
      *) status="failed (exit $rc)" ;;
    esac
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" "$STEP_NOTE" >>"$WORK/steps.tsv"
    printf '  %-20s %s%s (%ss)\n' "$name" "$status" "${STEP_NOTE:+: $STEP_NOTE}" "$((SECONDS - t0))"
  done

  # Merged results (OUTDIR holds summary.md and at most 7 more files).
  [ ${#TEST_JSONS[@]} -gt 0 ] && python3 "$TOOLS/summarize.py" merge-tests "$RESULTS/tests.json" "${TEST_JSONS[@]}"
  local benches=() f
  for f in "$WORK/bench_device.json" "$WORK/bench_bucket.json"; do [ -f "$f" ] && benches+=("$f"); done
  [ ${#benches[@]} -gt 0 ] && python3 "$TOOLS/summarize.py" merge-bench "$RESULTS/bench.json" "${benches[@]}"
  local args=(run-summary --steps "$WORK/steps.tsv" --env "$RESULTS/env.txt" --manifest "$BUNDLE/MANIFEST.txt")
  [ -f "$RESULTS/tests.json" ] && args+=(--tests "$RESULTS/tests.json")
  [ -f "$RESULTS/bench.json" ] && args+=(--bench "$RESULTS/bench.json")
  [ -f "$RESULTS/compare.json" ] && args+=(--compare "$RESULTS/compare.json")
  for f in "$WORK/bench_host.json" "$WORK/bench_bucket_host.json"; do [ -f "$f" ] && args+=(--host-bench "$f"); done
  if ! python3 "$TOOLS/summarize.py" "${args[@]}" >"$RESULTS/summary.md" 2>>"$RESULTS/run.log"; then
    { echo "# powergrad GPU check"; echo; echo "(tools/summarize.py failed: see run.log)"; echo
      sed 's/^/    /' "$WORK/steps.tsv"; } >"$RESULTS/summary.md"
  fi
  [ -s "$RESULTS/sanitizer.log" ] || rm -f "$RESULTS/sanitizer.log"
  say "run: summary ($RESULTS/summary.md)"
  cat "$RESULTS/summary.md"
  return 0
}

# ------------------------------------------------------------------------------------------------
case "${1:-}" in
  bundle)
    shift
    do_bundle "$@"
    ;;
  run)
    shift
    do_run "$@"
    ;;
  sass)
    shift
    do_sass "$@"
    ;;
  *) usage ;;
esac
