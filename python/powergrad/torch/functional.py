"""PGT cross-entropy and the gradient hook as functions (the torch.library ops of _ops.py underneath).

Switching a model's loss to PGT::

    from powergrad.torch import cross_entropy
    loss = cross_entropy(logits, target, alpha=0.3)   # instead of F.cross_entropy(logits, target)

The forward value is ordinary cross-entropy; only the gradient changes (softmax(alpha z) - q instead
of softmax(z) - q; arXiv 2111.12495, docs/design.md §2.1).
"""

import math
import operator
from typing import NamedTuple, Optional

import torch

from .. import _lib
from . import _common as c
from . import _cpp
from . import _ops  # noqa: F401  (registers torch.ops.powergrad.*)
from ._inplace import bump_version, inplace_is_safe

__all__ = ["cross_entropy", "pgt_hook", "CrossEntropyOutput"]


class CrossEntropyOutput(NamedTuple):
    """What :func:`cross_entropy` returns when ``return_z_loss`` or ``return_accuracy`` is set (a
    named tuple: ``loss, z_loss, accuracy, argmax = cross_entropy(...)`` also works).

    ``loss``: the loss (z-loss included), as without the flags. ``z_loss``: the z-loss part alone,
    reduced as the loss (the leading shape for 'none'), float32, detached: a metric, its gradient is
    already in ``loss``'s (None unless ``return_z_loss``). ``accuracy``: float32 0-d, the fraction of
    non-ignored rows whose argmax is the target (0 when there is none), computed on the device
    (None unless ``return_accuracy``). ``argmax``: int64 of the leading shape, the first class of
    each row's largest (softcapped) logit, as ``torch.argmax`` (None unless ``return_accuracy``)."""

    loss: torch.Tensor
    z_loss: Optional[torch.Tensor] = None
    accuracy: Optional[torch.Tensor] = None
    argmax: Optional[torch.Tensor] = None

_ops_ns = torch.ops.powergrad


def _check_inputs(logits, target, what):
    """(logits as [N, C], target as [N] or [N, C], leading shape, dense?) after the bad-input checks;
    every error names the argument."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError("powergrad %s: logits must be a torch.Tensor, not %s" % (what, type(logits).__name__))
    if not isinstance(target, torch.Tensor):
        raise TypeError("powergrad %s: target must be a torch.Tensor, not %s" % (what, type(target).__name__))
    if logits.dtype not in c.DTYPES:
        raise TypeError("powergrad %s: logits must be float32, float16 or bfloat16, not %s" % (what, logits.dtype))
    device = logits.device
    if device.type not in ("cpu", "cuda"):
        raise ValueError("powergrad %s: logits must be on the CPU or a CUDA device, not %s" % (what, device))
    shape = logits.shape
    if not shape:
        raise ValueError("powergrad %s: logits must have a class dimension (last), got a 0-d tensor" % what)
    if target.device != device:
        raise ValueError("powergrad %s: target is on %s, logits on %s" % (what, target.device, device))
    cols = shape[-1]
    lead = tuple(shape[:-1])
    if cols == 0:
        raise ValueError("powergrad %s: logits has no classes (its last dimension, the class dimension, is 0)"
                         % what)
    two_d = len(lead) == 1  # [N, C]: the tensors are used as they are (a reshape would add a view per call)
    if target.is_floating_point():
        if tuple(target.shape) == tuple(logits.shape):
            if two_d:
                return logits, target, lead, True
            return logits.reshape(-1, cols), target.reshape(-1, cols), lead, True
        if tuple(target.shape) == lead:
            raise TypeError("powergrad %s: target has the shape of class indices %s but dtype %s; class indices "
                            "must be integers (probabilities must have the logits' shape %s)"
                            % (what, tuple(target.shape), target.dtype, tuple(logits.shape)))
        raise ValueError("powergrad %s: the probability target has shape %s; it must equal the logits' shape %s"
                         % (what, tuple(target.shape), tuple(logits.shape)))
    if target.dtype == torch.bool or target.is_complex():
        raise TypeError("powergrad %s: target must be integer class indices or floating probabilities, not %s"
                        % (what, target.dtype))
    if tuple(target.shape) != lead:
        raise ValueError("powergrad %s: class-index target has shape %s; logits %s (classes last) need %s"
                         % (what, tuple(target.shape), tuple(logits.shape), lead))
    t = target if two_d else target.reshape(-1)
    if t.dtype not in (torch.int32, torch.int64):
        t = t.long()
    return logits if two_d else logits.reshape(-1, cols), t, lead, False


_REDUCTION_NAMES = {"none": "none", "mean": "mean", "sum": "sum", 0: "none", 1: "mean", 2: "sum"}
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _direct_ok(*tensors):
    """Whether eager mode may run the ops' work directly (powergrad.torch._ops.eager_fused) instead of
    through the dispatcher: plain tensors (no subclass such as DTensor or FakeTensor, whose behaviour
    lives in the dispatcher) and no torch-function mode, dispatch mode or functorch transform active.
    Then the dispatcher would reach the same Python implementation with the same arguments; skipping
    it saves most of a small call's time (docs/python.md, per-call overhead)."""
    if (torch._C._is_torch_function_mode_enabled() or torch._C._len_torch_dispatch_stack()
            or torch._C._are_functorch_transforms_active()):
        return False
    for a in tensors:
        if a is not None and type(a) not in _PLAIN:
            return False
    return True


