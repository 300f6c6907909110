"""PyTorch integration: PGT cross-entropy as an autograd function, and a drop-in gradient hook.

Switching a model's loss to PGT::

    from powergrad.torch import cross_entropy
    loss = cross_entropy(logits, target, alpha=0.3)   # instead of F.cross_entropy(logits, target)

The forward value is ordinary cross-entropy; only the gradient changes (softmax(alpha z) - q instead of
softmax(z) - q). CPU tensors run on the library's host backend, CUDA tensors on its device kernels on
the current stream (no host synchronisation, device workspace from the caching allocator).
"""

import collections
import contextlib
import ctypes
import itertools

import torch

from . import _lib

__all__ = ["cross_entropy", "pgt_hook", "inplace_is_safe", "power_grad_", "clip_grad_norm_", "adaptive_clip_grad_",
           "PGTCommHookState", "pgt_comm_hook", "vocab_parallel_cross_entropy"]

_DTYPES = {torch.float32: _lib.DType.FLOAT32, torch.float16: _lib.DType.FLOAT16,
           torch.bfloat16: _lib.DType.BFLOAT16}


# Distinct, aligned, never-dereferenced stand-ins for the data pointer of empty tensors (torch gives
# them address 0): the library rejects null required pointers whatever the batch size, and reads or
# writes nothing of an empty buffer; distinct addresses keep its aliasing checks quiet.
_EMPTY_STANDINS = [ctypes.create_string_buffer(48) for _ in range(64)]
_EMPTY_NEXT = itertools.count()


