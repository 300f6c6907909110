"""What the binding hands to the C ABI: integers that do not fit their C type raise (ctypes would wrap
them silently: ignore_index=2**64 became 0), and every pointer is aligned to its element size with a
layout the library reads (misaligned, byte-swapped, strided, stride-0 inputs are copied first)."""

import ctypes
import os

import pytest

try:
    import numpy as np
    import torch
except ImportError as e:  # pragma: no cover - depends on the machine
    if os.environ.get("POWERGRAD_TEST_STRICT") == "1":
        raise
    pytest.skip("torch or NumPy cannot be imported (%s): install python3-torch (Debian)" % e,
                allow_module_level=True)

import powergrad as pg  # noqa: E402
from powergrad import _lib, _problem  # noqa: E402
from powergrad.bucket import BucketPlan  # noqa: E402
from powergrad.torch import cross_entropy, pgt_hook, vocab_parallel_cross_entropy  # noqa: E402

I64_MAX = 2 ** 63 - 1
TOO_BIG = [2 ** 64, 2 ** 64 + 5, 2 ** 63, -2 ** 63 - 1]


def make(rows=9, cols=13, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((rows, cols)) * 2).astype(dtype)
    y = rng.integers(0, cols, rows).astype(np.int64)
    y[0] = 0  # a class-0 row: ignore_index=2**64 wrapped to 0 and silently ignored it
    return z, y


def misaligned(a):
    """A copy of a whose data starts one byte past an aligned address (an unaligned view)."""
    a = np.ascontiguousarray(a)
    buf = np.zeros(a.nbytes + 1, dtype=np.uint8)
    out = buf[1:].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


# ---- integers that do not fit -----------------------------------------------------------------------

@pytest.mark.parametrize("bad", TOO_BIG)
def test_numpy_ignore_index_out_of_range_raises(bad):
    z, y = make()
    buf = z.copy()
    for fn in (lambda: pg.cross_entropy_forward_backward(buf, y, ignore_index=bad, inplace=True),
               lambda: pg.cross_entropy_backward(buf, y, ignore_index=bad, inplace=True),
               lambda: pg.hook_transform(buf, y, 1.0, 0.5, ignore_index=bad, inplace=True)):
        with pytest.raises(OverflowError, match="ignore_index"):
            fn()
        with pytest.raises(ValueError, match="ignore_index"):  # also a ValueError
            fn()
    assert np.array_equal(buf, z)  # nothing written


@pytest.mark.parametrize("bad", TOO_BIG)
def test_torch_ignore_index_out_of_range_raises(bad):
    z, y = make()
    x = torch.from_numpy(z).requires_grad_(True)
    yt = torch.from_numpy(y)
    for fused in (True, False):
        with pytest.raises(OverflowError, match="ignore_index"):
            cross_entropy(x, yt, ignore_index=bad, fused=fused)
    with pytest.raises(OverflowError, match="ignore_index"):
        pgt_hook(x, yt, 0.3, ignore_index=bad)


def test_ignore_index_at_the_int64_limits_is_accepted():
    z, y = make()
    for ii in (I64_MAX, -2 ** 63):
        loss, _ = pg.cross_entropy_forward_backward(z, y, ignore_index=ii)
        want, _ = pg.cross_entropy_forward_backward(z, y, ignore_index=-100)  # no target equals either
        assert loss == want


def test_non_integer_ignore_index_raises_instead_of_truncating():
    z, y = make()
    with pytest.raises(TypeError, match="ignore_index"):
        pg.cross_entropy_forward_backward(z, y, ignore_index=0.5)
    with pytest.raises(TypeError, match="ignore_index"):
        cross_entropy(torch.from_numpy(z), torch.from_numpy(y), ignore_index=0.5)


@pytest.mark.parametrize("arg", ["vocab_start", "vocab_size", "ignore_index"])
def test_vocab_parallel_integers_out_of_range_raise_before_any_collective(arg):
    # No process group exists here: the check must come before torch.distributed is touched.
    z, y = make()
    kw = dict(vocab_start=0, vocab_size=z.shape[1], ignore_index=-100)
    kw[arg] = 2 ** 64
    with pytest.raises(OverflowError, match=arg):
        vocab_parallel_cross_entropy(torch.from_numpy(z), torch.from_numpy(y), **kw)


