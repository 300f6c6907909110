"""powergrad.torch vs torch.nn.functional.cross_entropy (alpha = 1) and the float64 reference (alpha < 1)."""

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


def make(rows=24, cols=37, dtype=torch.float32, seed=0, ignored=(3, 10)):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(rows, cols, generator=g) * 2.0).to(dtype)
    y = torch.randint(0, cols, (rows,), generator=g)
    for i in ignored:
        if i < rows:
            y[i] = -100
    return z, y


def ref_of(z, y, alpha, eps=0.0, reduction="mean", upstream=None, ignore_index=-100):
    up = None if upstream is None else upstream.detach().double().numpy()
    loss, grad = ref.xent(z.detach().double().numpy(), y.numpy(), alpha, ignore_index, eps, reduction, up)
    return torch.as_tensor(np.asarray(loss)), torch.as_tensor(grad)


def run(fn, z, y, upstream=None, **kw):
    x = z.clone().requires_grad_(True)
    loss = fn(x, y, **kw)
    if upstream is None:
        loss.backward()
    else:
        loss.backward(upstream)
    return loss.detach(), x.grad


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("ignore_index", [-100, 5])
def test_alpha_1_equals_torch(reduction, eps, ignore_index):
    z, y = make(seed=1)
    y[y == -100] = ignore_index
    y[7] = 5
    up = torch.randn(z.shape[0]) if reduction == "none" else None
    kw = dict(reduction=reduction, label_smoothing=eps, ignore_index=ignore_index)
    loss, grad = run(cross_entropy, z, y, up, alpha=1.0, **kw)
    want_loss, want_grad = run(F.cross_entropy, z, y, up, **kw)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.05, 0.3, 0.7])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_alpha_below_1_is_pgt(alpha, reduction):
    # Loss: ordinary CE (unchanged by PGT). Gradient: g_r (softmax(alpha z) - q), not d(loss)/dz.
    z, y = make(seed=2)
    up = torch.randn(z.shape[0]) if reduction == "none" else torch.tensor(1.7)
    loss, grad = run(cross_entropy, z, y, up, alpha=alpha, reduction=reduction, label_smoothing=0.1)
    want_loss, want_grad = ref_of(z, y, alpha, 0.1, reduction, up)
    torch.testing.assert_close(loss.double(), want_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, F.cross_entropy(z, y, reduction=reduction, label_smoothing=0.1),
                               rtol=1e-5, atol=1e-5)


def test_none_with_per_row_upstream_through_a_weighted_sum():
    # grad_output for 'none' comes from a later op (a per-row weighting), not from the caller.
    z, y = make(seed=3)
    w = torch.rand(z.shape[0])
    x = z.clone().requires_grad_(True)
    (cross_entropy(x, y, alpha=0.3, reduction="none") * w).sum().backward()
    _, want = ref_of(z, y, 0.3, 0.0, "none", w)
    torch.testing.assert_close(x.grad.double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_low_precision(dtype, tol):
    z, y = make(seed=4, dtype=dtype)
    loss, grad = run(cross_entropy, z, y, alpha=0.3, reduction="sum")
    want_loss, want_grad = ref_of(z, y, 0.3, 0.0, "sum")
    assert loss.dtype == torch.float32 and grad.dtype == dtype  # the loss is fp32, as under autocast
    torch.testing.assert_close(loss.double(), want_loss, rtol=tol, atol=tol)
    torch.testing.assert_close(grad.double(), want_grad, rtol=tol, atol=tol)


def test_dense_targets_match_torch_probabilities():
    z, _ = make(seed=5, ignored=())
    q = torch.softmax(torch.randn(z.shape), dim=1)
    loss, grad = run(cross_entropy, z, q, alpha=1.0)
    want_loss, want_grad = run(F.cross_entropy, z, q)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-6)


def test_gradient_matches_the_analytic_formula_through_a_model():
    # gradcheck does not apply (for alpha != 1 the backward is deliberately not the derivative):
    # chain the analytic dz = softmax(alpha z) - q through a Linear layer by hand instead.
    torch.manual_seed(6)
    h = torch.randn(16, 8)
    lin = torch.nn.Linear(8, 13)
    y = torch.randint(0, 13, (16,))
    y[2] = -100
    cross_entropy(lin(h), y, alpha=0.2, label_smoothing=0.05).backward()
    _, dz = ref_of(lin(h), y, 0.2, 0.05, "mean")
    torch.testing.assert_close(lin.weight.grad.double(), dz.T @ h.double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lin.bias.grad.double(), dz.sum(0), rtol=1e-5, atol=1e-6)


