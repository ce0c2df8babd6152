"""Output-aware clipping of int4 groups (``imatrix``, and AWQ's ``clip``).

Each group's range is shrunk by the ratio (1.0, plain min/max, down to 0.5)
whose rounding error ``d`` costs the layer's outputs least on the calibration
inputs: ``d^T H_g d``, with ``H_g`` the group's diagonal block of ``X^T X``.
That is llama.cpp's importance-matrix idea (weight input channel ``j`` by the
mean of ``x_j^2``) with the correlations between the channels of a group kept.
Judged on a real pretrained LLM (README, "Fidelity on real weights"): 42 %
lower KL to float than plain min/max at the same bytes, where the diagonal
weighting alone gave 23 %.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hubquant import quantizers
from hubquant.quantizers import QuantizedMatrix

CLIP_RATIOS = tuple(float(r) for r in np.linspace(1.0, 0.5, 11))
_CHUNK_ELEMENTS = 1 << 22  # weights per compiled call


def output_clipped_int4(
    w: np.ndarray, gram: np.ndarray, group_size: int, symmetric: bool
) -> QuantizedMatrix:
    """int4 codes of ``w`` ``[N, K]``, each group clipped by its output error
    under ``gram`` ``[K, K]`` (``X^T X``, any positive multiple)."""
    n, k = w.shape
    gs = k if group_size == -1 else min(group_size, k)
    g = quantizers.num_groups(k, gs)
    blocks = jnp.asarray(group_blocks(np.asarray(gram, np.float32), gs, g))
    step = max(1, _CHUNK_ELEMENTS // (g * gs))
    parts = []
    for start in range(0, n, step):
        rows = np.zeros((min(n, start + step) - start, g * gs), np.float32)
        rows[:, :k] = w[start : start + step]
        codes, scale, zero = _clip_search(
            jnp.asarray(rows.reshape(-1, g, gs)), blocks, symmetric=symmetric
        )
        codes = np.asarray(codes).reshape(len(rows), g * gs)[:, :k]
        parts.append((quantizers.pack_int4(codes), np.asarray(scale), np.asarray(zero)))
    codes, scale, zero = (np.concatenate(p) for p in zip(*parts, strict=True))
    return QuantizedMatrix(codes, scale.astype(np.float32), None if symmetric else zero)


def group_blocks(gram: np.ndarray, gs: int, g: int) -> np.ndarray:
    """The ``[G, gs, gs]`` diagonal blocks of ``gram``; past ``K`` (a partial
    last group) rows and columns are zero, so padding costs nothing."""
    k = gram.shape[0]
    index = np.arange(g * gs).reshape(g, gs)
    valid = index < k
    index = np.minimum(index, k - 1)
    blocks = gram[index[:, :, None], index[:, None, :]]
    return np.where(valid[:, :, None] & valid[:, None, :], blocks, np.float32(0))


@functools.partial(jax.jit, static_argnames=("symmetric",))
def _clip_search(w, blocks, *, symmetric):
    """Codes ``[n, G, gs]``, scales and zero points ``[n, G]``: one output error
    per ratio and group (nothing ratio-sized is kept), then the codes once."""

    def error(ratio):
        q, scale, zero, _ = quantizers._candidate(w, 0.0, ratio, symmetric, 4)
        d = (q - zero[..., None]) * scale[..., None] - w
        return jnp.einsum("ngi,gij,ngj->ng", d, blocks, d, precision=lax.Precision.HIGHEST)

    ratios = jnp.asarray(CLIP_RATIOS)
    best = ratios[jnp.argmin(lax.map(error, ratios), axis=0)]  # first of equal errors: 1.0
    q, scale, zero, _ = quantizers._candidate(w, 0.0, best, symmetric, 4)
    return q.astype(jnp.int8), scale, zero.astype(jnp.int8)
