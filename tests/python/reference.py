"""Float64 NumPy reference for PGT cross-entropy, written from docs/design.md §2.1 alone (no library code)."""

import numpy as np


def _logsumexp(a):
    m = np.max(a, axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return (m + np.log(np.sum(np.exp(a - m), axis=1, keepdims=True)))[:, 0]


def target_matrix(targets, rows, cols, ignore_index, label_smoothing):
    """(q [rows x cols] float64, valid [rows] bool)."""
    t = np.asarray(targets)
    if t.ndim == 1:
        valid = t != ignore_index
        q = np.zeros((rows, cols))
        q[np.nonzero(valid)[0], t[valid]] = 1.0
    else:
        valid = np.ones(rows, dtype=bool)
        q = t.astype(np.float64)
    q = (1.0 - label_smoothing) * q + label_smoothing / cols
    q[~valid] = 0.0
    return q, valid


def row_scales(valid, reduction, upstream):
    n_valid = int(valid.sum())
    if reduction == "none":
        u = np.ones(valid.shape[0]) if upstream is None else np.broadcast_to(np.asarray(upstream, np.float64),
                                                                              valid.shape)
        return np.where(valid, u, 0.0)
    u = 1.0 if upstream is None else float(upstream)
    if reduction == "mean":
        u = 0.0 if n_valid == 0 else u / n_valid
    return np.where(valid, u, 0.0)


def pgt_softmax(z, alpha):
    """p'_j = softmax(alpha z)_j = p_j^alpha / sum_k p_k^alpha."""
    z = np.asarray(z, np.float64)
    a = alpha * z
    a = np.where(np.isneginf(z), -np.inf, a)  # a masked class stays masked at alpha = 0
    return np.exp(a - _logsumexp(a)[:, None])


def xent(z, targets, alpha=1.0, ignore_index=-100, label_smoothing=0.0, reduction="mean", upstream=None):
    """(loss, grad) in float64: loss = -sum_j q_j log p_j = A lse - sum q z with A = sum_j q_j (ordinary
    CE, as F.cross_entropy: a probability row need not sum to 1), grad = g_r (A softmax(alpha z) - q)."""
    z = np.asarray(z, np.float64)
    rows, cols = z.shape
    q, valid = target_matrix(targets, rows, cols, ignore_index, label_smoothing)
    lse = _logsumexp(z)
    mass = q.sum(axis=1)
    per_row = np.where(valid, mass * lse - np.sum(q * np.where(q > 0, z, 0.0), axis=1), 0.0)
    g = row_scales(valid, reduction, upstream)
    grad = g[:, None] * (mass[:, None] * pgt_softmax(z, alpha) - q)
    grad[~valid] = 0.0
    n_valid = int(valid.sum())
    if reduction == "none":
        loss = per_row
    elif reduction == "sum":
        loss = per_row.sum()
    else:
        loss = 0.0 if n_valid == 0 else per_row.sum() / n_valid
    return loss, grad
