#!/usr/bin/env python3
"""Times powergrad against PyTorch (eager, torch.compile), Liger-Kernel and timm on the same tensors,
and checks every implementation against a float64 reference computed here.

Usage::

    bench/compare_frameworks.py [--device cpu|cuda|auto] [--quick] [--alpha 0.3] [--repeats N]
                                [--json PATH] [--shapes 4096x32000,...] [--dtypes float32,bfloat16]
                                [--skip NAME,...] [--library PATH]

What is timed
-------------
1. Cross-entropy forward + backward of logits ``[N, C]`` (class targets, ``reduction='mean'``,
   upstream 1), once with the PGT exponent ``--alpha`` and once with alpha = 1. One timed step is
   ``loss = f(x, y); loss.backward()`` on a fresh leaf copy of the same logits (the copy is made
   outside the timed region). Implementations:

   * ``torch-eager-hook`` - the paper's method in plain PyTorch (the baseline of the speed-up column for
     alpha != 1): ``loss = F.cross_entropy(z, y)`` plus a tensor hook on ``z`` that replaces the
     gradient it receives, G = s (softmax(z) - onehot(y)), by s (softmax(alpha z) - onehot(y)). This hook
     *recomputes* p' = softmax(alpha z) from the saved logits (in float32) and ignores G.
   * ``torch-eager-hook-recover`` - the form of the authors' published hook: it *recovers* p from the
     gradient, p = G / s + onehot(y), then p' = p^alpha / sum(p^alpha). Cheaper in memory (no saved
     logits) but less precise: probabilities below the gradient's resolution are lost (visible in
     fp16/bf16). At alpha = 1 both hooks are still installed (what leaving the hook in place costs).
   * ``torch-eager-surrogate`` - the same gradient without a hook:
     ``CE(alpha z)/alpha + (CE(z) - CE(alpha z)/alpha).detach()`` has the value CE(z) and the gradient
     (softmax(alpha z) - onehot(y)) / N, because d CE(alpha z)/dz = alpha (softmax(alpha z) - q) / N.
     At alpha = 1 it is plain F.cross_entropy.
   * ``torch-compile`` - the surrogate under ``torch.compile`` (forward and backward graphs compiled;
     the hook form would leave a Python hook in the backward, which, depending on the torch version,
     breaks the graph or needs compiled autograd). Skipped when torch has no ``torch.compile``
     (torch < 2.0), and on the CPU unless ``--compile-cpu`` is given (compiling for the CPU takes
     longer than the whole quick run). Every (shape, dtype, alpha) is compiled afresh, tens of seconds
     each: on a tight GPU budget use ``--quick``, fewer ``--dtypes`` or ``--skip torch-compile``.
   * ``torch-F.cross_entropy`` - plain ``F.cross_entropy`` (alpha = 1 only; the baseline for alpha = 1).
   * ``liger-kernel`` - ``LigerCrossEntropyLoss`` (alpha = 1 only; Triton, so CUDA only).
   * ``powergrad`` / ``powergrad-twopass`` / ``powergrad-hook`` - ``powergrad.torch.cross_entropy``
     (fused: the gradient is written during the forward), the same with ``fused=False`` (two reads of
     the logits), and ``F.cross_entropy`` with ``powergrad.torch.pgt_hook`` (the library's hook form).

2. Bucket transforms on ResNet-50's 161 parameter tensors plus 1000 tiny tensors (float32):
   ``torch.nn.utils.clip_grad_norm_`` (``foreach=True`` where the installed torch has the argument) vs
   ``powergrad.torch.clip_grad_norm_``, and timm's ``adaptive_clip_grad`` (or, when timm is not
   installed, a reimplementation of its semantics below) vs ``powergrad.torch.adaptive_clip_grad_``.
   The gradients are restored outside the timed region before every step.

3. Linear cross-entropy (case ``linear_xent``; ``--no-linear`` or ``--skip linear_xent`` leaves it out):
   loss = CE(h W^T, y) (mean; a bias with ``--linear-bias``), one step = forward + backward to dh, dW
   (, db), at ``--linear-shapes NxHxV`` (default: 256x64x1000 on the CPU with ``--quick``, 4096x512x32000
   on the CPU, 1024x1024x32000 and 8192x4096x128256 on CUDA) and ``--linear-dtypes`` (float32 on the
   CPU, bfloat16 on CUDA), at ``--alpha`` and at 1. Implementations: ``torch-materialised`` (F.linear +
   F.cross_entropy, eager; the surrogate above for alpha != 1; the speed-up baseline),
   ``torch-compile-materialised`` (the same under torch.compile; CUDA only unless ``--compile-cpu``),
   ``liger-flce`` (LigerFusedLinearCrossEntropyLoss) and ``cce`` (cut_cross_entropy.linear_cross_entropy),
   both alpha = 1, CUDA only and skipped with the import error when not installed, ``powergrad-linear``
   (powergrad.torch.linear_cross_entropy), and on CUDA ``cublas-3-gemms``: the three bare GEMMs of the
   same sizes (z = h W^T, dh = G W, dW = G^T h, torch.matmul in the same dtype), the floor of the 1.15x
   goal; the ``/3 GEMMs`` column (``gemm_ratio``) is each row's time over it. Checked against float64
   (loss, and dh, dW, db relative to their largest reference element: 1e-4 fp32, 1e-2 fp16, 3e-2
   bf16) on the whole problem up to 2^31 multiply-adds, else on its first ``--linear-check-rows`` rows.
   Peak memory (``peak MB``, one extra step after the timing): on CUDA max_memory_allocated minus what
   was allocated before the step (the inputs); on the CPU the peak resident-set growth of one step in a
   fresh child process (``bench_linear_xent_host.peak_extra_bytes``; an in-process figure would be
   hidden by memory the allocator kept from earlier rows); not measured with ``--quick`` ('-').

The scale of the hook
---------------------
For ``loss = F.cross_entropy(z, y, reduction='mean')`` followed by ``(loss * L).backward()`` the
gradient reaching ``z`` is G = s (p - q) with s = L / N (N = number of rows whose target is not
``ignore_index``), so the hook must return s (p' - q), and the recovering form must compute
p = G / s + q = G * N / L + q. The authors' published hook computes ``grad / B + q``: it divides by the
batch size where it must multiply. That is exact only when the incoming gradient carries an extra
factor B^2, which held by coincidence in their runs (mixed-precision loss scale 65536 = 256^2, with 256
the per-GPU batch). Here L = 1, so s = 1 / N.

Checks
------
Every implementation that runs is compared with a float64 reference computed in this script
(loss = mean(logsumexp(z) - z_y); gradient = (softmax(alpha z) - onehot(y)) / N, evaluated on the same
rounded logits). For alpha != 1 only implementations of PGT are compared (the others are listed as not
applicable). The gradient tolerance is stated in units of s: |G - G_ref| / s <= 1e-4 (float32),
4e-3 (float16), 2e-2 (bfloat16); the loss tolerance is relative: 1e-5, 2e-3, 1e-2. The bucket
transforms are compared element by element with a float64 reference (relative error <= 1e-4).
Row statuses: ok; skipped or n/a (with the reason); error (it raised); mismatch (out of tolerance);
inexact (out of tolerance in fp16/bf16 for a hook that recovers p from the gradient, which is expected).

Timing: CUDA events around each step (after warm-up; the median of ``--repeats``) on a GPU,
``time.perf_counter`` on the CPU. The speed-up column is the baseline's median time / this median time.
Output: a table on stdout and, with ``--json PATH``, every row as JSON (see ``result_row``).
Exit status: 0, or 1 with ``--strict`` when an implementation errored or disagreed with the reference,
2 when nothing could run (no torch, or ``--device cuda`` without a GPU).
"""

import argparse
import datetime
import inspect
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON_DIR = os.path.join(ROOT, "python")
if PYTHON_DIR not in sys.path:
    sys.path.insert(0, PYTHON_DIR)

SCHEMA = "powergrad-compare-frameworks/1"

