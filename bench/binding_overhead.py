#!/usr/bin/env python3
"""Per-call overhead of powergrad.torch next to F.cross_entropy, eager and under torch.compile (CPU).

Usage::

    bench/binding_overhead.py [--shapes 256x1000,1x8] [--repeats 25] [--calls 200] [--json PATH]
                              [--no-compile] [--threads N] [--library PATH] [--cpp]

For each shape (float32 logits, class targets, 'mean', alpha 0.3 for powergrad) it times, in one run:

* ``lib-direct``: the C ABI call alone (``pg_xent_forward_backward`` through ctypes with the argument
  structs built once): the library's own work plus one ctypes call, the floor of any binding;
* ``powergrad``: ``powergrad.torch.cross_entropy`` (argument checks, the torch.library op
  dispatch when compiled (eager mode calls the op's implementation directly on plain tensors),
  output allocation, the struct building and the same C call);
* ``powergrad-cpp`` (with ``--cpp``): the same call with the optional C++ ops enabled
  (libpowergrad_torch, built with ``-DPOWERGRAD_BUILD_TORCH_OPS=ON``; docs/python.md);
* ``F.cross_entropy``: PyTorch's own op (its dispatch plus its kernels);

each as a forward only (no grad: the loss) and as forward + backward (``loss.backward()`` on a leaf
requiring grad; the library computes the gradient in the forward call, backward scales it), eager
and compiled (``torch.compile(fn, fullgraph=True)`` of the loss function; backward then runs
AOTAutograd's compiled backward). The binding's overhead is ``powergrad - lib-direct`` (same work in
the library, same run). Times are the median over ``--repeats`` batches of ``--calls`` calls, in
microseconds per call; the machine's load is not controlled, so compare rows of the same run only
(docs/performance.md).
"""

import argparse
import ctypes
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

try:
    import powergrad
except ImportError:  # not installed: the repository's python/ folder
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    import powergrad

ALPHA = 0.3


def per_call_us(fn, calls, repeats):
    fn()
    fn()  # warm (allocator, caches, compiled code)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(times)


def lib_direct(z, y, with_grad):
    """A closure making the bare C call on z's memory (structs built once, outside the timing)."""
    from powergrad import _lib
    rows, cols = z.shape
    loss = torch.empty(1, dtype=torch.float32)
    grad = torch.empty_like(z) if with_grad else None
    p = _lib.XentProblem(device=_lib.Device.HOST, dtype=_lib.DType.FLOAT32, logits=z.data_ptr(), rows=rows,
                         cols=cols, ld=cols, target_kind=_lib.TargetKind.INDEX_INT64, targets=y.data_ptr(),
                         target_ld=0, ignore_index=-100, alpha=ALPHA, label_smoothing=0.0,
                         reduction=_lib.Reduction.MEAN, col_offset=0, total_cols=0, bad_target_count=None)
    up = _lib.Upstream(1.0, None)
    out = _lib.XentOutputs(loss=loss.data_ptr(), lse=None, lse_alpha=None,
                           dlogits=grad.data_ptr() if with_grad else None, ld_dlogits=cols if with_grad else 0)
    fn = _lib.load_library().pg_xent_forward_backward
    args = (ctypes.byref(p), ctypes.byref(up), ctypes.byref(out), None, 0, None)
    keep = (z, y, loss, grad, p, up, out)  # the C call writes into loss / grad: they must outlive it

    def call(keep=keep):
        st = fn(*args)
        if st:
            _lib.check("pg_xent_forward_backward", st)
    return call


def measure(shape, calls, repeats, compile_too, cpp=False):
    import powergrad.torch as pgt
    rows, cols = shape
    g = torch.Generator().manual_seed(0)
    z = torch.randn(rows, cols, generator=g)
    y = torch.randint(0, cols, (rows,), generator=g)
    leaf = z.clone().requires_grad_(True)

    def pg_loss(x, t):
        return pgt.cross_entropy(x, t, alpha=ALPHA)

    def torch_loss(x, t):
        return F.cross_entropy(x, t)

    fns = {"powergrad": pg_loss, "F.cross_entropy": torch_loss}
    if cpp:  # the same call with the C++ ops enabled (libpowergrad_torch; docs/python.md)
        def pg_cpp_loss(x, t):
            return pgt.cross_entropy(x, t, alpha=ALPHA)
        fns["powergrad-cpp"] = pg_cpp_loss
    modes = [("eager", dict(fns))]
    if compile_too:
        modes.append(("compiled", {k: torch.compile(f, fullgraph=True) for k, f in fns.items()}))
    rows_out = []
    for what, with_grad in (("forward", False), ("forward+backward", True)):
        rows_out.append(dict(shape="%dx%d" % shape, mode="-", impl="lib-direct", what=what,
                             us=per_call_us(lib_direct(z, y, with_grad), calls, repeats)))
        for mode, impls in modes:
            for name, f in impls.items():
                if with_grad:
                    def step(f=f):
                        leaf.grad = None
                        f(leaf, y).backward()
                else:
                    def step(f=f):
                        with torch.no_grad():
                            f(z, y)
                from powergrad.torch import _cpp
                _cpp.enable(name == "powergrad-cpp")
                try:
                    us = per_call_us(step, calls, repeats)
                finally:
                    _cpp.enable(False)
                rows_out.append(dict(shape="%dx%d" % shape, mode=mode, impl=name, what=what, us=us))
    return rows_out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="256x1000,1x8")
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's; 1 keeps a loaded machine from oversubscribing)")
    ap.add_argument("--library", default=None, help="libpowergrad.so to use (else the usual lookup)")
    ap.add_argument("--cpp", action="store_true",
                    help="also time powergrad with the C++ ops (libpowergrad_torch, -DPOWERGRAD_BUILD_TORCH_OPS=ON)")
    args = ap.parse_args()
    if args.library:
        os.environ["POWERGRAD_LIBRARY"] = args.library
    powergrad.load_library()
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",") if s]
    meta = dict(torch=torch.__version__, threads=torch.get_num_threads(), cpu=platform.processor() or platform.machine(),
                nproc=os.cpu_count(), loadavg=os.getloadavg(), library=powergrad.library_path(),
                calls=args.calls, repeats=args.repeats)
    print("binding_overhead: torch %s, %d threads, %d CPUs, load average %.2f %.2f %.2f" %
          ((meta["torch"], meta["threads"], meta["nproc"]) + tuple(meta["loadavg"])), flush=True)
    results = []
    for shape in shapes:
        results += measure(shape, args.calls, args.repeats, not args.no_compile, args.cpp)
    print("%-9s %-17s %-9s %-16s %10s %12s" % ("shape", "what", "mode", "impl", "us/call", "vs lib-direct"))
    for r in results:
        base = next(b["us"] for b in results if b["shape"] == r["shape"] and b["what"] == r["what"]
                    and b["impl"] == "lib-direct")
        r["over_lib_us"] = r["us"] - base
        print("%-9s %-17s %-9s %-16s %10.1f %+12.1f" % (r["shape"], r["what"], r["mode"], r["impl"], r["us"],
                                                          r["over_lib_us"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, rows=results), f, indent=1)


if __name__ == "__main__":
    main()
