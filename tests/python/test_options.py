"""Cross-entropy options (docs/design.md §2.5) through the NumPy entry point (C ABI, host backend):
class weights and label smoothing against PyTorch's F.cross_entropy(weight=, label_smoothing=) at
alpha = 1 (loss and gradient, class and probability targets, every reduction, dense rows that do not
sum to 1), softcapping against a torch.tanh chain written here, the z-loss against its own formula,
the accuracy outputs against torch.argmax, and the bad-input errors."""

import os

import pytest

if os.environ.get("POWERGRAD_TEST_STRICT") == "1":
    import numpy as np
    import torch
else:
    np = pytest.importorskip("numpy", reason="NumPy cannot be imported: install python3-numpy (Debian)")
    torch = pytest.importorskip("torch", reason="torch cannot be imported")

import torch.nn.functional as F  # noqa: E402

import powergrad as pg  # noqa: E402
from powergrad import _numpy as pgnp  # noqa: E402

REDUCTIONS = ["mean", "sum", "none"]


def make(rows, cols, seed, ignored=True):
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((rows, cols)) * 3.0).astype(np.float32)
    y = rng.integers(0, cols, rows).astype(np.int64)
    if ignored and rows > 3:
        y[2] = -100
    w = rng.integers(0, 17, cols).astype(np.float32) / 8.0  # some exact zeros
    return z, y, w