QUICK_SHAPES = [(256, 1000), (64, 5000)]
CPU_SHAPES = [(1024, 1000), (1024, 32000)]
CUDA_SHAPES = [(1024, 1000), (8192, 32000), (8192, 128256)]

# Gradient tolerance in units of the row scale s, and relative loss tolerance, per dtype.
GRAD_TOL = {"float32": 1e-4, "float16": 4e-3, "bfloat16": 2e-2}
LOSS_TOL = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}
BUCKET_REL_TOL = 1e-4

# Statuses a row can carry.
OK, SKIPPED, NOT_APPLICABLE, ERROR, MISMATCH, INEXACT = "ok", "skipped", "n/a", "error", "mismatch", "inexact"
FAILED = (ERROR, MISMATCH)  # what --strict fails on


def result_row(impl, case, dtype, shape, **kw):
    """One result: a flat dict, the unit of the table and of the JSON file.

    Keys: impl, case ('xent', 'clip_grad_norm', 'adaptive_clip_grad'), alpha (xent only), dtype, shape
    (text), time_ms (median), times_ms (every repeat), speedup (baseline median / median), baseline
    (the implementation the speed-up refers to), err_loss (|loss - ref|; for clip_grad_norm: the
    returned total norm), err_grad (max |grad - ref|), err_grad_scaled (err_grad / s for xent, the max
    element-wise relative error for bucket transforms), tol_loss / tol_grad (what err_loss /
    err_grad_scaled were held to), status (ok, skipped, n/a, error, mismatch), reason (why, for any
    status but ok; a note for ok), device, peak_mem_mb (linear_xent: peak memory of one step beyond its
    inputs, MB; None where not measured), gemm_ratio (linear_xent on CUDA: time / the cublas-3-gemms
    row's time). For 'linear_xent' err_grad is the max |g - ref| over dh, dW (, db) and err_grad_scaled
    the largest of their max |g - ref| / max |ref|.
    """
    row = dict(impl=impl, case=case, alpha=None, dtype=dtype, shape=shape, time_ms=None, times_ms=None,
               speedup=None, baseline=None, err_loss=None, err_grad=None, err_grad_scaled=None,
               tol_loss=None, tol_grad=None, status=OK, reason="", device=None, peak_mem_mb=None, gemm_ratio=None)
    row.update(kw)
    return row


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------

def time_steps(setup, step, device, warmup, repeats):
    """Median and list of per-step times in ms. ``setup()`` (untimed) returns the argument of ``step``."""
    import torch

    for _ in range(warmup):
        step(setup())
    times = []
    if device.type == "cuda":
        events = []
        for _ in range(repeats):
            arg = setup()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step(arg)
            end.record()
            events.append((start, end))
            del arg
        torch.cuda.synchronize(device)
        times = [s.elapsed_time(e) for s, e in events]
    else:
        for _ in range(repeats):
            arg = setup()
            t0 = time.perf_counter()
            step(arg)
            times.append((time.perf_counter() - t0) * 1e3)
            del arg
    return statistics.median(times), times


# ---------------------------------------------------------------------------------------------
# Cross-entropy implementations
# ---------------------------------------------------------------------------------------------

def compile_unavailable(device, alpha, compile_cpu):
    """Why a torch.compile row cannot run here, or None."""
    import torch

    if not hasattr(torch, "compile"):
        return "torch %s has no torch.compile (needs torch >= 2.0)" % torch.__version__
    if device.type == "cpu" and not compile_cpu:
        return "torch.compile is timed on CUDA only (pass --compile-cpu to compile for the CPU)"
    if alpha <= 0.0:
        return "the surrogate needs alpha > 0"
    return None


def reset_dynamo():
    """Every case is its own graph: reset Dynamo so as not to hit the recompilation limit."""
    import torch

    dynamo = getattr(torch, "_dynamo", None)
    if dynamo is not None and hasattr(dynamo, "reset"):
        dynamo.reset()


def xent_eager_hook(x, y, alpha, scale=1.0):
    """The paper's method in eager PyTorch, recomputing form.

    loss = F.cross_entropy(x, y) (mean); a hook on x replaces the incoming G = s (p - q) by
    s (softmax(alpha x) - q), s = scale / N. ``scale`` is whatever the loss is multiplied by before
    backward (1 here). The hook ignores G, so it is only valid when this loss is the only path from x
    to the output.
    """
    import torch
    import torch.nn.functional as F

    loss = F.cross_entropy(x, y)
    if x.requires_grad:
        s = scale / x.shape[0]
        saved = x.detach()

        def hook(grad):
            pa = torch.softmax(saved.float() * alpha, dim=1)
            pa.scatter_add_(1, y.view(-1, 1), pa.new_full((pa.shape[0], 1), -1.0))
            return pa.mul_(s).to(grad.dtype)

        x.register_hook(hook)
    return loss


def xent_eager_hook_recover(x, y, alpha, scale=1.0):
    """The paper's method in eager PyTorch, recovering form (the published hook, with the scale fixed).

    The hook recovers p = G / s + q from the incoming G = s (p - q) (s = scale / N; the published code
    computes G / N + q instead), then returns s (p^alpha / sum(p^alpha) - q).
    """
    import torch.nn.functional as F

    loss = F.cross_entropy(x, y)
    if x.requires_grad:
        s = scale / x.shape[0]

        def hook(grad):
            p = grad.float().div(s)
            p.scatter_add_(1, y.view(-1, 1), p.new_ones((p.shape[0], 1)))
            pa = p.clamp_(min=0.0).pow_(alpha)
            pa.div_(pa.sum(dim=1, keepdim=True))
            pa.scatter_add_(1, y.view(-1, 1), pa.new_full((pa.shape[0], 1), -1.0))
            return pa.mul_(s).to(grad.dtype)

        x.register_hook(hook)
    return loss


def xent_surrogate(x, y, alpha):
    """Hook-free PGT: value CE(x), gradient (softmax(alpha x) - q) / N (needs alpha > 0)."""
    import torch.nn.functional as F

    ce = F.cross_entropy(x, y)
    if alpha == 1.0:
        return ce
    ce_alpha = F.cross_entropy(x.float() * alpha, y) / alpha
    return ce_alpha + (ce.float() - ce_alpha).detach()


class XentImpl:
    """One cross-entropy implementation: ``loss_fn(x, y, alpha)`` builds the loss (hooks included)."""

    def __init__(self, name, loss_fn=None, pgt=True, note="", lossy=False):
        self.name = name
        self.loss_fn = loss_fn
        self.pgt = pgt  # implements alpha != 1
        self.note = note
        # Recovers p from the incoming gradient: loses probabilities below the gradient's resolution
        # (fp16 underflow, bf16 rounding), so an out-of-tolerance result is 'inexact', not 'mismatch'.
        self.lossy = lossy

    def unavailable(self, device, dtype, alpha):
        """A reason why this implementation cannot run this case, or None."""
        if not self.pgt and alpha != 1.0:
            return "implements alpha = 1 only (not PGT)"
        return None

    def prepare(self, device, dtype, shape, alpha):
        """Called once per case before the check run (compilers compile here)."""

    def step(self, x, y, alpha):
        loss = self.loss_fn(x, y, alpha)
        loss.backward()
        return loss


class CompiledSurrogate(XentImpl):
    """``torch.compile`` of :func:`xent_surrogate`; a fresh compilation per case."""

    def __init__(self, compile_cpu):
        super().__init__("torch-compile", pgt=True, note="torch.compile of the surrogate")
        self.compile_cpu = compile_cpu
        self.fn = None

    def unavailable(self, device, dtype, alpha):
        return compile_unavailable(device, alpha, self.compile_cpu)

    def prepare(self, device, dtype, shape, alpha):
        import torch

        reset_dynamo()

        def f(x, y):
            return xent_surrogate(x, y, alpha)

        self.fn = torch.compile(f)

    def step(self, x, y, alpha):
        loss = self.fn(x, y)
        loss.backward()
        return loss


class SurrogateImpl(XentImpl):
    def unavailable(self, device, dtype, alpha):
        if alpha <= 0.0:
            return "the surrogate needs alpha > 0"
        return super().unavailable(device, dtype, alpha)