def _check_grad_scale(grad_scale, reduction, rows):
    """(tensor or None, float): None, a positive finite float (rounded to fp32), or a floating tensor
    with one element (or, for 'none', one per row), read on the device."""
    if grad_scale is None:
        return None, 1.0
    if isinstance(grad_scale, torch.Tensor):
        n = grad_scale.numel()
        if not grad_scale.is_floating_point() or not (n == 1 or (reduction == "none" and n == rows
                                                                  and grad_scale.dim() == 1)):
            raise ValueError("powergrad cross_entropy: grad_scale must be a float, a one-element floating tensor "
                             "or (reduction='none') an [N] one; got a %s tensor of shape %s"
                             % (grad_scale.dtype, tuple(grad_scale.shape)))
        return grad_scale.detach(), 1.0
    try:
        v = float(grad_scale)
    except (TypeError, ValueError, OverflowError):
        raise ValueError("powergrad cross_entropy: grad_scale must be a float or a one-element tensor, not %r"
                         % (grad_scale,)) from None
    # Positive and finite once rounded to float32 (the kernel's type): (2^-150, 2^128 - 2^103).
    if not (_F32_ROUNDS_TO_ZERO < v < _F32_ROUNDS_TO_INF):
        raise ValueError("powergrad cross_entropy: grad_scale must be positive and finite in float32, not %r"
                         % (grad_scale,))
    return None, v


_F32_ROUNDS_TO_ZERO = 2.0 ** -150
_F32_ROUNDS_TO_INF = 2.0 ** 128 - 2.0 ** 103
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _check_int64(name, value):
    """_lib.check_int for int64_t without ctypes (the wrappers are traced by torch.compile)."""
    if type(value) is int and _INT64_MIN <= value <= _INT64_MAX:
        return value
    if isinstance(value, bool):
        value = int(value)
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError("powergrad: %s must be an integer, not %r" % (name, value)) from None
    if v < _INT64_MIN or v > _INT64_MAX:
        raise _lib.ArgumentRangeError("powergrad: %s = %d does not fit int64_t (range [%d, %d])"
                                      % (name, v, _INT64_MIN, _INT64_MAX))
    return v


def _check_float(name, value):
    """float(value); the library checks the range (and names the argument)."""
    if type(value) is float:
        return value
    if isinstance(value, torch.Tensor):
        raise TypeError("powergrad: %s must be a Python number, not a tensor" % name)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError("powergrad: %s must be a real number, not %r" % (name, value)) from None


