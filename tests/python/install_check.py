"""Checks an installed powergrad the way a user meets it: run from a folder outside the repository, by
an interpreter whose powergrad came from ``pip install`` (tests/python/test_install.py builds the
wheel, installs it into a fresh virtual environment and runs this script there, with reference.py
copied next to it).

    python install_check.py --version X.Y.Z

Checks, in order: ``powergrad.__version__`` is X.Y.Z (CMakeLists.txt's project version) and equals
the library's pg_version(); the package and the library it loads live inside this interpreter's
prefix, found with no environment variable; ``python -m powergrad`` reports them; at alpha 1
``powergrad.torch.cross_entropy`` equals ``F.cross_entropy`` (loss and logits gradient); a few SGD
steps of a small MLP with ``cross_entropy(..., alpha=0.3)`` track the same model trained in float64
with the float64 reference gradient (reference.py, written from docs/design.md §2.1) and differ from
alpha 1; ``powergrad.torch.CrossEntropyLoss(alpha=0.3)`` under ``torch.compile(fullgraph=True)``
equals eager. Prints one line per check; exits 1 on the first failure.
"""

import argparse
import copy
import os
import subprocess
import sys

STEPS = 5
LR = 0.5
ALPHA = 0.3


def fail(msg):
    print("install-check: FAILED: " + msg, flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def check_install(expected_version):
    check("POWERGRAD_LIBRARY" not in os.environ, "POWERGRAD_LIBRARY is set: the check must find the library itself")
    import powergrad

    pkg_dir = os.path.dirname(os.path.abspath(powergrad.__file__))
    check(inside(pkg_dir, sys.prefix), "powergrad was imported from %s, outside this environment (%s)" % (pkg_dir, sys.prefix))
    check(not os.path.isfile(os.path.join(pkg_dir, "..", "..", "CMakeLists.txt")), "powergrad was imported from a checkout")
    check(powergrad.__version__ == expected_version,
          "powergrad.__version__ is %r, CMakeLists.txt says %r" % (powergrad.__version__, expected_version))
    lib = powergrad.library_path()
    check(os.path.realpath(lib) == os.path.realpath(os.path.join(pkg_dir, "libpowergrad.so")),
          "the library loaded is %s, not the one installed next to the package (%s)" % (lib, pkg_dir))
    v = powergrad.version()
    lib_version = "%d.%d.%d" % (v // 10000, v // 100 % 100, v % 100)
    check(lib_version == expected_version, "the library's pg_version() is %d (%s), not %s" % (v, lib_version, expected_version))
    print("install-check: powergrad %s from %s, library %s" % (powergrad.__version__, pkg_dir, lib), flush=True)

    proc = subprocess.run([sys.executable, "-m", "powergrad"], capture_output=True, text=True, timeout=120)
    check(proc.returncode == 0, "python -m powergrad exited %d:\n%s%s" % (proc.returncode, proc.stdout, proc.stderr))
    lines = proc.stdout.splitlines()
    check(lines and lines[0] == "powergrad " + expected_version, "python -m powergrad's first line: %r" % lines[:1])
    check(any(ln.startswith("library:") and lib in ln and "(version %s)" % expected_version in ln for ln in lines),
          "python -m powergrad does not report the library %s:\n%s" % (lib, proc.stdout))
    backends = "host, cuda" if powergrad.has_cuda() else "host (built without CUDA)"
    check("backends: " + backends in lines, "python -m powergrad does not report the backends %r:\n%s" % (backends, proc.stdout))
    check(any(ln.startswith("gpu:") for ln in lines), "python -m powergrad reports no gpu line:\n%s" % proc.stdout)
    check("warning" not in proc.stderr, "python -m powergrad warned:\n%s" % proc.stderr)
    print("install-check: python -m powergrad:\n  " + "\n  ".join(lines), flush=True)


def data(rows=48, features=12, classes=10, seed=0):
    import torch
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, features, generator=g)
    y = torch.randint(0, classes, (rows,), generator=g)
    return x, y


def mlp(features=12, hidden=24, classes=10, seed=1):
    import torch
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(features, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, classes))


def sgd_step(model):
    import torch
    with torch.no_grad():
        for p in model.parameters():
            p -= LR * p.grad
            p.grad = None


def max_param_diff(a, b):
    return max(float((p.detach().double() - q.detach().double()).abs().max()) for p, q in zip(a.parameters(), b.parameters()))


