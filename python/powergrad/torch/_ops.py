"""torch.library registrations of the powergrad ops (namespace ``powergrad``; PyTorch >= 2.4).

Every op is a ``torch.library.custom_op`` with a ``register_fake`` (shapes and dtypes only, no data
read) and, where it is differentiable, a ``register_autograd``, so torch.compile traces through it
(``fullgraph=True``) and ``torch.library.opcheck`` passes. No op synchronises with the host; CUDA
tensors run on the current stream with workspace from the caching allocator.

==========================================  ================================================================
op                                          what it computes (docs/design.md §2)
==========================================  ================================================================
``powergrad::xent``                         fused: loss, the gradient (for an expected upstream), lse (§6)
``powergrad::xent_``                        the same with the gradient written over the logits (mutating)
``powergrad::xent_stats``                   two-pass forward: loss, lse_alpha, lse
``powergrad::xent_backward``                two-pass backward: g_r (p' - q) from the saved lse_alpha
``powergrad::hook``                         the hook form s_r (p - q) -> s_r (p' - q) (§2.2)
``powergrad::bucket_power_``                gradient-bucket power map (§2.4), in place
``powergrad::bucket_clip_norm_``            L2 clip of a bucket (or of each tensor), in place; the norms
``powergrad::bucket_agc_``                  adaptive gradient clipping (+ power), in place
==========================================  ================================================================

``reduction`` is passed as a string ('none' | 'mean' | 'sum'). The loss is float32 for every logits
dtype. The public wrappers (functional.py, buckets.py) check their arguments and name them in the
errors; the ops assume checked arguments.

The cross-entropy ops take the options of docs/design.md §2.5 as trailing arguments (defaults: off):
``weight`` (None or [C] floating class weights, read as float32; not differentiated), ``z_loss_scale``,
``softcap``, and the flags ``compute_z_loss`` / ``compute_accuracy`` that ask for the extra outputs
``z_loss`` (float32, reduced as the loss; [0] when not asked), ``argmax`` (int64 [N]) and ``correct``
(int32 [N], class targets only); ``argmax`` / ``correct`` are [0] when not asked. Those outputs get no
gradient: the z-loss's gradient is part of the loss's (the library adds 2 lambda lse p to it).
"""

import ctypes
from typing import List, Optional, Tuple

import torch

from .. import _lib
from . import _common as c

_NONE = "none"


def _loss_shape(rows, reduction):
    return (rows,) if reduction == _NONE else ()


# --------------------------------------------------------------------------------------------------
# Fused forward + backward.
# --------------------------------------------------------------------------------------------------

def _upstream(grad_scale, grad_scale_value, reduction, rows, device):
    """(pg_upstream_t, keep-alive tensor): the expected incoming gradient, applied in fp32 by the kernel."""
    if grad_scale is None:
        return c.upstream(grad_scale_value, None), None
    v = grad_scale.to(device=device, dtype=torch.float32).reshape(-1)
    if reduction == _NONE and v.numel() == 1:
        v = v.expand(rows)
    v = c.c_tensor(v)
    return c.upstream(1.0, c.vp(v)), v


def _extras(x, reduction, compute_z_loss, compute_accuracy):
    """(z_loss, argmax, correct) output tensors: full size when asked, else [0] (not written)."""
    rows = x.shape[0]
    dev = x.device
    z = torch.empty((rows if reduction == _NONE else 1) if compute_z_loss else 0, dtype=torch.float32, device=dev)
    a = torch.empty(rows if compute_accuracy else 0, dtype=torch.int64, device=dev)
    k = torch.empty(rows if compute_accuracy else 0, dtype=torch.int32, device=dev)
    return z, a, k


def _extras_fake(logits, reduction, compute_z_loss, compute_accuracy):
    rows = logits.shape[0]
    z = logits.new_empty(_loss_shape(rows, reduction) if compute_z_loss else (0,), dtype=torch.float32)
    a = logits.new_empty((rows if compute_accuracy else 0,), dtype=torch.int64)
    k = logits.new_empty((rows if compute_accuracy else 0,), dtype=torch.int32)
    return z, a, k