def test_no_grad_needed():
    z, y = make(seed=7)
    loss = cross_entropy(z, y, alpha=0.3, inplace=True)  # z does not require grad: no gradient, z untouched
    torch.testing.assert_close(loss, F.cross_entropy(z, y))
    assert torch.equal(z, make(seed=7)[0])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1.6e-2)])
def test_two_pass_form_equals_the_fused_form(reduction, dtype, tol):
    z, y = make(seed=17, dtype=dtype)
    up = torch.randn(z.shape[0]) if reduction == "none" else torch.tensor(-0.75)
    kw = dict(alpha=0.3, reduction=reduction, label_smoothing=0.1)
    loss2, grad2 = run(cross_entropy, z, y, up, fused=False, **kw)
    want_loss, want_grad = ref_of(z, y, 0.3, 0.1, reduction, up)
    torch.testing.assert_close(loss2.double(), want_loss, rtol=tol, atol=tol)
    torch.testing.assert_close(grad2.double(), want_grad, rtol=tol, atol=tol)
    loss1, grad1 = run(cross_entropy, z, y, up, **kw)
    torch.testing.assert_close(loss2, loss1, rtol=0, atol=0)


def test_two_pass_form_allows_backward_twice():
    z, y = make(seed=18)
    x = z.clone().requires_grad_(True)
    loss = cross_entropy(x, y, alpha=0.3, fused=False)
    loss.backward(retain_graph=True)
    loss.backward()
    torch.testing.assert_close(x.grad.double(), 2 * ref_of(z, y, 0.3)[1], rtol=1e-5, atol=1e-6)


# ---- in-place mode ----------------------------------------------------------------------------------

def model_grads(inplace, build_logits, alpha=0.3):
    torch.manual_seed(8)
    h = torch.randn(12, 6)
    lin = torch.nn.Linear(6, 9)
    y = torch.randint(0, 9, (12,))
    logits = build_logits(lin, h)
    safe = inplace_is_safe(logits)
    cross_entropy(logits, y, alpha=alpha, inplace=inplace).backward()
    return [p.grad.clone() for p in lin.parameters()], safe, logits


def test_inplace_on_a_linear_head_writes_over_the_logits():
    want, _, _ = model_grads(False, lambda lin, h: lin(h))
    got, safe, logits = model_grads(True, lambda lin, h: lin(h))
    assert safe
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    # The logits now hold the gradient (that is the point of in place): the rows sum to 0.
    torch.testing.assert_close(logits.detach().sum(1), torch.zeros(12), atol=1e-6, rtol=0)


