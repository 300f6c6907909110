"""The builders of pg_xent_problem_t shared by the NumPy and PyTorch bindings.

Each binding lays its arrays out for the C ABI (docs/c-abi.md) and passes pointers, sizes and the
loss options here. :func:`xent_problem` (NumPy) checks the scalar options (integers that do not fit
the C type raise :class:`powergrad._lib.ArgumentRangeError` naming the argument, an unknown
reduction raises ValueError) and fills the checked struct. :func:`raw_xent_problem` (powergrad.torch,
whose public wrappers checked every value already) fills :class:`RawXentProblem`, the same layout
without per-field checks, in one C-level constructor call; :func:`raw_functions` gives the library's
functions declared to accept it. Loss options added to the C struct later become keyword arguments
of both (and of the callers' ``cross_entropy``) without changing their callers."""

import ctypes

from . import _lib

_set_field = ctypes.Structure.__setattr__


def unchecked(cls, **fields):
    """A struct of one of _lib's argument types filled WITHOUT the per-field range checks (the struct
    size set, other fields zero): for callers whose values are checked already (integers from tensor
    shapes, pointers from tensors, options range-checked by the caller). Saves most of a small call's
    Python time."""
    s = cls.__new__(cls)
    _set_field(s, "struct_size", ctypes.sizeof(cls))
    for name, value in fields.items():
        _set_field(s, name, value)
    return s


class RawXentProblem(ctypes.Structure):
    """pg_xent_problem_t without the per-field range checks of :class:`powergrad._lib.XentProblem` (the
    same fields): ctypes fills it in C, about 20 times faster. For callers whose values are checked
    already; the functions it is passed to are declared with ``void*`` for it (see
    :func:`raw_functions`)."""

    _fields_ = _lib.XentProblem._fields_


class RawXentOutputs(ctypes.Structure):
    """pg_xent_outputs_t without the checks (as :class:`RawXentProblem`)."""

    _fields_ = _lib.XentOutputs._fields_


class RawUpstream(ctypes.Structure):
    """pg_upstream_t without the checks (as :class:`RawXentProblem`)."""

    _fields_ = _lib.Upstream._fields_


PROBLEM_SIZE = ctypes.sizeof(_lib.XentProblem)
OUTPUTS_SIZE = ctypes.sizeof(_lib.XentOutputs)
UPSTREAM_SIZE = ctypes.sizeof(_lib.Upstream)
_RAW_REDUCTIONS = {"none": int(_lib.Reduction.NONE), "mean": int(_lib.Reduction.MEAN), "sum": int(_lib.Reduction.SUM)}


def raw_xent_problem(device, dtype, logits, rows, cols, ld, target_kind, targets, target_ld, ignore_index, alpha,
                     label_smoothing, reduction, col_offset=0, total_cols=0, weight=None, z_loss_scale=0.0,
                     softcap=0.0):
    """A :class:`RawXentProblem` from values the caller checked (``reduction`` a valid name; pointers
    as ints or None; integers that fit their C types)."""
    return RawXentProblem(PROBLEM_SIZE, device, dtype, logits, rows, cols, ld, target_kind, targets, target_ld,
                          ignore_index, alpha, label_smoothing, _RAW_REDUCTIONS[reduction], col_offset, total_cols,
                          None, weight, z_loss_scale, softcap)


_raw_handles = {}


def raw_functions():
    """``{name: ctypes function}`` of libpowergrad.so with every struct pointer parameter declared
    ``void*`` (so that ``byref`` of the Raw* structs, or of the checked ones, is accepted): a second
    set of function objects on the same loaded library, declared once."""
    lib = _lib.load_library()
    fns = _raw_handles.get(id(lib))
    if fns is None:
        handle = ctypes.CDLL(_lib.library_path())
        fns = {}
        for name, (restype, params) in _lib._SIGNATURES.items():
            fn = getattr(handle, name)
            fn.restype = restype
            fn.argtypes = [ctypes.c_void_p if isinstance(t, type) and issubclass(t, ctypes._Pointer) else t
                           for _, t in params]
            fns[name] = fn
        _raw_handles[id(lib)] = fns
    return fns


def xent_problem(device, dtype, logits, rows, cols, ld, target_kind, targets, target_ld, ignore_index=-100,
                 alpha=1.0, label_smoothing=0.0, reduction="mean", col_offset=0, total_cols=0, checked=True,
                 weight=None, z_loss_scale=0.0, softcap=0.0):
    """A filled :class:`powergrad._lib.XentProblem` (pointers as ctypes.c_void_p or None).

    The options of docs/design.md §2.5: ``weight`` (a pointer to ``cols`` float32 class weights, or
    None), ``z_loss_scale`` and ``softcap`` (0 is off); the library checks their values and names them.

    ``checked=False``: ``ignore_index``, ``col_offset`` and ``total_cols`` are known to fit int64_t and
    ``reduction`` is a valid name (the torch ops: their wrappers checked them); the fields are then
    written without the per-field checks."""
    if not checked:
        return unchecked(_lib.XentProblem, device=device, dtype=dtype, logits=logits, rows=rows, cols=cols, ld=ld,
                         target_kind=target_kind, targets=targets, target_ld=target_ld, ignore_index=ignore_index,
                         alpha=alpha, label_smoothing=label_smoothing, reduction=_lib.reduction_of(reduction),
                         col_offset=col_offset, total_cols=total_cols, weight=weight, z_loss_scale=z_loss_scale,
                         softcap=softcap)
    return _lib.XentProblem(
        device=device, dtype=dtype, logits=logits, rows=rows, cols=cols, ld=ld, target_kind=target_kind,
        targets=targets, target_ld=target_ld, ignore_index=_lib.check_int("ignore_index", ignore_index),
        alpha=float(alpha), label_smoothing=float(label_smoothing), reduction=_lib.reduction_of(reduction),
        col_offset=_lib.check_int("col_offset", col_offset), total_cols=_lib.check_int("total_cols", total_cols),
        bad_target_count=None, weight=weight, z_loss_scale=float(z_loss_scale), softcap=float(softcap))
