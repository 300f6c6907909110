"""ctypes binding of the powergrad C ABI (include/powergrad/powergrad_c.h).

The shared library is loaded lazily, on the first call that needs it, so that ``import powergrad``
works (and can report what is missing) without a built library. Search order:

1. ``libpowergrad.so`` next to this package's ``__init__.py`` (``pip install .`` puts it there);
2. ``$POWERGRAD_LIBRARY`` (a path to the library file, or to a folder that holds it);
3. from a checkout only (``<repo>/python/powergrad``), the repository's usual build folders:
   ``<repo>/build/src``, ``build-host/src``, ``build-gpu/src``, ``build-tests/src``, ``build-tgpu/src``.

``library_candidates`` and ``load_first`` implement that order for any library of the package.
"""

import ctypes
import enum
import operator
import os
import sys
import threading

LIBRARY_NAME = "libpowergrad.so"
_BUILD_DIRS = ("build", "build-host", "build-gpu", "build-tests", "build-tgpu")


class Status(enum.IntEnum):
    """pg_status_t."""

    SUCCESS = 0
    NULL_POINTER = 1
    INVALID_SIZE = 2
    INVALID_VALUE = 3
    INVALID_LAYOUT = 4
    INVALID_TARGET = 5
    WORKSPACE_TOO_SMALL = 6
    NO_CUDA_SUPPORT = 7
    CUDA_ERROR = 8
    UNSUPPORTED = 9
    INTERNAL_ERROR = 10


class DType(enum.IntEnum):
    """pg_dtype_t."""

    FLOAT32 = 0
    FLOAT16 = 1
    BFLOAT16 = 2


class Device(enum.IntEnum):
    """pg_device_t."""

    HOST = 0
    CUDA = 1


class Reduction(enum.IntEnum):
    """pg_reduction_t."""

    NONE = 0
    MEAN = 1
    SUM = 2


class TargetKind(enum.IntEnum):
    """pg_target_kind_t."""

    INDEX_INT32 = 0
    INDEX_INT64 = 1
    DENSE = 2


_REDUCTIONS = {"none": Reduction.NONE, "mean": Reduction.MEAN, "sum": Reduction.SUM}


def reduction_of(name):
    """'none' / 'mean' / 'sum' -> Reduction (a ValueError names the accepted values)."""
    try:
        return _REDUCTIONS[name]
    except (KeyError, TypeError):
        raise ValueError("reduction must be 'none', 'mean' or 'sum', not %r" % (name,)) from None


# C enums are int-sized on every ABI the library targets.
_enum_t = ctypes.c_int


class ArgumentRangeError(OverflowError, ValueError):
    """An integer does not fit the C type it is passed as (ctypes would silently wrap it).

    Both an OverflowError and a ValueError; the message names the argument."""


_INTEGER_CTYPES = (ctypes.c_int8, ctypes.c_int16, ctypes.c_int32, ctypes.c_int64, ctypes.c_uint8, ctypes.c_uint16,
                   ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int, ctypes.c_long, ctypes.c_longlong, ctypes.c_size_t,
                   ctypes.c_ssize_t)


def _c_range(ctype):
    """(lowest, highest, C name) of an integer ctype or c_void_p."""
    bits = 8 * ctypes.sizeof(ctype)
    if ctype is ctypes.c_void_p:
        return 0, (1 << bits) - 1, "a %d-bit pointer" % bits
    if ctype(-1).value < 0:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1, "int%d_t" % bits
    return 0, (1 << bits) - 1, "size_t" if ctype is ctypes.c_size_t else "uint%d_t" % bits


def check_int(name, value, ctype=ctypes.c_int64):
    """``value`` as a Python int that fits ``ctype`` (default int64_t), else an error naming ``name``:
    TypeError for a non-integer (a float is not truncated), ArgumentRangeError when out of range."""
    if isinstance(value, bool):
        value = int(value)
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError("powergrad: %s must be an integer, not %r" % (name, value)) from None
    lo, hi, cname = _c_range(ctype)
    if v < lo or v > hi:
        raise ArgumentRangeError("powergrad: %s = %d does not fit %s (range [%d, %d])" % (name, v, cname, lo, hi))
    return v


