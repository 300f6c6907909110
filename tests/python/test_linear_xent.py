"""powergrad.torch.linear_cross_entropy vs torch autograd of F.cross_entropy(F.linear(h, W, b), y)
(alpha = 1) and the float64 reference on materialised logits (alpha != 1)."""

import os

import pytest

try:
    import numpy as np
    import torch
    import torch.nn.functional as F

    import reference as ref
except ImportError as e:  # pragma: no cover - depends on the machine
    if os.environ.get("POWERGRAD_TEST_STRICT") == "1":
        raise
    pytest.skip("torch or NumPy cannot be imported (%s): install python3-torch (Debian)" % e,
                allow_module_level=True)

import powergrad  # noqa: E402
from powergrad import _lib_linear  # noqa: E402
from powergrad.torch import LinearCrossEntropyLoss, linear_cross_entropy  # noqa: E402


@pytest.fixture(autouse=True)
def _needs_blas():
    if not _lib_linear.has_host_blas():
        pytest.skip("libpowergrad was built without a host BLAS")


def make(batch_shape=(3, 5), H=12, V=40, dtype=torch.float32, seed=0, bias=True, ignored=(1, 7)):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(*batch_shape, H, generator=g).to(dtype)
    w = (torch.randn(V, H, generator=g) / H ** 0.5).to(dtype)
    b = (torch.randn(V, generator=g) * 0.3).to(dtype) if bias else None
    y = torch.randint(0, V, batch_shape, generator=g)
    flat = y.reshape(-1)
    for i in ignored:
        if i < flat.numel():
            flat[i] = -100
    return h, w, b, y


def f64(t):
    return None if t is None else t.detach().to(torch.float64)


def reference(h, w, b, y, alpha, reduction="mean", label_smoothing=0.0, upstream=None):
    """(loss, dh, dw, db) in float64 from the materialised logits (tests/python/reference.py)."""
    H, V = h.shape[-1], w.shape[0]
    hh = f64(h).reshape(-1, H).numpy()
    ww = f64(w).numpy()
    z = hh @ ww.T + (0.0 if b is None else f64(b).numpy())
    yy = y.reshape(-1, V).to(torch.float64).numpy() if y.is_floating_point() else y.reshape(-1).numpy()
    loss, G = ref.xent(z, yy, alpha=alpha, label_smoothing=label_smoothing, reduction=reduction, upstream=upstream)
    return loss, (G @ ww).reshape(h.shape), G.T @ hh, G.sum(axis=0)


def close(got, want, scale, rtol):
    got = got.detach().to(torch.float64).numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


