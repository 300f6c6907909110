"""Vocab-parallel (tensor-parallel) PGT cross-entropy on torch.distributed: the split form of
docs/design.md §2.3 (one all_gather of 32 bytes per row per rank).

An autograd.Function in eager mode (its collectives run through torch.distributed, outside the
torch.library ops; docs/python.md).
"""

import ctypes

import torch

from .. import _lib
from . import _common as c

__all__ = ["vocab_parallel_cross_entropy"]


def _f32_bits(v):
    import struct
    return struct.unpack("<i", struct.pack("<f", float(v)))[0]


def _shard_metadata(rows, vocab_start, width, vocab_size, alpha, ignore_index, label_smoothing, reduction,
                    weighted=False, z_loss_scale=0.0, softcap=0.0):
    """What every rank must agree on (and its own shard), as integers."""
    return [int(rows), int(vocab_start), int(width), int(vocab_size), _f32_bits(alpha), int(ignore_index),
            _f32_bits(label_smoothing), int(_lib.reduction_of(reduction)), int(bool(weighted)),
            _f32_bits(z_loss_scale), _f32_bits(softcap)]


def _check_shards(metas):
    """The same problem on every rank, and shards that tile [0, vocab_size): else a message (every
    rank computes the same one from the same gathered metadata, so all raise together)."""
    first = metas[0]
    for r, m in enumerate(metas):
        if m[0] != first[0]:
            return "rank %d has %d rows, rank 0 has %d" % (r, m[0], first[0])
        if m[3] != first[3]:
            return "rank %d says vocab_size %d, rank 0 says %d" % (r, m[3], first[3])
        if m[4:] != first[4:]:
            return ("rank %d uses other alpha / ignore_index / label_smoothing / reduction / weight (given or "
                    "not) / z_loss_scale / softcap than rank 0" % r)
        if m[1] < 0 or m[2] < 0:
            return "rank %d has a negative vocab_start (%d) or width (%d)" % (r, m[1], m[2])
    spans = sorted((m[1], m[1] + m[2], r) for r, m in enumerate(metas) if m[2] > 0)
    pos = 0
    for a, b, r in spans:
        if a != pos:
            return ("vocab shards do not tile [0, %d): rank %d starts at %d where %d was expected"
                    % (first[3], r, a, pos))
        pos = b
    if pos != first[3]:
        return "vocab shards cover [0, %d) of vocab_size %d" % (pos, first[3])
    return None


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, vocab_start, vocab_size, alpha, ignore_index, label_smoothing, reduction,
                group, check, weight, z_loss_scale, softcap, want_z, want_acc):
        import torch.distributed as dist
        red = _lib.reduction_of(reduction)
        world = dist.get_world_size(group)
        x = logits if (c.row_layout(logits) and logits.shape[1] > 0 and c.aligned(logits)) else c.c_tensor(logits)
        rows, width = x.shape
        dev = x.device
        if check:
            meta = torch.tensor(_shard_metadata(rows, vocab_start, width, vocab_size, alpha, ignore_index,
                                                label_smoothing, reduction, weight is not None, z_loss_scale,
                                                softcap), dtype=torch.int64, device=dev)
            metas = [torch.empty_like(meta) for _ in range(world)]
            dist.all_gather(metas, meta, group=group)
            err = _check_shards([m.tolist() for m in metas])
            if err:
                raise ValueError("powergrad vocab_parallel_cross_entropy: " + err)
        # An empty shard stands in as one phantom column: its statistics are the merge identity and
        # the gradient it writes is discarded.
        empty = width == 0
        xs = torch.zeros((rows, 1), dtype=x.dtype, device=dev) if empty else x
        w = weight
        if w is not None and empty:
            w = torch.zeros(1, dtype=torch.float32, device=dev)  # the phantom column's (its gradient is dropped)
        p, _keep_inputs = c.problem(xs, target, alpha, ignore_index, label_smoothing, reduction,
                                    col_offset=0 if empty else int(vocab_start), total_cols=int(vocab_size),
                                    weight=w, z_loss_scale=z_loss_scale, softcap=softcap)
        _, stream = c.device_and_stream(xs)
        # pg_row_stats_t: 32 bytes, 6 floats then an int64 (docs/design.md §2.3).
        stats = torch.empty((rows, 8), dtype=torch.float32, device=dev)
        if empty:
            stats[:, 0] = float("-inf")
            stats[:, 1:6] = 0.0
            stats.view(torch.int64)[:, 3] = 2 ** 63 - 1  # argmax of no column: the merge identity
        elif rows:
            c.call(dev, "pg_xent_shard_stats", ctypes.byref(p), c.vp(stats), stream)
        # The one collective of the op: 32 bytes per row from every rank.
        parts = torch.empty((world, rows, 8), dtype=torch.float32, device=dev)
        dist.all_gather(list(parts.unbind(0)), stats, group=group)
        merged = torch.empty((rows, 8), dtype=torch.float32, device=dev)
        dev_kind = _lib.Device.CUDA if dev.type == "cuda" else _lib.Device.HOST
        if rows:
            c.call(dev, "pg_xent_merge_stats", int(dev_kind), c.vp(parts), world, rows, ctypes.c_float(alpha),
                   c.vp(merged), stream)
        loss = torch.empty(rows if red == _lib.Reduction.NONE else 1, dtype=torch.float32, device=dev)
        grad = torch.empty(xs.shape, dtype=x.dtype, device=dev)
        ws, ws_bytes = c.workspace(xs, reduction)
        z_loss = torch.empty((rows if red == _lib.Reduction.NONE else 1) if want_z else 0, dtype=torch.float32,
                             device=dev)
        argmax = torch.empty(rows if want_acc else 0, dtype=torch.int64, device=dev)
        correct = torch.empty(rows if want_acc else 0, dtype=torch.int32, device=dev)
        out = c.outputs(loss=c.vp(loss), lse=None, lse_alpha=None, dlogits=c.vp(grad), ld_dlogits=xs.shape[1],
                        z_loss=c.vp(z_loss) if want_z else None, argmax=c.vp(argmax) if want_acc else None,
                        correct=c.vp(correct) if want_acc else None)
        up = c.upstream(1.0, None)
        c.call(dev, "pg_xent_shard_apply", ctypes.byref(p), c.vp(merged), ctypes.byref(up), ctypes.byref(out),
               c.vp(ws), ws_bytes, stream)
        ctx.grad = grad[:, :0] if empty else grad
        ctx.reduction = red
        loss = loss if red == _lib.Reduction.NONE else loss.reshape(())  # float32, as cross_entropy
        if want_z or want_acc:
            z_loss = z_loss if red == _lib.Reduction.NONE or not want_z else z_loss.reshape(())
            ctx.mark_non_differentiable(z_loss, argmax, correct)
            return loss, z_loss, argmax, correct
        return loss

    @staticmethod
    def backward(ctx, grad_output, *_extras):
        c.no_double_backward("vocab_parallel_cross_entropy")
        grad = ctx.grad
        ctx.grad = None
        go = grad_output.to(torch.float32)
        scaled = grad.float() * (go.reshape(-1, 1) if ctx.reduction == _lib.Reduction.NONE else go.reshape(()))
        return (scaled.to(grad.dtype),) + (None,) * 14


