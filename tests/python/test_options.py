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