def _vp(t):
    if t is None:
        return None
    if t.numel() == 0 and t.data_ptr() == 0:
        buf = _EMPTY_STANDINS[next(_EMPTY_NEXT) % len(_EMPTY_STANDINS)]
        return ctypes.c_void_p((ctypes.addressof(buf) + 15) // 16 * 16)
    if not _aligned(t):  # the helpers below copy misaligned inputs; never hand the library such a pointer
        raise ValueError("powergrad: internal error: a misaligned %s tensor reached the C call" % t.dtype)
    return ctypes.c_void_p(t.data_ptr())


def _aligned(t):
    """Whether t's first element is aligned to its element size (torch.frombuffer / from_numpy views can
    start at any byte; the library reads float* / int64_t*)."""
    return t.data_ptr() % t.element_size() == 0


def _c_tensor(t):
    """t as a contiguous tensor aligned to its element size (a copy only when needed)."""
    t = t.contiguous()
    return t if _aligned(t) else t.clone()


def _for_c(x):
    """2-D x itself when the ABI can read it (row layout, aligned), else a contiguous aligned copy."""
    return x if (_row_layout(x) and _aligned(x)) else _c_tensor(x)


def _no_double_backward(what):
    # Autograd runs backward functions (and tensor hooks) with grad mode on exactly when
    # create_graph=True. The gradient here comes from the library, not from differentiable torch ops,
    # so a second-order graph would silently be missing: refuse instead.
    if torch.is_grad_enabled():
        raise RuntimeError("powergrad %s: create_graph=True (double backward) is not supported: the PGT "
                           "gradient is computed by the library and has no graph of its own" % what)


def _device_and_stream(x):
    if x.device.type == "cpu":
        return _lib.Device.HOST, None
    if x.device.type == "cuda":
        return _lib.Device.CUDA, ctypes.c_void_p(torch.cuda.current_stream(x.device).cuda_stream)
    raise TypeError("powergrad: tensors must be on the CPU or a CUDA device, not %s" % x.device)


def _row_layout(x):
    """True when x (2-D) has a unit column stride and a row stride >= cols, i.e. what the ABI accepts."""
    if x.dim() != 2:
        return False
    rows, cols = x.shape
    return (x.stride(1) == 1 or cols <= 1) and (rows <= 1 or x.stride(0) >= cols)


def _ld(x):
    rows, cols = x.shape
    return cols if rows <= 1 else x.stride(0)


def _problem(x, target, alpha, ignore_index, label_smoothing, reduction):
    """(pg_xent_problem_t, keep-alive tensors) for 2-D logits x (already laid out) and the target."""
    if x.dtype not in _DTYPES:
        raise TypeError("powergrad: logits must be float32, float16 or bfloat16, not %s" % x.dtype)
    device, _ = _device_and_stream(x)
    rows, cols = x.shape
    if target.device != x.device:
        raise ValueError("powergrad: target is on %s, logits on %s" % (target.device, x.device))
    if target.dim() == 1:
        if target.shape[0] != rows:
            raise ValueError("powergrad: target has %d entries for %d rows" % (target.shape[0], rows))
        if target.is_floating_point() or target.is_complex():
            raise TypeError("powergrad: class targets must be integers, not %s" % target.dtype)
        t = target if target.dtype in (torch.int32, torch.int64) else target.long()
        t = _c_tensor(t)
        kind = _lib.TargetKind.INDEX_INT32 if t.dtype == torch.int32 else _lib.TargetKind.INDEX_INT64
        target_ld = 0
    elif target.dim() == 2:
        if tuple(target.shape) != (rows, cols):
            raise ValueError("powergrad: dense targets must have the logits' shape")
        t = _c_tensor(target.detach().to(x.dtype))
        kind = _lib.TargetKind.DENSE
        target_ld = cols
    else:
        raise ValueError("powergrad: target must be 1-D class indices or 2-D probabilities")
    p = _lib.XentProblem(
        device=device, dtype=_DTYPES[x.dtype], logits=_vp(x), rows=rows, cols=cols, ld=_ld(x), target_kind=kind,
        targets=_vp(t), target_ld=target_ld, ignore_index=_lib.check_int("ignore_index", ignore_index),
        alpha=float(alpha),
        label_smoothing=float(label_smoothing), reduction=_lib.reduction_of(reduction), col_offset=0,
        total_cols=0, bad_target_count=None)
    return p, t


def _workspace(x, reduction):
    if x.device.type != "cuda":
        return None, 0
    n = _lib.workspace_bytes(x.shape[0], _lib.reduction_of(reduction))
    if n == 0:
        return None, 0
    # The caching allocator returns 512-byte aligned blocks (the ABI needs 16).
    return torch.empty(n, dtype=torch.uint8, device=x.device), n


def _storage_ptr(t):
    try:
        return t.untyped_storage().data_ptr()
    except AttributeError:  # torch < 2.0
        return t.storage().data_ptr()


def _saved_tensors_of(node):
    """Tensors an autograd node saved for its backward (torch exposes them as _saved_* attributes)."""
    if node is None:
        return
    for name in dir(node):
        if not name.startswith("_saved_"):
            continue
        try:
            v = getattr(node, name)
        except Exception:  # freed already, or not readable: treat as unknown below
            continue
        if isinstance(v, torch.Tensor):
            yield v
        elif isinstance(v, (tuple, list)):
            for e in v:
                if isinstance(e, torch.Tensor):
                    yield e


def inplace_is_safe(logits):
    """Whether powergrad.torch.cross_entropy(..., inplace=True) may write the gradient over ``logits``.

    The rule (anything else falls back to a separate gradient buffer, i.e. inplace=False):

    * ``logits`` requires grad (otherwise no gradient is computed at all) and is not a leaf (a leaf is
      the caller's own data or parameter);
    * if ``logits`` is a view, its base is not a leaf either;
    * the autograd nodes that produced ``logits`` (and its base) did not save that memory for their own
      backward (e.g. ``exp``/``softmax``/``sigmoid`` save their result; a Linear/matmul head saves
      only its inputs and weights, so the usual ``lm_head(h).view(-1, V)`` is safe);
    * the layout is one the ABI accepts (unit column stride, row stride >= cols, first element aligned
      to the element size), the tensor is on the CPU or a CUDA device, and has a supported dtype.

    Uses that cannot be seen from the tensor (another operation that saved ``logits`` for its backward,
    e.g. ``logits.pow(2)`` in an auxiliary loss) are caught by autograd: the in-place write bumps the
    tensor's version counter, so such a backward raises PyTorch's "modified by an inplace operation"
    error instead of silently using the gradient as logits. Reading ``logits`` yourself after the call
    gives the gradient, not the logits.
    """
    if not isinstance(logits, torch.Tensor) or not logits.requires_grad or logits.is_leaf:
        return False
    if logits.dtype not in _DTYPES or logits.device.type not in ("cpu", "cuda") or not _row_layout(logits) \
            or not _aligned(logits):
        return False
    base = logits._base
    if base is not None and (base.is_leaf or base.requires_grad is False):
        return False
    mine = _storage_ptr(logits)
    for t in (logits, base):
        if t is None:
            continue
        for saved in _saved_tensors_of(t.grad_fn):
            if saved.numel() > 0 and _storage_ptr(saved) == mine:
                return False
    return True


def _bump_version(x):
    # An in-place op on an empty view shares x's version counter: autograd will then reject any
    # backward that saved x before we overwrote it. Costs no memory traffic.
    with torch.no_grad():
        x.detach()[:0].zero_()


# Rows per chunk when an fp16/bf16 gradient is scaled in fp32 (bounds the fp32 temporary).
_SCALE_CHUNK_ELEMENTS = 1 << 24


def _scale_grad_(grad, factor):
    """grad *= factor in place, the product formed in fp32 and rounded once to grad's dtype.

    factor: a 0-d fp32 tensor, or [rows, 1] for per-row factors. torch rounds a float scalar to the
    tensor's dtype before a half-precision multiply (65536 is inf in fp16), so fp16/bf16 gradients
    go through an fp32 copy, a chunk of rows at a time."""
    if grad.dtype == torch.float32:
        grad.mul_(factor)
        return
    rows, cols = grad.shape
    step = max(1, _SCALE_CHUNK_ELEMENTS // max(1, cols))
    for r0 in range(0, rows, step):
        blk = grad[r0:r0 + step]
        f = factor[r0:r0 + step] if factor.dim() else factor
        blk.copy_(blk.float().mul_(f))


def _check_grad_scale(grad_scale, red, rows):
    """None, a positive finite float (as fp32), or a floating tensor with one element (or, for 'none',
    one per row), read on the device."""
    if grad_scale is None:
        return None
    if isinstance(grad_scale, torch.Tensor):
        n = grad_scale.numel()
        if not grad_scale.is_floating_point() or not (n == 1 or (red == _lib.Reduction.NONE and n == rows
                                                                  and grad_scale.dim() == 1)):
            raise ValueError("powergrad cross_entropy: grad_scale must be a float, a one-element floating tensor "
                             "or (reduction='none') an [N] one; got a %s tensor of shape %s"
                             % (grad_scale.dtype, tuple(grad_scale.shape)))
        return grad_scale.detach()
    try:
        v = ctypes.c_float(float(grad_scale)).value
    except (TypeError, ValueError, OverflowError):
        raise ValueError("powergrad cross_entropy: grad_scale must be a float or a one-element tensor, not %r"
                         % (grad_scale,)) from None
    if not (0.0 < v < float("inf")):
        raise ValueError("powergrad cross_entropy: grad_scale must be positive and finite in float32, not %r"
                         % (grad_scale,))
    return v


def _forward_upstream(grad_scale, red, rows, device):
    """(pg_upstream_t, keep-alive tensor): the expected incoming gradient, applied in fp32 by the kernel."""
    if grad_scale is None:
        return _lib.Upstream(1.0, None), None
    if not isinstance(grad_scale, torch.Tensor):
        return _lib.Upstream(grad_scale, None), None
    v = grad_scale.to(device=device, dtype=torch.float32).reshape(-1)
    if red == _lib.Reduction.NONE and v.numel() == 1:
        v = v.expand(rows)
    v = _c_tensor(v)
    return _lib.Upstream(1.0, _vp(v)), v


def _row_factor(grad_output, red):
    """The incoming gradient in fp32: 0-d for 'mean'/'sum', [rows, 1] for 'none'."""
    go = grad_output.detach().to(torch.float32)
    return go.reshape(-1, 1) if red == _lib.Reduction.NONE else go.reshape(())


def _target_grad(x, lse, factor, red, label_smoothing, dtype):
    """d(loss)/d(q) for dense targets, as PyTorch: -(1 - eps) * log_softmax(z) * g_r, with g_r the
    incoming gradient (over rows for 'mean': dense targets count every row). One more read of the
    logits; only done when the targets require grad."""
    rows = x.shape[0]
    g = factor / rows if (red == _lib.Reduction.MEAN and rows) else factor
    logp = torch.sub(x.float(), lse.reshape(-1, 1))  # never in place: x may be the caller's logits
    return logp.mul_(g * -(1.0 - label_smoothing)).to(dtype)


class _CrossEntropy(torch.autograd.Function):
    """Forward computes the loss and the gradient (for the expected upstream grad_scale, 1 by default)
    in one sweep; backward scales it by grad_output / grad_scale, in fp32."""

    @staticmethod
    def forward(ctx, logits, target, alpha, ignore_index, label_smoothing, reduction, inplace, grad_scale):
        red = _lib.reduction_of(reduction)
        want_grad = ctx.needs_input_grad[0]
        want_tgrad = target.dim() == 2 and ctx.needs_input_grad[1]
        # The target gradient needs the logits in backward: then they are not written over.
        write_over = want_grad and inplace and not want_tgrad and inplace_is_safe(logits)
        x = _for_c(logits)
        p, t = _problem(x, target, alpha, ignore_index, label_smoothing, reduction)
        rows, cols = x.shape
        _, stream = _device_and_stream(x)
        loss = torch.empty(rows if red == _lib.Reduction.NONE else 1, dtype=torch.float32, device=x.device)
        lse = torch.empty(rows, dtype=torch.float32, device=x.device) if want_tgrad else None
        grad = None
        if want_grad:
            grad = x if write_over else torch.empty((rows, cols), dtype=x.dtype, device=x.device)
        ws, ws_bytes = _workspace(x, reduction) if (want_grad or red != _lib.Reduction.NONE) else (None, 0)
        out = _lib.XentOutputs(loss=_vp(loss), lse=_vp(lse), lse_alpha=None, dlogits=_vp(grad),
                               ld_dlogits=_ld(grad) if grad is not None else 0)
        up, scale_keep = _forward_upstream(grad_scale if want_grad else None, red, rows, x.device)
        _call(x.device, "pg_xent_forward_backward", ctypes.byref(p), ctypes.byref(up), ctypes.byref(out), _vp(ws),
                  ws_bytes, stream)
        if write_over:
            _bump_version(logits)
        ctx.grad = grad
        ctx.had_grad = want_grad
        ctx.grad_scale = grad_scale if want_grad else None
        ctx.reduction = red
        ctx.consumed = False
        ctx.target_info = (label_smoothing, target.dtype) if want_tgrad else None
        if want_tgrad:
            ctx.save_for_backward(x, lse)
        # The loss stays float32 for fp16/bf16 logits too (as F.cross_entropy under autocast): a loss
        # scale such as 65536 times an fp16 loss overflows.
        return loss if red == _lib.Reduction.NONE else loss.reshape(())

    @staticmethod
    def backward(ctx, grad_output):
        _no_double_backward("cross_entropy")
        grad = ctx.grad
        if ctx.consumed and ctx.had_grad:
            raise RuntimeError("powergrad cross_entropy: backward ran twice through the same graph; the "
                               "gradient buffer was scaled in place the first time (call the loss again "
                               "instead of retain_graph=True)")
        factor = _row_factor(grad_output, ctx.reduction)
        dlogits = None
        if grad is not None:
            ctx.grad = None
            gs = ctx.grad_scale
            if gs is None:
                ratio = factor
            elif isinstance(gs, torch.Tensor):
                g = gs.to(device=factor.device, dtype=torch.float32)
                ratio = factor / (g.reshape(()) if g.numel() == 1 else g.reshape(-1, 1))  # [N] (N may be 0)
            else:
                ratio = factor / gs
            _scale_grad_(grad, ratio)  # exact when grad_output equals grad_scale (ratio 1)
            dlogits = grad
        ctx.consumed = True
        dtarget = None
        if ctx.target_info is not None:
            x, lse = ctx.saved_tensors
            dtarget = _target_grad(x, lse, factor, ctx.reduction, *ctx.target_info)
        return dlogits, dtarget, None, None, None, None, None, None


class _CrossEntropyTwoPass(torch.autograd.Function):
    """Forward: loss and the per-row lse_alpha (one read). Backward: pg_xent_backward with the saved
    lse_alpha and the upstream read from device memory (one read, one write; exact for any upstream)."""

    @staticmethod
    def forward(ctx, logits, target, alpha, ignore_index, label_smoothing, reduction):
        red = _lib.reduction_of(reduction)
        x = _for_c(logits)
        p, t = _problem(x, target, alpha, ignore_index, label_smoothing, reduction)
        rows = x.shape[0]
        _, stream = _device_and_stream(x)
        loss = torch.empty(rows if red == _lib.Reduction.NONE else 1, dtype=torch.float32, device=x.device)
        want_grad = ctx.needs_input_grad[0]
        want_tgrad = target.dim() == 2 and ctx.needs_input_grad[1]
        lse_alpha = torch.empty(rows, dtype=torch.float32, device=x.device) if want_grad else None
        lse = torch.empty(rows, dtype=torch.float32, device=x.device) if want_tgrad else None
        ws, ws_bytes = _workspace(x, reduction)
        out = _lib.XentOutputs(loss=_vp(loss), lse=_vp(lse), lse_alpha=_vp(lse_alpha), dlogits=None, ld_dlogits=0)
        up = _lib.Upstream(1.0, None)
        _call(x.device, "pg_xent_forward_backward", ctypes.byref(p), ctypes.byref(up), ctypes.byref(out), _vp(ws),
                  ws_bytes, stream)
        if want_grad or want_tgrad:
            ctx.save_for_backward(x, t, lse_alpha, lse)
        ctx.args = (alpha, ignore_index, label_smoothing, reduction)
        ctx.target_dtype = target.dtype
        return loss if red == _lib.Reduction.NONE else loss.reshape(())

    @staticmethod
    def backward(ctx, grad_output):
        _no_double_backward("cross_entropy")
        x, t, lse_alpha, lse = ctx.saved_tensors
        alpha, ignore_index, label_smoothing, reduction = ctx.args
        red = _lib.reduction_of(reduction)
        grad = None
        if lse_alpha is not None:
            p, t = _problem(x, t, alpha, ignore_index, label_smoothing, reduction)
            _, stream = _device_and_stream(x)
            go = _c_tensor(grad_output.detach().to(torch.float32).reshape(-1))
            up = _lib.Upstream(1.0, _vp(go))
            grad = torch.empty(x.shape, dtype=x.dtype, device=x.device)
            ws, ws_bytes = _workspace(x, reduction)
            _call(x.device, "pg_xent_backward", ctypes.byref(p), ctypes.byref(up), _vp(lse_alpha), _vp(grad),
                      grad.shape[1], _vp(ws), ws_bytes, stream)
        dtarget = None
        if lse is not None:
            dtarget = _target_grad(x, lse, _row_factor(grad_output, red), red, label_smoothing, ctx.target_dtype)
        return grad, dtarget, None, None, None, None


def cross_entropy(logits, target, alpha=1.0, ignore_index=-100, label_smoothing=0.0, reduction="mean",
                  inplace=False, fused=True, grad_scale=None):
    """PGT softmax cross-entropy: F.cross_entropy's value, with the gradient softmax(alpha z) - q.

    ``logits``: ``[N, C]`` float32/float16/bfloat16, on the CPU or a CUDA device (reshape ``[B, T, V]``
    to ``[B*T, V]``). ``target``: ``[N]`` class indices (int64/int32; ``ignore_index`` rows add nothing
    and are not counted by 'mean') or ``[N, C]`` probabilities. ``alpha`` = 1 is ordinary training;
    the paper uses 0.05-0.3. ``label_smoothing`` follows PyTorch. The loss is float32 for every logits
    dtype (as F.cross_entropy under autocast; 0-d for 'mean'/'sum', ``[N]`` for 'none'), so that a
    mixed-precision loss scale does not overflow it.

    Like Liger-Kernel, the gradient is computed during the forward pass (one read of the logits, one
    write) into a buffer, and backward multiplies it by the incoming gradient (a scalar for 'mean' and
    'sum', per row for 'none'), in fp32, with one rounding to the logits' dtype; no host
    synchronisation. Differences from PyTorch: 'mean' over zero valid rows returns 0 (PyTorch: NaN);
    out-of-range class indices raise PowerGradError on the CPU and give a NaN loss/gradient row on
    CUDA; backward may run only once per forward; double backward (``create_graph=True``) raises.

    ``grad_scale`` (fused form): the incoming gradient backward is expected to receive, e.g. the
    mixed-precision loss scale (a float, or a one-element float tensor such as GradScaler's scale on
    the device, read by the kernel without synchronisation; for 'none' also an ``[N]`` tensor, the
    expected per-row incoming gradient). The kernel applies it in fp32 before rounding the stored
    gradient, and backward multiplies by ``grad_output / grad_scale`` in fp32 (exact when they agree).
    Use it with fp16 logits and a loss scale: without it the stored gradient ``(p' - q) / N`` falls
    below fp16's range for small probabilities and those elements are lost before the scale is applied
    (bf16 has fp32's range). Elements that overflow the dtype at ``grad_scale`` stay infinite, so do
    not pass more than the incoming gradient will be. ``fused=False`` does not need it.

    Probability targets that require grad get PyTorch's gradient, ``-(1 - label_smoothing) *
    log_softmax(logits)`` times the incoming gradient (over N for 'mean'); that is one more read of
    the logits in backward, which are then kept (and never written over by ``inplace``).

    ``inplace=True`` writes the gradient over ``logits`` (saving a logits-sized buffer) when that is
    safe, and otherwise silently uses a buffer: see :func:`inplace_is_safe` for the rule. Do not read
    ``logits`` after an in-place call.

    ``fused=False`` is the two-pass form (docs/design.md §6): forward reads the logits once for the loss and
    a per-row ``lse_alpha`` and keeps the logits; backward reads them once more and writes the
    gradient with the incoming gradient applied exactly (read from device memory). It holds the logits
    instead of a gradient buffer until backward, may run backward more than once, and ignores
    ``inplace`` and ``grad_scale``.

    Inputs the library cannot read as they are (non-contiguous, stride-0 / expanded, or starting at a
    byte offset that is not a multiple of the element size, e.g. from ``torch.frombuffer``) are
    copied first. Integer arguments that do not fit int64_t (``ignore_index``) raise
    ``powergrad._lib.ArgumentRangeError`` (an OverflowError and a ValueError) naming the argument.
    """
    if logits.dim() != 2:
        raise ValueError("powergrad cross_entropy: logits must be 2-D [N, C], got %s" % (tuple(logits.shape),))
    _lib.reduction_of(reduction)
    ignore_index = _lib.check_int("ignore_index", ignore_index)
    gs = _check_grad_scale(grad_scale, _lib.reduction_of(reduction), logits.shape[0])
    if not fused:
        return _CrossEntropyTwoPass.apply(logits, target, float(alpha), ignore_index, float(label_smoothing),
                                          reduction)
    return _CrossEntropy.apply(logits, target, float(alpha), ignore_index, float(label_smoothing), reduction,
                               bool(inplace), gs)


def pgt_hook(logits, target, alpha, scale=1.0, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """Register a tensor hook on ``logits`` that turns its gradient s_r (p - q) into s_r (p' - q).

    A drop-in for an existing ``F.cross_entropy(logits, target, ...)`` loss (pass the same
    ``ignore_index``, ``label_smoothing`` and ``reduction``)::

        logits = model(x)
        handle = pgt_hook(logits, target, alpha=0.3, scale=loss_scale)
        loss = F.cross_entropy(logits, target)
        (loss * loss_scale).backward()

    ``scale`` is everything the loss is multiplied by before backward (1, a mixed-precision loss scale,
    a gradient-accumulation factor): a float, or a tensor read when the hook runs (e.g. GradScaler's
    device scale, so no synchronisation). For 'none', ``scale`` is the per-row upstream (a float or an
    ``[N]`` tensor). The per-row scale the hook gives the library is s_r = scale / n_valid for 'mean'
    (n_valid = rows whose target is not ``ignore_index``, counted on the device), scale for 'sum', and
    scale[r] for 'none'.

    Why the scale matters (docs/design.md §2.2): the hook has to recover p from the gradient it receives,
    p = G / s_r + q. The authors' published hook computes ``grad / B + q`` — it *divides* by the batch
    size B, while a mean-reduced gradient is (p - q) / B and must be *multiplied* by B (and divided by the
    loss scale). Their version is exact only when the incoming gradient carries an extra factor B^2,
    which held by coincidence in their setting: the mixed-precision initial loss scale 65536 = 256^2,
    their per-GPU batch squared. This hook takes the scale explicitly instead.

    The hook form is less precise than :func:`cross_entropy` (probabilities below the gradient's
    resolution are lost, which matters in fp16/bf16); prefer the logits form where you can. The hook
    raises under ``create_graph=True`` (its output has no second-order graph). Returns the hook's
    RemovableHandle.
    """
    if logits.dim() != 2:
        raise ValueError("powergrad pgt_hook: logits must be 2-D [N, C]")
    red = _lib.reduction_of(reduction)
    ignore_index = _lib.check_int("ignore_index", ignore_index)
    target = target.detach()
    rows = logits.shape[0]

    def row_scale_tensor(device):
        s = scale
        s = s.detach().to(device=device, dtype=torch.float32) if isinstance(s, torch.Tensor) else \
            torch.tensor(float(s), dtype=torch.float32, device=device)
        if red == _lib.Reduction.MEAN:
            if target.dim() == 1:
                n_valid = (target != ignore_index).sum().to(torch.float32)
            else:
                n_valid = torch.tensor(float(rows), device=device)
            s = s / n_valid.clamp(min=1)
        return _c_tensor(s.reshape(-1).expand(rows) if s.numel() == 1 else s.reshape(-1))

    def hook(grad):
        _no_double_backward("pgt_hook")
        g = _for_c(grad)
        rs = row_scale_tensor(g.device)
        if rs.shape[0] != rows:
            raise ValueError("powergrad pgt_hook: scale has %d values for %d rows" % (rs.shape[0], rows))
        p, t = _problem(g, target, alpha, ignore_index, label_smoothing, "none")
        _, stream = _device_and_stream(g)
        out = torch.empty(g.shape, dtype=g.dtype, device=g.device)
        _call(out.device, "pg_xent_hook", ctypes.byref(p), 1.0, _vp(rs), _vp(out), out.shape[1], stream)
        return out

    return logits.register_hook(hook)


# ---------------------------------------------------------------------------------------------
# Gradient-bucket transforms (docs/design.md §2.4): power (PGT / GradPower), clip_norm, AGC.
# ---------------------------------------------------------------------------------------------

_PLAN_CACHE = collections.OrderedDict()
_PLAN_CACHE_SIZE = 64


class _TorchBucket:
    """A BucketPlan over torch tensors, its device workspace (uploaded once, on the stream that is
    current when it is built; the cache keys buckets by that stream, so the workspace is only ever
    used, and freed by the caching allocator, in that stream's order) and a flags tensor."""

    def __init__(self, entries, device, dtype, units, param_dtype):
        from .bucket import BucketPlan
        dev, stream = _device_and_stream(torch.empty(0, device=device))
        self.plan = BucketPlan(entries, _DTYPES[dtype], dev, units,
                               None if param_dtype is None else _DTYPES[param_dtype])
        self.device = device
        self._stream = stream
        self.flags = torch.zeros(1, dtype=torch.int32, device=device)
        self.workspace = None
        if self.plan.workspace_bytes:
            self.workspace = torch.empty(self.plan.workspace_bytes, dtype=torch.uint8, device=device)
        self.plan.upload(_vp(self.workspace), stream)

    def stream(self):
        return self._stream


def _call(device, function, *args):
    """_lib.call with `device` current (CUDA launches go to the current device's stream)."""
    with _on_device(device):
        _lib.call(function, *args)


def _on_device(device):
    """Context that makes `device` current for CUDA launches (kernels go to that device's stream)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def _bucket_for(grads, params, units):
    """The cached _TorchBucket of these gradient tensors (rebuilt when any address or size changes)."""
    g0 = grads[0]
    for g in grads:
        if not g.is_contiguous():
            raise ValueError("powergrad: bucket transforms need contiguous gradients")
        if g.dtype not in _DTYPES:
            raise TypeError("powergrad: gradients must be float32, float16 or bfloat16, not %s" % g.dtype)
    rows = [0] * len(grads)
    param_dtype = None
    if params is not None:
        rows = [p.shape[0] if p.dim() > 1 else 0 for p in params]
        param_dtype = params[0].dtype if params else None
        for p in params:
            if not p.is_contiguous():
                raise ValueError("powergrad: AGC needs contiguous parameters")
    stream = torch.cuda.current_stream(g0.device).cuda_stream if g0.device.type == "cuda" else 0
    key = (int(units), str(g0.device), stream, g0.dtype, param_dtype,
           tuple((g.data_ptr(), g.numel(), r, params[i].data_ptr() if params is not None else 0)
                 for i, (g, r) in enumerate(zip(grads, rows))))
    b = _PLAN_CACHE.get(key)
    if b is None:
        entries = [(g.data_ptr(), g.numel()) if params is None else
                   (g.data_ptr(), g.numel(), params[i].data_ptr(), rows[i]) for i, g in enumerate(grads)]
        with _on_device(g0.device):
            b = _TorchBucket(entries, g0.device, g0.dtype, units, param_dtype)
        _PLAN_CACHE[key] = b
        while len(_PLAN_CACHE) > _PLAN_CACHE_SIZE:
            _PLAN_CACHE.popitem(last=False)
    else:
        _PLAN_CACHE.move_to_end(key)
    return b


def _grouped(parameters, with_params=False):
    """[(grads, params or None)] grouped by (device, grad dtype, param dtype), in the given order."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    groups = collections.OrderedDict()
    for p in parameters:
        if p.grad is None:
            continue
        key = (str(p.grad.device), p.grad.dtype, p.dtype if with_params else None)
        gs, ps = groups.setdefault(key, ([], []))
        gs.append(p.grad)
        ps.append(p.detach())
    return [(gs, ps if with_params else None) for gs, ps in groups.values()]


def power_grad_(parameters, beta, preserve="l1", scope="tensor"):
    """In place: g <- K sign(g)|g|^beta on every parameter's gradient (the PowerGrad / GradPower map).

    preserve: 'l1' (the PGT map on |g| / sum|g|), 'l2' or None (plain sign-power); scope: 'tensor' (each
    gradient keeps its own norm) or 'bucket' (the norm over all of them; one device and dtype only).
    """
    from .bucket import scope_of
    groups = _grouped(parameters)
    if scope_of(scope) == _lib.BucketScope.BUCKET and len(groups) > 1:
        raise ValueError("powergrad: scope='bucket' needs every gradient on one device with one dtype")
    for grads, _ in groups:
        b = _bucket_for(grads, None, _lib.BucketUnits.TENSOR)
        with _on_device(b.device):
            b.plan.power(beta, preserve, scope, _vp(b.workspace), _vp(b.flags), b.stream())


def clip_grad_norm_(parameters, max_norm, scope="bucket", group=None):
    """In place, as torch.nn.utils.clip_grad_norm_ (L2): returns the total norm (scope 'bucket'), or a
    1-D tensor of per-gradient norms (scope 'tensor', each gradient clipped on its own; in parameter
    order within each (device, dtype) group, groups in order of first appearance).

    One device and dtype: one fused op (3 kernels, no host sync). Mixed groups: per-group norms from
    the library, then the coefficient applied with torch. ``group`` (a torch.distributed process
    group, scope 'bucket' only): the parameters are this rank's share of a model sharded across the
    group (e.g. tensor-parallel or ZeRO shards); the squared norms are summed across the group with
    one all_reduce of one float, and every rank clips with the global norm.
    """
    from .bucket import scope_of
    sc = scope_of(scope)
    groups = _grouped(parameters)
    if not groups and group is None:
        return torch.tensor(0.0)
    if group is not None and sc == _lib.BucketScope.TENSOR:
        raise ValueError("powergrad: clip_grad_norm_ with a process group needs scope='bucket'")
    if sc == _lib.BucketScope.TENSOR or (len(groups) == 1 and group is None):
        out = []
        for grads, _ in groups:
            b = _bucket_for(grads, None, _lib.BucketUnits.TENSOR)
            norms = torch.empty(b.plan.groups(sc), dtype=torch.float32, device=b.device)
            with _on_device(b.device):
                b.plan.clip_norm(max_norm, sc, _vp(norms), _vp(b.workspace), _vp(b.flags), b.stream())
            out.append(norms)
        return out[0][0] if sc == _lib.BucketScope.BUCKET else torch.cat([o.to(out[0].device) for o in out])
    # Several groups, one global norm: per-group norms without clipping (coefficient exactly 1).
    sq = []
    for grads, _ in groups:
        b = _bucket_for(grads, None, _lib.BucketUnits.TENSOR)
        norms = torch.empty(1, dtype=torch.float32, device=b.device)
        with _on_device(b.device):
            b.plan.clip_norm(3.0e38, sc, _vp(norms), _vp(b.workspace), _vp(b.flags), b.stream())
        sq.append(norms.to(groups[0][0][0].device).square())
    if group is not None and not sq:  # this rank holds no gradient: it still takes part in the reduction
        import torch.distributed as dist
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else "cpu"
        sq = [torch.zeros(1, dtype=torch.float32, device=dev)]
    total_sq = torch.cat(sq).sum()
    if group is not None:
        import torch.distributed as dist
        dist.all_reduce(total_sq, op=dist.ReduceOp.SUM, group=group)
    total = total_sq.sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for grads, _ in groups:
        c = coef.to(grads[0].device)
        for g in grads:
            g.mul_(c)
    return total


def adaptive_clip_grad_(parameters, clip_factor=0.01, eps=1e-3, beta=1.0, preserve=None):
    """In place, timm's adaptive_clip_grad (units along dim 0, whole tensor when ndim <= 1), then,
    when beta != 1 or preserve is set, the power map per unit in the same pass."""
    for grads, params in _grouped(parameters, with_params=True):
        b = _bucket_for(grads, params, _lib.BucketUnits.ROWS)
        with _on_device(b.device):
            b.plan.agc(clip_factor, eps, beta, preserve, _vp(b.workspace), _vp(b.flags), b.stream())


class PGTCommHookState:
    """State of :func:`pgt_comm_hook`: the process group and the transform applied to every averaged
    DDP bucket (its flat buffer, segment by segment as the bucket's gradients lie in it).

    transform: None (plain averaging), 'power' (beta, preserve, scope), 'clip_norm' (max_norm, scope;
    scope 'bucket' = the norm of the DDP bucket) or 'agc' (clip, eps, beta, preserve).
    """

    def __init__(self, process_group=None, transform="power", **kwargs):
        if transform not in (None, "power", "clip_norm", "agc"):
            raise ValueError("powergrad: transform must be None, 'power', 'clip_norm' or 'agc'")
        self.process_group = process_group
        self.transform = transform
        self.kwargs = kwargs
        self.last_norms = {}

    def apply(self, flat, bucket):
        if self.transform is None:
            return
        views = bucket.gradients()
        elem = flat.element_size()
        base = flat.data_ptr()
        offsets = [(v.data_ptr() - base) // elem for v in views]
        ends = [o + v.numel() for o, v in zip(offsets, views)]
        if any(e > o2 for e, o2 in zip(ends, offsets[1:])) or any(o < 0 for o in offsets):
            raise ValueError("powergrad: the bucket's gradients are not laid out in order in its buffer")
        grads = [flat[o:o + v.numel()] for o, v in zip(offsets, views)]
        k = dict(self.kwargs)
        if self.transform == "agc":
            params = [p.detach() for p in bucket.parameters()]
            if any(p.dtype != flat.dtype for p in params):
                raise TypeError("powergrad: AGC in the DDP hook needs parameters of the gradients' dtype")
            b = _bucket_for(grads, params, _lib.BucketUnits.ROWS)
            with _on_device(b.device):
                b.plan.agc(k.get("clip", 0.01), k.get("eps", 1e-3), k.get("beta", 1.0), k.get("preserve"),
                           _vp(b.workspace), _vp(b.flags), b.stream())
            return
        b = _bucket_for(grads, None, _lib.BucketUnits.TENSOR)
        with _on_device(b.device):
            if self.transform == "power":
                b.plan.power(k.get("beta", 0.5), k.get("preserve", "l1"), k.get("scope", "tensor"),
                             _vp(b.workspace), _vp(b.flags), b.stream())
            else:
                sc = k.get("scope", "bucket")
                norms = torch.empty(b.plan.groups(sc), dtype=torch.float32, device=flat.device)
                b.plan.clip_norm(k["max_norm"], sc, _vp(norms), _vp(b.workspace), _vp(b.flags), b.stream())
                self.last_norms[bucket.index()] = norms


def pgt_comm_hook(state, bucket):
    """DDP communication hook: all-reduce (average) the bucket through torch.distributed on
    state.process_group, then apply state's transform to the averaged flat bucket.

        model.register_comm_hook(PGTCommHookState(transform="clip_norm", max_norm=1.0), pgt_comm_hook)
    """
    import torch.distributed as dist
    group = state.process_group if state.process_group is not None else dist.group.WORLD
    buf = bucket.buffer()
    buf.div_(dist.get_world_size(group))
    # Wait for the all-reduce here and transform on the caller's thread (with NCCL the wait only
    # orders the current stream after the collective; the host does not block). Transforming in a
    # Future.then callback instead runs the library call on a communication thread, which hung
    # intermittently with gloo and torch 1.13.
    dist.all_reduce(buf, group=group, async_op=True).wait()
    state.apply(buf, bucket)
    fut = torch.futures.Future()
    fut.set_result(buf)
    return fut


# ---------------------------------------------------------------------------------------------
# Vocab-parallel (tensor-parallel) PGT cross-entropy: the split form of docs/design.md §2.3 on
# torch.distributed.
# ---------------------------------------------------------------------------------------------

def _f32_bits(v):
    import struct
    return struct.unpack("<i", struct.pack("<f", float(v)))[0]


def _shard_metadata(rows, vocab_start, width, vocab_size, alpha, ignore_index, label_smoothing, reduction):
    """What every rank must agree on (and its own shard), as integers."""
    return [int(rows), int(vocab_start), int(width), int(vocab_size), _f32_bits(alpha), int(ignore_index),
            _f32_bits(label_smoothing), int(_lib.reduction_of(reduction))]


def _check_shards(metas):
    """The same problem on every rank, and shards that tile [0, vocab_size): else a message (every
    rank computes the same one from the same gathered metadata, so all raise together)."""
    first = metas[0]
    for r, m in enumerate(metas):
        if m[0] != first[0]:
            return "rank %d has %d rows, rank 0 has %d" % (r, m[0], first[0])
        if m[3] != first[3]:
            return "rank %d says vocab_size %d, rank 0 says %d" % (r, m[3], first[3])
        if m[4:] != first[4:]:
            return "rank %d uses other alpha / ignore_index / label_smoothing / reduction than rank 0" % r
        if m[1] < 0 or m[2] < 0:
            return "rank %d has a negative vocab_start (%d) or width (%d)" % (r, m[1], m[2])
    spans = sorted((m[1], m[1] + m[2], r) for r, m in enumerate(metas) if m[2] > 0)
    pos = 0
    for a, b, r in spans:
        if a != pos:
            return ("vocab shards do not tile [0, %d): rank %d starts at %d where %d was expected"
                    % (first[3], r, a, pos))
        pos = b
    if pos != first[3]:
        return "vocab shards cover [0, %d) of vocab_size %d" % (pos, first[3])
    return None


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, vocab_start, vocab_size, alpha, ignore_index, label_smoothing, reduction,
                group, check):
        import torch.distributed as dist
        red = _lib.reduction_of(reduction)
        world = dist.get_world_size(group)
        x = logits if (_row_layout(logits) and logits.shape[1] > 0 and _aligned(logits)) else _c_tensor(logits)
        rows, width = x.shape
        dev = x.device
        if check:
            meta = torch.tensor(_shard_metadata(rows, vocab_start, width, vocab_size, alpha, ignore_index,
                                                label_smoothing, reduction), dtype=torch.int64, device=dev)
            metas = [torch.empty_like(meta) for _ in range(world)]
            dist.all_gather(metas, meta, group=group)
            err = _check_shards([m.tolist() for m in metas])
            if err:
                raise ValueError("powergrad vocab_parallel_cross_entropy: " + err)
        # An empty shard stands in as one phantom column: its statistics are the merge identity and
        # the gradient it writes is discarded.
        empty = width == 0
        xs = torch.zeros((rows, 1), dtype=x.dtype, device=dev) if empty else x
        p, t = _problem(xs, target, alpha, ignore_index, label_smoothing, reduction)
        p.col_offset = 0 if empty else int(vocab_start)
        p.total_cols = int(vocab_size)
        _, stream = _device_and_stream(xs)
        # pg_row_stats_t: 32 bytes, 6 floats then an int64 (docs/design.md §2.3).
        stats = torch.empty((rows, 8), dtype=torch.float32, device=dev)
        if empty:
            stats[:, 0] = float("-inf")
            stats[:, 1:6] = 0.0
            stats.view(torch.int64)[:, 3] = 2 ** 63 - 1  # argmax of no column: the merge identity
        elif rows:
            _call(dev, "pg_xent_shard_stats", ctypes.byref(p), _vp(stats), stream)
        # The one collective of the op: 32 bytes per row from every rank.
        parts = torch.empty((world, rows, 8), dtype=torch.float32, device=dev)
        dist.all_gather(list(parts.unbind(0)), stats, group=group)
        merged = torch.empty((rows, 8), dtype=torch.float32, device=dev)
        dev_kind = _lib.Device.CUDA if dev.type == "cuda" else _lib.Device.HOST
        if rows:
            _call(dev, "pg_xent_merge_stats", int(dev_kind), _vp(parts), world, rows, ctypes.c_float(alpha),
                      _vp(merged), stream)
        loss = torch.empty(rows if red == _lib.Reduction.NONE else 1, dtype=torch.float32, device=dev)
        grad = torch.empty(xs.shape, dtype=x.dtype, device=dev)
        ws, ws_bytes = _workspace(xs, reduction)
        out = _lib.XentOutputs(loss=_vp(loss), lse=None, lse_alpha=None, dlogits=_vp(grad), ld_dlogits=xs.shape[1])
        up = _lib.Upstream(1.0, None)
        _call(dev, "pg_xent_shard_apply", ctypes.byref(p), _vp(merged), ctypes.byref(up), ctypes.byref(out),
                  _vp(ws), ws_bytes, stream)
        ctx.grad = grad[:, :0] if empty else grad
        ctx.reduction = red
        return loss if red == _lib.Reduction.NONE else loss.reshape(())  # float32, as cross_entropy

    @staticmethod
    def backward(ctx, grad_output):
        _no_double_backward("vocab_parallel_cross_entropy")
        grad = ctx.grad
        ctx.grad = None
        go = grad_output.to(torch.float32)
        scaled = grad.float() * (go.reshape(-1, 1) if ctx.reduction == _lib.Reduction.NONE else go.reshape(()))
        return (scaled.to(grad.dtype),) + (None,) * 9


def vocab_parallel_cross_entropy(logits, target, vocab_start, vocab_size, alpha=1.0, ignore_index=-100,
                                 label_smoothing=0.0, reduction="mean", group=None, check=True):
    """PGT cross-entropy over a vocabulary sharded by columns across the ranks of ``group``
    (tensor parallelism; docs/design.md §2.3).

    Each rank passes its shard ``logits`` ``[N, width]`` (columns ``[vocab_start, vocab_start + width)``
    of the full ``[N, vocab_size]`` logits; ``width`` may be 0 and may differ between ranks) and the
    same global class ``target`` ``[N]``. The op computes this shard's partial row statistics (max, two
    exponential sums, target term), exchanges them with ONE ``all_gather`` on ``group`` (32 bytes per
    row per rank, whatever the vocabulary size), merges them in rank order (the same bits on every
    rank) and writes the shard's gradient and the loss; every rank returns the same loss, equal to the
    unsharded :func:`cross_entropy` to rounding (float32, as there). Backward scales the gradient by
    the incoming one, in fp32.

    ``check=True`` first all-gathers eight integers per rank (and reads them on the host: one
    synchronisation; pass ``check=False`` once a setup is known good) and raises ``ValueError`` on every rank
    (never hangs) when ranks disagree on rows, vocab_size, alpha, ignore_index, label smoothing or
    reduction, or when the shards do not tile ``[0, vocab_size)``. Class-index targets only.
    """
    if logits.dim() != 2:
        raise ValueError("powergrad vocab_parallel_cross_entropy: logits must be 2-D [N, width]")
    if target.dim() != 1:
        raise ValueError("powergrad vocab_parallel_cross_entropy: target must be [N] class indices")
    _lib.reduction_of(reduction)
    # Integers that do not fit int64_t raise here, before any collective (ctypes would wrap them).
    vocab_start = _lib.check_int("vocab_start", vocab_start)
    vocab_size = _lib.check_int("vocab_size", vocab_size)
    ignore_index = _lib.check_int("ignore_index", ignore_index)
    return _VocabParallelCrossEntropy.apply(logits, target, vocab_start, vocab_size, float(alpha),
                                            ignore_index, float(label_smoothing), reduction, group,
                                            bool(check))
from ._torch_linear import linear_cross_entropy, LinearCrossEntropyLoss  # noqa: E402,F401
