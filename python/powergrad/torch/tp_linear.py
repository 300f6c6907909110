"""Vocab-parallel (tensor-parallel) PGT linear cross-entropy on torch.distributed: the split form of
the linear cross-entropy (docs/design.md §2.6) over a vocabulary-sharded classifier weight.

Each rank holds the rows ``[vocab_start, vocab_start + width)`` of ``W`` (and of the bias and the
class weights) and the same hidden states and targets. Per chunk of rows it computes
``z_shard = h W_shard^T + b_shard`` and the shard's 32-byte row statistics
(``pg_linear_xent_shard_stats``); ONE ``all_gather`` of those statistics (32 bytes per row per rank,
whatever the vocabulary) and the library's merge (``pg_xent_merge_stats``, rank order: the same bits
on every rank) give every rank the whole rows' statistics; a second pass over the chunks recomputes
``z_shard`` and applies them (``pg_linear_xent_shard_apply``): the loss (the same on every rank),
``dW_shard``, ``db_shard`` and the rank's partial ``dh = G_shard W_shard``. Autograd all-reduces
``dh`` over the group (a sum, in fp32) in backward. The logits never exist, on any rank.

An autograd.Function in eager mode (its collectives run through torch.distributed).
"""

import ctypes

import torch

from .. import _lib
from .._torch_linear import (_Call, _DTYPES, _c2d, _check_options, _extras_dict, _no_double_backward,
                             _with_extras)
from . import _common as c
from .tp import _check_shards, _f32_bits

__all__ = ["vocab_parallel_linear_cross_entropy"]


def _metadata(rows, hidden_dim, vocab_start, width, vocab_size, alpha, ignore_index, label_smoothing, reduction,
              z_loss_scale, softcap, has_bias, has_class_weight, dense):
    """What every rank must agree on (and its own shard), as integers; the layout of tp.py's first
    eight, then the linear problem's own."""
    return [int(rows), int(vocab_start), int(width), int(vocab_size), _f32_bits(alpha), int(ignore_index),
            _f32_bits(label_smoothing), int(_lib.reduction_of(reduction)), int(hidden_dim), _f32_bits(z_loss_scale),
            _f32_bits(softcap), int(has_bias), int(has_class_weight), int(dense)]


def _check(metas):
    err = _check_shards(metas)
    if err:
        return err
    names = ("hidden size", "z_loss_scale", "softcap", "a bias (or none)", "class weights (or none)",
             "the target kind")
    for r, m in enumerate(metas):
        for i, name in enumerate(names):
            if m[8 + i] != metas[0][8 + i]:
                return "rank %d differs from rank 0 in %s" % (r, name)
    return None


def _exchange(group, meta, dev):
    import torch.distributed as dist
    world = dist.get_world_size(group)
    t = torch.tensor(meta, dtype=torch.int64, device=dev)
    metas = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(metas, t, group=group)
    return [m.tolist() for m in metas]


