"""A plain NumPy statement of hubquant's quantizers, written for the tests.

Loops run over clipping ratios only; every step is the documented formula.
"""

from __future__ import annotations

import numpy as np

from hubquant.quantizers import CLIP_RATIOS


def int8(w: np.ndarray):
    """Abs-max codes per row, then the least-squares scale where it lowers the error."""
    amax = np.abs(w).max(-1)
    scale = np.where(amax > 0, amax / np.float32(127), np.float32(1))
    q = np.clip(np.round(w / scale[:, None]), -127, 127)
    denom = (q * q).sum(-1)
    ls = np.where(
        denom > 0, (w.astype(np.float64) * q).sum(-1) / np.where(denom > 0, denom, 1), scale
    )
    old = ((q * scale[:, None] - w) ** 2).sum(-1)
    new = ((q * ls[:, None] - w) ** 2).sum(-1)
    return q.astype(np.int8), np.where(new < old, ls, scale).astype(np.float32)


def int4(w: np.ndarray, group_size: int, symmetric: bool, importance=None):
    """Unpacked codes [N, K], scales [N, G], zero points [N, G] (or None)."""
    n, k = w.shape
    gs = k if group_size == -1 else min(group_size, k)
    g = -(-k // gs)
    padded = np.zeros((n, g * gs), np.float32)
    padded[:, :k] = w
    channel = np.ones(g * gs, np.float32)
    if importance is not None:
        channel[:k] = importance
    codes, scale, zero = _search(padded.reshape(n, g, gs), channel.reshape(g, gs), symmetric)
    return codes.reshape(n, g * gs)[:, :k], scale, None if symmetric else zero


def _search(w, channel, symmetric, ratios=CLIP_RATIOS):
    """Per group, the clip ratio with the lowest squared error weighted by
    ``channel * (|w| + mean |w| of the group)``."""
    weights = channel * (np.abs(w) + np.abs(w).mean(-1, keepdims=True))
    best = None
    for ratio in ratios:
        ratio = np.float32(ratio)
        if symmetric:
            amax = np.abs(w).max(-1) * ratio
            scale = np.where(amax > 0, amax / np.float32(7), np.float32(1))
            zero = np.zeros_like(scale)
            q = np.clip(np.round(w / scale[..., None]), -8, 7)
        else:
            lo = np.minimum(w.min(-1), 0) * ratio
            hi = np.maximum(w.max(-1), 0) * ratio
            scale = np.where(hi > lo, (hi - lo) / np.float32(15), np.float32(1))
            zero = np.clip(np.round(-lo / scale), 0, 15) - 8
            q = np.clip(np.round(w / scale[..., None]) + zero[..., None], -8, 7)
        err = (weights * ((q - zero[..., None]) * scale[..., None] - w) ** 2).sum(-1)
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
    q, scale, zero, _ = best
    return q.astype(np.int8), scale.astype(np.float32), zero.astype(np.int8)
