"""bench/compare_frameworks.py, bench/plot.py and tools/gpu-check.sh run on the CPU, check themselves
and write their outputs.

compare_frameworks.py runs once (``--device cpu --quick``, as a subprocess with a time limit); its JSON
is checked row by row. These tests also run without libpowergrad.so (the powergrad rows must then be
skipped with a reason); with the library, the powergrad rows must run and agree with the float64
reference. The plot tests need matplotlib (Debian: python3-matplotlib) and skip with a reason without it.
tools/gpu-check.sh is checked without a GPU and without a CUDA build: `run` on a bundle with no
binaries (every step skipped), and `bundle --no-build` + `run` from the build folder that holds the
library these tests load, when there is one (the README's test build).
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
BENCH_JSON = os.path.join(ROOT, "bench", "results", "2026-11-26-h100", "bench_device.json")
GPU_CHECK = os.path.join(ROOT, "tools", "gpu-check.sh")
SUMMARIZE = os.path.join(ROOT, "tools", "summarize.py")
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
try:
    import powergrad.torch  # noqa: F401
except ImportError as e:  # PyTorch older than powergrad.torch's minimum: its rows are skipped
    LIBRARY_ERROR = LIBRARY_ERROR or str(e)

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


# ------------------------------------------------------------------------------------------------
# tools/gpu-check.sh and tools/summarize.py
# ------------------------------------------------------------------------------------------------

GPU_STEPS = ["device-tests", "capi-device", "bench", "bench-bucket", "sanitizer-memcheck", "sanitizer-racecheck",
             "sanitizer-initcheck", "sanitizer-synccheck", "demo", "trainer", "nccl", "python", "compare"]
HOST_STEPS = ["host-tests", "host-bench"]
RUN_FILES = {"summary.md", "env.txt", "tests.json", "bench.json", "compare.json", "sanitizer.log", "python.log",
             "run.log"}
# The script speaks of building and running, never of how a bundle or its results are moved.
FOREIGN_WORDS = [r"\bcarry\b", r"travel", r"timeout_s", r"device call", r"\b8 files\b"]


def gpu_check(args, env_extra=None, timeout=TIMEOUT_S):
    # The script's knobs are PG_*: none of the caller's (a surrounding gpu-check run's) may leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG_")}
    env.update(PG_NO_GPU="1", **(env_extra or {}))
    return run(["bash", GPU_CHECK] + args, timeout=timeout, env=env)


def step_lines(summary):
    """step name -> its line in summary.md's Steps list."""
    lines = {}
    body = summary.split("\n## Steps\n", 1)[1].split("\n## ", 1)[0]
    for line in body.splitlines():
        if line.startswith("- ") and ": " in line:
            lines[line[2:].split(":", 1)[0]] = line
    return lines


def assert_speaks_only_of_the_project(text, what):
    import re
    for pattern in FOREIGN_WORDS:
        assert not re.search(pattern, text, re.I), "%s mentions %r" % (what, pattern)


def test_gpu_check_usage_names_the_verbs():
    proc = gpu_check([])
    assert proc.returncode == 2
    for verb in ("bundle DIR", "run BUNDLE OUTDIR", "sass"):
        assert verb in proc.stderr, proc.stderr


def test_gpu_check_text_speaks_only_of_the_project():
    with open(GPU_CHECK) as f:
        assert_speaks_only_of_the_project(f.read(), GPU_CHECK)


