"""PyTorch integration (PyTorch >= 2.4): PGT cross-entropy as torch.library custom ops that
torch.compile traces (``fullgraph=True``), an nn.Module loss, the gradient hook, the gradient-bucket
transforms, the DDP communication hook and vocab-parallel cross-entropy.

Switching a model's loss to PGT::

    from powergrad.torch import CrossEntropyLoss
    loss_fn = CrossEntropyLoss(alpha=0.3)       # instead of nn.CrossEntropyLoss()

The forward value is ordinary cross-entropy; only the gradient changes (softmax(alpha z) - q instead
of softmax(z) - q). CPU tensors run on the library's host backend, CUDA tensors on its device kernels
on the current stream (no host synchronisation, device workspace from the caching allocator).

Modules: ``functional`` (cross_entropy, pgt_hook), ``modules`` (CrossEntropyLoss), ``buckets``
(power_grad_, clip_grad_norm_, adaptive_clip_grad_), ``ddp`` (PGTCommHookState, pgt_comm_hook),
``tp`` (vocab_parallel_cross_entropy), ``tp_linear`` (vocab_parallel_linear_cross_entropy: the
linear cross-entropy over a vocabulary-sharded weight); ``_ops`` registers the ops (namespace ``powergrad``) and
``_inplace`` holds the in-place safety rule. docs/python.md has the details.
"""

import torch as _torch

if tuple(int(v) for v in _torch.__version__.split("+")[0].split(".")[:2]) < (2, 4):
    raise ImportError("powergrad.torch needs PyTorch >= 2.4 (torch.library.custom_op, register_fake, "
                      "register_autograd, opcheck); this is PyTorch %s" % _torch.__version__)

from . import _ops  # noqa: E402,F401  (registers torch.ops.powergrad.*)
from ._inplace import inplace_is_safe  # noqa: E402
from .buckets import adaptive_clip_grad_, clip_grad_norm_, power_grad_  # noqa: E402
from .ddp import PGTCommHookState, pgt_comm_hook  # noqa: E402
from .functional import CrossEntropyOutput, cross_entropy, pgt_hook  # noqa: E402
from .modules import CrossEntropyLoss  # noqa: E402
from .tp import vocab_parallel_cross_entropy  # noqa: E402
from ._cpp import active as cpp_ops_active, enable as use_cpp_ops  # noqa: E402

__all__ = ["cross_entropy", "CrossEntropyOutput", "pgt_hook", "inplace_is_safe", "power_grad_", "clip_grad_norm_",
           "adaptive_clip_grad_", "PGTCommHookState", "pgt_comm_hook", "vocab_parallel_cross_entropy",
           "CrossEntropyLoss", "use_cpp_ops", "cpp_ops_active"]

# ---- Further re-exports (modules added next to these, e.g. a fused linear + cross-entropy) go here. ----
from .._torch_linear import LinearCrossEntropyLoss, linear_cross_entropy  # noqa: E402
from .tp_linear import vocab_parallel_linear_cross_entropy  # noqa: E402

__all__ += ["linear_cross_entropy", "LinearCrossEntropyLoss", "vocab_parallel_linear_cross_entropy"]
