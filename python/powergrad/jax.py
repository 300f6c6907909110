"""JAX binding of powergrad through XLA's FFI: the PGT cross-entropy and the gradient transforms.

PGT (the PowerGrad Transform, "Altering Backward Pass Gradients improves Convergence", arXiv
2111.12495) replaces the softmax probabilities p by p' = softmax(alpha z) in the backward pass of
softmax cross-entropy; the loss is unchanged (docs/design.md §2.1). This module calls the library's
fused ops as XLA custom calls (``jax.ffi.ffi_call``) on the handlers of ``libpowergrad_jax.so``
(ffi/jax/): the host backend for XLA's CPU platform, the CUDA backend for GPUs. Everything here is
jittable and differentiable:

* :func:`cross_entropy` -- a ``jax.custom_vjp``: the forward saves one float per row (lse_alpha),
  the backward reads the logits once and writes the gradient, applying the cotangent exactly;
* :func:`vocab_parallel_cross_entropy` -- the split form (docs/design.md §2.3) inside
  ``jax.shard_map`` with the vocabulary sharded: one ``all_gather`` of 32 bytes per row;
* :func:`clip_by_global_norm`, :func:`adaptive_grad_clip`, :func:`power_map` -- optax
  ``GradientTransformation`` objects, one FFI call per dtype for the whole tree (docs/design.md §2.4).

docs/jax.md has the details. The library is looked up, on first use, next to this file, then at
``$POWERGRAD_JAX_LIBRARY`` (the file, or a folder holding it), then in the repository's build
folders (``<repo>/<build dir>/ffi/jax/``), as libpowergrad.so is (``powergrad._lib``).
"""

import ctypes
import math
import os
import threading

import numpy as np

import jax
import jax.numpy as jnp

from . import _lib

__all__ = [
    "cross_entropy", "vocab_parallel_cross_entropy", "clip_by_global_norm", "global_norm_and_clip", "adaptive_grad_clip",
    "power_map", "library_path", "has_cuda_handlers", "LIBRARY_NAME",
]

LIBRARY_NAME = "libpowergrad_jax.so"
_TARGETS = ("xent_fwd", "xent_bwd", "xent_stats", "xent_merge", "clip_norm", "power", "agc")
_FLOATS = (jnp.float32, jnp.float16, jnp.bfloat16)
_STATS_FLOATS = 8  # RowStats (docs/design.md §2.3): {m, s, sa, t, a, w} floats and an int64 argmax, 32 bytes

_lock = threading.Lock()
_state = {"lib": None, "path": None, "cuda": False}


def candidate_paths():
    """Where the handler library is looked for, in order (the package's common lookup, _lib.py)."""
    return _lib.library_candidates(LIBRARY_NAME, "POWERGRAD_JAX_LIBRARY", build_subdir=os.path.join("ffi", "jax"))


def _declare(lib):
    for t in _TARGETS:  # an AttributeError here makes load_first try the next candidate
        getattr(lib, "pg_jax_%s_cpu" % t)


def _load():
    """Loads the library and registers its handlers with XLA (once per process)."""
    if _state["lib"] is not None:
        return _state["lib"]
    with _lock:
        if _state["lib"] is not None:
            return _state["lib"]
        try:
            lib, path = _lib.load_first(candidate_paths(), LIBRARY_NAME, "POWERGRAD_JAX_LIBRARY", "powergrad_jax",
                                        _declare)
        except _lib.LibraryNotFoundError as e:
            raise ImportError(str(e) + "\n(the JAX handlers are built when CMake finds jaxlib: "
                              "-DPython3_EXECUTABLE=<python with jax>; docs/jax.md)") from None
        for t in _TARGETS:
            jax.ffi.register_ffi_target("powergrad_" + t, jax.ffi.pycapsule(getattr(lib, "pg_jax_%s_cpu" % t)),
                                        platform="cpu")
        cuda = hasattr(lib, "pg_jax_xent_fwd_cuda")
        if cuda:
            for t in _TARGETS:
                jax.ffi.register_ffi_target("powergrad_" + t,
                                            jax.ffi.pycapsule(getattr(lib, "pg_jax_%s_cuda" % t)), platform="CUDA")
        _state.update(lib=lib, path=path, cuda=cuda)
        return lib