def test_gpu_check_run_without_gpu_skips_every_gpu_step(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "MANIFEST.txt").write_text("powergrad GPU bundle\ncommit: 0123abc\nbuilt: 2026-01-01T00:00:00Z\n"
                                         "nvcc: test\nfiles (bytes, sha256):\n")
    out = tmp_path / "out"
    proc = gpu_check(["run", str(bundle), str(out)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_speaks_only_of_the_project(proc.stdout + proc.stderr, "the output of run")
    files = {p.name for p in out.iterdir()}
    assert "summary.md" in files and files <= RUN_FILES, files
    summary = (out / "summary.md").read_text()
    assert "commit: 0123abc" in summary
    lines = step_lines(summary)
    for name in GPU_STEPS:
        assert name in lines and "skipped: no GPU" in lines[name], (name, summary)
    for name in HOST_STEPS:
        assert name in lines and "skipped: not in the bundle" in lines[name], (name, summary)


def test_gpu_check_run_rejects_a_folder_that_is_not_a_bundle(tmp_path):
    proc = gpu_check(["run", str(tmp_path), str(tmp_path / "out")])
    assert proc.returncode == 2 and "not a bundle" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_gpu_check_bundle_does_not_replace_another_folder(tmp_path):
    keep = tmp_path / "mine" / "keep.txt"
    keep.parent.mkdir()
    keep.write_text("not a bundle")
    proc = gpu_check(["bundle", str(keep.parent), "--no-build"])
    assert proc.returncode == 2 and "not a bundle" in proc.stderr
    assert keep.read_text() == "not a bundle"


def test_gpu_check_bundle_and_run_from_the_test_build(tmp_path):
    """bundle --no-build from the build folder of the library under test, then run without a GPU."""
    if LIBRARY_ERROR is not None:
        pytest.skip("no libpowergrad.so: %s" % LIBRARY_ERROR)
    build = os.path.dirname(os.path.dirname(os.path.realpath(powergrad.library_path())))
    if not os.path.isfile(os.path.join(build, "CMakeCache.txt")):
        pytest.skip("the library under test is not in a CMake build folder (%s)" % build)
    bundle = tmp_path / "bundle"
    proc = gpu_check(["bundle", str(bundle), "--no-build"], {"PG_BUILD_DIR": build}, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_speaks_only_of_the_project(proc.stdout + proc.stderr, "the output of bundle")
    for rel in ("python/powergrad/__init__.py", "tests/python/conftest.py", "bench/compare_frameworks.py",
                "bench/plot.py", "tools/gpu-check.sh", "tools/summarize.py", "bin/powergrad_tests_host"):
        assert (bundle / rel).is_file(), rel
    assert [p.name for p in (bundle / "lib").glob("libpowergrad.so*")], "no libpowergrad.so in lib/"

    # MANIFEST.txt lists every other file with its size and sha256.
    import hashlib
    manifest = (bundle / "MANIFEST.txt").read_text()
    assert manifest.startswith("powergrad GPU bundle\ncommit: ")
    listed = {}
    for line in manifest.split("files (bytes, sha256):\n", 1)[1].splitlines():
        rel, size, digest = line.split()
        listed[rel] = (int(size), digest)
    on_disk = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()} - {"MANIFEST.txt"}
    assert set(listed) == on_disk
    for rel, (size, digest) in listed.items():
        data = (bundle / rel).read_bytes()
        assert len(data) == size and hashlib.sha256(data).hexdigest() == digest, rel

    out = tmp_path / "out"
    steps = "device-tests,python,host-bench" if (bundle / "bin" / "powergrad_bench_host").exists() else "device-tests"
    proc = gpu_check(["run", str(bundle), str(out)], {"PG_STEPS": steps}, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = (out / "summary.md").read_text()
    lines = step_lines(summary)
    assert "skipped: no GPU" in lines["device-tests"]
    assert set(steps.split(",")) <= set(lines)
    if "host-bench" in steps:
        assert lines["host-bench"].startswith("- host-bench: passed"), summary
        assert "ratio_to_copy" in summary


def test_summarize_run_summary_of_a_recorded_run(tmp_path):
    """merge-tests, merge-bench and run-summary on the recorded H100 run."""
    recorded = os.path.dirname(BENCH_JSON)
    tests = tmp_path / "tests.json"
    proc = run([sys.executable, SUMMARIZE, "merge-tests", str(tests),
                "powergrad_tests_device=" + os.path.join(recorded, "tests_device.json"),
                "powergrad_capi_device_tests=" + str(tmp_path / "missing.json")])
    assert proc.returncode == 0, proc.stderr
    bench = tmp_path / "bench.json"
    proc = run([sys.executable, SUMMARIZE, "merge-bench", str(bench), BENCH_JSON, BENCH_JSON])
    assert proc.returncode == 0, proc.stderr
    with open(BENCH_JSON) as f:
        n = len(json.load(f)["benchmarks"])
    with open(bench) as f:
        assert len(json.load(f)["benchmarks"]) == 2 * n
    steps = tmp_path / "steps.tsv"
    steps.write_text("device-tests\tpassed\t15\t\ncapi-device\tfailed (exit 1)\t2\t\nbench\tpassed\t40\t\n"
                     "nccl\tskipped\t0\tlibnccl.so.2 not found on this machine\n")
    proc = run([sys.executable, SUMMARIZE, "run-summary", "--steps", str(steps), "--tests", str(tests),
                "--bench", BENCH_JSON, "--env", os.path.join(recorded, "env.txt")])
    assert proc.returncode == 0, proc.stderr
    summary = proc.stdout
    lines = step_lines(summary)
    assert lines["device-tests"].startswith("- device-tests: passed: powergrad_tests_device 29 tests: 29 passed, "
                                            "0 failed, 0 skipped")
    assert "capi-device: failed (exit 1): powergrad_capi_device_tests no report" in lines["capi-device"]
    assert "bench: passed: 108 benchmarks, 0 with errors" in lines["bench"]
    assert lines["nccl"] == "- nccl: skipped: libnccl.so.2 not found on this machine (0 s)"
    assert "- GPU: NVIDIA H100 80GB HBM3 x 1, driver 580.159.04" in summary
    assert "- GOAL fwd_bwd_inplace bf16 8192x128256: ratio_to_copy 0.877 (goal >= 0.85): MET" in summary
    assert "| bf16 | 8192x128256 | 3013 | 0.877 | 0.843 | 0.970 | 0.441 | 0.091 |" in summary


def test_binding_overhead_script_reports_every_row(tmp_path):
    # bench/binding_overhead.py (the per-call overhead of powergrad.torch next to F.cross_entropy):
    # a tiny eager run, every row present with a positive time.
    if LIBRARY_ERROR is not None:
        pytest.skip(LIBRARY_ERROR.splitlines()[0])
    out = tmp_path / "overhead.json"
    env = dict(os.environ, POWERGRAD_LIBRARY=powergrad.library_path())
    proc = run([sys.executable, os.path.join(ROOT, "bench", "binding_overhead.py"), "--shapes", "4x8",
                "--repeats", "2", "--calls", "3", "--no-compile", "--json", str(out)], env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    got = {(r["what"], r["mode"], r["impl"]) for r in doc["rows"]}
    for what in ("forward", "forward+backward"):
        assert {(what, "-", "lib-direct"), (what, "eager", "powergrad"), (what, "eager", "F.cross_entropy")} <= got
    assert all(r["us"] > 0 for r in doc["rows"])
    assert "us/call" in proc.stdout
