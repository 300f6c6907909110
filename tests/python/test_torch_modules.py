"""powergrad.torch.CrossEntropyLoss, class-last shapes ([N, C], [B, T, V], [C]), autocast, probability
targets, clip_grad_norm_'s torch signature, and the bad-input list (each case raises naming the
argument, or is handled and equals F.cross_entropy at alpha = 1)."""

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
    pytest.skip("torch or NumPy cannot be imported (%s)" % e, allow_module_level=True)

import powergrad  # noqa: E402
from powergrad import _lib  # noqa: E402
from powergrad.torch import CrossEntropyLoss, clip_grad_norm_, cross_entropy, pgt_hook  # noqa: E402


def logits_and_labels(shape, cols, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(*shape, cols, generator=g) * 2).to(dtype)
    y = torch.randint(0, cols, shape, generator=g)
    return z, y


def grad_of(fn, z, *args, upstream=None):
    x = z.clone().requires_grad_(True)
    loss = fn(x, *args)
    x.grad = None
    loss.backward(upstream)
    return loss.detach(), x.grad


def reference(z, target, alpha, reduction="mean", eps=0.0, ignore_index=-100, upstream=None):
    """float64 reference on class-last logits of any leading shape (flattened to rows)."""
    cols = z.shape[-1]
    t = target.reshape(-1, cols) if target.is_floating_point() else target.reshape(-1)
    up = None if upstream is None else upstream.double().reshape(-1).numpy()
    loss, grad = ref.xent(z.double().reshape(-1, cols).numpy(), t.double().numpy() if t.is_floating_point()
                          else t.numpy(), alpha, ignore_index, eps, reduction, up)
    loss = torch.as_tensor(np.asarray(loss))
    if reduction == "none":
        loss = loss.reshape(z.shape[:-1])
    return loss, torch.as_tensor(grad).reshape(z.shape)


# ---- the module -------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_module_at_alpha_1_is_nn_cross_entropy_loss(reduction, eps):
    z, y = logits_and_labels((30,), 11, seed=1)
    y[4] = 7
    y[5] = -1
    mine = CrossEntropyLoss(reduction=reduction, label_smoothing=eps, ignore_index=-1)
    theirs = torch.nn.CrossEntropyLoss(reduction=reduction, label_smoothing=eps, ignore_index=-1)
    up = torch.rand(30) if reduction == "none" else None
    l1, g1 = grad_of(mine, z, y, upstream=up)
    l2, g2 = grad_of(theirs, z, y, upstream=up)
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("fused", [True, False])
def test_module_alpha_below_1_matches_the_reference(fused):
    z, y = logits_and_labels((25,), 9, seed=2)
    l1, g1 = grad_of(CrossEntropyLoss(alpha=0.3, label_smoothing=0.1, fused=fused), z, y)
    lr, gr = reference(z, y, 0.3, eps=0.1)
    torch.testing.assert_close(l1.double(), lr, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g1.double(), gr, rtol=1e-5, atol=1e-7)


def test_module_arguments():
    assert CrossEntropyLoss(size_average=False).reduction == "sum"
    assert CrossEntropyLoss(reduce=False).reduction == "none"
    assert CrossEntropyLoss(weight=torch.ones(3)).weight.shape == (3,)  # a buffer (tests/python/test_options.py)
    with pytest.raises(ValueError, match="weight"):
        CrossEntropyLoss(weight=torch.ones(3, 1))
    with pytest.raises(ValueError, match="reduction"):
        CrossEntropyLoss(reduction="avg")
    assert "alpha=0.3" in repr(CrossEntropyLoss(alpha=0.3))


