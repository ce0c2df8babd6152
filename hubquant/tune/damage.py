"""Damage of each candidate for each layer: ``0.5 * sum(F * (Q(W) - W)^2)``,
the second-order estimate of the KL divergence per token it adds (fisher.py),
with ``Q`` the candidate's round-to-nearest rule."""

from __future__ import annotations

import numpy as np

from hubquant import quantizers
from hubquant.layers.registry import layout_of
from hubquant.paths import layer_at
from hubquant.plan import PlanEntry
from hubquant.tune.candidates import Candidate


def matrix_variable(backbone, entry: PlanEntry):
    """The float variable holding ``entry``'s matrix."""
    layer = layer_at(backbone, entry.attr)
    if entry.matrix == "kernel":
        return layer._kernel
    if entry.matrix == "reverse":
        return layer.reverse_embeddings
    return getattr(layer, entry.matrix)  # "embeddings" or an expert bank


def canonical(backbone, entry: PlanEntry, value) -> np.ndarray:
    """``value`` (shaped like the entry's variable) as its ``[N, K]`` matrix."""
    value = np.asarray(value, np.float32)
    if entry.matrix == "kernel":
        return layout_of(layer_at(backbone, entry.attr)).to_matrix(value)
    if entry.matrix == "reverse":
        return np.ascontiguousarray(value.T)
    if entry.matrix == "embeddings":
        return value
    experts, k, n = value.shape  # a bank [experts, in, out]
    return np.ascontiguousarray(value.transpose(0, 2, 1)).reshape(experts * n, k)


# Rows rounded at a time: a token table's damage needs no float copies of it whole.
CHUNK_BYTES = 64 << 20


def damage_row(w: np.ndarray, fisher: np.ndarray, candidates) -> np.ndarray:
    """One layer's damage for each candidate (``w`` and ``fisher`` ``[N, K]``,
    any float dtype; each candidate rounds rows independently, so a block of
    rows at a time, in float32)."""
    rows = max(1, CHUNK_BYTES // (4 * w.shape[1]))
    total = np.zeros(len(candidates))
    for start in range(0, w.shape[0], rows):
        part = np.asarray(w[start : start + rows], np.float32)
        f = np.asarray(fisher[start : start + rows], np.float32)
        total += [_damage(part, f, c) for c in candidates]
    return total


def _damage(w: np.ndarray, fisher: np.ndarray, c: Candidate) -> float:
    if c.mode == "none":
        return 0.0
    q = quantizers.quantize(w, c.mode, c.group_size, c.symmetric, c.clip)
    group_size = None if c.mode == "int8" else c.group_size
    error = quantizers.dequantize(q, w.shape[1], group_size) - w
    return 0.5 * float(np.einsum("nk,nk->", fisher, np.square(error), dtype=np.float64))
