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


def xent_options(z, targets, alpha=1.0, ignore_index=-100, label_smoothing=0.0, reduction="mean", weight=None,
                 z_loss_scale=0.0, softcap=0.0):
    """(loss, grad, z_loss, argmax) in float64 with the options of docs/design.md §2.5, written from its
    formulas: zc = c tanh(z / c) (z when c = 0); class target y: b = (1 - eps) w_y e_y + (eps / C) w;
    dense q: b = w ((1 - eps) q + eps / C); A = sum b; loss_r = A lse - b.zc + lambda lse^2 and
    grad_r = g_r (A softmax(alpha zc) - b + 2 lambda lse softmax(zc)) (1 - tanh^2(z / c)) for
    non-ignored rows; 'mean' divides by sum_r w_{y_r} over non-ignored rows (class targets) or by rows
    (dense). z_loss is the lambda lse^2 part reduced the same way; argmax is over zc (first maximum)."""
    z = np.asarray(z, np.float64)
    rows, cols = z.shape
    w = np.ones(cols) if weight is None else np.asarray(weight, np.float64)
    if softcap:
        zc = softcap * np.tanh(z / softcap)
        chain = 1.0 - np.tanh(z / softcap) ** 2
    else:
        zc, chain = z, np.ones_like(z)
    t = np.asarray(targets)
    eps = label_smoothing
    if t.ndim == 1:
        valid = t != ignore_index
        b = np.zeros((rows, cols))
        wy = np.zeros(rows)
        for r in range(rows):
            if valid[r]:
                b[r] = eps / cols * w
                b[r, t[r]] += (1.0 - eps) * w[t[r]]
                wy[r] = w[t[r]]
        denom = wy.sum()
    else:
        valid = np.ones(rows, dtype=bool)
        b = w[None, :] * ((1.0 - eps) * t.astype(np.float64) + eps / cols)
        denom = float(rows)
    A = b.sum(axis=1)
    lse = _logsumexp(zc)
    ce = A * lse - np.sum(b * np.where(b != 0, zc, 0.0), axis=1)
    zrow = z_loss_scale * lse ** 2
    per_row = np.where(valid, ce + zrow, 0.0)
    zrow = np.where(valid, zrow, 0.0)
    if reduction == "mean":
        g = np.full(rows, 0.0 if denom == 0 else 1.0 / denom)
    else:
        g = np.ones(rows)
    g = np.where(valid, g, 0.0)
    p = np.exp(zc - lse[:, None])
    grad = g[:, None] * (A[:, None] * pgt_softmax(zc, alpha) - b + 2.0 * z_loss_scale * lse[:, None] * p) * chain
    grad[~valid] = 0.0
    if reduction == "none":
        loss, zl = per_row, zrow
    elif reduction == "sum":
        loss, zl = per_row.sum(), zrow.sum()
    else:
        loss = 0.0 if denom == 0 else per_row.sum() / denom
        zl = 0.0 if denom == 0 else zrow.sum() / denom
    return loss, grad, zl, np.argmax(zc, axis=1)
