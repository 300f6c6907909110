"""powergrad.jax (XLA FFI handlers, ffi/jax/) against the float64 NumPy reference (reference.py,
docs/design.md §2.1) and against optax at alpha = 1: dtypes, shapes, ignore_index, label smoothing,
reductions, jit / grad / value_and_grad / vmap, the optax transformations on a model-sized pytree,
the vocabulary-parallel form under shard_map on 4 host devices (in a subprocess), and bad input.

Skipped, with the reason printed, when jax / optax are not importable or libpowergrad_jax.so was not
built (CMake builds it when the configuring Python has jax: docs/jax.md); under
POWERGRAD_TEST_STRICT=1 a missing library is a failure when jax is importable.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import STRICT

jax = pytest.importorskip("jax", reason="jax is not installed in this Python (powergrad.jax needs jax and jaxlib)")
optax = pytest.importorskip("optax", reason="optax is not installed in this Python")
import jax.numpy as jnp  # noqa: E402

import reference  # noqa: E402

try:
    import powergrad.jax as pj
    pj.library_path()
    _JAX_LIB_ERROR = None
except ImportError as e:
    _JAX_LIB_ERROR = str(e)

pytestmark = pytest.mark.no_library  # needs libpowergrad_jax.so, not libpowergrad.so


@pytest.fixture(autouse=True)
def _needs_jax_library():
    if _JAX_LIB_ERROR is not None:
        if STRICT:
            pytest.fail("POWERGRAD_TEST_STRICT=1: " + _JAX_LIB_ERROR, pytrace=False)
        pytest.skip(_JAX_LIB_ERROR)


DTYPES = [jnp.float32, jnp.float16, jnp.bfloat16]
# Gradient tolerance relative to the largest reference element: one rounding to the dtype plus the
# fp32 arithmetic of the op.
GRAD_TOL = {jnp.float32: 3e-6, jnp.float16: 2e-3, jnp.bfloat16: 1e-2}


def rounded(a, dtype):
    """The float64 values an array of `dtype` holds."""
    return np.asarray(jnp.asarray(a, dtype).astype(jnp.float32), np.float64)


def logits_and_targets(shape, seed=0, scale=3.0, ignore=True):
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal(shape) * scale).astype(np.float32)
    y = rng.integers(0, shape[-1], shape[:-1]).astype(np.int32)
    if ignore and y.size > 2:
        y.reshape(-1)[2] = -100
    return z, y


def assert_close(got, want, rtol, atol, what):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, "%s: shape %s, expected %s" % (what, got.shape, want.shape)
    err = np.abs(got - want)
    bad = ~(err <= atol + rtol * np.abs(want))
    assert not bad.any(), "%s: %d of %d elements off, max error %g at %s" % (
        what, bad.sum(), bad.size, err.max(), np.unravel_index(np.argmax(err), err.shape))


def ref2d(z, y, **kw):
    """reference.xent on [rows x cols] with leading dims folded."""
    cols = z.shape[-1]
    t = y.reshape(-1) if y.ndim == z.ndim - 1 else y.reshape(-1, cols)
    return reference.xent(z.reshape(-1, cols), t, **kw)


# ---- cross-entropy against the reference ----------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(37, 11), (4, 5, 130), (1, 1), (3, 1000)])
@pytest.mark.parametrize("alpha", [1.0, 0.3, 0.0])
def test_loss_and_grad_match_reference(dtype, shape, alpha):
    z, y = logits_and_targets(shape, seed=shape[-1])
    zd = jnp.asarray(z, dtype)
    loss, g = jax.jit(jax.value_and_grad(lambda a: pj.cross_entropy(a, y, alpha=alpha)))(zd)
    zr = rounded(z, dtype)
    want_loss, want_grad = ref2d(zr, y, alpha=alpha)
    assert loss.dtype == jnp.float32 and g.dtype == dtype and g.shape == shape
    assert_close(loss, want_loss, 1e-5, 1e-6, "loss")
    tol = GRAD_TOL[dtype] * max(np.abs(want_grad).max(), 1e-30)
    assert_close(np.asarray(g.astype(jnp.float32)).reshape(-1, shape[-1]), want_grad, 0.0, tol, "grad")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_reductions_label_smoothing_and_cotangent(reduction, eps):
    z, y = logits_and_targets((29, 17), seed=3)
    rng = np.random.default_rng(9)
    w = rng.random(29).astype(np.float32) + 0.5
    kw = dict(alpha=0.4, label_smoothing=eps, reduction=reduction)
    loss = pj.cross_entropy(z, y, **kw)
    want_loss, _ = reference.xent(z, y, **kw)
    assert_close(loss, want_loss, 1e-5, 1e-6, "loss")
    # The cotangent is applied exactly: a weighted sum for 'none', a factor for 'mean' / 'sum'.
    if reduction == "none":
        f = lambda a: jnp.sum(w * pj.cross_entropy(a, y, **kw))
        up = w.astype(np.float64)
    else:
        f = lambda a: 2.5 * pj.cross_entropy(a, y, **kw)
        up = 2.5
    _, want_grad = reference.xent(z, y, upstream=up, **kw)
    assert_close(jax.grad(f)(z), want_grad, 0.0, 3e-6 * np.abs(want_grad).max(), "grad")


def test_ignore_index_rows_and_all_ignored_mean():
    z, y = logits_and_targets((8, 6), seed=4, ignore=False)
    y[[1, 5]] = 7
    loss, g = jax.value_and_grad(lambda a: pj.cross_entropy(a, y, ignore_index=7, alpha=0.5))(z)
    want_loss, want_grad = reference.xent(z, y, ignore_index=7, alpha=0.5)
    assert_close(loss, want_loss, 1e-5, 1e-6, "loss")
    assert_close(g, want_grad, 0.0, 3e-6, "grad")
    assert np.all(np.asarray(g)[[1, 5]] == 0)
    # Every row ignored: mean loss 0 and gradient 0 (docs/design.md §2.1), not NaN.
    y_all = np.full(8, -100, np.int32)
    loss, g = jax.value_and_grad(lambda a: pj.cross_entropy(a, y_all))(z)
    assert float(loss) == 0.0 and np.all(np.asarray(g) == 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_probability_targets(dtype, eps):
    rng = np.random.default_rng(5)
    z = (rng.standard_normal((3, 7, 19)) * 2).astype(np.float32)
    q = rng.random((3, 7, 19))
    q = (q / q.sum(-1, keepdims=True)).astype(np.float32)
    qd, zd = jnp.asarray(q, dtype), jnp.asarray(z, dtype)
    loss, (gz, gq) = jax.value_and_grad(lambda a, b: pj.cross_entropy(a, b, alpha=0.3, label_smoothing=eps),
                                        argnums=(0, 1))(zd, qd)
    zr, qr = rounded(z, dtype), rounded(q, dtype)
    want_loss, want_grad = ref2d(zr, qr, alpha=0.3, label_smoothing=eps)
    assert_close(loss, want_loss, 1e-5, 1e-6, "loss")
    assert_close(np.asarray(gz.astype(jnp.float32)).reshape(-1, 19), want_grad, 0.0,
                 GRAD_TOL[dtype] * np.abs(want_grad).max(), "grad logits")
    # loss_r = -sum_j q'_j log p_j, so d loss / d q_j = -(1 - eps) log p_j / n_rows (the targets are
    # differentiable too).
    zd64 = zr.astype(np.float64)
    lse = np.log(np.exp(zd64 - zd64.max(-1, keepdims=True)).sum(-1, keepdims=True)) + zd64.max(-1, keepdims=True)
    want_gq = -(1.0 - eps) * (zd64 - lse) / zr[..., 0].size
    assert_close(np.asarray(gq.astype(jnp.float32)), want_gq, 0.0, GRAD_TOL[dtype] * np.abs(want_gq).max() * 4,
                 "grad targets")


def test_masked_logits_and_nan_rows():
    z, y = logits_and_targets((5, 9), seed=6, ignore=False)
    z[0, 3] = -np.inf
    z[1, :] = -np.inf
    z[2, 4] = np.nan
    y[0] = 1
    loss, g = jax.value_and_grad(lambda a: pj.cross_entropy(a, y, alpha=0.5, reduction="sum"))(z)
    g = np.asarray(g)
    per_row = np.asarray(pj.cross_entropy(z, y, alpha=0.5, reduction="none"))
    assert g[0, 3] == 0 and np.isfinite(g[0]).all()
    assert np.isnan(per_row[1]) and np.isnan(g[1]).all() and np.isnan(per_row[2]) and np.isnan(g[2]).all()
    want_loss, want_grad = reference.xent(z[3:], y[3:], alpha=0.5, reduction="sum")
    assert_close(per_row[3:].sum(), want_loss, 1e-5, 1e-6, "finite rows")
    assert np.isnan(float(loss))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batch(reduction):
    z = np.zeros((0, 10), np.float32)
    y = np.zeros((0,), np.int32)
    loss, g = jax.value_and_grad(lambda a: jnp.sum(pj.cross_entropy(a, y, reduction=reduction)))(z)
    assert float(loss) == 0.0 and g.shape == (0, 10)
    # An empty leaf in a tree: the others are transformed as usual.
    out, norm = pj.global_norm_and_clip({"a": jnp.zeros((0, 3)), "b": jnp.full(3, 5.0)}, 1.0)
    assert out["a"].shape == (0, 3)
    assert_close(norm, np.sqrt(75.0), 1e-6, 0.0, "norm")
    assert_close(out["b"], np.full(3, 5.0 / (np.sqrt(75.0) + 1e-6)), 1e-6, 0.0, "clipped")


def test_int64_targets_and_float64_logits_under_x64():
    # int64 class indices reach the handler as int64 (jax_enable_x64); float64 logits are refused.
    z, y = logits_and_targets((6, 7), seed=14)
    with jax.enable_x64(True):
        y64 = jnp.asarray(y.astype(np.int64))
        assert y64.dtype == jnp.int64
        loss, g = jax.jit(jax.value_and_grad(lambda a: pj.cross_entropy(a, y64, alpha=0.5)))(z)
        want_loss, want_grad = reference.xent(z, y, alpha=0.5)
        assert_close(loss, want_loss, 1e-5, 1e-6, "loss")
        assert_close(g, want_grad, 0.0, 3e-6, "grad")
        with pytest.raises(TypeError, match="logits must be float32, float16 or bfloat16, not float64"):
            pj.cross_entropy(z.astype(np.float64), y64)


# ---- against optax at alpha = 1 ------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(64, 10), (2, 16, 257)])
def test_grad_equals_optax_at_alpha_one(shape):
    z, y = logits_and_targets(shape, seed=7, ignore=False)
    ours = jax.jit(jax.value_and_grad(lambda a: pj.cross_entropy(a, y)))
    theirs = jax.jit(jax.value_and_grad(lambda a: optax.softmax_cross_entropy_with_integer_labels(a, y).mean()))
    (l1, g1), (l2, g2) = ours(z), theirs(z)
    assert_close(l1, l2, 1e-5, 1e-6, "loss vs optax")
    assert_close(g1, g2, 0.0, 1e-6 * np.abs(np.asarray(g2)).max() + 1e-9, "grad vs optax")
    q = jax.nn.one_hot(y, shape[-1]) * 0.9 + 0.1 / shape[-1]
    g3 = jax.grad(lambda a: pj.cross_entropy(a, q))(z)
    g4 = jax.grad(lambda a: optax.softmax_cross_entropy(a, q).mean())(z)
    assert_close(g3, g4, 0.0, 1e-6 * np.abs(np.asarray(g4)).max() + 1e-9, "dense grad vs optax")


# ---- compositions ----------------------------------------------------------------------------------

def test_vmap_grad_and_jit_compose():
    z, y = logits_and_targets((3, 12, 21), seed=8)
    f = lambda a, t: pj.cross_entropy(a, t, alpha=0.3)
    vg = jax.jit(jax.vmap(jax.value_and_grad(f)))(z, y)
    for b in range(3):
        want_loss, want_grad = reference.xent(z[b], y[b], alpha=0.3)
        assert_close(vg[0][b], want_loss, 1e-5, 1e-6, "vmap loss %d" % b)
        assert_close(vg[1][b], want_grad, 0.0, 3e-6, "vmap grad %d" % b)
    # vmap over the logits only (targets shared), under grad of a sum.
    g = jax.grad(lambda a: jnp.sum(jax.vmap(lambda x: f(x, y[0]))(a)))(z)
    for b in range(3):
        assert_close(g[b], reference.xent(z[b], y[0], alpha=0.3)[1], 0.0, 3e-6, "vmap shared targets %d" % b)


def test_second_call_and_model_chain_rule():
    # The gradient flows through the logits' producer (a linear layer), as any jnp op's would.
    rng = np.random.default_rng(10)
    x = rng.standard_normal((16, 8)).astype(np.float32)
    w = rng.standard_normal((8, 13)).astype(np.float32)
    y = rng.integers(0, 13, 16).astype(np.int32)
    gw = jax.jit(jax.grad(lambda w_: pj.cross_entropy(x @ w_, y, alpha=0.5)))(w)
    _, dz = reference.xent(x.astype(np.float64) @ w, y, alpha=0.5)
    assert_close(gw, x.T.astype(np.float64) @ dz, 0.0, 1e-5 * np.abs(x.T @ dz).max(), "dW")


# ---- the vocabulary-parallel form (shard_map, 4 host devices) ------------------------------------

def test_vocab_parallel_under_shard_map_on_4_host_devices():
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jax_vocab_parallel_check.py")
    env = dict(os.environ)
    env["POWERGRAD_JAX_LIBRARY"] = pj.library_path()
    r = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "all vocab-parallel checks passed" in r.stdout


# ---- gradient transformations against optax and the float64 reference ----------------------------

def model_tree(dtype=jnp.float32, seed=0, scale=1.0):
    """A model-sized pytree in JAX layouts: conv HWIO, dense IO, multi-head IO x H x D, vectors, a scalar."""
    rng = np.random.default_rng(seed)
    shapes = {"conv1": {"kernel": (3, 3, 16, 32), "bias": (32,)},
              "conv2": {"kernel": (3, 3, 32, 32), "bias": (32,)},
              "attn": {"qkv": (128, 4, 32), "out": (128, 128)},
              "dense": {"kernel": (512, 200), "bias": (200,)},
              "embed": (1000, 64), "norm_scale": (1, 64), "temperature": ()}

    def leaf(s):
        return jnp.asarray(rng.standard_normal(s) * scale, dtype)
    return jax.tree_util.tree_map(leaf, shapes, is_leaf=lambda s: isinstance(s, tuple))


def np_leaves(tree):
    return [np.asarray(jnp.asarray(x).astype(jnp.float32), np.float64) for x in jax.tree_util.tree_leaves(tree)]


def clip_ref(gs, max_norm):
    norm = np.sqrt(sum(np.sum(g * g) for g in gs))
    return [g * min(1.0, max_norm / (norm + 1e-6)) for g in gs], norm


def unit_norms(x):
    """optax's unitwise_norm layout, written from its documented rule (float64)."""
    if np.squeeze(x).ndim <= 1:
        axes = tuple(range(x.ndim))
    else:
        axes = {2: (0,), 3: (0,), 4: (0, 1, 2), 5: (0, 1, 2, 3)}[x.ndim]
    return np.sqrt(np.sum(x * x, axis=axes, keepdims=True)) * np.ones_like(x), axes


