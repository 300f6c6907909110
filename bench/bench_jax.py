#!/usr/bin/env python3
"""Times powergrad.jax.cross_entropy against optax's softmax cross-entropy, forward + backward under
jax.jit, in the same process, and checks every implementation against a float64 reference.

Usage::

    bench/bench_jax.py [--shapes 4096x1000,2048x32000] [--dtypes float32] [--alpha 0.3]
                       [--repeats N] [--json PATH] [--library PATH]

One timed step is ``jax.value_and_grad(loss)(logits)`` of a jitted function (class targets, mean
reduction), its outputs waited for (``block_until_ready``); the figure is the median of ``--repeats``
steps after two warm-up calls (which compile). Implementations:

* ``optax`` -- ``optax.softmax_cross_entropy_with_integer_labels(z, y).mean()`` (alpha = 1);
* ``optax-pgt-surrogate`` -- PGT in plain jnp with optax's loss: ``CE(alpha z) / alpha +
  stop_gradient(CE(z) - CE(alpha z) / alpha)``, whose value is CE(z) and whose gradient is
  (softmax(alpha z) - onehot(y)) / N;
* ``powergrad`` -- ``powergrad.jax.cross_entropy(z, y, alpha=...)`` at alpha = 1 and at ``--alpha``
  (a forward FFI call saving lse_alpha, a backward FFI call: two reads of the logits, one write).

``copy`` is a same-run memcpy of the op's minimal bytes (read the logits, write the gradient:
docs/design.md §5) on the host, so ``ratio_to_copy`` = copy time / op time (1.0 is the floor) can be
compared across machines. On a GPU (the default device being one) the same runs on device buffers,
and ``copy`` is a jitted device copy. Absolute times on a shared machine are noise: compare ratios
from one run.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))


def parse_shape(s):
    r, c = s.lower().split("x")
    return int(r), int(c)


def median_time(fn, repeats):
    import jax
    for _ in range(2):
        jax.block_until_ready(fn())
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def reference_rows(z, y, alpha, rows, n):
    """float64 loss-row terms and gradient of the first `rows` rows of z (mean over all n rows)."""
    a = z[:rows].astype(np.float64)
    m = a.max(1, keepdims=True)
    lse = (m + np.log(np.exp(a - m).sum(1, keepdims=True)))[:, 0]
    za = alpha * a
    ma = za.max(1, keepdims=True)
    p = np.exp(za - ma)
    p /= p.sum(1, keepdims=True)
    q = np.zeros_like(a)
    q[np.arange(rows), y[:rows]] = 1.0
    return lse - a[np.arange(rows), y[:rows]], (p - q) / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="4096x1000,2048x32000")
    ap.add_argument("--dtypes", default="float32")
    ap.add_argument("--alpha", type=float, default=0.3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--library", default=None, help="libpowergrad_jax.so (else the usual lookup)")
    ap.add_argument("--check-rows", type=int, default=256, help="rows checked against float64")
    args = ap.parse_args()
    if args.library:
        os.environ["POWERGRAD_JAX_LIBRARY"] = args.library

    import jax
    import jax.numpy as jnp
    import optax
    import powergrad.jax as pj

    dev = jax.devices()[0]
    meta = {"platform": dev.platform, "device": str(dev.device_kind), "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "jax": jax.__version__, "optax": optax.__version__,
            "library": pj.library_path(), "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    print("# device %s (%s), %d CPUs, load %s, jax %s" % (meta["device"], meta["platform"], meta["cpu_count"],
                                                       meta["load_average"], meta["jax"]))
    rows_out = []
    for dname in args.dtypes.split(","):
        dtype = jnp.dtype(dname)
        for shape in args.shapes.split(","):
            n, c = parse_shape(shape)
            rng = np.random.default_rng(0)
            z_np = (rng.standard_normal((n, c)) * 2).astype(np.float32)
            y_np = rng.integers(0, c, n).astype(np.int32)
            z = jax.device_put(jnp.asarray(z_np, dtype))
            y = jax.device_put(jnp.asarray(y_np))
            z_seen = np.asarray(z[: args.check_rows].astype(jnp.float32))
            nbytes = 2 * n * c * dtype.itemsize
            if dev.platform == "cpu":
                src = np.ones(n * c * dtype.itemsize, np.uint8)
                dst = np.empty_like(src)
                copy_fn = lambda: np.copyto(dst, src)  # noqa: E731
                for _ in range(2):
                    copy_fn()
                ts = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    copy_fn()
                    ts.append(time.perf_counter() - t0)
                t_copy = statistics.median(ts)
            else:
                cp = jax.jit(lambda a: a * jnp.asarray(1, a.dtype) + jnp.asarray(0, a.dtype))
                t_copy = median_time(lambda: cp(z), args.repeats)

            def ce_optax(a, alpha=1.0):
                return optax.softmax_cross_entropy_with_integer_labels(a.astype(jnp.float32), y).mean()

            def surrogate(a, alpha):
                full = ce_optax(a)
                scaled = optax.softmax_cross_entropy_with_integer_labels(alpha * a.astype(jnp.float32), y).mean()
                return scaled / alpha + jax.lax.stop_gradient(full - scaled / alpha)

            impls = [("optax", 1.0, ce_optax), ("powergrad", 1.0, lambda a, al: pj.cross_entropy(a, y, alpha=al)),
                     ("optax-pgt-surrogate", args.alpha, surrogate),
                     ("powergrad", args.alpha, lambda a, al: pj.cross_entropy(a, y, alpha=al))]
            for name, alpha, f in impls:
                step = jax.jit(jax.value_and_grad(lambda a, f=f, alpha=alpha: f(a, alpha)))
                loss, g = step(z)
                want_terms, want_grad = reference_rows(z_seen, y_np, alpha, args.check_rows, n)
                got_grad = np.asarray(g[: args.check_rows].astype(jnp.float32), np.float64)
                grad_err = float(np.abs(got_grad - want_grad).max() / np.abs(want_grad).max())
                t = median_time(lambda: step(z), args.repeats)
                row = {"impl": name, "alpha": alpha, "dtype": dname, "rows": n, "cols": c, "time_s": t,
                       "gbps": nbytes / t / 1e9, "copy_time_s": t_copy, "ratio_to_copy": t_copy / t,
                       "grad_rel_err_vs_float64": grad_err, "loss": float(loss)}
                rows_out.append(row)
                print("%-20s alpha %-4g %-8s %6dx%-6d %9.2f ms  %6.2f GB/s  ratio_to_copy %.3f  grad err %.1e"
                      % (name, alpha, dname, n, c, t * 1e3, row["gbps"], row["ratio_to_copy"], grad_err), flush=True)
            by = {(r["impl"], r["alpha"]): r["time_s"] for r in rows_out if r["rows"] == n and r["cols"] == c
                  and r["dtype"] == dname}
            print("  speed-up of powergrad: %.2fx vs optax (alpha 1), %.2fx vs optax-pgt-surrogate (alpha %g)"
                  % (by[("optax", 1.0)] / by[("powergrad", 1.0)],
                     by[("optax-pgt-surrogate", args.alpha)] / by[("powergrad", args.alpha)], args.alpha))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows_out}, fh, indent=1)


if __name__ == "__main__":
    main()