def test_mixup_soft_targets_are_timm_soft_target_cross_entropy():
    # timm's SoftTargetCrossEntropy: sum(-q * log_softmax(z), -1).mean(); at alpha = 1 the module is
    # that loss; at alpha < 1 the gradient is softmax(alpha z) - q over N.
    z, y1 = logits_and_labels((16,), 10, seed=3)
    y2 = torch.roll(y1, 1)
    lam = 0.65
    q = lam * F.one_hot(y1, 10).float() + (1 - lam) * F.one_hot(y2, 10).float()
    q = q * 0.9 + 0.01  # mixup with label smoothing 0.1, as timm's Mixup builds it

    def soft_target_ce(x, t):
        return torch.sum(-t * F.log_softmax(x, dim=-1), dim=-1).mean()

    try:
        from timm.loss import SoftTargetCrossEntropy
        soft_target_ce = SoftTargetCrossEntropy()  # noqa: F811
    except ImportError:
        pass
    l1, g1 = grad_of(CrossEntropyLoss(), z, q)
    l2, g2 = grad_of(soft_target_ce, z, q)
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-7)
    l3, g3 = grad_of(CrossEntropyLoss(alpha=0.3), z, q)
    lr, gr = reference(z, q, 0.3)
    torch.testing.assert_close(l3.double(), lr, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g3.double(), gr, rtol=1e-5, atol=1e-7)


# ---- shapes -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_language_model_logits_b_t_v(reduction):
    z, y = logits_and_labels((3, 7), 19, seed=4)
    y[1, 2:5] = -100
    up = torch.rand(3, 7) if reduction == "none" else None
    loss, grad = grad_of(lambda x, t: cross_entropy(x, t, alpha=0.25, reduction=reduction), z, y, upstream=up)
    lr, gr = reference(z, y, 0.25, reduction, upstream=up)
    assert loss.shape == ((3, 7) if reduction == "none" else ())
    assert grad.shape == (3, 7, 19)
    torch.testing.assert_close(loss.double(), lr, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), gr, rtol=1e-5, atol=1e-7)
    # alpha = 1: exactly F.cross_entropy on the flattened rows
    l1, g1 = grad_of(lambda x, t: cross_entropy(x, t, reduction=reduction), z, y, upstream=up)
    l2, g2 = grad_of(lambda x, t: F.cross_entropy(x.reshape(-1, 19), t.reshape(-1), reduction=reduction)
                     .reshape(l1.shape), z, y, upstream=up)
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-7)


def test_probability_targets_b_t_v_get_their_gradient():
    # PyTorch's target gradient, -(1 - eps) log_softmax(z) / N (N = 10 rows), whatever alpha is, for
    # [B, T, V] probabilities; F.cross_entropy on the flattened rows gives the same.
    z, _ = logits_and_labels((2, 5), 8, seed=5)
    q0 = torch.softmax(torch.randn(2, 5, 8), -1)
    expect = -(0.9) * torch.log_softmax(z.double(), -1) / 10
    for fused in (True, False):
        q = q0.clone().requires_grad_(True)
        cross_entropy(z, q, alpha=0.4, label_smoothing=0.1, fused=fused).backward()
        torch.testing.assert_close(q.grad.double(), expect, rtol=1e-5, atol=1e-7)
    q = q0.clone().requires_grad_(True)
    F.cross_entropy(z.reshape(-1, 8), q.reshape(-1, 8), label_smoothing=0.1).backward()
    torch.testing.assert_close(q.grad.double(), expect, rtol=1e-5, atol=1e-7)


def test_one_sample_unbatched():
    z, y = logits_and_labels((), 6, seed=6)
    for reduction in ("mean", "none"):
        l1, g1 = grad_of(lambda x, t: cross_entropy(x, t, reduction=reduction), z, y)
        l2, g2 = grad_of(lambda x, t: F.cross_entropy(x, t, reduction=reduction), z, y)
        assert l1.shape == l2.shape == ()
        torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-7)


