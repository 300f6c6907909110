"""Packaging: pyproject.toml (scikit-build-core over the project's CMake), the version, the library
lookup and ``python -m powergrad``.

* test_fresh_install_works: ``pip wheel .`` host-only, from a fresh build folder; the wheel holds the
  package, libpowergrad.so and _version.py and nothing at the top of site-packages; installed into a
  fresh virtual environment, install_check.py (run from a temporary folder outside the repository, no
  PYTHONPATH, no POWERGRAD_LIBRARY) imports it, checks the version, ``python -m powergrad`` and where
  the library was loaded from, and trains a small model with PGT against the float64 reference.
  The environment sees this interpreter's packages (torch, numpy) through a .pth file, so nothing is
  downloaded; the build uses this interpreter's scikit-build-core (--no-build-isolation).
* the version is CMakeLists.txt's project(VERSION), read here with a regex of this file's own;
* the lookup (powergrad._lib.library_candidates / load_first) is the same for any library name;
* ``python -m powergrad`` outside a checkout with no library exits 1 and lists where it looked.
"""

import os
import re
import shutil
import site
import subprocess
import sys
import time
import zipfile

import pytest

from conftest import ROOT, skip_or_fail

CUDA_OFF = "cmake.define.POWERGRAD_ENABLE_CUDA=OFF"


def needs_sources(*names):
    """The project files a test builds from; a bundle of the Python sources alone (tools/gpu-check.sh)
    has none of them, and skips (conftest.skip_or_fail fails instead in a checkout, under strict)."""
    missing = [n for n in names if not os.path.isfile(os.path.join(ROOT, n))]
    if missing:
        skip_or_fail("%s not found in %s (the project's sources are needed)" % (", ".join(missing), ROOT))


def cmake_version():
    needs_sources("CMakeLists.txt")
    with open(os.path.join(ROOT, "CMakeLists.txt"), encoding="utf-8") as f:
        m = re.search(r"^project\(powergrad VERSION (\d+)\.(\d+)\.(\d+)", f.read(), re.MULTILINE)
    assert m, "CMakeLists.txt has no project(powergrad VERSION x.y.z"
    return ".".join(m.groups())


