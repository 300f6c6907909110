#!/usr/bin/env bash
# Installs the Debian packages powergrad's build and tests need, only those that are missing.
# A no-op (no apt, no sudo) when everything is already installed. The CUDA toolkit is not an apt
# package here: when /usr/local/cuda exists, CMake finds nvcc there (or on PATH).
set -euo pipefail

packages=(cmake ninja-build g++ libgtest-dev libbenchmark-dev)
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