def check_pointer(name, value):
    """A raw address (int, None or a c_void_p) that fits a C pointer, else ArgumentRangeError naming ``name``."""
    if value is None or isinstance(value, ctypes.c_void_p):
        return value
    return check_int(name, value, ctypes.c_void_p)


def _check_arg(name, value, ctype):
    """Range check of one ctypes argument or field: Python integers bound for an integer or pointer C type."""
    if ctype in _INTEGER_CTYPES or ctype is ctypes.c_void_p:
        if value is None and ctype is ctypes.c_void_p:
            return value
        if isinstance(value, int) or (not isinstance(value, ctypes._SimpleCData) and hasattr(value, "__index__")):
            return check_int(name, value, ctype)
    return value


class _CheckedStructure(ctypes.Structure):
    """A ctypes struct whose integer and pointer fields reject values that do not fit (ctypes truncates)."""

    _c_name = "struct"

    def __setattr__(self, name, value):
        ctype = type(self)._field_types().get(name)
        if ctype is not None:
            value = _check_arg("%s.%s" % (self._c_name, name), value, ctype)
        super().__setattr__(name, value)

    @classmethod
    def _field_types(cls):
        types = cls.__dict__.get("_types")
        if types is None:
            types = {f[0]: f[1] for f in cls._fields_}
            cls._types = types
        return types


class XentProblem(_CheckedStructure):
    """pg_xent_problem_t."""

    _c_name = "pg_xent_problem_t"
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("device", _enum_t),
        ("dtype", _enum_t),
        ("logits", ctypes.c_void_p),
        ("rows", ctypes.c_int64),
        ("cols", ctypes.c_int64),
        ("ld", ctypes.c_int64),
        ("target_kind", _enum_t),
        ("targets", ctypes.c_void_p),
        ("target_ld", ctypes.c_int64),
        ("ignore_index", ctypes.c_int64),
        ("alpha", ctypes.c_float),
        ("label_smoothing", ctypes.c_float),
        ("reduction", _enum_t),
        ("col_offset", ctypes.c_int64),
        ("total_cols", ctypes.c_int64),
        ("bad_target_count", ctypes.c_void_p),
        ("weight", ctypes.c_void_p),
        ("z_loss_scale", ctypes.c_float),
        ("softcap", ctypes.c_float),
    ]

    def __init__(self, **kw):
        super().__init__(struct_size=ctypes.sizeof(XentProblem), **kw)


class Upstream(_CheckedStructure):
    """pg_upstream_t: g_r = scale * v / (MEAN ? n_valid : 1), v = values[0] or values[r] (1 if NULL)."""

    _c_name = "pg_upstream_t"
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("scale", ctypes.c_float),
        ("values", ctypes.c_void_p),
    ]

    def __init__(self, scale=1.0, values=None):
        super().__init__(struct_size=ctypes.sizeof(Upstream), scale=scale, values=values)


class XentOutputs(_CheckedStructure):
    """pg_xent_outputs_t (every pointer optional)."""

    _c_name = "pg_xent_outputs_t"
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("loss", ctypes.c_void_p),
        ("lse", ctypes.c_void_p),
        ("lse_alpha", ctypes.c_void_p),
        ("dlogits", ctypes.c_void_p),
        ("ld_dlogits", ctypes.c_int64),
        ("z_loss", ctypes.c_void_p),
        ("argmax", ctypes.c_void_p),
        ("correct", ctypes.c_void_p),
    ]

    def __init__(self, **kw):
        super().__init__(struct_size=ctypes.sizeof(XentOutputs), **kw)


