"""The host thread setting from Python (powergrad._threads over pg_set_host_threads): bad values raise
naming the argument and change nothing; results of a host op are bitwise equal for 1, 2 and 3 threads."""

import ctypes

import pytest

from powergrad import _lib, _threads

try:
    import numpy as np
except ImportError as e:  # pragma: no cover
    pytest.skip("NumPy cannot be imported (%s)" % e, allow_module_level=True)


@pytest.fixture(autouse=True)
def _restore_default():
    yield
    _threads.set_host_threads(0)


def test_set_and_read_back():
    _threads.set_host_threads(3)
    assert _threads.host_threads() == 3
    _threads.set_host_threads(0)
    assert _threads.host_threads() >= 1


@pytest.mark.parametrize("bad, exc", [(-1, ValueError), (257, ValueError), (1.5, TypeError), (True, TypeError),
                                      ("2", TypeError)])
def test_bad_values_raise_and_change_nothing(bad, exc):
    _threads.set_host_threads(2)
    with pytest.raises(exc, match="threads"):
        _threads.set_host_threads(bad)
    assert _threads.host_threads() == 2


def test_library_rejects_out_of_range_itself():
    lib = _threads._library()
    assert lib.pg_set_host_threads(-5) == _lib.Status.INVALID_VALUE
    assert b"threads = -5" in lib.pg_last_error()


def test_follow_torch():
    torch = pytest.importorskip("torch")
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _threads.follow_torch()
        assert _threads.host_threads() == 1
    finally:
        torch.set_num_threads(old)
        _threads._followed = None


def _clip_once(threads, grads):
    """clip_norm over one flat fp32 bucket through the C ABI, on `threads` threads."""
    _threads.set_host_threads(threads)
    g = grads.copy()
    offsets = np.array([0, 1000, 70000, 70001, 200000, g.size], dtype=np.int64)
    count = offsets.size - 1
    tensors = (_lib.BucketTensor * count)()
    _lib.call("pg_bucket_tensors_from_flat", g.ctypes.data, int(_lib.DType.FLOAT32), offsets.ctypes.data, count,
              None, None, tensors)
    n = ctypes.c_size_t(0)
    _lib.call("pg_bucket_plan_bytes", count, ctypes.byref(n))
    plan = np.zeros(n.value // 8 + 2, dtype=np.uint64)
    desc = _lib.BucketDesc(device=int(_lib.Device.HOST), grad_dtype=int(_lib.DType.FLOAT32),
                           param_dtype=int(_lib.DType.FLOAT32), units=int(_lib.BucketUnits.TENSOR),
                           tensors=tensors, count=count)
    _lib.call("pg_bucket_plan_build", ctypes.byref(desc), plan.ctypes.data, plan.nbytes)
    norms = np.full(1, np.nan, dtype=np.float32)
    _lib.call("pg_bucket_clip_norm", plan.ctypes.data, plan.nbytes, 0.5, int(_lib.BucketScope.BUCKET),
              norms.ctypes.data, None, 0, None, None)
    return g, norms


def test_results_do_not_depend_on_threads():
    rng = np.random.default_rng(7)
    grads = rng.standard_normal(300000).astype(np.float32) * 1e-2
    ref_norm = np.sqrt(np.sum(grads.astype(np.float64) ** 2))
    first = _clip_once(1, grads)
    assert abs(first[1][0] - ref_norm) <= 1e-6 * ref_norm
    expect = grads.astype(np.float64) * min(1.0, 0.5 / (ref_norm + 1e-6))
    np.testing.assert_allclose(first[0], expect, rtol=2e-6, atol=0)
    for t in (2, 3):
        g, norms = _clip_once(t, grads)
        assert g.tobytes() == first[0].tobytes()
        assert norms.tobytes() == first[1].tobytes()
