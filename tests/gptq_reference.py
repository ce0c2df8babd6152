"""A plain NumPy GPTQ (column loops, as in the paper's reference code), written
for tests only: hubquant's compiled sweep must agree with it."""

from __future__ import annotations

import numpy as np


def params(w: np.ndarray, symmetric: bool, bits: int):
    """Min/max scale and zero point per row of ``w`` ``[N, g]`` (hubquant's conventions)."""
    top = 2 ** (bits - 1) - 1
    if symmetric:
        absmax = np.abs(w).max(axis=1)
        scale = np.where(absmax > 0, absmax / top, 1.0)
        return scale.astype(np.float32), np.zeros(len(w), np.float32)
    lo = np.minimum(w.min(axis=1), 0.0)
    hi = np.maximum(w.max(axis=1), 0.0)
    scale = np.where(hi > lo, (hi - lo) / (2**bits - 1), 1.0).astype(np.float32)
    zero = np.clip(np.round(-lo / scale), 0, 2**bits - 1) - (top + 1)
    return scale, zero.astype(np.float32)


def gptq_reference(w, h, group_size, symmetric, bits=4, damping=0.01, block_size=128):
    """Codes ``[N, K]``, scales and zeros ``[N, G]`` (dynamic groups, no act-order)."""
    w = np.array(w, np.float64)
    h = np.array(h, np.float64)
    n, k = w.shape
    top = 2 ** (bits - 1) - 1
    low = -top - 1 if bits == 4 else -top
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += damping * np.mean(np.diag(h)) * np.eye(k)
    hinv = np.linalg.cholesky(np.linalg.inv(h)).T
    gs = k if group_size == -1 else group_size
    codes = np.zeros((n, k))
    scales, zeros = [], []
    if group_size == -1:
        s, z = params(w, symmetric, bits)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1 = w[:, i1:i2].copy()
        err1 = np.zeros_like(w1)
        for i in range(i2 - i1):
            col = i1 + i
            if group_size != -1 and col % gs == 0:
                # Group parameters from the error-updated weights (zero-padded).
                group = np.zeros((n, gs))
                part = np.concatenate([w1[:, i:], w[:, i2:]], axis=1)[:, :gs]
                group[:, : part.shape[1]] = part
                s, z = params(group, symmetric, bits)
                scales.append(s)
                zeros.append(z)
            x = w1[:, i]
            q = np.clip(np.round(x / s) + z, low, top)
            err = (x - (q - z) * s) / hinv[col, col]
            w1[:, i:] -= np.outer(err, hinv[col, col:i2])
            err1[:, i] = err
            codes[:, col] = q
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    if group_size == -1:
        scales, zeros = [s], [z]
    return codes.astype(np.int8), np.stack(scales, 1), np.stack(zeros, 1)
