"""Tensor layout and C-call helpers shared by the powergrad.torch modules.

Everything here runs on real tensors inside the custom ops' implementations (python/powergrad/torch/
_ops.py) or in eager-only code: nothing of it is traced by torch.compile.
"""

import contextlib
import ctypes
import itertools

import torch

from .. import _lib, _threads
from .._problem import (OUTPUTS_SIZE, UPSTREAM_SIZE, RawUpstream, RawXentOutputs, raw_functions,
                        raw_xent_problem)

DTYPES = {torch.float32: _lib.DType.FLOAT32, torch.float16: _lib.DType.FLOAT16,
          torch.bfloat16: _lib.DType.BFLOAT16}

# Distinct, aligned, never-dereferenced stand-ins for the data pointer of empty tensors (torch gives
# them address 0): the library rejects null required pointers whatever the batch size, and reads or
# writes nothing of an empty buffer; distinct addresses keep its aliasing checks quiet.
_EMPTY_STANDINS = [ctypes.create_string_buffer(48) for _ in range(64)]
_EMPTY_NEXT = itertools.count()


def ptr(t):
    """t's data pointer as an int (None for None), for a struct field or a void* parameter."""
    if t is None:
        return None
    p = t.data_ptr()
    if p == 0 and t.numel() == 0:
        buf = _EMPTY_STANDINS[next(_EMPTY_NEXT) % len(_EMPTY_STANDINS)]
        return (ctypes.addressof(buf) + 15) // 16 * 16
    if p % t.element_size():  # the helpers below copy misaligned inputs; never hand the library such a pointer
        raise ValueError("powergrad: internal error: a misaligned %s tensor reached the C call" % t.dtype)
    return p


def vp(t):
    """t's data pointer as a ctypes.c_void_p (None for None)."""
    p = ptr(t)
    return None if p is None else ctypes.c_void_p(p)


def aligned(t):
    """Whether t's first element is aligned to its element size (torch.frombuffer / from_numpy views can
    start at any byte; the library reads float* / int64_t*)."""
    return t.data_ptr() % t.element_size() == 0


def c_tensor(t):
    """t as a contiguous tensor aligned to its element size (a copy only when needed)."""
    t = t.contiguous()
    return t if aligned(t) else t.clone()


def row_layout(x):
    """True when x (2-D) has a unit column stride and a row stride >= cols, i.e. what the ABI accepts."""
    if x.dim() != 2:
        return False
    rows, cols = x.shape
    return (x.stride(1) == 1 or cols <= 1) and (rows <= 1 or x.stride(0) >= cols)


def for_c(x):
    """2-D x itself when the ABI can read it (row layout, aligned), else a contiguous aligned copy."""
    return x if (row_layout(x) and aligned(x)) else c_tensor(x)


def ld(x):
    rows, cols = x.shape
    return cols if rows <= 1 else x.stride(0)


_HOST = int(_lib.Device.HOST)
_CUDA = int(_lib.Device.CUDA)
_DTYPE_CODES = {k: int(v) for k, v in DTYPES.items()}
_INDEX_KINDS = {torch.int32: int(_lib.TargetKind.INDEX_INT32), torch.int64: int(_lib.TargetKind.INDEX_INT64)}
_DENSE = int(_lib.TargetKind.DENSE)


def device_and_stream(x):
    if x.device.type == "cpu":
        return _HOST, None
    if x.device.type == "cuda":
        return _lib.Device.CUDA, ctypes.c_void_p(torch.cuda.current_stream(x.device).cuda_stream)
    raise TypeError("powergrad: tensors must be on the CPU or a CUDA device, not %s" % x.device)