class LigerImpl(XentImpl):
    """Liger-Kernel's cross-entropy (Triton; writes the gradient over its input during the forward)."""

    def __init__(self):
        super().__init__("liger-kernel", pgt=False, note="LigerCrossEntropyLoss")
        self.fn = None
        self.import_error = None
        try:
            from liger_kernel.transformers import LigerCrossEntropyLoss

            self.fn = LigerCrossEntropyLoss(reduction="mean")
        except Exception as e:  # noqa: BLE001 - any import failure means "not available"
            try:
                from liger_kernel.ops.cross_entropy import LigerCrossEntropyFunction

                self.fn = LigerCrossEntropyFunction.apply
                self.note = "liger_kernel.ops.cross_entropy.LigerCrossEntropyFunction"
            except Exception as e2:  # noqa: BLE001
                self.import_error = "%s: %s" % (type(e).__name__, e)
                if str(e2) != str(e):
                    self.import_error += "; %s: %s" % (type(e2).__name__, e2)

    def unavailable(self, device, dtype, alpha):
        not_pgt = super().unavailable(device, dtype, alpha)
        if not_pgt:
            return not_pgt
        if self.fn is None:
            return "liger_kernel cannot be imported (%s)" % self.import_error
        if device.type != "cuda":
            return "Liger-Kernel's Triton kernels need a CUDA device"
        return None

    def step(self, x, y, alpha):
        loss = self.fn(x, y)
        if isinstance(loss, (tuple, list)):
            loss = loss[0]
        loss.backward()
        return loss


class PowergradImpl(XentImpl):
    """powergrad.torch.cross_entropy (fused or two-pass) or powergrad.torch.pgt_hook."""

    def __init__(self, name, state, kind):
        super().__init__(name, pgt=True, lossy=(kind == "hook"))
        self.state = state
        self.kind = kind
        self.note = {"fused": "powergrad.torch.cross_entropy", "twopass": "cross_entropy(fused=False)",
                     "hook": "F.cross_entropy + powergrad.torch.pgt_hook"}[kind]

    def unavailable(self, device, dtype, alpha):
        if self.state.error:
            return self.state.error
        if device.type == "cuda" and not self.state.has_cuda:
            return "libpowergrad.so was built without CUDA (%s)" % self.state.path
        return None

    def step(self, x, y, alpha):
        import torch.nn.functional as F

        pgt = self.state.module
        if self.kind == "fused":
            loss = pgt.cross_entropy(x, y, alpha=alpha)
        elif self.kind == "twopass":
            loss = pgt.cross_entropy(x, y, alpha=alpha, fused=False)
        else:
            pgt.pgt_hook(x, y, alpha, scale=1.0)
            loss = F.cross_entropy(x, y)
        loss.backward()
        return loss


class PowergradState:
    """Whether powergrad (the library and powergrad.torch) can be used, and why not."""

    def __init__(self, library=None):
        self.module = None
        self.error = None  # one line, for the rows
        self.detail = None  # the whole message (the searched places), for the JSON metadata
        self.path = None
        self.has_cuda = False
        self.version = None
        if library:
            os.environ["POWERGRAD_LIBRARY"] = library
        try:
            import powergrad

            powergrad.load_library()
            self.path = powergrad.library_path()
            self.has_cuda = bool(powergrad.has_cuda())
            self.version = powergrad.version()
            import powergrad.torch as pgt

            self.module = pgt
        except Exception as e:  # noqa: BLE001 - LibraryNotFoundError, ImportError, an old library...
            self.detail = "%s: %s" % (type(e).__name__, e)
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            self.error = "powergrad cannot be loaded (%s: %s)" % (type(e).__name__, first.split(" Searched")[0])


def xent_implementations(pg_state, compile_cpu):
    import torch.nn.functional as F

    return [
        XentImpl("torch-eager-hook", xent_eager_hook, note="F.cross_entropy + hook recomputing softmax(alpha z)"),
        XentImpl("torch-eager-hook-recover", xent_eager_hook_recover,
                 note="F.cross_entropy + hook recovering p = G/s + q (published form, scale fixed)", lossy=True),
        SurrogateImpl("torch-eager-surrogate", xent_surrogate, note="CE(az)/a + (CE(z) - CE(az)/a).detach()"),
        CompiledSurrogate(compile_cpu),
        XentImpl("torch-F.cross_entropy", lambda x, y, a: F.cross_entropy(x, y), pgt=False,
                 note="torch.nn.functional.cross_entropy"),
        LigerImpl(),
        PowergradImpl("powergrad", pg_state, "fused"),
        PowergradImpl("powergrad-twopass", pg_state, "twopass"),
        PowergradImpl("powergrad-hook", pg_state, "hook"),
    ]


# ---------------------------------------------------------------------------------------------
# Cross-entropy reference and the per-case driver
# ---------------------------------------------------------------------------------------------

