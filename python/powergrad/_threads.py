"""Thread count of the host backend (pg_set_host_threads / pg_host_threads, docs/design.md §6.1).

The setting is process-wide and changes no result, only how many threads a host op may use.
``follow_torch()`` is for the torch binding to call before a host op, so that powergrad uses as many
threads as PyTorch's own pool (``torch.get_num_threads()``) and the two never oversubscribe the
machine together.
"""

import ctypes
import operator

from . import _lib

MAX_THREADS = 256
_declared = None


def _library():
    global _declared
    lib = _lib.load_library()
    if _declared is not lib:
        lib.pg_set_host_threads.restype = _lib._enum_t
        lib.pg_set_host_threads.argtypes = [ctypes.c_int32]
        lib.pg_host_threads.restype = ctypes.c_int32
        lib.pg_host_threads.argtypes = []
        _declared = lib
    return lib


def set_host_threads(threads):
    """Let host ops use ``threads`` threads (an int in 1..256), or 0 for the default (the machine's
    hardware concurrency). Raises TypeError for a non-integer and ValueError for a value out of range,
    naming the argument, without calling the library."""
    if isinstance(threads, bool):
        raise TypeError("powergrad: threads must be an int, not bool")
    try:
        n = operator.index(threads)
    except TypeError:
        raise TypeError("powergrad: threads must be an int, not %s" % type(threads).__name__) from None
    if n < 0 or n > MAX_THREADS:
        raise ValueError("powergrad: threads = %d: must be 0 (the default: hardware concurrency) or 1..%d"
                         % (n, MAX_THREADS))
    global _followed
    _lib.check("pg_set_host_threads", _library().pg_set_host_threads(n))
    _followed = None  # an explicit setting: the next follow_torch() sets torch's count again


def host_threads():
    """The thread count host ops use now."""
    return int(_library().pg_host_threads())


_followed = None


def follow_torch():
    """Set the host thread count to ``torch.get_num_threads()`` (a call into the library only when it
    changed since the last call)."""
    global _followed
    import torch

    n = max(1, min(MAX_THREADS, int(torch.get_num_threads())))
    if n != _followed:
        set_host_threads(n)
        _followed = n
