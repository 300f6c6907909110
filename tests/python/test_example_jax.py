"""examples/jax/train_pgt_jax.py, run as a subprocess with --quick (tiny sizes, 3 epochs): with
alpha = 1 the PGT run (powergrad.jax.cross_entropy) reproduces the optax baseline epoch by epoch, and
training makes progress. Skipped with the reason printed when jax, optax or libpowergrad_jax.so is
missing (as test_jax.py)."""

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, STRICT

pytest.importorskip("jax", reason="jax is not installed in this Python (powergrad.jax needs jax and jaxlib)")
pytest.importorskip("optax", reason="optax is not installed in this Python")

try:
    import powergrad.jax as pj
    _LIB = pj.library_path()
except ImportError as e:
    _LIB = None
    _ERR = str(e)

pytestmark = pytest.mark.no_library

SCRIPT = os.path.join(ROOT, "examples", "jax", "train_pgt_jax.py")
EPOCH = re.compile(r"epoch\s+(\d+)\s+train loss ([\d.]+) acc ([\d.]+)\s+test loss ([\d.]+) acc ([\d.]+)")


def test_example_alpha_one_reproduces_the_optax_baseline():
    if _LIB is None:
        if STRICT:
            pytest.fail("POWERGRAD_TEST_STRICT=1: " + _ERR, pytrace=False)
        pytest.skip(_ERR)
    env = dict(os.environ, POWERGRAD_JAX_LIBRARY=_LIB)
    r = subprocess.run([sys.executable, SCRIPT, "--quick", "--alpha", "1"], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    runs = r.stdout.split("PGT (")
    assert len(runs) == 2, r.stdout
    base = [tuple(map(float, m.groups()[1:])) for m in EPOCH.finditer(runs[0])]
    pgt = [tuple(map(float, m.groups()[1:])) for m in EPOCH.finditer(runs[1])]
    assert len(base) == len(pgt) == 3, r.stdout
    for b, p in zip(base, pgt):
        assert all(abs(x - y) <= 2e-3 for x, y in zip(b, p)), (b, p)
    assert base[-1][0] < base[0][0] and base[-1][3] > base[0][3], base  # it learns
