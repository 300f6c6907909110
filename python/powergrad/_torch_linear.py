"""PyTorch integration of the PGT linear cross-entropy (docs/design.md §2.6, docs/python.md):
``linear_cross_entropy(hidden, weight, target, bias=None, alpha=...)`` is
``F.cross_entropy(F.linear(hidden, weight, bias), target)`` with the PGT gradient, computed in row
chunks so that the logits [rows x vocab] never exist. Re-exported by ``powergrad.torch``.
"""

import ctypes

import torch

from . import _lib
from . import _lib_linear

__all__ = ["linear_cross_entropy", "LinearCrossEntropyLoss"]

_DTYPES = {torch.float32: _lib.DType.FLOAT32, torch.float16: _lib.DType.FLOAT16,
           torch.bfloat16: _lib.DType.BFLOAT16}

# Bytes of workspace per call beyond what one row needs, when the caller names no budget: the
# chunk's fp32 logits live there (256 MiB: 2048 rows of a 32000-word vocabulary).
DEFAULT_CHUNK_BUDGET = 256 << 20

# Distinct aligned stand-ins for the data pointers of empty tensors (torch gives them address 0;
# the library rejects null required pointers whatever the batch size and reads nothing of them).
_EMPTY_STANDINS = [ctypes.create_string_buffer(48) for _ in range(16)]