def xent_reference_errors(z, y, alpha, loss, grad):
    """(|loss - ref|, max |grad - ref_grad|, ref_loss) against float64, evaluated in row chunks.

    ref loss = mean_r(logsumexp(z_r) - z_r[y_r]); ref grad = (softmax(alpha z) - onehot(y)) / N.
    """
    import torch

    rows, cols = z.shape
    chunk = max(1, (1 << 24) // max(cols, 1))
    loss_sum = 0.0
    err_grad = 0.0
    for r0 in range(0, rows, chunk):
        zc = z[r0:r0 + chunk].double()
        yc = y[r0:r0 + chunk].view(-1, 1)
        lse = torch.logsumexp(zc, dim=1)
        loss_sum += float((lse - zc.gather(1, yc).view(-1)).sum())
        if grad is not None:
            g = torch.softmax(zc * alpha, dim=1)
            g.scatter_add_(1, yc, g.new_full((g.shape[0], 1), -1.0))
            g.div_(rows)
            d = (grad[r0:r0 + chunk].double() - g).abs().max()
            err_grad = max(err_grad, float(d)) if math.isfinite(float(d)) else float("nan")
    ref_loss = loss_sum / rows
    err_loss = abs(float(loss) - ref_loss)
    return err_loss, (err_grad if grad is not None else None), ref_loss


def make_logits(shape, dtype, device, seed):
    import torch

    rows, cols = shape
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    z = (torch.randn(rows, cols, generator=g, device=device, dtype=torch.float32) * 2.0).to(dtype)
    y = torch.randint(0, cols, (rows,), generator=g, device=device, dtype=torch.int64)
    return z, y


def run_xent_case(impls, shape, dtype, alpha, device, args, seed):
    """Rows for one (shape, dtype, alpha): check every implementation, then time it."""
    import torch

    dname = str(dtype).replace("torch.", "")
    shape_text = "%dx%d" % shape
    z, y = make_logits(shape, dtype, device, seed)
    s = 1.0 / shape[0]
    baseline = "torch-eager-hook" if alpha != 1.0 else "torch-F.cross_entropy"
    rows = []
    for impl in impls:
        row = result_row(impl.name, "xent", dname, shape_text, alpha=alpha, baseline=baseline,
                         tol_grad=GRAD_TOL.get(dname), tol_loss=LOSS_TOL.get(dname), device=device.type)
        rows.append(row)
        if impl.name in args.skip:
            row.update(status=SKIPPED, reason="--skip")
            continue
        reason = impl.unavailable(device, dtype, alpha)
        if reason:
            row.update(status=NOT_APPLICABLE if "alpha = 1 only" in reason else SKIPPED, reason=reason)
            continue
        try:
            impl.prepare(device, dtype, shape, alpha)
            x = z.detach().clone().requires_grad_(True)
            loss = impl.step(x, y, alpha)
            grad = x.grad
            err_loss, err_grad, ref_loss = xent_reference_errors(z, y, alpha, loss.detach(), grad)
            row.update(err_loss=err_loss, err_grad=err_grad)
            del x, loss, grad
            problems = []
            if err_grad is None:
                problems.append("no gradient reached the logits")
            else:
                row["err_grad_scaled"] = err_grad / s
                if not (row["err_grad_scaled"] <= row["tol_grad"]):
                    problems.append("gradient error %.3g s > %.3g s" % (row["err_grad_scaled"], row["tol_grad"]))
            if not (err_loss <= row["tol_loss"] * max(1.0, abs(ref_loss))):
                problems.append("loss error %.3g > %.3g relative" % (err_loss, row["tol_loss"]))

            def setup():
                return z.detach().clone().requires_grad_(True)

            med, times = time_steps(setup, lambda xx: impl.step(xx, y, alpha), device, args.warmup, args.repeats)
            row.update(time_ms=med, times_ms=times)
            if problems and impl.lossy and dname != "float32":
                row.update(status=INEXACT, reason="; ".join(problems) + " (expected of a hook that recovers p from "
                           "a %s gradient: probabilities below its resolution are lost)" % dname)
            elif problems:
                row.update(status=MISMATCH, reason="; ".join(problems))
            else:
                row["reason"] = impl.note
        except Exception as e:  # noqa: BLE001 - one implementation failing must not stop the others
            if impl.name == "torch-compile":
                row.update(status=SKIPPED, reason="torch.compile failed: %s: %s" % (type(e).__name__, _short(e)))
            elif device.type == "cpu" and "not implemented for" in str(e):
                row.update(status=SKIPPED, reason="torch on the CPU: %s" % _short(e))
            else:
                row.update(status=ERROR, reason="%s: %s" % (type(e).__name__, _short(e)))
            if args.verbose:
                traceback.print_exc()
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    _fill_speedups(rows)
    return rows


def _short(e, n=300):
    text = " ".join(str(e).split())
    return text if len(text) <= n else text[:n] + "..."


def _fill_speedups(rows):
    times = {r["impl"]: r["time_ms"] for r in rows if r["time_ms"]}
    for r in rows:
        base = times.get(r["baseline"])
        if base and r["time_ms"]:
            r["speedup"] = base / r["time_ms"]


# ---------------------------------------------------------------------------------------------
# Bucket transforms: clip_grad_norm_ and adaptive gradient clipping
# ---------------------------------------------------------------------------------------------

def resnet50_shapes():
    """ResNet-50's (torchvision) 161 parameter shapes, in its parameters() order (25,557,032 values)."""
    try:
        import torchvision

        return [tuple(p.shape) for p in torchvision.models.resnet50().parameters()], "torchvision"
    except Exception:  # noqa: BLE001 - torchvision missing or broken: build the list by hand
        pass
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    inplanes = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            shapes += [(width, inplanes, 1, 1), (width,), (width,),
                       (width, width, 3, 3), (width,), (width,),
                       (4 * width, width, 1, 1), (4 * width,), (4 * width,)]
            if b == 0:
                shapes += [(4 * width, inplanes, 1, 1), (4 * width,), (4 * width,)]
            inplanes = 4 * width
    shapes += [(1000, 2048), (1000,)]
    return shapes, "by hand"


TINY_SHAPES = [(16,), (4, 8), (3,), (2, 3, 3), (1, 5), (7,)]


def make_bucket(device, n_tiny, seed):
    """(params, original grads, info): ResNet-50's parameters plus ``n_tiny`` tiny tensors.

    Weights: randn / sqrt(fan_in) for ndim >= 2, 1 + 0.1 randn for vectors, every tenth tiny tensor
    zero (AGC's eps path). Gradients: randn times a per-tensor scale drawn log-uniformly in
    [1e-5, 1e-1], then all multiplied so that the total norm is 2.
    """
    import torch

    shapes, source = resnet50_shapes()
    n_resnet = len(shapes)
    shapes = shapes + [TINY_SHAPES[i % len(TINY_SHAPES)] for i in range(n_tiny)]
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    params, grads = [], []
    for i, shape in enumerate(shapes):
        if len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            w = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        else:
            w = 1.0 + 0.1 * torch.randn(shape, generator=g)
        if i >= n_resnet and (i - n_resnet) % 10 == 0:
            w.zero_()
        scale = 10.0 ** (-5.0 + 4.0 * float(torch.rand((), generator=g)))
        grads.append(torch.randn(shape, generator=g) * scale)
        params.append(w)
    total = math.sqrt(sum(float(gr.double().pow(2).sum()) for gr in grads))
    params = [torch.nn.Parameter(w.to(device)) for w in params]
    grads = [(gr * (2.0 / total)).to(device) for gr in grads]
    for p, gr in zip(params, grads):
        p.grad = gr.clone()
    numel = sum(p.numel() for p in params)
    info = dict(resnet50_tensors=n_resnet, resnet50_shapes_from=source, tiny_tensors=n_tiny,
                elements=numel)
    return params, grads, info


def restore_grads(params, grads):
    import torch

    with torch.no_grad():
        for p, g in zip(params, grads):
            p.grad.copy_(g)


def max_errors(params, refs):
    """(max |g - ref|, max |g - ref| / |ref| element-wise; 0/0 counts as 0)."""
    import torch

    err_abs, err_rel = 0.0, 0.0
    for p, ref in zip(params, refs):
        d = (p.grad.double() - ref).abs()
        err_abs = max(err_abs, float(d.max()))
        rel = torch.where(d == 0, torch.zeros_like(d), d / ref.abs())
        err_rel = max(err_rel, float(rel.max()))
    return err_abs, err_rel


def clip_reference(grads, max_norm):
    """(clipped grads, total norm) in float64, with torch's rule: coef = min(1, max_norm / (norm + 1e-6))."""
    g64 = [g.double() for g in grads]
    total = math.sqrt(sum(float(g.pow(2).sum()) for g in g64))
    coef = min(1.0, max_norm / (total + 1e-6))
    return [g * coef for g in g64], total


def _unit_norms(t):
    """||t_u||_2 for each unit: slices along dim 0 (keepdim shape), the whole tensor when ndim <= 1."""
    if t.ndim <= 1:
        return t.norm(2)
    return t.norm(2, dim=tuple(range(1, t.ndim)), keepdim=True)


def agc_timm_style(parameters, clip_factor=0.01, eps=1e-3):
    """Adaptive gradient clipping with timm's semantics (used when timm is not installed).

    For each unit u (a slice along dim 0; the whole tensor for ndim <= 1):
    limit = clip_factor * max(||W_u||, eps); where ||G_u|| > limit, G_u <- G_u * limit / max(||G_u||, 1e-6).
    """
    import torch

    with torch.no_grad():
        for p in parameters:
            if p.grad is None:
                continue
            limit = _unit_norms(p.detach()).clamp(min=eps).mul_(clip_factor)
            gnorm = _unit_norms(p.grad)
            factor = torch.where(gnorm > limit, limit / gnorm.clamp(min=1e-6), torch.ones_like(gnorm))
            p.grad.mul_(factor)


def agc_reference(params, grads, clip_factor, eps):
    """(clipped grads in float64, fraction of units clipped)."""
    import torch

    out, clipped, units = [], 0, 0
    for p, g in zip(params, grads):
        w64, g64 = p.detach().double(), g.double()
        limit = _unit_norms(w64).clamp(min=eps) * clip_factor
        gnorm = _unit_norms(g64)
        hit = gnorm > limit
        factor = torch.where(hit, limit / gnorm.clamp(min=1e-6), torch.ones_like(gnorm))
        out.append(g64 * factor)
        clipped += int(hit.sum())
        units += hit.numel()
    return out, clipped / max(units, 1)


def timm_agc():
    """(adaptive_clip_grad function, its name): timm's when importable, else agc_timm_style."""
    try:
        from timm.utils.agc import adaptive_clip_grad

        return adaptive_clip_grad, "timm-agc", "timm.utils.agc.adaptive_clip_grad"
    except Exception as e:  # noqa: BLE001
        return agc_timm_style, "timm-style-agc", "in-script reimplementation of timm's AGC (timm: %s)" % _short(e, 80)


def torch_clip_kwargs():
    """({'foreach': True} when this torch's clip_grad_norm_ has the argument, else {}), note."""
    import torch

    try:
        sig = inspect.signature(torch.nn.utils.clip_grad_norm_)
    except (TypeError, ValueError):
        return {}, "signature unknown: foreach not passed"
    if "foreach" in sig.parameters:
        return {"foreach": True}, "foreach=True"
    return {}, "torch %s has no foreach argument" % torch.__version__


def run_bucket_cases(device, args, pg_state):
    """Rows for clip_grad_norm_ and adaptive clipping on the ResNet-50 + tiny-tensor bucket."""
    import torch

    params, grads, info = make_bucket(device, args.tiny, args.seed)
    shape_text = "rn50(%d)+%d tiny" % (info["resnet50_tensors"], info["tiny_tensors"])
    rows = []
    pg = pg_state.module

    def pg_missing(fn_name):
        if pg_state.error:
            return pg_state.error
        if not hasattr(pg, fn_name):
            return "powergrad.torch has no %s yet" % fn_name
        if device.type == "cuda" and not pg_state.has_cuda:
            return "libpowergrad.so was built without CUDA"
        return None

    # clip_grad_norm_
    max_norm = args.max_norm
    ref_grads, ref_total = clip_reference(grads, max_norm)
    kw, kw_note = torch_clip_kwargs()
    clip_impls = [
        ("torch-clip_grad_norm_", None, lambda ps: torch.nn.utils.clip_grad_norm_(ps, max_norm, **kw),
         "torch.nn.utils.clip_grad_norm_ (%s)" % kw_note),
        ("powergrad-clip_grad_norm_", pg_missing("clip_grad_norm_"),
         lambda ps: pg.clip_grad_norm_(ps, max_norm), "powergrad.torch.clip_grad_norm_"),
    ]
    rows += _run_bucket_impls("clip_grad_norm", clip_impls, "torch-clip_grad_norm_", params, grads, ref_grads,
                              ref_total, shape_text, device, args,
                              "max_norm %.3g, total norm %.4g" % (max_norm, ref_total))

    # adaptive gradient clipping
    agc_fn, agc_name, agc_note = timm_agc()
    ref_grads, frac = agc_reference(params, grads, args.clip_factor, args.eps)
    agc_impls = [
        (agc_name, None, lambda ps: agc_fn(ps, clip_factor=args.clip_factor, eps=args.eps), agc_note),
        ("powergrad-adaptive_clip_grad_", pg_missing("adaptive_clip_grad_"),
         lambda ps: pg.adaptive_clip_grad_(ps, clip_factor=args.clip_factor, eps=args.eps),
         "powergrad.torch.adaptive_clip_grad_"),
    ]
    rows += _run_bucket_impls("adaptive_clip_grad", agc_impls, agc_name, params, grads, ref_grads, None,
                              shape_text, device, args,
                              "clip_factor %g, eps %g, %.0f%% of units clipped" % (args.clip_factor, args.eps,
                                                                                   100 * frac))
    del params, grads, ref_grads
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows, info


def _run_bucket_impls(case, impls, baseline, params, grads, ref_grads, ref_total, shape_text, device, args, what):
    rows = []
    for name, unavailable, fn, note in impls:
        row = result_row(name, case, "float32", shape_text, baseline=baseline, tol_grad=BUCKET_REL_TOL,
                         tol_loss=BUCKET_REL_TOL if ref_total is not None else None, device=device.type)
        rows.append(row)
        if name in args.skip or case in args.skip:
            row.update(status=SKIPPED, reason="--skip")
            continue
        if unavailable:
            row.update(status=SKIPPED, reason=unavailable)
            continue
        try:
            restore_grads(params, grads)
            ret = fn(params)
            err_abs, err_rel = max_errors(params, ref_grads)
            row.update(err_grad=err_abs, err_grad_scaled=err_rel)
            problems = []
            if not (err_rel <= BUCKET_REL_TOL):
                problems.append("element-wise relative error %.3g > %.3g" % (err_rel, BUCKET_REL_TOL))
            if ref_total is not None:
                try:
                    err_norm = abs(float(ret) - ref_total)
                except (TypeError, ValueError, RuntimeError):
                    err_norm = None  # returns no scalar: nothing to compare
                row["err_loss"] = err_norm
                if err_norm is not None and not (err_norm <= BUCKET_REL_TOL * ref_total):
                    problems.append("returned norm error %.3g > %.3g relative" % (err_norm, BUCKET_REL_TOL))

            def setup():
                restore_grads(params, grads)
                return params

            med, times = time_steps(setup, fn, device, args.warmup, args.repeats)
            row.update(time_ms=med, times_ms=times)
            if problems:
                row.update(status=MISMATCH, reason="; ".join(problems))
            else:
                row["reason"] = "%s; %s" % (note, what)
        except Exception as e:  # noqa: BLE001
            row.update(status=ERROR, reason="%s: %s" % (type(e).__name__, _short(e)))
            if args.verbose:
                traceback.print_exc()
    _fill_speedups(rows)
    return rows


# ---------------------------------------------------------------------------------------------
# Linear cross-entropy: loss = CE(h W^T [+ b], y), forward + backward to dh, dW [, db]
# ---------------------------------------------------------------------------------------------

LINEAR_QUICK_CPU = [(256, 64, 1000)]
LINEAR_CPU = [(4096, 512, 32000)]
LINEAR_QUICK_CUDA = [(1024, 1024, 32000)]
LINEAR_CUDA = [(1024, 1024, 32000), (8192, 4096, 128256)]
# Relative gradient tolerance (max |g - ref| / max |ref|, per gradient) and relative loss tolerance.
LINEAR_GRAD_TOL = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 3e-2}
LINEAR_LOSS_TOL = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}
# Problems up to this many multiply-adds (N H V) are checked whole; larger ones on their first rows.
LINEAR_CHECK_WHOLE = 1 << 31


