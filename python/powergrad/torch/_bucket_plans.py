"""Cached BucketPlans over torch gradients (the device workspace holding each plan is uploaded once).

Used by the bucket ops' implementations in _ops.py and by the DDP hook; runs on real tensors only.
"""

import collections

import torch

from . import _common as c

_PLAN_CACHE = collections.OrderedDict()
_PLAN_CACHE_SIZE = 64


class TorchBucket:
    """A BucketPlan over torch tensors, its device workspace (uploaded once, on the stream that is
    current when it is built; the cache keys buckets by that stream, so the workspace is only ever
    used, and freed by the caching allocator, in that stream's order) and a flags tensor."""

    def __init__(self, entries, device, dtype, units, param_dtype):
        from ..bucket import BucketPlan
        dev, stream = c.device_and_stream(torch.empty(0, device=device))
        self.plan = BucketPlan(entries, c.DTYPES[dtype], dev, units,
                               None if param_dtype is None else c.DTYPES[param_dtype])
        self.device = device
        self._stream = stream
        self.flags = torch.zeros(1, dtype=torch.int32, device=device)
        self.workspace = None
        if self.plan.workspace_bytes:
            self.workspace = torch.empty(self.plan.workspace_bytes, dtype=torch.uint8, device=device)
        self.plan.upload(c.vp(self.workspace), stream)

    def stream(self):
        return self._stream


def check_grads(grads, params=None):
    """The layout and dtype rules of the bucket transforms (errors name the argument)."""
    for g in grads:
        if g.dtype not in c.DTYPES:
            raise TypeError("powergrad: gradients must be float32, float16 or bfloat16, not %s" % g.dtype)
        if not g.is_contiguous():
            raise ValueError("powergrad: bucket transforms need contiguous gradients")
    if params is not None:
        for p in params:
            if not p.is_contiguous():
                raise ValueError("powergrad: AGC needs contiguous parameters")


def bucket_for(grads, params, units):
    """The cached TorchBucket of these gradient tensors (rebuilt when any address or size changes)."""
    check_grads(grads, params)
    g0 = grads[0]
    rows = [0] * len(grads)
    param_dtype = None
    if params is not None:
        rows = [p.shape[0] if p.dim() > 1 else 0 for p in params]
        param_dtype = params[0].dtype if params else None
    stream = torch.cuda.current_stream(g0.device).cuda_stream if g0.device.type == "cuda" else 0
    key = (int(units), str(g0.device), stream, g0.dtype, param_dtype,
           tuple((g.data_ptr(), g.numel(), r, params[i].data_ptr() if params is not None else 0)
                 for i, (g, r) in enumerate(zip(grads, rows))))
    b = _PLAN_CACHE.get(key)
    if b is None:
        entries = [(g.data_ptr(), g.numel()) if params is None else
                   (g.data_ptr(), g.numel(), params[i].data_ptr(), rows[i]) for i, g in enumerate(grads)]
        with c.on_device(g0.device):
            b = TorchBucket(entries, g0.device, g0.dtype, units, param_dtype)
        _PLAN_CACHE[key] = b
        while len(_PLAN_CACHE) > _PLAN_CACHE_SIZE:
            _PLAN_CACHE.popitem(last=False)
    else:
        _PLAN_CACHE.move_to_end(key)
    return b
