"""powergrad: the PowerGrad Transform (PGT) softmax cross-entropy (arXiv 2111.12495) from Python.

A pure-Python ctypes binding of the C ABI in ``libpowergrad.so`` (include/powergrad/powergrad_c.h).
NumPy entry points (host arrays) live here; the PyTorch autograd function and gradient hook live in
``powergrad.torch``. The library is loaded on first use (see ``powergrad._lib`` for the search order).
``powergrad.__version__`` is the package version (CMakeLists.txt's project version); ``python -m
powergrad`` prints it with the library, its backends and the GPU PyTorch sees.
"""

import os as _os
import re as _re


def _package_version():
    """CMakeLists.txt's project(VERSION ...): written into _version.py when the package is built
    (pyproject.toml), or read from the checkout's CMakeLists.txt when imported from the sources."""
    try:
        from ._version import __version__ as v
        return v
    except ImportError:
        pass
    here = _os.path.dirname(_os.path.abspath(__file__))
    try:
        with open(_os.path.join(_os.path.dirname(_os.path.dirname(here)), "CMakeLists.txt"), encoding="utf-8") as f:
            m = _re.search(r"project\(powergrad\s+VERSION\s+([0-9]+\.[0-9]+\.[0-9]+)", f.read())
    except OSError:
        m = None
    return m.group(1) if m else "0+unknown"


__version__ = _package_version()

from ._lib import (DType, Device, LibraryNotFoundError, PowerGradError, Reduction, Status, TargetKind,
                   candidate_paths, has_cuda, library_available, library_path, load_library, version,
                   workspace_bytes)

__all__ = [
    "DType", "Device", "LibraryNotFoundError", "PowerGradError", "Reduction", "Status", "TargetKind",
    "candidate_paths", "has_cuda", "library_available", "library_path", "load_library", "version",
    "workspace_bytes", "cross_entropy_forward_backward", "cross_entropy_backward", "hook_transform",
]


def __getattr__(name):
    # NumPy is imported only when a NumPy entry point is used.
    if name in ("cross_entropy_forward_backward", "cross_entropy_backward", "hook_transform"):
        from . import _numpy
        return getattr(_numpy, name)
    raise AttributeError("module 'powergrad' has no attribute %r" % name)