def _check_options(what, weight, z_loss_scale, softcap, cols, device):
    """(weight or None, z_loss_scale, softcap) after the checks of docs/design.md §2.5 that need no
    look at the weights' values (the library checks those: finite and >= 0, naming ``weight``); every
    error names the argument."""
    if weight is not None:
        if not isinstance(weight, torch.Tensor):
            raise TypeError("powergrad %s: weight must be a 1-D floating torch.Tensor of length C = %d, not %s"
                            % (what, cols, type(weight).__name__))
        if not weight.is_floating_point():
            raise TypeError("powergrad %s: weight must be floating (it is read as float32), not %s"
                            % (what, weight.dtype))
        if weight.dim() != 1 or weight.shape[0] != cols:
            raise ValueError("powergrad %s: weight must have shape [%d] (one per class), not %s"
                             % (what, cols, tuple(weight.shape)))
        if weight.device != device:
            raise ValueError("powergrad %s: weight is on %s, logits on %s" % (what, weight.device, device))
        if weight.requires_grad and torch.is_grad_enabled():
            # As F.cross_entropy, which refuses a weight that requires grad: class weights are constants.
            raise ValueError("powergrad %s: weight requires grad, but class weights are not differentiated "
                             "(as in F.cross_entropy); pass weight.detach()" % what)
    z = _check_float("z_loss_scale", z_loss_scale)
    if not (math.isfinite(z) and z >= 0.0):
        raise ValueError("powergrad %s: z_loss_scale must be finite and >= 0 (0 is off), not %r" % (what, z_loss_scale))
    if softcap is None:
        sc = 0.0
    else:
        sc = _check_float("softcap", softcap)
        if not (math.isfinite(sc) and sc >= 0.0):
            raise ValueError("powergrad %s: softcap must be None, 0 (off) or finite and > 0, not %r"
                             % (what, softcap))
    return weight, z, sc


def _accuracy(correct, t, ignore_index):
    """sum(correct) / n_valid over the non-ignored rows, float32 0-d, on the device (no host sync)."""
    hits = correct.sum(dtype=torch.float32)
    n_valid = (t != ignore_index).sum(dtype=torch.float32)
    return hits / n_valid.clamp(min=1.0)


# Rows per chunk when an fp16/bf16 gradient is scaled in fp32 (bounds the fp32 temporary).
_SCALE_CHUNK_ELEMENTS = 1 << 24


