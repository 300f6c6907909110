"""Gradient-bucket transforms over a model's gradients (docs/design.md §2.4, docs/buckets.md): the
PowerGrad power map, clip_grad_norm_ with torch's signature, and timm-style adaptive gradient clipping
(AGC, Brock et al. 2021, arXiv 2102.06171), through the powergrad::bucket_* ops of _ops.py.
"""

import collections
import math

import torch

from .. import _lib
from ..bucket import preserve_of, scope_of
from . import _ops  # noqa: F401  (registers torch.ops.powergrad.*)

__all__ = ["power_grad_", "clip_grad_norm_", "adaptive_clip_grad_"]

_ops_ns = torch.ops.powergrad
_PRESERVE_NAMES = {_lib.NormPreserve.NONE: None, _lib.NormPreserve.L1: "l1", _lib.NormPreserve.L2: "l2"}


def _scope_name(scope):
    return "bucket" if scope_of(scope) == _lib.BucketScope.BUCKET else "tensor"


def _preserve_name(preserve):
    return _PRESERVE_NAMES[preserve_of(preserve)]


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
    sc = _scope_name(scope)
    pr = _preserve_name(preserve)
    groups = _grouped(parameters)
    if sc == "bucket" and len(groups) > 1:
        raise ValueError("powergrad: scope='bucket' needs every gradient on one device with one dtype")
    for grads, _ in groups:
        _ops_ns.bucket_power_(grads, float(beta), pr, sc)


def _norm_type_of(norm_type):
    try:
        v = float(norm_type)
    except (TypeError, ValueError):
        raise TypeError("powergrad clip_grad_norm_: norm_type must be a number or 'inf', not %r" % (norm_type,)) \
            from None
    if not (v > 0):
        raise ValueError("powergrad clip_grad_norm_: norm_type must be positive (or inf), not %r" % (norm_type,))
    return v


def _torch_total_norm(groups, norm_type):
    """The total norm of the gradients with torch ops (what torch.nn.utils.get_total_norm computes)."""
    norms = [torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, norm_type) for g in grads]),
                                      norm_type).to(groups[0][0][0].device) for grads, _ in groups]
    return torch.linalg.vector_norm(torch.stack(norms), norm_type)


def _raise_if_nonfinite(total, norm_type):
    if torch.logical_or(total.isnan(), total.isinf()):  # one host synchronisation, as torch's
        raise RuntimeError("powergrad clip_grad_norm_: the total norm of order %s of the gradients is non-finite, "
                           "so it cannot be clipped (error_if_nonfinite=True)" % norm_type)


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None, *, scope="bucket",
                    group=None):
    """In place, as torch.nn.utils.clip_grad_norm_: returns the total norm (scope 'bucket'), or a 1-D
    tensor of per-gradient norms (scope 'tensor', each gradient clipped on its own, L2 only; in
    parameter order within each (device, dtype) group, groups in order of first appearance).

    * ``norm_type`` 2 (the library's fused op: one device and dtype, 3 kernels, no host sync; mixed
      groups: per-group norms from the library, the coefficient applied with torch), or any other
      positive order including ``inf`` (computed with torch ops, as torch does).
    * ``max_norm = inf`` returns the norm without touching the gradients (a common way to log it).
    * ``error_if_nonfinite=True`` checks the norm first (one host synchronisation, as in torch) and
      raises RuntimeError before anything is written.
    * ``foreach`` is accepted for signature compatibility and ignored.
    * ``group`` (a torch.distributed process group, scope 'bucket', L2): the parameters are this rank's
      share of a model sharded across the group; the squared norms are summed with one all_reduce of
      one float, and every rank clips with the global norm.
    """
    sc = _scope_name(scope)
    nt = _norm_type_of(norm_type)
    try:
        mn = float(max_norm)
    except (TypeError, ValueError):
        raise TypeError("powergrad clip_grad_norm_: max_norm must be a number, not %r" % (max_norm,)) from None
    if mn != mn or mn <= 0:
        raise ValueError("powergrad clip_grad_norm_: max_norm must be positive (or inf), not %r" % (max_norm,))
    groups = _grouped(parameters)
    if group is not None and (sc == "tensor" or nt != 2.0):
        raise ValueError("powergrad clip_grad_norm_: a process group needs scope='bucket' and norm_type=2")
    if sc == "tensor" and nt != 2.0:
        raise ValueError("powergrad clip_grad_norm_: scope='tensor' supports norm_type=2 only")
    if not groups and group is None:
        return torch.tensor(0.0)
    if sc == "bucket" and group is None and (nt != 2.0 or math.isinf(mn) or error_if_nonfinite):
        total = _torch_total_norm(groups, nt)
        if error_if_nonfinite:
            _raise_if_nonfinite(total, norm_type)
        if math.isinf(mn):
            return total
        if nt != 2.0:
            coef = torch.clamp(mn / (total + 1e-6), max=1.0)
            for grads, _ in groups:
                torch._foreach_mul_(grads, coef.to(grads[0].device))
            return total
    if math.isinf(mn):  # scope 'tensor' or a process group: the norms without clipping
        mn = 3.0e38
    if sc == "tensor" or (len(groups) == 1 and group is None):
        out = [_ops_ns.bucket_clip_norm_(grads, mn, sc) for grads, _ in groups]
        return out[0][0] if sc == "bucket" else torch.cat([o.to(out[0].device) for o in out])
    # Several groups, one global norm: per-group norms without clipping (coefficient exactly 1).
    sq = [_ops_ns.bucket_clip_norm_(grads, 3.0e38, sc).to(groups[0][0][0].device).square() for grads, _ in groups]
    if group is not None and not sq:  # this rank holds no gradient: it still takes part in the reduction
        import torch.distributed as dist
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else "cpu"
        sq = [torch.zeros(1, dtype=torch.float32, device=dev)]
    total_sq = torch.cat(sq).sum()
    if group is not None:
        import torch.distributed as dist
        dist.all_reduce(total_sq, op=dist.ReduceOp.SUM, group=group)
    total = total_sq.sqrt()
    if error_if_nonfinite:
        _raise_if_nonfinite(total, norm_type)
    coef = torch.clamp(mn / (total + 1e-6), max=1.0)
    for grads, _ in groups:
        torch._foreach_mul_(grads, coef.to(grads[0].device))
    return total


def adaptive_clip_grad_(parameters, clip_factor=0.01, eps=1e-3, beta=1.0, preserve=None):
    """In place, timm's adaptive_clip_grad (units along dim 0, whole tensor when ndim <= 1), then,
    when beta != 1 or preserve is set, the power map per unit in the same pass (the paper's AGC + PGT
    recipe uses beta = 1: AGC on the gradients, PGT in the loss)."""
    pr = _preserve_name(preserve)
    for grads, params in _grouped(parameters, with_params=True):
        _ops_ns.bucket_agc_(grads, params, float(clip_factor), float(eps), float(beta), pr)
