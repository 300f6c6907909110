"""The optional C++ registration of the fused cross-entropy (libpowergrad_torch, ffi/torch/ops.cpp,
built with -DPOWERGRAD_BUILD_TORCH_OPS=ON): the same bits as the Python ops (which the other tests
check against PyTorch and the float64 reference), torch.library.opcheck, torch.compile(fullgraph=True),
the backward rules and the errors. Skipped when the library was not built (it is optional; CI's
default build does not have it). The compile test takes tens of seconds on a loaded 2-core machine."""

import os

import pytest

try:
    import torch
except ImportError as e:  # pragma: no cover - depends on the machine
    if os.environ.get("POWERGRAD_TEST_STRICT") == "1":
        raise
    pytest.skip("torch cannot be imported (%s)" % e, allow_module_level=True)

import powergrad as pg  # noqa: E402
import powergrad.torch as pgt  # noqa: E402
from powergrad.torch import _cpp  # noqa: E402
from torch.library import opcheck  # noqa: E402

if not _cpp._load():
    pytest.skip("libpowergrad_torch.so is not built (optional: -DPOWERGRAD_BUILD_TORCH_OPS=ON): %s"
                % _cpp._state["error"], allow_module_level=True)


@pytest.fixture
def cpp():
    before = _cpp._state["enabled"]
    _cpp.enable(True)
    yield
    _cpp.enable(before)


def run(path_cpp, z, y, grad=True, upstream=None, **kw):
    """(loss, logits gradient) through the C++ ops (path_cpp) or the Python ones."""
    _cpp.enable(path_cpp)
    x = z.detach().clone().requires_grad_(grad)
    loss = pgt.cross_entropy(x, y, **kw)
    if grad:
        (loss * (1.0 if upstream is None else upstream)).sum().backward()
    return loss.detach(), x.grad


def problem(shape, cols, dtype=torch.float32, seed=0, index_dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(shape + (cols,), generator=g) * 3).to(dtype)
    y = torch.randint(0, cols, shape, generator=g).to(index_dtype)
    y.view(-1)[1] = -100
    return z, y


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("alpha, eps", [(1.0, 0.0), (0.3, 0.1), (0.0, 0.0)])
def test_same_bits_as_the_python_ops(cpp, reduction, dtype, alpha, eps):
    z, y = problem((11,), 19, dtype)
    up = torch.linspace(0.5, 2.0, 11) if reduction == "none" else torch.tensor(3.0)
    kw = dict(alpha=alpha, label_smoothing=eps, reduction=reduction)
    lc, gc = run(True, z, y, upstream=up, **kw)
    lp, gp = run(False, z, y, upstream=up, **kw)
    assert lc.dtype == torch.float32 and gc.dtype == dtype
    assert torch.equal(lc, lp) and torch.equal(gc, gp)


def _misaligned(t):
    """t's values in a tensor whose data starts one byte past an aligned address (keep `raw` alive)."""
    raw = bytearray(t.numel() * t.element_size() + 1)
    out = torch.frombuffer(raw, dtype=t.dtype, offset=1, count=t.numel()).reshape(t.shape)
    out.copy_(t)
    assert out.data_ptr() % t.element_size() != 0
    return out, raw


def test_misaligned_inputs_are_copied_and_give_the_aligned_result(cpp):
    z, y = problem((9,), 7)
    zm, keep_z = _misaligned(z)
    ym, keep_y = _misaligned(y)
    for red in ("mean", "none"):
        lc, gc = run(True, zm, ym, alpha=0.3, reduction=red)
        lp, gp = run(False, z, y, alpha=0.3, reduction=red)
        assert torch.equal(lc, lp) and torch.equal(gc, gp)
    # Without grad the logits are not cloned by run(): the op itself must copy them.
    _cpp.enable(True)
    with torch.no_grad():
        got = pgt.cross_entropy(zm, ym, alpha=0.3)
    del keep_z, keep_y
    assert torch.equal(got, run(False, z, y, grad=False, alpha=0.3)[0])


@pytest.mark.parametrize("case", ["int32", "3d", "strided", "empty", "no_grad", "ignore_all"])
def test_layouts_and_edge_cases_match_the_python_ops(cpp, case):
    if case == "int32":
        z, y = problem((9,), 7, index_dtype=torch.int32)
    elif case == "3d":
        z, y = problem((2, 5), 7)
    elif case == "strided":
        z, y = problem((9,), 7)
        z = z.t().contiguous().t()  # column-major: copied to the ABI's layout first
    elif case == "empty":
        z, y = torch.zeros(0, 7), torch.zeros(0, dtype=torch.int64)
    elif case == "ignore_all":
        z, y = problem((9,), 7)
        y[:] = -100
    else:
        z, y = problem((9,), 7)
    grad = case != "no_grad"
    for red in ("mean", "none"):
        lc, gc = run(True, z, y, grad=grad, alpha=0.3, reduction=red)
        lp, gp = run(False, z, y, grad=grad, alpha=0.3, reduction=red)
        assert torch.equal(lc, lp)
        assert (gc is None and gp is None) or torch.equal(gc, gp)


def test_the_cpp_op_is_the_one_called(cpp):
    z, y = problem((4,), 5)
    loss = pgt.cross_entropy(z.clone().requires_grad_(True), y, alpha=0.3)
    assert "CppFunction" in type(loss.grad_fn).__name__
    # A call the C++ ops do not cover (class weights) goes to the Python ops.
    loss = pgt.cross_entropy(z.clone().requires_grad_(True), y, alpha=0.3, weight=torch.ones(5))
    assert "CppFunction" not in type(loss.grad_fn).__name__


@pytest.mark.parametrize("red", [0, 1, 2])
def test_opcheck(red):
    z, y = problem((12,), 17)
    x = z.clone().requires_grad_(True)
    opcheck(torch.ops.powergrad_cpp.xent, (x, y, 0.3, -100, 0.1, red))
    opcheck(torch.ops.powergrad_cpp.xent_fused, (z, y, 0.3, -100, 0.1, red, True))
    opcheck(torch.ops.powergrad_cpp.xent_fused, (z, y, 0.3, -100, 0.0, red, False))


def test_compile_fullgraph_equals_eager(cpp):
    z, y = problem((12,), 17)
    torch._dynamo.reset()
    f = torch.compile(lambda x, t: pgt.cross_entropy(x, t, alpha=0.3, label_smoothing=0.1), fullgraph=True)
    xc = z.clone().requires_grad_(True)
    lc = f(xc, y)
    lc.backward()
    le, ge = run(True, z, y, alpha=0.3, label_smoothing=0.1)
    assert torch.equal(lc.detach(), le) and torch.equal(xc.grad, ge)


def test_backward_twice_and_double_backward_raise(cpp):
    z, y = problem((6,), 5)
    x = z.clone().requires_grad_(True)
    loss = pgt.cross_entropy(x, y, alpha=0.3)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()
    x = z.clone().requires_grad_(True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(pgt.cross_entropy(x, y, alpha=0.3), x, create_graph=True)


def test_out_of_range_target_raises_powergrad_error_and_writes_nothing(cpp):
    z, y = problem((6,), 5)
    y[0] = 5
    with pytest.raises(pg.PowerGradError) as e:
        pgt.cross_entropy(z.clone().requires_grad_(True), y)
    assert e.value.status == pg.Status.INVALID_TARGET
