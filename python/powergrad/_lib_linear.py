"""ctypes binding of the linear cross-entropy part of the C ABI (include/powergrad/powergrad_c.h:
pg_linear_xent_*; docs/design.md §2.6). The library handle and the error mapping are _lib's."""

import ctypes
import enum
import threading

from . import _lib


class GradType(enum.IntEnum):
    """pg_grad_type_t."""

    WEIGHT_DTYPE = 0
    FLOAT32 = 1


class LinearXentProblem(_lib._CheckedStructure):
    """pg_linear_xent_problem_t."""

    _c_name = "pg_linear_xent_problem_t"
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("device", _lib._enum_t),
        ("dtype", _lib._enum_t),
        ("hidden", ctypes.c_void_p),
        ("rows", ctypes.c_int64),
        ("hidden_dim", ctypes.c_int64),
        ("ld_hidden", ctypes.c_int64),
        ("weight", ctypes.c_void_p),
        ("vocab", ctypes.c_int64),
        ("weight_dim", ctypes.c_int64),
        ("ld_weight", ctypes.c_int64),
        ("bias", ctypes.c_void_p),
        ("bias_len", ctypes.c_int64),
        ("target_kind", _lib._enum_t),
        ("targets", ctypes.c_void_p),
        ("target_ld", ctypes.c_int64),
        ("ignore_index", ctypes.c_int64),
        ("alpha", ctypes.c_float),
        ("label_smoothing", ctypes.c_float),
        ("reduction", _lib._enum_t),
        ("bad_target_count", ctypes.c_void_p),
        # Appended to the first layout: the split form and the options (docs/design.md §2.5, §2.6).
        ("vocab_offset", ctypes.c_int64),
        ("total_vocab", ctypes.c_int64),
        ("class_weight", ctypes.c_void_p),
        ("z_loss_scale", ctypes.c_float),
        ("softcap", ctypes.c_float),
    ]

    def __init__(self, **kw):
        super().__init__(struct_size=ctypes.sizeof(LinearXentProblem), **kw)


class LinearXentOutputs(_lib._CheckedStructure):
    """pg_linear_xent_outputs_t (every pointer optional)."""

    _c_name = "pg_linear_xent_outputs_t"
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("loss", ctypes.c_void_p),
        ("dhidden", ctypes.c_void_p),
        ("ld_dhidden", ctypes.c_int64),
        ("dweight", ctypes.c_void_p),
        ("ld_dweight", ctypes.c_int64),
        ("dweight_type", _lib._enum_t),
        ("accumulate_dweight", ctypes.c_int32),
        ("dbias", ctypes.c_void_p),
        ("dbias_type", _lib._enum_t),
        ("accumulate_dbias", ctypes.c_int32),
        # Appended to the first layout: the option outputs.
        ("z_loss", ctypes.c_void_p),
        ("argmax", ctypes.c_void_p),
        ("correct", ctypes.c_void_p),
    ]

    def __init__(self, **kw):
        super().__init__(struct_size=ctypes.sizeof(LinearXentOutputs), **kw)


def _signatures():
    c = ctypes
    vp, i64, sz = c.c_void_p, c.c_int64, c.c_size_t
    P = c.POINTER
    pr, out = ("problem", P(LinearXentProblem)), ("outputs", P(LinearXentOutputs))
    return {
        "pg_has_host_blas": (c.c_int, []),
        "pg_linear_xent_workspace_bytes": (_lib._enum_t, [pr, out, ("chunk_rows", i64), ("bytes", P(sz))]),
        "pg_linear_xent_chunk_rows": (_lib._enum_t, [pr, out, ("budget", sz), ("chunk_rows", P(i64))]),
        "pg_linear_xent_forward_backward": (_lib._enum_t, [pr, ("upstream", P(_lib.Upstream)), out,
                                                           ("workspace", vp), ("workspace_bytes", sz),
                                                           ("chunk_rows", i64), ("blas_handle", vp),
                                                           ("stream", vp)]),
        "pg_linear_xent_shard_stats": (_lib._enum_t, [pr, ("stats", vp), ("workspace", vp), ("workspace_bytes", sz),
                                                      ("chunk_rows", i64), ("blas_handle", vp), ("stream", vp)]),
        "pg_linear_xent_shard_apply": (_lib._enum_t, [pr, ("merged", vp), ("upstream", P(_lib.Upstream)), out,
                                                      ("workspace", vp), ("workspace_bytes", sz),
                                                      ("chunk_rows", i64), ("blas_handle", vp), ("stream", vp)]),
    }


_SIGNATURES = _signatures()
_declared = None
_lock = threading.Lock()


def _library():
    """The loaded libpowergrad with the pg_linear_xent_* prototypes declared."""
    global _declared
    lib = _lib.load_library()
    if _declared is not lib:
        with _lock:
            for name, (restype, params) in _SIGNATURES.items():
                fn = getattr(lib, name)
                fn.restype = restype
                fn.argtypes = [t for _, t in params]
            _declared = lib
    return lib


def call(function, *args):
    """Call a pg_linear_xent_* function; PowerGradError (naming the argument) on failure."""
    lib = _library()
    params = _SIGNATURES[function][1]
    if len(args) != len(params):
        raise TypeError("powergrad: %s takes %d arguments, %d given" % (function, len(params), len(args)))
    for (name, ctype), value in zip(params, args):
        _lib._check_arg("%s(%s)" % (function, name), value, ctype)
    _lib.check(function, getattr(lib, function)(*args))


def has_host_blas():
    """True when the loaded library's host backend can run the linear cross-entropy."""
    return bool(_library().pg_has_host_blas())


def workspace_bytes(problem, outputs, chunk_rows):
    n = ctypes.c_size_t(0)
    call("pg_linear_xent_workspace_bytes", ctypes.byref(problem), ctypes.byref(outputs), chunk_rows, ctypes.byref(n))
    return n.value


def chunk_rows(problem, outputs, budget):
    n = ctypes.c_int64(0)
    call("pg_linear_xent_chunk_rows", ctypes.byref(problem), ctypes.byref(outputs), budget, ctypes.byref(n))
    return n.value