def test_k_dimensional_inputs_put_classes_last():
    # F.cross_entropy takes [N, C, d1, d2] (classes at dim 1); powergrad takes classes last:
    # logits.movedim(1, -1) gives the same loss and, moved back, the same gradient.
    g = torch.Generator().manual_seed(7)
    z = torch.randn(2, 5, 3, 4, generator=g)
    y = torch.randint(0, 5, (2, 3, 4), generator=g)
    l1, g1 = grad_of(lambda x, t: cross_entropy(x.movedim(1, -1), t), z, y)
    l2, g2 = grad_of(F.cross_entropy, z, y)
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="target"):  # the class-dimension-1 layout is refused, not misread
        cross_entropy(z, y)


def test_hook_on_b_t_v_logits():
    z, y = logits_and_labels((2, 6), 9, seed=8)

    def pgt_via_hook(x, t):
        h = x * 1.0
        pgt_hook(h, t, alpha=0.3)
        return F.cross_entropy(h.reshape(-1, 9), t.reshape(-1))

    loss, grad = grad_of(pgt_via_hook, z, y)
    _, gr = reference(z, y, 0.3)
    torch.testing.assert_close(grad.double(), gr, rtol=1e-4, atol=1e-6)


# ---- autocast -----------------------------------------------------------------------------------------

def _ops_seen(fn):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Log(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.calls.append((str(func), [a.dtype for a in args if isinstance(a, torch.Tensor)]))
            return out

    log = Log()
    with log:
        result = fn()
    return result, log.calls


@pytest.mark.parametrize("device,dtype", [
    ("cpu", torch.bfloat16),
    pytest.param("cuda", torch.float16, marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                  reason="no CUDA device visible to torch")),
    pytest.param("cuda", torch.bfloat16, marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                   reason="no CUDA device visible to torch")),
])
def test_autocast_reads_low_precision_logits_and_returns_an_fp32_loss(device, dtype):
    if device == "cuda" and not powergrad.has_cuda():
        pytest.skip("libpowergrad.so was built without CUDA")
    torch.manual_seed(9)
    lin = torch.nn.Linear(12, 10).to(device)
    x = torch.randn(20, 12, device=device)
    y = torch.randint(0, 10, (20,), device=device)
    with torch.autocast(device, dtype=dtype):
        logits = lin(x)
        logits.retain_grad()
        loss, calls = _ops_seen(lambda: cross_entropy(logits, y, alpha=0.3))
    assert logits.dtype == dtype
    assert loss.dtype == torch.float32  # as F.cross_entropy under autocast
    xent_calls = [dt for name, dt in calls if name.startswith(("powergrad.xent", "powergrad_cpp.xent"))]
    assert xent_calls and xent_calls[0][0] == dtype  # the op read the low-precision logits: no fp32 copy
    assert not any(name.startswith("aten._to_copy") for name, _ in calls)
    loss.backward()
    assert logits.grad.dtype == dtype
    lr, gr = reference(logits.detach().float().cpu(), y.cpu(), 0.3)
    torch.testing.assert_close(loss.double().cpu(), lr, rtol=1e-5, atol=1e-5)
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(logits.grad.double().cpu(), gr, rtol=tol, atol=tol * 0.05)


# ---- clip_grad_norm_ with torch's signature ----------------------------------------------------------

def _params(seed=10, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in ((6, 5), (7,), (2, 3, 4))]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g) * scale
    return ps


def _copies(ps):
    out = []
    for p in ps:
        q = torch.nn.Parameter(p.detach().clone())
        q.grad = p.grad.clone()
        out.append(q)
    return out