def clean_env():
    """The environment of a user's shell: none of the variables that point Python at the checkout."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV") and not k.startswith("POWERGRAD_")}
    return env


def run(cmd, timeout, **kw):
    start = time.monotonic()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          timeout=timeout, **kw)
    took = time.monotonic() - start
    assert proc.returncode == 0, "%s exited %d after %.0f s:\n%s" % (" ".join(cmd), proc.returncode, took, proc.stdout)
    return proc.stdout, took


def needs_build_tools():
    missing = []
    for module in ("pip", "venv", "scikit_build_core"):
        try:
            __import__(module)
        except ImportError as e:
            missing.append("%s (%s)" % (module, e))
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            missing.append("%s (not on PATH)" % tool)
    if missing:
        skip_or_fail("building the wheel needs, in %s: %s (tools/requirements-ci.txt; .ci/deps.sh --python "
                     "creates that environment)" % (sys.executable, ", ".join(missing)))


@pytest.mark.no_library
def test_fresh_install_works(tmp_path):
    needs_sources("pyproject.toml", "CMakeLists.txt", "src/CMakeLists.txt")
    needs_build_tools()
    try:
        import torch  # noqa: F401  (install_check.py trains with it)
    except ImportError as e:
        skip_or_fail("torch cannot be imported (%s)" % e)
    version = cmake_version()
    env = clean_env()
    wheels, build = tmp_path / "wheels", tmp_path / "build"
    out, t_wheel = run([sys.executable, "-m", "pip", "wheel", ROOT, "--no-build-isolation", "--no-deps",
                        "--disable-pip-version-check", "-w", str(wheels), "--config-settings=" + CUDA_OFF, "--config-settings=build-dir=%s" % build],
                       timeout=900, env=env, cwd=str(tmp_path))
    found = sorted(os.listdir(wheels))
    assert len(found) == 1 and found[0].startswith("powergrad-%s-py3-none-" % version), (found, out)
    wheel = str(wheels / found[0])
    names = zipfile.ZipFile(wheel).namelist()
    for required in ("powergrad/__init__.py", "powergrad/__main__.py", "powergrad/_lib.py", "powergrad/torch/__init__.py",
                     "powergrad/libpowergrad.so", "powergrad/_version.py"):
        assert required in names, (required, names)
    stray = [n for n in names if not (n.startswith("powergrad/") or n.startswith("powergrad-%s.dist-info/" % version))]
    assert not stray, "the wheel installs files outside the package: %s" % stray
    assert not any(n.startswith("powergrad/libpowergrad.so.") for n in names), names
    assert not any("__pycache__" in n for n in names), names

    # A fresh environment that sees this interpreter's packages (torch) but not the checkout.
    venv = tmp_path / "venv"
    _, t_venv = run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=120, env=env)
    py = str(venv / "bin" / "python")
    purelib, _ = run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], timeout=60, env=env)
    parents = [p for p in site.getsitepackages() if os.path.isdir(p)]
    with open(os.path.join(purelib.strip(), "_parent_site.pth"), "w") as f:
        f.write("\n".join(parents) + "\n")
    _, t_install = run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index",
                        "--disable-pip-version-check", wheel], timeout=300, env=env)

    # Run from a folder outside the repository, with the float64 reference next to the script.
    work = tmp_path / "user"
    work.mkdir()
    for name in ("install_check.py", "reference.py"):
        shutil.copy(os.path.join(ROOT, "tests", "python", name), str(work / name))
    out, t_check = run([py, "install_check.py", "--version", version], timeout=900, env=env, cwd=str(work))
    assert "install-check: all checks passed" in out, out
    print(out)
    print("test_install: wheel %.0f s, venv %.1f s, install %.1f s, install_check.py %.0f s"
          % (t_wheel, t_venv, t_install, t_check))


@pytest.mark.no_library
def test_version_is_cmake_project_version():
    import powergrad
    assert powergrad.__version__ == cmake_version()
    assert isinstance(powergrad.__version__, str)


def test_library_version_matches_package():
    # powergrad.__version__ (CMakeLists.txt's, or _version.py's in an installed copy) against the
    # library's pg_version() (config.hpp's).
    import powergrad
    assert re.fullmatch(r"\d+\.\d+\.\d+", powergrad.__version__), powergrad.__version__
    major, minor, patch = (int(p) for p in powergrad.__version__.split("."))
    assert powergrad.version() == major * 10000 + minor * 100 + patch


def test_main_reports_the_library():
    import powergrad
    env = clean_env()
    env["PYTHONPATH"] = os.path.join(ROOT, "python")
    env["POWERGRAD_LIBRARY"] = powergrad.library_path()
    out, _ = run([sys.executable, "-m", "powergrad"], timeout=120, env=env, cwd=ROOT)
    lines = out.splitlines()
    assert lines[0] == "powergrad " + cmake_version(), out
    assert "library:  %s (version %s)" % (powergrad.library_path(), cmake_version()) in lines, out
    assert ("backends: host, cuda" if powergrad.has_cuda() else "backends: host (built without CUDA)") in lines, out
    gpu = [ln for ln in lines if ln.startswith("gpu:")]
    assert len(gpu) == 1, out
    try:
        import torch
    except ImportError:
        assert gpu[0].startswith("gpu:      unknown (torch cannot be imported"), out
    else:
        if torch.cuda.is_available():
            assert torch.cuda.get_device_name() in gpu[0], out
        else:
            assert gpu[0].startswith("gpu:      none (torch %s" % torch.__version__), out


@pytest.mark.no_library
def test_main_without_a_library_lists_the_places(tmp_path):
    # A copy of the package outside any checkout, as installed but without the library: no build
    # folder is searched, nothing is found.
    shutil.copytree(os.path.join(ROOT, "python", "powergrad"), str(tmp_path / "powergrad"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    with open(str(tmp_path / "powergrad" / "_version.py"), "w") as f:
        f.write('__version__ = "%s"\n' % cmake_version())
    env = clean_env()
    env["PYTHONPATH"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "powergrad"], cwd=str(tmp_path), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stdout.splitlines() == ["powergrad " + cmake_version(), "library:  not found"], proc.stdout
    here = str(tmp_path / "powergrad" / "libpowergrad.so")
    assert here in proc.stderr and "pip install ." in proc.stderr and "POWERGRAD_LIBRARY" in proc.stderr, proc.stderr
    assert "build/src" not in proc.stderr, proc.stderr


@pytest.mark.no_library
def test_lookup_serves_any_library_name(monkeypatch, tmp_path):
    from powergrad import _lib
    needs_sources("CMakeLists.txt")  # the build folders are searched from a checkout only
    name, var = "libpowergrad_other.so", "POWERGRAD_OTHER_LIBRARY"
    monkeypatch.setenv(var, str(tmp_path))
    paths = _lib.library_candidates(name, var)
    package = os.path.join(ROOT, "python", "powergrad")
    assert paths[0] == os.path.join(package, name)
    assert paths[1] == str(tmp_path / name)
    assert paths[2:] == [os.path.join(ROOT, d, "src", name) for d in _lib._BUILD_DIRS]
    # A file given directly is taken as is.
    monkeypatch.setenv(var, str(tmp_path / "custom.so"))
    assert _lib.library_candidates(name, var)[1] == str(tmp_path / "custom.so")
    monkeypatch.delenv(var)
    assert len(_lib.library_candidates(name, var)) == 1 + len(_lib._BUILD_DIRS)
    # Nothing loadable: the error names the file, the variable, the CMake target and every place.
    broken = tmp_path / name
    broken.write_bytes(b"not an ELF file")
    with pytest.raises(_lib.LibraryNotFoundError) as e:
        _lib.load_first([str(tmp_path / "missing.so"), str(broken)], name, var, "other_target")
    text = str(e.value)
    assert name in text and "$" + var in text and "--target other_target" in text, text
    assert str(tmp_path / "missing.so") + " (not found)" in text and str(broken) + " (" in text, text


def test_lookup_skips_a_library_declare_rejects(tmp_path):
    # A library that loads but lacks a symbol the binding declares is passed over, with the reason.
    import powergrad
    from powergrad import _lib
    real = powergrad.library_path()

    def declare(lib):
        _lib._declare(lib)
        lib.pg_symbol_this_library_does_not_have  # noqa: B018 (AttributeError, as for an older library)

    with pytest.raises(_lib.LibraryNotFoundError) as e:
        _lib.load_first([real], "libpowergrad.so", "POWERGRAD_LIBRARY", "powergrad_shared", declare)
    assert real in str(e.value) and "pg_symbol_this_library_does_not_have" in str(e.value), str(e.value)
    lib, path = _lib.load_first([str(tmp_path / "absent.so"), real], "libpowergrad.so", "POWERGRAD_LIBRARY",
                                "powergrad_shared", _lib._declare)
    assert path == os.path.abspath(real) and lib.pg_version() == powergrad.version()
