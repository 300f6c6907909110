"""pytest setup for the Python binding tests.

* python/ is put on sys.path (no install needed).
* OMP_NUM_THREADS defaults to 1 (see below).
* Without libpowergrad.so every test is skipped with the searched places as the reason, unless
  POWERGRAD_TEST_STRICT=1 (README's test command sets it, so CI runs it): then a missing library
  (when the checkout has src/, i.e. the library can be built), NumPy or torch is a failure, so that
  CI cannot pass by skipping.
"""

import os
import sys

import pytest

# One OpenMP thread per process unless the caller chose: PyTorch 2's OpenMP workers busy-wait, so
# several test processes (gloo workers, the scripts run as subprocesses) on a 2-core machine
# oversubscribe it and run several times slower (bench/compare_frameworks.py --quick: 130 s instead
# of 31 s under load). Set before anything imports torch; subprocesses inherit it. The tests check
# results, never speed.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# A test that imports the standard library's distutils (Python 3.11 still has it) before setuptools
# makes setuptools' distutils shim assert when Inductor later imports setuptools; the standard
# library's copy serves both.
os.environ.setdefault("SETUPTOOLS_USE_DISTUTILS", "stdlib")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "python"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

STRICT = os.environ.get("POWERGRAD_TEST_STRICT") == "1"

import powergrad  # noqa: E402  (pure Python: importable without the library)

try:
    powergrad.load_library()
    _LIB_ERROR = None
except powergrad.LibraryNotFoundError as e:
    _LIB_ERROR = str(e)


# The shared library's sources (src/) may not be part of an older checkout: then there is nothing to
# build, and strict mode skips too rather than fail for a library the checkout cannot produce.
_LIB_IN_CHECKOUT = os.path.isfile(os.path.join(ROOT, "src", "CMakeLists.txt"))


def skip_or_fail(reason):
    """Skip (printing the reason), or fail under POWERGRAD_TEST_STRICT=1."""
    if STRICT and _LIB_IN_CHECKOUT:
        pytest.fail("POWERGRAD_TEST_STRICT=1: " + reason, pytrace=False)
    if not _LIB_IN_CHECKOUT:
        reason = "this checkout has no src/ (the C ABI shared library is not built yet): " + reason
    pytest.skip(reason)


# powergrad.torch needs PyTorch >= 2.4 (docs/python.md). Under an older PyTorch the modules testing
# it are not collected, and the report header says why; everything else still runs.
MIN_TORCH = (2, 4)
_TORCH_MODULES = ["test_arguments.py", "test_bucket.py", "test_distributed.py", "test_example_train.py",
                  "test_mixed_precision.py", "test_torch.py", "test_torch_compile.py", "test_torch_modules.py"]
try:
    import torch as _torch
    _TORCH_VERSION = tuple(int(v) for v in _torch.__version__.split("+")[0].split(".")[:2])
except ImportError:
    _TORCH_VERSION = None
TORCH_TOO_OLD = None
if _TORCH_VERSION is not None and _TORCH_VERSION < MIN_TORCH:
    TORCH_TOO_OLD = "PyTorch %s is older than powergrad.torch's minimum %d.%d" % (
        _torch.__version__, MIN_TORCH[0], MIN_TORCH[1])
collect_ignore = list(_TORCH_MODULES) if TORCH_TOO_OLD else []


def pytest_report_header(config):
    lines = []
    if TORCH_TOO_OLD:
        lines.append("powergrad.torch tests not collected: %s (%s)" % (TORCH_TOO_OLD, ", ".join(_TORCH_MODULES)))
    if _LIB_ERROR is None:
        lines.append("powergrad library: %s (version %d, cuda %s)" % (
            powergrad.library_path(), powergrad.version(), powergrad.has_cuda()))
    else:
        lines.append("powergrad library: NOT FOUND, tests will %s" % ("fail (strict)" if STRICT else "be skipped"))
    return lines


@pytest.fixture(autouse=True)
def _needs_library(request):
    if _LIB_ERROR is not None and "no_library" not in request.keywords:
        skip_or_fail(_LIB_ERROR)


def pytest_configure(config):
    config.addinivalue_line("markers", "no_library: runs without libpowergrad.so")
