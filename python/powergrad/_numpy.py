"""NumPy entry points: PGT cross-entropy on host (CPU) arrays through the C ABI.

Logits are float32 or float16 ``[rows, cols]`` arrays (bfloat16 only through torch: NumPy has no
bfloat16). Class targets are integer ``[rows]`` arrays (int32/int64; other integer types are
converted to int64); dense targets are float ``[rows, cols]`` probabilities (converted to the logits'
dtype). The host backend needs no workspace and runs synchronously.

Memory layout: the library reads ``float*`` / ``int64_t*`` pointers, so every array it receives is
aligned to its element size, native-endian, with a unit column stride. An input that is not (a view
at an odd byte offset, a byte-swapped array, a transposed or column-strided view, a negative or
zero row stride, a broadcast stride-0 target or upstream) is first copied into such an array: the
result is the same as for a contiguous copy, never a misaligned access. With ``inplace=True`` the
gradient is written over the logits themselves, so logits that would need a copy raise ValueError
instead. Integer arguments (``ignore_index``) that do not fit the C type (int64_t) raise
:class:`powergrad._lib.ArgumentRangeError` (an OverflowError and a ValueError) naming the argument;
ctypes would silently wrap them.
"""

import ctypes

import numpy as np

from . import _lib
from ._problem import xent_problem

_DTYPES = {np.dtype(np.float32): _lib.DType.FLOAT32, np.dtype(np.float16): _lib.DType.FLOAT16}


def _ptr(a):
    if a is None:
        return None
    if not a.flags.aligned:  # every caller passes an aligned copy; never hand the library a misaligned pointer
        raise ValueError("powergrad: internal error: a misaligned %s array reached the C call" % a.dtype)
    return ctypes.c_void_p(a.ctypes.data)


def _c_array(a, dtype, name):
    """a as a C-contiguous, aligned, native-endian array of dtype (a copy only when needed)."""
    try:
        return np.require(a, dtype=dtype, requirements=["C", "A"])
    except (TypeError, ValueError) as e:
        raise TypeError("%s must be convertible to %s: %s" % (name, np.dtype(dtype), e)) from None