def test_inplace_on_a_view_of_the_head_output():
    build = lambda lin, h: lin(h).view(3, 4, 9).reshape(12, 9)  # noqa: E731
    want, _, _ = model_grads(False, build)
    got, safe, _ = model_grads(True, build)
    assert safe
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_inplace_on_a_leaf_copies():
    z, y = make(seed=9)
    x = z.clone().requires_grad_(True)
    assert not inplace_is_safe(x)
    cross_entropy(x, y, alpha=0.3, inplace=True).backward()
    assert torch.equal(x.detach(), z)  # the caller's tensor is not corrupted
    torch.testing.assert_close(x.grad.double(), ref_of(z, y, 0.3)[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("producer", ["exp", "sigmoid", "softmax"])
def test_inplace_when_the_producer_saved_its_result_copies(producer):
    # exp/sigmoid/softmax save their output for backward: overwriting it would corrupt x's gradient.
    z, y = make(seed=10)
    grads = []
    for inplace in (False, True):
        x = z.clone().requires_grad_(True)
        logits = getattr(torch, producer)(x) if producer != "softmax" else torch.softmax(x, 1)
        if inplace:
            assert not inplace_is_safe(logits)
        cross_entropy(logits, y, alpha=0.4, inplace=inplace).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)


def test_inplace_with_an_unseen_saved_use_raises_instead_of_corrupting():
    # logits.pow(2) saved the logits for its backward; nothing on the tensor reveals it. The in-place
    # write bumps the version counter, so autograd refuses the backward rather than use wrong values.
    torch.manual_seed(11)
    lin = torch.nn.Linear(6, 9)
    logits = lin(torch.randn(12, 6))
    y = torch.randint(0, 9, (12,))
    aux = logits.pow(2).mean()
    loss = cross_entropy(logits, y, alpha=0.3, inplace=True) + aux
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_backward_twice_raises():
    z, y = make(seed=12)
    x = z.clone().requires_grad_(True)
    loss = cross_entropy(x, y, alpha=0.3)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


# ---- the hook form ----------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("loss_scale", [1.0, 1024.0])
def test_hook_on_a_small_model_equals_the_logits_form(reduction, loss_scale):
    torch.manual_seed(13)
    h = torch.randn(20, 10)
    y = torch.randint(0, 7, (20,))
    y[[4, 11]] = -100
    w = torch.rand(20)

    def grads(use_hook):
        torch.manual_seed(14)
        model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.Tanh(), torch.nn.Linear(16, 7))
        logits = model(h)
        if use_hook:
            scale = loss_scale * w if reduction == "none" else torch.tensor(loss_scale)
            pgt_hook(logits, y, alpha=0.3, scale=scale, label_smoothing=0.1, reduction=reduction)
            loss = F.cross_entropy(logits, y, label_smoothing=0.1, reduction=reduction)
        else:
            loss = cross_entropy(logits, y, alpha=0.3, label_smoothing=0.1, reduction=reduction)
        if reduction == "none":
            loss = (loss * w).sum()
        (loss * loss_scale).backward()
        return [p.grad for p in model.parameters()]

    for got, want in zip(grads(True), grads(False)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * loss_scale)


