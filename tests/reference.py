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


def int4(w: np.ndarray, group_size: int, symmetric: bool, clip: bool = True):
    """Unpacked codes [N, K], scales [N, G], zero points [N, G] (or None);
    ``clip`` False: each group's own min and max (the one ratio 1.0)."""
    n, k = w.shape
    gs = k if group_size == -1 else min(group_size, k)
    g = -(-k // gs)
    padded = np.zeros((n, g * gs), np.float32)
    padded[:, :k] = w
    channel = np.ones(g * gs, np.float32)
    ratios = CLIP_RATIOS if clip else (1.0,)
    codes, scale, zero = _search(
        padded.reshape(n, g, gs), channel.reshape(g, gs), symmetric, ratios
    )
    return codes.reshape(n, g * gs)[:, :k], scale, None if symmetric else zero


def _search(w, channel, symmetric, ratios=CLIP_RATIOS, stride=3):
    """Per group, the clip ratio with the lowest squared error weighted by
    ``channel * (|w| + mean |w| of the group)``, searched coarse to fine: every
    ``stride``-th ratio, then the ratios within ``stride // 2`` places of the
    best of those (the first of equal errors wins)."""
    weights = channel * (np.abs(w) + np.abs(w).mean(-1, keepdims=True))
    found = [_candidate(w, weights, np.float32(r), symmetric) for r in ratios]
    errors = np.stack([f[3] for f in found])  # [ratios, N, G]
    coarse = np.arange(0, len(ratios), stride)
    centre = coarse[np.argmin(errors[coarse], axis=0)]
    near = [
        np.clip(centre + d, 0, len(ratios) - 1) for d in range(-(stride // 2), stride // 2 + 1) if d
    ]
    tried = np.stack([np.broadcast_to(c, centre.shape) for c in coarse] + near)
    pick = np.take_along_axis(tried, np.argmin(np.take_along_axis(errors, tried, 0), 0)[None], 0)[0]
    q = np.take_along_axis(np.stack([f[0] for f in found]), pick[None, ..., None], 0)[0]
    scale, zero = (
        np.take_along_axis(np.stack([f[i] for f in found]), pick[None], 0)[0] for i in (1, 2)
    )
    return q.astype(np.int8), scale.astype(np.float32), zero.astype(np.int8)


def _candidate(w, weights, ratio, symmetric):
    """Codes, scale, zero point and weighted squared error at one clip ratio."""
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
    return q, scale, zero, err