def agc_ref(gs, ps, clip, eps):
    out = []
    for g, p in zip(gs, ps):
        gn, _ = unit_norms(g)
        pn, _ = unit_norms(p)
        lim = clip * np.maximum(pn, eps)
        out.append(np.where(gn < lim, g, g * lim / np.maximum(gn, 1e-6)))
    return out


def power_ref(gs, beta, preserve, per_tensor):
    def k(sel):
        a = np.concatenate([np.abs(g).ravel() for g in sel])
        if preserve == "l1":
            return a.sum() / np.sum(a ** beta) if a.any() else 1.0
        if preserve == "l2":
            return np.sqrt(np.sum(a * a) / np.sum(a ** (2 * beta))) if a.any() else 1.0
        return 1.0
    ks = [k([g]) for g in gs] if per_tensor else [k(gs)] * len(gs)
    return [kk * np.sign(g) * np.abs(g) ** beta for kk, g in zip(ks, gs)]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_by_global_norm_matches_optax(dtype, max_norm):
    g = model_tree(dtype, seed=1, scale=0.01)
    tx = pj.clip_by_global_norm(max_norm)
    ours, _ = jax.jit(tx.update)(g, tx.init(g))
    want, _ = clip_ref(np_leaves(g), max_norm)
    theirs, _ = optax.clip_by_global_norm(max_norm).update(g, optax.EmptyState())
    tol = 2e-6 if dtype == jnp.float32 else 8e-3
    assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(g)
    for i, (a, b, w) in enumerate(zip(np_leaves(ours), np_leaves(theirs), want)):
        scale = np.abs(w).max() if w.size else 1.0
        assert_close(a, w, 0.0, tol * scale, "leaf %d vs reference" % i)
        assert_close(a, b, 0.0, tol * scale, "leaf %d vs optax" % i)
        assert jax.tree_util.tree_leaves(ours)[i].dtype == dtype