def test_hook_remove():
    z, y = make(seed=15)
    x = z.clone().requires_grad_(True)
    pgt_hook(x, y, alpha=0.3).remove()
    F.cross_entropy(x, y).backward()
    torch.testing.assert_close(x.grad, run(F.cross_entropy, z, y)[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    import powergrad
    if not powergrad.has_cuda():
        pytest.skip("libpowergrad.so was built without CUDA")
    z, y = make(rows=256, cols=1000, seed=16, dtype=dtype)
    for reduction in ("mean", "none"):
        cpu_loss, cpu_grad = run(cross_entropy, z, y, alpha=0.3, reduction=reduction,
                                 upstream=None) if reduction == "mean" else (None, None)
        if reduction == "none":
            up = torch.rand(256)
            cpu_loss, cpu_grad = run(cross_entropy, z, y, up, alpha=0.3, reduction=reduction)
            gpu_loss, gpu_grad = run(cross_entropy, z.cuda(), y.cuda(), up.cuda(), alpha=0.3, reduction=reduction)
        else:
            gpu_loss, gpu_grad = run(cross_entropy, z.cuda(), y.cuda(), alpha=0.3, reduction=reduction)
        tol = 1e-5 if dtype == torch.float32 else 1.6e-2
        torch.testing.assert_close(gpu_loss.cpu(), cpu_loss, rtol=tol, atol=tol)
        torch.testing.assert_close(gpu_grad.cpu(), cpu_grad, rtol=tol, atol=tol)


# ---- probability targets that require grad ----------------------------------------------------------

@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_dense_target_gradient_matches_torch(fused, reduction, eps, alpha):
    # d(loss)/d(q) = -(1 - eps) log_softmax(z) * upstream: the loss is ordinary CE for any alpha, so
    # the target gradient is PyTorch's (only the logits gradient is PGT's).
    z, _ = make(seed=20, ignored=())
    q0 = torch.softmax(torch.randn(z.shape, generator=torch.Generator().manual_seed(21)), dim=1)
    up = torch.rand(z.shape[0]) + 0.5 if reduction == "none" else torch.tensor(1.3)
    kw = dict(reduction=reduction, label_smoothing=eps)
    q = q0.clone().requires_grad_(True)
    x = z.clone().requires_grad_(True)
    loss = cross_entropy(x, q, alpha=alpha, fused=fused, **kw)
    loss.backward(up)
    q_want = q0.clone().requires_grad_(True)
    F.cross_entropy(z, q_want, **kw).backward(up)
    assert q.grad is not None and q.grad.dtype == q0.dtype
    torch.testing.assert_close(q.grad, q_want.grad, rtol=1e-5, atol=1e-6)
    # The logits gradient is unchanged by the target requiring grad.
    want = ref.xent(z.double().numpy(), q0.double().numpy(), alpha, -100, eps, reduction, up.double().numpy())[1]
    torch.testing.assert_close(x.grad.double(), torch.as_tensor(want), rtol=1e-5, atol=1e-6)


def test_dense_target_gradient_alone_and_in_its_own_dtype():
    # Logits without grad (a teacher's distribution being learned, say), float64 targets on float32 logits.
    z, _ = make(seed=22, ignored=())
    q0 = torch.softmax(torch.randn(z.shape, dtype=torch.float64), dim=1)
    z_before = z.clone()
    q = q0.clone().requires_grad_(True)
    cross_entropy(z, q, alpha=0.3).backward()
    assert torch.equal(z, z_before)  # the caller's logits are read, never written
    q_want = q0.clone().requires_grad_(True)
    F.cross_entropy(z.double(), q_want).backward()
    assert q.grad.dtype == torch.float64
    torch.testing.assert_close(q.grad, q_want.grad, rtol=1e-5, atol=1e-7)


def test_dense_target_gradient_with_inplace_keeps_the_logits():
    # inplace=True would overwrite the logits that the target gradient needs: it falls back to a buffer.
    torch.manual_seed(23)
    lin = torch.nn.Linear(6, 9)
    h = torch.randn(12, 6)
    q0 = torch.softmax(torch.randn(12, 9), dim=1)
    grads = []
    for inplace in (False, True):
        q = q0.clone().requires_grad_(True)
        lin.zero_grad()
        cross_entropy(lin(h), q, alpha=0.3, inplace=inplace).backward()
        grads.append((q.grad, lin.weight.grad.clone()))
    q_want = q0.clone().requires_grad_(True)
    F.cross_entropy(lin(h).detach(), q_want).backward()
    for qg, wg in grads:
        torch.testing.assert_close(qg, q_want.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(wg, grads[0][1], rtol=0, atol=0)


# ---- double backward --------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["fused", "two_pass", "hook"])
def test_create_graph_raises(form):
    # The PGT gradient comes from the library, so there is no second-order graph to build: refuse
    # rather than return first-order gradients whose own gradient is silently missing.
    z, y = make(seed=24)
    x = z.clone().requires_grad_(True)
    if form == "hook":
        logits = x * 1
        pgt_hook(logits, y, alpha=0.3)
        loss = F.cross_entropy(logits, y)
    else:
        loss = cross_entropy(x, y, alpha=0.3, fused=form == "fused")
    with pytest.raises(RuntimeError, match="create_graph"):
        torch.autograd.grad(loss, x, create_graph=True)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dense", [False, True])
def test_empty_batch(reduction, fused, dense):
    # torch gives empty tensors the address 0; the library rejects null required pointers for every
    # batch size, so the binding must still make a valid call: loss 0 (mean/sum) or empty, empty grad.
    x = torch.empty(0, 10, requires_grad=True)
    y = torch.empty(0, 10) if dense else torch.empty(0, dtype=torch.long)
    loss = cross_entropy(x, y, alpha=0.3, reduction=reduction, fused=fused)
    assert loss.dtype == torch.float32
    assert loss.shape == ((0,) if reduction == "none" else ())
    if reduction != "none":
        assert loss.item() == 0.0
    loss.sum().backward()
    assert x.grad.shape == (0, 10)


def test_empty_batch_hook():
    x = torch.empty(0, 10, requires_grad=True)
    y = torch.empty(0, dtype=torch.long)
    pgt_hook(x, y, alpha=0.3)
    F.cross_entropy(x, y, reduction="sum").backward()
    assert x.grad.shape == (0, 10)


def test_empty_batch_with_a_per_row_grad_scale():
    x = torch.empty(0, 10, requires_grad=True)
    y = torch.empty(0, dtype=torch.long)
    loss = cross_entropy(x, y, alpha=0.3, reduction="none", grad_scale=torch.ones(0))
    loss.sum().backward()
    assert x.grad.shape == (0, 10)
