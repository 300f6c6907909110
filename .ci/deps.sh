#!/usr/bin/env bash
# Installs the Debian packages powergrad's build and tests need, only those that are missing.
# A no-op (no apt, no sudo) when everything is already installed (and, with --python, the Python
# environment is complete). The CUDA toolkit is not an apt
# package here: when /usr/local/cuda exists, CMake finds nvcc there (or on PATH).
#
#   .ci/deps.sh            the C++ build: cmake, ninja-build, g++, libgtest-dev, libbenchmark-dev,
#                          libopenblas-dev (the host linear cross-entropy)
#   .ci/deps.sh --fuzz     also clang and libclang-rt-14-dev (libFuzzer), for tools/ci-fuzz.sh
#   .ci/deps.sh --python   also the Python tests' environment: python3 and python3-venv from apt,
#                          then tools/ci-venv.sh creates .venv/ in the checkout from the pinned
#                          tools/requirements-ci.txt (PyTorch 2.11 from PyPI, NumPy, pytest, JAX,
#                          scikit-build-core, matplotlib; about 5 GB, a couple of minutes the first
#                          time), or reuses it while the requirements are unchanged (a second).
#                          Debian's python3-torch (1.13) is older than the binding supports (2.4).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

packages=(cmake ninja-build g++ libgtest-dev libbenchmark-dev libopenblas-dev)
python_env=0
for arg in "$@"; do
  case "$arg" in
    --python) packages+=(python3 python3-venv); python_env=1 ;;
    --fuzz) packages+=(clang libclang-rt-14-dev) ;;
    *) echo "deps.sh: unknown argument '$arg' (accepted: --python, --fuzz)" >&2; exit 2 ;;
  esac
done
missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps.sh: installing ${missing[*]}" >&2
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -q
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ "$python_env" = 1 ]; then
  "$root/tools/ci-venv.sh" "$root/.venv"
fi