def torch_loss_grad(z, target, reduction, **kw):
    """Loss and logits gradient of F.cross_entropy in float64 (the upstream of a reduced loss is 1;
    of a per-row loss, a vector of ones)."""
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    tt = torch.tensor(target) if target.ndim == 1 else torch.tensor(target, dtype=torch.float64)
    kw = {k: (torch.tensor(v, dtype=torch.float64) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    loss = F.cross_entropy(zt, tt, reduction=reduction, **kw)
    loss.sum().backward()
    return loss.detach().numpy(), zt.grad.numpy()


def check(got, want, tol=2e-5):
    want = np.asarray(want, np.float64)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol, atol=tol * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_class_targets_match_torch_weight_and_label_smoothing(reduction, eps, weighted):
    z, y, w = make(9, 37, seed=1)
    kw = dict(label_smoothing=eps)
    if weighted:
        kw["weight"] = w
    want_loss, want_grad = torch_loss_grad(z, y, reduction, **kw)
    loss, grad = pgnp.cross_entropy_forward_backward(z, y, alpha=1.0, reduction=reduction, **kw)
    check(loss, want_loss)
    check(grad, want_grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
def test_probability_targets_match_torch_including_rows_that_do_not_sum_to_one(reduction, eps, weighted):
    z, _, w = make(6, 11, seed=2)
    rng = np.random.default_rng(3)
    q = rng.random((6, 11)).astype(np.float32)
    q /= q.sum(axis=1, keepdims=True)
    q[1] *= 2.0            # mass 2
    q[3] = 0.0             # mass 0: PyTorch gives loss 0, gradient 0 (without smoothing)
    q[4] = [1, 1] + [0] * 9  # the [[1, 1, 0, ...]] row of the issue
    kw = dict(label_smoothing=eps)
    if weighted:
        kw["weight"] = w
    want_loss, want_grad = torch_loss_grad(z, q, reduction, **kw)
    loss, grad = pgnp.cross_entropy_forward_backward(z, q, alpha=1.0, reduction=reduction, **kw)
    check(loss, want_loss)
    check(grad, want_grad)


def test_weighted_mean_with_every_row_ignored_is_zero():
    z, y, w = make(4, 5, seed=4)
    y[:] = -100
    loss, grad = pgnp.cross_entropy_forward_backward(z, y, weight=w, z_loss_scale=0.1)
    assert loss == 0.0
    assert not grad.any()


@pytest.mark.parametrize("alpha", [1.0, 0.3])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_softcap_matches_a_tanh_chain(alpha, reduction):
    """softcap c: the logits become c * tanh(z / c); at alpha = 1 the whole chain is autograd's."""
    z, y, w = make(7, 29, seed=5)
    z *= 4.0
    c = 15.0
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    capped = c * torch.tanh(zt / c)
    if alpha == 1.0:
        want = F.cross_entropy(capped, torch.tensor(y), weight=torch.tensor(w, dtype=torch.float64),
                               label_smoothing=0.1, reduction=reduction)
        want.sum().backward()
        want_grad = zt.grad.numpy()
    else:
        # PGT: the gradient with respect to the capped logits is A p' - b, with PyTorch's weighted
        # smoothed target b = (1 - eps) w_y e_y + (eps / C) w and A = sum b, scaled as the reduction
        # says (the weighted mean divides by sum w_y), then chained through tanh.
        want = F.cross_entropy(capped, torch.tensor(y), weight=torch.tensor(w, dtype=torch.float64),
                               label_smoothing=0.1, reduction=reduction)
        zc = capped.detach()
        pp = torch.softmax(alpha * zc, dim=1)
        yy = torch.tensor(y)
        valid = yy != -100
        ys = torch.where(valid, yy, torch.zeros_like(yy))
        wt = torch.tensor(w, dtype=torch.float64)
        b = 0.9 * wt[ys][:, None] * F.one_hot(ys, 29).double() + 0.1 / 29 * wt[None, :]
        b = b * valid[:, None]
        A = b.sum(dim=1, keepdim=True)
        g = torch.ones(7, 1, dtype=torch.float64) * valid[:, None]
        if reduction == "mean":
            g = g / wt[ys][valid].sum()
        dzc = g * (A * pp - b)
        want_grad = (dzc * (1 - torch.tanh(zt.detach() / c) ** 2)).numpy()
    loss, grad = pgnp.cross_entropy_forward_backward(z, y, alpha=alpha, reduction=reduction, weight=w,
                                                     label_smoothing=0.1, softcap=c)
    check(loss, want.detach().numpy())
    check(grad, want_grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_z_loss_is_lambda_lse_squared_with_the_ordinary_softmax_gradient(reduction):
    z, y, _ = make(8, 23, seed=6)
    lam, alpha = 0.05, 0.3
    zt = torch.tensor(z, dtype=torch.float64)
    lse = torch.logsumexp(zt, dim=1)
    yy = torch.tensor(y)
    valid = (yy != -100).double()
    zrow = lam * lse ** 2 * valid
    ce = F.cross_entropy(zt, yy, reduction="none")
    n = valid.sum()
    g = valid / n if reduction == "mean" else valid
    ys = torch.where(yy != -100, yy, torch.zeros_like(yy))
    pp = torch.softmax(alpha * zt, dim=1)
    p = torch.softmax(zt, dim=1)
    want_grad = g[:, None] * (pp - F.one_hot(ys, 23).double() + 2 * lam * lse[:, None] * p)
    loss, grad, extras = pgnp.cross_entropy_forward_backward(z, y, alpha=alpha, reduction=reduction,
                                                             z_loss_scale=lam, return_extras=True)
    if reduction == "none":
        check(loss, (ce + zrow).numpy())
        check(extras["z_loss"], zrow.numpy())
    else:
        div = n if reduction == "mean" else 1.0
        check(loss, float(((ce + zrow).sum() / div)))
        check(extras["z_loss"], float(zrow.sum() / div))
    check(grad, want_grad.numpy())


def test_accuracy_outputs_match_torch_argmax():
    z, y, _ = make(16, 9, seed=7)
    z[5, 3] = z[5, 7] = z[5].max() + 1.0  # equal maxima: the first one, as torch.argmax
    y[:8] = np.argmax(z[:8], axis=1)      # half the rows predicted right
    _, _, extras = pgnp.cross_entropy_forward_backward(z, y, return_extras=True)
    want = torch.argmax(torch.tensor(z), dim=1).numpy()
    np.testing.assert_array_equal(extras["argmax"], want)
    np.testing.assert_array_equal(extras["correct"], ((want == y) & (y != -100)).astype(np.int32))
    assert extras["argmax"][5] == 3


@pytest.mark.parametrize("kw, name", [
    (dict(weight=np.ones(4, np.float32)), "weight"),
    (dict(weight=np.array([1, -1, 1, 1, 1], np.float32)), "weight"),
    (dict(weight=np.array([1, np.nan, 1, 1, 1], np.float32)), "weight"),
    (dict(weight=np.array([1, np.inf, 1, 1, 1], np.float32)), "weight"),
    (dict(softcap=-1.0), "softcap"),
    (dict(softcap=float("nan")), "softcap"),
    (dict(z_loss_scale=-0.1), "z_loss_scale"),
    (dict(z_loss_scale=float("nan")), "z_loss_scale"),
])
def test_bad_options_raise_naming_the_argument_and_write_nothing(kw, name):
    z, y, _ = make(3, 5, seed=8, ignored=False)
    before = z.copy()
    with pytest.raises((pg.PowerGradError, ValueError)) as e:
        pgnp.cross_entropy_forward_backward(z, y, inplace=True, **kw)
    assert name in str(e.value)
    np.testing.assert_array_equal(z, before)


# ---- powergrad.torch ------------------------------------------------------------------------------------
# The options through cross_entropy / CrossEntropyLoss / the torch.library ops: against F.cross_entropy
# (weight=, label_smoothing=, reduction=, ignore_index=) at alpha = 1, against autograd through a torch
# tanh chain and torch.logsumexp, against torch.argmax, and against the float64 reference of
# tests/python/reference.py (reference.xent_options) at alpha in {0, 0.3, 1}.

import powergrad.torch as pgt  # noqa: E402
import reference as ref  # noqa: E402
from torch.library import opcheck  # noqa: E402

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                reason="no CUDA device visible to torch"))]
_real_empty = torch.empty


@pytest.fixture
def poisoned(monkeypatch):
    """Every buffer the binding allocates with torch.empty starts as NaN (floating) or a sentinel
    (integers), so an output the library does not write cannot pass."""
    def empty(*args, **kw):
        t = _real_empty(*args, **kw)
        if t.is_floating_point():
            t.fill_(float("nan"))
        elif t.dtype in (torch.int32, torch.int64):
            t.fill_(-7)
        return t
    monkeypatch.setattr(torch, "empty", empty)


def _need(dev):
    if dev == "cuda" and not pg.has_cuda():
        pytest.skip("libpowergrad.so was built without CUDA")


def _call(fn, dev):
    """fn() on either device (the CUDA backend implements the options: no skip)."""
    return fn()


def t_problem(rows, cols, seed, dense=False, dtype=torch.float32, dev="cpu"):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(rows, cols, generator=g, dtype=torch.float64) * 3.0).to(dtype)
    if dense:
        q = torch.rand(rows, cols, generator=g, dtype=torch.float64)
        q = q / q.sum(dim=1, keepdim=True)
        q[1] *= 2.0  # a row of mass 2 (PyTorch's rule, design.md §2.1)
        y = q.to(dtype)
    else:
        y = torch.randint(0, cols, (rows,), generator=g)
        y[2] = -100
    w = torch.randint(0, 17, (cols,), generator=g).to(torch.float32) / 8.0  # some exact zeros
    return z.to(dev), y.to(dev), w.to(dev)


