"""fp16/bf16 logits under mixed-precision loss scaling (GradScaler-like scales up to 2^24), on the CPU,
against the float64 reference: the loss is float32 and the scale is applied in fp32 on every path
(fused, fused=False, in place, grad_scale, the hook form)."""

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

from powergrad.torch import cross_entropy, inplace_is_safe, pgt_hook  # noqa: E402

SCALES = [1.0, 1024.0, 65536.0, 2.0 ** 24]  # GradScaler starts at 2^16 and grows by powers of 2
TOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
ROWS, COLS, ALPHA = 24, 37, 0.3


def problem(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(ROWS, COLS, generator=g) * 2.0).to(dtype)
    y = torch.randint(0, COLS, (ROWS,), generator=g)
    y[[3, 10]] = -100
    w = torch.rand(ROWS, generator=g) + 0.5  # per-row weights for reduction='none'
    return z, y, w


def expected(z, y, reduction, upstream):
    up = upstream.double().numpy() if isinstance(upstream, torch.Tensor) else upstream
    loss, grad = ref.xent(z.double().numpy(), y.numpy(), ALPHA, -100, 0.0, reduction, up)
    return torch.as_tensor(np.asarray(loss)), torch.as_tensor(grad)


def assert_grad_matches(got, want, dtype):
    """Every element: where the exact gradient overflows the dtype, an infinity of its sign; elsewhere
    finite and within the dtype's tolerance (relative, plus a floor relative to the largest element)."""
    tol = TOL[dtype]
    big = torch.finfo(dtype).max
    g = got.double()
    over = want.abs() > big * (1 + tol)
    inside = want.abs() < big * (1 - tol)
    assert torch.all(torch.isinf(g[over]) & (torch.sign(g[over]) == torch.sign(want[over]))), \
        "elements beyond the %s range must be infinite" % dtype
    fin_want = want[inside]
    fin_got = g[inside]
    assert torch.all(torch.isfinite(fin_got)), "%d finite gradient elements came back non-finite" % int(
        (~torch.isfinite(fin_got)).sum())
    floor = tol * float(fin_want.abs().max()) if fin_want.numel() else 0.0
    bad = (fin_got - fin_want).abs() > tol * fin_want.abs() + floor
    diff = float((fin_got - fin_want).abs().max()) if fin_want.numel() else 0.0
    assert not bool(bad.any()), "%d elements off, max diff %g" % (int(bad.sum()), diff)


def scaled_backward(loss, reduction, scale, w):
    if reduction == "none":
        (loss * w).sum().mul(scale).backward()
    else:
        (loss * scale).backward()


