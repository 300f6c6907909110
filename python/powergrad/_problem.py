"""The one builder of pg_xent_problem_t shared by the NumPy and PyTorch bindings.

Each binding lays its arrays out for the C ABI (docs/c-abi.md) and passes pointers, sizes and the
loss options here; this module checks the scalar options (integers that do not fit the C type raise
:class:`powergrad._lib.ArgumentRangeError` naming the argument, an unknown reduction raises
ValueError) and fills the struct. Loss options added to the C struct later become keyword arguments
of :func:`xent_problem` (and of the callers' ``cross_entropy``) without changing its callers.
"""

from . import _lib


def xent_problem(device, dtype, logits, rows, cols, ld, target_kind, targets, target_ld, ignore_index=-100,
                 alpha=1.0, label_smoothing=0.0, reduction="mean", col_offset=0, total_cols=0):
    """A filled :class:`powergrad._lib.XentProblem` (pointers as ctypes.c_void_p or None)."""
    return _lib.XentProblem(
        device=device, dtype=dtype, logits=logits, rows=rows, cols=cols, ld=ld, target_kind=target_kind,
        targets=targets, target_ld=target_ld, ignore_index=_lib.check_int("ignore_index", ignore_index),
        alpha=float(alpha), label_smoothing=float(label_smoothing), reduction=_lib.reduction_of(reduction),
        col_offset=_lib.check_int("col_offset", col_offset), total_cols=_lib.check_int("total_cols", total_cols),
        bad_target_count=None)