def run(h, w, b, y, **kw):
    h = h.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    b = None if b is None else b.clone().requires_grad_(True)
    loss = linear_cross_entropy(h, w, y, bias=b, **kw)
    return loss, h, w, b


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bias", [True, False])
def test_alpha_one_equals_torch_autograd(reduction, bias):
    h, w, b, y = make(bias=bias)
    loss, hg, wg, bg = run(h, w, b, y, reduction=reduction, chunk_rows=4)
    go = torch.rand(loss.shape, generator=torch.Generator().manual_seed(3)) + 0.5
    loss.backward(go)
    # torch autograd of the materialised form, in float64 (and in float32 for the loss).
    h2, w2 = f64(h).requires_grad_(True), f64(w).requires_grad_(True)
    b2 = None if b is None else f64(b).requires_grad_(True)
    t_loss = F.cross_entropy(F.linear(h2, w2, b2).reshape(-1, w.shape[0]), y.reshape(-1), reduction=reduction)
    if reduction == "none":
        t_loss = t_loss.reshape(y.shape)
    t_loss.backward(go.to(torch.float64))
    close(loss, t_loss.detach(), 1.0, 2e-5)
    close(hg.grad, h2.grad, float(h2.grad.abs().max()), 1e-4)
    close(wg.grad, w2.grad, float(w2.grad.abs().max()), 1e-4)
    if bias:
        close(bg.grad, b2.grad, float(b2.grad.abs().max()), 1e-4)
    assert loss.dtype == torch.float32


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-4), (torch.float16, 4e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("alpha", [0.0, 0.3])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_pgt_against_float64_reference(dtype, rtol, alpha, reduction):
    h, w, b, y = make(batch_shape=(2, 9), H=16, V=77, dtype=dtype, seed=1)
    loss, hg, wg, bg = run(h, w, b, y, alpha=alpha, reduction=reduction, label_smoothing=0.1, chunk_rows=5)
    go = torch.full(loss.shape, 1.7)
    loss.backward(go)
    rl, rdh, rdw, rdb = reference(h, w, b, y, alpha, reduction, 0.1, upstream=1.7)
    close(loss, np.asarray(rl).reshape(loss.shape), 1.0, max(rtol, 1e-5) / 4)
    for got, want in ((hg.grad, rdh), (wg.grad, rdw), (bg.grad, rdb)):
        assert got.dtype == dtype
        close(got, want, float(np.abs(want).max()), rtol)


def test_dense_targets_and_fused_false():
    h, w, b, _ = make(batch_shape=(11,), H=8, V=23, seed=2)
    q = torch.softmax(torch.randn(11, 23, generator=torch.Generator().manual_seed(9)), dim=1)
    for fused in (True, False):
        loss, hg, wg, bg = run(h, w, b, q, alpha=0.5, reduction="sum", fused=fused, chunk_rows=3)
        (loss * 0.25).backward()
        rl, rdh, rdw, rdb = reference(h, w, b, q, 0.5, "sum", upstream=0.25)
        close(loss, rl, 1.0, 1e-5)
        close(hg.grad, rdh, float(np.abs(rdh).max()), 1e-4)
        close(wg.grad, rdw, float(np.abs(rdw).max()), 1e-4)
        close(bg.grad, rdb, float(np.abs(rdb).max()), 1e-4)


def test_all_ignored_and_empty_batch():
    h, w, b, y = make(batch_shape=(4,), ignored=range(4))
    loss, hg, wg, bg = run(h, w, b, y, alpha=0.3)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.count_nonzero(hg.grad) == 0 and torch.count_nonzero(wg.grad) == 0 and torch.count_nonzero(bg.grad) == 0
    h0 = torch.zeros(0, 12, requires_grad=True)
    w0 = w.clone().requires_grad_(True)
    l0 = linear_cross_entropy(h0, w0, torch.zeros(0, dtype=torch.long), alpha=0.3)
    l0.backward()
    assert float(l0.detach()) == 0.0 and h0.grad.shape == (0, 12) and torch.count_nonzero(w0.grad) == 0


def test_tied_embedding_accumulates_into_weight_grad():
    V, H = 50, 16
    g = torch.Generator().manual_seed(4)
    tokens = torch.randint(0, V, (3, 7), generator=g)
    y = torch.randint(0, V, (3, 7), generator=g)
    mix = torch.randn(H, H, generator=g) / H ** 0.5
    w0 = torch.randn(V, H, generator=g) / H ** 0.5

    def model(weight, head):
        x = F.embedding(tokens, weight)          # input embedding, tied with the head
        x = torch.tanh(x @ mix)
        return head(x, weight)

    w = w0.clone().requires_grad_(True)
    model(w, lambda x, wt: linear_cross_entropy(x, wt, y, alpha=1.0, chunk_rows=5)).backward()
    wt = w0.to(torch.float64).requires_grad_(True)
    mix64 = mix.to(torch.float64)

    def model64(weight):
        x = torch.tanh(F.embedding(tokens, weight) @ mix64)
        return F.cross_entropy(F.linear(x, weight).reshape(-1, V), y.reshape(-1))

    model64(wt).backward()
    close(w.grad, wt.grad, float(wt.grad.abs().max()), 1e-4)


def test_module_and_bitwise_repeat():
    h, w, b, y = make(seed=5)
    m = LinearCrossEntropyLoss(alpha=0.25, reduction="sum", chunk_rows=2)
    a = m(h, w, y, bias=b)
    c = m(h, w, y, bias=b)
    assert torch.equal(a, c)
    assert "alpha=0.25" in repr(m)


def test_bad_arguments_name_the_argument():
    h, w, b, y = make()
    with pytest.raises(ValueError, match="weight"):
        linear_cross_entropy(h, w[:, :-1], y)
    with pytest.raises(ValueError, match="bias"):
        linear_cross_entropy(h, w, y, bias=b[:-1])
    with pytest.raises(TypeError, match="weight"):
        linear_cross_entropy(h, w.double(), y)
    with pytest.raises(ValueError, match="target"):
        linear_cross_entropy(h, w, y[:, :-1])
    bad = y.clone()
    bad.view(-1)[0] = w.shape[0]
    with pytest.raises(powergrad.PowerGradError, match="problem->targets"):
        linear_cross_entropy(h, w, bad)
    with pytest.raises(powergrad.PowerGradError, match="problem->alpha"):
        linear_cross_entropy(h, w, y, alpha=-1.0)


def torch_options_reference(h, w, b, y, reduction, class_weight=None, z_loss_scale=0.0, softcap=0.0,
                            label_smoothing=0.0, ignore_index=-100):
    """F.cross_entropy's weighted, smoothed loss of the (softcapped) materialised logits in float64 with
    PyTorch's autograd, plus the z-loss (z_loss_scale * lse^2 per non-ignored row, reduced as the loss):
    (loss, z_loss, argmax, leaves) — the alpha = 1 contract of docs/design.md §2.5."""
    V = w.shape[0]
    h2, w2 = f64(h).requires_grad_(True), f64(w).requires_grad_(True)
    b2 = None if b is None else f64(b).requires_grad_(True)
    z = F.linear(h2, w2, b2).reshape(-1, V)
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    cw = None if class_weight is None else class_weight.to(torch.float64)
    dense = y.is_floating_point()
    yy = y.reshape(-1, V).to(torch.float64) if dense else y.reshape(-1)
    ce = F.cross_entropy(z, yy, weight=cw, reduction="none", label_smoothing=label_smoothing,
                         ignore_index=ignore_index)
    valid = torch.ones(z.shape[0], dtype=torch.bool) if dense else yy != ignore_index
    lse = torch.logsumexp(z, dim=1)
    zl = torch.where(valid, z_loss_scale * lse * lse, torch.zeros_like(lse))
    if reduction == "none":
        total, zred = ce + zl, zl
    else:
        total, zred = (ce + zl).sum(), zl.sum()
        if reduction == "mean":
            denom = (float(valid.sum()) if cw is None or dense else float(cw[yy[valid]].sum()))
            total, zred = total / denom, zred / denom
    return total, zred, torch.argmax(z, dim=1), (h2, w2, b2)


OPTION_SETS = [dict(class_weight=True), dict(z_loss_scale=1e-2), dict(softcap=2.0),
               dict(class_weight=True, z_loss_scale=1e-2, softcap=2.0, label_smoothing=0.1)]


@pytest.mark.parametrize("opts", OPTION_SETS, ids=["weight", "zloss", "softcap", "all"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("fused", [True, False])
def test_options_equal_torch_autograd_at_alpha_one(opts, reduction, dense, fused):
    h, w, b, y = make(batch_shape=(3, 5), H=12, V=40, seed=11)
    V = w.shape[0]
    g = torch.Generator().manual_seed(12)
    if dense:
        y = torch.softmax(torch.randn(3, 5, V, generator=g) * 2, dim=-1)
    kw = dict(opts)
    cw = (torch.rand(V, generator=g) * 1.5 + 0.25) if kw.pop("class_weight", False) else None
    if cw is not None:
        cw[3] = 0.0  # a class of weight 0
    loss, ex = None, None
    hg, wg, bg = (t.clone().requires_grad_(True) for t in (h, w, b))
    loss, ex = linear_cross_entropy(hg, wg, y, bias=bg, reduction=reduction, chunk_rows=4, class_weight=cw,
                                    fused=fused, return_extras=True, **kw)
    go = torch.rand(loss.shape, generator=g) + 0.5
    loss.backward(go)
    t_loss, t_z, t_am, (h2, w2, b2) = torch_options_reference(h, w, b, y, reduction, class_weight=cw, **kw)
    t_loss.reshape(loss.shape).backward(go.to(torch.float64))
    close(loss, t_loss.detach().reshape(loss.shape), 1.0, 2e-5)
    close(ex["z_loss"], t_z.detach().reshape(ex["z_loss"].shape), 1e-3, 2e-5)
    assert ex["z_loss"].dtype == torch.float32 and not ex["z_loss"].requires_grad
    assert torch.equal(ex["argmax"].reshape(-1), t_am)
    assert ex["argmax"].shape == y.shape[:2] and ex["argmax"].dtype == torch.int64
    if dense:
        assert "correct" not in ex
    else:
        want = ((t_am == y.reshape(-1)) & (y.reshape(-1) != -100)).to(torch.int32)
        assert torch.equal(ex["correct"].reshape(-1), want) and ex["correct"].dtype == torch.int32
    for got, want in ((hg.grad, h2.grad), (wg.grad, w2.grad), (bg.grad, b2.grad)):
        close(got, want, float(want.abs().max()), 1e-4)


@pytest.mark.parametrize("dtype,rtol", [(torch.float16, 4e-3), (torch.bfloat16, 2e-2)])
def test_options_in_16_bit_types(dtype, rtol):
    h, w, b, y = make(batch_shape=(2, 7), H=16, V=33, dtype=dtype, seed=13)
    cw = torch.linspace(0.2, 2.0, 33)
    kw = dict(z_loss_scale=1e-2, softcap=3.0, label_smoothing=0.05)
    hg, wg, bg = (t.clone().requires_grad_(True) for t in (h, w, b))
    loss = linear_cross_entropy(hg, wg, y, bias=bg, chunk_rows=5, class_weight=cw, **kw)
    loss.backward()
    t_loss, _, _, (h2, w2, b2) = torch_options_reference(h, w, b, y, "mean", class_weight=cw, **kw)
    t_loss.backward()
    close(loss, t_loss.detach(), 1.0, 1e-5)
    for got, want in ((hg.grad, h2.grad), (wg.grad, w2.grad), (bg.grad, b2.grad)):
        assert got.dtype == dtype
        close(got, want, float(want.abs().max()), rtol)


def test_weighted_mean_all_ignored_is_zero():
    h, w, b, y = make(batch_shape=(5,), ignored=range(5))
    hg = h.clone().requires_grad_(True)
    loss, ex = linear_cross_entropy(hg, w, y, bias=b, class_weight=torch.ones(w.shape[0]), z_loss_scale=1e-2,
                                    return_extras=True)
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(ex["z_loss"]) == 0.0
    assert torch.count_nonzero(hg.grad) == 0 and torch.count_nonzero(ex["correct"]) == 0


def test_bad_options_name_the_argument():
    h, w, b, y = make()
    V = w.shape[0]
    with pytest.raises(ValueError, match="class_weight"):
        linear_cross_entropy(h, w, y, class_weight=torch.ones(V - 1))
    with pytest.raises(TypeError, match="class_weight"):
        linear_cross_entropy(h, w, y, class_weight=torch.ones(V, dtype=torch.long))
    bad = torch.ones(V)
    bad[2] = -1.0
    with pytest.raises(powergrad.PowerGradError, match="problem->class_weight"):
        linear_cross_entropy(h, w, y, class_weight=bad)
    with pytest.raises(powergrad.PowerGradError, match="problem->softcap"):
        linear_cross_entropy(h, w, y, softcap=-1.0)
    with pytest.raises(powergrad.PowerGradError, match="problem->z_loss_scale"):
        linear_cross_entropy(h, w, y, z_loss_scale=float("inf"))
    with pytest.raises(TypeError, match="softcap"):
        linear_cross_entropy(h, w, y, softcap="big")