def _integer_fields(struct):
    return [(n, t) for n, t in struct._fields_ if t in _lib._INTEGER_CTYPES or t is ctypes.c_void_p]


@pytest.mark.parametrize("struct", [_lib.XentProblem, _lib.Upstream, _lib.XentOutputs, _lib.BucketTensor,
                                    _lib.BucketDesc])
def test_every_integer_struct_field_is_range_checked(struct):
    fields = _integer_fields(struct)
    assert fields
    for name, ctype in fields:
        lo, hi, _ = _lib._c_range(ctype)
        s = struct()
        setattr(s, name, hi)
        assert getattr(s, name) in (hi, ctypes.c_void_p(hi).value)
        for bad in (hi + 1, lo - 1):
            with pytest.raises(OverflowError, match=name):
                setattr(s, name, bad)
            if name != "struct_size" and (struct is not _lib.Upstream or name == "values"):
                with pytest.raises(OverflowError, match=name):
                    struct(**{name: bad})


def test_every_integer_function_argument_is_range_checked():
    # The check runs before the library is called, so the other arguments can be placeholders.
    checked = 0
    for function, (_, params) in _lib._SIGNATURES.items():
        for i, (name, ctype) in enumerate(params):
            if ctype not in _lib._INTEGER_CTYPES and ctype is not ctypes.c_void_p:
                continue
            lo, hi, _ = _lib._c_range(ctype)
            for bad in (hi + 1, lo - 1):
                args = [None] * len(params)
                args[i] = bad
                with pytest.raises(OverflowError, match=r"%s\(%s\)" % (function, name)):
                    _lib.call(function, *args)
            checked += 1
    assert checked >= 30


def test_bucket_plan_and_workspace_integers_out_of_range_raise():
    g = torch.zeros(16)
    with pytest.raises(OverflowError, match="numel"):
        BucketPlan([(g.data_ptr(), 2 ** 64 + 16)], _lib.DType.FLOAT32)
    with pytest.raises(OverflowError, match="rows"):
        BucketPlan([(g.data_ptr(), 16, g.data_ptr(), 2 ** 63)], _lib.DType.FLOAT32, units=_lib.BucketUnits.ROWS)
    with pytest.raises(OverflowError, match="grad"):
        BucketPlan([(g.data_ptr() + 2 ** 64, 16)], _lib.DType.FLOAT32)
    with pytest.raises(OverflowError, match="rows"):
        pg.workspace_bytes(2 ** 64, pg.Reduction.MEAN)


def test_uint64_class_targets_beyond_int64_raise():
    # astype(int64) would wrap 2**64 - 100 to -100, i.e. onto ignore_index: a silently ignored row.
    z, y = make()
    t = y.astype(np.uint64)
    t[3] = np.uint64(2 ** 64 - 100)
    with pytest.raises(ValueError, match="targets"):
        pg.cross_entropy_forward_backward(z, t)


# ---- pointers and layouts ---------------------------------------------------------------------------

_ELEM = {_lib.DType.FLOAT32: 4, _lib.DType.FLOAT16: 2, _lib.DType.BFLOAT16: 2}
_TARGET_ELEM = {_lib.TargetKind.INDEX_INT32: 4, _lib.TargetKind.INDEX_INT64: 8}


def _addr(v):
    return v.value if isinstance(v, ctypes.c_void_p) else v


@pytest.fixture
def pointer_spy(monkeypatch):
    """Records (name, address, element size) of every data pointer given to the library's xent calls."""
    seen = []
    real = _lib.call

    def record(function, args):
        objs = [getattr(a, "_obj", None) for a in args]
        prob = next((o for o in objs if isinstance(o, (_lib.XentProblem, _problem.RawXentProblem))), None)
        if prob is not None:
            e = _ELEM[prob.dtype]
            seen.append(("logits", prob.logits, e))
            seen.append(("targets", prob.targets, _TARGET_ELEM.get(prob.target_kind, e)))
            for o in objs:
                if isinstance(o, (_lib.XentOutputs, _problem.RawXentOutputs)):
                    seen.extend([("loss", o.loss, 4), ("lse", o.lse, 4), ("lse_alpha", o.lse_alpha, 4),
                                 ("dlogits", o.dlogits, e)])
                if isinstance(o, (_lib.Upstream, _problem.RawUpstream)):
                    seen.append(("upstream", o.values, 4))
            if function in ("pg_xent_backward", "pg_xent_hook"):
                seen.extend([("arg2", _addr(args[2]), 4), ("arg3", _addr(args[3]), e)])

    def spy(function, *args):
        record(function, args)
        return real(function, *args)

    monkeypatch.setattr(_lib, "call", spy)
    # powergrad.torch's ops call the library through _common.call (no second range check)
    from powergrad.torch import _common
    real_torch = _common.call

    def torch_spy(device, function, *args):
        record(function, args)
        return real_torch(device, function, *args)

    monkeypatch.setattr(_common, "call", torch_spy)
    return seen


