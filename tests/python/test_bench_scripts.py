"""bench/compare_frameworks.py and bench/plot.py run on the CPU, check themselves and write their outputs.

compare_frameworks.py runs once (``--device cpu --quick``, as a subprocess with a time limit); its JSON
is checked row by row. These tests also run without libpowergrad.so (the powergrad rows must then be
skipped with a reason); with the library, the powergrad rows must run and agree with the float64
reference. The plot tests need matplotlib (Debian: python3-matplotlib) and skip with a reason without it.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "bench")
COMPARE = os.path.join(BENCH, "compare_frameworks.py")
PLOT = os.path.join(BENCH, "plot.py")
BENCH_JSON = os.path.join(ROOT, "bench", "results", "2026-11-26-h100-final", "bench_device.json")
TIMEOUT_S = 60

pytestmark = pytest.mark.no_library

try:
    import torch  # noqa: F401  (compare_frameworks.py needs it; it runs under this interpreter)
except ImportError as e:  # pragma: no cover - depends on the machine
    if os.environ.get("POWERGRAD_TEST_STRICT") == "1":
        raise
    pytest.skip("torch cannot be imported (%s): install python3-torch (Debian)" % e, allow_module_level=True)

import powergrad  # noqa: E402  (conftest put python/ on sys.path)

try:
    powergrad.load_library()
    LIBRARY_ERROR = None
except powergrad.LibraryNotFoundError as e:
    LIBRARY_ERROR = str(e)

SHAPES = ["256x1000", "64x5000"]
ALPHAS = [0.3, 1.0]
TORCH_PGT = ["torch-eager-hook", "torch-eager-hook-recover", "torch-eager-surrogate"]
POWERGRAD_XENT = ["powergrad", "powergrad-twopass", "powergrad-hook"]
XENT_IMPLS = TORCH_PGT + ["torch-compile", "torch-F.cross_entropy", "liger-kernel"] + POWERGRAD_XENT
RAN = "ok"
NOT_RUN = ("skipped", "n/a")


def run(cmd, timeout=TIMEOUT_S, env=None):
    try:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail("%s took more than %d s; output so far:\n%s" % (" ".join(cmd), timeout, e.stdout or ""))


@pytest.fixture(scope="module")
def compare(tmp_path_factory):
    """(parsed JSON, stdout, JSON path) of one quick CPU run."""
    out = tmp_path_factory.mktemp("compare") / "compare.json"
    proc = run([sys.executable, COMPARE, "--device", "cpu", "--quick", "--json", str(out)])
    assert proc.returncode == 0, "compare_frameworks.py exited %d\n%s\n%s" % (proc.returncode, proc.stdout,
                                                                            proc.stderr)
    with open(out) as f:
        doc = json.load(f)
    return doc, proc.stdout, str(out)


def rows_of(doc, impl, case=None, shape=None, alpha=None):
    return [r for r in doc["results"] if r["impl"] == impl and (case is None or r["case"] == case)
            and (shape is None or r["shape"] == shape) and (alpha is None or r["alpha"] == alpha)]


def one(doc, impl, **kw):
    rows = rows_of(doc, impl, **kw)
    assert len(rows) == 1, "expected one row for %s %s, found %d" % (impl, kw, len(rows))
    return rows[0]


def agc_baseline_name(doc):
    names = [r["impl"] for r in doc["results"] if r["case"] == "adaptive_clip_grad"]
    assert names and names[0] in ("timm-agc", "timm-style-agc"), names
    return names[0]


def test_compare_metadata(compare):
    doc, _, _ = compare
    assert doc["schema"] == "powergrad-compare-frameworks/1"
    meta = doc["meta"]
    assert meta["device"] == "cpu" and meta["quick"] is True
    assert meta["shapes"] == SHAPES and meta["dtypes"] == ["float32"]
    assert meta["bucket"]["resnet50_tensors"] == 161 and meta["bucket"]["tiny_tensors"] == 1000
    assert meta["bucket"]["elements"] > 25_557_032  # ResNet-50's parameters plus the tiny tensors
    if LIBRARY_ERROR is None:
        assert meta["powergrad_library"] and meta["powergrad_error"] is None
    else:
        assert meta["powergrad_error"]


def test_compare_has_every_row(compare):
    doc, _, _ = compare
    for shape in SHAPES:
        for alpha in ALPHAS:
            for impl in XENT_IMPLS:
                r = one(doc, impl, case="xent", shape=shape, alpha=alpha)
                assert r["dtype"] == "float32" and r["device"] == "cpu"
    for impl in ("torch-clip_grad_norm_", "powergrad-clip_grad_norm_"):
        one(doc, impl, case="clip_grad_norm")
    for impl in (agc_baseline_name(doc), "powergrad-adaptive_clip_grad_"):
        one(doc, impl, case="adaptive_clip_grad")


def test_compare_every_row_ran_or_says_why(compare):
    doc, _, _ = compare
    failed = [r for r in doc["results"] if r["status"] not in (RAN,) + NOT_RUN]
    assert not failed, "\n".join("%s %s %s: %s: %s" % (r["impl"], r["case"], r["shape"], r["status"], r["reason"])
                                 for r in failed)
    for r in doc["results"]:
        if r["status"] in NOT_RUN:
            assert r["reason"].strip(), "%s %s was %s without a reason" % (r["impl"], r["case"], r["status"])
            assert r["time_ms"] is None and r["err_grad"] is None


def test_compare_rows_that_ran_agree_with_float64(compare):
    doc, _, _ = compare
    ran = [r for r in doc["results"] if r["status"] == RAN]
    assert ran
    for r in ran:
        what = "%s %s %s alpha=%s" % (r["impl"], r["case"], r["shape"], r["alpha"])
        assert r["time_ms"] > 0 and len(r["times_ms"]) == doc["meta"]["repeats"], what
        assert r["err_grad"] is not None and r["err_grad"] < 1e-4, what
        assert r["err_grad_scaled"] <= r["tol_grad"], what
        if r["case"] == "xent":
            assert r["err_loss"] < 1e-4, what
        if r["case"] == "clip_grad_norm":
            assert r["err_loss"] is not None and r["err_loss"] < 1e-4 * 2.0, what  # total norm is 2


def test_compare_expected_statuses(compare):
    doc, _, _ = compare
    for shape in SHAPES:
        for alpha in ALPHAS:
            for impl in TORCH_PGT:
                assert one(doc, impl, shape=shape, alpha=alpha)["status"] == RAN
            plain = one(doc, "torch-F.cross_entropy", shape=shape, alpha=alpha)
            liger = one(doc, "liger-kernel", shape=shape, alpha=alpha)
            if alpha == 1.0:
                assert plain["status"] == RAN and plain["speedup"] == pytest.approx(1.0)
                assert liger["status"] == "skipped"  # needs CUDA (or is not installed)
            else:
                assert plain["status"] == "n/a" and liger["status"] == "n/a"
                assert one(doc, "torch-eager-hook", shape=shape, alpha=alpha)["speedup"] == pytest.approx(1.0)
            assert one(doc, "torch-compile", shape=shape, alpha=alpha)["status"] == "skipped"  # CPU
            for impl in POWERGRAD_XENT:
                r = one(doc, impl, shape=shape, alpha=alpha)
                if LIBRARY_ERROR is None:
                    assert r["status"] == RAN, "%s: %s" % (impl, r["reason"])
                    assert r["speedup"] > 0
                else:
                    assert r["status"] == "skipped" and "powergrad" in r["reason"]
    assert one(doc, "torch-clip_grad_norm_")["status"] == RAN
    assert one(doc, agc_baseline_name(doc))["status"] == RAN


def test_compare_powergrad_bucket_rows(compare):
    doc, _, _ = compare
    pgt = None
    if LIBRARY_ERROR is None:
        import powergrad.torch as pgt
    for impl, fn in (("powergrad-clip_grad_norm_", "clip_grad_norm_"),
                     ("powergrad-adaptive_clip_grad_", "adaptive_clip_grad_")):
        r = one(doc, impl)
        if pgt is not None and hasattr(pgt, fn):
            assert r["status"] == RAN, "%s: %s" % (impl, r["reason"])
        else:
            assert r["status"] == "skipped" and r["reason"]


def test_compare_prints_the_table(compare):
    doc, stdout, _ = compare
    header = [line for line in stdout.splitlines() if line.startswith("implementation")]
    assert header and "speed-up" in header[0] and "err grad" in header[0]
    for impl in {r["impl"] for r in doc["results"]}:
        assert impl in stdout


# ------------------------------------------------------------------------------------------------
# plot.py
# ------------------------------------------------------------------------------------------------

def needs_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        pytest.skip("matplotlib cannot be imported (%s): install python3-matplotlib (Debian)" % e)


def assert_png(path):
    assert os.path.isfile(path), "%s was not written" % path
    with open(path, "rb") as f:
        head = f.read(8)
    assert head == b"\x89PNG\r\n\x1a\n", "%s is not a PNG file" % path
    assert os.path.getsize(path) > 10_000, "%s is suspiciously small" % path


def test_plot_writes_both_charts(compare, tmp_path):
    needs_matplotlib()
    _, _, compare_json = compare
    proc = run([sys.executable, PLOT, "--bench", BENCH_JSON, "--compare", compare_json, "--out", str(tmp_path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_png(str(tmp_path / "ratio_to_copy.png"))
    assert_png(str(tmp_path / "frameworks.png"))


def test_plot_repairs_a_truncated_benchmark_file(tmp_path):
    needs_matplotlib()
    with open(BENCH_JSON) as f:
        text = f.read()
    cut = tmp_path / "cut.json"
    cut.write_text(text[: len(text) // 2])  # what a timeout leaves behind
    out = tmp_path / "out"
    proc = run([sys.executable, PLOT, "--bench", str(cut), BENCH_JSON, "--out", str(out)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "repaired" in proc.stderr
    assert_png(str(out / "ratio_to_copy.png"))
    assert not (out / "frameworks.png").exists()


def test_plot_rejects_a_file_of_the_wrong_kind(compare, tmp_path):
    needs_matplotlib()
    _, _, compare_json = compare
    proc = run([sys.executable, PLOT, "--bench", compare_json, "--out", str(tmp_path)])
    assert proc.returncode == 1
    assert "not Google Benchmark JSON" in proc.stderr
    proc = run([sys.executable, PLOT, "--compare", BENCH_JSON, "--out", str(tmp_path)])
    assert proc.returncode == 1
    assert "not compare_frameworks.py JSON" in proc.stderr


def test_plot_says_clearly_when_matplotlib_is_missing(tmp_path):
    fake = tmp_path / "fake" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('hidden for this test')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "fake"))
    proc = run([sys.executable, PLOT, "--bench", BENCH_JSON, "--out", str(tmp_path / "out")], env=env)
    assert proc.returncode == 2
    assert "matplotlib is not installed" in proc.stderr and "python3-matplotlib" in proc.stderr
    assert "Traceback" not in proc.stderr
