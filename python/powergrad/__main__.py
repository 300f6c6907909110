"""``python -m powergrad``: what this installation is.

Prints the package version, the library it loads and that library's version, the backends compiled
into it (the host backend always; CUDA when ``pg_has_cuda()``), and the GPU PyTorch sees (when torch is
importable). Exits 1, with the places searched, when the library cannot be loaded.
"""

import sys

from . import __version__
from ._lib import LibraryNotFoundError, has_cuda, library_path, version


def _version_string(v):
    return "%d.%d.%d" % (v // 10000, v // 100 % 100, v % 100)


def _gpu():
    try:
        import torch
    except Exception as e:  # noqa: BLE001 (any import failure means: not known)
        return "unknown (torch cannot be imported: %s)" % (str(e).splitlines()[0] if str(e) else type(e).__name__)
    where = "torch %s" % torch.__version__
    try:
        if not torch.cuda.is_available():
            cuda = torch.version.cuda
            return "none (%s, %s)" % (where, "built with CUDA %s, no device visible" % cuda if cuda else "CPU-only build")
        i = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(i)
        return "%s (sm_%d%d, %d device%s; %s, CUDA %s)" % (
            torch.cuda.get_device_name(i), major, minor, torch.cuda.device_count(),
            "" if torch.cuda.device_count() == 1 else "s", where, torch.version.cuda)
    except Exception as e:  # noqa: BLE001
        return "unknown (%s: %s)" % (where, e)


def main():
    print("powergrad %s" % __version__)
    try:
        path = library_path()
    except LibraryNotFoundError as e:
        print("library:  not found", flush=True)
        print(str(e), file=sys.stderr)
        return 1
    lib_version = _version_string(version())
    print("library:  %s (version %s)" % (path, lib_version))
    print("backends: %s" % ("host, cuda" if has_cuda() else "host (built without CUDA)"))
    print("gpu:      %s" % _gpu())
    if lib_version != __version__:
        print("warning: the package (%s) and the library (%s) are different versions" % (__version__, lib_version),
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