class RowStats(ctypes.Structure):
    """pg_row_stats_t (32 bytes)."""

    _fields_ = [("m", ctypes.c_float), ("s", ctypes.c_float), ("sa", ctypes.c_float), ("t", ctypes.c_float),
                ("a", ctypes.c_float), ("w", ctypes.c_float), ("argmax", ctypes.c_int64)]


class BucketTensor(_CheckedStructure):
    """pg_bucket_tensor_t: one gradient tensor of a bucket."""
    _c_name = "pg_bucket_tensor_t"
    _fields_ = [("grad", ctypes.c_void_p), ("param", ctypes.c_void_p), ("numel", ctypes.c_int64),
                ("rows", ctypes.c_int64)]


class BucketDesc(_CheckedStructure):
    """pg_bucket_desc_t (struct_size is filled in)."""
    _c_name = "pg_bucket_desc_t"
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("device", _enum_t),
        ("grad_dtype", _enum_t),
        ("param_dtype", _enum_t),
        ("units", _enum_t),
        ("tensors", ctypes.POINTER(BucketTensor)),
        ("count", ctypes.c_int64),
    ]

    def __init__(self, **kw):
        super().__init__(struct_size=ctypes.sizeof(BucketDesc), **kw)


class BucketUnits(enum.IntEnum):
    TENSOR = 0
    ROWS = 1


class BucketScope(enum.IntEnum):
    TENSOR = 0
    BUCKET = 1


class NormPreserve(enum.IntEnum):
    NONE = 0
    L1 = 1
    L2 = 2


BUCKET_FLAG_NON_FINITE = 1
BUCKET_FLAG_STALE_PLAN = 2


class PowerGradError(RuntimeError):
    """A powergrad call returned a status other than PG_STATUS_SUCCESS.

    Attributes: ``status`` (a Status), ``status_name`` (the library's pg_status_string),
    ``function`` (the C function), ``message`` (pg_last_error() on the calling thread).
    """

    def __init__(self, function, status, status_name, message):
        self.function = function
        try:
            self.status = Status(status)
        except ValueError:
            self.status = status
        self.status_name = status_name
        self.message = message
        enum_name = "PG_STATUS_" + self.status.name if isinstance(self.status, Status) else "status %d" % status
        text = "%s failed: %s (%s)" % (function, enum_name, status_name)
        if message:
            text += ": " + message
        super().__init__(text)


class LibraryNotFoundError(ImportError):
    """libpowergrad.so was not found (or could not be loaded) in any of the searched places."""


# ---- Finding a shared library of the package ---------------------------------------------------------
# One lookup for every library the package ships (libpowergrad.so here; another binding's library is
# found the same way, with its own file name and environment variable):
#   1. next to the package's __init__.py: where `pip install` / `pip wheel` put it (pyproject.toml,
#      the `if(SKBUILD)` rule in src/CMakeLists.txt); an editable install's package path also lists
#      the folder the library was installed to;
#   2. the environment variable (a path to the library file, or to a folder that holds it);
#   3. when the package is imported from a checkout (python/powergrad below the project's
#      CMakeLists.txt), the checkout's usual build folders.


def _package_dirs():
    """The folders of this package: the one holding this file, then any other folder on the package's
    search path (an editable install maps the package onto the sources and the installed files)."""
    dirs = [os.path.dirname(os.path.abspath(__file__))]
    package = sys.modules.get(__package__) if __package__ else None
    for d in getattr(package, "__path__", None) or ():
        if isinstance(d, str):
            d = os.path.abspath(d)
            if d not in dirs:
                dirs.append(d)
    return dirs


def _checkout_root():
    """The project's root when this package is imported from a checkout (``<root>/python/powergrad``),
    else None (an installed package has no build folders next to it)."""
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    if os.path.basename(os.path.dirname(here)) == "python" and os.path.isfile(os.path.join(root, "CMakeLists.txt")):
        return root
    return None