def assert_all_aligned(seen):
    assert seen, "no library call was recorded"
    bad = [(n, a, e) for n, a, e in seen if a is not None and a % e]
    assert not bad, "misaligned pointers reached the library: %s" % bad


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_numpy_misaligned_inputs_are_copied(pointer_spy, dtype):
    z, y = make(dtype=dtype)
    up = np.linspace(0.5, 1.5, z.shape[0]).astype(np.float32)
    want_loss, want_grad, want_lse = pg.cross_entropy_forward_backward(z, y, alpha=0.3, reduction="none",
                                                                       upstream=up, return_lse_alpha=True)
    pointer_spy.clear()
    loss, grad, lse = pg.cross_entropy_forward_backward(misaligned(z), misaligned(y), alpha=0.3, reduction="none",
                                                        upstream=misaligned(up), return_lse_alpha=True)
    assert np.array_equal(loss, want_loss) and np.array_equal(grad, want_grad) and np.array_equal(lse, want_lse)
    g2 = pg.cross_entropy_backward(misaligned(z), misaligned(y), alpha=0.3, reduction="none",
                                   upstream=misaligned(up), lse_alpha=misaligned(want_lse))
    assert np.array_equal(g2, pg.cross_entropy_backward(z, y, alpha=0.3, reduction="none", upstream=up,
                                                        lse_alpha=want_lse))
    q = np.abs(z.astype(np.float32)) + 0.1
    q /= q.sum(1, keepdims=True)
    q = q.astype(dtype)
    _, gd = pg.cross_entropy_forward_backward(misaligned(z), misaligned(q), alpha=0.3)
    assert np.array_equal(gd, pg.cross_entropy_forward_backward(z, q, alpha=0.3)[1])
    h = pg.hook_transform(misaligned(want_grad), misaligned(y.astype(np.int32)), 1.0, 0.5, row_scale=misaligned(up))
    assert np.array_equal(h, pg.hook_transform(want_grad, y.astype(np.int32), 1.0, 0.5, row_scale=up))
    assert_all_aligned(pointer_spy)


def test_numpy_inplace_on_misaligned_or_byteswapped_logits_raises():
    z, y = make()
    m = misaligned(z)
    with pytest.raises(ValueError, match="logits.*aligned"):
        pg.cross_entropy_forward_backward(m, y, inplace=True)
    assert np.array_equal(m, z)
    b = z.astype(">f4" if np.little_endian else "<f4")
    with pytest.raises(ValueError, match="logits.*native"):
        pg.cross_entropy_forward_backward(b, y, inplace=True)
    # Without inplace both are copied and give the native result.
    want = pg.cross_entropy_forward_backward(z, y, alpha=0.3)
    for x in (m, b):
        got = pg.cross_entropy_forward_backward(x, y, alpha=0.3)
        assert got[0] == want[0] and np.array_equal(got[1], want[1])