def _fused(x, target, alpha, ignore_index, label_smoothing, reduction, grad, lse, grad_scale, grad_scale_value,
           weight, z_loss_scale, softcap, extras):
    """Runs pg_xent_forward_backward on laid-out logits x, writing grad (may be x itself, or None), lse
    and the extras (z_loss, argmax, correct: each None or [0] when not asked); returns the loss."""
    p, _keep_inputs = c.problem(x, target, alpha, ignore_index, label_smoothing, reduction, weight=weight,
                                z_loss_scale=z_loss_scale, softcap=softcap)
    rows = x.shape[0]
    dev = x.device
    loss = torch.empty(rows if reduction == _NONE else (), dtype=torch.float32, device=dev)
    if dev.type == "cpu":
        stream, ws, ws_bytes = None, None, 0  # the host backend takes no workspace and no stream
    else:
        _, stream = c.device_and_stream(x)
        ws, ws_bytes = c.workspace(x, reduction) if (grad is not None or reduction != _NONE) else (None, 0)
    zl, am, ok = extras
    out = c.outputs(c.ptr(loss), c.ptr(lse), None, c.ptr(grad), c.ld(grad) if grad is not None else 0,
                    c.ptr(zl) if zl is not None and zl.numel() else None,
                    c.ptr(am) if am is not None and am.numel() else None,
                    c.ptr(ok) if ok is not None and ok.numel() else None)
    if grad is not None:
        up, keep = _upstream(grad_scale, grad_scale_value, reduction, rows, dev)
    else:
        up, keep = c.upstream(1.0, None), None
    c.call(dev, "pg_xent_forward_backward", ctypes.byref(p), ctypes.byref(up), ctypes.byref(out), c.ptr(ws),
           ws_bytes, stream)
    del keep  # the upstream values the kernel read
    return loss  # [N] for 'none', else 0-d


def eager_fused(x, target, alpha, ignore_index, label_smoothing, reduction, write_over, compute_grad, grad_scale,
                grad_scale_value, weight, z_loss_scale, softcap, want_z, want_acc):
    """The work of powergrad::xent / powergrad::xent_ called directly, without the dispatcher, for
    eager mode on plain tensors (functional.py decides when that is equivalent): (loss, grad, z_loss,
    argmax, correct), grad None unless compute_grad (then x itself when write_over), the extras None
    unless asked. Allocates only the outputs asked for."""
    if not write_over:
        x = c.for_c(x)
    rows, cols = x.shape
    dev = x.device
    if write_over:
        grad = x
    elif compute_grad:
        grad = torch.empty((rows, cols), dtype=x.dtype, device=dev)
    else:
        grad = None
    zl = torch.empty(rows if reduction == _NONE else 1, dtype=torch.float32, device=dev) if want_z else None
    am = torch.empty(rows, dtype=torch.int64, device=dev) if want_acc else None
    ok = torch.empty(rows, dtype=torch.int32, device=dev) if want_acc else None
    loss = _fused(x, target, alpha, ignore_index, label_smoothing, reduction, grad, None, grad_scale,
                  grad_scale_value, weight, z_loss_scale, softcap, (zl, am, ok))
    if want_z:
        zl = zl.reshape(_loss_shape(rows, reduction))
    return loss, grad, zl, am, ok


