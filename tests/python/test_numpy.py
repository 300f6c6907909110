"""NumPy entry points vs the float64 reference (every element checked)."""

import os

import pytest

if os.environ.get("POWERGRAD_TEST_STRICT") == "1":
    import numpy as np
else:
    np = pytest.importorskip("numpy", reason="NumPy cannot be imported: install python3-numpy (Debian)")

import powergrad as pg
import reference as ref

SHAPES = [(1, 1), (3, 2), (13, 37), (64, 1000)]
TOL = {np.float32: dict(loss=1e-5, grad=1e-5), np.float16: dict(loss=2e-3, grad=2e-3)}


def make(rows, cols, dtype, seed=0, ignored=True, scale=3.0):
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((rows, cols)) * scale).astype(dtype)
    y = rng.integers(0, cols, rows).astype(np.int64)
    if ignored and rows > 2:
        y[1] = -100
    return z, y


def check_grad(got, want, dtype):
    tol = TOL[dtype]["grad"]
    atol = tol * max(1.0, np.abs(want).max())
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol, atol=atol)


def check_loss(got, want, dtype):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=TOL[dtype]["loss"], atol=TOL[dtype]["loss"])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha", [1.0, 0.3, 0.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_forward_backward(dtype, shape, alpha, reduction, eps):
    z, y = make(*shape, dtype)
    loss, grad = pg.cross_entropy_forward_backward(z, y, alpha=alpha, label_smoothing=eps, reduction=reduction)
    want_loss, want_grad = ref.xent(z, y, alpha, -100, eps, reduction)
    assert grad.dtype == dtype and grad.shape == z.shape
    check_loss(loss, want_loss, dtype)
    check_grad(grad, want_grad, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_inplace_and_row_stride(dtype):
    # logits are a column slice of a wider buffer: ld > cols, padding must stay untouched.
    z, y = make(9, 21, dtype, seed=1)
    buf = np.full((9, 32), 7.0, dtype=dtype)
    buf[:, :21] = z
    view = buf[:, :21]
    loss, grad = pg.cross_entropy_forward_backward(view, y, alpha=0.5, inplace=True)
    want_loss, want_grad = ref.xent(z, y, 0.5)
    assert grad is view or np.shares_memory(grad, buf)
    check_loss(loss, want_loss, dtype)
    check_grad(buf[:, :21], want_grad, dtype)
    assert np.all(buf[:, 21:] == 7.0)


def test_int32_targets_and_ignore_index():
    z, y = make(10, 17, np.float32, seed=2, ignored=False)
    y[[0, 4]] = 3  # used as ignore_index below
    y32 = y.astype(np.int32)
    loss, grad = pg.cross_entropy_forward_backward(z, y32, alpha=0.2, ignore_index=3, reduction="sum")
    want_loss, want_grad = ref.xent(z, y, 0.2, 3, 0.0, "sum")
    check_loss(loss, want_loss, np.float32)
    check_grad(grad, want_grad, np.float32)
    assert np.all(grad[[0, 4]] == 0)


def test_dense_targets():
    rng = np.random.default_rng(3)
    z = rng.standard_normal((6, 11)).astype(np.float32)
    q = rng.random((6, 11))
    q /= q.sum(1, keepdims=True)
    loss, grad = pg.cross_entropy_forward_backward(z, q, alpha=0.4, label_smoothing=0.1)
    want_loss, want_grad = ref.xent(z, q.astype(np.float32), 0.4, -100, 0.1, "mean")
    check_loss(loss, want_loss, np.float32)
    check_grad(grad, want_grad, np.float32)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_upstream(reduction):
    z, y = make(12, 30, np.float32, seed=4)
    rng = np.random.default_rng(5)
    up = rng.standard_normal(12).astype(np.float32) if reduction == "none" else 2.5
    loss, grad = pg.cross_entropy_forward_backward(z, y, alpha=0.3, reduction=reduction, upstream=up)
    want_loss, want_grad = ref.xent(z, y, 0.3, -100, 0.0, reduction, upstream=up)
    check_loss(loss, want_loss, np.float32)  # the loss does not see the upstream
    check_grad(grad, want_grad, np.float32)


def test_mean_with_no_valid_rows_is_zero():
    z, _ = make(4, 5, np.float32)
    y = np.full(4, -100)
    loss, grad = pg.cross_entropy_forward_backward(z, y, alpha=0.5)
    assert loss == 0.0 and np.all(grad == 0)


@pytest.mark.parametrize("saved", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_backward(saved, reduction):
    z, y = make(20, 50, np.float32, seed=6)
    up = np.linspace(-1, 2, 20).astype(np.float32) if reduction == "none" else 0.5
    lse_alpha = None
    if saved:
        _, _, lse_alpha = pg.cross_entropy_forward_backward(z, y, alpha=0.25, reduction=reduction,
                                                            return_lse_alpha=True)
        a = 0.25 * z.astype(np.float64)
        want_lse_a = np.log(np.exp(a - a.max(1, keepdims=True)).sum(1)) + a.max(1)
        np.testing.assert_allclose(lse_alpha, want_lse_a, rtol=1e-6, atol=1e-6)
    grad = pg.cross_entropy_backward(z, y, alpha=0.25, reduction=reduction, upstream=up, lse_alpha=lse_alpha)
    _, want = ref.xent(z, y, 0.25, -100, 0.0, reduction, upstream=up)
    check_grad(grad, want, np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_hook_transform(dtype, alpha):
    # G = s_r (p - q) with a known per-row scale -> s_r (p' - q).
    z, y = make(16, 40, dtype, seed=7, scale=1.0)
    rows = z.shape[0]
    s = 1024.0 / 15  # a loss scale over n_valid
    row = np.linspace(0.5, 2.0, rows).astype(np.float32)
    _, g_plain = ref.xent(z, y, 1.0, -100, 0.1, "none", upstream=s * row)
    _, want = ref.xent(z, y, alpha, -100, 0.1, "none", upstream=s * row)
    out = pg.hook_transform(g_plain.astype(dtype), y, scale=s, alpha=alpha, label_smoothing=0.1, row_scale=row)
    assert out.dtype == dtype
    tol = 1e-4 if dtype == np.float32 else 2e-2  # p is recovered from the rounded gradient
    np.testing.assert_allclose(out.astype(np.float64), want, rtol=tol, atol=tol * np.abs(want).max())


def test_errors_carry_status_and_message():
    z, y = make(4, 5, np.float32, ignored=False)
    y[2] = 9
    with pytest.raises(pg.PowerGradError) as e:
        pg.cross_entropy_forward_backward(z, y)
    assert e.value.status == pg.Status.INVALID_TARGET
    assert "PG_STATUS_INVALID_TARGET" in str(e.value) and e.value.message
    y[2] = 0
    with pytest.raises(pg.PowerGradError) as e:
        pg.cross_entropy_forward_backward(z, y, alpha=-1.0)
    assert e.value.status == pg.Status.INVALID_VALUE
    with pytest.raises(TypeError):
        pg.cross_entropy_forward_backward(z.astype(np.float64), y)
    with pytest.raises(ValueError):
        pg.cross_entropy_forward_backward(z, y, reduction="avg")


def test_reference_gradient_is_the_derivative_at_alpha_1():
    # Validates the reference itself: at alpha = 1 its gradient is d(loss)/dz (central differences).
    z, y = make(5, 7, np.float64, seed=8, scale=1.0)
    _, g = ref.xent(z, y, 1.0, -100, 0.1, "mean")
    h = 1e-6
    fd = np.zeros_like(z)
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            zp, zm = z.copy(), z.copy()
            zp[i, j] += h
            zm[i, j] -= h
            fd[i, j] = (ref.xent(zp, y, 1.0, -100, 0.1)[0] - ref.xent(zm, y, 1.0, -100, 0.1)[0]) / (2 * h)
    np.testing.assert_allclose(g, fd, atol=1e-8)


@pytest.mark.no_library
def test_loader_search_order(monkeypatch, tmp_path):
    from powergrad import _lib
    monkeypatch.setenv("POWERGRAD_LIBRARY", str(tmp_path))
    paths = _lib.candidate_paths()
    assert paths[0].endswith("python/powergrad/libpowergrad.so")
    assert paths[1] == str(tmp_path / "libpowergrad.so")
    assert any(p.endswith("build/src/libpowergrad.so") for p in paths[2:])


@pytest.mark.no_library
def test_loader_error_names_the_places_it_searched(monkeypatch, tmp_path):
    from powergrad import _lib
    missing = str(tmp_path / "nowhere" / "libpowergrad.so")
    monkeypatch.setattr(_lib, "_lib", None)
    monkeypatch.setattr(_lib, "candidate_paths", lambda: [missing])
    with pytest.raises(pg.LibraryNotFoundError) as e:
        _lib.load_library()
    assert missing in str(e.value) and "POWERGRAD_LIBRARY" in str(e.value)


def test_empty_batch_in_place():
    # NumPy gives empty arrays zero strides: still a valid (empty) in-place layout.
    x = np.empty((0, 5), np.float32)
    loss, grad = pg.cross_entropy_forward_backward(x, np.empty(0, np.int64), alpha=0.5, inplace=True)
    assert float(np.asarray(loss).reshape(-1)[0]) == 0.0
    assert grad.shape == (0, 5)
