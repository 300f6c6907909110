"""torch.distributed (gloo, loopback, 2 processes): vocab_parallel_linear_cross_entropy, the split form of
the linear cross-entropy over a vocabulary-sharded weight (docs/design.md §2.6), against the unsharded
linear_cross_entropy and against the float64 reference on the materialised logits (PyTorch's autograd at
alpha = 1, tests/python/reference.py at alpha != 1); mismatched ranks raise on every rank."""

import datetime
import os
import tempfile
import traceback

import pytest

try:
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp
    import torch.nn.functional as F

    import reference as ref
except ImportError as e:  # pragma: no cover
    if os.environ.get("POWERGRAD_TEST_STRICT") == "1":
        raise
    pytest.skip("torch or NumPy cannot be imported (%s)" % e, allow_module_level=True)

from powergrad import _lib_linear  # noqa: E402
from powergrad.torch import linear_cross_entropy, vocab_parallel_linear_cross_entropy  # noqa: E402

ROWS, H, V = 14, 10, 37
# Per case: (vocab_start, width) per rank (None: the default, shards in rank order), and the keywords.
CASES = [
    ([(15, 22), (0, 15)], dict(alpha=0.3, label_smoothing=0.1, reduction="mean")),
    (None, dict(alpha=1.0, reduction="none", bias=False)),
    ([(0, 20), (20, 17)], dict(alpha=1.0, reduction="mean", class_weight=True, z_loss_scale=1e-2, softcap=2.5,
                               label_smoothing=0.05, return_extras=True)),
    ([(0, 20), (20, 17)], dict(alpha=0.4, reduction="sum", dense=True, fused=False)),
    ([(0, 37), (37, 0)], dict(alpha=1.0, reduction="mean", class_weight=True, return_extras=True)),  # an empty shard
]


