"""DDP communication hook: average each gradient bucket, then apply a bucket transform to it
(docs/buckets.md; docs/design.md §2.4).

Runs eagerly in DDP's reducer (not traced by torch.compile); the transforms are the library's bucket
ops on the segments of the flat bucket buffer.
"""

import torch

from .. import _lib
from . import _common as c
from ._bucket_plans import bucket_for

__all__ = ["PGTCommHookState", "pgt_comm_hook"]


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
            b = bucket_for(grads, params, _lib.BucketUnits.ROWS)
            with c.on_device(b.device):
                b.plan.agc(k.get("clip", 0.01), k.get("eps", 1e-3), k.get("beta", 1.0), k.get("preserve"),
                           c.vp(b.workspace), c.vp(b.flags), b.stream())
            return
        b = bucket_for(grads, None, _lib.BucketUnits.TENSOR)
        with c.on_device(b.device):
            if self.transform == "power":
                b.plan.power(k.get("beta", 0.5), k.get("preserve", "l1"), k.get("scope", "tensor"),
                             c.vp(b.workspace), c.vp(b.flags), b.stream())
            else:
                sc = k.get("scope", "bucket")
                norms = torch.empty(b.plan.groups(sc), dtype=torch.float32, device=flat.device)
                b.plan.clip_norm(k["max_norm"], sc, c.vp(norms), c.vp(b.workspace), c.vp(b.flags), b.stream())
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