def library_candidates(file_name, env_var, build_subdir="src"):
    """The places searched for the package's shared library ``file_name`` (existing or not), in order:
    next to the package, ``$env_var`` (a file, or a folder holding ``file_name``), then, from a
    checkout, ``<root>/<build dir>/<build_subdir>/file_name`` for each of the usual build folders."""
    paths = [os.path.join(d, file_name) for d in _package_dirs()]
    env = os.environ.get(env_var)
    if env:
        paths.append(os.path.join(env, file_name) if os.path.isdir(env) else env)
    root = _checkout_root()
    if root is not None:
        paths += [os.path.join(root, d, build_subdir, file_name) for d in _BUILD_DIRS]
    unique = []
    for p in paths:
        if p not in unique:
            unique.append(p)
    return unique


def load_first(paths, file_name, env_var, cmake_target, declare=None):
    """``(ctypes handle, path)`` of the first of ``paths`` that loads (and that ``declare(handle)``
    accepts, when given); else LibraryNotFoundError listing every place and why it failed."""
    tried = []
    for path in paths:
        if not os.path.isfile(path):
            tried.append("%s (not found)" % path)
            continue
        try:
            lib = ctypes.CDLL(path)
            if declare is not None:
                declare(lib)
        except (OSError, AttributeError) as e:
            tried.append("%s (%s)" % (path, e))
            continue
        return lib, os.path.abspath(path)
    raise LibraryNotFoundError(
        "powergrad: could not load %s. Install the package (pip install .), build the library "
        "(cmake -S . -B build && cmake --build build --target %s) or point %s at it. Searched, in "
        "order: next to the package, $%s, then a checkout's build folders:\n  %s"
        % (file_name, cmake_target, env_var, env_var, "\n  ".join(tried)))


def candidate_paths():
    """The places searched for libpowergrad.so, in order (existing or not)."""
    return library_candidates(LIBRARY_NAME, "POWERGRAD_LIBRARY")


_lock = threading.Lock()
_lib = None
_lib_path = None


# The C functions: (restype, [(C parameter name, ctype), ...]) as in powergrad_c.h. The names let
# call() name the argument that does not fit its C type.
def _signatures():
    c = ctypes
    vp, i64, sz, f32 = c.c_void_p, c.c_int64, c.c_size_t, c.c_float
    P = c.POINTER
    ws = [("workspace", vp), ("workspace_bytes", sz)]
    return {
        "pg_version": (c.c_int, []),
        "pg_status_string": (c.c_char_p, [("status", _enum_t)]),
        "pg_last_error": (c.c_char_p, []),
        "pg_has_cuda": (c.c_int, []),
        "pg_xent_workspace_bytes": (_enum_t, [("rows", i64), ("reduction", _enum_t), ("bytes", P(sz))]),
        "pg_xent_forward_backward": (_enum_t, [("problem", P(XentProblem)), ("upstream", P(Upstream)),
                                               ("outputs", P(XentOutputs))] + ws + [("stream", vp)]),
        "pg_xent_backward": (_enum_t, [("problem", P(XentProblem)), ("upstream", P(Upstream)),
                                       ("saved_lse_alpha", vp), ("dlogits", vp), ("ld_dlogits", i64)] + ws
                             + [("stream", vp)]),
        "pg_xent_hook": (_enum_t, [("problem", P(XentProblem)), ("scale", f32), ("row_scale", vp), ("out", vp),
                                   ("ld_out", i64), ("stream", vp)]),
        "pg_xent_shard_stats": (_enum_t, [("problem", P(XentProblem)), ("stats", vp), ("stream", vp)]),
        "pg_xent_merge_stats": (_enum_t, [("device", _enum_t), ("parts", vp), ("shards", i64), ("rows", i64),
                                          ("alpha", f32), ("merged", vp), ("stream", vp)]),
        "pg_xent_shard_apply": (_enum_t, [("problem", P(XentProblem)), ("merged", vp), ("upstream", P(Upstream)),
                                          ("outputs", P(XentOutputs))] + ws + [("stream", vp)]),
        "pg_bucket_plan_bytes": (_enum_t, [("count", i64), ("bytes", P(sz))]),
        "pg_bucket_plan_build": (_enum_t, [("desc", P(BucketDesc)), ("plan", vp), ("plan_bytes", sz)]),
        "pg_bucket_tensors_from_flat": (_enum_t, [("data", vp), ("dtype", _enum_t), ("offsets", vp), ("count", i64),
                                                  ("params", vp), ("rows", vp), ("out", P(BucketTensor))]),
        "pg_bucket_workspace_bytes": (_enum_t, [("plan", vp), ("plan_bytes", sz), ("bytes", P(sz))]),
        "pg_bucket_plan_upload": (_enum_t, [("plan", vp), ("plan_bytes", sz), ("workspace", vp), ("workspace_bytes", sz),
                                            ("stream", vp)]),
        "pg_bucket_power": (_enum_t, [("plan", vp), ("plan_bytes", sz), ("beta", f32), ("preserve", _enum_t), ("scope", _enum_t)] + ws
                            + [("flags", vp), ("stream", vp)]),
        "pg_bucket_clip_norm": (_enum_t, [("plan", vp), ("plan_bytes", sz), ("max_norm", f32), ("scope", _enum_t), ("norms", vp)] + ws
                                + [("flags", vp), ("stream", vp)]),
        "pg_bucket_agc": (_enum_t, [("plan", vp), ("plan_bytes", sz), ("clip", f32), ("eps", f32), ("beta", f32), ("preserve", _enum_t)]
                          + ws + [("flags", vp), ("stream", vp)]),
    }