def library_path():
    """The path of the loaded handler library (loading it if needed)."""
    _load()
    return _state["path"]


def has_cuda_handlers():
    """Whether the loaded library was built with the CUDA handlers."""
    _load()
    return _state["cuda"]


def _vma(x):
    """The mesh axes along which x varies inside shard_map (empty outside, or with check_vma=False)."""
    aval = jax.typeof(x)
    mat = getattr(aval, "manual_axis_type", None)  # jax >= 0.9 spells it so; older versions aval.vma
    return frozenset(mat.varying) if mat is not None else frozenset(getattr(aval, "vma", ()))


def _call(target, results, *args, vmap_method=None, aliases=None, **attrs):
    _load()
    out = jax.ffi.ffi_call("powergrad_" + target, results, vmap_method=vmap_method,
                           input_output_aliases=aliases)(*args, **attrs)
    # An FFI call's outputs carry no shard_map varying-axes type; every output here depends on every
    # input, so it varies along the union of the inputs' axes (what check_vma expects of the results
    # and of a custom_vjp's cotangents).
    axes = frozenset().union(*(_vma(a) for a in args))
    if not axes:
        return out

    def vary(o):
        missing = tuple(sorted(axes - _vma(o)))
        return jax.lax.pcast(o, missing, to="varying") if missing else o
    return [vary(o) for o in out] if isinstance(out, (list, tuple)) else vary(out)


# ---- argument checks (messages name the argument; nothing is traced yet) ------------------------

def _static_float(name, value, lo=None, hi=None, lo_open=False, hi_open=False):
    if isinstance(value, jax.core.Tracer):
        raise TypeError("powergrad: %s must be a Python number (a static attribute of the op), not a traced value"
                        % name)
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError("powergrad: %s must be a number, not %r" % (name, value)) from None
    ok = math.isfinite(v)
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v < hi if hi_open else v <= hi
    if not ok:
        rng = "%s%s, %s%s" % ("(" if lo_open else "[", "-inf" if lo is None else lo, "inf" if hi is None else hi,
                              ")" if hi_open or hi is None else "]")
        raise ValueError("powergrad: %s = %r must be finite and in %s" % (name, value, rng))
    return v


def _static_int(name, value):
    if isinstance(value, (bool, np.bool_)) or isinstance(value, jax.core.Tracer):
        raise TypeError("powergrad: %s must be a Python integer, not %r" % (name, value))
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise TypeError("powergrad: %s must be an integer, not %r" % (name, value)) from None
    if v != value:
        raise TypeError("powergrad: %s must be an integer, not %r" % (name, value))
    if not -(1 << 63) <= v < (1 << 63):
        raise ValueError("powergrad: %s = %d does not fit int64" % (name, v))
    return v


def _reduction(reduction):
    if reduction not in ("mean", "sum", "none"):
        raise ValueError("powergrad: reduction must be 'mean', 'sum' or 'none', not %r" % (reduction,))
    return reduction


def _prepare(logits, targets, alpha, ignore_index, label_smoothing, reduction):
    """Checks the arguments; returns (z [rows x cols], y [rows] or [rows x cols], dense, params)."""
    logits = jnp.asarray(logits)
    if logits.dtype not in _FLOATS:
        raise TypeError("powergrad: logits must be float32, float16 or bfloat16, not %s" % logits.dtype)
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError("powergrad: logits must have a class dimension (last) of size >= 1; shape %s"
                         % (logits.shape,))
    targets = jnp.asarray(targets)
    cols = logits.shape[-1]
    if jnp.issubdtype(targets.dtype, jnp.integer):
        if targets.shape != logits.shape[:-1]:
            raise ValueError("powergrad: class-index targets must have shape logits.shape[:-1] = %s, not %s"
                             % (logits.shape[:-1], targets.shape))
        if targets.dtype not in (jnp.int32, jnp.int64):
            targets = targets.astype(jnp.int32)
        dense = False
        y = targets.reshape(-1)
    elif jnp.issubdtype(targets.dtype, jnp.floating):
        if targets.shape != logits.shape:
            raise ValueError("powergrad: probability targets must have the logits' shape %s, not %s"
                             % (logits.shape, targets.shape))
        if targets.dtype != logits.dtype:
            raise TypeError("powergrad: probability targets must have the logits' dtype (%s), not %s"
                            % (logits.dtype, targets.dtype))
        dense = True
        y = targets.reshape(-1, cols)
    else:
        raise TypeError("powergrad: targets must be integer class indices or float probabilities, not %s"
                        % targets.dtype)
    params = (_static_float("alpha", alpha, lo=0.0, hi=1e30), _static_int("ignore_index", ignore_index),
              _static_float("label_smoothing", label_smoothing, lo=0.0, hi=1.0, hi_open=True),
              _reduction(reduction))
    return logits, logits.reshape(-1, cols), y, dense, params