def upstream_of(reduction, scale, w):
    return scale * w if reduction == "none" else scale


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("path", ["fused", "two_pass", "inplace", "grad_scale", "grad_scale_tensor"])
def test_loss_scaled_gradient(dtype, scale, reduction, path):
    z, y, w = problem(dtype)
    h = z.clone().requires_grad_(True)
    kw = dict(alpha=ALPHA, reduction=reduction)
    if path == "inplace":
        logits = h * 1  # a non-leaf whose producer saved nothing: written over in place
        assert inplace_is_safe(logits)
        loss = cross_entropy(logits, y, inplace=True, **kw)
    elif path == "two_pass":
        loss = cross_entropy(h, y, fused=False, **kw)
    elif path == "grad_scale":
        # A float hint no larger than any row's incoming gradient (elements that overflow at the hint
        # would stay infinite).
        hint = scale * float(w.min()) if reduction == "none" else scale
        loss = cross_entropy(h, y, grad_scale=hint, **kw)
    elif path == "grad_scale_tensor":
        hint = scale * w if reduction == "none" else torch.tensor([scale])  # 'none': the per-row upstream
        loss = cross_entropy(h, y, grad_scale=hint, **kw)
    else:
        loss = cross_entropy(h, y, **kw)
    assert loss.dtype == torch.float32  # as F.cross_entropy under autocast
    scaled_backward(loss, reduction, scale, w)
    want_loss, want_grad = expected(z, y, reduction, upstream_of(reduction, scale, w))
    torch.testing.assert_close(loss.detach().double(), want_loss, rtol=1e-5, atol=1e-5)
    assert h.grad.dtype == dtype
    assert_grad_matches(h.grad, want_grad, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_scaled_hook(dtype, scale, reduction):
    # The hook's usual setting: fp16/bf16 logits, the loss computed in fp32 (as autocast does), the
    # incoming gradient cast back to the logits' dtype. Where that incoming gradient is finite, the
    # hook's output must match the reference; where it overflowed, the row must stay non-finite (so
    # that GradScaler skips the step) instead of turning into finite garbage.
    z, y, w = problem(dtype, seed=1)
    h = z.clone().requires_grad_(True)
    logits = h * 1
    seen = {}
    logits.register_hook(lambda g: seen.setdefault("incoming", g.clone()))
    up = scale * w if reduction == "none" else torch.tensor(scale)
    pgt_hook(logits, y, alpha=ALPHA, scale=up, reduction=reduction)
    loss = F.cross_entropy(logits.float(), y, reduction=reduction)
    scaled_backward(loss, reduction, scale, w)
    _, want = expected(z, y, reduction, upstream_of(reduction, scale, w))
    finite_rows = torch.isfinite(seen["incoming"]).all(1)
    got = h.grad
    assert got.dtype == dtype
    assert torch.all(~torch.isfinite(got[~finite_rows]).all(1))
    # p is recovered from the rounded incoming gradient: bf16 carries 8 bits.
    tol = 2e-2 if dtype == torch.float16 else 1.5e-1
    g, wnt = got[finite_rows].double(), want[finite_rows]
    assert torch.all(torch.isfinite(g))
    bad = (g - wnt).abs() > tol * wnt.abs() + tol * float(wnt.abs().max())
    assert not bool(bad.any()), "%d elements off" % int(bad.sum())


def test_fp16_grad_scale_keeps_gradients_below_the_fp16_range():
    # Mean over many rows: (p' - q) / n_valid is below fp16's smallest subnormal for most columns,
    # so a gradient stored unscaled loses them. With grad_scale the kernel applies the loss scale in
    # fp32 before rounding, and every element comes back to fp16 precision (as fused=False does).
    g = torch.Generator().manual_seed(2)
    rows, cols, scale = 2048, 64, 65536.0
    z = (torch.randn(rows, cols, generator=g) * 3.0).to(torch.float16)
    y = torch.randint(0, cols, (rows,), generator=g)
    _, want = ref.xent(z.double().numpy(), y.numpy(), 1.0, -100, 0.0, "mean", scale)
    want = torch.as_tensor(want)
    assert float((want.abs() / scale)[want != 0].min()) < 6e-8  # the exact unscaled values underflow
    for kw in (dict(grad_scale=scale), dict(grad_scale=torch.tensor(scale)), dict(fused=False)):
        h = z.clone().requires_grad_(True)
        (cross_entropy(h, y, **kw) * scale).backward()
        got = h.grad.double()
        bad = (got - want).abs() > 2e-3 * want.abs() + 1e-7
        assert not bool(bad.any()), "%s: %d elements off" % (kw, int(bad.sum()))


def test_grad_scale_differs_from_the_upstream():
    # grad_scale is a hint: backward multiplies by grad_output / grad_scale (in fp32), so a loss
    # multiplied by something else still gets the right gradient.
    z, y, _ = problem(torch.float16, seed=3)
    h = z.clone().requires_grad_(True)
    (cross_entropy(h, y, alpha=ALPHA, grad_scale=1024.0) * 3000.0).backward()
    _, want = expected(z, y, "mean", 3000.0)
    assert_grad_matches(h.grad, want, torch.float16)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_grad_scale_must_be_positive_and_finite(bad):
    z, y, _ = problem(torch.float16)
    with pytest.raises(ValueError, match="grad_scale"):
        cross_entropy(z.clone().requires_grad_(True), y, grad_scale=bad)
