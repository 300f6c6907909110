"""Gradient-bucket transforms on raw pointers (framework-free): power, clip_norm, AGC.

docs/design.md §2.4 has the math. A :class:`BucketPlan` describes one bucket (the tensors' addresses and
sizes) and is validated once; for CUDA tensors it owns nothing on the device: the caller provides a
device workspace of :attr:`BucketPlan.workspace_bytes` bytes and uploads the plan into it once
(:meth:`BucketPlan.upload`). After that every op is at most three kernels on the given stream, with
no host synchronisation. ``powergrad.torch`` builds these plans from a model's gradients.
"""

import ctypes

from . import _lib
from ._lib import BucketScope, BucketUnits, NormPreserve

__all__ = ["BucketPlan", "BucketScope", "BucketUnits", "NormPreserve", "scope_of", "preserve_of"]


def scope_of(scope):
    """'tensor' | 'bucket' (or a BucketScope) -> BucketScope."""
    if isinstance(scope, str):
        try:
            return {"tensor": BucketScope.TENSOR, "bucket": BucketScope.BUCKET}[scope]
        except KeyError:
            raise ValueError("powergrad: scope must be 'tensor' or 'bucket', not %r" % scope) from None
    return BucketScope(scope)


def preserve_of(preserve):
    """None | 'none' | 'l1' | 'l2' (or a NormPreserve) -> NormPreserve."""
    if preserve is None:
        return NormPreserve.NONE
    if isinstance(preserve, str):
        try:
            return {"none": NormPreserve.NONE, "l1": NormPreserve.L1, "l2": NormPreserve.L2}[preserve.lower()]
        except KeyError:
            raise ValueError("powergrad: preserve must be None, 'l1' or 'l2', not %r" % preserve) from None
    return NormPreserve(preserve)


class BucketPlan:
    """A validated bucket plan (host memory, 16-byte aligned).

    tensors: sequence of (grad_ptr, numel) or (grad_ptr, numel, param_ptr, rows) for ROWS units.
    """

    def __init__(self, tensors, grad_dtype, device=_lib.Device.HOST, units=BucketUnits.TENSOR,
                 param_dtype=None):
        n = len(tensors)
        arr = (_lib.BucketTensor * max(n, 1))()
        for i, t in enumerate(tensors):
            grad, numel = t[0], t[1]
            param = t[2] if len(t) > 2 else None
            rows = t[3] if len(t) > 3 else 0
            # Integers that do not fit the C fields raise (ctypes would wrap them) and name the entry.
            what = "tensors[%d]" % i
            arr[i] = _lib.BucketTensor(_lib.check_pointer(what + " grad", grad),
                                       _lib.check_pointer(what + " param", param),
                                       _lib.check_int(what + " numel", numel), _lib.check_int(what + " rows", rows))
        nbytes = ctypes.c_size_t(0)
        _lib.call("pg_bucket_plan_bytes", n, ctypes.byref(nbytes))
        self._raw = ctypes.create_string_buffer(nbytes.value + 16)
        addr = ctypes.addressof(self._raw)
        self._ptr = ctypes.c_void_p(addr + (-addr % 16))
        desc = _lib.BucketDesc(device=int(device), grad_dtype=int(grad_dtype),
                               param_dtype=int(grad_dtype if param_dtype is None else param_dtype),
                               units=int(units), tensors=arr, count=n)
        self.plan_bytes = nbytes.value
        _lib.call("pg_bucket_plan_build", ctypes.byref(desc), self._ptr, self.plan_bytes)
        ws = ctypes.c_size_t(0)
        _lib.call("pg_bucket_workspace_bytes", self._ptr, self.plan_bytes, ctypes.byref(ws))
        self.workspace_bytes = ws.value
        self.count = n
        self.units = BucketUnits(units)
        self.device = _lib.Device(device)

    @property
    def ptr(self):
        return self._ptr

    def groups(self, scope):
        """Number of norms a clip_norm with this scope writes."""
        return 1 if scope_of(scope) == BucketScope.BUCKET else self.count

    def upload(self, workspace, stream=None):
        """Copies the plan into the device workspace (a pointer); a no-op for host plans."""
        _lib.call("pg_bucket_plan_upload", self._ptr, self.plan_bytes, workspace, self.workspace_bytes, stream)

    def power(self, beta, preserve=None, scope="tensor", workspace=None, flags=None, stream=None):
        _lib.call("pg_bucket_power", self._ptr, self.plan_bytes, float(beta), int(preserve_of(preserve)), int(scope_of(scope)),
                  workspace, self.workspace_bytes if workspace else 0, flags, stream)

    def clip_norm(self, max_norm, scope="bucket", norms=None, workspace=None, flags=None, stream=None):
        _lib.call("pg_bucket_clip_norm", self._ptr, self.plan_bytes, float(max_norm), int(scope_of(scope)), norms, workspace,
                  self.workspace_bytes if workspace else 0, flags, stream)

    def agc(self, clip=0.01, eps=1e-3, beta=1.0, preserve=None, workspace=None, flags=None, stream=None):
        _lib.call("pg_bucket_agc", self._ptr, self.plan_bytes, float(clip), float(eps), float(beta), int(preserve_of(preserve)),
                  workspace, self.workspace_bytes if workspace else 0, flags, stream)