def _vp(t, slot=0):
    if t is None:
        return None
    if t.numel() == 0 and t.data_ptr() == 0:
        return ctypes.c_void_p((ctypes.addressof(_EMPTY_STANDINS[slot % len(_EMPTY_STANDINS)]) + 15) // 16 * 16)
    return ctypes.c_void_p(t.data_ptr())


def _c2d(t):
    """t (2-D) contiguous and aligned to its element size (a copy only when needed)."""
    t = t.contiguous()
    return t if t.data_ptr() % t.element_size() == 0 else t.clone()


def _device_and_stream(x):
    if x.device.type == "cpu":
        return _lib.Device.HOST, None, None
    if x.device.type == "cuda":
        return (_lib.Device.CUDA, ctypes.c_void_p(torch.cuda.current_stream(x.device).cuda_stream),
                ctypes.c_void_p(torch.cuda.current_blas_handle()))
    raise TypeError("powergrad: tensors must be on the CPU or a CUDA device, not %s" % x.device)


def _no_double_backward():
    if torch.is_grad_enabled():
        raise RuntimeError("powergrad linear_cross_entropy: create_graph=True (double backward) is not "
                           "supported: the PGT gradient is computed by the library")


class _Call:
    """One validated problem: the C structs and the tensors they point at."""

    def __init__(self, h, weight, bias, target, alpha, ignore_index, label_smoothing, reduction):
        self.h, self.weight, self.bias = h, weight, bias
        rows, hidden_dim = h.shape
        vocab = weight.shape[0]
        if target.dim() == 1:
            t = target if target.dtype in (torch.int32, torch.int64) else target.long()
            t = _c2d(t)
            kind = _lib.TargetKind.INDEX_INT32 if t.dtype == torch.int32 else _lib.TargetKind.INDEX_INT64
        else:
            t = _c2d(target.detach().to(h.dtype))
            kind = _lib.TargetKind.DENSE
        self.target = t
        self.device, self.stream, self.blas = _device_and_stream(h)
        self.red = _lib.reduction_of(reduction)
        self.problem = _lib_linear.LinearXentProblem(
            device=self.device, dtype=_DTYPES[h.dtype], hidden=_vp(h, 0), rows=rows, hidden_dim=hidden_dim,
            ld_hidden=hidden_dim, weight=_vp(weight, 1), vocab=vocab, weight_dim=weight.shape[1],
            ld_weight=hidden_dim, bias=_vp(bias, 2), bias_len=0 if bias is None else bias.shape[0],
            target_kind=kind, targets=_vp(t, 3), target_ld=vocab if kind == _lib.TargetKind.DENSE else 0,
            ignore_index=_lib.check_int("ignore_index", ignore_index), alpha=float(alpha),
            label_smoothing=float(label_smoothing), reduction=self.red, bad_target_count=None)

    def run(self, want_loss, want_dh, want_dw, want_db, upstream_values=None, chunk_rows=None,
            workspace_bytes=None):
        """(loss, dh, dw (fp32), db (fp32)) for upstream values read from memory (None: 1)."""
        h, dev = self.h, self.h.device
        rows = h.shape[0]
        loss = (torch.empty(rows if self.red == _lib.Reduction.NONE else 1, dtype=torch.float32, device=dev)
                if want_loss else None)
        dh = torch.empty_like(h) if want_dh else None
        dw = torch.empty(self.weight.shape, dtype=torch.float32, device=dev) if want_dw else None
        db = torch.empty(self.bias.shape, dtype=torch.float32, device=dev) if want_db else None
        out = _lib_linear.LinearXentOutputs(
            loss=_vp(loss, 4), dhidden=_vp(dh, 5), ld_dhidden=h.shape[1], dweight=_vp(dw, 6),
            ld_dweight=h.shape[1], dweight_type=_lib_linear.GradType.FLOAT32, accumulate_dweight=0,
            dbias=_vp(db, 7), dbias_type=_lib_linear.GradType.FLOAT32, accumulate_dbias=0)
        if chunk_rows is None:
            budget = DEFAULT_CHUNK_BUDGET if workspace_bytes is None else int(workspace_bytes)
            if workspace_bytes is None:
                budget += _lib_linear.workspace_bytes(self.problem, out, 1)
            chunk_rows = _lib_linear.chunk_rows(self.problem, out, budget)
        n = _lib_linear.workspace_bytes(self.problem, out, chunk_rows)
        ws = torch.empty(n + 256, dtype=torch.uint8, device=dev)
        base = ws.data_ptr()
        ws_ptr = ctypes.c_void_p((base + 255) // 256 * 256)
        values = None
        if upstream_values is not None:
            values = upstream_values.detach().to(device=dev, dtype=torch.float32).reshape(-1).contiguous()
        up = _lib.Upstream(scale=1.0, values=_vp(values, 8))
        ctx = torch.cuda.device(dev) if dev.type == "cuda" else _nullcontext()
        with ctx:
            _lib_linear.call("pg_linear_xent_forward_backward", ctypes.byref(self.problem), ctypes.byref(up),
                             ctypes.byref(out), ws_ptr, n, chunk_rows, self.blas, self.stream)
        return loss, dh, dw, db


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


class _LinearCrossEntropy(torch.autograd.Function):
    """Fused (mean / sum): forward computes the loss and every gradient for an upstream of 1; backward
    multiplies them by grad_output on the device (exact when it is 1). Two-pass (none, or
    fused=False): forward computes the loss only; backward runs the op again with the upstream values
    read from grad_output's memory (exact for every upstream)."""

    @staticmethod
    def forward(ctx, h, weight, bias, target, alpha, ignore_index, label_smoothing, reduction, fused, chunk_rows,
                workspace_bytes):
        call = _Call(h, weight, bias, target, alpha, ignore_index, label_smoothing, reduction)
        want_dh, want_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        want_db = bias is not None and ctx.needs_input_grad[2]
        any_grad = want_dh or want_dw or want_db
        fused = call.red != _lib.Reduction.NONE and (fused is None or fused)
        ctx.fused = fused
        ctx.wants = (want_dh, want_dw, want_db)
        ctx.chunk = (chunk_rows, workspace_bytes)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        if fused and any_grad:
            loss, dh, dw, db = call.run(True, want_dh, want_dw, want_db, None, chunk_rows, workspace_bytes)
            ctx.grads = (dh, dw, db)
        else:
            loss, _, _, _ = call.run(True, False, False, False, None, chunk_rows, workspace_bytes)
            ctx.grads = None
            ctx.call = call if any_grad else None
        ctx.consumed = False
        return loss if call.red == _lib.Reduction.NONE else loss.reshape(())

    @staticmethod
    def backward(ctx, grad_output):
        _no_double_backward()
        if ctx.consumed:
            raise RuntimeError("powergrad linear_cross_entropy: backward ran twice through the same graph "
                               "(call the loss again instead of retain_graph=True)")
        ctx.consumed = True
        want_dh, want_dw, want_db = ctx.wants
        wdt, bdt = ctx.dtypes
        if ctx.fused:
            dh, dw, db = ctx.grads
            ctx.grads = None
            g = grad_output.detach().to(torch.float32).reshape(())
            # In fp32 on the device: no host synchronisation, exact when grad_output is 1.
            if dh is not None:
                dh = (dh.to(torch.float32) * g).to(dh.dtype)
            if dw is not None:
                dw = (dw * g).to(wdt)
            if db is not None:
                db = (db * g).to(bdt)
        else:
            call = ctx.call
            ctx.call = None
            if call is None:
                return (None,) * 11
            _, dh, dw, db = call.run(False, want_dh, want_dw, want_db, grad_output, *ctx.chunk)
            if dw is not None:
                dw = dw.to(wdt)
            if db is not None:
                db = db.to(bdt)
        return dh, dw, db, None, None, None, None, None, None, None, None


def linear_cross_entropy(hidden, weight, target, bias=None, alpha=1.0, ignore_index=-100, label_smoothing=0.0,
                         reduction="mean", fused=None, chunk_rows=None, workspace_bytes=None):
    """PGT cross-entropy of ``F.linear(hidden, weight, bias)`` without materialising the logits.

    hidden: [..., H] (e.g. [B, T, H] hidden states of a language model), weight: [V, H] (a Linear's
    weight, possibly tied with an input embedding: autograd adds both gradients into weight.grad),
    bias: [V] or None, target: class indices of hidden's leading shape (ignore_index skips a
    position) or dense probabilities [..., V]. The loss is ordinary cross-entropy (float32); the
    gradient uses p' = softmax(alpha z). reduction 'none' returns the loss in target's shape.
    fused (mean / sum; default True): gradients computed in forward, scaled by the incoming gradient
    in backward; fused=False recomputes them in backward. chunk_rows / workspace_bytes: the row chunk
    (default: what fits DEFAULT_CHUNK_BUDGET bytes of workspace).
    """
    for name, t in (("hidden", hidden), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError("powergrad linear_cross_entropy: %s must be a tensor" % name)
    if hidden.dtype not in _DTYPES:
        raise TypeError("powergrad linear_cross_entropy: hidden must be float32, float16 or bfloat16, not %s"
                        % hidden.dtype)
    if weight.dtype != hidden.dtype:
        raise TypeError("powergrad linear_cross_entropy: weight is %s, hidden %s (the same dtype is needed)"
                        % (weight.dtype, hidden.dtype))
    if hidden.dim() < 1 or weight.dim() != 2:
        raise ValueError("powergrad linear_cross_entropy: hidden must be [..., H] and weight [V, H]")
    H = hidden.shape[-1]
    if weight.shape[1] != H:
        raise ValueError("powergrad linear_cross_entropy: weight is [%d, %d] but hidden has H = %d"
                         % (weight.shape[0], weight.shape[1], H))
    V = weight.shape[0]
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != V:
            raise ValueError("powergrad linear_cross_entropy: bias has shape %s, expected [%d]" % (tuple(bias.shape), V))
        if bias.dtype != hidden.dtype:
            raise TypeError("powergrad linear_cross_entropy: bias is %s, hidden %s" % (bias.dtype, hidden.dtype))
    for name, t in (("weight", weight), ("bias", bias), ("target", target)):
        if t is not None and t.device != hidden.device:
            raise ValueError("powergrad linear_cross_entropy: %s is on %s, hidden on %s" % (name, t.device, hidden.device))
    batch_shape = hidden.shape[:-1]
    h2 = _c2d(hidden.reshape(-1, H))
    rows = h2.shape[0]
    if target.is_floating_point():
        if tuple(target.shape) != tuple(batch_shape) + (V,):
            raise ValueError("powergrad linear_cross_entropy: dense target has shape %s, expected %s"
                             % (tuple(target.shape), tuple(batch_shape) + (V,)))
        t2 = target.reshape(rows, V)
    else:
        if tuple(target.shape) != tuple(batch_shape):
            raise ValueError("powergrad linear_cross_entropy: target has shape %s, expected %s"
                             % (tuple(target.shape), tuple(batch_shape)))
        t2 = target.reshape(rows)
    w2 = _c2d(weight)
    b2 = None if bias is None else _c2d(bias)
    loss = _LinearCrossEntropy.apply(h2, w2, b2, t2, alpha, ignore_index, label_smoothing, reduction, fused,
                                     chunk_rows, workspace_bytes)
    if _lib.reduction_of(reduction) == _lib.Reduction.NONE:
        return loss.reshape(batch_shape)
    return loss


class LinearCrossEntropyLoss(torch.nn.Module):
    """Module form: ``LinearCrossEntropyLoss(alpha=0.3)(hidden, weight, target, bias=None)``."""

    def __init__(self, alpha=1.0, ignore_index=-100, label_smoothing=0.0, reduction="mean", fused=None,
                 chunk_rows=None, workspace_bytes=None):
        super().__init__()
        self.alpha, self.ignore_index, self.label_smoothing = alpha, ignore_index, label_smoothing
        self.reduction, self.fused, self.chunk_rows, self.workspace_bytes = reduction, fused, chunk_rows, workspace_bytes

    def forward(self, hidden, weight, target, bias=None):
        return linear_cross_entropy(hidden, weight, target, bias=bias, alpha=self.alpha, ignore_index=self.ignore_index,
                                    label_smoothing=self.label_smoothing, reduction=self.reduction, fused=self.fused,
                                    chunk_rows=self.chunk_rows, workspace_bytes=self.workspace_bytes)

    def extra_repr(self):
        return "alpha=%g, reduction=%s" % (self.alpha, self.reduction)
