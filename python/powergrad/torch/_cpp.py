"""The optional C++ registration of the fused cross-entropy (libpowergrad_torch, ffi/torch/ops.cpp).

Built only with ``-DPOWERGRAD_BUILD_TORCH_OPS=ON`` (docs/python.md, "Registering the ops from C++"),
and used only when asked: ``POWERGRAD_TORCH_CPP=1`` in the environment, or :func:`enable`. Then
:func:`powergrad.torch.cross_entropy` sends the calls it covers (the fused form on the CPU, class-index
targets, no loss option, no ``grad_scale``, no ``inplace``) to ``torch.ops.powergrad_cpp.xent``, eager
and under torch.compile; everything else, and everything when the library is absent or built for
another torch, stays on the Python ops. The library is found as libpowergrad.so is
(:func:`powergrad._lib.library_candidates`): next to the package, ``$POWERGRAD_TORCH_LIBRARY``, then a
checkout's build folders (``<build>/ffi/torch``).
"""

import os

import torch

from .. import _lib

LIBRARY_NAME = "libpowergrad_torch.so"
_state = {"loaded": None, "enabled": os.environ.get("POWERGRAD_TORCH_CPP") == "1", "path": None, "error": None}


def _load():
    """True when the C++ ops are registered (loading the library once)."""
    if _state["loaded"] is not None:
        return _state["loaded"]
    tried = []
    for path in _lib.library_candidates(LIBRARY_NAME, "POWERGRAD_TORCH_LIBRARY", "ffi/torch"):
        if not os.path.isfile(path):
            continue
        try:
            _lib.load_library()  # the C ABI library it links, found first the usual way
            torch.ops.load_library(path)
        except (OSError, RuntimeError) as e:  # built for another torch, or a missing dependency
            tried.append("%s (%s)" % (path, e))
            continue
        _register_fakes()
        _state.update(loaded=True, path=os.path.abspath(path))
        return True
    _state.update(loaded=False, error="; ".join(tried) or "%s not found" % LIBRARY_NAME)
    return False


def _register_fakes():
    @torch.library.register_fake("powergrad_cpp::xent_fused")
    def _fused_fake(logits, target, alpha, ignore_index, label_smoothing, reduction, compute_grad):
        rows, cols = logits.shape
        loss = logits.new_empty((rows,) if reduction == 0 else (), dtype=torch.float32)
        return loss, logits.new_empty((rows if compute_grad else 0, cols))


def enable(on=True):
    """Use the C++ ops for the calls they cover (``on=False``: the Python ops again). Raises
    ImportError, with the places searched, when the library cannot be loaded."""
    if on and not _load():
        raise ImportError("powergrad: the C++ torch ops are not available: " + str(_state["error"]) +
                          " (build with -DPOWERGRAD_BUILD_TORCH_OPS=ON)")
    _state["enabled"] = bool(on)


def active():
    """Whether calls go to the C++ ops now (enabled and loaded)."""
    return _state["enabled"] and _load()


def library_path():
    """Path of the loaded libpowergrad_torch.so, or None."""
    return _state["path"] if _load() else None


_REDUCTION_CODES = {"none": 0, "mean": 1, "sum": 2}


def xent(x, t, alpha, ignore_index, label_smoothing, reduction):
    """The loss through torch.ops.powergrad_cpp.xent; the library's errors as PowerGradError."""
    op = torch.ops.powergrad_cpp.xent
    code = _REDUCTION_CODES[reduction]
    if torch.compiler.is_compiling():
        return op(x, t, alpha, ignore_index, label_smoothing, code)
    try:
        return op(x, t, alpha, ignore_index, label_smoothing, code)
    except RuntimeError as e:
        raise _as_powergrad_error(e) from None


def _as_powergrad_error(e):
    text = str(e).split("\n")[0]
    head = "powergrad_cpp: "
    if not text.startswith(head):
        return e
    function, _, rest = text[len(head):].partition(" status ")
    status, _, message = rest.partition(": ")
    try:
        code = int(status)
    except ValueError:
        return e
    lib = _lib.load_library()
    name = lib.pg_status_string(code)
    return _lib.PowerGradError(function, code, name.decode("utf-8", "replace") if name else "", message)
