#!/usr/bin/env bash
# Creates (or reuses) the Python virtual environment the Python tests run in, from the pinned
# tools/requirements-ci.txt:
#
#   tools/ci-venv.sh [DIR]        DIR defaults to .venv in the checkout (gitignored)
#
# The environment is made by Debian's interpreter (/usr/bin/python3 -m venv: package python3-venv,
# installed by `.ci/deps.sh --python`), or $PG_VENV_PYTHON. When DIR already holds a complete
# environment for the same requirements and interpreter (the stamp file DIR/.requirements.sha256,
# written last, after every package installed), it is reused and this script takes a second;
# otherwise DIR is removed and created afresh (PyTorch's CUDA-enabled wheel and its dependencies are
# about 4.7 GB; a couple of minutes on a fast connection).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-$root/.venv}"
python="${PG_VENV_PYTHON:-/usr/bin/python3}"
requirements="$root/tools/requirements-ci.txt"

if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
  echo "ci-venv: $python cannot create a virtual environment (Debian: apt-get install python3-venv)" >&2
  exit 1
fi

# The stamp covers the requirements and the exact interpreter the environment was made from.
stamp_of() {
  { cat "$requirements"; "$python" -c 'import sys; print(sys.version); print(sys.executable)'; } |
    sha256sum | cut -d' ' -f1
}
want="$(stamp_of)"
if [ -f "$dir/.requirements.sha256" ] && [ "$(cat "$dir/.requirements.sha256")" = "$want" ] &&
   [ -x "$dir/bin/python" ]; then
  echo "ci-venv: reusing $dir (requirements unchanged)" >&2
  exit 0
fi

start=$SECONDS
echo "ci-venv: creating $dir from $requirements" >&2
rm -rf "$dir"
"$python" -m venv "$dir"
pip_pin="$(grep -E '^pip==' "$requirements" || true)"
if [ -n "$pip_pin" ]; then
  "$dir/bin/python" -m pip install --disable-pip-version-check -q "$pip_pin"
fi
"$dir/bin/python" -m pip install --disable-pip-version-check -q -r "$requirements"
"$dir/bin/python" -m pip check
printf '%s\n' "$want" >"$dir/.requirements.sha256"
echo "ci-venv: created $dir in $((SECONDS - start)) s" >&2
