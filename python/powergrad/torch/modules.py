"""nn.Module losses: PGT cross-entropy as a drop-in for nn.CrossEntropyLoss and for timm's
SoftTargetCrossEntropy / LabelSmoothingCrossEntropy (mixup/cutmix soft targets)."""

import torch

from .functional import cross_entropy

__all__ = ["CrossEntropyLoss"]


def _legacy_reduction(size_average, reduce):
    # nn.CrossEntropyLoss's deprecated size_average / reduce arguments, mapped as torch maps them.
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    if not reduce:
        return "none"
    return "mean" if size_average else "sum"


class CrossEntropyLoss(torch.nn.Module):
    """PGT softmax cross-entropy (arXiv 2111.12495) with nn.CrossEntropyLoss's arguments, plus ``alpha``.

    ``loss_fn = CrossEntropyLoss(alpha=0.3, label_smoothing=0.1)``; ``loss_fn(logits, target)`` with
    ``logits`` ``[..., C]`` (classes last, e.g. ``[N, C]`` or ``[B, T, V]``) and ``target`` class indices
    of the leading shape or probabilities of the logits' shape (mixup/cutmix). The loss value is
    ordinary cross-entropy, float32 for every logits dtype; the gradient is softmax(alpha z) - q.
    ``alpha=1`` is nn.CrossEntropyLoss (with classes last).

    ``weight`` (class weights, a 1-D floating tensor of length C) is nn.CrossEntropyLoss's: registered
    as a buffer (so ``.to(device)`` moves it) and not differentiated.

    Keyword-only options: ``alpha``, ``fused`` (False: the two-pass form), ``inplace`` (write the
    gradient over the logits when safe, eager mode), ``grad_scale`` (the expected incoming
    gradient, e.g. a GradScaler's scale tensor), ``z_loss_scale``, ``softcap``, ``return_z_loss`` and
    ``return_accuracy`` (forward then returns a :class:`powergrad.torch.CrossEntropyOutput`); see
    :func:`powergrad.torch.cross_entropy`.
    """

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
                 label_smoothing=0.0, *, alpha=1.0, fused=True, inplace=False, grad_scale=None, z_loss_scale=0.0,
                 softcap=None, return_z_loss=False, return_accuracy=False):
        super().__init__()
        if weight is not None and not isinstance(weight, torch.Tensor):
            raise TypeError("powergrad CrossEntropyLoss: weight must be a 1-D floating torch.Tensor, not %s"
                            % type(weight).__name__)
        if weight is not None and (weight.dim() != 1 or not weight.is_floating_point()):
            raise ValueError("powergrad CrossEntropyLoss: weight must be a 1-D floating tensor (one per class), "
                             "not %s of shape %s" % (weight.dtype, tuple(weight.shape)))
        self.register_buffer("weight", weight)
        if size_average is not None or reduce is not None:
            reduction = _legacy_reduction(size_average, reduce)
        if reduction not in ("none", "mean", "sum"):
            raise ValueError("powergrad CrossEntropyLoss: reduction must be 'none', 'mean' or 'sum', not %r"
                             % (reduction,))
        self.ignore_index = int(ignore_index)
        self.reduction = reduction
        self.label_smoothing = float(label_smoothing)
        self.alpha = float(alpha)
        self.fused = bool(fused)
        self.inplace = bool(inplace)
        self.grad_scale = grad_scale
        self.z_loss_scale = float(z_loss_scale)
        self.softcap = None if softcap is None else float(softcap)
        self.return_z_loss = bool(return_z_loss)
        self.return_accuracy = bool(return_accuracy)

    def forward(self, input, target):
        return cross_entropy(input, target, alpha=self.alpha, ignore_index=self.ignore_index,
                             label_smoothing=self.label_smoothing, reduction=self.reduction, inplace=self.inplace,
                             fused=self.fused, grad_scale=self.grad_scale, weight=self.weight,
                             z_loss_scale=self.z_loss_scale, softcap=self.softcap, return_z_loss=self.return_z_loss,
                             return_accuracy=self.return_accuracy)

    def extra_repr(self):
        s = "alpha=%g, reduction=%r" % (self.alpha, self.reduction)
        if self.label_smoothing:
            s += ", label_smoothing=%g" % self.label_smoothing
        if self.ignore_index != -100:
            s += ", ignore_index=%d" % self.ignore_index
        if not self.fused:
            s += ", fused=False"
        if self.weight is not None:
            s += ", weight=[%d]" % self.weight.shape[0]
        if self.z_loss_scale:
            s += ", z_loss_scale=%g" % self.z_loss_scale
        if self.softcap:
            s += ", softcap=%g" % self.softcap
        return s
