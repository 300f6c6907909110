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
    """One validated problem: the C structs and the tensors they point at. vocab_offset / total_vocab
    place a vocabulary shard (the split form, powergrad.torch.tp_linear); class_weight is the [vocab]
    class weights (float32) of these classes."""

    def __init__(self, h, weight, bias, target, alpha, ignore_index, label_smoothing, reduction, class_weight=None,
                 z_loss_scale=0.0, softcap=0.0, vocab_offset=0, total_vocab=0):
        self.h, self.weight, self.bias = h, weight, bias
        self.cw = None if class_weight is None else _c2d(class_weight.detach().to(device=h.device,
                                                                                  dtype=torch.float32))
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
            label_smoothing=float(label_smoothing), reduction=self.red, bad_target_count=None,
            vocab_offset=int(vocab_offset), total_vocab=int(total_vocab), class_weight=_vp(self.cw, 9),
            z_loss_scale=float(z_loss_scale), softcap=float(softcap))
        self.dense = kind == _lib.TargetKind.DENSE

    def _outputs(self, loss=None, dh=None, dw=None, db=None, zl=None, am=None, cor=None):
        h = self.h
        return _lib_linear.LinearXentOutputs(
            loss=_vp(loss, 4), dhidden=_vp(dh, 5), ld_dhidden=h.shape[1], dweight=_vp(dw, 6),
            ld_dweight=h.shape[1], dweight_type=_lib_linear.GradType.FLOAT32, accumulate_dweight=0,
            dbias=_vp(db, 7), dbias_type=_lib_linear.GradType.FLOAT32, accumulate_dbias=0,
            z_loss=_vp(zl, 10), argmax=_vp(am, 11), correct=_vp(cor, 12))

    def plan(self, want_dh, want_dw, want_db, chunk_rows=None, workspace_bytes=None):
        """(chunk_rows, workspace bytes) of a call computing these gradients (the size query reads which
        outputs are asked for, not their addresses: stand-ins do)."""
        out = self._outputs(dh=self.h if want_dh else None, dw=self.weight if want_dw else None,
                            db=self.bias if want_db else None)
        if chunk_rows is None:
            budget = DEFAULT_CHUNK_BUDGET if workspace_bytes is None else int(workspace_bytes)
            if workspace_bytes is None:
                budget += _lib_linear.workspace_bytes(self.problem, out, 1)
            chunk_rows = _lib_linear.chunk_rows(self.problem, out, budget)
        return chunk_rows, _lib_linear.workspace_bytes(self.problem, out, chunk_rows)

    def _workspace(self, n):
        ws = torch.empty(n + 256, dtype=torch.uint8, device=self.h.device)
        return ws, ctypes.c_void_p((ws.data_ptr() + 255) // 256 * 256)

    def _ctx(self):
        dev = self.h.device
        return torch.cuda.device(dev) if dev.type == "cuda" else _nullcontext()

    def stats(self, chunk_rows, n):
        """This shard's [rows, 8] float32 view of the rows' 32-byte statistics (pg_row_stats_t)."""
        st = torch.empty((self.h.shape[0], 8), dtype=torch.float32, device=self.h.device)
        ws, ws_ptr = self._workspace(n)
        with self._ctx():
            _lib_linear.call("pg_linear_xent_shard_stats", ctypes.byref(self.problem), _vp(st, 13), ws_ptr, n,
                             chunk_rows, self.blas, self.stream)
        return st

    def run(self, want_loss, want_dh, want_dw, want_db, upstream_values=None, chunk_rows=None,
            workspace_bytes=None, extras=False, merged=None):
        """(loss, dh, dw (fp32), db (fp32), extras) for upstream values read from memory (None: 1);
        extras: None, or (z_loss, argmax, correct or None) when asked for. With `merged` (the [rows, 8]
        merged statistics) this is the split form's apply call, dh then the shard's partial."""
        h, dev = self.h, self.h.device
        rows = h.shape[0]
        none = self.red == _lib.Reduction.NONE
        loss = torch.empty(rows if none else 1, dtype=torch.float32, device=dev) if want_loss else None
        dh = torch.empty_like(h) if want_dh else None
        dw = torch.empty(self.weight.shape, dtype=torch.float32, device=dev) if want_dw else None
        db = torch.empty(self.bias.shape, dtype=torch.float32, device=dev) if want_db else None
        zl = am = cor = None
        if extras:
            zl = torch.empty(rows if none else 1, dtype=torch.float32, device=dev)
            am = torch.empty(rows, dtype=torch.int64, device=dev)
            cor = None if self.dense else torch.empty(rows, dtype=torch.int32, device=dev)
        out = self._outputs(loss, dh, dw, db, zl, am, cor)
        chunk_rows, n = self.plan(want_dh, want_dw, want_db, chunk_rows, workspace_bytes)
        ws, ws_ptr = self._workspace(n)
        values = None
        if upstream_values is not None:
            values = upstream_values.detach().to(device=dev, dtype=torch.float32).reshape(-1).contiguous()
        up = _lib.Upstream(scale=1.0, values=_vp(values, 8))
        with self._ctx():
            if merged is None:
                _lib_linear.call("pg_linear_xent_forward_backward", ctypes.byref(self.problem), ctypes.byref(up),
                                 ctypes.byref(out), ws_ptr, n, chunk_rows, self.blas, self.stream)
            else:
                _lib_linear.call("pg_linear_xent_shard_apply", ctypes.byref(self.problem), _vp(merged, 14),
                                 ctypes.byref(up), ctypes.byref(out), ws_ptr, n, chunk_rows, self.blas, self.stream)
        return loss, dh, dw, db, ((zl, am, cor) if extras else None)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def _with_extras(ctx, loss, ex, dev):
    """The Function's outputs: the loss, then z_loss, argmax, correct (empty when not asked for;
    never differentiable)."""
    empty = torch.empty(0, dtype=torch.float32, device=dev)
    zl, am, cor = ex if ex is not None else (empty, empty, empty)
    zl = zl if zl is not None else empty
    cor = cor if cor is not None else empty
    ctx.mark_non_differentiable(zl, am, cor)
    return loss, zl, am, cor


def _extras_dict(zl, am, cor, reduction, batch_shape, dense):
    none = _lib.reduction_of(reduction) == _lib.Reduction.NONE
    ex = {"z_loss": zl.reshape(batch_shape) if none else zl.reshape(()), "argmax": am.reshape(batch_shape)}
    if not dense:
        ex["correct"] = cor.reshape(batch_shape)
    return ex


def _check_options(op, class_weight, z_loss_scale, softcap, vocab, device):
    """class_weight: None or a floating [vocab] tensor on `device`; the scalars as floats."""
    if class_weight is not None:
        if not isinstance(class_weight, torch.Tensor) or not class_weight.is_floating_point():
            raise TypeError("powergrad %s: class_weight must be a floating-point tensor of class weights [%d]"
                            % (op, vocab))
        if class_weight.dim() != 1 or class_weight.shape[0] != vocab:
            raise ValueError("powergrad %s: class_weight has shape %s, expected [%d] (one weight per class)"
                             % (op, tuple(class_weight.shape), vocab))
        if class_weight.device != device:
            raise ValueError("powergrad %s: class_weight is on %s, hidden on %s" % (op, class_weight.device, device))
    for name, v in (("z_loss_scale", z_loss_scale), ("softcap", softcap)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError("powergrad %s: %s must be a number, not %s" % (op, name, type(v).__name__))
    return float(z_loss_scale), float(softcap)


class _LinearCrossEntropy(torch.autograd.Function):
    """Fused (mean / sum): forward computes the loss and every gradient for an upstream of 1; backward
    multiplies them by grad_output on the device (exact when it is 1). Two-pass (none, or
    fused=False): forward computes the loss only; backward runs the op again with the upstream values
    read from grad_output's memory (exact for every upstream)."""

    @staticmethod
    def forward(ctx, h, weight, bias, target, alpha, ignore_index, label_smoothing, reduction, fused, chunk_rows,
                workspace_bytes, class_weight, z_loss_scale, softcap, extras):
        call = _Call(h, weight, bias, target, alpha, ignore_index, label_smoothing, reduction, class_weight,
                     z_loss_scale, softcap)
        want_dh, want_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        want_db = bias is not None and ctx.needs_input_grad[2]
        any_grad = want_dh or want_dw or want_db
        fused = call.red != _lib.Reduction.NONE and (fused is None or fused)
        ctx.fused = fused
        ctx.wants = (want_dh, want_dw, want_db)
        ctx.chunk = (chunk_rows, workspace_bytes)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        if fused and any_grad:
            loss, dh, dw, db, ex = call.run(True, want_dh, want_dw, want_db, None, chunk_rows, workspace_bytes, extras)
            ctx.grads = (dh, dw, db)
        else:
            loss, _, _, _, ex = call.run(True, False, False, False, None, chunk_rows, workspace_bytes, extras)
            ctx.grads = None
            ctx.call = call if any_grad else None
        ctx.consumed = False
        return _with_extras(ctx, loss if call.red == _lib.Reduction.NONE else loss.reshape(()), ex, h.device)

    @staticmethod
    def backward(ctx, grad_output, *unused):
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
                return (None,) * 15
            _, dh, dw, db, _ = call.run(False, want_dh, want_dw, want_db, grad_output, *ctx.chunk)
            if dw is not None:
                dw = dw.to(wdt)
            if db is not None:
                db = db.to(bdt)
        return (dh, dw, db) + (None,) * 12


def linear_cross_entropy(hidden, weight, target, bias=None, alpha=1.0, ignore_index=-100, label_smoothing=0.0,
                         reduction="mean", fused=None, chunk_rows=None, workspace_bytes=None, class_weight=None,
                         z_loss_scale=0.0, softcap=0.0, return_extras=False):
    """PGT cross-entropy of ``F.linear(hidden, weight, bias)`` without materialising the logits.

    hidden: [..., H] (e.g. [B, T, H] hidden states of a language model), weight: [V, H] (a Linear's
    weight, possibly tied with an input embedding: autograd adds both gradients into weight.grad),
    bias: [V] or None, target: class indices of hidden's leading shape (ignore_index skips a
    position) or dense probabilities [..., V]. The loss is ordinary cross-entropy (float32); the
    gradient uses p' = softmax(alpha z). reduction 'none' returns the loss in target's shape.
    fused (mean / sum; default True): gradients computed in forward, scaled by the incoming gradient
    in backward; fused=False recomputes them in backward. chunk_rows / workspace_bytes: the row chunk
    (default: what fits DEFAULT_CHUNK_BUDGET bytes of workspace).

    Options (docs/design.md §2.5), off by default: ``class_weight`` ([V] class weights, what
    ``F.cross_entropy`` calls ``weight=``: here ``weight`` is the classifier's; 'mean' then divides by
    the sum of the non-ignored targets' weights), ``z_loss_scale`` (adds z_loss_scale * lse^2 per row,
    PaLM's z-loss), ``softcap`` (logits become softcap * tanh(z / softcap), Gemma-2). With
    ``return_extras=True`` the result is ``(loss, extras)``: ``extras["z_loss"]`` (the z-loss part of
    the loss, reduced as the loss), ``extras["argmax"]`` (int64, the predicted class per position)
    and, for class targets, ``extras["correct"]`` (int32, argmax == target, 0 where ignored); none of
    them carries a gradient, and the host is never synchronised to form them.
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
    z_loss_scale, softcap = _check_options("linear_cross_entropy", class_weight, z_loss_scale, softcap, V,
                                           hidden.device)
    w2 = _c2d(weight)
    b2 = None if bias is None else _c2d(bias)
    loss, zl, am, cor = _LinearCrossEntropy.apply(h2, w2, b2, t2, alpha, ignore_index, label_smoothing, reduction,
                                                  fused, chunk_rows, workspace_bytes, class_weight, z_loss_scale,
                                                  softcap, bool(return_extras))
    if _lib.reduction_of(reduction) == _lib.Reduction.NONE:
        loss = loss.reshape(batch_shape)
    if not return_extras:
        return loss
    return loss, _extras_dict(zl, am, cor, reduction, batch_shape, target.is_floating_point())


class LinearCrossEntropyLoss(torch.nn.Module):
    """Module form: ``LinearCrossEntropyLoss(alpha=0.3)(hidden, weight, target, bias=None)``."""

    def __init__(self, alpha=1.0, ignore_index=-100, label_smoothing=0.0, reduction="mean", fused=None,
                 chunk_rows=None, workspace_bytes=None, class_weight=None, z_loss_scale=0.0, softcap=0.0):
        super().__init__()
        self.alpha, self.ignore_index, self.label_smoothing = alpha, ignore_index, label_smoothing
        self.reduction, self.fused, self.chunk_rows, self.workspace_bytes = reduction, fused, chunk_rows, workspace_bytes
        self.class_weight, self.z_loss_scale, self.softcap = class_weight, z_loss_scale, softcap

    def forward(self, hidden, weight, target, bias=None):
        return linear_cross_entropy(hidden, weight, target, bias=bias, alpha=self.alpha, ignore_index=self.ignore_index,
                                    label_smoothing=self.label_smoothing, reduction=self.reduction, fused=self.fused,
                                    chunk_rows=self.chunk_rows, workspace_bytes=self.workspace_bytes,
                                    class_weight=self.class_weight, z_loss_scale=self.z_loss_scale,
                                    softcap=self.softcap)

    def extra_repr(self):
        return "alpha=%g, reduction=%s" % (self.alpha, self.reduction)
