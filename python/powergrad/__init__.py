"""powergrad: the PowerGrad Transform (PGT) softmax cross-entropy (arXiv 2111.12495) from Python.

A pure-Python ctypes binding of the C ABI in ``libpowergrad.so`` (include/powergrad/powergrad_c.h).
NumPy entry points (host arrays) live here; the PyTorch autograd function and gradient hook live in
``powergrad.torch``. The library is loaded on first use (see ``powergrad._lib`` for the search order).
"""

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