@pytest.mark.parametrize("norm_type", [2.0, "inf", 1.0, 3.0])
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_norm_types_match_torch(norm_type, max_norm):
    nt = float(norm_type)
    ps = _params()
    ref_ps = _copies(ps)
    want = torch.nn.utils.clip_grad_norm_(ref_ps, max_norm, norm_type=nt)
    got = clip_grad_norm_(ps, max_norm, norm_type=nt, foreach=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for p, r in zip(ps, ref_ps):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm_type", [2.0, float("inf")])
def test_clip_grad_norm_max_norm_inf_returns_the_norm_without_clipping(norm_type):
    ps = _params(scale=50.0)
    before = [p.grad.clone() for p in ps]
    got = clip_grad_norm_(ps, float("inf"), norm_type)
    want = torch.nn.utils.get_total_norm([b for b in before], norm_type)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for b, p in zip(before, ps):
        assert torch.equal(b, p.grad)


def test_clip_grad_norm_error_if_nonfinite_raises_and_writes_nothing():
    ps = _params()
    ps[1].grad[2] = float("inf")
    before = [p.grad.clone() for p in ps]
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_(ps, 1.0, error_if_nonfinite=True)
    for b, p in zip(before, ps):
        assert torch.equal(b, p.grad)
    ok = _params(seed=11)
    ref_ps = _copies(ok)
    torch.testing.assert_close(clip_grad_norm_(ok, 0.3, error_if_nonfinite=True),
                               torch.nn.utils.clip_grad_norm_(ref_ps, 0.3, error_if_nonfinite=True))
    for p, r in zip(ok, ref_ps):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-5, atol=1e-6)


def test_clip_grad_norm_bad_arguments_name_them():
    ps = _params()
    before = [p.grad.clone() for p in ps]
    with pytest.raises(ValueError, match="norm_type"):
        clip_grad_norm_(ps, 1.0, norm_type=0)
    with pytest.raises(TypeError, match="norm_type"):
        clip_grad_norm_(ps, 1.0, norm_type="fro")
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm_(ps, float("nan"))
    with pytest.raises(ValueError, match="norm_type"):
        clip_grad_norm_(ps, 1.0, norm_type=1.0, scope="tensor")
    for b, p in zip(before, ps):
        assert torch.equal(b, p.grad)


# ---- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fused", [True, False])
def test_bad_input_raises_naming_the_argument(fused):
    z, y = logits_and_labels((8,), 5, seed=12)

    def call(logits, target, **kw):
        return cross_entropy(logits, target, alpha=0.3, fused=fused, **kw)

    cases = [
        ((z.long(), y), TypeError, "logits"),                           # integer logits
        ((z.double(), y), TypeError, "logits"),                         # float64 logits
        ((z > 0, y), TypeError, "logits"),                              # bool logits
        ((z.numpy(), y), TypeError, "logits"),                          # not a tensor
        ((z[0, 0], y[0]), ValueError, "logits"),                        # 0-d logits
        ((z[:, :0], y), ValueError, "logits"),                          # no classes
        ((z.to("meta"), y.to("meta")), ValueError, "logits"),           # unsupported device
        ((z, y.float()), TypeError, "target"),                          # float class indices
        ((z, y > 2), TypeError, "target"),                              # bool target
        ((z, y[:5]), ValueError, "target"),                             # wrong length
        ((z, y.reshape(2, 4)), ValueError, "target"),                   # wrong shape
        ((z, y.to("meta")), ValueError, "target"),                      # wrong device
        ((z, torch.rand(8, 4)), ValueError, "target"),                  # probabilities of another shape
        ((z, torch.rand(8, 5, 1)), ValueError, "target"),
        ((z, torch.randint(0, 5, (8, 5))), ValueError, "target"),       # integer target of the logits' shape
        ((z, y, ), ValueError, "reduction", {"reduction": "avg"}),
        ((z, y), _lib.ArgumentRangeError, "ignore_index", {"ignore_index": 1 << 63}),
        ((z, y), TypeError, "ignore_index", {"ignore_index": 1.5}),
        ((z, y), TypeError, "alpha", {"alpha": "0.3"}),
        ((z, y), TypeError, "alpha", {"alpha": torch.tensor(0.3)}),
    ]
    z_before = z.clone()
    for case in cases:
        args, exc, name = case[:3]
        kw = case[3] if len(case) > 3 else {}
        x = args[0]
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.device.type == "cpu":
            x = x.clone().requires_grad_(True)
        with pytest.raises(exc, match=name):
            call(x, args[1], **kw)
        with pytest.raises(exc, match=name):  # the in-place form refuses before writing anything
            call(x * 1.0 if isinstance(x, torch.Tensor) and x.requires_grad else x, args[1], inplace=True, **kw)
    assert torch.equal(z, z_before)
    # out-of-range values are the library's to report (PowerGradError names the argument)
    with pytest.raises(powergrad.PowerGradError, match="alpha"):
        cross_entropy(z, y, alpha=-0.1, fused=fused)
    with pytest.raises(powergrad.PowerGradError, match="label_smoothing"):
        cross_entropy(z, y, label_smoothing=-0.5, fused=fused)