def loss_and_grad(fn, z):
    """(loss, logits gradient) of fn(leaf) with the upstream of ones."""
    x = z.clone().requires_grad_(True)
    out = fn(x)
    loss = out.loss if isinstance(out, pgt.CrossEntropyOutput) else out
    loss.sum().backward()
    return out, loss.detach(), x.grad


def assert_close(got, want, tol):
    got = torch.as_tensor(got).double().cpu()
    want = torch.as_tensor(want).double().cpu()
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * scale)


TOL = {torch.float32: 2e-5, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_torch_weight_and_label_smoothing_match_F_cross_entropy(poisoned, dev, dtype, reduction, dense, eps,
                                                                 weighted):
    _need(dev)
    z, y, w = t_problem(9, 37, seed=11, dense=dense, dtype=dtype, dev=dev)
    kw = dict(label_smoothing=eps, reduction=reduction, weight=w if weighted else None)
    _, loss, grad = _call(lambda: loss_and_grad(lambda x: pgt.cross_entropy(x, y, **kw), z), dev)
    # F.cross_entropy in float64 on the same (rounded) logits and targets.
    zt = z.double().cpu().requires_grad_(True)
    yt = y.double().cpu() if dense else y.cpu()
    want = F.cross_entropy(zt, yt, weight=w.double().cpu() if weighted else None, label_smoothing=eps,
                           reduction=reduction)
    want.sum().backward()
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert_close(loss, want.detach(), 2e-5 if dtype == torch.float32 else 1e-5)
    assert_close(grad, zt.grad, TOL[dtype])


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("fused", [True, False])
def test_torch_every_option_at_alpha_matches_the_float64_reference(poisoned, dev, alpha, reduction, dense, fused):
    _need(dev)
    z, y, w = t_problem(10, 23, seed=12, dense=dense, dev=dev)
    kw = dict(alpha=alpha, label_smoothing=0.1, reduction=reduction, weight=w, z_loss_scale=0.02, softcap=4.0,
              fused=fused, return_z_loss=True, return_accuracy=not dense)
    out, loss, grad = _call(lambda: loss_and_grad(lambda x: pgt.cross_entropy(x, y, **kw), z), dev)
    want_loss, want_grad, want_z, want_argmax = ref.xent_options(
        z.cpu().numpy(), y.cpu().numpy(), alpha=alpha, label_smoothing=0.1, reduction=reduction,
        weight=w.cpu().numpy(), z_loss_scale=0.02, softcap=4.0)
    assert_close(loss, want_loss, 2e-5)
    assert_close(grad, want_grad, 2e-5)
    assert not out.z_loss.requires_grad and out.z_loss.dtype == torch.float32
    assert_close(out.z_loss, want_z, 2e-5)
    if dense:
        assert out.accuracy is None and out.argmax is None
    else:
        assert out.argmax.dtype == torch.int64
        np.testing.assert_array_equal(out.argmax.cpu().numpy(), want_argmax)
        yy = y.cpu().numpy()
        valid = yy != -100
        assert out.accuracy.dim() == 0 and not out.accuracy.requires_grad
        assert float(out.accuracy) == pytest.approx(float(((want_argmax == yy) & valid).sum()) / valid.sum(),
                                                    abs=1e-7)


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_softcap_matches_autograd_through_a_tanh_chain(poisoned, dev, reduction, dtype):
    _need(dev)
    z, y, _ = t_problem(7, 29, seed=13, dtype=dtype, dev=dev)
    z = z * 4
    c = 15.0
    _, loss, grad = _call(lambda: loss_and_grad(lambda x: pgt.cross_entropy(x, y, softcap=c, reduction=reduction),
                                                z), dev)
    zt = z.double().cpu().requires_grad_(True)
    want = F.cross_entropy(c * torch.tanh(zt / c), y.cpu(), reduction=reduction)
    want.sum().backward()
    assert_close(loss, want.detach(), 2e-5 if dtype == torch.float32 else 1e-5)
    assert_close(grad, zt.grad, TOL[dtype])


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_torch_z_loss_matches_autograd_of_logsumexp_squared(poisoned, dev, reduction):
    _need(dev)
    z, y, _ = t_problem(8, 23, seed=14, dev=dev)
    lam = 0.05
    out, loss, grad = _call(lambda: loss_and_grad(
        lambda x: pgt.cross_entropy(x, y, z_loss_scale=lam, reduction=reduction, return_z_loss=True), z), dev)
    zt = z.double().cpu().requires_grad_(True)
    yt = y.cpu()
    valid = (yt != -100).double()
    zrow = lam * torch.logsumexp(zt, dim=1) ** 2 * valid
    ce = F.cross_entropy(zt, yt, reduction="none")
    if reduction == "none":
        want, want_z = ce + zrow, zrow
    elif reduction == "sum":
        want, want_z = (ce + zrow).sum(), zrow.sum()
    else:
        want, want_z = (ce + zrow).sum() / valid.sum(), zrow.sum() / valid.sum()
    want.sum().backward()
    assert_close(loss, want.detach(), 2e-5)
    assert_close(out.z_loss, want_z.detach(), 2e-5)
    assert_close(grad, zt.grad, 2e-5)
    assert out.accuracy is None and out.argmax is None


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("lead", [(16,), (2, 8)])
def test_torch_accuracy_matches_torch_argmax_without_a_host_sync(poisoned, dev, lead):
    _need(dev)
    g = torch.Generator().manual_seed(15)
    z = torch.randn(16, 9, generator=g)
    z[5, 3] = z[5, 7] = z[5].max() + 1.0  # equal maxima: the first one, as torch.argmax
    y = torch.randint(0, 9, (16,), generator=g)
    y[:8] = torch.argmax(z[:8], dim=1)  # half the rows right
    y[1] = -100                          # an ignored row (predicted right, not counted)
    z, y = z.reshape(lead + (9,)).to(dev), y.reshape(lead).to(dev)
    out = _call(lambda: pgt.cross_entropy(z, y, return_accuracy=True), dev)
    want_argmax = torch.argmax(z, dim=-1)
    assert out.argmax.shape == lead
    assert torch.equal(out.argmax, want_argmax)
    assert int(out.argmax.reshape(-1)[5]) == 3
    valid = y != -100
    want = ((want_argmax == y) & valid).sum().double() / valid.sum()
    assert out.accuracy.device == z.device and out.accuracy.dtype == torch.float32
    assert float(out.accuracy) == pytest.approx(float(want), abs=1e-7)
    assert out.z_loss is None
    # Every row ignored: accuracy 0 (as the 'mean' loss), not NaN.
    out = pgt.cross_entropy(z, torch.full_like(y, -100), return_accuracy=True)
    assert float(out.accuracy) == 0.0


def test_torch_results_unpack_as_a_named_tuple():
    z, y, w = t_problem(6, 5, seed=16)
    loss, z_loss, acc, argmax = pgt.cross_entropy(z, y, weight=w, z_loss_scale=0.1, return_z_loss=True,
                                                  return_accuracy=True)
    assert loss.dim() == 0 and z_loss.dim() == 0 and acc.dim() == 0 and argmax.shape == (6,)
    # Without the flags the loss alone, as before.
    assert isinstance(pgt.cross_entropy(z, y, weight=w, z_loss_scale=0.1), torch.Tensor)


def test_torch_weight_that_requires_grad_raises_as_F_cross_entropy_does():
    z, y, w = t_problem(5, 7, seed=17)
    w.requires_grad_(True)
    with pytest.raises(RuntimeError):  # PyTorch's own refusal, for comparison
        F.cross_entropy(z.clone().requires_grad_(True), y, weight=w)
    with pytest.raises(ValueError, match="weight"):
        pgt.cross_entropy(z.clone().requires_grad_(True), y, weight=w)
    with torch.no_grad():  # no graph, nothing to differentiate: accepted, as F.cross_entropy
        got = pgt.cross_entropy(z, y, weight=w)
        want = F.cross_entropy(z.double(), y, weight=w.double())
    assert_close(got, want, 2e-5)


@pytest.mark.parametrize("inplace", [False, True])
def test_torch_z_loss_output_is_a_detached_metric_and_the_gradient_counts_it_once(inplace):
    z, y, _ = t_problem(6, 9, seed=18)
    leaf = z.clone().requires_grad_(True)
    logits = leaf * 1.0  # a non-leaf: inplace=True may write over it
    out = pgt.cross_entropy(logits, y, z_loss_scale=0.1, return_z_loss=True, inplace=inplace)
    assert out.loss.requires_grad and not out.z_loss.requires_grad
    out.loss.backward()
    zt = z.double().requires_grad_(True)
    valid = (y != -100).double()
    want = (F.cross_entropy(zt, y, reduction="none") + 0.1 * torch.logsumexp(zt, 1) ** 2 * valid).sum() / valid.sum()
    want.backward()
    assert_close(leaf.grad, zt.grad, 2e-5)


def test_torch_module_takes_the_options_and_moves_the_weight_as_a_buffer():
    z, y, w = t_problem(7, 11, seed=19)
    m = pgt.CrossEntropyLoss(weight=w, label_smoothing=0.1, alpha=0.3, z_loss_scale=0.01, softcap=5.0,
                             return_z_loss=True, return_accuracy=True)
    assert "weight" in dict(m.named_buffers()) and "weight" in m.state_dict()
    assert "softcap=5" in repr(m) and "z_loss_scale=0.01" in repr(m)
    got = m(z, y)
    want = pgt.cross_entropy(z, y, weight=w, label_smoothing=0.1, alpha=0.3, z_loss_scale=0.01, softcap=5.0,
                             return_z_loss=True, return_accuracy=True)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    m2 = pgt.CrossEntropyLoss(weight=w.double())
    m2.to(torch.float32)
    assert m2.weight.dtype == torch.float32
    assert_close(m2(z, y), F.cross_entropy(z.double(), y, weight=w.double()), 2e-5)


@pytest.mark.parametrize("dev", DEVICES)
def test_torch_options_under_compile_fullgraph_equal_eager(dev):
    _need(dev)
    z, y, w = t_problem(12, 17, seed=20, dev=dev)

    def step(x, t):
        out = pgt.cross_entropy(x, t, alpha=0.3, weight=w, label_smoothing=0.1, z_loss_scale=0.01, softcap=6.0,
                                return_z_loss=True, return_accuracy=True)
        return out.loss, out.z_loss, out.accuracy, out.argmax

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    xe = z.clone().requires_grad_(True)
    xc = z.clone().requires_grad_(True)
    eager = _call(lambda: step(xe, y), dev)
    comp = compiled(xc, y)
    eager[0].backward()
    comp[0].backward()
    for a, b in zip(eager, comp):
        assert torch.equal(a, b)
    assert torch.equal(xe.grad, xc.grad)


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_torch_opcheck_with_options(dev, reduction):
    _need(dev)
    ops = torch.ops.powergrad
    z, y, w = t_problem(12, 17, seed=21, dev=dev)
    _, q, _ = t_problem(12, 17, seed=21, dense=True, dev=dev)
    x = z.clone().requires_grad_(True)
    opt = (w, 0.01, 5.0)
    _call(lambda: opcheck(ops.xent, (x, y, 0.3, -100, 0.1, reduction, True, False, None, 1.0) + opt + (True, True)),
          dev)
    opcheck(ops.xent, (x, q.clone().requires_grad_(True), 0.5, -100, 0.1, reduction, True, True, None, 1.0) + opt
            + (True, False))
    opcheck(ops.xent_, (z.clone(), y, 0.3, -100, 0.0, reduction, None, 1.0) + opt + (True, True))
    opcheck(ops.xent_stats, (x, y, 0.3, -100, 0.1, reduction, True, False) + opt + (True, True))
    opcheck(ops.xent_stats, (x, q.clone().requires_grad_(True), 0.3, -100, 0.0, reduction, True, True) + opt
            + (False, False))
    _, lse_alpha = ops.xent_stats(z, y, 0.3, -100, 0.0, reduction, True, False, *opt)[:2]
    go = torch.rand(12 if reduction == "none" else (), device=dev)
    opcheck(ops.xent_backward, (z, y, lse_alpha, go, 0.3, -100, 0.0, reduction) + opt)


def test_torch_weight_under_autocast():
    """Under CPU bf16 autocast the op reads the bf16 logits the model made; the class weights are
    read as float32 whatever their dtype; the loss is float32 and equals F.cross_entropy on those logits."""
    g = torch.Generator().manual_seed(22)
    lin = torch.nn.Linear(8, 13)
    h = torch.randn(10, 8, generator=g)
    y = torch.randint(0, 13, (10,), generator=g)
    w = torch.rand(13, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = lin(h)
        loss = pgt.cross_entropy(logits, y, weight=w, z_loss_scale=0.01, softcap=8.0)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    want, _, _, _ = ref.xent_options(logits.detach().float().numpy(), y.numpy(), weight=w.numpy(),
                                     z_loss_scale=0.01, softcap=8.0)
    assert_close(loss.detach(), want, 2e-5)
    loss.backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()


@pytest.mark.parametrize("kw, exc, name", [
    (dict(weight=torch.ones(4)), ValueError, "weight"),
    (dict(weight=torch.ones(5, 1)), ValueError, "weight"),
    (dict(weight=torch.ones(5, dtype=torch.int64)), TypeError, "weight"),
    (dict(weight=[1.0] * 5), TypeError, "weight"),
    (dict(weight=torch.ones(5, device="meta")), ValueError, "weight"),
    (dict(weight=torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0])), pg.PowerGradError, "weight"),
    (dict(weight=torch.tensor([1.0, float("nan"), 1.0, 1.0, 1.0])), pg.PowerGradError, "weight"),
    (dict(weight=torch.tensor([1.0, float("inf"), 1.0, 1.0, 1.0])), pg.PowerGradError, "weight"),
    (dict(softcap=-1.0), ValueError, "softcap"),
    (dict(softcap=float("nan")), ValueError, "softcap"),
    (dict(softcap=float("inf")), ValueError, "softcap"),
    (dict(softcap="big"), TypeError, "softcap"),
    (dict(z_loss_scale=-0.1), ValueError, "z_loss_scale"),
    (dict(z_loss_scale=float("nan")), ValueError, "z_loss_scale"),
    (dict(z_loss_scale=torch.tensor(0.1)), TypeError, "z_loss_scale"),
])
@pytest.mark.parametrize("fused", [True, False])
def test_torch_bad_options_raise_naming_the_argument_and_write_nothing(kw, exc, name, fused):
    z, y, _ = t_problem(3, 5, seed=23)
    leaf = z.clone().requires_grad_(True)
    logits = leaf * 1.0  # a non-leaf: inplace=True would write the gradient over it
    before = logits.detach().clone()
    with pytest.raises(exc) as e:
        pgt.cross_entropy(logits, y, inplace=True, fused=fused, **kw)
    assert name in str(e.value)
    assert torch.equal(logits.detach(), before)