class _VocabParallelLinearCrossEntropy(torch.autograd.Function):
    """Fused (mean / sum, the default): forward computes the loss and every gradient for an upstream of
    1; backward scales them by grad_output in fp32 and all-reduces dh. Two-pass ('none', or
    fused=False): forward computes the loss; backward runs the apply call again with grad_output as
    the upstream values, using the merged statistics kept from forward (no second exchange)."""

    @staticmethod
    def forward(ctx, h, w, b, target, class_weight, vocab_start, vocab_size, alpha, ignore_index, label_smoothing,
                reduction, z_loss_scale, softcap, fused, chunk_rows, workspace_bytes, extras, group):
        import torch.distributed as dist
        world = dist.get_world_size(group)
        dev = h.device
        rows = h.shape[0]
        width = w.shape[0]
        # An empty shard stands in as one phantom class with a zero weight row: its statistics are
        # replaced by the merge identity, its gradient columns are discarded, and G W_phantom = 0
        # adds nothing to dh. The apply step reads every row-level value from the merged statistics.
        empty = width == 0
        ws_ = torch.zeros((1, h.shape[1]), dtype=h.dtype, device=dev) if empty else w
        bs_ = None if b is None else (torch.zeros(1, dtype=h.dtype, device=dev) if empty else b)
        cw_ = None if class_weight is None else (torch.zeros(1, dtype=torch.float32, device=dev) if empty
                                                 else class_weight)
        tg = target
        if target.is_floating_point() and empty:
            tg = torch.zeros((rows, 1), dtype=h.dtype, device=dev)
        call = _Call(h, ws_, bs_, tg, alpha, ignore_index, label_smoothing, reduction, cw_, z_loss_scale, softcap,
                     vocab_offset=0 if empty else vocab_start, total_vocab=vocab_size)
        want_dh = ctx.needs_input_grad[0]
        want_dw = ctx.needs_input_grad[1] and not empty
        want_db = b is not None and ctx.needs_input_grad[2] and not empty
        any_grad = want_dh or want_dw or want_db
        fused = call.red != _lib.Reduction.NONE and (fused is None or fused)
        chunk, n = call.plan(want_dh, want_dw, want_db, chunk_rows, workspace_bytes)
        if empty or rows == 0:
            stats = torch.empty((rows, 8), dtype=torch.float32, device=dev)
            stats[:, 0] = float("-inf")
            stats[:, 1:6] = 0.0
            stats.view(torch.int64)[:, 3] = 2 ** 63 - 1  # argmax of no column: the merge identity
        else:
            stats = call.stats(chunk, n)
        # The one collective of the forward pass: 32 bytes per row from every rank.
        parts = torch.empty((world, rows, 8), dtype=torch.float32, device=dev)
        dist.all_gather(list(parts.unbind(0)), stats, group=group)
        merged = torch.empty((rows, 8), dtype=torch.float32, device=dev)
        if rows:
            _, stream = c.device_and_stream(h)
            dev_kind = _lib.Device.CUDA if dev.type == "cuda" else _lib.Device.HOST
            c.call(dev, "pg_xent_merge_stats", int(dev_kind), c.vp(parts), world, rows, ctypes.c_float(alpha),
                   c.vp(merged), stream)
        ctx.fused = fused
        ctx.wants = (want_dh, want_dw, want_db)
        ctx.shapes = (tuple(w.shape), None if b is None else tuple(b.shape))
        ctx.dtypes = (w.dtype, None if b is None else b.dtype)
        ctx.chunk = (chunk, workspace_bytes)
        ctx.group = group
        if fused and any_grad:
            loss, dh, dw, db, ex = call.run(True, want_dh, want_dw, want_db, None, chunk, None, extras, merged)
            ctx.grads = (dh, dw, db)
            ctx.call = None
        else:
            loss, _, _, _, ex = call.run(True, False, False, False, None, chunk, None, extras, merged)
            ctx.grads = None
            ctx.call = call if any_grad else None
            ctx.merged = merged if any_grad else None
        ctx.consumed = False
        return _with_extras(ctx, loss if call.red == _lib.Reduction.NONE else loss.reshape(()), ex, dev)

    @staticmethod
    def backward(ctx, grad_output, *unused):
        import torch.distributed as dist
        _no_double_backward()
        if ctx.consumed:
            raise RuntimeError("powergrad vocab_parallel_linear_cross_entropy: backward ran twice through the same "
                               "graph (call the loss again instead of retain_graph=True)")
        ctx.consumed = True
        want_dh, want_dw, want_db = ctx.wants
        wdt, bdt = ctx.dtypes
        dh = dw = db = None
        if ctx.fused:
            dh, dw, db = ctx.grads
            ctx.grads = None
            g = grad_output.detach().to(torch.float32).reshape(())
            dh = None if dh is None else dh.to(torch.float32) * g
            dw = None if dw is None else dw * g
            db = None if db is None else db * g
        elif ctx.call is not None:
            call, merged = ctx.call, ctx.merged
            ctx.call = ctx.merged = None
            _, dh, dw, db, _ = call.run(False, want_dh, want_dw, want_db, grad_output, ctx.chunk[0], None, False,
                                        merged)
            dh = None if dh is None else dh.to(torch.float32)
        if want_dh:
            # dh = sum over the shards of G_shard W_shard: every rank adds its partial (fp32).
            dist.all_reduce(dh, op=dist.ReduceOp.SUM, group=ctx.group)
            dh = dh.to(wdt)
        wshape, bshape = ctx.shapes
        if dw is not None:
            dw = dw.to(wdt)
        elif wshape[0] == 0:
            dw = torch.zeros(wshape, dtype=wdt, device=grad_output.device)
        if db is not None:
            db = db.to(bdt)
        elif bshape is not None and bshape[0] == 0:
            db = torch.zeros(bshape, dtype=bdt, device=grad_output.device)
        return (dh, dw, db) + (None,) * 15