@torch.library.custom_op("powergrad::xent", mutates_args=())
def xent(logits: torch.Tensor, target: torch.Tensor, alpha: float, ignore_index: int, label_smoothing: float,
         reduction: str, compute_grad: bool, compute_lse: bool, grad_scale: Optional[torch.Tensor],
         grad_scale_value: float, weight: Optional[torch.Tensor] = None, z_loss_scale: float = 0.0,
         softcap: float = 0.0, compute_z_loss: bool = False, compute_accuracy: bool = False
         ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, grad, lse, z_loss, argmax, correct): loss float32 ([N] for 'none', else 0-d); grad =
    g_r (p' - q) for the expected upstream (grad_scale tensor, else grad_scale_value) in the logits'
    dtype, [N, C] when compute_grad else [0, C]; lse float32 [N] when compute_lse else [0]; the
    extras as the module docstring says."""
    x = c.for_c(logits)
    rows, cols = x.shape
    grad = torch.empty((rows, cols) if compute_grad else (0, cols), dtype=x.dtype, device=x.device)
    lse = torch.empty(rows if compute_lse else 0, dtype=torch.float32, device=x.device)
    extras = _extras(x, reduction, compute_z_loss, compute_accuracy)
    loss = _fused(x, target, alpha, ignore_index, label_smoothing, reduction, grad if compute_grad else None,
                  lse if compute_lse else None, grad_scale, grad_scale_value, weight, z_loss_scale, softcap, extras)
    z_loss, argmax, correct = extras
    return loss, grad, lse, z_loss.reshape(_loss_shape(rows, reduction)) if compute_z_loss else z_loss, argmax, \
        correct


@xent.register_fake
def _xent_fake(logits, target, alpha, ignore_index, label_smoothing, reduction, compute_grad, compute_lse,
               grad_scale, grad_scale_value, weight=None, z_loss_scale=0.0, softcap=0.0, compute_z_loss=False,
               compute_accuracy=False):
    rows, cols = logits.shape
    loss = logits.new_empty(_loss_shape(rows, reduction), dtype=torch.float32)
    grad = logits.new_empty((rows, cols) if compute_grad else (0, cols))
    lse = logits.new_empty((rows if compute_lse else 0,), dtype=torch.float32)
    return (loss, grad, lse) + _extras_fake(logits, reduction, compute_z_loss, compute_accuracy)


def row_factor(grad_output, reduction):
    """The incoming gradient in fp32: 0-d for 'mean'/'sum', [rows, 1] for 'none'."""
    go = grad_output.to(torch.float32)
    return go.reshape(-1, 1) if reduction == _NONE else go.reshape(())


def target_grad(x, lse, factor, reduction, label_smoothing, dtype, weight=None, softcap=0.0):
    """d(loss)/d(q) for probability targets, as PyTorch: -(1 - eps) * w * log_softmax(zc) * g_r, g_r
    the incoming gradient (over rows for 'mean': probability targets count every row), w the class
    weights (1 without), zc the softcapped logits (docs/design.md §2.5; the z-loss does not depend on
    q). One more read of the logits, done only when the targets require grad."""
    rows = x.shape[0]
    g = factor / rows if (reduction == "mean" and rows) else factor
    z = x.float()
    if softcap:
        z = torch.tanh(z / softcap) * softcap
    logp = z - lse.reshape(-1, 1)
    if weight is not None:
        logp = logp * weight.to(device=x.device, dtype=torch.float32)
    return (logp * (g * -(1.0 - label_smoothing))).to(dtype)


def _scale(grad, ratio):
    """grad * ratio formed in fp32 and rounded once to grad's dtype (ratio: 0-d or [rows, 1] fp32).

    torch rounds a float scalar to the tensor's dtype before a half-precision multiply (65536 is inf in
    fp16), hence the fp32 product. Functional (a new tensor): this is the backward torch.compile traces,
    and the compiler plans its buffers; eager mode scales the stored gradient in place instead
    (functional.py)."""
    if grad.dtype == torch.float32:
        return grad * ratio
    return (grad.float() * ratio).to(grad.dtype)


def upstream_ratio(factor, grad_scale, grad_scale_value):
    """grad_output / expected upstream, in fp32 (0-d or [rows, 1])."""
    if grad_scale is None:
        return factor / grad_scale_value
    g = grad_scale.to(device=factor.device, dtype=torch.float32)
    return factor / (g.reshape(()) if g.numel() == 1 else g.reshape(-1, 1))


def _xent_setup(ctx, inputs, output):
    logits, target, alpha, ignore_index, label_smoothing, reduction, compute_grad, compute_lse, grad_scale, \
        grad_scale_value, weight, z_loss_scale, softcap, compute_z_loss, compute_accuracy = inputs
    grad, lse = output[1], output[2]
    ctx.reduction = reduction
    ctx.label_smoothing = label_smoothing
    ctx.softcap = softcap
    ctx.target_dtype = target.dtype
    ctx.compute_grad = compute_grad
    ctx.compute_lse = compute_lse
    ctx.grad_scale_value = grad_scale_value
    ctx.has_grad_scale = grad_scale is not None
    ctx.has_weight = weight is not None
    ctx.save_for_backward(grad if compute_grad else None, logits if compute_lse else None,
                          lse if compute_lse else None, grad_scale, weight if compute_lse else None)


def _xent_backward(ctx, d_loss, _d_grad, _d_lse, _d_z_loss, _d_argmax, _d_correct):
    c.no_double_backward("cross_entropy")
    grad, logits, lse, grad_scale, weight = ctx.saved_tensors
    factor = row_factor(d_loss, ctx.reduction)
    dlogits = None
    if ctx.compute_grad:
        ratio = upstream_ratio(factor, grad_scale if ctx.has_grad_scale else None, ctx.grad_scale_value)
        dlogits = _scale(grad, ratio)  # exact when the incoming gradient equals the expected one
    dtarget = None
    if ctx.compute_lse:
        dtarget = target_grad(logits, lse, factor, ctx.reduction, ctx.label_smoothing, ctx.target_dtype,
                              weight if ctx.has_weight else None, ctx.softcap)
    return (dlogits, dtarget) + (None,) * 13


xent.register_autograd(_xent_backward, setup_context=_xent_setup)


@torch.library.custom_op("powergrad::xent_", mutates_args=("logits",))
def xent_(logits: torch.Tensor, target: torch.Tensor, alpha: float, ignore_index: int, label_smoothing: float,
          reduction: str, grad_scale: Optional[torch.Tensor], grad_scale_value: float,
          weight: Optional[torch.Tensor] = None, z_loss_scale: float = 0.0, softcap: float = 0.0,
          compute_z_loss: bool = False, compute_accuracy: bool = False
          ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused op writing the gradient over ``logits`` (2-D, in the ABI's row layout); returns
    (loss, z_loss, argmax, correct), the extras as in :func:`xent`."""
    extras = _extras(logits, reduction, compute_z_loss, compute_accuracy)
    loss = _fused(logits, target, alpha, ignore_index, label_smoothing, reduction, logits, None, grad_scale,
                  grad_scale_value, weight, z_loss_scale, softcap, extras)
    z_loss, argmax, correct = extras
    return loss, z_loss.reshape(_loss_shape(logits.shape[0], reduction)) if compute_z_loss else z_loss, argmax, \
        correct