def test_numpy_strided_stride0_and_converted_inputs_give_the_contiguous_result():
    z, y = make(rows=8, cols=12)
    up = np.linspace(-1.0, 2.0, 8).astype(np.float32)
    want = pg.cross_entropy_forward_backward(z, y, alpha=0.3, reduction="none", upstream=up)
    big = np.zeros((8, 24), np.float32)
    big[:, ::2] = z
    cases = {
        "fortran": (np.asfortranarray(z), y, up),
        "column stride 2": (big[:, ::2], y, up),
        "reversed rows": (z[::-1].copy()[::-1], y[::-1].copy()[::-1], up[::-1].copy()[::-1]),
        "int8 targets": (z, y.astype(np.int8), up),
        "uint16 targets": (z, y.astype(np.uint16), up),
        "byte-swapped": (z.astype(z.dtype.newbyteorder()), y.astype(y.dtype.newbyteorder()),
                         up.astype(up.dtype.newbyteorder())),
        "float64 upstream": (z, y, up.astype(np.float64)),
    }
    for name, (zz, yy, uu) in cases.items():
        got = pg.cross_entropy_forward_backward(zz, yy, alpha=0.3, reduction="none", upstream=uu)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), name
    # Stride-0 (broadcast) logits, targets and upstream: equal to their materialised copies.
    zb, yb, ub = np.broadcast_to(z[:1], z.shape), np.broadcast_to(y[:1], y.shape), np.broadcast_to(up[:1], up.shape)
    got = pg.cross_entropy_forward_backward(zb, yb, alpha=0.3, reduction="none", upstream=ub)
    want_b = pg.cross_entropy_forward_backward(zb.copy(), yb.copy(), alpha=0.3, reduction="none", upstream=ub.copy())
    assert np.array_equal(got[0], want_b[0]) and np.array_equal(got[1], want_b[1])


def test_numpy_wrong_dtypes_raise_naming_the_argument():
    z, y = make()
    with pytest.raises(TypeError, match="logits"):
        pg.cross_entropy_forward_backward(z.astype(np.float64), y)
    with pytest.raises(TypeError, match="logits"):
        pg.cross_entropy_forward_backward(z.astype(np.int32), y)
    with pytest.raises(TypeError, match="targets"):
        pg.cross_entropy_forward_backward(z, y.astype(np.float32))
    with pytest.raises(TypeError, match="targets"):
        pg.cross_entropy_forward_backward(z, y.astype(bool))


def _torch_misaligned(t):
    """A torch tensor with t's values whose data starts one byte past an aligned address."""
    raw = bytearray(t.numel() * t.element_size() + 1)
    out = torch.frombuffer(raw, dtype=t.dtype, offset=1, count=t.numel()).reshape(t.shape)
    out.copy_(t)
    assert out.data_ptr() % t.element_size() != 0
    return out, raw


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_misaligned_inputs_are_copied(pointer_spy, fused, dtype):
    z, y = make()
    zt, yt = torch.from_numpy(z).to(dtype), torch.from_numpy(y)
    up = torch.linspace(0.5, 1.5, zt.shape[0])

    def run(x, t):
        x = x.clone().requires_grad_(True) if x.data_ptr() % x.element_size() == 0 else x.requires_grad_(True)
        loss = cross_entropy(x, t, alpha=0.3, reduction="none", fused=fused)
        loss.backward(up)
        return loss.detach(), x.grad

    want = run(zt, yt)
    pointer_spy.clear()
    mz, keep_z = _torch_misaligned(zt)
    my, keep_y = _torch_misaligned(yt)
    got = run(mz, my)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert_all_aligned(pointer_spy)


def test_torch_strided_and_stride0_inputs_give_the_contiguous_result():
    z, y = make(rows=8, cols=12)
    zt, yt = torch.from_numpy(z), torch.from_numpy(y)

    def run(x, t, reduction="none"):
        x = x.detach().requires_grad_(True)
        loss = cross_entropy(x, t, alpha=0.3, reduction=reduction)
        loss.sum().backward()  # grad_output for 'none' arrives expanded (stride 0)
        return loss.detach(), x.grad

    want = run(zt, yt)
    big = torch.zeros(8, 24)
    big[:, ::2] = zt
    for name, (x, t) in {"transposed": (zt.t().contiguous().t(), yt), "column stride 2": (big[:, ::2], yt),
                         "strided targets": (zt, torch.stack([yt, yt], 1)[:, 0]),
                         "int16 targets": (zt, yt.to(torch.int16))}.items():
        got = run(x, t)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), name
    xb, yb = zt[:1].expand(8, 12), yt[:1].expand(8)
    got = run(xb, yb)
    want_b = run(xb.contiguous(), yb.contiguous())
    assert torch.equal(got[0], want_b[0]) and torch.equal(got[1], want_b[1])