def test_clip_by_global_norm_mixed_dtypes_and_norm():
    g = model_tree(jnp.float32, seed=2, scale=0.02)
    g["dense"] = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), g["dense"])
    out, norm = jax.jit(lambda t: pj.global_norm_and_clip(t, 0.3))(g)
    want, want_norm = clip_ref(np_leaves(g), 0.3)
    assert_close(norm, want_norm, 1e-5, 0.0, "global norm")
    for i, (a, w) in enumerate(zip(np_leaves(out), want)):
        assert_close(a, w, 0.0, 8e-3 * np.abs(w).max(), "leaf %d" % i)


@pytest.mark.parametrize("dtype,pdtype", [(jnp.float32, jnp.float32), (jnp.bfloat16, jnp.bfloat16),
                                          (jnp.bfloat16, jnp.float32)])
def test_adaptive_grad_clip_matches_optax(dtype, pdtype):
    p = model_tree(pdtype, seed=3)
    g = model_tree(dtype, seed=4, scale=0.05)
    tx = pj.adaptive_grad_clip(0.04)
    ours, _ = jax.jit(tx.update)(g, tx.init(p), p)
    theirs, _ = optax.adaptive_grad_clip(0.04).update(g, optax.EmptyState(), p)
    want = agc_ref(np_leaves(g), np_leaves(p), 0.04, 1e-3)
    tol = 3e-6 if dtype == jnp.float32 else 8e-3
    clipped = 0
    for i, (a, b, w, g0) in enumerate(zip(np_leaves(ours), np_leaves(theirs), want, np_leaves(g))):
        assert_close(a, w, 0.0, tol * np.abs(w).max(), "leaf %d vs reference" % i)
        # optax computes in the leaves' dtype: one more rounding of bf16 than the library's fp32.
        assert_close(a, b, 0.0, 2 * tol * np.abs(w).max(), "leaf %d vs optax" % i)
        clipped += int(not np.allclose(w, g0))
    assert 0 < clipped < len(want)  # the case clips some leaves and keeps others