def _attrs(alpha, ignore_index, label_smoothing, total_cols):
    return dict(alpha=np.float32(alpha), ignore_index=np.int64(ignore_index),
                label_smoothing=np.float32(label_smoothing), total_cols=np.int64(total_cols))


def _n_valid(y, dense, ignore_index):
    if dense:
        return jnp.float32(y.shape[0])
    return jnp.sum(y != ignore_index).astype(jnp.float32)


def _reduce(loss_rows, n_valid, reduction):
    if reduction == "none":
        return loss_rows
    total = jnp.sum(loss_rows)
    if reduction == "sum":
        return total
    # kMean over zero valid rows is 0 (docs/design.md §2.1), not NaN.
    return jnp.where(n_valid > 0, total / jnp.maximum(n_valid, 1.0), 0.0)


def _row_cotangent(ct, n_valid, rows, reduction):
    """The per-row upstream g_r of docs/design.md §2.1 from the cotangent of the reduced loss."""
    ct = jnp.asarray(ct, jnp.float32)
    if reduction == "none":
        return ct.reshape(rows)
    if reduction == "mean":
        ct = jnp.where(n_valid > 0, ct / jnp.maximum(n_valid, 1.0), 0.0)
    return jnp.broadcast_to(ct, (rows,))


def _target_cotangent(z, y, dense, g, label_smoothing, lse=None):
    # loss_r = A_r lse_r - sum_j q'_j z_j with q' = (1 - eps) q + eps / C and A_r = sum_j q'_j
    # (docs/design.md §2.5: a dense row need not sum to 1, as in PyTorch), so
    # d loss_r / d q_j = (1 - eps) (lse_r - z_j) = -(1 - eps) log p_j. lse: the rows' global
    # log-sum-exp (the split form passes the merged one); computed here otherwise (XLA drops it when
    # the targets' cotangent is unused).
    if not dense:
        return None
    zf = z.astype(jnp.float32)
    if lse is None:
        lse = jax.nn.logsumexp(zf, axis=-1)
    logp = jnp.where(zf == -jnp.inf, 0.0, zf - lse[:, None])  # q_j 0 * -inf: a masked class adds 0
    return (-(1.0 - label_smoothing) * g[:, None] * logp).astype(y.dtype)


# ---- cross-entropy -------------------------------------------------------------------------------

def _xent_impl(z, y, params, dense):
    alpha, ignore_index, eps, reduction = params
    rows = z.shape[0]
    loss_rows, lse_alpha = _call("xent_fwd", (jax.ShapeDtypeStruct((rows,), jnp.float32),) * 2, z, y,
                                 vmap_method="broadcast_all", **_attrs(alpha, ignore_index, eps, 0))
    n_valid = _n_valid(y, dense, ignore_index)
    return _reduce(loss_rows, n_valid, reduction), (lse_alpha, n_valid)


def _xent_bwd_rows(z, y, lse_alpha, g, params, total_cols):
    alpha, ignore_index, eps, _ = params
    return _call("xent_bwd", jax.ShapeDtypeStruct(z.shape, z.dtype), z, y, lse_alpha, g,
                 vmap_method="broadcast_all", **_attrs(alpha, ignore_index, eps, total_cols))


def _make_xent(dense):
    def f(z, y, params):
        return _xent_impl(z, y, params, dense)[0]

    def fwd(z, y, params):
        loss, (lse_alpha, n_valid) = _xent_impl(z, y, params, dense)
        return loss, (z, y, lse_alpha, n_valid)

    def bwd(params, res, ct):
        z, y, lse_alpha, n_valid = res
        g = _row_cotangent(ct, n_valid, z.shape[0], params[3])
        dz = _xent_bwd_rows(z, y, lse_alpha, g, params, 0)
        return dz, _target_cotangent(z, y, dense, g, params[2])

    f = jax.custom_vjp(f, nondiff_argnums=(2,))
    f.defvjp(fwd, bwd)
    return f