def vocab_parallel_cross_entropy(logits, target, vocab_start, vocab_size, alpha=1.0, ignore_index=-100,
                                 label_smoothing=0.0, reduction="mean", group=None, check=True, *, weight=None,
                                 z_loss_scale=0.0, softcap=None, return_z_loss=False, return_accuracy=False):
    """PGT cross-entropy over a vocabulary sharded by columns across the ranks of ``group``
    (tensor parallelism; docs/design.md §2.3).

    Each rank passes its shard ``logits`` ``[N, width]`` (columns ``[vocab_start, vocab_start + width)``
    of the full ``[N, vocab_size]`` logits; ``width`` may be 0 and may differ between ranks) and the
    same global class ``target`` ``[N]``. The op computes this shard's partial row statistics (max, two
    exponential sums, target term), exchanges them with ONE ``all_gather`` on ``group`` (32 bytes per
    row per rank, whatever the vocabulary size), merges them in rank order (the same bits on every
    rank) and writes the shard's gradient and the loss; every rank returns the same loss, equal to the
    unsharded :func:`cross_entropy` to rounding (float32, as there). Backward scales the gradient by
    the incoming one, in fp32.

    ``check=True`` first all-gathers eight integers per rank (and reads them on the host: one
    synchronisation; pass ``check=False`` once a setup is known good) and raises ``ValueError`` on every rank
    (never hangs) when ranks disagree on rows, vocab_size, alpha, ignore_index, label smoothing or
    reduction, or when the shards do not tile ``[0, vocab_size)``. Class-index targets only.

    The options of :func:`cross_entropy` (docs/design.md §2.5) work here too: ``weight`` is sharded like
    the logits (this rank's ``[width]`` weights, columns ``[vocab_start, vocab_start + width)``; every
    rank passes weights or none does), ``z_loss_scale``, ``softcap``, and ``return_z_loss`` /
    ``return_accuracy`` (a :class:`powergrad.torch.CrossEntropyOutput`, the same on every rank, from
    the merged statistics: no further collective). ``check=True`` also checks that the ranks agree on
    them.
    """
    if logits.dim() != 2:
        raise ValueError("powergrad vocab_parallel_cross_entropy: logits must be 2-D [N, width]")
    if target.dim() != 1:
        raise ValueError("powergrad vocab_parallel_cross_entropy: target must be [N] class indices")
    if logits.dtype not in c.DTYPES:
        raise TypeError("powergrad vocab_parallel_cross_entropy: logits must be float32, float16 or bfloat16, "
                        "not %s" % logits.dtype)
    if target.device != logits.device:
        raise ValueError("powergrad vocab_parallel_cross_entropy: target is on %s, logits on %s"
                         % (target.device, logits.device))
    if target.shape[0] != logits.shape[0]:
        raise ValueError("powergrad vocab_parallel_cross_entropy: target has %d entries for %d rows"
                         % (target.shape[0], logits.shape[0]))
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError("powergrad vocab_parallel_cross_entropy: target must be integer class indices, not %s"
                        % target.dtype)
    _lib.reduction_of(reduction)
    from .functional import CrossEntropyOutput, _accuracy, _check_options
    weight, z_loss_scale, softcap = _check_options("vocab_parallel_cross_entropy", weight, z_loss_scale, softcap,
                                                   logits.shape[1], logits.device)
    want_z, want_acc = bool(return_z_loss), bool(return_accuracy)
    # Integers that do not fit int64_t raise here, before any collective (ctypes would wrap them).
    vocab_start = _lib.check_int("vocab_start", vocab_start)
    vocab_size = _lib.check_int("vocab_size", vocab_size)
    ignore_index = _lib.check_int("ignore_index", ignore_index)
    out = _VocabParallelCrossEntropy.apply(logits, target, vocab_start, vocab_size, float(alpha), ignore_index,
                                           float(label_smoothing), reduction, group, bool(check), weight,
                                           z_loss_scale, softcap, want_z, want_acc)
    if not (want_z or want_acc):
        return out
    loss, z_loss, argmax, correct = out
    return CrossEntropyOutput(loss, z_loss if want_z else None,
                              _accuracy(correct, target, ignore_index) if want_acc else None,
                              argmax if want_acc else None)