def make_linear_inputs(shape, dtype, device, seed, bias):
    """h [N, H] (randn), W [V, H] (randn / sqrt(H)), y [N], b [V] (zeros) or None; leaves with grads."""
    import torch

    n, hdim, v = shape
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    h = torch.randn(n, hdim, generator=g, device=device, dtype=torch.float32).to(dtype).requires_grad_(True)
    w = (torch.randn(v, hdim, generator=g, device=device, dtype=torch.float32) / hdim ** 0.5).to(dtype)
    w.requires_grad_(True)
    y = torch.randint(0, v, (n,), generator=g, device=device, dtype=torch.int64)
    b = torch.zeros(v, device=device, dtype=dtype).requires_grad_(True) if bias else None
    return h, w, y, b


def linear_reference_errors(h, w, y, b, alpha, loss, grads):
    """(|loss - ref|, max abs error over the gradients, max relative error over them, ref loss).

    float64 reference, in row chunks: z = h W^T + b, loss = mean(logsumexp(z) - z_y),
    G = (softmax(alpha z) - onehot(y)) / N, dh = G W, dW = G^T h, db = sum_rows G. The relative error of
    a gradient is its max |g - ref| over max |ref|. ``grads`` = (dh, dW, db or None).
    """
    import torch

    n, v = h.shape[0], w.shape[0]
    hd, wd = h.detach().double(), w.detach().double()
    bd = b.detach().double() if b is not None else None
    chunk = max(1, (1 << 24) // max(v, 1))
    loss_sum = 0.0
    dh = torch.empty_like(hd)
    dw = torch.zeros_like(wd)
    db = torch.zeros(v, dtype=torch.float64, device=h.device)
    for r0 in range(0, n, chunk):
        z = hd[r0:r0 + chunk] @ wd.t()
        if bd is not None:
            z += bd
        yc = y[r0:r0 + chunk].view(-1, 1)
        loss_sum += float((torch.logsumexp(z, dim=1) - z.gather(1, yc).view(-1)).sum())
        g = torch.softmax(z * alpha, dim=1)
        g.scatter_add_(1, yc, g.new_full((g.shape[0], 1), -1.0))
        g.div_(n)
        dh[r0:r0 + chunk] = g @ wd
        dw += g.t() @ hd[r0:r0 + chunk]
        db += g.sum(0)
        del z, g
    ref_loss = loss_sum / n
    err_abs, err_rel = 0.0, 0.0
    for got, ref in zip(grads, (dh, dw, db if b is not None else None)):
        if ref is None:
            continue
        if got is None:
            return abs(float(loss) - ref_loss), None, None, ref_loss
        d = float((got.double() - ref).abs().max())
        if not math.isfinite(d):
            return abs(float(loss) - ref_loss), float("nan"), float("nan"), ref_loss
        err_abs = max(err_abs, d)
        err_rel = max(err_rel, d / max(float(ref.abs().max()), 1e-300))
    return abs(float(loss) - ref_loss), err_abs, err_rel, ref_loss


class LinearImpl:
    """One linear cross-entropy implementation: ``loss(h, w, y, b, alpha)`` builds the loss."""

    cuda_only = False
    pgt = False  # implements alpha != 1

    def __init__(self, name, note, fn=None, pgt=False):
        self.name, self.note, self.fn, self.pgt = name, note, fn, pgt

    def unavailable(self, device, dtype, alpha, bias):
        if alpha != 1.0 and not self.pgt:
            return "implements alpha = 1 only (not PGT)"
        if self.cuda_only and device.type != "cuda":
            return "%s needs a CUDA device" % self.name
        return None

    def prepare(self, device, dtype, shape, alpha):
        """Called once per case before the check run (compilers compile here)."""

    def loss(self, h, w, y, b, alpha):
        return self.fn(h, w, y, b, alpha)


def linear_materialised(h, w, y, b, alpha):
    """F.linear + F.cross_entropy; at alpha != 1 the hook-free PGT surrogate (xent_surrogate) on the logits."""
    import torch.nn.functional as F

    return xent_surrogate(F.linear(h, w, b), y, alpha)


class CompiledLinear(LinearImpl):
    def __init__(self, compile_cpu):
        super().__init__("torch-compile-materialised", "torch.compile of F.linear + F.cross_entropy (surrogate "
                         "for alpha != 1)", pgt=True)
        self.compile_cpu = compile_cpu

    def unavailable(self, device, dtype, alpha, bias):
        return compile_unavailable(device, alpha, self.compile_cpu)

    def prepare(self, device, dtype, shape, alpha):
        import torch

        reset_dynamo()

        def f(h, w, y, b):
            return linear_materialised(h, w, y, b, alpha)

        self.fn = torch.compile(f)

    def loss(self, h, w, y, b, alpha):
        return self.fn(h, w, y, b)


class OptionalLinear(LinearImpl):
    """An implementation from a package that may be missing (Liger-Kernel, Cut Cross-Entropy)."""

    cuda_only = True

    def __init__(self, name, note, importer):
        super().__init__(name, note)
        self.import_error = None
        try:
            self.fn = importer()
        except Exception as e:  # noqa: BLE001 - any import failure means "not available"
            self.import_error = "%s: %s" % (type(e).__name__, _short(e, 120))

    def unavailable(self, device, dtype, alpha, bias):
        reason = super().unavailable(device, dtype, alpha, bias)
        if reason:
            return reason
        if self.fn is None:
            return "not installed (%s)" % self.import_error
        return None


def _liger_flce():
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    mod = LigerFusedLinearCrossEntropyLoss(reduction="mean")

    def f(h, w, y, b, alpha):
        # forward(lin_weight, _input, target, bias=None)
        out = mod(w, h, y) if b is None else mod(w, h, y, b)
        return out[0] if isinstance(out, (tuple, list)) else out

    return f


def _cce():
    from cut_cross_entropy import linear_cross_entropy

    def f(h, w, y, b, alpha):
        return linear_cross_entropy(h, w, y) if b is None else linear_cross_entropy(h, w, y, bias=b)

    return f


class PowergradLinear(LinearImpl):
    def __init__(self, state):
        super().__init__("powergrad-linear", "powergrad.torch.linear_cross_entropy", pgt=True)
        self.state = state

    def unavailable(self, device, dtype, alpha, bias):
        if self.state.error:
            return self.state.error
        if not hasattr(self.state.module, "linear_cross_entropy"):
            return "powergrad.torch has no linear_cross_entropy"
        if device.type == "cuda" and not self.state.has_cuda:
            return "libpowergrad.so was built without CUDA (%s)" % self.state.path
        return None

    def loss(self, h, w, y, b, alpha):
        return self.state.module.linear_cross_entropy(h, w, y, bias=b, alpha=alpha)


def linear_implementations(pg_state, compile_cpu):
    return [
        LinearImpl("torch-materialised", "F.linear + F.cross_entropy, eager (surrogate for alpha != 1)",
                   linear_materialised, pgt=True),
        CompiledLinear(compile_cpu),
        OptionalLinear("liger-flce", "liger_kernel LigerFusedLinearCrossEntropyLoss", _liger_flce),
        OptionalLinear("cce", "cut_cross_entropy.linear_cross_entropy", _cce),
        PowergradLinear(pg_state),
    ]


def linear_step(impl, h, w, y, b, alpha):
    """One timed step: forward + backward; the gradients land in h.grad, w.grad (, b.grad)."""
    loss = impl.loss(h, w, y, b, alpha)
    loss.backward()
    return loss


def _clear_grads(*ts):
    for t in ts:
        if t is not None:
            t.grad = None


def cuda_peak_extra(fn, device):
    """Peak bytes allocated during fn() beyond what was allocated before it (the inputs)."""
    import torch

    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def cpu_peak_child(argv):
    """--linear-peak-child IMPL,N,H,V,DTYPE,ALPHA,BIAS,SEED: one step in this fresh process; prints JSON.

    The peak resident set growth of the step (bench_linear_xent_host.peak_extra_bytes); the inputs are
    made before the measured region.
    """
    import torch

    name, n, hdim, v, dname, alpha, bias, seed = argv.split(",")
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from bench_linear_xent_host import peak_extra_bytes

    pg_state = PowergradState(None)
    impl = [i for i in linear_implementations(pg_state, True) if i.name == name][0]
    h, w, y, b = make_linear_inputs((int(n), int(hdim), int(v)), getattr(torch, dname), torch.device("cpu"),
                                    int(seed), bias == "1")
    impl.prepare(torch.device("cpu"), getattr(torch, dname), None, float(alpha))
    _, extra = peak_extra_bytes(lambda: linear_step(impl, h, w, y, b, float(alpha)))
    print(json.dumps({"impl": name, "peak_extra_bytes": extra}))
    return 0


def cpu_peak_extra(impl, shape, dname, alpha, bias, seed):
    """(bytes, None) from a fresh child process, or (None, why not)."""
    import subprocess

    if not os.path.exists("/proc/self/clear_refs"):
        return None, "no /proc/self/clear_refs (Linux only)"
    spec = "%s,%d,%d,%d,%s,%r,%d,%d" % (impl.name, shape[0], shape[1], shape[2], dname, alpha, int(bias), seed)
    try:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--linear-peak-child", spec],
                             capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            return None, "child exited %d: %s" % (out.returncode, _short(out.stderr.strip()[-300:], 200))
        return json.loads(out.stdout.strip().splitlines()[-1])["peak_extra_bytes"], None
    except Exception as e:  # noqa: BLE001
        return None, "%s: %s" % (type(e).__name__, _short(e, 200))


def run_gemm_floor(shape, dtype, device, args):
    """The cublas-3-gemms row: z = h W^T, dh = G W, dW = G^T h with torch.matmul in ``dtype`` (CUDA only)."""
    import torch

    dname = str(dtype).replace("torch.", "")
    n, hdim, v = shape
    row = result_row("cublas-3-gemms", "linear_xent", dname, "%dx%dx%d" % shape, alpha=1.0,
                     baseline="torch-materialised", device=device.type)
    if "cublas-3-gemms" in args.skip:
        row.update(status=SKIPPED, reason="--skip")
        return row
    if device.type != "cuda":
        row.update(status=SKIPPED, reason="the GEMM floor is a CUDA row (the 1.15x goal is a GPU goal)")
        return row
    try:
        g = torch.Generator(device=device)
        g.manual_seed(args.seed)
        h = torch.randn(n, hdim, generator=g, device=device, dtype=torch.float32).to(dtype)
        w = torch.randn(v, hdim, generator=g, device=device, dtype=torch.float32).to(dtype)
        gz = torch.randn(n, v, generator=g, device=device, dtype=torch.float32).to(dtype)

        def step(_):
            z = torch.matmul(h, w.t())
            dh = torch.matmul(gz, w)
            dw = torch.matmul(gz.t(), h)
            return z, dh, dw

        med, times = time_steps(lambda: None, step, device, args.warmup, args.repeats)
        row.update(time_ms=med, times_ms=times, peak_mem_mb=cuda_peak_extra(lambda: step(None), device) / 1e6,
                   gemm_ratio=1.0, reason="torch.matmul x3 (%d-row G given, not timed): the floor of the 1.15x goal"
                   % n)
        del h, w, gz
    except Exception as e:  # noqa: BLE001
        row.update(status=ERROR, reason="%s: %s" % (type(e).__name__, _short(e)))
    finally:
        torch.cuda.empty_cache()
    return row


def run_linear_case(impls, shape, dtype, alpha, device, args):
    """Rows for one (shape, dtype, alpha): check every implementation on float64, time it, measure memory."""
    import torch

    dname = str(dtype).replace("torch.", "")
    shape_text = "%dx%dx%d" % shape
    bias = args.linear_bias
    h, w, y, b = make_linear_inputs(shape, dtype, device, args.seed, bias)
    n = shape[0]
    check_rows = n if shape[0] * shape[1] * shape[2] <= LINEAR_CHECK_WHOLE else min(n, args.linear_check_rows)
    rows = []
    for impl in impls:
        row = result_row(impl.name, "linear_xent", dname, shape_text, alpha=alpha, baseline="torch-materialised",
                         tol_grad=LINEAR_GRAD_TOL.get(dname), tol_loss=LINEAR_LOSS_TOL.get(dname),
                         device=device.type)
        rows.append(row)
        if impl.name in args.skip:
            row.update(status=SKIPPED, reason="--skip")
            continue
        reason = impl.unavailable(device, dtype, alpha, bias)
        if reason:
            row.update(status=NOT_APPLICABLE if "alpha = 1 only" in reason else SKIPPED, reason=reason)
            continue
        try:
            impl.prepare(device, dtype, shape, alpha)
            # Check on the first check_rows rows (the whole problem when it is small): same W, fresh leaves.
            hc = h.detach()[:check_rows].clone().requires_grad_(True)
            wc = w.detach().clone().requires_grad_(True)
            bc = b.detach().clone().requires_grad_(True) if b is not None else None
            loss = linear_step(impl, hc, wc, y[:check_rows], bc, alpha)
            err_loss, err_abs, err_rel, ref_loss = linear_reference_errors(
                hc, wc, y[:check_rows], bc, alpha, loss.detach(), (hc.grad, wc.grad, bc.grad if bc is not None else None))
            row.update(err_loss=err_loss, err_grad=err_abs, err_grad_scaled=err_rel)
            del hc, wc, bc, loss
            problems = []
            if err_abs is None:
                problems.append("a gradient did not reach h, W or b")
            elif not (err_rel <= row["tol_grad"]):
                problems.append("gradient error %.3g relative > %.3g" % (err_rel, row["tol_grad"]))
            if not (err_loss <= row["tol_loss"] * max(1.0, abs(ref_loss))):
                problems.append("loss error %.3g > %.3g relative" % (err_loss, row["tol_loss"]))

            def setup():
                _clear_grads(h, w, b)

            med, times = time_steps(setup, lambda _: linear_step(impl, h, w, y, b, alpha), device, args.warmup,
                                    args.repeats)
            row.update(time_ms=med, times_ms=times)
            mem_note = ""
            _clear_grads(h, w, b)
            if device.type == "cuda":
                row["peak_mem_mb"] = cuda_peak_extra(lambda: linear_step(impl, h, w, y, b, alpha), device) / 1e6
            elif args.quick:
                mem_note = "; peak memory not measured in --quick"
            else:
                peak, why = cpu_peak_extra(impl, shape, dname, alpha, bias, args.seed)
                if peak is None:
                    mem_note = "; peak memory not measured: " + why
                else:
                    row["peak_mem_mb"] = peak / 1e6
            _clear_grads(h, w, b)
            checked = "checked on all %d rows" % n if check_rows == n else "checked on the first %d rows" % check_rows
            if problems:
                row.update(status=MISMATCH, reason="; ".join(problems) + "; " + checked)
            else:
                row["reason"] = "%s; %s%s" % (impl.note, checked, mem_note)
        except Exception as e:  # noqa: BLE001 - one implementation failing must not stop the others
            _clear_grads(h, w, b)
            if isinstance(impl, CompiledLinear):
                row.update(status=SKIPPED, reason="torch.compile failed: %s: %s" % (type(e).__name__, _short(e)))
            else:
                row.update(status=ERROR, reason="%s: %s" % (type(e).__name__, _short(e)))
            if args.verbose:
                traceback.print_exc()
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    del h, w, y, b
    if alpha == 1.0:
        rows.append(run_gemm_floor(shape, dtype, device, args))
    _fill_speedups(rows)
    floor = {r["dtype"]: r["time_ms"] for r in rows if r["impl"] == "cublas-3-gemms" and r["time_ms"]}
    for r in rows:
        if r["time_ms"] and floor.get(r["dtype"]):
            r["gemm_ratio"] = r["time_ms"] / floor[r["dtype"]]
    return rows


def parse_linear_shapes(text):
    shapes = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        try:
            n, hdim, v = (int(x) for x in part.split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError("linear shape %r is not NxHxV" % part) from None
        if min(n, hdim, v) < 1:
            raise argparse.ArgumentTypeError("linear shape %r has a dimension below 1" % part)
        shapes.append((n, hdim, v))
    return shapes


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def print_table(rows, out=sys.stdout):
    """A fixed-width table: implementation, case, dtype, shape, time, speed-up, errors, status."""
    head = ["implementation", "case", "dtype", "shape", "time ms", "speed-up", "err loss|norm", "err grad", "peak MB",
            "/3 GEMMs", "status"]
    body = []
    for r in rows:
        case = r["case"] if r["alpha"] is None else "%s a=%g" % (r["case"], r["alpha"])
        status = r["status"] if r["status"] == OK else "%s: %s" % (r["status"], " ".join(r["reason"].split()))
        body.append([r["impl"], case, r["dtype"], r["shape"], _fmt(r["time_ms"], ".3f"),
                     _fmt(r["speedup"], ".2f") + ("x" if r["speedup"] is not None else ""),
                     _fmt(r["err_loss"], ".1e"), _fmt(r["err_grad"], ".1e"), _fmt(r.get("peak_mem_mb"), ".0f"),
                     _fmt(r.get("gemm_ratio"), ".2f") + ("x" if r.get("gemm_ratio") is not None else ""), status])
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(head)]
    widths[-1] = len(head[-1])  # the status column is last: not padded
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths))
    print(line, file=out)
    print("-" * len(line), file=out)
    for b in body:
        print("  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip(), file=out)


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def write_json(path, meta, rows):
    doc = {"schema": SCHEMA, "meta": meta, "results": rows}
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        json.dump(_json_safe(doc), f, indent=1, allow_nan=False)
        f.write("\n")


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def cpu_name():
    """The CPU's model name (Linux /proc/cpuinfo), else platform.processor(), else 'cpu'."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def parse_shapes(text):
    shapes = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        try:
            r, c = part.split("x")
            shapes.append((int(r), int(c)))
        except ValueError:
            raise argparse.ArgumentTypeError("shape %r is not ROWSxCOLS" % part) from None
    return shapes


def parse_list(text):
    return [p.strip() for p in text.split(",") if p.strip()]


def build_parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                    help="auto = cuda when torch sees a GPU (default)")
    ap.add_argument("--quick", action="store_true",
                    help="small shapes (256x1000, 64x5000), few repeats: for CI")
    ap.add_argument("--alpha", type=float, default=0.3, help="PGT exponent (default 0.3); alpha=1 always runs too")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed steps per row, the median is reported (default 20 on CUDA, 5 on the CPU or --quick)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed steps before timing (default 3 on CUDA, 2 on the CPU or --quick)")
    ap.add_argument("--shapes", type=parse_shapes, default=None, help="ROWSxCOLS[,ROWSxCOLS...] for cross-entropy")
    ap.add_argument("--dtypes", type=parse_list, default=None,
                    help="float32,bfloat16,float16 (default: float32 on the CPU, all three on CUDA)")
    ap.add_argument("--skip", type=parse_list, default=[],
                    help="implementations or cases to leave out, e.g. torch-compile,adaptive_clip_grad")
    ap.add_argument("--tiny", type=int, default=1000, help="tiny tensors added to ResNet-50's (default 1000)")
    ap.add_argument("--max-norm", type=float, default=1.0,
                    help="clip_grad_norm_ max_norm (the gradients' total norm is 2; default 1)")
    ap.add_argument("--clip-factor", type=float, default=0.01, help="AGC clip factor (default 0.01)")
    ap.add_argument("--eps", type=float, default=1e-3, help="AGC eps (default 1e-3)")
    ap.add_argument("--compile-cpu", action="store_true", help="also run torch.compile on the CPU")
    ap.add_argument("--no-linear", dest="linear", action="store_false",
                    help="leave out the linear cross-entropy section (on by default; also --skip linear_xent)")
    ap.add_argument("--linear-shapes", type=parse_linear_shapes, default=None,
                    help="NxHxV[,...] for the linear cross-entropy (default: 256x64x1000 on the CPU with --quick, "
                         "4096x512x32000 on the CPU, 1024x1024x32000 and 8192x4096x128256 on CUDA)")
    ap.add_argument("--linear-dtypes", type=parse_list, default=None,
                    help="dtypes of the linear cross-entropy (default: float32 on the CPU, bfloat16 on CUDA)")
    ap.add_argument("--linear-bias", action="store_true",
                    help="give the linear cross-entropy a bias (off: some Liger-Kernel versions take none)")
    ap.add_argument("--linear-check-rows", type=int, default=512,
                    help="rows the float64 check of a large linear problem uses (default 512; problems of at "
                         "most 2^31 multiply-adds are checked whole)")
    ap.add_argument("--linear-peak-child", help=argparse.SUPPRESS)
    ap.add_argument("--library", help="path to libpowergrad.so (sets POWERGRAD_LIBRARY)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="PATH", help="write every row and the run's metadata as JSON")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a row is 'error' or 'mismatch'")
    ap.add_argument("--verbose", action="store_true", help="print tracebacks of failing implementations")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.linear_peak_child:
        return cpu_peak_child(args.linear_peak_child)
    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                python=platform.python_version(), platform=platform.platform(), argv=sys.argv[1:],
                alpha=args.alpha, quick=args.quick)
    try:
        import torch
    except ImportError as e:
        print("compare_frameworks: torch cannot be imported (%s); nothing to run" % e, file=sys.stderr)
        if args.json:
            write_json(args.json, dict(meta, error="torch cannot be imported: %s" % e), [])
        return 2
    meta["torch"] = torch.__version__
    cuda_ok = torch.cuda.is_available()
    if args.device == "cuda" and not cuda_ok:
        msg = "--device cuda, but torch %s sees no CUDA device" % torch.__version__
        print("compare_frameworks: " + msg, file=sys.stderr)
        if args.json:
            write_json(args.json, dict(meta, error=msg), [])
        return 2
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and cuda_ok) else "cpu")
    on_gpu = device.type == "cuda"
    if args.repeats is None:
        args.repeats = 5 if args.quick else (20 if on_gpu else 5)
    if args.warmup is None:
        args.warmup = 2 if args.quick or not on_gpu else 3
    args.repeats = max(1, args.repeats)
    args.warmup = max(0, args.warmup)
    shapes = args.shapes or (QUICK_SHAPES if args.quick else (CUDA_SHAPES if on_gpu else CPU_SHAPES))
    dtype_names = args.dtypes or (["float32", "bfloat16", "float16"] if on_gpu else ["float32"])
    dtypes = []
    for n in dtype_names:
        dt = getattr(torch, n, None)
        if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
            print("compare_frameworks: unknown dtype %r" % n, file=sys.stderr)
            return 2
        dtypes.append(dt)

    pg_state = PowergradState(args.library)
    meta.update(device=device.type,
                device_name=torch.cuda.get_device_name(device) if on_gpu else cpu_name(),
                cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(), repeats=args.repeats,
                warmup=args.warmup, shapes=["%dx%d" % s for s in shapes], dtypes=dtype_names,
                timing="CUDA events, median" if on_gpu else "time.perf_counter, median",
                powergrad_library=pg_state.path, powergrad_version=pg_state.version,
                powergrad_cuda=pg_state.has_cuda, powergrad_error=pg_state.detail,
                hook_form="recomputes softmax(alpha z) from the saved logits (torch-eager-hook); "
                          "recovers p = G/s + q (torch-eager-hook-recover); s = 1/N")
    if on_gpu:
        meta["cuda"] = torch.version.cuda
    print("compare_frameworks: torch %s on %s (%s); powergrad: %s" % (
        torch.__version__, device.type, meta["device_name"], pg_state.path or pg_state.error), flush=True)

    rows = []
    impls = xent_implementations(pg_state, args.compile_cpu)
    if "xent" not in args.skip:
        for shape in shapes:
            for dt in dtypes:
                for alpha in ([args.alpha, 1.0] if args.alpha != 1.0 else [1.0]):
                    rows += run_xent_case(impls, shape, dt, alpha, device, args, args.seed)
    if args.linear and "linear_xent" not in args.skip:
        lshapes = args.linear_shapes or (
            (LINEAR_QUICK_CUDA if args.quick else LINEAR_CUDA) if on_gpu else
            (LINEAR_QUICK_CPU if args.quick else LINEAR_CPU))
        ldtypes = []
        for nm in args.linear_dtypes or (["bfloat16"] if on_gpu else ["float32"]):
            dt = getattr(torch, nm, None)
            if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
                print("compare_frameworks: unknown dtype %r" % nm, file=sys.stderr)
                return 2
            ldtypes.append(dt)
        meta.update(linear_shapes=["%dx%dx%d" % s for s in lshapes], linear_dtypes=[str(d)[6:] for d in ldtypes],
                    linear_bias=args.linear_bias,
                    linear_memory="torch.cuda max_memory_allocated minus the inputs' bytes" if on_gpu else
                    "peak resident set growth of one step in a fresh child process (not in --quick)")
        limpls = linear_implementations(pg_state, args.compile_cpu)
        for shape in lshapes:
            for dt in ldtypes:
                for alpha in ([args.alpha, 1.0] if args.alpha != 1.0 else [1.0]):
                    rows += run_linear_case(limpls, shape, dt, alpha, device, args)
    bucket_skipped = "clip_grad_norm" in args.skip and "adaptive_clip_grad" in args.skip
    if not bucket_skipped:
        try:
            bucket_rows, info = run_bucket_cases(device, args, pg_state)
            rows += bucket_rows
            meta["bucket"] = info
        except Exception as e:  # noqa: BLE001 - e.g. out of memory building the bucket
            rows.append(result_row("bucket-setup", "clip_grad_norm", "float32", "-", status=ERROR,
                                   reason="%s: %s" % (type(e).__name__, _short(e)), device=device.type))
            if args.verbose:
                traceback.print_exc()

    print()
    print_table(rows)
    if args.json:
        write_json(args.json, meta, rows)
        print("\nwrote %s" % args.json)
    bad = [r for r in rows if r["status"] in FAILED]
    if bad:
        print("\n%d row(s) failed: %s" % (len(bad), ", ".join("%s/%s" % (r["impl"], r["case"]) for r in bad)))
    return 1 if (bad and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