def _scale_in_place(grad, ratio):
    """grad *= ratio, the product formed in fp32 and rounded once to grad's dtype, a chunk of rows at a
    time for fp16/bf16 (torch would round a float ratio to the dtype first: 65536 is inf in fp16)."""
    if ratio.dim() == 0 and ratio.device.type == "cpu" and float(ratio) == 1.0:
        # loss.backward() of a CPU loss: the stored gradient is already the answer. Reading a CPU
        # scalar costs no device synchronisation, and skipping saves a whole pass over the gradient
        # (three for fp16/bf16). On CUDA the value is not read: that would synchronise.
        return
    if grad.dtype == torch.float32:
        grad.mul_(ratio)
        return
    rows, cols = grad.shape
    step = max(1, _SCALE_CHUNK_ELEMENTS // max(1, cols))
    for r0 in range(0, rows, step):
        blk = grad[r0:r0 + step]
        f = ratio[r0:r0 + step] if ratio.dim() else ratio
        blk.copy_(blk.float().mul_(f))


class _EagerFused(torch.autograd.Function):
    """Eager mode's fused cross-entropy: the powergrad::xent op (or powergrad::xent_, writing the
    gradient over the logits), with backward scaling the stored gradient IN PLACE by grad_output /
    grad_scale (no second logits-sized buffer). torch.compile traces powergrad::xent's registered
    autograd instead, whose backward is functional (the compiler plans the buffers)."""

    @staticmethod
    def forward(ctx, logits, target, options):
        # The settings travel as one tuple: Function.apply inspects each of its arguments, so fewer
        # arguments is a cheaper call. grad_scale and weight are constants (detached / refused when they
        # require grad), so autograd need not see them.
        alpha, ignore_index, label_smoothing, reduction, write_over, compute_lse, grad_scale, grad_scale_value, \
            weight, z_loss_scale, softcap, compute_z_loss, compute_accuracy, direct = options
        if direct:  # the ops' work without the dispatcher (see _direct_ok)
            loss, grad, z_loss, argmax, correct = _ops.eager_fused(
                logits, target, alpha, ignore_index, label_smoothing, reduction, write_over, True, grad_scale,
                grad_scale_value, weight, z_loss_scale, softcap, compute_z_loss, compute_accuracy)
            lse = None
            if write_over:
                bump_version(logits)
        elif write_over:
            loss, z_loss, argmax, correct = _ops_ns.xent_(
                logits, target, alpha, ignore_index, label_smoothing, reduction, grad_scale, grad_scale_value,
                weight, z_loss_scale, softcap, compute_z_loss, compute_accuracy)
            bump_version(logits)  # a backward that saved the logits now raises instead of reading the gradient
            grad, lse = logits, None
        else:
            loss, grad, lse, z_loss, argmax, correct = _ops_ns.xent(
                logits, target, alpha, ignore_index, label_smoothing, reduction, True, compute_lse, grad_scale,
                grad_scale_value, weight, z_loss_scale, softcap, compute_z_loss, compute_accuracy)
        ctx.grad = grad
        ctx.reduction = reduction
        ctx.grad_scale = grad_scale
        ctx.grad_scale_value = grad_scale_value
        ctx.target_info = (label_smoothing, target.dtype, weight, softcap) if compute_lse else None
        if compute_lse:
            ctx.save_for_backward(logits, lse)
        if compute_z_loss or compute_accuracy:
            extras = tuple(e for e in (z_loss, argmax, correct) if e is not None)
            if extras:
                ctx.mark_non_differentiable(*extras)
            return loss, z_loss, argmax, correct
        return loss

    @staticmethod
    def backward(ctx, grad_output, *_extras):
        c.no_double_backward("cross_entropy")
        grad = ctx.grad
        if grad is None:
            raise RuntimeError("powergrad cross_entropy: backward ran twice through the same graph; the "
                               "gradient buffer was scaled in place the first time (call the loss again "
                               "instead of retain_graph=True, or use fused=False)")
        ctx.grad = None
        factor = _ops.row_factor(grad_output, ctx.reduction)
        # Grad mode is off here (no_double_backward raised otherwise): the in-place scaling records nothing.
        if ctx.grad_scale is None and ctx.grad_scale_value == 1.0:
            ratio = factor  # the expected upstream is 1: the ratio is the incoming gradient itself
        else:
            ratio = _ops.upstream_ratio(factor, ctx.grad_scale, ctx.grad_scale_value)
        _scale_in_place(grad, ratio)
        dtarget = None
        if ctx.target_info is not None:
            logits, lse = ctx.saved_tensors
            dtarget = _ops.target_grad(logits, lse, factor, ctx.reduction, *ctx.target_info)
        return grad, dtarget, None


def cross_entropy(logits, target, alpha=1.0, ignore_index=-100, label_smoothing=0.0, reduction="mean",
                  inplace=False, fused=True, grad_scale=None, *, weight=None, z_loss_scale=0.0, softcap=None,
                  return_z_loss=False, return_accuracy=False):
    """PGT softmax cross-entropy: F.cross_entropy's value, with the gradient softmax(alpha z) - q.

    ``logits``: ``[..., C]`` float32/float16/bfloat16 with the class dimension LAST (``[N, C]``,
    ``[B, T, V]``, or ``[C]`` for one sample), on the CPU or a CUDA device. ``target``: class
    indices of the leading shape (``[...]``, int64/int32, other integer types converted;
    ``ignore_index`` entries add nothing and are not counted by 'mean') or probabilities of the
    logits' shape (mixup/cutmix soft targets). ``alpha`` = 1 is ordinary training; the paper uses
    0.05-0.3. ``label_smoothing`` and ``reduction`` follow PyTorch; 'none' returns the leading shape.
    The loss is float32 for every logits dtype (as F.cross_entropy under autocast), so a
    mixed-precision loss scale does not overflow it; fp16/bf16 logits are read as they are (no fp32
    copy) and their gradient has their dtype.

    Unlike F.cross_entropy, K-dimensional inputs put the classes last: F.cross_entropy's
    ``[N, C, d1, ...]`` becomes ``logits.movedim(1, -1)`` here (docs/python.md).

    Like Liger-Kernel, the gradient is computed during the forward pass (one read of the logits, one
    write) into a buffer, and backward multiplies it by the incoming gradient (a scalar for 'mean' and
    'sum', per row for 'none'), in fp32, with one rounding to the logits' dtype; no host
    synchronisation. Differences from PyTorch: 'mean' over zero valid rows returns 0 (PyTorch: NaN);
    out-of-range class indices raise PowerGradError on the CPU and give a NaN loss/gradient row on
    CUDA; double backward (``create_graph=True``) raises.

    ``grad_scale`` (fused form): the incoming gradient backward is expected to receive, e.g. the
    mixed-precision loss scale (a float, or a one-element float tensor such as GradScaler's scale on
    the device, read by the kernel without synchronisation; for 'none' also an ``[N]`` tensor). The
    kernel applies it in fp32 before rounding the stored gradient, and backward multiplies by
    ``grad_output / grad_scale`` in fp32 (exact when they agree). Use it with fp16 logits and a loss
    scale: without it the stored gradient ``(p' - q) / N`` falls below fp16's range for small
    probabilities. ``fused=False`` does not need it.

    Probability targets that require grad get PyTorch's gradient, ``-(1 - label_smoothing) *
    log_softmax(logits)`` times the incoming gradient (over N for 'mean'); that is one more read of
    the logits in backward, which are then kept (and never written over by ``inplace``).

    ``inplace=True`` (eager mode) writes the gradient over ``logits`` when that is safe (see
    :func:`inplace_is_safe`), and otherwise silently uses a buffer; backward may then run only once.
    Under torch.compile it is ignored (the compiler plans the buffers).

    ``fused=False`` is the two-pass form (docs/design.md §6): forward reads the logits once for the
    loss and a per-row ``lse_alpha`` and keeps the logits; backward reads them once more and writes
    the gradient with the incoming gradient applied exactly. It ignores ``inplace`` and ``grad_scale``.

    Options (keyword-only; docs/design.md §2.5, all off by default):

    * ``weight``: class weights, a 1-D floating tensor of length C on the logits' device (read as
      float32), as F.cross_entropy's ``weight=`` for both target kinds: 'mean' divides by the summed
      weight of the non-ignored targets' classes (class targets) or by N (probability targets). Not
      differentiated: a weight that requires grad raises ValueError (as F.cross_entropy raises).
      Negative or non-finite weights raise PowerGradError naming ``weight`` on the CPU.
    * ``z_loss_scale`` (lambda >= 0): adds lambda * lse^2 per non-ignored row (PaLM's z-loss), reduced
      with the loss; its gradient 2 lambda lse p (the ordinary softmax) is part of the loss's.
    * ``softcap`` (c > 0, or None / 0 for off): the logits become c * tanh(z / c) everywhere (Gemma 2);
      the gradient carries the chain rule (computed by the library).
    * ``return_z_loss`` / ``return_accuracy``: return a :class:`CrossEntropyOutput` (``loss``,
      ``z_loss``, ``accuracy``, ``argmax``) instead of the loss alone; the extras come from the same
      pass over the logits, carry no gradient, and are computed without a host synchronisation.
      ``return_accuracy`` needs class-index targets.

    Inputs the library cannot read as they are (non-contiguous, stride-0 / expanded, misaligned) are
    copied first. Bad input (logits that are not float32/float16/bfloat16, a target of the wrong
    dtype, shape or device, ...) raises TypeError / ValueError naming the argument; integer arguments
    that do not fit int64_t (``ignore_index``) raise ``powergrad._lib.ArgumentRangeError``.
    """
    x, t, lead, dense = _check_inputs(logits, target, "cross_entropy")
    red = reduction if (type(reduction) is str and reduction in _REDUCTION_NAMES) else \
        _REDUCTION_NAMES[int(_lib.reduction_of(reduction))]
    ignore_index = _check_int64("ignore_index", ignore_index)
    alpha = _check_float("alpha", alpha)
    label_smoothing = _check_float("label_smoothing", label_smoothing)
    if weight is None and softcap is None and type(z_loss_scale) is float and z_loss_scale == 0.0:
        pass  # no options: nothing to check
    else:
        weight, z_loss_scale, softcap = _check_options("cross_entropy", weight, z_loss_scale, softcap, x.shape[1],
                                                       x.device)
    if softcap is None:
        softcap = 0.0
    want_z = bool(return_z_loss)
    want_acc = bool(return_accuracy)
    if want_acc and dense:
        raise ValueError("powergrad cross_entropy: return_accuracy needs class-index targets (a probability "
                         "target has no target class)")
    grad_on = torch.is_grad_enabled()
    compute_grad = grad_on and x.requires_grad
    compute_lse = grad_on and dense and t.requires_grad
    if not fused:
        loss, _, _, z_loss, argmax, correct = _ops_ns.xent_stats(
            x, t, alpha, ignore_index, label_smoothing, red, compute_grad, compute_lse, weight, z_loss_scale,
            softcap, want_z, want_acc)
    else:
        gs, gs_value = _check_grad_scale(grad_scale, red, x.shape[0])
        compiling = torch.compiler.is_compiling()
        if (_cpp.active() and not dense and gs is None and gs_value == 1.0 and weight is None and not z_loss_scale
                and not softcap and not want_z and not want_acc and not inplace and x.device.type == "cpu"):
            loss = _cpp.xent(x, t, alpha, ignore_index, label_smoothing, red)  # the C++ ops (_cpp.py)
        elif compute_grad and not compiling:
            write_over = inplace and not compute_lse and inplace_is_safe(x)
            out = _EagerFused.apply(x, t, (alpha, ignore_index, label_smoothing, red, write_over, compute_lse, gs,
                                           gs_value, weight, z_loss_scale, softcap, want_z, want_acc,
                                           not compute_lse and _direct_ok(x, t, gs, weight)))
            if want_z or want_acc:
                loss, z_loss, argmax, correct = out
            else:
                loss = out
        elif not compiling and not compute_lse and _direct_ok(x, t, gs, weight):
            loss, _, z_loss, argmax, correct = _ops.eager_fused(
                x, t, alpha, ignore_index, label_smoothing, red, False, compute_grad, gs, gs_value, weight,
                z_loss_scale, softcap, want_z, want_acc)
        else:
            loss, _, _, z_loss, argmax, correct = _ops_ns.xent(
                x, t, alpha, ignore_index, label_smoothing, red, compute_grad, compute_lse, gs, gs_value, weight,
                z_loss_scale, softcap, want_z, want_acc)
    if red == "none":
        loss = loss.reshape(lead)
    if not (want_z or want_acc):
        return loss
    return CrossEntropyOutput(
        loss,
        (z_loss.reshape(lead) if red == "none" else z_loss).detach() if want_z else None,
        _accuracy(correct, t, ignore_index) if want_acc else None,
        argmax.reshape(lead) if want_acc else None)


def pgt_hook(logits, target, alpha, scale=1.0, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """Register a tensor hook on ``logits`` that turns its gradient s_r (p - q) into s_r (p' - q).

    A drop-in for an existing ``F.cross_entropy(logits, target, ...)`` loss on ``[N, C]`` logits (pass
    the same ``ignore_index``, ``label_smoothing`` and ``reduction``; ``[..., C]`` logits with a
    class-last target work too)::

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
    x, t, lead, dense = _check_inputs(logits, target, "pgt_hook")
    red = _lib.reduction_of(reduction)
    ignore_index = _check_int64("ignore_index", ignore_index)
    alpha = _check_float("alpha", alpha)
    label_smoothing = _check_float("label_smoothing", label_smoothing)
    t = t.detach()
    rows, cols = x.shape
    shape = logits.shape

    def row_scale_tensor(device):
        s = scale
        s = s.detach().to(device=device, dtype=torch.float32) if isinstance(s, torch.Tensor) else \
            torch.tensor(float(s), dtype=torch.float32, device=device)
        if red == _lib.Reduction.MEAN:
            if not dense:
                n_valid = (t != ignore_index).sum().to(torch.float32)
            else:
                n_valid = torch.tensor(float(rows), device=device)
            s = s / n_valid.clamp(min=1)
        return s.reshape(-1).expand(rows) if s.numel() == 1 else s.reshape(-1)

    def hook(grad):
        c.no_double_backward("pgt_hook")
        g = grad.reshape(rows, cols)
        rs = row_scale_tensor(g.device)
        if rs.shape[0] != rows:
            raise ValueError("powergrad pgt_hook: scale has %d values for %d rows" % (rs.shape[0], rows))
        return _ops_ns.hook(g, t, rs, alpha, ignore_index, label_smoothing).reshape(shape)

    return logits.register_hook(hook)
