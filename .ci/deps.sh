#!/usr/bin/env bash
# Installs the Debian packages powergrad's build and tests need, only those that are missing.
# A no-op (no apt, no sudo) when everything is already installed. The CUDA toolkit is not an apt
# package here: when /usr/local/cuda exists, CMake finds nvcc there (or on PATH).
#
#   .ci/deps.sh            the C++ build: cmake, ninja-build, g++, libgtest-dev, libbenchmark-dev,
#                          libopenblas-dev (the host linear cross-entropy)
#   .ci/deps.sh --fuzz     also clang and libclang-rt-14-dev (libFuzzer), for tools/ci-fuzz.sh
#   .ci/deps.sh --python   also what the Python binding tests need, for Debian's /usr/bin/python3:
#                          python3-numpy, python3-pytest, python3-matplotlib (bench/plot.py),
#                          python3-torch (Debian 12: torch 1.13, CPU only;
#                          about 150 MB of .debs, versus several GB for pip's torch wheels)
set -euo pipefail

packages=(cmake ninja-build g++ libgtest-dev libbenchmark-dev libopenblas-dev)
for arg in "$@"; do
  case "$arg" in
    --python) packages+=(python3 python3-numpy python3-pytest python3-torch python3-matplotlib) ;;
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
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "deps.sh: installing ${missing[*]}" >&2
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