def test_adaptive_grad_clip_explicit_axis_and_power():
    p = {"k": jnp.asarray(np.random.default_rng(5).standard_normal((6, 7, 8)), jnp.float32)}
    g = {"k": jnp.asarray(np.random.default_rng(6).standard_normal((6, 7, 8)) * 0.5, jnp.float32)}
    ours, _ = pj.adaptive_grad_clip(0.1, axis=(0, 2)).update(g, None, p)
    theirs, _ = optax.adaptive_grad_clip(0.1, axis=(0, 2)).update(g, optax.EmptyState(), p)
    assert_close(ours["k"], theirs["k"], 0.0, 3e-6 * np.abs(np.asarray(theirs["k"])).max(), "axis=(0, 2)")
    # AGC then the L1-preserving power map per unit, in one pass.
    out, _ = pj.adaptive_grad_clip(0.1, beta=0.5, preserve="l1").update(g, None, p)
    clipped = agc_ref(np_leaves(g), np_leaves(p), 0.1, 1e-3)[0]
    gn = np.abs(clipped)
    l1 = gn.sum(axis=0, keepdims=True)
    want = l1 / np.sum(gn ** 0.5, axis=0, keepdims=True) * np.sign(clipped) * gn ** 0.5
    assert_close(out["k"], want, 0.0, 3e-6 * np.abs(want).max(), "agc + power")


