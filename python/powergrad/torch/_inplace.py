"""The in-place safety rule of cross_entropy(..., inplace=True): when the gradient may be written over
the logits.

PyTorch (2.4 to 2.11) has no public way to list the tensors an autograd node saved for its backward,
so the producer check below reads the nodes' ``_saved_*`` attributes (confined to this module); the
version bump after the write uses the public ``torch.autograd.graph.increment_version``, which makes
autograd reject any backward that saved the logits where this rule cannot see it.
"""

import torch

from . import _common as c


def _storage_ptr(t):
    return t.untyped_storage().data_ptr()


def _saved_tensors_of(node):
    """Tensors an autograd node saved for its backward (exposed as _saved_* attributes)."""
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
    gives the gradient, not the logits. Under torch.compile the rule is not applied (the compiler
    plans the buffers; see docs/python.md).
    """
    if not isinstance(logits, torch.Tensor) or not logits.requires_grad or logits.is_leaf:
        return False
    if logits.dtype not in c.DTYPES or logits.device.type not in ("cpu", "cuda") or not c.row_layout(logits) \
            or not c.aligned(logits):
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


def bump_version(x):
    """Marks x as modified in place (autograd then rejects a backward that saved it earlier)."""
    torch.autograd.graph.increment_version(x)