_xent_index = _make_xent(False)
_xent_dense = _make_xent(True)


def cross_entropy(logits, targets, alpha=1.0, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """PGT softmax cross-entropy (docs/design.md §2.1): loss as ordinary cross-entropy, gradient
    ``g_r (softmax(alpha z) - q)`` (alpha = 1: the ordinary gradient).

    logits: float32 / float16 / bfloat16, any leading dimensions, classes last. targets: integer class
    indices of shape ``logits.shape[:-1]`` (``ignore_index`` rows count for nothing), or probabilities
    of the logits' shape and dtype. label_smoothing as PyTorch. reduction: 'mean' (over the
    non-ignored rows; 0 when there is none), 'sum' or 'none' (shape ``logits.shape[:-1]``). The loss
    is float32 for every logits dtype. ``alpha``, ``ignore_index``, ``label_smoothing`` and
    ``reduction`` are static (Python values).
    """
    logits, z, y, dense, params = _prepare(logits, targets, alpha, ignore_index, label_smoothing, reduction)
    loss = (_xent_dense if dense else _xent_index)(z, y, params)
    if params[3] == "none":
        loss = loss.reshape(logits.shape[:-1])
    return loss


# ---- vocabulary-parallel cross-entropy (inside shard_map) ----------------------------------------

def _axis_size(axis_name):
    size = getattr(jax.lax, "axis_size", None)
    return int(size(axis_name)) if size is not None else int(jax.lax.psum(1, axis_name))


def _shard_targets(y, dense, ignore_index, shard, cols, total_cols):
    """Class indices in the shard's coordinates: the op runs with col_offset 0 on a row of total_cols
    columns, so the global index y becomes (y - shard * cols) mod total_cols, which is in [0, cols)
    exactly when y is in this shard. label smoothing (eps / total_cols) does not depend on the
    rotation. Ignored and out-of-range indices are passed unchanged (the op rejects the latter)."""
    if dense:
        return y
    offset = (shard * cols).astype(y.dtype)
    in_range = (y >= 0) & (y < total_cols)
    rotated = jnp.mod(y - offset, jnp.asarray(total_cols, y.dtype))
    return jnp.where((y == ignore_index) | ~in_range, y, rotated)


def _vp_impl(z, y, y_global, params, dense, axis_name, total_cols):
    alpha, ignore_index, eps, reduction = params
    rows = z.shape[0]
    stats = _call("xent_stats", jax.ShapeDtypeStruct((rows, _STATS_FLOATS), jnp.float32), z, y,
                  **_attrs(alpha, ignore_index, eps, total_cols))
    # [shards, rows, 8], in shard order. Under check_vma the gathered statistics are the same on
    # every shard: gathered as such ('invarying'), so that the loss computed from them is replicated.
    if axis_name in _vma(stats):
        parts = jax.lax.all_gather(stats, axis_name, to="invarying")
    else:
        parts = jax.lax.all_gather(stats, axis_name)
    merged = _call("xent_merge", jax.ShapeDtypeStruct((rows, _STATS_FLOATS), jnp.float32), parts,
                   alpha=np.float32(alpha))
    # From the merged (m, s, sa, t, a), the same on every shard (docs/design.md §2.3, §2.5):
    # lse = m + log s, loss = a lse - t (a: the row's target mass, 1 for class targets; NaN for a row
    # with every column masked), lse_alpha = alpha m + log sa (the alpha m term dropped at alpha = 0).
    # Computed here, from values every shard holds, so that the loss is replicated (shard_map's
    # out_specs P() under check_vma) without another collective.
    m, s_, sa, t, a = merged[:, 0], merged[:, 1], merged[:, 2], merged[:, 3], merged[:, 4]
    lse = m + jnp.log(s_)
    loss_rows = jnp.where(m == -jnp.inf, jnp.nan, a * lse - t)
    lse_alpha = (0.0 if alpha == 0.0 else alpha * m) + jnp.log(sa)
    if not dense:
        loss_rows = jnp.where(y_global == ignore_index, 0.0, loss_rows)
    n_valid = _n_valid(y_global, dense, ignore_index)
    return _reduce(loss_rows, n_valid, reduction), (lse_alpha, n_valid, lse, a)


def _dense_shard_grad(z, q, lse_alpha, a, g, alpha, eps, total_cols):
    """g_r (A_r p'_j - q'_j) over a shard's columns (docs/design.md §2.5), with the row's whole target
    mass A_r from the merged statistics: the library's backward of a shard would sum only the
    shard's part of it, so it refuses dense targets on a column shard."""
    zf = z.astype(jnp.float32)
    p = jnp.where(zf == -jnp.inf, 0.0, jnp.exp(alpha * jnp.where(zf == -jnp.inf, 0.0, zf) - lse_alpha[:, None]))
    qq = (1.0 - eps) * q.astype(jnp.float32) + eps / total_cols
    return (g[:, None] * (a[:, None] * p - qq)).astype(z.dtype)


def _make_vp(dense):
    # y: the targets in the shard's coordinates (what the FFI calls read); y_global: as the caller
    # gave them (the same on every shard: the ignored-row mask and n_valid come from them).
    def f(z, y, y_global, params, axis_name, total_cols):
        return _vp_impl(z, y, y_global, params, dense, axis_name, total_cols)[0]

    def fwd(z, y, y_global, params, axis_name, total_cols):
        loss, (lse_alpha, n_valid, lse, a) = _vp_impl(z, y, y_global, params, dense, axis_name, total_cols)
        return loss, (z, y, lse_alpha, n_valid, lse, a)

    def bwd(params, axis_name, total_cols, res, ct):
        z, y, lse_alpha, n_valid, lse, a = res
        g = _row_cotangent(ct, n_valid, z.shape[0], params[3])
        if dense:
            dz = _dense_shard_grad(z, y, lse_alpha, a, g, params[0], params[2], total_cols)
        else:
            dz = _xent_bwd_rows(z, y, lse_alpha, g, params, total_cols)
        # Dense targets are passed twice (y is y_global): the cotangent goes to the first.
        return dz, _target_cotangent(z, y, dense, g, params[2], lse), None

    f = jax.custom_vjp(f, nondiff_argnums=(3, 4, 5))
    f.defvjp(fwd, bwd)
    return f


_vp_index = _make_vp(False)
_vp_dense = _make_vp(True)


def vocab_parallel_cross_entropy(logits, targets, axis_name, alpha=1.0, ignore_index=-100, label_smoothing=0.0,
                                 reduction="mean"):
    """The PGT cross-entropy of a row split over the vocabulary (docs/design.md §2.3), for use inside
    ``jax.shard_map``: ``logits`` is this shard's block of columns (every shard the same width, in
    shard order along ``axis_name``), ``targets`` the global class indices (the same on every shard)
    or this shard's columns of probability targets. One ``all_gather`` of 32 bytes per row; every
    shard returns the same loss, and the gradient of its own columns.

    ``ignore_index`` must lie outside ``[0, vocabulary)``.
    """
    logits, z, y, dense, params = _prepare(logits, targets, alpha, ignore_index, label_smoothing, reduction)
    shards = _axis_size(axis_name)
    cols = z.shape[1]
    total = cols * shards
    if not dense and 0 <= params[1] < total:
        raise ValueError("powergrad: ignore_index (%d) must be outside [0, %d) for the vocabulary-parallel form"
                         % (params[1], total))
    y_shard = _shard_targets(y, dense, params[1], jax.lax.axis_index(axis_name), cols, total)
    loss = (_vp_dense if dense else _vp_index)(z, y_shard, y, params, axis_name, total)
    if params[3] == "none":
        loss = loss.reshape(logits.shape[:-1])
    return loss


# ---- gradient transformations (optax) -----------------------------------------------------------

_SCOPES = {"tensor": 0, "tree": 1, "bucket": 1}
_PRESERVE = {None: 0, "none": 0, "l1": 1, "l2": 2}


def _leaves(updates, what="updates"):
    leaves, treedef = jax.tree_util.tree_flatten(updates)
    leaves = [jnp.asarray(x) for x in leaves]
    for i, x in enumerate(leaves):
        if x.dtype not in _FLOATS:
            raise TypeError("powergrad: %s leaf %d has dtype %s; float32, float16 or bfloat16 expected"
                            % (what, i, x.dtype))
    return leaves, treedef


def _by_dtype(leaves):
    """{dtype: [leaf indices]} in order of first appearance."""
    groups = {}
    for i, x in enumerate(leaves):
        groups.setdefault(x.dtype, []).append(i)
    return groups


def _aliased(target, xs, extra_results=(), extra_args=(), **attrs):
    """One FFI call over leaves xs whose outputs alias them (after `extra_results`)."""
    k = len(extra_results)
    results = list(extra_results) + [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in xs]
    out = _call(target, results, *xs, *extra_args, vmap_method="sequential",
                aliases={i: k + i for i in range(len(xs))}, **attrs)
    return list(out)


def _clip_leaves(leaves, max_norm):
    groups = _by_dtype(leaves)
    out = list(leaves)
    if len(groups) == 1:
        res = _aliased("clip_norm", leaves, (jax.ShapeDtypeStruct((1,), jnp.float32),),
                       max_norm=np.float32(max_norm), scope=np.int64(1))
        return res[1:], res[0][0]
    # Several dtypes, one global norm: each group's norm from the library (max_norm so large that its
    # coefficient is exactly 1), then the coefficient of docs/design.md §2.4 applied here.
    sq = []
    for idx in groups.values():
        res = _aliased("clip_norm", [leaves[i] for i in idx], (jax.ShapeDtypeStruct((1,), jnp.float32),),
                       max_norm=np.float32(3.0e38), scope=np.int64(1))
        sq.append(jnp.square(res[0][0]))
    norm = jnp.sqrt(sum(sq))
    coef = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    for i, x in enumerate(leaves):
        out[i] = (x.astype(jnp.float32) * coef).astype(x.dtype)
    return out, norm


def global_norm_and_clip(updates, max_norm):
    """(clipped updates, global L2 norm) as optax.clip_by_global_norm computes them (docs/jax.md)."""
    max_norm = _static_float("max_norm", max_norm, lo=0.0, lo_open=True)
    leaves, treedef = _leaves(updates)
    if not leaves:
        return updates, jnp.float32(0.0)
    out, norm = _clip_leaves(leaves, max_norm)
    return jax.tree_util.tree_unflatten(treedef, out), norm


def _transformation(update):
    import optax

    def init_fn(params):
        del params
        return optax.EmptyState()

    return optax.GradientTransformation(init_fn, update)


def clip_by_global_norm(max_norm):
    """optax.clip_by_global_norm: scales every update by ``min(1, max_norm / (norm + 1e-6))`` with the
    tree's global L2 norm, in one FFI call for a single-dtype tree (optax divides by ``norm`` itself:
    the results differ by a relative 1e-6 / norm)."""
    max_norm = _static_float("max_norm", max_norm, lo=0.0, lo_open=True)

    def update_fn(updates, state, params=None):
        del params
        return global_norm_and_clip(updates, max_norm)[0], state

    return _transformation(update_fn)


def _unit_layout(shape, axis):
    """(permutation putting the unit axes first, number of units) for optax's unitwise_norm."""
    nd = len(shape)
    if axis is not None:
        red = tuple(sorted(a % nd for a in ((axis,) if isinstance(axis, int) else axis)))
    elif sum(1 for s in shape if s != 1) <= 1:
        red = tuple(range(nd))
    elif nd in (2, 3):
        red = (0,)
    elif nd == 4:
        red = (0, 1, 2)
    elif nd == 5:
        red = (0, 1, 2, 3)
    else:
        raise ValueError("powergrad: adaptive_grad_clip expects parameters of rank 1 to 5 (as optax), got shape %s; "
                         "pass axis= for other shapes" % (shape,))
    keep = tuple(a for a in range(nd) if a not in red)
    units = int(np.prod([shape[a] for a in keep])) if keep else 1
    return keep + red, units


def _agc_leaves(g_leaves, p_leaves, clip, eps, beta, preserve, axis):
    out = list(g_leaves)
    for dt, idx in _by_dtype(g_leaves).items():
        gs, ps, rows, perms = [], [], [], []
        for i in idx:
            g, p = g_leaves[i], p_leaves[i]
            if p.shape != g.shape:
                raise ValueError("powergrad: params leaf %d has shape %s, its update %s" % (i, p.shape, g.shape))
            if p.dtype not in (g.dtype, jnp.float32):
                p = p.astype(jnp.float32)
            perm, units = _unit_layout(g.shape, axis)
            # The library's units are contiguous slices (timm's PyTorch layout, units along dim 0);
            # JAX kernels keep the unit axes last (HWIO): they are moved to the front.
            ident = perm == tuple(range(g.ndim))
            gs.append(g if ident else jnp.transpose(g, perm))
            ps.append(p if ident else jnp.transpose(p, perm))
            rows.append(units)
            perms.append(None if ident else perm)
        if len({p.dtype for p in ps}) > 1:
            ps = [p.astype(jnp.float32) for p in ps]
        res = _aliased("agc", gs, extra_args=ps, clip=np.float32(clip), eps=np.float32(eps), beta=np.float32(beta),
                       preserve=np.int64(preserve), rows=np.asarray(rows, np.int64))
        for i, r, perm in zip(idx, res, perms):
            out[i] = r if perm is None else jnp.transpose(r, np.argsort(perm))
    return out


def adaptive_grad_clip(clipping, eps=1e-3, axis=None, beta=1.0, preserve=None):
    """optax.adaptive_grad_clip (NFNets' AGC, arXiv 2102.06171) with optax's units: per output unit
    of a JAX kernel (the last axis: IO, HWIO, DHWIO; whole tensors for vectors and scalars), or
    ``axis`` as optax's. One FFI call per dtype for the tree. ``beta`` / ``preserve``: the power map
    per unit applied in the same pass after clipping (docs/design.md §2.4)."""
    clipping = _static_float("clipping", clipping, lo=0.0, lo_open=True)
    eps = _static_float("eps", eps, lo=0.0)
    beta = _static_float("beta", beta, lo=0.0, lo_open=True)
    pres = _preserve(preserve)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("powergrad: adaptive_grad_clip needs params (update(updates, state, params))")
        g_leaves, treedef = _leaves(updates)
        p_leaves, ptree = _leaves(params, "params")
        if ptree != treedef:
            raise ValueError("powergrad: params and updates have different tree structures")
        if not g_leaves:
            return updates, state
        return jax.tree_util.tree_unflatten(treedef, _agc_leaves(g_leaves, p_leaves, clipping, eps, beta, pres,
                                                                 axis)), state

    return _transformation(update_fn)


def _preserve(preserve):
    key = preserve.lower() if isinstance(preserve, str) else preserve
    if key not in _PRESERVE:
        raise ValueError("powergrad: preserve must be None, 'l1' or 'l2', not %r" % (preserve,))
    return _PRESERVE[key]


def power_map(beta, preserve="l1", scope="tensor"):
    """The power map g <- K sign(g) |g|^beta (docs/design.md §2.4): ``preserve`` 'l1' (PGT on the
    magnitude distribution |g| / sum |g|: the L1 norm is kept), 'l2' or None (K = 1, GradPower);
    statistics per leaf (``scope='tensor'``) or over the whole tree (``'tree'``, one dtype)."""
    beta = _static_float("beta", beta, lo=0.0, lo_open=True)
    pres = _preserve(preserve)
    if scope not in _SCOPES:
        raise ValueError("powergrad: scope must be 'tensor' or 'tree', not %r" % (scope,))
    sc = _SCOPES[scope]

    def update_fn(updates, state, params=None):
        del params
        leaves, treedef = _leaves(updates)
        if not leaves:
            return updates, state
        groups = _by_dtype(leaves)
        if sc == 1 and len(groups) > 1 and pres != 0:
            raise ValueError("powergrad: power_map(scope='tree') keeps one norm over the tree and needs one dtype; "
                             "the tree has %s" % ", ".join(str(d) for d in groups))
        out = list(leaves)
        for idx in groups.values():
            res = _aliased("power", [leaves[i] for i in idx], beta=np.float32(beta), preserve=np.int64(pres),
                           scope=np.int64(sc))
            for i, r in zip(idx, res):
                out[i] = r
        return jax.tree_util.tree_unflatten(treedef, out), state

    return _transformation(update_fn)