@pytest.mark.parametrize("preserve", ["l1", "l2", None])
@pytest.mark.parametrize("scope", ["tensor", "tree"])
def test_power_map(preserve, scope):
    g = model_tree(jnp.float32, seed=7, scale=0.1)
    tx = pj.power_map(0.5, preserve=preserve, scope=scope)
    out, _ = jax.jit(tx.update)(g, tx.init(g))
    want = power_ref(np_leaves(g), 0.5, preserve, scope == "tensor")
    for i, (a, w) in enumerate(zip(np_leaves(out), want)):
        assert_close(a, w, 2e-6, 1e-7 * np.abs(w).max(), "leaf %d" % i)


def test_transformations_chain_in_an_optax_optimizer():
    p = model_tree(jnp.float32, seed=8)
    g = model_tree(jnp.float32, seed=9, scale=0.05)
    ours = optax.chain(pj.adaptive_grad_clip(0.05), pj.clip_by_global_norm(1.0), optax.sgd(0.1))
    theirs = optax.chain(optax.adaptive_grad_clip(0.05), optax.clip_by_global_norm(1.0), optax.sgd(0.1))
    u1, _ = jax.jit(ours.update)(g, ours.init(p), p)
    u2, _ = theirs.update(g, theirs.init(p), p)
    for i, (a, b) in enumerate(zip(np_leaves(u1), np_leaves(u2))):
        assert_close(a, b, 0.0, 1e-5 * max(np.abs(b).max(), 1e-30), "leaf %d" % i)