def test_torch_return_accuracy_needs_class_targets():
    z, q, _ = t_problem(4, 6, seed=24, dense=True)
    with pytest.raises(ValueError, match="return_accuracy"):
        pgt.cross_entropy(z, q, return_accuracy=True)
    with pytest.raises(ValueError, match="weight"):
        pgt.CrossEntropyLoss(weight=torch.ones(2, 3))


class _NoOpFunctionMode(torch.overrides.TorchFunctionMode):
    """A torch-function mode that changes nothing: under it eager calls go through the dispatcher
    (the torch.library ops) instead of the direct path (functional._direct_ok)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("options", [dict(), dict(weight=True, z_loss_scale=0.01, softcap=5.0, return_z_loss=True,
                                                  return_accuracy=True)])
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("inplace", [False, True])
def test_torch_direct_eager_path_equals_the_dispatched_ops(options, grad, inplace):
    """Eager mode runs the ops' work directly when nothing in the dispatcher could change it; the
    result must be the dispatched op's, bit for bit."""
    from powergrad.torch import functional
    z, y, w = t_problem(9, 13, seed=25)
    kw = dict(options)
    if kw.pop("weight", False):
        kw["weight"] = w

    def run():
        leaf = z.clone().requires_grad_(grad)
        x = leaf * 1.0 if grad else leaf
        with torch.set_grad_enabled(grad):
            out = pgt.cross_entropy(x, y, alpha=0.3, inplace=inplace, **kw)
        loss = out.loss if isinstance(out, pgt.CrossEntropyOutput) else out
        if grad:
            loss.backward()
        return out, leaf.grad

    assert functional._direct_ok(z, y, None, w)
    direct, g_direct = run()
    with _NoOpFunctionMode():
        assert not functional._direct_ok(z, y, None, w)
        dispatched, g_dispatched = run()
    for a, b in zip(direct if isinstance(direct, tuple) else (direct,),
                    dispatched if isinstance(dispatched, tuple) else (dispatched,)):
        assert (a is None and b is None) or torch.equal(a, b)
    assert (g_direct is None and g_dispatched is None) or torch.equal(g_direct, g_dispatched)