def on_device(device):
    """Context that makes `device` current for CUDA launches (kernels go to that device's stream)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


_FUNCTIONS = None


def call(device, function, *args):
    """Calls a pg_* function with `device` current (CUDA launches go to the current device's stream);
    PowerGradError on failure. Unlike _lib.call it does not range-check the arguments again: every
    caller here passes sizes from tensors and options its public wrapper checked. The functions are
    those of :func:`powergrad._problem.raw_functions` (struct pointers as ``void*``: the unchecked
    structs built here, or ``byref`` of any struct)."""
    global _FUNCTIONS
    if _FUNCTIONS is None:
        _FUNCTIONS = raw_functions()
    fn = _FUNCTIONS[function]
    if device.type == "cpu":
        _threads.follow_torch()  # host ops use as many threads as PyTorch's pool (docs/design.md §6.1)
        status = fn(*args)
    else:
        with on_device(device):
            status = fn(*args)
    if status:
        _lib.check(function, status)


def workspace(x, reduction):
    """(device workspace tensor or None, bytes) for a cross-entropy call on x."""
    if x.device.type != "cuda":
        return None, 0
    n = _lib.workspace_bytes(x.shape[0], _lib.reduction_of(reduction))
    if n == 0:
        return None, 0
    # The caching allocator returns 512-byte aligned blocks (the ABI needs 16).
    return torch.empty(n, dtype=torch.uint8, device=x.device), n


def problem(x, target, alpha, ignore_index, label_smoothing, reduction, col_offset=0, total_cols=0, weight=None,
            z_loss_scale=0.0, softcap=0.0):
    """(pg_xent_problem_t, keep-alive tensors) for 2-D logits x (already laid out for the ABI) and
    a target the public wrappers have checked ([N] int32/int64 classes, or [N, C] floating
    probabilities, converted here to x's dtype). ``weight``: None or the class weights ([cols],
    floating, on x's device; converted here to contiguous float32); ``z_loss_scale`` / ``softcap``
    are floats the wrappers checked (docs/design.md §2.5)."""
    dev = x.device.type
    if dev != "cpu" and dev != "cuda":
        raise TypeError("powergrad: tensors must be on the CPU or a CUDA device, not %s" % x.device)
    rows, cols = x.shape
    if target.dim() == 1:
        kind = _INDEX_KINDS.get(target.dtype)
        if kind is None:
            target, kind = target.long(), _INDEX_KINDS[torch.int64]
        t = target if (target.is_contiguous() and aligned(target)) else c_tensor(target)
        target_ld = 0
    else:
        t = c_tensor(target.detach().to(x.dtype))
        kind = _DENSE
        target_ld = cols
    w = None
    if weight is not None:
        w = c_tensor(weight.detach().to(device=x.device, dtype=torch.float32))
    p = raw_xent_problem(_HOST if dev == "cpu" else _CUDA, _DTYPE_CODES[x.dtype], ptr(x), rows, cols,
                         cols if rows <= 1 else x.stride(0), kind, ptr(t), target_ld, ignore_index, alpha,
                         label_smoothing, reduction, col_offset, total_cols, ptr(w), z_loss_scale, softcap)
    return p, (t, w)


def upstream(scale=1.0, values=None):
    """pg_upstream_t, unchecked (values: a pointer or None)."""
    return RawUpstream(UPSTREAM_SIZE, scale, values)


def outputs(loss=None, lse=None, lse_alpha=None, dlogits=None, ld_dlogits=0, z_loss=None, argmax=None, correct=None):
    """pg_xent_outputs_t, unchecked (pointers as ints, c_void_p or None)."""
    return RawXentOutputs(OUTPUTS_SIZE, loss, lse, lse_alpha, dlogits, ld_dlogits, z_loss, argmax, correct)


def no_double_backward(what):
    # Autograd runs backward functions (and tensor hooks) with grad mode on exactly when
    # create_graph=True. The gradient here comes from the library, not from differentiable torch ops,
    # so a second-order graph would silently be missing: refuse instead.
    if torch.is_grad_enabled():
        raise RuntimeError("powergrad %s: create_graph=True (double backward) is not supported: the PGT "
                           "gradient is computed by the library and has no graph of its own" % what)