# ---- bad input: a clear error naming the argument, never a crash ----------------------------------

def test_bad_cross_entropy_arguments_raise_naming_them():
    z, y = logits_and_targets((4, 5), seed=11, ignore=False)
    cases = [
        (lambda: pj.cross_entropy(z.astype(np.int32), y), TypeError, "logits"),
        (lambda: pj.cross_entropy(z.astype(np.float64) if jax.config.jax_enable_x64 else np.zeros((4, 5), bool), y),
         TypeError, "logits"),
        (lambda: pj.cross_entropy(z, y[:3]), ValueError, "targets"),
        (lambda: pj.cross_entropy(z, np.ones((4, 5), jnp.bfloat16)), TypeError, "targets"),
        (lambda: pj.cross_entropy(z, np.ones((4, 6), np.float32)), ValueError, "targets"),
        (lambda: pj.cross_entropy(z, y.astype(bool)), TypeError, "targets"),
        (lambda: pj.cross_entropy(z, y, alpha=-0.5), ValueError, "alpha"),
        (lambda: pj.cross_entropy(z, y, alpha=float("nan")), ValueError, "alpha"),
        (lambda: pj.cross_entropy(z, y, alpha="big"), TypeError, "alpha"),
        (lambda: pj.cross_entropy(z, y, label_smoothing=1.0), ValueError, "label_smoothing"),
        (lambda: pj.cross_entropy(z, y, reduction="avg"), ValueError, "reduction"),
        (lambda: pj.cross_entropy(z, y, ignore_index=1.5), TypeError, "ignore_index"),
        (lambda: pj.cross_entropy(np.zeros((4, 0), np.float32), y), ValueError, "logits"),
        (lambda: jax.jit(lambda a: pj.cross_entropy(z, y, alpha=a))(0.5), TypeError, "alpha"),
    ]
    for fn, exc, name in cases:
        with pytest.raises(exc, match=name):
            fn()


