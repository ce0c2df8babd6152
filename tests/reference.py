"""A plain NumPy statement of hubquant's quantizers, written for the tests.

Loops run over clipping ratios only; every step is the documented formula.
"""

from __future__ import annotations

import numpy as np

from hubquant.quantizers import CLIP_RATIOS


def int8(w: np.ndarray):
    codes, scale, _ = _search(
        w[:, None, :].astype(np.float32), bits=8, symmetric=True, ratios=(1.0,)
    )
    return codes[:, 0, :], scale[:, 0]


def int4(w: np.ndarray, group_size: int, symmetric: bool):
    """Unpacked codes [N, K], scales [N, G], zero points [N, G] (or None)."""
    n, k = w.shape
    gs = k if group_size == -1 else group_size
    g = -(-k // gs)
    padded = np.zeros((n, g * gs), np.float32)
    padded[:, :k] = w
    codes, scale, zero = _search(padded.reshape(n, g, gs), bits=4, symmetric=symmetric)
    return codes.reshape(n, g * gs)[:, :k], scale, None if symmetric else zero


def _search(w, bits, symmetric, ratios=CLIP_RATIOS):
    top = 2 ** (bits - 1) - 1
    low = -top - 1 if bits == 4 else -top
    best = None
    for ratio in ratios:
        ratio = np.float32(ratio)
        if symmetric:
            amax = np.abs(w).max(-1) * ratio
            scale = np.where(amax > 0, amax / np.float32(top), np.float32(1))
            zero = np.zeros_like(scale)
            q = np.clip(np.round(w / scale[..., None]), low, top)
        else:
            lo = np.minimum(w.min(-1), 0) * ratio
            hi = np.maximum(w.max(-1), 0) * ratio
            scale = np.where(hi > lo, (hi - lo) / np.float32(2**bits - 1), np.float32(1))
            zero = np.clip(np.round(-lo / scale), 0, 2**bits - 1) - (top + 1)
            q = np.clip(np.round(w / scale[..., None]) + zero[..., None], -top - 1, top)
        err = (((q - zero[..., None]) * scale[..., None] - w) ** 2).sum(-1)
        if best is None:
            best = [q, scale, zero, err]
            continue
        better = err < best[3]
        best = [
            np.where(better[..., None], q, best[0]),
            np.where(better, scale, best[1]),
            np.where(better, zero, best[2]),
            np.where(better, err, best[3]),
        ]
    if not symmetric:
        for _ in range(2):
            best = _refit(w, best, top)
    q, scale, zero, _ = best
    c = q - zero[..., None]
    denom = (c * c).sum(-1)
    ls = np.where(denom > 0, (w * c).sum(-1) / np.where(denom > 0, denom, 1), scale)
    old = ((c * scale[..., None] - w) ** 2).sum(-1)
    new = ((c * ls[..., None] - w) ** 2).sum(-1)
    scale = np.where(new < old, ls, scale)
    return q.astype(np.int8), scale.astype(np.float32), zero.astype(np.int8)


def _refit(w, best, top):
    q, scale, zero, err = best
    u_mean, w_mean = q.mean(-1, keepdims=True), w.mean(-1, keepdims=True)
    cov = ((q - u_mean) * (w - w_mean)).sum(-1)
    var = ((q - u_mean) ** 2).sum(-1)
    a = np.where((var > 0) & (cov > 0), cov / np.where(var > 0, var, 1), scale)
    offset = w_mean[..., 0] - a * u_mean[..., 0]
    z = np.clip(np.round(-offset / a), -top - 1, top)
    nq = np.clip(np.round(w / a[..., None]) + z[..., None], -top - 1, top)
    nerr = (((nq - z[..., None]) * a[..., None] - w) ** 2).sum(-1)
    b = nerr < err
    return [
        np.where(b[..., None], nq, q),
        np.where(b, a, scale),
        np.where(b, z, zero),
        np.where(b, nerr, err),
    ]