@xent_.register_fake
def _xent__fake(logits, target, alpha, ignore_index, label_smoothing, reduction, grad_scale, grad_scale_value,
                weight=None, z_loss_scale=0.0, softcap=0.0, compute_z_loss=False, compute_accuracy=False):
    return (logits.new_empty(_loss_shape(logits.shape[0], reduction), dtype=torch.float32),) + \
        _extras_fake(logits, reduction, compute_z_loss, compute_accuracy)


# --------------------------------------------------------------------------------------------------
# Two-pass form.
# --------------------------------------------------------------------------------------------------

@torch.library.custom_op("powergrad::xent_stats", mutates_args=())
def xent_stats(logits: torch.Tensor, target: torch.Tensor, alpha: float, ignore_index: int,
               label_smoothing: float, reduction: str, compute_lse_alpha: bool, compute_lse: bool,
               weight: Optional[torch.Tensor] = None, z_loss_scale: float = 0.0, softcap: float = 0.0,
               compute_z_loss: bool = False, compute_accuracy: bool = False
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, lse_alpha, lse, z_loss, argmax, correct): one read of the logits; lse_alpha / lse float32
    [N] when asked, else [0]; the extras as in :func:`xent`."""
    x = c.for_c(logits)
    rows = x.shape[0]
    p, _keep_inputs = c.problem(x, target, alpha, ignore_index, label_smoothing, reduction, weight=weight,
                                z_loss_scale=z_loss_scale, softcap=softcap)
    _, stream = c.device_and_stream(x)
    loss = torch.empty(rows if reduction == _NONE else 1, dtype=torch.float32, device=x.device)
    lse_alpha = torch.empty(rows if compute_lse_alpha else 0, dtype=torch.float32, device=x.device)
    lse = torch.empty(rows if compute_lse else 0, dtype=torch.float32, device=x.device)
    zl, am, ok = _extras(x, reduction, compute_z_loss, compute_accuracy)
    ws, ws_bytes = c.workspace(x, reduction)
    out = c.outputs(loss=c.vp(loss), lse=c.vp(lse) if compute_lse else None,
                    lse_alpha=c.vp(lse_alpha) if compute_lse_alpha else None, dlogits=None, ld_dlogits=0,
                    z_loss=c.vp(zl) if compute_z_loss else None, argmax=c.vp(am) if compute_accuracy else None,
                    correct=c.vp(ok) if compute_accuracy else None)
    up = c.upstream(1.0, None)
    c.call(x.device, "pg_xent_forward_backward", ctypes.byref(p), ctypes.byref(up), ctypes.byref(out), c.vp(ws),
           ws_bytes, stream)
    return (loss.reshape(_loss_shape(rows, reduction)), lse_alpha, lse,
            zl.reshape(_loss_shape(rows, reduction)) if compute_z_loss else zl, am, ok)


@xent_stats.register_fake
def _xent_stats_fake(logits, target, alpha, ignore_index, label_smoothing, reduction, compute_lse_alpha,
                     compute_lse, weight=None, z_loss_scale=0.0, softcap=0.0, compute_z_loss=False,
                     compute_accuracy=False):
    rows = logits.shape[0]
    return (logits.new_empty(_loss_shape(rows, reduction), dtype=torch.float32),
            logits.new_empty((rows if compute_lse_alpha else 0,), dtype=torch.float32),
            logits.new_empty((rows if compute_lse else 0,), dtype=torch.float32)) + \
        _extras_fake(logits, reduction, compute_z_loss, compute_accuracy)


@torch.library.custom_op("powergrad::xent_backward", mutates_args=())
def xent_backward(logits: torch.Tensor, target: torch.Tensor, lse_alpha: torch.Tensor, grad_output: torch.Tensor,
                  alpha: float, ignore_index: int, label_smoothing: float, reduction: str,
                  weight: Optional[torch.Tensor] = None, z_loss_scale: float = 0.0,
                  softcap: float = 0.0) -> torch.Tensor:
    """g_r (p' - q) in the logits' dtype, the upstream (grad_output: 0-d, or [N] for 'none') read from
    device memory and applied exactly; one read of the logits, one write (with a z-loss the library
    recomputes the statistics instead of using lse_alpha: docs/design.md §2.5)."""
    x = c.for_c(logits)
    p, _keep_inputs = c.problem(x, target, alpha, ignore_index, label_smoothing, reduction, weight=weight,
                                z_loss_scale=z_loss_scale, softcap=softcap)
    _, stream = c.device_and_stream(x)
    go = c.c_tensor(grad_output.to(device=x.device, dtype=torch.float32).reshape(-1))
    up = c.upstream(1.0, c.vp(go))
    grad = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    ws, ws_bytes = c.workspace(x, reduction)
    saved = c.c_tensor(lse_alpha)  # a name keeps a copy alive through the call
    c.call(x.device, "pg_xent_backward", ctypes.byref(p), ctypes.byref(up), c.vp(saved), c.vp(grad),
           grad.shape[1], c.vp(ws), ws_bytes, stream)
    return grad


@xent_backward.register_fake
def _xent_backward_fake(logits, target, lse_alpha, grad_output, alpha, ignore_index, label_smoothing, reduction,
                        weight=None, z_loss_scale=0.0, softcap=0.0):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _stats_setup(ctx, inputs, output):
    logits, target, alpha, ignore_index, label_smoothing, reduction, compute_lse_alpha, compute_lse, weight, \
        z_loss_scale, softcap, _compute_z_loss, _compute_accuracy = inputs
    lse_alpha, lse = output[1], output[2]
    ctx.args = (alpha, ignore_index, label_smoothing, reduction)
    ctx.options = (z_loss_scale, softcap)
    ctx.flags = (compute_lse_alpha, compute_lse)
    ctx.has_weight = weight is not None
    ctx.target_dtype = target.dtype
    ctx.save_for_backward(logits, target if target.dim() == 1 else target.detach(), lse_alpha, lse, weight)


def _stats_backward(ctx, d_loss, _d_lse_alpha, _d_lse, _d_z_loss, _d_argmax, _d_correct):
    c.no_double_backward("cross_entropy")
    logits, target, lse_alpha, lse, weight = ctx.saved_tensors
    weight = weight if ctx.has_weight else None
    alpha, ignore_index, label_smoothing, reduction = ctx.args
    z_loss_scale, softcap = ctx.options
    compute_lse_alpha, compute_lse = ctx.flags
    dlogits = None
    if compute_lse_alpha:
        dlogits = xent_backward(logits, target, lse_alpha, d_loss, alpha, ignore_index, label_smoothing, reduction,
                                weight, z_loss_scale, softcap)
    dtarget = None
    if compute_lse:
        dtarget = target_grad(logits, lse, row_factor(d_loss, reduction), reduction, label_smoothing,
                               ctx.target_dtype, weight, softcap)
    return (dlogits, dtarget) + (None,) * 11


xent_stats.register_autograd(_stats_backward, setup_context=_stats_setup)


# --------------------------------------------------------------------------------------------------
# Hook form.
# --------------------------------------------------------------------------------------------------

@torch.library.custom_op("powergrad::hook", mutates_args=())
def hook(grad: torch.Tensor, target: torch.Tensor, row_scale: torch.Tensor, alpha: float, ignore_index: int,
         label_smoothing: float) -> torch.Tensor:
    """s_r (p' - q) from an existing gradient s_r (p - q) [N, C] and the per-row scale s_r (float32 [N])."""
    g = c.for_c(grad)
    rs = c.c_tensor(row_scale.to(device=g.device, dtype=torch.float32).reshape(-1))
    p, _t = c.problem(g, target, alpha, ignore_index, label_smoothing, _NONE)
    _, stream = c.device_and_stream(g)
    out = torch.empty(g.shape, dtype=g.dtype, device=g.device)
    c.call(out.device, "pg_xent_hook", ctypes.byref(p), 1.0, c.vp(rs), c.vp(out), out.shape[1], stream)
    return out


@hook.register_fake
def _hook_fake(grad, target, row_scale, alpha, ignore_index, label_smoothing):
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


# --------------------------------------------------------------------------------------------------
# Gradient-bucket transforms (docs/design.md §2.4), in place on a list of gradients.
# --------------------------------------------------------------------------------------------------

@torch.library.custom_op("powergrad::bucket_power_", mutates_args=("grads",))
def bucket_power_(grads: List[torch.Tensor], beta: float, preserve: Optional[str], scope: str) -> None:
    """g <- K sign(g)|g|^beta over gradients of one device and dtype (contiguous)."""
    if not grads:
        return
    from ._bucket_plans import bucket_for
    b = bucket_for(grads, None, _lib.BucketUnits.TENSOR)
    with c.on_device(b.device):
        b.plan.power(beta, preserve, scope, c.vp(b.workspace), c.vp(b.flags), b.stream())


@bucket_power_.register_fake
def _bucket_power_fake(grads, beta, preserve, scope):
    return None


@torch.library.custom_op("powergrad::bucket_clip_norm_", mutates_args=("grads",))
def bucket_clip_norm_(grads: List[torch.Tensor], max_norm: float, scope: str) -> torch.Tensor:
    """Clips in place to L2 norm max_norm (scope 'bucket': the norm over all of them; 'tensor': each
    on its own); returns float32 norms ([1] for 'bucket', [len(grads)] for 'tensor')."""
    n = 1 if scope == "bucket" else len(grads)
    if not grads:
        return torch.zeros(n, dtype=torch.float32)
    from ._bucket_plans import bucket_for
    b = bucket_for(grads, None, _lib.BucketUnits.TENSOR)
    norms = torch.empty(n, dtype=torch.float32, device=b.device)
    with c.on_device(b.device):
        b.plan.clip_norm(max_norm, scope, c.vp(norms), c.vp(b.workspace), c.vp(b.flags), b.stream())
    return norms


@bucket_clip_norm_.register_fake
def _bucket_clip_norm_fake(grads, max_norm, scope):
    n = 1 if scope == "bucket" else len(grads)
    if not grads:
        return torch.empty(n, dtype=torch.float32)
    return grads[0].new_empty((n,), dtype=torch.float32)


@torch.library.custom_op("powergrad::bucket_agc_", mutates_args=("grads",))
def bucket_agc_(grads: List[torch.Tensor], params: List[torch.Tensor], clip: float, eps: float, beta: float,
                preserve: Optional[str]) -> None:
    """timm's adaptive gradient clipping (units along dim 0), then the power map when beta != 1 or
    preserve is set, in place."""
    if not grads:
        return
    from ._bucket_plans import bucket_for
    b = bucket_for(grads, params, _lib.BucketUnits.ROWS)
    with c.on_device(b.device):
        b.plan.agc(clip, eps, beta, preserve, c.vp(b.workspace), c.vp(b.flags), b.stream())


@bucket_agc_.register_fake
def _bucket_agc_fake(grads, params, clip, eps, beta, preserve):
    return None