def check_alpha_one():
    import torch
    import torch.nn.functional as F
    from powergrad.torch import cross_entropy

    x, y = data(seed=2)
    z = (3 * x[:, :10]).requires_grad_()
    z_ref = z.detach().clone().requires_grad_()
    loss = cross_entropy(z, y, alpha=1.0)
    loss.backward()
    loss_ref = F.cross_entropy(z_ref, y)
    loss_ref.backward()
    check(loss.dtype == torch.float32 and loss.shape == (), "loss dtype/shape %s %s" % (loss.dtype, tuple(loss.shape)))
    check(torch.allclose(loss, loss_ref, rtol=1e-6, atol=1e-6), "alpha 1 loss %r != F.cross_entropy %r" % (loss.item(), loss_ref.item()))
    err = float((z.grad - z_ref.grad).abs().max())
    check(err <= 1e-6, "alpha 1 gradient differs from F.cross_entropy's by %g" % err)
    print("install-check: alpha 1 equals F.cross_entropy (loss %.6f, max gradient difference %.2g)" % (loss.item(), err), flush=True)


def train_pgt(loss_fn, model, x, y, steps=STEPS):
    losses = []
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        loss.backward()
        losses.append(loss.item())
        sgd_step(model)
    return losses


def train_reference(model64, x, y, alpha, steps=STEPS):
    """The same steps in float64, the logits gradient from reference.py (not from powergrad)."""
    import torch
    import reference
    losses = []
    for _ in range(steps):
        z = model64(x.double())
        loss, grad = reference.xent(z.detach().numpy(), y.numpy(), alpha=alpha)
        z.backward(torch.from_numpy(grad))
        losses.append(loss.item())
        sgd_step(model64)
    return losses


def check_training():
    from powergrad.torch import cross_entropy

    x, y = data()
    model = mlp()
    model64 = copy.deepcopy(model).double()
    plain = copy.deepcopy(model)
    losses = train_pgt(lambda z, t: cross_entropy(z, t, alpha=ALPHA), model, x, y)
    losses_ref = train_reference(model64, x, y, ALPHA)
    train_reference(plain.double(), x, y, 1.0)
    for i, (a, b) in enumerate(zip(losses, losses_ref)):
        check(abs(a - b) <= 1e-5 * (1 + abs(b)), "step %d: loss %.8f, float64 reference %.8f" % (i, a, b))
    diff = max_param_diff(model, model64)
    check(diff <= 2e-5, "after %d steps the parameters differ from the float64 reference by %g" % (STEPS, diff))
    moved = max_param_diff(model, plain)
    check(moved > 100 * max(diff, 1e-7), "alpha %.2f trained the same model as alpha 1 (difference %g)" % (ALPHA, moved))
    print("install-check: %d SGD steps with cross_entropy(alpha=%.2f) track float64 (max parameter difference %.2g; "
          "%.2g from alpha 1); losses %s" % (STEPS, ALPHA, diff, moved, " ".join("%.5f" % v for v in losses)), flush=True)


def check_compiled_module():
    import torch
    import powergrad.torch as pgt

    check(hasattr(pgt, "CrossEntropyLoss"), "powergrad.torch.CrossEntropyLoss does not exist")
    x, y = data(seed=3)
    eager = mlp(seed=4)
    compiled_model = copy.deepcopy(eager)
    model64 = copy.deepcopy(eager).double()
    crit = pgt.CrossEntropyLoss(alpha=ALPHA)
    losses_eager = train_pgt(crit, eager, x, y)
    # The model's forward and the loss in one graph (fullgraph: a graph break is an error); backward
    # runs the compiled backward graph, which includes the loss's registered backward.
    compiled = torch.compile(lambda inp, t: crit(compiled_model(inp), t), fullgraph=True)
    losses_compiled = []
    for _ in range(STEPS):
        loss = compiled(x, y)
        loss.backward()
        losses_compiled.append(loss.item())
        sgd_step(compiled_model)
    losses_ref = train_reference(model64, x, y, ALPHA)
    for i, (a, b, r) in enumerate(zip(losses_eager, losses_compiled, losses_ref)):
        check(abs(a - b) <= 1e-6 * (1 + abs(a)), "step %d: compiled loss %.8f, eager %.8f" % (i, b, a))
        check(abs(a - r) <= 1e-5 * (1 + abs(r)), "step %d: eager loss %.8f, float64 reference %.8f" % (i, a, r))
    diff = max_param_diff(eager, compiled_model)
    check(diff <= 1e-5, "compiled and eager parameters differ by %g after %d steps" % (diff, STEPS))
    diff_ref = max_param_diff(eager, model64)
    check(diff_ref <= 2e-5, "eager CrossEntropyLoss differs from the float64 reference by %g" % diff_ref)
    print("install-check: CrossEntropyLoss(alpha=%.2f) under torch.compile(fullgraph=True) equals eager "
          "(max parameter difference %.2g; %.2g from float64)" % (ALPHA, diff, diff_ref), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--version", required=True, help="the expected version (CMakeLists.txt's project version)")
    args = ap.parse_args()
    check_install(args.version)
    check_alpha_one()
    check_training()
    check_compiled_module()
    print("install-check: all checks passed", flush=True)


if __name__ == "__main__":
    main()