def _misaligned(rows, cols, g):
    # float32 elements starting 2 bytes into a buffer: not aligned to the element size
    t = torch.frombuffer(bytearray(4 * rows * cols + 2), dtype=torch.float32, offset=2, count=rows * cols)
    t.copy_(torch.randn(rows * cols, generator=g))
    return t.requires_grad_(True)


@pytest.mark.parametrize("fused", [True, False])
def test_layouts_the_library_cannot_read_are_copied_and_equal_f_cross_entropy(fused):
    # Each case: a leaf w, the odd-layout logits built from it (differentiable), and the target. The
    # loss and d(loss)/dw must equal F.cross_entropy's at alpha = 1.
    g = torch.Generator().manual_seed(13)
    y = torch.randint(0, 9, (14,), generator=g)
    q = torch.softmax(torch.randn(9, 14, generator=g), 0)  # q.t() is a transposed [14, 9] distribution
    cases = {
        "transposed": (torch.randn(9, 14, generator=g), lambda w: w.t(), y),
        "column slice (row stride > cols)": (torch.randn(14, 20, generator=g), lambda w: w[:, 3:12], y),
        "every other column": (torch.randn(14, 18, generator=g), lambda w: w[:, ::2], y),
        "stride-0 rows (expanded)": (torch.randn(1, 9, generator=g), lambda w: w.expand(14, 9), y),
        "stride-0 target (expanded)": (torch.randn(14, 9, generator=g), lambda w: w, y[:1].expand(14)),
        "transposed probabilities": (torch.randn(14, 9, generator=g), lambda w: w, q.t()),
        "expanded probabilities": (torch.randn(14, 9, generator=g), lambda w: w, q.t()[:1].expand(14, 9)),
        "misaligned start": (None, lambda w: w.reshape(14, 9), y),
    }
    for name, (w0, layout, target) in cases.items():
        w = _misaligned(14, 9, g) if w0 is None else w0.requires_grad_(True)
        x = layout(w)
        odd = not x.is_contiguous() or x.data_ptr() % 4 != 0 or not target.is_contiguous()
        assert odd, name
        mine = cross_entropy(x, target, fused=fused)
        (g_mine,) = torch.autograd.grad(mine, w)
        theirs = F.cross_entropy(layout(w), target)
        (g_theirs,) = torch.autograd.grad(theirs, w)
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(g_mine, g_theirs, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("shape", [(0,), (2, 0), (0, 3)])
def test_empty_batches(fused, shape):
    z = torch.randn(*shape, 7)
    y = torch.randint(0, 7, shape)
    for reduction in ("mean", "sum", "none"):
        x = z.clone().requires_grad_(True)
        loss = cross_entropy(x, y, alpha=0.3, reduction=reduction, fused=fused)
        assert loss.dtype == torch.float32
        assert loss.shape == (shape if reduction == "none" else ())
        if reduction != "none":
            assert loss.item() == 0.0  # 'sum' is F.cross_entropy's 0; 'mean' is 0 where PyTorch gives NaN
        loss.sum().backward()
        assert x.grad.shape == z.shape
    torch.testing.assert_close(cross_entropy(z, y, reduction="sum", fused=fused), F.cross_entropy(
        z.reshape(-1, 7), y.reshape(-1), reduction="sum"))