_SIGNATURES = _signatures()


def _declare(lib):
    for name, (restype, params) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = [t for _, t in params]


def load_library():
    """Load (once) and return the ctypes handle of libpowergrad.so; LibraryNotFoundError if absent."""
    global _lib, _lib_path
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is None:
            _lib, _lib_path = load_first(candidate_paths(), LIBRARY_NAME, "POWERGRAD_LIBRARY", "powergrad_shared",
                                         _declare)
        return _lib


def library_path():
    """Path of the loaded library (loads it if needed)."""
    load_library()
    return _lib_path


def library_available():
    """True when the library can be loaded."""
    try:
        load_library()
        return True
    except LibraryNotFoundError:
        return False


def check(function, status):
    """Raise PowerGradError unless status is PG_STATUS_SUCCESS."""
    if status == Status.SUCCESS:
        return
    lib = load_library()
    name = lib.pg_status_string(status)
    msg = lib.pg_last_error()
    raise PowerGradError(function, status, name.decode("utf-8", "replace") if name else "",
                         msg.decode("utf-8", "replace") if msg else "")


def check_args(function, args):
    """Range-check the Python integers among ``args`` against the C parameter types of ``function``
    (ctypes would wrap them silently); the error names the C parameter."""
    params = _SIGNATURES[function][1]
    if len(args) != len(params):
        raise TypeError("powergrad: %s takes %d arguments, %d given" % (function, len(params), len(args)))
    for (name, ctype), value in zip(params, args):
        _check_arg("%s(%s)" % (function, name), value, ctype)


def call(function, *args):
    """Call a pg_* function by name and raise PowerGradError on failure (integer arguments that do not
    fit their C type raise ArgumentRangeError first, without calling the library)."""
    lib = load_library()
    check_args(function, args)
    check(function, getattr(lib, function)(*args))


def workspace_bytes(rows, reduction):
    """pg_xent_workspace_bytes: device workspace a reduced call needs (0 for NONE and on the host)."""
    n = ctypes.c_size_t(0)
    call("pg_xent_workspace_bytes", check_int("rows", rows), int(reduction), ctypes.byref(n))
    return n.value


def version():
    """Library version as MAJOR*10000 + MINOR*100 + PATCH."""
    return load_library().pg_version()


def has_cuda():
    """True when the loaded library can run CUDA calls."""
    return bool(load_library().pg_has_cuda())