def vocab_parallel_linear_cross_entropy(hidden, weight_shard, target, group=None, vocab_start=None, vocab_size=None,
                                        bias_shard=None, alpha=1.0, ignore_index=-100, label_smoothing=0.0,
                                        reduction="mean", class_weight=None, z_loss_scale=0.0, softcap=0.0,
                                        return_extras=False, fused=None, chunk_rows=None, workspace_bytes=None,
                                        check=True):
    """PGT cross-entropy of ``F.linear(hidden, W, b)`` with the classifier ``W`` sharded by rows (the
    vocabulary) across the ranks of ``group`` (tensor parallelism; docs/design.md §2.6). The logits
    never exist, on any rank.

    Every rank passes the same ``hidden`` ``[..., H]`` and ``target`` (class indices of hidden's
    leading shape, global, or dense probabilities ``[..., width]`` of the rank's own classes) and its
    shard ``weight_shard`` ``[width, H]`` = rows ``[vocab_start, vocab_start + width)`` of the full
    ``[vocab_size, H]`` weight (``width`` may differ between ranks, and be 0), with the matching
    ``bias_shard`` ``[width]`` and ``class_weight`` ``[width]`` (the class weights of its classes,
    float). ``vocab_start`` / ``vocab_size`` default to the shards in rank order (found by one
    all-gather of the widths). Every rank returns the same loss, equal to the unsharded
    :func:`linear_cross_entropy` to rounding; ``weight_shard.grad`` / ``bias_shard.grad`` receive the
    shard's gradient, and ``hidden.grad`` the full ``dh``: backward all-reduces the ranks' partial
    ``G_shard W_shard`` over ``group`` (a sum in fp32, rounded once to hidden's dtype), so every rank
    must run backward. The options (``class_weight``, ``z_loss_scale``, ``softcap``,
    ``return_extras``), ``reduction``, ``fused``, ``chunk_rows`` and ``workspace_bytes`` are those of
    :func:`linear_cross_entropy` (``extras`` agree on every rank).

    Communication: one ``all_gather`` of 32 bytes per row per rank in forward, one ``all_reduce`` of
    ``dh`` (``4 H`` bytes per row) in backward. ``check=True`` first all-gathers fourteen integers per
    rank (read on the host: one synchronisation) and raises ``ValueError`` on every rank (never
    hangs) when the ranks disagree on the problem or the shards do not tile ``[0, vocab_size)``.
    """
    op = "vocab_parallel_linear_cross_entropy"
    import torch.distributed as dist
    for name, t in (("hidden", hidden), ("weight_shard", weight_shard), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError("powergrad %s: %s must be a tensor" % (op, name))
    if hidden.dtype not in _DTYPES:
        raise TypeError("powergrad %s: hidden must be float32, float16 or bfloat16, not %s" % (op, hidden.dtype))
    if weight_shard.dtype != hidden.dtype:
        raise TypeError("powergrad %s: weight_shard is %s, hidden %s (the same dtype is needed)"
                        % (op, weight_shard.dtype, hidden.dtype))
    if hidden.dim() < 1 or weight_shard.dim() != 2:
        raise ValueError("powergrad %s: hidden must be [..., H] and weight_shard [width, H]" % op)
    H = hidden.shape[-1]
    if weight_shard.shape[1] != H:
        raise ValueError("powergrad %s: weight_shard is [%d, %d] but hidden has H = %d"
                         % (op, weight_shard.shape[0], weight_shard.shape[1], H))
    width = weight_shard.shape[0]
    if bias_shard is not None:
        if bias_shard.dim() != 1 or bias_shard.shape[0] != width:
            raise ValueError("powergrad %s: bias_shard has shape %s, expected [%d]" % (op, tuple(bias_shard.shape), width))
        if bias_shard.dtype != hidden.dtype:
            raise TypeError("powergrad %s: bias_shard is %s, hidden %s" % (op, bias_shard.dtype, hidden.dtype))
    for name, t in (("weight_shard", weight_shard), ("bias_shard", bias_shard), ("target", target)):
        if t is not None and t.device != hidden.device:
            raise ValueError("powergrad %s: %s is on %s, hidden on %s" % (op, name, t.device, hidden.device))
    z_loss_scale, softcap = _check_options(op, class_weight, z_loss_scale, softcap, width, hidden.device)
    batch_shape = hidden.shape[:-1]
    h2 = _c2d(hidden.reshape(-1, H))
    rows = h2.shape[0]
    dense = target.is_floating_point()
    if dense:
        if tuple(target.shape) != tuple(batch_shape) + (width,):
            raise ValueError("powergrad %s: dense target has shape %s, expected %s (this rank's classes)"
                             % (op, tuple(target.shape), tuple(batch_shape) + (width,)))
        t2 = target.reshape(rows, width)
    else:
        if tuple(target.shape) != tuple(batch_shape):
            raise ValueError("powergrad %s: target has shape %s, expected %s" % (op, tuple(target.shape),
                                                                                 tuple(batch_shape)))
        t2 = target.reshape(rows)
    _lib.reduction_of(reduction)
    ignore_index = _lib.check_int("ignore_index", ignore_index)
    alpha = float(alpha)
    label_smoothing = float(label_smoothing)
    if vocab_start is None or vocab_size is None:
        if vocab_start is not None or vocab_size is not None:
            raise ValueError("powergrad %s: give both vocab_start and vocab_size, or neither (rank order)" % op)
        widths = [m[0] for m in _exchange(group, [width], hidden.device)]
        rank = dist.get_rank(group)
        vocab_start, vocab_size = sum(widths[:rank]), sum(widths)
    vocab_start = _lib.check_int("vocab_start", vocab_start)
    vocab_size = _lib.check_int("vocab_size", vocab_size)
    if check:
        metas = _exchange(group, _metadata(rows, H, vocab_start, width, vocab_size, alpha, ignore_index,
                                           label_smoothing, reduction, z_loss_scale, softcap, bias_shard is not None,
                                           class_weight is not None, dense), hidden.device)
        err = _check(metas)
        if err:
            raise ValueError("powergrad %s: %s" % (op, err))
    w2 = _c2d(weight_shard)
    b2 = None if bias_shard is None else _c2d(bias_shard)
    loss, zl, am, cor = _VocabParallelLinearCrossEntropy.apply(
        h2, w2, b2, t2, class_weight, vocab_start, vocab_size, alpha, ignore_index, label_smoothing, reduction,
        z_loss_scale, softcap, fused, chunk_rows, workspace_bytes, bool(return_extras), group)
    if _lib.reduction_of(reduction) == _lib.Reduction.NONE:
        loss = loss.reshape(batch_shape)
    if not return_extras:
        return loss
    return loss, _extras_dict(zl, am, cor, reduction, batch_shape, dense)
