"""The vocabulary-parallel PGT cross-entropy under jax.shard_map on 4 host devices, against the
unsharded op and the float64 reference (tests/python/reference.py). Run by test_jax.py in a
subprocess, because XLA_FLAGS (the number of host devices) must be set before jax is imported.
Prints one line per case and exits non-zero on the first mismatch."""

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "python"))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import powergrad.jax as pj  # noqa: E402
import reference  # noqa: E402

SHARDS = 4
assert jax.device_count() == SHARDS, jax.devices()
mesh = jax.make_mesh((SHARDS,), ("v",))


def check(name, got, want, rtol, atol):
    got = np.asarray(got, np.float64)
    err = np.abs(got - want)
    bad = err > atol + rtol * np.abs(want)
    if bad.any() or got.shape != np.shape(want):
        print("FAIL %s: shape %s vs %s, max error %g" % (name, got.shape, np.shape(want), err.max()))
        sys.exit(1)
    print("ok %s (max error %.3g)" % (name, err.max()))


def run(rows, cols_per_shard, dense, alpha, eps, reduction, dtype):
    rng = np.random.default_rng(rows + cols_per_shard)
    cols = cols_per_shard * SHARDS
    z = (rng.standard_normal((rows, cols)) * 3).astype(np.float32)
    z = np.asarray(jnp.asarray(z, dtype).astype(jnp.float32))  # the values the op sees
    if dense:
        t = rng.random((rows, cols))
        t = (t / t.sum(1, keepdims=True)).astype(np.float32)
        t = np.asarray(jnp.asarray(t, dtype).astype(jnp.float32))
        t_in = jnp.asarray(t, dtype)
        t_spec = P(None, "v")
    else:
        t = rng.integers(0, cols, rows).astype(np.int32)
        t[1] = -100
        t_in = jnp.asarray(t)
        t_spec = P()
    kw = dict(alpha=alpha, label_smoothing=eps, reduction=reduction)

    def local(zs, ts):
        f = lambda zz: pj.vocab_parallel_cross_entropy(zz, ts, "v", **kw)
        if reduction == "none":
            loss, vjp = jax.vjp(f, zs)
            (dz,) = vjp(jnp.arange(1, rows + 1, dtype=jnp.float32))
            return loss, dz
        return jax.value_and_grad(f)(zs)

    put = lambda a, spec: jax.device_put(a, jax.sharding.NamedSharding(mesh, spec))
    zs, ts = put(jnp.asarray(z, dtype), P(None, "v")), put(t_in, t_spec)
    up = np.arange(1, rows + 1, dtype=np.float64) if reduction == "none" else None
    want_loss, want_grad = reference.xent(z, t, alpha=alpha, label_smoothing=eps, reduction=reduction, upstream=up)
    tag = "%dx%d %s %s alpha=%g eps=%g %s" % (rows, cols, "dense" if dense else "index", reduction, alpha, eps,
                                              jnp.dtype(dtype).name)
    gtol = {jnp.float32: 2e-6, jnp.bfloat16: 1e-2, jnp.float16: 2e-3}[dtype] * max(1.0, np.abs(want_grad).max())
    # The gradient taken inside the mapped function, with and without shard_map's varying-axes check.
    loss_spec = P()
    for check_vma in (True, False):
        sharded = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(None, "v"), t_spec),
                                        out_specs=(loss_spec, P(None, "v")), check_vma=check_vma))
        loss, dz = sharded(zs, ts)
        check("shard_map loss (check_vma=%s) %s" % (check_vma, tag), loss, want_loss, 1e-5, 1e-5)
        check("shard_map grad (check_vma=%s) %s" % (check_vma, tag), np.asarray(dz.astype(jnp.float32)), want_grad,
              0.0, gtol)
    # jax.grad outside shard_map (check_vma=True: the loss is typed replicated).
    if reduction != "none":
        outer = jax.jit(jax.grad(jax.shard_map(lambda a, b: pj.vocab_parallel_cross_entropy(a, b, "v", **kw),
                                               mesh=mesh, in_specs=(P(None, "v"), t_spec), out_specs=P())))
        check("grad outside shard_map " + tag, np.asarray(outer(zs, ts).astype(jnp.float32)), want_grad, 0.0, gtol)
    # The unsharded op on the same input agrees with the sharded one.
    if reduction != "none":
        l1, g1 = jax.jit(jax.value_and_grad(lambda zz: pj.cross_entropy(zz, t_in, **kw)))(jnp.asarray(z, dtype))
        loss = float(jax.device_get(loss))
        check("unsharded loss " + tag, loss, float(l1), 1e-5, 1e-6)
        check("unsharded grad " + tag, np.asarray(dz.astype(jnp.float32)), np.asarray(g1.astype(jnp.float32)), 0.0,
              gtol)


def run_data_parallel():
    """cross_entropy on row shards inside shard_map under check_vma=True: the global mean from a psum."""
    rng = np.random.default_rng(5)
    z = (rng.standard_normal((4 * 6, 19)) * 2).astype(np.float32)
    t = rng.integers(0, 19, 4 * 6).astype(np.int32)

    def local(zs, ts):
        f = lambda a: jax.lax.psum(pj.cross_entropy(a, ts, alpha=0.3, reduction="sum"), "v") / z.shape[0]
        return jax.value_and_grad(f)(zs)

    step = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("v"), P("v")), out_specs=(P(), P("v"))))
    put = lambda a: jax.device_put(a, jax.sharding.NamedSharding(mesh, P("v")))
    loss, dz = step(put(z), put(t))
    want_loss, want_grad = reference.xent(z, t, alpha=0.3)
    check("data-parallel loss (check_vma=True)", float(jax.device_get(loss)), want_loss, 1e-5, 1e-6)
    # psum's transpose under check_vma hands each shard the cotangent once: the gradient of the mean.
    check("data-parallel grad (check_vma=True)", np.asarray(dz), want_grad, 0.0, 2e-6)


if __name__ == "__main__":
    run_data_parallel()
    run(13, 7, False, 0.3, 0.0, "mean", jnp.float32)
    run(13, 7, False, 1.0, 0.1, "sum", jnp.float32)
    run(9, 33, False, 0.5, 0.05, "none", jnp.float32)
    run(11, 5, True, 0.25, 0.1, "mean", jnp.float32)
    run(16, 64, False, 0.3, 0.1, "mean", jnp.bfloat16)
    run(8, 16, False, 0.0, 0.0, "mean", jnp.float16)
    print("all vocab-parallel checks passed")