def _logits_layout(x, name, writable=False):
    """(array, ld): unit column stride and a non-negative row stride that is a multiple of the item size."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError("%s must be 2-D [rows, cols], got shape %s" % (name, x.shape))
    native = x.dtype.newbyteorder("=")
    if x.dtype not in _DTYPES and native not in _DTYPES:
        raise TypeError("%s must be float32 or float16 (bfloat16 only through powergrad.torch), not %s"
                        % (name, x.dtype))
    if x.dtype != native and x.dtype not in _DTYPES:  # byte-swapped
        if writable:
            raise ValueError("%s: in-place needs a native-endian array, not %s" % (name, x.dtype.str))
        x = x.astype(native)
    if not x.flags.aligned:
        if writable:
            raise ValueError("%s: in-place needs an array aligned to its %d-byte elements (this one starts at "
                             "address %#x); pass an aligned array or inplace=False" % (name, x.itemsize, x.ctypes.data))
        x = np.array(x, order="C")  # a fresh allocation: aligned
    item = x.itemsize
    ok = x.size == 0 or ((x.strides[1] == item or x.shape[1] <= 1) and x.strides[0] >= 0 and x.strides[0] % item == 0
                         and (x.shape[0] <= 1 or x.strides[0] // item >= x.shape[1]))  # empty: any strides
    if not ok:
        if writable:
            raise ValueError("%s: in-place needs a unit column stride and a row stride >= cols" % name)
        x = np.ascontiguousarray(x)
    if x.shape[0] <= 1 or x.strides[0] == 0:
        ld = x.shape[1]
    else:
        ld = x.strides[0] // item
    return x, ld


def _problem(logits, targets, alpha, ignore_index, label_smoothing, reduction, inplace=False, name="logits"):
    logits, ld = _logits_layout(logits, name, writable=inplace)
    if inplace and not logits.flags.writeable:
        raise ValueError("inplace=True needs a writable %s array" % name)
    rows, cols = logits.shape
    t = np.asarray(targets)
    if t.ndim == 1:
        if t.shape[0] != rows:
            raise ValueError("targets has %d entries for %d rows" % (t.shape[0], rows))
        if not np.issubdtype(t.dtype, np.integer):
            raise TypeError("class targets must be integers, not %s" % t.dtype)
        if t.dtype.kind == "u" and t.dtype.itemsize == 8 and t.size and t.max() > np.iinfo(np.int64).max:
            # astype(int64) would wrap these to negative classes (e.g. onto ignore_index).
            raise ValueError("targets holds %d, beyond int64 (class indices are int64_t)" % t.max())
        t = _c_array(t, np.int32 if t.dtype == np.int32 else np.int64, "targets")
        kind = _lib.TargetKind.INDEX_INT32 if t.dtype == np.int32 else _lib.TargetKind.INDEX_INT64
        target_ld = 0
    elif t.ndim == 2:
        if t.shape != logits.shape:
            raise ValueError("dense targets must have the logits' shape %s, not %s" % (logits.shape, t.shape))
        t = _c_array(t, logits.dtype, "targets")
        kind = _lib.TargetKind.DENSE
        target_ld = cols
    else:
        raise ValueError("targets must be 1-D class indices or 2-D dense probabilities")
    p = xent_problem(_lib.Device.HOST, _DTYPES[logits.dtype], _ptr(logits), rows, cols, ld, kind, _ptr(t), target_ld,
                     ignore_index=ignore_index, alpha=alpha, label_smoothing=label_smoothing, reduction=reduction)
    return p, logits, ld, t


def _upstream(upstream, reduction, rows):
    """(pg_upstream_t, keep-alive array). A scalar for mean/sum, a scalar or [rows] array for none."""
    if upstream is None:
        return _lib.Upstream(1.0, None), None
    u = np.asarray(upstream, dtype=np.float32)
    if u.ndim == 0:
        return _lib.Upstream(float(u), None), None
    if _lib.reduction_of(reduction) != _lib.Reduction.NONE:
        raise ValueError("a per-row upstream needs reduction='none'")
    u = _c_array(u.reshape(-1), np.float32, "upstream")
    if u.shape[0] != rows:
        raise ValueError("upstream has %d values for %d rows" % (u.shape[0], rows))
    return _lib.Upstream(1.0, _ptr(u)), u


def cross_entropy_forward_backward(logits, targets, alpha=1.0, ignore_index=-100, label_smoothing=0.0,
                                   reduction="mean", inplace=False, upstream=None, return_lse_alpha=False,
                                   weight=None, z_loss_scale=0.0, softcap=0.0, return_extras=False):
    """PGT cross-entropy loss and gradient in one sweep (pg_xent_forward_backward, host backend).

    Returns ``(loss, grad)``: ``loss`` a Python float for 'mean'/'sum' and a float32 ``[rows]`` array
    for 'none' (ordinary cross-entropy: PGT never changes the loss); ``grad`` = g_r * (p' - q) with
    p' = softmax(alpha * z), in the logits' dtype. g_r = upstream/n_valid ('mean'), upstream ('sum'),
    upstream[r] ('none'); ``upstream`` defaults to 1. With ``inplace=True`` the gradient is written
    over ``logits`` (which must be writable) and ``grad`` is ``logits``. 'mean' over zero valid rows gives
    loss 0 and gradient 0 (PyTorch gives NaN). With ``return_lse_alpha=True`` a third value, the
    float32 ``[rows]`` log-sum-exp of alpha*z, is returned for :func:`cross_entropy_backward`.
    Misaligned, byte-swapped or strided inputs are copied first (``inplace=True`` raises ValueError for
    logits that would need a copy); see the module docstring.

    Options (docs/design.md §2.5): ``weight`` (``[cols]`` class weights, PyTorch's ``weight=``),
    ``z_loss_scale`` (adds lambda * lse^2 per row), ``softcap`` (logits become c * tanh(z / c)). With
    ``return_extras=True`` the last returned value is a dict: ``z_loss`` (the z-loss part of the loss,
    reduced as the loss), ``argmax`` (int64 ``[rows]``) and, for class targets, ``correct`` (int32
    ``[rows]``: argmax == target, 0 for ignored rows).
    """
    p, logits, ld, t = _problem(logits, targets, alpha, ignore_index, label_smoothing, reduction, inplace)
    rows, cols = logits.shape
    w = None
    if weight is not None:
        w = _c_array(weight, np.float32, "weight")
        if w.ndim != 1 or w.shape[0] != cols:
            raise ValueError("weight must have shape [%d] (one per class), not %s" % (cols, w.shape))
        p.weight = _ptr(w)
    p.z_loss_scale = float(z_loss_scale)
    p.softcap = float(softcap)
    red = _lib.reduction_of(reduction)
    up, _keep = _upstream(upstream, reduction, rows)
    loss = np.empty(rows if red == _lib.Reduction.NONE else 1, dtype=np.float32)
    if inplace:
        grad, ld_grad = logits, ld
    else:
        grad, ld_grad = np.empty((rows, cols), dtype=logits.dtype), cols
    lse_alpha = np.empty(rows, dtype=np.float32) if return_lse_alpha else None
    out = _lib.XentOutputs(loss=_ptr(loss), lse=None, lse_alpha=_ptr(lse_alpha), dlogits=_ptr(grad),
                           ld_dlogits=ld_grad)
    extras = {}
    if return_extras:
        extras["z_loss"] = np.empty(rows if red == _lib.Reduction.NONE else 1, dtype=np.float32)
        extras["argmax"] = np.empty(rows, dtype=np.int64)
        out.z_loss = _ptr(extras["z_loss"])
        out.argmax = _ptr(extras["argmax"])
        if t.dtype in (np.int32, np.int64):
            extras["correct"] = np.empty(rows, dtype=np.int32)
            out.correct = _ptr(extras["correct"])
    _lib.call("pg_xent_forward_backward", ctypes.byref(p), ctypes.byref(up), ctypes.byref(out), None, 0, None)
    loss_value = loss if red == _lib.Reduction.NONE else float(loss[0])
    result = (loss_value, grad) + ((lse_alpha,) if return_lse_alpha else ())
    if return_extras:
        if red != _lib.Reduction.NONE:
            extras["z_loss"] = float(extras["z_loss"][0])
        result += (extras,)
    return result


def cross_entropy_backward(logits, targets, alpha=1.0, ignore_index=-100, label_smoothing=0.0, reduction="mean",
                           upstream=None, lse_alpha=None, inplace=False):
    """The PGT gradient g_r * (p' - q) only (pg_xent_backward, host backend).

    ``lse_alpha`` (float32 ``[rows]``, from ``cross_entropy_forward_backward(..., return_lse_alpha=True)``)
    makes it one read of the logits and one write; without it the statistics are recomputed.
    ``upstream`` and ``inplace`` as in :func:`cross_entropy_forward_backward`.
    """
    p, logits, ld, t = _problem(logits, targets, alpha, ignore_index, label_smoothing, reduction, inplace)
    rows, cols = logits.shape
    up, _keep = _upstream(upstream, reduction, rows)
    saved = None
    if lse_alpha is not None:
        saved = _c_array(np.asarray(lse_alpha, dtype=np.float32).reshape(-1), np.float32, "lse_alpha")
        if saved.shape[0] != rows:
            raise ValueError("lse_alpha has %d values for %d rows" % (saved.shape[0], rows))
    if inplace:
        grad, ld_grad = logits, ld
    else:
        grad, ld_grad = np.empty((rows, cols), dtype=logits.dtype), cols
    _lib.call("pg_xent_backward", ctypes.byref(p), ctypes.byref(up), _ptr(saved), _ptr(grad), ld_grad, None, 0, None)
    return grad


def hook_transform(grad, targets, scale, alpha, ignore_index=-100, label_smoothing=0.0, row_scale=None,
                   inplace=False):
    """The hook form (pg_xent_hook): rewrite G = s_r (p - q) into s_r (p' - q).

    ``grad`` is an existing logits gradient, float32/float16 ``[rows, cols]``; the per-row scale it
    carries must be known: s_r = scale * (row_scale[r] if row_scale is given else 1). For a
    mean-reduced loss multiplied by a loss scale L, s_r = L / n_valid (NOT a division by the batch
    size: see powergrad.torch.pgt_hook). Less precise than the logits form: probabilities below the
    gradient's resolution are lost. Returns the new gradient (``grad`` itself when ``inplace``).
    """
    p, grad, ld, t = _problem(grad, targets, alpha, ignore_index, label_smoothing, "none", inplace, name="grad")
    rows, cols = grad.shape
    rs = None
    if row_scale is not None:
        rs = _c_array(np.asarray(row_scale, dtype=np.float32).reshape(-1), np.float32, "row_scale")
        if rs.shape[0] != rows:
            raise ValueError("row_scale has %d values for %d rows" % (rs.shape[0], rows))
    if inplace:
        out, ld_out = grad, ld
    else:
        out, ld_out = np.empty((rows, cols), dtype=grad.dtype), cols
    _lib.call("pg_xent_hook", ctypes.byref(p), float(scale), _ptr(rs), _ptr(out), ld_out, None)
    return out