def problem(seed=3):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(2, ROWS // 2, H, generator=g)
    w = torch.randn(V, H, generator=g) / H ** 0.5
    b = torch.randn(V, generator=g) * 0.3
    y = torch.randint(0, V, (2, ROWS // 2), generator=g)
    y.view(-1)[::4] = -100
    q = torch.softmax(torch.randn(2, ROWS // 2, V, generator=g) * 2, dim=-1)
    cw = torch.rand(V, generator=g) + 0.5
    return h, w, b, y, q, cw


def layout(case, world):
    spans, _ = case
    if spans is not None:
        return spans
    out, at = [], 0
    for r in range(world):
        wdt = V // world + (1 if r < V % world else 0)
        out.append((at, wdt))
        at += wdt
    return out


def run_one(h, w, b, y, q, cw, kw, span=None, sharded=False):
    """(loss, extras, h.grad, w.grad, b.grad) of one case, sharded (this rank's span) or not."""
    kw = dict(kw)
    use_bias = kw.pop("bias", True)
    dense = kw.pop("dense", False)
    use_cw = kw.pop("class_weight", False)
    lo, hi = (0, V) if span is None else (span[0], span[0] + span[1])
    hh = h.clone().requires_grad_(True)
    ww = w[lo:hi].clone().requires_grad_(True)
    bb = b[lo:hi].clone().requires_grad_(True) if use_bias else None
    tgt = q[..., lo:hi].contiguous() if dense else y
    cws = cw[lo:hi].clone() if use_cw else None
    if sharded:
        extra = {} if span is None or kw.pop("default_layout", False) else dict(vocab_start=span[0], vocab_size=V)
        out = vocab_parallel_linear_cross_entropy(hh, ww, tgt, bias_shard=bb, class_weight=cws, chunk_rows=4,
                                                  **extra, **kw)
    else:
        out = linear_cross_entropy(hh, ww, tgt, bias=bb, class_weight=cws, chunk_rows=5, **kw)
    loss, ex = out if kw.get("return_extras") else (out, None)
    go = torch.linspace(0.5, 1.5, loss.numel()).reshape(loss.shape) if loss.dim() else torch.tensor(1.5)
    loss.backward(go)
    return (loss.detach(), ex, hh.grad, ww.grad, None if bb is None else bb.grad)


def _init(rank, world, store_path):
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method="file://" + store_path, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))


def _run_workers(fn, world, out_dir):
    ctx = mp.get_context("spawn")
    store = os.path.join(tempfile.mkdtemp(prefix="powergrad-tpl-"), "store")
    procs = [ctx.Process(target=fn, args=(r, world, store, out_dir)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=150)
    for p in procs:
        if p.is_alive():
            p.kill()
    done = [any(f.startswith("rank%d." % r) for f in os.listdir(out_dir)) for r in range(world)]
    assert all(done), ("a worker failed or hung before writing its result", [p.exitcode for p in procs])


def _worker(rank, world, store_path, out_dir):
    _init(rank, world, store_path)
    try:
        h, w, b, y, q, cw = problem()
        results = []
        for case in CASES:
            spans, kw = case
            kw = dict(kw, default_layout=spans is None)
            results.append(run_one(h, w, b, y, q, cw, kw, span=layout(case, world)[rank], sharded=True))
        # Ranks that disagree (alpha here): a ValueError on every rank, no hang.
        half = V // 2
        lo, hi = (0, half) if rank == 0 else (half, V)
        try:
            vocab_parallel_linear_cross_entropy(h, w[lo:hi], y, vocab_start=lo, vocab_size=V, alpha=0.3 + 0.1 * rank)
            results.append("no error")
        except ValueError as e:
            results.append(str(e))
        torch.save(results, os.path.join(out_dir, "rank%d.pt" % rank))
    except Exception:
        with open(os.path.join(out_dir, "rank%d.err" % rank), "w") as f:
            f.write(traceback.format_exc())
    finally:
        dist.destroy_process_group()


def close(got, want, rtol, scale=None):
    got = np.asarray(got.detach().to(torch.float64) if isinstance(got, torch.Tensor) else got, np.float64)
    want = np.asarray(want.detach().to(torch.float64) if isinstance(want, torch.Tensor) else want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    s = float(np.abs(want).max()) if scale is None else scale
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(s, 1e-30))


def float64_reference(h, w, b, y, q, cw, kw):
    """(loss, dh, dw, db) from the materialised logits in float64: PyTorch's autograd at alpha = 1 (with
    every option), reference.py's PGT formula otherwise (cases without class weights, z-loss or softcap)."""
    kw = dict(kw)
    use_bias = kw.pop("bias", True)
    dense = kw.pop("dense", False)
    alpha, red, eps = kw.get("alpha", 1.0), kw.get("reduction", "mean"), kw.get("label_smoothing", 0.0)
    h2 = h.to(torch.float64).reshape(-1, H).requires_grad_(True)
    w2 = w.to(torch.float64).requires_grad_(True)
    b2 = b.to(torch.float64).requires_grad_(True) if use_bias else None
    n = ROWS
    go = torch.linspace(0.5, 1.5, n, dtype=torch.float64) if red == "none" else torch.tensor(1.5, dtype=torch.float64)
    yy = q.reshape(-1, V).to(torch.float64) if dense else y.reshape(-1)
    if alpha == 1.0:
        z = F.linear(h2, w2, b2)
        cap = kw.get("softcap", 0.0)
        if cap:
            z = cap * torch.tanh(z / cap)
        wt = cw.to(torch.float64) if kw.get("class_weight") else None
        ce = F.cross_entropy(z, yy, weight=wt, reduction="none", label_smoothing=eps)
        valid = torch.ones(n, dtype=torch.bool) if dense else yy != -100
        lse = torch.logsumexp(z, dim=1)
        total = ce + torch.where(valid, kw.get("z_loss_scale", 0.0) * lse * lse, torch.zeros_like(lse))
        if red != "none":
            total = total.sum()
            if red == "mean":
                total = total / (float(valid.sum()) if wt is None or dense else float(wt[yy[valid]].sum()))
        (total * go).sum().backward()
        return total.detach(), h2.grad.reshape(h.shape), w2.grad, None if b2 is None else b2.grad
    assert not (kw.get("class_weight") or kw.get("z_loss_scale") or kw.get("softcap"))
    z = (h2 @ w2.T + (0.0 if b2 is None else b2)).detach().numpy()
    up = go.numpy() if red == "none" else float(go)
    loss, G = ref.xent(z, yy.numpy(), alpha=alpha, label_smoothing=eps, reduction=red, upstream=up)
    hh, ww = h2.detach().numpy(), w2.detach().numpy()
    return torch.tensor(loss), torch.tensor(G @ ww).reshape(h.shape), torch.tensor(G.T @ hh), torch.tensor(G.sum(axis=0))


@pytest.fixture(scope="module")
def results():
    if not _lib_linear.has_host_blas():
        pytest.skip("libpowergrad was built without a host BLAS")
    out_dir = tempfile.mkdtemp(prefix="powergrad-tpl-out-")
    _run_workers(_worker, 2, out_dir)
    errs = [f for f in os.listdir(out_dir) if f.endswith(".err")]
    assert not errs, open(os.path.join(out_dir, errs[0])).read()
    return [torch.load(os.path.join(out_dir, "rank%d.pt" % r)) for r in range(2)]


@pytest.mark.parametrize("i", range(len(CASES)))
def test_sharded_equals_unsharded_and_the_float64_reference(results, i):
    case = CASES[i]
    spans, kw = case
    h, w, b, y, q, cw = problem()
    loss, ex, dh, dw, db = run_one(h, w, b, y, q, cw, kw)
    r0, r1 = results[0][i], results[1][i]
    # Every rank: the same loss, extras and full dh (all-reduced).
    assert torch.equal(r0[0], r1[0])
    assert torch.equal(r0[2], r1[2])
    if ex is not None:
        for k in ex:
            assert torch.equal(r0[1][k], r1[1][k]), k
            if k == "z_loss":
                close(r0[1][k], ex[k], 1e-5, 1e-3)
            else:
                assert torch.equal(r0[1][k], ex[k]), k
    spans = layout(case, 2)
    got_dw = torch.zeros(V, H)
    got_db = torch.zeros(V)
    for r, (lo, width) in enumerate(spans):
        got_dw[lo:lo + width] = results[r][i][3]
        if db is not None:
            got_db[lo:lo + width] = results[r][i][4]
    # Against the unsharded op (same library, another exchange-free path) ...
    close(r0[0], loss, 1e-5, 1.0)
    close(r0[2], dh, 1e-5)
    close(got_dw, dw, 1e-5)
    if db is not None:
        close(got_db, db, 1e-5)
    # ... and against the float64 reference on the materialised logits.
    rl, rdh, rdw, rdb = float64_reference(h, w, b, y, q, cw, kw)
    close(r0[0], rl.reshape(r0[0].shape), 2e-5, 1.0)
    close(r0[2], rdh, 1e-4)
    close(got_dw, rdw, 1e-4)
    if db is not None:
        close(got_db, rdb, 1e-4)


def test_mismatched_ranks_raise_on_every_rank(results):
    for r in range(2):
        msg = results[r][len(CASES)]
        assert "rank 1" in msg and "alpha" in msg, msg