@pytest.mark.parametrize("bad", [5, -1, 1 << 20])
def test_out_of_range_targets_on_cpu_raise_naming_targets(bad):
    if jax.default_backend() != "cpu":
        pytest.skip("on a GPU an out-of-range class index gives a NaN row instead (docs/design.md §8)")
    z, y = logits_and_targets((4, 5), seed=12, ignore=False)
    y[2] = bad
    for f in (lambda a: pj.cross_entropy(a, y), jax.jit(lambda a: pj.cross_entropy(a, y)),
              jax.jit(jax.grad(lambda a: pj.cross_entropy(a, y)))):
        with pytest.raises(Exception, match=r"targets\[2\] = %d is outside \[0, 5\)" % bad):
            jax.block_until_ready(f(z))


def test_bad_transformation_arguments_raise_naming_them():
    g = {"a": jnp.ones((3, 4)), "b": jnp.ones(4)}
    with pytest.raises(ValueError, match="max_norm"):
        pj.clip_by_global_norm(0.0)
    with pytest.raises(ValueError, match="clipping"):
        pj.adaptive_grad_clip(-1.0)
    with pytest.raises(ValueError, match="params"):
        pj.adaptive_grad_clip(0.01).update(g, None)
    with pytest.raises(ValueError, match="shape"):
        pj.adaptive_grad_clip(0.01).update(g, None, {"a": jnp.ones((4, 3)), "b": jnp.ones(4)})
    with pytest.raises(ValueError, match="beta"):
        pj.power_map(0.0)
    with pytest.raises(ValueError, match="preserve"):
        pj.power_map(0.5, preserve="l3")
    with pytest.raises(ValueError, match="scope"):
        pj.power_map(0.5, scope="layer")
    with pytest.raises(TypeError, match="leaf 0"):
        pj.clip_by_global_norm(1.0).update({"i": jnp.ones(3, jnp.int32)}, None)
    with pytest.raises(ValueError, match="rank 1 to 5"):
        pj.adaptive_grad_clip(0.01).update({"x": jnp.ones((2,) * 6)}, None, {"x": jnp.ones((2,) * 6)})


def test_vocab_parallel_rejects_an_ignore_index_inside_the_vocabulary():
    z, y = logits_and_targets((4, 8), seed=13, ignore=False)
    mesh = jax.make_mesh((1,), ("v",))
    f = jax.shard_map(lambda a: pj.vocab_parallel_cross_entropy(a, y, "v", ignore_index=3), mesh=mesh,
                      in_specs=jax.sharding.PartitionSpec(None, "v"), out_specs=jax.sharding.PartitionSpec(),
                      check_vma=False)
    z = jax.device_put(z, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "v")))
    with pytest.raises(ValueError, match="ignore_index"):
        f(z)


# ---- the benchmark script runs and checks its own results -----------------------------------------

def test_bench_jax_script_runs_and_its_gradients_match_float64(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, os.path.join(root, "bench", "bench_jax.py"), "--shapes", "64x100,8x3000",
                        "--repeats", "1", "--check-rows", "8", "--json", str(out), "--library", pj.library_path()],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    import json
    rows = json.loads(out.read_text())["rows"]
    assert {(x["impl"], x["alpha"]) for x in rows} == {("optax", 1.0), ("powergrad", 1.0),
                                                      ("optax-pgt-surrogate", 0.3), ("powergrad", 0.3)}
    assert len(rows) == 8
    for x in rows:
        assert x["grad_rel_err_vs_float64"] < 1e-5 and x["time_s"] > 0 and x["ratio_to_copy"] > 0, x
    assert "speed-up of powergrad" in r.stdout
