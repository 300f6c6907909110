#!/usr/bin/env python3
"""Host (CPU) benchmark of the PGT linear cross-entropy against torch's materialised
F.linear + F.cross_entropy: forward + backward (dh, dW, db) time, measured in the same process with
the two variants interleaved, and the peak extra memory of each, measured in a fresh child process per
variant (peak resident set minus the resident set before the call). docs/performance.md explains the
method; the machine and its load go with every figure quoted.

    bench_linear_xent_host.py [--rows 4096] [--hidden 512] [--vocab 32000] [--reps 3]
                              [--alpha 0.5] [--budget-mb 256] [--json OUT]

Needs torch and libpowergrad.so (POWERGRAD_LIBRARY or the repository's build folders). OpenBLAS picks
its kernels from the CPU model; where it does not know the model (some virtual machines report a bare
"Intel Xeon Processor") it falls back to a generic one several times slower: set OPENBLAS_CORETYPE
(e.g. SkylakeX or Haswell) and record it with the result ("openblas_coretype").
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def inputs(a):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(a.rows, a.hidden, generator=g).requires_grad_(True)
    w = (torch.randn(a.vocab, a.hidden, generator=g) / a.hidden ** 0.5).requires_grad_(True)
    b = torch.zeros(a.vocab).requires_grad_(True)
    y = torch.randint(0, a.vocab, (a.rows,), generator=g)
    return h, w, b, y


def step(variant, h, w, b, y, a):
    for t in (h, w, b):
        t.grad = None
    if variant == "powergrad":
        from powergrad.torch import linear_cross_entropy

        loss = linear_cross_entropy(h, w, y, bias=b, alpha=a.alpha, workspace_bytes=a.budget_mb << 20)
    else:
        loss = F.cross_entropy(F.linear(h, w, b), y)
    loss.backward()
    return float(loss.detach())


def status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError("no %s in /proc/self/status" % field)


def peak_extra_bytes(fn):
    """(fn's result, peak resident set during fn() minus the resident set before it, in bytes).

    Linux only. Writing 5 to /proc/self/clear_refs resets the peak resident set (VmHWM) to the current
    one, so the peak read afterwards is this call's. Meaningful in a fresh process (one call of fn):
    memory the allocator kept from earlier work would hide part of the growth. bench/compare_frameworks.py
    uses it too (its CPU linear cross-entropy rows).
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status_kb("VmRSS")
    result = fn()
    peak = status_kb("VmHWM")
    return result, (peak - before) * 1024


def child(a):
    h, w, b, y = inputs(a)
    _, extra = peak_extra_bytes(lambda: step(a.child, h, w, b, y, a))
    print(json.dumps({"variant": a.child, "peak_extra_bytes": extra}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--budget-mb", type=int, default=256)
    ap.add_argument("--json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a)
    h, w, b, y = inputs(a)
    times = {"powergrad": [], "torch": []}
    losses = {}
    for _ in range(a.reps):
        for v in ("powergrad", "torch"):
            t0 = time.perf_counter()
            losses[v] = step(v, h, w, b, y, a)
            times[v].append(time.perf_counter() - t0)
    mem = {}
    for v in ("powergrad", "torch"):
        cmd = [sys.executable, os.path.abspath(__file__), "--child", v, "--rows", str(a.rows), "--hidden",
               str(a.hidden), "--vocab", str(a.vocab), "--alpha", str(a.alpha), "--budget-mb", str(a.budget_mb)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        mem[v] = json.loads(out.strip().splitlines()[-1])["peak_extra_bytes"]
    res = {
        "shape": {"rows": a.rows, "hidden": a.hidden, "vocab": a.vocab, "dtype": "float32"},
        "alpha": a.alpha, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "seconds_min": {v: min(t) for v, t in times.items()},
        "seconds_all": times,
        "time_ratio_powergrad_to_torch": min(times["powergrad"]) / min(times["torch"]),
        "peak_extra_mb": {v: m / 1e6 for v, m in mem.items()},
        "loss": losses,
        "load_average": os.getloadavg(),
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", ""),
    }
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
